//! Servers mail is fetched from.

pub mod imap;
pub mod pop3;
/// Moved to the crate root so that sinks can use it; re-exported so that
/// `source::wire` paths keep working.
pub use crate::wire;

use std::future::Future;

use crate::error::Error;
use crate::sink::MessageWriter;

/// The most messages a mailbox listing may name. Each listed message costs
/// memory (see docs/design.md, "What a mailbox costs"); no real mailbox
/// comes near, and a server that claims more is refused rather than
/// allowed to grow mailfetch without bound.
pub const MAX_MESSAGES: usize = 2_000_000;

/// The error message for a listing past [`MAX_MESSAGES`].
fn too_many_messages() -> String {
    format!(
        "the server listed more than {MAX_MESSAGES} messages in one mailbox; refusing a listing this large"
    )
}

/// One message as the server lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    /// The server's handle for the message in this session (POP3 message
    /// number, IMAP UID).
    pub number: u32,
    /// The id that stays the same across sessions (POP3 UIDL, IMAP UID),
    /// if the server has one.
    pub uid: Option<String>,
    /// Size as announced by the server, once known. Only ever used for
    /// reporting and decisions, never to size a buffer.
    pub size: Option<u64>,
    /// The server says it has been read (IMAP `\Seen`).
    pub seen: bool,
    /// A digest that recognises the message if its `uid` changes (IMAP
    /// UIDVALIDITY), once known.
    pub digest: Option<String>,
}

/// What a mailbox holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// Changes when every `uid` of the mailbox changes (IMAP UIDVALIDITY).
    pub identity: Option<String>,
    pub messages: Vec<Listed>,
}

/// How a retrieval ended, when the session itself is still usable.
#[derive(Debug, PartialEq, Eq)]
pub enum Retrieved {
    /// The whole message was written to the sink.
    Complete,
    /// The server refused to hand this message out.
    Refused(String),
}

/// A logged-in session with a mail server, on one mailbox.
pub trait Source: Send {
    /// The mailbox's messages. `with_seen` asks for the `seen` flags.
    fn list(&mut self, with_seen: bool) -> impl Future<Output = Result<Listing, Error>> + Send;

    /// Fills in `size` and `digest` where they are missing.
    fn describe(
        &mut self,
        messages: &mut [Listed],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Announces that these messages will be retrieved, in this order, so
    /// that the requests can be pipelined.
    fn request(&mut self, messages: &[Listed]);

    /// Streams the next requested message to arrive into `out`, and says
    /// which it was (IMAP servers may answer pipelined fetches in any
    /// order). Called once per requested message. An `Err` means the
    /// session is unusable (or `out` failed); what `out` got is incomplete.
    fn retrieve<W: MessageWriter>(
        &mut self,
        out: &mut W,
    ) -> impl Future<Output = Result<(u32, Retrieved), Error>> + Send;

    /// Removes delivered messages from the mailbox (deleting or moving them
    /// as configured); returns how many the server accepted.
    fn delete(&mut self, numbers: &[u32]) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Marks delivered messages as read, where the protocol can.
    fn mark_seen(&mut self, numbers: &[u32]) -> impl Future<Output = Result<(), Error>> + Send;

    /// Ends the session; POP3 deletions take effect only if this succeeds.
    fn finish(self) -> impl Future<Output = Result<(), Error>> + Send;
}
