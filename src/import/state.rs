//! `mailfetch import --state`: the old tool's record of fetched messages,
//! journaled as delivered for the matching mailfetch mailbox.
//!
//! The ids are only worth importing when they are the ids mailfetch will
//! see: the same server, port, user and folder (the account's mailbox
//! key), the POP3 UIDL exactly as the server sends it, and for IMAP the
//! UID together with the UIDVALIDITY it belongs to (without it a UID means
//! nothing). Where the old state cannot be trusted this says so and
//! imports nothing for that mailbox: fetching a message twice is better
//! than skipping one.
//!
//! Importing only adds "delivered" records, each batch fsynced
//! ([`MailboxState::record_delivered`]); a crash part-way leaves some ids
//! unimported, which means some messages fetched again, never one lost.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{Account, Note};
use crate::config::{Config, Protocol};
use crate::error::{Error, Kind};
use crate::state::{Entry, IDENTITY, MailboxState, mailbox_key};

/// Where an old tool kept what it had fetched for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldState {
    /// fetchmail's `.fetchids`: `user@host UIDL` lines for every POP3
    /// account (fetchmail keeps no ids for IMAP).
    Fetchids { path: PathBuf, host: String },
    /// getmail's `oldmail-SERVER-PORT-USER[-FOLDER]` files in its
    /// directory: `ID\0TIMESTAMP` lines, IDs `UIDL` or `UIDVALIDITY/UID`.
    Oldmail {
        dir: PathBuf,
        server: String,
        port: u16,
        username: String,
        /// BrokenUIDLPOP3Retriever: ids are message numbers, worthless.
        pop_uidl_broken: bool,
    },
    /// mpop's UIDL file: ` COUNT HOST USER` then COUNT `UID [TIMESTAMP]`.
    MpopUidls {
        path: PathBuf,
        host: String,
        username: String,
    },
}

/// What the old tool fetched from one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub folder: String,
    /// IMAP: the UIDVALIDITY the ids belong to.
    pub identity: Option<String>,
    pub ids: Vec<String>,
}

/// What reading one account's old state gave.
#[derive(Debug, Default)]
pub struct Found {
    pub mailboxes: Vec<Fetched>,
    pub notes: Vec<String>,
}

impl OldState {
    /// Reads the ids this state holds for `account` (already translated,
    /// so it knows its protocol and folders).
    pub fn read(&self, account: &Account) -> io::Result<Found> {
        let mut found = Found::default();
        match self {
            OldState::Fetchids { path, host } => {
                if account.protocol == "imap" {
                    found.notes.push(
                        "fetchmail keeps no ids for IMAP, it relies on the \\Seen flag: the account fetches only \
                         messages not yet seen (fetch = \"unseen\"), as fetchmail did, so what fetchmail fetched \
                         (and marked seen) is not fetched again"
                            .into(),
                    );
                    return Ok(found);
                }
                let Some(text) = read_optional(path)? else {
                    found.notes.push(format!(
                        "{} does not exist: nothing to import",
                        path.display()
                    ));
                    return Ok(found);
                };
                let ids = fetchids(&text, &account.username, host);
                found.mailboxes.push(Fetched {
                    folder: "INBOX".into(),
                    identity: None,
                    ids,
                });
            }
            OldState::Oldmail {
                dir,
                server,
                port,
                username,
                pop_uidl_broken,
            } => {
                let base = dir.join(strip_chars(
                    &format!("oldmail-{server}-{port}-{username}"),
                    '-',
                ));
                if account.protocol == "pop3" {
                    if *pop_uidl_broken {
                        found.notes.push(
                            "BrokenUIDLPOP3Retriever records message numbers, not UIDLs: its state cannot be \
                             trusted and is not imported"
                                .into(),
                        );
                        return Ok(found);
                    }
                    let Some(text) = read_optional(&base)? else {
                        found.notes.push(format!(
                            "{} does not exist: nothing to import",
                            base.display()
                        ));
                        return Ok(found);
                    };
                    let ids: Vec<String> =
                        oldmail_ids(&text).into_iter().map(|(id, _)| id).collect();
                    if ids.iter().any(|id| id.contains('-')) {
                        found.notes.push(
                            "getmail writes a `/` in a UIDL as `-`: ids with `-` may not match the server's, \
                             and those messages would be fetched again"
                                .into(),
                        );
                    }
                    found.mailboxes.push(Fetched {
                        folder: "INBOX".into(),
                        identity: None,
                        ids,
                    });
                } else {
                    let folders = account
                        .folders
                        .clone()
                        .unwrap_or_else(|| vec!["INBOX".into()]);
                    for folder in folders {
                        let mut file = base.clone().into_os_string();
                        file.push("-");
                        file.push(strip_chars(&folder, '.'));
                        let file = PathBuf::from(file);
                        let Some(text) = read_optional(&file)? else {
                            found.notes.push(format!(
                                "{folder}: {} does not exist: nothing to import",
                                file.display()
                            ));
                            continue;
                        };
                        match imap_ids(&text) {
                            Some((identity, ids, dropped)) => {
                                if dropped > 0 {
                                    found.notes.push(format!(
                                        "{folder}: {dropped} ids of an older UIDVALIDITY were left out (the server renumbered the folder since)"
                                    ));
                                }
                                found.mailboxes.push(Fetched {
                                    folder,
                                    identity: Some(identity),
                                    ids,
                                });
                            }
                            None => found.notes.push(format!(
                                "{folder}: {} holds no UIDVALIDITY/UID ids; IMAP state without UIDVALIDITY cannot be trusted and is not imported",
                                file.display()
                            )),
                        }
                    }
                }
            }
            OldState::MpopUidls {
                path,
                host,
                username,
            } => {
                let Some(text) = read_optional(path)? else {
                    found.notes.push(format!(
                        "{} does not exist: nothing to import",
                        path.display()
                    ));
                    return Ok(found);
                };
                match mpop_uidls(&text, host, username) {
                    Ok(ids) => found.mailboxes.push(Fetched {
                        folder: "INBOX".into(),
                        identity: None,
                        ids,
                    }),
                    Err(problem) => found
                        .notes
                        .push(format!("{}: {problem}; not imported", path.display())),
                }
            }
        }
        Ok(found)
    }
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("{}: {err}", path.display()),
        )),
    }
}

/// getmail's `STRIP_CHAR_RE` (`[/\:;<>|]+`) replaced by `with`.
fn strip_chars(name: &str, with: char) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in name.chars() {
        if "/\\:;<>|".contains(c) {
            if !in_run {
                out.push(with);
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

/// The ids fetchmail's `.fetchids` holds for `user` on `host`, read as
/// uid.c's `initialize_saved_lists` does: the user@host part ends at the
/// first blank after the first `@` (UIDLs may contain `@`), the host
/// starts after the last `@` before it, both compared without case.
pub fn fetchids(text: &str, user: &str, host: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for line in text.lines() {
        let line = line.trim_start_matches([' ', '\t']);
        let Some(at) = line.find('@') else { continue };
        let Some(blank) = line[at..].find(' ').map(|b| at + b) else {
            continue;
        };
        let user_host = line[..blank].trim_end_matches([' ', '\t']);
        let id = line[blank..].trim_start_matches(' ');
        let id = id.split([' ', '\t']).next().unwrap_or("");
        let Some((line_user, line_host)) = user_host.rsplit_once('@') else {
            continue;
        };
        if !id.is_empty()
            && line_user.eq_ignore_ascii_case(user)
            && line_host.eq_ignore_ascii_case(host)
        {
            ids.push(id.to_owned());
        }
    }
    ids
}

/// `ID\0TIMESTAMP` lines of a getmail oldmail file, as `read_oldmailfile`
/// reads them (malformed lines skipped).
fn oldmail_ids(text: &str) -> Vec<(String, i64)> {
    text.lines()
        .filter_map(|line| {
            let (id, timestamp) = line.trim().split_once('\0')?;
            Some((id.to_owned(), timestamp.trim().parse().ok()?))
        })
        .collect()
}

/// An IMAP oldmail file's UIDVALIDITY and UIDs: ids are `UIDVALIDITY/UID`
/// (before getmail 4.22, `UIDVALIDITY/FOLDER/UID`). When several
/// UIDVALIDITYs appear, the one seen last is the server's current one as
/// far as getmail knew; returns how many ids of others were dropped.
fn imap_ids(text: &str) -> Option<(String, Vec<String>, usize)> {
    let mut by_identity: HashMap<String, (i64, Vec<String>)> = HashMap::new();
    for (id, timestamp) in oldmail_ids(text) {
        let fields: Vec<&str> = id.split('/').collect();
        let (identity, uid) = match fields.as_slice() {
            [identity, uid] | [identity, _, uid] => (*identity, *uid),
            _ => continue,
        };
        if uid.parse::<u32>().is_err() || identity.parse::<u32>().is_err() {
            continue;
        }
        let entry = by_identity.entry(identity.to_owned()).or_default();
        entry.0 = entry.0.max(timestamp);
        entry.1.push(uid.to_owned());
    }
    let total: usize = by_identity.values().map(|(_, ids)| ids.len()).sum();
    let (identity, (_, ids)) = by_identity
        .into_iter()
        .max_by_key(|(_, (latest, _))| *latest)?;
    let dropped = total - ids.len();
    Some((identity, ids, dropped))
}

/// The UIDs mpop's UIDL file holds for `user` on `host` (uidls.c's format:
/// optional `#` comments first, then per mailbox ` COUNT HOST USER` and
/// COUNT lines `UID[ TIMESTAMP]`).
pub fn mpop_uidls(text: &str, host: &str, user: &str) -> Result<Vec<String>, String> {
    let mut lines = text.lines().enumerate().peekable();
    while lines.next_if(|(_, line)| line.starts_with('#')).is_some() {}
    let mut found = Vec::new();
    while let Some((index, header)) = lines.next() {
        let number = index + 1;
        let Some(rest) = header.strip_prefix(' ') else {
            return Err(format!("line {number}: UID without a list"));
        };
        let mut words = rest.splitn(3, ' ');
        let count: usize = words
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or(format!("line {number}: invalid number of UIDs"))?;
        let (Some(list_host), Some(list_user)) = (words.next(), words.next()) else {
            return Err(format!("line {number}: missing host or user"));
        };
        let mine = list_host == host && list_user == user;
        for _ in 0..count {
            let (_, line) = lines.next().ok_or("too few UIDs")?;
            if mine {
                // A timestamp follows the last blank (mpop ≥ 1.4.23).
                let uid = match line.rsplit_once(' ') {
                    Some((uid, timestamp)) if timestamp.parse::<i64>().is_ok() => uid,
                    _ => line,
                };
                found.push(uid.to_owned());
            }
        }
    }
    Ok(found)
}

/// Reads each imported account's old state and journals its ids as
/// delivered in `config`'s state directory. Returns what the user should
/// read, one line per account or problem.
pub fn import(config: &Config, accounts: &[Account]) -> Result<Vec<Note>, Error> {
    let state_dir = &config.general.state_dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|err| Error::new(Kind::Local, format!("{}: {err}", state_dir.display())))?;
    let mut notes = Vec::new();
    for imported in accounts {
        let Some(old) = &imported.old_state else {
            continue;
        };
        let Some(account) = config.accounts.iter().find(|a| a.name == imported.name) else {
            continue;
        };
        let (file, line) = imported.origin.clone();
        let mut note = |message: String| {
            notes.push(Note {
                file: file.clone(),
                line,
                message: format!("account {}: {message}", account.name),
            })
        };
        let found = old
            .read(imported)
            .map_err(|err| Error::new(Kind::Local, format!("reading the old state: {err}")))?;
        for message in found.notes {
            note(message);
        }
        for mailbox in found.mailboxes {
            let key = mailbox_key(account, &mailbox.folder);
            let mut state = MailboxState::open(state_dir, &key)?;
            let write_error =
                |err: io::Error| Error::new(Kind::Local, format!("state for {key}: {err}"));
            let fresh: Vec<Entry> = mailbox
                .ids
                .iter()
                .filter(|id| !state.is_delivered(id))
                .map(|id| Entry::new(id.as_str()))
                .collect();
            match (&mailbox.identity, state.meta(IDENTITY)) {
                (Some(identity), None) if state.is_empty() => {
                    state
                        .reset(IDENTITY, identity, fresh.clone())
                        .map_err(write_error)?;
                }
                (Some(identity), Some(known)) if identity != known => {
                    note(format!(
                        "{}: mailfetch already knows this folder under UIDVALIDITY {known}, the old state is for {identity}; not imported",
                        mailbox.folder
                    ));
                    continue;
                }
                _ => state.record_delivered(&fresh).map_err(write_error)?,
            }
            let folder = match account.protocol {
                Protocol::Imap => format!(" in {}", mailbox.folder),
                Protocol::Pop3 => String::new(),
            };
            note(format!(
                "{} messages{folder} recorded as already fetched ({} were known)",
                fresh.len(),
                mailbox.ids.len() - fresh.len()
            ));
            if !account.keep && !mailbox.ids.is_empty() {
                note("keep = false: the messages the old tool left on the server are deleted at the first poll".into());
            }
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetchids_lines_as_fetchmail_reads_them() {
        let text = "alice@pop.example.com 000001a2b3c4\n\
                    Alice@POP.example.com <id@with.at> \n\
                    bob@pop.example.com other\n\
                    alice@pop.other.example x\n\
                    user name@pop.example.com spaced\n\
                    garbage\n";
        assert_eq!(
            fetchids(text, "alice", "pop.example.com"),
            ["000001a2b3c4", "<id@with.at>"]
        );
        assert_eq!(fetchids(text, "user name", "pop.example.com"), ["spaced"]);
    }

    #[test]
    fn mpop_uidls_blocks_with_and_without_timestamps() {
        let text = "# comment\n 2 pop.example.com alice\nUID1 1700000000\nUID2\n 1 pop.example.com bob\nB1 1700000000\n";
        assert_eq!(
            mpop_uidls(text, "pop.example.com", "alice").unwrap(),
            ["UID1", "UID2"]
        );
        assert_eq!(mpop_uidls(text, "pop.example.com", "bob").unwrap(), ["B1"]);
        assert!(mpop_uidls(" 3 h u\nA 1\n", "h", "u").is_err());
    }

    #[test]
    fn getmail_imap_ids_keep_the_latest_uidvalidity() {
        let text = "100/1\x001000\n100/2\x001000\n200/INBOX/5\x002000\nbroken\n";
        let (identity, ids, dropped) = imap_ids(text).unwrap();
        assert_eq!(
            (identity.as_str(), ids, dropped),
            ("200", vec!["5".to_string()], 2)
        );
        assert!(imap_ids("UIDL-without-slash\x001\n").is_none());
        assert_eq!(
            strip_chars("oldmail-h-110-a/b::c", '-'),
            "oldmail-h-110-a-b-c"
        );
    }
}
