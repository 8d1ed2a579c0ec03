//! A real OAuth2 identity provider on loopback: npm's `oauth2-mock-server`,
//! wrapped by `oauth-mock/server.mjs` to behave like Microsoft's and
//! Google's token endpoints (real client-secret checks, rotating and
//! revocable refresh tokens, tokens that name the mailbox, a device-code
//! endpoint). See that script for what it adds to the mock.
//!
//! Its npm dependencies are installed by `contrib/test.sh` and `.ci/run`
//! (`npm ci --prefix crates/testkit/oauth-mock`); without them (or without
//! node) a test skips, and fails under `CI`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::host::{find_binary, fresh_dir, skip_unless_ci};

/// What a test needs to install the provider by hand.
pub const INSTALL_HINT: &str = "install node >= 20.19 and run `npm ci --prefix crates/testkit/oauth-mock` (contrib/test.sh does)";

/// How a provider is started.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// The mailbox every token is for (`sub` and `email` claims).
    pub email: String,
    /// Access-token lifetime in seconds.
    pub ttl: u64,
    /// Confidential clients and their secrets; any other client id is
    /// public (needs no secret).
    pub client_secrets: Vec<(String, String)>,
}

impl ProviderOptions {
    pub fn new(email: &str) -> ProviderOptions {
        ProviderOptions {
            email: email.to_owned(),
            ttl: 3600,
            client_secrets: Vec::new(),
        }
    }
}

/// A running provider; dropping it stops it.
pub struct OAuthProvider {
    url: String,
    key_dir: PathBuf,
    child: Child,
    _tmp: tempfile::TempDir,
}

impl OAuthProvider {
    /// Starts a provider, or returns `None` (after a loud SKIPPED banner)
    /// when node or the npm package is missing, unless under `CI`, where
    /// it panics.
    pub fn start(options: &ProviderOptions) -> Option<OAuthProvider> {
        let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("oauth-mock");
        let installed = script_dir.join("node_modules/oauth2-mock-server").is_dir();
        let Some(node) = find_binary("node").filter(|_| installed) else {
            skip_unless_ci(
                &format!("the OAuth2 mock provider is not installed: {INSTALL_HINT}"),
                "OAuth2",
            );
            return None;
        };
        let tmp = fresh_dir("oauth-provider-", None).unwrap();
        // Dovecot's auth process (another user when the tests run as root)
        // reads the key.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let key_dir = tmp.path().join("keys");
        let secrets: Vec<String> = options
            .client_secrets
            .iter()
            .map(|(id, secret)| format!("{id:?}: {secret:?}"))
            .collect();
        let mut child = Command::new(node)
            .arg(script_dir.join("server.mjs"))
            .arg(&key_dir)
            .env("MOCK_EMAIL", &options.email)
            .env("MOCK_TTL", options.ttl.to_string())
            .env("MOCK_CLIENT_SECRETS", format!("{{{}}}", secrets.join(", ")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting node");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        let url = ready
            .split('"')
            .nth(3)
            .unwrap_or_else(|| panic!("the OAuth2 mock did not start: {ready:?}"))
            .to_owned();
        Some(OAuthProvider {
            url,
            key_dir,
            child,
            _tmp: tmp,
        })
    }

    /// The issuer, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.url)
    }

    pub fn auth_url(&self) -> String {
        format!("{}/authorize", self.url)
    }

    pub fn device_url(&self) -> String {
        format!("{}/devicecode", self.url)
    }

    /// Where the public signing key is, for Dovecot's
    /// `local_validation_key_dict` (`DIR/default/RS256/mailfetch`).
    pub fn key_dir(&self) -> &Path {
        &self.key_dir
    }

    /// Revokes every refresh token issued so far.
    pub fn revoke_refresh_tokens(&self) {
        self.request("POST", "/test/revoke", "");
    }

    /// Access tokens issued from now on live `seconds`.
    pub fn set_ttl(&self, seconds: u64) {
        self.request("POST", &format!("/test/ttl?seconds={seconds}"), "");
    }

    /// Refresh requests are answered `millis` late from now on.
    pub fn delay_refreshes(&self, millis: u64) {
        self.request("POST", &format!("/test/delay?ms={millis}"), "");
    }

    /// How many token requests of `grant_type` the provider received.
    pub fn grants(&self, grant_type: &str) -> u64 {
        self.stat(grant_type)
    }

    /// How often the device endpoint had to say `slow_down`.
    pub fn slow_downs(&self) -> u64 {
        self.stat("slow_down")
    }

    /// The number after `"key":` in the provider's statistics (its keys
    /// are distinct), 0 if absent.
    fn stat(&self, key: &str) -> u64 {
        let stats = self.request("GET", "/test/stats", "");
        stats
            .split_once(&format!("\"{key}\":"))
            .and_then(|(_, rest)| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// An access token for the public client `client_id` by the client
    /// credentials grant, as a test's own client would get one.
    pub fn client_credentials_token(&self, client_id: &str) -> String {
        let body = self.request(
            "POST",
            "/token",
            &format!("grant_type=client_credentials&client_id={client_id}"),
        );
        body.split("\"access_token\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no access token in {body}"))
            .to_owned()
    }

    /// Plays the browser of the authorization code flow: opens
    /// `authorization_url` at the provider, which signs the user in at
    /// once and redirects, and follows the redirect to mailfetch's
    /// loopback listener. The listener's status line.
    pub fn sign_in_with_browser(&self, authorization_url: &str) -> String {
        let (status, location) = http_get(authorization_url);
        assert!(status.contains(" 302 "), "{authorization_url}: {status}");
        let location = location.expect("a redirect has a Location");
        http_get(&location).0
    }

    /// One HTTP/1.0 request to the provider (a form body, if any); the
    /// response's body.
    fn request(&self, method: &str, path: &str, form: &str) -> String {
        let authority = self.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(authority).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {authority}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{form}",
            form.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "{method} {path}: {response}"
        );
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

impl Drop for OAuthProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs an `http://HOST:PORT/…` URL: the status line and the `Location`.
fn http_get(url: &str) -> (String, Option<String>) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.lines().next().unwrap_or_default().to_owned();
    let location = response
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        });
    (status, location)
}
