//! Consumer groups: several instances of one consumer, each partition handled by one
//! instance at a time. The decisions (who owns which partition, when to renew, fence,
//! hand over) are `person_delivery::Group`'s; this file performs them against a
//! JetStream KV bucket (heartbeats and leases) and the workers of each partition.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, Store};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use person_delivery::{Group, GroupAction, GroupConfig, LeaseOutcome};
use person_retry::{BreakerState, DeadLetterSink};
use person_streaming::{
    ConsumerSettings, DeadLetterQueue, StreamingClient, group_lease_key, group_member_key,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::handler::StreamingEventHandler;
use crate::options::SubscriptionOptions;
use crate::stats::{Counters, Stats};
use crate::worker::{Fence, PersonLocks, Worker};

/// The durable consumers of one slot (a partition), one per handler.
#[derive(Debug, Clone)]
pub(crate) struct SlotConsumers {
    /// The partition.
    pub(crate) partition: u32,
    /// Per handler (same order as the handlers).
    pub(crate) settings: Vec<ConsumerSettings>,
    /// Per handler, the consumer of the partition's replayed dead letters; empty for a
    /// group that is one consumer.
    pub(crate) replays: Vec<ConsumerSettings>,
    /// Per handler, the consumer of what was stored before partitions, which the owner
    /// of partition 0 runs too; empty for the other partitions and for a group that is
    /// one consumer.
    pub(crate) before: Vec<ConsumerSettings>,
}

/// Everything a group runner needs.
pub(crate) struct GroupSpec {
    pub(crate) client: StreamingClient,
    pub(crate) group: String,
    pub(crate) handlers: Vec<Arc<dyn StreamingEventHandler>>,
    pub(crate) options: SubscriptionOptions,
    pub(crate) sink: Arc<dyn DeadLetterSink>,
    pub(crate) dlq: Option<DeadLetterQueue>,
    pub(crate) slots: Vec<SlotConsumers>,
    pub(crate) bucket: Store,
    /// Per handler (same order as the handlers): the instance's budget of calls, shared
    /// by every partition it handles.
    pub(crate) permits: Vec<Arc<tokio::sync::Semaphore>>,
}

/// A worker and its task.
type Running = (Arc<Worker>, JoinHandle<()>);

/// The running workers and the counters of the stopped ones.
#[derive(Default)]
struct Shared {
    running: BTreeMap<u32, Vec<Running>>,
    /// Each running slot's lease deadline, shared with its workers.
    fences: BTreeMap<u32, Arc<Fence>>,
    /// Totals left by workers that stopped, per handler name.
    retired: BTreeMap<String, Stats>,
}

/// A running member of a consumer group: its partitions, stats and shutdown.
pub struct GroupHandle {
    instance: String,
    group: String,
    partitions: u32,
    shared: Arc<Mutex<Shared>>,
    slots: Vec<SlotConsumers>,
    stop: Option<oneshot::Sender<Duration>>,
    task: JoinHandle<()>,
}

impl fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupHandle")
            .field("group", &self.group)
            .field("instance", &self.instance)
            .field("partitions", &self.partitions())
            .finish_non_exhaustive()
    }
}

impl GroupHandle {
    /// This instance's name in the group (unique per process start).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The group: the configured durable name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// How many partitions the group has.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// The partitions this instance handles now.
    pub fn partitions(&self) -> Vec<u32> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared
            .running
            .keys()
            .filter_map(|slot| self.slots.get(*slot as usize).map(|s| s.partition))
            .collect()
    }

    /// The durable consumers this instance runs now.
    pub fn consumer_names(&self) -> Vec<String> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared
            .running
            .values()
            .flatten()
            .map(|(w, _)| w.settings.durable_name.clone())
            .collect()
    }

    /// Counters of this instance, over every partition it handles or handled.
    pub fn stats(&self) -> Stats {
        self.handler_stats()
            .into_iter()
            .fold(Stats::default(), |a, (_, s)| a.plus(s))
    }

    /// Counters per handler name.
    pub fn handler_stats(&self) -> Vec<(String, Stats)> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by: BTreeMap<String, Stats> = shared.retired.clone();
        for (w, _) in shared.running.values().flatten() {
            let e = by.entry(w.handler.name().to_owned()).or_default();
            *e = e.plus(w.counters.snapshot());
        }
        by.into_iter().collect()
    }

    /// The circuit breaker state of each running worker, by consumer name.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared
            .running
            .values()
            .flatten()
            .map(|(w, _)| (w.settings.durable_name.clone(), w.breaker_state()))
            .collect()
    }

    /// Leaves the group: each partition's running calls finish within `timeout` and
    /// what they hold is given back (acked or NAKed, as
    /// [`SubscriptionHandle::shutdown`](crate::SubscriptionHandle::shutdown) does),
    /// then its lease is deleted so another instance takes it at once.
    pub async fn shutdown(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(timeout);
        }
        let limit = timeout + Duration::from_secs(15);
        if tokio::time::timeout(limit, &mut self.task).await.is_err() {
            tracing::warn!(group = %self.group, instance = %self.instance, "leaving the group did not finish in time; its leases expire on their own");
            self.task.abort();
        }
    }
}

/// What finished in the background.
enum Done {
    Acquired(u32, LeaseOutcome),
    Renewed(u32, LeaseOutcome),
    Nothing,
}

/// A name for this process in the group: unique per start.
fn instance_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let salt: u32 = rand_salt();
    format!(
        "i{:x}-{}-{salt:08x}",
        nanos & 0xffff_ffff_ffff,
        std::process::id()
    )
}

fn rand_salt() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish() as u32
}

/// Starts this instance's member of the group.
pub(crate) fn spawn(spec: GroupSpec) -> GroupHandle {
    let instance = instance_name();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (stop_tx, stop_rx) = oneshot::channel();
    let partitions = u32::try_from(spec.slots.len()).unwrap_or(u32::MAX).max(1);
    let handle_slots = spec.slots.clone();
    let group = spec.group.clone();
    let task = tokio::spawn(run(spec, instance.clone(), shared.clone(), stop_rx));
    GroupHandle {
        instance,
        group,
        partitions,
        shared,
        slots: handle_slots,
        stop: Some(stop_tx),
        task,
    }
}

/// The KV outcome of a create or update.
fn outcome<E: fmt::Display>(
    r: Result<Result<u64, E>, tokio::time::error::Elapsed>,
    conflict: impl Fn(&E) -> bool,
) -> LeaseOutcome {
    match r {
        Ok(Ok(rev)) => LeaseOutcome::Written(rev),
        Ok(Err(e)) if conflict(&e) => LeaseOutcome::Conflict,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "lease write failed");
            LeaseOutcome::Failed
        }
        Err(_) => LeaseOutcome::Failed,
    }
}

async fn run(
    spec: GroupSpec,
    instance: String,
    shared: Arc<Mutex<Shared>>,
    mut stop: oneshot::Receiver<Duration>,
) {
    let spec = Arc::new(spec);
    let slots = u32::try_from(spec.slots.len()).unwrap_or(u32::MAX);
    let lease = spec.options.group_lease;
    let origin = Instant::now();
    let now = move || origin.elapsed();
    let mut group = Group::new(instance.clone(), GroupConfig::new(slots, lease), now());
    let op_timeout = lease / 4;
    let prefix = format!("{}.", spec.group);
    let mut watch = None;
    let mut ops: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let (stopped_tx, mut stopped_rx) = mpsc::unbounded_channel::<u32>();
    let mut grace = spec.options.handover_grace;
    let mut leaving = false;
    let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timer = tokio::time::sleep_until(origin);
    tokio::pin!(timer);
    tracing::info!(group = %spec.group, %instance, slots, "joining the consumer group");
    loop {
        while let Some(action) = group.poll_action() {
            let kv = spec.bucket.clone();
            match action {
                GroupAction::Heartbeat => {
                    let key = group_member_key(&spec.group, &instance);
                    let value = bytes::Bytes::from(instance.clone());
                    ops.push(Box::pin(async move {
                        let _ = tokio::time::timeout(op_timeout, kv.put(key, value)).await;
                        Done::Nothing
                    }));
                }
                GroupAction::Acquire { slot, expect } => {
                    let key = group_lease_key(&spec.group, slot);
                    let value = bytes::Bytes::from(instance.clone());
                    ops.push(Box::pin(async move {
                        let o = match expect {
                            None => outcome(
                                tokio::time::timeout(op_timeout, kv.create(key, value)).await,
                                |e: &kv::CreateError| {
                                    e.kind() == kv::CreateErrorKind::AlreadyExists
                                },
                            ),
                            Some(rev) => outcome(
                                tokio::time::timeout(op_timeout, kv.update(key, value, rev)).await,
                                |e: &kv::UpdateError| {
                                    e.kind() == kv::UpdateErrorKind::WrongLastRevision
                                },
                            ),
                        };
                        Done::Acquired(slot, o)
                    }));
                }
                GroupAction::Renew { slot, revision } => {
                    let key = group_lease_key(&spec.group, slot);
                    let value = bytes::Bytes::from(instance.clone());
                    ops.push(Box::pin(async move {
                        let o = outcome(
                            tokio::time::timeout(op_timeout, kv.update(key, value, revision)).await,
                            |e: &kv::UpdateError| {
                                e.kind() == kv::UpdateErrorKind::WrongLastRevision
                            },
                        );
                        Done::Renewed(slot, o)
                    }));
                }
                GroupAction::Release { slot, revision } => {
                    let key = group_lease_key(&spec.group, slot);
                    ops.push(Box::pin(async move {
                        let _ = tokio::time::timeout(
                            op_timeout,
                            kv.delete_expect_revision(key, Some(revision)),
                        )
                        .await;
                        Done::Nothing
                    }));
                }
                GroupAction::Leave => {
                    let key = group_member_key(&spec.group, &instance);
                    ops.push(Box::pin(async move {
                        let _ = tokio::time::timeout(op_timeout, kv.delete(key)).await;
                        Done::Nothing
                    }));
                }
                GroupAction::Start { slot } => {
                    let fence = Arc::new(Fence::new(origin));
                    if let Some(until) = group.valid_until(slot) {
                        fence.set(until);
                    }
                    start_slot(&spec, &shared, slot, drained.clone(), fence);
                }
                GroupAction::Stop { slot, fence } => {
                    let workers = {
                        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        // Fenced: no call from now on. Draining: the lease is still
                        // held and renewed, so the deadline keeps moving with it until
                        // the workers have stopped.
                        if fence && let Some(f) = s.fences.remove(&slot) {
                            f.set(Duration::ZERO);
                        }
                        s.running.remove(&slot).unwrap_or_default()
                    };
                    let grace = if fence { Duration::ZERO } else { grace };
                    if fence {
                        tracing::warn!(group = %spec.group, slot, "lease lost or not renewed in time: stopping the partition's handlers at once");
                    }
                    for (w, _) in &workers {
                        w.request_stop(grace);
                    }
                    let shared = shared.clone();
                    let tx = stopped_tx.clone();
                    let limit = grace + spec.options.fetch_expiry + Duration::from_secs(5);
                    tokio::spawn(async move {
                        for (w, task) in workers {
                            let _ = tokio::time::timeout(limit, task).await;
                            let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                            let e = s.retired.entry(w.handler.name().to_owned()).or_default();
                            *e = e.plus(w.counters.snapshot().totals());
                        }
                        let _ = tx.send(slot);
                    });
                }
                other => tracing::debug!(?other, "unknown group action ignored"),
            }
        }
        if group.is_done() {
            break;
        }
        // Renewals move each running slot's deadline on.
        for (slot, fence) in &shared.lock().unwrap_or_else(PoisonError::into_inner).fences {
            fence.set(group.valid_until(*slot).unwrap_or_default());
        }
        if watch.is_none() {
            match spec.bucket.watch_with_history(format!("{}>", prefix)).await {
                Ok(w) => watch = Some(w),
                Err(e) => {
                    tracing::warn!(group = %spec.group, error = %e, "cannot watch the group's bucket; retrying");
                }
            }
        }
        if let Some(t) = group.poll_timeout() {
            timer.as_mut().reset(origin + t);
        }
        tokio::select! {
            biased;
            Some(done) = ops.next(), if !ops.is_empty() => {
                let t = now();
                match done {
                    Done::Acquired(slot, o) => group.on_acquired(t, slot, o),
                    Done::Renewed(slot, o) => group.on_renewed(t, slot, o),
                    Done::Nothing => {}
                }
            }
            Some(slot) = stopped_rx.recv() => {
                // Before the group may start the slot again (with a fence of its own).
                shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .fences
                    .remove(&slot);
                group.on_stopped(now(), slot);
            }
            entry = next_entry(&mut watch) => match entry {
                Some(Ok(e)) => observe(&mut group, now(), &prefix, &e, slots),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "group watch failed; watching again");
                    watch = None;
                }
                None => watch = None,
            },
            g = &mut stop, if !leaving => {
                leaving = true;
                if let Ok(g) = g {
                    grace = g;
                }
                group.on_shutdown(now());
            }
            () = &mut timer => group.on_timeout(now()),
        }
        if watch.is_none() {
            // A failed watch is opened again after a short pause.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every release and the heartbeat's deletion are sent before returning.
    while tokio::time::timeout(op_timeout, ops.next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    tracing::info!(group = %spec.group, %instance, "left the consumer group");
}

async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Feeds one change of the bucket to the group.
fn observe(group: &mut Group, now: Duration, prefix: &str, e: &kv::Entry, slots: u32) {
    let Some(rest) = e.key.strip_prefix(prefix) else {
        return;
    };
    let deleted = matches!(e.operation, Operation::Delete | Operation::Purge);
    if let Some(member) = rest.strip_prefix("m.") {
        if deleted {
            group.on_member_gone(now, member);
        } else {
            group.on_member(now, member, e.revision);
        }
    } else if let Some(slot) = rest.strip_prefix("l.").and_then(|s| s.parse::<u32>().ok()) {
        if slot >= slots {
            return;
        }
        let owner = (!deleted).then(|| String::from_utf8_lossy(&e.value).into_owned());
        group.on_lease(now, slot, owner.as_deref(), e.revision);
    }
}

/// What one worker of a slot consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Run {
    /// The partition's events.
    Events,
    /// The partition's replayed dead letters, recorded under this consumer.
    Replays(String),
    /// What was stored before partitions.
    Before,
}

/// Starts the workers of `slot`. A partition's workers wait until the consumer of
/// what was stored before partitions has nothing left (each person's older events
/// come first).
fn start_slot(
    spec: &Arc<GroupSpec>,
    shared: &Arc<Mutex<Shared>>,
    slot: u32,
    drained: Arc<std::sync::atomic::AtomicBool>,
    fence: Arc<Fence>,
) {
    let Some(consumers) = spec.slots.get(slot as usize) else {
        return;
    };
    // What was stored before partitions: run by partition 0's owner, waited for by
    // every partition.
    let legacy = spec
        .slots
        .first()
        .map(|s| s.before.clone())
        .filter(|b| !b.is_empty());
    tracing::info!(group = %spec.group, partition = consumers.partition, "handling a partition");
    let mut workers = Vec::new();
    // Per handler: the partition's events (after what came before partitions), the
    // partition's replayed dead letters, and on partition 0 what came before.
    let mut runs = Vec::new();
    for (i, handler) in spec.handlers.iter().enumerate() {
        let locks = Arc::new(PersonLocks::default());
        let permits = spec.permits.get(i);
        if let Some(events) = consumers.settings.get(i) {
            runs.push((handler, events, Run::Events, permits, Some(locks.clone())));
            if let Some(replays) = consumers.replays.get(i) {
                let of = events.durable_name.clone();
                runs.push((handler, replays, Run::Replays(of), permits, Some(locks)));
            }
        }
        if let Some(before) = consumers.before.get(i) {
            runs.push((handler, before, Run::Before, permits, None));
        }
    }
    for (handler, settings, run, permits, locks) in runs {
        let mut options = spec.options.clone();
        options.max_in_hand = options
            .max_in_hand
            .min(usize::try_from(settings.max_ack_pending).unwrap_or(usize::MAX))
            .max(1);
        let worker = Worker::new(
            spec.client.clone(),
            spec.client.jetstream().clone(),
            spec.client.config().stream.name.clone(),
            settings.clone(),
            handler.clone(),
            options,
            spec.sink.clone(),
            spec.dlq.clone(),
            Arc::new(Counters::default()),
        );
        let _ = worker.on_breaker_open.set(pause_hook(spec, handler.name()));
        let _ = worker.fence.set(fence.clone());
        if let Some(permits) = permits {
            let _ = worker.permits.set(permits.clone());
        }
        if let Some(locks) = locks {
            let _ = worker.person_locks.set(locks);
        }
        if let Run::Replays(of) = &run {
            let _ = worker.letters_of.set(of.clone());
        }
        let w = worker.clone();
        let legacy = legacy.clone().filter(|_| run == Run::Events);
        let client = spec.client.clone();
        let drained = drained.clone();
        let task = tokio::spawn(async move {
            if let Some(legacy) = legacy {
                wait_for_legacy(&client, &legacy, &drained, &w).await;
            }
            w.run().await;
        });
        workers.push((worker, task));
    }
    let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
    s.running.insert(slot, workers);
    s.fences.insert(slot, fence);
}

/// Waits until every pre-partition consumer of the group has delivered and settled
/// everything (or the worker is asked to stop).
async fn wait_for_legacy(
    client: &StreamingClient,
    legacy: &[ConsumerSettings],
    drained: &std::sync::atomic::AtomicBool,
    worker: &Worker,
) {
    use std::sync::atomic::Ordering;
    let mut logged = false;
    while !drained.load(Ordering::Relaxed) && !worker.stop_requested() {
        let mut left = 0u64;
        let mut known = true;
        for c in legacy {
            if let Err(e) = client.ensure_consumer(c).await {
                tracing::debug!(error = %e, consumer = %c.durable_name, "cannot ensure the pre-partition consumer");
                known = false;
                continue;
            }
            match client
                .jetstream()
                .get_stream_no_info(&client.config().stream.name)
                .await
            {
                Ok(stream) => match stream.consumer_info(&c.durable_name).await {
                    Ok(info) => {
                        left += info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0);
                    }
                    Err(_) => known = false,
                },
                Err(_) => known = false,
            }
        }
        if known && left == 0 {
            drained.store(true, Ordering::Relaxed);
            break;
        }
        if !logged {
            logged = true;
            tracing::info!(
                left,
                "waiting for events stored before partitions to be handled first"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = worker.stopped() => {}
        }
    }
}

/// When a handler's breaker opens in one instance, every consumer of that handler in
/// the group is paused on the server until the breaker's open timeout has passed, so
/// the other instances stop pulling too. The server ends the pause by itself at that
/// time, so an instance that dies while the group is paused leaves nothing behind.
fn pause_hook(spec: &Arc<GroupSpec>, handler: &str) -> crate::worker::BreakerHook {
    let index = spec
        .handlers
        .iter()
        .position(|h| h.name() == handler)
        .unwrap_or(0);
    let names: Vec<String> = spec
        .slots
        .iter()
        .flat_map(|s| {
            [
                s.settings.get(index),
                s.replays.get(index),
                s.before.get(index),
            ]
        })
        .flatten()
        .map(|c| c.durable_name.clone())
        .collect();
    let client = spec.client.clone();
    let open = spec.options.breaker.open_timeout();
    let group = spec.group.clone();
    let last = Arc::new(Mutex::new(None::<std::time::Instant>));
    Arc::new(move || {
        {
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < open / 2) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let until = chrono::Utc::now()
            + chrono::Duration::from_std(open).unwrap_or(chrono::Duration::seconds(30));
        let client = client.clone();
        let names = names.clone();
        let group = group.clone();
        tokio::spawn(async move {
            tracing::warn!(%group, consumers = names.len(), %until, "breaker opened: pausing the whole group");
            for name in &names {
                if let Err(e) = client.pause_consumer(name, until).await {
                    tracing::warn!(%group, consumer = %name, error = %e, "cannot pause a consumer of the group");
                }
            }
        });
    })
}

/// The slots of a group: its partitions, each with its consumers (per handler);
/// partition 0 also with the consumers of what was stored before partitions.
pub(crate) fn slots_of(
    client: &StreamingClient,
    settings: &ConsumerSettings,
    handler_consumers: &[ConsumerSettings],
) -> Result<Vec<SlotConsumers>, person_streaming::ConfigError> {
    if settings.partitions <= 1 {
        return Ok(vec![SlotConsumers {
            partition: 0,
            settings: handler_consumers.to_vec(),
            replays: Vec::new(),
            before: Vec::new(),
        }]);
    }
    let groups = handler_consumers
        .iter()
        .map(|c| client.config().consumer_group(c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((0..settings.partitions)
        .map(|k| SlotConsumers {
            partition: k,
            settings: groups
                .iter()
                .map(|g| g.partitions[k as usize].clone())
                .collect(),
            replays: groups
                .iter()
                .map(|g| g.replays[k as usize].clone())
                .collect(),
            before: if k == 0 {
                groups.iter().map(|g| g.legacy.clone()).collect()
            } else {
                Vec::new()
            },
        })
        .collect())
}

/// Opens the group's bucket, creating it as `ensure` would when it is missing; a
/// cluster still electing leaders or placing replicas is waited for (up to 30 s).
pub(crate) async fn bucket(client: &StreamingClient) -> Result<Store, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut delay = Duration::from_millis(100);
    loop {
        match open_bucket(client).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::debug!(error = %e, "the group bucket is not available yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn open_bucket(client: &StreamingClient) -> Result<Store, String> {
    let name = client.config().groups_bucket();
    let js = client.jetstream();
    match js.get_key_value(&name).await {
        Ok(s) => Ok(s),
        Err(_) => {
            let stream = &client.config().stream;
            js.create_key_value(kv::Config {
                bucket: name.clone(),
                // The same settings as `ensure`, so that a race between the two agrees.
                description: format!(
                    "consumer group members and partition leases of {}",
                    stream.name
                ),
                history: 1,
                max_age: Duration::from_secs(3600),
                storage: match stream.storage {
                    person_streaming::Storage::Memory => {
                        async_nats::jetstream::stream::StorageType::Memory
                    }
                    person_streaming::Storage::File => {
                        async_nats::jetstream::stream::StorageType::File
                    }
                },
                num_replicas: stream.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create the group bucket {name}: {e}"))
        }
    }
}
