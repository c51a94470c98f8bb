#!/usr/bin/env bash
# Stages the build context for deploy/Containerfile: the gateway binary, the shared libraries
# and dynamic loader it links (as ldd lists them), the CA certificates for rediss:// and
# https://, and passwd/group entries for the unprivileged user the image runs as. No base
# image is pulled: the image is FROM scratch plus exactly these files.
#
#   deploy/container/stage-rootfs.sh target/x86_64-unknown-linux-gnu/release/notify-gateway target/container
#   podman build -f deploy/Containerfile -t notify-gateway:0.1.0 target/container
set -euo pipefail

usage() { echo "usage: $0 GATEWAY_BINARY CONTEXT_DIR" >&2; exit 64; }
[ "$#" -eq 2 ] || usage
binary=$1
context=$2
[ -x "$binary" ] || { echo "$0: $binary is not an executable file" >&2; exit 66; }
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$ca_bundle" ] || { echo "$0: no CA bundle at $ca_bundle (set CA_BUNDLE)" >&2; exit 66; }

rootfs="$context/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
cp "$binary" "$rootfs/usr/local/bin/notify-gateway"

# Every library ldd resolves ("name => /path (addr)") and the loader ("/path (addr)"), copied
# to the same path inside the image. A library ldd cannot find is an error, not a gap.
if ldd "$binary" | grep -q "not found"; then
  echo "$0: ldd cannot resolve every library of $binary:" >&2
  ldd "$binary" >&2
  exit 69
fi
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r library; do
    mkdir -p "$rootfs$(dirname "$library")"
    cp -L "$library" "$rootfs$library"
  done

cp -L "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
# The image's only user; the uid matches the Containerfile's USER and the Kubernetes
# securityContext.
echo "notify:x:10001:10001:notify gateway:/nonexistent:/sbin/nologin" > "$rootfs/etc/passwd"
echo "notify:x:10001:" > "$rootfs/etc/group"
echo "staged $(du -sh "$rootfs" | cut -f1) in $rootfs"
