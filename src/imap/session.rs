//! An IMAP session up to and including login, shared by the IMAP source
//! (fetching) and the IMAP APPEND sink (delivering): greeting, STARTTLS,
//! capabilities, authentication, `ENABLE UTF8=ACCEPT`, plus the plain
//! command/response helpers both need. What happens after login (folders,
//! fetching, appending) is the business of the layers on top.

use std::collections::HashSet;

use tracing::{debug, warn};

use super::codec::{
    self, Code, MAX_LINE, MAX_SMALL_LITERAL, Part, Response, ResponseBudget, Status, Untagged,
};
use super::utf7;
use crate::auth::{self, Mechanism, SASL_CANCEL, SaslDriver};
use crate::config::{AuthMethod, Secret, TlsMode};
use crate::error::{Error, Kind};
use crate::net::TlsOptions;
use crate::wire::{Server, Wire};

/// Where protocol traces go (`-v`).
const TRACE: &str = "mailfetch::protocol";

/// A logged-in IMAP connection. Its parts are public so that a client with
/// more state (the IMAP source) can take them over after login.
pub struct Session {
    pub wire: Wire,
    /// The server's host name, for messages.
    pub host: String,
    /// Upper-cased capabilities, as of the last time the server told them.
    pub caps: HashSet<String>,
    /// The number in the next command's tag.
    pub next_tag: u32,
    /// Folder names are sent as UTF-8 (RFC 6855) rather than modified UTF-7.
    pub utf8: bool,
}

impl Session {
    /// Connects, secures the link as configured and logs in.
    pub async fn connect(server: &Server) -> Result<Session, Error> {
        let endpoint = &server.endpoint;
        let (wire, tls) = Wire::open(endpoint).await?;
        let mut session = Session {
            wire,
            host: endpoint.host.clone(),
            caps: HashSet::new(),
            next_tag: 1,
            utf8: false,
        };
        let preauth = session.greeting().await?;
        if endpoint.tls == TlsMode::StartTls {
            if preauth {
                // A PREAUTH session can no longer be upgraded: refusing is
                // the only safe answer (RFC 9051 §11.2).
                return Err(session.error(Kind::Connection, "tls = \"starttls\" but the server sent PREAUTH, which makes STARTTLS impossible"));
            }
            session = session.start_tls(&tls).await?;
        }
        if !preauth {
            session.authenticate(server).await?;
        }
        if session.caps.contains("UTF8=ACCEPT") {
            session.simple("ENABLE UTF8=ACCEPT").await?;
            session.utf8 = true;
        }
        Ok(session)
    }

    /// Reads the greeting; returns whether it was PREAUTH.
    async fn greeting(&mut self) -> Result<bool, Error> {
        match self.read_plain().await? {
            Response::Untagged(Untagged::Status { status, code, text }) => {
                self.learn_caps(code.as_ref())?;
                match status {
                    Status::Ok => Ok(false),
                    Status::Preauth => Ok(true),
                    _ => Err(self.error(
                        Kind::Server,
                        &format!("the server refused the connection: {text}"),
                    )),
                }
            }
            other => Err(self.error(Kind::Protocol, &format!("unexpected greeting {other:?}"))),
        }
    }

    async fn start_tls(mut self, tls: &TlsOptions) -> Result<Session, Error> {
        self.ensure_caps().await?;
        if !self.caps.contains("STARTTLS") {
            return Err(self.error(
                Kind::Connection,
                "tls = \"starttls\" but the server does not offer STARTTLS; refusing to continue without encryption \
                 (use tls = \"implicit\" on port 993 if the server supports it)",
            ));
        }
        if let Err(err) = self.simple("STARTTLS").await {
            return Err(Error::new(
                Kind::Connection,
                format!("{err}; refusing to continue without encryption"),
            ));
        }
        let wire = self.wire.start_tls(tls).await?;
        // Capabilities seen before TLS may have been forged: forget them.
        Ok(Session {
            wire,
            caps: HashSet::new(),
            ..self
        })
    }

    pub async fn ensure_caps(&mut self) -> Result<(), Error> {
        if self.caps.is_empty() {
            self.simple("CAPABILITY").await?;
        }
        Ok(())
    }

    pub fn learn_caps(&mut self, code: Option<&Code>) -> Result<(), Error> {
        if let Some(code) = code.filter(|code| code.name == "CAPABILITY") {
            let caps = codec::capabilities(&code.args)
                .map_err(|err| self.error(Kind::Protocol, &format!("malformed response: {err}")))?;
            self.caps = caps.into_iter().collect();
        }
        Ok(())
    }

    // ---- authentication -------------------------------------------------

    async fn authenticate(&mut self, server: &Server) -> Result<(), Error> {
        let credentials = server.credentials(self.wire.is_tls())?;
        let (username, secret) = (credentials.username, credentials.secret);
        self.ensure_caps().await?;
        let offered: Vec<&str> = self
            .caps
            .iter()
            .filter_map(|cap| cap.strip_prefix("AUTH="))
            .collect();
        let login_allowed = !self.caps.contains("LOGINDISABLED");
        let login = choose_login(
            server.endpoint.auth,
            &offered,
            login_allowed,
            credentials.may_reveal,
        )
        .map_err(|message| self.error(Kind::Auth, &message))?;
        debug!(target: TRACE, "{}: logging in with {}", self.host, login.describe());
        let result = match login {
            Login::Command => self.login_command(username, secret).await,
            Login::Sasl(mechanism) => {
                self.login_sasl(mechanism, username, secret, server.endpoint.port)
                    .await
            }
        };
        let (status, code, text) = result?;
        if status != Status::Ok {
            return Err(self.error(
                Kind::Auth,
                &format!("login as {username} failed ({}): {text}", login.describe()),
            ));
        }
        // Capabilities change after login; the server may have sent them.
        self.caps.clear();
        self.learn_caps(code.as_ref())?;
        self.ensure_caps().await
    }

    async fn login_command(
        &mut self,
        username: &str,
        secret: &Secret,
    ) -> Result<(Status, Option<Code>, String), Error> {
        let tag = self.tag();
        let user = self.astring(username);
        let pass = self.astring(secret.expose());
        // Literals (non-ASCII credentials) need the server's go-ahead
        // unless it has LITERAL+.
        let mut pieces = format!("{tag} LOGIN {user} {pass}").into_bytes();
        pieces.extend_from_slice(b"\r\n");
        debug!(target: TRACE, "C: {tag} LOGIN {username} ****");
        self.send_with_literals(&pieces).await?;
        self.finish_tagged(&tag).await
    }

    async fn login_sasl(
        &mut self,
        mechanism: Mechanism,
        username: &str,
        secret: &Secret,
        port: u16,
    ) -> Result<(Status, Option<Code>, String), Error> {
        let mut sasl = SaslDriver::new(mechanism, username, secret.expose(), &self.host, port);
        let tag = self.tag();
        let name = mechanism.name();
        let command = match sasl.command_argument(self.caps.contains("SASL-IR")) {
            Some(argument) => format!("{tag} AUTHENTICATE {name} {argument}"),
            None => format!("{tag} AUTHENTICATE {name}"),
        };
        debug!(target: TRACE, "C: {tag} AUTHENTICATE {name} ****");
        self.wire
            .write_all(format!("{command}\r\n").as_bytes())
            .await?;
        loop {
            match self.read_plain().await? {
                Response::Continue(challenge) => match sasl.answer(&challenge) {
                    Ok(response) => {
                        debug!(target: TRACE, "C: ****");
                        self.wire
                            .write_all(format!("{response}\r\n").as_bytes())
                            .await?;
                    }
                    Err(err) => {
                        // Cancel so the server ends the exchange cleanly.
                        self.wire
                            .write_all(format!("{SASL_CANCEL}\r\n").as_bytes())
                            .await?;
                        let _ = self.finish_tagged(&tag).await;
                        return Err(self.error(err.kind, &err.message));
                    }
                },
                Response::Tagged {
                    tag: done,
                    status,
                    code,
                    text,
                } if done == tag => {
                    if status == Status::Ok {
                        sasl.check_success()
                            .map_err(|err| self.error(err.kind, &err.message))?;
                    }
                    return Ok((status, code, text));
                }
                other => self.untagged(other)?,
            }
        }
    }

    // ---- commands and responses ------------------------------------------

    pub fn tag(&mut self) -> String {
        let tag = format!("M{}", self.next_tag);
        self.next_tag += 1;
        tag
    }

    /// An astring: quoted when it can be, else a literal. Non-ASCII text
    /// may be quoted only once UTF8=ACCEPT is enabled.
    pub fn astring(&self, text: &str) -> String {
        let quotable = |b: u8| (0x20..0x7f).contains(&b) || (self.utf8 && b >= 0x80);
        if !text.is_empty() && text.bytes().all(quotable) {
            format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            let plus = if self.caps.contains("LITERAL+") {
                "+"
            } else {
                ""
            };
            format!("{{{}{plus}}}\r\n{text}", text.len())
        }
    }

    /// A folder name as the server wants it: UTF-8 if it accepts that,
    /// else modified UTF-7.
    pub fn mailbox(&self, name: &str) -> String {
        if self.utf8 {
            self.astring(name)
        } else {
            self.astring(&utf7::encode(name))
        }
    }

    /// Sends a command that may contain synchronizing literals, waiting for
    /// the server's `+` after each.
    pub async fn send_with_literals(&mut self, command: &[u8]) -> Result<(), Error> {
        let mut rest = command;
        loop {
            let line_end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let (line, after) = rest.split_at(line_end);
            self.wire.write_all(line).await?;
            rest = after;
            if rest.is_empty() {
                return Ok(());
            }
            let line = line.strip_suffix(b"\r\n").unwrap_or(line);
            if !line.ends_with(b"+}") {
                match self.read_plain().await? {
                    Response::Continue(_) => {}
                    other => {
                        return Err(
                            self.error(Kind::Protocol, &format!("literal refused: {other:?}"))
                        );
                    }
                }
            }
        }
    }

    /// Sends a command and waits for its completion; `NO`/`BAD` is an error.
    pub async fn simple(&mut self, command: &str) -> Result<Option<Code>, Error> {
        let tag = self.send(command).await?;
        let (status, code, text) = self.finish_tagged(&tag).await?;
        if status != Status::Ok {
            return Err(self.error(Kind::Server, &format!("{command} failed: {text}")));
        }
        Ok(code)
    }

    /// Sends a command (without literals); returns its tag.
    pub async fn send(&mut self, command: &str) -> Result<String, Error> {
        let tag = self.tag();
        debug!(target: TRACE, "C: {tag} {command}");
        self.wire
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        Ok(tag)
    }

    /// Reads responses until `tag` completes, handling untagged ones.
    pub async fn finish_tagged(
        &mut self,
        tag: &str,
    ) -> Result<(Status, Option<Code>, String), Error> {
        loop {
            match self.read_plain().await? {
                Response::Tagged {
                    tag: done,
                    status,
                    code,
                    text,
                } if done == tag => return Ok((status, code, text)),
                other => self.untagged(other)?,
            }
        }
    }

    /// Takes note of a response that was not the one waited for:
    /// capabilities, alerts, and the server ending the session.
    pub fn untagged(&mut self, response: Response) -> Result<(), Error> {
        match response {
            Response::Untagged(Untagged::Capability(caps)) => {
                self.caps = caps.into_iter().collect()
            }
            Response::Untagged(Untagged::Status {
                status: Status::Bye,
                text,
                ..
            }) => {
                return Err(self.error(
                    Kind::Server,
                    &format!("the server ended the session: {text}"),
                ));
            }
            Response::Untagged(Untagged::Status {
                code: Some(code),
                text,
                ..
            }) => match code.name.as_str() {
                "CAPABILITY" => self.learn_caps(Some(&code))?,
                "ALERT" => warn!("{}: server alert: {text}", self.host),
                _ => {}
            },
            Response::Tagged { tag, text, .. } => {
                return Err(self.error(
                    Kind::Protocol,
                    &format!("unexpected completion of {tag}: {text}"),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads one whole response; literals in it must be small (no message
    /// bodies are read here).
    pub async fn read_plain(&mut self) -> Result<Response, Error> {
        let mut parts = Vec::new();
        let mut budget = ResponseBudget::default();
        loop {
            let (line, announced) = self.read_text_part(&mut budget).await?;
            parts.push(Part::Text(line));
            let Some(len) = announced else { break };
            parts.push(Part::Literal(
                self.read_small_literal(len, &parts, &mut budget).await?,
            ));
        }
        self.parse(&parts)
    }

    /// Reads one line of a response and the size of the literal it
    /// announces, if any, within the response's `budget`.
    pub async fn read_text_part(
        &mut self,
        budget: &mut ResponseBudget,
    ) -> Result<(Vec<u8>, Option<u64>), Error> {
        let line = self.wire.read_line(MAX_LINE).await?;
        trace_line(&line);
        budget.keep(line.len()).map_err(|err| self.malformed(err))?;
        let announced = codec::literal_len(&line).map_err(|err| self.malformed(err))?;
        Ok((line, announced))
    }

    /// Reads a literal of `len` bytes that is to be kept in memory, after
    /// `parts` (whose last line announced it), within `budget`.
    pub async fn read_small_literal(
        &mut self,
        len: u64,
        parts: &[Part],
        budget: &mut ResponseBudget,
    ) -> Result<Vec<u8>, Error> {
        if len > MAX_SMALL_LITERAL {
            // Say what it was for: the server may send a part of a message
            // (`BODY[]<5>`) where mailfetch needs the whole.
            let line = match parts.last() {
                Some(Part::Text(line)) => String::from_utf8_lossy(&line[..line.len().min(200)]),
                _ => "".into(),
            };
            return Err(self.error(
                Kind::Protocol,
                &format!("the server announced a {len}-byte literal in {line:?}, larger than anything but a whole message"),
            ));
        }
        budget
            .keep(len as usize)
            .map_err(|err| self.malformed(err))?;
        self.read_literal(len as usize).await
    }

    /// Parses the parts of a response.
    pub fn parse(&self, parts: &[Part]) -> Result<Response, Error> {
        codec::parse(parts).map_err(|err| self.malformed(err))
    }

    fn malformed(&self, err: codec::ParseError) -> Error {
        self.error(Kind::Protocol, &format!("malformed response: {err}"))
    }

    pub async fn read_literal(&mut self, len: usize) -> Result<Vec<u8>, Error> {
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            if self.wire.unread().is_empty() {
                self.wire.fill_or_eof().await?;
            }
            let unread = self.wire.unread();
            let take = unread.len().min(len - data.len());
            data.extend_from_slice(&unread[..take]);
            self.wire.consume(take);
        }
        Ok(data)
    }

    pub fn error(&self, kind: Kind, message: &str) -> Error {
        Error::new(kind, format!("{}: {message}", self.host))
    }

    /// Ends the session politely; errors do not matter any more.
    pub async fn logout(&mut self) {
        let Ok(tag) = self.send("LOGOUT").await else {
            return;
        };
        // The server may close right after its BYE.
        while let Ok(response) = self.read_plain().await {
            if matches!(response, Response::Tagged { tag: ref done, .. } if *done == tag) {
                return;
            }
        }
    }
}

/// Logs a line the server sent (`-v`).
pub fn trace_line(line: &[u8]) {
    if line.starts_with(b"+ ") {
        // SASL challenges can carry tokens and account details.
        debug!(target: TRACE, "S: + ****");
    } else {
        debug!(target: TRACE, "S: {}", String::from_utf8_lossy(&line[..line.len().min(400)]));
    }
}

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    /// The LOGIN command.
    Command,
    Sasl(Mechanism),
}

impl Login {
    fn describe(self) -> &'static str {
        match self {
            Login::Command => "LOGIN",
            Login::Sasl(mechanism) => mechanism.name(),
        }
    }

    fn reveals_secret(self) -> bool {
        match self {
            Login::Command => true,
            Login::Sasl(mechanism) => mechanism.reveals_secret(),
        }
    }
}

/// Picks the login method: the configured one, or for `auto` the strongest
/// the server offers. Methods that put the password on the wire are refused
/// over an unencrypted link unless `may_reveal`.
fn choose_login(
    configured: AuthMethod,
    offered: &[&str],
    login_allowed: bool,
    may_reveal: bool,
) -> Result<Login, String> {
    let mechanism = match configured {
        AuthMethod::Auto => {
            let sasl = Mechanism::strongest(offered.iter().copied(), may_reveal);
            return match sasl {
                Some(mechanism) if !mechanism.reveals_secret() || !login_allowed => {
                    Ok(Login::Sasl(mechanism))
                }
                // LOGIN is as good as PLAIN and works everywhere.
                _ if login_allowed && may_reveal => Ok(Login::Command),
                Some(mechanism) => Ok(Login::Sasl(mechanism)),
                None => Err(if login_allowed {
                    auth::NO_SECRET_KEEPING_METHOD.to_owned()
                } else {
                    "the server offers no login method mailfetch can use (LOGINDISABLED and no known AUTH= mechanism)".to_owned()
                }),
            };
        }
        AuthMethod::User => {
            if !login_allowed {
                return Err(
                    "auth = \"user\" but the server disabled the LOGIN command (LOGINDISABLED)"
                        .to_owned(),
                );
            }
            if !may_reveal {
                return Err(auth::reveal_refusal("LOGIN"));
            }
            return Ok(Login::Command);
        }
        AuthMethod::Apop => {
            return Err("APOP is a POP3 method; it does not exist in IMAP".to_owned());
        }
        explicit => {
            Mechanism::configured(explicit).expect("every other setting is a SASL mechanism")
        }
    };
    if !offered
        .iter()
        .any(|m| m.eq_ignore_ascii_case(mechanism.name()))
    {
        return Err(format!(
            "the server does not offer AUTHENTICATE {} (it offers: {})",
            mechanism.name(),
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(" ")
            }
        ));
    }
    let login = Login::Sasl(mechanism);
    if login.reveals_secret() && !may_reveal {
        return Err(auth::reveal_refusal(mechanism.name()));
    }
    Ok(login)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_login_prefers_secret_keeping_mechanisms() {
        assert_eq!(
            choose_login(AuthMethod::Auto, &["PLAIN", "SCRAM-SHA-256"], true, true),
            Ok(Login::Sasl(Mechanism::ScramSha256))
        );
        assert_eq!(
            choose_login(AuthMethod::Auto, &["PLAIN"], true, true),
            Ok(Login::Command)
        );
        assert_eq!(
            choose_login(AuthMethod::Auto, &["PLAIN"], false, true),
            Ok(Login::Sasl(Mechanism::Plain))
        );
        assert_eq!(
            choose_login(AuthMethod::Auto, &["CRAM-MD5"], true, false),
            Ok(Login::Sasl(Mechanism::CramMd5))
        );
        assert!(choose_login(AuthMethod::Auto, &["PLAIN"], true, false).is_err());
        assert!(choose_login(AuthMethod::Auto, &[], false, true).is_err());
    }

    #[test]
    fn explicit_login_methods() {
        assert_eq!(
            choose_login(AuthMethod::User, &[], true, true),
            Ok(Login::Command)
        );
        assert!(
            choose_login(AuthMethod::User, &[], false, true)
                .unwrap_err()
                .contains("LOGINDISABLED")
        );
        assert!(choose_login(AuthMethod::User, &[], true, false).is_err());
        assert!(choose_login(AuthMethod::Plain, &["PLAIN"], true, false).is_err());
        assert!(
            choose_login(AuthMethod::CramMd5, &["PLAIN"], true, true)
                .unwrap_err()
                .contains("offers: PLAIN")
        );
        assert!(choose_login(AuthMethod::Apop, &[], true, true).is_err());
    }
}
