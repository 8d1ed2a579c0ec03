//! What the Dovecot and Postfix harnesses need from the machine: finding
//! a program, running openssl, a fresh directory, the rule that a missing
//! server skips a test except in CI, and retrying a start that lost its
//! ports to another process.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Looks for a program on PATH and in the sbin directories (which an
/// unprivileged user's PATH often lacks).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A program the tests drive (a peer such as fetchmail): its path, or
/// `None` after a loud SKIPPED banner, and a panic under CI.
pub fn require_program(name: &str, install_hint: &str) -> Option<PathBuf> {
    let found = find_binary(name);
    if found.is_none() {
        skip_unless_ci(&format!("{name} not installed — {install_hint}"), name);
    }
    found
}

/// Without `problem` solved the `tests` cannot run: in CI (`CI` set) they
/// must, so this panics; elsewhere it prints a loud SKIPPED banner and the
/// caller returns `None`.
pub(crate) fn skip_unless_ci(problem: &str, tests: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{problem}; the {tests} tests are mandatory in CI (CI is set)");
    }
    eprintln!();
    eprintln!("**********************************************************************");
    eprintln!("*** SKIPPED: {problem}");
    eprintln!("**********************************************************************");
    eprintln!();
}

/// Starts a server with `try_start` up to three times. Its ports are
/// picked by binding to port 0 and released before the server binds them,
/// so another process may grab one in between.
pub(crate) fn start_with_retries<T>(
    what: &str,
    mut try_start: impl FnMut() -> Result<T, String>,
) -> T {
    let mut last_err = String::new();
    for _ in 0..3 {
        match try_start() {
            Ok(server) => return server,
            Err(e) => last_err = e,
        }
    }
    panic!("could not start a private {what}: {last_err}");
}

/// A new directory `PREFIX…` inside `parent`, or in the system temp dir.
pub(crate) fn fresh_dir(prefix: &str, parent: Option<&Path>) -> Result<tempfile::TempDir, String> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    match parent {
        Some(p) => builder.tempdir_in(p),
        None => builder.tempdir(),
    }
    .map_err(|e| format!("creating temp dir: {e}"))
}

/// Runs openssl in `dir`; returns what it printed.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Result<String, String> {
    let openssl = find_binary("openssl").ok_or("openssl CLI not found")?;
    let out = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The SHA-256 fingerprint of the certificate `dir/cert`, in mailfetch's
/// `fingerprint` syntax (`sha256:AA:BB:…`).
pub(crate) fn fingerprint(dir: &Path, cert: &str) -> Result<String, String> {
    let fp = openssl(
        dir,
        &["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
    )?;
    let hex = fp
        .trim()
        .rsplit('=')
        .next()
        .ok_or_else(|| format!("odd openssl fingerprint output {fp:?}"))?
        .to_ascii_uppercase();
    Ok(format!("sha256:{hex}"))
}
