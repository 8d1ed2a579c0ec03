//! Polling many accounts: concurrently in one-shot mode ([`poll_all`]), and
//! for as long as the process runs in daemon mode ([`run_daemon`]): one
//! task per polled account and one per IDLE folder, retries with backoff,
//! signals, and systemd notifications.
//!
//! The decisions (how long to wait after a poll, see [`Schedule`]) are
//! pure functions, unit-tested below; the rest is a thin layer of tokio
//! tasks around `pipeline`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{OwnedMutexGuard, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::{Account, Config, Protocol};
use crate::error::{Error, Kind};
use crate::notify::notify;
use crate::pipeline::{self, Report};
use crate::source::Source;
use crate::source::imap::{Imap, Woken};
use crate::state;

/// After SIGTERM, how long polls in progress get to finish their current
/// message and commit before they are abandoned (the process must be gone
/// within 10 s, systemd's and most supervisors' patience).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// How failed polls are retried: the first retry after `base`, each next
/// one after twice as long, never more than `cap`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

/// A poll that failed (server down, timeout, protocol error…).
pub const POLL_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(30),
    cap: Duration::from_secs(30 * 60),
};

/// A dropped IDLE connection: reconnect soon, since mail is expected within
/// seconds, then back off like a poll.
pub const IDLE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(5),
    cap: Duration::from_secs(30 * 60),
};

/// A rejected login. Servers lock accounts after repeated failures, and a
/// wrong password does not fix itself: wait long, and longer.
pub const AUTH_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(15 * 60),
    cap: Duration::from_secs(6 * 60 * 60),
};

impl Backoff {
    /// The wait after `failures` (≥ 1) failures in a row. `unit` (0 to 1)
    /// is a random draw: the wait is between half and all of the
    /// exponential value ("equal jitter"), so accounts that failed together
    /// do not retry together, and no retry comes sooner than half its due.
    pub fn delay(self, failures: u32, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let full = self
            .base
            .checked_mul(1 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap);
        full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// How a poll of an account (every folder of it) went, for scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The server rejected the credentials.
    AuthFailure,
}

impl Outcome {
    /// The worst of the reports: an authentication failure, else any
    /// failure, else success.
    pub fn of(reports: &[Report]) -> Outcome {
        let failures: Vec<Kind> = reports.iter().filter_map(Report::failure).collect();
        if failures.contains(&Kind::Auth) {
            Outcome::AuthFailure
        } else if failures.is_empty() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

/// When an account is polled next.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    backoff: Backoff,
    failures: u32,
}

impl Schedule {
    pub fn new(interval: Duration, backoff: Backoff) -> Schedule {
        Schedule {
            interval,
            backoff,
            failures: 0,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long to wait after a poll that ended with `outcome`; `unit` is
    /// a random draw between 0 and 1 for the jitter. Success resets the
    /// backoff and waits the interval.
    pub fn after(&mut self, outcome: Outcome, unit: f64) -> Duration {
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.interval
            }
            Outcome::Failure => {
                self.failures += 1;
                self.backoff.delay(self.failures, unit)
            }
            Outcome::AuthFailure => {
                self.failures += 1;
                AUTH_BACKOFF.delay(self.failures, unit)
            }
        }
    }
}

/// A random number between 0 and 1, for jitter.
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

/// `90 s`, `15 min`, `2 h`, for log lines.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 120 {
        format!("{secs} s")
    } else if secs < 2 * 3600 {
        format!("{} min", (secs + 30) / 60)
    } else {
        format!("{:.1} h", secs as f64 / 3600.0)
    }
}

/// The state keys of the server mailboxes an account polls; two sessions
/// never work on one of them at once.
fn mailbox_keys(account: &Account) -> Vec<String> {
    let mut keys: Vec<String> = account
        .folders
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
struct MailboxLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MailboxLocks {
    async fn lock(&self, keys: &[String]) -> Vec<OwnedMutexGuard<()>> {
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

/// Logs what a poll did: the summary line, and for a login failure a
/// prominent explanation.
fn log_report(report: &Report) {
    match report.failure() {
        None => info!("{}", report.summary()),
        Some(_) => error!("{}", report.summary()),
    }
}

/// Polls every account of `config` once, `max_connections` at a time,
/// logging each summary as it completes. Returns every report.
pub async fn poll_all(config: &Config) -> Vec<Report> {
    let permits = Arc::new(Semaphore::new(config.general.max_connections));
    let state_dir = Arc::new(config.general.state_dir.clone());
    let mut tasks = JoinSet::new();
    for account in &config.accounts {
        let (account, permits, state_dir) = (account.clone(), permits.clone(), state_dir.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            pipeline::poll(&account, &state_dir).await
        });
    }
    let mut reports = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(done) => {
                for report in done {
                    log_report(&report);
                    reports.push(report);
                }
            }
            Err(err) => {
                let report = Report {
                    mailbox: "?".to_owned(),
                    error: Some(Error::new(Kind::Local, format!("poll failed: {err}"))),
                    ..Report::default()
                };
                error!("{}", report.summary());
                reports.push(report);
            }
        }
    }
    reports
}

/// Completes when `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Completes at the next "poll now" (SIGUSR1); never if the sender is gone.
async fn woken(wake: &mut watch::Receiver<u64>) {
    if wake.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What every task of one configuration generation shares.
#[derive(Clone)]
struct Worker {
    account: Arc<Account>,
    state_dir: Arc<PathBuf>,
    permits: Arc<Semaphore>,
    locks: Arc<MailboxLocks>,
    stop: watch::Receiver<bool>,
    wake: watch::Receiver<u64>,
    interval: Duration,
}

impl Worker {
    fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits `delay`, or less if woken; false if told to stop.
    async fn sleep(&mut self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = woken(&mut self.wake) => true,
            () = stopped(&mut self.stop) => false,
        }
    }

    /// Polls the account at its interval until told to stop.
    async fn poll_loop(mut self) {
        let mut schedule = Schedule::new(self.interval, POLL_BACKOFF);
        let keys = mailbox_keys(&self.account);
        loop {
            let reports = {
                let mut stop = self.stop.clone();
                let ready = async {
                    let guards = self.locks.lock(&keys).await;
                    let permit = self.permits.clone().acquire_owned().await;
                    (guards, permit)
                };
                let _held = tokio::select! {
                    held = ready => held,
                    () = stopped(&mut stop) => return,
                };
                pipeline::poll(&self.account, &self.state_dir).await
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

    fn log_retry(&self, outcome: Outcome, failures: u32, delay: Duration) {
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
                self.account.host,
                self.account.username,
                human_duration(delay)
            ),
        }
    }

    /// Keeps an IDLE connection on `folder` until told to stop: polls the
    /// folder, waits for mail, polls again; reconnects with backoff. A
    /// server without IDLE gets this folder polled at the interval instead.
    async fn idle_loop(mut self, folder: String) {
        let mut schedule = Schedule::new(self.interval, IDLE_BACKOFF);
        let keys = {
            let mut one = (*self.account).clone();
            one.folders = vec![folder.clone()];
            mailbox_keys(&one)
        };
        // The folder is ours for as long as this task runs.
        let guards = {
            let mut stop = self.stop.clone();
            tokio::select! {
                guards = self.locks.lock(&keys) => guards,
                () = stopped(&mut stop) => return,
            }
        };
        loop {
            let failure = match self.idle_session(&folder, &mut schedule).await {
                SessionEnd::Stopped => return,
                SessionEnd::NoIdle => {
                    warn!(
                        "{}: {} does not support IDLE; polling {folder} every {} instead",
                        self.account.name,
                        self.account.host,
                        human_duration(self.interval)
                    );
                    let mut account = (*self.account).clone();
                    account.folders = vec![folder];
                    account.idle = false;
                    self.account = Arc::new(account);
                    drop(guards);
                    return self.poll_loop().await;
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

    async fn idle_session(&mut self, folder: &str, schedule: &mut Schedule) -> SessionEnd {
        let account = self.account.clone();
        let mut permit = {
            let mut stop = self.stop.clone();
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => Some(permit),
                () = stopped(&mut stop) => return SessionEnd::Stopped,
            }
        };
        let secret = match account.password.resolve(&account.name).await {
            Ok(secret) => secret,
            Err(err) => return SessionEnd::Failed(err),
        };
        let mut session = match Imap::connect(&account, secret.as_ref()).await {
            Ok(session) => session,
            Err(err) => return SessionEnd::Failed(err),
        };
        drop(secret);
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
                        let mut stop = self.stop.clone();
                        tokio::select! {
                            permit = self.permits.clone().acquire_owned() => permit,
                            () = stopped(&mut stop) => break,
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
            let (mut stop, mut wake) = (self.stop.clone(), self.wake.clone());
            let interrupt = async {
                tokio::select! {
                    () = stopped(&mut stop) => {},
                    () = woken(&mut wake) => {},
                }
            };
            match session.idle(account.idle_timeout, interrupt).await {
                Err(err) => return SessionEnd::Failed(err),
                Ok(Woken::Interrupted) if self.is_stopped() => break,
                // A renewal polls too: a cheap check that nothing was missed.
                Ok(Woken::NewMail | Woken::Interrupted | Woken::Timeout) => poll = true,
            }
            // The wake-up of this task was consumed by `interrupt`; keep
            // this task's own receiver in step.
            self.wake.borrow_and_update();
        }
        if let Err(err) = session.finish().await {
            tracing::debug!("{}/{folder}: LOGOUT: {err}", account.name);
        }
        SessionEnd::Stopped
    }
}

enum SessionEnd {
    Stopped,
    NoIdle,
    Failed(Error),
}

/// The tasks of one configuration.
struct Generation {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Generation {
    fn start(config: &Config, locks: &Arc<MailboxLocks>, wake: &watch::Sender<u64>) -> Generation {
        let (stop, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(config.general.max_connections));
        let state_dir = Arc::new(config.general.state_dir.clone());
        let mut tasks = JoinSet::new();
        let mut idle_connections = 0;
        for account in &config.accounts {
            let worker = Worker {
                account: Arc::new(account.clone()),
                state_dir: state_dir.clone(),
                permits: permits.clone(),
                locks: locks.clone(),
                stop: stop_rx.clone(),
                wake: wake.subscribe(),
                interval: account.interval.unwrap_or(config.general.poll_interval),
            };
            if account.idle && account.protocol == Protocol::Imap {
                for folder in &account.folders {
                    idle_connections += 1;
                    tasks.spawn(worker.clone().idle_loop(folder.clone()));
                }
            } else {
                tasks.spawn(worker.poll_loop());
            }
        }
        info!(
            "daemon: {} account(s), {idle_connections} IDLE connection(s), up to {} polls at once",
            config.accounts.len(),
            config.general.max_connections
        );
        Generation { stop, tasks }
    }

    /// Tells every task to stop after the poll in progress.
    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Runs until SIGTERM or SIGINT. `reload` reads the configuration again
/// (SIGHUP); SIGUSR1 polls every account at once.
pub async fn run_daemon(
    config: Config,
    reload: impl Fn() -> Result<Config, Error>,
) -> Result<(), Error> {
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|err| {
            Error::new(
                Kind::Local,
                format!("cannot install a signal handler: {err}"),
            )
        })
    };
    let mut term = listen(SignalKind::terminate())?;
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut hangup = listen(SignalKind::hangup())?;
    let mut user1 = listen(SignalKind::user_defined1())?;

    let locks = Arc::new(MailboxLocks::default());
    let (wake, _) = watch::channel(0u64);
    let mut current = Generation::start(&config, &locks, &wake);
    let mut config = config;
    let mut retiring: Vec<Generation> = Vec::new();
    notify("READY=1\nSTATUS=polling");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                info!("SIGHUP: reloading {}", config.path.display());
                match reload().and_then(|new| same_state_dir(&config, new)) {
                    Ok(new) => {
                        current.stop();
                        retiring.push(std::mem::replace(
                            &mut current,
                            Generation::start(&new, &locks, &wake),
                        ));
                        config = new;
                        info!("configuration reloaded");
                    }
                    Err(err) => error!(
                        "the new configuration is not valid, keeping the old one: {err}"
                    ),
                }
                // Forget the generations whose tasks all ended.
                for old in &mut retiring {
                    while old.tasks.try_join_next().is_some() {}
                }
                retiring.retain(|old| !old.tasks.is_empty());
                notify("READY=1");
            }
            _ = user1.recv() => {
                info!("SIGUSR1: polling every account now");
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
    notify("STOPPING=1\nSTATUS=stopping");
    info!("stopping: finishing the messages in progress");
    pipeline::stop_retrieving();
    current.stop();
    retiring.push(current);
    let all_done = async {
        for old in &mut retiring {
            while old.tasks.join_next().await.is_some() {}
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_done)
        .await
        .is_err()
    {
        warn!(
            "stopping: polls still busy after {} s are abandoned; nothing incomplete was \
             delivered and nothing undelivered deleted",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    info!("stopped");
    Ok(())
}

/// The lock is on the state directory the daemon started with: a reload
/// may not move it.
fn same_state_dir(old: &Config, new: Config) -> Result<Config, Error> {
    if new.general.state_dir != old.general.state_dir {
        return Err(Error::new(
            Kind::Config,
            format!(
                "{}: state_dir changed from {} to {}, which needs a restart",
                new.path.display(),
                old.general.state_dir.display(),
                new.general.state_dir.display()
            ),
        ));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<Duration> = (1..=8).map(|n| POLL_BACKOFF.delay(n, 1.0)).collect();
        assert_eq!(
            delays,
            [
                Duration::from_secs(30),
                MIN,
                2 * MIN,
                4 * MIN,
                8 * MIN,
                16 * MIN,
                30 * MIN,
                30 * MIN
            ]
        );
        // Absurd failure counts neither overflow nor exceed the cap.
        assert_eq!(POLL_BACKOFF.delay(u32::MAX, 1.0), 30 * MIN);
        assert_eq!(AUTH_BACKOFF.delay(1, 1.0), 15 * MIN);
        assert_eq!(AUTH_BACKOFF.delay(100, 1.0), 6 * 60 * MIN);
    }

    #[test]
    fn jitter_keeps_between_half_and_all_of_the_delay() {
        assert_eq!(POLL_BACKOFF.delay(3, 0.0), MIN);
        assert_eq!(POLL_BACKOFF.delay(3, 0.5), Duration::from_secs(90));
        // Out-of-range draws are clamped.
        assert_eq!(POLL_BACKOFF.delay(3, 7.0), 2 * MIN);
        assert_eq!(POLL_BACKOFF.delay(3, -1.0), MIN);
        for _ in 0..100 {
            let unit = jitter();
            assert!((0.0..=1.0).contains(&unit), "{unit}");
        }
    }

    #[test]
    fn schedule_backs_off_on_failure_and_resets_on_success() {
        let mut schedule = Schedule::new(5 * MIN, POLL_BACKOFF);
        assert_eq!(schedule.after(Outcome::Success, 0.3), 5 * MIN);
        assert_eq!(
            schedule.after(Outcome::Failure, 1.0),
            Duration::from_secs(30)
        );
        assert_eq!(schedule.after(Outcome::Failure, 1.0), MIN);
        assert_eq!(schedule.after(Outcome::Failure, 1.0), 2 * MIN);
        assert_eq!(schedule.failures(), 3);
        assert_eq!(schedule.after(Outcome::Success, 1.0), 5 * MIN);
        assert_eq!(schedule.failures(), 0);
        assert_eq!(
            schedule.after(Outcome::Failure, 1.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_rejected_login_waits_much_longer() {
        let mut schedule = Schedule::new(MIN, POLL_BACKOFF);
        let first = schedule.after(Outcome::AuthFailure, 0.0);
        assert!(first >= 7 * MIN, "{first:?}");
        let second = schedule.after(Outcome::AuthFailure, 0.0);
        assert_eq!(second, 2 * first);
    }

    #[test]
    fn outcome_is_the_worst_report() {
        let ok = Report::default();
        let failed = |kind| Report {
            error: Some(Error::new(kind, "x")),
            ..Report::default()
        };
        assert_eq!(Outcome::of(&[]), Outcome::Success);
        assert_eq!(Outcome::of(&[Report::default()]), Outcome::Success);
        assert_eq!(
            Outcome::of(&[ok, failed(Kind::Connection)]),
            Outcome::Failure
        );
        assert_eq!(
            Outcome::of(&[failed(Kind::Connection), failed(Kind::Auth)]),
            Outcome::AuthFailure
        );
    }

    #[test]
    fn durations_for_humans() {
        assert_eq!(human_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(human_duration(15 * MIN), "15 min");
        assert_eq!(human_duration(6 * 60 * MIN), "6.0 h");
    }

    #[tokio::test]
    async fn mailbox_locks_exclude_and_release() {
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
