//! A 20 MB message goes through the IMAP APPEND sink in bounded memory.
//! Alone in its test binary, so that the process's peak RSS is its own.

use std::time::Duration;

use mailfetch::config::{AuthMethod, Endpoint, ImapTarget, PasswordSource, Secret, TlsMode};
use mailfetch::sink::imap_append::ImapAppendSink;
use mailfetch::sink::{Acceptance, MessageWriter, Sink};
use testkit::dovecot::Dovecot;

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_20_mb_message_is_appended_in_bounded_memory() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("bob", "big-Pa55");
    let spool = tempfile::tempdir().unwrap();
    let target = ImapTarget {
        folder: "INBOX".into(),
        seen: false,
        server: Endpoint {
            host: "127.0.0.1".into(),
            port: dovecot.imap_port(),
            tls: TlsMode::None,
            ca_file: None,
            fingerprint: None,
            username: Some("bob".into()),
            password: PasswordSource::None,
            auth: AuthMethod::Auto,
            allow_plaintext_auth: false,
            timeout: Duration::from_secs(60),
        },
    };
    let mut sink = ImapAppendSink::new(
        target,
        Some(Secret::new("big-Pa55".into())),
        spool.path().to_owned(),
    );

    // 64 KiB of LF-terminated lines, written 320 times: 20 MiB of body,
    // never held in memory at once.
    let line = format!("{}\n", "0123456789abcdef".repeat(4).trim_end());
    let chunk = line.repeat(64 * 1024 / line.len());
    let chunks = 20 * 1024 * 1024 / chunk.len();
    let header = b"Subject: big\nDate: Tue, 3 Mar 2026 10:00:00 +0100\n\n";

    let mut writer = sink.begin().await.unwrap();
    let before = peak_rss_kib();
    writer.write(header).await.unwrap();
    for _ in 0..chunks {
        writer.write(chunk.as_bytes()).await.unwrap();
    }
    let accepted = sink.finish(writer).await.unwrap();
    let grown = peak_rss_kib() - before;
    sink.close().await;

    let expected = (header.len() + 3 + chunks * (chunk.len() + chunk.len() / line.len())) as u64;
    match accepted {
        Acceptance::Accepted(delivered) => assert_eq!(delivered.size, expected),
        _ => panic!("not accepted"),
    }
    assert!(
        grown < 8 * 1024,
        "peak RSS grew by {grown} KiB for a {expected}-byte message"
    );
    let size = dovecot.doveadm_ok(&[
        "fetch",
        "-u",
        "bob",
        "size.virtual",
        "mailbox",
        "INBOX",
        "ALL",
    ]);
    assert_eq!(size.trim(), format!("size.virtual: {expected}"));
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}
