//! `mailfetch import`: another fetcher's configuration, and optionally its
//! memory of what it already fetched, turned into mailfetch's.
//!
//! Each peer has a reader that turns its rc file into [`Import`]: accounts
//! in mailfetch's terms plus a [`Note`] (file, line, what to do) for every
//! setting that does not carry over or that mailfetch deliberately does
//! differently (stricter TLS, say). [`Import::to_toml`] writes the config,
//! which [`Import::check`] runs through the real config parser before
//! anything is written, so an import never produces a file
//! `--check-config` refuses.
//!
//! With `--state`, [`state::import`] reads the peer's record of delivered
//! messages (fetchmail's `.fetchids`, getmail's `oldmail-*`, mpop's UIDL
//! files) and journals those ids as delivered for the matching mailfetch
//! mailbox, so that a first poll in keep mode fetches only what the old
//! tool never did.

pub mod command;
pub mod fetchmail;
pub mod getmail;
pub mod mpop;
pub mod netrc;
pub mod state;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{self, Config};
use crate::error::{Error, Kind};

/// Which tool a config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Fetchmail,
    Getmail,
    Mpop,
}

/// Something the user should know about one line of the old config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub file: PathBuf,
    /// 1-based; 0 when the note is about the file as a whole.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

/// The result of reading an old config.
#[derive(Debug, Default, Serialize)]
pub struct Import {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub general: Option<General>,
    pub account: Vec<Account>,
    #[serde(skip)]
    pub notes: Vec<Note>,
}

/// `[general]` keys an import can set.
#[derive(Debug, Default, Serialize)]
pub struct General {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
}

/// One `[[account]]`, as it will be written. Fields are in the order of
/// `fetchrc.example`, which is the order they are written in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Account {
    pub name: String,
    pub protocol: &'static str,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub tls: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext_auth: bool,
    pub keep: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folders: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_poll: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
    pub deliver: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Where the old tool kept its memory of this account, for `--state`.
    #[serde(skip)]
    pub old_state: Option<state::OldState>,
    /// Where the account was defined, for notes about it.
    #[serde(skip)]
    pub origin: (PathBuf, usize),
}

impl Account {
    /// The port mailfetch will connect to (the written one, or the default
    /// for the protocol and TLS mode, as the config parser fills it in).
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(match (self.protocol, self.tls) {
            ("pop3", "implicit") => 995,
            ("pop3", _) => 110,
            (_, "implicit") => 993,
            _ => 143,
        })
    }
}

/// The tls value for an old tool that fell back to plain text when the
/// server did not offer STARTTLS.
pub const STARTTLS_REQUIRED_NOTE: &str = "the old config used STARTTLS only if the server offered it; \
     mailfetch requires it (tls = \"starttls\"), so an attacker cannot strip it: \
     set tls = \"none\" only for a server that has no TLS at all";

/// What an account without any password source gets: a command that fails
/// with a message saying what to do, so the config is complete and
/// `--check-config` passes, but no poll runs with a guessed secret.
pub fn missing_password_command(account: &str) -> String {
    format!(
        "echo 'mailfetch: no password was imported for account {account}: set password_file or password_command' >&2; exit 1"
    )
}

impl Import {
    pub fn note(&mut self, file: &Path, line: usize, message: impl Into<String>) {
        self.notes.push(Note {
            file: file.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// Makes account names unique and valid (letters, digits, `.`, `_`,
    /// `-`), as the config requires.
    pub fn settle_names(&mut self) {
        let mut taken: Vec<String> = Vec::new();
        for account in &mut self.account {
            let mut base: String = account
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            if base.is_empty() {
                base = "account".to_owned();
            }
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base}-{n}");
                n += 1;
            }
            taken.push(name.clone());
            account.name = name;
        }
    }

    /// Whether the written config will hold a secret (and so must be
    /// private).
    pub fn holds_secrets(&self) -> bool {
        self.account
            .iter()
            .any(|account| account.password.is_some())
    }

    /// The config as TOML, with a header saying where it came from.
    pub fn to_toml(&self, from: &Path) -> String {
        let body = toml::to_string(self).expect("an import serializes to TOML");
        format!(
            "# Imported by `mailfetch import` from {}.\n# Check it with `mailfetch --check-config`.\n\n{body}",
            from.display()
        )
    }

    /// Runs the config that [`to_toml`](Self::to_toml) writes through the
    /// real parser: an import that mailfetch would refuse is a bug here,
    /// reported before anything is written.
    pub fn check(&self, from: &Path, output: &Path) -> Result<Config, Error> {
        if self.account.is_empty() {
            return Err(Error::new(
                Kind::Config,
                format!("{}: no account found to import", from.display()),
            ));
        }
        config::parse(output, &self.to_toml(from))
    }
}

/// Reads `path` for `peer`; `home` is where `~` points (for `.netrc`, the
/// default state files and paths in the old config).
pub fn read(peer: Peer, path: &Path, home: &Path) -> Result<Import, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::new(Kind::Config, format!("{}: {err}", path.display())))?;
    let mut import = match peer {
        Peer::Fetchmail => fetchmail::read(path, &text, home)?,
        Peer::Getmail => getmail::read(path, &text, home)?,
        Peer::Mpop => mpop::read(path, &text, home)?,
    };
    import.settle_names();
    Ok(import)
}

/// Expands a leading `~` or `~/` of an old config's path against `home`.
pub fn expand_tilde(path: &str, home: &Path) -> String {
    if path == "~" {
        home.display().to_string()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest).display().to_string()
    } else {
        path.to_owned()
    }
}

/// The `deliver` value for an MDA command line that the old tool ran
/// through a shell, as fetchmail and mpop do: mailfetch runs commands
/// without one, so a command that needs it gets an explicit `sh -c`.
pub fn mda_through_shell(command: &str) -> String {
    if command.contains(|c: char| "|&;<>$`*?(){}~".contains(c)) {
        format!("mda:/bin/sh -c '{}'", command.replace('\'', "'\\''"))
    } else {
        format!("mda:{command}")
    }
}

/// A duration in seconds as mailfetch writes it.
pub fn seconds(value: u64) -> String {
    format!("{value}s")
}

/// Whether `host` is this machine (where a plaintext password is harmless).
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
