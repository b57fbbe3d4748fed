use person_events::{PersonEventV2, codec, strategies};
use person_legacy_compat::v1::PersonEvent;
use person_legacy_compat::{Origin, RawMessage, decode_message, upcast, upcast_event};
use proptest::prelude::*;

const SAMPLES: &str = concat!(
    include_str!("../fixtures/week1/legacy-v1-events.ndjson"),
    include_str!("../fixtures/week1/week1-v2-envelopes.ndjson"),
);

/// V1 events, made by downcasting arbitrary V2 events that V1 can represent.
fn v1_event() -> impl Strategy<Value = PersonEvent> {
    strategies::event().prop_filter_map("V2-only event", |e| PersonEvent::try_from(e).ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_v1_event_survives_upcast_then_downcast(v1 in v1_event()) {
        let env = upcast(&v1);
        prop_assert_eq!(PersonEvent::try_from(env.event.clone()).unwrap(), v1.clone());
        // Through the wire, too.
        let bytes = serde_json::to_vec(&v1).unwrap();
        let decoded = decode_message(&RawMessage::from_payload(&bytes)).unwrap();
        prop_assert_eq!(decoded.origin, Origin::LegacyV1);
        prop_assert_eq!(decoded.envelope, env);
    }

    #[test]
    fn downcast_keeps_what_v1_can_hold(event in strategies::event()) {
        let meta = event.metadata().clone();
        match PersonEvent::try_from(event.clone()) {
            Ok(v1) => {
                let up = upcast_event(v1, meta);
                prop_assert_eq!(up.event_type(), event.event_type());
                prop_assert_eq!(up.aggregate_id(), event.aggregate_id());
            }
            Err(e) => prop_assert!(matches!(
                event,
                PersonEventV2::Archived { .. } | PersonEventV2::ComponentUpdated { .. }
                    | PersonEventV2::LocationAssigned { .. } | PersonEventV2::EmploymentAdded { .. }
                    | PersonEventV2::IdentityLinked { .. }
            ), "{e}"),
        }
    }

    #[test]
    fn any_current_envelope_decodes_as_current(env in strategies::envelope()) {
        let bytes = codec::encode(&env).unwrap();
        let decoded = decode_message(&RawMessage::from_payload(&bytes)).unwrap();
        prop_assert_eq!(decoded.origin, Origin::Current);
        prop_assert_eq!(decoded.envelope, env);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_message(&RawMessage::from_payload(&bytes));
    }

    #[test]
    fn decoder_never_panics_on_mutated_stored_events(
        line in (0..SAMPLES.lines().count()).prop_map(|i| SAMPLES.lines().nth(i).unwrap_or_default()),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = line.as_bytes().to_vec();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode_message(&RawMessage::from_payload(&bytes));
        let _ = decode_message(&RawMessage::from_payload(&bytes[..cut.index(bytes.len())]));
    }
}
