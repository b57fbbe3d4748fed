use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope};
use person_streaming::{DeadLetterFilter, REPLAY_OF_HEADER, StreamingClient};
use person_subscriptions::{
    DeadLetterPolicy, DomainResult, HandlerError, StreamingEventHandler, SubscriptionHandle,
    SubscriptionManager, SubscriptionOptions,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{activated, cli, command, eventually, start};

const CONSUMER: &str = "person-projection-summary";

/// Fails permanently on events whose reason starts with `poison` until fixed; records
/// every event it handled.
struct Projection {
    fixed: AtomicBool,
    handled: Mutex<Vec<(PersonId, String)>>,
}

#[async_trait]
impl StreamingEventHandler for Projection {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        let PersonEventV2::Activated { reason, .. } = &envelope.event else {
            return Ok(());
        };
        if reason.starts_with("poison") && !self.fixed.load(Ordering::SeqCst) {
            return Err(HandlerError::permanent("poison event"));
        }
        self.handled
            .lock()
            .unwrap()
            .push((envelope.aggregate_id, reason.clone()));
        Ok(())
    }

    fn name(&self) -> &str {
        "summary"
    }
}

async fn run_projection(
    client: &StreamingClient,
    projection: Arc<Projection>,
    policy: DeadLetterPolicy,
) -> SubscriptionHandle {
    let mut manager = SubscriptionManager::new(client.clone()).with_options(
        SubscriptionOptions::default()
            .dead_letter_policy(policy)
            .fetch_expiry(Duration::from_millis(200)),
    );
    manager.register_handler(projection);
    manager.start_consumer(CONSUMER).await.unwrap()
}

fn handled_of(p: &Projection, person: PersonId) -> Vec<String> {
    p.handled
        .lock()
        .unwrap()
        .iter()
        .filter(|(who, _)| *who == person)
        .map(|(_, r)| r.clone())
        .collect()
}

#[tokio::test]
async fn list_show_replay_and_purge_a_dlq_filled_by_the_runtime() {
    let (server, client) = start().await;
    let url = server.url();
    let (a, b, c) = (PersonId::new(), PersonId::new(), PersonId::new());
    let publisher = client.publisher();
    for env in [
        activated(a, 1, "poison a1"),
        activated(b, 1, "poison b1"),
        activated(a, 2, "a2"),
        activated(c, 1, "c1"),
        activated(a, 3, "a3"),
    ] {
        publisher.publish(&env).await.unwrap();
    }
    let projection = Arc::new(Projection {
        fixed: AtomicBool::new(false),
        handled: Mutex::new(Vec::new()),
    });
    let handle = run_projection(&client, projection.clone(), DeadLetterPolicy::Park).await;
    eventually("4 dead letters", async || handle.stats().dead_lettered == 4).await;
    assert_eq!(handled_of(&projection, c), vec!["c1"]);

    // list: all, and filtered.
    let run = cli(&url, &["dlq", "list", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let all = run.json_lines();
    assert_eq!(all.len(), 4);
    let run = cli(&url, &["dlq", "list", "--json", "--person", &a.to_string()]).await;
    let of_a = run.json_lines();
    let seqs: Vec<u64> = of_a
        .iter()
        .map(|d| d["stream_sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 3, 5]);
    let poison_id = of_a[0]["id"].as_u64().unwrap();
    let run = cli(&url, &["dlq", "list", "--json", "--reason", "poison"]).await;
    assert_eq!(run.json_lines().len(), 2);
    let run = cli(
        &url,
        &["dlq", "list", "--json", "--consumer", "policy-engine"],
    )
    .await;
    assert_eq!(run.json_lines().len(), 0);
    let run = cli(&url, &["dlq", "list", "--json", "--since", "1h"]).await;
    assert_eq!(run.json_lines().len(), 4);
    let run = cli(&url, &["dlq", "list", "--json", "--until", "1h"]).await;
    assert_eq!(run.json_lines().len(), 0);
    let table = cli(&url, &["dlq", "list", "--consumer", CONSUMER]).await;
    assert!(
        table.stdout.starts_with("ID  LAST FAILURE"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("4 dead letter(s)"),
        "{}",
        table.stdout
    );

    // status counts them by consumer and reason.
    let status = cli(&url, &["status", "--json"]).await.json();
    let counts = status["dead_letters"].as_array().unwrap();
    assert_eq!(counts.len(), 2, "{status}");
    assert!(
        counts
            .iter()
            .all(|c| c["count"] == 2 && c["consumer"] == CONSUMER),
        "{status}"
    );

    // show: the event, headers, failure and the parked followers.
    let show = cli(&url, &["dlq", "show", &poison_id.to_string()]).await;
    assert_eq!(show.code, 0, "{show:?}");
    for needle in [
        "reason:         permanent failure: poison event",
        "Nats-Msg-Id:",
        "\"reason\": \"poison a1\"",
        "parked behind it (2;",
    ] {
        assert!(show.stdout.contains(needle), "{needle}: {}", show.stdout);
    }
    let json = cli(&url, &["dlq", "show", "--json", &poison_id.to_string()])
        .await
        .json();
    let parked: Vec<u64> = json["parked_followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["stream_sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(parked, vec![3, 5]);
    assert_eq!(json["event"]["event"]["data"]["reason"], "poison a1");
    let missing = cli(&url, &["dlq", "show", "999"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("hint: `person-stream dlq list`"),
        "{missing:?}"
    );

    // replay --dry-run changes nothing.
    let dry = cli(
        &url,
        &["dlq", "replay", "--person", &a.to_string(), "--dry-run"],
    )
    .await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("would replay 3 event(s)"), "{dry:?}");
    assert_eq!(
        client
            .dead_letters()
            .list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .len(),
        4
    );

    // The handler is fixed; replay person a: handled again, in order, and gone from the DLQ.
    projection.fixed.store(true, Ordering::SeqCst);
    let replay = cli(
        &url,
        &["dlq", "replay", "--person", &a.to_string(), "--json"],
    )
    .await;
    assert_eq!(replay.code, 0, "{replay:?}");
    let docs = replay.json_lines();
    let originals: Vec<u64> = docs[..3]
        .iter()
        .map(|d| d["original_stream_sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(originals, vec![1, 3, 5], "replayed in the original order");
    assert_eq!(docs[3]["replayed_events"], 3);
    eventually("person a handled", async || {
        handled_of(&projection, a).len() == 3
    })
    .await;
    assert_eq!(handled_of(&projection, a), vec!["poison a1", "a2", "a3"]);
    let left = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].letter.person_id, Some(b.to_string()));

    // purge: refused without confirmation, done with --yes.
    let refused = cli(&url, &["dlq", "purge", "--person", &b.to_string()]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    assert_eq!(
        client
            .dead_letters()
            .list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    let nothing = cli(&url, &["dlq", "purge"]).await;
    assert_eq!(
        nothing.code, 2,
        "no selection is a usage error: {nothing:?}"
    );
    let purged = cli(&url, &["dlq", "purge", "--person", &b.to_string(), "--yes"]).await;
    assert_eq!(purged.code, 0, "{purged:?}");
    assert!(purged.stdout.contains("purged 1 of 1"), "{purged:?}");
    assert!(
        client
            .dead_letters()
            .list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn ctrl_c_during_a_replay_leaves_nothing_half_replayed() {
    let (server, client) = start().await;
    let url = server.url();
    let projection = Arc::new(Projection {
        fixed: AtomicBool::new(false),
        handled: Mutex::new(Vec::new()),
    });
    const N: u64 = 60;
    let envelopes: Vec<_> = (0..N)
        .map(|i| activated(PersonId::new(), 1, &format!("poison {i}")))
        .collect();
    for env in &envelopes {
        client.publisher().publish(env).await.unwrap();
    }
    let handle = run_projection(&client, projection, DeadLetterPolicy::Continue).await;
    eventually("all dead-lettered", async || {
        handle.stats().dead_lettered == N
    })
    .await;
    // Nothing consumes the replays: only the DLQ and the stream are looked at.
    handle.shutdown(Duration::from_secs(5)).await;
    let before: HashSet<u64> = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|s| s.dlq_sequence)
        .collect();
    assert_eq!(before.len() as u64, N);

    let mut child = command(&url, &["dlq", "replay", "--all", "--json", "--rate", "20"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("\"replayed\""), "{first}");
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut reported = vec![first];
    while let Some(line) = lines.next_line().await.unwrap() {
        reported.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(5), "interrupted");

    let docs: Vec<serde_json::Value> = reported
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = docs.last().unwrap();
    assert_eq!(summary["interrupted"], true, "{summary}");
    let replayed: Vec<u64> = docs.iter().filter_map(|d| d["replayed"].as_u64()).collect();
    assert!(
        !replayed.is_empty() && (replayed.len() as u64) < N,
        "{replayed:?}"
    );

    // The stream holds exactly one replay of each reported entry...
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let mut replays_in_stream = Vec::new();
    for seq in N + 1..=N + replayed.len() as u64 + 5 {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let of = msg
            .headers
            .get(REPLAY_OF_HEADER)
            .expect("a replay")
            .to_string();
        replays_in_stream.push(of.parse::<u64>().unwrap());
    }
    let mut sorted = replays_in_stream.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        replays_in_stream.len(),
        "nothing replayed twice"
    );
    assert_eq!(
        replays_in_stream, replayed,
        "exactly the reported replays, in order"
    );
    // ... and every entry is either replayed or still in the DLQ, never both.
    let left: HashSet<u64> = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|s| s.dlq_sequence)
        .collect();
    for id in &replayed {
        assert!(
            !left.contains(id),
            "dead letter {id} was replayed and is still in the DLQ"
        );
    }
    assert_eq!(left.len() + replayed.len(), before.len());
}
