use person_streaming::{
    AckPolicy, ConfigErrorKind, ConsumerSettings, Storage, StreamingClient, StreamingConfig,
    StreamingErrorKind,
};

use std::time::{Duration, Instant};

use async_nats::jetstream::{consumer, stream};

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
    assert_eq!(
        consumer_after.filter_subjects.len(),
        3,
        "two location subjects and its replay subject"
    );
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

#[tokio::test]
async fn plan_changes_nothing_and_names_each_difference() {
    let server = nats_harness::NatsServer::start().await.unwrap();
    let client = StreamingClient::builder(server.url())
        .ensure_on_connect(false)
        .connect(StreamingConfig::default())
        .await
        .unwrap();
    let plan = client.plan().await.unwrap();
    assert_eq!(
        plan.created_streams,
        vec![
            "PERSON_EVENTS".to_owned(),
            "PERSON_EVENTS_DLQ".to_owned(),
            "PERSON_EVENTS_DLQ_BODIES (object store)".to_owned()
        ]
    );
    assert_eq!(plan.created_consumers.len(), 4);
    assert!(
        client
            .jetstream()
            .get_stream("PERSON_EVENTS")
            .await
            .is_err(),
        "a plan creates nothing"
    );
    let err = client.status().await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::NotFound, "{err}");

    let done = client.ensure().await.unwrap();
    assert_eq!(done.created_streams, plan.created_streams);
    assert_eq!(done.created_consumers, plan.created_consumers);
    let again = client.ensure().await.unwrap();
    assert!(again.is_unchanged(), "{again:?}");
    assert_eq!(again.unchanged_consumers.len(), 4);

    let mut changed = StreamingConfig::default();
    changed.stream.max_age_secs = 3600;
    changed.consumers[0].max_ack_pending = 10;
    let other = StreamingClient::builder(server.url())
        .ensure_on_connect(false)
        .connect(changed)
        .await
        .unwrap();
    let plan = other.plan().await.unwrap();
    assert_eq!(plan.updated_streams, vec!["PERSON_EVENTS".to_owned()]);
    assert_eq!(
        plan.updated_consumers,
        vec!["person-projection-summary".to_owned()]
    );
    assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
    assert!(plan.changes[0].contains("max_age"), "{:?}", plan.changes);
    assert!(
        plan.changes[1].contains("max_ack_pending 1000 -> 10"),
        "{:?}",
        plan.changes
    );
    // Still unchanged on the server.
    assert!(client.plan().await.unwrap().is_unchanged());
}

#[tokio::test]
async fn status_reports_streams_and_consumers() {
    let (_server, client) = crate::support::start(StreamingConfig::default()).await;
    let person = person_events::PersonId::new();
    for i in 1..=3 {
        client
            .publisher()
            .publish(&crate::support::activated(person, i))
            .await
            .unwrap();
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.len(), 2);
    let events = &status[0];
    assert_eq!(events.name, "PERSON_EVENTS");
    assert_eq!(events.messages, 3);
    assert_eq!((events.first_sequence, events.last_sequence), (1, 3));
    assert!(events.bytes > 0);
    let names: Vec<&str> = events.consumers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "person-projection-search",
            "person-projection-summary",
            "person-to-location",
            "policy-engine"
        ]
    );
    let summary = &events.consumers[1];
    assert!(summary.durable);
    assert_eq!(summary.pending, 3);
    assert_eq!(summary.ack_pending, 0);
    assert_eq!(status[1].name, "PERSON_EVENTS_DLQ");
    assert_eq!(status[1].messages, 0);
}

#[tokio::test]
async fn ensure_refuses_cumulative_acks_and_creates_nothing() {
    let server = nats_harness::NatsServer::start().await.unwrap();
    for policy in [AckPolicy::All, AckPolicy::None] {
        let mut config = StreamingConfig::default();
        config.consumers[1].ack_policy = policy;
        let err = StreamingClient::new(&server.url(), config)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StreamingErrorKind::InvalidConfig, "{err}");
        assert!(err.to_string().contains("consumers[1].ack_policy"), "{err}");
        assert!(err.to_string().contains("explicit"), "{err}");
    }
    // Nothing was created: neither stream, so no consumer either.
    let plain = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(plain);
    for name in ["PERSON_EVENTS", "PERSON_EVENTS_DLQ"] {
        assert!(js.get_stream(name).await.is_err(), "{name} was created");
    }

    // One consumer ensured on its own is checked the same way.
    let (_server, client) = crate::support::start(StreamingConfig::default()).await;
    let mut cumulative = ConsumerSettings::new("cumulative", &["person.events.>"], "acks all");
    cumulative.ack_policy = AckPolicy::All;
    let err = client.ensure_consumer(&cumulative).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("ack_policy"), "{err}");
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    assert!(
        stream.consumer_info("cumulative").await.is_err(),
        "the consumer must not exist"
    );
    // An existing consumer cannot be switched to it either.
    let mut switched = StreamingConfig::default().consumers[0].clone();
    switched.ack_policy = AckPolicy::None;
    assert!(client.ensure_consumer(&switched).await.is_err());
    let info = stream.consumer_info(&switched.durable_name).await.unwrap();
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
}

/// The stream's configuration as the server reports it.
async fn stream_config(client: &StreamingClient, name: &str) -> stream::Config {
    let mut stream = client.jetstream().get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

/// A consumer's configuration on the event stream, as the server reports it.
async fn consumer_config(client: &StreamingClient, name: &str) -> consumer::Config {
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    stream.consumer_info(name).await.unwrap().config.clone()
}

#[tokio::test]
async fn ensure_keeps_what_an_operator_set_by_hand() {
    let (server, client) = start(StreamingConfig::default()).await;
    let js = client.jetstream();

    // An operator imports a legacy stream and tunes the event stream by hand.
    js.create_stream(stream::Config {
        name: "LEGACY_PERSON".into(),
        subjects: vec!["legacy.person.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut hand = stream_config(&client, "PERSON_EVENTS").await;
    hand.discard = stream::DiscardPolicy::New;
    hand.max_message_size = 64 * 1024;
    hand.max_messages_per_subject = 1000;
    hand.max_consumers = 50;
    hand.allow_rollup = true;
    hand.metadata.insert("owner".into(), "person-ops".into());
    hand.sources = Some(vec![stream::Source {
        name: "LEGACY_PERSON".into(),
        ..Default::default()
    }]);
    assert!(hand.allow_direct, "streams are created with direct get on");
    hand.allow_direct = false;
    hand.compression = Some(stream::Compression::S2);
    js.update_stream(&hand).await.unwrap();
    let before = stream_config(&client, "PERSON_EVENTS").await;
    assert_eq!(
        before.discard,
        stream::DiscardPolicy::New,
        "the hand edit took"
    );
    assert_eq!(before.sources.as_ref().map(Vec::len), Some(1));

    // A deploy raises max_age by a day: the plan names only that, and the update
    // changes only that.
    let day = 24 * 60 * 60;
    let mut longer = StreamingConfig::default();
    longer.stream.max_age_secs += day;
    let deploy = StreamingClient::builder(server.url())
        .ensure_on_connect(false)
        .connect(longer)
        .await
        .unwrap();
    let plan = deploy.plan().await.unwrap();
    assert_eq!(
        plan.changes,
        vec!["stream PERSON_EVENTS: max_age 31536000s -> 31622400s".to_owned()]
    );
    assert_eq!(plan.updated_streams, vec!["PERSON_EVENTS".to_owned()]);
    assert_eq!(plan.unchanged_consumers.len(), 4, "{plan:?}");
    let done = deploy.ensure().await.unwrap();
    assert_eq!(done, plan, "ensure does what plan said");

    let after = stream_config(&client, "PERSON_EVENTS").await;
    assert_eq!(after.max_age, Duration::from_secs(366 * day));
    assert_eq!(after.discard, stream::DiscardPolicy::New);
    assert_eq!(after.max_message_size, 64 * 1024);
    assert_eq!(after.max_messages_per_subject, 1000);
    assert_eq!(after.max_consumers, 50);
    assert!(after.allow_rollup);
    assert_eq!(
        after.metadata.get("owner").map(String::as_str),
        Some("person-ops")
    );
    assert_eq!(after.sources, before.sources);
    assert!(!after.allow_direct);
    assert_eq!(after.compression, Some(stream::Compression::S2));
    let expected = stream::Config {
        max_age: after.max_age,
        ..before.clone()
    };
    assert_eq!(after, expected, "nothing but max_age changed");
    assert!(deploy.plan().await.unwrap().is_unchanged());

    // The import still runs: a legacy event reaches the event stream.
    js.publish("legacy.person.1", "legacy".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::support::stream_messages(&client, "PERSON_EVENTS").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the legacy import stopped after ensure"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The same for a consumer: hand tuning survives a managed change.
    let name = "person-projection-summary";
    let mut tuned = consumer_config(&client, name).await;
    tuned.max_waiting = 64;
    tuned.max_batch = 10;
    tuned.max_expires = Duration::from_secs(5);
    tuned.inactive_threshold = Duration::from_secs(3600);
    tuned.metadata.insert("owner".into(), "person-ops".into());
    // `max_waiting` is fixed at creation, so the operator recreates the consumer.
    let events = js.get_stream("PERSON_EVENTS").await.unwrap();
    events.delete_consumer(name).await.unwrap();
    events.create_consumer(tuned).await.unwrap();
    let consumer_before = consumer_config(&client, name).await;
    assert_eq!(consumer_before.max_batch, 10, "the hand edit took");

    let mut fewer = StreamingConfig::default();
    fewer.stream.max_age_secs += day;
    fewer.consumers[0].max_ack_pending = 10;
    let deploy = StreamingClient::builder(server.url())
        .ensure_on_connect(false)
        .connect(fewer)
        .await
        .unwrap();
    let plan = deploy.plan().await.unwrap();
    assert_eq!(
        plan.changes,
        vec![format!("consumer {name}: max_ack_pending 1000 -> 10")]
    );
    assert_eq!(plan.updated_consumers, vec![name.to_owned()]);
    assert_eq!(deploy.ensure().await.unwrap(), plan);

    let consumer_after = consumer_config(&client, name).await;
    assert_eq!(consumer_after.max_ack_pending, 10);
    assert_eq!(consumer_after.max_waiting, 64);
    assert_eq!(consumer_after.max_batch, 10);
    assert_eq!(consumer_after.max_expires, Duration::from_secs(5));
    assert_eq!(consumer_after.inactive_threshold, Duration::from_secs(3600));
    assert_eq!(
        consumer_after.metadata.get("owner").map(String::as_str),
        Some("person-ops")
    );
    let expected = consumer::Config {
        max_ack_pending: 10,
        ..consumer_before
    };
    assert_eq!(
        consumer_after, expected,
        "nothing but max_ack_pending changed"
    );
    assert_eq!(stream_config(&client, "PERSON_EVENTS").await, after);

    // `ensure_consumer` on its own keeps the hand tuning too.
    let mut settings = StreamingConfig::default().consumers[0].clone();
    settings.ack_wait_secs = 45;
    client.ensure_consumer(&settings).await.unwrap();
    let alone = consumer_config(&client, name).await;
    assert_eq!(alone.ack_wait, Duration::from_secs(45));
    assert_eq!(alone.max_ack_pending, 1000);
    assert_eq!((alone.max_waiting, alone.max_batch), (64, 10));
}
