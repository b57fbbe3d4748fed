//! The binary's memory on a large DLQ: `dlq list`, the dead-letter counts of `status`
//! and `dlq purge` peak at about the same RSS on 50,000 dead letters as on 5,000.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use person_events::PersonId;
use person_retry::DeadLetter;
use person_streaming::{DeadLetterFilter, StreamingClient};
use person_subscriptions::{
    DeadLetterPolicy, DomainResult, HandlerError, StreamingEventHandler, SubscriptionManager,
    SubscriptionOptions,
};

use crate::support::{activated, command, eventually, start};

const CONSUMER: &str = "person-projection-summary";

/// Fails every event permanently.
struct Rejects;

#[async_trait]
impl StreamingEventHandler for Rejects {
    async fn handle_event(
        &self,
        _envelope: person_events::StreamingEventEnvelope,
    ) -> DomainResult<()> {
        Err(HandlerError::permanent("rejected"))
    }

    fn name(&self) -> &str {
        "summary"
    }
}

/// A dead letter written by the runtime, as a template for the records filled in.
async fn template(client: &StreamingClient) -> DeadLetter {
    client
        .publisher()
        .publish(&activated(PersonId::new(), 1, "template"))
        .await
        .unwrap();
    let mut manager = SubscriptionManager::new(client.clone()).with_options(
        SubscriptionOptions::default()
            .dead_letter_policy(DeadLetterPolicy::Continue)
            .fetch_expiry(Duration::from_millis(200)),
    );
    manager.register_handler(Arc::new(Rejects));
    let handle = manager.start_consumer(CONSUMER).await.unwrap();
    eventually("the template dead letter", async || {
        handle.stats().dead_lettered == 1
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    let dlq = client.dead_letters();
    let mut listed = dlq.list(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    let stored = listed.remove(0);
    dlq.delete(stored.dlq_sequence).await.unwrap();
    stored.letter
}

/// Stores `n` dead letters on the DLQ subjects, as `DeadLetterQueue::put` writes a
/// record that fits (JSON body, `Nats-Msg-Id`, `Content-Type`), many acks in flight:
/// three consumers, 500 people, a few reasons (some parked).
async fn fill(client: &StreamingClient, template: &DeadLetter, round: &str, n: usize) {
    let people: Vec<String> = (0..500).map(|_| PersonId::new().to_string()).collect();
    let consumers = [CONSUMER, "policy-engine", "person-to-location"];
    let js = client.jetstream();
    let stored = futures::stream::iter(0..n)
        .map(|i| {
            let person = &people[i % people.len()];
            let consumer = consumers[i % consumers.len()];
            let letter = DeadLetter {
                subject: format!("person.events.{person}.activated"),
                stream_sequence: i as u64 + 1,
                consumer: consumer.into(),
                person_id: Some(person.clone()),
                event_type: Some("activated".into()),
                reason: match i % 4 {
                    0 => "handler timed out".to_owned(),
                    3 => format!("blocked by {i}"),
                    _ => format!("rejected: {}", i % 7),
                },
                payload: Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(200))),
                ..template.clone()
            };
            let subject = format!("person.dlq.{consumer}.{person}.activated");
            let body = serde_json::to_vec(&letter).unwrap();
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{round}-{i}").as_str());
            headers.insert("Content-Type", "application/json");
            let js = js.clone();
            async move {
                js.publish_with_headers(subject, headers, body.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(2048)
        .count()
        .await;
    assert_eq!(stored, n);
}

/// Runs the binary with `args` to its end, polling its peak RSS (`VmHWM`, KiB) every
/// millisecond; returns the last peak read and stdout. Samples taken before the child
/// became `person-stream` (between fork and exec) are left out; a run that ended before
/// any sample is run again (only a quick read ends that fast; a purge takes seconds).
async fn peak_rss(url: &str, args: &[&str]) -> (u64, String) {
    for _ in 0..5 {
        let (peak, out) = sample_rss(url, args).await;
        if peak > 0 {
            return (peak, out);
        }
    }
    panic!("no VmHWM read for person-stream {args:?} in 5 runs");
}

async fn sample_rss(url: &str, args: &[&str]) -> (u64, String) {
    let child = command(url, args).spawn().unwrap();
    let status = format!("/proc/{}/status", child.id().unwrap());
    let run = tokio::spawn(child.wait_with_output());
    let mut peak = 0u64;
    while !run.is_finished() {
        if let Ok(text) = std::fs::read_to_string(&status)
            && text
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .is_some_and(|n| n.trim() == "person-stream")
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let out = run.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "person-stream {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (peak, stdout)
}

/// Peak RSS (KiB) of `dlq list --limit 10`, `status` and `dlq purge --all --yes` on a
/// DLQ of `n` letters, checking what each printed.
async fn measure(url: &str, client: &StreamingClient, n: usize) -> [u64; 3] {
    let (list, out) = peak_rss(url, &["dlq", "list", "--limit", "10"]).await;
    let rows = out
        .lines()
        .filter(|l| {
            l.contains("handler timed out") || l.contains("rejected") || l.contains("blocked by")
        })
        .count();
    assert_eq!(rows, 10, "{out}");
    assert!(out.contains(&format!("10 of {n} matching")), "{out}");
    assert!(out.contains("more match: add --after "), "{out}");

    let (status, out) = peak_rss(url, &["status", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let counted: u64 = doc["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, n as u64, "{doc}");

    let (purge, out) = peak_rss(url, &["dlq", "purge", "--all", "--yes"]).await;
    assert!(out.contains(&format!("purged {n} of {n}")), "{out}");
    assert_eq!(
        client
            .dead_letters()
            .count(&DeadLetterFilter::default())
            .await
            .unwrap(),
        0
    );
    [list, status, purge]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_counts_and_purge_keep_the_same_memory_on_ten_times_the_dead_letters() {
    let (server, client) = start().await;
    let url = server.url();
    let template = DeadLetter {
        headers: Vec::new(),
        ..template(&client).await
    };
    fill(&client, &template, "small", 5_000).await;
    let small = measure(&url, &client, 5_000).await;
    fill(&client, &template, "large", 50_000).await;
    let large = measure(&url, &client, 50_000).await;
    for ((what, s), l) in ["dlq list --limit 10", "status", "dlq purge --all --yes"]
        .iter()
        .zip(small)
        .zip(large)
    {
        println!("peak RSS of {what}: {s} KiB on 5,000 dead letters, {l} KiB on 50,000");
        assert!(
            l as f64 <= s as f64 * 1.5 + 4096.0,
            "{what}: {l} KiB on 50,000 dead letters against {s} KiB on 5,000"
        );
    }
}
