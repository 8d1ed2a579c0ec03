//! Servers mail is fetched from.

pub mod pop3;

use std::future::Future;

use crate::error::Error;
use crate::sink::MessageWriter;

/// One message as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The server's handle for the message in this session.
    pub number: u32,
    /// The id that stays the same across sessions (POP3 UIDL), if the
    /// server has one.
    pub uid: Option<String>,
    /// Size as announced by the server. Only ever used for reporting and
    /// decisions, never to size a buffer.
    pub size: u64,
}

/// How a retrieval ended, when the session itself is still usable.
#[derive(Debug, PartialEq, Eq)]
pub enum Retrieved {
    /// The whole message was written to the sink.
    Complete,
    /// The server refused to hand this message out.
    Refused(String),
}

/// A logged-in session with a mail server.
pub trait Source: Send {
    /// The server's messages.
    fn list(&mut self) -> impl Future<Output = Result<Vec<Listed>, Error>> + Send;

    /// Announces that these messages will be retrieved, in this order, so
    /// that the requests can be pipelined.
    fn request(&mut self, numbers: &[u32]);

    /// Streams the next requested message into `out`. An `Err` means the
    /// session is unusable (or `out` failed); the message is incomplete.
    fn retrieve<W: MessageWriter>(
        &mut self,
        number: u32,
        out: &mut W,
    ) -> impl Future<Output = Result<Retrieved, Error>> + Send;

    /// Marks messages for deletion; returns how many the server accepted.
    fn delete(&mut self, numbers: &[u32]) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Ends the session; deletions take effect only if this succeeds.
    fn finish(self) -> impl Future<Output = Result<(), Error>> + Send;
}
