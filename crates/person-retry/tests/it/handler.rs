//! The retry handler on paused time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use person_retry::{
    CancellationToken, Classify, ErrorClass, Jitter, RetryError, RetryErrorKind, RetryHandler,
    RetryPolicy,
};
use tokio::time::Instant;

use crate::support::VirtualClock;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum TestError {
    #[error("transient #{0}")]
    Transient(u32),
    #[error("permanent")]
    Permanent,
    #[error("slow down")]
    RateLimited(Duration),
}

impl Classify for TestError {
    fn class(&self) -> ErrorClass {
        match self {
            TestError::Transient(_) => ErrorClass::Transient,
            TestError::Permanent => ErrorClass::Permanent,
            TestError::RateLimited(d) => ErrorClass::RetryAfter(*d),
        }
    }
}

fn fixed(attempts: u32, initial_ms: u64) -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(attempts)
        .initial_backoff(Duration::from_millis(initial_ms))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

async fn process_event() -> Result<u32, TestError> {
    Ok(7)
}

#[tokio::test(start_paused = true)]
async fn seed_call_shape_compiles_and_runs() {
    let retry_handler = RetryHandler::new(RetryPolicy::default());
    let value = retry_handler
        .execute_with_retry(
            || Box::pin(async { process_event().await }),
            "process_event",
        )
        .await;
    assert_eq!(value, Ok(7));

    // With the seed's explicit boxed, `Send` trait-object future type.
    type BoxFut = Pin<Box<dyn Future<Output = Result<u32, TestError>> + Send>>;
    let op = || -> BoxFut { Box::pin(async { process_event().await }) };
    let handler = Arc::new(retry_handler);
    // The whole call is `Send`: it can be spawned.
    let task = tokio::spawn({
        let handler = Arc::clone(&handler);
        async move { handler.execute_with_retry(op, "process_event").await }
    });
    assert_eq!(task.await.unwrap(), Ok(7));
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_on_schedule_and_the_last_error_returned() {
    let calls = AtomicU32::new(0);
    let handler = RetryHandler::builder(fixed(4, 100))
        .classify_errors()
        .build();
    let start = Instant::now();
    let result: Result<(), TestError> = handler
        .execute_with_retry(
            || async {
                Err(TestError::Transient(
                    calls.fetch_add(1, Ordering::SeqCst) + 1,
                ))
            },
            "always_fails",
        )
        .await;
    assert_eq!(
        result,
        Err(TestError::Transient(4)),
        "the last error itself"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // 100 + 200 + 400 ms of backoff, no sleep after the last attempt.
    assert_eq!(start.elapsed(), Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn success_after_failures_stops_retrying() {
    let calls = AtomicU32::new(0);
    let handler = RetryHandler::new(fixed(5, 10));
    let result = handler
        .execute_with_retry(
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(TestError::Transient(0)),
                    n => Ok(n),
                }
            },
            "flaky",
        )
        .await;
    assert_eq!(result, Ok(2));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_never_retried() {
    let calls = AtomicU32::new(0);
    let handler = RetryHandler::builder(fixed(10, 100))
        .classify_errors()
        .build();
    let result: Result<(), _> = handler
        .execute_cancellable(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::Permanent)
            },
            "permanent",
        )
        .await;
    assert_eq!(result, Err(RetryError::Permanent(TestError::Permanent)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The same through a closure classifier, never matching strings.
    let calls = AtomicU32::new(0);
    let handler = RetryHandler::builder(fixed(10, 100))
        .classifier(|e: &u16| {
            if *e >= 500 {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            }
        })
        .build();
    let result: Result<(), u16> = handler
        .execute_with_retry(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(404)
            },
            "http",
        )
        .await;
    assert_eq!(result, Err(404));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn exhaustion_is_reported_with_its_kind() {
    let handler = RetryHandler::builder(fixed(3, 1)).classify_errors().build();
    let err = handler
        .execute_cancellable(|| async { Err::<(), _>(TestError::Transient(1)) }, "x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RetryErrorKind::Exhausted);
    assert!(err.is_transient());
    assert_eq!(err.into_inner(), Some(TestError::Transient(1)));
}

#[tokio::test(start_paused = true)]
async fn cancellation_ends_retrying_within_one_backoff_step() {
    let token = CancellationToken::new();
    let calls = Arc::new(AtomicU32::new(0));
    // Long delays: 10 s, 20 s, ... Cancellation must not wait for them.
    let handler = RetryHandler::builder(fixed(10, 10_000))
        .cancellation(token.clone())
        .build();
    let canceller = tokio::spawn({
        let token = token.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            token.cancel();
        }
    });
    let start = Instant::now();
    let counted = Arc::clone(&calls);
    let result: Result<(), _> = handler
        .execute_cancellable(
            move || {
                let calls = Arc::clone(&counted);
                async move {
                    Err(TestError::Transient(
                        calls.fetch_add(1, Ordering::SeqCst) + 1,
                    ))
                }
            },
            "cancel_me",
        )
        .await;
    canceller.await.unwrap();
    assert_eq!(
        result,
        Err(RetryError::Cancelled(Some(TestError::Transient(1))))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(1), "stopped mid-sleep");

    // execute_with_retry returns the last error itself on cancellation.
    let calls = AtomicU32::new(0);
    let result: Result<(), _> = handler
        .execute_with_retry(
            || async {
                Err(TestError::Transient(
                    calls.fetch_add(1, Ordering::SeqCst) + 1,
                ))
            },
            "already_cancelled",
        )
        .await;
    assert_eq!(
        result,
        Err(TestError::Transient(1)),
        "first attempt always runs"
    );

    // execute_cancellable does not start when already cancelled.
    let calls = AtomicU32::new(0);
    let result: Result<(), RetryError<TestError>> = handler
        .execute_cancellable(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            "never",
        )
        .await;
    assert_eq!(result, Err(RetryError::Cancelled(None)));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_stops_retrying() {
    let calls = Arc::new(AtomicU32::new(0));
    let handler = RetryHandler::new(fixed(100, 1_000));
    let counted = Arc::clone(&calls);
    let outcome = tokio::time::timeout(
        Duration::from_millis(3_500),
        handler.execute_with_retry(
            move || {
                let calls = Arc::clone(&counted);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>("down")
                }
            },
            "dropped",
        ),
    )
    .await;
    assert!(outcome.is_err(), "timed out");
    // Attempts at 0, 1 s, 3 s; the next would be at 7 s.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let calls = AtomicU32::new(0);
    let handler = RetryHandler::builder(fixed(5, 100))
        .classify_errors()
        .build();
    let start = Instant::now();
    let result = handler
        .execute_with_retry(
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(TestError::RateLimited(Duration::from_secs(7))),
                    _ => Ok(()),
                }
            },
            "rate_limited",
        )
        .await;
    assert_eq!(result, Ok(()));
    // The handler's delay replaced the policy's 100 ms, and is not capped by
    // max_backoff either (checked with the virtual clock below).
    assert_eq!(start.elapsed(), Duration::from_secs(7));

    let clock = VirtualClock::new();
    let policy = fixed(3, 100)
        .to_builder()
        .max_backoff(Duration::from_secs(1))
        .build()
        .unwrap();
    let handler = RetryHandler::builder(policy)
        .classify_errors()
        .clock(clock.clone())
        .build();
    let _ = handler
        .execute_with_retry(
            || async { Err::<(), _>(TestError::RateLimited(Duration::from_secs(90))) },
            "rate_limited",
        )
        .await;
    assert_eq!(clock.sleeps(), [Duration::from_secs(90); 2]);
}

#[tokio::test(start_paused = true)]
async fn budget_exhaustion_stops_retrying() {
    let calls = AtomicU32::new(0);
    let policy = RetryPolicy::builder()
        .max_attempts(10)
        .initial_backoff(Duration::from_millis(400))
        .multiplier(1.0)
        .jitter(Jitter::None)
        .budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let handler = RetryHandler::new(policy.clone());
    let start = Instant::now();
    let result: Result<(), _> = handler
        .execute_cancellable(
            || async {
                Err(TestError::Transient(
                    calls.fetch_add(1, Ordering::SeqCst) + 1,
                ))
            },
            "budgeted",
        )
        .await;
    // Attempts at 0, 400, 800 ms; a fourth would start at 1200 ms > 1 s.
    assert_eq!(
        result,
        Err(RetryError::BudgetExhausted(TestError::Transient(3)))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(800));

    // A RetryAfter past the budget stops too, without sleeping.
    let handler = RetryHandler::builder(policy).classify_errors().build();
    let start = Instant::now();
    let err = handler
        .execute_cancellable(
            || async { Err::<(), _>(TestError::RateLimited(Duration::from_secs(5))) },
            "budgeted",
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RetryErrorKind::BudgetExhausted);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn an_injected_clock_sees_every_delay() {
    let clock = VirtualClock::new();
    let handler = RetryHandler::builder(fixed(5, 100))
        .clock(clock.clone())
        .build();
    let _ = handler
        .execute_with_retry(|| async { Err::<(), _>("down") }, "virtual")
        .await;
    let ms: Vec<u128> = clock.sleeps().iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [100, 200, 400, 800]);
}
