//! The results table.

use crate::MIB;
use crate::measure::{Measurement, wrapper_floor};
use crate::options::{Scenario, Target};

pub struct Row {
    pub scenario: Scenario,
    pub tool: &'static str,
    pub messages: usize,
    pub bytes: usize,
    pub runs: Vec<Measurement>,
}

impl Row {
    pub fn median_wall(&self) -> f64 {
        let mut walls: Vec<f64> = self.runs.iter().map(|m| m.wall.as_secs_f64()).collect();
        walls.sort_by(f64::total_cmp);
        walls[walls.len() / 2]
    }

    pub fn median_rss_mib(&self) -> f64 {
        let mut rss: Vec<i64> = self.runs.iter().map(|m| m.max_rss_kib).collect();
        rss.sort();
        rss[rss.len() / 2] as f64 / 1024.0
    }
}

pub fn print_table(rows: &[Row]) {
    println!("\n== results (median of each tool's runs; MiB = message files on the server, LF)");
    println!(
        "{:<14} {:<10} {:>6} {:>9} {:>10} {:>10} {:>9} {:>12}  all runs (s)",
        "scenario", "tool", "msgs", "MiB", "wall (s)", "msg/s", "MiB/s", "max RSS MiB"
    );
    for r in rows {
        let all = r
            .runs
            .iter()
            .map(|m| format!("{:.3}", m.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ");
        let median = r.median_wall();
        // An idle poll transfers no message: no rates.
        let (msg_s, mib_s) = if r.scenario == Scenario::ImapIdlePoll {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.1}", r.messages as f64 / median),
                format!("{:.1}", r.bytes as f64 / MIB / median),
            )
        };
        println!(
            "{:<14} {:<10} {:>6} {:>9.1} {:>10.3} {:>10} {:>9} {:>12.1}  {all}",
            r.scenario.name(),
            r.tool,
            r.messages,
            r.bytes as f64 / MIB,
            median,
            msg_s,
            mib_s,
            r.median_rss_mib()
        );
    }

    let targets: Vec<(&Row, Target)> = rows
        .iter()
        .filter(|r| r.tool == "mailfetch")
        .filter_map(|r| Some((r, r.scenario.target()?)))
        .collect();
    if !targets.is_empty() {
        println!("\n== targets (mailfetch medians)");
        for (r, target) in targets {
            let (what, value, limit, unit) = match target {
                Target::Wall(s) => ("wall", r.median_wall(), s, "s"),
                Target::RssMib(m) => ("max RSS", r.median_rss_mib(), m, "MiB"),
            };
            println!(
                "{:<14} {what:<8} {value:>8.3} {unit:<3} target < {limit} {unit}: {}",
                r.scenario.name(),
                if value < limit { "met" } else { "MISSED" }
            );
        }
    }

    let smtp = |tool: &str| {
        rows.iter()
            .find(|r| r.scenario == Scenario::Smtp && r.tool == tool)
            .map(Row::median_wall)
    };
    if let (Some(ours), Some(theirs)) = (smtp("mailfetch"), smtp("fetchmail")) {
        let speedup = theirs / ours;
        println!(
            "\n== smtp: mailfetch {ours:.3} s, fetchmail {theirs:.3} s: {speedup:.1}x faster \
             (target >= 5x: {})",
            if speedup >= 5.0 { "met" } else { "MISSED" }
        );
    }

    let (floor_rss, floor_wall) = wrapper_floor();
    println!(
        "\nmax RSS is measured through a small wrapper and cannot read below its \
         {:.1} MiB;\nstarting the wrapper and `true` through it takes {:.1} ms \
         (included in every wall time).",
        floor_rss as f64 / 1024.0,
        floor_wall.as_secs_f64() * 1000.0
    );
    println!(
        "mailfetch fsyncs every message (batched) and its state; mpop writes \
         its Maildir;\nfetchmail pipes each message through `sh -c 'cat > FILE'` \
         (it has no Maildir\ndelivery of its own), without fsync. In the smtp scenario both \
         forward over SMTP\nto the same Postfix, which fsyncs its queue file before each 250."
    );
}
