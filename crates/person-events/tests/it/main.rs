//! Integration tests of the pure event core: codec round trips, hostile input, subjects.

mod codec;
