#!/usr/bin/env bash
# perf/ci-smoke.sh: the perf step of CI. Runs every criterion bench briefly, then a short
# tracker-vs-nginx run (perf/vs-nginx.sh) and a short open-loop loadgen run against the
# tracker, and prints the numbers and ratios.
#
# It fails only when something is broken, never on a number: a bench that does not build or
# panics, a build failure, a server that does not start, non-2xx responses or socket errors,
# zero throughput, loadgen errors, or journal events != 2xx responses. Ratios and latencies are
# printed for people to read; on a shared 2-vCPU box they move by tens of percent run to run.
#
# Usage: perf/ci-smoke.sh [--help]
# Environment: CARGO [cargo]  CARGO_TARGET_DIR [target]  NO_INSTALL=1 (do not apt-get wrk/nginx)
#   SMOKE_DURATION [2] (s, vs-nginx measured run)  LOADGEN_RATE [2000] (req/s)
# Installs wrk and nginx-light with apt-get when missing (root, Debian), `apt-get update` first
# only if the install fails.
# Run time, measured on this 2-vCPU box (2026-11-26, load average ~6 from other builds,
# CARGO_BUILD_JOBS=1): 5 min 31 s with a cold release/bench build (4 min 10 s of it compiling the
# benches' release dependencies and the LTO link), 25 s when the release build is warm
# (benches ~15 s, vs-nginx ~6 s, loadgen ~3 s). Under 5 minutes on an idle 2-core machine.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$PERF_DIR")
CARGO=${CARGO:-cargo}
SMOKE_DURATION=${SMOKE_DURATION:-2}
LOADGEN_RATE=${LOADGEN_RATE:-2000}
BIN_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  "") ;;
  *) echo "ci-smoke: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

LOG_TAG=ci-smoke
# shellcheck source=perf/lib.sh
source "$PERF_DIR/lib.sh"
T_START=$SECONDS
step() { log "---- $* (t=$((SECONDS - T_START))s)"; }

# ---------------------------------------------------------------- tools
export PATH=$PATH:/usr/sbin
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  [[ ${NO_INSTALL:-0} == 1 ]] && die "wrk or nginx missing and NO_INSTALL=1"
  step "installing wrk and nginx-light"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q wrk nginx-light >&2 || { apt-get update -q >&2 && apt-get install -y -q wrk nginx-light >&2; } ||
    die "could not install wrk and nginx-light with apt-get"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ci-smoke.XXXXXX")
KEEP_TMP=${KEEP_TMP:-0}
NGINX=${NGINX:-nginx}
SERVER_CPU=0
READY_TIMEOUT=10
# The readiness probe is a pixel too (the tracker has no health endpoint on this branch): mark it
# so its event is told apart from loadgen's when the journal is counted.
PIXEL_PATH='/i?c=12345&cr=678&p=0.25&site=ci-smoke-probe&cb=8f3a2c91d4e7b605'
TRACKER_BIN=$BIN_DIR/tracker
lib_init # stops the servers we start and removes TMP on any exit
cd "$REPO_DIR"

# ---------------------------------------------------------------- benches (short mode)
step "criterion benches, short mode"
BENCH_OUT=$TMP/bench.txt
"$CARGO" bench --bench pipeline -- --warm-up-time 1 --measurement-time 2 --noplot 2>&1 | tee "$BENCH_OUT" >&2 ||
  die "cargo bench --bench pipeline failed (see above)"
grep -q 'time:' "$BENCH_OUT" || die "cargo bench printed no measurement"

# ---------------------------------------------------------------- binaries
step "cargo build --release --bins"
"$CARGO" build --release --bins >&2 || die "cargo build --release --bins failed"

# ---------------------------------------------------------------- tracker vs nginx
step "perf/vs-nginx.sh, ${SMOKE_DURATION}s"
VS_OUT=$TMP/vs-nginx.txt
DURATION=$SMOKE_DURATION RUNS=1 WARMUP=1 REQUIRE_TRACKER=1 TRACKER_BIN=$BIN_DIR/tracker FLOOR=1 FLOOR_BIN=$BIN_DIR/floor \
  "$PERF_DIR/vs-nginx.sh" --no-build --no-results >"$VS_OUT" || die "perf/vs-nginx.sh failed"
cat "$VS_OUT"
# Every table row "| non-2xx responses |" and "| socket errors |" must be 0; req/s > 0.
awk -F'|' '
  $2 ~ /non-2xx responses|socket errors/ { for (i = 3; i <= 5; i++) if ($i + 0 != 0) { print "ci-smoke: " $2 "=" $i; bad = 1 } }
  $2 ~ /^ req\/s $/ { n++; if ($3 + 0 <= 0) { print "ci-smoke: zero throughput"; bad = 1 } }
  END { if (n < 3) { print "ci-smoke: expected req/s rows for nginx, the tracker and the floor, found " n; bad = 1 } exit bad }' "$VS_OUT" >&2 ||
  die "vs-nginx: the pipeline is broken (errors or zero throughput above)"

# ---------------------------------------------------------------- loadgen against the tracker
step "loadgen ${LOADGEN_RATE} req/s for 2s against the tracker"
PORT=$(free_port)
start_server tracker "$TMP" "$PORT"
wait_ready tracker "$SRV_MAIN_PID" "$PORT" "$TMP/server.log" || die "tracker did not become ready"
LG_OUT=$TMP/loadgen.txt
timeout 60 "$BIN_DIR/loadgen" --target "127.0.0.1:$PORT" --rate "$LOADGEN_RATE" --duration 2s --connections 16 \
  --hlog "$TMP/smoke.hlog" >"$LG_OUT" || { cat "$LG_OUT" >&2; die "loadgen failed"; }
stop_pids TERM "$SRV_MAIN_PID"
STARTED_PIDS=()
cat "$LG_OUT"
"$BIN_DIR/tracker" journal cat --journal-dir "$TMP/journal" >"$TMP/events.jsonl" || die "tracker journal cat failed"
EVENTS=$(grep -vc '"site":"ci-smoke-probe"' "$TMP/events.jsonl" || true)
awk -v events="$EVENTS" '/^LOADGEN_RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
    found = 1
  }
  END {
    if (!found) { print "ci-smoke: no LOADGEN_RESULT line"; exit 1 }
    if (r["sent"] <= 0) { print "ci-smoke: loadgen sent nothing"; bad = 1 }
    if (r["non2xx"] + r["conn_errors"] + r["timeouts"] + r["protocol_errors"] > 0) { print "ci-smoke: loadgen saw errors"; bad = 1 }
    if (r["all_ok"] != events) { print "ci-smoke: " events " journal events for " r["all_ok"] " 2xx responses"; bad = 1 }
    printf "ci-smoke: loadgen achieved %s of %s req/s asked (%.1f%%), p99 %s us; %d journal events = 2xx responses\n",
      r["achieved_rate"], r["asked_rate"], 100 * r["achieved_rate"] / r["asked_rate"], r["p99_us"], events
    exit bad
  }' "$LG_OUT" >&2 || die "loadgen against the tracker: the pipeline is broken (see above)"

# ---------------------------------------------------------------- summary
step "done"
printf '\nci-smoke summary (numbers are noisy on a shared VM; only breakage fails this step):\n'
awk '/^[a-z_]+\/[^ ]+/ { name = $1; change = 0 } /change:/ { change = 1 } /time:/ && !change { t = $0; sub(/.*time: */, "", t); print "  bench " name ": " t }' "$BENCH_OUT"
grep -E 'throughput tracker/nginx|CPU per request nginx/tracker' "$VS_OUT" | sed 's/^/  /'
printf '  run time: %ds\n' "$((SECONDS - T_START))"
