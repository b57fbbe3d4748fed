//! [`Publisher`]: dedup by event id, optimistic concurrency per person, atomic
//! multi-event append, pipelined publishing with backpressure, and retries of transient
//! failures that never duplicate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{self, HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind as NatsKind};
use async_nats::jetstream::{self, publish::PublishAck};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use person_events::{EventId, PersonId, StreamingEventEnvelope, codec, subject};
use person_metadata::headers::{CloudEventAttributes, write_headers};
use person_retry::RetryPolicy;

use crate::StreamingConfig;

/// The wildcard filter the expected-last-subject-sequence check applies to (server 2.11+).
const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// The most events one atomic append may hold (the server's batch limit).
pub const MAX_BATCH: usize = 1000;

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The event id (also the `Nats-Msg-Id`).
    pub event_id: EventId,
    /// The stream sequence the event is stored at (the original one for a duplicate).
    pub stream_sequence: u64,
    /// `true` when the server already had this event id inside its duplicate window and
    /// stored nothing new.
    pub duplicate: bool,
}

/// What the person's event history must look like for an append to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The person has no events yet (creating a new person).
    NoEvents,
    /// The person's last event is at this stream sequence (the version from
    /// [`crate::AggregateReader::last_version`] or the last envelope's `stream_position`).
    Exactly(u64),
}

impl ExpectedVersion {
    fn sequence(self) -> Option<u64> {
        match self {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoEvents => Some(0),
            ExpectedVersion::Exactly(v) => Some(v),
        }
    }
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReceipt {
    /// One receipt per event, in order.
    pub events: Vec<PublishReceipt>,
    /// The person's version after the append (the last event's stream sequence).
    pub version: u64,
}

/// The kind of a [`PublishError`], to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The envelope is inconsistent (person mismatch, empty batch, too many events).
    InvalidEvent,
    /// The message is larger than the server's `max_payload`.
    PayloadTooLarge,
    /// No stream captures the subject.
    NoStream,
    /// The configured stream captures the subject but did not answer ("no responders":
    /// a leader election or a restart lasting longer than every retry). Transient:
    /// publishing again is safe (same `Nats-Msg-Id`).
    Unavailable,
    /// The person's version is not the expected one (optimistic concurrency).
    Conflict,
    /// No ack within the timeout, after every retry. The event may or may not be stored;
    /// publishing it again is safe (same `Nats-Msg-Id`).
    TimedOut,
    /// The connection failed, after every retry.
    Transport,
    /// The server rejected the request (stream limits, batch rules...).
    Rejected,
    /// This connection's user may not publish on the event's subject (the server
    /// reported a permissions violation). Not transient: fix the user's permissions.
    PermissionDenied,
}

/// A publish failed.
///
/// ```
/// use person_streaming::{PublishError, PublishErrorKind};
/// fn retry_later(e: &PublishError) -> bool {
///     e.is_transient()
/// }
/// # let _ = retry_later;
/// # let _ = PublishErrorKind::Conflict;
/// ```
#[derive(Debug, thiserror::Error)]
pub struct PublishError {
    kind: PublishErrorKind,
    message: String,
    expected: Option<u64>,
    actual: Option<u64>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl PublishError {
    fn new(kind: PublishErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            expected: None,
            actual: None,
            source: None,
        }
    }

    fn with_source(
        kind: PublishErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            source: Some(Box::new(source)),
            ..Self::new(kind, message)
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// For a conflict: the version the caller expected.
    pub fn expected_version(&self) -> Option<u64> {
        self.expected
    }

    /// For a conflict: the person's actual version when the conflict was seen.
    pub fn actual_version(&self) -> Option<u64> {
        self.actual
    }

    /// `true` for failures worth retrying later (timeouts, transport).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            PublishErrorKind::TimedOut
                | PublishErrorKind::Transport
                | PublishErrorKind::Unavailable
        )
    }
}

/// Publishes envelopes to the event stream. Cheap to clone.
///
/// ```no_run
/// use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope};
/// use person_metadata::EventMetadata;
/// use person_streaming::{ExpectedVersion, StreamingClient, StreamingConfig};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = StreamingClient::new("nats://localhost:4222", StreamingConfig::default()).await?;
/// let publisher = client.publisher();
/// let person_id = PersonId::new();
/// let created = StreamingEventEnvelope::new(person_id, 1, PersonEventV2::Created {
///     person_id,
///     name: PersonName::new("John", None, "Doe")?,
///     source: "api".into(),
///     metadata: EventMetadata::new(),
/// });
/// let receipt = publisher.append(person_id, ExpectedVersion::NoEvents, &[created]).await?;
/// println!("person is at version {}", receipt.version);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    source: Arc<str>,
    max_in_flight: usize,
    ack_timeout: Duration,
    retry: RetryPolicy,
    stream_subjects: Arc<[String]>,
    stream_name: Arc<str>,
    denials: crate::client::Denials,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("source", &self.source)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    event_id: EventId,
}

impl Publisher {
    pub(crate) fn new(
        js: jetstream::Context,
        config: &StreamingConfig,
        denials: crate::client::Denials,
    ) -> Self {
        Self {
            denials,
            js,
            source: config.publisher.source.as_str().into(),
            max_in_flight: config.publisher.max_in_flight.max(1),
            ack_timeout: Duration::from_millis(config.publisher.ack_timeout_ms),
            retry: config.publisher.retry.clone(),
            stream_subjects: config.stream.subjects.clone().into(),
            stream_name: config.stream.name.as_str().into(),
        }
    }

    /// Publishes one envelope on its subject. Dedup by event id; transient failures are
    /// retried with the publisher's retry policy, reusing the same `Nats-Msg-Id`.
    pub async fn publish(
        &self,
        envelope: &StreamingEventEnvelope,
    ) -> Result<PublishReceipt, PublishError> {
        self.publish_with_retry(envelope, 0).await
    }

    /// Publishes many envelopes, keeping at most `max_in_flight` acks outstanding, and
    /// yields one result per envelope, in order. Messages go on the wire in input order;
    /// only an envelope that needs a retry can land after later ones (use [`append`]
    /// for strict per-person order).
    ///
    /// [`append`]: Publisher::append
    pub fn publish_all<'a, I>(
        &'a self,
        envelopes: I,
    ) -> impl Stream<Item = Result<PublishReceipt, PublishError>> + Send + 'a
    where
        I: IntoIterator<Item = StreamingEventEnvelope>,
        I::IntoIter: Send + 'a,
    {
        struct State<'a, It> {
            it: It,
            pending: FuturesOrdered<BoxFuture<'a, Result<PublishReceipt, PublishError>>>,
            exhausted: bool,
        }
        let state = State {
            it: envelopes.into_iter(),
            pending: FuturesOrdered::new(),
            exhausted: false,
        };
        futures::stream::unfold(state, move |mut st| async move {
            while !st.exhausted && st.pending.len() < self.max_in_flight {
                match st.it.next() {
                    Some(envelope) => {
                        let fut = self.start(envelope).await;
                        st.pending.push_back(fut);
                    }
                    None => st.exhausted = true,
                }
            }
            let next = st.pending.next().await?;
            Some((next, st))
        })
    }

    /// Sends one message (awaiting only the send) and returns the future of its result.
    async fn start<'a>(
        &'a self,
        envelope: StreamingEventEnvelope,
    ) -> BoxFuture<'a, Result<PublishReceipt, PublishError>> {
        let Outgoing {
            subject,
            headers,
            payload,
            event_id,
        } = match self.outgoing(&envelope) {
            Ok(out) => out,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        // The headers move into the first attempt; a retry rebuilds them from the
        // envelope, so the common path never copies a header map.
        let sent = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await;
        Box::pin(async move {
            let first = match sent {
                Ok(ack) => self.await_ack(ack, event_id).await,
                Err(e) => Err(e),
            };
            match first {
                Ok(receipt) => Ok(receipt),
                Err(e) if self.retryable(&e, &subject) => {
                    self.publish_with_retry(&envelope, 1).await
                }
                Err(e) => Err(self.classify(e, &subject, None).await),
            }
        })
    }

    async fn await_ack(
        &self,
        ack: PublishAckFuture,
        event_id: EventId,
    ) -> Result<PublishReceipt, jetstream::context::PublishError> {
        let ack: PublishAck = ack.await?;
        Ok(PublishReceipt {
            event_id,
            stream_sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Sends one message and waits for its ack.
    async fn send(
        &self,
        out: Outgoing,
    ) -> Result<PublishReceipt, jetstream::context::PublishError> {
        let ack = self
            .js
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await?;
        self.await_ack(ack, out.event_id).await
    }

    /// Publishes with the retry policy. Each attempt builds its message from the
    /// envelope (same `Nats-Msg-Id`), so the first attempt copies nothing.
    async fn publish_with_retry(
        &self,
        envelope: &StreamingEventEnvelope,
        already_tried: u32,
    ) -> Result<PublishReceipt, PublishError> {
        let mut backoff = self.retry.backoff();
        let mut attempt = already_tried;
        if attempt > 0 {
            // The first try already happened; wait as the schedule says before the next.
            if let Some(delay) = backoff.next() {
                tokio::time::sleep(delay).await;
            }
        }
        loop {
            attempt += 1;
            let out = self.outgoing(envelope)?;
            let subject = out.subject.clone();
            match self.send(out).await {
                Ok(receipt) => return Ok(receipt),
                Err(e) if self.retryable(&e, &subject) && attempt < self.retry.max_attempts() => {
                    let delay = backoff.next().unwrap_or(self.retry.max_backoff());
                    tracing::debug!(
                        %subject, event_id = %envelope.event_id, attempt, ?delay, error = %e,
                        "publish failed transiently; retrying with the same Nats-Msg-Id"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(self.classify(e, &subject, None).await),
            }
        }
    }

    /// Appends events of one person, checking the person's version first. One event is a
    /// plain publish with the expectation; several are one atomic batch: all stored, or
    /// none. A conflict carries the expected and the actual version.
    pub async fn append(
        &self,
        person_id: PersonId,
        expected: ExpectedVersion,
        events: &[StreamingEventEnvelope],
    ) -> Result<AppendReceipt, PublishError> {
        if events.is_empty() {
            return Err(PublishError::new(
                PublishErrorKind::InvalidEvent,
                "append needs at least one event",
            ));
        }
        if events.len() > MAX_BATCH {
            return Err(PublishError::new(
                PublishErrorKind::InvalidEvent,
                format!(
                    "append holds {} events; the server accepts at most {MAX_BATCH} in one atomic batch",
                    events.len()
                ),
            ));
        }
        let filter = subject::person_filter(&person_id);
        let mut outgoing = Vec::with_capacity(events.len());
        for (i, env) in events.iter().enumerate() {
            if env.aggregate_id != person_id {
                return Err(PublishError::new(
                    PublishErrorKind::InvalidEvent,
                    format!(
                        "event {i} ({}) is about person {}, not {person_id}",
                        env.event_id, env.aggregate_id
                    ),
                ));
            }
            outgoing.push(self.outgoing(env)?);
        }
        if let Some(seq) = expected.sequence() {
            let h = &mut outgoing[0].headers;
            h.insert(
                header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                HeaderValue::from(seq.to_string().as_str()),
            );
            h.insert(
                EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                HeaderValue::from(filter.as_str()),
            );
        }
        if outgoing.len() > 1 {
            return self.append_batch(person_id, expected, outgoing).await;
        }
        let out = outgoing.pop().expect("one event");
        let subject = out.subject.clone();
        match self.send(out).await {
            Ok(receipt) => Ok(AppendReceipt {
                version: receipt.stream_sequence,
                events: vec![receipt],
            }),
            Err(e) => Err(self
                .classify(e, &subject, Some((person_id, expected)))
                .await),
        }
    }

    async fn append_batch(
        &self,
        person_id: PersonId,
        expected: ExpectedVersion,
        outgoing: Vec<Outgoing>,
    ) -> Result<AppendReceipt, PublishError> {
        let client = self.js.client();
        let batch_id = uuid::Uuid::now_v7().simple().to_string();
        let n = outgoing.len();
        let mut ids = Vec::with_capacity(n);
        let mut commit_reply = None;
        for (i, mut out) in outgoing.into_iter().enumerate() {
            ids.push(out.event_id);
            let h = &mut out.headers;
            h.insert(header::NATS_BATCH_ID, HeaderValue::from(batch_id.as_str()));
            h.insert(
                header::NATS_BATCH_SEQUENCE,
                HeaderValue::from((i + 1).to_string().as_str()),
            );
            let last = i + 1 == n;
            if last {
                h.insert(header::NATS_BATCH_COMMIT, HeaderValue::from("1"));
            }
            if i == 0 || last {
                // The first message opens the batch and the last commits it: both are
                // requests, so a rejected batch is reported, never silently dropped.
                let reply = tokio::time::timeout(
                    self.ack_timeout,
                    client.request_with_headers(out.subject.clone(), out.headers, out.payload),
                )
                .await
                .map_err(|_| {
                    PublishError::new(
                        PublishErrorKind::TimedOut,
                        format!("atomic append of {n} events: no reply from the server; nothing is known to be stored, re-read the version before retrying"),
                    )
                })?
                .map_err(|e| {
                    PublishError::with_source(PublishErrorKind::Transport, "atomic append request failed", e)
                })?;
                if let Some(err) = api_error(&reply.payload) {
                    return Err(self.batch_error(err, person_id, expected).await);
                }
                if last {
                    commit_reply = Some(reply);
                }
            } else {
                client
                    .publish_with_headers(out.subject, out.headers, out.payload)
                    .await
                    .map_err(|e| {
                        PublishError::with_source(
                            PublishErrorKind::Transport,
                            "atomic append publish failed",
                            e,
                        )
                    })?;
            }
        }
        let reply = commit_reply.expect("the last message is a request");
        let ack: PublishAck = serde_json::from_slice(&reply.payload).map_err(|e| {
            PublishError::with_source(
                PublishErrorKind::Rejected,
                "unexpected reply to the batch commit",
                e,
            )
        })?;
        let first = ack.sequence + 1 - n as u64;
        let events = ids
            .into_iter()
            .enumerate()
            .map(|(i, event_id)| PublishReceipt {
                event_id,
                stream_sequence: first + i as u64,
                duplicate: ack.duplicate,
            })
            .collect();
        Ok(AppendReceipt {
            events,
            version: ack.sequence,
        })
    }

    async fn batch_error(
        &self,
        err: ApiError,
        person_id: PersonId,
        expected: ExpectedVersion,
    ) -> PublishError {
        // 10071: wrong last sequence.
        if err.err_code == 10071 {
            return self.conflict(person_id, expected, err.description).await;
        }
        PublishError::new(
            PublishErrorKind::Rejected,
            format!(
                "the server rejected the atomic append (error {}): {}",
                err.err_code, err.description
            ),
        )
    }

    async fn conflict(
        &self,
        person_id: PersonId,
        expected: ExpectedVersion,
        detail: String,
    ) -> PublishError {
        let actual = crate::reader::last_version_in(&self.js, &self.stream_name, &person_id)
            .await
            .ok();
        PublishError {
            kind: PublishErrorKind::Conflict,
            message: format!(
                "version conflict for person {person_id}: expected {}, found {} ({detail})",
                match expected {
                    ExpectedVersion::Any => "any".to_owned(),
                    ExpectedVersion::NoEvents => "no events".to_owned(),
                    ExpectedVersion::Exactly(v) => v.to_string(),
                },
                actual.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
            ),
            expected: expected.sequence(),
            actual,
            source: None,
        }
    }

    async fn classify(
        &self,
        e: jetstream::context::PublishError,
        subject: &str,
        conflict: Option<(PersonId, ExpectedVersion)>,
    ) -> PublishError {
        if self.denials.publish_denied(subject) {
            return PublishError::with_source(
                PublishErrorKind::PermissionDenied,
                format!(
                    "not allowed to publish to {subject}: the server reported a permissions violation; grant this user publish on {}",
                    self.stream_subjects.join(", ")
                ),
                e,
            );
        }
        match e.kind() {
            NatsKind::WrongLastSequence => match conflict {
                Some((person, expected)) => self.conflict(person, expected, e.to_string()).await,
                None => {
                    PublishError::with_source(PublishErrorKind::Conflict, "version conflict", e)
                }
            },
            NatsKind::MaxPayloadExceeded => PublishError::with_source(
                PublishErrorKind::PayloadTooLarge,
                format!("event on {subject} is larger than the server's max_payload"),
                e,
            ),
            NatsKind::StreamNotFound if self.captured(subject) => PublishError::with_source(
                PublishErrorKind::Unavailable,
                format!(
                    "the stream capturing {subject} did not answer after {} attempts (a leader election or a restart); publishing again is safe",
                    self.retry.max_attempts()
                ),
                e,
            ),
            NatsKind::StreamNotFound => PublishError::with_source(
                PublishErrorKind::NoStream,
                format!(
                    "no stream captures subject {subject}: run StreamingClient::ensure, or check stream.subjects"
                ),
                e,
            ),
            NatsKind::TimedOut => PublishError::with_source(
                PublishErrorKind::TimedOut,
                format!(
                    "no publish ack for {subject} after {} attempts; publishing again is safe",
                    self.retry.max_attempts()
                ),
                e,
            ),
            NatsKind::BrokenPipe | NatsKind::MaxAckPending => PublishError::with_source(
                PublishErrorKind::Transport,
                format!("publish to {subject} failed"),
                e,
            ),
            _ => PublishError::with_source(
                PublishErrorKind::Rejected,
                format!("the server rejected the publish to {subject}"),
                e,
            ),
        }
    }

    /// "No responders" for a subject the configured stream captures means the stream is
    /// briefly unavailable (a leader election, a restart): worth retrying. For any other
    /// subject it means no stream exists, which no retry fixes.
    fn retryable(&self, e: &jetstream::context::PublishError, subject: &str) -> bool {
        if self.denials.publish_denied(subject) {
            return false;
        }
        retryable_kind(e.kind()) || (e.kind() == NatsKind::StreamNotFound && self.captured(subject))
    }

    /// Whether the configured stream captures `subject`.
    fn captured(&self, subject: &str) -> bool {
        self.stream_subjects
            .iter()
            .any(|s| crate::config::subject_within(subject, s))
    }

    fn outgoing(&self, envelope: &StreamingEventEnvelope) -> Result<Outgoing, PublishError> {
        envelope.validate().map_err(|e| {
            PublishError::with_source(PublishErrorKind::InvalidEvent, "inconsistent envelope", e)
        })?;
        let payload = codec::encode(envelope).map_err(|e| {
            PublishError::with_source(
                PublishErrorKind::InvalidEvent,
                "cannot encode the envelope",
                e,
            )
        })?;
        let subject = envelope.subject();
        let headers = self.headers(envelope);
        Ok(Outgoing {
            subject,
            headers,
            payload: Bytes::from(payload),
            event_id: envelope.event_id,
        })
    }

    fn headers(&self, envelope: &StreamingEventEnvelope) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let mut buf = uuid::Uuid::encode_buffer();
        let id = envelope
            .event_id
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut buf);
        headers.insert(header::NATS_MESSAGE_ID, HeaderValue::from(&*id));
        let mut pbuf = uuid::Uuid::encode_buffer();
        let person = envelope
            .aggregate_id
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut pbuf);
        write_headers(
            envelope.metadata(),
            &CloudEventAttributes {
                id: envelope.event_id,
                source: &self.source,
                event_type: envelope.event.event_type(),
                subject: Some(person),
            },
            |name, value| {
                // Static names: no validation or allocation per header.
                headers.insert(HeaderName::from_static(name), HeaderValue::from(value))
            },
        );
        headers
    }
}

/// Failures that leave the outcome unknown or are caused by a passing condition: retried
/// with the same `Nats-Msg-Id`, so a stored first attempt turns the retry into a duplicate.
fn retryable_kind(kind: NatsKind) -> bool {
    matches!(
        kind,
        NatsKind::TimedOut | NatsKind::BrokenPipe | NatsKind::MaxAckPending
    )
}

#[derive(serde::Deserialize)]
struct ApiErrorReply {
    error: ApiError,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

fn api_error(payload: &[u8]) -> Option<ApiError> {
    if payload.is_empty() {
        return None;
    }
    serde_json::from_slice::<ApiErrorReply>(payload)
        .ok()
        .map(|r| r.error)
}
