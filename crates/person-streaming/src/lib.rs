//! `person-streaming`: JetStream side of the Person event stream: config, client, publisher, aggregate reader, DLQ store.
//!
//! This crate is a documented shell for now; its contents arrive with later work.
