#!/usr/bin/env bash
# Builds release binaries and runs a benchmark: `bench/run.sh sandbox` (default).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p vivarium -p vivarium-bench
agent=$(scripts/build-agent.sh)
exec target/release/vivarium-bench --vivarium target/release/vivarium --agent "$agent" "${@:-sandbox}"
