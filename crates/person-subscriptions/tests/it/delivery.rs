//! Delivery, retries, ordering, dead letters and parking.

use std::collections::HashSet;
use std::sync::Arc;

use person_events::EventId;
use person_streaming::DeadLetterFilter;
use person_subscriptions::{DeadLetterPolicy, HandlerError, SubscriptionOptions};
use rand::Rng;

use crate::support::*;

#[tokio::test]
async fn every_event_arrives_once_with_its_payload_and_metadata() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(10, 10);
    publish(&client, &events).await;
    let recorder = Arc::new(Recorder::new("summary"));
    let handle = run(&client, recorder.clone(), SubscriptionOptions::default()).await;
    eventually(30, "100 events handled", || {
        recorder.seen.lock().unwrap().len() >= 100
    })
    .await;
    eventually(10, "consumer idle", || true).await;
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 100);
    for sent in &events {
        let got = seen
            .iter()
            .find(|e| e.event_id == sent.event_id)
            .expect("every event arrives");
        assert_eq!(got.event, sent.event, "payload and metadata intact");
        assert_eq!(got.sequence, sent.sequence);
        assert!(got.stream_position.is_some());
    }
    assert_eq!(handle.stats().processed, 100);
    handle.shutdown(std::time::Duration::from_secs(5)).await;
    assert!(consumer_idle(&client, CONSUMER).await);
}

#[tokio::test]
async fn transient_failures_are_retried_and_order_per_person_holds() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(16, 63); // 1,008 events
    publish(&client, &events).await;
    let mut rng = rand::rng();
    let flaky: HashSet<EventId> = events
        .iter()
        .filter(|_| rng.random_bool(0.05))
        .map(|e| e.event_id)
        .collect();
    assert!(!flaky.is_empty());
    let recorder = Arc::new(Recorder::failing("search", move |env, call| {
        (call == 1 && flaky.contains(&env.event_id))
            .then(|| HandlerError::transient("search index busy"))
    }));
    let handle = run(
        &client,
        recorder.clone(),
        SubscriptionOptions::default().concurrency(8),
    )
    .await;
    eventually(60, "every event handled", || {
        recorder.distinct() == events.len()
    })
    .await;
    assert_eq!(
        recorder.seen.lock().unwrap().len(),
        events.len(),
        "no event applied twice"
    );
    for (person, order) in recorder.order_by_person() {
        assert_eq!(
            order,
            (1..=63).collect::<Vec<u64>>(),
            "person {person} out of order"
        );
    }
    assert!(handle.stats().retried > 0);
    assert_eq!(handle.stats().dead_lettered, 0);
    handle.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn permanent_failures_go_to_the_dlq_and_nothing_is_left_pending() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(500, 20); // 10,000 events
    publish(&client, &events).await;
    let mut rng = rand::rng();
    let mut poison = HashSet::new();
    while poison.len() < 100 {
        poison.insert(events[rng.random_range(0..events.len())].event_id);
    }
    let poison_for_handler = poison.clone();
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        poison_for_handler
            .contains(&env.event_id)
            .then(|| HandlerError::permanent("summary cannot apply this event"))
    }));
    let handle = run(
        &client,
        recorder.clone(),
        SubscriptionOptions::default()
            .concurrency(32)
            .dead_letter_policy(DeadLetterPolicy::Continue),
    )
    .await;
    eventually(120, "9,900 events handled and 100 dead-lettered", || {
        recorder.distinct() == 9_900 && handle.stats().dead_lettered == 100
    })
    .await;
    let dlq = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dlq.len(), 100);
    let dead: HashSet<EventId> = dlq
        .iter()
        .map(|d| d.letter.event_id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(dead, poison);
    assert!(
        dlq.iter()
            .all(|d| d.letter.reason.contains("summary cannot apply"))
    );
    assert!(
        dlq.iter()
            .all(|d| d.letter.consumer == CONSUMER && d.letter.handler == "summary")
    );
    eventually(10, "ack floor caught up", || handle.stats().in_hand == 0).await;
    assert!(consumer_idle(&client, CONSUMER).await);
    handle.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn exhausted_deliveries_end_in_one_dead_letter() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(1, 1);
    publish(&client, &events).await;
    let recorder = Arc::new(Recorder::failing("sync", |_, _| {
        Some(HandlerError::transient("downstream 503"))
    }));
    let handle = run(&client, recorder.clone(), SubscriptionOptions::default()).await;
    eventually(30, "one dead letter", || handle.stats().dead_lettered == 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(
        recorder
            .total_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        5,
        "exactly max_deliver calls"
    );
    let dlq = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    let letter = &dlq[0].letter;
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let original = stream.get_raw_message(1).await.unwrap();
    assert_eq!(letter.payload, original.payload, "original bytes");
    assert_eq!(letter.subject, original.subject.as_str());
    assert_eq!(letter.stream_sequence, 1);
    assert_eq!(letter.consumer, CONSUMER);
    assert_eq!(letter.delivery_count, 5);
    assert!(
        letter
            .headers
            .iter()
            .any(|(n, v)| n == "Nats-Msg-Id" && *v == events[0].event_id.to_string())
    );
    assert!(letter.reason.contains("5 deliveries"), "{}", letter.reason);
    assert!(
        consumer_idle(&client, CONSUMER).await,
        "no further deliveries"
    );
    handle.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn later_events_of_a_dead_lettered_person_are_parked() {
    let (_server, client) = start(config(5)).await;
    let (people, events) = workload(4, 6);
    publish(&client, &events).await;
    let victim = people[0];
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fixed_in_handler = fixed.clone();
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        (!fixed_in_handler.load(std::sync::atomic::Ordering::SeqCst)
            && env.aggregate_id == victim
            && env.sequence == 3)
            .then(|| HandlerError::permanent("corrupt"))
    }));
    let handle = run(&client, recorder.clone(), SubscriptionOptions::default()).await;
    eventually(30, "others done and victim parked", || {
        recorder.seen.lock().unwrap().len() == 3 * 6 + 2 && handle.stats().dead_lettered == 4
    })
    .await;
    let order = recorder.order_by_person();
    assert_eq!(
        order[&victim],
        vec![1, 2],
        "nothing after the failed event is applied"
    );
    for p in &people[1..] {
        assert_eq!(order[p], (1..=6).collect::<Vec<u64>>());
    }
    assert_eq!(handle.stats().parked, 3);
    let dlq = client
        .dead_letters()
        .list(&DeadLetterFilter {
            person_id: Some(victim.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dlq.len(), 4);
    let first = dlq[0].letter.event_id.clone().unwrap();
    assert!(dlq[0].letter.reason.contains("corrupt"));
    for d in &dlq[1..] {
        assert_eq!(d.letter.reason, format!("blocked by {first}"));
    }
    // With the handler fixed, replaying in DLQ order un-parks the person in the running
    // consumer and applies the events in order.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    for d in &dlq {
        client.dead_letters().replay(d.dlq_sequence).await.unwrap();
    }
    eventually(30, "replayed events applied", || {
        recorder.seen.lock().unwrap().len() == 24
    })
    .await;
    assert_eq!(
        recorder.order_by_person()[&victim],
        (1..=6).collect::<Vec<u64>>()
    );
    assert_eq!(handle.stats().dead_lettered, 4, "nothing parked again");
    handle.shutdown(std::time::Duration::from_secs(5)).await;
}

/// A consumer paused on the server for longer than the ack wait, while a person's
/// failed event waits for its redelivery: the person's later events, already in hand,
/// wait too, however long the pause, and run in order once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_longer_than_the_ack_wait_keeps_a_waiting_person_in_order() {
    let (_server, client) = start(config(20)).await;
    let (people, events) = workload(3, 5);
    let victim = people[0];
    publish(&client, &events).await;
    // The victim's event 2 fails once, asking to be retried in 2 s.
    let recorder = Arc::new(Recorder::failing("paused", move |env, call| {
        (env.aggregate_id == victim && env.sequence == 2 && call == 1)
            .then(|| HandlerError::retry_after(std::time::Duration::from_secs(2), "later"))
    }));
    let handle = run(&client, recorder.clone(), SubscriptionOptions::default()).await;
    let failed = events
        .iter()
        .find(|e| e.aggregate_id == victim && e.sequence == 2)
        .unwrap()
        .event_id;
    eventually(30, "the victim's event 2 failed once", || {
        recorder.calls_of(failed) == 1
    })
    .await;
    // Paused before its redelivery is due, for well over the ack wait (5 s) plus the
    // margin after which a lane would stop waiting.
    let pause = std::time::Duration::from_secs(12);
    let paused_at = std::time::Instant::now();
    client
        .pause_consumer(
            CONSUMER,
            chrono::Utc::now() + chrono::Duration::from_std(pause).unwrap(),
        )
        .await
        .unwrap();
    eventually(60, "everything handled after the pause", || {
        recorder.distinct() == events.len()
    })
    .await;
    assert!(
        paused_at.elapsed() >= pause - std::time::Duration::from_millis(500),
        "the redelivery came only after the pause"
    );
    assert_eq!(
        recorder.first_success_order()[&victim],
        (1..=5).collect::<Vec<u64>>(),
        "the victim's events in order"
    );
    handle.shutdown(std::time::Duration::from_secs(5)).await;
}

/// Two consumers of every event. On the server each durable has no filter (a durable
/// with filters costs the server a walk of the block's subjects per delivery), so each
/// is also delivered the other's replays: the runtime acknowledges those and never
/// hands them to its handler.
#[tokio::test]
async fn a_consumer_of_every_event_skips_the_replays_of_another_consumer() {
    const OTHER: &str = "other-projection";
    let mut config = config(5);
    let mut other = config.consumers[0].clone();
    other.durable_name = OTHER.into();
    other.filter_subjects = vec!["person.events.>".into()];
    config.consumers.push(other);
    let (_server, client) = start(config.with_replay_subjects()).await;
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    for name in [CONSUMER, OTHER] {
        let info = stream.consumer_info(name).await.unwrap();
        assert_eq!(info.config.filter_subject, "", "{name}");
        assert!(info.config.filter_subjects.is_empty(), "{name}");
    }
    let (people, events) = workload(3, 4);
    publish(&client, &events).await;
    let victim = people[0];
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail = failing.clone();
    let ours = Arc::new(Recorder::new("ours"));
    let theirs = Arc::new(Recorder::failing("theirs", move |env, _| {
        (fail.load(std::sync::atomic::Ordering::SeqCst)
            && env.aggregate_id == victim
            && env.sequence == 2)
            .then(|| HandlerError::permanent("broken"))
    }));
    let ours_handle = run(&client, ours.clone(), options()).await;
    let mut manager =
        person_subscriptions::SubscriptionManager::new(client.clone()).with_options(options());
    manager.register_handler(theirs.clone());
    let theirs_handle = manager.start_consumer(OTHER).await.unwrap();
    eventually(30, "both consumers through the events", || {
        ours.seen.lock().unwrap().len() == 12 && theirs_handle.stats().dead_lettered == 3
    })
    .await;
    let letters = client
        .dead_letters()
        .list(&DeadLetterFilter {
            consumer: Some(OTHER.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(letters.len(), 3, "event 2 and the two parked behind it");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    for d in &letters {
        client.dead_letters().replay(d.dlq_sequence).await.unwrap();
    }
    eventually(30, "the replays handled by their consumer", || {
        theirs.order_by_person().get(&victim).map(Vec::len) == Some(4)
    })
    .await;
    assert_eq!(theirs.order_by_person()[&victim], [1, 2, 3, 4]);
    // Ours was delivered the three replays too, and acknowledged them unhandled.
    wait_idle(&client, 10).await;
    let info = stream.consumer_info(CONSUMER).await.unwrap();
    assert_eq!(
        info.delivered.stream_sequence,
        info.ack_floor.stream_sequence
    );
    assert_eq!(
        info.delivered.stream_sequence, 15,
        "12 events, then 3 replays: the replays reached ours on the wire"
    );
    assert_eq!(
        ours.seen.lock().unwrap().len(),
        12,
        "no replay handled by ours"
    );
    assert_eq!(ours_handle.stats().processed, 12);
    ours_handle
        .shutdown(std::time::Duration::from_secs(5))
        .await;
    theirs_handle
        .shutdown(std::time::Duration::from_secs(5))
        .await;
}

/// A caught-up consumer keeps one pull request open on the server (a long poll), so an
/// event stored meanwhile is delivered into it at once instead of waiting for a fresh
/// request's round trip. Twenty events stored one at a time, each once the previous
/// was handled, come through a couple of requests, not one (or more) each. The
/// requests are counted on the subject the server takes them on.
#[tokio::test]
async fn a_caught_up_consumer_gets_new_events_through_its_open_pull_request() {
    use futures::{FutureExt, StreamExt};
    let (_server, client) = start(config(5)).await;
    let mut requests = client
        .client()
        .subscribe(format!(
            "$JS.API.CONSUMER.MSG.NEXT.PERSON_EVENTS.{CONSUMER}"
        ))
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::new("live"));
    let options = options().fetch_expiry(std::time::Duration::from_secs(5));
    let handle = run(&client, recorder.clone(), options).await;
    let (_, events) = workload(1, 20);
    let started = std::time::Instant::now();
    for (i, event) in events.iter().enumerate() {
        publish(&client, std::slice::from_ref(event)).await;
        eventually(10, "the event handled", || recorder.distinct() == i + 1).await;
    }
    let took = started.elapsed();
    client.client().flush().await.unwrap();
    let mut count = 0;
    while let Some(Some(_)) = requests.next().now_or_never() {
        count += 1;
    }
    // One request per 5 s expiry, and one spare for the start-up's first pull.
    let allowed = 2 + took.as_secs() / 5;
    assert!(
        count <= allowed,
        "{count} pull requests for 20 events stored one at a time over {took:?} (at most {allowed})"
    );
    handle.shutdown(std::time::Duration::from_secs(5)).await;
}
