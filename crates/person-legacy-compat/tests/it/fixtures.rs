use chrono::{DateTime, Utc};
use person_events::codec::DecodeErrorKind;
use person_events::{PersonEventV2, codec};
use person_legacy_compat::v1::PersonEvent;
use person_legacy_compat::{
    Decoder, Origin, RawMessage, UPCAST_CONTEXT_KEY, UPCAST_FROM_V1, decode_message, upcast,
};
use serde_json::Value;

const V1: &str = include_str!("../fixtures/week1/legacy-v1-events.ndjson");
const WEEK1_V2: &str = include_str!("../fixtures/week1/week1-v2-envelopes.ndjson");
const EDGE_V1: &str = include_str!("../fixtures/edge-v1-events.ndjson");

fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.lines().filter(|l| !l.trim().is_empty())
}

#[test]
fn every_v1_fixture_line_decodes_upcasts_and_round_trips() {
    let mut seen = std::collections::BTreeSet::new();
    for line in lines(V1).chain(lines(EDGE_V1)) {
        let v1: PersonEvent = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        seen.insert(v1.variant_name());

        let decoded = decode_message(&RawMessage::from_payload(line.as_bytes())).unwrap();
        assert_eq!(decoded.origin, Origin::LegacyV1);
        let env = &decoded.envelope;
        assert_eq!(env, &upcast(&v1), "decoder and upcaster agree");
        assert_eq!(env.aggregate_id, v1.person_id());
        assert_eq!(env.metadata().timestamp, v1.occurred_at());
        assert_eq!(env.metadata().context[UPCAST_CONTEXT_KEY], UPCAST_FROM_V1);

        // Deterministic: the same stored event, read again, is the same envelope.
        let again = decode_message(&RawMessage::from_payload(line.as_bytes())).unwrap();
        assert_eq!(again.envelope, decoded.envelope);

        // V1 -> V2 -> V1 is the identity.
        let back = PersonEvent::try_from(env.event.clone()).unwrap();
        assert_eq!(back, v1, "{line}");

        // And the upcast envelope survives the current codec.
        let bytes = codec::encode(env).unwrap();
        assert_eq!(&codec::decode(&bytes).unwrap(), env);
    }
    assert_eq!(seen.len(), 11, "fixtures cover every V1 variant: {seen:?}");
}

#[test]
fn offsets_are_read_as_the_same_instant() {
    let line = lines(V1).find(|l| l.contains("+02:00")).unwrap();
    let env = decode_message(&RawMessage::from_payload(line.as_bytes()))
        .unwrap()
        .envelope;
    let expected: DateTime<Utc> = "2025-07-15T12:30:00Z".parse().unwrap();
    assert_eq!(env.metadata().timestamp, expected);

    let edge = lines(EDGE_V1).next().unwrap();
    let env = decode_message(&RawMessage::from_payload(edge.as_bytes()))
        .unwrap()
        .envelope;
    let expected: DateTime<Utc> = "2000-01-01T11:29:59.999999999Z".parse().unwrap();
    assert_eq!(env.metadata().timestamp, expected);
    let PersonEventV2::Created { name, source, .. } = &env.event else {
        panic!("expected Created");
    };
    assert_eq!(name.family_name, "Ñúñez-Łukasz 李");
    assert_eq!(source, "import \"quoted\" \\ path");
}

#[test]
fn whitespace_does_not_change_the_legacy_event_id() {
    let line = lines(V1).next().unwrap();
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(line).unwrap()).unwrap();
    let a = decode_message(&RawMessage::from_payload(line.as_bytes())).unwrap();
    let b = decode_message(&RawMessage::from_payload(pretty.as_bytes())).unwrap();
    assert_eq!(a.envelope.event_id, b.envelope.event_id);
    // Different events get different ids.
    let ids: std::collections::BTreeSet<_> = lines(V1)
        .map(|l| {
            decode_message(&RawMessage::from_payload(l.as_bytes()))
                .unwrap()
                .envelope
                .event_id
        })
        .collect();
    assert_eq!(ids.len(), lines(V1).count());
}

#[test]
fn every_week1_envelope_decodes_on_its_week1_subject() {
    for line in lines(WEEK1_V2) {
        let record: Value = serde_json::from_str(line).unwrap();
        let subject = record["subject"].as_str().unwrap();
        let payload = serde_json::to_vec(&record["payload"]).unwrap();
        let decoded = Decoder::default()
            .decode(&RawMessage {
                subject: Some(subject),
                payload: &payload,
                content_type: None,
                stream_sequence: None,
            })
            .unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(decoded.origin, Origin::OlderEnvelope { schema_version: 1 });
        let env = decoded.envelope;
        let p = &record["payload"];
        assert_eq!(env.event_id.to_string(), p["event_id"].as_str().unwrap());
        assert_eq!(
            env.aggregate_id.to_string(),
            p["aggregate_id"]["id"].as_str().unwrap()
        );
        assert_eq!(env.sequence, p["sequence"].as_u64().unwrap());
        assert_eq!(env.stream_position, p["stream_position"].as_u64());
        assert_eq!(
            env.event.variant_name(),
            p["event"]["event_type"].as_str().unwrap()
        );
        let meta = &p["event"]["data"]["metadata"];
        assert_eq!(
            env.metadata().correlation_id.to_string(),
            meta["correlation_id"].as_str().unwrap()
        );
        assert_eq!(
            env.metadata()
                .causation_id
                .map(|c| c.to_string())
                .as_deref(),
            meta["causation_id"].as_str()
        );
        assert_eq!(env.metadata().actor.as_deref(), meta["actor"].as_str());
        assert!(
            subject.ends_with(&format!(".person.{}", env.event.event_type())),
            "{subject}"
        );

        // The stream sequence of the message wins over the stored one.
        let with_seq = decode_message(&RawMessage {
            stream_sequence: Some(777),
            ..RawMessage::from_payload(&payload)
        })
        .unwrap();
        assert_eq!(with_seq.envelope.stream_position, Some(777));

        // Re-encoded, it is a current envelope.
        let current = codec::encode(&env).unwrap();
        let again = decode_message(&RawMessage::from_payload(&current)).unwrap();
        assert_eq!(again.origin, Origin::Current);
        assert_eq!(again.envelope, env);
    }
}

#[test]
fn an_event_on_another_persons_subject_is_rejected() {
    let line = lines(V1).next().unwrap();
    let err = decode_message(&RawMessage {
        subject: Some("person.events.7c9e6679-7425-40de-944b-e07fc1f90ae7.created"),
        ..RawMessage::from_payload(line.as_bytes())
    })
    .unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::InvalidField);
    assert!(err.to_string().contains("subject"), "{err}");
}

/// A current envelope as JSON, changed by `edit`.
fn edited_envelope(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let person = person_events::PersonId::new();
    let env = person_events::StreamingEventEnvelope::new(
        person,
        1,
        PersonEventV2::Activated {
            person_id: person,
            reason: "test".into(),
            metadata: person_metadata::EventMetadata::new(),
        },
    );
    let mut value: Value = serde_json::from_slice(&codec::encode(&env).unwrap()).unwrap();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

#[test]
fn an_envelope_whose_event_is_about_another_person_is_rejected() {
    let other = person_events::PersonId::new();
    let body = edited_envelope(|v| v["aggregate_id"] = serde_json::to_value(other).unwrap());
    let err = decode_message(&RawMessage::from_payload(&body)).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::InvalidField);
    assert!(err.to_string().contains("is about person"), "{err}");
}

#[test]
fn metadata_of_an_unknown_major_version_is_rejected_and_a_known_one_is_read() {
    let body = edited_envelope(|v| v["event"]["data"]["metadata"]["version"] = "99.0".into());
    let err = decode_message(&RawMessage::from_payload(&body)).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::UnsupportedSchemaVersion);
    assert!(err.to_string().contains("99.0"), "{err}");
    let body = edited_envelope(|v| v["event"]["data"]["metadata"]["version"] = "1.3".into());
    let decoded = decode_message(&RawMessage::from_payload(&body)).unwrap();
    assert_eq!(decoded.envelope.metadata().version, "1.3");
}

#[test]
fn typed_errors_for_bad_messages() {
    let v1 = lines(V1).next().unwrap().as_bytes();
    let err = decode_message(&RawMessage {
        content_type: Some("application/protobuf"),
        ..RawMessage::from_payload(v1)
    })
    .unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::UnsupportedContentType);
    assert!(err.to_string().contains("Content-Type"));
    decode_message(&RawMessage {
        content_type: Some("application/json; charset=utf-8"),
        ..RawMessage::from_payload(v1)
    })
    .unwrap();

    let cases: &[(&str, DecodeErrorKind)] = &[
        (
            r#"{"PersonTeleported": {"person_id": {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"}}}"#,
            DecodeErrorKind::UnknownEventType,
        ),
        (
            r#"{"PersonCreated": {"person_id": {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"}}}"#,
            DecodeErrorKind::MissingField,
        ),
        (
            r#"{"BirthDateSet": {"person_id": {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"}, "birth_date": "1988-13-45", "set_at": "2025-07-01T09:00:00Z"}}"#,
            DecodeErrorKind::InvalidField,
        ),
        (
            r#"{"schema_version": 7, "event_id": "01890a5d-ac96-774b-bcce-b302099a8060", "event": {"event_type": "Created", "data": {}}}"#,
            DecodeErrorKind::UnsupportedSchemaVersion,
        ),
        (
            r#"{"event_id": "01890a5d-ac96-774b-bcce-b302099a8060", "event": {"event_type": "Teleported", "data": {}}}"#,
            DecodeErrorKind::UnknownEventType,
        ),
        (r#"{"a": 1, "b": 2}"#, DecodeErrorKind::UnrecognizedShape),
        ("[]", DecodeErrorKind::UnrecognizedShape),
        ("{\"PersonCreated\": ", DecodeErrorKind::MalformedJson),
        ("", DecodeErrorKind::MalformedJson),
    ];
    for (input, kind) in cases {
        let err = decode_message(&RawMessage::from_payload(input.as_bytes())).unwrap_err();
        assert_eq!(err.kind(), *kind, "{input}: {err}");
    }
}
