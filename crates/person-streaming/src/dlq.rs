//! [`DeadLetterQueue`]: stores, lists, replays and purges dead letters on the DLQ stream.

use async_nats::header::{self, HeaderMap, HeaderValue};
use async_nats::jetstream;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use person_events::subject;
use person_retry::{DeadLetter, DeadLetterSink, SinkError, SinkErrorKind};

use crate::StreamingConfig;
use crate::client::Denials;
use crate::error::{StreamingError, StreamingErrorKind, classify, js_error, stream_api};
use crate::reader::scan;

/// Header on a replayed event naming the DLQ sequence it was replayed from.
pub const REPLAY_OF_HEADER: &str = "Person-Replay-Of";
/// Header on a replayed event with the time of the replay.
pub const REPLAYED_AT_HEADER: &str = "Person-Replayed-At";

/// The token used in DLQ subjects when the person or event type is unknown (an
/// undecodable message).
pub const UNKNOWN_TOKEN: &str = "unknown";

/// A dead letter as stored, with its place in the DLQ stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Its sequence in the DLQ stream: the id to `get`, `replay` or delete it by.
    pub dlq_sequence: u64,
    /// The record.
    pub letter: DeadLetter,
}

impl StoredDeadLetter {
    /// The event's id, typed; `None` when the message could not be read (or the record
    /// holds something that is not an event id).
    pub fn event_id(&self) -> Option<person_events::EventId> {
        self.letter.event_id.as_deref()?.parse().ok()
    }

    /// The person's id, typed; `None` when unknown.
    pub fn person_id(&self) -> Option<person_events::PersonId> {
        self.letter.person_id.as_deref()?.parse().ok()
    }
}

/// Which dead letters to list or purge. Empty means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this consumer's (a subject token; wildcards are rejected, `None` is all).
    pub consumer: Option<String>,
    /// Only this person's (a subject token; wildcards are rejected, `None` is all).
    pub person_id: Option<String>,
    /// Only those whose reason contains this text.
    pub reason_contains: Option<String>,
    /// Only those whose last failure is at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only those whose last failure is before this time.
    pub until: Option<DateTime<Utc>>,
}

impl DeadLetterFilter {
    /// The subject filter covering the consumer and person given. A given value must
    /// be a plain token: `*` or `>` from input would widen the filter (`None` is how to
    /// ask for all).
    fn subject(&self) -> Result<String, StreamingError> {
        for (part, token) in [
            ("consumer", self.consumer.as_deref()),
            ("person", self.person_id.as_deref()),
        ] {
            if let Some(token) = token {
                subject::validate_token(part, token).map_err(|e| {
                    StreamingError::with_source(
                        StreamingErrorKind::InvalidInput,
                        "invalid dead-letter filter",
                        e,
                    )
                })?;
            }
        }
        let consumer = self.consumer.as_deref().unwrap_or("*");
        let person = self.person_id.as_deref().unwrap_or("*");
        Ok(format!("{}.{consumer}.{person}.*", subject::DLQ_PREFIX))
    }

    /// `true` when `letter` passes the filter. Checks every field, also consumer and
    /// person (which [`DeadLetterQueue::list`] already narrows on the server).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.consumer
            .as_deref()
            .is_none_or(|c| letter.consumer == c)
            && self
                .person_id
                .as_deref()
                .is_none_or(|p| letter.person_id.as_deref().unwrap_or(UNKNOWN_TOKEN) == p)
            && self.matches_content(letter)
    }

    fn matches_content(&self, letter: &DeadLetter) -> bool {
        self.reason_contains
            .as_deref()
            .is_none_or(|r| letter.reason.contains(r))
            && self.since.is_none_or(|t| letter.last_failure_at >= t)
            && self.until.is_none_or(|t| letter.last_failure_at < t)
    }
}

/// How many dead letters one consumer holds for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterCount {
    /// The consumer that gave up.
    pub consumer: String,
    /// The reason. Parked events (`blocked by <event id>`) are counted together under
    /// [`PARKED_REASON`].
    pub reason: String,
    /// How many.
    pub count: usize,
}

/// The reason [`DeadLetterQueue::counts`] groups parked events under.
pub const PARKED_REASON: &str = "blocked by an earlier dead letter (parked)";

/// The prefix of a parked event's reason, `blocked by <event id>`, as the subscription
/// runtime writes it.
pub const BLOCKED_BY_PREFIX: &str = "blocked by ";

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReceipt {
    /// The DLQ sequence replayed (now deleted from the DLQ).
    pub dlq_sequence: u64,
    /// Where the event now sits in the event stream.
    pub stream_sequence: u64,
}

/// The dead-letter store on the DLQ stream. Implements [`DeadLetterSink`].
///
/// ```no_run
/// use person_streaming::{DeadLetterFilter, StreamingClient, StreamingConfig};
/// # async fn run() -> Result<(), person_streaming::StreamingError> {
/// let client = StreamingClient::new("nats://localhost:4222", StreamingConfig::default()).await?;
/// let dlq = client.dead_letters();
/// let filter = DeadLetterFilter { consumer: Some("person-projection-summary".into()), ..Default::default() };
/// for stored in dlq.list(&filter).await? {
///     println!("{} {} {}", stored.dlq_sequence, stored.letter.subject, stored.letter.reason);
///     dlq.replay(stored.dlq_sequence).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    js: jetstream::Context,
    dlq_stream: String,
    denials: Denials,
}

impl DeadLetterQueue {
    pub(crate) fn new(js: jetstream::Context, config: &StreamingConfig) -> Self {
        Self {
            js,
            dlq_stream: config.dlq.name.clone(),
            denials: Denials::default(),
        }
    }

    /// Reads the permission violations the server reports on the connection, to tell a
    /// denied request from a timed-out one.
    pub(crate) fn with_denials(mut self, denials: Denials) -> Self {
        self.denials = denials;
        self
    }

    /// A failed request about the DLQ stream, classified.
    fn fail(
        &self,
        message: String,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> StreamingError {
        js_error(message, e).denied_on(&self.denials, stream_api(&self.dlq_stream))
    }

    /// Stores a dead letter and waits for the server's ack. Storing the same letter
    /// again (same stream, sequence and consumer) inside the DLQ's duplicate window
    /// keeps one copy. Returns the DLQ sequence.
    pub async fn put(&self, letter: &DeadLetter) -> Result<u64, StreamingError> {
        self.put_with_id(letter, &letter.dedup_id()).await
    }

    /// Stores a record that is not tied to a stream message (a failed operation), with
    /// its `event_id` as dedup id.
    pub(crate) async fn put_unique(&self, letter: &DeadLetter) -> Result<u64, StreamingError> {
        let id = letter
            .event_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        self.put_with_id(letter, &id).await
    }

    async fn put_with_id(&self, letter: &DeadLetter, msg_id: &str) -> Result<u64, StreamingError> {
        let subject = subject::dlq_subject(
            &letter.consumer,
            letter.person_id.as_deref().unwrap_or(UNKNOWN_TOKEN),
            letter.event_type.as_deref().unwrap_or(UNKNOWN_TOKEN),
        )
        .or_else(|_| subject::dlq_subject(&letter.consumer, UNKNOWN_TOKEN, UNKNOWN_TOKEN))
        .map_err(|e| {
            StreamingError::with_source(
                StreamingErrorKind::InvalidInput,
                "invalid dead-letter subject",
                e,
            )
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, HeaderValue::from(msg_id));
        headers.insert(
            person_metadata::headers::CONTENT_TYPE,
            HeaderValue::from("application/json"),
        );
        // The server refuses a message above its max_payload (header block included),
        // and a refused dead letter would be retried forever: cut it to fit instead.
        let limit = self
            .js
            .client()
            .max_payload()
            .saturating_sub(header_block_len(&headers) + HEADROOM);
        let body = encode_record(letter, limit)?;
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, Bytes::from(body))
            .await
            .map_err(|e| {
                js_error(format!("cannot publish dead letter to {subject}"), e)
                    .denied_on(&self.denials, [&subject])
            })?
            .await
            .map_err(|e| {
                js_error(
                    format!("the DLQ stream did not store the dead letter on {subject}"),
                    e,
                )
                .denied_on(&self.denials, [&subject])
            })?;
        Ok(ack.sequence)
    }

    /// Dead letters matching `filter`, oldest first.
    pub async fn list(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StreamingError> {
        let mut out = Vec::new();
        scan(&self.js, &self.dlq_stream, &filter.subject()?, |msg| {
            let letter: DeadLetter = serde_json::from_slice(&msg.payload).map_err(|e| {
                StreamingError::with_source(
                    StreamingErrorKind::Decode,
                    format!("DLQ message {} is not a dead letter", msg.sequence),
                    e,
                )
            })?;
            if filter.matches_content(&letter) {
                out.push(StoredDeadLetter {
                    dlq_sequence: msg.sequence,
                    letter,
                });
            }
            Ok(())
        })
        .await
        .map_err(|e| e.denied_on(&self.denials, stream_api(&self.dlq_stream)))?;
        Ok(out)
    }

    /// Dead letters matching `filter`, counted by consumer and reason, sorted by
    /// consumer, then by count (largest first), then by reason.
    pub async fn counts(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetterCount>, StreamingError> {
        let mut counts = std::collections::BTreeMap::<(String, String), usize>::new();
        for stored in self.list(filter).await? {
            let letter = stored.letter;
            let reason = if letter.reason.starts_with(BLOCKED_BY_PREFIX) {
                PARKED_REASON.to_owned()
            } else {
                letter.reason
            };
            *counts.entry((letter.consumer, reason)).or_default() += 1;
        }
        let mut out: Vec<DeadLetterCount> = counts
            .into_iter()
            .map(|((consumer, reason), count)| DeadLetterCount {
                consumer,
                reason,
                count,
            })
            .collect();
        out.sort_by(|a, b| {
            a.consumer
                .cmp(&b.consumer)
                .then(b.count.cmp(&a.count))
                .then(a.reason.cmp(&b.reason))
        });
        Ok(out)
    }

    /// The dead letters parked behind `stored`: the same consumer's later events of the
    /// same person, dead-lettered as `blocked by <its event id>` (or `blocked by stream
    /// sequence <n>` when it could not be decoded), oldest first.
    pub async fn parked_behind(
        &self,
        stored: &StoredDeadLetter,
    ) -> Result<Vec<StoredDeadLetter>, StreamingError> {
        let letter = &stored.letter;
        let label = match &letter.event_id {
            Some(id) => id.clone(),
            None => format!("stream sequence {}", letter.stream_sequence),
        };
        let reason = format!("{BLOCKED_BY_PREFIX}{label}");
        let filter = DeadLetterFilter {
            consumer: Some(letter.consumer.clone()),
            person_id: Some(
                letter
                    .person_id
                    .clone()
                    .unwrap_or_else(|| UNKNOWN_TOKEN.to_owned()),
            ),
            ..DeadLetterFilter::default()
        };
        let mut out = self.list(&filter).await?;
        out.retain(|s| s.letter.reason == reason && s.dlq_sequence != stored.dlq_sequence);
        Ok(out)
    }

    /// The person ids that hold at least one dead letter of `consumer`, sorted.
    ///
    /// Read from the DLQ stream's per-subject message counts (stream-info requests,
    /// paged by the server when there are many subjects), so no record is loaded
    /// whatever their size: this is what a runtime can ask at start to know who is
    /// parked. Subjects follow
    /// `person.dlq.<consumer>.<person_id>.<event_type>`; letters stored under
    /// [`UNKNOWN_TOKEN`] (no readable person) name nobody and are left out, ask
    /// [`holds_letters`](Self::holds_letters) for them.
    ///
    /// `consumer` must be a plain subject token ([`StreamingErrorKind::InvalidInput`]
    /// otherwise); a missing DLQ stream is [`StreamingErrorKind::NotFound`].
    pub async fn parked_people(&self, consumer: &str) -> Result<Vec<String>, StreamingError> {
        token("consumer", consumer)?;
        let filter = format!("{}.{consumer}.*.*", subject::DLQ_PREFIX);
        let people: std::collections::BTreeSet<String> = self
            .subject_counts(&filter)
            .await?
            .into_iter()
            .filter_map(|s| s.split('.').nth(3).map(str::to_owned))
            .filter(|person| person != UNKNOWN_TOKEN)
            .collect();
        Ok(people.into_iter().collect())
    }

    /// Whether `person_id` holds at least one dead letter of `consumer`, from the DLQ
    /// stream's subject counts like [`parked_people`](Self::parked_people) (no record is
    /// loaded). Both must be plain subject tokens; a missing DLQ stream is
    /// [`StreamingErrorKind::NotFound`].
    pub async fn holds_letters(
        &self,
        consumer: &str,
        person_id: &str,
    ) -> Result<bool, StreamingError> {
        token("consumer", consumer)?;
        token("person", person_id)?;
        let filter = format!("{}.{consumer}.{person_id}.*", subject::DLQ_PREFIX);
        Ok(!self.subject_counts(&filter).await?.is_empty())
    }

    /// The DLQ subjects matching `filter` that hold at least one message. The filter
    /// has the full subject layout (as [`DeadLetterFilter`] builds it), so `list`,
    /// `purge` and these counts always agree on what is there.
    async fn subject_counts(&self, filter: &str) -> Result<Vec<String>, StreamingError> {
        let name = &self.dlq_stream;
        let stream = match self.js.get_stream(name).await {
            Ok(stream) => stream,
            Err(e) if crate::client::is_stream_not_found(&e) => {
                return Err(StreamingError::with_source(
                    StreamingErrorKind::NotFound,
                    format!(
                        "DLQ stream {name} does not exist (create it with StreamingClient::ensure)"
                    ),
                    e,
                ));
            }
            Err(e) => return Err(self.fail(format!("cannot look up stream {name}"), e)),
        };
        let read = |e| self.fail(format!("cannot count the subjects {filter} of {name}"), e);
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(filter)
            .await
            .map_err(read)?
            .try_collect()
            .await
            .map_err(read)?;
        Ok(subjects
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(subject, _)| subject)
            .collect())
    }

    /// One dead letter by its DLQ sequence.
    pub async fn get(&self, dlq_sequence: u64) -> Result<StoredDeadLetter, StreamingError> {
        let stream = self
            .js
            .get_stream_no_info(&self.dlq_stream)
            .await
            .map_err(|e| self.fail(format!("cannot open stream {}", self.dlq_stream), e))?;
        let msg = stream.get_raw_message(dlq_sequence).await.map_err(|e| {
            if classify(&e) == StreamingErrorKind::NotFound {
                StreamingError::with_source(
                    StreamingErrorKind::NotFound,
                    format!("no dead letter at DLQ sequence {dlq_sequence}"),
                    e,
                )
            } else {
                self.fail(format!("cannot read DLQ sequence {dlq_sequence}"), e)
            }
        })?;
        let letter: DeadLetter = serde_json::from_slice(&msg.payload).map_err(|e| {
            StreamingError::with_source(
                StreamingErrorKind::Decode,
                format!("DLQ message {dlq_sequence} is not a dead letter"),
                e,
            )
        })?;
        Ok(StoredDeadLetter {
            dlq_sequence,
            letter,
        })
    }

    /// Puts the original event back on its original subject, bytes and headers untouched
    /// except for a fresh `Nats-Msg-Id` (inside the duplicate window the old one would
    /// make the server drop the replay silently) and two headers recording the replay.
    /// The dead letter is deleted only after the replay publish is acknowledged.
    ///
    /// A truncated record ([`DeadLetter::is_truncated`]) is refused with a
    /// [`StreamingErrorKind::Truncated`] error and left in place: it no longer holds the
    /// original message, and replaying part of it would corrupt the person's history.
    pub async fn replay(&self, dlq_sequence: u64) -> Result<ReplayReceipt, StreamingError> {
        let stored = self.get(dlq_sequence).await?;
        let letter = &stored.letter;
        if letter.is_truncated() {
            return Err(truncated_replay(dlq_sequence, letter));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &letter.headers {
            if name.eq_ignore_ascii_case(header::NATS_MESSAGE_ID.as_ref())
                || name.eq_ignore_ascii_case(REPLAY_OF_HEADER)
                || name.eq_ignore_ascii_case(REPLAYED_AT_HEADER)
                || {
                    // Publish-time controls of the original write (expectations, atomic
                    // batch membership) do not apply to the replay.
                    let lower = name.to_ascii_lowercase();
                    lower.starts_with("nats-expected") || lower.starts_with("nats-batch")
                }
            {
                continue;
            }
            headers.append(name.as_str(), value.as_str());
        }
        let replay_id = format!(
            "replay:{}:{dlq_sequence}:{}",
            letter.dedup_id(),
            uuid::Uuid::now_v7()
        );
        headers.insert(
            header::NATS_MESSAGE_ID,
            HeaderValue::from(replay_id.as_str()),
        );
        headers.insert(
            REPLAY_OF_HEADER,
            HeaderValue::from(dlq_sequence.to_string().as_str()),
        );
        headers.insert(
            REPLAYED_AT_HEADER,
            HeaderValue::from(Utc::now().to_rfc3339().as_str()),
        );
        let ack = self
            .js
            .publish_with_headers(letter.subject.clone(), headers, letter.payload.clone())
            .await
            .map_err(|e| {
                js_error(format!("cannot replay to {}", letter.subject), e)
                    .denied_on(&self.denials, [&letter.subject])
            })?
            .await
            .map_err(|e| {
                js_error(format!("replay to {} was not stored", letter.subject), e)
                    .denied_on(&self.denials, [&letter.subject])
            })?;
        self.delete(dlq_sequence).await?;
        Ok(ReplayReceipt {
            dlq_sequence,
            stream_sequence: ack.sequence,
        })
    }

    /// Deletes one dead letter.
    pub async fn delete(&self, dlq_sequence: u64) -> Result<(), StreamingError> {
        let stream = self
            .js
            .get_stream_no_info(&self.dlq_stream)
            .await
            .map_err(|e| self.fail(format!("cannot open stream {}", self.dlq_stream), e))?;
        stream
            .delete_message(dlq_sequence)
            .await
            .map_err(|e| self.fail(format!("cannot delete dead letter {dlq_sequence}"), e))?;
        Ok(())
    }

    /// Deletes every dead letter matching `filter`; returns how many.
    pub async fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, StreamingError> {
        let matching = self.list(filter).await?;
        for stored in &matching {
            self.delete(stored.dlq_sequence).await?;
        }
        Ok(matching.len())
    }
}

/// Checks that `value` is a plain subject token: a `*` or `>` from input would widen
/// the filter.
fn token(part: &'static str, value: &str) -> Result<(), StreamingError> {
    subject::validate_token(part, value).map_err(|e| {
        StreamingError::with_source(
            StreamingErrorKind::InvalidInput,
            format!("invalid {part} for a dead-letter lookup"),
            e,
        )
    })
}

/// Bytes kept free below the server's `max_payload` besides the DLQ message's own
/// header block: a margin, so that a record that fits by this count fits by the
/// server's too.
const HEADROOM: usize = 256;

/// A reason longer than this is cut when the record is too large even without its body
/// and headers (a handler error that quotes a whole body, say).
const REASON_KEPT: usize = 1024;

/// Appended to a reason that was cut.
const REASON_CUT: &str = " [cut to fit the dead-letter record]";

/// The size of a NATS header block as the server counts it against `max_payload`
/// (`NATS/1.0\r\n`, one `name: value\r\n` per value, `\r\n`).
fn header_block_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n".len() + "\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            len += name.len() + ": ".len() + value.as_str().len() + "\r\n".len();
        }
    }
    len
}

fn to_json(letter: &DeadLetter) -> Result<Vec<u8>, StreamingError> {
    serde_json::to_vec(letter).map_err(|e| {
        StreamingError::with_source(
            StreamingErrorKind::InvalidInput,
            "cannot encode dead letter",
            e,
        )
    })
}

/// The JSON record of `letter`, at most `limit` bytes.
///
/// A letter that fits is encoded as is. Otherwise the record keeps every header if
/// they fit (else, in order, those that fit in half the room left, the rest dropped:
/// `headers_truncated`) and the longest prefix of the body that fits in what remains
/// (`payload_truncated`, `original_size`). When even the rest of the record is too
/// large, a long reason is cut and the metadata copied from the body is left out.
fn encode_record(letter: &DeadLetter, limit: usize) -> Result<Vec<u8>, StreamingError> {
    let body = to_json(letter)?;
    if body.len() <= limit {
        return Ok(body);
    }
    let too_large = |what: &str| {
        StreamingError::new(
            StreamingErrorKind::InvalidInput,
            format!(
                "the dead letter of {} (stream sequence {}) cannot fit the server's max_payload ({limit} bytes left for the record) {what}; raise max_payload on the server",
                letter.subject, letter.stream_sequence
            ),
        )
    };
    // An incoming prefix (a runtime may cut an oversized body itself) keeps its size.
    let original_size = if letter.payload_truncated {
        letter.original_size
    } else {
        Some(letter.payload.len() as u64)
    };
    // The skeleton: everything but body and headers, with the marks at their longest
    // spelling (`false` is longer than `true`), so the final record is never larger.
    let mut fit = DeadLetter {
        payload: Bytes::new(),
        headers: Vec::new(),
        payload_truncated: false,
        headers_truncated: false,
        original_size: original_size.or(Some(u64::MAX)),
        ..letter.clone()
    };
    let mut skeleton = to_json(&fit)?.len();
    if skeleton > limit && fit.reason.len() > REASON_KEPT {
        let mut end = REASON_KEPT;
        while !fit.reason.is_char_boundary(end) {
            end -= 1;
        }
        fit.reason.truncate(end);
        fit.reason.push_str(REASON_CUT);
        skeleton = to_json(&fit)?.len();
    }
    if skeleton > limit && fit.metadata.is_some() {
        fit.metadata = None;
        skeleton = to_json(&fit)?.len();
    }
    if skeleton > limit {
        return Err(too_large("even without its body and headers"));
    }
    let room = limit - skeleton;

    // Each header costs its JSON pair plus a separating comma.
    let cost =
        |pair: &(String, String)| serde_json::to_vec(pair).map_or(usize::MAX, |v| v.len()) + 1;
    let all: usize = letter
        .headers
        .iter()
        .map(cost)
        .fold(0, usize::saturating_add);
    let mut used = 0;
    if all <= room {
        fit.headers = letter.headers.clone();
        used = all;
    } else {
        let allowance = room / 2;
        for pair in &letter.headers {
            let c = cost(pair);
            if used + c <= allowance {
                fit.headers.push(pair.clone());
                used += c;
            }
        }
    }
    fit.headers_truncated = letter.headers_truncated || fit.headers.len() < letter.headers.len();

    // Base64 spends 4 characters on every 3 bytes.
    let keep = ((room - used) / 4 * 3).min(letter.payload.len());
    fit.payload = letter.payload.slice(..keep);
    fit.payload_truncated = letter.payload_truncated || keep < letter.payload.len();
    fit.original_size = if fit.payload_truncated {
        original_size
    } else {
        None
    };
    let body = to_json(&fit)?;
    if body.len() > limit {
        return Err(too_large("after cutting its body and headers"));
    }
    Ok(body)
}

/// The error of replaying a truncated record.
fn truncated_replay(dlq_sequence: u64, letter: &DeadLetter) -> StreamingError {
    let mut lost = Vec::new();
    if letter.payload_truncated {
        let size = letter
            .original_size
            .map_or_else(|| "more".to_owned(), |n| n.to_string());
        lost.push(format!(
            "it keeps only the first {} of {size} bytes of the original body",
            letter.payload.len()
        ));
    }
    if letter.headers_truncated {
        lost.push("some of the original headers were left out".to_owned());
    }
    StreamingError::new(
        StreamingErrorKind::Truncated,
        format!(
            "dead letter at DLQ sequence {dlq_sequence} cannot be replayed: {}, to fit the server's max_payload, and replaying it would write a corrupt event into the history; republish the original (stream sequence {} of {}) if it is still kept, then delete this dead letter",
            lost.join(" and "),
            letter.stream_sequence,
            letter.stream
        ),
    )
}

#[async_trait]
impl DeadLetterSink for DeadLetterQueue {
    async fn store(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        self.put(letter).await.map(|_| ()).map_err(|e| {
            let kind = match e.kind() {
                StreamingErrorKind::TimedOut => SinkErrorKind::Timeout,
                StreamingErrorKind::InvalidInput => SinkErrorKind::Encode,
                StreamingErrorKind::Authentication
                | StreamingErrorKind::PermissionDenied
                | StreamingErrorKind::Rejected => SinkErrorKind::Rejected,
                _ => SinkErrorKind::Unavailable,
            };
            SinkError::with_source(kind, "cannot store the dead letter on the DLQ stream", e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use person_retry::ErrorClass;

    fn letter(payload: usize, headers: Vec<(String, String)>) -> DeadLetter {
        let now = Utc::now();
        DeadLetter {
            subject: "person.events.0190.created".into(),
            stream: "PERSON_EVENTS".into(),
            stream_sequence: 42,
            payload: (0..payload)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into(),
            headers,
            reason: "projection rejected the event".into(),
            error_class: ErrorClass::Permanent,
            delivery_count: 1,
            first_failure_at: now,
            last_failure_at: now,
            consumer: "projector".into(),
            handler: "summary".into(),
            metadata: Some(person_metadata::EventMetadata::new()),
            event_id: Some("e-1".into()),
            person_id: Some("0190".into()),
            event_type: Some("created".into()),
            payload_truncated: false,
            original_size: None,
            headers_truncated: false,
        }
    }

    fn decode(body: &[u8]) -> DeadLetter {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn a_filter_checks_every_field_and_knows_an_unknown_person_by_its_token() {
        let l = letter(0, small_headers());
        let t = l.last_failure_at;
        let ms = chrono::TimeDelta::milliseconds(1);
        let matches = |f: DeadLetterFilter| f.matches(&l);
        let by_consumer = |c: &str| DeadLetterFilter {
            consumer: Some(c.into()),
            ..Default::default()
        };
        let by_person = |p: &str| DeadLetterFilter {
            person_id: Some(p.into()),
            ..Default::default()
        };
        assert!(matches(DeadLetterFilter::default()));
        assert!(matches(by_consumer("projector")));
        assert!(!matches(by_consumer("other")));
        assert!(matches(by_person("0190")));
        assert!(!matches(by_person("0191")));
        let unknown = DeadLetter {
            person_id: None,
            ..l.clone()
        };
        assert!(by_person(UNKNOWN_TOKEN).matches(&unknown));
        assert!(!by_person("0190").matches(&unknown));
        let by_reason = |r: &str| DeadLetterFilter {
            reason_contains: Some(r.into()),
            ..Default::default()
        };
        assert!(matches(by_reason("rejected")));
        assert!(!matches(by_reason("timed out")));
        let between = |since, until| DeadLetterFilter {
            since,
            until,
            ..Default::default()
        };
        assert!(matches(between(Some(t), None)), "since is inclusive");
        assert!(!matches(between(Some(t + ms), None)));
        assert!(!matches(between(None, Some(t))), "until is exclusive");
        assert!(matches(between(None, Some(t + ms))));
    }

    fn small_headers() -> Vec<(String, String)> {
        vec![
            ("ce-id".into(), "e-1".into()),
            ("Nats-Msg-Id".into(), "e-1".into()),
        ]
    }

    #[test]
    fn a_record_that_fits_is_stored_whole() {
        let l = letter(1000, small_headers());
        let body = encode_record(&l, 1 << 20).unwrap();
        assert_eq!(body, serde_json::to_vec(&l).unwrap());
        assert!(!decode(&body).is_truncated());
    }

    #[test]
    fn a_large_body_keeps_the_longest_prefix_that_fits() {
        let l = letter(50_000, small_headers());
        let whole = serde_json::to_vec(&l).unwrap().len();
        for limit in (1_000..whole).step_by(997) {
            let body = encode_record(&l, limit).unwrap();
            assert!(body.len() <= limit, "{} > {limit}", body.len());
            assert!(
                limit - body.len() <= 8,
                "room wasted at {limit}: {}",
                body.len()
            );
            let got = decode(&body);
            assert!(got.payload_truncated && !got.headers_truncated);
            assert_eq!(got.original_size, Some(50_000));
            assert_eq!(got.payload, l.payload.slice(..got.payload.len()));
            assert_eq!(got.headers, l.headers);
            assert_eq!(got.metadata, l.metadata);
            assert!(got.is_truncated());
        }
    }

    #[test]
    fn enormous_headers_are_dropped_until_the_rest_fits() {
        let mut headers = vec![("x-junk".to_owned(), "j".repeat(100_000))];
        headers.extend(small_headers());
        let l = letter(100, headers);
        let body = encode_record(&l, 20_000).unwrap();
        assert!(body.len() <= 20_000);
        let got = decode(&body);
        assert!(got.headers_truncated && !got.payload_truncated);
        assert_eq!(got.original_size, None);
        assert_eq!(got.payload, l.payload, "a small body stays whole");
        assert_eq!(
            got.headers,
            small_headers(),
            "the ones that fit stay, in order"
        );
    }

    #[test]
    fn a_huge_reason_is_cut_and_the_copied_metadata_dropped_when_needed() {
        let mut l = letter(10_000, small_headers());
        l.reason = "é".repeat(50_000);
        let body = encode_record(&l, 4_000).unwrap();
        assert!(body.len() <= 4_000);
        let got = decode(&body);
        assert!(got.reason.ends_with(REASON_CUT), "{}", got.reason.len());
        assert!(got.reason.len() <= REASON_KEPT + REASON_CUT.len());
        assert!(got.payload_truncated);

        let mut big_meta = letter(10_000, Vec::new());
        let mut meta = person_metadata::EventMetadata::new();
        for i in 0..500 {
            meta = meta.with_context(format!("key-{i}"), "v".repeat(20));
        }
        big_meta.metadata = Some(meta);
        let got = decode(&encode_record(&big_meta, 4_000).unwrap());
        assert_eq!(got.metadata, None);
        assert!(got.payload_truncated);
    }

    #[test]
    fn a_prefix_cut_by_the_runtime_keeps_its_original_size() {
        let mut l = letter(30_000, small_headers());
        l.payload_truncated = true;
        l.original_size = Some(900_000);
        let got = decode(&encode_record(&l, 1 << 20).unwrap());
        assert_eq!(
            (got.payload_truncated, got.original_size),
            (true, Some(900_000))
        );
        let got = decode(&encode_record(&l, 8_000).unwrap());
        assert_eq!(
            (got.payload_truncated, got.original_size),
            (true, Some(900_000))
        );
    }

    #[test]
    fn a_limit_too_small_for_anything_is_a_typed_error() {
        let err = encode_record(&letter(10, small_headers()), 50).unwrap_err();
        assert_eq!(err.kind(), StreamingErrorKind::InvalidInput);
        assert!(err.to_string().contains("max_payload"), "{err}");
    }

    #[test]
    fn replaying_a_truncated_record_names_the_sequence_and_why() {
        let mut l = letter(3, Vec::new());
        l.payload_truncated = true;
        l.original_size = Some(5);
        let err = truncated_replay(7, &l);
        assert_eq!(err.kind(), StreamingErrorKind::Truncated);
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(text.contains("DLQ sequence 7"), "{text}");
        assert!(text.contains("first 3 of 5 bytes"), "{text}");
        assert!(
            text.contains("stream sequence 42 of PERSON_EVENTS"),
            "{text}"
        );
        l.headers_truncated = true;
        assert!(truncated_replay(7, &l).to_string().contains("headers"));
    }

    #[test]
    fn filters_take_plain_tokens_only() {
        let all = DeadLetterFilter::default();
        assert_eq!(all.subject().unwrap(), "person.dlq.*.*.*");
        for bad in ["*", ">", "a.b", "a b", ""] {
            let f = DeadLetterFilter {
                person_id: Some(bad.into()),
                ..DeadLetterFilter::default()
            };
            assert_eq!(
                f.subject().unwrap_err().kind(),
                StreamingErrorKind::InvalidInput,
                "{bad:?}"
            );
            let f = DeadLetterFilter {
                consumer: Some(bad.into()),
                ..DeadLetterFilter::default()
            };
            assert!(f.subject().is_err(), "{bad:?}");
        }
    }
}
