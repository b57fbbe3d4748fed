//! Peak RSS of a consumer working through a large stored backlog, measured in a child
//! process so the publisher's and the benchmark's own memory are not counted.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use nats_harness::NatsServer;
use person_streaming::StreamingClient;
use person_subscriptions::{SubscriptionManager, SubscriptionOptions};

/// What the consumer child reports.
pub(crate) struct Backlog {
    pub(crate) peak_rss_mib: f64,
    pub(crate) rate: f64,
}

/// The child's command-line flag.
pub(crate) const CHILD_FLAG: &str = "--consume-backlog";

/// Stores `n` events, then runs a consumer child over them and reads its peak RSS.
pub(crate) async fn run(server: &NatsServer, n: usize) -> Result<Backlog> {
    let client = crate::fresh(server, "MEM", 256).await?;
    let mut failed = 0usize;
    let publisher = client.publisher();
    let results = publisher.publish_all(crate::workload_iter(n, 10_000));
    futures::pin_mut!(results);
    while let Some(r) = results.next().await {
        failed += usize::from(r.is_err());
    }
    anyhow::ensure!(failed == 0, "{failed} backlog events were not stored");
    drop(client);

    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .args([CHILD_FLAG, &server.url(), "MEM", &n.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the consumer child")?;
    if !out.status.success() {
        bail!("consumer child failed: {}", out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    let mut fields = text.split_whitespace();
    let (Some(kib), Some(rate)) = (fields.next(), fields.next()) else {
        bail!("unexpected child output: {text:?}");
    };
    Ok(Backlog {
        peak_rss_mib: kib.parse::<f64>()? / 1024.0,
        rate: rate.parse()?,
    })
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
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmHWM in /proc/self/status")?;
    println!("{kib} {rate}");
    Ok(())
}
