//! NATS subjects for Person events and dead letters.
//!
//! - events: `person.events.<person_id>.<event_type>`
//! - week-1 events (read only): `person.events.<person_id>.person.<event_type>`
//! - both as stored by a partitioned stream: `person.events.<person_id>.<partition>.<event_type>`
//!   and `person.events.<person_id>.<partition>.person.<event_type>` (see
//!   [`Subjects::partition_transform`])
//! - dead letters: `person.dlq.<consumer>.<person_id>.<event_type>`
//! - replays of dead letters, addressed to one consumer and outside every person's
//!   history: `person.replay.<consumer>.<person_id>.<event_type>`
//!
//! [`Subjects`] puts all of them under a prefix of the deployment's own
//! (`acme.person.events.…`); the free functions and constants are the default,
//! unprefixed subjects.
//!
//! Every token that could come from input is validated: no `.`, `*`, `>`, white space,
//! control characters or empty tokens, so no input can re-route an event or widen a
//! subscription.
//!
//! ```
//! use person_events::{PersonId, subject};
//! let person = PersonId::new();
//! let s = subject::event_subject(&person, "created").unwrap();
//! assert_eq!(s, format!("person.events.{person}.created"));
//! assert!(subject::event_subject(&person, "created.>").is_err());
//! ```

use std::fmt;

use crate::PersonId;

/// The prefix of every event subject.
pub const EVENTS_PREFIX: &str = "person.events";
/// The wildcard subject covering every event (current and week-1 subjects).
pub const EVENTS_WILDCARD: &str = "person.events.>";
/// The prefix of every dead-letter subject.
pub const DLQ_PREFIX: &str = "person.dlq";
/// The wildcard subject covering every dead letter.
pub const DLQ_WILDCARD: &str = "person.dlq.>";
/// The prefix of every replay subject.
pub const REPLAY_PREFIX: &str = "person.replay";
/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 128;

/// What is wrong with a subject or token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubjectErrorKind {
    /// The token is empty.
    EmptyToken,
    /// The token contains `.`, `*`, `>`, white space or a control character.
    ForbiddenCharacter,
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    TooLong,
    /// The subject is not an event subject (`person.events.<id>.<type>`).
    NotAnEventSubject,
    /// The person token is not a UUID.
    InvalidPersonId,
    /// The filter is not an event filter (`person.events.<person_id or *>.<event_type>`,
    /// `…person.<event_type>` or `…>`).
    NotAnEventFilter,
    /// The filter already names a stream partition (`person.events.<id>.<partition>.…`)
    /// where a filter written for the unpartitioned subjects is needed.
    PartitionedFilter,
    /// Two filters would overlap, which JetStream refuses within one consumer.
    OverlappingFilters,
}

/// A subject or token was rejected. Names the part and the reason.
///
/// ```
/// use person_events::subject::{validate_token, SubjectErrorKind};
/// let err = validate_token("consumer", "a b").unwrap_err();
/// assert_eq!(err.kind(), SubjectErrorKind::ForbiddenCharacter);
/// assert!(err.to_string().contains("consumer"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SubjectError {
    kind: SubjectErrorKind,
    part: &'static str,
    value: String,
}

impl SubjectError {
    fn new(kind: SubjectErrorKind, part: &'static str, value: &str) -> Self {
        Self {
            kind,
            part,
            value: value.chars().take(80).collect(),
        }
    }

    /// An error about two values, shown as `` `a` and `b` ``.
    fn pair(kind: SubjectErrorKind, part: &'static str, a: &str, b: &str) -> Self {
        let cut = |v: &str| v.chars().take(80).collect::<String>();
        Self {
            kind,
            part,
            value: format!("{}` and `{}", cut(a), cut(b)),
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> SubjectErrorKind {
        self.kind
    }

    /// Which part was rejected (`"event_type"`, `"consumer"`, `"subject"`, ...).
    pub fn part(&self) -> &'static str {
        self.part
    }
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            SubjectErrorKind::EmptyToken => "must not be empty".to_owned(),
            SubjectErrorKind::ForbiddenCharacter => {
                "must not contain `.`, `*`, `>`, white space or control characters".to_owned()
            }
            SubjectErrorKind::TooLong => format!("must be at most {MAX_TOKEN_BYTES} bytes"),
            SubjectErrorKind::NotAnEventSubject => {
                "is not of the form person.events.<person_id>.<event_type>".to_owned()
            }
            SubjectErrorKind::InvalidPersonId => "must hold a UUID person id".to_owned(),
            SubjectErrorKind::NotAnEventFilter => {
                "is not an event filter: person.events.>, person.events.<person_id or *>.> or \
                 person.events.<person_id or *>.[person.]<event_type or *>, under the subject prefix if any"
                    .to_owned()
            }
            SubjectErrorKind::PartitionedFilter => {
                "already names a stream partition: write it for the unpartitioned subjects \
                 (person.events.<person_id or *>.<event_type>)"
                    .to_owned()
            }
            SubjectErrorKind::OverlappingFilters => {
                "overlap once the stream is partitioned (the partition token `*` also matches \
                 the `person` token of week-1 subjects), and one consumer's filters must not \
                 overlap: name the current and the week-1 form of the same event types"
                    .to_owned()
            }
        };
        write!(f, "{} `{}` {why}", self.part, self.value.escape_debug())
    }
}

/// Checks that `token` is one safe subject token. `part` names it in the error.
pub fn validate_token(part: &'static str, token: &str) -> Result<(), SubjectError> {
    if token.is_empty() {
        return Err(SubjectError::new(SubjectErrorKind::EmptyToken, part, token));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(SubjectError::new(SubjectErrorKind::TooLong, part, token));
    }
    if token
        .chars()
        .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return Err(SubjectError::new(
            SubjectErrorKind::ForbiddenCharacter,
            part,
            token,
        ));
    }
    Ok(())
}

/// `person.events.<person_id>.<event_type>`, after validating `event_type`.
pub fn event_subject(person_id: &PersonId, event_type: &str) -> Result<String, SubjectError> {
    validate_token("event_type", event_type)?;
    Ok(event_subject_unchecked(person_id, event_type))
}

pub(crate) fn event_subject_unchecked(person_id: &PersonId, event_type: &str) -> String {
    event_subject_in(EVENTS_PREFIX, person_id, event_type)
}

fn event_subject_in(events: &str, person_id: &PersonId, event_type: &str) -> String {
    let mut s = String::with_capacity(events.len() + 38 + event_type.len());
    s.push_str(events);
    s.push('.');
    s.push_str(
        person_id
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    s.push('.');
    s.push_str(event_type);
    s
}

/// The filter matching every event of one person, current and week-1 subjects alike:
/// `person.events.<person_id>.>`.
pub fn person_filter(person_id: &PersonId) -> String {
    format!("{EVENTS_PREFIX}.{person_id}.>")
}

/// `person.dlq.<consumer>.<person>.<event_type>`, validating every token. `person` is a
/// token rather than a [`PersonId`] because an undecodable message may have no person
/// (use `unknown` then).
pub fn dlq_subject(consumer: &str, person: &str, event_type: &str) -> Result<String, SubjectError> {
    validate_token("consumer", consumer)?;
    validate_token("person", person)?;
    validate_token("event_type", event_type)?;
    Ok(format!("{DLQ_PREFIX}.{consumer}.{person}.{event_type}"))
}

/// A parsed event subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSubject {
    /// The person.
    pub person_id: PersonId,
    /// The event type token.
    pub event_type: String,
    /// `true` for the week-1 form `person.events.<id>.person.<type>` (partitioned or
    /// not).
    pub week1: bool,
    /// The stream partition of a subject a partitioned stream stored
    /// (`person.events.<id>.<partition>.<type>`); `None` for one stored without.
    pub partition: Option<u32>,
}

/// Parses `person.events.<id>.<type>` or the week-1 `person.events.<id>.person.<type>`,
/// under any [subject prefix](Subjects::with_prefix) (`acme.person.events.<id>.<type>`),
/// and both as a partitioned stream stores them, with the partition after the person
/// (`person.events.<id>.<partition>.<type>`, `person.events.<id>.<partition>.person.<type>`).
/// The tokens are read from the end, so a prefix cannot be mistaken for a person.
///
/// ```
/// use person_events::subject::parse_event_subject;
/// let s = parse_event_subject("person.events.0f8fad5b-d9cb-469f-a165-70867728950e.person.created").unwrap();
/// assert!(s.week1);
/// assert_eq!(s.event_type, "created");
/// let s = parse_event_subject("acme.person.events.0f8fad5b-d9cb-469f-a165-70867728950e.created").unwrap();
/// assert!(!s.week1);
/// let s = parse_event_subject("person.events.0f8fad5b-d9cb-469f-a165-70867728950e.7.person.created").unwrap();
/// assert_eq!((s.partition, s.week1), (Some(7), true));
/// ```
pub fn parse_event_subject(subject: &str) -> Result<EventSubject, SubjectError> {
    let not_event = || SubjectError::new(SubjectErrorKind::NotAnEventSubject, "subject", subject);
    let tokens: Vec<&str> = subject.split('.').collect();
    let (root, person, partition, event_type, week1) = match tokens.as_slice() {
        [
            root @ ..,
            "person",
            "events",
            person,
            j,
            "person",
            event_type,
        ] if is_partition_token(j) => (root, *person, Some(*j), *event_type, true),
        [root @ .., "person", "events", person, "person", event_type] => {
            (root, *person, None, *event_type, true)
        }
        [root @ .., "person", "events", person, j, event_type] if is_partition_token(j) => {
            (root, *person, Some(*j), *event_type, false)
        }
        [root @ .., "person", "events", person, event_type] => {
            (root, *person, None, *event_type, false)
        }
        _ => return Err(not_event()),
    };
    for token in root {
        validate_token("subject prefix", token)?;
    }
    validate_token("event_type", event_type)?;
    let person_id = uuid::Uuid::try_parse(person)
        .map(PersonId::from_uuid)
        .map_err(|_| SubjectError::new(SubjectErrorKind::InvalidPersonId, "person_id", person))?;
    let partition = match partition {
        Some(j) => Some(j.parse::<u32>().map_err(|_| not_event())?),
        None => None,
    };
    Ok(EventSubject {
        person_id,
        event_type: event_type.to_owned(),
        week1,
        partition,
    })
}

/// A stream partition token: decimal digits only.
fn is_partition_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit())
}

/// A parsed replay subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySubject {
    /// The one consumer the replay is addressed to.
    pub consumer: String,
    /// The person.
    pub person_id: PersonId,
    /// The event type token.
    pub event_type: String,
}

/// Parses `[<prefix>.]person.replay.<consumer>.<person_id>.<event_type>`, reading the
/// tokens from the end like [`parse_event_subject`].
///
/// ```
/// use person_events::subject::parse_replay_subject;
/// let r = parse_replay_subject("person.replay.search.0f8fad5b-d9cb-469f-a165-70867728950e.created").unwrap();
/// assert_eq!((r.consumer.as_str(), r.event_type.as_str()), ("search", "created"));
/// assert!(parse_replay_subject("person.events.0f8fad5b-d9cb-469f-a165-70867728950e.created").is_err());
/// ```
pub fn parse_replay_subject(subject: &str) -> Result<ReplaySubject, SubjectError> {
    let not_replay = || SubjectError::new(SubjectErrorKind::NotAnEventSubject, "subject", subject);
    let tokens: Vec<&str> = subject.split('.').collect();
    let [root @ .., "person", "replay", consumer, person, event_type] = tokens.as_slice() else {
        return Err(not_replay());
    };
    for token in root {
        validate_token("subject prefix", token)?;
    }
    validate_token("consumer", consumer)?;
    validate_token("event_type", event_type)?;
    let person_id = uuid::Uuid::try_parse(person)
        .map(PersonId::from_uuid)
        .map_err(|_| SubjectError::new(SubjectErrorKind::InvalidPersonId, "person_id", person))?;
    Ok(ReplaySubject {
        consumer: (*consumer).to_owned(),
        person_id,
        event_type: (*event_type).to_owned(),
    })
}

/// The person a stored message is about, from its subject: an event subject (current
/// or week-1, partitioned or not) or a replay subject, under any prefix.
pub fn person_of_subject(subject: &str) -> Option<PersonId> {
    parse_event_subject(subject)
        .map(|s| s.person_id)
        .or_else(|_| parse_replay_subject(subject).map(|r| r.person_id))
        .ok()
}

/// The subjects one deployment uses: by default `person.events.…`, `person.dlq.…` and
/// `person.replay.…`; with a prefix `P`, `P.person.events.…` and so on.
///
/// A prefix gives an application, a tenant or a test run a subject space of its own
/// on a shared server: JetStream lets only one stream capture a subject, so two
/// deployments on the default subjects cannot keep separate streams.
///
/// ```
/// use person_events::{PersonId, subject::Subjects};
/// let person = PersonId::new();
/// let default = Subjects::default();
/// assert_eq!(default.event_subject(&person, "created"), format!("person.events.{person}.created"));
///
/// let acme = Subjects::with_prefix("acme.prod").unwrap();
/// assert_eq!(acme.events_wildcard(), "acme.prod.person.events.>");
/// assert_eq!(acme.person_filter(&person), format!("acme.prod.person.events.{person}.>"));
/// assert_eq!(acme.dlq_wildcard(), "acme.prod.person.dlq.>");
/// assert_eq!(acme.qualify("person.events.*.created"), "acme.prod.person.events.*.created");
/// assert!(Subjects::with_prefix("acme.>").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: Option<std::sync::Arc<str>>,
    events: std::sync::Arc<str>,
    dlq: std::sync::Arc<str>,
    replay: std::sync::Arc<str>,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: None,
            events: EVENTS_PREFIX.into(),
            dlq: DLQ_PREFIX.into(),
            replay: REPLAY_PREFIX.into(),
        }
    }
}

impl Subjects {
    /// The subjects under `prefix`: one or more tokens separated by `.`, each a valid
    /// token ([`validate_token`]).
    pub fn with_prefix(prefix: &str) -> Result<Self, SubjectError> {
        validate_prefix(prefix)?;
        Ok(Self {
            prefix: Some(prefix.into()),
            events: format!("{prefix}.{EVENTS_PREFIX}").into(),
            dlq: format!("{prefix}.{DLQ_PREFIX}").into(),
            replay: format!("{prefix}.{REPLAY_PREFIX}").into(),
        })
    }

    /// The prefix, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// The prefix of every event subject: `[P.]person.events`.
    pub fn events_prefix(&self) -> &str {
        &self.events
    }

    /// The prefix of every dead-letter subject: `[P.]person.dlq`.
    pub fn dlq_prefix(&self) -> &str {
        &self.dlq
    }

    /// The prefix of every replay subject: `[P.]person.replay`.
    pub fn replay_prefix(&self) -> &str {
        &self.replay
    }

    /// Every event, current and week-1 subjects: `[P.]person.events.>`.
    pub fn events_wildcard(&self) -> String {
        format!("{}.>", self.events)
    }

    /// Every dead letter: `[P.]person.dlq.>`.
    pub fn dlq_wildcard(&self) -> String {
        format!("{}.>", self.dlq)
    }

    /// `[P.]person.events.<person_id>.<event_type>`. The event type must be a valid
    /// token; the envelope's own types always are.
    pub fn event_subject(&self, person_id: &PersonId, event_type: &str) -> String {
        event_subject_in(&self.events, person_id, event_type)
    }

    /// Every event of one person: `[P.]person.events.<person_id>.>`.
    pub fn person_filter(&self, person_id: &PersonId) -> String {
        format!("{}.{person_id}.>", self.events)
    }

    /// `[P.]person.dlq.<consumer>.<person>.<event_type>`, validating every token (see
    /// [`dlq_subject`]).
    pub fn dlq_subject(
        &self,
        consumer: &str,
        person: &str,
        event_type: &str,
    ) -> Result<String, SubjectError> {
        validate_token("consumer", consumer)?;
        validate_token("person", person)?;
        validate_token("event_type", event_type)?;
        Ok(format!("{}.{consumer}.{person}.{event_type}", self.dlq))
    }

    /// Every replay, to every consumer: `[P.]person.replay.>`.
    pub fn replay_wildcard(&self) -> String {
        format!("{}.>", self.replay)
    }

    /// Every replay addressed to `consumer`: `[P.]person.replay.<consumer>.>`. The
    /// consumer's filter includes it; no other consumer's does.
    pub fn replay_filter(&self, consumer: &str) -> String {
        format!("{}.{consumer}.>", self.replay)
    }

    /// `[P.]person.replay.<consumer>.<person_id>.<event_type>`, validating the tokens.
    /// A replay there reaches `consumer` alone, and is never part of the person's
    /// history (`[P.]person.events.<person_id>.>`).
    pub fn replay_subject(
        &self,
        consumer: &str,
        person_id: &PersonId,
        event_type: &str,
    ) -> Result<String, SubjectError> {
        validate_token("consumer", consumer)?;
        validate_token("event_type", event_type)?;
        Ok(format!(
            "{}.{consumer}.{person_id}.{event_type}",
            self.replay
        ))
    }

    /// `subject` written for the default subjects, moved under this prefix:
    /// `person.events.*.created` becomes `P.person.events.*.created`. A subject
    /// already under the prefix, and every subject when there is no prefix, is
    /// returned as it is.
    pub fn qualify(&self, subject: &str) -> String {
        match &self.prefix {
            Some(p) if !is_under(subject, p) => format!("{p}.{subject}"),
            _ => subject.to_owned(),
        }
    }

    /// `true` when `subject` lies in this subject space (under the prefix, if any).
    pub fn contains(&self, subject: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| is_under(subject, p))
    }

    /// The stream subject transform that partitions the events of `partitions`
    /// stream partitions, as `(source, destination)`:
    /// `[P.]person.events.*.>` to
    /// `[P.]person.events.{{wildcard(1)}}.{{partition(S,1)}}.>`. The server then stores
    /// `person.events.<id>.<type>` as `person.events.<id>.<j>.<type>` (and the week-1
    /// `….<id>.person.<type>` as `….<id>.<j>.person.<type>`), `j` in `0..partitions` a
    /// stable hash of the person token: every event of one person lands in one
    /// partition.
    ///
    /// ```
    /// use person_events::subject::Subjects;
    /// let (src, dest) = Subjects::default().partition_transform(16);
    /// assert_eq!(src, "person.events.*.>");
    /// assert_eq!(dest, "person.events.{{wildcard(1)}}.{{partition(16,1)}}.>");
    /// ```
    pub fn partition_transform(&self, partitions: u32) -> (String, String) {
        let events = &self.events;
        (
            format!("{events}.*.>"),
            format!("{events}.{{{{wildcard(1)}}}}.{{{{partition({partitions},1)}}}}.>"),
        )
    }

    /// The subjects of the messages `filter` selects among those stored before the
    /// stream was partitioned: `[P.]person.events.>` gives
    /// `[P.]person.events.*.*` and `[P.]person.events.*.person.*`, a person's
    /// `….<id>.>` gives `….<id>.*` and `….<id>.person.*`, and a filter naming an event
    /// type (`….<id or *>.<type>`, `….<id or *>.person.<type>`, `*` for the type
    /// included) is its own answer.
    ///
    /// A filter that is no event filter is a [`SubjectErrorKind::NotAnEventFilter`]
    /// error, one that already names a partition [`SubjectErrorKind::PartitionedFilter`].
    ///
    /// ```
    /// use person_events::subject::Subjects;
    /// let s = Subjects::default();
    /// assert_eq!(s.unpartitioned_filters("person.events.>").unwrap(), ["person.events.*.*", "person.events.*.person.*"]);
    /// assert_eq!(s.unpartitioned_filters("person.events.*.created").unwrap(), ["person.events.*.created"]);
    /// assert!(s.unpartitioned_filters("person.replay.search.>").is_err());
    /// ```
    pub fn unpartitioned_filters(&self, filter: &str) -> Result<Vec<String>, SubjectError> {
        let f = self.event_filter(filter)?;
        if f.partition.is_some() {
            return Err(SubjectError::new(
                SubjectErrorKind::PartitionedFilter,
                "filter",
                filter,
            ));
        }
        Ok(match f.tail {
            Tail::All => vec![
                self.render(f.id, None, Tail::Current("*")),
                self.render(f.id, None, Tail::Week1("*")),
            ],
            Tail::Current(_) | Tail::Week1(_) => vec![filter.to_owned()],
        })
    }

    /// The subjects of the messages `filter` selects among those a partitioned stream
    /// stored in partition `partition`: the partition token inserted after the person
    /// token. `[P.]person.events.>` gives `[P.]person.events.*.<j>.>`,
    /// `….*.location_assigned` gives `….*.<j>.location_assigned` and
    /// `….*.person.location_assigned` gives `….*.<j>.person.location_assigned`. The
    /// errors are those of [`unpartitioned_filters`](Self::unpartitioned_filters).
    ///
    /// ```
    /// use person_events::subject::Subjects;
    /// let s = Subjects::with_prefix("acme").unwrap();
    /// assert_eq!(s.partition_filters("acme.person.events.>", 3).unwrap(), ["acme.person.events.*.3.>"]);
    /// assert_eq!(
    ///     s.partition_filters("acme.person.events.*.person.merged", 0).unwrap(),
    ///     ["acme.person.events.*.0.person.merged"]
    /// );
    /// ```
    pub fn partition_filters(
        &self,
        filter: &str,
        partition: u32,
    ) -> Result<Vec<String>, SubjectError> {
        let f = self.event_filter(filter)?;
        if f.partition.is_some() {
            return Err(SubjectError::new(
                SubjectErrorKind::PartitionedFilter,
                "filter",
                filter,
            ));
        }
        Ok(vec![self.render(
            f.id,
            Some(&partition.to_string()),
            f.tail,
        )])
    }

    /// Filters that select, whether the stream stored them before it was partitioned or
    /// in any partition since, the messages `filters` select: each filter, its
    /// [`unpartitioned_filters`](Self::unpartitioned_filters) and its
    /// [`partition_filters`](Self::partition_filters) with `*` for the partition, with
    /// every filter that lies within another one of the set left out, so that one
    /// consumer can hold them all. A filter that names a partition already (`*` or a
    /// number) is kept as it is, so the result is its own answer.
    ///
    /// The partition `*` also matches the `person` token of a week-1 subject stored
    /// before the stream was partitioned: `….*.*.created` selects the old week-1
    /// `….<id>.person.created` too. Filters that would then overlap without one holding
    /// the other are a [`SubjectErrorKind::OverlappingFilters`] error, like filters that
    /// overlap already.
    ///
    /// ```
    /// use person_events::subject::Subjects;
    /// let s = Subjects::default();
    /// let any = s
    ///     .any_partition_filters(&["person.events.*.location_assigned", "person.events.*.person.location_assigned"])
    ///     .unwrap();
    /// assert_eq!(
    ///     any,
    ///     [
    ///         "person.events.*.location_assigned",
    ///         "person.events.*.*.location_assigned",
    ///         "person.events.*.*.person.location_assigned",
    ///     ]
    /// );
    /// assert_eq!(s.any_partition_filters(&["person.events.>"]).unwrap(), ["person.events.>"]);
    /// assert_eq!(s.any_partition_filters(&any).unwrap(), any);
    /// ```
    pub fn any_partition_filters<F: AsRef<str>>(
        &self,
        filters: &[F],
    ) -> Result<Vec<String>, SubjectError> {
        let mut all = Vec::new();
        for filter in filters {
            let filter = filter.as_ref();
            let f = self.event_filter(filter)?;
            all.push(filter.to_owned());
            if f.partition.is_none() {
                all.extend(self.unpartitioned_filters(filter)?);
                all.push(self.render(f.id, Some("*"), f.tail));
            }
        }
        let out = outermost(all);
        for (i, a) in out.iter().enumerate() {
            if let Some(b) = out[i + 1..].iter().find(|b| subjects_overlap(a, b)) {
                return Err(SubjectError::pair(
                    SubjectErrorKind::OverlappingFilters,
                    "filters",
                    a,
                    b,
                ));
            }
        }
        Ok(out)
    }

    /// The filters, written for the unpartitioned subjects, that `filters` stand for:
    /// the inverse of [`any_partition_filters`](Self::any_partition_filters). A filter
    /// with `*` for the partition loses that token (`….*.*.created` is
    /// `….*.created`), every other event filter is kept, and one within another is
    /// left out. A filter naming one partition by number is a
    /// [`SubjectErrorKind::PartitionedFilter`] error.
    ///
    /// ```
    /// use person_events::subject::Subjects;
    /// let s = Subjects::default();
    /// let base = ["person.events.*.location_assigned", "person.events.*.person.location_assigned"];
    /// let any = s.any_partition_filters(&base).unwrap();
    /// assert_eq!(s.base_filters(&any).unwrap(), base);
    /// ```
    pub fn base_filters<F: AsRef<str>>(&self, filters: &[F]) -> Result<Vec<String>, SubjectError> {
        let mut all = Vec::new();
        for filter in filters {
            let filter = filter.as_ref();
            let f = self.event_filter(filter)?;
            match f.partition {
                None => all.push(filter.to_owned()),
                Some("*") => all.push(self.render(f.id, None, f.tail)),
                Some(_) => {
                    return Err(SubjectError::new(
                        SubjectErrorKind::PartitionedFilter,
                        "filter",
                        filter,
                    ));
                }
            }
        }
        Ok(outermost(all))
    }

    /// Reads an event filter: `E.>`, or `E.<id or *>` followed by `>`, `<type>` or
    /// `person.<type>`, each optionally after a partition token (digits or `*`).
    fn event_filter<'a>(&self, filter: &'a str) -> Result<EventFilter<'a>, SubjectError> {
        let not_filter = || SubjectError::new(SubjectErrorKind::NotAnEventFilter, "filter", filter);
        let rest = filter
            .strip_prefix(&*self.events)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(not_filter)?;
        let tokens: Vec<&str> = rest.split('.').collect();
        let (id, partition, tail) = match tokens.as_slice() {
            [">"] => ("*", None, Tail::All),
            [id, ">"] => (*id, None, Tail::All),
            [id, "person", ty] => (*id, None, Tail::Week1(ty)),
            [id, ty] => (*id, None, Tail::Current(ty)),
            [id, j, ">"] if is_partition_filter_token(j) => (*id, Some(*j), Tail::All),
            [id, j, "person", ty] if is_partition_filter_token(j) => {
                (*id, Some(*j), Tail::Week1(ty))
            }
            [id, j, ty] if is_partition_filter_token(j) => (*id, Some(*j), Tail::Current(ty)),
            _ => return Err(not_filter()),
        };
        if id != "*" && uuid::Uuid::try_parse(id).is_err() {
            return Err(SubjectError::new(
                SubjectErrorKind::InvalidPersonId,
                "filter",
                filter,
            ));
        }
        if let Tail::Current(ty) | Tail::Week1(ty) = tail
            && ty != "*"
            && validate_token("event_type", ty).is_err()
        {
            return Err(not_filter());
        }
        Ok(EventFilter {
            id,
            partition,
            tail,
        })
    }

    /// `E.<id>[.<partition>].<tail>`.
    fn render(&self, id: &str, partition: Option<&str>, tail: Tail<'_>) -> String {
        let mut s = format!("{}.{id}", self.events);
        if let Some(j) = partition {
            s.push('.');
            s.push_str(j);
        }
        match tail {
            Tail::All => s.push_str(".>"),
            Tail::Current(ty) => {
                s.push('.');
                s.push_str(ty);
            }
            Tail::Week1(ty) => {
                s.push_str(".person.");
                s.push_str(ty);
            }
        }
        s
    }
}

/// An event filter, read by [`Subjects::event_filter`].
struct EventFilter<'a> {
    /// A person token or `*`.
    id: &'a str,
    /// Digits or `*`, when the filter names a partition.
    partition: Option<&'a str>,
    tail: Tail<'a>,
}

/// What follows the person (and partition) token of an event filter.
#[derive(Clone, Copy)]
enum Tail<'a> {
    /// `>`: every event.
    All,
    /// `<type>` (or `*`): current subjects.
    Current(&'a str),
    /// `person.<type>` (or `person.*`): week-1 subjects.
    Week1(&'a str),
}

/// A partition token in a filter: digits or `*`.
fn is_partition_filter_token(token: &str) -> bool {
    token == "*" || is_partition_token(token)
}

/// `filters` without repeats and without any filter that lies within another one, in
/// their order.
fn outermost(filters: Vec<String>) -> Vec<String> {
    let mut unique: Vec<String> = Vec::with_capacity(filters.len());
    for f in filters {
        if !unique.contains(&f) {
            unique.push(f);
        }
    }
    let keep: Vec<bool> = unique
        .iter()
        .map(|f| !unique.iter().any(|g| g != f && subject_within(f, g)))
        .collect();
    unique
        .into_iter()
        .zip(keep)
        .filter_map(|(f, keep)| keep.then_some(f))
        .collect()
}

/// `true` when every subject `filter` matches is also matched by `pattern` (for a
/// subject without wildcards: when `pattern` matches it).
///
/// ```
/// use person_events::subject::subject_within;
/// assert!(subject_within("person.events.*.created", "person.events.>"));
/// assert!(!subject_within("person.events.>", "person.events.*.created"));
/// ```
pub fn subject_within(filter: &str, pattern: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let p: Vec<&str> = pattern.split('.').collect();
    for (i, pt) in p.iter().enumerate() {
        if *pt == ">" {
            return f.len() > i;
        }
        let Some(ft) = f.get(i) else { return false };
        match (*pt, *ft) {
            (_, ">") => return false,
            ("*", _) => {}
            (_, "*") => return false,
            (a, b) if a == b => {}
            _ => return false,
        }
    }
    f.len() == p.len()
}

/// `true` when some subject matches both patterns.
///
/// ```
/// use person_events::subject::subjects_overlap;
/// assert!(subjects_overlap("person.events.*.created", "person.events.0f8fad5b-d9cb-469f-a165-70867728950e.*"));
/// assert!(!subjects_overlap("person.events.*.created", "person.events.*.person.created"));
/// ```
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) if *x == "*" || *y == "*" || x == y => {}
            _ => return false,
        }
    }
    true
}

fn is_under(subject: &str, prefix: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Checks a subject prefix: dot-separated tokens, each valid, at most 256 bytes.
pub fn validate_prefix(prefix: &str) -> Result<(), SubjectError> {
    if prefix.len() > 2 * MAX_TOKEN_BYTES {
        return Err(SubjectError::new(
            SubjectErrorKind::TooLong,
            "subject prefix",
            prefix,
        ));
    }
    prefix
        .split('.')
        .try_for_each(|t| validate_token("subject prefix", t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_every_routing_character() {
        for bad in [
            "", "a.b", "*", ">", "a b", "a\tb", "a\nb", "\u{0}", "x\u{85}y",
        ] {
            assert!(validate_token("t", bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_token("t", &"x".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        for good in ["created", "name_updated", "projection-summary", "ünïcode"] {
            validate_token("t", good).unwrap();
        }
    }

    #[test]
    fn parses_current_and_week1_subjects() {
        let p = PersonId::new();
        let s = parse_event_subject(&event_subject(&p, "created").unwrap()).unwrap();
        assert_eq!(
            (s.person_id, s.event_type.as_str(), s.week1, s.partition),
            (p, "created", false, None)
        );
        for bad in [
            "person.events",
            "person.events.x.created",
            "person.other.0f8fad5b-d9cb-469f-a165-70867728950e.created",
            "person.events.0f8fad5b-d9cb-469f-a165-70867728950e.a.b.c",
        ] {
            assert!(parse_event_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixed_subjects_round_trip_and_stay_in_their_space() {
        let p = PersonId::new();
        let acme = Subjects::with_prefix("acme.prod").unwrap();
        let s = acme.event_subject(&p, "name_updated");
        assert_eq!(s, format!("acme.prod.person.events.{p}.name_updated"));
        let parsed = parse_event_subject(&s).unwrap();
        assert_eq!((parsed.person_id, parsed.week1), (p, false));
        let week1 = parse_event_subject(&format!("acme.person.events.{p}.person.created")).unwrap();
        assert!(week1.week1);
        assert!(parse_event_subject(&format!("a b.person.events.{p}.created")).is_err());
        assert_eq!(
            acme.dlq_subject("c", "x", "created").unwrap(),
            "acme.prod.person.dlq.c.x.created"
        );
        assert!(acme.contains("acme.prod.person.events.>"));
        assert!(!acme.contains("acme.production.person.events.>"));
        assert!(!acme.contains("person.events.>"));
        assert_eq!(acme.qualify("acme.prod.x"), "acme.prod.x");
        assert_eq!(acme.qualify("acme.production"), "acme.prod.acme.production");
        assert!(Subjects::default().contains("anything"));
        let r = acme.replay_subject("search", &p, "created").unwrap();
        assert_eq!(r, format!("acme.prod.person.replay.search.{p}.created"));
        let parsed = parse_replay_subject(&r).unwrap();
        assert_eq!((parsed.consumer.as_str(), parsed.person_id), ("search", p));
        assert_eq!(person_of_subject(&r), Some(p));
        assert!(
            parse_event_subject(&r).is_err(),
            "a replay is not an event of the history"
        );
        assert!(acme.replay_subject("a.b", &p, "created").is_err());
        assert_eq!(
            acme.replay_filter("search"),
            "acme.prod.person.replay.search.>"
        );
        for bad in ["", ".", "a..b", "a.*", "a.>", "a b", "x.", &"x".repeat(300)] {
            assert!(Subjects::with_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_partitioned_subjects_of_both_forms() {
        let p = PersonId::new();
        for (subject, week1, partition) in [
            (format!("person.events.{p}.0.created"), false, Some(0)),
            (
                format!("person.events.{p}.1023.person.created"),
                true,
                Some(1023),
            ),
            (
                format!("acme.prod.person.events.{p}.7.created"),
                false,
                Some(7),
            ),
            (
                format!("acme.person.events.{p}.12.person.created"),
                true,
                Some(12),
            ),
            (format!("person.events.{p}.person.created"), true, None),
            (format!("person.events.{p}.created"), false, None),
        ] {
            let s = parse_event_subject(&subject).unwrap();
            assert_eq!(
                (s.person_id, s.event_type.as_str(), s.week1, s.partition),
                (p, "created", week1, partition),
                "{subject}"
            );
            assert_eq!(person_of_subject(&subject), Some(p), "{subject}");
        }
        // A number where the event type stands is an event type, not a partition.
        let s = parse_event_subject(&format!("person.events.{p}.42")).unwrap();
        assert_eq!((s.event_type.as_str(), s.partition), ("42", None));
        for bad in [
            format!("person.events.{p}.x1.created"),
            format!("person.events.{p}.99999999999.created"),
            format!("person.events.{p}.-1.created"),
            format!("person.events.{p}.1.2.created"),
            format!("person.events.{p}.1.person.x.y"),
            "person.events.not-a-uuid.3.created".to_owned(),
        ] {
            assert!(parse_event_subject(&bad).is_err(), "{bad}");
        }
        // A prefix that looks like a partitioned event is never read as the person.
        let other = PersonId::new();
        let s = parse_event_subject(&format!(
            "person.events.{other}.3.person.events.{p}.created"
        ))
        .unwrap();
        assert_eq!((s.person_id, s.partition), (p, None));
        let s = parse_event_subject(&format!(
            "person.events.{other}.3.person.events.{p}.5.merged"
        ))
        .unwrap();
        assert_eq!((s.person_id, s.partition), (p, Some(5)));
    }

    #[test]
    fn the_partition_transform_keeps_the_person_and_inserts_the_partition() {
        assert_eq!(
            Subjects::default().partition_transform(4),
            (
                "person.events.*.>".to_owned(),
                "person.events.{{wildcard(1)}}.{{partition(4,1)}}.>".to_owned()
            )
        );
        assert_eq!(
            Subjects::with_prefix("acme.prod")
                .unwrap()
                .partition_transform(1024),
            (
                "acme.prod.person.events.*.>".to_owned(),
                "acme.prod.person.events.{{wildcard(1)}}.{{partition(1024,1)}}.>".to_owned()
            )
        );
    }

    #[test]
    fn derives_the_filters_of_each_era() {
        let s = Subjects::default();
        let p = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let un = |f: &str| s.unpartitioned_filters(f).unwrap();
        assert_eq!(
            un("person.events.>"),
            ["person.events.*.*", "person.events.*.person.*"]
        );
        assert_eq!(
            un(&format!("person.events.{p}.>")),
            [
                format!("person.events.{p}.*"),
                format!("person.events.{p}.person.*")
            ]
        );
        for itself in [
            format!("person.events.{p}.created"),
            format!("person.events.{p}.person.created"),
            format!("person.events.{p}.*"),
            "person.events.*.person.*".to_owned(),
        ] {
            assert_eq!(un(&itself), vec![itself]);
        }
        let part = |f: &str, j| s.partition_filters(f, j).unwrap();
        assert_eq!(part("person.events.>", 5), ["person.events.*.5.>"]);
        assert_eq!(
            part("person.events.*.location_assigned", 0),
            ["person.events.*.0.location_assigned"]
        );
        assert_eq!(
            part("person.events.*.person.location_assigned", 15),
            ["person.events.*.15.person.location_assigned"]
        );
        assert_eq!(
            part(&format!("person.events.{p}.*"), 2),
            [format!("person.events.{p}.2.*")]
        );

        let acme = Subjects::with_prefix("acme").unwrap();
        assert_eq!(
            acme.unpartitioned_filters("acme.person.events.>").unwrap(),
            ["acme.person.events.*.*", "acme.person.events.*.person.*"]
        );
        // Unprefixed filters are not this deployment's events.
        assert_eq!(
            acme.partition_filters("person.events.>", 1)
                .unwrap_err()
                .kind(),
            SubjectErrorKind::NotAnEventFilter
        );
    }

    #[test]
    fn rejects_what_is_no_event_filter_or_names_a_partition() {
        let s = Subjects::default();
        for (bad, kind) in [
            ("person.replay.search.>", SubjectErrorKind::NotAnEventFilter),
            ("person.events", SubjectErrorKind::NotAnEventFilter),
            ("person.events.*", SubjectErrorKind::NotAnEventFilter),
            ("person.events.*.a.b", SubjectErrorKind::NotAnEventFilter),
            (
                "person.events.*.person.>",
                SubjectErrorKind::NotAnEventFilter,
            ),
            ("person.events.*.1.2.3", SubjectErrorKind::NotAnEventFilter),
            ("person.events.x.created", SubjectErrorKind::InvalidPersonId),
            ("person.events.*.a b", SubjectErrorKind::NotAnEventFilter),
            (
                "person.events.*.3.created",
                SubjectErrorKind::PartitionedFilter,
            ),
            ("person.events.*.*.>", SubjectErrorKind::PartitionedFilter),
        ] {
            let e = s.unpartitioned_filters(bad).unwrap_err();
            assert_eq!(e.kind(), kind, "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
            assert_eq!(
                s.partition_filters(bad, 0).unwrap_err().kind(),
                kind,
                "{bad}"
            );
        }
        assert_eq!(
            s.base_filters(&["person.events.*.3.created"])
                .unwrap_err()
                .kind(),
            SubjectErrorKind::PartitionedFilter
        );
    }

    #[test]
    fn any_partition_filters_never_overlap_and_are_their_own_answer() {
        let s = Subjects::default();
        let p = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let cases: [(&[&str], &[&str]); 5] = [
            (&["person.events.>"], &["person.events.>"]),
            (
                &[
                    "person.events.*.location_assigned",
                    "person.events.*.person.location_assigned",
                ],
                &[
                    "person.events.*.location_assigned",
                    "person.events.*.*.location_assigned",
                    "person.events.*.*.person.location_assigned",
                ],
            ),
            (
                &["person.events.*.created"],
                &["person.events.*.created", "person.events.*.*.created"],
            ),
            (
                &["person.events.*.person.*"],
                &["person.events.*.person.*", "person.events.*.*.person.*"],
            ),
            (
                &["person.events.*.>", "person.events.>"],
                &["person.events.>"],
            ),
        ];
        for (input, want) in cases {
            let any = s.any_partition_filters(input).unwrap();
            assert_eq!(any, want, "{input:?}");
            for (i, a) in any.iter().enumerate() {
                for b in &any[i + 1..] {
                    assert!(!subjects_overlap(a, b), "{a} overlaps {b}");
                }
            }
            assert_eq!(s.any_partition_filters(&any).unwrap(), any, "idempotent");
            for f in input {
                assert!(
                    any.iter().any(|a| subject_within(f, a)),
                    "{f} is still selected"
                );
            }
        }
        let person = format!("person.events.{p}.>");
        assert_eq!(s.any_partition_filters(&[&person]).unwrap(), [person]);

        // A week-1 wildcard beside a current type overlaps once `*` stands for the
        // partition (it also matches `person`), without either holding the other.
        let e = s
            .any_partition_filters(&["person.events.*.created", "person.events.*.person.*"])
            .unwrap_err();
        assert_eq!(e.kind(), SubjectErrorKind::OverlappingFilters);
        assert!(
            e.to_string()
                .contains("`person.events.*.*.created` and `person.events.*.person.*`"),
            "{e}"
        );
        // Filters that overlap already are refused too.
        let e = s
            .any_partition_filters(&[
                format!("person.events.{p}.>"),
                "person.events.*.created".into(),
            ])
            .unwrap_err();
        assert_eq!(e.kind(), SubjectErrorKind::OverlappingFilters);
    }

    /// An event stored before or after partitioning, and what it was published as.
    #[derive(Debug, Clone)]
    struct Stored {
        /// `E.<id>.<type>` or `E.<id>.person.<type>`: what a publisher sent.
        published: String,
        /// What the stream stored: `published`, or with `.<j>` after the person.
        stored: String,
        partition: Option<u32>,
        week1: bool,
    }

    fn stored() -> impl Strategy<Value = Stored> {
        (
            0usize..3,
            prop::sample::select(vec!["created", "merged", "location_assigned"]),
            any::<bool>(),
            prop::option::of(0u32..16),
        )
            .prop_map(|(who, ty, week1, partition)| {
                let id = [
                    "0f8fad5b-d9cb-469f-a165-70867728950e",
                    "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                    "16fd2706-8baf-433b-82eb-8c7fada847da",
                ][who];
                let kind = if week1 { "person." } else { "" };
                let published = format!("person.events.{id}.{kind}{ty}");
                let stored = match partition {
                    Some(j) => format!("person.events.{id}.{j}.{kind}{ty}"),
                    None => published.clone(),
                };
                Stored {
                    published,
                    stored,
                    partition,
                    week1,
                }
            })
    }

    fn base_filter() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "person.events.>",
            "person.events.*.>",
            "person.events.0f8fad5b-d9cb-469f-a165-70867728950e.>",
            "person.events.*.created",
            "person.events.*.person.created",
            "person.events.*.*",
            "person.events.*.person.*",
            "person.events.7c9e6679-7425-40de-944b-e07fc1f90ae7.merged",
            "person.events.7c9e6679-7425-40de-944b-e07fc1f90ae7.person.*",
        ])
        .prop_map(str::to_owned)
    }

    fn matches(subject: &str, filters: &[String]) -> bool {
        filters.iter().any(|f| subject_within(subject, f))
    }

    proptest! {
        #[test]
        fn each_stored_event_is_selected_in_its_own_era_only(m in stored(), f in base_filter(), j in 0u32..16) {
            let s = Subjects::default();
            let wanted = subject_within(&m.published, &f);
            let parsed = parse_event_subject(&m.stored).unwrap();
            prop_assert_eq!((parsed.partition, parsed.week1), (m.partition, m.week1));
            let before = s.unpartitioned_filters(&f).unwrap();
            let within = s.partition_filters(&f, j).unwrap();
            match m.partition {
                None => {
                    prop_assert_eq!(matches(&m.stored, &before), wanted);
                    prop_assert!(!matches(&m.stored, &within));
                }
                Some(p) => {
                    prop_assert!(!matches(&m.stored, &before));
                    prop_assert_eq!(matches(&m.stored, &within), wanted && p == j);
                }
            }
            let any = s.any_partition_filters(&[&f]).unwrap();
            if m.partition.is_some() || !m.week1 {
                prop_assert_eq!(matches(&m.stored, &any), wanted);
            } else {
                // The documented widening: `*` as the partition matches `person`.
                prop_assert!(!wanted || matches(&m.stored, &any));
            }
            prop_assert_eq!(s.base_filters(&any).unwrap(), s.base_filters(&[&f]).unwrap());
        }

        #[test]
        fn partitioned_subjects_round_trip(
            ty in "[a-z_]{1,20}", week1 in any::<bool>(), partition in prop::option::of(any::<u32>()),
            prefix in prop::option::of("[a-z]{1,8}(\\.[a-z0-9]{1,8}){0,2}"),
        ) {
            let p = PersonId::new();
            let mut subject = prefix.map(|x| format!("{x}.")).unwrap_or_default();
            subject.push_str(&format!("person.events.{p}"));
            if let Some(j) = partition {
                subject.push_str(&format!(".{j}"));
            }
            if week1 {
                subject.push_str(".person");
            }
            subject.push_str(&format!(".{ty}"));
            let parsed = parse_event_subject(&subject).unwrap();
            prop_assert_eq!(parsed, EventSubject { person_id: p, event_type: ty, week1, partition });
        }
    }

    proptest! {
        #[test]
        fn built_subjects_never_hold_wildcards_or_extra_tokens(
            consumer in any::<String>(), person in any::<String>(), ty in any::<String>()
        ) {
            let p = PersonId::new();
            if let Ok(s) = event_subject(&p, &ty) {
                prop_assert_eq!(s.split('.').count(), 4);
                prop_assert!(!s.contains('*') && !s.contains('>') && !s.contains(char::is_whitespace));
                prop_assert_eq!(parse_event_subject(&s).unwrap().event_type, ty.clone());
            }
            if let Ok(s) = dlq_subject(&consumer, &person, &ty) {
                prop_assert_eq!(s.split('.').count(), 5);
                prop_assert!(!s.contains('*') && !s.contains('>') && !s.contains(char::is_whitespace));
                prop_assert!(s.split('.').all(|t| !t.is_empty()));
            }
        }
    }
}
