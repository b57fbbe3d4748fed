use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use nats_harness::NatsServer;
use person_events::{EventId, PersonEventV2, PersonId, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_retry::RetryPolicy;
use person_streaming::{ConsumerSettings, StreamingClient, StreamingConfig};
use person_subscriptions::{
    DomainResult, HandlerError, StreamingEventHandler, SubscriptionHandle, SubscriptionManager,
    SubscriptionOptions,
};

pub(crate) const CONSUMER: &str = "test-projection";

/// A config with one fast-retrying test consumer.
pub(crate) fn config(max_deliver: i64) -> StreamingConfig {
    let mut c = ConsumerSettings::new(CONSUMER, &["person.events.>"], "test consumer");
    c.retry = RetryPolicy::builder()
        .max_attempts(u32::try_from(max_deliver).unwrap())
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(200))
        .build()
        .unwrap();
    c.max_deliver = max_deliver;
    c.ack_wait_secs = 5;
    StreamingConfig {
        consumers: vec![c],
        ..StreamingConfig::default()
    }
}

pub(crate) async fn start(config: StreamingConfig) -> (NatsServer, StreamingClient) {
    let server = NatsServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
    let client = StreamingClient::new(&server.url(), config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (server, client)
}

/// `per_person` events for each of `people` people, person-major order interleaved.
pub(crate) fn workload(
    people: usize,
    per_person: u64,
) -> (Vec<PersonId>, Vec<StreamingEventEnvelope>) {
    let ids: Vec<PersonId> = (0..people).map(|_| PersonId::new()).collect();
    let mut out = Vec::new();
    for seq in 1..=per_person {
        for p in &ids {
            out.push(StreamingEventEnvelope::new(
                *p,
                seq,
                PersonEventV2::Activated {
                    person_id: *p,
                    reason: format!("step {seq}"),
                    metadata: EventMetadata::new().with_actor("test"),
                },
            ));
        }
    }
    (ids, out)
}

pub(crate) async fn publish(client: &StreamingClient, events: &[StreamingEventEnvelope]) {
    let publisher = client.publisher();
    let results: Vec<_> = publisher.publish_all(events.to_vec()).collect().await;
    assert!(results.iter().all(|r| r.is_ok()), "publish failed");
}

type FailFn = dyn Fn(&StreamingEventEnvelope, u64) -> Option<HandlerError> + Send + Sync;

/// A projection that records what it saw, in order, and fails on demand.
pub(crate) struct Recorder {
    name: String,
    pub(crate) seen: Mutex<Vec<StreamingEventEnvelope>>,
    pub(crate) calls: Mutex<HashMap<EventId, u64>>,
    pub(crate) total_calls: AtomicU64,
    /// Every call, in the order they started, with the time it started.
    pub(crate) call_log: Mutex<Vec<(EventId, std::time::Instant)>>,
    fail: Box<FailFn>,
    delay: Duration,
}

impl Recorder {
    pub(crate) fn new(name: &str) -> Self {
        Self::failing(name, |_, _| None)
    }

    /// `fail(envelope, call number for this event starting at 1)`.
    pub(crate) fn failing(
        name: &str,
        fail: impl Fn(&StreamingEventEnvelope, u64) -> Option<HandlerError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            seen: Mutex::new(Vec::new()),
            calls: Mutex::new(HashMap::new()),
            total_calls: AtomicU64::new(0),
            call_log: Mutex::new(Vec::new()),
            fail: Box::new(fail),
            delay: Duration::ZERO,
        }
    }

    pub(crate) fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub(crate) fn seen_ids(&self) -> Vec<EventId> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id)
            .collect()
    }

    pub(crate) fn distinct(&self) -> usize {
        self.seen_ids()
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Per person, the envelope sequences in the order they were applied.
    pub(crate) fn order_by_person(&self) -> HashMap<PersonId, Vec<u64>> {
        let mut out: HashMap<PersonId, Vec<u64>> = HashMap::new();
        for e in self.seen.lock().unwrap().iter() {
            out.entry(e.aggregate_id).or_default().push(e.sequence);
        }
        out
    }

    /// Per person, the envelope sequences in the order of their first successful
    /// handling (a repeat of an event already handled is left out).
    pub(crate) fn first_success_order(&self) -> HashMap<PersonId, Vec<u64>> {
        let mut done = std::collections::HashSet::new();
        let mut out: HashMap<PersonId, Vec<u64>> = HashMap::new();
        for e in self.seen.lock().unwrap().iter() {
            if done.insert(e.event_id) {
                out.entry(e.aggregate_id).or_default().push(e.sequence);
            }
        }
        out
    }

    /// How many times the handler was called with `event` (failed calls included).
    pub(crate) fn calls_of(&self, event: EventId) -> u64 {
        self.calls.lock().unwrap().get(&event).copied().unwrap_or(0)
    }

    /// When each call with `event` started, in order.
    pub(crate) fn call_times(&self, event: EventId) -> Vec<std::time::Instant> {
        self.call_log
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == event)
            .map(|(_, t)| *t)
            .collect()
    }
}

#[async_trait]
impl StreamingEventHandler for Recorder {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        self.total_calls.fetch_add(1, Ordering::SeqCst);
        self.call_log
            .lock()
            .unwrap()
            .push((envelope.event_id, std::time::Instant::now()));
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(envelope.event_id).or_default();
            *n += 1;
            *n
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(err) = (self.fail)(&envelope, n) {
            return Err(err);
        }
        self.seen.lock().unwrap().push(envelope);
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Polls `cond` every 50 ms until it holds or `secs` pass; panics with `what` then.
pub(crate) async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`eventually`], but the panic message is `report()` at the deadline, so it can
/// say how far things got.
pub(crate) async fn eventually_report(
    secs: u64,
    mut cond: impl FnMut() -> bool,
    report: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {}",
            report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the async `cond` every 100 ms until it holds or `secs` pass; panics with
/// `what` then.
pub(crate) async fn eventually_async<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `secs` for the test consumer to have nothing pending and nothing
/// unacknowledged; panics with the consumer's numbers otherwise.
pub(crate) async fn wait_idle(client: &StreamingClient, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let stream = client
            .jetstream()
            .get_stream("PERSON_EVENTS")
            .await
            .unwrap();
        let info = stream.consumer_info(CONSUMER).await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer is not idle after {secs} s: {} pending, {} unacknowledged, {} redelivered",
            info.num_pending,
            info.num_ack_pending,
            info.num_redelivered
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A second connection to `server` with `config`, as another process would open.
pub(crate) async fn connect(server: &NatsServer, config: StreamingConfig) -> StreamingClient {
    StreamingClient::new(&server.url(), config)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A retry policy with `attempts` attempts, delays from `initial` doubling up to `max`,
/// and the given jitter.
pub(crate) fn retry_policy(
    attempts: u32,
    initial: Duration,
    max: Duration,
    jitter: person_retry::Jitter,
) -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(attempts)
        .initial_backoff(initial)
        .max_backoff(max)
        .jitter(jitter)
        .build()
        .unwrap()
}

/// Default options with a breaker that never opens (65,535 failures in a row), for
/// tests whose failures are not an outage.
pub(crate) fn options() -> SubscriptionOptions {
    SubscriptionOptions::default().breaker(
        person_retry::CircuitBreakerConfig::builder()
            .failure_threshold(65_535)
            .build()
            .unwrap(),
    )
}

/// One `Activated` event of `person` with envelope sequence `seq`.
pub(crate) fn event(
    person: PersonId,
    seq: u64,
    reason: impl Into<String>,
) -> StreamingEventEnvelope {
    StreamingEventEnvelope::new(
        person,
        seq,
        PersonEventV2::Activated {
            person_id: person,
            reason: reason.into(),
            metadata: EventMetadata::new().with_actor("test"),
        },
    )
}

/// The test consumer's dead letters for `person`, oldest first.
pub(crate) async fn letters_of(
    client: &StreamingClient,
    person: PersonId,
) -> Vec<person_streaming::StoredDeadLetter> {
    client
        .dead_letters()
        .list(&person_streaming::DeadLetterFilter {
            consumer: Some(CONSUMER.into()),
            person_id: Some(person.to_string()),
            ..Default::default()
        })
        .await
        .unwrap()
}

pub(crate) async fn consumer_idle(client: &StreamingClient, durable: &str) -> bool {
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let info = stream.consumer_info(durable).await.unwrap();
    info.num_pending == 0 && info.num_ack_pending == 0
}

/// Starts `handler` on the test consumer with `options`.
pub(crate) async fn run(
    client: &StreamingClient,
    handler: Arc<Recorder>,
    options: SubscriptionOptions,
) -> SubscriptionHandle {
    let mut manager = SubscriptionManager::new(client.clone()).with_options(options);
    manager.register_handler(handler);
    manager.start_consumer(CONSUMER).await.unwrap()
}
