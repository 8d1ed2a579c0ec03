//! The SMTP/LMTP sink against the in-tree fake server: faults a real MTA
//! cannot easily be made to produce. Each test asserts what the pipeline
//! relies on: which outcome `finish` reports (only `Accepted` lets the
//! source delete a message), what the server actually accepted, and that
//! the session is reused, reset or reopened as it should be.

use std::time::{Duration, SystemTime};

use mailfetch::address::Sender;
use mailfetch::config::{
    AuthMethod, Endpoint, EnvelopeFrom, MtaProtocol, MtaTarget, Secret, TlsMode,
};
use mailfetch::error::{Error, Kind};
use mailfetch::sink::smtp::{SmtpSink, send_bounce};
use mailfetch::sink::{Acceptance, Delivered, MessageWriter, Sink, bounce};
use testkit::fake_smtp::{FakeSmtp, Fault, PASSWORD, Script, USER};

const RCPT: &str = "alice@example.test";

fn target(server: &FakeSmtp, protocol: MtaProtocol) -> MtaTarget {
    MtaTarget {
        protocol,
        socket: None,
        server: Endpoint {
            host: "127.0.0.1".to_owned(),
            ..Endpoint::local_mta(server.port(), Duration::from_secs(10))
        },
    }
}

fn sink_for(target: MtaTarget, recipients: &[&str]) -> SmtpSink {
    SmtpSink::new(
        target,
        Some(Secret::new(PASSWORD.to_owned())),
        recipients.iter().map(|r| r.to_string()).collect(),
        EnvelopeFrom::ReturnPath,
        "client.example".to_owned(),
    )
}

fn smtp_sink(server: &FakeSmtp) -> SmtpSink {
    sink_for(target(server, MtaProtocol::Smtp), &[RCPT])
}

/// Streams `message` in chunks of `chunk` bytes, as a source would.
async fn deliver(
    sink: &mut SmtpSink,
    message: &[u8],
    chunk: usize,
) -> Result<Acceptance<Delivered>, Error> {
    let mut writer = sink.begin().await?;
    for piece in message.chunks(chunk) {
        writer.write(piece).await.expect("the writer never fails");
    }
    sink.finish(writer).await
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "Return-Path: <sender{n}@example.org>\r\nFrom: s@example.org\r\nSubject: message {n}\r\n\r\nbody {n}\r\n.\r\n..two dots\r\n"
    )
    .into_bytes()
}

/// What the server records for a message: CRLF line ends, unstuffed.
fn as_received(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn is_accepted(outcome: &Acceptance<Delivered>) -> bool {
    matches!(outcome, Acceptance::Accepted(_))
}

/// The recipients that took a partly delivered message, and the failure
/// for the others; no recipients for a message nobody took.
fn partly(outcome: Acceptance<Delivered>) -> (Vec<String>, Acceptance<Delivered>) {
    match outcome {
        Acceptance::Partial {
            delivered_to,
            failure,
        } => (delivered_to, *failure),
        outcome => (Vec::new(), outcome),
    }
}

fn temporary(outcome: Acceptance<Delivered>) -> String {
    match outcome {
        Acceptance::TemporaryFailure(reason) => reason,
        Acceptance::Accepted(_) => panic!("accepted, expected a temporary failure"),
        Acceptance::PermanentFailure(r) => panic!("permanent failure {r:?}, expected temporary"),
        Acceptance::Partial { delivered_to, .. } => {
            panic!("partly delivered to {delivered_to:?}, expected a temporary failure")
        }
    }
}

fn permanent(outcome: Acceptance<Delivered>) -> mailfetch::sink::Rejection {
    match outcome {
        Acceptance::PermanentFailure(rejection) => rejection,
        Acceptance::Accepted(_) => panic!("accepted, expected a permanent failure"),
        Acceptance::TemporaryFailure(r) => panic!("temporary failure {r:?}, expected permanent"),
        Acceptance::Partial { delivered_to, .. } => {
            panic!("partly delivered to {delivered_to:?}, expected a permanent failure")
        }
    }
}

fn commands(server: &FakeSmtp, session: usize) -> Vec<String> {
    server.sessions()[session]
        .iter()
        .map(|line| line.split(' ').next().unwrap().to_ascii_uppercase())
        .collect()
}

#[tokio::test]
async fn several_messages_share_one_pipelined_session() {
    let server = FakeSmtp::start(Script::default());
    let mut sink = smtp_sink(&server);
    let no_return_path = b"From: x@example.org\nSubject: bare LF\n\nline\n.\nend".to_vec();
    let messages = [message(0), message(1), no_return_path.clone(), message(3)];
    for (i, m) in messages.iter().enumerate() {
        let outcome = deliver(&mut sink, m, 1 + i * 7).await.unwrap();
        match outcome {
            Acceptance::Accepted(delivered) => assert_eq!(delivered.size, m.len() as u64),
            _ => panic!("message {i} not accepted"),
        }
    }
    sink.close().await;
    server.wait_for("QUIT", |s| s.transcript().iter().any(|l| l == "QUIT"));

    let accepted = server.accepted();
    assert_eq!(accepted.len(), 4);
    for (got, sent) in accepted.iter().zip(&messages) {
        assert_eq!(got.data, as_received(sent));
        assert_eq!(got.recipients, vec![RCPT]);
        assert_eq!(got.params, "BODY=8BITMIME");
    }
    assert_eq!(accepted[0].from, "sender0@example.org");
    assert_eq!(accepted[2].from, "", "no Return-Path: the null sender");
    assert_eq!(server.sessions().len(), 1, "one connection for the poll");
    assert_eq!(
        commands(&server, 0),
        [
            "EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "MAIL",
            "RCPT", "DATA", "QUIT"
        ]
    );
}

#[tokio::test]
async fn a_poll_without_mail_never_connects() {
    let server = FakeSmtp::start(Script::default());
    let mut sink = smtp_sink(&server);
    sink.close().await;
    assert!(server.sessions().is_empty());
}

#[tokio::test]
async fn without_pipelining_commands_wait_for_their_replies() {
    let server = FakeSmtp::start(Script::default().fault(Fault::NoPipelining));
    let mut sink = sink_for(
        target(&server, MtaProtocol::Smtp),
        &[RCPT, "bob@example.test"],
    );
    for i in 0..2 {
        assert!(is_accepted(
            &deliver(&mut sink, &message(i), 100).await.unwrap()
        ));
    }
    sink.close().await;
    assert_eq!(server.accepted().len(), 2);
    assert_eq!(server.overlaps(), Vec::<String>::new());
}

#[tokio::test]
async fn a_451_on_one_rcpt_keeps_the_message_and_the_session() {
    let server = FakeSmtp::start(Script::default().fault_on(
        0,
        Fault::Rcpt(
            Some("bob@example.test".into()),
            "451 4.3.0 try later".into(),
        ),
    ));
    let mut sink = sink_for(
        target(&server, MtaProtocol::Smtp),
        &[RCPT, "bob@example.test"],
    );
    let reason = temporary(deliver(&mut sink, &message(0), 4096).await.unwrap());
    assert!(reason.contains("451 4.3.0 try later"), "{reason}");
    // The pipelined DATA got 354 (alice was taken): the connection had to
    // go, or an empty message would have reached alice.
    assert!(server.accepted().is_empty());
    assert!(is_accepted(
        &deliver(&mut sink, &message(1), 4096).await.unwrap()
    ));
    sink.close().await;
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].data, as_received(&message(1)));
    assert_eq!(server.sessions().len(), 2);
}

#[tokio::test]
async fn a_550_on_rcpt_refuses_the_whole_message_with_what_a_bounce_needs() {
    let server = FakeSmtp::start(Script::default().fault_on(
        0,
        Fault::Rcpt(None, "550 5.1.1 <alice@example.test>: unknown user".into()),
    ));
    let mut sink = smtp_sink(&server);
    let rejection = permanent(deliver(&mut sink, &message(0), 4096).await.unwrap());
    assert!(
        rejection
            .reason
            .starts_with("550 5.1.1 <alice@example.test>: unknown user"),
        "{}",
        rejection.reason
    );
    assert_eq!(rejection.sender.as_deref(), Some("sender0@example.org"));
    assert!(
        rejection
            .headers
            .starts_with(b"Return-Path: <sender0@example.org>\r\n")
    );
    assert!(rejection.headers.ends_with(b"Subject: message 0\r\n\r\n"));
    // Every RCPT failed, so DATA was refused too: the session stays, with
    // an RSET before the next transaction.
    assert!(is_accepted(
        &deliver(&mut sink, &message(1), 4096).await.unwrap()
    ));
    sink.close().await;
    assert_eq!(server.accepted().len(), 1);
    assert_eq!(server.sessions().len(), 1);
    assert_eq!(
        commands(&server, 0),
        [
            "EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"
        ]
    );
}

#[tokio::test]
async fn a_550_on_mail_is_permanent() {
    let server = FakeSmtp::start(
        Script::default().fault_on(0, Fault::Mail("550 5.7.1 sender refused".into())),
    );
    let mut sink = smtp_sink(&server);
    let rejection = permanent(deliver(&mut sink, &message(0), 4096).await.unwrap());
    assert!(rejection.reason.contains("550 5.7.1 sender refused"));
    assert!(server.accepted().is_empty());
}

#[tokio::test]
async fn a_552_at_the_end_of_data_is_permanent_and_the_session_goes_on() {
    let server = FakeSmtp::start(
        Script::default().fault_on(0, Fault::DataEnd("552 5.3.4 message too big".into())),
    );
    let mut sink = smtp_sink(&server);
    let rejection = permanent(deliver(&mut sink, &message(0), 4096).await.unwrap());
    assert!(rejection.reason.contains("552 5.3.4"));
    assert!(server.accepted().is_empty());
    assert!(is_accepted(
        &deliver(&mut sink, &message(1), 4096).await.unwrap()
    ));
    assert_eq!(server.sessions().len(), 1);
}

#[tokio::test]
async fn a_451_at_the_end_of_data_is_temporary() {
    let server =
        FakeSmtp::start(Script::default().fault(Fault::DataEnd("451 4.3.0 queue full".into())));
    let mut sink = smtp_sink(&server);
    let reason = temporary(deliver(&mut sink, &message(0), 4096).await.unwrap());
    assert!(reason.contains("451 4.3.0 queue full"));
    assert!(server.accepted().is_empty());
}

#[tokio::test]
async fn a_connection_dropped_mid_data_never_counts_as_delivered() {
    let big: Vec<u8> = [message(0), b"0123456789abcdef\r\n".repeat(200_000)].concat();
    // With and without last words from the server.
    for reply in [None, Some("421 4.3.0 shutting down".to_owned())] {
        let server = FakeSmtp::start(Script::default().fault_on(
            0,
            Fault::DropMidData {
                after: 100_000,
                reply: reply.clone(),
            },
        ));
        let mut sink = smtp_sink(&server);
        match deliver(&mut sink, &big, 65536).await {
            Ok(Acceptance::TemporaryFailure(reason)) => {
                assert!(reply.is_some(), "a reason out of nowhere: {reason}");
                assert!(reason.contains("421 4.3.0"), "{reason}");
            }
            Ok(Acceptance::Accepted(_) | Acceptance::Partial { .. }) => {
                panic!("a cut message was reported delivered")
            }
            Ok(Acceptance::PermanentFailure(r)) => panic!("permanent failure {r:?}"),
            Err(err) => assert_eq!(err.kind, Kind::Delivery, "{err}"),
        }
        assert!(server.accepted().is_empty());
        assert_eq!(server.cut(), 1);
        // The next message gets a new connection.
        assert!(is_accepted(
            &deliver(&mut sink, &message(1), 4096).await.unwrap()
        ));
        assert_eq!(server.sessions().len(), 2);
    }
}

#[tokio::test]
async fn no_reply_to_the_final_dot_is_an_error_not_a_delivery() {
    let server = FakeSmtp::start(Script::default().fault_on(0, Fault::DropAfterDot));
    let mut sink = smtp_sink(&server);
    let err = deliver(&mut sink, &message(0), 4096)
        .await
        .err()
        .expect("an error");
    assert_eq!(err.kind, Kind::Delivery);
    assert!(is_accepted(
        &deliver(&mut sink, &message(1), 4096).await.unwrap()
    ));
}

#[tokio::test]
async fn a_session_the_server_closed_while_idle_is_reopened() {
    let server = FakeSmtp::start(Script::default().fault_on(0, Fault::CloseAfterTransaction));
    let mut sink = smtp_sink(&server);
    assert!(is_accepted(
        &deliver(&mut sink, &message(0), 4096).await.unwrap()
    ));
    // Whether the sink notices the 421 before MAIL or because of it, the
    // next message goes through on a new session.
    assert!(is_accepted(
        &deliver(&mut sink, &message(1), 4096).await.unwrap()
    ));
    assert_eq!(server.accepted().len(), 2);
    assert_eq!(server.sessions().len(), 2);
}

#[tokio::test]
async fn abort_mid_data_drops_the_connection_without_the_final_dot() {
    let server = FakeSmtp::start(Script::default());
    let mut sink = smtp_sink(&server);
    let mut writer = sink.begin().await.unwrap();
    writer.write(&message(0)).await.unwrap();
    writer.write(&b"x".repeat(70_000)).await.unwrap();
    sink.abort(writer);
    server.wait_for("the cut", |s| s.cut() == 1);
    assert!(server.accepted().is_empty());
    assert!(is_accepted(
        &deliver(&mut sink, &message(1), 4096).await.unwrap()
    ));
    assert_eq!(server.accepted().len(), 1);
    assert_eq!(server.sessions().len(), 2);
}

#[tokio::test]
async fn a_message_over_the_announced_size_is_refused_without_sending_the_rest() {
    let server = FakeSmtp::start(Script::default().without("SIZE").capability("SIZE 100000"));
    let mut sink = smtp_sink(&server);
    let big: Vec<u8> = [message(0), b"y".repeat(1_000_000)].concat();
    let rejection = permanent(deliver(&mut sink, &big, 8192).await.unwrap());
    assert!(rejection.reason.contains("100000"), "{}", rejection.reason);
    server.wait_for("the cut", |s| s.cut() == 1);
    assert!(server.accepted().is_empty());
    // A small one still goes through, on a new connection.
    assert!(is_accepted(
        &deliver(&mut sink, &message(1), 4096).await.unwrap()
    ));
}

#[tokio::test]
async fn starttls_required_but_not_offered_stops_before_anything_is_sent() {
    let server = FakeSmtp::start(Script::default().fault(Fault::NoStartTls));
    let mut t = target(&server, MtaProtocol::Smtp);
    t.server.tls = TlsMode::StartTls;
    t.server.username = Some(USER.to_owned());
    let mut sink = sink_for(t, &[RCPT]);
    let err = sink.begin().await.err().expect("must refuse");
    assert_eq!(err.kind, Kind::Delivery, "{err}");
    assert!(err.message.contains("STARTTLS"), "{err}");
    server.wait_for("the hang-up", |s| !s.sessions().is_empty());
    assert_eq!(commands(&server, 0), ["EHLO"]);
}

#[tokio::test]
async fn bytes_injected_after_the_starttls_reply_are_refused() {
    let server = FakeSmtp::start(Script::default().fault(Fault::StartTlsInjection));
    let mut t = target(&server, MtaProtocol::Smtp);
    t.server.tls = TlsMode::StartTls;
    let mut sink = sink_for(t, &[RCPT]);
    let err = sink.begin().await.err().expect("must refuse");
    assert!(err.message.contains("before the TLS handshake"), "{err}");
    assert_eq!(commands(&server, 0), ["EHLO", "STARTTLS"]);
}

#[tokio::test]
async fn auth_plain_login_and_xoauth2() {
    for (method, mechanism) in [
        (AuthMethod::Auto, "PLAIN"),
        (AuthMethod::Plain, "PLAIN"),
        (AuthMethod::Login, "LOGIN"),
        (AuthMethod::XOAuth2, "XOAUTH2"),
    ] {
        let server = FakeSmtp::start(Script::default().auth_required());
        let mut t = target(&server, MtaProtocol::Smtp);
        t.server.username = Some(USER.to_owned());
        t.server.auth = method;
        let mut sink = sink_for(t, &[RCPT]);
        assert!(
            is_accepted(&deliver(&mut sink, &message(0), 4096).await.unwrap()),
            "{mechanism}"
        );
        let auth = server
            .transcript()
            .into_iter()
            .find(|l| l.starts_with("AUTH"))
            .unwrap();
        assert!(auth.starts_with(&format!("AUTH {mechanism}")), "{auth}");
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error() {
    let server = FakeSmtp::start(Script::default().auth_required());
    let mut t = target(&server, MtaProtocol::Smtp);
    t.server.username = Some(USER.to_owned());
    let mut sink = SmtpSink::new(
        t,
        Some(Secret::new("wrong".to_owned())),
        vec![RCPT.to_owned()],
        EnvelopeFrom::ReturnPath,
        "client.example".to_owned(),
    );
    let err = sink.begin().await.err().expect("must fail");
    assert_eq!(err.kind, Kind::Auth, "{err}");
    assert!(err.message.contains("535 5.7.8"), "{err}");
    assert!(!err.message.contains("wrong"));
    assert!(server.transcript().iter().all(|l| !l.starts_with("MAIL")));
}

#[tokio::test]
async fn a_fixed_envelope_sender_and_utf8_addresses() {
    let server = FakeSmtp::start(Script::default());
    let mut sink = SmtpSink::new(
        target(&server, MtaProtocol::Smtp),
        None,
        vec!["jörg@example.test".to_owned()],
        EnvelopeFrom::Fixed(Sender::Address("fixed@example.org".into())),
        "client.example".to_owned(),
    );
    // The server lacks SMTPUTF8: a UTF-8 recipient cannot be expressed.
    let rejection = permanent(deliver(&mut sink, &message(0), 4096).await.unwrap());
    assert!(
        rejection.reason.contains("SMTPUTF8"),
        "{}",
        rejection.reason
    );
    assert!(server.transcript().iter().all(|l| !l.starts_with("MAIL")));

    let server = FakeSmtp::start(Script::default().capability("SMTPUTF8"));
    let mut sink = SmtpSink::new(
        target(&server, MtaProtocol::Smtp),
        None,
        vec!["jörg@example.test".to_owned()],
        EnvelopeFrom::Fixed(Sender::Address("fixed@example.org".into())),
        "client.example".to_owned(),
    );
    assert!(is_accepted(
        &deliver(&mut sink, &message(0), 4096).await.unwrap()
    ));
    let accepted = server.accepted();
    assert_eq!(accepted[0].from, "fixed@example.org");
    assert_eq!(accepted[0].params, "BODY=8BITMIME SMTPUTF8");
    assert_eq!(accepted[0].recipients, vec!["jörg@example.test"]);
}

#[tokio::test]
async fn lmtp_counts_a_message_delivered_only_when_every_recipient_took_it() {
    let recipients = [RCPT, "bob@example.test"];
    let cases: [(Vec<&str>, &str); 3] = [
        (vec!["250 2.0.0 ok", "250 2.0.0 ok"], "accepted"),
        (vec!["250 2.0.0 ok", "452 4.2.2 mailbox full"], "temporary"),
        (vec!["550 5.1.1 no such user", "250 2.0.0 ok"], "permanent"),
    ];
    for (replies, expected) in cases {
        let script = Script::lmtp().fault_on(
            0,
            Fault::LmtpReplies(replies.iter().map(|r| r.to_string()).collect()),
        );
        let server = FakeSmtp::start(script);
        let mut sink = sink_for(target(&server, MtaProtocol::Lmtp), &recipients);
        let outcome = deliver(&mut sink, &message(0), 4096).await.unwrap();
        // The recipients that said 250 are named, so that a retry skips them.
        let took: Vec<&str> = recipients
            .iter()
            .zip(&replies)
            .filter(|(_, reply)| reply.starts_with('2'))
            .map(|(recipient, _)| *recipient)
            .collect();
        match expected {
            "accepted" => assert!(is_accepted(&outcome)),
            "temporary" => {
                let (delivered_to, failure) = partly(outcome);
                assert_eq!(delivered_to, took);
                assert!(temporary(failure).contains("452 4.2.2"));
            }
            _ => {
                let (delivered_to, failure) = partly(outcome);
                assert_eq!(delivered_to, took);
                assert!(permanent(failure).reason.contains("550 5.1.1"));
            }
        }
        // The session is in step: the next message works on it.
        assert!(is_accepted(
            &deliver(&mut sink, &message(1), 4096).await.unwrap()
        ));
        sink.close().await;
        assert_eq!(server.sessions().len(), 1);
        assert_eq!(commands(&server, 0)[0], "LHLO");
    }
}

#[tokio::test]
async fn bounces_go_out_with_the_null_sender() {
    let server = FakeSmtp::start(Script::default());
    let t = target(&server, MtaProtocol::Smtp);
    let rejection = mailfetch::sink::Rejection {
        reason: "550 5.1.1 unknown user".to_owned(),
        sender: Some("sender@example.org".to_owned()),
        headers: b"Subject: hi\r\n\r\n".to_vec(),
    };
    let report = bounce::compose(
        &rejection,
        &[RCPT.to_owned()],
        "client.example",
        SystemTime::now(),
    );
    send_bounce(&t, None, "client.example", "sender@example.org", &report)
        .await
        .unwrap();
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].from, "");
    assert_eq!(accepted[0].recipients, vec!["sender@example.org"]);
    assert_eq!(accepted[0].data, report);

    // A refused bounce is an error.
    let server =
        FakeSmtp::start(Script::default().fault(Fault::Rcpt(None, "550 5.1.1 nobody".into())));
    let err = send_bounce(
        &target(&server, MtaProtocol::Smtp),
        None,
        "client.example",
        "sender@example.org",
        &report,
    )
    .await
    .expect_err("must fail");
    assert_eq!(err.kind, Kind::Delivery);
    assert!(err.message.contains("550 5.1.1 nobody"), "{err}");
}

/// A name for this machine that is not spelled as loopback but reaches the
/// fake server on 127.0.0.1 (Debian maps the host name there), if any.
fn non_loopback_name_for_localhost() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = mailfetch::received::local_hostname();
    let reaches = (name.as_str(), 0)
        .to_socket_addrs()
        .ok()?
        .any(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST);
    (reaches && !mailfetch::net::is_loopback_host(&name)).then_some(name)
}

#[tokio::test]
async fn no_password_in_the_clear_to_another_host() {
    let Some(name) = non_loopback_name_for_localhost() else {
        eprintln!("SKIPPED: the host name does not resolve to 127.0.0.1 here");
        return;
    };
    let server = FakeSmtp::start(Script::default().auth_required());
    for (method, allow) in [
        (AuthMethod::Auto, false),
        (AuthMethod::Plain, false),
        (AuthMethod::Login, false),
        (AuthMethod::Plain, true),
    ] {
        let mut t = target(&server, MtaProtocol::Smtp);
        t.server.host = name.clone();
        t.server.username = Some(USER.to_owned());
        t.server.auth = method;
        t.server.allow_plaintext_auth = allow;
        let mut sink = sink_for(t, &[RCPT]);
        let before = server.transcript().len();
        let result = deliver(&mut sink, &message(0), 4096).await;
        let sent: Vec<String> = server.transcript()[before..].to_vec();
        if allow {
            assert!(is_accepted(&result.unwrap()), "{method:?}");
            assert!(sent.iter().any(|l| l.starts_with("AUTH PLAIN")));
        } else {
            let err = result.err().expect("must refuse");
            assert_eq!(err.kind, Kind::Auth, "{method:?}: {err}");
            assert!(
                err.message.contains("clear") || err.message.contains("no usable AUTH"),
                "{err}"
            );
            assert!(sent.iter().all(|l| !l.starts_with("AUTH")), "{sent:?}");
        }
    }
}
