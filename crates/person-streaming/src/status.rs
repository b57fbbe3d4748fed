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
}

impl StreamingClient {
    /// The event stream and the DLQ stream, in that order, each with its consumers.
    /// Reads only; a stream that does not exist is a [`StreamingErrorKind::NotFound`]
    /// error.
    pub async fn status(&self) -> Result<Vec<StreamStatus>, StreamingError> {
        let mut out = Vec::new();
        for name in [&self.config().stream.name, &self.config().dlq.name] {
            out.push(
                stream_status(self.jetstream(), name)
                    .await
                    .map_err(|e| e.denied_on(self.denials(), stream_api(name)))?,
            );
        }
        Ok(out)
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
        .map_ok(|c| {
            // async-nats reports times as `time::OffsetDateTime`; the API speaks chrono.
            let [delivered, acked] = [c.delivered.last_active, c.ack_floor.last_active].map(|t| {
                t.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()))
            });
            let last_active = delivered.max(acked);
            ConsumerStatus {
                durable: c.config.durable_name.is_some(),
                name: c.name,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending as u64,
                redelivered: c.num_redelivered as u64,
                waiting: c.num_waiting as u64,
                delivered_stream_sequence: c.delivered.stream_sequence,
                ack_floor_stream_sequence: c.ack_floor.stream_sequence,
                last_active,
            }
        })
        .try_collect()
        .await
        .map_err(|e| js_error(format!("cannot list the consumers of stream {name}"), e))?;
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StreamStatus {
        name: name.to_owned(),
        messages: state.messages,
        bytes: state.bytes,
        first_sequence: state.first_sequence,
        last_sequence: state.last_sequence,
        consumers,
    })
}
