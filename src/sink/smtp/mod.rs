//! Delivery to an MTA over SMTP (`smtp://`, `smtps://`, a submission relay
//! with STARTTLS) or to an LMTP server (`lmtp:/path/to/socket`,
//! `lmtp://host:port`).
//!
//! A message streams through: only its header block is held (to learn the
//! envelope sender from Return-Path, and for a bounce), then MAIL FROM, the
//! RCPTs and DATA go out (in one write with PIPELINING), and the rest flows
//! through the [`codec::DataEncoder`] (CRLF, dot-stuffing)
//! into the socket in 64 KiB writes. The MTA's 250 to the final `.` makes
//! the delivery final, so the sink stages [`Delivered`] and its committer
//! is [`AlreadyDurable`].
//!
//! One session serves every message of a poll: it is opened by the first
//! [`begin`](Sink::begin) (a poll with no new mail never touches the MTA),
//! reset with RSET after a refused transaction, reopened when the server
//! hung up while idle, and ended with QUIT by [`close`](Sink::close).
//!
//! Outcomes, per message:
//!
//! * every reply 2xx: `Accepted`.
//! * a 4xx anywhere (MAIL, any RCPT, DATA, end of data; for LMTP any
//!   recipient's reply after the data): `TemporaryFailure`, the message
//!   stays on the source server. For LMTP, when some recipients said 2xx
//!   to the data and others did not, the answer is `Partial`: the pipeline
//!   journals who has it, and the next attempt goes to the others only.
//! * a 5xx (and no 4xx): `PermanentFailure`. If any RCPT is refused the
//!   whole message is refused (RSET), so nothing is ever half-delivered.
//! * the message exceeds the SIZE the server announced: `PermanentFailure`
//!   as soon as that many bytes have streamed; the session is dropped
//!   without the final `.` (an RSET cannot interrupt DATA), so the server
//!   discards what it got.
//! * the server speaks or hangs up during DATA: `TemporaryFailure` with its
//!   words if it sent any; the connection is dropped and the next message
//!   opens a new one.
//! * the connection breaks (or times out) with no reply: `finish` returns
//!   an error of kind [`Kind::Delivery`], which ends the poll: an MTA that
//!   went away is not retried for every remaining message. A break after
//!   the final `.` but before the reply is the same: the MTA may or may not
//!   have taken the message, and it stays on the source (a possible
//!   duplicate is preferred to a possible loss).
//!
//! [`abort`](Sink::abort) during DATA drops the connection without the
//! final `.`, so no MTA ever delivers a truncated message.

pub mod codec;
mod conn;
mod session;

use std::io;
use std::sync::Arc;

use self::codec::DataEncoder;
use self::session::{DataReplies, Envelope, Refusal, Session};
use super::envelope::HeaderCapture;
use super::{Acceptance, AlreadyDurable, Delivered, MessageWriter, Rejection, Sink};
use crate::address::{Sender, is_safe_path};
use crate::config::{EnvelopeFrom, MtaProtocol, MtaTarget, Secret};
use crate::error::{Error, Kind};

/// Encoded data is handed to the socket in writes of about this size.
const WRITE_BUFFER: usize = 64 * 1024;

/// What every message of the sink shares.
struct Settings {
    target: MtaTarget,
    password: Option<Secret>,
    recipients: Vec<String>,
    envelope_from: EnvelopeFrom,
    helo_name: String,
    description: String,
}

pub struct SmtpSink {
    settings: Arc<Settings>,
    session: Option<Session>,
}

impl SmtpSink {
    /// A sink delivering to `target`, to `recipients` (which must not be
    /// empty: the config fills in the local user), with the envelope sender
    /// from `envelope_from`. `password` is used only when the target's
    /// `server.username` is set. Nothing is connected until the first
    /// message.
    pub fn new(
        target: MtaTarget,
        password: Option<Secret>,
        recipients: Vec<String>,
        envelope_from: EnvelopeFrom,
        helo_name: String,
    ) -> SmtpSink {
        let description = describe_target(&target);
        SmtpSink {
            settings: Arc::new(Settings {
                target,
                password,
                recipients,
                envelope_from,
                helo_name,
                description,
            }),
            session: None,
        }
    }

    /// Errors are of kind [`Kind::Delivery`] (exit code 10, as fetchmail's
    /// SMTP errors), TLS included: exit code 2 would send the user looking
    /// at the source server. A refused AUTH stays [`Kind::Auth`], as for an
    /// IMAP destination, so that the daemon backs off long enough not to
    /// get the relay account locked; its message names the MTA. Config
    /// errors stay config errors.
    async fn open_session(&self) -> Result<Session, Error> {
        let settings = &self.settings;
        Session::open(
            &settings.target,
            settings.password.as_ref(),
            &settings.helo_name,
        )
        .await
        .map_err(|err| {
            let kind = match err.kind {
                Kind::Config | Kind::Auth => err.kind,
                _ => Kind::Delivery,
            };
            Error::new(kind, format!("{}: {}", settings.description, err.message))
        })
    }

    /// A session ready for a new transaction: the current one if it is
    /// still usable, else a new one.
    async fn ready_session(&mut self) -> Result<Session, Error> {
        if let Some(mut session) = self.session.take() {
            if session.conn.spoke_while_idle().await {
                tracing::debug!(
                    "{}: the server spoke or hung up while idle; reconnecting",
                    self.settings.description
                );
            } else if !session.needs_reset {
                return Ok(session);
            } else {
                match session.reset().await {
                    Ok(()) => return Ok(session),
                    Err(err) => {
                        tracing::debug!("{}: {err}; reconnecting", self.settings.description)
                    }
                }
            }
        }
        self.open_session().await
    }
}

/// `smtp 127.0.0.1:25`, `lmtp /run/dovecot/lmtp`.
fn describe_target(target: &MtaTarget) -> String {
    let protocol = match target.protocol {
        MtaProtocol::Smtp => "smtp",
        MtaProtocol::Lmtp => "lmtp",
    };
    match &target.socket {
        Some(path) => format!("{protocol} {}", path.display()),
        None => format!("{protocol} {}", target.server.authority()),
    }
}

enum State {
    /// Collecting the header block; nothing sent yet.
    Headers,
    /// DATA accepted; message data is streaming.
    Data { recipients: usize },
    /// Refused; the rest of the message is read and dropped.
    Refused(Refusal),
    /// The connection broke; the rest of the message is read and dropped.
    Broken(Error),
}

pub struct SmtpWriter {
    settings: Arc<Settings>,
    /// This message's recipients: the configured ones, or those of them
    /// that do not have it yet.
    recipients: Vec<String>,
    session: Option<Session>,
    state: State,
    capture: HeaderCapture,
    encoder: DataEncoder,
    out: Vec<u8>,
    /// Bytes of the message written so far.
    size: u64,
}

impl SmtpWriter {
    /// The envelope sender: validated by `Sender::parse`, so it cannot
    /// break out of the MAIL command.
    fn sender(&self) -> String {
        let sender = match &self.settings.envelope_from {
            EnvelopeFrom::Fixed(sender) => sender.clone(),
            EnvelopeFrom::ReturnPath => self.capture.return_path().unwrap_or(Sender::Null),
        };
        sender.address().to_owned()
    }

    /// Starts the transaction once the header block is known.
    async fn start_transaction(&mut self) {
        let sender = self.sender();
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let recipients = &self.recipients;
        let non_ascii_envelope = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        let non_ascii_headers = !self.capture.headers().is_ascii();
        let offered = session.capabilities.smtputf8;
        if non_ascii_envelope && !offered {
            self.state = State::Refused(Refusal::Permanent(format!(
                "{}: the envelope has non-ASCII addresses and the server does not offer SMTPUTF8",
                self.settings.description
            )));
            return;
        }
        // UTF-8 in the headers alone is common enough in the wild that a
        // server without SMTPUTF8 still gets the message as it is.
        let smtputf8 = offered && (non_ascii_envelope || non_ascii_headers);
        let mut result = session.envelope(&sender, recipients, smtputf8).await;
        if result.is_err() && session.transactions > 1 {
            // The server may have closed a reused session while it was idle
            // (after the check in `begin`): nothing of this message was
            // taken yet, so a new session can simply try again.
            tracing::debug!(
                "{}: the session broke at MAIL; reconnecting",
                self.settings.description
            );
            let settings = &self.settings;
            match Session::open(
                &settings.target,
                settings.password.as_ref(),
                &settings.helo_name,
            )
            .await
            {
                Ok(fresh) => {
                    let session = self.session.insert(fresh);
                    result = session.envelope(&sender, recipients, smtputf8).await;
                }
                Err(err) => result = Err(err),
            }
        }
        match result {
            Ok(Envelope::Go { recipients }) => {
                self.state = State::Data { recipients };
                let headers = self.capture.headers();
                self.encoder.encode(headers, &mut self.out);
            }
            Ok(Envelope::Refused(refusal)) => self.state = State::Refused(refusal),
            Ok(Envelope::RefusedInData(refusal)) => {
                self.session = None;
                self.state = State::Refused(refusal);
            }
            Err(err) => self.break_off(err),
        }
    }

    fn break_off(&mut self, err: Error) {
        self.session = None;
        self.state = State::Broken(err);
    }

    /// Hands the encoded data to the socket. A failure means the server hung
    /// up (or stalled) during DATA: its last words, if any, make the refusal.
    async fn flush(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if let Err(err) = session.conn.write_all(&self.out).await {
            self.out.clear();
            // A server that rejects mid-stream usually says why first.
            match session.conn.read_reply().await {
                Ok(reply) => {
                    self.session = None;
                    self.state = State::Refused(Refusal::Temporary(format!(
                        "{reply} (the server ended the session during DATA)"
                    )));
                }
                Err(_) => self.break_off(err),
            }
            return;
        }
        self.out.clear();
    }

    /// Streams body bytes, refusing the message once it outgrows the
    /// server's SIZE.
    async fn stream(&mut self, data: &[u8]) {
        if let Some(limit) = self
            .session
            .as_ref()
            .and_then(|s| s.capabilities.size_limit)
            && self.size > limit
        {
            // No final `.`: dropping the connection makes the server discard
            // what it got. RSET would only be more message data now.
            self.session = None;
            self.out.clear();
            self.state = State::Refused(Refusal::Permanent(format!(
                "552 5.3.4 the message is larger than the {limit} bytes {} accepts",
                self.settings.description
            )));
            return;
        }
        self.encoder.encode(data, &mut self.out);
        if self.out.len() >= WRITE_BUFFER {
            self.flush().await;
        }
    }

    fn rejection(&self, reason: String) -> Rejection {
        let sender = match self.capture.return_path() {
            Some(Sender::Address(address)) => Some(address),
            Some(Sender::Null) | None => None,
        };
        Rejection {
            reason,
            sender,
            headers: self.capture.headers().to_vec(),
        }
    }

    fn refused(&self, refusal: Refusal) -> Acceptance<Delivered> {
        match refusal {
            Refusal::Temporary(reason) => Acceptance::TemporaryFailure(reason),
            Refusal::Permanent(reason) => Acceptance::PermanentFailure(self.rejection(reason)),
        }
    }
}

impl MessageWriter for SmtpWriter {
    /// Never fails: a refusal or a broken connection is remembered, the rest
    /// of the message is dropped, and [`finish`](Sink::finish) reports it.
    /// So the source reads the message to its end and stays usable.
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.size += chunk.len() as u64;
        match self.state {
            State::Headers => {
                let taken = self.capture.feed(chunk);
                if self.capture.is_complete() {
                    self.start_transaction().await;
                    if matches!(self.state, State::Data { .. }) {
                        self.stream(&chunk[taken..]).await;
                    }
                }
            }
            State::Data { .. } => self.stream(chunk).await,
            State::Refused(_) | State::Broken(_) => {}
        }
        Ok(())
    }
}

impl Sink for SmtpSink {
    type Writer = SmtpWriter;
    type Staged = Delivered;
    type Committer = AlreadyDurable;

    /// Another session to the same MTA (opened at its first message): an
    /// MTA syncs each message to disk before its 250, so several sessions
    /// overlap those waits.
    fn fork(&self) -> Option<SmtpSink> {
        Some(SmtpSink {
            settings: self.settings.clone(),
            session: None,
        })
    }

    fn describe(&self) -> String {
        self.settings.description.clone()
    }

    async fn begin(&mut self) -> Result<SmtpWriter, Error> {
        let recipients = self.settings.recipients.clone();
        self.begin_to(&recipients).await
    }

    async fn begin_to(&mut self, recipients: &[String]) -> Result<SmtpWriter, Error> {
        if recipients.is_empty() || !recipients.iter().all(|r| is_safe_path(r)) {
            return Err(Error::new(
                Kind::Config,
                format!(
                    "{}: the recipients {recipients:?} are not usable in RCPT TO",
                    self.settings.description
                ),
            ));
        }
        let session = self.ready_session().await?;
        Ok(SmtpWriter {
            settings: self.settings.clone(),
            recipients: recipients.to_vec(),
            session: Some(session),
            state: State::Headers,
            capture: HeaderCapture::new(),
            encoder: DataEncoder::new(),
            out: Vec::with_capacity(WRITE_BUFFER + WRITE_BUFFER / 8),
            size: 0,
        })
    }

    async fn finish(&mut self, mut writer: SmtpWriter) -> Result<Acceptance<Delivered>, Error> {
        if matches!(writer.state, State::Headers) {
            // A message that is all header block (or nothing at all).
            writer.start_transaction().await;
        }
        if let State::Data { .. } = writer.state {
            // The limit is checked before each chunk; check the last one too.
            writer.stream(&[]).await;
        }
        let outcome = match std::mem::replace(&mut writer.state, State::Headers) {
            State::Headers => unreachable!("the transaction was started above"),
            State::Refused(refusal) => Ok(writer.refused(refusal)),
            State::Broken(err) => Err(err),
            State::Data { recipients } => {
                writer.encoder.finish(&mut writer.out);
                writer.flush().await;
                match std::mem::replace(&mut writer.state, State::Headers) {
                    State::Refused(refusal) => Ok(writer.refused(refusal)),
                    State::Broken(err) => Err(err),
                    _ => {
                        let session = writer.session.as_mut().expect("flushed without failing");
                        match session.data_replies(recipients).await {
                            Ok(DataReplies { refusal: None, .. }) => {
                                Ok(Acceptance::Accepted(Delivered { size: writer.size }))
                            }
                            Ok(DataReplies {
                                refusal: Some(refusal),
                                accepted,
                            }) if !accepted.is_empty() => Ok(Acceptance::Partial {
                                delivered_to: accepted
                                    .iter()
                                    .map(|&index| writer.recipients[index].clone())
                                    .collect(),
                                failure: Box::new(writer.refused(refusal)),
                            }),
                            Ok(DataReplies {
                                refusal: Some(refusal),
                                ..
                            }) => Ok(writer.refused(refusal)),
                            Err(err) => {
                                writer.session = None;
                                Err(err)
                            }
                        }
                    }
                }
            }
        };
        self.session = writer.session.take();
        outcome.map_err(|err| {
            Error::new(
                Kind::Delivery,
                format!("{}: {}", self.settings.description, err.message),
            )
        })
    }

    fn abort(&mut self, mut writer: SmtpWriter) {
        match writer.state {
            // In DATA, only dropping the connection keeps the server from
            // delivering what it has: it never sees the final `.`.
            State::Data { .. } => {}
            // Nothing sent, or a refused transaction: the session is fine.
            State::Headers | State::Refused(_) => self.session = writer.session.take(),
            State::Broken(_) => {}
        }
    }

    fn committer(&self) -> AlreadyDurable {
        AlreadyDurable
    }

    async fn close(&mut self) {
        if let Some(session) = self.session.take() {
            session.quit().await;
        }
    }
}

/// Sends `message` (a complete bounce, which the `bounce` module composes)
/// to `recipient` with the null envelope sender `MAIL FROM:<>`, on a
/// session of its own. Succeeds only when the server said 250 to the
/// data.
///
/// Never call it for a message whose sender was the null sender (a
/// bounce of a bounce): that is the caller's check, as `Rejection::sender`
/// is `None` then.
pub async fn send_bounce(
    target: &MtaTarget,
    password: Option<&Secret>,
    helo_name: &str,
    recipient: &str,
    message: &[u8],
) -> Result<(), Error> {
    let description = describe_target(target);
    let fail = |what: String| Error::new(Kind::Delivery, format!("{description}: {what}"));
    if !is_safe_path(recipient) || recipient.is_empty() {
        return Err(fail(format!(
            "cannot send a bounce to {recipient:?}: not a usable address"
        )));
    }
    let mut session = Session::open(target, password, helo_name)
        .await
        .map_err(|err| fail(err.message))?;
    let smtputf8 = !recipient.is_ascii();
    if smtputf8 && !session.capabilities.smtputf8 {
        return Err(fail(format!(
            "cannot send a bounce to {recipient}: the server does not offer SMTPUTF8"
        )));
    }
    let recipients = [recipient.to_owned()];
    let outcome = match session.envelope("", &recipients, smtputf8).await {
        Ok(Envelope::Go { recipients }) => {
            let mut encoder = DataEncoder::new();
            let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 8);
            encoder.encode(message, &mut out);
            encoder.finish(&mut out);
            match session.conn.write_all(&out).await {
                Ok(()) => match session.data_replies(recipients).await {
                    Ok(DataReplies { refusal: None, .. }) => Ok(()),
                    Ok(DataReplies {
                        refusal: Some(Refusal::Temporary(reason) | Refusal::Permanent(reason)),
                        ..
                    }) => Err(fail(format!("the bounce was refused: {reason}"))),
                    Err(err) => Err(fail(err.message)),
                },
                Err(err) => Err(fail(err.message)),
            }
        }
        Ok(
            Envelope::Refused(Refusal::Temporary(reason) | Refusal::Permanent(reason))
            | Envelope::RefusedInData(Refusal::Temporary(reason) | Refusal::Permanent(reason)),
        ) => {
            return Err(fail(format!("the bounce was refused: {reason}")));
        }
        Err(err) => return Err(fail(err.message)),
    };
    if outcome.is_ok() {
        session.quit().await;
    }
    outcome
}
