//! The command line, defined once with clap's derive: parsing, `--help`,
//! and (being plain data) anything else that must describe it.
//!
//! Every flag is a field of [`Cli`] and every subcommand a variant of
//! [`Command`]; a new subcommand is one variant there (its doc comment is
//! its help) and one arm in `main.rs`'s dispatch.

use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::ArgValueCandidates;

pub mod completions;
pub mod man;

/// What each exit code means, for `--help`, the man page and README.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (
        0,
        "mail was delivered (with several accounts or folders: by any one whose poll completed)",
    ),
    (1, "no new mail"),
    (
        2,
        "connection error with the server mail is fetched from (including TLS and certificate failures)",
    ),
    (
        3,
        "authentication failed (at the source, or at the IMAP or SMTP server mail is delivered to)",
    ),
    (4, "protocol error"),
    (5, "configuration error, or bad usage of the command line"),
    (
        6,
        "a file mailfetch trusts is unsafe: the configuration or a password file readable by others, or the configuration (or its directory), a password file or the state directory writable by others or owned by another user",
    ),
    (7, "server error or timeout"),
    (8, "another mailfetch holds the lock on the state directory"),
    (
        10,
        "delivery failed: the destination refused a message (it stays on the server unless on_reject says otherwise), or could not be reached or written to",
    ),
    (
        23,
        "mailfetch itself could not work: its state or lock file could not be read or written, or a poll crashed",
    ),
];

/// What follows the exit codes.
pub const EXIT_CODES_NOTE: &str = "A poll that delivered some mail and then failed counts as failed. \
With several accounts or folders and none of them succeeding with mail, the highest code wins.";

/// How the daemon answers signals.
pub const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGTERM, SIGINT",
        "stop: finish or abandon the message in progress (never delivering part of one, never deleting one that is not safely delivered), and exit 0 within 10 s",
    ),
    (
        "SIGHUP",
        "reload the configuration; if the new one is invalid, log why and keep running the old one",
    ),
    ("SIGUSR1", "poll every account now"),
];

/// What follows the signals.
pub const SIGNALS_NOTE: &str = "In daemon mode the exit code is 0 after a signal, 5 or 6 for a bad \
configuration at start-up and 8 if another mailfetch holds the lock.";

/// Shown after the options by `--help`: [`EXIT_CODES`] and [`SIGNALS`].
fn after_long_help() -> String {
    let mut text = String::from("Exit codes (as fetchmail's):\n");
    for (code, meaning) in EXIT_CODES {
        text += &format!("  {code:<3} {meaning}\n");
    }
    text += &format!("  {EXIT_CODES_NOTE}\n\nDaemon signals:\n");
    for (signal, meaning) in SIGNALS {
        text += &format!("  {signal}: {meaning}\n");
    }
    text += &format!(
        "  {SIGNALS_NOTE}\n\nSee mailfetch.toml(5) (mailfetch man 5) or fetchrc.example for every configuration key."
    );
    text
}

/// Fetch mail from POP3 and IMAP servers, never losing a message.
///
/// Delivers into a Maildir, to an MTA (SMTP, LMTP), to an MDA command or
/// into another IMAP server (deliver = "maildir:…", "smtp://…", "lmtp:…",
/// "mda:…", "imap://…"). A message leaves the server only once its
/// destination has durably taken it.
///
/// Without a command, polls every configured account once (or only those
/// named with --account; for IMAP, each configured folder), up to
/// max_connections at a time, delivers new mail, and exits. With --daemon,
/// keeps polling (and, for accounts with idle = true, waiting for mail with
/// IMAP IDLE) until stopped.
#[derive(Debug, Parser)]
#[command(
    name = "mailfetch",
    version,
    after_help = "See 'mailfetch --help' for the exit codes and the daemon's signals.",
    after_long_help = after_long_help(),
)]
pub struct Cli {
    /// Configuration file [default: $XDG_CONFIG_HOME/mailfetch/fetchrc,
    /// else ~/.config/mailfetch/fetchrc]
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Poll only this account (repeatable)
    #[arg(long = "account", value_name = "NAME", add = ArgValueCandidates::new(completions::account_names))]
    pub accounts: Vec<String>,

    /// Validate the configuration, print it with secrets masked, and exit
    #[arg(long)]
    pub check_config: bool,

    /// Run until stopped: poll every account at its interval
    /// (poll_interval, interval), IDLE where idle = true; logs to stderr,
    /// for journald
    #[arg(long)]
    pub daemon: bool,

    /// Log lines as text, or as one JSON object per line
    #[arg(
        long,
        value_name = "FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,

    /// Log protocol traces (passwords and AUTH payloads masked); -vv also
    /// logs the TLS library's details
    #[arg(short, long, action = ArgAction::Count, global = true, overrides_with = "quiet")]
    pub verbose: u8,

    /// Log only errors
    #[arg(short, long, global = true, overrides_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What mailfetch is asked to do, besides polling (no command).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show how the last poll of each account and folder went
    ///
    /// For each mailbox of the configuration: when it was last polled and
    /// how that ended (the exit code that poll alone would give, and its
    /// summary line), what it delivered, the last poll that succeeded, how
    /// many messages the state knows, and how many deliveries a crash left
    /// for recovery. Read from the status record each poll writes beside
    /// its state: no lock, no network, so it answers while a daemon runs.
    Status {
        /// Print a JSON array, one object per mailbox (account, folder,
        /// last_poll, last_success, exit_code, message, delivered, known,
        /// pending; times in RFC 3339, null when unknown)
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL
    ///
    /// It completes subcommands, flags, and account names from the
    /// configuration (the default one, or the file given with -c earlier
    /// on the line) by asking mailfetch itself. For bash:
    /// `mailfetch completions bash > ~/.local/share/bash-completion/completions/mailfetch`;
    /// zsh: a file `_mailfetch` in a directory of $fpath; fish:
    /// `~/.config/fish/completions/mailfetch.fish`.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print a manual page (roff) on stdout
    ///
    /// Section 1 is the command, section 5 the configuration file. Read one
    /// with `mailfetch man 5 | man -l -`.
    Man {
        #[arg(value_enum, default_value_t)]
        section: ManSection,
    },
    /// Translate a fetchmail, getmail6 or mpop configuration into
    /// mailfetch's, and with --state what that tool already fetched
    ///
    /// Writes the config to standard output, or to --output FILE. Every
    /// setting that does not carry over is listed on standard error with
    /// its file and line; the config is checked as --check-config would
    /// before it is written, and the command exits 0 when it wrote one.
    Import(ImportArgs),
}

/// The shells `mailfetch completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The manual pages `mailfetch man` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ManSection {
    /// mailfetch(1): the command
    #[default]
    #[value(name = "1")]
    Command,
    /// mailfetch.toml(5): the configuration file
    #[value(name = "5")]
    Config,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Whose configuration it is
    #[arg(value_enum)]
    pub kind: RcKind,

    /// The files to read [default: ~/.fetchmailrc (passwords it lacks are
    /// looked up in ~/.netrc); ~/.getmail/getmailrc, else
    /// ~/.config/getmail/getmailrc (one account per file); ~/.mpoprc, else
    /// ~/.config/mpop/config]
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Write the config to FILE (created with mode 0600, never
    /// overwritten) instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Also import what the old tool already fetched (fetchmail's
    /// .fetchids, getmail's oldmail-* files beside the rc file, mpop's UIDL
    /// files) into mailfetch's state directory, so that the first poll in
    /// keep mode fetches only new mail
    #[arg(long)]
    pub state: bool,
}

/// The configurations `mailfetch import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RcKind {
    /// fetchmail's .fetchmailrc
    Fetchmailrc,
    /// getmail6's rc files
    Getmailrc,
    /// mpop's configuration
    Mpoprc,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event (journald adds the time)
    #[default]
    Text,
    /// One JSON object per line, with the time and the poll's fields
    Json,
}

/// How much to log: `-q`, nothing, `-v`, `-vv`. Of `-q` and `-v`, the last
/// one given wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
    Debug,
}

impl Verbosity {
    /// The `tracing` filter directive: our own traces at `-v`, other
    /// crates' (rustls) only at `-vv`.
    pub fn directive(self) -> &'static str {
        match self {
            Verbosity::Quiet => "error",
            Verbosity::Normal => "warn,mailfetch=info",
            Verbosity::Verbose => "warn,mailfetch=debug",
            Verbosity::Debug => "debug",
        }
    }
}

impl Cli {
    /// Parses the process's arguments. The flags that only polling reads
    /// (`--account`, `--check-config`, `--daemon`) are refused with a
    /// command; the global ones (`-c`, `-v`, `-q`, `--log-format`) may
    /// stand before or after it.
    pub fn from_args() -> Result<Cli, clap::Error> {
        Cli::checked(Cli::try_parse()?)
    }

    fn checked(cli: Cli) -> Result<Cli, clap::Error> {
        if cli.command.is_none() {
            return Ok(cli);
        }
        let polling_flag = [
            (!cli.accounts.is_empty(), "--account"),
            (cli.check_config, "--check-config"),
            (cli.daemon, "--daemon"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag));
        match polling_flag {
            None => Ok(cli),
            Some(flag) => Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("{flag} is for polling and cannot be used with a command"),
            )),
        }
    }

    /// What bad usage prints (then mailfetch exits 5): one line with the
    /// reason and clap's hint, and the usage line of the command at fault.
    pub fn bad_usage(err: &clap::Error) -> String {
        let text = err.render().to_string();
        let reason: Vec<&str> = text
            .lines()
            .take_while(|line| !line.is_empty())
            .map(str::trim)
            .collect();
        let reason = reason.join(" ");
        let reason = reason.strip_prefix("error: ").unwrap_or(&reason);
        let usage = match text.lines().find(|line| line.starts_with("Usage: ")) {
            Some(line) => line.to_owned(),
            // Its first line: with subcommands, clap adds one per form.
            None => {
                let usage = Cli::command().render_usage().to_string();
                usage.lines().next().unwrap_or_default().to_owned()
            }
        };
        format!("mailfetch: {reason}\n{usage}\n")
    }

    pub fn verbosity(&self) -> Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Debug,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::checked(Cli::try_parse_from(
            std::iter::once("mailfetch").chain(args.iter().copied()),
        )?)
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_of_the_hand_written_parser_still_parses() {
        let cli = parse(&[
            "-c",
            "a.toml",
            "--account",
            "one",
            "--account=two",
            "--check-config",
            "--daemon",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("a.toml")));
        assert_eq!(cli.accounts, ["one", "two"]);
        assert!(cli.check_config && cli.daemon);
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(
            parse(&["--config=b"]).unwrap().config,
            Some(PathBuf::from("b"))
        );
        assert_eq!(parse(&["-cFILE"]).unwrap().config, Some("FILE".into()));
        assert_eq!(
            parse(&["--log-format=text"]).unwrap().log_format,
            LogFormat::Text
        );
        assert!(parse(&["--"]).is_ok());
        // The global flags stand before or after a command.
        for args in [
            &["-c", "f", "-q", "man", "5"][..],
            &["man", "5", "-c", "f", "-q"],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.config, Some(PathBuf::from("f")), "{args:?}");
            assert_eq!(cli.verbosity(), Verbosity::Quiet, "{args:?}");
            assert!(matches!(
                cli.command,
                Some(Command::Man {
                    section: ManSection::Config
                })
            ));
        }
        for (args, verbosity) in [
            (&[][..], Verbosity::Normal),
            (&["-v"], Verbosity::Verbose),
            (&["--verbose"], Verbosity::Verbose),
            (&["-vv"], Verbosity::Debug),
            (&["-v", "-v"], Verbosity::Debug),
            (&["-vvv"], Verbosity::Debug),
            (&["-q"], Verbosity::Quiet),
            (&["--quiet"], Verbosity::Quiet),
            (&["-qv"], Verbosity::Verbose),
            (&["-vq"], Verbosity::Quiet),
        ] {
            assert_eq!(parse(args).unwrap().verbosity(), verbosity, "{args:?}");
        }
        for (flag, kind) in [
            ("-h", ErrorKind::DisplayHelp),
            ("--help", ErrorKind::DisplayHelp),
            ("-V", ErrorKind::DisplayVersion),
            ("--version", ErrorKind::DisplayVersion),
        ] {
            assert_eq!(parse(&[flag]).unwrap_err().kind(), kind, "{flag}");
        }
    }

    #[test]
    fn import_takes_a_kind_files_and_options() {
        let cli = parse(&["import", "getmailrc", "a", "b", "--state", "-o", "out"]).unwrap();
        let Some(Command::Import(args)) = cli.command else {
            panic!("not import: {cli:?}")
        };
        assert_eq!(args.kind, RcKind::Getmailrc);
        assert_eq!(args.files, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(args.output, Some(PathBuf::from("out")));
        assert!(args.state);
        assert!(parse(&["import", "procmailrc"]).is_err());
    }

    #[test]
    fn bad_usage_is_refused() {
        for args in [
            &["--nope"][..],
            &["--log-format", "xml"],
            &["--config"],
            &["stray"],
            &["--daemon", "man"],
            &["man", "--account", "home"],
            &["man", "7"],
            &["completions", "tcsh"],
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.use_stderr(), "{args:?}: {err}");
            let message = Cli::bad_usage(&err);
            let lines: Vec<&str> = message.lines().collect();
            assert_eq!(lines.len(), 2, "{message}");
            assert!(lines[0].starts_with("mailfetch: "), "{message}");
            assert!(lines[1].starts_with("Usage: mailfetch "), "{message}");
        }
    }
}
