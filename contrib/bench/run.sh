#!/usr/bin/env bash
# Benchmarks one mailfetch poll against a private Dovecot on loopback (plain
# TCP), in these scenarios:
#   mixed           POP3, delete mode: 2000 mixed-size messages (~63 MiB)
#   mbox            mixed, delivered into an mbox file instead of a Maildir
#   big             POP3, delete mode: one 100 MiB message
#   imap-mixed      IMAP (LOGIN), keep mode: the same 2000 messages, into an
#                   empty Maildir with empty state
#   imap-idle-poll  IMAP, keep mode: a poll of a 5000-message INBOX with
#                   nothing new (after an untimed poll that delivered them)
#   imap-big        IMAP, keep mode: one 100 MiB message
#   smtp            POP3, delete mode: the 2000 mixed messages forwarded over
#                   SMTP to a private Postfix on loopback (needs Postfix and
#                   root; skipped otherwise), compared with fetchmail's
#                   smtphost forwarding to the same Postfix
#   accounts        POP3, delete mode: 50 accounts x 40 small messages, one
#                   one-shot run (mailfetch polls 8 accounts at once)
#   idle            mailfetch --daemon with 50 IMAP IDLE connections: CPU
#                   time over 30 s of idling, RSS, new-mail delay
# 3 runs each (5 for imap-idle-poll); it reports the median wall time,
# msg/s, MiB/s and max RSS, and for the IMAP scenarios whether mailfetch
# meets its targets. IMAP mailboxes are seeded once and polled once untimed,
# so that Dovecot has indexed them before the timed runs.
# Also times mpop (POP3 scenarios but smtp) and fetchmail (POP3 scenarios,
# imap-mixed and smtp) on the same mail when they are installed
# (apt-get install mpop fetchmail).
#
# Options are passed on to the benchmark:
#   --scenario mixed|mbox|big|imap-mixed|imap-idle-poll|imap-big|smtp|accounts|idle|pop3|imap|all
#              (default all; pop3 = mixed + big, imap = the three imap-*)
#   --messages N   --runs R   --big-mib M   --idle-messages N   --idle-runs R
#   --accounts N   --account-messages M   --idle-seconds S
#   --only mailfetch|mpop|fetchmail (repeatable)
#
# It works in a temp dir under the current directory (so on its
# filesystem, not on a tmpfs /tmp) and removes it afterwards.
#
# For figures that compare across runs, use a fresh ext4 with a journal,
# the common desktop and server setup, e.g. as root:
#     truncate -s 2G /var/tmp/bench.img && mkfs.ext4 -q /var/tmp/bench.img
#     mkdir -p /mnt/bench && mount -o loop /var/tmp/bench.img /mnt/bench
#     cd /mnt/bench && /path/to/contrib/bench/run.sh
# On an ext4 without a journal, every run gets slower than the last for a
# few minutes: the kernel then scans past recently deleted inodes when it
# creates files, and each run deletes thousands (seen here: 0.5 s → 1.2 s).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"

if ! command -v dovecot >/dev/null && [ ! -x /usr/sbin/dovecot ]; then
    echo "The benchmark needs Dovecot:" >&2
    echo "    sudo apt-get install dovecot-core dovecot-pop3d dovecot-imapd dovecot-lmtpd openssl" >&2
    exit 1
fi

# The benchmark is the workspace member crates/bench; it runs the mailfetch
# binary built next to it.
cargo build --release --package mailfetch --package bench --manifest-path "$repo/Cargo.toml"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac

exec "$target/release/bench" "$@"
