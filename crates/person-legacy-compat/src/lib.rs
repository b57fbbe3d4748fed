//! person-legacy-compat
