//! Waiting for mail in the selected folder with IDLE (RFC 2177): the
//! daemon's IDLE tasks use it between polls.

use std::future::Future;
use std::time::Duration;

use tracing::debug;

use super::{Imap, TRACE, codec};
use crate::error::{Error, Kind};

/// Why an [`Imap::idle`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The folder has new mail.
    NewMail,
    /// The IDLE lasted its whole duration (or the server ended it).
    Timeout,
    /// The caller's `interrupt` completed.
    Interrupted,
}

impl Imap {
    /// Whether the server supports IDLE (RFC 2177).
    pub fn has_idle(&self) -> bool {
        self.session.caps.contains("IDLE")
    }

    /// Waits in the selected folder, with IDLE, until new mail arrives,
    /// `duration` passes, or `interrupt` completes; then ends the IDLE and
    /// says which it was. The session is ready for other commands after an
    /// `Ok`, and unusable after an `Err`.
    pub async fn idle(
        &mut self,
        duration: Duration,
        interrupt: impl Future<Output = ()>,
    ) -> Result<Woken, Error> {
        // A body fetch may still await its completion (its body was handed
        // over already): read it first, IDLE wants the line to itself.
        while !self.in_flight.is_empty() {
            let response = self.read_plain().await?;
            self.untagged(response)?;
        }
        let (exists, listed) = self
            .selected
            .as_ref()
            .map_or((0, 0), |s| (s.exists, s.listed));
        if exists > listed {
            // Mail arrived after the last listing, and the server said so
            // in an answer to another command.
            return Ok(Woken::NewMail);
        }
        let tag = self.session.tag();
        let mut idle = codec::Idle::new(&tag, exists);
        debug!(target: TRACE, "C: {tag} IDLE");
        self.session.wire.write_all(&idle.command()).await?;
        // While idling, the server is silent for as long as nothing happens.
        let normal = self
            .session
            .wire
            .set_timeout(duration + Duration::from_secs(60));
        let result = self.wait_idle(&mut idle, duration, normal, interrupt).await;
        self.session.wire.set_timeout(normal);
        result
    }

    /// Waits for the end of an IDLE; `normal` is the timeout commands have,
    /// which applies again from the moment `DONE` is sent.
    async fn wait_idle(
        &mut self,
        idle: &mut codec::Idle,
        duration: Duration,
        normal: Duration,
        interrupt: impl Future<Output = ()>,
    ) -> Result<Woken, Error> {
        let deadline = tokio::time::sleep(duration);
        tokio::pin!(deadline);
        tokio::pin!(interrupt);
        let mut woken = None;
        loop {
            // A read in progress may be dropped below: `wire` buffers
            // partial lines, so nothing is lost unless a response carrying
            // a literal was cut between its parts, which IDLE's untagged
            // responses (EXISTS, EXPUNGE, FETCH FLAGS) do not have.
            let response = if idle.is_idling() && woken.is_none() {
                tokio::select! {
                    response = self.read_plain() => response?,
                    () = &mut deadline => {
                        woken = Some(Woken::Timeout);
                        self.end_idle(idle, normal).await?;
                        continue;
                    }
                    () = &mut interrupt => {
                        woken = Some(Woken::Interrupted);
                        self.end_idle(idle, normal).await?;
                        continue;
                    }
                }
            } else {
                self.read_plain().await?
            };
            let event = idle.on_response(&response).map_err(|err| {
                self.session
                    .error(Kind::Protocol, &format!("during IDLE: {err}"))
            })?;
            match event {
                codec::IdleEvent::Started => {}
                codec::IdleEvent::NewMail { exists } => {
                    if let Some(selected) = &mut self.selected {
                        selected.exists = exists;
                    }
                    if woken.is_none() {
                        woken = Some(Woken::NewMail);
                        self.end_idle(idle, normal).await?;
                    }
                }
                codec::IdleEvent::Nothing => self.untagged(response)?,
                // The server may end an IDLE by itself: renew it.
                codec::IdleEvent::Finished => return Ok(woken.unwrap_or(Woken::Timeout)),
                codec::IdleEvent::Refused(text) => {
                    return Err(self
                        .session
                        .error(Kind::Server, &format!("IDLE failed: {text}")));
                }
                codec::IdleEvent::Bye(text) => {
                    return Err(self.session.error(
                        Kind::Connection,
                        &format!("the server ended the session: {text}"),
                    ));
                }
            }
        }
    }

    /// Sends `DONE`. The server's completion is an ordinary reply: a
    /// server that trickles after it must not keep the IDLE's long wait.
    async fn end_idle(&mut self, idle: &mut codec::Idle, normal: Duration) -> Result<(), Error> {
        if idle.done() {
            debug!(target: TRACE, "C: DONE");
            self.session.wire.set_timeout(normal);
            self.session.wire.write_all(codec::Idle::DONE).await?;
        }
        Ok(())
    }
}
