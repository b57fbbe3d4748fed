//! [`StreamingClient`]: a connection plus the streams and consumers it ensures.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectErrorKind, ConnectOptions};
use person_events::subject::Subjects;

use crate::config::{
    AckPolicy, ConsumerSettings, DeliverPolicy, Retention, Storage, StreamSettings, StreamingConfig,
};
use crate::error::{StreamingError, StreamingErrorKind};
use crate::{AggregateReader, DeadLetterQueue, Publisher};

/// How to authenticate and connect. Built through [`StreamingClient::builder`].
#[derive(Debug, Clone, Default)]
enum Credentials {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
    NKey(String),
    CredsFile(PathBuf),
}

/// Connection options for [`StreamingClient`].
///
/// ```no_run
/// use person_streaming::{StreamingClient, StreamingConfig};
/// # async fn run() -> Result<(), person_streaming::StreamingError> {
/// let client = StreamingClient::builder("tls://nats.example.com:4222")
///     .user_and_password("svc-person", "secret")
///     .root_certificate("/etc/ssl/nats-ca.pem")
///     .connection_name("person-api")
///     .connect(StreamingConfig::default())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct StreamingClientBuilder {
    url: String,
    credentials: Credentials,
    require_tls: bool,
    root_certificates: Vec<PathBuf>,
    client_certificate: Option<(PathBuf, PathBuf)>,
    name: Option<String>,
    max_reconnects: Option<usize>,
    connection_timeout: Duration,
    retry_on_initial_connect: bool,
    ensure_on_connect: bool,
}

impl StreamingClientBuilder {
    /// Authenticate with user and password.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Credentials::UserPassword(user.into(), password.into());
        self
    }

    /// Authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Credentials::Token(token.into());
        self
    }

    /// Authenticate with an NKey seed.
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.credentials = Credentials::NKey(seed.into());
        self
    }

    /// Authenticate with a `.creds` file (JWT + NKey).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials = Credentials::CredsFile(path.into());
        self
    }

    /// Require TLS even if the server does not ask for it.
    pub fn require_tls(mut self, require: bool) -> Self {
        self.require_tls = require;
        self
    }

    /// Trust this CA certificate (PEM). Implies TLS.
    pub fn root_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certificates.push(path.into());
        self
    }

    /// Present this client certificate and key (PEM) for mutual TLS.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// The connection name shown in server monitoring.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Give up after this many reconnect attempts (default: never give up).
    pub fn max_reconnects(mut self, attempts: usize) -> Self {
        self.max_reconnects = Some(attempts);
        self
    }

    /// Timeout of one connection attempt (default 5 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Keep retrying the first connection instead of failing (default: fail fast).
    pub fn retry_on_initial_connect(mut self, retry: bool) -> Self {
        self.retry_on_initial_connect = retry;
        self
    }

    /// Whether [`connect`](Self::connect) ensures the streams and consumers (default:
    /// yes). Turn it off for read-only tools that must not create or change anything;
    /// call [`StreamingClient::ensure`] or [`StreamingClient::plan`] yourself.
    pub fn ensure_on_connect(mut self, ensure: bool) -> Self {
        self.ensure_on_connect = ensure;
        self
    }

    /// Connects, validates `config`, and ensures its streams and consumers exist (unless
    /// [`ensure_on_connect`](Self::ensure_on_connect) is off). An ensure whose requests
    /// go unanswered (a cluster still electing leaders or placing replicas) is tried
    /// again for up to 30 s; any other error is returned at once.
    pub async fn connect(self, config: StreamingConfig) -> Result<StreamingClient, StreamingError> {
        let config = config.with_replay_subjects();
        config.validate()?;
        let mut options = match &self.credentials {
            Credentials::None => ConnectOptions::new(),
            Credentials::UserPassword(u, p) => {
                ConnectOptions::with_user_and_password(u.clone(), p.clone())
            }
            Credentials::Token(t) => ConnectOptions::with_token(t.clone()),
            Credentials::NKey(seed) => ConnectOptions::with_nkey(seed.clone()),
            Credentials::CredsFile(path) => ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| {
                    StreamingError::with_source(
                        StreamingErrorKind::Authentication,
                        format!("cannot read credentials file {}", path.display()),
                        e,
                    )
                })?,
        };
        options = options
            .connection_timeout(self.connection_timeout)
            .request_timeout(Some(Duration::from_millis(config.publisher.ack_timeout_ms)))
            .require_tls(self.require_tls || !self.root_certificates.is_empty());
        for ca in &self.root_certificates {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_certificate {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        if let Some(max) = self.max_reconnects {
            options = options.max_reconnects(max);
        }
        if self.retry_on_initial_connect {
            options = options.retry_on_initial_connect();
        }
        let denials = Denials::default();
        let recorder = denials.clone();
        options = options.event_callback(move |event| {
            let recorder = recorder.clone();
            async move {
                if let async_nats::Event::ServerError(e) = &event {
                    tracing::warn!(error = %e, "the server reported an error");
                    if let Some(subject) = denied_publish_subject(e) {
                        recorder.record(subject);
                    }
                }
            }
        });
        // A comma-separated list names several servers of one cluster.
        let addrs = self
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                StreamingError::with_source(
                    StreamingErrorKind::InvalidConfig,
                    format!(
                        "`{}` is not a NATS URL (or a comma-separated list of them)",
                        self.url
                    ),
                    e,
                )
            })?;
        let client = options.connect(addrs).await.map_err(|e| {
            let kind = match e.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    StreamingErrorKind::Authentication
                }
                ConnectErrorKind::Tls => StreamingErrorKind::Tls,
                ConnectErrorKind::TimedOut => StreamingErrorKind::TimedOut,
                _ => StreamingErrorKind::Connect,
            };
            let hint = match kind {
                StreamingErrorKind::Authentication => {
                    " (check the user/password, token, nkey or creds file)"
                }
                StreamingErrorKind::Tls => {
                    " (check the CA and client certificates, and that the server speaks TLS)"
                }
                _ => " (is nats-server running there? set NATS_URL to point elsewhere)",
            };
            StreamingError::with_source(kind, format!("cannot connect to {}{hint}", self.url), e)
        })?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(Duration::from_millis(config.publisher.ack_timeout_ms));
        let this = StreamingClient {
            client,
            jetstream,
            config,
            denials,
        };
        if self.ensure_on_connect {
            let deadline = tokio::time::Instant::now() + ENSURE_PATIENCE;
            let mut delay = Duration::from_millis(200);
            loop {
                match this.ensure().await {
                    Ok(_) => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            StreamingErrorKind::TimedOut | StreamingErrorKind::JetStream
                        ) && tokio::time::Instant::now() + delay < deadline =>
                    {
                        tracing::warn!(error = %e, "ensuring the streams went unanswered; trying again");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(this)
    }
}

/// How long `connect` keeps trying an ensure whose requests go unanswered.
const ENSURE_PATIENCE: Duration = Duration::from_secs(30);

/// A NATS connection with JetStream, and the configuration it set up.
///
/// `new` connects, validates the config and ensures the event stream, the DLQ stream and
/// the configured consumers exist (idempotently).
///
/// ```no_run
/// use person_streaming::{StreamingClient, StreamingConfig};
/// # async fn run() -> Result<(), person_streaming::StreamingError> {
/// // Create configuration
/// let config = StreamingConfig::default();
///
/// // Connect with streaming
/// let client = StreamingClient::new("nats://localhost:4222", config).await?;
/// # let _ = client.jetstream();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct StreamingClient {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: StreamingConfig,
    denials: Denials,
}

/// Subjects the server refused this connection permission to publish on. The server
/// reports a denied publish only asynchronously (`-ERR 'Permissions Violation for
/// Publish to "<subject>"'`), while the publish itself just gets no ack; the publisher
/// looks here to turn that silence into a [`crate::PublishErrorKind::PermissionDenied`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Denials(Arc<Mutex<VecDeque<String>>>);

impl Denials {
    /// The most recent denied subjects kept.
    const KEEP: usize = 64;

    pub(crate) fn record(&self, subject: String) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !list.contains(&subject) {
            if list.len() == Self::KEEP {
                list.pop_front();
            }
            list.push_back(subject);
        }
    }

    /// `true` when the server denied publishing on `subject` on this connection.
    pub(crate) fn publish_denied(&self, subject: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|s| s == subject)
    }

    /// The recorded denied subject that is `subject`, or under it when `subject` ends
    /// in `.`.
    pub(crate) fn denied_under(&self, subject: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| *s == subject || (subject.ends_with('.') && s.starts_with(subject)))
            .cloned()
    }
}

/// The subject of a "Permissions Violation for Publish to" server error.
fn denied_publish_subject(e: &async_nats::ServerError) -> Option<String> {
    const PREFIX: &str = "permissions violation for publish to ";
    let async_nats::ServerError::Other(text) = e else {
        return None;
    };
    let head = text.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    Some(text[PREFIX.len()..].trim().trim_matches('"').to_owned())
}

/// What [`StreamingClient::ensure`] did, or what [`StreamingClient::plan`] would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Streams created.
    pub created_streams: Vec<String>,
    /// Streams whose configuration was updated.
    pub updated_streams: Vec<String>,
    /// Streams already as configured.
    pub unchanged_streams: Vec<String>,
    /// Every consumer ensured (durable names), whatever happened to it.
    pub consumers: Vec<String>,
    /// Consumers created.
    pub created_consumers: Vec<String>,
    /// Consumers whose configuration was updated.
    pub updated_consumers: Vec<String>,
    /// Consumers already as configured.
    pub unchanged_consumers: Vec<String>,
    /// One line per changed setting, `<name>: <field> <current> -> <desired>`.
    pub changes: Vec<String>,
}

impl EnsureReport {
    /// `true` when nothing was (or would be) created or updated.
    pub fn is_unchanged(&self) -> bool {
        self.created_streams.is_empty()
            && self.updated_streams.is_empty()
            && self.created_consumers.is_empty()
            && self.updated_consumers.is_empty()
    }
}

impl StreamingClient {
    /// Connects without credentials and ensures the configured streams and consumers.
    pub async fn new(url: &str, config: StreamingConfig) -> Result<Self, StreamingError> {
        Self::builder(url).connect(config).await
    }

    /// Connection options: credentials, TLS, name, reconnects.
    pub fn builder(url: impl Into<String>) -> StreamingClientBuilder {
        StreamingClientBuilder {
            url: url.into(),
            credentials: Credentials::None,
            require_tls: false,
            root_certificates: Vec::new(),
            client_certificate: None,
            name: None,
            max_reconnects: None,
            connection_timeout: Duration::from_secs(5),
            retry_on_initial_connect: false,
            ensure_on_connect: true,
        }
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The configuration in use.
    pub fn config(&self) -> &StreamingConfig {
        &self.config
    }

    /// A publisher for the event stream.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.jetstream.clone(), &self.config, self.denials.clone())
    }

    /// A reader of one person's events.
    pub fn reader(&self) -> AggregateReader {
        AggregateReader::new(self.jetstream.clone(), &self.config, self.denials.clone())
    }

    /// The dead-letter queue.
    pub fn dead_letters(&self) -> DeadLetterQueue {
        DeadLetterQueue::new(self.jetstream.clone(), &self.config)
            .with_denials(self.denials.clone())
    }

    /// The permission violations the server reported on this connection.
    pub(crate) fn denials(&self) -> &Denials {
        &self.denials
    }

    /// Creates or updates the event stream, the DLQ stream and every configured consumer.
    /// Idempotent. A setting that cannot change in place (storage, retention, the
    /// partitions of a partitioned stream) gives an [`StreamingErrorKind::ImmutableField`]
    /// error naming it, never a silent keep.
    ///
    /// With `stream.partitions > 0` the event stream gets its partition transform
    /// ([`Subjects::partition_transform`]), on an existing stream as an update in place,
    /// sent after the consumers are ensured so that none misses an event stored in
    /// between. A consumer group (`partitions > 1`) is ensured as the durables of
    /// [`StreamingConfig::consumer_group`], with the key-value bucket
    /// [`StreamingConfig::groups_bucket`].
    pub async fn ensure(&self) -> Result<EnsureReport, StreamingError> {
        self.ensure_or_plan(true)
            .await
            .map_err(|e| e.denied_on(&self.denials, self.api_subjects()))
    }

    /// What [`ensure`](Self::ensure) would do, changing nothing: streams and consumers
    /// to create or update, and each setting that differs. A setting that cannot change
    /// in place gives the same [`StreamingErrorKind::ImmutableField`] error `ensure`
    /// would. A consumer on a stream that does not exist yet is reported as created.
    pub async fn plan(&self) -> Result<EnsureReport, StreamingError> {
        self.ensure_or_plan(false)
            .await
            .map_err(|e| e.denied_on(&self.denials, self.api_subjects()))
    }

    /// The JetStream API subjects `ensure` and `plan` request (both streams, consumers).
    fn api_subjects(&self) -> Vec<String> {
        let mut subjects = crate::error::stream_api(&self.config.stream.name);
        subjects.extend(crate::error::stream_api(&self.config.dlq.name));
        subjects
    }

    async fn ensure_or_plan(&self, apply: bool) -> Result<EnsureReport, StreamingError> {
        // `connect` validated already; checking again costs nothing and keeps this
        // true whatever path built the client.
        self.config.validate()?;
        let mut report = EnsureReport::default();
        let subjects = self.config.subjects();
        // Every consumer the configuration runs on: a group stands for its durables.
        let mut consumers = Vec::with_capacity(self.config.consumers.len());
        let mut groups = false;
        for c in &self.config.consumers {
            if c.partitions > 1 {
                let group = self.config.consumer_group(c)?;
                consumers.push(group.legacy);
                consumers.extend(group.partitions);
                consumers.extend(group.replays);
                groups = true;
            } else {
                consumers.push(c.clone());
            }
        }
        let mut transform_later = None;
        for (at, settings) in [("stream", &self.config.stream), ("dlq", &self.config.dlq)] {
            let later =
                ensure_stream(&self.jetstream, at, settings, &subjects, &mut report, apply).await?;
            transform_later = transform_later.or(later);
        }
        self.ensure_bodies_bucket(&mut report, apply).await?;
        if groups {
            self.ensure_groups_bucket(&mut report, apply).await?;
        }
        let stream_missing = report.created_streams.contains(&self.config.stream.name);
        for c in &consumers {
            let name = c.durable_name.clone();
            let plan = if stream_missing {
                ConsumerPlan::Create
            } else {
                self.consumer_plan(c).await?
            };
            match &plan {
                ConsumerPlan::Create => report.created_consumers.push(name.clone()),
                ConsumerPlan::Update { changes, .. } if changes.is_empty() => {
                    report.unchanged_consumers.push(name.clone());
                }
                ConsumerPlan::Update { changes, .. } => {
                    report
                        .changes
                        .extend(changes.iter().map(|c| format!("consumer {name}: {c}")));
                    report.updated_consumers.push(name.clone());
                }
            }
            if apply {
                self.apply_consumer_plan(c, plan).await?;
            }
            report.consumers.push(name);
        }
        // The partition transform goes last: every consumer already selects the
        // partitioned subjects (or, for a group's legacy durable, no longer selects
        // them) when the first event is stored on one.
        if let Some(update) = transform_later
            && apply
        {
            update_stream(&self.jetstream, "stream", &update).await?;
        }
        Ok(report)
    }

    /// Creates the groups bucket ([`StreamingConfig::groups_bucket`]) when it is
    /// missing: one value per key, the event stream's storage and replicas, values kept
    /// one hour. An existing bucket is left as it is. Reported among the streams as
    /// `<bucket> (key-value)`.
    async fn ensure_groups_bucket(
        &self,
        report: &mut EnsureReport,
        apply: bool,
    ) -> Result<(), StreamingError> {
        let bucket = self.config.groups_bucket();
        let label = format!("{bucket} (key-value)");
        match self.jetstream.get_stream(format!("KV_{bucket}")).await {
            Ok(_) => {
                report.unchanged_streams.push(label);
                return Ok(());
            }
            Err(e) if is_stream_not_found(&e) => {}
            Err(e) => return Err(js_error(format!("cannot read bucket {bucket}"), e)),
        }
        if apply {
            let stream = &self.config.stream;
            self.jetstream
                .create_key_value(jetstream::kv::Config {
                    bucket: bucket.clone(),
                    description: format!(
                        "consumer group members and partition leases of {}",
                        stream.name
                    ),
                    history: 1,
                    max_age: GROUPS_MAX_AGE,
                    storage: match stream.storage {
                        Storage::File => stream::StorageType::File,
                        Storage::Memory => stream::StorageType::Memory,
                    },
                    num_replicas: stream.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| js_error(format!("cannot create bucket {bucket}"), e))?;
        }
        report.created_streams.push(label);
        Ok(())
    }

    /// Creates the bodies bucket ([`StreamingConfig::bodies_bucket`]) when it is missing,
    /// with the DLQ stream's storage, replicas and max age. An existing bucket is left
    /// as it is. Reported among the streams as `<bucket> (object store)`.
    async fn ensure_bodies_bucket(
        &self,
        report: &mut EnsureReport,
        apply: bool,
    ) -> Result<(), StreamingError> {
        let bucket = self.config.bodies_bucket();
        let label = format!("{bucket} (object store)");
        match self.jetstream.get_object_store(&bucket).await {
            Ok(_) => {
                report.unchanged_streams.push(label);
                return Ok(());
            }
            Err(e) if crate::dlq::bucket_missing(&e) => {}
            Err(e) => return Err(js_error(format!("cannot read bucket {bucket}"), e)),
        }
        if apply {
            let dlq = &self.config.dlq;
            self.jetstream
                .create_object_store(jetstream::object_store::Config {
                    bucket: bucket.clone(),
                    description: Some(format!(
                        "whole dead letters too large for a record of {}",
                        dlq.name
                    )),
                    max_age: dlq.max_age(),
                    storage: match dlq.storage {
                        crate::config::Storage::File => jetstream::stream::StorageType::File,
                        crate::config::Storage::Memory => jetstream::stream::StorageType::Memory,
                    },
                    num_replicas: dlq.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| js_error(format!("cannot create bucket {bucket}"), e))?;
        }
        report.created_streams.push(label);
        Ok(())
    }

    /// What ensuring `settings` takes: create the consumer, or update the server's
    /// current configuration in the managed fields only (no change when they match).
    async fn consumer_plan(
        &self,
        settings: &ConsumerSettings,
    ) -> Result<ConsumerPlan, StreamingError> {
        let settings = &self.config.on_the_wire(settings);
        let stream = self
            .jetstream
            .get_stream_no_info(&self.config.stream.name)
            .await
            .map_err(|e| js_error(format!("cannot open stream {}", self.config.stream.name), e))?;
        let info = match stream.consumer_info(&settings.durable_name).await {
            Ok(info) => info,
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                return Ok(ConsumerPlan::Create);
            }
            Err(e) => {
                return Err(js_error(
                    format!("cannot read consumer {}", settings.durable_name),
                    e,
                ));
            }
        };
        let mut update = info.config.clone();
        let changes = apply_consumer_settings(&mut update, settings);
        Ok(ConsumerPlan::Update {
            update: Box::new(update),
            changes,
        })
    }

    async fn apply_consumer_plan(
        &self,
        settings: &ConsumerSettings,
        plan: ConsumerPlan,
    ) -> Result<(), StreamingError> {
        let settings = &self.config.on_the_wire(settings);
        let stream = self
            .jetstream
            .get_stream_no_info(&self.config.stream.name)
            .await
            .map_err(|e| js_error(format!("cannot open stream {}", self.config.stream.name), e))?;
        match plan {
            ConsumerPlan::Create => {
                stream
                    .create_consumer(consumer_config(settings))
                    .await
                    .map_err(|e| {
                        js_error(
                            format!("cannot create consumer {}", settings.durable_name),
                            e,
                        )
                    })?;
            }
            ConsumerPlan::Update { changes, .. } if changes.is_empty() => {}
            ConsumerPlan::Update { update, .. } => {
                // An update, never a create: a consumer deleted since it was read is
                // not brought back from its old settings.
                stream.update_consumer(*update).await.map_err(|e| {
                    js_error(
                        format!("cannot update consumer {}", settings.durable_name),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Creates one consumer on the event stream, or updates the fields
    /// [`ConsumerSettings`] manages on an existing one (every other setting stays as
    /// it is on the server, as [`ensure`](Self::ensure) does). Refuses, before
    /// sending anything, a consumer whose `ack_policy` is not explicit (see
    /// [`AckPolicy`]).
    pub async fn ensure_consumer(&self, settings: &ConsumerSettings) -> Result<(), StreamingError> {
        crate::config::check_ack_policy("ack_policy", settings)?;
        let plan = self.consumer_plan(settings).await?;
        self.apply_consumer_plan(settings, plan).await
    }
}

/// What ensuring one consumer takes.
enum ConsumerPlan {
    /// It does not exist: create it from [`consumer_config`].
    Create,
    /// It exists: `update` is its current configuration with the managed fields set,
    /// and `changes` names each one that differs (nothing to send when empty).
    Update {
        update: Box<consumer::Config>,
        changes: Vec<String>,
    },
}

/// The setting lines of a plan, collected while the update is built, so that what
/// [`StreamingClient::plan`] lists and what [`StreamingClient::ensure`] sends cannot
/// drift apart.
#[derive(Default)]
struct Changes(Vec<String>);

impl Changes {
    /// Sets `slot` to `want`, recording `<field> <now> -> <want>` when they differ.
    fn set<T: PartialEq + std::fmt::Debug>(&mut self, field: &str, slot: &mut T, want: T) {
        if *slot != want {
            self.0.push(format!("{field} {slot:?} -> {want:?}"));
            *slot = want;
        }
    }
}

/// How long the groups bucket keeps a value: a lease or membership not renewed within
/// it is gone.
const GROUPS_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// `true` when a stream lookup failed because the stream does not exist.
pub(crate) fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

pub(crate) use crate::error::js_error;

/// The partition transform `s` asks for under `subjects`, when `s.partitions > 0`.
fn partition_transform(
    s: &StreamSettings,
    subjects: &Subjects,
) -> Option<stream::SubjectTransform> {
    (s.partitions > 0).then(|| {
        let (source, destination) = subjects.partition_transform(s.partitions);
        stream::SubjectTransform {
            source,
            destination,
        }
    })
}

/// The partitions of `transform` when it is a partition transform of `subjects`.
fn partitions_of(transform: &stream::SubjectTransform, subjects: &Subjects) -> Option<u32> {
    let (source, _) = subjects.partition_transform(0);
    if transform.source != source {
        return None;
    }
    let head = format!(
        "{}.{{{{wildcard(1)}}}}.{{{{partition(",
        subjects.events_prefix()
    );
    let n: u32 = transform
        .destination
        .strip_prefix(&head)?
        .strip_suffix(",1)}}.>")?
        .parse()
        .ok()?;
    (subjects.partition_transform(n).1 == transform.destination).then_some(n)
}

pub(crate) fn stream_config(s: &StreamSettings, subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: s.name.clone(),
        subjects: s.subjects.clone(),
        retention: match s.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        storage: match s.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        max_age: s.max_age(),
        max_messages: s.max_messages,
        max_bytes: s.max_bytes,
        duplicate_window: s.duplicate_window(),
        num_replicas: s.replicas,
        allow_atomic_publish: s.allow_atomic,
        // A creation default, not a managed field: `ensure` keeps what the server has.
        allow_direct: true,
        description: s.description.clone(),
        subject_transform: partition_transform(s, subjects),
        ..Default::default()
    }
}

/// The JetStream pull-consumer configuration for `c`.
///
/// `max_deliver` is left unlimited on the server: the subscription runtime counts
/// deliveries itself and dead-letters at `c.max_deliver`, so a message is never dropped
/// by the server giving up while the DLQ is unwritable. The server-side `backoff` list
/// is set only when `c.server_backoff` is on, because JetStream applies its first entry
/// as the ack wait of the first delivery. `ack_policy` is mapped as given:
/// [`StreamingConfig::validate`] is what rejects every policy but explicit.
pub fn consumer_config(c: &ConsumerSettings) -> consumer::pull::Config {
    let (filter_subject, filter_subjects) = match c.filter_subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    consumer::pull::Config {
        durable_name: Some(c.durable_name.clone()),
        description: c.description.clone(),
        filter_subject,
        filter_subjects,
        deliver_policy: match c.deliver_policy {
            DeliverPolicy::All => consumer::DeliverPolicy::All,
            DeliverPolicy::New => consumer::DeliverPolicy::New,
            DeliverPolicy::Last => consumer::DeliverPolicy::Last,
            DeliverPolicy::LastPerSubject => consumer::DeliverPolicy::LastPerSubject,
        },
        ack_policy: match c.ack_policy {
            AckPolicy::Explicit => consumer::AckPolicy::Explicit,
            AckPolicy::All => consumer::AckPolicy::All,
            AckPolicy::None => consumer::AckPolicy::None,
        },
        max_deliver: -1,
        ack_wait: c.ack_wait(),
        max_ack_pending: c.max_ack_pending,
        backoff: if c.server_backoff {
            c.backoff()
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// Sets the stream fields [`StreamSettings`] manages on `update` (the server's current
/// configuration) and returns a line per field that changed. Storage, retention and
/// the subject transform are checked before, never changed here (see
/// [`transform_step`]); every other field is left as the server has it.
fn apply_stream_settings(update: &mut stream::Config, s: &StreamSettings) -> Vec<String> {
    let want = stream_config(s, &Subjects::default());
    let mut c = Changes::default();
    c.set("subjects", &mut update.subjects, want.subjects);
    c.set("max_age", &mut update.max_age, want.max_age);
    c.set("max_messages", &mut update.max_messages, want.max_messages);
    c.set("max_bytes", &mut update.max_bytes, want.max_bytes);
    c.set(
        "duplicate_window",
        &mut update.duplicate_window,
        want.duplicate_window,
    );
    c.set("replicas", &mut update.num_replicas, want.num_replicas);
    c.set(
        "allow_atomic",
        &mut update.allow_atomic_publish,
        want.allow_atomic_publish,
    );
    c.set("description", &mut update.description, want.description);
    c.0
}

/// Sets the consumer fields [`ConsumerSettings`] manages on `update` (the server's
/// current configuration) and returns a line per field that changed. Every other
/// field (`max_waiting`, `max_batch`, `max_expires`, `inactive_threshold`, metadata,
/// replicas, ...) is left as the server has it.
fn apply_consumer_settings(
    update: &mut consumer::Config,
    settings: &ConsumerSettings,
) -> Vec<String> {
    let want = consumer_config(settings);
    let mut c = Changes::default();
    // One filter travels as `filter_subject`, several as `filter_subjects`; compare
    // the lists, and set both when they differ.
    let filters = |one: &str, many: &[String]| -> Vec<String> {
        if one.is_empty() {
            many.to_vec()
        } else {
            vec![one.to_owned()]
        }
    };
    let now = filters(&update.filter_subject, &update.filter_subjects);
    let wanted = filters(&want.filter_subject, &want.filter_subjects);
    if now != wanted {
        c.0.push(format!("filter_subjects {now:?} -> {wanted:?}"));
        update.filter_subject = want.filter_subject;
        update.filter_subjects = want.filter_subjects;
    }
    c.set("description", &mut update.description, want.description);
    c.set(
        "deliver_policy",
        &mut update.deliver_policy,
        want.deliver_policy,
    );
    c.set("ack_policy", &mut update.ack_policy, want.ack_policy);
    c.set("ack_wait", &mut update.ack_wait, want.ack_wait);
    c.set("max_deliver", &mut update.max_deliver, want.max_deliver);
    c.set(
        "max_ack_pending",
        &mut update.max_ack_pending,
        want.max_ack_pending,
    );
    c.set("backoff", &mut update.backoff, want.backoff);
    c.0
}

/// What the subject transform of an existing stream takes: nothing, or adding the
/// partition transform. Changing or removing a partition transform is refused
/// (`ImmutableField`): every person would move to another partition while the groups
/// read the old ones. A transform of another shape on a stream without partitions in
/// the configuration is the operator's, and stays.
fn transform_step(
    at: &str,
    name: &str,
    current: Option<&stream::SubjectTransform>,
    settings: &StreamSettings,
    subjects: &Subjects,
) -> Result<Option<stream::SubjectTransform>, StreamingError> {
    let want = partition_transform(settings, subjects);
    let now = current.and_then(|t| partitions_of(t, subjects));
    match (current, want) {
        (None, want) => Ok(want),
        (Some(c), Some(w)) if *c == w => Ok(None),
        (Some(c), want) if want.is_some() || now.is_some() => {
            let has = match now {
                Some(n) => format!("{n} partitions"),
                None => format!(
                    "the subject transform {:?} -> {:?}",
                    c.source, c.destination
                ),
            };
            Err(StreamingError::new(
                StreamingErrorKind::ImmutableField,
                format!(
                    "`{at}.partitions`: stream {name} exists with {has} but the config asks for {}; \
                     re-partitioning a stream in place is not supported (every person would move \
                     to another partition, and the consumer groups' positions with them): keep \
                     {at}.partitions = {}, or migrate to a new stream name",
                    settings.partitions,
                    now.map_or_else(|| "0".to_owned(), |n| n.to_string()),
                ),
            ))
        }
        (Some(_), _) => Ok(None),
    }
}

async fn update_stream(
    js: &jetstream::Context,
    at: &str,
    update: &stream::Config,
) -> Result<(), StreamingError> {
    js.update_stream(update).await.map_err(|e| {
        let kind = crate::error::classify(&e);
        StreamingError::with_source(
            kind,
            format!(
                "`{at}`: the server refused to update stream {} in place",
                update.name
            ),
            e,
        )
    })?;
    Ok(())
}

/// Creates or updates one stream. An update that adds the partition transform is sent
/// without it, and the configuration with it returned, for the caller to send once the
/// consumers are ready.
async fn ensure_stream(
    js: &jetstream::Context,
    at: &str,
    settings: &StreamSettings,
    subjects: &Subjects,
    report: &mut EnsureReport,
    apply: bool,
) -> Result<Option<stream::Config>, StreamingError> {
    let desired = stream_config(settings, subjects);
    match js.get_stream(&settings.name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| js_error(format!("cannot read stream {}", settings.name), e))?;
            let current = &info.config;
            if current.storage != desired.storage {
                return Err(StreamingError::new(
                    StreamingErrorKind::ImmutableField,
                    format!(
                        "`{at}.storage`: stream {} exists with {:?} storage but the config asks for {:?}; \
                         storage cannot change in place: keep {:?}, or migrate to a new stream name",
                        settings.name, current.storage, desired.storage, current.storage
                    ),
                ));
            }
            if current.retention != desired.retention {
                return Err(StreamingError::new(
                    StreamingErrorKind::ImmutableField,
                    format!(
                        "`{at}.retention`: stream {} exists with {:?} retention but the config asks for {:?}; \
                         retention cannot change in place: keep it, or migrate to a new stream name",
                        settings.name, current.retention, desired.retention
                    ),
                ));
            }
            let transform = transform_step(
                at,
                &settings.name,
                current.subject_transform.as_ref(),
                settings,
                subjects,
            )?;
            // The update is the server's configuration with the managed fields set:
            // what the operator set by hand (discard policy, limits, sources, ...) stays.
            let mut update = current.clone();
            let mut changes = apply_stream_settings(&mut update, settings);
            if apply && !changes.is_empty() {
                update_stream(js, at, &update).await?;
            }
            let later = transform.map(|t| {
                changes.push(format!(
                    "subject_transform none -> {:?} to {:?} ({} partitions)",
                    t.source, t.destination, settings.partitions
                ));
                stream::Config {
                    subject_transform: Some(t),
                    ..update
                }
            });
            if changes.is_empty() {
                report.unchanged_streams.push(settings.name.clone());
            } else {
                report.changes.extend(
                    changes
                        .into_iter()
                        .map(|c| format!("stream {}: {c}", settings.name)),
                );
                report.updated_streams.push(settings.name.clone());
            }
            return Ok(later);
        }
        Err(e) if is_stream_not_found(&e) => {
            if apply {
                js.create_stream(desired).await.map_err(|e| {
                    js_error(
                        format!("cannot create stream {} (`{at}`)", settings.name),
                        e,
                    )
                })?;
            }
            report.created_streams.push(settings.name.clone());
        }
        Err(e) => {
            return Err(js_error(
                format!("cannot look up stream {}", settings.name),
                e,
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The top-level keys whose JSON values differ between two configurations.
    fn differing_keys<T: serde::Serialize>(a: &T, b: &T) -> Vec<String> {
        let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap(),
        ) else {
            panic!("configurations serialize as objects");
        };
        let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
        keys.sort();
        keys.dedup();
        keys.retain(|k| a.get(k) != b.get(k));
        keys
    }

    #[test]
    fn a_stream_update_changes_only_the_managed_fields_it_lists() {
        let settings = StreamSettings::default();
        let mut current = stream_config(&settings, &Subjects::default());
        current.discard = stream::DiscardPolicy::New;
        current.max_message_size = 64 * 1024;
        current.max_messages_per_subject = 1000;
        current.max_consumers = 50;
        current.allow_rollup = true;
        current.allow_direct = false;
        current.compression = Some(stream::Compression::S2);
        current.metadata.insert("owner".into(), "ops".into());
        current.sources = Some(vec![stream::Source {
            name: "LEGACY".into(),
            ..Default::default()
        }]);

        let mut unchanged = current.clone();
        assert!(apply_stream_settings(&mut unchanged, &settings).is_empty());
        assert_eq!(unchanged, current);

        let changed = StreamSettings {
            max_age_secs: settings.max_age_secs + 24 * 60 * 60,
            ..settings.clone()
        };
        let mut update = current.clone();
        let changes = apply_stream_settings(&mut update, &changed);
        assert_eq!(changes, vec!["max_age 31536000s -> 31622400s".to_owned()]);
        assert_eq!(
            differing_keys(&current, &update),
            vec!["max_age".to_owned()]
        );

        // Every managed field: one line each, and nothing else differs.
        let all = StreamSettings {
            subjects: vec!["person.events.x.>".into()],
            max_age_secs: 7,
            max_messages: 5,
            max_bytes: 6,
            duplicate_window_secs: 7,
            replicas: 3,
            allow_atomic: false,
            description: None,
            ..settings
        };
        let mut update = current.clone();
        let changes = apply_stream_settings(&mut update, &all);
        let keys = differing_keys(&current, &update);
        assert_eq!(changes.len(), keys.len(), "{changes:?} vs {keys:?}");
        for key in [
            "allow_atomic",
            "description",
            "duplicate_window",
            "max_age",
            "max_bytes",
            "max_msgs",
            "num_replicas",
            "subjects",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
        }
    }

    #[test]
    fn a_consumer_update_changes_only_the_managed_fields_it_lists() {
        let settings = ConsumerSettings::new("c", &["person.events.>"], "d");
        let mut current =
            consumer::IntoConsumerConfig::into_consumer_config(consumer_config(&settings));
        current.max_waiting = 7;
        current.max_batch = 10;
        current.max_expires = Duration::from_secs(9);
        current.inactive_threshold = Duration::from_secs(3600);
        current.metadata.insert("owner".into(), "ops".into());

        let mut unchanged = current.clone();
        assert!(apply_consumer_settings(&mut unchanged, &settings).is_empty());
        assert_eq!(unchanged, current);

        let changed = ConsumerSettings {
            max_ack_pending: 10,
            ack_wait_secs: 60,
            filter_subjects: vec!["person.events.*.a".into(), "person.events.*.b".into()],
            ..settings
        };
        let mut update = current.clone();
        let changes = apply_consumer_settings(&mut update, &changed);
        assert_eq!(
            changes,
            vec![
                r#"filter_subjects ["person.events.>"] -> ["person.events.*.a", "person.events.*.b"]"#
                    .to_owned(),
                "ack_wait 30s -> 60s".to_owned(),
                "max_ack_pending 1000 -> 10".to_owned(),
            ]
        );
        assert_eq!(
            differing_keys(&current, &update),
            vec![
                "ack_wait".to_owned(),
                "filter_subject".to_owned(),
                "filter_subjects".to_owned(),
                "max_ack_pending".to_owned(),
            ]
        );
    }

    #[test]
    fn the_partition_transform_is_added_kept_or_refused() {
        let subjects = Subjects::default();
        let with = |n: u32| StreamSettings {
            partitions: n,
            ..StreamSettings::default()
        };
        let ours = |n: u32| partition_transform(&with(n), &subjects).unwrap();
        assert_eq!(partition_transform(&with(0), &subjects), None);
        assert_eq!(
            stream_config(&with(16), &subjects).subject_transform,
            Some(ours(16))
        );
        assert_eq!(partitions_of(&ours(16), &subjects), Some(16));
        let acme = Subjects::with_prefix("acme").unwrap();
        assert_eq!(partitions_of(&ours(16), &acme), None, "another prefix");
        let foreign = stream::SubjectTransform {
            source: "person.events.*.>".into(),
            destination: "person.events.{{wildcard(1)}}.x.>".into(),
        };
        assert_eq!(partitions_of(&foreign, &subjects), None);

        let step = |current: Option<&stream::SubjectTransform>, n: u32| {
            transform_step("stream", "PERSON_EVENTS", current, &with(n), &subjects)
        };
        assert_eq!(step(None, 16).unwrap(), Some(ours(16)), "added");
        assert_eq!(step(None, 0).unwrap(), None);
        assert_eq!(step(Some(&ours(16)), 16).unwrap(), None, "kept");
        assert_eq!(
            step(Some(&foreign), 0).unwrap(),
            None,
            "the operator's stays"
        );
        for (current, n) in [(ours(16), 32), (ours(16), 0), (foreign, 16)] {
            let e = step(Some(&current), n).unwrap_err();
            assert_eq!(e.kind(), StreamingErrorKind::ImmutableField, "{e}");
            let text = e.to_string();
            assert!(text.contains("`stream.partitions`"), "{text}");
            assert!(text.contains("re-partitioning"), "{text}");
        }
        let e = step(Some(&ours(16)), 8).unwrap_err().to_string();
        assert!(
            e.contains("exists with 16 partitions but the config asks for 8"),
            "{e}"
        );
        assert!(e.contains("keep stream.partitions = 16"), "{e}");
    }

    #[test]
    fn a_publish_permission_violation_names_its_subject() {
        let e = async_nats::ServerError::Other(
            "Permissions Violation for Publish to \"person.events.x.created\"".into(),
        );
        assert_eq!(
            denied_publish_subject(&e).as_deref(),
            Some("person.events.x.created")
        );
        let sub = async_nats::ServerError::Other(
            "Permissions Violation for Subscription to \"person.events.>\"".into(),
        );
        assert_eq!(denied_publish_subject(&sub), None);
        assert_eq!(
            denied_publish_subject(&async_nats::ServerError::AuthorizationViolation),
            None
        );
        let d = Denials::default();
        for i in 0..100 {
            d.record(format!("s.{i}"));
        }
        assert!(d.publish_denied("s.99"));
        assert!(!d.publish_denied("s.0"), "only the most recent are kept");
    }
}
