//! The breaker as the server sees it: while it is Open the runtime sends no pull
//! request, so nothing is delivered whatever the backlog (the consumer's waiting pulls,
//! delivered sequences and unacknowledged count stay where they were, and the hand does
//! not grow); once it half-opens on its own timer and closes, the backlog is handled in
//! order per person, nothing lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer;
use person_retry::{BreakerState, CircuitBreakerConfig};
use person_streaming::StreamingClient;
use person_subscriptions::{HandlerError, SubscriptionOptions};

use crate::support::*;

/// The test consumer as the server reports it now.
async fn consumer_info(client: &StreamingClient) -> consumer::Info {
    client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .consumer_info(CONSUMER)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_open_breaker_sends_no_pull_and_the_backlog_is_handled_in_order_once_it_closes() {
    const PEOPLE: usize = 4;
    const PER_PERSON: u64 = 6;
    /// Consumer-info samples taken while the breaker is Open and the backlog waits.
    const SAMPLES: u32 = 10;
    let (_server, client) = start(config(20)).await;
    let (people, all) = workload(PEOPLE, PER_PERSON);
    // Each person's first event, then (published while the breaker is Open) the rest.
    let (first, backlog) = all.split_at(PEOPLE);
    let down = Arc::new(AtomicBool::new(true));
    let down_h = down.clone();
    let recorder = Arc::new(Recorder::failing("sync", move |_, _| {
        down_h
            .load(Ordering::SeqCst)
            .then(|| HandlerError::transient("downstream unavailable"))
    }));
    let breaker = CircuitBreakerConfig::builder()
        .failure_threshold(3)
        .open_timeout(Duration::from_secs(4))
        .half_open_max_probes(1)
        .success_threshold(1)
        .build()
        .unwrap();
    let mut options = SubscriptionOptions::default()
        .concurrency(PEOPLE)
        .breaker(breaker);
    // Short pulls: the one outstanding when the breaker opens ends soon, and a runtime
    // that pulled while Open would have a pull waiting most of the time.
    options.fetch_expiry = Duration::from_millis(300);
    let handle = run(&client, recorder.clone(), options).await;
    publish(&client, first).await;
    eventually_report(
        10,
        || handle.breaker_states()[0].1 == BreakerState::Open,
        || {
            format!(
                "the breaker opens after 3 failures; it is {:?} after {} calls",
                handle.breaker_states()[0].1,
                recorder.total_calls.load(Ordering::SeqCst)
            )
        },
    )
    .await;
    // The pull outstanding when it opened ends at its expiry (300 ms); none follows it,
    // which the samples below check.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while consumer_info(&client).await.num_waiting > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = consumer_info(&client).await;
    let in_hand = handle.stats().in_hand;
    let calls = recorder.total_calls.load(Ordering::SeqCst);
    publish(&client, backlog).await;

    let mut samples = 0;
    while samples < SAMPLES && handle.breaker_states()[0].1 == BreakerState::Open {
        let now = consumer_info(&client).await;
        assert_eq!(
            now.num_waiting, 0,
            "a pull request while Open (sample {samples})"
        );
        assert_eq!(
            (
                now.delivered.stream_sequence,
                now.delivered.consumer_sequence
            ),
            (
                before.delivered.stream_sequence,
                before.delivered.consumer_sequence
            ),
            "delivered while Open (sample {samples})"
        );
        assert_eq!(
            now.num_ack_pending, before.num_ack_pending,
            "unacknowledged count moved while Open (sample {samples})"
        );
        assert!(
            now.num_pending >= backlog.len() as u64,
            "the backlog was pulled while Open: {} pending of {} (sample {samples})",
            now.num_pending,
            backlog.len()
        );
        let stats = handle.stats();
        assert!(
            stats.in_hand <= in_hand,
            "the hand grew while Open: {} > {in_hand} (sample {samples})",
            stats.in_hand
        );
        assert_eq!(
            recorder.total_calls.load(Ordering::SeqCst),
            calls,
            "a handler ran while Open (sample {samples})"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        samples, SAMPLES,
        "the breaker left Open before the backlog was watched"
    );

    // The downstream is back: the breaker half-opens on its own timer, its probe
    // succeeds, and the backlog follows.
    down.store(false, Ordering::SeqCst);
    let total = all.len();
    eventually_report(
        30,
        || recorder.distinct() == total && handle.breaker_states()[0].1 == BreakerState::Closed,
        || {
            format!(
                "all {total} events handled and the breaker closed; {} handled, breaker {:?}, {:?}",
                recorder.distinct(),
                handle.breaker_states()[0].1,
                handle.stats()
            )
        },
    )
    .await;
    let want: Vec<u64> = (1..=PER_PERSON).collect();
    let order = recorder.first_success_order();
    let expected: HashMap<_, _> = people.iter().map(|p| (*p, want.clone())).collect();
    assert_eq!(order, expected, "each person's events in order, none lost");
    assert_eq!(handle.stats().dead_lettered, 0);
    wait_idle(&client, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}
