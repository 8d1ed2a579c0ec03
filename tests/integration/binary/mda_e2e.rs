//! End to end through the `mailfetch` binary: POP3 from a real Dovecot to
//! `deliver = "mda:…"` scripts. A message leaves the POP3 server only
//! after the command exited 0 for it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use testkit::dovecot::Dovecot;
use testkit::run::{Scratch, sample_message};

const PASSWORD: &str = "mda-Pa55";

fn original(n: usize) -> Vec<u8> {
    let mut message = format!("Return-Path: <sender{n}@example.org>\n").into_bytes();
    message.extend(sample_message(n));
    message
}

fn server(count: usize) -> Option<Dovecot> {
    let dovecot = Dovecot::start()?;
    dovecot.add_user("alice", PASSWORD);
    for n in 1..=count {
        dovecot.add_message("alice", &original(n));
    }
    Some(dovecot)
}

/// Writes an executable script into the scratch dir.
fn script(scratch: &Scratch, body: &str) -> PathBuf {
    let path = scratch.path().join("deliver.sh");
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A script that files each message as `out/<sender>-<pid>`, except that
/// it exits with `code` for messages whose text contains `refuse`.
fn filing_script(scratch: &Scratch, refuse: &str, code: i32) -> PathBuf {
    let out = scratch.path().join("out");
    fs::create_dir_all(&out).unwrap();
    script(
        scratch,
        &format!(
            "message=$(cat)\n\
             case \"$message\" in *'{refuse}'*) echo 'refused by the script' >&2; exit {code};; esac\n\
             printf '%s\\n' \"$message\" > {}/\"$1\"-$$",
            out.display()
        ),
    )
}

fn filed(scratch: &Scratch) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(scratch.path().join("out"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .map(|name| name.rsplit_once('-').unwrap().0.to_owned())
        .collect();
    names.sort();
    names
}

fn config(dovecot: &Dovecot, command: &str, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"mda\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
         username = \"alice\"\npassword = \"{PASSWORD}\"\ndeliver = \"mda:{command}\"\n{extra}\n",
        dovecot.pop3_port(),
    )
}

fn command(script: &Path) -> String {
    format!("{} %F", script.display())
}

#[test]
fn exit_0_delivers_and_then_the_source_deletes() {
    let Some(dovecot) = server(3) else { return };
    let scratch = Scratch::new();
    let script = filing_script(&scratch, "never", 1);
    scratch.write_config(&config(&dovecot, &command(&script), ""));
    scratch.run(&[]).expect(0);
    assert_eq!(
        filed(&scratch),
        [
            "sender1@example.org",
            "sender2@example.org",
            "sender3@example.org"
        ]
    );
    assert_eq!(dovecot.message_count("alice"), 0);
    // The message arrives with LF line ends, mailfetch's Received first.
    let out = scratch.path().join("out");
    for entry in fs::read_dir(&out).unwrap().flatten() {
        let text = fs::read(entry.path()).unwrap();
        assert!(text.starts_with(b"Received: from "));
        assert!(!text.contains(&b'\r'));
    }
    scratch.run(&[]).expect(1);
}

#[test]
fn exit_75_keeps_the_message_on_the_source_for_the_next_poll() {
    let Some(dovecot) = server(3) else { return };
    let scratch = Scratch::new();
    let script = filing_script(&scratch, "Subject: test message 2", 75);
    scratch.write_config(&config(&dovecot, &command(&script), ""));
    let run = scratch.run(&[]);
    run.expect(10);
    assert_eq!(
        filed(&scratch),
        ["sender1@example.org", "sender3@example.org"]
    );
    assert_eq!(dovecot.message_count("alice"), 1, "{}", run.stderr);
    let kept = String::from_utf8_lossy(&dovecot.messages("alice")[0]).into_owned();
    assert!(kept.contains("Subject: test message 2\n"), "{kept}");

    // The MDA recovers: the message is delivered at the next poll, once.
    filing_script(&scratch, "never", 1);
    scratch.run(&[]).expect(0);
    assert_eq!(
        filed(&scratch),
        [
            "sender1@example.org",
            "sender2@example.org",
            "sender3@example.org"
        ]
    );
    assert_eq!(dovecot.message_count("alice"), 0);
}

#[test]
fn a_permanent_refusal_keeps_the_message_by_default() {
    let Some(dovecot) = server(2) else { return };
    let scratch = Scratch::new();
    let script = filing_script(&scratch, "Subject: test message 1", 67);
    scratch.write_config(&config(&dovecot, &command(&script), ""));
    let run = scratch.run(&[]);
    run.expect(10);
    assert!(
        run.stderr.contains("refused by the script"),
        "{}",
        run.stderr
    );
    assert_eq!(filed(&scratch), ["sender2@example.org"]);
    assert_eq!(dovecot.message_count("alice"), 1);
}

#[test]
fn an_mda_past_its_time_limit_keeps_the_message() {
    let Some(dovecot) = server(1) else { return };
    let scratch = Scratch::new();
    let script = script(&scratch, "cat > /dev/null; sleep 60");
    scratch.write_config(&config(
        &dovecot,
        &command(&script),
        "\n[account.delivery]\ntimeout = \"1s\"",
    ));
    let started = std::time::Instant::now();
    scratch.run(&[]).expect(10);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(dovecot.message_count("alice"), 1);
}

#[test]
fn a_missing_mda_stops_the_poll_and_deletes_nothing() {
    let Some(dovecot) = server(2) else { return };
    let scratch = Scratch::new();
    let missing = scratch.path().join("no-such-mda");
    scratch.write_config(&config(&dovecot, &missing.display().to_string(), ""));
    let run = scratch.run(&[]);
    run.expect(10);
    assert!(run.stderr.contains("no-such-mda"), "{}", run.stderr);
    assert_eq!(dovecot.message_count("alice"), 2);
}

#[test]
fn several_recipients_each_get_every_message() {
    let Some(dovecot) = server(2) else { return };
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let script = script(&scratch, &format!("cat > {}/\"$1\"-$$", out.display()));
    scratch.write_config(&config(
        &dovecot,
        &format!("{} %T", script.display()),
        "to = [\"bob\", \"carol\"]",
    ));
    scratch.run(&[]).expect(0);
    assert_eq!(filed(&scratch), ["bob", "bob", "carol", "carol"]);
    assert_eq!(dovecot.message_count("alice"), 0);
    let spool = scratch.path().join("state").join("spool");
    assert_eq!(fs::read_dir(spool).unwrap().count(), 0);
}
