//! Delivery into a folder of an IMAP server with APPEND
//! (`deliver = "imap://user@host/Folder"`): moving a POP mailbox into Gmail
//! or one's own Dovecot.
//!
//! * APPEND sends the message as a literal whose size comes first, so each
//!   message is spooled to a private file (in the spool directory the
//!   pipeline names, mode 0700) while it streams in, with bare LF turned
//!   into CRLF as IMAP requires; then the file is streamed to the server.
//!   Memory stays bounded whatever the message size; the file is removed
//!   after the APPEND and when the message is aborted.
//! * With LITERAL+ (or LITERAL- for small messages) the literal follows the
//!   command at once; otherwise the server's `+` is awaited, and a server
//!   refusing the literal costs no upload.
//! * The message keeps its date: INTERNALDATE is the newest Received date
//!   (or the Date header) of the message.
//! * `NO [TRYCREATE]` creates the folder and tries once more.
//! * `BAD` is a temporary failure, never a refusal: it says the server did
//!   not understand the command, not that it will not take the message.
//! * One session serves the whole poll; it is opened at the first message,
//!   so a poll without new mail never connects, and closed with LOGOUT.
//! * An OK is final: the server has the message, so the source may delete
//!   it. A connection lost before the OK is an error that stops the poll
//!   with nothing deleted; the message may then be appended twice, which is
//!   preferred to losing it.

use std::io;
use std::path::PathBuf;

use tokio::io::AsyncReadExt;
use tracing::debug;

use super::envelope::HeaderCapture;
use super::spool::SpoolFile;
use super::{Acceptance, AlreadyDurable, Delivered, MessageWriter, Rejection, Sink};
use crate::address::Sender;
use crate::config::{ImapTarget, Secret};
use crate::error::{Error, Kind};
use crate::imap::codec::{Code, Response, Status};
use crate::imap::session::Session;
use crate::wire::Server;

/// Where protocol traces go (`-v`).
const TRACE: &str = "mailfetch::protocol";

/// Spool reads and socket writes go in pieces of this size.
const CHUNK: usize = 64 * 1024;

/// The largest literal LITERAL- (RFC 7888) lets us send without waiting.
const LITERAL_MINUS_MAX: u64 = 4096;

/// Response codes of a `NO` that mean "later" rather than "never"
/// (RFC 5530).
const TEMPORARY_CODES: &[&str] = &["OVERQUOTA", "UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG"];

/// Response codes of a `NO` that are about the folder or the account, not
/// the message: every message would fail the same way, so the poll stops
/// (nothing is deleted) instead of refusing each message for good.
const CONFIGURATION_CODES: &[&str] = &["NOPERM", "NONEXISTENT", "AUTHORIZATIONFAILED"];

pub struct ImapAppendSink {
    target: ImapTarget,
    password: Option<Secret>,
    spool_dir: PathBuf,
    session: Option<Session>,
}

impl ImapAppendSink {
    pub fn new(target: ImapTarget, password: Option<Secret>, spool_dir: PathBuf) -> ImapAppendSink {
        ImapAppendSink {
            target,
            password,
            spool_dir,
            session: None,
        }
    }

    async fn session(&mut self) -> Result<&mut Session, Error> {
        if self.session.is_none() {
            let server = Server {
                label: format!("delivery server {}", self.target.server.host),
                endpoint: self.target.server.clone(),
                secret: self.password.clone(),
            };
            // Any trouble reaching the destination is a failed delivery
            // (exit 10), except a refused login, which stays an
            // authentication error so that the daemon backs off long
            // enough not to get the account locked.
            let session = Session::connect(&server)
                .await
                .map_err(|err| match err.kind {
                    Kind::Auth | Kind::Config | Kind::Permissions => err.context("delivery"),
                    _ => Error::new(Kind::Delivery, err.message).context("delivery"),
                })?;
            self.session = Some(session);
        }
        Ok(self.session.as_mut().expect("just connected"))
    }

    /// The server's APPENDLIMIT (RFC 7889), if it announced one.
    fn append_limit(&self) -> Option<u64> {
        self.session.as_ref()?.caps.iter().find_map(|cap| {
            cap.strip_prefix("APPENDLIMIT=")
                .and_then(|limit| limit.parse().ok())
        })
    }

    /// One APPEND of the spooled message; the tagged answer.
    async fn append(
        &mut self,
        spool: &SpoolFile,
        size: u64,
        date: Option<&str>,
    ) -> Result<(Status, Option<Code>, String), Error> {
        let (folder, seen) = (self.target.folder.clone(), self.target.seen);
        let session = self.session().await?;
        let tag = session.tag();
        let mut command = format!("{tag} APPEND {}", session.mailbox(&folder));
        if seen {
            command.push_str(" (\\Seen)");
        }
        if let Some(date) = date {
            command.push_str(&format!(" \"{date}\""));
        }
        let non_sync = session.caps.contains("LITERAL+")
            || (session.caps.contains("LITERAL-") && size <= LITERAL_MINUS_MAX);
        command.push_str(&format!(
            " {{{size}{}}}\r\n",
            if non_sync { "+" } else { "" }
        ));
        debug!(target: TRACE, "C: {}", command.trim_end());
        // The folder name itself may be a literal.
        session.send_with_literals(command.as_bytes()).await?;
        if !non_sync {
            loop {
                match session.read_plain().await? {
                    Response::Continue(_) => break,
                    // Refused before a byte of the message was sent.
                    Response::Tagged {
                        tag: done,
                        status,
                        code,
                        text,
                    } if done == tag => return Ok((status, code, text)),
                    other => session.untagged(other)?,
                }
            }
        }
        let mut reader = spool.reader().map_err(spool_error)?;
        let mut buf = vec![0; CHUNK];
        let mut sent = 0;
        while sent < size {
            let read = reader.read(&mut buf).await.map_err(spool_error)?;
            if read == 0 {
                return Err(Error::new(
                    Kind::Delivery,
                    "the spooled message is shorter than it was",
                ));
            }
            let read = read.min((size - sent) as usize);
            session.wire.write_all(&buf[..read]).await?;
            sent += read as u64;
        }
        session.wire.write_all(b"\r\n").await?;
        debug!(target: TRACE, "C: <message: {size} bytes>");
        session.finish_tagged(&tag).await
    }
}

fn spool_error(err: io::Error) -> Error {
    Error::new(Kind::Delivery, format!("cannot spool the message: {err}"))
}

/// When the message reached the server it is fetched from: the newest
/// Received date (else the Date), not counting the Received field mailfetch
/// itself put on top, which says when it was fetched.
fn original_arrival(headers: &[u8]) -> Option<mail_parser::DateTime> {
    let mut capture = HeaderCapture::new();
    capture.feed(without_own_trace(headers));
    capture.arrival_date()
}

/// The header block without its first field if that is mailfetch's own
/// Received field (see `received::Trace`).
fn without_own_trace(headers: &[u8]) -> &[u8] {
    if !headers
        .get(..9)
        .is_some_and(|name| name.eq_ignore_ascii_case(b"Received:"))
    {
        return headers;
    }
    // The field ends at the first line end not followed by a continuation.
    let mut end = 0;
    while let Some(lf) = memchr::memchr(b'\n', &headers[end..]) {
        end += lf + 1;
        if !matches!(headers.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    let field = &headers[..end];
    if memchr::memmem::find(field, b"mailfetch ").is_some() {
        &headers[end..]
    } else {
        headers
    }
}

/// An INTERNALDATE (`date-time` of RFC 3501): `" 3-Mar-2026 10:00:00 +0100"`.
/// `None` for a date the server would refuse.
fn internal_date(date: &mail_parser::DateTime) -> Option<String> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let valid = (1..=31).contains(&date.day)
        && (1000..=9999).contains(&date.year)
        && date.hour < 24
        && date.minute < 60
        && date.second < 61
        && date.tz_hour < 24
        && date.tz_minute < 60;
    let month = MONTHS.get(usize::from(date.month).checked_sub(1)?)?;
    valid.then(|| {
        format!(
            "{:2}-{month}-{} {:02}:{:02}:{:02} {}{:02}{:02}",
            date.day,
            date.year,
            date.hour,
            date.minute,
            date.second.min(59),
            if date.tz_before_gmt { '-' } else { '+' },
            date.tz_hour,
            date.tz_minute
        )
    })
}

/// Turns bare LF into CRLF, the only line end IMAP allows.
#[derive(Debug, Default)]
struct ToCrlf {
    last_was_cr: bool,
}

impl ToCrlf {
    fn convert(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while let Some(lf) = memchr::memchr(b'\n', rest) {
            let before_cr = if lf == 0 {
                self.last_was_cr
            } else {
                rest[lf - 1] == b'\r'
            };
            out.extend_from_slice(&rest[..lf]);
            if !before_cr {
                out.push(b'\r');
            }
            out.push(b'\n');
            self.last_was_cr = false;
            rest = &rest[lf + 1..];
        }
        if let Some(&last) = rest.last() {
            self.last_was_cr = last == b'\r';
        }
        out.extend_from_slice(rest);
    }
}

pub struct AppendWriter {
    spool: SpoolFile,
    capture: HeaderCapture,
    crlf: ToCrlf,
    buffer: Vec<u8>,
    size: u64,
}

impl AppendWriter {
    fn flush(&mut self) -> io::Result<()> {
        self.spool.write_all(&self.buffer)?;
        self.size += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

impl MessageWriter for AppendWriter {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.capture.feed(chunk);
        self.crlf.convert(chunk, &mut self.buffer);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }
}

impl Sink for ImapAppendSink {
    type Writer = AppendWriter;
    type Staged = Delivered;
    type Committer = AlreadyDurable;

    fn describe(&self) -> String {
        let user = self
            .target
            .server
            .username
            .as_deref()
            .map(|user| format!("{user}@"))
            .unwrap_or_default();
        format!(
            "imap {user}{}:{}/{}",
            self.target.server.host, self.target.server.port, self.target.folder
        )
    }

    async fn begin(&mut self) -> Result<AppendWriter, Error> {
        // Logging in before the first download reports a wrong password
        // or an unreachable server before any mail is fetched.
        self.session().await?;
        let spool = SpoolFile::create(&self.spool_dir, "append").map_err(|err| {
            Error::new(
                Kind::Delivery,
                format!(
                    "cannot create a spool file in {}: {err}",
                    self.spool_dir.display()
                ),
            )
        })?;
        Ok(AppendWriter {
            spool,
            capture: HeaderCapture::new(),
            crlf: ToCrlf::default(),
            buffer: Vec::with_capacity(CHUNK + CHUNK / 4),
            size: 0,
        })
    }

    async fn finish(&mut self, mut writer: AppendWriter) -> Result<Acceptance<Delivered>, Error> {
        writer.flush().map_err(spool_error)?;
        let size = writer.size;
        let rejection = |reason: String| {
            Acceptance::PermanentFailure(Rejection {
                reason,
                sender: match writer.capture.return_path() {
                    Some(Sender::Address(address)) => Some(address),
                    _ => None,
                },
                headers: writer.capture.headers().to_vec(),
            })
        };
        self.session().await?;
        if let Some(limit) = self.append_limit()
            && size > limit
        {
            return Ok(rejection(format!(
                "{}: the message ({size} bytes) is larger than the server accepts (APPENDLIMIT={limit})",
                self.target.server.host
            )));
        }
        let date = original_arrival(writer.capture.headers())
            .as_ref()
            .and_then(internal_date);
        let mut created = false;
        let (status, code, text) = loop {
            let answer = match self.append(&writer.spool, size, date.as_deref()).await {
                Ok(answer) => answer,
                Err(err) => {
                    // The session is in an unknown state; a later message
                    // (next poll) starts afresh.
                    self.session = None;
                    return Err(err);
                }
            };
            let trycreate = answer.1.as_ref().is_some_and(|c| c.name == "TRYCREATE");
            if answer.0 == Status::No && trycreate && !created {
                created = true;
                let folder = self.target.folder.clone();
                let session = self.session().await?;
                let command = format!("CREATE {}", session.mailbox(&folder));
                session
                    .simple(&command)
                    .await
                    .map_err(|err| err.context(format!("cannot create the folder {folder:?}")))?;
                tracing::info!("{}: created the folder {folder:?}", self.target.server.host);
                continue;
            }
            break answer;
        };
        let host = &self.target.server.host;
        let code_name = code.as_ref().map_or("", |c| c.name.as_str());
        match status {
            Status::Ok => Ok(Acceptance::Accepted(Delivered { size })),
            Status::No if TEMPORARY_CODES.contains(&code_name) => Ok(Acceptance::TemporaryFailure(
                format!("{host}: APPEND refused for now: {text}"),
            )),
            // BAD says the server could not parse the command: a client or
            // server quirk, not a verdict on the message, which a refusal
            // (and `on_reject = "delete"`) would lose. The message stays on
            // the source, and as what the server made of the rest of the
            // command is unknown, the next message gets a new session.
            Status::Bad => {
                self.session = None;
                Ok(Acceptance::TemporaryFailure(format!(
                    "{host}: APPEND answered BAD (the server did not understand the command): {text}"
                )))
            }
            Status::No if CONFIGURATION_CODES.contains(&code_name) => Err(Error::new(
                Kind::Delivery,
                format!(
                    "{host}: cannot append to {:?}: [{code_name}] {text}",
                    self.target.folder
                ),
            )),
            _ => Ok(rejection(format!("{host}: APPEND refused: {text}"))),
        }
    }

    fn abort(&mut self, writer: AppendWriter) {
        // Dropping the spool file removes it.
        drop(writer);
    }

    fn committer(&self) -> AlreadyDurable {
        AlreadyDurable
    }

    async fn close(&mut self) {
        if let Some(mut session) = self.session.take() {
            session.logout().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_lf_becomes_crlf_across_chunks() {
        let mut crlf = ToCrlf::default();
        let mut out = Vec::new();
        for chunk in [&b"a\nb\r\nc\r"[..], b"\nd\r", b"", b"x\n\n", b"\r", b"\r\n"] {
            crlf.convert(chunk, &mut out);
        }
        assert_eq!(out, b"a\r\nb\r\nc\r\nd\rx\r\n\r\n\r\r\n");
    }

    #[test]
    fn internal_dates_have_the_imap_form() {
        let date = |text: &str| {
            let mut capture = HeaderCapture::new();
            capture.feed(format!("Date: {text}\r\n\r\n").as_bytes());
            capture.arrival_date().as_ref().and_then(internal_date)
        };
        assert_eq!(
            date("Tue, 3 Mar 2026 10:00:09 +0100").as_deref(),
            Some(" 3-Mar-2026 10:00:09 +0100")
        );
        assert_eq!(
            date("Fri, 25 Dec 2026 23:59:59 -0530").as_deref(),
            Some("25-Dec-2026 23:59:59 -0530")
        );
        assert_eq!(date("yesterday"), None);
    }

    #[test]
    fn the_date_is_the_original_arrival_not_the_fetch() {
        let trace = crate::received::Trace {
            server: "pop.example.org",
            local_host: "here",
            protocol: "POP3",
            tls: true,
            account: "old",
            username: "alice",
        }
        .header(std::time::SystemTime::now());
        let original = "Received: from mx by pop.example.org; Tue, 3 Mar 2026 10:00:00 +0100\r\n\
                        Date: Mon, 2 Mar 2026 10:00:00 +0100\r\n\r\n";
        let arrival = |headers: &str| {
            original_arrival(headers.as_bytes())
                .as_ref()
                .and_then(internal_date)
        };
        let expected = Some(" 3-Mar-2026 10:00:00 +0100".to_owned());
        assert_eq!(arrival(&format!("{trace}{original}")), expected);
        assert_eq!(arrival(original), expected);
        // Only a Received field of mailfetch's own is skipped.
        assert_eq!(
            arrival(&format!(
                "Received: from a\r\n\tby b; Wed, 4 Mar 2026 10:00:00 +0000\r\n{original}"
            )),
            Some(" 4-Mar-2026 10:00:00 +0000".to_owned())
        );
        // mailfetch's alone: the Date.
        assert_eq!(
            arrival(&format!(
                "{trace}Date: Mon, 2 Mar 2026 10:00:00 +0100\r\n\r\n"
            )),
            Some(" 2-Mar-2026 10:00:00 +0100".to_owned())
        );
    }
}
