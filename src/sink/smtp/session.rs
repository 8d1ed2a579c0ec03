//! One SMTP or LMTP session: greeting, EHLO/LHLO, STARTTLS, AUTH, and the
//! envelope of each transaction. Message data is the writer's business
//! (see `mod.rs`); this file only knows commands and replies.

use super::codec::{self, Capabilities, Reply};
use super::conn::Conn;
use crate::auth::{self, Mechanism, SASL_CANCEL, SaslDriver};
use crate::config::{AuthMethod, MtaProtocol, MtaTarget, Secret, TlsMode};
use crate::error::{Error, Kind};
use crate::net::TlsOptions;

/// Why a transaction was refused, in the server's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Temporary(String),
    Permanent(String),
}

/// How the envelope of a transaction went.
pub enum Envelope {
    /// DATA got 354: message data may follow. `recipients` replies will
    /// follow the end of data for LMTP.
    Go { recipients: usize },
    /// Refused before DATA was accepted; the session needs an RSET before
    /// the next transaction.
    Refused(Refusal),
    /// Refused, but the server already said 354 to a pipelined DATA: the
    /// session is in data mode and can only be dropped (sending `.` would
    /// deliver an empty message to the recipients it took).
    RefusedInData(Refusal),
}

pub struct Session {
    pub conn: Conn,
    pub capabilities: Capabilities,
    pub protocol: MtaProtocol,
    /// A refused transaction left state on the server: RSET before reuse.
    pub needs_reset: bool,
    /// Transactions started on this session; a reused session may have
    /// been closed by the server while idle.
    pub transactions: usize,
}

impl Session {
    /// Connects, greets, upgrades to TLS as configured, and logs in when a
    /// username is configured.
    pub async fn open(
        target: &MtaTarget,
        password: Option<&Secret>,
        helo_name: &str,
    ) -> Result<Session, Error> {
        let server = &target.server;
        let tls = TlsOptions {
            ca_file: server.ca_file.clone(),
            fingerprint: server.fingerprint,
        };
        let mut conn = Conn::open(server, target.socket.as_deref(), &tls).await?;
        let greeting = conn.read_reply().await?;
        if greeting.code != 220 {
            return Err(Error::new(
                Kind::Server,
                format!(
                    "{}: the server refused the session: {greeting}",
                    conn.peer()
                ),
            ));
        }
        let helo_name = sanitize_helo(helo_name);
        let mut capabilities = hello(&mut conn, target.protocol, &helo_name).await?;
        if server.tls == TlsMode::StartTls {
            if !capabilities.starttls {
                return Err(Error::new(
                    Kind::Connection,
                    format!(
                        "{}: the server does not offer STARTTLS, which the configuration requires; refusing to continue",
                        conn.peer()
                    ),
                ));
            }
            conn.send(b"STARTTLS\r\n", false).await?;
            let reply = conn.read_reply().await?;
            if reply.code != 220 {
                return Err(Error::new(
                    Kind::Connection,
                    format!("{}: STARTTLS refused: {reply}", conn.peer()),
                ));
            }
            conn = conn.start_tls(&tls).await?;
            // RFC 3207: forget everything learnt before TLS.
            capabilities = hello(&mut conn, target.protocol, &helo_name).await?;
        }
        let mut session = Session {
            conn,
            capabilities,
            protocol: target.protocol,
            needs_reset: false,
            transactions: 0,
        };
        if let Some(username) = &server.username {
            let Some(password) = password else {
                return Err(Error::new(
                    Kind::Config,
                    format!(
                        "{}: a delivery username is set but no password",
                        session.conn.peer()
                    ),
                ));
            };
            session.authenticate(target, username, password).await?;
        }
        Ok(session)
    }

    async fn authenticate(
        &mut self,
        target: &MtaTarget,
        username: &str,
        password: &Secret,
    ) -> Result<(), Error> {
        let server = &target.server;
        let peer = self.conn.peer().to_owned();
        let may_reveal = self.conn.is_tls() || self.conn.is_local() || server.allow_plaintext_auth;
        let offered = &self.capabilities.auth;
        let mechanism = match server.auth {
            AuthMethod::Auto => {
                Mechanism::strongest(offered.iter().map(String::as_str), may_reveal).ok_or_else(
                    || {
                        Error::new(
                            Kind::Auth,
                            format!(
                                "{peer}: no usable AUTH mechanism (offered: {}{})",
                                if offered.is_empty() {
                                    "none".to_owned()
                                } else {
                                    offered.join(" ")
                                },
                                if may_reveal {
                                    ""
                                } else {
                                    "; PLAIN and LOGIN are not used over an unencrypted link"
                                }
                            ),
                        )
                    },
                )?
            }
            explicit => Mechanism::configured(explicit).ok_or_else(|| {
                Error::new(
                    Kind::Config,
                    format!("{peer}: this AUTH method does not exist in SMTP"),
                )
            })?,
        };
        if !offered.iter().any(|name| name == mechanism.name()) {
            return Err(Error::new(
                Kind::Auth,
                format!(
                    "{peer}: the server does not offer AUTH {}",
                    mechanism.name()
                ),
            ));
        }
        if mechanism.reveals_secret() && !may_reveal {
            let refusal = auth::reveal_refusal(&format!("AUTH {}", mechanism.name()));
            return Err(Error::new(Kind::Auth, format!("{peer}: {refusal}")));
        }
        let mut sasl = SaslDriver::new(
            mechanism,
            username,
            password.expose(),
            &server.host,
            server.port,
        );
        let command = match sasl.command_argument(true) {
            Some(argument) => format!("AUTH {} {argument}\r\n", mechanism.name()),
            None => format!("AUTH {}\r\n", mechanism.name()),
        };
        self.conn.send(command.as_bytes(), false).await?;
        loop {
            let reply = self.conn.read_reply().await?;
            match reply.code {
                235 => return sasl.check_success().map_err(|err| err.context(&peer)),
                334 => {
                    let challenge = reply.lines.first().map(|l| l.trim()).unwrap_or_default();
                    let (line, failure) = match sasl.answer(challenge.as_bytes()) {
                        Ok(response) => (response, None),
                        Err(err) => (SASL_CANCEL.to_owned(), Some(err)),
                    };
                    self.conn
                        .send(format!("{line}\r\n").as_bytes(), true)
                        .await?;
                    if let Some(err) = failure {
                        // The server ends the cancelled exchange with a 501.
                        let _ = self.conn.read_reply().await;
                        return Err(err.context(&peer));
                    }
                }
                _ => {
                    return Err(Error::new(
                        Kind::Auth,
                        format!("{peer}: AUTH {} failed: {reply}", mechanism.name()),
                    ));
                }
            }
        }
    }

    /// Sends RSET; an error means the session is unusable.
    pub async fn reset(&mut self) -> Result<(), Error> {
        self.conn.send(b"RSET\r\n", false).await?;
        let reply = self.conn.read_reply().await?;
        if !reply.is_success() {
            return Err(Error::new(
                Kind::Server,
                format!("{}: RSET refused: {reply}", self.conn.peer()),
            ));
        }
        self.needs_reset = false;
        Ok(())
    }

    /// Ends the session politely; errors do not matter any more.
    pub async fn quit(mut self) {
        if self.conn.send(b"QUIT\r\n", false).await.is_ok() {
            let _ = self.conn.read_reply().await;
        }
    }

    /// MAIL FROM, RCPT TO for each recipient and DATA, in one write when
    /// the server does PIPELINING. A refusal by MAIL, by any RCPT or by
    /// DATA refuses the whole message: nothing is ever delivered to some
    /// recipients only. A 4xx anywhere makes the refusal temporary, even
    /// with a 5xx elsewhere, so that the message stays where it is.
    pub async fn envelope(
        &mut self,
        sender: &str,
        recipients: &[String],
        smtputf8: bool,
    ) -> Result<Envelope, Error> {
        self.transactions += 1;
        let eight_bit = self.capabilities.eight_bit_mime;
        let mail = codec::mail_from(sender, eight_bit, smtputf8);
        let mut refusal = None;
        if self.capabilities.pipelining {
            let mut commands = mail;
            for recipient in recipients {
                commands.extend_from_slice(&codec::rcpt_to(recipient));
            }
            commands.extend_from_slice(b"DATA\r\n");
            self.conn.send(&commands, false).await?;
            let reply = self.conn.read_reply().await?;
            self.closing(&reply)?;
            note(&mut refusal, "MAIL FROM", &reply);
            for recipient in recipients {
                let reply = self.conn.read_reply().await?;
                note(&mut refusal, &format!("RCPT TO:<{recipient}>"), &reply);
            }
            let reply = self.conn.read_reply().await?;
            if reply.code == 354 {
                return Ok(match refusal {
                    None => Envelope::Go {
                        recipients: recipients.len(),
                    },
                    Some(refusal) => Envelope::RefusedInData(refusal),
                });
            }
            note(&mut refusal, "DATA", &reply);
        } else {
            self.conn.send(&mail, false).await?;
            let reply = self.conn.read_reply().await?;
            self.closing(&reply)?;
            note(&mut refusal, "MAIL FROM", &reply);
            for recipient in recipients {
                if refusal.is_some() {
                    break;
                }
                self.conn.send(&codec::rcpt_to(recipient), false).await?;
                let reply = self.conn.read_reply().await?;
                note(&mut refusal, &format!("RCPT TO:<{recipient}>"), &reply);
            }
            if refusal.is_none() {
                self.conn.send(b"DATA\r\n", false).await?;
                let reply = self.conn.read_reply().await?;
                if reply.code == 354 {
                    return Ok(Envelope::Go {
                        recipients: recipients.len(),
                    });
                }
                note(&mut refusal, "DATA", &reply);
            }
        }
        self.needs_reset = true;
        Ok(Envelope::Refused(refusal.unwrap_or_else(|| {
            Refusal::Temporary("the server refused DATA".to_owned())
        })))
    }

    /// A 421 to MAIL means the server is closing the session (an idle
    /// timeout, a shutdown), not that it refuses this message.
    fn closing(&self, reply: &Reply) -> Result<(), Error> {
        if reply.code == 421 {
            return Err(Error::new(
                Kind::Connection,
                format!(
                    "{}: the server is closing the session: {reply}",
                    self.conn.peer()
                ),
            ));
        }
        Ok(())
    }

    /// Reads the reply (SMTP) or the replies, one per recipient (LMTP), to
    /// the end of data.
    pub async fn data_replies(&mut self, recipients: usize) -> Result<DataReplies, Error> {
        let mut replies = DataReplies::default();
        match self.protocol {
            MtaProtocol::Smtp => {
                let reply = self.conn.read_reply().await?;
                note(&mut replies.refusal, "end of data", &reply);
                if reply.is_success() {
                    replies.accepted.extend(0..recipients);
                }
            }
            MtaProtocol::Lmtp => {
                for index in 0..recipients.max(1) {
                    let reply = self.conn.read_reply().await?;
                    note(&mut replies.refusal, "end of data", &reply);
                    if reply.is_success() {
                        replies.accepted.push(index);
                    }
                }
            }
        }
        Ok(replies)
    }
}

/// What the server said to the end of data.
#[derive(Debug, Default)]
pub struct DataReplies {
    /// `None`: every reply is 2xx.
    pub refusal: Option<Refusal>,
    /// The recipients (by their place in RCPT order) that took the message:
    /// all or none for SMTP, each its own for LMTP.
    pub accepted: Vec<usize>,
}

/// Records a non-2xx reply into the transaction's refusal; temporary wins.
fn note(refusal: &mut Option<Refusal>, step: &str, reply: &Reply) {
    if reply.is_success() {
        return;
    }
    let text = format!("{reply} (after {step})");
    let this = if reply.is_permanent() {
        Refusal::Permanent(text)
    } else {
        // 4xx, and anything unexpected (a 3xx where 2xx belongs): not a
        // refusal for good.
        Refusal::Temporary(text)
    };
    *refusal = match (refusal.take(), this) {
        (None, this) => Some(this),
        (Some(Refusal::Temporary(first)), _) => Some(Refusal::Temporary(first)),
        (Some(Refusal::Permanent(_)), Refusal::Temporary(text)) => Some(Refusal::Temporary(text)),
        (Some(Refusal::Permanent(first)), Refusal::Permanent(_)) => Some(Refusal::Permanent(first)),
    };
}

/// EHLO (LHLO for LMTP), falling back to HELO for an SMTP server that does
/// not know EHLO (then no extension is used).
async fn hello(
    conn: &mut Conn,
    protocol: MtaProtocol,
    helo_name: &str,
) -> Result<Capabilities, Error> {
    let verb = match protocol {
        MtaProtocol::Smtp => "EHLO",
        MtaProtocol::Lmtp => "LHLO",
    };
    conn.send(format!("{verb} {helo_name}\r\n").as_bytes(), false)
        .await?;
    let reply = conn.read_reply().await?;
    if reply.is_success() {
        return Ok(Capabilities::parse(&reply));
    }
    if protocol == MtaProtocol::Smtp && reply.is_permanent() {
        conn.send(format!("HELO {helo_name}\r\n").as_bytes(), false)
            .await?;
        let reply = conn.read_reply().await?;
        if reply.is_success() {
            return Ok(Capabilities::default());
        }
    }
    Err(Error::new(
        Kind::Server,
        format!("{}: {verb} refused: {reply}", conn.peer()),
    ))
}

/// A name fit for EHLO: anything that could break the command line becomes
/// `localhost`.
fn sanitize_helo(name: &str) -> String {
    let fit = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if fit {
        name.to_owned()
    } else {
        "localhost".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Reply {
        Reply {
            code,
            lines: vec![format!("{code} text")],
        }
    }

    #[test]
    fn temporary_refusals_win_over_permanent_ones() {
        let mut refusal = None;
        note(&mut refusal, "a", &reply(250));
        assert_eq!(refusal, None);
        note(&mut refusal, "b", &reply(550));
        assert!(matches!(&refusal, Some(Refusal::Permanent(t)) if t.contains("after b")));
        note(&mut refusal, "c", &reply(451));
        assert!(matches!(&refusal, Some(Refusal::Temporary(t)) if t.contains("after c")));
        note(&mut refusal, "d", &reply(554));
        assert!(matches!(&refusal, Some(Refusal::Temporary(t)) if t.contains("after c")));
    }

    #[test]
    fn helo_names_cannot_inject() {
        assert_eq!(sanitize_helo("mail.example.org"), "mail.example.org");
        assert_eq!(sanitize_helo("[127.0.0.1]"), "[127.0.0.1]");
        assert_eq!(sanitize_helo("x\r\nRCPT TO:<a@b>"), "localhost");
        assert_eq!(sanitize_helo(""), "localhost");
    }
}
