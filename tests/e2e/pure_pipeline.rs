//! The publish-to-handle path without a server: an event goes through the header codec
//! and the body codec, and the reader gets back exactly what the writer meant.

use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope, codec};
use person_legacy_compat::{Origin, RawMessage, decode_message};
use person_metadata::EventMetadata;
use person_metadata::headers::{CloudEventAttributes, decode_headers, encode_headers};

#[test]
fn headers_and_body_agree_after_a_round_trip() {
    let person_id = PersonId::new();
    let env = StreamingEventEnvelope::new(
        person_id,
        1,
        PersonEventV2::Created {
            person_id,
            name: PersonName::new("John", None, "Doe").unwrap(),
            source: "api".into(),
            metadata: EventMetadata::new().with_actor("svc").with_trace(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                None,
            ),
        },
    );
    let subject = env.subject();
    let person = person_id.to_string();
    let headers = encode_headers(
        env.metadata(),
        &CloudEventAttributes {
            id: env.event_id,
            source: "/person-domain",
            event_type: env.event.event_type(),
            subject: Some(&person),
        },
    );
    let payload = codec::encode(&env).unwrap();

    let from_headers = decode_headers(headers.iter().map(|(n, v)| (*n, v.as_str()))).unwrap();
    let from_body = decode_message(&RawMessage {
        subject: Some(&subject),
        payload: &payload,
        content_type: from_headers.content_type.as_deref(),
        stream_sequence: Some(42),
    })
    .unwrap();

    assert_eq!(from_body.origin, Origin::Current);
    assert_eq!(from_body.envelope.stream_position, Some(42));
    assert_eq!(from_headers.id, from_body.envelope.event_id);
    assert_eq!(
        from_headers.event_type,
        from_body.envelope.event.event_type()
    );
    assert_eq!(from_headers.subject.as_deref(), Some(person.as_str()));
    // The headers carry everything but the context map, which lives in the body.
    let mut body_meta = from_body.envelope.metadata().clone();
    body_meta.context.clear();
    assert_eq!(from_headers.metadata, body_meta);
}
