//! A buffered connection to a server, shared by the protocol clients: line
//! reads with a length cap, timeouts on every read and write, and the
//! STARTTLS upgrade with its injection check.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Account, AuthMethod, Secret, TlsMode};
use crate::error::{Error, Kind};
use crate::fingerprint::Fingerprint;
use crate::net::{self, Stream, TlsOptions};

/// How to reach a server and log in to it, whatever part of the
/// configuration describes it (an account's source server, or the IMAP
/// server mail is delivered to), so that connection and login code is
/// shared by sources and sinks.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Names the server's configuration in messages, e.g. `account home`.
    pub label: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server's end-entity certificate (DER).
    pub fingerprint: Option<Fingerprint>,
    pub username: String,
    pub auth: AuthMethod,
    pub allow_plaintext_auth: bool,
    /// How long to wait for the server before giving up.
    pub timeout: Duration,
}

impl From<&Account> for ServerSpec {
    fn from(account: &Account) -> ServerSpec {
        ServerSpec {
            label: format!("account {}", account.name),
            host: account.host.clone(),
            port: account.port,
            tls: account.tls,
            ca_file: account.ca_file.clone(),
            fingerprint: account.fingerprint,
            username: account.username.clone(),
            auth: account.auth,
            allow_plaintext_auth: account.allow_plaintext_auth,
            timeout: account.timeout,
        }
    }
}

impl ServerSpec {
    /// The password to log in with, and whether a method that puts it on
    /// the wire may be used: only over TLS, to this machine, or when the
    /// user explicitly allowed it.
    pub fn credentials<'a>(
        &self,
        secret: Option<&'a Secret>,
        encrypted: bool,
    ) -> Result<(&'a Secret, bool), Error> {
        let secret = secret.ok_or_else(|| {
            Error::new(
                Kind::Config,
                format!(
                    "{}: no password configured (password, password_command or password_file)",
                    self.label
                ),
            )
        })?;
        let may_reveal =
            encrypted || self.allow_plaintext_auth || net::is_loopback_host(&self.host);
        Ok((secret, may_reveal))
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
    timeout: Duration,
    host: String,
}

impl Wire {
    /// Connects to a server, with TLS from the first byte if configured.
    /// Returns the TLS settings too, for a later STARTTLS.
    pub async fn open(server: &ServerSpec) -> Result<(Wire, TlsOptions), Error> {
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
        let wire = Wire {
            stream,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            timeout,
            host: host.clone(),
        };
        Ok((wire, tls))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Changes how long a read or write may wait; returns the old limit.
    /// IMAP IDLE waits far longer for the server than any command does.
    pub fn set_timeout(&mut self, timeout: Duration) -> Duration {
        std::mem::replace(&mut self.timeout, timeout)
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
                    self.host
                ),
            ));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(Error::new(
                Kind::Protocol,
                format!("{}: TLS requested twice", self.host),
            ));
        };
        let stream = net::start_tls(tcp, &self.host, tls, self.timeout).await?;
        Ok(Wire { stream, ..self })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.lost(err)),
            Err(_) => Err(self.timed_out()),
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
                        self.host
                    ),
                ));
            }
            if self.end - self.start == self.buf.len() {
                // A long line (IMAP SEARCH results) outgrows the buffer.
                let mut bigger = vec![0; self.buf.len() * 2].into_boxed_slice();
                bigger[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
                self.end -= self.start;
                self.start = 0;
                self.buf = bigger;
            }
            self.fill_or_eof().await?;
        }
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
        match tokio::time::timeout(self.timeout, self.stream.read(&mut self.buf[self.end..])).await
        {
            Ok(Ok(read)) => {
                self.end += read;
                Ok(read)
            }
            Ok(Err(err)) => Err(self.lost(err)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Like [`fill`](Self::fill), with EOF as an error.
    pub async fn fill_or_eof(&mut self) -> Result<(), Error> {
        if self.fill().await? == 0 {
            return Err(Error::new(
                Kind::Connection,
                format!("{}: the server closed the connection", self.host),
            ));
        }
        Ok(())
    }

    fn lost(&self, err: std::io::Error) -> Error {
        Error::new(
            Kind::Connection,
            format!("{}: connection lost: {err}", self.host),
        )
    }

    fn timed_out(&self) -> Error {
        Error::new(
            Kind::Server,
            format!(
                "{}: no answer from the server for {} s",
                self.host,
                self.timeout.as_secs()
            ),
        )
    }
}
