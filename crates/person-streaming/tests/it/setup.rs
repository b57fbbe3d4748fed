use person_streaming::{
    ConfigErrorKind, Storage, StreamingClient, StreamingConfig, StreamingErrorKind,
};

use crate::support::start;

#[tokio::test]
async fn ensure_is_idempotent_and_updates_what_it_can() {
    let (server, client) = start(StreamingConfig::default()).await;
    let js = client.jetstream();
    let before = js
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    let consumer_before = js
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .consumer_info("person-to-location")
        .await
        .unwrap()
        .config
        .clone();

    let report = client.ensure().await.unwrap();
    assert!(
        report.created_streams.is_empty() && report.updated_streams.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.consumers.len(), 4);
    let after = js
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(before, after);
    let consumer_after = js
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .consumer_info("person-to-location")
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(consumer_before, consumer_after);
    assert_eq!(consumer_after.filter_subjects.len(), 2);
    assert_eq!(
        consumer_after.max_deliver, -1,
        "the runtime enforces max_deliver, never the server"
    );
    assert!(
        consumer_after.backoff.is_empty(),
        "server backoff is opt-in"
    );

    // A new client with a changed max_age updates the stream in place.
    let mut changed = StreamingConfig::default();
    changed.stream.max_age_secs = 3600;
    let again = StreamingClient::new(&server.url(), changed).await.unwrap();
    let info = again
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.max_age, std::time::Duration::from_secs(3600));

    // Storage cannot change in place: a typed error naming the field.
    let mut memory = StreamingConfig::default();
    memory.stream.storage = Storage::Memory;
    let err = StreamingClient::new(&server.url(), memory)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::ImmutableField, "{err}");
    assert!(err.to_string().contains("stream.storage"), "{err}");
}

#[tokio::test]
async fn invalid_config_is_rejected_before_connecting() {
    let mut config = StreamingConfig::default();
    config.consumers[0].filter_subjects = vec!["orders.>".into()];
    // Nothing listens on this port: validation must fail first.
    let err = StreamingClient::new("nats://127.0.0.1:1", config)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::InvalidConfig, "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(
        source.contains("consumers[0].filter_subjects[0]"),
        "{source}"
    );
    let _ = ConfigErrorKind::Invalid;
}

#[tokio::test]
async fn wrong_credentials_fail_fast_and_right_ones_work() {
    let server = nats_harness::NatsServer::with_config(
        "authorization { users: [ { user: svc, password: s3cret } ] }",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = StreamingClient::builder(server.url())
        .user_and_password("svc", "wrong")
        .connect(StreamingConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("user/password"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    let client = StreamingClient::builder(server.url())
        .user_and_password("svc", "s3cret")
        .connection_name("person-test")
        .connect(StreamingConfig::default())
        .await
        .unwrap();
    client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
}
