//! Faults a real server (Dovecot) cannot be made to produce, played by the
//! in-tree fake POP3 server against the real `mailfetch` binary.
//!
//! Each test asserts what a user must be able to rely on: the exit code,
//! what is in `Maildir/new` and `tmp`, what the server deleted, and what the
//! next run does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use testkit::fake_pop3::{FakePop3, Fault, Message, PASSWORD, Script, XOAUTH2_TOKEN};
use testkit::run::{Case, Outcome, RUN_LIMIT, files_in};

/// What these tests read from a [`Case`] against the fake POP3 server.
trait Pop3Case {
    fn new(server: &FakePop3) -> Self;
    fn delivered(&self) -> Vec<Vec<u8>>;
    fn tmp_files(&self) -> Vec<PathBuf>;
}

impl Pop3Case for Case {
    fn new(server: &FakePop3) -> Case {
        Case::account("pop3", server.port(), PASSWORD, "10s")
    }

    /// Contents of `new/`, with the prepended `Received:` header checked and
    /// removed, sorted.
    fn delivered(&self) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = files_in(&self.maildir().join("new"))
            .iter()
            .map(|path| strip_received(&fs::read(path).unwrap(), path))
            .collect();
        all.sort();
        all
    }

    fn tmp_files(&self) -> Vec<PathBuf> {
        files_in(&self.maildir().join("tmp"))
    }
}

/// The message without the `Received:` header mailfetch puts in front
/// (a first line and its continuation lines).
fn strip_received(content: &[u8], path: &Path) -> Vec<u8> {
    assert!(
        content.starts_with(b"Received: "),
        "{} does not start with Received:",
        path.display()
    );
    let mut rest = content;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .expect("unterminated header")
            + 1;
        rest = &rest[end..];
        if !rest.starts_with(b"\t") && !rest.starts_with(b" ") {
            return rest.to_vec();
        }
    }
}

/// How a message must look in the Maildir (minus the Received: header).
fn local(message: &Message) -> Vec<u8> {
    String::from_utf8(message.data.clone())
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes()
}

fn expected(messages: &[&Message]) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = messages.iter().map(|m| local(m)).collect();
    all.sort();
    all
}

/// A plausible message of about `size` bytes.
fn message(n: usize, size: usize) -> Message {
    let mut text = format!(
        "From: Bob <bob@example.org>\nTo: alice@example.org\nSubject: message {n}\nMessage-ID: <{n}.fake@example.org>\n\n"
    );
    let mut line = 0;
    while text.len() < size {
        line += 1;
        text.push_str(&format!(
            "message {n}, line {line}: the quick brown fox jumps over the lazy dog\n"
        ));
    }
    Message::new(&format!("uid-{n}"), &text)
}

fn messages(count: usize) -> Vec<Message> {
    (1..=count).map(|n| message(n, 600 + 300 * n)).collect()
}

fn has(commands: &[String], command: &str) -> bool {
    commands.iter().any(|c| c == command)
}

/// The RETR commands of one session.
fn retrs(server: &FakePop3, session: usize) -> Vec<String> {
    let sessions = server.sessions();
    sessions[session]
        .iter()
        .filter(|c| c.starts_with("RETR"))
        .cloned()
        .collect()
}

fn uids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn healthy_server_delivers_and_deletes_everything() {
    let mail = messages(3);
    let server = FakePop3::start(mail.clone(), Script::default());
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    assert!(case.tmp_files().is_empty());
    assert_eq!(server.deleted(), uids(&["uid-1", "uid-2", "uid-3"]));
    assert!(server.mailbox().is_empty());
    assert!(run.stderr.contains("3 new, 3 delivered"), "{run:?}");
}

/// The assertions shared by the two halves of the cut-mid-RETR scenario.
fn cut_mid_retr_first_run() -> (FakePop3, Case, Vec<Message>, Outcome) {
    let mail = vec![message(1, 2000), message(2, 4000), message(3, 1000)];
    let half = testkit::fake_pop3::stuff(&mail[1].data).len() / 2;
    let script = Script::default()
        .fault(Fault::CutRetr {
            message: 2,
            after: half,
        })
        .first_only();
    let server = FakePop3::start(mail.clone(), script);
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(case.delivered(), expected(&[&mail[0]]), "{run:?}");
    assert!(
        case.tmp_files().is_empty(),
        "partial message left in tmp/: {:?}",
        case.tmp_files()
    );
    assert!(server.deleted().is_empty());
    assert_eq!(server.mailbox().len(), 3);
    (server, case, mail, run)
}

#[test]
fn cut_mid_retr_keeps_complete_messages_and_resumes() {
    let (server, case, mail, first) = cut_mid_retr_first_run();
    assert!(first.stderr.contains("closed"), "{first:?}");

    let second = case.run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    assert!(case.tmp_files().is_empty());
    let session = &server.sessions()[1];
    assert!(
        !has(session, "RETR 1"),
        "message 1 fetched again: {session:?}"
    );
    assert!(
        has(session, "RETR 2") && has(session, "RETR 3"),
        "{session:?}"
    );
    assert!(has(session, "DELE 1"), "{session:?}");
    assert!(server.mailbox().is_empty());
}

#[test]
fn cut_mid_retr_exits_2() {
    let (_server, _case, _mail, first) = cut_mid_retr_first_run();
    assert_eq!(first.code, Some(2), "{first:?}");
}

#[test]
fn cut_mid_retr_summary_counts_the_bytes_delivered() {
    let (_server, _case, _mail, first) = cut_mid_retr_first_run();
    assert!(first.stderr.contains("1 delivered ("), "{first:?}");
    assert!(!first.stderr.contains("(0 B)"), "{first:?}");
}

#[test]
fn no_uidl_delete_mode_fetches_and_deletes_all() {
    let mail = messages(3);
    let server = FakePop3::start(mail.clone(), Script::default().fault(Fault::NoUidl));
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    assert_eq!(server.deleted().len(), 3);
    assert!(server.mailbox().is_empty());
}

#[test]
fn no_uidl_keep_mode_refuses() {
    let server = FakePop3::start(messages(3), Script::default().fault(Fault::NoUidl));
    let case = Case::new(&server).set("keep", "true");
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("UIDL"), "{run:?}");
    assert!(case.delivered().is_empty());
    assert!(
        !server.transcript().iter().any(|c| c.starts_with("RETR")),
        "{:?}",
        server.transcript()
    );
    assert!(server.deleted().is_empty());
}

#[test]
fn pipelining_is_used_when_offered() {
    let mail = messages(6);
    let server = FakePop3::start(mail.clone(), Script::default());
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered().len(), 6);
    let overlaps = server.overlaps();
    assert!(
        overlaps.iter().any(|c| c.starts_with("RETR")),
        "no RETR was pipelined: {overlaps:?}"
    );
}

fn no_pipelining_run() -> FakePop3 {
    let mail = messages(6);
    let server = FakePop3::start(mail.clone(), Script::default().fault(Fault::NoPipelining));
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    assert!(server.mailbox().is_empty());
    server
}

#[test]
fn no_pipelining_delivers_everything() {
    no_pipelining_run();
}

#[test]
fn no_pipelining_one_command_at_a_time() {
    let server = no_pipelining_run();
    assert_eq!(
        server.overlaps(),
        Vec::<String>::new(),
        "commands sent before the previous reply was complete"
    );
}

fn assert_no_credentials(server: &FakePop3) {
    for command in server.transcript() {
        let verb = command.split(' ').next().unwrap().to_ascii_uppercase();
        assert!(
            !["USER", "PASS", "AUTH", "APOP"].contains(&verb.as_str()),
            "sent {command:?} before TLS"
        );
        assert!(!command.contains(PASSWORD));
    }
}

#[test]
fn starttls_without_stls_in_capa_exits_2_without_credentials() {
    let server = FakePop3::start(messages(1), Script::default().fault(Fault::NoStls));
    let case = Case::new(&server).set("tls", "\"starttls\"");
    let run = case.run();
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_no_credentials(&server);
    assert!(case.delivered().is_empty());
}

#[test]
fn starttls_refused_by_server_exits_2_without_credentials() {
    // STLS is announced, but the fake answers it with -ERR.
    let server = FakePop3::start(messages(1), Script::default());
    let case = Case::new(&server).set("tls", "\"starttls\"");
    let run = case.run();
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        has(&server.transcript(), "STLS"),
        "{:?}",
        server.transcript()
    );
    assert_no_credentials(&server);
}

#[test]
fn plaintext_injected_after_stls_is_refused_before_credentials() {
    let server = FakePop3::start(messages(1), Script::default().fault(Fault::StlsInjection));
    let case = Case::new(&server).set("tls", "\"starttls\"");
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("before the TLS handshake"), "{run:?}");
    assert_no_credentials(&server);
    assert!(case.delivered().is_empty());
}

#[test]
fn malformed_uidl_line_exits_4() {
    let server = FakePop3::start(messages(3), Script::default().fault(Fault::GarbageUidlLine));
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(case.delivered().is_empty());
    assert!(server.deleted().is_empty());
    assert_eq!(server.mailbox().len(), 3);
}

#[test]
fn garbage_greeting_exits_4() {
    let server = FakePop3::start(messages(1), Script::default().fault(Fault::GarbageGreeting));
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(server.transcript().is_empty(), "{:?}", server.transcript());
}

#[test]
fn over_long_line_exits_4_quickly() {
    let server = FakePop3::start(
        messages(2),
        Script::default().fault(Fault::LongLine(100 * 1024)),
    );
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(server.deleted().is_empty());
}

#[test]
fn retr_refused_for_one_message_delivers_the_others() {
    let mail = messages(3);
    let server = FakePop3::start(mail.clone(), Script::default().fault(Fault::RetrErr(2)));
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&[&mail[0], &mail[2]]));
    assert_eq!(server.deleted(), uids(&["uid-1", "uid-3"]));
    assert_eq!(server.mailbox(), uids(&["uid-2"]));
    assert!(run.stderr.contains("1 refused by the server"), "{run:?}");
}

#[test]
fn stall_at_retr_times_out_with_7() {
    let server = FakePop3::start(messages(3), Script::default().fault(Fault::StallRetr(1)));
    let case = Case::new(&server).set("timeout", "\"1s\"");
    let run = case.run();
    assert_eq!(run.code, Some(7), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(server.stalled());
    assert!(case.delivered().is_empty());
    assert!(server.deleted().is_empty());
}

#[test]
fn sink_failure_exits_10_and_deletes_nothing() {
    let server = FakePop3::start(messages(2), Script::default());
    let case = Case::new(&server);
    fs::create_dir_all(case.maildir()).unwrap();
    fs::write(case.maildir().join("tmp"), "not a directory").unwrap();
    let run = case.run();
    assert_eq!(run.code, Some(10), "{run:?}");
    assert!(server.deleted().is_empty());
    assert_eq!(server.mailbox().len(), 2);
    assert!(!server.transcript().iter().any(|c| c.starts_with("DELE")));
}

#[test]
fn keep_mode_fetches_only_new_messages() {
    let mail = messages(5);
    let server = FakePop3::start(mail[..3].to_vec(), Script::default());
    let case = Case::new(&server).set("keep", "true");

    let first = case.run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(case.delivered(), expected(&[&mail[0], &mail[1], &mail[2]]));

    let second = case.run();
    assert_eq!(second.code, Some(1), "{second:?}");
    assert_eq!(case.delivered().len(), 3);
    assert!(
        !server.sessions()[1].iter().any(|c| c.starts_with("RETR")),
        "{:?}",
        server.sessions()[1]
    );

    server.add(mail[3].clone());
    server.add(mail[4].clone());
    let third = case.run();
    assert_eq!(third.code, Some(0), "{third:?}");
    assert_eq!(retrs(&server, 2), ["RETR 4", "RETR 5"]);
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));

    // A message removed from the server is pruned; nothing breaks and
    // nothing is fetched again (message numbers shift, UIDs do not).
    server.remove("uid-2");
    let fourth = case.run();
    assert_eq!(fourth.code, Some(1), "{fourth:?}");
    assert!(
        !server.sessions()[3].iter().any(|c| c.starts_with("RETR")),
        "{:?}",
        server.sessions()[3]
    );
    server.add(message(6, 700));
    let fifth = case.run();
    assert_eq!(fifth.code, Some(0), "{fifth:?}");
    assert_eq!(retrs(&server, 4), ["RETR 5"]);
    assert_eq!(case.delivered().len(), 6);
    assert!(server.deleted().is_empty());
}

#[test]
fn dot_stuffed_lines_arrive_intact() {
    let tricky = Message::new(
        "uid-dots",
        "From: a@example.org\nSubject: dots\n\n.leading dot\n..two dots\n.\n...\n. space\nend.\n.\n",
    );
    let mail = vec![message(1, 500), tricky.clone(), message(3, 500)];
    let server = FakePop3::start(mail.clone(), Script::default());
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
}

#[test]
fn password_never_in_logs() {
    let password = "hunter2-Xyzzy-91";
    let server = FakePop3::start(
        messages(2),
        Script {
            password: password.into(),
            ..Script::default()
        },
    );
    let case = Case::new(&server).set("password", &format!("\"{password}\""));
    let run = case.run_with(&["-v"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(has(&server.transcript(), &format!("PASS {password}")));
    assert!(
        !run.stdout.contains(password) && !run.stderr.contains(password),
        "{run:?}"
    );
    assert!(run.stderr.contains("PASS ****"), "{run:?}");
}

#[test]
fn wrong_password_exits_3() {
    let server = FakePop3::start(messages(2), Script::default());
    let case = Case::new(&server).set("password", "\"wrong\"");
    let run = case.run();
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(case.delivered().is_empty());
    assert_eq!(server.mailbox().len(), 2);
}

/// Runs mailfetch against a server that stalls at RETR `stall`, SIGKILLs it
/// once everything before that message was sent, then runs it again
/// against the (now healthy) server: every message must be in new/ exactly
/// once and none truncated.
/// With `published`, the kill waits until that many messages are in new/.
fn sigkill_then_rerun(mail: &[Message], stall: usize, published: usize) -> (FakePop3, Case) {
    let script = Script::default()
        .fault(Fault::StallRetr(stall))
        .first_only();
    let server = FakePop3::start(mail.to_vec(), script);
    let case = Case::new(&server).set("timeout", "\"60s\"");
    let mut child = case.spawn(&[]);
    let started = Instant::now();
    while !server.stalled() {
        assert!(
            started.elapsed() < RUN_LIMIT,
            "the server never got to RETR {stall}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "mailfetch exited early"
        );
        thread::sleep(Duration::from_millis(10));
    }
    // The earlier messages are on the wire; give mailfetch time to take them in.
    thread::sleep(Duration::from_millis(500));
    while files_in(&case.maildir().join("new")).len() < published {
        assert!(
            started.elapsed() < RUN_LIMIT,
            "mailfetch never published {published} messages"
        );
        thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(server.deleted().is_empty());
    let all = expected(&mail.iter().collect::<Vec<_>>());
    for file in files_in(&case.maildir().join("new")) {
        let content = strip_received(&fs::read(&file).unwrap(), &file);
        assert!(all.contains(&content), "truncated: {}", file.display());
    }

    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), all);
    assert!(server.mailbox().is_empty());
    (server, case)
}

#[test]
fn sigkill_mid_session_then_rerun_delivers_each_message_once() {
    sigkill_then_rerun(&messages(3), 3, 0);
}

#[test]
fn sigkill_after_a_committed_batch_then_rerun_delivers_each_message_once() {
    // More than one commit batch (256 messages) before the stall; the kill
    // comes right after the first batch is published.
    let mail: Vec<Message> = (1..=300).map(|n| message(n, 300)).collect();
    let (server, _case) = sigkill_then_rerun(&mail, 290, 256);
    assert_eq!(
        retrs(&server, 1).len(),
        300 - 256,
        "the published batch was fetched again"
    );
}

/// A sender ends a line with a bare LF and puts `.` CRLF after it, which a
/// server that stuffs only after CRLF passes on as it is. The message must
/// not end there: the rest would be read as the next replies, and a later
/// poll would delete a message whose content was never delivered.
#[test]
fn a_bare_lf_terminator_does_not_end_a_message_early() {
    let evil = Message {
        uid: "uid-evil".into(),
        data:
            b"From: x@example.org\r\nSubject: evil\r\n\r\nhello\n.\r\n+OK 1 octets\r\nsmuggled\r\n"
                .to_vec(),
    };
    let mail = vec![evil, message(2, 900)];
    let server = FakePop3::start(
        mail.clone(),
        Script::default().fault(Fault::StuffOnlyAfterCrlf),
    );
    let case = Case::new(&server);
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    assert!(server.mailbox().is_empty());
}

/// A cron job that crashes at every poll must not fill the disk: each
/// start removes what the killed runs before it left in `tmp/` (a whole
/// batch of messages in flight, each time). After every kill, only the
/// files of the run just killed are there; a clean run then delivers
/// every message exactly once, none truncated, and leaves `tmp/` empty.
#[test]
fn a_crash_loop_leaves_only_the_last_runs_files() {
    const KILLS: u64 = 25;
    let mail: Vec<Message> = (1..=600).map(|n| message(n, 8_000)).collect();
    let server = FakePop3::start(mail.clone(), Script::default());
    let case = Case::new(&server);
    let tmp = case.maildir().join("tmp");
    let retrs = || {
        server
            .transcript()
            .iter()
            .filter(|c| c.starts_with("RETR"))
            .count()
    };
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..KILLS {
        let before = retrs();
        let mut child = case.spawn(&[]);
        let pid = child.id();
        let started = Instant::now();
        while retrs() == before && child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < RUN_LIMIT, "no RETR");
            thread::sleep(Duration::from_millis(1));
        }
        // Somewhere in the download, the commits, or the deletion.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        thread::sleep(Duration::from_millis(seed >> 56));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for file in files_in(&tmp) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.contains(&format!("P{pid}Q")),
                "{name} was left by an earlier run"
            );
        }
        if server.mailbox().is_empty() {
            break;
        }
    }
    let run = case.run();
    assert!(matches!(run.code, Some(0 | 1)), "{run:?}");
    assert!(files_in(&tmp).is_empty(), "{:?}", files_in(&tmp));
    for file in files_in(&case.maildir().join("new")) {
        let content = strip_received(&fs::read(&file).unwrap(), &file);
        assert!(
            mail.iter().any(|m| local(m) == content),
            "truncated: {}",
            file.display()
        );
    }
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    assert!(server.mailbox().is_empty());
}

/// The login commands of one session (APOP, USER, PASS, AUTH).
fn logins(server: &FakePop3, session: usize) -> Vec<String> {
    server.sessions()[session]
        .iter()
        .filter(|c| {
            ["APOP", "USER", "PASS", "AUTH"]
                .iter()
                .any(|v| c.starts_with(v))
        })
        .cloned()
        .collect()
}

#[test]
fn auto_falls_back_to_user_pass_when_the_advertised_apop_is_refused() {
    let mail = messages(2);
    let server = FakePop3::start(mail.clone(), Script::default().fault(Fault::ApopDisabled));
    let case = Case::new(&server).set("auth", "\"auto\"");
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    let tried = logins(&server, 0);
    assert!(tried[0].starts_with("APOP alice "), "{tried:?}");
    assert_eq!(tried[1..], ["USER alice", &format!("PASS {PASSWORD}")]);
    assert!(
        run.stderr
            .contains("logged in with USER/PASS after the server refused APOP"),
        "{run:?}"
    );
}

#[test]
fn auto_with_a_wrong_password_tries_two_methods_once_each() {
    let server = FakePop3::start(messages(2), Script::default().fault(Fault::ApopDisabled));
    let case = Case::new(&server)
        .set("auth", "\"auto\"")
        .set("password", "\"wrong\"");
    let run = case.run();
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(logins(&server, 0).len(), 3, "{:?}", server.sessions());
    assert_eq!(server.sessions().len(), 1);
    assert!(run.stderr.contains("(APOP, then USER/PASS)"), "{run:?}");
    assert!(!run.stderr.contains("wrong"), "{run:?}");
    assert_eq!(server.mailbox().len(), 2);
}

#[test]
fn a_server_trickling_a_message_is_dropped_within_twice_the_timeout() {
    let mail = vec![message(1, 50_000), message(2, 500)];
    let server = FakePop3::start(mail, Script::default().fault(Fault::TrickleRetr(1)));
    let case = Case::new(&server).set("timeout", "\"2s\"");
    let run = case.run();
    assert_eq!(run.code, Some(7), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(run.stderr.contains("sent only"), "{run:?}");
    assert!(case.delivered().is_empty());
    assert!(case.tmp_files().is_empty());
    assert!(server.deleted().is_empty());
}

/// A fault of mailfetch's own files is neither the server's nor the
/// destination's: a corrupt state journal exits 23 (fetchmail's "internal
/// error"), and nothing is fetched or deleted.
#[test]
fn a_corrupt_state_file_exits_23_and_touches_nothing() {
    let server = FakePop3::start(messages(2), Script::default());
    let case = Case::new(&server);
    let state_dir = case.scratch.path().join("state");
    fs::create_dir_all(&state_dir).unwrap();
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let journal = state_dir.join(format!("pop3%20alice@127.0.0.1%3A{}.state", server.port()));
    fs::write(&journal, "not a state file\n").unwrap();
    fs::set_permissions(&journal, fs::Permissions::from_mode(0o600)).unwrap();
    let run = case.run();
    assert_eq!(run.code, Some(23), "{run:?}");
    assert!(run.stderr.contains("line 1 is corrupt"), "{run:?}");
    assert!(case.delivered().is_empty());
    assert!(server.deleted().is_empty());
}

/// With several polls at once, every line must say which mailbox it is
/// about: what a poll logs carries its account, in text and in JSON.
#[test]
fn log_lines_of_a_poll_name_its_account() {
    let server = FakePop3::start(messages(2), Script::default().fault(Fault::RetrErr(1)));
    let case = Case::new(&server);
    let text = case.run();
    let line = text
        .stderr
        .lines()
        .find(|l| l.contains("server refused message 1"))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(line.contains("poll{account=fake}"), "{line}");

    let json = case.run_with(&["--log-format", "json"]);
    let line = json
        .stderr
        .lines()
        .find(|l| l.contains("server refused message 1"))
        .unwrap_or_else(|| panic!("{json:?}"));
    assert!(
        line.contains(r#""spans":[{"account":"fake","name":"poll"}]"#),
        "{line}"
    );
}

/// Microsoft's POP3 takes XOAUTH2 only in two steps and answers a bad token
/// with a JSON challenge: mailfetch sends the command alone, the payload
/// after the `+`, answers the challenge with an empty line and reports the
/// status.
#[test]
fn xoauth2_takes_two_steps_and_a_refused_token_reports_its_status() {
    let server = FakePop3::start(messages(1), Script::default());
    let case = Case::new(&server)
        .set("auth", "\"xoauth2\"")
        .set("password", &format!("\"{XOAUTH2_TOKEN}\""));
    let outcome = case.run();
    assert_eq!(outcome.code, Some(0), "{outcome:?}");
    assert_eq!(case.delivered().len(), 1);
    let commands = &server.sessions()[0];
    let auth = commands.iter().position(|c| c == "AUTH XOAUTH2");
    assert!(auth.is_some(), "{commands:?}");

    let expired = Case::new(&server)
        .set("auth", "\"xoauth2\"")
        .set("password", "\"expired-token\"");
    let outcome = expired.run();
    assert_eq!(outcome.code, Some(3), "{outcome:?}");
    assert!(
        outcome.stderr.contains("the token was refused: status 400"),
        "{outcome:?}"
    );
    assert!(!outcome.stderr.contains("expired-token"), "{outcome:?}");
    // The challenge was answered with an empty line.
    let commands = &server.sessions()[1];
    assert!(commands.iter().any(String::is_empty), "{commands:?}");
}
