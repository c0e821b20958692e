#!/usr/bin/env bash
# From a fresh Debian 12 machine to a running sandbox: installs and builds everything
# (scripts/setup.sh), builds the desktop image (cached by the hash of its inputs), starts the runner
# in the background, opens a desktop sandbox and runs a command in it.
# Run it as root or as a sudoer (it re-runs itself with sudo). Re-running it reuses what is there.
set -euo pipefail
. "$(dirname "$0")/common.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="/usr/local/bin:$PATH"
data_dir="${VIVARIUM_DATA_DIR:-/var/lib/vivarium}"
listen="${VIVARIUM_LISTEN:-127.0.0.1:7070}"
log=/var/log/vivarium.log
export VIVARIUM_URL="http://$listen"

# The desktop image is built here, where its progress is visible (cached by the hash of its
# inputs); the runner, which has the same recipe built in, finds it in the cache and imports it on
# the first create that names no image.
echo "quickstart: building the desktop image (about a minute the first time; cached afterwards)" >&2
images/desktop/build.sh >/dev/null

if ! curl -fsS "$VIVARIUM_URL/healthz" >/dev/null 2>&1; then
  echo "quickstart: starting the runner on $listen (log: $log)" >&2
  nohup vivarium serve --listen "$listen" --data-dir "$data_dir" >>"$log" 2>&1 &
  echo $! > /run/vivarium.pid
  for _ in $(seq 1 200); do
    curl -fsS "$VIVARIUM_URL/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "$VIVARIUM_URL/healthz" >/dev/null || { tail -n 30 "$log" >&2; exit 1; }
fi
VIVARIUM_API_KEY="${VIVARIUM_API_KEY:-$(cat "$data_dir/api-key")}"
export VIVARIUM_API_KEY

echo "quickstart: opening a desktop sandbox (the first one imports the image: up to a minute)" >&2
id=$(vivarium run --timeout 3600)
echo "quickstart: desktop sandbox $id is running; in it:" >&2
vivarium exec "$id" -- sh -c 'echo "  $(uname -sr), $(. /etc/os-release; echo $PRETTY_NAME), hostname $(hostname)"'
url_of() { vivarium inspect "$id" | sed -n "s/^ *\"$1\": \"\(.*\)\",\{0,1\}$/\1/p"; }

cat <<MSG

Watch it live (open in a browser on this machine):
  $(url_of vnc_url)
Drive its Chromium with Playwright:  chromium.connect_over_cdp("$(url_of cdp_url)")
Screenshot:  curl -H "Authorization: Bearer \$VIVARIUM_API_KEY" "$VIVARIUM_URL/v1/runs/$id/desktop/screenshot" -o screen.png

The runner listens on $VIVARIUM_URL (log: $log, data: $data_dir).
  export VIVARIUM_API_KEY=\$(${SUDO_USER:+sudo }cat $data_dir/api-key)
  vivarium ls
  vivarium exec $id -- ls /
  vivarium cp $id:/etc/os-release ./os-release
  vivarium rm $id
MSG
