//! Two writers, one conflict, and an atomic multi-event append.
//!
//! Run with `cargo run --example optimistic_concurrency`. With `NATS_URL` it works in a
//! namespace of its own and deletes it at the end (see `person_examples::Scope`).

use anyhow::Result;
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_streaming::{ExpectedVersion, PublishErrorKind, StreamingClient, StreamingConfig};

fn suspended(person_id: PersonId, sequence: u64, reason: &str) -> StreamingEventEnvelope {
    StreamingEventEnvelope::new(
        person_id,
        sequence,
        PersonEventV2::Suspended {
            person_id,
            reason: reason.into(),
            metadata: EventMetadata::new(),
        },
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    person_examples::run_in_scope(
        "optimistic_concurrency",
        StreamingConfig::default(),
        async |_, client| run(client).await,
    )
    .await
}

async fn run(client: &StreamingClient) -> Result<()> {
    let publisher = client.publisher();
    let person_id = PersonId::new();

    // One command, three events: stored together or not at all.
    let created = StreamingEventEnvelope::new(
        person_id,
        1,
        PersonEventV2::Created {
            person_id,
            name: PersonName::new("Grace", None, "Hopper")?,
            source: "api".into(),
            metadata: EventMetadata::new(),
        },
    );
    let birth = StreamingEventEnvelope::new(
        person_id,
        2,
        PersonEventV2::BirthDateSet {
            person_id,
            birth_date: chrono::NaiveDate::from_ymd_opt(1906, 12, 9).expect("date"),
            metadata: EventMetadata::new(),
        },
    );
    let activated = StreamingEventEnvelope::new(
        person_id,
        3,
        PersonEventV2::Activated {
            person_id,
            reason: "new".into(),
            metadata: EventMetadata::new(),
        },
    );
    let receipt = publisher
        .append(
            person_id,
            ExpectedVersion::NoEvents,
            &[created, birth, activated],
        )
        .await?;
    println!(
        "atomic append of 3 events: stored at {:?}, person at version {}",
        receipt
            .events
            .iter()
            .map(|e| e.stream_sequence)
            .collect::<Vec<_>>(),
        receipt.version
    );

    // Two writers read version N and both try to append.
    let version = client.reader().last_version(person_id).await?;
    let (a, b) = (
        suspended(person_id, 4, "writer A"),
        suspended(person_id, 4, "writer B"),
    );
    let (pa, pb) = (publisher.clone(), publisher.clone());
    let (ra, rb) = tokio::join!(
        pa.append(
            person_id,
            ExpectedVersion::Exactly(version),
            std::slice::from_ref(&a)
        ),
        pb.append(
            person_id,
            ExpectedVersion::Exactly(version),
            std::slice::from_ref(&b)
        ),
    );
    for (who, result) in [("A", ra), ("B", rb)] {
        match result {
            Ok(r) => println!("writer {who}: stored, person now at version {}", r.version),
            Err(e) if e.kind() == PublishErrorKind::Conflict => println!(
                "writer {who}: conflict (expected {:?}, actual {:?}): reload and decide again",
                e.expected_version(),
                e.actual_version()
            ),
            Err(e) => return Err(e.into()),
        }
    }

    // A batch whose expectation is stale stores nothing.
    let stale = [
        suspended(person_id, 5, "stale 1"),
        suspended(person_id, 6, "stale 2"),
    ];
    let err = publisher
        .append(person_id, ExpectedVersion::Exactly(version), &stale)
        .await
        .expect_err("the version moved on");
    println!("stale 2-event append: {err}");
    println!(
        "history: {} events",
        client.reader().load_aggregate(person_id).await?.len()
    );
    Ok(())
}
