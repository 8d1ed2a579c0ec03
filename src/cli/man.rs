//! The manual pages, generated from what they describe: mailfetch(1) from
//! the clap definition in `cli.rs` (the same that `--help` shows), and
//! mailfetch.toml(5) from the key table [`crate::config::keys::KEYS`].
//!
//! `doc/` holds both as `mailfetch man` prints them, for packages; a test
//! fails when they fall out of date.

use std::io::{self, Write};

use clap::{Arg, CommandFactory};
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use super::{Cli, EXIT_CODES, EXIT_CODES_NOTE, ManSection, SIGNALS, SIGNALS_NOTE};
use crate::config::Protocol;
use crate::config::keys::{self, AppliesTo, Destination, Section};

/// Writes the page of `section`, as roff.
pub fn write_page(section: ManSection, out: &mut dyn Write) -> io::Result<()> {
    match section {
        ManSection::Command => write_command_page(out),
        ManSection::Config => write_config_page(out),
    }
}

/// The file name of the page of `section`, as packages install it.
pub fn file_name(section: ManSection) -> &'static str {
    match section {
        ManSection::Command => "mailfetch.1",
        ManSection::Config => "mailfetch.toml.5",
    }
}

fn title(name: &str, section: &str) -> Vec<String> {
    vec![
        name.to_owned(),
        section.to_owned(),
        String::new(),
        format!("mailfetch {}", env!("CARGO_PKG_VERSION")),
        "mailfetch manual".to_owned(),
    ]
}

fn write_command_page(out: &mut dyn Write) -> io::Result<()> {
    let command = Cli::command();
    let man = Man::new(command.clone());
    let mut roff = Roff::new();
    roff.control("TH", title("mailfetch", "1").iter().map(String::as_str));
    roff.to_writer(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        roff.control("TP", []);
        let mut usage = vec![bold(format!("mailfetch {}", sub.get_name()))];
        for arg in visible_args(sub) {
            usage.push(roman(" "));
            usage.extend(arg_synopsis(arg));
        }
        roff.text(usage);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            paragraphs(&mut roff, &about.to_string(), "IP");
        }
        let args: Vec<&Arg> = visible_args(sub)
            .filter(|arg| arg.get_help().is_some())
            .collect();
        if !args.is_empty() {
            roff.control("RS", []);
            for arg in args {
                roff.control("TP", []);
                roff.text(arg_synopsis(arg));
                let help = arg.get_long_help().or_else(|| arg.get_help());
                paragraphs(
                    &mut roff,
                    &help.map(|h| h.to_string()).unwrap_or_default(),
                    "IP",
                );
                values(&mut roff, arg);
            }
            roff.control("RE", []);
        }
    }

    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(*meaning)]);
    }
    roff.control("PP", []);
    roff.text([roman(EXIT_CODES_NOTE)]);

    roff.control("SH", ["SIGNALS"]);
    roff.text([roman("In daemon mode:")]);
    for (signal, meaning) in SIGNALS {
        roff.control("TP", []);
        roff.text([bold(*signal)]);
        roff.text([roman(*meaning)]);
    }
    roff.control("PP", []);
    roff.text([roman(SIGNALS_NOTE)]);

    roff.control("SH", ["FILES"]);
    roff.control("TP", []);
    roff.text([italic("$XDG_CONFIG_HOME/mailfetch/fetchrc")]);
    roff.text([roman(
        "The configuration (else ~/.config/mailfetch/fetchrc); see mailfetch.toml(5).",
    )]);
    roff.control("TP", []);
    roff.text([italic("$XDG_STATE_HOME/mailfetch/")]);
    roff.text([roman(
        "What has been fetched, and the lock (else ~/.local/state/mailfetch/; state_dir).",
    )]);
    see_also(&mut roff, "mailfetch.toml(5)");
    roff.to_writer(out)
}

fn write_config_page(out: &mut dyn Write) -> io::Result<()> {
    let mut roff = Roff::new();
    roff.control(
        "TH",
        title("mailfetch.toml", "5").iter().map(String::as_str),
    );
    roff.control("SH", ["NAME"]);
    roff.text([roman(
        "mailfetch.toml - the configuration file of mailfetch(1)",
    )]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([
        italic("$XDG_CONFIG_HOME/mailfetch/fetchrc"),
        roman(", else "),
        italic("~/.config/mailfetch/fetchrc"),
        roman(", or the file given with "),
        bold("-c"),
        roman("."),
    ]);
    roff.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut roff, DESCRIPTION, "PP");
    for (section, heading, intro) in [
        (
            Section::General,
            "[general]",
            "Settings for every account. The section is optional.",
        ),
        (
            Section::Account,
            "[[account]]",
            "One section per mailbox to fetch from.",
        ),
        (
            Section::Delivery,
            "[account.delivery]",
            "How an account reaches the server or program its deliver target names.",
        ),
        (
            Section::OAuth,
            "[account.oauth], [account.delivery.oauth]",
            "OAuth2 in place of a password, for the account's server or its delivery \
             server: run mailfetch login ACCOUNT once; mailfetch then keeps the tokens \
             fresh by itself.",
        ),
    ] {
        roff.control("SH", [heading]);
        roff.text([roman(intro)]);
        for key in keys::in_section(section) {
            roff.control("TP", []);
            roff.text([bold(key.name)]);
            roff.text([roman(key.doc)]);
            if let Some(restriction) = restriction(key.applies_to) {
                roff.text([roman(restriction)]);
            }
        }
    }
    roff.control("SH", ["EXAMPLE"]);
    roff.control("nf", []);
    for line in EXAMPLE.lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
    see_also(&mut roff, "mailfetch(1)");
    roff.to_writer(out)
}

const DESCRIPTION: &str = "\
The file is TOML. Unknown keys are errors (with a suggestion for a likely \
typo), so a misspelled key never silently falls back to a default; \
mailfetch --check-config checks a file and prints it with defaults filled in \
and secrets masked.

Paths (state_dir, ca_file, password_file and the path in deliver) are \
expanded: a leading ~ is the home directory, $VAR and ${VAR} are environment \
variables (an unset variable is an error), and $$ is a literal $. A relative \
path is used relative to the current directory, not to the file.

If the file contains a password, it must be private (chmod 600); whatever it \
holds, it and its directory must belong to the user or root and be writable \
by nobody else, because it says which commands mailfetch runs.

Each key below is listed with what it does; fetchrc.example, installed \
with mailfetch, documents each one at length with its default.";

const EXAMPLE: &str = "\
[[account]]
name = \"home\"
protocol = \"imap\"
host = \"imap.example.org\"
username = \"alice\"
password_command = \"pass show mail/home\"
keep = true
deliver = \"maildir:~/Mail/home\"";

/// A key's restriction, in words; `None` when it applies everywhere.
fn restriction(applies_to: AppliesTo) -> Option<String> {
    match applies_to {
        AppliesTo::All => None,
        AppliesTo::Protocols(protocols) => {
            let names: Vec<&str> = protocols
                .iter()
                .map(|protocol| match protocol {
                    Protocol::Pop3 => "POP3",
                    Protocol::Imap => "IMAP",
                })
                .collect();
            Some(format!("Only for {} accounts.", names.join(" and ")))
        }
        AppliesTo::Destinations(destinations) => {
            let names: Vec<&str> = destinations
                .iter()
                .map(|destination| match destination {
                    Destination::Maildir => "maildir:",
                    Destination::Mbox => "mbox:",
                    Destination::Smtp => "smtp://",
                    Destination::Lmtp => "lmtp:",
                    Destination::Mda => "mda:",
                    Destination::Imap => "imap://",
                })
                .collect();
            Some(format!("Only with deliver = {}.", names.join(", ")))
        }
    }
}

fn visible_args(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !arg.is_global_set())
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
}

/// `--json`, `[SECTION]`, `<SHELL>`.
fn arg_synopsis(arg: &Arg) -> Vec<clap_mangen::roff::Inline> {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    match arg.get_long() {
        Some(long) if arg.get_action().takes_values() => {
            vec![bold(format!("--{long}")), roman(" "), italic(value)]
        }
        Some(long) => vec![bold(format!("--{long}"))],
        None if arg.is_required_set() => vec![italic(value)],
        None => vec![roman("["), italic(value), roman("]")],
    }
}

/// The possible values of `arg`, with their help.
fn values(roff: &mut Roff, arg: &Arg) {
    let values = arg.get_possible_values();
    if values.is_empty() {
        return;
    }
    let names: Vec<String> = values
        .iter()
        .map(|value| match value.get_help() {
            Some(help) => format!("{} ({help})", value.get_name()),
            None => value.get_name().to_owned(),
        })
        .collect();
    roff.text([roman(format!("One of: {}.", names.join(", ")))]);
}

/// `text`'s paragraphs (separated by a blank line), each filled by man and
/// started by the macro `between` (`PP`, or `IP` to stay indented under a
/// `TP` item).
fn paragraphs(roff: &mut Roff, text: &str, between: &str) {
    for (i, paragraph) in text.split("\n\n").enumerate() {
        if i > 0 {
            roff.control(between, []);
        }
        roff.text([roman(paragraph.replace('\n', " "))]);
    }
}

fn see_also(roff: &mut Roff, page: &str) {
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(format!(
        "{page}, fetchrc.example (in /usr/share/doc/mailfetch/ when installed from the package), fetchmail(1)"
    ))]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(section: ManSection) -> String {
        let mut out = Vec::new();
        write_page(section, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// `doc/` is what packages install: regenerate it with
    /// `cargo run -- man 1 > doc/mailfetch.1; cargo run -- man 5 > doc/mailfetch.toml.5`.
    #[test]
    fn the_committed_pages_are_up_to_date() {
        for section in [ManSection::Command, ManSection::Config] {
            let path = format!("{}/doc/{}", env!("CARGO_MANIFEST_DIR"), file_name(section));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == page(section),
                "{path} is out of date: run `cargo run -- man {} > {path}`",
                match section {
                    ManSection::Command => 1,
                    ManSection::Config => 5,
                }
            );
        }
    }

    #[test]
    fn the_command_page_has_every_flag_and_command() {
        let text = page(ManSection::Command);
        for flag in Cli::command().get_arguments().filter_map(Arg::get_long) {
            assert!(
                text.contains(&format!("\\-\\-{}", flag.replace('-', "\\-"))),
                "--{flag}"
            );
        }
        for sub in Cli::command().get_subcommands() {
            assert!(
                text.contains(&format!("mailfetch {}", sub.get_name())),
                "{}",
                sub.get_name()
            );
        }
        for (code, _) in EXIT_CODES {
            assert!(
                text.contains(&format!(".TP\n\\fB{code}\\fR")),
                "exit code {code}"
            );
        }
    }

    #[test]
    fn the_config_page_has_every_key_of_the_table() {
        let text = page(ManSection::Config);
        for key in keys::KEYS.iter().filter(|key| key.section != Section::File) {
            let name = key.name;
            assert!(text.contains(&format!(".TP\n\\fB{name}\\fR")), "{name}");
        }
        assert!(text.contains("Only for IMAP accounts."));
        assert!(text.contains("Only with deliver = imap://."));
    }
}
