//! A scriptable fake POP3 server for fault-injection tests (std only).
//!
//! It serves one connection at a time (see [`crate::fake_server`]), for as
//! many sequential connections as the test makes. The maildrop is shared by all connections: deletions take
//! effect on QUIT, as on a real server, so a session that is cut or killed
//! deletes nothing.
//!
//! What the test can read afterwards: every command line received, per
//! connection ([`FakePop3::sessions`]), the UIDs actually deleted, what is
//! still on the server, and [`FakePop3::overlaps`]: the commands the client
//! sent before the previous reply was complete (evidence of pipelining,
//! which is a violation when PIPELINING is not announced).
//!
//! Faults ([`Fault`]) make it misbehave, on every connection or only on the
//! first one ([`Script::first_only`]), so a second run sees a healthy server.

use std::io::{self, BufRead, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::sync::MutexGuard;
use std::thread;
use std::time::Duration;

use crate::fake_server::{Connection, FakeServer, Faults, Serving};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";
/// The APOP timestamp put in the greeting when [`Script::apop`] is set.
pub const APOP_STAMP: &str = "<1896.697170952@fake.example>";

/// One message in the maildrop, as stored on the server (CRLF line ends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub uid: String,
    pub data: Vec<u8>,
}

impl Message {
    /// A message whose text has every line end turned into CRLF.
    pub fn new(uid: &str, text: &str) -> Message {
        let data = text
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes();
        Message {
            uid: uid.to_owned(),
            data,
        }
    }
}

/// Ways the server misbehaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// UIDL is not in CAPA and answers -ERR.
    NoUidl,
    /// PIPELINING is not in CAPA.
    NoPipelining,
    /// STLS is not in CAPA (it is always refused anyway: no TLS here).
    NoStls,
    /// RETR of `message` sends only the first `after` bytes of the wire
    /// body, then closes the connection.
    CutRetr { message: usize, after: usize },
    /// The UIDL listing has a line that is not `NUMBER UID`.
    GarbageUidlLine,
    /// The greeting is neither +OK nor -ERR.
    GarbageGreeting,
    /// The UIDL listing starts with a line of this many bytes and no end.
    LongLine(usize),
    /// RETR of this message answers -ERR.
    RetrErr(usize),
    /// RETR of this message is never answered (the connection stays open).
    StallRetr(usize),
    /// STLS is accepted, and a plaintext reply is sent right behind the
    /// `+OK`, before any handshake: the STARTTLS injection attack.
    StlsInjection,
    /// Bare LFs pass through, and only lines after a CRLF are dot-stuffed:
    /// a sender's `LF . CRLF` reaches the client unstuffed.
    StuffOnlyAfterCrlf,
    /// The greeting carries an APOP timestamp, but APOP is refused (as on
    /// servers where the account has no APOP secret).
    ApopDisabled,
    /// RETR of this message sends its `+OK`, then one byte of the body
    /// every 300 ms, for as long as the client listens.
    TrickleRetr(usize),
    /// LIST and UIDL name this many more messages after the real ones
    /// (`n 100`, `n synthetic-n`), which cannot be retrieved.
    Synthetic(usize),
    /// The UIDL listing never ends.
    EndlessUidl,
}

/// A token the fake POP3 server takes with XOAUTH2 (as the password of
/// [`USER`]), the way Microsoft's POP3 does: `SASL XOAUTH2` in CAPA, and
/// only the two-step form (`AUTH XOAUTH2`, `+`, then the payload); the
/// one-line form gets `-ERR Protocol error`, and a wrong token the JSON
/// error challenge, then `-ERR`.
pub const XOAUTH2_TOKEN: &str = "EwBAA-fake-access-token";

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct Script {
    /// The CAPA list before faults remove entries from it.
    pub capa: Vec<String>,
    /// Put an APOP timestamp in the greeting (APOP digests are not checked).
    pub apop: bool,
    pub password: String,
    pub faults: Faults<Fault>,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            capa: ["USER", "UIDL", "PIPELINING", "STLS", "TOP", "SASL XOAUTH2"]
                .map(String::from)
                .to_vec(),
            apop: false,
            password: PASSWORD.to_owned(),
            faults: Faults::default(),
        }
    }
}

impl Script {
    pub fn fault(mut self, fault: Fault) -> Script {
        self.faults.list.push(fault);
        self
    }

    pub fn first_only(mut self) -> Script {
        self.faults.first_connection_only = true;
        self
    }
}

#[derive(Default)]
struct Shared {
    mailbox: Vec<Message>,
    deleted: Vec<String>,
    overlaps: Vec<String>,
    stalled: bool,
}

/// The running server; stops accepting when dropped.
pub struct FakePop3 {
    server: FakeServer<Shared>,
}

impl FakePop3 {
    pub fn start(messages: Vec<Message>, script: Script) -> FakePop3 {
        let shared = Shared {
            mailbox: messages,
            ..Shared::default()
        };
        let server = FakeServer::start(shared, Serving::OneAtATime, move |conn| {
            Session::new(conn, &script).run()
        });
        FakePop3 { server }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.server.state()
    }

    /// The command lines received, one list per connection.
    pub fn sessions(&self) -> Vec<Vec<String>> {
        self.server.sessions()
    }

    /// Every command line received, all connections.
    pub fn transcript(&self) -> Vec<String> {
        self.server.transcript()
    }

    /// UIDs removed by a QUIT, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.lock().deleted.clone()
    }

    /// UIDs still in the maildrop.
    pub fn mailbox(&self) -> Vec<String> {
        self.lock().mailbox.iter().map(|m| m.uid.clone()).collect()
    }

    pub fn add(&self, message: Message) {
        self.lock().mailbox.push(message);
    }

    /// Removes a message behind the client's back (as another client would).
    pub fn remove(&self, uid: &str) {
        self.lock().mailbox.retain(|m| m.uid != uid);
    }

    /// Commands that found more client bytes already waiting before their
    /// reply was complete; `"X (before its end)"` means the client sent
    /// something while the multi-line reply to X was still streaming.
    pub fn overlaps(&self) -> Vec<String> {
        self.lock().overlaps.clone()
    }

    /// Whether a [`Fault::StallRetr`] was reached (all earlier replies sent).
    pub fn stalled(&self) -> bool {
        self.lock().stalled
    }
}

/// A command was answered (`Go`) or the session is over (`End`).
enum Flow {
    Go,
    End,
}

struct Session<'c> {
    conn: &'c mut Connection<Shared>,
    faults: Vec<Fault>,
    capa: Vec<String>,
    apop: bool,
    password: String,
    user: Option<String>,
    /// The maildrop as of login, and which of its messages are marked deleted.
    drop: Option<Vec<(Message, bool)>>,
}

impl<'c> Session<'c> {
    fn new(conn: &'c mut Connection<Shared>, script: &Script) -> Session<'c> {
        let faults = script.faults.for_connection(conn.index);
        let removed = |name: &str| match name {
            "UIDL" => faults.contains(&Fault::NoUidl),
            "PIPELINING" => faults.contains(&Fault::NoPipelining),
            "STLS" => faults.contains(&Fault::NoStls),
            _ => false,
        };
        let capa = script
            .capa
            .iter()
            .filter(|c| !removed(c))
            .cloned()
            .collect();
        Session {
            conn,
            faults,
            capa,
            apop: script.apop,
            password: script.password.clone(),
            user: None,
            drop: None,
        }
    }

    fn has(&self, fault: &Fault) -> bool {
        self.faults.contains(fault)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.conn.state()
    }

    fn send(&mut self, text: &str) -> io::Result<Flow> {
        self.conn.send(text)?;
        Ok(Flow::Go)
    }

    /// Stops answering; reads (and ignores) until the client goes away.
    fn hang(&mut self) -> io::Result<Flow> {
        self.conn.hang()?;
        Ok(Flow::End)
    }

    /// Closes our side cleanly (everything sent arrives, then EOF).
    fn cut(&mut self) -> io::Result<Flow> {
        self.conn.cut()?;
        Ok(Flow::End)
    }

    fn run(&mut self) -> io::Result<()> {
        if self.has(&Fault::GarbageGreeting) {
            self.send("* OK [CAPABILITY IMAP4rev1] not a POP3 server\r\n")?;
            self.hang()?;
            return Ok(());
        }
        let stamp = if self.apop || self.has(&Fault::ApopDisabled) {
            format!(" {APOP_STAMP}")
        } else {
            String::new()
        };
        self.send(&format!("+OK fake POP3 ready{stamp}\r\n"))?;
        loop {
            let mut raw = Vec::new();
            if (&mut self.conn.reader)
                .take(4096)
                .read_until(b'\n', &mut raw)?
                == 0
            {
                return Ok(());
            }
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            let waiting = self.conn.more_waiting();
            self.conn.record(&line);
            if waiting {
                self.lock().overlaps.push(line.clone());
            }
            if let Flow::End = self.command(&line)? {
                return Ok(());
            }
        }
    }

    fn command(&mut self, line: &str) -> io::Result<Flow> {
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        let verb = verb.to_ascii_uppercase();
        let authed = self.drop.is_some();
        match (verb.as_str(), authed) {
            ("CAPA", _) => {
                let mut reply = "+OK capability list follows\r\n".to_owned();
                for capa in &self.capa {
                    reply.push_str(&format!("{capa}\r\n"));
                }
                reply.push_str(".\r\n");
                self.send(&reply)
            }
            ("QUIT", _) => {
                self.quit();
                self.send("+OK bye\r\n")?;
                Ok(Flow::End)
            }
            ("NOOP", true) => self.send("+OK\r\n"),
            ("USER", false) if arg == USER => {
                self.user = Some(arg.to_owned());
                self.send("+OK\r\n")
            }
            ("PASS", false) if self.user.is_some() && arg == self.password => self.login(),
            ("APOP", false) if self.has(&Fault::ApopDisabled) => {
                self.send("-ERR [AUTH] APOP not supported\r\n")
            }
            ("APOP", false) if self.apop && arg.split(' ').next() == Some(USER) => self.login(),
            ("USER" | "PASS" | "APOP", false) => self.send("-ERR [AUTH] invalid login\r\n"),
            ("AUTH", false) if arg.eq_ignore_ascii_case("XOAUTH2") => self.xoauth2(),
            ("AUTH", false) => self.send("-ERR Protocol error. Connection is closed. 10\r\n"),
            ("STLS", false) if self.faults.contains(&Fault::StlsInjection) => {
                self.send("+OK Begin TLS negotiation\r\n+OK injected\r\n")
            }
            ("STLS", false) => self.send("-ERR TLS is not available here\r\n"),
            ("STAT", true) => {
                let (count, size) = self
                    .live()
                    .fold((0, 0), |(c, s), (_, m)| (c + 1, s + m.data.len()));
                self.send(&format!("+OK {count} {size}\r\n"))
            }
            ("LIST", true) => self.listing(arg, false, |n, m| format!("{n} {}", m.data.len())),
            ("UIDL", true) if self.has(&Fault::NoUidl) => self.send("-ERR UIDL not supported\r\n"),
            ("UIDL", true) => {
                let long = self.faults.iter().find_map(|f| match f {
                    Fault::LongLine(len) => Some(*len),
                    _ => None,
                });
                if let Some(len) = long {
                    self.send("+OK\r\n1 ")?;
                    self.conn.out.write_all(&vec![b'x'; len])?;
                    return self.hang();
                }
                if self.has(&Fault::EndlessUidl) {
                    self.send("+OK\r\n")?;
                    let mut writer = io::BufWriter::new(&self.conn.out);
                    for n in 1.. {
                        write!(writer, "{n} endless-{n:060}\r\n")?;
                    }
                }
                let garbage = self.has(&Fault::GarbageUidlLine);
                self.listing(arg, garbage, |n, m| format!("{n} {}", m.uid))
            }
            ("RETR", true) => match self.number(arg) {
                Some(n) => self.retr(n, line),
                None => self.send("-ERR no such message\r\n"),
            },
            ("DELE", true) => match self.number(arg) {
                Some(n) => {
                    self.drop.as_mut().unwrap()[n - 1].1 = true;
                    self.send("+OK marked\r\n")
                }
                None => self.send("-ERR no such message\r\n"),
            },
            ("RSET", true) => {
                self.drop
                    .as_mut()
                    .unwrap()
                    .iter_mut()
                    .for_each(|(_, marked)| *marked = false);
                self.send("+OK\r\n")
            }
            _ => self.send("-ERR unknown command or wrong state\r\n"),
        }
    }

    /// The second step of Microsoft's XOAUTH2 (see [`XOAUTH2_TOKEN`]).
    fn xoauth2(&mut self) -> io::Result<Flow> {
        self.send("+ \r\n")?;
        let payload = self.read_client_line()?;
        self.conn.record(&payload);
        let expected = format!("user={USER}\x01auth=Bearer {XOAUTH2_TOKEN}\x01\x01");
        if BASE64.decode(payload.trim()).ok().as_deref() == Some(expected.as_bytes()) {
            return self.login();
        }
        let challenge = BASE64.encode(r#"{"status":"400","schemes":"Bearer"}"#);
        self.send(&format!("+ {challenge}\r\n"))?;
        let answer = self.read_client_line()?;
        self.conn.record(&answer);
        self.send("-ERR Authentication failure: unknown user name or bad password.\r\n")
    }

    /// One line from the client, without its line end.
    fn read_client_line(&mut self) -> io::Result<String> {
        let mut raw = Vec::new();
        (&mut self.conn.reader)
            .take(4096)
            .read_until(b'\n', &mut raw)?;
        Ok(String::from_utf8_lossy(&raw)
            .trim_end_matches(['\r', '\n'])
            .to_owned())
    }

    fn login(&mut self) -> io::Result<Flow> {
        let mailbox = self.lock().mailbox.clone();
        self.drop = Some(mailbox.into_iter().map(|m| (m, false)).collect());
        self.send("+OK logged in\r\n")
    }

    /// Messages not marked deleted, with their numbers.
    fn live(&self) -> impl Iterator<Item = (usize, &Message)> {
        let drop = self.drop.as_deref().unwrap_or_default();
        drop.iter()
            .enumerate()
            .filter(|(_, (_, marked))| !marked)
            .map(|(i, (m, _))| (i + 1, m))
    }

    fn number(&self, arg: &str) -> Option<usize> {
        let n: usize = arg.trim().parse().ok()?;
        self.live().any(|(i, _)| i == n).then_some(n)
    }

    /// LIST / UIDL, for one message or all of them; `garbage` adds a
    /// malformed line after the first.
    fn listing(
        &mut self,
        arg: &str,
        garbage: bool,
        show: impl Fn(usize, &Message) -> String,
    ) -> io::Result<Flow> {
        if !arg.is_empty() {
            return match self.number(arg) {
                Some(n) => {
                    let text = show(n, &self.drop.as_ref().unwrap()[n - 1].0);
                    self.send(&format!("+OK {text}\r\n"))
                }
                None => self.send("-ERR no such message\r\n"),
            };
        }
        let mut reply = "+OK\r\n".to_owned();
        for (i, (n, m)) in self.live().enumerate() {
            reply.push_str(&format!("{}\r\n", show(n, m)));
            if i == 0 && garbage {
                reply.push_str("this is not a uidl line\r\n");
            }
        }
        self.send(&reply)?;
        let synthetic = self.faults.iter().find_map(|f| match f {
            Fault::Synthetic(count) => Some(*count),
            _ => None,
        });
        if let Some(count) = synthetic {
            let first = self.drop.as_ref().map_or(0, Vec::len) + 1;
            let mut writer = io::BufWriter::new(&self.conn.out);
            for n in first..first + count {
                let fake = Message {
                    uid: format!("synthetic-{n}"),
                    data: vec![b'x'; 100],
                };
                write!(writer, "{}\r\n", show(n, &fake))?;
            }
        }
        self.send(".\r\n")
    }

    fn retr(&mut self, n: usize, line: &str) -> io::Result<Flow> {
        if self.has(&Fault::RetrErr(n)) {
            return self.send("-ERR message is locked by another session\r\n");
        }
        if self.has(&Fault::TrickleRetr(n)) {
            self.send("+OK trickling\r\n")?;
            for byte in stuff(&self.drop.as_ref().unwrap()[n - 1].0.data)
                .iter()
                .cycle()
            {
                if self.conn.stopped() {
                    break;
                }
                self.conn.out.write_all(&[*byte])?;
                thread::sleep(Duration::from_millis(300));
            }
            return Ok(Flow::End);
        }
        if self.has(&Fault::StallRetr(n)) {
            self.lock().stalled = true;
            return self.hang();
        }
        let data = &self.drop.as_ref().unwrap()[n - 1].0.data;
        let wire = if self.has(&Fault::StuffOnlyAfterCrlf) {
            stuff_after_crlf_only(data)
        } else {
            stuff(data)
        };
        self.send(&format!("+OK {} octets\r\n", wire.len()))?;
        let cut = self.faults.iter().find_map(|f| match f {
            Fault::CutRetr { message, after } if *message == n => Some(*after),
            _ => None,
        });
        if let Some(after) = cut {
            self.conn.out.write_all(&wire[..after.min(wire.len())])?;
            return self.cut();
        }
        self.conn.out.write_all(&wire)?;
        if !self.capa.iter().any(|c| c == "PIPELINING") {
            // Give a client that does not wait for the end of the reply
            // time to show it.
            thread::sleep(Duration::from_millis(20));
        }
        if self.conn.more_waiting() {
            self.lock()
                .overlaps
                .push(format!("{line} (before its end)"));
        }
        self.send(".\r\n")
    }

    /// Applies deletions (only ever on QUIT, as RFC 1939's UPDATE state).
    fn quit(&mut self) {
        let Some(drop) = self.drop.take() else { return };
        let doomed: Vec<String> = drop
            .into_iter()
            .filter(|(_, marked)| *marked)
            .map(|(m, _)| m.uid)
            .collect();
        let mut shared = self.lock();
        shared.mailbox.retain(|m| !doomed.contains(&m.uid));
        shared.deleted.extend(doomed);
    }
}

/// The wire form of a message body: dot-stuffed, CRLF-terminated, without
/// the final `.` line.
pub fn stuff(data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(data.len() + 16);
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    if !wire.is_empty() && !wire.ends_with(b"\r\n") {
        wire.extend_from_slice(b"\r\n");
    }
    wire
}

/// [`stuff`] as a broken server does it: a line is stuffed only when the
/// line before it ended in CRLF.
fn stuff_after_crlf_only(data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(data.len() + 16);
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") && (wire.is_empty() || wire.ends_with(b"\r\n")) {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire
}
