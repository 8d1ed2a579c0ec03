//! The command line as scripts and systemd units use it: every flag of the
//! hand-written parser still works, and bad usage exits 5 with the reason
//! and the usage line (never a panic, as a non-UTF-8 argument once was).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use testkit::run::{Run, Scratch, mailfetch_binary};

fn account(scratch: &Scratch) -> String {
    format!(
        "[[account]]\nname = \"home\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = 9\n\
         tls = \"none\"\nusername = \"alice\"\npassword_command = \"echo secret\"\n\
         deliver = \"maildir:{}\"\n",
        scratch.maildir().display()
    )
}

fn mailfetch(args: &[&OsStr]) -> Run {
    Run::from(
        Command::new(mailfetch_binary())
            .args(args)
            .output()
            .unwrap(),
    )
}

#[test]
fn bad_usage_exits_5_with_the_reason_and_the_usage_line() {
    let not_utf8 = OsStr::from_bytes(b"caf\xe9");
    for args in [
        &[OsStr::new("--bogus")][..],
        &[OsStr::new("--log-format"), OsStr::new("xml")],
        &[OsStr::new("--account")],
        &[OsStr::new("--account"), not_utf8],
        &[OsStr::new("--daemon"), OsStr::new("stray")],
    ] {
        let run = mailfetch(args);
        run.expect(5);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {}", run.stderr);
        assert!(
            lines[0].starts_with("mailfetch: "),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            lines[1].starts_with("Usage: mailfetch [OPTIONS]"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn help_and_version_go_to_stdout_with_exit_0() {
    let run = mailfetch(&[OsStr::new("--help")]);
    run.expect(0);
    for text in ["--check-config", "--log-format", "Exit codes", "SIGHUP"] {
        assert!(run.stdout.contains(text), "{text} missing: {}", run.stdout);
    }
    let run = mailfetch(&[OsStr::new("-h")]);
    run.expect(0);
    assert!(run.stdout.contains("--daemon"), "{}", run.stdout);
    let run = mailfetch(&[OsStr::new("-V")]);
    run.expect(0);
    assert_eq!(
        run.stdout,
        concat!("mailfetch ", env!("CARGO_PKG_VERSION"), "\n")
    );
}

/// Combined short flags, `-cFILE`, `--opt=value` and a closing `--` reach
/// the configuration check like the spelled-out forms.
#[test]
fn short_forms_and_combined_flags_reach_the_config_check() {
    let scratch = Scratch::new();
    let path = scratch.write_config(&account(&scratch));
    let with_file = format!("-c{}", path.display());
    for args in [
        vec![with_file.as_str(), "--check-config"],
        vec![with_file.as_str(), "-qv", "--check-config", "--"],
        vec![
            with_file.as_str(),
            "-vvv",
            "--account=home",
            "--check-config",
        ],
        vec![with_file.as_str(), "--log-format=json", "--check-config"],
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let run = mailfetch(&args);
        run.expect(0);
        assert!(
            run.stdout.contains("name = \"home\""),
            "{args:?}: {}",
            run.stdout
        );
    }
}
