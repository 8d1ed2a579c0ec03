//! Checks the fake IMAP server itself, with a raw TcpStream (no mailfetch),
//! so that the fault tests built on it can be trusted.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use testkit::fake_imap::{FakeImap, Fault, Folder, Message, Script, Transfer};

/// A minimal IMAP client: sends tagged commands, reads lines with their
/// literals inlined.
struct Client {
    reader: BufReader<TcpStream>,
    out: TcpStream,
    tags: u32,
    greeting: String,
}

impl Client {
    fn connect(server: &FakeImap) -> Client {
        let out = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        out.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = BufReader::new(out.try_clone().unwrap());
        let mut client = Client {
            reader,
            out,
            tags: 0,
            greeting: String::new(),
        };
        client.greeting = client.line().unwrap();
        client
    }

    /// One response line, literals included; `None` at end of stream.
    fn line(&mut self) -> Option<String> {
        let mut all = Vec::new();
        loop {
            let mut raw = Vec::new();
            if self.reader.read_until(b'\n', &mut raw).unwrap() == 0 {
                return (!all.is_empty()).then(|| String::from_utf8_lossy(&all).into_owned());
            }
            all.extend_from_slice(&raw);
            let text = String::from_utf8_lossy(&raw);
            let Some(size) = text
                .trim_end()
                .strip_suffix('}')
                .and_then(|t| t.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
            else {
                return Some(String::from_utf8_lossy(&all).into_owned());
            };
            let mut literal = vec![0; size];
            self.reader.read_exact(&mut literal).unwrap();
            all.extend_from_slice(&literal);
        }
    }

    fn send(&mut self, line: &str) {
        self.out
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
    }

    /// Sends a tagged command; returns every line up to the tagged one.
    fn cmd(&mut self, command: &str) -> Vec<String> {
        self.tags += 1;
        let tag = format!("a{}", self.tags);
        self.send(&format!("{tag} {command}"));
        let mut lines = Vec::new();
        while let Some(line) = self.line() {
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    }

    /// The last (tagged) line of a command's response.
    fn status(&mut self, command: &str) -> String {
        self.cmd(command).pop().unwrap()
    }

    fn login(server: &FakeImap) -> Client {
        let mut client = Client::connect(server);
        assert!(client.status("LOGIN alice secret").contains("OK"));
        client
    }

    /// Everything the server sends until it closes or goes quiet for 300 ms.
    fn rest(&mut self) -> (String, bool) {
        self.out
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut all = Vec::new();
        let mut buf = [0; 4096];
        let closed = loop {
            match self.reader.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false;
                }
                Err(e) => panic!("{e}"),
            }
        };
        (String::from_utf8_lossy(&all).into_owned(), closed)
    }
}

const ONE: &str = "From: Bob <bob@example.org>\nTo: alice@example.org\nSubject: one\n\
                   Message-ID: <1@example.org>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\nbody one\n";

fn text(n: u32) -> String {
    format!("From: bob@example.org\nMessage-ID: <{n}@example.org>\n\nbody {n}\n")
}

fn inbox(n: u32) -> Vec<Message> {
    (1..=n).map(|i| Message::new(&text(i))).collect()
}

#[test]
fn typical_session() {
    let inbox = Folder::new("INBOX", 7)
        .with(Message::new(ONE).uid(3))
        .with(Message::new(&text(7)).uid(7).flags(&["\\Seen"]))
        .with(Message::new(&text(9)).uid(9));
    let drafts = Folder::new("Entw&APw-rfe", 11);
    let server = FakeImap::start(vec![inbox, drafts], Script::default());
    let mut c = Client::connect(&server);
    assert!(
        c.greeting
            .starts_with("* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR UIDPLUS MOVE")
    );
    let caps = c.cmd("CAPABILITY");
    assert!(
        caps[0].contains(" ESEARCH ENABLE AUTH=PLAIN STARTTLS\r\n"),
        "{caps:?}"
    );
    assert!(c.status("STARTTLS").starts_with("a2 NO "));
    assert!(c.status("SELECT INBOX").starts_with("a3 BAD "));
    assert_eq!(
        c.status("login alice wrong"),
        "a4 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    );
    let ok = c.status("LOGIN \"alice\" \"secret\"");
    assert!(ok.starts_with("a5 OK [CAPABILITY IMAP4rev1 ") && !ok.contains("STARTTLS"));
    assert_eq!(c.cmd("ENABLE QRESYNC")[0], "* ENABLED\r\n");
    assert_eq!(c.cmd("LIST \"\" \"*\"").len(), 3);
    assert!(c.status("SELECT Nowhere").starts_with("a8 NO "));
    let select = c.cmd("SELECT \"INBOX\"").concat();
    for part in [
        "* 3 EXISTS\r\n",
        "* 0 RECENT\r\n",
        "* OK [UIDVALIDITY 7]",
        "* OK [UIDNEXT 10]",
        "a9 OK [READ-WRITE]",
    ] {
        assert!(select.contains(part), "{select}");
    }

    assert_eq!(c.cmd("UID SEARCH ALL")[0], "* SEARCH 3 7 9\r\n");
    assert_eq!(
        c.cmd("uid search return (all) UNSEEN")[0],
        "* ESEARCH (TAG \"a11\") UID ALL 3,9\r\n"
    );
    assert_eq!(
        c.cmd("UID SEARCH RETURN (ALL) DELETED")[0],
        "* ESEARCH (TAG \"a12\") UID\r\n"
    );
    assert_eq!(c.cmd("UID SEARCH UID 5:*")[0], "* SEARCH 7 9\r\n");
    assert_eq!(c.cmd("SEARCH UNSEEN")[0], "* SEARCH 1 3\r\n");

    let headers =
        c.cmd("UID FETCH 1:* (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM)] UID)");
    let wanted = "From: Bob <bob@example.org>\r\nMessage-ID: <1@example.org>\r\n\
                  Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n";
    let size = ONE.len() + ONE.matches('\n').count();
    assert_eq!(
        headers[0],
        format!(
            "* 1 FETCH (UID 3 RFC822.SIZE {size} BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM)] {{{}}}\r\n{wanted})\r\n",
            wanted.len()
        )
    );
    assert_eq!(headers.len(), 4);
    assert_eq!(server.flags("INBOX", 3).unwrap(), Vec::<String>::new());

    let body = c.cmd("UID FETCH 3,9 (UID RFC822.SIZE BODY[])");
    let data = ONE.replace('\n', "\r\n");
    assert_eq!(
        body[0],
        format!(
            "* 1 FETCH (UID 3 RFC822.SIZE {size} BODY[] {{{size}}}\r\n{data} FLAGS (\\Seen))\r\n"
        )
    );
    assert!(body[1].starts_with("* 3 FETCH (UID 9 "));
    assert_eq!(server.flags("INBOX", 3).unwrap(), ["\\Seen"]);
    assert_eq!(
        server.downloaded(),
        [("INBOX".into(), 3), ("INBOX".into(), 9)]
    );
    let peek = c.cmd("UID FETCH 7 (FLAGS INTERNALDATE BODY.PEEK[])");
    assert!(
        peek[0].starts_with("* 2 FETCH (UID 7 FLAGS (\\Seen) INTERNALDATE \""),
        "{peek:?}"
    );

    assert_eq!(c.cmd("UID STORE 3,9 +FLAGS.SILENT (\\Deleted)").len(), 1);
    assert_eq!(
        c.cmd("UID STORE 7 +FLAGS (\\Flagged)")[0],
        "* 2 FETCH (UID 7 FLAGS (\\Seen \\Flagged))\r\n"
    );
    let expunge = c.cmd("UID EXPUNGE 1:*");
    assert_eq!(expunge[..2], ["* 1 EXPUNGE\r\n", "* 2 EXPUNGE\r\n"]);
    assert_eq!(server.uids("INBOX"), [7]);
    let moved = c.cmd("UID MOVE 7 \"Entw&APw-rfe\"");
    assert_eq!(
        moved[..2],
        ["* OK [COPYUID 11 7 1] Moved\r\n", "* 1 EXPUNGE\r\n"]
    );
    assert!(moved[2].starts_with("a21 OK"), "{moved:?}");
    assert!(c.status("UID MOVE 1 Nowhere").contains("NO [TRYCREATE]"));
    let logout = c.cmd("LOGOUT");
    assert_eq!(logout[0], "* BYE Logging out\r\n");
    assert!(c.line().is_none());

    let expunged = [("INBOX".to_owned(), 3), ("INBOX".to_owned(), 9)];
    assert_eq!(server.expunged(), expunged);
    let transfer = Transfer {
        from: "INBOX".into(),
        uid: 7,
        to: "Entw&APw-rfe".into(),
        new_uid: 1,
    };
    assert_eq!(server.moved(), [transfer]);
    let drafts = server.folder("Entw&APw-rfe");
    assert_eq!((drafts.uids(), drafts.uidnext), (vec![1], 2));
    assert_eq!(drafts.messages[0].flags, ["\\Seen", "\\Flagged"]);
    assert!(server.uids("INBOX").is_empty());
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0][4], "a5 LOGIN \"alice\" \"secret\"");
    assert_eq!(sessions[0].last().unwrap(), "a23 LOGOUT");
}

#[test]
fn authenticate_plain() {
    let server = FakeImap::inbox(inbox(1), Script::default());
    // "\0alice\0secret" and "\0alice\0wrong"
    let (good, bad) = ("AGFsaWNlAHNlY3JldA==", "AGFsaWNlAHdyb25n");
    let mut c = Client::connect(&server);
    assert!(
        c.status(&format!("AUTHENTICATE PLAIN {bad}"))
            .contains("NO [AUTHENTICATIONFAILED]")
    );
    assert!(
        c.status(&format!("AUTHENTICATE PLAIN {good}"))
            .starts_with("a2 OK [CAPABILITY")
    );
    drop(c); // one connection at a time
    let mut c = Client::connect(&server);
    c.send("t1 AUTHENTICATE PLAIN");
    assert_eq!(c.line().unwrap(), "+ \r\n");
    c.send(good);
    assert!(c.line().unwrap().starts_with("t1 OK "));
    assert_eq!(c.cmd("SELECT inbox")[2], "* 1 EXISTS\r\n");
    assert_eq!(
        server.sessions()[1],
        ["t1 AUTHENTICATE PLAIN", good, "a1 SELECT inbox"]
    );
}

#[test]
fn expunge_and_close_take_every_deleted_message() {
    let mut messages = inbox(4);
    messages[1] = messages[1].clone().flags(&["\\Deleted"]); // by another client
    let server = FakeImap::inbox(messages, Script::default());
    let mut c = Client::login(&server);
    c.cmd("EXAMINE INBOX");
    assert!(c.status("UID STORE 1 +FLAGS (\\Deleted)").contains("NO"));
    assert!(c.status("EXPUNGE").contains("NO"));
    assert_eq!(c.cmd("CLOSE"), ["a5 OK CLOSE completed\r\n"]);
    assert_eq!(
        c.cmd("STATUS INBOX (MESSAGES UIDNEXT UNSEEN)")[0],
        "* STATUS \"INBOX\" (MESSAGES 4 UIDNEXT 5 UNSEEN 4)\r\n"
    );
    c.cmd("SELECT INBOX");
    assert_eq!(c.cmd("UID SEARCH DELETED")[0], "* SEARCH 2\r\n");
    c.cmd("UID STORE 4 +FLAGS.SILENT (\\Deleted)");
    assert!(c.cmd("UID EXPUNGE 4")[0] == "* 4 EXPUNGE\r\n");
    c.cmd("UID STORE 1 FLAGS.SILENT (\\Deleted \\Seen)");
    assert_eq!(
        c.cmd("EXPUNGE")[..2],
        ["* 1 EXPUNGE\r\n", "* 1 EXPUNGE\r\n"]
    );
    assert_eq!(server.uids("INBOX"), [3]);
    server.set_flags("INBOX", 3, &["\\Deleted"]);
    assert_eq!(c.cmd("CLOSE").len(), 1);
    assert!(server.uids("INBOX").is_empty());
    let order: Vec<u32> = server.expunged().into_iter().map(|(_, uid)| uid).collect();
    assert_eq!(order, [4, 1, 2, 3]);
}

#[test]
fn capabilities_removed_by_faults() {
    let script = Script::default()
        .fault(Fault::NoUidplus)
        .fault(Fault::NoMove)
        .fault(Fault::NoEsearch)
        .fault(Fault::NoStarttls);
    let mut folders = vec![Folder::new("INBOX", 5).with(Message::new(ONE))];
    folders.push(Folder::new("Archive", 6));
    let server = FakeImap::start(folders, script);
    let mut c = Client::login(&server);
    assert_eq!(
        c.greeting,
        "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ENABLE AUTH=PLAIN] fake ready\r\n"
    );
    c.cmd("SELECT INBOX");
    assert!(c.status("UID SEARCH RETURN (ALL) ALL").contains("BAD"));
    c.cmd("UID STORE 1 +FLAGS.SILENT (\\Deleted)");
    assert!(c.status("UID EXPUNGE 1").contains("BAD"));
    assert!(c.status("UID MOVE 1 Archive").contains("BAD"));
    assert_eq!(c.cmd("UID COPY 1 Archive")[0], "a7 OK Copy completed\r\n");
    assert_eq!(server.copied()[0].new_uid, 1);
    assert_eq!(server.uids("INBOX"), [1]);
    assert!(server.expunged().is_empty());
}

#[test]
fn copyuid_with_uidplus() {
    let folders = vec![
        Folder::new("INBOX", 5)
            .with(Message::new(ONE).uid(4))
            .with(Message::new(ONE).uid(5)),
        Folder::new("Archive", 6).with(Message::new(ONE).uid(10)),
    ];
    let server = FakeImap::start(folders, Script::default());
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    assert_eq!(
        c.status("UID COPY 4:5 Archive"),
        "a3 OK [COPYUID 6 4:5 11:12] Copy completed\r\n"
    );
    assert_eq!(server.uids("Archive"), [10, 11, 12]);
}

#[test]
fn cut_literal() {
    let server = FakeImap::inbox(
        inbox(2),
        Script::default().fault(Fault::CutLiteral { uid: 2, after: 10 }),
    );
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    c.send("f UID FETCH 1:* (UID BODY.PEEK[])");
    assert!(c.line().unwrap().starts_with("* 1 FETCH (UID 1 BODY[] {"));
    let size = text(2).len() + text(2).matches('\n').count();
    let (rest, closed) = c.rest();
    assert_eq!(
        rest,
        format!(
            "* 2 FETCH (UID 2 BODY[] {{{size}}}\r\n{}",
            &text(2).replace('\n', "\r\n")[..10]
        )
    );
    assert!(closed);
    assert_eq!(server.downloaded(), [("INBOX".into(), 1)]);
}

#[test]
fn literal_longer_than_announced() {
    let fault = Fault::LiteralLongerThanAnnounced { uid: 1, extra: 5 };
    let server = FakeImap::inbox(inbox(1), Script::default().fault(fault));
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    c.send("f UID FETCH 1 BODY.PEEK[]");
    let (rest, closed) = c.rest();
    let data = text(1).replace('\n', "\r\n");
    assert_eq!(
        rest,
        format!(
            "* 1 FETCH (UID 1 BODY[] {{{}}}\r\n{data}XXXXX)\r\nf OK Fetch completed\r\n",
            data.len()
        )
    );
    assert!(!closed);
}

#[test]
fn malformed_fetch() {
    let server = FakeImap::inbox(
        inbox(2),
        Script::default().fault(Fault::MalformedFetch { uid: 1 }),
    );
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    let lines = c.cmd("UID FETCH 1:2 (UID RFC822.SIZE)");
    assert_eq!(lines[0], "* 1 FETCH (UID 1 RFC822.SIZE xyz\r\n");
    assert_eq!(
        lines[1],
        format!("* 2 FETCH (UID 2 RFC822.SIZE {})\r\n", text(2).len() + 4)
    );
}

#[test]
fn bye_mid_session_first_connection_only() {
    let script = Script::default()
        .fault(Fault::ByeMidSession { after_fetches: 1 })
        .first_only();
    let server = FakeImap::inbox(inbox(2), script);
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    c.cmd("UID FETCH 1 (UID FLAGS)");
    assert_eq!(c.line().unwrap(), "* BYE shutting down\r\n");
    assert!(c.line().is_none());
    drop(c);
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    c.cmd("UID FETCH 1 (UID FLAGS)");
    assert!(c.status("UID FETCH 2 (UID FLAGS)").starts_with("a4 OK"));

    let server = FakeImap::inbox(
        inbox(2),
        Script::default().fault(Fault::ByeMidSession { after_fetches: 0 }),
    );
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    assert_eq!(
        c.cmd("UID FETCH 1 (UID FLAGS)"),
        ["* BYE shutting down\r\n"]
    );
}

#[test]
fn huge_literal_and_stall() {
    let fault = Fault::HugeLiteral {
        uid: 2,
        announce: 99_999_999_999,
    };
    let server = FakeImap::inbox(inbox(2), Script::default().fault(fault));
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    c.send("f UID FETCH 1:2 BODY.PEEK[]");
    assert!(c.line().unwrap().starts_with("* 1 FETCH"));
    let (rest, closed) = c.rest();
    assert_eq!(
        rest,
        "* 2 FETCH (UID 2 BODY[] {99999999999}\r\nFrom: bob@exampl"
    );
    assert!(!closed && server.stalled());

    let server = FakeImap::inbox(
        inbox(3),
        Script::default().fault(Fault::StallFetch { uid: 2 }),
    );
    let mut c = Client::login(&server);
    c.cmd("SELECT INBOX");
    c.send("f UID FETCH 1:* (UID FLAGS)");
    let (rest, closed) = c.rest();
    assert_eq!(rest, "* 1 FETCH (UID 1 FLAGS ())\r\n");
    assert!(!closed && server.stalled());
}

#[test]
fn uidvalidity_change_and_changes_between_connections() {
    let script = Script::default()
        .fault(Fault::UidvalidityChange)
        .first_only();
    let server = FakeImap::inbox(inbox(3), script);
    let mut c = Client::login(&server);
    assert!(
        c.cmd("SELECT INBOX")
            .concat()
            .contains("[UIDVALIDITY 1000]")
    );
    drop(c);
    let mut c = Client::login(&server);
    let select = c.cmd("SELECT INBOX").concat();
    assert!(select.contains("[UIDVALIDITY 1001]") && select.contains("[UIDNEXT 4]"));
    let fetch = c.cmd("UID FETCH 1 BODY.PEEK[]");
    assert!(
        fetch[0].ends_with("Message-ID: <3@example.org>\r\n\r\nbody 3\r\n)\r\n"),
        "{fetch:?}"
    );
    c.cmd("LOGOUT");
    drop(c);

    assert_eq!(server.add_message("INBOX", Message::new(&text(4))), 4);
    server.set_flags("INBOX", 1, &["\\Seen"]);
    let mut c = Client::login(&server);
    let select = c.cmd("EXAMINE INBOX").concat();
    assert!(select.contains("* 4 EXISTS") && select.contains("[UIDVALIDITY 1001]"));
    assert!(select.contains("OK [READ-ONLY]"));
    assert_eq!(c.cmd("UID SEARCH UNSEEN")[0], "* SEARCH 2 3 4\r\n");
    c.cmd("UID FETCH 4 BODY[]");
    assert_eq!(server.flags("INBOX", 4).unwrap(), Vec::<String>::new());
    assert_eq!(server.sessions().len(), 3);
}
