//! [`Publisher`]: dedup by event id, optimistic concurrency per person, atomic
//! multi-event append, pipelined publishing with backpressure, and retries of transient
//! failures that never duplicate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{self, HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind as NatsKind};
use async_nats::jetstream::{self, publish::PublishAck};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use person_events::{EventId, PersonId, StreamingEventEnvelope, codec, subject};
use person_metadata::headers::{CloudEventAttributes, write_headers};
use person_retry::RetryPolicy;

use crate::StreamingConfig;
use crate::client::js_error;
use crate::error::StreamingError;

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
    subjects: subject::Subjects,
    denials: crate::client::Denials,
    metrics: Arc<crate::metrics::PublishMetrics>,
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
            subjects: config.subjects(),
            metrics: Arc::new(crate::metrics::PublishMetrics::new(&config.stream.name)),
        }
    }

    /// Publishes one envelope on its subject. Dedup by event id; transient failures are
    /// retried with the publisher's retry policy, reusing the same `Nats-Msg-Id`.
    pub async fn publish(
        &self,
        envelope: &StreamingEventEnvelope,
    ) -> Result<PublishReceipt, PublishError> {
        let started = std::time::Instant::now();
        let result = self.publish_with_retry(envelope, 0).await;
        match &result {
            Ok(receipt) => self.metrics.published(receipt, started.elapsed()),
            Err(e) => self.metrics.failed(false, e),
        }
        result
    }

    /// Publishes many envelopes, keeping at most `max_in_flight` acks outstanding, and
    /// yields one result per envelope, in order. Messages go on the wire in input order;
    /// only an envelope that needs a retry can land after later ones (use [`append`]
    /// for strict per-person order).
    ///
    /// The messages (JSON body, header map) are built on a task of their own, a few
    /// dozen ahead of the sending, so the sending task only sends and collects acks.
    /// Must be polled within a Tokio runtime.
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
            /// Built messages not sent yet, in input order.
            ready: std::collections::VecDeque<(
                StreamingEventEnvelope,
                Result<Outgoing, PublishError>,
            )>,
            /// Chunks handed to the builder and not back yet.
            building: usize,
            to_builder: Option<tokio::sync::mpsc::Sender<Vec<StreamingEventEnvelope>>>,
            built: Option<tokio::sync::mpsc::Receiver<Vec<Built>>>,
        }
        let state = State {
            it: envelopes.into_iter(),
            pending: FuturesOrdered::new(),
            exhausted: false,
            ready: std::collections::VecDeque::new(),
            building: 0,
            to_builder: None,
            built: None,
        };
        futures::stream::unfold(state, move |mut st| async move {
            loop {
                // Keep the builder a few chunks ahead of the sending.
                while !st.exhausted && st.building < BUILD_AHEAD {
                    let chunk: Vec<_> = st.it.by_ref().take(BUILD_CHUNK).map(traced).collect();
                    if chunk.len() < BUILD_CHUNK {
                        st.exhausted = true;
                    }
                    if chunk.is_empty() {
                        break;
                    }
                    let tx = st.to_builder.get_or_insert_with(|| {
                        let (tx, rx) = self.spawn_builder();
                        st.built = Some(rx);
                        tx
                    });
                    if let Err(unsent) = tx.try_send(chunk) {
                        // Never full (at most BUILD_AHEAD chunks are out); closed only
                        // if the runtime is shutting down: build this chunk here.
                        let chunk = unsent.into_inner();
                        let mut buf = BytesMut::new();
                        st.ready
                            .extend(chunk.into_iter().map(|e| self.build(e, &mut buf)));
                        break;
                    }
                    st.building += 1;
                }
                while st.pending.len() < self.max_in_flight
                    && let Some((envelope, out)) = st.ready.pop_front()
                {
                    let fut = self.start(envelope, out).await;
                    st.pending.push_back(fut);
                }
                let room = st.pending.len() < self.max_in_flight;
                let waiting_build = st.building > 0 && room;
                if st.pending.is_empty() && !waiting_build {
                    // Here the window has taken everything ready and no chunk is
                    // building: the input being exhausted means all is done.
                    if st.exhausted {
                        return None;
                    }
                    continue;
                }
                let built = st.built.as_mut();
                tokio::select! {
                    biased;
                    done = st.pending.next(), if !st.pending.is_empty() => {
                        return done.map(|d| (d, st));
                    }
                    chunk = async { built?.recv().await }, if waiting_build => {
                        st.building -= 1;
                        match chunk {
                            Some(chunk) => st.ready.extend(chunk),
                            // Only a runtime shutting down ends the builder (a panic
                            // while building is that envelope's error).
                            None => {
                                st.building = 0;
                                st.to_builder = None;
                            }
                        }
                    }
                }
            }
        })
    }

    /// A task that builds the messages of chunks of envelopes, in order.
    fn spawn_builder(
        &self,
    ) -> (
        tokio::sync::mpsc::Sender<Vec<StreamingEventEnvelope>>,
        tokio::sync::mpsc::Receiver<Vec<Built>>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<StreamingEventEnvelope>>(BUILD_AHEAD);
        let (built_tx, built_rx) = tokio::sync::mpsc::channel(BUILD_AHEAD);
        let builder = self.clone();
        tokio::spawn(async move {
            // The bodies are written one after another into shared buffers: a body is a
            // slice of one (no allocation of its own, nor a free on the connection's
            // thread), and a buffer is freed once all its bodies have been sent.
            let mut buf = BytesMut::new();
            while let Some(chunk) = rx.recv().await {
                let built: Vec<_> = chunk
                    .into_iter()
                    .map(|e| builder.build(e, &mut buf))
                    .collect();
                if built_tx.send(built).await.is_err() {
                    break;
                }
            }
        });
        (tx, built_rx)
    }

    /// `envelope` with its message. A panic while building is that envelope's error,
    /// so the builder task never dies and takes no other envelope with it.
    fn build(&self, envelope: StreamingEventEnvelope, buf: &mut BytesMut) -> Built {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.outgoing_in(&envelope, Some(&mut *buf))
        }))
        .unwrap_or_else(|_| {
            // Whatever the panic left half written is not part of any body.
            buf.clear();
            Err(PublishError::new(
                PublishErrorKind::InvalidEvent,
                "building the message panicked",
            ))
        });
        (envelope, out)
    }

    /// Sends one message (awaiting only the send) and returns the future of its result.
    async fn start<'a>(
        &'a self,
        envelope: StreamingEventEnvelope,
        outgoing: Result<Outgoing, PublishError>,
    ) -> BoxFuture<'a, Result<PublishReceipt, PublishError>> {
        let Outgoing {
            subject,
            headers,
            payload,
            event_id,
        } = match outgoing {
            Ok(out) => out,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        // The headers move into the first attempt; a retry rebuilds them from the
        // envelope, so the common path never copies a header map.
        let started = std::time::Instant::now();
        let sent = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await;
        Box::pin(async move {
            let first = match sent {
                Ok(ack) => self.await_ack(ack, event_id).await,
                Err(e) => Err(e),
            };
            let result = match first {
                Ok(receipt) => Ok(receipt),
                Err(e) => {
                    // The subject again, only on this rare path (no copy per message).
                    let subject = self
                        .subjects
                        .event_subject(&envelope.aggregate_id, envelope.event.event_type());
                    if self.retryable(&e, &subject) {
                        self.publish_with_retry(&envelope, 1).await
                    } else {
                        Err(self.classify_now(e, &subject, 1))
                    }
                }
            };
            match &result {
                Ok(receipt) => self.metrics.published(receipt, started.elapsed()),
                Err(e) => self.metrics.failed(false, e),
            }
            result
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
                Err(e) => return Err(self.classify_now(e, &subject, attempt)),
            }
        }
    }

    /// Appends events of one person, checking the person's version first. One event is a
    /// plain publish with the expectation; several are one atomic batch: all stored, or
    /// none. A conflict carries the expected and the actual version.
    ///
    /// Idempotent, like an event store's append: timeouts, "no responders" and reconnects
    /// are retried with the publisher's retry policy and the same `Nats-Msg-Id`s, and an
    /// append whose events are already stored right after the expected version (a retry
    /// of an append whose answer was lost) succeeds with their sequences, marked
    /// `duplicate`, instead of conflicting with itself. Someone else's events there are
    /// still a [`PublishErrorKind::Conflict`].
    pub async fn append(
        &self,
        person_id: PersonId,
        expected: ExpectedVersion,
        events: &[StreamingEventEnvelope],
    ) -> Result<AppendReceipt, PublishError> {
        let started = std::time::Instant::now();
        let result = self.append_checked(person_id, expected, events).await;
        match &result {
            Ok(receipt) => self.metrics.appended(receipt, started.elapsed()),
            Err(e) => self.metrics.failed(true, e),
        }
        result
    }

    /// [`Publisher::append`] without its metrics.
    async fn append_checked(
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
        }
        let mut backoff = self.retry.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outgoing = self.append_outgoing(person_id, expected, events)?;
            let failure = match self.append_once(outgoing).await {
                Ok(receipt) => return Ok(receipt),
                Err(failure) => failure,
            };
            let retry = match failure {
                AppendFailure::Fatal(e) => return Err(e),
                AppendFailure::Retry(cause) => cause,
                // A refused expectation (or ids the server already holds) may be our own
                // events, stored by an earlier attempt whose answer was lost, here or in
                // the caller's previous call: compare ids before calling it a conflict.
                AppendFailure::Refused(detail) => {
                    match self.already_stored(person_id, expected, events).await {
                        Ok(Some(receipt)) => {
                            tracing::debug!(
                                person = %person_id, attempt, version = receipt.version,
                                "append already stored at the expected version; idempotent success"
                            );
                            return Ok(receipt);
                        }
                        Ok(None) => {
                            return Err(self.refusal(person_id, expected, detail).await);
                        }
                        // The outcome cannot be checked now: try again.
                        Err(e) => RetryCause::Verify(e),
                    }
                }
            };
            if attempt >= self.retry.max_attempts() {
                return Err(retry.into_error(self, attempt));
            }
            let delay = backoff.next().unwrap_or(self.retry.max_backoff());
            tracing::debug!(
                person = %person_id, attempt, ?delay, error = %retry,
                "append failed transiently; retrying with the same Nats-Msg-Ids"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The messages of one append attempt, the expectation on the first.
    fn append_outgoing(
        &self,
        person_id: PersonId,
        expected: ExpectedVersion,
        events: &[StreamingEventEnvelope],
    ) -> Result<Vec<Outgoing>, PublishError> {
        let mut outgoing = events
            .iter()
            .map(|env| self.outgoing(env))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(seq) = expected.sequence() {
            let h = &mut outgoing[0].headers;
            h.insert(
                header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                HeaderValue::from(seq.to_string().as_str()),
            );
            h.insert(
                EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                HeaderValue::from(self.subjects.person_filter(&person_id).as_str()),
            );
        }
        Ok(outgoing)
    }

    /// One attempt: a publish for one event, an atomic batch for several.
    async fn append_once(
        &self,
        mut outgoing: Vec<Outgoing>,
    ) -> Result<AppendReceipt, AppendFailure> {
        if outgoing.len() > 1 {
            return self.append_batch(outgoing).await;
        }
        let out = outgoing.pop().expect("one event");
        let subject = out.subject.clone();
        match self.send(out).await {
            Ok(receipt) => Ok(AppendReceipt {
                version: receipt.stream_sequence,
                events: vec![receipt],
            }),
            Err(e) if self.retryable(&e, &subject) => {
                Err(AppendFailure::Retry(RetryCause::Publish {
                    error: e,
                    subject,
                }))
            }
            Err(e) if e.kind() == NatsKind::WrongLastSequence => {
                Err(AppendFailure::Refused(e.to_string()))
            }
            Err(e) => Err(AppendFailure::Fatal(self.classify_now(e, &subject, 1))),
        }
    }

    /// One atomic batch, under a fresh batch id: a batch cut by a reconnect is abandoned
    /// by the server (nothing stored), and the next attempt starts a new one.
    ///
    /// The messages between the first and the last are not awaited one by one, but they
    /// carry a reply subject: the server answers a message it refuses (too large for the
    /// stream, ...) with its error and abandons the batch, and the commit's own answer
    /// then only says "incomplete", as for a batch cut by a reconnect. The refusal is the
    /// answer reported, and it is not retried.
    async fn append_batch(&self, outgoing: Vec<Outgoing>) -> Result<AppendReceipt, AppendFailure> {
        let client = self.js.client();
        let batch_id = uuid::Uuid::now_v7().simple().to_string();
        let n = outgoing.len();
        let first_subject = outgoing[0].subject.clone();
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| {
            self.batch_failure(
                &first_subject,
                PublishErrorKind::Transport,
                format!("atomic append of {n} events: cannot subscribe to the replies"),
                Some(Box::new(e)),
            )
        })?;
        let mut ids = Vec::with_capacity(n);
        let mut commit_reply = None;
        for (i, mut out) in outgoing.into_iter().enumerate() {
            ids.push(out.event_id);
            let subject = out.subject.clone();
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
                    client.request_with_headers(out.subject, out.headers, out.payload),
                )
                .await;
                let reply = match reply {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => return Err(self.batch_request_failure(e, &subject, n)),
                    Err(elapsed) => {
                        return Err(self.batch_failure(
                            &subject,
                            PublishErrorKind::TimedOut,
                            format!("atomic append of {n} events: no reply from the server"),
                            Some(Box::new(elapsed)),
                        ));
                    }
                };
                if let Some(mut err) = api_error(&reply.payload) {
                    if last && err.err_code == API_BATCH_INCOMPLETE {
                        // The replies to the messages before it came first, on the
                        // same connection: a refused one is there already.
                        while let Some(Some(msg)) = replies.next().now_or_never() {
                            if let Some(refused) = api_error(&msg.payload)
                                && refused.err_code != API_BATCH_INCOMPLETE
                            {
                                err = refused;
                                break;
                            }
                        }
                    }
                    return Err(self.batch_error(err, n));
                }
                if last {
                    commit_reply = Some(reply);
                }
            } else if let Err(e) = client
                .publish_with_reply_and_headers(
                    out.subject,
                    inbox.clone(),
                    out.headers,
                    out.payload,
                )
                .await
            {
                if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                    return Err(AppendFailure::Fatal(PublishError::with_source(
                        PublishErrorKind::PayloadTooLarge,
                        format!(
                            "event {} of the atomic append on {subject} is larger than the server's max_payload",
                            i + 1
                        ),
                        e,
                    )));
                }
                return Err(self.batch_failure(
                    &subject,
                    PublishErrorKind::Transport,
                    format!("atomic append of {n} events: a publish failed"),
                    Some(Box::new(e)),
                ));
            }
        }
        let reply = commit_reply.expect("the last message is a request");
        let ack: PublishAck = serde_json::from_slice(&reply.payload).map_err(|e| {
            AppendFailure::Fatal(PublishError::with_source(
                PublishErrorKind::Rejected,
                "unexpected reply to the batch commit",
                e,
            ))
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

    /// A failed batch message: retried unless the server reported a permissions violation
    /// for its subject.
    fn batch_failure(
        &self,
        subject: &str,
        kind: PublishErrorKind,
        what: String,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> AppendFailure {
        if self.denials.publish_denied(subject) {
            return AppendFailure::Fatal(self.denied(subject, source));
        }
        AppendFailure::Retry(RetryCause::Batch { kind, what, source })
    }

    fn batch_request_failure(
        &self,
        e: async_nats::RequestError,
        subject: &str,
        n: usize,
    ) -> AppendFailure {
        use async_nats::RequestErrorKind;
        match e.kind() {
            RequestErrorKind::NoResponders if !self.captured(subject) => {
                AppendFailure::Fatal(PublishError::with_source(
                    PublishErrorKind::NoStream,
                    format!(
                        "no stream captures subject {subject}: run StreamingClient::ensure, or check stream.subjects"
                    ),
                    e,
                ))
            }
            RequestErrorKind::NoResponders => self.batch_failure(
                subject,
                PublishErrorKind::Unavailable,
                format!(
                    "atomic append of {n} events: the stream capturing {subject} did not answer (a leader election or a restart)"
                ),
                Some(Box::new(e)),
            ),
            RequestErrorKind::TimedOut => self.batch_failure(
                subject,
                PublishErrorKind::TimedOut,
                format!("atomic append of {n} events: no reply from the server"),
                Some(Box::new(e)),
            ),
            RequestErrorKind::MaxPayloadExceeded => {
                AppendFailure::Fatal(PublishError::with_source(
                    PublishErrorKind::PayloadTooLarge,
                    format!(
                        "an event of the atomic append on {subject} is larger than the server's max_payload"
                    ),
                    e,
                ))
            }
            _ => self.batch_failure(
                subject,
                PublishErrorKind::Transport,
                format!("atomic append of {n} events: a request failed"),
                Some(Box::new(e)),
            ),
        }
    }

    fn batch_error(&self, err: ApiError, n: usize) -> AppendFailure {
        match err.err_code {
            // Wrong last sequence, or ids the server already holds: maybe our own events.
            API_WRONG_LAST_SEQUENCE | API_BATCH_DUPLICATE_MESSAGE_ID => {
                AppendFailure::Refused(err.description)
            }
            // Part of the batch never reached the server (a reconnect): it was abandoned
            // whole, so nothing is stored and a new batch is safe.
            API_BATCH_INCOMPLETE => AppendFailure::Retry(RetryCause::Batch {
                kind: PublishErrorKind::Transport,
                what: format!(
                    "atomic append of {n} events: the server lost part of the batch ({})",
                    err.description
                ),
                source: None,
            }),
            API_BATCH_TOO_MANY_INFLIGHT => AppendFailure::Retry(RetryCause::Batch {
                kind: PublishErrorKind::Unavailable,
                what: format!(
                    "atomic append of {n} events: the stream is busy ({})",
                    err.description
                ),
                source: None,
            }),
            code => AppendFailure::Fatal(PublishError::new(
                PublishErrorKind::Rejected,
                format!(
                    "the server rejected the atomic append (error {code}): {}",
                    err.description
                ),
            )),
        }
    }

    /// The receipt of `events` if they are exactly the person's events stored right after
    /// the expected version (same ids, same order); for [`ExpectedVersion::Any`], wherever
    /// the first of them is. `None` when anything else is stored there.
    async fn already_stored(
        &self,
        person_id: PersonId,
        expected: ExpectedVersion,
        events: &[StreamingEventEnvelope],
    ) -> Result<Option<AppendReceipt>, StreamingError> {
        let stream = self
            .js
            .get_stream_no_info(&*self.stream_name)
            .await
            .map_err(|e| js_error(format!("cannot open stream {}", self.stream_name), e))?;
        let filter = self.subjects.person_filter(&person_id);
        let next = |from: u64| {
            let stream = &stream;
            let filter = &filter;
            async move {
                match stream
                    .raw_message_builder()
                    .sequence(from)
                    .next_by_subject(filter.as_str())
                    .send()
                    .await
                {
                    Ok(msg) => Ok(Some(msg)),
                    Err(e)
                        if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(js_error(
                        format!("cannot read the events of person {person_id}"),
                        e,
                    )),
                }
            }
        };
        let is = |msg: &jetstream::message::StreamMessage, id: EventId| {
            msg.headers
                .get(header::NATS_MESSAGE_ID)
                .and_then(|v| v.as_str().parse::<EventId>().ok())
                == Some(id)
        };
        let mut from = match expected.sequence() {
            Some(version) => version + 1,
            None => {
                // No expectation: find the first event by its id in the person's history.
                let mut from = 1;
                loop {
                    match next(from).await? {
                        None => return Ok(None),
                        Some(msg) if is(&msg, events[0].event_id) => break msg.sequence,
                        Some(msg) => from = msg.sequence + 1,
                    }
                }
            }
        };
        let mut receipts = Vec::with_capacity(events.len());
        for env in events {
            match next(from).await? {
                Some(msg) if is(&msg, env.event_id) => {
                    from = msg.sequence + 1;
                    receipts.push(PublishReceipt {
                        event_id: env.event_id,
                        stream_sequence: msg.sequence,
                        duplicate: true,
                    });
                }
                _ => return Ok(None),
            }
        }
        let version = receipts.last().map_or(0, |r| r.stream_sequence);
        Ok(Some(AppendReceipt {
            events: receipts,
            version,
        }))
    }

    /// The error for a refused append whose events are not the ones stored.
    async fn refusal(
        &self,
        person_id: PersonId,
        expected: ExpectedVersion,
        detail: String,
    ) -> PublishError {
        if expected == ExpectedVersion::Any {
            // Only ids the server already holds, in another place or order, refuse an
            // append without expectation.
            return PublishError::new(
                PublishErrorKind::Rejected,
                format!(
                    "the server refused the append for person {person_id} ({detail}); its events are not the person's last events in this order"
                ),
            );
        }
        self.conflict(person_id, expected, detail).await
    }

    async fn conflict(
        &self,
        person_id: PersonId,
        expected: ExpectedVersion,
        detail: String,
    ) -> PublishError {
        let actual =
            crate::reader::last_version_in(&self.js, &self.stream_name, &self.subjects, &person_id)
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

    fn denied(
        &self,
        subject: &str,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> PublishError {
        PublishError {
            source,
            ..PublishError::new(
                PublishErrorKind::PermissionDenied,
                format!(
                    "not allowed to publish to {subject}: the server reported a permissions violation; grant this user publish on {}",
                    self.stream_subjects.join(", ")
                ),
            )
        }
    }

    /// The error for a failed publish after `attempts` attempts.
    fn classify_now(
        &self,
        e: jetstream::context::PublishError,
        subject: &str,
        attempts: u32,
    ) -> PublishError {
        if self.denials.publish_denied(subject) {
            return self.denied(subject, Some(Box::new(e)));
        }
        let (kind, message) = publish_failure(e.kind(), subject, self.captured(subject), attempts);
        PublishError::with_source(kind, message, e)
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
        self.outgoing_in(envelope, None)
    }

    /// The message to send for `envelope`. With `buf`, its body is written at the end of
    /// `buf` and split off it (`buf` keeps its spare room for the next body); without,
    /// the body has a buffer of its own.
    fn outgoing_in(
        &self,
        envelope: &StreamingEventEnvelope,
        buf: Option<&mut BytesMut>,
    ) -> Result<Outgoing, PublishError> {
        // The current trace context, when the caller's metadata has none: body and
        // headers both carry it (a copy of the envelope only in that case).
        #[cfg(feature = "opentelemetry")]
        let traced = crate::otel::with_current_trace(envelope);
        #[cfg(feature = "opentelemetry")]
        let envelope = traced.as_ref().unwrap_or(envelope);
        envelope.validate().map_err(|e| {
            PublishError::with_source(PublishErrorKind::InvalidEvent, "inconsistent envelope", e)
        })?;
        let encoded = match buf {
            Some(buf) => {
                if buf.capacity() - buf.len() < BODY_ROOM {
                    // A fresh buffer once the spare room is used up (the old one is
                    // shared by the bodies split off it, so this allocates, not moves).
                    buf.reserve(BODY_BUFFER);
                }
                match codec::encode_into(envelope, (&mut *buf).writer()) {
                    Ok(()) => Ok(buf.split().freeze()),
                    Err(e) => {
                        buf.clear();
                        Err(e)
                    }
                }
            }
            None => codec::encode(envelope).map(Bytes::from),
        };
        let payload = encoded.map_err(|e| {
            PublishError::with_source(
                PublishErrorKind::InvalidEvent,
                "cannot encode the envelope",
                e,
            )
        })?;
        let subject = self
            .subjects
            .event_subject(&envelope.aggregate_id, envelope.event.event_type());
        let headers = self.headers(envelope).map_err(|name| {
            PublishError::new(
                PublishErrorKind::InvalidEvent,
                format!("header {name} would hold a CR or LF, which NATS headers cannot carry"),
            )
        })?;
        Ok(Outgoing {
            subject,
            headers,
            payload,
            event_id: envelope.event_id,
        })
    }

    /// The message's headers, or the name of the first one whose value NATS cannot
    /// carry (a CR or LF in it).
    fn headers(&self, envelope: &StreamingEventEnvelope) -> Result<HeaderMap, &'static str> {
        let mut headers = HeaderMap::new();
        let mut buf = uuid::Uuid::encode_buffer();
        let id = envelope
            .event_id
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut buf);
        headers.insert(header::NATS_MESSAGE_ID, HeaderValue::from(&*id));
        let mut refused = None;
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
            |name, value| match value.parse::<HeaderValue>() {
                // Static names: no validation or allocation per header name.
                Ok(value) => headers.insert(HeaderName::from_static(name), value),
                Err(_) => {
                    refused.get_or_insert(name);
                }
            },
        );
        match refused {
            None => Ok(headers),
            Some(name) => Err(name),
        }
    }
}

/// The kind and message of a publish to `subject` that failed for good after
/// `attempts` (`captured`: the configured stream captures the subject).
fn publish_failure(
    kind: NatsKind,
    subject: &str,
    captured: bool,
    attempts: u32,
) -> (PublishErrorKind, String) {
    let tries = if attempts == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{attempts} attempts")
    };
    match kind {
        NatsKind::WrongLastSequence => (PublishErrorKind::Conflict, "version conflict".into()),
        NatsKind::MaxPayloadExceeded => (
            PublishErrorKind::PayloadTooLarge,
            format!("event on {subject} is larger than the server's max_payload"),
        ),
        NatsKind::StreamNotFound if captured => (
            PublishErrorKind::Unavailable,
            format!(
                "the stream capturing {subject} did not answer after {tries} (a leader election or a restart); publishing again is safe"
            ),
        ),
        NatsKind::StreamNotFound => (
            PublishErrorKind::NoStream,
            format!(
                "no stream captures subject {subject}: run StreamingClient::ensure, or check stream.subjects"
            ),
        ),
        NatsKind::TimedOut => (
            PublishErrorKind::TimedOut,
            format!("no publish ack for {subject} after {tries}; publishing again is safe"),
        ),
        NatsKind::BrokenPipe | NatsKind::MaxAckPending => (
            PublishErrorKind::Transport,
            format!("publish to {subject} failed after {tries}"),
        ),
        _ => (
            PublishErrorKind::Rejected,
            format!("the server rejected the publish to {subject}"),
        ),
    }
}

/// An envelope and its message, built (or why it cannot be sent).
type Built = (StreamingEventEnvelope, Result<Outgoing, PublishError>);

/// Envelopes per chunk handed to `publish_all`'s builder task.
const BUILD_CHUNK: usize = 32;
/// Chunks the builder may be ahead of the sending.
const BUILD_AHEAD: usize = 4;
/// The size of a buffer the builder writes bodies into: a chunk of typical bodies.
const BODY_BUFFER: usize = 32 * 1024;
/// The spare room under which a body starts a fresh buffer (a body larger than what is
/// left grows the buffer while it is written).
const BODY_ROOM: usize = 2 * 1024;

/// The envelope with the caller's trace context, taken on the caller's task (the
/// builder task has another current span).
fn traced(envelope: StreamingEventEnvelope) -> StreamingEventEnvelope {
    #[cfg(feature = "opentelemetry")]
    if let Some(with_trace) = crate::otel::with_current_trace(&envelope) {
        return with_trace;
    }
    envelope
}

/// Failures that leave the outcome unknown or are caused by a passing condition: retried
/// with the same `Nats-Msg-Id`, so a stored first attempt turns the retry into a duplicate.
fn retryable_kind(kind: NatsKind) -> bool {
    matches!(
        kind,
        NatsKind::TimedOut | NatsKind::BrokenPipe | NatsKind::MaxAckPending
    )
}

/// JetStream API error codes an append acts on.
const API_WRONG_LAST_SEQUENCE: u64 = 10071;
const API_BATCH_INCOMPLETE: u64 = 10176;
const API_BATCH_DUPLICATE_MESSAGE_ID: u64 = 10201;
const API_BATCH_TOO_MANY_INFLIGHT: u64 = 10210;

/// Why one append attempt stored nothing new (as far as its answer says).
enum AppendFailure {
    /// The server refused the expectation, or holds the ids already: the events stored
    /// there may be these very events.
    Refused(String),
    /// The outcome is unknown or the condition passes: worth another attempt.
    Retry(RetryCause),
    /// No retry helps.
    Fatal(PublishError),
}

/// What made an append attempt worth retrying; it becomes the error once attempts run out.
enum RetryCause {
    Publish {
        error: jetstream::context::PublishError,
        subject: String,
    },
    Batch {
        kind: PublishErrorKind,
        what: String,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The events stored at the expected version could not be read to compare ids.
    Verify(StreamingError),
}

impl fmt::Display for RetryCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryCause::Publish { error, .. } => write!(f, "{error}"),
            RetryCause::Batch { what, .. } => f.write_str(what),
            RetryCause::Verify(e) => write!(f, "{e}"),
        }
    }
}

impl RetryCause {
    fn into_error(self, publisher: &Publisher, attempts: u32) -> PublishError {
        let tries = if attempts == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{attempts} attempts")
        };
        const SAFE: &str = "appending the same events with the same expected version again is safe";
        match self {
            RetryCause::Publish { error, subject } => {
                let mut e = publisher.classify_now(error, &subject, attempts);
                if e.is_transient() {
                    e.message = format!(
                        "append to {subject} failed after {tries}, the outcome is unknown; {SAFE}"
                    );
                }
                e
            }
            RetryCause::Batch { kind, what, source } => PublishError {
                source,
                ..PublishError::new(kind, format!("{what}, after {tries}; {SAFE}"))
            },
            RetryCause::Verify(e) => PublishError::with_source(
                PublishErrorKind::Transport,
                format!(
                    "append refused after {tries}, and the stored events could not be read to tell an earlier attempt of this append from a conflict; {SAFE}"
                ),
                e,
            ),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_publish_is_told_by_what_the_client_saw() {
        let s = "person.events.p.created";
        let kind = |k, captured, attempts| publish_failure(k, s, captured, attempts);
        assert_eq!(
            kind(NatsKind::WrongLastSequence, true, 1).0,
            PublishErrorKind::Conflict
        );
        assert_eq!(
            kind(NatsKind::MaxPayloadExceeded, true, 1).0,
            PublishErrorKind::PayloadTooLarge
        );
        let (k, m) = kind(NatsKind::StreamNotFound, true, 3);
        assert_eq!(k, PublishErrorKind::Unavailable);
        assert!(m.contains("after 3 attempts"), "{m}");
        let (k, m) = kind(NatsKind::StreamNotFound, false, 3);
        assert_eq!(k, PublishErrorKind::NoStream);
        assert!(
            m.contains("no stream captures subject person.events.p.created"),
            "{m}"
        );
        let (k, m) = kind(NatsKind::TimedOut, true, 1);
        assert_eq!(k, PublishErrorKind::TimedOut);
        assert!(m.contains("after 1 attempt;"), "{m}");
        for k in [NatsKind::BrokenPipe, NatsKind::MaxAckPending] {
            let (kind, m) = kind(k, true, 2);
            assert_eq!(kind, PublishErrorKind::Transport, "{k:?}");
            assert!(m.ends_with("failed after 2 attempts"), "{m}");
        }
        for k in [NatsKind::WrongLastMessageId, NatsKind::Other] {
            assert_eq!(kind(k, true, 1).0, PublishErrorKind::Rejected, "{k:?}");
        }
    }

    #[test]
    fn a_retry_cause_says_what_failed() {
        let batch = RetryCause::Batch {
            kind: PublishErrorKind::TimedOut,
            what: "atomic append of 3 events: no reply from the server".into(),
            source: None,
        };
        assert_eq!(
            batch.to_string(),
            "atomic append of 3 events: no reply from the server"
        );
        let verify = RetryCause::Verify(StreamingError::new(
            crate::StreamingErrorKind::TimedOut,
            "cannot read the events of person p",
        ));
        assert!(
            verify
                .to_string()
                .contains("cannot read the events of person p"),
            "{verify}"
        );
    }
}
