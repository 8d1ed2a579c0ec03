use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::{PasswordSource, Secret};
use crate::error::{Error, Kind};
use crate::oauth::{Freshness, access_token};
use crate::permissions::check_private;

impl PasswordSource {
    /// Fetches the secret, running the command or reading the file if need
    /// be. `account` is the account's name, for error messages.
    ///
    /// * `Command` runs `sh -c COMMAND` with stdin closed. Its stdout minus
    ///   one trailing newline is the secret. A failing command is reported
    ///   with its stderr, never its stdout, which may hold the secret. One
    ///   that runs for more than a minute is killed, with everything it
    ///   started.
    /// * `File` reads the file's first line, and refuses (with
    ///   [`Kind::Permissions`]) a file that group or others may access.
    ///
    /// The secret must be a single, non-empty line: a line break inside it
    /// would end the protocol command that carries it and smuggle whatever
    /// follows to the server as another command.
    pub async fn resolve(&self, account: &str) -> Result<Option<Secret>, Error> {
        match self {
            PasswordSource::None => Ok(None),
            PasswordSource::Inline(secret) => Ok(Some(secret.clone())),
            PasswordSource::Command(command) => {
                run_password_command(account, command, PASSWORD_COMMAND_TIMEOUT)
                    .await
                    .map(Some)
            }
            PasswordSource::File(path) => read_password_file(account, path).await.map(Some),
            PasswordSource::OAuth(oauth) => access_token(oauth, Freshness::Reuse).await.map(Some),
        }
    }
}

/// How long a `password_command` may run. Not the account's `timeout`,
/// which is sized for a server's answers (and may be a few seconds): the
/// command may wait for a human to unlock a key at a pinentry prompt, and a
/// minute is plenty for that, while a command that hangs (a pinentry
/// nobody sees, in daemon mode) holds up its account for no longer.
const PASSWORD_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a `password_command` and returns its output as the secret.
pub(super) async fn run_password_command(
    account: &str,
    command: &str,
    timeout: Duration,
) -> Result<Secret, Error> {
    let failure = |problem: String| {
        Error::new(
            Kind::Config,
            format!("account `{account}`: password_command `{command}`: {problem}"),
        )
    };
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that stopping it also stops what it
        // started (gpg, a pinentry).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| failure(format!("could not be run: {err}")))?;
    let group = child.id().map(|pid| pid as libc::pid_t);
    let output = child.wait_with_output();
    tokio::pin!(output);
    // Declared after `output`, so dropped before it: on a timeout, or if
    // this future is dropped (the poll was cancelled), the group is killed
    // while its leader is not yet reaped and its id cannot have been reused.
    let mut stopper = GroupStopper(group);
    let output = match tokio::time::timeout(timeout, &mut output).await {
        Ok(output) => {
            stopper.0 = None;
            output.map_err(|err| failure(format!("could not be run: {err}")))?
        }
        Err(_) => {
            return Err(failure(format!(
                "timed out after {}s and was stopped; if it waits for a passphrase, \
                 unlock the key before mailfetch needs it (e.g. with gpg-agent)",
                timeout.as_secs_f32()
            )));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        return Err(failure(if stderr.is_empty() {
            format!("failed ({}) without an error message", output.status)
        } else {
            format!("failed ({}): {stderr}", output.status)
        }));
    }
    let stdout = String::from_utf8(output.stdout)
        .map_err(|_| failure("the password it printed is not UTF-8".to_owned()))?;
    let secret = stdout
        .strip_suffix('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .unwrap_or(&stdout);
    check_secret(secret).map_err(|problem| failure(problem.to_owned()))?;
    Ok(Secret::new(secret.to_owned()))
}

/// SIGKILLs a process group when dropped, unless its id was taken away.
struct GroupStopper(Option<libc::pid_t>);

impl Drop for GroupStopper {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // SAFETY: plain syscall on a group of ours (see its use).
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
    }
}

/// Reads the first line of a `password_file` as the secret.
async fn read_password_file(account: &str, path: &Path) -> Result<Secret, Error> {
    let failure = |kind: Kind, problem: String| {
        Error::new(
            kind,
            format!(
                "account `{account}`: password_file {}: {problem}",
                path.display()
            ),
        )
    };
    let io_failure = |err: std::io::Error| failure(Kind::Config, err.to_string());
    let mut file = tokio::fs::File::open(path).await.map_err(io_failure)?;
    let metadata = file.metadata().await.map_err(io_failure)?;
    check_private(path, &metadata, "the password file")
        .map_err(|err| err.context(format!("account `{account}`: password_file")))?;
    let mut contents = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut file, &mut contents)
        .await
        .map_err(io_failure)?;
    let first_line = contents.lines().next().unwrap_or_default();
    check_secret(first_line).map_err(|problem| failure(Kind::Config, problem.to_owned()))?;
    Ok(Secret::new(first_line.to_owned()))
}

/// Checks that `secret` can be sent in a protocol command: non-empty and a
/// single line. The problem described never includes the secret.
pub(super) fn check_secret(secret: &str) -> Result<(), &'static str> {
    if secret.is_empty() {
        Err("the password is empty")
    } else if secret.contains(['\r', '\n', '\0']) {
        Err(
            "the password contains a line break or NUL byte, but must be a single line \
             (to keep only the first line of a command's output, append `| head -n 1`)",
        )
    } else {
        Ok(())
    }
}
