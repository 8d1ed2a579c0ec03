//! The `mailfetch` command.

use std::path::PathBuf;
use std::process::ExitCode;

use mailfetch::config::{self, Config};
use mailfetch::error::{Error, Kind};
use mailfetch::lock::StateLock;
use mailfetch::{oauth, pipeline, scheduler};
use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

const HELP: &str = "\
mailfetch - fetch mail from POP3 and IMAP servers, never losing a message

Delivers into a Maildir, to an MTA (SMTP, LMTP), to an MDA command or into
another IMAP server (deliver = \"maildir:…\", \"smtp://…\", \"lmtp:…\",
\"mda:…\", \"imap://…\"). A message leaves the server only once its
destination has durably taken it.

USAGE:
    mailfetch [OPTIONS]
    mailfetch --daemon [OPTIONS]
    mailfetch [-c FILE] login ACCOUNT

Polls every configured account once (or only those named with --account;
for IMAP, each configured folder), up to max_connections at a time,
delivers new mail, and exits. With --daemon, keeps polling (and, for
accounts with idle = true, waiting for mail with IMAP IDLE) until stopped.

`mailfetch login ACCOUNT` signs in an account that uses OAuth2 (an
[account.oauth] table) once: it prints a URL (and a code to enter there,
or opens a listener on 127.0.0.1 for the browser to come back to), waits
for you to sign in, and stores the tokens under state_dir; from then on
mailfetch refreshes them itself. Accounts with flow = \"client_credentials\"
need no login (this then only checks that a token can be had).

OPTIONS:
    -c, --config FILE    configuration file
                         [default: $XDG_CONFIG_HOME/mailfetch/fetchrc,
                          else ~/.config/mailfetch/fetchrc]
        --account NAME   poll only this account (repeatable)
        --check-config   validate the configuration, print it with secrets
                         masked, and exit
        --daemon         run until stopped: poll every account at its
                         interval (poll_interval, interval), IDLE where
                         idle = true; logs to stderr, for journald
        --log-format F   text (default) or json (one JSON object per line)
    -v, --verbose        log protocol traces (passwords and AUTH payloads
                         masked); -vv also logs the TLS library's details
    -q, --quiet          log only errors
    -h, --help           print this help
    -V, --version        print the version

EXIT CODES (as fetchmail's):
    0   mail was delivered (with several accounts or folders: by any one
        whose poll completed)
    1   no new mail
    2   connection error with the server mail is fetched from (including
        TLS and certificate failures)
    3   authentication failed (at the source, or at the IMAP or SMTP
        server mail is delivered to)
    4   protocol error
    5   configuration error
    6   a file mailfetch trusts is unsafe: the configuration or a password
        file readable by others, or the configuration (or its directory), a
        password file or the state directory writable by others or owned
        by another user
    7   server error or timeout
    8   another mailfetch holds the lock on the state directory
    10  delivery failed: the destination refused a message (it stays on
        the server unless on_reject says otherwise), or could not be
        reached or written to
    23  mailfetch itself could not work: its state or lock file could not
        be read or written, or a poll crashed
    A poll that delivered some mail and then failed counts as failed. With
    several accounts or folders and none of them succeeding with mail, the
    highest code wins.

DAEMON SIGNALS:
    SIGTERM, SIGINT  stop: finish or abandon the message in progress (never
                     delivering part of one, never deleting one that is not
                     safely delivered), and exit 0 within 10 s
    SIGHUP           reload the configuration; if the new one is invalid,
                     log why and keep running the old one
    SIGUSR1          poll every account now
    In daemon mode the exit code is 0 after a signal, 5 or 6 for a bad
    configuration at start-up and 8 if another mailfetch holds the lock.

See fetchrc.example for every configuration key.
";

struct Args {
    config: Option<PathBuf>,
    /// `login ACCOUNT`: sign in that account instead of polling.
    login: Option<String>,
    accounts: Vec<String>,
    check_config: bool,
    daemon: bool,
    json: bool,
    verbosity: Verbosity,
}

#[derive(Clone, Copy)]
enum Verbosity {
    Quiet,
    Normal,
    Verbose,
    Debug,
}

impl Verbosity {
    /// Our own traces at `-v`; other crates' (rustls) only at `-vv`.
    fn filter(self) -> EnvFilter {
        EnvFilter::new(match self {
            Verbosity::Quiet => "error",
            Verbosity::Normal => "warn,mailfetch=info",
            Verbosity::Verbose => "warn,mailfetch=debug",
            Verbosity::Debug => "debug",
        })
    }
}

enum Parsed {
    Run(Args),
    Exit(&'static str),
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut parsed = Args {
        config: None,
        login: None,
        accounts: Vec::new(),
        check_config: false,
        daemon: false,
        json: false,
        verbosity: Verbosity::Normal,
    };
    while let Some(arg) = args.next() {
        // Accept --option=value as well as --option value.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "-c" | "--config" => parsed.config = Some(PathBuf::from(value(&name)?)),
            "--account" => parsed.accounts.push(value(&name)?),
            "--check-config" => parsed.check_config = true,
            "login" => parsed.login = Some(value("login")?),
            "--daemon" => parsed.daemon = true,
            "--log-format" => {
                parsed.json = match value(&name)?.as_str() {
                    "text" => false,
                    "json" => true,
                    other => {
                        return Err(format!("--log-format must be text or json, not {other:?}"));
                    }
                }
            }
            "-v" | "--verbose" => {
                parsed.verbosity = match parsed.verbosity {
                    Verbosity::Verbose | Verbosity::Debug => Verbosity::Debug,
                    _ => Verbosity::Verbose,
                }
            }
            "-vv" => parsed.verbosity = Verbosity::Debug,
            "-q" | "--quiet" => parsed.verbosity = Verbosity::Quiet,
            "-h" | "--help" => return Ok(Parsed::Exit(HELP)),
            "-V" | "--version" => {
                return Ok(Parsed::Exit(concat!(
                    "mailfetch ",
                    env!("CARGO_PKG_VERSION"),
                    "\n"
                )));
            }
            other => return Err(format!("unknown option {other:?} (see mailfetch --help)")),
        }
    }
    Ok(Parsed::Run(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Exit(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("mailfetch: {message}");
            return ExitCode::from(Kind::Config.exit_code() as u8);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(args.verbosity.filter())
        .with_target(false);
    if args.json {
        // Log shippers want the time; journald adds its own to text lines.
        // Each line carries the spans of the poll it belongs to, with
        // their fields (account, folder), under "spans".
        logs.json()
            .with_current_span(false)
            .with_span_list(true)
            .init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal())
            .without_time()
            .init();
    }
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::from(err.kind.exit_code() as u8)
        }
    }
}

fn run(args: &Args) -> Result<u8, Error> {
    let path = match &args.config {
        Some(path) => path.clone(),
        None => config::default_path().ok_or_else(|| {
            Error::new(
                Kind::Config,
                "cannot find the configuration: no --config and no home directory",
            )
        })?,
    };
    let config = config::load(&path)?;
    if args.check_config {
        print!("{config}");
        return Ok(0);
    }
    if let Some(name) = &args.login {
        let config = select_accounts(config, std::slice::from_ref(name))?;
        return runtime()?
            .block_on(oauth::login::login_account(
                &config.accounts[0],
                &mut std::io::stdout(),
            ))
            .map(|()| 0);
    }
    let config = select_accounts(config, &args.accounts)?;
    let _lock = StateLock::acquire(&config.general.state_dir)?;
    let runtime = runtime()?;
    if args.daemon {
        let reload = || config::load(&path).and_then(|new| select_accounts(new, &args.accounts));
        let result = runtime.block_on(scheduler::run_daemon(config, reload));
        // Work abandoned at the deadline (a commit on a blocking thread) is
        // not waited for: the commit protocol is safe against that.
        runtime.shutdown_timeout(Duration::from_millis(500));
        return result.map(|()| 0);
    }
    let reports = runtime.block_on(async {
        let polls = scheduler::poll_all(&config);
        tokio::pin!(polls);
        tokio::select! {
            reports = &mut polls => reports,
            () = shutdown_signal() => {
                tracing::warn!("stopping: finishing the messages in progress");
                pipeline::stop_retrieving();
                tokio::time::timeout(scheduler::SHUTDOWN_GRACE, polls)
                    .await
                    .unwrap_or_default()
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    if pipeline::is_stopping() && reports.is_empty() {
        return Err(Error::new(
            Kind::Server,
            "stopped by a signal; polls still busy were abandoned (nothing incomplete delivered, nothing undelivered deleted)",
        ));
    }
    Ok(exit_code(&reports))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::new(Kind::Local, format!("cannot start the runtime: {err}")))
}

/// SIGTERM or SIGINT; never if the handlers cannot be installed.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut interrupt)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn select_accounts(mut config: Config, names: &[String]) -> Result<Config, Error> {
    if names.is_empty() {
        return Ok(config);
    }
    for name in names {
        if !config.accounts.iter().any(|account| &account.name == name) {
            let known: Vec<&str> = config.accounts.iter().map(|a| a.name.as_str()).collect();
            return Err(Error::new(
                Kind::Config,
                format!(
                    "no account named {name:?} in {} (accounts: {})",
                    config.path.display(),
                    known.join(", ")
                ),
            ));
        }
    }
    config
        .accounts
        .retain(|account| names.contains(&account.name));
    Ok(config)
}

/// 0 if any mailbox (an account, or an IMAP folder) delivered mail without
/// failing, else the highest failure code, else 1 (no new mail).
fn exit_code(reports: &[pipeline::Report]) -> u8 {
    if reports
        .iter()
        .any(|report| report.delivered > 0 && report.failure().is_none())
    {
        return 0;
    }
    reports
        .iter()
        .filter_map(|report| report.failure())
        .map(|kind| kind.exit_code() as u8)
        .max()
        .unwrap_or(1)
}
