//! The examples on a server that holds someone else's data, the default person streams
//! included: each runs in a namespace of its own (names and a subject prefix), deletes
//! it, and leaves everything else as it was.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use nats_harness::NatsServer;
use person_events::{PersonEventV2, PersonId, PersonName, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_streaming::{StreamingClient, StreamingConfig};

/// What the checks compare before and after: a stream's message count and last
/// sequence, and a consumer's pending count, ack floor and unacknowledged count.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    streams: Vec<(String, u64, u64)>,
    consumers: Vec<(String, String, u64, u64, usize)>,
}

async fn snapshot(js: &jetstream::Context) -> Snapshot {
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    let mut names: Vec<String> = js
        .stream_names()
        .map(|n| n.expect("a stream name"))
        .collect()
        .await;
    names.sort();
    for name in names {
        let mut stream = js.get_stream(&name).await.expect("the stream");
        let state = stream.info().await.expect("stream info").state.clone();
        streams.push((name.clone(), state.messages, state.last_sequence));
        let mut list: Vec<String> = stream
            .consumer_names()
            .map(|n| n.expect("a consumer name"))
            .collect()
            .await;
        list.sort();
        for c in list {
            let info = stream.consumer_info(&c).await.expect("consumer info");
            consumers.push((
                name.clone(),
                c,
                info.num_pending,
                info.ack_floor.stream_sequence,
                info.num_ack_pending,
            ));
        }
    }
    Snapshot { streams, consumers }
}

/// Runs `streaming_setup` with `NATS_URL`; returns whether it succeeded and its output.
async fn run_streaming_setup(url: &str) -> (bool, String) {
    run_example("streaming_setup", url).await
}

/// Runs the example `name` with `NATS_URL`; returns whether it succeeded and its output.
async fn run_example(name: &str, url: &str) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let run = tokio::process::Command::new(env!("CARGO"))
        .args(["run", "-q", "-p", "person-examples", "--example", name])
        .current_dir(root)
        .env("NATS_URL", url)
        .env("METRICS_ADDR", free_local_addr())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .unwrap_or_else(|_| panic!("{name} finished within 300 s (including its build)"))
        .expect("cargo runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A loopback address with a port free right now, for `metrics_prometheus` to serve on.
fn free_local_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    listener.local_addr().expect("its address").to_string()
}

fn no_example_streams(s: &Snapshot) {
    let left: Vec<&String> = s
        .streams
        .iter()
        .map(|(n, ..)| n)
        .filter(|n| n.contains("EXAMPLE_"))
        .collect();
    assert!(left.is_empty(), "the example left streams behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_setup_touches_only_what_it_creates() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));

    // Someone else's data outside the person subjects: a stream with messages and a
    // durable consumer with a backlog it has not consumed.
    let orders = js
        .create_stream(jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("ORDERS");
    for i in 0..25 {
        js.publish(format!("orders.{i}"), "order".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    orders
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("billing".into()),
            ..Default::default()
        })
        .await
        .expect("billing consumer");

    let before = snapshot(&js).await;
    for run in 1..=2 {
        let (ok, out) = run_streaming_setup(&url).await;
        assert!(ok, "run {run} of streaming_setup failed:\n{out}");
        assert!(
            out.contains("published 1005 events in 100 atomic appends, 50 legacy V1 events"),
            "run {run} counts only its own events:\n{out}"
        );
        assert!(
            out.contains("has events [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] applied, in order"),
            "{out}"
        );
        assert!(
            out.contains("deleted this run's stream EXAMPLE_streaming_setup_"),
            "{out}"
        );
        let after = snapshot(&js).await;
        no_example_streams(&after);
        assert_eq!(after, before, "run {run} changed someone else's data");
    }

    // Someone else's person streams (the default configuration): events, durable
    // consumers with a backlog, and dead letters. They capture every unprefixed person
    // subject; the example works under a subject prefix of its own beside them.
    let client = StreamingClient::new(&url, StreamingConfig::default())
        .await
        .expect("the default streams");
    let publisher = client.publisher();
    for i in 0..12u64 {
        let person_id = PersonId::new();
        let event = PersonEventV2::Created {
            person_id,
            name: PersonName::new(format!("Other{i}"), None, "User").expect("a name"),
            source: "someone-else".into(),
            metadata: EventMetadata::new(),
        };
        publisher
            .publish(&StreamingEventEnvelope::new(person_id, 1, event))
            .await
            .expect("published");
    }
    for consumer in ["person-projection-search", "person-projection-summary"] {
        for i in 0..3 {
            js.publish(
                format!("person.dlq.{consumer}.p{i}.created"),
                r#"{"reason":"someone else's dead letter"}"#.into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        }
    }
    let before = snapshot(&js).await;
    assert!(
        before
            .consumers
            .iter()
            .any(|(s, c, pending, ..)| s == "PERSON_EVENTS"
                && c == "person-projection-summary"
                && *pending == 12),
        "the setup has a backlog: {before:?}"
    );
    assert!(
        before
            .streams
            .iter()
            .any(|(s, messages, _)| s == "PERSON_EVENTS_DLQ" && *messages == 6),
        "the setup has dead letters: {before:?}"
    );
    for run in 1..=2 {
        let (ok, out) = run_streaming_setup(&url).await;
        assert!(
            ok,
            "run {run} works beside someone else's person streams:\n{out}"
        );
        assert!(
            out.contains("published 1005 events in 100 atomic appends, 50 legacy V1 events"),
            "run {run} counts only its own events:\n{out}"
        );
        assert!(
            out.contains("under the subject prefix example_streaming_setup_"),
            "{out}"
        );
        let after = snapshot(&js).await;
        no_example_streams(&after);
        assert_eq!(after, before, "run {run} changed someone else's data");
    }

    // Every other example that takes NATS_URL, on the same server.
    for name in [
        "publish_with_metadata",
        "projection_handler",
        "retry_and_dlq",
        "legacy_upcast",
        "optimistic_concurrency",
        "metrics_prometheus",
        "consumer_group",
    ] {
        let (ok, out) = run_example(name, &url).await;
        assert!(ok, "{name} failed beside someone else's data:\n{out}");
        if name == "consumer_group" {
            assert!(
                out.contains("all 2000 events handled; each person's events were handled for the first time in stream order"),
                "{out}"
            );
        }
        assert!(
            out.contains("deleted this run's stream EXAMPLE_"),
            "{name} cleans up after itself:\n{out}"
        );
        let after = snapshot(&js).await;
        no_example_streams(&after);
        assert_eq!(after, before, "{name} changed someone else's data");
    }

    // A stream of someone else's that captures every prefixed person subject leaves the
    // example no subject space: it refuses before creating anything. (On a server of
    // its own: that stream would overlap ORDERS.)
    let taken = NatsServer::start().await.expect("nats-server");
    let url = taken.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.create_stream(jetstream::stream::Config {
        name: "EVERYTHING".into(),
        subjects: vec!["*.person.events.>".into()],
        // The server requires it of a subject starting with a wildcard.
        no_ack: true,
        ..Default::default()
    })
    .await
    .expect("a catch-all stream");
    let before = snapshot(&js).await;
    let (ok, out) = run_streaming_setup(&url).await;
    assert!(!ok, "must refuse when its subjects are taken:\n{out}");
    assert!(
        out.contains("the server's stream EVERYTHING") && out.contains("Nothing was changed"),
        "says why:\n{out}"
    );
    assert_eq!(snapshot(&js).await, before, "the refusal changed nothing");
}
