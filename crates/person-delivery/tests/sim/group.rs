//! Deterministic simulation of consumer-group membership and leases: [`Group`]s driven
//! against a model of the JetStream KV bucket the runtime keeps them in.
//!
//! - The store: one revision counter for every write and delete; a create succeeds
//!   only on an absent or deleted key, an update or a delete with an expected revision
//!   only when it is the key's last one; heartbeats are plain puts. Each member
//!   watches it all: every change, in store order, each after its own delay; a watch
//!   reopens with the last entry per key.
//! - The network: requests and replies take random delays; in the fault window they
//!   are lost, or slower than the request timeout (the caller reports `Failed`, the
//!   write may still be stored later), and a member's link may degrade (answers come
//!   about when the caller gives up) and then be cut off for a while. In calm, delays
//!   are small, nothing is lost, and a member's requests are stored in the order sent
//!   (one connection to one stream).
//! - Members: join at random times, leave gracefully (driven until done), are killed
//!   (workers gone at once, keys left behind) and may come back under a new name;
//!   clocks have different offsets, timers fire up to a quarter of the margin late in
//!   the fault window, a worker takes up to half the margin to stop, as the group's
//!   documented assumptions allow.
//!
//! Checked after every event: no slot has active workers (started, not yet stopped)
//! on two members at once; a worker starts only while the store names its member at a
//! revision that member wrote; no action the runtime would find nonsensical (starting
//! a running slot, stopping one that is not running, renewing or releasing a revision
//! the member never wrote, releasing a slot whose workers run, acquiring or starting
//! while shutting down, anything after leaving). Once the fault window ends, every
//! slot must run on exactly one live member named by the store, each member running
//! its fair number of slots and nothing changing hands any more, within
//! [`SETTLE_LEASES`] leases; then one more change may be made in calm (a graceful
//! shutdown, a kill or a join) which must settle within the same bound, a shutdown
//! finishing within [`SHUTDOWN_LEASES`] with its leases and heartbeat deleted.
//!
//! - `GROUP_SIM_SEEDS=N` sets how many schedules `group_schedules_keep_the_contract`
//!   explores (default 20,000), from `GROUP_SIM_FIRST` (default 0).
//! - `GROUP_SIM_SEED=S` makes `one_group_schedule` replay seed S with a trace
//!   (`GROUP_SIM_TRACE_LINES` sets how much of it is printed, default 400 lines).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use person_delivery::{Group, GroupAction, GroupConfig, LeaseOutcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{env_u64, explore, fail_on, replay};

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Once calm begins (or a change is made in calm), every slot runs on exactly one live
/// member, shares are balanced and nothing moves any more within this many leases
/// (the most measured over a million schedules is under 2). The slow cases: a write
/// sent before calm and stored up to half a lease later must stay unrenewed for a
/// lease on an observer's clock before it is taken over, checked once a tick; a
/// killed member's heartbeat ages out after a lease while its leases expire.
const SETTLE_LEASES: f64 = 2.5;

/// A graceful shutdown in calm finishes (every worker drained, every lease deleted,
/// the heartbeat deleted) within this many leases: an acquire in flight is answered
/// within the request timeout (a quarter lease), a drain takes at most an eighth.
const SHUTDOWN_LEASES: f64 = 0.5;

/// Seeds that found bugs in the group; each stays a regression test: 15 and 2502 (a
/// key naming a member that holds nothing was never released: an acquire's write seen
/// while in flight, then its reply lost), 337 (a release overtaken by the renewal in
/// flight left the key to expire after a shutdown).
const REGRESSIONS: &[u64] = &[15, 337, 2502];

/// A membership change made once the group has settled in calm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    Nothing,
    Shutdown,
    Crash,
    Join,
}

/// The shape and faults of one schedule, drawn from its seed.
#[derive(Debug, Clone)]
pub(crate) struct GroupScenario {
    pub(crate) seed: u64,
    pub(crate) slots: u32,
    pub(crate) lease: Duration,
    /// Members at the start (joining within the first tick).
    pub(crate) members: usize,
    /// Joins, kills (with or without a replacement) and graceful shutdowns in the fault
    /// window, by time.
    pub(crate) joins: Vec<Duration>,
    pub(crate) crashes: Vec<(Duration, bool)>,
    pub(crate) leaves: Vec<Duration>,
    pub(crate) watch_restarts: Vec<Duration>,
    /// A member's link degrades from a time: the replies to it take about the request
    /// timeout until it is told a lease write succeeded, then it is cut off
    /// from the store (requests and replies lost, its watch held back) for a while
    /// (the worst moment: it counts on that late answer for its whole validity).
    pub(crate) partitions: Vec<(Duration, Duration)>,
    /// End of the fault window.
    pub(crate) calm_at: Duration,
    pub(crate) lost_requests: f64,
    pub(crate) lost_replies: f64,
    /// Chance that a request or reply is slower than the request timeout.
    pub(crate) slow: f64,
    /// Longest watch delay in the fault window.
    pub(crate) watch_lag: Duration,
    /// Members' clocks have different offsets.
    pub(crate) skew: bool,
    /// Timers fire late (up to a quarter of the margin) in the fault window.
    pub(crate) stalls: bool,
    pub(crate) then: Then,
}

impl GroupScenario {
    pub(crate) fn from_seed(seed: u64) -> Self {
        let mut r = StdRng::seed_from_u64(seed ^ 0x0067_0a0b_5117_e001);
        let slots = [1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8][r.random_range(0..12)];
        let lease = MS * [2000, 4000, 4000, 6000][r.random_range(0..4)];
        let l = lease.as_millis() as u64;
        let members = r.random_range(1..=4);
        let calm_at = if r.random_bool(0.9) {
            ms(r.random_range(0..=2 * l))
        } else {
            Duration::ZERO
        };
        let c = calm_at.as_millis() as u64;
        let when = |r: &mut StdRng| ms(r.random_range(0..c.max(1)));
        let count = |r: &mut StdRng, p: f64, max: u32| {
            if c > 0 && r.random_bool(p) {
                r.random_range(1..=max)
            } else {
                0
            }
        };
        let joins = (0..count(&mut r, 0.3, 2)).map(|_| when(&mut r)).collect();
        let crashes = (0..count(&mut r, 0.35, 2))
            .map(|_| (when(&mut r), r.random_bool(0.6)))
            .collect();
        let leaves = (0..count(&mut r, 0.25, 1)).map(|_| when(&mut r)).collect();
        let watch_restarts = (0..count(&mut r, 0.15, 2)).map(|_| when(&mut r)).collect();
        let partitions = (0..count(&mut r, 0.3, 2))
            .map(|_| (when(&mut r), ms(r.random_range(1..=2 * l))))
            .collect();
        let p = |r: &mut StdRng, max: f64| {
            if r.random_bool(0.5) {
                r.random_range(0.0..max)
            } else {
                0.0
            }
        };
        let lost_requests = p(&mut r, 0.2);
        let lost_replies = p(&mut r, 0.2);
        let slow = p(&mut r, 0.1);
        let watch_lag = MS * [20, 200, 1000][r.random_range(0..3)];
        let then = [Then::Nothing, Then::Shutdown, Then::Crash, Then::Join][r.random_range(0..4)];
        Self {
            seed,
            slots,
            lease,
            members,
            joins,
            crashes,
            leaves,
            watch_restarts,
            partitions,
            calm_at,
            lost_requests,
            lost_replies,
            slow,
            watch_lag,
            skew: r.random_bool(0.3),
            stalls: r.random_bool(0.3),
            then,
        }
    }
}

/// Totals over schedules, printed by the test.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GroupTally {
    pub(crate) schedules: u64,
    pub(crate) joins: u64,
    pub(crate) graceful: u64,
    pub(crate) crashes: u64,
    pub(crate) lost_requests: u64,
    pub(crate) lost_replies: u64,
    pub(crate) late_writes: u64,
    pub(crate) watch_restarts: u64,
    pub(crate) partitions: u64,
    pub(crate) conflicts: u64,
    pub(crate) takeovers: u64,
    pub(crate) fences: u64,
    pub(crate) handovers: u64,
    pub(crate) max_settle_calm: f64,
    pub(crate) max_settle_crash: f64,
    pub(crate) max_settle_join: f64,
    pub(crate) max_settle_shutdown: f64,
    pub(crate) max_shutdown: f64,
}

impl GroupTally {
    pub(crate) fn add(&mut self, o: &GroupTally) {
        let sums: [(&mut u64, u64); 13] = [
            (&mut self.schedules, o.schedules),
            (&mut self.joins, o.joins),
            (&mut self.graceful, o.graceful),
            (&mut self.crashes, o.crashes),
            (&mut self.lost_requests, o.lost_requests),
            (&mut self.lost_replies, o.lost_replies),
            (&mut self.late_writes, o.late_writes),
            (&mut self.watch_restarts, o.watch_restarts),
            (&mut self.partitions, o.partitions),
            (&mut self.conflicts, o.conflicts),
            (&mut self.takeovers, o.takeovers),
            (&mut self.fences, o.fences),
            (&mut self.handovers, o.handovers),
        ];
        for (a, b) in sums {
            *a += b;
        }
        let maxes: [(&mut f64, f64); 5] = [
            (&mut self.max_settle_calm, o.max_settle_calm),
            (&mut self.max_settle_crash, o.max_settle_crash),
            (&mut self.max_settle_join, o.max_settle_join),
            (&mut self.max_settle_shutdown, o.max_settle_shutdown),
            (&mut self.max_shutdown, o.max_shutdown),
        ];
        for (a, b) in maxes {
            *a = a.max(b);
        }
    }
}

/// A key of the bucket: a member's heartbeat or a slot's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Member(usize),
    Lease(u32),
}

/// How a write to the store is made.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// Unconditional put (a heartbeat).
    Put,
    /// Only when the key is absent or deleted.
    Create,
    /// Only when the key's last revision is this one.
    Update(u64),
    /// A delete, expecting the key's last revision to be this one when given.
    Delete(Option<u64>),
}

/// What the caller reports back for a request.
#[derive(Debug, Clone, Copy)]
enum Report {
    Acquired(u32),
    Renewed(u32),
}

#[derive(Debug)]
enum Ev {
    /// A request reaches the store.
    Arrive {
        from: usize,
        op: u64,
        key: Key,
        write: Write,
    },
    /// The store's answer reaches the caller.
    Reply {
        to: usize,
        op: u64,
        outcome: LeaseOutcome,
    },
    /// The request timeout of `op`.
    Expire {
        to: usize,
        op: u64,
    },
    /// A change of the store reaches a member's watch.
    Watch {
        to: usize,
        epoch: u32,
        key: Key,
        /// The member it names; None when deleted.
        value: Option<usize>,
        revision: u64,
    },
    /// A slot's workers have stopped.
    Stopped {
        m: usize,
        slot: u32,
        generation: u64,
    },
    Join,
    Crash {
        replace: bool,
    },
    Shutdown,
    WatchRestart,
    Partition {
        length: Duration,
    },
    Calm,
    /// A member that left in calm should have left nothing in the store by now.
    Check {
        m: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    Idle,
    Running,
    Stopping,
}

struct Member {
    name: String,
    group: Group,
    /// Its clock reads the global time plus this.
    offset: Duration,
    /// Neither killed nor done.
    alive: bool,
    shutdown_at: Option<Duration>,
    done_at: Option<Duration>,
    /// Per slot, its workers as the runtime runs them.
    workers: Vec<Worker>,
    /// Per slot, counts stops, so a stop completion is matched to its stop.
    generation: Vec<u64>,
    /// The latest delivery scheduled on the watch (deliveries are in order).
    watch_at: Duration,
    /// Counts watch openings; deliveries of an earlier one are dropped.
    epoch: u32,
    /// Requests waiting for a reply: op -> what to report.
    ops: BTreeMap<u64, Report>,
    /// Per slot, the revisions of lease writes of this member that were stored.
    written: Vec<BTreeSet<u64>>,
    /// The timer: its local target and when it fires.
    timer: Option<(Duration, Duration)>,
    /// It asked to leave (its heartbeat deleted).
    left: bool,
    /// When its latest request sent in calm reaches the store.
    sent_at: Duration,
    /// Cut off from the store until then.
    cut_until: Duration,
    /// Its link is slow, to be cut off for this long once told a lease write succeeded.
    cut_next: Option<Duration>,
}

impl Member {
    fn active(&self, slot: u32) -> bool {
        self.alive && self.workers[slot as usize] != Worker::Idle
    }
}

/// One liveness check: from `start`, the group must settle within `bound` and stay so
/// for `confirm`.
struct Phase {
    kind: Then,
    start: Duration,
    bound: Duration,
    stable_since: Option<Duration>,
}

pub(crate) struct GroupSim {
    sc: GroupScenario,
    r: StdRng,
    now: Duration,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Ev>>,
    order: u64,
    next_op: u64,
    rev: u64,
    /// Key -> (the member it names or None when deleted, revision).
    store: BTreeMap<Key, (Option<usize>, u64)>,
    members: Vec<Member>,
    /// Members' names, by index.
    names: Vec<String>,
    phase: Option<Phase>,
    /// A lease or worker changed hands since the last check.
    churn: bool,
    finished: bool,
    pub(crate) tally: GroupTally,
    pub(crate) trace: Option<String>,
}

impl GroupSim {
    pub(crate) fn new(sc: GroupScenario, trace: bool) -> Self {
        let r = StdRng::seed_from_u64(sc.seed);
        let mut sim = Self {
            r,
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            order: 0,
            next_op: 0,
            rev: 0,
            store: BTreeMap::new(),
            members: Vec::new(),
            names: Vec::new(),
            phase: None,
            churn: false,
            finished: false,
            tally: GroupTally {
                schedules: 1,
                ..GroupTally::default()
            },
            trace: trace.then(String::new),
            sc,
        };
        for _ in 0..sim.sc.members {
            let t = ms(sim.r.random_range(0..=sim.config().tick.as_millis() as u64));
            sim.at(t, Ev::Join);
        }
        for t in sim.sc.joins.clone() {
            sim.at(t, Ev::Join);
        }
        for (t, replace) in sim.sc.crashes.clone() {
            sim.at(t, Ev::Crash { replace });
        }
        for t in sim.sc.leaves.clone() {
            sim.at(t, Ev::Shutdown);
        }
        for t in sim.sc.watch_restarts.clone() {
            sim.at(t, Ev::WatchRestart);
        }
        for (t, length) in sim.sc.partitions.clone() {
            sim.at(t, Ev::Partition { length });
        }
        let calm = sim.sc.calm_at;
        sim.at(calm, Ev::Calm);
        sim
    }

    fn config(&self) -> GroupConfig {
        GroupConfig::new(self.sc.slots, self.sc.lease)
    }

    /// The request timeout the runtime uses.
    fn op_timeout(&self) -> Duration {
        self.sc.lease / 4
    }

    fn margin(&self) -> Duration {
        self.config().margin
    }

    fn faulty(&self) -> bool {
        self.now < self.sc.calm_at
    }

    fn log(&mut self, f: impl FnOnce(&Self) -> String) {
        if self.trace.is_some() {
            let line = f(self);
            let now = self.now.as_secs_f64();
            if let Some(t) = &mut self.trace {
                let _ = writeln!(t, "{now:>9.3}s {line}");
            }
        }
    }

    fn key_name(&self, key: Key) -> String {
        match key {
            Key::Member(m) => format!("m.{}", self.members[m].name),
            Key::Lease(slot) => format!("l.{slot}"),
        }
    }

    fn value_name(&self, value: Option<usize>) -> &str {
        value.map_or("-", |m| self.members[m].name.as_str())
    }

    fn at(&mut self, t: Duration, ev: Ev) {
        self.order += 1;
        self.events.push(Some(ev));
        self.queue.push(Reverse((
            t.max(self.now),
            self.order,
            self.events.len() - 1,
        )));
    }

    fn local(&self, m: usize) -> Duration {
        self.now + self.members[m].offset
    }

    fn fail(&self, what: String) -> String {
        format!("at {:.3}s: {what}", self.now.as_secs_f64())
    }

    /// A one-way network delay to or from member `m`.
    fn delay(&mut self, m: usize, reply: bool) -> Duration {
        if !self.faulty() {
            return ms(self.r.random_range(1..=10));
        }
        if reply && self.members[m].cut_next.is_some() {
            // A degrading link: answers come about when the caller gives up.
            let t = self.op_timeout().as_millis() as u64;
            return ms(self.r.random_range(t / 2..=t * 5 / 4));
        }
        if self.sc.slow > 0.0 && self.r.random_bool(self.sc.slow) {
            // Around the request timeout: answered just in time, or stored too late.
            let t = self.op_timeout().as_millis() as u64;
            return ms(self.r.random_range(t * 3 / 4..=t * 3 / 2));
        }
        ms(self.r.random_range(1..=60))
    }

    fn watch_delay(&mut self) -> Duration {
        if !self.faulty() {
            return ms(self.r.random_range(1..=10));
        }
        let lag = self.sc.watch_lag.as_millis() as u64;
        ms(self.r.random_range(1..=lag))
    }

    /// Runs the schedule to the end; an error names the broken promise.
    pub(crate) fn run(&mut self) -> Result<(), String> {
        let mut steps: u64 = 0;
        let cap = 400_000;
        loop {
            if self.finished {
                return Ok(());
            }
            let next_ev = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next_timer = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.alive)
                .filter_map(|(i, m)| m.timer.map(|(_, due)| (due, i)))
                .min();
            steps += 1;
            if steps > cap {
                return Err(self.fail(format!(
                    "runaway: over {cap} events (a busy loop without progress)"
                )));
            }
            match (next_ev, next_timer) {
                // The last member left: nothing runs, nothing is due.
                (None, None) => {
                    return match self.settled() {
                        Ok(()) if self.phase.is_some() => Ok(()),
                        Ok(()) => Err(self.fail("nothing left to happen before calm".into())),
                        Err(e) => Err(self.fail(format!("nothing left to happen: {e}"))),
                    };
                }
                (Some(te), Some((tt, m))) if tt <= te => self.fire_timer(tt, m)?,
                (None, Some((tt, m))) => self.fire_timer(tt, m)?,
                _ => {
                    let Reverse((t, _, idx)) = self.queue.pop().expect("peeked");
                    self.now = t;
                    let ev = self.events[idx].take().expect("event taken once");
                    self.handle(ev)?;
                }
            }
            self.check()?;
        }
    }

    fn fire_timer(&mut self, t: Duration, m: usize) -> Result<(), String> {
        self.now = t;
        self.members[m].timer = None;
        let now = self.local(m);
        self.members[m].group.on_timeout(now);
        self.drive(m)
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Arrive {
                from,
                op,
                key,
                write,
            } => self.arrive(from, op, key, write),
            Ev::Reply { to, op, .. } if self.members[to].cut_until > self.now => {
                self.tally.lost_replies += 1;
                self.log(|_| format!("the reply to request {op} is lost (cut off)"));
                Ok(())
            }
            Ev::Reply { to, op, outcome } => self.report(to, op, outcome),
            Ev::Expire { to, op } => self.report(to, op, LeaseOutcome::Failed),
            Ev::Watch {
                to,
                epoch,
                key,
                value,
                revision,
            } => {
                let m = &self.members[to];
                if !m.alive || m.epoch != epoch {
                    return Ok(());
                }
                self.observe(to, key, value, revision)
            }
            Ev::Stopped {
                m,
                slot,
                generation,
            } => {
                let mem = &mut self.members[m];
                if !mem.alive || mem.generation[slot as usize] != generation {
                    return Ok(());
                }
                mem.workers[slot as usize] = Worker::Idle;
                self.log(|s| format!("{}: slot {slot} stopped", s.members[m].name));
                let now = self.local(m);
                self.members[m].group.on_stopped(now, slot);
                self.drive(m)
            }
            Ev::Join => self.join(),
            Ev::Crash { replace } => {
                let Some(m) = self.pick(|m| m.alive) else {
                    return Ok(());
                };
                self.crash(m);
                if replace {
                    let lease = self.sc.lease.as_millis() as u64;
                    let t = (self.now + ms(self.r.random_range(0..=lease))).min(self.sc.calm_at);
                    self.at(t, Ev::Join);
                }
                Ok(())
            }
            Ev::Shutdown => {
                let Some(m) = self.pick(|m| m.alive && m.shutdown_at.is_none()) else {
                    return Ok(());
                };
                self.shutdown(m)
            }
            Ev::WatchRestart => {
                let Some(m) = self.pick(|m| m.alive) else {
                    return Ok(());
                };
                self.tally.watch_restarts += 1;
                self.log(|s| format!("{}: watch restarts", s.names[m]));
                self.open_watch(m, Duration::from_millis(50));
                Ok(())
            }
            Ev::Partition { length } => {
                let Some(m) = self.pick(|m| m.alive) else {
                    return Ok(());
                };
                self.tally.partitions += 1;
                self.members[m].cut_next = Some(length);
                Ok(())
            }
            Ev::Calm => {
                self.log(|_| "calm: no more faults or membership changes".into());
                if !self
                    .members
                    .iter()
                    .any(|m| m.alive && m.shutdown_at.is_none())
                {
                    self.join()?;
                }
                self.begin(Then::Nothing);
                Ok(())
            }
            Ev::Check { m } => {
                let name = &self.names[m];
                for (key, (value, rev)) in &self.store {
                    if *value == Some(m) && matches!(key, Key::Lease(_)) {
                        return Err(self.fail(format!(
                            "shutdown: {name} left in calm but {} still names it (revision {rev}), \
                             so the next owner waits a lease",
                            self.key_name(*key)
                        )));
                    }
                }
                if self
                    .store
                    .get(&Key::Member(m))
                    .is_some_and(|(v, _)| v.is_some())
                {
                    return Err(self.fail(format!(
                        "shutdown: {name} left in calm but its heartbeat was not deleted"
                    )));
                }
                Ok(())
            }
        }
    }

    fn pick(&mut self, f: impl Fn(&Member) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.members.len())
            .filter(|&i| f(&self.members[i]))
            .collect();
        (!c.is_empty()).then(|| c[self.r.random_range(0..c.len())])
    }

    fn join(&mut self) -> Result<(), String> {
        let idx = self.members.len();
        let name = format!("{:03x}{idx}", self.r.random_range(0..0x1000u32));
        let offset = if self.sc.skew {
            ms(self.r.random_range(0..30_000))
        } else {
            Duration::ZERO
        };
        self.tally.joins += 1;
        self.log(|_| format!("{name} joins"));
        let group = Group::new(name.clone(), self.config(), self.now + offset);
        self.names.push(name.clone());
        let slots = self.sc.slots as usize;
        self.members.push(Member {
            name,
            group,
            offset,
            alive: true,
            shutdown_at: None,
            done_at: None,
            workers: vec![Worker::Idle; slots],
            generation: vec![0; slots],
            watch_at: self.now,
            epoch: 0,
            ops: BTreeMap::new(),
            written: vec![BTreeSet::new(); slots],
            timer: None,
            left: false,
            sent_at: Duration::ZERO,
            cut_until: Duration::ZERO,
            cut_next: None,
        });
        // The runtime performs the first actions, then opens its watch.
        self.drive(idx)?;
        self.open_watch(idx, Duration::ZERO);
        Ok(())
    }

    /// Opens (or reopens) a member's watch with the store's last entry per key.
    fn open_watch(&mut self, m: usize, pause: Duration) {
        self.members[m].epoch += 1;
        self.members[m].watch_at = self.now + pause;
        let mut entries: Vec<(u64, Key, Option<usize>)> = self
            .store
            .iter()
            .map(|(k, (v, rev))| (*rev, *k, *v))
            .collect();
        entries.sort();
        for (revision, key, value) in entries {
            self.deliver(m, key, value, revision);
        }
    }

    fn deliver(&mut self, m: usize, key: Key, value: Option<usize>, revision: u64) {
        let d = self.watch_delay();
        let t = (self.now + d)
            .max(self.members[m].watch_at)
            .max(self.members[m].cut_until);
        self.members[m].watch_at = t;
        let epoch = self.members[m].epoch;
        self.at(
            t,
            Ev::Watch {
                to: m,
                epoch,
                key,
                value,
                revision,
            },
        );
    }

    fn crash(&mut self, m: usize) {
        let mem = &mut self.members[m];
        mem.alive = false;
        mem.timer = None;
        for w in &mut mem.workers {
            *w = Worker::Idle;
        }
        self.tally.crashes += 1;
        self.log(|s| format!("{} is killed", s.names[m]));
    }

    fn shutdown(&mut self, m: usize) -> Result<(), String> {
        self.members[m].shutdown_at = Some(self.now);
        self.tally.graceful += 1;
        self.log(|s| format!("{}: shutdown", s.names[m]));
        let now = self.local(m);
        self.members[m].group.on_shutdown(now);
        self.drive(m)
    }

    fn observe(
        &mut self,
        m: usize,
        key: Key,
        value: Option<usize>,
        revision: u64,
    ) -> Result<(), String> {
        let now = self.local(m);
        self.log(|s| {
            format!(
                "{} sees {} = {} @{revision}",
                s.names[m],
                s.key_name(key),
                s.value_name(value)
            )
        });
        let (names, g) = (&self.names, &mut self.members[m].group);
        match (key, value) {
            (Key::Member(who), Some(_)) => g.on_member(now, &names[who], revision),
            (Key::Member(who), None) => g.on_member_gone(now, &names[who]),
            (Key::Lease(slot), owner) => {
                g.on_lease(now, slot, owner.map(|o| names[o].as_str()), revision);
            }
        }
        self.drive(m)
    }

    fn report(&mut self, m: usize, op: u64, outcome: LeaseOutcome) -> Result<(), String> {
        let mem = &mut self.members[m];
        if !mem.alive {
            return Ok(());
        }
        let Some(what) = mem.ops.remove(&op) else {
            return Ok(());
        };
        self.log(|s| format!("{}: {what:?} -> {outcome:?}", s.names[m]));
        let now = self.local(m);
        let g = &mut self.members[m].group;
        match what {
            Report::Acquired(slot) => g.on_acquired(now, slot, outcome),
            Report::Renewed(slot) => g.on_renewed(now, slot, outcome),
        }
        if matches!(outcome, LeaseOutcome::Written(_))
            && let Some(length) = self.members[m].cut_next.take()
        {
            let until = (self.now + length).min(self.sc.calm_at);
            self.members[m].cut_until = until;
            self.log(|s| {
                format!(
                    "{} is cut off from the store until {:.3}s",
                    s.names[m],
                    until.as_secs_f64()
                )
            });
        }
        self.drive(m)
    }

    /// Sends a request to the store; `report` when the caller waits for the outcome.
    fn send(&mut self, from: usize, key: Key, write: Write, report: Option<Report>) {
        self.next_op += 1;
        let op = self.next_op;
        if let Some(what) = report {
            self.members[from].ops.insert(op, what);
            let t = self.now + self.op_timeout();
            self.at(t, Ev::Expire { to: from, op });
        }
        let cut = self.members[from].cut_until > self.now;
        if cut
            || (self.faulty()
                && self.sc.lost_requests > 0.0
                && self.r.random_bool(self.sc.lost_requests))
        {
            self.tally.lost_requests += 1;
            self.log(|s| format!("request {op} ({} {write:?}) is lost", s.key_name(key)));
            return;
        }
        let d = self.delay(from, false);
        if report.is_some() && d >= self.op_timeout() {
            self.tally.late_writes += 1;
        }
        // One connection to one stream: in calm, a member's requests are stored in the
        // order sent (in the fault window a slow one may be overtaken).
        let mut t = self.now + d;
        if !self.faulty() {
            t = t.max(self.members[from].sent_at);
            self.members[from].sent_at = t;
        }
        self.at(
            t,
            Ev::Arrive {
                from,
                op,
                key,
                write,
            },
        );
    }

    fn arrive(&mut self, from: usize, op: u64, key: Key, write: Write) -> Result<(), String> {
        let current = self.store.get(&key).copied();
        let ok = match write {
            Write::Put | Write::Delete(None) => true,
            Write::Create => current.is_none_or(|(v, _)| v.is_none()),
            Write::Update(expect) | Write::Delete(Some(expect)) => {
                current.is_some_and(|(_, rev)| rev == expect)
            }
        };
        let outcome = if ok {
            self.rev += 1;
            let rev = self.rev;
            let value = match write {
                Write::Delete(_) => None,
                _ => Some(from),
            };
            if let (Key::Lease(slot), Some(_)) = (key, value) {
                self.members[from].written[slot as usize].insert(rev);
                if let (Write::Update(_), Some((Some(prev), _))) = (write, current)
                    && prev != from
                {
                    self.tally.takeovers += 1;
                }
            }
            self.log(|s| {
                format!(
                    "store: {} = {} @{rev} ({write:?})",
                    s.key_name(key),
                    s.value_name(value)
                )
            });
            self.store.insert(key, (value, rev));
            for m in 0..self.members.len() {
                if self.members[m].alive {
                    self.deliver(m, key, value, rev);
                }
            }
            LeaseOutcome::Written(rev)
        } else {
            self.tally.conflicts += 1;
            self.log(|s| {
                format!(
                    "store: {} {write:?} conflicts (now {})",
                    s.key_name(key),
                    current.map_or("absent".into(), |(v, r)| format!(
                        "{} @{r}",
                        s.value_name(v)
                    ))
                )
            });
            LeaseOutcome::Conflict
        };
        if self.members[from].ops.contains_key(&op) {
            if self.faulty()
                && self.sc.lost_replies > 0.0
                && self.r.random_bool(self.sc.lost_replies)
            {
                self.tally.lost_replies += 1;
                self.log(|_| format!("the reply to request {op} is lost"));
            } else {
                let d = self.delay(from, true);
                self.at(
                    self.now + d,
                    Ev::Reply {
                        to: from,
                        op,
                        outcome,
                    },
                );
            }
        }
        Ok(())
    }

    /// Performs a member's actions, then sets its timer.
    fn drive(&mut self, m: usize) -> Result<(), String> {
        while let Some(action) = self.members[m].group.poll_action() {
            self.perform(m, action)?;
        }
        let mem = &mut self.members[m];
        if mem.group.is_done() && mem.done_at.is_none() {
            mem.done_at = Some(self.now);
            mem.alive = false;
            mem.timer = None;
            if let Some(slot) =
                (0..self.sc.slots).find(|&s| mem.workers[s as usize] != Worker::Idle)
            {
                return Err(self.fail(format!(
                    "shutdown: {} left the group with slot {slot}'s workers still active",
                    self.names[m]
                )));
            }
            let since = mem.shutdown_at.unwrap_or_default();
            self.log(|s| format!("{} is done", s.names[m]));
            if since >= self.sc.calm_at {
                let took = self.now - since;
                let leases = took.as_secs_f64() / self.sc.lease.as_secs_f64();
                self.tally.max_shutdown = self.tally.max_shutdown.max(leases);
                if took > self.sc.lease.mul_f64(SHUTDOWN_LEASES) {
                    return Err(self.fail(format!(
                        "shutdown: {} took {:.3}s to leave in calm (bound {SHUTDOWN_LEASES} lease)",
                        self.names[m],
                        took.as_secs_f64()
                    )));
                }
                // By then every request it sent has reached the store.
                self.at(self.now + MS * 25, Ev::Check { m });
            }
            return Ok(());
        }
        if !mem.alive {
            return Ok(());
        }
        match mem.group.poll_timeout() {
            None => mem.timer = None,
            Some(target) => {
                if mem.timer.is_none_or(|(t, _)| t != target) {
                    let mut due = target.saturating_sub(mem.offset).max(self.now);
                    if self.sc.stalls && self.now < self.sc.calm_at {
                        let quarter = (self.config().margin / 4).as_millis() as u64;
                        due += ms(if self.r.random_bool(0.3) {
                            quarter
                        } else {
                            self.r.random_range(0..=quarter)
                        });
                    }
                    self.members[m].timer = Some((target, due));
                }
            }
        }
        Ok(())
    }

    fn perform(&mut self, m: usize, action: GroupAction) -> Result<(), String> {
        self.log(|s| format!("{}: {action:?}", s.names[m]));
        let name = &self.names[m];
        if self.members[m].left {
            return Err(self.fail(format!("{name}: {action:?} after it left the group")));
        }
        let shutting = self.members[m].shutdown_at.is_some();
        match action {
            GroupAction::Heartbeat => {
                self.send(m, Key::Member(m), Write::Put, None);
            }
            GroupAction::Acquire { slot, expect } => {
                self.churn = true;
                if shutting {
                    return Err(
                        self.fail(format!("{name}: acquires slot {slot} while shutting down"))
                    );
                }
                if self.members[m].workers[slot as usize] != Worker::Idle {
                    return Err(self.fail(format!(
                        "{name}: acquires slot {slot} while its workers are {:?}",
                        self.members[m].workers[slot as usize]
                    )));
                }
                let write = expect.map_or(Write::Create, Write::Update);
                self.send(m, Key::Lease(slot), write, Some(Report::Acquired(slot)));
            }
            GroupAction::Renew { slot, revision } => {
                self.wrote(m, slot, revision, "renews")?;
                self.send(
                    m,
                    Key::Lease(slot),
                    Write::Update(revision),
                    Some(Report::Renewed(slot)),
                );
            }
            GroupAction::Release { slot, revision } => {
                self.churn = true;
                self.wrote(m, slot, revision, "releases")?;
                if self.members[m].workers[slot as usize] != Worker::Idle {
                    return Err(self.fail(format!(
                        "{name}: releases slot {slot} while its workers are {:?}",
                        self.members[m].workers[slot as usize]
                    )));
                }
                self.send(m, Key::Lease(slot), Write::Delete(Some(revision)), None);
            }
            GroupAction::Start { slot } => {
                self.churn = true;
                let w = self.members[m].workers[slot as usize];
                if w != Worker::Idle {
                    return Err(self.fail(format!(
                        "{name}: starts slot {slot} whose workers are {w:?}"
                    )));
                }
                if shutting {
                    return Err(
                        self.fail(format!("{name}: starts slot {slot} while shutting down"))
                    );
                }
                match self.store.get(&Key::Lease(slot)) {
                    Some((Some(owner), rev)) if *owner == m => {
                        if !self.members[m].written[slot as usize].contains(rev) {
                            return Err(self.fail(format!(
                                "{name}: starts slot {slot} on revision {rev}, not its own write"
                            )));
                        }
                    }
                    other => {
                        return Err(self.fail(format!(
                            "lease: {name} starts slot {slot} but the store has {}",
                            other.map_or("no key".into(), |(v, r)| format!(
                                "{} @{r}",
                                self.value_name(*v)
                            ))
                        )));
                    }
                }
                self.members[m].workers[slot as usize] = Worker::Running;
            }
            GroupAction::Stop { slot, fence } => {
                self.churn = true;
                let w = self.members[m].workers[slot as usize];
                if w != Worker::Running {
                    return Err(
                        self.fail(format!("{name}: stops slot {slot} whose workers are {w:?}"))
                    );
                }
                if fence {
                    self.tally.fences += 1;
                } else if !shutting {
                    self.tally.handovers += 1;
                }
                let mem = &mut self.members[m];
                mem.workers[slot as usize] = Worker::Stopping;
                mem.generation[slot as usize] += 1;
                let generation = mem.generation[slot as usize];
                // Stopping takes up to half the margin, often all of it.
                let half = (self.margin() / 2).as_millis() as u64;
                let d = ms(if self.r.random_bool(0.3) {
                    half
                } else {
                    self.r.random_range(0..=half)
                });
                self.at(
                    self.now + d,
                    Ev::Stopped {
                        m,
                        slot,
                        generation,
                    },
                );
            }
            GroupAction::Leave => {
                self.members[m].left = true;
                if !shutting {
                    return Err(self.fail(format!("{name}: leaves without a shutdown")));
                }
                self.send(m, Key::Member(m), Write::Delete(None), None);
            }
            other => return Err(self.fail(format!("{name}: unknown action {other:?}"))),
        }
        Ok(())
    }

    fn wrote(&self, m: usize, slot: u32, revision: u64, what: &str) -> Result<(), String> {
        let mem = &self.members[m];
        if mem.written[slot as usize].contains(&revision) {
            Ok(())
        } else {
            Err(self.fail(format!(
                "{}: {what} slot {slot} at revision {revision}, which it never wrote \
                 (its writes: {:?})",
                mem.name, mem.written[slot as usize]
            )))
        }
    }

    /// Starts a liveness phase now.
    fn begin(&mut self, kind: Then) {
        let bound = self.sc.lease.mul_f64(SETTLE_LEASES);
        self.log(|_| format!("phase {kind:?}: settles within {:.1}s", bound.as_secs_f64()));
        self.phase = Some(Phase {
            kind,
            start: self.now,
            bound,
            stable_since: None,
        });
    }

    /// Safety at every step; liveness once calm.
    fn check(&mut self) -> Result<(), String> {
        for slot in 0..self.sc.slots {
            if self.members.iter().filter(|m| m.active(slot)).count() > 1 {
                let active: Vec<&str> = self
                    .members
                    .iter()
                    .filter(|m| m.active(slot))
                    .map(|m| m.name.as_str())
                    .collect();
                return Err(self.fail(format!(
                    "safety: slot {slot} has active workers on {} at once",
                    active.join(" and ")
                )));
            }
        }
        let churn = std::mem::take(&mut self.churn);
        if self.phase.is_none() {
            return Ok(());
        }
        let settled = !churn && self.is_settled();
        let now = self.now;
        let confirm = self.sc.lease + self.config().tick;
        let Some(p) = &mut self.phase else {
            return Ok(());
        };
        if !settled {
            p.stable_since = None;
        } else if p.stable_since.is_none() {
            p.stable_since = Some(now);
        }
        let deadline = p.start + p.bound;
        if let Some(since) = p.stable_since
            && now - since >= confirm
        {
            let took = since - p.start;
            let kind = p.kind;
            let max = match kind {
                Then::Nothing => &mut self.tally.max_settle_calm,
                Then::Crash => &mut self.tally.max_settle_crash,
                Then::Join => &mut self.tally.max_settle_join,
                Then::Shutdown => &mut self.tally.max_settle_shutdown,
            };
            *max = max.max(took.as_secs_f64() / self.sc.lease.as_secs_f64());
            self.log(|_| format!("phase {kind:?}: settled after {:.3}s", took.as_secs_f64()));
            if kind == Then::Nothing && self.sc.then != Then::Nothing {
                return self.change();
            }
            self.finished = true;
            return Ok(());
        }
        if now > deadline && p.stable_since.is_none_or(|s| s > deadline) {
            let kind = p.kind;
            let start = p.start;
            let why = self
                .settled()
                .err()
                .unwrap_or_else(|| "lease or worker churn".into());
            return Err(self.fail(format!(
                "liveness: not settled {SETTLE_LEASES} leases after {} at {:.3}s: {why}; {}",
                match kind {
                    Then::Nothing => "calm began".to_owned(),
                    k => format!("a {k:?} in calm"),
                },
                start.as_secs_f64(),
                self.describe()
            )));
        }
        Ok(())
    }

    /// The membership change made in calm once the group settled.
    fn change(&mut self) -> Result<(), String> {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].alive && self.members[i].shutdown_at.is_none())
            .collect();
        let mut then = self.sc.then;
        if then == Then::Crash && live.len() < 2 {
            then = Then::Join;
        }
        self.begin(then);
        match then {
            Then::Shutdown => {
                let m = live[self.r.random_range(0..live.len())];
                self.shutdown(m)?;
            }
            Then::Crash => {
                let m = live[self.r.random_range(0..live.len())];
                self.crash(m);
            }
            Then::Join => self.join()?,
            Then::Nothing => {}
        }
        Ok(())
    }

    /// Every slot runs on exactly one live member named by the store, and shares are
    /// balanced (what [`settled`](Self::settled) explains).
    fn is_settled(&self) -> bool {
        let mut live = 0;
        for m in &self.members {
            if m.alive {
                if m.shutdown_at.is_some() {
                    return false;
                }
                live += 1;
            }
        }
        if live == 0 {
            return true;
        }
        let (lo, hi) = (self.sc.slots / live, self.sc.slots.div_ceil(live));
        let mut runs = [0u32; 16];
        for slot in 0..self.sc.slots {
            let mut on = None;
            for (i, m) in self.members.iter().enumerate() {
                if m.active(slot) {
                    if on.is_some() || m.workers[slot as usize] != Worker::Running {
                        return false;
                    }
                    on = Some(i);
                }
            }
            let Some(i) = on else {
                return false;
            };
            if self
                .store
                .get(&Key::Lease(slot))
                .is_none_or(|(v, _)| *v != Some(i))
            {
                return false;
            }
            if let Some(r) = runs.get_mut(i) {
                *r += 1;
            }
        }
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.alive)
            .all(|(i, _)| runs.get(i).is_some_and(|c| (lo..=hi).contains(c)))
    }

    /// Why the group is not settled, if it is not.
    fn settled(&self) -> Result<(), String> {
        if let Some(m) = self
            .members
            .iter()
            .find(|m| m.alive && m.shutdown_at.is_some())
        {
            return Err(format!("{} is still shutting down", m.name));
        }
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].alive)
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        for slot in 0..self.sc.slots {
            let running: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&i| self.members[i].workers[slot as usize] != Worker::Idle)
                .collect();
            match running[..] {
                [i] if self.members[i].workers[slot as usize] == Worker::Running => {
                    match self.store.get(&Key::Lease(slot)) {
                        Some((Some(owner), _)) if *owner == i => {}
                        other => {
                            return Err(format!(
                                "slot {slot} runs on {} but the store names {}",
                                self.names[i],
                                self.value_name(other.and_then(|(v, _)| *v))
                            ));
                        }
                    }
                }
                [] => return Err(format!("slot {slot} runs nowhere")),
                _ => return Err(format!("slot {slot} is stopping")),
            }
        }
        let n = live.len() as u32;
        let (lo, hi) = (self.sc.slots / n, self.sc.slots.div_ceil(n));
        for &i in &live {
            let m = &self.members[i];
            let c = m.workers.iter().filter(|w| **w == Worker::Running).count() as u32;
            if c < lo || c > hi {
                return Err(format!(
                    "{} runs {c} slots, not {lo}..={hi} of {} among {n}",
                    m.name, self.sc.slots
                ));
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let store: Vec<String> = self
            .store
            .iter()
            .map(|(k, (v, r))| format!("{}={}@{r}", self.key_name(*k), self.value_name(*v)))
            .collect();
        let members: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.alive)
            .map(|m| {
                let now = self.now + m.offset;
                format!(
                    "{} (running {:?}, held {:?}, share {}, sees {:?}{})",
                    m.name,
                    m.group.running(),
                    m.group.held(),
                    m.group.share(now),
                    m.group.live_members(now),
                    if m.shutdown_at.is_some() {
                        ", shutting down"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        format!(
            "store [{}]; members: {}",
            store.join(" "),
            members.join("; ")
        )
    }
}

fn run_seed(seed: u64, trace: bool) -> (Result<(), String>, GroupTally, Option<String>) {
    let scenario = GroupScenario::from_seed(seed);
    let described = format!("{scenario:?}");
    let mut sim = GroupSim::new(scenario, trace);
    let outcome = sim
        .run()
        .map_err(|e| format!("{e}\n  scenario: {described}"));
    (outcome, sim.tally, sim.trace.take())
}

fn reproducer(seed: u64) -> String {
    format!(
        "GROUP_SIM_SEED={seed} cargo test -p person-delivery --test sim one_group_schedule -- --nocapture"
    )
}

#[test]
fn group_schedules_keep_the_contract() {
    let count = env_u64("GROUP_SIM_SEEDS").unwrap_or(20_000);
    let first = env_u64("GROUP_SIM_FIRST").unwrap_or(0);
    let (t, failures, elapsed) = explore(
        count,
        first,
        |seed| {
            let (outcome, tally, _) = run_seed(seed, false);
            (outcome, tally)
        },
        GroupTally::add,
    );
    eprintln!(
        "group sim: {} schedules in {:.1?}: {} joins, {} graceful leaves, {} kills; {} lost \
         requests, {} lost replies, {} requests slower than their timeout, {} watch restarts, \
         {} partitions; \
         {} conflicts, {} takeovers after expiry, {} fences, {} handovers; settled (in leases) \
         after calm within {:.2} (bound {SETTLE_LEASES}), after a kill {:.2}, a join {:.2}, a \
         shutdown {:.2}; shutdowns in calm took up to {:.2} (bound {SHUTDOWN_LEASES})",
        t.schedules,
        elapsed,
        t.joins,
        t.graceful,
        t.crashes,
        t.lost_requests,
        t.lost_replies,
        t.late_writes,
        t.watch_restarts,
        t.partitions,
        t.conflicts,
        t.takeovers,
        t.fences,
        t.handovers,
        t.max_settle_calm,
        t.max_settle_crash,
        t.max_settle_join,
        t.max_settle_shutdown,
        t.max_shutdown,
    );
    fail_on(&failures, reproducer);
}

#[test]
fn one_group_schedule() {
    let seeds: Vec<u64> = match env_u64("GROUP_SIM_SEED") {
        Some(s) => vec![s],
        None => REGRESSIONS.to_vec(),
    };
    replay(
        &seeds,
        |seed| {
            let (outcome, _, trace) = run_seed(seed, true);
            (outcome, trace)
        },
        "GROUP_SIM_TRACE_LINES",
        reproducer,
    );
}
