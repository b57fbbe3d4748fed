//! Partitions against a real server: a stream partitioned in place by `ensure`, what
//! the server stores before and after, what each kind of consumer reads, and the
//! refusal to re-partition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{consumer::PullConsumer, stream};
use futures::StreamExt;
use person_events::subject::parse_event_subject;
use person_events::{PersonEventV2, PersonId, StreamingEventEnvelope, codec};
use person_metadata::EventMetadata;
use person_streaming::{
    ExpectedVersion, PublishErrorKind, StreamingClient, StreamingConfig, StreamingErrorKind,
};

use crate::support::{activated, created, start};

const SUMMARY: &str = "person-projection-summary";
const LOCATION: &str = "person-to-location";
const EVENTS: &str = "PERSON_EVENTS";

fn located(person_id: PersonId, sequence: u64) -> StreamingEventEnvelope {
    StreamingEventEnvelope::new(
        person_id,
        sequence,
        PersonEventV2::LocationAssigned {
            person_id,
            location_id: uuid::Uuid::now_v7(),
            location_type: "home".into(),
            metadata: EventMetadata::new(),
        },
    )
}

/// Publishes `env` as the week-1 system did: a body without `schema_version`, no
/// headers, on `person.events.<id>.person.<type>`.
async fn publish_week1(client: &StreamingClient, env: &StreamingEventEnvelope) {
    let current = String::from_utf8(codec::encode(env).unwrap()).unwrap();
    let body = current
        .strip_prefix(r#"{"schema_version":2,"#)
        .map(|rest| format!("{{{rest}"))
        .expect("the envelope starts with its schema version");
    let subject = format!(
        "person.events.{}.person.{}",
        env.aggregate_id,
        env.event.event_type()
    );
    client
        .jetstream()
        .publish(subject, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Every message of the stream: sequence and subject.
async fn stored(client: &StreamingClient) -> Vec<(u64, String)> {
    let mut stream = client.jetstream().get_stream(EVENTS).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let msg = stream.get_raw_message(seq).await.unwrap();
        out.push((seq, msg.subject.to_string()));
    }
    out
}

async fn stream_config(client: &StreamingClient) -> stream::Config {
    let mut stream = client.jetstream().get_stream(EVENTS).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

/// The names and configurations of every consumer of the event stream.
async fn consumer_configs(
    client: &StreamingClient,
) -> BTreeMap<String, async_nats::jetstream::consumer::Config> {
    let stream = client.jetstream().get_stream(EVENTS).await.unwrap();
    let mut out = BTreeMap::new();
    let mut infos = stream.consumers();
    while let Some(info) = infos.next().await {
        let info = info.unwrap();
        out.insert(info.name, info.config);
    }
    out
}

/// Every message `durable` delivers until it has none pending, each acknowledged:
/// their stream sequences.
async fn drain(client: &StreamingClient, durable: &str) -> Vec<u64> {
    let mut consumer: PullConsumer = client
        .jetstream()
        .get_stream(EVENTS)
        .await
        .unwrap()
        .get_consumer(durable)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{durable} still has {} pending after delivering {out:?}",
            info.num_pending
        );
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(msg) = batch.next().await {
            let msg = msg.unwrap();
            out.push(msg.info().unwrap().stream_sequence);
            msg.double_ack().await.unwrap();
        }
    }
}

/// Fixed people, so the server's partition of each is the same on every run.
fn people() -> Vec<PersonId> {
    (0..8u128)
        .map(|i| PersonId::from_uuid(uuid::Uuid::from_u128((0x0190_7a1e << 96) + i * 7919)))
        .collect()
}

#[tokio::test]
async fn a_stream_partitioned_in_place_keeps_every_history_and_every_consumer_whole() {
    let (server, client) = start(StreamingConfig::default()).await;
    let people = people();
    let mut published: BTreeMap<PersonId, Vec<StreamingEventEnvelope>> = BTreeMap::new();

    // Before: current and week-1 subjects, location events of both.
    for &p in &people {
        let first = vec![created(p, 1), located(p, 2)];
        client
            .publisher()
            .append(p, ExpectedVersion::NoEvents, &first)
            .await
            .unwrap();
        let week1 = [activated(p, 3), located(p, 4)];
        for env in &week1 {
            publish_week1(&client, env).await;
        }
        published
            .entry(p)
            .or_default()
            .extend(first.into_iter().chain(week1));
    }
    let before = stored(&client).await;
    assert_eq!(before.len(), people.len() * 4);

    // The deploy that partitions: the plan lists the transform and the new durables,
    // and changes nothing. The stream gets more partitions than the group (each of its
    // durables then filters four of them).
    let mut config = StreamingConfig::default();
    config.stream.partitions = 16;
    let config = config.with_partitions(SUMMARY, 4).unwrap();
    let deploy = StreamingClient::builder(server.url())
        .ensure_on_connect(false)
        .connect(config)
        .await
        .unwrap();
    let stream_before = stream_config(&client).await;
    let consumers_before = consumer_configs(&client).await;
    let plan = deploy.plan().await.unwrap();
    assert_eq!(plan.updated_streams, [EVENTS]);
    assert!(
        plan.changes.contains(
            &r#"stream PERSON_EVENTS: subject_transform none -> "person.events.*.>" to "person.events.{{wildcard(1)}}.{{partition(16,1)}}.>" (16 partitions)"#
                .to_owned()
        ),
        "{:?}",
        plan.changes
    );
    let partition_names: Vec<String> = (0..4).map(|k| format!("{SUMMARY}-p{k}")).collect();
    let replay_names: Vec<String> = (0..4).map(|k| format!("{SUMMARY}-p{k}-replays")).collect();
    assert_eq!(
        plan.created_consumers,
        [partition_names.clone(), replay_names].concat()
    );
    assert_eq!(plan.updated_consumers, [SUMMARY, LOCATION]);
    assert_eq!(
        plan.unchanged_consumers,
        ["person-projection-search", "policy-engine"]
    );
    for name in [SUMMARY, LOCATION] {
        let line = format!("consumer {name}: filter_subjects ");
        assert!(
            plan.changes.iter().any(|c| c.starts_with(&line)),
            "{line} missing from {:?}",
            plan.changes
        );
    }
    assert_eq!(
        plan.created_streams,
        ["PERSON_EVENTS_GROUPS (key-value)"],
        "{plan:#?}"
    );
    assert_eq!(
        stream_config(&client).await,
        stream_before,
        "plan changed the stream"
    );
    assert_eq!(
        consumer_configs(&client).await,
        consumers_before,
        "plan changed the consumers"
    );
    assert!(
        client
            .jetstream()
            .get_stream("KV_PERSON_EVENTS_GROUPS")
            .await
            .is_err(),
        "plan created the groups bucket"
    );

    // Ensure does what the plan said, in place.
    assert_eq!(deploy.ensure().await.unwrap(), plan);
    let stream_after = stream_config(&client).await;
    assert_eq!(
        stream_after,
        stream::Config {
            subject_transform: Some(stream::SubjectTransform {
                source: "person.events.*.>".into(),
                destination: "person.events.{{wildcard(1)}}.{{partition(16,1)}}.>".into(),
            }),
            ..stream_before
        }
    );
    let bucket = client
        .jetstream()
        .get_stream("KV_PERSON_EVENTS_GROUPS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(
        (
            bucket.max_messages_per_subject,
            bucket.max_age,
            bucket.storage,
            bucket.num_replicas
        ),
        (1, Duration::from_secs(3600), stream::StorageType::File, 1)
    );
    let again = deploy.plan().await.unwrap();
    assert!(again.is_unchanged(), "{again:?}");
    assert!(
        again
            .unchanged_streams
            .contains(&"PERSON_EVENTS_GROUPS (key-value)".to_owned())
    );

    // After: appends checked against the version read across the boundary, and a
    // week-1 publish.
    let reader = deploy.reader();
    let publisher = deploy.publisher();
    for &p in &people {
        let version = reader.last_version(p).await.unwrap();
        let next = vec![activated(p, 5), located(p, 6)];
        publisher
            .append(p, ExpectedVersion::Exactly(version), &next)
            .await
            .unwrap();
        let week1 = located(p, 7);
        publish_week1(&deploy, &week1).await;
        published
            .entry(p)
            .or_default()
            .extend(next.into_iter().chain([week1]));
    }

    // Old messages keep their subjects; new ones carry a partition, one per person.
    let after = stored(&client).await;
    assert_eq!(after[..before.len()], before[..]);
    let mut partition_of: BTreeMap<PersonId, u32> = BTreeMap::new();
    for (seq, subject) in &after[before.len()..] {
        let s = parse_event_subject(subject).unwrap();
        let j = s
            .partition
            .unwrap_or_else(|| panic!("{seq} {subject} has no partition"));
        assert!(j < 16, "{subject}");
        let kind = if s.week1 { "person." } else { "" };
        assert_eq!(
            *subject,
            format!("person.events.{}.{j}.{kind}{}", s.person_id, s.event_type)
        );
        assert_eq!(
            *partition_of.entry(s.person_id).or_insert(j),
            j,
            "{subject}"
        );
    }
    assert_eq!(partition_of.len(), people.len());
    for (_, subject) in &before {
        assert_eq!(parse_event_subject(subject).unwrap().partition, None);
    }

    // Each history is whole and in order across the boundary, and the version read
    // from it guards the next append.
    for &p in &people {
        let history = reader.load_aggregate(p).await.unwrap();
        let ids: Vec<_> = history.iter().map(|e| e.event_id).collect();
        let want: Vec<_> = published[&p].iter().map(|e| e.event_id).collect();
        assert_eq!(ids, want, "history of {p}");
        let version = history.last().unwrap().stream_position.unwrap();
        assert_eq!(reader.last_version(p).await.unwrap(), version);
        publisher
            .append(p, ExpectedVersion::Exactly(version), &[activated(p, 8)])
            .await
            .unwrap();
        let stale = publisher
            .append(p, ExpectedVersion::Exactly(version), &[activated(p, 9)])
            .await
            .unwrap_err();
        assert_eq!(stale.kind(), PublishErrorKind::Conflict, "{stale}");
        assert_eq!(stale.expected_version(), Some(version));
    }
    let all = stored(&client).await;
    let event_of = |seq: u64| {
        let (_, subject) = all.iter().find(|(s, _)| *s == seq).unwrap();
        parse_event_subject(subject).unwrap()
    };
    let before_seqs: BTreeSet<u64> = before.iter().map(|(s, _)| *s).collect();

    // A consumer that is no group sees the location events of both eras.
    let location: BTreeSet<u64> = drain(&deploy, LOCATION).await.into_iter().collect();
    let want: BTreeSet<u64> = all
        .iter()
        .filter(|(_, subject)| {
            parse_event_subject(subject).unwrap().event_type == "location_assigned"
        })
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(location, want);
    assert_eq!(
        location.intersection(&before_seqs).count(),
        people.len() * 2
    );
    assert_eq!(location.len(), people.len() * 4);

    // The group and its legacy durable see every event once between them.
    let legacy = drain(&deploy, SUMMARY).await;
    let mut parts = Vec::new();
    for name in &partition_names {
        parts.push(drain(&deploy, name).await);
    }
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for seq in parts.iter().flatten().chain(&legacy) {
        *seen.entry(*seq).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "delivered twice: {seen:?}");
    let everything: BTreeSet<u64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), everything);
    assert_eq!(
        legacy.iter().copied().collect::<BTreeSet<_>>(),
        before_seqs,
        "the legacy durable reads what was stored before"
    );
    let mut owner: BTreeMap<PersonId, usize> = BTreeMap::new();
    for (k, part) in parts.iter().enumerate() {
        for seq in part {
            let e = event_of(*seq);
            let j = e
                .partition
                .expect("partition consumers read partitioned subjects");
            assert_eq!(
                j as usize % 4,
                k,
                "stream partition {j} in consumer partition {k}"
            );
            assert_eq!(*owner.entry(e.person_id).or_insert(k), k, "{e:?}");
        }
    }
    assert_eq!(owner.len(), people.len());
    let busy: BTreeSet<usize> = owner.values().copied().collect();
    assert!(
        busy.len() > 1,
        "the people spread over the group: {owner:?}"
    );
}

#[tokio::test]
async fn a_partitioned_stream_is_created_with_its_transform_and_never_re_partitioned() {
    let mut config = StreamingConfig::default()
        .with_subject_prefix("acme")
        .unwrap();
    config.stream.partitions = 16;
    let config = config.with_partitions(SUMMARY, 4).unwrap();
    let (server, client) = start(config.clone()).await;
    let at_creation = stream_config(&client).await;
    assert_eq!(
        at_creation.subject_transform,
        Some(stream::SubjectTransform {
            source: "acme.person.events.*.>".into(),
            destination: "acme.person.events.{{wildcard(1)}}.{{partition(16,1)}}.>".into(),
        })
    );
    let names: Vec<String> = consumer_configs(&client).await.into_keys().collect();
    for k in 0..4 {
        assert!(names.contains(&format!("{SUMMARY}-p{k}")), "{names:?}");
    }

    // An event lands in the partition consumer its stream partition maps to.
    let p = people()[0];
    client.publisher().publish(&created(p, 1)).await.unwrap();
    let (_, subject) = stored(&client).await.pop().unwrap();
    let s = parse_event_subject(&subject).unwrap();
    assert!(
        subject.starts_with(&format!("acme.person.events.{p}.")),
        "{subject}"
    );
    let j = s.partition.unwrap();
    assert_eq!(
        drain(&client, &format!("{SUMMARY}-p{}", j % 4)).await.len(),
        1
    );
    assert!(drain(&client, SUMMARY).await.is_empty());

    // Another number of stream partitions, or none, is refused before any change.
    let mut more = config.clone();
    more.stream.partitions = 32;
    let mut none = StreamingConfig::default()
        .with_subject_prefix("acme")
        .unwrap();
    none.stream.partitions = 0;
    for (changed, asked) in [(more, 32), (none, 0)] {
        let deploy = StreamingClient::builder(server.url())
            .ensure_on_connect(false)
            .connect(changed)
            .await
            .unwrap();
        for result in [deploy.plan().await, deploy.ensure().await] {
            let e = result.unwrap_err();
            assert_eq!(e.kind(), StreamingErrorKind::ImmutableField, "{e}");
            let text = e.to_string();
            assert!(text.contains("`stream.partitions`"), "{text}");
            assert!(
                text.contains(&format!("16 partitions but the config asks for {asked}")),
                "{text}"
            );
            assert!(text.contains("re-partitioning"), "{text}");
        }
        assert_eq!(stream_config(&client).await, at_creation);
    }
}
