//! `person-subscriptions`: Handler runtime for Person events: pull, decode/upcast, handle, ack/nak/term, DLQ, breaker, ordering.
//!
//! This crate is a documented shell for now; its contents arrive with later work.
