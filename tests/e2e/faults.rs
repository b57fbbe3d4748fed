//! Faults 1 to 3: the publisher and the consumer under `nats-server` crashes (SIGKILL),
//! and the consumer's own process crashing mid-batch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nats_harness::{NatsServer, TcpProxy};
use person_events::{EventId, StreamingEventEnvelope};
use person_subscriptions::{
    DomainResult, StreamingEventHandler, SubscriptionManager, SubscriptionOptions,
};

use crate::support::{
    CONSUMER, Projection, ProjectionHandler, Row, config, connect, dlq_messages, eventually,
    publish_all, record, stored_ids, workload,
};

/// Fault 1. 20,000 events from 50 concurrent publishers; the server is SIGKILLed and
/// restarted twice while they run. The server keeps its default `sync_interval`: a
/// process kill must lose no acknowledged write. Publishers retry a failed publish with
/// the same envelope, so the same `Nats-Msg-Id`.
///
/// Each kill lands between store and ack: the publishers reach the server through a
/// proxy that holds the server's replies back from just before the kill, so the events
/// the server stores in that moment are stored with their acks lost. Their retries must
/// be answered as duplicates (at least one per event stored while the replies were
/// held), and the stream must hold every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_through_two_server_kills_store_every_event_once() {
    const TASKS: usize = 50;
    const EVENTS: usize = 20_000;
    let started = Instant::now();
    let mut server = NatsServer::start().await.unwrap();
    let proxy = TcpProxy::start(server.port()).await.unwrap();
    let client = connect(&proxy.url(), config(30)).await;
    // Reads the stream directly, not through the proxy.
    let observer = connect(&server.url(), config(30)).await;
    let events = workload(1_000, 20);
    assert_eq!(events.len(), EVENTS);
    let published: HashSet<EventId> = events.iter().map(|e| e.event_id).collect();
    let acked = Arc::new(AtomicU64::new(0));
    let caller_retries = Arc::new(AtomicU64::new(0));
    // Acks saying "duplicate": a retry of an event the server had already stored.
    let dedup_acks = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for chunk in events.chunks(EVENTS / TASKS) {
        let chunk = chunk.to_vec();
        let publisher = client.publisher();
        let acked = acked.clone();
        let caller_retries = caller_retries.clone();
        let dedup_acks = dedup_acks.clone();
        tasks.push(tokio::spawn(async move {
            for env in &chunk {
                loop {
                    match publisher.publish(env).await {
                        Ok(receipt) => {
                            if receipt.duplicate {
                                dedup_acks.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        // Outcome unknown: publishing the same envelope again is safe.
                        Err(e) if e.is_transient() => {
                            caller_retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("publish of {} failed for good: {e}", env.event_id),
                    }
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut kills = 0;
    // Events stored and not acknowledged to their publishers at each kill.
    let mut acks_lost = Vec::new();
    for threshold in [EVENTS as u64 / 4, EVENTS as u64 * 3 / 5] {
        eventually(600, "publishers to make progress", || {
            acked.load(Ordering::Relaxed) >= threshold
        })
        .await;
        let at = acked.load(Ordering::Relaxed);
        assert!(at < EVENTS as u64, "the kill must land while publishing");
        // From now on no ack reaches a publisher. Each task has at most one publish
        // waiting for its ack: wait until at least half of them are stored (stored
        // events beyond the acknowledged ones), and nothing moves any more.
        proxy.hold_replies(true);
        let mut last = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let unacked = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = (last_sequence(&observer).await, acked.load(Ordering::SeqCst));
            let unacked = now.0.saturating_sub(now.1);
            if unacked >= TASKS as u64 / 2 && now == last {
                break unacked;
            }
            assert!(
                Instant::now() < deadline,
                "only {unacked} stored events unacknowledged while the replies were held"
            );
            last = now;
        };
        acks_lost.push(unacked);
        server.kill();
        kills += 1;
        // The held acks die with the connections.
        proxy.cut();
        proxy.hold_replies(false);
        server.start_again().await.unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(acked.load(Ordering::Relaxed), EVENTS as u64);

    let (total, ids) = stored_ids(&client, "PERSON_EVENTS").await;
    let distinct: HashSet<EventId> = ids.iter().copied().collect();
    let missing = published.difference(&distinct).count() as u64;
    let duplicated = total - distinct.len() as u64;
    assert_eq!(missing, 0, "acknowledged events lost");
    assert_eq!(duplicated, 0, "events stored twice");
    assert_eq!(distinct, published);
    assert_eq!(kills, 2);
    // Every event stored with its ack lost was published again and recognised.
    let dedup = dedup_acks.load(Ordering::Relaxed);
    let lost_acks: u64 = acks_lost.iter().sum();
    assert!(lost_acks > 0, "no event was stored with its ack lost");
    assert!(
        dedup >= lost_acks,
        "{dedup} publishes answered as duplicates, but {lost_acks} events were stored with their acks lost ({acks_lost:?})"
    );
    record(
        Row {
            case: "fault-1-publisher-server-kill",
            area: "faults",
            what: "50 concurrent publishers; server SIGKILLed and restarted while they run; default sync_interval".into(),
            load: format!("{EVENTS} events, {TASKS} tasks"),
            faults: format!(
                "{kills} server kills (SIGKILL) + restarts, each between store and ack (replies held by a proxy)"
            ),
            inputs: EVENTS as u64,
            lost: missing,
            duplicated,
            absorbed: 0,
            notes: format!(
                "{total} messages stored, {} distinct ids; {lost_acks} events stored with their acks lost at the kills ({acks_lost:?}); {dedup} retries answered as duplicates by the server; {} caller-level re-publishes with the same Nats-Msg-Id",
                distinct.len(),
                caller_retries.load(Ordering::Relaxed)
            ),
            ..Row::default()
        },
        started,
    );
}

/// The stream's last sequence, as `client` reads it (retried while it reconnects).
async fn last_sequence(client: &person_streaming::StreamingClient) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = async {
            let mut stream = client.jetstream().get_stream("PERSON_EVENTS").await.ok()?;
            Some(stream.info().await.ok()?.state.last_sequence)
        };
        if let Some(seq) = info.await {
            return seq;
        }
        assert!(Instant::now() < deadline, "cannot read the stream's state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fault 2. 5,000 events; the server is SIGKILLed and restarted while handlers run.
/// An idempotent projection ends with all of them, the handler never sees an error, and
/// nothing is dead-lettered because of the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_through_a_server_kill_handle_everything_and_dead_letter_nothing() {
    let started = Instant::now();
    let mut server = NatsServer::start().await.unwrap();
    let client = connect(&server.url(), config(5)).await;
    let events = workload(500, 10);
    publish_all(&client, &events).await;
    let projection = Arc::new(Projection::default());
    // From the 1,000th event on, handler calls wait until the server is down: the kill
    // lands with handlers in flight, and they finish during the outage.
    let killed = Arc::new(AtomicBool::new(false));
    let handler = ProjectionHandler::new(projection.clone())
        .known(&events)
        .delay(Duration::from_millis(1))
        .hold_from(1_000, killed.clone());
    let mut manager = SubscriptionManager::new(client.clone())
        .with_options(SubscriptionOptions::default().concurrency(32));
    manager.register_handler(Arc::new(handler));
    let handle = manager.start_consumer(CONSUMER).await.unwrap();

    eventually(300, "1,000 events handled, then handlers held", || {
        projection.distinct() >= 1_000 && projection.holding() > 0
    })
    .await;
    let at_kill = projection.distinct();
    assert!(at_kill < 5_000, "the kill must land while handlers run");
    server.kill();
    killed.store(true, Ordering::SeqCst);
    server.start_again().await.unwrap();
    eventually(600, "all 5,000 events handled", || {
        projection.distinct() == 5_000
    })
    .await;
    let stats = handle.stats();
    handle.shutdown(Duration::from_secs(10)).await;

    let ids = projection.ids();
    let lost = events.iter().filter(|e| !ids.contains(&e.event_id)).count() as u64;
    assert_eq!(lost, 0);
    assert_eq!(
        projection.errors(),
        Vec::<String>::new(),
        "the handler saw errors"
    );
    assert_eq!(stats.dead_lettered, 0, "the outage dead-lettered events");
    assert_eq!(dlq_messages(&client).await, 0, "the DLQ is not empty");
    // What the kill exercised: handler calls held across it, which went on and were
    // acked only once the server was gone. Whether their events come back depends on
    // what the server had persisted when it died (the client queues acks while it
    // reconnects), so redeliveries are reported, not required.
    let held = projection.held();
    assert!(
        held > 0,
        "no handler call spanned the kill: the kill exercised nothing"
    );
    let absorbed = projection.absorbed();
    record(
        Row {
            case: "fault-2-consumer-server-kill",
            area: "faults",
            what: "durable consumer (concurrency 32) running; server SIGKILLed and restarted mid-stream".into(),
            load: "5000 events, 500 people".into(),
            faults: format!(
                "1 server kill (SIGKILL) + restart after {at_kill} handled, handler calls in flight"
            ),
            inputs: 5_000,
            lost,
            duplicated: 0,
            absorbed,
            notes: format!(
                "handler calls held across the kill: {held}; handler errors seen: 0; dead letters: 0; consumer reconnects: {}",
                stats.reconnects
            ),
            ..Row::default()
        },
        started,
    );
}

/// Records which run handled which event, on top of the shared projection. In a run
/// that is going to crash, the `crash_at`-th call rings `crash_now` (the test crashes the
/// run at once, handlers completing and acks on their way), and calls beyond `stall_at`
/// never finish, which bounds what one run can handle.
struct RunHandler {
    run: usize,
    projection: Arc<Projection>,
    log: Arc<Mutex<Vec<(EventId, usize)>>>,
    crash_at: Option<(u64, u64, Arc<tokio::sync::Notify>)>,
    calls: AtomicU64,
}

#[async_trait]
impl StreamingEventHandler for RunHandler {
    async fn handle_event(&self, envelope: StreamingEventEnvelope) -> DomainResult<()> {
        if let Some((crash_at, stall_at, crash_now)) = &self.crash_at {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n == *crash_at {
                crash_now.notify_one();
            }
            if n > *stall_at {
                futures::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.projection.apply(&envelope);
        self.log.lock().unwrap().push((envelope.event_id, self.run));
        Ok(())
    }

    fn name(&self) -> &str {
        "reliability"
    }
}

/// Fault 3. The consumer's runtime (its tasks and its connection) is torn down without
/// any shutdown, mid-batch, 5 times over 5,000 events, then a last run finishes. The
/// union of handled events is all 5,000; an event is handled again only if its ack was
/// lost (the server still counted it as pending after the crash), never twice in one
/// run; the idempotent projection absorbs the repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_process_crashes_lose_nothing_and_repeat_only_unacked_events() {
    const CRASHES: usize = 5;
    // A crashed run handles at most STALL_AT events: 5 x 900 < 5,000, so every run has
    // work and the clean run finishes.
    const CRASH_AT: u64 = 600;
    const STALL_AT: u64 = 900;
    const MAX_ACK_PENDING: i64 = 256;
    let started = Instant::now();
    let server = NatsServer::start().await.unwrap();
    let mut cfg = config(2);
    cfg.consumers[0].max_ack_pending = MAX_ACK_PENDING;
    let client = connect(&server.url(), cfg.clone()).await;
    let events = workload(250, 20);
    publish_all(&client, &events).await;
    let projection = Arc::new(Projection::default());
    let log: Arc<Mutex<Vec<(EventId, usize)>>> = Arc::default();
    let mut pending_after_crash = Vec::new();

    for run in 0..=CRASHES {
        let crash = run < CRASHES;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let crash_now = Arc::new(tokio::sync::Notify::new());
        let handler = RunHandler {
            run,
            projection: projection.clone(),
            log: log.clone(),
            crash_at: crash.then(|| (CRASH_AT, STALL_AT, crash_now.clone())),
            calls: AtomicU64::new(0),
        };
        let url = server.url();
        let cfg = cfg.clone();
        rt.spawn(async move {
            // Its own connection: the crash takes it down with the runtime.
            let client = connect(&url, cfg).await;
            let mut manager = SubscriptionManager::new(client)
                .with_options(SubscriptionOptions::default().concurrency(16));
            manager.register_handler(Arc::new(handler));
            let handle = manager.start_consumer(CONSUMER).await.unwrap();
            let _ = stop_rx.await;
            handle.shutdown(Duration::from_secs(10)).await;
            let _ = done_tx.send(());
        });
        if crash {
            tokio::time::timeout(Duration::from_secs(600), crash_now.notified())
                .await
                .expect("the run never reached its crash point");
            // The crash: every task and the connection are dropped where they stand;
            // acks not yet on the wire are lost.
            rt.shutdown_background();
            drop(stop_tx);
            let stream = client
                .jetstream()
                .get_stream("PERSON_EVENTS")
                .await
                .unwrap();
            let mut pending = 0;
            // The server sees the connection drop; what it still counts as delivered
            // and unacknowledged is what can come back.
            for _ in 0..5 {
                let info = stream.consumer_info(CONSUMER).await.unwrap();
                pending = info.num_ack_pending as u64;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(pending <= MAX_ACK_PENDING as u64);
            // The crash landed mid-batch: messages delivered and not acknowledged.
            assert!(pending > 0, "run {run} crashed with nothing unacknowledged");
            pending_after_crash.push(pending);
            drop(stream);
        } else {
            eventually(600, "all 5,000 events handled", || {
                projection.distinct() == 5_000
            })
            .await;
            stop_tx.send(()).unwrap();
            done_rx.await.unwrap();
            rt.shutdown_background();
        }
    }

    let log = log.lock().unwrap().clone();
    let mut runs_of: HashMap<EventId, Vec<usize>> = HashMap::new();
    for (id, run) in &log {
        runs_of.entry(*id).or_default().push(*run);
    }
    let ids = projection.ids();
    let lost = events.iter().filter(|e| !ids.contains(&e.event_id)).count() as u64;
    assert_eq!(lost, 0, "events never handled");
    let mut repeats_from_run = [0u64; CRASHES + 1];
    for (id, runs) in &runs_of {
        let distinct_runs: HashSet<usize> = runs.iter().copied().collect();
        assert_eq!(
            distinct_runs.len(),
            runs.len(),
            "event {id} handled twice in one run: {runs:?}"
        );
        for r in &runs[..runs.len() - 1] {
            assert!(*r < CRASHES, "event {id} repeated after a clean run");
            repeats_from_run[*r] += 1;
        }
    }
    for (r, pending) in pending_after_crash.iter().enumerate() {
        assert!(
            repeats_from_run[r] <= *pending,
            "run {r} left {} events to be repeated but the server had only {pending} unacknowledged",
            repeats_from_run[r]
        );
    }
    let absorbed = projection.absorbed();
    assert_eq!(absorbed, repeats_from_run.iter().sum::<u64>());
    assert_eq!(projection.distinct(), 5_000);
    record(
        Row {
            case: "fault-3-consumer-crash",
            area: "faults",
            what: "consumer runtime and connection dropped without shutdown, mid-batch, then a clean run".into(),
            load: "5000 events, 250 people, concurrency 16".into(),
            faults: format!("{CRASHES} consumer crashes"),
            inputs: 5_000,
            lost,
            duplicated: 0,
            absorbed,
            notes: format!(
                "repeats per crashed run {:?}, each <= the server's unacked count after that crash {:?}",
                &repeats_from_run[..CRASHES],
                pending_after_crash
            ),
            ..Row::default()
        },
        started,
    );
}
