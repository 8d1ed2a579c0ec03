//! Running the `mailfetch` binary: the one way the tests (and the demo and
//! the benchmark) start it, find it, and measure a run.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single mailfetch run may take before the test fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The `mailfetch` binary the tests run: the one cargo built into the
/// profile directory of the running test (`target/release/deps/..`). A
/// library cannot use `env!("CARGO_BIN_EXE_mailfetch")`: cargo sets it
/// for integration tests only.
pub fn mailfetch_binary() -> PathBuf {
    built_mailfetch().unwrap_or_else(|e| panic!("{e}"))
}

/// The `mailfetch` binary for the demo and the benchmark: `$MAILFETCH`, or
/// the one cargo built next to them (`target/release/examples/..`,
/// `target/release/`).
pub fn find_mailfetch() -> Result<PathBuf, String> {
    match std::env::var_os("MAILFETCH") {
        Some(p) => Ok(PathBuf::from(p)),
        None => built_mailfetch(),
    }
}

/// `mailfetch` in the directory of the running program or its parent.
fn built_mailfetch() -> Result<PathBuf, String> {
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

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
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

/// One account in a scratch dir, as the fault tests write it: a fake server
/// on loopback without TLS, user `alice`, delivering into the scratch
/// Maildir. Each test file adds what it reads from a case (an extension
/// trait), since what "delivered" means differs by protocol.
pub struct Case {
    pub scratch: Scratch,
    settings: Vec<(&'static str, String)>,
}

impl Case {
    pub fn account(protocol: &str, port: u16, password: &str, timeout: &str) -> Case {
        let scratch = Scratch::new();
        let maildir = scratch.maildir();
        let settings = vec![
            ("name", "\"fake\"".to_owned()),
            ("protocol", format!("\"{protocol}\"")),
            ("host", "\"127.0.0.1\"".to_owned()),
            ("port", port.to_string()),
            ("tls", "\"none\"".to_owned()),
            ("username", "\"alice\"".to_owned()),
            ("password", format!("\"{password}\"")),
            ("auth", "\"user\"".to_owned()),
            ("keep", "false".to_owned()),
            ("timeout", format!("\"{timeout}\"")),
            ("deliver", format!("\"maildir:{}\"", maildir.display())),
        ];
        Case { scratch, settings }
    }

    /// Sets an account key to a TOML value.
    pub fn set(mut self, key: &'static str, value: &str) -> Case {
        match self.settings.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.settings.push((key, value.to_owned())),
        }
        self
    }

    pub fn maildir(&self) -> PathBuf {
        self.scratch.maildir()
    }

    /// Writes the config; returns its path.
    pub fn config(&self) -> PathBuf {
        let mut account = "[[account]]\n".to_owned();
        for (key, value) in &self.settings {
            account.push_str(&format!("{key} = {value}\n"));
        }
        self.scratch.write_config(&account)
    }

    /// Starts mailfetch on the config, output piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        spawn_mailfetch(&self.config(), args)
    }

    /// Runs mailfetch to the end (at most [`RUN_LIMIT`]).
    pub fn run_with(&self, args: &[&str]) -> Outcome {
        measure(self.spawn(args), RUN_LIMIT)
    }

    pub fn run(&self) -> Outcome {
        self.run_with(&[])
    }
}

/// Starts mailfetch on `config` with `args`, stdin empty, stdout and
/// stderr piped (for [`measure`]).
pub fn spawn_mailfetch(config: &Path, args: &[&str]) -> Child {
    let mut command = Command::new(mailfetch_binary());
    command
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A pre_exec hook makes std fork and exec instead of posix_spawn, for
    // the child's peak memory (see [`Outcome::max_rss_kib`]).
    // SAFETY: the hook does nothing, so it is async-signal-safe.
    unsafe { command.pre_exec(|| Ok(())) };
    command.spawn().unwrap()
}

/// What a measured run of mailfetch did.
pub struct Outcome {
    /// `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The peak resident set size of the mailfetch process, in KiB. A
    /// child starts with the size of the memory it had before its exec:
    /// posix_spawn would make that the peak of this process, which, with
    /// every integration test in one binary, has held 100 MiB messages;
    /// after a fork it is this process's current size, so the figure is
    /// mailfetch's own as long as this process is smaller at the spawn.
    pub max_rss_kib: i64,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:.1} s ({} KiB max RSS)\n--- stdout\n{}--- stderr\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            self.max_rss_kib,
            self.stdout,
            self.stderr
        )
    }
}

/// Waits for a child from [`spawn_mailfetch`], collecting its output, its
/// exit code and its peak memory (wait4's rusage); kills it and fails the
/// test after `limit`.
// The child is reaped by wait4 (clippy only knows Child::wait).
#[allow(clippy::zombie_processes)]
pub fn measure(mut child: Child, limit: Duration) -> Outcome {
    let started = Instant::now();
    let pipe = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().unwrap()));
    let stderr = pipe(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 only writes into it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own unreaped child; the pointers are valid.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", io::Error::last_os_error());
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
        thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        elapsed: started.elapsed(),
        max_rss_kib: usage.ru_maxrss,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
