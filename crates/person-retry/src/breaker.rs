//! [`CircuitBreaker`]: stop calling a failing downstream for a while, then probe it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[cfg(test)]
use crate::breaker_config::FailureRatio;
use crate::breaker_config::{BreakerState, CircuitBreakerConfig, MAX_BREAKER_COUNT, Transition};
use crate::clock::{Clock, TokioClock};
#[cfg(test)]
use crate::policy::PolicyErrorKind;

/// Why [`CircuitBreaker::try_acquire`] refused.
///
/// ```
/// use person_retry::{BreakerOpen, BreakerOpenKind};
/// let err = BreakerOpen::ProbesBusy { max_probes: 1 };
/// assert_eq!(err.kind(), BreakerOpenKind::ProbesBusy);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerOpenKind {
    /// The breaker is Open.
    Open,
    /// The breaker is HalfOpen and every probe slot is taken.
    ProbesBusy,
}

/// A call was rejected without running: the breaker is Open, or HalfOpen with every
/// probe slot taken. Always transient.
///
/// ```
/// use std::time::Duration;
/// use person_retry::{BreakerOpen, BreakerOpenKind};
///
/// let err = BreakerOpen::Open { retry_in: Duration::from_millis(1500) };
/// assert_eq!(err.kind(), BreakerOpenKind::Open);
/// assert_eq!(err.retry_in(), Some(Duration::from_millis(1500)));
/// assert!(err.is_transient());
/// assert_eq!(err.to_string(), "circuit breaker is open; next probe allowed in 1500 ms");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerOpen {
    /// Open; the next call after `retry_in` becomes a probe.
    #[error("circuit breaker is open; next probe allowed in {} ms", .retry_in.as_millis())]
    Open {
        /// Time left until the open timeout ends.
        retry_in: Duration,
    },
    /// HalfOpen with all probe slots in use.
    #[error("circuit breaker is half-open and all {max_probes} probe slot(s) are in use")]
    ProbesBusy {
        /// The configured number of probe slots.
        max_probes: u32,
    },
}

impl BreakerOpen {
    /// Why it refused.
    pub fn kind(&self) -> BreakerOpenKind {
        match self {
            BreakerOpen::Open { .. } => BreakerOpenKind::Open,
            BreakerOpen::ProbesBusy { .. } => BreakerOpenKind::ProbesBusy,
        }
    }

    /// When Open, the time until a probe is allowed (a good NAK delay).
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            BreakerOpen::Open { retry_in } => Some(*retry_in),
            BreakerOpen::ProbesBusy { .. } => None,
        }
    }

    /// Always `true`: the downstream may recover.
    pub fn is_transient(&self) -> bool {
        true
    }
}

/// What [`CircuitBreaker::call`] failed with.
///
/// ```
/// use person_retry::{BreakerError, BreakerErrorKind, BreakerOpen};
/// let err: BreakerError<()> = BreakerError::Rejected(BreakerOpen::ProbesBusy { max_probes: 1 });
/// assert_eq!(err.kind(), BreakerErrorKind::Rejected);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerErrorKind {
    /// Rejected by the breaker; the operation did not run.
    Rejected,
    /// The operation ran and failed.
    Operation,
}

/// The error of [`CircuitBreaker::call`]: either the breaker refused (the operation
/// did not run) or the operation's own error, unchanged.
///
/// ```
/// use person_retry::{BreakerError, BreakerErrorKind};
///
/// let err: BreakerError<&str> = BreakerError::Operation("boom");
/// assert_eq!(err.kind(), BreakerErrorKind::Operation);
/// assert_eq!(err.to_string(), "boom");
/// assert_eq!(err.into_operation(), Some("boom"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerError<E> {
    /// The breaker refused; the operation did not run.
    #[error(transparent)]
    Rejected(BreakerOpen),
    /// The operation's error (recorded as a failure).
    #[error("{0}")]
    Operation(E),
}

impl<E> BreakerError<E> {
    /// Which of the two.
    pub fn kind(&self) -> BreakerErrorKind {
        match self {
            BreakerError::Rejected(_) => BreakerErrorKind::Rejected,
            BreakerError::Operation(_) => BreakerErrorKind::Operation,
        }
    }

    /// Whether the breaker refused the call.
    pub fn is_rejected(&self) -> bool {
        matches!(self, BreakerError::Rejected(_))
    }

    /// The operation's error, if it ran.
    pub fn into_operation(self) -> Option<E> {
        match self {
            BreakerError::Operation(e) => Some(e),
            BreakerError::Rejected(_) => None,
        }
    }
}

// The whole state machine lives in one atomic word, so every transition is one CAS:
// bits 0..2 state, 2..18 counter A, 18..34 counter B, 34..64 epoch.
// Closed: A = consecutive failures. HalfOpen: A = probes in flight, B = successes.
// The epoch changes on every state change; a permit only counts in its own epoch.
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const STATE_MASK: u64 = 0b11;
const A_SHIFT: u32 = 2;
const B_SHIFT: u32 = 18;
const COUNT_MASK: u64 = 0xFFFF;
const EPOCH_SHIFT: u32 = 34;
const EPOCH_MASK: u32 = (1 << 30) - 1;

fn state_from_bits(bits: u64) -> BreakerState {
    match bits {
        CLOSED => BreakerState::Closed,
        OPEN => BreakerState::Open,
        _ => BreakerState::HalfOpen,
    }
}

fn state_of(w: u64) -> u64 {
    w & STATE_MASK
}
fn a_of(w: u64) -> u32 {
    ((w >> A_SHIFT) & COUNT_MASK) as u32
}
fn b_of(w: u64) -> u32 {
    ((w >> B_SHIFT) & COUNT_MASK) as u32
}
fn epoch_of(w: u64) -> u32 {
    (w >> EPOCH_SHIFT) as u32
}
fn pack(state: u64, a: u32, b: u32, epoch: u32) -> u64 {
    state
        | (u64::from(a) & COUNT_MASK) << A_SHIFT
        | (u64::from(b) & COUNT_MASK) << B_SHIFT
        | u64::from(epoch & EPOCH_MASK) << EPOCH_SHIFT
}
fn next_epoch(w: u64) -> u32 {
    epoch_of(w).wrapping_add(1) & EPOCH_MASK
}

type Callback = Arc<dyn Fn(Transition) + Send + Sync>;

struct Window {
    epoch: u32,
    outcomes: VecDeque<bool>,
    failures: u32,
}

struct Inner<C> {
    word: AtomicU64,
    /// Nanoseconds from `base` to the latest opening.
    opened_at: AtomicU64,
    base: Instant,
    clock: C,
    config: CircuitBreakerConfig,
    window: Option<Mutex<Window>>,
    tx: watch::Sender<BreakerState>,
    /// Epoch of the state last sent on `tx`; only touched under the channel's lock.
    published: AtomicU32,
    on_transition: Option<Callback>,
    name: String,
}

impl<C: Clock> Inner<C> {
    fn now_ns(&self) -> u64 {
        let since = self.clock.now().saturating_duration_since(self.base);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    fn cas(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.word
            .compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    fn publish(&self, from: u64, to: u64, epoch: u32) {
        let transition = Transition {
            from: state_from_bits(from),
            to: state_from_bits(to),
        };
        self.tx.send_if_modified(|state| {
            let last = self.published.load(Ordering::Relaxed);
            let ahead = epoch.wrapping_sub(last) & EPOCH_MASK;
            if ahead != 0 && ahead < (1 << 29) {
                self.published.store(epoch, Ordering::Relaxed);
                *state = transition.to;
                true
            } else {
                false
            }
        });
        match transition.to {
            BreakerState::Open => {
                tracing::warn!(breaker = %self.name, %transition, "circuit breaker opened");
            }
            _ => tracing::info!(breaker = %self.name, %transition, "circuit breaker state changed"),
        }
        if let Some(callback) = &self.on_transition {
            callback(transition);
        }
    }

    /// Records a Closed-state outcome in the ratio window; `true` if it trips.
    fn window_trips(&self, epoch: u32, failed: bool) -> bool {
        let (Some(window), Some(rule)) = (&self.window, self.config.failure_ratio) else {
            return false;
        };
        if epoch_of(self.word.load(Ordering::Acquire)) != epoch {
            return false;
        }
        let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
        if w.epoch != epoch {
            w.epoch = epoch;
            w.outcomes.clear();
            w.failures = 0;
        }
        if w.outcomes.len() >= rule.window as usize && w.outcomes.pop_front() == Some(true) {
            w.failures -= 1;
        }
        w.outcomes.push_back(failed);
        w.failures += u32::from(failed);
        let len = w.outcomes.len() as u32;
        failed && len >= rule.min_calls && f64::from(w.failures) >= rule.ratio * f64::from(len)
    }

    /// The Closed fast path of a success: nothing to record when no failure is
    /// pending and no ratio window is kept.
    #[inline]
    fn success_is_noop(&self, epoch: u32, probe: bool) -> bool {
        !probe
            && self.window.is_none()
            && self.word.load(Ordering::Acquire) == pack(CLOSED, 0, 0, epoch)
    }

    fn on_success(&self, epoch: u32, probe: bool) {
        if !probe {
            let _ = self.window_trips(epoch, false);
        }
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if epoch_of(w) != epoch {
                return;
            }
            let next = match state_of(w) {
                CLOSED if a_of(w) == 0 => return,
                CLOSED => pack(CLOSED, 0, 0, epoch),
                HALF_OPEN => {
                    let successes = b_of(w) + 1;
                    if successes >= self.config.success_threshold {
                        pack(CLOSED, 0, 0, next_epoch(w))
                    } else {
                        pack(HALF_OPEN, a_of(w).saturating_sub(1), successes, epoch)
                    }
                }
                _ => return,
            };
            match self.cas(w, next) {
                Ok(_) => {
                    if state_of(next) != state_of(w) {
                        self.publish(state_of(w), state_of(next), epoch_of(next));
                    }
                    return;
                }
                Err(actual) => w = actual,
            }
        }
    }

    fn on_failure(&self, epoch: u32, probe: bool) {
        let tripped = !probe && self.window_trips(epoch, true);
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if epoch_of(w) != epoch {
                return;
            }
            let next = match state_of(w) {
                CLOSED => {
                    let failures = (a_of(w) + 1).min(MAX_BREAKER_COUNT);
                    if tripped || failures >= self.config.failure_threshold {
                        pack(OPEN, 0, 0, next_epoch(w))
                    } else {
                        pack(CLOSED, failures, 0, epoch)
                    }
                }
                HALF_OPEN => pack(OPEN, 0, 0, next_epoch(w)),
                _ => return,
            };
            if state_of(next) == OPEN {
                // Written before the CAS publishes Open, so readers of Open see it.
                self.opened_at.fetch_max(self.now_ns(), Ordering::AcqRel);
            }
            match self.cas(w, next) {
                Ok(_) => {
                    if state_of(next) != state_of(w) {
                        self.publish(state_of(w), state_of(next), epoch_of(next));
                    }
                    return;
                }
                Err(actual) => w = actual,
            }
        }
    }

    fn release_probe(&self, epoch: u32) {
        let mut w = self.word.load(Ordering::Acquire);
        while epoch_of(w) == epoch && state_of(w) == HALF_OPEN {
            let next = pack(HALF_OPEN, a_of(w).saturating_sub(1), b_of(w), epoch);
            match self.cas(w, next) {
                Ok(_) => return,
                Err(actual) => w = actual,
            }
        }
    }
}

/// A circuit breaker: Closed → (failures) → Open → (timeout) → HalfOpen → (probe
/// successes) → Closed, or back to Open on a probe failure.
///
/// - **Opening**: `failure_threshold` consecutive failures while Closed, or the
///   optional [`FailureRatio`](crate::FailureRatio) over a count-based window.
/// - **Open**: every call is rejected with [`BreakerOpen::Open`] without running. The
///   first call after `open_timeout` turns it HalfOpen and becomes a probe (the
///   transition happens on that check: [`state`](Self::state) reads Open until then).
/// - **HalfOpen**: at most `half_open_max_probes` calls run at once; the others get
///   [`BreakerOpen::ProbesBusy`]. `success_threshold` probe successes close it; one
///   probe failure re-opens it (and restarts the timeout).
///
/// The Closed path is lock-free: the whole state (state, counters, epoch) is one
/// `AtomicU64` and a success with no failures pending only reads it. Outcomes of
/// permits taken in an earlier state are ignored. Clones share one breaker.
///
/// Transitions are logged with `tracing`, published on a `tokio::sync::watch`
/// channel ([`subscribe`](Self::subscribe); latest state wins, in order) and passed
/// to the optional `on_transition` callback (called by the thread that made the
/// transition).
///
/// ```
/// use std::time::Duration;
/// use person_retry::{BreakerError, BreakerState, CircuitBreaker, CircuitBreakerConfig};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let config = CircuitBreakerConfig::builder().failure_threshold(2).build().unwrap();
/// let breaker = CircuitBreaker::new(config);
///
/// for _ in 0..2 {
///     let r: Result<(), _> = breaker.call(|| async { Err("down") }).await;
///     assert!(matches!(r, Err(BreakerError::Operation("down"))));
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// let r: Result<(), BreakerError<&str>> = breaker.call(|| async { Ok(()) }).await;
/// assert!(r.unwrap_err().is_rejected());
///
/// tokio::time::advance(Duration::from_secs(30)).await;
/// let permit = breaker.try_acquire().expect("first call after the timeout probes");
/// assert_eq!(breaker.state(), BreakerState::HalfOpen);
/// permit.success();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # }
/// ```
pub struct CircuitBreaker<C: Clock = TokioClock> {
    inner: Arc<Inner<C>>,
}

impl<C: Clock> Clone for CircuitBreaker<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Clock> fmt::Debug for CircuitBreaker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A Closed breaker on tokio's clock.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self::builder(config).build()
    }

    /// A builder for a name (used in logs), a clock or a transition callback.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use person_retry::{CircuitBreaker, CircuitBreakerConfig, TokioClock};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let breaker = CircuitBreaker::builder(CircuitBreakerConfig::default())
    ///     .name("person-store")
    ///     .clock(TokioClock)
    ///     .on_transition(move |t| log.lock().unwrap().push(t))
    ///     .build();
    /// # let _ = breaker;
    /// ```
    pub fn builder(config: CircuitBreakerConfig) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            config,
            clock: TokioClock,
            name: "circuit-breaker".to_owned(),
            on_transition: None,
        }
    }
}

impl<C: Clock> CircuitBreaker<C> {
    /// The current state. Open stays Open here until a call checks it after the
    /// timeout.
    pub fn state(&self) -> BreakerState {
        state_from_bits(state_of(self.inner.word.load(Ordering::Acquire)))
    }

    /// The configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.inner.config
    }

    /// A receiver of state changes. Its current value is the latest published state.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.inner.tx.subscribe()
    }

    /// Asks to make one call. On `Ok`, run the call and record its outcome on the
    /// [`Permit`]; on `Err`, do not run it.
    ///
    /// ```
    /// use person_retry::{CircuitBreaker, CircuitBreakerConfig};
    ///
    /// let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
    /// match breaker.try_acquire() {
    ///     Ok(permit) => {
    ///         let outcome: Result<(), ()> = Ok(()); // the call
    ///         match outcome {
    ///             Ok(()) => permit.success(),
    ///             Err(()) => permit.failure(),
    ///         }
    ///     }
    ///     Err(open) => println!("not calling: {open}"),
    /// }
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_, C>, BreakerOpen> {
        let w = self.inner.word.load(Ordering::Acquire);
        if state_of(w) == CLOSED {
            return Ok(Permit::new(&self.inner, epoch_of(w), false));
        }
        self.acquire_slow(w)
    }

    /// Open and HalfOpen (and races with transitions).
    fn acquire_slow(&self, mut w: u64) -> Result<Permit<'_, C>, BreakerOpen> {
        let inner = &*self.inner;
        loop {
            match state_of(w) {
                CLOSED => return Ok(Permit::new(inner, epoch_of(w), false)),
                OPEN => {
                    let opened_at = inner.opened_at.load(Ordering::Acquire);
                    let elapsed = Duration::from_nanos(inner.now_ns().saturating_sub(opened_at));
                    let timeout = inner.config.open_timeout;
                    if elapsed < timeout {
                        return Err(BreakerOpen::Open {
                            retry_in: timeout - elapsed,
                        });
                    }
                    let next = pack(HALF_OPEN, 1, 0, next_epoch(w));
                    match inner.cas(w, next) {
                        Ok(_) => {
                            inner.publish(OPEN, HALF_OPEN, epoch_of(next));
                            return Ok(Permit::new(inner, epoch_of(next), true));
                        }
                        Err(actual) => w = actual,
                    }
                }
                _ => {
                    let max_probes = inner.config.half_open_max_probes;
                    if a_of(w) >= max_probes {
                        return Err(BreakerOpen::ProbesBusy { max_probes });
                    }
                    let next = pack(HALF_OPEN, a_of(w) + 1, b_of(w), epoch_of(w));
                    match inner.cas(w, next) {
                        Ok(_) => return Ok(Permit::new(inner, epoch_of(w), true)),
                        Err(actual) => w = actual,
                    }
                }
            }
        }
    }

    /// Runs `f` if the breaker allows it and records the outcome: `Ok` is a success,
    /// any `Err` a failure. If the returned future is dropped mid-call, nothing is
    /// recorded. For errors that say nothing about the downstream's health (bad input),
    /// use [`try_acquire`](Self::try_acquire) and drop the permit instead.
    ///
    /// ```
    /// use person_retry::{CircuitBreaker, CircuitBreakerConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
    /// let value = breaker.call(|| async { Ok::<_, std::io::Error>(7) }).await.unwrap();
    /// assert_eq!(value, 7);
    /// # }
    /// ```
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(BreakerError::Rejected)?;
        match f().await {
            Ok(value) => {
                permit.success();
                Ok(value)
            }
            Err(error) => {
                permit.failure();
                Err(BreakerError::Operation(error))
            }
        }
    }
}

/// Builds a [`CircuitBreaker`]; from [`CircuitBreaker::builder`].
///
/// ```
/// use person_retry::{CircuitBreaker, CircuitBreakerConfig, BreakerState};
/// let breaker = CircuitBreaker::builder(CircuitBreakerConfig::default()).name("dlq").build();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// ```
#[must_use]
pub struct CircuitBreakerBuilder<C = TokioClock> {
    config: CircuitBreakerConfig,
    clock: C,
    name: String,
    on_transition: Option<Callback>,
}

impl<C> fmt::Debug for CircuitBreakerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> CircuitBreakerBuilder<C> {
    /// The name used in log lines.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The clock used for the open timeout.
    pub fn clock<C2: Clock>(self, clock: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder {
            config: self.config,
            clock,
            name: self.name,
            on_transition: self.on_transition,
        }
    }

    /// Called after every state change, by the thread that made it.
    pub fn on_transition(mut self, callback: impl Fn(Transition) + Send + Sync + 'static) -> Self {
        self.on_transition = Some(Arc::new(callback));
        self
    }

    /// The breaker, Closed.
    pub fn build(self) -> CircuitBreaker<C> {
        let (tx, _) = watch::channel(BreakerState::Closed);
        let window = self.config.failure_ratio.map(|rule| {
            Mutex::new(Window {
                epoch: 0,
                outcomes: VecDeque::with_capacity(rule.window as usize),
                failures: 0,
            })
        });
        CircuitBreaker {
            inner: Arc::new(Inner {
                word: AtomicU64::new(pack(CLOSED, 0, 0, 0)),
                opened_at: AtomicU64::new(0),
                base: self.clock.now(),
                clock: self.clock,
                config: self.config,
                window,
                tx,
                published: AtomicU32::new(0),
                on_transition: self.on_transition,
                name: self.name,
            }),
        }
    }
}

/// Permission to make one call, from [`CircuitBreaker::try_acquire`].
///
/// Record the outcome with [`success`](Self::success) or [`failure`](Self::failure).
/// Dropping it without recording counts as **neither** (the call was cancelled or its
/// error says nothing about the downstream): it only frees a HalfOpen probe slot.
///
/// ```
/// use person_retry::{CircuitBreaker, CircuitBreakerConfig};
///
/// let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
/// let permit = breaker.try_acquire().unwrap();
/// assert!(!permit.is_probe());
/// permit.failure();
/// ```
#[must_use = "record the outcome with success() or failure()"]
pub struct Permit<'a, C: Clock = TokioClock> {
    inner: &'a Inner<C>,
    epoch: u32,
    probe: bool,
}

impl<C: Clock> fmt::Debug for Permit<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("epoch", &self.epoch)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl<'a, C: Clock> Permit<'a, C> {
    #[inline]
    fn new(inner: &'a Inner<C>, epoch: u32, probe: bool) -> Self {
        Self {
            inner,
            epoch,
            probe,
        }
    }

    /// Whether this call is a HalfOpen probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded.
    #[inline]
    pub fn success(self) {
        // Recorded here, so the permit's `Drop` (which frees a probe slot) must not run.
        let this = ManuallyDrop::new(self);
        if !this.inner.success_is_noop(this.epoch, this.probe) {
            this.inner.on_success(this.epoch, this.probe);
        }
    }

    /// The call failed in a way that reflects the downstream's health.
    pub fn failure(self) {
        let this = ManuallyDrop::new(self);
        this.inner.on_failure(this.epoch, this.probe);
    }
}

impl<C: Clock> Drop for Permit<'_, C> {
    fn drop(&mut self) {
        if self.probe {
            self.inner.release_probe(self.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_and_errors_say_what_they_are() {
        let open = BreakerOpen::Open {
            retry_in: Duration::from_millis(1500),
        };
        let busy = BreakerOpen::ProbesBusy { max_probes: 2 };
        assert_eq!(
            (open.kind(), open.retry_in(), open.is_transient()),
            (
                BreakerOpenKind::Open,
                Some(Duration::from_millis(1500)),
                true
            )
        );
        assert_eq!(
            (busy.kind(), busy.retry_in(), busy.is_transient()),
            (BreakerOpenKind::ProbesBusy, None, true)
        );
        assert_eq!(
            busy.to_string(),
            "circuit breaker is half-open and all 2 probe slot(s) are in use"
        );
        let rejected: BreakerError<&str> = BreakerError::Rejected(busy);
        let failed: BreakerError<&str> = BreakerError::Operation("boom");
        assert_eq!(
            (rejected.kind(), rejected.is_rejected()),
            (BreakerErrorKind::Rejected, true)
        );
        assert_eq!(
            (failed.kind(), failed.is_rejected()),
            (BreakerErrorKind::Operation, false)
        );
        assert_eq!(rejected.into_operation(), None);
        assert_eq!(failed.into_operation(), Some("boom"));
    }

    #[test]
    fn only_a_newer_epoch_is_published_and_half_the_epoch_space_ahead_is_behind() {
        let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
        let mut rx = breaker.subscribe();
        let inner = &breaker.inner;
        inner.publish(CLOSED, OPEN, 2);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), BreakerState::Open);
        // The same epoch again, or an older one (a slower thread's transition): the
        // latest state stays.
        inner.publish(CLOSED, OPEN, 2);
        inner.publish(CLOSED, HALF_OPEN, 1);
        assert!(!rx.has_changed().unwrap());
        inner.publish(OPEN, HALF_OPEN, 2 + (1 << 29));
        assert!(!rx.has_changed().unwrap(), "2^29 ahead counts as behind");
        inner.publish(OPEN, HALF_OPEN, 1 + (1 << 29));
        assert_eq!(*rx.borrow_and_update(), BreakerState::HalfOpen);
    }

    #[test]
    fn opening_is_logged_as_a_warning_other_transitions_as_information() {
        use tracing::span::{Attributes, Id, Record};
        use tracing::{Event, Level, Metadata};

        #[derive(Default)]
        struct Levels(Mutex<Vec<Level>>);
        impl tracing::Subscriber for Levels {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                self.0.lock().unwrap().push(*event.metadata().level());
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }

        let levels = Arc::new(Levels::default());
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .open_timeout(Duration::ZERO)
            .build()
            .unwrap();
        tracing::subscriber::with_default(Arc::clone(&levels), || {
            // Other tests hit these call sites under other subscribers at the same
            // time; make sure each one's cached interest includes this subscriber.
            tracing::callsite::rebuild_interest_cache();
            let breaker = CircuitBreaker::new(config);
            breaker.try_acquire().unwrap().failure();
            breaker.try_acquire().unwrap().success();
        });
        assert_eq!(
            *levels.0.lock().unwrap(),
            [Level::WARN, Level::INFO, Level::INFO],
            "opened; half-opened; closed"
        );
    }

    #[test]
    fn word_packing_round_trips() {
        let w = pack(HALF_OPEN, 3, 65_535, EPOCH_MASK);
        assert_eq!(
            (state_of(w), a_of(w), b_of(w), epoch_of(w)),
            (HALF_OPEN, 3, 65_535, EPOCH_MASK)
        );
        assert_eq!(next_epoch(w), 0);
    }

    #[test]
    fn config_validation() {
        let err = CircuitBreakerConfig::builder()
            .failure_threshold(70_000)
            .build()
            .unwrap_err();
        assert_eq!(
            (err.kind(), err.field()),
            (PolicyErrorKind::TooLarge, "failure_threshold")
        );
        let err = CircuitBreakerConfig::builder()
            .failure_ratio(FailureRatio {
                ratio: 1.5,
                window: 10,
                min_calls: 5,
            })
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), PolicyErrorKind::RatioOutOfRange);
        let err = CircuitBreakerConfig::builder()
            .failure_ratio(FailureRatio {
                ratio: 0.5,
                window: 10,
                min_calls: 11,
            })
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "failure_ratio.min_calls");
        let c = CircuitBreakerConfig::default();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"failure_threshold":5,"open_timeout_ms":30000,"half_open_max_probes":1,"success_threshold":1}"#
        );
        assert_eq!(
            serde_json::from_str::<CircuitBreakerConfig>(&json).unwrap(),
            c
        );
        assert!(
            serde_json::from_str::<CircuitBreakerConfig>(r#"{"half_open_max_probes":0}"#).is_err()
        );
    }

    #[test]
    fn success_resets_consecutive_failures() {
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(3)
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new(config);
        for _ in 0..10 {
            breaker.try_acquire().unwrap().failure();
            breaker.try_acquire().unwrap().failure();
            breaker.try_acquire().unwrap().success();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().failure();
        breaker.try_acquire().unwrap().failure();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn failure_ratio_opens() {
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(100)
            .failure_ratio(FailureRatio {
                ratio: 0.5,
                window: 10,
                min_calls: 6,
            })
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new(config);
        // Alternate: never 2 failures in a row, but half the calls fail.
        for i in 0..5 {
            let p = breaker.try_acquire().unwrap();
            if i % 2 == 0 { p.success() } else { p.failure() }
        }
        assert_eq!(breaker.state(), BreakerState::Closed); // only 5 calls < min_calls
        breaker.try_acquire().unwrap().success(); // 6 calls, 2 failures
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().failure(); // 7 calls, 3 failures: < 0.5
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().failure(); // 8 calls, 4 failures: 0.5
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn the_failure_ratio_window_slides_over_the_latest_calls() {
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(100)
            .failure_ratio(FailureRatio {
                ratio: 0.5,
                window: 4,
                min_calls: 4,
            })
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new(config);
        // Two failures among too few calls; then two successes push each out of the
        // window, so two more failures are needed.
        for (i, fails) in [true, true, false, false, false, false, true]
            .into_iter()
            .enumerate()
        {
            let p = breaker.try_acquire().unwrap();
            if fails {
                p.failure()
            } else {
                p.success()
            }
            assert_eq!(breaker.state(), BreakerState::Closed, "call {}", i + 1);
        }
        breaker.try_acquire().unwrap().failure();
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "2 of the last 4 failed"
        );
    }

    #[test]
    fn a_stale_probe_dropped_late_frees_no_slot_of_a_later_half_open() {
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .half_open_max_probes(2)
            .open_timeout(Duration::ZERO)
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new(config);
        breaker.try_acquire().unwrap().failure();
        let stale = breaker.try_acquire().unwrap();
        breaker.try_acquire().unwrap().failure(); // a probe fails: Open again
        let first = breaker.try_acquire().unwrap(); // HalfOpen again: 1 of 2 slots
        assert!(stale.is_probe() && first.is_probe());
        drop(stale);
        let second = breaker.try_acquire().unwrap();
        assert_eq!(
            breaker.try_acquire().unwrap_err(),
            BreakerOpen::ProbesBusy { max_probes: 2 }
        );
        drop((first, second));
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn the_slow_path_treats_a_breaker_closed_meanwhile_as_closed() {
        let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
        // As if the breaker closed between `try_acquire`'s load and the slow path's.
        let word = breaker.inner.word.load(Ordering::Acquire);
        let permit = breaker.acquire_slow(word).unwrap();
        assert!(!permit.is_probe());
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn debug_output_names_the_breaker_and_its_state() {
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(9)
            .build()
            .unwrap();
        let builder = CircuitBreaker::builder(config.clone()).name("person-store");
        assert!(format!("{builder:?}").contains("person-store"));
        let breaker = builder.build();
        assert_eq!(breaker.config(), &config);
        let text = format!("{breaker:?}");
        assert!(
            text.contains("person-store") && text.contains("Closed") && text.contains("9"),
            "{text}"
        );
        let permit = breaker.try_acquire().unwrap();
        assert!(!permit.is_probe());
        assert!(format!("{permit:?}").contains("probe: false"));
        permit.success();
    }

    #[test]
    fn stale_permits_are_ignored() {
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .open_timeout(Duration::ZERO)
            .build()
            .unwrap();
        let breaker = CircuitBreaker::new(config);
        let old = breaker.try_acquire().unwrap();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.is_probe());
        old.success(); // from the Closed epoch: must not close the breaker
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        drop(probe); // neither: frees the slot
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
