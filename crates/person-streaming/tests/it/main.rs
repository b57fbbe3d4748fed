//! Integration tests of person-streaming against real nats-server processes started by
//! the harness. Each test owns its server, so tests run in parallel.

mod atomic;
mod consumer_ops;
mod contract;
mod dlq;
mod dlq_paging;
mod errors;
mod partitions;
mod publish;
mod replay;
mod setup;
mod support;
