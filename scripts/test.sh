#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests need
# (redis-server, redis-sentinel, Chromium, promtool, HAProxy, Node.js and npm, systemd-analyze,
# podman) when missing, builds the binaries the end-to-end tests spawn,
# runs the Rust tests, a short fuzzing pass and the real-browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli forms the Redis Cluster of tests/tests/cluster.rs.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# promtool checks deploy/prometheus/notify-alerts.yml (tests/tests/monitoring.rs).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# The fleet test puts deploy/haproxy/haproxy.cfg in front of three gateways.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# The browser tests need Node.js >= 20; tests/browser/run.sh fetches a newer one from the npm
# registry when Debian's (18 on Debian 12) is older.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# tests/tests/deploy.rs: the systemd unit (systemd-analyze) and the Containerfile (podman build).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v podman >/dev/null 2>&1 || missing+=(podman)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian packages)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "== building binaries (the end-to-end tests spawn them)"
cargo build --workspace --bins

echo "== Rust tests (unit + end-to-end against real redis-server)"
cargo test --workspace

echo "== fuzzing (short bounded run of every target; scripts/fuzz.sh)"
bash scripts/fuzz.sh

if [ -f tests/browser/run.sh ]; then
  echo "== browser tests (headless Chromium)"
  bash tests/browser/run.sh
fi
