//! Filters: time arguments and the `tail` event filter.

use chrono::{DateTime, Duration, Utc};
use person_events::{EVENT_TYPES, PersonId, StreamingEventEnvelope, subject};

/// Parses a time argument: RFC 3339 (`2025-07-15T12:30:00Z`) or an age before `now`
/// (`90s`, `15m`, `2h`, `7d`).
///
/// ```
/// use chrono::{TimeZone, Utc};
/// let now = Utc.with_ymd_and_hms(2025, 7, 15, 12, 0, 0).unwrap();
/// assert_eq!(person_cli::filter::parse_time("2h", now).unwrap(), Utc.with_ymd_and_hms(2025, 7, 15, 10, 0, 0).unwrap());
/// assert!(person_cli::filter::parse_time("yesterday", now).is_err());
/// ```
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || {
        format!(
            "`{text}` is not a time: use RFC 3339 (2025-07-15T12:30:00Z) or an age such as 90s, 15m, 2h, 7d"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let age = match unit {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        _ => None,
    }
    .ok_or_else(bad)?;
    now.checked_sub_signed(age).ok_or_else(bad)
}

/// Resolves an event type given as a token (`name_updated`) or a variant name
/// (`NameUpdated`), case-insensitively, to its token.
///
/// ```
/// assert_eq!(person_cli::filter::event_type("NameUpdated").unwrap(), "name_updated");
/// assert_eq!(person_cli::filter::event_type("created").unwrap(), "created");
/// assert!(person_cli::filter::event_type("nope").is_err());
/// ```
pub fn event_type(text: &str) -> Result<&'static str, String> {
    EVENT_TYPES
        .iter()
        .find(|(token, variant)| {
            token.eq_ignore_ascii_case(text) || variant.eq_ignore_ascii_case(text)
        })
        .map(|(token, _)| *token)
        .ok_or_else(|| {
            format!(
                "`{text}` is not an event type; known: {}",
                EVENT_TYPES
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Which events `tail` shows. Empty shows all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this person's events.
    pub person: Option<PersonId>,
    /// Only events of this correlation id.
    pub correlation: Option<String>,
    /// Only events of this type (a token, see [`event_type`]).
    pub event_type: Option<&'static str>,
}

impl EventFilter {
    /// The subject to read in `subjects`: the person's subjects, or every event.
    pub fn subject(&self, subjects: &subject::Subjects) -> String {
        match &self.person {
            Some(p) => subjects.person_filter(p),
            None => subjects.events_wildcard(),
        }
    }

    /// `true` when only the subject narrows the events (no check on decoded events).
    pub fn is_subject_only(&self) -> bool {
        self.correlation.is_none() && self.event_type.is_none()
    }

    /// `true` when `envelope` passes every filter given.
    pub fn matches(&self, envelope: &StreamingEventEnvelope) -> bool {
        self.person.is_none_or(|p| envelope.aggregate_id == p)
            && self
                .correlation
                .as_deref()
                .is_none_or(|c| envelope.metadata().correlation_id.to_string() == c)
            && self
                .event_type
                .is_none_or(|t| envelope.event.event_type() == t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use person_events::PersonEventV2;
    use person_metadata::EventMetadata;

    #[test]
    fn times() {
        let now = Utc.with_ymd_and_hms(2025, 7, 15, 12, 0, 0).unwrap();
        assert_eq!(
            parse_time("90s", now).unwrap(),
            Utc.with_ymd_and_hms(2025, 7, 15, 11, 58, 30).unwrap()
        );
        assert_eq!(
            parse_time("7d", now).unwrap(),
            Utc.with_ymd_and_hms(2025, 7, 8, 12, 0, 0).unwrap()
        );
        assert_eq!(parse_time("2025-07-15T14:00:00+02:00", now).unwrap(), now);
        for bad in ["", "h", "5w", "-5m", "99999999999999999999d"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_filter() {
        let p = PersonId::new();
        let meta = EventMetadata::new();
        let corr = meta.correlation_id.to_string();
        let env = StreamingEventEnvelope::new(
            p,
            1,
            PersonEventV2::Activated {
                person_id: p,
                reason: "x".into(),
                metadata: meta,
            },
        );
        assert!(EventFilter::default().matches(&env));
        let by_type = EventFilter {
            event_type: Some("activated"),
            ..Default::default()
        };
        assert!(by_type.matches(&env));
        assert!(!by_type.is_subject_only());
        let other_type = EventFilter {
            event_type: Some("created"),
            ..Default::default()
        };
        assert!(!other_type.matches(&env));
        let by_corr = EventFilter {
            correlation: Some(corr),
            person: Some(p),
            ..Default::default()
        };
        assert!(by_corr.matches(&env));
        assert_eq!(
            by_corr.subject(&Default::default()),
            format!("person.events.{p}.>")
        );
        let other_person = EventFilter {
            person: Some(PersonId::new()),
            ..Default::default()
        };
        assert!(!other_person.matches(&env));
        assert!(other_person.is_subject_only());
    }
}
