//! `mailfetch --daemon` against a real Dovecot on loopback: IDLE, signals,
//! backoff, the lock.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use testkit::dovecot::Dovecot;
use testkit::run::{Scratch, files_in, sample_message};

const PASSWORD: &str = "daemon-Pa55";

/// A running `mailfetch --daemon`; killed on drop if still running.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(scratch: &Scratch, args: &[&str]) -> Daemon {
        Self::start_with_env(scratch, args, &[])
    }

    fn start_with_env(scratch: &Scratch, args: &[&str], env: &[(&str, &Path)]) -> Daemon {
        let log = scratch
            .path()
            .join(format!("daemon-{}.log", files_in(scratch.path()).len()));
        let child = Command::new(testkit::run::mailfetch_binary())
            .envs(env.iter().copied())
            .arg("-c")
            .arg(scratch.config_path())
            .arg("--daemon")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits until the log holds `count` lines containing `needle`.
    #[track_caller]
    fn wait_for(&mut self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.lines().filter(|l| l.contains(needle)).count() >= count {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}) waiting for {needle:?}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no {count} line(s) with {needle:?} within {within:?}; log:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns its code and how long it took.
    #[track_caller]
    fn wait_exit(&mut self, within: Duration) -> (i32, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "the daemon did not exit within {within:?}; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `dir` (a Maildir) holds `count` delivered messages; returns
/// how long that took.
#[track_caller]
fn wait_delivered(maildir: &Path, count: usize, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let n = files_in(&maildir.join("new")).len() + files_in(&maildir.join("cur")).len();
        if n >= count {
            assert_eq!(n, count, "more messages than expected in {maildir:?}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{n} of {count} message(s) in {maildir:?} after {within:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn imap_account(dovecot: &Dovecot, name: &str, user: &str, maildir: &Path, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
         username = \"{user}\"\npassword = \"{PASSWORD}\"\ndeliver = \"maildir:{}\"\n{extra}\n",
        dovecot.imap_port(),
        maildir.display(),
    )
}

fn pop3_account(dovecot: &Dovecot, name: &str, user: &str, maildir: &Path, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
         username = \"{user}\"\npassword = \"{PASSWORD}\"\ndeliver = \"maildir:{}\"\n{extra}\n",
        dovecot.pop3_port(),
        maildir.display(),
    )
}

/// The acceptance test of IDLE: two accounts, two folders each, and mail
/// arriving in each folder is delivered within a few seconds, with no
/// poll interval to help (it is an hour).
#[test]
fn idle_on_two_accounts_and_two_folders_delivers_within_seconds() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let scratch = Scratch::new();
    let mut accounts = String::new();
    for user in ["alice", "bob"] {
        dovecot.add_user(user, PASSWORD);
        dovecot.doveadm_ok(&["mailbox", "create", "-u", user, "Lists"]);
        accounts.push_str(&imap_account(
            &dovecot,
            user,
            user,
            &scratch.path().join(user),
            "folders = [\"INBOX\", \"Lists\"]\nidle = true\ninterval = \"1h\"\nkeep = true",
        ));
    }
    // Mail waiting before the start is fetched by the first poll.
    dovecot.save("alice", "INBOX", &sample_message(1));
    scratch.write_config(&accounts);
    let mut daemon = Daemon::start(&scratch, &[]);
    daemon.wait_for(" new, ", 4, Duration::from_secs(20));
    assert!(
        daemon.log().contains("4 IDLE connection(s)"),
        "{}",
        daemon.log()
    );
    wait_delivered(&scratch.path().join("alice"), 1, Duration::from_secs(5));

    let mut n = 10;
    for (user, expected) in [("alice", 2), ("bob", 1)] {
        for folder in ["INBOX", "Lists"] {
            n += 1;
            let before = Instant::now();
            dovecot.save(user, folder, &sample_message(n));
            let waited = wait_delivered(
                &scratch.path().join(user),
                expected + usize::from(folder == "Lists"),
                Duration::from_secs(10),
            );
            let took = before.elapsed();
            assert!(
                took < Duration::from_secs(4),
                "{user}/{folder}: delivered after {took:?} (waited {waited:?}); log:\n{}",
                daemon.log()
            );
        }
    }
    daemon.signal(libc::SIGTERM);
    let (code, took) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 0, "{}", daemon.log());
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
}

/// SIGTERM in the middle of a large delete-mode fetch: the daemon stops
/// within 10 s with code 0, every message is either delivered whole or
/// still on the server, and the next run delivers the rest exactly once.
#[test]
fn sigterm_during_a_large_fetch_loses_nothing_and_delivers_nothing_partial() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    const COUNT: usize = 160;
    let filler = "x".repeat(1023) + "\n";
    for n in 0..COUNT {
        let mut message = sample_message(n);
        for _ in 0..1024 {
            message.extend_from_slice(filler.as_bytes());
        }
        dovecot.add_message("alice", &message);
    }
    let scratch = Scratch::new();
    let maildir = scratch.maildir();
    scratch.write_config(&pop3_account(&dovecot, "home", "alice", &maildir, ""));
    let mut daemon = Daemon::start(&scratch, &[]);
    // The first batch (32 MiB) is visible: the fetch is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_in(&maildir.join("new")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing delivered: {}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(2));
    }
    daemon.signal(libc::SIGTERM);
    let (code, took) = daemon.wait_exit(Duration::from_secs(10));
    let log = daemon.log();
    assert_eq!(code, 0, "{log}");
    assert!(took < Duration::from_secs(10));
    assert!(
        log.contains("interrupted: mailfetch is shutting down"),
        "the fetch was not interrupted (it finished first?):\n{log}"
    );

    let delivered = scratch.delivered();
    assert!(delivered.len() < COUNT, "{log}");
    for message in &delivered {
        assert!(
            message.ends_with(filler.as_bytes()),
            "a partial message was delivered"
        );
    }
    // Nothing was deleted: a delete-mode POP3 session that did not QUIT.
    assert_eq!(dovecot.message_count("alice"), COUNT);

    // The next run fetches the rest, and removes what was delivered.
    let run = scratch.run(&[]);
    run.expect(0);
    let delivered = scratch.delivered();
    assert_eq!(delivered.len(), COUNT, "{}", run.stderr);
    let mut ids: Vec<String> = delivered
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m[..m.len().min(600)]).into_owned();
            text.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), COUNT, "a message was delivered twice");
    assert_eq!(dovecot.message_count("alice"), 0);
}

/// SIGHUP with a broken configuration keeps the old one running; SIGHUP
/// with a good one switches to it; SIGUSR1 polls at once.
#[test]
fn sighup_reloads_a_good_config_and_keeps_the_old_one_over_a_broken_one() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    let scratch = Scratch::new();
    let first = scratch.path().join("first");
    let second = scratch.path().join("second");
    let config = |maildir: &Path| {
        pop3_account(
            &dovecot,
            "home",
            "alice",
            maildir,
            "interval = \"1h\"\nkeep = true",
        )
    };
    scratch.write_config(&config(&first));
    let mut daemon = Daemon::start(&scratch, &[]);
    daemon.wait_for("home: 0 new", 1, Duration::from_secs(20));

    // A broken configuration: logged, and the old one keeps working.
    fs::write(
        scratch.config_path(),
        "[[account]]\nname = \"home\"\nprotocol = \"pop4\"\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("keeping the old one", 1, Duration::from_secs(10));
    assert!(
        daemon.log().contains("key `protocol`"),
        "the error names the key: {}",
        daemon.log()
    );
    dovecot.add_message("alice", &sample_message(1));
    daemon.signal(libc::SIGUSR1);
    wait_delivered(&first, 1, Duration::from_secs(10));

    // A good one, delivering elsewhere: used from now on.
    scratch.write_config(&config(&second));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("configuration reloaded", 1, Duration::from_secs(10));
    dovecot.add_message("alice", &sample_message(2));
    daemon.signal(libc::SIGUSR1);
    wait_delivered(&second, 1, Duration::from_secs(10));
    assert_eq!(files_in(&first.join("new")).len(), 1);

    daemon.signal(libc::SIGINT);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).0, 0);
}

/// SIGUSR1 polls every account at once, long before their interval.
#[test]
fn sigusr1_polls_every_account_now() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let scratch = Scratch::new();
    let mut accounts = String::new();
    for user in ["alice", "bob"] {
        dovecot.add_user(user, PASSWORD);
        accounts.push_str(&pop3_account(
            &dovecot,
            user,
            user,
            &scratch.path().join(user),
            "",
        ));
    }
    scratch.write_config_with(&accounts, "poll_interval = \"1h\"");
    let mut daemon = Daemon::start(&scratch, &[]);
    daemon.wait_for(": 0 new", 2, Duration::from_secs(20));
    for user in ["alice", "bob"] {
        dovecot.add_message(user, &sample_message(1));
    }
    daemon.signal(libc::SIGUSR1);
    for user in ["alice", "bob"] {
        wait_delivered(&scratch.path().join(user), 1, Duration::from_secs(10));
    }
    daemon.wait_for("1 deleted", 2, Duration::from_secs(10));
}

/// An account whose server is down backs off, while another account keeps
/// being polled at its (short) interval; a second daemon on the same state
/// is refused with exit code 8.
#[test]
fn a_server_that_is_down_backs_off_while_another_keeps_being_polled() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    // A loopback port nobody listens on.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let scratch = Scratch::new();
    let accounts = format!(
        "{}[[account]]\nname = \"down\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = {closed}\n\
         tls = \"none\"\nusername = \"x\"\npassword = \"y\"\ndeliver = \"maildir:{}\"\ninterval = \"1s\"\n",
        pop3_account(
            &dovecot,
            "up",
            "alice",
            &scratch.maildir(),
            "interval = \"1s\""
        ),
        scratch.path().join("down").display()
    );
    scratch.write_config(&accounts);
    let mut daemon = Daemon::start(&scratch, &[]);
    daemon.wait_for("up: 0 new", 4, Duration::from_secs(30));
    let log = daemon.log();
    let down_polls = log.lines().filter(|l| l.contains("down: 0 new")).count();
    assert_eq!(
        down_polls, 1,
        "the broken account was not backed off:\n{log}"
    );
    assert!(
        log.contains("down: failed 1 time(s) in a row; next attempt in"),
        "{log}"
    );

    let second = scratch.run(&["--daemon"]);
    second.expect(8);
    assert!(
        second
            .stderr
            .contains("is already using the state directory"),
        "{}",
        second.stderr
    );

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).0, 0);
}

/// `--log-format json` writes one JSON object per line.
#[test]
fn json_logs_are_one_object_per_line() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    dovecot.add_message("alice", &sample_message(1));
    let scratch = Scratch::new();
    scratch.write_config(&pop3_account(
        &dovecot,
        "home",
        "alice",
        &scratch.maildir(),
        "",
    ));
    let run = scratch.run(&["--log-format", "json"]);
    run.expect(0);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\""),
            "{line}"
        );
    }
    assert!(
        run.stderr.contains("home: 1 new, 1 delivered"),
        "{}",
        run.stderr
    );
}

/// A dropped IDLE connection (the server kicks the user) is reconnected
/// after a short backoff, and mail arriving after that is delivered, in
/// delete mode, again and again.
#[test]
fn a_dropped_idle_connection_reconnects() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    let scratch = Scratch::new();
    let maildir = scratch.maildir();
    scratch.write_config(&imap_account(
        &dovecot,
        "work",
        "alice",
        &maildir,
        "idle = true\ninterval = \"1h\"",
    ));
    let mut daemon = Daemon::start(&scratch, &[]);
    daemon.wait_for("work/INBOX: 0 new", 1, Duration::from_secs(20));
    // Give the session a moment to enter IDLE, then cut it.
    thread::sleep(Duration::from_millis(300));
    dovecot.doveadm_ok(&["kick", "alice"]);
    daemon.wait_for("IDLE connection lost", 1, Duration::from_secs(10));
    daemon.wait_for("work/INBOX: 0 new", 2, Duration::from_secs(15));
    dovecot.save("alice", "INBOX", &sample_message(1));
    wait_delivered(&maildir, 1, Duration::from_secs(5));
    // Delete mode: the message was expunged, and the next one (which the
    // server announces as `* 1 EXISTS` again) is still new mail.
    daemon.wait_for("1 deleted", 1, Duration::from_secs(5));
    dovecot.save("alice", "INBOX", &sample_message(2));
    wait_delivered(&maildir, 2, Duration::from_secs(5));
    assert!(dovecot.uids("alice", "INBOX", &["ALL"]).len() <= 1);
}

/// A server without IDLE: the folder is polled at the interval instead.
#[test]
fn a_server_without_idle_is_polled_instead() {
    use testkit::fake_imap::{self, FakeImap, Message, Script};
    let server = FakeImap::inbox(
        vec![Message::new("Subject: one\n\nfirst\n")],
        Script::default(),
    );
    let scratch = Scratch::new();
    let maildir = scratch.maildir();
    scratch.write_config(&format!(
        "[[account]]\nname = \"fake\"\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\n\
         tls = \"none\"\nusername = \"{}\"\npassword = \"{}\"\ndeliver = \"maildir:{}\"\n\
         keep = true\nidle = true\ninterval = \"1s\"\n",
        server.port(),
        fake_imap::USER,
        fake_imap::PASSWORD,
        maildir.display()
    ));
    let mut daemon = Daemon::start(&scratch, &[]);
    daemon.wait_for(
        "does not support IDLE; polling INBOX every 1 s",
        1,
        Duration::from_secs(10),
    );
    wait_delivered(&maildir, 1, Duration::from_secs(10));
    server.add_message("INBOX", Message::new("Subject: two\n\nsecond\n"));
    wait_delivered(&maildir, 2, Duration::from_secs(10));
}

/// Under systemd (`Type=notify`): READY=1 once the configuration is
/// loaded, STATUS= with the last poll's summary, STOPPING=1 on SIGTERM.
#[test]
fn systemd_is_notified_of_readiness_status_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    dovecot.add_message("alice", &sample_message(1));
    let scratch = Scratch::new();
    scratch.write_config(&pop3_account(
        &dovecot,
        "home",
        "alice",
        &scratch.maildir(),
        "interval = \"1h\"",
    ));
    let socket_path = scratch.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon =
        Daemon::start_with_env(&scratch, &[], &[("NOTIFY_SOCKET", socket_path.as_path())]);
    let mut received = Vec::new();
    let next = || {
        let mut buf = [0; 4096];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    received.push(next());
    assert!(received[0].starts_with("READY=1"), "{received:?}");
    received.push(next());
    assert!(
        received[1].starts_with("STATUS=last poll: home: 1 new, 1 delivered"),
        "{received:?}"
    );
    daemon.signal(libc::SIGTERM);
    received.push(next());
    assert!(received[2].starts_with("STOPPING=1"), "{received:?}");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).0, 0);
}

/// A rejected password is logged prominently, without the password, and
/// the account waits long before the next try.
#[test]
fn a_rejected_login_is_logged_loudly_and_backs_off_long() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    let scratch = Scratch::new();
    let account = pop3_account(
        &dovecot,
        "home",
        "alice",
        &scratch.maildir(),
        "interval = \"1s\"",
    )
    .replace(PASSWORD, "Wr0ng-Secret");
    scratch.write_config(&account);
    let mut daemon = Daemon::start(&scratch, &[]);
    daemon.wait_for("LOGIN REJECTED", 1, Duration::from_secs(20));
    thread::sleep(Duration::from_secs(2));
    let log = daemon.log();
    assert!(
        log.contains("LOGIN REJECTED by 127.0.0.1 for user alice: check the password"),
        "{log}"
    );
    // At least 7.5 minutes (15 minutes with up to half of jitter).
    assert!(log.contains(" min before trying again"), "{log}");
    assert_eq!(
        log.lines().filter(|l| l.contains("home: 0 new")).count(),
        1,
        "retried too soon:\n{log}"
    );
    assert!(
        !log.contains("Wr0ng-Secret"),
        "the password is in the log:\n{log}"
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).0, 0);
}

/// With max_per_poll, an IDLE folder takes the rest in further polls at
/// once rather than waiting for the next new message.
#[test]
fn idle_with_max_per_poll_takes_the_rest_without_waiting() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    for n in 1..=5 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    let scratch = Scratch::new();
    let maildir = scratch.maildir();
    scratch.write_config(&imap_account(
        &dovecot,
        "work",
        "alice",
        &maildir,
        "idle = true\ninterval = \"1h\"\nkeep = true\nmax_per_poll = 2",
    ));
    let _daemon = Daemon::start(&scratch, &[]);
    wait_delivered(&maildir, 5, Duration::from_secs(10));
}

/// IDLE with max_per_poll, and a destination that fails every message for
/// now (MDA exit 75): the daemon must not poll again at once, forever, to
/// fail the same messages again.
#[test]
fn idle_with_max_per_poll_does_not_spin_when_nothing_can_be_delivered() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    dovecot.add_user("alice", PASSWORD);
    for n in 0..3 {
        dovecot.save("alice", "INBOX", &sample_message(n));
    }
    let scratch = Scratch::new();
    let runs = scratch.path().join("runs");
    let mda = scratch.path().join("mda");
    fs::write(
        &mda,
        format!(
            "#!/bin/sh\ncat > /dev/null\necho run >> {}\nexit 75\n",
            runs.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&mda, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let account = imap_account(
        &dovecot,
        "work",
        "alice",
        &scratch.maildir(),
        "idle = true\ninterval = \"1h\"\nkeep = true\nmax_per_poll = 1",
    )
    .replace(
        &format!("maildir:{}", scratch.maildir().display()),
        &format!("mda:{}", mda.display()),
    );
    scratch.write_config(&account);
    let mut daemon = Daemon::start(&scratch, &[]);
    daemon.wait_for("IDLE connection(s)", 1, Duration::from_secs(20));
    thread::sleep(Duration::from_secs(2));
    let attempts = fs::read_to_string(&runs)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        (1..=2).contains(&attempts),
        "{attempts} attempts in 2 s; log:\n{}",
        daemon.log()
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).0, 0);
    assert_eq!(dovecot.message_count("alice"), 3);
}
