//! Pausing, resuming and rewinding a consumer of the event stream on a real server.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use person_events::PersonId;
use person_streaming::{
    ConsumerSettings, DeliverPolicy, Rewind, StreamingClient, StreamingConfig, StreamingErrorKind,
    indefinite_pause,
};

use crate::support::{activated, start};

const SUMMARY: &str = "person-projection-summary";
const SEARCH: &str = "person-projection-search";

async fn pull(client: &StreamingClient, durable: &str) -> PullConsumer {
    client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .get_consumer(durable)
        .await
        .unwrap()
}

/// One fetch of up to 100 messages waiting at most `expiry`, each acknowledged; their
/// stream sequences.
async fn fetch(c: &PullConsumer, expiry: Duration) -> Vec<u64> {
    let mut batch = c
        .fetch()
        .max_messages(100)
        .expires(expiry)
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(msg) = batch.next().await {
        let msg = msg.unwrap();
        out.push(msg.info().unwrap().stream_sequence);
        msg.double_ack().await.unwrap();
    }
    out
}

/// Fetches until `n` messages arrived (at most 10 s); their stream sequences.
async fn fetch_n(c: &PullConsumer, n: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {out:?} of {n} messages arrived"
        );
        out.extend(fetch(c, Duration::from_millis(300)).await);
    }
    out
}

async fn publish(client: &StreamingClient, person: PersonId, seqs: std::ops::RangeInclusive<u64>) {
    let publisher = client.publisher();
    for s in seqs {
        publisher.publish(&activated(person, s)).await.unwrap();
    }
}

/// What a rewind plan must leave as it is.
async fn position(client: &StreamingClient, durable: &str) -> (u64, u64, u64, u64, bool) {
    let s = client.consumer_status(durable).await.unwrap();
    (
        s.delivered_stream_sequence,
        s.ack_floor_stream_sequence,
        s.pending,
        s.ack_pending,
        s.paused,
    )
}

async fn consumer_count(client: &StreamingClient) -> usize {
    let mut s = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    s.info().await.unwrap().state.consumer_count
}

#[tokio::test]
async fn a_paused_consumer_delivers_nothing_until_resumed_then_everything() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    publish(&client, person, 1..=3).await;
    let search_before = position(&client, SEARCH).await;

    let state = client
        .pause_consumer(SUMMARY, indefinite_pause())
        .await
        .unwrap();
    assert!(state.paused);
    assert_eq!(state.until, Some(indefinite_pause()));
    let status = client.consumer_status(SUMMARY).await.unwrap();
    assert!(status.paused);
    assert_eq!(status.paused_until, Some(indefinite_pause()));
    assert!(status.is_paused_indefinitely());
    let listed = client.status().await.unwrap();
    let row = listed[0]
        .consumers
        .iter()
        .find(|c| c.name == SUMMARY)
        .unwrap();
    assert!(row.paused, "status() shows the pause too");

    let c = pull(&client, SUMMARY).await;
    assert!(fetch(&c, Duration::from_millis(500)).await.is_empty());
    publish(&client, person, 4..=5).await;
    assert!(fetch(&c, Duration::from_millis(500)).await.is_empty());
    assert_eq!(client.consumer_status(SUMMARY).await.unwrap().pending, 5);

    // Only the consumer named is paused.
    let other = client.consumer_status(SEARCH).await.unwrap();
    assert!(!other.paused);
    assert_eq!(other.pending, search_before.2 + 2);

    let state = client.resume_consumer(SUMMARY).await.unwrap();
    assert!(!state.paused);
    assert_eq!(state.until, None);
    let status = client.consumer_status(SUMMARY).await.unwrap();
    assert!(!status.paused);
    assert_eq!(status.paused_until, None);
    assert_eq!(fetch_n(&c, 5).await, vec![1, 2, 3, 4, 5]);
    // Resuming a consumer that runs changes nothing.
    assert!(!client.resume_consumer(SUMMARY).await.unwrap().paused);
}

#[tokio::test]
async fn a_pause_until_a_time_ends_by_itself() {
    let (_server, client) = start(StreamingConfig::default()).await;
    publish(&client, PersonId::new(), 1..=2).await;
    let until = Utc::now() + chrono::Duration::seconds(2);
    let state = client.pause_consumer(SUMMARY, until).await.unwrap();
    assert!(state.paused);
    let reported = state.until.unwrap();
    assert!(
        (reported - until).num_milliseconds().abs() < 1000,
        "{reported} vs {until}"
    );
    let status = client.consumer_status(SUMMARY).await.unwrap();
    assert!(status.paused && !status.is_paused_indefinitely());

    let c = pull(&client, SUMMARY).await;
    // Nothing before the pause ends; everything after, with no resume call.
    let first = fetch(&c, Duration::from_millis(300)).await;
    if Utc::now() < until {
        assert!(first.is_empty(), "{first:?} delivered while paused");
    }
    let mut got = first;
    let rest = 2 - got.len();
    got.extend(fetch_n(&c, rest).await);
    assert_eq!(got, vec![1, 2]);
    assert!(!client.consumer_status(SUMMARY).await.unwrap().paused);
}

#[tokio::test]
async fn a_rewind_to_a_sequence_redelivers_from_exactly_there_and_its_plan_changes_nothing() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    publish(&client, person, 1..=5).await;
    let c = pull(&client, SUMMARY).await;
    assert_eq!(fetch_n(&c, 5).await, vec![1, 2, 3, 4, 5]);
    let consumers = consumer_count(&client).await;
    let before = position(&client, SUMMARY).await;
    assert_eq!(before, (5, 5, 0, 0, false));
    let search_before = position(&client, SEARCH).await;

    let plan = client
        .plan_rewind(SUMMARY, Rewind::ToSequence(3))
        .await
        .unwrap();
    assert_eq!(plan.target_sequence, 3);
    assert_eq!(plan.ack_floor, 5);
    assert_eq!(plan.new_ack_floor, 2);
    assert_eq!(plan.delivered_sequence, 5);
    assert_eq!(plan.last_sequence, 5);
    assert_eq!(plan.delivered_again, 3);
    assert_eq!(plan.pending_after, 3);
    assert_eq!(plan.skipped, 0);
    // The plan changed nothing, and left no consumer of its own behind.
    assert_eq!(position(&client, SUMMARY).await, before);
    assert_eq!(consumer_count(&client).await, consumers);

    let receipt = client
        .rewind_consumer(SUMMARY, Rewind::ToSequence(3))
        .await
        .unwrap();
    assert_eq!(receipt.plan, plan);
    assert_eq!(receipt.ack_floor, 2);
    assert_eq!(receipt.pending, 3);
    assert_eq!(fetch_n(&c, 3).await, vec![3, 4, 5]);
    assert!(fetch(&c, Duration::from_millis(300)).await.is_empty());
    // Another consumer was not touched.
    assert_eq!(position(&client, SEARCH).await, search_before);
    assert_eq!(consumer_count(&client).await, consumers);

    // To the start: everything again, in order.
    let receipt = client
        .rewind_consumer(SUMMARY, Rewind::ToSequence(1))
        .await
        .unwrap();
    assert_eq!(receipt.plan.delivered_again, 5);
    assert_eq!(fetch_n(&c, 5).await, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_rewind_forward_reports_what_it_skips_and_a_rewind_keeps_a_pause() {
    let (_server, client) = start(StreamingConfig::default()).await;
    publish(&client, PersonId::new(), 1..=6).await;
    let c = pull(&client, SUMMARY).await;
    // Nothing consumed yet: a rewind "to 5" skips 1-4.
    let plan = client
        .plan_rewind(SUMMARY, Rewind::ToSequence(5))
        .await
        .unwrap();
    assert_eq!(
        (plan.ack_floor, plan.skipped, plan.delivered_again),
        (0, 4, 0)
    );
    assert_eq!(plan.pending_after, 2);

    client
        .pause_consumer(SUMMARY, indefinite_pause())
        .await
        .unwrap();
    let receipt = client
        .rewind_consumer(SUMMARY, Rewind::ToSequence(5))
        .await
        .unwrap();
    assert!(receipt.plan.paused);
    assert!(client.consumer_status(SUMMARY).await.unwrap().paused);
    assert!(fetch(&c, Duration::from_millis(300)).await.is_empty());
    client.resume_consumer(SUMMARY).await.unwrap();
    assert_eq!(fetch_n(&c, 2).await, vec![5, 6]);
}

#[tokio::test]
async fn a_rewind_to_a_time_starts_at_the_first_message_stored_then() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let person = PersonId::new();
    publish(&client, person, 1..=3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&client, person, 4..=6).await;
    let c = pull(&client, SUMMARY).await;
    assert_eq!(fetch_n(&c, 6).await, vec![1, 2, 3, 4, 5, 6]);
    let stream = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap();
    let stored = |seq| {
        let stream = stream.clone();
        async move {
            let t = stream.get_raw_message(seq).await.unwrap().time;
            DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap()
        }
    };
    let (third, fourth) = (stored(3).await, stored(4).await);
    assert!(third < fourth);

    // Exactly the time the fourth was stored, or any time after the third's.
    for t in [fourth, third + chrono::Duration::nanoseconds(1)] {
        let plan = client
            .plan_rewind(SUMMARY, Rewind::ToTime(t))
            .await
            .unwrap();
        assert_eq!(plan.target_sequence, 4, "{t}");
        assert_eq!(plan.delivered_again, 3);
    }
    // Before the first message: from the start.
    let plan = client
        .plan_rewind(
            SUMMARY,
            Rewind::ToTime(stored(1).await - chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
    assert_eq!(plan.target_sequence, 1);

    client
        .rewind_consumer(SUMMARY, Rewind::ToTime(fourth))
        .await
        .unwrap();
    assert_eq!(fetch_n(&c, 3).await, vec![4, 5, 6]);
    assert!(fetch(&c, Duration::from_millis(300)).await.is_empty());
}

#[tokio::test]
async fn a_rewind_follows_the_consumers_filter() {
    let (_server, client) = start(StreamingConfig::default()).await;
    // person-to-location sees only location_assigned events: none of these.
    publish(&client, PersonId::new(), 1..=4).await;
    let plan = client
        .plan_rewind("person-to-location", Rewind::ToSequence(1))
        .await
        .unwrap();
    assert_eq!((plan.pending_after, plan.delivered_again), (0, 0));
    let plan = client
        .plan_rewind(SUMMARY, Rewind::ToSequence(2))
        .await
        .unwrap();
    assert_eq!(plan.pending_after, 3);
}

#[tokio::test]
async fn bad_requests_are_typed_errors_and_touch_nothing() {
    let mut config = StreamingConfig::default();
    let mut new_only = ConsumerSettings::new("new-only", &["person.events.>"], "new events only");
    new_only.deliver_policy = DeliverPolicy::New;
    config.consumers.push(new_only);
    let (_server, client) = start(config).await;
    publish(&client, PersonId::new(), 1..=3).await;
    let before = position(&client, SUMMARY).await;
    let consumers = consumer_count(&client).await;

    fn kind<T: std::fmt::Debug>(
        r: Result<T, person_streaming::StreamingError>,
    ) -> StreamingErrorKind {
        r.unwrap_err().kind()
    }
    let missing = "no-such-consumer";
    assert_eq!(
        kind(client.pause_consumer(missing, indefinite_pause()).await),
        StreamingErrorKind::NotFound
    );
    assert_eq!(
        kind(client.resume_consumer(missing).await),
        StreamingErrorKind::NotFound
    );
    assert_eq!(
        kind(client.plan_rewind(missing, Rewind::ToSequence(1)).await),
        StreamingErrorKind::NotFound
    );
    let e = client
        .rewind_consumer(missing, Rewind::ToSequence(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StreamingErrorKind::NotFound);
    assert!(e.to_string().contains(missing), "{e}");

    for rewind in [
        Rewind::ToSequence(0),
        Rewind::ToSequence(4),
        Rewind::ToTime(Utc::now() + chrono::Duration::minutes(5)),
    ] {
        let e = client.rewind_consumer(SUMMARY, rewind).await.unwrap_err();
        assert_eq!(
            e.kind(),
            StreamingErrorKind::InvalidInput,
            "{rewind:?}: {e}"
        );
    }
    let e = client
        .rewind_consumer(SUMMARY, Rewind::ToSequence(4))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ends at sequence 3"), "{e}");
    let e = client
        .plan_rewind("new-only", Rewind::ToSequence(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StreamingErrorKind::InvalidInput);
    assert!(e.to_string().contains("`new`"), "{e}");
    assert_eq!(
        kind(
            client
                .pause_consumer(SUMMARY, Utc::now() - chrono::Duration::seconds(1))
                .await
        ),
        StreamingErrorKind::InvalidInput
    );
    assert_eq!(
        kind(client.pause_consumer("a.b", indefinite_pause()).await),
        StreamingErrorKind::InvalidInput
    );

    assert_eq!(position(&client, SUMMARY).await, before);
    assert_eq!(consumer_count(&client).await, consumers);
}

#[tokio::test]
async fn rewinding_needs_messages_in_the_stream() {
    let (_server, client) = start(StreamingConfig::default()).await;
    let e = client
        .plan_rewind(SUMMARY, Rewind::ToSequence(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StreamingErrorKind::InvalidInput);
    let e = client
        .plan_rewind(
            SUMMARY,
            Rewind::ToTime(Utc::now() - chrono::Duration::hours(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StreamingErrorKind::InvalidInput);
}

#[tokio::test]
async fn acknowledgements_of_messages_held_across_a_rewind_do_not_count() {
    let (_server, client) = start(StreamingConfig::default()).await;
    publish(&client, PersonId::new(), 1..=3).await;
    let c = pull(&client, SUMMARY).await;
    let mut batch = c
        .fetch()
        .max_messages(3)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut held = Vec::new();
    while let Some(msg) = batch.next().await {
        held.push(msg.unwrap());
    }
    assert_eq!(held.len(), 3);
    let receipt = client
        .rewind_consumer(SUMMARY, Rewind::ToSequence(1))
        .await
        .unwrap();
    assert_eq!(receipt.plan.ack_pending, 3);
    assert_eq!(receipt.pending, 3);
    for msg in held {
        msg.ack().await.unwrap();
    }
    client.client().flush().await.unwrap();
    assert_eq!(fetch_n(&c, 3).await, vec![1, 2, 3]);
}
