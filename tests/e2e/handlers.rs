//! Fault 5: slow and hung handlers. A hung call times out as a transient failure and
//! does not hold up other people's events; a call slower than the ack wait keeps its
//! message through in-progress acks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nats_harness::NatsServer;
use person_events::{EventId, PersonId, StreamingEventEnvelope};
use person_subscriptions::{
    DomainResult, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};

use crate::support::{
    CONSUMER, Projection, Row, config, connect, dlq_messages, eventually, publish_all, record,
    workload,
};

/// Sets a flag when dropped: tells when the runtime cancelled the hung call.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Mixed {
    projection: Arc<Projection>,
    hung_event: EventId,
    slow_event: EventId,
    hung_person: PersonId,
    hang_started: AtomicBool,
    hang_cancelled: Arc<AtomicBool>,
    /// Events of other people applied before the hung call was cancelled.
    others_before_cancel: AtomicU64,
    /// Of those, the ones applied before the hung call started.
    others_before_hang: AtomicU64,
    calls: Mutex<std::collections::HashMap<EventId, u32>>,
    slow: Duration,
}

#[async_trait]
impl StreamingEventHandler for Mixed {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(envelope.event_id)
            .or_default() += 1;
        if envelope.event_id == self.hung_event && !self.hang_started.swap(true, Ordering::SeqCst) {
            self.others_before_hang.store(
                self.others_before_cancel.load(Ordering::SeqCst),
                Ordering::SeqCst,
            );
            let _flag = DropFlag(self.hang_cancelled.clone());
            futures::future::pending::<()>().await;
        }
        if envelope.event_id == self.slow_event {
            tokio::time::sleep(self.slow).await;
        }
        if envelope.aggregate_id != self.hung_person && !self.hang_cancelled.load(Ordering::SeqCst)
        {
            self.others_before_cancel.fetch_add(1, Ordering::SeqCst);
        }
        self.projection.apply(&envelope);
        Ok(())
    }

    fn name(&self) -> &str {
        "reliability"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_and_slow_handlers_block_no_one_and_lose_nothing() {
    let started = Instant::now();
    let server = NatsServer::start().await.unwrap();
    // Ack wait 3 s (progress acks every second); the slow call takes 7 s.
    let client = connect(&server.url(), config(3)).await;
    let events = workload(20, 10);
    let hung = events[0].clone();
    let slow = events[1].clone();
    let handler = Arc::new(Mixed {
        projection: Arc::new(Projection::default()),
        hung_event: hung.event_id,
        slow_event: slow.event_id,
        hung_person: hung.aggregate_id,
        hang_started: AtomicBool::new(false),
        hang_cancelled: Arc::new(AtomicBool::new(false)),
        others_before_cancel: AtomicU64::new(0),
        others_before_hang: AtomicU64::new(0),
        calls: Mutex::default(),
        slow: Duration::from_secs(7),
    });
    let projection = handler.projection.clone();
    publish_all(&client, &events).await;
    // A timeout long enough that, on any machine, everyone else is done before it fires.
    let mut manager = SubscriptionManager::new(client.clone()).with_options(
        SubscriptionOptions::default()
            .concurrency(8)
            .handler_timeout(Duration::from_secs(20)),
    );
    manager.register_handler(handler.clone());
    let handle = manager.start_consumer(CONSUMER).await.unwrap();

    let others = events
        .iter()
        .filter(|e| e.aggregate_id != hung.aggregate_id)
        .count() as u64;
    eventually(300, "every event handled", || projection.distinct() == 200).await;
    let stats = handle.stats();
    handle.shutdown(Duration::from_secs(10)).await;

    assert!(
        handler.hang_cancelled.load(Ordering::SeqCst),
        "the hung call was cancelled"
    );
    // Everyone but the hung person was done before the hung call was cancelled (the
    // slow event's own person included, once its slow call finished), and most of it
    // while the call hung.
    let before_hang = handler.others_before_hang.load(Ordering::SeqCst);
    assert_eq!(handler.others_before_cancel.load(Ordering::SeqCst), others);
    assert!(
        before_hang < others / 2,
        "{before_hang} of {others} done before the hang began"
    );
    let while_hung = others - before_hang;
    let calls = handler.calls.lock().unwrap().clone();
    assert_eq!(
        calls[&hung.event_id], 2,
        "the hung event is retried once, then succeeds"
    );
    assert_eq!(
        calls[&slow.event_id], 1,
        "the slow event is never redelivered to the handler"
    );
    assert!(
        stats.retried >= 1,
        "the timeout counts as a transient failure"
    );
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(dlq_messages(&client).await, 0);
    let info = client
        .jetstream()
        .get_stream("PERSON_EVENTS")
        .await
        .unwrap()
        .consumer_info(CONSUMER)
        .await
        .unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    // Every delivery the server made: 200 messages plus the one redelivery of the hung
    // event after its NAK. Had the slow call (or a queued event) outlived its ack wait,
    // the server would have redelivered it and counted more.
    assert_eq!(info.delivered.consumer_sequence, 201);
    assert_eq!(projection.absorbed(), 0, "nothing was handled twice");
    record(
        Row {
            case: "fault-5-slow-and-hung-handlers",
            area: "handlers",
            what:
                "one call hangs past handler_timeout (20 s); one call takes 7 s with a 3 s ack wait"
                    .into(),
            load: "200 events, 20 people, concurrency 8".into(),
            faults: "1 hung handler call, 1 handler call 2.3x the ack wait".into(),
            inputs: 200,
            lost: 200 - projection.distinct(),
            duplicated: 0,
            absorbed: projection.absorbed(),
            notes: format!(
                "{while_hung} of {others} events of other people handled while the call hung (the rest before it began); hung event called twice, slow event once; 201 deliveries by the server for 200 events (the one redelivery: the hung event); retried {}",
                stats.retried
            ),
            ..Row::default()
        },
        started,
    );
}
