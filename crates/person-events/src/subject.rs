//! NATS subjects for Person events and dead letters.
//!
//! - events: `person.events.<person_id>.<event_type>`
//! - week-1 events (read only): `person.events.<person_id>.person.<event_type>`
//! - dead letters: `person.dlq.<consumer>.<person_id>.<event_type>`
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
    let mut s = String::with_capacity(EVENTS_PREFIX.len() + 38 + event_type.len());
    s.push_str(EVENTS_PREFIX);
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

/// Parses `person.events.<id>.<type>` or the week-1 `person.events.<id>.person.<type>`.
///
/// ```
/// use person_events::subject::parse_event_subject;
/// let s = parse_event_subject("person.events.0f8fad5b-d9cb-469f-a165-70867728950e.person.created").unwrap();
/// assert!(s.week1);
/// assert_eq!(s.event_type, "created");
/// ```
pub fn parse_event_subject(subject: &str) -> Result<EventSubject, SubjectError> {
    let not_event = || SubjectError::new(SubjectErrorKind::NotAnEventSubject, "subject", subject);
    let rest = subject
        .strip_prefix(EVENTS_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(not_event)?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let (person, event_type, week1) = match tokens.as_slice() {
        [person, event_type] => (*person, *event_type, false),
        [person, "person", event_type] => (*person, *event_type, true),
        _ => return Err(not_event()),
    };
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
