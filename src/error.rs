//! Failure classification and the fetchmail-compatible exit codes.

use std::fmt;

/// What went wrong, at the granularity the exit code reports.
///
/// The numeric values are fetchmail's exit codes, so cron scripts written for
/// fetchmail keep working.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The server could not be reached, or TLS could not be established.
    Connection = 2,
    /// The server refused our credentials.
    Auth = 3,
    /// The server said something we cannot make sense of.
    Protocol = 4,
    /// The configuration file is malformed.
    Config = 5,
    /// A file mailfetch trusts is unsafe: the configuration or a secret
    /// file is readable by others, or the configuration, a secret file or
    /// the state directory can be changed by someone else.
    Permissions = 6,
    /// The server reported an error, or did not answer in time.
    Server = 7,
    /// Another mailfetch holds the lock on the state directory.
    Locked = 8,
    /// A message could not be delivered.
    Delivery = 10,
    /// A server's name could not be resolved (DNS). Not fetchmail's: it
    /// counts that as a connection error (2), which hides a typo in the
    /// configuration or a broken resolver behind "the server is down".
    Dns = 11,
    /// mailfetch itself could not work: a file of its own (the state
    /// journal, the lock file) could not be read or written, the runtime
    /// or the signal handlers could not start, or a poll crashed. The
    /// code is fetchmail's for an internal error.
    Local = 23,
}

impl Kind {
    /// A word for logs (`error_kind`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connection => "connection",
            Kind::Auth => "auth",
            Kind::Protocol => "protocol",
            Kind::Config => "config",
            Kind::Permissions => "permissions",
            Kind::Server => "server",
            Kind::Locked => "locked",
            Kind::Delivery => "delivery",
            Kind::Dns => "dns",
            Kind::Local => "local",
        }
    }

    /// The process exit code for this kind of failure.
    pub fn exit_code(self) -> i32 {
        self as i32
    }
}

/// An error with its classification and a message meant for the user.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// Prefixes the message with context, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
