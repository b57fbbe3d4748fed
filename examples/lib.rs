//! Shared helpers for the runnable examples of the Person event streaming workspace.
//!
//! Run an example from the workspace root with `cargo run --example NAME`. Without
//! `NATS_URL`, examples start a throwaway local `nats-server` (installing the pinned
//! binary on first use); with `NATS_URL`, they use that server.

use anyhow::{Context, Result};
use nats_harness::NatsServer;

/// Where the example's server is: the user's, or an embedded one kept alive by this value.
#[derive(Debug)]
pub struct ExampleServer {
    /// The URL to connect to.
    pub url: String,
    /// The embedded server, if one was started; dropping it stops the server.
    pub embedded: Option<NatsServer>,
}

/// Uses `NATS_URL` when set; otherwise starts an embedded JetStream server and says so.
pub async fn server() -> Result<ExampleServer> {
    if let Ok(url) = std::env::var("NATS_URL") {
        println!("using the NATS server at {url} (NATS_URL)");
        return Ok(ExampleServer {
            url,
            embedded: None,
        });
    }
    let server = NatsServer::start()
        .await
        .context("could not start an embedded nats-server; set NATS_URL to use your own")?;
    println!(
        "started an embedded nats-server at {} (data in {}); set NATS_URL to use your own",
        server.url(),
        server.store_dir().display()
    );
    Ok(ExampleServer {
        url: server.url(),
        embedded: Some(server),
    })
}
