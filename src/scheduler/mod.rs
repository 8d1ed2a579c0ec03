//! Polling many accounts: concurrently in one-shot mode ([`poll_all`]), and
//! for as long as the process runs in daemon mode ([`run_daemon`]): one
//! task per polled account and one per IDLE folder, retries with backoff,
//! signals, and systemd notifications.
//!
//! The decisions (how long to wait after a poll, see `backoff::Schedule`) are
//! pure functions, unit-tested there; the rest is a thin layer of tokio
//! tasks around `pipeline`.

mod backoff;
mod shutdown;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::{Config, Protocol};
use crate::error::{Error, Kind};
use crate::notify::notify;
use crate::pipeline::{self, Report};

pub use backoff::human_duration;
use shutdown::Shutdown;
use worker::*;

/// After SIGTERM, how long polls in progress get to finish their current
/// message and commit before they are abandoned (the process must be gone
/// within 10 s, systemd's and most supervisors' patience).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Logs what a poll did: the summary line, and for a login failure a
/// prominent explanation.
pub(super) fn log_report(report: &Report) {
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
                shutdown: Shutdown::new(stop_rx.clone(), wake.subscribe()),
                interval: account.interval.unwrap_or(config.general.poll_interval),
            };
            if account.idle && account.protocol == Protocol::Imap {
                for folder in &account.folders {
                    idle_connections += 1;
                    tasks.spawn(worker.clone().idle_loop(folder.clone()));
                }
            } else {
                tasks.spawn(worker.poll_loop(account.folders.clone()));
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
