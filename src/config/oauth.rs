//! `[account.oauth]` and `[account.delivery.oauth]`: OAuth2 instead of a
//! password.

use toml::Spanned;

use super::parse::Parser;
use super::raw::{RawOAuth, RawValue};
use super::values::*;
use super::*;
use crate::oauth::{
    self, Flow, MICROSOFT_GENERIC_TENANTS, OAuth, Provider, Service, check_endpoint_url,
};

/// What an `oauth` table belongs to, which the table itself does not say.
pub(super) struct OAuthOwner<'a> {
    /// `oauth` or `delivery.oauth`, for error messages.
    pub(super) prefix: &'static str,
    pub(super) account: &'a str,
    pub(super) service: Service,
    /// Where the tokens are kept.
    pub(super) token_file: PathBuf,
    pub(super) timeout: Duration,
}

/// Where an account's token files go.
#[derive(Clone, Copy)]
pub(super) struct TokenHome<'a> {
    pub(super) account: &'a str,
    pub(super) state_dir: &'a Path,
}

/// `STATE_DIR/oauth/ACCOUNT{suffix}.json`.
pub(super) fn token_file(state_dir: &Path, account: &str, suffix: &str) -> PathBuf {
    state_dir
        .join("oauth")
        .join(format!("{account}{suffix}.json"))
}

impl Parser<'_> {
    /// Refuses a password key beside an `oauth` table, which replaces it.
    pub(super) fn check_no_password_with_oauth(
        &self,
        section: &str,
        password_keys: &[(&str, &Option<RawValue>); 3],
    ) -> Result<(), Error> {
        match password_keys
            .iter()
            .find_map(|&(key, field)| Some((key, field.as_ref()?)))
        {
            Some((key, value)) => Err(self.error(
                value.span(),
                key,
                format!(
                    "[{section}oauth] gets OAuth2 tokens in place of a password; remove `{key}`"
                ),
            )),
            None => Ok(()),
        }
    }

    /// Checks an `oauth` table.
    pub(super) fn oauth(
        &self,
        table: &Spanned<RawOAuth>,
        owner: OAuthOwner<'_>,
    ) -> Result<OAuth, Error> {
        let header = table.span();
        let raw = table.get_ref();
        let key = |name: &str| format!("{}.{name}", owner.prefix);
        let provider: Provider = match &raw.provider {
            Some(value) => self.convert(&key("provider"), value, |value| {
                as_str(value).and_then(parse_keyword)
            })?,
            None => {
                return Err(self.error(
                    header,
                    &key("provider"),
                    "required: \"microsoft\", \"google\" or \"custom\"",
                ));
            }
        };
        let flow = match self.optional(&key("flow"), &raw.flow, |value| {
            as_str(value).and_then(parse_keyword)
        })? {
            Some(flow) => flow,
            None => match provider {
                Provider::Microsoft => Flow::Device,
                Provider::Google => Flow::Browser,
                Provider::Custom => {
                    return Err(self.error(
                        header,
                        &key("flow"),
                        "required with provider = \"custom\": \"device\", \"browser\" or \
                         \"client_credentials\"",
                    ));
                }
            },
        };
        let client_id = match &raw.client_id {
            Some(value) => self.convert(&key("client_id"), value, |value| {
                as_non_empty_str(value).map(str::to_owned)
            })?,
            None => {
                return Err(self.error(
                    header,
                    &key("client_id"),
                    "required: the id of the application registered with the provider",
                ));
            }
        };
        let client_secret = self.one_password_source([
            (&key("client_secret"), &raw.client_secret),
            (&key("client_secret_command"), &raw.client_secret_command),
            (&key("client_secret_file"), &raw.client_secret_file),
        ])?;
        if flow == Flow::ClientCredentials && client_secret == PasswordSource::None {
            return Err(self.error(
                header,
                &key("client_secret"),
                "flow = \"client_credentials\" needs the application's secret: set \
                 client_secret, client_secret_command or client_secret_file",
            ));
        }

        let tenant = self.optional(&key("tenant"), &raw.tenant, |value| {
            as_non_empty_str(value).map(str::to_owned)
        })?;
        if let Some(value) = &raw.tenant {
            if provider != Provider::Microsoft {
                return Err(self.error(
                    value.span(),
                    &key("tenant"),
                    "only applies to provider = \"microsoft\"",
                ));
            }
            if flow == Flow::ClientCredentials
                && tenant.as_deref().is_some_and(|tenant| {
                    MICROSOFT_GENERIC_TENANTS.contains(&tenant.to_ascii_lowercase().as_str())
                })
            {
                return Err(self.error(
                    value.span(),
                    &key("tenant"),
                    "client credentials need the tenant the application is registered in \
                     (its id or domain, e.g. \"contoso.onmicrosoft.com\"), not a generic one",
                ));
            }
        } else if provider == Provider::Microsoft && flow == Flow::ClientCredentials {
            return Err(self.error(
                header,
                &key("tenant"),
                "required with flow = \"client_credentials\": the tenant the application \
                 is registered in (its id or domain, e.g. \"contoso.onmicrosoft.com\")",
            ));
        }
        if provider == Provider::Google && flow != Flow::Browser {
            let value = raw
                .flow
                .as_ref()
                .map_or(header.clone(), |value| value.span());
            return Err(self.error(
                value,
                &key("flow"),
                "Google allows Gmail's scope only with flow = \"browser\" (its device flow \
                 refuses it, and client credentials are for service accounts)",
            ));
        }

        let endpoint = |name: &str, field: &Option<RawValue>| -> Result<Option<String>, Error> {
            let Some(value) = field else { return Ok(None) };
            if provider != Provider::Custom {
                return Err(self.error(
                    value.span(),
                    &key(name),
                    "the provider's preset knows its endpoints; set provider = \"custom\" to \
                     name others",
                ));
            }
            self.convert(&key(name), value, |value| {
                let url = as_non_empty_str(value)?;
                check_endpoint_url(url)?;
                Ok(Some(url.to_owned()))
            })
        };
        let token_url = endpoint("token_url", &raw.token_url)?;
        let device_url = endpoint("device_url", &raw.device_url)?;
        let auth_url = endpoint("auth_url", &raw.auth_url)?;
        let (token_url, device_url, auth_url) =
            match oauth::preset_endpoints(provider, tenant.as_deref().unwrap_or("common")) {
                Some((token, device, auth)) => (token, Some(device), Some(auth)),
                None => {
                    let missing = [
                        ("token_url", token_url.is_none(), true),
                        ("device_url", device_url.is_none(), flow == Flow::Device),
                        ("auth_url", auth_url.is_none(), flow == Flow::Browser),
                    ]
                    .into_iter()
                    .find(|&(_, missing, needed)| missing && needed);
                    if let Some((name, ..)) = missing {
                        return Err(self.error(
                            header,
                            &key(name),
                            format!(
                                "required with provider = \"custom\" and flow = \"{}\"",
                                keyword_name(flow)
                            ),
                        ));
                    }
                    (token_url.unwrap_or_default(), device_url, auth_url)
                }
            };

        let scopes = match &raw.scopes {
            Some(value) => self.convert(&key("scopes"), value, |value| {
                let list = value
                    .as_array()
                    .ok_or_else(|| wrong_type("a list of scopes", value))?;
                list.iter()
                    .map(|scope| {
                        let scope = as_non_empty_str(scope)?;
                        if scope.contains(char::is_whitespace) {
                            return Err(format!("`{scope}` is not one scope: it has a space"));
                        }
                        Ok(scope.to_owned())
                    })
                    .collect()
            })?,
            None => oauth::preset_scopes(provider, flow, owner.service),
        };
        let ca_file = match &raw.ca_file {
            Some(value) => Some(self.existing_file(&key("ca_file"), value)?),
            None => None,
        };
        Ok(OAuth {
            account: owner.account.to_owned(),
            provider,
            flow,
            client_id,
            client_secret,
            tenant,
            token_url,
            device_url,
            auth_url,
            scopes,
            ca_file,
            token_file: owner.token_file,
            timeout: owner.timeout,
        })
    }
}
