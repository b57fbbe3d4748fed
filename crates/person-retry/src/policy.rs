//! The retry policy: how many attempts, how long to wait between them, with what
//! jitter, within what total budget; and the [`Backoff`] schedule it yields.

use std::iter::FusedIterator;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How randomness is mixed into each delay. `d` is the nominal exponential delay,
/// `min(max_backoff, initial_backoff × multiplier^(retry − 1))`.
///
/// Serialized in snake case: `"none"`, `"full"`, `"equal"`, `"decorrelated"`.
///
/// ```
/// use person_retry::Jitter;
/// assert_eq!(serde_json::to_string(&Jitter::Equal).unwrap(), "\"equal\"");
/// assert_eq!(Jitter::default(), Jitter::Full);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Exactly `d`: deterministic.
    None,
    /// Uniform in `[0, d]` (AWS "full jitter"): spreads retries the most.
    #[default]
    Full,
    /// Uniform in `[d/2, d]` (AWS "equal jitter"): keeps at least half the delay.
    Equal,
    /// AWS "decorrelated jitter": uniform in `[initial_backoff, min(max_backoff,
    /// 3 × previous delay)]`. Stateful in a [`Backoff`]; the stateless
    /// [`RetryPolicy::delay`] uses the previous *nominal* delay as "previous".
    Decorrelated,
}

/// What is wrong with a retry policy or circuit-breaker configuration.
///
/// ```
/// use person_retry::{PolicyErrorKind, RetryPolicy};
/// let err = RetryPolicy::builder().max_attempts(0).build().unwrap_err();
/// assert_eq!(err.kind(), PolicyErrorKind::Zero);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// An attempt or probe count is zero.
    Zero,
    /// `multiplier` is below 1 (delays would shrink).
    MultiplierBelowOne,
    /// A float field is NaN or infinite.
    NotFinite,
    /// `initial_backoff_ms` is greater than `max_backoff_ms`.
    InitialAboveMax,
    /// A value is above the largest supported.
    TooLarge,
    /// A ratio is outside `(0, 1]`.
    RatioOutOfRange,
    /// Two fields contradict each other (e.g. `min_calls > window`).
    Inconsistent,
}

/// A retry policy or circuit-breaker configuration was rejected by `validate()`,
/// a builder or deserialization. Its message names the field and the fix.
///
/// ```
/// use person_retry::{PolicyErrorKind, RetryPolicy};
///
/// let err = RetryPolicy::builder().multiplier(0.5).build().unwrap_err();
/// assert_eq!(err.kind(), PolicyErrorKind::MultiplierBelowOne);
/// assert_eq!(err.field(), "multiplier");
/// assert!(err.to_string().contains("set multiplier to 1.0 or more"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{field}` {problem}; {fix}")]
pub struct PolicyError {
    kind: PolicyErrorKind,
    field: &'static str,
    problem: String,
    fix: &'static str,
}

impl PolicyError {
    pub(crate) fn new(
        kind: PolicyErrorKind,
        field: &'static str,
        problem: impl Into<String>,
        fix: &'static str,
    ) -> Self {
        Self {
            kind,
            field,
            problem: problem.into(),
            fix,
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> PolicyErrorKind {
        self.kind
    }

    /// The serialized name of the offending field (e.g. `"initial_backoff_ms"`).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

/// How an operation is retried: attempts, exponential backoff with a cap, jitter and an
/// optional total time budget.
///
/// Always valid: it is made by [`RetryPolicy::builder`] (whose `build` validates), by
/// [`Default`], or by deserialization (which validates too).
///
/// # Defaults
///
/// | field | default |
/// | --- | --- |
/// | `max_attempts` | 5 (the first attempt plus 4 retries) |
/// | `initial_backoff_ms` | 100 |
/// | `max_backoff_ms` | 30 000 |
/// | `multiplier` | 2.0 |
/// | `jitter` | `"full"` |
/// | `budget_ms` | none (no time budget) |
///
/// # Serialized form
///
/// Durations are whole milliseconds in fields ending in `_ms` (sub-millisecond parts
/// are dropped when serializing). Missing fields take the defaults above; unknown
/// fields are rejected, so a typo such as `initial_backoff` fails loudly.
///
/// ```
/// use std::time::Duration;
/// use person_retry::{Jitter, RetryPolicy};
///
/// let policy: RetryPolicy = serde_json::from_str(
///     r#"{"max_attempts": 3, "initial_backoff_ms": 200, "jitter": "none", "budget_ms": 10000}"#,
/// )?;
/// assert_eq!(policy.max_attempts(), 3);
/// assert_eq!(policy.max_backoff(), Duration::from_secs(30)); // default
/// assert_eq!(policy.delay(1), Duration::ZERO); // the first attempt never waits
/// assert_eq!(policy.delay(2), Duration::from_millis(200));
/// assert_eq!(policy.delay(3), Duration::from_millis(400));
///
/// // Validation names the field and the fix.
/// let err = serde_json::from_str::<RetryPolicy>(r#"{"max_attempts": 0}"#).unwrap_err();
/// assert!(err.to_string().contains("max_attempts"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RetryPolicyRepr", into = "RetryPolicyRepr")]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    jitter: Jitter,
    budget: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: Jitter::Full,
            budget: None,
        }
    }
}

impl RetryPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: Self::default(),
        }
    }

    /// A builder starting from this policy.
    pub fn to_builder(&self) -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: self.clone(),
        }
    }

    /// Checks every invariant. Always `Ok` for a policy that exists (builder and
    /// deserialization run this check); kept public for callers that assemble
    /// configuration and want the same typed errors.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError::new(
                PolicyErrorKind::Zero,
                "max_attempts",
                "is 0, so the operation would never run",
                "set max_attempts to 1 or more (1 means no retries)",
            ));
        }
        if !self.multiplier.is_finite() {
            return Err(PolicyError::new(
                PolicyErrorKind::NotFinite,
                "multiplier",
                format!("is {}", self.multiplier),
                "set multiplier to a finite number, 1.0 or more",
            ));
        }
        if self.multiplier < 1.0 {
            return Err(PolicyError::new(
                PolicyErrorKind::MultiplierBelowOne,
                "multiplier",
                format!("is {}, so delays would shrink", self.multiplier),
                "set multiplier to 1.0 or more (1.0 gives a constant delay)",
            ));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(PolicyError::new(
                PolicyErrorKind::InitialAboveMax,
                "initial_backoff_ms",
                format!(
                    "({} ms) is greater than max_backoff_ms ({} ms)",
                    self.initial_backoff.as_millis(),
                    self.max_backoff.as_millis()
                ),
                "lower initial_backoff_ms or raise max_backoff_ms",
            ));
        }
        if self.budget == Some(Duration::ZERO) {
            return Err(PolicyError::new(
                PolicyErrorKind::Zero,
                "budget_ms",
                "is 0, so no retry could ever fit",
                "remove budget_ms for no budget, or set it above 0",
            ));
        }
        Ok(())
    }

    /// Total attempts, the first included (≥ 1). Use it as the JetStream consumer's
    /// `max_deliver`.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Retries after the first attempt: `max_attempts − 1`.
    pub fn max_retries(&self) -> u32 {
        self.max_attempts - 1
    }

    /// The nominal delay before the first retry.
    pub fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// The cap on every delay, jitter included.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// The growth factor between nominal delays (≥ 1).
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The jitter mode.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The total time budget of one operation, if any. A retry whose delay would end
    /// past the budget (measured from the first attempt's start) is not made.
    pub fn budget(&self) -> Option<Duration> {
        self.budget
    }

    /// Whether a message JetStream has delivered `delivered` times (1-based) may still
    /// be redelivered: `delivered < max_attempts`.
    ///
    /// ```
    /// let policy = person_retry::RetryPolicy::default(); // 5 attempts
    /// assert!(policy.has_attempts_left(4));
    /// assert!(!policy.has_attempts_left(5));
    /// ```
    pub fn has_attempts_left(&self, delivered: u64) -> bool {
        delivered < u64::from(self.max_attempts)
    }

    /// The nominal (jitter-free) delay before retry number `retry + 1`, i.e. before
    /// attempt `retry + 2`: `min(max, initial × multiplier^retry)`.
    fn nominal(&self, retry: u32) -> Duration {
        let init_ns = nanos(self.initial_backoff);
        if init_ns == 0 {
            return Duration::ZERO;
        }
        let exp = i32::try_from(retry).unwrap_or(i32::MAX);
        let ns = init_ns as f64 * self.multiplier.powi(exp);
        let max_ns = nanos(self.max_backoff);
        if !ns.is_finite() || ns >= max_ns as f64 {
            return self.max_backoff;
        }
        Duration::from_nanos(ns.round() as u64).min(self.max_backoff)
    }

    /// The wait before attempt number `attempt` (1-based), with jitter from the
    /// thread-local RNG. `delay(0)` and `delay(1)` are zero: the first attempt never
    /// waits. Never more than [`max_backoff`](Self::max_backoff).
    ///
    /// After attempt `n` failed, wait `delay(n + 1)` before attempt `n + 1`:
    /// `delay(n)` is the wait *before* attempt `n`, not after it, so passing the number
    /// of the attempt that just failed waits one step too little (0 ms before the
    /// first retry). For a broker-side NAK after the `d`-th delivery use
    /// [`nak_delay_with`](Self::nak_delay_with), which takes the delivery count.
    ///
    /// ```
    /// use std::time::Duration;
    /// use person_retry::{Jitter, RetryPolicy};
    ///
    /// let policy = RetryPolicy::default();
    /// assert_eq!(policy.delay(1), Duration::ZERO);
    /// assert!(policy.delay(50) <= policy.max_backoff());
    ///
    /// // Attempt 1 failed: the wait before attempt 2 is the first backoff.
    /// let fixed = RetryPolicy::builder().jitter(Jitter::None).build().unwrap();
    /// let failed = 1;
    /// assert_eq!(fixed.delay(failed + 1), fixed.initial_backoff());
    /// ```
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt <= 1 || self.jitter == Jitter::None {
            return self.delay_with(attempt, &mut NoRng);
        }
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`delay`](Self::delay) with a caller-supplied RNG, for deterministic tests.
    ///
    /// ```
    /// use rand::{SeedableRng, rngs::StdRng};
    /// use person_retry::{Jitter, RetryPolicy};
    ///
    /// let policy = RetryPolicy::builder().jitter(Jitter::Equal).build().unwrap();
    /// let a = policy.delay_with(3, &mut StdRng::seed_from_u64(7));
    /// let b = policy.delay_with(3, &mut StdRng::seed_from_u64(7));
    /// assert_eq!(a, b);
    /// ```
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        self.jittered(attempt - 2, rng)
    }

    /// The delay before retry number `retry + 1` (0-based `retry`), jittered with the
    /// policy's mode. The one place both in-process and broker-side delays are drawn.
    fn jittered<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        match self.jitter {
            Jitter::Decorrelated => {
                let previous = self.nominal(retry.saturating_sub(1));
                self.decorrelated(previous, rng)
            }
            mode => jitter(mode, self.nominal(retry), rng),
        }
    }

    fn decorrelated<R: Rng + ?Sized>(&self, previous: Duration, rng: &mut R) -> Duration {
        let upper = previous.saturating_mul(3).min(self.max_backoff);
        uniform(rng, self.initial_backoff.min(upper), upper)
    }

    /// A fresh delay schedule for one operation, jittered with an RNG seeded from the
    /// thread-local one on first use. Yields `max_attempts − 1` delays: the waits
    /// before attempts 2, 3, ...
    ///
    /// ```
    /// let policy = person_retry::RetryPolicy::default();
    /// let delays: Vec<_> = policy.backoff().collect();
    /// assert_eq!(delays.len(), 4);
    /// assert!(delays.iter().all(|d| *d <= policy.max_backoff()));
    /// ```
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.clone(), None)
    }

    /// Like [`backoff`](Self::backoff) but jittered by an RNG seeded with `seed`:
    /// the same seed gives the same delays.
    ///
    /// ```
    /// let policy = person_retry::RetryPolicy::default();
    /// let a: Vec<_> = policy.backoff_seeded(42).collect();
    /// let b: Vec<_> = policy.backoff_seeded(42).collect();
    /// assert_eq!(a, b);
    /// ```
    pub fn backoff_seeded(&self, seed: u64) -> Backoff {
        Backoff::new(self.clone(), Some(StdRng::seed_from_u64(seed)))
    }

    /// The policy as a JetStream consumer `backoff` list, jitter-free so it is
    /// deterministic: entry `i` is the nominal delay before redelivery `i + 1`, i.e. the
    /// wait after the message's `(i + 1)`-th delivery. Broker-side redelivery then
    /// follows the same schedule as in-process retries.
    ///
    /// It has at most `max_attempts − 1` entries, so JetStream's rule
    /// `backoff.len() < max_deliver` holds with `max_deliver = max_attempts`. The list
    /// stops early once the delays stop changing (the cap is reached, the multiplier is
    /// 1, or the delays are zero): JetStream repeats the last entry for later
    /// deliveries, which is the same schedule. Note that JetStream also uses each entry
    /// as the ack wait of that delivery.
    ///
    /// ```
    /// use std::time::Duration;
    /// use person_retry::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder()
    ///     .max_attempts(10)
    ///     .initial_backoff(Duration::from_secs(1))
    ///     .max_backoff(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// let ms: Vec<u128> = policy.schedule().iter().map(|d| d.as_millis()).collect();
    /// assert_eq!(ms, [1000, 2000, 4000, 5000]);
    /// assert_eq!(policy.nak_delay(9), Duration::from_secs(5));
    /// ```
    pub fn schedule(&self) -> Vec<Duration> {
        let mut out = Vec::new();
        for retry in 0..self.max_retries() {
            let delay = self.nominal(retry);
            out.push(delay);
            if delay >= self.max_backoff || delay.is_zero() || self.multiplier <= 1.0 {
                break;
            }
        }
        out
    }

    /// The delay for a NAK of a message JetStream has delivered `delivered` times
    /// (delivery counts are 1-based; 0 is read as 1). Consistent with
    /// [`schedule`](Self::schedule): equal to `schedule()[min(delivered, len) − 1]`
    /// (and to the initial backoff when the schedule is empty).
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = person_retry::RetryPolicy::default();
    /// assert_eq!(policy.nak_delay(1), Duration::from_millis(100));
    /// assert_eq!(policy.nak_delay(2), Duration::from_millis(200));
    /// assert_eq!(policy.nak_delay(1000), policy.nak_delay(4)); // last entry repeats
    /// ```
    pub fn nak_delay(&self, delivered: u64) -> Duration {
        self.nominal(self.nak_retry(delivered))
    }

    /// The delay for a NAK of a message JetStream has delivered `delivered` times,
    /// jittered with the policy's [`Jitter`] mode exactly as
    /// [`delay_with`](Self::delay_with) jitters in-process retries: the nominal step is
    /// [`nak_delay(delivered)`](Self::nak_delay), the same one `delay_with(delivered +
    /// 1)` jitters. Never above [`max_backoff`](Self::max_backoff); with
    /// [`Jitter::None`] it equals `nak_delay(delivered)`.
    ///
    /// Use it rather than `nak_delay` when NAKing: messages that failed together then
    /// come back spread out instead of in one wave. `nak_delay` stays jitter-free
    /// because it must match the consumer's [`schedule`](Self::schedule).
    ///
    /// ```
    /// use std::time::Duration;
    /// use rand::{SeedableRng, rngs::StdRng};
    /// use person_retry::{Jitter, RetryPolicy};
    ///
    /// let policy = RetryPolicy::builder().jitter(Jitter::Equal).build().unwrap();
    /// let mut rng = StdRng::seed_from_u64(7);
    /// let d = policy.nak_delay_with(2, &mut rng);
    /// // Equal jitter keeps at least half of the nominal 200 ms.
    /// assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
    /// assert_eq!(d, policy.nak_delay_with(2, &mut StdRng::seed_from_u64(7)));
    ///
    /// let fixed = policy.to_builder().jitter(Jitter::None).build().unwrap();
    /// assert_eq!(fixed.nak_delay_with(2, &mut rng), fixed.nak_delay(2));
    /// ```
    pub fn nak_delay_with<R: Rng + ?Sized>(&self, delivered: u64, rng: &mut R) -> Duration {
        self.jittered(self.nak_retry(delivered), rng)
    }

    /// The 0-based retry whose nominal delay follows delivery `delivered`, held at the
    /// schedule's last entry (JetStream repeats it).
    fn nak_retry(&self, delivered: u64) -> u32 {
        let last = u64::from(self.max_retries());
        let retry = delivered.min(last).max(1) - 1;
        u32::try_from(retry).unwrap_or(u32::MAX)
    }
}

/// Builds a [`RetryPolicy`]; [`build`](Self::build) validates it.
///
/// ```
/// use std::time::Duration;
/// use person_retry::{Jitter, RetryPolicy};
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(8)
///     .initial_backoff(Duration::from_millis(50))
///     .max_backoff(Duration::from_secs(10))
///     .multiplier(3.0)
///     .jitter(Jitter::Decorrelated)
///     .budget(Duration::from_secs(60))
///     .build()
///     .unwrap();
/// assert_eq!(policy.max_retries(), 7);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Total attempts, the first included (≥ 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// Retries after the first attempt (sets `max_attempts = retries + 1`).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.policy.max_attempts = retries.saturating_add(1);
        self
    }

    /// The nominal delay before the first retry.
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.policy.initial_backoff = delay;
        self
    }

    /// The cap on every delay.
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.policy.max_backoff = delay;
        self
    }

    /// The growth factor (≥ 1; 1 gives a constant delay).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.policy.multiplier = multiplier;
        self
    }

    /// The jitter mode.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.policy.jitter = jitter;
        self
    }

    /// A total time budget for one operation.
    pub fn budget(mut self, budget: Duration) -> Self {
        self.policy.budget = Some(budget);
        self
    }

    /// No time budget (the default).
    pub fn no_budget(mut self) -> Self {
        self.policy.budget = None;
        self
    }

    /// The validated policy.
    pub fn build(self) -> Result<RetryPolicy, PolicyError> {
        self.policy.validate()?;
        Ok(self.policy)
    }
}

/// The serialized form of [`RetryPolicy`].
#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RetryPolicyRepr {
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    multiplier: f64,
    jitter: Jitter,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_ms: Option<u64>,
}

impl Default for RetryPolicyRepr {
    fn default() -> Self {
        RetryPolicy::default().into()
    }
}

impl From<RetryPolicy> for RetryPolicyRepr {
    fn from(p: RetryPolicy) -> Self {
        Self {
            max_attempts: p.max_attempts,
            initial_backoff_ms: millis(p.initial_backoff),
            max_backoff_ms: millis(p.max_backoff),
            multiplier: p.multiplier,
            jitter: p.jitter,
            budget_ms: p.budget.map(millis),
        }
    }
}

impl TryFrom<RetryPolicyRepr> for RetryPolicy {
    type Error = PolicyError;

    fn try_from(r: RetryPolicyRepr) -> Result<Self, PolicyError> {
        let policy = RetryPolicy {
            max_attempts: r.max_attempts,
            initial_backoff: Duration::from_millis(r.initial_backoff_ms),
            max_backoff: Duration::from_millis(r.max_backoff_ms),
            multiplier: r.multiplier,
            jitter: r.jitter,
            budget: r.budget_ms.map(Duration::from_millis),
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// A fresh, per-operation schedule of retry delays, from [`RetryPolicy::backoff`].
///
/// Yields exactly `max_attempts − 1` delays (the waits before attempts 2, 3, ...),
/// each within `[0, max_backoff]`, then `None`. [`Jitter::Decorrelated`] is stateful
/// here: each delay is drawn from `[initial, min(max, 3 × previous delay)]`.
///
/// ```
/// use std::time::Duration;
/// use person_retry::{Jitter, RetryPolicy};
///
/// let policy = RetryPolicy::builder().max_attempts(4).jitter(Jitter::None).build().unwrap();
/// let mut backoff = policy.backoff();
/// assert_eq!(backoff.len(), 3);
/// assert_eq!(backoff.next(), Some(Duration::from_millis(100)));
/// assert_eq!(backoff.next(), Some(Duration::from_millis(200)));
/// assert_eq!(backoff.next(), Some(Duration::from_millis(400)));
/// assert_eq!(backoff.next(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    /// The (0-based) retry whose delay comes next.
    retry: u32,
    previous: Duration,
    rng: Option<StdRng>,
}

impl Backoff {
    fn new(policy: RetryPolicy, rng: Option<StdRng>) -> Self {
        let previous = policy.initial_backoff;
        Self {
            policy,
            retry: 0,
            previous,
            rng,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retry >= self.policy.max_retries() {
            return None;
        }
        let retry = self.retry;
        self.retry += 1;
        let delay = match self.policy.jitter {
            Jitter::None => self.policy.nominal(retry),
            Jitter::Decorrelated => {
                let rng = self.rng.get_or_insert_with(thread_seeded);
                self.policy.decorrelated(self.previous, rng)
            }
            mode => {
                let rng = self.rng.get_or_insert_with(thread_seeded);
                jitter(mode, self.policy.nominal(retry), rng)
            }
        };
        self.previous = delay;
        Some(delay)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.policy.max_retries() - self.retry) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Backoff {}
impl FusedIterator for Backoff {}

fn thread_seeded() -> StdRng {
    StdRng::from_rng(&mut rand::rng())
}

fn jitter<R: Rng + ?Sized>(mode: Jitter, nominal: Duration, rng: &mut R) -> Duration {
    match mode {
        Jitter::None | Jitter::Decorrelated => nominal,
        Jitter::Full => uniform(rng, Duration::ZERO, nominal),
        Jitter::Equal => uniform(rng, nominal / 2, nominal),
    }
}

/// Uniform in `[lo, hi]` at nanosecond resolution (`lo` when `lo >= hi`).
fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (nanos(lo), nanos(hi));
    if lo >= hi {
        return Duration::from_nanos(lo);
    }
    Duration::from_nanos(rng.random_range(lo..=hi))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An RNG for the paths that draw no random numbers (no jitter, first attempt).
struct NoRng;

impl rand::RngCore for NoRng {
    fn next_u32(&mut self) -> u32 {
        0
    }
    fn next_u64(&mut self) -> u64 {
        0
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        dst.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy::builder()
            .max_attempts(6)
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(1000))
            .jitter(jitter)
            .build()
            .unwrap()
    }

    #[test]
    fn defaults_are_documented_values() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 5);
        assert_eq!(p.initial_backoff(), Duration::from_millis(100));
        assert_eq!(p.max_backoff(), Duration::from_secs(30));
        assert_eq!(p.multiplier(), 2.0);
        assert_eq!(p.jitter(), Jitter::Full);
        assert_eq!(p.budget(), None);
        p.validate().unwrap();
    }

    #[test]
    fn nominal_delays_grow_and_cap() {
        let p = policy(Jitter::None);
        let ms: Vec<u128> = (1..=7).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(ms, [0, 100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_never_overshoots_the_cap() {
        // The seed added jitter after capping; here the cap always wins.
        for mode in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            let p = policy(mode);
            for attempt in 0..40 {
                assert!(p.delay(attempt) <= p.max_backoff(), "{mode:?} {attempt}");
            }
            assert!(p.backoff().all(|d| d <= p.max_backoff()));
        }
    }

    #[test]
    fn equal_jitter_keeps_half() {
        let p = policy(Jitter::Equal);
        for _ in 0..100 {
            let d = p.delay(3);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        }
    }

    #[test]
    fn validation_names_field_and_fix() {
        let cases = [
            (
                RetryPolicy::builder().max_attempts(0),
                PolicyErrorKind::Zero,
                "max_attempts",
            ),
            (
                RetryPolicy::builder().multiplier(0.9),
                PolicyErrorKind::MultiplierBelowOne,
                "multiplier",
            ),
            (
                RetryPolicy::builder().multiplier(f64::NAN),
                PolicyErrorKind::NotFinite,
                "multiplier",
            ),
            (
                RetryPolicy::builder()
                    .initial_backoff(Duration::from_secs(5))
                    .max_backoff(Duration::from_secs(1)),
                PolicyErrorKind::InitialAboveMax,
                "initial_backoff_ms",
            ),
            (
                RetryPolicy::builder().budget(Duration::ZERO),
                PolicyErrorKind::Zero,
                "budget_ms",
            ),
        ];
        for (builder, kind, field) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!((err.kind(), err.field()), (kind, field));
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn serde_round_trip_and_unknown_fields() {
        let p = RetryPolicy::builder()
            .budget(Duration::from_secs(9))
            .jitter(Jitter::Decorrelated)
            .build()
            .unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"max_attempts":5,"initial_backoff_ms":100,"max_backoff_ms":30000,"multiplier":2.0,"jitter":"decorrelated","budget_ms":9000}"#
        );
        assert_eq!(serde_json::from_str::<RetryPolicy>(&json).unwrap(), p);
        assert_eq!(
            serde_json::from_str::<RetryPolicy>("{}").unwrap(),
            RetryPolicy::default()
        );
        let err = serde_json::from_str::<RetryPolicy>(r#"{"initial_backoff":5}"#).unwrap_err();
        assert!(err.to_string().contains("initial_backoff"), "{err}");
        let err = serde_json::from_str::<RetryPolicy>(
            r#"{"initial_backoff_ms":5000,"max_backoff_ms":10}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("raise max_backoff_ms"), "{err}");
    }

    #[test]
    fn schedule_and_nak_delay_agree() {
        let p = policy(Jitter::Full);
        let schedule = p.schedule();
        let ms: Vec<u128> = schedule.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000]);
        for delivered in 1..20u64 {
            let idx = (delivered.min(schedule.len() as u64) - 1) as usize;
            assert_eq!(p.nak_delay(delivered), schedule[idx]);
        }
        assert_eq!(p.nak_delay(0), p.nak_delay(1));
        let once = RetryPolicy::builder().max_attempts(1).build().unwrap();
        assert!(once.schedule().is_empty());
        assert_eq!(once.nak_delay(1), once.initial_backoff());
        let constant = RetryPolicy::builder()
            .max_attempts(100)
            .multiplier(1.0)
            .build()
            .unwrap();
        assert_eq!(constant.schedule(), [Duration::from_millis(100)]);
    }

    #[test]
    fn seeded_backoff_is_reproducible() {
        let p = policy(Jitter::Decorrelated);
        let a: Vec<_> = p.backoff_seeded(1).collect();
        let b: Vec<_> = p.backoff_seeded(1).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 5);
        assert!(a.iter().all(|d| *d >= p.initial_backoff()));
    }
}
