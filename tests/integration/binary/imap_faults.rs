//! Faults a real server (Dovecot) cannot be made to produce, played by the
//! in-tree fake IMAP server against the real `mailfetch` binary.
//!
//! Each test asserts what a user must be able to rely on: the exit code,
//! exactly which messages are in `Maildir/new` (byte-exact), that `tmp/`
//! holds no partial message, what the server expunged, moved or flagged,
//! and what the next run against a healthy server does.
//!
//! mailfetch first fetches the header fields and size of every new message
//! in one `UID FETCH` (the "describe" step), and only then the bodies, one
//! `UID FETCH <uid> (UID BODY.PEEK[])` each. The fake's per-message faults
//! ([`Fault::CutLiteral`], [`Fault::HugeLiteral`], …) hit the first FETCH
//! response that carries the message, which is always the describe step's.
//! To put the same faults into a *body* fetch, the tests also run mailfetch
//! through [`Proxy`], a small relay that tampers with one `BODY[]` response
//! on its first connection only.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use testkit::fake_imap::{FakeImap, Fault, Folder, Message, PASSWORD, Script};
use testkit::run::{Case, files_in, without_received};

/// What these tests read from a [`Case`] against the fake IMAP server.
trait ImapCase {
    fn new(port: u16) -> Self;
    fn delivered(&self) -> Vec<String>;
    fn assert_no_partial(&self, candidates: &[Message]);
}

impl ImapCase for Case {
    fn new(port: u16) -> Case {
        Case::account("imap", port, PASSWORD, "2s")
    }

    /// Contents of `new/`, with the prepended `Received:` header checked and
    /// removed, sorted (as text, so that a failed comparison is readable;
    /// any invalid UTF-8 shows as U+FFFD and cannot compare equal).
    fn delivered(&self) -> Vec<String> {
        let mut all: Vec<String> = files_in(&self.maildir().join("new"))
            .iter()
            .map(|path| {
                let content = fs::read(path).unwrap();
                String::from_utf8_lossy(without_received(&content)).into_owned()
            })
            .collect();
        all.sort();
        all
    }

    /// Asserts that no partial message is anywhere in the Maildir: `tmp/`
    /// is empty and every file in `new/` is one of `candidates`, whole.
    #[track_caller]
    fn assert_no_partial(&self, candidates: &[Message]) {
        let tmp = files_in(&self.maildir().join("tmp"));
        assert!(tmp.is_empty(), "files left in tmp/: {tmp:?}");
        let whole = expected(&candidates.iter().collect::<Vec<_>>());
        for message in self.delivered() {
            assert!(
                whole.contains(&message),
                "partial or altered message in new/:\n{message}"
            );
        }
    }
}

// ---- messages and transcripts -------------------------------------------------

/// A plausible message of about `size` bytes, with the Message-ID, Date and
/// From fields mailfetch recognises messages by.
fn message(n: usize, size: usize) -> Message {
    let mut text = format!(
        "From: Bob <bob@example.org>\nTo: alice@example.org\nSubject: message {n}\n\
         Date: Mon, 1 Jan 2024 10:{:02}:00 +0000\nMessage-ID: <{n}.fake@example.org>\n\n",
        n % 60
    );
    let mut line = 0;
    while text.len() < size {
        line += 1;
        text.push_str(&format!(
            "message {n}, line {line}: the quick brown fox jumps over the lazy dog\n"
        ));
    }
    text.push_str(".\n..a line with dots\nThe end.\n");
    Message::new(&text)
}

fn messages(count: usize) -> Vec<Message> {
    (1..=count).map(|n| message(n, 600 + 300 * n)).collect()
}

/// How a message must look in the Maildir (minus the Received: header).
fn local(message: &Message) -> String {
    String::from_utf8(message.data.clone())
        .unwrap()
        .replace("\r\n", "\n")
}

fn expected(messages: &[&Message]) -> Vec<String> {
    let mut all: Vec<String> = messages.iter().map(|m| local(m)).collect();
    all.sort();
    all
}

/// The commands of one session without their tags.
fn commands(server: &FakeImap, session: usize) -> Vec<String> {
    server.sessions()[session]
        .iter()
        .map(|line| line.split_once(' ').map_or("", |(_, c)| c).to_owned())
        .collect()
}

/// The commands of every session without their tags.
fn all_commands(server: &FakeImap) -> Vec<String> {
    (0..server.sessions().len())
        .flat_map(|s| commands(server, s))
        .collect()
}

/// The UIDs whose body one session fetched (`UID FETCH n (UID BODY.PEEK[])`).
fn body_fetches(server: &FakeImap, session: usize) -> Vec<u32> {
    commands(server, session)
        .iter()
        .filter_map(|c| c.strip_prefix("UID FETCH "))
        .filter_map(|c| c.strip_suffix(" (UID BODY.PEEK[])"))
        .map(|uid| uid.parse().unwrap())
        .collect()
}

/// Whether a command starting with `verb` (e.g. "EXPUNGE", "UID STORE")
/// was sent.
fn sent(commands: &[String], verb: &str) -> bool {
    commands
        .iter()
        .any(|c| c.eq_ignore_ascii_case(verb) || c.starts_with(&format!("{verb} ")))
}

fn expunged_uids(server: &FakeImap) -> Vec<u32> {
    server.expunged().into_iter().map(|(_, uid)| uid).collect()
}

// ---- a tampering relay ---------------------------------------------------------

/// What [`Proxy`] does to the `BODY[]` response of its target message.
#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// Sends the announcement and `after` bytes of the literal, then closes.
    Cut { after: usize },
    /// Sends `extra` `X`s after the literal, before the closing `)`.
    Longer { extra: usize },
    /// Announces `announce` bytes, sends 16, then stalls (stays open).
    Huge { announce: u64 },
    /// Replaces the response with `* n FETCH (UID u RFC822.SIZE xyz`.
    Malformed,
    /// Sends nothing more (stays open).
    Stall,
}

/// A relay between mailfetch and the fake that, on its first connection
/// only, tampers with the body fetch response of one message; later
/// connections pass through untouched. The config points at the proxy's
/// port in every run, so that the state (keyed by host and port) persists.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tampered: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16, uid: u32, tamper: Tamper) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let tampered = Arc::new(AtomicBool::new(false));
        let (stop2, tampered2) = (stop.clone(), tampered.clone());
        thread::spawn(move || {
            for (index, conn) in listener.incoming().enumerate() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || {
                    let _ = io::copy(&mut from_client, &mut to_server);
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                let tamper = (index == 0).then_some(tamper);
                let tampered = tampered2.clone();
                thread::spawn(move || relay(server, client, uid, tamper, &tampered));
            }
        });
        Proxy {
            addr,
            stop,
            tampered,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Whether the target's body response came by and was tampered with.
    fn tampered(&self) -> bool {
        self.tampered.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// `Some(n)` if the line ends with a literal announcement `{n}`.
fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

/// Copies the server's responses to the client, tampering as told with
/// the response carrying the body of message `uid`.
fn relay(
    server: TcpStream,
    mut client: TcpStream,
    uid: u32,
    tamper: Option<Tamper>,
    tampered: &AtomicBool,
) -> io::Result<()> {
    let mut reader = BufReader::new(server);
    let target = format!(" FETCH (UID {uid} BODY[] {{");
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return client.shutdown(Shutdown::Write);
        }
        let len = literal_len(&line);
        let mut literal = vec![0; len.unwrap_or(0)];
        reader.read_exact(&mut literal)?;
        let is_target = line.starts_with(b"* ")
            && len.is_some()
            && String::from_utf8_lossy(&line).contains(&target);
        let Some(tamper) = tamper.filter(|_| is_target) else {
            client.write_all(&line)?;
            client.write_all(&literal)?;
            continue;
        };
        tampered.store(true, Ordering::SeqCst);
        match tamper {
            Tamper::Cut { after } => {
                client.write_all(&line)?;
                client.write_all(&literal[..after.min(literal.len())])?;
                return client.shutdown(Shutdown::Write);
            }
            Tamper::Longer { extra } => {
                client.write_all(&line)?;
                client.write_all(&literal)?;
                client.write_all(&vec![b'X'; extra])?;
            }
            Tamper::Huge { announce } => {
                let open = line.iter().rposition(|&b| b == b'{').unwrap();
                client.write_all(&line[..open])?;
                client.write_all(format!("{{{announce}}}\r\n").as_bytes())?;
                client.write_all(&literal[..16])?;
                // Dropping our handles leaves the connection open: the
                // client-to-server thread still holds one.
                return Ok(());
            }
            Tamper::Malformed => {
                let line = String::from_utf8_lossy(&line).into_owned();
                let seq = line.split(' ').nth(1).unwrap().to_owned();
                client.write_all(
                    format!("* {seq} FETCH (UID {uid} RFC822.SIZE xyz\r\n").as_bytes(),
                )?;
                // Swallow the rest of the real response (its closing ")").
                reader.read_until(b'\n', &mut Vec::new())?;
            }
            Tamper::Stall => return Ok(()),
        }
    }
}

// ---- a healthy server ----------------------------------------------------------

#[test]
fn healthy_server_delivers_and_expunges_everything() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default());
    let case = Case::new(server.port());
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    case.assert_no_partial(&mail);
    assert_eq!(expunged_uids(&server), [1, 2, 3]);
    assert!(server.uids("INBOX").is_empty());
    let commands = commands(&server, 0);
    assert!(sent(&commands, "SELECT"), "{commands:?}");
    assert!(
        sent(&commands, "UID SEARCH RETURN (ALL) ALL"),
        "{commands:?}"
    );
    assert!(
        sent(
            &commands,
            "UID FETCH 1:3 (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM)])"
        ),
        "{commands:?}"
    );
    assert_eq!(body_fetches(&server, 0), [1, 2, 3]);
    assert!(sent(&commands, "UID EXPUNGE 1:3"), "{commands:?}");
    assert!(!sent(&commands, "EXPUNGE"), "{commands:?}");
    assert!(sent(&commands, "LOGOUT"), "{commands:?}");
    assert!(run.stderr.contains("3 new, 3 delivered"), "{run:?}");
}

// ---- 1. connection cut in the middle of a literal -------------------------------

#[test]
fn cut_mid_body_keeps_complete_messages_and_resumes() {
    let mail = vec![message(1, 2000), message(2, 4000), message(3, 1000)];
    let server = FakeImap::inbox(mail.clone(), Script::default());
    let half = mail[1].data.len() / 2;
    let proxy = Proxy::start(server.port(), 2, Tamper::Cut { after: half });
    let case = Case::new(proxy.port());

    let first = case.run();
    assert_eq!(first.code, Some(2), "{first:?}");
    assert!(proxy.tampered(), "the body of message 2 was never sent");
    assert!(first.stderr.contains("closed"), "{first:?}");
    assert_eq!(case.delivered(), expected(&[&mail[0]]), "{first:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
    assert!(!sent(&commands(&server, 0), "UID STORE"));

    let second = case.run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    case.assert_no_partial(&mail);
    assert_eq!(body_fetches(&server, 1), [2, 3], "message 1 fetched again");
    assert_eq!(expunged_uids(&server), [1, 2, 3]);
    assert!(server.uids("INBOX").is_empty());
}

/// The fake's own CutLiteral hits message 2's header-fields literal in the
/// describe step, before any body is fetched.
#[test]
fn cut_mid_header_literal_exits_2_and_resumes() {
    let mail = vec![message(1, 2000), message(2, 4000), message(3, 1000)];
    let script = Script::default()
        .fault(Fault::CutLiteral { uid: 2, after: 20 })
        .first_only();
    let server = FakeImap::inbox(mail.clone(), script);
    let case = Case::new(server.port());

    let first = case.run();
    assert_eq!(first.code, Some(2), "{first:?}");
    assert!(case.delivered().is_empty(), "{first:?}");
    case.assert_no_partial(&mail);
    assert!(body_fetches(&server, 0).is_empty());
    assert!(server.expunged().is_empty());
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);

    let second = case.run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    case.assert_no_partial(&mail);
    assert_eq!(body_fetches(&server, 1), [1, 2, 3]);
    assert_eq!(expunged_uids(&server), [1, 2, 3]);
}

// ---- 2. literal longer than announced --------------------------------------------

#[test]
fn body_longer_than_announced_exits_4_and_is_not_delivered() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default());
    let proxy = Proxy::start(server.port(), 2, Tamper::Longer { extra: 5 });
    let case = Case::new(proxy.port());

    let first = case.run();
    assert_eq!(first.code, Some(4), "{first:?}");
    assert!(proxy.tampered());
    // Message 1 was complete before the bad response and may be kept;
    // message 2 must not be delivered, in any form.
    assert_eq!(case.delivered(), expected(&[&mail[0]]), "{first:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);

    let second = case.run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    assert_eq!(body_fetches(&server, 1), [2, 3]);
    assert_eq!(expunged_uids(&server), [1, 2, 3]);
}

#[test]
fn header_literal_longer_than_announced_exits_4() {
    let mail = messages(3);
    let fault = Fault::LiteralLongerThanAnnounced { uid: 2, extra: 5 };
    let server = FakeImap::inbox(mail.clone(), Script::default().fault(fault));
    let case = Case::new(server.port());
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(case.delivered().is_empty(), "{run:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
}

// ---- 3. malformed FETCH response -------------------------------------------------

#[test]
fn malformed_fetch_exits_4_without_expunging() {
    let mail = messages(3);
    let server = FakeImap::inbox(
        mail.clone(),
        Script::default().fault(Fault::MalformedFetch { uid: 2 }),
    );
    let case = Case::new(server.port());
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains("malformed"), "{run:?}");
    assert!(case.delivered().is_empty(), "{run:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
    assert!(!sent(&commands(&server, 0), "UID STORE"));
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
}

#[test]
fn malformed_body_fetch_exits_4_without_expunging() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default());
    let proxy = Proxy::start(server.port(), 2, Tamper::Malformed);
    let case = Case::new(proxy.port());
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(proxy.tampered());
    assert_eq!(case.delivered(), expected(&[&mail[0]]), "{run:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
}

// ---- 4. BYE in the middle of the session -----------------------------------------

#[test]
fn bye_mid_session_exits_7_then_resumes_without_duplicates() {
    let mail = messages(4);
    // FETCH commands counted by the fake: the describe step, then the
    // bodies of messages 1 and 2; the BYE follows the third.
    let script = Script::default()
        .fault(Fault::ByeMidSession { after_fetches: 3 })
        .first_only();
    let server = FakeImap::inbox(mail.clone(), script);
    let case = Case::new(server.port());

    let first = case.run();
    assert_eq!(first.code, Some(7), "{first:?}");
    assert!(first.stderr.contains("shutting down"), "{first:?}");
    assert_eq!(
        case.delivered(),
        expected(&[&mail[0], &mail[1]]),
        "{first:?}"
    );
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
    assert!(!sent(&commands(&server, 0), "UID STORE"));
    assert_eq!(server.uids("INBOX"), [1, 2, 3, 4]);

    let second = case.run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    case.assert_no_partial(&mail);
    assert_eq!(body_fetches(&server, 1), [3, 4]);
    assert_eq!(expunged_uids(&server), [1, 2, 3, 4]);
    assert!(server.uids("INBOX").is_empty());
}

// ---- 5. no UIDPLUS -----------------------------------------------------------------

#[test]
fn no_uidplus_expunges_when_nothing_else_is_deleted() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default().fault(Fault::NoUidplus));
    let case = Case::new(server.port());
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    let commands = commands(&server, 0);
    assert!(!sent(&commands, "UID EXPUNGE"), "{commands:?}");
    assert!(
        sent(&commands, "UID STORE 1:3 +FLAGS.SILENT (\\Deleted)"),
        "{commands:?}"
    );
    assert!(sent(&commands, "EXPUNGE"), "{commands:?}");
    assert_eq!(expunged_uids(&server), [1, 2, 3]);
    assert!(server.uids("INBOX").is_empty());
}

#[test]
fn no_uidplus_never_expunges_another_clients_deleted_message() {
    // Message 3 is large (left on the server by max_size) and another
    // client flagged it \Deleted: a plain EXPUNGE would destroy it.
    let mail = vec![
        message(1, 800),
        message(2, 900),
        message(3, 20_000).flags(&["\\Deleted"]),
    ];
    let server = FakeImap::inbox(mail.clone(), Script::default().fault(Fault::NoUidplus));
    let case = Case::new(server.port()).set("max_size", "\"10KB\"");
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&[&mail[0], &mail[1]]));
    let commands = commands(&server, 0);
    assert!(!sent(&commands, "EXPUNGE"), "{commands:?}");
    assert!(!sent(&commands, "UID EXPUNGE"), "{commands:?}");
    assert!(!sent(&commands, "CLOSE"), "{commands:?}");
    assert!(server.expunged().is_empty());
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
    assert_eq!(server.folder("INBOX").messages[2].data, mail[2].data);
    for uid in [1, 2, 3] {
        let flags = server.flags("INBOX", uid).unwrap();
        assert!(flags.iter().any(|f| f == "\\Deleted"), "{uid}: {flags:?}");
    }
    assert!(run.stderr.contains("UIDPLUS"), "{run:?}");
}

// ---- 6. no MOVE ---------------------------------------------------------------------

#[test]
fn move_to_without_move_copies_then_deletes() {
    let mail = messages(3);
    let inbox = mail
        .iter()
        .cloned()
        .fold(Folder::new("INBOX", 1000), Folder::with);
    let server = FakeImap::start(
        vec![inbox, Folder::new("Archive", 2000)],
        Script::default().fault(Fault::NoMove),
    );
    let case = Case::new(server.port()).set("move_to", "\"Archive\"");
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    let commands = commands(&server, 0);
    assert!(!sent(&commands, "UID MOVE"), "{commands:?}");
    assert!(sent(&commands, "UID COPY 1:3 \"Archive\""), "{commands:?}");
    assert!(server.moved().is_empty());
    assert_eq!(server.copied().len(), 3);
    assert!(server.uids("INBOX").is_empty());
    assert_eq!(expunged_uids(&server), [1, 2, 3]);
    let archive = server.folder("Archive");
    let archived: Vec<&Vec<u8>> = archive.messages.iter().map(|m| &m.data).collect();
    let originals: Vec<&Vec<u8>> = mail.iter().map(|m| &m.data).collect();
    assert_eq!(archived, originals);
    for m in &archive.messages {
        assert!(!m.has_flag("\\Deleted"), "archived copy flagged: {m:?}");
    }
    assert!(run.stderr.contains("3 moved to Archive"), "{run:?}");
}

#[test]
fn move_to_with_move_uses_uid_move() {
    let mail = messages(2);
    let inbox = mail
        .iter()
        .cloned()
        .fold(Folder::new("INBOX", 1000), Folder::with);
    let server = FakeImap::start(vec![inbox, Folder::new("Archive", 2000)], Script::default());
    let case = Case::new(server.port()).set("move_to", "\"Archive\"");
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    assert!(sent(&commands(&server, 0), "UID MOVE 1:2 \"Archive\""));
    assert!(server.uids("INBOX").is_empty());
    assert_eq!(server.uids("Archive").len(), 2);
    assert!(server.expunged().is_empty());
}

/// Without MOVE and UIDPLUS, with a message another client flagged
/// \Deleted, delivered messages are copied to the archive and left flagged
/// \Deleted in INBOX (a plain EXPUNGE would destroy the other message).
/// The next poll must not copy them to the archive again.
#[test]
fn move_to_without_move_or_uidplus_copies_each_message_once() {
    let mail = [
        message(1, 800),
        message(2, 900),
        message(3, 20_000).flags(&["\\Deleted"]),
    ];
    let inbox = mail
        .iter()
        .cloned()
        .fold(Folder::new("INBOX", 1000), Folder::with);
    let script = Script::default()
        .fault(Fault::NoMove)
        .fault(Fault::NoUidplus);
    let server = FakeImap::start(vec![inbox, Folder::new("Archive", 2000)], script);
    let case = Case::new(server.port())
        .set("move_to", "\"Archive\"")
        .set("max_size", "\"10KB\"");

    let first = case.run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(case.delivered(), expected(&[&mail[0], &mail[1]]));
    assert!(first.stderr.contains("UIDPLUS"), "{first:?}");
    assert!(!sent(&commands(&server, 0), "EXPUNGE"));
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
    assert_eq!(server.uids("Archive").len(), 2);

    let second = case.run();
    assert!(matches!(second.code, Some(0 | 1)), "{second:?}");
    assert!(!sent(&commands(&server, 1), "EXPUNGE"));
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
    assert_eq!(case.delivered().len(), 2);
    assert_eq!(
        server.uids("Archive").len(),
        2,
        "the second poll copied the delivered messages to Archive again: {:?}",
        server.copied()
    );
}

#[test]
fn keep_with_mark_seen_flags_delivered_messages_only() {
    let mail = vec![message(1, 500), message(2, 5000), message(3, 5000)];
    let server = FakeImap::inbox(mail.clone(), Script::default());
    server.set_flags("INBOX", 3, &["\\Flagged"]);
    let case = Case::new(server.port())
        .set("keep", "true")
        .set("mark_seen", "true")
        .set("max_size", "\"2KB\"");
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&[&mail[0]]));
    let commands = commands(&server, 0);
    assert!(sent(&commands, "SELECT"), "{commands:?}");
    assert!(
        sent(&commands, "UID STORE 1 +FLAGS.SILENT (\\Seen)"),
        "{commands:?}"
    );
    assert!(!sent(&commands, "EXPUNGE") && !sent(&commands, "UID EXPUNGE"));
    assert_eq!(server.flags("INBOX", 1).unwrap(), ["\\Seen"]);
    assert!(server.flags("INBOX", 2).unwrap().is_empty());
    assert_eq!(server.flags("INBOX", 3).unwrap(), ["\\Flagged"]);
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
}

// ---- 7. no ESEARCH ------------------------------------------------------------------

#[test]
fn no_esearch_uses_plain_search() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default().fault(Fault::NoEsearch));
    let case = Case::new(server.port());
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    let commands = commands(&server, 0);
    assert!(sent(&commands, "UID SEARCH ALL"), "{commands:?}");
    assert!(
        !commands.iter().any(|c| c.contains("RETURN")),
        "{commands:?}"
    );
    assert_eq!(expunged_uids(&server), [1, 2, 3]);
}

// ---- 8. an enormous literal -----------------------------------------------------------

#[test]
fn huge_body_literal_exits_4_at_once() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default());
    let announce = 99_999_999_999;
    let proxy = Proxy::start(server.port(), 1, Tamper::Huge { announce });
    // A long timeout: reading (or waiting for) the announced bytes would
    // show as a run of 30 s.
    let case = Case::new(proxy.port()).set("timeout", "\"30s\"");
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(proxy.tampered());
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(run.stderr.contains(&announce.to_string()), "{run:?}");
    assert!(run.max_rss_kib < 200 * 1024, "{run:?}");
    assert!(case.delivered().is_empty(), "{run:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
}

#[test]
fn huge_header_literal_exits_4_at_once() {
    let mail = messages(3);
    let fault = Fault::HugeLiteral {
        uid: 1,
        announce: 99_999_999_999,
    };
    let server = FakeImap::inbox(mail.clone(), Script::default().fault(fault));
    let case = Case::new(server.port()).set("timeout", "\"30s\"");
    let run = case.run();
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(server.stalled());
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(run.max_rss_kib < 200 * 1024, "{run:?}");
    assert!(case.delivered().is_empty(), "{run:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
}

// ---- 9. a stalled server ----------------------------------------------------------------

#[test]
fn stall_in_body_fetch_times_out_with_7() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default());
    let proxy = Proxy::start(server.port(), 2, Tamper::Stall);
    let case = Case::new(proxy.port()).set("timeout", "\"1s\"");
    let run = case.run();
    assert_eq!(run.code, Some(7), "{run:?}");
    assert!(proxy.tampered());
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(run.elapsed >= Duration::from_secs(1), "{run:?}");
    assert!(run.stderr.contains("no answer"), "{run:?}");
    // Message 1 was complete before the stall.
    assert_eq!(case.delivered(), expected(&[&mail[0]]), "{run:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
    assert_eq!(server.uids("INBOX"), [1, 2, 3]);
}

#[test]
fn stall_in_describe_fetch_times_out_with_7() {
    let mail = messages(3);
    let server = FakeImap::inbox(
        mail.clone(),
        Script::default().fault(Fault::StallFetch { uid: 2 }),
    );
    let case = Case::new(server.port()).set("timeout", "\"1s\"");
    let run = case.run();
    assert_eq!(run.code, Some(7), "{run:?}");
    assert!(server.stalled());
    assert!(run.elapsed < Duration::from_secs(5), "{run:?}");
    assert!(case.delivered().is_empty(), "{run:?}");
    case.assert_no_partial(&mail);
    assert!(server.expunged().is_empty());
}

// ---- 10. STARTTLS --------------------------------------------------------------------------

#[track_caller]
fn assert_no_credentials(server: &FakeImap, password: &str) {
    for command in all_commands(server) {
        let verb = command.split(' ').next().unwrap().to_ascii_uppercase();
        assert!(
            !["LOGIN", "AUTHENTICATE"].contains(&verb.as_str()),
            "sent {command:?} without TLS"
        );
        assert!(!command.contains(password), "sent {command:?}");
    }
}

#[test]
fn starttls_missing_exits_2_without_credentials() {
    let server = FakeImap::inbox(messages(1), Script::default().fault(Fault::NoStarttls));
    let case = Case::new(server.port()).set("tls", "\"starttls\"");
    let run = case.run();
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("STARTTLS"), "{run:?}");
    assert_no_credentials(&server, PASSWORD);
    assert!(case.delivered().is_empty());
    assert_eq!(server.uids("INBOX"), [1]);
}

#[test]
fn starttls_refused_exits_2_without_credentials() {
    // STARTTLS is announced, but the fake answers it with NO.
    let server = FakeImap::inbox(messages(1), Script::default());
    let case = Case::new(server.port()).set("tls", "\"starttls\"");
    let run = case.run();
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(sent(&all_commands(&server), "STARTTLS"));
    assert_no_credentials(&server, PASSWORD);
    assert!(case.delivered().is_empty());
}

// ---- 11. UIDVALIDITY change ------------------------------------------------------------------

#[test]
fn uidvalidity_change_recognises_delivered_messages() {
    let mail = messages(4);
    let script = Script::default()
        .fault(Fault::UidvalidityChange)
        .first_only();
    let server = FakeImap::inbox(mail[..3].to_vec(), script);
    let case = Case::new(server.port()).set("keep", "true");

    let first = case.run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(case.delivered(), expected(&[&mail[0], &mail[1], &mail[2]]));
    // The fake renumbered the folder when the first session ended.
    let inbox = server.folder("INBOX");
    assert_eq!(inbox.uidvalidity, 1001);
    assert_eq!(inbox.messages[0].data, mail[2].data, "not renumbered");

    let second = case.run();
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(second.stderr.contains("UIDVALIDITY"), "{second:?}");
    assert!(
        second.stderr.contains("3 of 3 messages recognised"),
        "{second:?}"
    );
    assert!(body_fetches(&server, 1).is_empty());
    assert_eq!(case.delivered().len(), 3);

    let uid = server.add_message("INBOX", mail[3].clone());
    let third = case.run();
    assert_eq!(third.code, Some(0), "{third:?}");
    assert_eq!(body_fetches(&server, 2), [uid]);
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    case.assert_no_partial(&mail);

    let fourth = case.run();
    assert_eq!(fourth.code, Some(1), "{fourth:?}");
    assert!(body_fetches(&server, 3).is_empty());
    assert_eq!(server.uids("INBOX").len(), 4);
    assert!(server.expunged().is_empty());
}

// ---- 12. -v and keep mode ----------------------------------------------------------------------

#[test]
fn verbose_masks_the_password_and_keep_mode_changes_nothing() {
    let password = "hunter2-Xyzzy-91";
    let mail = messages(2);
    let script = Script {
        password: password.into(),
        ..Script::default()
    };
    let server = FakeImap::inbox(mail.clone(), script);
    let case = Case::new(server.port())
        .set("password", &format!("\"{password}\""))
        .set("keep", "true");
    let before = server.folder("INBOX");

    let first = case.run_with(&["-v"]);
    assert_eq!(first.code, Some(0), "{first:?}");
    let second = case.run_with(&["-v"]);
    assert_eq!(second.code, Some(1), "{second:?}");
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));

    // The password did go to the server, and nowhere else.
    let sessions = server.sessions();
    let login = format!("LOGIN \"alice\" \"{password}\"");
    assert!(
        sessions[0].iter().any(|l| l.ends_with(&login)),
        "{sessions:?}"
    );
    for run in [&first, &second] {
        assert!(
            !run.stdout.contains(password) && !run.stderr.contains(password),
            "{run:?}"
        );
        assert!(run.stderr.contains("LOGIN alice ****"), "{run:?}");
    }

    for session in 0..2 {
        let commands = commands(&server, session);
        // The second poll finds the folder as the first left it (STATUS)
        // and does not open it.
        assert_eq!(sent(&commands, "EXAMINE"), session == 0, "{commands:?}");
        assert!(sent(&commands, "STATUS"), "{commands:?}");
        for verb in ["SELECT", "STORE", "UID STORE", "EXPUNGE", "UID EXPUNGE"] {
            assert!(!sent(&commands, verb), "{verb}: {commands:?}");
        }
        for verb in ["MOVE", "UID MOVE", "COPY", "UID COPY", "CLOSE"] {
            assert!(!sent(&commands, verb), "{verb}: {commands:?}");
        }
    }
    assert_eq!(
        server.folder("INBOX"),
        before,
        "keep mode changed the folder"
    );
    assert!(server.expunged().is_empty());
}

/// Without CONDSTORE nothing shows that no flag changed, so with
/// fetch = "unseen" every poll opens and lists the folder (an UNSEEN count
/// stays the same when one message is read and another made unread).
#[test]
fn fetch_unseen_without_condstore_lists_the_folder_at_every_poll() {
    let mail = messages(2);
    let server = FakeImap::inbox(mail.clone(), Script::default());
    let case = Case::new(server.port())
        .set("keep", "true")
        .set("fetch", "\"unseen\"");
    assert_eq!(case.run().code, Some(0));
    let again = case.run();
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(!again.stderr.contains("unchanged"), "{again:?}");
    let commands = commands(&server, 1);
    assert!(sent(&commands, "EXAMINE"), "{commands:?}");
    assert!(
        !commands.iter().any(|c| c.contains("HIGHESTMODSEQ")),
        "asked a server without CONDSTORE: {commands:?}"
    );
}

// ---- 13. flags changed by another client ------------------------------------------------------

#[test]
fn flags_set_by_another_client_do_not_hide_new_mail() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail[..2].to_vec(), Script::default());
    let case = Case::new(server.port()).set("keep", "true");
    let first = case.run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(case.delivered(), expected(&[&mail[0], &mail[1]]));

    // Another client reads the new message and un-reads/flags old ones.
    let uid = server.add_message("INBOX", mail[2].clone());
    server.set_flags("INBOX", uid, &["\\Seen"]);
    server.set_flags("INBOX", 1, &["\\Seen", "\\Answered"]);
    server.set_flags("INBOX", 2, &["\\Flagged"]);
    let second = case.run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(body_fetches(&server, 1), [uid]);
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));

    server.set_flags("INBOX", 1, &[]);
    let third = case.run();
    assert_eq!(third.code, Some(1), "{third:?}");
    assert!(body_fetches(&server, 2).is_empty());
    assert_eq!(case.delivered().len(), 3);
}

#[test]
fn fetch_unseen_skips_messages_another_client_read() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default());
    server.set_flags("INBOX", 2, &["\\Seen"]);
    let case = Case::new(server.port())
        .set("keep", "true")
        .set("fetch", "\"unseen\"");

    let first = case.run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(body_fetches(&server, 0), [1, 3]);
    assert_eq!(case.delivered(), expected(&[&mail[0], &mail[2]]));
    assert_eq!(server.flags("INBOX", 2).unwrap(), ["\\Seen"]);

    // Marked unread again: now it is fetched, and only it.
    server.set_flags("INBOX", 2, &[]);
    let second = case.run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(body_fetches(&server, 1), [2]);
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
}

// ---- 10. bodies in other forms, sizes that lie ------------------------------------------

#[test]
fn a_body_sent_as_a_partial_from_origin_zero_is_the_whole_message() {
    let mail = messages(3);
    let server = FakeImap::inbox(mail.clone(), Script::default().fault(Fault::OriginZeroBody));
    let case = Case::new(server.port());
    let run = case.run();
    assert_eq!(run.code, Some(0), "{run:?}");
    // Each message in its own file, byte-exact: none appended to another.
    assert_eq!(case.delivered(), expected(&mail.iter().collect::<Vec<_>>()));
    case.assert_no_partial(&mail);
    assert_eq!(expunged_uids(&server), [1, 2, 3]);
}

#[test]
fn a_message_larger_than_its_rfc822_size_is_refused_and_the_rest_delivered() {
    let mail = vec![message(1, 1000), message(2, 300_000), message(3, 1000)];
    let fault = Fault::UnderReportedSize {
        uid: 2,
        reported: 1000,
    };
    let server = FakeImap::inbox(mail.clone(), Script::default().fault(fault));
    let case = Case::new(server.port());
    let first = case.run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(first.stderr.contains("RFC822.SIZE"), "{first:?}");
    assert!(
        first.stderr.contains("1 refused by the server"),
        "{first:?}"
    );
    assert_eq!(
        case.delivered(),
        expected(&[&mail[0], &mail[2]]),
        "{first:?}"
    );
    case.assert_no_partial(&mail);
    assert_eq!(server.uids("INBOX"), [2]);

    // The folder is not wedged: mail that arrives later is fetched.
    let later = message(4, 1000);
    server.add_message("INBOX", later.clone());
    let second = case.run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(
        case.delivered(),
        expected(&[&mail[0], &mail[2], &later]),
        "{second:?}"
    );
    assert_eq!(server.uids("INBOX"), [2]);
}
