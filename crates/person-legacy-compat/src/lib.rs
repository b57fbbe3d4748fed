//! `person-legacy-compat`: keeps old Person events working.
//!
//! Pure data and pure functions: no runtime, no networking, no I/O (checked by
//! `cargo xtask ci`). The subscription runtime and the aggregate reader decode every
//! message through [`decode_message`]; depend on this crate directly to read or convert
//! legacy events yourself.
//!
//! - [`v1`]: the legacy `PersonEvent` (V1) exactly as the week-1 system stored it.
//! - [`upcast`]: V1 → V2, total and deterministic (same stored event, same event id).
//! - `TryFrom<PersonEventV2> for v1::PersonEvent`: V2 → V1, with a typed error for
//!   V2-only events.
//! - [`UpcasterChain`]: JSON steps keyed by (event type, schema version).
//! - [`Decoder`]: one entry point for current envelopes, week-1 envelopes (also on the
//!   week-1 `person.events.<id>.person.<type>` subjects), and raw V1 events.
//!
//! There are no feature flags.
//!
//! # Example: the migration path
//!
//! ```
//! use person_events::{PersonEventV2, PersonId, PersonName};
//! use person_legacy_compat::v1::{PersonCreated, PersonEvent};
//! use person_metadata::EventMetadata;
//!
//! let person_id = PersonId::new();
//! let name = PersonName::new("John", None, "Doe")?;
//! let source = "api".to_string();
//!
//! // Old style (still works)
//! let old_event = PersonEvent::PersonCreated(PersonCreated {
//!     person_id,
//!     name: name.clone(),
//!     source: source.clone(),
//!     created_at: chrono::Utc::now(),
//! });
//!
//! // New style (preferred)
//! let new_event = PersonEventV2::Created {
//!     person_id,
//!     name,
//!     source,
//!     metadata: EventMetadata::new(),
//! };
//!
//! // Old events read as new ones.
//! let upcast = person_legacy_compat::upcast(&old_event);
//! assert_eq!(upcast.event.event_type(), new_event.event_type());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod chain;
mod decoder;
mod upcast;

pub mod v1;

pub use chain::{UpcastStep, UpcasterChain, WEEK1_VARIANTS};
pub use decoder::{Decoded, Decoder, Origin, RawMessage, decode_message};
pub use upcast::{
    LEGACY_NAMESPACE, NotRepresentableInV1, UPCAST_CONTEXT_KEY, UPCAST_FROM_V1, legacy_event_id,
    upcast, upcast_event, upcast_owned,
};
