//! mailfetch against a real Dovecot POP3 server on loopback.
//!
//! Each test starts its own Dovecot (see `testkit::dovecot`); without
//! Dovecot installed they skip loudly, except under CI where they fail.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;

use testkit::dovecot::Dovecot;
use testkit::run::{Scratch, sample_message, without_received};

const PASSWORD: &str = "s3cret-Pa55";

/// Starts Dovecot with user alice holding `count` sample messages.
fn server_with(count: usize) -> Option<Dovecot> {
    let dovecot = Dovecot::start()?;
    dovecot.add_user("alice", PASSWORD);
    for n in 1..=count {
        dovecot.add_message("alice", &sample_message(n));
    }
    Some(dovecot)
}

/// An `[[account]]` table for alice on this Dovecot.
fn account(dovecot: &Dovecot, scratch: &Scratch, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"test\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nusername = \"alice\"\npassword = \"{PASSWORD}\"\ndeliver = \"maildir:{}\"\nca_file = \"{}\"\n{extra}\n",
        scratch.maildir().display(),
        dovecot.ca_file().display(),
    )
}

fn expected(count: usize) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = (1..=count).map(sample_message).collect();
    all.sort();
    all
}

fn delivered_bodies(scratch: &Scratch) -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = scratch
        .delivered()
        .iter()
        .map(|message| without_received(message).to_vec())
        .collect();
    bodies.sort();
    bodies
}

#[test]
fn plain_pop3_delete_mode_moves_everything_exactly() {
    let Some(dovecot) = server_with(3) else {
        return;
    };
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!(
            "port = {}\ntls = \"none\"\nauth = \"user\"",
            dovecot.pop3_port()
        ),
    ));
    let run = scratch.run(&[]);
    run.expect(0);
    assert!(
        run.stderr.contains("test: 3 new, 3 delivered"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("3 deleted"), "{}", run.stderr);
    assert_eq!(delivered_bodies(&scratch), expected(3));
    assert!(scratch.leftovers().is_empty());
    assert_eq!(dovecot.message_count("alice"), 0);

    // An independent reader agrees: three new messages, parsable.
    let maildir = maildir::Maildir::from(scratch.maildir());
    assert_eq!(maildir.count_new(), 3);
    for entry in maildir.list_new() {
        let mut entry = entry.unwrap();
        let subject = entry
            .parsed()
            .unwrap()
            .headers
            .iter()
            .find(|h| h.get_key() == "Subject")
            .map(|h| h.get_value());
        assert!(subject.unwrap().starts_with("test message "));
    }

    scratch.run(&[]).expect(1);
    assert_eq!(scratch.delivered().len(), 3);
}

#[test]
fn stls_keep_mode_fetches_only_what_is_new() {
    let Some(dovecot) = server_with(3) else {
        return;
    };
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!(
            "port = {}\ntls = \"starttls\"\nkeep = true",
            dovecot.pop3_port()
        ),
    ));
    scratch.run(&[]).expect(0);
    assert_eq!(delivered_bodies(&scratch), expected(3));
    assert_eq!(dovecot.message_count("alice"), 3, "keep mode deleted mail");

    let again = scratch.run(&[]);
    again.expect(1);
    assert!(
        again.stderr.contains("0 new, 0 delivered"),
        "{}",
        again.stderr
    );

    dovecot.add_message("alice", &sample_message(4));
    dovecot.add_message("alice", &sample_message(5));
    let third = scratch.run(&[]);
    third.expect(0);
    assert!(
        third.stderr.contains("2 new, 2 delivered"),
        "{}",
        third.stderr
    );
    assert_eq!(delivered_bodies(&scratch), expected(5));
    assert_eq!(dovecot.message_count("alice"), 5);
}

#[test]
fn implicit_tls_with_each_login_method() {
    let Some(dovecot) = server_with(0) else {
        return;
    };
    for (n, auth) in [
        "plain",
        "login",
        "cram-md5",
        "scram-sha-256",
        "user",
        "auto",
    ]
    .iter()
    .enumerate()
    {
        dovecot.add_message("alice", &sample_message(n));
        let scratch = Scratch::new();
        scratch.write_config(&account(
            &dovecot,
            &scratch,
            &format!(
                "port = {}\ntls = \"implicit\"\nauth = \"{auth}\"",
                dovecot.pop3s_port()
            ),
        ));
        let run = scratch.run(&[]);
        assert_eq!(run.code, 0, "auth = {auth}: {}", run.stderr);
        assert_eq!(
            delivered_bodies(&scratch),
            vec![sample_message(n)],
            "auth = {auth}"
        );
        assert_eq!(dovecot.message_count("alice"), 0, "auth = {auth}");
    }
}

#[test]
fn apop_over_plain_text_link() {
    let Some(dovecot) = server_with(2) else {
        return;
    };
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!(
            "port = {}\ntls = \"none\"\nauth = \"apop\"",
            dovecot.pop3_port()
        ),
    ));
    scratch.run(&[]).expect(0);
    assert_eq!(delivered_bodies(&scratch), expected(2));
}

#[test]
fn certificate_pin_replaces_the_ca_and_a_wrong_pin_is_refused() {
    let Some(dovecot) = server_with(1) else {
        return;
    };
    let pinned = |pin: &str| {
        let scratch = Scratch::new();
        scratch.write_config(&format!(
            "[[account]]\nname = \"pinned\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {}\nusername = \"alice\"\npassword = \"{PASSWORD}\"\nfingerprint = \"{pin}\"\ndeliver = \"maildir:{}\"\n",
            dovecot.pop3s_port(),
            scratch.maildir().display()
        ));
        (scratch.run(&[]), scratch)
    };
    let wrong = format!("sha256:{}", ["00"; 32].join(":"));
    let (run, scratch) = pinned(&wrong);
    run.expect(2);
    assert!(
        run.stderr.contains(&dovecot.fingerprint()),
        "error should show the real fingerprint: {}",
        run.stderr
    );
    assert!(scratch.delivered().is_empty());
    assert_eq!(dovecot.message_count("alice"), 1);

    let (run, scratch) = pinned(&dovecot.fingerprint());
    run.expect(0);
    assert_eq!(delivered_bodies(&scratch), expected(1));
}

#[test]
fn untrusted_certificate_is_refused_before_login() {
    let Some(dovecot) = server_with(1) else {
        return;
    };
    let scratch = Scratch::new();
    // No ca_file: the throwaway CA is not among the system roots.
    scratch.write_config(&format!(
        "[[account]]\nname = \"untrusted\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nusername = \"alice\"\npassword = \"{PASSWORD}\"\ndeliver = \"maildir:{}\"\n",
        dovecot.pop3_port(),
        scratch.maildir().display()
    ));
    let run = scratch.run(&[]);
    run.expect(2);
    assert!(
        run.stderr.contains(&dovecot.fingerprint()),
        "{}",
        run.stderr
    );
    assert!(
        !dovecot.log().contains("user=<alice>"),
        "credentials were sent:\n{}",
        dovecot.log()
    );
    assert_eq!(dovecot.message_count("alice"), 1);
}

#[test]
fn wrong_password_is_exit_3_and_never_logged() {
    let Some(dovecot) = server_with(1) else {
        return;
    };
    let scratch = Scratch::new();
    let config = account(
        &dovecot,
        &scratch,
        &format!(
            "port = {}\ntls = \"starttls\"\nauth = \"plain\"",
            dovecot.pop3_port()
        ),
    );
    scratch.write_config(&config.replace(PASSWORD, "not-the-password"));
    let run = scratch.run(&["-v"]);
    run.expect(3);
    assert!(!run.stderr.contains("not-the-password") && !run.stdout.contains("not-the-password"));
    assert!(run.stderr.contains("AUTH PLAIN ****"), "{}", run.stderr);
    assert_eq!(dovecot.message_count("alice"), 1);
}

#[test]
fn large_message_arrives_byte_exact() {
    let Some(dovecot) = server_with(0) else {
        return;
    };
    // 24 MiB of lines, some starting with dots.
    let mut message = b"Subject: big\n\n".to_vec();
    let mut n = 0u64;
    while message.len() < 24 << 20 {
        n += 1;
        let line = if n.is_multiple_of(7) {
            format!(".dot line {n}\n")
        } else {
            format!("line {n} {}\n", "x".repeat((n % 90) as usize))
        };
        message.extend_from_slice(line.as_bytes());
    }
    dovecot.add_message("alice", &message);
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!("port = {}\ntls = \"implicit\"", dovecot.pop3s_port()),
    ));
    scratch.run(&[]).expect(0);
    let delivered = scratch.delivered();
    assert_eq!(delivered.len(), 1);
    assert!(
        without_received(&delivered[0]) == &message[..],
        "content differs"
    );
}

#[test]
fn second_instance_on_the_same_state_is_refused() {
    let Some(dovecot) = server_with(1) else {
        return;
    };
    let scratch = Scratch::new();
    scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!("port = {}\ntls = \"starttls\"", dovecot.pop3_port()),
    ));
    let state = scratch.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let held = File::create(state.join("lock")).unwrap();
    held.try_lock().unwrap();
    let run = scratch.run(&[]);
    run.expect(8);
    assert!(
        run.stderr.contains("already using the state directory"),
        "{}",
        run.stderr
    );
    assert_eq!(dovecot.message_count("alice"), 1);
    drop(held);
    scratch.run(&[]).expect(0);
}

#[test]
fn world_readable_config_with_password_is_refused() {
    let Some(dovecot) = server_with(1) else {
        return;
    };
    let scratch = Scratch::new();
    let path = scratch.write_config(&account(
        &dovecot,
        &scratch,
        &format!("port = {}", dovecot.pop3s_port()),
    ));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let run = scratch.run(&[]);
    run.expect(6);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    assert_eq!(dovecot.message_count("alice"), 1);
}

#[test]
fn password_command_supplies_the_secret() {
    let Some(dovecot) = server_with(1) else {
        return;
    };
    let scratch = Scratch::new();
    let config = account(
        &dovecot,
        &scratch,
        &format!("port = {}", dovecot.pop3s_port()),
    )
    .replace(
        &format!("password = \"{PASSWORD}\""),
        &format!("password_command = \"echo {PASSWORD}\""),
    );
    let path = scratch.write_config(&config);
    // No password in the file: group-readable is fine.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    scratch.run(&[]).expect(0);
    assert_eq!(delivered_bodies(&scratch), expected(1));
}
