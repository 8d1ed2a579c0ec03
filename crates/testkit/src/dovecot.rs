//! A private, throwaway Dovecot server for integration tests, the demo and
//! the benchmark.
//!
//! Everything lives in one temporary directory: configuration, sockets,
//! state, log, a freshly generated test CA plus server certificate, the
//! users' passwd-file and their homes with `~/Maildir`. Dovecot listens on
//! 127.0.0.1 only, on free ports: POP3 (plain + STLS), POP3S, IMAP (plain +
//! STARTTLS), IMAPS and LMTP. The server is stopped and the directory removed
//! on drop.
//!
//! Works as root (mail is then owned by `nobody`, since Dovecot refuses to
//! access mail as uid 0; the login and internal processes run as Debian's
//! `dovenull` and `dovecot` users) and as an unprivileged user (every process
//! then runs as that user and chroots are switched off).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::host::{
    find_binary, fingerprint, fresh_dir, openssl, skip_unless_ci, start_with_retries,
};
use crate::oauth_provider::OAuthProvider;

/// Printed (to stderr) when Dovecot is not installed and we are not in CI.
pub const INSTALL_HINT: &str =
    "apt-get install dovecot-core dovecot-pop3d dovecot-imapd dovecot-lmtpd openssl";

/// How long to wait for Dovecot to accept connections on every port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running private Dovecot instance. Dropping it stops the server and
/// deletes every file it used.
pub struct Dovecot {
    dir: PathBuf,
    conf: PathBuf,
    ca_file: PathBuf,
    fingerprint: String,
    pop3: u16,
    pop3s: u16,
    imap: u16,
    imaps: u16,
    lmtp: u16,
    mail_uid: u32,
    mail_gid: u32,
    doveadm: Option<PathBuf>,
    users: Mutex<Vec<(String, String)>>,
    seq: AtomicU64,
    epoch: u64,
    child: Option<Child>,
    // Declared last: removed after the child is reaped.
    _tmp: tempfile::TempDir,
}

impl Dovecot {
    /// Starts a private Dovecot under the system temp dir.
    ///
    /// Returns `None` (after printing a loud SKIPPED message) if Dovecot is
    /// not installed, unless the `CI` environment variable is set, in which
    /// case it panics: the tests are mandatory there.
    pub fn start() -> Option<Dovecot> {
        Self::start_in_opt(None, None)
    }

    /// Like [`Dovecot::start`], with a second passdb that takes OAuth2
    /// bearer tokens (XOAUTH2, OAUTHBEARER) signed by `provider`. Dovecot
    /// checks each token itself (`introspection_mode = local`: signature
    /// with the provider's public key, issuer, expiry), and the login name
    /// must be the token's `email`; its `%n` (the part before `@`) names
    /// the user added with [`Dovecot::add_user`].
    pub fn start_with_oauth2(provider: &OAuthProvider) -> Option<Dovecot> {
        Self::start_in_opt(None, Some(provider))
    }

    /// Like [`Dovecot::start`], but keeps everything in a new temp dir inside
    /// `parent` (e.g. the current directory, to stay off a tmpfs `/tmp`).
    pub fn start_in(parent: &Path) -> Option<Dovecot> {
        Self::start_in_opt(Some(parent), None)
    }

    fn start_in_opt(parent: Option<&Path>, oauth2: Option<&OAuthProvider>) -> Option<Dovecot> {
        let Some(binary) = find_binary("dovecot") else {
            skip_unless_ci(
                &format!("dovecot not installed — {INSTALL_HINT}"),
                "Dovecot",
            );
            return None;
        };
        if find_binary("openssl").is_none() {
            panic!("openssl CLI not found (needed for the test CA): {INSTALL_HINT}");
        }
        Some(start_with_retries("Dovecot", || {
            Self::try_start(&binary, parent, oauth2)
        }))
    }

    fn try_start(
        binary: &Path,
        parent: Option<&Path>,
        oauth2: Option<&OAuthProvider>,
    ) -> Result<Dovecot, String> {
        let tmp = fresh_dir("dovecot-", parent)?;
        let dir = tmp.path().to_path_buf();
        // Mail and login processes run as other users when we are root.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let meta = fs::metadata(&dir).unwrap();
        let (my_uid, my_gid) = (meta.uid(), meta.gid());
        let root = my_uid == 0;

        let (mail_uid, mail_gid) = if root {
            // Dovecot never accesses mail as root.
            lookup_user_by_name("nobody").map_or((65534, 65534), |u| (u.uid, u.gid))
        } else {
            (my_uid, my_gid)
        };

        // TLS material.
        let (ca_file, cert, key, fingerprint) = make_certs(&dir)?;

        for sub in ["run", "state", "home", "users"] {
            fs::create_dir(dir.join(sub)).unwrap();
        }

        // Free ports, all held until every one is chosen so they differ.
        let listeners: Vec<TcpListener> = (0..5)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let [pop3, pop3s, imap, imaps, lmtp] = ports[..] else {
            unreachable!()
        };

        let users_conf = if root {
            for u in ["dovecot", "dovenull"] {
                if lookup_user_by_name(u).is_none() {
                    return Err(format!(
                        "system user {u:?} missing; is dovecot-core installed properly?"
                    ));
                }
            }
            "default_internal_user = dovecot\n\
             default_internal_group = dovecot\n\
             default_login_user = dovenull\n"
                .to_string()
        } else {
            let me = lookup_user_by_uid(my_uid)
                .ok_or_else(|| format!("uid {my_uid} has no /etc/passwd entry"))?;
            let group = lookup_group_by_gid(my_gid).unwrap_or_else(|| me.name.clone());
            format!(
                "default_internal_user = {name}\n\
                 default_internal_group = {group}\n\
                 default_login_user = {name}\n\
                 service anvil {{\n  chroot =\n}}\n\
                 service ipc {{\n  chroot =\n}}\n\
                 service old-stats {{\n  chroot =\n}}\n\
                 service imap-login {{\n  chroot =\n}}\n\
                 service pop3-login {{\n  chroot =\n}}\n",
                name = me.name
            )
        };
        let dh = Path::new("/usr/share/dovecot/dh.pem");
        let dh_conf = if dh.exists() {
            format!("ssl_dh = <{}\n", dh.display())
        } else {
            String::new()
        };
        // MAILFETCH_DOVECOT_DEBUG=1 makes Dovecot log auth and mail details.
        let debug_conf = if std::env::var_os("MAILFETCH_DOVECOT_DEBUG").is_some() {
            "mail_debug = yes\nauth_debug = yes\nverbose_ssl = yes\n"
        } else {
            ""
        };
        let (oauth2_mechanisms, oauth2_passdb) = match oauth2 {
            Some(provider) => {
                let oauth2_conf = dir.join("oauth2.conf");
                fs::write(
                    &oauth2_conf,
                    format!(
                        "introspection_mode = local\n\
                         local_validation_key_dict = fs:posix:prefix={keys}/\n\
                         issuers = {issuer}\n\
                         username_attribute = email\n",
                        keys = provider.key_dir().display(),
                        issuer = provider.url(),
                    ),
                )
                .unwrap();
                fs::set_permissions(&oauth2_conf, fs::Permissions::from_mode(0o644)).unwrap();
                (
                    " xoauth2 oauthbearer",
                    format!(
                        "passdb {{\n  driver = oauth2\n  args = {}\n}}\n",
                        oauth2_conf.display()
                    ),
                )
            }
            None => ("", String::new()),
        };
        let d = dir.display();
        let conf_text = format!(
            r#"# Private Dovecot for mailfetch tests (generated).
protocols = pop3 imap lmtp
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = mailfetch-test-{pop3}
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
debug_log_path = {d}/dovecot.log
{users_conf}
first_valid_uid = 1
last_valid_uid = 0
first_valid_gid = 1
last_valid_gid = 0
mail_location = maildir:~/Maildir
mail_fsync = never
auth_mechanisms = plain login cram-md5 apop scram-sha-256{oauth2_mechanisms}
auth_verbose = yes
disable_plaintext_auth = no
# One passwd-file per user: Dovecot re-reads a passwd-file at most once a
# second, but opens a file it has not seen yet at once, so users added after
# start-up can log in immediately.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {d}/users/%n
}}
{oauth2_passdb}userdb {{
  driver = passwd-file
  args = username_format=%n {d}/users/%n
}}
# No slowdown after failed logins (tests fail logins on purpose): no delay,
# and no anvil auth penalty (Dovecot's documented way to switch it off).
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{debug_conf}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{dh_conf}
pop3_uidl_format = %08Xu%08Xv
protocol pop3 {{
  pop3_client_workarounds =
}}
lmtp_save_to_detail_mailbox = no
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
        );
        let conf = dir.join("dovecot.conf");
        fs::write(&conf, conf_text).unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();

        let child = Command::new(binary)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("dovecot.stderr")).unwrap())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", binary.display()))?;

        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut dc = Dovecot {
            dir,
            conf,
            ca_file,
            fingerprint,
            pop3,
            pop3s,
            imap,
            imaps,
            lmtp,
            mail_uid,
            mail_gid,
            doveadm: find_binary("doveadm"),
            users: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            epoch,
            child: Some(child),
            _tmp: tmp,
        };
        dc.wait_ready()?;
        Ok(dc)
    }

    /// Waits until every port accepts connections.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let ports = [self.pop3, self.pop3s, self.imap, self.imaps, self.lmtp];
        let mut pending: Vec<u16> = ports.to_vec();
        loop {
            pending.retain(|&p| TcpStream::connect(("127.0.0.1", p)).is_err());
            if pending.is_empty() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = self.log();
                self.child = None;
                if log.contains("Address already in use") {
                    return Err(format!("port clash, dovecot exited ({status}):\n{log}"));
                }
                panic!("dovecot exited during startup ({status}). Its log:\n{log}");
            }
            if Instant::now() > deadline {
                let log = self.log();
                panic!(
                    "dovecot did not accept connections on ports {pending:?} within \
                     {STARTUP_TIMEOUT:?}. Its log:\n{log}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host to connect to.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
    pub fn pop3_port(&self) -> u16 {
        self.pop3
    }
    pub fn pop3s_port(&self) -> u16 {
        self.pop3s
    }
    pub fn imap_port(&self) -> u16 {
        self.imap
    }
    pub fn imaps_port(&self) -> u16 {
        self.imaps
    }
    pub fn lmtp_port(&self) -> u16 {
        self.lmtp
    }

    /// PEM file of the throwaway CA that signed the server certificate
    /// (valid for `localhost` and `127.0.0.1`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// SHA-256 fingerprint of the server certificate, as
    /// `sha256:AB:CD:...` (uppercase hex, colon separated).
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The temp dir holding everything (config, log, homes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Dovecot's generated configuration file.
    pub fn config_file(&self) -> &Path {
        &self.conf
    }

    /// Everything Dovecot logged so far.
    pub fn log(&self) -> String {
        let mut s = fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default();
        let err = fs::read_to_string(self.dir.join("dovecot.stderr")).unwrap_or_default();
        if !err.trim().is_empty() {
            s.push_str("\n--- stderr ---\n");
            s.push_str(&err);
        }
        s
    }

    /// Adds a user (or changes its password) with an empty Maildir. The
    /// password is stored `{PLAIN}`, so every mechanism (USER/PASS, APOP,
    /// PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256) works. Takes effect at once
    /// (changing the password of an existing user sleeps ~1 s for that).
    pub fn add_user(&self, name: &str, password: &str) {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "user name {name:?} must be [A-Za-z0-9._-]+"
        );
        assert!(
            !password.contains([':', '\n']),
            "password must not contain ':' or newline"
        );
        let home = self.home(name);
        let maildir = home.join("Maildir");
        for d in [&home, &maildir] {
            let _ = fs::create_dir(d);
            self.chown(d);
        }
        for sub in ["new", "cur", "tmp"] {
            let p = maildir.join(sub);
            let _ = fs::create_dir(&p);
            self.chown(&p);
        }
        let mut users = self.users.lock().unwrap();
        let existed = users.iter().any(|(n, _)| n == name);
        users.retain(|(n, _)| n != name);
        users.push((name.to_string(), password.to_string()));
        let line = format!(
            "{name}:{{PLAIN}}{password}:{uid}:{gid}::{home}::\n",
            uid = self.mail_uid,
            gid = self.mail_gid,
            home = home.display()
        );
        // Replace atomically so the auth process never sees a partial file.
        let tmp = self.dir.join("users").join(format!(".{name}.tmp"));
        fs::write(&tmp, line).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&tmp, self.dir.join("users").join(name)).unwrap();
        if existed {
            // Dovecot stats a passwd-file it already read at most once per
            // second: wait so the new password is in force on return.
            thread::sleep(Duration::from_millis(1100));
        }
    }

    /// The password of a user added with [`Dovecot::add_user`].
    pub fn password(&self, user: &str) -> Option<String> {
        let users = self.users.lock().unwrap();
        users
            .iter()
            .find(|(n, _)| n == user)
            .map(|(_, p)| p.clone())
    }

    /// The user's home directory.
    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.join("home").join(user)
    }

    /// The user's Maildir (INBOX).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.home(user).join("Maildir")
    }

    /// Puts a message straight into the user's `Maildir/new` (written to
    /// `tmp/`, then renamed), owned by the mail user. Messages are numbered
    /// by Dovecot in the order they were added. Use LF line endings: Dovecot
    /// serves them as CRLF (the file name carries both sizes, `S=` and `W=`,
    /// so Dovecot need not read the file to answer STAT/LIST).
    pub fn add_message(&self, user: &str, message: &[u8]) -> PathBuf {
        let maildir = self.maildir(user);
        assert!(
            maildir.is_dir(),
            "no Maildir for {user:?}: call add_user first"
        );
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let base = format!(
            "{}.M{:06}P{}Q{}.mailfetch-test",
            self.epoch,
            n % 1_000_000,
            std::process::id(),
            n
        );
        let lfs = memchr_count(b'\n', message);
        let crs_before_lf = message.windows(2).filter(|w| w == b"\r\n").count();
        let vsize = message.len() + lfs - crs_before_lf;
        let tmp = maildir.join("tmp").join(&base);
        fs::write(&tmp, message).unwrap();
        self.chown(&tmp);
        let dest = maildir
            .join("new")
            .join(format!("{base},S={},W={vsize}", message.len()));
        fs::rename(&tmp, &dest).unwrap();
        dest
    }

    /// Paths of the messages in the user's INBOX (`new/` and `cur/`), in
    /// the order they were added.
    pub fn message_paths(&self, user: &str) -> Vec<PathBuf> {
        let maildir = self.maildir(user);
        let mut v: Vec<(String, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(rd) = fs::read_dir(maildir.join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                v.push((sort_key(&name), e.path()));
            }
        }
        v.sort();
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Number of messages in the user's INBOX. POP3 deletions show up once
    /// the POP3 session has ended (QUIT).
    pub fn message_count(&self, user: &str) -> usize {
        self.message_paths(user).len()
    }

    /// Contents of the messages in the user's INBOX, in the order added.
    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        self.message_paths(user)
            .iter()
            .map(|p| fs::read(p).unwrap())
            .collect()
    }

    /// Runs `doveadm -c <our config> ARGS...` (e.g. `["mailbox", "create",
    /// "-u", "alice", "Archive"]`) and returns its output. Panics if doveadm
    /// is not installed or cannot be run; check `status` yourself.
    /// Saves a message into `folder` of `user` through Dovecot (so it gets
    /// a UID at once), as another mail client would.
    pub fn save(&self, user: &str, folder: &str, message: &[u8]) {
        let bin = self
            .doveadm
            .as_ref()
            .unwrap_or_else(|| panic!("doveadm not found: {INSTALL_HINT}"));
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .args(["save", "-u", user, "-m", folder])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running doveadm save: {e}"));
        child.stdin.take().unwrap().write_all(message).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "doveadm save failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The UIDs in `folder` of `user` that match a doveadm search query
    /// (e.g. `["ALL"]`, `["SEEN"]`, `["DELETED"]`).
    pub fn uids(&self, user: &str, folder: &str, query: &[&str]) -> Vec<u32> {
        let mut args = vec!["search", "-u", user, "mailbox", folder];
        args.extend_from_slice(query);
        self.doveadm_ok(&args)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }

    pub fn doveadm(&self, args: &[&str]) -> Output {
        let bin = self
            .doveadm
            .as_ref()
            .unwrap_or_else(|| panic!("doveadm not found: {INSTALL_HINT}"));
        Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running doveadm: {e}"))
    }

    /// Like [`Dovecot::doveadm`], but panics (with output and log) unless it
    /// succeeds; returns its stdout.
    pub fn doveadm_ok(&self, args: &[&str]) -> String {
        let out = self.doveadm(args);
        if !out.status.success() {
            panic!(
                "doveadm {args:?} failed ({}):\nstdout: {}\nstderr: {}\nlog:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Delivers a message through LMTP, as an MTA would (Dovecot writes it
    /// into `recipient`'s INBOX, e.g. `alice` or `alice@localhost`).
    pub fn lmtp_deliver(&self, recipient: &str, message: &[u8]) {
        let mut s = TcpStream::connect(("127.0.0.1", self.lmtp)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        let mut expect = |s: &mut TcpStream, code: &str| {
            // Read until a final reply line ("NNN " not "NNN-").
            loop {
                let mut b = [0u8; 1];
                buf.clear();
                loop {
                    if s.read(&mut b).unwrap() == 0 {
                        panic!("LMTP: connection closed; log:\n{}", self.log());
                    }
                    buf.push(b[0]);
                    if b[0] == b'\n' {
                        break;
                    }
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if line.len() >= 4 && &line[3..4] == "-" {
                    continue;
                }
                assert!(
                    line.starts_with(code),
                    "LMTP: expected {code}, got {line:?}; log:\n{}",
                    self.log()
                );
                return;
            }
        };
        expect(&mut s, "220");
        s.write_all(b"LHLO localhost\r\n").unwrap();
        expect(&mut s, "250");
        s.write_all(b"MAIL FROM:<harness@localhost>\r\n").unwrap();
        expect(&mut s, "250");
        s.write_all(format!("RCPT TO:<{recipient}>\r\n").as_bytes())
            .unwrap();
        expect(&mut s, "250");
        s.write_all(b"DATA\r\n").unwrap();
        expect(&mut s, "354");
        let mut data = Vec::with_capacity(message.len() + message.len() / 40 + 8);
        for line in message.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.first() == Some(&b'.') {
                data.push(b'.');
            }
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        s.write_all(&data).unwrap();
        expect(&mut s, "250");
        s.write_all(b"QUIT\r\n").unwrap();
    }

    fn chown(&self, p: &Path) {
        if self.mail_uid != current_uid(&self.dir) {
            std::os::unix::fs::chown(p, Some(self.mail_uid), Some(self.mail_gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        }
    }

    /// Stops Dovecot gracefully (SIGTERM, which takes Dovecot about a
    /// second; SIGKILL after 10 s) and reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Kills Dovecot at once (SIGKILL to the master; its children notice
    /// and exit within milliseconds) and waits until they are all gone.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let children = child_pids(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && children.iter().any(|&p| process_alive(p)) {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // Graceful shutdown takes Dovecot a second; tests need no grace.
        self.kill();
        // The temp dir (`_tmp`) is removed when the field is dropped.
    }
}

/// Pids of the direct children of `parent` (from /proc).
fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// (state, ppid) of a process, from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may contain spaces, so split after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a process still runs (exists and is not a zombie).
fn process_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

fn current_uid(dir: &Path) -> u32 {
    // The temp dir was created by us, so its owner is our effective uid.
    fs::metadata(dir).map(|m| m.uid()).unwrap_or(u32::MAX)
}

fn memchr_count(needle: u8, hay: &[u8]) -> usize {
    hay.iter().filter(|&&b| b == needle).count()
}

/// Sort key for a maildir file name that orders our `SECS.MNNNNNN...`
/// names numerically and anything else sensibly.
fn sort_key(name: &str) -> String {
    let mut parts = name.splitn(2, '.');
    let secs = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("");
    // Sequence number after 'Q' in our names.
    let q = rest
        .find('Q')
        .map(|i| {
            rest[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .unwrap_or_default();
    format!("{secs:0>20}.{q:0>20}.{rest}")
}

struct PwEntry {
    name: String,
    uid: u32,
    gid: u32,
}

fn passwd_entries() -> Vec<PwEntry> {
    let text = fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PwEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn lookup_user_by_name(name: &str) -> Option<PwEntry> {
    passwd_entries().into_iter().find(|e| e.name == name)
}

fn lookup_user_by_uid(uid: u32) -> Option<PwEntry> {
    passwd_entries().into_iter().find(|e| e.uid == uid)
}

fn lookup_group_by_gid(gid: u32) -> Option<String> {
    let text = fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(gid)).then(|| f[0].to_string())
    })
}

/// Creates a throwaway CA and a server certificate for localhost and
/// 127.0.0.1 (ECDSA P-256). Returns (ca.pem, server.pem, server.key,
/// fingerprint).
fn make_certs(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf, String), String> {
    let tls = dir.join("tls");
    fs::create_dir(&tls).unwrap();
    let ext = "basicConstraints = critical, CA:FALSE\n\
               keyUsage = critical, digitalSignature\n\
               extendedKeyUsage = serverAuth\n\
               subjectAltName = DNS:localhost, IP:127.0.0.1\n\
               subjectKeyIdentifier = hash\n\
               authorityKeyIdentifier = keyid\n";
    fs::write(tls.join("server.ext"), ext).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "30"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/O=mailfetch tests/CN=mailfetch throwaway test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&tls, &ca)?;
    let mut csr = vec!["req", "-new", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/O=mailfetch tests/CN=localhost",
    ]);
    openssl(&tls, &csr)?;
    openssl(
        &tls,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    )?;
    let fingerprint = fingerprint(&tls, "server.pem")?;
    // The key must be readable by Dovecot's config process (root, or us).
    fs::set_permissions(tls.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&tls, fs::Permissions::from_mode(0o755)).unwrap();
    Ok((
        tls.join("ca.pem"),
        tls.join("server.pem"),
        tls.join("server.key"),
        fingerprint,
    ))
}
