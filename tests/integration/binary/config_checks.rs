//! What the `mailfetch` binary refuses before it contacts any server, and
//! with which exit code: 5 for a configuration error, 6 for a file or
//! directory someone else could change. No server listens: every run here
//! must stop before connecting.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use testkit::run::Scratch;

/// A POP3 account on a loopback port nobody should ever be asked about.
fn account(scratch: &Scratch, name: &str, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = 9\n\
         tls = \"none\"\nusername = \"alice\"\npassword_command = \"echo secret\"\n\
         deliver = \"maildir:{}\"\n{extra}\n",
        scratch.maildir().display()
    )
}

#[test]
fn two_accounts_on_one_mailbox_are_refused_naming_both() {
    let scratch = Scratch::new();
    let first = account(&scratch, "home", "");
    let second = account(&scratch, "copy", "");
    let path = scratch.write_config(&format!("{first}\n{second}"));
    let run = scratch.run(&["--check-config"]);
    run.expect(5);
    // The accounts' [[account]] lines are 5 and 16.
    let expected = format!(
        "{}:16: key `host`: account `copy` fetches the same mailbox as account `home` at line 5",
        path.display()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
}

#[test]
fn a_config_others_can_write_is_refused_with_exit_6() {
    let scratch = Scratch::new();
    let path = scratch.write_config(&account(&scratch, "home", ""));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
    let run = scratch.run(&["--check-config"]);
    run.expect(6);
    assert!(
        run.stderr
            .contains(&format!("chmod go-w {}", path.display())),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_password_or_password_file_fails_the_check() {
    let scratch = Scratch::new();
    let without = account(&scratch, "home", "").replace("password_command = \"echo secret\"\n", "");
    let path = scratch.write_config(&without);
    let run = scratch.run(&["--check-config"]);
    run.expect(5);
    assert!(
        run.stderr
            .contains(&format!("{}:5: key `password`: ", path.display())),
        "{}",
        run.stderr
    );

    let missing = scratch.path().join("no-such-file");
    let with_file = account(&scratch, "home", "").replace(
        "password_command = \"echo secret\"",
        &format!("password_file = \"{}\"", missing.display()),
    );
    scratch.write_config(&with_file);
    let run = scratch.run(&["--check-config"]);
    run.expect(5);
    assert!(
        run.stderr.contains(&format!(
            "key `password_file`: {} does not exist",
            missing.display()
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn a_state_directory_others_can_write_is_refused_with_exit_6() {
    let scratch = Scratch::new();
    scratch.write_config(&account(&scratch, "home", ""));
    let state = scratch.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let run = scratch.run(&[]);
    run.expect(6);
    assert!(
        run.stderr
            .contains("the state directory can be written by group or others"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_password_in_a_delivery_url_is_refused_without_showing_it() {
    let scratch = Scratch::new();
    let text = account(&scratch, "home", "").replace(
        &format!("maildir:{}", scratch.maildir().display()),
        "imaps://bob:hunter2@127.0.0.1/Archive",
    );
    scratch.write_config(&text);
    let run = scratch.run(&["--check-config"]);
    run.expect(5);
    assert!(run.stderr.contains("holds a password"), "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert!(!run.stdout.contains("hunter2"), "{}", run.stdout);
}
