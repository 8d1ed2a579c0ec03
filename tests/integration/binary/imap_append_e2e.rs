//! End to end through the `mailfetch` binary: a POP3 mailbox (alice on a
//! real Dovecot) moved into another IMAP account (bob, same Dovecot) with
//! `deliver = "imap://bob@…/Archive"`. A message leaves alice's mailbox
//! only after bob's server answered APPEND OK.

use std::fs;

use testkit::dovecot::Dovecot;
use testkit::run::{Scratch, sample_message, without_received};

const ALICE: &str = "pop-Pa55";
const BOB: &str = "imap-Pa55";

/// The Received date each of alice's messages got from her provider.
fn received_at(n: usize) -> (String, i64) {
    (
        format!("Tue, 3 Mar 2026 10:0{n}:00 +0100"),
        1_772_528_400 + 60 * n as i64,
    )
}

fn original(n: usize) -> Vec<u8> {
    let mut message = format!(
        "Received: from mx.example.org by pop.example.org; {}\n",
        received_at(n).0
    )
    .into_bytes();
    message.extend(sample_message(n));
    message
}

/// Dovecot with alice holding messages 1..=count and bob with an empty
/// mailbox.
fn server(count: usize) -> Option<Dovecot> {
    let dovecot = Dovecot::start()?;
    dovecot.add_user("alice", ALICE);
    dovecot.add_user("bob", BOB);
    for n in 1..=count {
        dovecot.add_message("alice", &original(n));
    }
    Some(dovecot)
}

/// alice's POP3 account delivering to `url`, with `delivery` extra keys in
/// `[account.delivery]`.
fn config(dovecot: &Dovecot, url: &str, delivery: &str) -> String {
    format!(
        "[[account]]\nname = \"move\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
         ca_file = \"{ca}\"\nusername = \"alice\"\npassword = \"{ALICE}\"\ndeliver = \"{url}\"\n\n\
         [account.delivery]\nca_file = \"{ca}\"\n{delivery}\n",
        dovecot.pop3_port(),
        ca = dovecot.ca_file().display(),
    )
}

fn archive_url(dovecot: &Dovecot, folder: &str) -> String {
    format!("imap://bob@127.0.0.1:{}/{folder}", dovecot.imap_port())
}

/// The messages in bob's `Archive` folder, as Dovecot stores them.
fn archived(dovecot: &Dovecot) -> Vec<Vec<u8>> {
    let folder = dovecot.maildir("bob").join(".Archive");
    let mut messages: Vec<Vec<u8>> = ["new", "cur"]
        .iter()
        .filter_map(|sub| fs::read_dir(folder.join(sub)).ok())
        .flat_map(|dir| dir.flatten())
        .map(|entry| fs::read(entry.path()).unwrap())
        .collect();
    messages.sort();
    messages
}

#[test]
fn a_pop3_mailbox_moves_into_an_imap_folder_with_its_dates() {
    let Some(dovecot) = server(3) else { return };
    let scratch = Scratch::new();
    scratch.write_config(&config(
        &dovecot,
        &archive_url(&dovecot, "Archive"),
        &format!("password = \"{BOB}\""),
    ));
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(run.stderr.contains("3 delivered"), "{}", run.stderr);

    assert_eq!(
        dovecot.message_count("alice"),
        0,
        "not moved off the source"
    );
    let mut bodies: Vec<Vec<u8>> = archived(&dovecot)
        .iter()
        .map(|message| without_received(message).to_vec())
        .collect();
    bodies.sort();
    let mut expected: Vec<Vec<u8>> = (1..=3).map(original).collect();
    expected.sort();
    assert_eq!(bodies, expected);

    let dates = dovecot.doveadm_ok(&[
        "fetch",
        "-u",
        "bob",
        "date.received.unixtime",
        "mailbox",
        "Archive",
        "ALL",
    ]);
    let mut dates: Vec<i64> = dates
        .lines()
        .filter_map(|line| line.strip_prefix("date.received.unixtime:"))
        .map(|value| value.trim().parse().unwrap())
        .collect();
    dates.sort();
    assert_eq!(dates, (1..=3).map(|n| received_at(n).1).collect::<Vec<_>>());
    assert!(dovecot.uids("bob", "Archive", &["SEEN"]).is_empty());

    // Nothing new: no second copy.
    scratch.run(&[]).expect(1);
    assert_eq!(archived(&dovecot).len(), 3);
}

#[test]
fn seen_marks_moved_mail_read() {
    let Some(dovecot) = server(2) else { return };
    let scratch = Scratch::new();
    scratch.write_config(&config(
        &dovecot,
        &archive_url(&dovecot, "Archive"),
        &format!("password = \"{BOB}\"\nseen = true"),
    ));
    scratch.run(&[]).expect(0);
    assert_eq!(dovecot.uids("bob", "Archive", &["SEEN"]).len(), 2);
}

#[test]
fn a_refused_login_at_the_destination_deletes_nothing() {
    let Some(dovecot) = server(3) else { return };
    let scratch = Scratch::new();
    scratch.write_config(&config(
        &dovecot,
        &archive_url(&dovecot, "Archive"),
        "password = \"wrong\"",
    ));
    let run = scratch.run(&[]);
    run.expect(3);
    assert_eq!(dovecot.message_count("alice"), 3);
    assert!(archived(&dovecot).is_empty());
}

#[test]
fn an_unreachable_destination_deletes_nothing() {
    let Some(dovecot) = server(3) else { return };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let scratch = Scratch::new();
    scratch.write_config(&config(
        &dovecot,
        &format!("imap://bob@127.0.0.1:{port}/Archive"),
        &format!("password = \"{BOB}\""),
    ));
    // A destination that cannot be reached is a failed delivery.
    scratch.run(&[]).expect(10);
    assert_eq!(dovecot.message_count("alice"), 3);
}

#[test]
fn a_refused_append_keeps_the_message_on_the_source() {
    let Some(dovecot) = server(2) else { return };
    let scratch = Scratch::new();
    // Dovecot refuses this name ('/' is not its hierarchy separator).
    scratch.write_config(&config(
        &dovecot,
        &archive_url(&dovecot, "bad%2Fname"),
        &format!("password = \"{BOB}\""),
    ));
    let run = scratch.run(&[]);
    run.expect(10);
    assert_eq!(dovecot.message_count("alice"), 2);
    assert!(dovecot.log().contains("user=<bob>"));
}
