//! mpop's configuration (`~/.mpoprc`, `~/.config/mpop/config`): one
//! command per line, `defaults` and `account NAME [: OTHER, …]` opening
//! sections, an account starting from the defaults and then taking the
//! settings of the accounts it names (conf.c's `read_conffile`).

use std::collections::HashMap;
use std::path::Path;

use super::state::OldState;
use super::{Account, Import, expand_tilde, is_loopback, mda_through_shell, seconds};
use crate::error::{Error, Kind};

/// A command's argument with the line it was on.
type Settings = HashMap<String, (String, usize)>;

/// Reads an mpop configuration file.
pub fn read(path: &Path, text: &str, home: &Path) -> Result<Import, Error> {
    let mut defaults = Settings::new();
    let mut accounts: Vec<(String, usize, Settings, bool)> = Vec::new();
    // Where commands go: None before the first section, Some(None) for
    // defaults, Some(Some(i)) for account i.
    let mut current: Option<Option<usize>> = None;
    let mut import = Import::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (command, argument) = match trimmed.split_once(char::is_whitespace) {
            Some((command, argument)) => (command, unquote(argument.trim())),
            None => (trimmed, String::new()),
        };
        match command {
            "defaults" => current = Some(None),
            "account" => {
                let (name, parents) = match argument.split_once(':') {
                    Some((name, parents)) => (name.trim().to_owned(), Some(parents)),
                    None => (argument.trim().to_owned(), None),
                };
                let mut settings = defaults.clone();
                for parent in parents.into_iter().flat_map(|p| p.split(',')) {
                    let parent = parent.trim();
                    let Some((_, _, inherited, _)) = accounts.iter().find(|(n, ..)| n == parent) else {
                        return Err(Error::new(
                            Kind::Config,
                            format!("{}:{line}: account {parent} not (yet) defined", path.display()),
                        ));
                    };
                    settings.extend(inherited.clone());
                }
                accounts.push((name, line, settings, parents.is_some()));
                current = Some(Some(accounts.len() - 1));
            }
            "eval" => import.note(path, line, "`eval`: the command's output is not imported; run it and put its result in the file, or translate it by hand"),
            _ => {
                let settings = match current {
                    None => {
                        return Err(Error::new(
                            Kind::Config,
                            format!("{}:{line}: first command must be account or defaults", path.display()),
                        ));
                    }
                    Some(None) => &mut defaults,
                    Some(Some(i)) => {
                        // An account that only names another is an alias
                        // (`account default : main`) unless it sets something.
                        accounts[i].3 = false;
                        &mut accounts[i].2
                    }
                };
                settings.insert(command.to_owned(), (argument, line));
            }
        }
    }
    for (name, line, settings, alias) in accounts {
        if alias {
            import.note(path, line, format!("account {name} only names other accounts; not imported (it would fetch the same mailbox twice)"));
            continue;
        }
        if let Some(account) = account(path, &mut import, name, line, &settings, home) {
            import.account.push(account);
        }
    }
    Ok(import)
}

fn unquote(argument: &str) -> String {
    match argument.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
        Some(inner) => inner.to_owned(),
        None => argument.to_owned(),
    }
}

fn is_on(value: &str) -> bool {
    value.is_empty() || value == "on"
}

fn account(
    path: &Path,
    import: &mut Import,
    name: String,
    line: usize,
    settings: &Settings,
    home: &Path,
) -> Option<Account> {
    let get = |key: &str| settings.get(key).map(|(value, _)| value.as_str());
    let line_of = |key: &str| settings.get(key).map_or(line, |(_, line)| *line);
    let Some(host) = get("host").map(str::to_owned) else {
        import.note(
            path,
            line,
            format!("account {name} has no host; not imported"),
        );
        return None;
    };
    let tls = get("tls").is_some_and(is_on);
    let starttls = get("tls_starttls").is_none_or(is_on);
    let mut account = Account {
        name: name.clone(),
        protocol: "pop3",
        host: host.clone(),
        port: get("port").and_then(|p| p.parse().ok()),
        tls: match (tls, starttls) {
            (true, true) => "starttls",
            (true, false) => "implicit",
            (false, _) => "none",
        },
        username: get("user").unwrap_or_default().to_owned(),
        // mpop keeps nothing by default.
        keep: get("keep").is_some_and(|k| k != "off"),
        origin: (path.to_owned(), line),
        ..Account::default()
    };
    if !tls && !is_loopback(&host) {
        account.tls = "starttls";
        import.note(path, line_of("tls"), "tls is off: mpop sent the password unencrypted; mailfetch requires STARTTLS (tls = \"starttls\"); set tls = \"none\" and allow_plaintext_auth = true only for a server without TLS");
    }
    if let Some(keep) = get("keep").filter(|k| !matches!(*k, "on" | "off" | "")) {
        import.note(path, line_of("keep"), format!("keep {keep}: mailfetch keeps messages for good or deletes them once delivered; imported as keep = true"));
    }
    if let Some(password) = get("password") {
        account.password = Some(password.to_owned());
    } else if let Some(command) = get("passwordeval") {
        account.password_command = Some(command.to_owned());
    } else {
        account.password_command = Some(super::missing_password_command(&name));
        import.note(path, line, format!("account {name}: no password or passwordeval (mpop read the keyring or asked): set password_file or password_command"));
    }
    if let Some(trust) = get("tls_trust_file").filter(|t| *t != "system") {
        account.ca_file = Some(expand_tilde(trust, home));
    }
    if let Some(pin) = get("tls_fingerprint") {
        // mpop takes SHA-256 (32 bytes) or, deprecated, SHA-1/MD5.
        if pin.split(':').count() == 32 {
            import.note(path, line_of("tls_fingerprint"), "tls_fingerprint: add fingerprint = \"sha256:…\" with this value by hand (it replaces the CA check)");
        } else {
            import.note(path, line_of("tls_fingerprint"), "tls_fingerprint: a SHA-1 or MD5 fingerprint cannot become mailfetch's SHA-256 pin; mailfetch prints the SHA-256 one when it refuses a certificate");
        }
    }
    if get("tls_certcheck") == Some("off") {
        import.note(path, line_of("tls_certcheck"), "tls_certcheck off: mailfetch always checks certificates; pin a self-signed one with fingerprint");
    }
    match get("auth") {
        None | Some("" | "on") => {}
        Some("user") => account.auth = Some("user"),
        Some("apop") => account.auth = Some("apop"),
        Some("plain") => account.auth = Some("plain"),
        Some("cram-md5") => account.auth = Some("cram-md5"),
        Some("xoauth2") => account.auth = Some("xoauth2"),
        Some("oauthbearer") => account.auth = Some("oauthbearer"),
        Some(other) => import.note(path, line_of("auth"), format!("auth {other}: not supported; mailfetch chooses among the mechanisms the server offers")),
    }
    if let Some(timeout) = get("timeout")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0)
    {
        account.timeout = Some(seconds(timeout));
    }
    if let Some(size) = get("skipsize").and_then(parse_size) {
        account.max_size = Some(size);
    }
    let delivery = get("delivery").unwrap_or("");
    account.deliver = match delivery.split_once(char::is_whitespace) {
        Some(("mda", command)) => mda_through_shell(command.trim()),
        Some(("maildir", dir)) => format!("maildir:{}", dir.trim().trim_end_matches('/')),
        _ => {
            import.note(path, line_of("delivery"), format!(
                "delivery {delivery:?} is not supported by mailfetch yet; imported as maildir:~/Mail/{name}: change deliver"
            ));
            format!("maildir:~/Mail/{name}")
        }
    };
    for key in [
        "filter",
        "killsize",
        "proxy_host",
        "proxy_port",
        "source_ip",
        "socket",
        "tls_key_file",
        "tls_cert_file",
        "tls_crl_file",
        "tls_priorities",
        "tls_host_override",
        "tls_min_dh_prime_bits",
        "ntlmdomain",
        "pipelining",
        "received_header",
        "only_new",
    ] {
        if settings.contains_key(key) && !(key == "only_new" && get(key).is_some_and(is_on)) {
            import.note(
                path,
                line_of(key),
                format!(
                    "`{key}` is not imported; {}",
                    match key {
                        "filter" => "filter in the MDA instead",
                        "killsize" => "large messages stay on the server (max_size)",
                        "received_header" => "mailfetch's received_header key does the same",
                        _ => "ignored",
                    }
                ),
            );
        }
    }
    let uidls = get("uidls_file").unwrap_or("~/.mpop_uidls/%U_at_%H");
    let uidls = expand_tilde(uidls, home)
        .replace("%U", &account.username)
        .replace("%H", &host);
    account.old_state = Some(OldState::MpopUidls {
        path: uidls.into(),
        host,
        username: account.username.clone(),
    });
    Some(account)
}

/// mpop's sizes: a number with an optional k or m (powers of 1024).
fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let (number, unit) = match value.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => value.split_at(at),
        None => (value, ""),
    };
    let number: u64 = number.parse().ok()?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1024,
        "m" => 1024 * 1024,
        _ => return None,
    };
    Some(number * factor).filter(|&n| n > 0)
}
