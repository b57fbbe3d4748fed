//! The breaker's configuration and states: plain data, no runtime, so a pure state
//! machine (the delivery core) can use them as well as [`crate::CircuitBreaker`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyError, PolicyErrorKind, millis};

/// The largest failure threshold, probe count, success threshold and window size.
///
/// ```
/// assert_eq!(person_retry::MAX_BREAKER_COUNT, 65_535);
/// ```
pub const MAX_BREAKER_COUNT: u32 = u16::MAX as u32;

/// The state of a [`CircuitBreaker`](crate::CircuitBreaker).
///
/// ```
/// use person_retry::BreakerState;
/// assert_eq!(BreakerState::HalfOpen.to_string(), "half-open");
/// assert!(BreakerState::Closed.allows_calls());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Healthy: every call runs (the lock-free fast path).
    Closed,
    /// Tripped: every call is rejected without running until the open timeout passes.
    Open,
    /// Probing: up to `half_open_max_probes` calls run at once; the rest are rejected.
    HalfOpen,
}

impl BreakerState {
    /// Whether calls run freely (only in [`BreakerState::Closed`]).
    pub fn allows_calls(self) -> bool {
        self == BreakerState::Closed
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

/// A state change of a [`CircuitBreaker`](crate::CircuitBreaker), passed to its `on_transition` callback.
///
/// ```
/// use person_retry::{BreakerState, Transition};
/// let t = Transition { from: BreakerState::Closed, to: BreakerState::Open };
/// assert_eq!(t.to_string(), "closed -> open");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// Opening on a failure ratio over a count-based window: the breaker opens when, among
/// the last `window` calls made while Closed, at least `min_calls` were recorded and
/// the share of failures is `>= ratio`. The window is cleared whenever the breaker
/// closes. Enabling it makes each recorded outcome take a short lock.
///
/// ```
/// use person_retry::FailureRatio;
/// let ratio = FailureRatio { ratio: 0.5, window: 20, min_calls: 10 };
/// # let _ = ratio;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRatio {
    /// The failure share that opens the breaker, in `(0, 1]`.
    pub ratio: f64,
    /// How many of the latest calls are considered (1 ..= 65 535).
    pub window: u32,
    /// The fewest calls in the window before the ratio is judged (1 ..= `window`).
    pub min_calls: u32,
}

/// Configuration of a [`CircuitBreaker`](crate::CircuitBreaker); always valid (builder and deserialization
/// validate).
///
/// # Defaults and serialized form
///
/// | field | default | meaning |
/// | --- | --- | --- |
/// | `failure_threshold` | 5 | consecutive failures that open it |
/// | `open_timeout_ms` | 30 000 | time Open before the next call becomes a probe |
/// | `half_open_max_probes` | 1 | concurrent probes allowed in HalfOpen |
/// | `success_threshold` | 1 | probe successes that close it |
/// | `failure_ratio` | none | optional [`FailureRatio`] (`{ratio, window, min_calls}`) |
///
/// Counts are at most [`MAX_BREAKER_COUNT`]. Unknown fields are rejected.
///
/// ```
/// use std::time::Duration;
/// use person_retry::CircuitBreakerConfig;
///
/// let config: CircuitBreakerConfig = serde_json::from_str(
///     r#"{"failure_threshold": 6, "open_timeout_ms": 10000,
///         "failure_ratio": {"ratio": 0.5, "window": 20, "min_calls": 10}}"#,
/// )?;
/// assert_eq!(config.failure_threshold(), 6);
/// assert_eq!(config.open_timeout(), Duration::from_secs(10));
/// assert_eq!(config.half_open_max_probes(), 1);
///
/// let err = CircuitBreakerConfig::builder().success_threshold(0).build().unwrap_err();
/// assert_eq!(err.field(), "success_threshold");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ConfigRepr", into = "ConfigRepr")]
pub struct CircuitBreakerConfig {
    pub(crate) failure_threshold: u32,
    pub(crate) open_timeout: Duration,
    pub(crate) half_open_max_probes: u32,
    pub(crate) success_threshold: u32,
    pub(crate) failure_ratio: Option<FailureRatio>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_timeout: Duration::from_secs(30),
            half_open_max_probes: 1,
            success_threshold: 1,
            failure_ratio: None,
        }
    }
}

fn check_count(value: u32, field: &'static str) -> Result<(), PolicyError> {
    if value == 0 {
        return Err(PolicyError::new(
            PolicyErrorKind::Zero,
            field,
            "is 0",
            "set it to 1 or more",
        ));
    }
    if value > MAX_BREAKER_COUNT {
        return Err(PolicyError::new(
            PolicyErrorKind::TooLarge,
            field,
            format!("is {value}, above the supported {MAX_BREAKER_COUNT}"),
            "set it to 65535 or less",
        ));
    }
    Ok(())
}

impl CircuitBreakerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder {
            config: Self::default(),
        }
    }

    /// Checks every invariant; always `Ok` for a config that exists (the builder and
    /// deserialization run it).
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_count(self.failure_threshold, "failure_threshold")?;
        check_count(self.half_open_max_probes, "half_open_max_probes")?;
        check_count(self.success_threshold, "success_threshold")?;
        if let Some(r) = &self.failure_ratio {
            if !r.ratio.is_finite() || r.ratio <= 0.0 || r.ratio > 1.0 {
                return Err(PolicyError::new(
                    PolicyErrorKind::RatioOutOfRange,
                    "failure_ratio.ratio",
                    format!("is {}", r.ratio),
                    "set it above 0 and at most 1 (e.g. 0.5 for half the calls)",
                ));
            }
            check_count(r.window, "failure_ratio.window")?;
            check_count(r.min_calls, "failure_ratio.min_calls")?;
            if r.min_calls > r.window {
                return Err(PolicyError::new(
                    PolicyErrorKind::Inconsistent,
                    "failure_ratio.min_calls",
                    format!("({}) is greater than window ({})", r.min_calls, r.window),
                    "lower min_calls or raise window",
                ));
            }
        }
        Ok(())
    }

    /// Consecutive failures (while Closed) that open the breaker.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// How long the breaker stays Open before the next call becomes a probe.
    pub fn open_timeout(&self) -> Duration {
        self.open_timeout
    }

    /// Concurrent probes allowed while HalfOpen.
    pub fn half_open_max_probes(&self) -> u32 {
        self.half_open_max_probes
    }

    /// Probe successes that close the breaker again.
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold
    }

    /// The optional failure-ratio rule.
    pub fn failure_ratio(&self) -> Option<FailureRatio> {
        self.failure_ratio
    }
}

/// Builds a [`CircuitBreakerConfig`]; [`build`](Self::build) validates it.
///
/// ```
/// use std::time::Duration;
/// use person_retry::CircuitBreakerConfig;
///
/// let config = CircuitBreakerConfig::builder()
///     .failure_threshold(6)
///     .open_timeout(Duration::from_secs(5))
///     .half_open_max_probes(2)
///     .success_threshold(2)
///     .build()
///     .unwrap();
/// assert_eq!(config.success_threshold(), 2);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CircuitBreakerConfigBuilder {
    config: CircuitBreakerConfig,
}

impl CircuitBreakerConfigBuilder {
    /// Consecutive failures that open the breaker.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.config.failure_threshold = failures;
        self
    }

    /// How long the breaker stays Open.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.config.open_timeout = timeout;
        self
    }

    /// Concurrent probes allowed while HalfOpen.
    pub fn half_open_max_probes(mut self, probes: u32) -> Self {
        self.config.half_open_max_probes = probes;
        self
    }

    /// Probe successes that close the breaker.
    pub fn success_threshold(mut self, successes: u32) -> Self {
        self.config.success_threshold = successes;
        self
    }

    /// Also open on a failure ratio over a window.
    pub fn failure_ratio(mut self, ratio: FailureRatio) -> Self {
        self.config.failure_ratio = Some(ratio);
        self
    }

    /// The validated configuration.
    pub fn build(self) -> Result<CircuitBreakerConfig, PolicyError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigRepr {
    failure_threshold: u32,
    open_timeout_ms: u64,
    half_open_max_probes: u32,
    success_threshold: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_ratio: Option<FailureRatio>,
}

impl Default for ConfigRepr {
    fn default() -> Self {
        CircuitBreakerConfig::default().into()
    }
}

impl From<CircuitBreakerConfig> for ConfigRepr {
    fn from(c: CircuitBreakerConfig) -> Self {
        Self {
            failure_threshold: c.failure_threshold,
            open_timeout_ms: millis(c.open_timeout),
            half_open_max_probes: c.half_open_max_probes,
            success_threshold: c.success_threshold,
            failure_ratio: c.failure_ratio,
        }
    }
}

impl TryFrom<ConfigRepr> for CircuitBreakerConfig {
    type Error = PolicyError;

    fn try_from(r: ConfigRepr) -> Result<Self, PolicyError> {
        let config = Self {
            failure_threshold: r.failure_threshold,
            open_timeout: Duration::from_millis(r.open_timeout_ms),
            half_open_max_probes: r.half_open_max_probes,
            success_threshold: r.success_threshold,
            failure_ratio: r.failure_ratio,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(ratio: f64, window: u32, min_calls: u32) -> Result<CircuitBreakerConfig, PolicyError> {
        CircuitBreakerConfig::builder()
            .failure_ratio(FailureRatio {
                ratio,
                window,
                min_calls,
            })
            .build()
    }

    fn rejected(r: Result<CircuitBreakerConfig, PolicyError>) -> (PolicyErrorKind, &'static str) {
        let err = r.unwrap_err();
        (err.kind(), err.field())
    }

    #[test]
    fn only_closed_allows_calls_and_states_print_their_names() {
        assert!(BreakerState::Closed.allows_calls());
        assert!(!BreakerState::Open.allows_calls());
        assert!(!BreakerState::HalfOpen.allows_calls());
        let names = [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ]
        .map(|s| s.to_string());
        assert_eq!(names, ["closed", "open", "half-open"]);
        let t = Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Open,
        };
        assert_eq!(t.to_string(), "half-open -> open");
    }

    #[test]
    fn every_count_is_at_least_1_and_at_most_the_maximum() {
        type Set = fn(CircuitBreakerConfigBuilder, u32) -> CircuitBreakerConfigBuilder;
        let fields: [(&str, Set); 3] = [
            ("failure_threshold", |b, n| b.failure_threshold(n)),
            ("half_open_max_probes", |b, n| b.half_open_max_probes(n)),
            ("success_threshold", |b, n| b.success_threshold(n)),
        ];
        for (field, set) in fields {
            let build = |n| set(CircuitBreakerConfig::builder(), n).build();
            assert_eq!(rejected(build(0)), (PolicyErrorKind::Zero, field));
            assert!(build(1).is_ok(), "{field} = 1");
            assert!(build(MAX_BREAKER_COUNT).is_ok(), "{field} = max");
            assert_eq!(
                rejected(build(MAX_BREAKER_COUNT + 1)),
                (PolicyErrorKind::TooLarge, field)
            );
        }
        let max = MAX_BREAKER_COUNT;
        assert!(ratio(0.5, max, max).is_ok());
        assert_eq!(
            rejected(ratio(0.5, 0, 1)),
            (PolicyErrorKind::Zero, "failure_ratio.window")
        );
        assert_eq!(
            rejected(ratio(0.5, max + 1, 1)),
            (PolicyErrorKind::TooLarge, "failure_ratio.window")
        );
        assert_eq!(
            rejected(ratio(0.5, 10, 0)),
            (PolicyErrorKind::Zero, "failure_ratio.min_calls")
        );
    }

    #[test]
    fn the_ratio_is_above_0_at_most_1_and_min_calls_fit_the_window() {
        assert!(ratio(1.0, 10, 10).is_ok(), "min_calls may equal window");
        assert!(ratio(f64::MIN_POSITIVE, 10, 1).is_ok());
        for bad in [0.0, -0.5, 1.0 + f64::EPSILON, f64::NAN, f64::INFINITY] {
            assert_eq!(
                rejected(ratio(bad, 10, 5)),
                (PolicyErrorKind::RatioOutOfRange, "failure_ratio.ratio"),
                "{bad}"
            );
        }
        assert_eq!(
            rejected(ratio(0.5, 10, 11)),
            (PolicyErrorKind::Inconsistent, "failure_ratio.min_calls")
        );
    }

    #[test]
    fn the_builder_sets_every_field_and_serde_round_trips_them() {
        let rule = FailureRatio {
            ratio: 0.25,
            window: 40,
            min_calls: 8,
        };
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(7)
            .open_timeout(Duration::from_millis(2500))
            .half_open_max_probes(3)
            .success_threshold(2)
            .failure_ratio(rule)
            .build()
            .unwrap();
        assert_eq!(config.failure_threshold(), 7);
        assert_eq!(config.open_timeout(), Duration::from_millis(2500));
        assert_eq!(config.half_open_max_probes(), 3);
        assert_eq!(config.success_threshold(), 2);
        assert_eq!(config.failure_ratio(), Some(rule));
        assert_eq!(config.validate(), Ok(()));
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "failure_threshold": 7,
                "open_timeout_ms": 2500,
                "half_open_max_probes": 3,
                "success_threshold": 2,
                "failure_ratio": {"ratio": 0.25, "window": 40, "min_calls": 8},
            })
        );
        assert_eq!(
            serde_json::from_value::<CircuitBreakerConfig>(json).unwrap(),
            config
        );
        assert_eq!(
            serde_json::from_str::<CircuitBreakerConfig>("{}").unwrap(),
            CircuitBreakerConfig::default()
        );
        let err = serde_json::from_str::<CircuitBreakerConfig>(
            r#"{"failure_ratio": {"ratio": 0.5, "window": 4, "min_calls": 5}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("failure_ratio.min_calls"), "{err}");
    }
}
