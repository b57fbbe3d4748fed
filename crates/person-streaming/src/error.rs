//! [`StreamingError`]: connecting, setting up, reading and dead-letter operations.

use std::fmt;

/// The kind of a [`StreamingError`], to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamingErrorKind {
    /// The configuration is invalid (see the message for the field).
    InvalidConfig,
    /// The server could not be reached.
    Connect,
    /// The server rejected the credentials, or the user lacks a permission.
    Authentication,
    /// TLS could not be set up.
    Tls,
    /// A stream or consumer exists with a setting that cannot be changed in place.
    ImmutableField,
    /// A JetStream API request failed (the message says which).
    JetStream,
    /// A request timed out.
    TimedOut,
    /// A stored message could not be decoded.
    Decode,
    /// The thing asked for does not exist.
    NotFound,
    /// Input was rejected before anything was sent.
    InvalidInput,
    /// A dead letter holds only part of the original message (cut to fit the server's
    /// `max_payload`), so it cannot be replayed.
    Truncated,
}

/// An error from the streaming layer. `kind()` to match on, `is_transient()` for retry
/// decisions, Display for people.
#[derive(Debug, thiserror::Error)]
pub struct StreamingError {
    kind: StreamingErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for StreamingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StreamingError {
    pub(crate) fn new(kind: StreamingErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: StreamingErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> StreamingErrorKind {
        self.kind
    }

    /// `true` when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            StreamingErrorKind::Connect
                | StreamingErrorKind::TimedOut
                | StreamingErrorKind::JetStream
        )
    }
}

impl From<crate::config::ConfigError> for StreamingError {
    fn from(e: crate::config::ConfigError) -> Self {
        Self::with_source(
            StreamingErrorKind::InvalidConfig,
            "invalid streaming configuration",
            e,
        )
    }
}
