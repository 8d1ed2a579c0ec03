//! `.fetchmailrc`: fetchmail's free-form grammar (rcfile_l.l, rcfile_y.y)
//! read into mailfetch accounts.
//!
//! The file is a stream of words: `poll`/`skip`/`defaults` start a server
//! entry, `user` starts a user of that server, everything else is an
//! option of whichever is open. Noise words (`and`, `with`, `has`, `wants`,
//! `options`) and the punctuation `: ; ,` mean nothing. An option fetchmail
//! knows but mailfetch does not translate becomes a [`Note`](super::Note)
//! with its line, never a silent drop.

use std::path::Path;

use super::state::OldState;
use super::{Account, General, Import, STARTTLS_REQUIRED_NOTE, expand_tilde, is_loopback, seconds};
use crate::error::{Error, Kind};

/// One word of the rc file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    /// Quoted strings are always values, never keywords.
    quoted: bool,
    line: usize,
}

fn tokenize(path: &Path, text: &str) -> Result<Vec<Token>, Error> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() || ":;,".contains(c) => {
                chars.next();
            }
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            '"' | '\'' => {
                let start = line;
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(Error::new(
                                Kind::Config,
                                format!("{}:{start}: unterminated string", path.display()),
                            ));
                        }
                        Some(q) if q == c => break,
                        // fetchmail's escapes() runs on both kinds of string.
                        Some('\\') => value.push(unescape(&mut chars)),
                        Some(other) => {
                            if other == '\n' {
                                line += 1;
                            }
                            value.push(other)
                        }
                    }
                }
                tokens.push(Token {
                    text: value,
                    quoted: true,
                    line: start,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(c) = chars.next_if(|&c| !c.is_whitespace() && !":;,#\"".contains(c))
                {
                    word.push(c);
                }
                tokens.push(Token {
                    text: word,
                    quoted: false,
                    line,
                });
            }
        }
    }
    Ok(tokens)
}

/// The character after a backslash in a double-quoted string, as
/// fetchmail's `escapes()` reads it.
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> char {
    match chars.next() {
        Some('n') => '\n',
        Some('t') => '\t',
        Some('r') => '\r',
        Some('b') => '\u{8}',
        Some('x') => {
            let mut value = 0u32;
            for _ in 0..2 {
                match chars.peek().and_then(|c| c.to_digit(16)) {
                    Some(digit) => {
                        value = value * 16 + digit;
                        chars.next();
                    }
                    None => break,
                }
            }
            char::from_u32(value).unwrap_or('?')
        }
        Some(d @ '0'..='7') => {
            let mut value = d.to_digit(8).unwrap_or(0);
            for _ in 0..2 {
                match chars.peek().and_then(|c| c.to_digit(8)) {
                    Some(digit) => {
                        value = value * 8 + digit;
                        chars.next();
                    }
                    None => break,
                }
            }
            char::from_u32(value).unwrap_or('?')
        }
        Some(other) => other,
        None => '\\',
    }
}

const NOISE: &[&str] = &["and", "with", "has", "wants", "options"];

/// Options that take one value.
const ONE_VALUE: &[&str] = &[
    "via",
    "proto",
    "protocol",
    "port",
    "service",
    "auth",
    "authenticate",
    "timeout",
    "interval",
    "qvirtual",
    "principal",
    "esmtpname",
    "esmtppassword",
    "interface",
    "monitor",
    "plugin",
    "plugout",
    "bad-header",
    "password",
    "pass",
    "smtpaddress",
    "smtpname",
    "mda",
    "bsmtp",
    "preconnect",
    "postconnect",
    "limit",
    "warnings",
    "batchlimit",
    "fetchlimit",
    "fetchsizelimit",
    "fastuidl",
    "expunge",
    "sslproto",
    "sslcertfile",
    "sslcertpath",
    "sslcommonname",
    "sslfingerprint",
    "sslkey",
    "sslcert",
    "properties",
    "tracepolls",
];

/// Options that take a list of values, up to the next keyword.
const LIST: &[&str] = &[
    "aka",
    "localdomains",
    "is",
    "to",
    "folder",
    "folders",
    "smtphost",
    "smtphosts",
    "fetchdomains",
    "antispam",
];

/// Options without a value (each may follow `no`).
const FLAGS: &[&str] = &[
    "uidl",
    "dns",
    "checkalias",
    "envelope",
    "keep",
    "nokeep",
    "fetchall",
    "flush",
    "limitflush",
    "rewrite",
    "stripcr",
    "forcecr",
    "pass8bits",
    "dropstatus",
    "dropdelivered",
    "mimedecode",
    "idle",
    "ssl",
    "sslcertck",
    "nosslcertck",
    "lmtp",
    "showdots",
    "here",
    "there",
    "bouncemail",
    "spambounce",
    "softbounce",
    "syslog",
    "invisible",
];

fn is_keyword(token: &Token) -> bool {
    !token.quoted
        && [
            ONE_VALUE,
            LIST,
            FLAGS,
            NOISE,
            &["poll", "skip", "defaults", "user", "username", "no", "set"],
        ]
        .iter()
        .any(|set| set.contains(&token.text.to_ascii_lowercase().as_str()))
}

/// One option with its values.
#[derive(Debug, Clone)]
struct Setting {
    name: String,
    negated: bool,
    values: Vec<String>,
    line: usize,
}

/// A `poll`, `skip` or `defaults` entry.
#[derive(Debug, Clone, Default)]
struct Server {
    name: String,
    skip: bool,
    line: usize,
    options: Vec<Setting>,
    users: Vec<User>,
}

#[derive(Debug, Clone, Default)]
struct User {
    name: String,
    line: usize,
    options: Vec<Setting>,
}

/// The file read into entries and global `set` statements.
#[derive(Debug, Default)]
struct Rc {
    globals: Vec<Setting>,
    defaults: Vec<Setting>,
    servers: Vec<Server>,
}

fn structure(path: &Path, tokens: Vec<Token>) -> Result<Rc, Error> {
    let mut rc = Rc::default();
    let mut tokens = tokens.into_iter().peekable();
    // Where options go now: 0 = nowhere yet, 1 = defaults, 2 = a server, 3 = a user.
    let mut scope = 0;
    let syntax = |line: usize, what: String| {
        Error::new(Kind::Config, format!("{}:{line}: {what}", path.display()))
    };
    while let Some(token) = tokens.next() {
        let word = token.text.to_ascii_lowercase();
        if !token.quoted && NOISE.contains(&word.as_str()) {
            continue;
        }
        match word.as_str() {
            "set" if !token.quoted => {
                let mut negated = false;
                let mut name = tokens
                    .next()
                    .ok_or_else(|| syntax(token.line, "`set` needs a name".into()))?;
                if name.text == "no" {
                    negated = true;
                    name = tokens
                        .next()
                        .ok_or_else(|| syntax(token.line, "`set no` needs a name".into()))?;
                }
                let mut values = Vec::new();
                let flag = FLAGS.contains(&name.text.as_str()) || negated;
                if !flag {
                    if tokens.peek().is_some_and(|t| t.text == "=" && !t.quoted) {
                        tokens.next();
                    }
                    if let Some(value) = tokens.next_if(|t| !is_keyword(t)) {
                        values.push(value.text);
                    }
                }
                rc.globals.push(Setting {
                    name: name.text,
                    negated,
                    values,
                    line: token.line,
                });
                continue;
            }
            "poll" | "skip" if !token.quoted => {
                let name = tokens
                    .next()
                    .ok_or_else(|| syntax(token.line, format!("`{word}` needs a server name")))?;
                rc.servers.push(Server {
                    name: name.text,
                    skip: word == "skip",
                    line: token.line,
                    ..Server::default()
                });
                scope = 2;
                continue;
            }
            "defaults" if !token.quoted => {
                scope = 1;
                continue;
            }
            "user" | "username" if !token.quoted => {
                let name = tokens
                    .next()
                    .ok_or_else(|| syntax(token.line, "`user` needs a name".into()))?;
                let Some(server) = rc.servers.last_mut().filter(|_| scope >= 2) else {
                    // Users in `defaults` set a default remote name; rare.
                    rc.defaults.push(Setting {
                        name: "user".into(),
                        negated: false,
                        values: vec![name.text],
                        line: token.line,
                    });
                    continue;
                };
                server.users.push(User {
                    name: name.text,
                    line: token.line,
                    options: Vec::new(),
                });
                scope = 3;
                continue;
            }
            _ => {}
        }
        let (negated, name) = if word == "no" && !token.quoted {
            let Some(next) = tokens.next() else { break };
            (true, next.text.to_ascii_lowercase())
        } else {
            (false, word)
        };
        let mut values = Vec::new();
        if ONE_VALUE.contains(&name.as_str()) && !negated {
            let value = tokens
                .next()
                .ok_or_else(|| syntax(token.line, format!("`{name}` needs a value")))?;
            values.push(value.text);
        } else if LIST.contains(&name.as_str()) {
            while let Some(value) = tokens.next_if(|t| !is_keyword(t)) {
                values.push(value.text);
            }
        } else if !FLAGS.contains(&name.as_str()) {
            return Err(syntax(token.line, format!("unknown keyword `{name}`")));
        }
        let setting = Setting {
            name,
            negated,
            values,
            line: token.line,
        };
        match scope {
            1 => rc.defaults.push(setting),
            2 => rc
                .servers
                .last_mut()
                .expect("scope 2 has a server")
                .options
                .push(setting),
            3 => rc
                .servers
                .last_mut()
                .and_then(|server| server.users.last_mut())
                .expect("scope 3 has a user")
                .options
                .push(setting),
            _ => {
                return Err(syntax(
                    token.line,
                    format!("`{}` before any `poll`", setting.name),
                ));
            }
        }
    }
    Ok(rc)
}

/// Reads a `.fetchmailrc`.
pub fn read(path: &Path, text: &str, home: &Path) -> Result<Import, Error> {
    let rc = structure(path, tokenize(path, text)?)?;
    let mut import = Import::default();
    let netrc = std::fs::read_to_string(home.join(".netrc")).ok();
    let mut daemon = None;
    let mut idfile = home.join(".fetchids");
    for global in &rc.globals {
        match (global.name.as_str(), global.negated) {
            ("daemon", false) => {
                daemon = global.values.first().and_then(|v| v.parse::<u64>().ok());
                if let Some(every) = daemon {
                    import.general = Some(General { poll_interval: Some(seconds(every)) });
                }
            }
            ("idfile", false) => {
                if let Some(file) = global.values.first() {
                    idfile = expand_tilde(file, home).into();
                }
            }
            ("postmaster", false) => import.note(path, global.line, "`set postmaster`: mailfetch never forwards undeliverable mail to a postmaster; a refused message stays on the server (on_reject = \"keep\", or \"bounce\" to notify its sender)"),
            ("bouncemail", true) => import.note(path, global.line, "`set no bouncemail`: mailfetch bounces nothing unless on_reject = \"bounce\"; nothing to do"),
            ("logfile" | "syslog", _) => import.note(path, global.line, format!("`set {}`: mailfetch logs to stderr (to journald under systemd); redirect it instead", global.name)),
            (name, _) => import.note(path, global.line, format!("`set {name}` has no mailfetch equivalent; ignored")),
        }
    }
    for server in &rc.servers {
        if server.skip {
            import.note(
                path,
                server.line,
                format!(
                    "`skip {}`: not imported (fetchmail polls it only when named)",
                    server.name
                ),
            );
            continue;
        }
        let users = if server.users.is_empty() {
            // `defaults user NAME`, else fetchmail's default: the local user.
            let name = rc
                .defaults
                .iter()
                .rev()
                .find(|setting| setting.name == "user")
                .and_then(|setting| setting.values.first().cloned())
                .unwrap_or_else(crate::config::local_user);
            vec![User {
                name,
                line: server.line,
                options: Vec::new(),
            }]
        } else {
            server.users.clone()
        };
        for user in &users {
            // Later settings win: defaults, then the server's, then the user's.
            let settings: Vec<&Setting> = rc
                .defaults
                .iter()
                .chain(&server.options)
                .chain(&user.options)
                .collect();
            if let Some(account) = account(
                path,
                &mut import,
                server,
                user,
                &settings,
                daemon,
                netrc.as_deref(),
                &idfile,
            ) {
                import.account.push(account);
            }
        }
    }
    Ok(import)
}

#[allow(clippy::too_many_arguments)]
fn account(
    path: &Path,
    import: &mut Import,
    server: &Server,
    user: &User,
    settings: &[&Setting],
    daemon: Option<u64>,
    netrc: Option<&str>,
    idfile: &Path,
) -> Option<Account> {
    let mut account = Account {
        name: server.name.clone(),
        protocol: "pop3",
        host: server.name.clone(),
        tls: "starttls",
        username: user.name.clone(),
        keep: false,
        deliver: "smtp://localhost".into(),
        origin: (path.to_owned(), user.line),
        ..Account::default()
    };
    let mut ssl = false;
    let mut sslproto = None;
    let mut smtphost: Option<String> = None;
    let mut lmtp = false;
    let mut mda: Option<String> = None;
    let mut local_names: Vec<String> = Vec::new();
    let mut interval = None;
    let mut line_of_tls = server.line;
    for setting in settings {
        let value = setting.values.first().cloned().unwrap_or_default();
        let line = setting.line;
        let on = !setting.negated;
        match setting.name.as_str() {
            "via" => account.host = value,
            "proto" | "protocol" => match value.to_ascii_lowercase().as_str() {
                "pop3" => account.protocol = "pop3",
                "imap" => account.protocol = "imap",
                "apop" => {
                    account.protocol = "pop3";
                    account.auth = Some("apop");
                }
                "auto" => {
                    account.protocol = "imap";
                    import.note(path, line, "`proto auto`: imported as IMAP (fetchmail tries IMAP first); change protocol to \"pop3\" if the server has no IMAP");
                }
                other => {
                    import.note(path, line, format!("`proto {other}`: mailfetch speaks POP3 and IMAP only; account {} not imported", server.name));
                    return None;
                }
            },
            "port" | "service" => match value.parse() {
                Ok(port) => account.port = Some(port),
                Err(_) => import.note(path, line, format!("`{} {value}`: not a port number; the protocol's default port is used", setting.name)),
            },
            "auth" | "authenticate" => match value.to_ascii_lowercase().as_str() {
                "any" => account.auth = None,
                "password" => account.auth = Some("user"),
                "cram-md5" => account.auth = Some("cram-md5"),
                "oauthbearer" => account.auth = Some("oauthbearer"),
                "xoauth2" => account.auth = Some("xoauth2"),
                other => import.note(path, line, format!("`auth {other}`: not supported by mailfetch; it chooses among the mechanisms the server offers (auth = \"auto\")")),
            },
            "timeout" => {
                if let Ok(secs) = value.parse::<u64>() {
                    account.timeout = (secs > 0).then(|| seconds(secs));
                }
            }
            "interval" => interval = value.parse::<u64>().ok().map(|n| (n, line)),
            "password" | "pass" => account.password = Some(value),
            "is" | "to" => local_names = setting.values.clone(),
            "folder" | "folders" => account.folders = Some(setting.values.clone()),
            "smtphost" | "smtphosts" => {
                smtphost = setting.values.first().cloned();
                if setting.values.len() > 1 {
                    import.note(path, line, "several smtphosts: mailfetch delivers to the first one only");
                }
            }
            "smtpname" => local_names = vec![value],
            "lmtp" => lmtp = on,
            "mda" => mda = Some(value),
            "keep" => account.keep = on,
            "nokeep" => account.keep = false,
            "fetchall" if on => {
                if account.protocol == "imap" {
                    account.fetch = Some("all");
                    import.note(path, line, "`fetchall`: imported as fetch = \"all\", which fetches every message at every poll; with keep, use fetch = \"new\" to fetch each message once");
                } else {
                    import.note(path, line, "`fetchall` (POP3): mailfetch fetches every message it has not delivered before; to fetch old ones again, move its state file away");
                }
            }
            "flush" if on => import.note(path, line, "`flush`: without keep, mailfetch deletes messages it delivered earlier that are still on the server; nothing to do"),
            "limit" => account.max_size = value.parse().ok().filter(|&n| n > 0),
            "fetchlimit" => account.max_per_poll = value.parse().ok().filter(|&n| n > 0),
            "ssl" => {
                ssl = on;
                line_of_tls = line;
            }
            "sslproto" => {
                sslproto = Some(value);
                line_of_tls = line;
            }
            "sslcertfile" => account.ca_file = Some(expand_tilde(&value, path.parent().unwrap_or(Path::new("/")))),
            "sslcertck" if on => {}
            "sslcertck" | "nosslcertck" => import.note(path, line, "certificate checks cannot be turned off in mailfetch; for a self-signed server, pin its certificate with fingerprint = \"sha256:…\" (mailfetch prints it when it refuses the certificate)"),
            "sslfingerprint" => import.note(path, line, format!(
                "`sslfingerprint`: an MD5 fingerprint cannot become mailfetch's SHA-256 pin; get the new one with \
                 `openssl s_client -connect {}:{} </dev/null | openssl x509 -noout -fingerprint -sha256` \
                 and set fingerprint = \"sha256:…\" (mailfetch also prints it when it refuses the certificate)",
                account.host,
                account.effective_port()
            )),
            "idle" => account.idle = on,
            // `user` here is a `defaults` entry's remote name, used above.
            "user" | "uidl" | "dns" | "checkalias" | "here" | "there" | "rewrite" | "stripcr" | "pass8bits" | "showdots" | "fetchall" | "flush" => {}
            "expunge" | "batchlimit" | "fetchsizelimit" | "fastuidl" | "warnings" => import.note(path, line, format!("`{}`: mailfetch batches and commits by itself; ignored", setting.name)),
            other => import.note(path, line, format!("`{}{other}` has no mailfetch equivalent; {}", if setting.negated { "no " } else { "" }, hint(other))),
        }
    }
    // TLS: `ssl` is implicit TLS; without it fetchmail uses STARTTLS when
    // offered (or requires it with an sslproto), which mailfetch always
    // requires.
    if ssl {
        account.tls = "implicit";
    } else if is_loopback(&account.host) && sslproto.is_none() {
        account.tls = "none";
    } else {
        account.tls = "starttls";
        if sslproto.is_none() {
            import.note(path, line_of_tls, STARTTLS_REQUIRED_NOTE);
        }
    }
    if let Some((n, line)) = interval {
        match daemon {
            Some(every) => account.interval = Some(seconds(n * every)),
            None => import.note(path, line, "`interval` without `set daemon`: ignored"),
        }
    }
    if local_names.len() > 1 || local_names.iter().any(|name| name == "*") {
        import.note(path, user.line, "multidrop (several local names, or `*`): mailfetch does not sort mail by recipient yet; all mail goes to the first local name");
        local_names.retain(|name| name != "*");
        local_names.truncate(1);
    }
    account.deliver = match (&mda, &smtphost) {
        (Some(command), _) => super::mda_through_shell(command),
        (None, Some(host)) if host.starts_with('/') => format!("lmtp:{host}"),
        (None, host) => {
            let host = host.clone().unwrap_or_else(|| "localhost".into());
            let scheme = if lmtp { "lmtp" } else { "smtp" };
            // fetchmail writes a port as host/port.
            match host.split_once('/') {
                Some((host, port)) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            }
        }
    };
    if let Some(name) = local_names.first() {
        account.to = Some(vec![name.clone()]);
    }
    if account.password.is_none() {
        account.password =
            netrc.and_then(|text| super::netrc::password(text, &account.host, &account.username));
    }
    if account.password.is_none() {
        account.password_command = Some(super::missing_password_command(&account.name));
        import.note(path, user.line, format!("no password for {}@{} in the rc file or ~/.netrc (fetchmail asked for it): set password_file or password_command", account.username, account.host));
    } else if account.tls == "none" && !is_loopback(&account.host) {
        import.note(
            path,
            user.line,
            "the password goes to this server unencrypted",
        );
    }
    if account.protocol == "imap" {
        if account.fetch.is_none() {
            // fetchmail fetches the messages not yet \Seen and marks them.
            account.fetch = Some("unseen");
        }
    } else {
        for (key, set) in [
            ("folders", account.folders.is_some()),
            ("idle", account.idle),
        ] {
            if set {
                import.note(
                    path,
                    user.line,
                    format!("`{key}` applies to IMAP only; ignored for this POP3 account"),
                );
            }
        }
        account.folders = None;
        account.idle = false;
    }
    account.old_state = Some(OldState::Fetchids {
        path: idfile.to_owned(),
        // fetchmail records the name it polled (`via`, else the poll name).
        host: account.host.clone(),
    });
    Some(account)
}

/// What to do instead of an untranslated option.
fn hint(option: &str) -> &'static str {
    match option {
        "preconnect" | "postconnect" => {
            "run the command before or after mailfetch yourself (a cron wrapper or a systemd ExecStartPre)"
        }
        "mimedecode" => "mailfetch delivers messages unchanged; decode in the MDA if needed",
        "envelope" | "qvirtual" | "aka" | "localdomains" | "fetchdomains" => {
            "it serves multidrop, which mailfetch does not do yet"
        }
        "dropstatus" | "dropdelivered" | "forcecr" => "mailfetch delivers messages unchanged",
        "plugin" | "plugout" => {
            "mailfetch connects directly; use a TLS-capable server or an SSH tunnel to a loopback port"
        }
        "bsmtp" => "deliver to an MTA (smtp://) or an MDA instead",
        "antispam" => "mailfetch keeps refused messages on the server (on_reject)",
        "limitflush" => "oversized messages stay on the server",
        "principal" | "interface" | "monitor" | "tracepolls" | "esmtpname" | "esmtppassword"
        | "sslkey" | "sslcert" | "sslcertpath" | "sslcommonname" | "properties" | "smtpaddress"
        | "spambounce" | "softbounce" | "bouncemail" | "invisible" => "ignored",
        _ => "ignored",
    }
}
