//! How long a task waits after a poll: at its interval after a success,
//! with exponential backoff and jitter after failures, much longer after a
//! rejected login. Pure functions, tested without a clock.

use std::time::Duration;

use crate::error::Kind;
use crate::pipeline::Report;

/// How failed polls are retried: the first retry after `base`, each next
/// one after twice as long, never more than `cap`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

/// A poll that failed (server down, timeout, protocol error…).
pub const POLL_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(30),
    cap: Duration::from_secs(30 * 60),
};

/// A dropped IDLE connection: reconnect soon, since mail is expected within
/// seconds, then back off like a poll.
pub const IDLE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(5),
    cap: Duration::from_secs(30 * 60),
};

/// A rejected login. Servers lock accounts after repeated failures, and a
/// wrong password does not fix itself: wait long, and longer.
pub const AUTH_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(15 * 60),
    cap: Duration::from_secs(6 * 60 * 60),
};

impl Backoff {
    /// The wait after `failures` (≥ 1) failures in a row. `unit` (0 to 1)
    /// is a random draw: the wait is between half and all of the
    /// exponential value ("equal jitter"), so accounts that failed together
    /// do not retry together, and no retry comes sooner than half its due.
    pub fn delay(self, failures: u32, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let full = self
            .base
            .checked_mul(1 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap);
        full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// How a poll of an account (every folder of it) went, for scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The server rejected the credentials.
    AuthFailure,
}

impl Outcome {
    /// The worst of the reports: an authentication failure, else any
    /// failure, else success.
    pub fn of(reports: &[Report]) -> Outcome {
        let failures: Vec<Kind> = reports.iter().filter_map(Report::failure).collect();
        if failures.contains(&Kind::Auth) {
            Outcome::AuthFailure
        } else if failures.is_empty() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

/// When an account is polled next.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    backoff: Backoff,
    failures: u32,
}

impl Schedule {
    pub fn new(interval: Duration, backoff: Backoff) -> Schedule {
        Schedule {
            interval,
            backoff,
            failures: 0,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long to wait after a poll that ended with `outcome`; `unit` is
    /// a random draw between 0 and 1 for the jitter. Success resets the
    /// backoff and waits the interval.
    pub fn after(&mut self, outcome: Outcome, unit: f64) -> Duration {
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.interval
            }
            Outcome::Failure => {
                self.failures += 1;
                self.backoff.delay(self.failures, unit)
            }
            Outcome::AuthFailure => {
                self.failures += 1;
                AUTH_BACKOFF.delay(self.failures, unit)
            }
        }
    }
}

/// A random number between 0 and 1, for jitter.
pub(super) fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

/// `90 s`, `15 min`, `2 h`, for log lines.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 120 {
        format!("{secs} s")
    } else if secs < 2 * 3600 {
        format!("{} min", (secs + 30) / 60)
    } else {
        format!("{:.1} h", secs as f64 / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<Duration> = (1..=8).map(|n| POLL_BACKOFF.delay(n, 1.0)).collect();
        assert_eq!(
            delays,
            [
                Duration::from_secs(30),
                MIN,
                2 * MIN,
                4 * MIN,
                8 * MIN,
                16 * MIN,
                30 * MIN,
                30 * MIN
            ]
        );
        // Absurd failure counts neither overflow nor exceed the cap.
        assert_eq!(POLL_BACKOFF.delay(u32::MAX, 1.0), 30 * MIN);
        assert_eq!(AUTH_BACKOFF.delay(1, 1.0), 15 * MIN);
        assert_eq!(AUTH_BACKOFF.delay(100, 1.0), 6 * 60 * MIN);
    }

    #[test]
    fn jitter_keeps_between_half_and_all_of_the_delay() {
        assert_eq!(POLL_BACKOFF.delay(3, 0.0), MIN);
        assert_eq!(POLL_BACKOFF.delay(3, 0.5), Duration::from_secs(90));
        // Out-of-range draws are clamped.
        assert_eq!(POLL_BACKOFF.delay(3, 7.0), 2 * MIN);
        assert_eq!(POLL_BACKOFF.delay(3, -1.0), MIN);
        for _ in 0..100 {
            let unit = jitter();
            assert!((0.0..=1.0).contains(&unit), "{unit}");
        }
    }

    #[test]
    fn schedule_backs_off_on_failure_and_resets_on_success() {
        let mut schedule = Schedule::new(5 * MIN, POLL_BACKOFF);
        assert_eq!(schedule.after(Outcome::Success, 0.3), 5 * MIN);
        assert_eq!(
            schedule.after(Outcome::Failure, 1.0),
            Duration::from_secs(30)
        );
        assert_eq!(schedule.after(Outcome::Failure, 1.0), MIN);
        assert_eq!(schedule.after(Outcome::Failure, 1.0), 2 * MIN);
        assert_eq!(schedule.failures(), 3);
        assert_eq!(schedule.after(Outcome::Success, 1.0), 5 * MIN);
        assert_eq!(schedule.failures(), 0);
        assert_eq!(
            schedule.after(Outcome::Failure, 1.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_rejected_login_waits_much_longer() {
        let mut schedule = Schedule::new(MIN, POLL_BACKOFF);
        let first = schedule.after(Outcome::AuthFailure, 0.0);
        assert!(first >= 7 * MIN, "{first:?}");
        let second = schedule.after(Outcome::AuthFailure, 0.0);
        assert_eq!(second, 2 * first);
    }

    #[test]
    fn outcome_is_the_worst_report() {
        let ok = Report::default();
        let failed = |kind| Report {
            error: Some(Error::new(kind, "x")),
            ..Report::default()
        };
        assert_eq!(Outcome::of(&[]), Outcome::Success);
        assert_eq!(Outcome::of(&[Report::default()]), Outcome::Success);
        assert_eq!(
            Outcome::of(&[ok, failed(Kind::Connection)]),
            Outcome::Failure
        );
        assert_eq!(
            Outcome::of(&[failed(Kind::Connection), failed(Kind::Auth)]),
            Outcome::AuthFailure
        );
    }

    #[test]
    fn durations_for_humans() {
        assert_eq!(human_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(human_duration(15 * MIN), "15 min");
        assert_eq!(human_duration(6 * 60 * MIN), "6.0 h");
    }
}
