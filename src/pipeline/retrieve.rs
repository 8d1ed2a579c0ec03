//! Retrieval: streams requested messages from the source into the sink,
//! one at a time or with several destination answers awaited at once, and
//! tallies each outcome for the commit step and the report.

use std::collections::HashMap;

use tokio::task::JoinSet;

use crate::error::{Error, Kind};
use crate::sink::{Acceptance, Committer, MessageWriter, Rejection, Sink, Staged};
use crate::source::{Listed, Retrieved, Source};

use super::*;

/// Streams `messages` into the sink, handing full batches to `commits`.
/// Whatever is complete when it stops, by error or not, is committed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn retrieve<S: Source, K: Sink>(
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
pub(super) const PARALLEL_DELIVERIES: usize = 4;

/// Like the loop in [`retrieve`], but each message's `finish` (the wait
/// for the destination's answer) runs on a task while the next message
/// streams into another session. Every answer is waited for and recorded,
/// even after an error, so that nothing the destination took is forgotten.
pub(super) async fn retrieve_in_parallel<S: Source, K: Sink>(
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
pub(super) type Answers<K> = JoinSet<(K, u32, Result<Acceptance<<K as Sink>::Staged>, Error>)>;

/// Waits for the next answer and records it; gives back its session.
pub(super) async fn settle_one<K: Sink>(
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
            Kind::Local,
            format!("delivery task failed: {join}"),
        )),
        None => unreachable!("settle_one is called only while answers are awaited"),
    }
}

/// Ends the poll early when mailfetch is shutting down.
pub(super) fn stop_point() -> Result<(), Error> {
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
pub(super) struct Tally<'a, C: Committer> {
    pub(super) by_number: HashMap<u32, &'a Listed>,
    pub(super) retries: &'a HashMap<u32, Retry>,
    pub(super) batch_limit: usize,
    pub(super) batch: Batch<C::Staged>,
    pub(super) commits: &'a mut CommitQueue<C>,
    pub(super) rejections: &'a mut Vec<(Listed, Rejection)>,
    pub(super) report: &'a mut Report,
}

impl<C: Committer> Tally<'_, C> {
    pub(super) async fn record<K: Sink<Committer = C, Staged = C::Staged>>(
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
    pub(super) async fn record_partial(&mut self, number: u32, delivered_to: Vec<String>) {
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
pub(super) enum Fetched<T> {
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
pub(super) async fn deliver_next<S: Source, K: Sink>(
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
pub(super) async fn stream_one<S: Source, K: Sink>(
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
pub(super) fn answer<T>(number: u32, acceptance: Acceptance<T>) -> Fetched<T> {
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
