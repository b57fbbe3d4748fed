//! Dead-letter records and sinks.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use person_metadata::EventMetadata;
use person_retry::{DeadLetter, DeadLetterSink, ErrorClass, MemorySink, SinkErrorKind, dedup_id};

fn letter(sequence: u64) -> DeadLetter {
    DeadLetter {
        subject: "person.events.p1.created".into(),
        stream: "PERSON_EVENTS".into(),
        stream_sequence: sequence,
        payload: Bytes::from(vec![0u8, 159, 255, b'{', b'"']),
        headers: vec![
            ("ce-id".into(), "e1".into()),
            ("x-multi".into(), "1".into()),
            ("x-multi".into(), "2".into()),
        ],
        reason: "store timed out".into(),
        error_class: ErrorClass::RetryAfter(std::time::Duration::from_millis(250)),
        delivery_count: 5,
        first_failure_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
        last_failure_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 9, 5).unwrap(),
        consumer: "projector".into(),
        handler: "process_event".into(),
        metadata: Some(EventMetadata::new().with_actor("svc")),
        event_id: Some("e1".into()),
        person_id: Some("p1".into()),
        event_type: Some("created".into()),
        payload_truncated: false,
        original_size: None,
        headers_truncated: false,
        attempts: Vec::new(),
    }
}

#[test]
fn round_trips_bytes_and_headers_untouched() {
    let original = letter(9);
    let json = serde_json::to_string(&original).unwrap();
    let back: DeadLetter = serde_json::from_str(&json).unwrap();
    assert_eq!(back, original);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["payload"], "AJ//eyI=");
    assert_eq!(
        value["error_class"],
        serde_json::json!({"retry_after_ms": 250})
    );
    assert_eq!(value["first_failure_at"], "2025-01-02T03:04:05Z");
    assert_eq!(
        value["headers"],
        serde_json::json!([["ce-id", "e1"], ["x-multi", "1"], ["x-multi", "2"]])
    );
}

#[test]
fn optional_fields_are_optional() {
    let mut bare = letter(1);
    bare.metadata = None;
    bare.event_id = None;
    bare.person_id = None;
    bare.event_type = None;
    let value = serde_json::to_value(&bare).unwrap();
    assert!(value.get("metadata").is_none());
    assert!(value.get("person_id").is_none());
    assert_eq!(serde_json::from_value::<DeadLetter>(value).unwrap(), bare);

    let err = serde_json::from_str::<DeadLetter>(
        &serde_json::to_string(&bare)
            .unwrap()
            .replace("AJ//eyI=", "not base64!"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("base64"), "{err}");
}

#[test]
fn truncation_marks_round_trip_and_old_records_read_as_whole() {
    let mut cut = letter(2);
    cut.payload = cut.payload.slice(..3);
    cut.payload_truncated = true;
    cut.original_size = Some(5);
    let value = serde_json::to_value(&cut).unwrap();
    assert_eq!(value["payload_truncated"], true);
    assert_eq!(value["original_size"], 5);
    assert_eq!(value["headers_truncated"], false);
    assert_eq!(serde_json::from_value::<DeadLetter>(value).unwrap(), cut);
    assert!(cut.is_truncated());

    let headers_only = DeadLetter {
        headers_truncated: true,
        attempts: Vec::new(),
        ..letter(3)
    };
    assert!(headers_only.is_truncated());

    // A record written before the marks existed has none of the three keys.
    let original = letter(4);
    let mut old = serde_json::to_value(&original).unwrap();
    let map = old.as_object_mut().unwrap();
    for key in ["payload_truncated", "original_size", "headers_truncated"] {
        map.remove(key);
    }
    let read: DeadLetter = serde_json::from_value(old).unwrap();
    assert_eq!(read, original);
    assert!(!read.is_truncated());
    let whole = serde_json::to_value(&original).unwrap();
    assert!(
        whole.get("original_size").is_none(),
        "left out when not cut"
    );
}

#[test]
fn dedup_id_is_deterministic() {
    assert_eq!(dedup_id("S", 3, "c"), "dlq:S:3:c");
    assert_eq!(letter(3).dedup_id(), letter(3).dedup_id());
    assert_ne!(letter(3).dedup_id(), letter(4).dedup_id());
}

#[tokio::test]
async fn memory_sink_stores_dedups_and_fails_on_demand() {
    let sink = MemorySink::new();
    let shared: Arc<dyn DeadLetterSink> = Arc::new(sink.clone());

    shared.store(&letter(1)).await.unwrap();
    shared.store(&letter(1)).await.unwrap();
    shared.store(&letter(2)).await.unwrap();
    assert_eq!(sink.len(), 2);
    assert_eq!(sink.letters()[1].dedup_id(), letter(2).dedup_id());

    sink.set_failing(Some(SinkErrorKind::Rejected));
    let err = shared.store(&letter(3)).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Rejected);
    assert!(!err.is_transient());
    sink.set_failing(None);

    sink.fail_next(2, SinkErrorKind::Timeout);
    assert!(shared.store(&letter(3)).await.unwrap_err().is_transient());
    assert!(shared.store(&letter(3)).await.is_err());
    shared.store(&letter(3)).await.unwrap();
    assert_eq!(sink.len(), 3);
    assert_eq!(sink.store_calls(), 7);
}
