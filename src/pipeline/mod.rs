//! One poll of one account: list → diff against the state → retrieve →
//! deliver → commit → delete.
//!
//! This is the only place that decides when a message counts as delivered
//! and when it may be deleted. The rule, in order, for each batch:
//!
//! 1. every message of the batch is complete in the sink (staged);
//! 2. the sink makes the batch's content durable (one concurrent group of
//!    fsyncs);
//! 3. the state journal records the batch as delivered, with each sink
//!    intent, and is fsynced once;
//! 4. the sink publishes the batch (Maildir: rename into `new/`, one
//!    directory fsync), and the journal notes that (no fsync needed);
//! 5. only after that, and after every batch is done, the server is told to
//!    delete.
//!
//! A crash between 3 and 4 leaves intents that `commit::recover` finishes on the
//! next run; a crash before 3 leaves only invisible files in `tmp/` and the
//! messages still on the server. Batches commit on a blocking thread while
//! the next batch downloads.

mod commit;
mod plan;
mod reject;
mod report;
mod retrieve;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Instant, SystemTime};

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::{Account, FetchMode, Protocol, Secret, TlsMode};
use crate::error::{Error, Kind};
use crate::sink::Sink;
use crate::source::{Listed, Source};
use crate::state::{Entry, IDENTITY, MailboxState, last_clean, mailbox_key};
use crate::status;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::received::{Trace, local_hostname};
use crate::sink::any::{AnySink, with_sink};
use crate::source::imap::{After, Imap};
use crate::source::pop3::Pop3;
use crate::wire::Server;
use commit::*;
use plan::*;
use reject::*;
pub use report::Report;
use report::*;
use retrieve::*;

/// Set when the process is shutting down: retrievals stop requesting
/// messages, and what is complete is committed (see [`stop_retrieving`]).
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Makes every poll in progress stop before its next message: messages
/// already complete are committed as usual, the session is then dropped
/// without deleting anything, and the rest waits for the next run.
pub fn stop_retrieving() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Whether [`stop_retrieving`] was called.
pub fn is_stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Polls one account once: one report per mailbox (the POP3 account, or
/// each IMAP folder). Never panics on bad input; every failure ends up in
/// a report. Everything it logs is in a `poll` span naming the account
/// (and a `folder` span for each IMAP folder), so that each line says which
/// mailbox it is about while several polls run at once.
pub async fn poll(account: &Account, state_dir: &Path) -> Vec<Report> {
    poll_folders(account, &account.folders, state_dir).await
}

/// Polls some of the account's mailboxes: `folders`, a part of its IMAP
/// folders (POP3 has only its one mailbox, whatever `folders` says).
pub async fn poll_folders(account: &Account, folders: &[String], state_dir: &Path) -> Vec<Report> {
    let reports = async {
        let opened = match AnySink::resolve_secret(account).await {
            Ok(secret) => {
                AnySink::open(account, state_dir, secret.clone()).map(|sink| (sink, secret))
            }
            Err(failure) => Err(failure),
        };
        match opened {
            Ok((sink, secret)) => with_sink!(sink, sink => {
                poll_into(account, folders, secret.as_ref(), state_dir, sink).await
            }),
            Err((destination, err)) => vec![Report::failed(account, &destination, err)],
        }
    }
    .instrument(tracing::info_span!("poll", account = %account.name))
    .await;
    for report in &reports {
        status::record(state_dir, account, folders, report);
    }
    reports
}

/// The account's server, with its password resolved: once per poll (or
/// per IDLE session), since a password_command may be slow or ask a human.
pub async fn source_server(account: &Account) -> Result<Server, Error> {
    Ok(Server {
        label: format!("account {}", account.name),
        endpoint: account.server.clone(),
        secret: account.server.password.resolve(&account.name).await?,
    })
}

/// What the IMAP source does with a delivered message.
pub fn after_delivery(account: &Account) -> After {
    After::configured(account.keep, account.move_to.as_deref())
}

async fn poll_into<K: Sink>(
    account: &Account,
    folders: &[String],
    delivery_secret: Option<&Secret>,
    state_dir: &Path,
    sink: K,
) -> Vec<Report> {
    match account.protocol {
        Protocol::Pop3 => vec![poll_pop3(account, delivery_secret, state_dir, sink).await],
        Protocol::Imap => poll_imap(account, folders, delivery_secret, state_dir, sink).await,
    }
}

async fn poll_pop3<K: Sink>(
    account: &Account,
    delivery_secret: Option<&Secret>,
    state_dir: &Path,
    mut sink: K,
) -> Report {
    let started = Instant::now();
    let mut report = Report::new(account, None, &sink.describe());
    let result = async {
        let state = StateOpening::start(state_dir, mailbox_key(account, "INBOX"));
        let mut source = Pop3::connect(&source_server(account).await?).await?;
        // On error the session is dropped without QUIT: POP3 then undoes
        // any DELE, and the next poll deletes what was delivered.
        let delivery = Delivery {
            account,
            secret: delivery_secret,
        };
        poll_mailbox(&mut source, &mut sink, delivery, state, None, &mut report).await?;
        source.finish().await
    }
    .await;
    sink.close().await;
    report.error = result.err();
    report.elapsed = started.elapsed();
    report
}

async fn poll_imap<K: Sink>(
    account: &Account,
    folders: &[String],
    delivery_secret: Option<&Secret>,
    state_dir: &Path,
    mut sink: K,
) -> Vec<Report> {
    let started = Instant::now();
    let mut reports: Vec<Report> = folders
        .iter()
        .map(|folder| Report::new(account, Some(folder), &sink.describe()))
        .collect();
    let connected = match source_server(account).await {
        Ok(server) => Imap::connect(&server, after_delivery(account)).await,
        Err(err) => Err(err),
    };
    let mut source = match connected {
        Ok(source) => source,
        Err(err) => return fail_all(reports, err),
    };
    let delivery = Delivery {
        account,
        secret: delivery_secret,
    };
    // Connecting and logging in count towards the first folder.
    let mut folder_started = started;
    let mut broken = None;
    for (index, folder) in folders.iter().enumerate() {
        let report = &mut reports[index];
        let span = tracing::info_span!("folder", folder = %folder);
        let opened = open_folder(&mut source, account, folder, state_dir)
            .instrument(span.clone())
            .await;
        let (state, clean) = match opened {
            Ok(Some(opened)) => opened,
            Ok(None) => {
                report.unchanged = true;
                report.elapsed = folder_started.elapsed();
                folder_started = Instant::now();
                continue;
            }
            Err(err) => {
                // A folder the server refuses to open does not stop the others.
                let refused = err.kind == Kind::Server;
                report.error = Some(err);
                if refused {
                    continue;
                }
                broken = Some(index);
                break;
            }
        };
        let result = poll_mailbox(&mut source, &mut sink, delivery, state, clean, report)
            .instrument(span)
            .await;
        report.elapsed = folder_started.elapsed();
        folder_started = Instant::now();
        if let Err(err) = result {
            // Mid-folder, the session's state is unknown: stop using it.
            report.error = Some(err);
            broken = Some(index);
            break;
        }
    }
    sink.close().await;
    match broken {
        Some(index) => {
            for report in &mut reports[index + 1..] {
                report.error = Some(Error::new(
                    Kind::Connection,
                    "not polled: the session failed on an earlier folder",
                ));
            }
        }
        None => {
            if let Err(err) = source.finish().await {
                tracing::debug!("{}: LOGOUT: {err}", account.name);
            }
        }
    }
    reports
}

/// Polls one folder of an open IMAP session (daemon mode, IDLE): opens the
/// folder, delivers what is new and leaves it open. A report with an error
/// means the session should not be used any more, except when the server
/// refused to open the folder ([`Kind::Server`] before anything else).
pub async fn poll_imap_folder(
    source: &mut Imap,
    account: &Account,
    folder: &str,
    state_dir: &Path,
) -> Report {
    let span = tracing::info_span!("poll", account = %account.name, folder = %folder);
    let report = poll_open_folder(source, account, folder, state_dir)
        .instrument(span)
        .await;
    status::record(state_dir, account, &[], &report);
    report
}

async fn poll_open_folder(
    source: &mut Imap,
    account: &Account,
    folder: &str,
    state_dir: &Path,
) -> Report {
    let started = Instant::now();
    let mut report = Report::new(account, Some(folder), "");
    let opened = match AnySink::resolve_secret(account).await {
        Ok(secret) => AnySink::open(account, state_dir, secret.clone()).map(|sink| (sink, secret)),
        Err(failure) => Err(failure),
    };
    let (sink, secret) = match opened {
        Ok(opened) => opened,
        Err((destination, err)) => {
            report.destination = destination;
            report.error = Some(err);
            return report;
        }
    };
    let delivery = Delivery {
        account,
        secret: secret.as_ref(),
    };
    let result = with_sink!(sink, mut sink => {
        report.destination = sink.describe();
        let result = async {
            let state = StateOpening::start(state_dir, mailbox_key(account, folder));
            source
                .select(folder, opens_read_only(account))
                .await?;
            poll_mailbox(source, &mut sink, delivery, state, None, &mut report).await
        }
        .await;
        sink.close().await;
        result
    });
    report.error = result.err();
    report.elapsed = started.elapsed();
    report
}

/// The account a mailbox is polled for, with the password of the server
/// it delivers to (resolved once per poll), which bounces use too.
#[derive(Clone, Copy)]
struct Delivery<'a> {
    account: &'a Account,
    secret: Option<&'a Secret>,
}

fn fail_all(mut reports: Vec<Report>, err: Error) -> Vec<Report> {
    for report in &mut reports {
        report.error = Some(Error::new(err.kind, err.message.clone()));
    }
    reports
}

/// A mailbox's state being read on a blocking thread. It is started
/// before the server's slow steps (login, SELECT, the listing), which the
/// read then overlaps: a big journal takes a few milliseconds to parse.
struct StateOpening(JoinHandle<Result<MailboxState, Error>>);

impl StateOpening {
    fn start(state_dir: &Path, key: String) -> StateOpening {
        let state_dir = state_dir.to_owned();
        StateOpening(tokio::task::spawn_blocking(move || {
            MailboxState::open(&state_dir, &key)
        }))
    }

    async fn finish(self) -> Result<MailboxState, Error> {
        self.0
            .await
            .map_err(|err| Error::new(Kind::Local, format!("reading the state file: {err}")))?
    }
}

/// Opens a folder of a one-shot poll, with its state, unless the no-op
/// check finds it unchanged (`None`). The state is read only once the
/// folder needs it: an unchanged folder costs no journal replay.
async fn open_folder(
    source: &mut Imap,
    account: &Account,
    folder: &str,
    state_dir: &Path,
) -> Result<Option<(StateOpening, Option<String>)>, Error> {
    let key = mailbox_key(account, folder);
    let clean = match check_unchanged(source, account, folder, state_dir, &key).await? {
        Unchanged::Yes => return Ok(None),
        Unchanged::No(clean) => clean,
    };
    let state = StateOpening::start(state_dir, key);
    source.select(folder, opens_read_only(account)).await?;
    Ok(Some((state, clean)))
}

/// Nothing is changed in a folder in keep mode without mark_seen: it is
/// opened with EXAMINE.
fn opens_read_only(account: &Account) -> bool {
    account.keep && !account.mark_seen
}

/// Whether an IMAP folder can be skipped, before it is opened.
enum Unchanged {
    /// The server is where the last poll left nothing to do, and nothing
    /// was journaled since.
    Yes,
    /// A full poll is needed; if it leaves nothing to do, it records this
    /// `~` line (taken before the poll's listing: see docs/design.md).
    No(Option<String>),
}

/// The no-op check: one `STATUS` of the folder against the journal's last
/// record, read from the file's tail (see "The no-op poll" in
/// docs/design.md for why equal lines prove there is nothing to do).
async fn check_unchanged(
    source: &mut Imap,
    account: &Account,
    folder: &str,
    state_dir: &Path,
    key: &str,
) -> Result<Unchanged, Error> {
    let status = source
        .status(folder, account.fetch == FetchMode::Unseen)
        .await?;
    let Some(clean) = clean_marker(&status, account) else {
        return Ok(Unchanged::No(None));
    };
    // A few hundred bytes: read here rather than on a blocking thread.
    let recorded = last_clean(state_dir, key).map_err(|err| {
        Error::new(
            Kind::Local,
            format!("reading the state file of {folder:?}: {err}"),
        )
    })?;
    if recorded.as_deref() == Some(clean.as_str()) {
        tracing::debug!("unchanged since the last poll ({clean}): not opened");
        return Ok(Unchanged::Yes);
    }
    Ok(Unchanged::No(Some(clean)))
}

/// The part of a poll common to every protocol, on one mailbox of an open
/// session. `clean` is the `~` line to journal if the poll leaves nothing
/// to do (see [`check_unchanged`]); `None` records none.
async fn poll_mailbox<S: Source, K: Sink>(
    source: &mut S,
    sink: &mut K,
    delivery: Delivery<'_>,
    state: StateOpening,
    clean: Option<String>,
    report: &mut Report,
) -> Result<(), Error> {
    let account = delivery.account;
    let state_error = |err: std::io::Error| {
        Error::new(Kind::Local, format!("cannot update the state file: {err}"))
    };
    let listing = source.list(account.fetch == FetchMode::Unseen).await;
    let mut state = state.finish().await?;
    recover(&mut state)?;
    let listing = listing?;

    let mut listed = listing.messages;
    if let Some(identity) = &listing.identity {
        match state.meta(IDENTITY) {
            Some(known) if known == identity => {}
            None if state.is_empty() => state
                .reset(IDENTITY, identity, Vec::new())
                .map_err(state_error)?,
            known => {
                let carried = reidentify(source, &mut listed, &state).await?;
                tracing::warn!(
                    "{}: the server renumbered the folder (UIDVALIDITY {} → {identity}); {} of {} messages recognised \
                     as delivered before, the rest will be fetched",
                    report.mailbox,
                    known.unwrap_or("unknown"),
                    carried.len(),
                    listed.len()
                );
                state
                    .reset(IDENTITY, identity, carried)
                    .map_err(state_error)?;
            }
        }
    }
    let has_uids = listed.iter().all(|message| message.uid.is_some());
    if !has_uids && account.keep {
        return Err(Error::new(
            Kind::Protocol,
            format!(
                "{}: the server does not support UIDL, so mailfetch cannot tell old messages from new ones; \
                 keep = true needs UIDL (with keep = false, every message is fetched and deleted)",
                account.server.host
            ),
        ));
    }
    if has_uids {
        let present = listed.iter().filter_map(|m| m.uid.as_deref());
        state.retain(present).map_err(state_error)?;
    }
    let Plan { mut old, mut new } = plan(listed, &state, account.fetch, &report.mailbox);
    report.new = new.len();
    source.describe(&mut new).await?;
    let limited = limit(&mut new, account.max_size, account.max_per_poll);
    for (number, size) in &limited.too_big {
        tracing::info!(
            "{}: skipping message {number} ({} > max_size {}); it stays on the server",
            report.mailbox,
            human_bytes(*size),
            human_bytes(account.max_size.unwrap_or_default())
        );
    }
    report.skipped = limited.too_big.len();
    report.deferred = limited.deferred;
    let (retries, finished) = partial_retries(&mut new, &state, &account.to);
    if !finished.is_empty() {
        // Every recipient has them already (the others were taken out of
        // `to` since): delivered.
        let entries: Vec<Entry> = finished
            .iter()
            .filter_map(|message| Some(Entry::new(message.uid.clone()?)))
            .collect();
        state.record_delivered(&entries).map_err(state_error)?;
        old.extend(finished.iter().map(|message| message.number));
    }

    let trace = Trace {
        server: &account.server.host,
        local_host: &local_hostname(),
        protocol: match account.protocol {
            Protocol::Pop3 => "POP3",
            Protocol::Imap => "IMAP",
        },
        tls: account.server.tls != TlsMode::None,
        account: &account.name,
        username: account.server.username.as_deref().unwrap_or_default(),
    };
    let header = account
        .received_header
        .then(|| trace.header(SystemTime::now()));
    let mut commits = CommitQueue::new(sink.committer(), state);
    let mut rejections = Vec::new();
    let retrieval = retrieve(
        source,
        sink,
        &new,
        &retries,
        header.as_deref(),
        &mut commits,
        &mut rejections,
        report,
    )
    .await;
    // Whatever happened, what was fully received is made durable.
    let committed = commits.finish().await;
    report.delivered = committed.messages.len();
    report.delivered_bytes = committed.messages.iter().map(|(_, size)| size).sum();
    let error = match (retrieval, committed.error) {
        (Ok(()), None) => None,
        (Err(err), None) | (Ok(()), Some(err)) => Some(err),
        (Err(err), Some(commit_err)) => {
            tracing::error!("{}: {commit_err}", report.mailbox);
            Some(err)
        }
    };
    // Refused messages are settled even when the session broke: once
    // recorded, the next poll deletes them like delivered ones.
    let mut state = committed.state;
    let settled = match &mut state {
        Some(state) => {
            let settled = settle_rejections(delivery, rejections, state, report).await?;
            report.known = Some(state.len());
            report.pending = Some(state.pending_intents().len());
            settled
        }
        None => Vec::new(),
    };
    if let Some(err) = error {
        // The session may be unusable; what was committed is deleted (or
        // marked) next time, as a message known to be delivered.
        return Err(err);
    }
    let delivered: Vec<u32> = committed
        .messages
        .iter()
        .map(|(number, _)| *number)
        .collect();
    let mut all_removed = true;
    if account.keep {
        if account.mark_seen {
            source.mark_seen(&delivered).await?;
        }
    } else {
        // Messages delivered by an earlier poll that are still here (a crash
        // or a dropped connection came before their deletion) go too.
        let doomed: Vec<u32> = old.into_iter().chain(delivered).chain(settled).collect();
        report.deleted = source.delete(&doomed).await?;
        all_removed = report.deleted == doomed.len();
    }
    if let (Some(clean), Some(mut state)) = (clean, state) {
        // The next poll of an unchanged server would find nothing to do:
        // every message planned is recorded (delivered, or settled after a
        // refusal), none was left by max_size or max_per_poll, fetch = "all"
        // in keep mode had nothing to fetch again, and every removal
        // happened.
        let everything_recorded = new.iter().all(|message| {
            message
                .uid
                .as_deref()
                .is_some_and(|uid| state.is_delivered(uid))
        });
        let fetches_again = account.fetch == FetchMode::All && account.keep && report.new > 0;
        if everything_recorded
            && report.skipped == 0
            && report.deferred == 0
            && !fetches_again
            && all_removed
        {
            state.record_clean(&clean).map_err(state_error)?;
        }
    }
    Ok(())
}

/// After the server renumbered a mailbox, finds the messages delivered
/// before by their digests; returns them under their new ids.
async fn reidentify<S: Source>(
    source: &mut S,
    listed: &mut [Listed],
    state: &MailboxState,
) -> Result<Vec<Entry>, Error> {
    let known: HashSet<String> = state.digests().into_iter().map(str::to_owned).collect();
    if known.is_empty() {
        return Ok(Vec::new());
    }
    source.describe(listed).await?;
    Ok(listed
        .iter()
        .filter_map(|message| {
            let digest = message
                .digest
                .as_ref()
                .filter(|digest| known.contains(*digest))?;
            Some(Entry {
                digest: Some(digest.clone()),
                ..Entry::new(message.uid.clone()?)
            })
        })
        .collect())
}
