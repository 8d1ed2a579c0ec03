//! A buffered connection to a server, shared by the protocol clients: line
//! reads with a length cap, a pace every read must keep ([`Pace`]), a
//! timeout on every write, and the STARTTLS upgrade with its injection check.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Endpoint, Secret, TlsMode};
use crate::error::{Error, Kind};
use crate::net::{self, Stream, TlsOptions};

/// A server to connect and log in to: its endpoint from the
/// configuration (an account's own server, or the IMAP server mail is
/// delivered to) and the password, resolved once per poll by the caller,
/// so that connection and login code is shared by sources and sinks.
#[derive(Debug, Clone)]
pub struct Server {
    /// Names the server's configuration in messages, e.g. `account home`.
    pub label: String,
    pub endpoint: Endpoint,
    pub secret: Option<Secret>,
}

/// What to log in with.
pub struct Credentials<'a> {
    pub username: &'a str,
    pub secret: &'a Secret,
    /// Whether a method that puts the secret on the wire as it is may be
    /// used: only over TLS, to this machine, or when the user explicitly
    /// allowed it.
    pub may_reveal: bool,
}

impl Server {
    /// The credentials to log in with over a link that is `encrypted` or
    /// not; an error names what the configuration lacks.
    pub fn credentials(&self, encrypted: bool) -> Result<Credentials<'_>, Error> {
        let missing = |what: &str| Error::new(Kind::Config, format!("{}: {what}", self.label));
        let endpoint = &self.endpoint;
        let username = endpoint
            .username
            .as_deref()
            .ok_or_else(|| missing("no username configured"))?;
        let secret = self.secret.as_ref().ok_or_else(|| {
            missing("no password configured (password, password_command or password_file)")
        })?;
        let may_reveal =
            encrypted || endpoint.allow_plaintext_auth || net::is_loopback_host(&endpoint.host);
        Ok(Credentials {
            username,
            secret,
            may_reveal,
        })
    }
}

/// Socket reads land here. Protocol code decodes message data in place, so
/// this is all the memory a message of any size needs on the way in.
const READ_BUFFER: usize = 64 * 1024;

pub struct Wire {
    stream: Stream,
    buf: Box<[u8]>,
    /// Unread data is `buf[start..end]`.
    start: usize,
    end: usize,
    pace: Pace,
    /// The server's name, which a STARTTLS verifies.
    host: String,
    /// Names the peer in messages: the host, `host:port`, a socket path.
    label: String,
}

impl Wire {
    /// Connects to a server, with TLS from the first byte if configured.
    /// Returns the TLS settings too, for a later STARTTLS.
    pub async fn open(server: &Endpoint) -> Result<(Wire, TlsOptions), Error> {
        let tls = TlsOptions {
            ca_file: server.ca_file.clone(),
            fingerprint: server.fingerprint,
        };
        let (host, timeout) = (&server.host, server.timeout);
        let tcp = net::connect(host, server.port, timeout).await?;
        let stream = match server.tls {
            TlsMode::Implicit => net::start_tls(tcp, host, &tls, timeout).await?,
            TlsMode::StartTls | TlsMode::None => Stream::Plain(tcp),
        };
        Ok((Wire::new(stream, host.clone(), host.clone(), timeout), tls))
    }

    /// A connection opened elsewhere (an MTA's TCP or Unix socket).
    /// `host` is the name a later STARTTLS verifies, `label` names the
    /// peer in messages.
    pub fn new(stream: Stream, host: String, label: String, timeout: Duration) -> Wire {
        Wire {
            stream,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            pace: Pace::new(timeout),
            host,
            label,
        }
    }

    /// What messages call the peer.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Changes how long a read or write may wait; returns the old limit.
    /// IMAP IDLE waits far longer for the server than any command does.
    pub fn set_timeout(&mut self, timeout: Duration) -> Duration {
        self.pace.set_timeout(timeout)
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Upgrades to TLS after the server agreed to STARTTLS/STLS.
    pub async fn start_tls(self, tls: &TlsOptions) -> Result<Wire, Error> {
        if self.start != self.end {
            // Anything the server sent before the handshake is outside the
            // TLS protection and could have been injected (CVE-2011-0411 class).
            return Err(Error::new(
                Kind::Protocol,
                format!(
                    "{}: the server sent data after agreeing to TLS, before the TLS handshake; refusing to continue",
                    self.label
                ),
            ));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(Error::new(
                Kind::Protocol,
                format!("{}: TLS requested twice", self.label),
            ));
        };
        let stream = net::start_tls(tcp, &self.host, tls, self.pace.timeout()).await?;
        Ok(Wire { stream, ..self })
    }

    /// Sends bytes; what the server sends next answers them, so its reply
    /// gets a fresh [`Pace`] window.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        let timeout = self.pace.timeout();
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {
                self.pace.restart();
                Ok(())
            }
            Ok(Err(err)) => Err(self.lost(err)),
            Err(_) => Err(Stall::Silent(timeout).into_error(&self.label)),
        }
    }

    /// Reads one line (without CR LF), refusing to buffer more than `max`
    /// bytes for it.
    pub async fn read_line(&mut self, max: usize) -> Result<Vec<u8>, Error> {
        let mut scanned = 0;
        loop {
            let unread = &self.buf[self.start..self.end];
            if let Some(pos) = memchr::memchr(b'\n', &unread[scanned..]) {
                let line_end = scanned + pos;
                if line_end > READ_BUFFER {
                    return Ok(self.hand_over_line(line_end));
                }
                let line = unread[..line_end]
                    .strip_suffix(b"\r")
                    .unwrap_or(&unread[..line_end])
                    .to_vec();
                self.start += line_end + 1;
                return Ok(line);
            }
            scanned = unread.len();
            if scanned > max {
                return Err(Error::new(
                    Kind::Protocol,
                    format!(
                        "{}: the server sent a line longer than {max} bytes",
                        self.label
                    ),
                ));
            }
            if self.end - self.start == self.buf.len() {
                // A long line (IMAP SEARCH results) outgrows the buffer, up
                // to what the longest line needs.
                let size = (self.buf.len() * 2).min(max.saturating_add(READ_BUFFER));
                let mut bigger = vec![0; size].into_boxed_slice();
                bigger[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
                self.end -= self.start;
                self.start = 0;
                self.buf = bigger;
            }
            self.fill_or_eof().await?;
        }
    }

    /// Returns the long line that ends at `line_end` (unread offset) by
    /// giving away the buffer that holds it rather than copying it: a
    /// line of megabytes then costs its size once, not twice.
    fn hand_over_line(&mut self, line_end: usize) -> Vec<u8> {
        let after = self.start + line_end + 1;
        let rest = &self.buf[after..self.end];
        let mut fresh = vec![0; rest.len().max(READ_BUFFER)].into_boxed_slice();
        fresh[..rest.len()].copy_from_slice(rest);
        let (start, rest_len) = (self.start, rest.len());
        let mut line = std::mem::replace(&mut self.buf, fresh).into_vec();
        line.truncate(start + line_end);
        line.drain(..start);
        if line.ends_with(b"\r") {
            line.pop();
        }
        self.start = 0;
        self.end = rest_len;
        line
    }

    /// The unread bytes, for decoding in place.
    pub fn unread(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Marks `count` unread bytes as consumed.
    pub fn consume(&mut self, count: usize) {
        self.start += count;
    }

    /// Reads more from the socket; returns bytes read (0 at EOF).
    pub async fn fill(&mut self) -> Result<usize, Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_BUFFER {
                // Give back what a long line took.
                self.buf = vec![0; READ_BUFFER].into_boxed_slice();
            }
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match self
            .pace
            .read(self.stream.read(&mut self.buf[self.end..]))
            .await
        {
            Ok(Ok(read)) => {
                self.end += read;
                Ok(read)
            }
            Ok(Err(err)) => Err(self.lost(err)),
            Err(stall) => Err(stall.into_error(&self.label)),
        }
    }

    /// Like [`fill`](Self::fill), with EOF as an error.
    pub async fn fill_or_eof(&mut self) -> Result<(), Error> {
        if self.fill().await? == 0 {
            return Err(Error::new(
                Kind::Connection,
                format!("{}: the server closed the connection", self.label),
            ));
        }
        Ok(())
    }

    /// Whether the peer spoke or hung up while the session was idle (an
    /// SMTP 421 on timeout, EOF): such a session is not worth another
    /// command. Never waits.
    pub async fn spoke_while_idle(&mut self) -> bool {
        if self.start != self.end {
            return true;
        }
        // `timeout` polls the read once before looking at the clock, so a
        // zero timeout is a non-blocking check; a read cut short this way
        // loses nothing (tokio's reads are cancel-safe).
        tokio::time::timeout(Duration::ZERO, self.stream.read(&mut self.buf[..]))
            .await
            .is_ok()
    }

    fn lost(&self, err: std::io::Error) -> Error {
        Error::new(
            Kind::Connection,
            format!("{}: connection lost: {err}", self.label),
        )
    }
}

/// The least a peer must send per `timeout` spent waiting for it. Per-read
/// timeouts alone let a peer that trickles a byte a second hold a poll (and
/// its `max_connections` permit) forever; any real server, even over a slow
/// link, sends far more than this while it answers.
pub const MIN_PROGRESS: u64 = 1024;

/// Why a peer was given up on while we waited for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Nothing arrived for a whole `timeout`.
    Silent(Duration),
    /// Less than [`MIN_PROGRESS`] bytes arrived in a `timeout` of waiting.
    Trickle { bytes: u64, waited: Duration },
}

impl Stall {
    /// The error shown to the user, naming the peer.
    pub fn into_error(self, peer: &str) -> Error {
        let message = match self {
            Stall::Silent(waited) => {
                format!(
                    "{peer}: no answer from the server for {} s",
                    waited.as_secs()
                )
            }
            Stall::Trickle { bytes, waited } => format!(
                "{peer}: the server sent only {bytes} bytes in {} s; giving up on a connection this slow",
                waited.as_secs()
            ),
        };
        Error::new(Kind::Server, message)
    }
}

/// How long reads may wait for a peer: a response deadline that moves with
/// progress. Each window of `timeout` spent waiting (time spent elsewhere,
/// e.g. delivering a message, does not count) must bring at least
/// [`MIN_PROGRESS`] bytes, and every command we send opens a fresh window,
/// since the peer has something new to answer. So a reply or listing that
/// trickles is dropped within about `timeout` of waiting, a silent peer
/// within `timeout`, while a 100 MB message over a slow link keeps going as
/// long as it keeps arriving at more than `MIN_PROGRESS` per `timeout`.
#[derive(Debug, Clone)]
pub struct Pace {
    timeout: Duration,
    /// Time spent waiting in the current window.
    waited: Duration,
    /// Bytes received in the current window.
    received: u64,
}

impl Pace {
    pub fn new(timeout: Duration) -> Pace {
        Pace {
            timeout,
            waited: Duration::ZERO,
            received: 0,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the window (IMAP IDLE waits far longer than a command);
    /// returns the old one. The new window starts now.
    pub fn set_timeout(&mut self, timeout: Duration) -> Duration {
        self.restart();
        std::mem::replace(&mut self.timeout, timeout)
    }

    /// The peer's turn begins anew: we just sent it something to answer.
    pub fn restart(&mut self) {
        self.waited = Duration::ZERO;
        self.received = 0;
    }

    /// Runs one read, waiting at most what is left of the window; a
    /// window that ends with enough received opens the next one.
    pub async fn read(
        &mut self,
        read: impl Future<Output = std::io::Result<usize>>,
    ) -> Result<std::io::Result<usize>, Stall> {
        tokio::pin!(read);
        loop {
            let limit = self.timeout.saturating_sub(self.waited);
            let started = Instant::now();
            match tokio::time::timeout(limit, &mut read).await {
                Ok(Ok(count)) => {
                    self.account(started.elapsed().min(limit), count as u64)?;
                    return Ok(Ok(count));
                }
                Ok(Err(err)) => return Ok(Err(err)),
                Err(_) => self.account(limit, 0)?,
            }
        }
    }

    /// Counts a read that waited `waited` and brought `bytes`, and judges
    /// the window once it is over.
    fn account(&mut self, waited: Duration, bytes: u64) -> Result<(), Stall> {
        self.waited += waited;
        self.received += bytes;
        if self.waited < self.timeout {
            return Ok(());
        }
        let (bytes, waited) = (self.received, self.waited);
        self.restart();
        match bytes {
            0 => Err(Stall::Silent(waited)),
            bytes if bytes < MIN_PROGRESS => Err(Stall::Trickle { bytes, waited }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_trickle_is_dropped_when_its_window_ends() {
        let mut pace = Pace::new(3 * SECOND);
        assert_eq!(pace.account(SECOND, 1), Ok(()));
        assert_eq!(pace.account(SECOND, 1), Ok(()));
        assert_eq!(
            pace.account(SECOND, 1),
            Err(Stall::Trickle {
                bytes: 3,
                waited: 3 * SECOND
            })
        );
    }

    #[test]
    fn steady_progress_opens_window_after_window() {
        let mut pace = Pace::new(3 * SECOND);
        for _ in 0..100 {
            assert_eq!(pace.account(SECOND, MIN_PROGRESS / 2), Ok(()));
        }
    }

    #[test]
    fn silence_is_told_apart_and_each_command_restarts_the_window() {
        let mut pace = Pace::new(3 * SECOND);
        assert_eq!(pace.account(2 * SECOND, 5), Ok(()));
        // A reply came and we sent the next command: a new turn.
        pace.restart();
        assert_eq!(pace.account(2 * SECOND, 5), Ok(()));
        pace.restart();
        assert_eq!(pace.account(3 * SECOND, 0), Err(Stall::Silent(3 * SECOND)));
    }
}
