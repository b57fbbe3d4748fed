//! The circuit breaker as a pure state machine: the same rules as
//! `person_retry::CircuitBreaker` (consecutive failures or a failure ratio open it, a
//! timeout half-opens it, probe successes close it), driven by the core's time input
//! so that it half-opens on its own timer, not on the next call.

use std::collections::VecDeque;
use std::time::Duration;

use person_retry::{BreakerState, CircuitBreakerConfig};

/// How a call ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The downstream worked.
    Success,
    /// The downstream failed (a transient error, a timeout, a panic).
    Failure,
    /// Says nothing about the downstream (bad data): frees a probe slot, counts for
    /// nothing.
    Neutral,
}

/// Permission to make one call, from [`Gate::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit {
    epoch: u64,
    probe: bool,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
        window: VecDeque<bool>,
        window_failures: u32,
    },
    Open {
        until: Duration,
    },
    HalfOpen {
        probes: u32,
        successes: u32,
    },
}

#[derive(Debug)]
pub(crate) struct Gate {
    config: CircuitBreakerConfig,
    state: State,
    /// Bumped on every transition; outcomes of calls permitted in an earlier state are
    /// ignored.
    epoch: u64,
}

impl Gate {
    pub(crate) fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            state: closed(),
            epoch: 0,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// When an Open breaker half-opens.
    pub(crate) fn opens_until(&self) -> Option<Duration> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Half-opens an Open breaker whose timeout passed. Returns the transition.
    pub(crate) fn tick(&mut self, now: Duration) -> Option<(BreakerState, BreakerState)> {
        match self.state {
            State::Open { until } if now >= until => Some(self.go(State::HalfOpen {
                probes: 0,
                successes: 0,
            })),
            _ => None,
        }
    }

    pub(crate) fn try_acquire(&mut self) -> Option<Permit> {
        match &mut self.state {
            State::Closed { .. } => Some(Permit {
                epoch: self.epoch,
                probe: false,
            }),
            State::Open { .. } => None,
            State::HalfOpen { probes, .. } => {
                if *probes >= self.config.half_open_max_probes() {
                    return None;
                }
                *probes += 1;
                Some(Permit {
                    epoch: self.epoch,
                    probe: true,
                })
            }
        }
    }

    /// Records a call's outcome. Returns the transition it caused.
    pub(crate) fn record(
        &mut self,
        now: Duration,
        permit: Permit,
        verdict: Verdict,
    ) -> Option<(BreakerState, BreakerState)> {
        if permit.epoch != self.epoch {
            return None;
        }
        let open = State::Open {
            until: now + self.config.open_timeout(),
        };
        match &mut self.state {
            State::Closed {
                failures,
                window,
                window_failures,
            } => {
                if verdict == Verdict::Neutral {
                    return None;
                }
                let failed = verdict == Verdict::Failure;
                *failures = if failed { *failures + 1 } else { 0 };
                let mut trips = *failures >= self.config.failure_threshold();
                if let Some(rule) = self.config.failure_ratio() {
                    if window.len() >= rule.window as usize && window.pop_front() == Some(true) {
                        *window_failures -= 1;
                    }
                    window.push_back(failed);
                    *window_failures += u32::from(failed);
                    let len = window.len() as u32;
                    trips |= failed
                        && len >= rule.min_calls
                        && f64::from(*window_failures) >= rule.ratio * f64::from(len);
                }
                trips.then(|| self.go(open))
            }
            State::Open { .. } => None,
            State::HalfOpen { probes, successes } => {
                if !permit.probe {
                    return None;
                }
                *probes = probes.saturating_sub(1);
                match verdict {
                    Verdict::Neutral => None,
                    Verdict::Failure => Some(self.go(open)),
                    Verdict::Success => {
                        *successes += 1;
                        if *successes >= self.config.success_threshold() {
                            Some(self.go(closed()))
                        } else {
                            None
                        }
                    }
                }
            }
        }
    }

    fn go(&mut self, next: State) -> (BreakerState, BreakerState) {
        let from = self.state();
        self.state = next;
        self.epoch += 1;
        (from, self.state())
    }
}

fn closed() -> State {
    State::Closed {
        failures: 0,
        window: VecDeque::new(),
        window_failures: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(threshold: u32) -> Gate {
        Gate::new(
            CircuitBreakerConfig::builder()
                .failure_threshold(threshold)
                .open_timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn opens_at_exactly_the_threshold_and_half_opens_on_its_timer() {
        let mut g = gate(3);
        let t = Duration::from_secs(10);
        for _ in 0..2 {
            let p = g.try_acquire().unwrap();
            assert_eq!(g.record(t, p, Verdict::Failure), None);
        }
        let p = g.try_acquire().unwrap();
        assert_eq!(
            g.record(t, p, Verdict::Failure),
            Some((BreakerState::Closed, BreakerState::Open))
        );
        assert!(g.try_acquire().is_none());
        assert_eq!(g.tick(t + Duration::from_millis(999)), None);
        assert_eq!(
            g.tick(t + Duration::from_secs(1)),
            Some((BreakerState::Open, BreakerState::HalfOpen))
        );
        let probe = g.try_acquire().unwrap();
        assert!(g.try_acquire().is_none(), "one probe at a time");
        assert_eq!(
            g.record(t, probe, Verdict::Success),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
    }

    #[test]
    fn a_neutral_probe_neither_closes_nor_reopens() {
        let mut g = gate(1);
        let p = g.try_acquire().unwrap();
        g.record(Duration::ZERO, p, Verdict::Failure);
        g.tick(Duration::from_secs(1));
        let probe = g.try_acquire().unwrap();
        assert_eq!(g.record(Duration::ZERO, probe, Verdict::Neutral), None);
        assert_eq!(g.state(), BreakerState::HalfOpen);
        assert!(g.try_acquire().is_some(), "the probe slot is free again");
    }

    #[test]
    fn the_failure_ratio_is_judged_over_a_sliding_window_of_at_least_min_calls() {
        use person_retry::FailureRatio;
        let mut g = Gate::new(
            CircuitBreakerConfig::builder()
                .failure_threshold(100)
                .failure_ratio(FailureRatio {
                    ratio: 0.5,
                    window: 4,
                    min_calls: 4,
                })
                .build()
                .unwrap(),
        );
        let (f, s) = (Verdict::Failure, Verdict::Success);
        // Two failures among the first two calls: too few calls to judge. The window
        // then slides past them (two successes push each out), so two more failures
        // are needed before half of the last four failed.
        for (i, verdict) in [f, f, s, s, s, s, f].into_iter().enumerate() {
            let p = g.try_acquire().unwrap();
            assert_eq!(g.record(Duration::ZERO, p, verdict), None, "call {}", i + 1);
        }
        let p = g.try_acquire().unwrap();
        assert_eq!(
            g.record(Duration::ZERO, p, f),
            Some((BreakerState::Closed, BreakerState::Open)),
            "call 8: 2 of the last 4 failed"
        );
    }

    #[test]
    fn outcomes_of_calls_permitted_before_a_transition_are_ignored() {
        let mut g = gate(1);
        let old = g.try_acquire().unwrap();
        let p = g.try_acquire().unwrap();
        g.record(Duration::ZERO, p, Verdict::Failure);
        assert_eq!(g.record(Duration::ZERO, old, Verdict::Success), None);
        assert_eq!(g.state(), BreakerState::Open);
    }

    #[test]
    fn a_failure_permitted_before_the_breaker_reopened_and_closed_is_ignored() {
        let mut g = gate(1);
        let old = g.try_acquire().unwrap();
        let p = g.try_acquire().unwrap();
        g.record(Duration::ZERO, p, Verdict::Failure);
        g.tick(Duration::from_secs(1));
        let probe = g.try_acquire().unwrap();
        assert_eq!(
            g.record(Duration::ZERO, probe, Verdict::Success),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
        assert_eq!(g.record(Duration::ZERO, old, Verdict::Failure), None);
        assert_eq!(g.state(), BreakerState::Closed);
    }
}
