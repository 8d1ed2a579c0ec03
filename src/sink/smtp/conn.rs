//! The connection to an MTA: TCP (plain or TLS) or a Unix socket for LMTP,
//! with buffered reply reading, a line cap, the pace every read must keep
//! ([`Pace`], shared with the sources) and a timeout on every write.
//!
//! This is a sibling of `wire` rather than a use of it: `Wire` opens TCP
//! connections from a source's `ServerSpec`, while delivery connects from a
//! `DeliveryServer` and LMTP also needs Unix sockets. Both share
//! `net::Stream` and `net::start_tls`.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::codec::{self, MAX_LINE, Reply, ReplyParser};
use crate::config::{MtaAddress, TlsMode};
use crate::error::{Error, Kind};
use crate::net::{self, Stream, TlsOptions};
use crate::wire::{Pace, Stall};

/// Replies are short; message data only goes out.
const READ_BUFFER: usize = 16 * 1024;

pub struct Conn {
    io: Stream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    pace: Pace,
    /// `host:port` or the socket path, for messages.
    peer: String,
    /// The TLS server name (TCP only).
    host: Option<String>,
    /// Local: loopback TCP or a Unix socket, where nothing crosses a network.
    local: bool,
}

impl Conn {
    /// Connects, with TLS from the first byte for [`TlsMode::Implicit`].
    pub async fn open(
        address: &MtaAddress,
        tls_mode: TlsMode,
        tls: &TlsOptions,
        timeout: Duration,
    ) -> Result<Conn, Error> {
        let (io, peer, host, local) = match address {
            MtaAddress::Tcp { host, port } => {
                let tcp = net::connect(host, *port, timeout).await?;
                // Writes are already gathered into large buffers; Nagle would
                // only hold back the last part of a message (with the final
                // dot) until the previous segment is acknowledged.
                tcp.set_nodelay(true)
                    .map_err(|err| Error::new(Kind::Connection, format!("{host}:{port}: {err}")))?;
                let stream = match tls_mode {
                    TlsMode::Implicit => net::start_tls(tcp, host, tls, timeout).await?,
                    TlsMode::StartTls | TlsMode::None => Stream::Plain(tcp),
                };
                (
                    stream,
                    format!("{host}:{port}"),
                    Some(host.clone()),
                    net::is_loopback_host(host),
                )
            }
            MtaAddress::Unix(path) => {
                if tls_mode != TlsMode::None {
                    return Err(Error::new(
                        Kind::Config,
                        format!(
                            "{}: TLS over a Unix socket is not supported",
                            path.display()
                        ),
                    ));
                }
                let connect = UnixStream::connect(path);
                let unix = match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(unix)) => unix,
                    Ok(Err(err)) => {
                        return Err(Error::new(
                            Kind::Connection,
                            format!("cannot connect to {}: {err}", path.display()),
                        ));
                    }
                    Err(_) => {
                        return Err(Error::new(
                            Kind::Connection,
                            format!("connecting to {} timed out", path.display()),
                        ));
                    }
                };
                (Stream::Unix(unix), path.display().to_string(), None, true)
            }
        };
        Ok(Conn {
            io,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            pace: Pace::new(timeout),
            peer,
            host,
            local,
        })
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn is_tls(&self) -> bool {
        self.io.is_tls()
    }

    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Upgrades to TLS after the server's 220 to STARTTLS.
    pub async fn start_tls(self, tls: &TlsOptions) -> Result<Conn, Error> {
        if self.start != self.end {
            // Anything the server sent before the handshake is outside the
            // TLS protection and could have been injected (CVE-2011-0411).
            return Err(Error::new(
                Kind::Protocol,
                format!(
                    "{}: the server sent data after agreeing to STARTTLS, before the TLS handshake; refusing to continue",
                    self.peer
                ),
            ));
        }
        let (Stream::Plain(tcp), Some(host)) = (self.io, self.host.as_deref()) else {
            return Err(Error::new(
                Kind::Protocol,
                format!(
                    "{}: STARTTLS on a connection that cannot take it",
                    self.peer
                ),
            ));
        };
        let stream = net::start_tls(tcp, host, tls, self.pace.timeout()).await?;
        Ok(Conn {
            io: stream,
            host: self.host.clone(),
            peer: self.peer.clone(),
            buf: self.buf,
            ..self
        })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        let timeout = self.pace.timeout();
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {
                // What the server sends next answers this.
                self.pace.restart();
                Ok(())
            }
            Ok(Err(err)) => Err(self.lost(err)),
            Err(_) => Err(Stall::Silent(timeout).into_error(&self.peer)),
        }
    }

    /// Writes a command, tracing it at debug level (masked if it carries
    /// credentials).
    pub async fn send(&mut self, command: &[u8], secret: bool) -> Result<(), Error> {
        if tracing::enabled!(tracing::Level::DEBUG) {
            for line in command.split_inclusive(|&b| b == b'\n') {
                tracing::debug!("{} C: {}", self.peer, codec::loggable_command(line, secret));
            }
        }
        self.write_all(command).await
    }

    /// Reads one complete reply.
    pub async fn read_reply(&mut self) -> Result<Reply, Error> {
        let mut parser = ReplyParser::new();
        loop {
            let line = self.read_line().await?;
            tracing::debug!("{} S: {}", self.peer, String::from_utf8_lossy(&line));
            match parser.push(&line) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(err) => {
                    return Err(Error::new(Kind::Protocol, format!("{}: {err}", self.peer)));
                }
            }
        }
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, Error> {
        let mut scanned = 0;
        loop {
            let unread = &self.buf[self.start..self.end];
            if let Some(pos) = memchr::memchr(b'\n', &unread[scanned..]) {
                let end = scanned + pos;
                let line = unread[..end].strip_suffix(b"\r").unwrap_or(&unread[..end]);
                let line = line.to_vec();
                self.start += end + 1;
                return Ok(line);
            }
            scanned = unread.len();
            if scanned > MAX_LINE {
                return Err(Error::new(
                    Kind::Protocol,
                    format!(
                        "{}: the server sent a line longer than {MAX_LINE} bytes",
                        self.peer
                    ),
                ));
            }
            if self.fill().await? == 0 {
                return Err(Error::new(
                    Kind::Connection,
                    format!("{}: the server closed the connection", self.peer),
                ));
            }
        }
    }

    async fn fill(&mut self) -> Result<usize, Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match self
            .pace
            .read(self.io.read(&mut self.buf[self.end..]))
            .await
        {
            Ok(Ok(read)) => {
                self.end += read;
                Ok(read)
            }
            Ok(Err(err)) => Err(self.lost(err)),
            Err(stall) => Err(stall.into_error(&self.peer)),
        }
    }

    /// Whether the server spoke or hung up while the session was idle (a
    /// 421 on timeout, EOF): such a session is not worth another command.
    /// Never waits.
    pub async fn spoke_while_idle(&mut self) -> bool {
        if self.start != self.end {
            return true;
        }
        // `timeout` polls the read once before looking at the clock, so a
        // zero timeout is a non-blocking check; a read cut short this way
        // loses nothing (tokio's reads are cancel-safe).
        tokio::time::timeout(Duration::ZERO, self.io.read(&mut self.buf[..]))
            .await
            .is_ok()
    }

    fn lost(&self, err: io::Error) -> Error {
        Error::new(
            Kind::Connection,
            format!("{}: connection lost: {err}", self.peer),
        )
    }
}
