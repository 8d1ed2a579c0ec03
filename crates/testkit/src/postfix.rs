//! A private, throwaway Postfix for the SMTP delivery tests and the
//! benchmark.
//!
//! Everything lives in one temporary directory:
//!
//! ```text
//! DIR/etc/main.cf, master.cf   config_directory (nothing else in it)
//! DIR/queue/                   queue_directory, owned by root
//! DIR/data/                    data_directory, owned by postfix
//! DIR/mail/USER/               one Maildir per virtual mailbox
//! DIR/maillog                  Postfix's log (postlogd, no syslog needed)
//! DIR/tls/                     a self-signed certificate for STARTTLS
//! ```
//!
//! smtpd listens on 127.0.0.1 on a free port, offering STARTTLS, and on
//! another as SMTPS (TLS from the first byte), both with a self-signed
//! certificate (pin [`Postfix::fingerprint`]). Mail for
//! `USER@example.test` (see [`USERS`]) goes to `DIR/mail/USER/` through the
//! `virtual` delivery agent, as uid/gid `nobody`.
//!
//! Quirks found on the way, so nobody has to find them again:
//!
//! * Postfix must run as root: `postfix start` checks that it is root, the
//!   master daemon binds its sockets and then drops to `mail_owner`. Not
//!   root: the harness skips (panics in CI, which runs as root).
//! * `postfix -c DIR` needs no `alternate_config_directories` when run by
//!   root, but its sanity check (`postfix-script`) warns about every file
//!   under the config directory not owned by root, so the config gets a
//!   directory of its own, separate from the queue, data and mail.
//! * `postfix start` creates the queue's subdirectories itself
//!   (`postfix-script` runs `post-install create-missing`); only the top
//!   directories are made here. The data directory must belong to
//!   `postfix`.
//! * `maillog_file` needs the `postlog` service in master.cf and its
//!   directory listed in `maillog_file_prefixes`.
//! * master.cf has chroot `n` everywhere: a chroot would need copies of
//!   /etc files inside the queue directory.
//! * The `virtual` agent refuses uids below `virtual_minimum_uid` (100), so
//!   mail belongs to `nobody`; `virtual_mailbox_limit = 0` because it must
//!   not be below `message_size_limit` (raised to 100 MiB for the tests).
//! * Loopback clients count as local, whose mail Postfix "fixes" (adds
//!   Message-Id and Date): `local_header_rewrite_clients =` keeps the
//!   delivered message byte-identical below Postfix's trace headers.
//! * `alias_maps` and `local_recipient_maps` are emptied: there is no local
//!   delivery, and Debian's default alias_maps (with `nis:mail.aliases`)
//!   makes every smtpd log a NIS warning.
//! * Postfix's own fsyncs make each message cost a few ms; the benchmark
//!   therefore puts the directory where it puts Dovecot's.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::host::{
    find_binary, fingerprint, fresh_dir, openssl, skip_unless_ci, start_with_retries,
};

pub const INSTALL_HINT: &str = "DEBIAN_FRONTEND=noninteractive apt-get install postfix";

/// The virtual mailboxes: `NAME@example.test` → `DIR/mail/NAME/`.
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

pub const DOMAIN: &str = "example.test";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Postfix {
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
    smtps_port: u16,
    fingerprint: String,
    running: bool,
    // Declared last: removed after Postfix is stopped.
    _tmp: tempfile::TempDir,
}

impl Postfix {
    /// Starts a private Postfix under the system temp dir; `None` (after a
    /// loud SKIPPED message) when Postfix is not installed or we are not
    /// root, unless `CI` is set, in which case it panics.
    pub fn start() -> Option<Postfix> {
        Self::start_in_opt(None)
    }

    /// Like [`Postfix::start`], in a new temp dir inside `parent`.
    pub fn start_in(parent: &Path) -> Option<Postfix> {
        Self::start_in_opt(Some(parent))
    }

    fn start_in_opt(parent: Option<&Path>) -> Option<Postfix> {
        let binary = find_binary("postfix");
        let root = fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let problem = match (&binary, root) {
            (None, _) => Some(format!("postfix not installed — {INSTALL_HINT}")),
            (Some(_), false) => Some("the private Postfix needs root".to_owned()),
            _ => None,
        };
        if let Some(problem) = problem {
            skip_unless_ci(&problem, "Postfix");
            return None;
        }
        let binary = binary.unwrap();
        Some(start_with_retries("Postfix", || {
            Self::try_start(&binary, parent)
        }))
    }

    fn try_start(binary: &Path, parent: Option<&Path>) -> Result<Postfix, String> {
        let tmp = fresh_dir("postfix-", parent)?;
        let dir = tmp.path().to_path_buf();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["etc", "queue", "data", "mail", "tls"] {
            fs::create_dir(dir.join(sub)).unwrap();
        }
        let (postfix_uid, _) = lookup_user("postfix").ok_or("no postfix user")?;
        let (mail_uid, mail_gid) = lookup_user("nobody").unwrap_or((65534, 65534));
        std::os::unix::fs::chown(dir.join("data"), Some(postfix_uid), None).unwrap();
        std::os::unix::fs::chown(dir.join("mail"), Some(mail_uid), Some(mail_gid)).unwrap();
        let fingerprint = make_cert(&dir.join("tls"))?;

        // Both held until both are chosen, so they differ.
        let listeners: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}")))
            .collect::<Result<_, _>>()?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let (port, smtps_port) = (ports[0], ports[1]);
        let d = dir.display();
        let mailboxes: Vec<String> = USERS.iter().map(|u| format!("{u}@{DOMAIN}={u}/")).collect();
        let main_cf = format!(
            "# Private Postfix for mailfetch tests (generated).\n\
             compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = mx.{DOMAIN}\n\
             mydomain = {DOMAIN}\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             relayhost =\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             virtual_mailbox_domains = {DOMAIN}\n\
             virtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = inline:{{ {maps} }}\n\
             virtual_uid_maps = static:{mail_uid}\n\
             virtual_gid_maps = static:{mail_gid}\n\
             virtual_minimum_uid = 100\n\
             message_size_limit = 104857600\n\
             virtual_mailbox_limit = 0\n\
             smtputf8_enable = yes\n\
             smtpd_tls_cert_file = {d}/tls/cert.pem\n\
             smtpd_tls_key_file = {d}/tls/key.pem\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_loglevel = 1\n\
             local_header_rewrite_clients =\n\
             smtpd_client_connection_rate_limit = 0\n\
             smtpd_client_message_rate_limit = 0\n\
             smtpd_error_sleep_time = 0\n\
             smtpd_soft_error_limit = 1000\n\
             smtpd_hard_error_limit = 1000\n\
             default_process_limit = 100\n\
             biff = no\n",
            maps = mailboxes.join(", "),
        );
        // Columns: private, unprivileged (the `virtual` agent must be
        // privileged to switch to the mailbox owner), chroot (never).
        let service =
            |name: &str, kind: &str, private: &str, wakeup: &str, limit: &str, cmd: &str| {
                let unprivileged = if cmd == "virtual" { "n" } else { "-" };
                format!("{name:<20} {kind:<10} {private} {unprivileged} n {wakeup} {limit} {cmd}\n")
            };
        let mut master_cf = service(&format!("127.0.0.1:{port}"), "inet", "n", "-", "-", "smtpd");
        // SMTPS: TLS from the first byte.
        master_cf.push_str(&service(
            &format!("127.0.0.1:{smtps_port}"),
            "inet",
            "n",
            "-",
            "-",
            "smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt",
        ));
        for (name, kind, private, wakeup, limit, cmd) in [
            ("cleanup", "unix", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "300", "1", "qmgr"),
            ("tlsmgr", "unix", "-", "1000?", "1", "tlsmgr"),
            ("rewrite", "unix", "-", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "1", "verify"),
            ("flush", "unix", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "-", "proxymap"),
            ("showq", "unix", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "-", "error"),
            ("retry", "unix", "-", "-", "-", "error"),
            ("discard", "unix", "-", "-", "-", "discard"),
            ("virtual", "unix", "-", "-", "-", "virtual"),
            ("anvil", "unix", "-", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "1", "postlogd"),
        ] {
            master_cf.push_str(&service(name, kind, private, wakeup, limit, cmd));
        }
        let conf = dir.join("etc");
        fs::write(conf.join("main.cf"), main_cf).unwrap();
        fs::write(conf.join("master.cf"), master_cf).unwrap();

        let mut postfix = Postfix {
            dir,
            conf,
            port,
            smtps_port,
            fingerprint,
            running: false,
            _tmp: tmp,
        };
        let check = postfix.command(binary, "check")?;
        if check.contains("fatal") {
            return Err(format!("postfix check: {check}"));
        }
        postfix.command(binary, "start")?;
        postfix.running = true;
        postfix.wait_ready()?;
        Ok(postfix)
    }

    fn command(&self, binary: &Path, verb: &str) -> Result<String, String> {
        let out = Command::new(binary)
            .arg("-c")
            .arg(&self.conf)
            .arg(verb)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running postfix {verb}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!(
                "postfix {verb} failed: {text}\nlog:\n{}",
                self.log()
            ));
        }
        Ok(text)
    }

    /// Waits until smtpd greets on the port.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if [self.port, self.smtps_port]
                .iter()
                .all(|&port| TcpStream::connect(("127.0.0.1", port)).is_ok())
            {
                return Ok(());
            }
            if self.log().contains("Address already in use") {
                return Err(format!("port clash:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postfix did not listen on {} within {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The SMTPS port (TLS from the first byte, same certificate).
    pub fn smtps_port(&self) -> u16 {
        self.smtps_port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `sha256:AA:BB:…` of the STARTTLS certificate, for `fingerprint`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The address of a virtual mailbox, e.g. `alice@example.test`.
    pub fn address(user: &str) -> String {
        format!("{user}@{DOMAIN}")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(user)
    }

    /// The files in `user`'s Maildir (`new/` and `cur/`), sorted by name
    /// (Postfix names start with the delivery time).
    pub fn message_paths(&self, user: &str) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .flat_map(|sub| {
                fs::read_dir(self.maildir(user).join(sub))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .map(|e| e.path())
            .collect();
        paths.sort();
        paths
    }

    pub fn message_count(&self, user: &str) -> usize {
        self.message_paths(user).len()
    }

    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        self.message_paths(user)
            .iter()
            .map(|p| fs::read(p).unwrap())
            .collect()
    }

    /// Waits until `user` has `count` messages (Postfix delivers after it
    /// queued, so an SMTP 250 comes before the file), panicking with the
    /// log after `timeout`.
    pub fn wait_for_messages(&self, user: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.message_count(user);
            if have >= count {
                assert_eq!(have, count, "more messages than expected for {user}");
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{user} has {have} of {count} messages after {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops Postfix (`postfix abort`: no grace needed) and waits until its
    /// master process is gone.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid_file = self.dir.join("queue/pid/master.pid");
        let pid: Option<u32> = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if let Some(binary) = find_binary("postfix") {
            let _ = self.command(&binary, "abort");
        }
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (uid, gid) of a user, from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// A self-signed ECDSA certificate for localhost/127.0.0.1 in `dir`;
/// returns its SHA-256 fingerprint in mailfetch's `fingerprint` syntax.
fn make_cert(dir: &Path) -> Result<String, String> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-nodes",
            "-days",
            "30",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
    )?;
    let fingerprint = fingerprint(dir, "cert.pem")?;
    fs::set_permissions(dir.join("key.pem"), fs::Permissions::from_mode(0o600)).unwrap();
    Ok(fingerprint)
}
