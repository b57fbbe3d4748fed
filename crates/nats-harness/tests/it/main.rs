//! Integration tests for `nats-harness`, against real `nats-server` processes.
//!
//! Every test starts its own server or cluster, so they run in parallel.

mod auth;
mod cluster;
mod provision;
mod proxy;
mod single;

use std::fmt::Debug;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, ToServerAddrs};

/// Retries `attempt` every 50 ms until it succeeds, panicking with the last error after
/// `timeout`.
pub(crate) async fn eventually<T, E: Debug>(
    what: &str,
    timeout: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: still failing after {timeout:?}: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A client that retries reconnecting every 50 ms (instead of backing off to seconds).
pub(crate) async fn connect_fast(addrs: impl ToServerAddrs) -> Client {
    ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(addrs)
        .await
        .expect("connect")
}
