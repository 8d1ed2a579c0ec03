//! mailfetch's integration tests, in one binary (one link instead of one
//! per file), grouped by what they drive; `tests/README.md` lists what each
//! file tests. The test support (fake servers, private Dovecot and Postfix,
//! running the binary) is the `testkit` crate in `crates/testkit`.
//!
//! Not here: `tests/imap_append_memory.rs`, which measures the peak memory
//! of its own process and so needs a process of its own.

/// Runs the `mailfetch` binary.
mod binary;
/// Self-tests of the test support: the fake IMAP server and the Dovecot
/// harness.
mod harness;
/// Drives a sink through its API, in this process.
mod sinks;
