//! Spool files: a private file holding one message while a sink needs it
//! more than once (an MDA run per recipient, an IMAP APPEND that must state
//! the size before sending, an mbox append that waits for the commit), so
//! that memory stays bounded whatever the message's size. Used by the MDA,
//! IMAP APPEND and mbox sinks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};

/// A private file holding one message while it is being delivered; removed
/// when dropped, whatever happened to the delivery.
pub(crate) struct SpoolFile {
    path: PathBuf,
    file: File,
}

impl SpoolFile {
    /// Creates a new file (mode 0600) in `dir`, creating `dir` (mode 0700)
    /// if it is missing: messages are private.
    pub(crate) fn create(dir: &Path, prefix: &str) -> io::Result<SpoolFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        remove_orphans_once(dir);
        loop {
            let path = dir.join(format!(
                "{prefix}.{}.{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => return Ok(SpoolFile { path, file }),
                // Left by a crashed run with the same pid: take another name.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
    }

    pub(crate) fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        // Page-cache writes take microseconds; done inline like the Maildir
        // writer's, rather than a thread hand-off per chunk.
        self.file.write_all(data)
    }

    /// The file itself, for a reader that seeks where it needs.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// A reader positioned at the start of the file.
    pub(crate) fn reader(&self) -> io::Result<tokio::fs::File> {
        let mut file = self.file.try_clone()?;
        file.rewind()?;
        Ok(tokio::fs::File::from_std(file))
    }
}

/// Spool files are named `PREFIX.PID.N`; those the prefixes here name.
const SPOOL_PREFIXES: &[&str] = &["mda", "append", "mbox"];

/// Removes, once per process and directory, spool files left by a process
/// that died (a crash or `kill -9` mid-message): their messages are still on
/// the server, and the files would otherwise stay forever.
fn remove_orphans_once(dir: &Path) {
    static CLEANED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    {
        let mut cleaned = CLEANED.lock().unwrap_or_else(|poison| poison.into_inner());
        if cleaned.iter().any(|done| done == dir) {
            return;
        }
        cleaned.push(dir.to_owned());
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = orphan_pid(&name.to_string_lossy()) else {
            continue;
        };
        if super::process_is_gone(pid) {
            debug!("removing orphaned spool file {}", entry.path().display());
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The pid in a spool file name of another process, if it is one.
fn orphan_pid(name: &str) -> Option<i32> {
    let mut parts = name.split('.');
    let (prefix, pid, counter) = (parts.next()?, parts.next()?, parts.next()?);
    let pid: i32 = pid.parse().ok()?;
    let ours = SPOOL_PREFIXES.contains(&prefix)
        && counter.parse::<u64>().is_ok()
        && parts.next().is_none();
    (ours && pid > 0 && pid as u32 != std::process::id()).then_some(pid)
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.path) {
            warn!("cannot remove spool file {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_spool_files_are_recognised_by_name() {
        assert_eq!(orphan_pid("mda.12345.0"), Some(12345));
        assert_eq!(orphan_pid("append.7.42"), Some(7));
        assert_eq!(orphan_pid(&format!("mda.{}.3", std::process::id())), None);
        assert_eq!(orphan_pid("other.12345.0"), None);
        assert_eq!(orphan_pid("mda.12345.0.x"), None);
        assert_eq!(orphan_pid("mda.x.0"), None);
    }
}
