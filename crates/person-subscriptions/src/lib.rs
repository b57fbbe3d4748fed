//! `person-subscriptions`: the runtime that turns stored Person events into handled ones.
//!
//! Depend on it to run projections and cross-domain sync. Register
//! [`StreamingEventHandler`]s on a [`SubscriptionManager`] and start a configured
//! consumer; the runtime then:
//!
//! - pulls with bounded prefetch (memory is bounded whatever the backlog);
//! - decodes with the legacy-compat decoder, so V1 and week-1 events arrive upcast;
//!   an undecodable message goes to the DLQ with the reason;
//! - handles events of different people concurrently and each person's events strictly
//!   in stream order, even while an earlier event waits for its redelivery;
//! - acks after success; on a transient failure NAKs with the delay the retry policy
//!   gives for JetStream's own delivery count (shared across instances, survives
//!   restarts); on a permanent failure or exhausted deliveries stores a dead letter,
//!   waits for the server's ack, then TERMinates the message; if the DLQ write fails the
//!   message comes back later: nothing is dropped;
//! - parks a person's later events behind a dead-lettered one ([`DeadLetterPolicy`]);
//! - stops pulling while a handler's circuit breaker is open;
//! - shuts down gracefully, acking only what succeeded.
//!
//! # Feature flags
//!
//! - `opentelemetry` (off by default): each handler call's `person_event` span continues
//!   the producer's trace, taking its parent from the event's W3C `traceparent` /
//!   `tracestate` (the body's metadata, else the message headers), through
//!   `tracing-opentelemetry`; also turns on `person-streaming/opentelemetry`. It takes
//!   effect with a `tracing_opentelemetry` layer installed; without one it costs a check.

mod group;
mod handler;
mod manager;
mod metrics;
mod options;
#[cfg(feature = "opentelemetry")]
mod otel;
mod stats;
mod worker;

pub use group::GroupHandle;
pub use handler::{DomainResult, HandlerError, StreamingEventHandler};
pub use manager::{
    SubscriptionError, SubscriptionErrorKind, SubscriptionHandle, SubscriptionManager,
};
pub use options::{DeadLetterPolicy, SubscriptionOptions};
pub use person_events::StreamingEventEnvelope;
pub use stats::Stats;
