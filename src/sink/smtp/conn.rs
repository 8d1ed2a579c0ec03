//! The connection to an MTA: TCP (plain or TLS) or a Unix socket for LMTP.
//! Reading, the line cap, the pace every read must keep and the timeout
//! on every write are `wire`'s, as for the sources; this adds the Unix
//! socket, reply parsing and traces.

use std::path::Path;

use tokio::net::UnixStream;

use super::codec::{self, MAX_LINE, Reply, ReplyParser};
use crate::config::{Endpoint, TlsMode};
use crate::error::{Error, Kind};
use crate::net::{self, Stream, TlsOptions};
use crate::wire::Wire;

pub struct Conn {
    wire: Wire,
    /// Local: loopback TCP or a Unix socket, where nothing crosses a network.
    local: bool,
}

impl Conn {
    /// Connects to `server` over TCP, or to the Unix `socket` if there is
    /// one, with TLS from the first byte for [`TlsMode::Implicit`].
    pub async fn open(
        server: &Endpoint,
        socket: Option<&Path>,
        tls: &TlsOptions,
    ) -> Result<Conn, Error> {
        let (tls_mode, timeout) = (server.tls, server.timeout);
        let (io, host, peer, local) = match socket {
            None => {
                let (host, port) = (&server.host, server.port);
                let tcp = net::connect(host, port, timeout).await?;
                // Writes are already gathered into large buffers; Nagle would
                // only hold back the last part of a message (with the final
                // dot) until the previous segment is acknowledged.
                tcp.set_nodelay(true)
                    .map_err(|err| Error::new(Kind::Connection, format!("{host}:{port}: {err}")))?;
                let stream = match tls_mode {
                    TlsMode::Implicit => net::start_tls(tcp, host, tls, timeout).await?,
                    TlsMode::StartTls | TlsMode::None => Stream::Plain(tcp),
                };
                let local = net::is_loopback_host(host);
                (stream, host.clone(), server.authority(), local)
            }
            Some(path) => {
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
                // No STARTTLS over a Unix socket: `wire` only upgrades TCP.
                let label = path.display().to_string();
                (Stream::Unix(unix), server.host.clone(), label, true)
            }
        };
        Ok(Conn {
            wire: Wire::new(io, host, peer, timeout),
            local,
        })
    }

    /// `host:port` or the socket path, for messages.
    pub fn peer(&self) -> &str {
        self.wire.label()
    }

    pub fn is_tls(&self) -> bool {
        self.wire.is_tls()
    }

    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Upgrades to TLS after the server's 220 to STARTTLS.
    pub async fn start_tls(self, tls: &TlsOptions) -> Result<Conn, Error> {
        Ok(Conn {
            wire: self.wire.start_tls(tls).await?,
            local: self.local,
        })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.wire.write_all(bytes).await
    }

    /// Writes a command, tracing it at debug level (masked if it carries
    /// credentials).
    pub async fn send(&mut self, command: &[u8], secret: bool) -> Result<(), Error> {
        if tracing::enabled!(tracing::Level::DEBUG) {
            for line in command.split_inclusive(|&b| b == b'\n') {
                tracing::debug!(
                    "{} C: {}",
                    self.peer(),
                    codec::loggable_command(line, secret)
                );
            }
        }
        self.write_all(command).await
    }

    /// Reads one complete reply.
    pub async fn read_reply(&mut self) -> Result<Reply, Error> {
        let mut parser = ReplyParser::new();
        loop {
            let line = self.wire.read_line(MAX_LINE).await?;
            tracing::debug!("{} S: {}", self.peer(), String::from_utf8_lossy(&line));
            match parser.push(&line) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(err) => {
                    return Err(Error::new(
                        Kind::Protocol,
                        format!("{}: {err}", self.peer()),
                    ));
                }
            }
        }
    }

    /// Whether the server spoke or hung up while the session was idle (a
    /// 421 on timeout, EOF): such a session is not worth another command.
    /// Never waits.
    pub async fn spoke_while_idle(&mut self) -> bool {
        self.wire.spoke_while_idle().await
    }
}
