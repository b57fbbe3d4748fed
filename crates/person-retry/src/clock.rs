//! The injectable clock: reads the time and sleeps.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A source of time and of sleeps, injected into [`RetryHandler`](crate::RetryHandler)
/// and [`CircuitBreaker`](crate::CircuitBreaker) so tests control time.
///
/// [`TokioClock`] (the default) follows tokio's clock, so tests on
/// `#[tokio::test(start_paused = true)]` never really sleep: tokio jumps the paused
/// clock forward whenever every task waits on a timer. Implement it yourself to record
/// or skip sleeps.
///
/// ```
/// use std::future::{Ready, ready};
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use person_retry::Clock;
/// use tokio::time::Instant;
///
/// /// Never sleeps; remembers what it was asked to sleep.
/// #[derive(Clone, Default)]
/// struct Recording(Arc<Mutex<Vec<Duration>>>);
///
/// impl Clock for Recording {
///     type Sleep = Ready<()>;
///     fn now(&self) -> Instant {
///         Instant::now()
///     }
///     fn sleep(&self, duration: Duration) -> Ready<()> {
///         self.0.lock().unwrap().push(duration);
///         ready(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let clock = Recording::default();
/// clock.sleep(Duration::from_secs(3)).await;
/// assert_eq!(*clock.0.lock().unwrap(), vec![Duration::from_secs(3)]);
/// # }
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The future returned by [`Clock::sleep`].
    type Sleep: Future<Output = ()> + Send;

    /// The current instant.
    fn now(&self) -> Instant;

    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> Self::Sleep;
}

/// tokio's clock: [`tokio::time::Instant::now`] and [`tokio::time::sleep`]. Honours
/// paused time in tests. Needs a tokio runtime with the time driver to sleep.
///
/// ```
/// use std::time::Duration;
/// use person_retry::{Clock, TokioClock};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let start = TokioClock.now();
/// TokioClock.sleep(Duration::from_secs(60)).await; // instant on paused time
/// assert!(TokioClock.now() - start >= Duration::from_secs(60));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Sleep = tokio::time::Sleep;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }
}
