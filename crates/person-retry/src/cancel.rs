//! A tiny cancellation token (no `tokio-util` needed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A cloneable flag that, once cancelled, stays cancelled and wakes every waiter.
///
/// Give a clone to a [`RetryHandler`](crate::RetryHandler) (through its builder); calling
/// [`cancel`](Self::cancel) from anywhere stops the retry loop during its current
/// backoff sleep. All clones share one state.
///
/// ```
/// use person_retry::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let token = CancellationToken::new();
/// let waiter = token.clone();
/// let task = tokio::spawn(async move { waiter.cancelled().await });
/// token.cancel();
/// task.await.unwrap();
/// assert!(token.is_cancelled());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancellationToken {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl CancellationToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the token and wakes everything waiting in [`cancelled`](Self::cancelled).
    /// Idempotent.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`cancel`](Self::cancel) was called on this token or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Completes once the token is cancelled (at once if it already is).
    /// Cancel-safe: dropping it loses nothing.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking the flag so a `cancel` in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}
