//! Benchmarks: the breaker's Closed fast path and the retry wrapper's overhead when the
//! first attempt succeeds. Futures are polled by hand with a no-op waker (they complete
//! on the first poll), so no runtime cost is measured.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use person_retry::{CircuitBreaker, CircuitBreakerConfig, RetryHandler, RetryPolicy};

/// Polls a future that must complete at once. Pinned where it is built, so the
/// measurement does not include moving the future's state machine around.
macro_rules! poll_once {
    ($future:expr $(,)?) => {{
        let future = pin!($future);
        match future.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("the benchmarked future did not complete on its first poll"),
        }
    }};
}

fn breaker(c: &mut Criterion) {
    // A reference point for this machine: two atomic loads.
    let word = std::sync::atomic::AtomicU64::new(0);
    c.bench_function("baseline/two_atomic_loads", |b| {
        b.iter(|| {
            let w = black_box(&word);
            w.load(std::sync::atomic::Ordering::Acquire)
                + w.load(std::sync::atomic::Ordering::Acquire)
        })
    });
    let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
    c.bench_function("breaker/closed_try_acquire_success", |b| {
        b.iter(|| match black_box(&breaker).try_acquire() {
            Ok(permit) => permit.success(),
            Err(open) => panic!("{open}"),
        })
    });
    c.bench_function("breaker/closed_try_acquire_drop", |b| {
        b.iter(|| drop(black_box(&breaker).try_acquire()))
    });
    c.bench_function("breaker/state", |b| b.iter(|| black_box(&breaker).state()));
    c.bench_function("breaker/closed_call", |b| {
        b.iter(|| poll_once!(black_box(&breaker).call(|| async { Ok::<_, ()>(black_box(1u32)) })))
    });
}

fn retry(c: &mut Criterion) {
    let handler = RetryHandler::new(RetryPolicy::default());
    c.bench_function("retry/first_attempt_success", |b| {
        b.iter(|| {
            poll_once!(
                black_box(&handler)
                    .execute_with_retry(|| async { Ok::<_, &str>(black_box(1u32)) }, "bench"),
            )
        })
    });
    // The seed's call shape: includes one `Box` allocation per attempt.
    c.bench_function("retry/first_attempt_success_boxed", |b| {
        b.iter(|| {
            poll_once!(black_box(&handler).execute_with_retry(
                || Box::pin(async { Ok::<_, &str>(black_box(1u32)) }),
                "bench",
            ))
        })
    });
    let budgeted = RetryHandler::new(
        RetryPolicy::builder()
            .budget(std::time::Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    c.bench_function("retry/first_attempt_success_with_budget", |b| {
        b.iter(|| {
            poll_once!(
                black_box(&budgeted)
                    .execute_with_retry(|| async { Ok::<_, &str>(black_box(1u32)) }, "bench"),
            )
        })
    });
    let policy = RetryPolicy::default();
    c.bench_function("policy/delay_full_jitter", |b| {
        b.iter(|| black_box(&policy).delay(black_box(4)))
    });
}

criterion_group!(benches, breaker, retry);
criterion_main!(benches);
