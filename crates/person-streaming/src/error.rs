//! [`StreamingError`]: connecting, setting up, reading and dead-letter operations, and
//! [`js_error`], the one place that turns an async-nats error into a kind: by the typed
//! kind of each error in the source chain and by the JetStream API error code, never by
//! the text of a message.

use std::fmt;

use async_nats::jetstream::{self, ErrorCode, consumer, context, stream};

use crate::client::Denials;

/// The kind of a [`StreamingError`], to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamingErrorKind {
    /// The configuration is invalid (see the message for the field).
    InvalidConfig,
    /// The server could not be reached.
    Connect,
    /// The server rejected the credentials.
    Authentication,
    /// TLS could not be set up.
    Tls,
    /// A stream or consumer exists with a setting that cannot be changed in place.
    ImmutableField,
    /// A JetStream request failed on the way, without an answer from the API (the
    /// connection dropped, the client gave up): trying again may succeed.
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
    /// The user lacks a permission this operation needs (the message names the subject
    /// when the server reported it). Not transient.
    PermissionDenied,
    /// The JetStream API answered with an error other than "not found" or
    /// "unavailable" (a name in use, overlapping subjects, a limit reached, an invalid
    /// setting...). Not transient: the same request gets the same answer.
    Rejected,
    /// JetStream did not answer for now: no responders (JetStream starting, recovering,
    /// or not enabled for the account), no cluster leader, a stream or consumer offline.
    /// Transient.
    Unavailable,
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
                | StreamingErrorKind::Unavailable
        )
    }

    /// The server drops a request whose subject this connection may not publish to, and
    /// reports the violation only asynchronously (see [`Denials`]); the request just
    /// times out. A timed-out request is [`StreamingErrorKind::PermissionDenied`] when
    /// the connection recorded such a violation for one of `subjects` (the API subjects
    /// the operation requests; one ending in `.` stands for every subject under it).
    pub(crate) fn denied_on<S: AsRef<str>>(
        mut self,
        denials: &Denials,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        if self.kind != StreamingErrorKind::TimedOut {
            return self;
        }
        let denied = subjects
            .into_iter()
            .find_map(|s| denials.denied_under(s.as_ref()));
        if let Some(subject) = denied {
            self.kind = StreamingErrorKind::PermissionDenied;
            self.message = format!(
                "{} (the server denied this connection publishing to {subject}: a permission is missing)",
                self.message
            );
        }
        self
    }
}

/// The JetStream API subjects (default `$JS.API` prefix, the one this crate's context
/// uses) this crate requests about stream `name` and its consumers, for
/// [`StreamingError::denied_on`].
pub(crate) fn stream_api(name: &str) -> Vec<String> {
    [
        format!("STREAM.INFO.{name}"),
        format!("STREAM.CREATE.{name}"),
        format!("STREAM.UPDATE.{name}"),
        format!("STREAM.MSG.GET.{name}"),
        format!("STREAM.MSG.DELETE.{name}"),
        format!("DIRECT.GET.{name}"),
        format!("DIRECT.GET.{name}."),
        format!("CONSUMER.CREATE.{name}"),
        format!("CONSUMER.CREATE.{name}."),
        format!("CONSUMER.DURABLE.CREATE.{name}."),
        format!("CONSUMER.INFO.{name}."),
        format!("CONSUMER.LIST.{name}"),
        format!("CONSUMER.NAMES.{name}"),
        format!("CONSUMER.MSG.NEXT.{name}."),
    ]
    .into_iter()
    .map(|s| format!("$JS.API.{s}"))
    .collect()
}

/// A [`StreamingError`] from an async-nats error, its kind from [`classify`].
pub(crate) fn js_error(
    message: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StreamingError {
    let kind = classify(&e);
    StreamingError::with_source(kind, message, e)
}

/// What happened, from the typed kinds along the source chain (async-nats wraps a
/// request's error in the operation's: `GetStreamErrorKind::Request` holds a
/// `RequestError` that says whether it timed out) and from JetStream API error codes.
/// An error none of them explains is [`StreamingErrorKind::JetStream`].
pub(crate) fn classify(e: &(dyn std::error::Error + 'static)) -> StreamingErrorKind {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(kind) = classify_one(e) {
            return kind;
        }
        next = e.source();
    }
    StreamingErrorKind::JetStream
}

/// The kind one error of a chain decides, `None` to look at its source.
fn classify_one(e: &(dyn std::error::Error + 'static)) -> Option<StreamingErrorKind> {
    use StreamingErrorKind as K;
    if let Some(e) = e.downcast_ref::<jetstream::Error>() {
        return Some(api_kind(e));
    }
    if let Some(e) = e.downcast_ref::<context::RequestError>() {
        return match e.kind() {
            context::RequestErrorKind::TimedOut => Some(K::TimedOut),
            context::RequestErrorKind::NoResponders => Some(K::Unavailable),
            context::RequestErrorKind::InvalidSubject => Some(K::InvalidInput),
            context::RequestErrorKind::Other => None,
        };
    }
    if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
        return match e.kind() {
            async_nats::RequestErrorKind::TimedOut => Some(K::TimedOut),
            async_nats::RequestErrorKind::NoResponders => Some(K::Unavailable),
            async_nats::RequestErrorKind::InvalidSubject
            | async_nats::RequestErrorKind::MaxPayloadExceeded => Some(K::InvalidInput),
            async_nats::RequestErrorKind::Other => None,
        };
    }
    if let Some(e) = e.downcast_ref::<async_nats::PublishError>() {
        return match e.kind() {
            async_nats::PublishErrorKind::MaxPayloadExceeded
            | async_nats::PublishErrorKind::InvalidSubject => Some(K::InvalidInput),
            async_nats::PublishErrorKind::Send => None,
        };
    }
    if let Some(e) = e.downcast_ref::<context::GetStreamError>() {
        return match e.kind() {
            context::GetStreamErrorKind::EmptyName
            | context::GetStreamErrorKind::InvalidStreamName => Some(K::InvalidInput),
            context::GetStreamErrorKind::JetStream(e) => Some(api_kind(&e)),
            context::GetStreamErrorKind::Request => None,
        };
    }
    if let Some(e) = e.downcast_ref::<context::CreateStreamError>() {
        return match e.kind() {
            context::CreateStreamErrorKind::EmptyStreamName
            | context::CreateStreamErrorKind::InvalidStreamName
            | context::CreateStreamErrorKind::DomainAndExternalSet => Some(K::InvalidInput),
            context::CreateStreamErrorKind::JetStreamUnavailable => Some(K::Unavailable),
            context::CreateStreamErrorKind::JetStream(e) => Some(api_kind(&e)),
            context::CreateStreamErrorKind::TimedOut => Some(K::TimedOut),
            context::CreateStreamErrorKind::NotFound => Some(K::NotFound),
            context::CreateStreamErrorKind::Response
            | context::CreateStreamErrorKind::ResponseParse => None,
        };
    }
    if let Some(e) = e.downcast_ref::<context::ConsumerInfoError>() {
        return match e.kind() {
            context::ConsumerInfoErrorKind::InvalidName => Some(K::InvalidInput),
            context::ConsumerInfoErrorKind::Offline
            | context::ConsumerInfoErrorKind::NoResponders => Some(K::Unavailable),
            context::ConsumerInfoErrorKind::NotFound
            | context::ConsumerInfoErrorKind::StreamNotFound => Some(K::NotFound),
            context::ConsumerInfoErrorKind::JetStream(e) => Some(api_kind(&e)),
            context::ConsumerInfoErrorKind::TimedOut => Some(K::TimedOut),
            context::ConsumerInfoErrorKind::Request => None,
        };
    }
    if let Some(e) = e.downcast_ref::<context::PublishError>() {
        return match e.kind() {
            context::PublishErrorKind::StreamNotFound => Some(K::NotFound),
            context::PublishErrorKind::TimedOut => Some(K::TimedOut),
            context::PublishErrorKind::BrokenPipe => Some(K::Connect),
            context::PublishErrorKind::MaxAckPending => Some(K::Unavailable),
            context::PublishErrorKind::MaxPayloadExceeded => Some(K::InvalidInput),
            context::PublishErrorKind::WrongLastMessageId
            | context::PublishErrorKind::WrongLastSequence => Some(K::Rejected),
            context::PublishErrorKind::Other => None,
        };
    }
    if let Some(e) = e.downcast_ref::<stream::ConsumerError>() {
        return match e.kind() {
            stream::ConsumerErrorKind::TimedOut => Some(K::TimedOut),
            stream::ConsumerErrorKind::InvalidConsumerType
            | stream::ConsumerErrorKind::InvalidName => Some(K::InvalidInput),
            stream::ConsumerErrorKind::JetStream(e) => Some(api_kind(&e)),
            stream::ConsumerErrorKind::Request | stream::ConsumerErrorKind::Other => None,
        };
    }
    if let Some(e) = e.downcast_ref::<stream::LastRawMessageError>() {
        return match e.kind() {
            stream::LastRawMessageErrorKind::NoMessageFound => Some(K::NotFound),
            stream::LastRawMessageErrorKind::InvalidSubject => Some(K::InvalidInput),
            stream::LastRawMessageErrorKind::JetStream(e) => Some(api_kind(&e)),
            stream::LastRawMessageErrorKind::Other => None,
        };
    }
    if let Some(e) = e.downcast_ref::<stream::DeleteMessageError>() {
        return match e.kind() {
            stream::DeleteMessageErrorKind::TimedOut => Some(K::TimedOut),
            stream::DeleteMessageErrorKind::JetStream(e) => Some(api_kind(&e)),
            stream::DeleteMessageErrorKind::Request => None,
        };
    }
    if let Some(e) = e.downcast_ref::<consumer::StreamError>() {
        return match e.kind() {
            consumer::StreamErrorKind::TimedOut => Some(K::TimedOut),
            consumer::StreamErrorKind::Other => None,
        };
    }
    if let Some(e) = e.downcast_ref::<consumer::pull::OrderedError>() {
        return match e.kind() {
            consumer::pull::OrderedErrorKind::MissingHeartbeat => Some(K::TimedOut),
            consumer::pull::OrderedErrorKind::NoResponders => Some(K::Unavailable),
            consumer::pull::OrderedErrorKind::PushBasedConsumer => Some(K::InvalidInput),
            consumer::pull::OrderedErrorKind::RequestLimitExceeded => Some(K::Rejected),
            // The ordered consumer recreates itself; failing that is a failure on the way.
            consumer::pull::OrderedErrorKind::ConsumerDeleted
            | consumer::pull::OrderedErrorKind::Pull
            | consumer::pull::OrderedErrorKind::Recreate
            | consumer::pull::OrderedErrorKind::Other => None,
        };
    }
    if let Some(e) = e.downcast_ref::<consumer::pull::MessagesError>() {
        return match e.kind() {
            consumer::pull::MessagesErrorKind::MissingHeartbeat => Some(K::TimedOut),
            consumer::pull::MessagesErrorKind::NoResponders => Some(K::Unavailable),
            consumer::pull::MessagesErrorKind::ConsumerDeleted => Some(K::NotFound),
            consumer::pull::MessagesErrorKind::PushBasedConsumer => Some(K::InvalidInput),
            consumer::pull::MessagesErrorKind::RequestLimitExceeded => Some(K::Rejected),
            consumer::pull::MessagesErrorKind::Pull | consumer::pull::MessagesErrorKind::Other => {
                None
            }
        };
    }
    None
}

/// The description of a failed message delete (10057) says the message is not there:
/// deleted already, or past the end of the stream (the store's EOF).
pub(crate) fn message_absent(description: &str) -> bool {
    description.contains("no message found") || description.contains("stream store EOF")
}

/// The kind of an error the JetStream API answered with, by its error code.
pub(crate) fn api_kind(e: &jetstream::Error) -> StreamingErrorKind {
    use StreamingErrorKind as K;
    match e.error_code() {
        ErrorCode::STREAM_NOT_FOUND
        | ErrorCode::CONSUMER_NOT_FOUND
        | ErrorCode::NO_MESSAGE_FOUND
        | ErrorCode::STREAM_TEMPLATE_NOT_FOUND => K::NotFound,
        // Deleting a message that is already gone, or past the stream's last sequence.
        ErrorCode::STREAM_MESSAGE_DELETE_FAILED if message_absent(&e.to_string()) => K::NotFound,
        ErrorCode::CLUSTER_NOT_AVAILABLE
        | ErrorCode::CLUSTER_NOT_LEADER
        | ErrorCode::CLUSTER_NOT_ACTIVE
        | ErrorCode::CLUSTER_NO_PEERS
        | ErrorCode::CLUSTER_INCOMPLETE
        | ErrorCode::CLUSTER_NOT_ASSIGNED
        | ErrorCode::RAFT_GENERAL
        | ErrorCode::STREAM_OFFLINE
        | ErrorCode::CONSUMER_OFFLINE
        | ErrorCode::STREAM_MOVE_IN_PROGRESS => K::Unavailable,
        ErrorCode::STREAM_REPLICAS_NOT_UPDATABLE | ErrorCode::STREAM_MIRROR_NOT_UPDATABLE => {
            K::ImmutableField
        }
        // 503 is the API's "try later" whatever the code.
        _ if e.code() == 503 => K::Unavailable,
        _ => K::Rejected,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u64, err_code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code, "err_code": err_code, "description": "test"
        }))
        .unwrap()
    }

    #[test]
    fn api_codes_map_to_kinds() {
        use StreamingErrorKind as K;
        for (code, err_code, kind) in [
            (404, 10059, K::NotFound),
            (404, 10014, K::NotFound),
            (400, 10058, K::Rejected),
            (400, 10065, K::Rejected),
            (503, 10008, K::Unavailable),
            (500, 10009, K::Unavailable),
            (503, 1, K::Unavailable),
            (500, 10061, K::ImmutableField),
        ] {
            let e = api_error(code, err_code);
            assert_eq!(api_kind(&e), kind, "{err_code}");
            // Wrapped the way async-nats wraps it, the code still decides.
            let wrapped = context::ConsumerInfoError::from(api_error(code, err_code));
            let expected = if err_code == 10014 || err_code == 10059 {
                K::NotFound
            } else {
                kind
            };
            assert_eq!(classify(&wrapped), expected, "{err_code}");
        }
        assert!(!StreamingError::new(K::Rejected, "x").is_transient());
        assert!(!StreamingError::new(K::PermissionDenied, "x").is_transient());
        assert!(StreamingError::new(K::Unavailable, "x").is_transient());
    }

    #[test]
    fn a_timeout_is_permission_denied_only_for_a_denied_subject() {
        let timed_out = || StreamingError::new(StreamingErrorKind::TimedOut, "cannot look up");
        let denials = Denials::default();
        assert_eq!(
            timed_out().denied_on(&denials, stream_api("S")).kind(),
            StreamingErrorKind::TimedOut
        );
        denials.record("$JS.API.CONSUMER.CREATE.S.abc.person.>".into());
        assert_eq!(
            timed_out().denied_on(&denials, stream_api("OTHER")).kind(),
            StreamingErrorKind::TimedOut
        );
        assert_eq!(
            timed_out().denied_on(&denials, stream_api("S")).kind(),
            StreamingErrorKind::PermissionDenied
        );
        let not_found = StreamingError::new(StreamingErrorKind::NotFound, "x");
        assert_eq!(
            not_found.denied_on(&denials, stream_api("S")).kind(),
            StreamingErrorKind::NotFound
        );
    }
}
