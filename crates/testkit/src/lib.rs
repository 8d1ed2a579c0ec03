//! What mailfetch's integration tests, its demo and its benchmark share:
//! fake POP3, IMAP and SMTP servers on one harness ([`fake_server`]),
//! private Dovecot and Postfix instances ([`dovecot`], [`postfix`]), and
//! the one way to run the `mailfetch` binary ([`run`]).
pub mod dovecot;
pub mod fake_imap;
pub mod fake_pop3;
pub mod fake_server;
pub mod fake_smtp;
pub mod postfix;
pub mod run;

mod host;

pub use host::{find_binary, require_program};
