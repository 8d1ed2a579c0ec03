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
