//! The raw layer: what serde reads.

use serde::Deserialize;
use toml::Spanned;

/// A value as written in the file, with the byte range it occupies.
pub(super) type RawValue = Spanned<toml::Value>;

/// Declares the raw struct of a section whose keys the key table checks:
/// one optional, spanned value per key (plus any sub-tables), and
/// `written`, the keys present with their values in declaration order.
macro_rules! raw_section {
    (
        $(#[$meta:meta])*
        struct $name:ident { $($key:ident,)* }
        $(tables { $($table:ident: $table_type:ty,)* })?
    ) => {
        $(#[$meta])*
        pub(super) struct $name {
            $(pub(super) $key: Option<RawValue>,)*
            $($(pub(super) $table: $table_type,)*)?
        }

        impl $name {
            pub(super) fn written(&self) -> impl Iterator<Item = (&'static str, &RawValue)> {
                [$((stringify!($key), self.$key.as_ref()),)*]
                    .into_iter()
                    .filter_map(|(key, value)| Some((key, value?)))
            }
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) general: RawGeneral,
    #[serde(default)]
    pub(super) account: Vec<Spanned<RawAccount>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [general] table")]
pub(super) struct RawGeneral {
    pub(super) state_dir: Option<RawValue>,
    pub(super) poll_interval: Option<RawValue>,
    pub(super) max_connections: Option<RawValue>,
}

raw_section! {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "an [[account]] table")]
    struct RawAccount {
        name,
        protocol,
        host,
        port,
        tls,
        ca_file,
        fingerprint,
        username,
        password,
        password_command,
        password_file,
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
        imap_id,
    }
    tables {
        oauth: Option<Spanned<RawOAuth>>,
        delivery: Option<Spanned<RawDelivery>>,
    }
}

raw_section! {
    /// `[account.delivery]`: how to talk to the server mail is delivered to.
    #[derive(Deserialize, Default, Clone)]
    #[serde(deny_unknown_fields, expecting = "an [account.delivery] table")]
    struct RawDelivery {
        tls,
        ca_file,
        fingerprint,
        username,
        password,
        password_command,
        password_file,
        auth,
        allow_plaintext_auth,
        timeout,
        seen,
    }
    tables {
        oauth: Option<Spanned<RawOAuth>>,
    }
}

/// `[account.oauth]` and `[account.delivery.oauth]`: OAuth2 instead of a
/// password.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, expecting = "an [account.oauth] table")]
pub(super) struct RawOAuth {
    pub(super) provider: Option<RawValue>,
    pub(super) flow: Option<RawValue>,
    pub(super) client_id: Option<RawValue>,
    pub(super) client_secret: Option<RawValue>,
    pub(super) client_secret_command: Option<RawValue>,
    pub(super) client_secret_file: Option<RawValue>,
    pub(super) tenant: Option<RawValue>,
    pub(super) token_url: Option<RawValue>,
    pub(super) device_url: Option<RawValue>,
    pub(super) auth_url: Option<RawValue>,
    pub(super) scopes: Option<RawValue>,
    pub(super) ca_file: Option<RawValue>,
}

impl RawAccount {
    /// The password keys, as `Parser::one_password_source` takes them.
    pub(super) fn password_keys(&self) -> [(&'static str, &Option<RawValue>); 3] {
        [
            ("password", &self.password),
            ("password_command", &self.password_command),
            ("password_file", &self.password_file),
        ]
    }
}

impl RawDelivery {
    /// The password keys, as `Parser::one_password_source` takes them.
    pub(super) fn password_keys(&self) -> [(&'static str, &Option<RawValue>); 3] {
        [
            ("delivery.password", &self.password),
            ("delivery.password_command", &self.password_command),
            ("delivery.password_file", &self.password_file),
        ]
    }
}
