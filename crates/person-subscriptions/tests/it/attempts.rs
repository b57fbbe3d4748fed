//! What a dead letter keeps: every failed attempt (bounded), the real first failure,
//! and a 2 MiB event whole, through the DLQ and back to the handler byte for byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nats_harness::NatsServer;
use person_events::PersonId;
use person_retry::{ErrorClass, MAX_ATTEMPTS_KEPT};
use person_streaming::StreamingClient;
use person_subscriptions::{DeadLetterPolicy, HandlerError};

use crate::support::*;

#[tokio::test]
async fn a_dead_letter_lists_each_failed_attempt_with_its_delivery_class_and_reason() {
    let (_server, client) = start(config(4)).await;
    let person = PersonId::new();
    let flaky = event(person, 1, "flaky");
    publish(&client, std::slice::from_ref(&flaky)).await;
    // Two transient failures, the second a panic, then a permanent one.
    let recorder = Arc::new(Recorder::failing("summary", |_, call| match call {
        1 => Some(HandlerError::transient("index busy")),
        2 => panic!("index crashed"),
        _ => Some(HandlerError::permanent("mapping rejects it")),
    }));
    let handle = run(
        &client,
        recorder.clone(),
        options()
            .in_process_attempts(1)
            .dead_letter_policy(DeadLetterPolicy::Continue),
    )
    .await;
    eventually_report(
        20,
        || handle.stats().dead_lettered == 1,
        || format!("{:?}", handle.stats()),
    )
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    let letters = letters_of(&client, person).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].letter;
    let attempts = &letter.attempts;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.delivery_count)
            .collect::<Vec<_>>(),
        vec![1, 2, 3],
        "one attempt per delivery"
    );
    assert_eq!(attempts[0].class, ErrorClass::Transient);
    assert!(attempts[0].reason.contains("index busy"));
    assert!(attempts[1].reason.contains("index crashed"));
    assert_eq!(attempts[2].class, ErrorClass::Permanent);
    assert!(attempts[2].reason.contains("mapping rejects it"));
    assert!(attempts.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(
        letter.first_failure_at, attempts[0].at,
        "the real first failure"
    );
    assert!(letter.first_failure_at < letter.last_failure_at);
}

#[tokio::test]
async fn a_dead_letter_keeps_the_most_recent_attempts_only() {
    let failures = MAX_ATTEMPTS_KEPT as u64 + 5;
    let (_server, client) = start(config(i64::try_from(failures).unwrap())).await;
    let person = PersonId::new();
    publish(&client, &[event(person, 1, "always failing")]).await;
    let recorder = Arc::new(Recorder::failing("summary", |_, call| {
        Some(HandlerError::transient(format!("attempt {call}")))
    }));
    let handle = run(
        &client,
        recorder.clone(),
        options()
            .in_process_attempts(1)
            .dead_letter_policy(DeadLetterPolicy::Continue),
    )
    .await;
    eventually_report(
        60,
        || handle.stats().dead_lettered == 1,
        || format!("{:?}", handle.stats()),
    )
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    let letter = letters_of(&client, person).await.remove(0).letter;
    assert_eq!(letter.attempts.len(), MAX_ATTEMPTS_KEPT);
    assert_eq!(letter.delivery_count, failures);
    assert_eq!(
        letter.attempts.last().unwrap().reason,
        format!("attempt {failures}")
    );
    assert_eq!(
        letter.attempts[0].delivery_count,
        failures - MAX_ATTEMPTS_KEPT as u64 + 1
    );
}

#[tokio::test]
async fn a_2_mib_event_goes_through_the_dlq_and_back_to_the_handler_byte_for_byte() {
    // A server that takes 2 MiB events; their dead letters (base64) do not fit a record.
    let server = NatsServer::with_config("max_payload: 2621440")
        .await
        .unwrap();
    let client = StreamingClient::new(&server.url(), config(3))
        .await
        .unwrap();
    let person = PersonId::new();
    let big = event(person, 1, "x".repeat(2 * 1024 * 1024));
    let next = event(person, 2, "after");
    publish(&client, &[big.clone(), next.clone()]).await;
    let original = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert!(original.payload.len() > 2 * 1024 * 1024);

    let fixed = Arc::new(AtomicBool::new(false));
    let gate = fixed.clone();
    let big_id = big.event_id;
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        (env.event_id == big_id && !gate.load(Ordering::SeqCst))
            .then(|| HandlerError::permanent("too large for the index"))
    }));
    let handle = run(
        &client,
        recorder.clone(),
        options().max_message_bytes(4 * 1024 * 1024),
    )
    .await;
    eventually_report(
        30,
        || handle.stats().dead_lettered == 2,
        || {
            format!(
                "the big event dead-lettered, the next parked: {:?}",
                handle.stats()
            )
        },
    )
    .await;

    let dlq = client.dead_letters();
    let letters = letters_of(&client, person).await;
    let first = dlq.get(letters[0].dlq_sequence).await.unwrap();
    assert!(first.body.as_ref().is_some_and(|b| b.loaded), "kept whole");
    assert_eq!(first.letter.payload, original.payload, "byte for byte");
    assert_eq!(
        first.letter.event_id.as_deref(),
        Some(big_id.to_string().as_str())
    );

    // Fixed: replay the big one, then the one parked behind it.
    fixed.store(true, Ordering::SeqCst);
    for stored in &letters {
        dlq.replay(stored.dlq_sequence).await.unwrap();
    }
    eventually_report(
        30,
        || recorder.distinct() == 2,
        || format!("{:?} {:?}", recorder.order_by_person(), handle.stats()),
    )
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(recorder.first_success_order()[&person], vec![1, 2]);
    let handled = recorder.seen.lock().unwrap()[0].clone();
    assert!(
        handled.event_id == big.event_id && handled.event == big.event,
        "the handler gets the original event back"
    );
    assert!(dlq.list(&Default::default()).await.unwrap().is_empty());
    assert_eq!(
        client.reader().load_aggregate(person).await.unwrap().len(),
        2
    );
}
