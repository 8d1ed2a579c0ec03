//! The status record: how the last poll of each mailbox ended. Every poll
//! (one-shot or daemon) writes one beside the mailbox's journal;
//! `mailfetch status` reads them without the lock or the network, so it
//! answers while a daemon runs and when the servers are down.
//!
//! A record is a small JSON file replaced by a rename: a reader sees the
//! old record or the new one. It is not fsynced: it says how things went,
//! and after a power loss the next poll rewrites it.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{Account, Config, Protocol};
use crate::pipeline::Report;
use crate::state::{mailbox_key, status_path};

/// The last poll of one mailbox. Times are Unix seconds in the file and
/// RFC 3339 when shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub last_poll: i64,
    /// The last poll that ended without a failure, this one or before.
    pub last_success: Option<i64>,
    /// The exit code this poll alone would have given.
    pub exit_code: u8,
    /// Its summary line (with the error, if it failed).
    pub message: String,
    /// Messages it delivered.
    pub delivered: usize,
    /// Messages the state knows as delivered, as of the last poll that
    /// read it.
    pub known: Option<usize>,
    /// Deliveries a crash left half-done, for recovery to finish.
    pub pending: Option<usize>,
}

/// Writes the record of `report`'s mailbox; for an account that failed
/// before any folder was opened (no folder in the report), of each of
/// `folders`. A record that cannot be written is logged and skipped: it
/// must never fail a poll.
pub fn record(state_dir: &Path, account: &Account, folders: &[String], report: &Report) {
    let now = unix_now();
    let mailboxes: Vec<&str> = match (&report.folder, account.protocol) {
        (Some(folder), _) => vec![folder.as_str()],
        (None, Protocol::Imap) => folders.iter().map(String::as_str).collect(),
        (None, Protocol::Pop3) => vec!["INBOX"],
    };
    for folder in mailboxes {
        let path = status_path(state_dir, &mailbox_key(account, folder));
        let previous = read(&path);
        let succeeded = report.failure().is_none();
        let record = Record {
            last_poll: now,
            last_success: if succeeded {
                Some(now)
            } else {
                previous.as_ref().and_then(|p| p.last_success)
            },
            exit_code: report.exit_code(),
            message: report.summary(),
            delivered: report.delivered,
            known: report
                .known
                .or_else(|| previous.as_ref().and_then(|p| p.known)),
            pending: report
                .pending
                .or_else(|| previous.as_ref().and_then(|p| p.pending)),
        };
        if let Err(err) = write(&path, &record) {
            tracing::warn!("cannot write the status record {}: {err}", path.display());
        }
    }
}

fn write(path: &Path, record: &Record) -> io::Result<()> {
    let text = serde_json::to_vec(record).map_err(io::Error::other)?;
    let temporary = path.with_extension("status.new");
    fs::write(&temporary, text)?;
    fs::rename(&temporary, path)
}

fn read(path: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// One line of `mailfetch status`: a mailbox of the configuration, and its
/// record if it was ever polled.
#[derive(Debug, Serialize)]
pub struct Line {
    pub account: String,
    /// `None` for POP3.
    pub folder: Option<String>,
    pub last_poll: Option<String>,
    pub last_success: Option<String>,
    pub exit_code: Option<u8>,
    pub message: Option<String>,
    pub delivered: Option<usize>,
    pub known: Option<usize>,
    pub pending: Option<usize>,
}

/// The status of every mailbox of `config`, in its order.
pub fn lines(config: &Config) -> Vec<Line> {
    let mut lines = Vec::new();
    for account in &config.accounts {
        let folders: Vec<Option<&str>> = match account.protocol {
            Protocol::Pop3 => vec![None],
            Protocol::Imap => account.folders.iter().map(|f| Some(f.as_str())).collect(),
        };
        for folder in folders {
            let key = mailbox_key(account, folder.unwrap_or("INBOX"));
            let record = read(&status_path(&config.general.state_dir, &key));
            lines.push(Line {
                account: account.name.clone(),
                folder: folder.map(str::to_owned),
                last_poll: record.as_ref().map(|r| rfc3339(r.last_poll)),
                last_success: record.as_ref().and_then(|r| r.last_success.map(rfc3339)),
                exit_code: record.as_ref().map(|r| r.exit_code),
                message: record.as_ref().map(|r| r.message.clone()),
                delivered: record.as_ref().map(|r| r.delivered),
                known: record.as_ref().and_then(|r| r.known),
                pending: record.as_ref().and_then(|r| r.pending),
            });
        }
    }
    lines
}

fn rfc3339(unix: i64) -> String {
    mail_parser::DateTime::from_timestamp(unix).to_rfc3339()
}

impl Line {
    /// The line `mailfetch status` prints without `--json`.
    pub fn text(&self) -> String {
        let mailbox = match &self.folder {
            Some(folder) => format!("{}/{folder}", self.account),
            None => self.account.clone(),
        };
        let (Some(last_poll), Some(exit_code)) = (&self.last_poll, self.exit_code) else {
            return format!("{mailbox}: never polled");
        };
        let count = |n: Option<usize>| n.map_or("?".to_owned(), |n| n.to_string());
        format!(
            "{mailbox}: last poll {last_poll} (exit {exit_code}), last success {}, {} delivered, {} known, {} pending\n    {}",
            self.last_success.as_deref().unwrap_or("never"),
            count(self.delivered),
            count(self.known),
            count(self.pending),
            self.message.as_deref().unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_as_rfc_3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_573_000), "2025-12-01T07:10:00Z");
    }

    #[test]
    fn a_record_survives_the_round_trip_and_a_torn_one_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.status");
        let record = Record {
            last_poll: 5,
            last_success: None,
            exit_code: 2,
            message: "home: stopped".to_owned(),
            delivered: 0,
            known: Some(3),
            pending: None,
        };
        write(&path, &record).unwrap();
        assert_eq!(read(&path), Some(record));
        fs::write(&path, "{\"last_poll\":").unwrap();
        assert_eq!(read(&path), None);
    }
}
