//! mailfetch: fetch mail from POP3 and IMAP servers and deliver it
//! durably (into a Maildir, to an MTA over SMTP or LMTP, to an MDA, or
//! into another IMAP server), without ever losing a message.
//!
//! The crate is layered so that each protocol is ignorant of the others:
//!
//! * [`cli`] defines the command line (flags and subcommands) once.
//! * [`config`] reads and checks the user's configuration (one table of
//!   keys, [`config::keys`]; every server is a [`config::Endpoint`]);
//!   [`permissions`] and [`lock`] guard the files mailfetch trusts.
//! * [`status`] keeps how each mailbox's last poll ended, for
//!   `mailfetch status`.
//! * [`scheduler`] polls accounts: concurrently once, or as a daemon with
//!   intervals, backoff, IMAP IDLE and signals.
//! * [`pipeline`] runs one poll of one account: list → plan against
//!   [`state`] → retrieve → deliver → commit → delete. Durability and
//!   batching live in its commit step and nowhere else.
//! * [`source`] speaks to the server mail is fetched from (POP3, IMAP);
//!   [`sink`] is where mail goes (Maildir, SMTP/LMTP, MDA, IMAP APPEND).
//! * [`imap`], [`wire`], [`net`] and [`auth`] are the shared protocol
//!   plumbing: the IMAP codec and login, buffered I/O with caps and pacing
//!   and the server to log in to ([`wire::Server`]), TCP/TLS, and SASL
//!   (one driver for POP3, IMAP and SMTP).
//! * Leaf modules hold small values several layers share: [`address`], [`cmdline`],
//!   [`fingerprint`], [`percent`], [`received`] (the trace header and
//!   dates), [`error`] (kinds and exit codes).

pub mod address;
pub mod auth;
pub mod cli;
pub mod cmdline;
pub mod config;
pub mod error;
pub mod fingerprint;
pub mod imap;
pub mod import;
pub mod lock;
pub mod net;
pub mod notify;
pub mod percent;
pub mod permissions;
pub mod pipeline;
pub mod received;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod state;
pub mod status;
pub mod wire;
