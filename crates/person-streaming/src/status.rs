//! [`StreamingClient::status`]: what the streams hold and how far each consumer is.

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use crate::StreamingClient;
use crate::error::{StreamingError, StreamingErrorKind, js_error, stream_api};

/// One stream's state, with its consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// Stream name.
    pub name: String,
    /// `false` when the stream does not exist (only the DLQ stream is reported so; the
    /// other numbers are then 0).
    pub exists: bool,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Sequence of the first stored message (0 when empty).
    pub first_sequence: u64,
    /// Sequence of the last stored message.
    pub last_sequence: u64,
    /// Every consumer on the stream, by name (ephemeral ones included).
    pub consumers: Vec<ConsumerStatus>,
}

/// One consumer's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStatus {
    /// Consumer name.
    pub name: String,
    /// `false` for a configured consumer that does not exist on the server (the other
    /// numbers are then 0).
    pub exists: bool,
    /// `false` for an ephemeral consumer (a reader such as the DLQ listing or a tail,
    /// removed by the server once idle).
    pub durable: bool,
    /// Messages matching the filter not delivered yet.
    pub pending: u64,
    /// Messages delivered and not acknowledged yet.
    pub ack_pending: u64,
    /// Messages delivered more than once and not acknowledged yet.
    pub redelivered: u64,
    /// Pull requests waiting.
    pub waiting: u64,
    /// Stream sequence of the last delivered message.
    pub delivered_stream_sequence: u64,
    /// Stream sequence below which everything is acknowledged.
    pub ack_floor_stream_sequence: u64,
    /// The last delivery or acknowledgement, whichever is later.
    pub last_active: Option<DateTime<Utc>>,
    /// Whether the server holds the consumer's deliveries (see
    /// [`StreamingClient::pause_consumer`]).
    pub paused: bool,
    /// Until when, while paused: the server resumes it by itself then.
    pub paused_until: Option<DateTime<Utc>>,
}

impl ConsumerStatus {
    /// `true` when paused until further notice ([`crate::indefinite_pause`] or later).
    pub fn is_paused_indefinitely(&self) -> bool {
        self.paused
            && self
                .paused_until
                .is_some_and(|t| t >= crate::indefinite_pause())
    }
}

impl StreamingClient {
    /// The event stream and the DLQ stream, in that order, each with its consumers,
    /// plus a row with `exists: false` for each configured consumer missing from the
    /// event stream. Reads only. A missing event stream is a
    /// [`StreamingErrorKind::NotFound`] error; a missing DLQ stream is a row with
    /// `exists: false`, since that is when an operator needs to look.
    pub async fn status(&self) -> Result<Vec<StreamStatus>, StreamingError> {
        let events = &self.config().stream.name;
        let mut main = stream_status(self.jetstream(), events)
            .await
            .map_err(|e| e.denied_on(self.denials(), stream_api(events)))?;
        for c in &self.config().consumers {
            if !main.consumers.iter().any(|s| s.name == c.durable_name) {
                main.consumers.push(missing_consumer(&c.durable_name));
            }
        }
        main.consumers.sort_by(|a, b| a.name.cmp(&b.name));
        let dlq_name = &self.config().dlq.name;
        let dlq = match stream_status(self.jetstream(), dlq_name).await {
            Ok(s) => s,
            Err(e) if e.kind() == StreamingErrorKind::NotFound => StreamStatus {
                name: dlq_name.clone(),
                exists: false,
                messages: 0,
                bytes: 0,
                first_sequence: 0,
                last_sequence: 0,
                consumers: Vec::new(),
            },
            Err(e) => return Err(e.denied_on(self.denials(), stream_api(dlq_name))),
        };
        Ok(vec![main, dlq])
    }

    /// One consumer of the event stream: its progress, or a row with `exists: false`
    /// when it does not exist. A missing event stream is a
    /// [`StreamingErrorKind::NotFound`] error.
    pub async fn consumer_status(&self, durable: &str) -> Result<ConsumerStatus, StreamingError> {
        let name = &self.config().stream.name;
        let stream = match self.jetstream().get_stream_no_info(name).await {
            Ok(s) => s,
            Err(e) if crate::client::is_stream_not_found(&e) => {
                return Err(StreamingError::with_source(
                    StreamingErrorKind::NotFound,
                    format!(
                        "stream {name} does not exist (create it with StreamingClient::ensure)"
                    ),
                    e,
                ));
            }
            Err(e) => return Err(js_error(format!("cannot look up stream {name}"), e)),
        };
        match stream.consumer_info(durable).await {
            Ok(info) => Ok(consumer_row(info)),
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                Ok(missing_consumer(durable))
            }
            Err(e) => Err(js_error(format!("cannot read consumer {durable}"), e)
                .denied_on(self.denials(), stream_api(name))),
        }
    }
}

fn missing_consumer(name: &str) -> ConsumerStatus {
    ConsumerStatus {
        name: name.to_owned(),
        exists: false,
        durable: true,
        pending: 0,
        ack_pending: 0,
        redelivered: 0,
        waiting: 0,
        delivered_stream_sequence: 0,
        ack_floor_stream_sequence: 0,
        last_active: None,
        paused: false,
        paused_until: None,
    }
}

fn consumer_row(c: jetstream::consumer::Info) -> ConsumerStatus {
    // async-nats reports times as `time::OffsetDateTime`; the API speaks chrono.
    let [delivered, acked] = [c.delivered.last_active, c.ack_floor.last_active]
        .map(|t| t.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())));
    // The pause time is in the configuration; the remaining time is the fallback.
    let paused_until = c.paused.then(|| {
        c.config
            .pause_until
            .map(crate::consumer_ops::to_chrono)
            .or_else(|| {
                c.pause_remaining
                    .and_then(|r| chrono::Duration::from_std(r).ok())
                    .and_then(|r| Utc::now().checked_add_signed(r))
            })
    });
    ConsumerStatus {
        paused: c.paused,
        paused_until: paused_until.flatten(),
        exists: true,
        durable: c.config.durable_name.is_some(),
        name: c.name,
        pending: c.num_pending,
        ack_pending: c.num_ack_pending as u64,
        redelivered: c.num_redelivered as u64,
        waiting: c.num_waiting as u64,
        delivered_stream_sequence: c.delivered.stream_sequence,
        ack_floor_stream_sequence: c.ack_floor.stream_sequence,
        last_active: delivered.max(acked),
    }
}

async fn stream_status(
    js: &jetstream::Context,
    name: &str,
) -> Result<StreamStatus, StreamingError> {
    let mut stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(e) if crate::client::is_stream_not_found(&e) => {
            return Err(StreamingError::with_source(
                StreamingErrorKind::NotFound,
                format!("stream {name} does not exist (create it with StreamingClient::ensure)"),
                e,
            ));
        }
        Err(e) => return Err(js_error(format!("cannot look up stream {name}"), e)),
    };
    let info = stream
        .info()
        .await
        .map_err(|e| js_error(format!("cannot read stream {name}"), e))?;
    let state = info.state.clone();
    let mut consumers: Vec<ConsumerStatus> = stream
        .consumers()
        .map_ok(consumer_row)
        .try_collect()
        .await
        .map_err(|e| js_error(format!("cannot list the consumers of stream {name}"), e))?;
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StreamStatus {
        name: name.to_owned(),
        exists: true,
        messages: state.messages,
        bytes: state.bytes,
        first_sequence: state.first_sequence,
        last_sequence: state.last_sequence,
        consumers,
    })
}
