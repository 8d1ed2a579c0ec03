//! Proves the private-Dovecot test harness works: plain POP3 login and STAT,
//! POP3S/IMAPS/LMTP listening, fast seeding, CRLF sizes, deletions.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use testkit::dovecot::Dovecot;

struct Pop3 {
    r: BufReader<TcpStream>,
    w: TcpStream,
    greeting: String,
}

impl Pop3 {
    fn connect(port: u16) -> Pop3 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut p = Pop3 {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            greeting: String::new(),
        };
        p.greeting = p.line();
        assert!(p.greeting.starts_with("+OK"), "greeting {:?}", p.greeting);
        p
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l
    }
    fn cmd(&mut self, c: &str) -> String {
        self.w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.line()
    }
    fn ok(&mut self, c: &str) -> String {
        let l = self.cmd(c);
        assert!(l.starts_with("+OK"), "{c:?} -> {l:?}");
        l
    }
    /// Reads a multi-line response body (after the +OK line), raw bytes.
    fn multiline(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut l = Vec::new();
            self.r.read_until(b'\n', &mut l).unwrap();
            assert!(!l.is_empty(), "EOF in multi-line response");
            if l == b".\r\n" {
                return out;
            }
            let l = if l.starts_with(b"..") {
                &l[1..]
            } else {
                &l[..]
            };
            out.extend_from_slice(l);
        }
    }
    fn login(port: u16, user: &str, pass: &str) -> Pop3 {
        let mut p = Pop3::connect(port);
        p.ok(&format!("USER {user}"));
        p.ok(&format!("PASS {pass}"));
        p
    }
}

fn msg(n: usize) -> Vec<u8> {
    format!(
        "From: Sender {n} <sender{n}@example.org>\nTo: alice@example.com\n\
         Subject: test message {n}\nMessage-ID: <{n}@example.org>\n\n\
         Body line one of {n}.\n.leading dot line\nlast line\n"
    )
    .into_bytes()
}

#[test]
fn pop3_plain_login_stat_and_seeding() {
    let Some(dc) = Dovecot::start() else { return };
    dc.add_user("alice", "alice-secret");

    // Empty mailbox.
    let mut p = Pop3::login(dc.pop3_port(), "alice", "alice-secret");
    let stat = p.ok("STAT");
    assert!(stat.starts_with("+OK 0 0"), "{stat:?}");
    p.ok("QUIT");

    // Wrong password is refused.
    let mut p = Pop3::connect(dc.pop3_port());
    p.ok("USER alice");
    let l = p.cmd("PASS wrong");
    assert!(l.starts_with("-ERR"), "{l:?}");
    drop(p);

    // STLS, APOP (a timestamp in the greeting) and SASL are offered.
    let mut p = Pop3::connect(dc.pop3_port());
    let g = p.greeting.trim_end();
    assert!(
        g.contains('<') && g.ends_with('>'),
        "no APOP timestamp: {g:?}"
    );
    p.w.write_all(b"CAPA\r\n").unwrap();
    assert!(p.line().starts_with("+OK"));
    let capa = String::from_utf8(p.multiline()).unwrap();
    assert!(capa.contains("STLS"), "{capa}");
    assert!(capa.contains("UIDL"), "{capa}");
    for mech in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"] {
        assert!(capa.contains(mech), "{mech} missing in {capa}");
    }
    p.ok("QUIT");

    // Seed 3 messages (LF line endings).
    let msgs: Vec<Vec<u8>> = (1..=3).map(msg).collect();
    for m in &msgs {
        dc.add_message("alice", m);
    }
    assert_eq!(dc.message_count("alice"), 3);
    assert_eq!(dc.messages("alice"), msgs);

    let mut p = Pop3::login(dc.pop3_port(), "alice", "alice-secret");
    let stat = p.ok("STAT");
    let crlf_total: usize = msgs
        .iter()
        .map(|m| m.len() + m.iter().filter(|&&b| b == b'\n').count())
        .sum();
    assert_eq!(stat.trim_end(), format!("+OK 3 {crlf_total}"));

    // LIST sizes are CRLF sizes, RETR returns the message with CRLF, in order.
    p.ok("LIST");
    let list = String::from_utf8(p.multiline()).unwrap();
    for (i, m) in msgs.iter().enumerate() {
        let crlf = m.len() + m.iter().filter(|&&b| b == b'\n').count();
        assert!(list.contains(&format!("{} {crlf}\r\n", i + 1)), "{list}");
        p.ok(&format!("RETR {}", i + 1));
        let got = p.multiline();
        let want = String::from_utf8(m.clone()).unwrap().replace('\n', "\r\n");
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }
    p.ok("UIDL");
    let uidl = String::from_utf8(p.multiline()).unwrap();
    let uids: Vec<&str> = uidl.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(uids.len(), 3);
    assert!(uids.iter().all(|u| u.len() == 16), "{uidl}");
    assert_ne!(uids[0], uids[1]);

    // Delete one; it is gone from the Maildir after QUIT.
    p.ok("DELE 2");
    p.ok("QUIT");
    // QUIT's +OK is sent after the expunge is committed.
    assert_eq!(dc.message_count("alice"), 2);
    let left = dc.messages("alice");
    assert_eq!(left, vec![msgs[0].clone(), msgs[2].clone()]);

    // UIDLs are stable across sessions.
    let mut p = Pop3::login(dc.pop3_port(), "alice", "alice-secret");
    p.ok("UIDL");
    let uidl2 = String::from_utf8(p.multiline()).unwrap();
    assert!(
        uidl2.contains(uids[0]) && uidl2.contains(uids[2]),
        "{uidl2}"
    );
    p.ok("QUIT");
}

#[test]
fn tls_ports_lmtp_users_and_certs() {
    let Some(dc) = Dovecot::start() else { return };
    dc.add_user("bob", "b0b:pw".replace(':', "-").as_str());

    // Implicit-TLS ports accept TCP (and do not greet in clear text).
    for port in [dc.pop3s_port(), dc.imaps_port()] {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(s);
    }

    // IMAP greets and offers STARTTLS.
    let s = TcpStream::connect(("127.0.0.1", dc.imap_port())).unwrap();
    let mut r = BufReader::new(s);
    let mut greet = String::new();
    r.read_line(&mut greet).unwrap();
    assert!(greet.starts_with("* OK"), "{greet}");
    assert!(greet.contains("STARTTLS"), "{greet}");

    // Certificates.
    assert!(dc.ca_file().is_file());
    let ca = std::fs::read_to_string(dc.ca_file()).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let fp = dc.fingerprint();
    assert!(fp.starts_with("sha256:"), "{fp}");
    let hex = &fp["sha256:".len()..];
    assert_eq!(hex.len(), 32 * 3 - 1, "{fp}");
    assert!(
        hex.split(':').all(|b| b.len() == 2
            && b.chars()
                .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))),
        "{fp}"
    );

    // LMTP delivery lands in the Maildir; a later user can log in at once.
    dc.lmtp_deliver("bob@localhost", &msg(7));
    assert_eq!(dc.message_count("bob"), 1);
    let got = String::from_utf8(dc.messages("bob").remove(0)).unwrap();
    assert!(got.contains("Subject: test message 7"), "{got}");
    dc.add_user("carol", "carol-pw");
    let mut p = Pop3::login(dc.pop3_port(), "carol", "carol-pw");
    p.ok("STAT");
    p.ok("QUIT");
    let mut p = Pop3::login(dc.pop3_port(), "bob", "b0b-pw");
    assert!(p.ok("STAT").starts_with("+OK 1 "));
    p.ok("QUIT");

    // doveadm works against the private instance.
    if testkit::find_binary("doveadm").is_some() {
        dc.doveadm_ok(&["mailbox", "create", "-u", "bob", "Archive"]);
        let list = dc.doveadm_ok(&["mailbox", "list", "-u", "bob"]);
        assert!(list.contains("Archive") && list.contains("INBOX"), "{list}");
    }
}
