//! End to end through the `mailfetch` binary: a real Dovecot POP3 source
//! and `deliver = "smtp://…"` / `"lmtp://…"` to the fake SMTP server (for
//! faults) or to a real Postfix. What a user relies on: a message leaves
//! the source server only when the MTA took it (or, per `on_reject`, was
//! refused for good and bounced or dropped on purpose).

use testkit::dovecot::Dovecot;
use testkit::fake_smtp::{FakeSmtp, Fault, Script};
use testkit::postfix::Postfix;
use testkit::run::{Run, Scratch};

const PASSWORD: &str = "s3cret-Pa55";
const RCPT: &str = "alice@example.test";

fn message(n: usize) -> Vec<u8> {
    format!(
        "Return-Path: <sender{n}@example.org>\nFrom: Sender {n} <sender{n}@example.org>\nTo: alice@example.com\nSubject: test message {n}\nMessage-ID: <{n}@example.org>\n\nBody of message {n}.\n.A line starting with a dot\n.\nThe end.\n"
    )
    .into_bytes()
}

fn source_with(count: usize) -> Option<Dovecot> {
    let dovecot = Dovecot::start()?;
    dovecot.add_user("alice", PASSWORD);
    for n in 1..=count {
        dovecot.add_message("alice", &message(n));
    }
    Some(dovecot)
}

/// Subjects of the messages still on the source server, sorted.
fn left_on_source(dovecot: &Dovecot) -> Vec<String> {
    let mut subjects: Vec<String> = dovecot
        .messages("alice")
        .iter()
        .map(|m| subject(m))
        .collect();
    subjects.sort();
    subjects
}

fn subject(message: &[u8]) -> String {
    String::from_utf8_lossy(message)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

fn run(dovecot: &Dovecot, scratch: &Scratch, deliver: &str, extra: &str) -> Run {
    scratch.write_config(&format!(
        "[[account]]\nname = \"test\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nauth = \"user\"\nusername = \"alice\"\npassword = \"{PASSWORD}\"\ntimeout = \"20s\"\ndeliver = \"{deliver}\"\nto = [\"{RCPT}\"]\n{extra}\n",
        dovecot.pop3_port(),
    ));
    scratch.run(&[])
}

fn smtp(server: &FakeSmtp) -> String {
    format!("smtp://127.0.0.1:{}", server.port())
}

#[test]
fn accepted_messages_are_deleted_from_the_source() {
    let Some(dovecot) = source_with(12) else {
        return;
    };
    let server = FakeSmtp::start(Script::default());
    let scratch = Scratch::new();
    let run = run(&dovecot, &scratch, &smtp(&server), "");
    run.expect(0);
    assert!(run.stderr.contains("12 delivered"), "{}", run.stderr);
    assert!(left_on_source(&dovecot).is_empty());
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 12);
    let mut froms: Vec<String> = accepted.iter().map(|a| a.from.clone()).collect();
    froms.sort();
    let mut expected: Vec<String> = (1..=12).map(|n| format!("sender{n}@example.org")).collect();
    expected.sort();
    assert_eq!(froms, expected);
    assert!(accepted.iter().all(|a| a.recipients == [RCPT]));
    // A few sessions wait for answers side by side, each carrying several
    // messages: never one connection per message.
    let sessions = server.sessions().len();
    assert!(
        (1..=4).contains(&sessions),
        "{sessions} SMTP sessions for 12 messages"
    );

    // Nothing new: the MTA is not even contacted.
    let run2 = self::run(&dovecot, &scratch, &smtp(&server), "");
    run2.expect(1);
    assert_eq!(server.sessions().len(), sessions);
}

#[test]
fn a_451_on_rcpt_keeps_that_message_on_the_source_until_the_next_poll() {
    let Some(dovecot) = source_with(3) else {
        return;
    };
    let server = FakeSmtp::start(
        Script::default().fault_on(1, Fault::Rcpt(None, "451 4.3.0 try again later".into())),
    );
    let scratch = Scratch::new();
    let run = run(&dovecot, &scratch, &smtp(&server), "");
    assert!(run.stderr.contains("451 4.3.0"), "{}", run.stderr);
    assert_eq!(server.accepted().len(), 2);
    let kept = left_on_source(&dovecot);
    assert_eq!(kept.len(), 1, "{kept:?}\n{}", run.stderr);
    assert!(
        server
            .accepted()
            .iter()
            .all(|a| subject(&a.data) != kept[0])
    );

    // The next poll delivers it.
    self::run(&dovecot, &scratch, &smtp(&server), "").expect(0);
    assert!(left_on_source(&dovecot).is_empty());
    assert_eq!(server.accepted().len(), 3);
}

#[test]
fn a_permanent_refusal_keeps_deletes_or_bounces_as_configured() {
    for policy in ["keep", "delete", "bounce"] {
        let Some(dovecot) = source_with(2) else {
            return;
        };
        // Message data is refused for good; bounces (null sender) are taken.
        let server = FakeSmtp::start(
            Script::default().fault_on(0, Fault::DataEnd("554 5.6.0 content rejected".into())),
        );
        let scratch = Scratch::new();
        let run = run(
            &dovecot,
            &scratch,
            &smtp(&server),
            &format!("on_reject = \"{policy}\""),
        );
        assert!(run.stderr.contains("554 5.6.0"), "{policy}: {}", run.stderr);
        let kept = left_on_source(&dovecot);
        let accepted = server.accepted();
        let bounces: Vec<_> = accepted.iter().filter(|a| a.from.is_empty()).collect();
        match policy {
            "keep" => {
                assert_eq!(kept.len(), 1, "{policy}: {}", run.stderr);
                assert!(bounces.is_empty());
            }
            "delete" => {
                assert!(kept.is_empty(), "{policy}: {}", run.stderr);
                assert!(bounces.is_empty());
            }
            _ => {
                assert!(kept.is_empty(), "{policy}: {}", run.stderr);
                assert_eq!(bounces.len(), 1, "{policy}: {}", run.stderr);
                let bounce = String::from_utf8_lossy(&bounces[0].data);
                assert!(bounce.contains("report-type=delivery-status"));
                assert!(bounce.contains("Diagnostic-Code: smtp; 554 5.6.0 content rejected"));
                assert!(bounces[0].recipients[0].starts_with("sender"));
            }
        }
        assert_eq!(accepted.len() - bounces.len(), 1, "{policy}");
    }
}

#[test]
fn a_connection_dropped_mid_data_deletes_nothing_it_did_not_deliver() {
    let Some(dovecot) = source_with(3) else {
        return;
    };
    let server = FakeSmtp::start(Script::default().fault_on(
        1,
        Fault::DropMidData {
            after: 10,
            reply: None,
        },
    ));
    let scratch = Scratch::new();
    let run = run(&dovecot, &scratch, &smtp(&server), "");
    assert_ne!(run.code, 0, "{}", run.stderr);
    let accepted: Vec<String> = server.accepted().iter().map(|a| subject(&a.data)).collect();
    let kept = left_on_source(&dovecot);
    // Nothing the MTA did not take left the source. (The poll stopped at
    // the error, so even what it took may still be there: the journal
    // knows it was delivered.)
    for n in 1..=3 {
        let s = format!("test message {n}");
        assert!(
            accepted.contains(&s) || kept.contains(&s),
            "{s} is lost\n{}",
            run.stderr
        );
    }
    assert!(accepted.len() < 3);

    // The next poll delivers the rest, and nothing twice.
    self::run(&dovecot, &scratch, &smtp(&server), "").expect(0);
    assert!(left_on_source(&dovecot).is_empty());
    assert_eq!(server.accepted().len(), 3);
}

#[test]
fn an_mta_that_refuses_mail_from_keeps_everything() {
    let Some(dovecot) = source_with(2) else {
        return;
    };
    let server = FakeSmtp::start(
        Script::default()
            .fault(Fault::NoPipelining)
            .fault(Fault::Mail("451 4.7.1 greylisted".into())),
    );
    let scratch = Scratch::new();
    let run = run(&dovecot, &scratch, &smtp(&server), "");
    assert_ne!(run.code, 0);
    assert_eq!(left_on_source(&dovecot).len(), 2);
    assert!(server.accepted().is_empty());
    assert!(server.overlaps().is_empty());
}

#[test]
fn lmtp_to_the_fake_server() {
    let Some(dovecot) = source_with(2) else {
        return;
    };
    let server = FakeSmtp::start(Script::lmtp());
    let scratch = Scratch::new();
    run(
        &dovecot,
        &scratch,
        &format!("lmtp://127.0.0.1:{}", server.port()),
        "",
    )
    .expect(0);
    assert_eq!(server.accepted().len(), 2);
    assert!(left_on_source(&dovecot).is_empty());
}

#[test]
fn pop3_to_a_real_postfix() {
    let Some(dovecot) = source_with(5) else {
        return;
    };
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let scratch = Scratch::new();
    run(
        &dovecot,
        &scratch,
        &format!("smtp://127.0.0.1:{}", postfix.port()),
        "",
    )
    .expect(0);
    assert!(left_on_source(&dovecot).is_empty());
    postfix.wait_for_messages("alice", 5, std::time::Duration::from_secs(30));
    for delivered in postfix.messages("alice") {
        let text = String::from_utf8_lossy(&delivered);
        let n: usize = subject(&delivered)
            .strip_prefix("test message ")
            .unwrap()
            .parse()
            .unwrap();
        assert!(text.starts_with(&format!("Return-Path: <sender{n}@example.org>\n")));
        assert!(text.ends_with(&format!(
            "Body of message {n}.\n.A line starting with a dot\n.\nThe end.\n"
        )));
    }
}

#[test]
fn the_relay_password_never_shows_in_a_trace() {
    let Some(dovecot) = source_with(1) else {
        return;
    };
    let server = FakeSmtp::start(Script::default().auth_required());
    let scratch = Scratch::new();
    let relay_password = testkit::fake_smtp::PASSWORD;
    scratch.write_config(&format!(
        "[[account]]\nname = \"test\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nauth = \"user\"\nusername = \"alice\"\npassword = \"{PASSWORD}\"\ntimeout = \"20s\"\ndeliver = \"{}\"\nto = [\"{RCPT}\"]\n\n[account.delivery]\nusername = \"{}\"\npassword = \"{relay_password}\"\nauth = \"plain\"\n",
        dovecot.pop3_port(),
        smtp(&server),
        testkit::fake_smtp::USER,
    ));
    let run = scratch.run(&["-v"]);
    run.expect(0);
    assert_eq!(server.accepted().len(), 1);
    let plain = format!("\0{}\0{relay_password}", testkit::fake_smtp::USER);
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, plain);
    assert!(run.stderr.contains("AUTH PLAIN ****"), "{}", run.stderr);
    for secret in [relay_password, encoded.as_str()] {
        assert!(
            !run.stderr.contains(secret),
            "{secret:?} in:\n{}",
            run.stderr
        );
        assert!(!run.stdout.contains(secret));
    }
}
