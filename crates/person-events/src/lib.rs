//! `person-events`: the Person domain's events, envelope, subjects and codec.
//!
//! Pure data and pure functions: no runtime, no networking, no I/O (checked by
//! `cargo xtask ci`). Depend on it from anything that builds, routes or reads Person
//! events; the NATS crates build on it.
//!
//! - Value objects: [`PersonId`], [`PersonName`], [`MergeReason`], [`ComponentType`].
//! - [`PersonEventV2`]: the events, each carrying [`EventMetadata`].
//! - [`StreamingEventEnvelope`]: event id, person, per-person version, stream position.
//! - [`subject`]: `person.events.<person_id>.<event_type>` with every token validated.
//! - [`codec`]: JSON with an explicit schema version and typed decode errors.
//!
//! Feature `proptest`: the `strategies` module, proptest strategies for property tests of dependent crates.
//!
//! # Example
//!
//! The week-1 publishing snippet, minus the client:
//!
//! ```
//! use person_events::{PersonEventV2, PersonId, PersonName};
//! use person_metadata::EventMetadata;
//!
//! let event = PersonEventV2::Created {
//!     person_id: PersonId::new(),
//!     name: PersonName::new("John", None, "Doe")?,
//!     source: "api".to_string(),
//!     metadata: EventMetadata::new(),
//! };
//!
//! let subject = event.subject();
//! let payload = serde_json::to_vec(&event)?;
//! assert!(subject.starts_with("person.events."));
//! assert!(!payload.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod envelope;
mod event;
mod person;

pub mod codec;
pub mod subject;

#[cfg(feature = "proptest")]
pub mod strategies;

pub use envelope::{EnvelopeMismatch, StreamingEventEnvelope};
pub use event::{EVENT_TYPES, PersonEventV2, event_type_for_variant, variant_for_event_type};
pub use person::{
    ComponentType, MAX_NAME_PART_CHARS, MergeReason, NameError, NameErrorKind, NameField, PersonId,
    PersonName,
};
pub use person_metadata::{CausationId, CorrelationId, EventId, EventMetadata};
