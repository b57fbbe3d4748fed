//! Old events in the stream, read as V2: a raw V1 `PersonEvent` and a week-1 envelope on
//! its old `person.events.<id>.person.<type>` subject, next to a current event.
//!
//! Run with `cargo run --example legacy_upcast`. With `NATS_URL` it works in a namespace
//! of its own and deletes it at the end (see `person_examples::Scope`).

use anyhow::Result;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope};
use person_legacy_compat::UPCAST_CONTEXT_KEY;
use person_metadata::EventMetadata;
use person_streaming::{StreamingClient, StreamingConfig};

#[tokio::main]
async fn main() -> Result<()> {
    person_examples::run_in_scope(
        "legacy_upcast",
        StreamingConfig::default(),
        async |_, client| run(client).await,
    )
    .await
}

async fn run(client: &StreamingClient) -> Result<()> {
    let person_id = PersonId::new();
    let js = client.jetstream();
    // Old producers wrote on the default subjects; in a namespace they sit under its
    // subject prefix like every other event.
    let subjects = client.config().subjects();

    let v1 = format!(
        r#"{{"PersonCreated": {{"person_id": {{"id": "{person_id}"}}, "name": {{"given_name": "Jane", "family_name": "Smith", "middle_names": ["Elizabeth"], "preferred_name": null, "honorific": null, "suffix": null}}, "source": "hr-import", "created_at": "2025-07-01T09:00:00+02:00"}}}}"#
    );
    js.publish(subjects.event_subject(&person_id, "created"), v1.into())
        .await?
        .await?;
    let week1 = format!(
        r#"{{"event_id": "01890a5d-ac96-774b-bcce-b302099a8061", "aggregate_id": {{"id": "{person_id}"}}, "sequence": 2, "event": {{"event_type": "Suspended", "data": {{"person_id": {{"id": "{person_id}"}}, "reason": "policy review", "metadata": {{"version": "1.0", "correlation_id": "01890a5d-ac96-774b-bcce-b302099a8057", "causation_id": null, "timestamp": "2025-08-07T10:05:00Z", "actor": null, "context": {{}}}}}}}}, "stream_position": null}}"#
    );
    js.publish(
        subjects.qualify(&format!("person.events.{person_id}.person.suspended")),
        week1.into(),
    )
    .await?
    .await?;
    let current = StreamingEventEnvelope::new(
        person_id,
        3,
        PersonEventV2::Activated {
            person_id,
            reason: "review passed".into(),
            metadata: EventMetadata::new(),
        },
    );
    client.publisher().publish(&current).await?;

    println!("history of {person_id}, as V2:");
    let history = client.reader().load_aggregate(person_id).await?;
    for env in &history {
        let origin = if env.metadata().context.contains_key(UPCAST_CONTEXT_KEY) {
            "upcast from V1"
        } else if env.event_id.to_string().starts_with("01890a5d") {
            "week-1 envelope"
        } else {
            "current"
        };
        println!(
            "  #{} {:<10} at {}  event id {}  ({origin})",
            env.stream_position.unwrap_or(0),
            env.event.event_type(),
            env.metadata().timestamp,
            env.event_id
        );
    }
    let again = client.reader().load_aggregate(person_id).await?;
    anyhow::ensure!(again == history, "upcasting must be deterministic");
    println!("read again: identical envelopes, event ids included (upcasting is deterministic)");
    Ok(())
}
