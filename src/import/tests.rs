//! The corpus (`tests/import_corpus/`: the peers' own sample files and
//! man-page examples): every file imports into a config the real parser
//! accepts, and matches its golden output (`FILE.golden`: the config, then
//! the notes). `MAILFETCH_BLESS=1 cargo test --lib import::tests` rewrites
//! the golden files after a deliberate change; review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

const CORPUS: &str = "tests/import_corpus";

fn corpus(peer: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(Path::new(CORPUS).join(peer))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_none_or(|ext| ext != "golden"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for {peer}");
    files
}

/// What a golden file holds for one import.
fn rendering(path: &Path, import: &Import) -> String {
    let mut text = import.to_toml(path);
    text.push_str("\n# notes:\n");
    for note in &import.notes {
        text.push_str(&format!("# {note}\n"));
    }
    text
}

fn check_corpus(peer_dir: &str, peer: Peer) {
    let home = Path::new("/home/user");
    let bless = std::env::var_os("MAILFETCH_BLESS").is_some();
    let mut failures = Vec::new();
    for path in corpus(peer_dir) {
        let import = match read(peer, &path, home) {
            Ok(import) => import,
            Err(err) => {
                failures.push(format!("{}: {err}", path.display()));
                continue;
            }
        };
        // A file with nothing to poll (a commented-out sample) is an error
        // of its own, recorded in the golden file with its notes.
        if !import.account.is_empty()
            && let Err(err) = import.check(&path, Path::new("fetchrc"))
        {
            failures.push(format!(
                "{}: the import does not parse: {err}\n{}",
                path.display(),
                import.to_toml(&path)
            ));
            continue;
        }
        let golden_path = path.with_file_name(format!(
            "{}.golden",
            path.file_name().unwrap().to_string_lossy()
        ));
        let actual = match import.check(&path, Path::new("fetchrc")) {
            Ok(_) => rendering(&path, &import),
            Err(err) => format!("# error: {err}\n{}", rendering(&path, &import)),
        };
        if bless {
            fs::write(&golden_path, &actual).unwrap();
        } else {
            let expected = fs::read_to_string(&golden_path).unwrap_or_default();
            if expected != actual {
                failures.push(format!(
                    "{}: differs from {}:\n{actual}",
                    path.display(),
                    golden_path.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn fetchmail_corpus() {
    check_corpus("fetchmail", Peer::Fetchmail);
}

#[test]
fn getmail_corpus() {
    check_corpus("getmail", Peer::Getmail);
}

#[test]
fn mpop_corpus() {
    check_corpus("mpop", Peer::Mpop);
}

#[test]
fn missing_password_still_checks_and_is_noted() {
    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("fetchmailrc");
    fs::write(&rc, "poll pop.example.com proto pop3 user alice ssl\n").unwrap();
    let import = read(Peer::Fetchmail, &rc, dir.path()).unwrap();
    let config = import.check(&rc, Path::new("fetchrc")).unwrap();
    assert_eq!(config.accounts[0].server.host, "pop.example.com");
    assert!(
        import
            .notes
            .iter()
            .any(|n| n.message.contains("no password")),
        "{:?}",
        import.notes
    );
    // ~/.netrc fills it in, as fetchmail does.
    fs::write(
        dir.path().join(".netrc"),
        "machine pop.example.com login alice password s3cret\n",
    )
    .unwrap();
    let import = read(Peer::Fetchmail, &rc, dir.path()).unwrap();
    assert_eq!(import.account[0].password.as_deref(), Some("s3cret"));
    assert!(import.holds_secrets());
}
