//! Integration tests of `person-retry`, in one binary.

mod breaker;
mod dead_letter;
mod handler;
mod policy_props;
mod support;
