//! Operating a consumer of the event stream: pause it, resume it, rewind it.
//!
//! - [`StreamingClient::pause_consumer`] / [`StreamingClient::resume_consumer`]: the
//!   server stops delivering to the consumer until a time (nats-server 2.11+). Pull
//!   requests are held, nothing is delivered or redelivered, acknowledgements of what
//!   was in hand are still taken. The server resumes it by itself at that time.
//! - [`StreamingClient::plan_rewind`] / [`StreamingClient::rewind_consumer`]: move the
//!   consumer's position back (or forward) through the server's consumer reset
//!   (nats-server 2.14+), with a dry run that says what it would do.
//!
//! # What "rewind to N" means
//!
//! After a rewind to stream sequence `N` the consumer's ack floor is `N - 1` and nothing
//! is outstanding: the next message it delivers is `N` when `N` is stored and matches
//! its filter, otherwise the first message after `N` that does. Every matching message
//! from there on is delivered again, in stream order, whether it was acknowledged before
//! or not. A rewind to time `T` is a rewind to the first message stored at or after `T`.
//!
//! Only the consumer named is touched, on the configured event stream; its settings
//! (filter, ack wait, pause) stay as they are. A runtime consuming it meanwhile gets the
//! messages again from `N` on, and its acknowledgements of messages it held before the
//! rewind are dropped by the server; pause the consumer first for a clean cut.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Deserialize;

use crate::StreamingClient;
use crate::error::{StreamingError, StreamingErrorKind, api_kind, js_error};

/// Where to rewind a consumer to.
///
/// After a rewind to stream sequence `N` the consumer's ack floor is `N - 1` and nothing
/// is outstanding: the next message it delivers is `N` when `N` is stored and matches
/// its filter, otherwise the first message after `N` that does. Every matching message
/// from there on is delivered again, in stream order, whether it was acknowledged before
/// or not. A rewind to a time is a rewind to the first message stored at or after it.
/// The consumer's settings (filter, ack wait, pause) stay as they are. A subscriber
/// consuming it meanwhile gets the messages again from `N` on, and the server drops its
/// acknowledgements of messages it held before the rewind; pause the consumer first for
/// a clean cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    /// The next message delivered is this stream sequence (or, when it is not stored or
    /// does not match the consumer's filter, the first matching one after it). From 1
    /// to the stream's last sequence.
    ToSequence(u64),
    /// The next message delivered is the first one stored at or after this time. Not in
    /// the future, and not after the last stored message.
    ToTime(DateTime<Utc>),
}

/// What a rewind would do, from [`StreamingClient::plan_rewind`]; also part of what
/// [`StreamingClient::rewind_consumer`] did. Counts are of messages matching the
/// consumer's filter, at the time of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewindPlan {
    /// The consumer (durable name).
    pub consumer: String,
    /// The event stream.
    pub stream: String,
    /// What was asked for.
    pub rewind: Rewind,
    /// The stream sequence the consumer delivers next after the rewind (`N`): the
    /// sequence asked for, or the first stored at or after the time asked for.
    pub target_sequence: u64,
    /// The stream's last sequence.
    pub last_sequence: u64,
    /// The consumer's ack floor now: everything up to it is acknowledged.
    pub ack_floor: u64,
    /// The consumer's ack floor after the rewind (`N - 1`).
    pub new_ack_floor: u64,
    /// The stream sequence the consumer delivered last.
    pub delivered_sequence: u64,
    /// Messages delivered and not acknowledged now; the rewind forgets them (those at or
    /// after `N` are delivered again, those before are not).
    pub ack_pending: u64,
    /// Messages from `N` up to the last delivered one: delivered before, delivered
    /// again after the rewind.
    pub delivered_again: u64,
    /// Messages after the current ack floor and before `N` (a rewind forward): never
    /// delivered again, acknowledged or not. 0 for a rewind back.
    pub skipped: u64,
    /// Messages from `N` to the end of the stream: what the consumer has to deliver
    /// right after the rewind (its `pending`).
    pub pending_after: u64,
    /// Whether the consumer is paused (a rewind keeps it paused).
    pub paused: bool,
}

/// What [`StreamingClient::rewind_consumer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewindReceipt {
    /// The plan it carried out.
    pub plan: RewindPlan,
    /// The consumer's ack floor after the reset, as the server reports it.
    pub ack_floor: u64,
    /// Messages the consumer has to deliver after the reset, as the server reports it.
    pub pending: u64,
}

/// A consumer's pause state, from [`StreamingClient::pause_consumer`] and
/// [`StreamingClient::resume_consumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseState {
    /// The consumer (durable name).
    pub consumer: String,
    /// Whether the server holds its deliveries now.
    pub paused: bool,
    /// Until when, while paused.
    pub until: Option<DateTime<Utc>>,
}

/// The time a pause "until further notice" lasts to: 2999-12-31T23:59:59Z. The server
/// needs a time; this one is far enough that only [`StreamingClient::resume_consumer`]
/// ends the pause. [`crate::ConsumerStatus::is_paused_indefinitely`] recognises it.
pub fn indefinite_pause() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2999, 12, 31, 23, 59, 59)
        .single()
        .expect("a valid date")
}

/// The server version pausing needs.
const PAUSE_VERSION: (u64, u64) = (2, 11);
/// The server version resetting a consumer needs.
const RESET_VERSION: (u64, u64) = (2, 14);

impl StreamingClient {
    /// Pauses consumer `durable` of the event stream until `until`: the server delivers
    /// nothing to it (new messages and redeliveries alike) until then, or until
    /// [`resume_consumer`](Self::resume_consumer). Pull requests wait meanwhile, so a
    /// running runtime simply sees nothing; what it holds it can still acknowledge.
    /// [`indefinite_pause`] pauses until further notice.
    ///
    /// Errors: [`StreamingErrorKind::InvalidInput`] for an invalid name or a time not in
    /// the future; [`StreamingErrorKind::NotFound`] when the stream or consumer does not
    /// exist; [`StreamingErrorKind::Rejected`] on a server older than 2.11.
    pub async fn pause_consumer(
        &self,
        durable: &str,
        until: DateTime<Utc>,
    ) -> Result<PauseState, StreamingError> {
        check_name(durable)?;
        if until <= Utc::now() {
            return Err(StreamingError::new(
                StreamingErrorKind::InvalidInput,
                format!(
                    "cannot pause consumer {durable} until {}: that is not in the future (resume it instead)",
                    rfc3339(until)
                ),
            ));
        }
        self.require_server(PAUSE_VERSION, "pausing a consumer")?;
        let stream = self.event_stream().await?;
        self.existing_consumer(&stream, durable).await?;
        let at = to_nats(until)?;
        let response = stream
            .pause_consumer(durable, at)
            .await
            .map_err(|e| self.op_error(format!("cannot pause consumer {durable}"), e, durable))?;
        Ok(PauseState {
            consumer: durable.to_owned(),
            paused: response.paused,
            until: response.paused.then(|| to_chrono(response.pause_until)),
        })
    }

    /// Resumes consumer `durable` of the event stream: the server delivers to it again
    /// at once. Resuming a consumer that is not paused changes nothing. Errors as
    /// [`pause_consumer`](Self::pause_consumer).
    pub async fn resume_consumer(&self, durable: &str) -> Result<PauseState, StreamingError> {
        check_name(durable)?;
        self.require_server(PAUSE_VERSION, "resuming a consumer")?;
        let stream = self.event_stream().await?;
        self.existing_consumer(&stream, durable).await?;
        let response = stream
            .resume_consumer(durable)
            .await
            .map_err(|e| self.op_error(format!("cannot resume consumer {durable}"), e, durable))?;
        Ok(PauseState {
            consumer: durable.to_owned(),
            paused: response.paused,
            until: response.paused.then(|| to_chrono(response.pause_until)),
        })
    }

    /// What [`rewind_consumer`](Self::rewind_consumer) would do, changing nothing: where
    /// the consumer is, where it would be, and how many messages it would deliver again
    /// (see [`Rewind`] for what a rewind to `N` means). It reads the
    /// consumer and counts through short-lived consumers of its own, removed before it
    /// returns; the consumer named is not touched.
    ///
    /// Errors: [`StreamingErrorKind::InvalidInput`] for an invalid name, sequence 0, a
    /// sequence past the stream's last one, a time in the future or after the last
    /// message, or a consumer whose deliver policy cannot be reset to a sequence (only
    /// `all`, `by_start_sequence` and `by_start_time` can, and not before their start);
    /// [`StreamingErrorKind::NotFound`] when the stream or consumer does not exist;
    /// [`StreamingErrorKind::Rejected`] on a server older than 2.14, which cannot reset.
    pub async fn plan_rewind(
        &self,
        durable: &str,
        rewind: Rewind,
    ) -> Result<RewindPlan, StreamingError> {
        check_name(durable)?;
        self.require_server(RESET_VERSION, "rewinding a consumer")?;
        let stream = self.event_stream().await?;
        let info = self.existing_consumer(&stream, durable).await?;
        let state = stream
            .get_info()
            .await
            .map_err(|e| js_error(format!("cannot read stream {}", stream_name(self)), e))?
            .state;
        let last = state.last_sequence;
        let target = self.resolve(durable, rewind, last).await?;
        check_policy(self, durable, &info.config.deliver_policy, target).await?;
        let filters = filters_of(&info.config);
        let from_target = count_from(&stream, &filters, target, last).await?;
        let delivered = info.delivered.stream_sequence;
        let ack_floor = info.ack_floor.stream_sequence;
        let delivered_again = if target <= delivered {
            from_target.saturating_sub(count_from(&stream, &filters, delivered + 1, last).await?)
        } else {
            0
        };
        let skipped = if target > ack_floor + 1 {
            count_from(&stream, &filters, ack_floor + 1, last)
                .await?
                .saturating_sub(from_target)
        } else {
            0
        };
        Ok(RewindPlan {
            consumer: durable.to_owned(),
            stream: stream_name(self).to_owned(),
            rewind,
            target_sequence: target,
            last_sequence: last,
            ack_floor,
            new_ack_floor: target - 1,
            delivered_sequence: delivered,
            ack_pending: info.num_ack_pending as u64,
            delivered_again,
            skipped,
            pending_after: from_target,
            paused: info.paused,
        })
    }

    /// Rewinds consumer `durable` of the event stream (see [`Rewind`]):
    /// after it, the consumer's ack floor is `N - 1`, nothing is outstanding, and the
    /// next message it delivers is `N` (or the first matching message after it). The
    /// plan is made first, so the errors are those of
    /// [`plan_rewind`](Self::plan_rewind), plus the server's refusal of the reset.
    pub async fn rewind_consumer(
        &self,
        durable: &str,
        rewind: Rewind,
    ) -> Result<RewindReceipt, StreamingError> {
        let plan = self.plan_rewind(durable, rewind).await?;
        let stream = self.event_stream().await?;
        let response = stream
            .reset_consumer(durable, Some(plan.target_sequence))
            .await
            .map_err(|e| reset_error(durable, e))?;
        Ok(RewindReceipt {
            ack_floor: response.info.ack_floor.stream_sequence,
            pending: response.info.num_pending,
            plan,
        })
    }

    /// The stream sequence a rewind goes to, checked against the stream.
    async fn resolve(
        &self,
        durable: &str,
        rewind: Rewind,
        last: u64,
    ) -> Result<u64, StreamingError> {
        let name = stream_name(self);
        let invalid = |m: String| StreamingError::new(StreamingErrorKind::InvalidInput, m);
        if last == 0 {
            return Err(invalid(format!(
                "cannot rewind consumer {durable}: stream {name} has never held a message"
            )));
        }
        match rewind {
            Rewind::ToSequence(0) => Err(invalid(
                "cannot rewind to sequence 0: stream sequences start at 1".into(),
            )),
            Rewind::ToSequence(n) if n > last => Err(invalid(format!(
                "cannot rewind consumer {durable} to sequence {n}: stream {name} ends at sequence {last}"
            ))),
            Rewind::ToSequence(n) => Ok(n),
            Rewind::ToTime(t) if t > Utc::now() => Err(invalid(format!(
                "cannot rewind consumer {durable} to {}: that is in the future",
                rfc3339(t)
            ))),
            Rewind::ToTime(t) => match first_at_or_after(self.jetstream(), name, t).await? {
                Some(seq) => Ok(seq),
                None => Err(invalid(format!(
                    "cannot rewind consumer {durable} to {}: stream {name} holds no message stored at or after it",
                    rfc3339(t)
                ))),
            },
        }
    }

    async fn event_stream(&self) -> Result<stream::Stream<()>, StreamingError> {
        let name = stream_name(self);
        match self.jetstream().get_stream_no_info(name).await {
            Ok(s) => Ok(s),
            Err(e) if crate::client::is_stream_not_found(&e) => Err(StreamingError::with_source(
                StreamingErrorKind::NotFound,
                format!("stream {name} does not exist (create it with StreamingClient::ensure)"),
                e,
            )),
            Err(e) => Err(js_error(format!("cannot look up stream {name}"), e)
                .denied_on(self.denials(), crate::error::stream_api(name))),
        }
    }

    async fn existing_consumer(
        &self,
        stream: &stream::Stream<()>,
        durable: &str,
    ) -> Result<consumer::Info, StreamingError> {
        let name = stream_name(self);
        match stream.consumer_info(durable).await {
            Ok(info) => Ok(info),
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                Err(StreamingError::with_source(
                    StreamingErrorKind::NotFound,
                    format!("consumer {durable} does not exist on stream {name}"),
                    e,
                ))
            }
            Err(e) => Err(js_error(format!("cannot read consumer {durable}"), e)
                .denied_on(self.denials(), crate::error::stream_api(name))),
        }
    }

    fn op_error(
        &self,
        message: String,
        e: impl std::error::Error + Send + Sync + 'static,
        durable: &str,
    ) -> StreamingError {
        let name = stream_name(self);
        js_error(message, e).denied_on(
            self.denials(),
            [
                format!("$JS.API.CONSUMER.PAUSE.{name}.{durable}"),
                format!("$JS.API.CONSUMER.RESET.{name}.{durable}"),
            ],
        )
    }

    /// Refuses, before sending anything, what the server cannot do.
    fn require_server(&self, needed: (u64, u64), what: &str) -> Result<(), StreamingError> {
        let version = self.client().server_info().version;
        match parse_version(&version) {
            Some(v) if v < needed => Err(StreamingError::new(
                StreamingErrorKind::Rejected,
                format!(
                    "{what} needs nats-server {}.{} or later; this server is {version}: upgrade it",
                    needed.0, needed.1
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn stream_name(client: &StreamingClient) -> &str {
    &client.config().stream.name
}

/// `major.minor` of a server version such as `2.14.0` or `v2.15.1-beta.2`.
fn parse_version(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// A consumer name must be one subject token: a name with `.`, a wildcard or
/// whitespace would address another API subject.
fn check_name(durable: &str) -> Result<(), StreamingError> {
    if durable.is_empty()
        || durable
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
    {
        return Err(StreamingError::new(
            StreamingErrorKind::InvalidInput,
            format!("`{durable}` is not a consumer name (no dots, wildcards or spaces)"),
        ));
    }
    Ok(())
}

/// Only consumers delivering all messages, or from a start, can be reset to a
/// sequence, and not before their start (the server's rule, checked before asking).
async fn check_policy(
    client: &StreamingClient,
    durable: &str,
    policy: &consumer::DeliverPolicy,
    target: u64,
) -> Result<(), StreamingError> {
    let invalid = |m: String| StreamingError::new(StreamingErrorKind::InvalidInput, m);
    match policy {
        consumer::DeliverPolicy::All => Ok(()),
        consumer::DeliverPolicy::ByStartSequence { start_sequence } if target < *start_sequence => {
            Err(invalid(format!(
                "cannot rewind consumer {durable} to sequence {target}: it starts at sequence {start_sequence}"
            )))
        }
        consumer::DeliverPolicy::ByStartSequence { .. } => Ok(()),
        consumer::DeliverPolicy::ByStartTime { start_time } => {
            let start = to_chrono(*start_time);
            let first = first_at_or_after(client.jetstream(), stream_name(client), start).await?;
            match first {
                Some(first) if target < first => Err(invalid(format!(
                    "cannot rewind consumer {durable} to sequence {target}: it starts at {} (sequence {first})",
                    rfc3339(start)
                ))),
                _ => Ok(()),
            }
        }
        other => Err(invalid(format!(
            "cannot rewind consumer {durable}: its deliver policy is {}; only consumers with deliver policy `all` (or a start sequence or time) can be rewound",
            match other {
                consumer::DeliverPolicy::New => "`new`",
                consumer::DeliverPolicy::Last => "`last`",
                _ => "`last_per_subject`",
            }
        ))),
    }
}

fn filters_of(c: &consumer::Config) -> Vec<String> {
    if c.filter_subject.is_empty() {
        c.filter_subjects.clone()
    } else {
        vec![c.filter_subject.clone()]
    }
}

/// Messages matching `filters` (all when empty) from stream sequence `from` to the end,
/// counted by the server for a short-lived consumer starting there, removed after.
async fn count_from(
    stream: &stream::Stream<()>,
    filters: &[String],
    from: u64,
    last: u64,
) -> Result<u64, StreamingError> {
    if from > last {
        return Ok(0);
    }
    let (filter_subject, filter_subjects) = match filters {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let counter = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ack_policy: consumer::AckPolicy::None,
            filter_subject,
            filter_subjects,
            memory_storage: true,
            num_replicas: 1,
            inactive_threshold: Duration::from_secs(30),
            description: Some("counts messages for a rewind plan".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| js_error("cannot count the messages a rewind would deliver", e))?;
    let info = counter.cached_info();
    let pending = info.num_pending;
    // The server removes it once idle anyway; a failed delete is no failure.
    let _ = stream.delete_consumer(&info.name).await;
    Ok(pending)
}

#[derive(Deserialize)]
struct MsgGet {
    message: MsgGetMessage,
}

#[derive(Deserialize)]
struct MsgGetMessage {
    seq: u64,
}

/// The sequence of the first message stored at or after `t`, `None` when there is none.
async fn first_at_or_after(
    js: &jetstream::Context,
    stream: &str,
    t: DateTime<Utc>,
) -> Result<Option<u64>, StreamingError> {
    let request = serde_json::json!({ "start_time": rfc3339(t), "next_by_subj": ">" });
    let response: jetstream::response::Response<MsgGet> = js
        .request(format!("STREAM.MSG.GET.{stream}"), &request)
        .await
        .map_err(|e| {
            js_error(
                format!(
                    "cannot find the first message of {stream} at {}",
                    rfc3339(t)
                ),
                e,
            )
        })?;
    match response {
        jetstream::response::Response::Ok(m) => Ok(Some(m.message.seq)),
        jetstream::response::Response::Err { error }
            if error.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND =>
        {
            Ok(None)
        }
        jetstream::response::Response::Err { error } => Err(StreamingError::with_source(
            api_kind(&error),
            format!(
                "cannot find the first message of {stream} at {}",
                rfc3339(t)
            ),
            error,
        )),
    }
}

fn reset_error(durable: &str, e: stream::ConsumerResetError) -> StreamingError {
    use stream::ConsumerResetErrorKind as K;
    let kind = match e.kind() {
        K::TimedOut => StreamingErrorKind::TimedOut,
        K::NotFound => StreamingErrorKind::NotFound,
        K::InvalidReset => StreamingErrorKind::InvalidInput,
        K::JetStream(inner) => api_kind(&inner),
        K::Request => crate::error::classify(&e),
    };
    StreamingError::with_source(kind, format!("cannot rewind consumer {durable}"), e)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A time as async-nats reports it, in chrono.
pub(crate) fn to_chrono(t: async_nats::datetime::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

/// A chrono time as async-nats takes it.
fn to_nats(t: DateTime<Utc>) -> Result<async_nats::datetime::DateTime, StreamingError> {
    async_nats::datetime::parse_rfc3339(&t.to_rfc3339_opts(SecondsFormat::Nanos, true)).map_err(
        |e| {
            StreamingError::new(
                StreamingErrorKind::InvalidInput,
                format!("{} cannot be sent to the server: {e}", rfc3339(t)),
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_parse_to_major_and_minor() {
        assert_eq!(parse_version("2.14.0"), Some((2, 14)));
        assert_eq!(parse_version("v2.15.1-beta.2"), Some((2, 15)));
        assert_eq!(parse_version("2.10"), Some((2, 10)));
        assert_eq!(parse_version(""), None);
        assert!(parse_version("2.9.25").unwrap() < RESET_VERSION);
        assert!(parse_version("2.11.0").unwrap() >= PAUSE_VERSION);
    }

    #[test]
    fn names_are_one_subject_token() {
        for bad in ["", "a.b", "a*", ">", "a b"] {
            assert_eq!(
                check_name(bad).unwrap_err().kind(),
                StreamingErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        check_name("person-projection-summary").unwrap();
    }

    #[test]
    fn the_indefinite_pause_is_far_away() {
        assert!(indefinite_pause() > Utc::now() + chrono::Duration::days(300 * 365));
    }
}
