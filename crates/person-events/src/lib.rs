//! person-events
