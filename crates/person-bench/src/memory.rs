//! Peak RSS of a publisher storing a large backlog, and of a consumer working through
//! it, each measured in a child process of its own so neither the other's memory nor
//! the benchmark's is counted.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use nats_harness::NatsServer;
use person_streaming::StreamingClient;
use person_subscriptions::{SubscriptionManager, SubscriptionOptions};

/// What a child reports: its peak RSS and its events per second.
pub(crate) struct Peak {
    pub(crate) peak_rss_mib: f64,
    pub(crate) rate: f64,
}

/// The publisher child's, then the consumer child's.
pub(crate) struct Backlog {
    pub(crate) publisher: Peak,
    pub(crate) consumer: Peak,
}

/// The consumer child's command-line flag.
pub(crate) const CHILD_FLAG: &str = "--consume-backlog";
/// The publisher child's command-line flag.
pub(crate) const PUBLISH_FLAG: &str = "--publish-backlog";

/// A publisher child stores `n` events (`publish_all` over a lazy iterator), then a
/// consumer child runs over them; each reports its peak RSS.
pub(crate) async fn run(server: &NatsServer, n: usize) -> Result<Backlog> {
    drop(crate::fresh(server, "MEM", 256).await?);
    let publisher = spawn(PUBLISH_FLAG, server, n)
        .await
        .context("publisher child")?;
    let consumer = spawn(CHILD_FLAG, server, n)
        .await
        .context("consumer child")?;
    Ok(Backlog {
        publisher,
        consumer,
    })
}

async fn spawn(flag: &str, server: &NatsServer, n: usize) -> Result<Peak> {
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .args([flag, &server.url(), "MEM", &n.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the child")?;
    if !out.status.success() {
        bail!("the child failed: {}", out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    let mut fields = text.split_whitespace();
    let (Some(kib), Some(rate)) = (fields.next(), fields.next()) else {
        bail!("unexpected child output: {text:?}");
    };
    Ok(Peak {
        peak_rss_mib: kib.parse::<f64>()? / 1024.0,
        rate: rate.parse()?,
    })
}

/// The publisher child: stores `n` events of 10,000 people with `publish_all` (the
/// default window), then prints its peak RSS (KiB) and events per second.
pub(crate) async fn publish_child(url: &str, stream: &str, n: usize) -> Result<()> {
    let client = StreamingClient::new(url, crate::bench_config(stream, 256)).await?;
    let publisher = client.publisher();
    let started = Instant::now();
    let results = publisher.publish_all(crate::workload_iter(n, 10_000));
    futures::pin_mut!(results);
    let mut failed = 0usize;
    while let Some(r) = results.next().await {
        failed += usize::from(r.is_err());
    }
    anyhow::ensure!(failed == 0, "{failed} backlog events were not stored");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!("{} {rate}", peak_kib()?);
    Ok(())
}

/// This process's peak RSS, in KiB.
fn peak_kib() -> Result<String> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmHWM in /proc/self/status")?
        .to_owned())
}

/// The child: a consumer with default options and a no-op handler over the stored
/// backlog; prints its peak RSS (KiB) and events per second.
pub(crate) async fn child(url: &str, stream: &str, n: u64) -> Result<()> {
    let client = StreamingClient::new(url, crate::bench_config(stream, 256)).await?;
    let counter = Arc::new(crate::Count::new(n, Duration::ZERO));
    let mut manager = SubscriptionManager::new(client.clone())
        .with_options(SubscriptionOptions::default().concurrency(8));
    manager.register_handler(counter.clone());
    let started = Instant::now();
    let handle = manager.start_consumer("bench").await?;
    let rate = n as f64 / (counter.finished().await - started).as_secs_f64();
    handle.shutdown(Duration::from_secs(5)).await;
    println!("{} {rate}", peak_kib()?);
    Ok(())
}
