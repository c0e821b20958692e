#!/usr/bin/env bash
# Build the vivarium desktop image without a Docker engine:
#   mmdebstrap (bookworm, no recommends, no docs/man/locales) -> one zstd layer -> OCI image layout.
# Usage: images/desktop/build.sh [OUT_DIR]
#   OUT_DIR defaults to ${VIVARIUM_CACHE:-/var/cache/vivarium}/desktop-<hash of inputs>.
# A rebuild with the same inputs is a cache hit: the script prints the existing path and exits.
# The last line printed on stdout is always the path of the OCI layout directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
suite="${VIVARIUM_DESKTOP_SUITE:-bookworm}"
mirror="${VIVARIUM_DESKTOP_MIRROR:-http://deb.debian.org/debian}"
arch="amd64"
# Fixed timestamp so the layer tar does not depend on the build time (mmdebstrap honours it).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"

for tool in mmdebstrap zstd sha256sum; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is required (apt-get install -y $tool)" >&2; exit 1; }
done

# Packages: strip comments and blank lines.
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$here/packages.txt")
pkg_csv="$(IFS=,; echo "${packages[*]}")"

# Hash of the inputs: this script, the package list and the snapshot-independent parameters.
inputs_hash="$({ cat "$here/build.sh" "$here/packages.txt" "$here/chromium-policy.json" "$here/xterm-resources"; echo "$suite $mirror $arch $SOURCE_DATE_EPOCH"; } | sha256sum | cut -c1-16)"
cache_root="${VIVARIUM_CACHE:-/var/cache/vivarium}"
out="${1:-$cache_root/desktop-$inputs_hash}"

if [[ -f "$out/index.json" && -f "$out/oci-layout" ]]; then
    echo "cache hit: inputs $inputs_hash" >&2
    echo "$out"
    exit 0
fi

mkdir -p "$(dirname "$out")"
work="$(mktemp -d "$(dirname "$out")/.desktop-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

echo "building desktop rootfs ($suite, ${#packages[@]} packages) ..." >&2
# --mode=root needs root; output straight to a tar so no rootfs directory is kept around.
mmdebstrap --variant=apt --mode=root --arch="$arch" \
    --include="$pkg_csv" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    --customize-hook='echo vivarium-desktop > "$1/etc/hostname"' \
    --customize-hook="mkdir -p \"\$1/etc/chromium/policies/managed\" && cp '$here/chromium-policy.json' \"\$1/etc/chromium/policies/managed/vivarium.json\"" \
    --customize-hook="cat '$here/xterm-resources' >> \"\$1/etc/X11/app-defaults/XTerm\"" \
    --customize-hook='chroot "$1" update-alternatives --quiet --set x-terminal-emulator /usr/bin/lxterminal' \
    "$suite" "$work/rootfs.tar" "$mirror" >&2

mkdir -p "$work/oci/blobs/sha256"
diff_id="$(sha256sum "$work/rootfs.tar" | cut -d' ' -f1)"
rootfs_size="$(stat -c %s "$work/rootfs.tar")"
zstd -q -T0 -3 --rm "$work/rootfs.tar" -o "$work/layer.tar.zst"
layer_digest="$(sha256sum "$work/layer.tar.zst" | cut -d' ' -f1)"
layer_size="$(stat -c %s "$work/layer.tar.zst")"
mv "$work/layer.tar.zst" "$work/oci/blobs/sha256/$layer_digest"

created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
# Image config (OCI image-spec config.json). No Entrypoint/Cmd: the guest agent starts the desktop.
printf '%s' "{\"created\":\"$created\",\"architecture\":\"$arch\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\",\"LANG=C.UTF-8\",\"DISPLAY=:99\"],\"WorkingDir\":\"/root\",\"Labels\":{\"org.vivarium.image\":\"desktop\",\"org.vivarium.inputs\":\"$inputs_hash\"}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\"history\":[{\"created\":\"$created\",\"created_by\":\"images/desktop/build.sh (mmdebstrap $suite)\"}]}" > "$work/config.json"
config_digest="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
config_size="$(stat -c %s "$work/config.json")"
mv "$work/config.json" "$work/oci/blobs/sha256/$config_digest"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+zstd\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}" > "$work/manifest.json"
manifest_digest="$(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
manifest_size="$(stat -c %s "$work/manifest.json")"
mv "$work/manifest.json" "$work/oci/blobs/sha256/$manifest_digest"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_digest\",\"size\":$manifest_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"desktop-$inputs_hash\"}}]}" > "$work/oci/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"

rm -rf "$out"
mv "$work/oci" "$out"
echo "built in $(( $(date +%s) - start )) s: rootfs tar $(( rootfs_size / 1048576 )) MiB, zstd layer $(( layer_size / 1048576 )) MiB" >&2
echo "$out"
