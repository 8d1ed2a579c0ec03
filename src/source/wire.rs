//! A buffered connection to a server, shared by the protocol clients: line
//! reads with a length cap, timeouts on every read and write, and the
//! STARTTLS upgrade with its injection check.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Account, TlsMode};
use crate::error::{Error, Kind};
use crate::net::{self, Stream, TlsOptions};

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
    /// Connects to an account's server, with TLS from the first byte if
    /// configured. Returns the TLS settings too, for a later STARTTLS.
    pub async fn open(account: &Account) -> Result<(Wire, TlsOptions), Error> {
        let tls = TlsOptions {
            ca_file: account.ca_file.clone(),
            fingerprint: account.fingerprint,
        };
        let (host, timeout) = (&account.host, account.timeout);
        let tcp = net::connect(host, account.port, timeout).await?;
        let stream = match account.tls {
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
