//! `mailfetch import … --state` against the real peers: fetchmail, getmail6
//! and mpop (from Debian) each poll a private Dovecot in keep mode; their
//! rc file and state are imported; two new messages arrive; mailfetch's
//! first poll must fetch exactly those two.
//!
//! The peers run as an ordinary user (`nobody` when the tests run as
//! root: getmail refuses root, fetchmail warns), in a home of their own.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::dovecot::Dovecot;
use testkit::require_program;
use testkit::run::{mailfetch_binary, sample_message};

const PASSWORD: &str = "s3cret-Pa55";
const PEERS_HINT: &str = "apt-get install fetchmail getmail6 mpop";

/// A Dovecot with alice's three old messages, a home for the peer and a
/// Maildir both the peer and mailfetch deliver into.
struct Setup {
    dovecot: Dovecot,
    _dir: tempfile::TempDir,
    home: PathBuf,
    maildir: PathBuf,
    state: PathBuf,
    config: PathBuf,
    /// Who the peer runs as: `None` for ourselves.
    peer_user: Option<(u32, u32)>,
}

impl Setup {
    fn start() -> Option<Setup> {
        let dovecot = Dovecot::start()?;
        dovecot.add_user("alice", PASSWORD);
        for n in 1..=3 {
            dovecot.add_message("alice", &sample_message(n));
        }
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.path().join("home");
        let maildir = home.join("Maildir");
        for sub in ["", "cur", "new", "tmp"] {
            fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        // SAFETY: geteuid cannot fail.
        let peer_user = (unsafe { libc::geteuid() } == 0).then_some((65534, 65534));
        let setup = Setup {
            dovecot,
            home,
            maildir,
            state: dir.path().join("state"),
            config: dir.path().join("fetchrc"),
            _dir: dir,
            peer_user,
        };
        setup.give_to_peer(&setup.home);
        Some(setup)
    }

    /// Makes `path` (and what is below it) the peer's.
    fn give_to_peer(&self, path: &Path) {
        let Some((uid, gid)) = self.peer_user else {
            return;
        };
        chown(path, Some(uid), Some(gid)).unwrap();
        if path.is_dir() {
            for entry in fs::read_dir(path).unwrap() {
                self.give_to_peer(&entry.unwrap().path());
            }
        }
    }

    /// Writes a private file for the peer.
    fn peer_file(&self, path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        self.give_to_peer(&self.home);
    }

    /// Runs the peer as its user, in its home; returns its output.
    fn run_peer(&self, program: &Path, args: &[&str]) -> Output {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("HOME", &self.home)
            .env("FETCHMAILHOME", &self.home)
            .current_dir(&self.home);
        if let Some((uid, gid)) = self.peer_user {
            // std drops the supplementary groups when root sets a uid.
            command.uid(uid).gid(gid);
        }
        command.output().unwrap()
    }

    /// `mailfetch import KIND RC --output fetchrc --state`, as ourselves.
    fn import(&self, kind: &str, rc: &Path) -> Output {
        let output = Command::new(mailfetch_binary())
            .args(["import", kind])
            .arg(rc)
            .arg("--output")
            .arg(&self.config)
            .arg("--state")
            .env("HOME", &self.home)
            .env("XDG_STATE_HOME", &self.state)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "import failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn poll(&self) -> Output {
        Command::new(mailfetch_binary())
            .arg("-c")
            .arg(&self.config)
            .env("HOME", &self.home)
            .env("XDG_STATE_HOME", &self.state)
            .output()
            .unwrap()
    }

    /// How many delivered messages (in the Maildir, or beside it for the
    /// fetchmail MDA) carry each test message's subject.
    fn copies(&self, dirs: &[&Path]) -> Vec<usize> {
        let mut texts = Vec::new();
        for dir in dirs {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    texts.push(fs::read_to_string(path).unwrap());
                }
            }
        }
        (1..=5)
            .map(|n| {
                let subject = format!("Subject: test message {n}\n");
                texts.iter().filter(|text| text.contains(&subject)).count()
            })
            .collect()
    }

    /// The end of every test: two new messages arrive, mailfetch polls,
    /// and each of the five is delivered exactly once overall.
    fn new_mail_then_poll(&self, delivered: &[&Path], import: &Output) {
        assert_eq!(
            self.copies(delivered),
            [1, 1, 1, 0, 0],
            "the peer's own poll"
        );
        for n in 4..=5 {
            self.dovecot.add_message("alice", &sample_message(n));
        }
        let poll = self.poll();
        assert_eq!(
            poll.status.code(),
            Some(0),
            "poll failed:\n{}\nimport said:\n{}",
            String::from_utf8_lossy(&poll.stderr),
            String::from_utf8_lossy(&import.stderr)
        );
        assert_eq!(
            self.copies(delivered),
            [1, 1, 1, 1, 1],
            "mailfetch fetched again what the peer had fetched, or missed new mail; import said:\n{}",
            String::from_utf8_lossy(&import.stderr)
        );
        assert_eq!(self.dovecot.message_count("alice"), 5, "keep mode");
    }
}

/// fetchmail in keep mode: POP3 state is its `.fetchids`; for IMAP it
/// keeps none and relies on `\Seen`, which the import turns into
/// fetch = "unseen".
fn fetchmail_state_carries_over(proto: &str, port_of: fn(&Dovecot) -> u16, expected_note: &str) {
    let Some(fetchmail) = require_program("fetchmail", PEERS_HINT) else {
        return;
    };
    let Some(setup) = Setup::start() else { return };
    let spool = setup.home.join("spool");
    fs::create_dir(&spool).unwrap();
    let rc = setup.home.join(".fetchmailrc");
    setup.peer_file(
        &rc,
        &format!(
            "poll localhost proto {proto} port {port}\n  \
             user \"alice\" there with password \"{PASSWORD}\" is alice here\n  \
             options ssl sslcertck sslcertfile \"{ca}\" keep\n  \
             mda \"cat > {spool}/fetchmail.$$\"\n",
            port = port_of(&setup.dovecot),
            ca = setup.dovecot.ca_file().display(),
            spool = spool.display(),
        ),
    );
    let run = setup.run_peer(&fetchmail, &["-f", rc.to_str().unwrap(), "--nosyslog"]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "fetchmail: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let import = setup.import("fetchmailrc", &rc);
    let notes = String::from_utf8_lossy(&import.stderr);
    assert!(notes.contains(expected_note), "{notes}");
    setup.new_mail_then_poll(&[&spool], &import);
}

#[test]
fn fetchmail_pop3_state_carries_over() {
    fetchmail_state_carries_over(
        "pop3",
        Dovecot::pop3s_port,
        "3 messages recorded as already fetched",
    );
}

#[test]
fn fetchmail_imap_seen_flags_carry_over() {
    fetchmail_state_carries_over("imap", Dovecot::imaps_port, "fetch = \"unseen\"");
}

fn getmail_state_carries_over(retriever: &str, port_of: fn(&Dovecot) -> u16, extra: &str) {
    let Some(getmail) = require_program("getmail", PEERS_HINT) else {
        return;
    };
    let Some(setup) = Setup::start() else { return };
    let port = port_of(&setup.dovecot);
    let getmaildir = setup.home.join(".getmail");
    let rc = getmaildir.join("getmailrc");
    setup.peer_file(
        &rc,
        &format!(
            "[retriever]\ntype = {retriever}\nserver = localhost\nport = {port}\n\
             username = alice\npassword = {PASSWORD}\nca_certs = {ca}\n{extra}\n\
             [destination]\ntype = Maildir\npath = {maildir}/\n\n\
             [options]\nread_all = false\ndelete = false\n",
            ca = setup.dovecot.ca_file().display(),
            maildir = setup.maildir.display(),
        ),
    );
    let run = setup.run_peer(
        &getmail,
        &[
            "--getmaildir",
            getmaildir.to_str().unwrap(),
            "--rcfile",
            "getmailrc",
        ],
    );
    assert!(
        run.status.success(),
        "getmail: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let import = setup.import("getmailrc", &rc);
    let notes = String::from_utf8_lossy(&import.stderr);
    assert!(notes.contains("3 messages"), "{notes}");
    let new = setup.maildir.join("new");
    let cur = setup.maildir.join("cur");
    setup.new_mail_then_poll(&[&new, &cur], &import);
}

#[test]
fn getmail_pop3_state_carries_over() {
    getmail_state_carries_over("SimplePOP3SSLRetriever", Dovecot::pop3s_port, "");
}

#[test]
fn getmail_imap_state_carries_over_with_its_uidvalidity() {
    getmail_state_carries_over(
        "SimpleIMAPSSLRetriever",
        Dovecot::imaps_port,
        "mailboxes = (\"INBOX\",)\n",
    );
}

#[test]
fn mpop_state_carries_over() {
    let Some(mpop) = require_program("mpop", PEERS_HINT) else {
        return;
    };
    let Some(setup) = Setup::start() else { return };
    let rc = setup.home.join(".mpoprc");
    fs::create_dir_all(setup.home.join(".mpop_uidls")).unwrap();
    setup.peer_file(
        &rc,
        &format!(
            "defaults\ntls on\ntls_starttls off\ntls_trust_file {ca}\nkeep on\n\n\
             account test\nhost localhost\nport {port}\nuser alice\npassword {PASSWORD}\n\
             delivery maildir {maildir}\n",
            ca = setup.dovecot.ca_file().display(),
            port = setup.dovecot.pop3s_port(),
            maildir = setup.maildir.display(),
        ),
    );
    let run = setup.run_peer(&mpop, &["-C", rc.to_str().unwrap(), "test"]);
    assert!(
        run.status.success(),
        "mpop: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let import = setup.import("mpoprc", &rc);
    let notes = String::from_utf8_lossy(&import.stderr);
    assert!(
        notes.contains("3 messages recorded as already fetched"),
        "{notes}"
    );
    let new = setup.maildir.join("new");
    let cur = setup.maildir.join("cur");
    setup.new_mail_then_poll(&[&new, &cur], &import);
}

/// kill -9 at any moment of a state import (one takes ~0.4 s here: the
/// kills land from start-up to the journal write) leaves a state mailfetch can
/// open that names only ids the old tool had (a torn last record is
/// dropped), and running the import again completes it: the worst a kill
/// costs is messages fetched again, never one skipped that was not fetched.
#[test]
fn a_state_import_killed_at_any_moment_is_completed_by_running_it_again() {
    use mailfetch::state::{MailboxState, mailbox_key};
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    let state = dir.path().join("state");
    let rc = home.join(".fetchmailrc");
    fs::write(
        &rc,
        "poll localhost proto pop3 user alice password secret ssl keep mda \"cat\"\n",
    )
    .unwrap();
    fs::set_permissions(&rc, fs::Permissions::from_mode(0o600)).unwrap();
    const IDS: usize = 200_000;
    let ids: String = (0..IDS)
        .map(|n| format!("alice@localhost {n:08x}-uidl\n"))
        .collect();
    fs::write(home.join(".fetchids"), ids).unwrap();
    let import = |output: &str| {
        Command::new(mailfetch_binary())
            .args(["import", "fetchmailrc"])
            .arg(&rc)
            .arg("--state")
            .arg("--output")
            .arg(dir.path().join(output))
            .env("HOME", &home)
            .env("XDG_STATE_HOME", &state)
            .spawn()
            .unwrap()
    };
    let state_dir = state.join("mailfetch");
    let recorded = || {
        let config = mailfetch::config::parse(
            Path::new("fetchrc"),
            &fs::read_to_string(dir.path().join("final")).unwrap(),
        )
        .unwrap();
        let key = mailbox_key(&config.accounts[0], "INBOX");
        MailboxState::open(&state_dir, &key).unwrap()
    };
    for (round, delay) in [2u64, 50, 150, 250, 300, 350, 400].into_iter().enumerate() {
        let mut child = import(&format!("killed-{round}"));
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        child.wait().unwrap();
    }
    assert!(import("final").wait().unwrap().success());
    let state = recorded();
    assert_eq!(state.len(), IDS);
    assert!(
        state.is_delivered("00000000-uidl") && state.is_delivered(&format!("{:08x}-uidl", IDS - 1))
    );
    // Once more: nothing new, nothing lost.
    fs::remove_file(dir.path().join("final")).unwrap();
    assert!(import("final").wait().unwrap().success());
    assert_eq!(recorded().len(), IDS);
}
