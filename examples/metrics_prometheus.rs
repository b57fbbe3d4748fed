//! Metrics on a Prometheus endpoint. The library reports through the `metrics` facade
//! and installs no exporter; this example installs `metrics-exporter-prometheus` with
//! an HTTP listener, publishes 100 events, handles them (some fail once and are
//! retried), and prints what a scrape of `/metrics` shows.
//!
//! Run with `cargo run --example metrics_prometheus` (add `-- --serve` to keep serving
//! until Ctrl-C; `METRICS_ADDR` sets the listen address, default `127.0.0.1:9464`).
//!
//! It works in names of its own (stream, DLQ stream and consumer with a per-run suffix,
//! capturing only the people it creates) and deletes its streams at the end, so it
//! reads, acks or deletes nothing it did not create, also on your server (`NATS_URL`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope, subject};
use person_metadata::EventMetadata;
use person_streaming::{ConsumerSettings, StreamingClient, StreamingConfig};
use person_subscriptions::{
    DomainResult, HandlerError, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fails the first call of every seventh event, transiently: it is retried.
struct Projection {
    calls: AtomicU64,
}

#[async_trait]
impl StreamingEventHandler for Projection {
    async fn handle_event(&self, _envelope: StreamingEventEnvelope) -> DomainResult<()> {
        if self.calls.fetch_add(1, Ordering::Relaxed) % 7 == 3 {
            return Err(HandlerError::transient("the read model was busy"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }

    fn name(&self) -> &str {
        "projection"
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let addr: SocketAddr = std::env::var("METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9464".into())
        .parse()
        .context("METRICS_ADDR is not a socket address")?;
    // First: the publisher's and the consumer's handles bind to the recorder installed
    // when they are created.
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .context("cannot install the Prometheus exporter")?;
    println!("serving metrics on http://{addr}/metrics");

    let server = person_examples::server().await?;
    let people: Vec<PersonId> = (0..20).map(|_| PersonId::new()).collect();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let run = &run[run.len() - 8..];
    let consumer = format!("example-metrics-{run}");
    let mut config = StreamingConfig {
        consumers: vec![ConsumerSettings::new(
            &consumer,
            &["person.events.>"],
            "metrics example",
        )],
        ..StreamingConfig::default()
    };
    // Names of its own, capturing only this run's people and dead letters.
    let subjects: Vec<String> = people.iter().map(subject::person_filter).collect();
    config.stream.name = format!("EXAMPLE_METRICS_{run}");
    config.stream.subjects.clone_from(&subjects);
    config.consumers[0].filter_subjects = subjects;
    config.dlq.name = format!("EXAMPLE_METRICS_{run}_DLQ");
    config.dlq.subjects = vec![format!("{}.{consumer}.>", subject::DLQ_PREFIX)];
    let client = StreamingClient::new(&server.url, config.clone()).await?;

    let events: Vec<StreamingEventEnvelope> = (1..=5)
        .flat_map(|seq| {
            people.iter().map(move |&p| {
                let event = PersonEventV2::Activated {
                    person_id: p,
                    reason: format!("step {seq}"),
                    metadata: EventMetadata::new().with_actor("metrics-example"),
                };
                StreamingEventEnvelope::new(p, seq, event)
            })
        })
        .collect();
    let n = events.len() as u64;
    let publisher = client.publisher();
    let results: Vec<_> = publisher.publish_all(events).collect().await;
    for r in results {
        r?;
    }

    let mut manager = SubscriptionManager::new(client.clone())
        .with_options(SubscriptionOptions::default().concurrency(8));
    manager.register_handler(Arc::new(Projection {
        calls: AtomicU64::new(0),
    }));
    let handle = manager.start_consumer(&consumer).await?;
    while handle.stats().processed < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = handle.stats();
    println!(
        "handled {} events, {} retries",
        stats.processed, stats.retried
    );

    let body = scrape(addr).await?;
    println!("\nGET /metrics, the person_events_* samples:");
    for line in body.lines().filter(|l| l.starts_with("person_events_")) {
        println!("  {line}");
    }

    if std::env::args().any(|a| a == "--serve") {
        println!("\nserving http://{addr}/metrics until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    handle.shutdown(Duration::from_secs(5)).await;
    for stream in [&config.stream.name, &config.dlq.name] {
        if let Err(e) = client.jetstream().delete_stream(stream).await {
            eprintln!("could not delete this run's stream {stream}: {e}");
        }
    }
    drop(server);
    Ok(())
}

/// GET /metrics over plain HTTP/1.1, as Prometheus would: the body.
async fn scrape(addr: SocketAddr) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .context("not an HTTP response")?;
    Ok(body.to_owned())
}
