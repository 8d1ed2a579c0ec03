//! Where fetched mail goes.
//!
//! A sink receives a message as a stream of bytes (network form: CRLF line
//! ends, no dot-stuffing) and answers whether it took it. Making accepted
//! messages durable is split off into a [`Committer`] so that the pipeline
//! can batch that work on another thread while the next messages download;
//! the pipeline alone decides the order of barriers (see `pipeline`).

pub mod maildir;

use std::future::Future;
use std::io;

use crate::error::Error;

/// Streams one message into a sink.
pub trait MessageWriter: Send {
    fn write(&mut self, chunk: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

/// What a sink did with a complete message.
pub enum Acceptance<S> {
    /// Taken; durable once the committer has synced and published it.
    Accepted(S),
    /// Refused for now (try again next poll).
    TemporaryFailure(String),
    /// Refused for good.
    PermanentFailure(String),
}

/// A message a sink has accepted but that may not be durable yet.
pub trait Staged: Send + 'static {
    /// Size of the delivered message in octets.
    fn size(&self) -> u64;
    /// What the state journal must record before the message becomes
    /// visible, so that recovery after a crash can finish (or recognise)
    /// the delivery. `None` when acceptance is already final (an MTA's 250).
    fn intent(&self) -> Option<String>;
}

pub trait Sink: Send {
    type Writer: MessageWriter;
    type Staged: Staged;
    type Committer: Committer<Staged = Self::Staged>;

    /// Human-readable destination for logs, e.g. `maildir ~/Mail`.
    fn describe(&self) -> String;

    /// Starts a new message.
    fn begin(&mut self) -> impl Future<Output = Result<Self::Writer, Error>> + Send;

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
}

/// The durability half of a sink. Called only by the pipeline's commit step,
/// in this order: [`sync`](Committer::sync), journal the intents,
/// [`publish`](Committer::publish).
pub trait Committer: Send + 'static {
    type Staged: Staged;

    /// Makes the content of every staged message durable (but not visible).
    fn sync(&mut self, batch: &[Self::Staged]) -> io::Result<()>;

    /// Makes the messages visible, durably.
    fn publish(&mut self, batch: Vec<Self::Staged>) -> io::Result<()>;

    /// Throws away staged messages that will not be published.
    fn discard(&mut self, batch: Vec<Self::Staged>);

    /// After a crash: finishes the delivery an intent describes if it was
    /// interrupted. Returns whether the message is (now) delivered; `false`
    /// means it is nowhere to be found and must be fetched again.
    fn recover(&mut self, intent: &str) -> io::Result<bool>;
}
