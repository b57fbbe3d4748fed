//! [`DeadLetterQueue`]: stores, lists, replays and purges dead letters on the DLQ stream.

use std::collections::BTreeMap;

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
use crate::reader::{OrderedRead, Scanned, count_matching};

/// Header on a replayed event naming the DLQ sequence it was replayed from.
pub const REPLAY_OF_HEADER: &str = "Person-Replay-Of";
/// Header on a replayed event with the time of the replay.
pub const REPLAYED_AT_HEADER: &str = "Person-Replayed-At";

/// The token used in DLQ subjects when the person or event type is unknown (an
/// undecodable message).
pub const UNKNOWN_TOKEN: &str = "unknown";

/// Header on a DLQ record whose whole letter is kept in the bodies object store:
/// the object's name.
pub const BODY_OBJECT_HEADER: &str = "Person-Body-Object";
/// Header on such a record: the object's SHA-256 digest, as the object store writes it
/// (`SHA-256=<base64url>`).
pub const BODY_DIGEST_HEADER: &str = "Person-Body-Digest";

/// A dead letter as stored, with its place in the DLQ stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Its sequence in the DLQ stream: the id to `get`, `replay` or delete it by.
    pub dlq_sequence: u64,
    /// The record: the whole original when it was read back, else the DLQ record (see
    /// [`body`](Self::body)).
    pub letter: DeadLetter,
    /// Where the whole letter is kept when it was too large for a DLQ record; `None`
    /// for a record that holds it all.
    pub body: Option<BodyObject>,
}

/// A dead letter kept whole in the bodies object store
/// ([`StreamingConfig::bodies_bucket`](crate::StreamingConfig::bodies_bucket)), its
/// DLQ record holding everything but the original message's payload and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyObject {
    /// The object's name.
    pub name: String,
    /// Its digest, `SHA-256=<base64url>`.
    pub digest: String,
    /// `true` when [`StoredDeadLetter::letter`] is the whole letter read back from the
    /// object, checked against the digest. `false` when it was not read
    /// ([`DeadLetterQueue::list`] does not) or could not be (deleted, expired, or not
    /// matching its digest): the letter then has an empty body, and
    /// [`DeadLetterQueue::replay`] refuses it.
    pub loaded: bool,
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
    /// A consumer group's name also selects its partitions' (`<name>-p<k>`).
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
    /// The subject filters covering the consumer and person given: one, or one per
    /// durable when the consumer is a group of `groups` (group name → its durables). A
    /// given value must be a plain token: `*` or `>` from input would widen the filter
    /// (`None` is how to ask for all).
    fn subjects(
        &self,
        subjects: &subject::Subjects,
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<String>, StreamingError> {
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
        let person = self.person_id.as_deref().unwrap_or("*");
        let subject = |consumer: &str| format!("{}.{consumer}.{person}.*", subjects.dlq_prefix());
        Ok(match self.consumer.as_deref() {
            None => vec![subject("*")],
            Some(c) => match groups.get(c) {
                Some(durables) => durables.iter().map(|d| subject(d)).collect(),
                None => vec![subject(c)],
            },
        })
    }

    /// `true` when `letter` passes the filter. Checks every field, also consumer and
    /// person (which [`DeadLetterQueue::list`] already narrows on the server). Knowing
    /// no configuration, it takes a consumer group's name as that one durable's; the
    /// queue's reads also select the group's partitions.
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

    /// `true` when the filter looks at the record's content (reason or time), which is
    /// in its body, not only at its subject.
    fn has_content(&self) -> bool {
        self.reason_contains.is_some() || self.since.is_some() || self.until.is_some()
    }

    fn matches_content(&self, letter: &DeadLetter) -> bool {
        self.reason_contains
            .as_deref()
            .is_none_or(|r| letter.reason.contains(r))
            && self.since.is_none_or(|t| letter.last_failure_at >= t)
            && self.until.is_none_or(|t| letter.last_failure_at < t)
    }
}

/// One page of dead letters, from [`DeadLetterQueue::page`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterPage {
    /// The letters, oldest first (by DLQ sequence), at most the page's limit.
    pub letters: Vec<StoredDeadLetter>,
    /// The `after` to read the next page from (the DLQ sequence of the last letter
    /// here), `None` when no letter after this page matches.
    pub next_after: Option<u64>,
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
    /// Where the replay sits in the event stream (on its replay subject).
    pub stream_sequence: u64,
    /// `true` when this dead letter had been replayed to this consumer already (a
    /// retried or concurrent replay): nothing new was stored.
    pub already_replayed: bool,
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
    bodies: String,
    events_stream: String,
    subjects: subject::Subjects,
    denials: Denials,
    /// Each consumer group's name and the durables its dead letters are under.
    groups: BTreeMap<String, Vec<String>>,
}

impl DeadLetterQueue {
    pub(crate) fn new(js: jetstream::Context, config: &StreamingConfig) -> Self {
        Self {
            js,
            dlq_stream: config.dlq.name.clone(),
            bodies: config.bodies_bucket(),
            events_stream: config.stream.name.clone(),
            subjects: config.subjects(),
            denials: Denials::default(),
            groups: config
                .consumers
                .iter()
                .filter_map(|c| {
                    let group = config.consumer_group(c).ok()?;
                    let durables = std::iter::once(group.legacy.durable_name)
                        .chain(group.partitions.into_iter().map(|p| p.durable_name))
                        .collect();
                    Some((c.durable_name.clone(), durables))
                })
                .collect(),
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
        let subject = self
            .subjects
            .dlq_subject(
                &letter.consumer,
                letter.person_id.as_deref().unwrap_or(UNKNOWN_TOKEN),
                letter.event_type.as_deref().unwrap_or(UNKNOWN_TOKEN),
            )
            .or_else(|_| {
                self.subjects
                    .dlq_subject(&letter.consumer, UNKNOWN_TOKEN, UNKNOWN_TOKEN)
            })
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
        let whole = to_json(letter)?;
        let mut body = whole;
        if body.len() > self.record_limit(&headers) {
            // Too large for a record: the whole letter goes to the bodies bucket, the
            // record keeps the rest and names the object.
            match self.store_body(msg_id, &body).await? {
                Some(digest) => {
                    headers.insert(BODY_OBJECT_HEADER, HeaderValue::from(msg_id));
                    headers.insert(BODY_DIGEST_HEADER, HeaderValue::from(digest.as_str()));
                    let skeleton = DeadLetter {
                        payload: Bytes::new(),
                        headers: Vec::new(),
                        original_size: Some(letter.payload.len() as u64),
                        ..letter.clone()
                    };
                    body = encode_record(&skeleton, self.record_limit(&headers))?;
                }
                // No bucket (a deployment set up before it existed): the record keeps
                // what fits and says so.
                None => body = encode_record(letter, self.record_limit(&headers))?,
            }
        }
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

    /// The room for a record's JSON under the server's `max_payload`, besides
    /// `headers`.
    fn record_limit(&self, headers: &HeaderMap) -> usize {
        self.js
            .client()
            .max_payload()
            .saturating_sub(header_block_len(headers) + HEADROOM)
    }

    /// Puts the whole letter `json` in the bodies bucket as `name`; its digest, or
    /// `None` when the bucket does not exist.
    async fn store_body(&self, name: &str, json: &[u8]) -> Result<Option<String>, StreamingError> {
        let bucket = match self.js.get_object_store(&self.bodies).await {
            Ok(bucket) => bucket,
            Err(e) if bucket_missing(&e) => {
                tracing::warn!(
                    bucket = %self.bodies,
                    error = %e,
                    "no bodies bucket: a dead letter too large for its record keeps only what fits; run `person-stream setup` to create the bucket"
                );
                return Ok(None);
            }
            Err(e) => return Err(self.fail(format!("cannot open bucket {}", self.bodies), e)),
        };
        // Chunks fit the server's max_payload (the object store's default is 128 KiB).
        let chunk = (self.js.client().max_payload().saturating_sub(4096)).clamp(1024, 128 * 1024);
        let meta = jetstream::object_store::ObjectMetadata {
            name: name.to_owned(),
            chunk_size: Some(chunk),
            ..Default::default()
        };
        let info = bucket.put(meta, &mut &json[..]).await.map_err(|e| {
            self.fail(
                format!(
                    "cannot store the dead letter's body in bucket {}",
                    self.bodies
                ),
                e,
            )
        })?;
        Ok(Some(info.digest.unwrap_or_default()))
    }

    /// Reads the whole letter of `stored` back from the bodies bucket, checked against
    /// the digest its record names. Leaves `stored` as it is (`loaded: false`) when the
    /// object is gone or does not match.
    async fn load_body(&self, stored: &mut StoredDeadLetter) -> Result<(), StreamingError> {
        let Some(body) = &mut stored.body else {
            return Ok(());
        };
        let bucket = match self.js.get_object_store(&self.bodies).await {
            Ok(bucket) => bucket,
            Err(e) if bucket_missing(&e) => return Ok(()),
            Err(e) => return Err(self.fail(format!("cannot open bucket {}", self.bodies), e)),
        };
        let info = match bucket.info(&body.name).await {
            Ok(info) => info,
            Err(e) if e.kind() == jetstream::object_store::InfoErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.fail(format!("cannot read object {}", body.name), e)),
        };
        if info.deleted || info.digest.as_deref() != Some(body.digest.as_str()) {
            return Ok(());
        }
        let mut object = bucket
            .get(&body.name)
            .await
            .map_err(|e| self.fail(format!("cannot read object {}", body.name), e))?;
        let mut json = Vec::with_capacity(info.size);
        // The object store checks the digest as the last chunk arrives.
        if tokio::io::AsyncReadExt::read_to_end(&mut object, &mut json)
            .await
            .is_err()
        {
            return Ok(());
        }
        let letter: DeadLetter = serde_json::from_slice(&json).map_err(|e| {
            StreamingError::with_source(
                StreamingErrorKind::Decode,
                format!("object {} is not a dead letter", body.name),
                e,
            )
        })?;
        stored.letter = letter;
        body.loaded = true;
        Ok(())
    }

    /// Every dead letter matching `filter`, oldest first, in one list. A letter kept
    /// whole in the bodies bucket comes as its record, without its body
    /// ([`BodyObject::loaded`] is `false`); [`get`](Self::get) reads it back.
    ///
    /// This loads everything that matches, so its memory grows with the DLQ: it is read
    /// [`page`](Self::page) by page, and a large DLQ is better read that way too.
    pub async fn list(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StreamingError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.page(filter, after, READ_BATCH).await?;
            out.extend(page.letters);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// At most `limit` dead letters matching `filter`, oldest first, from the DLQ
    /// sequence after `after` (exclusive; `None` is the start of the DLQ).
    ///
    /// Read through an ordered consumer starting at `after + 1`, on the filter's
    /// subjects, stopping once `limit` letters matched (and one more was seen, to know
    /// there is a next page) or at the end: memory is bounded by `limit` whatever the
    /// DLQ's size. [`DeadLetterPage::next_after`] is the `after` of the next page, `None`
    /// when nothing else matches. Reading every page in turn gives every matching
    /// letter exactly once, in DLQ order; letters stored meanwhile come on later pages,
    /// deleted ones are not seen again. Like [`list`](Self::list), a letter kept whole
    /// in the bodies bucket comes as its record, without its body.
    ///
    /// A `limit` of 0 is [`StreamingErrorKind::InvalidInput`].
    ///
    /// ```no_run
    /// use person_streaming::{DeadLetterFilter, StreamingClient, StreamingConfig};
    /// # async fn run() -> Result<(), person_streaming::StreamingError> {
    /// let client = StreamingClient::new("nats://localhost:4222", StreamingConfig::default()).await?;
    /// let dlq = client.dead_letters();
    /// let filter = DeadLetterFilter::default();
    /// let mut after = None;
    /// loop {
    ///     let page = dlq.page(&filter, after, 100).await?;
    ///     for stored in &page.letters {
    ///         println!("{} {}", stored.dlq_sequence, stored.letter.reason);
    ///     }
    ///     match page.next_after {
    ///         Some(next) => after = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn page(
        &self,
        filter: &DeadLetterFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<DeadLetterPage, StreamingError> {
        if limit == 0 {
            return Err(StreamingError::new(
                StreamingErrorKind::InvalidInput,
                "a page of dead letters needs a limit of at least 1",
            ));
        }
        let subjects = filter.subjects(&self.subjects, &self.groups)?;
        let batch = limit.saturating_add(1).min(READ_BATCH);
        let start = after.map(|a| a.saturating_add(1));
        self.read_page(filter, &subjects, start, limit, batch)
            .await
            .map_err(|e| e.denied_on(&self.denials, stream_api(&self.dlq_stream)))
    }

    async fn read_page(
        &self,
        filter: &DeadLetterFilter,
        subjects: &[String],
        start: Option<u64>,
        limit: usize,
        batch: usize,
    ) -> Result<DeadLetterPage, StreamingError> {
        let mut read =
            OrderedRead::open_filters(&self.js, &self.dlq_stream, subjects, start, false, batch)
                .await?;
        let mut page = DeadLetterPage::default();
        while let Some(msg) = read.next().await? {
            let stored = stored_of(msg)?;
            if !filter.matches_content(&stored.letter) {
                continue;
            }
            if page.letters.len() == limit {
                page.next_after = page.letters.last().map(|s| s.dlq_sequence);
                read.close().await;
                return Ok(page);
            }
            page.letters.push(stored);
        }
        Ok(page)
    }

    /// Calls `each` with every dead letter matching `filter`, one at a time, oldest
    /// first. The reader holds at most `READ_BATCH` records besides the one handed
    /// over, so memory is bounded whatever the DLQ's size.
    pub(crate) async fn for_each(
        &self,
        filter: &DeadLetterFilter,
        mut each: impl FnMut(StoredDeadLetter) -> Result<(), StreamingError>,
    ) -> Result<(), StreamingError> {
        let subjects = filter.subjects(&self.subjects, &self.groups)?;
        let visit = async {
            let mut read = OrderedRead::open_filters(
                &self.js,
                &self.dlq_stream,
                &subjects,
                None,
                false,
                READ_BATCH,
            )
            .await?;
            while let Some(msg) = read.next().await? {
                let stored = stored_of(msg)?;
                if filter.matches_content(&stored.letter) {
                    each(stored)?;
                }
            }
            Ok(())
        };
        visit
            .await
            .map_err(|e: StreamingError| e.denied_on(&self.denials, stream_api(&self.dlq_stream)))
    }

    /// How many dead letters match `filter`. A filter on consumer and person alone is
    /// answered from the server's count of messages on the filter's subjects, reading
    /// none; a filter on reason or time reads the records one at a time (memory stays
    /// bounded, but the time grows with the DLQ).
    pub async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StreamingError> {
        let subjects = filter.subjects(&self.subjects, &self.groups)?;
        if !filter.has_content() {
            return count_matching(&self.js, &self.dlq_stream, &subjects)
                .await
                .map_err(|e| e.denied_on(&self.denials, stream_api(&self.dlq_stream)));
        }
        let mut n = 0u64;
        self.for_each(filter, |_| {
            n += 1;
            Ok(())
        })
        .await?;
        Ok(n)
    }

    /// Dead letters matching `filter`, counted by consumer and reason, sorted by
    /// consumer, then by count (largest first), then by reason.
    ///
    /// The reason is in each record's body, so every matching record is read, one at a
    /// time: memory grows with the number of distinct (consumer, reason) pairs, not
    /// with the DLQ.
    pub async fn counts(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetterCount>, StreamingError> {
        let mut counts = std::collections::BTreeMap::<(String, String), usize>::new();
        self.for_each(filter, |stored| {
            let letter = stored.letter;
            let reason = if letter.reason.starts_with(BLOCKED_BY_PREFIX) {
                PARKED_REASON.to_owned()
            } else {
                letter.reason
            };
            *counts.entry((letter.consumer, reason)).or_default() += 1;
            Ok(())
        })
        .await?;
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
    ///
    /// Only that consumer's and person's subjects are read, one record at a time: memory
    /// grows with the letters returned, not with the DLQ.
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
        let mut out = Vec::new();
        self.for_each(&filter, |s| {
            if s.letter.reason == reason && s.dlq_sequence != stored.dlq_sequence {
                out.push(s);
            }
            Ok(())
        })
        .await?;
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
        let prefix = self.subjects.dlq_prefix();
        let filter = format!("{prefix}.{consumer}.*.*");
        let people: std::collections::BTreeSet<String> = self
            .subject_counts(&filter)
            .await?
            .into_iter()
            .filter_map(|s| {
                let rest = s.strip_prefix(prefix)?.strip_prefix('.')?;
                rest.split('.').nth(1).map(str::to_owned)
            })
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
        let filter = format!("{}.{consumer}.{person_id}.*", self.subjects.dlq_prefix());
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

    /// The DLQ stream's last sequence (0 when empty): a letter stored from now on comes
    /// after it, so a run that must not pick up what it causes (a replay that fails
    /// again is dead-lettered anew) stops there.
    pub async fn last_sequence(&self) -> Result<u64, StreamingError> {
        let name = &self.dlq_stream;
        let stream = self
            .js
            .get_stream(name)
            .await
            .map_err(|e| self.fail(format!("cannot look up stream {name}"), e))?;
        Ok(stream.cached_info().state.last_sequence)
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
        let mut stored = StoredDeadLetter {
            dlq_sequence,
            body: body_of(Some(&msg.headers)),
            letter,
        };
        self.load_body(&mut stored).await?;
        Ok(stored)
    }

    /// Replays a dead letter to the consumer that dead-lettered it. See
    /// [`replay_to`](Self::replay_to).
    pub async fn replay(&self, dlq_sequence: u64) -> Result<ReplayReceipt, StreamingError> {
        self.replay_to(dlq_sequence, None).await
    }

    /// Replays a dead letter to one consumer (`None`: the one that dead-lettered it),
    /// then deletes the dead letter.
    ///
    /// The event goes to `[P.]person.replay.<consumer>.<person_id>.<event_type>` in the
    /// event stream: outside the person's history (`[P.]person.events.<person_id>.>`,
    /// which [`AggregateReader`](crate::AggregateReader) and optimistic concurrency
    /// read), and inside the filters of that consumer alone. Bytes and headers are the
    /// original's, except `Nats-Msg-Id`, publish-time controls (expectations, batch
    /// headers), and [`REPLAY_OF_HEADER`] / [`REPLAYED_AT_HEADER`] recording the replay.
    ///
    /// Idempotent: the replay's `Nats-Msg-Id` is derived from the DLQ stream, the DLQ
    /// sequence and the consumer, and the last replay on the subject is checked too, so
    /// a retried or concurrent replay stores one copy and reports
    /// [`already_replayed`](ReplayReceipt::already_replayed). A dead letter another
    /// replay deleted meanwhile is not an error.
    ///
    /// Refused, with the dead letter left in place:
    /// - a truncated record ([`DeadLetter::is_truncated`]): [`StreamingErrorKind::Truncated`];
    /// - a record that is not about an event (an operation failure):
    ///   [`StreamingErrorKind::InvalidInput`];
    /// - a consumer that does not exist ([`StreamingErrorKind::NotFound`]) or does not
    ///   read its replay subject, i.e. was created before replay subjects existed
    ///   ([`StreamingErrorKind::InvalidInput`]; `ensure` / `person-stream setup` adds it).
    pub async fn replay_to(
        &self,
        dlq_sequence: u64,
        consumer: Option<&str>,
    ) -> Result<ReplayReceipt, StreamingError> {
        let stored = self.get(dlq_sequence).await?;
        let letter = &stored.letter;
        if letter.is_truncated() {
            return Err(truncated_replay(dlq_sequence, letter));
        }
        if let Some(body) = stored.body.as_ref().filter(|b| !b.loaded) {
            return Err(StreamingError::new(
                StreamingErrorKind::Truncated,
                format!(
                    "dead letter at DLQ sequence {dlq_sequence} cannot be replayed: its body, object {} in bucket {}, is gone or does not match its digest {}; republish the original (stream sequence {} of {}) if it is still kept, then delete this dead letter",
                    body.name, self.bodies, body.digest, letter.stream_sequence, letter.stream
                ),
            ));
        }
        let consumer = consumer.unwrap_or(&letter.consumer);
        token("consumer", consumer)?;
        let (person_id, event_type) = event_of(letter).ok_or_else(|| {
            StreamingError::new(
                StreamingErrorKind::InvalidInput,
                format!(
                    "dead letter at DLQ sequence {dlq_sequence} is not about a stored event (subject `{}`): there is nothing to replay",
                    letter.subject.escape_debug()
                ),
            )
        })?;
        let target = self
            .subjects
            .replay_subject(consumer, &person_id, &event_type)
            .map_err(|e| {
                StreamingError::with_source(
                    StreamingErrorKind::InvalidInput,
                    "invalid replay subject",
                    e,
                )
            })?;
        let events = self
            .js
            .get_stream_no_info(&self.events_stream)
            .await
            .map_err(|e| self.fail(format!("cannot open stream {}", self.events_stream), e))?;
        self.check_reads_replays(&events, consumer, &target).await?;
        let replay_id = format!("replay:{}:{dlq_sequence}:{consumer}", self.dlq_stream);
        if let Some(seq) = self.replayed_at(&events, &target, &replay_id).await? {
            self.delete_if_present(&stored).await?;
            return Ok(ReplayReceipt {
                dlq_sequence,
                stream_sequence: seq,
                already_replayed: true,
            });
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
            .publish_with_headers(target.clone(), headers, letter.payload.clone())
            .await
            .map_err(|e| {
                js_error(format!("cannot replay to {target}"), e)
                    .denied_on(&self.denials, [&target])
            })?
            .await
            .map_err(|e| {
                js_error(
                    format!(
                        "replay to {target} was not stored (does stream {} capture the replay subjects? run `person-stream setup`)",
                        self.events_stream
                    ),
                    e,
                )
                .denied_on(&self.denials, [&target])
            })?;
        self.delete_if_present(&stored).await?;
        Ok(ReplayReceipt {
            dlq_sequence,
            stream_sequence: ack.sequence,
            already_replayed: ack.duplicate,
        })
    }

    /// Refuses a replay `consumer` would never receive: a missing consumer, or one whose
    /// filters leave out its replay subject, unless it is a group's partition whose
    /// replay consumer (`<consumer>-replays`) reads it.
    async fn check_reads_replays(
        &self,
        events: &jetstream::stream::Stream<()>,
        consumer: &str,
        target: &str,
    ) -> Result<(), StreamingError> {
        let Err(e) = self.check_reads(events, consumer, target).await else {
            return Ok(());
        };
        if e.kind() == StreamingErrorKind::InvalidInput
            && self
                .check_reads(events, &format!("{consumer}-replays"), target)
                .await
                .is_ok()
        {
            return Ok(());
        }
        Err(e)
    }

    async fn check_reads(
        &self,
        events: &jetstream::stream::Stream<()>,
        consumer: &str,
        target: &str,
    ) -> Result<(), StreamingError> {
        let info = events.consumer_info(consumer).await.map_err(|e| {
            if classify(&e) == StreamingErrorKind::NotFound {
                StreamingError::with_source(
                    StreamingErrorKind::NotFound,
                    format!(
                        "no consumer `{consumer}` on stream {}: nothing would receive the replay",
                        self.events_stream
                    ),
                    e,
                )
            } else {
                self.fail(format!("cannot read consumer {consumer}"), e)
            }
        })?;
        let filters: Vec<&String> = std::iter::once(&info.config.filter_subject)
            .filter(|f| !f.is_empty())
            .chain(&info.config.filter_subjects)
            .collect();
        let reads = filters.is_empty()
            || filters
                .iter()
                .any(|f| crate::config::subject_within(target, f));
        if reads {
            return Ok(());
        }
        Err(StreamingError::new(
            StreamingErrorKind::InvalidInput,
            format!(
                "consumer `{consumer}` does not read its replays ({} is outside its filters {filters:?}): run `person-stream setup` (or StreamingClient::ensure) to add {}",
                target,
                self.subjects.replay_filter(consumer)
            ),
        ))
    }

    /// The stream sequence of an earlier replay with `replay_id` as the last message on
    /// `target`, if there is one: it covers a retry after the duplicate window.
    async fn replayed_at(
        &self,
        events: &jetstream::stream::Stream<()>,
        target: &str,
        replay_id: &str,
    ) -> Result<Option<u64>, StreamingError> {
        match events.get_last_raw_message_by_subject(target).await {
            Ok(msg) => Ok(msg
                .headers
                .get(header::NATS_MESSAGE_ID.as_ref())
                .is_some_and(|v| v.as_str() == replay_id)
                .then_some(msg.sequence)),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(self.fail(format!("cannot read the last replay on {target}"), e)),
        }
    }

    /// Deletes a dead letter just read, with its body object; one already gone
    /// (another replay or purge) is fine. The record is not read again.
    async fn delete_if_present(&self, stored: &StoredDeadLetter) -> Result<(), StreamingError> {
        let stream = self
            .js
            .get_stream_no_info(&self.dlq_stream)
            .await
            .map_err(|e| self.fail(format!("cannot open stream {}", self.dlq_stream), e))?;
        let deleted = self
            .delete_record(&stream, stored.dlq_sequence, stored.body.clone(), true)
            .await;
        // Another replay or a purge may have taken the letter meanwhile (the record
        // is not read again first): the letter is gone all the same, which is what
        // the caller asked for.
        already_gone_is_done(deleted)
    }

    /// Deletes one dead letter, and its body object if it has one.
    pub async fn delete(&self, dlq_sequence: u64) -> Result<(), StreamingError> {
        let stream = self
            .js
            .get_stream_no_info(&self.dlq_stream)
            .await
            .map_err(|e| self.fail(format!("cannot open stream {}", self.dlq_stream), e))?;
        let body = match stream.get_raw_message(dlq_sequence).await {
            Ok(msg) => body_of(Some(&msg.headers)),
            Err(_) => None,
        };
        self.delete_record(&stream, dlq_sequence, body, true).await
    }

    /// Deletes the record at `dlq_sequence`, then `body`, the object its headers name.
    /// `erase` overwrites the record on the server (the default of a delete); without
    /// it, as in a purge, the record is dropped, much faster on a file store.
    async fn delete_record(
        &self,
        stream: &jetstream::stream::Stream<()>,
        dlq_sequence: u64,
        body: Option<BodyObject>,
        erase: bool,
    ) -> Result<(), StreamingError> {
        if erase {
            stream.delete_message(dlq_sequence).await.map_err(|e| {
                if classify(&e) == StreamingErrorKind::NotFound {
                    StreamingError::with_source(
                        StreamingErrorKind::NotFound,
                        format!("no dead letter at DLQ sequence {dlq_sequence}"),
                        e,
                    )
                } else {
                    self.fail(format!("cannot delete dead letter {dlq_sequence}"), e)
                }
            })?;
        } else {
            self.drop_record(dlq_sequence).await?;
        }
        self.delete_body(body).await;
        Ok(())
    }

    /// Deletes the record at `dlq_sequence` without erasing it (`no_erase`).
    async fn drop_record(&self, dlq_sequence: u64) -> Result<(), StreamingError> {
        let subject = format!("STREAM.MSG.DELETE.{}", self.dlq_stream);
        let request = serde_json::json!({ "seq": dlq_sequence, "no_erase": true });
        let response: serde_json::Value = self
            .js
            .request(subject, &request)
            .await
            .map_err(|e| self.fail(format!("cannot delete dead letter {dlq_sequence}"), e))?;
        match response.get("error") {
            None => Ok(()),
            Some(error) => Err(delete_refused(dlq_sequence, error)),
        }
    }

    /// Deletes a record's body object, if it names one. A failure is logged: the object
    /// expires with the bucket's max age.
    async fn delete_body(&self, body: Option<BodyObject>) {
        // The record first: a record is never left without its body. An object left
        // behind by a failure here expires with the bucket's max age.
        if let Some(body) = body
            && let Ok(bucket) = self.js.get_object_store(&self.bodies).await
            && let Err(e) = bucket.delete(&body.name).await
        {
            tracing::warn!(object = %body.name, bucket = %self.bodies, error = %e, "cannot delete a dead letter's body object");
        }
    }

    /// Removes a batch read in order from `subjects` with one purge request each (every
    /// message on the subject below the batch's last sequence + 1, which are those of
    /// the batch), then their body objects. Each sequence is reported done; a failed
    /// request is reported for each.
    async fn purge_batch(
        &self,
        stream: &jetstream::stream::Stream<()>,
        subjects: &[String],
        batch: &mut Vec<(u64, Option<BodyObject>)>,
    ) -> Result<Vec<(u64, Result<(), StreamingError>)>, StreamingError> {
        use futures::StreamExt;
        let Some(last) = batch.last().map(|(seq, _)| *seq) else {
            return Ok(Vec::new());
        };
        let mut purged = Ok(());
        for subject in subjects {
            purged = stream
                .purge()
                .filter(subject)
                .sequence(last.saturating_add(1))
                .await
                .map(|_| ());
            if purged.is_err() {
                break;
            }
        }
        if let Err(e) = purged {
            let text = e.to_string();
            return Ok(batch
                .drain(..)
                .map(|(seq, _)| {
                    (
                        seq,
                        Err(StreamingError::new(
                            StreamingErrorKind::JetStream,
                            format!("cannot purge dead letter {seq}: {text}"),
                        )),
                    )
                })
                .collect());
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut bodies = Vec::new();
        for (seq, body) in batch.drain(..) {
            done.push((seq, Ok(())));
            bodies.extend(body);
        }
        futures::stream::iter(bodies)
            .for_each_concurrent(DELETES_IN_FLIGHT, |body| self.delete_body(Some(body)))
            .await;
        Ok(done)
    }

    /// Deletes every dead letter matching `filter`, and their body objects; returns how
    /// many. Stops at the first failure, returning it (the letters deleted until then
    /// stay deleted). See [`purge_with`](Self::purge_with).
    pub async fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, StreamingError> {
        let mut failed = None;
        let purged = self
            .purge_with(filter, |_, result| match result {
                Ok(()) => true,
                Err(e) => {
                    failed.get_or_insert(e);
                    false
                }
            })
            .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(purged),
        }
    }

    /// Deletes the dead letters matching `filter` as they are read, oldest first, and
    /// their body objects; returns how many were deleted.
    ///
    /// Letters are read through an ordered consumer and deleted in batches of at most
    /// 256 (several deletes in flight), so memory is bounded whatever the
    /// DLQ's size and no list of sequences is built first. A filter on consumer and
    /// person alone reads headers only (the body object is named there); one on reason
    /// or time reads each record. `each` is called with every sequence deleted or that
    /// could not be, after its batch; returning `false` stops after that batch. A letter
    /// deleted by someone else meanwhile is skipped. A failure to read the DLQ is the
    /// error returned; failures to delete go to `each`.
    pub async fn purge_with(
        &self,
        filter: &DeadLetterFilter,
        mut each: impl FnMut(u64, Result<(), StreamingError>) -> bool,
    ) -> Result<usize, StreamingError> {
        use futures::StreamExt;
        let subjects = filter.subjects(&self.subjects, &self.groups)?;
        let headers_only = !filter.has_content();
        let denied = |e: StreamingError| e.denied_on(&self.denials, stream_api(&self.dlq_stream));
        let stream = self
            .js
            .get_stream_no_info(&self.dlq_stream)
            .await
            .map_err(|e| self.fail(format!("cannot open stream {}", self.dlq_stream), e))?;
        let mut read = OrderedRead::open_filters(
            &self.js,
            &self.dlq_stream,
            &subjects,
            None,
            headers_only,
            READ_BATCH,
        )
        .await
        .map_err(denied)?;
        let mut batch: Vec<(u64, Option<BodyObject>)> = Vec::with_capacity(PURGE_BATCH);
        let mut purged = 0;
        loop {
            let msg = read.next().await.map_err(denied)?;
            let end = msg.is_none();
            if let Some(msg) = msg {
                if headers_only {
                    batch.push((msg.sequence, body_of(msg.headers.as_ref())));
                } else {
                    let stored = stored_of(msg)?;
                    if filter.matches_content(&stored.letter) {
                        batch.push((stored.dlq_sequence, stored.body));
                    }
                }
            }
            if batch.len() < PURGE_BATCH && (!end || batch.is_empty()) {
                if end {
                    return Ok(purged);
                }
                continue;
            }
            let results: Vec<(u64, Result<(), StreamingError>)> = if headers_only {
                // Every message on the filter's subjects up to the batch's last one is
                // in the batch (they are read in order): one purge request removes
                // them, then their bodies go.
                self.purge_batch(&stream, &subjects, &mut batch).await?
            } else {
                futures::stream::iter(batch.drain(..))
                    .map(|(seq, body)| {
                        let stream = &stream;
                        async move { (seq, self.delete_record(stream, seq, body, false).await) }
                    })
                    .buffer_unordered(DELETES_IN_FLIGHT)
                    .collect()
                    .await
            };
            let (deleted, go_on) = tally(results, &mut each);
            purged += deleted;
            if !go_on {
                read.close().await;
                return Ok(purged);
            }
            if end {
                return Ok(purged);
            }
        }
    }
}

/// A DLQ record as read, decoded.
fn stored_of(msg: Scanned) -> Result<StoredDeadLetter, StreamingError> {
    let letter: DeadLetter = serde_json::from_slice(&msg.payload).map_err(|e| {
        StreamingError::with_source(
            StreamingErrorKind::Decode,
            format!("DLQ message {} is not a dead letter", msg.sequence),
            e,
        )
    })?;
    Ok(StoredDeadLetter {
        dlq_sequence: msg.sequence,
        body: body_of(msg.headers.as_ref()),
        letter,
    })
}

/// How many records a DLQ read asks the server for at a time (at most this many are
/// buffered), and the page size [`DeadLetterQueue::list`] reads with.
pub(crate) const READ_BATCH: usize = 256;

/// How many dead letters [`DeadLetterQueue::purge_with`] deletes per batch.
pub(crate) const PURGE_BATCH: usize = 256;

/// Deletes in flight at a time within a purge batch.
const DELETES_IN_FLIGHT: usize = 32;

/// `true` when the bucket does not exist (rather than could not be reached).
pub(crate) fn bucket_missing(e: &jetstream::context::ObjectStoreError) -> bool {
    e.kind() == jetstream::context::ObjectStoreErrorKind::GetStore
        && classify(e) == StreamingErrorKind::NotFound
}

/// The body object a DLQ record names in its headers, not loaded yet.
fn body_of(headers: Option<&HeaderMap>) -> Option<BodyObject> {
    let headers = headers?;
    Some(BodyObject {
        name: headers.get(BODY_OBJECT_HEADER)?.as_str().to_owned(),
        digest: headers
            .get(BODY_DIGEST_HEADER)
            .map(|d| d.as_str().to_owned())
            .unwrap_or_default(),
        loaded: false,
    })
}

/// The person and event type a dead letter is about: from the letter's fields, else
/// from its subject (an event or an earlier replay).
fn event_of(letter: &DeadLetter) -> Option<(person_events::PersonId, String)> {
    if let Ok(e) = subject::parse_event_subject(&letter.subject) {
        return Some((e.person_id, e.event_type));
    }
    if let Ok(r) = subject::parse_replay_subject(&letter.subject) {
        return Some((r.person_id, r.event_type));
    }
    let person = letter.person_id.as_deref()?.parse().ok()?;
    let event_type = letter.event_type.clone()?;
    subject::validate_token("event_type", &event_type).ok()?;
    Some((person, event_type))
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
    // The skeleton: everything but body, headers and attempts, its size an upper bound
    // of the final record's: a mark the letter has already stays `true`, and one it
    // has not is spelled `false` (longer than the `true` a cut may make it), the
    // original size at its longest when the letter does not know it.
    let mut fit = DeadLetter {
        payload: Bytes::new(),
        headers: Vec::new(),
        attempts: Vec::new(),
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
            SinkError::with_source(
                sink_kind(e.kind()),
                "cannot store the dead letter on the DLQ stream",
                e,
            )
        })
    }
}

/// What a failed store tells the runtime: a timeout, a letter that cannot be encoded
/// or fit, a refusal (credentials, permissions, the server's rules), or the DLQ being
/// unavailable (anything else, retried).
fn sink_kind(kind: StreamingErrorKind) -> SinkErrorKind {
    match kind {
        StreamingErrorKind::TimedOut => SinkErrorKind::Timeout,
        StreamingErrorKind::InvalidInput => SinkErrorKind::Encode,
        StreamingErrorKind::Authentication
        | StreamingErrorKind::PermissionDenied
        | StreamingErrorKind::Rejected => SinkErrorKind::Rejected,
        _ => SinkErrorKind::Unavailable,
    }
}

/// A purge batch's results, in sequence order, told to `each`: how many were deleted,
/// and whether `each` lets the purge go on. A letter already gone (another purge or
/// replay took it) is neither counted nor told.
fn tally(
    mut results: Vec<(u64, Result<(), StreamingError>)>,
    each: &mut impl FnMut(u64, Result<(), StreamingError>) -> bool,
) -> (usize, bool) {
    results.sort_by_key(|(seq, _)| *seq);
    let mut deleted = 0;
    let mut go_on = true;
    for (seq, result) in results {
        match result {
            Err(e) if e.kind() == StreamingErrorKind::NotFound => continue,
            Ok(()) => deleted += 1,
            Err(_) => {}
        }
        go_on &= each(seq, result);
    }
    (deleted, go_on)
}

/// The error of a message delete the server refused (`error` is its API error):
/// NotFound when the message is not there, deleted already (10037, or 10057 saying
/// so) or past the stream's end (10057, "stream store EOF").
fn delete_refused(dlq_sequence: u64, error: &serde_json::Value) -> StreamingError {
    let description = error
        .get("description")
        .and_then(|d| d.as_str())
        .unwrap_or("refused");
    match error.get("err_code").and_then(|c| c.as_u64()) {
        Some(10037) => {}
        Some(10057) if crate::error::message_absent(description) => {}
        _ => {
            return StreamingError::new(
                StreamingErrorKind::JetStream,
                format!("cannot delete dead letter {dlq_sequence}: {description}"),
            );
        }
    }
    StreamingError::new(
        StreamingErrorKind::NotFound,
        format!("no dead letter at DLQ sequence {dlq_sequence}"),
    )
}

/// A deletion of a letter that is gone already is done; any other failure stays.
fn already_gone_is_done(deleted: Result<(), StreamingError>) -> Result<(), StreamingError> {
    match deleted {
        Err(e) if e.kind() == StreamingErrorKind::NotFound => Ok(()),
        other => other,
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
            attempts: Vec::new(),
        }
    }

    fn decode(body: &[u8]) -> DeadLetter {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn a_purge_batch_counts_deletes_skips_letters_already_gone_and_tells_failures() {
        let gone = || Err(StreamingError::new(StreamingErrorKind::NotFound, "gone"));
        let failed = || Err(StreamingError::new(StreamingErrorKind::TimedOut, "slow"));
        let mut told = Vec::new();
        let (deleted, go_on) = tally(
            vec![(5, Ok(())), (3, gone()), (4, failed()), (1, Ok(()))],
            &mut |seq, r: Result<(), StreamingError>| {
                told.push((seq, r.map_err(|e| e.kind())));
                true
            },
        );
        assert_eq!((deleted, go_on), (2, true));
        assert_eq!(
            told,
            vec![
                (1, Ok(())),
                (4, Err(StreamingErrorKind::TimedOut)),
                (5, Ok(()))
            ]
        );
        // Stopping after any of them stops the purge, the batch still told whole.
        let mut calls = 0;
        let (deleted, go_on) = tally(vec![(1, Ok(())), (2, Ok(()))], &mut |_, _| {
            calls += 1;
            calls != 1
        });
        assert_eq!((deleted, go_on, calls), (2, false, 2));
    }

    #[test]
    fn a_failed_store_tells_the_runtime_what_kind_of_failure_it_was() {
        use StreamingErrorKind as K;
        for (kind, sink) in [
            (K::TimedOut, SinkErrorKind::Timeout),
            (K::InvalidInput, SinkErrorKind::Encode),
            (K::Authentication, SinkErrorKind::Rejected),
            (K::PermissionDenied, SinkErrorKind::Rejected),
            (K::Rejected, SinkErrorKind::Rejected),
            (K::Unavailable, SinkErrorKind::Unavailable),
            (K::Connect, SinkErrorKind::Unavailable),
            (K::NotFound, SinkErrorKind::Unavailable),
            (K::JetStream, SinkErrorKind::Unavailable),
        ] {
            assert_eq!(sink_kind(kind), sink, "{kind:?}");
        }
    }

    #[test]
    fn deleting_a_letter_that_is_gone_already_is_done() {
        assert!(already_gone_is_done(Ok(())).is_ok());
        assert!(
            already_gone_is_done(Err(StreamingError::new(
                StreamingErrorKind::NotFound,
                "gone"
            )))
            .is_ok()
        );
        for kind in [
            StreamingErrorKind::TimedOut,
            StreamingErrorKind::PermissionDenied,
        ] {
            let e = already_gone_is_done(Err(StreamingError::new(kind, "x"))).unwrap_err();
            assert_eq!(e.kind(), kind);
        }
    }

    #[test]
    fn a_refused_delete_of_a_message_that_is_not_there_is_not_found() {
        let refusal = |code: u64, description: &str| {
            delete_refused(
                9,
                &serde_json::json!({ "code": 400, "err_code": code, "description": description }),
            )
        };
        for (code, description) in [
            (10037, "no message found"),
            (10057, "no message found"),
            (10057, "stream store EOF"),
        ] {
            let e = refusal(code, description);
            assert_eq!(
                e.kind(),
                StreamingErrorKind::NotFound,
                "{code} {description}"
            );
            assert_eq!(e.to_string(), "no dead letter at DLQ sequence 9");
        }
        for (code, description) in [(10057, "the store is closed"), (10999, "no message found")] {
            let e = refusal(code, description);
            assert_eq!(
                e.kind(),
                StreamingErrorKind::JetStream,
                "{code} {description}"
            );
            assert!(e.to_string().contains(description), "{e}");
        }
    }

    #[test]
    fn any_of_reason_since_and_until_makes_a_filter_read_the_records() {
        let t = Utc::now();
        assert!(!DeadLetterFilter::default().has_content());
        let subjects_only = DeadLetterFilter {
            consumer: Some("projector".into()),
            person_id: Some("0190".into()),
            ..Default::default()
        };
        assert!(!subjects_only.has_content(), "answered from the subjects");
        for f in [
            DeadLetterFilter {
                reason_contains: Some("x".into()),
                ..Default::default()
            },
            DeadLetterFilter {
                since: Some(t),
                ..Default::default()
            },
            DeadLetterFilter {
                until: Some(t),
                ..Default::default()
            },
        ] {
            assert!(f.has_content(), "{f:?}");
        }
    }

    #[test]
    fn a_stored_letter_types_its_ids_and_says_none_for_what_is_not_one() {
        let event = person_events::EventId::new();
        let person = person_events::PersonId::new();
        let stored = |event_id: Option<String>, person_id: Option<String>| StoredDeadLetter {
            dlq_sequence: 7,
            letter: DeadLetter {
                event_id,
                person_id,
                ..letter(0, small_headers())
            },
            body: None,
        };
        let known = stored(Some(event.to_string()), Some(person.to_string()));
        assert_eq!(known.event_id(), Some(event));
        assert_eq!(known.person_id(), Some(person));
        let unreadable = stored(Some("e-1".into()), Some("0190".into()));
        assert_eq!(unreadable.event_id(), None);
        assert_eq!(unreadable.person_id(), None);
        let unknown = stored(None, None);
        assert_eq!(unknown.event_id(), None);
        assert_eq!(unknown.person_id(), None);
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

    /// Every limit from a few bytes under the smallest record the letter can have to
    /// past its whole size, finely near the thresholds: the record fits, keeps what
    /// it promises, says what it cut, and wastes little room.
    #[test]
    fn every_limit_gives_a_record_that_fits_keeps_the_most_and_says_what_it_cut() {
        let attempts = (0..3)
            .map(|i| person_retry::Attempt {
                at: Utc::now(),
                delivery_count: i + 1,
                class: ErrorClass::Transient,
                reason: format!("attempt {i} failed"),
            })
            .collect::<Vec<_>>();
        let plain = DeadLetter {
            attempts: attempts.clone(),
            ..letter(6_000, small_headers())
        };
        let cut_before = DeadLetter {
            payload_truncated: true,
            headers_truncated: true,
            original_size: Some(900_000),
            ..plain.clone()
        };
        let many_headers = DeadLetter {
            headers: (0..12)
                .map(|i| (format!("x-h{i}"), "v".repeat(300 + i)))
                .collect(),
            ..letter(2_000, Vec::new())
        };
        // 1024 is no character boundary here: the cut keeps 1023 bytes.
        let long_reason = DeadLetter {
            reason: format!("a{}", "é".repeat(1_500)),
            ..letter(4_000, small_headers())
        };
        // A reason of exactly the length kept is never cut.
        let kept_reason = DeadLetter {
            reason: "r".repeat(REASON_KEPT),
            ..letter(4_000, small_headers())
        };
        let json_len = |l: &DeadLetter| serde_json::to_vec(l).unwrap().len();
        for l in [plain, cut_before, many_headers, long_reason, kept_reason] {
            let whole = json_len(&l);
            let cut_reason = if l.reason.len() > REASON_KEPT {
                format!("{}{REASON_CUT}", &l.reason[..REASON_KEPT - 1])
            } else {
                l.reason.clone()
            };
            // The smallest records: no body, headers or attempts; the marks at their
            // longest.
            let bare = |reason: &str, metadata| DeadLetter {
                payload: Bytes::new(),
                headers: Vec::new(),
                attempts: Vec::new(),
                payload_truncated: l.payload_truncated,
                headers_truncated: l.headers_truncated,
                original_size: if l.payload_truncated {
                    l.original_size.or(Some(u64::MAX))
                } else {
                    Some(l.payload.len() as u64)
                },
                reason: reason.to_owned(),
                metadata,
                ..l.clone()
            };
            // The reason is cut first, then the metadata dropped, while the rest does
            // not fit.
            let smallest = json_len(&bare(&cut_reason, None));
            let with_metadata = json_len(&bare(&cut_reason, l.metadata.clone()));
            let with_reason = json_len(&bare(&l.reason, l.metadata.clone()));
            let headers: usize = l
                .headers
                .iter()
                .map(|h| serde_json::to_vec(h).unwrap().len() + 1)
                .sum();
            let mut limits: Vec<usize> = (smallest - 20..whole + 20).step_by(101).collect();
            for at in [
                smallest,
                with_metadata,
                with_reason,
                with_reason + headers,
                whole,
            ] {
                limits.extend(at.saturating_sub(12)..at + 12);
            }
            for limit in limits {
                let what = format!("limit {limit} (smallest {smallest}, whole {whole})");
                let record = match encode_record(&l, limit) {
                    Ok(r) => r,
                    Err(e) => {
                        assert!(limit < smallest, "{what}: {e}");
                        assert_eq!(e.kind(), StreamingErrorKind::InvalidInput);
                        continue;
                    }
                };
                assert!(record.len() <= limit, "{what}: {} bytes", record.len());
                if limit >= whole {
                    assert_eq!(record, serde_json::to_vec(&l).unwrap(), "{what}");
                    continue;
                }
                let got = decode(&record);
                assert_eq!(got.payload, l.payload.slice(..got.payload.len()), "{what}");
                let mut rest = l.headers.iter();
                for h in &got.headers {
                    assert!(rest.any(|x| x == h), "{what}: {h:?} not in order");
                }
                let payload_cut = got.payload.len() < l.payload.len();
                assert_eq!(
                    got.payload_truncated,
                    l.payload_truncated || payload_cut,
                    "{what}"
                );
                assert_eq!(
                    got.headers_truncated,
                    l.headers_truncated || got.headers.len() < l.headers.len(),
                    "{what}"
                );
                let size = if l.payload_truncated {
                    l.original_size
                } else {
                    Some(l.payload.len() as u64)
                };
                assert_eq!(
                    got.original_size,
                    got.payload_truncated.then_some(size).flatten(),
                    "{what}"
                );
                assert!(
                    got.attempts.is_empty(),
                    "{what}: a cut record keeps no attempts"
                );
                if limit >= with_reason {
                    assert_eq!(got.reason, l.reason, "{what}");
                } else {
                    assert_eq!(got.reason, cut_reason, "{what}");
                }
                if limit >= with_metadata {
                    assert_eq!(got.metadata, l.metadata, "{what}");
                }
                if limit >= with_reason + headers {
                    assert_eq!(got.headers, l.headers, "{what}: every header fits");
                }
                if payload_cut && got.headers.len() == l.headers.len() {
                    // Base64 rounding, and the marks spelled at their longest.
                    assert!(limit - record.len() <= 6, "{what}: {} bytes", record.len());
                }
            }
        }
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
        let none = BTreeMap::new();
        let all = DeadLetterFilter::default();
        assert_eq!(
            all.subjects(&Default::default(), &none).unwrap(),
            ["person.dlq.*.*.*"]
        );
        for bad in ["*", ">", "a.b", "a b", ""] {
            let f = DeadLetterFilter {
                person_id: Some(bad.into()),
                ..DeadLetterFilter::default()
            };
            assert_eq!(
                f.subjects(&Default::default(), &none).unwrap_err().kind(),
                StreamingErrorKind::InvalidInput,
                "{bad:?}"
            );
            let f = DeadLetterFilter {
                consumer: Some(bad.into()),
                ..DeadLetterFilter::default()
            };
            assert!(f.subjects(&Default::default(), &none).is_err(), "{bad:?}");
        }
        // A group's name stands for its durables, each a subject of its own.
        let groups = BTreeMap::from([("g".to_owned(), vec!["g".to_owned(), "g-p0".to_owned()])]);
        let f = DeadLetterFilter {
            consumer: Some("g".into()),
            person_id: Some("p".into()),
            ..DeadLetterFilter::default()
        };
        assert_eq!(
            f.subjects(&Default::default(), &groups).unwrap(),
            ["person.dlq.g.p.*", "person.dlq.g-p0.p.*"]
        );
    }
}
