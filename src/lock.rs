//! One mailfetch per state directory.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Kind};
use crate::permissions::check_unwritable_by_others;

/// What someone who can write to the state directory could do.
const STATE_RISK: &str = "could add records that make mailfetch delete mail it never fetched";

/// Holds the lock until dropped. The lock is an `flock` on `STATE_DIR/lock`,
/// so the kernel releases it when the process dies, however it dies: there
/// is no stale lock file to clean up after a crash.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Creates the state directory if need be, checks that nobody else
    /// controls it or its journals (see [`crate::permissions`]), and locks it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|err| {
                Error::new(
                    Kind::Local,
                    format!(
                        "cannot create state directory {}: {err}",
                        state_dir.display()
                    ),
                )
            })?;
        check_state_dir(state_dir)?;
        let path = state_dir.join("lock");
        let cannot_open = |err: io::Error| {
            Error::new(
                Kind::Local,
                format!("cannot open {}: {err}", path.display()),
            )
        };
        // Never through a symbolic link: the pid written below would land
        // in whatever file it points to.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::ELOOP) => Error::new(
                    Kind::Permissions,
                    format!(
                        "{}: is a symbolic link, which mailfetch does not follow there; remove it",
                        path.display()
                    ),
                ),
                _ => cannot_open(err),
            })?;
        let metadata = file.metadata().map_err(cannot_open)?;
        if !metadata.is_file() {
            return Err(Error::new(
                Kind::Permissions,
                format!("{}: is not a regular file; remove it", path.display()),
            ));
        }
        check_unwritable_by_others(&path, &metadata, "the lock file", STATE_RISK)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_pid(&file);
                let who = match holder {
                    Some(pid) => format!("another mailfetch (pid {pid})"),
                    None => "another mailfetch".to_owned(),
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
                    Kind::Local,
                    format!("cannot lock {}: {err}", path.display()),
                ));
            }
        }
        // The pid is only for the message above; the lock is the flock.
        // Written over the old one at a fixed width, so that the file is
        // never truncated.
        let _ = file.write_all_at(
            format!("{:>PID_WIDTH$}\n", std::process::id()).as_bytes(),
            0,
        );
        Ok(StateLock { _file: file })
    }
}

/// Wide enough for any pid (at most 2^22 on Linux, 10 digits as a u32).
const PID_WIDTH: usize = 10;

/// The pid the lock holder wrote, if it is there.
fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.by_ref()
        .take(PID_WIDTH as u64 + 1)
        .read_to_string(&mut text)
        .ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Refuses a state directory, or a journal in it, that someone else could
/// write to.
fn check_state_dir(state_dir: &Path) -> Result<(), Error> {
    let unreadable =
        |path: &Path, err: io::Error| Error::new(Kind::Local, format!("{}: {err}", path.display()));
    let metadata = fs::metadata(state_dir).map_err(|err| unreadable(state_dir, err))?;
    check_unwritable_by_others(state_dir, &metadata, "the state directory", STATE_RISK)?;
    let entries = fs::read_dir(state_dir).map_err(|err| unreadable(state_dir, err))?;
    for entry in entries {
        let path = entry.map_err(|err| unreadable(state_dir, err))?.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "state")
        {
            let metadata = fs::metadata(&path).map_err(|err| unreadable(&path, err))?;
            check_unwritable_by_others(&path, &metadata, "the state file", STATE_RISK)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn the_lock_file_is_never_a_link_and_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious\n").unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join("lock")).unwrap();
        let err = StateLock::acquire(&state).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions);
        assert!(err.message.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");

        // An old, longer pid record is overwritten, not truncated, and
        // still read back right.
        fs::remove_file(state.join("lock")).unwrap();
        fs::write(state.join("lock"), "123456789012345\nold\n").unwrap();
        let _held = StateLock::acquire(&state).unwrap();
        let err = StateLock::acquire(&state).unwrap_err();
        assert!(
            err.message
                .contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_state_directory_or_journal_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o1777)).unwrap();
        let err = StateLock::acquire(&state).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions);
        assert!(
            err.message.starts_with(&format!(
                "{}: the state directory can be written by group or others",
                state.display()
            )),
            "{err}"
        );
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        let journal = state.join("pop3 alice@host:995.state");
        fs::write(&journal, "mailfetch-state 1\n").unwrap();
        fs::set_permissions(&journal, fs::Permissions::from_mode(0o666)).unwrap();
        let err = StateLock::acquire(&state).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions);
        assert!(err.message.contains("the state file"), "{err}");
        fs::set_permissions(&journal, fs::Permissions::from_mode(0o600)).unwrap();
        StateLock::acquire(&state).unwrap();
    }
}
