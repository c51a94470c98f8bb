#!/usr/bin/env bash
# Runs the browser tests: the gateway's client and demo page in real headless Chromium.
#
#   cargo build --workspace --bins && tests/browser/run.sh [test files...]
#
# Env: NOTIFY_GATEWAY_BIN (default target/debug/notify-gateway), CHROMIUM_PATH (default
# /usr/bin/chromium), UPDATE_SCREENSHOTS=1 (also refresh docs/screenshots/). Screenshots land
# in target/screenshots/; docs/screenshots/ gets a copy when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v node >/dev/null 2>&1; then
  echo "run.sh: node (>= 20) is required" >&2
  exit 1
fi

# Dependencies: playwright-core (it never downloads a browser here) and typescript (tsc checks
# client.d.ts). `npm ci` needs the registry unless the packages are cached; an existing
# node_modules holding the locked versions is reused as is.
installed() {
  [ -f "node_modules/$1/package.json" ] \
    && [ "$(node -p "require('./node_modules/$1/package.json').version")" = \
         "$(node -p "require('./package-lock.json').packages['node_modules/$1'].version")" ]
}
if installed playwright-core && installed typescript; then
  echo "run.sh: node_modules up to date"
else
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --prefer-offline
fi

CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: $CHROMIUM missing; installing chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "run.sh: $CHROMIUM not found; install chromium (apt-get install -y chromium) or set CHROMIUM_PATH" >&2
    exit 1
  fi
fi

if [ $# -eq 0 ]; then
  set -- ./*.test.js
fi
exec node --test --test-concurrency=1 "$@"
