//! Whose files mailfetch may trust.
//!
//! What mailfetch reads tells it what to run (`password_command`, `mda:`),
//! where to log in and which messages are already delivered (and may be
//! deleted from the server). So anyone who can change the configuration,
//! a password file, the state directory or a journal in it can run
//! commands as the user or make mailfetch delete mail it never fetched.
//! Each of them must therefore belong to the user running mailfetch (or to
//! root) and be writable by nobody else. Refusals are [`Kind::Permissions`]
//! errors (exit code 6) that name the file and say how to fix it.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Kind};

/// Group and others may write.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Group and others may read, write or search.
const ACCESSIBLE_BY_OTHERS: u32 = 0o077;

/// Refuses `path` (described by `metadata`, taken from the open file where
/// there is one) unless only this user or root can change it. `what`
/// names it in the error (`the configuration file`) and `risk` says what
/// someone else could do with it (`could make mailfetch run commands as
/// you`).
pub fn check_unwritable_by_others(
    path: &Path,
    metadata: &Metadata,
    what: &str,
    risk: &str,
) -> Result<(), Error> {
    check_owner(path, metadata, what, risk)?;
    let mode = metadata.permissions().mode();
    if mode & WRITABLE_BY_OTHERS != 0 {
        return Err(refusal(
            path,
            format!(
                "{what} can be written by group or others (mode {:04o}), who {risk}; \
                 run `chmod go-w {}`",
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses a file holding a secret unless it is this user's (or root's)
/// and nobody else may access it at all.
pub fn check_private(path: &Path, metadata: &Metadata, what: &str) -> Result<(), Error> {
    check_owner(path, metadata, what, "could read or change the secret")?;
    let mode = metadata.permissions().mode();
    if mode & ACCESSIBLE_BY_OTHERS != 0 {
        return Err(refusal(
            path,
            format!(
                "group or others may access it (mode {:04o}); run `chmod 600 {}`",
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses the directory holding `file` if someone else could replace the
/// file in it: a directory that another user owns, or that group or
/// others may write without the sticky bit (which, as on /tmp, keeps them
/// from renaming or removing what is not theirs). A symbolic link is
/// followed, and the directories of the link and of its target are both
/// checked.
pub fn check_directory_of(file: &Path, what: &str, risk: &str) -> Result<(), Error> {
    let mut directories = vec![parent_of(file).to_owned()];
    if let Ok(target) = file.canonicalize() {
        let real = parent_of(&target).to_owned();
        if real.canonicalize().ok() != directories[0].canonicalize().ok() {
            directories.push(real);
        }
    }
    let what = format!("the directory holding {what}");
    for directory in directories {
        let metadata = directory.metadata().map_err(|err| {
            Error::new(Kind::Permissions, format!("{}: {err}", directory.display()))
        })?;
        check_owner(&directory, &metadata, &what, risk)?;
        let mode = metadata.permissions().mode();
        if mode & WRITABLE_BY_OTHERS != 0 && mode & libc::S_ISVTX == 0 {
            return Err(refusal(
                &directory,
                format!(
                    "{what} can be written by group or others (mode {:04o}), who could \
                     replace it and so {risk}; run `chmod go-w {}`",
                    mode & 0o7777,
                    directory.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The directory `file` is in; `.` for a bare file name.
fn parent_of(file: &Path) -> &Path {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Refuses what belongs to neither this user nor root.
fn check_owner(path: &Path, metadata: &Metadata, what: &str, risk: &str) -> Result<(), Error> {
    // SAFETY: geteuid cannot fail and has no side effects.
    let me = unsafe { libc::geteuid() };
    let owner = metadata.uid();
    if owner == me || owner == 0 {
        return Ok(());
    }
    Err(refusal(
        path,
        format!(
            "{what} belongs to uid {owner}, not to you (uid {me}) or root, and its owner \
             {risk}; make it yours (`chown`) or use your own copy"
        ),
    ))
}

fn refusal(path: &Path, problem: String) -> Error {
    Error::new(Kind::Permissions, format!("{}: {problem}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::os::unix::fs::chown;

    const RISK: &str = "could make mailfetch run commands as you";

    fn check(path: &Path) -> Result<(), Error> {
        check_unwritable_by_others(path, &path.metadata().unwrap(), "the file", RISK)
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Whether this process may give files away (root may).
    fn can_chown() -> bool {
        // SAFETY: geteuid cannot fail and has no side effects.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn only_files_nobody_else_can_write_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fetchrc");
        fs::write(&file, "").unwrap();
        for mode in [0o600, 0o644, 0o640, 0o400] {
            set_mode(&file, mode);
            check(&file).unwrap_or_else(|err| panic!("{mode:o}: {err}"));
        }
        for mode in [0o620, 0o602, 0o666, 0o664] {
            set_mode(&file, mode);
            let err = check(&file).unwrap_err();
            assert_eq!(err.kind, Kind::Permissions);
            let name = file.display();
            assert!(
                err.message.starts_with(&format!("{name}: the file ")),
                "{err}"
            );
            assert!(err.message.contains(RISK), "{err}");
            assert!(err.message.contains(&format!("chmod go-w {name}")), "{err}");
        }
    }

    #[test]
    fn secrets_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        fs::write(&file, "").unwrap();
        set_mode(&file, 0o600);
        check_private(&file, &file.metadata().unwrap(), "the password file").unwrap();
        set_mode(&file, 0o640);
        let err = check_private(&file, &file.metadata().unwrap(), "x").unwrap_err();
        assert_eq!(err.kind, Kind::Permissions);
        assert!(err.message.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_file_of_another_user_is_not_trusted() {
        if !can_chown() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fetchrc");
        fs::write(&file, "").unwrap();
        chown(&file, Some(4242), None).unwrap();
        let err = check(&file).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions);
        assert!(err.message.contains("belongs to uid 4242"), "{err}");
        let err = check_private(&file, &file.metadata().unwrap(), "x").unwrap_err();
        assert!(err.message.contains("belongs to uid 4242"), "{err}");
        // Root's files are trusted: root can change them anyway.
        chown(&file, Some(0), None).unwrap();
        check(&file).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_trusted_only_with_the_sticky_bit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fetchrc");
        fs::write(&file, "").unwrap();
        check_directory_of(&file, "the configuration file", RISK).unwrap();
        set_mode(dir.path(), 0o777);
        let err = check_directory_of(&file, "the configuration file", RISK).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions);
        assert!(
            err.message.starts_with(&format!(
                "{}: the directory holding the configuration file can be written",
                dir.path().display()
            )),
            "{err}"
        );
        set_mode(dir.path(), 0o1777);
        check_directory_of(&file, "the configuration file", RISK).unwrap();

        // Through a symbolic link, the target's directory counts too.
        set_mode(dir.path(), 0o777);
        let safe = tempfile::tempdir().unwrap();
        let link = safe.path().join("fetchrc");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = check_directory_of(&link, "the configuration file", RISK).unwrap_err();
        assert!(
            err.message.starts_with(&dir.path().display().to_string()),
            "{err}"
        );
        set_mode(dir.path(), 0o700);
    }
}
