//! Hostile and bad input on the wire: bad messages in the stream go to the DLQ with a
//! precise reason while the consumer keeps going; bad identifiers are rejected before
//! anything is published, so no subject can be widened or re-routed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use nats_harness::NatsServer;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope, codec, subject};
use person_metadata::EventMetadata;
use person_metadata::headers::{CloudEventAttributes, encode_headers};
use person_retry::{DeadLetter, ErrorClass};
use person_streaming::{ConsumerSettings, DeadLetterFilter, StreamingErrorKind};
use person_subscriptions::{
    DeadLetterPolicy, SubscriptionErrorKind, SubscriptionManager, SubscriptionOptions,
};

use crate::support::{
    CONSUMER, Projection, ProjectionHandler, Row, config, connect, dlq_messages, event, eventually,
    publish_all, record, workload,
};

const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The headers the publisher would write for `env`.
fn headers_for(env: &StreamingEventEnvelope) -> HeaderMap {
    headers_without(env, "")
}

/// The headers the publisher would write for `env`, except `skip`.
fn headers_without(env: &StreamingEventEnvelope, skip: &str) -> HeaderMap {
    let person = env.aggregate_id.to_string();
    let mut h = HeaderMap::new();
    for (name, value) in encode_headers(
        env.metadata(),
        &CloudEventAttributes {
            id: env.event_id,
            source: "/hostile",
            event_type: env.event.event_type(),
            subject: Some(&person),
        },
    ) {
        if name != skip {
            h.insert(name, value.as_str());
        }
    }
    h.insert("Nats-Msg-Id", env.event_id.to_string().as_str());
    h
}

/// The body of `env` with one JSON edit.
fn edited(env: &StreamingEventEnvelope, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&codec::encode(env).unwrap()).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_with_a_precise_reason_and_the_consumer_goes_on() {
    let started = Instant::now();
    let server = NatsServer::start().await.unwrap();
    let client = connect(&server.url(), config(5)).await;
    let js = client.jetstream();

    // (name, subject, headers, body, expected start of the DLQ reason)
    let mut bad: Vec<(&str, String, HeaderMap, Vec<u8>, String)> = Vec::new();
    let fresh = || event(PersonId::new(), 1);

    let e = fresh();
    let body = codec::encode(&e).unwrap();
    bad.push((
        "undecodable",
        e.subject(),
        headers_for(&e),
        body[..body.len() / 2].to_vec(),
        "undecodable: malformed JSON".into(),
    ));

    let p = PersonId::new();
    let big = StreamingEventEnvelope::new(
        p,
        1,
        PersonEventV2::Activated {
            person_id: p,
            // Near the server's 1 MB max_payload: the whole body, base64 in a dead
            // letter, would not fit in one message.
            reason: "x".repeat(900 * 1024),
            metadata: EventMetadata::new(),
        },
    );
    let big_body = codec::encode(&big).unwrap();
    bad.push((
        "oversized",
        big.subject(),
        headers_for(&big),
        big_body.clone(),
        format!(
            "oversized: the body is {} bytes, more than max_message_bytes ({MAX_MESSAGE_BYTES})",
            big_body.len()
        ),
    ));

    let e = fresh();
    bad.push((
        "missing headers",
        e.subject(),
        HeaderMap::new(),
        codec::encode(&e).unwrap(),
        "bad headers: required header `ce-specversion` is missing".into(),
    ));

    let e = fresh();
    bad.push((
        "missing ce-id",
        e.subject(),
        headers_without(&e, "ce-id"),
        codec::encode(&e).unwrap(),
        "bad headers: required header `ce-id` is missing".into(),
    ));

    let e = fresh();
    let other = fresh();
    let mut h = headers_for(&e);
    h.insert("ce-id", other.event_id.to_string().as_str());
    bad.push((
        "headers of another event",
        e.subject(),
        h,
        codec::encode(&e).unwrap(),
        format!(
            "bad headers: ce-id {} is not the body's event_id",
            other.event_id
        ),
    ));

    let e = fresh();
    let mut h = headers_for(&e);
    h.insert("Content-Type", "text/plain");
    bad.push((
        "wrong content type",
        e.subject(),
        h,
        codec::encode(&e).unwrap(),
        "undecodable: unsupported content type: Content-Type `text/plain`".into(),
    ));

    let e = fresh();
    bad.push((
        "unknown event type",
        e.subject(),
        headers_for(&e),
        edited(&e, |v| v["event"]["event_type"] = "Teleported".into()),
        "undecodable: unknown event type".into(),
    ));

    let e = fresh();
    bad.push((
        "unknown schema version",
        e.subject(),
        headers_for(&e),
        edited(&e, |v| v["schema_version"] = 99.into()),
        "undecodable: unsupported schema version: schema_version 99".into(),
    ));

    let e = fresh();
    let stranger = PersonId::new();
    bad.push((
        "stored on another person's subject",
        format!("person.events.{stranger}.activated"),
        headers_for(&e),
        codec::encode(&e).unwrap(),
        format!(
            "undecodable: invalid field: stored on subject `person.events.{stranger}.activated`"
        ),
    ));

    // Good events before, between and after the bad ones.
    let good = workload(20, 10);
    publish_all(&client, &good[..100]).await;
    for (_, subject, headers, body, _) in &bad {
        js.publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    publish_all(&client, &good[100..]).await;

    let projection = Arc::new(Projection::default());
    let mut manager = SubscriptionManager::new(client.clone()).with_options(
        SubscriptionOptions::default()
            .max_message_bytes(MAX_MESSAGE_BYTES)
            .dead_letter_policy(DeadLetterPolicy::Park),
    );
    manager.register_handler(Arc::new(
        ProjectionHandler::new(projection.clone()).known(&good),
    ));
    let handle = manager.start_consumer(CONSUMER).await.unwrap();
    eventually(300, "every good event handled", || {
        projection.distinct() == 200
    })
    .await;
    eventually(300, "every bad message dead-lettered", || {
        handle.stats().dead_lettered == bad.len() as u64
    })
    .await;
    let stats = handle.stats();
    handle.shutdown(Duration::from_secs(10)).await;

    let letters = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), bad.len());
    let seqs: BTreeMap<String, u64> = letters
        .iter()
        .map(|s| (s.letter.subject.clone(), s.dlq_sequence))
        .collect();
    let by_subject: BTreeMap<String, DeadLetter> = letters
        .into_iter()
        .map(|s| (s.letter.subject.clone(), s.letter))
        .collect();
    for (name, subject, _, body, reason) in &bad {
        let letter = by_subject
            .get(subject)
            .unwrap_or_else(|| panic!("{name}: no dead letter for {subject}"));
        assert!(
            letter.reason.starts_with(reason.as_str()),
            "{name}: reason `{}` does not start with `{reason}`",
            letter.reason
        );
        // An oversized body does not fit a record under the server's max_payload: the
        // record names its body object, and `get` reads the whole of it back.
        if *name == "oversized" {
            assert!(letter.payload.is_empty(), "{name}: list reads no body");
            assert_eq!(letter.original_size, Some(body.len() as u64));
            let whole = client.dead_letters().get(seqs[subject]).await.unwrap();
            assert!(whole.body.as_ref().is_some_and(|b| b.loaded), "{name}");
            assert!(!whole.letter.is_truncated(), "{name}");
            assert_eq!(&whole.letter.payload[..], &body[..], "{name}: kept whole");
        } else {
            assert!(!letter.payload_truncated, "{name}");
            assert_eq!(
                &letter.payload[..],
                &body[..],
                "{name}: original bytes kept"
            );
        }
        assert_eq!(letter.error_class, ErrorClass::Permanent, "{name}");
        assert_eq!(letter.consumer, CONSUMER);
    }
    assert_eq!(stats.processed, 200, "the consumer kept going");
    assert!(projection.errors().is_empty(), "{:?}", projection.errors());
    record(
        Row {
            case: "hostile-bad-messages",
            area: "hostile",
            what: "bad messages published between 200 good events: undecodable, oversized, missing headers, missing ce-id, ce-id of another event, wrong content type, unknown event type, unknown schema version, another person's subject".into(),
            load: "200 good events, 20 people".into(),
            faults: format!("{} bad messages", bad.len()),
            inputs: bad.len() as u64,
            lost: 200 - projection.distinct(),
            duplicated: 0,
            absorbed: projection.absorbed(),
            notes: format!(
                "{} dead letters, each with its precise reason and the original bytes (of the 900 KiB oversized one, the prefix that fits the server's max_payload, marked truncated); 200 good events handled",
                bad.len()
            ),
            ..Row::default()
        },
        started,
    );
}

const BAD_TOKENS: [&str; 14] = [
    ".", "*", ">", "a.b", "a*", "a>", "a b", " ", "\t", "a\nb", "\r", "\u{0}", "a\u{1b}b", "\u{7f}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_identifiers_are_rejected_before_any_publish() {
    let started = Instant::now();
    let server = NatsServer::start().await.unwrap();
    let client = connect(&server.url(), config(5)).await;
    // Everything published on person.> is seen here.
    let spy_client = async_nats::connect(server.url()).await.unwrap();
    let mut spy = spy_client.subscribe("person.>").await.unwrap();
    spy_client.flush().await.unwrap();
    // The spy is live for the client's publishes once it sees one of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        client
            .client()
            .publish("person.ready", "ready".into())
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), spy.next()).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spy never went live"
        );
    }

    let person = PersonId::new();
    let p = person.to_string();
    let dlq = client.dead_letters();
    let mut tried = 0u64;
    let mut seq = 0u64;
    macro_rules! check {
        ($ok:expr, $what:expr, $bad:expr) => {{
            tried += 1;
            assert!($ok, "{} accepted {:?}", $what, $bad);
        }};
    }
    let mut letter = |consumer: &str, person: &str, event_type: &str| {
        seq += 1;
        DeadLetter {
            subject: "person.events.x.created".into(),
            stream: "PERSON_EVENTS".into(),
            stream_sequence: seq,
            payload: bytes::Bytes::from_static(b"{}"),
            headers: Vec::new(),
            reason: "test".into(),
            error_class: ErrorClass::Permanent,
            delivery_count: 1,
            first_failure_at: chrono::Utc::now(),
            last_failure_at: chrono::Utc::now(),
            consumer: consumer.into(),
            handler: "h".into(),
            metadata: None,
            event_id: None,
            person_id: Some(person.into()),
            event_type: Some(event_type.into()),
            payload_truncated: false,
            original_size: None,
            headers_truncated: false,
            attempts: Vec::new(),
        }
    };
    for bad in BAD_TOKENS {
        check!(
            subject::validate_token("person", bad).is_err(),
            "validate_token",
            bad
        );
        check!(
            subject::event_subject(&person, bad).is_err(),
            "event_subject",
            bad
        );
        check!(
            subject::dlq_subject(bad, &p, "created").is_err(),
            "dlq consumer",
            bad
        );
        check!(
            subject::dlq_subject("c", bad, "created").is_err(),
            "dlq person",
            bad
        );
        check!(
            subject::dlq_subject("c", &p, bad).is_err(),
            "dlq event type",
            bad
        );
        check!(
            subject::parse_event_subject(&format!("person.events.{bad}.created")).is_err(),
            "parse_event_subject",
            bad
        );
        // A person id is a UUID: a token that is not one never becomes a PersonId.
        let id_json = serde_json::json!({ "id": format!("{p}{bad}") });
        check!(
            serde_json::from_value::<PersonId>(id_json).is_err(),
            "PersonId",
            bad
        );
        // Dead-letter filters are validated before any request.
        let filter = DeadLetterFilter {
            person_id: Some(bad.to_owned()),
            ..DeadLetterFilter::default()
        };
        let err = dlq.list(&filter).await.unwrap_err();
        check!(
            err.kind() == StreamingErrorKind::InvalidInput,
            "dlq filter person",
            bad
        );
        let filter = DeadLetterFilter {
            consumer: Some(format!("c{bad}")),
            ..DeadLetterFilter::default()
        };
        let err = dlq.purge(&filter).await.unwrap_err();
        check!(
            err.kind() == StreamingErrorKind::InvalidInput,
            "dlq purge consumer",
            bad
        );
        // A consumer named with it is refused by validation.
        let mut cfg = config(5);
        cfg.consumers = vec![ConsumerSettings::new(
            &format!("c{bad}"),
            &["person.events.>"],
            "bad",
        )];
        let err = cfg.validate().unwrap_err();
        check!(
            err.field() == "consumers[0].durable_name",
            "durable name",
            bad
        );
        // A dead letter naming a bad consumer is refused; one naming a bad person or
        // event type is stored under `unknown`, never on a subject the input shapes.
        let err = dlq
            .put(&letter(&format!("c{bad}"), &p, "created"))
            .await
            .unwrap_err();
        check!(
            err.kind() == StreamingErrorKind::InvalidInput,
            "dead letter consumer",
            bad
        );
        dlq.put(&letter("c", &format!("{p}{bad}"), "created"))
            .await
            .unwrap();
        dlq.put(&letter("c", &p, &format!("created{bad}")))
            .await
            .unwrap();
        tried += 2;
    }
    // A handler name is a subject token too.
    for bad in BAD_TOKENS {
        struct Named(String);
        #[async_trait::async_trait]
        impl person_subscriptions::StreamingEventHandler for Named {
            async fn handle_event(
                &self,
                _: StreamingEventEnvelope,
            ) -> person_subscriptions::DomainResult<()> {
                Ok(())
            }
            fn name(&self) -> &str {
                &self.0
            }
        }
        let mut manager = SubscriptionManager::new(client.clone());
        manager.register_handler(Arc::new(Named(format!("h{bad}"))));
        manager.register_handler(Arc::new(Named("other".into())));
        let err = manager.start_consumer(CONSUMER).await.unwrap_err();
        assert_eq!(
            err.kind(),
            SubscriptionErrorKind::InvalidHandlerName,
            "{bad:?}"
        );
        tried += 1;
    }

    // The only subjects ever published on: the DLQ fallbacks, one pair per token.
    let stored = dlq_messages(&client).await;
    assert_eq!(stored, 2 * BAD_TOKENS.len() as u64);
    let expected_subjects = ["person.dlq.c.unknown.unknown".to_owned()];
    let mut seen = 0;
    while seen < stored {
        let msg = tokio::time::timeout(Duration::from_secs(30), spy.next())
            .await
            .unwrap_or_else(|_| panic!("the spy saw {seen} of {stored} DLQ publishes"))
            .unwrap();
        if msg.subject.as_str() == "person.ready" {
            continue;
        }
        assert!(
            expected_subjects.contains(&msg.subject.to_string()),
            "published on {}",
            msg.subject
        );
        seen += 1;
    }
    // Nothing else: a marker published last arrives next.
    spy_client
        .publish("person.marker", "end".into())
        .await
        .unwrap();
    spy_client.flush().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(30), spy.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.subject.as_str(), "person.marker");
    let mut events = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    assert_eq!(events.info().await.unwrap().state.messages, 0);
    record(
        Row {
            case: "hostile-bad-identifiers",
            area: "hostile",
            what: "person ids, event types, consumer, handler and filter names with `.`, `*`, `>`, white space or control characters".into(),
            load: format!("{} bad tokens", BAD_TOKENS.len()),
            faults: "-".into(),
            inputs: tried,
            lost: 0,
            duplicated: 0,
            absorbed: 0,
            notes: "all rejected before publishing; a spy on person.> saw only DLQ records under `unknown` tokens".into(),
            ..Row::default()
        },
        started,
    );
}
