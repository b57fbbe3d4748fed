//! Error kinds as they come out of the public API against a real server: each kind from
//! what happened (typed async-nats kinds, JetStream API codes, permission violations the
//! server reported on the connection), never from the text of a message.

use std::time::{Duration, Instant};

use nats_harness::{NatsServer, ServerOptions};
use person_events::PersonId;
use person_streaming::{
    DeadLetterFilter, ExpectedVersion, PublishErrorKind, StreamingClient, StreamingConfig,
    StreamingError, StreamingErrorKind,
};

use crate::support::{batch_of, created, stream_messages};

/// A config whose requests give up after `ack_timeout_ms`.
fn config(ack_timeout_ms: u64) -> StreamingConfig {
    let mut config = StreamingConfig::default();
    config.publisher.ack_timeout_ms = ack_timeout_ms;
    config
}

async fn connect(
    url: &str,
    user: Option<(&str, &str)>,
    config: StreamingConfig,
) -> StreamingClient {
    let mut builder = StreamingClient::builder(url).ensure_on_connect(false);
    if let Some((user, password)) = user {
        builder = builder.user_and_password(user, password);
    }
    builder
        .connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e}"))
}

fn assert_kind(err: &StreamingError, kind: StreamingErrorKind, transient: bool) {
    assert_eq!(err.kind(), kind, "{err}");
    assert_eq!(err.is_transient(), transient, "{err}");
}

const USERS: &str = r#"
accounts {
  PERSON: {
    jetstream: enabled
    users: [
      { user: admin, password: a-secret }
      { user: noinfo, password: n-secret, permissions: { publish: { deny: ["$JS.API.STREAM.INFO.>"] } } }
      { user: noupdate, password: u-secret, permissions: { publish: { deny: ["$JS.API.STREAM.UPDATE.>"] } } }
      { user: nopublish, password: p-secret, permissions: { publish: { deny: ["person.events.>"] } } }
      { user: noread, password: r-secret, permissions: { publish: { deny: ["$JS.API.DIRECT.GET.PERSON_EVENTS", "$JS.API.DIRECT.GET.PERSON_EVENTS.>", "$JS.API.STREAM.MSG.GET.PERSON_EVENTS"] } } }
    ]
  }
}
"#;

#[tokio::test]
async fn a_missing_stream_is_not_found_everywhere_and_not_transient() {
    let server = NatsServer::start().await.unwrap();
    let client = connect(&server.url(), None, config(2_000)).await;

    let err = client.status().await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::NotFound, false);
    let err = client
        .reader()
        .load_aggregate(PersonId::new())
        .await
        .unwrap_err();
    assert_kind(&err, StreamingErrorKind::NotFound, false);
    let err = client
        .reader()
        .last_version(PersonId::new())
        .await
        .unwrap_err();
    assert_kind(&err, StreamingErrorKind::NotFound, false);
    let err = client
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap_err();
    assert_kind(&err, StreamingErrorKind::NotFound, false);
    let err = client.dead_letters().get(1).await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::NotFound, false);
    let err = client.dead_letters().delete(1).await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::NotFound, false);

    // Once the streams exist, a missing message is NotFound too, and a person without
    // events is no error.
    client.ensure().await.unwrap();
    let err = client.dead_letters().get(1).await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::NotFound, false);
    assert_eq!(
        client.reader().last_version(PersonId::new()).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn a_user_denied_stream_info_gets_permission_denied_not_a_timeout() {
    let server = NatsServer::with_config(USERS).await.unwrap();
    connect(&server.url(), Some(("admin", "a-secret")), config(2_000))
        .await
        .ensure()
        .await
        .unwrap();
    let client = connect(&server.url(), Some(("noinfo", "n-secret")), config(1_000)).await;

    let err = client.status().await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::PermissionDenied, false);
    assert!(
        err.to_string()
            .contains("$JS.API.STREAM.INFO.PERSON_EVENTS"),
        "names the denied subject: {err}"
    );
    let err = client.plan().await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::PermissionDenied, false);
    // What the user may do still works.
    assert_eq!(
        client.reader().last_version(PersonId::new()).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn a_user_denied_publish_gets_permission_denied_with_its_cause_and_stores_nothing() {
    let server = NatsServer::with_config(USERS).await.unwrap();
    let admin = connect(&server.url(), Some(("admin", "a-secret")), config(2_000)).await;
    admin.ensure().await.unwrap();
    let client = connect(
        &server.url(),
        Some(("nopublish", "p-secret")),
        config(1_000),
    )
    .await;
    let publisher = client.publisher();
    let person = PersonId::new();

    // One event: the server's permissions violation, not a timeout to retry.
    let err = publisher.publish(&created(person, 1)).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(
        err.to_string().contains(&format!("person.events.{person}")),
        "names the denied subject: {err}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "keeps the client's error as its source: {err}"
    );

    // An append of one event and of a batch: the same, and nothing stored.
    for n in [1, 3] {
        let err = publisher
            .append(person, ExpectedVersion::NoEvents, &batch_of(person, n))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), PublishErrorKind::PermissionDenied, "{n}: {err}");
        assert!(!err.is_transient(), "{n}: {err}");
    }
    assert_eq!(stream_messages(&admin, "PERSON_EVENTS").await, 0);
    // What the user may do still works.
    assert_eq!(client.reader().last_version(person).await.unwrap(), 0);
}

/// A refused append is only called a conflict once the person's events were read:
/// when they cannot be, it is retried and ends as a failure to verify, never a
/// conflict (nor a success).
#[tokio::test]
async fn a_refused_append_that_cannot_be_verified_is_not_called_a_conflict() {
    let server = NatsServer::with_config(USERS).await.unwrap();
    let admin = connect(&server.url(), Some(("admin", "a-secret")), config(2_000)).await;
    admin.ensure().await.unwrap();
    let person = PersonId::new();
    admin
        .publisher()
        .append(person, ExpectedVersion::NoEvents, &[created(person, 1)])
        .await
        .unwrap();
    let mut cfg = config(500);
    cfg.publisher.retry = person_streaming::RetryPolicy::builder()
        .max_attempts(2)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(10))
        .build()
        .unwrap();
    let client = connect(&server.url(), Some(("noread", "r-secret")), cfg).await;
    let err = client
        .publisher()
        .append(person, ExpectedVersion::NoEvents, &batch_of(person, 2))
        .await
        .unwrap_err();
    assert_ne!(err.kind(), PublishErrorKind::Conflict, "{err}");
    assert!(err.is_transient(), "{err}");
    assert_eq!(stream_messages(&admin, "PERSON_EVENTS").await, 1);
}

#[tokio::test]
async fn a_denied_stream_update_is_permission_denied_not_immutable() {
    let server = NatsServer::with_config(USERS).await.unwrap();
    connect(&server.url(), Some(("admin", "a-secret")), config(2_000))
        .await
        .ensure()
        .await
        .unwrap();
    let mut changed = config(1_000);
    changed.stream.max_age_secs += 86_400;
    let client = connect(&server.url(), Some(("noupdate", "u-secret")), changed).await;

    let plan = client.plan().await.unwrap();
    assert_eq!(plan.updated_streams, vec!["PERSON_EVENTS".to_owned()]);
    let err = client.ensure().await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::PermissionDenied, false);
    assert!(
        err.to_string()
            .contains("$JS.API.STREAM.UPDATE.PERSON_EVENTS"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stopped_server_times_out_transiently() {
    let mut server = NatsServer::start().await.unwrap();
    let client = connect(&server.url(), None, config(500)).await;
    client.ensure().await.unwrap();
    server.kill();

    let started = Instant::now();
    let err = client.status().await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::TimedOut, true);
    let err = client
        .reader()
        .last_version(PersonId::new())
        .await
        .unwrap_err();
    assert_kind(&err, StreamingErrorKind::TimedOut, true);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn no_responders_is_unavailable_and_transient() {
    let server = NatsServer::with_options(ServerOptions::new().jetstream(false))
        .await
        .unwrap();
    let client = connect(&server.url(), None, config(2_000)).await;

    let started = Instant::now();
    let err = client.status().await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::Unavailable, true);
    let err = client.ensure().await.unwrap_err();
    assert_kind(&err, StreamingErrorKind::Unavailable, true);
    let err = client
        .reader()
        .last_version(PersonId::new())
        .await
        .unwrap_err();
    assert_kind(&err, StreamingErrorKind::Unavailable, true);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no responders is answered at once, not by a timeout"
    );
}
