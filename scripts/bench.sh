#!/usr/bin/env bash
# Benchmarks of the notify gateway with the notify-bench load generator, over loopback only.
#
# Usage:
#   scripts/bench.sh quick            small version of every scenario (1,000 clients), < 1 minute
#   scripts/bench.sh full             the runs behind docs/BENCHMARKS.md (current gateway), ~12 minutes
#   scripts/bench.sh idle|fanout|latency|sweep|churn|buffers
#                                     one group of the full set
#   scripts/bench.sh transports       SSE vs WebSocket in one sitting, alternating: idle, latency
#                                     and fan-out at 10,000 clients, $BENCH_REPEAT rounds, ~6 minutes
#   scripts/bench.sh soak [notify-bench soak args...]
#                                     the soak (its own redis-server and gateways), e.g.
#                                     scripts/bench.sh soak --clients 2000 --duration 10m --fault-interval 20s
#   scripts/bench.sh scale [notify-bench scale args...]
#                                     more clients than one process holds: its own gateways and
#                                     client processes on one redis-server started here, e.g.
#                                     scripts/bench.sh scale --clients 100000 --gateways 7 --client-processes 6
#   scripts/bench.sh run <scenario> [notify-bench args...]
#                                     one run against a fresh gateway, e.g.
#                                     scripts/bench.sh run latency --clients 10000 --rate 50 --duration 5s
#
# Every run gets a fresh redis-server-backed gateway process (RSS per connection is only
# meaningful on a fresh process: the allocator keeps memory freed by an earlier run). One
# redis-server on a free port serves the whole invocation. Both are killed on exit.
# Each run appends one JSON line to target/bench/results.jsonl (notify-bench's report plus
# "label" and "gateway_args") and prints notify-bench's human summary.
#
# Environment:
#   BENCH_REPEAT=N          repetitions of each main run in `full` and its groups (default 3)
#   BENCH_SWEEP_RATES="…"   publish rates of the `sweep` group (default 10 … 800 msg/s)
#   BENCH_OUT=path          JSON lines file (default target/bench/results.jsonl)
#   BENCH_LABEL=text        label stored with each JSON line (default "current")
#   BENCH_GATEWAY_ARGS="…"  extra notify-gateway flags for every run
#   BENCH_GATEWAY_BIN=path  use this notify-gateway binary instead of building one
#   BENCH_BENCH_BIN=path    use this notify-bench binary instead of building one
#   BENCH_PEER=node-ws      run against the single-threaded Node `ws` + ioredis peer
#                           (bench/peers/node-ws, npm-installed on first use) instead of a
#                           gateway: same clients, same Redis publishes, same measurements
#   BENCH_PERF=file         record a CPU profile of the gateway (perf record -F 2000 -g) into
#                           file during each run, for BENCH_PERF_SECS (default 5) starting
#                           BENCH_PERF_DELAY seconds (default 4) after the run starts
#
# Every run is bounded: notify-bench gets --timeout, and the scenarios have fixed client,
# message and duration counts. CI never runs this script; CI only runs the generator in a
# tiny correctness scenario (tests/tests/bench_smoke.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
if [ -z "$mode" ] || [ "$mode" = "-h" ] || [ "$mode" = "--help" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
shift || true
case "$mode" in
  quick | full | idle | fanout | latency | sweep | churn | buffers | transports | run | soak | scale) ;;
  *)
    echo "bench.sh: unknown mode '$mode' (see scripts/bench.sh --help)" >&2
    exit 2
    ;;
esac
if [ "$mode" = "run" ] && [ "$#" -lt 1 ]; then
  echo "usage: scripts/bench.sh run <scenario> [notify-bench args...]" >&2
  exit 2
fi

REPEAT="${BENCH_REPEAT:-3}"
OUT="${BENCH_OUT:-target/bench/results.jsonl}"
LABEL="${BENCH_LABEL:-current}"
EXTRA_GATEWAY_ARGS="${BENCH_GATEWAY_ARGS:-}"

command -v redis-server >/dev/null || { echo "bench.sh: redis-server not found" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench.sh: curl not found" >&2; exit 1; }

if [ -n "${BENCH_GATEWAY_BIN:-}" ] && [ -n "${BENCH_BENCH_BIN:-}" ]; then
  GATEWAY_BIN="$BENCH_GATEWAY_BIN"
  BENCH_BIN="$BENCH_BENCH_BIN"
else
  echo "== building release binaries" >&2
  cargo build --release -p notify-gateway -p notify-bench >&2
  GATEWAY_BIN="${BENCH_GATEWAY_BIN:-target/release/notify-gateway}"
  BENCH_BIN="${BENCH_BENCH_BIN:-target/release/notify-bench}"
fi
[ -x "$GATEWAY_BIN" ] || { echo "bench.sh: $GATEWAY_BIN is not executable" >&2; exit 1; }
case "${BENCH_PEER:-}" in
  "") ;;
  node-ws)
    command -v node >/dev/null || { echo "bench.sh: BENCH_PEER=node-ws needs node" >&2; exit 1; }
    [ -d bench/peers/node-ws/node_modules ] ||
      npm install --prefix bench/peers/node-ws --no-audit --no-fund >&2
    ;;
  *)
    echo "bench.sh: unknown BENCH_PEER '$BENCH_PEER' (node-ws)" >&2
    exit 2
    ;;
esac
[ -x "$BENCH_BIN" ] || { echo "bench.sh: $BENCH_BIN is not executable" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
if [ "$mode" = "soak" ]; then
  # The soak starts and restarts its own redis-server and gateways; its JSON verdict is
  # appended to $OUT, its progress lines go to the terminal. Bounded by its --timeout.
  status=0
  "$BENCH_BIN" soak --gateway-bin "$GATEWAY_BIN" "$@" >"$OUT.soak.tmp" || status=$?
  cat "$OUT.soak.tmp" >>"$OUT"
  rm -f "$OUT.soak.tmp"
  echo "== soak verdict appended to $OUT (exit status $status)" >&2
  exit "$status"
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/notify-bench.XXXXXX")"
REDIS_PID=""
GATEWAY_PID=""
PERF_PID=""
BENCH_PID=""

cleanup() {
  local pid
  for pid in "$BENCH_PID" "$PERF_PID" "$GATEWAY_PID" "$REDIS_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port nobody listens on (checked with ss when available, by connecting otherwise).
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 30000))
    if command -v ss >/dev/null; then
      ss -Htan "sport = :$port" 2>/dev/null | grep -q . || { echo "$port"; return; }
    elif ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "bench.sh: no free port found" >&2
  return 1
}

start_redis() {
  REDIS_PORT="$(free_port)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; then
      return
    fi
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench.sh: redis-server did not start on port $REDIS_PORT:" >&2
  cat "$WORK/redis.log" >&2
  exit 1
}

# Starts a fresh gateway (or the $BENCH_PEER server) with the given extra flags and waits (at
# most 10 s) for /readyz.
start_gateway() {
  GATEWAY_PORT="$(free_port)"
  if [ "${BENCH_PEER:-}" = node-ws ]; then
    PORT="$GATEWAY_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
      node bench/peers/node-ws/server.js >"$WORK/gateway.log" 2>&1 &
  else
    # shellcheck disable=SC2086 # EXTRA_GATEWAY_ARGS is a flag list, split on purpose
    RUST_LOG=warn "$GATEWAY_BIN" --listen "127.0.0.1:$GATEWAY_PORT" \
      --redis-url "redis://127.0.0.1:$REDIS_PORT" $EXTRA_GATEWAY_ARGS "$@" \
      >"$WORK/gateway.log" 2>&1 &
  fi
  GATEWAY_PID=$!
  for _ in $(seq 1 200); do
    if curl -sf -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/readyz"; then
      return
    fi
    kill -0 "$GATEWAY_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench.sh: gateway not ready on port $GATEWAY_PORT:" >&2
  cat "$WORK/gateway.log" >&2
  exit 1
}

stop_gateway() {
  if [ -n "$GATEWAY_PID" ]; then
    kill "$GATEWAY_PID" 2>/dev/null || true
    wait "$GATEWAY_PID" 2>/dev/null || true
    GATEWAY_PID=""
  fi
}

FAILED_RUNS=0

# run <gateway flags...> -- <scenario> <notify-bench flags...>
# One bounded notify-bench run against a fresh gateway. The JSON report goes to $OUT (with
# label and gateway flags), the human summary to the terminal. A failing run (notify-bench
# exit status non-zero: loss, corruption, timeout) is counted in FAILED_RUNS and the next
# run goes on.
run() {
  local gateway_args=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    gateway_args+=("$1")
    shift
  done
  [ "${1:-}" = "--" ] && shift
  local scenario="$1"
  shift
  start_gateway "${gateway_args[@]}"
  local all_gateway_args="$EXTRA_GATEWAY_ARGS ${gateway_args[*]}"
  all_gateway_args="$(echo "$all_gateway_args" | sed 's/^ *//; s/ *$//')"
  echo "-- [$LABEL${all_gateway_args:+ | $all_gateway_args}] $scenario $*" >&2
  if [ -n "${BENCH_PERF:-}" ]; then
    (sleep "${BENCH_PERF_DELAY:-4}" &&
      exec perf record -q -F 2000 -g -o "$BENCH_PERF" -p "$GATEWAY_PID" -- sleep "${BENCH_PERF_SECS:-5}") \
      >"$WORK/perf.log" 2>&1 &
    PERF_PID=$!
  fi
  local status=0
  # In the background so that a signal to this script interrupts `wait` and the trap
  # cleans up at once instead of after the run.
  "$BENCH_BIN" "$scenario" \
    --gateway "http://127.0.0.1:$GATEWAY_PORT" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    --gateway-pid "$GATEWAY_PID" \
    "$@" >"$WORK/report.json" 2>"$WORK/summary.txt" &
  BENCH_PID=$!
  wait "$BENCH_PID" || status=$?
  BENCH_PID=""
  if [ -n "$PERF_PID" ]; then
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
  fi
  stop_gateway
  cat "$WORK/summary.txt" >&2
  local line
  line="$(tail -n 1 "$WORK/report.json")"
  if [ "${line:0:1}" = "{" ]; then
    local prefix
    prefix="$(printf '{"label":"%s","gateway_args":"%s",' "$LABEL" "$all_gateway_args")"
    echo "${prefix}${line:1}" >>"$OUT"
  else
    echo "bench.sh: no JSON report from notify-bench (status $status)" >&2
  fi
  if [ "$status" -ne 0 ]; then
    echo "bench.sh: notify-bench exited with status $status" >&2
    FAILED_RUNS=$((FAILED_RUNS + 1))
  fi
}

# The groups of the full set. Each main run is repeated $REPEAT times; the groups are
# written so their runs interleave (10k / 19k, buffer sizes) rather than run back to back.
group_idle() {
  for _ in $(seq 1 "$REPEAT"); do
    run -- idle --clients 10000 --timeout 60s
    run -- idle --clients 19000 --timeout 60s
  done
}

group_fanout() {
  for _ in $(seq 1 "$REPEAT"); do
    run -- fanout --clients 10000 --messages 2000 --timeout 90s
  done
}

# Write buffer trade-off: CPU per delivery vs RSS after a burst.
group_buffers() {
  for _ in $(seq 1 "$REPEAT"); do
    for bytes in 65536 4096 2048; do
      run --ws-write-buffer-bytes "$bytes" -- fanout --clients 10000 --messages 2000 --timeout 90s
    done
  done
}

group_latency() {
  for _ in $(seq 1 "$REPEAT"); do
    run -- latency --clients 10000 --rate 10 --duration 10s --timeout 60s
  done
}

# Rate sweep at 10k clients, 5 s per run, $REPEAT passes over the rates (interleaved, so
# background load spreads over all rates); a run that loses messages still reports its
# percentiles (--allow-loss): the point is the rate where p99 passes 50 ms.
group_sweep() {
  local rates="${BENCH_SWEEP_RATES:-10 20 30 40 50 70 85 100 200 400 800}"
  for _ in $(seq 1 "$REPEAT"); do
    for rate in $rates; do
      run -- latency --clients 10000 --rate "$rate" --duration 5s --timeout 60s --allow-loss
    done
  done
}

group_churn() {
  for _ in $(seq 1 "$REPEAT"); do
    run -- churn --clients 5000 --churn-rate 1000 --rate 50 --duration 10s --timeout 60s
  done
}

# The same runs over both transports, alternating run by run so background load falls on
# both alike (docs/BENCHMARKS.md, "SSE vs WebSocket").
group_transports() {
  local transport
  for _ in $(seq 1 "$REPEAT"); do
    for transport in websocket sse; do
      run -- idle --transport "$transport" --clients 10000 --timeout 60s
    done
    for transport in websocket sse; do
      run -- latency --transport "$transport" --clients 10000 --rate 10 --duration 10s --timeout 60s
    done
    for transport in websocket sse; do
      run -- fanout --transport "$transport" --clients 10000 --messages 2000 --timeout 90s
    done
  done
}

group_quick() {
  run -- idle --clients 1000 --timeout 20s
  run -- fanout --clients 1000 --messages 2000 --timeout 20s
  run -- latency --clients 1000 --rate 10 --duration 3s --timeout 20s
  run -- latency --clients 1000 --rate 100 --duration 3s --timeout 20s
  run -- churn --clients 1000 --churn-rate 100 --rate 20 --duration 3s --timeout 20s
}

start_redis
case "$mode" in
  quick) group_quick ;;
  full)
    for group in idle fanout buffers latency sweep churn; do
      echo "== $group" >&2
      "group_$group"
    done
    ;;
  idle | fanout | buffers | latency | sweep | churn | transports) "group_$mode" ;;
  run) run -- "$@" ;;
  scale)
    # Its own gateways and client processes, on the redis-server started above; bounded by
    # its --timeout. The JSON verdict is appended to $OUT, the summary goes to the terminal.
    status=0
    "$BENCH_BIN" scale --gateway-bin "$GATEWAY_BIN" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
      "$@" >"$WORK/scale.json" || status=$?
    cat "$WORK/scale.json" >>"$OUT"
    [ "$status" -eq 0 ] || FAILED_RUNS=$((FAILED_RUNS + 1))
    ;;
esac

echo "== results appended to $OUT" >&2
if [ "$FAILED_RUNS" -ne 0 ]; then
  echo "bench.sh: $FAILED_RUNS run(s) failed (see the summaries above)" >&2
  exit 1
fi
