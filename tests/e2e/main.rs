//! Cross-crate end-to-end tests, and the reliability suite: the delivery contract under
//! faults, against real `nats-server` processes (see RELIABILITY.md).
//!
//! Each reliability case writes its measured numbers to
//! `target/reliability/<case>.json`; `cargo xtask reliability` runs the suite and
//! turns them into the table in RELIABILITY.md.

mod auth;
mod cluster;
mod config;
mod examples;
mod faults;
mod fuzz;
mod groups;
mod handlers;
mod hostile;
mod metrics;
mod pure_pipeline;
mod soak;
mod support;
mod tracing_otel;
