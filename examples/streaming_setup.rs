//! The main example. For now it shows the pure event core end to end: events with
//! metadata, their subjects, headers and JSON, and legacy V1 events read back as V2.
//! The JetStream runtime joins it as it lands.
//!
//! Run with `cargo run --example streaming_setup`.

use anyhow::Result;
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope, codec};
use person_legacy_compat::{RawMessage, decode_message};
use person_metadata::EventMetadata;
use person_metadata::headers::{CloudEventAttributes, encode_headers};

const LEGACY: &str = r#"{"PersonCreated": {"person_id": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}, "name": {"given_name": "Jane", "family_name": "Smith", "middle_names": ["Elizabeth"], "preferred_name": null, "honorific": null, "suffix": null}, "source": "hr-import", "created_at": "2025-07-01T09:00:00Z"}}"#;

fn main() -> Result<()> {
    let person_id = PersonId::new();
    let command_id = uuid::Uuid::now_v7();

    // A command creates a person...
    let created = StreamingEventEnvelope::new(
        person_id,
        1,
        PersonEventV2::Created {
            person_id,
            name: PersonName::new("John", None, "Doe")?,
            source: "api".to_string(),
            metadata: EventMetadata::from_command(command_id).with_actor("svc-onboarding"),
        },
    );
    // ...and the creation causes a second event in the same conversation.
    let activated = StreamingEventEnvelope::new(
        person_id,
        2,
        PersonEventV2::Activated {
            person_id,
            reason: "verified".into(),
            metadata: EventMetadata::caused_by(created.metadata(), created.event_id),
        },
    );

    for env in [&created, &activated] {
        let payload = codec::encode(env)?;
        let subject = env.subject();
        let headers = encode_headers(
            env.metadata(),
            &CloudEventAttributes {
                id: env.event_id,
                source: "/person-domain",
                event_type: env.event.event_type(),
                subject: Some(&person_id.to_string()),
            },
        );
        println!("subject  {subject}");
        for (name, value) in &headers {
            println!("  {name}: {value}");
        }
        println!("  body: {} bytes\n", payload.len());
        let back = decode_message(&RawMessage {
            subject: Some(&subject),
            payload: &payload,
            content_type: Some("application/json"),
            stream_sequence: None,
        })?;
        assert_eq!(&back.envelope, env);
    }

    let legacy = decode_message(&RawMessage::from_payload(LEGACY.as_bytes()))?;
    println!(
        "legacy V1 PersonCreated read as V2 `{}` (event id {}, deterministic)",
        legacy.envelope.event.event_type(),
        legacy.envelope.event_id
    );
    Ok(())
}
