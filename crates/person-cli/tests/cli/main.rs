//! End-to-end tests of the person-stream binary.
