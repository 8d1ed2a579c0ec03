//! `mailfetch completions` and `mailfetch man` as a shell and man use them:
//! bash sources the script and completes flags, commands and the account
//! names of the configuration named on the line; man reads the pages.

use std::path::Path;
use std::process::Command;

use testkit::run::{Scratch, mailfetch_binary};

/// Runs `script` in bash with mailfetch's completions loaded, mailfetch on
/// `$PATH` as an installed one would be.
fn bash(script: &str) -> String {
    let bin_dir = mailfetch_binary().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let output = Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "source <(mailfetch completions bash) || exit 9\n{script}"
        ))
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// What bash offers for the last word of `words` (the word being typed).
fn complete(words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_TYPE=9; COMP_LINE=\"${{COMP_WORDS[*]}}\"; \
         COMP_POINT=${{#COMP_LINE}}\n\
         _clap_complete_mailfetch mailfetch \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = quoted.join(" "),
        cword = words.len() - 1,
    );
    let mut offered: Vec<String> = bash(&script)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    offered.sort();
    offered
}

fn config_with_accounts(scratch: &Scratch) -> String {
    let accounts: String = ["home", "work"]
        .iter()
        .map(|name| {
            format!(
                "[[account]]\nname = \"{name}\"\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\n\
                 username = \"a\"\npassword_command = \"true\"\ndeliver = \"maildir:/x\"\n"
            )
        })
        .collect();
    scratch.write_config(&accounts).display().to_string()
}

#[test]
fn bash_accepts_the_script_and_registers_the_function() {
    let script = Command::new(mailfetch_binary())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let scratch = Scratch::new();
    let path = scratch.path().join("mailfetch.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(check.success());
    let registered = bash("complete -p mailfetch");
    assert!(
        registered.contains("-F _clap_complete_mailfetch mailfetch"),
        "{registered}"
    );
}

#[test]
fn bash_completes_flags_commands_and_account_names() {
    let scratch = Scratch::new();
    let config = config_with_accounts(&scratch);
    assert_eq!(complete(&["mailfetch", "--acc"]), ["--account"]);
    assert_eq!(complete(&["mailfetch", "--check"]), ["--check-config"]);
    assert_eq!(complete(&["mailfetch", "com"]), ["completions"]);
    assert_eq!(complete(&["mailfetch", "completions", "z"]), ["zsh"]);
    assert_eq!(
        complete(&["mailfetch", "-c", &config, "--account", ""]),
        ["home", "work"]
    );
    assert_eq!(
        complete(&["mailfetch", &format!("--config={config}"), "--account", "w"]),
        ["work"]
    );
    // No configuration there: nothing to offer, and no error on the screen.
    let missing = scratch.path().join("missing").display().to_string();
    assert!(complete(&["mailfetch", "-c", &missing, "--account", ""]).is_empty());
}

/// zsh and fish, where installed, at least parse their scripts.
#[test]
fn zsh_and_fish_accept_their_scripts() {
    for (shell, check) in [("zsh", &["-n"][..]), ("fish", &["--no-execute"])] {
        if Command::new(shell).arg("-c").arg("true").output().is_err() {
            eprintln!("{shell} is not installed: its script is not checked");
            continue;
        }
        let script = Command::new(mailfetch_binary())
            .args(["completions", shell])
            .output()
            .unwrap();
        let scratch = Scratch::new();
        let path = scratch.path().join(format!("mailfetch.{shell}"));
        std::fs::write(&path, &script.stdout).unwrap();
        assert!(
            Command::new(shell)
                .args(check)
                .arg(&path)
                .status()
                .unwrap()
                .success()
        );
    }
}

/// man renders both pages without a warning.
#[test]
fn man_reads_both_pages() {
    for (section, heading) in [("1", "EXIT STATUS"), ("5", "[account.delivery]")] {
        let page = Command::new(mailfetch_binary())
            .args(["man", section])
            .output()
            .unwrap();
        assert!(page.status.success());
        let scratch = Scratch::new();
        let path = scratch.path().join(format!("page.{section}"));
        std::fs::write(&path, &page.stdout).unwrap();
        let Some(rendered) = render(&path) else {
            return;
        };
        assert!(rendered.contains(heading), "{rendered}");
    }
}

/// The page as `man` shows it, or `None` where man is not installed (it
/// is, on CI: `contrib/test.sh` installs man-db).
fn render(path: &Path) -> Option<String> {
    let output = match Command::new("man")
        .args(["--warnings", "-l"])
        .arg(path)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .output()
    {
        Ok(output) => output,
        Err(_) if std::env::var_os("CI").is_none() => return None,
        Err(err) => panic!("man: {err}"),
    };
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && warnings.is_empty(), "{warnings}");
    Some(String::from_utf8(output.stdout).unwrap())
}
