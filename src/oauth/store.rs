//! The token file: one per account (and one for its delivery server) in
//! `STATE_DIR/oauth/`, JSON, mode 0600.
//!
//! It is replaced, never edited: the new content goes to a temporary file
//! in the same directory, which is fsynced, renamed over the old one, and
//! the directory fsynced. A kill or a power loss at any moment leaves
//! either the old file or the new one, both complete; since the old
//! refresh token stays usable until its successor has been used (Microsoft,
//! Google), either one keeps the account working.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind};
use crate::permissions::check_private;

/// What the file holds. No `Debug`: every field but the times is a secret.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenFile {
    pub access_token: String,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// The access token's lifetime as granted, in seconds, which sizes the
    /// margin before expiry at which it is renewed.
    pub lifetime: u64,
    /// Empty when the provider gave none (client credentials).
    #[serde(default)]
    pub refresh_token: String,
    /// When the refresh token was last obtained or used, for the warning
    /// about refresh tokens revoked for lack of use.
    #[serde(default)]
    pub refresh_token_used_at: u64,
}

/// An access token is renewed a tenth of its lifetime before it expires,
/// but never more than this long before nor less than a second: a
/// one-hour token gets five minutes, a 20-second test token two seconds
/// (not a refresh at every poll).
const MAX_MARGIN_SECS: u64 = 300;

impl TokenFile {
    /// Whether the access token will still be valid a margin from `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        let margin = (self.lifetime / 10).clamp(1, MAX_MARGIN_SECS);
        !self.access_token.is_empty() && now + margin < self.expires_at
    }
}

/// The largest token file read: tokens are a few kilobytes.
const MAX_SIZE: u64 = 256 * 1024;

/// Reads the token file at `path`; `None` if there is none yet. Refuses a
/// file others may access, like a password file.
pub fn load(path: &Path) -> Result<Option<TokenFile>, Error> {
    let failure = |problem: String| {
        Error::new(
            Kind::Local,
            format!("token file {}: {problem}", path.display()),
        )
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(failure(err.to_string())),
    };
    let metadata = file.metadata().map_err(|err| failure(err.to_string()))?;
    check_private(path, &metadata, "the OAuth2 token file")?;
    let mut text = String::new();
    file.take(MAX_SIZE)
        .read_to_string(&mut text)
        .map_err(|err| failure(err.to_string()))?;
    // serde_json's message names a line and column, never the content.
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|err| failure(format!("unreadable ({err}); run `mailfetch login` again")))
}

/// Replaces the token file at `path` atomically and durably (see the module
/// documentation), creating its directory (mode 0700) if need be.
pub fn save(path: &Path, tokens: &TokenFile) -> Result<(), Error> {
    let failure = |what: &str, err: std::io::Error| {
        Error::new(
            Kind::Local,
            format!("cannot {what} the token file {}: {err}", path.display()),
        )
    };
    let directory = path.parent().unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)
        .map_err(|err| failure("create the directory of", err))?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = directory.join(format!(".{name}.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(tokens).expect("a token file always serializes");
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&temporary);
        return Err(failure("write", err));
    }
    fs::rename(&temporary, path).map_err(|err| {
        let _ = fs::remove_file(&temporary);
        failure("replace", err)
    })?;
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|err| failure("sync the directory of", err))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tokens(access: &str, expires_at: u64, lifetime: u64) -> TokenFile {
        TokenFile {
            access_token: access.to_owned(),
            expires_at,
            lifetime,
            refresh_token: "refresh".to_owned(),
            refresh_token_used_at: 0,
        }
    }

    #[test]
    fn an_access_token_is_renewed_a_tenth_of_its_life_before_it_expires() {
        let hour = tokens("a", 10_000 + 3600, 3600);
        assert!(hour.is_fresh(10_000));
        assert!(hour.is_fresh(10_000 + 3600 - 301));
        assert!(!hour.is_fresh(10_000 + 3600 - 300));
        let test_token = tokens("a", 10_000 + 20, 20);
        assert!(test_token.is_fresh(10_000 + 17));
        assert!(!test_token.is_fresh(10_000 + 18));
        assert!(!tokens("", u64::MAX, 3600).is_fresh(0));
    }

    #[test]
    fn save_replaces_the_file_privately_and_load_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth/work.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &tokens("first", 1, 1)).unwrap();
        save(&path, &tokens("second", 2, 2)).unwrap();
        let loaded = load(&path).unwrap().unwrap();
        assert_eq!(loaded.access_token, "second");
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // Nothing left over from the replacement.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&path).err().unwrap().kind, Kind::Permissions);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_quotes_nothing_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("work.json");
        fs::write(&path, "{\"access_token\": \"sekrit-token\", \"expires_").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&path).err().unwrap();
        assert!(!err.message.contains("sekrit"), "{err}");
        assert!(err.message.contains("mailfetch login"), "{err}");
    }
}
