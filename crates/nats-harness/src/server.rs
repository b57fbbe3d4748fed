//! Running real `nats-server` processes: a single server ([`NatsServer`]) and a cluster
//! ([`NatsCluster`]), each in its own temporary directory on loopback ports.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::provision::{self, ProvisionError};

/// How often readiness conditions are polled.
const POLL: Duration = Duration::from_millis(25);
/// How many log lines an error carries.
const LOG_TAIL_LINES: usize = 40;
/// The name of the cluster a [`NatsCluster`] forms.
const CLUSTER_NAME: &str = "harness";

/// Errors from starting, stopping and waiting for servers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No usable `nats-server` binary.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// A file-system or process operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The server process exited while it was starting.
    #[error("nats-server {name} exited during startup ({status}); log tail:\n{log_tail}")]
    Exited {
        /// The server's label.
        name: String,
        /// Its exit status.
        status: String,
        /// The end of its log for this run.
        log_tail: String,
    },
    /// The server did not become ready in time.
    #[error("nats-server {name} was not ready within {timeout:?}: {detail}; log tail:\n{log_tail}")]
    NotReady {
        /// The server's label.
        name: String,
        /// The readiness timeout.
        timeout: Duration,
        /// The last thing that was not ready yet.
        detail: String,
        /// The end of its log for this run.
        log_tail: String,
    },
    /// A graceful stop did not finish in time; the server was then killed.
    #[error(
        "nats-server {name} did not exit within {timeout:?} after SIGTERM, so it was killed; log tail:\n{log_tail}"
    )]
    StopTimeout {
        /// The server's label.
        name: String,
        /// The stop timeout.
        timeout: Duration,
        /// The end of its log.
        log_tail: String,
    },
    /// `start_again` on a server that is running.
    #[error("nats-server {name} is already running")]
    AlreadyRunning {
        /// The server's label.
        name: String,
    },
    /// A cluster node index out of range.
    #[error("no cluster node {index}: the cluster has {nodes} nodes")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// The cluster size.
        nodes: usize,
    },
    /// The config snippet sets something the harness owns.
    #[error("the nats-server config must not set {key}: {why}")]
    ConfigConflict {
        /// The offending setting.
        key: &'static str,
        /// Why the harness owns it.
        why: &'static str,
    },
    /// A cluster size of zero.
    #[error("a cluster needs at least one node")]
    EmptyCluster,
}

impl HarnessError {
    fn io(context: impl Into<String>, source: io::Error) -> HarnessError {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

/// How to run a server (or each node of a cluster).
///
/// The harness always sets the listen address (`127.0.0.1`), the client and monitoring ports,
/// the JetStream store directory and, for clusters, the cluster name, routes and server names,
/// as command-line flags; nats-server gives flags precedence over the config file, so a config
/// snippet never moves the server off its ports or store, while its other settings (auth,
/// accounts, limits, `jetstream { ... }` tuning, `max_payload`, ...) apply.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    config: Option<String>,
    jetstream: bool,
    ready_timeout: Duration,
    server_name: Option<String>,
    binary: Option<PathBuf>,
    extra_args: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            config: None,
            jetstream: true,
            ready_timeout: Duration::from_secs(20),
            server_name: None,
            binary: None,
            extra_args: Vec::new(),
        }
    }
}

impl ServerOptions {
    /// The defaults: JetStream on, no config file, a 20 s readiness timeout.
    pub fn new() -> ServerOptions {
        ServerOptions::default()
    }

    /// A nats-server config file's text (nats-server's config syntax), passed with `-c`.
    pub fn config(mut self, text: impl Into<String>) -> ServerOptions {
        self.config = Some(text.into());
        self
    }

    /// Whether to enable JetStream (`-js` with a temporary `-sd`); on by default.
    pub fn jetstream(mut self, enabled: bool) -> ServerOptions {
        self.jetstream = enabled;
        self
    }

    /// How long starting (and gracefully stopping) may take; 20 s by default.
    pub fn ready_timeout(mut self, timeout: Duration) -> ServerOptions {
        self.ready_timeout = timeout;
        self
    }

    /// The server name (`--server_name`) of a single server; cluster nodes are named
    /// `n1`, `n2`, ... instead.
    pub fn server_name(mut self, name: impl Into<String>) -> ServerOptions {
        self.server_name = Some(name.into());
        self
    }

    /// Use this binary as is instead of the provisioned one (no version check).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> ServerOptions {
        self.binary = Some(path.into());
        self
    }

    /// An extra command-line argument for `nats-server` (for example `-DV` for debug logs).
    pub fn arg(mut self, arg: impl Into<String>) -> ServerOptions {
        self.extra_args.push(arg.into());
        self
    }
}

/// The route settings of a cluster node.
#[derive(Debug, Clone)]
struct ClusterSpec {
    port: u16,
    routes: Vec<u16>,
}

/// One server process and its files; the process is killed when this is dropped.
#[derive(Debug)]
struct Node {
    label: String,
    bin: PathBuf,
    dir: PathBuf,
    store_dir: PathBuf,
    ports_dir: PathBuf,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
    opts: ServerOptions,
    server_name: Option<String>,
    cluster: Option<ClusterSpec>,
    client_port: Option<u16>,
    monitor_port: Option<u16>,
    log_offset: u64,
    child: Option<Child>,
}

impl Node {
    fn new(
        label: String,
        bin: PathBuf,
        dir: PathBuf,
        opts: ServerOptions,
        server_name: Option<String>,
        cluster: Option<ClusterSpec>,
    ) -> Result<Node, HarnessError> {
        let store_dir = dir.join("store");
        let ports_dir = dir.join("ports");
        for d in [&dir, &store_dir, &ports_dir] {
            fs::create_dir_all(d)
                .map_err(|e| HarnessError::io(format!("creating {}", d.display()), e))?;
        }
        let config_path = match &opts.config {
            Some(text) => {
                if opts.jetstream && config_sets_store_dir(text) {
                    return Err(HarnessError::ConfigConflict {
                        key: "jetstream.store_dir",
                        why: "the harness gives every server its own temporary store with -sd \
                              (see store_dir()), and nats-server rejects a config store_dir \
                              next to -sd (\"Duplicate 'store_dir' configuration\")",
                    });
                }
                let path = dir.join("server.conf");
                fs::write(&path, text)
                    .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
                Some(path)
            }
            None => None,
        };
        Ok(Node {
            label,
            bin,
            log_path: dir.join("server.log"),
            dir,
            store_dir,
            ports_dir,
            config_path,
            opts,
            server_name,
            cluster,
            client_port: None,
            monitor_port: None,
            log_offset: 0,
            child: None,
        })
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.client_port.map_or("-1".into(), |p| p.to_string()),
            "-m".into(),
            "-1".into(),
            "--ports_file_dir".into(),
            self.ports_dir.display().to_string(),
        ];
        if let Some(config) = &self.config_path {
            args.extend(["-c".into(), config.display().to_string()]);
        }
        if self.opts.jetstream {
            args.extend([
                "-js".into(),
                "-sd".into(),
                self.store_dir.display().to_string(),
            ]);
        }
        if let Some(name) = &self.server_name {
            args.extend(["--server_name".into(), name.clone()]);
        }
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            args.extend([
                "--cluster_name".into(),
                CLUSTER_NAME.into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", cluster.port),
                "--routes".into(),
                routes.join(","),
            ]);
        }
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawns the process (not waiting for anything).
    fn spawn(&mut self) -> Result<(), HarnessError> {
        for entry in fs::read_dir(&self.ports_dir)
            .map_err(|e| HarnessError::io(format!("listing {}", self.ports_dir.display()), e))?
            .filter_map(Result::ok)
        {
            let _ = fs::remove_file(entry.path());
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io(format!("opening {}", self.log_path.display()), e))?;
        self.log_offset = log.seek(io::SeekFrom::End(0)).unwrap_or(0);
        let args = self.args();
        let _ = writeln!(
            log,
            "=== nats-harness: starting {} {}",
            self.bin.display(),
            args.join(" ")
        );
        let stdout = log
            .try_clone()
            .map_err(|e| HarnessError::io("cloning the log file handle", e))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        let child = provision::spawn_retrying(&mut cmd)
            .map_err(|e| HarnessError::io(format!("starting {}", self.bin.display()), e))?;
        self.child = Some(child);
        self.monitor_port = None;
        Ok(())
    }

    /// The log written since the last spawn.
    fn current_log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path)
            && file.seek(io::SeekFrom::Start(self.log_offset)).is_ok()
        {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    fn log_tail(&self) -> String {
        provision::tail(&self.current_log(), LOG_TAIL_LINES)
    }

    /// An error if the process has exited.
    fn check_alive(&mut self) -> Result<(), HarnessError> {
        let status = match &mut self.child {
            None => Some("not running".to_string()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown: {e}")),
            },
        };
        match status {
            None => Ok(()),
            Some(status) => {
                self.child = None;
                Err(HarnessError::Exited {
                    name: self.label.clone(),
                    status,
                    log_tail: self.log_tail(),
                })
            }
        }
    }

    fn not_ready(&self, detail: impl Into<String>) -> HarnessError {
        HarnessError::NotReady {
            name: self.label.clone(),
            timeout: self.opts.ready_timeout,
            detail: detail.into(),
            log_tail: self.log_tail(),
        }
    }

    /// Waits for the ports file, which nats-server writes once it listens.
    async fn wait_ports(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        loop {
            self.check_alive()?;
            if let Some((client, monitor)) = read_ports(&self.ports_dir) {
                self.client_port = Some(client);
                self.monitor_port = Some(monitor);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready("no ports file yet (the server is not listening)"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Spawns and waits until the server listens, retrying while a fixed port is still taken.
    async fn launch(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        loop {
            self.spawn()?;
            match self.wait_ports(deadline).await {
                Err(HarnessError::Exited { .. })
                    if Instant::now() < deadline
                        && self.current_log().contains("address already in use") =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until `/healthz` answers 200: JetStream is up, has recovered its streams and, in
    /// a cluster, is in contact with the meta leader and current.
    async fn wait_healthy(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        let mut last = String::from("no answer from the monitoring endpoint yet");
        loop {
            self.check_alive()?;
            if let Some(port) = self.monitor_port {
                match http_get(port, "/healthz").await {
                    Ok((200, _)) => return Ok(()),
                    Ok((status, body)) => last = format!("/healthz: {status} {}", body.trim()),
                    Err(e) => last = format!("/healthz: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(last));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn start(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Err(HarnessError::AlreadyRunning {
                name: self.label.clone(),
            });
        }
        let deadline = Instant::now() + self.opts.ready_timeout;
        self.launch(deadline).await?;
        self.wait_healthy(deadline).await
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.monitor_port = None;
    }

    async fn stop(&mut self) -> Result<(), HarnessError> {
        let Some(child) = &mut self.child else {
            return Ok(());
        };
        if !matches!(child.try_wait(), Ok(None)) {
            self.child = None;
            self.monitor_port = None;
            return Ok(());
        }
        let pid = child.id();
        let signalled = Command::new(&self.bin)
            .arg("--signal")
            .arg(format!("term={pid}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !signalled {
            self.kill();
            return Ok(());
        }
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            let exited = match &mut self.child {
                Some(child) => !matches!(child.try_wait(), Ok(None)),
                None => true,
            };
            if exited {
                self.child = None;
                self.monitor_port = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(HarnessError::StopTimeout {
                    name: self.label.clone(),
                    timeout: self.opts.ready_timeout,
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port.unwrap_or(0))
    }

    fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a config text sets the JetStream store directory (`store_dir`, `storedir` or
/// `store` as a key), ignoring comments.
fn config_sets_store_dir(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("");
        let line = line.split("//").next().unwrap_or("").to_ascii_lowercase();
        ["store_dir", "storedir", "store"].iter().any(|key| {
            line.match_indices(key).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + key.len()..].trim_start().chars().next();
                let starts_word = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
                starts_word && matches!(after, Some(':' | '='))
                    || starts_word && *key != "store" && matches!(after, Some('"' | '/'))
            })
        })
    })
}

/// The client and monitoring ports from the ports file in `dir`, once it is complete.
fn read_ports(dir: &Path) -> Option<(u16, u16)> {
    let entries = fs::read_dir(dir).ok()?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "ports") {
            continue;
        }
        let text = fs::read_to_string(&path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let port_of = |key: &str| -> Option<u16> {
            let url = json.get(key)?.get(0)?.as_str()?;
            url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
        };
        return Some((port_of("nats")?, port_of("monitoring")?));
    }
    None
}

/// A minimal HTTP/1.0 GET against the loopback monitoring port: (status, body).
async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "malformed HTTP response".to_string())?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// `/jsz` of a node as JSON.
async fn jsz(port: u16) -> Result<serde_json::Value, String> {
    let (status, body) = http_get(port, "/jsz").await?;
    if status != 200 {
        return Err(format!("/jsz: {status} {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("/jsz: {e}"))
}

/// The binary to run: the one in the options, or the provisioned one (resolved off the
/// async runtime's worker, since a first resolution may download and install).
async fn binary_for(opts: &ServerOptions) -> Result<PathBuf, HarnessError> {
    if let Some(bin) = &opts.binary {
        return Ok(bin.clone());
    }
    match tokio::task::spawn_blocking(provision::nats_server_bin).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(HarnessError::io(
            "resolving the nats-server binary",
            io::Error::other(e.to_string()),
        )),
    }
}

fn temp_dir(prefix: &str) -> Result<TempDir, HarnessError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| HarnessError::io("creating a temporary directory", e))
}

/// A JetStream-enabled `nats-server` on a free loopback port, with its store and log in a
/// temporary directory. Dropping it kills the server and removes the directory.
///
/// The first start picks a free port; later starts ([`restart`](Self::restart),
/// [`start_again`](Self::start_again)) reuse the same port and store, so clients reconnect
/// and stored data survives.
#[derive(Debug)]
pub struct NatsServer {
    node: Node,
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a server with the default [`ServerOptions`] and waits until it is ready.
    pub async fn start() -> Result<NatsServer, HarnessError> {
        NatsServer::with_options(ServerOptions::default()).await
    }

    /// Starts a server with a config snippet (nats-server syntax: auth, accounts, limits,
    /// `jetstream { ... }` tuning, ...). Ports and the store directory stay the harness's.
    pub async fn with_config(config_text: &str) -> Result<NatsServer, HarnessError> {
        NatsServer::with_options(ServerOptions::default().config(config_text)).await
    }

    /// Starts a server with the given options and waits until `/healthz` reports it ready.
    pub async fn with_options(opts: ServerOptions) -> Result<NatsServer, HarnessError> {
        let bin = binary_for(&opts).await?;
        let dir = temp_dir("nats-harness-")?;
        let label = opts
            .server_name
            .clone()
            .unwrap_or_else(|| "server".to_string());
        let server_name = opts.server_name.clone();
        let mut node = Node::new(
            label,
            bin,
            dir.path().to_path_buf(),
            opts,
            server_name,
            None,
        )?;
        node.start().await?;
        Ok(NatsServer { node, _dir: dir })
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The client port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.node.client_port.unwrap_or(0)
    }

    /// The monitoring endpoint (`http://127.0.0.1:PORT`) of the running process; it changes
    /// on every start.
    pub fn monitoring_url(&self) -> Option<String> {
        self.node
            .monitor_port
            .map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// The JetStream store directory (`-sd`); kept across restarts and kills.
    pub fn store_dir(&self) -> &Path {
        &self.node.store_dir
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.node.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.node.is_running()
    }

    /// The whole log (every start, each after a `=== nats-harness: starting ...` line).
    pub fn log(&self) -> String {
        self.node.log()
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.node.log_path
    }

    /// Kills the server with SIGKILL (a crash) and waits for it to be gone; the store is kept.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Stops the server gracefully (SIGTERM, sent with `nats-server --signal term=PID`) and
    /// waits for it to exit. Does nothing if it is not running.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        self.node.stop().await
    }

    /// Starts the server again after [`kill`](Self::kill) or [`stop`](Self::stop), on the
    /// same port with the same store, and waits until it is ready.
    pub async fn start_again(&mut self) -> Result<(), HarnessError> {
        self.node.start().await
    }

    /// Stops the server gracefully and starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.node.stop().await?;
        self.node.start().await
    }
}

/// A JetStream cluster of `n` servers on loopback, connected by routes, each with its own
/// store directory and server name (`n1`, `n2`, ...). Dropping it kills every node and removes
/// the directory.
///
/// Nodes are addressed by index (`0..n`). Route ports and client ports are fixed after the
/// first start, so a node started again rejoins the cluster and clients reconnect.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts an `n`-node cluster with the default [`ServerOptions`] and waits until every
    /// node is healthy and the JetStream meta leader sees every peer as current, so streams
    /// with `n` replicas can be created at once.
    pub async fn start(n: usize) -> Result<NatsCluster, HarnessError> {
        NatsCluster::with_options(n, ServerOptions::default()).await
    }

    /// Like [`start`](Self::start), with options applied to every node (the config snippet
    /// must leave the `cluster { ... }` settings to the harness).
    pub async fn with_options(n: usize, opts: ServerOptions) -> Result<NatsCluster, HarnessError> {
        if n == 0 {
            return Err(HarnessError::EmptyCluster);
        }
        let bin = binary_for(&opts).await?;
        let dir = temp_dir("nats-harness-cluster-")?;
        let route_ports = free_ports(n)?;
        let mut nodes = Vec::with_capacity(n);
        for (i, port) in route_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let spec = ClusterSpec {
                port: *port,
                routes: route_ports.clone(),
            };
            nodes.push(Node::new(
                name.clone(),
                bin.clone(),
                dir.path().join(&name),
                opts.clone(),
                Some(name),
                Some(spec),
            )?);
        }
        let mut cluster = NatsCluster { nodes, _dir: dir };
        let deadline = Instant::now() + opts.ready_timeout;
        for node in &mut cluster.nodes {
            node.spawn()?;
        }
        for node in &mut cluster.nodes {
            match node.wait_ports(deadline).await {
                Err(HarnessError::Exited { .. })
                    if node.current_log().contains("address already in use") =>
                {
                    node.launch(deadline).await?;
                }
                other => other?,
            }
        }
        for node in &mut cluster.nodes {
            node.wait_healthy(deadline).await?;
        }
        if opts.jetstream {
            cluster.wait_meta_current(deadline).await?;
        }
        Ok(cluster)
    }

    /// Waits until the meta leader reports every other node as a current peer.
    async fn wait_meta_current(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        let expected = self.nodes.len() - 1;
        loop {
            let last = match self.meta_peers_current(expected).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(self.nodes[0].not_ready(last));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Ok if the meta leader reports at least `expected` current peers; else what is missing.
    async fn meta_peers_current(&self, expected: usize) -> Result<(), String> {
        let leader = self
            .meta_leader_index()
            .await?
            .ok_or_else(|| "no meta leader yet".to_string())?;
        let node = &self.nodes[leader];
        let port = node
            .monitor_port
            .ok_or_else(|| format!("the meta leader {} is not running", node.label))?;
        let json = jsz(port).await?;
        let current = json["meta_cluster"]["replicas"]
            .as_array()
            .map_or(0, |replicas| {
                replicas
                    .iter()
                    .filter(|r| r["current"].as_bool() == Some(true))
                    .count()
            });
        if current >= expected {
            Ok(())
        } else {
            Err(format!(
                "meta leader {} sees {current} of {expected} peers current",
                node.label
            ))
        }
    }

    /// The index of the node that is the JetStream meta leader, as reported by a running node.
    async fn meta_leader_index(&self) -> Result<Option<usize>, String> {
        let mut last = Err("no running node".to_string());
        for node in &self.nodes {
            let Some(port) = node.monitor_port else {
                continue;
            };
            match jsz(port).await {
                Ok(json) => {
                    let leader = json["meta_cluster"]["leader"].as_str().unwrap_or("");
                    if !leader.is_empty() {
                        return Ok(self.index_of(leader));
                    }
                    last = Ok(None);
                }
                Err(e) => last = Err(e),
            }
        }
        last
    }

    /// The name of the current JetStream meta leader, if a running node knows one.
    pub async fn meta_leader(&self) -> Option<String> {
        match self.meta_leader_index().await {
            Ok(Some(i)) => Some(self.nodes[i].label.clone()),
            _ => None,
        }
    }

    fn node(&mut self, index: usize) -> Result<&mut Node, HarnessError> {
        let nodes = self.nodes.len();
        self.nodes
            .get_mut(index)
            .ok_or(HarnessError::NoSuchNode { index, nodes })
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL; pass this to `async_nats::connect` (which takes a list but
    /// not a comma-separated string).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Every node's client URL, comma-separated (the form the `nats` CLI's `--server` and
    /// most other clients accept). For async-nats use [`urls`](Self::urls).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// One node's client URL.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn node_url(&self, index: usize) -> String {
        self.nodes[index].url()
    }

    /// One node's client port.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].client_port.unwrap_or(0)
    }

    /// One node's server name (`n1`, `n2`, ...).
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn server_name(&self, index: usize) -> &str {
        &self.nodes[index].label
    }

    /// The index of the node with this server name (as in stream info's `cluster.leader`).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.label == server_name)
    }

    /// One node's store directory.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn store_dir(&self, index: usize) -> &Path {
        &self.nodes[index].store_dir
    }

    /// One node's whole log.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn log(&self, index: usize) -> String {
        self.nodes[index].log()
    }

    /// Whether a node's process is running (false for an out-of-range index).
    pub fn is_running(&mut self, index: usize) -> bool {
        self.nodes.get_mut(index).is_some_and(Node::is_running)
    }

    /// Kills a node with SIGKILL (a crash) and waits for it to be gone; its store is kept.
    pub fn kill(&mut self, index: usize) -> Result<(), HarnessError> {
        self.node(index)?.kill();
        Ok(())
    }

    /// Stops a node gracefully (SIGTERM).
    pub async fn stop(&mut self, index: usize) -> Result<(), HarnessError> {
        self.node(index)?.stop().await
    }

    /// Starts a killed or stopped node again with the same ports and store and waits until
    /// it is healthy, which needs a quorum of nodes running.
    pub async fn start_again(&mut self, index: usize) -> Result<(), HarnessError> {
        self.node(index)?.start().await
    }

    /// Stops a node gracefully and starts it again.
    pub async fn restart(&mut self, index: usize) -> Result<(), HarnessError> {
        let node = self.node(index)?;
        node.stop().await?;
        node.start().await
    }
}

/// `n` distinct free loopback ports (bound together, then released).
fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| HarnessError::io("finding free loopback ports", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| HarnessError::io("finding free loopback ports", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_a_store_dir_in_config() {
        assert!(config_sets_store_dir("jetstream { store_dir: \"/x\" }"));
        assert!(config_sets_store_dir("jetstream {\n  store = /x\n}"));
        assert!(config_sets_store_dir("jetstream { storedir /x }"));
        assert!(!config_sets_store_dir(
            "# store_dir: /x\njetstream { max_mem: 1GB }"
        ));
        assert!(!config_sets_store_dir("max_store: 1GB"));
        assert!(!config_sets_store_dir("jetstream { max_file_store: 1GB }"));
    }

    #[test]
    fn reads_ports_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_ports(dir.path()), None);
        fs::write(
            dir.path().join("nats-server_1.ports"),
            r#"{"nats":["nats://127.0.0.1:39701"],"monitoring":["http://127.0.0.1:35687"]}"#,
        )
        .unwrap();
        assert_eq!(read_ports(dir.path()), Some((39701, 35687)));
    }

    #[test]
    fn args_fix_ports_after_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node::new(
            "t".into(),
            "nats-server".into(),
            dir.path().join("n"),
            ServerOptions::new().config("max_payload: 1MB"),
            None,
            None,
        )
        .unwrap();
        let args = node.args().join(" ");
        assert!(args.contains("-p -1"), "{args}");
        assert!(args.contains("-js -sd"), "{args}");
        assert!(args.contains("-c "), "{args}");
        node.client_port = Some(4333);
        assert!(node.args().join(" ").contains("-p 4333"));
    }
}
