//! The configuration file: TOML, validated up front, with errors that name
//! the file, the line and the key.
//!
//! Loading happens in two layers:
//!
//! 1. Serde deserializes the text into *raw* structs that deny unknown keys
//!    and hold every value as an optional [`Spanned`](toml::Spanned) [`toml::Value`]. So
//!    this step only fails on TOML syntax errors and unknown keys, and the
//!    byte span of every value survives.
//! 2. A `Parser` then checks types, fills in defaults and validates, one
//!    key at a time. Because it always knows which key it is looking at and
//!    where that key's value is, every error can say
//!    `FILE:LINE: key `KEY`: what is wrong`.
//!
//! Paths (`state_dir`, `ca_file`, `password_file` and the path of a
//! `maildir:` or `mbox:` target) get shell-like expansion: a leading `~` or `~/` means
//! `$HOME`, `$VAR` and `${VAR}` are replaced by the environment variable and
//! `$$` is a literal `$`. A variable that is not set is an error rather than
//! an empty string, because a silently wrong path would send mail somewhere
//! unexpected. A path that is still relative after expansion stays relative,
//! i.e. it is used relative to the current directory (not to the directory
//! of the configuration file).
//!
//! The module is cut by job: [`keys`] (the table of every key), `raw` (what
//! serde reads), `parse` (the `Parser`: general and account sections),
//! `deliver` (`deliver` and `[account.delivery]`, one scheme at a time),
//! `rules` (checks that tie several keys together), `values` (value
//! parsers), `secrets` (resolving passwords at run time) and `display` (the
//! `--check-config` writer).
//!
//! # Adding a key
//!
//! 1. [`keys::KEYS`]: one line with its name, section, what it applies to
//!    (a protocol or delivery destination restriction needs nothing else:
//!    the checks read it from there) and one line of doc.
//! 2. `raw.rs`: its name in its section's struct (a test fails until the
//!    table and the raw structs agree).
//! 3. This file: the field on the parsed type (`Account`, `General`,
//!    `Endpoint`, …).
//! 4. `parse.rs` (or `deliver.rs` for `[account.delivery]`): read it with a
//!    converter from `values.rs`, and any rule it takes part in in
//!    `rules.rs`.
//! 5. `display.rs`: write it back for `--check-config`.
//! 6. `fetchrc.example`: document it (a test fails otherwise).

mod deliver;
mod display;
pub mod keys;
mod oauth;
mod parse;
mod raw;
mod rules;
mod secrets;
mod values;

#[cfg(test)]
mod tests;

use std::env::{self, VarError};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::address::Sender;
use crate::cmdline::CommandLine;
use crate::error::{Error, Kind};
pub use crate::fingerprint::Fingerprint;
use crate::oauth::OAuth;
use crate::permissions::{check_directory_of, check_unwritable_by_others};

use self::parse::Parser;

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    pub general: General,
    pub accounts: Vec<Account>,
}

#[derive(Debug, Clone)]
pub struct General {
    /// Where per-account state and the lock file live.
    /// Default `$XDG_STATE_HOME/mailfetch`, else `~/.local/state/mailfetch`.
    pub state_dir: PathBuf,
    /// Daemon mode: how often an account without its own `interval` is
    /// polled. Default 5 minutes.
    pub poll_interval: Duration,
    /// At most this many polls run at once (one-shot and daemon mode).
    /// Connections idling in IMAP IDLE do not count. Default 8.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Pop3,
    Imap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (POP3S on port 995, IMAPS on port 993).
    Implicit,
    /// Plain connection upgraded with STLS (POP3) or STARTTLS (IMAP), which
    /// must succeed.
    StartTls,
    /// No encryption at all.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Auto,
    /// The protocol's own plain login: USER/PASS in POP3, LOGIN in IMAP.
    /// Either sends the password as is.
    User,
    /// POP3 only.
    Apop,
    Plain,
    Login,
    CramMd5,
    XOAuth2,
    OAuthBearer,
    ScramSha256,
}

impl AuthMethod {
    /// Whether the method puts the password (or a bearer token) on the wire
    /// as it is. `Auto` is left to the protocol, which then must choose a
    /// method that does not on an unencrypted link.
    fn reveals_password(self) -> bool {
        matches!(
            self,
            AuthMethod::User
                | AuthMethod::Plain
                | AuthMethod::Login
                | AuthMethod::XOAuth2
                | AuthMethod::OAuthBearer
        )
    }
}

/// A secret string. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// An OAuth2 access token rather than a password: `auth = "auto"`
    /// then picks a bearer-token mechanism.
    bearer_token: bool,
}

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret {
            value,
            bearer_token: false,
        }
    }
    /// An OAuth2 access token.
    pub fn bearer_token(value: String) -> Secret {
        Secret {
            value,
            bearer_token: true,
        }
    }
    /// The secret itself; call only where it is sent to a server.
    pub fn expose(&self) -> &str {
        &self.value
    }
    pub fn is_bearer_token(&self) -> bool {
        self.bearer_token
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Where an account's password (or OAuth2 access token) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// No password configured.
    None,
    /// `password = "…"` in the config file.
    Inline(Secret),
    /// `password_command = "…"`: run through `sh -c`, the secret is its
    /// stdout with one trailing newline removed.
    Command(String),
    /// `password_file = "…"`: the file's first line.
    File(PathBuf),
    /// `[account.oauth]`: an access token, kept fresh by [`crate::oauth`].
    OAuth(Box<OAuth>),
}

/// Which messages of an IMAP folder a poll fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchMode {
    /// Every message mailfetch has not delivered before, whatever its flags:
    /// another client reading a message must not hide it from mailfetch.
    New,
    /// Messages without `\Seen` that mailfetch has not delivered before.
    Unseen,
    /// Every message in the folder, at every poll, even those delivered
    /// before: for one-off copies, or with `keep = false`.
    All,
}

/// Where fetched mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverTarget {
    /// `maildir:PATH`
    Maildir(PathBuf),
    /// `mbox:PATH`: one file in the mboxrd format.
    Mbox(MboxTarget),
    /// `smtp://HOST[:PORT]`, `smtps://HOST[:PORT]`, `lmtp:/PATH/TO/SOCKET`
    /// or `lmtp://HOST[:PORT]`: an MTA or an LMTP server.
    Mta(MtaTarget),
    /// `mda:COMMAND ARGS…`: a command that gets each message on stdin.
    Mda(MdaTarget),
    /// `imap://[USER@]HOST[:PORT]/FOLDER` or `imaps://…`: IMAP APPEND.
    Imap(ImapTarget),
}

/// SMTP or LMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtaProtocol {
    Smtp,
    Lmtp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaTarget {
    pub protocol: MtaProtocol,
    /// LMTP over this Unix domain socket (e.g. `/run/dovecot/lmtp`) instead
    /// of TCP to `server.host` and `server.port`; `server.host` is then
    /// `localhost`, the name the session greets with.
    pub socket: Option<PathBuf>,
    /// Where it listens over TCP, TLS, login and timeout (from the
    /// account's `[account.delivery]`).
    pub server: Endpoint,
}

/// A server mailfetch connects and may log in to: an account's own server,
/// or the SMTP, LMTP or IMAP server mail is delivered to (the account's
/// `[account.delivery]` table). One type for all of them, so that
/// connecting, TLS and login are written once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Delivery defaults: `Implicit` for `smtps://` and `imaps://`; `None`
    /// for a Unix socket or an MTA on this machine; `StartTls` otherwise.
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server's end-entity certificate (DER).
    pub fingerprint: Option<Fingerprint>,
    /// `None`: no login, as for most SMTP and LMTP servers. Always set for
    /// an account's own server and an IMAP destination.
    pub username: Option<String>,
    pub password: PasswordSource,
    /// An account's: any method of its protocol. SMTP: `Auto`, `Plain`,
    /// `Login`, `XOAuth2`.
    pub auth: AuthMethod,
    pub allow_plaintext_auth: bool,
    /// How long to wait for the server before giving up.
    pub timeout: Duration,
}

impl Endpoint {
    /// `HOST:PORT`, with an IPv6 address in brackets, as in a URL.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// An MTA on this machine on `port`: no TLS and no login.
    pub fn local_mta(port: u16, timeout: Duration) -> Endpoint {
        Endpoint {
            host: "localhost".to_owned(),
            port,
            tls: TlsMode::None,
            ca_file: None,
            fingerprint: None,
            username: None,
            password: PasswordSource::None,
            auth: AuthMethod::Auto,
            allow_plaintext_auth: false,
            timeout,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxTarget {
    pub path: PathBuf,
    /// How long to wait for the file's locks when another program (a
    /// mail reader, procmail) holds them (`timeout` in
    /// `[account.delivery]`, default 1 minute).
    pub lock_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdaTarget {
    /// The command line written after `mda:`, split into words (with
    /// single and double quotes) when the file is read, and run without a
    /// shell; `%T` and `%F` are replaced inside words by the recipient and
    /// the envelope sender.
    pub command: CommandLine,
    /// How long the command may run per message (`timeout` in
    /// `[account.delivery]`, default 10 minutes).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapTarget {
    /// The folder to APPEND to, UTF-8, percent-decoded from the URL.
    pub folder: String,
    /// Flag appended messages `\Seen` (`seen` in `[account.delivery]`).
    pub seen: bool,
    pub server: Endpoint,
}

/// The envelope sender used for SMTP, LMTP and an MDA's `%F`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeFrom {
    /// The message's Return-Path header; the null sender `<>` without one.
    ReturnPath,
    /// Always this address (`<>`: the null sender).
    Fixed(Sender),
}

/// What happens to a message the destination refused for good (SMTP 5xx,
/// MDA exit other than 0 and 75, …). Temporary failures always keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReject {
    /// Leave it on the server; it is tried again at every poll.
    Keep,
    /// Send a delivery status notification to its envelope sender, then
    /// delete it from the server.
    Bounce,
    /// Delete it from the server.
    Delete,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub protocol: Protocol,
    /// The server mail is fetched from, and how to log in to it.
    pub server: Endpoint,
    pub keep: bool,
    pub deliver: DeliverTarget,
    /// Envelope recipients for SMTP, LMTP and an MDA's `%T`. Default: the
    /// local user running mailfetch.
    pub to: Vec<String>,
    pub envelope_from: EnvelopeFrom,
    pub on_reject: OnReject,
    /// Prepend a `Received:` trace header to each delivered message.
    pub received_header: bool,
    /// IMAP: the folders to fetch from, as written (UTF-8; encoding them
    /// for the server is the protocol's business). Never empty, no
    /// duplicates. `["INBOX"]` for POP3, which has only that mailbox.
    pub folders: Vec<String>,
    /// IMAP: which messages to fetch. `New` for POP3, which is what it does.
    pub fetch: FetchMode,
    /// Messages larger than this many bytes are left on the server.
    pub max_size: Option<u64>,
    /// At most this many messages are fetched per poll (per folder for
    /// IMAP); the others wait for the next poll.
    pub max_per_poll: Option<usize>,
    /// IMAP, only with `keep`: set `\Seen` on delivered messages.
    pub mark_seen: bool,
    /// IMAP, only without `keep`: move delivered messages to this folder
    /// instead of deleting them.
    pub move_to: Option<String>,
    /// Daemon mode: this account's poll interval, instead of the general
    /// `poll_interval`.
    pub interval: Option<Duration>,
    /// IMAP, daemon mode: wait for new mail with IDLE, one connection per
    /// folder, instead of polling.
    pub idle: bool,
    /// IMAP: how long one IDLE command may last before it is re-issued
    /// (servers drop idle clients after 30 minutes, RFC 9051).
    pub idle_timeout: Duration,
    /// IMAP: send `ID` (RFC 2971) with mailfetch's name and version after
    /// login, where the server offers it: some providers refuse or limit
    /// clients that do not say who they are.
    pub imap_id: bool,
}

/// The user running mailfetch, the default envelope recipient: `$USER`,
/// else the name of the process's uid, else `root`/`uid<N>`.
pub fn local_user() -> String {
    if let Ok(user) = env::var("USER")
        && !user.is_empty()
    {
        return user;
    }
    // SAFETY: getuid cannot fail; getpwuid returns null or a pointer to a
    // static record whose pw_name is a NUL-terminated string, read at once.
    unsafe {
        let uid = libc::getuid();
        let record = libc::getpwuid(uid);
        if !record.is_null() && !(*record).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*record).pw_name)
                .to_string_lossy()
                .into_owned();
        }
        format!("uid{uid}")
    }
}

/// How long to wait for the server when `timeout` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often accounts are polled in daemon mode by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How many polls run at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;

/// How long an IDLE lasts by default: below the 29 minutes after which
/// RFC 9051 lets a server drop an idle client.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// The default configuration file: `$XDG_CONFIG_HOME/mailfetch/fetchrc`,
/// else `~/.config/mailfetch/fetchrc`.
///
/// `None` if neither `$XDG_CONFIG_HOME` (absolute) nor `$HOME` is set, in
/// which case the user has to name the file.
pub fn default_path() -> Option<PathBuf> {
    xdg_dir(&process_env, "XDG_CONFIG_HOME", ".config").map(|dir| dir.join("fetchrc"))
}

/// Reads, checks and parses the configuration file at `path`.
///
/// On top of what [`parse`] does, this refuses (with [`Kind::Permissions`])
/// a file that someone else could change, or in a directory where someone
/// else could replace it (the file tells mailfetch what to run), and a
/// file that contains an inline password while group or others may access
/// it: a password in a world-readable file is not a secret. It also checks
/// what a run needs from this machine (see `Parser::check_secrets`), so
/// that `--check-config` finds those problems too.
pub fn load(path: &Path) -> Result<Config, Error> {
    let cannot_read =
        |err: std::io::Error| Error::new(Kind::Config, format!("{}: {err}", path.display()));
    let mut file = File::open(path).map_err(cannot_read)?;
    // The metadata comes from the open file, not from a second lookup of
    // the path, so it is that of exactly the text we parse.
    let metadata = file.metadata().map_err(cannot_read)?;
    check_unwritable_by_others(path, &metadata, "the configuration file", CONFIG_RISK)?;
    check_directory_of(path, "the configuration file", CONFIG_RISK)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(cannot_read)?;

    let parser = Parser {
        path,
        text: &text,
        env: &process_env,
    };
    let raw = parser.raw()?;
    let config = parser.config_from(&raw)?;
    let mode = metadata.permissions().mode();
    if config.holds_a_password() && mode & 0o077 != 0 {
        return Err(Error::new(
            Kind::Permissions,
            format!(
                "{file}: contains a password but group or others may access it \
                 (mode {mode:04o}); run `chmod 600 {file}`, or use password_command \
                 or password_file instead",
                file = path.display(),
                mode = mode & 0o7777,
            ),
        ));
    }
    parser.check_secrets(&raw, &config)?;
    Ok(config)
}

/// What someone who can change the configuration could do.
const CONFIG_RISK: &str = "could make mailfetch run commands as you";

impl Config {
    /// Whether the file holds a password (or an OAuth2 client secret)
    /// itself, for an account or for the server mail is delivered to.
    fn holds_a_password(&self) -> bool {
        self.accounts.iter().any(|account| {
            let delivery_password = account.deliver.server().map(|server| &server.password);
            [Some(&account.server.password), delivery_password]
                .into_iter()
                .flatten()
                .any(|password| match password {
                    PasswordSource::Inline(_) => true,
                    PasswordSource::OAuth(oauth) => {
                        matches!(oauth.client_secret, PasswordSource::Inline(_))
                    }
                    _ => false,
                })
        })
    }
}

impl DeliverTarget {
    /// The server mail is delivered to, for targets that log in to one.
    pub fn server(&self) -> Option<&Endpoint> {
        match self {
            DeliverTarget::Maildir(_) | DeliverTarget::Mbox(_) | DeliverTarget::Mda(_) => None,
            DeliverTarget::Mta(target) => Some(&target.server),
            DeliverTarget::Imap(target) => Some(&target.server),
        }
    }
}

/// Parses and validates configuration `text`, read from `path`.
///
/// `path` is only used in error messages and kept in [`Config::path`]; the
/// file is neither read nor has its permissions checked, and accounts
/// without a password pass (see [`load`]). The
/// environment is consulted for path expansion and default directories, and
/// a `ca_file` must exist.
pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
    Parser {
        path,
        text,
        env: &process_env,
    }
    .config()
}

/// Looks up an environment variable, the way `Parser` sees them.
type Env<'a> = &'a dyn Fn(&str) -> Result<String, VarError>;

/// The real process environment.
fn process_env(name: &str) -> Result<String, VarError> {
    env::var(name)
}

/// `$<xdg_var>/mailfetch`, else `$HOME/<home_fallback>/mailfetch`.
///
/// As the XDG Base Directory specification requires, an empty or relative
/// `$<xdg_var>` is ignored.
fn xdg_dir(env: Env<'_>, xdg_var: &str, home_fallback: &str) -> Option<PathBuf> {
    let base = match env(xdg_var) {
        Ok(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => {
            let home = env("HOME").ok().filter(|home| !home.is_empty())?;
            Path::new(&home).join(home_fallback)
        }
    };
    Some(base.join("mailfetch"))
}
