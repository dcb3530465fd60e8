#!/usr/bin/env bash
# perf/cpu-at-rate.sh: server CPU per request of the tracker and nginx at the same offered rates.
#
# vs-nginx.sh compares the servers saturated: wrk is closed loop, so each server runs as fast as
# it can and its CPU per request includes how well it batches when always busy. Below
# saturation, where trackers run most of the time, every request may find the server asleep and
# pay a wake-up. This script holds the load equal instead: for each rate in RATES and each of
# RUNS rounds (alternating which server goes first), a fresh server pinned to SERVER_CPU gets
# `loadgen --rate R` (open loop, same pixel request as vs-nginx.sh, perf/pixel.requests) from
# LOADGEN_CPU for WARMUP s (not measured), then again for DURATION s while its CPU time is read
# from /proc. CPU per request = server CPU time / requests answered 2xx in that window.
#
# Usage: perf/cpu-at-rate.sh [--no-build] [--write] [--no-results] [--help]
#   --no-build    use target/release/{tracker,loadgen} as they are
#   --write       rewrite the cpu-at-rate section of RESULTS.md with this run (default: append)
#   --no-results  stdout only
# Environment (defaults in brackets):
#   RATES ["40000 80000 100000"] (req/s)  RUNS [3]  DURATION [8]  WARMUP [2] (seconds)
#   CONNS [32]  SERVER_CPU [0]  LOADGEN_CPU [1]  READY_TIMEOUT [10]  SERVERS ["tracker nginx"]
#   TRACKER_BIN  LOADGEN_BIN  FLOOR_BIN  TRACKER_ARGS  RESULTS_MD  NGINX  CARGO  KEEP_TMP=1
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$PERF_DIR")
PIXEL_REQUESTS=$PERF_DIR/pixel.requests
PIXEL_PATH='/i?c=12345&cr=678&p=0.25&site=news.example.com&cb=8f3a2c91d4e7b605'

RATES=${RATES:-40000 80000 100000}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
READY_TIMEOUT=${READY_TIMEOUT:-10}
SERVERS=${SERVERS:-tracker nginx}
RESULTS_MD=${RESULTS_MD:-$PERF_DIR/RESULTS.md}
NGINX=${NGINX:-nginx}
CARGO=${CARGO:-cargo}
KEEP_TMP=${KEEP_TMP:-0}
BIN_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release
TRACKER_BIN=${TRACKER_BIN:-$BIN_DIR/tracker}
LOADGEN_BIN=${LOADGEN_BIN:-$BIN_DIR/loadgen}
FLOOR_BIN=${FLOOR_BIN:-$BIN_DIR/floor}

LOG_TAG=cpu-at-rate
# shellcheck source=perf/lib.sh
source "$PERF_DIR/lib.sh"

CMDLINE=$(command_line perf/cpu-at-rate.sh "RATES RUNS DURATION WARMUP CONNS SERVER_CPU LOADGEN_CPU SERVERS TRACKER_ARGS" "$@")
parse_result_args "${BASH_SOURCE[0]}" "$@"
require_uints RUNS DURATION WARMUP CONNS SERVER_CPU LOADGEN_CPU READY_TIMEOUT
((RUNS >= 1 && DURATION >= 1 && CONNS >= 1)) || die "RUNS, DURATION and CONNS must be >= 1"
((SERVER_CPU != LOADGEN_CPU)) || die "SERVER_CPU and LOADGEN_CPU must differ"
for r in $RATES; do [[ $r =~ ^[1-9][0-9]*$ ]] || die "RATES: '$r' is not a positive integer"; done
for s in $SERVERS; do [[ $s == tracker || $s == nginx || $s == floor ]] || die "SERVERS: unknown '$s'"; done
for tool in "$NGINX" taskset curl getconf awk python3; do
  command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
done

if ((DO_BUILD)); then
  log "building: (cd $REPO_DIR && $CARGO build --release)"
  (cd "$REPO_DIR" && exec "$CARGO" build --release >&2) &
  wait_child $! || die "cargo build --release failed"
fi
for b in "$TRACKER_BIN" "$LOADGEN_BIN"; do [[ -x $b ]] || die "no executable at $b (build it, or use --no-build with *_BIN)"; done
[[ " $SERVERS " != *" floor "* || -x $FLOOR_BIN ]] || die "no floor executable at $FLOOR_BIN"

CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cpu-at-rate.XXXXXX")
lib_init
sync

ROWS=$TMP/rows.tsv # rate server round cpu_us user_us sys_us ok achieved p99_us
RUN_NO=0
one() { # one SERVER RATE ROUND
  local kind=$1 rate=$2 round=$3 out u0 s0 u1 s1 line
  RUN_NO=$((RUN_NO + 1))
  RUNDIR=$TMP/run$RUN_NO-$kind
  mkdir -p "$RUNDIR"
  PORT=$(free_port)
  start_server "$kind" "$RUNDIR" "$PORT"
  wait_ready "$kind" "$SRV_MAIN_PID" "$PORT" "$RUNDIR/server.log" || die "$kind did not become ready"
  local -a pids=("$SRV_MAIN_PID")
  mapfile -t -O 1 pids < <(children_of "$SRV_MAIN_PID")
  local -a lg=(taskset -c "$LOADGEN_CPU" "$LOADGEN_BIN" --target "127.0.0.1:$PORT" --rate "$rate"
    --warmup 0s --connections "$CONNS" --threads 1 --requests "$PIXEL_REQUESTS" --host t.adserver.example)
  out=$RUNDIR/loadgen
  timeout $((WARMUP + 60)) "${lg[@]}" --duration "${WARMUP}s" >"$out.warm" 2>&1 &
  wait_child $! || { cat "$out.warm" >&2; die "loadgen warm-up against $kind at $rate req/s failed"; }
  read -r u0 s0 < <(cpu_ticks "${pids[@]}")
  timeout $((DURATION + 60)) "${lg[@]}" --duration "${DURATION}s" >"$out" 2>&1 &
  wait_child $! || { cat "$out" >&2; die "loadgen against $kind at $rate req/s failed"; }
  read -r u1 s1 < <(cpu_ticks "${pids[@]}")
  stop_checked "$kind" "after the run at $rate req/s" "" "$SRV_MAIN_PID"
  line=$(grep '^LOADGEN_RESULT ' "$out") || { cat "$out" >&2; die "no LOADGEN_RESULT from loadgen"; }
  # A run with failed requests, non-2xx answers or requests it fell too far behind to send is
  # not a measurement of the same work at the same rate: stop.
  loadgen_failures "$line" >"$out.errors" || die "loadgen against $kind at $rate req/s: $(cat "$out.errors"): not a measurement"
  awk -v k="$kind" -v rate="$rate" -v round="$round" -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v tck="$CLK_TCK" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
      ok = r["ok"] + 0
      if (ok == 0) { print "no 2xx answers" > "/dev/stderr"; exit 1 }
      us = 1e6 / tck / ok
      printf "%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%d\t%s\t%s\t%s\n", rate, k, round, (u + s) * us, u * us, s * us, ok,
        r["achieved_rate"], r["p99_us"], r["non2xx"]
    }' <<<"$line" >>"$ROWS" || die "loadgen against $kind at $rate req/s answered nothing"
  [[ $KEEP_TMP == 1 ]] || rm -rf "$RUNDIR"
  sync
  log "$kind at $rate req/s (round $round): $(tail -n 1 "$ROWS" | cut -f4) µs/request"
}

for rate in $RATES; do
  for ((round = 1; round <= RUNS; round++)); do
    order=$SERVERS
    ((round % 2 == 0)) && order=$(tr ' ' '\n' <<<"$SERVERS" | tac | tr '\n' ' ')
    for kind in $order; do one "$kind" "$rate" "$round"; done
  done
done

# ---------------------------------------------------------------- report
REPORT=$TMP/report.md
python3 - "$ROWS" "$SERVERS" >"$REPORT.table" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
servers = sys.argv[2].split()
rates = sorted({int(r[0]) for r in rows})
def cell(vals):
    return f"{statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"
head = "| offered req/s | " + " | ".join(f"{s} CPU µs/req (user + kernel)" for s in servers) + " | " + \
       " | ".join(f"{s} p99 µs" for s in servers)
ratio = "tracker" in servers and "nginx" in servers
if ratio:
    head += " | nginx/tracker CPU (median of pairs, min–max) |"
print(head)
print("|" + "---:|" * (1 + 2 * len(servers) + (1 if ratio else 0)))
for rate in rates:
    by = {s: {int(r[2]): r for r in rows if int(r[0]) == rate and r[1] == s} for s in servers}
    line = f"| {rate} | "
    cols = []
    for s in servers:
        rs = by[s].values()
        cols.append(cell([float(r[3]) for r in rs]) + f" ({statistics.median(float(r[4]) for r in rs):.2f} + "
                    f"{statistics.median(float(r[5]) for r in rs):.2f})")
    for s in servers:
        cols.append(f"{statistics.median(float(r[8]) for r in by[s].values()):.0f}")
    if ratio:
        pairs = [float(by["nginx"][k][3]) / float(by["tracker"][k][3]) for k in by["tracker"] if k in by["nginx"]]
        cols.append(f"**{statistics.median(pairs):.2f}** ({min(pairs):.2f}–{max(pairs):.2f})")
    print(line + " | ".join(cols) + " |")
non2xx = sum(int(r[9] or 0) for r in rows)
print(f"\nnon-2xx answers in all runs: {non2xx}; achieved/offered below 0.98 in: "
      + (", ".join(f"{r[1]}@{r[0]}#{r[2]}" for r in rows if float(r[7]) < 0.98 * int(r[0])) or "none"))
EOF
# shellcheck disable=SC2016 # backticks are Markdown here
{
  printf '### %s: CPU per request at equal offered rates (perf/cpu-at-rate.sh)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf -- '- command: `%s` (cwd %s)\n' "$CMDLINE" "$REPO_DIR"
  printf -- '- host: kernel %s; %s (%s online); %s\n' "$(uname -r)" \
    "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(nproc)" "$NGINX_VERSION"
  printf -- '- each run: fresh server on CPU %s; `taskset -c %s loadgen --rate R --connections %s --threads 1 --requests perf/pixel.requests --host t.adserver.example` for %s s (warm-up, not measured), then %s s measured; CPU from /proc over the measured run / its 2xx answers; median of %s rounds (min–max)\n' \
    "$SERVER_CPU" "$LOADGEN_CPU" "$CONNS" "$WARMUP" "$DURATION" "$RUNS"
  for c in "${SERVER_CMDS[@]}"; do printf -- '- server: `%s`\n' "$c"; done | sort -u
  printf '\n'
  cat "$REPORT.table"
  printf '\n'
} >"$REPORT"
printf '\n'
cat "$REPORT"

[[ $RESULTS_MODE == none ]] || write_results_section cpu-at-rate "$REPORT" "$RESULTS_MODE"
