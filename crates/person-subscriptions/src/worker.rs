//! One handler on one durable consumer: pull, decode, order per person, handle,
//! settle (ack / delayed NAK / dead letter + TERM), breaker, shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use chrono::Utc;
use futures::StreamExt;
use person_events::codec::DecodeError;
use person_events::subject::parse_event_subject;
use person_events::{PersonId, StreamingEventEnvelope};
use person_legacy_compat::{Origin, RawMessage, decode_message};
use person_retry::{
    BreakerState, CircuitBreaker, DeadLetter, DeadLetterSink, ErrorClass, RetryPolicy,
};
use person_streaming::ConsumerSettings;
use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::handler::StreamingEventHandler;
use crate::options::{DeadLetterPolicy, SubscriptionOptions};
use crate::stats::Counters;

/// A fetched message and what the runtime knows about it.
///
/// The message is shared (`Arc`): the lane keeps a handle on the running one, and the
/// progress ticker on the queued ones, without copying its headers.
struct Held {
    msg: Arc<jetstream::Message>,
    seq: u64,
    delivered: u64,
    body: Body,
}

/// The decoded payload. The envelope is moved into the handler call rather than copied;
/// the rare paths that need it afterwards (dead-lettering) decode the payload again.
enum Body {
    /// Boxed: a held message moves through queues, and this keeps it small.
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
            Body::HandedOver => decode_held(&self.msg, self.seq)
                .ok()
                .map(std::borrow::Cow::Owned),
        }
    }
}

/// How much of an oversized body its dead letter keeps. The whole body, base64 in a
/// JSON record, could exceed the server's `max_payload`: the record could never be
/// stored and the message would be NAKed forever.
const OVERSIZED_KEPT: usize = 64 * 1024;

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
                "oversized: the body is {size} bytes, more than max_message_bytes ({limit}); \
                 this record keeps its first {OVERSIZED_KEPT} bytes"
            ),
            Rejected::Undecodable(e) => write!(f, "undecodable: {e}"),
            Rejected::BadHeaders(detail) => write!(f, "bad headers: {detail}"),
        }
    }
}

/// Checks the CloudEvents headers of a current envelope: present, well-formed, and
/// naming the same event as the body.
fn check_headers(
    headers: Option<&async_nats::HeaderMap>,
    envelope: &StreamingEventEnvelope,
) -> Result<(), Rejected> {
    let pairs = headers.into_iter().flat_map(|h| {
        h.iter().flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (<_ as AsRef<str>>::as_ref(name), v.as_str()))
        })
    });
    let decoded = person_metadata::headers::decode_headers(pairs)
        .map_err(|e| Rejected::BadHeaders(e.to_string()))?;
    if decoded.id != envelope.event_id {
        return Err(Rejected::BadHeaders(format!(
            "ce-id {} is not the body's event_id {}",
            decoded.id, envelope.event_id
        )));
    }
    Ok(())
}

/// What the decoder needs of a fetched message.
fn raw_message(msg: &jetstream::Message, seq: u64) -> RawMessage<'_> {
    RawMessage {
        subject: Some(msg.subject.as_str()),
        payload: &msg.payload,
        content_type: msg
            .headers
            .as_ref()
            .and_then(|h| h.get(person_metadata::headers::CONTENT_TYPE))
            .map(|v| v.as_str()),
        stream_sequence: Some(seq),
    }
}

/// Decodes a message whose checks passed before (the envelope was handed over).
fn decode_held(msg: &jetstream::Message, seq: u64) -> Result<StreamingEventEnvelope, DecodeError> {
    decode_message(&raw_message(msg, seq)).map(|d| d.envelope)
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Held>,
    /// A runner is on this person, or the person is queued for one.
    running: bool,
    /// The message being handled now, with its stream sequence (to recognise its
    /// redelivery, and to NAK it on shutdown).
    current: Option<(u64, Arc<jetstream::Message>)>,
    /// An earlier event was NAKed and will be redelivered: nothing of this person runs
    /// before it.
    waiting_for: Option<u64>,
    /// An earlier event was dead-lettered; later ones are parked behind it.
    parked_behind: Option<String>,
}

/// Per-person lanes and the runners that work them. At most `concurrency` runner tasks
/// exist; a runner that finishes a person takes the next ready one instead of exiting,
/// so a message costs no task spawn and no wait for a concurrency slot.
#[derive(Default)]
struct Lanes {
    map: HashMap<PersonId, Lane>,
    /// People with work, waiting for a runner, oldest first.
    ready: VecDeque<PersonId>,
    /// Live runner tasks, by a local id (to abort them on shutdown).
    runners: HashMap<u64, AbortHandle>,
    next_runner: u64,
}

enum Outcome {
    Done,
    WaitFor(u64),
    DeadLettered(String),
    Released,
}

pub(crate) struct Worker {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: String,
    pub(crate) settings: ConsumerSettings,
    pub(crate) handler: Arc<dyn StreamingEventHandler>,
    pub(crate) options: SubscriptionOptions,
    pub(crate) sink: Arc<dyn DeadLetterSink>,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) counters: Arc<Counters>,
    lanes: Mutex<Lanes>,
    pub(crate) stopping: AtomicBool,
    settled: Notify,
    semaphore: Semaphore,
    retry: RetryPolicy,
    max_deliver: u64,
}

impl Worker {
    pub(crate) fn new(
        js: jetstream::Context,
        stream: String,
        settings: ConsumerSettings,
        handler: Arc<dyn StreamingEventHandler>,
        options: SubscriptionOptions,
        sink: Arc<dyn DeadLetterSink>,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        let breaker_counters = counters.clone();
        let breaker = CircuitBreaker::builder(options.breaker.clone())
            .name(handler.name().to_owned())
            .on_transition(move |t| {
                Counters::add(&breaker_counters.breaker_transitions);
                tracing::info!(transition = %t, "circuit breaker changed state");
            })
            .build();
        let retry = settings.retry.clone();
        let max_deliver = u64::try_from(settings.max_deliver).unwrap_or(1).max(1);
        Arc::new(Self {
            semaphore: Semaphore::new(options.concurrency.max(1)),
            js,
            stream,
            settings,
            handler,
            options,
            sink,
            breaker,
            counters,
            lanes: Mutex::new(Lanes::default()),
            stopping: AtomicBool::new(false),
            settled: Notify::new(),
            retry,
            max_deliver,
        })
    }

    fn consumer_name(&self) -> &str {
        &self.settings.durable_name
    }

    async fn open_consumer(&self) -> Result<consumer::PullConsumer, String> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| format!("cannot open stream {}: {e}", self.stream))?;
        stream
            .create_consumer(person_streaming::consumer_config(&self.settings))
            .await
            .map_err(|e| format!("cannot create consumer {}: {e}", self.consumer_name()))
    }

    /// The pull loop. Returns when stopping.
    pub(crate) async fn run(self: Arc<Self>) {
        let ticker = tokio::spawn(self.clone().progress_ticker());
        let mut consumer = None;
        let mut failures = 0u32;
        while !self.stopping.load(Ordering::Acquire) {
            // While the breaker is open nothing is pulled: an outage must not burn
            // delivery attempts or fill the DLQ.
            if self.breaker.state() == BreakerState::Open {
                let mut watch = self.breaker.subscribe();
                let _ = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
                continue;
            }
            let in_hand = self.counters.in_hand.load(Ordering::Relaxed) as usize;
            let mut room = self.options.max_in_hand.saturating_sub(in_hand);
            if room == 0 {
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), self.settled.notified()).await;
                continue;
            }
            // Pull in sizeable batches: each pull is a round trip. Wait a moment for room
            // to grow, then pull whatever room there is (held messages may be waiting for
            // a redelivery that only a pull brings in).
            let batch = (self.options.max_in_hand / 4).max(1);
            if room < batch && in_hand > 0 {
                let _ =
                    tokio::time::timeout(Duration::from_millis(2), self.settled.notified()).await;
                let in_hand = self.counters.in_hand.load(Ordering::Relaxed) as usize;
                room = self.options.max_in_hand.saturating_sub(in_hand);
                if room == 0 {
                    continue;
                }
            }
            let c = match &consumer {
                Some(c) => c,
                None => match self.open_consumer().await {
                    Ok(c) => {
                        failures = 0;
                        consumer.insert(c)
                    }
                    Err(e) => {
                        failures += 1;
                        Counters::add(&self.counters.reconnects);
                        tracing::warn!(consumer = self.consumer_name(), error = %e, "consumer unavailable; retrying");
                        tokio::time::sleep(reconnect_delay(failures)).await;
                        continue;
                    }
                },
            };
            let batch = c
                .fetch()
                .max_messages(room)
                .expires(self.options.fetch_expiry)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(consumer = self.consumer_name(), error = %e, "pull failed; recreating the consumer");
                    consumer = None;
                    continue;
                }
            };
            while let Some(item) = batch.next().await {
                match item {
                    Ok(msg) => self.dispatch(msg),
                    Err(e) => {
                        tracing::debug!(consumer = self.consumer_name(), error = %e, "pull interrupted; recreating the consumer");
                        consumer = None;
                        break;
                    }
                }
            }
        }
        ticker.abort();
    }

    fn dispatch(self: &Arc<Self>, msg: jetstream::Message) {
        let (seq, delivered, pending) = match msg.info() {
            Ok(i) => (
                i.stream_sequence,
                u64::try_from(i.delivered).unwrap_or(1),
                i.pending,
            ),
            Err(_) => return,
        };
        self.counters.lag.store(pending, Ordering::Relaxed);
        Counters::add(&self.counters.in_hand);
        let body = match self.decode(&msg, seq) {
            Ok(env) => Body::Event(Box::new(env)),
            Err(rejected) => Body::Rejected(rejected),
        };
        let person = match &body {
            Body::Event(env) => Some(env.aggregate_id),
            _ => parse_event_subject(msg.subject.as_str())
                .ok()
                .map(|s| s.person_id),
        };
        let held = Held {
            msg: Arc::new(msg),
            seq,
            delivered,
            body,
        };
        let Some(person) = person else {
            // No person to order by: dead-letter it on its own.
            let this = self.clone();
            tokio::spawn(async move {
                let _ = this.process(held, None).await;
            });
            return;
        };
        let mut guard = self.lanes.lock().expect("lanes lock");
        let lanes = &mut *guard;
        let lane = lanes.map.entry(person).or_default();
        if let Some(existing) = lane.queue.iter_mut().find(|h| h.seq == held.seq) {
            // A redelivery of a message we already hold: keep the newest copy.
            *existing = held;
            Counters::sub(&self.counters.in_hand);
        } else if lane.waiting_for == Some(held.seq) {
            lane.waiting_for = None;
            lane.queue.push_front(held);
        } else if lane
            .current
            .as_ref()
            .is_some_and(|(seq, _)| *seq == held.seq)
        {
            // Redelivered while being handled (the handler outran the ack wait): the
            // running attempt settles it; drop this copy without acking.
            Counters::sub(&self.counters.in_hand);
            return;
        } else {
            let at = lane
                .queue
                .iter()
                .position(|h| h.seq > held.seq)
                .unwrap_or(lane.queue.len());
            lane.queue.insert(at, held);
        }
        if !lane.running && lane.waiting_for.is_none() {
            lane.running = true;
            if lanes.runners.len() < self.options.concurrency.max(1) {
                let id = lanes.next_runner;
                lanes.next_runner += 1;
                let this = self.clone();
                let task = tokio::spawn(async move { this.runner(person, id).await });
                lanes.runners.insert(id, task.abort_handle());
            } else {
                lanes.ready.push_back(person);
            }
        }
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
        let decoded = decode_message(&raw_message(msg, seq)).map_err(Rejected::Undecodable)?;
        if self.options.require_headers && decoded.origin == Origin::Current {
            check_headers(msg.headers.as_ref(), &decoded.envelope)?;
        }
        Ok(decoded.envelope)
    }

    /// A runner: handles one event of `person`, then one of whichever person is ready
    /// next (round robin, so a person with a long backlog does not hold a runner while
    /// others wait); exits when no one is ready (or when stopping).
    async fn runner(self: Arc<Self>, mut person: PersonId, id: u64) {
        loop {
            let more = self.run_lane(person).await;
            let mut lanes = self.lanes.lock().expect("lanes lock");
            if more {
                lanes.ready.push_back(person);
            }
            let next = if self.stopping.load(Ordering::Acquire) {
                None
            } else {
                lanes.ready.pop_front()
            };
            match next {
                Some(p) => person = p,
                None => {
                    lanes.runners.remove(&id);
                    return;
                }
            }
        }
    }

    /// Handles the next event of one person's lane. Returns `true` when the lane may
    /// have more to do; `false` (and the lane is no longer running) when it is empty,
    /// waits for a redelivery, or the worker stops.
    async fn run_lane(self: &Arc<Self>, person: PersonId) -> bool {
        let (held, parked) = {
            let mut lanes = self.lanes.lock().expect("lanes lock");
            let Some(lane) = lanes.map.get_mut(&person) else {
                return false;
            };
            if lane.waiting_for.is_some() || self.stopping.load(Ordering::Acquire) {
                lane.running = false;
                return false;
            }
            match lane.queue.pop_front() {
                Some(h) => {
                    lane.current = Some((h.seq, h.msg.clone()));
                    // The replay of the event a person is parked behind un-parks
                    // the person: it and the replays after it run in order.
                    if lane
                        .parked_behind
                        .as_deref()
                        .is_some_and(|b| is_replay_of(&h, b))
                    {
                        lane.parked_behind = None;
                    }
                    (h, lane.parked_behind.clone())
                }
                None => {
                    lane.running = false;
                    if lane.parked_behind.is_none() {
                        lanes.map.remove(&person);
                    }
                    return false;
                }
            }
        };
        let outcome = self.process(held, parked).await;
        let mut lanes = self.lanes.lock().expect("lanes lock");
        if let Some(lane) = lanes.map.get_mut(&person) {
            lane.current = None;
            match outcome {
                Outcome::Done | Outcome::Released => {}
                Outcome::WaitFor(seq) => lane.waiting_for = Some(seq),
                Outcome::DeadLettered(label) => {
                    if self.options.dead_letter_policy == DeadLetterPolicy::Park {
                        lane.parked_behind.get_or_insert(label);
                    }
                }
            }
        }
        true
    }

    async fn process(self: &Arc<Self>, mut held: Held, parked: Option<String>) -> Outcome {
        let body = std::mem::replace(&mut held.body, Body::HandedOver);
        let envelope = match (body, parked) {
            (body, Some(blocker)) if self.options.dead_letter_policy == DeadLetterPolicy::Park => {
                held.body = body;
                let reason = format!("{}{blocker}", person_streaming::BLOCKED_BY_PREFIX);
                return self
                    .dead_letter(held, reason, ErrorClass::Permanent, true, blocker)
                    .await;
            }
            (Body::Rejected(e), _) => {
                let reason = e.to_string();
                held.body = Body::Rejected(e);
                let label = format!("stream sequence {}", held.seq);
                return self
                    .dead_letter(held, reason, ErrorClass::Permanent, false, label)
                    .await;
            }
            (Body::Event(env), _) => *env,
            (Body::HandedOver, _) => match decode_held(&held.msg, held.seq) {
                Ok(env) => env,
                Err(e) => {
                    let reason = format!("undecodable: {e}");
                    let label = format!("stream sequence {}", held.seq);
                    return self
                        .dead_letter(held, reason, ErrorClass::Permanent, false, label)
                        .await;
                }
            },
        };
        let span = tracing::info_span!(
            "person_event",
            event_id = %envelope.event_id,
            correlation_id = %envelope.metadata().correlation_id,
            causation_id = ?envelope.metadata().causation_id.map(|c| c.to_string()),
            person = %envelope.aggregate_id,
            consumer = %self.settings.durable_name,
            handler = %self.handler.name(),
            delivered = held.delivered,
        );
        self.handle(held, envelope).instrument(span).await
    }

    async fn handle(self: &Arc<Self>, held: Held, envelope: StreamingEventEnvelope) -> Outcome {
        let _slot = match self.semaphore.acquire().await {
            Ok(p) => p,
            Err(_) => return self.release(held).await,
        };
        // Wait while the breaker rejects calls; keep the message alive meanwhile so its
        // delivery count is not burned.
        let permit = loop {
            if self.stopping.load(Ordering::Acquire) {
                return self.release(held).await;
            }
            match self.breaker.try_acquire() {
                Ok(permit) => break permit,
                Err(open) => {
                    let wait = open.retry_in().unwrap_or(Duration::from_millis(100));
                    let wait = wait.clamp(Duration::from_millis(10), self.progress_every());
                    let mut watch = self.breaker.subscribe();
                    let _ = tokio::time::timeout(wait, watch.changed()).await;
                    let _ = held.msg.ack_with(AckKind::Progress).await;
                }
            }
        };
        let attempts = self.options.in_process_attempts.max(1);
        let event_id = envelope.event_id;
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            if attempt >= attempts {
                // The last attempt hands the envelope over; earlier ones pass a copy.
                break self.attempt(&held, envelope).await;
            }
            match self.attempt(&held, envelope.clone()).await {
                Err(ref e) if e.class().is_retryable() => {
                    Counters::add(&self.counters.retried);
                    let delay = e
                        .class()
                        .retry_after()
                        .unwrap_or_else(|| self.retry.delay(attempt));
                    tracing::debug!(attempt, ?delay, error = %e, "handler failed; retrying in process");
                    tokio::time::sleep(delay.min(self.progress_every())).await;
                    let _ = held.msg.ack_with(AckKind::Progress).await;
                }
                other => break other,
            }
        };
        match result {
            Ok(()) => {
                permit.success();
                self.settle(&held.msg, AckKind::Ack).await;
                Counters::add(&self.counters.processed);
                Outcome::Done
            }
            Err(e) if e.class() == ErrorClass::Permanent => {
                // Bad data is not a downstream outage: it does not count against the breaker.
                permit.success();
                let label = event_id.to_string();
                self.dead_letter(
                    held,
                    format!("permanent failure: {e}"),
                    ErrorClass::Permanent,
                    false,
                    label,
                )
                .await
            }
            Err(e) => {
                permit.failure();
                if held.delivered >= self.max_deliver {
                    let label = event_id.to_string();
                    let reason = format!("gave up after {} deliveries: {e}", held.delivered);
                    return self
                        .dead_letter(held, reason, e.class(), false, label)
                        .await;
                }
                Counters::add(&self.counters.retried);
                let delay = e
                    .class()
                    .retry_after()
                    .unwrap_or_else(|| self.retry.nak_delay(held.delivered));
                tracing::debug!(?delay, error = %e, "handler failed; redelivery requested");
                self.settle(&held.msg, AckKind::Nak(Some(delay))).await;
                Outcome::WaitFor(held.seq)
            }
        }
    }

    /// One handler call, counted as in flight while it runs.
    async fn attempt(
        &self,
        held: &Held,
        envelope: StreamingEventEnvelope,
    ) -> Result<(), crate::HandlerError> {
        Counters::add(&self.counters.in_flight);
        let result = self.call_handler(held, envelope).await;
        Counters::sub(&self.counters.in_flight);
        result
    }

    async fn call_handler(
        &self,
        held: &Held,
        envelope: StreamingEventEnvelope,
    ) -> Result<(), crate::HandlerError> {
        let call = self.handler.handle_event(envelope);
        tokio::pin!(call);
        // One timer per call, for whichever comes first: the next progress ack or the
        // timeout. (Awaiting an interval's immediate first tick would cost a timer-wheel
        // turn, about 1 ms, per event; a second timer costs a wheel insert and removal.)
        let start = tokio::time::Instant::now();
        let deadline = start + self.options.handler_timeout;
        let period = self.progress_every();
        let mut next_progress = start + period;
        let timer = tokio::time::sleep_until(next_progress.min(deadline));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                r = &mut call => return r,
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(crate::HandlerError::transient(format!(
                            "handler timed out after {:?}",
                            self.options.handler_timeout
                        )));
                    }
                    // Longer than the ack wait is fine: tell the server we are working.
                    let _ = held.msg.ack_with(AckKind::Progress).await;
                    next_progress = now + period;
                    timer.as_mut().reset(next_progress.min(deadline));
                }
            }
        }
    }

    /// Stores a dead letter, waits for the server's ack, then terminates the message. If
    /// the store fails, the message is NAKed with a delay and comes back later.
    async fn dead_letter(
        &self,
        held: Held,
        reason: String,
        class: ErrorClass,
        parked: bool,
        label: String,
    ) -> Outcome {
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
        let payload = match &held.body {
            Body::Rejected(Rejected::Oversized { .. }) => held
                .msg
                .payload
                .slice(..held.msg.payload.len().min(OVERSIZED_KEPT)),
            _ => held.msg.payload.clone(),
        };
        let letter = DeadLetter {
            subject: held.msg.subject.to_string(),
            stream: self.stream.clone(),
            stream_sequence: held.seq,
            payload,
            headers,
            reason: reason.clone(),
            error_class: class,
            delivery_count: held.delivered,
            first_failure_at: now,
            last_failure_at: now,
            consumer: self.settings.durable_name.clone(),
            handler: self.handler.name().to_owned(),
            metadata: env.map(|e| e.metadata().clone()),
            event_id: env.map(|e| e.event_id.to_string()),
            person_id: env.map(|e| e.aggregate_id.to_string()).or_else(|| {
                parse_event_subject(held.msg.subject.as_str())
                    .ok()
                    .map(|s| s.person_id.to_string())
            }),
            event_type: env.map(|e| e.event.event_type().to_owned()),
        };
        match self.sink.store(&letter).await {
            Ok(()) => {
                self.settle(&held.msg, AckKind::Term).await;
                Counters::add(&self.counters.dead_lettered);
                if parked {
                    Counters::add(&self.counters.parked);
                }
                tracing::warn!(seq = held.seq, %reason, "dead-lettered");
                Outcome::DeadLettered(label)
            }
            Err(e) => {
                let delay = self
                    .retry
                    .nak_delay(held.delivered)
                    .max(Duration::from_millis(500));
                tracing::warn!(seq = held.seq, error = %e, ?delay, "cannot store the dead letter; the message will come back");
                self.settle(&held.msg, AckKind::Nak(Some(delay))).await;
                Outcome::WaitFor(held.seq)
            }
        }
    }

    async fn release(&self, held: Held) -> Outcome {
        self.settle(&held.msg, AckKind::Nak(None)).await;
        Outcome::Released
    }

    async fn settle(&self, msg: &jetstream::Message, kind: AckKind) {
        // Fire-and-forget, like a raw consumer; `shutdown` flushes the connection, so
        // every ack sent before it reaches the server before the next start.
        let result = msg.ack_with(kind).await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not settle a message; the server will redeliver it");
        }
        Counters::sub(&self.counters.in_hand);
        // notify_one keeps a permit when the pull loop is not waiting yet, so a settle
        // that lands between its room check and its wait is never lost.
        self.settled.notify_one();
    }

    fn progress_every(&self) -> Duration {
        (self.settings.ack_wait() / 3).max(Duration::from_millis(200))
    }

    /// Keeps held (queued) messages alive while they wait for their person's turn.
    async fn progress_ticker(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.progress_every());
        tick.tick().await;
        loop {
            tick.tick().await;
            let msgs: Vec<Arc<jetstream::Message>> = {
                let lanes = self.lanes.lock().expect("lanes lock");
                lanes
                    .map
                    .values()
                    .flat_map(|l| l.queue.iter().map(|h| h.msg.clone()))
                    .collect()
            };
            for m in msgs {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        }
    }

    /// Stops pulling, lets running handlers finish within `timeout`, then NAKs whatever
    /// did not finish or never started. Nothing unfinished is acked.
    pub(crate) async fn shutdown(self: &Arc<Self>, timeout: Duration) {
        self.stopping.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let busy = {
                let lanes = self.lanes.lock().expect("lanes lock");
                lanes.map.values().any(|l| l.current.is_some())
            };
            if !busy || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let leftovers: Vec<Arc<jetstream::Message>> = {
            let mut lanes = self.lanes.lock().expect("lanes lock");
            let mut out = Vec::new();
            for (_, runner) in lanes.runners.drain() {
                runner.abort();
            }
            for lane in lanes.map.values_mut() {
                out.extend(lane.current.take().map(|(_, m)| m));
                out.extend(lane.queue.drain(..).map(|h| h.msg));
            }
            lanes.map.clear();
            lanes.ready.clear();
            out
        };
        for m in leftovers {
            self.settle(&m, AckKind::Nak(None)).await;
        }
        let _ = self.js.client().flush().await;
    }
}

/// `true` when `held` is a DLQ replay of the event labelled `blocker`.
fn is_replay_of(held: &Held, blocker: &str) -> bool {
    let replayed = held
        .msg
        .headers
        .as_ref()
        .is_some_and(|h| h.get(person_streaming::REPLAY_OF_HEADER).is_some());
    replayed
        && match &held.body {
            Body::Event(env) => env.event_id.to_string() == blocker,
            Body::Rejected(_) => blocker == format!("stream sequence {}", held.seq),
            Body::HandedOver => held
                .envelope()
                .is_some_and(|env| env.event_id.to_string() == blocker),
        }
}

fn reconnect_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(5))).min(Duration::from_secs(3))
}
