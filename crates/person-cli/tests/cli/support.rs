use std::process::Stdio;
use std::time::Duration;

use nats_harness::NatsServer;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_streaming::{StreamingClient, StreamingConfig};

/// What one run of the binary printed, and how it ended.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// The stdout lines parsed as JSON documents.
    pub(crate) fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The whole stdout as one JSON document.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// The binary with `args`, against `url`, with no stdin and a clean environment.
pub(crate) fn command(url: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_person-stream"));
    cmd.args(args)
        .env("NATS_URL", url)
        .env_remove("PERSON_STREAM_CONFIG")
        .env_remove("NATS_CREDS")
        .env_remove("NATS_USER")
        .env_remove("NATS_PASSWORD")
        .env_remove("NATS_TOKEN")
        .env_remove("NATS_NKEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to completion (at most 30 s).
pub(crate) async fn cli(url: &str, args: &[&str]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(30), command(url, args).output())
        .await
        .unwrap_or_else(|_| panic!("person-stream {args:?} did not finish"))
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh server with the default streams and consumers.
pub(crate) async fn start() -> (NatsServer, StreamingClient) {
    let server = NatsServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
    let client = StreamingClient::new(&server.url(), StreamingConfig::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e}"));
    (server, client)
}

pub(crate) fn activated(
    person_id: PersonId,
    sequence: u64,
    reason: &str,
) -> StreamingEventEnvelope {
    activated_with(person_id, sequence, reason, EventMetadata::new())
}

pub(crate) fn activated_with(
    person_id: PersonId,
    sequence: u64,
    reason: &str,
    metadata: EventMetadata,
) -> StreamingEventEnvelope {
    StreamingEventEnvelope::new(
        person_id,
        sequence,
        PersonEventV2::Activated {
            person_id,
            reason: reason.into(),
            metadata,
        },
    )
}

/// A raw V1 `PersonDeactivated` of `person_id`, as the old system stored it.
pub(crate) fn v1_deactivated(person_id: PersonId) -> String {
    format!(
        r#"{{"PersonDeactivated": {{"person_id": {{"id": "{person_id}"}}, "reason": "left", "deactivated_at": "2025-07-20T17:00:00Z"}}}}"#
    )
}

/// Waits until `check` holds, at most 10 s.
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages in a stream.
pub(crate) async fn messages(client: &StreamingClient, stream: &str) -> u64 {
    let mut s = client.jetstream().get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Consumers on a stream (durable and ephemeral).
pub(crate) async fn consumer_count(client: &StreamingClient, stream: &str) -> usize {
    let mut s = client.jetstream().get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.consumer_count
}
