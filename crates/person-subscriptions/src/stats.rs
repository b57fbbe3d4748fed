//! Counters of a running consumer, read as a [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one consumer's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Events handled successfully and acknowledged.
    pub processed: u64,
    /// Failed attempts that were retried (in process or by a delayed NAK).
    pub retried: u64,
    /// Messages stored in the DLQ and terminated (parked ones included).
    pub dead_lettered: u64,
    /// Of those, events dead-lettered because an earlier event of the person was.
    pub parked: u64,
    /// Circuit breaker state changes.
    pub breaker_transitions: u64,
    /// Handler calls running now.
    pub in_flight: u64,
    /// Messages held (fetched, not settled) now.
    pub in_hand: u64,
    /// Messages the server has not delivered yet (from the last consumer info; 0 when
    /// unknown).
    pub lag: u64,
    /// Times the consumer was recreated after the pull failed.
    pub reconnects: u64,
    /// People whose next event waits for the redelivery of an earlier one now.
    pub waiting_lanes: u64,
    /// People parked behind a dead letter now (their later events are dead-lettered
    /// as `blocked by ..` until the letters are replayed or purged).
    pub parked_people: u64,
}

impl Stats {
    /// Both snapshots added up, field by field.
    pub(crate) fn plus(self, o: Stats) -> Stats {
        Stats {
            processed: self.processed + o.processed,
            retried: self.retried + o.retried,
            dead_lettered: self.dead_lettered + o.dead_lettered,
            parked: self.parked + o.parked,
            breaker_transitions: self.breaker_transitions + o.breaker_transitions,
            in_flight: self.in_flight + o.in_flight,
            in_hand: self.in_hand + o.in_hand,
            lag: self.lag + o.lag,
            reconnects: self.reconnects + o.reconnects,
            waiting_lanes: self.waiting_lanes + o.waiting_lanes,
            parked_people: self.parked_people + o.parked_people,
        }
    }

    /// The counters that add up over a consumer's life; the gauges (in flight, in
    /// hand, lag, waiting, parked people) zeroed: what a stopped worker leaves.
    pub(crate) fn totals(self) -> Stats {
        Stats {
            in_flight: 0,
            in_hand: 0,
            lag: 0,
            waiting_lanes: 0,
            parked_people: 0,
            ..self
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) processed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) breaker_transitions: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) in_hand: AtomicU64,
    pub(crate) lag: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) waiting_lanes: AtomicU64,
    pub(crate) parked_people: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            processed: r(&self.processed),
            retried: r(&self.retried),
            dead_lettered: r(&self.dead_lettered),
            parked: r(&self.parked),
            breaker_transitions: r(&self.breaker_transitions),
            in_flight: r(&self.in_flight),
            in_hand: r(&self.in_hand),
            lag: r(&self.lag),
            reconnects: r(&self.reconnects),
            waiting_lanes: r(&self.waiting_lanes),
            parked_people: r(&self.parked_people),
        }
    }

    pub(crate) fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
