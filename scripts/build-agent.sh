#!/usr/bin/env bash
# Builds the guest agent as a fully static binary: it runs as PID 1 inside images that may have no
# glibc at all (busybox, alpine). Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release -p vivarium-agent --target "$target" >&2
bin="target/$target/release/vivarium-agent"
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "build-agent: $bin is not static" >&2
  exit 1
fi
echo "$PWD/$bin"
