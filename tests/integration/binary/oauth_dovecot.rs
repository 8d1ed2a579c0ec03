//! OAuth2 end to end: the binary, a real identity provider (npm's
//! oauth2-mock-server, see `testkit::oauth_provider`) and a real Dovecot
//! whose oauth2 passdb checks every token itself (signature, issuer,
//! expiry, and that the token's `email` is the login name).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use testkit::dovecot::Dovecot;
use testkit::oauth_provider::{OAuthProvider, ProviderOptions};
use testkit::run::{RUN_LIMIT, Scratch, measure, sample_message, spawn_mailfetch};

const MAILBOX: &str = "alice@example.com";
const CLIENT: &str = "mailfetch-tests";
const APP: &str = "unattended-app";
const APP_SECRET: &str = "app-secret-Zq8";

struct Setup {
    provider: OAuthProvider,
    dovecot: Dovecot,
    scratch: Scratch,
}

/// The provider (access tokens living `ttl` seconds), a Dovecot that
/// checks its tokens, and a scratch directory; `None` when a part is not
/// installed (outside CI).
fn setup(ttl: u64) -> Option<Setup> {
    let mut options = ProviderOptions::new(MAILBOX);
    options.ttl = ttl;
    options.client_secrets = vec![(APP.to_owned(), APP_SECRET.to_owned())];
    let provider = OAuthProvider::start(&options)?;
    let dovecot = Dovecot::start_with_oauth2(&provider)?;
    dovecot.add_user("alice", "unused-password");
    Some(Setup {
        provider,
        dovecot,
        scratch: Scratch::new(),
    })
}

impl Setup {
    /// Writes an account `work` fetching over `protocol` (implicit TLS)
    /// with `auth` and the `[account.oauth]` lines.
    fn configure(&self, protocol: &str, auth: &str, oauth: &str) {
        let port = match protocol {
            "imap" => self.dovecot.imaps_port(),
            _ => self.dovecot.pop3s_port(),
        };
        self.scratch.write_config(&format!(
            "[[account]]\nname = \"work\"\nprotocol = \"{protocol}\"\nhost = \"127.0.0.1\"\n\
             port = {port}\nca_file = \"{ca}\"\nusername = \"{MAILBOX}\"\nauth = \"{auth}\"\n\
             deliver = \"maildir:{maildir}\"\n\n[account.oauth]\nprovider = \"custom\"\n{oauth}\n",
            ca = self.dovecot.ca_file().display(),
            maildir = self.scratch.maildir().display(),
        ));
    }

    /// A public client that signs in with the browser.
    fn configure_browser(&self, protocol: &str) {
        self.configure(
            protocol,
            "auto",
            &format!(
                "flow = \"browser\"\nclient_id = \"{CLIENT}\"\ntoken_url = \"{}\"\n\
                 auth_url = \"{}\"\nscopes = [\"mail\", \"offline_access\"]",
                self.provider.token_url(),
                self.provider.auth_url()
            ),
        );
    }

    fn token_file(&self) -> PathBuf {
        self.scratch.path().join("state/oauth/work.json")
    }

    fn tokens(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.token_file()).unwrap()).unwrap()
    }

    /// Edits the token file as if time had passed, or the token been
    /// tampered with.
    fn edit_tokens(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut tokens = self.tokens();
        edit(&mut tokens);
        fs::write(self.token_file(), serde_json::to_vec(&tokens).unwrap()).unwrap();
    }

    fn spawn(&self, args: &[&str]) -> Child {
        spawn_mailfetch(&self.scratch.config_path(), args)
    }

    /// `mailfetch login work` with the browser flow, the test playing the
    /// browser.
    fn browser_login(&self) {
        let mut login = self.spawn(&["login", "work"]);
        let mut stdout = BufReader::new(login.stdout.take().unwrap());
        let mut url = String::new();
        while !url.starts_with("http://") {
            url.clear();
            assert!(stdout.read_line(&mut url).unwrap() > 0, "no URL printed");
        }
        assert!(url.contains("code_challenge_method=S256"), "{url}");
        assert!(url.contains("state="), "{url}");
        let status = self.provider.sign_in_with_browser(url.trim());
        assert!(status.contains(" 200 "), "{status}");
        // Its stdout ends when it exits.
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        let output = login.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{rest}\n{stderr}");
        assert!(rest.contains("signed in"), "{rest}");
    }

    fn poll(&self, args: &[&str]) -> testkit::run::Outcome {
        measure(self.spawn(args), RUN_LIMIT)
    }

    fn seed(&self, numbers: impl IntoIterator<Item = usize>) {
        for n in numbers {
            self.dovecot.save("alice", "INBOX", &sample_message(n));
        }
    }
}

#[test]
fn client_credentials_fetch_over_imap_without_a_login_and_reuse_the_token() {
    let Some(setup) = setup(3600) else { return };
    setup.configure(
        "imap",
        "auto",
        &format!(
            "flow = \"client_credentials\"\nclient_id = \"{APP}\"\nclient_secret_file = \"{}\"\n\
             token_url = \"{}\"",
            setup.scratch.path().join("secret").display(),
            setup.provider.token_url()
        ),
    );
    let secret = setup.scratch.path().join("secret");
    fs::write(&secret, format!("{APP_SECRET}\n")).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    setup.seed(1..=2);

    let first = setup.poll(&["-v"]);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(setup.scratch.delivered().len(), 2);
    // auto picked OAUTHBEARER, which Dovecot offers beside XOAUTH2.
    assert!(
        first.stderr.contains("AUTHENTICATE OAUTHBEARER ****"),
        "{first:?}"
    );
    let mode = fs::metadata(setup.token_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = setup.tokens()["access_token"].as_str().unwrap().to_owned();
    assert!(!first.stderr.contains(&token), "the token is logged");
    assert!(!first.stderr.contains(APP_SECRET), "the secret is logged");

    // While the token lives, polls cost the provider nothing.
    setup.seed(3..=3);
    let second = setup.poll(&[]);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(setup.scratch.delivered().len(), 3);
    assert_eq!(setup.provider.grants("client_credentials"), 1);

    // A wrong secret is refused by the provider: exit 3, secret unsaid.
    fs::write(&secret, "wrong-secret\n").unwrap();
    setup.edit_tokens(|tokens| tokens["expires_at"] = 0.into());
    let refused = setup.poll(&[]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(refused.stderr.contains("invalid_client"), "{refused:?}");
    assert!(!refused.stderr.contains("wrong-secret"), "{refused:?}");
}

#[test]
fn pop3_logs_in_with_xoauth2() {
    let Some(setup) = setup(3600) else { return };
    setup.configure(
        "pop3",
        "xoauth2",
        &format!(
            "flow = \"client_credentials\"\nclient_id = \"{APP}\"\nclient_secret = \"{APP_SECRET}\"\n\
             token_url = \"{}\"",
            setup.provider.token_url()
        ),
    );
    setup.seed(1..=2);
    let outcome = setup.poll(&["-v"]);
    assert_eq!(outcome.code, Some(0), "{outcome:?}");
    assert_eq!(setup.scratch.delivered().len(), 2);
    assert_eq!(setup.dovecot.message_count("alice"), 0);
    assert!(outcome.stderr.contains("AUTH XOAUTH2 ****"), "{outcome:?}");
}

#[test]
fn browser_login_then_polls_refresh_expired_tokens_and_keep_the_rotated_one() {
    let Some(setup) = setup(3) else { return };
    setup.configure_browser("imap");
    // Before the login, a poll says what to do.
    let before = setup.poll(&[]);
    assert_eq!(before.code, Some(3), "{before:?}");
    assert!(before.stderr.contains("mailfetch login work"), "{before:?}");

    setup.browser_login();
    let first_refresh_token = setup.tokens()["refresh_token"].as_str().unwrap().to_owned();
    setup.seed(1..=1);
    let first = setup.poll(&[]);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(setup.provider.grants("refresh_token"), 0);

    // The access token expires between two polls.
    thread::sleep(Duration::from_secs(3));
    setup.seed(2..=2);
    let second = setup.poll(&[]);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(setup.scratch.delivered().len(), 2);
    assert_eq!(setup.provider.grants("refresh_token"), 1);
    let rotated = setup.tokens()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, first_refresh_token, "the rotated token is stored");

    // Right after, the fresh token is reused: no refresh.
    let third = setup.poll(&[]);
    assert_eq!(third.code, Some(1), "{third:?}");
    assert_eq!(setup.provider.grants("refresh_token"), 1);
}

#[test]
fn device_login_waits_at_the_providers_pace() {
    let Some(setup) = setup(3600) else { return };
    setup.configure(
        "imap",
        "xoauth2",
        &format!(
            "flow = \"device\"\nclient_id = \"{CLIENT}\"\ntoken_url = \"{}\"\ndevice_url = \"{}\"",
            setup.provider.token_url(),
            setup.provider.device_url()
        ),
    );
    let login = setup.poll(&["login", "work"]);
    assert_eq!(login.code, Some(0), "{login:?}");
    assert!(
        login
            .stdout
            .contains("/device and enter the code MAIL-FETCH"),
        "{login:?}"
    );
    // Pending once, then approved; never polled faster than asked.
    assert_eq!(
        setup
            .provider
            .grants("urn:ietf:params:oauth:grant-type:device_code"),
        2
    );
    assert_eq!(setup.provider.slow_downs(), 0);
    setup.seed(1..=1);
    let poll = setup.poll(&[]);
    assert_eq!(poll.code, Some(0), "{poll:?}");
}

#[test]
fn a_token_the_server_refuses_is_renewed_once_and_a_revoked_login_exits_3() {
    let Some(setup) = setup(3600) else { return };
    setup.configure_browser("imap");
    setup.browser_login();
    setup.seed(1..=1);

    // Dovecot refuses a tampered token (the XOAUTH2 error challenge):
    // mailfetch refreshes once and gets in.
    setup.edit_tokens(|tokens| tokens["access_token"] = "not-a-jwt".into());
    let renewed = setup.poll(&["-v"]);
    assert_eq!(renewed.code, Some(0), "{renewed:?}");
    assert!(
        renewed.stderr.contains("the token was refused: status"),
        "{renewed:?}"
    );
    assert_eq!(setup.provider.grants("refresh_token"), 1);

    // The user's grant is revoked: exit 3, one line saying what to do, no
    // secret, and the mail waits on the server.
    setup.seed(2..=2);
    setup.provider.revoke_refresh_tokens();
    setup.edit_tokens(|tokens| tokens["expires_at"] = 0.into());
    let tokens = setup.tokens();
    let revoked = setup.poll(&["-v"]);
    assert_eq!(revoked.code, Some(3), "{revoked:?}");
    assert!(revoked.stderr.contains("invalid_grant"), "{revoked:?}");
    assert!(
        revoked.stderr.contains("run `mailfetch login work`"),
        "{revoked:?}"
    );
    for secret in ["access_token", "refresh_token"] {
        let value = tokens[secret].as_str().unwrap();
        assert!(!revoked.stderr.contains(value), "{secret} logged");
    }
    assert_eq!(setup.scratch.delivered().len(), 1);
    assert_eq!(setup.dovecot.message_count("alice"), 1);
}

#[test]
fn kill_9_during_a_refresh_loses_neither_the_account_nor_mail() {
    let Some(setup) = setup(3600) else { return };
    setup.configure_browser("pop3");
    setup.browser_login();
    setup.seed(1..=3);
    setup.edit_tokens(|tokens| tokens["expires_at"] = 0.into());

    // The provider answers the refresh slowly; mailfetch dies waiting.
    setup.provider.delay_refreshes(3000);
    let mut poll = setup.spawn(&[]);
    let started = Instant::now();
    while setup.provider.grants("refresh_token") == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "no refresh");
        thread::sleep(Duration::from_millis(20));
    }
    poll.kill().unwrap();
    poll.wait().unwrap();
    setup.provider.delay_refreshes(0);
    // Let the provider finish the abandoned refresh (it rotates the token).
    thread::sleep(Duration::from_millis(3200));

    let after = setup.poll(&[]);
    assert_eq!(after.code, Some(0), "{after:?}");
    assert_eq!(setup.scratch.delivered().len(), 3);
    assert_eq!(setup.dovecot.message_count("alice"), 0);
    assert_eq!(setup.provider.grants("refresh_token"), 2);
}

#[test]
fn an_imap_destination_logs_in_with_its_own_oauth2_tokens() {
    let Some(setup) = setup(3600) else { return };
    setup.dovecot.add_user("bob", "bob-Pa55");
    for n in 1..=2 {
        setup.dovecot.save("bob", "INBOX", &sample_message(n));
    }
    let ca = setup.dovecot.ca_file().display().to_string();
    setup.scratch.write_config(&format!(
        "[[account]]\nname = \"work\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\n\
         port = {pop3s}\nca_file = \"{ca}\"\nusername = \"bob\"\npassword = \"bob-Pa55\"\n\
         deliver = \"imaps://alice%40example.com@127.0.0.1:{imaps}/INBOX\"\n\n\
         [account.delivery]\nca_file = \"{ca}\"\n\n[account.delivery.oauth]\n\
         provider = \"custom\"\nflow = \"client_credentials\"\nclient_id = \"{APP}\"\n\
         client_secret = \"{APP_SECRET}\"\ntoken_url = \"{token_url}\"\n",
        pop3s = setup.dovecot.pop3s_port(),
        imaps = setup.dovecot.imaps_port(),
        token_url = setup.provider.token_url(),
    ));
    let outcome = setup.poll(&[]);
    assert_eq!(outcome.code, Some(0), "{outcome:?}");
    assert_eq!(setup.dovecot.message_count("alice"), 2);
    assert_eq!(setup.dovecot.message_count("bob"), 0);
    let tokens = setup.scratch.path().join("state/oauth/work.delivery.json");
    let mode = fs::metadata(tokens).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
