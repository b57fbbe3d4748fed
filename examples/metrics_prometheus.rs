//! Metrics on a Prometheus endpoint. The library reports through the `metrics` facade
//! and installs no exporter; this example installs `metrics-exporter-prometheus` with
//! an HTTP listener, publishes 100 events, handles them (some fail once and are
//! retried), and prints what a scrape of `/metrics` shows.
//!
//! Run with `cargo run --example metrics_prometheus` (add `-- --serve` to keep serving
//! until Ctrl-C; `METRICS_ADDR` sets the listen address, default `127.0.0.1:9464`).
//!
//! With `NATS_URL` it works in a namespace of its own (streams, consumer and subject
//! prefix with a per-run suffix, see `person_examples::Scope`) and deletes its streams
//! at the end, so it reads, acks or deletes nothing it did not create.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope};
use person_examples::Scope;
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

    let config = StreamingConfig {
        consumers: vec![ConsumerSettings::new(
            "metrics-projection",
            &["person.events.>"],
            "metrics example",
        )],
        ..StreamingConfig::default()
    };
    person_examples::run_in_scope("metrics_prometheus", config, async |scope, client| {
        run(scope, client, addr).await
    })
    .await
}

async fn run(scope: &Scope, client: &StreamingClient, addr: SocketAddr) -> Result<()> {
    let people: Vec<PersonId> = (0..20).map(|_| PersonId::new()).collect();
    let consumer = scope.consumer("metrics-projection");
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
    person_examples::wait_until(60, "handling the events", || handle.stats().processed >= n)
        .await?;
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
