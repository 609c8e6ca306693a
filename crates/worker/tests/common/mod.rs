//! Shared by the worker crate's integration tests.

pub mod loopback;
