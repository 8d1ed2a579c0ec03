//! What one poll of one mailbox did, and the line it logs.

use std::time::Duration;

use crate::config::Account;
use crate::error::{Error, Kind};

/// What one poll of one mailbox (a POP3 account, an IMAP folder) did.
#[derive(Debug, Default)]
pub struct Report {
    /// `account`, or `account/folder` for IMAP.
    pub mailbox: String,
    pub account: String,
    /// The IMAP folder; `None` for POP3, or an IMAP account that failed
    /// before any folder was opened.
    pub folder: Option<String>,
    /// Where mail went, for the summary line.
    pub destination: String,
    /// Messages on the server not delivered before.
    pub new: usize,
    pub delivered: usize,
    pub delivered_bytes: u64,
    /// Messages over `max_size`, left on the server.
    pub skipped: usize,
    /// Messages left for the next poll by `max_per_poll`.
    pub deferred: usize,
    /// Messages the server would not hand out; they stay on the server.
    pub refused: usize,
    /// Messages the destination failed to take for now (4xx, MDA exit 75,
    /// timeout); they stay on the server for the next poll.
    pub failed: usize,
    /// Messages the destination refused for good (5xx, MDA exit code);
    /// `on_reject` decides what became of them: see `bounced`, `discarded`.
    pub rejected: usize,
    /// Refused messages whose sender was sent a bounce; deleted (or, with
    /// `keep`, not tried again).
    pub bounced: usize,
    /// Refused messages deleted without a bounce (`on_reject = "delete"`).
    pub discarded: usize,
    /// Messages deleted (or moved, see `removal`) on the server.
    pub deleted: usize,
    /// How delivered messages leave the server: "deleted" or "moved to X".
    pub removal: String,
    pub elapsed: Duration,
    /// The folder was not opened: the server showed it as the last poll
    /// left it, with nothing to do.
    pub unchanged: bool,
    /// Why the poll stopped early, if it did.
    pub error: Option<Error>,
    /// Messages the state knows as delivered after the poll; `None` if
    /// the poll stopped before it was done with the state.
    pub known: Option<usize>,
    /// Half-done deliveries left for recovery, likewise.
    pub pending: Option<usize>,
}

impl Report {
    /// The report of an account that could not be polled at all.
    pub(super) fn failed(account: &Account, destination: &str, error: Error) -> Report {
        Report {
            error: Some(error),
            ..Report::new(account, None, destination)
        }
    }

    pub(super) fn new(account: &Account, folder: Option<&str>, destination: &str) -> Report {
        Report {
            mailbox: match folder {
                Some(folder) => format!("{}/{folder}", account.name),
                None => account.name.clone(),
            },
            account: account.name.clone(),
            folder: folder.map(str::to_owned),
            destination: destination.to_owned(),
            removal: match &account.move_to {
                Some(folder) => format!("moved to {folder}"),
                None => "deleted".to_owned(),
            },
            ..Report::default()
        }
    }

    /// The one line a poll logs by default.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{}: {} new, {} delivered ({}) to {}",
            self.mailbox,
            self.new,
            self.delivered,
            human_bytes(self.delivered_bytes),
            self.destination
        );
        if self.skipped > 0 {
            line.push_str(&format!(", {} over max_size", self.skipped));
        }
        if self.deferred > 0 {
            line.push_str(&format!(", {} left for the next poll", self.deferred));
        }
        if self.refused > 0 {
            line.push_str(&format!(", {} refused by the server", self.refused));
        }
        if self.failed > 0 {
            line.push_str(&format!(
                ", {} failed temporarily (left on the server)",
                self.failed
            ));
        }
        if self.rejected > 0 {
            let kept = self.rejected - self.bounced - self.discarded;
            let mut fates = Vec::new();
            if kept > 0 {
                fates.push(format!("{kept} left on the server"));
            }
            if self.bounced > 0 {
                fates.push(format!("{} bounced", self.bounced));
            }
            if self.discarded > 0 {
                fates.push(format!("{} dropped", self.discarded));
            }
            line.push_str(&format!(
                ", {} rejected ({})",
                self.rejected,
                fates.join(", ")
            ));
        }
        line.push_str(&format!(", {} {}", self.deleted, self.removal));
        if self.unchanged {
            line.push_str(", unchanged since the last poll");
        }
        line.push_str(&format!(", {:.1} s", self.elapsed.as_secs_f64()));
        if let Some(error) = &self.error {
            line.push_str(&format!("; stopped: {error}"));
        }
        line
    }

    /// The exit code this poll alone would give: its failure's, else 0
    /// with mail delivered and 1 without.
    pub fn exit_code(&self) -> u8 {
        match self.failure() {
            Some(kind) => kind.exit_code() as u8,
            None if self.delivered > 0 => 0,
            None => 1,
        }
    }

    /// The exit-code class of this poll: `None` when it went fine. A poll
    /// that stopped early failed, even if it delivered some mail first.
    pub fn failure(&self) -> Option<Kind> {
        match &self.error {
            Some(error) => Some(error.kind),
            None if self.rejected + self.failed > 0 => Some(Kind::Delivery),
            None if self.refused > 0 && self.delivered == 0 => Some(Kind::Server),
            None => None,
        }
    }
}

pub(super) fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.0} KiB", b as f64 / 1024.0),
        b if b < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{:.2} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}
