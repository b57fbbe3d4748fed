//! `person-delivery`: the delivery decisions of the subscription runtime, as a pure
//! state machine (sans-IO, in the manner of quinn-proto and rustls).
//!
//! [`Core`] decides, for one handler on one durable consumer, what to pull, which
//! message of which person runs next, and how each message ends: ack, NAK with a
//! delay, dead letter then TERM, or parked. It owns no socket, no task and no clock:
//! the caller feeds it what happened (`on_message`, `on_call_done`,
//! `on_dead_letter_done`, `on_parked_checked`, `on_pull_done`, `on_timeout`,
//! `on_shutdown`) with the current time, and performs the [`Action`]s it returns.
//! `person-subscriptions` is the async shell that does that against NATS; the
//! deterministic simulation in `tests/sim` does it against a model of a JetStream
//! consumer, over many seeded schedules.
//!
//! Depend on it only to drive a consumer some other way (or to simulate one). It has
//! no feature flags, and (checked by `cargo xtask ci`) no runtime or I/O dependency.
//!
//! ```
//! use std::time::Duration;
//! use person_delivery::{Action, Arrival, CallResult, Config, Core, Kind, Recovery};
//! use person_retry::RetryPolicy;
//!
//! let config = Config::new(RetryPolicy::default(), Duration::from_secs(30));
//! let mut core: Core<&str> = Core::new(config, [], Recovery::default(), Duration::ZERO);
//! assert_eq!(core.poll_action(), Some(Action::Pull { max: 256 }));
//!
//! let t = Duration::from_millis(1);
//! core.on_message(t, Arrival { seq: 1, delivered: 1, person: Some("ada"), kind: Kind::Event });
//! core.on_message(t, Arrival { seq: 2, delivered: 1, person: Some("ada"), kind: Kind::Event });
//! // One call at a time per person, in stream order.
//! assert_eq!(core.poll_action(), Some(Action::Run { seq: 1, attempt: 1 }));
//! assert_eq!(core.poll_action(), None);
//! core.on_call_done(t, 1, CallResult::Ok);
//! assert_eq!(core.poll_action(), Some(Action::Ack { seq: 1 }));
//! assert_eq!(core.poll_action(), Some(Action::Run { seq: 2, attempt: 1 }));
//! ```

mod breaker;
mod config;
mod core;
pub mod group;

pub use crate::config::{Config, progress_every};
pub use crate::core::{
    Action, Arrival, CallResult, Cause, Core, Counts, Kind, Notice, RELEASE_MARGIN, Recovery,
};
pub use crate::group::{Group, GroupAction, GroupConfig, LeaseOutcome};
