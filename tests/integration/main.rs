//! mailfetch's integration tests, in one binary (one link instead of one
//! per file), grouped by what they drive; `tests/README.md` lists what each
//! file tests. The test support (fake servers, private Dovecot and Postfix,
//! running the binary) is the `testkit` crate in `crates/testkit`.
//!
//! Not here, each a binary of its own since the test process must stay
//! small: `tests/imap_append_memory.rs` measures the peak memory of its
//! own process; `tests/memory_bounds.rs` that of the mailfetch processes
//! it runs, which start with the size of the test process at the spawn
//! (here, tests build messages of 100 MiB).

/// Runs the `mailfetch` binary.
mod binary;
/// Self-tests of the test support: the fake IMAP server and the Dovecot
/// harness.
mod harness;
/// Drives a sink through its API, in this process.
mod sinks;
