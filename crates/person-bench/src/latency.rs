//! Publish-to-handled latency at a steady rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::consumer;
use async_trait::async_trait;
use futures::StreamExt;
use nats_harness::NatsServer;
use person_events::StreamingEventEnvelope;
use person_metadata::EventId;
use person_subscriptions::{
    DomainResult, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};

/// Latency percentiles, in microseconds.
pub(crate) struct Latency {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) samples: usize,
}

/// Remembers when each event was handed to the publisher and, when the handler sees it,
/// how long that took.
#[derive(Default)]
struct Stopwatch {
    sent: Mutex<HashMap<EventId, Instant>>,
    seen: Mutex<Vec<Duration>>,
}

impl Stopwatch {
    fn saw(&self, id: EventId) {
        let now = Instant::now();
        let sent = self.sent.lock().expect("sent lock").remove(&id);
        if let Some(sent) = sent {
            self.seen.lock().expect("seen lock").push(now - sent);
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
/// (spawned, so a slow ack does not hold the schedule back), while a subscription with
/// the default options handles them. The first second is warm-up and not counted.
///
/// With `raw`, the consumer is a plain async-nats `messages()` + `ack()` loop instead,
/// which finds the event by its `Nats-Msg-Id`.
pub(crate) async fn run(server: &NatsServer, rate: u64, secs: u64, raw: bool) -> Result<Latency> {
    let client = crate::fresh(server, "LAT", 256).await?;
    let watch = Arc::new(Stopwatch::default());
    let (handle, raw_task) = if raw {
        let stream = client.jetstream().get_stream("LAT").await?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let watch = watch.clone();
        let task = tokio::spawn(async move {
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
        });
        (None, Some(task))
    } else {
        let mut manager = SubscriptionManager::new(client.clone())
            .with_options(SubscriptionOptions::default().concurrency(8));
        manager.register_handler(watch.clone());
        (Some(manager.start_consumer("bench").await?), None)
    };

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
            watch
                .sent
                .lock()
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
    while watch.seen.lock().expect("seen lock").len() < total - warmup {
        anyhow::ensure!(Instant::now() < deadline, "latency run: events not handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(handle) = handle {
        handle.shutdown(Duration::from_secs(5)).await;
    }
    if let Some(task) = raw_task {
        task.abort();
    }
    let mut seen = std::mem::take(&mut *watch.seen.lock().expect("seen lock"));
    seen.sort();
    let pick = |q: f64| seen[((seen.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Ok(Latency {
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        samples: seen.len(),
    })
}
