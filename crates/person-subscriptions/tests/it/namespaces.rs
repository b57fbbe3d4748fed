//! Two deployments on one server, one on the default subjects and one under a subject
//! prefix of its own: each publishes, reads, checks versions, consumes and
//! dead-letters in its own subject space, and never sees the other's events.

use std::sync::Arc;
use std::time::Duration;

use person_events::PersonId;
use person_streaming::{
    DeadLetterFilter, ExpectedVersion, PublishErrorKind, StreamingClient, StreamingConfig,
};
use person_subscriptions::{DeadLetterPolicy, HandlerError, SubscriptionManager};

use crate::support::*;

fn tenant_config() -> StreamingConfig {
    let mut c = config(3);
    c.stream.name = "TENANT_B_EVENTS".into();
    c.dlq.name = "TENANT_B_DLQ".into();
    c.with_subject_prefix("tenant_b").unwrap()
}

async fn consumer_counts(client: &StreamingClient, stream: &str) -> (u64, usize) {
    let stream = client.jetstream().get_stream(stream).await.unwrap();
    let info = stream.consumer_info(CONSUMER).await.unwrap();
    (info.num_pending, info.num_ack_pending)
}

#[tokio::test]
async fn a_prefixed_deployment_shares_a_server_with_the_default_one_without_touching_it() {
    let (server, default) = start(config(3)).await;
    let tenant = StreamingClient::new(&server.url(), tenant_config())
        .await
        .expect("a prefixed deployment sets up beside the default one");

    // The same person in both: each deployment has its own history of them.
    let person = PersonId::new();
    let theirs: Vec<_> = (1..=3).map(|s| event(person, s, "default")).collect();
    default
        .publisher()
        .append(person, ExpectedVersion::NoEvents, &theirs)
        .await
        .unwrap();
    let ours: Vec<_> = (1..=5).map(|s| event(person, s, "tenant")).collect();
    let receipt = tenant
        .publisher()
        .append(person, ExpectedVersion::NoEvents, &ours)
        .await
        .expect("no events of this person yet in the tenant's own stream");
    assert_eq!(receipt.version, 5);

    // Versions and histories are per deployment.
    let conflict = tenant
        .publisher()
        .append(
            person,
            ExpectedVersion::Exactly(3),
            &[event(person, 6, "stale")],
        )
        .await
        .unwrap_err();
    assert_eq!(conflict.kind(), PublishErrorKind::Conflict);
    assert_eq!(tenant.reader().last_version(person).await.unwrap(), 5);
    assert_eq!(default.reader().last_version(person).await.unwrap(), 3);
    let history = tenant.reader().load_aggregate(person).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ours.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    let stored = tenant
        .jetstream()
        .get_stream("TENANT_B_EVENTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(
        stored.subject.as_str(),
        format!("tenant_b.person.events.{person}.activated")
    );

    // The tenant's consumer handles its own events, dead-letters one under its prefix.
    let poison = ours[2].event_id;
    let recorder = Arc::new(Recorder::failing("summary", move |env, _| {
        (env.event_id == poison).then(|| HandlerError::permanent("rejected"))
    }));
    let mut manager = SubscriptionManager::new(tenant.clone())
        .with_options(options().dead_letter_policy(DeadLetterPolicy::Continue));
    manager.register_handler(recorder.clone());
    let handle = manager.start_consumer(CONSUMER).await.unwrap();
    eventually_report(
        20,
        || recorder.distinct() == 4 && handle.stats().dead_lettered == 1,
        || format!("{:?} {:?}", recorder.order_by_person(), handle.stats()),
    )
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(recorder.first_success_order()[&person], vec![1, 2, 4, 5]);
    assert!(
        recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.event_id != theirs[0].event_id
                && e.event_id != theirs[1].event_id
                && e.event_id != theirs[2].event_id),
        "the default deployment's events never reach the tenant's consumer"
    );
    assert_eq!(consumer_counts(&tenant, "TENANT_B_EVENTS").await, (0, 0));

    let letters = tenant
        .dead_letters()
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id(), Some(poison));
    let raw = tenant
        .jetstream()
        .get_stream("TENANT_B_DLQ")
        .await
        .unwrap()
        .get_raw_message(letters[0].dlq_sequence)
        .await
        .unwrap();
    assert_eq!(
        raw.subject.as_str(),
        format!("tenant_b.person.dlq.{CONSUMER}.{person}.activated")
    );
    assert_eq!(
        tenant.dead_letters().parked_people(CONSUMER).await.unwrap(),
        vec![person.to_string()]
    );
    assert!(
        tenant
            .dead_letters()
            .holds_letters(CONSUMER, &person.to_string())
            .await
            .unwrap()
    );

    // The default deployment is untouched: its backlog waits, its DLQ is empty.
    assert_eq!(consumer_counts(&default, "PERSON_EVENTS").await, (3, 0));
    assert!(
        default
            .dead_letters()
            .list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        default
            .dead_letters()
            .parked_people(CONSUMER)
            .await
            .unwrap()
            .is_empty()
    );
}
