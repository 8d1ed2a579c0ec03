//! The no-op poll against a real Dovecot: a folder the server shows as the
//! last clean poll left it is not opened, and every change that matters
//! takes the full path (see "The no-op poll" in docs/design.md).

use std::thread;
use std::time::{Duration, Instant};

use testkit::dovecot::Dovecot;
use testkit::run::{Scratch, files_in, sample_message, spawn_mailfetch, without_received};

const PASSWORD: &str = "imap-Pa55";
const UNCHANGED: &str = "unchanged since the last poll";

fn server() -> Option<Dovecot> {
    let dovecot = Dovecot::start()?;
    dovecot.add_user("alice", PASSWORD);
    Some(dovecot)
}

/// A plain-IMAP account for alice with extra keys.
fn configure(dovecot: &Dovecot, scratch: &Scratch, extra: &str) {
    scratch.write_config(&format!(
        "[[account]]\nname = \"mail\"\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
         username = \"alice\"\npassword = \"{PASSWORD}\"\ndeliver = \"maildir:{}\"\n{extra}\n",
        dovecot.imap_port(),
        scratch.maildir().display(),
    ));
}

fn bodies(scratch: &Scratch) -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = scratch
        .delivered()
        .iter()
        .map(|m| without_received(m).to_vec())
        .collect();
    bodies.sort();
    bodies
}

fn expected(numbers: impl IntoIterator<Item = usize>) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = numbers.into_iter().map(sample_message).collect();
    all.sort();
    all
}

fn flags(dovecot: &Dovecot, change: &str, flag: &str, folder: &str, uid: &str) {
    dovecot.doveadm_ok(&[
        "flags", change, "-u", "alice", flag, "mailbox", folder, "uid", uid,
    ]);
}

/// Runs mailfetch and says whether the folder's summary said it was
/// skipped, after checking the exit code.
fn poll(scratch: &Scratch, code: i32) -> bool {
    let run = scratch.run(&[]);
    run.expect(code);
    run.stderr.contains(UNCHANGED)
}

#[test]
fn an_unchanged_folder_is_skipped_and_new_or_vanished_mail_is_not() {
    let Some(dovecot) = server() else { return };
    for n in 1..=3 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    let scratch = Scratch::new();
    configure(&dovecot, &scratch, "keep = true");
    assert!(!poll(&scratch, 0), "the first poll lists the folder");
    assert!(poll(&scratch, 1), "nothing changed");
    // Flags do not change what fetch = "new" plans: still skipped.
    flags(&dovecot, "add", "\\Seen", "INBOX", "2");
    assert!(poll(&scratch, 1), "another client read a message");

    // A new message: UIDNEXT moved.
    dovecot.save("alice", "INBOX", &sample_message(4));
    assert!(!poll(&scratch, 0));
    assert_eq!(bodies(&scratch), expected(1..=4));
    assert!(poll(&scratch, 1));

    // Another client expunges one: MESSAGES dropped, UIDNEXT did not.
    dovecot.doveadm_ok(&["expunge", "-u", "alice", "mailbox", "INBOX", "uid", "1"]);
    assert!(!poll(&scratch, 1), "an expunge must be listed (and pruned)");
    assert!(poll(&scratch, 1));

    // Switching keep off must remove what keep mode left: not skipped.
    configure(&dovecot, &scratch, "keep = false");
    let run = scratch.run(&[]);
    run.expect(1);
    assert!(!run.stderr.contains(UNCHANGED), "{}", run.stderr);
    assert!(run.stderr.contains("3 deleted"), "{}", run.stderr);
    assert!(dovecot.uids("alice", "INBOX", &["ALL"]).is_empty());
    assert_eq!(bodies(&scratch), expected(1..=4), "nothing fetched twice");
}

/// The folder is recreated with as many messages as before and the same
/// UIDNEXT: only UIDVALIDITY tells that message 3 is another one.
#[test]
fn a_uidvalidity_change_alone_takes_the_full_path() {
    let Some(dovecot) = server() else { return };
    dovecot.doveadm_ok(&["mailbox", "create", "-u", "alice", "Work"]);
    for n in 1..=3 {
        dovecot.save("alice", "Work", &sample_message(n));
    }
    let scratch = Scratch::new();
    configure(&dovecot, &scratch, "keep = true\nfolders = [\"Work\"]");
    assert!(!poll(&scratch, 0));
    assert!(poll(&scratch, 1));
    dovecot.doveadm_ok(&["mailbox", "delete", "-u", "alice", "Work"]);
    dovecot.doveadm_ok(&["mailbox", "create", "-u", "alice", "Work"]);
    for n in [1, 2, 5] {
        dovecot.save("alice", "Work", &sample_message(n));
    }
    assert_eq!(dovecot.uids("alice", "Work", &["ALL"]), [1, 2, 3]);
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(!run.stderr.contains(UNCHANGED), "{}", run.stderr);
    assert!(
        run.stderr.contains("2 of 3 messages recognised"),
        "{}",
        run.stderr
    );
    assert_eq!(bodies(&scratch), expected([1, 2, 3, 5]));
    assert!(poll(&scratch, 1));
}

/// With fetch = "unseen", flags matter: one message read and another made
/// unread again leave the UNSEEN count as it was, but not HIGHESTMODSEQ.
#[test]
fn a_message_made_unread_again_is_fetched_with_fetch_unseen() {
    let Some(dovecot) = server() else { return };
    for n in 1..=3 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    flags(&dovecot, "add", "\\Seen", "INBOX", "3");
    let scratch = Scratch::new();
    configure(&dovecot, &scratch, "keep = true\nfetch = \"unseen\"");
    assert!(!poll(&scratch, 0));
    assert_eq!(bodies(&scratch), expected([1, 2]));
    assert!(poll(&scratch, 1), "Dovecot offers CONDSTORE: skipped");
    flags(&dovecot, "add", "\\Seen", "INBOX", "1");
    flags(&dovecot, "remove", "\\Seen", "INBOX", "3");
    assert_eq!(dovecot.uids("alice", "INBOX", &["UNSEEN"]), [2, 3]);
    assert!(!poll(&scratch, 0));
    assert_eq!(bodies(&scratch), expected(1..=3));
    assert!(poll(&scratch, 1));
}

/// A poll killed in the middle of a message records nothing: the next
/// one must not take the folder for done.
#[test]
fn a_poll_killed_midway_is_not_taken_for_clean() {
    let Some(dovecot) = server() else { return };
    dovecot.save("alice", "INBOX", &sample_message(1));
    let scratch = Scratch::new();
    configure(&dovecot, &scratch, "keep = true");
    assert!(!poll(&scratch, 0));
    assert!(poll(&scratch, 1));

    let mut big = sample_message(2);
    let line = "y".repeat(1023) + "\n";
    big.extend(line.repeat(64 * 1024).as_bytes());
    dovecot.add_message("alice", &big);
    let mut child = spawn_mailfetch(&scratch.config_path(), &[]);
    let tmp = scratch.maildir().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_in(&tmp).is_empty() {
        assert!(Instant::now() < deadline, "the big message never started");
        thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(bodies(&scratch), expected([1]), "killed before it finished");

    let run = scratch.run(&[]);
    run.expect(0);
    assert!(!run.stderr.contains(UNCHANGED), "{}", run.stderr);
    assert!(run.stderr.contains("1 new, 1 delivered"), "{}", run.stderr);
    assert!(poll(&scratch, 1));
}

/// A poll that left mail for later (max_per_poll) did not leave the folder
/// done: the next one must not skip it although nothing changed.
#[test]
fn a_poll_that_left_mail_for_later_is_not_taken_for_clean() {
    let Some(dovecot) = server() else { return };
    for n in 1..=3 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    let scratch = Scratch::new();
    configure(&dovecot, &scratch, "keep = true\nmax_per_poll = 2");
    assert!(!poll(&scratch, 0));
    assert_eq!(bodies(&scratch).len(), 2);
    assert!(!poll(&scratch, 0));
    assert_eq!(bodies(&scratch), expected(1..=3));
    assert!(poll(&scratch, 1));
}
