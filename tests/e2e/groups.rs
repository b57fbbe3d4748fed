//! Consumer groups across processes: instances of one partitioned consumer, each its
//! own `group-instance` process, on a 3-node cluster with R3 streams. One case kills
//! an instance with SIGKILL midway and starts another; one restarts every instance in
//! turn. Each rebuilds from the instances' logs who handled what when, and checks:
//!
//! - every event is handled;
//! - per person, the first successful handling of each event follows stream order,
//!   across instances;
//! - no person is ever handled by two calls at once, on one instance or two;
//! - an event is handled successfully twice only if the killed instance had started
//!   it (its unacknowledged window); never after graceful restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nats_harness::NatsCluster;
use person_events::PersonId;
use person_streaming::StreamingConfig;

use crate::support::{connect, event, fast_retry, publish_all};

const GROUP: &str = "person-projection-summary";
const PARTITIONS: u32 = 6;

fn group_config() -> StreamingConfig {
    let mut cfg = StreamingConfig::default();
    cfg.consumers.retain(|c| c.durable_name == GROUP);
    cfg.stream.replicas = 3;
    cfg.dlq.replicas = 3;
    cfg.publisher.ack_timeout_ms = 2_000;
    cfg.publisher.retry = fast_retry(30);
    let c = &mut cfg.consumers[0];
    c.ack_wait_secs = 4;
    c.max_ack_pending = 64;
    c.retry = fast_retry(8);
    c.max_deliver = 8;
    cfg.with_partitions(GROUP, PARTITIONS)
        .expect("a valid group configuration")
}

struct Instance {
    name: String,
    child: Child,
    log: PathBuf,
}

fn spawn(url: &str, config: &Path, log: &Path, handle_ms: u64) -> Instance {
    let mut child = Command::new(env!("CARGO_BIN_EXE_group-instance"))
        .env("GROUP_NATS_URL", url)
        .env("GROUP_CONFIG", config)
        .env("GROUP_CONSUMER", GROUP)
        .env("GROUP_LOG", log)
        .env("GROUP_FAIL_EVERY", "10")
        .env("GROUP_HANDLE_MS", handle_ms.to_string())
        .env("GROUP_LEASE_MS", "4000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the group-instance binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("it says it is ready");
    if !line.starts_with("ready ") {
        let status = child.wait();
        panic!(
            "an instance did not start: its first line is {line:?}, and it exited with {status:?} (its error is on stderr above)"
        );
    }
    let name = line
        .strip_prefix("ready ")
        .expect("checked")
        .trim()
        .to_owned();
    Instance {
        name,
        child,
        log: log.to_owned(),
    }
}

impl Instance {
    /// Leaves the group gracefully: closes its standard input and waits for its exit.
    fn stop(mut self) -> PathBuf {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("the instance exits");
        assert!(
            status.success(),
            "instance {} exited with {status}",
            self.name
        );
        self.log
    }

    /// SIGKILL; returns when it is gone, with the time it was killed.
    fn kill(mut self) -> (PathBuf, u128) {
        let at = unix_ns();
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        (self.log, at)
    }
}

/// Calls started and not (yet) ended in one instance's log.
fn open_calls(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut started, mut ended) = (0usize, 0usize);
    for line in text.lines() {
        match line.as_bytes().first() {
            Some(b'S') => started += 1,
            Some(b'E' | b'X') => ended += 1,
            _ => {}
        }
    }
    started.saturating_sub(ended)
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One handler call as the logs show it.
#[derive(Debug, Clone)]
struct Call {
    log: usize,
    person: String,
    version: u64,
    event: String,
    start: u128,
    /// None: never ended (the process was killed, or the call was cancelled).
    end: Option<(u128, bool)>,
}

/// Every call in the logs, and each log's partition reports `(time, partitions)`.
/// What one instance reported running, over time: `(time, partitions)`.
type Reports = Vec<(u128, Vec<u32>)>;

fn read_logs(logs: &[PathBuf]) -> (Vec<Call>, Vec<Reports>) {
    let mut calls = Vec::new();
    let mut reports = Vec::new();
    for (i, path) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut open: HashMap<String, usize> = HashMap::new();
        let mut mine = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["S", t, person, version, id] => {
                    open.insert((*id).to_owned(), calls.len());
                    calls.push(Call {
                        log: i,
                        person: (*person).to_owned(),
                        version: version.parse().unwrap(),
                        event: (*id).to_owned(),
                        start: t.parse().unwrap(),
                        end: None,
                    });
                }
                ["E", t, _, _, id, outcome] => {
                    let at = open.remove(*id).expect("an end follows its start");
                    calls[at].end = Some((t.parse().unwrap(), *outcome == "ok"));
                }
                ["X", t, _, _, id] => {
                    let at = open.remove(*id).expect("a cancel follows its start");
                    calls[at].end = Some((t.parse().unwrap(), false));
                }
                ["P", t, parts] => mine.push((
                    t.parse().unwrap(),
                    parts.split(',').filter_map(|p| p.parse().ok()).collect(),
                )),
                ["P", t] => mine.push((t.parse().unwrap(), Vec::new())),
                ["L", _] => {}
                // A SIGKILL can cut the last line short.
                _ => {}
            }
        }
        reports.push(mine);
    }
    (calls, reports)
}

fn handled(logs: &[PathBuf]) -> usize {
    let (calls, _) = read_logs(logs);
    calls
        .iter()
        .filter(|c| matches!(c.end, Some((_, true))))
        .map(|c| c.event.as_str())
        .collect::<HashSet<_>>()
        .len()
}

/// The checks every case makes; `killed` is the killed log and when it was killed.
fn check(
    logs: &[PathBuf],
    expected: &HashMap<String, (String, u64)>,
    killed: Option<(usize, u128)>,
) -> Summary {
    let (calls, _) = read_logs(logs);
    // Every event handled.
    let mut ok: HashMap<&str, Vec<&Call>> = HashMap::new();
    for c in &calls {
        if matches!(c.end, Some((_, true))) {
            ok.entry(c.event.as_str()).or_default().push(c);
        }
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|id| !ok.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events never handled, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // First successful handling in stream order, per person.
    let mut firsts: BTreeMap<&str, Vec<(u64, u128)>> = BTreeMap::new();
    for (id, cs) in &ok {
        let first = cs.iter().map(|c| c.end.unwrap().0).min().unwrap();
        let (person, version) = &expected[*id];
        firsts
            .entry(person.as_str())
            .or_default()
            .push((*version, first));
    }
    for (person, mut v) in firsts {
        v.sort();
        for w in v.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "person {person}: version {} was first handled after version {}; their calls:\n{}",
                w[0].0,
                w[1].0,
                history(&calls, person)
            );
        }
    }

    // No person in two calls at once. A call that never ended ended when its
    // process was killed; on a live process every call ends.
    let mut by_person: HashMap<&str, Vec<(u128, u128, usize)>> = HashMap::new();
    for c in &calls {
        let end = match (c.end, killed) {
            (Some((t, _)), _) => t,
            (None, Some((log, at))) if log == c.log => at,
            (None, _) => panic!("a call on a live instance never ended: {c:?}"),
        };
        by_person
            .entry(c.person.as_str())
            .or_default()
            .push((c.start, end, c.log));
    }
    for (person, mut spans) in by_person {
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "person {person} was handled by two calls at once (logs {} and {}): {:?}",
                w[0].2,
                w[1].2,
                w
            );
        }
    }

    // Repeats only from the killed instance's window.
    let mut repeats = 0;
    for (id, cs) in &ok {
        if cs.len() > 1 {
            repeats += cs.len() - 1;
            let from_killed =
                killed.is_some_and(|(log, _)| calls.iter().any(|c| c.log == log && c.event == *id));
            assert!(
                from_killed,
                "event {id} was handled {} times, and not by the killed instance",
                cs.len()
            );
        }
    }
    let failures = calls
        .iter()
        .filter(|c| matches!(c.end, Some((_, false))))
        .count();
    Summary {
        repeats,
        failures,
        calls: calls.len(),
    }
}

/// A person's calls, one per line, for a failure message.
fn history(calls: &[Call], person: &str) -> String {
    let first = calls.iter().map(|c| c.start).min().unwrap_or(0);
    let ms = |t: u128| (t.saturating_sub(first)) as f64 / 1e6;
    calls
        .iter()
        .filter(|c| c.person == person)
        .map(|c| {
            format!(
                "  log {} version {} from {:.1} ms to {}",
                c.log,
                c.version,
                ms(c.start),
                c.end.map_or("never".into(), |(t, ok)| format!(
                    "{:.1} ms {}",
                    ms(t),
                    if ok { "ok" } else { "failed" }
                ))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug)]
struct Summary {
    repeats: usize,
    failures: usize,
    calls: usize,
}

/// Partitions each live log reported last, and whether they cover every partition
/// once.
fn last_partitions(logs: &[PathBuf], live: &[usize]) -> Vec<Vec<u32>> {
    let (_, reports) = read_logs(logs);
    live.iter()
        .map(|i| {
            reports[*i]
                .last()
                .map(|(_, p)| p.clone())
                .unwrap_or_default()
        })
        .collect()
}

fn balanced(parts: &[Vec<u32>]) -> bool {
    let mut all: Vec<u32> = parts.iter().flatten().copied().collect();
    all.sort_unstable();
    all == (0..PARTITIONS).collect::<Vec<_>>() && parts.iter().all(|p| !p.is_empty())
}

async fn wait_handled(logs: &[PathBuf], n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let h = handled(logs);
        if h >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {h} of {n} events handled after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_balanced(logs: &[PathBuf], live: &[usize], secs: u64) -> Duration {
    let started = Instant::now();
    loop {
        let parts = last_partitions(logs, live);
        if balanced(&parts) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "partitions not spread over the live instances after {secs} s: {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn workload(
    people: usize,
    per_person: u64,
) -> (Vec<person_events::StreamingEventEnvelope>, Vec<PersonId>) {
    let ids: Vec<PersonId> = (0..people).map(|_| PersonId::new()).collect();
    let mut out = Vec::new();
    for v in 1..=per_person {
        for p in &ids {
            out.push(event(*p, v));
        }
    }
    (out, ids)
}

fn expected(events: &[person_events::StreamingEventEnvelope]) -> HashMap<String, (String, u64)> {
    events
        .iter()
        .map(|e| {
            (
                e.event_id.to_string(),
                (e.aggregate_id.to_string(), e.sequence),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_across_processes_survives_a_sigkill_with_order_and_one_owner_per_person() {
    let started = Instant::now();
    let cluster = NatsCluster::start(3).await.unwrap();
    let url = cluster.urls().join(",");
    let cfg = group_config();
    let client = connect(&url, cfg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&cfg).unwrap()).unwrap();

    let log = |i: usize| dir.path().join(format!("instance-{i}.log"));
    let mut logs: Vec<PathBuf> = Vec::new();
    let mut live = Vec::new();
    let mut running: Vec<Instance> = Vec::new();
    for i in 0..3 {
        logs.push(log(i));
        running.push(spawn(&url, &config_path, &log(i), 20));
        live.push(i);
    }
    wait_balanced(&logs, &live, 60).await;

    // 3,000 events of 200 people, published at about 1,000 a second while the
    // instances work, so the kill comes in the middle of it.
    let (events, _) = workload(200, 15);
    let publisher = {
        let client = client.clone();
        let events = events.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(50) {
                publish_all(&client, chunk).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_handled(&logs, events.len() / 3, 120).await;
    // Kill it in the middle of a call: the publisher's pace leaves idle gaps.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_calls(&log(1)) == 0 {
        assert!(
            Instant::now() < deadline,
            "instance 1 handles no events any more"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let victim = running.remove(1);
    let (_, killed_at) = victim.kill();
    live.retain(|i| *i != 1);
    logs.push(log(3));
    running.push(spawn(&url, &config_path, &log(3), 20));
    live.push(3);
    wait_balanced(&logs, &live, 60).await;
    let rebalance = Duration::from_nanos(u64::try_from(unix_ns() - killed_at).unwrap());
    publisher.await.unwrap();
    wait_handled(&logs, events.len(), 240).await;
    for i in running {
        i.stop();
    }

    let summary = check(&logs, &expected(&events), Some((1, killed_at)));
    let (calls, _) = read_logs(&logs);
    let cut = calls
        .iter()
        .filter(|c| c.log == 1 && c.end.is_none())
        .count();
    assert!(
        cut > 0,
        "the kill came while the instance was handling events"
    );
    assert!(
        summary.failures > 0,
        "the transient failures happened: {summary:?}"
    );
    assert_eq!(
        crate::support::dlq_messages(&client).await,
        0,
        "nothing dead-lettered"
    );
    eprintln!(
        "groups/sigkill: {} events, {} calls, {} transient failures, {cut} calls cut by the kill, {} repeats from the killed window, partitions spread again {rebalance:?} after the kill, {:?} in all",
        events.len(),
        summary.calls,
        summary.failures,
        summary.repeats,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_instance_keeps_order_and_repeats_nothing() {
    let started = Instant::now();
    let cluster = NatsCluster::start(3).await.unwrap();
    let url = cluster.urls().join(",");
    let cfg = group_config();
    let client = connect(&url, cfg.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&cfg).unwrap()).unwrap();

    let (events, _) = workload(150, 16);
    let chunks: Vec<_> = events.chunks(events.len() / 4).collect();
    publish_all(&client, chunks[0]).await;
    let log = |i: usize| dir.path().join(format!("instance-{i}.log"));
    let mut logs: Vec<PathBuf> = Vec::new();
    let mut running: Vec<(usize, Instance)> = Vec::new();
    for i in 0..3 {
        logs.push(log(i));
        running.push((i, spawn(&url, &config_path, &log(i), 2)));
    }
    let live = |r: &[(usize, Instance)]| r.iter().map(|(i, _)| *i).collect::<Vec<_>>();
    wait_balanced(&logs, &live(&running), 60).await;
    let mut published = chunks[0].len();
    for round in 0..3 {
        // Restart the oldest instance while the next chunk is published.
        let (_, old) = running.remove(0);
        old.stop();
        let next = logs.len();
        logs.push(log(next));
        running.push((next, spawn(&url, &config_path, &log(next), 2)));
        if let Some(chunk) = chunks.get(round + 1) {
            publish_all(&client, chunk).await;
            published += chunk.len();
        }
        wait_balanced(&logs, &live(&running), 60).await;
        wait_handled(&logs, published * (round + 1) / 4, 120).await;
    }
    for chunk in chunks.iter().skip(4) {
        publish_all(&client, chunk).await;
    }
    wait_handled(&logs, events.len(), 240).await;
    for (_, i) in running {
        i.stop();
    }
    let summary = check(&logs, &expected(&events), None);
    assert_eq!(summary.repeats, 0, "graceful handovers repeat nothing");
    assert_eq!(
        crate::support::dlq_messages(&client).await,
        0,
        "nothing dead-lettered"
    );
    eprintln!(
        "groups/rolling: {} events, {} calls, {} transient failures, 0 repeats over 3 restarts, {:?} in all",
        events.len(),
        summary.calls,
        summary.failures,
        started.elapsed()
    );
}
