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
//! > ID RCPT…       not delivered yet, but these recipients have it (an LMTP
//!                  server or an MDA took it for some recipients only)
//! ! KEY VALUE      a setting of the mailbox (IMAP: its UIDVALIDITY)
//! ~ STATUS         the poll that wrote it left nothing to do while the
//!                  server's mailbox was at STATUS; void once any record
//!                  follows it (see "The no-op poll" in docs/design.md)
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

use crate::config::{Account, Protocol};
use crate::error::{Error, Kind};
use crate::percent;

const HEADER: &str = "mailfetch-state 1";

/// The meta key under which a mailbox's identity (IMAP UIDVALIDITY) is
/// kept: the ids recorded are valid only while the server's identity
/// matches it.
pub const IDENTITY: &str = "identity";

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

/// What a journal says, replayed into memory.
#[derive(Debug, Default)]
struct Records {
    /// Delivered ids, with their digests.
    delivered: HashMap<String, Option<String>>,
    meta: HashMap<String, String>,
    /// Intents journaled but not known to be published, by intent.
    pending: HashMap<String, String>,
    /// Ids not delivered yet, with the recipients that already have them.
    partial: HashMap<String, Vec<String>>,
    /// What the last record says if it is a `~` one: the server status
    /// at which the last poll left nothing to do.
    clean: Option<String>,
    /// Records in the journal, live or dead; drives compaction.
    count: usize,
}

impl Records {
    /// Applies the records in `bytes`; returns how many bytes form complete
    /// lines.
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
            self.count += 1;
        }
        Ok(offset)
    }

    fn apply(&mut self, line: &str) -> Option<()> {
        // Any record after a `~` one voids it: something happened since.
        self.clean = line.strip_prefix("~ ").map(str::to_owned);
        if self.clean.is_some() {
            return Some(());
        }
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
                self.deliver(entry);
            }
            "=" if words.next().is_none() => {
                self.pending.remove(first);
            }
            "-" if words.next().is_none() => {
                self.delivered.remove(first);
                self.partial.remove(first);
            }
            ">" => {
                let recipients = words.map(decode_word).collect::<Option<Vec<_>>>()?;
                self.partial.insert(first.to_owned(), recipients);
            }
            "!" => {
                let value: Vec<&str> = words.collect();
                self.meta.insert(first.to_owned(), value.join(" "));
            }
            _ => return None,
        }
        Some(())
    }

    fn deliver(&mut self, entry: Entry) {
        if let Some(intent) = entry.intent {
            self.pending.insert(intent, entry.id.clone());
        }
        self.partial.remove(&entry.id);
        self.delivered.insert(entry.id, entry.digest);
    }

    /// The live records alone, as a journal's text.
    fn text(&self) -> String {
        let mut text = format!("{HEADER}\n");
        for (key, value) in &self.meta {
            text.push_str(&format!("! {key} {value}\n"));
        }
        let intents: HashMap<&String, &String> = self
            .pending
            .iter()
            .map(|(intent, id)| (id, intent))
            .collect();
        for (id, digest) in &self.delivered {
            let entry = Entry {
                id: id.clone(),
                intent: intents.get(id).map(|intent| (*intent).clone()),
                digest: digest.clone(),
            };
            text.push_str(&entry.record());
        }
        for (id, recipients) in &self.partial {
            text.push_str(&partial_record(id, recipients));
        }
        // Last, as it was: it holds only while nothing follows it.
        if let Some(status) = &self.clean {
            text.push_str(&clean_record(status));
        }
        text
    }

    fn live(&self) -> usize {
        self.delivered.len() + self.meta.len() + self.partial.len()
    }
}

/// The delivered ids of one server mailbox.
pub struct MailboxState {
    path: PathBuf,
    journal: File,
    records: Records,
}

impl MailboxState {
    /// Opens (or creates) the journal for the mailbox named `key` (e.g.
    /// `pop3 alice@pop.example.com:995`) in `state_dir`.
    pub fn open(state_dir: &Path, key: &str) -> Result<MailboxState, Error> {
        let path = state_dir.join(file_name_for(key));
        Self::open_path(&path).map_err(|err| {
            Error::new(
                Kind::Local,
                format!(
                    "state file {}: {err} (moving it away makes mailfetch forget what it delivered from this mailbox)",
                    path.display()
                ),
            )
        })
    }

    fn open_path(path: &Path) -> io::Result<MailboxState> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Self::create(path, Records::default());
            }
            Err(err) => return Err(err),
        };
        let mut records = Records::default();
        let intact = records.replay(&bytes)?;
        let journal = OpenOptions::new().append(true).open(path)?;
        if intact < bytes.len() {
            // A torn last record from a crash: drop it so the next append
            // starts on a line of its own.
            tracing::warn!("{}: dropping a torn last record", path.display());
            journal.set_len(intact as u64)?;
        }
        Ok(MailboxState {
            path: path.to_owned(),
            journal,
            records,
        })
    }

    /// Writes a fresh journal holding exactly `records` at `path`.
    fn create(path: &Path, mut records: Records) -> io::Result<MailboxState> {
        let journal = write_journal(path, &records)?;
        sync_parent(path)?;
        records.count = records.live();
        Ok(MailboxState {
            path: path.to_owned(),
            journal,
            records,
        })
    }

    /// Replaces the journal with one holding only the live records. If
    /// anything fails before the new file took the journal's name, nothing
    /// changed; once it has, appends go to it, even if making its name
    /// durable then fails.
    fn rewrite(&mut self) -> io::Result<()> {
        self.journal = write_journal(&self.path, &self.records)?;
        self.records.count = self.records.live();
        sync_parent(&self.path)
    }

    pub fn is_delivered(&self, id: &str) -> bool {
        self.records.delivered.contains_key(id)
    }

    /// How many messages are recorded as delivered.
    pub fn len(&self) -> usize {
        self.records.delivered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.delivered.is_empty()
    }

    /// The digests of every delivered message that has one.
    pub fn digests(&self) -> HashSet<&str> {
        self.records
            .delivered
            .values()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// A mailbox setting recorded with [`reset`](Self::reset).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.records.meta.get(key).map(String::as_str)
    }

    /// The recipients that already have a message not yet delivered to
    /// all of them (see [`record_partial`](Self::record_partial)).
    pub fn delivered_to(&self, id: &str) -> &[String] {
        self.records.partial.get(id).map_or(&[], Vec::as_slice)
    }

    /// Starts the mailbox over: forgets every id and records `key = value`
    /// and `carried` instead, atomically and durably. Used when the server
    /// renumbers a mailbox (IMAP UIDVALIDITY): `carried` are the messages
    /// recognised by digest under their new ids. Pending intents survive.
    pub fn reset(&mut self, key: &str, value: &str, carried: Vec<Entry>) -> io::Result<()> {
        // Like `rewrite`: the memory state changes with the file.
        let mut records = Records {
            meta: self.records.meta.clone(),
            pending: self.records.pending.clone(),
            ..Records::default()
        };
        records.meta.insert(key.to_owned(), value.to_owned());
        for id in self.records.pending.values() {
            let digest = self.records.delivered.get(id).cloned().flatten();
            records.delivered.insert(id.clone(), digest);
        }
        for entry in carried {
            records.delivered.insert(entry.id, entry.digest);
        }
        self.journal = write_journal(&self.path, &records)?;
        records.count = records.live();
        self.records = records;
        sync_parent(&self.path)
    }

    /// Intents a crash may have left unpublished, with their ids.
    pub fn pending_intents(&self) -> Vec<(String, String)> {
        self.records
            .pending
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
            self.records.deliver(entry.clone());
        }
        self.records.count += entries.len();
        Ok(())
    }

    /// Records that the message `id`, not delivered yet, has reached
    /// `recipients` (all of them so far, not only the latest ones), so that
    /// the next attempt goes only to the others. Not synced, like
    /// [`record_accepted`](Self::record_accepted): a lost record means a
    /// recipient gets the message twice, never that anyone misses it.
    pub fn record_partial(&mut self, id: &str, recipients: &[String]) -> io::Result<()> {
        self.append(&partial_record(id, recipients))?;
        self.records
            .partial
            .insert(id.to_owned(), recipients.to_vec());
        self.records.count += 1;
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
            self.records.pending.remove(intent);
        }
        self.records.count += intents.len();
        self.compact_if_worthwhile();
        Ok(())
    }

    /// Forgets every delivered id not in `present` (messages gone from the
    /// server), returning how many were forgotten. Not synced: a lost
    /// record only means pruning again next time. Costs memory in
    /// proportion to the state, not to `present` (a whole listing).
    pub fn retain<I>(&mut self, present: I) -> io::Result<usize>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut absent: HashSet<&str> = self
            .records
            .delivered
            .keys()
            .chain(self.records.partial.keys())
            .map(String::as_str)
            .collect();
        for uid in present {
            if absent.is_empty() {
                break;
            }
            absent.remove(uid.as_ref());
        }
        for uid in self.records.pending.values() {
            absent.remove(uid.as_str());
        }
        let gone: Vec<String> = absent.into_iter().map(str::to_owned).collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let text: String = gone.iter().map(|uid| format!("- {uid}\n")).collect();
        self.append(&text)?;
        for uid in &gone {
            self.records.delivered.remove(uid);
            self.records.partial.remove(uid);
        }
        self.records.count += gone.len();
        self.compact_if_worthwhile();
        Ok(gone.len())
    }

    /// Forgets an id whose delivery turned out not to have happened.
    pub fn forget(&mut self, uid: &str, intent: &str) -> io::Result<()> {
        self.append(&format!("= {intent}\n- {uid}\n"))?;
        self.records.pending.remove(intent);
        self.records.delivered.remove(uid);
        self.records.partial.remove(uid);
        self.records.count += 2;
        Ok(())
    }

    /// Records that this poll left nothing to do while the server's
    /// mailbox was at `status` (an opaque line of the source's making), so
    /// that the next poll may skip the mailbox if the server is still
    /// there: see [`last_clean`]. Not synced: a lost record only costs the
    /// next poll a full pass, and the records before it reach the disk
    /// first (the journal is one file appended in order).
    pub fn record_clean(&mut self, status: &str) -> io::Result<()> {
        self.append(&clean_record(status))?;
        self.records.clean = Some(status.to_owned());
        self.records.count += 1;
        Ok(())
    }

    /// Appends records; any of them voids a `~` record before it.
    fn append(&mut self, text: &str) -> io::Result<()> {
        self.records.clean = None;
        self.journal.write_all(text.as_bytes())
    }

    /// Rewrites the journal once dead records (forgotten ids, published
    /// intents) outnumber half the live ones and a fixed floor: each rewrite
    /// is O(live) and follows at least live/2 appends, so a record costs
    /// O(1) amortized, and the file a poll reads stays near its live size.
    /// A rewrite that fails changes nothing (the appended journal is still
    /// whole), so it is only logged and tried again later.
    fn compact_if_worthwhile(&mut self) {
        let live = self.records.live();
        if self.records.count.saturating_sub(live) > (live / 2).max(1000)
            && let Err(err) = self.rewrite()
        {
            tracing::warn!("{}: cannot compact: {err}", self.path.display());
        }
    }
}

/// Writes `records` to a new file beside `path`, syncs it and renames it
/// over `path`; returns a handle for appending to it, opened before the
/// rename so that it is the file at `path` once the rename happened. The
/// caller makes the rename durable ([`sync_parent`]).
fn write_journal(path: &Path, records: &Records) -> io::Result<File> {
    let fresh = path.with_extension("new");
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&fresh)?;
        file.write_all(records.text().as_bytes())?;
        file.sync_data()?;
        let journal = OpenOptions::new().append(true).open(&fresh)?;
        fs::rename(&fresh, path)?;
        Ok(journal)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&fresh);
    }
    written
}

/// The status of the last `~` record of the mailbox named `key` if it is
/// the journal's last record: the server status at which the last poll
/// left nothing to do, with nothing done since. Reads only the journal's
/// tail, so that a poll which finds the server unchanged costs the same
/// whatever the mailbox holds. `None` without a journal, or when the last
/// line is another record or torn.
pub fn last_clean(state_dir: &Path, key: &str) -> io::Result<Option<String>> {
    use std::io::{Read, Seek, SeekFrom};
    /// Far more than a `~` record takes.
    const TAIL: u64 = 1024;
    let mut file = match File::open(state_dir.join(file_name_for(key))) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity(TAIL as usize);
    file.take(TAIL).read_to_end(&mut tail)?;
    let Some(text) = tail.strip_suffix(b"\n") else {
        return Ok(None);
    };
    let line = match memchr::memrchr(b'\n', text) {
        Some(newline) => &text[newline + 1..],
        // The first line is the header, never a record.
        None => return Ok(None),
    };
    Ok(std::str::from_utf8(line)
        .ok()
        .and_then(|line| line.strip_prefix("~ "))
        .map(str::to_owned))
}

fn clean_record(status: &str) -> String {
    format!("~ {status}\n")
}

/// Every intent still pending in any journal of `state_dir`: the files they
/// name are a crash's unfinished deliveries, which whoever cleans up after
/// crashes must leave to recovery.
pub fn pending_intents_in(state_dir: &Path) -> io::Result<HashSet<String>> {
    let mut intents = HashSet::new();
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(intents),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "state") {
            continue;
        }
        let mut records = Records::default();
        records.replay(&fs::read(&path)?)?;
        intents.extend(records.pending.into_keys());
    }
    Ok(intents)
}

fn partial_record(id: &str, recipients: &[String]) -> String {
    let mut line = format!("> {id}");
    for recipient in recipients {
        line.push(' ');
        line.push_str(&encode_word(recipient));
    }
    line.push('\n');
    line
}

/// Makes `text` one journal word: percent-encodes white space, controls,
/// `%`, and the characters that start other fields (`#`, `>`), so any
/// string (an address, a path) fits in the space-separated records.
pub fn encode_word(text: impl AsRef<[u8]>) -> String {
    percent::encode(text.as_ref(), |byte| {
        byte.is_ascii_graphic() && !b"%>#".contains(&byte)
    })
}

/// Undoes [`encode_word`]; `None` for a malformed escape.
pub fn decode_word_bytes(word: &str) -> Option<Vec<u8>> {
    percent::decode(word)
}

fn decode_word(word: &str) -> Option<String> {
    String::from_utf8(decode_word_bytes(word)?).ok()
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

/// The name of one server mailbox, for its journal and for the lock that
/// keeps two polls off it: protocol, user, host and port, and for IMAP the
/// folder (a POP3 account has one mailbox; `folder` is ignored). Not the
/// account's name, so renaming an account keeps what it delivered.
pub fn mailbox_key(account: &Account, folder: &str) -> String {
    let endpoint = &account.server;
    let username = endpoint.username.as_deref().unwrap_or_default();
    let server = format!("{username}@{}:{}", endpoint.host, endpoint.port);
    match account.protocol {
        Protocol::Pop3 => format!("pop3 {server}"),
        Protocol::Imap => format!("imap {server}/{folder}"),
    }
}

/// Where the status record of the mailbox `key` lives: beside its
/// journal, named like it (`.status` for `.state`), so that nothing that
/// reads journals ever reads it.
pub fn status_path(state_dir: &Path, key: &str) -> PathBuf {
    let journal = file_name_for(key);
    let stem = journal.strip_suffix(".state").unwrap_or(&journal);
    state_dir.join(format!("{stem}.status"))
}

/// The longest file name (`.state` included) a mailbox key maps to: well
/// under the 255 bytes of common filesystems, leaving room for the `.new`
/// of a rewrite.
const MAX_FILE_NAME: usize = 200;

/// A file name for a mailbox key: readable, with anything but
/// `[A-Za-z0-9._@-]` percent-encoded so that no key can escape the
/// directory. A key whose name would be too long (a folder name in CJK
/// takes 9 bytes a character) keeps a readable start and ends with a hash
/// of the whole key, so names stay unique.
fn file_name_for(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + 6);
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"._@-".contains(&byte) {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    const SUFFIX: &str = ".state";
    if name.len() + SUFFIX.len() > MAX_FILE_NAME {
        let hash = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let hash: String = hash.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut keep = MAX_FILE_NAME - SUFFIX.len() - hash.len() - 1;
        // Never cut an escape in half.
        while name[..keep].ends_with('%') || name[..keep - 1].ends_with('%') {
            keep -= 1;
        }
        name.truncate(keep);
        name.push('~');
        name.push_str(&hash);
    }
    name.push_str(SUFFIX);
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
            state.retain(&HashSet::<&str>::new()).unwrap();
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

    /// A rewrite that cannot be written leaves the state whole, in memory
    /// and on disk, and later records still reach the journal.
    #[test]
    fn a_failed_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path());
        let ids: Vec<_> = (0..3000).map(|i| Entry::new(format!("{i}"))).collect();
        state.record_delivered(&ids).unwrap();
        // The rewrite's temporary file cannot be created.
        fs::create_dir(state.path.with_extension("new")).unwrap();
        let present: HashSet<&str> = ["1", "2"].into();
        assert_eq!(state.retain(&present).unwrap(), 2998);
        assert!(state.is_delivered("1") && state.is_delivered("2"));
        assert!(!state.is_delivered("3"));
        state.record_delivered(&[Entry::new("late")]).unwrap();
        drop(state);
        let state = open(dir.path());
        assert!(state.is_delivered("1") && state.is_delivered("late"));
        assert_eq!(state.len(), 3);
    }

    /// After a rewrite, appends go to the new file (not to the replaced,
    /// unlinked one).
    #[test]
    fn appends_after_a_compaction_reach_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path());
        let ids: Vec<_> = (0..3000).map(|i| Entry::new(format!("{i}"))).collect();
        state.record_delivered(&ids).unwrap();
        state.retain(&HashSet::from(["7"])).unwrap();
        state.record_delivered(&[Entry::new("after")]).unwrap();
        drop(state);
        let state = open(dir.path());
        assert!(state.is_delivered("7") && state.is_delivered("after"));
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn partial_deliveries_survive_reopen_and_end_with_the_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path());
        let odd = "odd name%#>@x".to_string();
        state
            .record_partial("u1", &["alice".into(), odd.clone()])
            .unwrap();
        state.record_partial("u2", &["bob".into()]).unwrap();
        drop(state);
        let mut state = open(dir.path());
        assert_eq!(state.delivered_to("u1"), ["alice".to_string(), odd]);
        assert!(!state.is_delivered("u1"));
        state.record_delivered(&[Entry::new("u1")]).unwrap();
        assert!(state.delivered_to("u1").is_empty());
        state.retain(&HashSet::from(["u1"])).unwrap();
        assert!(state.delivered_to("u2").is_empty(), "gone from the server");
        drop(state);
        let state = open(dir.path());
        assert!(state.delivered_to("u1").is_empty() && state.delivered_to("u2").is_empty());
        assert!(state.is_delivered("u1"));
    }

    #[test]
    fn pending_intents_of_every_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = MailboxState::open(dir.path(), "a").unwrap();
        let mut b = MailboxState::open(dir.path(), "b").unwrap();
        let with_intent = |id: &str, intent: &str| Entry {
            intent: Some(intent.into()),
            ..Entry::new(id)
        };
        a.record_delivered(&[with_intent("1", "i1"), with_intent("2", "i2")])
            .unwrap();
        a.record_published(&["i1".into()]).unwrap();
        b.record_delivered(&[with_intent("1", "i3")]).unwrap();
        fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
        assert_eq!(
            pending_intents_in(dir.path()).unwrap(),
            HashSet::from(["i2".to_string(), "i3".to_string()])
        );
        assert!(
            pending_intents_in(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    /// A folder name of 25 CJK characters is 225 bytes of percent escapes:
    /// the name is bounded, stays distinct from its neighbours, and works.
    #[test]
    fn long_keys_get_bounded_distinct_file_names() {
        let folder = "受信箱".repeat(9);
        let key = |suffix: &str| format!("imap alice@imap.example.com:993/{folder}{suffix}");
        let (a, b) = (file_name_for(&key("")), file_name_for(&key("x")));
        assert!(a.len() <= MAX_FILE_NAME && b.len() <= MAX_FILE_NAME, "{a}");
        assert_ne!(a, b);
        assert!(a.starts_with("imap%20alice@imap.example.com%3A993%2F%E5"));
        assert!(a.ends_with(".state"));
        let dir = tempfile::tempdir().unwrap();
        let mut state = MailboxState::open(dir.path(), &key("")).unwrap();
        state.record_delivered(&[Entry::new("1")]).unwrap();
        assert!(
            MailboxState::open(dir.path(), &key(""))
                .unwrap()
                .is_delivered("1")
        );
        // Short keys keep the names they always had.
        assert_eq!(file_name_for("pop3 a@b:1"), "pop3%20a@b%3A1.state");
    }

    /// A `~` record holds only while it is the journal's last: on reopen,
    /// after a rewrite, and for the tail reader alike.
    #[test]
    fn a_clean_record_holds_only_while_last() {
        let dir = tempfile::tempdir().unwrap();
        let key = "pop3 alice@host:995";
        let clean = || last_clean(dir.path(), key).unwrap();
        assert_eq!(clean(), None, "no journal yet");
        let mut state = open(dir.path());
        assert_eq!(clean(), None, "a header alone");
        state.record_delivered(&[Entry::new("a")]).unwrap();
        state.record_clean("uidnext=2 x").unwrap();
        assert_eq!(clean().as_deref(), Some("uidnext=2 x"));
        drop(state);
        let mut state = open(dir.path());
        assert_eq!(state.records.clean.as_deref(), Some("uidnext=2 x"));
        state.rewrite().unwrap();
        assert_eq!(
            clean().as_deref(),
            Some("uidnext=2 x"),
            "kept last by a rewrite"
        );
        // Each kind of later record voids it.
        for later in [
            |s: &mut MailboxState| s.record_delivered(&[Entry::new("b")]),
            |s: &mut MailboxState| s.record_partial("c", &["r".into()]),
            |s: &mut MailboxState| s.retain(["b"]).map(drop),
            |s: &mut MailboxState| s.reset("identity", "9", Vec::new()),
        ] {
            state.record_clean("s").unwrap();
            assert_eq!(clean().as_deref(), Some("s"));
            later(&mut state).unwrap();
            assert_eq!(clean(), None);
            assert_eq!(state.records.clean, None);
            state.rewrite().unwrap();
            assert_eq!(clean(), None, "not brought back by a rewrite");
        }
        drop(state);
        assert_eq!(open(dir.path()).records.clean, None);
        // A torn last line is no record.
        let path = dir.path().join(file_name_for(key));
        fs::write(&path, "mailfetch-state 1\n~ s\n~ t").unwrap();
        assert_eq!(clean(), None);
        fs::write(&path, "mailfetch-state 1\n~ s\n").unwrap();
        assert_eq!(clean().as_deref(), Some("s"));
        // A long journal is read from its tail.
        let mut state = open(dir.path());
        let ids: Vec<_> = (0..5000).map(|i| Entry::new(format!("{i}"))).collect();
        state.record_delivered(&ids).unwrap();
        state.record_clean("big").unwrap();
        assert_eq!(clean().as_deref(), Some("big"));
    }

    #[test]
    fn file_names_cannot_escape_the_directory() {
        assert_eq!(file_name_for("pop3 a@b:1"), "pop3%20a@b%3A1.state");
        assert_eq!(file_name_for("../x/y"), "..%2Fx%2Fy.state");
    }
}
