#!/usr/bin/env bash
# Builds the guest agent as a fully static binary: it runs as PID 1 inside images that may have no
# glibc at all (busybox, alpine). Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
# JPEG screenshots use libjpeg-turbo: link Debian's static libturbojpeg.a (libturbojpeg0-dev).
# .cargo/config.toml sets the same; exported here so the agent build never depends on that file.
export TURBOJPEG_SOURCE=explicit TURBOJPEG_STATIC=1 \
  TURBOJPEG_LIB_DIR=/usr/lib/x86_64-linux-gnu TURBOJPEG_INCLUDE_DIR=/usr/include
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release -p vivarium-agent --target "$target" >&2
bin="target/$target/release/vivarium-agent"
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "build-agent: $bin is not static" >&2
  exit 1
fi
echo "$PWD/$bin"
