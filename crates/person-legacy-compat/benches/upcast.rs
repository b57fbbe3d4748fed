//! Decoder micro-benchmarks: a current envelope, a week-1 envelope, and a raw V1 event
//! (upcast + decode), each through the one decoder the runtime uses.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope, codec};
use person_legacy_compat::{RawMessage, decode_message};
use person_metadata::EventMetadata;

const V1: &str = r#"{"NameUpdated": {"person_id": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}, "old_name": {"given_name": "Jane", "family_name": "Smith", "middle_names": ["Elizabeth"], "preferred_name": null, "honorific": null, "suffix": null}, "new_name": {"given_name": "Jane", "family_name": "Doe", "middle_names": ["Elizabeth"], "preferred_name": "Jane Doe", "honorific": "Dr.", "suffix": null}, "reason": "marriage", "updated_at": "2025-07-15T14:30:00+02:00"}}"#;
const WEEK1: &str = r#"{"event_id": "01890a5d-ac96-774b-bcce-b302099a8060", "aggregate_id": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}, "sequence": 1, "event": {"event_type": "Created", "data": {"person_id": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}, "name": {"given_name": "Jane", "family_name": "Smith", "middle_names": [], "preferred_name": null, "honorific": null, "suffix": null}, "source": "api", "metadata": {"version": "1.0", "correlation_id": "01890a5d-ac96-774b-bcce-b302099a8057", "causation_id": "01890a5d-ac96-774b-bcce-b302099a8058", "timestamp": "2025-08-07T10:00:00.123456Z", "actor": "svc-onboarding", "context": {}}}}, "stream_position": null}"#;

fn bench(c: &mut Criterion) {
    let person_id = PersonId::new();
    let current = codec::encode(&StreamingEventEnvelope::new(
        person_id,
        3,
        PersonEventV2::NameUpdated {
            person_id,
            old_name: PersonName::new("Jane", Some("Elizabeth"), "Smith").unwrap(),
            new_name: PersonName::new("Jane", Some("Elizabeth"), "Doe").unwrap(),
            change_reason: Some("marriage".into()),
            metadata: EventMetadata::new().with_actor("svc-onboarding"),
        },
    ))
    .unwrap();
    c.bench_function("decoder/current", |b| {
        b.iter(|| decode_message(&RawMessage::from_payload(black_box(&current))).unwrap())
    });
    c.bench_function("decoder/codec_only_same_payload", |b| {
        b.iter(|| codec::decode(black_box(&current)).unwrap())
    });
    c.bench_function("decoder/v1_upcast", |b| {
        b.iter(|| decode_message(&RawMessage::from_payload(black_box(V1.as_bytes()))).unwrap())
    });
    c.bench_function("decoder/week1_envelope", |b| {
        b.iter(|| decode_message(&RawMessage::from_payload(black_box(WEEK1.as_bytes()))).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
