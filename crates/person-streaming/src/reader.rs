//! [`AggregateReader`]: one person's events, in order, legacy events upcast.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use person_events::subject::Subjects;
use person_events::{PersonId, StreamingEventEnvelope};
use person_legacy_compat::{RawMessage, decode_message};

use crate::StreamingConfig;
use crate::client::Denials;
use crate::error::{StreamingError, StreamingErrorKind, js_error, stream_api};

/// Reads a person's history from the event stream. Cheap to clone.
///
/// ```no_run
/// use person_events::PersonId;
/// use person_streaming::{StreamingClient, StreamingConfig};
/// # async fn run(person_id: PersonId) -> Result<(), person_streaming::StreamingError> {
/// let client = StreamingClient::new("nats://localhost:4222", StreamingConfig::default()).await?;
/// let history = client.reader().load_aggregate(person_id).await?;
/// let version = history.last().and_then(|e| e.stream_position).unwrap_or(0);
/// assert_eq!(version, client.reader().last_version(person_id).await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AggregateReader {
    js: jetstream::Context,
    stream: String,
    subjects: Subjects,
    denials: Denials,
}

impl AggregateReader {
    pub(crate) fn new(js: jetstream::Context, config: &StreamingConfig, denials: Denials) -> Self {
        Self {
            js,
            stream: config.stream.name.clone(),
            subjects: config.subjects(),
            denials,
        }
    }

    /// The person's version: the stream sequence of their last event, 0 if none.
    pub async fn last_version(&self, person_id: PersonId) -> Result<u64, StreamingError> {
        last_version_in(&self.js, &self.stream, &self.subjects, &person_id)
            .await
            .map_err(|e| e.denied_on(&self.denials, stream_api(&self.stream)))
    }

    /// Every event of the person, in stream order, with `stream_position` set. Legacy V1
    /// events and week-1 envelopes arrive upcast. A person with no events gives an empty
    /// list after one request.
    ///
    /// Each event is returned once, and never a replay: replays live on their own
    /// subjects, outside the history, and a replay stored on the history's subjects by
    /// an earlier version (it carries [`REPLAY_OF_HEADER`](crate::REPLAY_OF_HEADER)) or
    /// an event id seen before is skipped.
    pub async fn load_aggregate(
        &self,
        person_id: PersonId,
    ) -> Result<Vec<StreamingEventEnvelope>, StreamingError> {
        if self.last_version(person_id).await? == 0 {
            return Ok(Vec::new());
        }
        let filter = self.subjects.person_filter(&person_id);
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        scan(&self.js, &self.stream, &filter, |msg| {
            if msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get(crate::REPLAY_OF_HEADER).is_some())
            {
                return Ok(());
            }
            let decoded = decode_message(&RawMessage {
                subject: Some(msg.subject.as_str()),
                payload: &msg.payload,
                content_type: content_type(&msg.headers),
                stream_sequence: Some(msg.sequence),
            })
            .map_err(|e| {
                StreamingError::with_source(
                    StreamingErrorKind::Decode,
                    format!(
                        "event at stream sequence {} of person {person_id} cannot be decoded",
                        msg.sequence
                    ),
                    e,
                )
            })?;
            if seen.insert(decoded.envelope.event_id) {
                out.push(decoded.envelope);
            }
            Ok(())
        })
        .await
        .map_err(|e| e.denied_on(&self.denials, stream_api(&self.stream)))?;
        Ok(out)
    }
}

/// The `Content-Type` header of a message, if any.
pub(crate) fn content_type(headers: &Option<async_nats::HeaderMap>) -> Option<&str> {
    headers
        .as_ref()
        .and_then(|h| h.get(person_metadata::headers::CONTENT_TYPE))
        .map(|v| v.as_str())
}

/// A stored message as handed to a scan callback.
pub(crate) struct Scanned {
    pub(crate) subject: async_nats::Subject,
    pub(crate) sequence: u64,
    pub(crate) headers: Option<async_nats::HeaderMap>,
    pub(crate) payload: bytes::Bytes,
}

/// Reads every message matching `filter`, in order, through an ephemeral ordered
/// consumer, stopping when none is pending.
pub(crate) async fn scan(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    mut each: impl FnMut(Scanned) -> Result<(), StreamingError>,
) -> Result<(), StreamingError> {
    let stream_handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| js_error(format!("cannot open stream {stream}"), e))?;
    let mut consumer = stream_handle
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| js_error(format!("cannot read {filter} from {stream}"), e))?;
    // Nothing stored for the filter: the ordered consumer would just wait.
    let pending = consumer
        .info()
        .await
        .map_err(|e| js_error(format!("cannot read {filter} from {stream}"), e))?
        .num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| js_error(format!("cannot read {filter} from {stream}"), e))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| {
                StreamingError::new(
                    StreamingErrorKind::TimedOut,
                    format!("reading {filter} from {stream} stalled"),
                )
            })?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| js_error(format!("reading {filter} from {stream} failed"), e))?;
        let info = msg.info().map_err(|e| {
            StreamingError::new(
                StreamingErrorKind::JetStream,
                format!("message without JetStream info: {e}"),
            )
        })?;
        let sequence = info.stream_sequence;
        let remaining = info.pending;
        let inner = msg.split().0;
        each(Scanned {
            subject: inner.subject,
            sequence,
            headers: inner.headers,
            payload: inner.payload,
        })?;
        if remaining == 0 {
            break;
        }
    }
    Ok(())
}

pub(crate) async fn last_version_in(
    js: &jetstream::Context,
    stream: &str,
    subjects: &Subjects,
    person_id: &PersonId,
) -> Result<u64, StreamingError> {
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| js_error(format!("cannot open stream {stream}"), e))?;
    match handle
        .get_last_raw_message_by_subject(&subjects.person_filter(person_id))
        .await
    {
        Ok(msg) => Ok(msg.sequence),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(js_error(
            format!("cannot read the last event of person {person_id}"),
            e,
        )),
    }
}
