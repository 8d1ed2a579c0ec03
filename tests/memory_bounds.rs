//! What a server can make mailfetch's memory grow to: nothing a server
//! sends takes mailfetch past 64 MiB, except what a huge mailbox
//! legitimately costs, and a million-message mailbox stays under 128 MiB.
//! Each test measures the peak RSS of the mailfetch process it runs. A
//! child starts with the size this process had at the spawn (see
//! `testkit::run::Outcome::max_rss_kib`), so this process stays small: it
//! is a test binary of its own, the tests take turns, and the hostile
//! servers write their bytes as they go rather than from a buffer.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::thread;

use testkit::fake_pop3::{FakePop3, Fault, Message, PASSWORD, Script};
use testkit::run::{Outcome, RUN_LIMIT, Scratch, measure, spawn_mailfetch};

const MIB: i64 = 1024;

/// One test at a time (see the module's comment).
static TURN: Mutex<()> = Mutex::new(());

/// Runs mailfetch once against a server on `port`, with extra account keys.
fn run(protocol: &str, port: u16, extra: &str) -> Outcome {
    let scratch = Scratch::new();
    let config = scratch.write_config(&format!(
        "[[account]]\nname = \"hostile\"\nprotocol = \"{protocol}\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         tls = \"none\"\nusername = \"alice\"\npassword = \"{PASSWORD}\"\nauth = \"user\"\ntimeout = \"10s\"\n\
         deliver = \"maildir:{}\"\n{extra}\n",
        scratch.maildir().display()
    ));
    measure(spawn_mailfetch(&config, &[]), RUN_LIMIT)
}

/// A server whose greeting to its one client `greet` writes, after which
/// it reads until the client goes away.
fn raw_server(greet: impl FnOnce(&mut TcpStream) -> io::Result<()> + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let _ = greet(&mut client);
        let _ = client.read_to_end(&mut Vec::new());
    });
    port
}

#[test]
fn a_16_mib_capability_line_before_login_stays_under_64_mib() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let port = raw_server(|client| {
        client.write_all(b"* CAPABILITY")?;
        let chunk = b" A".repeat(32 * 1024);
        for _ in 0..128 {
            client.write_all(&chunk)?;
        }
        client.write_all(b"\r\n")
    });
    let run = run("imap", port, "");
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.max_rss_kib < 64 * MIB, "{run:?}");
}

#[test]
fn a_greeting_of_chained_literals_stays_under_64_mib() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let port = raw_server(|client| {
        client.write_all(b"* OK")?;
        let literal = vec![b'x'; 1024 * 1024];
        for _ in 0..100 {
            client.write_all(b" {1048576}\r\n")?;
            client.write_all(&literal)?;
        }
        client.write_all(b"\r\n")
    });
    let run = run("imap", port, "");
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("longer than"), "{run:?}");
    assert!(run.max_rss_kib < 64 * MIB, "{run:?}");
}

#[test]
fn an_endless_uidl_listing_is_refused_under_64_mib() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let server = FakePop3::start(
        vec![Message::new("uid-1", "Subject: x\n\nhi\n")],
        Script::default().fault(Fault::EndlessUidl),
    );
    let run = run("pop3", server.port(), "");
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("more than 2000000 messages"), "{run:?}");
    assert!(run.max_rss_kib < 64 * MIB, "{run:?}");
    assert!(server.deleted().is_empty());
}

#[test]
fn a_million_message_pop3_mailbox_stays_under_128_mib() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let server = FakePop3::start(
        vec![Message::new("uid-1", "Subject: x\n\nhi\n")],
        Script::default().fault(Fault::Synthetic(999_999)),
    );
    let run = run("pop3", server.port(), "keep = true\nmax_per_poll = 1");
    assert_eq!(run.code, Some(0), "{run:?}");
    eprintln!("a million-message mailbox: {run:?}");
    assert!(run.max_rss_kib < 128 * MIB, "{run:?}");
}
