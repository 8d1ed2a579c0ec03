//! mailfetch: fetch mail from POP3 (and, later, IMAP) servers and deliver it
//! durably, without ever losing a message.
//!
//! The crate is layered so that each protocol is ignorant of the others:
//!
//! * [`source`] speaks to the server mail is fetched from (POP3 today).
//! * [`sink`] is where mail goes (a Maildir today).
//! * [`pipeline`] runs one poll of one account: list → diff against
//!   [`state`] → retrieve → deliver → commit → delete. Durability and
//!   batching live there and nowhere else.
//! * [`net`] opens TCP/TLS connections, [`auth`] implements SASL, [`config`]
//!   reads the user's configuration.

pub mod auth;
pub mod cmdline;
pub mod config;
pub mod error;
pub mod fingerprint;
pub mod imap;
pub mod lock;
pub mod net;
pub mod notify;
pub mod permissions;
pub mod pipeline;
pub mod received;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod state;
pub mod wire;
