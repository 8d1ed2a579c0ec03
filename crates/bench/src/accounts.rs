//! The `accounts` scenario: many accounts, one one-shot run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::dovecot::Dovecot;

use crate::mail::small_messages;
use crate::mailbox::seed;
use crate::measure::measure;
use crate::options::Opts;
use crate::{MIB, PASSWORD, Tool, fetchmail_command, fleet_user, write_private};

/// `accounts`: N accounts × M small messages, POP3 delete mode, one poll of
/// them all by each tool (mailfetch: one one-shot run polling up to
/// max_connections accounts at once; mpop and fetchmail poll one after
/// another, which is all they can do).
pub fn bench(opts: &Opts, server: &Dovecot, tools: &[Tool], work: &Path) -> Result<(), String> {
    let messages = small_messages(opts.account_messages);
    let bytes: usize = messages.iter().map(|m| m.data.len()).sum::<usize>() * opts.accounts;
    println!(
        "\n== scenario accounts: {} accounts × {} messages ({:.1} MiB in all), POP3 delete mode, one poll",
        opts.accounts,
        messages.len(),
        bytes as f64 / MIB
    );
    for i in 0..opts.accounts {
        server.add_user(&fleet_user(i), PASSWORD);
    }
    let mut results = Vec::new();
    for tool in tools {
        let mut runs = Vec::new();
        for run in 1..=opts.runs {
            let run_dir = work.join(format!("accounts-{}-{run}", tool.name()));
            fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
            let mut maildirs = Vec::new();
            for i in 0..opts.accounts {
                seed(server, &fleet_user(i), &messages)?;
                let maildir = run_dir.join(format!("Maildir-{i:03}"));
                for sub in ["new", "cur", "tmp"] {
                    fs::create_dir_all(maildir.join(sub)).map_err(|e| e.to_string())?;
                }
                maildirs.push(maildir);
            }
            let cmd = fleet_command(tool, opts.accounts, &run_dir, &maildirs, server)?;
            let m = measure(server, tool.name(), &cmd, &run_dir, 0)?;
            for (i, maildir) in maildirs.iter().enumerate() {
                let user = fleet_user(i);
                let left = server.message_count(&user);
                let got = fs::read_dir(maildir.join("new"))
                    .map_err(|e| e.to_string())?
                    .count();
                if left != 0 || got != messages.len() {
                    return Err(format!(
                        "{}: account {i}: {got} delivered, {left} left on the server",
                        tool.name()
                    ));
                }
            }
            println!(
                "  {:<10} run {run}: {:>8.3} s  {:>8.1} msg/s  max RSS {:>7.1} MiB",
                tool.name(),
                m.wall.as_secs_f64(),
                (opts.accounts * messages.len()) as f64 / m.wall.as_secs_f64(),
                m.max_rss_kib as f64 / 1024.0
            );
            let _ = fs::remove_dir_all(&run_dir);
            runs.push(m);
        }
        runs.sort_by_key(|m| m.wall);
        let median = &runs[runs.len() / 2];
        results.push((tool.name(), median.wall, median.max_rss_kib));
    }
    println!("\n== results: accounts (median of {} runs)", opts.runs);
    for (name, wall, rss) in &results {
        println!(
            "  {name:<10} {:>8.3} s  max RSS {:>6.1} MiB",
            wall.as_secs_f64(),
            *rss as f64 / 1024.0
        );
    }
    if let Some((_, wall, _)) = results.iter().find(|(name, ..)| *name == "mailfetch") {
        let ok = wall.as_secs_f64() < 1.0;
        println!(
            "  target: mailfetch under 1 s: {} ({:.3} s)",
            if ok { "MET" } else { "MISSED" },
            wall.as_secs_f64()
        );
    }
    Ok(())
}

/// One configuration with every account of the fleet, for `tool`.
pub fn fleet_command(
    tool: &Tool,
    accounts: usize,
    run_dir: &Path,
    maildirs: &[PathBuf],
    server: &Dovecot,
) -> Result<Command, String> {
    let port = server.pop3_port();
    Ok(match tool {
        Tool::Mailfetch(bin) => {
            let mut text = format!(
                "[general]\nstate_dir = \"{}\"\n{}",
                run_dir.join("state").display(),
                std::env::var("BENCH_GENERAL")
                    .unwrap_or_default()
                    .replace(';', "\n")
            );
            for (i, maildir) in maildirs.iter().enumerate().take(accounts) {
                text.push_str(&format!(
                    "\n[[account]]\nname = \"a{i:03}\"\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\n\
                     port = {port}\ntls = \"none\"\nauth = \"user\"\nusername = \"{}\"\n\
                     password = \"{PASSWORD}\"\ndeliver = \"maildir:{}\"\n",
                    fleet_user(i),
                    maildir.display()
                ));
            }
            let conf = run_dir.join("fetchrc");
            write_private(&conf, &text)?;
            let mut c = Command::new(bin);
            c.arg("-q").arg("-c").arg(&conf);
            c
        }
        Tool::Mpop(bin) => {
            let mut text = String::from("defaults\n");
            for (i, maildir) in maildirs.iter().enumerate().take(accounts) {
                text.push_str(&format!(
                    "\naccount a{i:03}\nhost 127.0.0.1\nport {port}\ntls off\nauth user\n\
                     user {}\npassword {PASSWORD}\nkeep off\nonly_new on\nuidls_file {}\n\
                     delivery maildir {}\n",
                    fleet_user(i),
                    run_dir.join(format!("mpop-uidls-{i:03}")).display(),
                    maildir.display()
                ));
            }
            let conf = run_dir.join("mpoprc");
            write_private(&conf, &text)?;
            let mut c = Command::new(bin);
            c.arg("-q").arg("-C").arg(&conf).arg("--all-accounts");
            c
        }
        Tool::Fetchmail(bin) => {
            let mut text = String::from("set no bouncemail\nset no syslog\n");
            for (i, maildir) in maildirs.iter().enumerate().take(accounts) {
                // Each poll entry needs its own name: fetchmail merges
                // entries for the same host.
                text.push_str(&format!(
                    "poll a{i:03} via 127.0.0.1 service {port} protocol pop3 auth password\n  \
                     user \"{}\" password \"{PASSWORD}\" fetchall nokeep sslproto ''\n  \
                     mda \"cat > {}/new/fm.$$\"\n",
                    fleet_user(i),
                    maildir.display()
                ));
            }
            let conf = run_dir.join("fetchmailrc");
            write_private(&conf, &text)?;
            fetchmail_command(bin, &conf, run_dir)
        }
    })
}
