//! The IMAP APPEND sink against a real Dovecot on loopback.

use std::path::PathBuf;
use std::time::Duration;

use mailfetch::config::{AuthMethod, Endpoint, ImapTarget, PasswordSource, Secret, TlsMode};
use mailfetch::error::Kind;
use mailfetch::sink::imap_append::ImapAppendSink;
use mailfetch::sink::{Acceptance, Delivered, MessageWriter, Sink};
use testkit::dovecot::Dovecot;

const PASSWORD: &str = "append-Pa55";

fn server() -> Option<Dovecot> {
    let dovecot = Dovecot::start()?;
    dovecot.add_user("bob", PASSWORD);
    Some(dovecot)
}

struct Setup {
    target: ImapTarget,
    password: Option<Secret>,
    spool: tempfile::TempDir,
}

impl Setup {
    /// bob's `folder` over plain IMAP on loopback.
    fn new(dovecot: &Dovecot, folder: &str) -> Setup {
        Setup {
            target: ImapTarget {
                folder: folder.into(),
                seen: false,
                server: Endpoint {
                    host: "127.0.0.1".into(),
                    port: dovecot.imap_port(),
                    tls: TlsMode::None,
                    ca_file: Some(dovecot.ca_file().to_owned()),
                    fingerprint: None,
                    username: Some("bob".into()),
                    password: PasswordSource::Inline(Secret::new(PASSWORD.into())),
                    auth: AuthMethod::Auto,
                    allow_plaintext_auth: false,
                    timeout: Duration::from_secs(30),
                },
            },
            password: Some(Secret::new(PASSWORD.into())),
            spool: tempfile::tempdir().unwrap(),
        }
    }

    fn spool_dir(&self) -> PathBuf {
        self.spool.path().join("spool")
    }

    fn sink(&self) -> ImapAppendSink {
        ImapAppendSink::new(self.target.clone(), self.password.clone(), self.spool_dir())
    }

    fn spooled(&self) -> usize {
        std::fs::read_dir(self.spool_dir()).map_or(0, |dir| dir.count())
    }
}

/// A message with LF line ends (as a POP3 source might pass on after a
/// Maildir round trip) and a Received date.
fn message(n: usize, received: &str) -> Vec<u8> {
    format!(
        "Return-Path: <alice@example.org>\n\
         Received: from mx.example.org by pop.example.org; {received}\n\
         Received: from a by b; Mon, 2 Mar 2020 09:00:00 +0000\n\
         From: alice@example.org\n\
         Subject: message {n}\n\
         Message-ID: <{n}@example.org>\n\
         \n\
         body of message {n}\n"
    )
    .into_bytes()
}

async fn deliver(sink: &mut ImapAppendSink, message: &[u8]) -> Acceptance<Delivered> {
    let mut writer = sink.begin().await.unwrap();
    for piece in message.chunks(7) {
        writer.write(piece).await.unwrap();
    }
    sink.finish(writer).await.unwrap()
}

fn crlf(message: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(message)
        .replace('\n', "\r\n")
        .into_bytes()
}

/// `doveadm fetch FIELD` for every message of bob's `folder`, in UID order.
fn fetch(dovecot: &Dovecot, folder: &str, field: &str) -> Vec<String> {
    let out = dovecot.doveadm_ok(&["fetch", "-u", "bob", field, "mailbox", folder, "ALL"]);
    let prefix = format!("{field}:");
    out.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().to_owned())
        .collect()
}

fn logins(dovecot: &Dovecot) -> usize {
    dovecot.log().matches("Login: user=<bob>").count()
}

#[tokio::test]
async fn messages_are_appended_over_one_session_with_their_received_dates() {
    let Some(dovecot) = server() else { return };
    dovecot.doveadm_ok(&["mailbox", "create", "-u", "bob", "Archive"]);
    let setup = Setup::new(&dovecot, "Archive");
    let mut sink = setup.sink();
    let dates = [
        "Tue, 3 Mar 2026 10:00:00 +0100",
        "Wed, 1 Jan 2025 23:30:15 -0500",
        "Sat, 9 Sep 2023 09:09:09 +0000",
    ];
    for (n, date) in dates.iter().enumerate() {
        let message = message(n, date);
        match deliver(&mut sink, &message).await {
            Acceptance::Accepted(delivered) => {
                assert_eq!(delivered.size, crlf(&message).len() as u64)
            }
            _ => panic!("message {n} not accepted"),
        }
        assert_eq!(setup.spooled(), 0, "spool file left behind");
    }
    sink.close().await;

    let texts = fetch(&dovecot, "Archive", "hdr");
    assert_eq!(texts.len(), 3, "{texts:?}");
    let sizes = fetch(&dovecot, "Archive", "size.virtual");
    for (n, size) in sizes.iter().enumerate() {
        assert_eq!(size, &crlf(&message(n, dates[n])).len().to_string());
    }
    let received: Vec<i64> = fetch(&dovecot, "Archive", "date.received.unixtime")
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(received, [1772528400, 1735792215, 1694250549]);
    assert!(dovecot.uids("bob", "Archive", &["SEEN"]).is_empty());
    assert_eq!(logins(&dovecot), 1, "one session for the whole poll");
    let log = dovecot.log();
    assert!(log.contains("Logged out"), "no LOGOUT: {log}");
}

#[tokio::test]
async fn the_body_arrives_byte_exact_in_crlf_form() {
    let Some(dovecot) = server() else { return };
    let setup = Setup::new(&dovecot, "INBOX");
    let mut sink = setup.sink();
    let original = b"Subject: exact\r\n\r\nmixed\nline\r\nends\n\n.\r\nend".to_vec();
    assert!(matches!(
        deliver(&mut sink, &original).await,
        Acceptance::Accepted(_)
    ));
    sink.close().await;
    let files = dovecot.messages("bob");
    assert_eq!(files.len(), 1);
    // Dovecot stores LF; it serves CRLF.
    assert_eq!(
        files[0],
        b"Subject: exact\n\nmixed\nline\nends\n\n.\nend".to_vec()
    );
}

#[tokio::test]
async fn seen_flags_appended_messages_read() {
    let Some(dovecot) = server() else { return };
    let mut setup = Setup::new(&dovecot, "INBOX");
    setup.target.seen = true;
    let mut sink = setup.sink();
    for n in 0..2 {
        deliver(&mut sink, &message(n, "Tue, 3 Mar 2026 10:00:00 +0100")).await;
    }
    sink.close().await;
    assert_eq!(dovecot.uids("bob", "INBOX", &["SEEN"]).len(), 2);
}

#[tokio::test]
async fn a_missing_folder_is_created_and_non_ascii_names_survive() {
    let Some(dovecot) = server() else { return };
    let setup = Setup::new(&dovecot, "Archiv.Ärger 2026");
    let mut sink = setup.sink();
    for n in 0..2 {
        match deliver(&mut sink, &message(n, "Tue, 3 Mar 2026 10:00:00 +0100")).await {
            Acceptance::Accepted(_) => {}
            Acceptance::TemporaryFailure(reason) => panic!("temporary: {reason}"),
            Acceptance::PermanentFailure(rejection) => panic!("permanent: {}", rejection.reason),
            Acceptance::Partial { .. } => panic!("partial"),
        }
    }
    sink.close().await;
    let folders = dovecot.doveadm_ok(&["mailbox", "list", "-u", "bob"]);
    assert!(
        folders.lines().any(|f| f == "Archiv.Ärger 2026"),
        "{folders}"
    );
    assert_eq!(dovecot.uids("bob", "Archiv.Ärger 2026", &["ALL"]).len(), 2);
}

#[tokio::test]
async fn starttls_and_implicit_tls_verify_the_server() {
    let Some(dovecot) = server() else { return };
    let mut setup = Setup::new(&dovecot, "INBOX");
    setup.target.server.host = "localhost".into();
    setup.target.server.tls = TlsMode::StartTls;
    let mut sink = setup.sink();
    assert!(matches!(
        deliver(&mut sink, &message(1, "Tue, 3 Mar 2026 10:00:00 +0100")).await,
        Acceptance::Accepted(_)
    ));
    sink.close().await;

    setup.target.server.tls = TlsMode::Implicit;
    setup.target.server.port = dovecot.imaps_port();
    let mut sink = setup.sink();
    assert!(matches!(
        deliver(&mut sink, &message(2, "Tue, 3 Mar 2026 10:00:00 +0100")).await,
        Acceptance::Accepted(_)
    ));
    sink.close().await;
    assert_eq!(dovecot.uids("bob", "INBOX", &["ALL"]).len(), 2);

    // Without the test CA, the certificate is refused before any login.
    setup.target.server.ca_file = None;
    let mut sink = setup.sink();
    let err = sink.begin().await.err().expect("an unverified server");
    // Trouble reaching the destination is a failed delivery (exit 10).
    assert_eq!(err.kind, Kind::Delivery, "{err}");
    assert!(err.message.contains("cannot be trusted"), "{err}");
    assert_eq!(logins(&dovecot), 2);
}

#[tokio::test]
async fn a_wrong_password_fails_before_anything_is_fetched() {
    let Some(dovecot) = server() else { return };
    let mut setup = Setup::new(&dovecot, "INBOX");
    setup.password = Some(Secret::new("wrong".into()));
    let mut sink = setup.sink();
    let err = sink.begin().await.err().expect("a refused login");
    assert_eq!(err.kind, Kind::Auth, "{err}");
    assert_eq!(setup.spooled(), 0);
}

#[tokio::test]
async fn a_poll_without_mail_never_connects() {
    let Some(dovecot) = server() else { return };
    let setup = Setup::new(&dovecot, "INBOX");
    let mut sink = setup.sink();
    sink.close().await;
    assert!(!dovecot.log().contains("user=<bob>"));
}

#[tokio::test]
async fn an_aborted_message_leaves_nothing_behind() {
    let Some(dovecot) = server() else { return };
    let setup = Setup::new(&dovecot, "INBOX");
    let mut sink = setup.sink();
    let mut writer = sink.begin().await.unwrap();
    writer
        .write(b"Subject: half\r\n\r\nhalf a mess")
        .await
        .unwrap();
    assert_eq!(setup.spooled(), 1);
    sink.abort(writer);
    assert_eq!(setup.spooled(), 0);
    // The session still works for the next message.
    assert!(matches!(
        deliver(&mut sink, &message(1, "Tue, 3 Mar 2026 10:00:00 +0100")).await,
        Acceptance::Accepted(_)
    ));
    sink.close().await;
    assert_eq!(dovecot.uids("bob", "INBOX", &["ALL"]).len(), 1);
}
