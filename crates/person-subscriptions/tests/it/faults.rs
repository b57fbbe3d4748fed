//! Faults: an unwritable DLQ, a downstream outage behind the breaker, shutdown with work
//! in flight, a server restart, and bad messages in the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use person_retry::CircuitBreakerConfig;
use person_streaming::DeadLetterFilter;
use person_subscriptions::{HandlerError, SubscriptionErrorKind, SubscriptionOptions};

use crate::support::*;

#[tokio::test]
async fn a_missing_dlq_delays_the_dead_letter_but_never_drops_it() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(1, 1);
    publish(&client, &events).await;
    client
        .jetstream()
        .delete_stream("PERSON_EVENTS_DLQ")
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::failing("summary", |_, _| {
        Some(HandlerError::permanent("bad"))
    }));
    let handle = run(&client, recorder.clone(), SubscriptionOptions::default()).await;
    eventually(20, "the handler failed at least twice", || {
        recorder.total_calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(handle.stats().dead_lettered, 0);
    assert!(
        !consumer_idle(&client, CONSUMER).await,
        "the failing message is not acked"
    );
    // The DLQ comes back.
    client.ensure().await.unwrap();
    eventually(30, "dead letter stored", || {
        handle.stats().dead_lettered == 1
    })
    .await;
    let dlq = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    eventually(10, "terminated", || handle.stats().in_hand == 0).await;
    assert!(consumer_idle(&client, CONSUMER).await);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_open_breaker_stops_calls_and_fills_no_dlq() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(100, 10);
    publish(&client, &events).await;
    let down = Arc::new(AtomicBool::new(true));
    let down_h = down.clone();
    let recorder = Arc::new(Recorder::failing("sync", move |_, _| {
        down_h
            .load(Ordering::SeqCst)
            .then(|| HandlerError::transient("downstream unavailable"))
    }));
    let breaker = CircuitBreakerConfig::builder()
        .failure_threshold(5)
        .open_timeout(Duration::from_millis(700))
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
    eventually(10, "breaker open", || {
        handle.breaker_states()[0].1 == person_retry::BreakerState::Open
    })
    .await;
    // During the outage, only the failures that opened the breaker and one probe per
    // open period reach the handler.
    let before = recorder.total_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = recorder.total_calls.load(Ordering::SeqCst) - before;
    assert!(
        during <= 6,
        "{during} handler calls during a 2 s outage with the breaker open"
    );
    down.store(false, Ordering::SeqCst);
    eventually(60, "all 1,000 handled", || recorder.distinct() == 1_000).await;
    assert_eq!(handle.stats().dead_lettered, 0);
    assert_eq!(
        client
            .dead_letters()
            .list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .len(),
        0
    );
    assert!(handle.stats().breaker_transitions >= 2);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_work_and_the_next_start_resumes() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(50, 2);
    publish(&client, &events).await;
    let slow = Arc::new(Recorder::new("summary").with_delay(Duration::from_millis(600)));
    let handle = run(
        &client,
        slow.clone(),
        SubscriptionOptions::default().concurrency(50),
    )
    .await;
    eventually(10, "50 handlers in flight", || {
        handle.stats().in_flight == 50
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    let first_run = slow.seen_ids();
    assert_eq!(first_run.len(), 50, "the 50 in flight finished");

    let next = Arc::new(Recorder::new("summary"));
    let handle = run(&client, next.clone(), SubscriptionOptions::default()).await;
    eventually(30, "the rest handled", || {
        next.seen.lock().unwrap().len() >= 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut all = first_run.clone();
    all.extend(next.seen_ids());
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 100, "everything handled");
    assert_eq!(all.len(), 100, "nothing acked was delivered again");
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_server_restart_mid_stream_loses_nothing() {
    let (mut server, client) = start(config(5)).await;
    let (_, events) = workload(20, 50);
    publish(&client, &events).await;
    let recorder = Arc::new(Recorder::new("summary").with_delay(Duration::from_millis(2)));
    let handle = run(
        &client,
        recorder.clone(),
        SubscriptionOptions::default().concurrency(8),
    )
    .await;
    eventually(20, "some progress", || recorder.distinct() > 100).await;
    server.restart().await.unwrap();
    eventually(90, "all 1,000 handled after the restart", || {
        recorder.distinct() == 1_000
    })
    .await;
    assert_eq!(handle.stats().dead_lettered, 0);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn legacy_events_arrive_upcast_and_garbage_goes_to_the_dlq() {
    let (_server, client) = start(config(5)).await;
    let js = client.jetstream();
    let person = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    let v1 = format!(
        r#"{{"PersonDeactivated": {{"person_id": {{"id": "{person}"}}, "reason": "left", "deactivated_at": "2025-07-20T17:00:00Z"}}}}"#
    );
    js.publish(format!("person.events.{person}.suspended"), v1.into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("person.events.not-a-uuid.created", "\u{1}garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (_, events) = workload(3, 2);
    publish(&client, &events).await;
    let recorder = Arc::new(Recorder::new("summary"));
    let handle = run(&client, recorder.clone(), SubscriptionOptions::default()).await;
    eventually(20, "everything but the garbage handled", || {
        recorder.seen.lock().unwrap().len() == 7
    })
    .await;
    eventually(10, "garbage dead-lettered", || {
        handle.stats().dead_lettered == 1
    })
    .await;
    let seen = recorder.seen.lock().unwrap().clone();
    let legacy = seen
        .iter()
        .find(|e| e.aggregate_id.to_string() == person)
        .unwrap();
    assert_eq!(legacy.event.event_type(), "suspended");
    let dlq = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0].letter.reason.contains("undecodable"),
        "{}",
        dlq[0].letter.reason
    );
    assert_eq!(&dlq[0].letter.payload[..], b"\x01garbage");
    handle.shutdown(Duration::from_secs(5)).await;
}

/// 50 events handled, then the consumer deleted on the server and 50 more published.
async fn consumer_deleted_after_50(
    options: SubscriptionOptions,
) -> (
    nats_harness::NatsServer,
    person_streaming::StreamingClient,
    Arc<Recorder>,
    person_subscriptions::SubscriptionHandle,
    async_nats::jetstream::stream::Stream,
) {
    let (server, client) = start(config(5)).await;
    let (_, first) = workload(5, 10);
    publish(&client, &first).await;
    let recorder = Arc::new(Recorder::new("summary"));
    let handle = run(&client, recorder.clone(), options).await;
    eventually(20, "first 50 handled", || recorder.distinct() == 50).await;
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    stream.delete_consumer(CONSUMER).await.unwrap();
    let (_, second) = workload(5, 10);
    publish(&client, &second).await;
    (server, client, recorder, handle, stream)
}

#[tokio::test]
async fn a_deleted_consumer_stops_with_a_clear_error_and_is_not_recreated() {
    let (_server, _client, recorder, handle, stream) =
        consumer_deleted_after_50(SubscriptionOptions::default()).await;
    eventually(20, "the handle reports the deleted consumer", || {
        !handle.errors().is_empty()
    })
    .await;
    let errors = handle.errors();
    assert_eq!(errors[0].0, "summary");
    assert_eq!(errors[0].1.kind(), SubscriptionErrorKind::ConsumerDeleted);
    assert!(
        errors[0].1.to_string().contains(CONSUMER),
        "{}",
        errors[0].1
    );
    // Nothing recreated it, so nothing delivered the history again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        stream.consumer_info(CONSUMER).await.is_err(),
        "not recreated"
    );
    assert_eq!(recorder.distinct(), 50);
    assert_eq!(
        recorder.total_calls.load(Ordering::SeqCst),
        50,
        "no history replayed"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_deleted_consumer_is_recreated_when_asked_and_consumption_goes_on() {
    let options = SubscriptionOptions::default().recreate_deleted_consumer(true);
    let (_server, _client, recorder, handle, _stream) = consumer_deleted_after_50(options).await;
    eventually(30, "events published after the deletion handled", || {
        recorder.distinct() == 100
    })
    .await;
    assert!(handle.errors().is_empty());
    assert_eq!(handle.stats().dead_lettered, 0);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn hand_tuned_consumer_settings_are_respected_and_never_overwritten() {
    let (_server, client) = start(config(5)).await;
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    // An operator tunes the consumer by hand: smaller pulls (a setting the configuration
    // does not manage) and fewer pending acks (one it does).
    let mut tuned = stream
        .consumer_info(CONSUMER)
        .await
        .expect("the consumer exists after ensure")
        .config
        .clone();
    tuned.max_batch = 10;
    tuned.max_ack_pending = 40;
    stream.update_consumer(tuned).await.unwrap();
    let (_, events) = workload(10, 30);
    publish(&client, &events).await;
    let recorder = Arc::new(Recorder::new("summary"));
    let handle = run(&client, recorder.clone(), SubscriptionOptions::default()).await;
    eventually(30, "300 handled", || recorder.distinct() == 300).await;
    let info = stream.consumer_info(CONSUMER).await.unwrap();
    assert_eq!(info.config.max_batch, 10, "max_batch (not managed) kept");
    // max_ack_pending is the configuration's: the start applied it, as ensure() does.
    assert_eq!(
        info.config.max_ack_pending,
        client.config().consumers[0].max_ack_pending
    );
    assert_eq!(handle.stats().reconnects, 0, "no pull was refused");
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_handler_slower_than_the_ack_wait_keeps_its_message() {
    let mut cfg = config(5);
    cfg.consumers[0].ack_wait_secs = 1;
    let (_server, client) = start(cfg).await;
    let (_, events) = workload(2, 1);
    publish(&client, &events).await;
    let slow = Arc::new(Recorder::new("summary").with_delay(Duration::from_millis(3_500)));
    let handle = run(&client, slow.clone(), SubscriptionOptions::default()).await;
    eventually(20, "both handled", || slow.seen.lock().unwrap().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // In-progress acks kept both messages: each handler ran once, nothing was redelivered.
    assert_eq!(slow.total_calls.load(Ordering::SeqCst), 2);
    assert_eq!(handle.stats().retried, 0);
    assert!(consumer_idle(&client, CONSUMER).await);
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_hung_handler_times_out_as_a_transient_failure() {
    let (_server, client) = start(config(5)).await;
    let (_, events) = workload(2, 2);
    publish(&client, &events).await;
    let first = events[0].event_id;
    // The first event's first call hangs; every other call is quick.
    let hung = Arc::new(Recorder::failing("summary", |_, _| None));
    let hang = Arc::new(Hang {
        inner: hung.clone(),
        event: first,
        hung: AtomicBool::new(false),
    });
    let mut manager = person_subscriptions::SubscriptionManager::new(client.clone())
        .with_options(SubscriptionOptions::default().handler_timeout(Duration::from_millis(500)));
    manager.register_handler(hang.clone());
    let handle = manager.start_consumer(CONSUMER).await.unwrap();
    eventually(20, "all four handled", || hung.distinct() == 4).await;
    assert!(hang.hung.load(Ordering::SeqCst));
    assert!(handle.stats().retried >= 1);
    assert_eq!(handle.stats().dead_lettered, 0);
    handle.shutdown(Duration::from_secs(5)).await;
}

struct Hang {
    inner: Arc<Recorder>,
    event: person_events::EventId,
    hung: AtomicBool,
}

#[async_trait::async_trait]
impl person_subscriptions::StreamingEventHandler for Hang {
    async fn handle_event(
        &self,
        envelope: person_events::StreamingEventEnvelope,
    ) -> person_subscriptions::DomainResult<()> {
        if envelope.event_id == self.event && !self.hung.swap(true, Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
        self.inner.handle_event(envelope).await
    }

    fn name(&self) -> &str {
        "summary"
    }
}

/// Current envelopes whose headers are missing, name another event, or say the body is
/// not JSON are dead-lettered with the reason; header names in another casing are
/// still read.
#[tokio::test]
async fn current_envelopes_with_bad_headers_are_dead_lettered_with_the_reason() {
    use person_metadata::headers::{CONTENT_TYPE, CloudEventAttributes, encode_headers};

    let (_server, client) = start(config(5)).await;
    let js = client.jetstream();
    let (_, events) = workload(5, 1);
    publish(&client, &events[..1]).await;
    let headers_of = |env: &person_events::StreamingEventEnvelope, id| {
        encode_headers(
            env.metadata(),
            &CloudEventAttributes {
                id,
                source: "/test",
                event_type: env.event.event_type(),
                subject: None,
            },
        )
    };
    let send = |env: &person_events::StreamingEventEnvelope, headers: Vec<(String, String)>| {
        let js = js.clone();
        let subject = env.event.subject();
        let body = person_events::codec::encode(env).unwrap();
        async move {
            let mut map = async_nats::HeaderMap::new();
            for (n, v) in headers {
                map.insert(n.as_str(), v.as_str());
            }
            js.publish_with_headers(subject, map, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let owned = |h: Vec<(&'static str, String)>| -> Vec<(String, String)> {
        h.into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
    };
    // No headers at all.
    send(&events[1], Vec::new()).await;
    // Headers naming another event.
    send(
        &events[2],
        owned(headers_of(&events[2], person_metadata::EventId::new())),
    )
    .await;
    // Every name upper-cased: still the right headers.
    let upper = headers_of(&events[3], events[3].event_id)
        .into_iter()
        .map(|(n, v)| (n.to_ascii_uppercase(), v))
        .collect();
    send(&events[3], upper).await;
    // A lower-cased Content-Type that is not JSON.
    let mut not_json: Vec<_> = owned(headers_of(&events[4], events[4].event_id))
        .into_iter()
        .filter(|(n, _)| n != CONTENT_TYPE)
        .collect();
    not_json.push(("content-type".to_owned(), "text/plain".to_owned()));
    send(&events[4], not_json).await;

    let recorder = Arc::new(Recorder::new("summary"));
    let handle = run(&client, recorder.clone(), SubscriptionOptions::default()).await;
    eventually(20, "three dead-lettered", || {
        handle.stats().dead_lettered == 3
    })
    .await;
    eventually(10, "two handled", || {
        recorder.seen.lock().unwrap().len() == 2
    })
    .await;
    let mut seen: Vec<_> = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    seen.sort();
    let mut want = vec![events[0].event_id, events[3].event_id];
    want.sort();
    assert_eq!(seen, want);
    let dlq = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    let reason_of = |env: &person_events::StreamingEventEnvelope| {
        dlq.iter()
            .find(|d| d.letter.subject == env.event.subject())
            .map(|d| d.letter.reason.clone())
            .unwrap_or_else(|| panic!("no dead letter for {}", env.event_id))
    };
    let r = reason_of(&events[1]);
    assert!(
        r.starts_with("bad headers") && r.contains("ce-specversion"),
        "{r}"
    );
    let r = reason_of(&events[2]);
    assert!(
        r.starts_with("bad headers") && r.contains("is not the body's event_id"),
        "{r}"
    );
    let r = reason_of(&events[4]);
    assert!(
        r.starts_with("undecodable") && r.contains("text/plain"),
        "{r}"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}
