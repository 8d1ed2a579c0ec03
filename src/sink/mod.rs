//! Where fetched mail goes.
//!
//! A sink receives a message as a stream of bytes (network form: CRLF line
//! ends, no dot-stuffing) and answers whether it took it. Making accepted
//! messages durable is split off into a [`Committer`] so that the pipeline
//! can batch that work on another thread while the next messages download;
//! the pipeline alone decides the order of barriers (see `pipeline`).

pub(crate) mod any;
pub mod bounce;
pub mod envelope;
pub mod imap_append;
pub mod intent;
mod line_ends;
pub mod maildir;
pub mod mbox;
pub mod mda;
pub mod smtp;
pub mod spool;

use std::future::Future;
use std::io;

use crate::error::Error;
use intent::Intent;

/// Whether no process `pid` exists: files named after a process that is
/// gone were left by a crash.
pub(crate) fn process_is_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    pid > 0
        && unsafe { libc::kill(pid, 0) } == -1
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Streams one message into a sink.
pub trait MessageWriter: Send + 'static {
    fn write(&mut self, chunk: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

/// What a sink did with a complete message.
pub enum Acceptance<S> {
    /// Taken; durable once the committer has synced and published it.
    Accepted(S),
    /// Refused for now (try again next poll).
    TemporaryFailure(String),
    /// Refused for good.
    PermanentFailure(Rejection),
    /// Taken for some recipients only (an LMTP server's replies, an MDA
    /// run per recipient): `delivered_to` have the message now; for the
    /// others, `failure` (a temporary or permanent failure) holds.
    Partial {
        delivered_to: Vec<String>,
        failure: Box<Acceptance<S>>,
    },
}

/// Why a sink refused a message for good, with what a bounce needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The receiver's words, e.g. `550 5.1.1 <bob@example.org>: unknown user`.
    pub reason: String,
    /// The envelope sender a bounce would go to (the message's
    /// Return-Path); `None` for the null sender or when there is none.
    pub sender: Option<String>,
    /// The message's header block (capped), for the bounce's
    /// `text/rfc822-headers` part.
    pub headers: Vec<u8>,
}

impl Rejection {
    /// Where a bounce of the message may go: its envelope sender, unless it
    /// has none (the null sender never gets a bounce, RFC 5321 §6.1) or the
    /// message was sent automatically or in bulk. Bouncing those, mostly
    /// spam with forged senders, through the user's own relay would be
    /// backscatter. `Err` says why there is no bounce.
    pub fn bounce_recipient(&self) -> Result<&str, &'static str> {
        let sender = self
            .sender
            .as_deref()
            .ok_or("it has no sender to bounce to (null or missing Return-Path)")?;
        match envelope::automatic_reply_forbidden(&self.headers) {
            Some(reason) => Err(reason),
            None => Ok(sender),
        }
    }
}

/// A message a sink has accepted but that may not be durable yet.
pub trait Staged: Send + 'static {
    /// Size of the delivered message in octets.
    fn size(&self) -> u64;
    /// What the state journal must record before the message becomes
    /// visible, so that recovery after a crash can finish (or recognise)
    /// the delivery. `None` when acceptance is already final (an MTA's 250).
    fn intent(&self) -> Option<Intent>;
}

pub trait Sink: Send + 'static {
    type Writer: MessageWriter;
    type Staged: Staged;
    type Committer: Committer<Staged = Self::Staged>;

    /// Human-readable destination for logs, e.g. `maildir ~/Mail`.
    fn describe(&self) -> String;

    /// Starts a new message.
    fn begin(&mut self) -> impl Future<Output = Result<Self::Writer, Error>> + Send;

    /// Starts a new message for `recipients` instead of the configured ones:
    /// a message that reached some recipients before goes only to the
    /// others. Sinks without recipients (a Maildir, an IMAP folder) never
    /// answer [`Acceptance::Partial`], so they are never asked.
    fn begin_to(
        &mut self,
        recipients: &[String],
    ) -> impl Future<Output = Result<Self::Writer, Error>> + Send {
        let _ = recipients;
        self.begin()
    }

    /// Ends a message whose bytes have all been written.
    fn finish(
        &mut self,
        writer: Self::Writer,
    ) -> impl Future<Output = Result<Acceptance<Self::Staged>, Error>> + Send;

    /// Throws away a message that could not be read to its end. Nothing of
    /// it may ever become visible.
    fn abort(&mut self, writer: Self::Writer);

    /// The part that makes accepted messages durable; runs on a blocking
    /// thread.
    fn committer(&self) -> Self::Committer;

    /// Another handle on the same destination with a session of its own,
    /// so that the pipeline can wait for several answers at once; `None`
    /// (the default) when there is no point (a Maildir answers at once) or
    /// it would be unwelcome. Only sinks whose acceptance is final may fork.
    fn fork(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// Ends the sink's session at the end of a poll (SMTP QUIT, IMAP
    /// LOGOUT). Errors are only worth a debug log: everything the sink
    /// accepted was final before this.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A message whose acceptance was final when the sink answered (an MTA's
/// 250, an MDA's exit 0, an IMAP server's APPEND OK): there is nothing left
/// to sync or publish.
#[derive(Debug)]
pub struct Delivered {
    pub size: u64,
}

impl Staged for Delivered {
    fn size(&self) -> u64 {
        self.size
    }

    fn intent(&self) -> Option<Intent> {
        None
    }
}

/// The committer of sinks whose acceptance is final.
#[derive(Debug, Default)]
pub struct AlreadyDurable;

impl Committer for AlreadyDurable {
    type Staged = Delivered;
    const DEFERS_DURABILITY: bool = false;

    fn sync(&mut self, _batch: &mut [Delivered]) -> io::Result<()> {
        Ok(())
    }

    fn publish(&mut self, _batch: Vec<Delivered>) -> io::Result<()> {
        Ok(())
    }

    fn discard(&mut self, _batch: Vec<Delivered>) {}
}

/// The durability half of a sink. Called only by the pipeline's commit step,
/// in this order: [`sync`](Committer::sync), journal the intents,
/// [`publish`](Committer::publish).
pub trait Committer: Send + 'static {
    type Staged: Staged;

    /// Whether accepted messages still need [`sync`](Committer::sync) and
    /// [`publish`](Committer::publish) (a Maildir). When `false`, every
    /// acceptance is already final, so the pipeline journals each message
    /// as soon as it is accepted instead of batching: a crash then repeats
    /// at most the message in flight.
    const DEFERS_DURABILITY: bool = true;

    /// Makes the content of every staged message durable (but not
    /// visible), or, for a destination that is one file (an mbox), locks
    /// it and gives each message its place there. Each message's
    /// [`Staged::intent`] is read after this and is final.
    fn sync(&mut self, batch: &mut [Self::Staged]) -> io::Result<()>;

    /// Makes the messages visible, durably.
    fn publish(&mut self, batch: Vec<Self::Staged>) -> io::Result<()>;

    /// Throws away staged messages that will not be published.
    fn discard(&mut self, batch: Vec<Self::Staged>);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(sender: Option<&str>, headers: &str) -> Rejection {
        Rejection {
            reason: "550 5.1.1 unknown user".to_owned(),
            sender: sender.map(str::to_owned),
            headers: headers.as_bytes().to_vec(),
        }
    }

    #[test]
    fn only_mail_from_a_person_with_a_sender_is_bounced() {
        let plain = "From: a@example.org\r\nSubject: hi\r\n\r\n";
        assert_eq!(
            rejection(Some("a@example.org"), plain).bounce_recipient(),
            Ok("a@example.org")
        );
        let err = rejection(None, plain).bounce_recipient().unwrap_err();
        assert!(err.contains("no sender"), "{err}");
        for (headers, why) in [
            ("Auto-Submitted: auto-replied\r\n\r\n", "Auto-Submitted"),
            (
                "Precedence: bulk\r\nFrom: a@example.org\r\n\r\n",
                "Precedence",
            ),
        ] {
            let err = rejection(Some("a@example.org"), headers)
                .bounce_recipient()
                .unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
