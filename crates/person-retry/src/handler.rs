//! [`RetryHandler`]: runs an async operation under a [`RetryPolicy`].

use std::fmt;
use std::future::Future;

use crate::cancel::CancellationToken;
use crate::classify::{AlwaysTransient, ByClassify, Classifier, ErrorClass};
use crate::clock::{Clock, TokioClock};
use crate::policy::{Backoff, RetryPolicy, millis};

/// Why [`RetryHandler::execute_cancellable`] gave up.
///
/// ```
/// use person_retry::{RetryError, RetryErrorKind};
/// assert_eq!(RetryError::<()>::Cancelled(None).kind(), RetryErrorKind::Cancelled);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryErrorKind {
    /// The classifier said [`ErrorClass::Permanent`]: not retried.
    Permanent,
    /// `max_attempts` attempts failed.
    Exhausted,
    /// The next delay would have ended past the policy's time budget.
    BudgetExhausted,
    /// The cancellation token fired.
    Cancelled,
}

/// The outcome of a failed [`RetryHandler::execute_cancellable`]: why it stopped, with
/// the operation's last error itself (not a description of it).
///
/// ```
/// use person_retry::{RetryError, RetryErrorKind};
///
/// let err: RetryError<&str> = RetryError::Exhausted("timeout");
/// assert_eq!(err.kind(), RetryErrorKind::Exhausted);
/// assert!(err.is_transient()); // worth redelivering later
/// assert_eq!(err.to_string(), "gave up after the last attempt: timeout");
/// assert_eq!(err.into_inner(), Some("timeout"));
///
/// let cancelled: RetryError<&str> = RetryError::Cancelled(None);
/// assert_eq!(cancelled.into_inner(), None); // cancelled before the first attempt
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// The operation failed with a permanent error; it ran once.
    #[error("permanent error, not retried: {0}")]
    Permanent(E),
    /// Every attempt failed; this is the last error.
    #[error("gave up after the last attempt: {0}")]
    Exhausted(E),
    /// Retrying would have exceeded the time budget; this is the last error.
    #[error("retry time budget exhausted: {0}")]
    BudgetExhausted(E),
    /// Cancelled; carries the last error, or `None` if no attempt ran.
    #[error("retrying was cancelled")]
    Cancelled(Option<E>),
}

impl<E> RetryError<E> {
    /// Why retrying stopped.
    pub fn kind(&self) -> RetryErrorKind {
        match self {
            RetryError::Permanent(_) => RetryErrorKind::Permanent,
            RetryError::Exhausted(_) => RetryErrorKind::Exhausted,
            RetryError::BudgetExhausted(_) => RetryErrorKind::BudgetExhausted,
            RetryError::Cancelled(_) => RetryErrorKind::Cancelled,
        }
    }

    /// Whether the failure may go away later (everything but
    /// [`RetryError::Permanent`]): a consumer would rather NAK than dead-letter it,
    /// unless it is out of deliveries too.
    pub fn is_transient(&self) -> bool {
        !matches!(self, RetryError::Permanent(_))
    }

    /// The operation's last error, if an attempt ran.
    pub fn error(&self) -> Option<&E> {
        match self {
            RetryError::Permanent(e)
            | RetryError::Exhausted(e)
            | RetryError::BudgetExhausted(e) => Some(e),
            RetryError::Cancelled(e) => e.as_ref(),
        }
    }

    /// Takes the operation's last error out, if an attempt ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            RetryError::Permanent(e)
            | RetryError::Exhausted(e)
            | RetryError::BudgetExhausted(e) => Some(e),
            RetryError::Cancelled(e) => e,
        }
    }
}

/// Runs async operations under a [`RetryPolicy`].
///
/// The three concerns are kept apart, as in tower's retry `Policy` and backon:
/// - **which errors are retried**: the classifier `K` ([`AlwaysTransient`] by default,
///   as in the seed; [`ByClassify`] to use the error's
///   [`Classify`](crate::Classify) impl; or any `Fn(&E) -> ErrorClass`);
/// - **the delays**: a fresh [`Backoff`] per operation, from the policy;
/// - **the clock** `C` ([`TokioClock`] by default, so tests run on paused time).
///
/// A permanent error is returned at once. [`ErrorClass::RetryAfter`] replaces the
/// policy's delay for that retry (not capped by `max_backoff`, but a delay that would
/// end past the budget stops retrying). Each failed attempt is logged with `tracing`
/// (`warn` while retrying, `error` when giving up) with the context, attempt number,
/// delay and error.
///
/// Cancellation: dropping the returned future stops everything at once; a
/// [`CancellationToken`] (set with the builder) stops the loop during its current
/// backoff sleep, at most one step later. A running attempt is never interrupted by
/// the token.
///
/// ```
/// use person_retry::{RetryHandler, RetryPolicy};
///
/// # async fn process_event() -> Result<(), std::io::Error> { Ok(()) }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), std::io::Error> {
/// let retry_handler = RetryHandler::new(RetryPolicy::default());
///
/// // The seed's call shape keeps working.
/// retry_handler
///     .execute_with_retry(|| Box::pin(async { process_event().await }), "process_event")
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RetryHandler<K = AlwaysTransient, C = TokioClock> {
    policy: RetryPolicy,
    classifier: K,
    clock: C,
    cancel: Option<CancellationToken>,
}

impl<K, C> fmt::Debug for RetryHandler<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryHandler")
            .field("policy", &self.policy)
            .field("cancel", &self.cancel)
            .finish_non_exhaustive()
    }
}

impl RetryHandler {
    /// A handler that retries every error (the seed's behaviour) on tokio's clock,
    /// without a cancellation token. See [`builder`](Self::builder) for the rest.
    pub fn new(policy: RetryPolicy) -> Self {
        Self::builder(policy).build()
    }

    /// A builder for a handler with a classifier, a clock or a cancellation token.
    ///
    /// ```
    /// use person_retry::{CancellationToken, ErrorClass, RetryHandler, RetryPolicy};
    ///
    /// let token = CancellationToken::new();
    /// let handler = RetryHandler::builder(RetryPolicy::default())
    ///     .classifier(|status: &u16| {
    ///         if *status >= 500 { ErrorClass::Transient } else { ErrorClass::Permanent }
    ///     })
    ///     .cancellation(token.clone())
    ///     .build();
    /// # let _ = handler;
    /// ```
    pub fn builder(policy: RetryPolicy) -> RetryHandlerBuilder {
        RetryHandlerBuilder {
            policy,
            classifier: AlwaysTransient,
            clock: TokioClock,
            cancel: None,
        }
    }
}

/// What the retry loop ended with, before it is turned into the public outcome.
struct Failure<E> {
    error: E,
    stop: RetryErrorKind,
}

impl<K, C: Clock> RetryHandler<K, C> {
    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The cancellation token, if any.
    pub fn cancellation_token(&self) -> Option<&CancellationToken> {
        self.cancel.as_ref()
    }

    /// Runs `op` until it succeeds, fails permanently, runs out of attempts or budget,
    /// or is cancelled; returns its value or its **last error itself**.
    ///
    /// `op` is called once per attempt and must build a fresh future each time
    /// (`|| Box::pin(async { ... })` works, as does `|| async { ... }`). The first
    /// attempt always runs; a cancellation token only cuts a backoff sleep short, and
    /// then the last error is returned. Use [`execute_cancellable`](Self::execute_cancellable)
    /// to learn why it stopped.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use person_retry::{RetryHandler, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let calls = AtomicU32::new(0);
    /// let handler = RetryHandler::new(RetryPolicy::default());
    /// let value = handler
    ///     .execute_with_retry(
    ///         || async {
    ///             match calls.fetch_add(1, Ordering::SeqCst) {
    ///                 0 | 1 => Err("not yet"),
    ///                 _ => Ok(42),
    ///             }
    ///         },
    ///         "flaky",
    ///     )
    ///     .await;
    /// assert_eq!(value, Ok(42));
    /// assert_eq!(calls.load(Ordering::SeqCst), 3);
    /// # }
    /// ```
    pub async fn execute_with_retry<F, Fut, T, E>(&self, mut op: F, context: &str) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
        K: Classifier<E>,
    {
        self.run(&mut op, context).await.map_err(|f| f.error)
    }

    /// Like [`execute_with_retry`](Self::execute_with_retry), but says why it stopped:
    /// a [`RetryError`] carrying the last error. If the token is already cancelled,
    /// no attempt runs and the result is `RetryError::Cancelled(None)`.
    ///
    /// ```
    /// use person_retry::{ByClassify, RetryError, RetryHandler, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let handler = RetryHandler::builder(RetryPolicy::default())
    ///     .classifier(ByClassify)
    ///     .build();
    /// let result: Result<(), _> = handler
    ///     .execute_cancellable(
    ///         || async { Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)) },
    ///         "open",
    ///     )
    ///     .await;
    /// assert!(matches!(result, Err(RetryError::Permanent(_))));
    /// # }
    /// ```
    pub async fn execute_cancellable<F, Fut, T, E>(
        &self,
        mut op: F,
        context: &str,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
        K: Classifier<E>,
    {
        if self
            .cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            tracing::debug!(context, "cancelled before the first attempt");
            return Err(RetryError::Cancelled(None));
        }
        self.run(&mut op, context).await.map_err(|f| match f.stop {
            RetryErrorKind::Permanent => RetryError::Permanent(f.error),
            RetryErrorKind::Exhausted => RetryError::Exhausted(f.error),
            RetryErrorKind::BudgetExhausted => RetryError::BudgetExhausted(f.error),
            RetryErrorKind::Cancelled => RetryError::Cancelled(Some(f.error)),
        })
    }

    async fn run<F, Fut, T, E>(&self, op: &mut F, context: &str) -> Result<T, Failure<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
        K: Classifier<E>,
    {
        // Only read the clock when a budget needs it: keeps the success path cheap.
        let started = self.policy.budget().map(|_| self.clock.now());
        let max_attempts = self.policy.max_attempts();
        let mut backoff: Option<Backoff> = None;
        let mut attempt: u32 = 1;
        loop {
            let error = match op().await {
                Ok(value) => {
                    if attempt > 1 {
                        tracing::info!(context, attempt, "succeeded after retrying");
                    }
                    return Ok(value);
                }
                Err(error) => error,
            };
            let class = self.classifier.classify(&error);
            if class == ErrorClass::Permanent {
                tracing::error!(context, attempt, %error, "permanent error; not retrying");
                return Err(Failure {
                    error,
                    stop: RetryErrorKind::Permanent,
                });
            }
            let Some(policy_delay) = backoff.get_or_insert_with(|| self.policy.backoff()).next()
            else {
                tracing::error!(context, attempt, max_attempts, %error, "giving up: no attempts left");
                return Err(Failure {
                    error,
                    stop: RetryErrorKind::Exhausted,
                });
            };
            let delay = class.retry_after().unwrap_or(policy_delay);
            if let (Some(budget), Some(started)) = (self.policy.budget(), started) {
                let elapsed = self.clock.now().saturating_duration_since(started);
                if elapsed.saturating_add(delay) > budget {
                    tracing::error!(
                        context,
                        attempt,
                        delay_ms = millis(delay),
                        elapsed_ms = millis(elapsed),
                        budget_ms = millis(budget),
                        %error,
                        "giving up: the next retry would exceed the time budget"
                    );
                    return Err(Failure {
                        error,
                        stop: RetryErrorKind::BudgetExhausted,
                    });
                }
            }
            tracing::warn!(
                context,
                attempt,
                max_attempts,
                delay_ms = millis(delay),
                ?class,
                %error,
                "attempt failed; retrying"
            );
            match &self.cancel {
                Some(token) => {
                    tokio::select! {
                        biased;
                        () = token.cancelled() => {
                            tracing::warn!(context, attempt, %error, "retrying cancelled");
                            return Err(Failure { error, stop: RetryErrorKind::Cancelled });
                        }
                        () = self.clock.sleep(delay) => {}
                    }
                }
                None => self.clock.sleep(delay).await,
            }
            attempt += 1;
        }
    }
}

/// Builds a [`RetryHandler`]; from [`RetryHandler::builder`].
///
/// ```
/// use person_retry::{ByClassify, RetryHandler, RetryPolicy, TokioClock};
///
/// let handler = RetryHandler::builder(RetryPolicy::default())
///     .classifier(ByClassify)
///     .clock(TokioClock)
///     .build();
/// assert_eq!(handler.policy().max_attempts(), 5);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryHandlerBuilder<K = AlwaysTransient, C = TokioClock> {
    policy: RetryPolicy,
    classifier: K,
    clock: C,
    cancel: Option<CancellationToken>,
}

impl<K, C> RetryHandlerBuilder<K, C> {
    /// Decides which errors are retried: [`AlwaysTransient`], [`ByClassify`], or a
    /// closure `Fn(&E) -> ErrorClass`.
    pub fn classifier<K2>(self, classifier: K2) -> RetryHandlerBuilder<K2, C> {
        RetryHandlerBuilder {
            policy: self.policy,
            classifier,
            clock: self.clock,
            cancel: self.cancel,
        }
    }

    /// Shorthand for `.classifier(ByClassify)`: use the error's `Classify` impl.
    pub fn classify_errors(self) -> RetryHandlerBuilder<ByClassify, C> {
        self.classifier(ByClassify)
    }

    /// The clock used for sleeps and the budget.
    pub fn clock<C2: Clock>(self, clock: C2) -> RetryHandlerBuilder<K, C2> {
        RetryHandlerBuilder {
            policy: self.policy,
            classifier: self.classifier,
            clock,
            cancel: self.cancel,
        }
    }

    /// A token that, once cancelled, stops the retry loop during its backoff sleep.
    pub fn cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// The handler.
    pub fn build(self) -> RetryHandler<K, C> {
        RetryHandler {
            policy: self.policy,
            classifier: self.classifier,
            clock: self.clock,
            cancel: self.cancel,
        }
    }
}
