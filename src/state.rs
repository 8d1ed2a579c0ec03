//! What has been delivered: one journal file per server mailbox.
//!
//! The journal is a text file of short records, appended to and never
//! rewritten in place, so a poll costs O(new messages) in writes:
//!
//! ```text
//! mailfetch-state 1
//! + UID            delivered
//! + UID INTENT     delivered; the sink may not have published it yet
//! = INTENT         that intent is published
//! - UID            forgotten (no longer on the server)
//! ```
//!
//! A crash can only tear the last line, which is dropped on the next open.
//! When dead records outnumber live ones the file is rewritten (to a new
//! file, fsynced, renamed over the old one), which keeps the amortized cost
//! per record constant.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Kind};

const HEADER: &str = "mailfetch-state 1";

/// The delivered ids of one server mailbox.
pub struct MailboxState {
    path: PathBuf,
    journal: File,
    delivered: HashSet<String>,
    /// Intents journaled but not known to be published, by intent.
    pending: HashMap<String, String>,
    /// Records in the journal, live or dead; drives compaction.
    records: usize,
}

impl MailboxState {
    /// Opens (or creates) the journal for the mailbox named `key` (e.g.
    /// `pop3 alice@pop.example.com:995`) in `state_dir`.
    pub fn open(state_dir: &Path, key: &str) -> Result<MailboxState, Error> {
        let path = state_dir.join(file_name_for(key));
        Self::open_path(&path).map_err(|err| {
            Error::new(
                Kind::Delivery,
                format!(
                    "state file {}: {err} (moving it away makes mailfetch forget what it delivered from this mailbox)",
                    path.display()
                ),
            )
        })
    }

    fn open_path(path: &Path) -> io::Result<MailboxState> {
        let existing = match fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        let Some(bytes) = existing else {
            return Self::create(path, &HashSet::new(), &HashMap::new());
        };
        let mut state = MailboxState {
            path: path.to_owned(),
            journal: OpenOptions::new().append(true).open(path)?,
            delivered: HashSet::new(),
            pending: HashMap::new(),
            records: 0,
        };
        let intact = state.replay(&bytes)?;
        if intact < bytes.len() {
            // A torn last record from a crash: drop it so the next append
            // starts on a line of its own.
            tracing::warn!("{}: dropping a torn last record", path.display());
            state.journal.set_len(intact as u64)?;
        }
        Ok(state)
    }

    /// Applies the records in `bytes`; returns how many bytes form complete lines.
    fn replay(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut offset = 0;
        let mut number = 0;
        while let Some(len) = memchr::memchr(b'\n', &bytes[offset..]) {
            number += 1;
            let line = std::str::from_utf8(&bytes[offset..offset + len])
                .map_err(|_| corrupt(number, "not UTF-8"))?;
            offset += len + 1;
            if number == 1 {
                if line != HEADER {
                    return Err(corrupt(number, "not a mailfetch state file"));
                }
                continue;
            }
            self.apply(line).ok_or_else(|| corrupt(number, line))?;
            self.records += 1;
        }
        Ok(offset)
    }

    fn apply(&mut self, line: &str) -> Option<()> {
        let mut words = line.split(' ');
        match (words.next()?, words.next(), words.next(), words.next()) {
            ("+", Some(uid), None, None) => {
                self.delivered.insert(uid.to_owned());
            }
            ("+", Some(uid), Some(intent), None) => {
                self.delivered.insert(uid.to_owned());
                self.pending.insert(intent.to_owned(), uid.to_owned());
            }
            ("=", Some(intent), None, None) => {
                self.pending.remove(intent);
            }
            ("-", Some(uid), None, None) => {
                self.delivered.remove(uid);
            }
            _ => return None,
        }
        Some(())
    }

    /// Writes a fresh journal holding exactly the given state, atomically
    /// replacing any file at `path`.
    fn create(
        path: &Path,
        delivered: &HashSet<String>,
        pending: &HashMap<String, String>,
    ) -> io::Result<MailboxState> {
        let mut text = format!("{HEADER}\n");
        let pending_uids: HashSet<&String> = pending.values().collect();
        for uid in delivered.iter().filter(|uid| !pending_uids.contains(uid)) {
            text.push_str(&format!("+ {uid}\n"));
        }
        for (intent, uid) in pending {
            text.push_str(&format!("+ {uid} {intent}\n"));
        }
        let fresh = path.with_extension("new");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&fresh)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        fs::rename(&fresh, path)?;
        sync_parent(path)?;
        Ok(MailboxState {
            path: path.to_owned(),
            journal: OpenOptions::new().append(true).open(path)?,
            delivered: delivered.clone(),
            pending: pending.clone(),
            records: delivered.len(),
        })
    }

    pub fn is_delivered(&self, uid: &str) -> bool {
        self.delivered.contains(uid)
    }

    /// Intents a crash may have left unpublished, with their ids.
    pub fn pending_intents(&self) -> Vec<(String, String)> {
        self.pending
            .iter()
            .map(|(intent, uid)| (uid.clone(), intent.clone()))
            .collect()
    }

    /// Durably records that these messages are delivered (one write, one
    /// fdatasync for the whole batch). An intent, if any, must be journaled
    /// before its message becomes visible.
    pub fn record_delivered(&mut self, entries: &[(String, Option<String>)]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for (uid, intent) in entries {
            match intent {
                Some(intent) => text.push_str(&format!("+ {uid} {intent}\n")),
                None => text.push_str(&format!("+ {uid}\n")),
            }
        }
        self.append(&text)?;
        self.journal.sync_data()?;
        for (uid, intent) in entries {
            self.delivered.insert(uid.clone());
            if let Some(intent) = intent {
                self.pending.insert(intent.clone(), uid.clone());
            }
        }
        self.records += entries.len();
        Ok(())
    }

    /// Records that these intents are published. Not synced: if the record
    /// is lost, recovery checks the intent again and finds it done.
    pub fn record_published(&mut self, intents: &[String]) -> io::Result<()> {
        let text: String = intents
            .iter()
            .map(|intent| format!("= {intent}\n"))
            .collect();
        if text.is_empty() {
            return Ok(());
        }
        self.append(&text)?;
        for intent in intents {
            self.pending.remove(intent);
        }
        self.records += intents.len();
        self.compact_if_worthwhile()
    }

    /// Forgets every delivered id not in `present` (messages gone from the
    /// server), returning how many were forgotten. Not synced: a lost
    /// record only means pruning again next time.
    pub fn retain(&mut self, present: &HashSet<&str>) -> io::Result<usize> {
        let pending_uids: HashSet<&String> = self.pending.values().collect();
        let gone: Vec<String> = self
            .delivered
            .iter()
            .filter(|uid| !present.contains(uid.as_str()) && !pending_uids.contains(uid))
            .cloned()
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let text: String = gone.iter().map(|uid| format!("- {uid}\n")).collect();
        self.append(&text)?;
        for uid in &gone {
            self.delivered.remove(uid);
        }
        self.records += gone.len();
        self.compact_if_worthwhile()?;
        Ok(gone.len())
    }

    /// Forgets an id whose delivery turned out not to have happened.
    pub fn forget(&mut self, uid: &str, intent: &str) -> io::Result<()> {
        self.append(&format!("= {intent}\n- {uid}\n"))?;
        self.pending.remove(intent);
        self.delivered.remove(uid);
        self.records += 2;
        Ok(())
    }

    fn append(&mut self, text: &str) -> io::Result<()> {
        self.journal.write_all(text.as_bytes())
    }

    fn compact_if_worthwhile(&mut self) -> io::Result<()> {
        let live = self.delivered.len() + self.pending.len();
        if self.records > 2 * live + 1000 {
            *self = Self::create(&self.path, &self.delivered, &self.pending)?;
        }
        Ok(())
    }
}

fn corrupt(line: usize, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("line {line} is corrupt: {what:?}"),
    )
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// A file name for a mailbox key: readable, with anything but
/// `[A-Za-z0-9._@-]` percent-encoded so that no key can escape the directory.
fn file_name_for(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + 6);
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"._@-".contains(&byte) {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name.push_str(".state");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> MailboxState {
        MailboxState::open(dir, "pop3 alice@host:995").unwrap()
    }

    #[test]
    fn deliveries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path());
        assert!(!state.is_delivered("a"));
        state
            .record_delivered(&[("a".into(), None), ("b".into(), Some("i1".into()))])
            .unwrap();
        drop(state);
        let mut state = open(dir.path());
        assert!(state.is_delivered("a") && state.is_delivered("b"));
        assert_eq!(
            state.pending_intents(),
            vec![("b".to_string(), "i1".to_string())]
        );
        state.record_published(&["i1".into()]).unwrap();
        drop(state);
        assert!(open(dir.path()).pending_intents().is_empty());
    }

    #[test]
    fn retain_prunes_ids_gone_from_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path());
        let ids: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| (id.to_string(), None))
            .collect();
        state.record_delivered(&ids).unwrap();
        assert_eq!(state.retain(&HashSet::from(["b"])).unwrap(), 2);
        drop(state);
        let state = open(dir.path());
        assert!(state.is_delivered("b"));
        assert!(!state.is_delivered("a") && !state.is_delivered("c"));
    }

    #[test]
    fn torn_last_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path());
        state.record_delivered(&[("a".into(), None)]).unwrap();
        let path = state.path.clone();
        drop(state);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"+ half-writ").unwrap();
        let mut state = open(dir.path());
        assert!(state.is_delivered("a") && !state.is_delivered("half-writ"));
        state.record_delivered(&[("b".into(), None)]).unwrap();
        drop(state);
        let state = open(dir.path());
        assert!(state.is_delivered("b"));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "mailfetch-state 1\n+ a\n+ b\n"
        );
    }

    #[test]
    fn corrupt_line_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name_for("k"));
        fs::write(&path, "mailfetch-state 1\n+ a\n? what\n").unwrap();
        let err = MailboxState::open(dir.path(), "k").err().unwrap();
        assert!(err.message.contains("line 3"), "{err}");
        assert!(err.message.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn journal_is_compacted_when_mostly_dead() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path());
        for round in 0..3 {
            let ids: Vec<_> = (0..1000).map(|i| (format!("{round}-{i}"), None)).collect();
            state.record_delivered(&ids).unwrap();
            state.retain(&HashSet::new()).unwrap();
        }
        state.record_delivered(&[("keep".into(), None)]).unwrap();
        let size = fs::metadata(&state.path).unwrap().len();
        assert!(size < 4096, "journal not compacted: {size} bytes");
        drop(state);
        let state = open(dir.path());
        assert!(state.is_delivered("keep") && !state.is_delivered("2-5"));
    }

    #[test]
    fn file_names_cannot_escape_the_directory() {
        assert_eq!(file_name_for("pop3 a@b:1"), "pop3%20a@b%3A1.state");
        assert_eq!(file_name_for("../x/y"), "..%2Fx%2Fy.state");
    }
}
