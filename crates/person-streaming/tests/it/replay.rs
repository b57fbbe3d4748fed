//! Replays of dead letters against a real server: addressed to one consumer, outside
//! every person's history, and idempotent (concurrent, retried after a failed delete,
//! retried after the duplicate window).

use std::time::Duration;

use futures::StreamExt;
use nats_harness::NatsServer;
use person_events::PersonId;
use person_retry::{DeadLetter, ErrorClass};
use person_streaming::{
    ExpectedVersion, StoredDeadLetter, StreamingClient, StreamingConfig, StreamingErrorKind,
};

use crate::support::{activated, created, raw_message, start};

const SEARCH: &str = "person-projection-search";

/// A dead letter of `consumer` for the event at `seq`, copied from the stream as the
/// runtime would.
async fn letter_of(client: &StreamingClient, seq: u64, consumer: &str) -> DeadLetter {
    let name = &client.config().stream.name;
    let stream = client.jetstream().get_stream(name).await.unwrap();
    let msg = stream.get_raw_message(seq).await.unwrap();
    let headers = msg
        .headers
        .iter()
        .flat_map(|(n, vs)| vs.iter().map(move |v| (n.to_string(), v.to_string())))
        .collect();
    let parsed = person_events::subject::parse_event_subject(msg.subject.as_str()).unwrap();
    DeadLetter {
        subject: msg.subject.to_string(),
        stream: name.clone(),
        stream_sequence: seq,
        payload: msg.payload.clone(),
        headers,
        reason: "search index rejected it".into(),
        error_class: ErrorClass::Permanent,
        delivery_count: 1,
        first_failure_at: chrono::Utc::now(),
        last_failure_at: chrono::Utc::now(),
        consumer: consumer.into(),
        handler: "search".into(),
        metadata: None,
        event_id: None,
        person_id: Some(parsed.person_id.to_string()),
        event_type: Some(parsed.event_type),
        payload_truncated: false,
        original_size: None,
        headers_truncated: false,
        attempts: Vec::new(),
    }
}

/// The DLQ's record of `letter`, after storing it.
async fn stored(client: &StreamingClient, letter: &DeadLetter) -> StoredDeadLetter {
    let dlq = client.dead_letters();
    let seq = dlq.put(letter).await.unwrap();
    dlq.get(seq).await.unwrap()
}

/// Messages stored on exactly `subject` (or matching it, for a wildcard).
async fn on_subject(client: &StreamingClient, subject: &str) -> u64 {
    let name = &client.config().stream.name;
    let stream = client.jetstream().get_stream(name).await.unwrap();
    let mut subjects = stream.info_with_subjects(subject).await.unwrap();
    let mut total = 0;
    while let Some(entry) = subjects.next().await {
        total += entry.unwrap().1 as u64;
    }
    total
}

async fn pending(client: &StreamingClient, consumer: &str) -> u64 {
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    stream.consumer_info(consumer).await.unwrap().num_pending
}

#[tokio::test]
async fn a_replay_reaches_its_consumer_alone_and_never_the_history() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    let receipt = client
        .publisher()
        .append(
            person,
            ExpectedVersion::NoEvents,
            &[
                created(person, 1),
                activated(person, 2),
                activated(person, 3),
            ],
        )
        .await
        .unwrap();
    let version = receipt.version;
    let history = client.reader().load_aggregate(person).await.unwrap();
    let consumers: Vec<String> = client
        .config()
        .consumers
        .iter()
        .map(|c| c.durable_name.clone())
        .collect();
    let mut before = Vec::new();
    for c in &consumers {
        before.push(pending(&client, c).await);
    }

    let letter = stored(&client, &letter_of(&client, 2, SEARCH).await).await;
    let replay = client
        .dead_letters()
        .replay(letter.dlq_sequence)
        .await
        .unwrap();
    assert!(!replay.already_replayed);
    let msg = raw_message(&client, "PERSON_EVENTS", replay.stream_sequence).await;
    assert_eq!(
        msg.subject.as_str(),
        format!("person.replay.{SEARCH}.{person}.activated")
    );
    // On the wire, a consumer of every event has no filter (see `wire_filters`): it
    // is delivered the replay too, and its runtime skips it. A
    // consumer with narrower filters is not delivered it at all.
    let mut narrow = 0;
    for (c, was) in consumers.iter().zip(&before) {
        let now = pending(&client, c).await;
        let settings = client.config().consumer(c).unwrap();
        let wide = client.config().wire_filters(settings).is_empty();
        if c == SEARCH {
            assert!(wide, "{c} reads every event");
            assert_eq!(now, was + 1, "the replay reaches {c}");
        } else if wide {
            assert_eq!(now, was + 1, "{c} is delivered the replay, to skip it");
        } else {
            narrow += 1;
            assert_eq!(now, *was, "{c} does not see the replay");
        }
    }
    assert_eq!(narrow, 1, "person-to-location selects events by type");

    // The history is what it was: same events, same version; an append that expects
    // the version read before the replay still succeeds.
    assert_eq!(
        client.reader().load_aggregate(person).await.unwrap(),
        history
    );
    assert_eq!(client.reader().last_version(person).await.unwrap(), version);
    client
        .publisher()
        .append(
            person,
            ExpectedVersion::Exactly(version),
            &[activated(person, 4)],
        )
        .await
        .expect("a replay is not a new version of the person");
    assert_eq!(
        client.reader().load_aggregate(person).await.unwrap().len(),
        4
    );
}

const DELETE_DENIED: &str = r#"
accounts {
  PERSON: {
    jetstream: enabled
    users: [
      { user: operator, password: o-secret }
      { user: nodelete, password: n-secret, permissions: { publish: { deny: ["$JS.API.STREAM.MSG.DELETE.>"] } } }
    ]
  }
}
"#;

/// A deployment beside the default one whose duplicate window is 1 s.
fn short_window() -> StreamingConfig {
    let mut config = StreamingConfig::default();
    config.stream.name = "SHORT_EVENTS".into();
    config.dlq.name = "SHORT_DLQ".into();
    config.stream.duplicate_window_secs = 1;
    config.with_subject_prefix("short").unwrap()
}

async fn login(url: &str, user: &str, password: &str, config: StreamingConfig) -> StreamingClient {
    StreamingClient::builder(url)
        .user_and_password(user, password)
        .connect(config)
        .await
        .unwrap()
}

async fn append_three(client: &StreamingClient, person: PersonId) {
    client
        .publisher()
        .append(
            person,
            ExpectedVersion::NoEvents,
            &[
                created(person, 1),
                activated(person, 2),
                activated(person, 3),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn replays_store_one_copy_when_retried_after_a_failed_delete_or_run_concurrently() {
    let server = NatsServer::with_config(DELETE_DENIED).await.unwrap();
    let url = server.url();
    let operator = login(&url, "operator", "o-secret", StreamingConfig::default()).await;
    let nodelete = login(&url, "nodelete", "n-secret", StreamingConfig::default()).await;
    let person = PersonId::new();
    append_three(&operator, person).await;
    let replays = format!("person.replay.{SEARCH}.{person}.>");

    // Stored, but the dead letter cannot be deleted: the replay fails, the letter stays.
    let first = stored(&operator, &letter_of(&operator, 1, SEARCH).await).await;
    let err = nodelete
        .dead_letters()
        .replay(first.dlq_sequence)
        .await
        .unwrap_err();
    assert_ne!(err.kind(), StreamingErrorKind::NotFound, "{err}");
    assert_eq!(on_subject(&operator, &replays).await, 1);
    operator
        .dead_letters()
        .get(first.dlq_sequence)
        .await
        .unwrap();
    // Retried inside the duplicate window (120 s): nothing new, the letter goes.
    let retried = operator
        .dead_letters()
        .replay(first.dlq_sequence)
        .await
        .unwrap();
    assert!(retried.already_replayed);
    assert_eq!(on_subject(&operator, &replays).await, 1);
    let gone = operator.dead_letters().get(first.dlq_sequence).await;
    assert_eq!(gone.unwrap_err().kind(), StreamingErrorKind::NotFound);

    // Two replays of one dead letter at once: one copy; the loser finds the letter
    // gone at worst.
    let second = stored(&operator, &letter_of(&operator, 2, SEARCH).await).await;
    let (one, two) = (operator.dead_letters(), operator.dead_letters());
    let (a, b) = tokio::join!(
        one.replay(second.dlq_sequence),
        two.replay(second.dlq_sequence)
    );
    let outcomes = [a, b];
    for o in &outcomes {
        if let Err(e) = o {
            assert_eq!(e.kind(), StreamingErrorKind::NotFound, "{e}");
        }
    }
    assert!(outcomes.iter().any(Result::is_ok));
    assert_eq!(on_subject(&operator, &replays).await, 2);
    assert!(
        operator
            .dead_letters()
            .list(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    // None of it is in the history.
    assert_eq!(
        operator
            .reader()
            .load_aggregate(person)
            .await
            .unwrap()
            .len(),
        3
    );

    // Retried after the duplicate window (1 s here) has passed: the last replay on the
    // subject is recognised.
    let operator = login(&url, "operator", "o-secret", short_window()).await;
    let nodelete = login(&url, "nodelete", "n-secret", short_window()).await;
    append_three(&operator, person).await;
    let replays = format!("short.person.replay.{SEARCH}.{person}.>");
    let late = stored(&operator, &letter_of(&operator, 1, SEARCH).await).await;
    nodelete
        .dead_letters()
        .replay(late.dlq_sequence)
        .await
        .unwrap_err();
    assert_eq!(on_subject(&operator, &replays).await, 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let retried = operator
        .dead_letters()
        .replay(late.dlq_sequence)
        .await
        .unwrap();
    assert!(retried.already_replayed, "recognised after the window");
    assert_eq!(on_subject(&operator, &replays).await, 1);
}

#[tokio::test]
async fn a_consumer_from_before_replay_subjects_is_refused_until_setup_adds_them() {
    let server = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    // What an earlier version created: no replay subjects anywhere.
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "PERSON_EVENTS".into(),
            subjects: vec!["person.events.>".into()],
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await
        .unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(SEARCH.into()),
            filter_subject: "person.events.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let client = StreamingClient::builder(server.url())
        .ensure_on_connect(false)
        .connect(StreamingConfig::default())
        .await
        .unwrap();
    let dlq_config = StreamingConfig::default();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: dlq_config.dlq.name.clone(),
        subjects: dlq_config.dlq.subjects.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let person = PersonId::new();
    client
        .publisher()
        .publish(&created(person, 1))
        .await
        .unwrap();
    let letter = stored(&client, &letter_of(&client, 1, SEARCH).await).await;

    let err = client
        .dead_letters()
        .replay(letter.dlq_sequence)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("person-stream setup"), "{err}");
    assert_eq!(on_subject(&client, "person.replay.>").await, 0);
    client
        .dead_letters()
        .get(letter.dlq_sequence)
        .await
        .unwrap();

    client.ensure().await.unwrap();
    let replay = client
        .dead_letters()
        .replay(letter.dlq_sequence)
        .await
        .unwrap();
    assert!(!replay.already_replayed);
    // What the consumer is delivered (its `num_pending` is not the check: after its
    // filter was removed by the update, the server's count of it misses the replay).
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(SEARCH).await.unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(3)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut subjects = Vec::new();
    while let Some(m) = batch.next().await {
        subjects.push(m.unwrap().subject.to_string());
    }
    assert_eq!(
        subjects,
        [
            format!("person.events.{person}.created"),
            format!("person.replay.{SEARCH}.{person}.created")
        ],
        "the event and its replay"
    );
}

#[tokio::test]
async fn a_dead_letter_that_is_not_about_an_event_is_not_replayed() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let mut letter = letter_of_operation();
    letter.consumer = "nightly-export".into();
    let dlq = client.dead_letters();
    let seq = dlq.put(&letter).await.unwrap();
    let err = dlq.replay(seq).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::InvalidInput, "{err}");
    dlq.get(seq).await.expect("left in place");
}

fn letter_of_operation() -> DeadLetter {
    DeadLetter {
        subject: "operation:nightly-export".into(),
        stream: String::new(),
        stream_sequence: 0,
        payload: bytes::Bytes::new(),
        headers: Vec::new(),
        reason: "export failed".into(),
        error_class: ErrorClass::Transient,
        delivery_count: 3,
        first_failure_at: chrono::Utc::now(),
        last_failure_at: chrono::Utc::now(),
        consumer: "operation".into(),
        handler: "export".into(),
        metadata: None,
        event_id: None,
        person_id: None,
        event_type: None,
        payload_truncated: false,
        original_size: None,
        headers_truncated: false,
        attempts: Vec::new(),
    }
}

/// A replay carries the original's headers but none of its write controls: its own
/// dedup id and replay marks (whatever the case of the stale ones in the letter), and
/// no expectation or batch header of the original write.
#[tokio::test]
async fn a_replay_drops_the_write_controls_and_stale_replay_marks_of_the_original() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    client
        .publisher()
        .publish(&created(person, 1))
        .await
        .unwrap();
    let mut letter = letter_of(&client, 1, SEARCH).await;
    letter.headers.extend(
        [
            ("nats-msg-id", "stale-id"),
            ("person-replay-of", "999"),
            ("PERSON-REPLAYED-AT", "2020-01-01T00:00:00Z"),
            // A stream that does not exist: copied, the server would refuse the replay.
            ("Nats-Expected-Stream", "NO_SUCH_STREAM"),
            ("nats-expected-last-subject-sequence", "12345"),
            ("Nats-Batch-Id", "an-old-batch"),
            ("Nats-Batch-Sequence", "2"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned())),
    );
    let letter = stored(&client, &letter).await;
    let replay = client
        .dead_letters()
        .replay(letter.dlq_sequence)
        .await
        .unwrap();
    let msg = raw_message(&client, "PERSON_EVENTS", replay.stream_sequence).await;
    let values = |name: &str| -> Vec<String> {
        msg.headers
            .iter()
            .filter(|(n, _)| n.to_string().eq_ignore_ascii_case(name))
            .flat_map(|(_, vs)| vs.iter().map(|v| v.to_string()))
            .collect()
    };
    let id = values("Nats-Msg-Id");
    assert_eq!(id.len(), 1, "{id:?}");
    assert!(id[0].starts_with("replay:"), "{id:?}");
    assert_eq!(
        values("Person-Replay-Of"),
        vec![letter.dlq_sequence.to_string()]
    );
    let at = values("Person-Replayed-At");
    assert_eq!(at.len(), 1, "{at:?}");
    assert_ne!(at[0], "2020-01-01T00:00:00Z");
    for (name, _) in msg.headers.iter() {
        let lower = name.to_string().to_ascii_lowercase();
        assert!(
            !lower.starts_with("nats-expected") && !lower.starts_with("nats-batch"),
            "{name} copied"
        );
    }
    // The original's own headers are carried.
    assert_eq!(values("ce-type").len(), 1);
}

/// A group's partition durable does not read replays: its letters are replayed to its
/// replay consumer (`<partition>-replays`). A consumer that does not exist is refused.
#[tokio::test]
async fn a_partition_replays_through_its_replay_consumer_and_a_missing_consumer_is_refused() {
    let config = StreamingConfig::default()
        .with_partitions(SEARCH, 2)
        .unwrap();
    let (_server, client) = start(config).await;
    let person = PersonId::new();
    let receipt = client
        .publisher()
        .publish(&created(person, 1))
        .await
        .unwrap();
    let partition = format!("{SEARCH}-p0");
    let mut letter = letter_of(&client, receipt.stream_sequence, SEARCH).await;
    letter.consumer = partition.clone();
    let letter = stored(&client, &letter).await;
    let replay = client
        .dead_letters()
        .replay(letter.dlq_sequence)
        .await
        .unwrap();
    assert!(!replay.already_replayed);
    assert_eq!(
        on_subject(&client, &format!("person.replay.{partition}.>")).await,
        1
    );

    let mut orphan = letter_of(&client, receipt.stream_sequence, SEARCH).await;
    orphan.consumer = "no-such-consumer".into();
    let orphan = stored(&client, &orphan).await;
    let err = client
        .dead_letters()
        .replay(orphan.dlq_sequence)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("no consumer `no-such-consumer`"),
        "{err}"
    );
    client
        .dead_letters()
        .get(orphan.dlq_sequence)
        .await
        .expect("left in place");
}

/// A user who may not read the events stream's messages.
const READ_DENIED: &str = r#"
accounts {
  PERSON: {
    jetstream: enabled
    users: [
      { user: operator, password: o-secret }
      { user: noread, password: r-secret, permissions: { publish: { deny: ["$JS.API.DIRECT.GET.PERSON_EVENTS", "$JS.API.DIRECT.GET.PERSON_EVENTS.>", "$JS.API.STREAM.MSG.GET.PERSON_EVENTS"] } } }
    ]
  }
}
"#;

/// Whether a letter was replayed already is read from the last replay on its subject:
/// another letter's replay there is not this one's, and a read that fails is an
/// error, never taken for "not replayed yet" (which could store it twice).
#[tokio::test]
async fn a_replay_tells_its_own_earlier_replay_from_another_letters_and_needs_to_read_it() {
    let server = NatsServer::with_config(READ_DENIED).await.unwrap();
    let url = server.url();
    let operator = login(&url, "operator", "o-secret", StreamingConfig::default()).await;
    let person = PersonId::new();
    append_three(&operator, person).await;
    let replays = format!("person.replay.{SEARCH}.{person}.activated");

    // Events 2 and 3 are both `activated`: their replays share one subject.
    for (seq, n) in [(2, 1), (3, 2)] {
        let letter = stored(&operator, &letter_of(&operator, seq, SEARCH).await).await;
        let r = operator
            .dead_letters()
            .replay(letter.dlq_sequence)
            .await
            .unwrap();
        assert!(!r.already_replayed, "event {seq}");
        assert_eq!(on_subject(&operator, &replays).await, n, "event {seq}");
    }

    let noread = login(&url, "noread", "r-secret", StreamingConfig::default()).await;
    let letter = stored(&operator, &letter_of(&operator, 1, SEARCH).await).await;
    assert!(
        noread
            .dead_letters()
            .replay(letter.dlq_sequence)
            .await
            .is_err()
    );
    let all = format!("person.replay.{SEARCH}.{person}.>");
    assert_eq!(on_subject(&operator, &all).await, 2, "nothing replayed");
    operator
        .dead_letters()
        .get(letter.dlq_sequence)
        .await
        .expect("left in place");
}
