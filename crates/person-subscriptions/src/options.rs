//! [`SubscriptionOptions`]: how a consumer runs.

use std::time::Duration;

use person_retry::CircuitBreakerConfig;

/// What happens to a person's later events once one of their events is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadLetterPolicy {
    /// Later events of that person are dead-lettered too, with the reason
    /// `blocked by <event_id>`, so they can be replayed in order after the first one.
    /// The default: a projection never applies event n+1 without event n.
    #[default]
    Park,
    /// Later events of that person are handled as usual.
    Continue,
}

/// Runtime options of one consumer.
///
/// ```
/// use person_subscriptions::{DeadLetterPolicy, SubscriptionOptions};
/// let options = SubscriptionOptions::default().concurrency(16).dead_letter_policy(DeadLetterPolicy::Continue);
/// assert_eq!(options.concurrency, 16);
/// ```
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    /// People whose events are handled at the same time (each person's events are
    /// always handled one at a time, in stream order). Default 32. In a consumer group,
    /// the instance's budget, shared by the partitions it handles.
    pub concurrency: usize,
    /// Messages held in memory at most (fetched and not yet settled); bounds memory
    /// whatever the backlog. Default 256, and never more than the consumer's
    /// `max_ack_pending`.
    pub max_in_hand: usize,
    /// How long one pull request waits for messages. Default 1 s.
    pub fetch_expiry: Duration,
    /// A handler call taking longer is cancelled and counted as a transient failure.
    /// Default 60 s.
    pub handler_timeout: Duration,
    /// In-process attempts before falling back to a broker-side delayed NAK. Default 1
    /// (no in-process retry: every retry is broker-side, counted by JetStream).
    pub in_process_attempts: u32,
    /// What happens after a person's event is dead-lettered. Default [`DeadLetterPolicy::Park`].
    pub dead_letter_policy: DeadLetterPolicy,
    /// The handler's circuit breaker.
    pub breaker: CircuitBreakerConfig,
    /// A message whose body is larger is dead-lettered as `oversized` without being
    /// decoded. Default 1 MiB (the server's default `max_payload`).
    pub max_message_bytes: usize,
    /// A current (V2) envelope must carry the CloudEvents headers the publisher writes
    /// (`ce-specversion`, `ce-id`, `ce-time`, `ce-correlationid`), and `ce-id` must be
    /// its event id; otherwise it is dead-lettered as `bad headers`. Legacy shapes (V1,
    /// week-1 envelopes) were stored without headers and are exempt. Default `true`.
    pub require_headers: bool,
    /// When the durable consumer is deleted while running (by an operator, or by
    /// `inactive_threshold`), recreate it from the configuration and go on. It then
    /// delivers from its deliver policy again: with `All`, the whole history. Default
    /// `false`: the consumer stops, logs an error and reports
    /// [`SubscriptionErrorKind::ConsumerDeleted`](crate::SubscriptionErrorKind::ConsumerDeleted)
    /// through [`SubscriptionHandle::errors`](crate::SubscriptionHandle::errors).
    pub recreate_deleted_consumer: bool,
    /// In a consumer group ([`SubscriptionManager::start_group`](crate::SubscriptionManager::start_group)):
    /// how long a partition's lease lasts unrenewed. An instance that dies holds its
    /// partitions this long at most before another takes them over; renewals happen
    /// every quarter of it, and an owner that could not renew stops its handlers a
    /// quarter before anyone may take over. Default 8 s.
    pub group_lease: Duration,
    /// In a consumer group: how long the running calls of a partition that moves to
    /// another instance may take to finish before they are cancelled. Default 10 s.
    pub handover_grace: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
            max_in_hand: 256,
            fetch_expiry: Duration::from_secs(1),
            handler_timeout: Duration::from_secs(60),
            in_process_attempts: 1,
            dead_letter_policy: DeadLetterPolicy::Park,
            breaker: CircuitBreakerConfig::default(),
            max_message_bytes: 1024 * 1024,
            require_headers: true,
            recreate_deleted_consumer: false,
            group_lease: Duration::from_secs(8),
            handover_grace: Duration::from_secs(10),
        }
    }
}

impl SubscriptionOptions {
    /// Sets `concurrency` (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets `max_in_hand` (at least 1).
    pub fn max_in_hand(mut self, n: usize) -> Self {
        self.max_in_hand = n.max(1);
        self
    }

    /// Sets `handler_timeout`.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Sets `in_process_attempts` (at least 1).
    pub fn in_process_attempts(mut self, attempts: u32) -> Self {
        self.in_process_attempts = attempts.max(1);
        self
    }

    /// Sets the dead-letter policy.
    pub fn dead_letter_policy(mut self, policy: DeadLetterPolicy) -> Self {
        self.dead_letter_policy = policy;
        self
    }

    /// Sets the circuit breaker configuration.
    pub fn breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Sets `max_message_bytes` (at least 1).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes.max(1);
        self
    }

    /// Sets `require_headers`.
    pub fn require_headers(mut self, require: bool) -> Self {
        self.require_headers = require;
        self
    }

    /// Sets `recreate_deleted_consumer`.
    pub fn recreate_deleted_consumer(mut self, recreate: bool) -> Self {
        self.recreate_deleted_consumer = recreate;
        self
    }

    /// Sets `group_lease` (at least 100 ms).
    pub fn group_lease(mut self, lease: Duration) -> Self {
        self.group_lease = lease.max(Duration::from_millis(100));
        self
    }

    /// Sets `handover_grace`.
    pub fn handover_grace(mut self, grace: Duration) -> Self {
        self.handover_grace = grace;
        self
    }

    /// Sets how long one pull waits.
    pub fn fetch_expiry(mut self, expiry: Duration) -> Self {
        self.fetch_expiry = expiry;
        self
    }
}
