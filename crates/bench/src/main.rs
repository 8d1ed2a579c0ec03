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

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use testkit::dovecot::{self, Dovecot};
use testkit::find_binary;
use testkit::postfix::Postfix;
use testkit::run::find_mailfetch;

/// The Postfix mailbox the `smtp` scenario forwards to.
const SMTP_USER: &str = "alice";

const PASSWORD: &str = "bench-password";
const MIB: f64 = 1024.0 * 1024.0;

struct Opts {
    scenarios: Vec<Scenario>,
    /// The many-account scenarios (`accounts`, `idle`).
    fleet: Vec<Fleet>,
    accounts: usize,
    account_messages: usize,
    idle_seconds: u64,
    messages: usize,
    runs: usize,
    big_mib: usize,
    idle_messages: usize,
    idle_runs: usize,
    only: Vec<String>,
}

/// Scenarios with many accounts, one Dovecot user each.
#[derive(Clone, Copy, PartialEq)]
enum Fleet {
    /// One one-shot poll of N accounts × M small messages, POP3 delete mode.
    Accounts,
    /// The daemon with one IDLE connection per account, idle: CPU and RSS.
    Idle,
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Mixed,
    Big,
    ImapMixed,
    ImapIdlePoll,
    ImapBig,
    Smtp,
}

/// What a scenario's mailfetch median should stay under.
#[derive(Clone, Copy)]
enum Target {
    Wall(f64),
    RssMib(f64),
}

impl Scenario {
    const POP3: [Scenario; 2] = [Scenario::Mixed, Scenario::Big];
    const IMAP: [Scenario; 3] = [
        Scenario::ImapMixed,
        Scenario::ImapIdlePoll,
        Scenario::ImapBig,
    ];

    const ALL: [Scenario; 6] = [
        Scenario::Mixed,
        Scenario::Big,
        Scenario::ImapMixed,
        Scenario::ImapIdlePoll,
        Scenario::ImapBig,
        Scenario::Smtp,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Smtp => "smtp",
            Scenario::Mixed => "mixed",
            Scenario::Big => "big",
            Scenario::ImapMixed => "imap-mixed",
            Scenario::ImapIdlePoll => "imap-idle-poll",
            Scenario::ImapBig => "imap-big",
        }
    }

    /// IMAP in keep mode, else POP3 in delete mode.
    fn imap(self) -> bool {
        Scenario::IMAP.contains(&self)
    }

    /// The Dovecot user whose INBOX the scenario uses: each IMAP scenario
    /// has its own, so it never sees another's mail or index.
    fn user(self) -> &'static str {
        match self {
            Scenario::Mixed | Scenario::Big => "bench",
            Scenario::Smtp => "bench-smtp",
            Scenario::ImapMixed => "bench-imap-mixed",
            Scenario::ImapIdlePoll => "bench-imap-idle",
            Scenario::ImapBig => "bench-imap-big",
        }
    }

    fn target(self) -> Option<Target> {
        match self {
            Scenario::ImapMixed => Some(Target::Wall(0.6)),
            Scenario::ImapIdlePoll => Some(Target::Wall(0.040)),
            Scenario::ImapBig => Some(Target::RssMib(16.0)),
            Scenario::Mixed | Scenario::Big | Scenario::Smtp => None,
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--scenario mixed|big|imap-mixed|imap-idle-poll|imap-big|smtp|accounts|idle|pop3|imap|all]\n             \
         [--messages N] [--runs R] [--big-mib M] [--idle-messages N] [--idle-runs R]\n             \
         [--accounts N] [--account-messages M] [--idle-seconds S]\n             \
         [--only mailfetch|mpop|fetchmail]..."
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        scenarios: Scenario::ALL.to_vec(),
        fleet: vec![Fleet::Accounts, Fleet::Idle],
        accounts: 50,
        account_messages: 40,
        idle_seconds: 30,
        messages: 2000,
        runs: 3,
        big_mib: 100,
        idle_messages: 5000,
        idle_runs: 5,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage())
        };
        match key.as_str() {
            "--scenario" => {
                let v = value();
                o.fleet = match v.as_str() {
                    "accounts" => vec![Fleet::Accounts],
                    "idle" => vec![Fleet::Idle],
                    "all" => vec![Fleet::Accounts, Fleet::Idle],
                    _ => Vec::new(),
                };
                o.scenarios = match v.as_str() {
                    "pop3" => Scenario::POP3.to_vec(),
                    "imap" => Scenario::IMAP.to_vec(),
                    "all" => Scenario::ALL.to_vec(),
                    name => Scenario::ALL
                        .into_iter()
                        .filter(|s| s.name() == name)
                        .collect(),
                };
                if o.scenarios.is_empty() && o.fleet.is_empty() {
                    usage();
                }
            }
            "--messages" => o.messages = value().parse().unwrap_or_else(|_| usage()),
            "--runs" => o.runs = value().parse().unwrap_or_else(|_| usage()),
            "--big-mib" => o.big_mib = value().parse().unwrap_or_else(|_| usage()),
            "--idle-messages" => o.idle_messages = value().parse().unwrap_or_else(|_| usage()),
            "--idle-runs" => o.idle_runs = value().parse().unwrap_or_else(|_| usage()),
            "--only" => o.only.push(value()),
            "--accounts" => o.accounts = value().parse().unwrap_or_else(|_| usage()),
            "--account-messages" => {
                o.account_messages = value().parse().unwrap_or_else(|_| usage())
            }
            "--idle-seconds" => o.idle_seconds = value().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if o.messages == 0 || o.runs == 0 || o.big_mib == 0 || o.idle_messages == 0 || o.idle_runs == 0
    {
        usage();
    }
    o
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--measure-child") {
        return measure_child();
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
            Tool::Mpop(_) => !scenario.imap() && scenario != Scenario::Smtp,
            Tool::Fetchmail(_) => !scenario.imap() || scenario == Scenario::ImapMixed,
        }
    }
}

struct Measurement {
    wall: Duration,
    max_rss_kib: i64,
}

struct Row {
    scenario: Scenario,
    tool: &'static str,
    messages: usize,
    bytes: usize,
    runs: Vec<Measurement>,
}

impl Row {
    fn median_wall(&self) -> f64 {
        let mut walls: Vec<f64> = self.runs.iter().map(|m| m.wall.as_secs_f64()).collect();
        walls.sort_by(f64::total_cmp);
        walls[walls.len() / 2]
    }

    fn median_rss_mib(&self) -> f64 {
        let mut rss: Vec<i64> = self.runs.iter().map(|m| m.max_rss_kib).collect();
        rss.sort();
        rss[rss.len() / 2] as f64 / 1024.0
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

    let mut rows = Vec::new();
    for &scenario in &opts.scenarios {
        if scenario == Scenario::Smtp && mta.is_none() {
            continue;
        }
        let scenario_tools: Vec<&Tool> = tools.iter().filter(|t| t.runs_in(scenario)).collect();
        if scenario_tools.is_empty() {
            continue;
        }
        let t = Instant::now();
        let messages = match scenario {
            Scenario::Mixed | Scenario::ImapMixed | Scenario::Smtp => mixed_messages(opts.messages),
            Scenario::Big | Scenario::ImapBig => vec![big_message(opts.big_mib * 1024 * 1024)],
            Scenario::ImapIdlePoll => small_messages(opts.idle_messages),
        };
        let bytes: usize = messages.iter().map(|m| m.data.len()).sum();
        println!(
            "\n== scenario {}: {} message(s), {:.1} MiB (largest {:.1} MiB), generated in {:.1} s",
            scenario.name(),
            messages.len(),
            bytes as f64 / MIB,
            messages.iter().map(|m| m.data.len()).max().unwrap_or(0) as f64 / MIB,
            t.elapsed().as_secs_f64()
        );
        let user = scenario.user();
        server.add_user(user, PASSWORD);

        // IMAP: seed once, and let mailfetch poll once, untimed, so that
        // Dovecot has indexed the mailbox. For imap-idle-poll, that poll's
        // Maildir and state are the ones every timed run starts from.
        let first_dir = work.path().join(format!("{}-first", scenario.name()));
        if scenario.imap() {
            let t = Instant::now();
            seed(&server, user, &messages)?;
            let seeded = t.elapsed();
            let m = fetch(&server, &mailfetch, scenario, &first_dir, 0, None)?;
            verify(&server, &mailfetch, scenario, &messages, &first_dir, None)?;
            println!(
                "  seeded in {:.1} s; first poll (untimed; Dovecot indexes the fresh Maildir): \
                 {:.3} s",
                seeded.as_secs_f64(),
                m.wall.as_secs_f64()
            );
            if scenario != Scenario::ImapIdlePoll {
                let _ = fs::remove_dir_all(&first_dir);
            }
        }

        for &tool in &scenario_tools {
            let mut runs = Vec::new();
            let n = if scenario == Scenario::ImapIdlePoll {
                opts.idle_runs
            } else {
                opts.runs
            };
            for i in 1..=n {
                let m = if scenario == Scenario::ImapIdlePoll {
                    // Nothing new: exit code 1, and the Maildir unchanged.
                    let m = fetch(&server, tool, scenario, &first_dir, 1, None)?;
                    verify(&server, tool, scenario, &messages, &first_dir, None)?;
                    m
                } else {
                    let run_dir =
                        work.path()
                            .join(format!("{}-{}-{i}", scenario.name(), tool.name()));
                    if !scenario.imap() {
                        seed(&server, user, &messages)?;
                    }
                    let mta = mta.as_ref().filter(|_| scenario == Scenario::Smtp);
                    let m = fetch(&server, tool, scenario, &run_dir, 0, mta)?;
                    verify(&server, tool, scenario, &messages, &run_dir, mta)?;
                    if let Some(mta) = mta {
                        clear_maildir(&mta.maildir(SMTP_USER));
                    }
                    let _ = fs::remove_dir_all(&run_dir);
                    m
                };
                let secs = m.wall.as_secs_f64();
                let rates = if scenario == Scenario::ImapIdlePoll {
                    String::new()
                } else {
                    format!(
                        "  {:>8.1} msg/s  {:>7.1} MiB/s",
                        messages.len() as f64 / secs,
                        bytes as f64 / MIB / secs
                    )
                };
                println!(
                    "  {:<10} run {i}: {secs:>8.3} s{rates}  max RSS {:>7.1} MiB",
                    tool.name(),
                    m.max_rss_kib as f64 / 1024.0
                );
                runs.push(m);
            }
            rows.push(Row {
                scenario,
                tool: tool.name(),
                messages: messages.len(),
                bytes,
                runs,
            });
        }
        if scenario.imap() {
            // Free the disk space; the scenario's user is not used again.
            let _ = fs::remove_dir_all(&first_dir);
            let _ = fs::remove_dir_all(server.maildir(user));
        }
    }

    if !rows.is_empty() {
        print_table(&rows);
    }
    drop(mta);
    if opts.fleet.contains(&Fleet::Accounts) {
        bench_accounts(opts, &server, &tools, work.path())?;
    }
    if opts.fleet.contains(&Fleet::Idle) {
        let Tool::Mailfetch(bin) = &mailfetch else {
            unreachable!()
        };
        bench_idle(opts, &server, bin, work.path())?;
    }
    drop(server);
    Ok(())
}

fn fleet_user(i: usize) -> String {
    format!("bench-acct-{i:03}")
}

/// `accounts`: N accounts × M small messages, POP3 delete mode, one poll of
/// them all by each tool (mailfetch: one one-shot run polling up to
/// max_connections accounts at once; mpop and fetchmail poll one after
/// another, which is all they can do).
fn bench_accounts(
    opts: &Opts,
    server: &Dovecot,
    tools: &[Tool],
    work: &Path,
) -> Result<(), String> {
    let messages = small_messages(opts.account_messages);
    let bytes: usize = messages.iter().map(|m| m.data.len()).sum::<usize>() * opts.accounts;
    println!(
        "\n== scenario accounts: {} accounts × {} messages ({:.1} MiB in all), POP3 delete mode, one poll",
        opts.accounts,
        messages.len(),
        bytes as f64 / MIB
    );
    for i in 0..opts.accounts {
        server.add_user(&fleet_user(i), PASSWORD);
    }
    let mut results = Vec::new();
    for tool in tools {
        let mut runs = Vec::new();
        for run in 1..=opts.runs {
            let run_dir = work.join(format!("accounts-{}-{run}", tool.name()));
            fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
            let mut maildirs = Vec::new();
            for i in 0..opts.accounts {
                seed(server, &fleet_user(i), &messages)?;
                let maildir = run_dir.join(format!("Maildir-{i:03}"));
                for sub in ["new", "cur", "tmp"] {
                    fs::create_dir_all(maildir.join(sub)).map_err(|e| e.to_string())?;
                }
                maildirs.push(maildir);
            }
            let cmd = fleet_command(tool, opts.accounts, &run_dir, &maildirs, server)?;
            let m = measure(server, tool.name(), &cmd, &run_dir, 0)?;
            for (i, maildir) in maildirs.iter().enumerate() {
                let user = fleet_user(i);
                let left = server.message_count(&user);
                let got = fs::read_dir(maildir.join("new"))
                    .map_err(|e| e.to_string())?
                    .count();
                if left != 0 || got != messages.len() {
                    return Err(format!(
                        "{}: account {i}: {got} delivered, {left} left on the server",
                        tool.name()
                    ));
                }
            }
            println!(
                "  {:<10} run {run}: {:>8.3} s  {:>8.1} msg/s  max RSS {:>7.1} MiB",
                tool.name(),
                m.wall.as_secs_f64(),
                (opts.accounts * messages.len()) as f64 / m.wall.as_secs_f64(),
                m.max_rss_kib as f64 / 1024.0
            );
            let _ = fs::remove_dir_all(&run_dir);
            runs.push(m);
        }
        runs.sort_by_key(|m| m.wall);
        let median = &runs[runs.len() / 2];
        results.push((tool.name(), median.wall, median.max_rss_kib));
    }
    println!("\n== results: accounts (median of {} runs)", opts.runs);
    for (name, wall, rss) in &results {
        println!(
            "  {name:<10} {:>8.3} s  max RSS {:>6.1} MiB",
            wall.as_secs_f64(),
            *rss as f64 / 1024.0
        );
    }
    if let Some((_, wall, _)) = results.iter().find(|(name, ..)| *name == "mailfetch") {
        let ok = wall.as_secs_f64() < 1.0;
        println!(
            "  target: mailfetch under 1 s: {} ({:.3} s)",
            if ok { "MET" } else { "MISSED" },
            wall.as_secs_f64()
        );
    }
    Ok(())
}

/// One configuration with every account of the fleet, for `tool`.
fn fleet_command(
    tool: &Tool,
    accounts: usize,
    run_dir: &Path,
    maildirs: &[PathBuf],
    server: &Dovecot,
) -> Result<Command, String> {
    let port = server.pop3_port();
    Ok(match tool {
        Tool::Mailfetch(bin) => {
            let mut text = format!(
                "[general]\nstate_dir = \"{}\"\n{}",
                run_dir.join("state").display(),
                std::env::var("BENCH_GENERAL")
                    .unwrap_or_default()
                    .replace(';', "\n")
            );
            for (i, maildir) in maildirs.iter().enumerate().take(accounts) {
                text.push_str(&format!(
                    "\n[[account]]\nname = \"a{i:03}\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\n\
                     port = {port}\ntls = \"none\"\nauth = \"user\"\nusername = \"{}\"\n\
                     password = \"{PASSWORD}\"\ndeliver = \"maildir:{}\"\n",
                    fleet_user(i),
                    maildir.display()
                ));
            }
            let conf = run_dir.join("fetchrc");
            write_private(&conf, &text)?;
            let mut c = Command::new(bin);
            c.arg("-q").arg("-c").arg(&conf);
            c
        }
        Tool::Mpop(bin) => {
            let mut text = String::from("defaults\n");
            for (i, maildir) in maildirs.iter().enumerate().take(accounts) {
                text.push_str(&format!(
                    "\naccount a{i:03}\nhost 127.0.0.1\nport {port}\ntls off\nauth user\n\
                     user {}\npassword {PASSWORD}\nkeep off\nonly_new on\nuidls_file {}\n\
                     delivery maildir {}\n",
                    fleet_user(i),
                    run_dir.join(format!("mpop-uidls-{i:03}")).display(),
                    maildir.display()
                ));
            }
            let conf = run_dir.join("mpoprc");
            write_private(&conf, &text)?;
            let mut c = Command::new(bin);
            c.arg("-q").arg("-C").arg(&conf).arg("--all-accounts");
            c
        }
        Tool::Fetchmail(bin) => {
            let mut text = String::from("set no bouncemail\nset no syslog\n");
            for (i, maildir) in maildirs.iter().enumerate().take(accounts) {
                // Each poll entry needs its own name: fetchmail merges
                // entries for the same host.
                text.push_str(&format!(
                    "poll a{i:03} via 127.0.0.1 service {port} protocol pop3 auth password\n  \
                     user \"{}\" password \"{PASSWORD}\" fetchall nokeep sslproto ''\n  \
                     mda \"cat > {}/new/fm.$$\"\n",
                    fleet_user(i),
                    maildir.display()
                ));
            }
            let conf = run_dir.join("fetchmailrc");
            write_private(&conf, &text)?;
            let mut c = Command::new(bin);
            c.env("FETCHMAILHOME", run_dir)
                .arg("-N")
                .arg("-s")
                .arg("--nosyslog")
                .arg("-f")
                .arg(&conf)
                .arg("--pidfile")
                .arg(run_dir.join("fetchmail.pid"))
                .arg("--idfile")
                .arg(run_dir.join("fetchids"));
            c
        }
    })
}

/// `idle`: `mailfetch --daemon` with one IDLE connection per account; once
/// every connection idles, the CPU time it uses over `idle_seconds` and its
/// RSS; then how fast one new message arrives, and how fast it stops.
fn bench_idle(opts: &Opts, server: &Dovecot, bin: &Path, work: &Path) -> Result<(), String> {
    println!(
        "\n== scenario idle: mailfetch --daemon, {} IMAP accounts with idle = true, idle for {} s",
        opts.accounts, opts.idle_seconds
    );
    let run_dir = work.join("idle");
    fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let maildir = run_dir.join("Maildir");
    let mut text = format!(
        "[general]\nstate_dir = \"{}\"\n",
        run_dir.join("state").display()
    );
    for i in 0..opts.accounts {
        server.add_user(&fleet_user(i), PASSWORD);
        text.push_str(&format!(
            "\n[[account]]\nname = \"a{i:03}\"\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\n\
             port = {}\ntls = \"none\"\nauth = \"user\"\nusername = \"{}\"\n\
             password = \"{PASSWORD}\"\nkeep = true\nidle = true\ndeliver = \"maildir:{}\"\n",
            server.imap_port(),
            fleet_user(i),
            maildir.display()
        ));
    }
    let conf = run_dir.join("fetchrc");
    write_private(&conf, &text)?;
    let log = run_dir.join("daemon.log");
    let mut child = Command::new(bin)
        .arg("--daemon")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("starting mailfetch --daemon: {e}"))?;
    let pid = child.id();
    let result = (|| {
        let started = Instant::now();
        // Every account's first poll logs a summary; IDLE follows at once.
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.lines().filter(|l| l.contains(" new, ")).count() >= opts.accounts {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!("the daemon did not poll every account:\n{text}"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the daemon exited ({status}):\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let ready = started.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let (cpu0, _) = proc_cpu_and_rss(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(opts.idle_seconds));
        let (cpu1, rss_kib) = proc_cpu_and_rss(pid)?;
        let wall = t0.elapsed();
        let hwm_kib = proc_status_kib(pid, "VmHWM:")?;
        let cpu = cpu1 - cpu0;
        println!(
            "  {} accounts polled and idling after {:.2} s",
            opts.accounts,
            ready.as_secs_f64()
        );
        println!(
            "  idle {:.1} s: CPU time {:.3} s ({:.3} % of one core); RSS {:.1} MiB (peak {:.1} MiB)",
            wall.as_secs_f64(),
            cpu,
            100.0 * cpu / wall.as_secs_f64(),
            rss_kib as f64 / 1024.0,
            hwm_kib as f64 / 1024.0
        );
        // One new message, in the last account's INBOX.
        let t = Instant::now();
        server.save(
            &fleet_user(opts.accounts - 1),
            "INBOX",
            &small_messages(1)[0].data,
        );
        while fs::read_dir(maildir.join("new")).map_or(0, |d| d.count()) < 1 {
            if t.elapsed() > Duration::from_secs(30) {
                return Err("the new message was not delivered within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        println!(
            "  a new message was delivered {:.3} s after `doveadm save` started",
            t.elapsed().as_secs_f64()
        );
        let ok = cpu / wall.as_secs_f64() < 0.01 && (hwm_kib as f64 / 1024.0) < 30.0;
        println!(
            "  target: ~0 % CPU and under 30 MiB RSS: {}",
            if ok { "MET" } else { "MISSED" }
        );
        Ok(())
    })();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let t = Instant::now();
    let status = child.wait().map_err(|e| e.to_string())?;
    println!(
        "  SIGTERM: exited with {status} after {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&run_dir);
    result
}

/// (user + system CPU seconds, RSS KiB) of a process, from /proc.
fn proc_cpu_and_rss(pid: u32) -> Result<(f64, i64), String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state is field 0, utime 11, stime 12.
    let ticks: f64 = fields[11].parse::<f64>().map_err(|e| e.to_string())?
        + fields[12].parse::<f64>().map_err(|e| e.to_string())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks / hz, proc_status_kib(pid, "VmRSS:")?))
}

fn proc_status_kib(pid: u32, key: &str) -> Result<i64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
}

/// Puts the messages into the user's empty INBOX (straight into
/// `Maildir/new`).
fn seed(server: &Dovecot, user: &str, messages: &[Message]) -> Result<(), String> {
    if server.message_count(user) != 0 {
        return Err(format!(
            "the server mailbox of {user} is not empty before seeding"
        ));
    }
    for m in messages {
        server.add_message(user, &m.data);
    }
    Ok(())
}

/// Runs the tool once (timed) on the scenario's mailbox, delivering into
/// `run_dir/Maildir` with its state in `run_dir` (both created if missing,
/// kept if present), and checks that it exits with `expect`.
fn fetch(
    server: &Dovecot,
    tool: &Tool,
    scenario: Scenario,
    run_dir: &Path,
    expect: i32,
    mta: Option<&Postfix>,
) -> Result<Measurement, String> {
    fs::create_dir_all(run_dir).map_err(|e| e.to_string())?;
    let maildir = run_dir.join("Maildir");
    for sub in ["new", "cur", "tmp"] {
        fs::create_dir_all(maildir.join(sub)).map_err(|e| e.to_string())?;
    }
    let user = scenario.user();
    let (protocol, port, keep) = if scenario.imap() {
        ("imap", server.imap_port(), true)
    } else {
        ("pop3", server.pop3_port(), false)
    };
    let deliver = match mta {
        Some(mta) => format!(
            "deliver = \"smtp://127.0.0.1:{}\"\nto = [\"{}\"]\n",
            mta.port(),
            Postfix::address(SMTP_USER)
        ),
        None => format!("deliver = \"maildir:{}\"\n", maildir.display()),
    };
    let cmd = match tool {
        Tool::Mailfetch(bin) => {
            let conf = run_dir.join("fetchrc");
            write_private(
                &conf,
                &format!(
                    "[general]\nstate_dir = \"{}\"\n\n[[account]]\nname = \"bench\"\n\
                     protocol = \"{protocol}\"\nhost = \"127.0.0.1\"\nport = {port}\n\
                     tls = \"none\"\nauth = \"user\"\nusername = \"{user}\"\n\
                     password = \"{PASSWORD}\"\nkeep = {keep}\n{deliver}",
                    run_dir.join("state").display(),
                ),
            )?;
            let mut c = Command::new(bin);
            c.arg("-q").arg("-c").arg(&conf);
            c
        }
        Tool::Mpop(bin) => {
            if scenario.imap() {
                return Err("mpop speaks only POP3".into());
            }
            let conf = run_dir.join("mpoprc");
            write_private(
                &conf,
                &format!(
                    "defaults\n\naccount bench\nhost 127.0.0.1\nport {port}\ntls off\n\
                     auth user\nuser {user}\npassword {PASSWORD}\nkeep off\nonly_new on\n\
                     uidls_file {}\ndelivery maildir {}\n",
                    run_dir.join("mpop-uidls").display(),
                    maildir.display()
                ),
            )?;
            let mut c = Command::new(bin);
            c.arg("-q").arg("-C").arg(&conf).arg("bench");
            c
        }
        Tool::Fetchmail(bin) => {
            // fetchmail cannot write a Maildir itself; it hands each message
            // to an MDA through sh. This is the cheapest one possible (no
            // tmp/ → new/ rename, no fsync). `fetchall` makes it fetch
            // every message, seen or not.
            // With an MTA: fetchmail's own SMTP forwarding, one session
            // per poll, to the same Postfix mailbox.
            let delivery = match mta {
                Some(mta) => format!(
                    "smtphost \"127.0.0.1/{}\" smtpname \"{}\"",
                    mta.port(),
                    Postfix::address(SMTP_USER)
                ),
                None => format!("mda \"cat > {}/new/fm.$$\"", maildir.display()),
            };
            let conf = run_dir.join("fetchmailrc");
            write_private(
                &conf,
                &format!(
                    "set no bouncemail\nset no syslog\n\
                     poll 127.0.0.1 service {port} protocol {protocol} auth password\n  \
                     user \"{user}\" password \"{PASSWORD}\" fetchall {} sslproto ''\n  \
                     {delivery}\n",
                    if keep { "keep" } else { "nokeep" },
                ),
            )?;
            let mut c = Command::new(bin);
            c.env("FETCHMAILHOME", run_dir)
                .arg("-N")
                .arg("-s")
                .arg("--nosyslog")
                .arg("-f")
                .arg(&conf)
                .arg("--pidfile")
                .arg(run_dir.join("fetchmail.pid"))
                .arg("--idfile")
                .arg(run_dir.join("fetchids"));
            c
        }
    };
    measure(server, tool.name(), &cmd, run_dir, expect)
}

/// Runs `cmd` once, timed, with its max RSS, and checks that it exits with
/// `expect`.
fn measure(
    server: &Dovecot,
    name: &str,
    cmd: &Command,
    run_dir: &Path,
    expect: i32,
) -> Result<Measurement, String> {
    // ru_maxrss survives exec, so a child forked from this (big) process
    // would report at least our own RSS. A fresh, small copy of this program
    // (`--measure-child`) spawns the tool and reports the tool's own peak.
    let rss_file = run_dir.join("maxrss");
    let _ = fs::remove_file(&rss_file);
    let mut wrapper = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    wrapper
        .arg("--measure-child")
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    wrapper
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let start = Instant::now();
    let mut child = wrapper
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))?;
    // Drain output in threads so a chatty tool never blocks on a pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let (status, _) = wait4(child.id())?;
    let wall = start.elapsed();
    let max_rss_kib = fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("the --measure-child wrapper reported no max RSS")?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out_t.join().unwrap_or_default()),
        String::from_utf8_lossy(&err_t.join().unwrap_or_default())
    );

    if status.code() != Some(expect) {
        return Err(format!(
            "{name} failed ({status}, expected exit code {expect}):\n{output}\nDovecot log tail:\n{}",
            tail(&server.log(), 20)
        ));
    }
    Ok(Measurement { wall, max_rss_kib })
}

/// Waits for the child with wait4(2): exit status and the child's maximum
/// RSS in KiB (Linux: the max over it and the descendants it waited for;
/// a child forked from a big process starts with that process's RSS).
fn wait4(pid: u32) -> Result<(ExitStatus, i64), String> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value; pointers are to locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: plain syscall on our own child's pid.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {e}"));
        }
    }
    Ok((ExitStatus::from_raw(status), usage.ru_maxrss))
}

/// What `--measure-child` reports for `true`, the floor: the median over a
/// few runs of its max RSS (KiB) and of the wall time of the whole wrapper.
fn wrapper_floor() -> (i64, Duration) {
    let file = std::env::temp_dir().join(format!("mailfetch-bench-rss-{}", std::process::id()));
    let Ok(exe) = std::env::current_exe() else {
        return (0, Duration::ZERO);
    };
    let mut rss = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let ok = Command::new(&exe)
            .arg("--measure-child")
            .arg(&file)
            .arg("true")
            .status()
            .is_ok_and(|s| s.success());
        walls.push(start.elapsed());
        let kib = fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|_| ok)
            .unwrap_or(0);
        rss.push(kib);
    }
    let _ = fs::remove_file(&file);
    rss.sort();
    walls.sort();
    (rss[rss.len() / 2], walls[walls.len() / 2])
}

/// `bench --measure-child RSS_FILE PROGRAM ARGS...`: runs PROGRAM with our
/// stdio, writes its max RSS (KiB) to RSS_FILE, exits with its status.
fn measure_child() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    if args.len() < 2 {
        eprintln!("usage: bench --measure-child RSS_FILE PROGRAM [ARGS...]");
        return ExitCode::from(125);
    }
    let child = match Command::new(&args[1]).args(&args[2..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot run {:?}: {e}", args[1]);
            return ExitCode::from(127);
        }
    };
    let (status, max_rss_kib) = match wait4(child.id()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(125);
        }
    };
    if let Err(e) = fs::write(&args[0], format!("{max_rss_kib}\n")) {
        eprintln!("writing {:?}: {e}", args[0]);
        return ExitCode::from(125);
    }
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(sig)) => ExitCode::from(128 + sig as u8),
        _ => ExitCode::from(125),
    }
}

/// Every message in `run_dir/Maildir` exactly once; on the server, none left
/// after a POP3 (delete-mode) poll, every one still there and none flagged
/// \Deleted after an IMAP (keep-mode) poll.
fn verify(
    server: &Dovecot,
    tool: &Tool,
    scenario: Scenario,
    messages: &[Message],
    run_dir: &Path,
    mta: Option<&Postfix>,
) -> Result<(), String> {
    let on_server = server.message_paths(scenario.user());
    if !scenario.imap() && !on_server.is_empty() {
        return Err(format!(
            "{}: {} message(s) still on the server after a delete-mode poll",
            tool.name(),
            on_server.len()
        ));
    }
    if scenario.imap() {
        if on_server.len() != messages.len() {
            return Err(format!(
                "{}: {} message(s) on the server after a keep-mode poll, expected {}",
                tool.name(),
                on_server.len(),
                messages.len()
            ));
        }
        // Maildir flags: "...:2,FLAGS", T = \Deleted.
        if let Some(p) = on_server.iter().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once(":2,"))
                .is_some_and(|(_, flags)| flags.contains('T'))
        }) {
            return Err(format!(
                "{}: message flagged \\Deleted on the server after a keep-mode poll: {}",
                tool.name(),
                p.display()
            ));
        }
    }

    let maildir = match mta {
        Some(mta) => {
            // The MTA's 250 means queued; delivery follows.
            let maildir = mta.maildir(SMTP_USER);
            let deadline = Instant::now() + Duration::from_secs(300);
            while count_files(&maildir) < messages.len() {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{}: Postfix delivered {} of {} messages in 300 s; log tail:\n{}",
                        tool.name(),
                        count_files(&maildir),
                        messages.len(),
                        tail(&mta.log(), 20)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            maildir
        }
        None => run_dir.join("Maildir"),
    };
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        for e in fs::read_dir(maildir.join(sub))
            .map_err(|e| e.to_string())?
            .flatten()
        {
            files.push(e.path());
        }
    }
    if files.len() != messages.len() {
        return Err(format!(
            "{}: {} message(s) in the Maildir, expected {}",
            tool.name(),
            files.len(),
            messages.len()
        ));
    }
    let want: HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    let mut seen = HashSet::new();
    let mut delivered_bytes = 0u64;
    for f in &files {
        delivered_bytes += fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let mut head = vec![0u8; 16 * 1024];
        let n = fs::File::open(f)
            .and_then(|mut h| h.read(&mut head))
            .map_err(|e| e.to_string())?;
        let head = String::from_utf8_lossy(&head[..n]);
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .map(|s| s.trim_end_matches('\r').to_string())
            .ok_or_else(|| format!("{}: no Message-ID in {}", tool.name(), f.display()))?;
        if !want.contains(id.as_str()) || !seen.insert(id.clone()) {
            return Err(format!(
                "{}: unexpected or duplicate message {id} in {}",
                tool.name(),
                f.display()
            ));
        }
    }
    let seeded: usize = messages.iter().map(|m| m.data.len()).sum();
    if delivered_bytes < seeded as u64 {
        return Err(format!(
            "{}: delivered {delivered_bytes} bytes, less than the {seeded} seeded",
            tool.name()
        ));
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!("\n== results (median of each tool's runs; MiB = message files on the server, LF)");
    println!(
        "{:<14} {:<10} {:>6} {:>9} {:>10} {:>10} {:>9} {:>12}  all runs (s)",
        "scenario", "tool", "msgs", "MiB", "wall (s)", "msg/s", "MiB/s", "max RSS MiB"
    );
    for r in rows {
        let all = r
            .runs
            .iter()
            .map(|m| format!("{:.3}", m.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ");
        let median = r.median_wall();
        // An idle poll transfers no message: no rates.
        let (msg_s, mib_s) = if r.scenario == Scenario::ImapIdlePoll {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.1}", r.messages as f64 / median),
                format!("{:.1}", r.bytes as f64 / MIB / median),
            )
        };
        println!(
            "{:<14} {:<10} {:>6} {:>9.1} {:>10.3} {:>10} {:>9} {:>12.1}  {all}",
            r.scenario.name(),
            r.tool,
            r.messages,
            r.bytes as f64 / MIB,
            median,
            msg_s,
            mib_s,
            r.median_rss_mib()
        );
    }

    let targets: Vec<(&Row, Target)> = rows
        .iter()
        .filter(|r| r.tool == "mailfetch")
        .filter_map(|r| Some((r, r.scenario.target()?)))
        .collect();
    if !targets.is_empty() {
        println!("\n== targets (mailfetch medians)");
        for (r, target) in targets {
            let (what, value, limit, unit) = match target {
                Target::Wall(s) => ("wall", r.median_wall(), s, "s"),
                Target::RssMib(m) => ("max RSS", r.median_rss_mib(), m, "MiB"),
            };
            println!(
                "{:<14} {what:<8} {value:>8.3} {unit:<3} target < {limit} {unit}: {}",
                r.scenario.name(),
                if value < limit { "met" } else { "MISSED" }
            );
        }
    }

    let smtp = |tool: &str| {
        rows.iter()
            .find(|r| r.scenario == Scenario::Smtp && r.tool == tool)
            .map(Row::median_wall)
    };
    if let (Some(ours), Some(theirs)) = (smtp("mailfetch"), smtp("fetchmail")) {
        let speedup = theirs / ours;
        println!(
            "\n== smtp: mailfetch {ours:.3} s, fetchmail {theirs:.3} s: {speedup:.1}x faster \
             (target >= 5x: {})",
            if speedup >= 5.0 { "met" } else { "MISSED" }
        );
    }

    let (floor_rss, floor_wall) = wrapper_floor();
    println!(
        "\nmax RSS is measured through a small wrapper and cannot read below its \
         {:.1} MiB;\nstarting the wrapper and `true` through it takes {:.1} ms \
         (included in every wall time).",
        floor_rss as f64 / 1024.0,
        floor_wall.as_secs_f64() * 1000.0
    );
    println!(
        "mailfetch fsyncs every message (batched) and its state; mpop writes \
         its Maildir;\nfetchmail pipes each message through `sh -c 'cat > FILE'` \
         (it has no Maildir\ndelivery of its own), without fsync. In the smtp scenario both \
         forward over SMTP\nto the same Postfix, which fsyncs its queue file before each 250."
    );
}

// ---------------------------------------------------------------------------
// Message generation

struct Message {
    id: String,
    data: Vec<u8>,
}

/// SplitMix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Log-uniform in [lo, hi).
    fn log_range(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}

const NAMES: &[&str] = &[
    "Alice Martin",
    "Bob Schmidt",
    "Chen Wei",
    "Dana Kowalski",
    "Emeka Obi",
    "Fatima Haddad",
    "Gustavo Lima",
    "Hana Sato",
    "Ivan Petrov",
    "Julia Rossi",
    "Kofi Mensah",
    "Laura Nilsson",
    "Mateo Garcia",
    "Nora Berg",
    "Omar Khalil",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "mail.example.de",
    "lists.example.io",
];
const SUBJECTS: &[&str] = &[
    "Re: meeting notes",
    "Quarterly figures",
    "Fwd: travel booking",
    "Build failed on main",
    "Invitation: design review",
    "Your order has shipped",
    "Re: Re: contract draft",
    "Weekly newsletter",
    "Photos",
    "Question about the API",
    "[list] Release 2.4 announcement",
    "Lunch?",
    "Password reset requested",
    "Re: bug in the parser",
    "Minutes of the board meeting",
];
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "this", "are", "at", "from", "have", "or", "report", "meeting", "please",
    "attached", "review", "thanks", "tomorrow", "server", "release", "draft", "numbers",
    "schedule", "budget", "regards",
];
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn headers(rng: &mut Rng, n: usize, boundary: Option<&str>) -> (String, String) {
    let from = rng.pick(NAMES);
    let from_addr = format!(
        "{}@{}",
        from.split(' ').next().unwrap().to_ascii_lowercase(),
        rng.pick(DOMAINS)
    );
    let id = format!("<bench.{n}.{:016x}@{}>", rng.next(), rng.pick(DOMAINS));
    let day = 1 + rng.below(28);
    let (h, m, s) = (rng.below(24), rng.below(60), rng.below(60));
    let ctype = match boundary {
        Some(b) => format!("multipart/mixed; boundary=\"{b}\""),
        None => "text/plain; charset=utf-8; format=flowed".to_string(),
    };
    let text = format!(
        "Return-Path: <{from_addr}>\n\
         Delivered-To: bench@example.com\n\
         Received: from mx{mx}.example.net (mx{mx}.example.net [192.0.2.{ip}])\n\
         \tby mail.example.com (Postfix) with ESMTPS id {qid:X}\n\
         \tfor <bench@example.com>; Mon, {day} Mar 2026 {h:02}:{m:02}:{s:02} +0000 (UTC)\n\
         From: {from} <{from_addr}>\n\
         To: Bench User <bench@example.com>\n\
         Subject: {subject}\n\
         Date: Mon, {day} Mar 2026 {h:02}:{m:02}:{s:02} +0000\n\
         Message-ID: {id}\n\
         MIME-Version: 1.0\n\
         Content-Type: {ctype}\n\
         X-Bench-Seq: {n}\n",
        mx = rng.below(9) + 1,
        ip = rng.below(250) + 1,
        qid = rng.next() & 0xFF_FFFF_FFFF,
        subject = rng.pick(SUBJECTS),
    );
    (id, text)
}

/// Plain text of about `len` bytes, wrapped at ~72 columns.
fn text_body(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    let mut col = 0;
    while out.len() - start < len {
        let w = rng.pick(WORDS);
        if col + w.len() + 1 > 72 {
            out.push(b'\n');
            col = 0;
            // Now and then a blank line, and a line starting with a dot
            // (which POP3 has to dot-stuff).
            match rng.below(12) {
                0 => out.push(b'\n'),
                1 => {
                    out.extend_from_slice(b".");
                    col = 1;
                }
                _ => {}
            }
        } else if col > 0 {
            out.push(b' ');
            col += 1;
        }
        out.extend_from_slice(w.as_bytes());
        col += w.len();
    }
    out.push(b'\n');
}

/// Random base64 of about `len` bytes in 76-column lines.
fn base64_body(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    out.reserve(len + len / 76 + 2);
    let mut remaining = len;
    while remaining > 0 {
        let line = remaining.min(76);
        let mut i = 0;
        while i < line {
            let mut r = rng.next();
            for _ in 0..10.min(line - i) {
                out.push(B64[(r & 63) as usize]);
                r >>= 6;
                i += 1;
            }
        }
        out.push(b'\n');
        remaining -= line;
    }
}

fn message(rng: &mut Rng, n: usize, size: usize) -> Message {
    let mut data = Vec::with_capacity(size + 4096);
    if size < 24 * 1024 {
        let (id, h) = headers(rng, n, None);
        data.extend_from_slice(h.as_bytes());
        data.push(b'\n');
        let body = size.saturating_sub(data.len()).max(64);
        text_body(rng, body, &mut data);
        return Message { id, data };
    }
    let boundary = format!("=_bench_{:012x}", rng.next() & 0xFFFF_FFFF_FFFF);
    let (id, h) = headers(rng, n, Some(&boundary));
    data.extend_from_slice(h.as_bytes());
    data.extend_from_slice(b"\nThis is a multi-part message in MIME format.\n\n");
    data.extend_from_slice(
        format!("--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n").as_bytes(),
    );
    let text = 1000 + rng.below(3000) as usize;
    text_body(rng, text, &mut data);
    let ext = ["pdf", "jpg", "zip", "docx", "png"][rng.below(5) as usize];
    data.extend_from_slice(
        format!(
            "\n--{boundary}\nContent-Type: application/octet-stream; name=\"file{n}.{ext}\"\n\
             Content-Disposition: attachment; filename=\"file{n}.{ext}\"\n\
             Content-Transfer-Encoding: base64\n\n"
        )
        .as_bytes(),
    );
    let tail = format!("\n--{boundary}--\n");
    let b64 = size.saturating_sub(data.len() + tail.len()).max(76);
    // Lines are 77 bytes with their LF.
    base64_body(rng, b64 * 76 / 77, &mut data);
    data.extend_from_slice(tail.as_bytes());
    Message { id, data }
}

/// `n` messages totalling ~63 MiB × n/2000: 90 % of 2–20 KiB, 9.5 % of
/// 50–500 KiB, 0.5 % of 1–3 MiB, then scaled to hit the total.
fn mixed_messages(n: usize) -> Vec<Message> {
    let mut rng = Rng(0x6D61_696C_6665_7463); // "mailfetc"
    let kib = 1024.0;
    let mut sizes: Vec<f64> = (0..n)
        .map(|_| {
            let p = rng.unit();
            if p < 0.90 {
                rng.range(2.0 * kib, 20.0 * kib)
            } else if p < 0.995 {
                rng.log_range(50.0 * kib, 500.0 * kib)
            } else {
                rng.range(1024.0 * kib, 3072.0 * kib)
            }
        })
        .collect();
    let target = 63.0 * MIB * n as f64 / 2000.0;
    let sum: f64 = sizes.iter().sum();
    for s in &mut sizes {
        *s = (*s * target / sum).max(1024.0);
    }
    sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| message(&mut rng, i, s as usize))
        .collect()
}

fn big_message(size: usize) -> Message {
    let mut rng = Rng(0x6269_676D_6573_7367); // "bigmessg"
    message(&mut rng, 0, size)
}

/// `n` text messages of 2–4 KiB.
fn small_messages(n: usize) -> Vec<Message> {
    let mut rng = Rng(0x736D_616C_6C6D_7367); // "smallmsg"
    (0..n)
        .map(|i| {
            let size = rng.range(2048.0, 4096.0) as usize;
            message(&mut rng, i, size)
        })
        .collect()
}

// ---------------------------------------------------------------------------

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
