#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the Debian packages, builds the static guest agent,
# checks formatting and lints, then runs every suite against real sandboxes, a real registry on
# loopback and real desktops: Rust (unit + end-to-end), Python SDK (pytest), TypeScript SDK (node
# --test). Every suite runs even when an earlier one fails; the exit status says whether all passed.
# Run it as root or as a sudoer (it re-runs itself with sudo) on Debian 12.
set -euo pipefail
. "$(dirname "$0")/common.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."
scripts/setup.sh --deps
export PATH="$HOME/.cargo/bin:$PATH"
export VIVARIUM_AGENT="$(scripts/build-agent.sh)"
cargo fmt --all --check
cargo clippy --quiet --workspace --all-targets -- -D warnings

# Test-only tools, from the registries by name: a Python venv (SDK, its tests, the MCP client, the
# OpenAPI validator, schemathesis) and playwright-core (never a browser download: tests drive
# Debian's chromium).
venv=/var/tmp/vivarium-test-venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q -e 'sdk/python[test]' 'openapi-spec-validator>=0.7,<0.8' \
  'schemathesis>=4.32,<5'
export VIVARIUM_OAS_VALIDATOR="$venv/bin/openapi-spec-validator"
export VIVARIUM_SCHEMATHESIS="$venv/bin/schemathesis"
export VIVARIUM_TEST_PYTHON="$venv/bin/python"
command -v npm >/dev/null || apt-get install -y -qq --no-install-recommends npm >/dev/null
npm ci --no-audit --no-fund --prefix tests/e2e >/dev/null
npm ci --no-audit --no-fund --prefix sdk/typescript >/dev/null

# The desktop image is built once (cached by the hash of its inputs) before the suites need it.
export VIVARIUM_DESKTOP_LAYOUT="$(images/desktop/build.sh | tail -n 1)"
cargo build --quiet -p vivarium
export VIVARIUM_BIN="$PWD/target/debug/vivarium"
# The developer's build, as the README describes it: sdk/python/tests/test_standalone.py starts
# this runner with nothing but a data dir and a port.
cargo build --quiet --release
export VIVARIUM_RELEASE_BIN="$PWD/target/release/vivarium"

status=0
cargo test --workspace --no-fail-fast 2>&1 || status=1
"$venv/bin/pytest" -q sdk/python/tests 2>&1 || status=1
crates/vivarium-mcp/tests/run.sh 2>&1 || status=1
{ npm run --silent --prefix sdk/typescript build && npm test --prefix sdk/typescript; } 2>&1 || status=1
exit $status
