//! Metrics through the `metrics` facade, scraped from a Prometheus endpoint as an
//! operator would: a consumer over N events with some transient failures, and the
//! publisher that stored them.
//!
//! The facade has one recorder per process, shared by every test of this binary: it
//! is installed once, and this test's consumer, handler and stream names are its own.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use nats_harness::NatsServer;
use person_events::{EventId, StreamingEventEnvelope};
use person_subscriptions::{
    DomainResult, HandlerError, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{CONSUMER, config, connect, eventually, workload};

const HANDLER: &str = "metrics-e2e";
const STREAM: &str = "PERSON_EVENTS_METRICS_E2E";

/// The address of this process's Prometheus endpoint, installed on first use. The
/// exporter runs on a runtime of its own (no test's runtime outlives its test).
fn endpoint() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free local port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Outside any runtime, `install` starts the exporter on a thread of its own.
        std::thread::spawn(move || {
            PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .expect("the Prometheus exporter installs")
        })
        .join()
        .expect("the exporter thread");
        addr
    })
}

/// GET /metrics over plain HTTP/1.1: the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut last_error = None;
    for _ in 0..50 {
        match try_scrape(addr).await {
            Ok(body) => return body,
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot scrape http://{addr}/metrics: {last_error:?}");
}

async fn try_scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("answered {head}")));
    }
    Ok(body.to_owned())
}

/// The value of the sample `name` whose labels include every one of `labels`
/// (`key="value"`), if the scrape has it.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// Fails the first call of each chosen event with a transient error.
struct Flaky {
    fail_once: HashSet<EventId>,
    failed: Mutex<HashSet<EventId>>,
    handled: Mutex<HashSet<EventId>>,
}

#[async_trait]
impl StreamingEventHandler for Flaky {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        let id = envelope.event_id;
        if self.fail_once.contains(&id) && self.failed.lock().unwrap().insert(id) {
            return Err(HandlerError::transient("first attempt fails"));
        }
        self.handled.lock().unwrap().insert(id);
        Ok(())
    }

    fn name(&self) -> &str {
        HANDLER
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_what_the_consumer_and_publisher_did() {
    // Installed before the publisher and the consumer: their handles bind to it.
    let addr = endpoint();
    let server = NatsServer::start().await.unwrap();
    let mut cfg = config(5);
    cfg.stream.name = STREAM.to_owned();
    let client = connect(&server.url(), cfg).await;

    let events = workload(10, 5);
    let n = events.len() as u64;
    let fail_once: HashSet<EventId> = events.iter().step_by(5).map(|e| e.event_id).collect();
    let failures = fail_once.len() as u64;
    let publisher = client.publisher();
    let results: Vec<_> = publisher.publish_all(events.clone()).collect().await;
    assert!(results.iter().all(Result::is_ok), "every publish succeeds");
    // Publishing three again: the server answers them as duplicates.
    for e in &events[..3] {
        assert!(publisher.publish(e).await.unwrap().duplicate);
    }
    // An append whose expected version is stale fails, counted by its kind.
    let mut stale = events[0].clone();
    stale.event_id = person_events::EventId::new();
    let err = publisher
        .append(
            stale.aggregate_id,
            person_streaming::ExpectedVersion::NoEvents,
            &[stale],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), person_streaming::PublishErrorKind::Conflict);

    let handler = std::sync::Arc::new(Flaky {
        fail_once,
        failed: Mutex::default(),
        handled: Mutex::default(),
    });
    // One attempt in process: each failure is a NAK, and its event comes back redelivered.
    let mut manager = SubscriptionManager::new(client.clone()).with_options(
        SubscriptionOptions::default()
            .concurrency(4)
            .in_process_attempts(1),
    );
    manager.register_handler(handler.clone());
    let handle = manager.start_consumer(CONSUMER).await.unwrap();
    eventually(120, "every event handled", || handle.stats().processed == n).await;
    let stats = handle.stats();
    handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!(handler.handled.lock().unwrap().len() as u64, n);

    let body = scrape(addr).await;
    let ours = [("consumer", CONSUMER), ("handler", HANDLER)];
    let value = |name: &str| {
        sample(&body, name, &ours).unwrap_or_else(|| panic!("no {name}{ours:?} in:\n{body}"))
    };
    assert_eq!(value("person_events_handled_total"), n as f64);
    assert_eq!(value("person_events_retried_total"), failures as f64);
    assert_eq!(stats.retried, failures);
    assert_eq!(value("person_events_redelivered_total"), failures as f64);
    // Every handler call: N successes and the failed first attempts.
    assert_eq!(
        value("person_events_handler_duration_seconds_count"),
        (n + failures) as f64
    );
    assert_eq!(
        value("person_events_publish_to_handled_seconds_count"),
        n as f64
    );
    assert!(value("person_events_publish_to_handled_seconds_sum") > 0.0);
    for zero in [
        "person_events_dead_lettered_total",
        "person_events_parked_total",
        "person_events_breaker_transitions_total",
    ] {
        // A counter that never moved may be absent; present, it is zero.
        assert_eq!(sample(&body, zero, &ours).unwrap_or(0.0), 0.0, "{zero}");
    }
    // After shutdown nothing is held, running or waiting, and nothing is left to deliver.
    for gauge in [
        "person_events_in_hand",
        "person_events_in_flight",
        "person_events_waiting_lanes",
        "person_events_consumer_lag",
        "person_events_parked_people",
        "person_events_breaker_state",
    ] {
        assert_eq!(value(gauge), 0.0, "{gauge}");
    }

    let publish = [("stream", STREAM), ("operation", "publish")];
    let published = |name: &str| {
        sample(&body, name, &publish).unwrap_or_else(|| panic!("no {name}{publish:?} in:\n{body}"))
    };
    assert_eq!(published("person_events_published_total"), (n + 3) as f64);
    assert_eq!(published("person_events_publish_duplicates_total"), 3.0);
    assert_eq!(
        published("person_events_publish_duration_seconds_count"),
        (n + 3) as f64
    );
    let conflict = [
        ("stream", STREAM),
        ("operation", "append"),
        ("kind", "conflict"),
    ];
    assert_eq!(
        sample(&body, "person_events_publish_failed_total", &conflict),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "person_events_published_total",
            &[("stream", STREAM), ("operation", "append")]
        )
        .unwrap_or(0.0),
        0.0,
        "a failed append publishes nothing"
    );
}
