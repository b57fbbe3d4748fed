//! [`StreamingEventEnvelope`]: an event with its id, person, per-person version and
//! stream position.

use person_metadata::{EventId, EventMetadata};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::SCHEMA_VERSION;
use crate::{PersonEventV2, PersonId};

/// An event as it travels through the stream.
///
/// - `event_id` is the `Nats-Msg-Id`: the server drops a repeat inside its duplicate
///   window, and handlers use it to stay idempotent.
/// - `sequence` is the person's version after this event (1 for the first event).
/// - `stream_position` is the JetStream stream sequence; writers leave it `None`, and
///   readers fill it from the message they received.
///
/// The JSON form starts with `"schema_version": 2`; see [`crate::codec`].
///
/// ```
/// use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope};
/// use person_metadata::EventMetadata;
///
/// let person_id = PersonId::new();
/// let event = PersonEventV2::Activated {
///     person_id,
///     reason: "verified".into(),
///     metadata: EventMetadata::new(),
/// };
/// let envelope = StreamingEventEnvelope::new(person_id, 1, event);
/// assert_eq!(envelope.subject(), format!("person.events.{person_id}.activated"));
/// assert!(envelope.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StreamingEventEnvelope {
    /// Unique event id.
    pub event_id: EventId,
    /// The person.
    pub aggregate_id: PersonId,
    /// The person's version after this event.
    pub sequence: u64,
    /// The event.
    pub event: PersonEventV2,
    /// The JetStream stream sequence, once known.
    pub stream_position: Option<u64>,
}

/// The envelope's person does not match its event's person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "envelope aggregate_id {envelope} differs from the event's person {event}: build the envelope with event.aggregate_id()"
)]
pub struct EnvelopeMismatch {
    /// The envelope's `aggregate_id`.
    pub envelope: PersonId,
    /// The event's `aggregate_id()`.
    pub event: PersonId,
}

impl StreamingEventEnvelope {
    /// A new envelope with a fresh (UUID v7) event id and no stream position.
    pub fn new(aggregate_id: PersonId, sequence: u64, event: PersonEventV2) -> Self {
        Self {
            event_id: EventId::new(),
            aggregate_id,
            sequence,
            event,
            stream_position: None,
        }
    }

    /// Replaces the event id (for example with one derived deterministically).
    pub fn with_event_id(mut self, event_id: EventId) -> Self {
        self.event_id = event_id;
        self
    }

    /// The NATS subject, `person.events.<person_id>.<event_type>`.
    pub fn subject(&self) -> String {
        self.event.subject()
    }

    /// The event's metadata.
    pub fn metadata(&self) -> &EventMetadata {
        self.event.metadata()
    }

    /// Checks that the envelope's person is the event's person.
    pub fn validate(&self) -> Result<(), EnvelopeMismatch> {
        let event = self.event.aggregate_id();
        if event == self.aggregate_id {
            Ok(())
        } else {
            Err(EnvelopeMismatch {
                envelope: self.aggregate_id,
                event,
            })
        }
    }
}

#[derive(Serialize)]
struct WireRef<'a> {
    schema_version: u32,
    event_id: &'a EventId,
    aggregate_id: &'a PersonId,
    sequence: u64,
    event: &'a PersonEventV2,
    stream_position: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct WireOwned {
    #[serde(default)]
    pub(crate) schema_version: Option<u32>,
    pub(crate) event_id: EventId,
    pub(crate) aggregate_id: PersonId,
    pub(crate) sequence: u64,
    pub(crate) event: PersonEventV2,
    #[serde(default)]
    pub(crate) stream_position: Option<u64>,
}

impl Serialize for StreamingEventEnvelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireRef {
            schema_version: SCHEMA_VERSION,
            event_id: &self.event_id,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event: &self.event,
            stream_position: self.stream_position,
        }
        .serialize(serializer)
    }
}

/// Accepts the current schema version, or none at all (the week-1 envelope, whose shape
/// is the same). Other versions are an error; `person-legacy-compat` upcasts them.
impl<'de> Deserialize<'de> for StreamingEventEnvelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireOwned::deserialize(deserializer)?;
        match wire.schema_version {
            None | Some(SCHEMA_VERSION) => Ok(wire.into()),
            Some(other) => Err(serde::de::Error::custom(format_args!(
                "unsupported schema_version {other} (this build reads {SCHEMA_VERSION})"
            ))),
        }
    }
}

impl From<WireOwned> for StreamingEventEnvelope {
    fn from(w: WireOwned) -> Self {
        Self {
            event_id: w.event_id,
            aggregate_id: w.aggregate_id,
            sequence: w.sequence,
            event: w.event,
            stream_position: w.stream_position,
        }
    }
}
