//! POP3 client (RFC 1939, 2449 CAPA/PIPELINING, 2595 STLS, 5034 SASL).
//!
//! [`codec`] holds the parsers and the body decoder; this module drives
//! them over a socket. Commands go through a small queue so that, when the
//! server announces PIPELINING, many RETRs are in flight and a mailbox costs
//! no round trip per message.

pub mod codec;

use std::collections::VecDeque;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tracing::debug;

use self::codec::{BodyDecoder, MAX_LINE, Status};
use super::wire::{ServerSpec, Wire};
use super::{Listed, Listing, Retrieved, Source};
use crate::auth::{self, Mechanism, SaslSession};
use crate::config::{Account, AuthMethod, Secret, TlsMode};
use crate::error::{Error, Kind};
use crate::net::TlsOptions;
use crate::sink::MessageWriter;

/// Commands in flight at once when the server allows pipelining. Enough to
/// keep the server streaming across a high-latency link; small enough that
/// the commands always fit in the socket buffers.
const PIPELINE_WINDOW: usize = 64;

/// Where protocol traces go (`-v`).
const TRACE: &str = "mailfetch::protocol";

/// What the server said about itself in reply to CAPA.
#[derive(Debug, Default)]
struct Capabilities {
    /// CAPA worked at all; without it we know nothing and assume little.
    known: bool,
    stls: bool,
    pipelining: bool,
    uidl: bool,
    user: bool,
    sasl: Vec<String>,
}

impl Capabilities {
    fn parse(lines: &[String]) -> Capabilities {
        let mut caps = Capabilities {
            known: true,
            ..Capabilities::default()
        };
        for line in lines {
            let mut words = line.split_ascii_whitespace();
            let Some(name) = words.next() else { continue };
            match name.to_ascii_uppercase().as_str() {
                "STLS" => caps.stls = true,
                "PIPELINING" => caps.pipelining = true,
                "UIDL" => caps.uidl = true,
                "USER" => caps.user = true,
                "SASL" => caps.sasl = words.map(str::to_owned).collect(),
                _ => {}
            }
        }
        caps
    }
}

/// A command waiting to be sent, with the form safe to log.
struct Command {
    wire: String,
    trace: String,
}

/// A POP3 session in the TRANSACTION state (or on its way there).
pub struct Pop3 {
    wire: Wire,
    queued: VecDeque<Command>,
    /// Messages requested with RETR and not retrieved yet, in order, with
    /// the size LIST announced.
    requested: VecDeque<(u32, Option<u64>)>,
    /// Commands sent whose reply has not been read completely.
    in_flight: usize,
    caps: Capabilities,
    host: String,
}

impl Pop3 {
    /// Connects, secures the link as configured and logs in.
    pub async fn connect(account: &Account, secret: Option<&Secret>) -> Result<Pop3, Error> {
        let (wire, tls) = Wire::open(&ServerSpec::from(account)).await?;
        let mut session = Pop3 {
            wire,
            queued: VecDeque::new(),
            requested: VecDeque::new(),
            in_flight: 0,
            caps: Capabilities::default(),
            host: account.host.clone(),
        };
        let greeting = session.read_line().await?;
        let greeting = match codec::parse_status(&greeting) {
            Some(Status::Ok(text)) => text,
            Some(Status::Err(text)) => {
                return Err(Error::new(
                    Kind::Server,
                    format!("{}: server refused the connection: {text}", account.host),
                ));
            }
            None => return Err(session.unexpected("greeting", &greeting)),
        };
        session.caps = session.capabilities().await?;
        if account.tls == TlsMode::StartTls {
            session = session.start_tls(&tls).await?;
            session.caps = session.capabilities().await?;
        }
        session.authenticate(account, secret, &greeting).await?;
        Ok(session)
    }

    // ---- authentication -------------------------------------------------

    /// Upgrades the connection with STLS; anything short of a verified TLS
    /// session is an error, never a silent fallback to plain text.
    async fn start_tls(mut self, tls: &TlsOptions) -> Result<Pop3, Error> {
        // Without CAPA we cannot know; trying STLS is safe since a refusal
        // aborts below. With CAPA, a missing STLS is refused up front.
        if self.caps.known && !self.caps.stls {
            return Err(Error::new(
                Kind::Connection,
                format!(
                    "{}: tls = \"starttls\" but the server does not offer STLS; refusing to continue without encryption (use tls = \"implicit\" on port 995 if the server supports it)",
                    self.host
                ),
            ));
        }
        match self.simple("STLS".into(), None).await? {
            Status::Ok(_) => {}
            Status::Err(text) => {
                return Err(Error::new(
                    Kind::Connection,
                    format!(
                        "{}: the server refused STLS ({text}); refusing to continue without encryption",
                        self.host
                    ),
                ));
            }
        }
        let wire = self.wire.start_tls(tls).await?;
        Ok(Pop3 { wire, ..self })
    }

    async fn authenticate(
        &mut self,
        account: &Account,
        secret: Option<&Secret>,
        greeting: &str,
    ) -> Result<(), Error> {
        let (secret, may_reveal) = super::credentials(account, secret, self.wire.is_tls())?;
        let apop_stamp = codec::apop_timestamp(greeting);
        let plan = choose_login(account.auth, &self.caps, apop_stamp, may_reveal)
            .map_err(|message| Error::new(Kind::Auth, format!("{}: {message}", self.host)))?;
        debug!(target: TRACE, "{}: logging in with {}", self.host, plan.describe());
        let result = match plan {
            Login::User => self.login_user(&account.username, secret).await,
            Login::Apop => {
                let stamp = apop_stamp.unwrap_or_default();
                let digest = auth::apop_digest(stamp, secret.expose());
                self.simple(
                    format!("APOP {} {digest}", account.username),
                    Some(format!("APOP {} ****", account.username)),
                )
                .await
            }
            Login::Sasl(mechanism) => {
                self.login_sasl(mechanism, &account.username, secret, account.port)
                    .await
            }
        }?;
        match result {
            Status::Ok(_) => Ok(()),
            Status::Err(text) => Err(Error::new(
                Kind::Auth,
                format!(
                    "{}: login as {} failed ({}): {text}",
                    self.host,
                    account.username,
                    plan.describe()
                ),
            )),
        }
    }

    async fn login_user(&mut self, username: &str, secret: &Secret) -> Result<Status, Error> {
        // USER and PASS are pipelined when allowed: one round trip.
        self.queue(format!("USER {username}"), None);
        self.queue(
            format!("PASS {}", secret.expose()),
            Some("PASS ****".into()),
        );
        let user = self.status().await?;
        let pass = self.status().await?;
        Ok(match user {
            Status::Err(text) => Status::Err(text),
            Status::Ok(_) => pass,
        })
    }

    async fn login_sasl(
        &mut self,
        mechanism: Mechanism,
        username: &str,
        secret: &Secret,
        port: u16,
    ) -> Result<Status, Error> {
        let mut sasl = SaslSession::new(mechanism, username, secret.expose(), &self.host, port);
        let command = match sasl.initial_response() {
            Some(initial) if initial.is_empty() => format!("AUTH {} =", mechanism.name()),
            Some(initial) => format!("AUTH {} {}", mechanism.name(), BASE64.encode(initial)),
            None => format!("AUTH {}", mechanism.name()),
        };
        self.queue(command, Some(format!("AUTH {} ****", mechanism.name())));
        loop {
            self.pump().await?;
            let line = self.read_line().await?;
            if let Some(challenge) = line
                .strip_prefix(b"+ ")
                .or_else(|| (line == b"+").then_some(&b""[..]))
            {
                let challenge = BASE64
                    .decode(challenge.trim_ascii())
                    .map_err(|_| self.unexpected("SASL challenge", &line))?;
                let response = match sasl.respond(&challenge) {
                    Ok(response) => response,
                    Err(err) => {
                        // Cancel the exchange so the server ends it cleanly.
                        self.send_now("*".into(), None).await?;
                        let _ = self.read_line().await;
                        self.in_flight -= 1;
                        return Err(err);
                    }
                };
                self.send_now(BASE64.encode(response), Some("****".into()))
                    .await?;
                continue;
            }
            self.in_flight -= 1;
            let status =
                codec::parse_status(&line).ok_or_else(|| self.unexpected("AUTH reply", &line))?;
            if matches!(status, Status::Ok(_)) && !sasl.is_complete() {
                return Err(Error::new(
                    Kind::Auth,
                    format!(
                        "{}: server accepted {} before proving its identity",
                        self.host,
                        mechanism.name()
                    ),
                ));
            }
            return Ok(status);
        }
    }

    // ---- commands and replies ------------------------------------------

    /// Queues a command; it is sent as soon as the pipelining window allows.
    fn queue(&mut self, wire: String, trace: Option<String>) {
        let trace = trace.unwrap_or_else(|| wire.clone());
        self.queued.push_back(Command { wire, trace });
    }

    fn window(&self) -> usize {
        if self.caps.pipelining {
            PIPELINE_WINDOW
        } else {
            1
        }
    }

    /// Sends queued commands while the window has room.
    async fn pump(&mut self) -> Result<(), Error> {
        let mut out = String::new();
        while self.in_flight < self.window() {
            let Some(command) = self.queued.pop_front() else {
                break;
            };
            debug!(target: TRACE, "C: {}", command.trace);
            out.push_str(&command.wire);
            out.push_str("\r\n");
            self.in_flight += 1;
        }
        if !out.is_empty() {
            self.write_all(out.as_bytes()).await?;
        }
        Ok(())
    }

    /// Sends a line outside the queue (SASL responses), counting no reply.
    async fn send_now(&mut self, wire: String, trace: Option<String>) -> Result<(), Error> {
        debug!(target: TRACE, "C: {}", trace.as_deref().unwrap_or(&wire));
        self.write_all(format!("{wire}\r\n").as_bytes()).await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.wire.write_all(bytes).await
    }

    /// Reads the status line of a single-line reply, for the oldest command
    /// in flight.
    async fn status(&mut self) -> Result<Status, Error> {
        let status = self.status_line().await?;
        self.reply_done();
        Ok(status)
    }

    /// Reads the status line of the oldest command in flight. Its reply
    /// only frees a place in the window at [`reply_done`](Self::reply_done),
    /// after the multi-line part if there is one: without PIPELINING the
    /// server must see no command before it has sent its whole reply.
    async fn status_line(&mut self) -> Result<Status, Error> {
        self.pump().await?;
        let line = self.read_line().await?;
        codec::parse_status(&line).ok_or_else(|| self.unexpected("reply", &line))
    }

    fn reply_done(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Reads a reply that has a multi-line part when positive: `None` for
    /// `-ERR`, else the lines without the terminator.
    async fn multiline(&mut self) -> Result<Result<Vec<Vec<u8>>, String>, Error> {
        let lines = match self.status_line().await? {
            Status::Ok(_) => Ok(self.listing().await?),
            Status::Err(text) => Err(text),
        };
        self.reply_done();
        Ok(lines)
    }

    /// Sends one command and reads its status line.
    async fn simple(&mut self, wire: String, trace: Option<String>) -> Result<Status, Error> {
        self.queue(wire, trace);
        self.status().await
    }

    /// Reads the lines of a multi-line listing, without the terminator.
    async fn listing(&mut self) -> Result<Vec<Vec<u8>>, Error> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            if codec::is_terminator(&line) {
                return Ok(lines);
            }
            lines.push(codec::unstuff_line(&line).to_vec());
        }
    }

    async fn capabilities(&mut self) -> Result<Capabilities, Error> {
        self.queue("CAPA".into(), None);
        match self.multiline().await? {
            Ok(lines) => Ok(Capabilities::parse(
                &lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect::<Vec<_>>(),
            )),
            Err(_) => Ok(Capabilities::default()),
        }
    }

    /// Reads one line (without CRLF), refusing to buffer more than
    /// [`MAX_LINE`] bytes for it.
    async fn read_line(&mut self) -> Result<Vec<u8>, Error> {
        let line = self.wire.read_line(MAX_LINE).await?;
        self.trace_reply(&line);
        Ok(line)
    }

    fn trace_reply(&self, line: &[u8]) {
        if line.starts_with(b"+ ") {
            // SASL challenges can carry tokens and account details.
            debug!(target: TRACE, "S: + ****");
        } else if line != b"." {
            debug!(target: TRACE, "S: {}", String::from_utf8_lossy(line));
        }
    }

    fn unexpected(&self, what: &str, line: &[u8]) -> Error {
        let shown: String = String::from_utf8_lossy(line).chars().take(200).collect();
        Error::new(
            Kind::Protocol,
            format!(
                "{}: unexpected {what} from the server: {shown:?}",
                self.host
            ),
        )
    }
}

impl Source for Pop3 {
    async fn list(&mut self, _with_seen: bool) -> Result<Listing, Error> {
        self.queue("UIDL".into(), None);
        self.queue("LIST".into(), None);
        let uids = match self.multiline().await? {
            Ok(lines) => {
                let mut uids = Vec::with_capacity(lines.len());
                for line in &lines {
                    uids.push(
                        codec::parse_uidl_line(line)
                            .ok_or_else(|| self.unexpected("UIDL line", line))?,
                    );
                }
                Some(uids)
            }
            Err(_) => None,
        };
        let mut listed = match self.multiline().await? {
            Ok(lines) => {
                let mut listed = Vec::with_capacity(lines.len());
                for line in &lines {
                    let (number, size) = codec::parse_list_line(line)
                        .ok_or_else(|| self.unexpected("LIST line", line))?;
                    listed.push(Listed {
                        number,
                        size: Some(size),
                        ..Listed::default()
                    });
                }
                listed
            }
            Err(text) => {
                return Err(Error::new(
                    Kind::Server,
                    format!("{}: LIST failed: {text}", self.host),
                ));
            }
        };
        if let Some(uids) = uids {
            let by_number: std::collections::HashMap<u32, String> = uids.into_iter().collect();
            for message in &mut listed {
                message.uid = Some(by_number.get(&message.number).cloned().ok_or_else(|| {
                    Error::new(
                        Kind::Protocol,
                        format!("{}: message {} has no UIDL", self.host, message.number),
                    )
                })?);
            }
        }
        Ok(Listing {
            identity: None,
            messages: listed,
        })
    }

    /// LIST already gave every size, and UIDLs never change: nothing to add.
    async fn describe(&mut self, _messages: &mut [Listed]) -> Result<(), Error> {
        Ok(())
    }

    fn request(&mut self, messages: &[Listed]) {
        for message in messages {
            self.queue(format!("RETR {}", message.number), None);
            self.requested.push_back((message.number, message.size));
        }
    }

    /// POP3 replies in order: the next message is the oldest requested.
    async fn retrieve<W: MessageWriter>(&mut self, out: &mut W) -> Result<(u32, Retrieved), Error> {
        let (number, announced) = self.requested.pop_front().ok_or_else(|| {
            Error::new(
                Kind::Protocol,
                format!("{}: no message was requested", self.host),
            )
        })?;
        if let Status::Err(text) = self.status_line().await? {
            self.reply_done();
            return Ok((number, Retrieved::Refused(text)));
        }
        let mut decoder = BodyDecoder::announced(announced);
        let mut received: u64 = 0;
        loop {
            let unread = self.wire.unread();
            let step = decoder.decode(unread);
            out.write(&unread[..step.payload]).await.map_err(|err| {
                Error::new(Kind::Delivery, format!("cannot write message: {err}"))
            })?;
            received += step.payload as u64;
            self.wire.consume(step.consumed);
            if step.done {
                debug!(target: TRACE, "S: <message {number}: {received} bytes>");
                self.reply_done();
                return Ok((number, Retrieved::Complete));
            }
            if self.wire.fill().await? == 0 {
                return Err(Error::new(
                    Kind::Connection,
                    format!(
                        "{}: connection closed in the middle of message {number} after {received} bytes",
                        self.host
                    ),
                ));
            }
        }
    }

    async fn delete(&mut self, numbers: &[u32]) -> Result<usize, Error> {
        for number in numbers {
            self.queue(format!("DELE {number}"), None);
        }
        let mut accepted = 0;
        for number in numbers {
            match self.status().await? {
                Status::Ok(_) => accepted += 1,
                Status::Err(text) => tracing::warn!("{}: DELE {number} refused: {text}", self.host),
            }
        }
        Ok(accepted)
    }

    /// POP3 has no flags.
    async fn mark_seen(&mut self, _numbers: &[u32]) -> Result<(), Error> {
        Ok(())
    }

    async fn finish(mut self) -> Result<(), Error> {
        match self.simple("QUIT".into(), None).await? {
            Status::Ok(_) => Ok(()),
            Status::Err(text) => Err(Error::new(
                Kind::Server,
                format!(
                    "{}: QUIT failed, so the server did not remove deleted messages: {text}",
                    self.host
                ),
            )),
        }
    }
}

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    User,
    Apop,
    Sasl(Mechanism),
}

impl Login {
    fn describe(self) -> &'static str {
        match self {
            Login::User => "USER/PASS",
            Login::Apop => "APOP",
            Login::Sasl(mechanism) => mechanism.name(),
        }
    }

    fn reveals_secret(self) -> bool {
        match self {
            Login::User => true,
            Login::Apop => false,
            Login::Sasl(mechanism) => mechanism.reveals_secret(),
        }
    }
}

/// Picks the login method: the configured one, or for `auto` the strongest
/// the server offers. Methods that put the password on the wire are refused
/// over an unencrypted link unless `may_reveal`.
fn choose_login(
    configured: AuthMethod,
    caps: &Capabilities,
    apop_stamp: Option<&str>,
    may_reveal: bool,
) -> Result<Login, String> {
    let offered = |name: &str| caps.sasl.iter().any(|m| m.eq_ignore_ascii_case(name));
    let login = match configured {
        AuthMethod::Auto => {
            let sasl = Mechanism::strongest(caps.sasl.iter().map(String::as_str), may_reveal);
            let challenge_response = sasl.filter(|m| !m.reveals_secret()).map(Login::Sasl);
            challenge_response
                .or(apop_stamp.map(|_| Login::Apop))
                .or(sasl.map(Login::Sasl))
                // USER is in every POP3 server, advertised or not.
                .or(may_reveal.then_some(Login::User))
                .ok_or_else(|| {
                    "the connection is not encrypted and the server offers no login method that keeps the password secret; \
                     use tls = \"starttls\" or \"implicit\", or set allow_plaintext_auth = true if you accept the risk"
                        .to_owned()
                })?
        }
        AuthMethod::User => Login::User,
        AuthMethod::Apop => {
            apop_stamp.ok_or("auth = \"apop\" but the server's greeting has no APOP timestamp")?;
            Login::Apop
        }
        explicit => {
            let mechanism = match explicit {
                AuthMethod::Plain => Mechanism::Plain,
                AuthMethod::Login => Mechanism::Login,
                AuthMethod::CramMd5 => Mechanism::CramMd5,
                AuthMethod::XOAuth2 => Mechanism::XOAuth2,
                AuthMethod::OAuthBearer => Mechanism::OAuthBearer,
                _ => Mechanism::ScramSha256,
            };
            if caps.known && !offered(mechanism.name()) {
                return Err(format!(
                    "auth = {:?} but the server does not offer SASL {} (it offers: {})",
                    mechanism.name().to_ascii_lowercase(),
                    mechanism.name(),
                    if caps.sasl.is_empty() {
                        "none".to_owned()
                    } else {
                        caps.sasl.join(" ")
                    }
                ));
            }
            Login::Sasl(mechanism)
        }
    };
    if login.reveals_secret() && !may_reveal {
        return Err(format!(
            "refusing to send the password with {} over an unencrypted connection; \
             use tls = \"starttls\" or \"implicit\", or set allow_plaintext_auth = true if you accept the risk",
            login.describe()
        ));
    }
    Ok(login)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(sasl: &[&str]) -> Capabilities {
        Capabilities {
            known: true,
            sasl: sasl.iter().map(|s| s.to_string()).collect(),
            ..Capabilities::default()
        }
    }

    #[test]
    fn capabilities_are_parsed() {
        let lines: Vec<String> = [
            "USER",
            "SASL PLAIN CRAM-MD5",
            "pipelining",
            "UIDL",
            "STLS",
            "TOP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let caps = Capabilities::parse(&lines);
        assert!(caps.known && caps.user && caps.pipelining && caps.uidl && caps.stls);
        assert_eq!(caps.sasl, ["PLAIN", "CRAM-MD5"]);
    }

    #[test]
    fn auto_prefers_secret_keeping_methods() {
        let stamp = Some("<1@x>");
        assert_eq!(
            choose_login(AuthMethod::Auto, &caps(&["PLAIN", "CRAM-MD5"]), stamp, true),
            Ok(Login::Sasl(Mechanism::CramMd5))
        );
        assert_eq!(
            choose_login(AuthMethod::Auto, &caps(&["PLAIN"]), stamp, true),
            Ok(Login::Apop)
        );
        assert_eq!(
            choose_login(AuthMethod::Auto, &caps(&["PLAIN", "LOGIN"]), None, true),
            Ok(Login::Sasl(Mechanism::Plain))
        );
        assert_eq!(
            choose_login(AuthMethod::Auto, &caps(&[]), None, true),
            Ok(Login::User)
        );
        assert_eq!(
            choose_login(
                AuthMethod::Auto,
                &caps(&["SCRAM-SHA-256", "CRAM-MD5"]),
                stamp,
                false
            ),
            Ok(Login::Sasl(Mechanism::ScramSha256))
        );
    }

    #[test]
    fn password_is_never_revealed_on_an_unencrypted_link() {
        assert!(choose_login(AuthMethod::Auto, &caps(&["PLAIN"]), None, false).is_err());
        assert!(choose_login(AuthMethod::User, &caps(&[]), None, false).is_err());
        assert!(choose_login(AuthMethod::Plain, &caps(&["PLAIN"]), None, false).is_err());
        assert_eq!(
            choose_login(AuthMethod::Auto, &caps(&["PLAIN"]), Some("<1@x>"), false),
            Ok(Login::Apop)
        );
        assert_eq!(
            choose_login(AuthMethod::CramMd5, &caps(&["CRAM-MD5"]), None, false),
            Ok(Login::Sasl(Mechanism::CramMd5))
        );
    }

    #[test]
    fn explicit_methods_must_be_offered() {
        let err = choose_login(AuthMethod::CramMd5, &caps(&["PLAIN"]), None, true).unwrap_err();
        assert!(err.contains("offers: PLAIN"), "{err}");
        assert!(choose_login(AuthMethod::Apop, &caps(&[]), None, true).is_err());
        // Without CAPA, an explicit choice is tried.
        assert_eq!(
            choose_login(AuthMethod::Plain, &Capabilities::default(), None, true),
            Ok(Login::Sasl(Mechanism::Plain))
        );
    }
}
