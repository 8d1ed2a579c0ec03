#!/usr/bin/env bash
# Runs mailfetch's whole test suite: unit tests, the fault tests against the
# in-tree fake servers, and the integration tests against a real Dovecot
# and a real Postfix that the tests start themselves on loopback, and an
# OAuth2 identity provider from npm (installed by install-oauth-mock.sh).
#
# Installs Dovecot and Postfix from Debian packages first if it is missing (as root, or
# with sudo when available). Without Dovecot the integration tests are
# skipped with a loud message, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(dovecot-core dovecot-pop3d dovecot-imapd dovecot-lmtpd postfix openssl man-db fetchmail getmail6 mpop procmail python3)
missing=()
sudo=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then sudo=(sudo); else
            echo "Dovecot or Postfix is missing; install them as root: apt-get install ${missing[*]}" >&2
            exit 1
        fi
    fi
    echo "== installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    # "No configuration": the system Postfix stays unconfigured and stopped.
    echo "postfix postfix/main_mailer_type select No configuration" | "${sudo[@]}" debconf-set-selections
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packaged service is not used (each test starts a private instance);
# stop it so it does not sit on the standard ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet dovecot 2>/dev/null; then
    "${sudo[@]}" systemctl stop dovecot || true
fi
if command -v systemctl >/dev/null && systemctl is-active --quiet postfix 2>/dev/null; then
    "${sudo[@]}" systemctl stop postfix || true
fi
if [ "$(id -u)" -eq 0 ] && postfix status >/dev/null 2>&1; then
    postfix stop || true
fi

# The OAuth2 identity provider (npm's oauth2-mock-server) for the OAuth2
# tests.
contrib/install-oauth-mock.sh

# Release mode: the tests move messages of tens of megabytes.
cargo test --release "$@"
