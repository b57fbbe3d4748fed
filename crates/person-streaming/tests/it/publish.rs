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
        err.to_string().contains("publishing again is safe"),
        "{err}"
    );
}
