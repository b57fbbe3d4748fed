//! `person-retry`: retry policies, backoff with jitter, error classes, a circuit
//! breaker and dead-letter records for the Person event streaming layer. No NATS:
//! this crate never depends on `async-nats` (checked by `cargo xtask ci`).
//!
//! `person-streaming` builds on it (its NATS-bound retry handler, consumer `backoff`
//! lists, NAK delays and the JetStream DLQ sink), and so does `person-subscriptions`.
//!
//! The concerns are kept apart, as in tower's retry `Policy` and backon:
//! - **which errors are retried**: [`ErrorClass`] from the [`Classify`] trait or a
//!   [`Classifier`] (a closure works), never from message strings;
//! - **the delay schedule**: [`RetryPolicy`] (serde-loadable, validated) and its
//!   [`Backoff`] iterator, fresh per operation; [`RetryPolicy::schedule`] and
//!   [`RetryPolicy::nak_delay`] give JetStream the same schedule, jitter-free;
//! - **the clock**: [`Clock`], [`TokioClock`] by default, so tests run on tokio's
//!   paused time and never really sleep.
//!
//! Then [`RetryHandler`] runs an async operation under a policy (cancellable with a
//! [`CancellationToken`]), [`CircuitBreaker`] stops calling a failing downstream, and
//! [`DeadLetter`] / [`DeadLetterSink`] record what was given up on ([`MemorySink`]
//! for tests).
//!
//! Feature `runtime` (on by default) adds the async parts: [`CircuitBreaker`],
//! [`RetryHandler`], [`CancellationToken`] and the clocks, which need tokio. Without it
//! the crate is plain data and pure functions ([`RetryPolicy`], [`ErrorClass`],
//! [`CircuitBreakerConfig`], [`DeadLetter`]), which is what the sans-IO delivery core
//! (`person-delivery`) depends on.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use person_retry::{Classify, ErrorClass, Jitter, RetryError, RetryHandler, RetryPolicy};
//!
//! #[derive(Debug, thiserror::Error)]
//! enum StoreError {
//!     #[error("store timed out")]
//!     Timeout,
//!     #[error("invalid event")]
//!     Invalid,
//! }
//!
//! impl Classify for StoreError {
//!     fn class(&self) -> ErrorClass {
//!         match self {
//!             StoreError::Timeout => ErrorClass::Transient,
//!             StoreError::Invalid => ErrorClass::Permanent,
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let policy = RetryPolicy::builder()
//!     .max_attempts(3)
//!     .initial_backoff(Duration::from_millis(100))
//!     .jitter(Jitter::None)
//!     .build()
//!     .unwrap();
//! // The same schedule for JetStream's redeliveries.
//! assert_eq!(policy.schedule(), [Duration::from_millis(100), Duration::from_millis(200)]);
//!
//! let handler = RetryHandler::builder(policy).classify_errors().build();
//! let outcome: Result<(), _> = handler
//!     .execute_cancellable(|| async { Err(StoreError::Timeout) }, "project_person")
//!     .await;
//! assert!(matches!(outcome, Err(RetryError::Exhausted(StoreError::Timeout))));
//! # }
//! ```

#[cfg(feature = "runtime")]
mod breaker;
mod breaker_config;
#[cfg(feature = "runtime")]
mod cancel;
mod classify;
#[cfg(feature = "runtime")]
mod clock;
mod dead_letter;
#[cfg(feature = "runtime")]
mod handler;
mod policy;

#[cfg(feature = "runtime")]
pub use breaker::{
    BreakerError, BreakerErrorKind, BreakerOpen, BreakerOpenKind, CircuitBreaker,
    CircuitBreakerBuilder, Permit,
};
pub use breaker_config::{
    BreakerState, CircuitBreakerConfig, CircuitBreakerConfigBuilder, FailureRatio,
    MAX_BREAKER_COUNT, Transition,
};
#[cfg(feature = "runtime")]
pub use cancel::CancellationToken;
pub use classify::{AlwaysTransient, ByClassify, Classifier, Classify, ErrorClass};
#[cfg(feature = "runtime")]
pub use clock::{Clock, TokioClock};
pub use dead_letter::{
    Attempt, DeadLetter, DeadLetterSink, MAX_ATTEMPTS_KEPT, MemorySink, SinkError, SinkErrorKind,
    dedup_id,
};
#[cfg(feature = "runtime")]
pub use handler::{RetryError, RetryErrorKind, RetryHandler, RetryHandlerBuilder};
pub use policy::{Backoff, Jitter, PolicyError, PolicyErrorKind, RetryPolicy, RetryPolicyBuilder};
