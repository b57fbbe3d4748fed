//! Shared helpers for the runnable examples of the Person event streaming workspace.
//!
//! Run an example from the workspace root with `cargo run --example NAME`. Without
//! `NATS_URL`, examples start a throwaway local `nats-server` (installing the pinned
//! binary on first use); with `NATS_URL`, they use that server.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nats_harness::NatsServer;
use person_streaming::{StreamingClient, StreamingConfig};

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

/// The names and subjects an example works in.
///
/// On an embedded server an example uses `StreamingConfig::default()`'s names. On the
/// user's server (`NATS_URL`) it works in a namespace of its own: streams
/// `EXAMPLE_<name>_<run>` and `EXAMPLE_<name>_<run>_DLQ`, consumers
/// `example-<run>-<role>`, and the subject prefix `example_<name>_<run>` (events on
/// `example_<name>_<run>.person.events.…`, dead letters on
/// `example_<name>_<run>.person.dlq.…`). It deletes both streams (and the buckets it made) at the end, and never
/// reads, acks, replays or deletes anything else.
#[derive(Debug, Clone)]
pub struct Scope {
    own: Option<String>,
}

impl Scope {
    /// The scope for the example `name` on `server`.
    pub fn new(server: &ExampleServer, name: &str) -> Self {
        let own = server.embedded.is_none().then(|| {
            let run = uuid::Uuid::now_v7().simple().to_string();
            format!("{name}_{}", &run[run.len() - 8..])
        });
        Self { own }
    }

    /// The scope of an example on a server or cluster it started itself: the default
    /// names, nothing renamed.
    pub fn embedded() -> Self {
        Self { own: None }
    }

    /// `true` when the example runs in its own namespace on the user's server.
    pub fn is_namespaced(&self) -> bool {
        self.own.is_some()
    }

    /// This scope's durable name for `base`'s consumer `name`: `name` itself on an
    /// embedded server, `example-<run>-<name>` on the user's.
    pub fn consumer(&self, name: &str) -> String {
        match &self.own {
            Some(own) => format!("example-{}-{name}", &own[own.len() - 8..]),
            None => name.to_owned(),
        }
    }

    /// `base` (usually `StreamingConfig::default()` with the example's changes) in this
    /// scope: on the user's server, its streams renamed, every subject moved under the
    /// run's own subject prefix, and every consumer renamed with [`Scope::consumer`].
    /// On an embedded server, `base`.
    pub fn config(&self, mut base: StreamingConfig) -> Result<StreamingConfig> {
        let Some(own) = &self.own else {
            return Ok(base);
        };
        base.stream.name = format!("EXAMPLE_{own}");
        base.stream.description = Some("an example run's own events; deleted at its end".into());
        base.dlq.name = format!("EXAMPLE_{own}_DLQ");
        base.dlq.description = Some("an example run's own dead letters; deleted at its end".into());
        for c in &mut base.consumers {
            c.durable_name = self.consumer(&c.durable_name);
            c.description = Some("an example run's own consumer; deleted at its end".into());
        }
        Ok(base.with_subject_prefix(&format!("example_{own}"))?)
    }

    /// Before anything is created: fails, naming the stream, when a stream this run did
    /// not create already captures one of `config`'s subjects (a stream on `>`, say):
    /// JetStream lets only one stream capture a subject, so the example's events would
    /// land in that stream.
    pub async fn check_free(
        &self,
        js: &jetstream::Context,
        config: &StreamingConfig,
    ) -> Result<()> {
        if self.own.is_none() {
            return Ok(());
        }
        let mut streams = js.streams();
        let ours: Vec<&String> = config
            .stream
            .subjects
            .iter()
            .chain(&config.dlq.subjects)
            .collect();
        while let Some(info) = streams.next().await {
            let info = info.context("listing the server's streams")?;
            for theirs in &info.config.subjects {
                if let Some(o) = ours.iter().find(|o| subjects_collide(theirs, o)) {
                    bail!(
                        "the server's stream {} captures `{theirs}`, which covers this example's subject `{o}`: \
                         its events would land in that stream. Run it as a user of another NATS account, or \
                         against another server (or without NATS_URL). Nothing was changed.",
                        info.config.name
                    );
                }
            }
        }
        Ok(())
    }

    /// Deletes this run's streams (with their consumers), bodies bucket and groups
    /// bucket, if they exist. A no-op on an embedded server, which is thrown away anyway.
    pub async fn cleanup(&self, js: &jetstream::Context, config: &StreamingConfig) {
        if self.own.is_none() {
            return;
        }
        // The buckets are the streams `OBJ_<bucket>` and `KV_<bucket>`.
        let bodies = format!("OBJ_{}", config.bodies_bucket());
        let groups = format!("KV_{}", config.groups_bucket());
        for name in [&config.stream.name, &config.dlq.name, &bodies, &groups] {
            match js.delete_stream(name).await {
                Ok(_) => println!("deleted this run's stream {name}"),
                Err(e)
                    if matches!(e.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
                Err(e) => eprintln!("could not delete this run's stream {name}: {e}"),
            }
        }
    }
}

/// Runs the example `name`: its server ([`server`]), its scope ([`Scope`]) with `base`
/// in it, a client, then `body`, then the scope's cleanup, also when `body` fails.
pub async fn run_in_scope(
    name: &str,
    base: StreamingConfig,
    body: impl AsyncFnOnce(&Scope, &StreamingClient) -> Result<()>,
) -> Result<()> {
    let server = server().await?;
    let scope = Scope::new(&server, name);
    let config = scope.config(base)?;
    let js = jetstream::new(
        async_nats::connect(&server.url)
            .await
            .with_context(|| format!("cannot connect to {}", server.url))?,
    );
    scope.check_free(&js, &config).await?;
    let outcome = match StreamingClient::new(&server.url, config.clone()).await {
        Ok(client) => body(&scope, &client).await,
        Err(e) => Err(anyhow::Error::new(e).context("connecting and ensuring the streams")),
    };
    scope.cleanup(&js, &config).await;
    drop(server);
    outcome
}

/// Polls `cond` every 50 ms until it holds; fails naming `what` after `secs` seconds.
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() >= deadline {
            bail!("{what} did not happen within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `true` when some subject matches both patterns.
fn subjects_collide(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) if x == y || *x == "*" || *y == "*" => {}
            _ => return false,
        }
    }
    true
}

/// A status line that fits the output: redrawn in place on a terminal (indicatif, on
/// stderr), printed as a plain line every few seconds otherwise, so a CI log gets a
/// handful of lines instead of hundreds of carriage-return copies.
#[derive(Debug)]
pub struct StatusLine {
    bar: Option<ProgressBar>,
    last: Option<Instant>,
}

/// How often a [`StatusLine`] prints when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(3);

impl StatusLine {
    /// A status line on stderr.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
            bar.set_style(ProgressStyle::with_template("  {msg}").expect("a valid template"));
            bar
        });
        Self { bar, last: None }
    }

    /// Shows `text` now (terminal) or if the last plain line is old enough.
    pub fn update(&mut self, text: impl Into<String>) {
        match &self.bar {
            Some(bar) => bar.set_message(text.into()),
            None if self.last.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) => {
                self.last = Some(Instant::now());
                eprintln!("  {}", text.into());
            }
            None => {}
        }
    }

    /// Clears the line and prints `text` on stdout as the final state.
    pub fn finish(self, text: impl AsRef<str>) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        println!("  {}", text.as_ref());
    }
}

impl Default for StatusLine {
    fn default() -> Self {
        Self::new()
    }
}
