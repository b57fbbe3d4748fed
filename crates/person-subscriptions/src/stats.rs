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
