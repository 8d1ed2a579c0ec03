//! A scriptable fake SMTP/LMTP server for fault-injection tests (std only).
//!
//! It serves each connection on a thread of its own (see
//! [`crate::fake_server`]) (a sink's idle session and a bounce's session may be
//! open at once). Transactions are numbered from 0 across all connections,
//! in the order their MAIL commands arrive, so a fault can hit one message
//! only ([`Script::fault_on`]).
//!
//! What the test can read afterwards: every command line received, per
//! connection ([`FakeSmtp::sessions`]); the messages the server accepted
//! (250 to the final dot), with their envelope and unstuffed data
//! ([`FakeSmtp::accepted`]); and [`FakeSmtp::overlaps`]: commands that
//! arrived while an earlier one was still unanswered, which is a violation
//! when PIPELINING is not announced.

use std::io::{self, BufRead, Read};
use std::net::Shutdown;
use std::sync::MutexGuard;
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::fake_server::{Connection, FakeServer, Serving};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";

/// Ways the server misbehaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// MAIL FROM gets this reply (e.g. `550 5.7.1 go away`).
    Mail(String),
    /// RCPT TO for this recipient (or any, with `None`) gets this reply.
    Rcpt(Option<String>, String),
    /// The DATA command gets this reply instead of 354.
    Data(String),
    /// The final dot gets this reply (e.g. `552 5.3.4 too big`); for LMTP,
    /// every recipient gets it.
    DataEnd(String),
    /// LMTP: the final dot gets these replies, one per recipient in order.
    LmtpReplies(Vec<String>),
    /// After this many bytes of message data, the server closes the
    /// connection (sending `reply` first, if any).
    DropMidData { after: usize, reply: Option<String> },
    /// The connection closes right after the final dot, without a reply.
    DropAfterDot,
    /// PIPELINING is not announced.
    NoPipelining,
    /// STARTTLS is not announced (and refused).
    NoStartTls,
    /// STARTTLS is accepted, and a plaintext reply is sent right behind the
    /// 220, before any handshake: the STARTTLS injection attack.
    StartTlsInjection,
    /// Right after its reply to the final dot, the server sends `421` and
    /// closes the connection, as on an idle timeout: the next transaction
    /// finds the session gone.
    CloseAfterTransaction,
}

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct Script {
    pub lmtp: bool,
    /// EHLO keywords before faults remove entries.
    pub capabilities: Vec<String>,
    /// Faults, each for every transaction (`None`) or one (`Some(n)`).
    pub faults: Vec<(Option<usize>, Fault)>,
    /// AUTH is required before MAIL.
    pub auth_required: bool,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            lmtp: false,
            capabilities: [
                "PIPELINING",
                "SIZE 50000000",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "STARTTLS",
                "AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER",
            ]
            .map(String::from)
            .to_vec(),
            faults: Vec::new(),
            auth_required: false,
        }
    }
}

impl Script {
    pub fn lmtp() -> Script {
        Script {
            lmtp: true,
            ..Script::default()
        }
    }

    /// A fault on every transaction (or on the session, for the
    /// capability faults).
    pub fn fault(mut self, fault: Fault) -> Script {
        self.faults.push((None, fault));
        self
    }

    /// A fault on transaction `n` (counted from 0) only.
    pub fn fault_on(mut self, n: usize, fault: Fault) -> Script {
        self.faults.push((Some(n), fault));
        self
    }

    pub fn capability(mut self, keyword: &str) -> Script {
        self.capabilities.push(keyword.to_owned());
        self
    }

    pub fn without(mut self, keyword: &str) -> Script {
        self.capabilities
            .retain(|c| !c.split(' ').next().unwrap().eq_ignore_ascii_case(keyword));
        self
    }

    pub fn auth_required(mut self) -> Script {
        self.auth_required = true;
        self
    }
}

/// A message the server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The MAIL FROM line's address (empty for `<>`) and parameters.
    pub from: String,
    pub params: String,
    pub recipients: Vec<String>,
    /// The data, unstuffed, with its CRLFs, without the final dot line.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    accepted: Vec<Accepted>,
    overlaps: Vec<String>,
    transactions: usize,
    /// Transactions whose data was cut (the server dropped the connection,
    /// or the client went away before the dot).
    cut: usize,
}

/// The running server; stops accepting when dropped.
pub struct FakeSmtp {
    server: FakeServer<Shared>,
}

impl FakeSmtp {
    pub fn start(script: Script) -> FakeSmtp {
        let server = FakeServer::start(Shared::default(), Serving::Concurrently, move |conn| {
            Session::new(conn, script.clone()).run()
        });
        FakeSmtp { server }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.server.state()
    }

    /// The command lines received (not message data), one list per
    /// connection.
    pub fn sessions(&self) -> Vec<Vec<String>> {
        self.server.sessions()
    }

    /// Every command line received, all connections.
    pub fn transcript(&self) -> Vec<String> {
        self.server.transcript()
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.lock().accepted.clone()
    }

    pub fn overlaps(&self) -> Vec<String> {
        self.lock().overlaps.clone()
    }

    /// Transactions whose data never reached its final dot.
    pub fn cut(&self) -> usize {
        self.lock().cut
    }

    /// Waits (up to 10 s) until `condition` holds on the server's record:
    /// the client's last bytes may still be in flight when it returns.
    pub fn wait_for(&self, what: &str, condition: impl Fn(&FakeSmtp) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "fake SMTP: timed out waiting for {what}; transcript: {:?}",
                self.sessions()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

struct Session<'c> {
    conn: &'c mut Connection<Shared>,
    script: Script,
    authenticated: bool,
    transaction: Option<usize>,
    from: Option<(String, String)>,
    recipients: Vec<String>,
}

enum Flow {
    Go,
    End,
}

impl<'c> Session<'c> {
    fn new(conn: &'c mut Connection<Shared>, script: Script) -> Session<'c> {
        Session {
            conn,
            script,
            authenticated: false,
            transaction: None,
            from: None,
            recipients: Vec::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.conn.state()
    }

    fn session_fault(&self, fault: &Fault) -> bool {
        self.script.faults.iter().any(|(_, f)| f == fault)
    }

    /// The faults that apply to the current transaction.
    fn faults(&self) -> Vec<Fault> {
        self.script
            .faults
            .iter()
            .filter(|(n, _)| n.is_none() || *n == self.transaction)
            .map(|(_, f)| f.clone())
            .collect()
    }

    fn send(&mut self, text: &str) -> io::Result<()> {
        self.conn.send(text)
    }

    fn read_line(&mut self) -> io::Result<Option<String>> {
        let mut line = Vec::new();
        if self.conn.reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        Ok(Some(text))
    }

    fn run(&mut self) -> io::Result<()> {
        self.send("220 fake.example ESMTP ready\r\n")?;
        while let Some(line) = self.read_line()? {
            self.conn.record(&line);
            if !self.conn.reader.buffer().is_empty() && !self.pipelining() {
                self.lock().overlaps.push(line.clone());
            }
            if let Flow::End = self.command(&line)? {
                break;
            }
        }
        Ok(())
    }

    fn pipelining(&self) -> bool {
        self.capabilities().iter().any(|c| c == "PIPELINING")
    }

    fn capabilities(&self) -> Vec<String> {
        self.script
            .capabilities
            .iter()
            .filter(|c| match c.as_str() {
                "PIPELINING" => !self.session_fault(&Fault::NoPipelining),
                "STARTTLS" => !self.session_fault(&Fault::NoStartTls),
                _ => true,
            })
            .cloned()
            .collect()
    }

    fn command(&mut self, line: &str) -> io::Result<Flow> {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or_default().to_owned();
        match verb.as_str() {
            "EHLO" | "LHLO" => {
                if (verb == "LHLO") != self.script.lmtp {
                    self.send("500 5.5.1 wrong greeting for this protocol\r\n")?;
                    return Ok(Flow::Go);
                }
                let mut reply = String::from("250-fake.example\r\n");
                let capabilities = self.capabilities();
                for (i, capability) in capabilities.iter().enumerate() {
                    let sep = if i + 1 == capabilities.len() {
                        ' '
                    } else {
                        '-'
                    };
                    reply.push_str(&format!("250{sep}{capability}\r\n"));
                }
                if capabilities.is_empty() {
                    reply = "250 fake.example\r\n".to_owned();
                }
                self.send(&reply)?;
            }
            "HELO" => self.send("250 fake.example\r\n")?,
            "STARTTLS" => {
                if self.session_fault(&Fault::StartTlsInjection) {
                    self.send("220 2.0.0 go ahead\r\n250 injected\r\n")?;
                    // No TLS here: wait for the client to give up.
                    let mut buf = [0; 1024];
                    while self.conn.reader.read(&mut buf)? > 0 {}
                    return Ok(Flow::End);
                }
                self.send("454 4.7.0 TLS not available\r\n")?;
            }
            "AUTH" => self.auth(line)?,
            "MAIL" => {
                self.transaction = Some({
                    let mut shared = self.lock();
                    shared.transactions += 1;
                    shared.transactions - 1
                });
                self.recipients.clear();
                self.from = None;
                if self.script.auth_required && !self.authenticated {
                    self.send("530 5.7.0 authentication required\r\n")?;
                    return Ok(Flow::Go);
                }
                if let Some(Fault::Mail(reply)) = self
                    .faults()
                    .into_iter()
                    .find(|f| matches!(f, Fault::Mail(_)))
                {
                    self.send(&format!("{reply}\r\n"))?;
                    return Ok(Flow::Go);
                }
                let rest = &line[line.find(':').map_or(line.len(), |i| i + 1)..];
                let (path, params) = rest.split_once('>').unwrap_or((rest, ""));
                let address = path.trim().trim_start_matches('<').to_owned();
                self.from = Some((address, params.trim().to_owned()));
                self.send("250 2.1.0 ok\r\n")?;
            }
            "RCPT" => {
                let rest = &line[line.find(':').map_or(line.len(), |i| i + 1)..];
                let address = rest.trim().trim_start_matches('<').trim_end_matches('>');
                if self.from.is_none() {
                    self.send("503 5.5.1 need MAIL first\r\n")?;
                    return Ok(Flow::Go);
                }
                let fault = self.faults().into_iter().find_map(|f| match f {
                    Fault::Rcpt(None, reply) => Some(reply),
                    Fault::Rcpt(Some(who), reply) if who == address => Some(reply),
                    _ => None,
                });
                match fault {
                    Some(reply) => self.send(&format!("{reply}\r\n"))?,
                    None => {
                        self.recipients.push(address.to_owned());
                        self.send("250 2.1.5 ok\r\n")?;
                    }
                }
            }
            "DATA" => return self.data(),
            "RSET" => {
                self.from = None;
                self.recipients.clear();
                self.send("250 2.0.0 reset\r\n")?;
            }
            "NOOP" => self.send("250 2.0.0 ok\r\n")?,
            "QUIT" => {
                self.send("221 2.0.0 bye\r\n")?;
                return Ok(Flow::End);
            }
            _ => self.send("500 5.5.2 unknown command\r\n")?,
        }
        Ok(Flow::Go)
    }

    fn auth(&mut self, line: &str) -> io::Result<()> {
        let words: Vec<&str> = line.split(' ').collect();
        let mechanism = words.get(1).map(|m| m.to_ascii_uppercase());
        let decode = |text: &str| {
            BASE64
                .decode(text.trim())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let ok = match mechanism.as_deref() {
            Some("PLAIN") => {
                let payload = match words.get(2) {
                    Some(initial) => decode(initial),
                    None => {
                        self.send("334 \r\n")?;
                        decode(&self.read_line()?.unwrap_or_default())
                    }
                };
                payload == format!("\0{USER}\0{PASSWORD}")
            }
            Some("LOGIN") => {
                self.send("334 VXNlcm5hbWU6\r\n")?;
                let user = decode(&self.read_line()?.unwrap_or_default());
                self.send("334 UGFzc3dvcmQ6\r\n")?;
                let password = decode(&self.read_line()?.unwrap_or_default());
                user == USER && password == PASSWORD
            }
            // The bearer-token mechanisms take the password as the token,
            // and answer a wrong one with an error challenge (RFC 7628
            // §3.2.2), then 535 once the client sent its empty response.
            Some(bearer @ ("XOAUTH2" | "OAUTHBEARER")) => {
                let payload = decode(words.get(2).unwrap_or(&""));
                let ok = if bearer == "XOAUTH2" {
                    payload == format!("user={USER}\x01auth=Bearer {PASSWORD}\x01\x01")
                } else {
                    payload.starts_with(&format!("n,a={USER},\x01"))
                        && payload.ends_with(&format!("\x01auth=Bearer {PASSWORD}\x01\x01"))
                };
                if !ok {
                    let challenge = r#"{"status":"invalid_token","schemes":"bearer"}"#;
                    self.send(&format!("334 {}\r\n", BASE64.encode(challenge)))?;
                    let answer = self.read_line()?.unwrap_or_default();
                    self.conn.record(&answer);
                }
                ok
            }
            _ => {
                self.send("504 5.5.4 unrecognized mechanism\r\n")?;
                return Ok(());
            }
        };
        if ok {
            self.authenticated = true;
            self.send("235 2.7.0 authenticated\r\n")
        } else {
            self.send("535 5.7.8 bad credentials\r\n")
        }
    }

    fn data(&mut self) -> io::Result<Flow> {
        let faults = self.faults();
        if let Some(Fault::Data(reply)) = faults.iter().find(|f| matches!(f, Fault::Data(_))) {
            self.send(&format!("{reply}\r\n"))?;
            return Ok(Flow::Go);
        }
        if self.from.is_none() || self.recipients.is_empty() {
            self.send("554 5.5.1 no valid recipients\r\n")?;
            return Ok(Flow::Go);
        }
        self.send("354 end data with <CR><LF>.<CR><LF>\r\n")?;
        let drop_at = faults.iter().find_map(|f| match f {
            Fault::DropMidData { after, reply } => Some((*after, reply.clone())),
            _ => None,
        });
        let mut data = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.conn.reader.read_until(b'\n', &mut line)? == 0 {
                self.lock().cut += 1;
                return Ok(Flow::End);
            }
            if line == b".\r\n" {
                break;
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(line);
            if let Some((after, reply)) = &drop_at
                && data.len() >= *after
            {
                if let Some(reply) = reply {
                    self.send(&format!("{reply}\r\n"))?;
                }
                self.lock().cut += 1;
                let _ = self.conn.out.shutdown(Shutdown::Both);
                return Ok(Flow::End);
            }
        }
        if faults.contains(&Fault::DropAfterDot) {
            let _ = self.conn.out.shutdown(Shutdown::Both);
            return Ok(Flow::End);
        }
        let replies: Vec<String> = if let Some(Fault::LmtpReplies(replies)) =
            faults.iter().find(|f| matches!(f, Fault::LmtpReplies(_)))
        {
            replies.clone()
        } else {
            let reply = faults
                .iter()
                .find_map(|f| match f {
                    Fault::DataEnd(reply) => Some(reply.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "250 2.0.0 queued".to_owned());
            let count = if self.script.lmtp {
                self.recipients.len()
            } else {
                1
            };
            vec![reply; count]
        };
        let mut text = String::new();
        for reply in &replies {
            text.push_str(reply);
            text.push_str("\r\n");
        }
        // Record before replying, so that a client that saw the reply
        // finds the message recorded.
        if replies.iter().all(|r| r.starts_with('2')) {
            let (from, params) = self.from.clone().unwrap_or_default();
            self.lock().accepted.push(Accepted {
                from,
                params,
                recipients: self.recipients.clone(),
                data,
            });
        }
        self.send(&text)?;
        self.from = None;
        self.recipients.clear();
        if faults.contains(&Fault::CloseAfterTransaction) {
            self.send("421 4.4.2 idle timeout\r\n")?;
            let _ = self.conn.out.shutdown(Shutdown::Both);
            return Ok(Flow::End);
        }
        Ok(Flow::Go)
    }
}
