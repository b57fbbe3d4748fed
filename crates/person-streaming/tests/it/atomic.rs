//! Atomic appends against a real server: a batch the server refuses part of, and
//! batches cut mid-way by a dropped connection or a server killed with SIGKILL, store
//! all of their events or none, never a prefix. The cuts are placed by a proxy at a
//! byte offset inside the batch, so every attempt is cut where the test says; each test
//! counts its outcomes and fails if no attempt was cut mid-batch.

use std::time::Duration;

use nats_harness::{NatsServer, TcpProxy};
use person_events::{PersonId, StreamingEventEnvelope};
use person_streaming::{
    AppendReceipt, ExpectedVersion, MAX_BATCH, PublishError, PublishErrorKind, StreamingClient,
    StreamingConfig,
};

use crate::support::{
    activated, batch_of, connected, person_messages, read_stream, start, stream_messages,
};

/// A publisher that makes one attempt per append, with a 1 s ack timeout.
fn one_attempt() -> StreamingConfig {
    let mut config = StreamingConfig::default();
    config.publisher.ack_timeout_ms = 1_000;
    config.publisher.retry = person_retry::RetryPolicy::builder()
        .max_attempts(1)
        .build()
        .unwrap();
    config
}

/// A publisher that keeps retrying through a cut or a server restart: 2 s acks, 30
/// attempts 50 to 250 ms apart.
fn patient() -> StreamingConfig {
    let mut config = StreamingConfig::default();
    config.publisher.ack_timeout_ms = 2_000;
    config.publisher.retry = person_retry::RetryPolicy::builder()
        .max_attempts(30)
        .initial_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(250))
        .jitter(person_retry::Jitter::None)
        .build()
        .unwrap();
    config
}

#[tokio::test]
async fn a_batch_whose_middle_event_the_server_refuses_stores_nothing() {
    let (_server, client) = start(StreamingConfig::default()).await;
    // The stream refuses messages over 4 KiB; only the middle event of the batch is.
    let mut stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_message_size = 4 * 1024;
    client.jetstream().update_stream(config).await.unwrap();

    let publisher = client.publisher();
    let other = PersonId::new();
    publisher
        .append(other, ExpectedVersion::NoEvents, &batch_of(other, 3))
        .await
        .unwrap();

    let person = PersonId::new();
    let mut events = batch_of(person, 5);
    events[2] = big(person, 3, 8 * 1024);
    let err = publisher
        .append(person, ExpectedVersion::NoEvents, &events)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Rejected, "{err}");
    assert!(!err.is_transient(), "{err}");
    // The server's reason, not the "incomplete batch" its commit answer says.
    assert!(
        err.to_string()
            .contains("message size exceeds maximum allowed"),
        "{err}"
    );
    // Nothing of the batch is stored, before or after the refused event.
    assert_eq!(person_messages(&client, person).await, 0);
    assert!(
        client
            .reader()
            .load_aggregate(person)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.reader().last_version(person).await.unwrap(), 0);
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 3);

    // The same batch with a small third event goes through: the size was the reason.
    events[2] = activated(person, 3);
    let receipt = publisher
        .append(person, ExpectedVersion::NoEvents, &events)
        .await
        .unwrap();
    assert_eq!(receipt.version, 8);
    assert_eq!(person_messages(&client, person).await, 5);
}

#[tokio::test]
async fn a_batch_with_an_event_over_max_payload_is_refused_at_once_and_stores_nothing() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    let mut events = batch_of(person, 5);
    // Over the server's default max_payload (1 MiB): the client refuses to send it.
    events[2] = big(person, 3, 1_100_000);
    let err = client
        .publisher()
        .append(person, ExpectedVersion::NoEvents, &events)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::PayloadTooLarge, "{err}");
    assert!(!err.is_transient(), "{err}");
    assert_eq!(person_messages(&client, person).await, 0);
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 0);
}

/// An `Activated` event whose reason is `bytes` long.
fn big(person: PersonId, sequence: u64, bytes: usize) -> StreamingEventEnvelope {
    let mut env = activated(person, sequence);
    if let person_events::PersonEventV2::Activated { reason, .. } = &mut env.event {
        *reason = "x".repeat(bytes);
    }
    env
}

/// How the attempts of a test ended.
#[derive(Debug, Default)]
struct Outcomes {
    all: u32,
    none: u32,
    partial: Vec<String>,
    cut_mid_batch: u32,
}

impl Outcomes {
    /// Checks what the stream and the reader hold of `events` (all or none, in order,
    /// at consecutive sequences) and what the append said (an append that retries must
    /// succeed), and counts the outcome.
    async fn check(
        &mut self,
        client: &StreamingClient,
        attempt: &str,
        events: &[StreamingEventEnvelope],
        result: &Result<AppendReceipt, PublishError>,
        must_succeed: bool,
    ) {
        let person = events[0].aggregate_id;
        let count = person_messages(client, person).await;
        let history = client.reader().load_aggregate(person).await.unwrap();
        let ids: Vec<_> = history.iter().map(|e| e.event_id).collect();
        let want: Vec<_> = events.iter().map(|e| e.event_id).collect();
        if count == 0 && ids.is_empty() {
            self.none += 1;
            if let Ok(receipt) = result {
                self.partial.push(format!(
                    "{attempt}: Ok({}) but nothing stored",
                    receipt.version
                ));
            }
        } else if count == events.len() as u64 && ids == want {
            self.all += 1;
            let seqs: Vec<u64> = history.iter().map(|e| e.stream_position.unwrap()).collect();
            if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
                self.partial.push(format!(
                    "{attempt}: all stored, but not at consecutive sequences"
                ));
            }
            if let Ok(receipt) = result
                && receipt.version != *seqs.last().unwrap()
            {
                self.partial.push(format!(
                    "{attempt}: version {} but the last event is at {}",
                    receipt.version,
                    seqs.last().unwrap()
                ));
            }
        } else {
            self.partial.push(format!(
                "{attempt}: {count} of {} messages on the person's subjects, the reader has {}",
                events.len(),
                ids.len()
            ));
        }
        match result {
            Err(e) if must_succeed => self
                .partial
                .push(format!("{attempt}: a retrying append failed: {e}")),
            Err(e) => assert!(e.is_transient(), "{attempt}: {e}"),
            Ok(_) => {}
        }
    }

    fn report_and_assert(&self, test: &str, attempts: u32) {
        eprintln!(
            "{test}: {attempts} attempts, {} cut mid-batch; {} stored all, {} stored none, {} partial",
            self.cut_mid_batch,
            self.all,
            self.none,
            self.partial.len()
        );
        assert!(
            self.partial.is_empty(),
            "partial batches: {:#?}",
            self.partial
        );
        assert_eq!(self.all + self.none, attempts);
        assert!(self.cut_mid_batch > 0, "no attempt was cut mid-batch");
    }
}

/// The bytes one append of `MAX_BATCH` events takes on the wire, measured through
/// `proxy` with an append that goes through whole.
async fn batch_bytes(proxy: &TcpProxy, client: &StreamingClient) -> u64 {
    let person = PersonId::new();
    let before = proxy.bytes_to_server();
    client
        .publisher()
        .append(
            person,
            ExpectedVersion::NoEvents,
            &batch_of(person, MAX_BATCH as u64),
        )
        .await
        .unwrap();
    proxy.bytes_to_server() - before
}

/// Every person's events in the stream are one whole batch of `MAX_BATCH`, at
/// consecutive sequences, each event once.
async fn assert_stream_holds_whole_batches(client: &StreamingClient) {
    let stored = read_stream(client, "PERSON_EVENTS").await;
    let mut runs: Vec<(PersonId, usize)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for env in &stored {
        assert!(
            seen.insert(env.event_id),
            "event {} stored twice",
            env.event_id
        );
        match runs.last_mut() {
            Some((p, n)) if *p == env.aggregate_id => *n += 1,
            _ => runs.push((env.aggregate_id, 1)),
        }
    }
    let people: std::collections::HashSet<_> = runs.iter().map(|r| r.0).collect();
    assert_eq!(
        people.len(),
        runs.len(),
        "a person's batch is interleaved: {runs:?}"
    );
    for (person, n) in runs {
        assert_eq!(n, MAX_BATCH, "person {person}: {n} events stored");
    }
}

#[tokio::test]
async fn batches_cut_by_a_dropped_connection_are_stored_whole_or_not_at_all() {
    const ATTEMPTS: u32 = 10;
    let server = NatsServer::start().await.unwrap();
    let proxy = TcpProxy::start(server.port()).await.unwrap();
    let direct = StreamingClient::new(&server.url(), StreamingConfig::default())
        .await
        .unwrap();
    let once = StreamingClient::new(&proxy.url(), one_attempt())
        .await
        .unwrap();
    let retrying = StreamingClient::new(&proxy.url(), patient()).await.unwrap();
    let size = batch_bytes(&proxy, &once).await;

    let mut outcomes = Outcomes::default();
    for i in 0..ATTEMPTS {
        let person = PersonId::new();
        let events = batch_of(person, MAX_BATCH as u64);
        // Cut points spread over the batch, strictly inside it.
        let at = size * u64::from(i + 1) / u64::from(ATTEMPTS + 1);
        let (publisher, name) = if i % 2 == 0 {
            (once.publisher(), "one attempt")
        } else {
            (retrying.publisher(), "retrying")
        };
        let tripped = proxy.tripped();
        proxy.cut_after(at);
        let result = publisher
            .append(person, ExpectedVersion::NoEvents, &events)
            .await;
        proxy.disarm();
        if proxy.tripped() > tripped {
            outcomes.cut_mid_batch += 1;
        }
        let attempt = format!("attempt {i} ({name}, cut after {at} of {size} bytes)");
        outcomes
            .check(&direct, &attempt, &events, &result, name == "retrying")
            .await;
        connected(&once).await;
        connected(&retrying).await;
    }
    outcomes.report_and_assert("dropped connection", ATTEMPTS);
    assert_eq!(outcomes.cut_mid_batch, ATTEMPTS, "every attempt is cut");
    assert_stream_holds_whole_batches(&direct).await;
}

#[tokio::test]
async fn batches_cut_by_a_server_kill_are_stored_whole_or_not_at_all() {
    const ATTEMPTS: u32 = 6;
    let mut server = NatsServer::start().await.unwrap();
    let proxy = TcpProxy::start(server.port()).await.unwrap();
    let direct = StreamingClient::new(&server.url(), StreamingConfig::default())
        .await
        .unwrap();
    let once = StreamingClient::new(&proxy.url(), one_attempt())
        .await
        .unwrap();
    let retrying = StreamingClient::new(&proxy.url(), patient()).await.unwrap();
    let size = batch_bytes(&proxy, &once).await;

    let mut outcomes = Outcomes::default();
    for i in 0..ATTEMPTS {
        let person = PersonId::new();
        let events = batch_of(person, MAX_BATCH as u64);
        // The server receives the first `at` bytes of the batch, then is killed; the
        // last attempt lets the whole batch through and kills the server as it commits.
        let at = size * u64::from(i + 1) / u64::from(ATTEMPTS);
        let (publisher, name) = if i % 2 == 0 {
            (once.publisher(), "one attempt")
        } else {
            (retrying.publisher(), "retrying")
        };
        proxy.stall_after(at);
        let append = {
            let events = events.clone();
            tokio::spawn(async move {
                publisher
                    .append(person, ExpectedVersion::NoEvents, &events)
                    .await
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !proxy.is_stalled() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "attempt {i}: the batch never reached {at} bytes"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.kill();
        proxy.cut();
        if at < size {
            outcomes.cut_mid_batch += 1;
        }
        server.start_again().await.unwrap();
        let result = append.await.unwrap();
        let attempt = format!("attempt {i} ({name}, killed after {at} of {size} bytes)");
        connected(&direct).await;
        outcomes
            .check(&direct, &attempt, &events, &result, name == "retrying")
            .await;
        connected(&once).await;
        connected(&retrying).await;
    }
    outcomes.report_and_assert("server kill", ATTEMPTS);
    assert_stream_holds_whole_batches(&direct).await;
}
