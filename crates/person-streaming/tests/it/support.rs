use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use nats_harness::NatsServer;
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_streaming::{StreamingClient, StreamingConfig};

/// A fresh server and a client with `config` ensured on it.
pub(crate) async fn start(config: StreamingConfig) -> (NatsServer, StreamingClient) {
    start_with(config, None).await
}

pub(crate) async fn start_with(
    config: StreamingConfig,
    server_config: Option<&str>,
) -> (NatsServer, StreamingClient) {
    let server = match server_config {
        Some(text) => NatsServer::with_config(text).await,
        None => NatsServer::start().await,
    }
    .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
    let client = StreamingClient::new(&server.url(), config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e}"));
    (server, client)
}

pub(crate) fn created(person_id: PersonId, sequence: u64) -> StreamingEventEnvelope {
    StreamingEventEnvelope::new(
        person_id,
        sequence,
        PersonEventV2::Created {
            person_id,
            name: PersonName::new("Jane", None, "Doe").unwrap(),
            source: "test".into(),
            metadata: EventMetadata::new(),
        },
    )
}

pub(crate) fn activated(person_id: PersonId, sequence: u64) -> StreamingEventEnvelope {
    StreamingEventEnvelope::new(
        person_id,
        sequence,
        PersonEventV2::Activated {
            person_id,
            reason: format!("step {sequence}"),
            metadata: EventMetadata::new(),
        },
    )
}

pub(crate) async fn stream_messages(client: &StreamingClient, name: &str) -> u64 {
    let mut stream = client.jetstream().get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// One append's worth of events of `person`: `Created`, then `Activated` up to
/// envelope sequence `n`.
pub(crate) fn batch_of(person_id: PersonId, n: u64) -> Vec<StreamingEventEnvelope> {
    (1..=n)
        .map(|s| {
            if s == 1 {
                created(person_id, 1)
            } else {
                activated(person_id, s)
            }
        })
        .collect()
}

/// Messages stored on the person's subjects, as the stream's own subject counts say.
pub(crate) async fn person_messages(client: &StreamingClient, person_id: PersonId) -> u64 {
    let stream = client
        .jetstream()
        .get_stream(&client.config().stream.name)
        .await
        .unwrap();
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(person_events::subject::person_filter(&person_id))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    counts.iter().map(|(_, n)| *n as u64).sum()
}

/// Every envelope in the stream `name`, in stream order (with `stream_position` set).
pub(crate) async fn read_stream(
    client: &StreamingClient,
    name: &str,
) -> Vec<StreamingEventEnvelope> {
    let mut stream = client.jetstream().get_stream(name).await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("reading the stream back stalled")
            .expect("the ordered consumer ended")
            .unwrap();
        let mut env = person_events::codec::decode(&msg.payload).unwrap();
        env.stream_position = Some(msg.info().unwrap().stream_sequence);
        out.push(env);
    }
    out
}

/// Waits (up to 30 s) until `client` is connected again after a cut or a restart.
pub(crate) async fn connected(client: &StreamingClient) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.client().connection_state() != async_nats::connection::State::Connected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The message stored at `seq` in `stream`, as the server keeps it.
pub(crate) async fn raw_message(
    client: &StreamingClient,
    stream: &str,
    seq: u64,
) -> async_nats::jetstream::message::StreamMessage {
    client
        .jetstream()
        .get_stream(stream)
        .await
        .unwrap()
        .get_raw_message(seq)
        .await
        .unwrap()
}
