//! A small, faithful model of a JetStream pull consumer (explicit acks, ack wait, NAK
//! delays, progress acks, redeliveries before new messages, max_ack_pending), of the
//! handler and the dead-letter store, and of instances that crash and restart, driving
//! one or more [`Core`]s through a seeded schedule of faults.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use person_delivery::{Action, Arrival, CallResult, Config, Core, Kind, Notice, Recovery};
use person_retry::{CircuitBreakerConfig, ErrorClass, Jitter, RetryPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Person = u32;
const MS: Duration = Duration::from_millis(1);

/// What a message does to the handler.
#[derive(Debug, Clone, Default)]
struct Plan {
    person: Option<Person>,
    kind: Option<Kind>,
    /// Calls that fail transiently before the first success.
    transient: u32,
    /// The first calls that panic (count as failures).
    panics: u32,
    /// Fails permanently on every call.
    permanent: bool,
    /// The first call hangs until the handler timeout.
    hangs: bool,
    /// Extra handler time.
    slow: Duration,
    /// Not for this consumer (another consumer's replay, brought by a durable with no
    /// filter on the server): the shell acknowledges it unhandled.
    foreign: bool,
}

/// The faults and shape of one schedule, drawn from its seed.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) seed: u64,
    pub(crate) instances: usize,
    pub(crate) people: u32,
    pub(crate) messages: usize,
    pub(crate) park: bool,
    pub(crate) crashes: u32,
    pub(crate) graceful_restarts: u32,
    pub(crate) outage: Option<(Duration, Duration)>,
    pub(crate) dlq_outage: Option<(Duration, Duration)>,
    /// The consumer paused on the server (by another instance's breaker, or an
    /// operator): nothing is delivered in this window, often longer than the ack wait.
    pub(crate) pause: Option<(Duration, Duration)>,
    /// How often a call is refused before it runs (a group worker past its lease):
    /// `CallResult::NotRun`.
    pub(crate) not_run: f64,
    pub(crate) purges: u32,
    pub(crate) config: Config,
    pub(crate) latency: Duration,
    pub(crate) fetch_expiry: Duration,
    pub(crate) handler_timeout: Duration,
    pub(crate) horizon: Duration,
}

/// Totals over schedules, printed by the test.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) schedules: u64,
    pub(crate) messages: u64,
    pub(crate) transient: u64,
    pub(crate) permanent: u64,
    pub(crate) panics: u64,
    pub(crate) hangs: u64,
    pub(crate) rejected: u64,
    pub(crate) crashes: u64,
    pub(crate) graceful: u64,
    pub(crate) outages: u64,
    pub(crate) dlq_outages: u64,
    pub(crate) dlq_failures: u64,
    pub(crate) purges: u64,
    pub(crate) evictions: u64,
    pub(crate) breaker_opens: u64,
    pub(crate) stopped_waiting: u64,
    pub(crate) multi_instance: u64,
    pub(crate) hot_person: u64,
    pub(crate) pauses: u64,
    pub(crate) not_run: u64,
    pub(crate) foreign: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, o: &Tally) {
        let fields: [(&mut u64, u64); 21] = [
            (&mut self.schedules, o.schedules),
            (&mut self.messages, o.messages),
            (&mut self.transient, o.transient),
            (&mut self.permanent, o.permanent),
            (&mut self.panics, o.panics),
            (&mut self.hangs, o.hangs),
            (&mut self.rejected, o.rejected),
            (&mut self.crashes, o.crashes),
            (&mut self.graceful, o.graceful),
            (&mut self.outages, o.outages),
            (&mut self.dlq_outages, o.dlq_outages),
            (&mut self.dlq_failures, o.dlq_failures),
            (&mut self.purges, o.purges),
            (&mut self.evictions, o.evictions),
            (&mut self.breaker_opens, o.breaker_opens),
            (&mut self.stopped_waiting, o.stopped_waiting),
            (&mut self.multi_instance, o.multi_instance),
            (&mut self.hot_person, o.hot_person),
            (&mut self.pauses, o.pauses),
            (&mut self.not_run, o.not_run),
            (&mut self.foreign, o.foreign),
        ];
        for (a, b) in fields {
            *a += b;
        }
    }
}

impl Scenario {
    pub(crate) fn from_seed(seed: u64) -> Self {
        let mut r = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_de11_7e57);
        let shape = r.random_range(0..100);
        let (people, messages) = match shape {
            // One hot person with a long backlog.
            0 => (1 + r.random_range(0..3), 600 + r.random_range(0..1400)),
            // Many people with one event each.
            1..=2 => (300 + r.random_range(0..300), 0),
            _ => (1 + r.random_range(0..12), 1 + r.random_range(0..80)),
        };
        let messages = if messages == 0 {
            people as usize
        } else {
            messages
        };
        let ack_wait = Duration::from_secs(r.random_range(1..=4));
        let jitter = [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
        ][r.random_range(0..4)];
        let max_attempts = r.random_range(2..=6);
        let retry = RetryPolicy::builder()
            .max_attempts(max_attempts)
            .initial_backoff(MS * r.random_range(5..200))
            .max_backoff(MS * r.random_range(200..3000))
            .jitter(jitter)
            .build()
            .expect("valid policy");
        let mut config = Config::new(retry, ack_wait);
        config.max_in_hand = [1, 2, 4, 8, 16, 32, 64][r.random_range(0..7)];
        config.concurrency = r.random_range(1..=8);
        config.pull_batch = r.random_range(1..=config.max_in_hand);
        config.in_process_attempts = r.random_range(1..=3);
        config.park = r.random_bool(0.6);
        config.evict_delay = MS * r.random_range(50..600);
        config.seed = seed;
        // Drawn apart, so the other draws (and the regression seeds) stay as they were.
        let mut extra = StdRng::seed_from_u64(seed ^ 0x00ba_7c4e_5000_0001);
        if extra.random_bool(0.2) {
            config.max_pull = extra.random_range(1..=8);
        }

        config.breaker = CircuitBreakerConfig::builder()
            .failure_threshold(r.random_range(1..=6))
            .open_timeout(MS * r.random_range(100..3000))
            .half_open_max_probes(r.random_range(1..=2))
            .success_threshold(r.random_range(1..=2))
            .build()
            .expect("valid breaker");
        let instances = if r.random_bool(0.1) { 2 } else { 1 };
        let horizon = Duration::from_secs(r.random_range(1..=8));
        // Drawn apart too.
        let mut other = StdRng::seed_from_u64(seed ^ 0x0057_a115_0000_0002);
        let pause = other.random_bool(0.15).then(|| {
            let a = MS * other.random_range(0..horizon.as_millis() as u32);
            (
                a,
                a + ack_wait * other.random_range(1..=3) + MS * other.random_range(0..1000),
            )
        });
        let not_run = if other.random_bool(0.2) {
            other.random_range(0.01..0.2)
        } else {
            0.0
        };
        let window = |r: &mut StdRng| {
            let a = MS * r.random_range(0..horizon.as_millis() as u32);
            (a, a + MS * r.random_range(50..2000))
        };
        Self {
            seed,
            instances,
            people,
            messages,
            park: config.park,
            crashes: if r.random_bool(0.25) {
                r.random_range(1..=3)
            } else {
                0
            },
            graceful_restarts: if r.random_bool(0.25) {
                r.random_range(1..=3)
            } else {
                0
            },
            outage: r.random_bool(0.2).then(|| window(&mut r)),
            dlq_outage: r.random_bool(0.15).then(|| window(&mut r)),
            pause,
            not_run,
            purges: if config.park && r.random_bool(0.2) {
                r.random_range(1..=3)
            } else {
                0
            },
            config,
            latency: MS * r.random_range(0..3),
            fetch_expiry: MS * r.random_range(50..1000),
            handler_timeout: Duration::from_millis(r.random_range(200..3000)),
            horizon,
        }
    }
}

#[derive(Debug)]
enum Ev {
    /// A message reaches an instance.
    Deliver {
        inst: u64,
        seq: u64,
        delivered: u64,
    },
    /// A pull ended, as the instance learns.
    PullDone {
        inst: u64,
    },
    /// The server receives something from an instance.
    Server {
        inst: u64,
        what: ToServer,
    },
    CallDone {
        inst: u64,
        seq: u64,
        call: u64,
        result: CallResult,
    },
    DlqDone {
        inst: u64,
        seq: u64,
        stored: bool,
    },
    Parked {
        inst: u64,
        person: Person,
    },
    Timer {
        inst: u64,
    },
    PullExpire {
        pull: u64,
    },
    ServerWake,
    Crash,
    Restart,
    Shutdown,
    Purge {
        person: Person,
    },
}

#[derive(Debug)]
enum ToServer {
    Pull {
        max: usize,
    },
    Ack(u64),
    /// The shell's ack of a message for another consumer.
    AckForeign(u64),
    Nak(u64, Duration),
    Progress(u64),
    Term(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Srv {
    Unseen,
    Pending { deadline: Duration, delivered: u64 },
    Done,
}

struct OpenPull {
    id: u64,
    inst: u64,
    left: usize,
}

struct Instance {
    id: u64,
    core: Core<Person>,
    timer_at: Option<Duration>,
    /// Calls running: seq -> call id (to ignore aborted ones).
    calls: HashMap<u64, u64>,
    running_people: HashSet<Person>,
    stopping_since: Option<Duration>,
}

pub(crate) struct Sim {
    sc: Scenario,
    r: StdRng,
    /// Draws for refused calls, apart from `r` so the other draws stay as they were.
    refuse: StdRng,
    now: Duration,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Ev>>,
    order: u64,
    plans: Vec<Plan>,
    srv: Vec<Srv>,
    /// Pending messages by (deadline, seq).
    timeline: std::collections::BTreeSet<(Duration, usize)>,
    done: usize,
    cursor: usize,
    pulls: Vec<OpenPull>,
    next_pull: u64,
    wake_at: Option<Duration>,
    instances: Vec<Instance>,
    next_inst: u64,
    next_call: u64,
    calls_made: Vec<u32>,
    /// The dead-letter store: person -> seqs with letters.
    dlq: HashMap<Person, Vec<u64>>,
    dlq_ever: HashSet<u64>,
    first_success: Vec<Option<Duration>>,
    resolved: Vec<bool>,
    pub(crate) tally: Tally,
    pub(crate) trace: Option<String>,
    restarts_pending: u32,
}

/// A broken promise, with what it was.
#[derive(Debug)]
pub(crate) struct Violation(pub(crate) String);

impl Sim {
    pub(crate) fn new(sc: Scenario, trace: bool) -> Self {
        let mut r = StdRng::seed_from_u64(sc.seed);
        let mut plans = Vec::with_capacity(sc.messages + 1);
        plans.push(Plan::default());
        let mut tally = Tally {
            schedules: 1,
            messages: sc.messages as u64,
            multi_instance: u64::from(sc.instances > 1),
            hot_person: u64::from(sc.messages > 500),
            ..Tally::default()
        };
        for i in 0..sc.messages {
            let person = if sc.people as usize == sc.messages {
                i as Person
            } else {
                r.random_range(0..sc.people)
            };
            let mut p = Plan {
                person: Some(person),
                ..Plan::default()
            };
            let x: f64 = r.random();
            if x < 0.02 {
                p.kind = Some(Kind::Rejected);
                if r.random_bool(0.3) {
                    p.person = None;
                }
                tally.rejected += 1;
            } else if x < 0.05 {
                p.permanent = true;
                tally.permanent += 1;
            } else if x < 0.20 {
                p.transient = r.random_range(1..=6);
                tally.transient += 1;
            } else if x < 0.23 {
                p.panics = r.random_range(1..=2);
                tally.panics += 1;
            } else if x < 0.24 {
                p.hangs = true;
                tally.hangs += 1;
            }
            if r.random_bool(0.02) {
                p.slow = sc.config.ack_wait * r.random_range(1..=2);
            }
            plans.push(p);
        }
        // Drawn apart, so the other draws (and the regression seeds) stay as they were:
        // in some schedules, other consumers' replays among the messages.
        let mut other = StdRng::seed_from_u64(sc.seed ^ 0x0f0e_1600_0000_0003);
        if other.random_bool(0.2) {
            let share = other.random_range(0.05..0.5);
            for p in plans.iter_mut().skip(1) {
                if other.random_bool(share) {
                    // Not one of this consumer's people's events: no order to keep.
                    p.foreign = true;
                    p.person = None;
                    tally.foreign += 1;
                }
            }
        }
        let n = sc.messages + 1;
        tally.crashes = u64::from(sc.crashes);
        tally.graceful = u64::from(sc.graceful_restarts);
        tally.outages = u64::from(sc.outage.is_some());
        tally.dlq_outages = u64::from(sc.dlq_outage.is_some());
        tally.pauses = u64::from(sc.pause.is_some());
        tally.purges = u64::from(sc.purges);
        let mut sim = Self {
            r,
            refuse: StdRng::seed_from_u64(sc.seed ^ 0x0000_0000_4e07_4a11),
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            order: 0,
            plans,
            srv: vec![Srv::Unseen; n],
            timeline: std::collections::BTreeSet::new(),
            done: 0,
            cursor: 1,
            pulls: Vec::new(),
            next_pull: 0,
            wake_at: None,
            instances: Vec::new(),
            next_inst: 0,
            next_call: 0,
            calls_made: vec![0; n],
            dlq: HashMap::new(),
            dlq_ever: HashSet::new(),
            first_success: vec![None; n],
            resolved: vec![false; n],
            tally,
            trace: trace.then(String::new),
            restarts_pending: 0,
            sc,
        };
        for _ in 0..sim.sc.crashes {
            let t = sim.rand_time();
            sim.at(t, Ev::Crash);
        }
        for _ in 0..sim.sc.graceful_restarts {
            let t = sim.rand_time();
            sim.at(t, Ev::Shutdown);
        }
        for _ in 0..sim.sc.purges {
            let t = sim.rand_time();
            let person = sim.r.random_range(0..sim.sc.people);
            sim.at(t, Ev::Purge { person });
        }
        sim
    }

    fn rand_time(&mut self) -> Duration {
        MS * self.r.random_range(0..self.sc.horizon.as_millis() as u32)
    }

    fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let _ = writeln!(t, "{:>9.3}s {}", self.now.as_secs_f64(), f());
        }
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

    fn after(&mut self, d: Duration, ev: Ev) {
        let t = self.now + d;
        self.at(t, ev);
    }

    fn faults_over(&self) -> Duration {
        let mut t = self.sc.horizon;
        for (_, b) in [self.sc.outage, self.sc.dlq_outage, self.sc.pause]
            .into_iter()
            .flatten()
        {
            t = t.max(b);
        }
        t
    }

    /// Runs the schedule to the end; an error names the broken promise.
    pub(crate) fn run(&mut self) -> Result<(), Violation> {
        for _ in 0..self.sc.instances {
            self.start_instance();
        }
        // Liveness: once faults stop, everything is settled within this bound: the
        // ack wait (crashed instances' messages, a restart's recovery), a last breaker
        // opening and handler timeout, the longest retry delay, and the time to work
        // through every message one at a time.
        let c = &self.sc.config;
        let bound = self.faults_over()
            + c.ack_wait * 4
            + c.breaker.open_timeout() * 2
            + self.sc.handler_timeout * 2
            + c.retry.max_backoff() * 2
            + c.evict_delay * 2
            + Duration::from_secs(5)
            + (MS * 10 + self.sc.latency * 4) * self.sc.messages as u32;
        // Several instances on one unpartitioned consumer take each other's
        // redeliveries; a lane then waits its full give-up time (slow, but bounded).
        let bound = if self.sc.instances > 1 {
            bound + c.give_up_after() * self.sc.messages as u32
        } else {
            bound
        };
        let mut steps: u64 = 0;
        let cap = 2_000_000 + 4_000 * self.sc.messages as u64;
        while let Some(Reverse((t, _, idx))) = self.queue.pop() {
            steps += 1;
            if steps > cap {
                return Err(Violation(format!(
                    "runaway: over {cap} events by {:.3}s (a busy loop without progress)",
                    t.as_secs_f64()
                )));
            }
            if self.done == self.sc.messages && self.restarts_pending == 0 && t > self.faults_over()
            {
                break;
            }
            if t > bound {
                return Err(self.unsettled(bound));
            }
            self.now = t;
            let ev = self.events[idx].take().expect("event taken once");
            self.handle(ev)?;
            self.serve();
            self.check_hands()?;
        }
        if self.done != self.sc.messages {
            return Err(self.unsettled(bound));
        }
        Ok(())
    }

    fn unsettled(&self, bound: Duration) -> Violation {
        let open: Vec<String> = self
            .srv
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, s)| **s != Srv::Done)
            .take(8)
            .map(|(i, s)| format!("seq {i} (person {:?}, {s:?})", self.plans[i].person))
            .collect();
        let hands: Vec<String> = self
            .instances
            .iter()
            .map(|i| {
                format!(
                    "instance {}: in hand {}, reserved {}, in flight {}, waiting lanes {}, breaker {}",
                    i.id,
                    i.core.in_hand(),
                    i.core.reserved(),
                    i.core.in_flight(),
                    i.core.waiting_lanes(),
                    i.core.breaker_state()
                )
            })
            .collect();
        if let (Some(_), Some(i)) = (&self.trace, self.instances.first()) {
            eprintln!("{:#?}", i.core);
        }
        Violation(format!(
            "liveness: not settled by {:.1}s (faults over at {:.1}s): {}; {}",
            bound.as_secs_f64(),
            self.faults_over().as_secs_f64(),
            open.join(", "),
            hands.join("; ")
        ))
    }

    fn start_instance(&mut self) {
        let id = self.next_inst;
        self.next_inst += 1;
        let parked: Vec<Person> = if self.sc.park {
            self.dlq
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(p, _)| *p)
                .collect()
        } else {
            Vec::new()
        };
        let mut config = self.sc.config.clone();
        config.seed = self.sc.seed.wrapping_add(id);
        config.pull_expiry = self.sc.fetch_expiry;
        let recovery = Recovery {
            delivered_up_to: self.cursor as u64 - 1,
            outstanding: self.timeline.len() as u64,
        };
        self.log(|| format!("instance {id}: {recovery:?}"));
        let core = Core::new(config, parked, recovery, self.now);
        self.instances.push(Instance {
            id,
            core,
            timer_at: None,
            calls: HashMap::new(),
            running_people: HashSet::new(),
            stopping_since: None,
        });
        self.log(|| format!("instance {id} starts"));
        self.drive(id);
    }

    fn inst_mut(&mut self, id: u64) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| i.id == id)
    }

    /// Performs an instance's actions, schedules its timer.
    fn drive(&mut self, id: u64) {
        loop {
            let Some(inst) = self.inst_mut(id) else {
                return;
            };
            let Some(action) = inst.core.poll_action() else {
                break;
            };
            self.perform(id, action);
        }
        let now = self.now;
        let Some(inst) = self.inst_mut(id) else {
            return;
        };
        if inst.core.is_stopped() {
            self.log(|| format!("instance {id} stopped"));
            self.instances.retain(|i| i.id != id);
            self.restarts_pending -= 1;
            self.start_instance();
            return;
        }
        let next = inst.core.poll_timeout();
        if let Some(t) = next
            && inst.timer_at != Some(t)
        {
            inst.timer_at = Some(t);
            self.at(t.max(now), Ev::Timer { inst: id });
        }
    }

    fn perform(&mut self, id: u64, action: Action<Person>) {
        let lat = self.sc.latency;
        match action {
            Action::Pull { max } => {
                self.log(|| format!("[{id}] pull {max}"));
                self.after(
                    lat,
                    Ev::Server {
                        inst: id,
                        what: ToServer::Pull { max },
                    },
                );
            }
            Action::Run { seq, attempt } => {
                self.log(|| format!("[{id}] run {seq} (attempt {attempt})"));
                let person = self.plans[seq as usize].person;
                let single = self.sc.instances == 1;
                let inst = self.inst_mut(id).expect("live instance");
                if let Some(p) = person {
                    let fresh = inst.running_people.insert(p);
                    if !fresh && single {
                        panic!("two calls at once for person {p}");
                    }
                }
                self.next_call += 1;
                let call = self.next_call;
                self.inst_mut(id).expect("live").calls.insert(seq, call);
                let (result, took) = self.call(seq);
                self.after(
                    took,
                    Ev::CallDone {
                        inst: id,
                        seq,
                        call,
                        result,
                    },
                );
            }
            Action::Ack { seq } => self.after(
                lat,
                Ev::Server {
                    inst: id,
                    what: ToServer::Ack(seq),
                },
            ),
            Action::Nak { seq, delay } => {
                self.log(|| format!("[{id}] nak {seq} +{}ms", delay.as_millis()));
                self.after(
                    lat,
                    Ev::Server {
                        inst: id,
                        what: ToServer::Nak(seq, delay),
                    },
                )
            }
            Action::Progress { seq } => self.after(
                lat,
                Ev::Server {
                    inst: id,
                    what: ToServer::Progress(seq),
                },
            ),
            Action::Term { seq } => self.after(
                lat,
                Ev::Server {
                    inst: id,
                    what: ToServer::Term(seq),
                },
            ),
            Action::DeadLetter { seq, cause } => {
                let down = self
                    .sc
                    .dlq_outage
                    .is_some_and(|(a, b)| self.now >= a && self.now < b);
                let stored = !down;
                if stored {
                    if let Some(p) = self.plans[seq as usize].person {
                        self.dlq.entry(p).or_default().push(seq);
                    }
                    self.dlq_ever.insert(seq);
                } else {
                    self.tally.dlq_failures += 1;
                }
                self.log(|| format!("[{id}] dead letter {seq} {cause:?} stored={stored}"));
                self.after(
                    lat * 2 + MS,
                    Ev::DlqDone {
                        inst: id,
                        seq,
                        stored,
                    },
                );
            }
            Action::CheckParked { person } => {
                self.after(lat * 2, Ev::Parked { inst: id, person });
            }
            Action::Abort { seq } => {
                self.log(|| format!("[{id}] abort {seq}"));
                let person = self.plans[seq as usize].person;
                let inst = self.inst_mut(id).expect("live");
                inst.calls.remove(&seq);
                if let Some(p) = person {
                    inst.running_people.remove(&p);
                }
            }
            Action::Notice(n) => {
                match n {
                    Notice::Evicted { .. } => self.tally.evictions += 1,
                    Notice::StoppedWaiting { .. } => self.tally.stopped_waiting += 1,
                    Notice::Breaker {
                        to: person_retry::BreakerState::Open,
                        ..
                    } => self.tally.breaker_opens += 1,
                    _ => {}
                }
                self.log(|| format!("[{id}] {n:?}"));
            }
            other => panic!("the simulation does not know {other:?}"),
        }
    }

    /// What a handler call on `seq` does, and how long it takes.
    fn call(&mut self, seq: u64) -> (CallResult, Duration) {
        let i = seq as usize;
        self.calls_made[i] += 1;
        let n = self.calls_made[i];
        // Faults happen until the horizon; after it only bad data still fails.
        let faulty = self.now < self.faults_over();
        let plan = &self.plans[i];
        let took = MS * self.r.random_range(0..3) + if faulty { plan.slow } else { Duration::ZERO };
        let down = self
            .sc
            .outage
            .is_some_and(|(a, b)| self.now >= a && self.now < b);
        if faulty && self.sc.not_run > 0.0 && self.refuse.random_bool(self.sc.not_run) {
            self.tally.not_run += 1;
            return (CallResult::NotRun, MS);
        }
        if plan.permanent {
            return (CallResult::Failed(ErrorClass::Permanent), took);
        }
        if !faulty {
            return (CallResult::Ok, took);
        }
        if plan.hangs && n == 1 {
            return (
                CallResult::Failed(ErrorClass::Transient),
                self.sc.handler_timeout,
            );
        }
        if n <= plan.panics {
            return (CallResult::Panicked, took);
        }
        if down || n <= plan.transient + plan.panics {
            return (CallResult::Failed(ErrorClass::Transient), took);
        }
        (CallResult::Ok, took)
    }

    fn handle(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Deliver {
                inst,
                seq,
                delivered,
            } => {
                self.log(|| format!("[{inst}] receives {seq} (delivery {delivered})"));
                let plan = &self.plans[seq as usize];
                if plan.foreign {
                    // As the runtime does: acknowledged at once, never handed over.
                    let now = self.now;
                    let lat = self.sc.latency;
                    let Some(i) = self.inst_mut(inst) else {
                        return Ok(());
                    };
                    i.core.on_foreign(now, seq);
                    self.after(
                        lat,
                        Ev::Server {
                            inst,
                            what: ToServer::AckForeign(seq),
                        },
                    );
                    self.drive(inst);
                    return Ok(());
                }
                let arrival = Arrival {
                    seq,
                    delivered,
                    person: plan.person,
                    kind: plan.kind.unwrap_or(Kind::Event),
                };
                let now = self.now;
                if let Some(i) = self.inst_mut(inst) {
                    i.core.on_message(now, arrival);
                    self.drive(inst);
                }
            }
            Ev::PullDone { inst } => {
                let now = self.now;
                let paused = self.sc.pause.filter(|(a, b)| *a <= now && now < *b);
                if let Some(i) = self.inst_mut(inst) {
                    i.core.on_pull_done(now);
                    // As the runtime does: a pull ended while people (or a recovery)
                    // wait for redeliveries, so it asks the server whether the
                    // consumer is paused.
                    if let Some((_, until)) = paused
                        && (i.core.waiting_lanes() > 0 || i.core.recovering())
                    {
                        i.core.on_paused(now, until - now);
                    }
                    self.drive(inst);
                }
            }
            Ev::CallDone {
                inst,
                seq,
                call,
                result,
            } => {
                if self.plans[seq as usize].foreign {
                    return Err(Violation(format!(
                        "safety: {seq}, another consumer's message, was handled"
                    )));
                }
                let now = self.now;
                let person = self.plans[seq as usize].person;
                let Some(i) = self.inst_mut(inst) else {
                    return Ok(());
                };
                if i.calls.get(&seq) != Some(&call) {
                    return Ok(()); // aborted
                }
                i.calls.remove(&seq);
                if let Some(p) = person {
                    i.running_people.remove(&p);
                }
                if result == CallResult::Ok {
                    self.record_success(seq)?;
                }
                let i = self.inst_mut(inst).expect("live");
                i.core.on_call_done(now, seq, result);
                self.drive(inst);
            }
            Ev::DlqDone { inst, seq, stored } => {
                let now = self.now;
                if stored {
                    self.resolved[seq as usize] = true;
                }
                if let Some(i) = self.inst_mut(inst) {
                    i.core.on_dead_letter_done(now, seq, stored);
                    self.drive(inst);
                }
            }
            Ev::Parked { inst, person } => {
                let now = self.now;
                let parked = self.dlq.get(&person).is_some_and(|v| !v.is_empty());
                if let Some(i) = self.inst_mut(inst) {
                    i.core.on_parked_checked(now, person, parked);
                    self.drive(inst);
                }
            }
            Ev::Timer { inst } => {
                let now = self.now;
                if let Some(i) = self.inst_mut(inst)
                    && i.timer_at.is_some_and(|t| t <= now)
                {
                    i.timer_at = None;
                    i.core.on_timeout(now);
                    self.drive(inst);
                }
            }
            Ev::Server { inst, what } => self.server(inst, what)?,
            Ev::PullExpire { pull } => {
                if let Some(pos) = self.pulls.iter().position(|p| p.id == pull) {
                    let p = self.pulls.remove(pos);
                    self.after(self.sc.latency, Ev::PullDone { inst: p.inst });
                }
            }
            Ev::ServerWake => self.wake_at = None,
            Ev::Crash => {
                if self.instances.is_empty() {
                    return Ok(());
                }
                let k = self.r.random_range(0..self.instances.len());
                let dead = self.instances.remove(k);
                self.log(|| format!("instance {} crashes", dead.id));
                // Its calls, timers and pull die with it; what it held comes back
                // after the ack wait.
                let restart = MS * self.r.random_range(0..2000);
                if dead.stopping_since.is_none() {
                    // (A stopping instance's restart is counted already.)
                    self.restarts_pending += 1;
                }
                self.after(restart, Ev::Restart);
            }
            Ev::Restart => {
                self.restarts_pending -= 1;
                self.start_instance();
            }
            Ev::Shutdown => {
                let now = self.now;
                let live: Vec<u64> = self
                    .instances
                    .iter()
                    .filter(|i| i.stopping_since.is_none())
                    .map(|i| i.id)
                    .collect();
                if live.is_empty() {
                    return Ok(());
                }
                let id = live[self.r.random_range(0..live.len())];
                let grace = MS * self.r.random_range(0..3000);
                self.restarts_pending += 1;
                self.log(|| format!("instance {id} shuts down, grace {}ms", grace.as_millis()));
                let i = self.inst_mut(id).expect("live");
                i.stopping_since = Some(now);
                i.core.on_shutdown(now, grace);
                self.drive(id);
            }
            Ev::Purge { person } => {
                self.log(|| format!("operator purges person {person}"));
                self.dlq.remove(&person);
            }
        }
        Ok(())
    }

    fn record_success(&mut self, seq: u64) -> Result<(), Violation> {
        let i = seq as usize;
        if self.first_success[i].is_some() {
            return Ok(());
        }
        self.first_success[i] = Some(self.now);
        self.resolved[i] = true;
        let Some(person) = self.plans[i].person else {
            return Ok(());
        };
        self.log(|| format!("handled {seq} of person {person}"));
        // Per-person order holds for one instance per consumer; across instances of
        // one unpartitioned consumer it is the consumer-group layer's promise.
        if self.sc.instances > 1 {
            return Ok(());
        }
        for earlier in 1..i {
            if self.plans[earlier].person == Some(person) && !self.resolved[earlier] {
                return Err(Violation(format!(
                    "order: person {person}'s event {seq} handled before its event {earlier} was handled or dead-lettered"
                )));
            }
        }
        if self.sc.park
            && let Some(letters) = self.dlq.get(&person)
            && let Some(blocker) = letters.iter().find(|s| **s < seq)
        {
            return Err(Violation(format!(
                "parking: person {person}'s event {seq} handled while its event {blocker} is dead-lettered"
            )));
        }
        Ok(())
    }

    fn set_srv(&mut self, seq: usize, s: Srv) {
        match self.srv[seq] {
            Srv::Pending { deadline, .. } => {
                self.timeline.remove(&(deadline, seq));
            }
            Srv::Done => return,
            Srv::Unseen => {}
        }
        match s {
            Srv::Pending { deadline, .. } => {
                self.timeline.insert((deadline, seq));
            }
            Srv::Done => self.done += 1,
            Srv::Unseen => {}
        }
        self.srv[seq] = s;
    }

    fn server(&mut self, inst: u64, what: ToServer) -> Result<(), Violation> {
        let now = self.now;
        let aw = self.sc.config.ack_wait;
        match what {
            ToServer::Pull { max } => {
                let live = self.instances.iter().any(|i| i.id == inst);
                if live {
                    self.next_pull += 1;
                    let id = self.next_pull;
                    let expires = now + self.sc.fetch_expiry;
                    self.pulls.push(OpenPull {
                        id,
                        inst,
                        left: max,
                    });
                    self.at(expires, Ev::PullExpire { pull: id });
                }
            }
            ToServer::Ack(seq) => {
                if self.first_success[seq as usize].is_none() {
                    return Err(Violation(format!(
                        "safety: event {seq} acked but never handled successfully"
                    )));
                }
                self.set_srv(seq as usize, Srv::Done);
            }
            ToServer::AckForeign(seq) => self.set_srv(seq as usize, Srv::Done),
            ToServer::Term(seq) => {
                if !self.dlq_ever.contains(&seq) {
                    return Err(Violation(format!(
                        "safety: event {seq} terminated without a stored dead letter"
                    )));
                }
                self.set_srv(seq as usize, Srv::Done);
            }
            ToServer::Nak(seq, delay) => {
                if let Srv::Pending { delivered, .. } = self.srv[seq as usize] {
                    self.set_srv(
                        seq as usize,
                        Srv::Pending {
                            deadline: now + delay,
                            delivered,
                        },
                    );
                }
            }
            ToServer::Progress(seq) => {
                if let Srv::Pending { delivered, .. } = self.srv[seq as usize] {
                    self.set_srv(
                        seq as usize,
                        Srv::Pending {
                            deadline: now + aw,
                            delivered,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Hands out messages to open pulls: redeliveries (oldest deadline first), then new
    /// messages; ends filled pulls.
    fn serve(&mut self) {
        let now = self.now;
        if let Some((_, until)) = self.sc.pause.filter(|(a, b)| *a <= now && now < *b) {
            // Paused: the server delivers nothing; open pulls expire on their own.
            if !self.pulls.is_empty() && self.wake_at.is_none_or(|w| w > until || w <= now) {
                self.wake_at = Some(until);
                self.at(until, Ev::ServerWake);
            }
            return;
        }
        let aw = self.sc.config.ack_wait;
        // The consumer's max_ack_pending equals each instance's hand, as the runtime
        // sets it: whatever a crashed instance left outstanding fits in the next one's
        // hand, so a restart can gather it before running anything.
        let map = self.sc.config.max_in_hand * self.sc.instances;
        while !self.pulls.is_empty() {
            let due = self
                .timeline
                .first()
                .filter(|(d, _)| *d <= now)
                .map(|(_, i)| *i);
            let seq = match due {
                Some(i) => i,
                None if self.cursor < self.srv.len() && self.timeline.len() < map => {
                    self.cursor += 1;
                    self.cursor - 1
                }
                None => break,
            };
            let delivered = match self.srv[seq] {
                Srv::Pending { delivered, .. } => delivered + 1,
                _ => 1,
            };
            self.set_srv(
                seq,
                Srv::Pending {
                    deadline: now + aw,
                    delivered,
                },
            );
            let pull = &mut self.pulls[0];
            pull.left -= 1;
            let inst = pull.inst;
            let filled = pull.left == 0;
            if filled {
                self.pulls.remove(0);
            }
            self.after(
                self.sc.latency,
                Ev::Deliver {
                    inst,
                    seq: seq as u64,
                    delivered,
                },
            );
            if filled {
                self.after(self.sc.latency, Ev::PullDone { inst });
            }
        }
        // Wake when the next pending deadline passes, if someone is pulling.
        if !self.pulls.is_empty()
            && let Some(&(t, _)) = self.timeline.iter().find(|(d, _)| *d > now)
            && self.wake_at.is_none_or(|w| w > t || w <= now)
        {
            self.wake_at = Some(t);
            self.at(t, Ev::ServerWake);
        }
    }

    fn check_hands(&self) -> Result<(), Violation> {
        for i in &self.instances {
            // (In debug builds this also checks the core's waiting-lane count.)
            let _ = i.core.waiting_lanes();
            let held = i.core.in_hand() + i.core.reserved();
            if held > self.sc.config.max_in_hand {
                return Err(Violation(format!(
                    "bound: instance {} holds {} (reserved {}) over max_in_hand {}",
                    i.id,
                    i.core.in_hand(),
                    i.core.reserved(),
                    self.sc.config.max_in_hand
                )));
            }
            if let Some(since) = i.stopping_since {
                let limit = since
                    + Duration::from_secs(3)
                    + self.sc.fetch_expiry
                    + self.sc.latency * 4
                    + MS * 10;
                if self.now > limit {
                    return Err(Violation(format!(
                        "shutdown: instance {} still holds {} messages {:.1}s after shutdown began",
                        i.id,
                        i.core.in_hand(),
                        (self.now - since).as_secs_f64()
                    )));
                }
            }
        }
        Ok(())
    }
}
