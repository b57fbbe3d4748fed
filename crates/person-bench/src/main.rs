//! End-to-end benchmarks: the product against raw `async-nats` doing the same work, in
//! one process, against one fresh file-storage server, pair by pair.
//!
//! Run with `cargo xtask bench` (release build) or `cargo xtask bench --quick`. Prints a
//! table and writes `target/bench/summary.json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use nats_harness::NatsServer;
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope, codec};
use person_metadata::EventMetadata;
use person_streaming::{ConsumerSettings, StreamingClient, StreamingConfig};
use person_subscriptions::{
    DomainResult, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};

mod cpu;
mod groups;
mod latency;
mod memory;

use cpu::{Meter, PerEvent};

struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
    target: &'static str,
    met: Option<bool>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, url, stream, n] = args.as_slice()
        && flag == memory::CHILD_FLAG
    {
        return memory::child(url, stream, n.parse()?).await;
    }
    if let [flag, url, stream, n] = args.as_slice()
        && flag == memory::PUBLISH_FLAG
    {
        return memory::publish_child(url, stream, n.parse()?).await;
    }
    if let [flag, url, stream] = args.as_slice()
        && flag == groups::CHILD_FLAG
    {
        return groups::child(url, stream).await;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // `--only NAME[,NAME]` runs just those figures (publish_pipelined, publish_sync,
    // consume, concurrency, latency, memory, groups), e.g. to profile one of them.
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let selected = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    let (events_n, reps) = if quick { (10_000, 3) } else { (100_000, 3) };
    let server = NatsServer::start().await.context("starting nats-server")?;
    println!(
        "server {} (file storage), {events_n} events per run, median of {reps}",
        server.url()
    );
    let mut figures = Vec::new();
    let pid = server.pid().map(|p| p.to_string()).unwrap_or_default();

    let window = 256;
    if selected("publish_pipelined") {
        // 1. Pipelined publish: product vs raw, same bytes, same in-flight window.
        let mut product = Vec::new();
        let mut raw = Vec::new();
        for rep in 0..reps {
            let client = fresh(&server, &format!("PUB{rep}"), window).await?;
            let events = workload(events_n, 1_000);
            let meter = Meter::start(&pid);
            let started = Instant::now();
            let results: Vec<_> = client.publisher().publish_all(events).collect().await;
            let elapsed = started.elapsed();
            anyhow::ensure!(results.iter().all(|r| r.is_ok()), "product publish failed");
            product.push(Side::of(events_n, elapsed, &meter));

            let client = fresh(&server, &format!("RAW{rep}"), window).await?;
            let prepared = prepare(workload(events_n, 1_000));
            let js = client.jetstream().clone();
            let meter = Meter::start(&pid);
            let started = Instant::now();
            raw_publish(&js, prepared, window).await?;
            raw.push(Side::of(events_n, started.elapsed(), &meter));
        }
        push_pair(
            &mut figures,
            "publish_pipelined",
            Side::median(product),
            Side::median(raw),
            0.95,
            ">= 0.95x raw",
        );
    }

    if selected("publish_sync") {
        // 6. Sync publish: await each ack.
        let sync_n = events_n / 20;
        let mut product = Vec::new();
        let mut raw = Vec::new();
        for rep in 0..reps {
            let client = fresh(&server, &format!("SYNC{rep}"), window).await?;
            let events = workload(sync_n, 100);
            let publisher = client.publisher();
            let meter = Meter::start(&pid);
            let started = Instant::now();
            for e in &events {
                publisher.publish(e).await?;
            }
            product.push(Side::of(sync_n, started.elapsed(), &meter));
            let client = fresh(&server, &format!("SYNCRAW{rep}"), window).await?;
            let prepared = prepare(workload(sync_n, 100));
            let meter = Meter::start(&pid);
            let started = Instant::now();
            for (subject, headers, payload) in prepared {
                client
                    .jetstream()
                    .publish_with_headers(subject, headers, payload)
                    .await?
                    .await?;
            }
            raw.push(Side::of(sync_n, started.elapsed(), &meter));
        }
        push_pair(
            &mut figures,
            "publish_sync",
            Side::median(product),
            Side::median(raw),
            0.9,
            ">= 0.9x raw (under 10% added)",
        );
    }

    if selected("consume") {
        // 2. Consume: product (no-op handler, ordering on, concurrency 8) vs raw messages()+ack().
        let mut product = Vec::new();
        let mut raw = Vec::new();
        // Raw again, decoding each body into the envelope as any handler of typed
        // events must: how much of the gap to bare raw is the JSON decode itself.
        let mut raw_decoding = Vec::new();
        for rep in 0..reps {
            let client = fresh(&server, &format!("CON{rep}"), window).await?;
            let _: Vec<_> = client
                .publisher()
                .publish_all(workload(events_n, 1_000))
                .collect()
                .await;
            let counter = Arc::new(Count::new(events_n as u64, Duration::ZERO));
            let mut manager = SubscriptionManager::new(client.clone()).with_options(
                SubscriptionOptions::default()
                    .concurrency(8)
                    .max_in_hand(1_000),
            );
            manager.register_handler(counter.clone());
            let meter = Meter::start(&pid);
            let handle = manager.start_consumer("bench").await?;
            let done = counter.finished().await;
            // From the first event handled to the last, on both sides: the steady
            // rate, not the start-up (the product's consumer checks and DLQ read).
            let first = *counter.first_at.get().context("no event handled")?;
            product.push(Side::between(events_n, first, done, &meter));
            handle.shutdown(Duration::from_secs(5)).await;

            let stream = client.jetstream().get_stream(format!("CON{rep}")).await?;
            raw.push(raw_consume(&stream, "raw", events_n, &pid, false).await?);
            raw_decoding.push(raw_consume(&stream, "raw_decoding", events_n, &pid, true).await?);
        }
        let product = Side::median(product);
        push_pair(
            &mut figures,
            "consume",
            product,
            Side::median(raw),
            0.95,
            ">= 0.95x raw",
        );
        let decoding = Side::median(raw_decoding);
        figures.push(Figure {
            name: "consume_raw_decoding",
            value: decoding.rate,
            unit: "events/s",
            ratio: Some(product.rate / decoding.rate),
            target: "report (ratio: product / this)",
            met: None,
        });
        figures.push(Figure {
            name: "consume_raw_decoding_cpu_us",
            value: decoding.cpu.client_us,
            unit: "µs/event",
            ratio: (decoding.cpu.client_us > 0.0)
                .then(|| product.cpu.client_us / decoding.cpu.client_us),
            target: "report (ratio: product / this)",
            met: None,
        });
    }

    if selected("concurrency") {
        // 3. Concurrency: 2 ms handlers over 1,000 people at concurrency 64, against the
        // ideal 64 / 2 ms; and, for contrast, the seed's design: one message at a time.
        let Run {
            rate,
            mean_sleep,
            startup,
        } = consume_rate(&server, "CONC", 10_000, 64, Duration::from_millis(2)).await?;
        let ideal = 64.0 / 0.002;
        figures.push(Figure {
            name: "concurrency_2ms_x64",
            value: rate,
            unit: "events/s",
            ratio: Some(rate / ideal),
            target: ">= 0.7x of 64/2ms",
            met: Some(rate / ideal >= 0.7),
        });
        // Against what the sleeps really took: the runtime's own share of the gap.
        let timer_ideal = 64.0 / mean_sleep;
        figures.push(Figure {
            name: "concurrency_vs_real_sleep",
            value: mean_sleep * 1e6,
            unit: "µs/sleep",
            ratio: Some(rate / timer_ideal),
            target: ">= 0.95x of 64 / measured sleep",
            met: Some(rate / timer_ideal >= 0.95),
        });
        figures.push(Figure {
            name: "concurrency_startup_ms",
            value: startup.as_secs_f64() * 1e3,
            unit: "ms",
            ratio: None,
            target: "report (start_consumer to the first call)",
            met: None,
        });
        let seq = consume_rate(&server, "SEQ", 500, 1, Duration::from_millis(2))
            .await?
            .rate;
        figures.push(Figure {
            name: "sequential_2ms_seed_design",
            value: seq,
            unit: "events/s",
            ratio: Some(rate / seq),
            target: "contrast (ratio: x64 speed-up)",
            met: None,
        });
    }

    if selected("latency") {
        // 4. Latency: publish to handled, at a steady 5,000 events/s.
        let secs = if quick { 5 } else { 20 };
        let (lat, raw) = latency::run(&server, 5_000, secs).await?;
        println!(
            "latency over {} events at 5,000/s: p50 {:.0} µs, p99 {:.0} µs (raw: p50 {:.0} µs, p99 {:.0} µs)",
            lat.samples, lat.p50_us, lat.p99_us, raw.p50_us, raw.p99_us
        );
        for (name, value, raw, max, target) in [
            (
                "latency_p50_at_5k_per_s",
                lat.p50_us,
                raw.p50_us,
                1.1,
                "<= 1.1x raw",
            ),
            (
                "latency_p99_at_5k_per_s",
                lat.p99_us,
                raw.p99_us,
                1.5,
                "<= 1.5x raw",
            ),
        ] {
            figures.push(Figure {
                name,
                value,
                unit: "µs",
                ratio: Some(value / raw),
                target,
                met: Some(value / raw <= max),
            });
            figures.push(Figure {
                name: leak(format!("{name}_raw")),
                value: raw,
                unit: "µs",
                ratio: None,
                target: "",
                met: None,
            });
        }
    }

    if selected("memory") {
        // 5. Memory: peak RSS of a consumer over a large stored backlog.
        let backlog_n = if quick { 100_000 } else { 1_000_000 };
        let backlog = memory::run(&server, backlog_n).await?;
        figures.push(Figure {
            name: leak(format!("consumer_peak_rss_{}k_backlog", backlog_n / 1_000)),
            value: backlog.consumer.peak_rss_mib,
            unit: "MiB",
            ratio: None,
            target: "<= 50 MB",
            met: Some(backlog.consumer.peak_rss_mib * 1.048_576 <= 50.0),
        });
        figures.push(Figure {
            name: "consumer_backlog_rate",
            value: backlog.consumer.rate,
            unit: "events/s",
            ratio: None,
            target: "",
            met: None,
        });
        // Bounded: publish_all holds its window of acks and a few built chunks, not
        // the input; the figure must not grow with the backlog.
        figures.push(Figure {
            name: leak(format!("publisher_peak_rss_{}k_events", backlog_n / 1_000)),
            value: backlog.publisher.peak_rss_mib,
            unit: "MiB",
            ratio: None,
            target: "report (bounded)",
            met: None,
        });
        figures.push(Figure {
            name: "publisher_backlog_rate",
            value: backlog.publisher.rate,
            unit: "events/s",
            ratio: None,
            target: "",
            met: None,
        });
    }

    if selected("groups") {
        // 7. Consumer groups: one instance against three at the same per-instance
        // concurrency, 2 ms handlers; then how long a killed instance's partitions
        // take to move.
        let g = groups::run(&server, quick).await?;
        println!(
            "groups: {} partitions, concurrency {} per instance, 2 ms handlers; one instance {:.0}/s, three {:.0}/s; CPU per event with three: server {:.0} µs, instances {:.0} µs; partitions moved {:.1} s after a SIGKILL (lease {:?})",
            groups::PARTITIONS,
            groups::CONCURRENCY,
            g.one.rate,
            g.three.rate,
            g.three.server_us,
            g.three.client_us,
            g.rebalance.as_secs_f64(),
            groups::LEASE
        );
        figures.push(Figure {
            name: "group_one_instance",
            value: g.one.rate,
            unit: "events/s",
            ratio: None,
            target: "",
            met: None,
        });
        figures.push(Figure {
            name: "group_three_instances",
            value: g.three.rate,
            unit: "events/s",
            ratio: Some(g.three.rate / g.one.rate),
            target: ">= 2.5x one instance",
            met: Some(g.three.rate / g.one.rate >= 2.5),
        });
        for (name, value) in [
            ("group_server_cpu_us_per_event", g.three.server_us),
            ("group_client_cpu_us_per_event", g.three.client_us),
        ] {
            figures.push(Figure {
                name,
                value,
                unit: "µs",
                ratio: None,
                target: "report (three instances)",
                met: None,
            });
        }
        figures.push(Figure {
            name: "group_rebalance_after_kill_ms",
            value: g.rebalance.as_secs_f64() * 1e3,
            unit: "ms",
            ratio: Some(g.rebalance.as_secs_f64() / groups::LEASE.as_secs_f64()),
            target: "<= 2x lease (ratio: x lease)",
            met: Some(g.rebalance <= groups::LEASE * 2),
        });
    }

    report(&figures)?;
    drop(server);
    Ok(())
}

async fn consume_rate(
    server: &NatsServer,
    stream: &str,
    n: usize,
    concurrency: usize,
    delay: Duration,
) -> Result<Run> {
    let client = fresh(server, stream, 256).await?;
    let _: Vec<_> = client
        .publisher()
        .publish_all(workload(n, 1_000))
        .collect()
        .await;
    let counter = Arc::new(Count::new(n as u64, delay));
    let mut manager = SubscriptionManager::new(client.clone()).with_options(
        SubscriptionOptions::default()
            .concurrency(concurrency)
            .max_in_hand(1_000),
    );
    manager.register_handler(counter.clone());
    let started = Instant::now();
    let handle = manager.start_consumer("bench").await?;
    let done = counter.finished().await;
    // From the first handler call's start to the last call's end: every event's whole
    // call is inside, and the start-up (consumer checks, the DLQ read, the first
    // pull) is reported on its own.
    let first = *counter.first_call_at.get().context("no event handled")?;
    let rate = n as f64 / (done - first).as_secs_f64();
    handle.shutdown(Duration::from_secs(5)).await;
    let mean_sleep = counter.slept_us.load(Ordering::Relaxed) as f64 / 1e6 / n as f64;
    Ok(Run {
        rate,
        mean_sleep,
        startup: first - started,
    })
}

/// One run of [`consume_rate`].
struct Run {
    /// Events per second, from the first call's start to the last call's end.
    rate: f64,
    /// The mean time a handler's sleep really took, in seconds.
    mean_sleep: f64,
    /// From `start_consumer` to the first handler call.
    startup: Duration,
}

/// A handler that counts (optionally after sleeping) and notes when the `target`-th event
/// was handled, so a run's end time is exact rather than a poll's.
struct Count {
    handled: AtomicU64,
    delay: Duration,
    slept_us: AtomicU64,
    target: u64,
    done_at: std::sync::OnceLock<Instant>,
    first_at: std::sync::OnceLock<Instant>,
    first_call_at: std::sync::OnceLock<Instant>,
    done: tokio::sync::Notify,
}

impl Count {
    fn new(target: u64, delay: Duration) -> Self {
        Self {
            handled: AtomicU64::new(0),
            delay,
            slept_us: AtomicU64::new(0),
            target,
            done_at: std::sync::OnceLock::new(),
            first_at: std::sync::OnceLock::new(),
            first_call_at: std::sync::OnceLock::new(),
            done: tokio::sync::Notify::new(),
        }
    }

    /// Waits for the `target`-th event and returns when it was handled.
    async fn finished(&self) -> Instant {
        loop {
            if let Some(at) = self.done_at.get() {
                return *at;
            }
            // A bounded wait: the notification may have fired before we waited.
            let _ = tokio::time::timeout(Duration::from_millis(50), self.done.notified()).await;
        }
    }
}

#[async_trait]
impl StreamingEventHandler for Count {
    async fn handle_event(&self, _envelope: StreamingEventEnvelope) -> DomainResult<()> {
        if self.first_call_at.get().is_none() {
            let _ = self.first_call_at.set(Instant::now());
        }
        if !self.delay.is_zero() {
            // The time a 2 ms sleep really takes (tokio's timer has 1 ms resolution).
            let slept = Instant::now();
            tokio::time::sleep(self.delay).await;
            self.slept_us
                .fetch_add(slept.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        let handled = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
        if handled == 1 {
            let _ = self.first_at.set(Instant::now());
        }
        if handled == self.target {
            let _ = self.done_at.set(Instant::now());
            self.done.notify_one();
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "count"
    }
}

/// A fresh stream (and a "bench" consumer) per run, so runs do not share state.
async fn fresh(server: &NatsServer, stream: &str, window: usize) -> Result<StreamingClient> {
    clear(server).await?;
    Ok(StreamingClient::new(&server.url(), bench_config(stream, window)).await?)
}

/// Deletes every stream: one stream owns person.events.> at a time.
async fn clear(server: &NatsServer) -> Result<()> {
    let bare = async_nats::connect(server.url()).await?;
    let js = jetstream::new(bare);
    let mut names = js.stream_names();
    let mut old = Vec::new();
    while let Some(n) = names.next().await {
        old.push(n?);
    }
    for n in old {
        js.delete_stream(&n).await?;
    }
    Ok(())
}

/// The benchmark's configuration: one stream, its DLQ and a "bench" consumer.
fn bench_config(stream: &str, window: usize) -> StreamingConfig {
    let mut config = StreamingConfig::default();
    config.stream.name = stream.to_owned();
    config.stream.subjects = vec!["person.events.>".into()];
    config.dlq.name = format!("{stream}_DLQ");
    config.dlq.subjects = vec![format!("person.dlq.{}.>", stream.to_lowercase())];
    config.publisher.max_in_flight = window;
    let mut c = ConsumerSettings::new("bench", &["person.events.>"], "benchmark consumer");
    c.max_ack_pending = 1_000;
    config.consumers = vec![c];
    config
}

fn workload(n: usize, people: usize) -> Vec<StreamingEventEnvelope> {
    workload_iter(n, people).collect()
}

/// `n` realistic events over `people` people, generated lazily (for the large backlogs).
fn workload_iter(
    n: usize,
    people: usize,
) -> impl Iterator<Item = StreamingEventEnvelope> + Send + 'static {
    let ids: Vec<PersonId> = (0..people).map(|_| PersonId::new()).collect();
    let name = PersonName::new("Jane", Some("Q"), "Doe").expect("name");
    (0..n).map(move |i| {
        let person_id = ids[i % people];
        StreamingEventEnvelope::new(
            person_id,
            (i / people) as u64 + 1,
            PersonEventV2::NameUpdated {
                person_id,
                old_name: name.clone(),
                new_name: name.clone(),
                change_reason: Some("benchmark".into()),
                metadata: EventMetadata::new().with_actor("bench"),
            },
        )
    })
}

/// The same bytes and headers the product sends (13 headers with `Nats-Msg-Id`), built
/// ahead of time for the raw runs.
fn prepare(events: Vec<StreamingEventEnvelope>) -> Vec<(String, async_nats::HeaderMap, Bytes)> {
    events
        .into_iter()
        .map(|e| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.event_id.to_string().as_str());
            let person = e.aggregate_id.to_string();
            person_metadata::headers::write_headers(
                e.metadata(),
                &person_metadata::headers::CloudEventAttributes {
                    id: e.event_id,
                    source: "/person-domain",
                    event_type: e.event.event_type(),
                    subject: Some(&person),
                },
                |n, v| headers.insert(n, v),
            );
            (
                e.subject(),
                headers,
                Bytes::from(codec::encode(&e).expect("encode")),
            )
        })
        .collect()
}

async fn raw_publish(
    js: &jetstream::Context,
    prepared: Vec<(String, async_nats::HeaderMap, Bytes)>,
    window: usize,
) -> Result<()> {
    let mut pending = futures::stream::FuturesOrdered::new();
    for (subject, headers, payload) in prepared {
        let ack = js.publish_with_headers(subject, headers, payload).await?;
        pending.push_back(ack.into_future());
        if pending.len() >= window {
            pending.next().await.context("ack")??;
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

/// The best raw consumer: a durable `name` on `stream`, `messages()` and one ack per
/// message, optionally decoding each body into the envelope first.
async fn raw_consume(
    stream: &jetstream::stream::Stream,
    name: &str,
    events_n: usize,
    pid: &str,
    decode: bool,
) -> Result<Side> {
    let c = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 1_000,
            ..Default::default()
        })
        .await?;
    let meter = Meter::start(pid);
    let started = Instant::now();
    let mut messages = c.messages().await?;
    let mut n = 0;
    let mut first = started;
    while n < events_n {
        let m = messages.next().await.context("stream ended")??;
        if n == 0 {
            first = Instant::now();
        }
        if decode {
            let envelope = person_events::codec::decode(&m.payload)?;
            std::hint::black_box(envelope);
        }
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        n += 1;
    }
    Ok(Side::between(events_n, first, Instant::now(), &meter))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One side of a pair in one run: its rate and the CPU time each event cost.
#[derive(Debug, Clone, Copy)]
struct Side {
    rate: f64,
    cpu: PerEvent,
}

impl Side {
    fn of(events: usize, took: Duration, meter: &Meter) -> Self {
        Self {
            rate: events as f64 / took.as_secs_f64(),
            cpu: meter.per_event(events),
        }
    }

    /// `events` handled from the first, at `first`, to the last, at `last`.
    fn between(events: usize, first: Instant, last: Instant, meter: &Meter) -> Self {
        Self {
            rate: (events.saturating_sub(1)) as f64 / (last - first).as_secs_f64(),
            cpu: meter.per_event(events),
        }
    }

    /// The median of each figure over the runs.
    fn median(runs: Vec<Side>) -> Side {
        Side {
            rate: median(runs.iter().map(|r| r.rate).collect()),
            cpu: PerEvent {
                client_us: median(runs.iter().map(|r| r.cpu.client_us).collect()),
                server_us: median(runs.iter().map(|r| r.cpu.server_us).collect()),
            },
        }
    }
}

/// The rate figures of a pair (`name`, ratio product / raw, met when at least `min`)
/// and its CPU figures: this process's and the server's CPU time per event, product
/// against raw (ratio product / raw: lower is better).
fn push_pair(
    figures: &mut Vec<Figure>,
    name: &'static str,
    product: Side,
    raw: Side,
    min: f64,
    target: &'static str,
) {
    figures.push(Figure {
        name,
        value: product.rate,
        unit: "events/s",
        ratio: Some(product.rate / raw.rate),
        target,
        met: Some(product.rate / raw.rate >= min),
    });
    figures.push(Figure {
        name: leak(format!("{name}_raw")),
        value: raw.rate,
        unit: "events/s",
        ratio: None,
        target: "",
        met: None,
    });
    for (what, p, r) in [
        ("cpu_us", product.cpu.client_us, raw.cpu.client_us),
        ("server_cpu_us", product.cpu.server_us, raw.cpu.server_us),
    ] {
        figures.push(Figure {
            name: leak(format!("{name}_{what}")),
            value: p,
            unit: "µs/event",
            ratio: (r > 0.0).then(|| p / r),
            target: "report (ratio: x raw)",
            met: None,
        });
        figures.push(Figure {
            name: leak(format!("{name}_{what}_raw")),
            value: r,
            unit: "µs/event",
            ratio: None,
            target: "",
            met: None,
        });
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn report(figures: &[Figure]) -> Result<()> {
    println!(
        "\n{:<38} {:>10} {:<10} {:>7}  {:<28}",
        "figure", "value", "unit", "ratio", "target"
    );
    let mut json = Vec::new();
    for f in figures {
        let ratio = f.ratio.map_or(String::new(), |r| format!("{r:.2}"));
        let met = match f.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        let digits = usize::from(f.unit == "µs/event");
        println!(
            "{:<38} {:>10.digits$} {:<10} {:>7}  {:<28} {met}",
            f.name, f.value, f.unit, ratio, f.target
        );
        json.push(serde_json::json!({"name": f.name, "value": f.value, "unit": f.unit, "ratio": f.ratio, "target": f.target, "met": f.met}));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("\nwritten to target/bench/summary.json");
    Ok(())
}
