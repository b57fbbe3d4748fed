//! Dead letters: the record of a message given up on, and where it is stored.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use person_metadata::EventMetadata;
use serde::{Deserialize, Serialize};

use crate::classify::ErrorClass;

/// The `Nats-Msg-Id` a DLQ store uses for the dead letter of message `sequence` of
/// `stream` given up by `consumer`: `dlq:<stream>:<sequence>:<consumer>`. Deterministic,
/// so storing the same dead letter twice is deduplicated by JetStream.
///
/// ```
/// assert_eq!(person_retry::dedup_id("PERSON_EVENTS", 42, "projector"), "dlq:PERSON_EVENTS:42:projector");
/// ```
pub fn dedup_id(stream: &str, sequence: u64, consumer: &str) -> String {
    format!("dlq:{stream}:{sequence}:{consumer}")
}

/// A message that could not be processed, as plain data: everything needed to
/// understand the failure and to replay the message untouched.
///
/// # Serialized form
///
/// JSON-friendly, field names as below. `payload` is the original bytes in standard
/// base64 (with padding): about 4/3 of the raw size, against 3–4× for a JSON array of
/// numbers. `headers` is an array of `[name, value]` pairs in the original order
/// (a name may repeat). `error_class` is `"transient"`, `"permanent"` or
/// `{"retry_after_ms": n}`. Times are RFC 3339. The optional fields are left out when
/// `None`.
///
/// # Truncated records
///
/// A record must fit in one NATS message, so a store may cut it to the server's
/// `max_payload` and say so: `payload_truncated` (only a prefix of the body is kept,
/// `original_size` is the whole body's size) and `headers_truncated` (some original
/// headers were left out). Such a record documents the failure but is no longer the
/// original message, so it must not be replayed ([`is_truncated`](Self::is_truncated)).
/// Records written before these fields existed read as not truncated.
///
/// The DLQ subject is `person.dlq.<consumer>.<person_id>.<event_type>` (built and
/// validated by `person_events::subject::dlq_subject`).
///
/// ```
/// use bytes::Bytes;
/// use chrono::Utc;
/// use person_retry::{DeadLetter, ErrorClass};
///
/// let now = Utc::now();
/// let letter = DeadLetter {
///     subject: "person.events.0190.created".into(),
///     stream: "PERSON_EVENTS".into(),
///     stream_sequence: 42,
///     payload: Bytes::from_static(b"{\"not\":\"valid\""),
///     headers: vec![("Nats-Msg-Id".into(), "abc".into()), ("x-tag".into(), "a".into()), ("x-tag".into(), "b".into())],
///     reason: "payload is not a PersonEventV2".into(),
///     error_class: ErrorClass::Permanent,
///     delivery_count: 1,
///     first_failure_at: now,
///     last_failure_at: now,
///     consumer: "projector".into(),
///     handler: "process_event".into(),
///     metadata: None,
///     event_id: None,
///     person_id: Some("0190".into()),
///     event_type: Some("created".into()),
///     payload_truncated: false,
///     original_size: None,
///     headers_truncated: false,
///     attempts: vec![],
/// };
/// assert_eq!(letter.dedup_id(), "dlq:PERSON_EVENTS:42:projector");
/// assert!(!letter.is_truncated());
///
/// let json = serde_json::to_value(&letter)?;
/// assert_eq!(json["payload"], "eyJub3QiOiJ2YWxpZCI=");
/// assert_eq!(json["headers"][2], serde_json::json!(["x-tag", "b"]));
/// assert_eq!(serde_json::from_value::<DeadLetter>(json)?, letter);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original subject.
    pub subject: String,
    /// The stream the message was read from.
    pub stream: String,
    /// The message's stream sequence.
    pub stream_sequence: u64,
    /// The original payload, byte for byte.
    #[serde(with = "base64_bytes")]
    pub payload: Bytes,
    /// The original headers, in order; a name may appear more than once.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Why it was given up on (the last error's message).
    pub reason: String,
    /// The class of the last error.
    pub error_class: ErrorClass,
    /// How many times JetStream had delivered it (1-based).
    pub delivery_count: u64,
    /// When it first failed.
    pub first_failure_at: DateTime<Utc>,
    /// When it last failed.
    pub last_failure_at: DateTime<Utc>,
    /// The consumer (durable name) that gave up.
    pub consumer: String,
    /// The handler that failed (the retry context, e.g. `"process_event"`).
    pub handler: String,
    /// The event's metadata, when the message could be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<EventMetadata>,
    /// The event id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The person (aggregate) id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_id: Option<String>,
    /// The event type token (`created`, `name_updated`, ...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// `true` when `payload` holds only the first bytes of the original body, cut so
    /// the record fits the server's `max_payload`. Set by whoever cut it (the DLQ
    /// store, or a runtime that keeps only a prefix of an oversized body).
    #[serde(default)]
    pub payload_truncated: bool,
    /// The original body's size in bytes, when `payload_truncated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<u64>,
    /// `true` when some of the original headers were left out of `headers` so the
    /// record fits (the kept ones are untouched and in their original order).
    #[serde(default)]
    pub headers_truncated: bool,
    /// The failed attempts seen, oldest first, at most [`MAX_ATTEMPTS_KEPT`] (the most
    /// recent ones). Empty for a record written before attempts were kept, and for a
    /// letter that never reached the handler (a parked event, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

/// The most attempts a [`DeadLetter`] keeps: the most recent ones.
pub const MAX_ATTEMPTS_KEPT: usize = 20;

/// One failed attempt at handling a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it failed.
    pub at: DateTime<Utc>,
    /// JetStream's delivery count of the message at that attempt (1-based).
    pub delivery_count: u64,
    /// The class of its error.
    pub class: ErrorClass,
    /// Its error's message.
    pub reason: String,
}

impl Attempt {
    /// Appends `attempt` to `attempts`, keeping the last [`MAX_ATTEMPTS_KEPT`].
    pub fn push_bounded(attempts: &mut Vec<Attempt>, attempt: Attempt) {
        if attempts.len() >= MAX_ATTEMPTS_KEPT {
            attempts.remove(0);
        }
        attempts.push(attempt);
    }
}

impl DeadLetter {
    /// [`dedup_id`] of this letter's stream, sequence and consumer.
    pub fn dedup_id(&self) -> String {
        dedup_id(&self.stream, self.stream_sequence, &self.consumer)
    }

    /// Whether the record lost part of the original message (body or headers): it
    /// cannot be replayed as the original.
    pub fn is_truncated(&self) -> bool {
        self.payload_truncated || self.headers_truncated
    }
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(|e| serde::de::Error::custom(format_args!("payload is not base64: {e}")))
    }
}

/// Why a [`DeadLetterSink`] could not store a letter.
///
/// ```
/// use person_retry::{SinkError, SinkErrorKind};
/// assert_eq!(SinkError::new(SinkErrorKind::Rejected, "too large").kind(), SinkErrorKind::Rejected);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// The store is unreachable or not ready (transient).
    Unavailable,
    /// The store did not answer in time (transient).
    Timeout,
    /// The store refused the letter (too large, no such stream, ...).
    Rejected,
    /// The letter could not be encoded.
    Encode,
}

/// A [`DeadLetterSink`] failed to store a letter.
///
/// ```
/// use person_retry::{SinkError, SinkErrorKind};
///
/// let err = SinkError::new(SinkErrorKind::Timeout, "no ack from the DLQ stream");
/// assert!(err.is_transient());
/// assert_eq!(err.to_string(), "dead-letter sink failed (Timeout): no ack from the DLQ stream");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("dead-letter sink failed ({kind:?}): {message}")]
pub struct SinkError {
    kind: SinkErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl SinkError {
    /// An error of `kind` with a message.
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: SinkErrorKind,
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> SinkErrorKind {
        self.kind
    }

    /// Whether storing again later may work ([`SinkErrorKind::Unavailable`] and
    /// [`SinkErrorKind::Timeout`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            SinkErrorKind::Unavailable | SinkErrorKind::Timeout
        )
    }
}

/// Where dead letters go. `person-streaming` implements it on a JetStream DLQ stream
/// (publishing with `Nats-Msg-Id` = [`DeadLetter::dedup_id`]); [`MemorySink`] is for
/// tests. Dyn-compatible (`Arc<dyn DeadLetterSink>` works).
///
/// ```
/// use person_retry::{DeadLetter, DeadLetterSink, SinkError};
///
/// struct Discard;
///
/// #[async_trait::async_trait]
/// impl DeadLetterSink for Discard {
///     async fn store(&self, _letter: &DeadLetter) -> Result<(), SinkError> {
///         Ok(())
///     }
/// }
///
/// let sink: std::sync::Arc<dyn DeadLetterSink> = std::sync::Arc::new(Discard);
/// # let _ = sink;
/// ```
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Stores `letter`. Storing the same letter (same [`DeadLetter::dedup_id`]) twice
    /// must not create a duplicate.
    async fn store(&self, letter: &DeadLetter) -> Result<(), SinkError>;
}

#[async_trait]
impl<T: DeadLetterSink + ?Sized> DeadLetterSink for Arc<T> {
    async fn store(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        (**self).store(letter).await
    }
}

#[async_trait]
impl<T: DeadLetterSink + ?Sized> DeadLetterSink for Box<T> {
    async fn store(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        (**self).store(letter).await
    }
}

#[async_trait]
impl<T: DeadLetterSink + ?Sized> DeadLetterSink for &T {
    async fn store(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        (**self).store(letter).await
    }
}

/// An in-memory [`DeadLetterSink`] for tests. Clones share the same letters.
/// Deduplicates on [`DeadLetter::dedup_id`] like JetStream does, and can be told to
/// fail.
///
/// ```
/// use person_retry::{DeadLetterSink, MemorySink, SinkErrorKind};
/// # use person_retry::{DeadLetter, ErrorClass};
/// # fn letter() -> DeadLetter {
/// #     let now = chrono::Utc::now();
/// #     DeadLetter { subject: "s".into(), stream: "S".into(), stream_sequence: 1,
/// #         payload: Default::default(), headers: vec![], reason: "r".into(),
/// #         error_class: ErrorClass::Transient, delivery_count: 5, first_failure_at: now,
/// #         last_failure_at: now, consumer: "c".into(), handler: "h".into(), metadata: None,
/// #         event_id: None, person_id: None, event_type: None, payload_truncated: false,
/// #         original_size: None, headers_truncated: false, attempts: vec![] }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let sink = MemorySink::new();
/// sink.fail_next(1, SinkErrorKind::Unavailable);
/// assert!(sink.store(&letter()).await.unwrap_err().is_transient());
/// sink.store(&letter()).await.unwrap();
/// sink.store(&letter()).await.unwrap(); // same dedup id: not stored twice
/// assert_eq!(sink.len(), 1);
/// assert_eq!(sink.store_calls(), 3);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    letters: Vec<DeadLetter>,
    ids: HashSet<String>,
    fail_next: u32,
    fail_next_kind: Option<SinkErrorKind>,
    failing: Option<SinkErrorKind>,
    calls: u64,
}

impl MemorySink {
    /// An empty sink that stores everything.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored letters, in storing order.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.state().letters.clone()
    }

    /// How many letters are stored.
    pub fn len(&self) -> usize {
        self.state().letters.len()
    }

    /// Whether no letter is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times `store` was called, failures included.
    pub fn store_calls(&self) -> u64 {
        self.state().calls
    }

    /// Makes the next `count` stores fail with `kind`.
    pub fn fail_next(&self, count: u32, kind: SinkErrorKind) {
        let mut state = self.state();
        state.fail_next = count;
        state.fail_next_kind = Some(kind);
    }

    /// Makes every store fail with `kind` (`None`: stop failing).
    pub fn set_failing(&self, kind: Option<SinkErrorKind>) {
        self.state().failing = kind;
    }
}

#[async_trait]
impl DeadLetterSink for MemorySink {
    async fn store(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        let mut state = self.state();
        state.calls += 1;
        if let Some(kind) = state.failing {
            return Err(SinkError::new(kind, "memory sink told to fail"));
        }
        if state.fail_next > 0 {
            state.fail_next -= 1;
            let kind = state.fail_next_kind.unwrap_or(SinkErrorKind::Unavailable);
            return Err(SinkError::new(kind, "memory sink told to fail"));
        }
        if state.ids.insert(letter.dedup_id()) {
            state.letters.push(letter.clone());
        }
        Ok(())
    }
}
