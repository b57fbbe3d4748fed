//! Consumer groups in one process (the cross-process cases are in the end-to-end
//! suite): the group breaker pauses every instance, a one-partition group runs in one
//! instance with the others standing by, a partitioned consumer is refused by
//! `start_consumer`, and a stream partitioned in place has its older events handled
//! first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use person_retry::CircuitBreakerConfig;
use person_streaming::{DeadLetterFilter, StreamingClient};
use person_subscriptions::{
    GroupHandle, HandlerError, SubscriptionErrorKind, SubscriptionManager, SubscriptionOptions,
};

use crate::support::*;

const PARTITIONS: u32 = 4;

async fn join(
    client: &StreamingClient,
    handler: Arc<Recorder>,
    options: SubscriptionOptions,
) -> GroupHandle {
    let mut manager = SubscriptionManager::new(client.clone()).with_options(options);
    manager.register_handler(handler);
    manager.start_group(CONSUMER).await.unwrap()
}

/// The group's durables: every partition, its replays, and the pre-partition consumer.
fn durables() -> Vec<String> {
    (0..PARTITIONS)
        .flat_map(|k| {
            [
                format!("{CONSUMER}-p{k}"),
                format!("{CONSUMER}-p{k}-replays"),
            ]
        })
        .chain([CONSUMER.to_owned()])
        .collect()
}

/// `(paused, delivered stream sequence)` of each durable.
async fn wire(client: &StreamingClient) -> HashMap<String, (bool, u64)> {
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let mut out = HashMap::new();
    for d in durables() {
        let info = stream.consumer_info(&d).await.unwrap();
        out.insert(d, (info.paused, info.delivered.stream_sequence));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opening_in_one_instance_pauses_the_whole_group_and_dead_letters_nothing() {
    let config = config(20).with_partitions(CONSUMER, PARTITIONS).unwrap();
    let (_server, client) = start(config).await;
    let other = StreamingClient::new(&_server.url(), client.config().clone())
        .await
        .unwrap();
    let breaker = CircuitBreakerConfig::builder()
        .failure_threshold(3)
        .open_timeout(Duration::from_secs(6))
        .half_open_max_probes(1)
        .success_threshold(1)
        .build()
        .unwrap();
    let options = SubscriptionOptions::default()
        .breaker(breaker)
        .group_lease(Duration::from_secs(2))
        .fetch_expiry(Duration::from_millis(300));
    // Only instance A's downstream is out.
    let down = Arc::new(AtomicBool::new(false));
    let down_a = down.clone();
    let a = Arc::new(Recorder::failing("groups", move |_, _| {
        down_a
            .load(Ordering::SeqCst)
            .then(|| HandlerError::transient("downstream unavailable"))
    }));
    let b = Arc::new(Recorder::new("groups"));
    let ga = join(&client, a.clone(), options.clone()).await;
    let gb = join(&other, b.clone(), options).await;
    eventually(30, "both instances run partitions", || {
        !ga.partitions().is_empty() && !gb.partitions().is_empty()
    })
    .await;

    let (_, warmup) = workload(40, 1);
    publish(&client, &warmup).await;
    eventually(30, "the warm-up is handled", || {
        a.distinct() + b.distinct() >= warmup.len()
    })
    .await;

    down.store(true, Ordering::SeqCst);
    let (_, during) = workload(40, 3);
    publish(&client, &during).await;
    // A's breaker opens on its failures and pauses every consumer of the group,
    // including B's.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let paused = loop {
        let w = wire(&client).await;
        if w.values().all(|(p, _)| *p) {
            break w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group never paused: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // While paused, the server delivers nothing to either instance.
    let b_before = b.total_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = wire(&client).await;
    for (d, (p, delivered)) in &later {
        if *p {
            assert_eq!(*delivered, paused[d].1, "{d} was delivered to while paused");
        }
    }
    assert!(
        b.total_calls.load(Ordering::SeqCst) <= b_before + 64,
        "B handled no more than what it held"
    );
    down.store(false, Ordering::SeqCst);
    let total = warmup.len() + during.len();
    eventually(90, "everything is handled after the outage", || {
        a.distinct() + b.distinct() >= total
    })
    .await;
    assert_eq!(
        client
            .dead_letters()
            .count(&Default::default())
            .await
            .unwrap(),
        0,
        "nothing dead-lettered during the outage"
    );
    ga.shutdown(Duration::from_secs(5)).await;
    gb.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_partition_group_runs_in_one_instance_and_fails_over_to_the_other() {
    let (_server, client) = start(config(20)).await;
    let options = SubscriptionOptions::default()
        .group_lease(Duration::from_secs(2))
        .fetch_expiry(Duration::from_millis(300));
    let a = Arc::new(Recorder::new("standby"));
    let b = Arc::new(Recorder::new("standby"));
    let ga = join(&client, a.clone(), options.clone()).await;
    eventually(30, "A runs the consumer", || ga.partitions() == [0]).await;
    let gb = join(&client, b.clone(), options).await;
    let (_, first) = workload(20, 5);
    publish(&client, &first).await;
    eventually(30, "A handles everything", || a.distinct() >= first.len()).await;
    assert!(gb.partitions().is_empty(), "B stands by");
    assert_eq!(b.total_calls.load(Ordering::SeqCst), 0, "B handled nothing");
    ga.shutdown(Duration::from_secs(5)).await;
    eventually(30, "B takes over", || gb.partitions() == [0]).await;
    let (_, second) = workload(20, 5);
    publish(&client, &second).await;
    eventually(30, "B handles what came after", || {
        b.distinct() >= second.len()
    })
    .await;
    assert_eq!(
        a.distinct() + b.distinct(),
        first.len() + second.len(),
        "nothing twice"
    );
    gb.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_partitioned_consumer_is_started_as_a_group_not_as_one_consumer() {
    let config = config(5).with_partitions(CONSUMER, PARTITIONS).unwrap();
    let (_server, client) = start(config).await;
    let mut manager = SubscriptionManager::new(client.clone());
    manager.register_handler(Arc::new(Recorder::new("single")));
    let err = manager.start_consumer(CONSUMER).await.unwrap_err();
    assert_eq!(err.kind(), SubscriptionErrorKind::Partitioned, "{err}");
    assert!(err.to_string().contains("start_group"), "{err}");
}

/// A stream partitioned in place, with events stored before and after: two instances
/// share the partitions, the owner of partition 0 runs the pre-partition consumer, and
/// every person's events are first handled in stream order across both eras.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_a_stream_partitioned_in_place_handles_the_older_events_first() {
    let (server, client) = start(config(20)).await;
    let (people, before) = workload(40, 5);
    publish(&client, &before).await;

    let partitioned = config(20).with_partitions(CONSUMER, PARTITIONS).unwrap();
    let client = connect(&server, partitioned).await;
    let after: Vec<_> = (6..=10)
        .flat_map(|v| {
            people
                .iter()
                .map(move |&p| event(p, v, format!("step {v}")))
        })
        .collect();
    publish(&client, &after).await;

    let options = SubscriptionOptions::default()
        .group_lease(Duration::from_secs(2))
        .fetch_expiry(Duration::from_millis(300));
    // One recorder shared by both instances: one history across them.
    let seen = Arc::new(Recorder::new("migrated").with_delay(Duration::from_millis(1)));
    let ga = join(&client, seen.clone(), options.clone()).await;
    let gb = join(&client, seen.clone(), options).await;
    eventually(60, "both eras handled", || {
        seen.distinct() == before.len() + after.len()
    })
    .await;
    let order = seen.first_success_order();
    for p in &people {
        assert_eq!(
            order.get(p).map(Vec::as_slice),
            Some(&(1..=10).collect::<Vec<u64>>()[..]),
            "{p}'s events in stream order"
        );
    }
    eventually(30, "the partitions split evenly", || {
        [ga.partitions(), gb.partitions()]
            .iter()
            .all(|p| p.len() == PARTITIONS as usize / 2)
    })
    .await;
    let runs_legacy = |g: &GroupHandle| g.consumer_names().iter().any(|c| c == CONSUMER);
    let legacy_owner = [&ga, &gb].into_iter().filter(|g| runs_legacy(g)).count();
    assert_eq!(
        legacy_owner, 1,
        "one instance runs the pre-partition consumer"
    );
    assert!(
        [&ga, &gb]
            .into_iter()
            .all(|g| runs_legacy(g) == g.partitions().contains(&0)),
        "with partition 0"
    );
    ga.shutdown(Duration::from_secs(5)).await;
    gb.shutdown(Duration::from_secs(5)).await;
}

/// A person's dead letters in a group: recorded under the partition's durable, the
/// person's later events parked behind them, and replayed through the partition's
/// replay consumer to the instance that owns the partition, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_partitions_dead_letters_replay_to_its_owner_in_order() {
    let config = config(3).with_partitions(CONSUMER, PARTITIONS).unwrap();
    let (_server, client) = start(config).await;
    let options = SubscriptionOptions::default()
        .group_lease(Duration::from_secs(2))
        .fetch_expiry(Duration::from_millis(300));
    let (people, events) = workload(8, 6);
    let victim = people[0];
    let fixed = Arc::new(AtomicBool::new(false));
    let recorder = |fixed: Arc<AtomicBool>| {
        Arc::new(Recorder::failing("replays", move |env, _| {
            (env.aggregate_id == victim && env.sequence == 3 && !fixed.load(Ordering::SeqCst))
                .then(|| HandlerError::permanent("corrupt"))
        }))
    };
    let (a, b) = (recorder(fixed.clone()), recorder(fixed.clone()));
    let ga = join(&client, a.clone(), options.clone()).await;
    let gb = join(&client, b.clone(), options).await;
    eventually(30, "the partitions split evenly", || {
        ga.partitions().len() == 2 && gb.partitions().len() == 2
    })
    .await;
    publish(&client, &events).await;
    eventually(30, "everyone else handled, the victim parked", || {
        a.distinct() + b.distinct() == 7 * 6 + 2
    })
    .await;
    let letters = client
        .dead_letters()
        .list(&DeadLetterFilter {
            person_id: Some(victim.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(letters.len(), 4, "the failed event and the three behind it");
    let durable = letters[0].letter.consumer.clone();
    assert!(
        durable.starts_with(&format!("{CONSUMER}-p")) && !durable.ends_with("-replays"),
        "recorded under the partition's durable: {durable}"
    );
    assert!(letters.iter().all(|l| l.letter.consumer == durable));
    // The group's name selects its partitions' letters.
    let by_group = DeadLetterFilter {
        consumer: Some(CONSUMER.to_owned()),
        ..Default::default()
    };
    let dlq = client.dead_letters();
    assert_eq!(dlq.count(&by_group).await.unwrap(), 4);
    let listed: Vec<u64> = dlq
        .list(&by_group)
        .await
        .unwrap()
        .iter()
        .map(|l| l.dlq_sequence)
        .collect();
    let want: Vec<u64> = letters.iter().map(|l| l.dlq_sequence).collect();
    assert_eq!(listed, want);

    fixed.store(true, Ordering::SeqCst);
    for l in &letters {
        client.dead_letters().replay(l.dlq_sequence).await.unwrap();
    }
    eventually(30, "the replayed events are handled", || {
        a.distinct() + b.distinct() == 8 * 6
    })
    .await;
    let (owner, other) = if a.order_by_person().contains_key(&victim) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(
        !other.order_by_person().contains_key(&victim),
        "one instance handled the victim"
    );
    assert_eq!(
        owner.first_success_order()[&victim],
        (1..=6).collect::<Vec<u64>>(),
        "in order"
    );
    assert_eq!(
        client
            .dead_letters()
            .count(&Default::default())
            .await
            .unwrap(),
        0,
        "nothing parked again"
    );
    ga.shutdown(Duration::from_secs(5)).await;
    gb.shutdown(Duration::from_secs(5)).await;
}
