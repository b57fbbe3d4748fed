//! Metadata to and from NATS headers, with the CloudEvents NATS binary-mode names.
//!
//! Headers let a consumer (or an operator with `nats sub`) read who did what, when,
//! and in which conversation, without decoding the body. The body stays the source of
//! truth; the context map is carried in the body only, because CloudEvents extension
//! names cannot hold arbitrary keys.
//!
//! | header | value |
//! |---|---|
//! | `ce-specversion` | `1.0` |
//! | `ce-id` | the event id |
//! | `ce-source` | the producer (a URI reference such as `/person-domain`) |
//! | `ce-type` | the event type |
//! | `ce-time` | the event timestamp, RFC 3339 |
//! | `ce-subject` | the person id, when given |
//! | `ce-correlationid` / `ce-causationid` | correlation and causation ids |
//! | `ce-actor` | the actor, when known |
//! | `ce-metaversion` | the metadata schema version |
//! | `traceparent` / `tracestate` | W3C trace context, untouched |
//! | `Content-Type` | `application/json` |
//!
//! ```
//! use person_metadata::{EventId, EventMetadata};
//! use person_metadata::headers::{CloudEventAttributes, decode_headers, encode_headers};
//!
//! let meta = EventMetadata::new().with_actor("svc-api");
//! let id = EventId::new();
//! let attrs = CloudEventAttributes { id, source: "/person-domain", event_type: "created", subject: None };
//! let headers = encode_headers(&meta, &attrs);
//! let decoded = decode_headers(headers.iter().map(|(n, v)| (*n, v.as_str()))).unwrap();
//! assert_eq!(decoded.id, id);
//! assert_eq!(decoded.metadata, meta);
//! ```

use std::fmt;

use chrono::{DateTime, Utc};

use crate::{CausationId, CorrelationId, EventId, EventMetadata};

/// `ce-specversion`.
pub const CE_SPECVERSION: &str = "ce-specversion";
/// `ce-id`.
pub const CE_ID: &str = "ce-id";
/// `ce-source`.
pub const CE_SOURCE: &str = "ce-source";
/// `ce-type`.
pub const CE_TYPE: &str = "ce-type";
/// `ce-time`.
pub const CE_TIME: &str = "ce-time";
/// `ce-subject`.
pub const CE_SUBJECT: &str = "ce-subject";
/// `ce-correlationid` (CloudEvents extension).
pub const CE_CORRELATION_ID: &str = "ce-correlationid";
/// `ce-causationid` (CloudEvents extension).
pub const CE_CAUSATION_ID: &str = "ce-causationid";
/// `ce-actor` (CloudEvents extension).
pub const CE_ACTOR: &str = "ce-actor";
/// `ce-metaversion` (CloudEvents extension): the metadata schema version.
pub const CE_METAVERSION: &str = "ce-metaversion";
/// W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// `Content-Type`.
pub const CONTENT_TYPE: &str = "Content-Type";
/// The content type of every event body.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// The only CloudEvents spec version written and accepted.
pub const SPEC_VERSION: &str = "1.0";

/// The CloudEvents attributes that come from the event rather than its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudEventAttributes<'a> {
    /// `ce-id`: the event id.
    pub id: EventId,
    /// `ce-source`: the producer.
    pub source: &'a str,
    /// `ce-type`: the event type.
    pub event_type: &'a str,
    /// `ce-subject`: the person the event is about, if it should be written.
    pub subject: Option<&'a str>,
}

/// Everything [`decode_headers`] reads back.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedHeaders {
    /// `ce-id`.
    pub id: EventId,
    /// `ce-source`.
    pub source: String,
    /// `ce-type`.
    pub event_type: String,
    /// `ce-subject`, when present.
    pub subject: Option<String>,
    /// `Content-Type`, when present.
    pub content_type: Option<String>,
    /// The metadata; its context map is empty, since the context lives in the body.
    pub metadata: EventMetadata,
}

/// What went wrong while reading headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderErrorKind {
    /// A required header is absent.
    Missing,
    /// A header is present but its value cannot be parsed.
    Malformed,
    /// `ce-specversion` names a version other than 1.0.
    UnsupportedSpecVersion,
}

/// A header could not be read. Names the header; never a panic.
///
/// ```
/// use person_metadata::headers::{decode_headers, HeaderErrorKind};
/// let err = decode_headers([("ce-specversion", "1.0"), ("ce-id", "nope")]).unwrap_err();
/// assert_eq!(err.kind(), HeaderErrorKind::Malformed);
/// assert_eq!(err.header(), "ce-id");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct HeaderError {
    kind: HeaderErrorKind,
    header: &'static str,
    detail: String,
}

impl HeaderError {
    fn missing(header: &'static str) -> Self {
        Self {
            kind: HeaderErrorKind::Missing,
            header,
            detail: String::new(),
        }
    }

    fn malformed(header: &'static str, detail: impl fmt::Display) -> Self {
        Self {
            kind: HeaderErrorKind::Malformed,
            header,
            detail: detail.to_string(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> HeaderErrorKind {
        self.kind
    }

    /// The name of the header at fault.
    pub fn header(&self) -> &'static str {
        self.header
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HeaderErrorKind::Missing => write!(f, "required header `{}` is missing", self.header),
            HeaderErrorKind::Malformed => {
                write!(f, "header `{}` is malformed: {}", self.header, self.detail)
            }
            HeaderErrorKind::UnsupportedSpecVersion => write!(
                f,
                "header `{}` is `{}`, but only CloudEvents {SPEC_VERSION} is supported",
                self.header, self.detail
            ),
        }
    }
}

/// Calls `put(name, value)` for every header of `meta` and `attrs`, without collecting.
/// The publisher uses this to fill its header map with no intermediate allocation.
pub fn write_headers(
    meta: &EventMetadata,
    attrs: &CloudEventAttributes<'_>,
    mut put: impl FnMut(&'static str, &str),
) {
    put(CE_SPECVERSION, SPEC_VERSION);
    put(
        CE_ID,
        attrs
            .id
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    put(CE_SOURCE, attrs.source);
    put(CE_TYPE, attrs.event_type);
    put(CE_TIME, crate::timestamp::text(&meta.timestamp).as_str());
    if let Some(subject) = attrs.subject {
        put(CE_SUBJECT, subject);
    }
    put(
        CE_CORRELATION_ID,
        meta.correlation_id
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    if let Some(causation) = meta.causation_id {
        put(
            CE_CAUSATION_ID,
            causation
                .as_uuid()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
    }
    if let Some(actor) = &meta.actor {
        put(CE_ACTOR, actor);
    }
    put(CE_METAVERSION, &meta.version);
    if let Some(tp) = &meta.traceparent {
        put(TRACEPARENT, tp);
    }
    if let Some(ts) = &meta.tracestate {
        put(TRACESTATE, ts);
    }
    put(CONTENT_TYPE, JSON_CONTENT_TYPE);
}

/// The headers for `meta` and `attrs`, as owned (name, value) pairs.
pub fn encode_headers(
    meta: &EventMetadata,
    attrs: &CloudEventAttributes<'_>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(12);
    write_headers(meta, attrs, |name, value| {
        out.push((name, value.to_owned()))
    });
    out
}

/// Reads metadata and CloudEvents attributes back from (name, value) pairs.
///
/// Names match case-insensitively; unknown headers are ignored; when a header repeats,
/// the first value wins. Required: `ce-specversion`, `ce-id`, `ce-time`,
/// `ce-correlationid`. A missing `ce-source` or `ce-type` reads as empty.
pub fn decode_headers<'a, I>(headers: I) -> Result<DecodedHeaders, HeaderError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    HeaderScan::new(headers).decode()
}

/// Checks (name, value) pairs as [`decode_headers`] does, with the same errors, and
/// returns only the event id: for a consumer that checks the headers against the body
/// but reads the metadata from the body. Copies nothing.
///
/// ```
/// use person_metadata::{EventId, EventMetadata};
/// use person_metadata::headers::{CloudEventAttributes, check_headers, encode_headers};
///
/// let id = EventId::new();
/// let attrs = CloudEventAttributes { id, source: "/person-domain", event_type: "created", subject: None };
/// let headers = encode_headers(&EventMetadata::new(), &attrs);
/// assert_eq!(check_headers(headers.iter().map(|(n, v)| (*n, v.as_str()))).unwrap(), id);
/// assert!(check_headers([("ce-id", "not-a-uuid")]).is_err());
/// ```
pub fn check_headers<'a, I>(headers: I) -> Result<EventId, HeaderError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    HeaderScan::new(headers).check()
}

/// One pass over a message's headers, keeping the first value of each header this
/// module knows (names matched case-insensitively). A consumer scans once, then reads
/// `Content-Type`, checks, or decodes from the scan, without a lookup per header.
///
/// ```
/// use person_metadata::headers::HeaderScan;
///
/// let scan = HeaderScan::new([("content-type", "application/json"), ("X-Other", "1")]);
/// assert_eq!(scan.content_type(), Some("application/json"));
/// assert!(scan.check().is_err()); // no ce-* headers
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderScan<'a>(Found<'a>);

impl<'a> HeaderScan<'a> {
    /// Scans (name, value) pairs.
    pub fn new<I>(headers: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        Self(Found::scan(headers))
    }

    /// The first `Content-Type` value.
    pub fn content_type(&self) -> Option<&'a str> {
        self.0.0[Found::CONTENT_TYPE_SLOT]
    }

    /// As [`check_headers`].
    pub fn check(&self) -> Result<EventId, HeaderError> {
        Ok(self.0.required()?.id)
    }

    /// As [`decode_headers`].
    pub fn decode(&self) -> Result<DecodedHeaders, HeaderError> {
        let Required {
            id,
            timestamp,
            correlation_id,
            causation_id,
        } = self.0.required()?;
        let [
            ..,
            source,
            ty,
            _,
            subject,
            _,
            _,
            actor,
            metaversion,
            tp,
            ts,
            ct,
        ] = self.0.0;
        let mut metadata =
            EventMetadata::with_correlation(correlation_id).with_timestamp(timestamp);
        metadata.causation_id = causation_id;
        metadata.actor = actor.map(str::to_owned);
        if let Some(v) = metaversion {
            metadata.version = v.to_owned();
        }
        metadata.traceparent = tp.map(str::to_owned);
        metadata.tracestate = ts.map(str::to_owned);
        Ok(DecodedHeaders {
            id,
            source: source.unwrap_or_default().to_owned(),
            event_type: ty.unwrap_or_default().to_owned(),
            subject: subject.map(str::to_owned),
            content_type: ct.map(str::to_owned),
            metadata,
        })
    }
}

/// The known headers' first values, in [`Found::KNOWN`] order.
#[derive(Debug, Clone, Copy, Default)]
struct Found<'a>([Option<&'a str>; 13]);

/// The required headers, parsed.
struct Required {
    id: EventId,
    timestamp: DateTime<Utc>,
    correlation_id: CorrelationId,
    causation_id: Option<CausationId>,
}

impl<'a> Found<'a> {
    const KNOWN: [&'static str; 13] = [
        CE_SPECVERSION,
        CE_ID,
        CE_SOURCE,
        CE_TYPE,
        CE_TIME,
        CE_SUBJECT,
        CE_CORRELATION_ID,
        CE_CAUSATION_ID,
        CE_ACTOR,
        CE_METAVERSION,
        TRACEPARENT,
        TRACESTATE,
        CONTENT_TYPE,
    ];

    fn scan<I>(headers: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut found = [None; 13];
        for (name, value) in headers {
            if let Some(i) = Self::slot(name) {
                found[i].get_or_insert(value);
            }
        }
        Self(found)
    }

    /// Where `name` goes: the spelling this crate writes matches on the first search,
    /// any other casing on the second.
    fn slot(name: &str) -> Option<usize> {
        Self::KNOWN.iter().position(|k| *k == name).or_else(|| {
            Self::KNOWN
                .iter()
                .position(|k| k.eq_ignore_ascii_case(name))
        })
    }

    /// The slot of `Content-Type` in [`Found::KNOWN`].
    const CONTENT_TYPE_SLOT: usize = Self::KNOWN.len() - 1;

    fn required(&self) -> Result<Required, HeaderError> {
        let [spec, id, _, _, time, _, corr, cause, ..] = self.0;
        let spec = spec.ok_or(HeaderError::missing(CE_SPECVERSION))?;
        if spec.trim() != SPEC_VERSION {
            return Err(HeaderError {
                kind: HeaderErrorKind::UnsupportedSpecVersion,
                header: CE_SPECVERSION,
                detail: truncate(spec),
            });
        }
        let id: EventId = parse_id(CE_ID, id)?;
        let time = time.ok_or(HeaderError::missing(CE_TIME))?;
        let timestamp = DateTime::parse_from_rfc3339(time.trim())
            .map_err(|e| HeaderError::malformed(CE_TIME, format!("`{}`: {e}", truncate(time))))?
            .with_timezone(&Utc);
        let correlation_id: CorrelationId = parse_id(CE_CORRELATION_ID, corr)?;
        let causation_id: Option<CausationId> = match cause {
            Some(_) => Some(parse_id(CE_CAUSATION_ID, cause)?),
            None => None,
        };
        Ok(Required {
            id,
            timestamp,
            correlation_id,
            causation_id,
        })
    }
}

fn parse_id<T>(header: &'static str, value: Option<&str>) -> Result<T, HeaderError>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    let value = value.ok_or(HeaderError::missing(header))?;
    value
        .trim()
        .parse()
        .map_err(|e| HeaderError::malformed(header, e))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(id: EventId) -> CloudEventAttributes<'static> {
        CloudEventAttributes {
            id,
            source: "/person-domain",
            event_type: "name_updated",
            subject: Some("0f8fad5b-d9cb-469f-a165-70867728950e"),
        }
    }

    fn pairs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        h.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    #[test]
    fn round_trips_every_field_but_context() {
        let meta = EventMetadata::new()
            .with_causation(EventId::new())
            .with_actor("alice")
            .with_trace(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                Some("congo=t61rcWkgMzE".into()),
            );
        let id = EventId::new();
        let h = encode_headers(&meta, &attrs(id));
        let d = decode_headers(pairs(&h)).unwrap();
        assert_eq!(d.id, id);
        assert_eq!(d.metadata, meta);
        assert_eq!(d.source, "/person-domain");
        assert_eq!(d.event_type, "name_updated");
        assert_eq!(
            d.subject.as_deref(),
            Some("0f8fad5b-d9cb-469f-a165-70867728950e")
        );
        assert_eq!(d.content_type.as_deref(), Some(JSON_CONTENT_TYPE));
    }

    #[test]
    fn trace_context_is_passed_through_byte_for_byte() {
        let odd = "  00-ABC  weird,,value ";
        let meta = EventMetadata::new().with_trace(odd, Some(" x=1 , y=2".into()));
        let h = encode_headers(&meta, &attrs(EventId::new()));
        let d = decode_headers(pairs(&h)).unwrap();
        assert_eq!(d.metadata.traceparent.as_deref(), Some(odd));
        assert_eq!(d.metadata.tracestate.as_deref(), Some(" x=1 , y=2"));
    }

    #[test]
    fn names_the_missing_or_bad_header() {
        let meta = EventMetadata::new();
        let h = encode_headers(&meta, &attrs(EventId::new()));
        for required in [CE_SPECVERSION, CE_ID, CE_TIME, CE_CORRELATION_ID] {
            let without: Vec<_> = pairs(&h)
                .into_iter()
                .filter(|(n, _)| *n != required)
                .collect();
            let err = decode_headers(without).unwrap_err();
            assert_eq!(err.kind(), HeaderErrorKind::Missing);
            assert_eq!(err.header(), required);
            assert!(err.to_string().contains(required));
        }
        let mut bad = pairs(&h);
        bad.retain(|(n, _)| *n != CE_TIME);
        bad.push((CE_TIME, "yesterday"));
        let err = decode_headers(bad).unwrap_err();
        assert_eq!(
            (err.kind(), err.header()),
            (HeaderErrorKind::Malformed, CE_TIME)
        );

        let err = decode_headers([(CE_SPECVERSION, "0.3")]).unwrap_err();
        assert_eq!(err.kind(), HeaderErrorKind::UnsupportedSpecVersion);
    }

    #[test]
    fn names_match_case_insensitively() {
        let meta = EventMetadata::new();
        let id = EventId::new();
        let h = encode_headers(&meta, &attrs(id));
        let upper: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.to_ascii_uppercase(), v.clone()))
            .collect();
        let d = decode_headers(upper.iter().map(|(n, v)| (n.as_str(), v.as_str()))).unwrap();
        assert_eq!(d.id, id);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_headers_never_panics(
            pairs in proptest::collection::vec(
                (prop_oneof![
                    Just(CE_SPECVERSION.to_owned()), Just(CE_ID.to_owned()), Just(CE_TIME.to_owned()),
                    Just(CE_CORRELATION_ID.to_owned()), Just(CE_CAUSATION_ID.to_owned()),
                    any::<String>()
                ], any::<String>()),
                0..12,
            )
        ) {
            let _ = decode_headers(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        }

        /// `check_headers` accepts exactly what `decode_headers` accepts, with the same
        /// id or the same error, whatever the names' casing, order and repeats.
        #[test]
        fn checking_agrees_with_decoding(
            picks in proptest::collection::vec((0usize..14, any::<bool>(), 0usize..4), 0..20),
            stray in "[a-zA-Z-]{0,12}",
        ) {
            let good = encode_headers(&EventMetadata::new().with_causation(EventId::new()), &attrs(EventId::new()));
            let mixed: Vec<(String, String)> = picks
                .iter()
                .map(|&(i, upper, v)| {
                    let name = Found::KNOWN.get(i).copied().unwrap_or(stray.as_str());
                    let name = if upper { name.to_ascii_uppercase() } else { name.to_owned() };
                    let valid = good.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)).map(|(_, v)| v.clone());
                    let value = match (v, valid) {
                        (0, Some(valid)) => valid,
                        (1, Some(valid)) => format!(" {valid} "),
                        (2, _) => "1.0".to_owned(),
                        _ => stray.clone(),
                    };
                    (name, value)
                })
                .collect();
            let iter = || mixed.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            prop_assert_eq!(check_headers(iter()), decode_headers(iter()).map(|d| d.id));
            // And whole, valid header sets in any casing pass both.
            let upper: Vec<(String, &str)> = good.iter().map(|(n, v)| (n.to_ascii_uppercase(), v.as_str())).collect();
            let id = check_headers(upper.iter().map(|(n, v)| (n.as_str(), *v)));
            prop_assert_eq!(id, decode_headers(pairs(&good)).map(|d| d.id));
        }

        #[test]
        fn any_metadata_round_trips(
            actor in proptest::option::of("[ -~]{0,40}"),
            secs in 0i64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
            caused in any::<bool>(),
        ) {
            let ts = DateTime::from_timestamp(secs, nanos).unwrap();
            let mut meta = EventMetadata::new().with_timestamp(ts);
            meta.actor = actor;
            if caused { meta.causation_id = Some(CausationId::new()); }
            let h = encode_headers(&meta, &attrs(EventId::new()));
            let d = decode_headers(pairs(&h)).unwrap();
            prop_assert_eq!(d.metadata, meta);
        }
    }
}
