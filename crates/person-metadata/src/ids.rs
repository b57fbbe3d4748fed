//! Typed identifiers. All are UUIDs (v7 when generated here, so they sort by time),
//! serialized as bare UUID strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The text given could not be parsed as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a valid {what}: expected a UUID such as 0190f3c2-7b1e-7cc0-9a8e-2f6d1c1b2a3f"
)]
pub struct IdParseError {
    what: &'static str,
    input: String,
}

impl IdParseError {
    /// Which kind of id was being parsed (`"event id"`, `"correlation id"`, ...).
    pub fn what(&self) -> &'static str {
        self.what
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map(Self).map_err(|_| IdParseError {
                    what: $what,
                    input: s.chars().take(64).collect(),
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

typed_id!(
    /// Identifies one event. Used as the `Nats-Msg-Id` so the server drops duplicates.
    ///
    /// ```
    /// use person_metadata::EventId;
    /// let id = EventId::new();
    /// assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
    /// ```
    EventId,
    "event id"
);
typed_id!(
    /// Ties together every message of one business conversation.
    ///
    /// ```
    /// use person_metadata::CorrelationId;
    /// assert_ne!(CorrelationId::new(), CorrelationId::new());
    /// ```
    CorrelationId,
    "correlation id"
);
typed_id!(
    /// The id of the message (command or event) that directly caused an event.
    ///
    /// ```
    /// use person_metadata::{CausationId, EventId};
    /// let parent = EventId::new();
    /// let cause: CausationId = parent.into();
    /// assert_eq!(cause.as_uuid(), parent.as_uuid());
    /// ```
    CausationId,
    "causation id"
);

impl From<EventId> for CausationId {
    fn from(id: EventId) -> Self {
        Self(id.0)
    }
}

impl From<EventId> for CorrelationId {
    fn from(id: EventId) -> Self {
        Self(id.0)
    }
}
