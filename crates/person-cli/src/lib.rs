//! `person-cli`: the testable parts of the `person-stream` operator CLI.
//!
//! The binary (`src/main.rs`) parses arguments and talks to NATS; this library holds
//! the logic worth unit-testing on its own:
//!
//! - [`error`]: the exit codes and the error type that carries a hint.
//! - [`input`]: NDJSON lines to publish (V2 envelopes, bare V2 events, raw V1 events).
//! - [`filter`]: time arguments (`2h`, RFC 3339) and the `tail` filter.
//! - [`format`](mod@format): tables, one-line event summaries, byte and age formatting.
//! - [`progress`]: progress on stderr: a live bar on a terminal, a plain line every few
//!   seconds otherwise.

pub mod error;
pub mod filter;
pub mod format;
pub mod input;
pub mod progress;
