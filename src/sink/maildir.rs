//! Delivery into a Maildir (<https://cr.yp.to/proto/maildir.html>).
//!
//! A message streams into `tmp/` and appears in `new/` only once it is
//! complete and durable. The `maildir` crate is not used for delivery
//! because it neither fsyncs the directory after the rename nor lets the
//! fsyncs of many messages be batched; see docs/design.md.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::intent::{Intent, Recovered};
use super::line_ends::ToLf;
use super::{Acceptance, Committer, MessageWriter, Sink, Staged};
use crate::error::{Error, Kind};
use crate::state;

/// How much converted data a writer gathers before handing it to the kernel.
const WRITE_BUFFER: usize = 64 * 1024;

/// Fsyncs in flight at once when a batch is made durable. Concurrent fsyncs
/// let the filesystem fold many messages into one journal commit; on ext4
/// this makes a batch of 256 messages about 15× faster than syncing them one
/// after another.
const SYNC_THREADS: usize = 16;

pub struct MaildirSink {
    root: PathBuf,
    /// This host's name as the Maildir spec wants it in file names.
    host: String,
}

impl MaildirSink {
    /// Opens the Maildir at `root`, creating it (and `tmp/`, `new/`,
    /// `cur/`) if needed.
    pub fn open(root: &Path) -> Result<MaildirSink, Error> {
        // Stale files are removed only from a directory that already was a
        // Maildir: `maildir:~` must not clean the user's own ~/tmp.
        let was_maildir = ["tmp", "new", "cur"]
            .iter()
            .all(|sub| root.join(sub).is_dir());
        for sub in ["", "tmp", "new", "cur"] {
            create_dir_durably(&root.join(sub)).map_err(|err| {
                Error::new(
                    Kind::Delivery,
                    format!(
                        "cannot create Maildir directory {}: {err}",
                        root.join(sub).display()
                    ),
                )
            })?;
        }
        if was_maildir {
            remove_stale_tmp_files(&root.join("tmp"));
        }
        Ok(MaildirSink {
            root: root.to_owned(),
            host: maildir_hostname(),
        })
    }

    /// A name unique on this host: time, pid, a per-process counter and
    /// the host name, as the Maildir spec describes, with a mark that tells
    /// mailfetch's own files from other deliverers' (see
    /// [`remove_crash_leftovers`](Self::remove_crash_leftovers)).
    fn unique_name(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}{OWN_MARK}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            self.host
        )
    }

    /// Removes from `tmp/` what a mailfetch that was killed (or lost
    /// power) left there: files with mailfetch's own names, of a process
    /// that is gone, that no journal in `state_dir` still names (those are
    /// recovery's to finish). Their messages are still on the server. Each
    /// kill would otherwise leave a whole batch behind for 36 hours, and a
    /// cron job that crashes at every poll would fill the disk.
    pub fn remove_crash_leftovers(&self, state_dir: &Path) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        let leftovers: Vec<PathBuf> = entries
            .flatten()
            .filter(|entry| left_by_a_dead_mailfetch(&entry.file_name().to_string_lossy()))
            .map(|entry| entry.path())
            .collect();
        if leftovers.is_empty() {
            return;
        }
        // Only now, after a crash, is it worth reading every journal.
        let journaled: HashSet<OsString> = match state::pending_intents_in(state_dir) {
            Ok(intents) => intents
                .iter()
                .filter_map(|word| match Intent::decode(word)? {
                    Intent::Maildir { tmp_path, .. } => tmp_path.file_name().map(OsStr::to_owned),
                    Intent::Mbox(_) => None,
                })
                .collect(),
            Err(err) => {
                tracing::warn!(
                    "not cleaning up {}: cannot read the state files: {err}",
                    self.root.join("tmp").display()
                );
                return;
            }
        };
        let mut removed = 0;
        for path in leftovers {
            if path
                .file_name()
                .is_some_and(|name| journaled.contains(name))
            {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                "removed {removed} incomplete messages an interrupted run left in {}",
                self.root.join("tmp").display()
            );
        }
    }
}

/// What sets mailfetch's file names apart from other deliverers' in the
/// unique part of a Maildir name.
const OWN_MARK: &str = "_mailfetch";

/// Whether `name` is one of mailfetch's Maildir names, of a process that
/// no longer exists.
fn left_by_a_dead_mailfetch(name: &str) -> bool {
    let Some(unique) = name.split('.').nth(1) else {
        return false;
    };
    let pid = unique
        .strip_suffix(OWN_MARK)
        .and_then(|rest| rest.split_once('P'))
        .and_then(|(_, rest)| rest.split_once('Q'))
        .and_then(|(pid, _)| pid.parse::<i32>().ok());
    pid.is_some_and(super::process_is_gone)
}

/// How old a file in `tmp/` must be before anyone may delete it, per the
/// Maildir spec. A crash leaves staged files there; they are invisible to
/// readers, and their messages are still on the server.
const STALE_TMP: Duration = Duration::from_secs(36 * 3600);

fn remove_stale_tmp_files(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > STALE_TMP));
        if stale {
            tracing::info!("removing stale {}", entry.path().display());
            remove_quietly(&entry.path());
        }
    }
}

/// Creates `dir` if it is missing and makes its directory entry durable, so
/// that a Maildir we created cannot vanish in a crash after mail was put in it.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let parent = dir.parent().ok_or(err)?;
            create_dir_durably(parent)?;
            create_dir_durably(dir)
        }
        Err(err) => Err(err),
    }
}

/// The host name with the two characters the spec reserves replaced.
fn maildir_hostname() -> String {
    crate::received::local_hostname()
        .replace('/', "\\057")
        .replace(':', "\\072")
}

pub struct MaildirWriter {
    file: File,
    tmp_path: PathBuf,
    name: String,
    /// Converted data (CRLF turned into LF, the line end Maildir readers
    /// expect) waiting to be written.
    buffer: Vec<u8>,
    lf: ToLf,
    size: u64,
    /// Where the next writeback hint starts.
    writeback_from: u64,
}

impl MaildirWriter {
    fn flush_buffer(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buffer)?;
        self.size += self.buffer.len() as u64;
        self.buffer.clear();
        if self.size - self.writeback_from >= WRITEBACK_CHUNK {
            start_writeback(
                &self.file,
                self.writeback_from,
                self.size - self.writeback_from,
            );
            self.writeback_from = self.size;
        }
        Ok(())
    }
}

/// A large message asks the kernel to start writing it out every this many
/// bytes, so the disk works while the network does and the fsync at commit
/// time finds little left to do.
const WRITEBACK_CHUNK: u64 = 8 * 1024 * 1024;

/// Starts (without waiting for) writeback of a range of `file`. Only a hint:
/// durability still comes from the fsync in the commit step.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

impl MessageWriter for MaildirWriter {
    // Writes go to the page cache and take microseconds, so they are done
    // inline rather than paying a thread hand-off per chunk; the slow part,
    // fsync, runs on the committer's threads.
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.lf.convert(chunk, &mut self.buffer);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush_buffer()?;
        }
        Ok(())
    }
}

/// A complete message in `tmp/`, not yet durable or visible.
pub struct StagedFile {
    file: File,
    tmp_path: PathBuf,
    new_path: PathBuf,
    size: u64,
}

impl Staged for StagedFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn intent(&self) -> Option<Intent> {
        Some(Intent::Maildir {
            tmp_path: self.tmp_path.clone(),
            new_path: self.new_path.clone(),
        })
    }
}

impl Sink for MaildirSink {
    type Writer = MaildirWriter;
    type Staged = StagedFile;
    type Committer = MaildirCommitter;

    fn describe(&self) -> String {
        // Shown the way users write it in the config.
        let home = std::env::var_os("HOME").map(PathBuf::from);
        match home
            .as_deref()
            .and_then(|home| self.root.strip_prefix(home).ok())
        {
            Some(rest) => format!("maildir ~/{}", rest.display()),
            None => format!("maildir {}", self.root.display()),
        }
    }

    async fn begin(&mut self) -> Result<MaildirWriter, Error> {
        loop {
            let name = self.unique_name();
            let tmp_path = self.root.join("tmp").join(&name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp_path)
            {
                Ok(file) => {
                    return Ok(MaildirWriter {
                        file,
                        tmp_path,
                        name,
                        buffer: Vec::with_capacity(WRITE_BUFFER + WRITE_BUFFER / 8),
                        lf: ToLf::default(),
                        size: 0,
                        writeback_from: 0,
                    });
                }
                // Another deliverer picked the same name; the counter makes
                // the next one differ.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => {
                    return Err(Error::new(
                        Kind::Delivery,
                        format!("cannot create {}: {err}", tmp_path.display()),
                    ));
                }
            }
        }
    }

    async fn finish(&mut self, mut writer: MaildirWriter) -> Result<Acceptance<StagedFile>, Error> {
        writer.lf.end(&mut writer.buffer);
        if let Err(err) = writer.flush_buffer() {
            let message = format!("cannot write {}: {err}", writer.tmp_path.display());
            self.abort(writer);
            return Err(Error::new(Kind::Delivery, message));
        }
        // Dovecot and others read the size from the name instead of
        // stat()ing every file.
        let new_name = format!("{},S={}", writer.name, writer.size);
        Ok(Acceptance::Accepted(StagedFile {
            new_path: self.root.join("new").join(new_name),
            file: writer.file,
            tmp_path: writer.tmp_path,
            size: writer.size,
        }))
    }

    fn abort(&mut self, writer: MaildirWriter) {
        remove_quietly(&writer.tmp_path);
    }

    fn committer(&self) -> MaildirCommitter {
        MaildirCommitter {
            new_dir: self.root.join("new"),
        }
    }
}

fn remove_quietly(path: &Path) {
    if let Err(err) = fs::remove_file(path) {
        tracing::warn!("cannot remove {}: {err}", path.display());
    }
}

pub struct MaildirCommitter {
    new_dir: PathBuf,
}

impl Committer for MaildirCommitter {
    type Staged = StagedFile;

    fn sync(&mut self, batch: &mut [StagedFile]) -> io::Result<()> {
        let files: Vec<&File> = batch.iter().map(|staged| &staged.file).collect();
        sync_concurrently(&files)
    }

    fn publish(&mut self, batch: Vec<StagedFile>) -> io::Result<()> {
        for staged in &batch {
            fs::rename(&staged.tmp_path, &staged.new_path)?;
        }
        File::open(&self.new_dir)?.sync_all()
    }

    fn discard(&mut self, batch: Vec<StagedFile>) {
        for staged in batch {
            remove_quietly(&staged.tmp_path);
        }
    }
}

/// fdatasyncs `files` with up to [`SYNC_THREADS`] in flight.
fn sync_concurrently(files: &[&File]) -> io::Result<()> {
    let per_thread = files.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|file| file.sync_data())))
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// Finishes a delivery a crash interrupted between journaling its intent
/// and the rename into `new/` (see [`Intent`]).
pub(super) fn recover(tmp_path: &Path, new_path: &Path) -> io::Result<Recovered> {
    if new_path.exists() {
        return Ok(Recovered::Delivered);
    }
    if tmp_path.exists() {
        // The content was fsynced before the intent was journaled, so
        // the file is complete: finish the rename.
        fs::rename(tmp_path, new_path)?;
        if let Some(new_dir) = new_path.parent() {
            File::open(new_dir)?.sync_all()?;
        }
        return Ok(Recovered::Delivered);
    }
    Ok(if seen_in_cur(new_path)? {
        Recovered::Delivered
    } else {
        Recovered::Missing
    })
}

/// Whether a mail reader already moved the message to `cur/` (adding
/// `:2,FLAGS` to its name). A Maildir that is gone altogether does not
/// have it.
fn seen_in_cur(new_path: &Path) -> io::Result<bool> {
    let (Some(new_dir), Some(name)) = (new_path.parent(), new_path.file_name()) else {
        return Ok(false);
    };
    let Some(root) = new_dir.parent() else {
        return Ok(false);
    };
    let entries = match fs::read_dir(root.join("cur")) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    let name = name.as_encoded_bytes();
    for entry in entries {
        let entry = entry?.file_name();
        let entry = entry.as_encoded_bytes();
        if entry.starts_with(name) && matches!(entry.get(name.len()), None | Some(b':')) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn deliver(sink: &mut MaildirSink, chunks: &[&[u8]]) -> StagedFile {
        let mut writer = sink.begin().await.unwrap();
        for chunk in chunks {
            writer.write(chunk).await.unwrap();
        }
        match sink.finish(writer).await.unwrap() {
            Acceptance::Accepted(staged) => staged,
            _ => panic!("maildir refused a message"),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn message_is_invisible_until_published() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("deep/Maildir");
        let mut sink = MaildirSink::open(&root).unwrap();
        let mut staged = deliver(&mut sink, &[b"Subject: hi\r\n\r\nbo", b"dy\r\n"]).await;
        assert_eq!(staged.size(), 18);
        assert!(names(&root.join("new")).is_empty());
        assert_eq!(names(&root.join("tmp")).len(), 1);

        let mut committer = sink.committer();
        committer.sync(std::slice::from_mut(&mut staged)).unwrap();
        committer.publish(vec![staged]).unwrap();
        let delivered = names(&root.join("new"));
        assert_eq!(delivered.len(), 1);
        assert!(delivered[0].ends_with(",S=18"), "{delivered:?}");
        assert!(names(&root.join("tmp")).is_empty());
        let content = fs::read(root.join("new").join(&delivered[0])).unwrap();
        assert_eq!(content, b"Subject: hi\n\nbody\n");
    }

    #[tokio::test]
    async fn crlf_split_across_chunks_and_lone_cr() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = MaildirSink::open(dir.path()).unwrap();
        let staged = deliver(&mut sink, &[b"a\r", b"\nb\rc\r", b"x\r"]).await;
        assert_eq!(fs::read(&staged.tmp_path).unwrap(), b"a\nb\rc\rx\r");
    }

    #[tokio::test]
    async fn abort_and_discard_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = MaildirSink::open(dir.path()).unwrap();
        let mut writer = sink.begin().await.unwrap();
        writer.write(b"partial").await.unwrap();
        sink.abort(writer);
        let staged = deliver(&mut sink, &[b"whole\r\n"]).await;
        sink.committer().discard(vec![staged]);
        assert!(names(&dir.path().join("tmp")).is_empty());
        assert!(names(&dir.path().join("new")).is_empty());
    }

    #[tokio::test]
    async fn recover_finishes_interrupted_publish() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Mail dir%");
        let mut sink = MaildirSink::open(&root).unwrap();
        let mut staged = deliver(&mut sink, &[b"x\r\n"]).await;
        let intent = staged.intent().unwrap();
        assert!(!intent.encode().contains(char::is_whitespace));
        let mut committer = sink.committer();
        committer.sync(std::slice::from_mut(&mut staged)).unwrap();
        drop(staged); // crash before publish

        let delivered = || intent.recover().unwrap() == Recovered::Delivered;
        assert!(delivered());
        assert_eq!(names(&root.join("new")).len(), 1);
        // Idempotent, and still true once a reader moved it to cur/.
        assert!(delivered());
        let name = names(&root.join("new")).remove(0);
        fs::rename(
            root.join("new").join(&name),
            root.join("cur").join(format!("{name}:2,S")),
        )
        .unwrap();
        assert!(delivered());
        // Gone everywhere: not delivered.
        fs::remove_file(root.join("cur").join(format!("{name}:2,S"))).unwrap();
        assert!(!delivered());
        // Nor when the whole Maildir is gone (which is no reason to fail
        // every poll from now on).
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(intent.recover().unwrap(), Recovered::Missing);
    }

    #[test]
    fn stale_tmp_files_are_removed_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        MaildirSink::open(dir.path()).unwrap();
        let stale = dir.path().join("tmp/stale");
        let fresh = dir.path().join("tmp/fresh");
        fs::write(&stale, "x").unwrap();
        fs::write(&fresh, "x").unwrap();
        let old = SystemTime::now() - STALE_TMP - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        MaildirSink::open(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    /// `maildir:~` where ~ has a tmp/ of its own: nothing of the user's is
    /// removed, however old.
    #[test]
    fn stale_files_stay_in_a_directory_that_was_not_a_maildir() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let users = dir.path().join("tmp/notes.txt");
        fs::write(&users, "x").unwrap();
        let old = SystemTime::now() - STALE_TMP - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&users)
            .unwrap()
            .set_modified(old)
            .unwrap();
        MaildirSink::open(dir.path()).unwrap();
        assert!(users.exists());
    }

    /// A pid that no process has (one that just exited).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn crash_leftovers_are_removed_unless_journaled_alive_or_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let (root, state_dir) = (dir.path().join("Maildir"), dir.path().join("state"));
        let sink = MaildirSink::open(&root).unwrap();
        let dead = dead_pid();
        let name = |pid: u32, n: u32| format!("1700000000.M1P{pid}Q{n}{OWN_MARK}.host");
        let orphan = root.join("tmp").join(name(dead, 1));
        let journaled = root.join("tmp").join(name(dead, 2));
        let alive = root.join("tmp").join(name(std::process::id(), 3));
        let foreign = root
            .join("tmp")
            .join(format!("1700000000.M1P{dead}Q4.host"));
        for path in [&orphan, &journaled, &alive, &foreign] {
            fs::write(path, "x").unwrap();
        }
        let intent = Intent::Maildir {
            tmp_path: journaled.clone(),
            new_path: root.join("new").join(name(dead, 2)),
        };
        fs::create_dir(&state_dir).unwrap();
        let mut state = state::MailboxState::open(&state_dir, "key").unwrap();
        state
            .record_delivered(&[state::Entry {
                intent: Some(intent.encode()),
                ..state::Entry::new("1")
            }])
            .unwrap();

        sink.remove_crash_leftovers(&state_dir);
        assert!(!orphan.exists());
        assert!(journaled.exists() && alive.exists() && foreign.exists());
    }

    #[tokio::test]
    async fn own_names_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = MaildirSink::open(dir.path()).unwrap();
        let writer = sink.begin().await.unwrap();
        let name = writer.name.clone();
        sink.abort(writer);
        assert!(name.contains(OWN_MARK), "{name}");
        // Ours, but this process is alive.
        assert!(!left_by_a_dead_mailfetch(&name));
        let dead = name.replace(
            &format!("P{}Q", std::process::id()),
            &format!("P{}Q", dead_pid()),
        );
        assert!(left_by_a_dead_mailfetch(&dead), "{dead}");
    }

    #[test]
    fn hostname_has_no_reserved_characters() {
        let host = maildir_hostname();
        assert!(!host.is_empty());
        assert!(!host.contains('/') && !host.contains(':'));
    }
}
