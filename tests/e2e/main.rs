//! Cross-crate end-to-end tests.

mod pure_pipeline;
