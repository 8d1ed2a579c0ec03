//! The raw layer: what serde reads.

use serde::Deserialize;
use toml::Spanned;

/// A value as written in the file, with the byte range it occupies.
pub(super) type RawValue = Spanned<toml::Value>;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[account]] table")]
pub(super) struct RawAccount {
    pub(super) name: Option<RawValue>,
    pub(super) protocol: Option<RawValue>,
    pub(super) host: Option<RawValue>,
    pub(super) port: Option<RawValue>,
    pub(super) tls: Option<RawValue>,
    pub(super) ca_file: Option<RawValue>,
    pub(super) fingerprint: Option<RawValue>,
    pub(super) username: Option<RawValue>,
    pub(super) password: Option<RawValue>,
    pub(super) password_command: Option<RawValue>,
    pub(super) password_file: Option<RawValue>,
    pub(super) auth: Option<RawValue>,
    pub(super) allow_plaintext_auth: Option<RawValue>,
    pub(super) keep: Option<RawValue>,
    pub(super) deliver: Option<RawValue>,
    pub(super) to: Option<RawValue>,
    pub(super) envelope_from: Option<RawValue>,
    pub(super) on_reject: Option<RawValue>,
    pub(super) delivery: Option<Spanned<RawDelivery>>,
    pub(super) received_header: Option<RawValue>,
    pub(super) timeout: Option<RawValue>,
    pub(super) folders: Option<RawValue>,
    pub(super) fetch: Option<RawValue>,
    pub(super) max_size: Option<RawValue>,
    pub(super) max_per_poll: Option<RawValue>,
    pub(super) mark_seen: Option<RawValue>,
    pub(super) move_to: Option<RawValue>,
    pub(super) interval: Option<RawValue>,
    pub(super) idle: Option<RawValue>,
    pub(super) idle_timeout: Option<RawValue>,
}

/// `[account.delivery]`: how to talk to the server mail is delivered to.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, expecting = "an [account.delivery] table")]
pub(super) struct RawDelivery {
    pub(super) tls: Option<RawValue>,
    pub(super) ca_file: Option<RawValue>,
    pub(super) fingerprint: Option<RawValue>,
    pub(super) username: Option<RawValue>,
    pub(super) password: Option<RawValue>,
    pub(super) password_command: Option<RawValue>,
    pub(super) password_file: Option<RawValue>,
    pub(super) auth: Option<RawValue>,
    pub(super) allow_plaintext_auth: Option<RawValue>,
    pub(super) timeout: Option<RawValue>,
    pub(super) seen: Option<RawValue>,
}
