#!/usr/bin/env bash
# perf/latency-at-rate.sh: latency-at-rate curves of the tracker and nginx, with loadgen.
#
# 1. Peak: for each server, a short closed-loop wrk run (perf/pixel.lua, PEAK_DURATION s,
#    WRK_CONNS connections) on a fresh server; the higher of the two peaks is 100%.
# 2. For each step in STEPS (percent of that peak) and each server: a fresh server pinned to
#    SERVER_CPU, then `loadgen --rate R` (open loop, latency from the intended send time) pinned
#    to LOADGEN_CPU for WARMUP + STEP_DURATION s with the same pixel request (perf/pixel.requests).
#    Both servers see the same offered rates, so the curves share an x axis.
# 3. Writes OUT_DIR/{SERVER}-{PCT}.hlog and .hgrm, OUT_DIR/latency-at-rate.csv, then runs
#    perf/plot.py: perf/latency-at-rate.png, perf/latency-percentiles.png and the table in
#    perf/RESULTS.md (section latency-at-rate, replaced by each run).
# The servers: as perf/vs-nginx.sh (perf/lib.sh): nginx 1 worker, `return 204`, access log
# buffer=64k flush=1s; `tracker serve --shards 1` with its journal.
#
# Usage: perf/latency-at-rate.sh [--no-build] [--no-results] [--help]
#   --no-build    do not run `cargo build --release --bins`; use the binaries as they are
#   --no-results  do not touch perf/RESULTS.md or the PNGs in perf/ (OUT_DIR still written)
# Environment (defaults in brackets):
#   STEPS ["10 20 30 40 50 60 70 80 90 100"] (percent of peak)  STEP_DURATION [3] (s, measured)
#   WARMUP [1] (s, per step, not measured)  PEAK_DURATION [3] (s)  WRK_CONNS [32]
#   CONNS [32] (loadgen connections)  SERVER_CPU [0]  LOADGEN_CPU [1]  READY_TIMEOUT [10] (s)
#   SERVERS ["tracker nginx"]  PEAK (req/s: skip the wrk runs and use this)
#   OUT_DIR [perf/out/latency-at-rate]  TRACKER_BIN LOADGEN_BIN (default: $CARGO_TARGET_DIR or
#   target, /release/)  TRACKER_ARGS  NGINX [nginx]  WRK [wrk]  CARGO [cargo]  PYTHON [python3]
#   KEEP_TMP=1  NOTE (one line printed under the plots and in RESULTS.md, e.g. how quiet the box was)
# Run time: about 2 × (PEAK_DURATION + 2) + |STEPS| × |SERVERS| × (WARMUP + STEP_DURATION + ~1.5) s;
# 90 s with the defaults.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$PERF_DIR")
PIXEL_LUA=$PERF_DIR/pixel.lua
PIXEL_REQUESTS=$PERF_DIR/pixel.requests
PIXEL_PATH='/i?c=12345&cr=678&p=0.25&site=news.example.com&cb=8f3a2c91d4e7b605'

STEPS=${STEPS:-10 20 30 40 50 60 70 80 90 100}
STEP_DURATION=${STEP_DURATION:-3}
WARMUP=${WARMUP:-1}
PEAK_DURATION=${PEAK_DURATION:-3}
WRK_CONNS=${WRK_CONNS:-32}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
READY_TIMEOUT=${READY_TIMEOUT:-10}
SERVERS=${SERVERS:-tracker nginx}
OUT_DIR=${OUT_DIR:-$PERF_DIR/out/latency-at-rate}
NGINX=${NGINX:-nginx}
WRK=${WRK:-wrk}
CARGO=${CARGO:-cargo}
PYTHON=${PYTHON:-python3}
KEEP_TMP=${KEEP_TMP:-0}
BIN_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release
TRACKER_BIN=${TRACKER_BIN:-$BIN_DIR/tracker}
LOADGEN_BIN=${LOADGEN_BIN:-$BIN_DIR/loadgen}

CMDLINE=""
for v in STEPS STEP_DURATION WARMUP PEAK_DURATION WRK_CONNS CONNS SERVER_CPU LOADGEN_CPU SERVERS PEAK TRACKER_ARGS; do
  if [[ -n ${!v:-} ]]; then CMDLINE+="$v=$(printf '%q' "${!v}") "; fi
done
CMDLINE+="perf/latency-at-rate.sh"
for a in "$@"; do CMDLINE+=" $(printf '%q' "$a")"; done

DO_BUILD=1
WRITE_RESULTS=1
while (($#)); do
  case $1 in
    --no-build) DO_BUILD=0 ;;
    --no-results) WRITE_RESULTS=0 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "latency-at-rate: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

LOG_TAG=latency-at-rate
# shellcheck source=perf/lib.sh
source "$PERF_DIR/lib.sh"

for v in STEP_DURATION WARMUP PEAK_DURATION WRK_CONNS CONNS SERVER_CPU LOADGEN_CPU READY_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
for s in $STEPS; do
  if ! [[ $s =~ ^[0-9]+$ ]] || ((s < 1 || s > 200)); then die "STEPS: '$s' is not a percentage in 1..200"; fi
done
((SERVER_CPU != LOADGEN_CPU)) || die "SERVER_CPU and LOADGEN_CPU must differ"
for tool in "$NGINX" "$WRK" taskset curl awk; do
  command -v "$tool" >/dev/null || die "'$tool' not found in PATH (apt-get install -y wrk nginx-light)"
done

if ((DO_BUILD)); then
  log "building: (cd $REPO_DIR && $CARGO build --release --bins)"
  (cd "$REPO_DIR" && exec "$CARGO" build --release --bins >&2) &
  wait_child $! || die "cargo build --release --bins failed"
fi
[[ -x $TRACKER_BIN ]] || die "no tracker executable at $TRACKER_BIN (build it, or set TRACKER_BIN)"
[[ -x $LOADGEN_BIN ]] || die "no loadgen executable at $LOADGEN_BIN (build it, or set LOADGEN_BIN)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/latency-at-rate.XXXXXX")
lib_init
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.hlog "$OUT_DIR"/*.hgrm "$OUT_DIR"/latency-at-rate.csv

# fresh_server KIND: starts KIND on a new port in a new dir, waits until it answers. Sets PORT, RUNDIR.
RUN_NO=0
fresh_server() {
  RUN_NO=$((RUN_NO + 1))
  RUNDIR=$TMP/run$RUN_NO-$1
  mkdir -p "$RUNDIR"
  PORT=$(free_port)
  start_server "$1" "$RUNDIR" "$PORT"
  wait_ready "$1" "$SRV_MAIN_PID" "$PORT" "$RUNDIR/server.log" || die "$1 did not become ready"
}
stop_server() { # stop_server KIND
  stop_checked "$1" "" "$RUNDIR/server.log" "$SRV_MAIN_PID"
  [[ $KEEP_TMP == 1 ]] || rm -rf "$RUNDIR"
  # The run's dirty log pages are written back now, not inside the next server's run.
  sync
}

# SERVERS in order for even steps, reversed for odd ones: what one run leaves behind (writeback,
# page cache, the host's mood) does not always land on the same server.
order_for() { # order_for INDEX
  if (($1 % 2 == 0)); then echo "$SERVERS"; else tr ' ' '\n' <<<"$SERVERS" | tac | tr '\n' ' '; fi
}

# ---------------------------------------------------------------- peak (closed loop, wrk)
if [[ -n ${PEAK:-} ]]; then
  log "peak given: $PEAK req/s"
else
  PEAK=0
  for kind in $(order_for 1); do
    fresh_server "$kind"
    run_wrk "$TMP/peak-$kind.txt" $((PEAK_DURATION + 30)) taskset -c "$LOADGEN_CPU" "$WRK" -t1 -c"$WRK_CONNS" \
      -d"${PEAK_DURATION}s" -s "$PIXEL_LUA" "http://127.0.0.1:$PORT/i" || { cat "$TMP/peak-$kind.txt" >&2; die "wrk against $kind failed"; }
    stop_server "$kind"
    p=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$TMP/peak-$kind.txt")
    [[ -n $p && $p -gt 0 ]] || { cat "$TMP/peak-$kind.txt" >&2; die "no req/s from wrk against $kind"; }
    log "peak $kind: $p req/s (wrk, closed loop, $WRK_CONNS connections, ${PEAK_DURATION}s)"
    printf '%s\t%s\n' "$kind" "$p" >>"$TMP/peaks.tsv"
    ((p > PEAK)) && PEAK=$p
  done
fi

# ---------------------------------------------------------------- steps (open loop, loadgen)
CSV=$OUT_DIR/latency-at-rate.csv
echo "server,pct,offered_rate,achieved_rate,p50_us,p90_us,p99_us,p999_us,p9999_us,max_us,mean_us,ok,non2xx,conn_errors,timeouts,protocol_errors,missed,sent_after_end,duration_s,wake_p99_us,wake_max_us" >"$CSV"
LG_SHOWN=""
step=0
for pct in $STEPS; do
  rate=$((PEAK * pct / 100))
  ((rate >= 1)) || rate=1
  step=$((step + 1))
  for kind in $(order_for "$step"); do
    fresh_server "$kind"
    lg=(taskset -c "$LOADGEN_CPU" "$LOADGEN_BIN" --target "127.0.0.1:$PORT" --rate "$rate"
      --duration "${STEP_DURATION}s" --warmup "${WARMUP}s" --connections "$CONNS" --threads 1
      --requests "$PIXEL_REQUESTS" --host t.adserver.example
      --hlog "$OUT_DIR/$kind-$pct.hlog" --hgrm "$OUT_DIR/$kind-$pct.hgrm")
    out=$TMP/lg-$kind-$pct.txt
    timeout $((WARMUP + STEP_DURATION + 60)) "${lg[@]}" >"$out" 2>"$out.err" &
    wait_child $! || { cat "$out" "$out.err" >&2; die "loadgen against $kind at $rate req/s failed"; }
    stop_server "$kind"
    line=$(grep '^LOADGEN_RESULT ' "$out") || { cat "$out" >&2; die "no LOADGEN_RESULT from loadgen"; }
    row=$(awk -v k="$kind" -v p="$pct" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
      printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", k, p, r["asked_rate"], r["achieved_rate"],
        r["p50_us"], r["p90_us"], r["p99_us"], r["p999_us"], r["p9999_us"], r["max_us"], r["mean_us"],
        r["ok"], r["non2xx"], r["conn_errors"], r["timeouts"], r["protocol_errors"], r["missed"], r["sent_after_end"], r["duration_s"], r["wake_p99_us"], r["wake_max_us"] }' <<<"$line")
    echo "$row" >>"$CSV"
    log "$(awk -F, '{ printf "%-8s %3s%% %8s req/s offered, %9s achieved; p50 %8s us  p99 %9s us  p99.9 %9s us  max %9s us  non2xx %s errors %s", $1, $2, $3, $4, $5, $7, $8, $10, $13, $14 + $15 + $16 }' <<<"$row")"
    LG_SHOWN="${lg[*]}"
  done
done
LG_SHOWN=${LG_SHOWN//$LOADGEN_BIN/target/release/loadgen}
LG_SHOWN=${LG_SHOWN//$PORT/\$PORT}
LG_SHOWN=${LG_SHOWN//--rate $rate/--rate \$RATE}
LG_SHOWN=${LG_SHOWN//$OUT_DIR/\$OUT_DIR}
LG_SHOWN=${LG_SHOWN//$REPO_DIR\//}
LG_SHOWN=${LG_SHOWN//-$pct./-\$PCT.}
LG_SHOWN=${LG_SHOWN//$kind-/\$SERVER-}

# ---------------------------------------------------------------- plots and RESULTS.md
PEAKS_DESC="given as PEAK=$PEAK"
[[ -f $TMP/peaks.tsv ]] && PEAKS_DESC=$(awk -F'\t' '{ printf "%s%s %s req/s", (NR > 1 ? ", " : ""), $1, $2 }' "$TMP/peaks.tsv")
META=$OUT_DIR/meta.txt
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "command=$CMDLINE"
  echo "loadgen=$LG_SHOWN"
  echo "peak=$PEAK"
  echo "peaks=$PEAKS_DESC (wrk -t1 -c$WRK_CONNS -d${PEAK_DURATION}s -s perf/pixel.lua, closed loop)"
  echo "host=kernel $(uname -r); $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) ($(nproc) online); $NGINX_VERSION"
  echo "servers=$(printf '%s\n' "${SERVER_CMDS[@]}" | sort -u | sed "s|$TRACKER_BIN|target/release/tracker|g; s|$REPO_DIR/||g" | paste -sd';')"
  echo "note=${NOTE:-}"
  echo "out_dir=${OUT_DIR#"$REPO_DIR"/}"
} >"$META"
if ((WRITE_RESULTS)); then
  "$PYTHON" "$PERF_DIR/plot.py" --dir "$OUT_DIR" --png-dir "$PERF_DIR" --results "$PERF_DIR/RESULTS.md" ||
    die "perf/plot.py failed"
else
  "$PYTHON" "$PERF_DIR/plot.py" --dir "$OUT_DIR" --png-dir "$OUT_DIR" || die "perf/plot.py failed"
fi
log "done: $CSV"
