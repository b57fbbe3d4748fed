//! Publish-to-handled latency at a steady rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures::StreamExt;
use nats_harness::NatsServer;
use person_events::StreamingEventEnvelope;
use person_metadata::EventId;
use person_streaming::StreamingClient;
use person_subscriptions::{
    DomainResult, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};

/// Latency percentiles, in microseconds.
pub(crate) struct Latency {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) samples: usize,
}

/// When each counted event was handed to the publisher, shared by both consumers.
type Sent = Arc<Mutex<HashMap<EventId, Instant>>>;

/// One consumer's view: how long each counted event took from the publisher to it.
struct Stopwatch {
    sent: Sent,
    seen: Mutex<Vec<Duration>>,
}

impl Stopwatch {
    fn new(sent: Sent) -> Self {
        Self {
            sent,
            seen: Mutex::default(),
        }
    }

    fn saw(&self, id: EventId) {
        let now = Instant::now();
        let sent = self.sent.lock().expect("sent lock").get(&id).copied();
        if let Some(sent) = sent {
            self.seen.lock().expect("seen lock").push(now - sent);
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("seen lock").len()
    }

    fn latency(&self) -> Latency {
        let mut seen = std::mem::take(&mut *self.seen.lock().expect("seen lock"));
        seen.sort();
        let pick = |q: f64| seen[((seen.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        Latency {
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            samples: seen.len(),
        }
    }
}

#[async_trait]
impl StreamingEventHandler for Stopwatch {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        self.saw(envelope.event_id);
        Ok(())
    }

    fn name(&self) -> &str {
        "stopwatch"
    }
}

/// Publishes `rate` events per second for `secs` seconds, one `publish` per event
/// (spawned, so a slow ack does not hold the schedule back), while two consumers of the
/// stream handle every event side by side: a subscription with the default options
/// (concurrency 8) and a plain async-nats `messages()` + `ack()` loop, which finds the
/// event by its `Nats-Msg-Id`. Each has a durable and a connection of its own, and the
/// publisher a third. The first second is warm-up and not counted.
///
/// Side by side, both see the same publishes at the same moment, so a change in the
/// machine's load moves both figures together; one after the other, the raw p50 moved
/// by up to 50% between runs minutes apart, which swamped the difference being
/// measured. Two raw loops run this way measure within 1% of each other.
///
/// Returns the subscription's latency and the raw loop's.
pub(crate) async fn run(server: &NatsServer, rate: u64, secs: u64) -> Result<(Latency, Latency)> {
    let client = crate::fresh(server, "LAT", 256).await?;
    let sent: Sent = Arc::default();
    let product = Arc::new(Stopwatch::new(sent.clone()));
    let raw = Arc::new(Stopwatch::new(sent.clone()));
    let raw_task = raw_consumer(server, raw.clone()).await?;
    let consumer_client =
        StreamingClient::new(&server.url(), crate::bench_config("LAT", 256)).await?;
    let mut manager = SubscriptionManager::new(consumer_client)
        .with_options(SubscriptionOptions::default().concurrency(8));
    manager.register_handler(product.clone());
    let handle = manager.start_consumer("bench").await?;

    let total = (rate * secs) as usize;
    let warmup = rate as usize;
    let publisher = client.publisher();
    let mut events = crate::workload_iter(total, 1_000);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
        let envelope = events.next().context("workload ended early")?;
        if i >= warmup {
            sent.lock()
                .expect("sent lock")
                .insert(envelope.event_id, Instant::now());
        }
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(
            async move { publisher.publish(&envelope).await },
        ));
    }
    for t in tasks {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while product.count() < total - warmup || raw.count() < total - warmup {
        anyhow::ensure!(Instant::now() < deadline, "latency run: events not handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown(Duration::from_secs(5)).await;
    raw_task.abort();
    Ok((product.latency(), raw.latency()))
}

/// The raw side: its own connection and durable, and the loop a user of async-nats
/// alone would write.
async fn raw_consumer(server: &NatsServer, watch: Arc<Stopwatch>) -> Result<JoinHandle<()>> {
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let consumer = js
        .get_stream("LAT")
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .and_then(|v| v.as_str().parse::<uuid::Uuid>().ok());
            if let Some(id) = id {
                watch.saw(EventId::from_uuid(id));
            }
            let _ = m.ack().await;
        }
    }))
}
