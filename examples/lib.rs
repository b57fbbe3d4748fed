//! Shared helpers for the runnable examples of the Person event streaming workspace.
//!
//! Run an example from the workspace root with `cargo run --example NAME`.
