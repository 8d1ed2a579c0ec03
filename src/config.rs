//! The configuration file: TOML, validated up front, with errors that name
//! the file, the line and the key.
//!
//! Loading happens in two layers:
//!
//! 1. Serde deserializes the text into *raw* structs that deny unknown keys
//!    and hold every value as an optional [`Spanned`] [`toml::Value`]. So
//!    this step only fails on TOML syntax errors and unknown keys, and the
//!    byte span of every value survives.
//! 2. A [`Parser`] then checks types, fills in defaults and validates, one
//!    key at a time. Because it always knows which key it is looking at and
//!    where that key's value is, every error can say
//!    `FILE:LINE: key `KEY`: what is wrong`.
//!
//! Paths (`state_dir`, `ca_file`, `password_file` and the path of a
//! `maildir:` target) get shell-like expansion: a leading `~` or `~/` means
//! `$HOME`, `$VAR` and `${VAR}` are replaced by the environment variable and
//! `$$` is a literal `$`. A variable that is not set is an error rather than
//! an empty string, because a silently wrong path would send mail somewhere
//! unexpected. A path that is still relative after expansion stays relative,
//! i.e. it is used relative to the current directory (not to the directory
//! of the configuration file).

use std::collections::HashMap;
use std::env::{self, VarError};
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Kind};
use crate::net::is_loopback_host;
use crate::permissions::{check_directory_of, check_private, check_unwritable_by_others};
use crate::sink::envelope::Sender;

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
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    /// The secret itself; call only where it is sent to a server.
    pub fn expose(&self) -> &str {
        &self.0
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

/// Where an MTA listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MtaAddress {
    Tcp {
        host: String,
        port: u16,
    },
    /// A Unix domain socket (LMTP only), e.g. `/run/dovecot/lmtp`.
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaTarget {
    pub protocol: MtaProtocol,
    pub address: MtaAddress,
    /// TLS, login and timeout, from the account's `[account.delivery]`.
    pub server: DeliveryServer,
}

/// How mailfetch talks to the server it delivers to (SMTP, LMTP, IMAP):
/// the account's optional `[account.delivery]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryServer {
    /// Default: `Implicit` for `smtps://` and `imaps://`; `None` for a Unix
    /// socket or an MTA on this machine; `StartTls` otherwise.
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<[u8; 32]>,
    /// `None`: no login (SMTP/LMTP); required for IMAP (from the URL or
    /// the table).
    pub username: Option<String>,
    pub password: PasswordSource,
    /// `Auto`, `Plain`, `Login`, `XOAuth2` for SMTP; any IMAP mechanism for
    /// IMAP.
    pub auth: AuthMethod,
    pub allow_plaintext_auth: bool,
    pub timeout: Duration,
}

impl DeliveryServer {
    /// No TLS and no login, as for an MTA on this machine.
    pub fn unencrypted(timeout: Duration) -> DeliveryServer {
        DeliveryServer {
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
pub struct MdaTarget {
    /// The command line as written after `mda:`. Split into words (with
    /// single and double quotes) and run without a shell; `%T` and `%F` are
    /// replaced inside words by the recipient and the envelope sender.
    pub command: String,
    /// How long the command may run per message (`timeout` in
    /// `[account.delivery]`, default 10 minutes).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapTarget {
    pub host: String,
    pub port: u16,
    /// The folder to APPEND to, UTF-8, percent-decoded from the URL.
    pub folder: String,
    /// Flag appended messages `\Seen` (`seen` in `[account.delivery]`).
    pub seen: bool,
    pub server: DeliveryServer,
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
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server's end-entity certificate (DER).
    pub fingerprint: Option<[u8; 32]>,
    pub username: String,
    pub password: PasswordSource,
    pub auth: AuthMethod,
    pub allow_plaintext_auth: bool,
    pub keep: bool,
    pub deliver: DeliverTarget,
    /// Envelope recipients for SMTP, LMTP and an MDA's `%T`. Default: the
    /// local user running mailfetch.
    pub to: Vec<String>,
    pub envelope_from: EnvelopeFrom,
    pub on_reject: OnReject,
    /// Prepend a `Received:` trace header to each delivered message.
    pub received_header: bool,
    /// How long to wait for the server before giving up.
    pub timeout: Duration,
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

/// How `deliver` may be written, for error messages.
const DELIVER_FORMS: &str = "maildir:PATH, smtp://HOST[:PORT], smtps://HOST[:PORT], \
     lmtp:/PATH/TO/SOCKET, lmtp://HOST[:PORT], mda:COMMAND, imap://USER@HOST[:PORT]/FOLDER, \
     imaps://USER@HOST[:PORT]/FOLDER";

/// How long an MDA may take for one message when `timeout` is not set in
/// `[account.delivery]`: spam filters can be slow.
const DEFAULT_MDA_TIMEOUT: Duration = Duration::from_secs(600);

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
/// what a run needs from this machine (see [`Parser::check_secrets`]), so
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
    /// Whether the file holds a password itself, for an account or for the
    /// server mail is delivered to.
    fn holds_a_password(&self) -> bool {
        self.accounts.iter().any(|account| {
            let delivery_password = account.deliver.server().map(|server| &server.password);
            [Some(&account.password), delivery_password]
                .into_iter()
                .flatten()
                .any(|password| matches!(password, PasswordSource::Inline(_)))
        })
    }
}

impl DeliverTarget {
    /// The server mail is delivered to, for targets that log in to one.
    pub fn server(&self) -> Option<&DeliveryServer> {
        match self {
            DeliverTarget::Maildir(_) | DeliverTarget::Mda(_) => None,
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
async fn run_password_command(
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
fn check_secret(secret: &str) -> Result<(), &'static str> {
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

/// Looks up an environment variable, the way [`Parser`] sees them.
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

// ---------------------------------------------------------------------------
// The raw layer: what serde reads.

/// A value as written in the file, with the byte range it occupies.
type RawValue = Spanned<toml::Value>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    general: RawGeneral,
    #[serde(default)]
    account: Vec<Spanned<RawAccount>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [general] table")]
struct RawGeneral {
    state_dir: Option<RawValue>,
    poll_interval: Option<RawValue>,
    max_connections: Option<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[account]] table")]
struct RawAccount {
    name: Option<RawValue>,
    protocol: Option<RawValue>,
    host: Option<RawValue>,
    port: Option<RawValue>,
    tls: Option<RawValue>,
    ca_file: Option<RawValue>,
    fingerprint: Option<RawValue>,
    username: Option<RawValue>,
    password: Option<RawValue>,
    password_command: Option<RawValue>,
    password_file: Option<RawValue>,
    auth: Option<RawValue>,
    allow_plaintext_auth: Option<RawValue>,
    keep: Option<RawValue>,
    deliver: Option<RawValue>,
    to: Option<RawValue>,
    envelope_from: Option<RawValue>,
    on_reject: Option<RawValue>,
    delivery: Option<Spanned<RawDelivery>>,
    received_header: Option<RawValue>,
    timeout: Option<RawValue>,
    folders: Option<RawValue>,
    fetch: Option<RawValue>,
    max_size: Option<RawValue>,
    max_per_poll: Option<RawValue>,
    mark_seen: Option<RawValue>,
    move_to: Option<RawValue>,
    interval: Option<RawValue>,
    idle: Option<RawValue>,
    idle_timeout: Option<RawValue>,
}

/// `[account.delivery]`: how to talk to the server mail is delivered to.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, expecting = "an [account.delivery] table")]
struct RawDelivery {
    tls: Option<RawValue>,
    ca_file: Option<RawValue>,
    fingerprint: Option<RawValue>,
    username: Option<RawValue>,
    password: Option<RawValue>,
    password_command: Option<RawValue>,
    password_file: Option<RawValue>,
    auth: Option<RawValue>,
    allow_plaintext_auth: Option<RawValue>,
    timeout: Option<RawValue>,
    seen: Option<RawValue>,
}

// ---------------------------------------------------------------------------
// The checking layer: raw values to a `Config`, with located errors.

/// Turns one configuration text into a [`Config`], knowing where it came
/// from so that errors can point into it.
struct Parser<'a> {
    path: &'a Path,
    text: &'a str,
    env: Env<'a>,
}

impl Parser<'_> {
    fn config(&self) -> Result<Config, Error> {
        self.config_from(&self.raw()?)
    }

    /// The text as serde reads it: syntax and unknown keys are checked.
    fn raw(&self) -> Result<RawFile, Error> {
        toml::from_str(self.text).map_err(|err| self.toml_error(&err))
    }

    fn config_from(&self, raw: &RawFile) -> Result<Config, Error> {
        let general = self.general(&raw.general)?;
        if raw.account.is_empty() {
            return Err(self.error(
                self.text.len()..self.text.len(),
                "account",
                "no account is configured; add an [[account]] section (see fetchrc.example)",
            ));
        }

        let mut accounts = Vec::with_capacity(raw.account.len());
        let mut first_use: HashMap<String, usize> = HashMap::new();
        for raw_account in &raw.account {
            let account = self.account(raw_account)?;
            // `account()` has checked that `name` is present.
            if let Some(name_value) = &raw_account.get_ref().name {
                let line = self.line(name_value.span().start);
                if let Some(first_line) = first_use.insert(account.name.clone(), line) {
                    return Err(self.error(
                        name_value.span(),
                        "name",
                        format!(
                            "the account name `{}` is already used at line {first_line}; \
                             account names must be unique",
                            account.name
                        ),
                    ));
                }
            }
            accounts.push(account);
        }
        self.check_mailboxes_are_distinct(&raw.account, &accounts)?;
        Ok(Config {
            path: self.path.to_owned(),
            general,
            accounts,
        })
    }

    /// Refuses two accounts that fetch the same mailbox: both would deliver
    /// every message in it, and they would share one state file.
    fn check_mailboxes_are_distinct(
        &self,
        raw: &[Spanned<RawAccount>],
        accounts: &[Account],
    ) -> Result<(), Error> {
        for (later, account) in accounts.iter().enumerate() {
            for (earlier, other) in accounts[..later].iter().enumerate() {
                let Some(mailbox) = shared_mailbox(other, account) else {
                    continue;
                };
                let key = match account.protocol {
                    Protocol::Imap => "folders",
                    Protocol::Pop3 => "host",
                };
                return Err(self.error(
                    raw[later].span(),
                    key,
                    format!(
                        "account `{}` fetches the same mailbox as account `{}` at line {} \
                         ({mailbox}); both would deliver every message in it, so keep only \
                         one of them",
                        account.name,
                        other.name,
                        self.line(raw[earlier].span().start)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What a run needs beyond a valid text, checked only by [`load`] (so
    /// that tests can parse accounts that never log in): every account has
    /// a password source, since every login method needs one (the password
    /// itself, a response computed from it, or an OAuth2 token), and every
    /// password file exists and is private.
    fn check_secrets(&self, raw: &RawFile, config: &Config) -> Result<(), Error> {
        for (raw_account, account) in raw.account.iter().zip(&config.accounts) {
            let fields = raw_account.get_ref();
            if account.password == PasswordSource::None {
                return Err(self.error(
                    raw_account.span(),
                    "password",
                    format!(
                        "account `{}` logs in with auth = \"{}\", which needs a password \
                         (or an OAuth2 token); set password, password_command or password_file",
                        account.name,
                        keyword_name(account.auth)
                    ),
                ));
            }
            self.check_password_file("password_file", &fields.password_file, &account.password)?;
            if let (Some(delivery), Some(server)) = (&fields.delivery, account.deliver.server()) {
                self.check_password_file(
                    "delivery.password_file",
                    &delivery.get_ref().password_file,
                    &server.password,
                )?;
            }
        }
        Ok(())
    }

    /// A `password_file` (at `key`) must exist and be private.
    fn check_password_file(
        &self,
        key: &str,
        value: &Option<RawValue>,
        source: &PasswordSource,
    ) -> Result<(), Error> {
        let (Some(value), PasswordSource::File(path)) = (value, source) else {
            return Ok(());
        };
        let problem = match fs::metadata(path) {
            Ok(metadata) if metadata.is_file() => {
                return check_private(path, &metadata, "the password file").map_err(|err| {
                    Error::new(err.kind, self.located(value.span(), key, err.message))
                });
            }
            Ok(_) => format!("{} is not a file", path.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                format!("{} does not exist", path.display())
            }
            Err(err) => format!("cannot read {}: {err}", path.display()),
        };
        Err(self.error(value.span(), key, problem))
    }

    fn general(&self, raw: &RawGeneral) -> Result<General, Error> {
        let state_dir = match &raw.state_dir {
            Some(value) => self.path_value("state_dir", value)?,
            None => xdg_dir(self.env, "XDG_STATE_HOME", ".local/state").ok_or_else(|| {
                Error::new(
                    Kind::Config,
                    format!(
                        "{}: key `state_dir`: there is no default because neither \
                         $XDG_STATE_HOME nor $HOME is set; set state_dir in [general]",
                        self.path.display()
                    ),
                )
            })?,
        };
        let poll_interval = self
            .optional("poll_interval", &raw.poll_interval, as_interval)?
            .unwrap_or(DEFAULT_POLL_INTERVAL);
        let max_connections = self
            .optional("max_connections", &raw.max_connections, as_count)?
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        Ok(General {
            state_dir,
            poll_interval,
            max_connections,
        })
    }

    fn account(&self, raw: &Spanned<RawAccount>) -> Result<Account, Error> {
        let header = raw.span();
        let raw = raw.get_ref();
        let required = |key: &str, field: &'_ Option<RawValue>| -> Result<RawValue, Error> {
            field.clone().ok_or_else(|| {
                self.error(
                    header.clone(),
                    key,
                    "required, but missing from this [[account]] section",
                )
            })
        };

        let name = self.convert("name", &required("name", &raw.name)?, |value| {
            as_str(value).and_then(parse_account_name)
        })?;
        let protocol =
            self.convert("protocol", &required("protocol", &raw.protocol)?, |value| {
                as_str(value).and_then(parse_keyword)
            })?;
        let host = self.convert("host", &required("host", &raw.host)?, |value| {
            as_non_empty_str(value).map(str::to_owned)
        })?;
        let tls = self
            .optional("tls", &raw.tls, |value| {
                as_str(value).and_then(parse_keyword)
            })?
            .unwrap_or(TlsMode::Implicit);
        let port = self
            .optional("port", &raw.port, as_port)?
            .unwrap_or_else(|| default_port(protocol, tls));
        let ca_file = match &raw.ca_file {
            Some(value) => Some(self.existing_file("ca_file", value)?),
            None => None,
        };
        let fingerprint = self.optional("fingerprint", &raw.fingerprint, |value| {
            as_str(value).and_then(parse_fingerprint)
        })?;
        let username =
            self.convert("username", &required("username", &raw.username)?, |value| {
                as_non_empty_str(value).map(str::to_owned)
            })?;
        let password = self.password_source(raw)?;
        let auth = self
            .optional("auth", &raw.auth, |value| {
                as_str(value).and_then(parse_keyword)
            })?
            .unwrap_or(AuthMethod::Auto);
        let allow_plaintext_auth = self
            .optional("allow_plaintext_auth", &raw.allow_plaintext_auth, as_bool)?
            .unwrap_or(false);
        let keep = self.optional("keep", &raw.keep, as_bool)?.unwrap_or(false);
        let deliver =
            self.deliver_target(&required("deliver", &raw.deliver)?, raw.delivery.as_ref())?;
        let to = self.recipients(raw)?;
        let envelope_from = self
            .optional("envelope_from", &raw.envelope_from, |value| {
                let text = as_str(value)?;
                if text.eq_ignore_ascii_case("return-path") {
                    return Ok(EnvelopeFrom::ReturnPath);
                }
                Sender::parse(text).map(EnvelopeFrom::Fixed).ok_or_else(|| {
                    format!(
                        "`{text}` is neither \"return-path\", \"<>\" nor a plain address \
                         such as \"fetch@example.org\""
                    )
                })
            })?
            .unwrap_or(EnvelopeFrom::ReturnPath);
        let on_reject = self
            .optional("on_reject", &raw.on_reject, |value| {
                as_str(value).and_then(parse_keyword)
            })?
            .unwrap_or(OnReject::Keep);
        let received_header = self
            .optional("received_header", &raw.received_header, as_bool)?
            .unwrap_or(true);
        let timeout = self
            .optional("timeout", &raw.timeout, as_timeout)?
            .unwrap_or(DEFAULT_TIMEOUT);
        let max_size = self.optional("max_size", &raw.max_size, as_size)?;
        let max_per_poll = self.optional("max_per_poll", &raw.max_per_poll, as_count)?;
        // The keys that only IMAP has.
        for (key, field) in [
            ("folders", &raw.folders),
            ("fetch", &raw.fetch),
            ("mark_seen", &raw.mark_seen),
            ("move_to", &raw.move_to),
            ("idle", &raw.idle),
            ("idle_timeout", &raw.idle_timeout),
        ] {
            if let Some(value) = field
                && protocol != Protocol::Imap
            {
                return Err(self.error(
                    value.span(),
                    key,
                    format!(
                        "only applies to protocol = \"imap\", not \"{}\"",
                        keyword_name(protocol)
                    ),
                ));
            }
        }
        let folders = self
            .optional("folders", &raw.folders, as_folders)?
            .unwrap_or_else(|| vec![INBOX.to_owned()]);
        let fetch = self
            .optional("fetch", &raw.fetch, |value| {
                as_str(value).and_then(parse_keyword)
            })?
            .unwrap_or(FetchMode::New);
        let mark_seen = self
            .optional("mark_seen", &raw.mark_seen, as_bool)?
            .unwrap_or(false);
        let move_to = self.optional("move_to", &raw.move_to, |value| {
            as_str(value).and_then(check_folder_name).map(str::to_owned)
        })?;
        let interval = self.optional("interval", &raw.interval, as_interval)?;
        let idle = self.optional("idle", &raw.idle, as_bool)?.unwrap_or(false);
        let idle_timeout = self
            .optional("idle_timeout", &raw.idle_timeout, as_idle_timeout)?
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);

        let account = Account {
            name,
            protocol,
            host,
            port,
            tls,
            ca_file,
            fingerprint,
            username,
            password,
            auth,
            allow_plaintext_auth,
            keep,
            deliver,
            to,
            envelope_from,
            on_reject,
            received_header,
            timeout,
            folders,
            fetch,
            max_size,
            max_per_poll,
            mark_seen,
            move_to,
            interval,
            idle,
            idle_timeout,
        };
        self.check_auth_for_protocol(raw, &account)?;
        self.check_token_source(raw, &account)?;
        self.check_plaintext_exposure(raw, &account)?;
        self.check_after_delivery(raw, &account)?;
        Ok(account)
    }

    /// APOP is POP3's own mechanism; IMAP has nothing like it.
    fn check_auth_for_protocol(&self, raw: &RawAccount, account: &Account) -> Result<(), Error> {
        match &raw.auth {
            Some(auth)
                if account.auth == AuthMethod::Apop && account.protocol != Protocol::Pop3 =>
            {
                Err(self.error(
                    auth.span(),
                    "auth",
                    format!(
                        "\"apop\" is a POP3 mechanism that protocol = \"{}\" does not have; \
                         use \"auto\", \"cram-md5\" or \"scram-sha-256\" instead",
                        keyword_name(account.protocol)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks that what happens to a message after delivery is not
    /// contradictory (`mark_seen`, `move_to` and `keep`), and that `move_to`
    /// does not feed a folder that is fetched, which would deliver every
    /// moved message a second time.
    fn check_after_delivery(&self, raw: &RawAccount, account: &Account) -> Result<(), Error> {
        if let Some(mark_seen) = &raw.mark_seen
            && account.mark_seen
            && !account.keep
        {
            return Err(self.error(
                mark_seen.span(),
                "mark_seen",
                "mark_seen only applies with keep = true: with keep = false, messages \
                 are deleted (or moved with move_to) once delivered",
            ));
        }
        let (Some(value), Some(move_to)) = (&raw.move_to, &account.move_to) else {
            return Ok(());
        };
        if account.keep {
            return Err(self.error(
                value.span(),
                "move_to",
                "move_to moves delivered messages out of the folder, which contradicts \
                 keep = true; remove one of them",
            ));
        }
        match account
            .folders
            .iter()
            .find(|&folder| same_folder(folder, move_to))
        {
            Some(folder) => Err(self.error(
                value.span(),
                "move_to",
                format!(
                    "`{folder}` is also in folders, so moved messages would be fetched \
                     and delivered again; move them to a folder that is not fetched"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The one password source of an account; setting several is an error,
    /// since which one would win is anybody's guess.
    fn password_source(&self, raw: &RawAccount) -> Result<PasswordSource, Error> {
        self.one_password_source([
            ("password", &raw.password),
            ("password_command", &raw.password_command),
            ("password_file", &raw.password_file),
        ])
    }

    /// `sources`: the password, password_command and password_file keys, in
    /// that order, with their (possibly prefixed) names.
    fn one_password_source(
        &self,
        sources: [(&str, &Option<RawValue>); 3],
    ) -> Result<PasswordSource, Error> {
        let mut sources = sources
            .into_iter()
            .filter_map(|(key, field)| field.as_ref().map(|value| (key, value)));
        let Some((key, value)) = sources.next() else {
            return Ok(PasswordSource::None);
        };
        if let Some((second_key, second_value)) = sources.next() {
            return Err(self.error(
                second_value.span(),
                second_key,
                format!(
                    "`{key}` is already set at line {}; set only one of password, \
                     password_command and password_file",
                    self.line(value.span().start)
                ),
            ));
        }
        match key.rsplit('.').next().unwrap_or(key) {
            "password" => self.convert(key, value, |value| {
                let password = as_str(value)?;
                check_secret(password)?;
                Ok(PasswordSource::Inline(Secret::new(password.to_owned())))
            }),
            "password_command" => self.convert(key, value, |value| {
                as_non_empty_str(value).map(|command| PasswordSource::Command(command.to_owned()))
            }),
            _ => self.path_value(key, value).map(PasswordSource::File),
        }
    }

    /// OAuth2 access tokens expire within the hour, so they must come from a
    /// command that fetches a fresh one (or, for testing, be inline).
    fn check_token_source(&self, raw: &RawAccount, account: &Account) -> Result<(), Error> {
        let needs_token = matches!(account.auth, AuthMethod::XOAuth2 | AuthMethod::OAuthBearer);
        let has_token_source = matches!(
            account.password,
            PasswordSource::Command(_) | PasswordSource::Inline(_)
        );
        match &raw.auth {
            Some(auth) if needs_token && !has_token_source => Err(self.error(
                auth.span(),
                "auth",
                format!(
                    "auth = \"{}\" sends an OAuth2 access token as the password; set \
                     password_command to a command that prints a fresh token (or \
                     password to a token)",
                    keyword_name(account.auth)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses to send a password in the clear over the network unless the
    /// user explicitly accepted that.
    ///
    /// Only mechanisms that reveal the password (or a bearer token) count;
    /// `auto` is left to the protocol, which must then choose a mechanism
    /// that does not reveal it.
    fn check_plaintext_exposure(&self, raw: &RawAccount, account: &Account) -> Result<(), Error> {
        let exposed = account.tls == TlsMode::None
            && account.auth.reveals_password()
            && !account.allow_plaintext_auth
            && !is_loopback_host(&account.host);
        match &raw.tls {
            Some(tls) if exposed => Err(self.error(
                tls.span(),
                "tls",
                format!(
                    "with tls = \"none\" and auth = \"{}\", the password would travel \
                     unencrypted to {}; use tls = \"starttls\" or \"implicit\", or set \
                     allow_plaintext_auth = true if you accept that risk",
                    keyword_name(account.auth),
                    account.host
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `deliver`, with the `[account.delivery]` table that goes with it.
    fn deliver_target(
        &self,
        value: &RawValue,
        delivery: Option<&Spanned<RawDelivery>>,
    ) -> Result<DeliverTarget, Error> {
        let fail = |problem: String| self.error(value.span(), "deliver", problem);
        let target = self.convert("deliver", value, |value| as_str(value).map(str::to_owned))?;
        let (scheme, rest) = target.split_once(':').ok_or_else(|| {
            fail(format!(
                "`{target}` has no scheme; expected one of {DELIVER_FORMS}"
            ))
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let raw = delivery
            .map(|table| table.get_ref().clone())
            .unwrap_or_default();
        let target = match scheme.as_str() {
            "maildir" => DeliverTarget::Maildir(self.expand_path(rest).map_err(fail)?),
            "mda" => {
                let command = rest.trim();
                if command.is_empty() {
                    return Err(fail(
                        "`mda:` needs a command, e.g. \"mda:/usr/bin/procmail -d %T\"".to_owned(),
                    ));
                }
                crate::sink::mda::parse_command(command).map_err(fail)?;
                DeliverTarget::Mda(MdaTarget {
                    command: command.to_owned(),
                    timeout: self
                        .optional("delivery.timeout", &raw.timeout, as_timeout)?
                        .unwrap_or(DEFAULT_MDA_TIMEOUT),
                })
            }
            "smtp" | "smtps" | "lmtp" => {
                let protocol = if scheme == "lmtp" {
                    MtaProtocol::Lmtp
                } else {
                    MtaProtocol::Smtp
                };
                let address = match rest.strip_prefix("//") {
                    Some(authority) => {
                        let (user, host, port) = parse_authority(authority).map_err(fail)?;
                        if user.is_some() {
                            return Err(fail(format!(
                                "put the user name for {scheme} in [account.delivery] \
                                 `username`, not in the URL"
                            )));
                        }
                        let port = port.unwrap_or(match scheme.as_str() {
                            "smtps" => 465,
                            "lmtp" => 24,
                            _ => 25,
                        });
                        MtaAddress::Tcp { host, port }
                    }
                    None if scheme == "lmtp" && rest.starts_with('/') => {
                        MtaAddress::Unix(self.expand_path(rest).map_err(fail)?)
                    }
                    None => {
                        return Err(fail(format!(
                            "expected {scheme}://HOST[:PORT]{}",
                            if scheme == "lmtp" {
                                " or lmtp:/PATH/TO/SOCKET"
                            } else {
                                ""
                            }
                        )));
                    }
                };
                let default_tls = match (&address, scheme.as_str()) {
                    (_, "smtps") => TlsMode::Implicit,
                    (MtaAddress::Unix(_), _) => TlsMode::None,
                    (MtaAddress::Tcp { host, .. }, _) if is_loopback_host(host) => TlsMode::None,
                    _ => TlsMode::StartTls,
                };
                let host = match &address {
                    MtaAddress::Tcp { host, .. } => host.clone(),
                    MtaAddress::Unix(_) => "localhost".to_owned(),
                };
                let server = self.delivery_server(&raw, &scheme, &host, default_tls, None)?;
                DeliverTarget::Mta(MtaTarget {
                    protocol,
                    address,
                    server,
                })
            }
            "imap" | "imaps" => {
                let Some(rest) = rest.strip_prefix("//") else {
                    return Err(fail(format!(
                        "expected {scheme}://[USER@]HOST[:PORT]/FOLDER"
                    )));
                };
                let (authority, folder) = rest.split_once('/').unwrap_or((rest, ""));
                let (user, host, port) = parse_authority(authority).map_err(fail)?;
                let folder = percent_decode(folder).map_err(fail)?;
                let folder = if folder.is_empty() {
                    INBOX.to_owned()
                } else {
                    folder
                };
                check_folder_name(&folder).map_err(fail)?;
                let default_tls = if scheme == "imaps" {
                    TlsMode::Implicit
                } else {
                    TlsMode::StartTls
                };
                let server = self.delivery_server(&raw, &scheme, &host, default_tls, user)?;
                if server.username.is_none() {
                    return Err(fail(format!(
                        "IMAP delivery needs a user name: {scheme}://USER@{host}/… or \
                         `username` in [account.delivery]"
                    )));
                }
                let port = port.unwrap_or(if server.tls == TlsMode::Implicit {
                    993
                } else {
                    143
                });
                DeliverTarget::Imap(ImapTarget {
                    host,
                    port,
                    folder,
                    seen: self
                        .optional("delivery.seen", &raw.seen, as_bool)?
                        .unwrap_or(false),
                    server,
                })
            }
            other => {
                return Err(fail(format!(
                    "unknown delivery scheme `{other}:`; expected one of {DELIVER_FORMS}"
                )));
            }
        };
        self.check_delivery_keys(&target, &raw)?;
        Ok(target)
    }

    /// The keys of `[account.delivery]` that the delivery target uses.
    fn delivery_server(
        &self,
        raw: &RawDelivery,
        scheme: &str,
        host: &str,
        default_tls: TlsMode,
        url_user: Option<String>,
    ) -> Result<DeliveryServer, Error> {
        let tls = self.optional("delivery.tls", &raw.tls, |value| {
            as_str(value).and_then(parse_keyword)
        })?;
        if let (Some(value), Some(tls)) = (&raw.tls, tls)
            && (scheme == "smtps" || scheme == "imaps")
            && tls != TlsMode::Implicit
        {
            return Err(self.error(
                value.span(),
                "delivery.tls",
                format!(
                    "{scheme}:// always uses implicit TLS; for \"{}\" use {}://",
                    keyword_name(tls),
                    scheme.trim_end_matches('s')
                ),
            ));
        }
        let tls = tls.unwrap_or(default_tls);
        let ca_file = match &raw.ca_file {
            Some(value) => Some(self.existing_file("delivery.ca_file", value)?),
            None => None,
        };
        let fingerprint = self.optional("delivery.fingerprint", &raw.fingerprint, |value| {
            as_str(value).and_then(parse_fingerprint)
        })?;
        let username = self
            .optional("delivery.username", &raw.username, |value| {
                as_non_empty_str(value).map(str::to_owned)
            })?
            .or(url_user);
        let password = self.one_password_source([
            ("delivery.password", &raw.password),
            ("delivery.password_command", &raw.password_command),
            ("delivery.password_file", &raw.password_file),
        ])?;
        let auth = self
            .optional("delivery.auth", &raw.auth, |value| {
                as_str(value).and_then(parse_keyword)
            })?
            .unwrap_or(AuthMethod::Auto);
        let allow_plaintext_auth = self
            .optional(
                "delivery.allow_plaintext_auth",
                &raw.allow_plaintext_auth,
                as_bool,
            )?
            .unwrap_or(false);
        let timeout = self
            .optional("delivery.timeout", &raw.timeout, as_timeout)?
            .unwrap_or(DEFAULT_TIMEOUT);
        let server = DeliveryServer {
            tls,
            ca_file,
            fingerprint,
            username,
            password,
            auth,
            allow_plaintext_auth,
            timeout,
        };
        if let Some(value) = &raw.auth {
            let allowed: &[AuthMethod] = if scheme.starts_with("imap") {
                &[
                    AuthMethod::Auto,
                    AuthMethod::User,
                    AuthMethod::Plain,
                    AuthMethod::Login,
                    AuthMethod::CramMd5,
                    AuthMethod::XOAuth2,
                    AuthMethod::OAuthBearer,
                    AuthMethod::ScramSha256,
                ]
            } else {
                &[
                    AuthMethod::Auto,
                    AuthMethod::Plain,
                    AuthMethod::Login,
                    AuthMethod::XOAuth2,
                ]
            };
            if !allowed.contains(&auth) {
                let words: Vec<String> = allowed
                    .iter()
                    .map(|&method| format!("\"{}\"", keyword_name(method)))
                    .collect();
                return Err(self.error(
                    value.span(),
                    "delivery.auth",
                    format!(
                        "\"{}\" is not available for {scheme}; use one of {}",
                        keyword_name(auth),
                        words.join(", ")
                    ),
                ));
            }
        }
        if server.username.is_some() != (server.password != PasswordSource::None) {
            let (key, span) = match (
                &raw.username,
                &raw.password,
                &raw.password_command,
                &raw.password_file,
            ) {
                (Some(value), ..) => ("delivery.username", value.span()),
                (_, Some(value), ..) | (_, _, Some(value), _) | (_, _, _, Some(value)) => {
                    ("delivery.password", value.span())
                }
                _ => ("delivery.username", 0..0),
            };
            // An IMAP user from the URL with no password is reported here too.
            if !(scheme.starts_with("imap") && server.username.is_none()) {
                return Err(self.error(
                    span,
                    key,
                    "set both a user name and a password (password, password_command or \
                     password_file) to log in to the delivery server, or neither",
                ));
            }
        }
        // SMTP's `auto` ends up with PLAIN or LOGIN; IMAP's `auto` never
        // reveals the password on a plain link (the login code refuses).
        let reveals = match auth {
            AuthMethod::Auto => !scheme.starts_with("imap"),
            method => method.reveals_password(),
        };
        if tls == TlsMode::None
            && server.password != PasswordSource::None
            && reveals
            && !allow_plaintext_auth
            && !is_loopback_host(host)
        {
            let span = raw.tls.as_ref().map_or(0..0, |value| value.span());
            return Err(self.error(
                span,
                "delivery.tls",
                format!(
                    "with tls = \"none\", the delivery password would travel unencrypted \
                     to {host}; use tls = \"starttls\" or \"implicit\", or set \
                     allow_plaintext_auth = true in [account.delivery] if you accept that risk"
                ),
            ));
        }
        Ok(server)
    }

    /// Refuses `[account.delivery]` keys that the target would ignore.
    fn check_delivery_keys(&self, target: &DeliverTarget, raw: &RawDelivery) -> Result<(), Error> {
        let (kind, allowed): (&str, &[&str]) = match target {
            DeliverTarget::Maildir(_) => ("maildir:", &[]),
            DeliverTarget::Mda(_) => ("mda:", &["timeout"]),
            DeliverTarget::Mta(_) => (
                "smtp and lmtp",
                &[
                    "tls",
                    "ca_file",
                    "fingerprint",
                    "username",
                    "password",
                    "password_command",
                    "password_file",
                    "auth",
                    "allow_plaintext_auth",
                    "timeout",
                ],
            ),
            DeliverTarget::Imap(_) => return Ok(()),
        };
        let present = [
            ("tls", &raw.tls),
            ("ca_file", &raw.ca_file),
            ("fingerprint", &raw.fingerprint),
            ("username", &raw.username),
            ("password", &raw.password),
            ("password_command", &raw.password_command),
            ("password_file", &raw.password_file),
            ("auth", &raw.auth),
            ("allow_plaintext_auth", &raw.allow_plaintext_auth),
            ("timeout", &raw.timeout),
            ("seen", &raw.seen),
        ];
        for (key, field) in present {
            if let Some(value) = field
                && !allowed.contains(&key)
            {
                return Err(self.error(
                    value.span(),
                    &format!("delivery.{key}"),
                    format!("does not apply to deliver = \"{kind}…\""),
                ));
            }
        }
        Ok(())
    }

    /// `to`: the envelope recipients.
    fn recipients(&self, raw: &RawAccount) -> Result<Vec<String>, Error> {
        let Some(value) = &raw.to else {
            return Ok(vec![local_user()]);
        };
        self.convert("to", value, |value| {
            let list = match value {
                toml::Value::String(one) => vec![one.clone()],
                toml::Value::Array(items) => items
                    .iter()
                    .map(|item| as_str(item).map(str::to_owned))
                    .collect::<Result<_, _>>()?,
                other => return Err(wrong_type("a list of addresses", other)),
            };
            if list.is_empty() {
                return Err("needs at least one recipient".to_owned());
            }
            for recipient in &list {
                let bad = recipient.is_empty()
                    || recipient.len() > 256
                    || recipient
                        .chars()
                        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | '"' | ','));
                if bad {
                    return Err(format!(
                        "`{recipient}` is not a plain address such as \"alice@example.org\" or \"alice\""
                    ));
                }
            }
            Ok(list)
        })
    }

    /// A path value that must name an existing file.
    fn existing_file(&self, key: &str, value: &RawValue) -> Result<PathBuf, Error> {
        let path = self.path_value(key, value)?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(self.error(
                value.span(),
                key,
                format!("{} does not exist or is not a file", path.display()),
            ))
        }
    }

    /// A string value naming a path, expanded (see the module documentation).
    fn path_value(&self, key: &str, value: &RawValue) -> Result<PathBuf, Error> {
        self.convert(key, value, |value| {
            as_str(value).and_then(|path| self.expand_path(path))
        })
    }

    /// Expands `~`, `$VAR`, `${VAR}` and `$$` in `path`.
    fn expand_path(&self, path: &str) -> Result<PathBuf, String> {
        if path.is_empty() {
            return Err("the path is empty".to_owned());
        }
        let (mut expanded, mut rest) = match path.strip_prefix('~') {
            Some(after) if after.is_empty() || after.starts_with('/') => {
                (self.variable("HOME")?, after)
            }
            Some(_) => {
                return Err(
                    "`~user` is not supported; write the directory out, or use `~/`".to_owned(),
                );
            }
            None => (String::new(), path),
        };
        while let Some(dollar) = rest.find('$') {
            expanded.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(after) = after.strip_prefix('$') {
                expanded.push('$');
                rest = after;
                continue;
            }
            let (name, after) = match after.strip_prefix('{') {
                Some(braced) => braced
                    .split_once('}')
                    .ok_or_else(|| "`${` has no closing `}`".to_owned())?,
                None => after.split_at(
                    after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len()),
                ),
            };
            if !is_variable_name(name) {
                return Err(format!(
                    "`${name}` is not a variable name; write `$$` for a literal `$`"
                ));
            }
            expanded.push_str(&self.variable(name)?);
            rest = after;
        }
        expanded.push_str(rest);
        Ok(PathBuf::from(expanded))
    }

    fn variable(&self, name: &str) -> Result<String, String> {
        (self.env)(name).map_err(|err| match err {
            VarError::NotPresent => format!(
                "the environment variable `{name}` is not set \
                 (write `$$` for a literal `$`)"
            ),
            VarError::NotUnicode(_) => {
                format!("the environment variable `{name}` is not valid UTF-8")
            }
        })
    }

    /// Converts `value` with `convert`, locating any error at `key`.
    fn convert<T>(
        &self,
        key: &str,
        value: &RawValue,
        convert: impl FnOnce(&toml::Value) -> Result<T, String>,
    ) -> Result<T, Error> {
        convert(value.get_ref()).map_err(|problem| self.error(value.span(), key, problem))
    }

    /// Like [`Parser::convert`], for a key that may be absent.
    fn optional<T>(
        &self,
        key: &str,
        field: &Option<RawValue>,
        convert: impl FnOnce(&toml::Value) -> Result<T, String>,
    ) -> Result<Option<T>, Error> {
        field
            .as_ref()
            .map(|value| self.convert(key, value, convert))
            .transpose()
    }

    /// An error about `key`, whose value (or section) is at `span`.
    fn error(&self, span: Range<usize>, key: &str, problem: impl fmt::Display) -> Error {
        Error::new(Kind::Config, self.located(span, key, problem))
    }

    /// `FILE:LINE: key `KEY`: PROBLEM`.
    fn located(&self, span: Range<usize>, key: &str, problem: impl fmt::Display) -> String {
        format!(
            "{}:{}: key `{key}`: {problem}",
            self.path.display(),
            self.line(span.start)
        )
    }

    /// Translates a TOML syntax error or an unknown key reported by serde.
    fn toml_error(&self, err: &toml::de::Error) -> Error {
        let message = err.message();
        let Some(span) = err.span() else {
            return Error::new(Kind::Config, format!("{}: {message}", self.path.display()));
        };
        if let Some((key, allowed)) = parse_unknown_field_message(message) {
            return self.error(span, key, unknown_key_problem(key, &allowed));
        }
        match key_on_line(self.text, span.start) {
            Some(key) => self.error(span, key, message),
            None => Error::new(
                Kind::Config,
                format!(
                    "{}:{}: {message}",
                    self.path.display(),
                    self.line(span.start)
                ),
            ),
        }
    }

    /// The 1-based line number of byte `offset`.
    fn line(&self, offset: usize) -> usize {
        let before = &self.text.as_bytes()[..offset.min(self.text.len())];
        before.iter().filter(|&&byte| byte == b'\n').count() + 1
    }
}

/// Splits serde's `unknown field `KEY`, expected one of `A`, `B`` into the
/// key and the allowed keys.
///
/// This relies on the wording of serde's `Error::unknown_field`, which has
/// been stable since serde 1.0; should it ever change, the error is still
/// reported, only without the suggestion.
fn parse_unknown_field_message(message: &str) -> Option<(&str, Vec<&str>)> {
    let (key, expected) = message.strip_prefix("unknown field `")?.split_once('`')?;
    // The allowed keys are the even-numbered pieces between backticks.
    let allowed = expected.split('`').skip(1).step_by(2).collect();
    Some((key, allowed))
}

fn unknown_key_problem(key: &str, allowed: &[&str]) -> String {
    match closest_key(key, allowed) {
        Some(suggestion) => format!("unknown key; did you mean `{suggestion}`?"),
        None if allowed.is_empty() => "unknown key".to_owned(),
        None => format!(
            "unknown key; the keys allowed here are {}",
            allowed.join(", ")
        ),
    }
}

/// The allowed key that `key` is most plausibly a misspelling of.
fn closest_key<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|&candidate| (edit_distance(key, candidate), candidate))
        .filter(|&(distance, _)| distance <= 2 && distance < key.chars().count())
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// The Levenshtein distance between `a` and `b`, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, &b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The key assigned on the line holding byte `offset`, for errors serde
/// reports without naming the key (a wrong kind of table, a duplicate key, a
/// syntax error after `=`).
fn key_on_line(text: &str, offset: usize) -> Option<&str> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |newline| newline + 1);
    let end = text[offset..]
        .find('\n')
        .map_or(text.len(), |newline| offset + newline);
    let (key, _) = text[start..end].split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with(['[', '#'])).then_some(key)
}

// ---------------------------------------------------------------------------
// Value conversions. They return a bare description of the problem, which
// `Parser::convert` turns into a located error. Type errors name only the
// type found, never the value, which could be a misplaced password.

fn wrong_type(expected: &str, found: &toml::Value) -> String {
    let found = found.type_str();
    let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("expected {expected}, found {article} {found}")
}

fn as_str(value: &toml::Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| wrong_type("a string", value))
}

fn as_non_empty_str(value: &toml::Value) -> Result<&str, String> {
    match as_str(value)? {
        "" => Err("must not be empty".to_owned()),
        text => Ok(text),
    }
}

fn as_bool(value: &toml::Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| wrong_type("true or false", value))
}

fn as_port(value: &toml::Value) -> Result<u16, String> {
    let number = value
        .as_integer()
        .ok_or_else(|| wrong_type("a port number", value))?;
    u16::try_from(number)
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("{number} is not a port number (1 to 65535)"))
}

/// `timeout`: a whole number of seconds, or a string such as "90s".
fn as_timeout(value: &toml::Value) -> Result<Duration, String> {
    let timeout = match value {
        toml::Value::Integer(seconds) => u64::try_from(*seconds)
            .map(Duration::from_secs)
            .map_err(|_| "must be greater than zero".to_owned())?,
        toml::Value::String(text) => parse_duration(text)?,
        other => return Err(wrong_type("a duration such as \"90s\"", other)),
    };
    if timeout.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(timeout)
}

/// `poll_interval`, `interval`: like `timeout`, and at least a second, so
/// that a typo such as "5ms" cannot make the daemon hammer a server.
fn as_interval(value: &toml::Value) -> Result<Duration, String> {
    let interval = as_timeout(value)?;
    if interval < Duration::from_secs(1) {
        return Err("must be at least 1 second, e.g. \"90s\" or \"15m\"".to_owned());
    }
    Ok(interval)
}

/// `idle_timeout`: between 10 seconds and 29 minutes (RFC 9051 lets a
/// server drop a client idle for 30 minutes).
fn as_idle_timeout(value: &toml::Value) -> Result<Duration, String> {
    let timeout = as_timeout(value)?;
    if timeout < Duration::from_secs(10) || timeout > Duration::from_secs(29 * 60) {
        return Err(
            "must be between \"10s\" and \"29m\": servers may drop a client that idles \
             for 30 minutes"
                .to_owned(),
        );
    }
    Ok(timeout)
}

/// Parses `500ms`, `90s`, `15m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "`{text}` is not a duration; write a whole number followed by \
             ms, s, m or h, e.g. \"90s\""
        )
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// `max_size`: a whole number of bytes, or a string such as "25MB".
fn as_size(value: &toml::Value) -> Result<u64, String> {
    let size = match value {
        // A negative size is refused below, like zero.
        toml::Value::Integer(bytes) => u64::try_from(*bytes).unwrap_or(0),
        toml::Value::String(text) => parse_size(text)?,
        other => return Err(wrong_type("a size such as \"25MB\"", other)),
    };
    if size == 0 {
        return Err("must be greater than zero".to_owned());
    }
    Ok(size)
}

/// The units a size can be written in, largest first, as [`format_size`]
/// picks them.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses `25MB`, `25 mb`, `1GiB`, `512B` or a bare number of bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "`{text}` is not a size; write a whole number of bytes, optionally followed \
             by B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), \
             e.g. \"25MB\""
        )
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit = match unit.strip_prefix(' ') {
        Some(after_space) if !after_space.is_empty() => after_space,
        _ => unit,
    };
    let bytes_per_unit = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|&(_, bytes)| bytes)
            .ok_or_else(invalid)?
    };
    number
        .checked_mul(bytes_per_unit)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `max_per_poll`: a whole number greater than zero.
fn as_count(value: &toml::Value) -> Result<usize, String> {
    let number = value
        .as_integer()
        .ok_or_else(|| wrong_type("a whole number", value))?;
    usize::try_from(number)
        .ok()
        .filter(|&count| count > 0)
        .ok_or_else(|| "must be greater than zero".to_owned())
}

/// The one IMAP folder whose name is case-insensitive (RFC 3501 §5.1).
const INBOX: &str = "INBOX";

/// True if the folder names `a` and `b` mean the same folder.
fn same_folder(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case(INBOX) && b.eq_ignore_ascii_case(INBOX))
}

/// The mailbox `a` and `b` both fetch, described, if they share one: the
/// same user on the same server (host names compared case-insensitively)
/// with the same protocol, and for IMAP a folder in common.
fn shared_mailbox(a: &Account, b: &Account) -> Option<String> {
    let same_login = a.protocol == b.protocol
        && a.username == b.username
        && a.host.eq_ignore_ascii_case(&b.host)
        && a.port == b.port;
    if !same_login {
        return None;
    }
    let login = format!(
        "{} {}@{}:{}",
        keyword_name(a.protocol),
        a.username,
        a.host,
        a.port
    );
    match a.protocol {
        Protocol::Pop3 => Some(login),
        Protocol::Imap => a
            .folders
            .iter()
            .find(|folder| b.folders.iter().any(|other| same_folder(folder, other)))
            .map(|folder| format!("{login}, folder {}", toml_string(folder))),
    }
}

/// `folders`: a non-empty list of distinct folder names.
fn as_folders(value: &toml::Value) -> Result<Vec<String>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| wrong_type("a list of folder names such as [\"INBOX\"]", value))?;
    if list.is_empty() {
        return Err("must name at least one folder, e.g. [\"INBOX\"]".to_owned());
    }
    let mut folders: Vec<String> = Vec::with_capacity(list.len());
    for item in list {
        let folder = as_str(item).and_then(check_folder_name)?;
        if folders.iter().any(|seen| same_folder(seen, folder)) {
            return Err(format!("`{folder}` is listed twice"));
        }
        folders.push(folder.to_owned());
    }
    Ok(folders)
}

/// A folder name can be anything but empty or holding CR, LF or NUL: a
/// line break would end the IMAP command that carries it, and IMAP has no
/// way to send a NUL in a name.
/// `[USER@]HOST[:PORT]` of a URL, with the user percent-decoded and an
/// IPv6 host in brackets.
fn parse_authority(authority: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let (user, host_port) = match authority.rsplit_once('@') {
        // A `:` in the user part starts a password (a `:` in a user name is
        // written `%3A`). Neither it nor the URL is repeated here: the error
        // would show the password it is warning about.
        Some((user, _)) if user.contains(':') => {
            let problem = "the URL holds a password (USER:PASSWORD@); URLs are shown in \
                           summaries and logs, so keep only the user name in it and set the \
                           password with password, password_command or password_file in \
                           [account.delivery]";
            return Err(problem.to_owned());
        }
        Some((user, rest)) => (Some(percent_decode(user)?), rest),
        None => (None, authority),
    };
    if user.as_deref() == Some("") {
        return Err("the user name before `@` is empty".to_owned());
    }
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("`{host_port}`: unclosed `[`"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("`{host_port}`: expected `:PORT` after `]`")),
                },
            }
        }
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(format!("`{authority}` has no valid host name"));
    }
    let port = match port {
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| format!("`{port}` is not a port number (1-65535)"))?,
        ),
        None => None,
    };
    Ok((user, host.to_owned(), port))
}

/// Decodes `%XX` escapes (UTF-8), e.g. `Sent%20Items`, `me%40example.org`.
fn percent_decode(text: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail
                .get(..2)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .ok_or_else(|| format!("`{text}`: `%` must be followed by two hex digits"))?;
            bytes.push(hex_value(hex[0]) << 4 | hex_value(hex[1]));
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("`{text}` does not decode to UTF-8"))
}

/// Encodes what [`percent_decode`] decodes, for showing a URL.
fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut encoded = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn check_folder_name(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        Err("a folder name must not be empty".to_owned())
    } else if name.contains(['\r', '\n', '\0']) {
        Err(format!(
            "the folder name {} contains a line break or NUL byte",
            toml_string(name)
        ))
    } else {
        Ok(name)
    }
}

fn parse_account_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(name.to_owned())
    } else {
        // Names become file names in the state directory, hence the limits.
        Err(format!(
            "`{name}` is not a valid account name; use only letters, digits, \
             `.`, `_` and `-`"
        ))
    }
}

/// The words a configuration enum is written as.
trait Keyword: Copy + PartialEq + 'static {
    /// Every variant with its word, in the order they are documented.
    const WORDS: &'static [(&'static str, Self)];
}

impl Keyword for Protocol {
    const WORDS: &'static [(&'static str, Self)] =
        &[("pop3", Protocol::Pop3), ("imap", Protocol::Imap)];
}

impl Keyword for TlsMode {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("implicit", TlsMode::Implicit),
        ("starttls", TlsMode::StartTls),
        ("none", TlsMode::None),
    ];
}

impl Keyword for AuthMethod {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("auto", AuthMethod::Auto),
        ("user", AuthMethod::User),
        ("apop", AuthMethod::Apop),
        ("plain", AuthMethod::Plain),
        ("login", AuthMethod::Login),
        ("cram-md5", AuthMethod::CramMd5),
        ("xoauth2", AuthMethod::XOAuth2),
        ("oauthbearer", AuthMethod::OAuthBearer),
        ("scram-sha-256", AuthMethod::ScramSha256),
    ];
}

impl Keyword for OnReject {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("keep", OnReject::Keep),
        ("bounce", OnReject::Bounce),
        ("delete", OnReject::Delete),
    ];
}

impl Keyword for FetchMode {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("new", FetchMode::New),
        ("unseen", FetchMode::Unseen),
        ("all", FetchMode::All),
    ];
}

/// Case-insensitively, since `STARTTLS` or `CRAM-MD5` is how people often
/// write these.
fn parse_keyword<T: Keyword>(word: &str) -> Result<T, String> {
    T::WORDS
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(word))
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            let allowed: Vec<String> = T::WORDS
                .iter()
                .map(|(candidate, _)| format!("\"{candidate}\""))
                .collect();
            format!("`{word}` is not one of {}", allowed.join(", "))
        })
}

/// The word `value` is written as in the configuration file.
fn keyword_name<T: Keyword>(value: T) -> &'static str {
    T::WORDS
        .iter()
        .find(|&&(_, candidate)| candidate == value)
        .map_or("?", |&(word, _)| word)
}

/// Parses `sha256:AB:CD:…`: 32 bytes in hex, colons and prefix optional,
/// any case.
fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let prefix = "sha256:";
    let hex_part = match text.get(..prefix.len()) {
        Some(start) if start.eq_ignore_ascii_case(prefix) => &text[prefix.len()..],
        _ => text,
    };
    let hex: Vec<u8> = hex_part.bytes().filter(|&byte| byte != b':').collect();
    if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(
            "expected a SHA-256 fingerprint: 32 bytes as 64 hex digits, optionally \
             separated by colons and prefixed with \"sha256:\""
                .to_owned(),
        );
    }
    let mut fingerprint = [0; 32];
    for (byte, pair) in fingerprint.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    Ok(fingerprint)
}

/// The value of an ASCII hex digit (already checked to be one).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

fn is_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn default_port(protocol: Protocol, tls: TlsMode) -> u16 {
    match (protocol, tls) {
        (Protocol::Pop3, TlsMode::Implicit) => 995,
        (Protocol::Pop3, TlsMode::StartTls | TlsMode::None) => 110,
        (Protocol::Imap, TlsMode::Implicit) => 993,
        (Protocol::Imap, TlsMode::StartTls | TlsMode::None) => 143,
    }
}

// ---------------------------------------------------------------------------
// Printing the effective configuration (`--check-config`).

/// Prints the effective configuration, with defaults filled in and paths
/// expanded, as TOML that [`parse`] accepts. An inline password is shown as
/// `****`; a password command or file is shown, as it is not a secret.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# Effective configuration read from {}",
            toml_string(&self.path.to_string_lossy())
        )?;
        writeln!(f, "[general]")?;
        writeln!(f, "state_dir = {}", toml_path(&self.general.state_dir))?;
        writeln!(
            f,
            "poll_interval = \"{}\"",
            format_duration(self.general.poll_interval)
        )?;
        writeln!(f, "max_connections = {}", self.general.max_connections)?;
        for account in &self.accounts {
            writeln!(f)?;
            write_account(f, account)?;
        }
        Ok(())
    }
}

fn write_account(f: &mut fmt::Formatter<'_>, account: &Account) -> fmt::Result {
    writeln!(f, "[[account]]")?;
    writeln!(f, "name = {}", toml_string(&account.name))?;
    writeln!(f, "protocol = \"{}\"", keyword_name(account.protocol))?;
    writeln!(f, "host = {}", toml_string(&account.host))?;
    writeln!(f, "port = {}", account.port)?;
    write_tls(f, account.tls, &account.ca_file, &account.fingerprint)?;
    writeln!(f, "username = {}", toml_string(&account.username))?;
    write_password(f, &account.password)?;
    writeln!(f, "auth = \"{}\"", keyword_name(account.auth))?;
    writeln!(f, "allow_plaintext_auth = {}", account.allow_plaintext_auth)?;
    writeln!(f, "keep = {}", account.keep)?;
    match &account.deliver {
        DeliverTarget::Maildir(path) => writeln!(
            f,
            "deliver = {}",
            toml_string(&format!("maildir:{}", escape_path(path)))
        )?,
        other => writeln!(f, "deliver = {}", toml_string(&deliver_url(other)))?,
    }
    let to: Vec<String> = account.to.iter().map(|to| toml_string(to)).collect();
    writeln!(f, "to = [{}]", to.join(", "))?;
    match &account.envelope_from {
        EnvelopeFrom::ReturnPath => writeln!(f, "envelope_from = \"return-path\"")?,
        EnvelopeFrom::Fixed(sender) => writeln!(
            f,
            "envelope_from = {}",
            toml_string(&format!("<{}>", sender.address()))
        )?,
    }
    writeln!(f, "on_reject = \"{}\"", keyword_name(account.on_reject))?;
    writeln!(f, "received_header = {}", account.received_header)?;
    writeln!(f, "timeout = \"{}\"", format_duration(account.timeout))?;
    if let Some(max_size) = account.max_size {
        writeln!(f, "max_size = \"{}\"", format_size(max_size))?;
    }
    if let Some(max_per_poll) = account.max_per_poll {
        writeln!(f, "max_per_poll = {max_per_poll}")?;
    }
    if let Some(interval) = account.interval {
        writeln!(f, "interval = \"{}\"", format_duration(interval))?;
    }
    // The IMAP-only keys, which a POP3 account must not have.
    if account.protocol == Protocol::Imap {
        let folders: Vec<String> = account
            .folders
            .iter()
            .map(|folder| toml_string(folder))
            .collect();
        writeln!(f, "folders = [{}]", folders.join(", "))?;
        writeln!(f, "fetch = \"{}\"", keyword_name(account.fetch))?;
        writeln!(f, "mark_seen = {}", account.mark_seen)?;
        if let Some(move_to) = &account.move_to {
            writeln!(f, "move_to = {}", toml_string(move_to))?;
        }
        writeln!(f, "idle = {}", account.idle)?;
        writeln!(
            f,
            "idle_timeout = \"{}\"",
            format_duration(account.idle_timeout)
        )?;
    }
    write_delivery(f, &account.deliver)
}

/// `tls`, and `ca_file` and `fingerprint` when set.
fn write_tls(
    f: &mut fmt::Formatter<'_>,
    tls: TlsMode,
    ca_file: &Option<PathBuf>,
    fingerprint: &Option<[u8; 32]>,
) -> fmt::Result {
    writeln!(f, "tls = \"{}\"", keyword_name(tls))?;
    if let Some(ca_file) = ca_file {
        writeln!(f, "ca_file = {}", toml_path(ca_file))?;
    }
    if let Some(fingerprint) = fingerprint {
        writeln!(
            f,
            "fingerprint = \"sha256:{}\"",
            hex_fingerprint(fingerprint)
        )?;
    }
    Ok(())
}

fn hex_fingerprint(fingerprint: &[u8; 32]) -> String {
    let hex: Vec<String> = fingerprint
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect();
    hex.join(":")
}

/// The password source, never the password itself.
fn write_password(f: &mut fmt::Formatter<'_>, password: &PasswordSource) -> fmt::Result {
    match password {
        PasswordSource::None => Ok(()),
        PasswordSource::Inline(_) => writeln!(f, "password = \"****\""),
        PasswordSource::Command(command) => {
            writeln!(f, "password_command = {}", toml_string(command))
        }
        PasswordSource::File(path) => writeln!(f, "password_file = {}", toml_path(path)),
    }
}

/// `deliver` as written in the file (the path of `maildir:` aside).
fn deliver_url(target: &DeliverTarget) -> String {
    let tcp = |host: &str, port: u16| {
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    };
    match target {
        DeliverTarget::Maildir(path) => format!("maildir:{}", escape_path(path)),
        DeliverTarget::Mda(mda) => format!("mda:{}", mda.command),
        DeliverTarget::Mta(mta) => match (&mta.address, mta.protocol) {
            (MtaAddress::Unix(path), _) => format!("lmtp:{}", escape_path(path)),
            (MtaAddress::Tcp { host, port }, MtaProtocol::Lmtp) => {
                format!("lmtp://{}", tcp(host, *port))
            }
            (MtaAddress::Tcp { host, port }, MtaProtocol::Smtp) => {
                let scheme = if mta.server.tls == TlsMode::Implicit {
                    "smtps"
                } else {
                    "smtp"
                };
                format!("{scheme}://{}", tcp(host, *port))
            }
        },
        DeliverTarget::Imap(imap) => format!(
            "{}://{}/{}",
            if imap.server.tls == TlsMode::Implicit {
                "imaps"
            } else {
                "imap"
            },
            tcp(&imap.host, imap.port),
            percent_encode(&imap.folder, b"/")
        ),
    }
}

/// The `[account.delivery]` table, when the target has one.
fn write_delivery(f: &mut fmt::Formatter<'_>, target: &DeliverTarget) -> fmt::Result {
    let server = match target {
        DeliverTarget::Maildir(_) => return Ok(()),
        DeliverTarget::Mda(mda) => {
            writeln!(f, "[account.delivery]")?;
            return writeln!(f, "timeout = \"{}\"", format_duration(mda.timeout));
        }
        DeliverTarget::Mta(mta) => &mta.server,
        DeliverTarget::Imap(imap) => &imap.server,
    };
    writeln!(f, "[account.delivery]")?;
    write_tls(f, server.tls, &server.ca_file, &server.fingerprint)?;
    if let Some(username) = &server.username {
        writeln!(f, "username = {}", toml_string(username))?;
    }
    write_password(f, &server.password)?;
    writeln!(f, "auth = \"{}\"", keyword_name(server.auth))?;
    writeln!(f, "allow_plaintext_auth = {}", server.allow_plaintext_auth)?;
    writeln!(f, "timeout = \"{}\"", format_duration(server.timeout))?;
    if let DeliverTarget::Imap(imap) = target {
        writeln!(f, "seen = {}", imap.seen)?;
    }
    Ok(())
}

/// A path as a TOML string that expands back to the same path.
fn toml_path(path: &Path) -> String {
    toml_string(&escape_path(path))
}

/// Undoes expansion: `$` becomes `$$`, and a leading `~` (which can only
/// have come from a variable) is protected by `./`.
fn escape_path(path: &Path) -> String {
    let path = path.to_string_lossy().replace('$', "$$");
    if path.starts_with('~') {
        format!("./{path}")
    } else {
        path
    }
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// `bytes` in the largest unit that divides it exactly, e.g. `25MB`.
fn format_size(bytes: u64) -> String {
    let (unit, bytes_per_unit) = SIZE_UNITS
        .iter()
        .find(|&&(_, bytes_per_unit)| bytes.is_multiple_of(bytes_per_unit))
        .copied()
        .expect("the last unit, B, divides every size");
    format!("{}{unit}", bytes / bytes_per_unit)
}

/// `90s`, or `1500ms` when not a whole number of seconds.
fn format_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;

    const FILE: &str = "test/fetchrc";

    /// An environment with just `HOME`, `MAILDIRS` and `EMPTY`.
    fn test_env(name: &str) -> Result<String, VarError> {
        match name {
            "HOME" => Ok("/home/alice".to_owned()),
            "MAILDIRS" => Ok("/srv/mail".to_owned()),
            "EMPTY" => Ok(String::new()),
            _ => Err(VarError::NotPresent),
        }
    }

    fn parse_test(text: &str) -> Result<Config, Error> {
        Parser {
            path: Path::new(FILE),
            text,
            env: &test_env,
        }
        .config()
    }

    fn parse_ok(text: &str) -> Config {
        parse_test(text).unwrap_or_else(|err| panic!("{err}\n---\n{text}"))
    }

    /// An account with only the required keys, plus `extra` lines.
    fn account_with(extra: &str) -> String {
        format!(
            "[[account]]\n\
             name = \"home\"\n\
             protocol = \"pop3\"\n\
             host = \"pop.example.com\"\n\
             username = \"alice\"\n\
             deliver = \"maildir:~/Mail/home\"\n\
             {extra}"
        )
    }

    /// Asserts that `text` is rejected with a message locating `key` at `line`
    /// and containing `fragment`.
    #[track_caller]
    fn assert_config_error(text: &str, line: usize, key: &str, fragment: &str) {
        let err = match parse_test(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(err) => err,
        };
        assert_eq!(err.kind, Kind::Config, "{err}");
        let location = format!("{FILE}:{line}: key `{key}`: ");
        assert!(
            err.message.starts_with(&location),
            "want {location}…, got: {err}"
        );
        assert!(
            err.message.contains(fragment),
            "want …{fragment}…, got: {err}"
        );
    }

    const PIN_HEX: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:\
                           AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    fn pin_bytes() -> [u8; 32] {
        let pattern = [0xAB, 0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89];
        std::array::from_fn(|i| pattern[i % pattern.len()])
    }

    #[test]
    fn documented_minimum_schema_parses_exactly() {
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            r#"[general]
state_dir = "/var/lib/mailfetch"
[[account]]
name = "home"
protocol = "pop3"
host = "pop.example.com"
port = 995
tls = "implicit"
ca_file = "{ca_file}"
fingerprint = "sha256:{PIN_HEX}"
username = "alice"
password = "secret"
auth = "auto"
keep = false
deliver = "maildir:~/Mail/home"
"#,
            ca_file = ca_file.path().display()
        );
        let config = parse_ok(&text);
        assert_eq!(config.path, Path::new(FILE));
        assert_eq!(config.general.state_dir, Path::new("/var/lib/mailfetch"));
        let [account] = config.accounts.as_slice() else {
            panic!("one account expected");
        };
        assert_eq!(account.name, "home");
        assert_eq!(account.protocol, Protocol::Pop3);
        assert_eq!(account.host, "pop.example.com");
        assert_eq!(account.port, 995);
        assert_eq!(account.tls, TlsMode::Implicit);
        assert_eq!(account.ca_file.as_deref(), Some(ca_file.path()));
        assert_eq!(account.fingerprint, Some(pin_bytes()));
        assert_eq!(account.username, "alice");
        assert_eq!(
            account.password,
            PasswordSource::Inline(Secret::new("secret".to_owned()))
        );
        assert_eq!(account.auth, AuthMethod::Auto);
        assert!(!account.keep);
        assert_eq!(
            account.deliver,
            DeliverTarget::Maildir(PathBuf::from("/home/alice/Mail/home"))
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let config = parse_ok(&account_with(""));
        assert_eq!(
            config.general.state_dir,
            Path::new("/home/alice/.local/state/mailfetch")
        );
        let account = &config.accounts[0];
        assert_eq!(account.port, 995);
        assert_eq!(account.tls, TlsMode::Implicit);
        assert_eq!(account.ca_file, None);
        assert_eq!(account.fingerprint, None);
        assert_eq!(account.password, PasswordSource::None);
        assert_eq!(account.auth, AuthMethod::Auto);
        assert!(!account.allow_plaintext_auth);
        assert!(!account.keep);
        assert!(account.received_header);
        assert_eq!(account.timeout, Duration::from_secs(60));
    }

    #[test]
    fn port_defaults_to_110_without_implicit_tls() {
        for tls in ["starttls", "none", "STARTTLS"] {
            let config = parse_ok(&account_with(&format!("tls = \"{tls}\"\n")));
            assert_eq!(config.accounts[0].port, 110, "{tls}");
        }
    }

    #[test]
    fn every_key_is_read() {
        let text = account_with(
            "port = 1995\n\
             tls = \"starttls\"\n\
             password_command = \"pass show mail/home\"\n\
             auth = \"cram-md5\"\n\
             allow_plaintext_auth = true\n\
             keep = true\n\
             received_header = false\n\
             timeout = \"15m\"\n",
        );
        let account = &parse_ok(&text).accounts[0];
        assert_eq!(account.port, 1995);
        assert_eq!(account.tls, TlsMode::StartTls);
        assert_eq!(
            account.password,
            PasswordSource::Command("pass show mail/home".to_owned())
        );
        assert_eq!(account.auth, AuthMethod::CramMd5);
        assert!(account.allow_plaintext_auth);
        assert!(account.keep);
        assert!(!account.received_header);
        assert_eq!(account.timeout, Duration::from_secs(15 * 60));
    }

    #[test]
    fn timeouts() {
        for (written, expected) in [
            ("\"500ms\"", Duration::from_millis(500)),
            ("\"90s\"", Duration::from_secs(90)),
            ("\"15m\"", Duration::from_secs(900)),
            ("\"1h\"", Duration::from_secs(3600)),
            ("\"45\"", Duration::from_secs(45)),
            ("30", Duration::from_secs(30)),
        ] {
            let config = parse_ok(&account_with(&format!("timeout = {written}\n")));
            assert_eq!(config.accounts[0].timeout, expected, "{written}");
        }
        for (written, fragment) in [
            ("0", "greater than zero"),
            ("-5", "greater than zero"),
            ("\"0s\"", "greater than zero"),
            ("\"1.5s\"", "not a duration"),
            ("\"5 minutes\"", "not a duration"),
            ("\"s\"", "not a duration"),
            ("1.5", "found a float"),
        ] {
            let text = account_with(&format!("timeout = {written}\n"));
            assert_config_error(&text, 7, "timeout", fragment);
        }
    }

    #[test]
    fn fingerprint_spellings() {
        let compact = PIN_HEX.replace(':', "");
        for written in [
            format!("sha256:{PIN_HEX}"),
            format!("SHA256:{}", PIN_HEX.to_lowercase()),
            PIN_HEX.to_owned(),
            compact.clone(),
            compact.to_lowercase(),
        ] {
            assert_eq!(parse_fingerprint(&written), Ok(pin_bytes()), "{written}");
        }
        for written in [
            "",
            "sha256:",
            &compact[2..],
            &format!("{compact}00"),
            &compact.replace('A', "G"),
            "sha1:AB:CD",
        ] {
            assert!(parse_fingerprint(written).is_err(), "{written}");
        }
    }

    #[test]
    fn unknown_keys_get_a_suggestion_or_the_list() {
        assert_config_error(
            &account_with("prot = 995\n"),
            7,
            "prot",
            "did you mean `port`?",
        );
        assert_config_error(
            &account_with("passwd = \"x\"\n"),
            7,
            "passwd",
            "did you mean `password`?",
        );
        assert_config_error(
            "[general]\nstate_dri = \"/x\"\n",
            2,
            "state_dri",
            "did you mean `state_dir`?",
        );
        assert_config_error(
            &format!("[genral]\n{}", account_with("")),
            1,
            "genral",
            "did you mean `general`?",
        );
        assert_config_error(
            &account_with("colour = \"blue\"\n"),
            7,
            "colour",
            "the keys allowed here are name, protocol, host, port",
        );
    }

    #[test]
    fn wrong_types_name_the_key_but_not_the_value() {
        assert_config_error(
            &account_with("port = \"995\"\n"),
            7,
            "port",
            "expected a port number, found a string",
        );
        assert_config_error(
            &account_with("keep = \"yes\"\n"),
            7,
            "keep",
            "expected true or false, found a string",
        );
        assert_config_error(&account_with("port = 70000\n"), 7, "port", "1 to 65535");
        assert_config_error(&account_with("port = 0\n"), 7, "port", "1 to 65535");
        // A misplaced password must not be echoed.
        let text = account_with("username = 12345678\n");
        let text = text.replace("username = \"alice\"\n", "");
        assert_config_error(&text, 6, "username", "expected a string, found an integer");
        assert!(!parse_test(&text).unwrap_err().message.contains("12345678"));
        // Errors serde reports itself still name the key.
        assert_config_error("account = 5\n", 1, "account", "invalid type");
        assert_config_error("general = 5\n", 1, "general", "[general] table");
        assert_config_error(&account_with("keep = \n"), 7, "keep", "");
    }

    #[test]
    fn missing_required_keys_point_at_the_section() {
        for key in ["name", "protocol", "host", "username", "deliver"] {
            let text = format!(
                "[general]\nstate_dir = \"/tmp\"\n\n{}",
                account_with("").replace(&format!("\n{key} = "), "\n# ")
            );
            assert_config_error(&text, 4, key, "required, but missing");
        }
    }

    #[test]
    fn bad_keywords_list_the_allowed_ones() {
        assert_config_error(
            &account_with("tls = \"ssl\"\n"),
            7,
            "tls",
            "`ssl` is not one of \"implicit\", \"starttls\", \"none\"",
        );
        assert_config_error(
            &account_with("auth = \"md5\"\n"),
            7,
            "auth",
            "\"cram-md5\", \"xoauth2\"",
        );
        let smtp = account_with("").replace("\"pop3\"", "\"smtp\"");
        assert_config_error(&smtp, 3, "protocol", "not one of \"pop3\", \"imap\"");
    }

    #[test]
    fn bad_values() {
        assert_config_error(
            &account_with("fingerprint = \"sha256:AB:CD\"\n"),
            7,
            "fingerprint",
            "64 hex digits",
        );
        let bad_name = account_with("").replace("\"home\"", "\"my home\"");
        assert_config_error(&bad_name, 2, "name", "not a valid account name");
        let mbox = account_with("").replace("maildir:~/Mail/home", "mbox:~/mbox");
        assert_config_error(&mbox, 6, "deliver", "unknown delivery scheme `mbox:`");
        let bare = account_with("").replace("maildir:~/Mail/home", "~/Mail");
        assert_config_error(
            &bare,
            6,
            "deliver",
            "has no scheme; expected one of maildir:PATH",
        );
        assert_config_error(
            &account_with("ca_file = \"/nonexistent/ca.pem\"\n"),
            7,
            "ca_file",
            "/nonexistent/ca.pem does not exist",
        );
        assert_config_error(
            &account_with("password = \"\"\n"),
            7,
            "password",
            "is empty",
        );
        assert_config_error(
            &account_with("password = \"a\\nb\"\n"),
            7,
            "password",
            "line break",
        );
        let no_host = account_with("").replace("\"pop.example.com\"", "\"\"");
        assert_config_error(&no_host, 4, "host", "must not be empty");
    }

    #[test]
    fn only_one_password_source() {
        let text = account_with(
            "password = \"secret\"\n\
             auth = \"plain\"\n\
             password_file = \"~/.secret\"\n",
        );
        assert_config_error(
            &text,
            9,
            "password_file",
            "`password` is already set at line 7",
        );
        assert!(!parse_test(&text).unwrap_err().message.contains("secret\""));
    }

    #[test]
    fn oauth_needs_a_token_source() {
        for auth in ["xoauth2", "oauthbearer"] {
            let text = account_with(&format!("auth = \"{auth}\"\n"));
            assert_config_error(&text, 7, "auth", "password_command");
            let text = account_with(&format!(
                "auth = \"{auth}\"\npassword_file = \"/run/token\"\n"
            ));
            assert_config_error(&text, 7, "auth", "fresh token");
            parse_ok(&account_with(&format!(
                "auth = \"{auth}\"\npassword_command = \"get-token\"\n"
            )));
        }
    }

    #[test]
    fn duplicate_names_name_both_lines() {
        let text = format!("{}\n{}", account_with(""), account_with(""));
        assert_config_error(&text, 9, "name", "`home` is already used at line 2");
    }

    #[test]
    fn two_accounts_on_one_mailbox_name_both_lines() {
        let work = |account: String| account.replace("\"home\"", "\"work\"");
        let pop3 = format!("{}\n{}", account_with(""), work(account_with("")));
        assert_config_error(
            &pop3,
            8,
            "host",
            "account `work` fetches the same mailbox as account `home` at line 1 \
             (pop3 alice@pop.example.com:995)",
        );
        let shouting = format!(
            "{}\n{}",
            account_with(""),
            work(account_with("")).replace("pop.example.com", "POP.Example.COM")
        );
        assert_config_error(&shouting, 8, "host", "same mailbox");

        let imap = |folders: &str| imap_account_with(&format!("folders = {folders}\n"));
        let shared = format!(
            "{}\n{}",
            imap("[\"INBOX\", \"Lists\"]"),
            work(imap("[\"Archive\", \"inbox\"]"))
        );
        assert_config_error(
            &shared,
            9,
            "folders",
            "as account `home` at line 1 (imap alice@imap.example.com:993, folder \"INBOX\")",
        );

        // Another folder, user, port or protocol is another mailbox.
        parse_ok(&format!(
            "{}\n{}",
            imap("[\"INBOX\"]"),
            work(imap("[\"Lists\"]"))
        ));
        for other in [
            work(account_with("")).replace("\"alice\"", "\"bob\""),
            work(account_with("port = 1995\n")),
            work(imap_account_with("")).replace("imap.example.com", "pop.example.com"),
        ] {
            parse_ok(&format!("{}\n{other}", account_with("")));
        }
    }

    #[test]
    fn zero_accounts() {
        assert_config_error(
            "[general]\nstate_dir = \"/x\"\n",
            3,
            "account",
            "add an [[account]]",
        );
        assert_config_error("", 1, "account", "no account is configured");
    }

    #[test]
    fn paths_are_expanded() {
        let text = format!(
            "[general]\nstate_dir = \"${{MAILDIRS}}/state$EMPTY\"\n{}",
            account_with("password_file = \"~/pass/$$HOME\"\n")
                .replace("maildir:~/Mail/home", "maildir:$MAILDIRS/alice_${HOME}")
        );
        let config = parse_ok(&text);
        assert_eq!(config.general.state_dir, Path::new("/srv/mail/state"));
        let account = &config.accounts[0];
        assert_eq!(
            account.password,
            PasswordSource::File(PathBuf::from("/home/alice/pass/$HOME"))
        );
        assert_eq!(
            account.deliver,
            DeliverTarget::Maildir(PathBuf::from("/srv/mail/alice_/home/alice"))
        );
        // Relative paths stay relative.
        let relative = account_with("").replace("maildir:~/Mail/home", "maildir:Mail");
        assert_eq!(
            parse_ok(&relative).accounts[0].deliver,
            DeliverTarget::Maildir(PathBuf::from("Mail"))
        );
    }

    #[test]
    fn bad_expansions_are_errors() {
        for (path, fragment) in [
            ("$NOPE/x", "`NOPE` is not set"),
            ("${NOPE}", "`NOPE` is not set"),
            ("${HOME", "no closing"),
            ("/price/$5", "not a variable name"),
            ("~bob/x", "`~user` is not supported"),
        ] {
            let text = format!("[general]\nstate_dir = \"{path}\"\n{}", account_with(""));
            assert_config_error(&text, 2, "state_dir", fragment);
        }
        let text = account_with("").replace("~/Mail/home", "$UNDEFINED/Mail");
        assert_config_error(&text, 6, "deliver", "`UNDEFINED` is not set");
    }

    #[test]
    fn default_directories_follow_xdg() {
        let xdg = |name: &str| match name {
            "XDG_STATE_HOME" => Ok("/xdg/state".to_owned()),
            _ => test_env(name),
        };
        let relative_xdg = |name: &str| match name {
            "XDG_STATE_HOME" => Ok("relative".to_owned()),
            _ => test_env(name),
        };
        let nothing = |_: &str| Err(VarError::NotPresent);
        assert_eq!(
            xdg_dir(&xdg, "XDG_STATE_HOME", ".local/state"),
            Some(PathBuf::from("/xdg/state/mailfetch"))
        );
        assert_eq!(
            xdg_dir(&relative_xdg, "XDG_STATE_HOME", ".local/state"),
            Some(PathBuf::from("/home/alice/.local/state/mailfetch"))
        );
        assert_eq!(xdg_dir(&nothing, "XDG_CONFIG_HOME", ".config"), None);
    }

    #[test]
    fn plaintext_password_over_the_network_is_refused() {
        for auth in ["user", "plain", "login", "xoauth2", "oauthbearer"] {
            let text = account_with(&format!(
                "tls = \"none\"\nauth = \"{auth}\"\npassword = \"x\"\n"
            ));
            assert_config_error(&text, 7, "tls", "would travel unencrypted");
            assert_config_error(&text, 7, "tls", "allow_plaintext_auth = true");
        }
        // Accepted: explicitly allowed, a loopback host, or a mechanism that
        // does not reveal the password.
        parse_ok(&account_with(
            "tls = \"none\"\nauth = \"user\"\nallow_plaintext_auth = true\n",
        ));
        for host in ["localhost", "127.0.0.2", "::1", "[::1]"] {
            let text =
                account_with("tls = \"none\"\nauth = \"plain\"\n").replace("pop.example.com", host);
            parse_ok(&text);
        }
        for auth in ["auto", "apop", "cram-md5", "scram-sha-256"] {
            parse_ok(&account_with(&format!(
                "tls = \"none\"\nauth = \"{auth}\"\n"
            )));
        }
    }

    /// An IMAP account with only the required keys, plus `extra` lines
    /// (from line 7 on, as in [`account_with`]).
    fn imap_account_with(extra: &str) -> String {
        account_with(extra)
            .replace("\"pop3\"", "\"imap\"")
            .replace("pop.example.com", "imap.example.com")
    }

    #[test]
    fn imap_defaults() {
        let account = &parse_ok(&imap_account_with("")).accounts[0];
        assert_eq!(account.protocol, Protocol::Imap);
        assert_eq!(account.port, 993);
        assert_eq!(account.tls, TlsMode::Implicit);
        assert_eq!(account.folders, ["INBOX"]);
        assert_eq!(account.fetch, FetchMode::New);
        assert_eq!(account.max_size, None);
        assert_eq!(account.max_per_poll, None);
        assert!(!account.mark_seen);
        assert_eq!(account.move_to, None);
        assert!(!account.keep);
        for tls in ["starttls", "none"] {
            let config = parse_ok(&imap_account_with(&format!("tls = \"{tls}\"\n")));
            assert_eq!(config.accounts[0].port, 143, "{tls}");
        }
        // POP3 gets the same defaults, which it has no keys to change.
        let account = &parse_ok(&account_with("")).accounts[0];
        assert_eq!(account.folders, ["INBOX"]);
        assert_eq!(account.fetch, FetchMode::New);
        assert!(!account.mark_seen);
        assert_eq!(account.move_to, None);
    }

    #[test]
    fn every_imap_key_is_read() {
        let text = imap_account_with(
            "folders = [\"INBOX\", \"Lists/rust\", \"Entwürfe\", \"a \\\"quoted\\\" name\"]\n\
             fetch = \"unseen\"\n\
             max_size = \"25MB\"\n\
             max_per_poll = 100\n\
             move_to = \"Archive/2024\"\n",
        );
        let account = &parse_ok(&text).accounts[0];
        assert_eq!(
            account.folders,
            ["INBOX", "Lists/rust", "Entwürfe", "a \"quoted\" name"]
        );
        assert_eq!(account.fetch, FetchMode::Unseen);
        assert_eq!(account.max_size, Some(25_000_000));
        assert_eq!(account.max_per_poll, Some(100));
        assert_eq!(account.move_to.as_deref(), Some("Archive/2024"));

        let text = imap_account_with("keep = true\nmark_seen = true\nfetch = \"ALL\"\n");
        let account = &parse_ok(&text).accounts[0];
        assert!(account.keep && account.mark_seen);
        assert_eq!(account.fetch, FetchMode::All);
    }

    #[test]
    fn daemon_keys() {
        let config = parse_ok(&imap_account_with(""));
        assert_eq!(config.general.poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(config.general.max_connections, 8);
        let account = &config.accounts[0];
        assert_eq!(account.interval, None);
        assert!(!account.idle);
        assert_eq!(account.idle_timeout, Duration::from_secs(25 * 60));

        let text = format!(
            "[general]\npoll_interval = \"2m\"\nmax_connections = 3\n{}",
            imap_account_with("interval = \"90s\"\nidle = true\nidle_timeout = \"20m\"\n")
        );
        let config = parse_ok(&text);
        assert_eq!(config.general.poll_interval, Duration::from_secs(120));
        assert_eq!(config.general.max_connections, 3);
        let account = &config.accounts[0];
        assert_eq!(account.interval, Some(Duration::from_secs(90)));
        assert!(account.idle);
        assert_eq!(account.idle_timeout, Duration::from_secs(20 * 60));
        // --check-config output parses back to the same settings.
        let again = parse_ok(&config.to_string());
        assert_eq!(again.general.poll_interval, Duration::from_secs(120));
        assert_eq!(again.general.max_connections, 3);
        assert_eq!(again.accounts[0].interval, Some(Duration::from_secs(90)));
        assert!(again.accounts[0].idle);
        assert_eq!(again.accounts[0].idle_timeout, Duration::from_secs(20 * 60));
    }

    #[test]
    fn bad_daemon_keys() {
        assert_config_error(
            &format!("[general]\npoll_interval = \"5ms\"\n{}", account_with("")),
            2,
            "poll_interval",
            "at least 1 second",
        );
        assert_config_error(
            &format!("[general]\nmax_connections = 0\n{}", account_with("")),
            2,
            "max_connections",
            "greater than zero",
        );
        assert_config_error(
            &imap_account_with("idle_timeout = \"30m\"\n"),
            7,
            "idle_timeout",
            "between \"10s\" and \"29m\"",
        );
        assert_config_error(
            &imap_account_with("interval = \"soon\"\n"),
            7,
            "interval",
            "is not a duration",
        );
    }

    #[test]
    fn imap_only_keys_are_refused_for_pop3() {
        for setting in [
            "folders = [\"INBOX\"]",
            "fetch = \"new\"",
            "mark_seen = false",
            "move_to = \"Archive\"",
            "idle = true",
            "idle_timeout = \"20m\"",
        ] {
            let key = setting.split_once(' ').unwrap().0;
            let text = account_with(&format!("keep = true\n{setting}\n"));
            assert_config_error(
                &text,
                8,
                key,
                "only applies to protocol = \"imap\", not \"pop3\"",
            );
        }
    }

    #[test]
    fn bad_folders() {
        for (written, fragment) in [
            ("[]", "at least one folder"),
            (
                "\"INBOX\"",
                "expected a list of folder names such as [\"INBOX\"], found a string",
            ),
            ("[\"INBOX\", 5]", "expected a string, found an integer"),
            ("[\"INBOX\", \"\"]", "must not be empty"),
            (
                "[\"INBOX\", \"Lists\", \"Lists\"]",
                "`Lists` is listed twice",
            ),
            // INBOX is the same folder in any case, other names are not.
            ("[\"INBOX\", \"Inbox\"]", "`Inbox` is listed twice"),
            (
                "[\"a\\r\\nb\"]",
                "\"a\\r\\nb\" contains a line break or NUL",
            ),
            ("[\"a\\nb\"]", "line break"),
            ("[\"a\\u0000b\"]", "NUL"),
        ] {
            let text = imap_account_with(&format!("folders = {written}\n"));
            assert_config_error(&text, 7, "folders", fragment);
        }
        parse_ok(&imap_account_with("folders = [\"Lists\", \"lists\"]\n"));
        // A list over several lines is located at its key.
        let text = imap_account_with("folders = [\n  \"INBOX\",\n  \"\",\n]\n");
        assert_config_error(&text, 7, "folders", "must not be empty");
    }

    #[test]
    fn bad_fetch_modes() {
        assert_config_error(
            &imap_account_with("fetch = \"recent\"\n"),
            7,
            "fetch",
            "`recent` is not one of \"new\", \"unseen\", \"all\"",
        );
        assert_config_error(
            &imap_account_with("fetch = true\n"),
            7,
            "fetch",
            "expected a string, found a boolean",
        );
    }

    #[test]
    fn max_size_spellings() {
        for (written, bytes) in [
            ("1", 1),
            ("25000000", 25_000_000),
            ("\"512\"", 512),
            ("\"512B\"", 512),
            ("\"25MB\"", 25_000_000),
            ("\"25 MB\"", 25_000_000),
            ("\"25mb\"", 25_000_000),
            ("\"3kb\"", 3_000),
            ("\"2GB\"", 2_000_000_000),
            ("\"3KiB\"", 3 << 10),
            ("\"10 mib\"", 10 << 20),
            ("\"2GiB\"", 2 << 30),
        ] {
            // Both protocols.
            for text in [account_with(""), imap_account_with("")] {
                let text = format!("{text}max_size = {written}\n");
                assert_eq!(
                    parse_ok(&text).accounts[0].max_size,
                    Some(bytes),
                    "{written}"
                );
            }
        }
        for (written, fragment) in [
            ("0", "greater than zero"),
            ("-1", "greater than zero"),
            ("\"0MB\"", "greater than zero"),
            ("\"\"", "is not a size"),
            ("\"MB\"", "is not a size"),
            ("\"1.5MB\"", "is not a size"),
            ("\"25 XB\"", "`25 XB` is not a size"),
            ("\"25  MB\"", "is not a size"),
            ("\"25 \"", "is not a size"),
            ("\"-5MB\"", "is not a size"),
            ("\"99999999999GB\"", "too large"),
            ("1.5", "expected a size such as \"25MB\", found a float"),
        ] {
            let text = account_with(&format!("max_size = {written}\n"));
            assert_config_error(&text, 7, "max_size", fragment);
        }
    }

    #[test]
    fn sizes_are_shown_in_the_largest_exact_unit() {
        for (bytes, shown) in [
            (1, "1B"),
            (1_500, "1500B"),
            (3_000, "3KB"),
            (3 << 10, "3KiB"),
            (25_000_000, "25MB"),
            (10 << 20, "10MiB"),
            (2_000_000_000, "2GB"),
            (3 << 30, "3GiB"),
            (5_000_000_000_000, "5000GB"),
        ] {
            assert_eq!(format_size(bytes), shown);
            assert_eq!(parse_size(shown), Ok(bytes));
        }
    }

    #[test]
    fn max_per_poll() {
        for text in [account_with(""), imap_account_with("")] {
            let text = format!("{text}max_per_poll = 1\n");
            assert_eq!(parse_ok(&text).accounts[0].max_per_poll, Some(1));
        }
        for (written, fragment) in [
            ("0", "greater than zero"),
            ("-3", "greater than zero"),
            ("\"10\"", "expected a whole number, found a string"),
        ] {
            let text = account_with(&format!("max_per_poll = {written}\n"));
            assert_config_error(&text, 7, "max_per_poll", fragment);
        }
    }

    #[test]
    fn mark_seen_needs_keep() {
        for keep in ["", "keep = false\n"] {
            let text = imap_account_with(&format!("{keep}mark_seen = true\n"));
            let line = if keep.is_empty() { 7 } else { 8 };
            assert_config_error(
                &text,
                line,
                "mark_seen",
                "mark_seen only applies with keep = true",
            );
        }
        // Saying false is harmless.
        parse_ok(&imap_account_with("mark_seen = false\n"));
    }

    #[test]
    fn bad_move_to() {
        assert_config_error(
            &imap_account_with("keep = true\nmove_to = \"Archive\"\n"),
            8,
            "move_to",
            "contradicts keep = true",
        );
        for (written, fragment) in [
            ("\"\"", "must not be empty"),
            ("\"Arch\\nive\"", "line break or NUL"),
            ("\"Arch\\rive\"", "line break or NUL"),
            ("\"Arch\\u0000ive\"", "line break or NUL"),
            ("[\"Archive\"]", "expected a string, found an array"),
            // Moved messages would come back in the next poll.
            ("\"INBOX\"", "`INBOX` is also in folders"),
            ("\"inbox\"", "`INBOX` is also in folders"),
        ] {
            let text = imap_account_with(&format!("move_to = {written}\n"));
            assert_config_error(&text, 7, "move_to", fragment);
        }
        let text = imap_account_with("folders = [\"INBOX\", \"Done\"]\nmove_to = \"Done\"\n");
        assert_config_error(&text, 8, "move_to", "`Done` is also in folders");
    }

    #[test]
    fn imap_auth_methods() {
        assert_config_error(
            &imap_account_with("auth = \"apop\"\n"),
            7,
            "auth",
            "\"apop\" is a POP3 mechanism that protocol = \"imap\" does not have",
        );
        for auth in [
            "auto",
            "user",
            "plain",
            "login",
            "cram-md5",
            "scram-sha-256",
        ] {
            let account =
                &parse_ok(&imap_account_with(&format!("auth = \"{auth}\"\n"))).accounts[0];
            assert_eq!(keyword_name(account.auth), auth);
        }
        for auth in ["xoauth2", "oauthbearer"] {
            let text = imap_account_with(&format!(
                "auth = \"{auth}\"\npassword_command = \"get-token\"\n"
            ));
            parse_ok(&text);
        }
        // LOGIN sends the password as it is, like USER/PASS.
        let text = imap_account_with("tls = \"none\"\nauth = \"user\"\n");
        assert_config_error(
            &text,
            7,
            "tls",
            "auth = \"user\", the password would travel unencrypted",
        );
        parse_ok(&imap_account_with(
            "tls = \"none\"\nauth = \"user\"\nallow_plaintext_auth = true\n",
        ));
    }

    #[test]
    fn imap_display_round_trips() {
        let text = format!(
            "{}\n{}\n{}",
            imap_account_with(
                "folders = [\"INBOX\", \"Entwürfe\", \"say \\\"hi\\\"\"]\n\
                 fetch = \"all\"\nmax_size = \"10 MiB\"\nmax_per_poll = 50\n\
                 move_to = \"Old\"\n"
            ),
            imap_account_with("keep = true\nmark_seen = true\nmax_size = 1500\n")
                .replace("\"home\"", "\"work\"")
                .replace("\"alice\"", "\"bob\""),
            account_with("max_size = \"2gb\"\n").replace("\"home\"", "\"pop\""),
        );
        let shown = parse_ok(&text).to_string();
        for line in [
            "protocol = \"imap\"",
            "port = 993",
            "folders = [\"INBOX\", \"Entwürfe\", \"say \\\"hi\\\"\"]",
            "fetch = \"all\"",
            "max_size = \"10MiB\"",
            "max_per_poll = 50",
            "move_to = \"Old\"",
            "folders = [\"INBOX\"]\nfetch = \"new\"\nmark_seen = true\n",
            "max_size = \"1500B\"",
            "max_size = \"2GB\"",
        ] {
            assert!(shown.contains(line), "want {line}, got:\n{shown}");
        }
        // The POP3 account, last, shows none of the IMAP-only keys.
        let pop3 = shown.rsplit("[[account]]").next().unwrap();
        for key in ["folders", "fetch", "mark_seen", "move_to", "max_per_poll"] {
            assert!(!pop3.contains(&format!("{key} = ")), "{key} in:\n{pop3}");
        }

        let reparsed = parse_ok(&shown);
        assert_eq!(reparsed.to_string(), shown);
        assert_eq!(reparsed.accounts[0].folders[2], "say \"hi\"");
        assert_eq!(reparsed.accounts[0].max_size, Some(10 << 20));
    }

    fn deliver_with(deliver: &str, extra: &str) -> String {
        account_with(extra).replace("maildir:~/Mail/home", deliver)
    }

    fn target(deliver: &str, extra: &str) -> DeliverTarget {
        parse_ok(&deliver_with(deliver, extra)).accounts[0]
            .deliver
            .clone()
    }

    #[test]
    fn mta_targets_and_their_defaults() {
        let DeliverTarget::Mta(local) = target("smtp://localhost", "") else {
            panic!("not an MTA")
        };
        assert_eq!(local.protocol, MtaProtocol::Smtp);
        assert_eq!(
            local.address,
            MtaAddress::Tcp {
                host: "localhost".into(),
                port: 25
            }
        );
        assert_eq!(
            local.server.tls,
            TlsMode::None,
            "a local MTA rarely has TLS"
        );
        assert_eq!(local.server.username, None);

        let DeliverTarget::Mta(relay) = target(
            "smtp://mail.example.org:587",
            "[account.delivery]\nusername = \"me\"\npassword_command = \"pass smtp\"\n",
        ) else {
            panic!("not an MTA")
        };
        assert_eq!(
            relay.server.tls,
            TlsMode::StartTls,
            "a remote relay needs STARTTLS"
        );
        assert_eq!(relay.server.username.as_deref(), Some("me"));
        assert_eq!(
            relay.server.password,
            PasswordSource::Command("pass smtp".into())
        );

        let DeliverTarget::Mta(smtps) = target("smtps://[2001:db8::1]", "") else {
            panic!("not an MTA")
        };
        assert_eq!(smtps.server.tls, TlsMode::Implicit);
        assert_eq!(
            smtps.address,
            MtaAddress::Tcp {
                host: "2001:db8::1".into(),
                port: 465
            }
        );

        let DeliverTarget::Mta(socket) = target("lmtp:/run/dovecot/lmtp", "") else {
            panic!("not an MTA")
        };
        assert_eq!(socket.protocol, MtaProtocol::Lmtp);
        assert_eq!(socket.address, MtaAddress::Unix("/run/dovecot/lmtp".into()));
        assert_eq!(socket.server.tls, TlsMode::None);

        let DeliverTarget::Mta(lmtp) = target("LMTP://127.0.0.1:2424", "") else {
            panic!("not an MTA")
        };
        assert_eq!(
            lmtp.address,
            MtaAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 2424
            }
        );
    }

    #[test]
    fn mda_and_imap_targets() {
        let DeliverTarget::Mda(mda) = target("mda:/usr/bin/procmail -d %T", "") else {
            panic!("not an MDA")
        };
        assert_eq!(mda.command, "/usr/bin/procmail -d %T");
        assert_eq!(mda.timeout, DEFAULT_MDA_TIMEOUT);
        let DeliverTarget::Mda(mda) =
            target("mda:maildrop", "[account.delivery]\ntimeout = \"30s\"\n")
        else {
            panic!("not an MDA")
        };
        assert_eq!(mda.timeout, Duration::from_secs(30));

        let DeliverTarget::Imap(imap) = target(
            "imap://me%40example.org@imap.example.org/Archive%2F2024/Entw%C3%BCrfe",
            "[account.delivery]\npassword = \"s3cret\"\nseen = true\n",
        ) else {
            panic!("not IMAP")
        };
        assert_eq!(imap.host, "imap.example.org");
        assert_eq!(imap.port, 143);
        assert_eq!(imap.folder, "Archive/2024/Entwürfe");
        assert_eq!(imap.server.username.as_deref(), Some("me@example.org"));
        assert_eq!(imap.server.tls, TlsMode::StartTls);
        assert!(imap.seen);

        let DeliverTarget::Imap(imaps) = target(
            "imaps://imap.gmail.com",
            "[account.delivery]\nusername = \"me@gmail.com\"\npassword = \"app password\"\n",
        ) else {
            panic!("not IMAP")
        };
        assert_eq!((imaps.port, imaps.server.tls), (993, TlsMode::Implicit));
        assert_eq!(imaps.folder, "INBOX");
    }

    #[test]
    fn bad_delivery_settings_name_their_key() {
        let unknown = deliver_with("smtp://localhost", "[account.delivery]\nssl = true\n");
        assert_config_error(&unknown, 8, "ssl", "unknown key");
        assert_config_error(
            &deliver_with("maildir:~/Mail", "[account.delivery]\ntls = \"none\"\n"),
            8,
            "delivery.tls",
            "does not apply to deliver = \"maildir:…\"",
        );
        assert_config_error(
            &deliver_with("smtp://localhost", "[account.delivery]\nseen = true\n"),
            8,
            "delivery.seen",
            "does not apply",
        );
        assert_config_error(
            &deliver_with(
                "smtps://mx.example.org",
                "[account.delivery]\ntls = \"starttls\"\n",
            ),
            8,
            "delivery.tls",
            "always uses implicit TLS",
        );
        assert_config_error(
            &deliver_with(
                "smtp://mx.example.org",
                "[account.delivery]\ntls = \"none\"\nusername = \"me\"\npassword = \"x\"\n",
            ),
            8,
            "delivery.tls",
            "would travel unencrypted to mx.example.org",
        );
        assert_config_error(
            &deliver_with(
                "smtp://mx.example.org",
                "[account.delivery]\nusername = \"me\"\n",
            ),
            8,
            "delivery.username",
            "set both a user name and a password",
        );
        assert_config_error(
            &deliver_with(
                "smtp://localhost",
                "[account.delivery]\nauth = \"cram-md5\"\n",
            ),
            8,
            "delivery.auth",
            "not available for smtp",
        );
        assert_config_error(
            &deliver_with("imap://imap.example.org/Archive", ""),
            6,
            "deliver",
            "IMAP delivery needs a user name",
        );
        assert_config_error(
            &deliver_with("smtp://user@localhost", ""),
            6,
            "deliver",
            "not in the URL",
        );
        assert_config_error(
            &deliver_with("smtp://localhost:0", ""),
            6,
            "deliver",
            "not a port",
        );
        assert_config_error(
            &deliver_with("lmtp:run/lmtp", ""),
            6,
            "deliver",
            "lmtp:/PATH/TO/SOCKET",
        );
        assert_config_error(&deliver_with("mda: ", ""), 6, "deliver", "needs a command");
        assert_config_error(&deliver_with("mda:procmail 'a", ""), 6, "deliver", "quote");
        assert_config_error(
            &deliver_with("imap://u@h/a%zz", ""),
            6,
            "deliver",
            "two hex digits",
        );
    }

    #[test]
    fn a_password_in_a_delivery_url_is_refused_without_showing_it() {
        for url in [
            "imaps://bob:hunter2@imap.example.org/",
            "imap://bob:hunter2@imap.example.org:143/Archive",
            "imaps://bob:hun@ter2@imap.example.org/",
            "smtp://bob:hunter2@mail.example.org",
            "smtps://bob:hunter2@[::1]:465",
            "lmtp://bob:hunter2@localhost",
        ] {
            let text = deliver_with(url, "");
            assert_config_error(&text, 6, "deliver", "holds a password");
            let err = parse_test(&text).unwrap_err();
            assert!(!err.message.contains("hunter2"), "{err}");
            assert!(!err.message.contains("ter2"), "{err}");
        }
        // A `:` that is part of the user name is written `%3A`.
        let DeliverTarget::Imap(imap) = target(
            "imaps://bob%3Ax@imap.example.org/",
            "[account.delivery]\npassword_command = \"pass x\"\n",
        ) else {
            panic!("not IMAP")
        };
        assert_eq!(imap.server.username.as_deref(), Some("bob:x"));
    }

    #[test]
    fn envelope_keys() {
        let account = &parse_ok(&account_with("")).accounts[0];
        assert_eq!(account.to, [local_user()]);
        assert_eq!(account.envelope_from, EnvelopeFrom::ReturnPath);
        assert_eq!(account.on_reject, OnReject::Keep);

        let account = &parse_ok(&account_with(
            "to = [\"alice@localhost\", \"bob\"]\nenvelope_from = \"<>\"\non_reject = \"bounce\"\n",
        ))
        .accounts[0];
        assert_eq!(account.to, ["alice@localhost", "bob"]);
        assert_eq!(account.envelope_from, EnvelopeFrom::Fixed(Sender::Null));
        assert_eq!(account.on_reject, OnReject::Bounce);
        let account = &parse_ok(&account_with(
            "to = \"carol@example.org\"\nenvelope_from = \"fetch@example.org\"\n",
        ))
        .accounts[0];
        assert_eq!(account.to, ["carol@example.org"]);
        assert_eq!(
            account.envelope_from,
            EnvelopeFrom::Fixed(Sender::Address("fetch@example.org".into()))
        );

        assert_config_error(
            &account_with("to = []\n"),
            7,
            "to",
            "at least one recipient",
        );
        assert_config_error(
            &account_with("to = [\"a@b\", \"evil@x>\\r\\nDATA\"]\n"),
            7,
            "to",
            "not a plain address",
        );
        assert_config_error(
            &account_with("envelope_from = \"$(id)@x\"\n"),
            7,
            "envelope_from",
            "neither \"return-path\"",
        );
        assert_config_error(
            &account_with("on_reject = \"drop\"\n"),
            7,
            "on_reject",
            "not one of \"keep\", \"bounce\", \"delete\"",
        );
    }

    #[test]
    fn delivery_display_round_trips() {
        for (deliver, extra) in [
            ("smtp://localhost", ""),
            (
                "smtp://mail.example.org:587",
                "to = [\"a@b\"]\nenvelope_from = \"<>\"\non_reject = \"delete\"\n\
                 [account.delivery]\nusername = \"me\"\npassword_command = \"pass x\"\nauth = \"login\"\n",
            ),
            ("smtps://[::1]:4650", ""),
            ("lmtp:/run/dovecot/lmtp", ""),
            ("lmtp://127.0.0.1:24", ""),
            (
                "mda:/usr/bin/procmail -d %T",
                "[account.delivery]\ntimeout = \"90s\"\n",
            ),
            (
                "imaps://me@imap.example.org/Sent%20Items/2024",
                "[account.delivery]\npassword_file = \"/etc/pw\"\nseen = true\n",
            ),
        ] {
            let shown = parse_ok(&deliver_with(deliver, extra)).to_string();
            let reparsed = parse_ok(&shown);
            assert_eq!(reparsed.to_string(), shown, "{deliver}");
            assert_eq!(
                reparsed.accounts[0].deliver,
                parse_ok(&deliver_with(deliver, extra)).accounts[0].deliver,
                "{deliver}:\n{shown}"
            );
        }
        let shown = parse_ok(&deliver_with(
            "imaps://me@imap.example.org/Sent%20Items",
            "[account.delivery]\npassword = \"hunter2\"\n",
        ))
        .to_string();
        assert!(
            shown.contains("deliver = \"imaps://imap.example.org:993/Sent%20Items\""),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["pop.example.com", "10.0.0.1", "::", "localhost.example.com"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn display_masks_the_password_and_round_trips() {
        let text = format!(
            "{}\n{}",
            account_with(&format!(
                "password = \"hunter2\"\nfingerprint = \"{}\"\ntimeout = 90\n",
                PIN_HEX.to_lowercase()
            )),
            account_with("password_command = \"pass show \\\"mail\\\"\"\ntimeout = \"1500ms\"\n")
                .replace("\"home\"", "\"work\"")
                .replace("\"alice\"", "\"bob\"")
                .replace("~/Mail/home", "/srv/$$weird/~/\\u00e9"),
        );
        let shown = parse_ok(&text).to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password = \"****\""), "{shown}");
        assert!(
            shown.contains("password_command = \"pass show \\\"mail\\\"\""),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("fingerprint = \"sha256:{PIN_HEX}\"")),
            "{shown}"
        );
        assert!(shown.contains("timeout = \"90s\""), "{shown}");
        assert!(shown.contains("timeout = \"1500ms\""), "{shown}");
        assert!(shown.contains("port = 995"), "{shown}");
        assert!(
            shown.contains("deliver = \"maildir:/home/alice/Mail/home\""),
            "{shown}"
        );

        let reparsed = parse_ok(&shown);
        assert_eq!(reparsed.to_string(), shown);
        assert_eq!(
            reparsed.accounts[1].deliver,
            DeliverTarget::Maildir(PathBuf::from("/srv/$weird/~/\u{e9}"))
        );
    }

    #[test]
    fn the_example_file_parses() {
        let example = include_str!("../fetchrc.example");
        let config = parse_ok(example);
        assert_eq!(config.accounts.len(), 1);
        assert_eq!(config.accounts[0].name, "home");

        // So do the commented-out example accounts, once uncommented: they
        // start at the first `#[[account]]`, and their settings are the
        // lines with no space after the `#`.
        let start = example.find("\n#[[account]]").expect("example accounts");
        let (active, examples) = example.split_at(start);
        let uncommented: String = examples
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(setting) if !setting.starts_with([' ', '#']) && !setting.is_empty() => {
                    format!("{setting}\n")
                }
                _ => format!("{line}\n"),
            })
            .collect();
        let config = parse_ok(&format!("{active}{uncommented}"));
        let names: Vec<&str> = config.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["home", "work", "old-provider", "gmail"]);
        assert!(matches!(config.accounts[1].deliver, DeliverTarget::Mta(_)));
        let DeliverTarget::Imap(imap) = &config.accounts[2].deliver else {
            panic!("old-provider delivers over IMAP")
        };
        assert_eq!(imap.server.username.as_deref(), Some("alice@example.org"));
        assert!(imap.seen);
        let gmail = &config.accounts[3];
        assert_eq!(gmail.protocol, Protocol::Imap);
        assert_eq!(gmail.port, 993);
        assert_eq!(gmail.folders, ["INBOX", "Lists/rust"]);
        assert!(gmail.keep);
        assert_eq!(gmail.fetch, FetchMode::New);
    }

    /// The keys allowed in a section, as serde lists them when it meets an
    /// unknown one.
    fn allowed_keys(section_with_unknown_key: &str) -> Vec<String> {
        let err = toml::from_str::<RawFile>(section_with_unknown_key)
            .err()
            .expect("an unknown key");
        let (_, allowed) = parse_unknown_field_message(err.message()).expect("a key list");
        allowed.into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn the_example_file_documents_every_key() {
        let example = include_str!("../fetchrc.example");
        let mut keys = allowed_keys("unknown = 1\n");
        keys.extend(allowed_keys("[general]\nunknown = 1\n"));
        keys.extend(allowed_keys(&account_with("unknown = 1\n")));
        keys.extend(allowed_keys(&account_with(
            "[account.delivery]\nunknown = 1\n",
        )));
        assert!(keys.len() > 17, "{keys:?}");
        for key in keys {
            let documented = example.contains(&format!("{key} = "))
                || example.contains(&format!("[{key}]"))
                || example.contains(&format!("[account.{key}]"))
                || example.contains(&format!("[[{key}]]"));
            assert!(documented, "`{key}` is not in fetchrc.example");
        }
    }

    fn config_file(mode: u32, text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    /// An account that needs nothing from the environment.
    const SELF_CONTAINED: &str = "[general]\nstate_dir = \"/var/lib/mailfetch\"\n\
                                  [[account]]\nname = \"home\"\nprotocol = \"pop3\"\n\
                                  host = \"pop.example.com\"\nusername = \"alice\"\n\
                                  deliver = \"maildir:/var/mail/alice\"\n";

    #[test]
    fn inline_password_needs_a_private_file() {
        let text = format!("{SELF_CONTAINED}password = \"secret\"\n");
        let shared = config_file(0o644, &text);
        let err = load(shared.path()).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions);
        let name = shared.path().display().to_string();
        assert!(err.message.contains(&format!("chmod 600 {name}")), "{err}");
        assert!(!err.message.contains("secret\""), "{err}");

        let private = config_file(0o600, &text);
        assert!(load(private.path()).is_ok());
        // Without an inline password, the mode does not matter.
        let no_password = config_file(0o644, &with_password_command(SELF_CONTAINED));
        assert!(load(no_password.path()).is_ok());
    }

    /// `text` with a password command, which needs nothing private.
    fn with_password_command(text: &str) -> String {
        format!("{text}password_command = \"pass show mail\"\n")
    }

    /// The self-contained account delivering over SMTP, logging in to the
    /// relay with `delivery_password` (lines 10 to 12).
    fn relayed(delivery_password: &str) -> String {
        format!(
            "{}[account.delivery]\nusername = \"me\"\n{delivery_password}\n",
            with_password_command(SELF_CONTAINED)
                .replace("maildir:/var/mail/alice", "smtp://mail.example.org")
        )
    }

    #[test]
    fn an_inline_delivery_password_needs_a_private_file() {
        let text = relayed("password = \"relay-secret\"");
        let err = load(config_file(0o644, &text).path()).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions, "{err}");
        assert!(err.message.contains("chmod 600"), "{err}");
        assert!(!err.message.contains("relay-secret"), "{err}");
        load(config_file(0o600, &text).path()).unwrap();
    }

    #[test]
    fn a_config_others_can_change_is_refused() {
        let text = with_password_command(SELF_CONTAINED);
        for mode in [0o664, 0o646, 0o620] {
            let file = config_file(mode, &text);
            let err = load(file.path()).unwrap_err();
            assert_eq!(err.kind, Kind::Permissions, "{err}");
            let name = file.path().display().to_string();
            assert!(
                err.message.starts_with(&format!(
                    "{name}: the configuration file can be written by group or others"
                )),
                "{err}"
            );
            assert!(err.message.contains("run commands as you"), "{err}");
            assert!(err.message.contains(&format!("chmod go-w {name}")), "{err}");
        }

        // SAFETY: geteuid cannot fail and has no side effects.
        if unsafe { libc::geteuid() } == 0 {
            let foreign = config_file(0o600, &text);
            std::os::unix::fs::chown(foreign.path(), Some(4242), None).unwrap();
            let err = load(foreign.path()).unwrap_err();
            assert_eq!(err.kind, Kind::Permissions, "{err}");
            assert!(err.message.contains("belongs to uid 4242"), "{err}");
        }

        // Whoever can write to its directory can replace the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fetchrc");
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions, "{err}");
        assert!(
            err.message
                .contains("the directory holding the configuration file can be written"),
            "{err}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        load(&path).unwrap();
    }

    #[test]
    fn load_requires_a_password_source_for_every_login() {
        let file = config_file(0o600, SELF_CONTAINED);
        let err = load(file.path()).unwrap_err();
        assert_eq!(err.kind, Kind::Config, "{err}");
        assert!(
            err.message.starts_with(&format!(
                "{}:3: key `password`: account `home` logs in with auth = \"auto\", which \
                 needs a password",
                file.path().display()
            )),
            "{err}"
        );
        load(config_file(0o600, &with_password_command(SELF_CONTAINED)).path()).unwrap();
    }

    #[test]
    fn load_requires_password_files_that_exist_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        let text = format!("{SELF_CONTAINED}password_file = \"{}\"\n", secret.display());
        let file = config_file(0o600, &text);
        let located = |key: &str| format!("{}:9: key `{key}`: ", file.path().display());
        let err = load(file.path()).unwrap_err();
        assert_eq!(err.kind, Kind::Config, "{err}");
        assert_eq!(
            err.message,
            format!(
                "{}{} does not exist",
                located("password_file"),
                secret.display()
            )
        );

        std::fs::write(&secret, "s3cret\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(file.path()).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions, "{err}");
        assert!(err.message.starts_with(&located("password_file")), "{err}");
        assert!(err.message.contains("chmod 600"), "{err}");
        assert!(!err.message.contains("s3cret"), "{err}");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        load(file.path()).unwrap();

        // The same for the delivery server's password file.
        let missing = dir.path().join("relay-secret");
        let file = config_file(
            0o600,
            &relayed(&format!("password_file = \"{}\"", missing.display())),
        );
        let err = load(file.path()).unwrap_err();
        assert_eq!(err.kind, Kind::Config, "{err}");
        assert!(
            err.message.starts_with(&format!(
                "{}:12: key `delivery.password_file`: {} does not exist",
                file.path().display(),
                missing.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn load_reports_a_missing_file() {
        let err = load(Path::new("/nonexistent/fetchrc")).unwrap_err();
        assert_eq!(err.kind, Kind::Config);
        assert!(err.message.starts_with("/nonexistent/fetchrc: "), "{err}");
    }

    #[tokio::test]
    async fn password_command_output_is_the_secret() {
        for (command, expected) in [
            ("echo s3cret", "s3cret"),
            ("printf 's3cret\\r\\n'", "s3cret"),
            ("printf s3cret", "s3cret"),
            ("printf ' spaced '", " spaced "),
        ] {
            let secret = PasswordSource::Command(command.to_owned())
                .resolve("home")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(secret.expose(), expected, "{command}");
        }
    }

    #[tokio::test]
    async fn failing_password_command_shows_stderr_but_never_stdout() {
        let source = PasswordSource::Command(
            "echo leaked-secret; echo 'no such entry' >&2; exit 3".to_owned(),
        );
        let err = source.resolve("home").await.unwrap_err();
        assert_eq!(err.kind, Kind::Config);
        assert!(err.message.contains("account `home`"), "{err}");
        assert!(err.message.contains("no such entry"), "{err}");
        assert!(err.message.contains("exit status: 3"), "{err}");
        // The command itself is shown, hence the secret is looked for
        // after it.
        let (_, after_command) = err.message.split_once("exit 3`").unwrap();
        assert!(!after_command.contains("leaked-secret"), "{err}");
    }

    /// Whether a process is still running (zombies count as dead).
    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
                !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
            }
            Err(_) => false,
        }
    }

    /// Whether a process is gone within a few seconds (a killed process
    /// takes a moment to die).
    fn stops(pid: u32) -> bool {
        let started = std::time::Instant::now();
        while alive(pid) {
            if started.elapsed() > Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// A password command that starts a process of its own (as `pass`
    /// starts gpg), records its pid, prints a secret and never ends.
    fn hanging_command(dir: &Path) -> (String, PathBuf) {
        let pid_file = dir.join("pid");
        let command = format!(
            "sleep 60 & echo $! > '{}'; echo leaked-secret; wait",
            pid_file.display()
        );
        (command, pid_file)
    }

    /// The pid the hanging command recorded, once it has.
    fn recorded_pid(pid_file: &Path) -> u32 {
        let started = std::time::Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(pid_file)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no pid");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn a_hung_password_command_times_out_and_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let (command, pid_file) = hanging_command(dir.path());
        let started = std::time::Instant::now();
        let err = run_password_command("home", &command, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(err.kind, Kind::Config);
        assert!(err.message.starts_with("account `home`: "), "{err}");
        assert!(err.message.contains("timed out after 1s"), "{err}");
        let (_, after_command) = err.message.split_once("; wait`").unwrap();
        assert!(!after_command.contains("leaked-secret"), "{err}");
        assert!(stops(recorded_pid(&pid_file)));
    }

    #[tokio::test]
    async fn a_cancelled_password_command_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let (command, pid_file) = hanging_command(dir.path());
        let source = PasswordSource::Command(command);
        let resolving = tokio::time::timeout(Duration::from_secs(2), source.resolve("home"));
        assert!(resolving.await.is_err(), "the command cannot have finished");
        assert!(stops(recorded_pid(&pid_file)));
    }

    #[tokio::test]
    async fn password_command_must_print_one_line() {
        for (command, fragment) in [("true", "empty"), ("printf 'a\\nb\\n'", "line break")] {
            let err = PasswordSource::Command(command.to_owned())
                .resolve("home")
                .await
                .unwrap_err();
            assert!(err.message.contains(fragment), "{command}: {err}");
        }
    }

    #[tokio::test]
    async fn password_file_gives_its_first_line_if_private() {
        let private = config_file(0o600, "s3cret\nsecond line\n");
        let source = PasswordSource::File(private.path().to_owned());
        let secret = source.resolve("home").await.unwrap().unwrap();
        assert_eq!(secret.expose(), "s3cret");

        let shared = config_file(0o640, "s3cret\n");
        let err = PasswordSource::File(shared.path().to_owned())
            .resolve("home")
            .await
            .unwrap_err();
        assert_eq!(err.kind, Kind::Permissions);
        assert!(err.message.contains("chmod 600"), "{err}");
        assert!(!err.message.contains("s3cret"), "{err}");
    }

    #[tokio::test]
    async fn inline_and_absent_passwords_resolve_directly() {
        let inline = PasswordSource::Inline(Secret::new("s3cret".to_owned()));
        assert_eq!(
            inline.resolve("home").await.unwrap(),
            Some(Secret::new("s3cret".to_owned()))
        );
        assert_eq!(PasswordSource::None.resolve("home").await.unwrap(), None);
    }
}
