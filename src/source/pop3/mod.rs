//! POP3 client (RFC 1939, 2449 CAPA/PIPELINING, 2595 STLS, 5034 SASL).
//!
//! [`codec`] holds the parsers and the body decoder; this module drives
//! them over a socket. Commands go through a small queue so that, when the
//! server announces PIPELINING, many RETRs are in flight and a mailbox costs
//! no round trip per message.

pub mod codec;

use std::collections::VecDeque;

use tracing::{debug, info};

use self::codec::{BodyDecoder, MAX_LINE, Status};
use super::wire::{Credentials, Server, Wire};
use super::{Listed, Listing, Retrieved, Source};
use crate::auth::{self, Mechanism, SASL_CANCEL, SaslDriver};
use crate::config::{AuthMethod, Secret, TlsMode};
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
    /// Takes note of one line of the CAPA listing.
    fn learn(&mut self, line: &str) {
        let mut words = line.split_ascii_whitespace();
        let Some(name) = words.next() else { return };
        match name.to_ascii_uppercase().as_str() {
            "STLS" => self.stls = true,
            "PIPELINING" => self.pipelining = true,
            "UIDL" => self.uidl = true,
            "USER" => self.user = true,
            "SASL" => self.sasl = words.map(str::to_owned).collect(),
            _ => {}
        }
    }

    #[cfg(test)]
    fn parse(lines: &[String]) -> Capabilities {
        let mut caps = Capabilities {
            known: true,
            ..Capabilities::default()
        };
        for line in lines {
            caps.learn(line);
        }
        caps
    }
}

/// Why a line of a multi-line listing was refused.
enum Refusal {
    Malformed,
    TooMany,
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
    pub async fn connect(server: &Server) -> Result<Pop3, Error> {
        let endpoint = &server.endpoint;
        let (wire, tls) = Wire::open(endpoint).await?;
        let mut session = Pop3 {
            wire,
            queued: VecDeque::new(),
            requested: VecDeque::new(),
            in_flight: 0,
            caps: Capabilities::default(),
            host: endpoint.host.clone(),
        };
        let greeting = session.read_line().await?;
        let greeting = match codec::parse_status(&greeting) {
            Some(Status::Ok(text)) => text,
            Some(Status::Err(text)) => {
                return Err(Error::new(
                    Kind::Server,
                    format!("{}: server refused the connection: {text}", endpoint.host),
                ));
            }
            None => return Err(session.unexpected("greeting", &greeting)),
        };
        session.caps = session.capabilities().await?;
        if endpoint.tls == TlsMode::StartTls {
            session = session.start_tls(&tls).await?;
            session.caps = session.capabilities().await?;
        }
        session.authenticate(server, &greeting).await?;
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

    async fn authenticate(&mut self, server: &Server, greeting: &str) -> Result<(), Error> {
        let credentials = server.credentials(self.wire.is_tls())?;
        let (auth, port) = (server.endpoint.auth, server.endpoint.port);
        let may_reveal = credentials.may_reveal;
        let apop_stamp = codec::apop_timestamp(greeting);
        let plan = choose_login(auth, &self.caps, apop_stamp, may_reveal)
            .map_err(|message| Error::new(Kind::Auth, format!("{}: {message}", self.host)))?;
        let mut refused = match self.try_login(plan, &credentials, port, apop_stamp).await? {
            Status::Ok(_) => return Ok(()),
            Status::Err(text) => text,
        };
        // Many servers print an APOP timestamp, or offer a mechanism, that
        // the account cannot use. With `auto`, a refused method gets one
        // more try with the next one the rules allow: a wrong password then
        // costs two attempts, not one per method.
        let fallback = (auth == AuthMethod::Auto && worth_another_method(&refused))
            .then(|| auto_candidates(&self.caps, apop_stamp, may_reveal))
            .and_then(|candidates| candidates.into_iter().skip_while(|l| *l != plan).nth(1));
        let mut tried = plan;
        if let Some(next) = fallback {
            match self.try_login(next, &credentials, port, apop_stamp).await? {
                Status::Ok(_) => {
                    info!(
                        "{}: logged in with {} after the server refused {} ({refused})",
                        self.host,
                        next.describe(),
                        plan.describe()
                    );
                    return Ok(());
                }
                Status::Err(text) => (refused, tried) = (text, next),
            }
        }
        Err(Error::new(
            Kind::Auth,
            format!(
                "{}: login as {} failed ({}): {refused}",
                self.host,
                credentials.username,
                if tried == plan {
                    plan.describe().to_owned()
                } else {
                    format!("{}, then {}", plan.describe(), tried.describe())
                }
            ),
        ))
    }

    /// One login attempt with one method.
    async fn try_login(
        &mut self,
        plan: Login,
        credentials: &Credentials<'_>,
        port: u16,
        apop_stamp: Option<&str>,
    ) -> Result<Status, Error> {
        let (username, secret) = (credentials.username, credentials.secret);
        debug!(target: TRACE, "{}: logging in with {}", self.host, plan.describe());
        match plan {
            Login::User => self.login_user(username, secret).await,
            Login::Apop => {
                let stamp = apop_stamp.unwrap_or_default();
                let digest = auth::apop_digest(stamp, secret.expose());
                self.simple(
                    format!("APOP {username} {digest}"),
                    Some(format!("APOP {username} ****")),
                )
                .await
            }
            Login::Sasl(mechanism) => self.login_sasl(mechanism, username, secret, port).await,
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
        let mut sasl = SaslDriver::new(mechanism, username, secret.expose(), &self.host, port);
        let name = mechanism.name();
        let command = match sasl.command_argument(true) {
            Some(argument) => format!("AUTH {name} {argument}"),
            None => format!("AUTH {name}"),
        };
        self.queue(command, Some(format!("AUTH {name} ****")));
        loop {
            self.pump().await?;
            let line = self.read_line().await?;
            if let Some(challenge) = line
                .strip_prefix(b"+ ")
                .or_else(|| (line == b"+").then_some(&b""[..]))
            {
                match sasl.answer(challenge) {
                    Ok(response) => self.send_now(response, Some("****".into())).await?,
                    Err(err) => {
                        // Cancel the exchange so the server ends it cleanly.
                        self.send_now(SASL_CANCEL.into(), None).await?;
                        let _ = self.read_line().await;
                        self.in_flight -= 1;
                        return Err(err.context(&self.host));
                    }
                }
                continue;
            }
            self.in_flight -= 1;
            let status =
                codec::parse_status(&line).ok_or_else(|| self.unexpected("AUTH reply", &line))?;
            if matches!(status, Status::Ok(_)) {
                sasl.check_success()
                    .map_err(|err| err.context(&self.host))?;
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

    /// Reads a reply that has a multi-line part when positive, handing each
    /// line of it (unstuffed) to `each` as it arrives, so that a listing
    /// is never held as lines; `Err(text)` for `-ERR`. `what` names the
    /// listing in errors.
    async fn multiline(
        &mut self,
        what: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), Refusal>,
    ) -> Result<Result<(), String>, Error> {
        let outcome = match self.status_line().await? {
            Status::Ok(_) => loop {
                let line = self.read_line().await?;
                if codec::is_terminator(&line) {
                    break Ok(());
                }
                match each(codec::unstuff_line(&line)) {
                    Ok(()) => {}
                    Err(Refusal::Malformed) => return Err(self.unexpected(what, &line)),
                    Err(Refusal::TooMany) => {
                        return Err(Error::new(
                            Kind::Protocol,
                            format!("{}: {}", self.host, super::too_many_messages()),
                        ));
                    }
                }
            },
            Status::Err(text) => Err(text),
        };
        self.reply_done();
        Ok(outcome)
    }

    /// Sends one command and reads its status line.
    async fn simple(&mut self, wire: String, trace: Option<String>) -> Result<Status, Error> {
        self.queue(wire, trace);
        self.status().await
    }

    async fn capabilities(&mut self) -> Result<Capabilities, Error> {
        self.queue("CAPA".into(), None);
        let mut caps = Capabilities {
            known: true,
            ..Capabilities::default()
        };
        let listed = self
            .multiline("CAPA line", |line| {
                caps.learn(&String::from_utf8_lossy(line));
                Ok(())
            })
            .await?;
        Ok(if listed.is_ok() {
            caps
        } else {
            Capabilities::default()
        })
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
    /// LIST's lines become the listing as they arrive, and UIDL's fill in
    /// the ids in place: no line is kept and no map of ids is built, so a
    /// listed message costs its `Listed` and its id, nothing more.
    async fn list(&mut self, _with_seen: bool) -> Result<Listing, Error> {
        self.queue("LIST".into(), None);
        self.queue("UIDL".into(), None);
        let mut messages: Vec<Listed> = Vec::new();
        let listed = self
            .multiline("LIST line", |line| {
                let (number, size) = codec::parse_list_line(line).ok_or(Refusal::Malformed)?;
                if messages.len() == super::MAX_MESSAGES {
                    return Err(Refusal::TooMany);
                }
                messages.push(Listed {
                    number,
                    size: Some(size),
                    ..Listed::default()
                });
                Ok(())
            })
            .await?;
        if let Err(text) = listed {
            return Err(Error::new(
                Kind::Server,
                format!("{}: LIST failed: {text}", self.host),
            ));
        }
        // Servers list in order; sorting makes sure the lookups below work.
        if !messages.is_sorted_by_key(|m| m.number) {
            messages.sort_unstable_by_key(|m| m.number);
        }
        let mut uidl_lines = 0;
        let uidl = self
            .multiline("UIDL line", |line| {
                let (number, uid) = codec::parse_uidl_line(line).ok_or(Refusal::Malformed)?;
                // Ids of messages LIST did not show are not kept, but an
                // endless run of them must still end.
                uidl_lines += 1;
                if uidl_lines > super::MAX_MESSAGES {
                    return Err(Refusal::TooMany);
                }
                // A UIDL for a message LIST did not show is of no use.
                if let Ok(index) = messages.binary_search_by_key(&number, |m| m.number) {
                    messages[index].uid = Some(uid);
                }
                Ok(())
            })
            .await?;
        if uidl.is_ok()
            && let Some(message) = messages.iter().find(|m| m.uid.is_none())
        {
            return Err(Error::new(
                Kind::Protocol,
                format!("{}: message {} has no UIDL", self.host, message.number),
            ));
        }
        Ok(Listing {
            identity: None,
            messages,
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

/// The methods `auto` may use, best first: a SASL mechanism that keeps the
/// password secret, APOP, a SASL mechanism that reveals it, USER/PASS;
/// those that reveal it only when `may_reveal`.
fn auto_candidates(caps: &Capabilities, apop_stamp: Option<&str>, may_reveal: bool) -> Vec<Login> {
    let sasl = Mechanism::strongest(caps.sasl.iter().map(String::as_str), may_reveal);
    let challenge_response = sasl.filter(|m| !m.reveals_secret()).map(Login::Sasl);
    let revealing = sasl.filter(|m| m.reveals_secret()).map(Login::Sasl);
    [
        challenge_response,
        apop_stamp.map(|_| Login::Apop),
        revealing,
        // USER is in every POP3 server, advertised or not.
        may_reveal.then_some(Login::User),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Whether a refused login may succeed with another method: not when the
/// server says the mailbox is busy or it is in trouble (RFC 3206), which
/// another method would only hit again.
fn worth_another_method(refusal: &str) -> bool {
    let code = refusal.to_ascii_uppercase();
    !(code.starts_with("[IN-USE]") || code.starts_with("[SYS/"))
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
        AuthMethod::Auto => auto_candidates(caps, apop_stamp, may_reveal)
            .first()
            .copied()
            .ok_or_else(|| auth::NO_SECRET_KEEPING_METHOD.to_owned())?,
        AuthMethod::User => Login::User,
        AuthMethod::Apop => {
            apop_stamp.ok_or("auth = \"apop\" but the server's greeting has no APOP timestamp")?;
            Login::Apop
        }
        explicit => {
            let mechanism =
                Mechanism::configured(explicit).expect("every other setting is a SASL mechanism");
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
        return Err(auth::reveal_refusal(login.describe()));
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
