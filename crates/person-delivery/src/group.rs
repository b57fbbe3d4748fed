//! Who handles which partition of a consumer group: membership and leases, decided
//! without I/O.
//!
//! A group is a set of instances running one consumer split into slots (partitions,
//! plus whatever else the caller wants owned exclusively). Each slot is owned through
//! a lease: a key in a store with compare-and-set on a revision (a JetStream KV
//! bucket in `person-subscriptions`). [`Group`] is one instance's view and decisions;
//! the caller performs its [`GroupAction`]s against the store and the workers, and
//! feeds back what it observed (`on_member`, `on_lease`) and how each operation ended.
//!
//! # Safety: one owner at a time
//!
//! - A lease write (acquire or renew) sent at local time `t` makes this instance the
//!   owner until `t + lease - margin` at most ([`Group::valid_until`]): it stops its
//!   workers (fences) then unless a later renewal succeeded.
//! - Another instance takes a lease over only with a compare-and-set on the revision
//!   it observed, and only once that revision has stayed unchanged for `lease` on its
//!   own clock. The write it saw was stored after it was sent, and seen after it was
//!   stored, so the takeover comes after the old owner's fence, with `margin` to spare
//!   for stopping (clocks are assumed to run at the same rate, and an instance's
//!   loop not to stall longer than `margin`).
//! - A worker starts only while this instance holds a valid lease, and a slot this
//!   instance finds itself recorded as owning without knowing it (an acquire whose
//!   reply was lost, a release that was lost) is released, never used: again each
//!   tick until the key is seen deleted or taken.
//! - A slot has at most one renewal in flight, and it outlives the lease it renews: a
//!   fence does not wait for its answer, but no other write of the slot (an acquire,
//!   a release) is sent until it is answered. So an answer is never taken for another
//!   write's, and a release deletes the latest revision rather than being overtaken
//!   by a renewal and leaving the key to expire.
//!
//! # Balance
//!
//! The live members (whose heartbeat revision changed within `lease`) are ranked by
//! the slots they hold (most first, then by name); the member ranked `r` of `n` wants
//! `slots / n` slots, one more when `r < slots % n`, so a member that joins takes
//! slots only from those above their share. Above its share it releases its highest slots gracefully (workers
//! drain first, then the lease is deleted so the next owner need not wait); below, it
//! acquires free or expired slots, lowest first. Views converge once heartbeats are
//! seen, so shares add up to `slots` and every slot gets an owner.
//!
//! # Shutdown
//!
//! [`Group::on_shutdown`] drains every slot's workers, deletes each lease (and any key
//! still naming this instance) and then the heartbeat, so the other members take the
//! slots over at once rather than after a lease.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How long leases last and how often they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    /// Slots to own: a group's partitions (and any extra slot the caller adds).
    pub slots: u32,
    /// A lease not renewed for this long is free to take over.
    pub lease: Duration,
    /// Heartbeats, renewals and balance checks happen this often (at most `lease / 3`).
    pub tick: Duration,
    /// How long before its lease could be taken over an owner stops its workers.
    pub margin: Duration,
}

impl GroupConfig {
    /// `slots` slots, leases of `lease`, renewed every `lease / 4`, fenced `lease / 4`
    /// before they could be taken over.
    pub fn new(slots: u32, lease: Duration) -> Self {
        Self {
            slots,
            lease,
            tick: lease / 4,
            margin: lease / 4,
        }
    }
}

/// What the caller does for a [`Group`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupAction {
    /// Write this instance's heartbeat.
    Heartbeat,
    /// Write this instance as the slot's owner: create the key when `expect` is None
    /// (it is absent or deleted), else update it expecting that revision. Report with
    /// [`Group::on_acquired`].
    Acquire {
        /// The slot.
        slot: u32,
        /// The revision to replace; None to create.
        expect: Option<u64>,
    },
    /// Write this instance as the owner again, expecting `revision`. Report with
    /// [`Group::on_renewed`].
    Renew {
        /// The slot.
        slot: u32,
        /// The revision this instance wrote last.
        revision: u64,
    },
    /// Delete the slot's key, expecting `revision`. Nothing to report.
    Release {
        /// The slot.
        slot: u32,
        /// The revision this instance wrote last.
        revision: u64,
    },
    /// Start the slot's workers.
    Start {
        /// The slot.
        slot: u32,
    },
    /// Stop the slot's workers: with `fence`, at once (the lease may be gone), else
    /// draining (finish, ack, give back the rest). Report with [`Group::on_stopped`].
    Stop {
        /// The slot.
        slot: u32,
        /// At once, without draining.
        fence: bool,
    },
    /// Delete this instance's heartbeat: it has left the group.
    Leave,
}

/// How a lease write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Stored, at this revision.
    Written(u64),
    /// The revision was not the expected one (or the key existed): someone else wrote.
    Conflict,
    /// No answer, or an error: the write may or may not have been stored.
    Failed,
}

#[derive(Debug, Clone)]
struct Seen {
    owner: String,
    revision: u64,
    at: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    valid_until: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    Idle,
    Running,
    Stopping,
}

#[derive(Debug, Clone)]
struct Slot {
    /// The key as last observed, None when absent or deleted.
    seen: Option<Seen>,
    held: Option<Held>,
    /// When the acquire in flight was sent.
    acquiring: Option<Duration>,
    /// When the renewal in flight was sent. It outlives the lease it renews (a fence
    /// or a give-up does not wait for it), so no other write of the slot is sent
    /// until it is answered: its answer is never taken for another one's.
    renewing: Option<Duration>,
    worker: Worker,
    /// Give it up once the workers have stopped.
    leaving: bool,
    /// The last time a release of a key recorded as ours was sent.
    released_at: Option<Duration>,
    /// No acquire before this (after one failed), unless the key is seen to change.
    retry_at: Option<Duration>,
}

impl Slot {
    fn new() -> Self {
        Self {
            seen: None,
            held: None,
            acquiring: None,
            renewing: None,
            worker: Worker::Idle,
            leaving: false,
            released_at: None,
            retry_at: None,
        }
    }

    /// Counts towards this instance's share.
    fn claimed(&self) -> bool {
        (self.held.is_some() || self.acquiring.is_some()) && !self.leaving
    }
}

/// One instance's side of a consumer group. See the [module](self) documentation.
#[derive(Debug)]
pub struct Group {
    me: String,
    config: GroupConfig,
    slots: Vec<Slot>,
    /// Other members: their heartbeat revision and when it last changed.
    members: BTreeMap<String, (u64, Duration)>,
    next_tick: Duration,
    actions: VecDeque<GroupAction>,
    shutting_down: bool,
    left: bool,
}

impl Group {
    /// Instance `me` (unique in the group) joining at `now`.
    pub fn new(me: impl Into<String>, config: GroupConfig, now: Duration) -> Self {
        let mut config = config;
        config.tick = config
            .tick
            .min(config.lease / 3)
            .max(Duration::from_millis(1));
        config.margin = config.margin.min(config.lease / 2);
        let mut g = Self {
            me: me.into(),
            config,
            slots: (0..config.slots).map(|_| Slot::new()).collect(),
            members: BTreeMap::new(),
            next_tick: now,
            actions: VecDeque::new(),
            shutting_down: false,
            left: false,
        };
        g.on_timeout(now);
        g
    }

    /// This instance's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The configuration in use.
    pub fn config(&self) -> GroupConfig {
        self.config
    }

    /// The next action to perform, if any.
    pub fn poll_action(&mut self) -> Option<GroupAction> {
        self.actions.pop_front()
    }

    /// When to call [`on_timeout`](Self::on_timeout) next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.left {
            return None;
        }
        let fence = self
            .slots
            .iter()
            .filter_map(|s| s.held.map(|h| h.valid_until))
            .min();
        Some(fence.map_or(self.next_tick, |f| f.min(self.next_tick)))
    }

    /// The slots whose workers run (or were asked to start) here.
    pub fn running(&self) -> Vec<u32> {
        (0..self.config.slots)
            .filter(|&i| self.slots[i as usize].worker == Worker::Running)
            .collect()
    }

    /// The slots this instance holds a valid lease on.
    pub fn held(&self) -> Vec<u32> {
        (0..self.config.slots)
            .filter(|&i| self.slots[i as usize].held.is_some())
            .collect()
    }

    /// Until when this instance may run `slot`'s workers, if it holds its lease.
    pub fn valid_until(&self, slot: u32) -> Option<Duration> {
        self.slot(slot).and_then(|s| s.held.map(|h| h.valid_until))
    }

    /// The members this instance counts as live, itself included, sorted.
    pub fn live_members(&self, now: Duration) -> Vec<String> {
        let mut live: Vec<String> = self
            .members
            .iter()
            .filter(|(id, (_, at))| **id != self.me && now.saturating_sub(*at) < self.config.lease)
            .map(|(id, _)| id.clone())
            .collect();
        live.push(self.me.clone());
        live.sort();
        live
    }

    /// How many slots this instance should own, given who is live: `slots / n`, one
    /// more for the first `slots % n` members ranked by how many slots they hold now
    /// (most first, then by name), so a member joining takes no slot from one that
    /// holds no more than its share.
    pub fn share(&self, now: Duration) -> u32 {
        let live = self.live_members(now);
        let n = u32::try_from(live.len()).unwrap_or(u32::MAX).max(1);
        let holding = |m: &str| {
            if m == self.me {
                self.slots.iter().filter(|s| s.claimed()).count()
            } else {
                self.slots
                    .iter()
                    .filter(|s| s.seen.as_ref().is_some_and(|seen| seen.owner == m))
                    .count()
            }
        };
        let mut ranked: Vec<(usize, &String)> = live.iter().map(|m| (holding(m), m)).collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let rank = ranked.iter().position(|(_, m)| **m == self.me).unwrap_or(0);
        let rank = u32::try_from(rank).unwrap_or(u32::MAX);
        self.config.slots / n + u32::from(rank < self.config.slots % n)
    }

    /// `true` once shutdown has released every slot and left the group.
    pub fn is_done(&self) -> bool {
        self.left
    }

    fn slot(&self, slot: u32) -> Option<&Slot> {
        self.slots.get(slot as usize)
    }

    /// A member's heartbeat, as observed at `now` (this instance's own included).
    pub fn on_member(&mut self, now: Duration, member: &str, revision: u64) {
        if member == self.me {
            return;
        }
        let changed = self
            .members
            .get(member)
            .is_none_or(|(rev, _)| *rev != revision);
        if changed {
            self.members.insert(member.to_owned(), (revision, now));
        }
    }

    /// A member's heartbeat was deleted: it left.
    pub fn on_member_gone(&mut self, now: Duration, member: &str) {
        self.members.remove(member);
        self.balance(now);
    }

    /// A slot's key as observed at `now`: its owner and revision, or deleted (`None`).
    pub fn on_lease(&mut self, now: Duration, slot: u32, owner: Option<&str>, revision: u64) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.retry_at = None;
        s.seen = match owner {
            None => None,
            Some(o) => match &s.seen {
                Some(seen) if seen.revision == revision && seen.owner == o => Some(seen.clone()),
                _ => Some(Seen {
                    owner: o.to_owned(),
                    revision,
                    at: now,
                }),
            },
        };
        self.balance(now);
    }

    /// Keys recorded as ours that this instance does not hold (an acquire whose reply
    /// was lost, a release that was lost or overtaken by a renewal) are given back
    /// rather than used, as a lease of unknown age; again each tick until they are
    /// seen deleted or taken.
    fn release_strays(&mut self, now: Duration) {
        for i in 0..self.config.slots {
            let s = &self.slots[i as usize];
            if let Some(seen) = &s.seen
                && seen.owner == self.me
                && s.held.is_none()
                && s.acquiring.is_none()
                && s.renewing.is_none()
                && s.worker == Worker::Idle
            {
                let revision = seen.revision;
                self.release_unknown(now, i, revision);
            }
        }
    }

    fn release_unknown(&mut self, now: Duration, slot: u32, revision: u64) {
        let s = &mut self.slots[slot as usize];
        if self.left
            || s.released_at
                .is_some_and(|t| now.saturating_sub(t) < self.config.tick)
        {
            return;
        }
        s.released_at = Some(now);
        self.actions
            .push_back(GroupAction::Release { slot, revision });
    }

    /// How an [`GroupAction::Acquire`] ended.
    pub fn on_acquired(&mut self, now: Duration, slot: u32, outcome: LeaseOutcome) {
        let lease = self.config.lease;
        let margin = self.config.margin;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(sent) = s.acquiring.take() else {
            return;
        };
        if !matches!(outcome, LeaseOutcome::Written(_)) {
            // Wait to see the key, or a tick, before trying again.
            s.retry_at = Some(now + self.config.tick);
        }
        if let LeaseOutcome::Written(revision) = outcome {
            s.held = Some(Held {
                revision,
                valid_until: sent + lease - margin,
            });
            s.seen = Some(Seen {
                owner: self.me.clone(),
                revision,
                at: now,
            });
            if s.leaving || self.shutting_down {
                s.leaving = true;
                self.give_up(now, slot);
            } else {
                self.start(now, slot);
            }
        }
        self.check_fences(now);
        self.balance(now);
    }

    /// How a [`GroupAction::Renew`] ended.
    pub fn on_renewed(&mut self, now: Duration, slot: u32, outcome: LeaseOutcome) {
        let lease = self.config.lease;
        let margin = self.config.margin;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(sent) = s.renewing.take() else {
            return;
        };
        let mut lost = false;
        match (outcome, &mut s.held) {
            (LeaseOutcome::Written(revision), Some(h)) => {
                h.revision = revision;
                h.valid_until = h.valid_until.max(sent + lease - margin);
            }
            (LeaseOutcome::Conflict, Some(_)) => {
                // Someone else owns it now: stop at once.
                s.held = None;
                s.leaving = false;
                lost = true;
            }
            _ => {}
        }
        if let LeaseOutcome::Written(revision) = outcome {
            // Ours at that revision (if fenced meanwhile, a stray to give back).
            s.seen = Some(Seen {
                owner: self.me.clone(),
                revision,
                at: now,
            });
        }
        if lost {
            self.fence(slot);
        }
        let s = &self.slots[slot as usize];
        if s.leaving && s.worker == Worker::Idle {
            // A give-up that waited for this answer, to release the latest revision.
            self.give_up(now, slot);
        }
        self.check_fences(now);
        self.balance(now);
    }

    /// The slot's workers have stopped (after [`GroupAction::Stop`]).
    pub fn on_stopped(&mut self, now: Duration, slot: u32) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if s.worker != Worker::Stopping {
            return;
        }
        s.worker = Worker::Idle;
        if s.leaving {
            self.give_up(now, slot);
        } else if s.held.is_some() && !self.shutting_down {
            // Stopped while still ours (a fence that a late renewal undid): run again.
            self.start(now, slot);
        }
        // Fenced, and the key still names us: `balance` frees it for the next owner.
        self.balance(now);
        self.maybe_leave(now);
    }

    /// Time has passed.
    pub fn on_timeout(&mut self, now: Duration) {
        self.check_fences(now);
        if now >= self.next_tick {
            self.next_tick = now + self.config.tick;
            if !self.left {
                self.actions.push_back(GroupAction::Heartbeat);
            }
            for i in 0..self.config.slots {
                let s = &mut self.slots[i as usize];
                if let Some(h) = &s.held
                    && s.renewing.is_none()
                {
                    s.renewing = Some(now);
                    self.actions.push_back(GroupAction::Renew {
                        slot: i,
                        revision: h.revision,
                    });
                }
            }
            self.balance(now);
        }
    }

    /// Leave the group: drain and release every slot, then delete the heartbeat.
    pub fn on_shutdown(&mut self, now: Duration) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        for i in 0..self.config.slots {
            let s = &mut self.slots[i as usize];
            if s.held.is_some() || s.acquiring.is_some() || s.worker != Worker::Idle {
                s.leaving = true;
                match s.worker {
                    Worker::Running => {
                        s.worker = Worker::Stopping;
                        self.actions.push_back(GroupAction::Stop {
                            slot: i,
                            fence: false,
                        });
                    }
                    Worker::Idle if s.acquiring.is_none() => self.give_up(now, i),
                    _ => {}
                }
            }
        }
        self.maybe_leave(now);
    }

    fn maybe_leave(&mut self, now: Duration) {
        if self.shutting_down
            && !self.left
            && self.slots.iter().all(|s| {
                s.held.is_none()
                    && s.acquiring.is_none()
                    && s.renewing.is_none()
                    && s.worker == Worker::Idle
            })
        {
            // Keys still naming this instance are deleted before it leaves.
            self.release_strays(now);
            self.left = true;
            self.actions.push_back(GroupAction::Leave);
        }
    }

    /// Releases a slot whose workers are idle.
    fn give_up(&mut self, now: Duration, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.renewing.is_some() && s.held.is_some() {
            // Released once the renewal is answered, at the revision it wrote: a
            // release sent now could be overtaken by it and leave the key behind.
            s.leaving = true;
            return;
        }
        s.leaving = false;
        if let Some(h) = s.held.take() {
            s.released_at = Some(now);
            self.actions.push_back(GroupAction::Release {
                slot,
                revision: h.revision,
            });
        }
        self.maybe_leave(now);
    }

    fn start(&mut self, now: Duration, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.worker == Worker::Idle && s.held.is_some_and(|h| now < h.valid_until) {
            s.worker = Worker::Running;
            self.actions.push_back(GroupAction::Start { slot });
        }
    }

    fn fence(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.worker == Worker::Running {
            s.worker = Worker::Stopping;
            self.actions
                .push_back(GroupAction::Stop { slot, fence: true });
        }
    }

    /// Stops the workers of every lease that may be taken over by now.
    fn check_fences(&mut self, now: Duration) {
        for i in 0..self.config.slots {
            let s = &mut self.slots[i as usize];
            if s.held.is_some_and(|h| now >= h.valid_until) {
                s.held = None;
                self.fence(i);
            }
        }
        self.maybe_leave(now);
    }

    /// Gives up slots above this instance's share, and claims free or expired ones
    /// below it.
    fn balance(&mut self, now: Duration) {
        self.release_strays(now);
        if self.shutting_down {
            return;
        }
        let share = self.share(now) as usize;
        let claimed = self.slots.iter().filter(|s| s.claimed()).count();
        if claimed > share {
            let mut extra = claimed - share;
            for i in (0..self.config.slots).rev() {
                if extra == 0 {
                    break;
                }
                let s = &mut self.slots[i as usize];
                if s.held.is_none() || s.leaving {
                    continue;
                }
                extra -= 1;
                s.leaving = true;
                match s.worker {
                    Worker::Running => {
                        s.worker = Worker::Stopping;
                        self.actions.push_back(GroupAction::Stop {
                            slot: i,
                            fence: false,
                        });
                    }
                    Worker::Idle => self.give_up(now, i),
                    Worker::Stopping => {}
                }
            }
        } else if claimed < share {
            let mut wanted = share - claimed;
            let lease = self.config.lease;
            for i in 0..self.config.slots {
                if wanted == 0 {
                    break;
                }
                let s = &mut self.slots[i as usize];
                if s.held.is_some()
                    || s.acquiring.is_some()
                    || s.renewing.is_some()
                    || s.worker != Worker::Idle
                    || s.retry_at.is_some_and(|t| now < t)
                {
                    continue;
                }
                let expect = match &s.seen {
                    None => None,
                    Some(seen) if seen.owner != self.me && now.saturating_sub(seen.at) >= lease => {
                        Some(seen.revision)
                    }
                    Some(_) => continue,
                };
                wanted -= 1;
                s.acquiring = Some(now);
                self.actions
                    .push_back(GroupAction::Acquire { slot: i, expect });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(g: &mut Group) -> Vec<GroupAction> {
        std::iter::from_fn(|| g.poll_action()).collect()
    }

    #[test]
    fn a_lone_member_acquires_every_slot_and_starts_once_written() {
        let mut g = Group::new("a", GroupConfig::new(3, ms(4000)), ms(0));
        let acts = drain(&mut g);
        assert_eq!(acts[0], GroupAction::Heartbeat);
        assert_eq!(
            acts[1..],
            [0, 1, 2].map(|slot| GroupAction::Acquire { slot, expect: None })
        );
        g.on_acquired(ms(5), 1, LeaseOutcome::Written(7));
        assert_eq!(drain(&mut g), [GroupAction::Start { slot: 1 }]);
        // Valid from the send time, not the reply time.
        assert_eq!(g.valid_until(1), Some(ms(3000)));
        g.on_acquired(ms(5), 0, LeaseOutcome::Conflict);
        assert!(drain(&mut g).is_empty(), "someone else has slot 0");
    }

    #[test]
    fn an_unrenewed_lease_fences_its_workers_before_anyone_may_take_it_over() {
        let mut g = Group::new("a", GroupConfig::new(1, ms(4000)), ms(0));
        drain(&mut g);
        g.on_acquired(ms(1), 0, LeaseOutcome::Written(1));
        drain(&mut g);
        // Every renewal fails.
        let mut t = 0;
        while g.valid_until(0).is_some() {
            t = g.poll_timeout().unwrap().as_millis() as u64;
            g.on_timeout(ms(t));
            for a in drain(&mut g) {
                if let GroupAction::Renew { slot, .. } = a {
                    g.on_renewed(ms(t), slot, LeaseOutcome::Failed);
                }
                if let GroupAction::Stop { fence, .. } = a {
                    assert!(fence);
                }
            }
        }
        assert_eq!(t, 3000, "fenced at send + lease - margin");
        assert!(g.running().is_empty() || g.slots[0].worker == Worker::Stopping);
    }

    #[test]
    fn a_second_member_gets_half_after_the_first_gives_them_up() {
        let cfg = GroupConfig::new(4, ms(4000));
        let mut a = Group::new("a", cfg, ms(0));
        for slot in 0..4 {
            a.on_acquired(ms(1), slot, LeaseOutcome::Written(u64::from(slot) + 1));
        }
        drain(&mut a);
        a.on_member(ms(10), "b", 1);
        a.on_timeout(ms(1000));
        let acts = drain(&mut a);
        let stops: Vec<_> = acts
            .iter()
            .filter(|x| matches!(x, GroupAction::Stop { fence: false, .. }))
            .collect();
        assert_eq!(
            stops,
            [
                &GroupAction::Stop {
                    slot: 3,
                    fence: false
                },
                &GroupAction::Stop {
                    slot: 2,
                    fence: false
                }
            ]
        );
        a.on_stopped(ms(1100), 3);
        // The renewal sent at the tick is still in flight: the release waits for it,
        // and deletes the revision it wrote.
        assert!(
            !drain(&mut a)
                .iter()
                .any(|x| matches!(x, GroupAction::Release { .. }))
        );
        a.on_renewed(ms(1110), 3, LeaseOutcome::Written(20));
        assert!(drain(&mut a).contains(&GroupAction::Release {
            slot: 3,
            revision: 20
        }));
        assert_eq!(a.share(ms(1110)), 2);
    }

    #[test]
    fn a_lease_recorded_as_ours_without_a_known_acquire_is_released() {
        let mut g = Group::new("a", GroupConfig::new(1, ms(4000)), ms(0));
        drain(&mut g);
        g.on_acquired(ms(1), 0, LeaseOutcome::Failed);
        drain(&mut g);
        g.on_lease(ms(2), 0, Some("a"), 9);
        assert!(drain(&mut g).contains(&GroupAction::Release {
            slot: 0,
            revision: 9
        }));
    }

    #[test]
    fn an_acquire_stored_and_seen_but_reported_failed_is_released_until_seen_gone() {
        let mut g = Group::new("a", GroupConfig::new(1, ms(4000)), ms(0));
        drain(&mut g);
        // The write is stored and seen while the acquire is still in flight...
        g.on_lease(ms(5), 0, Some("a"), 3);
        assert!(drain(&mut g).is_empty());
        // ...and then its reply is lost: the key names us, we hold nothing.
        g.on_acquired(ms(1000), 0, LeaseOutcome::Failed);
        let release = GroupAction::Release {
            slot: 0,
            revision: 3,
        };
        assert!(drain(&mut g).contains(&release));
        // That release is lost too: sent again at the next tick, until seen deleted.
        g.on_timeout(ms(2000));
        assert!(drain(&mut g).contains(&release));
        g.on_lease(ms(2100), 0, None, 4);
        assert!(drain(&mut g).contains(&GroupAction::Acquire {
            slot: 0,
            expect: None
        }));
    }

    #[test]
    fn a_renewal_answered_after_its_lease_was_fenced_is_not_taken_for_a_later_write() {
        let mut g = Group::new("a", GroupConfig::new(1, ms(4000)), ms(0));
        drain(&mut g);
        g.on_acquired(ms(10), 0, LeaseOutcome::Written(1));
        drain(&mut g);
        g.on_timeout(ms(1000));
        assert!(drain(&mut g).contains(&GroupAction::Renew {
            slot: 0,
            revision: 1
        }));
        // Not answered before the lease runs out: fenced.
        g.on_timeout(ms(3000));
        assert!(drain(&mut g).contains(&GroupAction::Stop {
            slot: 0,
            fence: true
        }));
        g.on_stopped(ms(3010), 0);
        // The key is seen deleted, but the renewal is still unanswered: no acquire
        // (its answer would be taken for the acquire's), no release.
        g.on_lease(ms(3020), 0, None, 2);
        g.on_timeout(ms(3050));
        assert!(drain(&mut g).is_empty());
        g.on_renewed(ms(3060), 0, LeaseOutcome::Conflict);
        assert!(drain(&mut g).contains(&GroupAction::Acquire {
            slot: 0,
            expect: None
        }));
    }

    #[test]
    fn an_expired_lease_of_another_member_is_taken_over_with_its_revision() {
        let mut g = Group::new("b", GroupConfig::new(1, ms(4000)), ms(0));
        drain(&mut g);
        g.on_acquired(ms(0), 0, LeaseOutcome::Conflict);
        g.on_lease(ms(10), 0, Some("a"), 5);
        g.on_timeout(ms(3000));
        assert!(
            !drain(&mut g)
                .iter()
                .any(|x| matches!(x, GroupAction::Acquire { .. }))
        );
        g.on_timeout(ms(4010));
        assert!(drain(&mut g).contains(&GroupAction::Acquire {
            slot: 0,
            expect: Some(5)
        }));
    }
}
