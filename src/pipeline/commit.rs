//! The commit step, where durability and batching live: batches are
//! synced, journaled and published in order on a blocking thread while the
//! next batch downloads, and interrupted deliveries are recovered.

use std::time::Instant;

use tokio::task::JoinHandle;

use crate::error::{Error, Kind};
use crate::sink::intent::{Intent, Recovered};
use crate::sink::{Committer, Staged};
use crate::source::Listed;
use crate::state::{Entry, MailboxState};

/// A batch is committed when it holds this many messages…
pub(super) const BATCH_MESSAGES: usize = 256;
/// …or this many bytes, whichever comes first. Bounds the work lost to a
/// crash and the time a delivered message waits to become visible.
pub(super) const BATCH_BYTES: u64 = 32 * 1024 * 1024;

/// Finishes deliveries a crash interrupted between journaling and
/// publishing, by what each intent says (whatever the sink is today);
/// forgets the ones that cannot be found or finished, so they are fetched
/// again rather than lost.
pub(super) fn recover(state: &mut MailboxState) -> Result<(), Error> {
    let io = |err: std::io::Error| {
        Error::new(
            Kind::Delivery,
            format!("recovering an interrupted delivery: {err}"),
        )
    };
    let mut pending: Vec<(String, String, Option<Intent>)> = state
        .pending_intents()
        .into_iter()
        .map(|(uid, word)| {
            let intent = Intent::decode(&word);
            (uid, word, intent)
        })
        .collect();
    // Latest first: an mbox message cut short can only be truncated away
    // once nothing of its batch after it is left.
    pending.sort_by_key(|(_, _, intent)| {
        std::cmp::Reverse(intent.as_ref().map_or(0, Intent::recovery_rank))
    });
    for (uid, word, intent) in pending {
        let recovered = match intent {
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

/// Staged messages waiting to be committed together.
pub(super) struct Batch<T> {
    pub(super) messages: Vec<(Listed, T)>,
    pub(super) bytes: u64,
    /// Messages that reached some recipients: (id, all that have it).
    pub(super) partials: Vec<(String, Vec<String>)>,
}

impl<T> Batch<T> {
    pub(super) fn is_empty(&self) -> bool {
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
pub(super) struct CommitJob<C> {
    pub(super) committer: C,
    pub(super) state: MailboxState,
}

impl<C: Committer> CommitJob<C> {
    /// Steps 2–4 of the module's rule for one batch. Returns the (number,
    /// size) of each message now durably delivered.
    pub(super) fn commit(&mut self, batch: Batch<C::Staged>) -> Result<Vec<(u32, u64)>, Error> {
        let failed =
            |what: &str, err: std::io::Error| Error::new(Kind::Delivery, format!("{what}: {err}"));
        let journal_failed = |err: std::io::Error| {
            Error::new(Kind::Local, format!("cannot write the state file: {err}"))
        };
        for (uid, reached) in &batch.partials {
            // Like an acceptance that is final: written, synced at the end.
            self.state
                .record_partial(uid, reached)
                .map_err(journal_failed)?;
        }
        let (listed, mut staged): (Vec<Listed>, Vec<C::Staged>) =
            batch.messages.into_iter().unzip();
        let started = Instant::now();
        if C::DEFERS_DURABILITY
            && let Err(err) = self.committer.sync(&mut staged)
        {
            self.committer.discard(staged);
            return Err(failed("cannot make delivered messages durable", err));
        }
        // Intents are final once the batch is synced (an mbox message's
        // place is known only then).
        let done: Vec<(u32, u64)> = listed
            .iter()
            .zip(&staged)
            .map(|(listed, message)| (listed.number, message.size()))
            .collect();
        let entries: Vec<Entry> = listed
            .into_iter()
            .zip(&staged)
            .filter_map(|(listed, message)| {
                Some(Entry {
                    id: listed.uid?,
                    intent: message.intent().map(|intent| intent.encode()),
                    digest: listed.digest,
                })
            })
            .collect();
        if !C::DEFERS_DURABILITY {
            // Final already; the journal is synced once, at the end.
            self.state
                .record_accepted(&entries)
                .map_err(journal_failed)?;
            return Ok(done);
        }
        // From here on the staged files are complete and durable. If the
        // journal write fails they are left in place: whether the intents
        // reached the disk is unknown, and recovery handles both cases.
        self.state
            .record_delivered(&entries)
            .map_err(journal_failed)?;
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

pub(super) type CommitResult<C> = (CommitJob<C>, Result<Vec<(u32, u64)>, Error>);

/// How a poll's commits ended.
pub(super) struct Committed {
    /// (number, size) of each message durably delivered.
    pub(super) messages: Vec<(u32, u64)>,
    pub(super) error: Option<Error>,
    pub(super) state: Option<MailboxState>,
}

/// Runs one commit at a time on a blocking thread, in batch order, while
/// the caller goes on downloading.
pub(super) struct CommitQueue<C> {
    pub(super) idle: Option<CommitJob<C>>,
    pub(super) running: Option<JoinHandle<CommitResult<C>>>,
    pub(super) committed: Vec<(u32, u64)>,
    pub(super) error: Option<Error>,
}

impl<C: Committer> CommitQueue<C> {
    pub(super) fn new(committer: C, state: MailboxState) -> Self {
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
    pub(super) async fn submit(&mut self, batch: Batch<C::Staged>) {
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

    pub(super) async fn wait(&mut self) {
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
                    Kind::Local,
                    format!("commit thread failed: {join}"),
                ));
            }
        }
    }

    /// Waits for the last commit and makes the journal durable. Returns what
    /// was committed, the first commit error if there was one, and the state
    /// (gone only if a commit thread panicked).
    pub(super) async fn finish(mut self) -> Committed {
        self.wait().await;
        let mut error = self.error;
        let state = self.idle.map(|job| job.state);
        let state = match state {
            Some(mut state) if !C::DEFERS_DURABILITY && !self.committed.is_empty() => {
                match tokio::task::spawn_blocking(move || state.sync().map(|()| state)).await {
                    Ok(Ok(state)) => Some(state),
                    Ok(Err(err)) => {
                        error.get_or_insert(Error::new(
                            Kind::Local,
                            format!("cannot write the state file: {err}"),
                        ));
                        None
                    }
                    Err(join) => {
                        error.get_or_insert(Error::new(
                            Kind::Local,
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
