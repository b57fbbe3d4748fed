//! Integration tests of the subscription runtime against real nats-server processes.

mod attempts;
mod breaker_wire;
mod delivery;
mod edges;
mod faults;
mod groups;
mod namespaces;
mod retention;
mod support;
