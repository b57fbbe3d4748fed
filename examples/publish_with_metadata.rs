//! A correlation and causation chain: a command, the events it produces, and an event
//! caused by one of them. The metadata is readable from the headers without the body.
//!
//! Run with `cargo run --example publish_with_metadata`. With `NATS_URL` it works in a
//! namespace of its own and deletes it at the end (see `person_examples::Scope`).

use anyhow::Result;
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_metadata::headers::decode_headers;
use person_streaming::{ExpectedVersion, StreamingClient, StreamingConfig};

#[tokio::main]
async fn main() -> Result<()> {
    person_examples::run_in_scope(
        "publish_with_metadata",
        StreamingConfig::default(),
        async |_, client| run(client).await,
    )
    .await
}

async fn run(client: &StreamingClient) -> Result<()> {
    // The "register person" command produces two events in one atomic append...
    let command_id = uuid::Uuid::now_v7();
    let person_id = PersonId::new();
    let created = StreamingEventEnvelope::new(
        person_id,
        1,
        PersonEventV2::Created {
            person_id,
            name: PersonName::new("Ada", None, "Lovelace")?,
            source: "api".into(),
            metadata: EventMetadata::from_command(command_id)
                .with_actor("alice@example.com")
                .with_trace(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    None,
                ),
        },
    );
    let birth = StreamingEventEnvelope::new(
        person_id,
        2,
        PersonEventV2::BirthDateSet {
            person_id,
            birth_date: chrono::NaiveDate::from_ymd_opt(1815, 12, 10).expect("date"),
            metadata: EventMetadata::from_command(command_id).with_actor("alice@example.com"),
        },
    );
    // ...and the creation causes an activation downstream, in the same conversation.
    let activated = StreamingEventEnvelope::new(
        person_id,
        3,
        PersonEventV2::Activated {
            person_id,
            reason: "identity verified".into(),
            metadata: EventMetadata::caused_by(created.metadata(), created.event_id),
        },
    );
    let publisher = client.publisher();
    let receipt = publisher
        .append(person_id, ExpectedVersion::NoEvents, &[created, birth])
        .await?;
    publisher
        .append(
            person_id,
            ExpectedVersion::Exactly(receipt.version),
            &[activated],
        )
        .await?;

    // Read the headers back, as any consumer or operator tool can.
    let stream = client
        .jetstream()
        .get_stream(&client.config().stream.name)
        .await?;
    println!("command {command_id}");
    for seq in 1..=3 {
        let msg = stream.get_raw_message(seq).await?;
        let pairs: Vec<(String, String)> = msg
            .headers
            .iter()
            .flat_map(|(n, vs)| vs.iter().map(move |v| (n.to_string(), v.to_string())))
            .collect();
        let h = decode_headers(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))?;
        println!(
            "  #{seq} {:<15} id {}  correlation {}  caused by {}  actor {}",
            h.event_type,
            h.id,
            h.metadata.correlation_id,
            h.metadata
                .causation_id
                .map_or("-".to_owned(), |c| c.to_string()),
            h.metadata.actor.as_deref().unwrap_or("-"),
        );
    }
    println!("all three share the correlation id; the activation names the creation as its cause");
    Ok(())
}
