//! Proptest strategies for every value and event type (feature `proptest`).
//!
//! ```
//! use proptest::strategy::{Strategy, ValueTree};
//! use proptest::test_runner::TestRunner;
//! let mut runner = TestRunner::default();
//! let env = person_events::strategies::envelope().new_tree(&mut runner).unwrap().current();
//! assert!(env.validate().is_ok());
//! ```

use chrono::{DateTime, NaiveDate, Utc};
use person_metadata::{CausationId, CorrelationId, EventId, EventMetadata};
use proptest::prelude::*;
use uuid::Uuid;

use crate::{
    ComponentType, MergeReason, PersonEventV2, PersonId, PersonName, StreamingEventEnvelope,
};

/// Any UUID.
pub fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Any person id.
pub fn person_id() -> impl Strategy<Value = PersonId> {
    uuid().prop_map(PersonId::from_uuid)
}

/// Any UTC instant between 1970 and 2096, with nanoseconds.
pub fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_000_000_000, 0u32..1_000_000_000)
        .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap_or_default())
}

/// Any calendar date between years 1 and 9999.
pub fn date() -> impl Strategy<Value = NaiveDate> {
    (1i32..9999, 1u32..=12, 1u32..=28)
        .prop_map(|(y, m, d)| NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default())
}

/// Free text, including unicode and JSON-hostile characters.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _.-]{0,24}",
        any::<String>(),
        Just("\"quoted\" \\ back\nslash".to_owned())
    ]
}

/// A name part as constructors accept it.
pub fn name_part() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z][A-Za-z' -]{0,20}[a-z]",
        Just("García López".to_owned()),
        Just("李".to_owned())
    ]
}

/// Any valid person name.
pub fn person_name() -> impl Strategy<Value = PersonName> {
    (
        name_part(),
        proptest::collection::vec(name_part(), 0..3),
        name_part(),
        proptest::option::of(name_part()),
        proptest::option::of(Just("Dr.".to_owned())),
        proptest::option::of(Just("Jr.".to_owned())),
    )
        .prop_map(
            |(given, middle, family, preferred, honorific, suffix)| PersonName {
                given_name: given.trim().to_owned(),
                family_name: family.trim().to_owned(),
                middle_names: middle.into_iter().map(|m| m.trim().to_owned()).collect(),
                preferred_name: preferred.map(|p| p.trim().to_owned()),
                honorific,
                suffix,
            },
        )
}

/// Any metadata.
pub fn metadata() -> impl Strategy<Value = EventMetadata> {
    (
        uuid(),
        proptest::option::of(uuid()),
        timestamp(),
        proptest::option::of(text()),
        proptest::collection::btree_map(
            "[a-z]{1,8}",
            any::<i64>().prop_map(serde_json::Value::from),
            0..3,
        ),
        proptest::option::of("00-[0-9a-f]{32}-[0-9a-f]{16}-01"),
    )
        .prop_map(|(corr, cause, ts, actor, context, tp)| {
            let mut m =
                EventMetadata::with_correlation(CorrelationId::from_uuid(corr)).with_timestamp(ts);
            m.causation_id = cause.map(CausationId::from_uuid);
            m.actor = actor;
            m.context = context;
            m.traceparent = tp;
            m
        })
}

/// Any merge reason.
pub fn merge_reason() -> impl Strategy<Value = MergeReason> {
    prop_oneof![
        Just(MergeReason::DuplicateIdentity),
        Just(MergeReason::DataQualityIssue),
        Just(MergeReason::UserRequested),
        Just(MergeReason::PolicyDetermined),
    ]
}

/// Any component type.
pub fn component_type() -> impl Strategy<Value = ComponentType> {
    (0..ComponentType::ALL.len()).prop_map(|i| ComponentType::ALL[i])
}

/// Opaque JSON data.
pub fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-zA-Z_]{1,10}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any event of every variant.
pub fn event() -> impl Strategy<Value = PersonEventV2> {
    let p = person_id;
    let m = metadata;
    prop_oneof![
        (p(), person_name(), text(), m()).prop_map(|(person_id, name, source, metadata)| {
            PersonEventV2::Created {
                person_id,
                name,
                source,
                metadata,
            }
        }),
        (p(), text(), m()).prop_map(|(person_id, reason, metadata)| PersonEventV2::Activated {
            person_id,
            reason,
            metadata
        }),
        (p(), text(), m()).prop_map(|(person_id, reason, metadata)| PersonEventV2::Suspended {
            person_id,
            reason,
            metadata
        }),
        (p(), text(), m()).prop_map(|(person_id, reason, metadata)| PersonEventV2::Archived {
            person_id,
            reason,
            metadata
        }),
        (p(), person_name(), m()).prop_map(|(person_id, name, metadata)| PersonEventV2::Updated {
            person_id,
            name,
            metadata
        }),
        (
            p(),
            person_name(),
            person_name(),
            proptest::option::of(text()),
            m()
        )
            .prop_map(|(person_id, old_name, new_name, change_reason, metadata)| {
                PersonEventV2::NameUpdated {
                    person_id,
                    old_name,
                    new_name,
                    change_reason,
                    metadata,
                }
            }),
        (p(), date(), m()).prop_map(|(person_id, birth_date, metadata)| {
            PersonEventV2::BirthDateSet {
                person_id,
                birth_date,
                metadata,
            }
        }),
        (p(), date(), m()).prop_map(|(person_id, date_of_death, metadata)| {
            PersonEventV2::DeathRecorded {
                person_id,
                date_of_death,
                metadata,
            }
        }),
        (p(), component_type(), json(), m()).prop_map(
            |(person_id, component_type, component_data, metadata)| PersonEventV2::ComponentAdded {
                person_id,
                component_type,
                component_data,
                metadata
            }
        ),
        (p(), component_type(), uuid(), json(), m()).prop_map(
            |(person_id, component_type, component_id, changes, metadata)| {
                PersonEventV2::ComponentUpdated {
                    person_id,
                    component_type,
                    component_id,
                    changes,
                    metadata,
                }
            }
        ),
        (p(), component_type(), proptest::option::of(uuid()), m()).prop_map(
            |(person_id, component_type, component_id, metadata)| PersonEventV2::ComponentRemoved {
                person_id,
                component_type,
                component_id,
                metadata
            }
        ),
        (p(), uuid(), json(), m()).prop_map(|(person_id, component_id, data, metadata)| {
            PersonEventV2::ComponentDataUpdated {
                person_id,
                component_id,
                data,
                metadata,
            }
        }),
        (p(), p(), merge_reason(), m()).prop_map(
            |(source_person_id, target_person_id, merge_reason, metadata)| {
                PersonEventV2::PersonMerged {
                    source_person_id,
                    target_person_id,
                    merge_reason,
                    metadata,
                }
            }
        ),
        (p(), uuid(), text(), m()).prop_map(|(person_id, location_id, location_type, metadata)| {
            PersonEventV2::LocationAssigned {
                person_id,
                location_id,
                location_type,
                metadata,
            }
        }),
        (p(), uuid(), text(), m()).prop_map(|(person_id, organization_id, role, metadata)| {
            PersonEventV2::EmploymentAdded {
                person_id,
                organization_id,
                role,
                metadata,
            }
        }),
        (p(), uuid(), text(), m()).prop_map(|(person_id, identity_id, identity_type, metadata)| {
            PersonEventV2::IdentityLinked {
                person_id,
                identity_id,
                identity_type,
                metadata,
            }
        }),
    ]
}

/// Any consistent envelope (its person is its event's person).
pub fn envelope() -> impl Strategy<Value = StreamingEventEnvelope> {
    (
        event(),
        uuid(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(event, id, sequence, stream_position)| StreamingEventEnvelope {
                event_id: EventId::from_uuid(id),
                aggregate_id: event.aggregate_id(),
                sequence,
                event,
                stream_position,
            },
        )
}
