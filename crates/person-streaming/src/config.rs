//! [`StreamingConfig`]: streams, consumers and publisher settings, loadable from TOML or
//! JSON, with validation that names the field and the fix.

use std::fmt;
use std::path::Path;
use std::time::Duration;

pub(crate) use person_events::subject::subject_within;
use person_events::subject::subjects_overlap;
use person_events::subject::{DLQ_WILDCARD, EVENTS_WILDCARD, Subjects};
use person_retry::RetryPolicy;
use serde::{Deserialize, Serialize};

const DAY: u64 = 24 * 60 * 60;

/// The most stream partitions accepted in `stream.partitions`.
const MAX_PARTITIONS: u32 = 1024;

/// How the stream keeps messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Keep until a limit (age, count, bytes) is reached. The event-store choice.
    #[default]
    Limits,
    /// Keep while some consumer is interested.
    Interest,
    /// Keep until one consumer acknowledges.
    WorkQueue,
}

/// Where the stream stores messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On disk. Survives restarts.
    #[default]
    File,
    /// In memory.
    Memory,
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    /// From the first stored message.
    #[default]
    All,
    /// Only messages stored after the consumer is created.
    New,
    /// From the last stored message.
    Last,
    /// The last message of every subject.
    LastPerSubject,
}

/// How a consumer's messages are acknowledged.
///
/// Only [`Explicit`](Self::Explicit) (`"explicit"`, the default) is accepted:
/// [`StreamingConfig::validate`] rejects the others, so `ensure` never creates a
/// consumer with them. The subscription runtime settles each message on its own, and
/// under `"all"` acking one person's later event would also ack another person's
/// event still waiting for a delayed redelivery, which would then never come back.
/// `All` and `None` stay in the enum so a file naming them gets that explanation
/// rather than a parse error.
///
/// ```
/// use person_streaming::{AckPolicy, StreamingConfig};
///
/// let mut config = StreamingConfig::default();
/// config.consumers[0].ack_policy = AckPolicy::All;
/// let err = config.validate().unwrap_err();
/// assert_eq!(err.field(), "consumers[0].ack_policy");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    /// Every message individually. The only policy accepted.
    #[default]
    Explicit,
    /// Acknowledging one acknowledges all before it. Rejected by `validate()`.
    All,
    /// No acknowledgement. Rejected by `validate()`.
    None,
}

impl AckPolicy {
    /// The name used in configuration files.
    fn as_str(self) -> &'static str {
        match self {
            Self::Explicit => "explicit",
            Self::All => "all",
            Self::None => "none",
        }
    }
}

/// Rejects every ack policy but explicit; `field` names the setting in the error.
pub(crate) fn check_ack_policy(field: &str, c: &ConsumerSettings) -> Result<(), ConfigError> {
    if c.ack_policy == AckPolicy::Explicit {
        return Ok(());
    }
    let why = match c.ack_policy {
        AckPolicy::None => {
            "the server would count every delivery as done, so a failed event could never be retried or dead-lettered"
        }
        _ => {
            "acking one event would also ack every earlier one, so an event waiting for a delayed redelivery would be lost"
        }
    };
    Err(ConfigError::invalid(
        field,
        format!(
            "is `{}` for consumer `{}`: {why}; set ack_policy = \"explicit\" or leave it out",
            c.ack_policy.as_str(),
            c.durable_name
        ),
    ))
}

/// The event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// Subjects the stream captures.
    pub subjects: Vec<String>,
    /// Retention policy.
    pub retention: Retention,
    /// Storage type. Cannot be changed on an existing stream.
    pub storage: Storage,
    /// Maximum message age, in seconds (0: unlimited).
    pub max_age_secs: u64,
    /// Maximum number of messages (-1: unlimited).
    pub max_messages: i64,
    /// Maximum total bytes (-1: unlimited).
    pub max_bytes: i64,
    /// Server-side dedup window for `Nats-Msg-Id`, in seconds.
    pub duplicate_window_secs: u64,
    /// Replicas: 1, or 3 on a 3-node cluster.
    pub replicas: usize,
    /// Allow atomic batch publish (needed for multi-event appends; server 2.12+).
    pub allow_atomic: bool,
    /// Free-form description.
    pub description: Option<String>,
    /// Stream partitions for consumer groups, at most 1024; 0 (the default): none.
    /// With `S > 0` the event stream gets the subject transform of
    /// [`Subjects::partition_transform`]: it stores each event with a partition
    /// `0..S` of its person after the person token (`person.events.<id>.<j>.<type>`),
    /// so a group of consumers ([`ConsumerSettings::partitions`]) can split the people
    /// between them. `ensure` adds it to an existing stream in place (messages stored
    /// before keep their subjects) but refuses to change `S` once set: people would
    /// move to other partitions. The dead-letter stream has none.
    pub partitions: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "PERSON_EVENTS".into(),
            subjects: vec![EVENTS_WILDCARD.into()],
            retention: Retention::Limits,
            storage: Storage::File,
            max_age_secs: 365 * DAY,
            max_messages: 10_000_000,
            max_bytes: 10 * 1024 * 1024 * 1024,
            duplicate_window_secs: 120,
            replicas: 1,
            allow_atomic: true,
            description: Some("Person domain events".into()),
            partitions: 0,
        }
    }
}

impl StreamSettings {
    /// The dead-letter stream's defaults: `PERSON_EVENTS_DLQ` on `person.dlq.>`, 30 days.
    pub fn dead_letter_default() -> Self {
        Self {
            name: "PERSON_EVENTS_DLQ".into(),
            subjects: vec![DLQ_WILDCARD.into()],
            max_age_secs: 30 * DAY,
            max_messages: -1,
            max_bytes: -1,
            allow_atomic: false,
            description: Some("Person events that failed processing".into()),
            ..Self::default()
        }
    }

    /// `max_age_secs` as a duration.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs)
    }

    /// `duplicate_window_secs` as a duration.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }
}

/// One durable pull consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Durable name (a valid subject token: it also names the DLQ subjects).
    pub durable_name: String,
    /// Filter subjects, each inside the stream's subjects.
    pub filter_subjects: Vec<String>,
    /// Where a new consumer starts.
    pub deliver_policy: DeliverPolicy,
    /// Acknowledgement policy.
    pub ack_policy: AckPolicy,
    /// Deliveries before a message is dead-lettered. Defaults to the retry policy's
    /// attempts.
    pub max_deliver: i64,
    /// How long the server waits for an ack before redelivering, in seconds.
    pub ack_wait_secs: u64,
    /// Maximum unacknowledged messages in flight.
    pub max_ack_pending: i64,
    /// The retry policy: drives in-process retries and the broker-side `backoff` list.
    pub retry: RetryPolicy,
    /// Also give the server the retry policy's schedule as the consumer `backoff` list
    /// (redelivery after an ack timeout, e.g. a crashed consumer). Off by default:
    /// JetStream uses the first entry as the first delivery's ack wait.
    pub server_backoff: bool,
    /// Free-form description.
    pub description: Option<String>,
    /// Consumer partitions: 1 (the default), one consumer for every person; `P > 1`, a
    /// consumer group on a partitioned stream (`stream.partitions >= P`, see
    /// [`StreamingConfig::consumer_group`]). Consumer partition `k` owns the stream
    /// partitions `j` with `j % P == k`; a divisor of `stream.partitions` spreads them
    /// evenly (4 of 16: four each).
    pub partitions: u32,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        let retry = RetryPolicy::default();
        Self {
            durable_name: String::new(),
            filter_subjects: vec![EVENTS_WILDCARD.into()],
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            max_deliver: i64::from(retry.max_attempts()),
            ack_wait_secs: 30,
            max_ack_pending: 1_000,
            retry,
            server_backoff: false,
            description: None,
            partitions: 1,
        }
    }
}

impl ConsumerSettings {
    /// A consumer with the given durable name, filters and description, other fields
    /// default.
    pub fn new(durable_name: &str, filters: &[&str], description: &str) -> Self {
        Self {
            durable_name: durable_name.into(),
            filter_subjects: filters.iter().map(|f| (*f).to_owned()).collect(),
            description: Some(description.into()),
            ..Self::default()
        }
    }

    /// `ack_wait_secs` as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    /// The broker-side redelivery schedule, from the retry policy, at most
    /// `max_deliver` entries.
    pub fn backoff(&self) -> Vec<Duration> {
        let mut schedule = self.retry.schedule();
        if let Ok(max) = usize::try_from(self.max_deliver)
            && max > 0
        {
            schedule.truncate(max);
        }
        schedule
    }
}

/// The durable consumers one consumer group runs on, from
/// [`StreamingConfig::consumer_group`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerGroup {
    /// The configured durable (e.g. `person-projection-summary`), kept as the consumer
    /// of every message stored before the stream was partitioned: its event filters
    /// narrowed to [`Subjects::unpartitioned_filters`], plus its own replay filter.
    pub legacy: ConsumerSettings,
    /// One per consumer partition `k` in `0..P`: durable `<name>-p<k>`, with the
    /// [`Subjects::partition_filters`] of every base event filter for each stream
    /// partition `j` with `j % P == k`, and nothing else; every other field copied from
    /// the base. With `P` equal to `stream.partitions` and one base filter, that is a
    /// single filter, which the server matches at a fraction of the cost of several.
    pub partitions: Vec<ConsumerSettings>,
    /// One per consumer partition `k`: durable `<name>-p<k>-replays`, with the one
    /// filter `[P.]person.replay.<name>-p<k>.>`: the dead letters of partition `k`
    /// replayed. The owner of partition `k` runs it beside `<name>-p<k>`, recording
    /// what fails again under `<name>-p<k>`.
    pub replays: Vec<ConsumerSettings>,
}

/// Publisher settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherSettings {
    /// `ce-source` of every event.
    pub source: String,
    /// Publishes awaiting their ack at once in `publish_all` (backpressure beyond that).
    pub max_in_flight: usize,
    /// How long to wait for one publish ack, in milliseconds.
    pub ack_timeout_ms: u64,
    /// Retries of transient publish failures (timeouts, no responders during an
    /// election, reconnects), always with the same `Nats-Msg-Id`.
    pub retry: RetryPolicy,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            source: "/person-domain".into(),
            max_in_flight: 256,
            ack_timeout_ms: 5_000,
            retry: RetryPolicy::default(),
        }
    }
}

/// Everything the streaming layer sets up and uses.
///
/// ```
/// use person_streaming::StreamingConfig;
/// let config = StreamingConfig::default();
/// assert_eq!(config.stream.name, "PERSON_EVENTS");
/// assert_eq!(config.dlq.name, "PERSON_EVENTS_DLQ");
/// assert_eq!(config.consumers.len(), 4);
/// config.validate().unwrap();
///
/// let from_toml = StreamingConfig::from_toml_str("[stream]\nreplicas = 3\n").unwrap();
/// assert_eq!(from_toml.stream.replicas, 3);
/// assert_eq!(from_toml.consumers, config.consumers, "unspecified sections keep defaults");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// A subject prefix of this deployment's own (`acme` or `acme.prod`): events go to
    /// `<prefix>.person.events.<id>.<type>` and dead letters to
    /// `<prefix>.person.dlq.…`. Every subject of the configuration (streams, DLQ,
    /// consumer filters) is moved under it: write them in the default form
    /// (`person.events.>`) or already prefixed. None (the default): the unprefixed
    /// subjects of the wire contract. See [`StreamingConfig::with_subject_prefix`].
    pub subject_prefix: Option<String>,
    /// The event stream.
    pub stream: StreamSettings,
    /// The dead-letter stream. Fields missing from a `[dlq]` section keep the
    /// dead-letter defaults ([`StreamSettings::dead_letter_default`]), not the event
    /// stream's.
    #[serde(deserialize_with = "deserialize_dlq")]
    pub dlq: StreamSettings,
    /// Durable consumers to create.
    pub consumers: Vec<ConsumerSettings>,
    /// Publisher settings.
    pub publisher: PublisherSettings,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            subject_prefix: None,
            stream: StreamSettings::default(),
            dlq: StreamSettings::dead_letter_default(),
            consumers: vec![
                ConsumerSettings::new(
                    "person-projection-summary",
                    &[EVENTS_WILDCARD],
                    "Person summary projection",
                ),
                ConsumerSettings::new(
                    "person-projection-search",
                    &[EVENTS_WILDCARD],
                    "Person search index projection",
                ),
                ConsumerSettings::new(
                    "person-to-location",
                    &[
                        "person.events.*.location_assigned",
                        "person.events.*.person.location_assigned",
                    ],
                    "Cross-domain sync of person locations",
                ),
                ConsumerSettings::new(
                    "policy-engine",
                    &[EVENTS_WILDCARD],
                    "Policy engine evaluation of person events",
                ),
            ],
            publisher: PublisherSettings::default(),
        }
        .with_replay_subjects()
    }
}

/// The `[dlq]` section: the same fields as [`StreamSettings`], with the dead-letter
/// defaults for the ones left out.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DeadLetterStreamSettings {
    name: String,
    subjects: Vec<String>,
    retention: Retention,
    storage: Storage,
    max_age_secs: u64,
    max_messages: i64,
    max_bytes: i64,
    duplicate_window_secs: u64,
    replicas: usize,
    allow_atomic: bool,
    description: Option<String>,
    partitions: u32,
}

impl Default for DeadLetterStreamSettings {
    fn default() -> Self {
        let d = StreamSettings::dead_letter_default();
        Self {
            name: d.name,
            subjects: d.subjects,
            retention: d.retention,
            storage: d.storage,
            max_age_secs: d.max_age_secs,
            max_messages: d.max_messages,
            max_bytes: d.max_bytes,
            duplicate_window_secs: d.duplicate_window_secs,
            replicas: d.replicas,
            allow_atomic: d.allow_atomic,
            description: d.description,
            partitions: d.partitions,
        }
    }
}

fn deserialize_dlq<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamSettings, D::Error> {
    let s = DeadLetterStreamSettings::deserialize(d)?;
    Ok(StreamSettings {
        name: s.name,
        subjects: s.subjects,
        retention: s.retention,
        storage: s.storage,
        max_age_secs: s.max_age_secs,
        max_messages: s.max_messages,
        max_bytes: s.max_bytes,
        duplicate_window_secs: s.duplicate_window_secs,
        replicas: s.replicas,
        allow_atomic: s.allow_atomic,
        description: s.description,
        partitions: s.partitions,
    })
}

/// What is wrong with a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not valid TOML/JSON, or a field has the wrong type or is unknown.
    Parse,
    /// A value is out of range or inconsistent with another.
    Invalid,
}

/// A configuration problem. Names the field and says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    field: String,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.field, self.message)
        }
    }
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ConfigErrorKind::Invalid,
            field: field.into(),
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The field at fault, as a path (`consumers[1].filter_subjects[0]`); empty when
    /// the whole input is at fault.
    pub fn field(&self) -> &str {
        &self.field
    }
}

impl StreamingConfig {
    /// Parses TOML and validates.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            kind: ConfigErrorKind::Parse,
            field: String::new(),
            message: format!("invalid TOML configuration: {}", e.to_string().trim()),
        })?;
        let config: Self = serde_path_to_error::deserialize(de)
            .map_err(|e| parse_error("TOML", e.path(), e.inner()))?;
        config.prefixed()
    }

    /// Parses JSON and validates.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| parse_error("JSON", e.path(), e.inner()))?;
        de.end().map_err(|e| ConfigError {
            kind: ConfigErrorKind::Parse,
            field: String::new(),
            message: format!("invalid JSON configuration: {e}"),
        })?;
        config.prefixed()
    }

    /// Reads a `.toml` or `.json` file (by extension; anything else is read as TOML).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            kind: ConfigErrorKind::Io,
            field: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        }
    }

    /// This configuration under the subject prefix `prefix`: sets
    /// [`subject_prefix`](Self::subject_prefix) and moves every stream, DLQ and filter
    /// subject under it (`person.events.>` becomes `<prefix>.person.events.>`; a
    /// subject already under the prefix stays). Stream and consumer names are left
    /// as they are: names are per server, so two deployments on one server also need
    /// their own.
    ///
    /// ```
    /// use person_streaming::StreamingConfig;
    /// let config = StreamingConfig::default().with_subject_prefix("acme").unwrap();
    /// assert_eq!(config.stream.subjects, ["acme.person.events.>", "acme.person.replay.>"]);
    /// assert_eq!(config.dlq.subjects, ["acme.person.dlq.>"]);
    /// assert_eq!(
    ///     config.consumer("person-to-location").unwrap().filter_subjects[0],
    ///     "acme.person.events.*.location_assigned"
    /// );
    /// assert_eq!(config.subjects().events_wildcard(), "acme.person.events.>");
    /// assert!(StreamingConfig::default().with_subject_prefix("a.*").is_err());
    /// ```
    pub fn with_subject_prefix(mut self, prefix: &str) -> Result<Self, ConfigError> {
        self.subject_prefix = Some(prefix.to_owned());
        self.prefixed()
    }

    /// This configuration with its replay subjects: the event stream also captures
    /// `[P.]person.replay.>`, and each consumer's filters include
    /// `[P.]person.replay.<durable>.>`, the replays addressed to it alone (see
    /// [`DeadLetterQueue::replay`](crate::DeadLetterQueue::replay)). Subjects already
    /// there are not added twice. The defaults, the file loaders and
    /// [`StreamingClient`](crate::StreamingClient) apply it, so a configuration built in
    /// code gets it on connecting.
    ///
    /// On a partitioned stream (`stream.partitions > 0`) it also fits the event filters
    /// to the partitions: a consumer with `partitions = 1` gets its event filters
    /// widened to [`Subjects::any_partition_filters`], so it keeps seeing every event it
    /// selects, stored before the stream was partitioned or since; a consumer group
    /// (`partitions > 1`) keeps its filters as written for the unpartitioned subjects
    /// ([`Subjects::base_filters`]), from which [`consumer_group`](Self::consumer_group)
    /// derives its consumers. Applying it again changes nothing.
    ///
    /// ```
    /// use person_streaming::{ConsumerSettings, StreamingConfig};
    /// let config = StreamingConfig {
    ///     consumers: vec![ConsumerSettings::new("audit", &["person.events.>"], "audit log")],
    ///     ..StreamingConfig::default()
    /// }
    /// .with_replay_subjects();
    /// assert_eq!(config.stream.subjects, ["person.events.>", "person.replay.>"]);
    /// assert_eq!(config.consumers[0].filter_subjects, ["person.events.>", "person.replay.audit.>"]);
    /// ```
    pub fn with_replay_subjects(mut self) -> Self {
        let Ok(subjects) = self.checked_subjects() else {
            return self;
        };
        let replays = subjects.replay_wildcard();
        if !self
            .stream
            .subjects
            .iter()
            .any(|s| subject_within(&replays, s))
        {
            self.stream.subjects.push(replays);
        }
        for c in &mut self.consumers {
            let own = subjects.replay_filter(&c.durable_name);
            if !c.filter_subjects.iter().any(|f| subject_within(&own, f)) {
                c.filter_subjects.push(own);
            }
        }
        let stream_partitions = self.stream.partitions;
        for c in &mut self.consumers {
            let fitted = if c.partitions > 1 {
                refit_event_filters(&subjects, &c.filter_subjects, |f| subjects.base_filters(f))
            } else if stream_partitions > 0 {
                refit_event_filters(&subjects, &c.filter_subjects, |f| {
                    subjects.any_partition_filters(f)
                })
            } else {
                None
            };
            // Filters that cannot be fitted stay as written: `validate` names them.
            if let Some(filters) = fitted {
                c.filter_subjects = filters;
            }
        }
        self
    }

    /// The filters `consumer`'s durable is given on the server. Most often they are
    /// its `filter_subjects`. The exception is a consumer of every event: its filters
    /// are `[P.]person.events.>` plus its own replays, `[P.]person.replay.<durable>.>`.
    /// When the stream holds only events and replays, such a consumer gets no filter
    /// at all (the whole stream) instead. The runtime acknowledges and skips the
    /// replays addressed to other consumers, which are rare.
    ///
    /// The reason is the server's cost per delivery. With several filters it walks the
    /// subjects of a message block (one per person) for every message; with one
    /// wildcard filter it still matches the block's subject tree; with none it reads
    /// the next message. `BENCHMARKS.md` has the figures.
    ///
    /// ```
    /// use person_streaming::StreamingConfig;
    /// let config = StreamingConfig::default();
    /// let summary = config.consumer("person-projection-summary").unwrap();
    /// assert!(config.wire_filters(summary).is_empty(), "the whole stream");
    /// let location = config.consumer("person-to-location").unwrap();
    /// assert_eq!(config.wire_filters(location), location.filter_subjects);
    /// ```
    pub fn wire_filters(&self, consumer: &ConsumerSettings) -> Vec<String> {
        let filters = &consumer.filter_subjects;
        let Ok(subjects) = self.checked_subjects() else {
            return filters.clone();
        };
        let events = subjects.events_wildcard();
        let own = subjects.replay_filter(&consumer.durable_name);
        let replays = subjects.replay_wildcard();
        let every_event = filters.contains(&events)
            && filters.contains(&own)
            && filters.iter().all(|f| *f == events || *f == own);
        let events_and_replays = !self.stream.subjects.is_empty()
            && self
                .stream
                .subjects
                .iter()
                .all(|s| subject_within(s, &events) || subject_within(s, &replays));
        if every_event && events_and_replays {
            Vec::new()
        } else {
            filters.clone()
        }
    }

    /// `consumer` with the filters its durable is given on the server
    /// ([`wire_filters`](Self::wire_filters)).
    pub fn on_the_wire(&self, consumer: &ConsumerSettings) -> ConsumerSettings {
        ConsumerSettings {
            filter_subjects: self.wire_filters(consumer),
            ..consumer.clone()
        }
    }

    /// This configuration with `consumer` a consumer group of `partitions` partitions
    /// (see [`ConsumerSettings::partitions`]), on a partitioned stream: when
    /// `stream.partitions` is below `partitions`, it becomes `partitions`, so each
    /// partition's durable has one filter (a group with fewer partitions than the
    /// stream works too, its durables filtering several stream partitions each, at a
    /// higher cost to the server per message). The filters of every consumer are then
    /// fitted to the partitions (see [`with_replay_subjects`](Self::with_replay_subjects))
    /// and the whole configuration validated. An unknown consumer is an error naming `consumers`.
    ///
    /// ```
    /// use person_streaming::StreamingConfig;
    /// let config = StreamingConfig::default()
    ///     .with_partitions("person-projection-summary", 4)
    ///     .unwrap();
    /// assert_eq!(config.stream.partitions, 4);
    /// let group = config
    ///     .consumer_group(config.consumer("person-projection-summary").unwrap())
    ///     .unwrap();
    /// assert_eq!(group.partitions.len(), 4);
    /// assert_eq!(group.partitions[1].durable_name, "person-projection-summary-p1");
    /// assert_eq!(group.partitions[1].filter_subjects, ["person.events.*.1.>"]);
    /// assert_eq!(
    ///     group.replays[1].filter_subjects,
    ///     ["person.replay.person-projection-summary-p1.>"]
    /// );
    /// // A consumer that is no group keeps seeing the events of both eras.
    /// assert_eq!(
    ///     config.consumer("person-to-location").unwrap().filter_subjects,
    ///     [
    ///         "person.events.*.location_assigned",
    ///         "person.events.*.*.location_assigned",
    ///         "person.events.*.*.person.location_assigned",
    ///         "person.replay.person-to-location.>",
    ///     ]
    /// );
    /// assert!(StreamingConfig::default().with_partitions("nobody", 4).is_err());
    /// ```
    pub fn with_partitions(mut self, consumer: &str, partitions: u32) -> Result<Self, ConfigError> {
        let Some(c) = self
            .consumers
            .iter_mut()
            .find(|c| c.durable_name == consumer)
        else {
            return Err(ConfigError::invalid(
                "consumers",
                format!("has no consumer `{consumer}` to partition: add it to consumers first"),
            ));
        };
        c.partitions = partitions;
        if partitions > 1 && self.stream.partitions < partitions {
            self.stream.partitions = partitions;
        }
        let this = self.with_replay_subjects();
        this.validate()?;
        Ok(this)
    }

    /// The durable consumers the consumer group `settings` runs on (`settings.partitions
    /// > 1`, on a partitioned stream): its own durable, kept for the messages stored
    /// before the stream was partitioned, and one durable per consumer partition.
    /// `settings` may be a renamed copy of a configured consumer: the names and the
    /// replay filters follow `settings.durable_name`.
    ///
    /// The event filters of `settings` (those under `[P.]person.events`) are read as
    /// written for the unpartitioned subjects ([`Subjects::base_filters`]); its other
    /// filters (its replay filter) go to the legacy consumer only. An error's
    /// [`field`](ConfigError::field) is `stream.partitions` or a field of `settings`
    /// (`partitions`, `filter_subjects`, `durable_name`).
    pub fn consumer_group(
        &self,
        settings: &ConsumerSettings,
    ) -> Result<ConsumerGroup, ConfigError> {
        let name = &settings.durable_name;
        let p = settings.partitions;
        let s = self.stream.partitions;
        if p < 2 {
            return Err(ConfigError::invalid(
                "partitions",
                format!("is {p} for consumer `{name}`: a consumer group has at least 2 partitions"),
            ));
        }
        if s < p {
            return Err(ConfigError::invalid(
                if s == 0 {
                    "stream.partitions"
                } else {
                    "partitions"
                },
                format!(
                    "consumer `{name}` has {p} partitions but the stream has {s}: set \
                     stream.partitions to at least {p} (e.g. 16), or use \
                     StreamingConfig::with_partitions"
                ),
            ));
        }
        let subjects = self.checked_subjects()?;
        let filters = |e: person_events::subject::SubjectError| {
            ConfigError::invalid("filter_subjects", format!("{e} (consumer `{name}`)"))
        };
        let under = format!("{}.", subjects.events_prefix());
        let (events, others): (Vec<&String>, Vec<&String>) = settings
            .filter_subjects
            .iter()
            .partition(|f| f.starts_with(&under));
        if let Some(f) = others
            .iter()
            .find(|f| subjects_overlap(f, &subjects.events_wildcard()))
        {
            return Err(ConfigError::invalid(
                "filter_subjects",
                format!(
                    "`{f}` of consumer group `{name}` reaches beyond the events ({}): a group \
                     splits events by partition, so name them under {}",
                    subjects.events_wildcard(),
                    subjects.events_prefix()
                ),
            ));
        }
        if events.is_empty() {
            return Err(ConfigError::invalid(
                "filter_subjects",
                format!(
                    "consumer group `{name}` names no event filter: add one under {}, e.g. {}",
                    subjects.events_prefix(),
                    subjects.events_wildcard()
                ),
            ));
        }
        let base = subjects.base_filters(&events).map_err(filters)?;

        let mut legacy_filters = Vec::new();
        for f in &base {
            legacy_filters.extend(subjects.unpartitioned_filters(f).map_err(filters)?);
        }
        legacy_filters.extend(others.into_iter().cloned());
        let own = subjects.replay_filter(name);
        if !legacy_filters.iter().any(|f| subject_within(&own, f)) {
            legacy_filters.push(own);
        }
        let legacy = ConsumerSettings {
            filter_subjects: legacy_filters,
            ..settings.clone()
        };

        let mut partitions = Vec::with_capacity(p as usize);
        let mut replay_consumers = Vec::with_capacity(p as usize);
        for k in 0..p {
            let durable = format!("{name}-p{k}");
            person_events::subject::validate_token("durable_name", &durable).map_err(|e| {
                ConfigError::invalid(
                    "durable_name",
                    format!("{e}: the group's partition consumers are named <durable_name>-p<k>"),
                )
            })?;
            let mut filter_subjects = Vec::new();
            for j in (k..s).step_by(p as usize) {
                for f in &base {
                    filter_subjects.extend(subjects.partition_filters(f, j).map_err(filters)?);
                }
            }
            let replays = format!("{durable}-replays");
            person_events::subject::validate_token("durable_name", &replays).map_err(|e| {
                ConfigError::invalid(
                    "durable_name",
                    format!(
                        "{e}: the group's replay consumers are named <durable_name>-p<k>-replays"
                    ),
                )
            })?;
            replay_consumers.push(ConsumerSettings {
                durable_name: replays,
                filter_subjects: vec![subjects.replay_filter(&durable)],
                ..settings.clone()
            });
            partitions.push(ConsumerSettings {
                durable_name: durable,
                filter_subjects,
                ..settings.clone()
            });
        }
        Ok(ConsumerGroup {
            legacy,
            partitions,
            replays: replay_consumers,
        })
    }

    /// The key-value bucket that holds the consumer groups' membership and partition
    /// leases: `<stream.name>_GROUPS`. `ensure` creates it when some consumer is a
    /// group, with the event stream's storage and replicas, one value per key and a
    /// max age of one hour.
    pub fn groups_bucket(&self) -> String {
        format!("{}_GROUPS", self.stream.name)
    }

    /// Moves every subject under `subject_prefix` (see
    /// [`with_subject_prefix`](Self::with_subject_prefix)), adds the replay subjects
    /// ([`with_replay_subjects`](Self::with_replay_subjects)), then validates.
    fn prefixed(mut self) -> Result<Self, ConfigError> {
        let subjects = self.checked_subjects()?;
        let qualify = |list: &mut Vec<String>| {
            for s in list {
                *s = subjects.qualify(s);
            }
        };
        qualify(&mut self.stream.subjects);
        qualify(&mut self.dlq.subjects);
        for c in &mut self.consumers {
            qualify(&mut c.filter_subjects);
        }
        let this = self.with_replay_subjects();
        this.validate()?;
        Ok(this)
    }

    fn checked_subjects(&self) -> Result<Subjects, ConfigError> {
        match &self.subject_prefix {
            None => Ok(Subjects::default()),
            Some(p) => Subjects::with_prefix(p).map_err(|e| {
                ConfigError::invalid(
                    "subject_prefix",
                    format!("{e}; use one or more tokens joined by `.`, e.g. acme or acme.prod"),
                )
            }),
        }
    }

    /// The subjects this configuration publishes, reads and dead-letters on. Call on
    /// a validated configuration: an invalid prefix gives the default subjects.
    pub fn subjects(&self) -> Subjects {
        self.checked_subjects().unwrap_or_default()
    }

    /// The object store bucket that keeps dead letters too large for a DLQ record
    /// whole: `<dlq.name>_BODIES`. `ensure` creates it with the DLQ stream's storage,
    /// replicas and max age, so a body expires with its record.
    pub fn bodies_bucket(&self) -> String {
        format!("{}_BODIES", self.dlq.name)
    }

    /// Looks up a consumer by durable name.
    pub fn consumer(&self, durable_name: &str) -> Option<&ConsumerSettings> {
        self.consumers
            .iter()
            .find(|c| c.durable_name == durable_name)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let space = self.checked_subjects()?;
        validate_stream("stream", &self.stream)?;
        validate_stream("dlq", &self.dlq)?;
        if self.stream.partitions > MAX_PARTITIONS {
            return Err(ConfigError::invalid(
                "stream.partitions",
                format!(
                    "is {}: at most {MAX_PARTITIONS} partitions (16 is plenty for most groups)",
                    self.stream.partitions
                ),
            ));
        }
        if self.dlq.partitions != 0 {
            return Err(ConfigError::invalid(
                "dlq.partitions",
                "must be 0: the dead-letter stream is never partitioned; set partitions in [stream]",
            ));
        }
        if self.stream.partitions > 0 {
            let (source, _) = space.partition_transform(self.stream.partitions);
            if !self
                .stream
                .subjects
                .iter()
                .any(|s| subject_within(&source, s))
            {
                return Err(ConfigError::invalid(
                    "stream.partitions",
                    format!(
                        "needs the stream to capture every event ({}), but stream.subjects is {:?}",
                        space.events_wildcard(),
                        self.stream.subjects
                    ),
                ));
            }
        }
        let outside = |field: String, subject: &str| {
            ConfigError::invalid(
                field,
                format!(
                    "`{subject}` is outside the subject prefix `{}`: write it as {} or leave the prefix to StreamingConfig::with_subject_prefix",
                    space.prefix().unwrap_or_default(),
                    space.qualify(subject)
                ),
            )
        };
        for (at, s) in [("stream", &self.stream), ("dlq", &self.dlq)] {
            if let Some((i, subject)) = s
                .subjects
                .iter()
                .enumerate()
                .find(|(_, x)| !space.contains(x))
            {
                return Err(outside(format!("{at}.subjects[{i}]"), subject));
            }
        }
        if !self
            .dlq
            .subjects
            .iter()
            .any(|d| subjects_overlap(d, &space.dlq_wildcard()))
        {
            return Err(ConfigError::invalid(
                "dlq.subjects",
                format!(
                    "{:?} captures no dead letter: dead letters are stored on {}.<consumer>.<person>.<event_type>",
                    self.dlq.subjects,
                    space.dlq_prefix()
                ),
            ));
        }
        for (i, s) in self.stream.subjects.iter().enumerate() {
            for d in &self.dlq.subjects {
                if subjects_overlap(s, d) {
                    return Err(ConfigError::invalid(
                        "dlq.subjects",
                        format!(
                            "`{d}` overlaps the event stream subject `{s}` (stream.subjects[{i}]): give dead letters their own subject space such as person.dlq.>"
                        ),
                    ));
                }
            }
        }
        if self.stream.name == self.dlq.name {
            return Err(ConfigError::invalid(
                "dlq.name",
                "must differ from stream.name",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.consumers.iter().enumerate() {
            let at = |f: &str| format!("consumers[{i}].{f}");
            person_events::subject::validate_token("durable_name", &c.durable_name)
                .map_err(|e| ConfigError::invalid(at("durable_name"), e.to_string()))?;
            if !names.insert(c.durable_name.as_str()) {
                return Err(ConfigError::invalid(
                    at("durable_name"),
                    format!(
                        "`{}` is used twice: durable names must be unique",
                        c.durable_name
                    ),
                ));
            }
            check_ack_policy(&at("ack_policy"), c)?;
            if c.filter_subjects.is_empty() {
                return Err(ConfigError::invalid(
                    at("filter_subjects"),
                    "must name at least one subject, e.g. person.events.>",
                ));
            }
            for (j, f) in c.filter_subjects.iter().enumerate() {
                check_subject(&at(&format!("filter_subjects[{j}]")), f)?;
                if !space.contains(f) {
                    return Err(outside(at(&format!("filter_subjects[{j}]")), f));
                }
                if !self.stream.subjects.iter().any(|s| subject_within(f, s)) {
                    return Err(ConfigError::invalid(
                        at(&format!("filter_subjects[{j}]")),
                        format!(
                            "`{f}` is outside the stream's subjects {:?}: use a subject under one of them",
                            self.stream.subjects
                        ),
                    ));
                }
            }
            if c.max_deliver < 1 {
                return Err(ConfigError::invalid(
                    at("max_deliver"),
                    "must be at least 1 (unlimited redelivery would never dead-letter a poison message)",
                ));
            }
            if c.ack_wait_secs == 0 {
                return Err(ConfigError::invalid(
                    at("ack_wait_secs"),
                    "must be at least 1",
                ));
            }
            if c.max_ack_pending < 1 {
                return Err(ConfigError::invalid(
                    at("max_ack_pending"),
                    "must be at least 1",
                ));
            }
            self.check_partitions(i, c, &space)?;
            let schedule = c.retry.schedule();
            if i64::try_from(schedule.len()).unwrap_or(i64::MAX) > c.max_deliver {
                return Err(ConfigError::invalid(
                    at("retry"),
                    format!(
                        "its backoff list has {} entries but max_deliver is {}: JetStream needs backoff entries <= max_deliver; lower retry.max_attempts or raise max_deliver",
                        schedule.len(),
                        c.max_deliver
                    ),
                ));
            }
        }
        // A group's partition consumers are named after it: no configured consumer may
        // have one of their names.
        for (i, c) in self.consumers.iter().enumerate() {
            if c.partitions > 1
                && let Some(k) = (0..c.partitions)
                    .find(|k| names.contains(format!("{}-p{k}", c.durable_name).as_str()))
            {
                return Err(ConfigError::invalid(
                    format!("consumers[{i}].durable_name"),
                    format!(
                        "consumer group `{0}` runs partition consumer `{0}-p{k}`, which is also a configured consumer: rename one of them",
                        c.durable_name
                    ),
                ));
            }
        }
        if self.publisher.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "publisher.max_in_flight",
                "must be at least 1",
            ));
        }
        if self.publisher.ack_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "publisher.ack_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.publisher.source.trim().is_empty()
            || self.publisher.source.chars().any(char::is_control)
        {
            return Err(ConfigError::invalid(
                "publisher.source",
                "must be a non-empty URI reference without control characters, e.g. /person-domain",
            ));
        }
        Ok(())
    }
}

/// `filters` with its event filters (those under `[P.]person.events`) replaced by
/// `fit` of them, where the first one stood; the other filters keep their places.
/// `None` when there is no event filter or `fit` fails.
fn refit_event_filters(
    subjects: &Subjects,
    filters: &[String],
    fit: impl FnOnce(&[&String]) -> Result<Vec<String>, person_events::subject::SubjectError>,
) -> Option<Vec<String>> {
    let under = format!("{}.", subjects.events_prefix());
    let events: Vec<&String> = filters.iter().filter(|f| f.starts_with(&under)).collect();
    if events.is_empty() {
        return None;
    }
    let mut fitted = Some(fit(&events).ok()?);
    let mut out = Vec::with_capacity(filters.len());
    for f in filters {
        if !f.starts_with(&under) {
            out.push(f.clone());
        } else if let Some(fitted) = fitted.take() {
            out.extend(fitted);
        }
    }
    Some(out)
}

impl StreamingConfig {
    /// The checks of `consumers[i].partitions`, and of the filters partitioning needs.
    fn check_partitions(
        &self,
        i: usize,
        c: &ConsumerSettings,
        space: &Subjects,
    ) -> Result<(), ConfigError> {
        let at = |f: &str| format!("consumers[{i}].{f}");
        if c.partitions == 0 {
            return Err(ConfigError::invalid(
                at("partitions"),
                "must be at least 1 (1: one consumer for every person; more: a consumer group)",
            ));
        }
        if c.partitions > 1 {
            if self.stream.partitions < c.partitions {
                return Err(ConfigError::invalid(
                    at("partitions"),
                    format!(
                        "is {} for consumer `{}` but stream.partitions is {}: a consumer group needs a partitioned stream with at least as many partitions; set stream.partitions (e.g. to 16, a multiple of {}) or use StreamingConfig::with_partitions",
                        c.partitions, c.durable_name, self.stream.partitions, c.partitions
                    ),
                ));
            }
            self.consumer_group(c)
                .map_err(|e| ConfigError::invalid(at(&e.field), e.message))?;
        } else if self.stream.partitions > 0 {
            let under = format!("{}.", space.events_prefix());
            let events: Vec<&String> = c
                .filter_subjects
                .iter()
                .filter(|f| f.starts_with(&under))
                .collect();
            if !events.is_empty() {
                space.any_partition_filters(&events).map_err(|e| {
                    ConfigError::invalid(
                        at("filter_subjects"),
                        format!(
                            "{e}: on a partitioned stream consumer `{}` needs filters that select both eras without overlapping",
                            c.durable_name
                        ),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// A parse error naming the field it happened at (`stream.replicas`,
/// `consumers[0].max_deliver`), or none when the text itself is malformed.
fn parse_error(
    format: &str,
    path: &serde_path_to_error::Path,
    e: &dyn fmt::Display,
) -> ConfigError {
    let field = path.to_string();
    let field = if field == "." { String::new() } else { field };
    let detail = e.to_string();
    let detail = detail.trim();
    ConfigError {
        kind: ConfigErrorKind::Parse,
        message: if field.is_empty() {
            format!("invalid {format} configuration: {detail}")
        } else {
            format!("invalid {format} configuration at `{field}`: {detail}")
        },
        field,
    }
}

fn validate_stream(at: &str, s: &StreamSettings) -> Result<(), ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    if s.name.trim().is_empty() {
        return Err(ConfigError::invalid(field("name"), "must not be empty"));
    }
    if s.name
        .chars()
        .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
    {
        return Err(ConfigError::invalid(
            field("name"),
            "must not contain `.`, `*`, `>`, `/`, `\\` or white space",
        ));
    }
    if s.subjects.is_empty() {
        return Err(ConfigError::invalid(
            field("subjects"),
            "must name at least one subject",
        ));
    }
    for (i, subject) in s.subjects.iter().enumerate() {
        check_subject(&field(&format!("subjects[{i}]")), subject)?;
    }
    if s.replicas == 0 || s.replicas > 5 {
        return Err(ConfigError::invalid(
            field("replicas"),
            "must be between 1 and 5 (1 for a single server, 3 for a 3-node cluster)",
        ));
    }
    if s.duplicate_window_secs == 0 {
        return Err(ConfigError::invalid(
            field("duplicate_window_secs"),
            "must be at least 1: publisher dedup relies on it",
        ));
    }
    if s.max_age_secs != 0 && s.duplicate_window_secs > s.max_age_secs {
        return Err(ConfigError::invalid(
            field("duplicate_window_secs"),
            format!(
                "{} s is longer than max_age_secs ({} s): shorten the window or raise max_age_secs",
                s.duplicate_window_secs, s.max_age_secs
            ),
        ));
    }
    if s.max_messages == 0 || s.max_messages < -1 {
        return Err(ConfigError::invalid(
            field("max_messages"),
            "must be -1 (unlimited) or positive",
        ));
    }
    if s.max_bytes == 0 || s.max_bytes < -1 {
        return Err(ConfigError::invalid(
            field("max_bytes"),
            "must be -1 (unlimited) or positive",
        ));
    }
    Ok(())
}

fn check_subject(field: &str, subject: &str) -> Result<(), ConfigError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let bad = subject.is_empty()
        || tokens
            .iter()
            .any(|t| t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        || tokens.iter().enumerate().any(|(i, t)| {
            (t.contains('*') && *t != "*")
                || (t.contains('>') && (*t != ">" || i + 1 != tokens.len()))
        });
    if bad {
        return Err(ConfigError::invalid(
            field,
            format!(
                "`{subject}` is not a valid NATS subject (dot-separated non-empty tokens; `*` and `>` only as whole tokens, `>` last)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_rules() {
        assert!(subject_within("person.events.>", "person.events.>"));
        assert!(subject_within("person.events.*.created", "person.events.>"));
        assert!(subject_within("person.events.a.b.c", "person.events.>"));
        assert!(!subject_within("person.>", "person.events.>"));
        assert!(!subject_within("person.events", "person.events.>"));
        assert!(!subject_within("person.events.>", "person.events.*"));
        assert!(subject_within("person.events.x", "person.events.*"));
        assert!(!subject_within("person.dlq.>", "person.events.>"));
        assert!(subjects_overlap("person.>", "person.dlq.>"));
        assert!(!subjects_overlap("person.events.>", "person.dlq.>"));
    }

    fn err(mutate: impl FnOnce(&mut StreamingConfig)) -> ConfigError {
        let mut c = StreamingConfig::default();
        mutate(&mut c);
        c.validate().unwrap_err()
    }

    #[test]
    fn validation_names_the_field() {
        let e = err(|c| c.consumers[1].filter_subjects = vec!["orders.>".into()]);
        assert_eq!(e.field(), "consumers[1].filter_subjects[0]");
        assert!(e.to_string().contains("outside the stream"), "{e}");

        let e = err(|c| c.consumers[0].max_deliver = 2);
        assert_eq!(e.field(), "consumers[0].retry", "{e}");
        assert!(e.to_string().contains("max_deliver"), "{e}");

        let e = err(|c| c.stream.replicas = 0);
        assert_eq!(e.field(), "stream.replicas");

        let e = err(|c| c.stream.name = " ".into());
        assert_eq!(e.field(), "stream.name");

        let e = err(|c| c.consumers[2].durable_name = String::new());
        assert_eq!(e.field(), "consumers[2].durable_name");

        let e = err(|c| c.dlq.duplicate_window_secs = 31 * DAY);
        assert_eq!(e.field(), "dlq.duplicate_window_secs");
        assert!(e.to_string().contains("max_age"), "{e}");

        let e = err(|c| c.consumers[3].durable_name = "person-projection-summary".into());
        assert!(e.to_string().contains("twice"), "{e}");

        let e = err(|c| c.dlq.subjects = vec!["person.>".into()]);
        assert_eq!(e.field(), "dlq.subjects");
    }

    #[test]
    fn only_explicit_acks_are_accepted() {
        for (policy, name) in [(AckPolicy::All, "all"), (AckPolicy::None, "none")] {
            let e = err(|c| c.consumers[2].ack_policy = policy);
            assert_eq!(e.kind(), ConfigErrorKind::Invalid, "{e}");
            assert_eq!(e.field(), "consumers[2].ack_policy", "{e}");
            let text = e.to_string();
            assert!(text.contains(&format!("is `{name}`")), "{text}");
            assert!(text.contains("person-to-location"), "{text}");
            assert!(text.contains("ack_policy = \"explicit\""), "{text}");
        }
        let e = StreamingConfig::from_toml_str(
            "[[consumers]]\ndurable_name = \"x\"\nack_policy = \"all\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (ConfigErrorKind::Invalid, "consumers[0].ack_policy")
        );
        let ok = StreamingConfig::from_toml_str(
            "[[consumers]]\ndurable_name = \"x\"\nack_policy = \"explicit\"\n",
        )
        .unwrap();
        assert_eq!(ok.consumers[0].ack_policy, AckPolicy::Explicit);
    }

    #[test]
    fn files_with_unknown_fields_or_wrong_types_are_rejected() {
        let e = StreamingConfig::from_toml_str("[stream]\nreplica = 3\n").unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Parse);
        assert!(e.to_string().contains("replica"), "{e}");
        let e =
            StreamingConfig::from_json_str(r#"{"stream": {"max_age_secs": "1y"}}"#).unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Parse);
        assert!(
            e.to_string().contains("max_age_secs") || e.to_string().contains("string"),
            "{e}"
        );
        let e = StreamingConfig::from_toml_str(
            "[[consumers]]\ndurable_name = \"x\"\nmax_deliver = 0\n",
        )
        .unwrap_err();
        assert_eq!(e.field(), "consumers[0].max_deliver");
    }

    #[test]
    fn a_partial_dlq_section_keeps_the_dead_letter_defaults() {
        let c = StreamingConfig::from_toml_str("[dlq]\nreplicas = 3\n").unwrap();
        let expected = StreamSettings {
            replicas: 3,
            ..StreamSettings::dead_letter_default()
        };
        assert_eq!(c.dlq, expected);
        let c = StreamingConfig::from_json_str(r#"{"dlq": {"max_age_secs": 3600}}"#).unwrap();
        assert_eq!(c.dlq.subjects, vec![DLQ_WILDCARD.to_owned()]);
        assert_eq!(c.dlq.name, "PERSON_EVENTS_DLQ");
        let e = StreamingConfig::from_toml_str("[dlq]\nmirror = \"X\"\n").unwrap_err();
        assert_eq!(e.field(), "dlq.mirror");
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = StreamingConfig::from_toml_str("[stream]\nreplicas = \"three\"\n").unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (ConfigErrorKind::Parse, "stream.replicas")
        );
        assert!(e.to_string().contains("`stream.replicas`"), "{e}");
        let e =
            StreamingConfig::from_json_str(r#"{"consumers": [{"max_deliver": "5"}]}"#).unwrap_err();
        assert_eq!(e.field(), "consumers[0].max_deliver");
        let e = StreamingConfig::from_toml_str("[publisher]\nack_timeout = 5\n").unwrap_err();
        assert!(e.field().starts_with("publisher"), "{e:?}");
        assert!(e.to_string().contains("ack_timeout"), "{e}");
        let e = StreamingConfig::from_toml_str("[stream\n").unwrap_err();
        assert_eq!((e.kind(), e.field()), (ConfigErrorKind::Parse, ""));
    }

    #[test]
    fn the_readme_example_file_loads() {
        let text = r#"
[stream]
replicas = 3
max_age_secs = 31536000

[[consumers]]
durable_name = "person-projection-summary"
filter_subjects = ["person.events.>"]
max_deliver = 5
ack_wait_secs = 30
retry = { max_attempts = 5, initial_backoff_ms = 100, max_backoff_ms = 30000, multiplier = 2.0, jitter = "full" }
"#;
        let c = StreamingConfig::from_toml_str(text).unwrap();
        assert_eq!(c.stream.replicas, 3);
        assert_eq!(c.consumers.len(), 1);
        assert_eq!(c.consumers[0].retry.max_attempts(), 5);
        assert_eq!(c.dlq, StreamSettings::dead_letter_default());
    }

    #[test]
    fn round_trips_through_toml_and_json() {
        let c = StreamingConfig::default();
        let toml_text = toml::to_string(&c).unwrap();
        assert_eq!(StreamingConfig::from_toml_str(&toml_text).unwrap(), c);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(StreamingConfig::from_json_str(&json).unwrap(), c);
    }

    #[test]
    fn a_subject_prefix_moves_every_subject_and_round_trips() {
        let c = StreamingConfig::from_toml_str(
            "subject_prefix = \"acme.prod\"\n[[consumers]]\ndurable_name = \"x\"\nfilter_subjects = [\"person.events.*.created\", \"acme.prod.person.events.*.merged\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.stream.subjects,
            ["acme.prod.person.events.>", "acme.prod.person.replay.>"]
        );
        assert_eq!(c.dlq.subjects, ["acme.prod.person.dlq.>"]);
        assert_eq!(
            c.consumers[0].filter_subjects,
            [
                "acme.prod.person.events.*.created",
                "acme.prod.person.events.*.merged",
                "acme.prod.person.replay.x.>"
            ]
        );
        let again = StreamingConfig::from_toml_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c, "prefixing is idempotent");
        let json = StreamingConfig::from_json_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(json, c);
    }

    #[test]
    fn subjects_outside_the_prefix_or_a_dlq_without_letters_are_rejected() {
        let err = StreamingConfig::from_toml_str("subject_prefix = \"a b\"\n").unwrap_err();
        assert_eq!(err.field(), "subject_prefix");
        let mut c = StreamingConfig::default()
            .with_subject_prefix("acme")
            .unwrap();
        c.consumers[1].filter_subjects = vec!["person.events.>".into()];
        let err = c.validate().unwrap_err();
        assert_eq!(err.field(), "consumers[1].filter_subjects[0]");
        assert!(err.to_string().contains("acme.person.events.>"), "{err}");
        let mut c = StreamingConfig::default()
            .with_subject_prefix("acme")
            .unwrap();
        c.stream.subjects.push("other.>".into());
        assert_eq!(c.validate().unwrap_err().field(), "stream.subjects[2]");
        let mut c = StreamingConfig::default();
        c.dlq.subjects = vec!["letters.>".into()];
        let err = c.validate().unwrap_err();
        assert_eq!(err.field(), "dlq.subjects");
        assert!(err.to_string().contains("person.dlq"), "{err}");
    }

    fn partitioned(consumer: &str, partitions: u32) -> StreamingConfig {
        StreamingConfig::default()
            .with_partitions(consumer, partitions)
            .unwrap()
    }

    #[test]
    fn partition_settings_are_validated() {
        let e = err(|c| c.stream.partitions = 1025);
        assert_eq!(e.field(), "stream.partitions", "{e}");
        assert!(e.to_string().contains("1024"), "{e}");
        let e = err(|c| c.dlq.partitions = 4);
        assert_eq!(e.field(), "dlq.partitions", "{e}");
        let e = err(|c| c.consumers[2].partitions = 0);
        assert_eq!(e.field(), "consumers[2].partitions", "{e}");

        let e = err(|c| c.consumers[0].partitions = 4);
        assert_eq!(e.field(), "consumers[0].partitions", "{e}");
        let text = e.to_string();
        for needed in [
            "stream.partitions",
            "16",
            "StreamingConfig::with_partitions",
        ] {
            assert!(text.contains(needed), "{needed} missing from {text}");
        }
        let e = err(|c| {
            c.stream.partitions = 2;
            c.consumers[1].partitions = 4;
        });
        assert_eq!(e.field(), "consumers[1].partitions", "{e}");

        // A group's partition consumers may not be configured consumers too.
        let e = err(|c| {
            c.stream.partitions = 16;
            c.consumers[0].partitions = 2;
            c.consumers[3].durable_name = "person-projection-summary-p1".into();
            c.consumers[3].filter_subjects = vec!["person.events.>".into()];
        });
        assert_eq!(e.field(), "consumers[0].durable_name", "{e}");
        assert!(
            e.to_string().contains("person-projection-summary-p1"),
            "{e}"
        );

        // The transform needs the stream to capture every event.
        let e = err(|c| {
            c.stream.partitions = 16;
            c.stream.subjects = vec!["person.events.*.created".into(), "person.replay.>".into()];
            c.consumers = vec![ConsumerSettings::new(
                "x",
                &["person.events.*.created"],
                "x",
            )];
        });
        assert_eq!(e.field(), "stream.partitions", "{e}");

        // Filters that would overlap once widened are named.
        let e = err(|c| {
            c.stream.partitions = 16;
            c.consumers[2].filter_subjects = vec![
                "person.events.*.created".into(),
                "person.events.*.person.*".into(),
            ];
        });
        assert_eq!(e.field(), "consumers[2].filter_subjects", "{e}");
        assert!(e.to_string().contains("overlap"), "{e}");

        // Any number of consumer partitions up to the stream's is valid.
        let mut c = StreamingConfig::default();
        c.stream.partitions = 16;
        c.consumers[0].partitions = 5;
        c.with_replay_subjects().validate().unwrap();
    }

    #[test]
    fn with_partitions_partitions_the_stream_when_it_has_too_few() {
        let c = partitioned("person-projection-search", 4);
        assert_eq!(c.stream.partitions, 4, "as many as the group");
        assert_eq!(
            c.consumer("person-projection-search").unwrap().partitions,
            4
        );
        assert_eq!(partitioned("policy-engine", 32).stream.partitions, 32);
        let mut eight = StreamingConfig::default();
        eight.stream.partitions = 8;
        let c = eight.with_partitions("policy-engine", 4).unwrap();
        assert_eq!(c.stream.partitions, 8, "enough partitions already");
        let c = partitioned("policy-engine", 1);
        assert_eq!(c.stream.partitions, 0, "one partition is no group");
        let e = StreamingConfig::default()
            .with_partitions("nobody", 4)
            .unwrap_err();
        assert_eq!(e.field(), "consumers");
        assert!(e.to_string().contains("nobody"), "{e}");
        assert_eq!(
            StreamingConfig::default()
                .with_partitions("policy-engine", 0)
                .unwrap_err()
                .field(),
            "consumers[3].partitions"
        );
    }

    #[test]
    fn non_group_consumers_are_widened_once_and_groups_keep_their_base_filters() {
        let c = partitioned("person-projection-summary", 4);
        assert_eq!(
            c.consumer("person-to-location").unwrap().filter_subjects,
            [
                "person.events.*.location_assigned",
                "person.events.*.*.location_assigned",
                "person.events.*.*.person.location_assigned",
                "person.replay.person-to-location.>",
            ]
        );
        assert_eq!(
            c.consumer("person-projection-search")
                .unwrap()
                .filter_subjects,
            [
                "person.events.>",
                "person.replay.person-projection-search.>"
            ]
        );
        assert_eq!(c.clone().with_replay_subjects(), c, "idempotent");
        for consumer in &c.consumers {
            let f = &consumer.filter_subjects;
            for (i, a) in f.iter().enumerate() {
                for b in &f[i + 1..] {
                    assert!(!subjects_overlap(a, b), "{a} overlaps {b}");
                }
            }
        }
        // Turning a widened consumer into a group brings its base filters back.
        let c = c.with_partitions("person-to-location", 2).unwrap();
        assert_eq!(
            c.consumer("person-to-location").unwrap().filter_subjects,
            [
                "person.events.*.location_assigned",
                "person.events.*.person.location_assigned",
                "person.replay.person-to-location.>",
            ]
        );
        // Without stream partitions nothing is widened.
        assert_eq!(
            StreamingConfig::default().consumers,
            StreamingConfig::default().with_replay_subjects().consumers
        );
    }

    #[test]
    fn a_consumer_group_splits_the_stream_partitions_between_its_durables() {
        let mut c = StreamingConfig::default();
        c.stream.partitions = 16;
        let c = c.with_partitions("person-projection-summary", 4).unwrap();
        let base = c.consumer("person-projection-summary").unwrap();
        let g = c.consumer_group(base).unwrap();
        assert_eq!(
            g.legacy,
            ConsumerSettings {
                filter_subjects: vec![
                    "person.events.*.*".into(),
                    "person.events.*.person.*".into(),
                    "person.replay.person-projection-summary.>".into(),
                ],
                ..base.clone()
            }
        );
        assert_eq!(g.partitions.len(), 4);
        assert_eq!(
            g.partitions[1],
            ConsumerSettings {
                durable_name: "person-projection-summary-p1".into(),
                filter_subjects: vec![
                    "person.events.*.1.>".into(),
                    "person.events.*.5.>".into(),
                    "person.events.*.9.>".into(),
                    "person.events.*.13.>".into(),
                ],
                ..base.clone()
            }
        );
        // Replays of a partition's dead letters have a durable of their own.
        assert_eq!(
            g.replays[1],
            ConsumerSettings {
                durable_name: "person-projection-summary-p1-replays".into(),
                filter_subjects: vec!["person.replay.person-projection-summary-p1.>".into()],
                ..base.clone()
            }
        );
        // By default the stream has as many partitions as the group: one filter each.
        let one = partitioned("person-projection-summary", 4);
        let g1 = one
            .consumer_group(one.consumer("person-projection-summary").unwrap())
            .unwrap();
        assert_eq!(one.stream.partitions, 4);
        assert!(g1.partitions.iter().all(|p| p.filter_subjects.len() == 1));

        // Every stored form of every event is selected by exactly one durable.
        let all: Vec<&ConsumerSettings> = std::iter::once(&g.legacy).chain(&g.partitions).collect();
        let p = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let mut subjects = vec![
            format!("person.events.{p}.created"),
            format!("person.events.{p}.person.created"),
        ];
        for j in 0..16 {
            subjects.push(format!("person.events.{p}.{j}.created"));
            subjects.push(format!("person.events.{p}.{j}.person.created"));
        }
        for subject in &subjects {
            let owners: Vec<&str> = all
                .iter()
                .filter(|c| c.filter_subjects.iter().any(|f| subject_within(subject, f)))
                .map(|c| c.durable_name.as_str())
                .collect();
            assert_eq!(owners.len(), 1, "{subject}: {owners:?}");
        }

        // A renamed copy names its durables and replay filters after itself; a group on
        // fewer partitions than a divisor takes the rest unevenly.
        let mut c = StreamingConfig::default()
            .with_subject_prefix("acme")
            .unwrap();
        c.stream.partitions = 16;
        let c = c.with_partitions("person-to-location", 3).unwrap();
        let renamed = ConsumerSettings {
            durable_name: "person-to-location-sync".into(),
            ..c.consumer("person-to-location").unwrap().clone()
        };
        let g = c.consumer_group(&renamed).unwrap();
        assert_eq!(
            g.legacy.filter_subjects,
            [
                "acme.person.events.*.location_assigned",
                "acme.person.events.*.person.location_assigned",
                "acme.person.replay.person-to-location.>",
                "acme.person.replay.person-to-location-sync.>",
            ]
        );
        let sizes: Vec<usize> = g
            .partitions
            .iter()
            .map(|p| p.filter_subjects.len())
            .collect();
        assert_eq!(sizes, [6 * 2, 5 * 2, 5 * 2]);
        assert_eq!(g.partitions[2].durable_name, "person-to-location-sync-p2");
        assert_eq!(
            g.partitions[2].filter_subjects[..2],
            [
                "acme.person.events.*.2.location_assigned",
                "acme.person.events.*.2.person.location_assigned",
            ]
        );
        assert_eq!(
            g.replays[2].filter_subjects,
            ["acme.person.replay.person-to-location-sync-p2.>"]
        );
        assert_eq!(
            g.replays[2].durable_name,
            "person-to-location-sync-p2-replays"
        );

        let e = c.consumer_group(&c.consumers[0]).unwrap_err();
        assert_eq!(e.field(), "partitions", "{e}");
        let mut flat = StreamingConfig::default();
        flat.consumers[0].partitions = 2;
        let e = flat.consumer_group(&flat.consumers[0]).unwrap_err();
        assert_eq!(e.field(), "stream.partitions", "{e}");
        assert_eq!(c.groups_bucket(), "PERSON_EVENTS_GROUPS");
    }

    #[test]
    fn partitions_load_from_files_and_round_trip() {
        let text = r#"
[stream]
partitions = 16

[[consumers]]
durable_name = "summary"
partitions = 4

[[consumers]]
durable_name = "created"
filter_subjects = ["person.events.*.created"]
"#;
        let c = StreamingConfig::from_toml_str(text).unwrap();
        assert_eq!(c.stream.partitions, 16);
        assert_eq!(c.dlq.partitions, 0);
        assert_eq!(
            (c.consumers[0].partitions, c.consumers[1].partitions),
            (4, 1)
        );
        assert_eq!(
            c.consumers[1].filter_subjects,
            [
                "person.events.*.created",
                "person.events.*.*.created",
                "person.replay.created.>"
            ]
        );
        let again = StreamingConfig::from_toml_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let json = StreamingConfig::from_json_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(json, c);
        let e = StreamingConfig::from_toml_str("[dlq]\npartitions = 2\n").unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (ConfigErrorKind::Invalid, "dlq.partitions")
        );
        let e = StreamingConfig::from_toml_str("[stream]\npartition = 2\n").unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Parse, "{e}");
    }
}
