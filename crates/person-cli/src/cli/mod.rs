//! Argument parsing, connecting, and dispatch to the commands.

mod bench;
mod consumer;
mod dlq;
mod publish;
mod setup;
mod status;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use person_cli::error::{CliError, EXIT_CODES_HELP};
use person_streaming::{StreamingClient, StreamingConfig};

const ABOUT: &str = "Operator CLI for the Person event stream on NATS JetStream: set up streams \
and consumers, watch status, tail events, publish NDJSON, inspect and replay dead letters, pause and rewind consumers.";

const EXAMPLES: &str = "\
Examples:
  person-stream setup --config person-streaming.toml --dry-run
  person-stream status
  person-stream tail --person 0f8fad5b-d9cb-469f-a165-70867728950e --last 20
  person-stream publish events.ndjson
  person-stream dlq list --consumer person-projection-summary
  person-stream dlq replay --consumer person-projection-summary --dry-run
  person-stream consumer pause person-projection-summary
  person-stream consumer rewind person-projection-summary --to-seq 1 --dry-run
  person-stream completions bash > /etc/bash_completion.d/person-stream";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "person-stream",
    version,
    about = ABOUT,
    after_help = format!("{EXAMPLES}\n\n{EXIT_CODES_HELP}"),
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Connection and configuration options, accepted before or after the command.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Connection and configuration")]
pub(crate) struct Global {
    /// NATS server URL (several: comma-separated).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    /// Streaming configuration (TOML or JSON): stream, DLQ and consumer names and
    /// settings. Without it, the built-in defaults (PERSON_EVENTS, PERSON_EVENTS_DLQ,
    /// four consumers).
    #[arg(long, env = "PERSON_STREAM_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Credentials file (JWT + NKey) to authenticate with.
    #[arg(long, env = "NATS_CREDS", global = true, value_name = "FILE")]
    creds: Option<PathBuf>,
    /// User name (with --password).
    #[arg(long, env = "NATS_USER", global = true, requires = "password")]
    user: Option<String>,
    /// Password (with --user).
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Token to authenticate with.
    #[arg(long, env = "NATS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// File holding the NKey seed to authenticate with.
    #[arg(long, env = "NATS_NKEY", global = true, value_name = "FILE")]
    nkey: Option<PathBuf>,
    /// Require TLS.
    #[arg(long, global = true)]
    tls: bool,
    /// CA certificate (PEM) to trust; implies TLS.
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --tls-key).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS (with --tls-cert).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds to wait for the connection.
    #[arg(long, global = true, default_value_t = 5, value_name = "SECS")]
    connect_timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the streams and consumers of the configuration.
    #[command(after_help = setup::EXAMPLES)]
    Setup(setup::Args),
    /// Streams, consumers and dead-letter counts.
    #[command(after_help = status::EXAMPLES)]
    Status(status::Args),
    /// Show events as they arrive, or the last N; legacy events upcast and marked.
    #[command(after_help = tail::EXAMPLES)]
    Tail(tail::Args),
    /// Publish events from an NDJSON file or stdin.
    #[command(after_help = publish::EXAMPLES)]
    Publish(publish::Args),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand, after_help = dlq::EXAMPLES)]
    Dlq(dlq::Command),
    /// Pause, resume and rewind a consumer.
    #[command(subcommand, after_help = consumer::EXAMPLES)]
    Consumer(consumer::Command),
    /// A quick publish/consume benchmark against the server (on a throwaway stream).
    #[command(after_help = bench::EXAMPLES)]
    Bench(bench::Args),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  person-stream completions bash > ~/.local/share/bash-completion/completions/person-stream\n  person-stream completions zsh > ~/.zfunc/_person-stream\n  person-stream completions fish > ~/.config/fish/completions/person-stream.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Parses the arguments, runs the command, prints any error with its hint, and returns
/// the exit code.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "person-stream",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(person_cli::error::EXIT_OTHER);
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray tasks (a pending Ctrl-C listener, a stalled pull).
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    match cli.command {
        Command::Setup(args) => setup::run(g, args).await,
        Command::Status(args) => status::run(g, args).await,
        Command::Tail(args) => tail::run(g, args).await,
        Command::Publish(args) => publish::run(g, args).await,
        Command::Dlq(command) => dlq::run(g, command).await,
        Command::Consumer(command) => consumer::run(g, command).await,
        Command::Bench(args) => bench::run(g, args).await,
        Command::Completions { .. } => Ok(()),
    }
}

impl Global {
    /// The streaming configuration: the file given, or the defaults.
    pub(crate) fn streaming_config(&self) -> Result<StreamingConfig, CliError> {
        match &self.config {
            Some(path) => StreamingConfig::from_file(path).map_err(|e| {
                CliError::usage(format!("configuration {}: {e}", path.display()))
                    .with_hint("see \"Configuration from a file\" in the README for the format")
            }),
            None => Ok(StreamingConfig::default()),
        }
    }

    /// Connects without creating or changing anything on the server.
    pub(crate) async fn connect(&self) -> Result<StreamingClient, CliError> {
        let config = self.streaming_config()?;
        let mut builder = StreamingClient::builder(self.nats_url.clone())
            .ensure_on_connect(false)
            .connection_name("person-stream")
            .connection_timeout(Duration::from_secs(self.connect_timeout.max(1)))
            .require_tls(self.tls);
        if let Some(path) = &self.creds {
            builder = builder.credentials_file(path.clone());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            builder = builder.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("cannot read the NKey seed {}: {e}", path.display()))
            })?;
            builder = builder.nkey(seed.trim().to_owned());
        }
        if let Some(ca) = &self.tls_ca {
            builder = builder.root_certificate(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            builder = builder.client_certificate(cert.clone(), key.clone());
        }
        builder
            .connect(config)
            .await
            .map_err(|e| self.streaming_error(&e))
    }

    /// A streaming error, with a hint.
    pub(crate) fn streaming_error(&self, e: &person_streaming::StreamingError) -> CliError {
        CliError::from_streaming(e, &self.nats_url)
    }
}

/// Set once Ctrl-C is pressed. The first Ctrl-C asks the running command to stop at
/// the next safe point; it never cancels a step halfway.
#[derive(Debug, Clone)]
pub(crate) struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Starts listening for Ctrl-C.
    pub(crate) fn listen() -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        // On Unix the handler is registered here, before any work starts, so an early
        // Ctrl-C is never lost to the default handler.
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::interrupt()) {
                Ok(mut sigint) => {
                    tokio::spawn(async move {
                        if sigint.recv().await.is_some() {
                            set.store(true, Ordering::SeqCst);
                        }
                    });
                }
                Err(e) => eprintln!("warning: cannot listen for Ctrl-C: {e}"),
            }
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                set.store(true, Ordering::SeqCst);
            }
        });
        Self(flag)
    }

    /// `true` once Ctrl-C was pressed.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Prints one JSON document on a line.
pub(crate) fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
