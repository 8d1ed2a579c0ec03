//! The IMAP APPEND sink against a scripted server: synchronizing literals,
//! APPENDLIMIT, and each kind of refusal or fault.

use std::io::{BufRead, Read, Write};
use std::time::Duration;

use mailfetch::config::{AuthMethod, Endpoint, ImapTarget, PasswordSource, Secret, TlsMode};
use mailfetch::error::Kind;
use mailfetch::sink::imap_append::ImapAppendSink;
use mailfetch::sink::{Acceptance, Delivered, MessageWriter, Sink};
use testkit::fake_server::{Connection, FakeServer, Serving};

/// How the server answers one APPEND.
#[derive(Clone, Debug)]
enum Answer {
    /// Read the literal, then send this completion (`OK …`, `NO […] …`).
    After(&'static str),
    /// Refuse a synchronizing literal at once with this completion.
    Refuse(&'static str),
    /// Read half the literal, then close the connection.
    Hangup,
}

/// What the server shares across connections.
struct Log {
    /// The answers still to give, in order across connections.
    answers: std::vec::IntoIter<Answer>,
    /// The literals received in full.
    messages: Vec<Vec<u8>>,
}

/// A fake IMAP server that knows only LOGIN, CREATE, APPEND and LOGOUT,
/// on the shared fake-server harness: the full fake IMAP server has no
/// APPEND, and these tests script each APPEND's answer.
struct Server {
    server: FakeServer<Log>,
    port: u16,
}

impl Server {
    /// Serves connections one after another; `caps` are announced after
    /// login; `answers` are used in order across connections.
    fn start(caps: &'static str, answers: Vec<Answer>) -> Server {
        let log = Log {
            answers: answers.into_iter(),
            messages: Vec::new(),
        };
        let server = FakeServer::start(log, Serving::OneAtATime, move |conn| serve(conn, caps));
        let port = server.port();
        Server { server, port }
    }

    fn lines(&self) -> Vec<Vec<String>> {
        self.server.sessions()
    }

    fn messages(&self) -> Vec<Vec<u8>> {
        self.server.state().messages.clone()
    }
}

fn serve(conn: &mut Connection<Log>, caps: &str) -> std::io::Result<()> {
    conn.out
        .write_all(b"* OK [CAPABILITY IMAP4rev1] fake ready\r\n")?;
    loop {
        let mut line = String::new();
        if conn.reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_owned();
        conn.record(&line);
        let (tag, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let verb = rest.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let out = &mut conn.out;
        match verb.as_str() {
            "LOGIN" => write!(out, "{tag} OK [CAPABILITY IMAP4rev1 {caps}] in\r\n")?,
            "CREATE" => write!(out, "{tag} OK created\r\n")?,
            "LOGOUT" => {
                write!(out, "* BYE bye\r\n{tag} OK out\r\n")?;
                return Ok(());
            }
            "APPEND" => {
                let open = line.rfind('{').unwrap();
                let size = &line[open + 1..line.len() - 1];
                let sync = !size.ends_with('+');
                let size: usize = size.trim_end_matches('+').parse().unwrap();
                let answer = conn.state().answers.next().expect("an answer");
                if let Answer::Refuse(completion) = answer {
                    assert!(sync, "refusing a non-synchronizing literal");
                    write!(conn.out, "{tag} {completion}\r\n")?;
                    continue;
                }
                if sync {
                    conn.out.write_all(b"+ go ahead\r\n")?;
                }
                let mut message = vec![0; size];
                if let Answer::Hangup = answer {
                    conn.reader.read_exact(&mut message[..size / 2])?;
                    return Ok(());
                }
                conn.reader.read_exact(&mut message)?;
                let mut end = [0; 2];
                conn.reader.read_exact(&mut end)?;
                assert_eq!(&end, b"\r\n");
                conn.state().messages.push(message);
                if let Answer::After(completion) = answer {
                    write!(conn.out, "{tag} {completion}\r\n")?;
                }
            }
            _ => write!(out, "{tag} BAD unexpected\r\n")?,
        }
    }
}

fn sink(server: &Server, spool: &tempfile::TempDir) -> ImapAppendSink {
    let target = ImapTarget {
        folder: "Archive".into(),
        seen: false,
        server: Endpoint {
            host: "127.0.0.1".into(),
            port: server.port,
            tls: TlsMode::None,
            ca_file: None,
            fingerprint: None,
            username: Some("bob".into()),
            password: PasswordSource::None,
            auth: AuthMethod::Auto,
            allow_plaintext_auth: false,
            timeout: Duration::from_secs(10),
        },
    };
    ImapAppendSink::new(
        target,
        Some(Secret::new("pw".into())),
        spool.path().to_owned(),
    )
}

const MESSAGE: &[u8] =
    b"Return-Path: <alice@example.org>\nDate: Tue, 3 Mar 2026 10:00:00 +0100\nSubject: x\n\nbody\n";
const CRLF_MESSAGE: &[u8] =
    b"Return-Path: <alice@example.org>\r\nDate: Tue, 3 Mar 2026 10:00:00 +0100\r\nSubject: x\r\n\r\nbody\r\n";

async fn deliver(
    sink: &mut ImapAppendSink,
    message: &[u8],
) -> Result<Acceptance<Delivered>, mailfetch::error::Error> {
    let mut writer = sink.begin().await?;
    writer.write(message).await.unwrap();
    sink.finish(writer).await
}

fn spooled(spool: &tempfile::TempDir) -> usize {
    std::fs::read_dir(spool.path()).unwrap().count()
}

#[tokio::test]
async fn without_literal_plus_the_message_waits_for_the_go_ahead() {
    let server = Server::start("", vec![Answer::After("OK done")]);
    let spool = tempfile::tempdir().unwrap();
    let mut sink = sink(&server, &spool);
    assert!(matches!(
        deliver(&mut sink, MESSAGE).await.unwrap(),
        Acceptance::Accepted(Delivered { size }) if size == CRLF_MESSAGE.len() as u64
    ));
    sink.close().await;
    let lines = &server.lines()[0];
    assert_eq!(
        lines[1],
        format!(
            "M2 APPEND \"Archive\" \" 3-Mar-2026 10:00:00 +0100\" {{{}}}",
            CRLF_MESSAGE.len()
        )
    );
    assert!(lines.last().unwrap().ends_with("LOGOUT"));
    assert_eq!(server.messages(), [CRLF_MESSAGE]);
    assert_eq!(spooled(&spool), 0);
}

#[tokio::test]
async fn with_literal_plus_the_message_follows_at_once() {
    let server = Server::start("LITERAL+", vec![Answer::After("OK done")]);
    let spool = tempfile::tempdir().unwrap();
    let mut sink = sink(&server, &spool);
    assert!(matches!(
        deliver(&mut sink, MESSAGE).await.unwrap(),
        Acceptance::Accepted(_)
    ));
    assert!(server.lines()[0][1].ends_with(&format!("{{{}+}}", CRLF_MESSAGE.len())));
}

#[tokio::test]
async fn refusals_are_temporary_or_permanent_by_their_response_code() {
    let server = Server::start(
        "",
        vec![
            Answer::After("NO [OVERQUOTA] mailbox full"),
            Answer::After("NO [UNAVAILABLE] try later"),
            Answer::After("NO message refused"),
            Answer::Refuse("NO [LIMIT] too many"),
            Answer::Refuse("NO [TOOBIG] too big"),
        ],
    );
    let spool = tempfile::tempdir().unwrap();
    let mut sink = sink(&server, &spool);
    let mut verdicts = Vec::new();
    for _ in 0..5 {
        verdicts.push(match deliver(&mut sink, MESSAGE).await.unwrap() {
            Acceptance::Accepted(_) => "accepted".to_owned(),
            Acceptance::TemporaryFailure(reason) => format!("temporary: {reason}"),
            Acceptance::Partial { .. } => "partial: an IMAP folder has no recipients".to_owned(),
            Acceptance::PermanentFailure(rejection) => {
                assert_eq!(rejection.sender.as_deref(), Some("alice@example.org"));
                assert!(rejection.headers.ends_with(b"Subject: x\n\n"));
                format!("permanent: {}", rejection.reason)
            }
        });
    }
    assert_eq!(
        verdicts,
        [
            "temporary: 127.0.0.1: APPEND refused for now: mailbox full",
            "temporary: 127.0.0.1: APPEND refused for now: try later",
            "permanent: 127.0.0.1: APPEND refused: message refused",
            "temporary: 127.0.0.1: APPEND refused for now: too many",
            "permanent: 127.0.0.1: APPEND refused: too big",
        ]
    );
    // Refused literals were never sent; everything went over one session.
    assert_eq!(server.messages().len(), 3);
    assert_eq!(server.lines().len(), 1);
    assert_eq!(spooled(&spool), 0);
}

/// BAD is about the command, not the message: refusing the message for
/// good would let `on_reject = "delete"` lose it over a quirk.
#[tokio::test]
async fn a_bad_answer_to_append_is_a_temporary_failure_and_the_next_message_reconnects() {
    for bad in [
        Answer::After("BAD what?"),
        Answer::Refuse("BAD [PARSE] what?"),
    ] {
        let server = Server::start("", vec![bad, Answer::After("OK done")]);
        let spool = tempfile::tempdir().unwrap();
        let mut sink = sink(&server, &spool);
        match deliver(&mut sink, MESSAGE).await.unwrap() {
            Acceptance::TemporaryFailure(reason) => {
                assert!(
                    reason.contains("BAD") && reason.contains("what?"),
                    "{reason}"
                )
            }
            Acceptance::Accepted(_) | Acceptance::Partial { .. } => panic!("accepted"),
            Acceptance::PermanentFailure(rejection) => panic!("refused: {}", rejection.reason),
        }
        assert!(matches!(
            deliver(&mut sink, MESSAGE).await.unwrap(),
            Acceptance::Accepted(_)
        ));
        assert_eq!(server.lines().len(), 2);
        assert_eq!(spooled(&spool), 0);
    }
}

#[tokio::test]
async fn trycreate_creates_the_folder_once_and_retries() {
    let server = Server::start(
        "",
        vec![
            Answer::After("NO [TRYCREATE] no such folder"),
            Answer::After("OK done"),
            Answer::After("NO [TRYCREATE] no such folder"),
            Answer::After("NO [TRYCREATE] still no such folder"),
        ],
    );
    let spool = tempfile::tempdir().unwrap();
    let mut sink = sink(&server, &spool);
    assert!(matches!(
        deliver(&mut sink, MESSAGE).await.unwrap(),
        Acceptance::Accepted(_)
    ));
    assert!(matches!(
        deliver(&mut sink, MESSAGE).await.unwrap(),
        Acceptance::PermanentFailure(_)
    ));
    let lines = &server.lines()[0];
    let creates = lines
        .iter()
        .filter(|l| l.contains("CREATE \"Archive\""))
        .count();
    assert_eq!(creates, 2, "{lines:?}");
}

#[tokio::test]
async fn a_folder_problem_stops_the_poll_instead_of_refusing_each_message() {
    let server = Server::start("", vec![Answer::Refuse("NO [NOPERM] not yours")]);
    let spool = tempfile::tempdir().unwrap();
    let mut sink = sink(&server, &spool);
    let err = deliver(&mut sink, MESSAGE).await.err().expect("an error");
    assert_eq!(err.kind, Kind::Delivery);
    assert!(err.message.contains("not yours"), "{err}");
}

#[tokio::test]
async fn appendlimit_refuses_a_large_message_without_sending_it() {
    let server = Server::start("LITERAL+ APPENDLIMIT=50", vec![]);
    let spool = tempfile::tempdir().unwrap();
    let mut sink = sink(&server, &spool);
    match deliver(&mut sink, MESSAGE).await.unwrap() {
        Acceptance::PermanentFailure(rejection) => {
            assert!(
                rejection.reason.contains("APPENDLIMIT=50"),
                "{}",
                rejection.reason
            )
        }
        _ => panic!("not refused"),
    }
    sink.close().await;
    assert!(!server.lines()[0].iter().any(|l| l.contains("APPEND")));
    assert_eq!(spooled(&spool), 0);
}

#[tokio::test]
async fn a_connection_lost_before_the_ok_is_an_error_and_the_next_message_reconnects() {
    let server = Server::start("", vec![Answer::Hangup, Answer::After("OK done")]);
    let spool = tempfile::tempdir().unwrap();
    let mut sink = sink(&server, &spool);
    let mut big = MESSAGE.to_vec();
    big.extend(b"x".repeat(100_000));
    let err = deliver(&mut sink, &big).await.err().expect("an error");
    assert!(matches!(err.kind, Kind::Connection | Kind::Server), "{err}");
    assert_eq!(spooled(&spool), 0);
    assert!(matches!(
        deliver(&mut sink, MESSAGE).await.unwrap(),
        Acceptance::Accepted(_)
    ));
    assert_eq!(server.lines().len(), 2);
    assert_eq!(server.messages(), [CRLF_MESSAGE]);
}
