#!/usr/bin/env bash
# Installs the OAuth2 identity provider the tests run on loopback: npm's
# oauth2-mock-server (version pinned by crates/testkit/oauth-mock's
# package-lock.json), wrapped by crates/testkit/oauth-mock/server.mjs.
# Needs node >= 20.19 and npm. Does nothing when it is already installed.
# Called by contrib/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../crates/testkit/oauth-mock"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node/npm not found: the OAuth2 tests will be skipped (they fail under CI=true)" >&2
    exit 0
fi
if [ -d node_modules/oauth2-mock-server ] && cmp -s package-lock.json node_modules/.package-lock.json.installed; then
    exit 0
fi
echo "== installing the OAuth2 mock provider (npm ci)"
npm ci --no-audit --no-fund --loglevel=error
cp package-lock.json node_modules/.package-lock.json.installed
