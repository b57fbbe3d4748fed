//! The circuit breaker on paused time, and under real threads.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use person_retry::{
    BreakerError, BreakerOpen, BreakerOpenKind, BreakerState, CircuitBreaker, CircuitBreakerConfig,
    Transition,
};

fn config(failures: u32, probes: u32, successes: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .failure_threshold(failures)
        .open_timeout(Duration::from_secs(30))
        .half_open_max_probes(probes)
        .success_threshold(successes)
        .build()
        .unwrap()
}

async fn fail(breaker: &CircuitBreaker, ran: &AtomicU32) -> Result<(), BreakerError<&'static str>> {
    breaker
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Err("down")
        })
        .await
}

async fn succeed(
    breaker: &CircuitBreaker,
    ran: &AtomicU32,
) -> Result<(), BreakerError<&'static str>> {
    breaker
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn six_failures_open_four_rejected_then_probes_close_it() {
    let breaker = CircuitBreaker::new(config(6, 1, 2));
    let ran = AtomicU32::new(0);

    for i in 0..6 {
        assert_eq!(breaker.state(), BreakerState::Closed, "before failure {i}");
        assert_eq!(
            fail(&breaker, &ran).await,
            Err(BreakerError::Operation("down"))
        );
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(ran.load(Ordering::SeqCst), 6);

    for _ in 0..4 {
        let err = succeed(&breaker, &ran).await.unwrap_err();
        assert!(err.is_rejected());
    }
    assert_eq!(ran.load(Ordering::SeqCst), 6, "rejected calls never ran");

    tokio::time::advance(Duration::from_secs(29)).await;
    let err = breaker.try_acquire().unwrap_err();
    assert_eq!(
        err,
        BreakerOpen::Open {
            retry_in: Duration::from_secs(1)
        }
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(succeed(&breaker, &ran).await, Ok(()));
    assert_eq!(
        breaker.state(),
        BreakerState::HalfOpen,
        "one success of two"
    );
    assert_eq!(succeed(&breaker, &ran).await, Ok(()));
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(ran.load(Ordering::SeqCst), 8);
}

#[tokio::test(start_paused = true)]
async fn a_probe_failure_reopens_and_restarts_the_timeout() {
    let breaker = CircuitBreaker::new(config(1, 1, 1));
    let ran = AtomicU32::new(0);
    let _ = fail(&breaker, &ran).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let _ = fail(&breaker, &ran).await; // the probe fails
    assert_eq!(breaker.state(), BreakerState::Open);
    let err = breaker.try_acquire().unwrap_err();
    assert_eq!(err.retry_in(), Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(succeed(&breaker, &ran).await, Ok(()));
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_runs_only_max_probes_concurrently() {
    let breaker = CircuitBreaker::new(config(1, 3, 3));
    let ran = Arc::new(AtomicU32::new(0));
    let _ = fail(&breaker, &ran).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    ran.store(0, Ordering::SeqCst);

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let breaker = breaker.clone();
        let ran = Arc::clone(&ran);
        tasks.push(tokio::spawn(async move {
            breaker
                .call(|| async {
                    ran.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, &str>(())
                })
                .await
        }));
    }
    let mut rejected = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => {}
            Err(BreakerError::Rejected(open)) => {
                assert_eq!(open.kind(), BreakerOpenKind::ProbesBusy);
                rejected += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    assert_eq!(rejected, 17);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "three probe successes"
    );
}

#[test]
fn half_open_probe_limit_holds_under_real_threads() {
    let breaker = CircuitBreaker::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .open_timeout(Duration::ZERO)
            .half_open_max_probes(2)
            .success_threshold(1)
            .build()
            .unwrap(),
    );
    for _round in 0..50 {
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        let threads = 8;
        let start = Barrier::new(threads);
        let hold = Barrier::new(threads);
        let granted = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    start.wait();
                    let permit = breaker.try_acquire();
                    if permit.is_ok() {
                        granted.fetch_add(1, Ordering::SeqCst);
                    }
                    hold.wait(); // every permit is held while the others try
                    drop(permit);
                });
            }
        });
        assert_eq!(granted.load(Ordering::SeqCst), 2);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}

#[test]
fn closed_fast_path_under_contention_counts_consecutive_failures() {
    let breaker = CircuitBreaker::new(config(1_000, 1, 1));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    breaker.try_acquire().unwrap().success();
                }
            });
        }
    });
    assert_eq!(breaker.state(), BreakerState::Closed);
    for _ in 0..999 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn watch_channel_and_callback_observe_transitions() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let breaker = CircuitBreaker::builder(config(2, 1, 1))
        .name("test")
        .on_transition(move |t| log.lock().unwrap().push(t))
        .build();
    let mut rx = breaker.subscribe();
    assert_eq!(*rx.borrow_and_update(), BreakerState::Closed);
    let ran = AtomicU32::new(0);

    let _ = fail(&breaker, &ran).await;
    assert!(
        !rx.has_changed().unwrap(),
        "one failure of two changes nothing"
    );
    let _ = fail(&breaker, &ran).await;
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow_and_update(), BreakerState::Open);

    tokio::time::advance(Duration::from_secs(30)).await;
    let permit = breaker.try_acquire().unwrap();
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow_and_update(), BreakerState::HalfOpen);
    permit.success();
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow_and_update(), BreakerState::Closed);

    use BreakerState::*;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            Transition {
                from: Closed,
                to: Open
            },
            Transition {
                from: Open,
                to: HalfOpen
            },
            Transition {
                from: HalfOpen,
                to: Closed
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_frees_its_slot_and_records_nothing() {
    let breaker = CircuitBreaker::new(config(1, 1, 1));
    breaker.try_acquire().unwrap().failure();
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    assert_eq!(
        breaker.try_acquire().unwrap_err().kind(),
        BreakerOpenKind::ProbesBusy
    );
    drop(probe);
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), BreakerState::Closed);
}
