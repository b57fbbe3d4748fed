//! Consumer groups: the steady throughput of one instance against three at the same
//! per-instance concurrency, with 2 ms handlers over a stored backlog, and how long
//! the partitions of an instance killed with SIGKILL take to be running elsewhere.
//!
//! The instances of the throughput runs share this process (and its two cores, with
//! the server), so the ratio shows what the group adds, not what extra machines would.
//! The killed instance is a child process.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use nats_harness::NatsServer;
use person_streaming::{StreamingClient, StreamingConfig};
use person_subscriptions::{GroupHandle, SubscriptionManager, SubscriptionOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cpu::Meter;

use crate::Count;

/// Partitions of the benchmark's group.
pub(crate) const PARTITIONS: u32 = 6;
/// Handler calls at once, per instance.
pub(crate) const CONCURRENCY: usize = 8;
/// The default lease (`SubscriptionOptions::group_lease`).
pub(crate) const LEASE: Duration = Duration::from_secs(8);
/// The child's command-line flag.
pub(crate) const CHILD_FLAG: &str = "--group-instance";

const HANDLER: Duration = Duration::from_millis(2);

/// What the group runs measured.
pub(crate) struct Groups {
    /// One instance.
    pub(crate) one: Steady,
    /// Three instances.
    pub(crate) three: Steady,
    /// From the SIGKILL until its partitions run on the others.
    pub(crate) rebalance: Duration,
}

fn config(stream: &str) -> StreamingConfig {
    crate::bench_config(stream, 256)
        .with_partitions("bench", PARTITIONS)
        .expect("a valid group configuration")
}

/// A fresh partitioned stream holding `n` events of 1,000 people.
async fn backlog(server: &NatsServer, stream: &str, n: usize) -> Result<StreamingClient> {
    crate::clear(server).await?;
    let client = StreamingClient::new(&server.url(), config(stream)).await?;
    let publisher = client.publisher();
    let results = publisher.publish_all(crate::workload_iter(n, 1_000));
    futures::pin_mut!(results);
    let mut failed = 0usize;
    while let Some(r) = results.next().await {
        failed += usize::from(r.is_err());
    }
    anyhow::ensure!(failed == 0, "{failed} backlog events were not stored");
    Ok(client)
}

async fn join(client: &StreamingClient, counter: Arc<Count>) -> Result<GroupHandle> {
    let mut manager = SubscriptionManager::new(client.clone()).with_options(
        SubscriptionOptions::default()
            .concurrency(CONCURRENCY)
            .group_lease(LEASE),
    );
    manager.register_handler(counter);
    Ok(manager.start_group("bench").await?)
}

async fn wait(secs: u64, what: &str, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while !cond() {
        if started.elapsed() > Duration::from_secs(secs) {
            bail!("{what} did not happen within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

/// A steady run's figures.
pub(crate) struct Steady {
    /// Events handled per second.
    pub(crate) rate: f64,
    /// CPU time of the server per event handled.
    pub(crate) server_us: f64,
    /// CPU time of this process (every instance in it) per event handled.
    pub(crate) client_us: f64,
}

/// Events handled per second over `window`, once warm, with the CPU time spent per
/// event; fails if the backlog of `n` ran out meanwhile (the figure would then be the
/// backlog's, not the group's).
async fn steady(server: &str, counters: &[&Count], n: usize, window: Duration) -> Result<Steady> {
    let handled = || {
        counters
            .iter()
            .map(|c| c.handled.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (t0, c0) = (Instant::now(), handled());
    let meter = Meter::start(server);
    tokio::time::sleep(window).await;
    let (t1, c1) = (Instant::now(), handled());
    let cpu = meter.per_event((c1 - c0) as usize);
    if c1 >= n as u64 {
        bail!("the backlog of {n} events ran out during the measurement");
    }
    Ok(Steady {
        rate: (c1 - c0) as f64 / (t1 - t0).as_secs_f64(),
        server_us: cpu.server_us,
        client_us: cpu.client_us,
    })
}

pub(crate) async fn run(server: &NatsServer, quick: bool) -> Result<Groups> {
    let pid = server.pid().map(|p| p.to_string()).unwrap_or_default();
    let window = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(8)
    };
    let ideal = CONCURRENCY as f64 / HANDLER.as_secs_f64();
    // Enough for warming up, balancing and the window at the ideal rate, twice over.
    let backlog_for = |instances: f64| (ideal * instances * (window.as_secs_f64() + 12.0)) as usize;

    // One instance: it holds every partition.
    let n = backlog_for(1.0);
    let client = backlog(server, "GRP1", n).await?;
    let counter = Arc::new(Count::new(u64::MAX, HANDLER));
    let group = join(&client, counter.clone()).await?;
    wait(60, "one instance runs every partition", || {
        group.partitions().len() == PARTITIONS as usize
    })
    .await?;
    let one = steady(&pid, &[&counter], n, window).await?;
    group.shutdown(Duration::from_secs(5)).await;

    // Three instances, once the partitions are spread over them.
    let n = backlog_for(3.0);
    let client = backlog(server, "GRP3", n).await?;
    let counters: Vec<Arc<Count>> = (0..3)
        .map(|_| Arc::new(Count::new(u64::MAX, HANDLER)))
        .collect();
    let mut groups = Vec::new();
    for c in &counters {
        groups.push(join(&client, c.clone()).await?);
    }
    wait(60, "three instances run two partitions each", || {
        groups.iter().all(|g| g.partitions().len() == 2)
    })
    .await?;
    let refs: Vec<&Count> = counters.iter().map(|c| &**c).collect();
    let three = steady(&pid, &refs, n, window).await?;

    // The kill: one of the three leaves, a child process joins in its place and is
    // killed once it runs its share; the two left take its partitions over.
    let leaving = groups.pop().context("three instances")?;
    leaving.shutdown(Duration::from_secs(5)).await;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args([CHILD_FLAG, &server.url(), "GRP3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the group child")?;
    let mut lines = BufReader::new(child.stdout.take().context("its output")?).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    anyhow::ensure!(first == "ready", "the group child said {first:?}");
    let here = |groups: &[GroupHandle]| groups.iter().map(|g| g.partitions().len()).sum::<usize>();
    wait(60, "the child runs its share", || {
        here(&groups) == PARTITIONS as usize - 2
    })
    .await?;
    // Its partitions are renewed every quarter lease: kill it at a random point of that.
    tokio::time::sleep(LEASE / 3).await;
    child.start_kill()?;
    let _ = child.wait().await;
    let rebalance = wait(120, "the child's partitions move", || {
        here(&groups) == PARTITIONS as usize
    })
    .await?;
    for g in groups {
        g.shutdown(Duration::from_secs(5)).await;
    }
    Ok(Groups {
        one,
        three,
        rebalance,
    })
}

/// `--group-instance URL STREAM`: one more instance of the group, until killed or its
/// input closes.
pub(crate) async fn child(url: &str, stream: &str) -> Result<()> {
    let client = StreamingClient::new(url, config(stream)).await?;
    let counter = Arc::new(Count::new(u64::MAX, HANDLER));
    let group = join(&client, counter).await?;
    println!("ready");
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    group.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
