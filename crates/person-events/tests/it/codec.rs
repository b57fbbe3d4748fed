use person_events::codec::{self, DecodeErrorKind, SCHEMA_VERSION};
use person_events::strategies;
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use proptest::prelude::*;

fn sample() -> StreamingEventEnvelope {
    let person_id = PersonId::new();
    StreamingEventEnvelope::new(
        person_id,
        1,
        PersonEventV2::Created {
            person_id,
            name: PersonName::new("Jane", Some("Q"), "Doe").unwrap(),
            source: "api".into(),
            metadata: EventMetadata::new().with_actor("svc"),
        },
    )
}

#[test]
fn schema_version_is_the_first_key() {
    let bytes = codec::encode(&sample()).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with(&format!(
            "{{\"schema_version\":{SCHEMA_VERSION},\"event_id\":"
        )),
        "{text}"
    );
}

#[test]
fn typed_errors_for_each_failure() {
    let good = serde_json::to_value(sample()).unwrap();

    let mut unknown = good.clone();
    unknown["event"]["event_type"] = "Teleported".into();
    let err = codec::decode(&serde_json::to_vec(&unknown).unwrap()).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::UnknownEventType, "{err}");

    let mut missing = good.clone();
    missing["event"]["data"]
        .as_object_mut()
        .unwrap()
        .remove("source");
    let err = codec::decode(&serde_json::to_vec(&missing).unwrap()).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::MissingField, "{err}");
    assert!(err.detail().contains("source"), "{err}");

    let mut wrong_type = good.clone();
    wrong_type["sequence"] = "seven".into();
    let err = codec::decode(&serde_json::to_vec(&wrong_type).unwrap()).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::InvalidField, "{err}");

    let mut future = good.clone();
    future["schema_version"] = 3.into();
    let err = codec::decode(&serde_json::to_vec(&future).unwrap()).unwrap_err();
    assert_eq!(
        err.kind(),
        DecodeErrorKind::UnsupportedSchemaVersion,
        "{err}"
    );

    for junk in [&b""[..], b"{", b"null", b"[1,2]", b"\xff\xfe", b"{\"a\":1}"] {
        let err = codec::decode(junk).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                DecodeErrorKind::MalformedJson | DecodeErrorKind::UnrecognizedShape
            ),
            "{junk:?}: {err}"
        );
    }
}

#[test]
fn reordered_keys_still_decode() {
    let env = sample();
    let value = serde_json::to_value(&env).unwrap();
    // serde_json's Value map sorts keys: aggregate_id comes first now.
    let bytes = serde_json::to_vec(&value).unwrap();
    assert_eq!(codec::decode(&bytes).unwrap(), env);
}

#[test]
fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
    let mut deep = String::from("{\"schema_version\":2,\"event_id\":");
    deep.push_str(&"[".repeat(100_000));
    assert!(codec::decode(deep.as_bytes()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_envelope_survives_encode_decode(env in strategies::envelope()) {
        let bytes = codec::encode(&env).unwrap();
        prop_assert_eq!(codec::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_valid_json(
        env in strategies::envelope(),
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = codec::encode(&env).unwrap();
        for (at, byte) in cuts {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = codec::decode(&bytes);
        let truncated = &bytes[..bytes.len() / 2];
        prop_assert!(codec::decode(truncated).is_err());
    }

    #[test]
    fn every_event_has_a_safe_subject(event in strategies::event()) {
        let subject = event.subject();
        let parsed = person_events::subject::parse_event_subject(&subject).unwrap();
        prop_assert_eq!(parsed.person_id, event.aggregate_id());
        prop_assert_eq!(parsed.event_type.as_str(), event.event_type());
        prop_assert_eq!(
            person_events::variant_for_event_type(event.event_type()),
            Some(event.variant_name())
        );
    }
}
