//! One decoder for every stored shape: current envelopes, week-1 envelopes, raw V1.

use std::sync::OnceLock;

use person_events::StreamingEventEnvelope;
use person_events::codec::{self, DecodeError, DecodeErrorKind, Shape};
use person_events::subject::person_of_subject;
use serde_json::Value;

use crate::chain::UpcasterChain;
use crate::upcast::upcast_owned;
use crate::v1::{PersonEvent, VARIANTS};

/// A message as read from the stream: what the decoder needs of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawMessage<'a> {
    /// The subject it was stored on, when known; checked against the envelope's person.
    pub subject: Option<&'a str>,
    /// The body.
    pub payload: &'a [u8],
    /// The `Content-Type` header, when present. Anything but JSON is rejected.
    pub content_type: Option<&'a str>,
    /// The JetStream stream sequence, when known; becomes `stream_position`.
    pub stream_sequence: Option<u64>,
}

impl<'a> RawMessage<'a> {
    /// A message with only a body.
    pub fn from_payload(payload: &'a [u8]) -> Self {
        Self {
            payload,
            ..Self::default()
        }
    }
}

/// Which stored shape a message had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A current envelope.
    Current,
    /// An envelope of an older schema version (the week-1 envelope is version 1),
    /// upcast through the chain.
    OlderEnvelope {
        /// The version it was stored with.
        schema_version: u32,
    },
    /// A raw V1 `PersonEvent`, upcast.
    LegacyV1,
}

impl Origin {
    /// `true` unless the message was a current envelope.
    pub fn is_upcast(self) -> bool {
        self != Origin::Current
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The envelope, at the current schema version.
    pub envelope: StreamingEventEnvelope,
    /// What shape it was stored in.
    pub origin: Origin,
}

/// Decodes messages of every stored shape to current envelopes.
///
/// ```
/// use person_legacy_compat::{Decoder, Origin, RawMessage};
/// let v1 = br#"{"PersonDeactivated": {"person_id": {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7"},
///     "reason": "left", "deactivated_at": "2025-07-20T17:00:00Z"}}"#;
/// let decoded = Decoder::default().decode(&RawMessage::from_payload(v1)).unwrap();
/// assert_eq!(decoded.origin, Origin::LegacyV1);
/// assert_eq!(decoded.envelope.event.event_type(), "suspended");
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    chain: UpcasterChain,
}

impl Decoder {
    /// A decoder with a custom upcaster chain.
    pub fn with_chain(chain: UpcasterChain) -> Self {
        Self { chain }
    }

    /// Decodes one message. Never panics, whatever the bytes.
    pub fn decode(&self, msg: &RawMessage<'_>) -> Result<Decoded, DecodeError> {
        if let Some(ct) = msg.content_type {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(DecodeError::new(
                    DecodeErrorKind::UnsupportedContentType,
                    format!(
                        "Content-Type `{}` is not application/json",
                        ct.escape_debug()
                    ),
                ));
            }
        }
        let mut decoded = self.decode_payload(msg.payload)?;
        if let Some(seq) = msg.stream_sequence {
            decoded.envelope.stream_position = Some(seq);
        }
        if let Some(subject) = msg.subject {
            check_subject(subject, &decoded.envelope)?;
        }
        check_consistent(&decoded.envelope)?;
        Ok(decoded)
    }

    fn decode_payload(&self, payload: &[u8]) -> Result<Decoded, DecodeError> {
        match codec::sniff(payload) {
            Shape::Envelope {
                schema_version: Some(v),
            } if v == self.chain.target_version() => Ok(Decoded {
                envelope: codec::decode(payload)?,
                origin: Origin::Current,
            }),
            Shape::Envelope { .. } => self.decode_value(parse(payload)?),
            Shape::Other => match codec::first_key(payload) {
                Some((key, _)) if is_v1_variant(key) => {
                    let v1: PersonEvent = serde_json::from_str(codec::as_utf8(payload)?)
                        .map_err(|e| DecodeError::from_json(&e, None))?;
                    Ok(legacy(v1))
                }
                _ => self.decode_value(parse(payload)?),
            },
        }
    }

    fn decode_value(&self, mut value: Value) -> Result<Decoded, DecodeError> {
        let Some(obj) = value.as_object() else {
            return Err(DecodeError::new(
                DecodeErrorKind::UnrecognizedShape,
                "the payload is not a JSON object",
            ));
        };
        if obj.contains_key("event_id") || obj.contains_key("schema_version") {
            let version = match obj.get("schema_version") {
                None => 1,
                Some(v) => v
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| {
                        DecodeError::new(
                            DecodeErrorKind::InvalidField,
                            format!("schema_version {v} is not a whole number"),
                        )
                    })?,
            };
            if version != self.chain.target_version() {
                let event = value
                    .get_mut("event")
                    .ok_or_else(|| DecodeError::new(DecodeErrorKind::MissingField, "`event`"))?;
                self.chain.upcast(event, version)?;
            }
            let envelope = codec::decode_value(value)?;
            let origin = if version == self.chain.target_version() {
                Origin::Current
            } else {
                Origin::OlderEnvelope {
                    schema_version: version,
                }
            };
            return Ok(Decoded { envelope, origin });
        }
        if obj.len() == 1 {
            let (key, _) = obj.iter().next().expect("one entry");
            if !is_v1_variant(key.as_bytes()) {
                return Err(DecodeError::new(
                    DecodeErrorKind::UnknownEventType,
                    format!(
                        "`{}` is neither an envelope nor a V1 PersonEvent variant",
                        key.escape_debug()
                    ),
                ));
            }
            let v1: PersonEvent =
                serde_json::from_value(value).map_err(|e| DecodeError::from_json(&e, None))?;
            return Ok(legacy(v1));
        }
        Err(DecodeError::new(
            DecodeErrorKind::UnrecognizedShape,
            "neither an event envelope (event_id, event) nor a V1 PersonEvent",
        ))
    }
}

/// Decodes one message with the default chain. See [`Decoder::decode`].
pub fn decode_message(msg: &RawMessage<'_>) -> Result<Decoded, DecodeError> {
    static DEFAULT: OnceLock<Decoder> = OnceLock::new();
    DEFAULT.get_or_init(Decoder::default).decode(msg)
}

fn legacy(v1: PersonEvent) -> Decoded {
    Decoded {
        envelope: upcast_owned(v1),
        origin: Origin::LegacyV1,
    }
}

fn parse(payload: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(payload).map_err(|e| DecodeError::from_json(&e, None))
}

fn is_v1_variant(key: &[u8]) -> bool {
    VARIANTS.iter().any(|v| v.as_bytes() == key)
}

/// An envelope whose event is about another person than its `aggregate_id` would be
/// handed to the wrong person's lane; metadata of a major version this build does not
/// know could mean anything. Reject both.
fn check_consistent(envelope: &StreamingEventEnvelope) -> Result<(), DecodeError> {
    if let Err(m) = envelope.validate() {
        return Err(DecodeError::new(
            DecodeErrorKind::InvalidField,
            format!(
                "the envelope's aggregate_id is {} but its event is about person {}",
                m.envelope, m.event
            ),
        ));
    }
    let version = &envelope.metadata().version;
    let known = person_metadata::METADATA_VERSION
        .split('.')
        .next()
        .unwrap_or_default();
    if version.split('.').next() != Some(known) {
        return Err(DecodeError::new(
            DecodeErrorKind::UnsupportedSchemaVersion,
            format!(
                "metadata version `{}` is not one this build reads (it reads {known}.x)",
                version.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// An event stored on another person's subject would break per-person ordering and
/// optimistic concurrency: reject it.
fn check_subject(subject: &str, envelope: &StreamingEventEnvelope) -> Result<(), DecodeError> {
    if let Some(person) = person_of_subject(subject)
        && person != envelope.aggregate_id
    {
        return Err(DecodeError::new(
            DecodeErrorKind::InvalidField,
            format!(
                "stored on subject `{subject}` but the event is about person {}",
                envelope.aggregate_id
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use person_events::codec::{self, SCHEMA_VERSION};

    use super::*;

    /// The payload of the first week-1 envelope of the fixtures (a `Created`), as text.
    fn week1() -> String {
        let line = include_str!("../tests/fixtures/week1/week1-v2-envelopes.ndjson")
            .lines()
            .next()
            .expect("a fixture line");
        let value: Value = serde_json::from_str(line).expect("fixture JSON");
        assert_eq!(value["payload"]["event"]["event_type"], "Created");
        value["payload"].to_string()
    }

    /// The same envelope with `schema_version` as its first key.
    fn versioned(version: u32) -> String {
        format!("{{\"schema_version\":{version},{}", &week1()[1..])
    }

    #[test]
    fn only_a_current_envelope_is_not_upcast() {
        assert!(!Origin::Current.is_upcast());
        assert!(Origin::LegacyV1.is_upcast());
        assert!(Origin::OlderEnvelope { schema_version: 1 }.is_upcast());
    }

    #[test]
    fn an_envelope_declaring_an_older_version_is_upcast_through_the_chain() {
        let plain = decode_message(&RawMessage::from_payload(week1().as_bytes())).unwrap();
        let declared = versioned(1);
        let decoded = decode_message(&RawMessage::from_payload(declared.as_bytes())).unwrap();
        assert_eq!(decoded.origin, Origin::OlderEnvelope { schema_version: 1 });
        assert_eq!(decoded.envelope, plain.envelope);
        // Encoded now, it is current, and decodes to itself.
        let current = codec::encode(&plain.envelope).unwrap();
        assert!(current.starts_with(format!("{{\"schema_version\":{SCHEMA_VERSION}").as_bytes()));
        let again = decode_message(&RawMessage::from_payload(&current)).unwrap();
        assert_eq!(again.origin, Origin::Current);
        assert_eq!(again.envelope, plain.envelope);
    }

    #[test]
    fn a_decoder_uses_the_chain_it_is_given() {
        let mut chain = UpcasterChain::new(SCHEMA_VERSION);
        chain.register("Created", 1, |_| Err("refused".into()));
        let decoder = Decoder::with_chain(chain);
        let err = decoder
            .decode(&RawMessage::from_payload(week1().as_bytes()))
            .unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::InvalidField);
        assert!(err.detail().contains("refused"), "{}", err.detail());
    }

    #[test]
    fn errors_in_current_envelopes_and_v1_events_give_their_position() {
        let current = codec::encode(
            &decode_message(&RawMessage::from_payload(week1().as_bytes()))
                .unwrap()
                .envelope,
        )
        .unwrap();
        let bad = String::from_utf8(current).unwrap().replacen(
            "\"sequence\":1",
            "\"sequence\":\"one\"",
            1,
        );
        let v1 = r#"{"PersonCreated": {"person_id": 5}}"#;
        for payload in [bad.as_str(), v1] {
            let err = decode_message(&RawMessage::from_payload(payload.as_bytes())).unwrap_err();
            assert!(err.detail().contains("line 1 column"), "{}", err.detail());
        }
    }
}
