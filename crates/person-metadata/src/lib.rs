//! `person-metadata`: the metadata every Person event carries, and its header codec.
//!
//! This is the bottom crate of the workspace: plain data and pure functions, with no
//! runtime, no networking and no I/O (checked by `cargo xtask ci`). Depend on it
//! directly when you only need ids and metadata; every other crate re-uses these types.
//!
//! - [`EventMetadata`]: schema version, correlation id, causation id, timestamp, actor,
//!   an ordered context map, and W3C trace context passed through untouched.
//! - Typed ids on UUID v7: [`EventId`], [`CorrelationId`], [`CausationId`].
//! - [`headers`]: metadata to and from NATS headers with the CloudEvents NATS
//!   binary-mode names (`ce-id`, `ce-time`, `ce-correlationid`, ...), so consumers can
//!   read it without decoding the body.
//!
//! There are no feature flags.
//!
//! # Example
//!
//! ```
//! use person_metadata::{EventId, EventMetadata};
//!
//! // A command starts a conversation...
//! let command_id = uuid::Uuid::now_v7();
//! let first = EventMetadata::from_command(command_id).with_actor("svc-onboarding");
//!
//! // ...and an event caused by the first event keeps its correlation id.
//! let first_event_id = EventId::new();
//! let second = EventMetadata::caused_by(&first, first_event_id);
//! assert_eq!(second.correlation_id, first.correlation_id);
//! assert_eq!(second.causation_id, Some(first_event_id.into()));
//! ```

mod ids;
mod metadata;
mod timestamp;

pub mod headers;

pub use ids::{CausationId, CorrelationId, EventId, IdParseError};
pub use metadata::{EventMetadata, METADATA_VERSION};
