//! Auth against a server with accounts and users: a user without publish permission on
//! `person.events.>` gets a clear, typed error; one account cannot read another's DLQ;
//! wrong credentials fail at once with a message.

use std::time::{Duration, Instant};

use futures::StreamExt;
use nats_harness::NatsServer;
use person_events::PersonId;
use person_retry::{DeadLetter, ErrorClass};
use person_streaming::{
    DeadLetterFilter, PublishErrorKind, StreamingClient, StreamingConfig, StreamingErrorKind,
};

use crate::support::{Row, config, event, record};

const ACCOUNTS: &str = r#"
accounts {
  PERSON: {
    jetstream: enabled
    users: [
      { user: writer, password: w-secret }
      { user: reader, password: r-secret, permissions: { publish: { deny: ["person.events.>"] } } }
    ]
  }
  OTHER: {
    jetstream: enabled
    users: [ { user: other, password: o-secret } ]
  }
}
"#;

async fn login(
    url: &str,
    user: &str,
    password: &str,
) -> Result<StreamingClient, person_streaming::StreamingError> {
    let mut cfg: StreamingConfig = config(5);
    // One attempt, short: the denial is reported by the server, not by retrying.
    cfg.publisher.ack_timeout_ms = 2_000;
    cfg.publisher.retry = crate::support::fast_retry(1);
    // Hang guard only: a connect that neither succeeds nor fails is a failure here.
    tokio::time::timeout(
        Duration::from_secs(60),
        StreamingClient::builder(url)
            .user_and_password(user, password)
            .connect(cfg),
    )
    .await
    .expect("connect neither succeeded nor failed")
}

fn letter(seq: u64) -> DeadLetter {
    let person = PersonId::new().to_string();
    DeadLetter {
        subject: format!("person.events.{person}.activated"),
        stream: "PERSON_EVENTS".into(),
        stream_sequence: seq,
        payload: bytes::Bytes::from_static(b"{\"secret\": true}"),
        headers: Vec::new(),
        reason: "permanent failure: test".into(),
        error_class: ErrorClass::Permanent,
        delivery_count: 1,
        first_failure_at: chrono::Utc::now(),
        last_failure_at: chrono::Utc::now(),
        consumer: "reliability-projection".into(),
        handler: "reliability".into(),
        metadata: None,
        event_id: None,
        person_id: Some(person),
        event_type: Some("activated".into()),
        payload_truncated: false,
        original_size: None,
        headers_truncated: false,
        attempts: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_accounts_and_credentials_are_enforced_with_clear_errors() {
    let started = Instant::now();
    let server = NatsServer::with_config(ACCOUNTS).await.unwrap();
    let url = server.url();
    let mut checks = 0u64;

    // The writer publishes and stores a dead letter in its account.
    let writer = login(&url, "writer", "w-secret").await.unwrap();
    let person = PersonId::new();
    writer.publisher().publish(&event(person, 1)).await.unwrap();
    let dlq_seq = writer.dead_letters().put(&letter(1)).await.unwrap();

    // The reader may not publish events: a typed, explanatory error, not a timeout.
    let reader = login(&url, "reader", "r-secret").await.unwrap();
    let err = reader
        .publisher()
        .publish(&event(person, 2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains("not allowed to publish"), "{text}");
    assert!(text.contains("person.events.>"), "{text}");
    checks += 1;
    // It can still read: the DLQ of its own account is visible to it.
    let own = reader
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(own.len(), 1);
    checks += 1;

    // Another account has its own JetStream: the PERSON account's DLQ is not there.
    let other = login(&url, "other", "o-secret").await.unwrap();
    let seen = other
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert!(
        seen.is_empty(),
        "another account's dead letters are visible"
    );
    let err = other.dead_letters().get(dlq_seq).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::NotFound, "{err}");
    checks += 2;
    // Nor does a raw subscription there see the PERSON account's DLQ traffic.
    let mut spy = other.client().subscribe("person.dlq.>").await.unwrap();
    other.client().flush().await.unwrap();
    writer.dead_letters().put(&letter(2)).await.unwrap();
    other
        .client()
        .publish("person.dlq.marker", "end".into())
        .await
        .unwrap();
    other.client().flush().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), spy.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), "person.dlq.marker");
    checks += 1;
    let stored = writer
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "the writer's account keeps both");

    // Wrong credentials: an authentication error at once, with a hint.
    for (user, password) in [("writer", "wrong"), ("nobody", "w-secret"), ("", "")] {
        let err = login(&url, user, password).await.unwrap_err();
        assert_eq!(
            err.kind(),
            StreamingErrorKind::Authentication,
            "{user}: {err}"
        );
        assert!(err.to_string().contains("user/password"), "{err}");
        checks += 1;
    }
    record(
        Row {
            case: "auth",
            area: "auth",
            what: "server with accounts PERSON (writer; reader denied publish on person.events.>) and OTHER".into(),
            load: "-".into(),
            faults: "denied publish, cross-account DLQ read, 3 wrong credentials".into(),
            inputs: checks,
            lost: 0,
            duplicated: 0,
            absorbed: 0,
            notes: "denied publish -> PublishErrorKind::PermissionDenied naming the subject; other account sees no DLQ letters and no DLQ traffic; wrong credentials -> Authentication".into(),
            ..Row::default()
        },
        started,
    );
}
