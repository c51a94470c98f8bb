#!/usr/bin/env bash
# Checks the dependency tree against deny.toml with cargo-deny: licences, banned and duplicate
# crates, sources (crates.io only), and RUSTSEC advisories when the advisory database can be
# fetched. An unreachable database is reported and skipped: a network failure never fails CI;
# a policy violation does.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
  echo "== deny: installing cargo-deny (from crates.io, locked)"
  started=$(date +%s)
  cargo install --locked cargo-deny
  echo "== deny: cargo-deny installed in $(( $(date +%s) - started ))s"
fi

echo "== deny: licenses bans sources"
cargo deny --log-level error check licenses bans sources

echo "== deny: advisories"
fetch_log=$(mktemp)
trap 'rm -f "$fetch_log"' EXIT
if timeout 120 cargo deny fetch db >"$fetch_log" 2>&1; then
  cargo deny --log-level error check --disable-fetch advisories
else
  echo "== deny: advisories SKIPPED: the advisory database could not be fetched:"
  grep -v '^\s*$' "$fetch_log" | tail -n 3 | sed 's/^/     /'
fi
