//! `contrib/demo.sh` runs this: a real mailfetch poll, end to end, against a
//! private Dovecot on 127.0.0.1, with no outside account.
//!
//! It starts Dovecot in a temp dir, puts sample messages in alice's mailbox,
//! writes `./mailfetch-demo/fetchrc` (POP3 with STLS, trusting the throwaway
//! test CA), runs `mailfetch` twice (mail, then "no new mail") and shows what
//! landed in `./mailfetch-demo/Maildir`.
//!
//! Exits non-zero if mailfetch's first run does not deliver every message or
//! the second one fetches anything again.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use testkit::dovecot::{self, Dovecot};
use testkit::run::find_mailfetch;

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-battery-staple";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mailfetch = find_mailfetch()?;
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let demo = cwd.join("mailfetch-demo");
    if demo.exists() {
        fs::remove_dir_all(&demo).map_err(|e| format!("removing {}: {e}", demo.display()))?;
    }
    fs::create_dir(&demo).map_err(|e| format!("creating {}: {e}", demo.display()))?;
    let maildir = demo.join("Maildir");

    step("Starting a private Dovecot on 127.0.0.1");
    let Some(server) = Dovecot::start() else {
        return Err(format!(
            "Dovecot is not installed; install it with: sudo {}",
            dovecot::INSTALL_HINT
        ));
    };
    println!(
        "  POP3 (with STLS) on port {}, certificate signed by a throwaway CA\n  \
         ({}), fingerprint {}",
        server.pop3_port(),
        server.ca_file().display(),
        server.fingerprint()
    );
    server.add_user(USER, PASSWORD);

    let samples = sample_messages();
    step(&format!(
        "Putting {} messages in {USER}'s mailbox on the server",
        samples.len()
    ));
    for m in &samples {
        server.add_message(USER, m.as_bytes());
        println!("  {}", subject(m.as_bytes()));
    }

    let fetchrc = demo.join("fetchrc");
    let config = format!(
        r#"# Written by the mailfetch demo (examples/demo.rs).
[general]
state_dir = {state}

[[account]]
name = "demo"
protocol = "pop3"
host = "localhost"
port = {port}
tls = "starttls"
ca_file = {ca}
username = "{USER}"
password = "{PASSWORD}"
auth = "auto"
keep = false
deliver = {deliver}
"#,
        state = toml_str(&demo.join("state")),
        port = server.pop3_port(),
        ca = toml_str(server.ca_file()),
        deliver = toml_str(Path::new(&format!("maildir:{}", maildir.display()))),
    );
    fs::write(&fetchrc, &config).map_err(|e| e.to_string())?;
    fs::set_permissions(&fetchrc, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    step(&format!(
        "Config {} (mode 0600, it holds a password)",
        rel(&cwd, &fetchrc)
    ));
    for line in config.lines().filter(|l| !l.starts_with('#')) {
        println!("  {line}");
    }

    let cmd_line = format!("mailfetch -c {}", rel(&cwd, &fetchrc));
    step(&format!("First poll: {cmd_line}"));
    let first = run_mailfetch(&mailfetch, &fetchrc)?;
    println!("  exit code {first} (0 = mail delivered)");
    let delivered = delivered_files(&maildir);
    if first != 0 {
        return Err(format!("mailfetch's first run exited {first}, expected 0"));
    }
    if delivered.len() != samples.len() {
        return Err(format!(
            "the Maildir holds {} messages, expected {}",
            delivered.len(),
            samples.len()
        ));
    }
    let left = server.message_count(USER);
    println!("  messages left on the server: {left} (keep = false deletes them)");

    step(&format!("Second poll: {cmd_line}"));
    let second = run_mailfetch(&mailfetch, &fetchrc)?;
    println!("  exit code {second} (1 = no new mail)");
    if second != 1 {
        return Err(format!(
            "mailfetch's second run exited {second}, expected 1 (no new mail)"
        ));
    }
    let again = delivered_files(&maildir);
    if again.len() != samples.len() {
        return Err(format!(
            "after the second run the Maildir holds {} messages, expected {}",
            again.len(),
            samples.len()
        ));
    }

    step(&format!(
        "Delivered into {}",
        rel(&cwd, &maildir.join("new"))
    ));
    for path in &again {
        let bytes = fs::read(path).map_err(|e| e.to_string())?;
        println!(
            "  {:<44} {:>5} bytes  {}",
            path.file_name().unwrap().to_string_lossy(),
            bytes.len(),
            subject(&bytes)
        );
    }

    println!(
        "\nIt worked. Look at the mail yourself:\n\n    ls {new}\n    mutt -f {md}\n\n\
         The config is {rc} (Dovecot is gone now, so running mailfetch on it\n\
         again will fail to connect).",
        new = rel(&cwd, &maildir.join("new")),
        md = rel(&cwd, &maildir),
        rc = rel(&cwd, &fetchrc)
    );
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// Runs mailfetch with its output going straight to ours; returns the exit
/// code.
fn run_mailfetch(bin: &Path, fetchrc: &Path) -> Result<i32, String> {
    let status = Command::new(bin)
        .arg("-c")
        .arg(fetchrc)
        .status()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    status
        .code()
        .ok_or_else(|| format!("mailfetch was killed: {status}"))
}

/// Message files in a Maildir's new/ and cur/, sorted by name.
fn delivered_files(maildir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["new", "cur"]
        .iter()
        .filter_map(|d| fs::read_dir(maildir.join(d)).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| p.display().to_string())
}

/// A TOML basic string.
fn toml_str(p: &Path) -> String {
    let mut s = String::from("\"");
    for c in p.display().to_string().chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if c.is_control() => s.push_str(&format!("\\u{:04X}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A message's Subject, MIME-decoded.
fn subject(message: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse(message)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default()
}

/// Eight sample messages, LF line endings, as a real mailbox would hold.
fn sample_messages() -> Vec<String> {
    let mut v = Vec::new();
    let mut msg = |from: &str, subject: &str, date: &str, id: &str, extra: &str, body: &str| {
        v.push(format!(
            "Return-Path: <{addr}>\n\
             From: {from}\n\
             To: Alice Example <alice@example.com>\n\
             Subject: {subject}\n\
             Date: {date}\n\
             Message-ID: <{id}@example.org>\n\
             MIME-Version: 1.0\n\
             {extra}\n\
             {body}",
            addr = from
                .rsplit('<')
                .next()
                .unwrap_or(from)
                .trim_end_matches('>'),
        ));
    };
    let plain = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n";
    msg(
        "Bob Builder <bob@example.org>",
        "Lunch on Thursday?",
        "Mon, 02 Mar 2026 09:14:07 +0100",
        "lunch-4711",
        plain,
        "Hi Alice,\n\nare you free for lunch on Thursday? The new place on the corner\n\
         opened last week and I hear the soup is excellent.\n\nBob\n",
    );
    msg(
        "Carol Danvers <carol@example.net>",
        "Re: quarterly report draft",
        "Mon, 02 Mar 2026 10:02:55 +0000",
        "report-draft-2",
        &format!("In-Reply-To: <report-draft-1@example.com>\n{plain}"),
        "> Could you have a look at section 3?\n\nDone. I left a few comments in the \
         margin; the numbers in table 2\ndo not add up, the rest looks good.\n\n\
         -- \nCarol\n",
    );
    msg(
        "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>",
        "=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen_=E2=98=80?=",
        "Tue, 03 Mar 2026 18:30:00 +0100",
        "gruesse-muenchen",
        plain,
        "Liebe Alice,\n\nviele Grüße aus München! Das Wetter ist herrlich, die Berge \
         sind\nschon zu sehen. Bis bald,\n\nJürgen\n",
    );
    msg(
        "GitHub <noreply@github.example>",
        "[mailfetch] Pull request #42: Add IMAP IDLE support",
        "Wed, 04 Mar 2026 07:45:12 +0000",
        "pr-42-opened",
        &format!("List-Id: mailfetch <mailfetch.example.github.example>\n{plain}"),
        "dave opened a pull request:\n\n  Add IMAP IDLE support (#42)\n\n\
         This adds a daemon mode that waits for new mail with IDLE\ninstead of polling.\n\n\
         -- \nReply to this email directly or view it on the web.\n",
    );
    // One with an attachment.
    let pdf_b64 = "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2cvUGFnZXMgMiAwIFI+PgplbmRv\n\
                   YmoKMiAwIG9iago8PC9UeXBlL1BhZ2VzL0tpZHNbMyAwIFJdL0NvdW50IDE+PgplbmRvYmoKJSVF\n\
                   T0YK\n";
    msg(
        "Eve Accounting <eve@accounting.example.com>",
        "Invoice 2026-0317 (PDF attached)",
        "Thu, 05 Mar 2026 11:11:11 +0000",
        "invoice-2026-0317",
        "Content-Type: multipart/mixed; boundary=\"=_boundary_2026_0317\"\n",
        &format!(
            "This is a multi-part message in MIME format.\n\n\
             --=_boundary_2026_0317\n{plain}\n\
             Dear Alice,\n\nplease find attached invoice 2026-0317. Payment is due within\n\
             30 days.\n\nKind regards,\nEve\n\n\
             --=_boundary_2026_0317\n\
             Content-Type: application/pdf; name=\"invoice-2026-0317.pdf\"\n\
             Content-Disposition: attachment; filename=\"invoice-2026-0317.pdf\"\n\
             Content-Transfer-Encoding: base64\n\n{pdf_b64}\n\
             --=_boundary_2026_0317--\n"
        ),
    );
    msg(
        "Frank <frank@example.org>",
        "Photos from the weekend",
        "Fri, 06 Mar 2026 21:03:44 +0100",
        "photos-weekend",
        plain,
        "The photos are in the shared album now. My favourite is the one\nwhere the \
         dog jumps into the lake.\n\n.\nA line with just a dot above, to keep POP3 \
         honest.\n",
    );
    msg(
        "Newsletter <news@weekly.example.com>",
        "This week: 10 tips for a tidy inbox",
        "Sat, 07 Mar 2026 06:00:00 +0000",
        "newsletter-2026-10",
        "List-Unsubscribe: <mailto:unsubscribe@weekly.example.com>\n\
         Content-Type: text/html; charset=us-ascii\n",
        "<html><body><h1>10 tips for a tidy inbox</h1>\n<ol><li>Fetch it with \
         mailfetch.</li><li>Read it with mutt.</li></ol>\n</body></html>\n",
    );
    msg(
        "Grace Hopper <grace@navy.example.mil>",
        "Re: Re: Re: the bug in relay 70",
        "Sun, 08 Mar 2026 15:45:00 -0500",
        "moth-1947",
        plain,
        "It was a moth. I taped it into the log book.\n\nGrace\n",
    );
    v
}
