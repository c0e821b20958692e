#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the Debian packages, builds the static guest agent,
# checks formatting and lints, then runs every test (unit and integration, against real sandboxes
# and a real registry on loopback). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps
export PATH="$HOME/.cargo/bin:$PATH"
export VIVARIUM_AGENT="$(scripts/build-agent.sh)"
cargo fmt --all --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
# playwright-core for the browser tests (never a browser download: they drive Debian's chromium).
command -v npm >/dev/null || apt-get install -y -qq --no-install-recommends npm >/dev/null
npm ci --no-audit --no-fund --prefix tests/e2e >/dev/null
cargo test --workspace --no-fail-fast 2>&1
