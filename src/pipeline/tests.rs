use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::sink::intent::Intent;
use crate::sink::maildir::MaildirSink;
use crate::sink::{Acceptance, Committer, MessageWriter, Rejection, Staged};
use crate::source::Retrieved;

/// A crash after the intent was journaled but before the rename: the
/// next run publishes the message, exactly once.
#[tokio::test]
async fn recover_publishes_a_journaled_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Maildir");
    let mut sink = MaildirSink::open(&maildir).unwrap();
    let mut writer = sink.begin().await.unwrap();
    writer.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
    let Ok(Acceptance::Accepted(mut staged)) = sink.finish(writer).await else {
        panic!("not accepted")
    };
    let mut committer = sink.committer();
    committer.sync(std::slice::from_mut(&mut staged)).unwrap();
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
    async fn retrieve<W: MessageWriter>(&mut self, out: &mut W) -> Result<(u32, Retrieved), Error> {
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
                    .filter(|sender| *sender != crate::address::Sender::Null)
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
    let mut report = Report::new(account, None, "verdicts");
    let state = StateOpening::start(state_dir, "key".to_owned());
    let result = poll_mailbox(
        &mut source,
        &mut sink,
        without_secret(account),
        state,
        None,
        &mut report,
    )
    .await;
    (source, sink, report, result)
}

/// Leaves what a crash between journaling and publishing leaves: the
/// intent of message uid-1 in the journal, its file complete in the
/// `tmp/` of the Maildir at `maildir`.
async fn crash_before_publishing(state_dir: &Path, maildir: &Path, body: &str) -> Intent {
    let mut sink = MaildirSink::open(maildir).unwrap();
    let mut writer = sink.begin().await.unwrap();
    writer.write(body.as_bytes()).await.unwrap();
    let Ok(Acceptance::Accepted(mut staged)) = sink.finish(writer).await else {
        panic!("not accepted")
    };
    sink.committer()
        .sync(std::slice::from_mut(&mut staged))
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
            crash_before_publishing(dir.path(), &old, MESSAGES[0]).await
        else {
            panic!("a Maildir sink journaled another kind of intent")
        };
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
        let mut report = Report::new(&account, None, "recipients");
        let state = StateOpening::start(dir.path(), "key".to_owned());
        let mut sink = sink.clone();
        poll_mailbox(
            &mut source,
            &mut sink,
            without_secret(&account),
            state,
            None,
            &mut report,
        )
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
    let mut report = Report::new(&account, None, "recipients");
    let state = StateOpening::start(dir.path(), "key".to_owned());
    poll_mailbox(
        &mut source,
        &mut sink,
        without_secret(&account),
        state,
        None,
        &mut report,
    )
    .await
    .unwrap();
    assert!(sink.got.lock().unwrap().is_empty());
    assert_eq!(source.deleted, [1]);
}

/// The `~` record of the no-op check is journaled only by a poll that
/// left nothing to do.
#[tokio::test]
async fn only_a_poll_that_left_nothing_to_do_is_recorded_clean() {
    let clean_after = async |account: &Account, messages: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut report = Report::new(account, None, "verdicts");
        let state = StateOpening::start(dir.path(), "key".to_owned());
        let result = poll_mailbox(
            &mut MemorySource::new(messages),
            &mut VerdictSink::default(),
            without_secret(account),
            state,
            Some("uidnext=9".into()),
            &mut report,
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        crate::state::last_clean(dir.path(), "key").unwrap()
    };
    let fine = ["Subject: fine\r\n\r\nok\r\n"; 3];
    let clean = Some("uidnext=9".to_string());
    assert_eq!(clean_after(&account(""), &fine).await, clean);
    assert_eq!(clean_after(&account("keep = true\n"), &fine).await, clean);
    assert_eq!(clean_after(&account("keep = true\n"), &[]).await, clean);
    // A temporary failure, a rejection kept on the server, mail left by
    // max_per_poll or max_size: the next poll has work.
    assert_eq!(clean_after(&account(""), &MESSAGES[..2]).await, None);
    let keep_rejected = account("on_reject = \"keep\"\n");
    assert_eq!(clean_after(&keep_rejected, &MESSAGES[2..3]).await, None);
    assert_eq!(
        clean_after(&account("max_per_poll = 2\n"), &fine).await,
        None
    );
    assert_eq!(clean_after(&account("max_size = 5\n"), &fine).await, None);
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
    let (source, sink, report, result) = poll_with(&account(""), dir.path(), &messages, sink).await;
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
    let (source, first, report, result) = poll_with(&account, dir.path(), &messages, sink).await;
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

/// The account's delivery, with no delivery password.
fn without_secret(account: &Account) -> Delivery<'_> {
    Delivery {
        account,
        secret: None,
    }
}
