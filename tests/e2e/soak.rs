//! Soak: steady publishing and consuming with 1% transient handler failures, for
//! `RELIABILITY_SOAK_SECS` seconds (default 60; `cargo xtask soak --minutes N` sets it).
//!
//! The publisher and the consumer each run in their own child process (this same test
//! binary, re-run with `PERSON_SOAK_ROLE`), so each one's RSS (`VmRSS` from
//! `/proc/self/status`) is its own and not that of the other tests running in this
//! process. The parent starts the server, runs both, and checks what they report:
//! everything published is handled, memory stays flat after warm-up within
//! [`RSS_MARGIN_KIB`], and the consumer leaks no task: its in-flight and in-hand counts
//! return to 0 and the runtime's live task count returns to where it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nats_harness::NatsServer;
use person_subscriptions::{HandlerError, SubscriptionManager, SubscriptionOptions};

use crate::support::{
    CONSUMER, Projection, ProjectionHandler, Row, config, connect, eventually, record, workload,
};

const ROLE_ENV: &str = "PERSON_SOAK_ROLE";
const URL_ENV: &str = "PERSON_SOAK_URL";
const DIR_ENV: &str = "PERSON_SOAK_DIR";
/// How long to publish, in seconds.
pub(crate) const SECS_ENV: &str = "RELIABILITY_SOAK_SECS";
const TEST_NAME: &str = "soak::steady_load_keeps_memory_flat_and_leaks_no_tasks";
/// Allowed RSS growth after warm-up. The consumer's test projection keeps every event
/// id it applied (about 50 bytes per event, under 1.5 MiB per minute at this rate);
/// the rest is the margin for allocator noise.
const RSS_MARGIN_KIB: u64 = 32 * 1024;
/// Events per publish round, and rounds per second.
const BATCH: usize = 40;
const ROUNDS_PER_SEC: u64 = 10;

fn soak_secs() -> u64 {
    std::env::var(SECS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// This process's resident set size, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Report {
    published: u64,
    handled: u64,
    absorbed: u64,
    retried: u64,
    dead_lettered: u64,
    in_flight_end: u64,
    in_hand_end: u64,
    tasks_before: usize,
    tasks_after: usize,
    rss_kib: Vec<u64>,
}

fn write_report(dir: &Path, name: &str, report: &Report) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(report).unwrap()).unwrap();
    std::fs::rename(tmp, dir.join(format!("{name}.json"))).unwrap();
}

fn read_report(dir: &Path, name: &str) -> Option<Report> {
    let text = std::fs::read(dir.join(format!("{name}.json"))).ok()?;
    Some(serde_json::from_slice(&text).unwrap())
}

/// Samples RSS once a second until `stop` is set.
fn sampler(stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            tick.tick().await;
            samples.push(rss_kib());
        }
        samples
    })
}

async fn publisher_role(url: &str, dir: &Path) {
    let client = connect(url, config(5)).await;
    let publisher = client.publisher();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let samples = sampler(stop.clone());
    let rounds = soak_secs() * ROUNDS_PER_SEC;
    let mut tick = tokio::time::interval(Duration::from_millis(1_000 / ROUNDS_PER_SEC));
    let mut published = 0u64;
    for _ in 0..rounds {
        tick.tick().await;
        let batch = workload(BATCH, 1);
        let results: Vec<_> = futures::StreamExt::collect(publisher.publish_all(batch)).await;
        for r in results {
            r.unwrap_or_else(|e| panic!("publish failed: {e}"));
            published += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let rss_kib = samples.await.unwrap();
    write_report(
        dir,
        "publisher",
        &Report {
            published,
            rss_kib,
            ..Report::default()
        },
    );
}

async fn consumer_role(url: &str, dir: &Path) {
    let client = connect(url, config(5)).await;
    let projection = Arc::new(Projection::default());
    // 1% of events fail transiently on their first attempt.
    let handler = ProjectionHandler::new(projection.clone()).failing(|env, attempt| {
        (attempt == 1 && env.event_id.as_uuid().as_u128() % 100 == 0)
            .then(|| HandlerError::transient("injected transient failure"))
    });
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let samples = sampler(stop.clone());
    let mut manager = SubscriptionManager::new(client.clone())
        .with_options(SubscriptionOptions::default().concurrency(32));
    manager.register_handler(Arc::new(handler));
    let handle = manager.start_consumer(CONSUMER).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(soak_secs() + 600);
    let published = loop {
        if let Some(p) = read_report(dir, "publisher") {
            break p.published;
        }
        assert!(Instant::now() < deadline, "the publisher never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eventually(600, "every published event handled", || {
        projection.distinct() >= published
    })
    .await;
    eventually(60, "nothing in flight or in hand", || {
        let s = handle.stats();
        s.in_flight == 0 && s.in_hand == 0
    })
    .await;
    let stats = handle.stats();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let rss_kib = samples.await.unwrap();
    handle.shutdown(Duration::from_secs(10)).await;
    // Every task the consumer started has ended (polled: aborted tasks end when the
    // runtime next runs them).
    let mut tasks_after = metrics.num_alive_tasks();
    for _ in 0..600 {
        if tasks_after <= tasks_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        tasks_after = metrics.num_alive_tasks();
    }
    write_report(
        dir,
        "consumer",
        &Report {
            published,
            handled: projection.distinct(),
            absorbed: projection.absorbed(),
            retried: stats.retried,
            dead_lettered: stats.dead_lettered,
            in_flight_end: stats.in_flight,
            in_hand_end: stats.in_hand,
            tasks_before,
            tasks_after,
            rss_kib,
        },
    );
    drop(client);
}

/// (baseline, peak) in KiB: the baseline is the median of the samples after warm-up
/// (the first quarter, at least 5 s), the peak the largest of the last half.
fn flatness(samples: &[u64]) -> (u64, u64) {
    let warm = (samples.len() / 4)
        .max(5)
        .min(samples.len().saturating_sub(2));
    let rest = &samples[warm..];
    let half = rest.len() / 2;
    let mut first: Vec<u64> = rest[..half.max(1)].to_vec();
    first.sort_unstable();
    let baseline = first[first.len() / 2];
    let peak = rest[half..].iter().copied().max().unwrap_or(baseline);
    (baseline, peak)
}

async fn child(role: &str, url: &str, dir: &Path) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(URL_ENV, url)
        .env(DIR_ENV, dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_keeps_memory_flat_and_leaks_no_tasks() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let url = std::env::var(URL_ENV).unwrap();
        let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
        match role.as_str() {
            "publisher" => publisher_role(&url, &dir).await,
            "consumer" => consumer_role(&url, &dir).await,
            other => panic!("unknown soak role {other}"),
        }
        return;
    }
    let started = Instant::now();
    let secs = soak_secs();
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    // Streams and the consumer exist before either child starts.
    let client = connect(&url, config(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let consumer = child("consumer", &url, dir.path()).await;
    let publisher = child("publisher", &url, dir.path()).await;
    let (publisher, consumer) =
        tokio::join!(publisher.wait_with_output(), consumer.wait_with_output());
    for (role, out) in [
        ("publisher", publisher.unwrap()),
        ("consumer", consumer.unwrap()),
    ] {
        assert!(
            out.status.success(),
            "the {role} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let p = read_report(dir.path(), "publisher").unwrap();
    let c = read_report(dir.path(), "consumer").unwrap();

    assert_eq!(p.published, secs * ROUNDS_PER_SEC * BATCH as u64);
    assert_eq!(c.handled, p.published, "events lost");
    assert_eq!(c.dead_lettered, 0);
    assert!(c.retried >= 1, "the injected failures were retried");
    assert_eq!(
        (c.in_flight_end, c.in_hand_end),
        (0, 0),
        "work left in flight"
    );
    assert!(
        c.tasks_after <= c.tasks_before,
        "tasks leaked: {} alive before the consumer started, {} after it stopped",
        c.tasks_before,
        c.tasks_after
    );
    let mut notes = Vec::new();
    for (role, samples) in [("publisher", &p.rss_kib), ("consumer", &c.rss_kib)] {
        assert!(
            samples.len() >= 10,
            "{role}: only {} RSS samples",
            samples.len()
        );
        let (baseline, peak) = flatness(samples);
        assert!(
            peak <= baseline + RSS_MARGIN_KIB,
            "{role}: RSS grew from {baseline} KiB to {peak} KiB, more than {RSS_MARGIN_KIB} KiB"
        );
        notes.push(format!(
            "{role} RSS {} MiB after warm-up, peak {} MiB later ({} samples)",
            baseline / 1024,
            peak / 1024,
            samples.len()
        ));
    }
    assert_eq!(crate::support::dlq_messages(&client).await, 0);
    record(
        Row {
            case: "soak",
            area: "soak",
            what: format!(
                "{secs} s of steady publishing ({} events/s) and consuming (concurrency 32), publisher and consumer in separate processes",
                ROUNDS_PER_SEC * BATCH as u64
            ),
            load: format!("{} events", p.published),
            faults: format!("1% transient handler failures ({} retries)", c.retried),
            inputs: p.published,
            lost: p.published - c.handled,
            duplicated: 0,
            absorbed: c.absorbed,
            notes: format!(
                "{}; margin {} MiB; in flight at the end: 0; live tasks {} before, {} after",
                notes.join("; "),
                RSS_MARGIN_KIB / 1024,
                c.tasks_before,
                c.tasks_after
            ),
            ..Row::default()
        },
        started,
    );
}
