//! Dead letters expire with the DLQ stream's `max_age`, and parking follows: a person
//! is parked while the DLQ holds a letter of theirs for the consumer, so once their last
//! letter expires their next event is handled, not parked. The expired events are gone
//! and were never applied.

use std::sync::Arc;

use person_events::PersonId;
use person_subscriptions::{DeadLetterPolicy, HandlerError};

use crate::support::*;

#[tokio::test]
async fn once_a_persons_dead_letters_expire_their_next_event_is_handled_not_parked() {
    let mut config = config(1);
    config.dlq.max_age_secs = 1;
    config.dlq.duplicate_window_secs = 1;
    let (_server, client) = start(config).await;
    let (a, b) = (PersonId::new(), PersonId::new());
    publish(
        &client,
        &[
            event(a, 1, "poison"),
            event(a, 2, "after"),
            event(b, 1, "fine"),
        ],
    )
    .await;
    let recorder = Arc::new(Recorder::failing("projection", |e, _| {
        matches!(&e.event, person_events::PersonEventV2::Activated { reason, .. } if reason == "poison")
            .then(|| HandlerError::permanent("poison"))
    }));
    let handle = run(
        &client,
        recorder.clone(),
        options().dead_letter_policy(DeadLetterPolicy::Park),
    )
    .await;

    // The poison event is dead-lettered, a's next one is parked behind it.
    eventually(10, "2 dead letters", || handle.stats().dead_lettered == 2).await;
    eventually(10, "b handled", || recorder.distinct() == 1).await;
    assert_eq!(handle.stats().parked, 1);
    assert_eq!(handle.stats().parked_people, 1);
    assert!(!recorder.order_by_person().contains_key(&a));

    // Both letters expire (max_age 1 s); the DLQ no longer names a.
    eventually_async(15, "a's dead letters expired", || async {
        !client
            .dead_letters()
            .holds_letters(CONSUMER, &a.to_string())
            .await
            .unwrap()
    })
    .await;
    assert!(letters_of(&client, a).await.is_empty());
    assert!(
        client
            .dead_letters()
            .parked_people(CONSUMER)
            .await
            .unwrap()
            .is_empty()
    );

    // a's next event is handled: the runtime asks the DLQ, finds nothing, unparks a.
    publish(&client, &[event(a, 3, "next")]).await;
    eventually(10, "a's third event handled", || {
        recorder
            .order_by_person()
            .get(&a)
            .is_some_and(|s| s == &[3])
    })
    .await;
    let stats = handle.stats();
    assert_eq!(stats.dead_lettered, 2, "nothing parked after the expiry");
    assert_eq!(stats.parked, 1);
    assert_eq!(stats.parked_people, 0);
    // The expired events were never applied: 1 and 2 are lost to a.
    assert_eq!(recorder.order_by_person()[&a], vec![3]);
    wait_idle(&client, 10).await;
    handle.shutdown(std::time::Duration::from_secs(5)).await;
}
