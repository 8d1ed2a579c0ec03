//! Running the `mailfetch` binary: the one way the tests (and the demo and
//! the benchmark) start it, find it, and measure a run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `mailfetch` binary: `$MAILFETCH`, or the one cargo built into the
/// profile directory of the running program (an integration test in
/// `target/release/deps/`, an example in `target/release/examples/`, the
/// benchmark in `target/release/`). A library cannot use
/// `env!("CARGO_BIN_EXE_mailfetch")`: cargo sets it for integration tests only.
pub fn mailfetch_binary() -> PathBuf {
    find_mailfetch().unwrap_or_else(|e| panic!("{e}"))
}

/// [`mailfetch_binary`], or why it is not there.
pub fn find_mailfetch() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MAILFETCH") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("mailfetch"))
        .collect();
    candidates
        .iter()
        .find(|bin| bin.is_file())
        .cloned()
        .ok_or_else(|| {
            format!("mailfetch not found in {candidates:?}: build it first (cargo build --release)")
        })
}

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
        let output = Command::new(mailfetch_binary())
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
