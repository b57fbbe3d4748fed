//! [`StreamingClient`]: a connection plus the streams and consumers it ensures.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectErrorKind, ConnectOptions};

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

    /// Connects, validates `config`, and ensures its streams and consumers exist.
    pub async fn connect(self, config: StreamingConfig) -> Result<StreamingClient, StreamingError> {
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
        this.ensure().await?;
        Ok(this)
    }
}

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

    fn record(&self, subject: String) {
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

/// What [`StreamingClient::ensure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Streams created.
    pub created_streams: Vec<String>,
    /// Streams whose configuration was updated.
    pub updated_streams: Vec<String>,
    /// Consumers created or updated (durable names).
    pub consumers: Vec<String>,
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
        AggregateReader::new(self.jetstream.clone(), &self.config)
    }

    /// The dead-letter queue.
    pub fn dead_letters(&self) -> DeadLetterQueue {
        DeadLetterQueue::new(self.jetstream.clone(), &self.config)
    }

    /// Creates or updates the event stream, the DLQ stream and every configured consumer.
    /// Idempotent. A setting that cannot change in place (storage, retention) gives an
    /// [`StreamingErrorKind::ImmutableField`] error naming it, never a silent keep.
    pub async fn ensure(&self) -> Result<EnsureReport, StreamingError> {
        let mut report = EnsureReport::default();
        for (at, settings) in [("stream", &self.config.stream), ("dlq", &self.config.dlq)] {
            ensure_stream(&self.jetstream, at, settings, &mut report).await?;
        }
        for c in &self.config.consumers {
            self.ensure_consumer(c).await?;
            report.consumers.push(c.durable_name.clone());
        }
        Ok(report)
    }

    /// Creates or updates one consumer on the event stream.
    pub async fn ensure_consumer(&self, settings: &ConsumerSettings) -> Result<(), StreamingError> {
        let stream = self
            .jetstream
            .get_stream_no_info(&self.config.stream.name)
            .await
            .map_err(|e| js_error(format!("cannot open stream {}", self.config.stream.name), e))?;
        stream
            .create_consumer(consumer_config(settings))
            .await
            .map_err(|e| {
                js_error(
                    format!("cannot create or update consumer {}", settings.durable_name),
                    e,
                )
            })?;
        Ok(())
    }
}

pub(crate) fn js_error(
    message: String,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StreamingError {
    let text = e.to_string();
    let kind = if text.contains("timed out") {
        StreamingErrorKind::TimedOut
    } else if text.contains("permission") || text.contains("authorization") {
        StreamingErrorKind::Authentication
    } else {
        StreamingErrorKind::JetStream
    };
    StreamingError::with_source(kind, message, e)
}

pub(crate) fn stream_config(s: &StreamSettings) -> stream::Config {
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
        allow_direct: true,
        description: s.description.clone(),
        ..Default::default()
    }
}

/// The JetStream pull-consumer configuration for `c`.
///
/// `max_deliver` is left unlimited on the server: the subscription runtime counts
/// deliveries itself and dead-letters at `c.max_deliver`, so a message is never dropped
/// by the server giving up while the DLQ is unwritable. The server-side `backoff` list
/// is set only when `c.server_backoff` is on, because JetStream applies its first entry
/// as the ack wait of the first delivery.
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

async fn ensure_stream(
    js: &jetstream::Context,
    at: &str,
    settings: &StreamSettings,
    report: &mut EnsureReport,
) -> Result<(), StreamingError> {
    let desired = stream_config(settings);
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
            let differs = current.subjects != desired.subjects
                || current.max_age != desired.max_age
                || current.max_messages != desired.max_messages
                || current.max_bytes != desired.max_bytes
                || current.duplicate_window != desired.duplicate_window
                || current.num_replicas != desired.num_replicas
                || current.allow_atomic_publish != desired.allow_atomic_publish
                || current.allow_direct != desired.allow_direct
                || current.description != desired.description;
            if differs {
                js.update_stream(&desired).await.map_err(|e| {
                    let kind = StreamingErrorKind::ImmutableField;
                    StreamingError::with_source(
                        kind,
                        format!(
                            "`{at}`: the server refused to update stream {} in place",
                            settings.name
                        ),
                        e,
                    )
                })?;
                report.updated_streams.push(settings.name.clone());
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(inner)
                    if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(desired).await.map_err(|e| {
                js_error(
                    format!("cannot create stream {} (`{at}`)", settings.name),
                    e,
                )
            })?;
            report.created_streams.push(settings.name.clone());
        }
        Err(e) => {
            return Err(js_error(
                format!("cannot look up stream {}", settings.name),
                e,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
