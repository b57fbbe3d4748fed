use std::time::{Duration, Instant};

use futures::StreamExt;
use person_events::{ComponentType, PersonEventV2, PersonId, StreamingEventEnvelope};
use person_metadata::EventMetadata;
use person_streaming::{ExpectedVersion, PublishErrorKind, StreamingConfig};

use crate::support::{activated, created, start, start_with, stream_messages};

#[tokio::test]
async fn the_same_event_six_times_is_stored_once() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let publisher = client.publisher();
    let env = created(PersonId::new(), 1);
    let first = publisher.publish(&env).await.unwrap();
    assert!(!first.duplicate);
    for _ in 0..5 {
        let again = publisher.publish(&env).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.stream_sequence, first.stream_sequence);
    }
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 1);

    // Headers carry the metadata; the body decodes back to the envelope.
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let msg = stream.get_raw_message(first.stream_sequence).await.unwrap();
    let pairs: Vec<(String, String)> = msg
        .headers
        .iter()
        .flat_map(|(n, vs)| vs.iter().map(move |v| (n.to_string(), v.to_string())))
        .collect();
    let decoded = person_metadata::headers::decode_headers(
        pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    )
    .unwrap();
    assert_eq!(decoded.id, env.event_id);
    assert_eq!(
        decoded.metadata.correlation_id,
        env.metadata().correlation_id
    );
    assert_eq!(
        msg.headers.get("Nats-Msg-Id").unwrap().as_str(),
        env.event_id.to_string()
    );
    assert_eq!(person_events::codec::decode(&msg.payload).unwrap(), env);
}

#[tokio::test]
async fn two_writers_with_the_same_expected_version_one_wins() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let publisher = client.publisher();
    let person = PersonId::new();
    let v1 = publisher
        .append(person, ExpectedVersion::NoEvents, &[created(person, 1)])
        .await
        .unwrap()
        .version;

    let a = publisher.clone();
    let b = publisher.clone();
    let (ea, eb) = ([activated(person, 2)], [activated(person, 2)]);
    let (ra, rb) = tokio::join!(
        a.append(person, ExpectedVersion::Exactly(v1), &ea),
        b.append(person, ExpectedVersion::Exactly(v1), &eb),
    );
    let (ok, err) = match (ra, rb) {
        (Ok(ok), Err(err)) | (Err(err), Ok(ok)) => (ok, err),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert_eq!(err.kind(), PublishErrorKind::Conflict, "{err}");
    assert_eq!(err.expected_version(), Some(v1));
    assert_eq!(err.actual_version(), Some(ok.version));
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 2);
    assert_eq!(
        client.reader().last_version(person).await.unwrap(),
        ok.version
    );

    // "Expect new person" fails once the person exists.
    let err = publisher
        .append(person, ExpectedVersion::NoEvents, &[created(person, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Conflict);
    assert_eq!(err.expected_version(), Some(0));
}

#[tokio::test]
async fn atomic_append_stores_all_or_nothing() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let publisher = client.publisher();
    let person = PersonId::new();
    let batch: Vec<_> = (1..=5)
        .map(|i| {
            if i == 1 {
                created(person, 1)
            } else {
                activated(person, i)
            }
        })
        .collect();
    let receipt = publisher
        .append(person, ExpectedVersion::NoEvents, &batch)
        .await
        .unwrap();
    assert_eq!(receipt.events.len(), 5);
    assert_eq!(receipt.version, 5);
    let seqs: Vec<u64> = receipt.events.iter().map(|r| r.stream_sequence).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);

    // A failing expectation stores none of the batch.
    let more: Vec<_> = (6..=10).map(|i| activated(person, i)).collect();
    let err = publisher
        .append(person, ExpectedVersion::Exactly(3), &more)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Conflict, "{err}");
    assert_eq!(err.actual_version(), Some(5));
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 5);

    let history = client.reader().load_aggregate(person).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        batch.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );

    // Mixed persons in one append are refused before anything is sent.
    let other = PersonId::new();
    let err = publisher
        .append(
            person,
            ExpectedVersion::Any,
            &[activated(person, 6), created(other, 1)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::InvalidEvent);
}

#[tokio::test]
async fn a_batch_is_never_half_visible() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let publisher = client.publisher();
    // A live consumer reads while batches are appended; every other batch fails its
    // expectation and must leave no trace.
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let writer = tokio::spawn(async move {
        let mut committed = Vec::new();
        for i in 0..40 {
            let person = PersonId::new();
            let batch: Vec<_> = (1..=5).map(|s| activated(person, s)).collect();
            let expected = if i % 2 == 0 {
                ExpectedVersion::NoEvents
            } else {
                ExpectedVersion::Exactly(7)
            };
            match publisher.append(person, expected, &batch).await {
                Ok(_) => committed.push(person),
                Err(e) => assert_eq!(e.kind(), PublishErrorKind::Conflict, "{e}"),
            }
        }
        committed
    });
    let mut seen: std::collections::HashMap<PersonId, u64> = std::collections::HashMap::new();
    for _ in 0..100 {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let env = person_events::codec::decode(&msg.payload).unwrap();
        *seen.entry(env.aggregate_id).or_default() += 1;
    }
    let committed = writer.await.unwrap();
    assert_eq!(committed.len(), 20);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), messages.next())
            .await
            .is_err(),
        "no message beyond the committed batches"
    );
    assert_eq!(seen.len(), 20);
    for person in committed {
        assert_eq!(
            seen.get(&person),
            Some(&5),
            "person {person}: partial batch"
        );
    }
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 100);
}

/// Messages are built ahead on a task of their own: an envelope that cannot be sent
/// (inconsistent, or a header value NATS cannot carry) is an error in its place, and
/// every other one is stored, in input order.
#[tokio::test]
async fn publish_all_reports_each_bad_envelope_in_its_place_and_stores_the_rest_in_order() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    let mut envelopes: Vec<StreamingEventEnvelope> =
        (1..=200).map(|v| activated(person, v)).collect();
    envelopes[37].aggregate_id = PersonId::new();
    envelopes[150] = StreamingEventEnvelope::new(
        person,
        151,
        PersonEventV2::Activated {
            person_id: person,
            reason: "crlf".into(),
            metadata: EventMetadata::new().with_actor("eve\r\nNats-Msg-Id: forged"),
        },
    );
    let ids: Vec<_> = envelopes.iter().map(|e| e.event_id).collect();
    let results: Vec<_> = client.publisher().publish_all(envelopes).collect().await;
    assert_eq!(results.len(), 200);
    for (i, r) in results.iter().enumerate() {
        match i {
            37 | 150 => {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.kind(), PublishErrorKind::InvalidEvent, "{i}: {e}");
            }
            _ => assert_eq!(r.as_ref().unwrap().event_id, ids[i], "result {i} in place"),
        }
    }
    let seqs: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|r| r.stream_sequence))
        .collect();
    assert_eq!(seqs, (1..=198).collect::<Vec<u64>>(), "sent in input order");
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 198);
}

/// `publish_all` writes the bodies one after another into shared buffers: each stored
/// body is still exactly its envelope's encoding, whatever its size (small ones, one
/// larger than a whole buffer, one that starts near a buffer's end) and whatever failed
/// to build between them.
#[tokio::test]
async fn publish_all_stores_each_body_byte_for_byte() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    let mut envelopes = Vec::new();
    for v in 1..=300u64 {
        let reason = match v % 50 {
            7 => "x".repeat(100_000),
            19 => "y".repeat(30_000),
            23 => "z".repeat(1_900),
            _ => format!("step {v}"),
        };
        envelopes.push(StreamingEventEnvelope::new(
            person,
            v,
            PersonEventV2::Activated {
                person_id: person,
                reason,
                metadata: EventMetadata::new(),
            },
        ));
    }
    // Two that cannot be built, among the others.
    envelopes[40].aggregate_id = PersonId::new();
    if let PersonEventV2::Activated { metadata, .. } = &mut envelopes[201].event {
        metadata.actor = Some("bad\r\nvalue".into());
    }
    let expected: Vec<Vec<u8>> = envelopes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 40 && *i != 201)
        .map(|(_, e)| person_events::codec::encode(e).unwrap())
        .collect();
    let results: Vec<_> = client.publisher().publish_all(envelopes).collect().await;
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 2);
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    for (i, body) in expected.iter().enumerate() {
        let stored = stream.get_raw_message(i as u64 + 1).await.unwrap();
        assert_eq!(
            stored.payload.as_ref(),
            body.as_slice(),
            "body of sequence {}",
            i + 1
        );
    }
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 298);
}

#[tokio::test]
async fn fifty_thousand_pipelined_publishes() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let publisher = client.publisher();
    let people: Vec<PersonId> = (0..100).map(|_| PersonId::new()).collect();
    let envelopes = (0..50_000u64).map(move |i| activated(people[(i % 100) as usize], i / 100 + 1));
    let results: Vec<_> = publisher.publish_all(envelopes).collect().await;
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        errors,
        0,
        "first error: {:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(results.len(), 50_000);
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 50_000);
    // Results come back in input order.
    let seqs: Vec<u64> = results
        .into_iter()
        .map(|r| r.unwrap().stream_sequence)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn permanent_errors_are_typed_and_fast() {
    let mut config = StreamingConfig::default();
    // A retry of a permanent error would wait this long first.
    config.publisher.retry = person_streaming::RetryPolicy::builder()
        .initial_backoff(Duration::from_secs(5))
        .max_backoff(Duration::from_secs(5))
        .jitter(person_retry::Jitter::None)
        .build()
        .unwrap();
    config.stream.subjects = vec!["person.events.*.created".into()];
    for c in &mut config.consumers {
        c.filter_subjects = vec!["person.events.*.created".into()];
    }
    let (_server, client) = start_with(config, Some("max_payload: 4096")).await;
    let publisher = client.publisher();
    let person = PersonId::new();

    let started = Instant::now();
    let err = publisher.publish(&activated(person, 1)).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::NoStream, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The same through publish_all, beside an event that is stored.
    let started = Instant::now();
    let results: Vec<_> = publisher
        .publish_all([activated(person, 1), created(person, 1)])
        .collect()
        .await;
    assert_eq!(
        results[0].as_ref().unwrap_err().kind(),
        PublishErrorKind::NoStream
    );
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let big = StreamingEventEnvelope::new(
        person,
        1,
        PersonEventV2::ComponentAdded {
            person_id: person,
            component_type: ComponentType::CustomAttribute,
            component_data: serde_json::Value::String("x".repeat(10_000)),
            metadata: EventMetadata::new(),
        },
    );
    let started = Instant::now();
    let err = publisher.publish(&big).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::PayloadTooLarge, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(!err.is_transient());

    // Atomic appends: events no stream captures, and an event over max_payload, are
    // refused at once, not retried.
    let started = Instant::now();
    let uncaptured = [activated(person, 1), activated(person, 2)];
    let err = publisher
        .append(person, ExpectedVersion::Any, &uncaptured)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::NoStream, "{err}");
    let err = publisher
        .append(person, ExpectedVersion::Any, &[big, created(person, 2)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::PayloadTooLarge, "{err}");
    assert!(!err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn aggregate_reader_upcasts_legacy_events_in_order() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person: PersonId = "0f8fad5b-d9cb-469f-a165-70867728950e".parse().unwrap();
    let js = client.jetstream();
    // A raw V1 event, then a week-1 envelope on the week-1 subject, then a current one.
    let v1 = r#"{"PersonCreated": {"person_id": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}, "name": {"given_name": "Jane", "family_name": "Smith", "middle_names": [], "preferred_name": null, "honorific": null, "suffix": null}, "source": "hr-import", "created_at": "2025-07-01T09:00:00Z"}}"#;
    js.publish(format!("person.events.{person}.created"), v1.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let week1 = r#"{"event_id": "01890a5d-ac96-774b-bcce-b302099a8061", "aggregate_id": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}, "sequence": 2, "event": {"event_type": "Suspended", "data": {"person_id": {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}, "reason": "policy review", "metadata": {"version": "1.0", "correlation_id": "01890a5d-ac96-774b-bcce-b302099a8057", "causation_id": null, "timestamp": "2025-08-07T10:05:00Z", "actor": null, "context": {}}}}, "stream_position": null}"#;
    js.publish(
        format!("person.events.{person}.person.suspended"),
        week1.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let current = activated(person, 3);
    client.publisher().publish(&current).await.unwrap();
    // Someone else's event is not part of the history.
    client
        .publisher()
        .publish(&created(PersonId::new(), 1))
        .await
        .unwrap();

    let history = client.reader().load_aggregate(person).await.unwrap();
    let types: Vec<&str> = history.iter().map(|e| e.event.event_type()).collect();
    assert_eq!(types, ["created", "suspended", "activated"]);
    let positions: Vec<Option<u64>> = history.iter().map(|e| e.stream_position).collect();
    assert_eq!(positions, [Some(1), Some(2), Some(3)]);
    assert_eq!(
        history[2],
        StreamingEventEnvelope {
            stream_position: Some(3),
            ..current
        }
    );
    assert_eq!(client.reader().last_version(person).await.unwrap(), 3);

    let nobody = PersonId::new();
    assert!(
        client
            .reader()
            .load_aggregate(nobody)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.reader().last_version(nobody).await.unwrap(), 0);
}

#[tokio::test]
async fn publishing_through_a_server_crash_loses_and_duplicates_nothing() {
    let (mut server, client) = crate::support::start_with(
        StreamingConfig::default(),
        Some("jetstream { sync_interval: always }"),
    )
    .await;
    let publisher = client.publisher();
    let people: Vec<PersonId> = (0..20).map(|_| PersonId::new()).collect();
    let events: Vec<StreamingEventEnvelope> = (0..3_000u64)
        .map(|i| activated(people[(i % 20) as usize], i / 20 + 1))
        .collect();
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.event_id).collect();
    let task = tokio::spawn(async move {
        let results: Vec<_> = publisher.publish_all(events).collect().await;
        results
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.start_again().await.unwrap();
    let results = task.await.unwrap();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} publishes failed, first: {}",
        failed.len(),
        failed[0]
    );
    // Every event id is stored exactly once.
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let mut stored = std::collections::HashSet::new();
    let count = stream_messages(&client, "PERSON_EVENTS").await;
    for seq in 1..=count {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let env = person_events::codec::decode(&msg.payload).unwrap();
        assert!(
            stored.insert(env.event_id),
            "event {} stored twice",
            env.event_id
        );
    }
    assert_eq!(stored, ids);
}

#[tokio::test]
async fn a_configured_stream_that_does_not_answer_is_a_transient_failure() {
    let mut config = StreamingConfig::default();
    config.publisher.retry = person_retry::RetryPolicy::builder()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(20))
        .build()
        .unwrap();
    let (_server, client) = start_with(config, None).await;
    // The stream goes away (as during a leader election, nothing answers its subjects).
    client
        .jetstream()
        .delete_stream(&client.config().stream.name)
        .await
        .unwrap();
    let err = client
        .publisher()
        .publish(&activated(PersonId::new(), 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Unavailable, "{err}");
    assert!(err.is_transient(), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "keeps the client's error as its source: {err}"
    );
    assert!(
        err.to_string().contains("publishing again is safe"),
        "{err}"
    );
    // An atomic append the same way: retried, then Unavailable.
    let person = PersonId::new();
    let err = client
        .publisher()
        .append(person, ExpectedVersion::Any, &three(person))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Unavailable, "{err}");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
}

/// A publisher that keeps retrying through a short outage: 300 ms acks, 30 attempts at
/// least 100 ms apart (several seconds in all).
fn patient_config() -> StreamingConfig {
    let mut config = StreamingConfig::default();
    config.publisher.ack_timeout_ms = 300;
    config.publisher.retry = person_retry::RetryPolicy::builder()
        .max_attempts(30)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(250))
        .jitter(person_retry::Jitter::None)
        .build()
        .unwrap();
    config
}

/// Every stored message's event id, by person, in stream order; panics on an event id
/// stored twice.
async fn stored_events(
    client: &person_streaming::StreamingClient,
) -> std::collections::HashMap<PersonId, Vec<(u64, person_events::EventId)>> {
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut by_person: std::collections::HashMap<_, Vec<_>> = Default::default();
    let last = {
        let mut s = stream.clone();
        s.info().await.unwrap().state.last_sequence
    };
    for seq in 1..=last {
        let msg = match stream.get_raw_message(seq).await {
            Ok(msg) => msg,
            Err(_) => continue, // a gap (nothing is deleted here, but do not assume)
        };
        let env = person_events::codec::decode(&msg.payload).unwrap();
        assert!(
            seen.insert(env.event_id),
            "event {} stored twice",
            env.event_id
        );
        by_person
            .entry(env.aggregate_id)
            .or_default()
            .push((seq, env.event_id));
    }
    by_person
}

fn ids(events: &[StreamingEventEnvelope]) -> Vec<person_events::EventId> {
    events.iter().map(|e| e.event_id).collect()
}

fn three(person: PersonId) -> Vec<StreamingEventEnvelope> {
    vec![
        created(person, 1),
        activated(person, 2),
        activated(person, 3),
    ]
}

#[tokio::test]
async fn appends_during_a_server_stop_succeed_once_it_is_back_and_are_stored_once() {
    let (mut server, client) = start_with(
        patient_config(),
        Some("jetstream { sync_interval: always }"),
    )
    .await;
    let publisher = client.publisher();
    let (single, batch) = (PersonId::new(), PersonId::new());
    let one = vec![created(single, 1)];
    let many = three(batch);
    let (p1, p2) = (publisher.clone(), publisher.clone());
    let (e1, e2) = (one.clone(), many.clone());
    // The appends start, then the server goes away for about a second.
    let a = tokio::spawn(async move { p1.append(single, ExpectedVersion::NoEvents, &e1).await });
    let b = tokio::spawn(async move { p2.append(batch, ExpectedVersion::NoEvents, &e2).await });
    server.stop().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.start_again().await.unwrap();
    let ra = a
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("single append: {e}"));
    let rb = b
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("batch append: {e}"));

    let stored = stored_events(&client).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    let single_stored = &stored[&single];
    assert_eq!(
        single_stored.iter().map(|s| s.1).collect::<Vec<_>>(),
        ids(&one)
    );
    assert_eq!(ra.version, single_stored[0].0);
    assert_eq!(ra.events[0].stream_sequence, single_stored[0].0);
    let batch_stored = &stored[&batch];
    assert_eq!(
        batch_stored.iter().map(|s| s.1).collect::<Vec<_>>(),
        ids(&many)
    );
    assert_eq!(
        rb.events
            .iter()
            .map(|r| r.stream_sequence)
            .collect::<Vec<_>>(),
        batch_stored.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    assert_eq!(rb.version, batch_stored[2].0);
}

#[tokio::test]
async fn appends_cut_by_a_server_kill_are_stored_exactly_once_without_false_conflicts() {
    let (mut server, client) = start_with(
        patient_config(),
        Some("jetstream { sync_interval: always }"),
    )
    .await;
    let publisher = client.publisher();
    // Ten writers, each appending one event then batches of three for its own person,
    // each append expecting the version the previous one returned.
    let writers: Vec<_> = (0..10)
        .map(|_| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                let person = PersonId::new();
                let mut appended = Vec::new();
                let first = vec![created(person, 1)];
                let mut version = publisher
                    .append(person, ExpectedVersion::NoEvents, &first)
                    .await
                    .unwrap_or_else(|e| panic!("first append: {e}"))
                    .version;
                appended.extend(ids(&first));
                for round in 0..15u64 {
                    let batch: Vec<_> = (0..3)
                        .map(|i| activated(person, 2 + round * 3 + i))
                        .collect();
                    let receipt = publisher
                        .append(person, ExpectedVersion::Exactly(version), &batch)
                        .await
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                    version = receipt.version;
                    appended.extend(ids(&batch));
                }
                (person, appended, version)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.start_again().await.unwrap();
    let mut results = Vec::new();
    for w in writers {
        results.push(w.await.unwrap());
    }

    let stored = stored_events(&client).await;
    assert_eq!(stored.len(), results.len());
    for (person, appended, version) in results {
        let mine = &stored[&person];
        assert_eq!(mine.iter().map(|s| s.1).collect::<Vec<_>>(), appended);
        assert_eq!(mine.last().unwrap().0, version);
    }
}

#[tokio::test]
async fn appending_again_what_is_already_stored_returns_the_same_receipt() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let publisher = client.publisher();
    let person = PersonId::new();

    let one = [created(person, 1)];
    let first = publisher
        .append(person, ExpectedVersion::NoEvents, &one)
        .await
        .unwrap();
    assert!(!first.events[0].duplicate);
    // The caller never saw the answer and appends again, as the error told it to.
    let again = publisher
        .append(person, ExpectedVersion::NoEvents, &one)
        .await
        .unwrap_or_else(|e| panic!("a repeated single append: {e}"));
    assert_eq!(again.version, first.version);
    assert_eq!(
        again.events[0].stream_sequence,
        first.events[0].stream_sequence
    );
    assert!(again.events[0].duplicate);

    let batch: Vec<_> = (2..=4).map(|i| activated(person, i)).collect();
    let stored = publisher
        .append(person, ExpectedVersion::Exactly(first.version), &batch)
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::Exactly(first.version),
        ExpectedVersion::Any,
    ] {
        let again = publisher
            .append(person, expected, &batch)
            .await
            .unwrap_or_else(|e| panic!("a repeated batch ({expected:?}): {e}"));
        assert_eq!(again.version, stored.version);
        assert_eq!(
            again
                .events
                .iter()
                .map(|r| (r.event_id, r.stream_sequence))
                .collect::<Vec<_>>(),
            stored
                .events
                .iter()
                .map(|r| (r.event_id, r.stream_sequence))
                .collect::<Vec<_>>()
        );
        assert!(again.events.iter().all(|r| r.duplicate));
    }

    // Still recognized once someone else has appended after them.
    publisher
        .append(
            person,
            ExpectedVersion::Exactly(stored.version),
            &[activated(person, 5)],
        )
        .await
        .unwrap();
    let late = publisher
        .append(person, ExpectedVersion::Exactly(first.version), &batch)
        .await
        .unwrap_or_else(|e| panic!("a repeated batch after later events: {e}"));
    assert_eq!(late.version, stored.version);

    let history = stored_events(&client).await;
    let mut all = ids(&one);
    all.extend(ids(&batch));
    assert_eq!(history[&person].len(), 5);
    assert_eq!(
        history[&person]
            .iter()
            .take(4)
            .map(|s| s.1)
            .collect::<Vec<_>>(),
        all
    );
}

#[tokio::test]
async fn someone_elses_events_at_the_expected_position_are_still_a_conflict() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let publisher = client.publisher();
    let person = PersonId::new();
    let theirs = publisher
        .append(person, ExpectedVersion::NoEvents, &[created(person, 1)])
        .await
        .unwrap();

    let err = publisher
        .append(person, ExpectedVersion::NoEvents, &[created(person, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Conflict, "{err}");
    assert_eq!(err.expected_version(), Some(0));
    assert_eq!(err.actual_version(), Some(theirs.version));

    // Their batch after version 1; ours, with other ids at the same place, conflicts.
    let their_batch: Vec<_> = (2..=4).map(|i| activated(person, i)).collect();
    let after = publisher
        .append(
            person,
            ExpectedVersion::Exactly(theirs.version),
            &their_batch,
        )
        .await
        .unwrap();
    // Ours shares its first event with theirs but not the rest: not the same append.
    let mut ours: Vec<_> = (2..=4).map(|i| activated(person, i)).collect();
    ours[0] = their_batch[0].clone();
    for events in [
        (2..=4).map(|i| activated(person, i)).collect::<Vec<_>>(),
        ours,
    ] {
        let err = publisher
            .append(person, ExpectedVersion::Exactly(theirs.version), &events)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), PublishErrorKind::Conflict, "{err}");
        assert_eq!(err.expected_version(), Some(theirs.version));
        assert_eq!(err.actual_version(), Some(after.version));
    }
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 4);
}

#[tokio::test]
async fn an_append_that_times_out_says_how_many_attempts_it_made() {
    let mut config = StreamingConfig::default();
    config.publisher.ack_timeout_ms = 200;
    config.publisher.retry = person_retry::RetryPolicy::builder()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(20))
        .build()
        .unwrap();
    let (mut server, client) = start(config).await;
    let publisher = client.publisher();
    server.stop().await.unwrap();
    let person = PersonId::new();
    for events in [vec![created(person, 1)], three(person)] {
        let err = publisher
            .append(person, ExpectedVersion::NoEvents, &events)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), PublishErrorKind::TimedOut, "{err}");
        assert!(err.is_transient());
        assert!(
            std::error::Error::source(&err).is_some(),
            "keeps the client's error as its source: {err}"
        );
        let text = err.to_string();
        assert!(text.contains("after 3 attempts"), "{text}");
        assert!(!text.contains("30 attempts"), "{text}");
        assert!(text.contains("again is safe"), "{text}");
    }
    // A publish, one at a time or through publish_all, tries as often.
    let err = publisher.publish(&created(person, 1)).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::TimedOut, "{err}");
    assert!(std::error::Error::source(&err).is_some(), "{err}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    let results: Vec<_> = publisher.publish_all([created(person, 1)]).collect().await;
    let err = results[0].as_ref().unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
}

/// A retry waits its backoff first, in publish_all as in publish.
#[tokio::test]
async fn a_retried_publish_waits_its_backoff_before_trying_again() {
    let mut config = StreamingConfig::default();
    config.publisher.ack_timeout_ms = 100;
    config.publisher.retry = person_retry::RetryPolicy::builder()
        .max_attempts(2)
        .initial_backoff(Duration::from_millis(1_500))
        .max_backoff(Duration::from_millis(1_500))
        .jitter(person_retry::Jitter::None)
        .build()
        .unwrap();
    let (mut server, client) = start(config).await;
    let publisher = client.publisher();
    server.stop().await.unwrap();
    let started = Instant::now();
    let err = publisher
        .publish(&created(PersonId::new(), 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after 2 attempts"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let results: Vec<_> = publisher
        .publish_all([created(PersonId::new(), 1)])
        .collect()
        .await;
    assert!(
        results[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("after 2 attempts")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
}

/// An append of exactly the largest batch the server takes is one atomic batch; one
/// event more is refused before anything is sent. One event is a plain publish, with
/// no batch headers.
#[tokio::test]
async fn an_append_of_max_batch_events_is_stored_and_one_more_is_refused() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let publisher = client.publisher();
    let person = PersonId::new();
    let one = publisher
        .append(person, ExpectedVersion::NoEvents, &[created(person, 1)])
        .await
        .unwrap();
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let stored = stream.get_raw_message(one.version).await.unwrap();
    assert!(
        stored
            .headers
            .iter()
            .all(|(n, _)| !n.to_string().to_ascii_lowercase().starts_with("nats-batch")),
        "{:?}",
        stored.headers
    );
    let other = PersonId::new();
    let most: Vec<_> = (1..=person_streaming::MAX_BATCH as u64)
        .map(|s| {
            if s == 1 {
                created(other, 1)
            } else {
                activated(other, s)
            }
        })
        .collect();
    let err = publisher
        .append(
            other,
            ExpectedVersion::NoEvents,
            &[most.clone(), vec![activated(other, 9_999)]].concat(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::InvalidEvent, "{err}");
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 1);
    let receipt = publisher
        .append(other, ExpectedVersion::NoEvents, &most)
        .await
        .unwrap();
    assert_eq!(receipt.events.len(), person_streaming::MAX_BATCH);
    assert_eq!(
        stream_messages(&client, "PERSON_EVENTS").await,
        1 + person_streaming::MAX_BATCH as u64
    );
}

/// `publish_all` keeps at most `max_in_flight` messages unacknowledged: with the
/// server's acks held back, the server stores exactly that many and no more, and the
/// rest follow once the acks come. Meanwhile it reads its input only a few chunks
/// ahead (bounded memory, whatever the input's length).
#[tokio::test]
async fn publish_all_keeps_at_most_its_window_of_acks_outstanding() {
    let server = nats_harness::NatsServer::start().await.unwrap();
    let proxy = nats_harness::TcpProxy::start(server.port()).await.unwrap();
    let mut config = StreamingConfig::default();
    config.publisher.max_in_flight = 8;
    config.publisher.ack_timeout_ms = 30_000;
    let client = person_streaming::StreamingClient::new(&proxy.url(), config.clone())
        .await
        .unwrap();
    let counter = person_streaming::StreamingClient::new(&server.url(), config)
        .await
        .unwrap();
    assert!(format!("{:?}", client.publisher()).contains("max_in_flight: 8"));

    proxy.hold_replies(true);
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = taken.clone();
    let events = (0..2_000).map(move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        created(PersonId::new(), 1)
    });
    let publishing = tokio::spawn(async move {
        client
            .publisher()
            .publish_all(events)
            .collect::<Vec<_>>()
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream_messages(&counter, "PERSON_EVENTS").await < 8 {
        assert!(Instant::now() < deadline, "the window was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more goes out while no ack comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_messages(&counter, "PERSON_EVENTS").await, 8);
    // The window, and a few chunks of 32 built ahead.
    let read = taken.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        read <= 8 + 32 * 6,
        "read {read} of its input while no ack came"
    );

    proxy.hold_replies(false);
    let results = publishing.await.unwrap();
    assert_eq!(results.len(), 2_000);
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| !r.duplicate))
    );
    assert_eq!(stream_messages(&counter, "PERSON_EVENTS").await, 2_000);
}
