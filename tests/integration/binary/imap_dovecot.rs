//! mailfetch against a real Dovecot IMAP server on loopback.

use testkit::dovecot::Dovecot;
use testkit::run::{Scratch, sample_message, without_received};

const PASSWORD: &str = "imap-Pa55";

fn server() -> Option<Dovecot> {
    let dovecot = Dovecot::start()?;
    dovecot.add_user("alice", PASSWORD);
    Some(dovecot)
}

/// An IMAP `[[account]]` for alice with extra keys.
fn account(dovecot: &Dovecot, scratch: &Scratch, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"mail\"\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nusername = \"alice\"\npassword = \"{PASSWORD}\"\ndeliver = \"maildir:{}\"\nca_file = \"{}\"\n{extra}\n",
        scratch.maildir().display(),
        dovecot.ca_file().display(),
    )
}

fn plain(dovecot: &Dovecot) -> String {
    format!("port = {}\ntls = \"none\"", dovecot.imap_port())
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

/// Sample messages with CRLF line ends, as IMAP serves them.
fn crlf(message: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(message)
        .replace('\n', "\r\n")
        .into_bytes()
}

fn expected(numbers: impl IntoIterator<Item = usize>) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = numbers.into_iter().map(sample_message).collect();
    all.sort();
    all
}

#[test]
fn keep_mode_fetches_new_mail_once_whatever_other_clients_do() {
    let Some(dovecot) = server() else { return };
    for n in 1..=3 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!("{}\nkeep = true", plain(&dovecot)),
    ));
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(
        run.stderr.contains("mail/INBOX: 3 new, 3 delivered"),
        "{}",
        run.stderr
    );
    assert_eq!(bodies(&scratch), expected(1..=3));
    assert_eq!(dovecot.uids("alice", "INBOX", &["ALL"]).len(), 3);
    assert!(
        dovecot.uids("alice", "INBOX", &["SEEN"]).is_empty(),
        "BODY.PEEK must not set \\Seen"
    );

    // Another client reads one message and flags another unread again.
    dovecot.doveadm_ok(&[
        "flags", "add", "-u", "alice", "\\Seen", "mailbox", "INBOX", "uid", "1",
    ]);
    dovecot.doveadm_ok(&[
        "flags",
        "add",
        "-u",
        "alice",
        "\\Flagged",
        "mailbox",
        "INBOX",
        "uid",
        "2",
    ]);
    scratch.run(&[]).expect(1);
    assert_eq!(scratch.delivered().len(), 3);

    // New mail arrives, one of it already read by another client.
    dovecot.save("alice", "INBOX", &sample_message(4));
    dovecot.save("alice", "INBOX", &sample_message(5));
    dovecot.doveadm_ok(&[
        "flags", "add", "-u", "alice", "\\Seen", "mailbox", "INBOX", "uid", "5",
    ]);
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(run.stderr.contains("2 new, 2 delivered"), "{}", run.stderr);
    assert_eq!(bodies(&scratch), expected(1..=5));
}

#[test]
fn delete_mode_over_starttls_expunges_only_what_was_delivered() {
    let Some(dovecot) = server() else { return };
    for n in 1..=3 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!("port = {}\ntls = \"starttls\"", dovecot.imap_port()),
    ));
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(run.stderr.contains("3 deleted"), "{}", run.stderr);
    assert_eq!(bodies(&scratch), expected(1..=3));
    assert!(dovecot.uids("alice", "INBOX", &["ALL"]).is_empty());
    scratch.run(&[]).expect(1);
}

#[test]
fn move_to_archive_over_implicit_tls() {
    let Some(dovecot) = server() else { return };
    dovecot.doveadm_ok(&["mailbox", "create", "-u", "alice", "Archive"]);
    for n in 1..=2 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!(
            "port = {}\ntls = \"implicit\"\nmove_to = \"Archive\"",
            dovecot.imaps_port()
        ),
    ));
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(run.stderr.contains("2 moved to Archive"), "{}", run.stderr);
    assert!(dovecot.uids("alice", "INBOX", &["ALL"]).is_empty());
    assert_eq!(dovecot.uids("alice", "Archive", &["ALL"]).len(), 2);
    assert_eq!(bodies(&scratch), expected(1..=2));
}

#[test]
fn several_folders_each_tracked_separately() {
    let Some(dovecot) = server() else { return };
    for folder in ["Lists", "Grüße"] {
        dovecot.doveadm_ok(&["mailbox", "create", "-u", "alice", folder]);
    }
    dovecot.save("alice", "INBOX", &sample_message(1));
    dovecot.save("alice", "Lists", &sample_message(2));
    dovecot.save("alice", "Lists", &sample_message(3));
    dovecot.save("alice", "Grüße", &sample_message(4));
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!(
            "{}\nkeep = true\nfolders = [\"INBOX\", \"Lists\", \"Grüße\"]",
            plain(&dovecot)
        ),
    ));
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(run.stderr.contains("mail/INBOX: 1 new"), "{}", run.stderr);
    assert!(run.stderr.contains("mail/Lists: 2 new"), "{}", run.stderr);
    assert!(run.stderr.contains("mail/Grüße: 1 new"), "{}", run.stderr);
    assert_eq!(bodies(&scratch), expected(1..=4));
    // UID 1 exists in every folder: each is its own state.
    dovecot.save("alice", "Lists", &sample_message(5));
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(run.stderr.contains("mail/Lists: 1 new"), "{}", run.stderr);
    assert_eq!(bodies(&scratch), expected(1..=5));
}

#[test]
fn a_missing_folder_does_not_stop_the_others() {
    let Some(dovecot) = server() else { return };
    dovecot.save("alice", "INBOX", &sample_message(1));
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!(
            "{}\nkeep = true\nfolders = [\"Nope\", \"INBOX\"]",
            plain(&dovecot)
        ),
    ));
    let run = scratch.run(&[]);
    // INBOX delivered, so the run as a whole succeeded; the folder's error
    // is logged as such.
    run.expect(0);
    assert!(
        run.stderr.contains("ERROR mail/Nope") && run.stderr.contains("cannot open folder"),
        "{}",
        run.stderr
    );
    assert_eq!(bodies(&scratch), expected([1]));
}

#[test]
fn recreated_folder_is_recognised_by_digest_not_refetched() {
    let Some(dovecot) = server() else { return };
    dovecot.doveadm_ok(&["mailbox", "create", "-u", "alice", "Work"]);
    for n in 1..=3 {
        dovecot.save("alice", "Work", &sample_message(n));
    }
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!("{}\nkeep = true\nfolders = [\"Work\"]", plain(&dovecot)),
    ));
    scratch.run(&[]).expect(0);
    assert_eq!(scratch.delivered().len(), 3);

    // The folder is deleted and recreated (new UIDVALIDITY) with the same
    // three messages plus one new one.
    dovecot.doveadm_ok(&["mailbox", "delete", "-u", "alice", "Work"]);
    dovecot.doveadm_ok(&["mailbox", "create", "-u", "alice", "Work"]);
    for n in [1, 2, 3, 4] {
        dovecot.save("alice", "Work", &sample_message(n));
    }
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(run.stderr.contains("UIDVALIDITY"), "{}", run.stderr);
    assert!(
        run.stderr.contains("3 of 4 messages recognised"),
        "{}",
        run.stderr
    );
    assert_eq!(
        bodies(&scratch),
        expected(1..=4),
        "duplicates or losses after UIDVALIDITY change"
    );
    scratch.run(&[]).expect(1);
}

#[test]
fn fetch_unseen_and_max_size_and_max_per_poll() {
    let Some(dovecot) = server() else { return };
    for n in 1..=4 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    let mut big = sample_message(9);
    big.extend(std::iter::repeat_n(b'x', 20_000));
    big.push(b'\n');
    dovecot.save("alice", "INBOX", &big);
    dovecot.doveadm_ok(&[
        "flags", "add", "-u", "alice", "\\Seen", "mailbox", "INBOX", "uid", "1",
    ]);
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!(
            "{}\nkeep = true\nfetch = \"unseen\"\nmax_size = \"10KB\"\nmax_per_poll = 2",
            plain(&dovecot)
        ),
    ));
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(run.stderr.contains("1 over max_size"), "{}", run.stderr);
    assert!(
        run.stderr.contains("1 left for the next poll"),
        "{}",
        run.stderr
    );
    assert_eq!(bodies(&scratch), expected([2, 3]));
    scratch.run(&[]).expect(0);
    assert_eq!(bodies(&scratch), expected([2, 3, 4]));
}

#[test]
fn mark_seen_in_keep_mode() {
    let Some(dovecot) = server() else { return };
    dovecot.save("alice", "INBOX", &sample_message(1));
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!("{}\nkeep = true\nmark_seen = true", plain(&dovecot)),
    ));
    scratch.run(&[]).expect(0);
    assert_eq!(dovecot.uids("alice", "INBOX", &["SEEN"]), vec![1]);
}

#[test]
fn login_methods_and_wrong_password() {
    let Some(dovecot) = server() else { return };
    for (n, auth) in [
        "user",
        "plain",
        "login",
        "cram-md5",
        "scram-sha-256",
        "auto",
    ]
    .iter()
    .enumerate()
    {
        dovecot.save("alice", "INBOX", &sample_message(n));
        let scratch = Scratch::new();
        scratch.write_config(&account(
            &dovecot,
            &scratch,
            &format!(
                "port = {}\ntls = \"implicit\"\nauth = \"{auth}\"",
                dovecot.imaps_port()
            ),
        ));
        let run = scratch.run(&["-v"]);
        assert_eq!(run.code, 0, "auth = {auth}: {}", run.stderr);
        assert!(
            !run.stderr.contains(PASSWORD),
            "password logged with auth = {auth}"
        );
        assert_eq!(
            bodies(&scratch),
            vec![crlf_free(sample_message(n))],
            "auth = {auth}"
        );
    }
    let scratch = Scratch::new();
    let config = account(
        &dovecot,
        &scratch,
        &format!("port = {}\ntls = \"implicit\"", dovecot.imaps_port()),
    );
    scratch.write_config(&config.replace(PASSWORD, "wrong-password"));
    scratch.run(&[]).expect(3);
}

fn crlf_free(message: Vec<u8>) -> Vec<u8> {
    message
}

#[test]
fn large_message_streams_byte_exact() {
    let Some(dovecot) = server() else { return };
    let mut message = b"Subject: big\n\n".to_vec();
    let mut n = 0u64;
    while message.len() < 100 << 20 {
        n += 1;
        message
            .extend_from_slice(format!("line {n} {}\n", "y".repeat((n % 100) as usize)).as_bytes());
    }
    dovecot.add_message("alice", &message);
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!("port = {}\ntls = \"implicit\"", dovecot.imaps_port()),
    ));
    scratch.run(&[]).expect(0);
    let delivered = scratch.delivered();
    assert_eq!(delivered.len(), 1);
    assert!(
        without_received(&delivered[0]) == &message[..],
        "content differs"
    );
    let _ = crlf;
}
