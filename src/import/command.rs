//! `mailfetch import fetchmailrc|getmailrc|mpoprc [FILE…] [--output FILE]
//! [--state]`: reads the old configs, writes the mailfetch config (checked
//! first), prints every note on stderr and, with `--state`, imports what
//! the old tool already fetched.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Import, Peer, read, state};
use crate::error::{Error, Kind};

pub const USAGE: &str = "\
USAGE:
    mailfetch import fetchmailrc [FILE] [--output FILE] [--state]
    mailfetch import getmailrc FILE… [--output FILE] [--state]
    mailfetch import mpoprc [FILE] [--output FILE] [--state]

Translates another fetcher's configuration into mailfetch's and writes it to
standard output, or to --output FILE (created with mode 0600; an existing
file is not overwritten). FILE defaults to ~/.fetchmailrc (passwords missing
from it are looked up in ~/.netrc, as fetchmail does), or ~/.mpoprc, else
~/.config/mpop/config. Every setting that does not carry over is listed on
standard error with its file and line. The config is checked as
--check-config would before it is written.

    --output FILE   write the config to FILE instead of standard output
    --state         also import what the old tool already fetched
                    (fetchmail's .fetchids, getmail's oldmail-* files next
                    to the rc file, mpop's UIDL files) into mailfetch's state
                    directory, so that the first poll in keep mode fetches
                    only new mail
";

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub peer: Peer,
    pub files: Vec<PathBuf>,
    pub output: Option<PathBuf>,
    pub state: bool,
}

/// Parses the words after `import`. `Ok(None)` means help was asked for.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut args = args.into_iter();
    let kind = args
        .next()
        .ok_or("import needs fetchmailrc, getmailrc or mpoprc")?;
    if kind == "-h" || kind == "--help" {
        return Ok(None);
    }
    let peer = Peer::from_rc_name(&kind)
        .ok_or_else(|| format!("import: {kind:?} is not fetchmailrc, getmailrc or mpoprc"))?;
    let mut options = Options {
        peer,
        files: Vec::new(),
        output: None,
        state: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--state" => options.state = true,
            "-o" | "--output" => {
                options.output = Some(args.next().ok_or("--output needs a file")?.into())
            }
            other if other.starts_with("--output=") => {
                options.output = Some(other["--output=".len()..].into())
            }
            other if other.starts_with('-') => {
                return Err(format!("import: unknown option {other:?}"));
            }
            file => options.files.push(file.into()),
        }
    }
    if options.peer == Peer::Getmail && options.files.is_empty() {
        return Err("import getmailrc needs the rc files to read".into());
    }
    Ok(Some(options))
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
        Peer::Getmail => home.join(".getmail/getmailrc"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn command_line() {
        let options = parse(words("fetchmailrc rc --state --output out"))
            .unwrap()
            .unwrap();
        assert_eq!(options.peer, Peer::Fetchmail);
        assert_eq!(options.files, [PathBuf::from("rc")]);
        assert_eq!(options.output, Some(PathBuf::from("out")));
        assert!(options.state);
        assert!(parse(words("getmailrc")).is_err());
        assert!(parse(words("procmailrc x")).is_err());
        assert_eq!(parse(words("mpoprc --help")).unwrap(), None);
    }
}
