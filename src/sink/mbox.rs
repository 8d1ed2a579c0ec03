//! Delivery into an mbox file, in the mboxrd format (`deliver =
//! "mbox:PATH"`), locked the way mutt, procmail and Dovecot lock it.
//!
//! A message streams into a private spool file (LF line ends, `>From `
//! quoting done on the way, its digest computed), never into the mbox: a
//! message cut short never touches it. The commit step then appends a whole
//! batch under the locks, with one fsync, following the same
//! sync → journal → publish order as a Maildir:
//!
//! * **sync** takes the locks (a dot-lock file, then an fcntl lock) and
//!   gives each staged message its place: the offset where its `From ` line
//!   will start. Its intent (path, offset, lengths, digest) is then final.
//! * The journal records the intents and is fsynced.
//! * **publish** appends the batch, fdatasyncs the mbox once and releases
//!   the locks. A failed write (disk full) truncates the file back to where
//!   it was.
//!
//! A crash after the journal write and before the fsync leaves an intent
//! whose message may be absent, complete, or cut short at the end of the
//! file. [`recover`] looks at the bytes the intent names: a complete
//! message (its digest matches) is delivered; a partial one at the end of
//! the file is truncated away, and the message is fetched again. A crash
//! in the locked section leaves the dot-lock behind, naming a process that
//! is gone; the next [`MboxSink::open`] removes it and reconciles the file
//! for every journal of the state directory before anything is appended.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ring::digest::{Context, SHA256};

use super::envelope::HeaderCapture;
use super::intent::{Intent, Recovered};
use super::line_ends::ToLf;
use super::spool::SpoolFile;
use super::{Acceptance, Committer, MessageWriter, Sink, Staged};
use crate::address::Sender;
use crate::config::{EnvelopeFrom, MboxTarget};
use crate::error::{Error, Kind};
use crate::state;

/// How much converted data a writer gathers before writing it to the spool.
const WRITE_BUFFER: usize = 64 * 1024;

/// How long recovery waits for the locks (it has no configuration: an
/// intent is finished whatever `deliver` says today).
const RECOVERY_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a held lock is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(50);

pub struct MboxSink {
    path: PathBuf,
    spool_dir: PathBuf,
    lock_timeout: Duration,
    envelope_from: EnvelopeFrom,
}

impl MboxSink {
    /// Opens the mbox at `target.path` (created, with its directory, at
    /// the first delivery). If a mailfetch died holding its lock, the file
    /// is reconciled first with every pending intent in `state_dir`, so
    /// that no partial message stays in front of the next append.
    pub fn open(
        target: &MboxTarget,
        envelope_from: EnvelopeFrom,
        state_dir: &Path,
    ) -> Result<MboxSink, Error> {
        let path = &target.path;
        if path.is_dir() {
            return Err(Error::new(
                Kind::Delivery,
                format!(
                    "{} is a directory, not an mbox file (for a Maildir, write \"maildir:{}\")",
                    path.display(),
                    path.display()
                ),
            ));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|err| {
                Error::new(
                    Kind::Delivery,
                    format!("cannot create {}: {err}", parent.display()),
                )
            })?;
        }
        if dot_lock_is_stale(&dot_lock_path(path)) {
            reconcile_after_crash(path, state_dir, target.lock_timeout).map_err(|err| {
                Error::new(
                    Kind::Delivery,
                    format!(
                        "cannot repair {} after an interrupted delivery: {err}",
                        path.display()
                    ),
                )
            })?;
        }
        Ok(MboxSink {
            path: path.clone(),
            spool_dir: state_dir.join("spool"),
            lock_timeout: target.lock_timeout,
            envelope_from,
        })
    }
}

/// Finishes or undoes, under the locks, every pending intent of any
/// journal in `state_dir` that names `path`, latest first (see [`recover`]).
fn reconcile_after_crash(path: &Path, state_dir: &Path, timeout: Duration) -> io::Result<()> {
    let locked = Locked::acquire(path, timeout)?;
    let mut placed: Vec<Placed> = state::pending_intents_in(state_dir)?
        .iter()
        .filter_map(|word| match Intent::decode(word)? {
            Intent::Mbox(placed) if placed.path == path => Some(placed),
            _ => None,
        })
        .collect();
    placed.sort_by_key(|placed| std::cmp::Reverse(placed.start));
    for placed in &placed {
        placed.reconcile(&locked.file)?;
    }
    tracing::info!(
        "{}: removed the lock of an interrupted mailfetch; {} unfinished deliveries checked",
        path.display(),
        placed.len()
    );
    Ok(())
}

/// Where a message is (or was to be) in an mbox, as journaled: its `From `
/// line starts at `start` and is `from_len` bytes long; the message's
/// bytes follow, `body_len` of them with `digest`, then one blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub path: PathBuf,
    pub start: u64,
    pub from_len: u64,
    pub body_len: u64,
    /// Hex SHA-256 (first 128 bits) of the message's bytes as stored.
    pub digest: String,
}

impl Placed {
    fn end(&self) -> u64 {
        self.start + self.from_len + self.body_len + 1
    }

    /// Whether the bytes at the message's place are exactly the message.
    fn is_complete_in(&self, file: &File) -> io::Result<bool> {
        if file.metadata()?.len() < self.end() {
            return Ok(false);
        }
        let mut from = [0u8; 5];
        file.read_exact_at(&mut from, self.start)?;
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, self.end() - 1)?;
        if &from != b"From " || last != *b"\n" {
            return Ok(false);
        }
        let mut digest = Context::new(&SHA256);
        let mut buffer = vec![0u8; WRITE_BUFFER];
        let (mut offset, end) = (self.start + self.from_len, self.end() - 1);
        while offset < end {
            let want = buffer.len().min((end - offset) as usize);
            file.read_exact_at(&mut buffer[..want], offset)?;
            digest.update(&buffer[..want]);
            offset += want as u64;
        }
        Ok(hex_digest(digest) == self.digest)
    }

    /// With the locks held: `Delivered` if the message is complete (made
    /// durable now, since the crash may have come before the fsync);
    /// otherwise `Missing`, after truncating a partial copy away if it is
    /// the last thing in the file (text someone appended after it is never
    /// touched).
    fn reconcile(&self, file: &File) -> io::Result<Recovered> {
        if self.is_complete_in(file)? {
            file.sync_data()?;
            return Ok(Recovered::Delivered);
        }
        let len = file.metadata()?.len();
        if self.start < len && len <= self.end() {
            file.set_len(self.start)?;
            file.sync_data()?;
            tracing::warn!(
                "{}: removed the partial message an interrupted delivery left at its end \
                 (offset {}); it will be fetched again",
                self.path.display(),
                self.start
            );
        } else if len > self.end() {
            tracing::warn!(
                "{}: an interrupted delivery left a damaged message at offset {}, and \
                 another program appended after it, so it is left there; the message \
                 will be fetched again",
                self.path.display(),
                self.start
            );
        }
        Ok(Recovered::Missing)
    }
}

/// Finishes (or undoes) what an mbox intent describes, under the locks.
pub(super) fn recover(placed: &Placed) -> io::Result<Recovered> {
    if !placed.path.exists() {
        return Ok(Recovered::Missing);
    }
    let locked = Locked::acquire(&placed.path, RECOVERY_LOCK_TIMEOUT)?;
    placed.reconcile(&locked.file)
}

fn hex_digest(context: Context) -> String {
    context.finish().as_ref()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The mbox's dot-lock, as mutt, procmail and Dovecot name it.
fn dot_lock_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

/// What a dot-lock says: `PID:HOST`, the form Dovecot writes too.
fn dot_lock_content() -> String {
    format!(
        "{}:{}\n",
        std::process::id(),
        crate::received::local_hostname()
    )
}

/// Whether the dot-lock at `lock` names a process of this host that is
/// gone: one left by a mailfetch (or Dovecot) that died holding it.
fn dot_lock_is_stale(lock: &Path) -> bool {
    let Ok(content) = fs::read_to_string(lock) else {
        return false;
    };
    let Some((pid, host)) = content.trim_end().split_once(':') else {
        return false;
    };
    host == crate::received::local_hostname()
        && pid.parse::<i32>().is_ok_and(super::process_is_gone)
}

/// The mbox open and locked: a dot-lock file, then an fcntl write lock on
/// the whole file (the order Dovecot uses). Dropping it releases both, in
/// the other order.
struct Locked {
    file: File,
    /// `None` when the directory does not let us create one (as in a
    /// system mail spool without the mail group); fcntl alone then.
    _dot_lock: Option<DotLock>,
}

impl Locked {
    fn acquire(path: &Path, timeout: Duration) -> io::Result<Locked> {
        let deadline = Instant::now() + timeout;
        let dot_lock = DotLock::take(path, deadline, timeout)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        loop {
            match fcntl_write_lock(&file) {
                Ok(()) => {
                    return Ok(Locked {
                        file,
                        _dot_lock: dot_lock,
                    });
                }
                Err(err) if is_busy(&err) && Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY)
                }
                Err(err) if is_busy(&err) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} is locked by another program (fcntl); gave up after {}s",
                            path.display(),
                            timeout.as_secs()
                        ),
                    ));
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// `PATH.lock`, ours while this lives.
struct DotLock(PathBuf);

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.0) {
            tracing::warn!("cannot remove {}: {err}", self.0.display());
        }
    }
}

fn is_busy(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

impl DotLock {
    /// Creates `PATH.lock` exclusively, waiting until `deadline` while another
    /// program holds it; a lock a dead process left on this host is removed.
    fn take(path: &Path, deadline: Instant, timeout: Duration) -> io::Result<Option<DotLock>> {
        let lock = dot_lock_path(path);
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&lock)
            {
                Ok(mut file) => {
                    let taken = DotLock(lock);
                    file.write_all(dot_lock_content().as_bytes())?;
                    return Ok(Some(taken));
                }
                Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
                    tracing::debug!(
                        "cannot create {} ({err}); locking {} with fcntl alone",
                        lock.display(),
                        path.display()
                    );
                    return Ok(None);
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    if dot_lock_is_stale(&lock) {
                        tracing::info!(
                            "removing {}, left by a process that is gone",
                            lock.display()
                        );
                        match fs::remove_file(&lock) {
                            Ok(()) => continue,
                            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                            Err(err) => return Err(err),
                        }
                    }
                    if Instant::now() >= deadline {
                        let holder = fs::read_to_string(&lock).unwrap_or_default();
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!(
                                "{} is locked by another program ({} exists{}); gave up after {}s",
                                path.display(),
                                lock.display(),
                                match holder.trim() {
                                    "" => String::new(),
                                    holder => format!(", holder {holder}"),
                                },
                                timeout.as_secs()
                            ),
                        ));
                    }
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// A non-blocking write lock on the whole file. Open-file-description
/// locks conflict with the POSIX locks mutt, procmail and Dovecot take,
/// and unlike those are not dropped when another descriptor of the same
/// file in this process is closed.
fn fcntl_write_lock(file: &File) -> io::Result<()> {
    // SAFETY: a zeroed flock is valid; F_OFD_SETLK reads it and nothing else.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    // SAFETY: plain syscall on a valid descriptor with a valid flock.
    match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// mboxrd quoting: a line that starts with `From `, after any number of
/// `>`, gets one more `>`, so that a reader can take exactly one away
/// again. Works on LF text; state carries across chunks. The `>` is put
/// just before the `F`, which is the same as in front of the run of `>`.
#[derive(Debug, Default)]
struct QuoteFrom {
    state: Quoting,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// At the start of a line, or past the `>`s that start it.
    #[default]
    LineStart,
    /// This many bytes of `From ` seen (and held back) at a line start.
    Matching(usize),
    /// Elsewhere in a line.
    MidLine,
}

const FROM: &[u8] = b"From ";

impl QuoteFrom {
    fn convert(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while let Some((&byte, rest)) = input.split_first() {
            match self.state {
                Quoting::MidLine => match memchr::memchr(b'\n', input) {
                    Some(newline) => {
                        out.extend_from_slice(&input[..=newline]);
                        input = &input[newline + 1..];
                        self.state = Quoting::LineStart;
                    }
                    None => {
                        out.extend_from_slice(input);
                        return;
                    }
                },
                Quoting::LineStart if byte == b'>' => {
                    out.push(byte);
                    input = rest;
                }
                Quoting::LineStart | Quoting::Matching(_) => {
                    let seen = match self.state {
                        Quoting::Matching(seen) => seen,
                        _ => 0,
                    };
                    if byte == FROM[seen] {
                        input = rest;
                        self.state = if seen + 1 == FROM.len() {
                            out.extend_from_slice(b">From ");
                            Quoting::MidLine
                        } else {
                            Quoting::Matching(seen + 1)
                        };
                    } else {
                        // Not a From line: give back what was held, and
                        // read this byte again as part of the line.
                        out.extend_from_slice(&FROM[..seen]);
                        self.state = Quoting::MidLine;
                    }
                }
            }
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if let Quoting::Matching(seen) = std::mem::take(&mut self.state) {
            out.extend_from_slice(&FROM[..seen]);
        }
    }
}

pub struct MboxWriter {
    spool: SpoolFile,
    lf: ToLf,
    quote: QuoteFrom,
    /// LF text before quoting.
    converted: Vec<u8>,
    /// Quoted text waiting to be written to the spool.
    buffer: Vec<u8>,
    capture: HeaderCapture,
    digest: Context,
    size: u64,
    last_byte: Option<u8>,
}

impl MboxWriter {
    fn flush_buffer(&mut self) -> io::Result<()> {
        if let Some(&last) = self.buffer.last() {
            self.last_byte = Some(last);
        }
        self.spool.write_all(&self.buffer)?;
        self.digest.update(&self.buffer);
        self.size += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

impl MessageWriter for MboxWriter {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.capture.feed(chunk);
        self.lf.convert(chunk, &mut self.converted);
        self.quote.convert(&self.converted, &mut self.buffer);
        self.converted.clear();
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush_buffer()?;
        }
        Ok(())
    }
}

/// A complete message in its spool file, waiting for its place in the mbox.
pub struct StagedMessage {
    spool: SpoolFile,
    /// The `From ` line's envelope sender.
    sender: String,
    size: u64,
    digest: String,
    /// Set by [`MboxCommitter::sync`].
    place: Option<(u64, String)>,
    path: PathBuf,
}

impl Staged for StagedMessage {
    fn size(&self) -> u64 {
        self.size
    }

    fn intent(&self) -> Option<Intent> {
        let (start, from_line) = self.place.as_ref()?;
        Some(Intent::Mbox(Placed {
            path: self.path.clone(),
            start: *start,
            from_len: from_line.len() as u64,
            body_len: self.size,
            digest: self.digest.clone(),
        }))
    }
}

impl Sink for MboxSink {
    type Writer = MboxWriter;
    type Staged = StagedMessage;
    type Committer = MboxCommitter;

    fn describe(&self) -> String {
        format!("mbox {}", self.path.display())
    }

    async fn begin(&mut self) -> Result<MboxWriter, Error> {
        let spool = SpoolFile::create(&self.spool_dir, "mbox").map_err(|err| {
            Error::new(
                Kind::Delivery,
                format!(
                    "cannot create a spool file in {}: {err}",
                    self.spool_dir.display()
                ),
            )
        })?;
        Ok(MboxWriter {
            spool,
            lf: ToLf::default(),
            quote: QuoteFrom::default(),
            converted: Vec::with_capacity(WRITE_BUFFER),
            buffer: Vec::with_capacity(WRITE_BUFFER + WRITE_BUFFER / 4),
            capture: HeaderCapture::new(),
            digest: Context::new(&SHA256),
            size: 0,
            last_byte: None,
        })
    }

    async fn finish(&mut self, mut writer: MboxWriter) -> Result<Acceptance<StagedMessage>, Error> {
        writer.lf.end(&mut writer.converted);
        let converted = std::mem::take(&mut writer.converted);
        writer.quote.convert(&converted, &mut writer.buffer);
        writer.quote.end(&mut writer.buffer);
        if writer.buffer.last().or(writer.last_byte.as_ref()) != Some(&b'\n') {
            // Every message ends with a line end, so the blank line after
            // it separates it from the next `From ` line.
            writer.buffer.push(b'\n');
        }
        writer.flush_buffer().map_err(|err| {
            Error::new(Kind::Delivery, format!("cannot write a spool file: {err}"))
        })?;
        let sender = match &self.envelope_from {
            EnvelopeFrom::Fixed(sender) => Some(sender.clone()),
            EnvelopeFrom::ReturnPath => writer.capture.return_path(),
        };
        Ok(Acceptance::Accepted(StagedMessage {
            sender: match sender {
                Some(Sender::Address(address)) => address,
                Some(Sender::Null) | None => "MAILER-DAEMON".to_owned(),
            },
            size: writer.size,
            digest: hex_digest(writer.digest),
            spool: writer.spool,
            place: None,
            path: self.path.clone(),
        }))
    }

    fn abort(&mut self, writer: MboxWriter) {
        // The spool file goes with it; the mbox was never touched.
        drop(writer);
    }

    fn committer(&self) -> MboxCommitter {
        MboxCommitter {
            path: self.path.clone(),
            lock_timeout: self.lock_timeout,
            appending: None,
        }
    }
}

pub struct MboxCommitter {
    path: PathBuf,
    lock_timeout: Duration,
    /// Between `sync` and `publish`: the locks, where the batch starts, and
    /// the line end(s) needed before it.
    appending: Option<(Locked, u64, &'static [u8])>,
}

impl Committer for MboxCommitter {
    type Staged = StagedMessage;

    fn sync(&mut self, batch: &mut [StagedMessage]) -> io::Result<()> {
        self.appending = None;
        let locked = Locked::acquire(&self.path, self.lock_timeout)?;
        let len = locked.file.metadata()?.len();
        let mut tail = [0u8; 2];
        let tail = match len {
            0 => &tail[..0],
            1 => {
                locked.file.read_exact_at(&mut tail[..1], 0)?;
                &tail[..1]
            }
            _ => {
                locked.file.read_exact_at(&mut tail, len - 2)?;
                &tail[..]
            }
        };
        // A `From ` line must follow a blank line.
        let separator: &'static [u8] = match tail {
            [] | [.., b'\n', b'\n'] => b"",
            [b'\n'] | [.., b'\n'] => b"\n",
            _ => b"\n\n",
        };
        let date = asctime(SystemTime::now());
        let mut offset = len + separator.len() as u64;
        for message in batch.iter_mut() {
            let from_line = format!("From {} {date}\n", message.sender);
            let start = offset;
            offset += from_line.len() as u64 + message.size + 1;
            message.place = Some((start, from_line));
        }
        self.appending = Some((locked, len, separator));
        Ok(())
    }

    fn publish(&mut self, batch: Vec<StagedMessage>) -> io::Result<()> {
        let (locked, len, separator) = self
            .appending
            .take()
            .ok_or_else(|| io::Error::other("mbox batch published without being placed first"))?;
        let appended = append(&locked.file, len, separator, &batch);
        if let Err(err) = appended.and_then(|()| locked.file.sync_data()) {
            // Nothing of a failed batch may stay (disk full): the journal's
            // intents then name bytes that are not there, and recovery
            // fetches the messages again.
            if let Err(undo) = locked
                .file
                .set_len(len)
                .and_then(|()| locked.file.sync_data())
            {
                tracing::error!(
                    "{}: cannot remove a partly appended batch: {undo}",
                    self.path.display()
                );
            }
            return Err(err);
        }
        Ok(())
    }

    fn discard(&mut self, batch: Vec<StagedMessage>) {
        self.appending = None;
        drop(batch);
    }
}

/// Writes the batch at `len` (where it was placed), each message with its
/// `From ` line and the blank line after it.
fn append(file: &File, len: u64, separator: &[u8], batch: &[StagedMessage]) -> io::Result<()> {
    let mut file = file;
    file.seek(SeekFrom::Start(len))?;
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, file);
    out.write_all(separator)?;
    for message in batch {
        let (_, from_line) = message
            .place
            .as_ref()
            .ok_or_else(|| io::Error::other("mbox message without a place"))?;
        out.write_all(from_line.as_bytes())?;
        let mut spool = message.spool.file();
        spool.seek(SeekFrom::Start(0))?;
        let copied = io::copy(&mut (&mut spool).take(message.size), &mut out)?;
        if copied != message.size {
            return Err(io::Error::other("a spool file is shorter than its message"));
        }
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// `Tue Dec  1 06:05:50 2026`: the C `asctime` form the `From ` line
/// carries, in UTC.
fn asctime(when: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = when
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let date = mail_parser::DateTime::from_timestamp(secs as i64);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        DAYS[(secs / 86_400 % 7) as usize],
        MONTHS[(date.month as usize).clamp(1, 12) - 1],
        date.day,
        date.hour,
        date.minute,
        date.second,
        date.year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(chunks: &[&[u8]]) -> Vec<u8> {
        let mut quote = QuoteFrom::default();
        let mut out = Vec::new();
        for chunk in chunks {
            quote.convert(chunk, &mut out);
        }
        quote.end(&mut out);
        out
    }

    #[test]
    fn from_lines_get_one_more_quote_whatever_the_chunks() {
        let text = b"From x\nFrom\n>From y\n>>From z\nA From b\nFrom\n>Fro";
        let expected = b">From x\nFrom\n>>From y\n>>>From z\nA From b\nFrom\n>Fro";
        assert_eq!(quoted(&[text]), expected);
        for split in 0..text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(quoted(&[a, b]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(quoted(&bytes), expected);
    }

    #[test]
    fn asctime_is_what_mbox_readers_expect() {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_105_150);
        assert_eq!(asctime(when), "Tue Dec  1 06:05:50 2026");
        assert_eq!(asctime(SystemTime::UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
    }

    fn target(path: &Path) -> MboxTarget {
        MboxTarget {
            path: path.to_owned(),
            lock_timeout: Duration::from_secs(1),
        }
    }

    async fn stage(sink: &mut MboxSink, chunks: &[&[u8]]) -> StagedMessage {
        let mut writer = sink.begin().await.unwrap();
        for chunk in chunks {
            writer.write(chunk).await.unwrap();
        }
        match sink.finish(writer).await.unwrap() {
            Acceptance::Accepted(staged) => staged,
            _ => panic!("the mbox refused a message"),
        }
    }

    fn commit(sink: &MboxSink, mut batch: Vec<StagedMessage>) -> Vec<Intent> {
        let mut committer = sink.committer();
        committer.sync(&mut batch).unwrap();
        let intents = batch.iter().map(|m| m.intent().unwrap()).collect();
        committer.publish(batch).unwrap();
        intents
    }

    #[tokio::test]
    async fn a_batch_is_appended_in_mboxrd_after_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Mail/inbox");
        let mut sink =
            MboxSink::open(&target(&path), EnvelopeFrom::ReturnPath, dir.path()).unwrap();
        let one = stage(
            &mut sink,
            &[b"Return-Path: <a@example.org>\r\nSubject: 1\r\n\r\nFrom here\r\n"],
        )
        .await;
        let two = stage(&mut sink, &[b"Subject: 2\r\n\r\nno newline"]).await;
        assert!(!path.exists(), "nothing is written before the commit");
        fs::write(
            &path,
            "From x Thu Jan  1 00:00:00 1970\nSubject: 0\n\nlast line",
        )
        .unwrap();
        let intents = commit(&sink, vec![one, two]);
        let text = String::from_utf8(fs::read(&path).unwrap()).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[3..5], ["last line", ""]);
        assert!(lines[5].starts_with("From a@example.org "), "{text}");
        assert_eq!(
            lines[6..],
            [
                "Return-Path: <a@example.org>",
                "Subject: 1",
                "",
                ">From here",
                "",
                lines[11],
                "Subject: 2",
                "",
                "no newline",
                "",
                ""
            ]
        );
        assert!(lines[11].starts_with("From MAILER-DAEMON "), "{text}");
        assert!(!dot_lock_path(&path).exists());
        for intent in intents {
            assert_eq!(intent.recover().unwrap(), Recovered::Delivered);
        }
    }

    #[tokio::test]
    async fn a_partial_last_message_is_truncated_away_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox");
        fs::write(&path, "From x Thu Jan  1 00:00:00 1970\n\nold\n\n").unwrap();
        let before = fs::read(&path).unwrap();
        let mut sink =
            MboxSink::open(&target(&path), EnvelopeFrom::ReturnPath, dir.path()).unwrap();
        let mut batch = vec![
            stage(&mut sink, &[b"Subject: 1\r\n\r\none\r\n"]).await,
            stage(&mut sink, &[b"Subject: 2\r\n\r\ntwo\r\n"]).await,
        ];
        let mut committer = sink.committer();
        committer.sync(&mut batch).unwrap();
        let intents: Vec<Intent> = batch.iter().map(|m| m.intent().unwrap()).collect();
        committer.publish(batch).unwrap();
        drop(committer);
        let whole = fs::read(&path).unwrap();
        // A crash cut the second message short.
        let Intent::Mbox(second) = &intents[1] else {
            panic!()
        };
        fs::write(&path, &whole[..second.start as usize + 20]).unwrap();
        assert_eq!(intents[1].recover().unwrap(), Recovered::Missing);
        assert_eq!(intents[0].recover().unwrap(), Recovered::Delivered);
        assert_eq!(fs::read(&path).unwrap(), &whole[..second.start as usize]);
        // Cut inside the first: both go, what was there before stays.
        fs::write(&path, &whole[..before.len() + 10]).unwrap();
        assert_eq!(intents[1].recover().unwrap(), Recovered::Missing);
        assert_eq!(intents[0].recover().unwrap(), Recovered::Missing);
        assert_eq!(fs::read(&path).unwrap(), before);
        // Someone appended after a damaged copy: their mail is not touched.
        let mut damaged = whole[..before.len() + 10].to_vec();
        damaged.extend_from_slice(&b"x\n\nFrom y Thu Jan  1 00:00:00 1970\n\nmine\n\n".repeat(9));
        fs::write(&path, &damaged).unwrap();
        assert_eq!(intents[0].recover().unwrap(), Recovered::Missing);
        assert_eq!(fs::read(&path).unwrap(), damaged);
    }

    #[tokio::test]
    async fn a_stale_dot_lock_is_removed_and_a_live_one_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox");
        let lock = dot_lock_path(&path);
        let host = crate::received::local_hostname();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(&lock, format!("{dead}:{host}\n")).unwrap();
        let mut sink =
            MboxSink::open(&target(&path), EnvelopeFrom::ReturnPath, dir.path()).unwrap();
        assert!(!lock.exists(), "the stale lock was not removed");
        // A live holder: its own pid, and one of another host.
        for holder in [
            format!("{}:{host}", std::process::id()),
            "1:elsewhere".into(),
        ] {
            fs::write(&lock, &holder).unwrap();
            let mut batch = vec![stage(&mut sink, &[b"Subject: x\r\n\r\nx\r\n"]).await];
            let started = Instant::now();
            let err = sink.committer().sync(&mut batch).err().unwrap();
            assert!(started.elapsed() >= Duration::from_secs(1));
            assert!(
                err.to_string().contains("locked by another program"),
                "{err}"
            );
            assert!(err.to_string().contains(&holder), "{err}");
            assert_eq!(fs::read_to_string(&lock).unwrap(), holder);
        }
    }

    #[tokio::test]
    async fn an_fcntl_lock_of_another_process_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox");
        fs::write(&path, "").unwrap();
        // flock(1) takes flock locks, not fcntl ones; python's fcntl.lockf
        // takes the POSIX lock mutt and procmail take.
        let Some(python) = testkit::require_program("python3", "apt-get install python3") else {
            return;
        };
        let mut holder = std::process::Command::new(python)
            .args([
                "-c",
                "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX); \
                 print('locked', flush=True); time.sleep(30)",
            ])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = [0u8; 7];
        holder.stdout.take().unwrap().read_exact(&mut line).unwrap();
        let mut sink =
            MboxSink::open(&target(&path), EnvelopeFrom::ReturnPath, dir.path()).unwrap();
        let mut batch = vec![stage(&mut sink, &[b"Subject: x\r\n\r\nx\r\n"]).await];
        let err = sink.committer().sync(&mut batch).err().unwrap();
        assert!(err.to_string().contains("(fcntl)"), "{err}");
        assert!(
            !dot_lock_path(&path).exists(),
            "the dot-lock was not released"
        );
        holder.kill().unwrap();
        holder.wait().unwrap();
        commit(&sink, batch);
        assert!(fs::read(&path).unwrap().starts_with(b"From MAILER-DAEMON "));
    }
}
