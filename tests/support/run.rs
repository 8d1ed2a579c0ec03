//! Running the `mailfetch` binary from integration tests.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with a config file, a state directory and a Maildir.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn maildir(&self) -> PathBuf {
        self.path().join("Maildir")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("fetchrc")
    }

    /// Writes a config (mode 0600) with a `[general]` section pointing into
    /// the scratch dir and the given `[[account]]` tables.
    pub fn write_config(&self, accounts: &str) -> PathBuf {
        self.write_config_with(accounts, "")
    }

    /// Like [`Scratch::write_config`], with extra `[general]` keys.
    pub fn write_config_with(&self, accounts: &str, general: &str) -> PathBuf {
        let text = format!(
            "[general]\nstate_dir = \"{}\"\n{general}\n\n{accounts}",
            self.path().join("state").display()
        );
        let path = self.config_path();
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Runs mailfetch on the scratch config with extra arguments.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_mailfetch"))
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .output()
            .unwrap();
        Run::from(output)
    }

    /// Contents of the delivered messages (`new/` and `cur/`), sorted.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let mut messages: Vec<Vec<u8>> = ["new", "cur"]
            .iter()
            .flat_map(|sub| files_in(&self.maildir().join(sub)))
            .map(|path| fs::read(path).unwrap())
            .collect();
        messages.sort();
        messages
    }

    /// Files left in `tmp/`.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        files_in(&self.maildir().join("tmp"))
    }
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// What a run of mailfetch did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output if it differs.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Strips the `Received:` header mailfetch prepends (its first three
/// lines, folded) so a delivered message can be compared with the original.
pub fn without_received(message: &[u8]) -> &[u8] {
    assert!(
        message.starts_with(b"Received: from "),
        "no Received header"
    );
    let mut rest = message;
    // The header is one line plus its continuation lines (starting with a tab).
    loop {
        let end = rest.iter().position(|&b| b == b'\n').unwrap() + 1;
        rest = &rest[end..];
        if !rest.starts_with(b"\t") {
            return rest;
        }
    }
}

/// A small test message with LF line ends.
pub fn sample_message(n: usize) -> Vec<u8> {
    format!(
        "From: Sender {n} <sender{n}@example.org>\nTo: alice@example.com\nSubject: test message {n}\nMessage-ID: <{n}@example.org>\n\nBody of message {n}.\n.A line starting with a dot\n..two dots\n.\nThe end.\n"
    )
    .into_bytes()
}

/// What a measured run of mailfetch did.
pub struct Measured {
    /// `None` if killed by a signal.
    pub code: Option<i32>,
    pub stderr: String,
    pub elapsed: std::time::Duration,
    /// The peak resident set size of the mailfetch process, in KiB.
    pub max_rss_kib: i64,
}

impl std::fmt::Debug for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:.1} s ({} KiB max RSS)\n--- stderr\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            self.max_rss_kib,
            self.stderr
        )
    }
}

/// Runs mailfetch on `config` and measures its own peak memory (wait4's
/// rusage of the child), killing it after `limit`.
// The child is reaped by wait4 (clippy only knows Child::wait).
#[allow(clippy::zombie_processes)]
pub fn run_measured(config: &Path, limit: std::time::Duration) -> Measured {
    use std::io::Read;
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailfetch"))
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let pid = child.id() as libc::pid_t;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 only writes into it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own unreaped child; the pointers are valid.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            break (status, usage);
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "mailfetch ran for more than {limit:?}:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        elapsed: started.elapsed(),
        max_rss_kib: usage.ru_maxrss,
        stderr: stderr.join().unwrap(),
    }
}
