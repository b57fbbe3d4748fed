//! [`PersonEventV2`]: the current Person domain events.

use chrono::NaiveDate;
use person_metadata::EventMetadata;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::subject;
use crate::{ComponentType, MergeReason, PersonId, PersonName};

/// A Person domain event. Every variant carries its [`EventMetadata`].
///
/// JSON is adjacently tagged, `{"event_type": "<Variant>", "data": {...}}`, exactly as the
/// week-1 system wrote it, so stored week-1 events decode unchanged. The variants are the
/// week-1 ones plus two that give every legacy V1 event a faithful V2 form:
/// [`PersonEventV2::Updated`] (V1 `PersonUpdated`, which carried the full new name) and
/// [`PersonEventV2::ComponentDataUpdated`] (V1 `ComponentDataUpdated`, opaque data by
/// component id, with no component type).
///
/// ```
/// use person_events::{PersonEventV2, PersonId, PersonName};
/// use person_metadata::EventMetadata;
///
/// let event = PersonEventV2::Created {
///     person_id: PersonId::new(),
///     name: PersonName::new("John", None, "Doe")?,
///     source: "api".to_string(),
///     metadata: EventMetadata::new(),
/// };
/// assert_eq!(event.event_type(), "created");
/// assert!(event.subject().ends_with(".created"));
/// # Ok::<(), person_events::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "data")]
pub enum PersonEventV2 {
    /// A person was created.
    Created {
        /// The person.
        person_id: PersonId,
        /// Their name.
        name: PersonName,
        /// Where the record came from (`api`, `hr-import`, ...).
        source: String,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A person was (re)activated.
    Activated {
        /// The person.
        person_id: PersonId,
        /// Why.
        reason: String,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A person was suspended (deactivated).
    Suspended {
        /// The person.
        person_id: PersonId,
        /// Why.
        reason: String,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A person was archived.
    Archived {
        /// The person.
        person_id: PersonId,
        /// Why.
        reason: String,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A person's record was replaced wholesale; V1 `PersonUpdated` carried only the name.
    Updated {
        /// The person.
        person_id: PersonId,
        /// The name after the update.
        name: PersonName,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A person's name changed.
    NameUpdated {
        /// The person.
        person_id: PersonId,
        /// The name before.
        old_name: PersonName,
        /// The name after.
        new_name: PersonName,
        /// Why, when given.
        #[serde(default)]
        change_reason: Option<String>,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A birth date was set.
    BirthDateSet {
        /// The person.
        person_id: PersonId,
        /// The date.
        birth_date: NaiveDate,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A death was recorded.
    DeathRecorded {
        /// The person.
        person_id: PersonId,
        /// The date.
        date_of_death: NaiveDate,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A component was added.
    ComponentAdded {
        /// The person.
        person_id: PersonId,
        /// Which kind.
        component_type: ComponentType,
        /// Its data (opaque JSON; `null` for a V1 registration, which had none).
        #[serde(default)]
        component_data: serde_json::Value,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A component changed.
    ComponentUpdated {
        /// The person.
        person_id: PersonId,
        /// Which kind.
        component_type: ComponentType,
        /// Which component.
        component_id: Uuid,
        /// What changed (opaque JSON).
        changes: serde_json::Value,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A component was removed.
    ComponentRemoved {
        /// The person.
        person_id: PersonId,
        /// Which kind.
        component_type: ComponentType,
        /// Which component; `None` when upcast from V1, which named only the type.
        #[serde(default)]
        component_id: Option<Uuid>,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A component's data was replaced (V1 `ComponentDataUpdated`).
    ComponentDataUpdated {
        /// The person.
        person_id: PersonId,
        /// Which component.
        component_id: Uuid,
        /// The new data, opaque, exactly as given.
        data: serde_json::Value,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A person was merged into another. The aggregate is the source person.
    PersonMerged {
        /// The person merged away.
        source_person_id: PersonId,
        /// The person that remains.
        target_person_id: PersonId,
        /// Why.
        merge_reason: MergeReason,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// A location was assigned (cross-domain).
    LocationAssigned {
        /// The person.
        person_id: PersonId,
        /// The location.
        location_id: Uuid,
        /// What kind of location (`home`, `work`, ...).
        location_type: String,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// Employment was added (cross-domain).
    EmploymentAdded {
        /// The person.
        person_id: PersonId,
        /// The organization.
        organization_id: Uuid,
        /// The role.
        role: String,
        /// Event metadata.
        metadata: EventMetadata,
    },
    /// An external identity was linked (cross-domain).
    IdentityLinked {
        /// The person.
        person_id: PersonId,
        /// The identity.
        identity_id: Uuid,
        /// What kind of identity.
        identity_type: String,
        /// Event metadata.
        metadata: EventMetadata,
    },
}

/// Every event type token with its JSON variant name, in declaration order.
pub const EVENT_TYPES: [(&str, &str); 16] = [
    ("created", "Created"),
    ("activated", "Activated"),
    ("suspended", "Suspended"),
    ("archived", "Archived"),
    ("updated", "Updated"),
    ("name_updated", "NameUpdated"),
    ("birth_date_set", "BirthDateSet"),
    ("death_recorded", "DeathRecorded"),
    ("component_added", "ComponentAdded"),
    ("component_updated", "ComponentUpdated"),
    ("component_removed", "ComponentRemoved"),
    ("component_data_updated", "ComponentDataUpdated"),
    ("merged", "PersonMerged"),
    ("location_assigned", "LocationAssigned"),
    ("employment_added", "EmploymentAdded"),
    ("identity_linked", "IdentityLinked"),
];

/// Every variant carries `metadata`; one match serves `&self` and `&mut self`.
macro_rules! metadata_of {
    ($event:expr) => {
        match $event {
            Self::Created { metadata, .. }
            | Self::Activated { metadata, .. }
            | Self::Suspended { metadata, .. }
            | Self::Archived { metadata, .. }
            | Self::Updated { metadata, .. }
            | Self::NameUpdated { metadata, .. }
            | Self::BirthDateSet { metadata, .. }
            | Self::DeathRecorded { metadata, .. }
            | Self::ComponentAdded { metadata, .. }
            | Self::ComponentUpdated { metadata, .. }
            | Self::ComponentRemoved { metadata, .. }
            | Self::ComponentDataUpdated { metadata, .. }
            | Self::PersonMerged { metadata, .. }
            | Self::LocationAssigned { metadata, .. }
            | Self::EmploymentAdded { metadata, .. }
            | Self::IdentityLinked { metadata, .. } => metadata,
        }
    };
}

impl PersonEventV2 {
    fn index(&self) -> usize {
        match self {
            Self::Created { .. } => 0,
            Self::Activated { .. } => 1,
            Self::Suspended { .. } => 2,
            Self::Archived { .. } => 3,
            Self::Updated { .. } => 4,
            Self::NameUpdated { .. } => 5,
            Self::BirthDateSet { .. } => 6,
            Self::DeathRecorded { .. } => 7,
            Self::ComponentAdded { .. } => 8,
            Self::ComponentUpdated { .. } => 9,
            Self::ComponentRemoved { .. } => 10,
            Self::ComponentDataUpdated { .. } => 11,
            Self::PersonMerged { .. } => 12,
            Self::LocationAssigned { .. } => 13,
            Self::EmploymentAdded { .. } => 14,
            Self::IdentityLinked { .. } => 15,
        }
    }

    /// The person (aggregate) this event belongs to. For a merge, the source person.
    pub fn aggregate_id(&self) -> PersonId {
        match self {
            Self::Created { person_id, .. }
            | Self::Activated { person_id, .. }
            | Self::Suspended { person_id, .. }
            | Self::Archived { person_id, .. }
            | Self::Updated { person_id, .. }
            | Self::NameUpdated { person_id, .. }
            | Self::BirthDateSet { person_id, .. }
            | Self::DeathRecorded { person_id, .. }
            | Self::ComponentAdded { person_id, .. }
            | Self::ComponentUpdated { person_id, .. }
            | Self::ComponentRemoved { person_id, .. }
            | Self::ComponentDataUpdated { person_id, .. }
            | Self::LocationAssigned { person_id, .. }
            | Self::EmploymentAdded { person_id, .. }
            | Self::IdentityLinked { person_id, .. } => *person_id,
            Self::PersonMerged {
                source_person_id, ..
            } => *source_person_id,
        }
    }

    /// The event's metadata.
    pub fn metadata(&self) -> &EventMetadata {
        metadata_of!(self)
    }

    /// The event's metadata, mutably.
    pub fn metadata_mut(&mut self) -> &mut EventMetadata {
        metadata_of!(self)
    }

    /// The snake_case event type token used in subjects and `ce-type` (`created`,
    /// `name_updated`, ...).
    pub fn event_type(&self) -> &'static str {
        EVENT_TYPES[self.index()].0
    }

    /// The JSON variant name (`Created`, `NameUpdated`, ...).
    pub fn variant_name(&self) -> &'static str {
        EVENT_TYPES[self.index()].1
    }

    /// The NATS subject: `person.events.<person_id>.<event_type>`. Both tokens are
    /// safe by construction (a UUID and a fixed token), so this cannot fail.
    pub fn subject(&self) -> String {
        subject::event_subject_unchecked(&self.aggregate_id(), self.event_type())
    }
}

/// The variant name for an event type token, or `None` for an unknown token.
///
/// ```
/// assert_eq!(person_events::variant_for_event_type("merged"), Some("PersonMerged"));
/// assert_eq!(person_events::variant_for_event_type("nope"), None);
/// ```
pub fn variant_for_event_type(event_type: &str) -> Option<&'static str> {
    EVENT_TYPES
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, v)| *v)
}

/// The event type token for a variant name, or `None` for an unknown variant.
///
/// ```
/// assert_eq!(person_events::event_type_for_variant("NameUpdated"), Some("name_updated"));
/// ```
pub fn event_type_for_variant(variant: &str) -> Option<&'static str> {
    EVENT_TYPES
        .iter()
        .find(|(_, v)| *v == variant)
        .map(|(t, _)| *t)
}
