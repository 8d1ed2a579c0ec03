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
//! A crash between 3 and 4 leaves intents that [`recover`] finishes on the
//! next run; a crash before 3 leaves only invisible files in `tmp/` and the
//! messages still on the server. Batches commit on a blocking thread while
//! the next batch downloads.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::{JoinHandle, JoinSet};

use crate::config::{
    Account, DeliverTarget, DeliveryServer, FetchMode, MtaAddress, MtaProtocol, MtaTarget,
    OnReject, Protocol, TlsMode,
};
use crate::error::{Error, Kind};
use crate::received::{Trace, local_hostname};
use crate::sink::bounce;
use crate::sink::imap_append::ImapAppendSink;
use crate::sink::intent::{Intent, Recovered};
use crate::sink::maildir::MaildirSink;
use crate::sink::mda::MdaSink;
use crate::sink::smtp::{SmtpSink, send_bounce};
use crate::sink::{Acceptance, Committer, MessageWriter, Rejection, Sink, Staged};
use crate::source::imap::Imap;
use crate::source::pop3::Pop3;
use crate::source::{Listed, Retrieved, Source};
use crate::state::{Entry, MailboxState};

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

/// A batch is committed when it holds this many messages…
const BATCH_MESSAGES: usize = 256;
/// …or this many bytes, whichever comes first. Bounds the work lost to a
/// crash and the time a delivered message waits to become visible.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;

/// What one poll of one mailbox (a POP3 account, an IMAP folder) did.
#[derive(Debug, Default)]
pub struct Report {
    /// `account`, or `account/folder` for IMAP.
    pub mailbox: String,
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
    /// Why the poll stopped early, if it did.
    pub error: Option<Error>,
}

impl Report {
    /// The report of an account that could not be polled at all.
    fn failed(account: &Account, destination: &str, error: Error) -> Report {
        Report {
            error: Some(error),
            ..Report::new(account.name.clone(), destination, account)
        }
    }

    fn new(mailbox: String, destination: &str, account: &Account) -> Report {
        Report {
            mailbox,
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
        line.push_str(&format!(
            ", {} {}, {:.1} s",
            self.deleted,
            self.removal,
            self.elapsed.as_secs_f64()
        ));
        if let Some(error) = &self.error {
            line.push_str(&format!("; stopped: {error}"));
        }
        line
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

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.0} KiB", b as f64 / 1024.0),
        b if b < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{:.2} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// The account's destination, opened (not yet connected: network sinks
/// connect at the first message).
enum AnySink {
    Maildir(MaildirSink),
    Smtp(SmtpSink),
    Mda(MdaSink),
    // Boxed: the session it holds is large, and this enum is moved around.
    Imap(Box<ImapAppendSink>),
}

/// Evaluates `$body` with `$sink` bound to the concrete sink inside an
/// [`AnySink`]: the pipeline is generic over the sink, so each arm is
/// compiled for its own type.
macro_rules! with_sink {
    ($any:expr, $sink:pat => $body:expr) => {
        match $any {
            AnySink::Maildir($sink) => $body,
            AnySink::Smtp($sink) => $body,
            AnySink::Mda($sink) => $body,
            AnySink::Imap(boxed) => {
                let $sink = *boxed;
                $body
            }
        }
    };
}

impl AnySink {
    /// Opens the account's destination; on failure, says what it was.
    async fn open(account: &Account, state_dir: &Path) -> Result<AnySink, (String, Error)> {
        let spool = || state_dir.join("spool");
        let resolve = async |server: &DeliveryServer, what: &str| {
            server
                .password
                .resolve(&account.name)
                .await
                .map_err(|err| (what.to_owned(), err))
        };
        match &account.deliver {
            DeliverTarget::Maildir(path) => match MaildirSink::open(path) {
                Ok(sink) => {
                    sink.remove_crash_leftovers(state_dir);
                    Ok(AnySink::Maildir(sink))
                }
                Err(err) => Err((format!("maildir {}", path.display()), err)),
            },
            DeliverTarget::Mta(target) => {
                let password = resolve(&target.server, "the MTA").await?;
                Ok(AnySink::Smtp(SmtpSink::new(
                    target.clone(),
                    password,
                    account.to.clone(),
                    account.envelope_from.clone(),
                    local_hostname(),
                )))
            }
            DeliverTarget::Mda(target) => Ok(AnySink::Mda(MdaSink::new(
                target.clone(),
                account.to.clone(),
                account.envelope_from.clone(),
                spool(),
            ))),
            DeliverTarget::Imap(target) => {
                let password = resolve(&target.server, "the IMAP server").await?;
                Ok(AnySink::Imap(Box::new(ImapAppendSink::new(
                    target.clone(),
                    password,
                    spool(),
                ))))
            }
        }
    }
}

/// Polls one account once: one report per mailbox (the POP3 account, or
/// each IMAP folder). Never panics on bad input; every failure ends up in
/// a report.
pub async fn poll(account: &Account, state_dir: &Path) -> Vec<Report> {
    match AnySink::open(account, state_dir).await {
        Ok(sink) => with_sink!(sink, sink => poll_into(account, state_dir, sink).await),
        Err((destination, err)) => vec![Report::failed(account, &destination, err)],
    }
}

async fn poll_into<K: Sink>(account: &Account, state_dir: &Path, sink: K) -> Vec<Report> {
    match account.protocol {
        Protocol::Pop3 => vec![poll_pop3(account, state_dir, sink).await],
        Protocol::Imap => poll_imap(account, state_dir, sink).await,
    }
}

async fn poll_pop3<K: Sink>(account: &Account, state_dir: &Path, mut sink: K) -> Report {
    let started = Instant::now();
    let mut report = Report::new(account.name.clone(), &sink.describe(), account);
    let result = async {
        let state = StateOpening::start(
            state_dir,
            format!(
                "pop3 {}@{}:{}",
                account.username, account.host, account.port
            ),
        );
        let secret = account.password.resolve(&account.name).await?;
        let mut source = Pop3::connect(account, secret.as_ref()).await?;
        // On error the session is dropped without QUIT: POP3 then undoes
        // any DELE, and the next poll deletes what was delivered.
        poll_mailbox(&mut source, &mut sink, account, state, &mut report).await?;
        source.finish().await
    }
    .await;
    sink.close().await;
    report.error = result.err();
    report.elapsed = started.elapsed();
    report
}

async fn poll_imap<K: Sink>(account: &Account, state_dir: &Path, mut sink: K) -> Vec<Report> {
    let started = Instant::now();
    let mut reports: Vec<Report> = account
        .folders
        .iter()
        .map(|folder| {
            Report::new(
                format!("{}/{folder}", account.name),
                &sink.describe(),
                account,
            )
        })
        .collect();
    let secret = match account.password.resolve(&account.name).await {
        Ok(secret) => secret,
        Err(err) => return fail_all(reports, err),
    };
    let mut source = match Imap::connect(account, secret.as_ref()).await {
        Ok(source) => source,
        Err(err) => return fail_all(reports, err),
    };
    // Connecting and logging in count towards the first folder.
    let mut folder_started = started;
    // Nothing is changed in a folder in keep mode without mark_seen.
    let read_only = account.keep && !account.mark_seen;
    let mut broken = None;
    for (index, folder) in account.folders.iter().enumerate() {
        let report = &mut reports[index];
        let state = StateOpening::start(state_dir, imap_state_key(account, folder));
        if let Err(err) = source.select(folder, read_only).await {
            // A folder the server refuses to open does not stop the others.
            let refused = err.kind == Kind::Server;
            report.error = Some(err);
            if refused {
                continue;
            }
            broken = Some(index);
            break;
        }
        let result = poll_mailbox(&mut source, &mut sink, account, state, report).await;
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
    let started = Instant::now();
    let mut report = Report::new(format!("{}/{folder}", account.name), "", account);
    let sink = match AnySink::open(account, state_dir).await {
        Ok(sink) => sink,
        Err((destination, err)) => {
            report.destination = destination;
            report.error = Some(err);
            return report;
        }
    };
    let result = with_sink!(sink, mut sink => {
        report.destination = sink.describe();
        let result = async {
            let state = StateOpening::start(state_dir, imap_state_key(account, folder));
            source
                .select(folder, account.keep && !account.mark_seen)
                .await?;
            poll_mailbox(source, &mut sink, account, state, &mut report).await
        }
        .await;
        sink.close().await;
        result
    });
    report.error = result.err();
    report.elapsed = started.elapsed();
    report
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
            .map_err(|err| Error::new(Kind::Delivery, format!("reading the state file: {err}")))?
    }
}

/// The state key of an IMAP folder.
fn imap_state_key(account: &Account, folder: &str) -> String {
    format!(
        "imap {}@{}:{}/{folder}",
        account.username, account.host, account.port
    )
}

/// The part of a poll common to every protocol, on one mailbox of an open
/// session.
async fn poll_mailbox<S: Source, K: Sink>(
    source: &mut S,
    sink: &mut K,
    account: &Account,
    state: StateOpening,
    report: &mut Report,
) -> Result<(), Error> {
    let state_error = |err: std::io::Error| {
        Error::new(
            Kind::Delivery,
            format!("cannot update the state file: {err}"),
        )
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
                account.host
            ),
        ));
    }
    if has_uids {
        let present: HashSet<&str> = listed.iter().filter_map(|m| m.uid.as_deref()).collect();
        state.retain(&present).map_err(state_error)?;
    }
    let (mut old, mut new) = sort_out(listed, &state, account.fetch, &report.mailbox);
    report.new = new.len();
    source.describe(&mut new).await?;
    if let Some(max_size) = account.max_size {
        new.retain(|message| match message.size {
            Some(size) if size > max_size => {
                tracing::info!(
                    "{}: skipping message {} ({} > max_size {}); it stays on the server",
                    report.mailbox,
                    message.number,
                    human_bytes(size),
                    human_bytes(max_size)
                );
                report.skipped += 1;
                false
            }
            _ => true,
        });
    }
    if let Some(limit) = account.max_per_poll
        && new.len() > limit
    {
        report.deferred = new.len() - limit;
        new.truncate(limit);
    }
    let (retries, finished) = partial_retries(&mut new, &state, &account.to);
    if !finished.is_empty() {
        // Every recipient has them already (the others were taken out of
        // `to` since): delivered.
        let entries: Vec<Entry> = finished
            .iter()
            .filter_map(|message| Some(Entry::new(message.uid.clone()?)))
            .collect();
        state.record_delivered(&entries).map_err(state_error)?;
        old.extend(finished);
    }

    let trace = Trace {
        server: &account.host,
        local_host: &local_hostname(),
        protocol: match account.protocol {
            Protocol::Pop3 => "POP3",
            Protocol::Imap => "IMAP",
        },
        tls: account.tls != TlsMode::None,
        account: &account.name,
        username: &account.username,
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
    let settled = match committed.state {
        Some(mut state) => settle_rejections(account, rejections, &mut state, report).await?,
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
    if account.keep {
        if account.mark_seen {
            source.mark_seen(&delivered).await?;
        }
    } else {
        // Messages delivered by an earlier poll that are still here (a crash
        // or a dropped connection came before their deletion) go too.
        let doomed: Vec<u32> = old
            .iter()
            .map(|message| message.number)
            .chain(delivered)
            .chain(settled)
            .collect();
        report.deleted = source.delete(&doomed).await?;
    }
    Ok(())
}

/// Splits a listing into the messages delivered by an earlier poll (`old`)
/// and those to retrieve now (`new`, in listing order).
///
/// A unique id that the server gives to more than one message identifies
/// none of them (a server that reuses UIDLs, a broken migration): such
/// messages are never taken for delivered and never recorded under that
/// id, so they are retrieved, and deleted only once this poll delivered
/// them. In keep mode that means retrieving them again at every poll: a
/// duplicate is the price of never skipping mail that was not delivered.
fn sort_out(
    listed: Vec<Listed>,
    state: &MailboxState,
    fetch: FetchMode,
    mailbox: &str,
) -> (Vec<Listed>, Vec<Listed>) {
    let mut uses: HashMap<&str, u32> = HashMap::new();
    for uid in listed.iter().filter_map(|message| message.uid.as_deref()) {
        *uses.entry(uid).or_default() += 1;
    }
    let shared: HashSet<String> = uses
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|(uid, _)| uid.to_owned())
        .collect();
    if !shared.is_empty() {
        let mut examples: Vec<&str> = shared.iter().map(String::as_str).take(3).collect();
        examples.sort_unstable();
        tracing::warn!(
            "{mailbox}: the server gives the same unique id to several messages ({}{}); \
             they cannot be told apart, so they are fetched at every poll until they are deleted",
            examples.join(", "),
            if shared.len() > examples.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    let (old, mut new): (Vec<Listed>, Vec<Listed>) = listed
        .into_iter()
        .map(|mut message| {
            if message.uid.as_ref().is_some_and(|uid| shared.contains(uid)) {
                message.uid = None;
            }
            message
        })
        .partition(|message| {
            fetch != FetchMode::All
                && message
                    .uid
                    .as_deref()
                    .is_some_and(|uid| state.is_delivered(uid))
        });
    if fetch == FetchMode::Unseen {
        new.retain(|message| !message.seen);
    }
    (old, new)
}

/// A message that reached some of its recipients at an earlier poll (an
/// LMTP server or an MDA took it for some only), to be sent to the others.
#[derive(Debug)]
struct Retry {
    /// The recipients that have it.
    reached: Vec<String>,
    /// The recipients of today's `to` that do not.
    remaining: Vec<String>,
}

/// Finds the messages of `new` that reached some recipients before: those
/// that still lack some get a [`Retry`] (by number); those that all of
/// `recipients` have are taken out of `new` and returned.
fn partial_retries(
    new: &mut Vec<Listed>,
    state: &MailboxState,
    recipients: &[String],
) -> (HashMap<u32, Retry>, Vec<Listed>) {
    let mut retries = HashMap::new();
    let mut finished = Vec::new();
    new.retain(|message| {
        let reached = message
            .uid
            .as_deref()
            .map_or(&[][..], |uid| state.delivered_to(uid));
        if reached.is_empty() {
            return true;
        }
        let remaining: Vec<String> = recipients
            .iter()
            .filter(|recipient| !reached.contains(recipient))
            .cloned()
            .collect();
        if remaining.is_empty() {
            finished.push(message.clone());
            return false;
        }
        let reached = reached.to_vec();
        retries.insert(message.number, Retry { reached, remaining });
        true
    });
    (retries, finished)
}

/// Applies `on_reject` to the messages the destination refused for good.
/// Returns the numbers of those that may now leave the server: bounced or
/// dropped, and durably recorded as done so that no later poll tries them
/// again. Kept ones are retried at every poll.
async fn settle_rejections(
    account: &Account,
    rejections: Vec<(Listed, Rejection)>,
    state: &mut MailboxState,
    report: &mut Report,
) -> Result<Vec<u32>, Error> {
    let mut settled = Vec::new();
    for (message, rejection) in rejections {
        match account.on_reject {
            OnReject::Keep => {
                tracing::warn!(
                    "{}: message {} left on the server (on_reject = \"keep\"); it is tried again at every poll",
                    report.mailbox,
                    message.number
                );
                continue;
            }
            OnReject::Delete => {
                tracing::warn!(
                    "{}: message {} dropped (on_reject = \"delete\"): {}",
                    report.mailbox,
                    message.number,
                    rejection.reason
                );
                report.discarded += 1;
            }
            OnReject::Bounce => {
                let sender = match rejection.bounce_recipient() {
                    Ok(sender) => sender,
                    Err(why) => {
                        tracing::warn!(
                            "{}: message {} is not bounced: {why}; it is left on the server",
                            report.mailbox,
                            message.number
                        );
                        continue;
                    }
                };
                if let Err(err) = bounce(account, sender, &rejection).await {
                    tracing::error!(
                        "{}: cannot bounce message {} to <{sender}>, it is left on the server: {err}",
                        report.mailbox,
                        message.number
                    );
                    continue;
                }
                tracing::info!(
                    "{}: message {} bounced to <{sender}>",
                    report.mailbox,
                    message.number
                );
                report.bounced += 1;
            }
        }
        settled.push(message);
    }
    let entries: Vec<Entry> = settled
        .iter()
        .filter_map(|message| {
            Some(Entry {
                digest: message.digest.clone(),
                ..Entry::new(message.uid.clone()?)
            })
        })
        .collect();
    if let Err(err) = state.record_delivered(&entries) {
        // Not deleting them is safe; bounced ones may be bounced again.
        tracing::error!("{}: cannot write the state file: {err}", report.mailbox);
        return Ok(Vec::new());
    }
    Ok(settled.iter().map(|message| message.number).collect())
}

/// Sends a delivery status notification for a refused message: through
/// the account's SMTP server when it delivers to one, else through the MTA
/// of this machine.
async fn bounce(account: &Account, sender: &str, rejection: &Rejection) -> Result<(), Error> {
    let (relay, password) = match &account.deliver {
        DeliverTarget::Mta(target) if target.protocol == MtaProtocol::Smtp => (
            target.clone(),
            target.server.password.resolve(&account.name).await?,
        ),
        _ => (local_mta(account.timeout), None),
    };
    let host = local_hostname();
    let message = bounce::compose(rejection, &account.to, &host, SystemTime::now());
    send_bounce(&relay, password.as_ref(), &host, sender, &message).await
}

/// `smtp://localhost`, where bounces go when mail is not delivered by SMTP.
fn local_mta(timeout: Duration) -> MtaTarget {
    MtaTarget {
        protocol: MtaProtocol::Smtp,
        address: MtaAddress::Tcp {
            host: "localhost".to_owned(),
            port: 25,
        },
        server: DeliveryServer::unencrypted(timeout),
    }
}

/// The state key under which a mailbox's identity (UIDVALIDITY) is kept.
const IDENTITY: &str = "identity";

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

/// Finishes deliveries a crash interrupted between journaling and
/// publishing, by what each intent says (whatever the sink is today);
/// forgets the ones that cannot be found or finished, so they are fetched
/// again rather than lost.
fn recover(state: &mut MailboxState) -> Result<(), Error> {
    let io = |err: std::io::Error| {
        Error::new(
            Kind::Delivery,
            format!("recovering an interrupted delivery: {err}"),
        )
    };
    for (uid, word) in state.pending_intents() {
        let recovered = match Intent::decode(&word) {
            Some(intent) => intent.recover().map_err(io)?,
            None => {
                tracing::warn!(
                    "message {uid}: the state file names an interrupted delivery this version cannot finish ({word})"
                );
                Recovered::Missing
            }
        };
        match recovered {
            Recovered::Delivered => {
                tracing::info!("finished a delivery interrupted by a crash (message {uid})");
                state
                    .record_published(std::slice::from_ref(&word))
                    .map_err(io)?;
            }
            Recovered::Missing => {
                tracing::warn!(
                    "message {uid} was journaled but never appeared in the sink; it will be fetched again"
                );
                state.forget(&uid, &word).map_err(io)?;
            }
        }
    }
    Ok(())
}

/// Streams `messages` into the sink, handing full batches to `commits`.
/// Whatever is complete when it stops, by error or not, is committed.
#[allow(clippy::too_many_arguments)]
async fn retrieve<S: Source, K: Sink>(
    source: &mut S,
    sink: &mut K,
    messages: &[Listed],
    retries: &HashMap<u32, Retry>,
    header: Option<&str>,
    commits: &mut CommitQueue<K::Committer>,
    rejections: &mut Vec<(Listed, Rejection)>,
    report: &mut Report,
) -> Result<(), Error> {
    let (again, fresh): (Vec<Listed>, Vec<Listed>) = messages
        .iter()
        .cloned()
        .partition(|message| retries.contains_key(&message.number));
    source.request(&fresh);
    let mut tally = Tally {
        by_number: messages.iter().map(|m| (m.number, m)).collect(),
        retries,
        // A sink whose acceptance is final has nothing to batch: each
        // message is journaled as soon as it is taken.
        batch_limit: if <K::Committer as Committer>::DEFERS_DURABILITY {
            BATCH_MESSAGES
        } else {
            1
        },
        batch: Batch::default(),
        commits,
        rejections,
        report,
    };
    let mut result = match sink.fork() {
        Some(first) => {
            retrieve_in_parallel(source, first, sink, fresh.len(), header, &mut tally).await
        }
        None => {
            let mut result = Ok(());
            for _ in &fresh {
                if let Err(err) = deliver_next(source, sink, None, header, &mut tally).await {
                    result = Err(err);
                    break;
                }
            }
            result
        }
    };
    // One at a time, so that each is known to be the one streaming.
    for message in &again {
        if result.is_err() {
            break;
        }
        source.request(std::slice::from_ref(message));
        let remaining = &retries[&message.number].remaining;
        result = deliver_next(source, sink, Some(remaining), header, &mut tally).await;
    }
    tally.commits.submit(std::mem::take(&mut tally.batch)).await;
    result
}

/// How many messages may wait at once for their destination's answer,
/// each on a session of its own, when the sink can open more (SMTP, LMTP).
/// An MTA answers only once it has synced the message to disk; waiting for
/// several at once lets those syncs overlap with each other and with the
/// download.
const PARALLEL_DELIVERIES: usize = 4;

/// Like the loop in [`retrieve`], but each message's `finish` (the wait
/// for the destination's answer) runs on a task while the next message
/// streams into another session. Every answer is waited for and recorded,
/// even after an error, so that nothing the destination took is forgotten.
async fn retrieve_in_parallel<S: Source, K: Sink>(
    source: &mut S,
    first: K,
    sink: &K,
    count: usize,
    header: Option<&str>,
    tally: &mut Tally<'_, K::Committer>,
) -> Result<(), Error> {
    let mut idle = vec![first];
    let mut sessions = 1;
    let mut waiting: Answers<K> = JoinSet::new();
    let mut result = Ok(());
    for _ in 0..count {
        if let Err(err) = stop_point() {
            result = Err(err);
            break;
        }
        let mut lane = match idle.pop() {
            Some(lane) => lane,
            None if sessions < PARALLEL_DELIVERIES => {
                sessions += 1;
                sink.fork().expect("a sink that forked once forks again")
            }
            None => match settle_one(&mut waiting, tally).await {
                Ok(lane) => lane,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            },
        };
        match stream_one(source, &mut lane, None, header).await {
            Ok((number, Some(writer))) => {
                waiting.spawn(async move {
                    let answer = lane.finish(writer).await;
                    (lane, number, answer)
                });
            }
            Ok((number, None)) => {
                let recorded = tally.record(number, Fetched::Refused, &lane).await;
                idle.push(lane);
                if let Err(err) = recorded {
                    result = Err(err);
                    break;
                }
            }
            Err(err) => {
                idle.push(lane);
                result = Err(err);
                break;
            }
        }
    }
    while !waiting.is_empty() {
        match settle_one(&mut waiting, tally).await {
            Ok(lane) => idle.push(lane),
            Err(err) => {
                result = result.and(Err(err));
            }
        }
    }
    for mut lane in idle {
        lane.close().await;
    }
    result
}

/// Deliveries waiting for the destination's answer: each gives back its
/// session, the message's number and the answer.
type Answers<K> = JoinSet<(K, u32, Result<Acceptance<<K as Sink>::Staged>, Error>)>;

/// Waits for the next answer and records it; gives back its session.
async fn settle_one<K: Sink>(
    waiting: &mut Answers<K>,
    tally: &mut Tally<'_, K::Committer>,
) -> Result<K, Error> {
    match waiting.join_next().await {
        Some(Ok((lane, number, answered))) => {
            let fetched = answer(number, answered?);
            tally.record(number, fetched, &lane).await?;
            Ok(lane)
        }
        Some(Err(join)) => Err(Error::new(
            Kind::Delivery,
            format!("delivery task failed: {join}"),
        )),
        None => unreachable!("settle_one is called only while answers are awaited"),
    }
}

/// Ends the poll early when mailfetch is shutting down.
fn stop_point() -> Result<(), Error> {
    if is_stopping() {
        // Requests may still be in flight: the session cannot be used for
        // deletions any more, so this ends the poll as failed.
        return Err(Error::new(
            Kind::Server,
            "interrupted: mailfetch is shutting down; the rest is fetched next time",
        ));
    }
    Ok(())
}

/// Where the outcome of each message goes: batches to commit, counts and
/// refusals for the report.
struct Tally<'a, C: Committer> {
    by_number: HashMap<u32, &'a Listed>,
    retries: &'a HashMap<u32, Retry>,
    batch_limit: usize,
    batch: Batch<C::Staged>,
    commits: &'a mut CommitQueue<C>,
    rejections: &'a mut Vec<(Listed, Rejection)>,
    report: &'a mut Report,
}

impl<C: Committer> Tally<'_, C> {
    async fn record<K: Sink<Committer = C, Staged = C::Staged>>(
        &mut self,
        number: u32,
        fetched: Fetched<C::Staged>,
        sink: &K,
    ) -> Result<(), Error> {
        let fetched = match fetched {
            Fetched::Partly(delivered_to, failure) => {
                self.record_partial(number, delivered_to).await;
                *failure
            }
            fetched => fetched,
        };
        match fetched {
            Fetched::Staged(staged) => {
                let Some(message) = self.by_number.get(&number) else {
                    sink.committer().discard(vec![staged]);
                    return Err(Error::new(
                        Kind::Protocol,
                        format!("the server sent message {number}, which was not asked for"),
                    ));
                };
                self.batch.bytes += staged.size();
                self.batch.messages.push(((*message).clone(), staged));
                if self.batch.messages.len() >= self.batch_limit || self.batch.bytes >= BATCH_BYTES
                {
                    self.commits.submit(std::mem::take(&mut self.batch)).await;
                }
            }
            Fetched::Refused => self.report.refused += 1,
            Fetched::Failed => self.report.failed += 1,
            Fetched::Rejected(rejection) => {
                self.report.rejected += 1;
                if let Some(message) = self.by_number.get(&number) {
                    self.rejections.push(((*message).clone(), rejection));
                }
            }
            Fetched::Partly(..) => unreachable!("a partial delivery's failure is not partial"),
        }
        Ok(())
    }

    /// Journals at once which recipients have message `number` now, so
    /// that no later poll sends it to them again.
    async fn record_partial(&mut self, number: u32, delivered_to: Vec<String>) {
        let Some(uid) = self.by_number.get(&number).and_then(|m| m.uid.clone()) else {
            return;
        };
        let mut reached = self
            .retries
            .get(&number)
            .map(|retry| retry.reached.clone())
            .unwrap_or_default();
        reached.extend(delivered_to);
        self.batch.partials.push((uid, reached));
        self.commits.submit(std::mem::take(&mut self.batch)).await;
    }
}

/// What became of one message the session is still usable after.
enum Fetched<T> {
    Staged(T),
    /// The server would not hand it out.
    Refused,
    /// The sink could not take it for now.
    Failed,
    /// The sink refused it for good.
    Rejected(Rejection),
    /// These recipients took it; for the others, the inner outcome (a
    /// failure) holds.
    Partly(Vec<String>, Box<Fetched<T>>),
}

/// Streams the next requested message into the sink (for `recipients`
/// only, if given), waits for the answer and records it.
async fn deliver_next<S: Source, K: Sink>(
    source: &mut S,
    sink: &mut K,
    recipients: Option<&[String]>,
    header: Option<&str>,
    tally: &mut Tally<'_, K::Committer>,
) -> Result<(), Error> {
    stop_point()?;
    let (number, streamed) = stream_one(source, sink, recipients, header).await?;
    let fetched = match streamed {
        Some(writer) => answer(number, sink.finish(writer).await?),
        None => Fetched::Refused,
    };
    tally.record(number, fetched, sink).await
}

/// Streams the next message into the sink; says which one it was, and
/// gives back the writer to finish, or `None` if the server refused to
/// hand the message out.
async fn stream_one<S: Source, K: Sink>(
    source: &mut S,
    sink: &mut K,
    recipients: Option<&[String]>,
    header: Option<&str>,
) -> Result<(u32, Option<K::Writer>), Error> {
    let mut writer = match recipients {
        Some(recipients) => sink.begin_to(recipients).await?,
        None => sink.begin().await?,
    };
    if let Some(header) = header
        && let Err(err) = writer.write(header.as_bytes()).await
    {
        sink.abort(writer);
        return Err(Error::new(
            Kind::Delivery,
            format!("cannot write message: {err}"),
        ));
    }
    match source.retrieve(&mut writer).await {
        Ok((number, Retrieved::Complete)) => Ok((number, Some(writer))),
        Ok((number, Retrieved::Refused(reason))) => {
            sink.abort(writer);
            tracing::warn!("server refused message {number}: {reason}");
            Ok((number, None))
        }
        Err(err) => {
            // Nothing of a partly received message may become visible.
            sink.abort(writer);
            Err(err)
        }
    }
}

/// Logs what the destination said about a message.
fn answer<T>(number: u32, acceptance: Acceptance<T>) -> Fetched<T> {
    match acceptance {
        Acceptance::Partial {
            delivered_to,
            failure,
        } => {
            tracing::info!(
                "message {number} delivered to {} only; the others get it at a later poll",
                delivered_to.join(", ")
            );
            Fetched::Partly(delivered_to, Box::new(answer(number, *failure)))
        }
        Acceptance::Accepted(staged) => Fetched::Staged(staged),
        Acceptance::TemporaryFailure(reason) => {
            tracing::warn!(
                "message {number} not delivered for now, left on the server for the next poll: {reason}"
            );
            Fetched::Failed
        }
        Acceptance::PermanentFailure(rejection) => {
            tracing::warn!("message {number} rejected: {}", rejection.reason);
            Fetched::Rejected(rejection)
        }
    }
}

/// Staged messages waiting to be committed together.
struct Batch<T> {
    messages: Vec<(Listed, T)>,
    bytes: u64,
    /// Messages that reached some recipients: (id, all that have it).
    partials: Vec<(String, Vec<String>)>,
}

impl<T> Batch<T> {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.partials.is_empty()
    }
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            messages: Vec::new(),
            bytes: 0,
            partials: Vec::new(),
        }
    }
}

/// What a commit needs, owned, so it can move to a blocking thread.
struct CommitJob<C> {
    committer: C,
    state: MailboxState,
}

impl<C: Committer> CommitJob<C> {
    /// Steps 2–4 of the module's rule for one batch. Returns the (number,
    /// size) of each message now durably delivered.
    fn commit(&mut self, batch: Batch<C::Staged>) -> Result<Vec<(u32, u64)>, Error> {
        let failed =
            |what: &str, err: std::io::Error| Error::new(Kind::Delivery, format!("{what}: {err}"));
        for (uid, reached) in &batch.partials {
            // Like an acceptance that is final: written, synced at the end.
            self.state
                .record_partial(uid, reached)
                .map_err(|err| failed("cannot write the state file", err))?;
        }
        let mut done = Vec::with_capacity(batch.messages.len());
        let mut entries = Vec::new();
        let mut staged = Vec::with_capacity(batch.messages.len());
        for (listed, message) in batch.messages {
            done.push((listed.number, message.size()));
            if let Some(uid) = listed.uid {
                entries.push(Entry {
                    id: uid,
                    intent: message.intent().map(|intent| intent.encode()),
                    digest: listed.digest,
                });
            }
            staged.push(message);
        }
        if !C::DEFERS_DURABILITY {
            // Final already; the journal is synced once, at the end.
            self.state
                .record_accepted(&entries)
                .map_err(|err| failed("cannot write the state file", err))?;
            return Ok(done);
        }
        let started = Instant::now();
        if let Err(err) = self.committer.sync(&staged) {
            self.committer.discard(staged);
            return Err(failed("cannot make delivered messages durable", err));
        }
        // From here on the staged files are complete and durable. If the
        // journal write fails they are left in place: whether the intents
        // reached the disk is unknown, and recovery handles both cases.
        self.state
            .record_delivered(&entries)
            .map_err(|err| failed("cannot write the state file", err))?;
        let intents: Vec<String> = entries
            .into_iter()
            .filter_map(|entry| entry.intent)
            .collect();
        self.committer
            .publish(staged)
            .map_err(|err| failed("cannot publish delivered messages", err))?;
        if let Err(err) = self.state.record_published(&intents) {
            // Harmless: the next run re-checks these intents and finds them done.
            tracing::warn!("cannot note published messages in the state file: {err}");
        }
        tracing::debug!(
            "committed {} messages in {:?}",
            done.len(),
            started.elapsed()
        );
        Ok(done)
    }
}

type CommitResult<C> = (CommitJob<C>, Result<Vec<(u32, u64)>, Error>);

/// How a poll's commits ended.
struct Committed {
    /// (number, size) of each message durably delivered.
    messages: Vec<(u32, u64)>,
    error: Option<Error>,
    state: Option<MailboxState>,
}

/// Runs one commit at a time on a blocking thread, in batch order, while
/// the caller goes on downloading.
struct CommitQueue<C> {
    idle: Option<CommitJob<C>>,
    running: Option<JoinHandle<CommitResult<C>>>,
    committed: Vec<(u32, u64)>,
    error: Option<Error>,
}

impl<C: Committer> CommitQueue<C> {
    fn new(committer: C, state: MailboxState) -> Self {
        CommitQueue {
            idle: Some(CommitJob { committer, state }),
            running: None,
            committed: Vec::new(),
            error: None,
        }
    }

    /// Starts committing `batch` once the previous commit is done. After a
    /// failed commit, later batches are discarded (their messages stay on
    /// the server).
    async fn submit(&mut self, batch: Batch<C::Staged>) {
        self.wait().await;
        if batch.is_empty() {
            return;
        }
        let Some(mut job) = self.idle.take() else {
            return;
        };
        if self.error.is_some() {
            job.committer.discard(
                batch
                    .messages
                    .into_iter()
                    .map(|(_, staged)| staged)
                    .collect(),
            );
            self.idle = Some(job);
            return;
        }
        self.running = Some(tokio::task::spawn_blocking(move || {
            let result = job.commit(batch);
            (job, result)
        }));
    }

    async fn wait(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        match running.await {
            Ok((job, result)) => {
                self.idle = Some(job);
                match result {
                    Ok(done) => self.committed.extend(done),
                    Err(err) => self.error = Some(err),
                }
            }
            // A panic in the commit thread: the job (and the state) is gone.
            // Nothing more is committed or deleted this poll.
            Err(join) => {
                self.error = Some(Error::new(
                    Kind::Delivery,
                    format!("commit thread failed: {join}"),
                ));
            }
        }
    }

    /// Waits for the last commit and makes the journal durable. Returns what
    /// was committed, the first commit error if there was one, and the state
    /// (gone only if a commit thread panicked).
    async fn finish(mut self) -> Committed {
        self.wait().await;
        let mut error = self.error;
        let state = self.idle.map(|job| job.state);
        let state = match state {
            Some(mut state) if !C::DEFERS_DURABILITY && !self.committed.is_empty() => {
                match tokio::task::spawn_blocking(move || state.sync().map(|()| state)).await {
                    Ok(Ok(state)) => Some(state),
                    Ok(Err(err)) => {
                        error.get_or_insert(Error::new(
                            Kind::Delivery,
                            format!("cannot write the state file: {err}"),
                        ));
                        None
                    }
                    Err(join) => {
                        error.get_or_insert(Error::new(
                            Kind::Delivery,
                            format!("commit thread failed: {join}"),
                        ));
                        None
                    }
                }
            }
            state => state,
        };
        Committed {
            messages: self.committed,
            error,
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::maildir::MaildirSink;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};

    /// A crash after the intent was journaled but before the rename: the
    /// next run publishes the message, exactly once.
    #[tokio::test]
    async fn recover_publishes_a_journaled_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Maildir");
        let mut sink = MaildirSink::open(&maildir).unwrap();
        let mut writer = sink.begin().await.unwrap();
        writer.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        let Ok(Acceptance::Accepted(staged)) = sink.finish(writer).await else {
            panic!("not accepted")
        };
        let mut committer = sink.committer();
        committer.sync(std::slice::from_ref(&staged)).unwrap();
        let mut state = MailboxState::open(dir.path(), "key").unwrap();
        state
            .record_delivered(&[Entry {
                intent: staged.intent().map(|intent| intent.encode()),
                ..Entry::new("uid-1")
            }])
            .unwrap();
        drop((staged, state)); // the crash

        let mut state = MailboxState::open(dir.path(), "key").unwrap();
        recover(&mut state).unwrap();
        assert!(state.is_delivered("uid-1"));
        assert!(state.pending_intents().is_empty());
        let new: Vec<_> = std::fs::read_dir(maildir.join("new")).unwrap().collect();
        assert_eq!(new.len(), 1);
        assert_eq!(std::fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
        // A second recovery has nothing to do.
        recover(&mut state).unwrap();
        assert_eq!(std::fs::read_dir(maildir.join("new")).unwrap().count(), 1);
    }

    /// An intent whose file vanished is forgotten, so the message is
    /// fetched again instead of being counted as delivered.
    #[tokio::test]
    async fn recover_forgets_a_delivery_that_left_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = MaildirSink::open(&dir.path().join("Maildir")).unwrap();
        let mut writer = sink.begin().await.unwrap();
        writer.write(b"x\r\n").await.unwrap();
        let Ok(Acceptance::Accepted(staged)) = sink.finish(writer).await else {
            panic!("not accepted")
        };
        let mut state = MailboxState::open(dir.path(), "key").unwrap();
        state
            .record_delivered(&[Entry {
                intent: staged.intent().map(|intent| intent.encode()),
                ..Entry::new("uid-1")
            }])
            .unwrap();
        let mut committer = sink.committer();
        committer.discard(vec![staged]);

        recover(&mut state).unwrap();
        assert!(!state.is_delivered("uid-1"));
        assert!(
            !MailboxState::open(dir.path(), "key")
                .unwrap()
                .is_delivered("uid-1")
        );
    }

    /// A mailbox in memory: messages by number, with what was deleted.
    struct MemorySource {
        messages: Vec<(Listed, Vec<u8>)>,
        queue: std::collections::VecDeque<u32>,
        deleted: Vec<u32>,
    }

    impl MemorySource {
        /// Gives message N the UID `uids[N - 1]`.
        fn with_uids(bodies: &[&str], uids: &[&str]) -> MemorySource {
            let mut source = MemorySource::new(bodies);
            for ((listed, _), uid) in source.messages.iter_mut().zip(uids) {
                listed.uid = Some(uid.to_string());
            }
            source
        }

        fn new(bodies: &[&str]) -> MemorySource {
            let messages = bodies
                .iter()
                .enumerate()
                .map(|(index, body)| {
                    let number = index as u32 + 1;
                    let listed = Listed {
                        number,
                        uid: Some(format!("uid-{number}")),
                        size: Some(body.len() as u64),
                        ..Listed::default()
                    };
                    (listed, body.as_bytes().to_vec())
                })
                .collect();
            MemorySource {
                messages,
                queue: Default::default(),
                deleted: Vec::new(),
            }
        }
    }

    impl Source for MemorySource {
        async fn list(&mut self, _with_seen: bool) -> Result<crate::source::Listing, Error> {
            Ok(crate::source::Listing {
                identity: None,
                messages: self
                    .messages
                    .iter()
                    .map(|(listed, _)| listed.clone())
                    .collect(),
            })
        }
        async fn describe(&mut self, _messages: &mut [Listed]) -> Result<(), Error> {
            Ok(())
        }
        fn request(&mut self, messages: &[Listed]) {
            self.queue
                .extend(messages.iter().map(|message| message.number));
        }
        async fn retrieve<W: MessageWriter>(
            &mut self,
            out: &mut W,
        ) -> Result<(u32, Retrieved), Error> {
            let number = self.queue.pop_front().expect("requested");
            let body = &self.messages[number as usize - 1].1;
            out.write(body).await.unwrap();
            Ok((number, Retrieved::Complete))
        }
        async fn delete(&mut self, numbers: &[u32]) -> Result<usize, Error> {
            self.deleted.extend(numbers);
            Ok(numbers.len())
        }
        async fn mark_seen(&mut self, _numbers: &[u32]) -> Result<(), Error> {
            Ok(())
        }
        async fn finish(self) -> Result<(), Error> {
            Ok(())
        }
    }

    /// An MTA in memory whose verdict is written in each message: "tempfail"
    /// or "reject" anywhere in it, "hangup" for a lost connection, else it
    /// takes it. Forked, its handles share what was taken, and they count
    /// how many answers were awaited at once.
    #[derive(Default, Clone)]
    struct VerdictSink {
        taken: Arc<Mutex<Vec<Vec<u8>>>>,
        forks: bool,
        waiting: Arc<AtomicUsize>,
        most_waiting: Arc<AtomicUsize>,
    }

    impl VerdictSink {
        fn taken(&self) -> usize {
            self.taken.lock().unwrap().len()
        }
    }

    struct Buffer(Vec<u8>);

    impl MessageWriter for Buffer {
        async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
            self.0.extend_from_slice(chunk);
            Ok(())
        }
    }

    impl Sink for VerdictSink {
        type Writer = Buffer;
        type Staged = crate::sink::Delivered;
        type Committer = crate::sink::AlreadyDurable;

        fn describe(&self) -> String {
            "verdicts".into()
        }
        async fn begin(&mut self) -> Result<Buffer, Error> {
            Ok(Buffer(Vec::new()))
        }
        async fn finish(&mut self, writer: Buffer) -> Result<Acceptance<Self::Staged>, Error> {
            let now = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_waiting.fetch_max(now, Ordering::SeqCst);
            // An MTA syncing the message before it answers.
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            let text = String::from_utf8_lossy(&writer.0).into_owned();
            if text.contains("hangup") {
                return Err(Error::new(Kind::Delivery, "the MTA hung up"));
            }
            if text.contains("tempfail") {
                return Ok(Acceptance::TemporaryFailure("451 4.3.0 try later".into()));
            }
            if text.contains("reject") {
                let mut capture = crate::sink::envelope::HeaderCapture::new();
                capture.feed(&writer.0);
                return Ok(Acceptance::PermanentFailure(Rejection {
                    reason: "550 5.1.1 unknown user".into(),
                    sender: capture
                        .return_path()
                        .filter(|sender| *sender != crate::sink::envelope::Sender::Null)
                        .map(|sender| sender.address().to_owned()),
                    headers: capture.headers().to_vec(),
                }));
            }
            let size = writer.0.len() as u64;
            self.taken.lock().unwrap().push(writer.0);
            Ok(Acceptance::Accepted(crate::sink::Delivered { size }))
        }
        fn abort(&mut self, _writer: Buffer) {}
        fn committer(&self) -> crate::sink::AlreadyDurable {
            crate::sink::AlreadyDurable
        }
        fn fork(&self) -> Option<VerdictSink> {
            self.forks.then(|| self.clone())
        }
    }

    fn account(extra: &str) -> Account {
        let text = format!(
            "[[account]]\nname = \"t\"\nprotocol = \"pop3\"\nhost = \"localhost\"\n\
             username = \"u\"\ndeliver = \"smtp://127.0.0.1:9\"\nreceived_header = false\n{extra}"
        );
        crate::config::parse(Path::new("test"), &text)
            .unwrap()
            .accounts
            .remove(0)
    }

    const MESSAGES: [&str; 4] = [
        "Subject: fine\r\n\r\nok\r\n",
        "Subject: later\r\n\r\ntempfail\r\n",
        "Return-Path: <alice@example.org>\r\nSubject: no\r\n\r\nreject\r\n",
        "Return-Path: <>\r\nSubject: bounce\r\n\r\nreject\r\n",
    ];

    async fn poll_memory(
        account: &Account,
        state_dir: &Path,
    ) -> (MemorySource, VerdictSink, Report, Result<(), Error>) {
        poll_with(account, state_dir, &MESSAGES, VerdictSink::default()).await
    }

    async fn poll_with(
        account: &Account,
        state_dir: &Path,
        messages: &[&str],
        sink: VerdictSink,
    ) -> (MemorySource, VerdictSink, Report, Result<(), Error>) {
        poll_source(account, state_dir, MemorySource::new(messages), sink).await
    }

    async fn poll_source(
        account: &Account,
        state_dir: &Path,
        mut source: MemorySource,
        mut sink: VerdictSink,
    ) -> (MemorySource, VerdictSink, Report, Result<(), Error>) {
        let mut report = Report::new("t".into(), "verdicts", account);
        let state = StateOpening::start(state_dir, "key".to_owned());
        let result = poll_mailbox(&mut source, &mut sink, account, state, &mut report).await;
        (source, sink, report, result)
    }

    /// Leaves what a crash between journaling and publishing leaves: the
    /// intent of message uid-1 in the journal, its file complete in the
    /// `tmp/` of the Maildir at `maildir`.
    async fn crash_before_publishing(state_dir: &Path, maildir: &Path, body: &str) -> Intent {
        let mut sink = MaildirSink::open(maildir).unwrap();
        let mut writer = sink.begin().await.unwrap();
        writer.write(body.as_bytes()).await.unwrap();
        let Ok(Acceptance::Accepted(staged)) = sink.finish(writer).await else {
            panic!("not accepted")
        };
        sink.committer()
            .sync(std::slice::from_ref(&staged))
            .unwrap();
        let intent = staged.intent().unwrap();
        let mut state = MailboxState::open(state_dir, "key").unwrap();
        state
            .record_delivered(&[Entry {
                intent: Some(intent.encode()),
                ..Entry::new("uid-1")
            }])
            .unwrap();
        intent
    }

    /// The user moved from a Maildir to an MTA after a crash: the Maildir
    /// delivery is finished where it was going, and counts.
    #[tokio::test]
    async fn an_interrupted_delivery_is_finished_whatever_the_sink_is_now() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old-maildir");
        crash_before_publishing(dir.path(), &old, MESSAGES[0]).await;
        let (source, sink, _, result) = poll_with(
            &account(""),
            dir.path(),
            &MESSAGES[..1],
            VerdictSink::default(),
        )
        .await;
        result.unwrap();
        assert_eq!(std::fs::read_dir(old.join("new")).unwrap().count(), 1);
        assert_eq!(sink.taken(), 0, "delivered once, in the old Maildir");
        assert_eq!(source.deleted, [1]);
    }

    /// …and when its file is gone (or the whole Maildir is), the message is
    /// fetched again, into today's sink, before it may be deleted.
    #[tokio::test]
    async fn a_delivery_that_cannot_be_finished_is_fetched_again_by_todays_sink() {
        for remove_whole_maildir in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let old = dir.path().join("old-maildir");
            let Intent::Maildir { tmp_path, .. } =
                crash_before_publishing(dir.path(), &old, MESSAGES[0]).await;
            if remove_whole_maildir {
                std::fs::remove_dir_all(&old).unwrap();
            } else {
                std::fs::remove_file(tmp_path).unwrap();
            }
            let (source, sink, report, result) = poll_with(
                &account(""),
                dir.path(),
                &MESSAGES[..1],
                VerdictSink::default(),
            )
            .await;
            result.unwrap();
            assert_eq!(sink.taken(), 1, "fetched again");
            assert_eq!(report.delivered, 1);
            assert_eq!(source.deleted, [1]);
        }
    }

    /// An intent of a kind this version does not know is not taken for a
    /// delivery.
    #[tokio::test]
    async fn an_unknown_intent_means_fetching_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = MailboxState::open(dir.path(), "key").unwrap();
        state
            .record_delivered(&[Entry {
                intent: Some("mbox:/var/mail/alice@0".into()),
                ..Entry::new("uid-1")
            }])
            .unwrap();
        drop(state);
        let (source, sink, _, result) = poll_with(
            &account(""),
            dir.path(),
            &MESSAGES[..1],
            VerdictSink::default(),
        )
        .await;
        result.unwrap();
        assert_eq!(sink.taken(), 1);
        assert_eq!(source.deleted, [1]);
    }

    /// Two messages listed with one UIDL that the state knows: neither is
    /// taken for delivered, both are fetched, and only what this poll
    /// delivered is deleted.
    #[tokio::test]
    async fn a_uid_shared_by_two_messages_identifies_neither() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = MailboxState::open(dir.path(), "key").unwrap();
        state.record_delivered(&[Entry::new("x")]).unwrap();
        drop(state);
        let bodies = [MESSAGES[0], MESSAGES[1], "Subject: third\r\n\r\nok\r\n"];
        let source = MemorySource::with_uids(&bodies, &["x", "x", "y"]);
        let (source, sink, report, result) =
            poll_source(&account(""), dir.path(), source, VerdictSink::default()).await;
        result.unwrap();
        // Message 2 fails temporarily: it stays, although its UID is "known".
        assert_eq!(sink.taken(), 2);
        assert_eq!(report.new, 3);
        assert_eq!(source.deleted, [1, 3]);

        // In keep mode they are fetched at every poll, never skipped.
        let keep = account("keep = true\n");
        for _ in 0..2 {
            let source = MemorySource::with_uids(&bodies[..2], &["x", "x"]);
            let (source, sink, _, result) =
                poll_source(&keep, dir.path(), source, VerdictSink::default()).await;
            result.unwrap();
            assert_eq!(sink.taken(), 1, "message 1 taken, message 2 tried");
            assert!(source.deleted.is_empty());
        }
    }

    /// An LMTP server (or an MDA run per recipient) that takes each message
    /// for every recipient except those in `failing`, which it refuses for
    /// now.
    #[derive(Default, Clone)]
    struct RecipientSink {
        failing: Arc<Mutex<Vec<String>>>,
        got: Arc<Mutex<Vec<String>>>,
        current: Vec<String>,
    }

    impl Sink for RecipientSink {
        type Writer = Buffer;
        type Staged = crate::sink::Delivered;
        type Committer = crate::sink::AlreadyDurable;

        fn describe(&self) -> String {
            "recipients".into()
        }
        async fn begin(&mut self) -> Result<Buffer, Error> {
            self.current = vec!["a".into(), "b".into()];
            Ok(Buffer(Vec::new()))
        }
        async fn begin_to(&mut self, recipients: &[String]) -> Result<Buffer, Error> {
            self.current = recipients.to_vec();
            Ok(Buffer(Vec::new()))
        }
        async fn finish(&mut self, writer: Buffer) -> Result<Acceptance<Self::Staged>, Error> {
            let failing = self.failing.lock().unwrap().clone();
            let (failed, took): (Vec<String>, Vec<String>) = self
                .current
                .iter()
                .cloned()
                .partition(|recipient| failing.contains(recipient));
            self.got.lock().unwrap().extend(took.iter().cloned());
            let size = writer.0.len() as u64;
            Ok(match (took.is_empty(), failed.is_empty()) {
                (_, true) => Acceptance::Accepted(crate::sink::Delivered { size }),
                (true, false) => Acceptance::TemporaryFailure("452 4.2.2 over quota".into()),
                (false, false) => Acceptance::Partial {
                    delivered_to: took,
                    failure: Box::new(Acceptance::TemporaryFailure("452 4.2.2 over quota".into())),
                },
            })
        }
        fn abort(&mut self, _writer: Buffer) {}
        fn committer(&self) -> crate::sink::AlreadyDurable {
            crate::sink::AlreadyDurable
        }
    }

    /// Recipient a took the message, b could not: the message stays, and
    /// later polls send it to b alone until b has it too.
    #[tokio::test]
    async fn a_partial_delivery_is_retried_for_the_other_recipients_only() {
        let dir = tempfile::tempdir().unwrap();
        let account = account("to = [\"a\", \"b\"]\n");
        let sink = RecipientSink::default();
        *sink.failing.lock().unwrap() = vec!["b".into()];
        let poll = async |sink: &RecipientSink| {
            let mut source = MemorySource::new(&MESSAGES[..1]);
            let mut report = Report::new("t".into(), "recipients", &account);
            let state = StateOpening::start(dir.path(), "key".to_owned());
            let mut sink = sink.clone();
            poll_mailbox(&mut source, &mut sink, &account, state, &mut report)
                .await
                .unwrap();
            (source.deleted, report)
        };
        for _ in 0..3 {
            let (deleted, report) = poll(&sink).await;
            assert!(deleted.is_empty());
            assert_eq!(report.failed, 1);
        }
        assert_eq!(*sink.got.lock().unwrap(), ["a"], "a got it once");
        sink.failing.lock().unwrap().clear();
        let (deleted, report) = poll(&sink).await;
        assert_eq!(deleted, [1]);
        assert_eq!(report.delivered, 1);
        assert_eq!(*sink.got.lock().unwrap(), ["a", "b"]);
        let (deleted, _) = poll(&sink).await;
        assert_eq!(deleted, [1], "delivered: only deleted again");
        assert_eq!(sink.got.lock().unwrap().len(), 2);
    }

    /// A recipient taken out of `to` since: the others all have it, so it
    /// is delivered without being sent again.
    #[tokio::test]
    async fn a_partial_delivery_that_every_recipient_now_has_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = MailboxState::open(dir.path(), "key").unwrap();
        state.record_partial("uid-1", &["a".into()]).unwrap();
        drop(state);
        let account = account("to = [\"a\"]\n");
        let mut source = MemorySource::new(&MESSAGES[..1]);
        let mut sink = RecipientSink::default();
        let mut report = Report::new("t".into(), "recipients", &account);
        let state = StateOpening::start(dir.path(), "key".to_owned());
        poll_mailbox(&mut source, &mut sink, &account, state, &mut report)
            .await
            .unwrap();
        assert!(sink.got.lock().unwrap().is_empty());
        assert_eq!(source.deleted, [1]);
    }

    /// A sink that forks gets several answers awaited at once, never more
    /// than PARALLEL_DELIVERIES, with the same outcome as one at a time.
    #[tokio::test]
    async fn forked_sessions_wait_for_answers_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut messages: Vec<&str> = vec!["Subject: fine\r\n\r\nok\r\n"; 20];
        messages.extend(MESSAGES);
        let sink = VerdictSink {
            forks: true,
            ..VerdictSink::default()
        };
        let (source, sink, report, result) =
            poll_with(&account(""), dir.path(), &messages, sink).await;
        result.unwrap();
        assert_eq!(sink.taken(), 21);
        assert_eq!(
            (report.delivered, report.failed, report.rejected),
            (21, 1, 2)
        );
        let mut deleted = source.deleted.clone();
        deleted.sort_unstable();
        assert_eq!(deleted, (1..=21).collect::<Vec<u32>>());
        let most = sink.most_waiting.load(Ordering::SeqCst);
        assert!(
            (2..=PARALLEL_DELIVERIES).contains(&most),
            "{most} answers awaited at once"
        );
    }

    /// When one session fails, the answers already awaited on the others
    /// are still recorded: nothing the destination took is fetched again,
    /// and nothing is deleted this poll.
    #[tokio::test]
    async fn a_failed_session_keeps_the_answers_of_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let bodies: Vec<String> = (1..=7)
            .map(|n| {
                format!(
                    "Subject: {n}\r\n\r\n{}\r\n",
                    if n == 4 { "hangup" } else { "ok" }
                )
            })
            .collect();
        let messages: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let sink = VerdictSink {
            forks: true,
            ..VerdictSink::default()
        };
        let account = account("");
        let (source, first, report, result) =
            poll_with(&account, dir.path(), &messages, sink).await;
        assert_eq!(result.unwrap_err().kind, Kind::Delivery);
        assert!(source.deleted.is_empty(), "no deletion after a failure");
        assert_eq!(report.delivered, first.taken());
        assert!(first.taken() >= 3, "the answers before the failure count");

        // The MTA is back: only what it did not take is sent again.
        let cured = bodies[3].replace("hangup", "ok");
        let mut messages = messages.clone();
        messages[3] = &cured;
        let (source, second, _, result) =
            poll_with(&account, dir.path(), &messages, VerdictSink::default()).await;
        result.unwrap();
        let mut all: Vec<Vec<u8>> = first.taken.lock().unwrap().clone();
        all.extend(second.taken.lock().unwrap().iter().cloned());
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 7, "every message once");
        assert_eq!(first.taken() + second.taken(), 7, "none twice");
        assert_eq!(source.deleted.len(), 7);
    }

    /// By default nothing the destination did not take leaves the server,
    /// and it is tried again at the next poll.
    #[tokio::test]
    async fn refused_messages_stay_on_the_server_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let account = account("");
        let (source, sink, report, result) = poll_memory(&account, dir.path()).await;
        result.unwrap();
        assert_eq!(sink.taken(), 1);
        assert_eq!(source.deleted, [1]);
        assert_eq!(
            (report.delivered, report.failed, report.rejected),
            (1, 1, 2)
        );
        assert_eq!((report.bounced, report.discarded), (0, 0));
        assert_eq!(report.failure(), Some(Kind::Delivery));
        assert!(
            report.summary().contains(
                "1 failed temporarily (left on the server), 2 rejected (2 left on the server)"
            ),
            "{}",
            report.summary()
        );

        let (source, sink, report, _) = poll_memory(&account, dir.path()).await;
        assert_eq!(sink.taken(), 0, "the delivered one is not delivered twice");
        assert_eq!(source.deleted, [1], "…but deleted if still there");
        assert_eq!((report.new, report.failed, report.rejected), (3, 1, 2));
    }

    /// on_reject = "delete" drops refused messages, never temporary failures,
    /// and in keep mode records them so they are not tried again.
    #[tokio::test]
    async fn on_reject_delete_drops_only_permanent_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (source, _, report, result) =
            poll_memory(&account("on_reject = \"delete\"\n"), dir.path()).await;
        result.unwrap();
        assert_eq!(source.deleted, [1, 3, 4]);
        assert_eq!(
            (report.rejected, report.discarded, report.failed),
            (2, 2, 1)
        );

        let dir = tempfile::tempdir().unwrap();
        let keep = account("on_reject = \"delete\"\nkeep = true\n");
        let (source, _, _, _) = poll_memory(&keep, dir.path()).await;
        assert!(source.deleted.is_empty(), "keep mode never deletes");
        let (_, _, report, _) = poll_memory(&keep, dir.path()).await;
        assert_eq!(report.new, 1, "only the temporary failure is tried again");
        assert_eq!(report.failed, 1);
    }

    /// A bounce that cannot be sent keeps the message, and one with the null
    /// sender is never bounced.
    #[tokio::test]
    async fn an_unsent_bounce_keeps_the_message() {
        let dir = tempfile::tempdir().unwrap();
        // Bounces go to the deliver MTA, and nothing listens on port 9 here.
        let account = account("on_reject = \"bounce\"\n");
        let (source, _, report, result) = poll_memory(&account, dir.path()).await;
        result.unwrap();
        assert_eq!(source.deleted, [1]);
        assert_eq!((report.rejected, report.bounced), (2, 0));
    }

    #[test]
    fn a_poll_that_stopped_early_is_a_failure_even_after_deliveries() {
        let mut report = Report {
            delivered: 3,
            ..Report::default()
        };
        assert_eq!(report.failure(), None);
        report.refused = 1;
        assert_eq!(
            report.failure(),
            None,
            "a refused message among delivered ones"
        );
        report.rejected = 1;
        assert_eq!(report.failure(), Some(Kind::Delivery));
        report.error = Some(Error::new(Kind::Connection, "cut"));
        assert_eq!(report.failure(), Some(Kind::Connection));
    }
}
