//! V1 → V2 (total, deterministic) and V2 → V1 (where V1 can say it).

use person_events::{EventId, EventMetadata, PersonEventV2, StreamingEventEnvelope};
use person_metadata::CorrelationId;
use uuid::Uuid;

use crate::v1::{self, PersonEvent};

/// The UUID v5 namespace of ids derived from legacy events.
pub const LEGACY_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6761_6379_4076_8000_7065_7273_6f6e);

/// The context key set on metadata made by upcasting, with value [`UPCAST_FROM_V1`].
pub const UPCAST_CONTEXT_KEY: &str = "upcast_from";
/// The context value marking an event upcast from the V1 `PersonEvent`.
pub const UPCAST_FROM_V1: &str = "PersonEvent.v1";

/// The deterministic event id of a V1 event: a UUID v5 over its canonical JSON.
///
/// The same stored V1 event always gets the same id, so a redelivered legacy event is
/// recognised as the same event by idempotent handlers and by server-side dedup.
pub fn legacy_event_id(event: &PersonEvent) -> EventId {
    use sha1::Digest;

    /// Feeds serialized JSON straight into the hash, with no intermediate buffer.
    struct HashWriter(sha1::Sha1);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    // UUID v5 is SHA-1 over namespace bytes then name bytes; this computes exactly
    // `Uuid::new_v5(&LEGACY_NAMESPACE, canonical_json)` with a faster SHA-1.
    let mut hasher = HashWriter(sha1::Sha1::new());
    hasher.0.update(LEGACY_NAMESPACE.as_bytes());
    if serde_json::to_writer(&mut hasher, event).is_err() {
        // Serializing these plain types cannot fail; the debug form is deterministic too.
        hasher = HashWriter(sha1::Sha1::new());
        hasher.0.update(LEGACY_NAMESPACE.as_bytes());
        hasher.0.update(format!("{event:?}").as_bytes());
    }
    let digest = hasher.0.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    EventId::from_uuid(uuid::Builder::from_sha1_bytes(bytes).into_uuid())
}

/// Upcasts a V1 event to a V2 envelope. Total and deterministic.
///
/// - `event_id`: [`legacy_event_id`]; the correlation id is the same id (a V1 event
///   starts its own conversation); no causation; no actor.
/// - The V1 timestamp (`created_at`, `set_at`, ...) becomes `metadata.timestamp`.
/// - `metadata.context` holds `"upcast_from": "PersonEvent.v1"`.
/// - `sequence` is 0: V1 events did not carry the person's version.
///
/// ```
/// use person_legacy_compat::{upcast, v1::PersonEvent};
/// let json = r#"{"BirthDateSet": {"person_id": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"},
///     "birth_date": "1988-04-12", "set_at": "2025-07-01T09:00:01.250Z"}}"#;
/// let v1: PersonEvent = serde_json::from_str(json).unwrap();
/// let a = upcast(&v1);
/// assert_eq!(a.event.event_type(), "birth_date_set");
/// assert_eq!(a, upcast(&v1), "deterministic, event id included");
/// ```
pub fn upcast(event: &PersonEvent) -> StreamingEventEnvelope {
    upcast_owned(event.clone())
}

/// [`upcast`], taking the event by value (no copy).
pub fn upcast_owned(event: PersonEvent) -> StreamingEventEnvelope {
    let event_id = legacy_event_id(&event);
    let metadata = EventMetadata::with_correlation(CorrelationId::from(event_id))
        .with_timestamp(event.occurred_at())
        .with_context(UPCAST_CONTEXT_KEY, UPCAST_FROM_V1);
    let v2 = upcast_event(event, metadata);
    StreamingEventEnvelope {
        event_id,
        aggregate_id: v2.aggregate_id(),
        sequence: 0,
        event: v2,
        stream_position: None,
    }
}

/// Maps a V1 event to its V2 form with the given metadata.
pub fn upcast_event(event: PersonEvent, metadata: EventMetadata) -> PersonEventV2 {
    match event {
        PersonEvent::PersonCreated(e) => PersonEventV2::Created {
            person_id: e.person_id,
            name: e.name,
            source: e.source,
            metadata,
        },
        PersonEvent::PersonUpdated(e) => PersonEventV2::Updated {
            person_id: e.person_id,
            name: e.name,
            metadata,
        },
        PersonEvent::NameUpdated(e) => PersonEventV2::NameUpdated {
            person_id: e.person_id,
            old_name: e.old_name,
            new_name: e.new_name,
            change_reason: e.reason,
            metadata,
        },
        PersonEvent::BirthDateSet(e) => PersonEventV2::BirthDateSet {
            person_id: e.person_id,
            birth_date: e.birth_date,
            metadata,
        },
        PersonEvent::DeathRecorded(e) => PersonEventV2::DeathRecorded {
            person_id: e.person_id,
            date_of_death: e.date_of_death,
            metadata,
        },
        PersonEvent::ComponentRegistered(e) => PersonEventV2::ComponentAdded {
            person_id: e.person_id,
            component_type: e.component_type,
            component_data: serde_json::Value::Null,
            metadata,
        },
        PersonEvent::ComponentUnregistered(e) => PersonEventV2::ComponentRemoved {
            person_id: e.person_id,
            component_type: e.component_type,
            component_id: None,
            metadata,
        },
        PersonEvent::PersonDeactivated(e) => PersonEventV2::Suspended {
            person_id: e.person_id,
            reason: e.reason,
            metadata,
        },
        PersonEvent::PersonReactivated(e) => PersonEventV2::Activated {
            person_id: e.person_id,
            reason: e.reason,
            metadata,
        },
        PersonEvent::PersonMergedInto(e) => PersonEventV2::PersonMerged {
            source_person_id: e.source_person_id,
            target_person_id: e.merged_into_id,
            merge_reason: e.merge_reason,
            metadata,
        },
        PersonEvent::ComponentDataUpdated(e) => PersonEventV2::ComponentDataUpdated {
            person_id: e.person_id,
            component_id: e.component_id,
            data: e.data,
            metadata,
        },
    }
}

/// A V2 event that the V1 `PersonEvent` has no variant for.
///
/// ```
/// use person_events::{PersonEventV2, PersonId};
/// use person_legacy_compat::v1::PersonEvent;
/// let archived = PersonEventV2::Archived {
///     person_id: PersonId::new(), reason: "gdpr".into(), metadata: Default::default(),
/// };
/// let err = PersonEvent::try_from(archived).unwrap_err();
/// assert_eq!(err.event_type(), "archived");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "V2 event `{event_type}` has no V1 form; only V1-era consumers need a downcast, so route it to V2 readers"
)]
pub struct NotRepresentableInV1 {
    event_type: &'static str,
}

impl NotRepresentableInV1 {
    /// The V2 event type that could not be downcast.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }
}

/// V2 → V1 for consumers that still read V1. Never panics.
///
/// `Archived`, `ComponentUpdated`, `LocationAssigned`, `EmploymentAdded` and
/// `IdentityLinked` are V2-only and give [`NotRepresentableInV1`]. Two mappings lose
/// data V1 cannot hold: `ComponentAdded` drops `component_data`, and `ComponentRemoved`
/// drops `component_id`. Metadata other than the timestamp is dropped.
impl TryFrom<PersonEventV2> for PersonEvent {
    type Error = NotRepresentableInV1;

    fn try_from(event: PersonEventV2) -> Result<Self, Self::Error> {
        let at = event.metadata().timestamp;
        Ok(match event {
            PersonEventV2::Created {
                person_id,
                name,
                source,
                ..
            } => PersonEvent::PersonCreated(v1::PersonCreated {
                person_id,
                name,
                source,
                created_at: at,
            }),
            PersonEventV2::Updated {
                person_id, name, ..
            } => PersonEvent::PersonUpdated(v1::PersonUpdated {
                person_id,
                name,
                updated_at: at,
            }),
            PersonEventV2::NameUpdated {
                person_id,
                old_name,
                new_name,
                change_reason,
                ..
            } => PersonEvent::NameUpdated(v1::NameUpdated {
                person_id,
                old_name,
                new_name,
                reason: change_reason,
                updated_at: at,
            }),
            PersonEventV2::BirthDateSet {
                person_id,
                birth_date,
                ..
            } => PersonEvent::BirthDateSet(v1::BirthDateSet {
                person_id,
                birth_date,
                set_at: at,
            }),
            PersonEventV2::DeathRecorded {
                person_id,
                date_of_death,
                ..
            } => PersonEvent::DeathRecorded(v1::DeathRecorded {
                person_id,
                date_of_death,
                recorded_at: at,
            }),
            PersonEventV2::ComponentAdded {
                person_id,
                component_type,
                ..
            } => PersonEvent::ComponentRegistered(v1::ComponentRegistered {
                person_id,
                component_type,
                registered_at: at,
            }),
            PersonEventV2::ComponentRemoved {
                person_id,
                component_type,
                ..
            } => PersonEvent::ComponentUnregistered(v1::ComponentUnregistered {
                person_id,
                component_type,
                unregistered_at: at,
            }),
            PersonEventV2::Suspended {
                person_id, reason, ..
            } => PersonEvent::PersonDeactivated(v1::PersonDeactivated {
                person_id,
                reason,
                deactivated_at: at,
            }),
            PersonEventV2::Activated {
                person_id, reason, ..
            } => PersonEvent::PersonReactivated(v1::PersonReactivated {
                person_id,
                reason,
                reactivated_at: at,
            }),
            PersonEventV2::PersonMerged {
                source_person_id,
                target_person_id,
                merge_reason,
                ..
            } => PersonEvent::PersonMergedInto(v1::PersonMergedInto {
                source_person_id,
                merged_into_id: target_person_id,
                merge_reason,
                merged_at: at,
            }),
            PersonEventV2::ComponentDataUpdated {
                person_id,
                component_id,
                data,
                ..
            } => PersonEvent::ComponentDataUpdated(v1::ComponentDataUpdated {
                person_id,
                component_id,
                data,
                updated_at: at,
            }),
            other @ (PersonEventV2::Archived { .. }
            | PersonEventV2::ComponentUpdated { .. }
            | PersonEventV2::LocationAssigned { .. }
            | PersonEventV2::EmploymentAdded { .. }
            | PersonEventV2::IdentityLinked { .. }) => {
                return Err(NotRepresentableInV1 {
                    event_type: other.event_type(),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_ids_are_plain_uuid_v5_over_canonical_json() {
        let json = r#"{"PersonReactivated": {"person_id": {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"}, "reason": "rehired", "reactivated_at": "2025-08-01T09:00:00Z"}}"#;
        let event: PersonEvent = serde_json::from_str(json).unwrap();
        let canonical = serde_json::to_vec(&event).unwrap();
        let expected = Uuid::new_v5(&LEGACY_NAMESPACE, &canonical);
        assert_eq!(*legacy_event_id(&event).as_uuid(), expected);
        assert_eq!(expected.get_version_num(), 5);
        // Pinned: stored ids must never change across releases.
        assert_eq!(
            legacy_event_id(&event).to_string(),
            "a5ee8ade-203c-5b2b-8abb-464f9a06a879"
        );
    }

    #[test]
    fn a_v2_only_event_names_its_type_when_it_cannot_be_downcast() {
        let archived = PersonEventV2::Archived {
            person_id: person_events::PersonId::new(),
            reason: "gdpr".into(),
            metadata: Default::default(),
        };
        let err = PersonEvent::try_from(archived).unwrap_err();
        assert_eq!(err.event_type(), "archived");
        assert!(
            err.to_string()
                .starts_with("V2 event `archived` has no V1 form")
        );
    }
}
