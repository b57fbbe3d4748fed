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
/// consumer ([`OrderedRead`]), stopping when none is pending. An error from `each`
/// ends the read.
pub(crate) async fn scan(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    mut each: impl FnMut(Scanned) -> Result<(), StreamingError>,
) -> Result<(), StreamingError> {
    let mut read = OrderedRead::open(js, stream, filter, None, false, SCAN_BATCH).await?;
    while let Some(msg) = read.next().await? {
        if let Err(e) = each(msg) {
            read.close().await;
            return Err(e);
        }
    }
    Ok(())
}

/// Messages a [`scan`] lets the client buffer.
const SCAN_BATCH: usize = 256;

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

/// An ordered ephemeral consumer read one message at a time, from a start sequence,
/// ending when nothing matching is left. At most `batch` messages are buffered by the
/// client at a time, so memory is bounded whatever the stream holds.
pub(crate) struct OrderedRead {
    messages: Option<consumer::pull::Ordered>,
    stream: jetstream::stream::Stream<()>,
    consumer: String,
    label: String,
}

impl OrderedRead {
    /// Opens a read of `filter` in `stream` from `start` (a sequence, inclusive; `None`
    /// is the first message). `headers_only` delivers headers without payloads.
    pub(crate) async fn open(
        js: &jetstream::Context,
        stream: &str,
        filter: &str,
        start: Option<u64>,
        headers_only: bool,
        batch: usize,
    ) -> Result<Self, StreamingError> {
        Self::open_filters(
            js,
            stream,
            std::slice::from_ref(&filter.to_owned()),
            start,
            headers_only,
            batch,
        )
        .await
    }

    /// [`open`](Self::open) with several filters (any of them).
    pub(crate) async fn open_filters(
        js: &jetstream::Context,
        stream: &str,
        filters: &[String],
        start: Option<u64>,
        headers_only: bool,
        batch: usize,
    ) -> Result<Self, StreamingError> {
        let label = format!("{} from {stream}", filters.join(", "));
        let stream_handle = js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| js_error(format!("cannot open stream {stream}"), e))?;
        let deliver_policy = match start {
            Some(start_sequence) if start_sequence > 1 => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            }
            _ => consumer::DeliverPolicy::All,
        };
        let mut consumer = stream_handle
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: one_filter(filters),
                filter_subjects: many_filters(filters),
                deliver_policy,
                headers_only,
                max_batch: i64::try_from(batch.max(1)).unwrap_or(i64::MAX),
                ..Default::default()
            })
            .await
            .map_err(|e| js_error(format!("cannot read {label}"), e))?;
        // Nothing stored for the filter: the ordered consumer would just wait.
        let pending = consumer
            .info()
            .await
            .map_err(|e| js_error(format!("cannot read {label}"), e))?
            .num_pending;
        let name = consumer.cached_info().name.clone();
        let messages = if pending == 0 {
            None
        } else {
            Some(
                consumer
                    .messages()
                    .await
                    .map_err(|e| js_error(format!("cannot read {label}"), e))?,
            )
        };
        Ok(Self {
            messages,
            stream: stream_handle,
            consumer: name,
            label,
        })
    }

    /// Ends the read early and deletes its consumer rather than leave it to expire
    /// (best effort: the server removes an idle one by itself).
    pub(crate) async fn close(mut self) {
        self.messages = None;
        let _ = self.stream.delete_consumer(&self.consumer).await;
    }

    /// The next message, `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<Scanned>, StreamingError> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| {
                StreamingError::new(
                    StreamingErrorKind::TimedOut,
                    format!("reading {} stalled", self.label),
                )
            })?;
        let Some(msg) = next else {
            self.messages = None;
            return Ok(None);
        };
        let msg = msg.map_err(|e| js_error(format!("reading {} failed", self.label), e))?;
        let info = msg.info().map_err(|e| {
            StreamingError::new(
                StreamingErrorKind::JetStream,
                format!("message without JetStream info: {e}"),
            )
        })?;
        let sequence = info.stream_sequence;
        if info.pending == 0 {
            // The last one matching: stop here rather than wait for more.
            self.messages = None;
        }
        let inner = msg.split().0;
        Ok(Some(Scanned {
            subject: inner.subject,
            sequence,
            headers: inner.headers,
            payload: inner.payload,
        }))
    }
}

/// How many messages of `stream` match `filter`, from an ordered consumer's pending
/// count: no message is read, whatever their number.
/// One filter as `filter_subject`; several go to `filter_subjects` instead.
fn one_filter(filters: &[String]) -> String {
    match filters {
        [one] => one.clone(),
        _ => String::new(),
    }
}

fn many_filters(filters: &[String]) -> Vec<String> {
    match filters {
        [_] => Vec::new(),
        many => many.to_vec(),
    }
}

pub(crate) async fn count_matching(
    js: &jetstream::Context,
    stream: &str,
    filters: &[String],
) -> Result<u64, StreamingError> {
    let label = format!("{} from {stream}", filters.join(", "));
    let stream_handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| js_error(format!("cannot open stream {stream}"), e))?;
    let mut consumer = stream_handle
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: one_filter(filters),
            filter_subjects: many_filters(filters),
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| js_error(format!("cannot count {label}"), e))?;
    let info = consumer
        .info()
        .await
        .map_err(|e| js_error(format!("cannot count {label}"), e))?;
    let (pending, name) = (info.num_pending, info.name.clone());
    let _ = stream_handle.delete_consumer(&name).await;
    Ok(pending)
}
