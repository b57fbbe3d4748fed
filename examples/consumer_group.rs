//! Three instances of one projection share its work as a consumer group, and one of
//! them dies.
//!
//! 1. Starts an embedded 3-node cluster with replicated (R3) streams, and splits the
//!    summary projection's consumer into 6 partitions: every person's events land in
//!    one partition, chosen by the server from the person's id.
//! 2. Starts three instances of the projection, each its own process (this example,
//!    run again with `--instance`). They agree through leases in a JetStream KV bucket
//!    which instance handles which partitions: two each.
//! 3. Publishes 2,000 events of 100 people while they work, and kills one instance
//!    with SIGKILL in the middle of it. Its partitions move to the others once its
//!    leases expire, and a fourth instance, started at once, takes its share.
//! 4. Checks what the instances said they did: every event handled, each person's
//!    events handled for the first time in the order they were stored, whichever
//!    instance handled them, and the only events handled twice are ones the killed
//!    instance had started and not acknowledged.
//!
//! Run with `cargo run --example consumer_group`. With `NATS_URL` it uses that server
//! instead of a cluster (its streams then have one replica), in a namespace of its own
//! (see `person_examples::Scope`): streams `EXAMPLE_consumer_group_<run>`, its DLQ and
//! its groups bucket, consumers `example-<run>-...`, under the subject prefix
//! `example_consumer_group_<run>`. It deletes them at the end, also after a failure,
//! and never reads, acks, replays or deletes anything else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use async_trait::async_trait;
use futures::StreamExt;
use nats_harness::NatsCluster;
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope};
use person_examples::{ExampleServer, Scope, wait_until};
use person_metadata::EventMetadata;
use person_streaming::{StreamingClient, StreamingConfig};
use person_subscriptions::{
    DomainResult, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};

const PROJECTION: &str = "person-projection-summary";
const PARTITIONS: u32 = 6;
const PEOPLE: usize = 100;
const ROUNDS: u64 = 20;
/// How long an instance's lease on a partition lasts unless renewed: a killed
/// instance's partitions move on within about two of these.
const LEASE: Duration = Duration::from_secs(4);

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, url, config, consumer] = args.as_slice()
        && flag == "--instance"
    {
        return instance(url, config, consumer).await;
    }
    let (url, scope, _cluster) = match std::env::var("NATS_URL") {
        Ok(url) => {
            println!("using the NATS server at {url} (NATS_URL), in this run's own namespace");
            let server = ExampleServer {
                url: url.clone(),
                embedded: None,
            };
            (url, Scope::new(&server, "consumer_group"), None)
        }
        Err(_) => {
            let cluster = NatsCluster::start(3).await.context(
                "starting an embedded 3-node cluster; set NATS_URL to use your own server",
            )?;
            let url = cluster.urls().join(",");
            println!(
                "started an embedded 3-node cluster on {}; set NATS_URL to use your own server",
                cluster.urls().join(", ")
            );
            (url, Scope::embedded(), Some(cluster))
        }
    };
    let mut base = StreamingConfig::default();
    base.consumers.retain(|c| c.durable_name == PROJECTION);
    if !scope.is_namespaced() {
        base.stream.replicas = 3;
        base.dlq.replicas = 3;
    }
    // Unacknowledged events of a killed instance come back after `ack_wait`.
    base.consumers[0].ack_wait_secs = 4;
    let base = base.with_partitions(PROJECTION, PARTITIONS)?;
    let config = scope.config(base)?;
    let addrs = url
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()
        .with_context(|| format!("a server list: {url}"))?;
    let js = jetstream::new(
        async_nats::connect(addrs)
            .await
            .with_context(|| format!("cannot connect to {url}"))?,
    );
    scope.check_free(&js, &config).await?;
    let outcome = match StreamingClient::new(&url, config.clone()).await {
        Ok(client) => story(&url, &scope, &client).await,
        Err(e) => Err(anyhow::Error::new(e).context("connecting and ensuring the streams")),
    };
    scope.cleanup(&js, &config).await;
    outcome
}

async fn story(url: &str, scope: &Scope, client: &StreamingClient) -> Result<()> {
    let started = Instant::now();
    let consumer = scope.consumer(PROJECTION);
    println!(
        "stream {} with {PARTITIONS} partitions of {consumer}; leases in the KV bucket {}",
        client.config().stream.name,
        client.config().groups_bucket()
    );
    let dir = std::env::temp_dir().join(format!(
        "consumer-group-example-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_vec(client.config())?)?;
    let outcome = run(url, client, &consumer, &config_path, started).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn run(
    url: &str,
    client: &StreamingClient,
    consumer: &str,
    config_path: &std::path::Path,
    started: Instant,
) -> Result<()> {
    // 2. Three instances.
    let journal = Arc::new(Journal::default());
    let mut instances = Vec::new();
    for label in ["A", "B", "C"] {
        instances.push(Instance::spawn(
            label,
            url,
            config_path,
            consumer,
            &journal,
        )?);
    }
    wait_until(60, "the three instances share the partitions", || {
        journal.balanced(&["A", "B", "C"])
    })
    .await?;
    for label in ["A", "B", "C"] {
        println!(
            "instance {label} handles partitions {:?}",
            journal.partitions(label)
        );
    }

    // 3. Publish in rounds, one event per person each, while B is killed midway.
    let people: Vec<PersonId> = (0..PEOPLE).map(|_| PersonId::new()).collect();
    let total = PEOPLE as u64 * ROUNDS;
    let publishing = {
        let client = client.clone();
        let people = people.clone();
        tokio::spawn(async move {
            let publisher = client.publisher();
            for round in 1..=ROUNDS {
                let events = people.iter().map(|&p| event(p, round));
                let results: Vec<_> = publisher.publish_all(events).collect().await;
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    bail!("publishing round {round}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            anyhow::Ok(())
        })
    };
    wait_until(60, "a third of the events are handled", || {
        journal.handled() >= total / 3
    })
    .await?;
    // Between rounds the instances are idle: wait for B to be in the middle of a call.
    let deadline = Instant::now() + Duration::from_secs(10);
    while journal.open("B") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let calls = journal.open("B");
    let held = journal.partitions("B");
    let victim = instances.remove(1);
    victim.kill()?;
    let killed_at = Instant::now();
    println!(
        "killed instance B with SIGKILL during {calls} call(s), {} of {total} events handled; it held partitions {held:?}",
        journal.handled()
    );
    instances.push(Instance::spawn("D", url, config_path, consumer, &journal)?);
    println!("started instance D in its place");
    publishing.await??;
    println!("published {total} events");
    wait_until(60, "A, C and D share the partitions", || {
        journal.balanced(&["A", "C", "D"])
    })
    .await?;
    println!(
        "{:.1} s after the kill, A handles {:?}, C {:?}, D {:?}",
        killed_at.elapsed().as_secs_f64(),
        journal.partitions("A"),
        journal.partitions("C"),
        journal.partitions("D")
    );
    wait_until(120, "every event is handled", || journal.handled() == total).await?;
    for i in instances {
        i.leave()?;
    }

    // 4. What the instances did.
    let report = journal.check(&people, ROUNDS)?;
    println!(
        "all {total} events handled; each person's events were handled for the first time in stream order, across {} instances",
        report.instances
    );
    println!(
        "the {} call(s) the kill cut short were made again by B's successors; {} event(s) handled twice, each one B had finished but not yet acknowledged",
        report.cut, report.repeats
    );
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn event(person_id: PersonId, version: u64) -> StreamingEventEnvelope {
    let metadata = EventMetadata::new();
    let event = if version == 1 {
        PersonEventV2::Created {
            person_id,
            name: PersonName::new("Ada", None, "Lovelace").expect("a valid name"),
            source: "consumer-group-example".into(),
            metadata,
        }
    } else {
        PersonEventV2::Activated {
            person_id,
            reason: format!("step {version}"),
            metadata,
        }
    };
    StreamingEventEnvelope::new(person_id, version, event)
}

/// One instance process, as the parent sees it.
struct Instance {
    label: &'static str,
    child: Child,
}

impl Instance {
    /// Starts this example again as an instance, and follows what it prints.
    fn spawn(
        label: &'static str,
        url: &str,
        config: &std::path::Path,
        consumer: &str,
        journal: &Arc<Journal>,
    ) -> Result<Instance> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--instance")
            .arg(url)
            .arg(config)
            .arg(consumer)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting an instance")?;
        let out = child.stdout.take().context("its output")?;
        let journal = journal.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                journal.record(label, &line);
            }
        });
        Ok(Instance { label, child })
    }

    /// SIGKILL: the instance gets no chance to release anything.
    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Closes its input: it leaves the group gracefully.
    fn leave(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("instance {} exited with {status}", self.label);
        }
        Ok(())
    }
}

/// What the instances printed, in one place.
#[derive(Default)]
struct Journal {
    inner: Mutex<JournalInner>,
}

#[derive(Default)]
struct JournalInner {
    partitions: HashMap<&'static str, Vec<u32>>,
    /// (time, instance, person, version, finished)
    calls: Vec<(u128, &'static str, String, u64, bool)>,
    open: HashMap<&'static str, i64>,
    done: BTreeSet<(String, u64)>,
}

struct Report {
    instances: usize,
    repeats: usize,
    /// Calls of B that started and never ended.
    cut: usize,
}

impl Journal {
    fn record(&self, label: &'static str, line: &str) {
        let mut j = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["partitions", list @ ..] => {
                let parts = list.iter().filter_map(|p| p.parse().ok()).collect();
                j.partitions.insert(label, parts);
            }
            [what @ ("start" | "end"), at, person, version] => {
                let (Ok(at), Ok(version)) = (at.parse(), version.parse()) else {
                    return;
                };
                let end = *what == "end";
                *j.open.entry(label).or_default() += if end { -1 } else { 1 };
                if end {
                    j.done.insert(((*person).to_owned(), version));
                }
                j.calls
                    .push((at, label, (*person).to_owned(), version, end));
            }
            _ => {}
        }
    }

    fn partitions(&self, label: &str) -> Vec<u32> {
        let j = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        j.partitions.get(label).cloned().unwrap_or_default()
    }

    /// Every partition handled by exactly one of `labels`, two each.
    fn balanced(&self, labels: &[&str]) -> bool {
        let j = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<u32> = Vec::new();
        for label in labels {
            let parts = j.partitions.get(label).map_or(&[][..], Vec::as_slice);
            if parts.len() != PARTITIONS as usize / labels.len() {
                return false;
            }
            all.extend(parts);
        }
        all.sort_unstable();
        all == (0..PARTITIONS).collect::<Vec<_>>()
    }

    fn open(&self, label: &str) -> i64 {
        let j = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        j.open.get(label).copied().unwrap_or(0)
    }

    fn handled(&self) -> u64 {
        let j = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        j.done.len() as u64
    }

    /// Checks order per person and where repeats came from.
    fn check(&self, people: &[PersonId], rounds: u64) -> Result<Report> {
        let j = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut calls = j.calls.clone();
        calls.sort_by_key(|c| c.0);
        let started_by_b: BTreeSet<(&str, u64)> = calls
            .iter()
            .filter(|c| c.1 == "B" && !c.4)
            .map(|c| (c.2.as_str(), c.3))
            .collect();
        let mut first: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut repeats = 0;
        let mut instances = BTreeSet::new();
        for (_, label, person, version, end) in &calls {
            if !end {
                continue;
            }
            instances.insert(*label);
            if seen.insert((person.as_str(), *version)) {
                first.entry(person).or_default().push(*version);
            } else {
                repeats += 1;
                if !started_by_b.contains(&(person.as_str(), *version)) {
                    bail!("{person}'s event {version} was handled twice, and B had not started it");
                }
            }
        }
        let ended_by_b: BTreeSet<(&str, u64)> = calls
            .iter()
            .filter(|c| c.1 == "B" && c.4)
            .map(|c| (c.2.as_str(), c.3))
            .collect();
        let cut = started_by_b.difference(&ended_by_b).count();
        let expected: Vec<u64> = (1..=rounds).collect();
        for p in people {
            let got = first
                .get(p.to_string().as_str())
                .cloned()
                .unwrap_or_default();
            if got != expected {
                bail!("{p}'s events were first handled in the order {got:?}");
            }
        }
        Ok(Report {
            instances: instances.len(),
            repeats,
            cut,
        })
    }
}

/// The projection of one instance: prints when each call starts and ends.
struct Summary {
    out: Mutex<std::io::Stdout>,
}

impl Summary {
    fn say(&self, what: &str, envelope: &StreamingEventEnvelope) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "{what} {at} {} {}",
            envelope.aggregate_id, envelope.sequence
        );
        let _ = out.flush();
    }
}

#[async_trait]
impl StreamingEventHandler for Summary {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        self.say("start", &envelope);
        // The summary's work.
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.say("end", &envelope);
        Ok(())
    }

    fn name(&self) -> &str {
        "summary"
    }
}

/// `--instance URL CONFIG CONSUMER`: one member of the group, until its input closes.
async fn instance(url: &str, config: &str, consumer: &str) -> Result<()> {
    let config = StreamingConfig::from_file(config)?;
    let client = StreamingClient::new(url, config).await?;
    let mut manager = SubscriptionManager::new(client)
        .with_options(SubscriptionOptions::default().group_lease(LEASE));
    let summary = Arc::new(Summary {
        out: Mutex::new(std::io::stdout()),
    });
    manager.register_handler(summary.clone());
    let handle = Arc::new(manager.start_group(consumer).await?);
    let reporter = {
        let handle = handle.clone();
        let summary = summary.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = handle.partitions();
                if last.as_ref() != Some(&now) {
                    let list: Vec<String> = now.iter().map(u32::to_string).collect();
                    let mut out = summary.out.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(out, "partitions {}", list.join(" "));
                    let _ = out.flush();
                    last = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    reporter.abort();
    let _ = reporter.await;
    let handle = Arc::into_inner(handle).context("the only handle left")?;
    handle.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
