//! NDJSON input for `publish`: one event per line.
//!
//! A line is one of:
//!
//! - a V2 envelope (`{"schema_version": 2, "event_id": ..., "event": ...}`), or a week-1
//!   envelope (no `schema_version`), which is upcast and published as a current
//!   envelope;
//! - a line printed by `tail --json` (`{"envelope": {...}, ...}`): its envelope;
//! - a bare V2 event (`{"event_type": "Created", "data": {...}}`), wrapped in a new
//!   envelope with a fresh event id and `sequence` 0;
//! - a raw V1 event (`{"PersonCreated": {...}}`), published byte for byte, as the old
//!   system stored it, with its deterministic legacy event id as dedup id.
//!
//! Blank lines are skipped.

use person_events::{EventId, PersonEventV2, StreamingEventEnvelope, subject};
use person_legacy_compat::{Decoder, Origin, RawMessage};
use serde_json::Value;

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A current envelope, published through the publisher.
    Envelope(StreamingEventEnvelope),
    /// A raw V1 event, published as is.
    LegacyV1 {
        /// The subject it goes to, in the default subject space:
        /// `person.events.<person>.<type>` (the publisher moves it under the
        /// configured subject prefix).
        subject: String,
        /// Its legacy event id (UUID v5 over the event), used as `Nats-Msg-Id`.
        event_id: EventId,
        /// The line's bytes.
        payload: Vec<u8>,
        /// The event as it reads upcast.
        upcast: StreamingEventEnvelope,
    },
}

impl Item {
    /// The envelope (for a V1 event, its upcast form).
    pub fn envelope(&self) -> &StreamingEventEnvelope {
        match self {
            Item::Envelope(e) => e,
            Item::LegacyV1 { upcast, .. } => upcast,
        }
    }
}

/// A parsed line and its number (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The line number, from 1.
    pub number: usize,
    /// The event.
    pub item: Item,
}

/// A line that cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {number}: {message}")]
pub struct LineError {
    /// The line number, from 1.
    pub number: usize,
    /// Why.
    pub message: String,
}

/// Parses one line; `Ok(None)` for a blank line.
pub fn parse_line(number: usize, text: &str) -> Result<Option<Item>, LineError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let err = |message: String| LineError { number, message };
    let value: Value =
        serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(err("not a JSON object".into()));
    };
    if let Some(inner) = object.get("envelope") {
        let bytes = serde_json::to_vec(inner).map_err(|e| err(e.to_string()))?;
        return decode(number, &bytes).map(Some);
    }
    if object.contains_key("event_type") && object.contains_key("data") {
        let event: PersonEventV2 =
            serde_json::from_value(value).map_err(|e| err(format!("not a V2 event: {e}")))?;
        let person = event.aggregate_id();
        return Ok(Some(Item::Envelope(StreamingEventEnvelope::new(
            person, 0, event,
        ))));
    }
    decode(number, text.as_bytes()).map(Some)
}

fn decode(number: usize, bytes: &[u8]) -> Result<Item, LineError> {
    let err = |message: String| LineError { number, message };
    let decoded = Decoder::default()
        .decode(&RawMessage::from_payload(bytes))
        .map_err(|e| err(format!("not an event: {e}")))?;
    let mut envelope = decoded.envelope;
    envelope.stream_position = None;
    envelope
        .validate()
        .map_err(|e| err(format!("inconsistent envelope: {e}")))?;
    match decoded.origin {
        Origin::LegacyV1 => {
            let subject =
                subject::event_subject(&envelope.aggregate_id, envelope.event.event_type())
                    .map_err(|e| err(e.to_string()))?;
            Ok(Item::LegacyV1 {
                subject,
                event_id: envelope.event_id,
                payload: bytes.to_vec(),
                upcast: envelope,
            })
        }
        _ => Ok(Item::Envelope(envelope)),
    }
}

/// Parses NDJSON text: the events, and the lines that are not events.
pub fn parse_ndjson(text: &str) -> (Vec<Line>, Vec<LineError>) {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(i + 1, line) {
            Ok(Some(item)) => lines.push(Line {
                number: i + 1,
                item,
            }),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (lines, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use person_events::{PersonId, codec};
    use person_metadata::EventMetadata;

    fn envelope(p: PersonId) -> StreamingEventEnvelope {
        StreamingEventEnvelope::new(
            p,
            1,
            PersonEventV2::Activated {
                person_id: p,
                reason: "ok".into(),
                metadata: EventMetadata::new(),
            },
        )
    }

    #[test]
    fn every_shape_and_a_bad_line() {
        let p = PersonId::new();
        let env = envelope(p);
        let current = String::from_utf8(codec::encode(&env).unwrap()).unwrap();
        let wrapped = format!(r#"{{"stream_sequence": 4, "envelope": {current}}}"#);
        let bare = serde_json::to_string(&env.event).unwrap();
        let v1 = format!(
            r#"{{"PersonDeactivated": {{"person_id": {{"id": "{p}"}}, "reason": "left", "deactivated_at": "2025-07-20T17:00:00Z"}}}}"#
        );
        let text = format!("{current}\n\n{wrapped}\n{{\"oops\n{bare}\n{v1}\n[1]\n");
        let (lines, errors) = parse_ndjson(&text);
        assert_eq!(
            lines.iter().map(|l| l.number).collect::<Vec<_>>(),
            vec![1, 3, 5, 6]
        );
        assert_eq!(lines[0].item, Item::Envelope(env.clone()));
        assert_eq!(lines[1].item, Item::Envelope(env.clone()));
        let Item::Envelope(from_bare) = &lines[2].item else {
            panic!("bare event")
        };
        assert_eq!(from_bare.event, env.event);
        assert_ne!(from_bare.event_id, env.event_id);
        let Item::LegacyV1 {
            subject,
            payload,
            upcast,
            ..
        } = &lines[3].item
        else {
            panic!("v1")
        };
        assert_eq!(subject, &format!("person.events.{p}.suspended"));
        assert_eq!(payload, v1.as_bytes());
        assert_eq!(upcast.aggregate_id, p);
        assert_eq!(
            errors.iter().map(|e| e.number).collect::<Vec<_>>(),
            vec![4, 7]
        );
        assert!(errors[0].to_string().starts_with("line 4: not valid JSON"));
    }

    #[test]
    fn an_envelope_about_another_person_is_rejected() {
        let env = envelope(PersonId::new());
        let mut value = serde_json::to_value(&env).unwrap();
        value["aggregate_id"] = serde_json::json!({"id": PersonId::new().to_string()});
        let e = parse_line(9, &value.to_string()).unwrap_err();
        assert_eq!(e.number, 9);
        assert!(e.message.contains("is about person"), "{e}");
    }
}
