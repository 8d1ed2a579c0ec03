//! Shell completions, answered by mailfetch itself.
//!
//! The script `mailfetch completions SHELL` prints only registers a
//! function that runs `COMPLETE=SHELL mailfetch -- WORDS…`; [`answer`]
//! replies from the clap definition in `cli.rs`. So subcommands and flags
//! added there complete without touching any script, and account names
//! come from the configuration the line names (clap_complete's dynamic
//! engine; a static script could only list what was known when it was
//! generated).

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::CompletionCandidate;
use clap_complete::env::{Bash, CompleteEnv, EnvCompleter, Fish, Zsh};
use serde::Deserialize;

use super::{Cli, Shell};

/// The environment variable through which the shell asks for completions.
const ASK: &str = "COMPLETE";

/// If a shell is asking for completions (`COMPLETE` is set), writes them
/// and exits; otherwise returns at the cost of one environment lookup.
pub fn answer() {
    CompleteEnv::with_factory(Cli::command).var(ASK).complete();
}

/// Writes the script that registers mailfetch's completions in `shell`.
pub fn write_script(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let shell: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
    };
    // The completer is found on $PATH, like the command being completed.
    shell.write_registration(ASK, "mailfetch", "mailfetch", "mailfetch", out)
}

/// The account names of the configuration the command line being completed
/// names with `-c`/`--config`, else of the default one. Nothing when it
/// cannot be read: a completion never prints an error.
pub fn account_names() -> Vec<CompletionCandidate> {
    let path = config_on_line(std::env::args_os()).or_else(crate::config::default_path);
    let Some(text) = path.and_then(|path| std::fs::read_to_string(path).ok()) else {
        return Vec::new();
    };
    names_in(&text)
        .into_iter()
        .map(CompletionCandidate::new)
        .collect()
}

/// Only the names, so that a file with other mistakes still completes (the
/// full check is `--check-config`'s job).
fn names_in(text: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        account: Vec<Named>,
    }
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }
    toml::from_str::<File>(text)
        .map(|file| file.account.into_iter().filter_map(|a| a.name).collect())
        .unwrap_or_default()
}

/// The file given with `-c FILE`, `-cFILE`, `--config FILE` or
/// `--config=FILE` in the words being completed (after `--` in mailfetch's
/// own arguments). A leading `~/` is the home directory, as the shell would
/// have expanded it once the line runs.
fn config_on_line(args: impl Iterator<Item = OsString>) -> Option<PathBuf> {
    let words: Vec<String> = args
        .skip_while(|arg| arg != "--")
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let mut found = None;
    for (i, word) in words.iter().enumerate() {
        let value = if word == "-c" || word == "--config" {
            words.get(i + 1).map(String::as_str)
        } else {
            word.strip_prefix("--config=")
                .or_else(|| word.strip_prefix("-c").filter(|path| !path.is_empty()))
        };
        if let Some(value) = value {
            found = Some(value.to_owned());
        }
    }
    let path = found?;
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Some(PathBuf::from(home).join(rest)),
        _ => Some(PathBuf::from(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_of(line: &[&str]) -> Option<PathBuf> {
        config_on_line(line.iter().map(OsString::from))
    }

    #[test]
    fn the_config_is_found_in_every_spelling() {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        for (line, expected) in [
            (
                &["mailfetch", "--", "mailfetch", "-c", "a", "--account", ""][..],
                "a",
            ),
            (
                &["mailfetch", "--", "mailfetch", "-cb", "--account", ""],
                "b",
            ),
            (&["mailfetch", "--", "mailfetch", "--config", "c", ""], "c"),
            (
                &["mailfetch", "--", "mailfetch", "--config=d", "-q", ""],
                "d",
            ),
            (
                &["mailfetch", "--", "mailfetch", "-c", "a", "-c", "e", ""],
                "e",
            ),
        ] {
            assert_eq!(config_of(line), Some(PathBuf::from(expected)), "{line:?}");
        }
        assert_eq!(
            config_of(&["mailfetch", "--", "mailfetch", "-c", "~/x", ""]),
            Some(home.join("x"))
        );
        // Before `--` is how the shell called mailfetch, not the line.
        assert_eq!(
            config_of(&["mailfetch", "-c", "a", "--", "mailfetch", "--c"]),
            None
        );
        assert_eq!(
            config_of(&["mailfetch", "--", "mailfetch", "--check-config"]),
            None
        );
    }

    #[test]
    fn names_are_read_from_a_file_with_other_mistakes() {
        let text = "[general]\nbogus = 1\n[[account]]\nname = \"home\"\nport = \"x\"\n\
                    [[account]]\nhost = \"h\"\n[[account]]\nname = \"work\"\n";
        assert_eq!(names_in(text), ["home", "work"]);
        assert!(names_in("not toml [").is_empty());
    }
}
