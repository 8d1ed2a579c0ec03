//! Timing one run of a fetcher, with its peak memory.

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use testkit::dovecot::Dovecot;

use crate::tail;

pub struct Measurement {
    pub wall: Duration,
    pub max_rss_kib: i64,
}

/// Runs `cmd` once, timed, with its max RSS, and checks that it exits with
/// `expect`.
pub fn measure(
    server: &Dovecot,
    name: &str,
    cmd: &Command,
    run_dir: &Path,
    expect: i32,
) -> Result<Measurement, String> {
    // ru_maxrss survives exec, so a child forked from this (big) process
    // would report at least our own RSS. A fresh, small copy of this program
    // (`--measure-child`) spawns the tool and reports the tool's own peak.
    let rss_file = run_dir.join("maxrss");
    let _ = fs::remove_file(&rss_file);
    let mut wrapper = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    wrapper
        .arg("--measure-child")
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    wrapper
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let start = Instant::now();
    let mut child = wrapper
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))?;
    // Drain output in threads so a chatty tool never blocks on a pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let (status, _) = wait4(child.id())?;
    let wall = start.elapsed();
    let max_rss_kib = fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("the --measure-child wrapper reported no max RSS")?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out_t.join().unwrap_or_default()),
        String::from_utf8_lossy(&err_t.join().unwrap_or_default())
    );

    if status.code() != Some(expect) {
        return Err(format!(
            "{name} failed ({status}, expected exit code {expect}):\n{output}\nDovecot log tail:\n{}",
            tail(&server.log(), 20)
        ));
    }
    Ok(Measurement { wall, max_rss_kib })
}

/// Waits for the child with wait4(2): exit status and the child's maximum
/// RSS in KiB (Linux: the max over it and the descendants it waited for;
/// a child forked from a big process starts with that process's RSS).
pub fn wait4(pid: u32) -> Result<(ExitStatus, i64), String> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value; pointers are to locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: plain syscall on our own child's pid.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {e}"));
        }
    }
    Ok((ExitStatus::from_raw(status), usage.ru_maxrss))
}

/// What `--measure-child` reports for `true`, the floor: the median over a
/// few runs of its max RSS (KiB) and of the wall time of the whole wrapper.
pub fn wrapper_floor() -> (i64, Duration) {
    let file = std::env::temp_dir().join(format!("mailfetch-bench-rss-{}", std::process::id()));
    let Ok(exe) = std::env::current_exe() else {
        return (0, Duration::ZERO);
    };
    let mut rss = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let ok = Command::new(&exe)
            .arg("--measure-child")
            .arg(&file)
            .arg("true")
            .status()
            .is_ok_and(|s| s.success());
        walls.push(start.elapsed());
        let kib = fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|_| ok)
            .unwrap_or(0);
        rss.push(kib);
    }
    let _ = fs::remove_file(&file);
    rss.sort();
    walls.sort();
    (rss[rss.len() / 2], walls[walls.len() / 2])
}

/// `bench --measure-child RSS_FILE PROGRAM ARGS...`: runs PROGRAM with our
/// stdio, writes its max RSS (KiB) to RSS_FILE, exits with its status.
pub fn measure_child() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    if args.len() < 2 {
        eprintln!("usage: bench --measure-child RSS_FILE PROGRAM [ARGS...]");
        return ExitCode::from(125);
    }
    let child = match Command::new(&args[1]).args(&args[2..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot run {:?}: {e}", args[1]);
            return ExitCode::from(127);
        }
    };
    let (status, max_rss_kib) = match wait4(child.id()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(125);
        }
    };
    if let Err(e) = fs::write(&args[0], format!("{max_rss_kib}\n")) {
        eprintln!("writing {:?}: {e}", args[0]);
        return ExitCode::from(125);
    }
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(sig)) => ExitCode::from(128 + sig as u8),
        _ => ExitCode::from(125),
    }
}
