//! Contract cases found by mutation testing (RELIABILITY.md, "Mutation testing").

use bytes::Bytes;
use chrono::Utc;
use person_events::PersonId;
use person_retry::{DeadLetter, ErrorClass};
use person_streaming::{BLOCKED_BY_PREFIX, StreamingConfig};

use crate::support::start;

fn letter(person: &PersonId, consumer: &str, sequence: u64, reason: String) -> DeadLetter {
    DeadLetter {
        subject: format!("person.events.{person}.created"),
        stream: "PERSON_EVENTS".into(),
        stream_sequence: sequence,
        payload: Bytes::from_static(b"{}"),
        headers: vec![],
        reason,
        error_class: ErrorClass::Permanent,
        delivery_count: 1,
        first_failure_at: Utc::now(),
        last_failure_at: Utc::now(),
        consumer: consumer.into(),
        handler: consumer.into(),
        metadata: None,
        event_id: Some(format!("e-{sequence}")),
        person_id: Some(person.to_string()),
        event_type: Some("created".into()),
        payload_truncated: false,
        original_size: None,
        headers_truncated: false,
        attempts: Vec::new(),
    }
}

#[tokio::test]
async fn parked_behind_finds_only_the_same_consumers_letters_of_the_same_person() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let dlq = client.dead_letters();
    let (a, b) = (PersonId::new(), PersonId::new());
    let blocked = format!("{BLOCKED_BY_PREFIX}e-1");
    let poison = dlq
        .put(&letter(
            &a,
            "summary",
            1,
            "projection rejected the event".into(),
        ))
        .await
        .unwrap();
    // Parked behind it: only the first. The others name the same event id as their
    // blocker, but are another consumer's, or another person's.
    dlq.put(&letter(&a, "summary", 2, blocked.clone()))
        .await
        .unwrap();
    dlq.put(&letter(&a, "search", 3, blocked.clone()))
        .await
        .unwrap();
    dlq.put(&letter(&b, "summary", 4, blocked)).await.unwrap();

    let stored = dlq.get(poison).await.unwrap();
    let parked = dlq.parked_behind(&stored).await.unwrap();
    let seqs: Vec<u64> = parked.iter().map(|s| s.letter.stream_sequence).collect();
    assert_eq!(seqs, [2]);
}
