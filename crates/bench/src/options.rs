//! The command line: which scenarios, how many messages and runs.

pub struct Opts {
    pub scenarios: Vec<Scenario>,
    /// The many-account scenarios (`accounts`, `idle`).
    pub fleet: Vec<Fleet>,
    pub accounts: usize,
    pub account_messages: usize,
    pub idle_seconds: u64,
    pub messages: usize,
    pub runs: usize,
    pub big_mib: usize,
    pub idle_messages: usize,
    pub idle_runs: usize,
    pub only: Vec<String>,
}

/// Scenarios with many accounts, one Dovecot user each.
#[derive(Clone, Copy, PartialEq)]
pub enum Fleet {
    /// One one-shot poll of N accounts × M small messages, POP3 delete mode.
    Accounts,
    /// The daemon with one IDLE connection per account, idle: CPU and RSS.
    Idle,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Scenario {
    Mixed,
    /// `mixed` delivered into an mbox file instead of a Maildir.
    Mbox,
    Big,
    ImapMixed,
    ImapIdlePoll,
    ImapBig,
    Smtp,
}

/// What a scenario's mailfetch median should stay under.
#[derive(Clone, Copy)]
pub enum Target {
    Wall(f64),
    RssMib(f64),
}

impl Scenario {
    pub const POP3: [Scenario; 2] = [Scenario::Mixed, Scenario::Big];
    pub const IMAP: [Scenario; 3] = [
        Scenario::ImapMixed,
        Scenario::ImapIdlePoll,
        Scenario::ImapBig,
    ];

    pub const ALL: [Scenario; 7] = [
        Scenario::Mixed,
        Scenario::Mbox,
        Scenario::Big,
        Scenario::ImapMixed,
        Scenario::ImapIdlePoll,
        Scenario::ImapBig,
        Scenario::Smtp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Smtp => "smtp",
            Scenario::Mixed => "mixed",
            Scenario::Mbox => "mbox",
            Scenario::Big => "big",
            Scenario::ImapMixed => "imap-mixed",
            Scenario::ImapIdlePoll => "imap-idle-poll",
            Scenario::ImapBig => "imap-big",
        }
    }

    /// IMAP in keep mode, else POP3 in delete mode.
    pub fn imap(self) -> bool {
        Scenario::IMAP.contains(&self)
    }

    /// The Dovecot user whose INBOX the scenario uses: each IMAP scenario
    /// has its own, so it never sees another's mail or index.
    pub fn user(self) -> &'static str {
        match self {
            Scenario::Mixed | Scenario::Mbox | Scenario::Big => "bench",
            Scenario::Smtp => "bench-smtp",
            Scenario::ImapMixed => "bench-imap-mixed",
            Scenario::ImapIdlePoll => "bench-imap-idle",
            Scenario::ImapBig => "bench-imap-big",
        }
    }

    pub fn target(self) -> Option<Target> {
        match self {
            Scenario::ImapMixed => Some(Target::Wall(0.6)),
            Scenario::ImapIdlePoll => Some(Target::Wall(0.040)),
            Scenario::ImapBig => Some(Target::RssMib(16.0)),
            Scenario::Mixed | Scenario::Mbox | Scenario::Big | Scenario::Smtp => None,
        }
    }
}

pub fn usage() -> ! {
    eprintln!(
        "usage: bench [--scenario mixed|mbox|big|imap-mixed|imap-idle-poll|imap-big|smtp|accounts|idle|pop3|imap|all]\n             \
         [--messages N] [--runs R] [--big-mib M] [--idle-messages N] [--idle-runs R]\n             \
         [--accounts N] [--account-messages M] [--idle-seconds S]\n             \
         [--only mailfetch|mpop|fetchmail]..."
    );
    std::process::exit(2)
}

pub fn parse_args() -> Opts {
    let mut o = Opts {
        scenarios: Scenario::ALL.to_vec(),
        fleet: vec![Fleet::Accounts, Fleet::Idle],
        accounts: 50,
        account_messages: 40,
        idle_seconds: 30,
        messages: 2000,
        runs: 3,
        big_mib: 100,
        idle_messages: 5000,
        idle_runs: 5,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage())
        };
        match key.as_str() {
            "--scenario" => {
                let v = value();
                o.fleet = match v.as_str() {
                    "accounts" => vec![Fleet::Accounts],
                    "idle" => vec![Fleet::Idle],
                    "all" => vec![Fleet::Accounts, Fleet::Idle],
                    _ => Vec::new(),
                };
                o.scenarios = match v.as_str() {
                    "pop3" => Scenario::POP3.to_vec(),
                    "imap" => Scenario::IMAP.to_vec(),
                    "all" => Scenario::ALL.to_vec(),
                    name => Scenario::ALL
                        .into_iter()
                        .filter(|s| s.name() == name)
                        .collect(),
                };
                if o.scenarios.is_empty() && o.fleet.is_empty() {
                    usage();
                }
            }
            "--messages" => o.messages = value().parse().unwrap_or_else(|_| usage()),
            "--runs" => o.runs = value().parse().unwrap_or_else(|_| usage()),
            "--big-mib" => o.big_mib = value().parse().unwrap_or_else(|_| usage()),
            "--idle-messages" => o.idle_messages = value().parse().unwrap_or_else(|_| usage()),
            "--idle-runs" => o.idle_runs = value().parse().unwrap_or_else(|_| usage()),
            "--only" => o.only.push(value()),
            "--accounts" => o.accounts = value().parse().unwrap_or_else(|_| usage()),
            "--account-messages" => {
                o.account_messages = value().parse().unwrap_or_else(|_| usage())
            }
            "--idle-seconds" => o.idle_seconds = value().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if o.messages == 0 || o.runs == 0 || o.big_mib == 0 || o.idle_messages == 0 || o.idle_runs == 0
    {
        usage();
    }
    o
}
