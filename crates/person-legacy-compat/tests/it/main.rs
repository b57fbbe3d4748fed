//! Integration tests of legacy compatibility: the week-1 fixtures, edge cases,
//! round trips and hostile input.

mod fixtures;
mod properties;
