//! Printing the effective configuration (`--check-config`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::values::*;
use super::*;
use crate::oauth::Provider;

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
    writeln!(f, "host = {}", toml_string(&account.server.host))?;
    writeln!(f, "port = {}", account.server.port)?;
    write_tls(
        f,
        account.server.tls,
        &account.server.ca_file,
        &account.server.fingerprint,
    )?;
    if let Some(username) = &account.server.username {
        writeln!(f, "username = {}", toml_string(username))?;
    }
    write_password(f, &account.server.password)?;
    writeln!(f, "auth = \"{}\"", keyword_name(account.server.auth))?;
    writeln!(
        f,
        "allow_plaintext_auth = {}",
        account.server.allow_plaintext_auth
    )?;
    writeln!(f, "keep = {}", account.keep)?;
    match &account.deliver {
        DeliverTarget::Maildir(path) => writeln!(
            f,
            "deliver = {}",
            toml_string(&format!("maildir:{}", escape_path(path)))
        )?,
        DeliverTarget::Mbox(mbox) => writeln!(
            f,
            "deliver = {}",
            toml_string(&format!("mbox:{}", escape_path(&mbox.path)))
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
    writeln!(
        f,
        "timeout = \"{}\"",
        format_duration(account.server.timeout)
    )?;
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
        writeln!(f, "imap_id = {}", account.imap_id)?;
        writeln!(
            f,
            "idle_timeout = \"{}\"",
            format_duration(account.idle_timeout)
        )?;
    }
    write_oauth(f, "account.oauth", &account.server.password)?;
    write_delivery(f, &account.deliver)
}

/// `tls`, and `ca_file` and `fingerprint` when set.
fn write_tls(
    f: &mut fmt::Formatter<'_>,
    tls: TlsMode,
    ca_file: &Option<PathBuf>,
    fingerprint: &Option<Fingerprint>,
) -> fmt::Result {
    writeln!(f, "tls = \"{}\"", keyword_name(tls))?;
    if let Some(ca_file) = ca_file {
        writeln!(f, "ca_file = {}", toml_path(ca_file))?;
    }
    if let Some(fingerprint) = fingerprint {
        writeln!(f, "fingerprint = \"{fingerprint}\"")?;
    }
    Ok(())
}

/// The password source, never the password itself. An `oauth` table is
/// written on its own, after the section's keys.
fn write_password(f: &mut fmt::Formatter<'_>, password: &PasswordSource) -> fmt::Result {
    write_secret(
        f,
        password,
        ["password", "password_command", "password_file"],
    )
}

/// A secret's source under the names of its inline, command and file keys.
fn write_secret(
    f: &mut fmt::Formatter<'_>,
    secret: &PasswordSource,
    [inline, command_key, file_key]: [&str; 3],
) -> fmt::Result {
    match secret {
        PasswordSource::None | PasswordSource::OAuth(_) => Ok(()),
        PasswordSource::Inline(_) => writeln!(f, "{inline} = \"****\""),
        PasswordSource::Command(command) => {
            writeln!(f, "{command_key} = {}", toml_string(command))
        }
        PasswordSource::File(path) => writeln!(f, "{file_key} = {}", toml_path(path)),
    }
}

/// The `[TABLE]` of an OAuth2 login, if `password` is one.
fn write_oauth(f: &mut fmt::Formatter<'_>, table: &str, password: &PasswordSource) -> fmt::Result {
    let PasswordSource::OAuth(oauth) = password else {
        return Ok(());
    };
    writeln!(f, "[{table}]")?;
    writeln!(f, "provider = \"{}\"", keyword_name(oauth.provider))?;
    writeln!(f, "flow = \"{}\"", keyword_name(oauth.flow))?;
    writeln!(f, "client_id = {}", toml_string(&oauth.client_id))?;
    write_secret(
        f,
        &oauth.client_secret,
        [
            "client_secret",
            "client_secret_command",
            "client_secret_file",
        ],
    )?;
    if let Some(tenant) = &oauth.tenant {
        writeln!(f, "tenant = {}", toml_string(tenant))?;
    }
    // A preset's endpoints follow from the provider (and tenant).
    if oauth.provider == Provider::Custom {
        writeln!(f, "token_url = {}", toml_string(&oauth.token_url))?;
        for (key, url) in [
            ("device_url", &oauth.device_url),
            ("auth_url", &oauth.auth_url),
        ] {
            if let Some(url) = url {
                writeln!(f, "{key} = {}", toml_string(url))?;
            }
        }
    }
    let scopes: Vec<String> = oauth
        .scopes
        .iter()
        .map(|scope| toml_string(scope))
        .collect();
    writeln!(f, "scopes = [{}]", scopes.join(", "))?;
    if let Some(ca_file) = &oauth.ca_file {
        writeln!(f, "ca_file = {}", toml_path(ca_file))?;
    }
    Ok(())
}

/// `deliver` as written in the file (the path of `maildir:` and `mbox:` aside).
fn deliver_url(target: &DeliverTarget) -> String {
    match target {
        DeliverTarget::Maildir(path) => format!("maildir:{}", escape_path(path)),
        DeliverTarget::Mbox(mbox) => format!("mbox:{}", escape_path(&mbox.path)),
        DeliverTarget::Mda(mda) => format!("mda:{}", mda.command),
        DeliverTarget::Mta(mta) => match (&mta.socket, mta.protocol) {
            (Some(path), _) => format!("lmtp:{}", escape_path(path)),
            (None, MtaProtocol::Lmtp) => format!("lmtp://{}", mta.server.authority()),
            (None, MtaProtocol::Smtp) => {
                let scheme = if mta.server.tls == TlsMode::Implicit {
                    "smtps"
                } else {
                    "smtp"
                };
                format!("{scheme}://{}", mta.server.authority())
            }
        },
        DeliverTarget::Imap(imap) => format!(
            "{}://{}/{}",
            if imap.server.tls == TlsMode::Implicit {
                "imaps"
            } else {
                "imap"
            },
            imap.server.authority(),
            percent_encode(&imap.folder, b"/")
        ),
    }
}

/// The `[account.delivery]` table, when the target has one.
fn write_delivery(f: &mut fmt::Formatter<'_>, target: &DeliverTarget) -> fmt::Result {
    let server = match target {
        DeliverTarget::Maildir(_) => return Ok(()),
        DeliverTarget::Mbox(mbox) => {
            writeln!(f, "[account.delivery]")?;
            return writeln!(f, "timeout = \"{}\"", format_duration(mbox.lock_timeout));
        }
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
    write_oauth(f, "account.delivery.oauth", &server.password)
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

/// `bytes` in the largest unit that divides it exactly, e.g. `25MB`.
pub(super) fn format_size(bytes: u64) -> String {
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
