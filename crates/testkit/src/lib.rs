//! What mailfetch's integration tests, its demo and its benchmark share:
//! fake POP3, IMAP and SMTP servers on one harness ([`fake_server`]),
//! private Dovecot and Postfix instances ([`dovecot`], [`postfix`]), and
//! the one way to run the `mailfetch` binary ([`run`]).
pub mod dovecot;
pub mod fake_imap;
pub mod fake_pop3;
pub mod fake_server;
pub mod fake_smtp;
pub mod postfix;
pub mod run;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

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
