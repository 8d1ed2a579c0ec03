//! OAuth2 built in: the tokens an `[account.oauth]` table asks for, kept
//! fresh without the user.
//!
//! * This file: what the table says once checked ([`OAuth`]), the
//!   providers' presets (endpoints, scopes), and [`access_token`], which a
//!   login calls through [`PasswordSource::resolve`].
//! * [`store`]: the token file per account under `state_dir`, replaced
//!   atomically and durably.
//! * [`endpoint`]: the token endpoint's grants (refresh, client
//!   credentials, device code, authorization code), through the `oauth2`
//!   crate on [`crate::http`].
//! * [`login`]: `mailfetch login`, the interactive flows (device code;
//!   browser with PKCE and a one-shot loopback listener).
//!
//! An access token is reused until shortly before it expires, then
//! refreshed; a rotated refresh token is on disk before the new access
//! token is used, so a kill at any moment leaves a usable token file.
//! Nothing here logs a token, a secret, a code or a PKCE verifier; errors
//! carry the provider's error code and description only.
//!
//! [`PasswordSource::resolve`]: crate::config::PasswordSource::resolve

pub mod endpoint;
pub mod login;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{PasswordSource, Secret};
use crate::error::{Error, Kind};

use self::store::TokenFile;

/// Who issues the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Microsoft identity platform (Exchange Online, Outlook.com).
    Microsoft,
    /// Google (Gmail, Workspace).
    Google,
    /// Any other provider; the table names its endpoints.
    Custom,
}

/// How the first tokens are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// RFC 8628: `mailfetch login` prints a URL and a code to enter on any
    /// device, and waits.
    Device,
    /// Authorization code with PKCE: `mailfetch login` prints a URL to
    /// open here; the browser comes back to a listener on 127.0.0.1.
    Browser,
    /// The application's own identity (Microsoft 365 app-only access): no
    /// login, no refresh token; a new token whenever one is needed.
    ClientCredentials,
}

/// What the token is used for, which decides a preset's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Imap,
    Pop3,
    Smtp,
}

/// A checked `[account.oauth]` (or `[account.delivery.oauth]`) table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth {
    /// The account's name, for messages ("run `mailfetch login NAME`").
    pub account: String,
    pub provider: Provider,
    pub flow: Flow,
    pub client_id: String,
    /// `client_secret`, `client_secret_command` or `client_secret_file`;
    /// `None` for a public client.
    pub client_secret: PasswordSource,
    /// Microsoft's tenant, as written (the endpoints hold it already).
    pub tenant: Option<String>,
    /// https, or http to a loopback host (checked when the file is read).
    pub token_url: String,
    pub device_url: Option<String>,
    pub auth_url: Option<String>,
    pub scopes: Vec<String>,
    /// Extra certificate authorities for the provider's endpoints.
    pub ca_file: Option<PathBuf>,
    /// `STATE_DIR/oauth/ACCOUNT.json`, or `ACCOUNT.delivery.json` for the
    /// server mail is delivered to.
    pub token_file: PathBuf,
    /// Each request to the provider's endpoints.
    pub timeout: Duration,
}

impl OAuth {
    /// How `mailfetch login` is run for this table, for messages.
    pub fn login_hint(&self) -> String {
        format!("run `mailfetch login {}`", self.account)
    }
}

/// Microsoft's tenants that stand for "any": client credentials need the
/// tenant the application is registered in.
pub const MICROSOFT_GENERIC_TENANTS: [&str; 3] = ["common", "organizations", "consumers"];

/// A provider's endpoints: (token, device code, authorization).
pub fn preset_endpoints(provider: Provider, tenant: &str) -> Option<(String, String, String)> {
    match provider {
        Provider::Microsoft => {
            let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
            Some((
                format!("{base}/token"),
                format!("{base}/devicecode"),
                format!("{base}/authorize"),
            ))
        }
        Provider::Google => Some((
            "https://oauth2.googleapis.com/token".to_owned(),
            "https://oauth2.googleapis.com/device/code".to_owned(),
            "https://accounts.google.com/o/oauth2/v2/auth".to_owned(),
        )),
        Provider::Custom => None,
    }
}

/// The scopes a provider wants for `service` with `flow`; empty for a
/// custom provider, whose table must say.
pub fn preset_scopes(provider: Provider, flow: Flow, service: Service) -> Vec<String> {
    let scopes: &[&str] = match (provider, flow, service) {
        // App-only tokens carry the permissions granted to the application
        // (IMAP.AccessAsApp, POP.AccessAsApp, SMTP.SendAsApp).
        (Provider::Microsoft, Flow::ClientCredentials, _) => {
            &["https://outlook.office365.com/.default"]
        }
        (Provider::Microsoft, _, Service::Imap) => &[
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "offline_access",
        ],
        (Provider::Microsoft, _, Service::Pop3) => &[
            "https://outlook.office.com/POP.AccessAsUser.All",
            "offline_access",
        ],
        (Provider::Microsoft, _, Service::Smtp) => {
            &["https://outlook.office.com/SMTP.Send", "offline_access"]
        }
        (Provider::Google, _, _) => &["https://mail.google.com/"],
        (Provider::Custom, _, _) => &[],
    };
    scopes.iter().map(|&scope| scope.to_owned()).collect()
}

/// Whether `url` may carry secrets: https, or http to this machine (the
/// rule for plaintext passwords). The problem, if not.
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let parsed = oauth2::url::Url::parse(url).map_err(|err| format!("`{url}`: {err}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if parsed.host_str().is_some_and(crate::net::is_loopback_host) => Ok(()),
        _ => Err(format!(
            "`{url}` must be https:// (http:// only to this machine): tokens and secrets travel over it"
        )),
    }
}

/// Whether a valid access token must be refreshed anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Reuse the stored token until shortly before it expires.
    Reuse,
    /// The server refused the stored token: get a new one.
    Renew,
}

/// The access token to log in with: the stored one while it lives,
/// otherwise a new one from the provider (stored first).
///
/// Errors are [`Kind::Auth`] when the user must act (no tokens yet, a
/// refresh token the provider refused for good), with the `mailfetch
/// login` hint; [`Kind::Connection`] or [`Kind::Server`] when the provider
/// could not be reached or failed, which the next poll retries.
pub async fn access_token(oauth: &OAuth, freshness: Freshness) -> Result<Secret, Error> {
    // One refresh at a time per token file in this process (the daemon's
    // IDLE connections share an account's tokens); other processes are
    // kept out by the state directory's lock.
    let lock = token_file_lock(oauth);
    let _held = lock.lock().await;
    let now = unix_now();
    let stored = store::load(&oauth.token_file)?;
    if freshness == Freshness::Reuse
        && let Some(stored) = &stored
        && stored.is_fresh(now)
    {
        return Ok(Secret::bearer_token(stored.access_token.clone()));
    }
    let client = endpoint::Endpoint::new(oauth).await?;
    let renewed = match (oauth.flow, stored) {
        (Flow::ClientCredentials, _) => client.client_credentials().await?,
        (_, Some(stored)) if !stored.refresh_token.is_empty() => {
            warn_if_refresh_token_idle(oauth, &stored, now);
            client.refresh(&stored).await?
        }
        (_, _) => {
            return Err(Error::new(
                Kind::Auth,
                format!(
                    "account `{}` has no OAuth2 tokens yet ({}); {} once",
                    oauth.account,
                    oauth.token_file.display(),
                    oauth.login_hint()
                ),
            ));
        }
    };
    store::save(&oauth.token_file, &renewed)?;
    Ok(Secret::bearer_token(renewed.access_token))
}

/// How long a refresh token may go unused before the provider is likely to
/// revoke it: Microsoft's 90 days of inactivity. Warned about at a third.
const REFRESH_TOKEN_IDLE_LIMIT: Duration = Duration::from_secs(90 * 24 * 3600);

fn warn_if_refresh_token_idle(oauth: &OAuth, stored: &TokenFile, now: u64) {
    let idle = now.saturating_sub(stored.refresh_token_used_at);
    if idle > REFRESH_TOKEN_IDLE_LIMIT.as_secs() / 3 {
        tracing::warn!(
            "account `{}`: its OAuth2 refresh token was last used {} days ago; providers \
             revoke unused ones (Microsoft after 90 days), after which you must {} again; \
             run mailfetch at least every few weeks to keep it alive",
            oauth.account,
            idle / (24 * 3600),
            oauth.login_hint()
        );
    }
}

/// The in-process lock of `oauth`'s token file.
fn token_file_lock(oauth: &OAuth) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .expect("the token lock table is never poisoned: nothing panics holding it")
        .entry(oauth.token_file.clone())
        .or_default()
        .clone()
}

/// Seconds since the epoch, the token file's clock.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_except_to_this_machine() {
        for good in [
            "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            "http://127.0.0.1:8080/token",
            "http://localhost/token",
            "http://[::1]:9/token",
        ] {
            assert_eq!(check_endpoint_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://idp.example/token",
            "http://127.0.0.1.example/token",
            "ftp://idp.example/token",
            "idp.example/token",
        ] {
            assert!(check_endpoint_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn presets_ask_for_the_scope_of_the_service_and_offline_access() {
        assert_eq!(
            preset_scopes(Provider::Microsoft, Flow::Device, Service::Pop3),
            [
                "https://outlook.office.com/POP.AccessAsUser.All",
                "offline_access"
            ]
        );
        assert_eq!(
            preset_scopes(Provider::Microsoft, Flow::ClientCredentials, Service::Imap),
            ["https://outlook.office365.com/.default"]
        );
        assert_eq!(
            preset_scopes(Provider::Google, Flow::Browser, Service::Smtp),
            ["https://mail.google.com/"]
        );
        let (token, device, auth) =
            preset_endpoints(Provider::Microsoft, "contoso.onmicrosoft.com").unwrap();
        assert_eq!(
            token,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert!(device.ends_with("/v2.0/devicecode"), "{device}");
        assert!(auth.ends_with("/v2.0/authorize"), "{auth}");
    }
}
