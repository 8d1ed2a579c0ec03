//! `mailfetch import fetchmailrc|getmailrc|mpoprc [FILE…] [--output FILE]
//! [--state]` (its arguments are defined in `cli`): reads the old configs,
//! writes the mailfetch config (checked first), prints every note on
//! stderr and, with `--state`, imports what the old tool already fetched.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Import, Peer, read, state};
use crate::error::{Error, Kind};

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub peer: Peer,
    pub files: Vec<PathBuf>,
    pub output: Option<PathBuf>,
    pub state: bool,
}

/// The file a peer reads when none is named.
fn default_file(peer: Peer, home: &Path) -> PathBuf {
    match peer {
        Peer::Fetchmail => home.join(".fetchmailrc"),
        Peer::Mpop => {
            let legacy = home.join(".mpoprc");
            if legacy.exists() {
                legacy
            } else {
                home.join(".config/mpop/config")
            }
        }
        Peer::Getmail => {
            let legacy = home.join(".getmail/getmailrc");
            if legacy.exists() {
                legacy
            } else {
                home.join(".config/getmail/getmailrc")
            }
        }
    }
}

/// Runs the import; the notes go to `notes` (stderr), the config to
/// `out` (stdout) unless `--output` names a file.
pub fn run(options: &Options, out: &mut dyn Write, notes: &mut dyn Write) -> Result<(), Error> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| Error::new(Kind::Config, "import: $HOME is not set"))?;
    let files = if options.files.is_empty() {
        vec![default_file(options.peer, &home)]
    } else {
        options.files.clone()
    };
    let mut import = Import::default();
    for file in &files {
        let one = read(options.peer, file, &home)?;
        if one.general.is_some() {
            import.general = one.general;
        }
        import.account.extend(one.account);
        import.notes.extend(one.notes);
    }
    import.settle_names();
    let from = files.first().expect("at least one file");
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("<stdout>"));
    let config = import.check(from, &output)?;
    let write_error = |err: std::io::Error| {
        Error::new(Kind::Local, format!("writing {}: {err}", output.display()))
    };
    let text = import.to_toml(from);
    match &options.output {
        Some(path) => {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|err| {
                    Error::new(
                        Kind::Local,
                        format!(
                            "{}: {err} (mailfetch import never overwrites a file)",
                            path.display()
                        ),
                    )
                })?;
            file.write_all(text.as_bytes()).map_err(write_error)?;
            file.sync_all().map_err(write_error)?;
        }
        None => out.write_all(text.as_bytes()).map_err(write_error)?,
    }
    for note in &import.notes {
        let _ = writeln!(notes, "mailfetch import: {note}");
    }
    if options.state {
        for note in state::import(&config, &import.account)? {
            let _ = writeln!(notes, "mailfetch import: {note}");
        }
    }
    if options.output.is_some() && import.holds_secrets() {
        let _ = writeln!(
            notes,
            "mailfetch import: the config holds passwords: it was created private (mode 0600); consider password_command"
        );
    }
    Ok(())
}
