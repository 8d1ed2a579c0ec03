//! mailfetch benchmark: times ONE poll against a private Dovecot on
//! loopback (plain TCP; POP3 USER/PASS, IMAP LOGIN), in these scenarios:
//!
//! * `mixed` (POP3, delete mode): 2000 messages of mixed sizes, ~63 MiB in
//!   all (mostly 2–20 KiB text, some 50–500 KiB with base64 attachments, a
//!   few 1–3 MiB), made by a deterministic PRNG;
//! * `big` (POP3, delete mode): one 100 MiB message;
//! * `imap-mixed` (IMAP, keep mode): the same 2000 messages;
//! * `imap-idle-poll` (IMAP, keep mode): a poll of a 5000-message INBOX
//!   that has nothing new (mailfetch exits with 1);
//! * `imap-big` (IMAP, keep mode): one 100 MiB message;
//! * `smtp` (POP3, delete mode): the 2000 mixed messages forwarded over
//!   SMTP to a private Postfix on loopback (see `crates/testkit/src/postfix.rs`;
//!   needs root), which delivers them to a Maildir. The time is the
//!   fetcher's, up to the MTA's last 250; the run then waits (untimed) for
//!   Postfix to deliver everything and checks that Maildir;
//! * `accounts` (POP3, delete mode): 50 accounts (Dovecot users) × 40
//!   small messages, one one-shot run of every tool (mailfetch polls up to
//!   max_connections = 8 accounts at once; mpop and fetchmail one after
//!   another);
//! * `idle`: `mailfetch --daemon` with 50 IMAP accounts with `idle = true`:
//!   once every connection idles, the CPU time used over 30 s and the RSS
//!   (current and peak, from /proc), then the delay of one new message and
//!   the time SIGTERM takes.
//!
//! POP3 runs re-seed the server mailbox (not timed), run the fetcher into an
//! empty Maildir with empty state, and then check that every message arrived
//! (by Message-ID) and that the server mailbox is empty.
//!
//! IMAP scenarios each use their own Dovecot user. The INBOX is seeded once,
//! then polled once by mailfetch, untimed: Dovecot assigns UIDs and builds
//! its index on the first access to a fresh Maildir, which a real server has
//! done long before (the time of that first poll is printed). For
//! `imap-mixed` and `imap-big`, each timed run then fetches everything into
//! an empty Maildir with empty state; for `imap-idle-poll`, each timed run
//! polls again with the Maildir and state of that first poll. Every run
//! checks the Maildir (every message exactly once) and that the server still
//! has every message, none flagged \Deleted.
//!
//! It reports the wall time of the fetcher process, messages/s, MiB/s (of
//! the message files as stored on the server, LF line endings) and the
//! fetcher's maximum RSS (from wait4, including any child it waited for,
//! e.g. fetchmail's MDA; measured through a small copy of this program,
//! since a process forked from this one would inherit our RSS as its peak).
//!
//! mpop (POP3 scenarios but `smtp`) and fetchmail (POP3 scenarios,
//! `imap-mixed` and `smtp`, where it forwards with `smtphost`), when
//! installed, are timed the same way.
//!
//! Usage: `bench [--scenario NAME] [--messages N] [--runs R] [--big-mib M]
//! [--idle-messages N] [--idle-runs R] [--only mailfetch|mpop|fetchmail]...`
//! [--accounts N] [--account-messages M] [--idle-seconds S]`
//! where NAME is one of the scenarios above, `pop3` (mixed, big), `imap`
//! (the three IMAP ones), `smtp`, `accounts`, `idle`, or `all` (the
//! default: every one).
//! Run it through `contrib/bench/run.sh`. `BENCH_GENERAL` adds
//! `;`-separated keys to mailfetch's `[general]` in `accounts`, e.g.
//! `BENCH_GENERAL="max_connections = 16"`.

mod accounts;
mod idle;
mod mail;
mod mailbox;
mod measure;
mod options;
mod report;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use testkit::dovecot::{self, Dovecot};
use testkit::find_binary;
use testkit::postfix::Postfix;
use testkit::run::find_mailfetch;

use options::{Fleet, Opts, Scenario, parse_args};

/// The Postfix mailbox the `smtp` scenario forwards to.
const SMTP_USER: &str = "alice";

const PASSWORD: &str = "bench-password";
const MIB: f64 = 1024.0 * 1024.0;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--measure-child") {
        return measure::measure_child();
    }
    let opts = parse_args();
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nBENCHMARK FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One fetcher under test.
#[derive(Clone)]
enum Tool {
    Mailfetch(PathBuf),
    Mpop(PathBuf),
    Fetchmail(PathBuf),
}

impl Tool {
    fn name(&self) -> &'static str {
        match self {
            Tool::Mailfetch(_) => "mailfetch",
            Tool::Mpop(_) => "mpop",
            Tool::Fetchmail(_) => "fetchmail",
        }
    }

    /// Whether the tool is timed in this scenario: mpop speaks only POP3,
    /// and fetchmail is compared on IMAP for `imap-mixed` only.
    fn runs_in(&self, scenario: Scenario) -> bool {
        match self {
            Tool::Mailfetch(_) => true,
            Tool::Mpop(_) => {
                !scenario.imap() && !matches!(scenario, Scenario::Smtp | Scenario::Mbox)
            }
            Tool::Fetchmail(_) => {
                (!scenario.imap() && scenario != Scenario::Mbox) || scenario == Scenario::ImapMixed
            }
        }
    }
}
fn run(opts: &Opts) -> Result<(), String> {
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let mailfetch = Tool::Mailfetch(find_mailfetch()?);
    let mut tools = vec![mailfetch.clone()];
    let wants = |s: Scenario| opts.scenarios.contains(&s);
    let fleet_accounts = opts.fleet.contains(&Fleet::Accounts);
    if Scenario::POP3.into_iter().any(wants) || fleet_accounts {
        match find_binary("mpop") {
            Some(p) => tools.push(Tool::Mpop(p)),
            None => println!("mpop not installed: no comparison with it (apt-get install mpop)"),
        }
    }
    if Scenario::POP3.into_iter().any(wants)
        || wants(Scenario::ImapMixed)
        || wants(Scenario::Smtp)
        || fleet_accounts
    {
        match find_binary("fetchmail") {
            Some(p) => tools.push(Tool::Fetchmail(p)),
            None => println!(
                "fetchmail not installed: no comparison with it (apt-get install fetchmail)"
            ),
        }
    }
    if !opts.only.is_empty() {
        tools.retain(|t| opts.only.iter().any(|o| o == t.name()));
        if tools.is_empty() {
            return Err("--only matched no installed tool".into());
        }
    }

    // Everything on the same filesystem as the current directory (not a
    // tmpfs /tmp): the server's Maildir and the fetchers' Maildirs.
    let work = tempfile::Builder::new()
        .prefix(".mailfetch-bench-")
        .tempdir_in(&cwd)
        .map_err(|e| format!("creating a temp dir in {}: {e}", cwd.display()))?;
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let Some(server) = Dovecot::start_in(work.path()) else {
        return Err(format!(
            "Dovecot is not installed: {}",
            dovecot::INSTALL_HINT
        ));
    };
    println!(
        "Private Dovecot on 127.0.0.1, POP3 port {}, IMAP port {} (plain TCP), working in {}",
        server.pop3_port(),
        server.imap_port(),
        work.path().display()
    );
    let mta = if wants(Scenario::Smtp) {
        let mta = Postfix::start_in(work.path());
        match &mta {
            Some(mta) => println!(
                "Private Postfix on 127.0.0.1, SMTP port {}, delivering to {}",
                mta.port(),
                mta.maildir(SMTP_USER).display()
            ),
            None => println!("no Postfix: the smtp scenario is skipped"),
        }
        mta
    } else {
        None
    };
    println!(
        "{} run(s) per tool and scenario ({} for imap-idle-poll); POP3 runs re-seed the \
         mailbox and time one delete-mode poll, IMAP runs time one keep-mode poll.",
        opts.runs, opts.idle_runs
    );

    mailbox::bench(opts, &server, mta.as_ref(), &tools, &mailfetch, work.path())?;
    drop(mta);
    if opts.fleet.contains(&Fleet::Accounts) {
        accounts::bench(opts, &server, &tools, work.path())?;
    }
    if opts.fleet.contains(&Fleet::Idle) {
        let Tool::Mailfetch(bin) = &mailfetch else {
            unreachable!()
        };
        idle::bench(opts, &server, bin, work.path())?;
    }
    drop(server);
    Ok(())
}

/// fetchmail in the foreground on `conf`, with its state files in
/// `run_dir` (not in the home directory).
fn fetchmail_command(bin: &Path, conf: &Path, run_dir: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("FETCHMAILHOME", run_dir)
        .arg("-N")
        .arg("-s")
        .arg("--nosyslog")
        .arg("-f")
        .arg(conf)
        .arg("--pidfile")
        .arg(run_dir.join("fetchmail.pid"))
        .arg("--idfile")
        .arg(run_dir.join("fetchids"));
    c
}

fn fleet_user(i: usize) -> String {
    format!("bench-acct-{i:03}")
}

/// Messages in a Maildir's `new/` and `cur/`.
fn count_files(maildir: &Path) -> usize {
    ["new", "cur"]
        .iter()
        .map(|sub| fs::read_dir(maildir.join(sub)).map_or(0, |d| d.count()))
        .sum()
}

/// Empties a Maildir's `new/` and `cur/` for the next run.
fn clear_maildir(maildir: &Path) {
    for sub in ["new", "cur"] {
        for entry in fs::read_dir(maildir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
