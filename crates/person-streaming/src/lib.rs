//! `person-streaming`: the JetStream side of the Person event stream.
//!
//! Depend on it to set up streams and consumers, publish events, read a person's
//! history and work with the dead-letter queue. It builds on the pure crates
//! (`person-metadata`, `person-events`, `person-legacy-compat`) and on `person-retry`.
//!
//! - [`StreamingConfig`]: stream, DLQ stream, consumers and publisher settings, with
//!   defaults, serde (TOML/JSON) and validation naming the field.
//! - [`StreamingClient`]: connects (credentials, TLS), ensures streams and consumers
//!   idempotently, hands out the pieces below.
//! - [`Publisher`]: dedup by event id, optimistic concurrency per person, atomic
//!   multi-event append, pipelined `publish_all`, transient retries without duplicates.
//! - [`AggregateReader`]: a person's history, in order, legacy events upcast.
//! - [`DeadLetterQueue`]: stores, lists, replays and purges dead letters.
//! - [`StreamingClient::pause_consumer`], [`StreamingClient::resume_consumer`],
//!   [`StreamingClient::plan_rewind`] and [`StreamingClient::rewind_consumer`]: hold a
//!   consumer's deliveries, or move it back to a sequence or time to rebuild from there.
//! - [`RetryHandler`]: the week-1 `RetryHandler::new(client, jetstream, policy, dlq)`.
//! - [`StreamingConfig::with_partitions`] and [`StreamingConfig::consumer_group`]: a
//!   partitioned event stream and the durables of a consumer group ([`ConsumerGroup`]).
//!
//! The wire format is in `docs/wire-format.md`.
//!
//! # Feature flags
//!
//! - `opentelemetry` (off by default): the [`Publisher`] writes the current span's
//!   OpenTelemetry context (W3C `traceparent` / `tracestate`) into an event whose
//!   metadata has none, in the body and so in the headers; metadata that has a trace
//!   context is sent as it is.
//!
//! # Example: the week-1 setup and publishing snippets
//!
//! ```no_run
//! use person_events::{PersonEventV2, PersonId, PersonName};
//! use person_metadata::EventMetadata;
//! use person_streaming::{StreamingClient, StreamingConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Create configuration
//! let config = StreamingConfig::default();
//!
//! // Connect with streaming
//! let client = StreamingClient::new("nats://localhost:4222", config).await?;
//!
//! let event = PersonEventV2::Created {
//!     person_id: PersonId::new(),
//!     name: PersonName::new("John", None, "Doe")?,
//!     source: "api".to_string(),
//!     metadata: EventMetadata::new(),
//! };
//!
//! // Publish to NATS (raw, as the week-1 system did)
//! let subject = event.subject();
//! let payload = serde_json::to_vec(&event)?;
//! client.jetstream().publish(subject, payload.into()).await?;
//! # Ok(()) }
//! ```

mod client;
mod config;
mod consumer_ops;
mod dlq;
mod error;
mod groups;
mod metrics;
#[cfg(feature = "opentelemetry")]
mod otel;
mod publisher;
mod reader;
mod retry;
mod status;

pub use client::{EnsureReport, StreamingClient, StreamingClientBuilder, consumer_config};
pub use config::{
    AckPolicy, ConfigError, ConfigErrorKind, ConsumerGroup, ConsumerSettings, DeliverPolicy,
    PublisherSettings, Retention, Storage, StreamSettings, StreamingConfig,
};
pub use consumer_ops::{PauseState, Rewind, RewindPlan, RewindReceipt, indefinite_pause};
pub use dlq::{
    BLOCKED_BY_PREFIX, BODY_DIGEST_HEADER, BODY_OBJECT_HEADER, BodyObject, DeadLetterCount,
    DeadLetterFilter, DeadLetterPage, DeadLetterQueue, PARKED_REASON, REPLAY_OF_HEADER,
    REPLAYED_AT_HEADER, ReplayReceipt, StoredDeadLetter, UNKNOWN_TOKEN,
};
pub use error::{StreamingError, StreamingErrorKind};
pub use groups::{GroupSlotStatus, GroupStatus, group_lease_key, group_member_key};
pub use person_retry::RetryPolicy;
pub use publisher::{
    AppendReceipt, ExpectedVersion, MAX_BATCH, PublishError, PublishErrorKind, PublishReceipt,
    Publisher,
};
pub use reader::AggregateReader;
pub use retry::{RETRY_HANDLER_CONSUMER, RetryHandler};
pub use status::{ConsumerStatus, StreamStatus};
