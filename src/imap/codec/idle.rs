//! The IDLE command (RFC 2177), sans-IO.

use super::{ParseError, Response, Status, Untagged};

/// The IDLE command (RFC 2177) as a state machine: the client sends
/// [`Idle::command`], feeds every response to [`Idle::on_response`], and
/// sends [`Idle::DONE`] (after calling [`Idle::done`]) to end it, when new
/// mail is announced or when it wants to stop waiting.
#[derive(Debug)]
pub struct Idle {
    tag: String,
    state: IdleState,
    /// The folder's message count, to tell new mail from other changes.
    exists: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleState {
    /// `IDLE` sent, no `+` yet.
    Requested,
    Idling,
    /// `DONE` sent, waiting for the completion.
    Ending,
    Finished,
}

/// What a response means to an IDLE in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleEvent {
    /// The server accepted the command: waiting starts.
    Started,
    /// The folder now holds more messages than before.
    NewMail { exists: u32 },
    /// Nothing that matters (flags changed, a message expunged…).
    Nothing,
    /// The command completed: after `DONE`, or because the server ended it.
    Finished,
    /// The server refused IDLE (`NO`/`BAD`).
    Refused(String),
    /// The server is closing the connection (`BYE`).
    Bye(String),
}

impl Idle {
    /// Ends the IDLE command; sent as is, without a tag.
    pub const DONE: &'static [u8] = b"DONE\r\n";

    /// An IDLE with this tag, in a folder of `exists` messages.
    pub fn new(tag: &str, exists: u32) -> Idle {
        Idle {
            tag: tag.to_owned(),
            state: IdleState::Requested,
            exists,
        }
    }

    /// The command line to send.
    pub fn command(&self) -> Vec<u8> {
        format!("{} IDLE\r\n", self.tag).into_bytes()
    }

    /// Notes that `DONE` is being sent. Returns false if it must not be:
    /// before the server's `+`, or after the command finished.
    pub fn done(&mut self) -> bool {
        if self.state == IdleState::Idling {
            self.state = IdleState::Ending;
            true
        } else {
            false
        }
    }

    /// Whether the client waits for events (not for the `+` or for the
    /// completion).
    pub fn is_idling(&self) -> bool {
        self.state == IdleState::Idling
    }

    pub fn is_finished(&self) -> bool {
        self.state == IdleState::Finished
    }

    /// Interprets one response. `Err` for a response that has no place in
    /// an IDLE (a `+` out of turn, another command's completion).
    pub fn on_response(&mut self, response: &Response) -> Result<IdleEvent, ParseError> {
        let unexpected = |what: &'static str| Err(ParseError::new(what, b""));
        match response {
            Response::Continue(_) if self.state == IdleState::Requested => {
                self.state = IdleState::Idling;
                Ok(IdleEvent::Started)
            }
            Response::Continue(_) => unexpected("unexpected continuation during IDLE"),
            Response::Tagged {
                tag, status, text, ..
            } if *tag == self.tag => {
                if self.state == IdleState::Finished {
                    return unexpected("IDLE completed twice");
                }
                self.state = IdleState::Finished;
                match status {
                    Status::Ok => Ok(IdleEvent::Finished),
                    _ => Ok(IdleEvent::Refused(text.clone())),
                }
            }
            Response::Tagged { .. } => unexpected("completion of another command during IDLE"),
            Response::Untagged(Untagged::Exists(exists)) => {
                let grew = *exists > self.exists;
                self.exists = *exists;
                Ok(if grew {
                    IdleEvent::NewMail { exists: *exists }
                } else {
                    IdleEvent::Nothing
                })
            }
            Response::Untagged(Untagged::Expunge(_)) => {
                self.exists = self.exists.saturating_sub(1);
                Ok(IdleEvent::Nothing)
            }
            Response::Untagged(Untagged::Status {
                status: Status::Bye,
                text,
                ..
            }) => Ok(IdleEvent::Bye(text.clone())),
            Response::Untagged(_) => Ok(IdleEvent::Nothing),
        }
    }
}
