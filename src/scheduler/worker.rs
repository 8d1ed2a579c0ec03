//! The tasks of the daemon: one polls an account at its interval, one
//! keeps an IDLE connection on a folder.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, Semaphore};
use tracing::{error, warn};

use crate::config::Account;
use crate::error::{Error, Kind};
use crate::notify::notify;
use crate::pipeline::{self};
use crate::source::Source;
use crate::source::imap::{Imap, Woken};
use crate::state;

use super::backoff::*;
use super::log_report;
use super::shutdown::Shutdown;

/// The state keys of the server mailboxes `folders` of an account; two
/// sessions never work on one of them at once.
pub(super) fn mailbox_keys(account: &Account, folders: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = folders
        .iter()
        .map(|folder| state::mailbox_key(account, folder))
        .collect();
    // Always taken in the same order, so two takers never deadlock.
    keys.sort();
    keys.dedup();
    keys
}

/// One lock per server mailbox, shared by every task (and kept across
/// configuration reloads, so a task of the old configuration and one of
/// the new never poll the same mailbox at once).
#[derive(Default)]
pub(super) struct MailboxLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MailboxLocks {
    pub(super) async fn lock(&self, keys: &[String]) -> Vec<OwnedMutexGuard<()>> {
        let mutexes: Vec<_> = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            keys.iter()
                .map(|key| locks.entry(key.clone()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(mutexes.len());
        for mutex in mutexes {
            guards.push(mutex.lock_owned().await);
        }
        guards
    }
}

/// What every task of one configuration generation shares.
#[derive(Clone)]
pub(super) struct Worker {
    pub(super) account: Arc<Account>,
    pub(super) state_dir: Arc<PathBuf>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) locks: Arc<MailboxLocks>,
    pub(super) shutdown: Shutdown,
    pub(super) interval: Duration,
}

impl Worker {
    fn is_stopped(&self) -> bool {
        self.shutdown.is_stopped()
    }

    /// Waits `delay`, or less if woken; false if told to stop.
    async fn sleep(&mut self, delay: Duration) -> bool {
        self.shutdown.sleep(delay).await
    }

    /// Polls `folders` of the account (all of them, or the one whose
    /// server turned out to have no IDLE) at its interval until told to
    /// stop.
    pub(super) async fn poll_loop(mut self, folders: Vec<String>) {
        let mut schedule = Schedule::new(self.interval, POLL_BACKOFF);
        let keys = mailbox_keys(&self.account, &folders);
        loop {
            let reports = {
                let mut shutdown = self.shutdown.clone();
                let ready = async {
                    let guards = self.locks.lock(&keys).await;
                    let permit = self.permits.clone().acquire_owned().await;
                    (guards, permit)
                };
                let _held = tokio::select! {
                    held = ready => held,
                    () = shutdown.stopped() => return,
                };
                pipeline::poll_folders(&self.account, &folders, &self.state_dir).await
            };
            for report in &reports {
                log_report(report);
            }
            if let Some(last) = reports.last() {
                notify(&format!("STATUS=last poll: {}", last.summary()));
            }
            let outcome = Outcome::of(&reports);
            let delay = schedule.after(outcome, jitter());
            self.log_retry(outcome, schedule.failures(), delay);
            if !self.sleep(delay).await {
                return;
            }
        }
    }

    pub(super) fn log_retry(&self, outcome: Outcome, failures: u32, delay: Duration) {
        let name = &self.account.name;
        match outcome {
            Outcome::Success => {}
            Outcome::Failure => warn!(
                "{name}: failed {failures} time(s) in a row; next attempt in {}",
                human_duration(delay)
            ),
            Outcome::AuthFailure => error!(
                "{name}: LOGIN REJECTED by {} for user {}: check the password. mailfetch waits {} \
                 before trying again, so that the server does not lock the account; after fixing \
                 the configuration, reload it (SIGHUP, `systemctl reload mailfetch`)",
                self.account.server.host,
                self.account.server.username.as_deref().unwrap_or_default(),
                human_duration(delay)
            ),
        }
    }

    /// Keeps an IDLE connection on `folder` until told to stop: polls the
    /// folder, waits for mail, polls again; reconnects with backoff. A
    /// server without IDLE gets this folder polled at the interval instead.
    pub(super) async fn idle_loop(mut self, folder: String) {
        let mut schedule = Schedule::new(self.interval, IDLE_BACKOFF);
        let keys = mailbox_keys(&self.account, std::slice::from_ref(&folder));
        // The folder is ours for as long as this task runs.
        let guards = {
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                guards = self.locks.lock(&keys) => guards,
                () = shutdown.stopped() => return,
            }
        };
        loop {
            let failure = match self.idle_session(&folder, &mut schedule).await {
                SessionEnd::Stopped => return,
                SessionEnd::NoIdle => {
                    warn!(
                        "{}: {} does not support IDLE; polling {folder} every {} instead",
                        self.account.name,
                        self.account.server.host,
                        human_duration(self.interval)
                    );
                    drop(guards);
                    return self.poll_loop(vec![folder]).await;
                }
                SessionEnd::Failed(err) => err,
            };
            let outcome = if failure.kind == Kind::Auth {
                Outcome::AuthFailure
            } else {
                Outcome::Failure
            };
            let delay = schedule.after(outcome, jitter());
            if outcome == Outcome::Failure {
                warn!(
                    "{}/{folder}: IDLE connection lost: {failure}; reconnecting in {}",
                    self.account.name,
                    human_duration(delay)
                );
            } else {
                self.log_retry(outcome, schedule.failures(), delay);
            }
            if !self.sleep(delay).await {
                return;
            }
        }
    }

    pub(super) async fn idle_session(
        &mut self,
        folder: &str,
        schedule: &mut Schedule,
    ) -> SessionEnd {
        let account = self.account.clone();
        let mut permit = {
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => Some(permit),
                () = shutdown.stopped() => return SessionEnd::Stopped,
            }
        };
        let connected = match pipeline::source_server(&account).await {
            Ok(server) => Imap::connect(&server, pipeline::after_delivery(&account)).await,
            Err(err) => Err(err),
        };
        let mut session = match connected {
            Ok(session) => session,
            Err(err) => return SessionEnd::Failed(err),
        };
        if !session.has_idle() {
            let _ = session.finish().await;
            return SessionEnd::NoIdle;
        }
        let mut poll = true;
        loop {
            if poll {
                let held = match permit.take() {
                    Some(held) => held,
                    None => {
                        let mut shutdown = self.shutdown.clone();
                        tokio::select! {
                            permit = self.permits.clone().acquire_owned() => permit,
                            () = shutdown.stopped() => break,
                        }
                    }
                };
                let report =
                    pipeline::poll_imap_folder(&mut session, &account, folder, &self.state_dir)
                        .await;
                drop(held);
                log_report(&report);
                notify(&format!("STATUS=last poll: {}", report.summary()));
                if let Some(err) = report.error {
                    if pipeline::is_stopping() {
                        return SessionEnd::Stopped;
                    }
                    return SessionEnd::Failed(err);
                }
                schedule.after(Outcome::Success, 0.0);
                // max_per_poll left some for the next poll: no need to wait
                // for new mail to take them, as long as this poll got
                // somewhere. One whose messages all failed (a destination
                // that says 4xx) would only fail again at once, forever:
                // it waits, like any poll, for new mail or the renewal.
                let progressed = report.delivered + report.bounced + report.discarded > 0;
                if report.deferred > 0 && progressed && !self.is_stopped() {
                    continue;
                }
            }
            if self.is_stopped() {
                break;
            }
            let mut shutdown = self.shutdown.clone();
            let interrupt = shutdown.stopped_or_woken();
            match session.idle(account.idle_timeout, interrupt).await {
                Err(err) => return SessionEnd::Failed(err),
                Ok(Woken::Interrupted) if self.is_stopped() => break,
                // A renewal polls too: a cheap check that nothing was missed.
                Ok(Woken::NewMail | Woken::Interrupted | Woken::Timeout) => poll = true,
            }
            // The wake-up of this task was consumed by `interrupt`; keep
            // this task's own receiver in step.
            self.shutdown.mark_woken();
        }
        if let Err(err) = session.finish().await {
            tracing::debug!("{}/{folder}: LOGOUT: {err}", account.name);
        }
        SessionEnd::Stopped
    }
}

pub(super) enum SessionEnd {
    Stopped,
    NoIdle,
    Failed(Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    pub(super) async fn mailbox_locks_exclude_and_release() {
        let locks = Arc::new(MailboxLocks::default());
        let keys = vec!["a".to_owned(), "b".to_owned()];
        let held = locks.lock(&keys).await;
        let other = locks.clone();
        let waiter = tokio::spawn(async move { other.lock(&["b".to_owned()]).await.len() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a held mailbox was locked twice");
        // A different mailbox is free.
        assert_eq!(locks.lock(&["c".to_owned()]).await.len(), 1);
        drop(held);
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
