//! Shared helpers for the integration tests.
pub mod dovecot;
pub mod fake_imap;
pub mod fake_pop3;
pub mod run;
