#!/usr/bin/env bash
# See mailfetch work, end to end, with no outside account: starts a private
# Dovecot on 127.0.0.1 in a temp dir, puts sample messages in a mailbox and
# runs mailfetch on it over POP3 with STLS. The mail lands in
# ./mailfetch-demo/Maildir (relative to the current directory).
#
# Installs Dovecot from Debian packages first if it is missing (as root, or
# with sudo).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

packages=(dovecot-core dovecot-pop3d dovecot-imapd dovecot-lmtpd openssl)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            sudo=(sudo)
            echo "Dovecot is needed for the demo; installing it with sudo: ${missing[*]}"
        else
            echo "The demo needs Dovecot. Install it as root, then run this again:" >&2
            echo "    sudo apt-get install ${missing[*]}" >&2
            echo "(or, as root: apt-get install ${missing[*]})" >&2
            exit 1
        fi
    fi
    echo "==> installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "==> building mailfetch (release)"
cargo build --release --bins --examples --manifest-path "$repo/Cargo.toml"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac

exec "$target/release/examples/demo"
