//! Metrics of a running consumer through the `metrics` facade. The library installs no
//! recorder: without one every handle is a no-op. The handles are built once per worker
//! (when its consumer starts) and bound to the recorder installed at that moment, so an
//! application installs its recorder before starting consumers. Names and labels are
//! listed in the README ("Metrics").

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, Unit};
use person_delivery::Counts;
use person_retry::BreakerState;

/// Events handled successfully and acked.
pub(crate) const HANDLED: &str = "person_events_handled_total";
/// Failed attempts that were retried.
pub(crate) const RETRIED: &str = "person_events_retried_total";
/// Messages stored in the DLQ and terminated.
pub(crate) const DEAD_LETTERED: &str = "person_events_dead_lettered_total";
/// Of those, parked behind an earlier dead letter.
pub(crate) const PARKED: &str = "person_events_parked_total";
/// Messages arriving with a delivery count above 1.
pub(crate) const REDELIVERED: &str = "person_events_redelivered_total";
/// Circuit breaker state changes.
pub(crate) const BREAKER_TRANSITIONS: &str = "person_events_breaker_transitions_total";
/// How long one handler call took.
pub(crate) const HANDLER_DURATION: &str = "person_events_handler_duration_seconds";
/// From the event's metadata timestamp (`ce-time`) to its successful handling.
pub(crate) const PUBLISH_TO_HANDLED: &str = "person_events_publish_to_handled_seconds";
/// Messages held (fetched, not settled).
pub(crate) const IN_HAND: &str = "person_events_in_hand";
/// Handler calls running.
pub(crate) const IN_FLIGHT: &str = "person_events_in_flight";
/// People whose next event waits for a redelivery.
pub(crate) const WAITING_LANES: &str = "person_events_waiting_lanes";
/// People parked behind a dead letter.
pub(crate) const PARKED_PEOPLE: &str = "person_events_parked_people";
/// Messages the server has not delivered yet.
pub(crate) const CONSUMER_LAG: &str = "person_events_consumer_lag";
/// The breaker's state: 0 closed, 1 open, 2 half-open.
pub(crate) const BREAKER_STATE: &str = "person_events_breaker_state";

/// The labels of one worker's metrics. A `partition` label joins them once consumer
/// groups exist.
fn labels(consumer: &str, handler: &str) -> Vec<Label> {
    vec![
        Label::new("consumer", consumer.to_owned()),
        Label::new("handler", handler.to_owned()),
    ]
}

fn describe() {
    metrics::describe_counter!(HANDLED, "Events handled successfully and acked.");
    metrics::describe_counter!(RETRIED, "Failed handler attempts that were retried.");
    metrics::describe_counter!(
        DEAD_LETTERED,
        "Messages stored in the DLQ and terminated (parked ones included)."
    );
    metrics::describe_counter!(
        PARKED,
        "Events dead-lettered because an earlier event of the person was."
    );
    metrics::describe_counter!(REDELIVERED, "Messages delivered more than once.");
    metrics::describe_counter!(BREAKER_TRANSITIONS, "Circuit breaker state changes.");
    metrics::describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "Duration of one handler call."
    );
    metrics::describe_histogram!(
        PUBLISH_TO_HANDLED,
        Unit::Seconds,
        "From the event's timestamp (ce-time) to its successful handling."
    );
    metrics::describe_gauge!(IN_HAND, "Messages fetched and not settled yet.");
    metrics::describe_gauge!(IN_FLIGHT, "Handler calls running.");
    metrics::describe_gauge!(
        WAITING_LANES,
        "People whose next event waits for the redelivery of an earlier one."
    );
    metrics::describe_gauge!(PARKED_PEOPLE, "People parked behind a dead letter.");
    metrics::describe_gauge!(
        CONSUMER_LAG,
        "Messages the server has not delivered to the consumer yet."
    );
    metrics::describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 open, 2 half-open."
    );
}

/// One worker's metric handles, and the core's counts last reported, so that counters
/// advance by the difference.
pub(crate) struct WorkerMetrics {
    handled: Counter,
    retried: Counter,
    dead_lettered: Counter,
    parked: Counter,
    redelivered: Counter,
    breaker_transitions: Counter,
    handler_duration: Histogram,
    publish_to_handled: Histogram,
    in_hand: Gauge,
    in_flight: Gauge,
    waiting_lanes: Gauge,
    parked_people: Gauge,
    lag: Gauge,
    breaker_state: Gauge,
    last: Counts,
}

impl WorkerMetrics {
    pub(crate) fn new(consumer: &str, handler: &str) -> Self {
        describe();
        let l = labels(consumer, handler);
        Self {
            handled: metrics::counter!(HANDLED, l.iter()),
            retried: metrics::counter!(RETRIED, l.iter()),
            dead_lettered: metrics::counter!(DEAD_LETTERED, l.iter()),
            parked: metrics::counter!(PARKED, l.iter()),
            redelivered: metrics::counter!(REDELIVERED, l.iter()),
            breaker_transitions: metrics::counter!(BREAKER_TRANSITIONS, l.iter()),
            handler_duration: metrics::histogram!(HANDLER_DURATION, l.iter()),
            publish_to_handled: metrics::histogram!(PUBLISH_TO_HANDLED, l.iter()),
            in_hand: metrics::gauge!(IN_HAND, l.iter()),
            in_flight: metrics::gauge!(IN_FLIGHT, l.iter()),
            waiting_lanes: metrics::gauge!(WAITING_LANES, l.iter()),
            parked_people: metrics::gauge!(PARKED_PEOPLE, l.iter()),
            lag: metrics::gauge!(CONSUMER_LAG, l.iter()),
            breaker_state: metrics::gauge!(BREAKER_STATE, l.iter()),
            last: Counts::default(),
        }
    }

    /// Advances the counters to the core's counts and sets the gauges.
    pub(crate) fn publish(&mut self, c: &Counts, gauges: Gauges) {
        let step = |counter: &Counter, now: u64, before: u64| {
            if now > before {
                counter.increment(now - before);
            }
        };
        let last = &self.last;
        step(&self.handled, c.processed, last.processed);
        step(&self.retried, c.retried, last.retried);
        step(&self.dead_lettered, c.dead_lettered, last.dead_lettered);
        step(&self.parked, c.parked, last.parked);
        step(
            &self.breaker_transitions,
            c.breaker_transitions,
            last.breaker_transitions,
        );
        self.last = *c;
        self.in_hand.set(gauges.in_hand as f64);
        self.in_flight.set(gauges.in_flight as f64);
        self.waiting_lanes.set(gauges.waiting_lanes as f64);
        self.parked_people.set(gauges.parked_people as f64);
        self.lag.set(gauges.lag as f64);
        self.breaker_state.set(match gauges.breaker {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            _ => 2.0,
        });
    }

    /// A message arrived; `delivered` is its delivery count.
    pub(crate) fn arrived(&self, delivered: u64) {
        if delivered > 1 {
            self.redelivered.increment(1);
        }
    }

    /// A handler call came back after `took`; `since_published` is the time from the
    /// event's timestamp when it succeeded.
    pub(crate) fn call_done(&self, took: Duration, since_published: Option<Duration>) {
        self.handler_duration.record(took);
        if let Some(d) = since_published {
            self.publish_to_handled.record(d);
        }
    }
}

/// The gauges' values after a driver round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    pub(crate) in_hand: usize,
    pub(crate) in_flight: usize,
    pub(crate) waiting_lanes: usize,
    pub(crate) parked_people: usize,
    pub(crate) lag: u64,
    pub(crate) breaker: BreakerState,
}
