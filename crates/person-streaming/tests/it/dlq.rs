use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use person_events::PersonId;
use person_retry::{DeadLetter, DeadLetterSink, ErrorClass};
use person_streaming::{
    BLOCKED_BY_PREFIX, BODY_OBJECT_HEADER, DeadLetterFilter, PARKED_REASON, StreamingConfig,
    StreamingErrorKind,
};

use crate::support::{created, raw_message, start, stream_messages};

pub(crate) fn letter_for(
    subject: &str,
    sequence: u64,
    payload: Bytes,
    headers: Vec<(String, String)>,
    person: &PersonId,
) -> DeadLetter {
    DeadLetter {
        subject: subject.to_owned(),
        stream: "PERSON_EVENTS".into(),
        stream_sequence: sequence,
        payload,
        headers,
        reason: "projection rejected the event".into(),
        error_class: ErrorClass::Permanent,
        delivery_count: 1,
        first_failure_at: Utc::now(),
        last_failure_at: Utc::now(),
        consumer: "person-projection-summary".into(),
        handler: "summary".into(),
        metadata: None,
        event_id: None,
        person_id: Some(person.to_string()),
        event_type: Some("created".into()),
        payload_truncated: false,
        original_size: None,
        headers_truncated: false,
        attempts: Vec::new(),
    }
}

#[tokio::test]
async fn a_dead_letter_stored_twice_is_kept_once_and_replay_restores_the_event() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    let env = created(person, 1);
    let receipt = client.publisher().publish(&env).await.unwrap();
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let original = stream
        .get_raw_message(receipt.stream_sequence)
        .await
        .unwrap();
    let headers: Vec<(String, String)> = original
        .headers
        .iter()
        .flat_map(|(n, vs)| vs.iter().map(move |v| (n.to_string(), v.to_string())))
        .collect();
    let letter = letter_for(
        &original.subject,
        original.sequence,
        original.payload.clone(),
        headers,
        &person,
    );

    let dlq = client.dead_letters();
    dlq.store(&letter).await.unwrap();
    dlq.store(&letter).await.unwrap();
    assert_eq!(stream_messages(&client, "PERSON_EVENTS_DLQ").await, 1);

    let listed = dlq
        .list(&DeadLetterFilter {
            person_id: Some(person.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].letter, letter);
    assert!(
        dlq.list(&DeadLetterFilter {
            consumer: Some("policy-engine".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert!(
        dlq.list(&DeadLetterFilter {
            reason_contains: Some("timeout".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );

    // Inside the duplicate window, the replay is still stored (its own Nats-Msg-Id),
    // on the consumer's replay subject, outside the person's history...
    let replay = dlq.replay(listed[0].dlq_sequence).await.unwrap();
    assert!(!replay.already_replayed);
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 2);
    let replayed = stream
        .get_raw_message(replay.stream_sequence)
        .await
        .unwrap();
    assert_eq!(
        replayed.subject.as_str(),
        format!("person.replay.person-projection-summary.{person}.created")
    );
    assert_eq!(
        client.reader().load_aggregate(person).await.unwrap().len(),
        1
    );
    assert_eq!(replayed.payload, original.payload);
    assert_eq!(replayed.headers.get("ce-id"), original.headers.get("ce-id"));
    assert_ne!(
        replayed.headers.get("Nats-Msg-Id"),
        original.headers.get("Nats-Msg-Id")
    );
    assert_eq!(
        replayed
            .headers
            .get(person_streaming::REPLAY_OF_HEADER)
            .unwrap()
            .as_str(),
        listed[0].dlq_sequence.to_string()
    );
    // ...and the dead letter is gone.
    assert_eq!(stream_messages(&client, "PERSON_EVENTS_DLQ").await, 0);
    assert!(
        dlq.list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn purge_by_filter() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let dlq = client.dead_letters();
    let a = PersonId::new();
    let b = PersonId::new();
    for (i, p) in [a, a, b].iter().enumerate() {
        let l = letter_for(
            &format!("person.events.{p}.created"),
            i as u64 + 1,
            Bytes::from_static(b"{}"),
            vec![],
            p,
        );
        dlq.put(&l).await.unwrap();
    }
    let purged = dlq
        .purge(&DeadLetterFilter {
            person_id: Some(a.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 2);
    let left = dlq.list(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].letter.person_id.as_deref(),
        Some(b.to_string().as_str())
    );
    let got = dlq.get(left[0].dlq_sequence).await.unwrap();
    assert_eq!(got, left[0]);
    assert!(dlq.get(999).await.is_err());
}

/// A consumer group's name selects the dead letters of all its durables (the partitions
/// and the one before partitions), in list, count and purge; another consumer's stay.
#[tokio::test]
async fn a_group_name_selects_every_partitions_dead_letters() {
    let config = StreamingConfig::default()
        .with_partitions("person-projection-summary", 3)
        .unwrap();
    let (_server, client) = start(config).await;
    let dlq = client.dead_letters();
    let p = PersonId::new();
    let consumers = [
        "person-projection-summary-p0",
        "person-projection-summary-p2",
        "person-projection-summary",
        "person-projection-search",
        "person-projection-summary-p1",
    ];
    for (i, consumer) in consumers.iter().enumerate() {
        let mut l = letter_for(
            &format!("person.events.{p}.created"),
            i as u64 + 1,
            Bytes::from_static(b"{}"),
            vec![],
            &p,
        );
        l.consumer = (*consumer).to_owned();
        dlq.put(&l).await.unwrap();
    }
    let group = DeadLetterFilter {
        consumer: Some("person-projection-summary".into()),
        ..Default::default()
    };
    assert_eq!(dlq.count(&group).await.unwrap(), 4);
    let listed: Vec<String> = dlq
        .list(&group)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.letter.consumer)
        .collect();
    assert_eq!(
        listed,
        [
            "person-projection-summary-p0",
            "person-projection-summary-p2",
            "person-projection-summary",
            "person-projection-summary-p1",
        ],
        "in DLQ order"
    );
    let one = DeadLetterFilter {
        consumer: Some("person-projection-summary-p2".into()),
        ..Default::default()
    };
    assert_eq!(dlq.count(&one).await.unwrap(), 1);
    assert_eq!(dlq.purge(&group).await.unwrap(), 4);
    let left = dlq.list(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].letter.consumer, "person-projection-search");
}

#[tokio::test]
async fn the_seed_retry_handler_records_final_failures_in_the_dlq() {
    use person_streaming::{RetryHandler, RetryPolicy};
    let (_server, client) = start(StreamingConfig::default()).await;
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .initial_backoff(std::time::Duration::from_millis(1))
        .build()
        .unwrap();
    let retry_handler = RetryHandler::new(
        client.client().clone(),
        client.jetstream().clone(),
        policy,
        "person.dlq.>".to_string(),
    );
    let calls = std::sync::atomic::AtomicU32::new(0);
    let result: Result<(), std::io::Error> = retry_handler
        .execute_with_retry(
            || {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async { Err(std::io::Error::other("projection store down")) })
            },
            "process_event",
        )
        .await;
    assert_eq!(result.unwrap_err().to_string(), "projection store down");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    let ok: Result<u8, std::io::Error> = retry_handler
        .execute_with_retry(|| Box::pin(async { Ok(7) }), "process_event")
        .await;
    assert_eq!(ok.unwrap(), 7);
    let letters = client
        .dead_letters()
        .list(&DeadLetterFilter {
            consumer: Some(person_streaming::RETRY_HANDLER_CONSUMER.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].letter.reason, "projection store down");
    assert_eq!(
        letters[0].letter.event_type.as_deref(),
        Some("process_event")
    );
}

#[tokio::test]
async fn counts_group_by_consumer_and_reason_and_parked_followers_are_found() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let dlq = client.dead_letters();
    let a = PersonId::new();
    let b = PersonId::new();
    let mut poison = letter_for(
        &format!("person.events.{a}.created"),
        1,
        Bytes::from_static(b"{}"),
        vec![],
        &a,
    );
    poison.event_id = Some("e-1".into());
    let poison_seq = dlq.put(&poison).await.unwrap();
    for seq in 2..=3 {
        let mut follower = poison.clone();
        follower.stream_sequence = seq;
        follower.event_id = Some(format!("e-{seq}"));
        follower.reason = format!("{BLOCKED_BY_PREFIX}e-1");
        dlq.put(&follower).await.unwrap();
    }
    let mut other = letter_for(
        &format!("person.events.{b}.created"),
        4,
        Bytes::from_static(b"{}"),
        vec![],
        &b,
    );
    other.consumer = "policy-engine".into();
    dlq.put(&other).await.unwrap();

    let counts = dlq.counts(&DeadLetterFilter::default()).await.unwrap();
    let rows: Vec<(&str, &str, usize)> = counts
        .iter()
        .map(|c| (c.consumer.as_str(), c.reason.as_str(), c.count))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("person-projection-summary", PARKED_REASON, 2),
            (
                "person-projection-summary",
                "projection rejected the event",
                1
            ),
            ("policy-engine", "projection rejected the event", 1),
        ]
    );

    let stored = dlq.get(poison_seq).await.unwrap();
    // Typed ids: the person is read back as a PersonId; "e-1" is no event id.
    assert_eq!(stored.person_id(), Some(a));
    assert_eq!(stored.event_id(), None);
    let parked = dlq.parked_behind(&stored).await.unwrap();
    let seqs: Vec<u64> = parked.iter().map(|s| s.letter.stream_sequence).collect();
    assert_eq!(seqs, vec![2, 3]);
    assert!(
        dlq.parked_behind(&parked[0]).await.unwrap().is_empty(),
        "nothing is parked behind a follower"
    );

    let filter = DeadLetterFilter {
        consumer: Some("policy-engine".into()),
        ..Default::default()
    };
    assert!(filter.matches(&other));
    assert!(!filter.matches(&poison));
}

/// What the server counts against `max_payload` for a stored DLQ message: its header
/// block plus its body.
fn wire_size(msg: &async_nats::jetstream::message::StreamMessage) -> usize {
    let mut headers = "NATS/1.0\r\n\r\n".len();
    for (name, values) in msg.headers.iter() {
        for value in values {
            headers += name.to_string().len() + 2 + value.as_str().len() + 2;
        }
    }
    headers + msg.payload.len()
}

/// A body that is not an event (bytes JSON and base64 cannot shorten).
fn body(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 7 % 256) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn a_dead_letter_that_just_fits_its_record_stays_in_it_and_a_byte_more_goes_to_the_bucket() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let max_payload = client.client().server_info().max_payload;
    let dlq = client.dead_letters();
    let person = PersonId::new();
    let subject = format!("person.events.{person}.created");
    // The room a record has: max_payload less its header block (`Nats-Msg-Id`,
    // `Content-Type`) and a headroom of 256 bytes.
    let room = |l: &DeadLetter| {
        max_payload
            - "NATS/1.0\r\n\r\n".len()
            - ("Nats-Msg-Id: ".len() + l.dedup_id().len() + 2)
            - "Content-Type: application/json\r\n".len()
            - 256
    };
    for (seq, over) in [(20, 0), (21, 1)] {
        // A letter whose JSON is exactly `room + over` bytes, padded by its reason.
        let mut l = letter_for(&subject, seq, body(700 * 1024), Vec::new(), &person);
        let len = room(&l) + over;
        let base = serde_json::to_vec(&l).unwrap().len();
        assert!(base < len, "{base} >= {len}");
        l.reason.push_str(&"r".repeat(len - base));
        assert_eq!(serde_json::to_vec(&l).unwrap().len(), len);
        let at = dlq.put(&l).await.unwrap();
        let raw = raw_message(&client, "PERSON_EVENTS_DLQ", at).await;
        if over == 0 {
            assert!(
                raw.headers.get(BODY_OBJECT_HEADER).is_none(),
                "a letter that fits is kept in its record"
            );
            assert_eq!(raw.payload.len(), len, "whole, not cut");
        } else {
            assert!(
                raw.headers.get(BODY_OBJECT_HEADER).is_some(),
                "one byte over goes to the bodies bucket"
            );
        }
        assert_eq!(dlq.get(at).await.unwrap().letter, l, "read back whole");
    }
}

#[tokio::test]
async fn a_dead_letter_larger_than_max_payload_is_kept_whole_and_replayed_byte_for_byte() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let max_payload = client.client().server_info().max_payload;
    assert_eq!(max_payload, 1024 * 1024, "the server default");
    let dlq = client.dead_letters();
    let person = PersonId::new();
    let subject = format!("person.events.{person}.created");
    let headers = vec![("ce-id".to_owned(), "e-big".to_owned())];

    // 800 KiB: under max_payload as a message, over it as base64 in a record.
    let original = body(800 * 1024);
    let big = letter_for(&subject, 7, original.clone(), headers.clone(), &person);
    assert!(serde_json::to_vec(&big).unwrap().len() > max_payload);
    let seq = dlq.put(&big).await.unwrap();

    let raw = raw_message(&client, "PERSON_EVENTS_DLQ", seq).await;
    assert!(
        wire_size(&raw) < 16 * 1024,
        "the record is small: {}",
        wire_size(&raw)
    );
    let object = raw
        .headers
        .get(BODY_OBJECT_HEADER)
        .expect("names its body")
        .to_string();
    let stored = dlq.get(seq).await.unwrap();
    assert_eq!(stored.letter, big, "read back whole");
    let body_ref = stored.body.clone().expect("kept in the bucket");
    assert!(body_ref.loaded && body_ref.digest.starts_with("SHA-256="));
    assert_eq!(body_ref.name, object);
    let listed = dlq.list(&DeadLetterFilter::default()).await.unwrap();
    assert!(listed[0].letter.payload.is_empty(), "list reads no bodies");
    assert!(
        listed[0].letter.headers.is_empty() && !listed[0].letter.headers_truncated,
        "the record holds no headers either: they are in the body object"
    );
    assert_eq!(listed[0].letter.original_size, Some(800 * 1024));
    assert!(!listed[0].body.as_ref().unwrap().loaded);

    // The sink path the runtime uses stores it too.
    let via_sink = letter_for(&subject, 8, original.clone(), headers.clone(), &person);
    dlq.store(&via_sink).await.unwrap();
    assert_eq!(stream_messages(&client, "PERSON_EVENTS_DLQ").await, 2);

    // The replay is the original, byte for byte; the record and its body go.
    let receipt = dlq.replay(seq).await.unwrap();
    let replayed = raw_message(&client, "PERSON_EVENTS", receipt.stream_sequence).await;
    assert_eq!(replayed.payload, original);
    assert_eq!(replayed.headers.get("ce-id").unwrap().as_str(), "e-big");
    let bucket = client
        .jetstream()
        .get_object_store("PERSON_EVENTS_DLQ_BODIES")
        .await
        .unwrap();
    assert!(
        bucket.info(&object).await.map_or_else(
            |e| e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound,
            |info| info.deleted
        ),
        "the body is deleted with its record"
    );

    // A record whose body is gone is shown, never replayed.
    let seq8 = dlq
        .list(&DeadLetterFilter::default())
        .await
        .unwrap()
        .remove(0);
    bucket
        .delete(&seq8.body.as_ref().unwrap().name)
        .await
        .unwrap();
    let orphan = dlq.get(seq8.dlq_sequence).await.unwrap();
    assert!(!orphan.body.as_ref().unwrap().loaded);
    assert!(orphan.letter.payload.is_empty());
    let err = dlq.replay(seq8.dlq_sequence).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::Truncated, "{err}");
    assert!(err.to_string().contains("is gone"), "{err}");
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 1);
    assert_eq!(stream_messages(&client, "PERSON_EVENTS_DLQ").await, 1);

    // A small record is stored whole and unmarked, without an object.
    let small = letter_for(&subject, 9, body(2_000), headers, &person);
    let small_seq = dlq.put(&small).await.unwrap();
    let stored = dlq.get(small_seq).await.unwrap();
    assert_eq!(stored.letter, small);
    assert!(stored.body.is_none());
    assert!(!stored.letter.is_truncated());
}

#[tokio::test]
async fn without_a_bodies_bucket_a_large_dead_letter_keeps_a_prefix_and_is_never_replayed() {
    let (_server, client) = start(StreamingConfig::default()).await;
    // A deployment set up before the bucket existed.
    client
        .jetstream()
        .delete_object_store("PERSON_EVENTS_DLQ_BODIES")
        .await
        .unwrap();
    let max_payload = client.client().server_info().max_payload;
    let dlq = client.dead_letters();
    let person = PersonId::new();
    let subject = format!("person.events.{person}.created");
    let headers = vec![("ce-id".to_owned(), "e-big".to_owned())];
    let original = body(800 * 1024);
    let big = letter_for(&subject, 7, original.clone(), headers.clone(), &person);
    let seq = dlq.put(&big).await.unwrap();
    let raw = raw_message(&client, "PERSON_EVENTS_DLQ", seq).await;
    assert!(wire_size(&raw) <= max_payload);
    let stored = dlq.get(seq).await.unwrap();
    assert!(stored.body.is_none());
    let stored = stored.letter;
    assert!(stored.payload_truncated && !stored.headers_truncated);
    assert_eq!(stored.original_size, Some(800 * 1024));
    assert_eq!(stored.payload, original.slice(..stored.payload.len()));
    assert!(
        stored.payload.len() > 700 * 1024,
        "keeps as much as fits: {}",
        stored.payload.len()
    );
    assert_eq!(stored.headers, headers);

    // A prefix is not the event: replay refuses and changes nothing.
    let err = dlq.replay(seq).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::Truncated, "{err}");
    assert!(
        err.to_string().contains(&format!("DLQ sequence {seq}")),
        "{err}"
    );
    assert!(err.to_string().contains("max_payload"), "{err}");
    assert_eq!(stream_messages(&client, "PERSON_EVENTS").await, 0);
    assert_eq!(stream_messages(&client, "PERSON_EVENTS_DLQ").await, 1);

    // `ensure` creates the bucket; from then on large letters are kept whole.
    client.ensure().await.unwrap();
    let seq = dlq
        .put(&letter_for(&subject, 8, original.clone(), headers, &person))
        .await
        .unwrap();
    assert_eq!(dlq.get(seq).await.unwrap().letter.payload, original);
}

#[tokio::test]
async fn on_a_small_max_payload_huge_headers_and_bodies_are_kept_whole_in_chunks() {
    let (_server, client) =
        crate::support::start_with(StreamingConfig::default(), Some("max_payload: 65536")).await;
    let max_payload = client.client().server_info().max_payload;
    assert_eq!(max_payload, 65536);
    let dlq = client.dead_letters();
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS_DLQ")
        .await
        .unwrap();
    let person = PersonId::new();
    let subject = format!("person.events.{person}.created");

    // Headers alone larger than max_payload.
    let headers = vec![
        ("x-junk".to_owned(), "j".repeat(200_000)),
        ("ce-id".to_owned(), "e-1".to_owned()),
    ];
    let letter = letter_for(&subject, 1, body(1_000), headers, &person);
    let seq = dlq.put(&letter).await.unwrap();
    assert!(wire_size(&stream.get_raw_message(seq).await.unwrap()) <= max_payload);
    let stored = dlq.get(seq).await.unwrap();
    assert_eq!(stored.letter, letter);
    assert!(stored.body.unwrap().loaded);

    // The limit is the server's, not a constant: 100 KiB needs the bucket here.
    let letter = letter_for(&subject, 2, body(100 * 1024), vec![], &person);
    let seq = dlq.put(&letter).await.unwrap();
    assert!(wire_size(&stream.get_raw_message(seq).await.unwrap()) <= max_payload);
    assert_eq!(dlq.get(seq).await.unwrap().letter, letter);

    // Purge removes records and bodies.
    assert_eq!(dlq.purge(&DeadLetterFilter::default()).await.unwrap(), 2);
    let bucket = client
        .jetstream()
        .get_object_store("PERSON_EVENTS_DLQ_BODIES")
        .await
        .unwrap();
    let left: Vec<_> = bucket.list().await.unwrap().collect().await;
    assert!(left.is_empty(), "bodies left: {left:?}");
}

#[tokio::test]
async fn parked_people_and_holds_letters_read_the_subject_counts() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let dlq = client.dead_letters();
    let (a, b, c) = (PersonId::new(), PersonId::new(), PersonId::new());
    let summary = "person-projection-summary";
    let policy = "policy-engine";
    let mut seq = 0;
    let mut put = async |person: &PersonId, consumer: &str, event_type: &str| {
        seq += 1;
        let mut l = letter_for(
            &format!("person.events.{person}.{event_type}"),
            seq,
            Bytes::from_static(b"{}"),
            vec![],
            person,
        );
        l.consumer = consumer.into();
        l.event_type = Some(event_type.into());
        dlq.put(&l).await.unwrap()
    };
    // Person a twice (two event types), b once for the summary; c for the policy engine.
    put(&a, summary, "created").await;
    put(&a, summary, "activated").await;
    put(&b, summary, "created").await;
    put(&c, policy, "created").await;
    // A letter with no readable person names nobody.
    let mut nobody = letter_for("garbage", 99, Bytes::from_static(b"\xff"), vec![], &a);
    nobody.person_id = None;
    nobody.event_type = None;
    dlq.put(&nobody).await.unwrap();

    let mut ab = vec![a.to_string(), b.to_string()];
    ab.sort();
    assert_eq!(dlq.parked_people(summary).await.unwrap(), ab);
    assert_eq!(
        dlq.parked_people(policy).await.unwrap(),
        vec![c.to_string()]
    );
    assert!(
        dlq.parked_people("person-to-location")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(dlq.holds_letters(summary, &a.to_string()).await.unwrap());
    assert!(dlq.holds_letters(summary, &b.to_string()).await.unwrap());
    assert!(!dlq.holds_letters(summary, &c.to_string()).await.unwrap());
    assert!(dlq.holds_letters(policy, &c.to_string()).await.unwrap());
    assert!(
        dlq.holds_letters(summary, person_streaming::UNKNOWN_TOKEN)
            .await
            .unwrap()
    );

    // Deleting a's letters (by sequence, as replay and purge do) un-parks a only.
    let purged = dlq
        .purge(&DeadLetterFilter {
            consumer: Some(summary.into()),
            person_id: Some(a.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(
        dlq.parked_people(summary).await.unwrap(),
        vec![b.to_string()]
    );
    assert!(!dlq.holds_letters(summary, &a.to_string()).await.unwrap());
    assert!(dlq.holds_letters(summary, &b.to_string()).await.unwrap());
    assert_eq!(
        dlq.parked_people(policy).await.unwrap(),
        vec![c.to_string()]
    );

    // Tokens that would widen the filter are refused before anything is sent.
    for bad in ["*", ">", "a.b", "", "a b"] {
        let e = dlq.parked_people(bad).await.unwrap_err();
        assert_eq!(e.kind(), StreamingErrorKind::InvalidInput, "{bad:?}: {e}");
        let e = dlq.holds_letters(summary, bad).await.unwrap_err();
        assert_eq!(e.kind(), StreamingErrorKind::InvalidInput, "{bad:?}: {e}");
        assert!(e.to_string().contains("person"), "{e}");
        let e = dlq.holds_letters(bad, &b.to_string()).await.unwrap_err();
        assert_eq!(e.kind(), StreamingErrorKind::InvalidInput, "{bad:?}: {e}");
    }

    // Without a DLQ stream the answer is NotFound, not "nobody is parked".
    client
        .jetstream()
        .delete_stream("PERSON_EVENTS_DLQ")
        .await
        .unwrap();
    let e = dlq.parked_people(summary).await.unwrap_err();
    assert_eq!(e.kind(), StreamingErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("PERSON_EVENTS_DLQ"), "{e}");
    let e = dlq
        .holds_letters(summary, &b.to_string())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StreamingErrorKind::NotFound, "{e}");
}

/// Users who may not open the bodies bucket, or may open it but not read its objects.
const BUCKET_USERS: &str = r#"
accounts {
  PERSON: {
    jetstream: enabled
    users: [
      { user: admin, password: a-secret }
      { user: nobucket, password: b-secret, permissions: { publish: { deny: ["$JS.API.STREAM.INFO.OBJ_PERSON_EVENTS_DLQ_BODIES"] } } }
      { user: nodlq, password: d-secret, permissions: { publish: { deny: ["$JS.API.STREAM.INFO.PERSON_EVENTS_DLQ", "$JS.API.STREAM.MSG.GET.PERSON_EVENTS_DLQ", "$JS.API.DIRECT.GET.PERSON_EVENTS_DLQ", "$JS.API.DIRECT.GET.PERSON_EVENTS_DLQ.>", "$JS.API.STREAM.MSG.DELETE.PERSON_EVENTS_DLQ"] } } }
      { user: noobjects, password: o-secret, permissions: { publish: { deny: ["$JS.API.STREAM.MSG.GET.OBJ_PERSON_EVENTS_DLQ_BODIES", "$JS.API.DIRECT.GET.OBJ_PERSON_EVENTS_DLQ_BODIES", "$JS.API.DIRECT.GET.OBJ_PERSON_EVENTS_DLQ_BODIES.>"] } } }
    ]
  }
}
"#;

async fn as_user(url: &str, user: &str, password: &str) -> person_streaming::StreamingClient {
    let mut config = StreamingConfig::default();
    config.publisher.ack_timeout_ms = 1_000;
    person_streaming::StreamingClient::builder(url)
        .ensure_on_connect(false)
        .user_and_password(user, password)
        .connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect as {user}: {e}"))
}

/// A missing bucket or object is "not loaded"; a bucket or object that cannot be read
/// is an error, never taken for a missing one (which would store a cut letter, or show
/// a whole one as lost).
#[tokio::test]
async fn a_bodies_bucket_that_cannot_be_read_is_an_error_and_a_missing_one_is_not_loaded() {
    let server = nats_harness::NatsServer::with_config(BUCKET_USERS)
        .await
        .unwrap();
    let admin = as_user(&server.url(), "admin", "a-secret").await;
    admin.ensure().await.unwrap();
    let person = PersonId::new();
    let subject = format!("person.events.{person}.created");
    let big = |seq| letter_for(&subject, seq, body(900 * 1024), Vec::new(), &person);
    let kept = admin.dead_letters().put(&big(1)).await.unwrap();

    // Cannot open the bucket: storing a large letter fails (nothing stored, not a cut
    // record), and reading one back fails.
    let nobucket = as_user(&server.url(), "nobucket", "b-secret").await;
    let err = nobucket.dead_letters().put(&big(2)).await.unwrap_err();
    assert_ne!(err.kind(), StreamingErrorKind::NotFound, "{err}");
    assert_eq!(stream_messages(&admin, "PERSON_EVENTS_DLQ").await, 1);
    let err = nobucket.dead_letters().get(kept).await.unwrap_err();
    assert_ne!(err.kind(), StreamingErrorKind::NotFound, "{err}");

    // Cannot read its objects: reading the letter back fails too.
    let noobjects = as_user(&server.url(), "noobjects", "o-secret").await;
    assert!(noobjects.dead_letters().get(kept).await.is_err());

    // A record naming an object the bucket does not hold: shown, not loaded.
    let record = raw_message(&admin, "PERSON_EVENTS_DLQ", kept).await;
    let mut headers = record.headers.clone();
    headers.insert(BODY_OBJECT_HEADER, "no-such-object");
    headers.insert("Nats-Msg-Id", "a-record-without-its-object");
    let orphan = admin
        .jetstream()
        .publish_with_headers(record.subject.to_string(), headers, record.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let got = admin.dead_letters().get(orphan).await.unwrap();
    assert!(!got.body.unwrap().loaded);
    assert!(got.letter.payload.is_empty());

    // The bucket deleted: the letter is shown, not loaded.
    assert!(
        admin
            .dead_letters()
            .get(kept)
            .await
            .unwrap()
            .body
            .unwrap()
            .loaded
    );
    admin
        .jetstream()
        .delete_object_store("PERSON_EVENTS_DLQ_BODIES")
        .await
        .unwrap();
    let got = admin.dead_letters().get(kept).await.unwrap();
    assert!(!got.body.unwrap().loaded);
}

/// Reads of the DLQ stream: a missing stream or letter is NotFound, and says so; one
/// that cannot be read is another error, never taken for a missing one.
#[tokio::test]
async fn dlq_reads_tell_a_missing_letter_or_stream_from_one_that_cannot_be_read() {
    let server = nats_harness::NatsServer::with_config(BUCKET_USERS)
        .await
        .unwrap();
    let admin = as_user(&server.url(), "admin", "a-secret").await;
    let dlq = admin.dead_letters();
    const C: &str = "person-projection-summary";
    let person = PersonId::new();

    // No DLQ stream yet.
    let err = dlq.holds_letters(C, &person.to_string()).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    admin.ensure().await.unwrap();
    assert_eq!(dlq.last_sequence().await.unwrap(), 0);
    assert!(!dlq.holds_letters(C, &person.to_string()).await.unwrap());
    let subject = format!("person.events.{person}.created");
    dlq.put(&letter_for(&subject, 1, body(10), Vec::new(), &person))
        .await
        .unwrap();
    let second = dlq
        .put(&letter_for(&subject, 2, body(10), Vec::new(), &person))
        .await
        .unwrap();
    assert_eq!(dlq.last_sequence().await.unwrap(), second);
    assert!(dlq.holds_letters(C, &person.to_string()).await.unwrap());
    let err = dlq.get(second + 10).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::NotFound, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("no dead letter at DLQ sequence {}", second + 10)),
        "{err}"
    );
    let err = dlq.delete(second + 10).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::NotFound, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("no dead letter at DLQ sequence {}", second + 10)),
        "{err}"
    );

    // A user who may not read (or delete from) the DLQ stream.
    let denied = as_user(&server.url(), "nodlq", "d-secret").await;
    let dlq = denied.dead_letters();
    for err in [
        dlq.get(second).await.unwrap_err(),
        dlq.holds_letters(C, &person.to_string()).await.unwrap_err(),
        dlq.last_sequence().await.unwrap_err(),
        dlq.delete(second).await.unwrap_err(),
    ] {
        assert_ne!(err.kind(), StreamingErrorKind::NotFound, "{err}");
    }
}

/// A purge deletes in batches of 256 and `each` may stop it after any batch: what is
/// left is exactly what the batches did not reach, on both paths (headers only, and
/// records read for a content filter).
#[tokio::test]
async fn a_purge_stopped_after_its_first_batch_deletes_exactly_that_batch() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let dlq = client.dead_letters();
    let person = PersonId::new();
    let subject = format!("person.events.{person}.created");
    let puts = (1..=300u64).map(|seq| {
        let dlq = &dlq;
        let letter = letter_for(&subject, seq, body(8), Vec::new(), &person);
        async move { dlq.put(&letter).await.unwrap() }
    });
    let mut seqs: Vec<u64> = futures::stream::iter(puts)
        .buffer_unordered(32)
        .collect()
        .await;
    seqs.sort_unstable();
    let everything = DeadLetterFilter::default();
    let by_reason = DeadLetterFilter {
        reason_contains: Some("rejected".into()),
        ..Default::default()
    };
    for (filter, left) in [(&everything, 44), (&by_reason, 0)] {
        let mut told = Vec::new();
        let purged = dlq
            .purge_with(filter, |seq, result| {
                assert!(result.is_ok(), "{seq}: {result:?}");
                told.push(seq);
                false
            })
            .await
            .unwrap();
        let before = seqs.len();
        let batch = before.min(256);
        assert_eq!(purged, batch, "{filter:?}");
        assert_eq!(
            told,
            seqs[..batch],
            "{filter:?}: told of the batch, in order"
        );
        seqs.drain(..batch);
        assert_eq!(seqs.len(), left);
        let listed: Vec<u64> = dlq
            .list(&everything)
            .await
            .unwrap()
            .iter()
            .map(|s| s.dlq_sequence)
            .collect();
        assert_eq!(listed, seqs, "{filter:?}: the rest is left");
    }
}
