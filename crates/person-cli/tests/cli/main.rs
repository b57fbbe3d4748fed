//! End-to-end tests of the `person-stream` binary against real nats-server processes
//! started by the harness. Each test owns its server, so tests run in parallel.

mod consumer;
mod dlq;
mod dlq_memory;
mod errors;
mod groups;
mod publish;
mod setup;
mod support;
mod tail;
