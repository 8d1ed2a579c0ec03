//! What has been delivered: one journal file per server mailbox.
//!
//! The journal is a text file of short records, appended to and never
//! rewritten in place, so a poll costs O(new messages) in writes:
//!
//! ```text
//! mailfetch-state 1
//! + ID             delivered
//! + ID INTENT      delivered; the sink may not have published it yet
//! + ID … #DIGEST   either of the above, with a digest of the message that
//!                  recognises it when its ID changes (IMAP UIDVALIDITY)
//! = INTENT         that intent is published
//! - ID             forgotten (no longer on the server)
//! ! KEY VALUE      a setting of the mailbox (IMAP: its UIDVALIDITY)
//! ```
//!
//! A crash can only tear the last line, which is dropped on the next open.
//! When dead records pile up the file is rewritten (to a new file, fsynced,
//! renamed over the old one), which keeps the amortized cost per record
//! constant.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Kind};

const HEADER: &str = "mailfetch-state 1";

/// One delivered message, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The server's id for it (POP3 UIDL, IMAP UID).
    pub id: String,
    /// The sink's intent, when publishing is still to come.
    pub intent: Option<String>,
    /// A digest of the message that outlives `id` (see [`MailboxState::reset`]).
    pub digest: Option<String>,
}

impl Entry {
    pub fn new(id: impl Into<String>) -> Entry {
        Entry {
            id: id.into(),
            intent: None,
            digest: None,
        }
    }

    fn record(&self) -> String {
        let mut line = format!("+ {}", self.id);
        if let Some(intent) = &self.intent {
            line.push(' ');
            line.push_str(intent);
        }
        if let Some(digest) = &self.digest {
            line.push_str(" #");
            line.push_str(digest);
        }
        line.push('\n');
        line
    }
}

/// The delivered ids of one server mailbox.
pub struct MailboxState {
    path: PathBuf,
    journal: File,
    /// Delivered ids, with their digests.
    delivered: HashMap<String, Option<String>>,
    meta: HashMap<String, String>,
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
            return Self::create(path, HashMap::new(), HashMap::new(), HashMap::new());
        };
        let mut state = MailboxState {
            path: path.to_owned(),
            journal: OpenOptions::new().append(true).open(path)?,
            delivered: HashMap::new(),
            meta: HashMap::new(),
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
        let kind = words.next()?;
        let first = words.next()?;
        match kind {
            "+" => {
                let mut entry = Entry::new(first);
                for word in words {
                    match word.strip_prefix('#') {
                        Some(digest) if entry.digest.is_none() => {
                            entry.digest = Some(digest.to_owned())
                        }
                        None if entry.intent.is_none() && entry.digest.is_none() => {
                            entry.intent = Some(word.to_owned())
                        }
                        _ => return None,
                    }
                }
                if let Some(intent) = entry.intent {
                    self.pending.insert(intent, entry.id.clone());
                }
                self.delivered.insert(entry.id, entry.digest);
            }
            "=" if words.next().is_none() => {
                self.pending.remove(first);
            }
            "-" if words.next().is_none() => {
                self.delivered.remove(first);
            }
            "!" => {
                let value: Vec<&str> = words.collect();
                self.meta.insert(first.to_owned(), value.join(" "));
            }
            _ => return None,
        }
        Some(())
    }

    /// Writes a fresh journal holding exactly the given state, atomically
    /// replacing any file at `path`.
    fn create(
        path: &Path,
        delivered: HashMap<String, Option<String>>,
        pending: HashMap<String, String>,
        meta: HashMap<String, String>,
    ) -> io::Result<MailboxState> {
        let mut text = format!("{HEADER}\n");
        for (key, value) in &meta {
            text.push_str(&format!("! {key} {value}\n"));
        }
        let intents: HashMap<&String, &String> =
            pending.iter().map(|(intent, id)| (id, intent)).collect();
        for (id, digest) in &delivered {
            let entry = Entry {
                id: id.clone(),
                intent: intents.get(id).map(|intent| (*intent).clone()),
                digest: digest.clone(),
            };
            text.push_str(&entry.record());
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
            records: delivered.len() + meta.len(),
            delivered,
            pending,
            meta,
        })
    }

    pub fn is_delivered(&self, id: &str) -> bool {
        self.delivered.contains_key(id)
    }

    /// How many messages are recorded as delivered.
    pub fn len(&self) -> usize {
        self.delivered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.delivered.is_empty()
    }

    /// The digests of every delivered message that has one.
    pub fn digests(&self) -> HashSet<&str> {
        self.delivered
            .values()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// A mailbox setting recorded with [`reset`](Self::reset).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    /// Starts the mailbox over: forgets every id and records `key = value`
    /// and `carried` instead, atomically and durably. Used when the server
    /// renumbers a mailbox (IMAP UIDVALIDITY): `carried` are the messages
    /// recognised by digest under their new ids. Pending intents survive.
    pub fn reset(&mut self, key: &str, value: &str, carried: Vec<Entry>) -> io::Result<()> {
        let mut meta = self.meta.clone();
        meta.insert(key.to_owned(), value.to_owned());
        let mut delivered: HashMap<String, Option<String>> = self
            .pending
            .values()
            .map(|id| (id.clone(), self.delivered.get(id).cloned().flatten()))
            .collect();
        for entry in carried {
            delivered.insert(entry.id, entry.digest);
        }
        *self = Self::create(&self.path, delivered, self.pending.clone(), meta)?;
        Ok(())
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
    pub fn record_delivered(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.record_accepted(entries)?;
        self.sync()
    }

    /// Records deliveries that are already final elsewhere (an MTA's 250),
    /// without waiting for the disk: the record survives the process being
    /// killed at once, and a power loss after the next [`sync`](Self::sync).
    pub fn record_accepted(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let text: String = entries.iter().map(Entry::record).collect();
        self.append(&text)?;
        for entry in entries {
            self.delivered
                .insert(entry.id.clone(), entry.digest.clone());
            if let Some(intent) = &entry.intent {
                self.pending.insert(intent.clone(), entry.id.clone());
            }
        }
        self.records += entries.len();
        Ok(())
    }

    /// Makes every record so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.journal.sync_data()
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
            .keys()
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

    /// Rewrites the journal once dead records (forgotten ids, published
    /// intents) outnumber half the live ones and a fixed floor: each rewrite
    /// is O(live) and follows at least live/2 appends, so a record costs
    /// O(1) amortized, and the file a poll reads stays near its live size.
    fn compact_if_worthwhile(&mut self) -> io::Result<()> {
        let live = self.delivered.len() + self.meta.len();
        if self.records.saturating_sub(live) > (live / 2).max(1000) {
            *self = Self::create(
                &self.path,
                std::mem::take(&mut self.delivered),
                std::mem::take(&mut self.pending),
                std::mem::take(&mut self.meta),
            )?;
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
        let b = Entry {
            intent: Some("i1".into()),
            ..Entry::new("b")
        };
        state.record_delivered(&[Entry::new("a"), b]).unwrap();
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
        let ids = ["a", "b", "c"].map(Entry::new);
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
        state.record_delivered(&[Entry::new("a")]).unwrap();
        let path = state.path.clone();
        drop(state);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"+ half-writ").unwrap();
        let mut state = open(dir.path());
        assert!(state.is_delivered("a") && !state.is_delivered("half-writ"));
        state.record_delivered(&[Entry::new("b")]).unwrap();
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
            let ids: Vec<_> = (0..1000)
                .map(|i| Entry::new(format!("{round}-{i}")))
                .collect();
            state.record_delivered(&ids).unwrap();
            state.retain(&HashSet::new()).unwrap();
        }
        state.record_delivered(&[Entry::new("keep")]).unwrap();
        let size = fs::metadata(&state.path).unwrap().len();
        assert!(size < 4096, "journal not compacted: {size} bytes");
        drop(state);
        let state = open(dir.path());
        assert!(state.is_delivered("keep") && !state.is_delivered("2-5"));
    }

    #[test]
    fn digests_and_meta_survive_reopen_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path());
        let with_digest = |id: &str, digest: &str| Entry {
            digest: Some(digest.into()),
            ..Entry::new(id)
        };
        let pending = Entry {
            intent: Some("i9".into()),
            ..with_digest("9", "d9")
        };
        state.reset("uidvalidity", "100", Vec::new()).unwrap();
        state
            .record_delivered(&[with_digest("1", "d1"), with_digest("2", "d2"), pending])
            .unwrap();
        drop(state);
        let mut state = open(dir.path());
        assert_eq!(state.meta("uidvalidity"), Some("100"));
        assert_eq!(state.digests(), HashSet::from(["d1", "d2", "d9"]));

        state
            .reset("uidvalidity", "200", vec![with_digest("7", "d1")])
            .unwrap();
        drop(state);
        let state = open(dir.path());
        assert_eq!(state.meta("uidvalidity"), Some("200"));
        assert!(state.is_delivered("7") && !state.is_delivered("1") && !state.is_delivered("2"));
        // A delivery in flight is not forgotten by a reset.
        assert!(state.is_delivered("9"));
        assert_eq!(
            state.pending_intents(),
            vec![("9".to_string(), "i9".to_string())]
        );
    }

    #[test]
    fn file_names_cannot_escape_the_directory() {
        assert_eq!(file_name_for("pop3 a@b:1"), "pop3%20a@b%3A1.state");
        assert_eq!(file_name_for("../x/y"), "..%2Fx%2Fy.state");
    }
}
