//! Rules that tie several keys together.

use std::fs;

use toml::Spanned;

use super::keys::{self, AppliesTo, Destination, Section};
use super::parse::Parser;
use super::raw::{RawAccount, RawDelivery, RawFile, RawValue};
use super::values::*;
use super::*;
use crate::net::is_loopback_host;
use crate::permissions::check_private;

impl Parser<'_> {
    /// every message in it, and they would share one state file.
    pub(super) fn check_mailboxes_are_distinct(
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
    pub(super) fn check_secrets(&self, raw: &RawFile, config: &Config) -> Result<(), Error> {
        for (raw_account, account) in raw.account.iter().zip(&config.accounts) {
            let fields = raw_account.get_ref();
            if account.server.password == PasswordSource::None {
                return Err(self.error(
                    raw_account.span(),
                    "password",
                    format!(
                        "account `{}` logs in with auth = \"{}\", which needs a password \
                         (or an OAuth2 token); set password, password_command or password_file",
                        account.name,
                        keyword_name(account.server.auth)
                    ),
                ));
            }
            self.check_password_file(
                "password_file",
                &fields.password_file,
                &account.server.password,
            )?;
            let delivery = fields.delivery.as_ref().map(Spanned::get_ref);
            if let (Some(delivery), Some(server)) = (delivery, account.deliver.server()) {
                self.check_password_file(
                    "delivery.password_file",
                    &delivery.password_file,
                    &server.password,
                )?;
            }
            // The client secrets of the oauth tables.
            let tables = [
                (
                    "oauth.client_secret_file",
                    fields.oauth.as_ref(),
                    Some(&account.server.password),
                ),
                (
                    "delivery.oauth.client_secret_file",
                    delivery.and_then(|delivery| delivery.oauth.as_ref()),
                    account.deliver.server().map(|server| &server.password),
                ),
            ];
            for (key, table, password) in tables {
                if let (Some(table), Some(PasswordSource::OAuth(oauth))) = (table, password) {
                    self.check_password_file(
                        key,
                        &table.get_ref().client_secret_file,
                        &oauth.client_secret,
                    )?;
                }
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

    /// APOP is POP3's own mechanism; IMAP has nothing like it.
    pub(super) fn check_auth_for_protocol(
        &self,
        raw: &RawAccount,
        account: &Account,
    ) -> Result<(), Error> {
        match &raw.auth {
            Some(auth)
                if account.server.auth == AuthMethod::Apop
                    && account.protocol != Protocol::Pop3 =>
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
    pub(super) fn check_after_delivery(
        &self,
        raw: &RawAccount,
        account: &Account,
    ) -> Result<(), Error> {
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

    /// With an `oauth` table, the login sends a bearer token, which only
    /// XOAUTH2 and OAUTHBEARER (or `auto`, which picks one) can carry.
    pub(super) fn check_oauth_auth(
        &self,
        key: &str,
        value: &RawValue,
        auth: AuthMethod,
        password: &PasswordSource,
    ) -> Result<(), Error> {
        let carries_token = matches!(
            auth,
            AuthMethod::Auto | AuthMethod::XOAuth2 | AuthMethod::OAuthBearer
        );
        if matches!(password, PasswordSource::OAuth(_)) && !carries_token {
            return Err(self.error(
                value.span(),
                key,
                format!(
                    "\"{}\" cannot send an OAuth2 token; use \"xoauth2\", \"oauthbearer\" \
                     or \"auto\"",
                    keyword_name(auth)
                ),
            ));
        }
        Ok(())
    }

    /// OAuth2 access tokens expire within the hour, so they must come from
    /// an `oauth` table or a command that fetches a fresh one (or, for
    /// testing, be inline).
    pub(super) fn check_token_source(
        &self,
        raw: &RawAccount,
        account: &Account,
    ) -> Result<(), Error> {
        if let Some(auth) = &raw.auth {
            self.check_oauth_auth("auth", auth, account.server.auth, &account.server.password)?;
        }
        let needs_token = matches!(
            account.server.auth,
            AuthMethod::XOAuth2 | AuthMethod::OAuthBearer
        );
        let has_token_source = matches!(
            account.server.password,
            PasswordSource::Command(_) | PasswordSource::Inline(_) | PasswordSource::OAuth(_)
        );
        match &raw.auth {
            Some(auth) if needs_token && !has_token_source => Err(self.error(
                auth.span(),
                "auth",
                format!(
                    "auth = \"{}\" sends an OAuth2 access token: add an [account.oauth] \
                     table (see fetchrc.example), or set password_command to a command \
                     that prints a fresh token",
                    keyword_name(account.server.auth)
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
    pub(super) fn check_plaintext_exposure(
        &self,
        raw: &RawAccount,
        account: &Account,
    ) -> Result<(), Error> {
        let sends_token = account.server.auth == AuthMethod::Auto
            && matches!(account.server.password, PasswordSource::OAuth(_));
        let exposed = account.server.tls == TlsMode::None
            && (account.server.auth.reveals_password() || sends_token)
            && !account.server.allow_plaintext_auth
            && !is_loopback_host(&account.server.host);
        match &raw.tls {
            Some(tls) if exposed => Err(self.error(
                tls.span(),
                "tls",
                format!(
                    "with tls = \"none\" and auth = \"{}\", the password would travel \
                     unencrypted to {}; use tls = \"starttls\" or \"implicit\", or set \
                     allow_plaintext_auth = true if you accept that risk",
                    keyword_name(account.server.auth),
                    account.server.host
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses keys that `protocol` does not have, as the key table says.
    pub(super) fn check_protocol_keys(
        &self,
        raw: &RawAccount,
        protocol: Protocol,
    ) -> Result<(), Error> {
        for (key, value) in raw.written() {
            let AppliesTo::Protocols(protocols) = keys::find(Section::Account, key).applies_to
            else {
                continue;
            };
            if !protocols.contains(&protocol) {
                let allowed: Vec<String> = protocols
                    .iter()
                    .map(|&protocol| format!("protocol = \"{}\"", keyword_name(protocol)))
                    .collect();
                return Err(self.error(
                    value.span(),
                    key,
                    format!(
                        "only applies to {}, not \"{}\"",
                        allowed.join(" or "),
                        keyword_name(protocol)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Refuses `[account.delivery]` keys that the target would ignore, as the
    /// key table says.
    pub(super) fn check_delivery_keys(
        &self,
        target: &DeliverTarget,
        raw: &RawDelivery,
    ) -> Result<(), Error> {
        let (destination, kind) = match target {
            DeliverTarget::Maildir(_) => (Destination::Maildir, "maildir:"),
            DeliverTarget::Mbox(_) => (Destination::Mbox, "mbox:"),
            DeliverTarget::Mda(_) => (Destination::Mda, "mda:"),
            DeliverTarget::Mta(mta) => match mta.protocol {
                MtaProtocol::Smtp => (Destination::Smtp, "smtp and lmtp"),
                MtaProtocol::Lmtp => (Destination::Lmtp, "smtp and lmtp"),
            },
            DeliverTarget::Imap(_) => (Destination::Imap, "imap"),
        };
        for (key, value) in raw.written() {
            let applies = match keys::find(Section::Delivery, key).applies_to {
                AppliesTo::All | AppliesTo::Protocols(_) => true,
                AppliesTo::Destinations(destinations) => destinations.contains(&destination),
            };
            if !applies {
                return Err(self.error(
                    value.span(),
                    &format!("delivery.{key}"),
                    format!("does not apply to deliver = \"{kind}…\""),
                ));
            }
        }
        Ok(())
    }
}

/// The mailbox `a` and `b` both fetch, described, if they share one: the
/// same user on the same server (host names compared case-insensitively)
/// with the same protocol, and for IMAP a folder in common.
fn shared_mailbox(a: &Account, b: &Account) -> Option<String> {
    let (a_server, b_server) = (&a.server, &b.server);
    let same_login = a.protocol == b.protocol
        && a_server.username == b_server.username
        && a_server.host.eq_ignore_ascii_case(&b_server.host)
        && a_server.port == b_server.port;
    if !same_login {
        return None;
    }
    let login = format!(
        "{} {}@{}:{}",
        keyword_name(a.protocol),
        a_server.username.as_deref().unwrap_or_default(),
        a_server.host,
        a_server.port
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
