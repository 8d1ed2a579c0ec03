//! The provider's endpoints, through the `oauth2` crate: refresh, client
//! credentials, and the two interactive grants `mailfetch login` uses.
//!
//! Client secrets go in the request body (`client_secret_post`), which
//! Microsoft, Google and most others accept. Errors say what the provider
//! answered (its error code and description, which hold no secret) and
//! never quote a response body, which may.

use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, DeviceAuthorizationUrl,
    EndpointMaybeSet, EndpointNotSet, ErrorResponseType, HttpClientError, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    TokenResponse, TokenUrl,
};

use super::store::TokenFile;
use super::{OAuth, unix_now};
use crate::error::{Error, Kind};

type Client = BasicClient<
    EndpointMaybeSet,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
>;

/// One account's provider, ready for requests.
pub struct Endpoint<'a> {
    oauth: &'a OAuth,
    client: Client,
    http: reqwest::Client,
}

impl<'a> Endpoint<'a> {
    /// Resolves the client secret (running its command if need be) and
    /// sets up the HTTP client.
    pub async fn new(oauth: &'a OAuth) -> Result<Endpoint<'a>, Error> {
        let config_error = |key: &str, err: &dyn std::fmt::Display| {
            Error::new(
                Kind::Config,
                format!("account `{}`: oauth {key}: {err}", oauth.account),
            )
        };
        let mut client = BasicClient::new(ClientId::new(oauth.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri_option(Some(
                TokenUrl::new(oauth.token_url.clone())
                    .map_err(|err| config_error("token_url", &err))?,
            ))
            .set_device_authorization_url_option(
                oauth
                    .device_url
                    .clone()
                    .map(DeviceAuthorizationUrl::new)
                    .transpose()
                    .map_err(|err| config_error("device_url", &err))?,
            )
            .set_auth_uri_option(
                oauth
                    .auth_url
                    .clone()
                    .map(AuthUrl::new)
                    .transpose()
                    .map_err(|err| config_error("auth_url", &err))?,
            );
        // Boxed: a client secret is never itself an OAuth2 login, but the
        // type allows it, and the future would contain itself.
        if let Some(secret) = Box::pin(oauth.client_secret.resolve(&oauth.account)).await? {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
        }
        let http = crate::http::client(oauth.ca_file.as_deref(), oauth.timeout).await?;
        Ok(Endpoint {
            oauth,
            client,
            http,
        })
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.oauth.scopes.iter().cloned().map(Scope::new)
    }

    /// New tokens for `stored`'s refresh token. A provider that sends no
    /// new refresh token keeps the old one alive.
    pub async fn refresh(&self, stored: &TokenFile) -> Result<TokenFile, Error> {
        let refresh_token = RefreshToken::new(stored.refresh_token.clone());
        let response = self
            .client
            .exchange_refresh_token(&refresh_token)
            .map_err(|err| self.failure(Kind::Config, &err.to_string()))?
            .add_scopes(self.scopes())
            .request_async(&self.http)
            .await
            .map_err(|err| self.request_error("refreshing the access token", err))?;
        Ok(token_file(&response, Some(&stored.refresh_token)))
    }

    /// A new token for the application itself.
    pub async fn client_credentials(&self) -> Result<TokenFile, Error> {
        let response = self
            .client
            .exchange_client_credentials()
            .map_err(|err| self.failure(Kind::Config, &err.to_string()))?
            .add_scopes(self.scopes())
            .request_async(&self.http)
            .await
            .map_err(|err| self.request_error("getting a client-credentials token", err))?;
        Ok(token_file(&response, None))
    }

    /// Starts the device flow: what the user must open and type.
    pub async fn device_code(&self) -> Result<StandardDeviceAuthorizationResponse, Error> {
        self.client
            .exchange_device_code()
            .map_err(|err| self.failure(Kind::Config, &err.to_string()))?
            .add_scopes(self.scopes())
            .request_async(&self.http)
            .await
            .map_err(|err| self.request_error("starting the device login", err))
    }

    /// Polls until the user has approved the device code (at the interval
    /// the provider asks for, slower after `slow_down`), or it expires.
    pub async fn device_token(
        &self,
        details: &StandardDeviceAuthorizationResponse,
    ) -> Result<TokenFile, Error> {
        let response = self
            .client
            .exchange_device_access_token(details)
            .map_err(|err| self.failure(Kind::Config, &err.to_string()))?
            .request_async(&self.http, tokio::time::sleep, None)
            .await
            .map_err(|err| self.request_error("waiting for the device login", err))?;
        Ok(token_file(&response, None))
    }

    /// The browser flow's authorization URL for `redirect`, with a PKCE
    /// challenge and a fresh state; also the verifier and the state to
    /// check.
    pub fn authorization_url(
        &self,
        redirect: &str,
    ) -> Result<(String, PkceCodeVerifier, oauth2::CsrfToken), Error> {
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        let redirect = RedirectUrl::new(redirect.to_owned())
            .map_err(|err| self.failure(Kind::Local, &err.to_string()))?;
        let (url, state) = self
            .client
            .authorize_url(oauth2::CsrfToken::new_random)
            .map_err(|err| self.failure(Kind::Config, &err.to_string()))?
            .add_scopes(self.scopes())
            .set_pkce_challenge(challenge)
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .url();
        Ok((url.to_string(), verifier, state))
    }

    /// Exchanges the code the browser brought back.
    pub async fn code_token(
        &self,
        code: String,
        verifier: PkceCodeVerifier,
        redirect: &str,
    ) -> Result<TokenFile, Error> {
        let redirect = RedirectUrl::new(redirect.to_owned())
            .map_err(|err| self.failure(Kind::Local, &err.to_string()))?;
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|err| self.failure(Kind::Config, &err.to_string()))?
            .set_pkce_verifier(verifier)
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .request_async(&self.http)
            .await
            .map_err(|err| self.request_error("exchanging the authorization code", err))?;
        Ok(token_file(&response, None))
    }

    fn failure(&self, kind: Kind, problem: &str) -> Error {
        Error::new(
            kind,
            format!("account `{}`: OAuth2: {problem}", self.oauth.account),
        )
    }

    /// What went wrong with a request, for the user, and how bad it is:
    /// a grant or client the provider refused for good needs the user
    /// ([`Kind::Auth`], with the login hint); an unreachable or failing
    /// provider is retried at the next poll.
    fn request_error<T: ErrorResponseType + std::fmt::Display + 'static>(
        &self,
        doing: &str,
        err: RequestTokenError<HttpClientError<reqwest::Error>, oauth2::StandardErrorResponse<T>>,
    ) -> Error {
        let token_url = &self.oauth.token_url;
        match err {
            RequestTokenError::ServerResponse(response) => {
                let code = response.error().to_string();
                let code = code.as_str();
                let description = response
                    .error_description()
                    .map(|text| format!(": {}", text.lines().next().unwrap_or_default()))
                    .unwrap_or_default();
                // The provider's own trouble passes; anything else it
                // refuses (invalid_grant: a revoked or expired refresh
                // token; invalid_client) needs the user.
                if matches!(code, "server_error" | "temporarily_unavailable") {
                    return self.failure(
                        Kind::Server,
                        &format!("{doing}: the provider failed ({code}{description})"),
                    );
                }
                let hint = if self.oauth.flow == super::Flow::ClientCredentials {
                    "check client_id, the client secret, tenant and the application's permissions"
                        .to_owned()
                } else {
                    format!("{} to sign in again", self.oauth.login_hint())
                };
                self.failure(
                    Kind::Auth,
                    &format!("{doing}: the provider refused ({code}{description}); {hint}"),
                )
            }
            RequestTokenError::Request(err) => self.failure(
                Kind::Connection,
                &format!("{doing}: cannot reach {token_url}: {}", error_chain(&err)),
            ),
            RequestTokenError::Parse(err, _body) => self.failure(
                Kind::Server,
                &format!(
                    "{doing}: the provider's answer is not a valid token response ({})",
                    err.path()
                ),
            ),
            RequestTokenError::Other(problem) => {
                self.failure(Kind::Server, &format!("{doing}: {problem}"))
            }
        }
    }
}

/// `err` and its sources, on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How long an access token without `expires_in` is taken to live:
/// providers that omit it are rare, and an hour is the usual.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The token file for a token response; `previous_refresh` is kept when
/// the response brings no new refresh token.
fn token_file(response: &impl TokenResponse, previous_refresh: Option<&str>) -> TokenFile {
    let now = unix_now();
    let lifetime = response.expires_in().unwrap_or(DEFAULT_LIFETIME).as_secs();
    let refresh_token = response
        .refresh_token()
        .map(|token| token.secret().as_str())
        .or(previous_refresh)
        .unwrap_or_default()
        .to_owned();
    TokenFile {
        access_token: response.access_token().secret().clone(),
        expires_at: now + lifetime,
        lifetime,
        refresh_token_used_at: if refresh_token.is_empty() { 0 } else { now },
        refresh_token,
    }
}
