//! The MDA sink against small shell scripts: exit codes, time limits,
//! several recipients, envelope sender substitution and aborts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailfetch::address::Sender;
use mailfetch::config::{EnvelopeFrom, MdaTarget};
use mailfetch::sink::mda::MdaSink;
use mailfetch::sink::{Acceptance, Delivered, MessageWriter, Sink};

const MESSAGE: &[u8] = b"Return-Path: <alice@example.org>\r\n\
From: Alice <alice@example.org>\r\n\
Subject: hello\r\n\
\r\n\
line one\r\n\
line two with a lone \r in it\r\n";

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes an executable `/bin/sh` script; returns its path.
    fn script(&self, name: &str, body: &str) -> String {
        let path = self.path(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    fn spool(&self) -> PathBuf {
        self.path("spool")
    }

    fn sink(&self, command: &str, recipients: &[&str], timeout: Duration) -> MdaSink {
        MdaSink::new(
            MdaTarget {
                command: command.parse().unwrap(),
                timeout,
            },
            recipients.iter().map(|r| r.to_string()).collect(),
            EnvelopeFrom::ReturnPath,
            self.spool(),
        )
    }
}

const LONG: Duration = Duration::from_secs(30);

/// Streams `message` in `chunk`-byte pieces and finishes it.
async fn deliver(sink: &mut MdaSink, message: &[u8], chunk: usize) -> Acceptance<Delivered> {
    let mut writer = sink.begin().await.unwrap();
    for piece in message.chunks(chunk) {
        writer.write(piece).await.unwrap();
    }
    sink.finish(writer).await.unwrap()
}

fn lf(message: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(message)
        .replace("\r\n", "\n")
        .into_bytes()
}

/// Whether a process is still running (zombies count as dead).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
        }
        Err(_) => false,
    }
}

/// Polls `condition` for up to 10 s.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_pid(path: &Path) -> u32 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn exit_0_delivers_with_lf_line_ends() {
    let dir = Dir::new();
    let script = dir.script("deliver", r#"cat > "$1""#);
    let out = dir.path("out");
    let mut sink = dir.sink(&format!("{script} {}", out.display()), &["bob"], LONG);
    for chunk in [1, 7, 4096] {
        match deliver(&mut sink, MESSAGE, chunk).await {
            Acceptance::Accepted(delivered) => {
                assert_eq!(delivered.size, lf(MESSAGE).len() as u64)
            }
            _ => panic!("not accepted"),
        }
        assert_eq!(fs::read(&out).unwrap(), lf(MESSAGE), "chunk {chunk}");
    }
    assert!(sink.describe().starts_with("mda "));
}

#[tokio::test]
async fn exit_75_is_a_temporary_failure() {
    let dir = Dir::new();
    let script = dir.script(
        "deliver",
        "cat > /dev/null; echo 'mailbox locked' >&2; exit 75",
    );
    let mut sink = dir.sink(&script, &["bob"], LONG);
    match deliver(&mut sink, MESSAGE, 1024).await {
        Acceptance::TemporaryFailure(reason) => {
            assert!(reason.contains("status 75"), "{reason}");
            assert!(reason.contains("mailbox locked"), "{reason}");
        }
        _ => panic!("not a temporary failure"),
    }
}

#[tokio::test]
async fn other_exit_codes_and_signals_are_permanent_with_stderr_in_the_reason() {
    let dir = Dir::new();
    let script = dir.script(
        "deliver",
        "cat > /dev/null; echo 'first line' >&2; echo 'no such user: bob' >&2; exit 67",
    );
    let mut sink = dir.sink(&script, &["bob"], LONG);
    match deliver(&mut sink, MESSAGE, 1024).await {
        Acceptance::PermanentFailure(rejection) => {
            assert!(
                rejection.reason.contains("status 67"),
                "{}",
                rejection.reason
            );
            assert!(
                rejection.reason.contains("first line / no such user: bob"),
                "{}",
                rejection.reason
            );
            assert_eq!(rejection.sender.as_deref(), Some("alice@example.org"));
            assert!(rejection.headers.starts_with(b"Return-Path:"));
            assert!(rejection.headers.ends_with(b"Subject: hello\r\n\r\n"));
        }
        _ => panic!("not a permanent failure"),
    }

    let script = dir.script("killed", "kill -TERM $$");
    let mut sink = dir.sink(&script, &["bob"], LONG);
    match deliver(&mut sink, MESSAGE, 1024).await {
        Acceptance::PermanentFailure(rejection) => {
            assert!(
                rejection.reason.contains("signal 15"),
                "{}",
                rejection.reason
            )
        }
        _ => panic!("not a permanent failure"),
    }
}

#[tokio::test]
async fn a_command_that_ignores_its_input_and_exits_0_delivered() {
    // procmail semantics: the exit status decides, even if the command did
    // not read everything (a big message fills the pipe and hits EPIPE).
    let dir = Dir::new();
    let mut sink = dir.sink("true", &["bob"], LONG);
    let mut message = MESSAGE.to_vec();
    message.extend(b"x".repeat(2 * 1024 * 1024));
    assert!(matches!(
        deliver(&mut sink, &message, 65536).await,
        Acceptance::Accepted(_)
    ));
}

#[tokio::test]
async fn a_command_past_its_time_limit_is_killed_with_what_it_started() {
    let dir = Dir::new();
    let (pid, bg) = (dir.path("pid"), dir.path("bg"));
    let script = dir.script(
        "slow",
        &format!(
            "echo $$ > {}; sleep 60 & echo $! > {}; wait",
            pid.display(),
            bg.display()
        ),
    );
    let mut sink = dir.sink(&script, &["bob"], Duration::from_secs(1));
    let start = Instant::now();
    match deliver(&mut sink, MESSAGE, 1024).await {
        Acceptance::TemporaryFailure(reason) => {
            assert!(reason.contains("within 1 s"), "{reason}")
        }
        _ => panic!("not a temporary failure"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    let (pid, bg) = (read_pid(&pid), read_pid(&bg));
    eventually("the script is killed", || !alive(pid));
    eventually("its background sleep is killed", || !alive(bg));
}

#[tokio::test]
async fn a_command_that_never_reads_is_killed_at_its_time_limit() {
    let dir = Dir::new();
    let mut sink = dir.sink("sleep 60", &["bob"], Duration::from_secs(1));
    let mut message = MESSAGE.to_vec();
    message.extend(b"x".repeat(4 * 1024 * 1024));
    let start = Instant::now();
    assert!(matches!(
        deliver(&mut sink, &message, 65536).await,
        Acceptance::TemporaryFailure(_)
    ));
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn each_recipient_gets_the_whole_message_from_the_spool() {
    let dir = Dir::new();
    let script = dir.script(
        "deliver",
        &format!(r#"cat > {}/out-"$1""#, dir.tmp.path().display()),
    );
    let mut sink = dir.sink(&format!("{script} %T"), &["alice", "bob", "carol"], LONG);
    let mut message = MESSAGE.to_vec();
    for n in 0..20_000 {
        message.extend(format!("body line {n}\r\n").as_bytes());
    }
    assert!(matches!(
        deliver(&mut sink, &message, 8192).await,
        Acceptance::Accepted(_)
    ));
    for who in ["alice", "bob", "carol"] {
        assert_eq!(
            fs::read(dir.path(&format!("out-{who}"))).unwrap(),
            lf(&message),
            "{who}"
        );
    }
    assert_eq!(fs::read_dir(dir.spool()).unwrap().count(), 0);
    let mode = fs::metadata(dir.spool()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn one_recipient_failing_temporarily_keeps_the_message() {
    let dir = Dir::new();
    let script = dir.script(
        "deliver",
        r#"cat > /dev/null; [ "$1" = bob ] && exit 75; exit 0"#,
    );
    let mut sink = dir.sink(&format!("{script} %T"), &["alice", "bob"], LONG);
    match deliver(&mut sink, MESSAGE, 1024).await {
        // Alice has it: a retry goes to bob alone.
        Acceptance::Partial {
            delivered_to,
            failure,
        } => {
            assert_eq!(delivered_to, ["alice"]);
            match *failure {
                Acceptance::TemporaryFailure(reason) => {
                    assert!(reason.contains("for bob"), "{reason}")
                }
                _ => panic!("not a temporary failure"),
            }
        }
        _ => panic!("not a partial delivery"),
    }
    // The retry for bob alone runs the command for him only.
    let ran = dir.path("ran");
    dir.script(
        "deliver",
        &format!(r#"cat > /dev/null; echo "$1" >> {}; exit 0"#, ran.display()),
    );
    let mut writer = sink.begin_to(&["bob".to_owned()]).await.unwrap();
    writer.write(MESSAGE).await.unwrap();
    assert!(matches!(
        sink.finish(writer).await.unwrap(),
        Acceptance::Accepted(_)
    ));
    assert_eq!(fs::read_to_string(&ran).unwrap(), "bob\n");
}

#[tokio::test]
async fn envelope_sender_is_substituted_and_hostile_ones_are_dropped() {
    let dir = Dir::new();
    let args = dir.path("args");
    let pwned = dir.path("pwned");
    // A shell command, as a user might write it: %F is quoted for it.
    let command = format!(
        "sh -c 'cat > /dev/null; printf \"%s|%s\\n\" %F %T > {}'",
        args.display()
    );
    let mut sink = dir.sink(&command, &["bob"], LONG);
    assert!(matches!(
        deliver(&mut sink, MESSAGE, 1024).await,
        Acceptance::Accepted(_)
    ));
    assert_eq!(
        fs::read_to_string(&args).unwrap(),
        "alice@example.org|bob\n"
    );

    for hostile in [
        format!("<$(touch {})@x>", pwned.display()),
        format!("<`touch {}`@x>", pwned.display()),
        format!("<a@x>; touch {}", pwned.display()),
        format!("<a@x'; touch {}; '>", pwned.display()),
    ] {
        let message = format!("Return-Path: {hostile}\r\nSubject: x\r\n\r\nbody\r\n");
        assert!(matches!(
            deliver(&mut sink, message.as_bytes(), 1024).await,
            Acceptance::Accepted(_)
        ));
        assert_eq!(fs::read_to_string(&args).unwrap(), "|bob\n", "{hostile}");
        assert!(!pwned.exists(), "{hostile}");
    }

    // Without a shell, the value is one argv word as it is.
    let script = dir.script(
        "args",
        &format!(r#"printf "%s\n" "$@" > {}"#, args.display()),
    );
    let mut sink = MdaSink::new(
        MdaTarget {
            command: format!("{script} -f %F -- %T '100%%'").parse().unwrap(),
            timeout: LONG,
        },
        vec!["bob smith".into()],
        EnvelopeFrom::Fixed(Sender::Address("me+x@here.example".into())),
        dir.spool(),
    );
    assert!(matches!(
        deliver(&mut sink, MESSAGE, 1024).await,
        Acceptance::Accepted(_)
    ));
    assert_eq!(
        fs::read_to_string(&args).unwrap(),
        "-f\nme+x@here.example\n--\nbob smith\n100%\n"
    );
}

#[tokio::test]
async fn an_aborted_message_never_reaches_the_end_of_input() {
    let dir = Dir::new();
    let (pid, finished) = (dir.path("pid"), dir.path("finished"));
    let script = dir.script(
        "deliver",
        &format!(
            "echo $$ > {}; cat > /dev/null; echo done > {}",
            pid.display(),
            finished.display()
        ),
    );
    let mut sink = dir.sink(&script, &["bob"], LONG);
    let mut writer = sink.begin().await.unwrap();
    writer.write(MESSAGE).await.unwrap();
    // The header block is complete: the command runs and reads.
    writer
        .write(&b"more body\r\n".repeat(10_000))
        .await
        .unwrap();
    eventually("the command starts", || {
        fs::read_to_string(&pid).is_ok_and(|p| p.ends_with('\n'))
    });
    let pid = read_pid(&pid);
    sink.abort(writer);
    eventually("the command is killed", || !alive(pid));
    assert!(
        !finished.exists(),
        "the command saw the end of a truncated message"
    );

    // With a spool (several recipients), the spool file goes too.
    let mut sink = dir.sink(&format!("{script} %T"), &["a", "b"], LONG);
    let mut writer = sink.begin().await.unwrap();
    writer.write(MESSAGE).await.unwrap();
    assert_eq!(fs::read_dir(dir.spool()).unwrap().count(), 1);
    sink.abort(writer);
    assert_eq!(fs::read_dir(dir.spool()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_missing_program_stops_the_poll_instead_of_refusing_mail() {
    let dir = Dir::new();
    let mut sink = dir.sink(
        &dir.path("no-such-mda").display().to_string(),
        &["bob"],
        LONG,
    );
    let mut writer = sink.begin().await.unwrap();
    writer.write(MESSAGE).await.unwrap();
    let err = match sink.finish(writer).await {
        Err(err) => err,
        Ok(_) => panic!("a missing MDA was not an error"),
    };
    assert_eq!(err.kind, mailfetch::error::Kind::Delivery);
    assert!(err.message.contains("no-such-mda"), "{err}");

    // A command that does not parse is refused where it is read, so no sink
    // can hold one.
    assert!(
        "procmail 'unterminated"
            .parse::<mailfetch::cmdline::CommandLine>()
            .is_err()
    );
}

#[tokio::test]
async fn spool_files_of_dead_processes_are_removed() {
    let dir = Dir::new();
    fs::create_dir_all(dir.spool()).unwrap();
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let orphan = dir.spool().join(format!("mda.{dead_pid}.0"));
    let alive = dir.spool().join("append.1.0");
    let unrelated = dir.spool().join("notes.txt");
    for path in [&orphan, &alive, &unrelated] {
        fs::write(path, "x").unwrap();
    }
    let script = dir.script("deliver", "cat > /dev/null");
    let mut sink = dir.sink(&format!("{script} %T"), &["a", "b"], LONG);
    assert!(matches!(
        deliver(&mut sink, MESSAGE, 1024).await,
        Acceptance::Accepted(_)
    ));
    assert!(!orphan.exists());
    assert!(alive.exists(), "pid 1 is alive");
    assert!(unrelated.exists());
}
