//! One member of a consumer group, as its own process, for the end-to-end group tests
//! (`e2e/groups.rs`). It joins the group of `GROUP_CONSUMER` and writes one line per
//! handler call start and end to `GROUP_LOG`, flushed before the call returns, so a
//! test can rebuild who handled what when, even after a SIGKILL:
//!
//! - `S <unix ns> <person> <version> <event id>`: a call starts;
//! - `E <unix ns> <person> <version> <event id> ok|err`: it ended;
//! - `X <unix ns> <person> <version> <event id>`: a call was cancelled midway;
//! - `P <unix ns> <partitions, comma-separated>`: what this instance runs (every 100 ms);
//! - `B <unix ns> <consumer> <state>`: a breaker not closed (every 100 ms while so).
//!
//! Settings come from the environment: `GROUP_NATS_URL`, `GROUP_CONFIG` (a JSON
//! streaming configuration), `GROUP_CONSUMER`, `GROUP_LOG`, `GROUP_FAIL_EVERY` (an
//! event whose id hashes to 0 modulo it fails once per process, transiently),
//! `GROUP_HANDLE_MS` (each call's duration), `GROUP_LEASE_MS`, `GROUP_ACK_WAIT_S`.
//! It prints `ready <instance>` once joined, and leaves the group gracefully when its
//! standard input closes.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use person_events::StreamingEventEnvelope;
use person_streaming::{StreamingClient, StreamingConfig};
use person_subscriptions::{
    DomainResult, HandlerError, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse().unwrap_or_else(|_| panic!("{name}: {v:?}"))
    })
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

struct Log(Mutex<std::fs::File>);

impl Log {
    fn line(&self, text: String) {
        let mut f = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.write_all(text.as_bytes()).expect("the log is writable");
    }
}

struct Cancelled<'a> {
    log: &'a Log,
    who: Option<String>,
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(who) = self.who.take() {
            self.log.line(format!("X {} {who}\n", unix_ns()));
        }
    }
}

struct Recorder {
    log: Arc<Log>,
    fail_every: u64,
    handle: Duration,
    failed: Mutex<HashSet<String>>,
}

#[async_trait]
impl StreamingEventHandler for Recorder {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        let id = envelope.event_id.to_string();
        let who = format!("{} {} {id}", envelope.aggregate_id, envelope.sequence);
        self.log.line(format!("S {} {who}\n", unix_ns()));
        // A call cancelled midway (its partition fenced) says when it ended.
        let mut guard = Cancelled {
            log: &self.log,
            who: Some(who.clone()),
        };
        tokio::time::sleep(self.handle).await;
        guard.who = None;
        let hash = id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let fail = self.fail_every > 0
            && hash % self.fail_every == 0
            && self.failed.lock().unwrap().insert(id.clone());
        let outcome = if fail { "err" } else { "ok" };
        self.log.line(format!("E {} {who} {outcome}\n", unix_ns()));
        if fail {
            return Err(HandlerError::transient("fails once on purpose"));
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "recorder"
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let config = StreamingConfig::from_file(env("GROUP_CONFIG")).expect("a valid configuration");
    let client = StreamingClient::builder(env("GROUP_NATS_URL"))
        .connect(config)
        .await
        .expect("connected");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env("GROUP_LOG"))
        .expect("the log opens");
    let log = Arc::new(Log(Mutex::new(file)));
    let options = SubscriptionOptions::default()
        .group_lease(Duration::from_millis(env_u64("GROUP_LEASE_MS", 2_000)))
        .handover_grace(Duration::from_secs(5))
        .fetch_expiry(Duration::from_millis(500));
    let mut manager = SubscriptionManager::new(client).with_options(options);
    manager.register_handler(Arc::new(Recorder {
        log: log.clone(),
        fail_every: env_u64("GROUP_FAIL_EVERY", 0),
        handle: Duration::from_millis(env_u64("GROUP_HANDLE_MS", 1)),
        failed: Mutex::default(),
    }));
    let handle = manager
        .start_group(&env("GROUP_CONSUMER"))
        .await
        .expect("joined the group");
    println!("ready {}", handle.instance());
    let handle = Arc::new(handle);
    let reporter = {
        let handle = handle.clone();
        let log = log.clone();
        tokio::spawn(async move {
            loop {
                let parts: Vec<String> = handle.partitions().iter().map(u32::to_string).collect();
                log.line(format!("P {} {}\n", unix_ns(), parts.join(",")));
                for (consumer, state) in handle.breaker_states() {
                    if format!("{state:?}") != "Closed" {
                        log.line(format!("B {} {consumer} {state:?}\n", unix_ns()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Standard input closing is the signal to leave.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await
    .expect("stdin reader");
    reporter.abort();
    let _ = reporter.await;
    let handle = Arc::into_inner(handle).expect("the only handle left");
    handle.shutdown(Duration::from_secs(5)).await;
    log.line(format!("L {}\n", unix_ns()));
    println!("left");
}
