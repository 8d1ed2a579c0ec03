//! Value conversions. They return a bare description of the problem, which
//! `Parser::convert` turns into a located error. Type errors name only the
//! type found, never the value, which could be a misplaced password.

use std::time::Duration;

use super::{AuthMethod, FetchMode, OnReject, Protocol, TlsMode};
use crate::percent;

pub(super) fn wrong_type(expected: &str, found: &toml::Value) -> String {
    let found = found.type_str();
    let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("expected {expected}, found {article} {found}")
}

pub(super) fn as_str(value: &toml::Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| wrong_type("a string", value))
}

pub(super) fn as_non_empty_str(value: &toml::Value) -> Result<&str, String> {
    match as_str(value)? {
        "" => Err("must not be empty".to_owned()),
        text => Ok(text),
    }
}

pub(super) fn as_bool(value: &toml::Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| wrong_type("true or false", value))
}

pub(super) fn as_port(value: &toml::Value) -> Result<u16, String> {
    let number = value
        .as_integer()
        .ok_or_else(|| wrong_type("a port number", value))?;
    u16::try_from(number)
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("{number} is not a port number (1 to 65535)"))
}

/// `timeout`: a whole number of seconds, or a string such as "90s".
pub(super) fn as_timeout(value: &toml::Value) -> Result<Duration, String> {
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
pub(super) fn as_interval(value: &toml::Value) -> Result<Duration, String> {
    let interval = as_timeout(value)?;
    if interval < Duration::from_secs(1) {
        return Err("must be at least 1 second, e.g. \"90s\" or \"15m\"".to_owned());
    }
    Ok(interval)
}

/// `idle_timeout`: between 10 seconds and 29 minutes (RFC 9051 lets a
/// server drop a client idle for 30 minutes).
pub(super) fn as_idle_timeout(value: &toml::Value) -> Result<Duration, String> {
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
pub(super) fn as_size(value: &toml::Value) -> Result<u64, String> {
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
pub(super) const SIZE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses `25MB`, `25 mb`, `1GiB`, `512B` or a bare number of bytes.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
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
pub(super) fn as_count(value: &toml::Value) -> Result<usize, String> {
    let number = value
        .as_integer()
        .ok_or_else(|| wrong_type("a whole number", value))?;
    usize::try_from(number)
        .ok()
        .filter(|&count| count > 0)
        .ok_or_else(|| "must be greater than zero".to_owned())
}

/// The one IMAP folder whose name is case-insensitive (RFC 3501 §5.1).
pub(super) const INBOX: &str = "INBOX";

/// True if the folder names `a` and `b` mean the same folder.
pub(super) fn same_folder(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case(INBOX) && b.eq_ignore_ascii_case(INBOX))
}

/// `folders`: a non-empty list of distinct folder names.
pub(super) fn as_folders(value: &toml::Value) -> Result<Vec<String>, String> {
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

/// `[USER@]HOST[:PORT]` of a URL, with the user percent-decoded and an
/// IPv6 host in brackets.
pub(super) fn parse_authority(
    authority: &str,
) -> Result<(Option<String>, String, Option<u16>), String> {
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
pub(super) fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = percent::decode(text)
        .ok_or_else(|| format!("`{text}`: `%` must be followed by two hex digits"))?;
    String::from_utf8(bytes).map_err(|_| format!("`{text}` does not decode to UTF-8"))
}

/// Encodes what [`percent_decode`] decodes, for showing a URL: all but
/// the unreserved characters of RFC 3986 and `keep`.
pub(super) fn percent_encode(text: &str, keep: &[u8]) -> String {
    percent::encode(text.as_bytes(), |byte| {
        byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte)
    })
}

/// A folder name can be anything but empty or holding CR, LF or NUL: a
/// line break would end the IMAP command that carries it, and IMAP has no
/// way to send a NUL in a name.
pub(super) fn check_folder_name(name: &str) -> Result<&str, String> {
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

pub(super) fn parse_account_name(name: &str) -> Result<String, String> {
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
pub(super) trait Keyword: Copy + PartialEq + 'static {
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
pub(super) fn parse_keyword<T: Keyword>(word: &str) -> Result<T, String> {
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
pub(super) fn keyword_name<T: Keyword>(value: T) -> &'static str {
    T::WORDS
        .iter()
        .find(|&&(_, candidate)| candidate == value)
        .map_or("?", |&(word, _)| word)
}

/// The value of an ASCII hex digit (already checked to be one).
pub(super) fn is_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn default_port(protocol: Protocol, tls: TlsMode) -> u16 {
    match (protocol, tls) {
        (Protocol::Pop3, TlsMode::Implicit) => 995,
        (Protocol::Pop3, TlsMode::StartTls | TlsMode::None) => 110,
        (Protocol::Imap, TlsMode::Implicit) => 993,
        (Protocol::Imap, TlsMode::StartTls | TlsMode::None) => 143,
    }
}

/// `text` as a TOML basic string.
pub(super) fn toml_string(text: &str) -> String {
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
