//! The LMTP sink against a real Dovecot LMTP server, over TCP and over a
//! Unix socket (a relay to Dovecot's TCP listener, since the harness's
//! Dovecot listens on TCP only).

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use mailfetch::config::{Endpoint, EnvelopeFrom, MtaProtocol, MtaTarget};
use mailfetch::error::Error;
use mailfetch::sink::smtp::SmtpSink;
use mailfetch::sink::{Acceptance, Delivered, MessageWriter, Sink};
use testkit::dovecot::Dovecot;

/// Where Dovecot's LMTP listens: a port on 127.0.0.1, or a Unix socket.
enum Address {
    Tcp(u16),
    Unix(PathBuf),
}

fn lmtp_target(address: Address) -> MtaTarget {
    let timeout = Duration::from_secs(30);
    let (server, socket) = match address {
        Address::Tcp(port) => {
            let server = Endpoint {
                host: "127.0.0.1".to_owned(),
                ..Endpoint::local_mta(port, timeout)
            };
            (server, None)
        }
        Address::Unix(path) => (Endpoint::local_mta(0, timeout), Some(path)),
    };
    MtaTarget {
        protocol: MtaProtocol::Lmtp,
        socket,
        server,
    }
}

fn sink(address: Address, recipients: &[&str]) -> SmtpSink {
    SmtpSink::new(
        lmtp_target(address),
        None,
        recipients.iter().map(|r| r.to_string()).collect(),
        EnvelopeFrom::ReturnPath,
        "client.example".to_owned(),
    )
}

async fn deliver(sink: &mut SmtpSink, message: &[u8]) -> Result<Acceptance<Delivered>, Error> {
    let mut writer = sink.begin().await?;
    for piece in message.chunks(1000) {
        writer.write(piece).await.unwrap();
    }
    sink.finish(writer).await
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "Return-Path: <sender{n}@example.org>\r\nFrom: sender{n}@example.org\r\nSubject: lmtp {n}\r\n\r\nbody {n}\r\n.\r\n..dots\r\n"
    )
    .into_bytes()
}

fn tcp(dovecot: &Dovecot) -> Address {
    Address::Tcp(dovecot.lmtp_port())
}

fn start() -> Option<Dovecot> {
    let dovecot = Dovecot::start()?;
    dovecot.add_user("alice", "pw");
    dovecot.add_user("bob", "pw");
    Some(dovecot)
}

#[tokio::test]
async fn every_recipient_gets_every_message_over_one_session() {
    let Some(dovecot) = start() else {
        return;
    };
    let mut sink = sink(tcp(&dovecot), &["alice", "bob"]);
    for n in 0..3 {
        let outcome = deliver(&mut sink, &message(n)).await.unwrap();
        assert!(matches!(outcome, Acceptance::Accepted(_)), "message {n}");
    }
    sink.close().await;
    for user in ["alice", "bob"] {
        let messages = dovecot.messages(user);
        assert_eq!(messages.len(), 3, "{user}");
        for n in 0..3 {
            let text = String::from_utf8_lossy(&message(n))
                .replace("\r\n", "\n")
                .replacen(&format!("Return-Path: <sender{n}@example.org>\n"), "", 1);
            assert!(
                messages.iter().any(|m| {
                    let m = String::from_utf8_lossy(m).replace("\r\n", "\n");
                    m.starts_with(&format!("Return-Path: <sender{n}@example.org>\n"))
                        && m.ends_with(&text)
                }),
                "message {n} for {user}: {messages:?}"
            );
        }
    }
}

#[tokio::test]
async fn an_unknown_recipient_refuses_the_message_for_everyone() {
    let Some(dovecot) = start() else {
        return;
    };
    let mut sink = sink(tcp(&dovecot), &["alice", "nosuchuser"]);
    match deliver(&mut sink, &message(0)).await.unwrap() {
        Acceptance::PermanentFailure(rejection) => {
            assert!(rejection.reason.starts_with("550"), "{}", rejection.reason);
            assert_eq!(rejection.sender.as_deref(), Some("sender0@example.org"));
        }
        Acceptance::TemporaryFailure(reason) => panic!("temporary: {reason}"),
        Acceptance::Accepted(_) => panic!("accepted"),
        Acceptance::Partial { delivered_to, .. } => panic!("delivered to {delivered_to:?}"),
    }
    sink.close().await;
    assert_eq!(dovecot.message_count("alice"), 0);
}

/// Relays one Unix socket connection at a time to Dovecot's LMTP port.
fn unix_relay(path: &Path, port: u16) {
    let listener = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                return;
            };
            let (mut client_in, mut server_out) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut server_in, mut client_out) = (server, client);
            thread::spawn(move || {
                let _ = io::copy(&mut client_in, &mut server_out);
                let _ = server_out.shutdown(Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = io::copy(&mut server_in, &mut client_out);
                let _ = client_out.shutdown(Shutdown::Write);
            });
        }
    });
}

#[tokio::test]
async fn over_a_unix_socket() {
    let Some(dovecot) = start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lmtp");
    unix_relay(&socket, dovecot.lmtp_port());
    let mut sink = sink(Address::Unix(socket), &["bob"]);
    assert!(sink.describe().starts_with("lmtp /"));
    for n in 0..2 {
        assert!(matches!(
            deliver(&mut sink, &message(n)).await.unwrap(),
            Acceptance::Accepted(_)
        ));
    }
    sink.close().await;
    assert_eq!(dovecot.message_count("bob"), 2);
}
