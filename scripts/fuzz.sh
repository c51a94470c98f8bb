#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, starting from the seed corpus in
# fuzz/corpus/<target>/ (inputs found on the way are kept in fuzz/target/corpus/, not in git).
# A crash fails the script and leaves its input in fuzz/artifacts/<target>/ (replay it with
# `cargo +nightly fuzz run <target> <file>`, then add a unit test of it).
#
#   scripts/fuzz.sh                 # 20 s per target (what the test command runs)
#   FUZZ_SECONDS=600 scripts/fuzz.sh payload query
#
# cargo-fuzz needs a nightly toolchain; without `cargo +nightly` the script says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "== fuzz: SKIPPED: no nightly toolchain (\`cargo +nightly\` failed); cargo-fuzz needs nightly (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

cd fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
echo "== fuzz: building ${targets[*]}"
cargo +nightly fuzz build -O
for target in "${targets[@]}"; do
  echo "== fuzz: $target for ${seconds}s"
  mkdir -p "target/corpus/$target"
  log="target/fuzz-$target.log"
  status=0
  cargo +nightly fuzz run -O "$target" "target/corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -max_len=70000 -timeout=10 -rss_limit_mb=2048 \
    >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb))' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "== fuzz: $target FAILED (exit $status); the input is in fuzz/artifacts/$target/, the log in fuzz/$log" >&2
    exit 1
  fi
done
echo "== fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
