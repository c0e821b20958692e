# Sourced by the scripts in this directory.

# Re-runs the calling script as root when it is not: through sudo for a sudoer, with a clear
# message where there is no sudo (a root-only Debian has none, and root needs none). The
# environment that matters to the scripts (CI, RUST_LOG, VIVARIUM_*) is kept; HOME becomes root's
# so a Rust toolchain installed for root is found and nothing is written into the caller's home.
# Usage: as_root "$0" "$@"
as_root() {
    [ "$(id -u)" = 0 ] && return 0
    if ! command -v sudo >/dev/null 2>&1; then
        echo "$(basename "$1"): needs root, and sudo is not installed: run it as root" >&2
        exit 1
    fi
    local keep="CI,RUST_LOG"
    local v
    for v in $(compgen -e | grep '^VIVARIUM_' || true); do keep="$keep,$v"; done
    echo "$(basename "$1"): re-running as root with sudo" >&2
    exec sudo -H --preserve-env="$keep" "$@"
}
