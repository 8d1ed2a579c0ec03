//! The checking layer: raw values to a `Config`, with located errors.

use std::collections::HashMap;
use std::env::VarError;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::keys;
use super::raw::{RawAccount, RawFile, RawGeneral, RawValue};
use super::secrets::check_secret;
use super::values::*;
use super::*;

/// Turns one configuration text into a [`Config`], knowing where it came
/// from so that errors can point into it.
pub(super) struct Parser<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) env: Env<'a>,
}

impl Parser<'_> {
    pub(super) fn config(&self) -> Result<Config, Error> {
        self.config_from(&self.raw()?)
    }

    /// The text as serde reads it: syntax and unknown keys are checked.
    pub(super) fn raw(&self) -> Result<RawFile, Error> {
        toml::from_str(self.text).map_err(|err| self.toml_error(&err))
    }

    pub(super) fn config_from(&self, raw: &RawFile) -> Result<Config, Error> {
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
    pub(super) fn general(&self, raw: &RawGeneral) -> Result<General, Error> {
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

    pub(super) fn account(&self, raw: &Spanned<RawAccount>) -> Result<Account, Error> {
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
            as_str(value)?.parse::<Fingerprint>()
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
        self.check_protocol_keys(raw, protocol)?;
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
            server: Endpoint {
                host,
                port,
                tls,
                ca_file,
                fingerprint,
                username: Some(username),
                password,
                auth,
                allow_plaintext_auth,
                timeout,
            },
            keep,
            deliver,
            to,
            envelope_from,
            on_reject,
            received_header,
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
    pub(super) fn one_password_source(
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

    /// `to`: the envelope recipients.
    pub(super) fn recipients(&self, raw: &RawAccount) -> Result<Vec<String>, Error> {
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
    pub(super) fn existing_file(&self, key: &str, value: &RawValue) -> Result<PathBuf, Error> {
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
    pub(super) fn expand_path(&self, path: &str) -> Result<PathBuf, String> {
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

    pub(super) fn variable(&self, name: &str) -> Result<String, String> {
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
    pub(super) fn convert<T>(
        &self,
        key: &str,
        value: &RawValue,
        convert: impl FnOnce(&toml::Value) -> Result<T, String>,
    ) -> Result<T, Error> {
        convert(value.get_ref()).map_err(|problem| self.error(value.span(), key, problem))
    }

    /// Like [`Parser::convert`], for a key that may be absent.
    pub(super) fn optional<T>(
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
    pub(super) fn error(&self, span: Range<usize>, key: &str, problem: impl fmt::Display) -> Error {
        Error::new(Kind::Config, self.located(span, key, problem))
    }

    /// `FILE:LINE: key `KEY`: PROBLEM`.
    pub(super) fn located(
        &self,
        span: Range<usize>,
        key: &str,
        problem: impl fmt::Display,
    ) -> String {
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
        if let Some((key, expected)) = parse_unknown_field_message(message) {
            // Serde lists the fields of the table it was reading, which is
            // how the section is known; the key table has the rest.
            let section = keys::section_with(&expected).unwrap_or_else(|| {
                panic!("serde's fields {expected:?} are not a section of the key table")
            });
            return self.error(span, key, keys::unknown_key_problem(key, section));
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
    pub(super) fn line(&self, offset: usize) -> usize {
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
pub(super) fn parse_unknown_field_message(message: &str) -> Option<(&str, Vec<&str>)> {
    let (key, expected) = message.strip_prefix("unknown field `")?.split_once('`')?;
    // The allowed keys are the even-numbered pieces between backticks.
    let allowed = expected.split('`').skip(1).step_by(2).collect();
    Some((key, allowed))
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
