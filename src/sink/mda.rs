//! Delivery to a mail delivery agent (`deliver = "mda:/usr/bin/procmail -d %T"`):
//! a command that gets each message on its standard input.
//!
//! * The command line comes split into words
//!   ([`CommandLine`](crate::cmdline::CommandLine)) and is run
//!   without a shell, so nothing from a message can become shell syntax.
//!   `%T` (recipient) and `%F` (envelope sender) are replaced inside words;
//!   the sender comes from [`Sender::parse`], which refuses anything with
//!   spaces, quotes or shell metacharacters. When the user's command is
//!   itself a shell (`sh -c '… %F …'`), values substituted into the script
//!   are single-quoted, so they stay one word there too.
//! * The message is sent with LF line ends: procmail, maildrop and
//!   `dovecot-lda` are Unix tools that expect them (as fetchmail does).
//! * Exit 0 means delivered, 75 (`EX_TEMPFAIL`) try again later, anything
//!   else (or a signal) refused for good. A command that exits 0 without
//!   reading all of its input delivered the message as far as we can tell
//!   (procmail does this when a recipe discards mail): only the exit status
//!   counts.
//! * Each run has a time limit; then the command and everything it started
//!   (it runs in its own process group) are killed with SIGKILL, and the
//!   message counts as a temporary failure.
//! * The end of stdin is only ever signalled after the whole message was
//!   written. A message that cannot be completed (the source connection
//!   broke) kills the command with SIGKILL *before* its stdin is closed, so
//!   it never mistakes a truncated message for a complete one. An MDA that
//!   already wrote part of its input somewhere cannot be undone, which is
//!   why this order matters.
//! * If the command uses `%T` and there are several recipients, it runs once
//!   per recipient; the message is then spooled to a private file while it
//!   streams in, and each run reads that file (memory stays bounded).
//!   Otherwise the message streams straight into the command once its
//!   header block (which `%F` may need) is complete.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::envelope::HeaderCapture;
use super::line_ends::ToLf;
use super::spool::SpoolFile;
use super::{Acceptance, AlreadyDurable, Delivered, MessageWriter, Rejection, Sink};
use crate::address::Sender;
use crate::config::{EnvelopeFrom, MdaTarget};
use crate::error::{Error, Kind};

/// sysexits.h `EX_TEMPFAIL`: "try again later".
const EX_TEMPFAIL: i32 = 75;

/// How much of a command's stderr is kept (its end, where the reason is).
const STDERR_TAIL: usize = 4096;

/// Converted data is handed to the command or the spool file in pieces of
/// about this size.
const CHUNK: usize = 64 * 1024;

/// How long to wait for a command's stderr to reach EOF after the command
/// exited: a background process it left behind may hold the pipe open.
const STDERR_GRACE: Duration = Duration::from_secs(2);

/// Replaces `%T`, `%F` and `%%` in one word; other `%` sequences stay as
/// they are. With `quote`, substituted values are single-quoted for a
/// shell script.
fn substitute(word: &str, recipient: &str, sender: &str, quote: bool) -> String {
    let value = |text: &str| {
        if quote {
            format!("'{}'", text.replace('\'', r"'\''"))
        } else {
            text.to_owned()
        }
    };
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('T') => out.push_str(&value(recipient)),
            Some('F') => out.push_str(&value(sender)),
            Some('%') => out.push('%'),
            _ => {
                out.push('%');
                continue;
            }
        }
        chars.next();
    }
    out
}

/// Whether a word mentions `%T` (not `%%T`).
fn mentions_recipient(word: &str) -> bool {
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        // The character after a '%' is consumed, so `%%T` is no `%T`.
        if c == '%' && chars.next() == Some('T') {
            return true;
        }
    }
    false
}

/// The index of the script word when the command is a shell running a
/// script (`sh -c SCRIPT`, `bash -ec SCRIPT`…): values substituted there
/// must be quoted for that shell.
fn shell_script_index(words: &[String]) -> Option<usize> {
    let program = Path::new(words.first()?).file_name()?.to_str()?;
    let shell = matches!(
        program,
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash"
    );
    let flags = words.get(1)?;
    let runs_script = flags.len() > 1
        && flags.starts_with('-')
        && flags[1..].chars().all(|c| c.is_ascii_alphabetic())
        && flags.contains('c');
    (shell && runs_script && words.len() > 2).then_some(2)
}

/// What every run of the command needs to know.
#[derive(Debug, Clone)]
struct Plan {
    words: Vec<String>,
    script: Option<usize>,
    recipients: Vec<String>,
    envelope_from: EnvelopeFrom,
    timeout: Duration,
    /// The command as configured, for messages.
    label: String,
}

impl Plan {
    fn argv(&self, recipient: &str, sender: &str) -> Vec<String> {
        self.words
            .iter()
            .enumerate()
            .map(|(i, word)| substitute(word, recipient, sender, self.script == Some(i)))
            .collect()
    }

    /// The envelope sender for `%F`, empty for the null sender.
    fn sender(&self, capture: &HeaderCapture) -> String {
        let sender = match &self.envelope_from {
            EnvelopeFrom::Fixed(sender) => Some(sender.clone()),
            EnvelopeFrom::ReturnPath => capture.return_path(),
        };
        match sender {
            // A leading '-' could make the address an option of the
            // command (`sendmail -oi %F`); such senders are not passed on.
            Some(Sender::Address(address)) if address.starts_with('-') => {
                warn!("ignoring envelope sender {address:?}: it looks like a command-line option");
                String::new()
            }
            Some(sender) => sender.address().to_owned(),
            None => String::new(),
        }
    }

    /// The recipients to run the command for: one run with no `%T`.
    fn runs(&self) -> Vec<String> {
        if self.words.iter().any(|w| mentions_recipient(w)) && !self.recipients.is_empty() {
            self.recipients.clone()
        } else {
            vec![self.recipients.first().cloned().unwrap_or_default()]
        }
    }
}

pub struct MdaSink {
    plan: Arc<Plan>,
    spool_dir: PathBuf,
}

impl MdaSink {
    /// A sink running `target.command` for each message.
    pub fn new(
        target: MdaTarget,
        recipients: Vec<String>,
        envelope_from: EnvelopeFrom,
        spool_dir: PathBuf,
    ) -> MdaSink {
        let words = target.command.words().to_vec();
        let plan = Arc::new(Plan {
            script: shell_script_index(&words),
            words,
            recipients,
            envelope_from,
            timeout: target.timeout,
            label: target.command.to_string(),
        });
        MdaSink { plan, spool_dir }
    }

    fn begin_with(&self, plan: Arc<Plan>) -> Result<MdaWriter, Error> {
        let dest = if plan.runs().len() > 1 {
            // Several runs need the message several times.
            Dest::Spool(SpoolFile::create(&self.spool_dir, "mda").map_err(|err| {
                Error::new(
                    Kind::Delivery,
                    format!(
                        "cannot create a spool file in {}: {err}",
                        self.spool_dir.display()
                    ),
                )
            })?)
        } else {
            Dest::Waiting
        };
        Ok(MdaWriter {
            plan,
            capture: HeaderCapture::new(),
            lf: ToLf::default(),
            buffer: Vec::with_capacity(CHUNK + CHUNK / 8),
            size: 0,
            dest,
        })
    }
}

/// The last bytes a command wrote to stderr.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > STDERR_TAIL {
            self.bytes.drain(..self.bytes.len() - STDERR_TAIL);
        }
    }

    /// The last few non-empty lines, joined for a one-line message.
    fn summary(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }
}

/// How one run of the command ended.
enum Outcome {
    Exited(ExitStatus, String),
    TimedOut(String),
}

/// One running command.
struct Run {
    child: Child,
    /// `None` once closed (after the whole message) or once the command
    /// stopped reading.
    stdin: Option<ChildStdin>,
    /// The command's process group (its pid: it leads its own group).
    pgid: Option<i32>,
    stderr: Arc<Mutex<Tail>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    deadline: Instant,
    timed_out: bool,
    /// Reaped: its pid (and group id) may belong to someone else now.
    reaped: bool,
}

impl Run {
    fn spawn(argv: &[String], timeout: Duration) -> io::Result<Run> {
        debug!("running MDA {argv:?}");
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group, so a timeout kills what it started too.
            .process_group(0)
            .kill_on_drop(true);
        // ETXTBSY: the program file is open for writing somewhere, e.g. by
        // an upgrade replacing it, or inherited for an instant by a child
        // another thread is forking. It passes within milliseconds.
        let mut busy_retries = [1, 4, 16, 64].into_iter();
        let mut child = loop {
            match command.spawn() {
                Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => {
                    let Some(pause) = busy_retries.next() else {
                        return Err(err);
                    };
                    std::thread::sleep(Duration::from_millis(pause));
                }
                spawned => break spawned?,
            }
        };
        let pgid = child.id().map(|pid| pid as i32);
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(Tail::default()));
        let stderr_task = {
            let tail = stderr.clone();
            let pipe = child.stderr.take();
            tokio::spawn(async move {
                let Some(mut pipe) = pipe else { return };
                let mut buf = vec![0; 4096];
                while let Ok(read @ 1..) = pipe.read(&mut buf).await {
                    tail.lock().unwrap().push(&buf[..read]);
                }
            })
        };
        Ok(Run {
            child,
            stdin,
            pgid,
            stderr,
            stderr_task: Some(stderr_task),
            deadline: Instant::now() + timeout,
            timed_out: false,
            reaped: false,
        })
    }

    /// Hands data to the command. A command that stopped reading is not an
    /// error here (its exit status decides); one that does not read in time
    /// is killed.
    async fn write(&mut self, data: &[u8]) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        match tokio::time::timeout_at(self.deadline, stdin.write_all(data)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                debug!("the MDA stopped reading its input: {err}");
                self.stdin = None;
            }
            Err(_) => {
                self.timed_out = true;
                self.kill();
                self.stdin = None;
            }
        }
    }

    /// Closes stdin (the message is complete) and waits for the exit.
    async fn finish(mut self) -> Outcome {
        if let Some(mut stdin) = self.stdin.take() {
            // Flushes tokio's side; then dropping closes the pipe.
            let _ = tokio::time::timeout_at(self.deadline, stdin.shutdown()).await;
        }
        let status = if self.timed_out {
            None
        } else {
            tokio::time::timeout_at(self.deadline, self.child.wait())
                .await
                .ok()
        };
        let status = match status {
            Some(Ok(status)) => Some(status),
            Some(Err(err)) => {
                warn!("cannot wait for the MDA: {err}");
                None
            }
            None => {
                self.timed_out = true;
                None
            }
        };
        if status.is_none() {
            self.kill();
            let _ = self.child.wait().await;
        }
        self.reaped = true;
        if let Some(mut task) = self.stderr_task.take()
            && tokio::time::timeout(STDERR_GRACE, &mut task).await.is_err()
        {
            debug!("the MDA left a process holding its stderr open");
            task.abort();
        }
        let stderr = self.stderr.lock().unwrap().summary();
        match status {
            Some(status) if !self.timed_out => Outcome::Exited(status, stderr),
            _ => Outcome::TimedOut(stderr),
        }
    }

    /// SIGKILLs the command's whole process group, unless it was reaped.
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        if let Some(pgid) = self.pgid {
            // SAFETY: plain syscall; the group is ours as long as its
            // leader has not been reaped.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Run {
    /// An unfinished run (the message was aborted) dies before its stdin is
    /// closed (fields drop after this), so it never sees a truncated message
    /// end normally.
    fn drop(&mut self) {
        self.kill();
        if let Some(task) = &self.stderr_task {
            task.abort();
        }
    }
}

/// Where a message goes while it streams in.
enum Dest {
    /// Header block not complete yet: converted bytes wait in the buffer.
    Waiting,
    Running(Box<Run>),
    /// The command could not be started; the rest is thrown away and
    /// `finish` reports the error.
    Failed(io::Error),
    Spool(SpoolFile),
}

pub struct MdaWriter {
    plan: Arc<Plan>,
    capture: HeaderCapture,
    lf: ToLf,
    buffer: Vec<u8>,
    size: u64,
    dest: Dest,
}

impl MdaWriter {
    fn start(&mut self) {
        let sender = self.plan.sender(&self.capture);
        let recipient = self.plan.runs().swap_remove(0);
        let argv = self.plan.argv(&recipient, &sender);
        self.dest = match Run::spawn(&argv, self.plan.timeout) {
            Ok(run) => Dest::Running(Box::new(run)),
            Err(err) => Dest::Failed(err),
        };
    }

    async fn drain(&mut self) -> io::Result<()> {
        match &mut self.dest {
            Dest::Waiting => return Ok(()),
            Dest::Running(run) => run.write(&self.buffer).await,
            Dest::Failed(_) => {}
            Dest::Spool(file) => file.write_all(&self.buffer)?,
        }
        self.buffer.clear();
        Ok(())
    }
}

impl MessageWriter for MdaWriter {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.capture.feed(chunk);
        let before = self.buffer.len();
        self.lf.convert(chunk, &mut self.buffer);
        self.size += (self.buffer.len() - before) as u64;
        if matches!(self.dest, Dest::Waiting) && self.capture.is_complete() {
            self.start();
        }
        if self.buffer.len() >= CHUNK {
            self.drain().await?;
        }
        Ok(())
    }
}

impl Sink for MdaSink {
    type Writer = MdaWriter;
    type Staged = Delivered;
    type Committer = AlreadyDurable;

    fn describe(&self) -> String {
        format!("mda {}", self.plan.label)
    }

    async fn begin(&mut self) -> Result<MdaWriter, Error> {
        self.begin_with(Arc::clone(&self.plan))
    }

    async fn begin_to(&mut self, recipients: &[String]) -> Result<MdaWriter, Error> {
        let plan = Plan {
            recipients: recipients.to_vec(),
            ..Plan::clone(&self.plan)
        };
        self.begin_with(Arc::new(plan))
    }
    async fn finish(&mut self, mut writer: MdaWriter) -> Result<Acceptance<Delivered>, Error> {
        let before = writer.buffer.len();
        writer.lf.end(&mut writer.buffer);
        writer.size += (writer.buffer.len() - before) as u64;
        if matches!(writer.dest, Dest::Waiting) {
            // A message without a blank line after its header block.
            writer.start();
        }
        let plan = writer.plan.clone();
        let spool_error =
            |err: io::Error| Error::new(Kind::Delivery, format!("cannot spool the message: {err}"));
        writer.drain().await.map_err(spool_error)?;
        let sender = plan.sender(&writer.capture);
        let mut outcomes = Vec::new();
        match std::mem::replace(&mut writer.dest, Dest::Waiting) {
            Dest::Waiting => unreachable!("started above"),
            Dest::Failed(err) => return Err(cannot_run(&plan, &err)),
            Dest::Running(run) => outcomes.push((plan.runs().swap_remove(0), run.finish().await)),
            Dest::Spool(file) => {
                for recipient in plan.runs() {
                    let argv = plan.argv(&recipient, &sender);
                    let mut run =
                        Run::spawn(&argv, plan.timeout).map_err(|err| cannot_run(&plan, &err))?;
                    let mut reader = file.reader().map_err(spool_error)?;
                    let mut buf = vec![0; CHUNK];
                    loop {
                        let read = reader.read(&mut buf).await.map_err(spool_error)?;
                        if read == 0 || run.stdin.is_none() {
                            break;
                        }
                        run.write(&buf[..read]).await;
                    }
                    outcomes.push((recipient, run.finish().await));
                }
            }
        }
        Ok(judge(&plan, outcomes, &writer))
    }

    fn abort(&mut self, writer: MdaWriter) {
        // Dropping the run kills the command before closing its stdin;
        // dropping the spool file removes it.
        drop(writer);
    }

    fn committer(&self) -> AlreadyDurable {
        AlreadyDurable
    }
}

fn cannot_run(plan: &Plan, err: &io::Error) -> Error {
    Error::new(
        Kind::Delivery,
        format!("cannot run the MDA {:?}: {err}", plan.label),
    )
}

/// The verdict on a message from how each run ended: delivered if every
/// run exited 0; else a temporary failure if any run failed temporarily,
/// else refused for good; and when some runs succeeded, partly delivered
/// to their recipients (so that a retry skips them).
fn judge(
    plan: &Plan,
    outcomes: Vec<(String, Outcome)>,
    writer: &MdaWriter,
) -> Acceptance<Delivered> {
    let several = outcomes.len() > 1;
    let mut temporary = Vec::new();
    let mut permanent = Vec::new();
    let mut delivered_to = Vec::new();
    for (recipient, outcome) in outcomes {
        let who = if several {
            format!("MDA {:?} for {recipient}", plan.label)
        } else {
            format!("MDA {:?}", plan.label)
        };
        let with_stderr = |text: String, stderr: &str| {
            if stderr.is_empty() {
                text
            } else {
                format!("{text}: {stderr}")
            }
        };
        match outcome {
            Outcome::Exited(status, stderr) if status.success() => {
                if !stderr.is_empty() {
                    debug!("{who} said: {stderr}");
                }
                delivered_to.push(recipient);
            }
            Outcome::Exited(status, stderr) if status.code() == Some(EX_TEMPFAIL) => {
                let text = with_stderr(
                    format!("{who} exited with status 75 (temporary failure)"),
                    &stderr,
                );
                warn!("{text}");
                temporary.push(text);
            }
            Outcome::Exited(status, stderr) => {
                let how = match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exited with status {code}"),
                    (None, Some(signal)) => format!("was killed by signal {signal}"),
                    (None, None) => format!("ended with {status}"),
                };
                let text = with_stderr(format!("{who} {how}"), &stderr);
                warn!("{text}");
                permanent.push(text);
            }
            Outcome::TimedOut(stderr) => {
                let text = with_stderr(
                    format!(
                        "{who} did not finish within {} s and was killed",
                        plan.timeout.as_secs()
                    ),
                    &stderr,
                );
                warn!("{text}");
                temporary.push(text);
            }
        }
    }
    let failure = if !temporary.is_empty() {
        Acceptance::TemporaryFailure(temporary.join("; "))
    } else if !permanent.is_empty() {
        Acceptance::PermanentFailure(Rejection {
            reason: permanent.join("; "),
            sender: match writer.capture.return_path() {
                Some(Sender::Address(address)) => Some(address),
                _ => None,
            },
            headers: writer.capture.headers().to_vec(),
        })
    } else {
        return Acceptance::Accepted(Delivered { size: writer.size });
    };
    if several && !delivered_to.is_empty() {
        Acceptance::Partial {
            delivered_to,
            failure: Box::new(failure),
        }
    } else {
        failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        crate::cmdline::split_words(text).unwrap()
    }

    #[test]
    fn substitution_replaces_only_known_escapes() {
        assert_eq!(substitute("-f%F", "bob", "a@b", false), "-fa@b");
        assert_eq!(substitute("%T@%F", "bob", "a@b", false), "bob@a@b");
        assert_eq!(substitute("100%%T", "bob", "a@b", false), "100%T");
        assert_eq!(substitute("%x%", "bob", "a@b", false), "%x%");
        assert_eq!(substitute("%F", "bob", "", false), "");
        assert!(mentions_recipient("-d %T"));
        assert!(!mentions_recipient("100%%T"));
        assert!(mentions_recipient("%%%T"));
    }

    #[test]
    fn values_in_a_shell_script_are_single_quoted() {
        assert_eq!(shell_script_index(&words("sh -c 'x'")), Some(2));
        assert_eq!(
            shell_script_index(&words("/bin/bash -ec 'x' name")),
            Some(2)
        );
        assert_eq!(shell_script_index(&words("procmail -c x")), None);
        assert_eq!(shell_script_index(&words("sh script.sh")), None);
        assert_eq!(
            substitute("deliver -f %F", "bob", "o'brien@x", true),
            r"deliver -f 'o'\''brien@x'"
        );
        let plan = Plan {
            words: words("sh -c 'deliver --to %T --from %F' %F"),
            script: Some(2),
            recipients: vec!["bob".into()],
            envelope_from: EnvelopeFrom::ReturnPath,
            timeout: Duration::from_secs(1),
            label: String::new(),
        };
        assert_eq!(
            plan.argv("bob", "a@b"),
            ["sh", "-c", "deliver --to 'bob' --from 'a@b'", "a@b"]
        );
        // The null sender stays one (empty) word in the script.
        assert_eq!(plan.argv("bob", "")[2], "deliver --to 'bob' --from ''");
    }

    #[test]
    fn hostile_return_paths_never_reach_the_command_line() {
        let plan = |from| Plan {
            words: words("procmail -f %F"),
            script: None,
            recipients: vec!["bob".into()],
            envelope_from: from,
            timeout: Duration::from_secs(1),
            label: String::new(),
        };
        let sender = |headers: &str| {
            let mut capture = HeaderCapture::new();
            capture.feed(headers.as_bytes());
            plan(EnvelopeFrom::ReturnPath).sender(&capture)
        };
        assert_eq!(
            sender("Return-Path: <alice@example.org>\r\n\r\n"),
            "alice@example.org"
        );
        assert_eq!(sender("Return-Path: <$(reboot)@x>\r\n\r\n"), "");
        assert_eq!(sender("Return-Path: <a@b>; rm -rf /\r\n\r\n"), "");
        assert_eq!(sender("Return-Path: <-oQ/tmp/x@evil>\r\n\r\n"), "");
        assert_eq!(sender("Return-Path: <>\r\n\r\n"), "");
        assert_eq!(sender("From: x@y\r\n\r\n"), "");
        let fixed = plan(EnvelopeFrom::Fixed(Sender::Address("me@here".into())));
        assert_eq!(fixed.sender(&HeaderCapture::new()), "me@here");
    }

    #[test]
    fn one_run_per_recipient_only_with_percent_t() {
        let plan = |command: &str, recipients: &[&str]| Plan {
            words: words(command),
            script: None,
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            envelope_from: EnvelopeFrom::ReturnPath,
            timeout: Duration::from_secs(1),
            label: String::new(),
        };
        assert_eq!(plan("deliver %T", &["a", "b"]).runs(), ["a", "b"]);
        assert_eq!(plan("deliver", &["a", "b"]).runs(), ["a"]);
        assert_eq!(plan("deliver %T", &[]).runs(), [""]);
    }

    #[test]
    fn stderr_keeps_the_last_lines() {
        let mut tail = Tail::default();
        tail.push(&vec![b'x'; 10_000]);
        tail.push(b"\none\n\n two \nthree\n");
        assert_eq!(tail.bytes.len(), STDERR_TAIL);
        assert!(tail.summary().ends_with("one / two / three"));
    }
}
