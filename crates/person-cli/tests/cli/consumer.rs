//! `consumer pause`, `consumer resume` and `consumer rewind` against a real server, with
//! the subscription runtime or a plain pull consuming.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::{Arc, atomic::AtomicU64, atomic::Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_trait::async_trait;
use futures::StreamExt;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope};
use person_streaming::StreamingClient;
use person_subscriptions::{
    DomainResult, StreamingEventHandler, SubscriptionHandle, SubscriptionManager,
    SubscriptionOptions,
};

use crate::support::{activated, cli, eventually, start};

const CONSUMER: &str = "person-projection-summary";

/// A projection: per person, the reasons of their `Activated` events in the order
/// applied, and the last envelope sequence.
#[derive(Default)]
struct Summary {
    people: Mutex<BTreeMap<PersonId, (u64, Vec<String>)>>,
    handled: AtomicU64,
}

#[async_trait]
impl StreamingEventHandler for Summary {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        if let PersonEventV2::Activated { reason, .. } = &envelope.event {
            let mut people = self.people.lock().unwrap();
            let entry = people.entry(envelope.aggregate_id).or_default();
            entry.0 = envelope.sequence;
            entry.1.push(reason.clone());
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn name(&self) -> &str {
        "summary"
    }
}

impl Summary {
    fn handled(&self) -> u64 {
        self.handled.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> BTreeMap<PersonId, (u64, Vec<String>)> {
        self.people.lock().unwrap().clone()
    }
}

async fn subscribe(client: &StreamingClient, summary: Arc<Summary>) -> SubscriptionHandle {
    let mut manager = SubscriptionManager::new(client.clone())
        .with_options(SubscriptionOptions::default().fetch_expiry(Duration::from_millis(200)));
    manager.register_handler(summary);
    manager.start_consumer(CONSUMER).await.unwrap()
}

async fn publish(client: &StreamingClient, person: PersonId, seqs: std::ops::RangeInclusive<u64>) {
    let publisher = client.publisher();
    for s in seqs {
        publisher
            .publish(&activated(person, s, &format!("step {s}")))
            .await
            .unwrap();
    }
}

async fn info(client: &StreamingClient) -> async_nats::jetstream::consumer::Info {
    client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .consumer_info(CONSUMER)
        .await
        .unwrap()
}

async fn pull(client: &StreamingClient) -> PullConsumer {
    client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .get_consumer(CONSUMER)
        .await
        .unwrap()
}

/// Fetches (acknowledging) until `n` messages came; their stream sequences. Then checks
/// nothing more comes in one more fetch.
async fn fetch_exactly(c: &PullConsumer, n: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        let mut batch = c
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        let before = out.len();
        while let Some(msg) = batch.next().await {
            let msg = msg.unwrap();
            out.push(msg.info().unwrap().stream_sequence);
            msg.double_ack().await.unwrap();
        }
        if out.len() >= n && out.len() == before {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {out:?} of {n} messages arrived"
        );
    }
}

fn consumer_json(status: &serde_json::Value) -> serde_json::Value {
    status["streams"][0]["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == CONSUMER)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_paused_consumer_feeds_a_running_subscription_nothing_until_resumed() {
    let (server, client) = start().await;
    let url = server.url();
    let person = PersonId::new();
    publish(&client, person, 1..=2).await;
    let summary = Arc::new(Summary::default());
    let handle = subscribe(&client, summary.clone()).await;
    eventually("2 handled", async || summary.handled() == 2).await;

    let paused = cli(&url, &["consumer", "pause", CONSUMER]).await;
    assert_eq!(paused.code, 0, "{paused:?}");
    assert!(paused.stdout.contains("until resumed"), "{paused:?}");
    let status = cli(&url, &["status", "--json"]).await.json();
    let row = consumer_json(&status);
    assert_eq!(row["paused"], true, "{row}");
    assert_eq!(row["paused_until"], "2999-12-31T23:59:59Z", "{row}");
    let table = cli(&url, &["status"]).await;
    assert!(
        table
            .stdout
            .contains(&format!("paused: {CONSUMER} until resumed")),
        "{}",
        table.stdout
    );

    publish(&client, person, 3..=5).await;
    // The runtime keeps pulling (a request waits on the server) and gets nothing.
    eventually("the runtime pulling a paused consumer", async || {
        let i = info(&client).await;
        i.num_pending == 3 && i.num_waiting > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(summary.handled(), 2, "nothing delivered while paused");
    assert_eq!(info(&client).await.num_pending, 3);

    let resumed = cli(&url, &["consumer", "resume", CONSUMER, "--json"]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(resumed.json()["paused"], false);
    eventually("all 5 handled", async || summary.handled() == 5).await;
    assert_eq!(
        summary.snapshot()[&person].1,
        (1..=5).map(|s| format!("step {s}")).collect::<Vec<_>>()
    );
    assert_eq!(
        consumer_json(&cli(&url, &["status", "--json"]).await.json())["paused"],
        false
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_pause_until_a_time_resumes_by_itself() {
    let (server, client) = start().await;
    let url = server.url();
    let run = cli(
        &url,
        &["consumer", "pause", CONSUMER, "--until", "2s", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["paused"], true);
    assert_eq!(doc["indefinitely"], false);
    let until = chrono::DateTime::parse_from_rfc3339(doc["paused_until"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let table = cli(&url, &["status"]).await;
    assert!(
        table.stdout.contains("(resumes by itself)"),
        "{}",
        table.stdout
    );

    publish(&client, PersonId::new(), 1..=3).await;
    let summary = Arc::new(Summary::default());
    let handle = subscribe(&client, summary.clone()).await;
    // No resume: the server resumes it at `until`.
    eventually("3 handled", async || summary.handled() == 3).await;
    assert!(chrono::Utc::now() >= until - chrono::Duration::milliseconds(100));
    assert!(!info(&client).await.paused);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rewinds_to_a_sequence_and_to_a_time_redeliver_exactly_from_there() {
    let (server, client) = start().await;
    let url = server.url();
    let person = PersonId::new();
    publish(&client, person, 1..=3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&client, person, 4..=6).await;
    let c = pull(&client).await;
    assert_eq!(fetch_exactly(&c, 6).await, vec![1, 2, 3, 4, 5, 6]);

    let run = cli(
        &url,
        &[
            "consumer", "rewind", CONSUMER, "--to-seq", "4", "--yes", "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let docs = run.json_lines();
    assert_eq!(docs.len(), 2, "{run:?}");
    let plan = &docs[0]["plan"];
    assert_eq!(plan["target_sequence"], 4);
    assert_eq!(plan["ack_floor"], 6);
    assert_eq!(plan["new_ack_floor"], 3);
    assert_eq!(plan["delivered_again"], 3);
    assert_eq!(docs[1]["ack_floor"], 3);
    assert_eq!(docs[1]["pending"], 3);
    assert_eq!(fetch_exactly(&c, 3).await, vec![4, 5, 6]);

    // To the time the fourth message was stored (from the stream, RFC 3339).
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let t = stream.get_raw_message(4).await.unwrap().time;
    let t = chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let run = cli(
        &url,
        &["consumer", "rewind", CONSUMER, "--to-time", &t, "--yes"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("to sequence 4 (the first event stored at or after"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("events delivered again: 3"),
        "{}",
        run.stdout
    );
    assert_eq!(fetch_exactly(&c, 3).await, vec![4, 5, 6]);

    // An age: an hour ago is before every message, so from the start.
    let run = cli(
        &url,
        &["consumer", "rewind", CONSUMER, "--to-time", "1h", "--yes"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(fetch_exactly(&c, 6).await, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn a_dry_run_and_a_refusal_without_yes_change_nothing() {
    let (server, client) = start().await;
    let url = server.url();
    publish(&client, PersonId::new(), 1..=4).await;
    let c = pull(&client).await;
    assert_eq!(fetch_exactly(&c, 4).await, vec![1, 2, 3, 4]);
    let before = info(&client).await;

    let dry = cli(
        &url,
        &["consumer", "rewind", CONSUMER, "--to-seq", "2", "--dry-run"],
    )
    .await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("ack floor 4, last delivered 4"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("events delivered again: 3"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("dry run: nothing was changed"),
        "{}",
        dry.stdout
    );
    let dry_json = cli(
        &url,
        &[
            "consumer",
            "rewind",
            CONSUMER,
            "--to-seq",
            "2",
            "--dry-run",
            "--json",
        ],
    )
    .await;
    assert_eq!(dry_json.json_lines().len(), 1, "{dry_json:?}");
    assert_eq!(dry_json.json_lines()[0]["dry_run"], true);

    // Not a terminal (stdin is /dev/null) and no --yes: refused, with the plan shown.
    let refused = cli(&url, &["consumer", "rewind", CONSUMER, "--to-seq", "2"]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("refusing to rewind"), "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    assert!(refused.stdout.contains("to sequence 2"), "{refused:?}");

    let after = info(&client).await;
    assert_eq!(after.delivered, before.delivered);
    assert_eq!(after.ack_floor, before.ack_floor);
    assert_eq!(after.num_pending, 0);
    let mut s = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let consumers = s.info().await.unwrap().state.consumer_count;
    assert_eq!(consumers, 4, "the plan's own counting consumers are gone");
    assert_eq!(fetch_exactly(&c, 0).await, Vec::<u64>::new());
}

#[tokio::test]
async fn unknown_consumers_and_bad_positions_are_clear_errors() {
    let (server, client) = start().await;
    let url = server.url();
    publish(&client, PersonId::new(), 1..=2).await;
    for args in [
        &["consumer", "pause", "no-such-consumer"][..],
        &["consumer", "resume", "no-such-consumer"],
        &[
            "consumer",
            "rewind",
            "no-such-consumer",
            "--to-seq",
            "1",
            "--yes",
        ],
    ] {
        let run = cli(&url, args).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(
                "error: consumer no-such-consumer does not exist on stream PERSON_EVENTS"
            ),
            "{run:?}"
        );
        assert!(
            run.stderr.contains("hint: `person-stream status` lists"),
            "{run:?}"
        );
    }
    for args in [
        &["consumer", "rewind", CONSUMER, "--to-seq", "3", "--yes"][..],
        &["consumer", "rewind", CONSUMER, "--to-seq", "0", "--yes"],
        &[
            "consumer",
            "rewind",
            CONSUMER,
            "--to-time",
            "2999-01-01T00:00:00Z",
            "--yes",
        ],
        &["consumer", "rewind", CONSUMER, "--yes"],
        &[
            "consumer",
            "rewind",
            CONSUMER,
            "--to-seq",
            "1",
            "--to-time",
            "1h",
        ],
        &[
            "consumer",
            "pause",
            CONSUMER,
            "--until",
            "2020-01-01T00:00:00Z",
        ],
        &["consumer", "pause", CONSUMER, "--until", "tomorrow"],
    ] {
        let run = cli(&url, args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
    for sub in ["pause", "resume", "rewind"] {
        let help = cli(&url, &["consumer", sub, "--help"]).await;
        assert_eq!(help.code, 0, "{help:?}");
        assert!(
            help.stdout.contains("Examples:\n  person-stream consumer"),
            "{}",
            help.stdout
        );
    }
    let past_end = cli(
        &url,
        &["consumer", "rewind", CONSUMER, "--to-seq", "3", "--yes"],
    )
    .await;
    assert!(
        past_end.stderr.contains("ends at sequence 2"),
        "{past_end:?}"
    );
    assert!(!info(&client).await.paused);
}

#[tokio::test]
async fn a_rewind_to_the_start_rebuilds_the_same_projection_in_a_fresh_store() {
    let (server, client) = start().await;
    let url = server.url();
    let people: Vec<PersonId> = (0..5).map(|_| PersonId::new()).collect();
    for round in 1..=4 {
        for p in &people {
            publish(&client, *p, round..=round).await;
        }
    }
    let first = Arc::new(Summary::default());
    let handle = subscribe(&client, first.clone()).await;
    eventually("20 handled", async || first.handled() == 20).await;
    eventually("all acknowledged", async || {
        let i = info(&client).await;
        i.num_pending == 0 && i.num_ack_pending == 0
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    let built = first.snapshot();
    assert_eq!(built.len(), 5);

    let run_cli = cli(
        &url,
        &["consumer", "rewind", CONSUMER, "--to-seq", "1", "--yes"],
    )
    .await;
    assert_eq!(run_cli.code, 0, "{run_cli:?}");
    assert!(
        run_cli.stdout.contains("events delivered again: 20"),
        "{}",
        run_cli.stdout
    );

    let rebuilt = Arc::new(Summary::default());
    let handle = subscribe(&client, rebuilt.clone()).await;
    eventually("20 handled again", async || rebuilt.handled() == 20).await;
    eventually("all acknowledged again", async || {
        let i = info(&client).await;
        i.num_pending == 0 && i.num_ack_pending == 0
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(rebuilt.handled(), 20, "each event exactly once");
    assert_eq!(rebuilt.snapshot(), built);
    for p in &people {
        assert_eq!(built[p].0, 4);
    }
}
