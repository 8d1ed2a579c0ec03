//! The one-mailbox scenarios (`mixed`, `big`, `imap-mixed`,
//! `imap-idle-poll`, `imap-big`, `smtp`): each tool polls one mailbox,
//! timed, a few times; then the results table.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::dovecot::Dovecot;
use testkit::postfix::Postfix;

use crate::mail::{Message, big_message, mixed_messages, small_messages};
use crate::measure::{Measurement, measure};
use crate::options::{Opts, Scenario};
use crate::report::{Row, print_table};
use crate::{
    MIB, PASSWORD, SMTP_USER, Tool, clear_maildir, count_files, fetchmail_command, tail,
    write_private,
};

/// Runs every one-mailbox scenario of `opts` with each tool that takes
/// part in it.
pub fn bench(
    opts: &Opts,
    server: &Dovecot,
    mta: Option<&Postfix>,
    tools: &[Tool],
    mailfetch: &Tool,
    work: &Path,
) -> Result<(), String> {
    let mut rows = Vec::new();
    for &scenario in &opts.scenarios {
        if scenario == Scenario::Smtp && mta.is_none() {
            continue;
        }
        let scenario_tools: Vec<&Tool> = tools.iter().filter(|t| t.runs_in(scenario)).collect();
        if scenario_tools.is_empty() {
            continue;
        }
        let t = Instant::now();
        let messages = match scenario {
            Scenario::Mixed | Scenario::Mbox | Scenario::ImapMixed | Scenario::Smtp => {
                mixed_messages(opts.messages)
            }
            Scenario::Big | Scenario::ImapBig => vec![big_message(opts.big_mib * 1024 * 1024)],
            Scenario::ImapIdlePoll => small_messages(opts.idle_messages),
        };
        let bytes: usize = messages.iter().map(|m| m.data.len()).sum();
        println!(
            "\n== scenario {}: {} message(s), {:.1} MiB (largest {:.1} MiB), generated in {:.1} s",
            scenario.name(),
            messages.len(),
            bytes as f64 / MIB,
            messages.iter().map(|m| m.data.len()).max().unwrap_or(0) as f64 / MIB,
            t.elapsed().as_secs_f64()
        );
        let user = scenario.user();
        server.add_user(user, PASSWORD);

        // IMAP: seed once, and let mailfetch poll once, untimed, so that
        // Dovecot has indexed the mailbox. For imap-idle-poll, that poll's
        // Maildir and state are the ones every timed run starts from.
        let first_dir = work.join(format!("{}-first", scenario.name()));
        if scenario.imap() {
            let t = Instant::now();
            seed(server, user, &messages)?;
            let seeded = t.elapsed();
            let m = fetch(server, mailfetch, scenario, &first_dir, 0, None)?;
            verify(server, mailfetch, scenario, &messages, &first_dir, None)?;
            println!(
                "  seeded in {:.1} s; first poll (untimed; Dovecot indexes the fresh Maildir): \
                 {:.3} s",
                seeded.as_secs_f64(),
                m.wall.as_secs_f64()
            );
            if scenario != Scenario::ImapIdlePoll {
                let _ = fs::remove_dir_all(&first_dir);
            }
        }

        for &tool in &scenario_tools {
            let mut runs = Vec::new();
            let n = if scenario == Scenario::ImapIdlePoll {
                opts.idle_runs
            } else {
                opts.runs
            };
            for i in 1..=n {
                let m = if scenario == Scenario::ImapIdlePoll {
                    // Nothing new: exit code 1, and the Maildir unchanged.
                    let m = fetch(server, tool, scenario, &first_dir, 1, None)?;
                    verify(server, tool, scenario, &messages, &first_dir, None)?;
                    m
                } else {
                    let run_dir = work.join(format!("{}-{}-{i}", scenario.name(), tool.name()));
                    if !scenario.imap() {
                        seed(server, user, &messages)?;
                    }
                    let mta = mta.filter(|_| scenario == Scenario::Smtp);
                    let m = fetch(server, tool, scenario, &run_dir, 0, mta)?;
                    verify(server, tool, scenario, &messages, &run_dir, mta)?;
                    if let Some(mta) = mta {
                        clear_maildir(&mta.maildir(SMTP_USER));
                    }
                    let _ = fs::remove_dir_all(&run_dir);
                    m
                };
                let secs = m.wall.as_secs_f64();
                let rates = if scenario == Scenario::ImapIdlePoll {
                    String::new()
                } else {
                    format!(
                        "  {:>8.1} msg/s  {:>7.1} MiB/s",
                        messages.len() as f64 / secs,
                        bytes as f64 / MIB / secs
                    )
                };
                println!(
                    "  {:<10} run {i}: {secs:>8.3} s{rates}  max RSS {:>7.1} MiB",
                    tool.name(),
                    m.max_rss_kib as f64 / 1024.0
                );
                runs.push(m);
            }
            rows.push(Row {
                scenario,
                tool: tool.name(),
                messages: messages.len(),
                bytes,
                runs,
            });
        }
        if scenario.imap() {
            // Free the disk space; the scenario's user is not used again.
            let _ = fs::remove_dir_all(&first_dir);
            let _ = fs::remove_dir_all(server.maildir(user));
        }
    }

    if !rows.is_empty() {
        print_table(&rows);
    }
    Ok(())
}

/// Puts the messages into the user's empty INBOX (straight into
/// `Maildir/new`).
pub fn seed(server: &Dovecot, user: &str, messages: &[Message]) -> Result<(), String> {
    if server.message_count(user) != 0 {
        return Err(format!(
            "the server mailbox of {user} is not empty before seeding"
        ));
    }
    for m in messages {
        server.add_message(user, &m.data);
    }
    Ok(())
}

/// Runs the tool once (timed) on the scenario's mailbox, delivering into
/// `run_dir/Maildir` with its state in `run_dir` (both created if missing,
/// kept if present), and checks that it exits with `expect`.
pub fn fetch(
    server: &Dovecot,
    tool: &Tool,
    scenario: Scenario,
    run_dir: &Path,
    expect: i32,
    mta: Option<&Postfix>,
) -> Result<Measurement, String> {
    fs::create_dir_all(run_dir).map_err(|e| e.to_string())?;
    let maildir = run_dir.join("Maildir");
    for sub in ["new", "cur", "tmp"] {
        fs::create_dir_all(maildir.join(sub)).map_err(|e| e.to_string())?;
    }
    let user = scenario.user();
    let (protocol, port, keep) = if scenario.imap() {
        ("imap", server.imap_port(), true)
    } else {
        ("pop3", server.pop3_port(), false)
    };
    let deliver = match mta {
        Some(mta) => format!(
            "deliver = \"smtp://127.0.0.1:{}\"\nto = [\"{}\"]\n",
            mta.port(),
            Postfix::address(SMTP_USER)
        ),
        None if scenario == Scenario::Mbox => {
            format!("deliver = \"mbox:{}\"\n", run_dir.join("mbox").display())
        }
        None => format!("deliver = \"maildir:{}\"\n", maildir.display()),
    };
    let cmd = match tool {
        Tool::Mailfetch(bin) => {
            let conf = run_dir.join("fetchrc");
            write_private(
                &conf,
                &format!(
                    "[general]\nstate_dir = \"{}\"\n\n[[account]]\nname = \"bench\"\n\
                     protocol = \"{protocol}\"\nhost = \"127.0.0.1\"\nport = {port}\n\
                     tls = \"none\"\nauth = \"user\"\nusername = \"{user}\"\n\
                     password = \"{PASSWORD}\"\nkeep = {keep}\n{deliver}",
                    run_dir.join("state").display(),
                ),
            )?;
            let mut c = Command::new(bin);
            c.arg("-q").arg("-c").arg(&conf);
            c
        }
        Tool::Mpop(bin) => {
            if scenario.imap() {
                return Err("mpop speaks only POP3".into());
            }
            let conf = run_dir.join("mpoprc");
            write_private(
                &conf,
                &format!(
                    "defaults\n\naccount bench\nhost 127.0.0.1\nport {port}\ntls off\n\
                     auth user\nuser {user}\npassword {PASSWORD}\nkeep off\nonly_new on\n\
                     uidls_file {}\ndelivery maildir {}\n",
                    run_dir.join("mpop-uidls").display(),
                    maildir.display()
                ),
            )?;
            let mut c = Command::new(bin);
            c.arg("-q").arg("-C").arg(&conf).arg("bench");
            c
        }
        Tool::Fetchmail(bin) => {
            // fetchmail cannot write a Maildir itself; it hands each message
            // to an MDA through sh. This is the cheapest one possible (no
            // tmp/ → new/ rename, no fsync). `fetchall` makes it fetch
            // every message, seen or not.
            // With an MTA: fetchmail's own SMTP forwarding, one session
            // per poll, to the same Postfix mailbox.
            let delivery = match mta {
                Some(mta) => format!(
                    "smtphost \"127.0.0.1/{}\" smtpname \"{}\"",
                    mta.port(),
                    Postfix::address(SMTP_USER)
                ),
                None => format!("mda \"cat > {}/new/fm.$$\"", maildir.display()),
            };
            let conf = run_dir.join("fetchmailrc");
            write_private(
                &conf,
                &format!(
                    "set no bouncemail\nset no syslog\n\
                     poll 127.0.0.1 service {port} protocol {protocol} auth password\n  \
                     user \"{user}\" password \"{PASSWORD}\" fetchall {} sslproto ''\n  \
                     {delivery}\n",
                    if keep { "keep" } else { "nokeep" },
                ),
            )?;
            fetchmail_command(bin, &conf, run_dir)
        }
    };
    measure(server, tool.name(), &cmd, run_dir, expect)
}

/// Every message in `run_dir/Maildir` exactly once; on the server, none left
/// after a POP3 (delete-mode) poll, every one still there and none flagged
/// \Deleted after an IMAP (keep-mode) poll.
pub fn verify(
    server: &Dovecot,
    tool: &Tool,
    scenario: Scenario,
    messages: &[Message],
    run_dir: &Path,
    mta: Option<&Postfix>,
) -> Result<(), String> {
    let on_server = server.message_paths(scenario.user());
    if !scenario.imap() && !on_server.is_empty() {
        return Err(format!(
            "{}: {} message(s) still on the server after a delete-mode poll",
            tool.name(),
            on_server.len()
        ));
    }
    if scenario.imap() {
        if on_server.len() != messages.len() {
            return Err(format!(
                "{}: {} message(s) on the server after a keep-mode poll, expected {}",
                tool.name(),
                on_server.len(),
                messages.len()
            ));
        }
        // Maildir flags: "...:2,FLAGS", T = \Deleted.
        if let Some(p) = on_server.iter().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once(":2,"))
                .is_some_and(|(_, flags)| flags.contains('T'))
        }) {
            return Err(format!(
                "{}: message flagged \\Deleted on the server after a keep-mode poll: {}",
                tool.name(),
                p.display()
            ));
        }
    }

    if scenario == Scenario::Mbox {
        return verify_mbox(tool, messages, &run_dir.join("mbox"));
    }
    let maildir = match mta {
        Some(mta) => {
            // The MTA's 250 means queued; delivery follows.
            let maildir = mta.maildir(SMTP_USER);
            let deadline = Instant::now() + Duration::from_secs(300);
            while count_files(&maildir) < messages.len() {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{}: Postfix delivered {} of {} messages in 300 s; log tail:\n{}",
                        tool.name(),
                        count_files(&maildir),
                        messages.len(),
                        tail(&mta.log(), 20)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            maildir
        }
        None => run_dir.join("Maildir"),
    };
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        for e in fs::read_dir(maildir.join(sub))
            .map_err(|e| e.to_string())?
            .flatten()
        {
            files.push(e.path());
        }
    }
    if files.len() != messages.len() {
        return Err(format!(
            "{}: {} message(s) in the Maildir, expected {}",
            tool.name(),
            files.len(),
            messages.len()
        ));
    }
    let want: HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    let mut seen = HashSet::new();
    let mut delivered_bytes = 0u64;
    for f in &files {
        delivered_bytes += fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let mut head = vec![0u8; 16 * 1024];
        let n = fs::File::open(f)
            .and_then(|mut h| h.read(&mut head))
            .map_err(|e| e.to_string())?;
        let head = String::from_utf8_lossy(&head[..n]);
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .map(|s| s.trim_end_matches('\r').to_string())
            .ok_or_else(|| format!("{}: no Message-ID in {}", tool.name(), f.display()))?;
        if !want.contains(id.as_str()) || !seen.insert(id.clone()) {
            return Err(format!(
                "{}: unexpected or duplicate message {id} in {}",
                tool.name(),
                f.display()
            ));
        }
    }
    let seeded: usize = messages.iter().map(|m| m.data.len()).sum();
    if delivered_bytes < seeded as u64 {
        return Err(format!(
            "{}: delivered {delivered_bytes} bytes, less than the {seeded} seeded",
            tool.name()
        ));
    }
    Ok(())
}

/// The mbox holds every message once: its `From ` lines (a line of a
/// message starting so is quoted `>From `) each open a message whose
/// Message-ID is one seeded.
fn verify_mbox(tool: &Tool, messages: &[Message], mbox: &Path) -> Result<(), String> {
    let text = fs::read(mbox).map_err(|e| format!("{}: {e}", mbox.display()))?;
    let want: HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    let mut seen = HashSet::new();
    let mut in_headers = false;
    let mut count = 0;
    for line in text.split(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            count += 1;
            in_headers = true;
        } else if line.is_empty() {
            in_headers = false;
        } else if in_headers && let Some(id) = line.strip_prefix(b"Message-ID: ") {
            let id = String::from_utf8_lossy(id).into_owned();
            if !want.contains(id.as_str()) || !seen.insert(id.clone()) {
                return Err(format!(
                    "{}: unexpected or duplicate message {id}",
                    tool.name()
                ));
            }
        }
    }
    if count != messages.len() || seen.len() != messages.len() {
        return Err(format!(
            "{}: {count} message(s), {} Message-IDs in the mbox, expected {}",
            tool.name(),
            seen.len(),
            messages.len()
        ));
    }
    let seeded: usize = messages.iter().map(|m| m.data.len()).sum();
    if (text.len() as u64) < seeded as u64 * 9 / 10 {
        return Err(format!(
            "{}: the mbox is smaller than the mail seeded",
            tool.name()
        ));
    }
    Ok(())
}
