//! Codec micro-benchmarks: encode and decode one realistic envelope, build a subject.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope, codec};
use person_metadata::EventMetadata;

fn envelope() -> StreamingEventEnvelope {
    let person_id = PersonId::new();
    StreamingEventEnvelope::new(
        person_id,
        3,
        PersonEventV2::NameUpdated {
            person_id,
            old_name: PersonName::new("Jane", Some("Elizabeth"), "Smith").unwrap(),
            new_name: PersonName::new("Jane", Some("Elizabeth"), "Doe")
                .unwrap()
                .with_honorific("Dr.")
                .unwrap(),
            change_reason: Some("marriage".into()),
            metadata: EventMetadata::new()
                .with_actor("svc-onboarding")
                .with_context("tenant", "acme"),
        },
    )
}

fn bench(c: &mut Criterion) {
    let env = envelope();
    let bytes = codec::encode(&env).unwrap();
    let mut buf = Vec::with_capacity(1024);
    c.bench_function("codec/encode", |b| {
        b.iter(|| {
            buf.clear();
            codec::encode_into(black_box(&env), &mut buf).unwrap();
        })
    });
    c.bench_function("codec/decode", |b| {
        b.iter(|| codec::decode(black_box(&bytes)).unwrap())
    });
    c.bench_function("subject/build", |b| b.iter(|| black_box(&env).subject()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
