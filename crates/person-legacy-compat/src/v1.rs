//! The legacy `PersonEvent` (V1), exactly as the week-1 system stored it.
//!
//! Externally tagged JSON, `{"PersonCreated": {...}}`; person ids as `{"id": uuid}`;
//! timestamps RFC 3339 with any offset (read into UTC); dates `YYYY-MM-DD`.

use chrono::{DateTime, NaiveDate, Utc};
use person_events::{ComponentType, MergeReason, PersonId, PersonName};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The legacy event enum. Eleven variants, one struct each.
///
/// ```
/// use person_legacy_compat::v1::PersonEvent;
/// let json = r#"{"PersonReactivated": {"person_id": {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"},
///     "reason": "rehired", "reactivated_at": "2025-08-01T09:00:00Z"}}"#;
/// let event: PersonEvent = serde_json::from_str(json).unwrap();
/// assert_eq!(event.variant_name(), "PersonReactivated");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::enum_variant_names)]
pub enum PersonEvent {
    /// See [`PersonCreated`].
    PersonCreated(PersonCreated),
    /// See [`PersonUpdated`].
    PersonUpdated(PersonUpdated),
    /// See [`NameUpdated`].
    NameUpdated(NameUpdated),
    /// See [`BirthDateSet`].
    BirthDateSet(BirthDateSet),
    /// See [`DeathRecorded`].
    DeathRecorded(DeathRecorded),
    /// See [`ComponentRegistered`].
    ComponentRegistered(ComponentRegistered),
    /// See [`ComponentUnregistered`].
    ComponentUnregistered(ComponentUnregistered),
    /// See [`PersonDeactivated`].
    PersonDeactivated(PersonDeactivated),
    /// See [`PersonReactivated`].
    PersonReactivated(PersonReactivated),
    /// See [`PersonMergedInto`].
    PersonMergedInto(PersonMergedInto),
    /// See [`ComponentDataUpdated`].
    ComponentDataUpdated(ComponentDataUpdated),
}

/// Every V1 variant name.
pub const VARIANTS: [&str; 11] = [
    "PersonCreated",
    "PersonUpdated",
    "NameUpdated",
    "BirthDateSet",
    "DeathRecorded",
    "ComponentRegistered",
    "ComponentUnregistered",
    "PersonDeactivated",
    "PersonReactivated",
    "PersonMergedInto",
    "ComponentDataUpdated",
];

impl PersonEvent {
    /// The variant name, as it appears as the JSON tag.
    pub fn variant_name(&self) -> &'static str {
        VARIANTS[match self {
            Self::PersonCreated(_) => 0,
            Self::PersonUpdated(_) => 1,
            Self::NameUpdated(_) => 2,
            Self::BirthDateSet(_) => 3,
            Self::DeathRecorded(_) => 4,
            Self::ComponentRegistered(_) => 5,
            Self::ComponentUnregistered(_) => 6,
            Self::PersonDeactivated(_) => 7,
            Self::PersonReactivated(_) => 8,
            Self::PersonMergedInto(_) => 9,
            Self::ComponentDataUpdated(_) => 10,
        }]
    }

    /// The person the event is about (for a merge, the person merged away).
    pub fn person_id(&self) -> PersonId {
        match self {
            Self::PersonCreated(e) => e.person_id,
            Self::PersonUpdated(e) => e.person_id,
            Self::NameUpdated(e) => e.person_id,
            Self::BirthDateSet(e) => e.person_id,
            Self::DeathRecorded(e) => e.person_id,
            Self::ComponentRegistered(e) => e.person_id,
            Self::ComponentUnregistered(e) => e.person_id,
            Self::PersonDeactivated(e) => e.person_id,
            Self::PersonReactivated(e) => e.person_id,
            Self::PersonMergedInto(e) => e.source_person_id,
            Self::ComponentDataUpdated(e) => e.person_id,
        }
    }

    /// When the event happened.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::PersonCreated(e) => e.created_at,
            Self::PersonUpdated(e) => e.updated_at,
            Self::NameUpdated(e) => e.updated_at,
            Self::BirthDateSet(e) => e.set_at,
            Self::DeathRecorded(e) => e.recorded_at,
            Self::ComponentRegistered(e) => e.registered_at,
            Self::ComponentUnregistered(e) => e.unregistered_at,
            Self::PersonDeactivated(e) => e.deactivated_at,
            Self::PersonReactivated(e) => e.reactivated_at,
            Self::PersonMergedInto(e) => e.merged_at,
            Self::ComponentDataUpdated(e) => e.updated_at,
        }
    }
}

/// A person was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonCreated {
    /// The person.
    pub person_id: PersonId,
    /// Their name.
    pub name: PersonName,
    /// Where the record came from.
    pub source: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A person's record was updated (the full name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonUpdated {
    /// The person.
    pub person_id: PersonId,
    /// The name after the update.
    pub name: PersonName,
    /// When.
    pub updated_at: DateTime<Utc>,
}

/// A name changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NameUpdated {
    /// The person.
    pub person_id: PersonId,
    /// Before.
    pub old_name: PersonName,
    /// After.
    pub new_name: PersonName,
    /// Why (nullable).
    pub reason: Option<String>,
    /// When.
    pub updated_at: DateTime<Utc>,
}

/// A birth date was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BirthDateSet {
    /// The person.
    pub person_id: PersonId,
    /// The date.
    pub birth_date: NaiveDate,
    /// When.
    pub set_at: DateTime<Utc>,
}

/// A death was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeathRecorded {
    /// The person.
    pub person_id: PersonId,
    /// The date.
    pub date_of_death: NaiveDate,
    /// When.
    pub recorded_at: DateTime<Utc>,
}

/// A component was registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentRegistered {
    /// The person.
    pub person_id: PersonId,
    /// Which kind.
    pub component_type: ComponentType,
    /// When.
    pub registered_at: DateTime<Utc>,
}

/// A component was unregistered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentUnregistered {
    /// The person.
    pub person_id: PersonId,
    /// Which kind.
    pub component_type: ComponentType,
    /// When.
    pub unregistered_at: DateTime<Utc>,
}

/// A person was deactivated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonDeactivated {
    /// The person.
    pub person_id: PersonId,
    /// Why.
    pub reason: String,
    /// When.
    pub deactivated_at: DateTime<Utc>,
}

/// A person was reactivated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonReactivated {
    /// The person.
    pub person_id: PersonId,
    /// Why.
    pub reason: String,
    /// When.
    pub reactivated_at: DateTime<Utc>,
}

/// A person was merged into another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonMergedInto {
    /// The person merged away.
    pub source_person_id: PersonId,
    /// The person that remains.
    pub merged_into_id: PersonId,
    /// Why.
    pub merge_reason: MergeReason,
    /// When.
    pub merged_at: DateTime<Utc>,
}

/// A component's data was replaced. `data` is the week-1 nested, externally tagged
/// component data, kept opaque.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentDataUpdated {
    /// The person.
    pub person_id: PersonId,
    /// Which component (a bare UUID).
    pub component_id: Uuid,
    /// The data, opaque.
    pub data: serde_json::Value,
    /// When.
    pub updated_at: DateTime<Utc>,
}
