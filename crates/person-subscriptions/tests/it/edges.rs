//! The runtime's edges (issue 14): a busy person behind a retry, a breaker that has to
//! recover without new traffic, handler panics, messages too large for a whole dead
//! letter, cumulative acks, restarts during a delayed retry and under load, parking
//! across restarts, and retry timing. Each test asserts the property it names; the
//! deadlines only bound the wait for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use person_events::{EventId, PersonId};
use person_retry::{BreakerState, CircuitBreakerConfig, Jitter};
use person_streaming::{
    AckPolicy, BLOCKED_BY_PREFIX, DeadLetterFilter, StreamingClient, StreamingErrorKind,
};
use person_subscriptions::{DeadLetterPolicy, HandlerError, SubscriptionOptions};
use rand::{Rng, SeedableRng};

use crate::support::*;

fn seqs(range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    range.collect()
}

// 1. A NAKed redelivery can always be pulled, whatever the hand holds.

#[tokio::test]
async fn a_busy_person_whose_second_event_fails_once_gets_all_300_events_handled_in_order() {
    let (_server, client) = start(config(5)).await;
    let (people, events) = workload(1, 300);
    let person = people[0];
    publish(&client, &events).await;
    let flaky = events[1].event_id;
    let recorder = Arc::new(Recorder::failing("rebuild", move |env, call| {
        (call == 1 && env.event_id == flaky).then(|| HandlerError::transient("projection busy"))
    }));
    let handle = run(&client, recorder.clone(), options().max_in_hand(32)).await;
    eventually_report(
        30,
        || recorder.distinct() == 300,
        || {
            format!(
                "all 300 events of one person handled; {} handled, the failed event called {} times, {:?}",
                recorder.distinct(),
                recorder.calls_of(flaky),
                handle.stats()
            )
        },
    )
    .await;
    assert_eq!(
        recorder.first_success_order()[&person],
        seqs(1..=300),
        "the person's events are first handled in stream order"
    );
    assert!(
        recorder.calls_of(flaky) >= 2,
        "the failed event was retried"
    );
    assert_eq!(handle.stats().dead_lettered, 0);
    wait_idle(&client, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn forty_people_at_concurrency_16_with_one_event_in_ten_failing_once_are_all_handled_in_order()
 {
    let (_server, client) = start(config(5)).await;
    let (people, events) = workload(40, 100); // 4,000 events
    publish(&client, &events).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let flaky: HashSet<EventId> = events
        .iter()
        .filter(|_| rng.random_bool(0.1))
        .map(|e| e.event_id)
        .collect();
    assert!(flaky.len() > 300, "about 400 flaky events");
    let flaky_h = flaky.clone();
    let recorder = Arc::new(Recorder::failing("search", move |env, call| {
        (call == 1 && flaky_h.contains(&env.event_id))
            .then(|| HandlerError::transient("search index busy"))
    }));
    let handle = run(&client, recorder.clone(), options().concurrency(16)).await;
    eventually_report(
        30,
        || recorder.distinct() == 4_000,
        || {
            format!(
                "all 4,000 events handled; {} handled, {:?}",
                recorder.distinct(),
                handle.stats()
            )
        },
    )
    .await;
    let order = recorder.first_success_order();
    for p in &people {
        assert_eq!(order[p], seqs(1..=100), "person {p} out of order");
    }
    for id in &flaky {
        assert!(recorder.calls_of(*id) >= 2, "flaky event {id} was retried");
    }
    assert_eq!(handle.stats().dead_lettered, 0);
    wait_idle(&client, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

// 2. The breaker probes on its own timer: recovery needs no new traffic.

#[tokio::test]
async fn a_breaker_opened_by_exactly_its_threshold_closes_after_the_outage_without_new_traffic() {
    let mut cfg = config(10);
    // The redeliveries come after the pull that brought the events has expired.
    cfg.consumers[0].retry = retry_policy(
        10,
        Duration::from_secs(2),
        Duration::from_secs(2),
        Jitter::None,
    );
    let (_server, client) = start(cfg).await;
    let (_, events) = workload(3, 1);
    let down = Arc::new(AtomicBool::new(true));
    let down_h = down.clone();
    let recorder = Arc::new(Recorder::failing("sync", move |_, _| {
        down_h
            .load(Ordering::SeqCst)
            .then(|| HandlerError::transient("downstream unavailable"))
    }));
    let breaker = CircuitBreakerConfig::builder()
        .failure_threshold(3)
        .open_timeout(Duration::from_secs(1))
        .half_open_max_probes(1)
        .success_threshold(1)
        .build()
        .unwrap();
    let handle = run(
        &client,
        recorder.clone(),
        SubscriptionOptions::default()
            .concurrency(4)
            .breaker(breaker),
    )
    .await;
    publish(&client, &events).await;
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
    down.store(false, Ordering::SeqCst);
    // Nothing more is published: the breaker has to probe on its own.
    eventually_report(
        20,
        || recorder.distinct() == 3 && handle.breaker_states()[0].1 == BreakerState::Closed,
        || {
            format!(
                "the 3 events handled and the breaker closed once the outage is over; {} handled, breaker {:?}, {:?}",
                recorder.distinct(),
                handle.breaker_states()[0].1,
                handle.stats()
            )
        },
    )
    .await;
    assert_eq!(recorder.distinct(), 3);
    assert_eq!(handle.breaker_states()[0].1, BreakerState::Closed);
    assert_eq!(handle.stats().dead_lettered, 0);
    assert!(
        client
            .dead_letters()
            .list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty(),
        "an outage fills no DLQ"
    );
    wait_idle(&client, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

// 3. A handler panic counts as a handler failure, caught per call.

#[tokio::test]
async fn a_handler_panic_is_retried_and_the_persons_later_events_follow_in_order() {
    let (_server, client) = start(config(5)).await;
    let (people, events) = workload(1, 5);
    let person = people[0];
    publish(&client, &events).await;
    let panicky = events[1].event_id;
    let recorder = Arc::new(Recorder::failing("summary", move |env, call| {
        if call == 1 && env.event_id == panicky {
            panic!("projection bug on the first call");
        }
        None
    }));
    let handle = run(&client, recorder.clone(), options()).await;
    eventually_report(
        20,
        || recorder.distinct() == 5,
        || {
            format!(
                "all 5 events handled after one panic; handled {:?}, the panicking event called {} times, {:?}",
                recorder.first_success_order().get(&person),
                recorder.calls_of(panicky),
                handle.stats()
            )
        },
    )
    .await;
    assert_eq!(recorder.first_success_order()[&person], seqs(1..=5));
    assert!(recorder.calls_of(panicky) >= 2, "the panic was retried");
    assert_eq!(handle.stats().dead_lettered, 0);
    wait_idle(&client, 10).await;
    assert_eq!(
        handle.stats().in_flight,
        0,
        "no call is left counted as running"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_event_whose_handler_always_panics_is_dead_lettered_and_the_persons_later_events_follow()
{
    let (_server, client) = start(config(3)).await;
    let (people, events) = workload(1, 4);
    let person = people[0];
    publish(&client, &events).await;
    let poison = events[1].event_id;
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        if env.event_id == poison {
            panic!("projection bug on every call");
        }
        None
    }));
    let handle = run(
        &client,
        recorder.clone(),
        options().dead_letter_policy(DeadLetterPolicy::Continue),
    )
    .await;
    eventually_report(
        20,
        || handle.stats().dead_lettered == 1 && recorder.distinct() == 3,
        || {
            format!(
                "the panicking event dead-lettered and the 3 others handled; handled {:?}, the panicking event called {} times, {:?}",
                recorder.first_success_order().get(&person),
                recorder.calls_of(poison),
                handle.stats()
            )
        },
    )
    .await;
    let letters = letters_of(&client, person).await;
    assert_eq!(letters.len(), 1, "one dead letter");
    assert_eq!(
        letters[0].letter.event_id.as_deref(),
        Some(poison.to_string().as_str())
    );
    let calls = recorder.calls_of(poison);
    assert!(
        (2..=3).contains(&calls),
        "retried, then dead-lettered within max_deliver = 3: {calls} calls"
    );
    assert_eq!(recorder.first_success_order()[&person], vec![1, 3, 4]);
    let last_panic = *recorder.call_times(poison).last().unwrap();
    let next = recorder.call_times(events[2].event_id)[0];
    assert!(
        next > last_panic,
        "the person's next event ran after the panicking one was settled"
    );
    wait_idle(&client, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn more_panics_than_runners_do_not_stop_the_consumer_and_shutdown_is_prompt() {
    let (_server, client) = start(config(5)).await;
    let (people, events) = workload(5, 3);
    publish(&client, &events).await;
    let recorder = Arc::new(Recorder::failing("summary", move |env, call| {
        if call == 1 && env.sequence == 1 {
            panic!("projection bug on each person's first event");
        }
        None
    }));
    let handle = run(&client, recorder.clone(), options().concurrency(2)).await;
    eventually_report(
        20,
        || recorder.distinct() == 15,
        || {
            format!(
                "all 15 events handled after 5 panics at concurrency 2; {} handled, {} calls, {:?}",
                recorder.distinct(),
                recorder.total_calls.load(Ordering::SeqCst),
                handle.stats()
            )
        },
    )
    .await;
    let order = recorder.first_success_order();
    for p in &people {
        assert_eq!(order[p], seqs(1..=3), "person {p} out of order");
    }
    assert_eq!(handle.stats().dead_lettered, 0);
    wait_idle(&client, 10).await;
    let started = Instant::now();
    handle.shutdown(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with nothing left to do"
    );
}

#[tokio::test]
async fn shutdown_after_a_handler_panic_returns_without_waiting_its_timeout() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(2, 2);
    publish(&client, &events).await;
    let poison = events[0].event_id;
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        if env.event_id == poison {
            panic!("projection bug on every call");
        }
        None
    }));
    let handle = run(&client, recorder.clone(), options()).await;
    eventually_report(
        10,
        || recorder.calls_of(poison) >= 1,
        || "the panicking event reached the handler".into(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    handle.shutdown(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} (timeout 10 s) after a handler panicked: the panicked call still counts as running"
    );
}

// 4. A dead-letter record always fits the server's max_payload.

#[tokio::test]
async fn an_undecodable_800_kib_message_is_dead_lettered_and_its_persons_next_event_is_handled() {
    let (_server, client) = start(config(5)).await;
    let person = PersonId::new();
    let garbage = vec![0xFF_u8; 800 * 1024];
    client
        .jetstream()
        .publish(format!("person.events.{person}.created"), garbage.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let next = event(person, 1, "after the garbage");
    publish(&client, std::slice::from_ref(&next)).await;
    let recorder = Arc::new(Recorder::new("summary"));
    let handle = run(
        &client,
        recorder.clone(),
        options().dead_letter_policy(DeadLetterPolicy::Continue),
    )
    .await;
    eventually_report(
        20,
        || handle.stats().dead_lettered == 1 && recorder.distinct() == 1,
        || {
            format!(
                "the 800 KiB garbage dead-lettered and the next event handled; {} handled, {:?}",
                recorder.distinct(),
                handle.stats()
            )
        },
    )
    .await;
    let letters = letters_of(&client, person).await;
    assert_eq!(letters.len(), 1, "one dead letter for the garbage");
    let letter = &letters[0].letter;
    assert_eq!(letter.stream_sequence, 1);
    assert!(
        letter.reason.starts_with("undecodable"),
        "{}",
        letter.reason
    );
    assert_eq!(
        recorder.total_calls.load(Ordering::SeqCst),
        1,
        "the garbage never reaches the handler; the next event once"
    );
    assert_eq!(recorder.first_success_order()[&person], vec![1]);
    wait_idle(&client, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_valid_800_kib_event_the_handler_rejects_is_dead_lettered_once_and_its_persons_next_event_is_handled()
 {
    let (_server, client) = start(config(5)).await;
    let person = PersonId::new();
    let big = event(person, 1, "x".repeat(800 * 1024));
    let next = event(person, 2, "small");
    publish(&client, &[big.clone(), next.clone()]).await;
    let big_id = big.event_id;
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        (env.event_id == big_id).then(|| HandlerError::permanent("reason too long to index"))
    }));
    let handle = run(
        &client,
        recorder.clone(),
        options().dead_letter_policy(DeadLetterPolicy::Continue),
    )
    .await;
    eventually_report(
        20,
        || handle.stats().dead_lettered == 1 && recorder.distinct() == 1,
        || {
            format!(
                "the 800 KiB event dead-lettered and the next one handled; the big event called {} times, {} handled, {:?}",
                recorder.calls_of(big_id),
                recorder.distinct(),
                handle.stats()
            )
        },
    )
    .await;
    let letters = letters_of(&client, person).await;
    assert_eq!(letters.len(), 1, "one dead letter for the big event");
    let letter = &letters[0].letter;
    assert_eq!(
        letter.event_id.as_deref(),
        Some(big_id.to_string().as_str())
    );
    assert!(
        letter.reason.contains("reason too long to index"),
        "{}",
        letter.reason
    );
    assert_eq!(
        recorder.calls_of(big_id),
        1,
        "a permanent failure is one handler call"
    );
    assert_eq!(recorder.first_success_order()[&person], vec![2]);
    wait_idle(&client, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

// 5. Only explicit acks.

fn cumulative_ack_config() -> person_streaming::StreamingConfig {
    let mut cfg = config(5);
    cfg.consumers[0].ack_policy = AckPolicy::All;
    cfg
}

#[tokio::test]
async fn a_consumer_with_cumulative_acks_is_refused_by_validate_and_by_connecting() {
    let cfg = cumulative_ack_config();
    let err = cfg
        .validate()
        .expect_err("validate() accepted ack_policy = all (acking one person's event would ack another's NAK-delayed one)");
    assert!(err.field().contains("ack_policy"), "{err}");
    assert!(err.to_string().contains("ack_policy"), "{err}");

    let server = nats_harness::NatsServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
    for ensure in [true, false] {
        match StreamingClient::builder(server.url())
            .ensure_on_connect(ensure)
            .connect(cfg.clone())
            .await
        {
            Ok(_) => panic!("connecting (ensure_on_connect = {ensure}) accepted ack_policy = all"),
            Err(e) => {
                assert_eq!(e.kind(), StreamingErrorKind::InvalidConfig, "{e}");
                assert!(e.to_string().contains("ack_policy"), "{e}");
            }
        }
    }
    match StreamingClient::new(&server.url(), cfg).await {
        Ok(_) => panic!("StreamingClient::new accepted ack_policy = all"),
        Err(e) => assert!(e.to_string().contains("ack_policy"), "{e}"),
    }
}

#[tokio::test]
async fn ensuring_one_consumer_with_cumulative_acks_is_refused() {
    let (_server, client) = start(config(5)).await;
    let mut settings = cumulative_ack_config().consumers[0].clone();
    settings.durable_name = "cumulative".into();
    match client.ensure_consumer(&settings).await {
        Ok(()) => panic!("ensure_consumer created a consumer with ack_policy = all"),
        Err(e) => assert!(e.to_string().contains("ack_policy"), "{e}"),
    }
}

// 6. Restarts keep a person's order, and nothing is stranded until ack_wait.

#[tokio::test]
async fn a_graceful_restart_while_an_event_waits_for_its_delayed_retry_keeps_the_persons_order() {
    let mut cfg = config(5);
    cfg.consumers[0].ack_wait_secs = 30;
    cfg.consumers[0].retry = retry_policy(
        5,
        Duration::from_secs(3),
        Duration::from_secs(3),
        Jitter::None,
    );
    let (server, client) = start(cfg.clone()).await;
    let (people, events) = workload(4, 5);
    let person = people[0];
    let first = events[0].event_id;
    assert_eq!(
        (events[0].aggregate_id, events[0].sequence),
        (person, 1),
        "events[0] is the person's event 1"
    );
    publish(&client, &events).await;
    let recorder = Arc::new(Recorder::failing("summary", move |env, call| {
        (call == 1 && env.event_id == first).then(|| HandlerError::transient("downstream 503"))
    }));
    let handle = run(&client, recorder.clone(), options()).await;
    eventually_report(
        10,
        || recorder.calls_of(first) == 1 && recorder.distinct() == 15,
        || {
            format!(
                "event 1 failed once and the other people's 15 events handled; {} handled, {:?}",
                recorder.distinct(),
                handle.stats()
            )
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let since_failure = recorder.call_times(first)[0].elapsed();
    assert!(
        since_failure < Duration::from_secs(2),
        "the shutdown begins while event 1 waits for its 3 s retry ({since_failure:?} after the failure)"
    );
    handle.shutdown(Duration::from_secs(10)).await;

    // The next instance, on its own connection like a new process.
    let next = connect(&server, cfg).await;
    let restarted = Instant::now();
    let handle = run(&next, recorder.clone(), options()).await;
    eventually_report(
        15,
        || recorder.distinct() == 20,
        || {
            format!(
                "all 20 events handled after the restart, well before ack_wait (30 s); the person's handled so far: {:?}, {:?}",
                recorder.first_success_order().get(&person),
                handle.stats()
            )
        },
    )
    .await;
    assert!(restarted.elapsed() < Duration::from_secs(15));
    let order = recorder.first_success_order();
    assert_eq!(
        order[&person],
        seqs(1..=5),
        "events 2..5 must not overtake event 1 across the restart"
    );
    for p in &people[1..] {
        assert_eq!(order[p], seqs(1..=5));
    }
    assert_eq!(recorder.calls_of(first), 2);
    wait_idle(&next, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutting_down_under_load_while_events_keep_arriving_and_restarting_handles_every_event_in_order()
 {
    let mut cfg = config(5);
    // A message stranded by a shutdown would only come back after this.
    cfg.consumers[0].ack_wait_secs = 30;
    let (server, client) = start(cfg.clone()).await;
    let (people, events) = workload(40, 50); // 2,000 events
    // A producer publishes one event per person every 40 ms (about 1,000 a second),
    // so the consumer is caught up and has a pull open whenever it shuts down.
    let producer = {
        let client = client.clone();
        let events = events.clone();
        tokio::spawn(async move {
            for round in events.chunks(40) {
                publish(&client, round).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let recorder = Arc::new(Recorder::new("summary").with_delay(Duration::from_millis(5)));
    let options = options().concurrency(8).max_in_hand(64);
    let mut clients = vec![client.clone()];
    let mut handle = run(&client, recorder.clone(), options.clone()).await;
    for restart in 1..=4 {
        let target = restart * 350;
        eventually_report(
            20,
            || recorder.distinct() >= target,
            || {
                format!(
                    "{target} events handled before restart {restart}; {} handled, {:?}",
                    recorder.distinct(),
                    handle.stats()
                )
            },
        )
        .await;
        handle.shutdown(Duration::from_secs(10)).await;
        let next = connect(&server, cfg.clone()).await;
        handle = run(&next, recorder.clone(), options.clone()).await;
        clients.push(next);
    }
    producer.await.expect("the producer published everything");
    eventually_report(
        20,
        || recorder.distinct() == 2_000,
        || {
            format!(
                "all 2,000 events handled after 4 restarts under load, well before ack_wait (30 s); {} handled, {:?}",
                recorder.distinct(),
                handle.stats()
            )
        },
    )
    .await;
    let order = recorder.first_success_order();
    for p in &people {
        assert_eq!(order[p], seqs(1..=50), "person {p} out of order");
    }
    wait_idle(&client, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

// 7. Parking survives a restart, until the blocker is purged by another process.

#[tokio::test]
async fn a_parked_person_stays_parked_after_a_restart_until_another_process_purges_its_letters() {
    let cfg = config(5);
    let (server, client) = start(cfg.clone()).await;
    let person = PersonId::new();
    let e: Vec<_> = (1..=4)
        .map(|seq| event(person, seq, format!("step {seq}")))
        .collect();
    let blocker = e[0].event_id;
    publish(&client, &e[..2]).await;
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        (env.event_id == blocker).then(|| HandlerError::permanent("corrupt"))
    }));
    let handle = run(&client, recorder.clone(), options()).await;
    eventually_report(
        20,
        || handle.stats().dead_lettered == 2 && handle.stats().parked == 1,
        || {
            format!(
                "event 1 dead-lettered and event 2 parked; {:?}",
                handle.stats()
            )
        },
    )
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    let blocked_by = format!("{BLOCKED_BY_PREFIX}{blocker}");
    let letters = letters_of(&client, person).await;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[1].letter.reason, blocked_by);

    // Restart, then event 3 arrives.
    let next = connect(&server, cfg.clone()).await;
    let handle = run(&next, recorder.clone(), options()).await;
    publish(&next, &e[2..3]).await;
    let third_id = e[2].event_id;
    let third = third_id.to_string();
    let (r, c, t) = (&recorder, &next, third.as_str());
    eventually_async(20, "event 3 handled or dead-lettered", || async move {
        r.calls_of(third_id) > 0
            || letters_of(c, person)
                .await
                .iter()
                .any(|l| l.letter.event_id.as_deref() == Some(t))
    })
    .await;
    assert_eq!(
        recorder.calls_of(e[2].event_id),
        0,
        "event 3 of a parked person reached the handler after a restart (applied {:?})",
        recorder.first_success_order().get(&person)
    );
    let letters = letters_of(&next, person).await;
    let third_letter = letters
        .iter()
        .find(|l| l.letter.event_id.as_deref() == Some(t))
        .expect("event 3 is dead-lettered");
    assert_eq!(third_letter.letter.reason, blocked_by);
    assert!(!recorder.first_success_order().contains_key(&person));

    // Another process purges the person's letters; event 4 is then handled.
    let operator = connect(&server, cfg).await;
    let purged = operator
        .dead_letters()
        .purge(&DeadLetterFilter {
            consumer: Some(CONSUMER.into()),
            person_id: Some(person.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 3, "events 1, 2 and 3 were dead-lettered");
    publish(&operator, &e[3..4]).await;
    eventually_report(
        20,
        || recorder.calls_of(e[3].event_id) > 0 && recorder.distinct() == 1,
        || {
            format!(
                "event 4 handled once the blocker is purged; handled {:?}, {:?}",
                recorder.first_success_order().get(&person),
                handle.stats()
            )
        },
    )
    .await;
    assert_eq!(recorder.first_success_order()[&person], vec![4]);
    assert!(
        letters_of(&next, person).await.is_empty(),
        "nothing parked after the purge"
    );
    wait_idle(&next, 10).await;
    handle.shutdown(Duration::from_secs(5)).await;
}

// 8. Retry timing.

#[tokio::test]
async fn in_process_retries_wait_the_policys_delays_from_the_first_one() {
    let mut cfg = config(5);
    cfg.consumers[0].retry = retry_policy(
        5,
        Duration::from_millis(300),
        Duration::from_secs(2),
        Jitter::None,
    );
    let (_server, client) = start(cfg).await;
    let (_, events) = workload(1, 1);
    let id = events[0].event_id;
    publish(&client, &events).await;
    let recorder = Arc::new(Recorder::failing("summary", |_, call| {
        (call <= 2).then(|| HandlerError::transient("downstream 503"))
    }));
    let handle = run(&client, recorder.clone(), options().in_process_attempts(3)).await;
    eventually(10, "the event handled", || recorder.distinct() == 1).await;
    let times = recorder.call_times(id);
    assert_eq!(times.len(), 3, "the failures and two in-process retries");
    let (first, second) = (times[1] - times[0], times[2] - times[1]);
    assert!(
        first >= Duration::from_millis(250) && second >= Duration::from_millis(500),
        "the in-process retries came {first:?} and {second:?} after each failure; the policy says 300 ms, then 600 ms"
    );
    assert_eq!(handle.stats().retried, 2);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn broker_side_retry_delays_follow_the_jitter_mode_and_stay_under_the_cap() {
    let mut cfg = config(5);
    cfg.consumers[0].retry = retry_policy(
        5,
        Duration::from_secs(1),
        Duration::from_secs(1),
        Jitter::Full,
    );
    let (_server, client) = start(cfg).await;
    let (_, events) = workload(10, 1);
    let recorder = Arc::new(Recorder::failing("summary", |_, call| {
        (call == 1).then(|| HandlerError::transient("downstream 503"))
    }));
    let handle = run(&client, recorder.clone(), options().concurrency(10)).await;
    publish(&client, &events).await;
    eventually(15, "the 10 events handled", || recorder.distinct() == 10).await;
    let gaps: Vec<Duration> = events
        .iter()
        .map(|e| {
            let t = recorder.call_times(e.event_id);
            assert_eq!(t.len(), 2, "one failure and one redelivery");
            t[1] - t[0]
        })
        .collect();
    let (min, max) = (*gaps.iter().min().unwrap(), *gaps.iter().max().unwrap());
    assert!(
        max - min >= Duration::from_millis(100),
        "ten events failed together came back within {:?} of each other (delays {gaps:?}): the NAK delays ignore Jitter::Full",
        max - min
    );
    assert!(
        max <= Duration::from_secs(2),
        "a redelivery came {max:?} after its failure; the cap is 1 s"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

// A lane whose redelivery never comes (the message was deleted from the stream while it
// waited) stops waiting after the ack wait, and says so in its stats meanwhile.

#[tokio::test]
async fn a_lane_whose_redelivery_was_deleted_stops_waiting_after_the_ack_wait() {
    let mut cfg = config(5);
    cfg.consumers[0].ack_wait_secs = 1;
    cfg.consumers[0].retry = retry_policy(
        5,
        Duration::from_millis(300),
        Duration::from_millis(300),
        Jitter::None,
    );
    let (_server, client) = start(cfg).await;
    let person = PersonId::new();
    let e: Vec<_> = (1..=3)
        .map(|seq| event(person, seq, format!("step {seq}")))
        .collect();
    let first = e[0].event_id;
    publish(&client, &e).await;
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        (env.event_id == first).then(|| HandlerError::transient("downstream 503"))
    }));
    let handle = run(&client, recorder.clone(), options()).await;
    eventually_report(
        10,
        || recorder.calls_of(first) == 1 && handle.stats().waiting_lanes == 1,
        || {
            format!(
                "event 1 failed once and its lane waits; {:?}",
                handle.stats()
            )
        },
    )
    .await;
    // Remove event 1 before its 300 ms redelivery: it can never come back.
    let stream = client
        .jetstream()
        .get_stream(&client.config().stream.name)
        .await
        .expect("stream");
    stream.delete_message(1).await.expect("delete event 1");
    eventually_report(
        15,
        || recorder.distinct() == 2,
        || {
            format!(
                "events 2 and 3 handled once the lane stopped waiting; handled {:?}, {:?}",
                recorder.first_success_order().get(&person),
                handle.stats()
            )
        },
    )
    .await;
    assert_eq!(recorder.first_success_order()[&person], seqs(2..=3));
    assert_eq!(handle.stats().waiting_lanes, 0);
    handle.shutdown(Duration::from_secs(5)).await;
}

// A half-open probe that meets bad data says nothing about the downstream: the breaker
// neither closes nor reopens, and the next event probes.

#[tokio::test]
async fn a_poison_event_probing_a_half_open_breaker_does_not_close_it() {
    let mut cfg = config(10);
    cfg.consumers[0].retry = retry_policy(
        10,
        Duration::from_secs(5),
        Duration::from_secs(5),
        Jitter::None,
    );
    let (_server, client) = start(cfg).await;
    let person = PersonId::new();
    let (first, poison) = (
        event(person, 1, "first"),
        event(PersonId::new(), 1, "poison"),
    );
    let poison_id = poison.event_id;
    let recorder = Arc::new(Recorder::failing("sync", move |env, _| {
        if env.event_id == poison_id {
            Some(HandlerError::permanent("corrupt event"))
        } else {
            // The downstream stays down throughout.
            Some(HandlerError::transient("downstream unavailable"))
        }
    }));
    let breaker = CircuitBreakerConfig::builder()
        .failure_threshold(1)
        .open_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let handle = run(
        &client,
        recorder.clone(),
        options()
            .dead_letter_policy(DeadLetterPolicy::Continue)
            .breaker(breaker),
    )
    .await;
    publish(&client, std::slice::from_ref(&first)).await;
    eventually(10, "the breaker opens", || {
        handle.breaker_states()[0].1 == BreakerState::Open
    })
    .await;
    publish(&client, std::slice::from_ref(&poison)).await;
    eventually_report(
        10,
        || handle.stats().dead_lettered == 1,
        || {
            format!(
                "the poison event probes and is dead-lettered; {:?}",
                handle.stats()
            )
        },
    )
    .await;
    let state = handle.breaker_states()[0].1;
    assert_ne!(state, BreakerState::Closed, "bad data closed the breaker");
    // The downstream is still down: the first event's redelivery reopens it, and no
    // burst of calls happens in between.
    eventually(15, "the first event probes again", || {
        recorder.calls_of(first.event_id) >= 2
    })
    .await;
    assert_eq!(
        recorder.calls_of(first.event_id),
        2,
        "one probe, not a threshold's worth"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}
