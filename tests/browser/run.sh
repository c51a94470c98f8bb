#!/usr/bin/env bash
# Runs the browser tests: the gateway's client and demo page in real headless Chromium.
#
#   cargo build --workspace --bins && tests/browser/run.sh [test files...]
#
# Env: NOTIFY_GATEWAY_BIN (default target/debug/notify-gateway), CHROMIUM_PATH (default
# /usr/bin/chromium), UPDATE_SCREENSHOTS=1 (also refresh docs/screenshots/). Screenshots land
# in target/screenshots/; docs/screenshots/ gets a copy when missing.
#
# Needs Node.js >= 20 (playwright-core refuses older) and npm. Missing ones are installed from
# Debian packages (as root); when the system's Node is older (Debian 12 ships 18), a pinned
# Node from the npm registry (the official binary, packaged as node-linux-<arch>) is unpacked
# into tests/browser/.node/ and used for these tests only.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

MIN_NODE_MAJOR=20
NODE_FROM_NPM=22.23.3

node_major() {
  "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: node or npm missing; installing nodejs and npm (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
  else
    echo "run.sh: Node.js >= $MIN_NODE_MAJOR and npm are required (apt-get install -y nodejs npm)" >&2
    exit 1
  fi
fi

if [ "$(node_major node)" -lt "$MIN_NODE_MAJOR" ]; then
  if [ "$(node_major .node/bin/node)" -lt "$MIN_NODE_MAJOR" ]; then
    case "$(uname -m)" in
      x86_64) arch=x64 ;;
      aarch64) arch=arm64 ;;
      *) echo "run.sh: node $(node --version) is older than $MIN_NODE_MAJOR and no Node build is known for $(uname -m)" >&2; exit 1 ;;
    esac
    echo "run.sh: node $(node --version) is older than $MIN_NODE_MAJOR; fetching node-linux-$arch@$NODE_FROM_NPM from the npm registry"
    download="$(mktemp -d)"
    (cd "$download" && npm pack --silent "node-linux-$arch@$NODE_FROM_NPM" >/dev/null)
    tar -xzf "$download"/node-linux-"$arch"-*.tgz -C "$download" package/bin/node
    mkdir -p .node/bin
    mv "$download/package/bin/node" .node/bin/node
    rm -rf "$download"
  fi
  PATH="$PWD/.node/bin:$PATH"
  export PATH
fi
echo "run.sh: node $(node --version)"

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
