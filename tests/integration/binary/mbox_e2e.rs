//! `deliver = "mbox:…"` end to end, from the fake POP3 server: the file
//! read back by real mbox readers (Python's `mailbox`, procmail's
//! `formail`), kills at random points and inside the locked append,
//! procmail appending to the same file at the same time, and a lock held
//! by another program.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use testkit::fake_pop3::{FakePop3, Message, PASSWORD, Script};
use testkit::require_program;
use testkit::run::{Case, RUN_LIMIT, files_in};

const INSTALL: &str = "apt-get install procmail python3";

fn mbox_case(server: &FakePop3) -> (Case, PathBuf) {
    let case = Case::account("pop3", server.port(), PASSWORD, "10s");
    let mbox = case.scratch.path().join("Mail/inbox");
    let case = case
        .set("deliver", &format!("\"mbox:{}\"", mbox.display()))
        .set("received_header", "false");
    (case, mbox)
}

/// A message whose body has every line an mbox must get right.
fn tricky(n: usize, size: usize) -> Message {
    let mut text = format!(
        "Return-Path: <sender{n}@example.org>\nFrom: S <sender{n}@example.org>\nSubject: {n}\n\
         Message-ID: <{n}@example.org>\n\nFrom the start of a line\n>From quoted once\n\
         >>From twice\nFrom\n From with a space\n"
    );
    let mut line = 0;
    while text.len() < size {
        line += 1;
        text.push_str(&format!("line {line} of message {n}, From somewhere\n"));
        if line % 7 == 0 {
            text.push_str("From again at the start\n");
        }
    }
    Message::new(&format!("uid-{n}"), &text)
}

/// The message as it must read back: LF line ends.
fn local(message: &Message) -> Vec<u8> {
    String::from_utf8(message.data.clone())
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes()
}

/// Undoes mboxrd quoting: one `>` less on lines that are `>+From `.
fn unquote(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let quotes = line.iter().take_while(|&&b| b == b'>').count();
        if quotes > 0 && line[quotes..].starts_with(b"From ") {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// The mbox as Python's `mailbox.mbox` reads it: each message's `From `
/// line (without `From `) and its bytes, unquoted.
fn read_with_python(python: &Path, mbox: &Path) -> Vec<(String, Vec<u8>)> {
    let out_dir = tempfile::tempdir().unwrap();
    let script = r#"
import mailbox, sys
box = mailbox.mbox(sys.argv[1], create=False)
for i, key in enumerate(box.iterkeys()):
    with open(f"{sys.argv[2]}/{i:06}.from", "w") as f:
        f.write(box.get_message(key).get_from())
    with open(f"{sys.argv[2]}/{i:06}.msg", "wb") as f:
        f.write(box.get_bytes(key))
"#;
    let status = Command::new(python)
        .args(["-c", script])
        .arg(mbox)
        .arg(out_dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let mut messages = Vec::new();
    let mut paths = files_in(out_dir.path());
    paths.sort();
    for path in paths {
        if path.extension().is_some_and(|ext| ext == "msg") {
            let from = fs::read_to_string(path.with_extension("from")).unwrap();
            messages.push((from, unquote(&fs::read(&path).unwrap())));
        }
    }
    messages
}

/// The mbox split by `formail -s`, each message without its `From ` line
/// and the blank line that separates it from the next, unquoted.
fn read_with_formail(formail: &Path, mbox: &Path) -> Vec<Vec<u8>> {
    let out_dir = tempfile::tempdir().unwrap();
    let status = Command::new(formail)
        .args(["-s", "sh", "-c"])
        .arg(format!("cat > {}/$FILENO", out_dir.path().display()))
        .stdin(fs::File::open(mbox).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    files_in(out_dir.path())
        .iter()
        .map(|path| {
            let text = fs::read(path).unwrap();
            let body_start = text.iter().position(|&b| b == b'\n').unwrap() + 1;
            assert!(text.starts_with(b"From "), "{}", path.display());
            let mut body = text[body_start..].to_vec();
            // formail keeps the separating blank line, except after the last.
            if body.ends_with(b"\n\n") {
                body.pop();
            }
            unquote(&body)
        })
        .collect()
}

fn sorted(mut messages: Vec<Vec<u8>>) -> Vec<String> {
    messages.sort();
    texts(messages)
}

/// Messages as text, so that a failure shows a readable difference.
fn texts(messages: Vec<Vec<u8>>) -> Vec<String> {
    messages
        .into_iter()
        .map(|message| String::from_utf8(message).unwrap())
        .collect()
}

#[test]
fn python_and_formail_read_back_every_message_byte_for_byte() {
    let (Some(python), Some(formail)) = (
        require_program("python3", INSTALL),
        require_program("formail", INSTALL),
    ) else {
        return;
    };
    let mut mail: Vec<Message> = (1..=5).map(|n| tricky(n, 300 * n * n)).collect();
    mail.push(Message::new(
        "no-return-path",
        "Subject: bare\n\nFrom me\nlast line",
    ));
    let server = FakePop3::start(mail.clone(), Script::default());
    let (case, mbox) = mbox_case(&server);
    // What another program appended before, without a final blank line.
    fs::create_dir_all(mbox.parent().unwrap()).unwrap();
    fs::write(
        &mbox,
        "From x@y Thu Jan  1 00:00:00 1970\nSubject: old\n\nold\n",
    )
    .unwrap();
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(server.mailbox().is_empty());

    let mut expected: Vec<Vec<u8>> = mail.iter().map(local).collect();
    // The message without a final line end gets one.
    expected.last_mut().unwrap().push(b'\n');
    let mut with_old = expected.clone();
    with_old.insert(0, b"Subject: old\n\nold\n".to_vec());

    let read = read_with_python(&python, &mbox);
    assert_eq!(
        texts(read.iter().map(|(_, m)| m.clone()).collect()),
        texts(with_old.clone())
    );
    for (n, (from, _)) in read.iter().enumerate().skip(1).take(5) {
        assert!(
            from.starts_with(&format!("sender{n}@example.org ")),
            "{from}"
        );
    }
    assert!(read[6].0.starts_with("MAILER-DAEMON "), "{}", read[6].0);
    assert_eq!(sorted(read_with_formail(&formail, &mbox)), sorted(with_old));
    assert!(!mbox.with_extension("lock").exists());
}

/// Every message of `mail` is in the mbox exactly once and whole, and
/// nothing else is.
fn assert_each_once(python: &Path, mbox: &Path, mail: &[Message]) {
    let read: Vec<Vec<u8>> = read_with_python(python, mbox)
        .into_iter()
        .map(|(_, message)| message)
        .collect();
    for message in &read {
        assert!(
            mail.iter().any(|m| &local(m) == message),
            "a partial or damaged message: {:?}",
            String::from_utf8_lossy(&message[message.len().saturating_sub(400)..])
        );
    }
    assert_eq!(sorted(read), sorted(mail.iter().map(local).collect()));
}

/// Kills mailfetch with SIGKILL over and over at random points (the
/// download, the locked append, the deletion), then lets a run finish:
/// every message is in the mbox once, none cut short, the lock is gone.
#[test]
fn sigkill_at_random_points_loses_nothing_and_leaves_nothing_partial() {
    let Some(python) = require_program("python3", INSTALL) else {
        return;
    };
    let mail: Vec<Message> = (1..=600).map(|n| tricky(n, 8_000)).collect();
    let server = FakePop3::start(mail.clone(), Script::default());
    let (case, mbox) = mbox_case(&server);
    let retrs = || {
        server
            .transcript()
            .iter()
            .filter(|c| c.starts_with("RETR"))
            .count()
    };
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20 {
        let before = retrs();
        let mut child = case.spawn(&[]);
        let started = Instant::now();
        while retrs() == before && child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < RUN_LIMIT, "no RETR");
            thread::sleep(Duration::from_millis(1));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        thread::sleep(Duration::from_millis(seed >> 56));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if server.mailbox().is_empty() {
            break;
        }
    }
    let run = case.run();
    assert!(matches!(run.code, Some(0 | 1)), "{run:?}");
    assert!(server.mailbox().is_empty());
    assert_each_once(&python, &mbox, &mail);
    assert!(!mbox.with_extension("lock").exists());
    assert!(files_in(&case.scratch.path().join("state/spool")).is_empty());
}

/// The kill comes during the append of a large batch, with the locks
/// held: the next start removes the stale dot-lock, truncates the partial
/// message away and delivers everything once.
#[test]
fn sigkill_inside_the_locked_append_is_reconciled_at_the_next_start() {
    let Some(python) = require_program("python3", INSTALL) else {
        return;
    };
    let mail: Vec<Message> = (1..=300).map(|n| tricky(n, 100_000)).collect();
    let server = FakePop3::start(mail.clone(), Script::default());
    let (case, mbox) = mbox_case(&server);
    let lock = PathBuf::from(format!("{}.lock", mbox.display()));
    let mut child = case.spawn(&[]);
    let started = Instant::now();
    // The first batch (256 messages, 25 MB) is being appended.
    while fs::metadata(&mbox).map_or(0, |meta| meta.len()) == 0 {
        assert!(started.elapsed() < RUN_LIMIT, "nothing was appended");
        assert!(
            child.try_wait().unwrap().is_none(),
            "mailfetch exited early"
        );
        thread::sleep(Duration::from_micros(100));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(server.deleted().is_empty());
    assert!(lock.exists(), "the kill came after the append");
    let left = fs::metadata(&mbox).unwrap().len();
    assert!(
        left < 25_000_000,
        "the kill came after the append ({left} bytes)"
    );

    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(server.mailbox().is_empty());
    assert_each_once(&python, &mbox, &mail);
    assert!(!lock.exists());
}

/// procmail delivers into the same mbox while mailfetch appends its
/// batches: both lock it, so no message of either is mixed into another.
#[test]
fn procmail_appending_at_the_same_time_mixes_nothing() {
    let (Some(python), Some(procmail)) = (
        require_program("python3", INSTALL),
        require_program("procmail", INSTALL),
    ) else {
        return;
    };
    // Several batches of 256, so that procmail's runs fall between them.
    let mail: Vec<Message> = (1..=1200).map(|n| tricky(n, 4_000)).collect();
    let server = FakePop3::start(mail.clone(), Script::default());
    let (case, mbox) = mbox_case(&server);
    fs::create_dir_all(mbox.parent().unwrap()).unwrap();
    let rcfile = case.scratch.path().join("procmailrc");
    // `:0:` locks with `inbox.lock` (and procmail adds its kernel lock);
    // a held lock is tried again after LOCKSLEEP seconds (default 8).
    fs::write(&rcfile, format!("LOCKSLEEP=1\n:0:\n{}\n", mbox.display())).unwrap();
    let deliver_theirs = |n: usize| {
        let body = "From procmail\n".repeat(50);
        let message = Message::new(
            &format!("procmail-{n}"),
            &format!("From: p@example.org\nSubject: procmail {n}\n\n{body}"),
        );
        let mut procmail_run = Command::new(&procmail)
            .args(["-p", "-m"])
            .arg(&rcfile)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = b"From p@example.org Thu Jan  1 00:00:00 1970\n".to_vec();
        input.extend_from_slice(&local(&message));
        std::io::Write::write_all(&mut procmail_run.stdin.take().unwrap(), &input).unwrap();
        assert!(procmail_run.wait().unwrap().success());
        message
    };
    let mut child = case.spawn(&[]);
    // procmail delivers one message after another for as long as mailfetch runs.
    let mut theirs = Vec::new();
    while child.try_wait().unwrap().is_none() || theirs.len() < 5 {
        theirs.push(deliver_theirs(theirs.len() + 1));
    }
    assert!(child.wait().unwrap().success());
    assert!(server.mailbox().is_empty());
    let theirs_count = theirs.len();
    let mut all = mail.clone();
    all.extend(theirs);
    assert_each_once(&python, &mbox, &all);
    let text = String::from_utf8(fs::read(&mbox).unwrap()).unwrap();
    let first_procmail = text.find("Subject: procmail").unwrap();
    let last_ours = text.rfind("Subject: 1200").unwrap();
    eprintln!(
        "procmail's first message at {first_procmail}, mailfetch's last at {last_ours}, \
         {theirs_count} of procmail's"
    );
}

/// Another program holds the dot-lock (procmail's `lockfile`): mailfetch
/// waits `timeout`, gives up with a message naming the lock, and deletes
/// nothing; once the lock is gone the next run delivers.
#[test]
fn a_lock_held_by_another_program_stops_the_poll_and_deletes_nothing() {
    let Some(lockfile) = require_program("lockfile", INSTALL) else {
        return;
    };
    let mail: Vec<Message> = (1..=3).map(|n| tricky(n, 1000)).collect();
    let server = FakePop3::start(mail.clone(), Script::default());
    let (case, mbox) = mbox_case(&server);
    let case = case.set("delivery", "{ timeout = \"1s\" }");
    fs::create_dir_all(mbox.parent().unwrap()).unwrap();
    let lock = format!("{}.lock", mbox.display());
    assert!(
        Command::new(&lockfile)
            .args(["-r0", &lock])
            .status()
            .unwrap()
            .success()
    );
    let run = case.run();
    assert_eq!(run.code, Some(10), "{run:?}");
    assert!(
        run.stderr.contains("is locked by another program"),
        "{run:?}"
    );
    assert!(run.stderr.contains(&lock), "{run:?}");
    assert!(server.deleted().is_empty());
    assert!(
        Path::new(&lock).exists(),
        "another program's lock was removed"
    );
    fs::remove_file(&lock).unwrap();
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(server.mailbox().is_empty());
}
