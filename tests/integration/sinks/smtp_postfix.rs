//! The SMTP sink against a real Postfix (a private instance on loopback,
//! delivering to Maildirs): messages arrive intact, with the envelope sender
//! from Return-Path, over one session; STARTTLS with a pinned certificate;
//! a 20 MB message streams; an unknown recipient is refused for good.

use std::time::Duration;

use mailfetch::config::{Endpoint, EnvelopeFrom, MtaProtocol, MtaTarget, TlsMode};
use mailfetch::error::Error;
use mailfetch::sink::smtp::SmtpSink;
use mailfetch::sink::{Acceptance, Delivered, MessageWriter, Sink};
use testkit::postfix::Postfix;

const DELIVERY_WAIT: Duration = Duration::from_secs(30);

fn target(postfix: &Postfix) -> MtaTarget {
    MtaTarget {
        protocol: MtaProtocol::Smtp,
        socket: None,
        server: Endpoint {
            host: "127.0.0.1".to_owned(),
            ..Endpoint::local_mta(postfix.port(), Duration::from_secs(30))
        },
    }
}

fn smtp_sink(target: MtaTarget, recipients: &[String]) -> SmtpSink {
    SmtpSink::new(
        target,
        None,
        recipients.to_vec(),
        EnvelopeFrom::ReturnPath,
        "client.example".to_owned(),
    )
}

async fn deliver(
    sink: &mut SmtpSink,
    message: &[u8],
    chunk: usize,
) -> Result<Acceptance<Delivered>, Error> {
    let mut writer = sink.begin().await?;
    for piece in message.chunks(chunk) {
        writer.write(piece).await.unwrap();
    }
    sink.finish(writer).await
}

/// Postfix stores Maildir files with LF line ends.
fn unix_form(message: &[u8]) -> Vec<u8> {
    let text = message.to_vec();
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\r' && text.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

fn parse_fingerprint(text: &str) -> [u8; 32] {
    let hex = text.strip_prefix("sha256:").unwrap().replace(':', "");
    let bytes: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Asserts that `delivered` is `sent` (minus its Return-Path, which Postfix
/// replaces) below Postfix's own trace headers, with `sender` as the
/// envelope sender.
fn assert_intact(delivered: &[u8], sent: &[u8], sender: &str) {
    let delivered = String::from_utf8_lossy(delivered);
    assert!(
        delivered.starts_with(&format!("Return-Path: <{sender}>\n")),
        "{delivered}"
    );
    let sent: Vec<u8> = unix_form(sent);
    let sent = String::from_utf8_lossy(&sent);
    let sent: String = sent
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("Return-Path:"))
        .collect();
    assert!(
        delivered.ends_with(&sent),
        "delivered:\n{delivered}\n---- sent:\n{sent}"
    );
}

#[tokio::test]
async fn messages_arrive_intact_over_one_session() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let alice = Postfix::address("alice");
    let mut sink = smtp_sink(target(&postfix), std::slice::from_ref(&alice));
    let messages: Vec<(Vec<u8>, &str)> = vec![
        (
            b"Return-Path: <one@example.org>\r\nFrom: one@example.org\r\nSubject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nend\r\n".to_vec(),
            "one@example.org",
        ),
        (
            b"Return-Path: <two@example.org>\nFrom: two@example.org\nSubject: bare LF\n\nline one\nline two\n".to_vec(),
            "two@example.org",
        ),
        (
            "Return-Path: <three@example.org>\r\nFrom: three@example.org\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, ça va? 日本語\r\n"
                .as_bytes()
                .to_vec(),
            "three@example.org",
        ),
        (
            b"From: nobody@example.org\r\nSubject: no Return-Path\r\n\r\nbody without final newline".to_vec(),
            "",
        ),
    ];
    for (i, (message, _)) in messages.iter().enumerate() {
        let outcome = deliver(&mut sink, message, 5 + i * 11).await.unwrap();
        assert!(matches!(outcome, Acceptance::Accepted(_)), "message {i}");
    }
    sink.close().await;
    postfix.wait_for_messages("alice", messages.len(), DELIVERY_WAIT);

    // Postfix files are named by delivery time; match by Subject instead.
    let delivered = postfix.messages("alice");
    for (message, sender) in &messages {
        let subject = String::from_utf8_lossy(message)
            .lines()
            .find(|l| l.starts_with("Subject:"))
            .unwrap()
            .to_owned();
        let file = delivered
            .iter()
            .find(|d| String::from_utf8_lossy(d).contains(&subject))
            .unwrap_or_else(|| panic!("{subject} not delivered"));
        let mut expected = message.clone();
        if !expected.ends_with(b"\n") {
            expected.extend_from_slice(b"\r\n");
        }
        assert_intact(file, &expected, sender);
    }
    let log = postfix.log();
    // The harness's readiness probe connects too, without EHLO.
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("disconnect from localhost") && l.contains("ehlo=1"))
            .count(),
        1,
        "one SMTP session for all messages; log:\n{log}"
    );
}

#[tokio::test]
async fn starttls_with_a_pinned_certificate() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let mut t = target(&postfix);
    t.server.tls = TlsMode::StartTls;
    t.server.fingerprint = Some(parse_fingerprint(postfix.fingerprint()).into());
    let mut sink = smtp_sink(t.clone(), &[Postfix::address("bob")]);
    let message = b"Return-Path: <tls@example.org>\r\nSubject: over TLS\r\n\r\nsecret\r\n";
    assert!(matches!(
        deliver(&mut sink, message, 4096).await.unwrap(),
        Acceptance::Accepted(_)
    ));
    sink.close().await;
    postfix.wait_for_messages("bob", 1, DELIVERY_WAIT);
    assert!(
        postfix
            .log()
            .contains("TLS connection established from localhost")
    );

    // Another pin: the handshake fails and nothing is sent.
    t.server.fingerprint = Some([0; 32].into());
    let mut sink = smtp_sink(t, &[Postfix::address("bob")]);
    let err = sink.begin().await.err().expect("a wrong pin must fail");
    assert_eq!(err.kind, mailfetch::error::Kind::Delivery, "{err}");
    assert!(err.message.contains("sha256:"), "{err}");
}

#[tokio::test]
async fn a_20_mb_message_streams_through() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let mut sink = smtp_sink(target(&postfix), &[Postfix::address("carol")]);
    let mut message = b"Return-Path: <big@example.org>\r\nSubject: big\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?\r\n";
    while message.len() < 20 << 20 {
        message.extend_from_slice(line);
        message.extend_from_slice(b".starts with a dot\r\n");
    }
    let outcome = deliver(&mut sink, &message, 65536).await.unwrap();
    assert!(
        matches!(outcome, Acceptance::Accepted(Delivered { size }) if size == message.len() as u64)
    );
    sink.close().await;
    postfix.wait_for_messages("carol", 1, DELIVERY_WAIT);
    assert_intact(&postfix.messages("carol")[0], &message, "big@example.org");
}

#[tokio::test]
async fn an_unknown_recipient_is_refused_for_good() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let mut sink = smtp_sink(
        target(&postfix),
        &[Postfix::address("alice"), Postfix::address("nosuchuser")],
    );
    let message = b"Return-Path: <s@example.org>\r\nSubject: x\r\n\r\nx\r\n";
    match deliver(&mut sink, message, 4096).await.unwrap() {
        Acceptance::PermanentFailure(rejection) => {
            assert!(
                rejection.reason.starts_with("550 5.1.1"),
                "{}",
                rejection.reason
            );
            assert_eq!(rejection.sender.as_deref(), Some("s@example.org"));
        }
        _ => panic!("expected a permanent failure"),
    }
    // Nothing reached alice either, and the session still works.
    let mut sink2 = smtp_sink(target(&postfix), &[Postfix::address("alice")]);
    assert!(matches!(
        deliver(&mut sink2, message, 4096).await.unwrap(),
        Acceptance::Accepted(_)
    ));
    assert!(matches!(
        deliver(&mut sink, b"Subject: y\r\n\r\n", 4096)
            .await
            .unwrap(),
        Acceptance::PermanentFailure(_)
    ));
    postfix.wait_for_messages("alice", 1, DELIVERY_WAIT);
}

#[tokio::test]
async fn smtps_with_tls_from_the_first_byte() {
    let Some(postfix) = Postfix::start() else {
        return;
    };
    let mut t = target(&postfix);
    t.server.port = postfix.smtps_port();
    t.server.tls = TlsMode::Implicit;
    t.server.fingerprint = Some(parse_fingerprint(postfix.fingerprint()).into());
    let mut sink = smtp_sink(t, &[Postfix::address("carol")]);
    let message = b"Return-Path: <smtps@example.org>\r\nSubject: smtps\r\n\r\nwrapped\r\n";
    for _ in 0..2 {
        assert!(matches!(
            deliver(&mut sink, message, 4096).await.unwrap(),
            Acceptance::Accepted(_)
        ));
    }
    sink.close().await;
    postfix.wait_for_messages("carol", 2, DELIVERY_WAIT);
    assert_intact(&postfix.messages("carol")[0], message, "smtps@example.org");
}
