//! The `idle` scenario: the daemon holding many IMAP IDLE connections.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::dovecot::Dovecot;

use crate::mail::small_messages;
use crate::options::Opts;
use crate::{PASSWORD, fleet_user, write_private};

/// `idle`: `mailfetch --daemon` with one IDLE connection per account; once
/// every connection idles, the CPU time it uses over `idle_seconds` and its
/// RSS; then how fast one new message arrives, and how fast it stops.
pub fn bench(opts: &Opts, server: &Dovecot, bin: &Path, work: &Path) -> Result<(), String> {
    println!(
        "\n== scenario idle: mailfetch --daemon, {} IMAP accounts with idle = true, idle for {} s",
        opts.accounts, opts.idle_seconds
    );
    let run_dir = work.join("idle");
    fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let maildir = run_dir.join("Maildir");
    let mut text = format!(
        "[general]\nstate_dir = \"{}\"\n",
        run_dir.join("state").display()
    );
    for i in 0..opts.accounts {
        server.add_user(&fleet_user(i), PASSWORD);
        text.push_str(&format!(
            "\n[[account]]\nname = \"a{i:03}\"\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\n\
             port = {}\ntls = \"none\"\nauth = \"user\"\nusername = \"{}\"\n\
             password = \"{PASSWORD}\"\nkeep = true\nidle = true\ndeliver = \"maildir:{}\"\n",
            server.imap_port(),
            fleet_user(i),
            maildir.display()
        ));
    }
    let conf = run_dir.join("fetchrc");
    write_private(&conf, &text)?;
    let log = run_dir.join("daemon.log");
    let mut child = Command::new(bin)
        .arg("--daemon")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("starting mailfetch --daemon: {e}"))?;
    let pid = child.id();
    let result = (|| {
        let started = Instant::now();
        // Every account's first poll logs a summary; IDLE follows at once.
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.lines().filter(|l| l.contains(" new, ")).count() >= opts.accounts {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!("the daemon did not poll every account:\n{text}"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the daemon exited ({status}):\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let ready = started.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let (cpu0, _) = proc_cpu_and_rss(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(opts.idle_seconds));
        let (cpu1, rss_kib) = proc_cpu_and_rss(pid)?;
        let wall = t0.elapsed();
        let hwm_kib = proc_status_kib(pid, "VmHWM:")?;
        let cpu = cpu1 - cpu0;
        println!(
            "  {} accounts polled and idling after {:.2} s",
            opts.accounts,
            ready.as_secs_f64()
        );
        println!(
            "  idle {:.1} s: CPU time {:.3} s ({:.3} % of one core); RSS {:.1} MiB (peak {:.1} MiB)",
            wall.as_secs_f64(),
            cpu,
            100.0 * cpu / wall.as_secs_f64(),
            rss_kib as f64 / 1024.0,
            hwm_kib as f64 / 1024.0
        );
        // One new message, in the last account's INBOX.
        let t = Instant::now();
        server.save(
            &fleet_user(opts.accounts - 1),
            "INBOX",
            &small_messages(1)[0].data,
        );
        while fs::read_dir(maildir.join("new")).map_or(0, |d| d.count()) < 1 {
            if t.elapsed() > Duration::from_secs(30) {
                return Err("the new message was not delivered within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        println!(
            "  a new message was delivered {:.3} s after `doveadm save` started",
            t.elapsed().as_secs_f64()
        );
        let ok = cpu / wall.as_secs_f64() < 0.01 && (hwm_kib as f64 / 1024.0) < 30.0;
        println!(
            "  target: ~0 % CPU and under 30 MiB RSS: {}",
            if ok { "MET" } else { "MISSED" }
        );
        Ok(())
    })();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let t = Instant::now();
    let status = child.wait().map_err(|e| e.to_string())?;
    println!(
        "  SIGTERM: exited with {status} after {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&run_dir);
    result
}

/// (user + system CPU seconds, RSS KiB) of a process, from /proc.
pub fn proc_cpu_and_rss(pid: u32) -> Result<(f64, i64), String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state is field 0, utime 11, stime 12.
    let ticks: f64 = fields[11].parse::<f64>().map_err(|e| e.to_string())?
        + fields[12].parse::<f64>().map_err(|e| e.to_string())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks / hz, proc_status_kib(pid, "VmRSS:")?))
}

pub fn proc_status_kib(pid: u32, key: &str) -> Result<i64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
}
