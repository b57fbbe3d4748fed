//! NATS subjects for Person events and dead letters.
//!
//! - events: `person.events.<person_id>.<event_type>`
//! - week-1 events (read only): `person.events.<person_id>.person.<event_type>`
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
    /// `true` for the week-1 form `person.events.<id>.person.<type>`.
    pub week1: bool,
}

/// Parses `person.events.<id>.<type>` or the week-1 `person.events.<id>.person.<type>`,
/// under any [subject prefix](Subjects::with_prefix) (`acme.person.events.<id>.<type>`).
/// The tokens are read from the end, so a prefix cannot be mistaken for a person.
///
/// ```
/// use person_events::subject::parse_event_subject;
/// let s = parse_event_subject("person.events.0f8fad5b-d9cb-469f-a165-70867728950e.person.created").unwrap();
/// assert!(s.week1);
/// assert_eq!(s.event_type, "created");
/// let s = parse_event_subject("acme.person.events.0f8fad5b-d9cb-469f-a165-70867728950e.created").unwrap();
/// assert!(!s.week1);
/// ```
pub fn parse_event_subject(subject: &str) -> Result<EventSubject, SubjectError> {
    let not_event = || SubjectError::new(SubjectErrorKind::NotAnEventSubject, "subject", subject);
    let tokens: Vec<&str> = subject.split('.').collect();
    let (root, person, event_type, week1) = match tokens.as_slice() {
        [root @ .., "person", "events", person, "person", event_type] => {
            (root, *person, *event_type, true)
        }
        [root @ .., "person", "events", person, event_type] => (root, *person, *event_type, false),
        _ => return Err(not_event()),
    };
    for token in root {
        validate_token("subject prefix", token)?;
    }
    validate_token("event_type", event_type)?;
    let person_id = uuid::Uuid::try_parse(person)
        .map(PersonId::from_uuid)
        .map_err(|_| SubjectError::new(SubjectErrorKind::InvalidPersonId, "person_id", person))?;
    Ok(EventSubject {
        person_id,
        event_type: event_type.to_owned(),
        week1,
    })
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
/// or week-1) or a replay subject, under any prefix.
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
            (s.person_id, s.event_type.as_str(), s.week1),
            (p, "created", false)
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
