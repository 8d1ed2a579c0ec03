//! One mailfetch per state directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Kind};

/// Holds the lock until dropped. The lock is an `flock` on `STATE_DIR/lock`,
/// so the kernel releases it when the process dies, however it dies: there
/// is no stale lock file to clean up after a crash.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<StateLock, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|err| {
                Error::new(
                    Kind::Delivery,
                    format!(
                        "cannot create state directory {}: {err}",
                        state_dir.display()
                    ),
                )
            })?;
        let path = state_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|err| {
                Error::new(
                    Kind::Delivery,
                    format!("cannot open {}: {err}", path.display()),
                )
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another mailfetch".to_owned()
                } else {
                    format!("another mailfetch (pid {holder})")
                };
                return Err(Error::new(
                    Kind::Locked,
                    format!(
                        "{who} is already using the state directory {}",
                        state_dir.display()
                    ),
                ));
            }
            Err(TryLockError::Error(err)) => {
                return Err(Error::new(
                    Kind::Delivery,
                    format!("cannot lock {}: {err}", path.display()),
                ));
            }
        }
        // The pid is only for the message above; the lock is the flock.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        assert_eq!(err.kind, Kind::Locked);
        assert!(
            err.message.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }
}
