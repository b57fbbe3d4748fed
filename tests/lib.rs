//! Cross-crate end-to-end tests and the reliability suite live in `e2e/` (one test
//! binary, a module per area); this library is intentionally empty.
