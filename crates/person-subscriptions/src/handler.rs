//! The handler trait and the error a handler returns.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use person_events::StreamingEventEnvelope;
use person_retry::ErrorClass;

/// What a handler returns: `Ok(())`, or a [`HandlerError`] saying how to treat the failure.
pub type DomainResult<T> = Result<T, HandlerError>;

/// Processes events of one durable consumer. Each handler gets its own durable
/// consumer, so its progress, retries and dead letters are its own.
///
/// Handlers must be idempotent on `envelope.event_id`: delivery is at least once.
///
/// ```
/// use async_trait::async_trait;
/// use person_events::{PersonEventV2, StreamingEventEnvelope};
/// use person_subscriptions::{DomainResult, StreamingEventHandler};
///
/// struct MyProjectionHandler;
///
/// #[async_trait]
/// impl StreamingEventHandler for MyProjectionHandler {
///     async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
///         match &envelope.event {
///             PersonEventV2::Created { person_id, name, .. } => {
///                 // Update projection
///                 let _ = (person_id, name);
///             }
///             _ => {}
///         }
///         Ok(())
///     }
///
///     fn name(&self) -> &str {
///         "my-projection"
///     }
/// }
/// ```
#[async_trait]
pub trait StreamingEventHandler: Send + Sync + 'static {
    /// Handles one event. Return a transient error to have it retried, a permanent one
    /// to dead-letter it at once.
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()>;

    /// The handler's name: a subject-safe token, used in consumer names, spans, stats and
    /// dead letters.
    fn name(&self) -> &str;
}

/// A handler failure with its class: transient (retry), permanent (dead-letter now), or
/// retry after a given delay.
///
/// Any `std::error::Error` converts into a transient `HandlerError` with `?`.
///
/// ```
/// use std::time::Duration;
/// use person_subscriptions::HandlerError;
/// use person_retry::ErrorClass;
///
/// let e = HandlerError::permanent("name is missing");
/// assert_eq!(e.class(), ErrorClass::Permanent);
/// let e = HandlerError::retry_after(Duration::from_secs(1), "rate limited");
/// assert_eq!(e.class(), ErrorClass::RetryAfter(Duration::from_secs(1)));
/// ```
pub struct HandlerError {
    class: ErrorClass,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HandlerError {
    /// A failure worth retrying (a downstream is unavailable, a timeout).
    pub fn transient(message: impl fmt::Display) -> Self {
        Self::of(ErrorClass::Transient, message)
    }

    /// A failure no retry can fix (invalid data): the event is dead-lettered at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::of(ErrorClass::Permanent, message)
    }

    /// Retry, but not before `delay`.
    pub fn retry_after(delay: Duration, message: impl fmt::Display) -> Self {
        Self::of(ErrorClass::RetryAfter(delay), message)
    }

    /// A failure of the given class.
    pub fn of(class: ErrorClass, message: impl fmt::Display) -> Self {
        Self {
            class,
            message: message.to_string(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("class", &self.class)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::transient(e.to_string()).with_source(e)
    }
}
