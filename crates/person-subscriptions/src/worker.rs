//! The async shell of one handler on one durable consumer. The decisions are the
//! delivery core's (`person_delivery::Core`); this file performs its actions against
//! NATS and the handler and turns what happens into its inputs. It holds no decision
//! of its own beyond how to do each action.

// The driver's maps are hashed on every message: foldhash, not SipHash.
use foldhash::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use chrono::Utc;
use futures::future::{AbortHandle, BoxFuture, abortable};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use person_delivery::{Action, Arrival, CallResult, Cause, Core, Kind, Notice, Recovery};
use person_events::codec::DecodeError;
use person_events::subject::{person_of_subject, subject_within};
use person_events::{PersonId, StreamingEventEnvelope};
use person_legacy_compat::{Origin, RawMessage, decode_message};
use person_metadata::headers::HeaderScan;
use person_retry::{Attempt, BreakerState, DeadLetter, DeadLetterSink, ErrorClass};
use person_streaming::{ConsumerSettings, DeadLetterQueue};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::handler::StreamingEventHandler;
use crate::options::{DeadLetterPolicy, SubscriptionOptions};
use crate::stats::Counters;

/// A fetched message and what the shell knows about it.
struct Held {
    msg: Arc<jetstream::Message>,
    seq: u64,
    delivered: u64,
    person: Option<PersonId>,
    body: Body,
    /// The last handler error, for the dead letter's reason.
    last_error: Option<(String, ErrorClass)>,
}

/// The decoded payload. The envelope is moved into the handler call when only one
/// attempt is made; the rare paths that need it again decode the payload again.
enum Body {
    /// Boxed: a held message moves through maps, and this keeps it small.
    Event(Box<StreamingEventEnvelope>),
    /// Cannot be handed to the handler; the reason goes into the dead letter.
    Rejected(Rejected),
    HandedOver,
}

impl Held {
    /// The envelope, decoded again if it was handed to the handler already.
    fn envelope(&self) -> Option<std::borrow::Cow<'_, StreamingEventEnvelope>> {
        match &self.body {
            Body::Event(env) => Some(std::borrow::Cow::Borrowed(env)),
            Body::Rejected(_) => None,
            Body::HandedOver => {
                decode_message(&raw_message(&self.msg, &scan_headers(&self.msg), self.seq))
                    .ok()
                    .map(|d| std::borrow::Cow::Owned(d.envelope))
            }
        }
    }

    /// How this message is named in the reason of letters parked behind it.
    fn label(&self) -> String {
        match self.envelope() {
            Some(env) => env.event_id.to_string(),
            None => format!("stream sequence {}", self.seq),
        }
    }
}

/// Why a message cannot be handed to the handler. Its Display is the dead letter's
/// reason, starting with a stable label: `oversized`, `undecodable` or `bad headers`.
enum Rejected {
    /// The body is larger than `max_message_bytes`.
    Oversized { size: usize, limit: usize },
    /// The body (or its content type) cannot be decoded.
    Undecodable(DecodeError),
    /// A current envelope without its CloudEvents headers, or with headers that
    /// contradict the body.
    BadHeaders(String),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Oversized { size, limit } => write!(
                f,
                "oversized: the body is {size} bytes, more than max_message_bytes ({limit})"
            ),
            Rejected::Undecodable(e) => write!(f, "undecodable: {e}"),
            Rejected::BadHeaders(detail) => write!(f, "bad headers: {detail}"),
        }
    }
}

/// One pass over a fetched message's headers (none: an empty scan).
fn scan_headers(msg: &jetstream::Message) -> HeaderScan<'_> {
    msg.headers
        .as_ref()
        .map(|h| {
            HeaderScan::new(h.iter().flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (<_ as AsRef<str>>::as_ref(name), v.as_str()))
            }))
        })
        .unwrap_or_default()
}

/// Checks the CloudEvents headers of a current envelope: present, well-formed, and
/// naming the same event as the body.
fn check_headers(scan: &HeaderScan<'_>, envelope: &StreamingEventEnvelope) -> Result<(), Rejected> {
    let id = scan
        .check()
        .map_err(|e| Rejected::BadHeaders(e.to_string()))?;
    if id != envelope.event_id {
        return Err(Rejected::BadHeaders(format!(
            "ce-id {id} is not the body's event_id {}",
            envelope.event_id
        )));
    }
    Ok(())
}

/// What the decoder needs of a fetched message.
fn raw_message<'a>(msg: &'a jetstream::Message, scan: &HeaderScan<'a>, seq: u64) -> RawMessage<'a> {
    RawMessage {
        subject: Some(msg.subject.as_str()),
        payload: &msg.payload,
        content_type: scan.content_type(),
        stream_sequence: Some(seq),
    }
}

/// What a background operation (handler call, dead-letter store, parked check)
/// reports back to the driver.
enum Done {
    Call {
        seq: u64,
        result: Result<Result<(), crate::HandlerError>, String>,
    },
    Stored {
        seq: u64,
        stored: bool,
    },
    Parked {
        person: PersonId,
        parked: bool,
        /// What the person is parked behind, when this process did not know it.
        blocker: Option<String>,
    },
    /// Whether the consumer is paused on the server, and for how long still.
    Paused(Option<Duration>),
    /// A call not made: past this instance's lease on the partition (in a group).
    NotRun {
        seq: u64,
    },
    /// An aborted operation; nothing to report.
    Aborted,
}

type Batch = Pin<Box<dyn Stream<Item = Result<jetstream::Message, String>> + Send>>;
type Opening = BoxFuture<'static, Result<(consumer::PullConsumer, PullLimits, Batch), PullError>>;

/// Why a pull could not be made.
enum PullError {
    /// The consumer was deleted (and is not to be recreated).
    Deleted,
    Other(String),
}

/// What opening the consumer found.
enum Opened {
    Ready(Box<consumer::PullConsumer>, PullLimits, Recovery),
    /// It no longer exists, and recreating it was not asked for.
    Deleted,
}

/// The consumer's own bounds on one pull request.
#[derive(Debug, Clone, Copy, Default)]
struct PullLimits {
    max_batch: Option<usize>,
    max_bytes: Option<usize>,
}

/// `open_consumer(true)` creates a missing consumer, so it is never `Deleted`.
fn unreachable_deleted() -> ! {
    unreachable!("a consumer opened for starting is created when missing")
}

/// The outstanding pull: being sent, or delivering.
enum Pull {
    Opening(Opening),
    Streaming(Batch),
}

pub(crate) struct Worker {
    pub(crate) client: person_streaming::StreamingClient,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: String,
    pub(crate) settings: ConsumerSettings,
    pub(crate) handler: Arc<dyn StreamingEventHandler>,
    pub(crate) options: SubscriptionOptions,
    pub(crate) sink: Arc<dyn DeadLetterSink>,
    /// The DLQ stream, when it is the sink: where parking is read from.
    pub(crate) dlq: Option<DeadLetterQueue>,
    pub(crate) counters: Arc<Counters>,
    breaker: AtomicU8,
    /// Why the consumer stopped on its own (it was deleted).
    failure: std::sync::Mutex<Option<crate::SubscriptionError>>,
    /// `Some(grace)` once shutdown is asked for.
    stop: watch::Sender<Option<Duration>>,
    /// Called when the breaker opens: in a group, pauses every instance.
    pub(crate) on_breaker_open: std::sync::OnceLock<BreakerHook>,
    /// In a group: until when this instance's lease on the partition lets it call.
    pub(crate) fence: std::sync::OnceLock<Arc<Fence>>,
    /// In a group: the instance's budget of handler calls, shared by the partitions it
    /// handles, so `concurrency` bounds the instance and not each partition.
    pub(crate) permits: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
    /// In a group: the consumer whose dead letters this one works on, when it is not
    /// itself (a partition's replay consumer works on the partition's letters).
    pub(crate) letters_of: std::sync::OnceLock<String>,
    /// In a group: per-person locks shared with the other consumer of the partition
    /// (its events and its replays), so one person is never in two calls at once.
    pub(crate) person_locks: std::sync::OnceLock<Arc<PersonLocks>>,
    /// `[P.]person.replay`: where the replays of every consumer are.
    replay_prefix: Arc<str>,
}

/// One lock per person with a call in flight, shared by the consumers of a partition.
#[derive(Debug, Default)]
pub(crate) struct PersonLocks {
    locks: std::sync::Mutex<HashMap<PersonId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a person's lock; dropping it frees the entry when nobody else waits.
pub(crate) struct PersonGuard {
    locks: Arc<PersonLocks>,
    person: PersonId,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl PersonLocks {
    pub(crate) async fn lock(self: &Arc<Self>, person: PersonId) -> PersonGuard {
        let lock = {
            let mut map = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(person).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        PersonGuard {
            locks: self.clone(),
            person,
            lock,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

impl Drop for PersonGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self
            .locks
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's reference and ours: nobody else holds or waits for it.
        if map
            .get(&self.person)
            .is_some_and(|l| Arc::ptr_eq(l, &self.lock) && Arc::strong_count(l) == 2)
        {
            map.remove(&self.person);
        }
    }
}

/// A deadline shared by a group member and its partition's workers: no handler call
/// starts after it, whatever the group's own loop is doing.
#[derive(Debug)]
pub(crate) struct Fence {
    origin: Instant,
    /// Nanoseconds after `origin`.
    until: std::sync::atomic::AtomicU64,
}

impl Fence {
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            until: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Moves the deadline to `until` after the origin.
    pub(crate) fn set(&self, until: Duration) {
        let nanos = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.until.store(nanos, Ordering::Release);
    }

    /// Whether a call may start now.
    pub(crate) fn allows(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.until.load(Ordering::Acquire)
    }
}

/// What a worker calls when its breaker opens.
pub(crate) type BreakerHook = Arc<dyn Fn() + Send + Sync>;

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: person_streaming::StreamingClient,
        js: jetstream::Context,
        stream: String,
        settings: ConsumerSettings,
        handler: Arc<dyn StreamingEventHandler>,
        options: SubscriptionOptions,
        sink: Arc<dyn DeadLetterSink>,
        dlq: Option<DeadLetterQueue>,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        let replay_prefix = client.config().subjects().replay_prefix().into();
        Arc::new(Self {
            replay_prefix,
            client,
            js,
            stream,
            settings,
            handler,
            options,
            sink,
            dlq,
            counters,
            breaker: AtomicU8::new(0),
            failure: std::sync::Mutex::new(None),
            stop: watch::channel(None).0,
            on_breaker_open: std::sync::OnceLock::new(),
            fence: std::sync::OnceLock::new(),
            permits: std::sync::OnceLock::new(),
            letters_of: std::sync::OnceLock::new(),
            person_locks: std::sync::OnceLock::new(),
        })
    }

    fn consumer_name(&self) -> &str {
        &self.settings.durable_name
    }

    /// Whether this consumer handles a message on `subject`. Its durable's filter on
    /// the server can be wider than its configured filters, bringing the replays of
    /// other consumers too ([`StreamingConfig::wire_filters`]); every other message
    /// is selected by the server already.
    ///
    /// [`StreamingConfig::wire_filters`]: person_streaming::StreamingConfig::wire_filters
    fn selects(&self, subject: &str) -> bool {
        let under_replays = subject
            .strip_prefix(&*self.replay_prefix)
            .is_some_and(|rest| rest.starts_with('.'));
        !under_replays
            || self
                .settings
                .filter_subjects
                .iter()
                .any(|f| subject_within(subject, f))
    }

    /// The consumer its dead letters are recorded under and read for.
    fn letters_name(&self) -> &str {
        self.letters_of
            .get()
            .map_or(&self.settings.durable_name, String::as_str)
    }

    /// The breaker's state, as the core last reported it.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        match self.breaker.load(Ordering::Relaxed) {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Asks the driver to stop, letting running calls finish within `grace`.
    pub(crate) fn request_stop(&self, grace: Duration) {
        self.stop.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(grace);
                true
            } else {
                false
            }
        });
    }

    /// Whether shutdown was asked for.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Resolves once shutdown is asked for.
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(Option::is_some).await;
    }

    fn core_config(&self) -> person_delivery::Config {
        let mut c =
            person_delivery::Config::new(self.settings.retry.clone(), self.settings.ack_wait());
        c.max_in_hand = self.options.max_in_hand;
        c.concurrency = self.options.concurrency;
        c.pull_batch = (self.options.max_in_hand / 4).max(1);
        c.pull_expiry = self.options.fetch_expiry;
        c.max_deliver = u64::try_from(self.settings.max_deliver).unwrap_or(1).max(1);
        c.in_process_attempts = self.options.in_process_attempts;
        c.breaker = self.options.breaker.clone();
        c.park = self.options.dead_letter_policy == DeadLetterPolicy::Park;
        // Jitter only needs to differ between instances.
        c.seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        c
    }

    /// Opens the durable consumer. At start (`starting`) it is ensured as `ensure()`
    /// does: created if missing, otherwise only the fields the configuration manages are
    /// applied, and nothing is sent when they match. Later (after a failed pull) it is
    /// opened as it is, never changed: a missing consumer is `Opened::Deleted`, unless
    /// the user opted in to recreating it.
    async fn open_consumer(&self, starting: bool) -> Result<Opened, String> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| format!("cannot open stream {}: {e}", self.stream))?;
        let ensure = |what: &'static str| async move {
            self.client
                .ensure_consumer(&self.settings)
                .await
                .map_err(|e| format!("cannot {what} consumer {}: {e}", self.consumer_name()))
        };
        if starting {
            ensure("ensure").await?;
        } else {
            match stream.consumer_info(self.consumer_name()).await {
                Ok(_) => {}
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
                {
                    if !self.options.recreate_deleted_consumer {
                        return Ok(Opened::Deleted);
                    }
                    tracing::error!(
                        consumer = self.consumer_name(),
                        "the consumer was deleted; recreating it as configured (recreate_deleted_consumer): it delivers from its deliver policy again"
                    );
                    ensure("recreate").await?;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot read consumer {}: {e}",
                        self.consumer_name()
                    ));
                }
            }
        }
        let mut c: consumer::PullConsumer = stream
            .get_consumer(self.consumer_name())
            .await
            .map_err(|e| format!("cannot open consumer {}: {e}", self.consumer_name()))?;
        let info = c
            .info()
            .await
            .map_err(|e| format!("cannot read consumer {}: {e}", self.consumer_name()))?;
        let limits = PullLimits {
            max_batch: usize::try_from(info.config.max_batch)
                .ok()
                .filter(|n| *n > 0),
            max_bytes: usize::try_from(info.config.max_bytes)
                .ok()
                .filter(|n| *n > 0),
        };
        let recovery = Recovery {
            delivered_up_to: info.delivered.stream_sequence,
            outstanding: u64::try_from(info.num_ack_pending).unwrap_or(0),
        };
        Ok(Opened::Ready(Box::new(c), limits, recovery))
    }

    /// Opens the consumer (creating it if missing), retrying until it works or
    /// shutdown is asked for.
    async fn start(&self) -> Option<(consumer::PullConsumer, PullLimits, Recovery)> {
        let mut stop = self.stop.subscribe();
        let mut failures = 0u32;
        loop {
            if stop.borrow().is_some() {
                return None;
            }
            match self.open_consumer(true).await {
                Ok(Opened::Ready(c, limits, recovery)) => return Some((*c, limits, recovery)),
                Ok(Opened::Deleted) => unreachable_deleted(),
                Err(e) => {
                    failures += 1;
                    Counters::add(&self.counters.reconnects);
                    tracing::warn!(consumer = self.consumer_name(), error = %e, "consumer unavailable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(reconnect_delay(failures)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// The error this consumer stopped with, if it stopped on its own.
    pub(crate) fn failure(&self) -> Option<crate::SubscriptionError> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Who is parked already: the people with dead letters for this consumer.
    async fn parked_at_start(&self) -> Vec<PersonId> {
        let Some(dlq) = &self.dlq else {
            return Vec::new();
        };
        if self.options.dead_letter_policy != DeadLetterPolicy::Park {
            return Vec::new();
        }
        match dlq.parked_people(self.letters_name()).await {
            Ok(people) => people.iter().filter_map(|p| p.parse().ok()).collect(),
            Err(e) => {
                tracing::warn!(consumer = self.consumer_name(), error = %e, "cannot read parked people from the DLQ; each person's next event is checked instead");
                Vec::new()
            }
        }
    }

    /// The driver: runs until shutdown completes.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let Some((consumer, limits, recovery)) = self.start().await else {
            return;
        };
        let parked = self.parked_at_start().await;
        let origin = Instant::now();
        let now = move || origin.elapsed();
        let mut config = self.core_config();
        if let Some(n) = limits.max_batch {
            config.max_pull = n;
        }
        let mut core: Core<PersonId> = Core::new(config, parked, recovery, now());
        if recovery.outstanding > 0 {
            tracing::info!(
                consumer = self.consumer_name(),
                outstanding = recovery.outstanding,
                "gathering what the consumer had outstanding before handling anything"
            );
        }
        let mut d = Driver {
            w: &self,
            consumer: Some(consumer),
            limits,
            pull_failures: 0,
            held: HashMap::default(),
            ops: FuturesUnordered::new(),
            ended: Vec::new(),
            aborts: HashMap::default(),
            pull: None,
            stopping: false,
            blockers: HashMap::default(),
            pending_blockers: HashMap::default(),
            metrics: crate::metrics::WorkerMetrics::new(self.consumer_name(), self.handler.name()),
            attempts: std::collections::BTreeMap::new(),
            attempts_cap: usize::try_from(self.settings.max_ack_pending)
                .unwrap_or(0)
                .max(1024),
            started: HashMap::default(),
            pull_got: 0,
            checking_pause: false,
        };
        // One timer, moved only when the core's next wake-up changes.
        let timer = tokio::time::sleep_until(origin);
        tokio::pin!(timer);
        let mut armed: Option<Duration> = None;
        loop {
            d.act(&mut core, &now).await;
            self.publish(&core, &mut d.metrics);
            if core.is_stopped() {
                break;
            }
            let wake = core.poll_timeout();
            if wake != armed {
                armed = wake;
                if let Some(t) = wake {
                    timer.as_mut().reset(origin + t);
                }
            }
            tokio::select! {
                biased;
                Some(done) = d.ops.next(), if !d.ops.is_empty() => {
                    // Each result is acted on before the next one is taken, so the call
                    // it frees starts at once rather than after the whole batch of
                    // results (at a timer tick, every call may end together).
                    let mut next = Some(done);
                    while let Some(done) = next {
                        d.finished(&mut core, done, now());
                        d.act(&mut core, &now).await;
                        next = d.ops.next().now_or_never().flatten();
                    }
                }
                item = next_pulled(&mut d.pull), if d.pull.is_some() => d.pulled(&mut core, item, now()),
                changed = stop.changed(), if !d.stopping => {
                    d.stopping = true;
                    let grace = if changed.is_ok() { (*stop.borrow()).unwrap_or_default() } else { Duration::ZERO };
                    core.on_shutdown(now(), grace);
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    core.on_timeout(now());
                }
            }
        }
        // Every ack and NAK sent reaches the server before the next start.
        let _ = self.js.client().flush().await;
    }

    fn publish(&self, core: &Core<PersonId>, metrics: &mut crate::metrics::WorkerMetrics) {
        let c = core.counts();
        metrics.publish(
            &c,
            crate::metrics::Gauges {
                in_hand: core.in_hand(),
                in_flight: core.in_flight(),
                waiting_lanes: core.waiting_lanes(),
                parked_people: core.parked_people(),
                lag: self.counters.lag.load(Ordering::Relaxed),
                breaker: core.breaker_state(),
            },
        );
        let s = &self.counters;
        let set = |a: &std::sync::atomic::AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&s.processed, c.processed);
        set(&s.retried, c.retried);
        set(&s.dead_lettered, c.dead_lettered);
        set(&s.parked, c.parked);
        set(&s.breaker_transitions, c.breaker_transitions);
        set(&s.in_flight, core.in_flight() as u64);
        set(&s.in_hand, core.in_hand() as u64);
        set(&s.waiting_lanes, core.waiting_lanes() as u64);
        set(&s.parked_people, core.parked_people() as u64);
        let b = match core.breaker_state() {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            _ => 2,
        };
        self.breaker.store(b, Ordering::Relaxed);
    }

    /// Size check, decode (upcasting), header check: the envelope, or why not.
    fn decode(
        &self,
        msg: &jetstream::Message,
        seq: u64,
    ) -> Result<StreamingEventEnvelope, Rejected> {
        let limit = self.options.max_message_bytes;
        if msg.payload.len() > limit {
            return Err(Rejected::Oversized {
                size: msg.payload.len(),
                limit,
            });
        }
        let scan = scan_headers(msg);
        let decoded =
            decode_message(&raw_message(msg, &scan, seq)).map_err(Rejected::Undecodable)?;
        if self.options.require_headers && decoded.origin == Origin::Current {
            check_headers(&scan, &decoded.envelope)?;
        }
        Ok(decoded.envelope)
    }

    fn dead_letter(&self, held: &Held, cause: Cause, blocker: Option<&str>) -> DeadLetter {
        let (reason, class) = match cause {
            Cause::Rejected => match &held.body {
                Body::Rejected(r) => (r.to_string(), ErrorClass::Permanent),
                _ => ("undecodable".to_owned(), ErrorClass::Permanent),
            },
            Cause::Permanent => {
                let (e, class) = last_error(held);
                (format!("permanent failure: {e}"), class)
            }
            Cause::GaveUp { delivered } => {
                let (e, class) = last_error(held);
                (format!("gave up after {delivered} deliveries: {e}"), class)
            }
            Cause::Parked => (
                format!(
                    "{}{}",
                    person_streaming::BLOCKED_BY_PREFIX,
                    blocker.unwrap_or(UNKNOWN_BLOCKER)
                ),
                ErrorClass::Permanent,
            ),
            _ => ("dead-lettered".to_owned(), ErrorClass::Permanent),
        };
        let env = held.envelope();
        let env = env.as_deref();
        let headers: Vec<(String, String)> = held
            .msg
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .flat_map(|(n, vs)| vs.iter().map(move |v| (n.to_string(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let now = Utc::now();
        DeadLetter {
            subject: held.msg.subject.to_string(),
            stream: self.stream.clone(),
            stream_sequence: held.seq,
            payload: held.msg.payload.clone(),
            headers,
            reason,
            error_class: class,
            delivery_count: held.delivered,
            first_failure_at: now,
            last_failure_at: now,
            consumer: self.letters_name().to_owned(),
            handler: self.handler.name().to_owned(),
            metadata: env.map(|e| e.metadata().clone()),
            event_id: env.map(|e| e.event_id.to_string()),
            person_id: held.person.map(|p| p.to_string()),
            event_type: env.map(|e| e.event.event_type().to_owned()),
            payload_truncated: false,
            original_size: None,
            headers_truncated: false,
            attempts: Vec::new(),
        }
    }
}

/// The longest error message kept per attempt, in bytes (the last one is also the
/// letter's reason, kept whole).
const ATTEMPT_REASON_KEPT: usize = 1024;

/// `text`, cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The blocker named when a person was parked by an earlier process.
const UNKNOWN_BLOCKER: &str = "an earlier dead letter of this person";

/// The last handler error of a message, for its dead letter's reason.
fn last_error(held: &Held) -> (String, ErrorClass) {
    held.last_error
        .clone()
        .unwrap_or_else(|| ("unknown failure".to_owned(), ErrorClass::Transient))
}

/// The driver's I/O state: what is held, what runs, the outstanding pull.
struct Driver<'a> {
    w: &'a Arc<Worker>,
    consumer: Option<consumer::PullConsumer>,
    limits: PullLimits,
    pull_failures: u32,
    held: HashMap<u64, Held>,
    ops: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Results of calls that ended in their first poll, for the core.
    ended: Vec<Done>,
    aborts: HashMap<u64, AbortHandle>,
    pull: Option<Pull>,
    stopping: bool,
    /// The event each parked person is parked behind, as far as this process knows.
    blockers: HashMap<PersonId, String>,
    /// Dead letters being stored that will park their person: (person, label).
    pending_blockers: HashMap<u64, (PersonId, String)>,
    metrics: crate::metrics::WorkerMetrics,
    /// The failed attempts of each message not settled for good yet, by stream
    /// sequence, kept across its redeliveries to this process (at most
    /// `MAX_ATTEMPTS_KEPT` each, for at most `attempts_cap` messages).
    attempts: std::collections::BTreeMap<u64, Vec<Attempt>>,
    attempts_cap: usize,
    /// Running calls: when each started, and its event's timestamp.
    started: HashMap<u64, (Instant, Option<chrono::DateTime<Utc>>)>,
    /// Messages the outstanding pull brought so far.
    pull_got: u64,
    /// A check of whether the consumer is paused is on its way.
    checking_pause: bool,
}

impl Driver<'_> {
    /// Performs every action the core has, and feeds it the results of the calls that
    /// ended in their first poll, until it has nothing more to do.
    async fn act(&mut self, core: &mut Core<PersonId>, now: &impl Fn() -> Duration) {
        loop {
            while let Some(action) = core.poll_action() {
                self.perform(action).await;
            }
            if self.ended.is_empty() {
                return;
            }
            for done in std::mem::take(&mut self.ended) {
                self.finished(core, done, now());
            }
        }
    }

    async fn perform(&mut self, action: Action<PersonId>) {
        match action {
            Action::Pull { max } => self.start_pull(max),
            Action::Run { seq, attempt } => {
                if let Some(call) = self.run(seq, attempt) {
                    self.start(call);
                }
            }
            Action::Ack { seq } => self.settle(seq, AckKind::Ack).await,
            Action::Nak { seq, delay } => {
                let delay = (!delay.is_zero()).then_some(delay);
                self.settle(seq, AckKind::Nak(delay)).await;
            }
            Action::Term { seq } => self.settle(seq, AckKind::Term).await,
            Action::Progress { seq } => {
                if let Some(h) = self.held.get(&seq) {
                    let _ = h.msg.ack_with(AckKind::Progress).await;
                }
            }
            Action::DeadLetter { seq, cause } => self.store(seq, cause),
            Action::CheckParked { person } => self.check_parked(person),
            Action::Abort { seq } => {
                if let Some(a) = self.aborts.remove(&seq) {
                    a.abort();
                }
            }
            Action::Notice(n) => self.notice(n),
            other => tracing::debug!(?other, "unknown action ignored"),
        }
    }

    fn start_pull(&mut self, max: usize) {
        self.pull_got = 0;
        let consumer = self.consumer.clone();
        let known = self.limits;
        let w = self.w.clone();
        let expiry = w.options.fetch_expiry;
        let failures = self.pull_failures;
        let opening: Opening = Box::pin(async move {
            if failures > 0 {
                tokio::time::sleep(reconnect_delay(failures)).await;
            }
            let (c, limits) = match consumer {
                Some(c) => (c, known),
                None => match w.open_consumer(false).await {
                    Ok(Opened::Ready(c, limits, _)) => (*c, limits),
                    Ok(Opened::Deleted) => return Err(PullError::Deleted),
                    Err(e) => return Err(PullError::Other(e)),
                },
            };
            // A long poll: the request stays open on the server until it has brought
            // `max` messages or expires, so an event stored while it is open is
            // delivered at once instead of waiting for the next request's round trip
            // (a `no_wait` fetch ends as soon as the consumer has nothing pending). The
            // consumer's own limits bound each request (a larger one is refused).
            let mut request = c
                .batch()
                .max_messages(limits.max_batch.map_or(max, |b| max.min(b)))
                .expires(expiry);
            if let Some(bytes) = limits.max_bytes {
                request = request.max_bytes(bytes);
            }
            let batch = request
                .messages()
                .await
                .map_err(|e| PullError::Other(format!("pull failed: {e}")))?;
            let batch: Batch = Box::pin(batch.map(|r| r.map_err(|e| e.to_string())));
            Ok((c, limits, batch))
        });
        self.pull = Some(Pull::Opening(opening));
    }

    fn pulled(&mut self, core: &mut Core<PersonId>, item: Pulled, now: Duration) {
        let item = match item {
            Pulled::Opened(opened) => match *opened {
                Ok((c, limits, batch)) => {
                    self.consumer = Some(c);
                    self.limits = limits;
                    self.pull = Some(Pull::Streaming(batch));
                    return;
                }
                Err(PullError::Deleted) => {
                    self.pull = None;
                    let name = self.w.consumer_name().to_owned();
                    tracing::error!(
                        consumer = %name,
                        "the consumer was deleted: stopping it (it is not recreated, which would deliver its history again; set recreate_deleted_consumer to opt in, or recreate it with `person-stream setup`)"
                    );
                    *self
                        .w
                        .failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(crate::SubscriptionError::consumer_deleted(&name));
                    core.on_pull_done(now);
                    if !self.stopping {
                        self.stopping = true;
                        core.on_shutdown(now, Duration::ZERO);
                    }
                    return;
                }
                Err(PullError::Other(e)) => Pulled::Failed(e),
            },
            other => other,
        };
        match item {
            Pulled::Opened(_) => {}
            Pulled::Failed(e) => {
                self.pull = None;
                self.consumer = None;
                self.pull_failures += 1;
                Counters::add(&self.w.counters.reconnects);
                tracing::warn!(consumer = self.w.consumer_name(), error = %e, "pull failed; reopening the consumer");
                core.on_pull_done(now);
            }
            Pulled::Ended => {
                self.pull = None;
                core.on_pull_done(now);
                // An empty pull while people (or a recovery) wait for redeliveries:
                // the consumer may be paused on the server (another instance's
                // breaker, an operator), which the core must know so as not to give
                // up on them.
                if self.pull_got == 0
                    && (core.waiting_lanes() > 0 || core.recovering())
                    && !self.checking_pause
                {
                    self.check_paused();
                }
            }
            Pulled::Message(msg) => {
                self.pull_failures = 0;
                self.pull_got += 1;
                self.arrived(core, *msg, now);
            }
        }
    }

    fn arrived(&mut self, core: &mut Core<PersonId>, msg: jetstream::Message, now: Duration) {
        let Ok(info) = msg.info() else {
            return;
        };
        let (seq, delivered) = (
            info.stream_sequence,
            u64::try_from(info.delivered).unwrap_or(1),
        );
        self.w.counters.lag.store(info.pending, Ordering::Relaxed);
        if !self.w.selects(msg.subject.as_str()) {
            // Another consumer's replay, brought by the durable's wider filter on the
            // server (`StreamingConfig::wire_filters`): acknowledged, never handled.
            tracing::trace!(seq, subject = %msg.subject, "a replay for another consumer skipped");
            core.on_foreign(now, seq);
            self.ops.push(Box::pin(async move {
                if let Err(e) = msg.ack().await {
                    tracing::debug!(seq, error = %e, "could not acknowledge another consumer's replay; the server will redeliver it");
                }
                Done::Aborted
            }));
            return;
        }
        self.metrics.arrived(delivered);
        if let Some(h) = self.held.get_mut(&seq) {
            // A redelivery of a message held already: keep the newest copy.
            h.msg = Arc::new(msg);
            h.delivered = delivered;
            core.on_message(
                now,
                Arrival {
                    seq,
                    delivered,
                    person: h.person,
                    kind: Kind::Event,
                },
            );
            return;
        }
        let body = match self.w.decode(&msg, seq) {
            Ok(env) => Body::Event(Box::new(env)),
            Err(rejected) => Body::Rejected(rejected),
        };
        let person = match &body {
            Body::Event(env) => Some(env.aggregate_id),
            _ => person_of_subject(msg.subject.as_str()),
        };
        let replay = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get(person_streaming::REPLAY_OF_HEADER).is_some());
        let kind = match (&body, replay) {
            (Body::Rejected(_), _) => Kind::Rejected,
            (_, true) => Kind::Replay,
            _ => Kind::Event,
        };
        self.held.insert(
            seq,
            Held {
                msg: Arc::new(msg),
                seq,
                delivered,
                person,
                body,
                last_error: None,
            },
        );
        core.on_message(
            now,
            Arrival {
                seq,
                delivered,
                person,
                kind,
            },
        );
        // A message the core gave back at once (a full hand) is settled by its NAK.
    }

    /// The call of a message's handler, to be started.
    fn run(&mut self, seq: u64, attempt: u32) -> Option<BoxFuture<'static, Done>> {
        let w = self.w.clone();
        let held = self.held.get_mut(&seq)?;
        if w.fence.get().is_some_and(|f| !f.allows()) {
            // In a group, past this instance's lease on the partition: the call is not
            // made (another instance may own the person by now); the message goes back.
            self.ended.push(Done::NotRun { seq });
            return None;
        }
        // Taken before the envelope moves into the handler.
        let published_at = match &held.body {
            Body::Event(env) => Some(env.metadata().timestamp),
            _ => None,
        };
        self.started.insert(seq, (Instant::now(), published_at));
        let last = attempt >= w.options.in_process_attempts.max(1);
        let envelope = match std::mem::replace(&mut held.body, Body::HandedOver) {
            Body::Event(env) if last => Some(*env),
            Body::Event(env) => {
                let copy = (*env).clone();
                held.body = Body::Event(env);
                Some(copy)
            }
            other => {
                held.body = other;
                held.envelope().map(|e| e.into_owned())
            }
        };
        let span = tracing::info_span!(
            "person_event",
            event_id = tracing::field::Empty,
            person = ?held.person.map(|p| p.to_string()),
            consumer = %w.settings.durable_name,
            handler = %w.handler.name(),
            delivered = held.delivered,
            attempt,
        );
        #[cfg(feature = "opentelemetry")]
        crate::otel::continue_trace(
            &span,
            envelope.as_ref().map(|e| e.metadata()),
            held.msg.headers.as_ref(),
        );
        let person = held.person;
        let call = async move {
            let Some(envelope) = envelope else {
                return Done::Call {
                    seq,
                    result: Ok(Err(crate::HandlerError::permanent(
                        "the message could not be decoded again",
                    ))),
                };
            };
            tracing::Span::current().record("event_id", tracing::field::display(envelope.event_id));
            // In a group, a call waits for its person (the partition's other consumer
            // may be in a call of theirs) and for the instance's budget, and the
            // lease is checked again once it has both: the wait may have outlived it.
            let _person = match (w.person_locks.get(), person) {
                (Some(locks), Some(p)) => Some(locks.lock(p).await),
                _ => None,
            };
            let _permit = match w.permits.get() {
                Some(permits) => permits.clone().acquire_owned().await.ok(),
                None => None,
            };
            if w.fence.get().is_some_and(|f| !f.allows()) {
                return Done::NotRun { seq };
            }
            let timeout = w.options.handler_timeout;
            let handler = w.handler.clone();
            let call = AssertUnwindSafe(handler.handle_event(envelope)).catch_unwind();
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(panic)) => Err(panic_message(&*panic)),
                Err(_) => Ok(Err(crate::HandlerError::transient(format!(
                    "handler timed out after {timeout:?}"
                )))),
            };
            Done::Call { seq, result }
        }
        .instrument(span);
        Some(self.abortable(seq, call))
    }

    /// Polls a call once now, where the driver stands, rather than at the next turn of
    /// `ops`: behind every other result that is ready there (a whole timer tick's worth
    /// of them), so the call would start a batch late. One that ends in that poll (a
    /// handler with nothing to wait for) is fed back by [`Self::act`]; the others join
    /// `ops`, which polls a future it is given at once and so registers its own waker.
    fn start(&mut self, mut call: BoxFuture<'static, Done>) {
        match (&mut call).now_or_never() {
            Some(done) => self.ended.push(done),
            None => self.ops.push(call),
        }
    }

    /// Runs a store among the driver's operations (no task spawn per message); its
    /// result comes back through `ops`.
    fn spawn_op(&mut self, seq: u64, op: impl Future<Output = Done> + Send + 'static) {
        let op = self.abortable(seq, op);
        self.ops.push(op);
    }

    /// `op`, which an `Action::Abort` of `seq` ends (as `Done::Aborted`).
    fn abortable(
        &mut self,
        seq: u64,
        op: impl Future<Output = Done> + Send + 'static,
    ) -> BoxFuture<'static, Done> {
        let (op, handle) = abortable(op);
        self.aborts.insert(seq, handle);
        Box::pin(op.map(|r| r.unwrap_or(Done::Aborted)))
    }

    fn store(&mut self, seq: u64, cause: Cause) {
        let Some(held) = self.held.get(&seq) else {
            return;
        };
        let blocker = held.person.and_then(|p| self.blockers.get(&p).cloned());
        let mut letter = self.w.dead_letter(held, cause, blocker.as_deref());
        if let Some(attempts) = self.attempts.remove(&seq) {
            letter.attempts = attempts;
        } else if cause == Cause::Rejected {
            letter.attempts = vec![Attempt {
                at: letter.last_failure_at,
                delivery_count: letter.delivery_count,
                class: letter.error_class,
                reason: letter.reason.clone(),
            }];
        }
        if let Some(first) = letter.attempts.first() {
            letter.first_failure_at = first.at;
        }
        if cause != Cause::Parked
            && let Some(p) = held.person
        {
            self.pending_blockers.insert(seq, (p, held.label()));
        }
        let sink = self.w.sink.clone();
        let reason = letter.reason.clone();
        self.spawn_op(seq, async move {
            match sink.store(&letter).await {
                Ok(()) => {
                    tracing::warn!(seq, %reason, "dead-lettered");
                    Done::Stored { seq, stored: true }
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "cannot store the dead letter; the message will come back");
                    Done::Stored { seq, stored: false }
                }
            }
        });
    }

    fn check_paused(&mut self) {
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        self.checking_pause = true;
        self.ops.push(Box::pin(async move {
            let mut consumer = consumer;
            match consumer.info().await {
                Ok(info) => Done::Paused(
                    info.paused
                        .then(|| info.pause_remaining.unwrap_or_default()),
                ),
                Err(_) => Done::Paused(None),
            }
        }));
    }

    fn check_parked(&mut self, person: PersonId) {
        let w = self.w.clone();
        let known = self.blockers.contains_key(&person);
        let op = async move {
            let Some(dlq) = &w.dlq else {
                // A custom sink: parking lasts for this process.
                return Done::Parked {
                    person,
                    parked: true,
                    blocker: None,
                };
            };
            let parked = match dlq
                .holds_letters(w.letters_name(), &person.to_string())
                .await
            {
                Ok(parked) => parked,
                Err(e) => {
                    // Unsure: stay parked rather than apply an event out of order.
                    tracing::warn!(%person, error = %e, "cannot check the DLQ; the person stays parked");
                    true
                }
            };
            let blocker = if parked && !known {
                first_blocker(dlq, w.letters_name(), person).await
            } else {
                None
            };
            Done::Parked {
                person,
                parked,
                blocker,
            }
        };
        self.ops.push(Box::pin(op));
    }

    fn finished(&mut self, core: &mut Core<PersonId>, done: Done, now: Duration) {
        match done {
            Done::Call { seq, result } => {
                self.aborts.remove(&seq);
                if let Some((started, published_at)) = self.started.remove(&seq) {
                    let handled = matches!(result, Ok(Ok(())));
                    let since = published_at
                        .filter(|_| handled)
                        .and_then(|t| (Utc::now() - t).to_std().ok());
                    self.metrics.call_done(started.elapsed(), since);
                }
                let result = match result {
                    Ok(Ok(())) => CallResult::Ok,
                    Ok(Err(e)) => {
                        let class = e.class();
                        tracing::debug!(seq, error = %e, "handler failed");
                        self.failed(seq, e.to_string(), class);
                        CallResult::Failed(class)
                    }
                    Err(panic) => {
                        tracing::warn!(seq, panic = %panic, "handler panicked");
                        self.failed(
                            seq,
                            format!("handler panicked: {panic}"),
                            ErrorClass::Transient,
                        );
                        CallResult::Panicked
                    }
                };
                core.on_call_done(now, seq, result);
            }
            Done::Stored { seq, stored } => {
                self.aborts.remove(&seq);
                if let Some((person, label)) = self.pending_blockers.remove(&seq)
                    && stored
                {
                    self.blockers.entry(person).or_insert(label);
                }
                core.on_dead_letter_done(now, seq, stored);
            }
            Done::Parked {
                person,
                parked,
                blocker,
            } => {
                if !parked {
                    self.blockers.remove(&person);
                } else if let Some(b) = blocker {
                    self.blockers.entry(person).or_insert(b);
                }
                core.on_parked_checked(now, person, parked);
            }
            Done::NotRun { seq } => {
                self.aborts.remove(&seq);
                self.started.remove(&seq);
                tracing::debug!(
                    seq,
                    "not handled: this instance's lease on the partition ran out"
                );
                core.on_call_done(now, seq, CallResult::NotRun);
            }
            Done::Paused(remaining) => {
                self.checking_pause = false;
                if let Some(remaining) = remaining {
                    tracing::info!(
                        consumer = self.w.consumer_name(),
                        ?remaining,
                        "the consumer is paused on the server: redeliveries are waited for"
                    );
                    core.on_paused(now, remaining);
                }
            }
            Done::Aborted => {}
        }
    }

    /// Records a failed call of `seq`: its last error, and one more attempt.
    fn failed(&mut self, seq: u64, reason: String, class: ErrorClass) {
        let Some(h) = self.held.get_mut(&seq) else {
            return;
        };
        if !self.attempts.contains_key(&seq) && self.attempts.len() >= self.attempts_cap {
            // The oldest message's history goes first; its letter then starts later.
            self.attempts.pop_first();
        }
        Attempt::push_bounded(
            self.attempts.entry(seq).or_default(),
            Attempt {
                at: Utc::now(),
                delivery_count: h.delivered,
                class,
                reason: cut(&reason, ATTEMPT_REASON_KEPT),
            },
        );
        h.last_error = Some((reason, class));
    }

    async fn settle(&mut self, seq: u64, kind: AckKind) {
        let Some(h) = self.held.remove(&seq) else {
            return;
        };
        if !matches!(kind, AckKind::Nak(_)) {
            // Settled for good: acked or terminated (after its dead letter).
            self.attempts.remove(&seq);
        }
        // Fire-and-forget, like a raw consumer; the driver flushes the connection at
        // the end, so every ack sent reaches the server before the next start.
        if let Err(e) = h.msg.ack_with(kind).await {
            tracing::debug!(seq, error = %e, "could not settle a message; the server will redeliver it");
        }
    }

    fn notice(&self, n: Notice<PersonId>) {
        let consumer = self.w.consumer_name();
        match n {
            Notice::Overdue { person, seq } => tracing::warn!(
                consumer, %person, seq,
                "a redelivery is overdue: the person's later events wait for it"
            ),
            Notice::StoppedWaiting { person, seq } => tracing::warn!(
                consumer, %person, seq,
                "the redelivery never came (another instance took it, or it was deleted); the person's later events run"
            ),
            Notice::Breaker { from, to } => {
                if to == BreakerState::Open {
                    tracing::warn!(consumer, %from, %to, "circuit breaker opened: pulling paused");
                    if let Some(hook) = self.w.on_breaker_open.get() {
                        hook();
                    }
                } else {
                    tracing::info!(consumer, %from, %to, "circuit breaker changed state");
                }
            }
            Notice::Evicted { seq } => {
                tracing::debug!(
                    consumer,
                    seq,
                    "gave a message back to make room for a redelivery"
                )
            }
            Notice::DeadLetterFailed { seq } => {
                tracing::warn!(
                    consumer,
                    seq,
                    "dead letter not stored; the message comes back"
                )
            }
            _ => {}
        }
    }
}

enum Pulled {
    Opened(Box<Result<(consumer::PullConsumer, PullLimits, Batch), PullError>>),
    Message(Box<jetstream::Message>),
    Failed(String),
    Ended,
}

async fn next_pulled(pull: &mut Option<Pull>) -> Pulled {
    match pull {
        Some(Pull::Opening(f)) => Pulled::Opened(Box::new(f.await)),
        Some(Pull::Streaming(batch)) => match batch.next().await {
            Some(Ok(m)) => Pulled::Message(Box::new(m)),
            Some(Err(e)) => Pulled::Failed(e),
            None => Pulled::Ended,
        },
        None => std::future::pending().await,
    }
}

/// The event a person's oldest dead letter (for this consumer) names: the blocker
/// later letters are parked behind.
async fn first_blocker(dlq: &DeadLetterQueue, consumer: &str, person: PersonId) -> Option<String> {
    let filter = person_streaming::DeadLetterFilter {
        consumer: Some(consumer.to_owned()),
        person_id: Some(person.to_string()),
        ..Default::default()
    };
    let letters = dlq.list(&filter).await.ok()?;
    let first = letters.first()?;
    let l = &first.letter;
    Some(
        match l.reason.strip_prefix(person_streaming::BLOCKED_BY_PREFIX) {
            Some(label) => label.to_owned(),
            None => l
                .event_id
                .clone()
                .unwrap_or_else(|| format!("stream sequence {}", l.stream_sequence)),
        },
    )
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn reconnect_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(5))).min(Duration::from_secs(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_person_lock_excludes_the_same_person_only_and_frees_its_entry() {
        let locks = Arc::new(PersonLocks::default());
        let (a, b) = (PersonId::new(), PersonId::new());
        let first = locks.lock(a).await;
        // Another person goes ahead at once.
        let other = locks.lock(b).await;
        drop(other);
        // The same person waits until the first lets go.
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock(a).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the same person must wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released")
            .expect("no panic");
        assert_eq!(
            locks.len(),
            1,
            "the waiter's entry is kept while it holds it"
        );
        drop(second);
        assert_eq!(locks.len(), 0, "nobody holds or waits: no entry left");
    }
}
