//! getmail6 rc files: one account per file, in Python's INI dialect
//! (`[retriever]`, `[destination]`, `[options]`), with Python tuples for
//! lists.
//!
//! The INI reader is ours, not a crate's: the notes must name the line of
//! each key, which the INI crates do not keep, and getmail's values (tuples
//! such as `("INBOX", "Lists")`) need their own reading anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::state::OldState;
use super::{Account, Import, expand_tilde, is_loopback};
use crate::error::{Error, Kind};

/// A value with the line it was written on.
#[derive(Debug, Clone)]
struct Value {
    text: String,
    line: usize,
}

type Section = HashMap<String, Value>;

/// Python's ConfigParser, as getmail uses it: `[section]`, `key = value` or
/// `key: value`, indented continuation lines, `#` and `;` comments.
fn sections(path: &Path, text: &str) -> Result<HashMap<String, Section>, Error> {
    let mut sections: HashMap<String, Section> = HashMap::new();
    let mut current: Option<String> = None;
    let mut last_key: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if raw.starts_with(char::is_whitespace)
            && let (Some(section), Some(key)) = (&current, &last_key)
            && let Some(value) = sections.get_mut(section).and_then(|s| s.get_mut(key))
        {
            value.text.push(' ');
            value.text.push_str(trimmed);
            continue;
        }
        if let Some(name) = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            current = Some(name.trim().to_owned());
            sections.entry(name.trim().to_owned()).or_default();
            last_key = None;
            continue;
        }
        let Some(split) = trimmed.find(['=', ':']) else {
            return Err(Error::new(
                Kind::Config,
                format!("{}:{line}: expected `key = value`", path.display()),
            ));
        };
        let Some(section) = &current else {
            return Err(Error::new(
                Kind::Config,
                format!("{}:{line}: a key before any [section]", path.display()),
            ));
        };
        let key = trimmed[..split].trim().to_ascii_lowercase();
        let value = trimmed[split + 1..].trim().to_owned();
        sections
            .entry(section.clone())
            .or_default()
            .insert(key.clone(), Value { text: value, line });
        last_key = Some(key);
    }
    Ok(sections)
}

/// The strings of a Python tuple or list (`("a", 'b')`), or the value
/// itself when it is not one.
fn tuple(value: &str) -> Vec<String> {
    let inner = value.trim();
    let Some(inner) = inner
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .or_else(|| inner.strip_prefix('[').and_then(|v| v.strip_suffix(']')))
    else {
        return vec![unquote(value)];
    };
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' {
            let mut item = String::new();
            while let Some(next) = chars.next() {
                match next {
                    '\\' => item.extend(chars.next()),
                    q if q == c => break,
                    other => item.push(other),
                }
            }
            items.push(item);
        }
    }
    items
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.to_owned();
        }
    }
    value.to_owned()
}

/// Python's `getboolean`.
fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// Quotes `word` for `sh`, unless it needs none.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-~".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Reads one getmail rc file. Its oldmail files are looked for in the
/// file's own directory (getmail's `--getmaildir` defaults to where the rc
/// files are).
pub fn read(path: &Path, text: &str, home: &Path) -> Result<Import, Error> {
    let sections = sections(path, text)?;
    let mut import = Import::default();
    let empty = Section::new();
    let retriever = sections.get("retriever").ok_or_else(|| {
        Error::new(
            Kind::Config,
            format!("{}: no [retriever] section", path.display()),
        )
    })?;
    let destination = sections.get("destination").unwrap_or(&empty);
    let options = sections.get("options").unwrap_or(&empty);
    let get = |section: &Section, key: &str| section.get(key).map(|v| unquote(&v.text));
    let line_of = |section: &Section, key: &str| section.get(key).map_or(0, |v| v.line);

    let kind = get(retriever, "type").unwrap_or_default();
    let (protocol, implicit_tls) = match kind.as_str() {
        "SimplePOP3Retriever" | "BrokenUIDLPOP3Retriever" => ("pop3", false),
        "SimplePOP3SSLRetriever" | "BrokenUIDLPOP3SSLRetriever" => ("pop3", true),
        "SimpleIMAPRetriever" => ("imap", false),
        "SimpleIMAPSSLRetriever" => ("imap", true),
        "MultidropPOP3Retriever"
        | "MultidropPOP3SSLRetriever"
        | "MultidropIMAPRetriever"
        | "MultidropIMAPSSLRetriever" => {
            import.note(path, line_of(retriever, "type"), format!(
                "{kind}: mailfetch does not sort a multidrop mailbox by recipient yet; all its mail goes to the one destination below"
            ));
            (
                if kind.contains("POP3") {
                    "pop3"
                } else {
                    "imap"
                },
                kind.ends_with("SSLRetriever"),
            )
        }
        other => {
            return Err(Error::new(
                Kind::Config,
                format!(
                    "{}:{}: retriever type {other:?} cannot be imported (mailfetch speaks POP3 and IMAP)",
                    path.display(),
                    line_of(retriever, "type")
                ),
            ));
        }
    };
    let server = get(retriever, "server").ok_or_else(|| {
        Error::new(
            Kind::Config,
            format!("{}: [retriever] has no server", path.display()),
        )
    })?;
    let username = get(retriever, "username").unwrap_or_default();
    let default_port = match (protocol, implicit_tls) {
        ("pop3", false) => 110,
        ("pop3", true) => 995,
        (_, false) => 143,
        (_, true) => 993,
    };
    let port: u16 = get(retriever, "port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(default_port);
    let name = path
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("getmailrc")
                .trim_start_matches(['-', '.', '_'])
                .to_owned()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| server.clone());
    let mut account = Account {
        name,
        protocol,
        host: server.clone(),
        port: (port != default_port).then_some(port),
        tls: if implicit_tls { "implicit" } else { "starttls" },
        username: username.clone(),
        keep: true,
        origin: (path.to_owned(), line_of(retriever, "type")),
        ..Account::default()
    };
    if !implicit_tls {
        if is_loopback(&server) {
            account.tls = "none";
        } else {
            import.note(path, line_of(retriever, "type"), format!(
                "{kind} sent the password unencrypted; mailfetch requires STARTTLS (tls = \"starttls\") \
                 so that it never does: set tls = \"none\" and allow_plaintext_auth = true only for a server without TLS"
            ));
        }
    }
    if kind.starts_with("BrokenUIDL") {
        import.note(path, line_of(retriever, "type"), "BrokenUIDLPOP3Retriever: mailfetch needs UIDL to keep messages on the server; with keep = true it refuses a server without UIDL");
    }
    if let Some(password) = get(retriever, "password") {
        account.password = Some(password);
    } else if let Some(command) = retriever.get("password_command") {
        let words = tuple(&command.text);
        account.password_command = Some(
            words
                .iter()
                .map(|w| shell_word(w))
                .collect::<Vec<_>>()
                .join(" "),
        );
    } else {
        account.password_command = Some(super::missing_password_command(&account.name));
        import.note(path, line_of(retriever, "type"), "no password or password_command (getmail asked for it, or read the keyring): set password_file or password_command");
    }
    if let Some(ca) = get(retriever, "ca_certs") {
        account.ca_file = Some(expand_tilde(&ca, home));
    }
    if retriever.contains_key("ssl_fingerprints") {
        import.note(path, line_of(retriever, "ssl_fingerprints"), format!(
            "ssl_fingerprints: set fingerprint = \"sha256:…\" with the server's SHA-256 fingerprint (`openssl s_client -connect {server}:{port} </dev/null | openssl x509 -noout -fingerprint -sha256`); getmail's list is not copied"
        ));
    }
    if boolean(&get(retriever, "use_xoauth2").unwrap_or_default()) == Some(true) {
        account.auth = Some("xoauth2");
        import.note(path, line_of(retriever, "use_xoauth2"), "use_xoauth2: imported as auth = \"xoauth2\" with getmail's token command; mailfetch can also keep the tokens itself ([account.oauth], then `mailfetch login NAME`)");
    }
    if boolean(&get(retriever, "use_apop").unwrap_or_default()) == Some(true) {
        account.auth = Some("apop");
    }
    if boolean(&get(retriever, "use_cram_md5").unwrap_or_default()) == Some(true) {
        account.auth = Some("cram-md5");
    }
    if protocol == "imap" {
        if let Some(mailboxes) = retriever.get("mailboxes") {
            if mailboxes.text.trim() == "ALL" {
                import.note(path, mailboxes.line, "mailboxes = ALL: mailfetch fetches the folders it is given; list them in folders");
            } else {
                account.folders = Some(tuple(&mailboxes.text));
            }
        }
        if let Some(target) = get(retriever, "move_on_delete") {
            account.move_to = Some(target);
        }
    }
    for key in [
        "keyfile",
        "certfile",
        "ssl_version",
        "ssl_ciphers",
        "ssl_cert_hostname",
        "imap_search",
        "imap_on_delete",
        "use_peek",
        "use_kerberos",
    ] {
        if let Some(value) = retriever.get(key) {
            import.note(
                path,
                value.line,
                format!("`{key}` has no mailfetch equivalent; ignored"),
            );
        }
    }

    account.keep = !options
        .get("delete")
        .and_then(|v| boolean(&v.text))
        .unwrap_or(false);
    if let Some(days) = options.get("delete_after") {
        import.note(path, days.line, "delete_after: mailfetch either keeps messages (keep = true) or deletes them once delivered; imported as keep = true, delete old mail on the server by other means");
    }
    if let Some(size) = options.get("delete_bigger_than") {
        import.note(
            path,
            size.line,
            "delete_bigger_than: not supported; large messages stay on the server",
        );
    }
    let read_all = options
        .get("read_all")
        .and_then(|v| boolean(&v.text))
        .unwrap_or(true);
    if read_all && account.keep {
        import.note(path, line_of(options, "read_all").max(account.origin.1), "read_all (getmail's default) with delete = false fetched every message at every run; mailfetch fetches each message once (fetch = \"new\")");
    }
    if let Some(size) = get(options, "max_message_size") {
        account.max_size = size.parse().ok().filter(|&n| n > 0);
    }
    if let Some(count) = get(options, "max_messages_per_session") {
        account.max_per_poll = count.parse().ok().filter(|&n| n > 0);
    }
    for key in [
        "delivered_to",
        "received",
        "message_log",
        "message_log_syslog",
        "max_bytes_per_session",
    ] {
        if let Some(value) = options.get(key) {
            import.note(
                path,
                value.line,
                format!("`{key}` has no mailfetch equivalent; ignored"),
            );
        }
    }

    account.deliver = deliver(
        path,
        &mut import,
        &sections,
        destination,
        &account.name,
        home,
        0,
    );
    let mut filters: Vec<(&String, &Section)> = sections
        .iter()
        .filter(|(name, _)| name.starts_with("filter"))
        .collect();
    filters.sort_by_key(|(name, _)| *name);
    for (name, section) in filters {
        import.note(path, section.get("type").map_or(0, |v| v.line), format!(
            "[{name}]: mailfetch has no filters; run the filter from an MDA (deliver = \"mda:…\") instead"
        ));
    }
    if let Some(user) = destination.get("user") {
        import.note(
            path,
            user.line,
            "destination `user`: mailfetch runs as the user who starts it",
        );
    }
    account.old_state = Some(OldState::Oldmail {
        dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
        server,
        port,
        username,
        pop_uidl_broken: kind.starts_with("BrokenUIDL"),
    });
    import.account.push(account);
    Ok(import)
}

/// The `deliver` value for the destination `section`: Maildir, an MDA,
/// LMTP; for getmail's sorting destinations, the one they fall back on.
fn deliver(
    path: &Path,
    import: &mut Import,
    sections: &HashMap<String, Section>,
    section: &Section,
    account: &str,
    home: &Path,
    depth: usize,
) -> String {
    let get = |key: &str| section.get(key).map(|v| unquote(&v.text));
    let line = section.get("type").map_or(0, |v| v.line);
    let kind = get("type").unwrap_or_default();
    let fallback = |import: &mut Import, why: String| {
        import.note(
            path,
            line,
            format!("{why}; imported as maildir:~/Mail/{account}: change deliver"),
        );
        format!("maildir:~/Mail/{account}")
    };
    // A `[section]` reference, as MultiSorter's `default` and
    // MultiDestination's entries write one.
    let referenced = |name: &str| {
        name.strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .and_then(|n| sections.get(n))
    };
    match kind.as_str() {
        "Maildir" => {
            let target = get("path").unwrap_or_default();
            format!(
                "maildir:{}",
                home_path(path, import, line, target.trim_end_matches('/'), home)
            )
        }
        "MDA_external" => {
            let program = get("path").unwrap_or_default();
            let arguments = section
                .get("arguments")
                .map(|v| tuple(&v.text))
                .unwrap_or_default();
            let mut words = vec![shell_word(&program)];
            for argument in arguments {
                // getmail's %(recipient) and %(sender) are mailfetch's %T and %F.
                let argument = argument
                    .replace("%(recipient)s", "%T")
                    .replace("%(recipient)", "%T")
                    .replace("%(sender)s", "%F")
                    .replace("%(sender)", "%F");
                words.push(shell_word(&argument));
            }
            format!("mda:{}", words.join(" "))
        }
        "MDA_lmtp" => {
            let host = get("host").unwrap_or_else(|| "localhost".into());
            if host.starts_with('/') {
                format!("lmtp:{host}")
            } else {
                let port = get("port").unwrap_or_else(|| "24".into());
                format!("lmtp://{host}:{port}")
            }
        }
        "MultiSorter" | "MultiGuesser" if depth < 4 => {
            import.note(path, line, format!("{kind}: mailfetch does not sort by recipient yet; all mail goes to its default destination"));
            match get("default").as_deref().and_then(referenced) {
                Some(default) => deliver(path, import, sections, default, account, home, depth + 1),
                None => fallback(import, format!("{kind} without a usable default")),
            }
        }
        "MultiDestination" if depth < 4 => {
            let targets = section
                .get("destinations")
                .map(|v| tuple(&v.text))
                .unwrap_or_default();
            if targets.len() > 1 {
                import.note(path, line, "MultiDestination: mailfetch delivers to one destination; imported with the first one");
            }
            match targets.first() {
                Some(first) => match referenced(first) {
                    Some(target) => {
                        deliver(path, import, sections, target, account, home, depth + 1)
                    }
                    // A bare path: a Maildir if it ends in `/`, else an mbox.
                    None if first.ends_with('/') => {
                        format!(
                            "maildir:{}",
                            home_path(path, import, line, first.trim_end_matches('/'), home)
                        )
                    }
                    None => fallback(
                        import,
                        format!(
                            "MultiDestination's {first:?} is an mbox, which mailfetch cannot write yet"
                        ),
                    ),
                },
                None => fallback(import, "MultiDestination without destinations".into()),
            }
        }
        "" => fallback(import, "no [destination]".into()),
        other => fallback(
            import,
            format!("destination type {other:?} is not supported by mailfetch yet"),
        ),
    }
}

/// A path as mailfetch can read it: getmail's `~user/…` (which mailfetch
/// does not expand) becomes that user's home.
fn home_path(file: &Path, import: &mut Import, line: usize, value: &str, home: &Path) -> String {
    let Some(rest) = value
        .strip_prefix('~')
        .filter(|rest| !rest.is_empty() && !rest.starts_with('/'))
    else {
        return value.to_owned();
    };
    let (user, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let user_home = user_home(user).unwrap_or_else(|| {
        import.note(
            file,
            line,
            format!("~{user}: no such user here; written as /home/{user}, check it"),
        );
        PathBuf::from("/home").join(user)
    });
    if user_home == home {
        return format!("~/{tail}").trim_end_matches('/').to_owned();
    }
    user_home
        .join(tail)
        .display()
        .to_string()
        .trim_end_matches('/')
        .to_owned()
}

/// The home directory of `user` from the password database.
fn user_home(user: &str) -> Option<PathBuf> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns null or a pointer to a static record whose
    // pw_dir is a NUL-terminated string, copied at once.
    unsafe {
        let record = libc::getpwnam(name.as_ptr());
        if record.is_null() || (*record).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*record).pw_dir)
            .to_string_lossy()
            .into_owned();
        Some(PathBuf::from(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_and_quoting() {
        assert_eq!(tuple(r#"("INBOX", 'Lists.rust')"#), ["INBOX", "Lists.rust"]);
        assert_eq!(tuple("INBOX"), ["INBOX"]);
        assert_eq!(shell_word("pass show x"), "'pass show x'");
        assert_eq!(shell_word("/usr/bin/pass"), "/usr/bin/pass");
    }
}
