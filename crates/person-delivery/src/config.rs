//! [`Config`]: the numbers the core decides by.

use std::time::Duration;

use person_retry::{CircuitBreakerConfig, RetryPolicy};

/// What the core needs to know of the consumer and the runtime options. The shell
/// builds it once; every field is plain data.
#[derive(Debug, Clone)]
pub struct Config {
    /// Messages held at most (fetched and not settled), outstanding pull included.
    pub max_in_hand: usize,
    /// Handler calls and dead-letter stores running at once.
    pub concurrency: usize,
    /// The most one pull may ask for (the consumer's `max_batch`).
    pub max_pull: usize,
    /// Pull this many at once when there is room (fewer round trips); a smaller pull
    /// is made when nothing else would free room soon.
    pub pull_batch: usize,
    /// How long a smaller pull waits for room to grow to `pull_batch`.
    pub pull_linger: Duration,
    /// How long a pull request stays open at the server. A crashed instance's open
    /// pull can still receive messages until then, which come back an ack wait later.
    pub pull_expiry: Duration,
    /// The consumer's ack wait: an unsettled message without progress comes back after
    /// it.
    pub ack_wait: Duration,
    /// How often held messages get a progress ack (well inside `ack_wait`).
    pub progress_every: Duration,
    /// Deliveries after which a failing message is dead-lettered (JetStream's own
    /// count, so it is shared by instances and survives restarts).
    pub max_deliver: u64,
    /// Handler attempts within one delivery before a broker-side retry.
    pub in_process_attempts: u32,
    /// The retry schedule, for in-process waits and NAK delays.
    pub retry: RetryPolicy,
    /// The handler's circuit breaker.
    pub breaker: CircuitBreakerConfig,
    /// Park a person's later events behind a dead-lettered one.
    pub park: bool,
    /// How long a message given back to make room (see [`crate::Core`]) stays away.
    pub evict_delay: Duration,
    /// Seed of the jitter RNG: the same seed and inputs give the same actions.
    pub seed: u64,
}

impl Config {
    /// A config with the runtime's defaults around the given retry policy and ack
    /// wait.
    pub fn new(retry: RetryPolicy, ack_wait: Duration) -> Self {
        Self {
            max_in_hand: 256,
            concurrency: 32,
            max_pull: usize::MAX,
            pull_batch: 64,
            pull_linger: Duration::from_millis(2),
            pull_expiry: Duration::from_secs(1),
            ack_wait,
            progress_every: progress_every(ack_wait),
            max_deliver: u64::from(retry.max_attempts()),
            in_process_attempts: 1,
            retry,
            breaker: CircuitBreakerConfig::default(),
            park: true,
            evict_delay: Duration::from_millis(500),
            seed: 0,
        }
    }

    /// The longest broker-side delay: half the ack wait. A crashed instance's held
    /// messages come back no sooner than two thirds of the ack wait after the crash
    /// (they had a progress ack at most a third before it), so a person's delayed
    /// event always comes back before the later events the crash gave back.
    pub fn max_nak_delay(&self) -> Duration {
        self.ack_wait / 2
    }

    /// How long past its expected redelivery a lane waits before it warns.
    pub fn overdue_after(&self) -> Duration {
        self.progress_every.max(Duration::from_millis(100))
    }

    /// How long past its expected redelivery a lane waits before it stops waiting:
    /// the redelivery went elsewhere (another instance, a deleted message).
    pub fn give_up_after(&self) -> Duration {
        self.ack_wait + self.overdue_after()
    }
}

/// The progress-ack period for an ack wait: a third of it, at least 200 ms.
pub fn progress_every(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(200))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_derived_periods_follow_the_ack_wait() {
        assert_eq!(
            progress_every(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(progress_every(MS * 300), MS * 200, "at least 200 ms");
        let c = Config::new(RetryPolicy::default(), Duration::from_secs(3));
        assert_eq!(c.progress_every, Duration::from_secs(1));
        assert_eq!(c.max_nak_delay(), MS * 1500);
        assert_eq!(c.overdue_after(), Duration::from_secs(1));
        assert_eq!(c.give_up_after(), Duration::from_secs(4));
    }

    #[test]
    fn a_lane_waits_at_least_100_ms_past_a_redelivery_before_it_warns() {
        let mut c = Config::new(RetryPolicy::default(), Duration::from_secs(3));
        c.progress_every = MS * 10;
        assert_eq!(c.overdue_after(), MS * 100);
        assert_eq!(c.give_up_after(), MS * 3100);
    }
}
