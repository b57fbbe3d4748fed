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
