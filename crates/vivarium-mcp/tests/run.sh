#!/usr/bin/env bash
# End-to-end tests of the MCP server with the official Python MCP client (PyPI `mcp`): over stdio
# (`vivarium mcp`) and over streamable HTTP (`/mcp` on the runner), against a real runner and a real
# desktop sandbox. The pytest fixtures start their own runner; this script prepares what they need.
# Usage: crates/vivarium-mcp/tests/run.sh [pytest args…]   (root, Debian 12, like scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PATH="$HOME/.cargo/bin:$PATH"
venv="${VIVARIUM_MCP_VENV:-/var/tmp/vivarium-mcp-venv}"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r crates/vivarium-mcp/tests/mcp/requirements.txt
cargo build -q -p vivarium
export VIVARIUM_BIN="${VIVARIUM_BIN:-$PWD/target/debug/vivarium}"
export VIVARIUM_AGENT="${VIVARIUM_AGENT:-$(scripts/build-agent.sh)}"
export VIVARIUM_DESKTOP_LAYOUT="${VIVARIUM_DESKTOP_LAYOUT:-$(images/desktop/build.sh | tail -n1)}"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider crates/vivarium-mcp/tests/mcp "$@"
