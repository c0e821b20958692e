#!/usr/bin/env bash
# Prepares a Debian 12 machine for vivarium: the Debian packages in scripts/apt-packages.txt, a Rust
# toolchain if there is none, and the builds. Idempotent; run as root.
#   scripts/setup.sh            packages + release build of `vivarium` and the static guest agent
#   scripts/setup.sh --deps     packages only
set -euo pipefail
. "$(dirname "$0")/common.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."

mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/apt-packages.txt | awk '{print $1}')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: installing the Rust toolchain with rustup" >&2
  apt-get install -y -qq curl ca-certificates build-essential >/dev/null
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi

[ "${1:-}" = "--deps" ] && exit 0
cargo build --quiet --release -p vivarium
scripts/build-agent.sh >/dev/null
install -m 0755 target/release/vivarium /usr/local/bin/vivarium
install -m 0755 target/x86_64-unknown-linux-gnu/release/vivarium-agent /usr/local/bin/vivarium-agent
echo "setup: installed /usr/local/bin/vivarium and /usr/local/bin/vivarium-agent" >&2
