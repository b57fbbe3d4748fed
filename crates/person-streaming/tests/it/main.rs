//! Integration tests of person-streaming against real nats-server processes started by
//! the harness. Each test owns its server, so tests run in parallel.

mod contract;
mod dlq;
mod errors;
mod publish;
mod setup;
mod support;
