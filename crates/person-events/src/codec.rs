//! The JSON codec for [`StreamingEventEnvelope`].
//!
//! Wire form (see `docs/wire-format.md`): one JSON object whose first key is
//! `schema_version`, then `event_id`, `aggregate_id` (`{"id": ..}`), `sequence`,
//! `event` (`{"event_type": "<Variant>", "data": {..}}`) and `stream_position`.
//!
//! [`decode`] reads only the current schema version. `person-legacy-compat` reads every
//! older shape (week-1 envelopes, raw V1 events) and upcasts it.
//!
//! ```
//! use person_events::{codec, PersonEventV2, PersonId, StreamingEventEnvelope};
//! use person_metadata::EventMetadata;
//!
//! let id = PersonId::new();
//! let env = StreamingEventEnvelope::new(id, 1, PersonEventV2::Archived {
//!     person_id: id, reason: "gdpr".into(), metadata: EventMetadata::new(),
//! });
//! let bytes = codec::encode(&env).unwrap();
//! assert_eq!(codec::decode(&bytes).unwrap(), env);
//! assert_eq!(codec::decode(b"{").unwrap_err().kind(), codec::DecodeErrorKind::MalformedJson);
//! ```

use std::fmt;

use crate::StreamingEventEnvelope;
use crate::envelope::WireOwned;

/// The envelope schema version this build writes and reads natively.
pub const SCHEMA_VERSION: u32 = 2;

/// Encoding failed. With the types of this crate it cannot, short of running out of
/// memory; the error exists so callers never have to unwrap.
#[derive(Debug, thiserror::Error)]
#[error("could not encode event envelope: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// The envelope as JSON bytes (the buffer starts at 1 KiB: a typical envelope fits
/// without regrowing).
pub fn encode(envelope: &StreamingEventEnvelope) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(1024);
    encode_into(envelope, &mut buf)?;
    Ok(buf)
}

/// Writes the envelope's JSON to `out`, for example appends it to a buffer a publisher
/// re-uses (a `Vec<u8>`, or a `bytes::BytesMut` through its `writer()`).
pub fn encode_into(
    envelope: &StreamingEventEnvelope,
    out: impl std::io::Write,
) -> Result<(), EncodeError> {
    serde_json::to_writer(out, envelope)?;
    Ok(())
}

/// Decodes an envelope of the current schema version.
pub fn decode(bytes: &[u8]) -> Result<StreamingEventEnvelope, DecodeError> {
    match sniff(bytes) {
        Shape::Envelope {
            schema_version: Some(SCHEMA_VERSION),
        } => {}
        Shape::Envelope { schema_version } => {
            return Err(DecodeError::unsupported_version(schema_version));
        }
        // Keys in another order (a hand-written or re-serialized envelope): read the
        // version from the parsed object.
        Shape::Other => {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| DecodeError::from_json(&e, None))?;
            let version = value
                .get("schema_version")
                .map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()));
            return match version {
                Some(Some(SCHEMA_VERSION)) => decode_value(value),
                Some(Some(v)) => Err(DecodeError::unsupported_version(Some(v))),
                Some(None) => Err(DecodeError::new(
                    DecodeErrorKind::InvalidField,
                    "schema_version must be a whole number",
                )),
                None if value.get("event_id").is_some() => {
                    Err(DecodeError::unsupported_version(None))
                }
                None => Err(DecodeError::new(
                    DecodeErrorKind::UnrecognizedShape,
                    "not an event envelope (no schema_version or event_id)",
                )),
            };
        }
    }
    // One UTF-8 check of the whole body, then the `&str` reader, which does not
    // re-validate every string it meets.
    let text = as_utf8(bytes)?;
    let wire: WireOwned = serde_json::from_str(text).map_err(|e| diagnose(&e, bytes))?;
    Ok(wire.into())
}

/// Decodes an envelope from an already parsed JSON value, whatever its schema version
/// field says (the caller has upcast it to the current shape).
pub fn decode_value(value: serde_json::Value) -> Result<StreamingEventEnvelope, DecodeError> {
    let for_diagnosis = value.get("event").cloned();
    let wire: WireOwned = serde_json::from_value(value).map_err(|e| {
        let wrapped = for_diagnosis.map(|event| serde_json::json!({ "event": event }));
        DecodeError::from_json(&e, wrapped.as_ref())
    })?;
    Ok(wire.into())
}

/// The body as text, or a malformed-JSON error (JSON is UTF-8).
pub fn as_utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| {
        DecodeError::new(
            DecodeErrorKind::MalformedJson,
            format!("the body is not UTF-8 ({e})"),
        )
    })
}

fn diagnose(err: &serde_json::Error, bytes: &[u8]) -> DecodeError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
    DecodeError::from_json(err, parsed.as_ref())
}

/// What the first bytes of a payload say about it, without parsing it all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An envelope: its first key is `schema_version` (with this value) or `event_id`
    /// (a week-1 envelope, `schema_version: None`).
    Envelope {
        /// The declared schema version; `None` when the field is absent.
        schema_version: Option<u32>,
    },
    /// Anything else: another first key, or not a JSON object.
    Other,
}

/// Looks at the first key of a JSON object. Never fails; never reads past the first
/// value.
///
/// ```
/// use person_events::codec::{sniff, Shape};
/// assert_eq!(sniff(br#"{"schema_version": 2, "event_id": "x"}"#), Shape::Envelope { schema_version: Some(2) });
/// assert_eq!(sniff(br#" {"event_id": "x"}"#), Shape::Envelope { schema_version: None });
/// assert_eq!(sniff(br#"{"PersonCreated": {}}"#), Shape::Other);
/// ```
pub fn sniff(bytes: &[u8]) -> Shape {
    match first_key(bytes) {
        Some((b"schema_version", rest)) => {
            let rest = skip_ws(rest);
            let Some(rest) = rest.strip_prefix(b":") else {
                return Shape::Other;
            };
            let rest = skip_ws(rest);
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return Shape::Other;
            }
            let mut v: u32 = 0;
            for &d in &rest[..digits] {
                v = v * 10 + u32::from(d - b'0');
            }
            Shape::Envelope {
                schema_version: Some(v),
            }
        }
        Some((b"event_id", _)) => Shape::Envelope {
            schema_version: None,
        },
        _ => Shape::Other,
    }
}

/// The first key of a JSON object (if it has no escapes) and the bytes after it.
pub fn first_key(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = skip_ws(bytes).strip_prefix(b"{")?;
    let rest = skip_ws(rest).strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[end] == b'\\' {
        return None;
    }
    Some((&rest[..end], &rest[end + 1..]))
}

fn skip_ws(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    &bytes[n..]
}

/// The kind of a [`DecodeError`], to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Not valid JSON (or truncated).
    MalformedJson,
    /// Valid JSON, but the event type (or legacy variant) is unknown.
    UnknownEventType,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an invalid value.
    InvalidField,
    /// The schema version is not one this build can read.
    UnsupportedSchemaVersion,
    /// Valid JSON that is neither an envelope nor a legacy event.
    UnrecognizedShape,
    /// The message says its body is not JSON (`Content-Type`).
    UnsupportedContentType,
}

/// A payload could not be decoded. Never a panic, whatever the input bytes.
///
/// ```
/// use person_events::codec::{decode, DecodeErrorKind};
/// let err = decode(br#"{"schema_version": 9, "event_id": "x"}"#).unwrap_err();
/// assert_eq!(err.kind(), DecodeErrorKind::UnsupportedSchemaVersion);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    detail: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            DecodeErrorKind::MalformedJson => "malformed JSON",
            DecodeErrorKind::UnknownEventType => "unknown event type",
            DecodeErrorKind::MissingField => "missing field",
            DecodeErrorKind::InvalidField => "invalid field",
            DecodeErrorKind::UnsupportedSchemaVersion => "unsupported schema version",
            DecodeErrorKind::UnrecognizedShape => "unrecognized payload",
            DecodeErrorKind::UnsupportedContentType => "unsupported content type",
        };
        write!(f, "{what}: {}", self.detail)
    }
}

impl DecodeError {
    /// A decode error of `kind` with a human-readable detail.
    pub fn new(kind: DecodeErrorKind, detail: impl Into<String>) -> Self {
        let mut detail: String = detail.into();
        if detail.len() > 300 {
            let mut cut = 300;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        Self { kind, detail }
    }

    /// An unsupported schema version (`None`: the field is absent).
    pub fn unsupported_version(found: Option<u32>) -> Self {
        let detail = match found {
            Some(v) => format!("schema_version {v}; this build reads up to {SCHEMA_VERSION}"),
            None => "no schema_version (a week-1 envelope); decode it with person-legacy-compat"
                .to_owned(),
        };
        Self::new(DecodeErrorKind::UnsupportedSchemaVersion, detail)
    }

    /// Classifies a serde_json error. `parsed` is the same input as a JSON value when it
    /// parsed, so an unknown event type can be told apart from other data errors.
    pub fn from_json(err: &serde_json::Error, parsed: Option<&serde_json::Value>) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                return Self::new(DecodeErrorKind::MalformedJson, err.to_string());
            }
            Category::Data => {}
        }
        if let Some(ty) = parsed
            .and_then(|v| v.get("event"))
            .and_then(|e| e.get("event_type"))
        {
            match ty.as_str() {
                Some(name) if known_variant(name) => {}
                _ => {
                    return Self::new(
                        DecodeErrorKind::UnknownEventType,
                        format!("event_type {ty} is not a PersonEventV2 variant"),
                    );
                }
            }
        }
        // serde reports a missing field as "missing field `name`"; lift the name out so
        // callers get it without parsing prose themselves.
        let msg = err.to_string();
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or_default();
            return Self::new(DecodeErrorKind::MissingField, format!("`{field}` ({msg})"));
        }
        Self::new(DecodeErrorKind::InvalidField, msg)
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

fn known_variant(name: &str) -> bool {
    crate::event::EVENT_TYPES.iter().any(|(_, v)| *v == name)
}
