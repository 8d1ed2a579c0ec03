use std::env::VarError;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::deliver::DEFAULT_MDA_TIMEOUT;
use super::display::format_size;
use super::parse::{Parser, parse_unknown_field_message};
use super::raw::RawFile;
use super::secrets::run_password_command;
use super::values::{keyword_name, parse_size};
use super::*;
use crate::error::{Error, Kind};
use crate::net::is_loopback_host;

const FILE: &str = "test/fetchrc";

/// An environment with just `HOME`, `MAILDIRS` and `EMPTY`.
fn test_env(name: &str) -> Result<String, VarError> {
    match name {
        "HOME" => Ok("/home/alice".to_owned()),
        "MAILDIRS" => Ok("/srv/mail".to_owned()),
        "EMPTY" => Ok(String::new()),
        _ => Err(VarError::NotPresent),
    }
}

fn parse_test(text: &str) -> Result<Config, Error> {
    Parser {
        path: Path::new(FILE),
        text,
        env: &test_env,
    }
    .config()
}

fn parse_ok(text: &str) -> Config {
    parse_test(text).unwrap_or_else(|err| panic!("{err}\n---\n{text}"))
}

/// An account with only the required keys, plus `extra` lines.
fn account_with(extra: &str) -> String {
    format!(
        "[[account]]\n\
             name = \"home\"\n\
             protocol = \"pop3\"\n\
             host = \"pop.example.com\"\n\
             username = \"alice\"\n\
             deliver = \"maildir:~/Mail/home\"\n\
             {extra}"
    )
}

/// Asserts that `text` is rejected with a message locating `key` at `line`
/// and containing `fragment`.
#[track_caller]
fn assert_config_error(text: &str, line: usize, key: &str, fragment: &str) {
    let err = match parse_test(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(err) => err,
    };
    assert_eq!(err.kind, Kind::Config, "{err}");
    let location = format!("{FILE}:{line}: key `{key}`: ");
    assert!(
        err.message.starts_with(&location),
        "want {location}…, got: {err}"
    );
    assert!(
        err.message.contains(fragment),
        "want …{fragment}…, got: {err}"
    );
}

const PIN_HEX: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:\
                           AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

fn pin_bytes() -> Fingerprint {
    let pattern = [0xAB, 0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89];
    Fingerprint::from(std::array::from_fn(|i| pattern[i % pattern.len()]))
}

#[test]
fn documented_minimum_schema_parses_exactly() {
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        r#"[general]
state_dir = "/var/lib/mailfetch"
[[account]]
name = "home"
protocol = "pop3"
host = "pop.example.com"
port = 995
tls = "implicit"
ca_file = "{ca_file}"
fingerprint = "sha256:{PIN_HEX}"
username = "alice"
password = "secret"
auth = "auto"
keep = false
deliver = "maildir:~/Mail/home"
"#,
        ca_file = ca_file.path().display()
    );
    let config = parse_ok(&text);
    assert_eq!(config.path, Path::new(FILE));
    assert_eq!(config.general.state_dir, Path::new("/var/lib/mailfetch"));
    let [account] = config.accounts.as_slice() else {
        panic!("one account expected");
    };
    assert_eq!(account.name, "home");
    assert_eq!(account.protocol, Protocol::Pop3);
    assert_eq!(account.server.host, "pop.example.com");
    assert_eq!(account.server.port, 995);
    assert_eq!(account.server.tls, TlsMode::Implicit);
    assert_eq!(account.server.ca_file.as_deref(), Some(ca_file.path()));
    assert_eq!(account.server.fingerprint, Some(pin_bytes()));
    assert_eq!(account.server.username.as_deref(), Some("alice"));
    assert_eq!(
        account.server.password,
        PasswordSource::Inline(Secret::new("secret".to_owned()))
    );
    assert_eq!(account.server.auth, AuthMethod::Auto);
    assert!(!account.keep);
    assert_eq!(
        account.deliver,
        DeliverTarget::Maildir(PathBuf::from("/home/alice/Mail/home"))
    );
}

#[test]
fn defaults_are_filled_in() {
    let config = parse_ok(&account_with(""));
    assert_eq!(
        config.general.state_dir,
        Path::new("/home/alice/.local/state/mailfetch")
    );
    let account = &config.accounts[0];
    assert_eq!(account.server.port, 995);
    assert_eq!(account.server.tls, TlsMode::Implicit);
    assert_eq!(account.server.ca_file, None);
    assert_eq!(account.server.fingerprint, None);
    assert_eq!(account.server.password, PasswordSource::None);
    assert_eq!(account.server.auth, AuthMethod::Auto);
    assert!(!account.server.allow_plaintext_auth);
    assert!(!account.keep);
    assert!(account.received_header);
    assert_eq!(account.server.timeout, Duration::from_secs(60));
}

#[test]
fn port_defaults_to_110_without_implicit_tls() {
    for tls in ["starttls", "none", "STARTTLS"] {
        let config = parse_ok(&account_with(&format!("tls = \"{tls}\"\n")));
        assert_eq!(config.accounts[0].server.port, 110, "{tls}");
    }
}

#[test]
fn every_key_is_read() {
    let text = account_with(
        "port = 1995\n\
             tls = \"starttls\"\n\
             password_command = \"pass show mail/home\"\n\
             auth = \"cram-md5\"\n\
             allow_plaintext_auth = true\n\
             keep = true\n\
             received_header = false\n\
             timeout = \"15m\"\n",
    );
    let account = &parse_ok(&text).accounts[0];
    assert_eq!(account.server.port, 1995);
    assert_eq!(account.server.tls, TlsMode::StartTls);
    assert_eq!(
        account.server.password,
        PasswordSource::Command("pass show mail/home".to_owned())
    );
    assert_eq!(account.server.auth, AuthMethod::CramMd5);
    assert!(account.server.allow_plaintext_auth);
    assert!(account.keep);
    assert!(!account.received_header);
    assert_eq!(account.server.timeout, Duration::from_secs(15 * 60));
}

#[test]
fn timeouts() {
    for (written, expected) in [
        ("\"500ms\"", Duration::from_millis(500)),
        ("\"90s\"", Duration::from_secs(90)),
        ("\"15m\"", Duration::from_secs(900)),
        ("\"1h\"", Duration::from_secs(3600)),
        ("\"45\"", Duration::from_secs(45)),
        ("30", Duration::from_secs(30)),
    ] {
        let config = parse_ok(&account_with(&format!("timeout = {written}\n")));
        assert_eq!(config.accounts[0].server.timeout, expected, "{written}");
    }
    for (written, fragment) in [
        ("0", "greater than zero"),
        ("-5", "greater than zero"),
        ("\"0s\"", "greater than zero"),
        ("\"1.5s\"", "not a duration"),
        ("\"5 minutes\"", "not a duration"),
        ("\"s\"", "not a duration"),
        ("1.5", "found a float"),
    ] {
        let text = account_with(&format!("timeout = {written}\n"));
        assert_config_error(&text, 7, "timeout", fragment);
    }
}

#[test]
fn fingerprint_spellings() {
    let compact = PIN_HEX.replace(':', "");
    for written in [
        format!("sha256:{PIN_HEX}"),
        format!("SHA256:{}", PIN_HEX.to_lowercase()),
        PIN_HEX.to_owned(),
        compact.clone(),
        compact.to_lowercase(),
    ] {
        assert_eq!(written.parse::<Fingerprint>(), Ok(pin_bytes()), "{written}");
    }
    for written in [
        "",
        "sha256:",
        &compact[2..],
        &format!("{compact}00"),
        &compact.replace('A', "G"),
        "sha1:AB:CD",
    ] {
        assert!(written.parse::<Fingerprint>().is_err(), "{written}");
    }
}

#[test]
fn unknown_keys_get_a_suggestion_or_the_list() {
    assert_config_error(
        &account_with("prot = 995\n"),
        7,
        "prot",
        "did you mean `port`?",
    );
    assert_config_error(
        &account_with("passwd = \"x\"\n"),
        7,
        "passwd",
        "did you mean `password`?",
    );
    assert_config_error(
        "[general]\nstate_dri = \"/x\"\n",
        2,
        "state_dri",
        "did you mean `state_dir`?",
    );
    assert_config_error(
        &format!("[genral]\n{}", account_with("")),
        1,
        "genral",
        "did you mean `general`?",
    );
    assert_config_error(
        &account_with("colour = \"blue\"\n"),
        7,
        "colour",
        "the keys allowed here are name, protocol, host, port",
    );
}

#[test]
fn wrong_types_name_the_key_but_not_the_value() {
    assert_config_error(
        &account_with("port = \"995\"\n"),
        7,
        "port",
        "expected a port number, found a string",
    );
    assert_config_error(
        &account_with("keep = \"yes\"\n"),
        7,
        "keep",
        "expected true or false, found a string",
    );
    assert_config_error(&account_with("port = 70000\n"), 7, "port", "1 to 65535");
    assert_config_error(&account_with("port = 0\n"), 7, "port", "1 to 65535");
    // A misplaced password must not be echoed.
    let text = account_with("username = 12345678\n");
    let text = text.replace("username = \"alice\"\n", "");
    assert_config_error(&text, 6, "username", "expected a string, found an integer");
    assert!(!parse_test(&text).unwrap_err().message.contains("12345678"));
    // Errors serde reports itself still name the key.
    assert_config_error("account = 5\n", 1, "account", "invalid type");
    assert_config_error("general = 5\n", 1, "general", "[general] table");
    assert_config_error(&account_with("keep = \n"), 7, "keep", "");
}

#[test]
fn missing_required_keys_point_at_the_section() {
    for key in ["name", "protocol", "host", "username", "deliver"] {
        let text = format!(
            "[general]\nstate_dir = \"/tmp\"\n\n{}",
            account_with("").replace(&format!("\n{key} = "), "\n# ")
        );
        assert_config_error(&text, 4, key, "required, but missing");
    }
}

#[test]
fn bad_keywords_list_the_allowed_ones() {
    assert_config_error(
        &account_with("tls = \"ssl\"\n"),
        7,
        "tls",
        "`ssl` is not one of \"implicit\", \"starttls\", \"none\"",
    );
    assert_config_error(
        &account_with("auth = \"md5\"\n"),
        7,
        "auth",
        "\"cram-md5\", \"xoauth2\"",
    );
    let smtp = account_with("").replace("\"pop3\"", "\"smtp\"");
    assert_config_error(&smtp, 3, "protocol", "not one of \"pop3\", \"imap\"");
}

#[test]
fn bad_values() {
    assert_config_error(
        &account_with("fingerprint = \"sha256:AB:CD\"\n"),
        7,
        "fingerprint",
        "64 hex digits",
    );
    let bad_name = account_with("").replace("\"home\"", "\"my home\"");
    assert_config_error(&bad_name, 2, "name", "not a valid account name");
    let mh = account_with("").replace("maildir:~/Mail/home", "mh:~/Mail");
    assert_config_error(&mh, 6, "deliver", "unknown delivery scheme `mh:`");
    let bare = account_with("").replace("maildir:~/Mail/home", "~/Mail");
    assert_config_error(
        &bare,
        6,
        "deliver",
        "has no scheme; expected one of maildir:PATH",
    );
    assert_config_error(
        &account_with("ca_file = \"/nonexistent/ca.pem\"\n"),
        7,
        "ca_file",
        "/nonexistent/ca.pem does not exist",
    );
    assert_config_error(
        &account_with("password = \"\"\n"),
        7,
        "password",
        "is empty",
    );
    assert_config_error(
        &account_with("password = \"a\\nb\"\n"),
        7,
        "password",
        "line break",
    );
    let no_host = account_with("").replace("\"pop.example.com\"", "\"\"");
    assert_config_error(&no_host, 4, "host", "must not be empty");
}

#[test]
fn only_one_password_source() {
    let text = account_with(
        "password = \"secret\"\n\
             auth = \"plain\"\n\
             password_file = \"~/.secret\"\n",
    );
    assert_config_error(
        &text,
        9,
        "password_file",
        "`password` is already set at line 7",
    );
    assert!(!parse_test(&text).unwrap_err().message.contains("secret\""));
}

#[test]
fn oauth_needs_a_token_source() {
    for auth in ["xoauth2", "oauthbearer"] {
        let text = account_with(&format!("auth = \"{auth}\"\n"));
        assert_config_error(&text, 7, "auth", "password_command");
        let text = account_with(&format!(
            "auth = \"{auth}\"\npassword_file = \"/run/token\"\n"
        ));
        assert_config_error(&text, 7, "auth", "fresh token");
        parse_ok(&account_with(&format!(
            "auth = \"{auth}\"\npassword_command = \"get-token\"\n"
        )));
    }
}

#[test]
fn duplicate_names_name_both_lines() {
    let text = format!("{}\n{}", account_with(""), account_with(""));
    assert_config_error(&text, 9, "name", "`home` is already used at line 2");
}

#[test]
fn two_accounts_on_one_mailbox_name_both_lines() {
    let work = |account: String| account.replace("\"home\"", "\"work\"");
    let pop3 = format!("{}\n{}", account_with(""), work(account_with("")));
    assert_config_error(
        &pop3,
        8,
        "host",
        "account `work` fetches the same mailbox as account `home` at line 1 \
             (pop3 alice@pop.example.com:995)",
    );
    let shouting = format!(
        "{}\n{}",
        account_with(""),
        work(account_with("")).replace("pop.example.com", "POP.Example.COM")
    );
    assert_config_error(&shouting, 8, "host", "same mailbox");

    let imap = |folders: &str| imap_account_with(&format!("folders = {folders}\n"));
    let shared = format!(
        "{}\n{}",
        imap("[\"INBOX\", \"Lists\"]"),
        work(imap("[\"Archive\", \"inbox\"]"))
    );
    assert_config_error(
        &shared,
        9,
        "folders",
        "as account `home` at line 1 (imap alice@imap.example.com:993, folder \"INBOX\")",
    );

    // Another folder, user, port or protocol is another mailbox.
    parse_ok(&format!(
        "{}\n{}",
        imap("[\"INBOX\"]"),
        work(imap("[\"Lists\"]"))
    ));
    for other in [
        work(account_with("")).replace("\"alice\"", "\"bob\""),
        work(account_with("port = 1995\n")),
        work(imap_account_with("")).replace("imap.example.com", "pop.example.com"),
    ] {
        parse_ok(&format!("{}\n{other}", account_with("")));
    }
}

#[test]
fn zero_accounts() {
    assert_config_error(
        "[general]\nstate_dir = \"/x\"\n",
        3,
        "account",
        "add an [[account]]",
    );
    assert_config_error("", 1, "account", "no account is configured");
}

#[test]
fn paths_are_expanded() {
    let text = format!(
        "[general]\nstate_dir = \"${{MAILDIRS}}/state$EMPTY\"\n{}",
        account_with("password_file = \"~/pass/$$HOME\"\n")
            .replace("maildir:~/Mail/home", "maildir:$MAILDIRS/alice_${HOME}")
    );
    let config = parse_ok(&text);
    assert_eq!(config.general.state_dir, Path::new("/srv/mail/state"));
    let account = &config.accounts[0];
    assert_eq!(
        account.server.password,
        PasswordSource::File(PathBuf::from("/home/alice/pass/$HOME"))
    );
    assert_eq!(
        account.deliver,
        DeliverTarget::Maildir(PathBuf::from("/srv/mail/alice_/home/alice"))
    );
    // Relative paths stay relative.
    let relative = account_with("").replace("maildir:~/Mail/home", "maildir:Mail");
    assert_eq!(
        parse_ok(&relative).accounts[0].deliver,
        DeliverTarget::Maildir(PathBuf::from("Mail"))
    );
}

#[test]
fn bad_expansions_are_errors() {
    for (path, fragment) in [
        ("$NOPE/x", "`NOPE` is not set"),
        ("${NOPE}", "`NOPE` is not set"),
        ("${HOME", "no closing"),
        ("/price/$5", "not a variable name"),
        ("~bob/x", "`~user` is not supported"),
    ] {
        let text = format!("[general]\nstate_dir = \"{path}\"\n{}", account_with(""));
        assert_config_error(&text, 2, "state_dir", fragment);
    }
    let text = account_with("").replace("~/Mail/home", "$UNDEFINED/Mail");
    assert_config_error(&text, 6, "deliver", "`UNDEFINED` is not set");
}

#[test]
fn default_directories_follow_xdg() {
    let xdg = |name: &str| match name {
        "XDG_STATE_HOME" => Ok("/xdg/state".to_owned()),
        _ => test_env(name),
    };
    let relative_xdg = |name: &str| match name {
        "XDG_STATE_HOME" => Ok("relative".to_owned()),
        _ => test_env(name),
    };
    let nothing = |_: &str| Err(VarError::NotPresent);
    assert_eq!(
        xdg_dir(&xdg, "XDG_STATE_HOME", ".local/state"),
        Some(PathBuf::from("/xdg/state/mailfetch"))
    );
    assert_eq!(
        xdg_dir(&relative_xdg, "XDG_STATE_HOME", ".local/state"),
        Some(PathBuf::from("/home/alice/.local/state/mailfetch"))
    );
    assert_eq!(xdg_dir(&nothing, "XDG_CONFIG_HOME", ".config"), None);
}

#[test]
fn plaintext_password_over_the_network_is_refused() {
    for auth in ["user", "plain", "login", "xoauth2", "oauthbearer"] {
        let text = account_with(&format!(
            "tls = \"none\"\nauth = \"{auth}\"\npassword = \"x\"\n"
        ));
        assert_config_error(&text, 7, "tls", "would travel unencrypted");
        assert_config_error(&text, 7, "tls", "allow_plaintext_auth = true");
    }
    // Accepted: explicitly allowed, a loopback host, or a mechanism that
    // does not reveal the password.
    parse_ok(&account_with(
        "tls = \"none\"\nauth = \"user\"\nallow_plaintext_auth = true\n",
    ));
    for host in ["localhost", "127.0.0.2", "::1", "[::1]"] {
        let text =
            account_with("tls = \"none\"\nauth = \"plain\"\n").replace("pop.example.com", host);
        parse_ok(&text);
    }
    for auth in ["auto", "apop", "cram-md5", "scram-sha-256"] {
        parse_ok(&account_with(&format!(
            "tls = \"none\"\nauth = \"{auth}\"\n"
        )));
    }
}

/// An IMAP account with only the required keys, plus `extra` lines
/// (from line 7 on, as in [`account_with`]).
fn imap_account_with(extra: &str) -> String {
    account_with(extra)
        .replace("\"pop3\"", "\"imap\"")
        .replace("pop.example.com", "imap.example.com")
}

#[test]
fn imap_defaults() {
    let account = &parse_ok(&imap_account_with("")).accounts[0];
    assert_eq!(account.protocol, Protocol::Imap);
    assert_eq!(account.server.port, 993);
    assert_eq!(account.server.tls, TlsMode::Implicit);
    assert_eq!(account.folders, ["INBOX"]);
    assert_eq!(account.fetch, FetchMode::New);
    assert_eq!(account.max_size, None);
    assert_eq!(account.max_per_poll, None);
    assert!(!account.mark_seen);
    assert_eq!(account.move_to, None);
    assert!(!account.keep);
    assert!(account.imap_id);
    for tls in ["starttls", "none"] {
        let config = parse_ok(&imap_account_with(&format!("tls = \"{tls}\"\n")));
        assert_eq!(config.accounts[0].server.port, 143, "{tls}");
    }
    // POP3 gets the same defaults, which it has no keys to change.
    let account = &parse_ok(&account_with("")).accounts[0];
    assert_eq!(account.folders, ["INBOX"]);
    assert_eq!(account.fetch, FetchMode::New);
    assert!(!account.mark_seen);
    assert_eq!(account.move_to, None);
}

#[test]
fn every_imap_key_is_read() {
    let text = imap_account_with(
        "folders = [\"INBOX\", \"Lists/rust\", \"Entwürfe\", \"a \\\"quoted\\\" name\"]\n\
             fetch = \"unseen\"\n\
             max_size = \"25MB\"\n\
             max_per_poll = 100\n\
             move_to = \"Archive/2024\"\n",
    );
    let account = &parse_ok(&text).accounts[0];
    assert_eq!(
        account.folders,
        ["INBOX", "Lists/rust", "Entwürfe", "a \"quoted\" name"]
    );
    assert_eq!(account.fetch, FetchMode::Unseen);
    assert_eq!(account.max_size, Some(25_000_000));
    assert_eq!(account.max_per_poll, Some(100));
    assert_eq!(account.move_to.as_deref(), Some("Archive/2024"));

    let text = imap_account_with("keep = true\nmark_seen = true\nfetch = \"ALL\"\n");
    let account = &parse_ok(&text).accounts[0];
    assert!(account.keep && account.mark_seen);
    assert_eq!(account.fetch, FetchMode::All);
}

#[test]
fn daemon_keys() {
    let config = parse_ok(&imap_account_with(""));
    assert_eq!(config.general.poll_interval, DEFAULT_POLL_INTERVAL);
    assert_eq!(config.general.max_connections, 8);
    let account = &config.accounts[0];
    assert_eq!(account.interval, None);
    assert!(!account.idle);
    assert_eq!(account.idle_timeout, Duration::from_secs(25 * 60));

    let text = format!(
        "[general]\npoll_interval = \"2m\"\nmax_connections = 3\n{}",
        imap_account_with("interval = \"90s\"\nidle = true\nidle_timeout = \"20m\"\n")
    );
    let config = parse_ok(&text);
    assert_eq!(config.general.poll_interval, Duration::from_secs(120));
    assert_eq!(config.general.max_connections, 3);
    let account = &config.accounts[0];
    assert_eq!(account.interval, Some(Duration::from_secs(90)));
    assert!(account.idle);
    assert_eq!(account.idle_timeout, Duration::from_secs(20 * 60));
    // --check-config output parses back to the same settings.
    let again = parse_ok(&config.to_string());
    assert_eq!(again.general.poll_interval, Duration::from_secs(120));
    assert_eq!(again.general.max_connections, 3);
    assert_eq!(again.accounts[0].interval, Some(Duration::from_secs(90)));
    assert!(again.accounts[0].idle);
    assert_eq!(again.accounts[0].idle_timeout, Duration::from_secs(20 * 60));
}

#[test]
fn bad_daemon_keys() {
    assert_config_error(
        &format!("[general]\npoll_interval = \"5ms\"\n{}", account_with("")),
        2,
        "poll_interval",
        "at least 1 second",
    );
    assert_config_error(
        &format!("[general]\nmax_connections = 0\n{}", account_with("")),
        2,
        "max_connections",
        "greater than zero",
    );
    assert_config_error(
        &imap_account_with("idle_timeout = \"30m\"\n"),
        7,
        "idle_timeout",
        "between \"10s\" and \"29m\"",
    );
    assert_config_error(
        &imap_account_with("interval = \"soon\"\n"),
        7,
        "interval",
        "is not a duration",
    );
}

#[test]
fn imap_only_keys_are_refused_for_pop3() {
    for setting in [
        "folders = [\"INBOX\"]",
        "fetch = \"new\"",
        "mark_seen = false",
        "move_to = \"Archive\"",
        "idle = true",
        "idle_timeout = \"20m\"",
        "imap_id = true",
    ] {
        let key = setting.split_once(' ').unwrap().0;
        let text = account_with(&format!("keep = true\n{setting}\n"));
        assert_config_error(
            &text,
            8,
            key,
            "only applies to protocol = \"imap\", not \"pop3\"",
        );
    }
}

#[test]
fn bad_folders() {
    for (written, fragment) in [
        ("[]", "at least one folder"),
        (
            "\"INBOX\"",
            "expected a list of folder names such as [\"INBOX\"], found a string",
        ),
        ("[\"INBOX\", 5]", "expected a string, found an integer"),
        ("[\"INBOX\", \"\"]", "must not be empty"),
        (
            "[\"INBOX\", \"Lists\", \"Lists\"]",
            "`Lists` is listed twice",
        ),
        // INBOX is the same folder in any case, other names are not.
        ("[\"INBOX\", \"Inbox\"]", "`Inbox` is listed twice"),
        (
            "[\"a\\r\\nb\"]",
            "\"a\\r\\nb\" contains a line break or NUL",
        ),
        ("[\"a\\nb\"]", "line break"),
        ("[\"a\\u0000b\"]", "NUL"),
    ] {
        let text = imap_account_with(&format!("folders = {written}\n"));
        assert_config_error(&text, 7, "folders", fragment);
    }
    parse_ok(&imap_account_with("folders = [\"Lists\", \"lists\"]\n"));
    // A list over several lines is located at its key.
    let text = imap_account_with("folders = [\n  \"INBOX\",\n  \"\",\n]\n");
    assert_config_error(&text, 7, "folders", "must not be empty");
}

#[test]
fn bad_fetch_modes() {
    assert_config_error(
        &imap_account_with("fetch = \"recent\"\n"),
        7,
        "fetch",
        "`recent` is not one of \"new\", \"unseen\", \"all\"",
    );
    assert_config_error(
        &imap_account_with("fetch = true\n"),
        7,
        "fetch",
        "expected a string, found a boolean",
    );
}

#[test]
fn max_size_spellings() {
    for (written, bytes) in [
        ("1", 1),
        ("25000000", 25_000_000),
        ("\"512\"", 512),
        ("\"512B\"", 512),
        ("\"25MB\"", 25_000_000),
        ("\"25 MB\"", 25_000_000),
        ("\"25mb\"", 25_000_000),
        ("\"3kb\"", 3_000),
        ("\"2GB\"", 2_000_000_000),
        ("\"3KiB\"", 3 << 10),
        ("\"10 mib\"", 10 << 20),
        ("\"2GiB\"", 2 << 30),
    ] {
        // Both protocols.
        for text in [account_with(""), imap_account_with("")] {
            let text = format!("{text}max_size = {written}\n");
            assert_eq!(
                parse_ok(&text).accounts[0].max_size,
                Some(bytes),
                "{written}"
            );
        }
    }
    for (written, fragment) in [
        ("0", "greater than zero"),
        ("-1", "greater than zero"),
        ("\"0MB\"", "greater than zero"),
        ("\"\"", "is not a size"),
        ("\"MB\"", "is not a size"),
        ("\"1.5MB\"", "is not a size"),
        ("\"25 XB\"", "`25 XB` is not a size"),
        ("\"25  MB\"", "is not a size"),
        ("\"25 \"", "is not a size"),
        ("\"-5MB\"", "is not a size"),
        ("\"99999999999GB\"", "too large"),
        ("1.5", "expected a size such as \"25MB\", found a float"),
    ] {
        let text = account_with(&format!("max_size = {written}\n"));
        assert_config_error(&text, 7, "max_size", fragment);
    }
}

#[test]
fn sizes_are_shown_in_the_largest_exact_unit() {
    for (bytes, shown) in [
        (1, "1B"),
        (1_500, "1500B"),
        (3_000, "3KB"),
        (3 << 10, "3KiB"),
        (25_000_000, "25MB"),
        (10 << 20, "10MiB"),
        (2_000_000_000, "2GB"),
        (3 << 30, "3GiB"),
        (5_000_000_000_000, "5000GB"),
    ] {
        assert_eq!(format_size(bytes), shown);
        assert_eq!(parse_size(shown), Ok(bytes));
    }
}

#[test]
fn max_per_poll() {
    for text in [account_with(""), imap_account_with("")] {
        let text = format!("{text}max_per_poll = 1\n");
        assert_eq!(parse_ok(&text).accounts[0].max_per_poll, Some(1));
    }
    for (written, fragment) in [
        ("0", "greater than zero"),
        ("-3", "greater than zero"),
        ("\"10\"", "expected a whole number, found a string"),
    ] {
        let text = account_with(&format!("max_per_poll = {written}\n"));
        assert_config_error(&text, 7, "max_per_poll", fragment);
    }
}

#[test]
fn mark_seen_needs_keep() {
    for keep in ["", "keep = false\n"] {
        let text = imap_account_with(&format!("{keep}mark_seen = true\n"));
        let line = if keep.is_empty() { 7 } else { 8 };
        assert_config_error(
            &text,
            line,
            "mark_seen",
            "mark_seen only applies with keep = true",
        );
    }
    // Saying false is harmless.
    parse_ok(&imap_account_with("mark_seen = false\n"));
}

#[test]
fn bad_move_to() {
    assert_config_error(
        &imap_account_with("keep = true\nmove_to = \"Archive\"\n"),
        8,
        "move_to",
        "contradicts keep = true",
    );
    for (written, fragment) in [
        ("\"\"", "must not be empty"),
        ("\"Arch\\nive\"", "line break or NUL"),
        ("\"Arch\\rive\"", "line break or NUL"),
        ("\"Arch\\u0000ive\"", "line break or NUL"),
        ("[\"Archive\"]", "expected a string, found an array"),
        // Moved messages would come back in the next poll.
        ("\"INBOX\"", "`INBOX` is also in folders"),
        ("\"inbox\"", "`INBOX` is also in folders"),
    ] {
        let text = imap_account_with(&format!("move_to = {written}\n"));
        assert_config_error(&text, 7, "move_to", fragment);
    }
    let text = imap_account_with("folders = [\"INBOX\", \"Done\"]\nmove_to = \"Done\"\n");
    assert_config_error(&text, 8, "move_to", "`Done` is also in folders");
}

#[test]
fn imap_auth_methods() {
    assert_config_error(
        &imap_account_with("auth = \"apop\"\n"),
        7,
        "auth",
        "\"apop\" is a POP3 mechanism that protocol = \"imap\" does not have",
    );
    for auth in [
        "auto",
        "user",
        "plain",
        "login",
        "cram-md5",
        "scram-sha-256",
    ] {
        let account = &parse_ok(&imap_account_with(&format!("auth = \"{auth}\"\n"))).accounts[0];
        assert_eq!(keyword_name(account.server.auth), auth);
    }
    for auth in ["xoauth2", "oauthbearer"] {
        let text = imap_account_with(&format!(
            "auth = \"{auth}\"\npassword_command = \"get-token\"\n"
        ));
        parse_ok(&text);
    }
    // LOGIN sends the password as it is, like USER/PASS.
    let text = imap_account_with("tls = \"none\"\nauth = \"user\"\n");
    assert_config_error(
        &text,
        7,
        "tls",
        "auth = \"user\", the password would travel unencrypted",
    );
    parse_ok(&imap_account_with(
        "tls = \"none\"\nauth = \"user\"\nallow_plaintext_auth = true\n",
    ));
}

#[test]
fn imap_display_round_trips() {
    let text = format!(
        "{}\n{}\n{}",
        imap_account_with(
            "folders = [\"INBOX\", \"Entwürfe\", \"say \\\"hi\\\"\"]\n\
                 fetch = \"all\"\nmax_size = \"10 MiB\"\nmax_per_poll = 50\n\
                 move_to = \"Old\"\n"
        ),
        imap_account_with("keep = true\nmark_seen = true\nmax_size = 1500\n")
            .replace("\"home\"", "\"work\"")
            .replace("\"alice\"", "\"bob\""),
        account_with("max_size = \"2gb\"\n").replace("\"home\"", "\"pop\""),
    );
    let shown = parse_ok(&text).to_string();
    for line in [
        "protocol = \"imap\"",
        "port = 993",
        "folders = [\"INBOX\", \"Entwürfe\", \"say \\\"hi\\\"\"]",
        "fetch = \"all\"",
        "max_size = \"10MiB\"",
        "max_per_poll = 50",
        "move_to = \"Old\"",
        "folders = [\"INBOX\"]\nfetch = \"new\"\nmark_seen = true\n",
        "max_size = \"1500B\"",
        "max_size = \"2GB\"",
    ] {
        assert!(shown.contains(line), "want {line}, got:\n{shown}");
    }
    // The POP3 account, last, shows none of the IMAP-only keys.
    let pop3 = shown.rsplit("[[account]]").next().unwrap();
    for key in ["folders", "fetch", "mark_seen", "move_to", "max_per_poll"] {
        assert!(!pop3.contains(&format!("{key} = ")), "{key} in:\n{pop3}");
    }

    let reparsed = parse_ok(&shown);
    assert_eq!(reparsed.to_string(), shown);
    assert_eq!(reparsed.accounts[0].folders[2], "say \"hi\"");
    assert_eq!(reparsed.accounts[0].max_size, Some(10 << 20));
}

fn deliver_with(deliver: &str, extra: &str) -> String {
    account_with(extra).replace("maildir:~/Mail/home", deliver)
}

fn target(deliver: &str, extra: &str) -> DeliverTarget {
    parse_ok(&deliver_with(deliver, extra)).accounts[0]
        .deliver
        .clone()
}

#[test]
fn mta_targets_and_their_defaults() {
    let DeliverTarget::Mta(local) = target("smtp://localhost", "") else {
        panic!("not an MTA")
    };
    assert_eq!(local.protocol, MtaProtocol::Smtp);
    assert_eq!(
        (local.server.host.as_str(), local.server.port, local.socket),
        ("localhost", 25, None)
    );
    assert_eq!(
        local.server.tls,
        TlsMode::None,
        "a local MTA rarely has TLS"
    );
    assert_eq!(local.server.username, None);

    let DeliverTarget::Mta(relay) = target(
        "smtp://mail.example.org:587",
        "[account.delivery]\nusername = \"me\"\npassword_command = \"pass smtp\"\n",
    ) else {
        panic!("not an MTA")
    };
    assert_eq!(
        relay.server.tls,
        TlsMode::StartTls,
        "a remote relay needs STARTTLS"
    );
    assert_eq!(relay.server.username.as_deref(), Some("me"));
    assert_eq!(
        relay.server.password,
        PasswordSource::Command("pass smtp".into())
    );

    let DeliverTarget::Mta(smtps) = target("smtps://[2001:db8::1]", "") else {
        panic!("not an MTA")
    };
    assert_eq!(smtps.server.tls, TlsMode::Implicit);
    assert_eq!(
        (smtps.server.host.as_str(), smtps.server.port, smtps.socket),
        ("2001:db8::1", 465, None)
    );

    let DeliverTarget::Mta(socket) = target("lmtp:/run/dovecot/lmtp", "") else {
        panic!("not an MTA")
    };
    assert_eq!(socket.protocol, MtaProtocol::Lmtp);
    assert_eq!(socket.socket, Some("/run/dovecot/lmtp".into()));
    assert_eq!(socket.server.tls, TlsMode::None);

    let DeliverTarget::Mta(lmtp) = target("LMTP://127.0.0.1:2424", "") else {
        panic!("not an MTA")
    };
    assert_eq!(
        (lmtp.server.host.as_str(), lmtp.server.port, lmtp.socket),
        ("127.0.0.1", 2424, None)
    );
}

#[test]
fn mda_and_imap_targets() {
    let DeliverTarget::Mda(mda) = target("mda:/usr/bin/procmail -d %T", "") else {
        panic!("not an MDA")
    };
    assert_eq!(mda.command, "/usr/bin/procmail -d %T");
    assert_eq!(mda.timeout, DEFAULT_MDA_TIMEOUT);
    let DeliverTarget::Mda(mda) = target("mda:maildrop", "[account.delivery]\ntimeout = \"30s\"\n")
    else {
        panic!("not an MDA")
    };
    assert_eq!(mda.timeout, Duration::from_secs(30));

    let DeliverTarget::Imap(imap) = target(
        "imap://me%40example.org@imap.example.org/Archive%2F2024/Entw%C3%BCrfe",
        "[account.delivery]\npassword = \"s3cret\"\nseen = true\n",
    ) else {
        panic!("not IMAP")
    };
    assert_eq!(imap.server.host, "imap.example.org");
    assert_eq!(imap.server.port, 143);
    assert_eq!(imap.folder, "Archive/2024/Entwürfe");
    assert_eq!(imap.server.username.as_deref(), Some("me@example.org"));
    assert_eq!(imap.server.tls, TlsMode::StartTls);
    assert!(imap.seen);

    let DeliverTarget::Imap(imaps) = target(
        "imaps://imap.gmail.com",
        "[account.delivery]\nusername = \"me@gmail.com\"\npassword = \"app password\"\n",
    ) else {
        panic!("not IMAP")
    };
    assert_eq!(
        (imaps.server.port, imaps.server.tls),
        (993, TlsMode::Implicit)
    );
    assert_eq!(imaps.folder, "INBOX");
}

#[test]
fn bad_delivery_settings_name_their_key() {
    let unknown = deliver_with("smtp://localhost", "[account.delivery]\nssl = true\n");
    assert_config_error(&unknown, 8, "ssl", "unknown key");
    assert_config_error(
        &deliver_with("maildir:~/Mail", "[account.delivery]\ntls = \"none\"\n"),
        8,
        "delivery.tls",
        "does not apply to deliver = \"maildir:…\"",
    );
    assert_config_error(
        &deliver_with("mbox:~/mbox", "[account.delivery]\nusername = \"me\"\n"),
        8,
        "delivery.username",
        "does not apply to deliver = \"mbox:…\"",
    );
    assert_config_error(
        &deliver_with("smtp://localhost", "[account.delivery]\nseen = true\n"),
        8,
        "delivery.seen",
        "does not apply",
    );
    assert_config_error(
        &deliver_with(
            "smtps://mx.example.org",
            "[account.delivery]\ntls = \"starttls\"\n",
        ),
        8,
        "delivery.tls",
        "always uses implicit TLS",
    );
    assert_config_error(
        &deliver_with(
            "smtp://mx.example.org",
            "[account.delivery]\ntls = \"none\"\nusername = \"me\"\npassword = \"x\"\n",
        ),
        8,
        "delivery.tls",
        "would travel unencrypted to mx.example.org",
    );
    assert_config_error(
        &deliver_with(
            "smtp://mx.example.org",
            "[account.delivery]\nusername = \"me\"\n",
        ),
        8,
        "delivery.username",
        "set both a user name and a password",
    );
    assert_config_error(
        &deliver_with(
            "smtp://localhost",
            "[account.delivery]\nauth = \"cram-md5\"\n",
        ),
        8,
        "delivery.auth",
        "not available for smtp",
    );
    assert_config_error(
        &deliver_with("imap://imap.example.org/Archive", ""),
        6,
        "deliver",
        "IMAP delivery needs a user name",
    );
    assert_config_error(
        &deliver_with("smtp://user@localhost", ""),
        6,
        "deliver",
        "not in the URL",
    );
    assert_config_error(
        &deliver_with("smtp://localhost:0", ""),
        6,
        "deliver",
        "not a port",
    );
    assert_config_error(
        &deliver_with("lmtp:run/lmtp", ""),
        6,
        "deliver",
        "lmtp:/PATH/TO/SOCKET",
    );
    assert_config_error(&deliver_with("mda: ", ""), 6, "deliver", "needs a command");
    assert_config_error(&deliver_with("mda:procmail 'a", ""), 6, "deliver", "quote");
    assert_config_error(
        &deliver_with("imap://u@h/a%zz", ""),
        6,
        "deliver",
        "two hex digits",
    );
}

#[test]
fn a_password_in_a_delivery_url_is_refused_without_showing_it() {
    for url in [
        "imaps://bob:hunter2@imap.example.org/",
        "imap://bob:hunter2@imap.example.org:143/Archive",
        "imaps://bob:hun@ter2@imap.example.org/",
        "smtp://bob:hunter2@mail.example.org",
        "smtps://bob:hunter2@[::1]:465",
        "lmtp://bob:hunter2@localhost",
    ] {
        let text = deliver_with(url, "");
        assert_config_error(&text, 6, "deliver", "holds a password");
        let err = parse_test(&text).unwrap_err();
        assert!(!err.message.contains("hunter2"), "{err}");
        assert!(!err.message.contains("ter2"), "{err}");
    }
    // A `:` that is part of the user name is written `%3A`.
    let DeliverTarget::Imap(imap) = target(
        "imaps://bob%3Ax@imap.example.org/",
        "[account.delivery]\npassword_command = \"pass x\"\n",
    ) else {
        panic!("not IMAP")
    };
    assert_eq!(imap.server.username.as_deref(), Some("bob:x"));
}

#[test]
fn envelope_keys() {
    let account = &parse_ok(&account_with("")).accounts[0];
    assert_eq!(account.to, [local_user()]);
    assert_eq!(account.envelope_from, EnvelopeFrom::ReturnPath);
    assert_eq!(account.on_reject, OnReject::Keep);

    let account = &parse_ok(&account_with(
        "to = [\"alice@localhost\", \"bob\"]\nenvelope_from = \"<>\"\non_reject = \"bounce\"\n",
    ))
    .accounts[0];
    assert_eq!(account.to, ["alice@localhost", "bob"]);
    assert_eq!(account.envelope_from, EnvelopeFrom::Fixed(Sender::Null));
    assert_eq!(account.on_reject, OnReject::Bounce);
    let account = &parse_ok(&account_with(
        "to = \"carol@example.org\"\nenvelope_from = \"fetch@example.org\"\n",
    ))
    .accounts[0];
    assert_eq!(account.to, ["carol@example.org"]);
    assert_eq!(
        account.envelope_from,
        EnvelopeFrom::Fixed(Sender::Address("fetch@example.org".into()))
    );

    assert_config_error(
        &account_with("to = []\n"),
        7,
        "to",
        "at least one recipient",
    );
    assert_config_error(
        &account_with("to = [\"a@b\", \"evil@x>\\r\\nDATA\"]\n"),
        7,
        "to",
        "not a plain address",
    );
    assert_config_error(
        &account_with("envelope_from = \"$(id)@x\"\n"),
        7,
        "envelope_from",
        "neither \"return-path\"",
    );
    assert_config_error(
        &account_with("on_reject = \"drop\"\n"),
        7,
        "on_reject",
        "not one of \"keep\", \"bounce\", \"delete\"",
    );
}

#[test]
fn delivery_display_round_trips() {
    for (deliver, extra) in [
        ("smtp://localhost", ""),
        (
            "smtp://mail.example.org:587",
            "to = [\"a@b\"]\nenvelope_from = \"<>\"\non_reject = \"delete\"\n\
                 [account.delivery]\nusername = \"me\"\npassword_command = \"pass x\"\nauth = \"login\"\n",
        ),
        ("smtps://[::1]:4650", ""),
        ("lmtp:/run/dovecot/lmtp", ""),
        ("lmtp://127.0.0.1:24", ""),
        (
            "mda:/usr/bin/procmail -d %T",
            "[account.delivery]\ntimeout = \"90s\"\n",
        ),
        ("mbox:/var/mail/alice", ""),
        (
            "mbox:/home/a/mbox",
            "[account.delivery]\ntimeout = \"5m\"\n",
        ),
        (
            "imaps://me@imap.example.org/Sent%20Items/2024",
            "[account.delivery]\npassword_file = \"/etc/pw\"\nseen = true\n",
        ),
    ] {
        let shown = parse_ok(&deliver_with(deliver, extra)).to_string();
        let reparsed = parse_ok(&shown);
        assert_eq!(reparsed.to_string(), shown, "{deliver}");
        assert_eq!(
            reparsed.accounts[0].deliver,
            parse_ok(&deliver_with(deliver, extra)).accounts[0].deliver,
            "{deliver}:\n{shown}"
        );
    }
    let shown = parse_ok(&deliver_with(
        "imaps://me@imap.example.org/Sent%20Items",
        "[account.delivery]\npassword = \"hunter2\"\n",
    ))
    .to_string();
    assert!(
        shown.contains("deliver = \"imaps://imap.example.org:993/Sent%20Items\""),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn loopback_hosts() {
    for host in [
        "localhost",
        "LOCALHOST",
        "localhost.",
        "127.0.0.1",
        "127.9.9.9",
        "::1",
    ] {
        assert!(is_loopback_host(host), "{host}");
    }
    for host in ["pop.example.com", "10.0.0.1", "::", "localhost.example.com"] {
        assert!(!is_loopback_host(host), "{host}");
    }
}

#[test]
fn display_masks_the_password_and_round_trips() {
    let text = format!(
        "{}\n{}",
        account_with(&format!(
            "password = \"hunter2\"\nfingerprint = \"{}\"\ntimeout = 90\n",
            PIN_HEX.to_lowercase()
        )),
        account_with("password_command = \"pass show \\\"mail\\\"\"\ntimeout = \"1500ms\"\n")
            .replace("\"home\"", "\"work\"")
            .replace("\"alice\"", "\"bob\"")
            .replace("~/Mail/home", "/srv/$$weird/~/\\u00e9"),
    );
    let shown = parse_ok(&text).to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("password = \"****\""), "{shown}");
    assert!(
        shown.contains("password_command = \"pass show \\\"mail\\\"\""),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("fingerprint = \"sha256:{PIN_HEX}\"")),
        "{shown}"
    );
    assert!(shown.contains("timeout = \"90s\""), "{shown}");
    assert!(shown.contains("timeout = \"1500ms\""), "{shown}");
    assert!(shown.contains("port = 995"), "{shown}");
    assert!(
        shown.contains("deliver = \"maildir:/home/alice/Mail/home\""),
        "{shown}"
    );

    let reparsed = parse_ok(&shown);
    assert_eq!(reparsed.to_string(), shown);
    assert_eq!(
        reparsed.accounts[1].deliver,
        DeliverTarget::Maildir(PathBuf::from("/srv/$weird/~/\u{e9}"))
    );
}

#[test]
fn the_example_file_parses() {
    let example = include_str!("../../fetchrc.example");
    let config = parse_ok(example);
    assert_eq!(config.accounts.len(), 1);
    assert_eq!(config.accounts[0].name, "home");

    // So do the commented-out example accounts, once uncommented: they
    // start at the first `#[[account]]`, and their settings are the
    // lines with no space after the `#`.
    let start = example.find("\n#[[account]]").expect("example accounts");
    let (active, examples) = example.split_at(start);
    let uncommented: String = examples
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(setting) if !setting.starts_with([' ', '#']) && !setting.is_empty() => {
                format!("{setting}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let config = parse_ok(&format!("{active}{uncommented}"));
    let names: Vec<&str> = config.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["home", "work", "old-provider", "gmail", "m365"]);
    assert!(matches!(config.accounts[1].deliver, DeliverTarget::Mta(_)));
    let DeliverTarget::Imap(imap) = &config.accounts[2].deliver else {
        panic!("old-provider delivers over IMAP")
    };
    assert_eq!(imap.server.username.as_deref(), Some("alice@example.org"));
    assert!(imap.seen);
    let gmail = &config.accounts[3];
    assert_eq!(gmail.protocol, Protocol::Imap);
    assert_eq!(gmail.server.port, 993);
    assert_eq!(gmail.folders, ["INBOX", "Lists/rust"]);
    assert!(gmail.keep);
    assert_eq!(gmail.fetch, FetchMode::New);
    let PasswordSource::OAuth(oauth) = &config.accounts[4].server.password else {
        panic!("m365 logs in with OAuth2")
    };
    assert_eq!(oauth.flow, crate::oauth::Flow::Device);
    assert_eq!(
        oauth.token_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
}

/// The keys allowed in a section, as serde lists them when it meets an
/// unknown one.
fn allowed_keys(section_with_unknown_key: &str) -> Vec<String> {
    let err = toml::from_str::<RawFile>(section_with_unknown_key)
        .err()
        .expect("an unknown key");
    let (_, allowed) = parse_unknown_field_message(err.message()).expect("a key list");
    allowed.into_iter().map(str::to_owned).collect()
}

#[test]
fn the_key_table_names_exactly_the_keys_serde_reads() {
    for (section, text) in [
        (keys::Section::File, "unknown = 1\n".to_owned()),
        (
            keys::Section::General,
            "[general]\nunknown = 1\n".to_owned(),
        ),
        (keys::Section::Account, account_with("unknown = 1\n")),
        (
            keys::Section::Delivery,
            account_with("[account.delivery]\nunknown = 1\n"),
        ),
        (
            keys::Section::OAuth,
            account_with("[account.oauth]\nunknown = 1\n"),
        ),
    ] {
        let mut read = allowed_keys(&text);
        let mut table: Vec<&str> = keys::in_section(section).map(|key| key.name).collect();
        read.sort();
        table.sort();
        assert_eq!(read, table, "{section:?}");
    }
}

#[test]
fn the_example_file_documents_every_key() {
    let example = include_str!("../../fetchrc.example");
    let keys: Vec<&str> = keys::KEYS.iter().map(|key| key.name).collect();
    assert!(keys.len() > 17, "{keys:?}");
    for key in keys {
        let documented = example.contains(&format!("{key} = "))
            || example.contains(&format!("[{key}]"))
            || example.contains(&format!("[account.{key}]"))
            || example.contains(&format!("[[{key}]]"));
        assert!(documented, "`{key}` is not in fetchrc.example");
    }
}

fn config_file(mode: u32, text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    file
}

/// An account that needs nothing from the environment.
const SELF_CONTAINED: &str = "[general]\nstate_dir = \"/var/lib/mailfetch\"\n\
                                  [[account]]\nname = \"home\"\nprotocol = \"pop3\"\n\
                                  host = \"pop.example.com\"\nusername = \"alice\"\n\
                                  deliver = \"maildir:/var/mail/alice\"\n";

#[test]
fn inline_password_needs_a_private_file() {
    let text = format!("{SELF_CONTAINED}password = \"secret\"\n");
    let shared = config_file(0o644, &text);
    let err = load(shared.path()).unwrap_err();
    assert_eq!(err.kind, Kind::Permissions);
    let name = shared.path().display().to_string();
    assert!(err.message.contains(&format!("chmod 600 {name}")), "{err}");
    assert!(!err.message.contains("secret\""), "{err}");

    let private = config_file(0o600, &text);
    assert!(load(private.path()).is_ok());
    // Without an inline password, the mode does not matter.
    let no_password = config_file(0o644, &with_password_command(SELF_CONTAINED));
    assert!(load(no_password.path()).is_ok());
}

/// `text` with a password command, which needs nothing private.
fn with_password_command(text: &str) -> String {
    format!("{text}password_command = \"pass show mail\"\n")
}

/// The self-contained account delivering over SMTP, logging in to the
/// relay with `delivery_password` (lines 10 to 12).
fn relayed(delivery_password: &str) -> String {
    format!(
        "{}[account.delivery]\nusername = \"me\"\n{delivery_password}\n",
        with_password_command(SELF_CONTAINED)
            .replace("maildir:/var/mail/alice", "smtp://mail.example.org")
    )
}

#[test]
fn an_inline_delivery_password_needs_a_private_file() {
    let text = relayed("password = \"relay-secret\"");
    let err = load(config_file(0o644, &text).path()).unwrap_err();
    assert_eq!(err.kind, Kind::Permissions, "{err}");
    assert!(err.message.contains("chmod 600"), "{err}");
    assert!(!err.message.contains("relay-secret"), "{err}");
    load(config_file(0o600, &text).path()).unwrap();
}

#[test]
fn a_config_others_can_change_is_refused() {
    let text = with_password_command(SELF_CONTAINED);
    for mode in [0o664, 0o646, 0o620] {
        let file = config_file(mode, &text);
        let err = load(file.path()).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions, "{err}");
        let name = file.path().display().to_string();
        assert!(
            err.message.starts_with(&format!(
                "{name}: the configuration file can be written by group or others"
            )),
            "{err}"
        );
        assert!(err.message.contains("run commands as you"), "{err}");
        assert!(err.message.contains(&format!("chmod go-w {name}")), "{err}");
    }

    // SAFETY: geteuid cannot fail and has no side effects.
    if unsafe { libc::geteuid() } == 0 {
        let foreign = config_file(0o600, &text);
        std::os::unix::fs::chown(foreign.path(), Some(4242), None).unwrap();
        let err = load(foreign.path()).unwrap_err();
        assert_eq!(err.kind, Kind::Permissions, "{err}");
        assert!(err.message.contains("belongs to uid 4242"), "{err}");
    }

    // Whoever can write to its directory can replace the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fetchrc");
    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = load(&path).unwrap_err();
    assert_eq!(err.kind, Kind::Permissions, "{err}");
    assert!(
        err.message
            .contains("the directory holding the configuration file can be written"),
        "{err}"
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    load(&path).unwrap();
}

#[test]
fn load_requires_a_password_source_for_every_login() {
    let file = config_file(0o600, SELF_CONTAINED);
    let err = load(file.path()).unwrap_err();
    assert_eq!(err.kind, Kind::Config, "{err}");
    assert!(
        err.message.starts_with(&format!(
            "{}:3: key `password`: account `home` logs in with auth = \"auto\", which \
                 needs a password",
            file.path().display()
        )),
        "{err}"
    );
    load(config_file(0o600, &with_password_command(SELF_CONTAINED)).path()).unwrap();
}

#[test]
fn load_requires_password_files_that_exist_and_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let text = format!("{SELF_CONTAINED}password_file = \"{}\"\n", secret.display());
    let file = config_file(0o600, &text);
    let located = |key: &str| format!("{}:9: key `{key}`: ", file.path().display());
    let err = load(file.path()).unwrap_err();
    assert_eq!(err.kind, Kind::Config, "{err}");
    assert_eq!(
        err.message,
        format!(
            "{}{} does not exist",
            located("password_file"),
            secret.display()
        )
    );

    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = load(file.path()).unwrap_err();
    assert_eq!(err.kind, Kind::Permissions, "{err}");
    assert!(err.message.starts_with(&located("password_file")), "{err}");
    assert!(err.message.contains("chmod 600"), "{err}");
    assert!(!err.message.contains("s3cret"), "{err}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    load(file.path()).unwrap();

    // The same for the delivery server's password file.
    let missing = dir.path().join("relay-secret");
    let file = config_file(
        0o600,
        &relayed(&format!("password_file = \"{}\"", missing.display())),
    );
    let err = load(file.path()).unwrap_err();
    assert_eq!(err.kind, Kind::Config, "{err}");
    assert!(
        err.message.starts_with(&format!(
            "{}:12: key `delivery.password_file`: {} does not exist",
            file.path().display(),
            missing.display()
        )),
        "{err}"
    );
}

#[test]
fn load_reports_a_missing_file() {
    let err = load(Path::new("/nonexistent/fetchrc")).unwrap_err();
    assert_eq!(err.kind, Kind::Config);
    assert!(err.message.starts_with("/nonexistent/fetchrc: "), "{err}");
}

#[tokio::test]
async fn password_command_output_is_the_secret() {
    for (command, expected) in [
        ("echo s3cret", "s3cret"),
        ("printf 's3cret\\r\\n'", "s3cret"),
        ("printf s3cret", "s3cret"),
        ("printf ' spaced '", " spaced "),
    ] {
        let secret = PasswordSource::Command(command.to_owned())
            .resolve("home")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(secret.expose(), expected, "{command}");
    }
}

#[tokio::test]
async fn failing_password_command_shows_stderr_but_never_stdout() {
    let source =
        PasswordSource::Command("echo leaked-secret; echo 'no such entry' >&2; exit 3".to_owned());
    let err = source.resolve("home").await.unwrap_err();
    assert_eq!(err.kind, Kind::Config);
    assert!(err.message.contains("account `home`"), "{err}");
    assert!(err.message.contains("no such entry"), "{err}");
    assert!(err.message.contains("exit status: 3"), "{err}");
    // The command itself is shown, hence the secret is looked for
    // after it.
    let (_, after_command) = err.message.split_once("exit 3`").unwrap();
    assert!(!after_command.contains("leaked-secret"), "{err}");
}

/// Whether a process is still running (zombies count as dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
        }
        Err(_) => false,
    }
}

/// Whether a process is gone within a few seconds (a killed process
/// takes a moment to die).
fn stops(pid: u32) -> bool {
    let started = std::time::Instant::now();
    while alive(pid) {
        if started.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A password command that starts a process of its own (as `pass`
/// starts gpg), records its pid, prints a secret and never ends.
fn hanging_command(dir: &Path) -> (String, PathBuf) {
    let pid_file = dir.join("pid");
    let command = format!(
        "sleep 60 & echo $! > '{}'; echo leaked-secret; wait",
        pid_file.display()
    );
    (command, pid_file)
}

/// The pid the hanging command recorded, once it has.
fn recorded_pid(pid_file: &Path) -> u32 {
    let started = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(pid_file)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no pid");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_hung_password_command_times_out_and_is_stopped_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let (command, pid_file) = hanging_command(dir.path());
    let started = std::time::Instant::now();
    let err = run_password_command("home", &command, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.kind, Kind::Config);
    assert!(err.message.starts_with("account `home`: "), "{err}");
    assert!(err.message.contains("timed out after 1s"), "{err}");
    let (_, after_command) = err.message.split_once("; wait`").unwrap();
    assert!(!after_command.contains("leaked-secret"), "{err}");
    assert!(stops(recorded_pid(&pid_file)));
}

#[tokio::test]
async fn a_cancelled_password_command_is_stopped_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let (command, pid_file) = hanging_command(dir.path());
    let source = PasswordSource::Command(command);
    let resolving = tokio::time::timeout(Duration::from_secs(2), source.resolve("home"));
    assert!(resolving.await.is_err(), "the command cannot have finished");
    assert!(stops(recorded_pid(&pid_file)));
}

#[tokio::test]
async fn password_command_must_print_one_line() {
    for (command, fragment) in [("true", "empty"), ("printf 'a\\nb\\n'", "line break")] {
        let err = PasswordSource::Command(command.to_owned())
            .resolve("home")
            .await
            .unwrap_err();
        assert!(err.message.contains(fragment), "{command}: {err}");
    }
}

#[tokio::test]
async fn password_file_gives_its_first_line_if_private() {
    let private = config_file(0o600, "s3cret\nsecond line\n");
    let source = PasswordSource::File(private.path().to_owned());
    let secret = source.resolve("home").await.unwrap().unwrap();
    assert_eq!(secret.expose(), "s3cret");

    let shared = config_file(0o640, "s3cret\n");
    let err = PasswordSource::File(shared.path().to_owned())
        .resolve("home")
        .await
        .unwrap_err();
    assert_eq!(err.kind, Kind::Permissions);
    assert!(err.message.contains("chmod 600"), "{err}");
    assert!(!err.message.contains("s3cret"), "{err}");
}

#[tokio::test]
async fn inline_and_absent_passwords_resolve_directly() {
    let inline = PasswordSource::Inline(Secret::new("s3cret".to_owned()));
    assert_eq!(
        inline.resolve("home").await.unwrap(),
        Some(Secret::new("s3cret".to_owned()))
    );
    assert_eq!(PasswordSource::None.resolve("home").await.unwrap(), None);
}

/// The `[account.oauth]` schema exactly as issue 11 writes it (the
/// onboarding command and outside tools generate it).
const OAUTH_SCHEMA: &str = r#"[[account]]
name = "work"
protocol = "imap"                      # or "pop3"
host = "outlook.office365.com"
username = "alice@contoso.com"
auth = "xoauth2"                       # or "oauthbearer"; "auto" picks one the server offers when [account.oauth] is present
deliver = "maildir:~/Mail/work"

[account.oauth]
provider = "microsoft"                 # microsoft | google | custom
flow = "device"                        # device | browser | client_credentials
client_id = "00000000-0000-0000-0000-000000000000"
client_secret_command = "pass show oauth/work"   # or client_secret / client_secret_file; public clients need none
tenant = "contoso.onmicrosoft.com"     # microsoft: default "common" (device, browser); required for client_credentials
# provider = "custom" needs the endpoints (and takes scopes for any provider):
# token_url = "https://idp.example/token"
# device_url = "https://idp.example/devicecode"      # flow = "device"
# auth_url = "https://idp.example/authorize"         # flow = "browser"
# scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"]
"#;

fn oauth_of(password: &PasswordSource) -> &crate::oauth::OAuth {
    match password {
        PasswordSource::OAuth(oauth) => oauth,
        other => panic!("not OAuth2: {other:?}"),
    }
}

#[test]
fn the_oauth_schema_of_the_issue_parses_exactly() {
    let config = parse_ok(OAUTH_SCHEMA);
    let account = &config.accounts[0];
    assert_eq!(account.server.auth, AuthMethod::XOAuth2);
    let oauth = oauth_of(&account.server.password);
    assert_eq!(oauth.provider, crate::oauth::Provider::Microsoft);
    assert_eq!(oauth.flow, crate::oauth::Flow::Device);
    assert_eq!(oauth.client_id, "00000000-0000-0000-0000-000000000000");
    assert_eq!(
        oauth.client_secret,
        PasswordSource::Command("pass show oauth/work".to_owned())
    );
    let base = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0";
    assert_eq!(oauth.token_url, format!("{base}/token"));
    assert_eq!(oauth.device_url, Some(format!("{base}/devicecode")));
    assert_eq!(
        oauth.scopes,
        [
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "offline_access"
        ]
    );
    assert_eq!(
        oauth.token_file,
        config.general.state_dir.join("oauth/work.json")
    );

    // The commented custom form, uncommented.
    let custom = OAUTH_SCHEMA
        .replace("provider = \"microsoft\"", "provider = \"custom\"")
        .replace("tenant = ", "#tenant = ")
        .replace("\n# token_url", "\ntoken_url")
        .replace("\n# device_url", "\ndevice_url")
        .replace("\n# auth_url", "\nauth_url")
        .replace("\n# scopes", "\nscopes");
    let config = parse_ok(&custom);
    let oauth = oauth_of(&config.accounts[0].server.password);
    assert_eq!(oauth.token_url, "https://idp.example/token");
    assert_eq!(
        oauth.auth_url.as_deref(),
        Some("https://idp.example/authorize")
    );
}

#[test]
fn oauth_presets_fill_in_flow_tenant_and_scopes() {
    let config = parse_ok(&account_with(
        "[account.oauth]\nprovider = \"microsoft\"\nclient_id = \"id\"\n",
    ));
    let oauth = oauth_of(&config.accounts[0].server.password);
    assert_eq!(oauth.flow, crate::oauth::Flow::Device);
    assert!(oauth.token_url.contains("/common/"), "{}", oauth.token_url);
    assert_eq!(
        oauth.scopes[0],
        "https://outlook.office.com/POP.AccessAsUser.All"
    );
    assert_eq!(config.accounts[0].server.auth, AuthMethod::Auto);

    let config = parse_ok(&account_with(
        "[account.oauth]\nprovider = \"google\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
    ));
    let oauth = oauth_of(&config.accounts[0].server.password);
    assert_eq!(oauth.flow, crate::oauth::Flow::Browser);
    assert_eq!(oauth.scopes, ["https://mail.google.com/"]);
}

#[test]
fn oauth_mistakes_are_located_and_explained() {
    let table = |lines: &str| account_with(&format!("[account.oauth]\n{lines}"));
    for (text, line, key, fragment) in [
        (
            account_with("password = \"x\"\n[account.oauth]\nprovider = \"google\"\nclient_id = \"i\"\n"),
            7,
            "password",
            "remove `password`",
        ),
        (table("client_id = \"i\"\n"), 7, "oauth.provider", "required"),
        (table("provider = \"microsoft\"\n"), 7, "oauth.client_id", "required"),
        (
            table("provider = \"custom\"\nflow = \"device\"\nclient_id = \"i\"\ntoken_url = \"https://idp/t\"\n"),
            7,
            "oauth.device_url",
            "required with provider = \"custom\" and flow = \"device\"",
        ),
        (
            table("provider = \"custom\"\nflow = \"browser\"\nclient_id = \"i\"\ntoken_url = \"http://idp.example/t\"\nauth_url = \"https://idp/a\"\n"),
            11,
            "oauth.token_url",
            "must be https://",
        ),
        (
            table("provider = \"microsoft\"\nclient_id = \"i\"\ntoken_url = \"https://idp/t\"\n"),
            10,
            "oauth.token_url",
            "set provider = \"custom\"",
        ),
        (
            table("provider = \"google\"\nflow = \"device\"\nclient_id = \"i\"\n"),
            9,
            "oauth.flow",
            "only with flow = \"browser\"",
        ),
        (
            table("provider = \"microsoft\"\nflow = \"client_credentials\"\nclient_id = \"i\"\nclient_secret = \"s\"\n"),
            7,
            "oauth.tenant",
            "required with flow = \"client_credentials\"",
        ),
        (
            table("provider = \"microsoft\"\nflow = \"client_credentials\"\nclient_id = \"i\"\nclient_secret = \"s\"\ntenant = \"common\"\n"),
            12,
            "oauth.tenant",
            "not a generic one",
        ),
        (
            table("provider = \"microsoft\"\nflow = \"client_credentials\"\nclient_id = \"i\"\ntenant = \"t.example\"\n"),
            7,
            "oauth.client_secret",
            "needs the application's secret",
        ),
        (
            table("provider = \"google\"\nclient_id = \"i\"\ntenant = \"t\"\n"),
            10,
            "oauth.tenant",
            "only applies to provider = \"microsoft\"",
        ),
        (
            table("provider = \"google\"\nclient_id = \"i\"\nclient_secret = \"s\"\nclient_secret_command = \"c\"\n"),
            11,
            "oauth.client_secret_command",
            "set only one of client_secret, client_secret_command and client_secret_file",
        ),
        (
            account_with("auth = \"plain\"\n[account.oauth]\nprovider = \"google\"\nclient_id = \"i\"\n"),
            7,
            "auth",
            "cannot send an OAuth2 token",
        ),
        (
            account_with("tls = \"none\"\n[account.oauth]\nprovider = \"google\"\nclient_id = \"i\"\n"),
            7,
            "tls",
            "unencrypted",
        ),
        (
            account_with("[account.delivery]\n[account.delivery.oauth]\nprovider = \"google\"\nclient_id = \"i\"\n")
                .replace("maildir:~/Mail/home", "lmtp://127.0.0.1"),
            8,
            "delivery.oauth",
            "does not apply",
        ),
    ] {
        assert_config_error(&text, line, key, fragment);
    }
}

#[test]
fn oauth_for_the_delivery_server_and_check_config_hide_the_secrets() {
    let text = account_with(
        "[account.oauth]\nprovider = \"google\"\nclient_id = \"id\"\nclient_secret = \"s3cret\"\n\
         [account.delivery]\nusername = \"alice@gmail.com\"\n\
         [account.delivery.oauth]\nprovider = \"microsoft\"\nclient_id = \"other\"\n",
    )
    .replace("maildir:~/Mail/home", "smtp://smtp.office365.com:587");
    let config = parse_ok(&text);
    let server = config.accounts[0].deliver.server().unwrap();
    let oauth = oauth_of(&server.password);
    assert_eq!(
        oauth.scopes,
        ["https://outlook.office.com/SMTP.Send", "offline_access"]
    );
    assert_eq!(
        oauth.token_file,
        config.general.state_dir.join("oauth/home.delivery.json")
    );
    assert!(config.holds_a_password(), "an inline client secret counts");

    let shown = config.to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("[account.oauth]\nprovider = \"google\""),
        "{shown}"
    );
    assert!(
        shown.contains("[account.delivery.oauth]\nprovider = \"microsoft\""),
        "{shown}"
    );
    let reparsed = parse_ok(&shown);
    assert_eq!(reparsed.to_string(), shown);
}
