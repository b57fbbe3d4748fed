//! Shared pieces of the reliability suite: servers and clients, workloads, an idempotent
//! projection that counts what it absorbs, polling, and the report rows each case
//! writes to `target/reliability/<case>.json`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use person_events::{EventId, PersonEventV2, PersonId, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_retry::RetryPolicy;
use person_streaming::{ConsumerSettings, StreamingClient, StreamingConfig};
use person_subscriptions::{DomainResult, HandlerError, StreamingEventHandler};

/// The durable consumer every case uses.
pub(crate) const CONSUMER: &str = "reliability-projection";

/// A retry policy with fast backoff, for consumers and publishers under test.
pub(crate) fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(attempts)
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(500))
        .build()
        .expect("a valid retry policy")
}

/// One test consumer with `ack_wait_secs`, and a publisher that keeps retrying through
/// a server restart (2 s ack timeout, 30 attempts, same `Nats-Msg-Id` every time).
pub(crate) fn config(ack_wait_secs: u64) -> StreamingConfig {
    let mut c = ConsumerSettings::new(CONSUMER, &["person.events.>"], "reliability suite");
    c.retry = fast_retry(5);
    c.max_deliver = 5;
    c.ack_wait_secs = ack_wait_secs;
    let mut config = StreamingConfig {
        consumers: vec![c],
        ..StreamingConfig::default()
    };
    config.publisher.ack_timeout_ms = 2_000;
    config.publisher.retry = fast_retry(30);
    config
}

/// Connects (retrying the first connection while a server comes up).
pub(crate) async fn connect(url: &str, config: StreamingConfig) -> StreamingClient {
    StreamingClient::builder(url)
        .connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// `per_person` events for each of `people` people, interleaved person by person.
pub(crate) fn workload(people: usize, per_person: u64) -> Vec<StreamingEventEnvelope> {
    let ids: Vec<PersonId> = (0..people).map(|_| PersonId::new()).collect();
    let mut out = Vec::with_capacity(people * per_person as usize);
    for seq in 1..=per_person {
        for p in &ids {
            out.push(event(*p, seq));
        }
    }
    out
}

/// One small event of person `p`.
pub(crate) fn event(p: PersonId, seq: u64) -> StreamingEventEnvelope {
    StreamingEventEnvelope::new(
        p,
        seq,
        PersonEventV2::Activated {
            person_id: p,
            reason: format!("step {seq}"),
            metadata: EventMetadata::new().with_actor("reliability"),
        },
    )
}

/// Publishes everything, pipelined; panics on the first failure.
pub(crate) async fn publish_all(client: &StreamingClient, events: &[StreamingEventEnvelope]) {
    let publisher = client.publisher();
    let results: Vec<_> = publisher.publish_all(events.to_vec()).collect().await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        panic!("publish failed: {e}");
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `secs`. The
/// deadline is a hang guard, generous for a loaded machine, not a speed assertion.
pub(crate) async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event id stored in `stream` (the stream's message count, and the ids seen).
pub(crate) async fn stored_ids(client: &StreamingClient, stream: &str) -> (u64, Vec<EventId>) {
    let mut stream = client.jetstream().get_stream(stream).await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::with_capacity(total as usize);
    while (ids.len() as u64) < total {
        let msg = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .expect("reading the stream back stalled")
            .expect("the ordered consumer ended")
            .unwrap();
        let decoded = person_legacy_compat::decode_message(
            &person_legacy_compat::RawMessage::from_payload(&msg.payload),
        )
        .expect("every stored event decodes");
        ids.push(decoded.envelope.event_id);
    }
    (total, ids)
}

/// Messages in the dead-letter stream.
pub(crate) async fn dlq_messages(client: &StreamingClient) -> u64 {
    let name = client.config().dlq.name.clone();
    let mut stream = client.jetstream().get_stream(&name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// An idempotent projection: applies each event id once, counts the deliveries it
/// absorbed, and records every error its handler saw.
#[derive(Default)]
pub(crate) struct Projection {
    deliveries: Mutex<HashMap<EventId, u32>>,
    applied: AtomicU64,
    errors: Mutex<Vec<String>>,
    held: AtomicU64,
    holding: AtomicU64,
}

impl Projection {
    /// Applies `env`; `true` when it was new.
    pub(crate) fn apply(&self, env: &StreamingEventEnvelope) -> bool {
        let mut d = self.deliveries.lock().unwrap();
        let n = d.entry(env.event_id).or_default();
        *n += 1;
        if *n == 1 {
            self.applied.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    /// Records an error the handler saw.
    pub(crate) fn error(&self, e: impl Into<String>) {
        self.errors.lock().unwrap().push(e.into());
    }

    /// Distinct events applied.
    pub(crate) fn distinct(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Deliveries of already-applied events (absorbed by idempotency).
    pub(crate) fn absorbed(&self) -> u64 {
        self.deliveries
            .lock()
            .unwrap()
            .values()
            .map(|n| u64::from(n - 1))
            .sum()
    }

    /// Ids applied.
    pub(crate) fn ids(&self) -> HashSet<EventId> {
        self.deliveries.lock().unwrap().keys().copied().collect()
    }

    /// Handler calls that were held (see [`ProjectionHandler::hold_from`]) and then
    /// went on once released.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Handler calls being held right now.
    pub(crate) fn holding(&self) -> u64 {
        self.holding.load(Ordering::SeqCst)
    }

    /// Errors the handler saw.
    pub(crate) fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

type FailFn = dyn Fn(&StreamingEventEnvelope, u32) -> Option<HandlerError> + Send + Sync;

/// A handler feeding a [`Projection`]. It checks what it is given (a valid envelope of a
/// known event) and records anything wrong as an error; `fail` may inject failures by
/// (envelope, attempt number for this event).
pub(crate) struct ProjectionHandler {
    pub(crate) projection: Arc<Projection>,
    known: Option<HashSet<EventId>>,
    attempts: Mutex<HashMap<EventId, u32>>,
    fail: Box<FailFn>,
    delay: Duration,
    hold: Option<(u64, Arc<AtomicBool>)>,
}

impl ProjectionHandler {
    pub(crate) fn new(projection: Arc<Projection>) -> Self {
        Self {
            projection,
            known: None,
            attempts: Mutex::new(HashMap::new()),
            fail: Box::new(|_, _| None),
            delay: Duration::ZERO,
            hold: None,
        }
    }

    /// Once `applied` events are in the projection, calls wait until `release` is set.
    pub(crate) fn hold_from(mut self, applied: u64, release: Arc<AtomicBool>) -> Self {
        self.hold = Some((applied, release));
        self
    }

    /// Events outside `known` are recorded as errors.
    pub(crate) fn known(mut self, events: &[StreamingEventEnvelope]) -> Self {
        self.known = Some(events.iter().map(|e| e.event_id).collect());
        self
    }

    pub(crate) fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub(crate) fn failing(
        mut self,
        fail: impl Fn(&StreamingEventEnvelope, u32) -> Option<HandlerError> + Send + Sync + 'static,
    ) -> Self {
        self.fail = Box::new(fail);
        self
    }
}

#[async_trait]
impl StreamingEventHandler for ProjectionHandler {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        if let Err(e) = envelope.validate() {
            self.projection
                .error(format!("invalid envelope {}: {e}", envelope.event_id));
        }
        if let Some(known) = &self.known
            && !known.contains(&envelope.event_id)
        {
            self.projection
                .error(format!("unknown event {}", envelope.event_id));
        }
        let attempt = {
            let mut a = self.attempts.lock().unwrap();
            let n = a.entry(envelope.event_id).or_default();
            *n += 1;
            *n
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some((applied, release)) = &self.hold
            && self.projection.distinct() >= *applied
            && !release.load(Ordering::SeqCst)
        {
            self.projection.holding.fetch_add(1, Ordering::SeqCst);
            while !release.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.projection.holding.fetch_sub(1, Ordering::SeqCst);
            self.projection.held.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(e) = (self.fail)(&envelope, attempt) {
            return Err(e);
        }
        self.projection.apply(&envelope);
        Ok(())
    }

    fn name(&self) -> &str {
        "reliability"
    }
}

/// One row of RELIABILITY.md, as measured by the case itself.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Row {
    /// The case's file name and id.
    pub(crate) case: &'static str,
    /// Area: faults, cluster, handlers, hostile, auth, config, fuzz, soak.
    pub(crate) area: &'static str,
    /// What was done.
    pub(crate) what: String,
    /// Load held.
    pub(crate) load: String,
    /// Faults injected.
    pub(crate) faults: String,
    /// Inputs tried (fuzzing, bad messages, configs...); events for load cases.
    pub(crate) inputs: u64,
    /// Events lost.
    pub(crate) lost: u64,
    /// Events duplicated in the projection (or in the stream, for publishing).
    pub(crate) duplicated: u64,
    /// Redeliveries absorbed by the idempotent projection.
    pub(crate) absorbed: u64,
    /// Anything else measured.
    pub(crate) notes: String,
    /// Wall time of the case, seconds.
    pub(crate) seconds: f64,
}

/// Where the rows go: `<target>/reliability/`.
pub(crate) fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("tests/ lives in the workspace")
                .join("target")
        });
    target.join("reliability")
}

/// Writes `row` (one JSON line) to `target/reliability/<case>.json`, with the time since
/// `started`. Called after the case's assertions passed.
pub(crate) fn record(mut row: Row, started: Instant) {
    row.seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let dir = report_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut line = serde_json::to_string(&row).unwrap();
    line.push('\n');
    std::fs::write(dir.join(format!("{}.json", row.case)), &line).unwrap();
    println!("reliability: {line}");
}
