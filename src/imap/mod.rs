//! The IMAP protocol layer shared by the IMAP source and the IMAP APPEND
//! sink: the sans-IO codec, mailbox name encoding, and a session up to
//! login. Neither user knows about the other.

pub mod codec;
pub mod session;
pub mod utf7;
