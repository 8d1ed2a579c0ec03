//! The `mailfetch` command.

use std::process::ExitCode;

use mailfetch::cli::{self, Cli, Command, ImportArgs, LogFormat, RcKind};
use mailfetch::config::{self, Config};
use mailfetch::error::{Error, Kind};
use mailfetch::import::{self, Peer};
use mailfetch::lock::StateLock;
use mailfetch::{pipeline, scheduler, status};
use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    cli::completions::answer();
    let args = match Cli::from_args() {
        Ok(args) => args,
        // --help and --version go to stdout and exit 0; bad usage is a
        // configuration error for scripts (exit 5).
        Err(err) if err.use_stderr() => {
            eprint!("{}", Cli::bad_usage(&err));
            return ExitCode::from(Kind::Config.exit_code() as u8);
        }
        Err(err) => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
    };
    match args.command {
        None => {}
        Some(Command::Completions { shell }) => {
            return print_with(|out| cli::completions::write_script(shell, out));
        }
        Some(Command::Man { section }) => {
            return print_with(|out| cli::man::write_page(section, out));
        }
        Some(Command::Import(ref import)) => return import_configuration(import),
        Some(Command::Status { .. }) => {}
    }
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::new(args.verbosity().directive()))
        .with_target(false);
    if args.log_format == LogFormat::Json {
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

/// Writes what `write` produces to stdout: exit 0, or 23 if stdout fails
/// (a closed pipe or a full disk must not look like success).
fn print_with(write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailfetch: cannot write to stdout: {err}");
            ExitCode::from(Kind::Local.exit_code() as u8)
        }
    }
}

/// `mailfetch import`: exits 0 when it wrote a config, notes or not.
fn import_configuration(args: &ImportArgs) -> ExitCode {
    let options = import::command::Options {
        peer: match args.kind {
            RcKind::Fetchmailrc => Peer::Fetchmail,
            RcKind::Getmailrc => Peer::Getmail,
            RcKind::Mpoprc => Peer::Mpop,
        },
        files: args.files.clone(),
        output: args.output.clone(),
        state: args.state,
    };
    match import::command::run(&options, &mut std::io::stdout(), &mut std::io::stderr()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailfetch: {err}");
            ExitCode::from(err.kind.exit_code() as u8)
        }
    }
}

fn run(args: &Cli) -> Result<u8, Error> {
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
    if let Some(Command::Status { json }) = args.command {
        return print_status(&config, json);
    }
    if args.check_config {
        print!("{config}");
        return Ok(0);
    }
    let config = select_accounts(config, &args.accounts)?;
    let _lock = StateLock::acquire(&config.general.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::new(Kind::Local, format!("cannot start the runtime: {err}")))?;
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

/// `mailfetch status`: 0, or 23 if stdout cannot be written.
fn print_status(config: &Config, json: bool) -> Result<u8, Error> {
    let lines = status::lines(config);
    let text = if json {
        serde_json::to_string_pretty(&lines).expect("status lines are plain data") + "\n"
    } else {
        lines.iter().map(|line| line.text() + "\n").collect()
    };
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())
        .map_err(|err| Error::new(Kind::Local, format!("cannot write to stdout: {err}")))?;
    Ok(0)
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
