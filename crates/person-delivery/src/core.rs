//! [`Core`]: the delivery decisions of one durable consumer, as a state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

// Hashed on every message by stream sequence and person id: foldhash, not SipHash.
use foldhash::{HashMap, HashSet};
use std::hash::Hash;
use std::time::Duration;

use person_retry::{BreakerState, ErrorClass};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::breaker::{Gate, Permit, Verdict};
use crate::config::Config;

/// What kind of message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event for the handler.
    Event,
    /// A dead letter replayed by an operator: handled even while its person is parked.
    Replay,
    /// Cannot reach the handler (oversized, undecodable, bad headers): dead-lettered at
    /// its turn.
    Rejected,
}

/// A message the shell pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival<K> {
    /// Its stream sequence: the message's identity.
    pub seq: u64,
    /// JetStream's delivery count (1-based).
    pub delivered: u64,
    /// Whose event it is; `None` when not even the subject names a person.
    pub person: Option<K>,
    /// What it is.
    pub kind: Kind,
}

/// What the consumer had outstanding when this instance started, from its consumer
/// info: messages an earlier (perhaps crashed) instance still holds come back only
/// after their ack wait, and a person's later, never-delivered events must not run
/// before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The last stream sequence the consumer had delivered.
    pub delivered_up_to: u64,
    /// Messages delivered and not yet acknowledged (`num_ack_pending`).
    pub outstanding: u64,
}

#[derive(Debug)]
struct Barrier {
    upto: u64,
    outstanding: u64,
    seen: HashSet<u64>,
    /// On the live clock (time the consumer was not paused): nothing can come back
    /// while it is.
    until: Duration,
    room_made_at: Option<Duration>,
}

/// How a handler call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The handler succeeded.
    Ok,
    /// The handler returned an error of this class (a timeout is `Transient`).
    Failed(ErrorClass),
    /// The handler panicked: a failure like a transient error.
    Panicked,
    /// The call was not made: the instance may not run it any more (its lease on the
    /// partition ran out). The message goes back, owed, without counting as a
    /// failure: neither the breaker nor the retries see it.
    NotRun,
}

/// Why a message is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// It could not reach the handler ([`Kind::Rejected`]).
    Rejected,
    /// The handler failed permanently.
    Permanent,
    /// The handler kept failing; this many deliveries were made.
    GaveUp {
        /// JetStream's delivery count.
        delivered: u64,
    },
    /// An earlier event of its person is dead-lettered (the park policy).
    Parked,
}

/// Something worth telling an operator; the shell logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice<K> {
    /// A lane has waited past the expected redelivery of `seq`.
    Overdue {
        /// The lane.
        person: K,
        /// The message it waits for.
        seq: u64,
    },
    /// A lane stopped waiting for `seq`: it went elsewhere (another instance, a
    /// deleted message). Later events of the person run.
    StoppedWaiting {
        /// The lane.
        person: K,
        /// The message it waited for.
        seq: u64,
    },
    /// The breaker changed state.
    Breaker {
        /// The state left.
        from: BreakerState,
        /// The state entered.
        to: BreakerState,
    },
    /// A message was given back to make room for a redelivery the hand was full for.
    Evicted {
        /// The message given back.
        seq: u64,
    },
    /// A dead letter could not be stored; the message comes back later.
    DeadLetterFailed {
        /// The message.
        seq: u64,
    },
}

/// What the shell must do. The shell performs actions in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action<K> {
    /// Request up to `max` messages (one pull at a time); report them with
    /// [`Core::on_message`] and the pull's end with [`Core::on_pull_done`].
    Pull {
        /// At most this many.
        max: usize,
    },
    /// Call the handler on message `seq`; report with [`Core::on_call_done`].
    Run {
        /// The message.
        seq: u64,
        /// 1 for the first call within this delivery.
        attempt: u32,
    },
    /// Acknowledge `seq`. The core forgets it.
    Ack {
        /// The message.
        seq: u64,
    },
    /// Negative-acknowledge `seq`, to be redelivered after `delay`. The core forgets
    /// it.
    Nak {
        /// The message.
        seq: u64,
        /// The redelivery delay.
        delay: Duration,
    },
    /// Tell the server `seq` is still being worked on.
    Progress {
        /// The message.
        seq: u64,
    },
    /// Store a dead letter of `seq`; report with [`Core::on_dead_letter_done`].
    DeadLetter {
        /// The message.
        seq: u64,
        /// Why.
        cause: Cause,
    },
    /// Terminate `seq` (its dead letter is stored). The core forgets it.
    Term {
        /// The message.
        seq: u64,
    },
    /// Ask the dead-letter store whether `person` still has dead letters; report with
    /// [`Core::on_parked_checked`].
    CheckParked {
        /// The person.
        person: K,
    },
    /// Shutdown's deadline passed: cancel the call or store running for `seq`, whose
    /// NAK follows. Its result, if it still comes, is ignored.
    Abort {
        /// The message.
        seq: u64,
    },
    /// Something to log.
    Notice(Notice<K>),
}

/// Counts for `Stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Acked after the handler succeeded.
    pub processed: u64,
    /// Failed calls retried (in process or by a NAK with delay).
    pub retried: u64,
    /// Terminated after their dead letter was stored.
    pub dead_lettered: u64,
    /// Of those, parked behind an earlier dead letter.
    pub parked: u64,
    /// Breaker transitions.
    pub breaker_transitions: u64,
    /// Messages given back to make room for a redelivery.
    pub evicted: u64,
    /// Lanes that stopped waiting for a redelivery that never came.
    pub stopped_waiting: u64,
    /// Redeliveries of a message already held, dropped.
    pub duplicates: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    /// Waiting between in-process attempts until this time.
    Backoff(Duration),
    Running(Permit),
    Storing(Cause),
    Checking,
}

#[derive(Debug)]
struct Msg<K> {
    person: Option<K>,
    delivered: u64,
    kind: Kind,
    state: State,
    /// Calls made within this delivery.
    attempt: u32,
}

/// A redelivery a lane waits for.
#[derive(Debug, Clone, Copy)]
struct Owed {
    /// When the server should have it ready.
    due: Duration,
    warned: bool,
    /// When room was last made for it by giving a message back.
    room_made_at: Option<Duration>,
    /// The pull clock when it became due (see `Core::pull_clock`).
    due_mark: Option<Duration>,
    /// Its entry in the timers.
    timer: Duration,
}

#[derive(Debug, Default)]
struct Lane {
    /// Held messages not started, by stream sequence.
    queue: BTreeSet<u64>,
    /// The message being worked on (running, storing, checking, or between attempts).
    active: Option<u64>,
    /// NAKed messages of this person that must come back before anything later runs.
    owed: BTreeMap<u64, Owed>,
    in_ready: bool,
}

impl Lane {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.active.is_none() && self.owed.is_empty()
    }

    /// The next message, if nothing owed comes before it.
    fn head(&self) -> Option<u64> {
        let head = *self.queue.first()?;
        match self.owed.first_key_value() {
            Some((owed, _)) if *owed < head => None,
            _ => Some(head),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining { deadline: Duration },
}

/// The delivery decisions of one handler on one durable consumer, without I/O.
///
/// Inputs are the `on_*` methods, each given the current time (any monotonic origin;
/// the core reads no clock). After any input, take every action with
/// [`poll_action`](Self::poll_action), perform them in order, and call
/// [`on_timeout`](Self::on_timeout) at [`poll_timeout`](Self::poll_timeout) if no
/// other input came first.
///
/// What it guarantees, whatever the order of inputs:
/// - nothing is acked unless its handler call succeeded, and nothing is terminated
///   unless its dead letter was stored;
/// - a person's messages are worked on one at a time, in stream order; a NAKed message
///   of a person is waited for (it is *owed*) before anything later of that person
///   runs, for at most its delay plus [`Config::give_up_after`] of pulling while the
///   consumer is not paused ([`Core::on_paused`]);
/// - at most [`Config::max_in_hand`] messages are held, counting an outstanding pull;
///   when the hand is full of messages queued behind an owed redelivery that is due,
///   the latest of them is given back (a NAK with [`Config::evict_delay`]) so the
///   redelivery can be pulled: the hand never deadlocks;
/// - nothing is pulled and no handler runs while the breaker is Open; it half-opens
///   on its own timer;
/// - shutdown stops pulling, waits for the outstanding pull to end, then gives back
///   what did not run with delays that keep each person's order for the next
///   instance.
#[derive(Debug)]
pub struct Core<K> {
    config: Config,
    rng: StdRng,
    msgs: HashMap<u64, Msg<K>>,
    lanes: HashMap<K, Lane>,
    ready: VecDeque<K>,
    /// Lanes whose next call waits for the breaker.
    breaker_wait: Vec<K>,
    /// Rejected messages with no person, waiting for a slot.
    loose: VecDeque<u64>,
    parked: HashSet<K>,
    gate: Gate,
    /// Total time a pull has been outstanding. A lane stops waiting for a redelivery
    /// only after pulls were open long enough to bring it: time when nothing could be
    /// pulled (breaker Open, a full hand) does not count.
    pull_clock: Duration,
    /// The server delivers nothing before this (the consumer is paused): pulls open
    /// until then do not count on the pull clock.
    paused_until: Duration,
    /// Time passed while the consumer was not paused, since the core started.
    live_clock: Duration,
    pulling: bool,
    reserved: usize,
    linger_until: Option<Duration>,
    /// Handler calls and dead-letter stores running.
    busy: usize,
    /// Handler calls running.
    calls: usize,
    /// Lanes with an owed redelivery (kept, not counted, since `Stats` reads it often).
    waiting: usize,
    /// Whose lane owes each owed redelivery, for its timer.
    owed_by: HashMap<u64, K>,
    /// Timers: in-process retries and owed redeliveries, by (time, seq).
    timers: BTreeSet<(Duration, u64)>,
    next_progress: Option<Duration>,
    phase: Phase,
    /// Set at start while an earlier instance's messages may still come back: later
    /// messages are held back until they did (or could have).
    barrier: Option<Barrier>,
    now: Duration,
    counts: Counts,
    out: VecDeque<Action<K>>,
}

impl<K: Clone + Eq + Hash> Core<K> {
    /// A core with nothing held. `parked` are the people who have dead letters for this
    /// consumer already (read from the dead-letter store at start); `recovery` is what
    /// the consumer had outstanding (read from its info at start).
    pub fn new(
        config: Config,
        parked: impl IntoIterator<Item = K>,
        recovery: Recovery,
        now: Duration,
    ) -> Self {
        let mut config = config;
        config.max_in_hand = config.max_in_hand.max(1);
        config.concurrency = config.concurrency.max(1);
        config.max_pull = config.max_pull.max(1);
        config.pull_batch = config
            .pull_batch
            .clamp(1, config.max_in_hand.min(config.max_pull));
        config.in_process_attempts = config.in_process_attempts.max(1);
        config.max_deliver = config.max_deliver.max(1);
        // Whatever an earlier instance held is redelivered within the ack wait (its
        // delayed NAKs, capped at half of it, sooner), and what reached its pull after
        // it died an ack wait after that pull expired.
        let barrier = (recovery.outstanding > 0).then(|| Barrier {
            upto: recovery.delivered_up_to,
            outstanding: recovery.outstanding,
            seen: HashSet::default(),
            until: config.ack_wait + config.pull_expiry + config.overdue_after(),
            room_made_at: None,
        });
        let mut core = Self {
            rng: StdRng::seed_from_u64(config.seed),
            gate: Gate::new(config.breaker.clone()),
            parked: if config.park {
                parked.into_iter().collect()
            } else {
                HashSet::default()
            },
            config,
            msgs: HashMap::default(),
            lanes: HashMap::default(),
            ready: VecDeque::new(),
            breaker_wait: Vec::new(),
            loose: VecDeque::new(),
            pull_clock: Duration::ZERO,
            paused_until: Duration::ZERO,
            live_clock: Duration::ZERO,
            pulling: false,
            reserved: 0,
            linger_until: None,
            busy: 0,
            calls: 0,
            waiting: 0,
            owed_by: HashMap::default(),
            timers: BTreeSet::new(),
            next_progress: None,
            phase: Phase::Running,
            barrier,
            now,
            counts: Counts::default(),
            out: VecDeque::new(),
        };
        core.step();
        core
    }

    // ---- inputs ----

    /// A pulled message arrived.
    pub fn on_message(&mut self, now: Duration, arrival: Arrival<K>) {
        self.advance(now);
        self.reserved = self.reserved.saturating_sub(1);
        let Arrival {
            seq,
            delivered,
            person,
            kind,
        } = arrival;
        self.seen_by_barrier(seq);
        if let Some(m) = self.msgs.get_mut(&seq) {
            // A redelivery of a message held already (the server's ack wait ran out
            // while it waited or ran): the held copy settles it.
            m.delivered = m.delivered.max(delivered);
            self.counts.duplicates += 1;
            self.step();
            return;
        }
        if self.msgs.len() >= self.config.max_in_hand {
            // Only an arrival without a pull could get here: give it back at once.
            self.out.push_back(Action::Nak {
                seq,
                delay: Duration::ZERO,
            });
            if let Some(p) = &person {
                let due = self.now;
                self.owe(p.clone(), seq, due);
            }
            self.step();
            return;
        }
        self.msgs.insert(
            seq,
            Msg {
                person: person.clone(),
                delivered,
                kind,
                state: State::Queued,
                attempt: 0,
            },
        );
        if self.next_progress.is_none() {
            self.next_progress = Some(self.now + self.config.progress_every);
        }
        match person {
            Some(p) => {
                let lane = self.lanes.entry(p.clone()).or_default();
                if let Some(owed) = lane.owed.remove(&seq) {
                    self.timers.remove(&(owed.timer, seq));
                    self.owed_by.remove(&seq);
                    if lane.owed.is_empty() {
                        self.waiting -= 1;
                    }
                }
                lane.queue.insert(seq);
                self.make_ready(p);
            }
            None => self.loose.push_back(seq),
        }
        self.step();
    }

    /// A pulled message that is not for this consumer (the durable's filter on the
    /// server is wider than what it handles: another consumer's replay). The shell
    /// acknowledges it at once; it takes no room, but it counts as pulled, and as
    /// one of the messages a recovery waits for when an earlier instance had it.
    pub fn on_foreign(&mut self, now: Duration, seq: u64) {
        self.advance(now);
        self.reserved = self.reserved.saturating_sub(1);
        self.seen_by_barrier(seq);
        self.step();
    }

    /// A message the recovery may be waiting for came back.
    fn seen_by_barrier(&mut self, seq: u64) {
        if let Some(b) = &mut self.barrier
            && seq <= b.upto
        {
            b.seen.insert(seq);
            if b.seen.len() as u64 >= b.outstanding {
                self.lift_barrier();
            }
        }
    }

    /// The outstanding pull ended (filled, expired or failed).
    pub fn on_pull_done(&mut self, now: Duration) {
        self.advance(now);
        self.pulling = false;
        self.reserved = 0;
        self.step();
    }

    /// The consumer is paused on the server for `remaining` from `now` (by another
    /// instance's breaker, or an operator): nothing can be delivered meanwhile, so owed
    /// redeliveries are not given up on for want of them, and a recovery barrier waits
    /// that much longer for an earlier instance's messages.
    pub fn on_paused(&mut self, now: Duration, remaining: Duration) {
        self.advance(now);
        self.paused_until = self.paused_until.max(self.now + remaining);
        self.step();
    }

    /// A handler call on `seq` ended.
    pub fn on_call_done(&mut self, now: Duration, seq: u64, result: CallResult) {
        self.advance(now);
        let Some(&Msg {
            state: State::Running(permit),
            attempt,
            delivered,
            ..
        }) = self.msgs.get(&seq)
        else {
            return;
        };
        self.busy -= 1;
        self.calls -= 1;
        let verdict = match result {
            CallResult::Ok => Verdict::Success,
            CallResult::Failed(ErrorClass::Permanent) | CallResult::NotRun => Verdict::Neutral,
            CallResult::Failed(_) | CallResult::Panicked => Verdict::Failure,
        };
        if let Some(t) = self.gate.record(self.now, permit, verdict) {
            self.breaker_changed(t);
        } else if self.gate.state() == BreakerState::HalfOpen {
            // A probe slot is free again.
            for p in std::mem::take(&mut self.breaker_wait) {
                self.make_ready(p);
            }
        }
        let class = match result {
            CallResult::Ok => {
                self.counts.processed += 1;
                self.settle(seq, Action::Ack { seq });
                self.step();
                return;
            }
            CallResult::Failed(ErrorClass::Permanent) => {
                self.store(seq, Cause::Permanent);
                self.step();
                return;
            }
            CallResult::NotRun => {
                let delay = self.config.evict_delay;
                self.nak_owed(seq, delay);
                self.step();
                return;
            }
            CallResult::Failed(class) => class,
            CallResult::Panicked => ErrorClass::Transient,
        };
        let draining = matches!(self.phase, Phase::Draining { .. });
        if attempt < self.config.in_process_attempts && !draining {
            // The wait before the next attempt, `attempt + 1`.
            let delay = class
                .retry_after()
                .unwrap_or_else(|| self.config.retry.delay_with(attempt + 1, &mut self.rng));
            let at = self.now + delay;
            self.msgs.get_mut(&seq).expect("held").state = State::Backoff(at);
            self.timers.insert((at, seq));
            self.counts.retried += 1;
        } else if delivered >= self.config.max_deliver {
            self.store(seq, Cause::GaveUp { delivered });
        } else {
            let delay = class
                .retry_after()
                .unwrap_or_else(|| self.config.retry.nak_delay_with(delivered, &mut self.rng));
            self.counts.retried += 1;
            self.nak_owed(seq, delay);
        }
        self.step();
    }

    /// The dead letter of `seq` was stored (`true`) or could not be (`false`).
    pub fn on_dead_letter_done(&mut self, now: Duration, seq: u64, stored: bool) {
        self.advance(now);
        let Some(Msg {
            state: State::Storing(cause),
            person,
            delivered,
            ..
        }) = self.msgs.get(&seq)
        else {
            return;
        };
        let (cause, person, delivered) = (*cause, person.clone(), *delivered);
        self.busy -= 1;
        if stored {
            self.counts.dead_lettered += 1;
            if cause == Cause::Parked {
                self.counts.parked += 1;
            }
            if self.config.park
                && let Some(p) = person
            {
                self.parked.insert(p);
            }
            self.settle(seq, Action::Term { seq });
        } else {
            self.out
                .push_back(Action::Notice(Notice::DeadLetterFailed { seq }));
            let delay = self
                .config
                .retry
                .nak_delay_with(delivered, &mut self.rng)
                .max(Duration::from_millis(500));
            self.nak_owed(seq, delay);
        }
        self.step();
    }

    /// The dead-letter store answered a [`Action::CheckParked`]: whether `person`
    /// still has dead letters for this consumer.
    pub fn on_parked_checked(&mut self, now: Duration, person: K, parked: bool) {
        self.advance(now);
        let Some(seq) = self.lanes.get(&person).and_then(|l| l.active) else {
            return;
        };
        if self.msgs.get(&seq).map(|m| m.state) != Some(State::Checking) {
            return;
        }
        let draining = matches!(self.phase, Phase::Draining { .. });
        if parked {
            self.parked.insert(person.clone());
            if draining {
                self.msgs.get_mut(&seq).expect("held").state = State::Queued;
                let lane = self.lane_mut(&person);
                lane.active = None;
                lane.queue.insert(seq);
            } else {
                self.store(seq, Cause::Parked);
            }
        } else {
            // Replayed or purged meanwhile, possibly by another process.
            self.parked.remove(&person);
            self.msgs.get_mut(&seq).expect("held").state = State::Queued;
            let lane = self.lane_mut(&person);
            lane.active = None;
            lane.queue.insert(seq);
            self.make_ready(person);
        }
        self.step();
    }

    /// Time passed; call at [`poll_timeout`](Self::poll_timeout).
    pub fn on_timeout(&mut self, now: Duration) {
        self.advance(now);
        self.step();
    }

    /// Stop: pull no more, let running calls finish until `now + grace`, then give
    /// everything back.
    pub fn on_shutdown(&mut self, now: Duration, grace: Duration) {
        self.advance(now);
        if self.phase == Phase::Running {
            self.phase = Phase::Draining {
                deadline: self.now + grace,
            };
            self.linger_until = None;
        }
        self.step();
    }

    // ---- outputs ----

    /// The next action to perform, in order.
    pub fn poll_action(&mut self) -> Option<Action<K>> {
        self.out.pop_front()
    }

    /// When to call [`on_timeout`](Self::on_timeout) if nothing else happens first.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut t: Option<Duration> = None;
        let now = self.now;
        // A time already passed was acted on by the last input; it is no wake-up.
        let mut at = |x: Option<Duration>| {
            if let Some(x) = x.filter(|x| *x > now) {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        at(self.timers.first().map(|(t, _)| *t));
        if !self.msgs.is_empty() {
            at(self.next_progress);
        }
        at(self.gate.opens_until());
        at(self.linger_until);
        at(self
            .barrier
            .as_ref()
            .map(|b| self.now.max(self.paused_until) + b.until.saturating_sub(self.live_clock)));
        if let Some(t) = self.barrier.as_ref().and_then(|b| b.room_made_at)
            && self.msgs.len() >= self.config.max_in_hand
        {
            at(Some(t + self.config.evict_delay));
        }
        if let Phase::Draining { deadline } = self.phase
            && self.busy > 0
        {
            at(Some(deadline));
        }
        t
    }

    /// Shutdown is complete: nothing held, no pull outstanding.
    pub fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. }) && !self.pulling && self.msgs.is_empty()
    }

    /// Messages held now (a pull's reservation not included).
    pub fn in_hand(&self) -> usize {
        self.msgs.len()
    }

    /// Room reserved for the outstanding pull.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Handler calls running now.
    pub fn in_flight(&self) -> usize {
        self.calls
    }

    /// Lanes waiting for a redelivery.
    pub fn waiting_lanes(&self) -> usize {
        debug_assert_eq!(
            self.waiting,
            self.lanes.values().filter(|l| !l.owed.is_empty()).count()
        );
        self.waiting
    }

    /// People parked behind a dead letter.
    pub fn parked_people(&self) -> usize {
        self.parked.len()
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.gate.state()
    }

    /// The counters.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether messages still wait for an earlier instance's to come back.
    pub fn recovering(&self) -> bool {
        self.barrier.is_some()
    }

    // ---- the machine ----

    fn advance(&mut self, now: Duration) {
        let live = now.saturating_sub(self.now.max(self.paused_until));
        self.live_clock += live;
        if self.pulling {
            self.pull_clock += live;
        }
        self.now = self.now.max(now);
    }

    fn lane_mut(&mut self, person: &K) -> &mut Lane {
        self.lanes.entry(person.clone()).or_default()
    }

    fn lift_barrier(&mut self) {
        if self.barrier.take().is_some() {
            let people: Vec<K> = self
                .lanes
                .iter()
                .filter(|(_, l)| !l.queue.is_empty())
                .map(|(p, _)| p.clone())
                .collect();
            for p in people {
                self.make_ready(p);
            }
        }
    }

    /// Whether messages must wait for an earlier instance's to come back. The server
    /// hands out redeliveries by deadline, not by stream order, so until everything
    /// outstanding is here (or could have been), nothing runs; then each lane runs
    /// its messages in order.
    fn held_back(&self) -> bool {
        self.barrier.is_some()
    }

    fn make_ready(&mut self, person: K) {
        let lane = self.lanes.entry(person.clone()).or_default();
        if !lane.in_ready {
            lane.in_ready = true;
            self.ready.push_back(person);
        }
    }

    fn breaker_changed(&mut self, (from, to): (BreakerState, BreakerState)) {
        self.counts.breaker_transitions += 1;
        self.out
            .push_back(Action::Notice(Notice::Breaker { from, to }));
        if to != BreakerState::Open {
            for p in std::mem::take(&mut self.breaker_wait) {
                self.make_ready(p);
            }
        }
    }

    /// Forgets a settled message and frees its lane.
    fn settle(&mut self, seq: u64, action: Action<K>) {
        self.out.push_back(action);
        let Some(m) = self.msgs.remove(&seq) else {
            return;
        };
        if let Some(p) = m.person {
            let lane = self.lane_mut(&p);
            if lane.active == Some(seq) {
                lane.active = None;
            }
            lane.queue.remove(&seq);
            self.make_ready(p);
        }
    }

    /// NAKs `seq` with `delay` (capped) and has its lane wait for it.
    fn nak_owed(&mut self, seq: u64, delay: Duration) {
        let delay = delay.min(self.config.max_nak_delay());
        let person = self.msgs.get(&seq).and_then(|m| m.person.clone());
        self.settle(seq, Action::Nak { seq, delay });
        if let Some(p) = person {
            let due = self.now + delay;
            self.owe(p, seq, due);
        }
    }

    fn owe(&mut self, person: K, seq: u64, due: Duration) {
        let owed = Owed {
            due,
            warned: false,
            room_made_at: None,
            due_mark: None,
            timer: due,
        };
        self.timers.insert((due, seq));
        self.owed_by.insert(seq, person.clone());
        let lane = self.lanes.entry(person).or_default();
        if lane.owed.is_empty() {
            self.waiting += 1;
        }
        if let Some(old) = lane.owed.insert(seq, owed) {
            self.timers.remove(&(old.timer, seq));
        }
    }

    fn store(&mut self, seq: u64, cause: Cause) {
        if let Some(m) = self.msgs.get_mut(&seq) {
            m.state = State::Storing(cause);
            self.busy += 1;
            self.out.push_back(Action::DeadLetter { seq, cause });
        }
    }

    /// Runs the machine until nothing more can happen now.
    fn step(&mut self) {
        if let Some(t) = self.gate.tick(self.now) {
            self.breaker_changed(t);
        }
        if self
            .barrier
            .as_ref()
            .is_some_and(|b| self.live_clock >= b.until)
        {
            self.lift_barrier();
        }
        self.fire_timers();
        self.progress();
        match self.phase {
            Phase::Running => {
                self.schedule();
                self.maybe_pull();
            }
            Phase::Draining { deadline } => self.drain(deadline),
        }
        self.gc();
    }

    fn fire_timers(&mut self) {
        while let Some(&(at, seq)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.pop_first();
            if let Some(m) = self.msgs.get(&seq) {
                // An in-process retry is due.
                if let (State::Backoff(_), Some(p)) = (m.state, m.person.clone()) {
                    self.make_ready(p);
                }
                continue;
            }
            self.owed_timer_fired(seq);
        }
    }

    /// An owed redelivery's timer: at its due time (room may have to be made for
    /// it), when overdue (warn), and much later (stop waiting).
    fn owed_timer_fired(&mut self, seq: u64) {
        let Some(person) = self.owed_by.get(&seq).cloned() else {
            return;
        };
        let now = self.now;
        let clock = self.pull_clock;
        let (overdue, give_up, retry) = (
            self.config.overdue_after(),
            self.config.give_up_after(),
            self.config.evict_delay,
        );
        let lane = self.lanes.get_mut(&person).expect("lane exists");
        let owed = lane.owed.get_mut(&seq).expect("owed exists");
        if now < owed.due {
            owed.timer = owed.due;
            self.timers.insert((owed.due, seq));
            return;
        }
        let mark = *owed.due_mark.get_or_insert(clock);
        let pulled_for = clock - mark;
        if pulled_for >= give_up {
            lane.owed.remove(&seq);
            self.owed_by.remove(&seq);
            if lane.owed.is_empty() {
                self.waiting -= 1;
            }
            self.counts.stopped_waiting += 1;
            self.out.push_back(Action::Notice(Notice::StoppedWaiting {
                person: person.clone(),
                seq,
            }));
            self.make_ready(person);
            return;
        }
        if !owed.warned && now >= owed.due + overdue {
            owed.warned = true;
            self.out.push_back(Action::Notice(Notice::Overdue {
                person: person.clone(),
                seq,
            }));
        }
        // The pull clock runs no faster than time: check again when it could be up.
        let mut next = now + (give_up - pulled_for);
        if !owed.warned {
            next = next.min(owed.due + overdue);
        }
        if let Some(t) = owed.room_made_at
            && t + retry > now
        {
            next = next.min(t + retry);
        }
        owed.timer = next;
        self.timers.insert((next, seq));
    }

    fn progress(&mut self) {
        let Some(at) = self.next_progress else {
            return;
        };
        if self.msgs.is_empty() {
            self.next_progress = None;
            return;
        }
        if self.now < at {
            return;
        }
        let mut seqs: Vec<u64> = self.msgs.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            self.out.push_back(Action::Progress { seq });
        }
        self.next_progress = Some(self.now + self.config.progress_every);
    }

    /// Starts what can start: dead letters of loose rejected messages, then lanes
    /// round robin, within `concurrency`.
    fn schedule(&mut self) {
        while self.busy < self.config.concurrency {
            let Some(seq) = self.loose.pop_front() else {
                break;
            };
            self.store(seq, Cause::Rejected);
        }
        let mut rounds = self.ready.len();
        while self.busy < self.config.concurrency && rounds > 0 {
            rounds -= 1;
            let Some(person) = self.ready.pop_front() else {
                break;
            };
            if let Some(lane) = self.lanes.get_mut(&person) {
                lane.in_ready = false;
            }
            self.try_start(person);
        }
    }

    fn try_start(&mut self, person: K) {
        let Some(lane) = self.lanes.get(&person) else {
            return;
        };
        let (seq, resumed) = match lane.active {
            Some(seq) => {
                // Only a message between in-process attempts can be resumed.
                match self.msgs.get(&seq).map(|m| m.state) {
                    Some(State::Backoff(at)) if at <= self.now => (seq, true),
                    _ => return,
                }
            }
            None => match lane.head() {
                Some(seq) if !self.held_back() => (seq, false),
                _ => return,
            },
        };
        let kind = self.msgs.get(&seq).expect("held").kind;
        if !resumed && kind == Kind::Rejected {
            self.activate(&person, seq);
            self.store(seq, Cause::Rejected);
            return;
        }
        if !resumed && kind == Kind::Event && self.config.park && self.parked.contains(&person) {
            self.activate(&person, seq);
            self.msgs.get_mut(&seq).expect("held").state = State::Checking;
            self.out.push_back(Action::CheckParked { person });
            return;
        }
        let Some(permit) = self.gate.try_acquire() else {
            self.breaker_wait.push(person);
            return;
        };
        self.activate(&person, seq);
        let m = self.msgs.get_mut(&seq).expect("held");
        m.attempt += 1;
        m.state = State::Running(permit);
        self.busy += 1;
        self.calls += 1;
        self.out.push_back(Action::Run {
            seq,
            attempt: m.attempt,
        });
    }

    fn activate(&mut self, person: &K, seq: u64) {
        let lane = self.lane_mut(person);
        lane.queue.remove(&seq);
        lane.active = Some(seq);
    }

    fn maybe_pull(&mut self) {
        if self.pulling || self.gate.state() == BreakerState::Open {
            self.linger_until = None;
            return;
        }
        let mut room = self
            .config
            .max_in_hand
            .saturating_sub(self.msgs.len() + self.reserved);
        if room == 0 {
            room = self.make_room();
            if room == 0 {
                return;
            }
        }
        let room = room.min(self.config.max_pull);
        let idle = self.busy == 0;
        let lingered = self.linger_until.is_some_and(|t| self.now >= t);
        if room >= self.config.pull_batch || idle || lingered {
            self.linger_until = None;
            self.pulling = true;
            self.reserved = room;
            self.out.push_back(Action::Pull { max: room });
        } else if self.linger_until.is_none() {
            self.linger_until = Some(self.now + self.config.pull_linger);
        }
    }

    /// The hand is full. For each owed redelivery that is due and has no room yet,
    /// give back the latest message that cannot run before it anyway.
    fn make_room(&mut self) -> usize {
        let now = self.now;
        let retry = self.config.evict_delay;
        let due: Vec<(K, u64)> = self
            .lanes
            .iter()
            .flat_map(|(p, l)| {
                l.owed.iter().filter_map(move |(seq, o)| {
                    let waiting = o.room_made_at.is_none_or(|t| now >= t + retry);
                    (o.due <= now && waiting).then(|| (p.clone(), *seq))
                })
            })
            .collect();
        let mut made = 0;
        if let Some(b) = &self.barrier
            && b.room_made_at.is_none_or(|t| now >= t + retry)
        {
            let victim = self
                .msgs
                .iter()
                .filter(|(_, m)| m.state == State::Queued && m.person.is_some())
                .map(|(s, _)| *s)
                .max();
            if let Some(victim) = victim {
                if let Some(b) = &mut self.barrier {
                    b.room_made_at = Some(now);
                }
                self.counts.evicted += 1;
                self.out
                    .push_back(Action::Notice(Notice::Evicted { seq: victim }));
                self.nak_owed(victim, retry);
                made += 1;
            }
        }
        for (person, owed_seq) in due {
            let Some(victim) = self.blocked_victim() else {
                break;
            };
            if let Some(o) = self
                .lanes
                .get_mut(&person)
                .and_then(|l| l.owed.get_mut(&owed_seq))
            {
                o.room_made_at = Some(now);
            }
            self.counts.evicted += 1;
            self.out
                .push_back(Action::Notice(Notice::Evicted { seq: victim }));
            let delay = self.config.evict_delay;
            self.nak_owed(victim, delay);
            made += 1;
        }
        made
    }

    /// The queued message with the highest sequence among those behind an owed one.
    fn blocked_victim(&self) -> Option<u64> {
        self.lanes
            .values()
            .filter_map(|l| {
                let (first_owed, _) = l.owed.first_key_value()?;
                let last = *l.queue.last()?;
                (last > *first_owed).then_some(last)
            })
            .max()
    }

    /// Shutdown: once the pull has ended, give back each idle lane's messages in order,
    /// each no sooner than the owed redeliveries before it; at the deadline, abort what
    /// still runs.
    fn drain(&mut self, deadline: Duration) {
        if self.now >= deadline {
            let mut running: Vec<u64> = self
                .msgs
                .iter()
                .filter(|(_, m)| {
                    matches!(
                        m.state,
                        State::Running(_) | State::Storing(_) | State::Checking
                    )
                })
                .map(|(s, _)| *s)
                .collect();
            running.sort_unstable();
            for seq in running {
                self.out.push_back(Action::Abort { seq });
                let m = self.msgs.get_mut(&seq).expect("held");
                if matches!(m.state, State::Running(_) | State::Storing(_)) {
                    self.busy -= 1;
                }
                if matches!(m.state, State::Running(_)) {
                    self.calls -= 1;
                }
                m.state = State::Queued;
                if let Some(p) = m.person.clone() {
                    let lane = self.lane_mut(&p);
                    lane.active = None;
                    lane.queue.insert(seq);
                }
            }
        }
        if self.pulling {
            // Messages NAKed now would be redelivered into the open pull.
            return;
        }
        for seq in std::mem::take(&mut self.loose) {
            self.settle(
                seq,
                Action::Nak {
                    seq,
                    delay: Duration::ZERO,
                },
            );
        }
        let idle: Vec<K> = self
            .lanes
            .iter()
            .filter(|(_, l)| {
                !l.queue.is_empty()
                    || l.active.is_some_and(|s| {
                        matches!(self.msgs.get(&s).map(|m| m.state), Some(State::Backoff(_)))
                    })
            })
            .filter(|(_, l)| {
                l.active.is_none_or(|s| {
                    matches!(self.msgs.get(&s).map(|m| m.state), Some(State::Backoff(_)))
                })
            })
            .map(|(p, _)| p.clone())
            .collect();
        for person in idle {
            self.release_lane(&person);
        }
    }

    fn release_lane(&mut self, person: &K) {
        let now = self.now;
        let margin = RELEASE_MARGIN;
        let lane = self.lanes.get_mut(person).expect("lane exists");
        let mut seqs: Vec<u64> = lane.queue.iter().copied().collect();
        if let Some(active) = lane.active.take() {
            seqs.push(active);
        }
        seqs.sort_unstable();
        let owed: Vec<(u64, Duration)> = lane.owed.iter().map(|(s, o)| (*s, o.due)).collect();
        let mut floor = Duration::ZERO;
        for seq in seqs {
            for (o, due) in &owed {
                if *o < seq {
                    floor = floor.max(due.saturating_sub(now) + margin);
                }
            }
            if let Some(m) = self.msgs.get(&seq)
                && let State::Backoff(at) = m.state
            {
                self.timers.remove(&(at, seq));
            }
            self.settle(seq, Action::Nak { seq, delay: floor });
        }
    }

    /// Drops lanes with nothing left to remember.
    fn gc(&mut self) {
        if self.lanes.len() > 2 * self.msgs.len() + 64 {
            self.lanes.retain(|_, l| !l.is_empty() || l.in_ready);
        }
    }
}

/// How much later than an owed redelivery a message after it is given back at
/// shutdown, so the server hands them out in order.
pub const RELEASE_MARGIN: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use person_retry::{CircuitBreakerConfig, Jitter, RetryPolicy};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(max_in_hand: usize) -> Config {
        let retry = RetryPolicy::builder()
            .max_attempts(5)
            .initial_backoff(MS * 100)
            .max_backoff(MS * 100)
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let mut c = Config::new(retry, Duration::from_secs(3));
        c.max_in_hand = max_in_hand;
        c.pull_batch = 1;
        c
    }

    fn event(seq: u64, person: u32) -> Arrival<u32> {
        Arrival {
            seq,
            delivered: 1,
            person: Some(person),
            kind: Kind::Event,
        }
    }

    fn drain(core: &mut Core<u32>) -> Vec<Action<u32>> {
        std::iter::from_fn(|| core.poll_action())
            .filter(|a| !matches!(a, Action::Progress { .. } | Action::Notice(_)))
            .collect()
    }

    #[test]
    fn a_full_hand_behind_a_due_redelivery_gives_back_its_latest_message_and_pulls() {
        let mut core = Core::new(config(3), [], Recovery::default(), Duration::ZERO);
        assert_eq!(drain(&mut core), [Action::Pull { max: 3 }]);
        for seq in 1..=3 {
            core.on_message(MS, event(seq, 7));
        }
        core.on_pull_done(MS);
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 1 }]);
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::Transient));
        assert_eq!(
            drain(&mut core),
            [
                Action::Nak {
                    seq: 1,
                    delay: MS * 100
                },
                Action::Pull { max: 1 }
            ]
        );
        core.on_message(MS * 3, event(4, 7));
        core.on_pull_done(MS * 3);
        assert!(
            drain(&mut core).is_empty(),
            "the hand is full and 1 is not due yet"
        );
        assert_eq!(core.waiting_lanes(), 1);
        core.on_timeout(MS * 102);
        assert_eq!(
            drain(&mut core),
            [
                Action::Nak {
                    seq: 4,
                    delay: MS * 500
                },
                Action::Pull { max: 1 }
            ]
        );
        core.on_message(MS * 103, event(1, 7));
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 1 }]);
        assert_eq!(core.counts().evicted, 1);
    }

    #[test]
    fn a_call_not_made_goes_back_owed_without_touching_the_breaker_or_the_retries() {
        let mut c = config(4);
        c.breaker = CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .open_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(1, 1));
        core.on_message(MS, event(2, 1));
        core.on_pull_done(MS);
        assert!(drain(&mut core).contains(&Action::Run { seq: 1, attempt: 1 }));
        core.on_call_done(MS * 2, 1, CallResult::NotRun);
        assert_eq!(core.breaker_state(), BreakerState::Closed, "not a failure");
        assert_eq!(core.counts().retried, 0, "not an attempt");
        let acts = drain(&mut core);
        assert!(
            acts.contains(&Action::Nak {
                seq: 1,
                delay: MS * 500
            }),
            "{acts:?}"
        );
        assert!(
            !acts.contains(&Action::Run { seq: 2, attempt: 1 }),
            "the person's next event waits for it: {acts:?}"
        );
        assert_eq!(core.waiting_lanes(), 1);
    }

    #[test]
    fn an_open_breaker_pulls_nothing_and_half_opens_on_its_own_timer() {
        let mut c = config(4);
        c.breaker = CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .open_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(1, 1));
        core.on_pull_done(MS);
        drain(&mut core);
        core.on_call_done(MS * 2, 1, CallResult::Panicked);
        core.on_pull_done(MS * 2);
        assert_eq!(core.breaker_state(), BreakerState::Open);
        assert_eq!(
            drain(&mut core),
            [Action::Nak {
                seq: 1,
                delay: MS * 100
            }]
        );
        core.on_timeout(MS * 1001);
        assert_eq!(core.breaker_state(), BreakerState::Open);
        assert!(drain(&mut core).is_empty(), "no pull while Open");
        core.on_timeout(MS * 1002);
        assert_eq!(core.breaker_state(), BreakerState::HalfOpen);
        assert_eq!(drain(&mut core), [Action::Pull { max: 4 }]);
        assert_eq!(core.counts().breaker_transitions, 2);
    }

    #[test]
    fn the_first_in_process_retry_waits_the_policys_first_delay() {
        let mut c = config(4);
        c.in_process_attempts = 2;
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(1, 1));
        drain(&mut core);
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::Transient));
        assert!(
            drain(&mut core)
                .iter()
                .all(|a| !matches!(a, Action::Run { .. }))
        );
        core.on_timeout(MS * 101);
        assert!(drain(&mut core).is_empty());
        core.on_timeout(MS * 102);
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 2 }]);
    }

    #[test]
    fn shutdown_waits_for_the_pull_then_gives_back_each_lane_behind_its_redelivery() {
        let mut core = Core::new(config(8), [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        for seq in 1..=3 {
            core.on_message(MS, event(seq, 1));
        }
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::Transient));
        let nak = drain(&mut core);
        assert!(
            nak.contains(&Action::Nak {
                seq: 1,
                delay: MS * 100
            }),
            "{nak:?}"
        );
        core.on_shutdown(MS * 10, Duration::from_secs(5));
        assert!(
            drain(&mut core).is_empty(),
            "nothing is NAKed while the pull is open"
        );
        core.on_pull_done(MS * 20);
        // 1 comes back at 102 ms; 2 and 3 half a second after it.
        assert_eq!(
            drain(&mut core),
            [
                Action::Nak {
                    seq: 2,
                    delay: MS * 582
                },
                Action::Nak {
                    seq: 3,
                    delay: MS * 582
                }
            ]
        );
        assert!(core.is_stopped());
    }

    #[test]
    fn a_restart_gathers_what_was_outstanding_and_then_runs_each_person_in_order() {
        let recovery = Recovery {
            delivered_up_to: 10,
            outstanding: 2,
        };
        let mut core = Core::new(config(8), [], recovery, Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(11, 1));
        core.on_message(MS, event(9, 1));
        assert!(
            drain(&mut core).is_empty(),
            "one outstanding message is still out"
        );
        assert!(core.recovering());
        core.on_message(MS * 2, event(4, 1));
        assert!(!core.recovering());
        assert_eq!(drain(&mut core), [Action::Run { seq: 4, attempt: 1 }]);
    }

    #[test]
    fn a_message_for_another_consumer_takes_no_room_and_counts_for_a_recovery() {
        let recovery = Recovery {
            delivered_up_to: 10,
            outstanding: 2,
        };
        let mut core = Core::new(config(2), [], recovery, Duration::ZERO);
        assert_eq!(drain(&mut core), [Action::Pull { max: 2 }]);
        core.on_message(MS, event(11, 1));
        core.on_foreign(MS, 9);
        assert!(core.recovering(), "one outstanding message is still out");
        assert_eq!(core.in_hand(), 1);
        core.on_foreign(MS * 2, 7);
        assert!(!core.recovering(), "both outstanding messages came back");
        assert_eq!(core.in_hand(), 1, "the foreign ones are not held");
        assert_eq!(
            drain(&mut core),
            [Action::Run {
                seq: 11,
                attempt: 1
            }]
        );
        // The pull's reservation went with the arrivals: the hand has room for one.
        core.on_pull_done(MS * 3);
        assert_eq!(drain(&mut core), [Action::Pull { max: 1 }]);
    }

    #[test]
    fn the_counts_tell_each_way_a_message_ended() {
        let mut c = config(8);
        c.in_process_attempts = 2;
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        // 1: fails twice in process, then is NAKed: two retries.
        core.on_message(MS, event(1, 1));
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 1 }]);
        assert_eq!(core.in_flight(), 1);
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::Transient));
        assert_eq!(core.in_flight(), 0);
        assert!(drain(&mut core).is_empty());
        core.on_timeout(MS * 102);
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 2 }]);
        core.on_call_done(MS * 103, 1, CallResult::Panicked);
        assert_eq!(
            drain(&mut core),
            [Action::Nak {
                seq: 1,
                delay: MS * 100
            }]
        );
        // 2: processed; its redelivery while it runs is a duplicate.
        core.on_message(MS * 104, event(2, 2));
        assert_eq!(drain(&mut core), [Action::Run { seq: 2, attempt: 1 }]);
        core.on_message(MS * 105, event(2, 2));
        assert!(drain(&mut core).is_empty());
        core.on_call_done(MS * 106, 2, CallResult::Ok);
        assert_eq!(drain(&mut core), [Action::Ack { seq: 2 }]);
        // 3: dead-lettered (permanent); 4, of the same person, parked behind it.
        core.on_message(MS * 107, event(3, 3));
        core.on_message(MS * 107, event(4, 3));
        assert_eq!(drain(&mut core), [Action::Run { seq: 3, attempt: 1 }]);
        core.on_call_done(MS * 108, 3, CallResult::Failed(ErrorClass::Permanent));
        assert_eq!(
            drain(&mut core),
            [Action::DeadLetter {
                seq: 3,
                cause: Cause::Permanent
            }]
        );
        core.on_dead_letter_done(MS * 109, 3, true);
        assert_eq!(
            drain(&mut core),
            [Action::Term { seq: 3 }, Action::CheckParked { person: 3 }]
        );
        let c = core.counts();
        assert_eq!((c.dead_lettered, c.parked), (1, 0), "3 was not parked");
        core.on_parked_checked(MS * 110, 3, true);
        core.on_dead_letter_done(MS * 111, 4, true);
        assert_eq!(
            drain(&mut core),
            [
                Action::DeadLetter {
                    seq: 4,
                    cause: Cause::Parked
                },
                Action::Term { seq: 4 }
            ]
        );
        assert_eq!(
            core.counts(),
            Counts {
                processed: 1,
                retried: 2,
                dead_lettered: 2,
                parked: 1,
                duplicates: 1,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn the_next_wake_up_is_the_earliest_time_still_ahead() {
        let mut c = config(2);
        c.pull_batch = 2;
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        assert_eq!(drain(&mut core), [Action::Pull { max: 2 }]);
        assert_eq!((core.in_hand(), core.reserved()), (0, 2));
        assert_eq!(core.poll_timeout(), None, "nothing held, nothing due");
        core.on_message(MS, event(1, 1));
        core.on_pull_done(MS);
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 1 }]);
        assert_eq!((core.in_hand(), core.reserved()), (1, 0));
        assert_eq!(core.waiting_lanes(), 0);
        // Room for 1 of a batch of 2 while a call runs: the pull lingers 2 ms.
        assert_eq!(core.poll_timeout(), Some(MS * 3));
        // An arrival without a pull fills the hand at the linger's end: nothing can be
        // pulled, and the next wake-up is the progress ack of the held messages.
        core.on_message(MS * 3, event(2, 1));
        assert!(drain(&mut core).is_empty());
        assert_eq!(core.in_hand(), 2);
        assert_eq!(core.poll_timeout(), Some(MS * 1001));
    }

    #[test]
    fn shutdown_with_nothing_running_needs_no_wake_up_for_its_deadline() {
        let mut core = Core::new(config(4), [], Recovery::default(), Duration::ZERO);
        assert_eq!(drain(&mut core), [Action::Pull { max: 4 }]);
        core.on_shutdown(MS, Duration::from_secs(5));
        assert_eq!(core.poll_timeout(), None);
        assert!(!core.is_stopped(), "the pull is still open");
        core.on_pull_done(MS * 2);
        assert!(core.is_stopped());
    }

    fn notices(core: &mut Core<u32>) -> Vec<Notice<u32>> {
        std::iter::from_fn(|| core.poll_action())
            .filter_map(|a| match a {
                Action::Notice(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_redelivery_that_never_comes_is_warned_about_then_given_up_by_the_pull_clock() {
        let mut core = Core::new(config(8), [], Recovery::default(), Duration::ZERO);
        // The pull stays open throughout, so the pull clock runs with time.
        assert_eq!(drain(&mut core), [Action::Pull { max: 8 }]);
        core.on_message(MS, event(1, 1));
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::Transient));
        assert!(drain(&mut core).contains(&Action::Nak {
            seq: 1,
            delay: MS * 100
        }));
        // Due at 102 ms; overdue 1 s later; given up once pulls were open for the
        // ack wait plus that second.
        core.on_timeout(MS * 102);
        assert!(notices(&mut core).is_empty());
        assert_eq!(core.poll_timeout(), Some(MS * 1102));
        core.on_timeout(MS * 1102);
        assert_eq!(notices(&mut core), [Notice::Overdue { person: 1, seq: 1 }]);
        assert_eq!(core.poll_timeout(), Some(MS * 4102));
        core.on_timeout(MS * 4101);
        assert!(notices(&mut core).is_empty());
        assert_eq!(core.waiting_lanes(), 1);
        core.on_timeout(MS * 4102);
        assert_eq!(
            notices(&mut core),
            [Notice::StoppedWaiting { person: 1, seq: 1 }]
        );
        assert_eq!(core.waiting_lanes(), 0);
        assert_eq!(core.counts().stopped_waiting, 1);
    }

    #[test]
    fn a_redelivery_is_not_given_up_on_while_the_consumer_is_paused() {
        let mut core = Core::new(config(8), [], Recovery::default(), Duration::ZERO);
        assert_eq!(drain(&mut core), [Action::Pull { max: 8 }]);
        core.on_message(MS, event(1, 1));
        core.on_message(MS, event(2, 1));
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::Transient));
        drain(&mut core);
        // Paused on the server from 500 ms for 30 s: the pull stays open, nothing comes.
        core.on_paused(MS * 500, Duration::from_secs(30));
        for t in (600..30_500).step_by(100) {
            core.on_timeout(MS * t);
            assert!(
                !notices(&mut core).contains(&Notice::StoppedWaiting { person: 1, seq: 1 }),
                "gave up at {t} ms while paused"
            );
            assert!(
                !drain(&mut core).contains(&Action::Run { seq: 2, attempt: 1 }),
                "ran the later event at {t} ms while its person waits"
            );
        }
        assert_eq!(core.waiting_lanes(), 1);
        // After the pause, pulls count again: given up once open for the ack wait plus
        // the overdue second, counted from when it was first found due (600 ms, in the
        // pause).
        core.on_timeout(MS * 34_400);
        assert!(notices(&mut core).is_empty());
        core.on_timeout(MS * 34_500);
        assert!(notices(&mut core).contains(&Notice::StoppedWaiting { person: 1, seq: 1 }));
    }

    #[test]
    fn held_messages_get_a_progress_ack_every_period_in_stream_order() {
        let mut core = Core::new(config(8), [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(2, 2));
        core.on_message(MS, event(1, 1));
        let progress = |core: &mut Core<u32>| -> Vec<u64> {
            std::iter::from_fn(|| core.poll_action())
                .filter_map(|a| match a {
                    Action::Progress { seq } => Some(seq),
                    _ => None,
                })
                .collect()
        };
        // The period (a third of the 3 s ack wait) starts at the first arrival.
        assert_eq!(progress(&mut core), [0u64; 0]);
        assert_eq!(core.poll_timeout(), Some(MS * 1001));
        core.on_timeout(MS * 1000);
        assert_eq!(progress(&mut core), [0u64; 0]);
        core.on_timeout(MS * 1001);
        assert_eq!(progress(&mut core), [1, 2]);
        assert_eq!(core.poll_timeout(), Some(MS * 2001));
        core.on_call_done(MS * 1500, 1, CallResult::Ok);
        core.on_timeout(MS * 2001);
        assert_eq!(progress(&mut core), [2]);
        core.on_call_done(MS * 2100, 2, CallResult::Ok);
        assert_eq!(core.poll_timeout(), None, "nothing held");
    }

    #[test]
    fn no_more_calls_or_stores_run_than_the_concurrency() {
        let mut c = config(8);
        c.concurrency = 1;
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        for seq in [1, 2] {
            let loose = Arrival {
                seq,
                delivered: 1,
                person: None,
                kind: Kind::Rejected,
            };
            core.on_message(MS, loose);
        }
        core.on_message(MS, event(3, 3));
        assert_eq!(
            drain(&mut core),
            [Action::DeadLetter {
                seq: 1,
                cause: Cause::Rejected
            }]
        );
        core.on_dead_letter_done(MS * 2, 1, true);
        assert_eq!(
            drain(&mut core),
            [
                Action::Term { seq: 1 },
                Action::DeadLetter {
                    seq: 2,
                    cause: Cause::Rejected
                }
            ]
        );
        core.on_dead_letter_done(MS * 3, 2, true);
        core.on_message(MS * 3, event(4, 4));
        assert_eq!(
            drain(&mut core),
            [Action::Term { seq: 2 }, Action::Run { seq: 3, attempt: 1 }]
        );
        core.on_call_done(MS * 4, 3, CallResult::Ok);
        assert_eq!(
            drain(&mut core),
            [Action::Ack { seq: 3 }, Action::Run { seq: 4, attempt: 1 }]
        );
    }

    #[test]
    fn a_later_event_does_not_cut_short_the_wait_before_an_in_process_retry() {
        let mut c = config(8);
        c.in_process_attempts = 2;
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(1, 1));
        drain(&mut core);
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::Transient));
        core.on_message(MS * 50, event(2, 1));
        assert!(
            drain(&mut core).is_empty(),
            "1 waits until 102 ms, 2 behind it"
        );
        core.on_timeout(MS * 102);
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 2 }]);
    }

    #[test]
    fn a_small_pull_waits_for_the_linger_unless_nothing_runs() {
        let mut c = config(8);
        c.pull_batch = 4;
        c.in_process_attempts = 2;
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        assert_eq!(drain(&mut core), [Action::Pull { max: 8 }]);
        for seq in 1..=6 {
            core.on_message(MS, event(seq, 1));
        }
        core.on_pull_done(MS);
        // Room for 2 of a batch of 4 while 1 runs: wait 2 ms for more room.
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 1 }]);
        core.on_timeout(MS * 2);
        assert!(drain(&mut core).is_empty());
        core.on_timeout(MS * 3);
        assert_eq!(drain(&mut core), [Action::Pull { max: 2 }]);
        core.on_pull_done(MS * 4);
        assert!(drain(&mut core).is_empty(), "lingering again");
        // Nothing runs (1 waits to retry): no reason to wait for room.
        core.on_call_done(MS * 5, 1, CallResult::Failed(ErrorClass::Transient));
        assert_eq!(drain(&mut core), [Action::Pull { max: 2 }]);
    }

    #[test]
    fn a_restart_with_a_full_hand_gives_back_its_latest_queued_event_once_per_delay() {
        let recovery = Recovery {
            delivered_up_to: 10,
            outstanding: 1,
        };
        let mut c = config(3);
        c.concurrency = 1;
        let mut core = Core::new(c, [], recovery, Duration::ZERO);
        assert_eq!(drain(&mut core), [Action::Pull { max: 3 }]);
        let loose = |seq| Arrival {
            seq,
            delivered: 1,
            person: None,
            kind: Kind::Rejected,
        };
        core.on_message(MS, event(11, 1));
        core.on_message(MS, loose(12));
        core.on_message(MS, loose(13));
        core.on_pull_done(MS);
        // 12's dead letter is being stored, 13's waits for the slot: only 11 is an
        // event that could be given back.
        assert_eq!(
            drain(&mut core),
            [
                Action::DeadLetter {
                    seq: 12,
                    cause: Cause::Rejected
                },
                Action::Nak {
                    seq: 11,
                    delay: MS * 500
                },
                Action::Pull { max: 1 }
            ]
        );
        assert_eq!(core.counts().evicted, 1);
        core.on_message(MS * 2, event(14, 2));
        core.on_pull_done(MS * 2);
        assert!(drain(&mut core).is_empty(), "room was made 1 ms ago");
        core.on_timeout(MS * 501);
        assert_eq!(
            drain(&mut core),
            [
                Action::Nak {
                    seq: 14,
                    delay: MS * 500
                },
                Action::Pull { max: 1 }
            ]
        );
        assert_eq!(core.counts().evicted, 2);
    }

    #[test]
    fn at_the_shutdown_deadline_a_running_call_is_aborted_and_its_lane_given_back() {
        let mut core = Core::new(config(8), [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(1, 1));
        core.on_message(MS, event(2, 1));
        assert_eq!(drain(&mut core), [Action::Run { seq: 1, attempt: 1 }]);
        core.on_shutdown(MS * 2, Duration::from_secs(1));
        core.on_pull_done(MS * 3);
        assert!(drain(&mut core).is_empty(), "1 may still finish");
        core.on_timeout(MS * 1001);
        assert!(drain(&mut core).is_empty());
        assert_eq!(core.in_flight(), 1);
        core.on_timeout(MS * 1002);
        assert_eq!(
            drain(&mut core),
            [
                Action::Abort { seq: 1 },
                Action::Nak {
                    seq: 1,
                    delay: Duration::ZERO
                },
                Action::Nak {
                    seq: 2,
                    delay: Duration::ZERO
                }
            ]
        );
        assert_eq!(core.in_flight(), 0);
        assert!(core.is_stopped());
        core.on_call_done(MS * 1003, 1, CallResult::Ok);
        assert!(
            drain(&mut core).is_empty(),
            "an aborted call's result is ignored"
        );
    }

    #[test]
    fn a_restart_with_a_full_hand_wakes_up_when_room_may_be_made_again() {
        let recovery = Recovery {
            delivered_up_to: 10,
            outstanding: 1,
        };
        let mut c = config(2);
        // Longer than the longest NAK delay (1.5 s), so the given-back event is due
        // before room may be made again.
        c.evict_delay = MS * 1999;
        let mut core = Core::new(c, [], recovery, Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(11, 1));
        core.on_message(MS, event(12, 2));
        core.on_pull_done(MS);
        assert_eq!(
            drain(&mut core),
            [
                Action::Nak {
                    seq: 12,
                    delay: MS * 1500
                },
                Action::Pull { max: 1 }
            ]
        );
        core.on_message(MS * 2, event(13, 3));
        core.on_pull_done(MS * 2);
        assert_eq!(core.poll_timeout(), Some(MS * 1001), "progress");
        core.on_timeout(MS * 1001);
        assert_eq!(core.poll_timeout(), Some(MS * 1501), "12 is due");
        core.on_timeout(MS * 1501);
        assert!(drain(&mut core).is_empty());
        assert_eq!(core.poll_timeout(), Some(MS * 2000), "room may be made");
        core.on_timeout(MS * 2000);
        assert_eq!(
            drain(&mut core),
            [
                Action::Nak {
                    seq: 13,
                    delay: MS * 1500
                },
                Action::Pull { max: 1 }
            ]
        );
    }

    #[test]
    fn empty_lanes_are_dropped_once_they_outnumber_twice_the_held_messages_plus_64() {
        let mut core = Core::new(config(256), [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        for person in 0..64 {
            core.on_message(MS, event(u64::from(person) + 1, person));
        }
        for seq in 1..=64 {
            core.on_call_done(MS * 2, seq, CallResult::Ok);
        }
        assert_eq!(core.counts().processed, 64);
        assert_eq!(core.lanes.len(), 64, "64 empty lanes are kept");
        core.on_message(MS * 3, event(65, 64));
        core.on_call_done(MS * 4, 65, CallResult::Ok);
        assert_eq!(core.lanes.len(), 0, "65 are dropped");
    }

    #[test]
    fn room_made_for_a_redelivery_is_made_again_after_the_evict_delay() {
        let mut c = config(3);
        // Longer than the longest NAK delay (1.5 s), so a given-back event is due
        // before room may be made again.
        c.evict_delay = MS * 1600;
        let mut core = Core::new(c, [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        for seq in 1..=3 {
            core.on_message(MS, event(seq, 7));
        }
        core.on_pull_done(MS);
        drain(&mut core);
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::Transient));
        assert_eq!(
            drain(&mut core),
            [
                Action::Nak {
                    seq: 1,
                    delay: MS * 100
                },
                Action::Pull { max: 1 }
            ]
        );
        // 1 is due at 102 ms; the hand fills only at 802 ms: room is made then.
        core.on_timeout(MS * 102);
        core.on_message(MS * 802, event(4, 7));
        core.on_pull_done(MS * 802);
        let nak = |seq| Action::Nak {
            seq,
            delay: MS * 1500,
        };
        assert_eq!(drain(&mut core), [nak(4), Action::Pull { max: 1 }]);
        // The pull brings another person's event instead; the hand is full again.
        core.on_message(MS * 803, event(5, 8));
        core.on_pull_done(MS * 803);
        assert_eq!(drain(&mut core), [Action::Run { seq: 5, attempt: 1 }]);
        core.on_timeout(MS * 1102);
        assert!(drain(&mut core).is_empty(), "1 is overdue");
        // 4 is due: room for it, and the hand fills again.
        core.on_timeout(MS * 2302);
        assert_eq!(drain(&mut core), [nak(3), Action::Pull { max: 1 }]);
        core.on_message(MS * 2302, event(6, 9));
        core.on_pull_done(MS * 2302);
        assert_eq!(drain(&mut core), [Action::Run { seq: 6, attempt: 1 }]);
        // Room for 1 again, 1.6 s after it was last made for it.
        assert_eq!(core.poll_timeout(), Some(MS * 2402));
        core.on_timeout(MS * 2402);
        assert_eq!(drain(&mut core), [nak(2), Action::Pull { max: 1 }]);
    }

    #[test]
    fn a_nak_delay_is_capped_at_half_the_ack_wait() {
        let mut core = Core::new(config(8), [], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(1, 1));
        drain(&mut core);
        let asked = Duration::from_secs(10);
        core.on_call_done(MS * 2, 1, CallResult::Failed(ErrorClass::RetryAfter(asked)));
        assert_eq!(
            drain(&mut core),
            [Action::Nak {
                seq: 1,
                delay: MS * 1500
            }]
        );
    }

    #[test]
    fn a_parked_persons_event_is_checked_and_dead_lettered_as_parked() {
        let mut core = Core::new(config(8), [5], Recovery::default(), Duration::ZERO);
        drain(&mut core);
        core.on_message(MS, event(1, 5));
        assert_eq!(drain(&mut core), [Action::CheckParked { person: 5 }]);
        core.on_parked_checked(MS * 2, 5, true);
        assert_eq!(
            drain(&mut core),
            [Action::DeadLetter {
                seq: 1,
                cause: Cause::Parked
            }]
        );
        assert_eq!(core.parked_people(), 1);
        core.on_dead_letter_done(MS * 3, 1, true);
        assert_eq!(drain(&mut core), [Action::Term { seq: 1 }]);
        core.on_message(MS * 4, event(2, 5));
        assert_eq!(drain(&mut core), [Action::CheckParked { person: 5 }]);
        core.on_parked_checked(MS * 5, 5, false);
        assert_eq!(drain(&mut core), [Action::Run { seq: 2, attempt: 1 }]);
        assert_eq!(core.parked_people(), 0);
    }
}
