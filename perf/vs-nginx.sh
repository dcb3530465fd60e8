#!/usr/bin/env bash
# perf/vs-nginx.sh: load comparison of the tracker against nginx on the same box.
#
# Both servers get one core (SERVER_CPU, default 0), wrk gets the other (WRK_CPU, default 1),
# both see byte-identical pixel requests (perf/pixel.lua), both log every request (nginx: a
# buffered access log, buffer=64k flush=1s; the tracker: its journal). Runs alternate
# nginx/tracker RUNS times; each run starts a fresh server, warms it up, then measures.
# The primary metric is server CPU time per request, read from /proc/PID/stat.
# With FLOOR=1 (the default when target/release/floor exists) each round also runs `floor`
# (tools/floor): a bare monoio server answering 204 with no parsing, events or journal, the
# floor that the kernel's TCP path and the runtime set for both.
# See perf/README.md for what the columns mean and the caveats.
#
# Usage: perf/vs-nginx.sh [--no-build] [--write] [--no-results] [--help]
#   --no-build    do not run `cargo build --release`; use target/release/tracker as is
#   --write       rewrite the vs-nginx section of RESULTS.md with this run only
#                 (default: append this run to that section)
#   --no-results  do not touch RESULTS.md (stdout only)
# Environment (defaults in brackets):
#   CONNS [32] DURATION [10] (seconds) RUNS [3] WARMUP [2] (seconds, per run, not measured)
#   SERVER_CPU [0] WRK_CPU [1] READY_TIMEOUT [10] (seconds)
#   RUN_RETRIES [2]  a run answered with any non-2xx or socket error is discarded and run
#                 again, at most this many times (the report lists every discarded run)
#   TRACKER_BIN   use this binary, never build
#   TRACKER_ARGS  extra arguments appended to `tracker serve ...` (word-split)
#   TRACKER_STANDIN=nginx  run a second, identical nginx in the tracker's slot (self-test)
#   FLOOR [1 if FLOOR_BIN exists, else 0]  FLOOR_BIN [target/release/floor]
#   REQUIRE_TRACKER=1  fail instead of falling back to nginx only
#   RESULTS_MD [perf/RESULTS.md]  NGINX [nginx]  WRK [wrk]  CARGO [cargo]  KEEP_TMP=1
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$PERF_DIR")
PIXEL_LUA=$PERF_DIR/pixel.lua
# The path in perf/pixel.lua; used for the readiness probe.
PIXEL_PATH='/i?c=12345&cr=678&p=0.25&site=news.example.com&cb=8f3a2c91d4e7b605'

CONNS=${CONNS:-32}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-2}
RUN_RETRIES=${RUN_RETRIES:-2}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
READY_TIMEOUT=${READY_TIMEOUT:-10}
RESULTS_MD=${RESULTS_MD:-$PERF_DIR/RESULTS.md}
NGINX=${NGINX:-nginx}
WRK=${WRK:-wrk}
CARGO=${CARGO:-cargo}
TRACKER_STANDIN=${TRACKER_STANDIN:-}
REQUIRE_TRACKER=${REQUIRE_TRACKER:-0}
KEEP_TMP=${KEEP_TMP:-0}

# Shared helpers (process bookkeeping, nginx config, readiness, flags): perf/lib.sh.
LOG_TAG=vs-nginx
# shellcheck source=perf/lib.sh
source "$PERF_DIR/lib.sh"

CMDLINE=$(command_line perf/vs-nginx.sh "CONNS DURATION RUNS WARMUP SERVER_CPU WRK_CPU TRACKER_BIN TRACKER_ARGS TRACKER_STANDIN FLOOR" "$@")
parse_result_args "${BASH_SOURCE[0]}" "$@"
require_uints CONNS DURATION RUNS WARMUP SERVER_CPU WRK_CPU READY_TIMEOUT RUN_RETRIES
((RUNS >= 1 && DURATION >= 1 && CONNS >= 1)) || die "RUNS, DURATION and CONNS must be >= 1"
((SERVER_CPU != WRK_CPU)) || die "SERVER_CPU and WRK_CPU must differ"
for tool in "$NGINX" "$WRK" taskset curl getconf awk; do
  command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
done
[[ -r $PIXEL_LUA ]] || die "missing $PIXEL_LUA"
[[ -d /sys/devices/system/cpu/cpu$SERVER_CPU && -d /sys/devices/system/cpu/cpu$WRK_CPU ]] ||
  die "CPU $SERVER_CPU or $WRK_CPU does not exist"

CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/vs-nginx.XXXXXX")

lib_init # cleanup traps, NGINX_VERSION
sync # whatever ran before us: its writeback must not land in our first run

# ---------------------------------------------------------------- tracker binary
TRACKER_LABEL=tracker
TRACKER_AVAILABLE=0
TRACKER_NOTE=""
if [[ $TRACKER_STANDIN == nginx ]]; then
  TRACKER_AVAILABLE=1
  TRACKER_LABEL="tracker (stand-in: nginx, self-test)"
  TRACKER_NOTE="SELF-TEST: the tracker slot ran a second, identical nginx ($NGINX_VERSION)."
elif [[ -n $TRACKER_STANDIN ]]; then
  die "TRACKER_STANDIN supports only 'nginx'"
else
  if [[ -z ${TRACKER_BIN:-} ]]; then
    TRACKER_BIN=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/tracker
    if ((DO_BUILD)); then
      log "building the tracker: (cd $REPO_DIR && $CARGO build --release)"
      (cd "$REPO_DIR" && exec "$CARGO" build --release >&2) &
      if ! wait_child $!; then
        TRACKER_NOTE="tracker not run: \`cargo build --release\` failed."
        TRACKER_BIN=""
      fi
    fi
  fi
  if [[ -n $TRACKER_BIN && -z $TRACKER_NOTE ]]; then
    if [[ ! -x $TRACKER_BIN ]]; then
      TRACKER_NOTE="tracker not run: no executable at $TRACKER_BIN."
    else
      # The CLI this script drives: tracker serve --listen ADDR --shards N --journal-dir DIR
      help=$(timeout 5 "$TRACKER_BIN" serve --help 2>&1) || true
      missing=""
      for flag in --listen --shards --journal-dir; do
        [[ $help == *"$flag"* ]] || missing+=" $flag"
      done
      if [[ -n $missing ]]; then
        TRACKER_NOTE="tracker not run: \`$TRACKER_BIN serve --help\` does not list:$missing (the serve CLI is not there yet)."
      else
        TRACKER_AVAILABLE=1
      fi
    fi
  fi
  if ((!TRACKER_AVAILABLE)); then
    ((REQUIRE_TRACKER)) && die "$TRACKER_NOTE"
    log "*** $TRACKER_NOTE Running nginx only. ***"
  fi
fi

# ---------------------------------------------------------------- floor binary
# Built with the tracker (`cargo build --release` builds every binary of the package).
FLOOR_BIN=${FLOOR_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/floor}
if [[ -z ${FLOOR:-} ]]; then
  if [[ -x $FLOOR_BIN ]]; then FLOOR=1; else FLOOR=0; fi
fi
[[ $FLOOR == [01] ]] || die "FLOOR must be 0 or 1, got '$FLOOR'"
((FLOOR == 0)) || [[ -x $FLOOR_BIN ]] || die "FLOOR=1 but there is no executable at $FLOOR_BIN"

# ---------------------------------------------------------------- one run
RUNS_TSV=$TMP/runs.tsv
: >"$RUNS_TSV"
# Runs answered with errors, run again and left out of the results (run_one).
DISCARDED=()


# Runs one measured wrk against KIND; appends a line to RUNS_TSV.
run_one() { # run_one KIND LABEL RUNNO
  local kind=$1 label=$2 n=$3 real=$1
  [[ $kind == tracker && $TRACKER_STANDIN == nginx ]] && real=nginx
  local d=$TMP/run$n-$kind port
  port=$(free_port)
  mkdir -p "$d"
  start_server "$real" "$d" "$port"
  if ! wait_ready "$label" "$SRV_MAIN_PID" "$port" "$d/server.log"; then
    [[ $real == nginx ]] && tail -n 20 "$d/error.log" >&2 2>/dev/null
    die "$label did not become ready; giving up"
  fi
  SRV_PIDS=("$SRV_MAIN_PID")
  if [[ $real == nginx ]]; then
    local c
    for c in $(children_of "$SRV_MAIN_PID"); do
      SRV_PIDS+=("$c")
      STARTED_PIDS+=("$c")
    done
    ((${#SRV_PIDS[@]} >= 2)) || die "nginx master $SRV_MAIN_PID has no worker"
  fi
  local url="http://127.0.0.1:$port/i"
  local -a wrk_cmd=(taskset -c "$WRK_CPU" "$WRK" -t1 "-c$CONNS" "-d${DURATION}s" --latency -s "$PIXEL_LUA" "$url")
  local warm_reqs=0
  if ((WARMUP > 0)); then
    run_wrk "$d/warmup.txt" $((WARMUP + 30)) taskset -c "$WRK_CPU" "$WRK" -t1 "-c$CONNS" "-d${WARMUP}s" -s "$PIXEL_LUA" "$url" ||
      { cat "$d/warmup.txt" >&2; die "warm-up wrk against $label failed"; }
    warm_reqs=$(awk '/^WRK_RESULT/ { for (i = 2; i <= NF; i++) if ($i ~ /^requests=/) { sub(/.*=/, "", $i); print $i } }' "$d/warmup.txt")
  fi

  local t0 t1 s0 s1 w0 w1 c0 c1
  t0=$(cpu_ticks "${SRV_PIDS[@]}")
  c0=$(ctx_switches "${SRV_PIDS[@]}")
  s0=$(cpu_line "$SERVER_CPU")
  w0=$(cpu_line "$WRK_CPU")
  run_wrk "$d/wrk.txt" $((DURATION + 30)) "${wrk_cmd[@]}" ||
    { cat "$d/wrk.txt" >&2; die "wrk against $label failed"; }
  t1=$(cpu_ticks "${SRV_PIDS[@]}")
  c1=$(ctx_switches "${SRV_PIDS[@]}")
  s1=$(cpu_line "$SERVER_CPU")
  w1=$(cpu_line "$WRK_CPU")
  WRK_CMD_SHOWN="${wrk_cmd[*]}"
  WRK_CMD_SHOWN=${WRK_CMD_SHOWN//$port/\$PORT}

  # Graceful stop (nginx: QUIT flushes the buffered access log), then look at the log.
  # One server at a time: nothing of ours is left running after this.
  stop_checked "$real" "after run $n" "$d/server.log" "${SRV_PIDS[@]}"
  local log_bytes log_lines=-1
  if [[ $real == nginx ]]; then
    log_bytes=$(stat -c %s "$d/access.log" 2>/dev/null || echo 0)
    log_lines=$(wc -l <"$d/access.log" 2>/dev/null || echo 0)
  elif [[ $real == floor ]]; then
    log_bytes=0
  else
    log_bytes=$(du -sb "$d/journal" | awk '{print $1}')
  fi
  # The run leaves hundreds of MB of dirty log pages; their writeback (kernel workers, ~30 s
  # later) would land in a later run and steal its CPUs. Measured, delete, and wait for the
  # disk, so each run starts on a quiet box whatever ran before it.
  if ((!KEEP_TMP)); then rm -rf "$d/journal" "$d/access.log"; fi
  sync

  # Parse wrk: the WRK_RESULT line from pixel.lua's done(); the text report as a fallback.
  local parsed
  parsed=$(awk -v dur="$DURATION" '
    function us(v) {   # "95.12us" / "1.23ms" / "2.00s" / "1.50m" -> microseconds
      if (v ~ /us$/) return v + 0
      if (v ~ /ms$/) return v * 1000
      if (v ~ /m$/)  return v * 60e6
      if (v ~ /s$/)  return v * 1e6
      return v + 0
    }
    /^WRK_RESULT/ {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
      have = 1
    }
    /Latency Distribution/ { indist = 1; next }
    indist && $1 == "50%" { t50 = us($2) }
    indist && $1 == "99%" { t99 = us($2); indist = 0 }
    / requests in / { treq = $1 }
    /^Requests\/sec:/ { trps = $2 }
    /Socket errors:/ { gsub(/,/, ""); terr = $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { tnon = $NF }
    END {
      if (have) {
        req = r["requests"]; rps = req / (r["duration_us"] / 1e6)
        p50 = r["p50_us"]; p99 = r["p99_us"]
        sock = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]; non = r["err_status"]
      } else {
        req = treq; rps = trps; p50 = t50; p99 = t99; sock = terr + 0; non = tnon + 0
      }
      if (req == "" || rps == "" || p50 == "" || p99 == "") exit 1
      printf "%d %.1f %.1f %.1f %d %d\n", req, rps, p50, p99, non, sock
    }' "$d/wrk.txt") || { cat "$d/wrk.txt" >&2; die "could not parse wrk output for $label"; }
  local req rps p50 p99 non sock
  read -r req rps p50 p99 non sock <<<"$parsed"
  ((req > 0)) || { cat "$d/wrk.txt" >&2; die "wrk completed 0 requests against $label"; }
  # A server answering errors (a fast 503, a reset) looks cheap per request: such a run would
  # bias the medians and ratios, so it is not entered. The caller runs it again (the tracker's
  # 503s come from a full ring while a disk stall holds its journal drain, which a shared VM
  # disk does now and then); every discarded run is listed in the report.
  if ((non > 0 || sock > 0)); then
    log "run $n against $label had $non non-2xx responses and $sock socket errors: not a measurement, discarded"
    DISCARDED+=("run $n $kind: $non non-2xx, $sock socket errors")
    return 1
  fi

  local cpu_us user_us sys_us srv_busy wrk_busy steal log_bpr sleeps_k
  # µs per request: total, then its user-space and kernel parts (the kernel's TCP path is most of
  # it for both servers, and where a noisy VM's variance shows).
  read -r cpu_us user_us sys_us <<<"$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="$req" 'BEGIN {
    split(a, x, " "); split(b, y, " "); k = hz * n / 1e6
    printf "%.2f %.2f %.2f", (y[1] + y[2] - x[1] - x[2]) / k, (y[1] - x[1]) / k, (y[2] - x[2]) / k }')"
  read -r srv_busy steal <<<"$(awk -v a="$s0" -v b="$s1" 'BEGIN {
    split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; if (t <= 0) t = 1
    printf "%.0f %.1f", 100 * (y[1] - x[1]) / t, 100 * (y[3] - x[3]) / t }')"
  wrk_busy=$(awk -v a="$w0" -v b="$w1" 'BEGIN {
    split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; if (t <= 0) t = 1
    printf "%.0f", 100 * (y[1] - x[1]) / t }')
  # Times the server's threads went to sleep per 1000 requests: a server faster than wrk
  # sleeps between bursts and pays each wake-up in kernel time (perf/RESULTS.md).
  sleeps_k=$(awk -v a="$c0" -v b="$c1" -v n="$req" 'BEGIN {
    split(a, x, " "); split(b, y, " "); printf "%.1f", 1000 * (y[1] - x[1]) / n }')
  # Requests the server saw: readiness probe(s) + warm-up + measured (+ up to CONNS in flight).
  log_bpr=$(awk -v b="$log_bytes" -v n="$((req + warm_reqs + 1))" 'BEGIN { printf "%.0f", b / n }')

  local logdesc
  if [[ $real == nginx ]]; then
    logdesc="access.log $log_lines lines, $log_bytes B"
    if ((log_lines < req)); then
      log "WARNING: $label access log has $log_lines lines for $req measured requests"
    fi
  elif [[ $real == floor ]]; then
    logdesc="no log"
  else
    logdesc="journal $log_bytes B"
  fi
  log "$(printf 'run %d %-8s %9.0f req/s  %6s us/req CPU (user %s sys %s)  p50 %6.0f us  p99 %7.0f us  non2xx %d sock-err %d  core busy srv %s%% (steal %s%%) wrk %s%%  sleeps/1k req %s  %s' \
    "$n" "$kind" "$rps" "$cpu_us" "$user_us" "$sys_us" "$p50" "$p99" "$non" "$sock" "$srv_busy" "$steal" "$wrk_busy" "$sleeps_k" "$logdesc")"
  printf '%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$kind" "$n" "$rps" "$cpu_us" "$p50" "$p99" "$non" "$sock" "$srv_busy" "$wrk_busy" "$log_bpr" "$req" "$steal" \
    "$user_us" "$sys_us" "$sleeps_k" >>"$RUNS_TSV"
}

# ---------------------------------------------------------------- main loop
log "nginx: $NGINX_VERSION; server core $SERVER_CPU, wrk core $WRK_CPU; CONNS=$CONNS DURATION=${DURATION}s RUNS=$RUNS WARMUP=${WARMUP}s"
for ((n = 1; n <= RUNS; n++)); do
  # Alternate which server goes first so slow drifts of the noisy VM hit both alike.
  if ((n % 2 == 1)); then order=(nginx tracker); else order=(tracker nginx); fi
  # The floor runs on either side of the pair, alternating too.
  if ((FLOOR)); then
    if ((n % 2 == 1)); then order+=(floor); else order=(floor "${order[@]}"); fi
  fi
  for kind in "${order[@]}"; do
    case $kind in
      floor) label="floor (tools/floor)" ;;
      nginx) label=nginx ;;
      *) ((TRACKER_AVAILABLE)) || continue; label=$TRACKER_LABEL ;;
    esac
    for ((attempt = 0; ; attempt++)); do
      run_one "$kind" "$label" "$n" && break
      ((attempt < RUN_RETRIES)) || die "run $n against $label had errors in $((attempt + 1)) attempts: giving up"
    done
  done
done

# ---------------------------------------------------------------- report
# stats COLUMN KIND -> "median min max" of that column (1-based, see runs.tsv) for that server
stats() {
  awk -F'\t' -v c="$1" -v k="$2" '$1 == k { print $c }' "$RUNS_TSV" | sort -g |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "nan nan nan"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      print m, v[1], v[NR] }'
}

table_for() { # table_for KIND LABEL
  local kind=$1 label=$2 nruns
  nruns=$(awk -F'\t' -v k="$kind" '$1 == k' "$RUNS_TSV" | wc -l)
  printf '**%s**, %d run(s)\n\n' "$label" "$nruns"
  printf '| metric | median | min | max |\n|---|---:|---:|---:|\n'
  local row col name fmt m lo hi
  for row in "3|req/s|%.0f" "4|server CPU µs/req|%.2f" "14|… of it user space|%.2f" "15|… of it kernel|%.2f" "5|p50 latency µs|%.0f" "6|p99 latency µs|%.0f" \
    "7|non-2xx responses|%.0f" "8|socket errors|%.0f" "9|server core busy %|%.0f" "16|server sleeps per 1000 requests|%.1f" "10|wrk core busy %|%.0f" \
    "11|log bytes/req|%.0f"; do
    IFS='|' read -r col name fmt <<<"$row"
    read -r m lo hi <<<"$(stats "$col" "$kind")"
    # shellcheck disable=SC2059 # fmt is ours
    printf "| %s | $fmt | $fmt | $fmt |\n" "$name" "$m" "$lo" "$hi"
  done
  printf '\n'
}

ratio_line() { # ratio_line COLUMN NUMERATOR_KIND DENOMINATOR_KIND -> "R (median of pairs M, pairs lo–hi)"
  local c=$1 a=$2 b=$3
  awk -F'\t' -v c="$c" -v a="$a" -v b="$b" '
    $1 == a { x[$2] = $c; sx[++na] = $c }
    $1 == b { y[$2] = $c; sy[++nb] = $c }
    function med(s, n,   i, j, t) {
      for (i = 2; i <= n; i++) { t = s[i]; for (j = i - 1; j >= 1 && s[j] > t; j--) s[j + 1] = s[j]; s[j + 1] = t }
      return (n % 2) ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
    }
    END {
      r = med(sy, nb); if (r == 0) { print "n/a"; exit }
      r = med(sx, na) / r
      lo = ""; hi = ""; np = 0
      for (k in x) if ((k in y) && y[k] > 0) {
        q = x[k] / y[k]; sq[++np] = q
        if (lo == "" || q < lo) lo = q; if (hi == "" || q > hi) hi = q
      }
      # The pairs ran back to back, so a slow spell of the host hits both sides of a pair: their
      # median is the more robust figure on a noisy VM; the ratio of medians is kept as headline.
      printf "%.2f (median of per-run pairs %.2f, pairs %.2f–%.2f)\n", r, np ? med(sq, np) : 0, lo, hi
    }' "$RUNS_TSV"
}

REPORT=$TMP/report.md
# shellcheck disable=SC2016 # the backticks are markdown code spans, not command substitution
{
  printf '### %s: tracker vs nginx (perf/vs-nginx.sh)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf -- '- kernel: `%s`; CPU: %s (%s online); nginx: %s; wrk: %s\n' "$(uname -r)" \
    "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(nproc)" "$NGINX_VERSION" \
    "$("$WRK" -v 2>&1 | awk 'NR == 1 { print $2 }')"
  printf -- '- command: `%s` (cwd %s)\n' "$CMDLINE" "$REPO_DIR"
  printf -- '- wrk: `%s`\n' "$WRK_CMD_SHOWN"
  printf '%s\n' "${SERVER_CMDS[@]}" | sort -u | while IFS= read -r c; do
    printf -- '- server: `%s`\n' "$c"
  done
  printf -- '- each run: fresh server, %ss warm-up (not measured), then %ss measured; runs alternate nginx/tracker (and the floor, when run, on either side)\n' "$WARMUP" "$DURATION"
  [[ -n $TRACKER_NOTE ]] && printf -- '- **%s**\n' "$TRACKER_NOTE"
  if ((${#DISCARDED[@]})); then
    printf -- '- discarded and run again (errors are not a measurement): %s\n' "$(IFS=';'; echo "${DISCARDED[*]}" | sed 's/;/; /g')"
  fi
  printf '\n'
  table_for nginx "$NGINX_VERSION (1 worker, access_log buffer=64k flush=1s)"
  if ((TRACKER_AVAILABLE)); then
    if [[ -n $TRACKER_STANDIN ]]; then table_for tracker "$TRACKER_LABEL"; else table_for tracker "$TRACKER_LABEL (--shards 1, journal on)"; fi
    printf -- '- throughput tracker/nginx (req/s): **%s**\n' "$(ratio_line 3 tracker nginx)"
    printf -- '- CPU per request nginx/tracker (>1: tracker is cheaper): **%s**\n' "$(ratio_line 4 nginx tracker)"
    printf '\n'
  fi
  if ((FLOOR)); then
    table_for floor "floor (tools/floor: bare monoio, 204, no parsing, no events, no log)"
    printf -- '- CPU per request nginx/floor (what is there to win at all): **%s**\n' "$(ratio_line 4 nginx floor)"
    if ((TRACKER_AVAILABLE)); then
      printf -- '- CPU per request tracker/floor (the whole pipeline above the floor): **%s**\n' "$(ratio_line 4 tracker floor)"
    fi
    printf '\n'
  fi
} >"$REPORT"

printf '\n'
cat "$REPORT"

# ---------------------------------------------------------------- RESULTS.md
[[ $RESULTS_MODE == none ]] || write_results_section vs-nginx "$REPORT" "$RESULTS_MODE"
