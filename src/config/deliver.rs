//! `deliver` and its `[account.delivery]` table, one scheme at a time.

use toml::Spanned;

use super::oauth::{OAuthOwner, TokenHome, token_file};
use super::parse::Parser;
use super::raw::{RawDelivery, RawValue};
use super::values::*;
use super::*;
use crate::net::is_loopback_host;
use crate::oauth::Service;

/// How `deliver` may be written, for error messages.
const DELIVER_FORMS: &str = "maildir:PATH, mbox:PATH, smtp://HOST[:PORT], smtps://HOST[:PORT], \
     lmtp:/PATH/TO/SOCKET, lmtp://HOST[:PORT], mda:COMMAND, imap://USER@HOST[:PORT]/FOLDER, \
     imaps://USER@HOST[:PORT]/FOLDER";

/// How long an MDA may take for one message when `timeout` is not set in
/// `[account.delivery]`: spam filters can be slow.
pub(super) const DEFAULT_MDA_TIMEOUT: Duration = Duration::from_secs(600);

/// How long to wait for an mbox's locks when `timeout` is not set in
/// `[account.delivery]`: long enough for a mail reader to write the file
/// back, short enough that a forgotten lock shows within a poll.
pub(super) const DEFAULT_MBOX_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

impl Parser<'_> {
    /// `deliver`, with the `[account.delivery]` table that goes with it.
    pub(super) fn deliver_target(
        &self,
        value: &RawValue,
        delivery: Option<&Spanned<RawDelivery>>,
        tokens: TokenHome<'_>,
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
            "mbox" => DeliverTarget::Mbox(MboxTarget {
                path: self.expand_path(rest).map_err(fail)?,
                lock_timeout: self
                    .optional("delivery.timeout", &raw.timeout, as_timeout)?
                    .unwrap_or(DEFAULT_MBOX_LOCK_TIMEOUT),
            }),
            "mda" => {
                let command = rest.trim();
                if command.is_empty() {
                    return Err(fail(
                        "`mda:` needs a command, e.g. \"mda:/usr/bin/procmail -d %T\"".to_owned(),
                    ));
                }
                DeliverTarget::Mda(MdaTarget {
                    command: command.parse().map_err(fail)?,
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
                let (host, port, socket) = match rest.strip_prefix("//") {
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
                        (host, port, None)
                    }
                    None if scheme == "lmtp" && rest.starts_with('/') => {
                        let socket = self.expand_path(rest).map_err(fail)?;
                        ("localhost".to_owned(), 0, Some(socket))
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
                let default_tls = if scheme == "smtps" {
                    TlsMode::Implicit
                } else if socket.is_some() || is_loopback_host(&host) {
                    TlsMode::None
                } else {
                    TlsMode::StartTls
                };
                let server =
                    self.delivery_server(&raw, &scheme, host, |_| port, default_tls, None, tokens)?;
                DeliverTarget::Mta(MtaTarget {
                    protocol,
                    socket,
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
                let default_port = |tls| match (port, tls) {
                    (Some(port), _) => port,
                    (None, TlsMode::Implicit) => 993,
                    (None, _) => 143,
                };
                let server = self.delivery_server(
                    &raw,
                    &scheme,
                    host,
                    default_port,
                    default_tls,
                    user,
                    tokens,
                )?;
                if server.username.is_none() {
                    return Err(fail(format!(
                        "IMAP delivery needs a user name: {scheme}://USER@{}/… or \
                         `username` in [account.delivery]",
                        server.host
                    )));
                }
                DeliverTarget::Imap(ImapTarget {
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

    /// The server mail is delivered to: `host` from the URL, the port the
    /// URL gives or the TLS mode implies, and the keys of
    /// `[account.delivery]` that the delivery target uses.
    #[expect(
        clippy::too_many_arguments,
        reason = "what the URL says (scheme, host, port, user) and where tokens go are separate facts"
    )]
    fn delivery_server(
        &self,
        raw: &RawDelivery,
        scheme: &str,
        host: String,
        port: impl FnOnce(TlsMode) -> u16,
        default_tls: TlsMode,
        url_user: Option<String>,
        tokens: TokenHome<'_>,
    ) -> Result<Endpoint, Error> {
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
            as_str(value)?.parse::<Fingerprint>()
        })?;
        let username = self
            .optional("delivery.username", &raw.username, |value| {
                as_non_empty_str(value).map(str::to_owned)
            })?
            .or(url_user);
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
        let password = match &raw.oauth {
            Some(table) if scheme == "lmtp" => {
                return Err(self.error(
                    table.span(),
                    "delivery.oauth",
                    "does not apply to deliver = \"lmtp…\"",
                ));
            }
            Some(table) => {
                self.check_no_password_with_oauth("account.delivery.", &raw.password_keys())?;
                let service = if scheme.starts_with("imap") {
                    Service::Imap
                } else {
                    Service::Smtp
                };
                let owner = OAuthOwner {
                    prefix: "delivery.oauth",
                    account: tokens.account,
                    service,
                    token_file: token_file(tokens.state_dir, tokens.account, ".delivery"),
                    timeout,
                };
                PasswordSource::OAuth(Box::new(self.oauth(table, owner)?))
            }
            None => self.one_password_source(raw.password_keys())?,
        };
        let server = Endpoint {
            port: port(tls),
            host,
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
                    AuthMethod::OAuthBearer,
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
        if let Some(value) = &raw.auth {
            self.check_oauth_auth("delivery.auth", value, auth, &server.password)?;
        }
        // SMTP's `auto` ends up with PLAIN or LOGIN, and with OAuth2 any
        // `auto` sends the token; IMAP's `auto` with a password never
        // reveals it on a plain link (the login code refuses).
        let reveals = match auth {
            AuthMethod::Auto => {
                !scheme.starts_with("imap") || matches!(server.password, PasswordSource::OAuth(_))
            }
            method => method.reveals_password(),
        };
        if tls == TlsMode::None
            && server.password != PasswordSource::None
            && reveals
            && !allow_plaintext_auth
            && !is_loopback_host(&server.host)
        {
            let span = raw.tls.as_ref().map_or(0..0, |value| value.span());
            return Err(self.error(
                span,
                "delivery.tls",
                format!(
                    "with tls = \"none\", the delivery password would travel unencrypted \
                     to {}; use tls = \"starttls\" or \"implicit\", or set \
                     allow_plaintext_auth = true in [account.delivery] if you accept that risk",
                    server.host
                ),
            ));
        }
        Ok(server)
    }
}
