//! Proves the OAuth2 test parts work together before mailfetch is put
//! between them: the mock provider issues a token, and Dovecot's oauth2
//! passdb accepts it (XOAUTH2 over IMAP) only for the mailbox it names and
//! only while it is genuine.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use testkit::dovecot::Dovecot;
use testkit::oauth_provider::{OAuthProvider, ProviderOptions};

/// The tagged reply to `AUTHENTICATE XOAUTH2` for `user` with `token`.
fn imap_xoauth2(port: u16, user: &str, token: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let payload = BASE64.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
    write!(&stream, "a AUTHENTICATE XOAUTH2 {payload}\r\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.starts_with("+") {
            // The error challenge: answered with an empty line.
            write!(&stream, "\r\n").unwrap();
        } else if line.starts_with("a ") {
            return line;
        }
    }
}

#[test]
fn dovecot_accepts_the_providers_tokens_and_nothing_else() {
    let Some(provider) = OAuthProvider::start(&ProviderOptions::new("alice@example.com")) else {
        return;
    };
    let Some(dovecot) = Dovecot::start_with_oauth2(&provider) else {
        return;
    };
    dovecot.add_user("alice", "password-not-used");
    let token = provider.client_credentials_token("tests");
    let reply = imap_xoauth2(dovecot.imap_port(), "alice@example.com", &token);
    assert!(reply.starts_with("a OK"), "{reply}\n{}", dovecot.log());

    // Another mailbox than the token's, and a tampered token.
    let reply = imap_xoauth2(dovecot.imap_port(), "bob@example.com", &token);
    assert!(reply.starts_with("a NO"), "{reply}");
    let mut forged = token.clone();
    forged.truncate(token.len() - 4);
    forged.push_str("AAAA");
    let reply = imap_xoauth2(dovecot.imap_port(), "alice@example.com", &forged);
    assert!(reply.starts_with("a NO"), "{reply}");
}
