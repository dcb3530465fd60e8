# perf/lib.sh: helpers shared by the perf/ scripts (vs-nginx.sh, cpu-at-rate.sh, latency-at-rate.sh, ci-smoke.sh,
# pgo-build.sh).
# Sourced, not run. The sourcing script sets, before calling anything here:
#   LOG_TAG (prefix of log lines), and before lib_init: TMP (its temp dir), KEEP_TMP,
#   NGINX, SERVER_CPU, READY_TIMEOUT, PIXEL_PATH (readiness probe), TRACKER_BIN / TRACKER_ARGS
#   (start_server tracker), FLOOR_BIN (start_server floor), TRACKER_STANDIN (optional).
# What is here: log/die; process bookkeeping with cleanup on exit (every server started with
# start_server is stopped, also on Ctrl-C); free_port; CPU accounting from /proc; readiness
# polling; the nginx config (1 worker, return 204, buffered access log), start_server, and
# write_results_section (a script's section of RESULTS.md).
# shellcheck shell=bash

log() { printf '[%s] %s\n' "${LOG_TAG:-perf}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${LOG_TAG:-perf}" "$*" >&2; exit 1; }

STARTED_PIDS=() # every server process we started (nginx masters and workers, the tracker)
declare -A EXIT_STATUS=() # pid -> exit status, filled by stop_pids for our own children
# shellcheck disable=SC2034 # used by the sourcing scripts
SRV_PIDS=()     # pids measured for the current server
SRV_MAIN_PID="" # master / main pid
SERVER_CMDS=()  # command lines actually used, for the report

# lib_init: install the cleanup traps and read nginx's version (NGINX_VERSION). Call once TMP exists.
lib_init() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # shellcheck disable=SC2034 # used by the sourcing scripts
  NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
}

# ---------------------------------------------------------------- command line
# The command line as typed, with the environment knobs that change the result, for RESULTS.md.
command_line() { # command_line SCRIPT "VAR..." ARG... -> one line
  local script=$1 vars=$2 v a line=""
  shift 2
  for v in $vars; do
    if [[ -n ${!v:-} ]]; then line+="$v=$(printf '%q' "${!v}") "; fi
  done
  line+=$script
  for a in "$@"; do line+=" $(printf '%q' "$a")"; done
  echo "$line"
}

# The flags of the scripts that write a section of RESULTS.md: --no-build, --write (rewrite the
# section), --no-results, --help (the script's header comment). Sets DO_BUILD and RESULTS_MODE.
parse_result_args() { # parse_result_args SCRIPT_PATH ARG...
  local script=$1
  shift
  DO_BUILD=1 RESULTS_MODE=append
  # shellcheck disable=SC2034 # DO_BUILD and RESULTS_MODE are read by the sourcing script
  while (($#)); do
    case $1 in
      --no-build) DO_BUILD=0 ;;
      --write) RESULTS_MODE=rewrite ;;
      --no-results) RESULTS_MODE=none ;;
      -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$script"; exit 0 ;;
      *) echo "$LOG_TAG: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
  done
}

require_uints() { # require_uints VAR...: each must hold a non-negative integer
  local v
  for v in "$@"; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
  done
}

# ---------------------------------------------------------------- process bookkeeping / cleanup

stop_pids() { # stop_pids SIGNAL PID... : signal, wait up to 5 s, then SIGKILL what is left
  local sig=$1 p i alive
  shift
  (($#)) || return 0
  for p in "$@"; do kill "-$sig" "$p" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    alive=0
    for p in "$@"; do
      if kill -0 "$p" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]]; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.1
  done
  for p in "$@"; do
    if kill -0 "$p" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]]; then
      log "process $p did not stop on SIG$sig within 5 s; sending SIGKILL"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  # Reaps our own children only; their exit statuses stay in EXIT_STATUS for the caller (the
  # tracker exits 1 when it lost acknowledged events: a run that did is not a measurement).
  local st
  for p in "$@"; do
    st=0
    wait "$p" 2>/dev/null || st=$?
    EXIT_STATUS[$p]=$st
  done
}

# stop_checked KIND CONTEXT LOGFILE PID...: stops a server (nginx: QUIT, which flushes its
# access log; the others TERM), forgets our pids, and dies when it was the tracker and it exited
# non-zero: it exits 1 when it lost acknowledged events, so the run is not a measurement. The
# floor has no SIGTERM handler (143) and nginx's status is its own business. LOGFILE (may be
# empty) is shown when it dies.
stop_checked() {
  local kind=$1 context=$2 logf=$3
  shift 3
  if [[ $kind == nginx ]]; then stop_pids QUIT "$@"; else stop_pids TERM "$@"; fi
  STARTED_PIDS=()
  local status=${EXIT_STATUS[$1]:-0}
  if [[ $kind == tracker ]] && ((status != 0)); then
    [[ -n $logf ]] && tail -n 20 "$logf" >&2 2>/dev/null
    die "tracker exited with status $status $context (it exits 1 when it lost acknowledged events): not a measurement"
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n ${CHILD_PID:-} ]]; then stop_pids TERM "$CHILD_PID"; fi
  if ((${#STARTED_PIDS[@]})); then stop_pids TERM "${STARTED_PIDS[@]}"; fi
  if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}

# ---------------------------------------------------------------- helpers
free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! ss -Htln "sport = :$p" | grep -q .; then echo "$p"; return; fi
  done
  die "no free port found"
}

# Sum of utime+stime (clock ticks) over the given pids. /proc/PID/stat of a process covers all
# of its threads (io_uring io-wq/sqpoll workers included). Fields 14 and 15; the comm field
# (2) may contain spaces, so split after the last ')'.
cpu_ticks() { # cpu_ticks PID... -> "user system" clock ticks, summed over the processes
  local p line user=0 sys=0
  local -a f
  for p in "$@"; do
    line=$(<"/proc/$p/stat") || die "process $p vanished during the run"
    read -r -a f <<<"${line##*) }"
    user=$((user + f[11]))
    sys=$((sys + f[12]))
  done
  echo "$user $sys"
}

# Context switches of every thread of the given processes, voluntary (the thread slept: an
# io_uring or epoll wait, a nap) and not, summed. A thread that exits between two reads drops
# out of the second: the counts of a run are a close lower bound, not exact.
ctx_switches() { # ctx_switches PID... -> "voluntary involuntary"
  cat "${@/#//proc/}"/task/*/status 2>/dev/null |
    awk '/^voluntary_ctxt_switches/ { v += $2 } /^nonvoluntary_ctxt_switches/ { n += $2 } END { print v + 0, n + 0 }'
}

# Long-running children (cargo, wrk) run in the background and are waited for, so that a signal to
# this script is handled at once (bash defers traps while a foreground child runs); cleanup stops
# CHILD_PID if it is still set.
CHILD_PID=""
wait_child() { # wait_child PID: wait for a background child, return its status
  local rc=0
  CHILD_PID=$1
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}
run_wrk() { # run_wrk OUTFILE TIMEOUT CMD...
  local out=$1 limit=$2
  shift 2
  timeout "$limit" "$@" >"$out" 2>&1 &
  wait_child $!
}

# "busy_jiffies total_jiffies steal_jiffies" for one CPU from /proc/stat. Busy is time the CPU
# ran something of this guest (user, nice, system, irq, softirq); idle, iowait and steal (time
# the host ran someone else while this vCPU wanted to run) are not.
cpu_line() {
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6 - $9, t, $9 }' /proc/stat
}

children_of() { pgrep -P "$1" || true; }

# loadgen_failures LINE: LINE is loadgen's `LOADGEN_RESULT k=v ...`. Prints what went wrong and
# returns 1 when the run is not all 2xx at the asked schedule: non-2xx answers, connection
# errors, timeouts, bad responses, requests never sent (behind schedule), or no 2xx at all.
loadgen_failures() {
  awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
         bad = r["non2xx"] + r["conn_errors"] + r["timeouts"] + r["protocol_errors"] + r["missed"]
         if (bad > 0 || r["ok"] + 0 == 0) {
           printf "%d 2xx, %d non-2xx, %d connection errors, %d timeouts, %d bad responses, %d never sent (behind schedule)\n", r["ok"], r["non2xx"], r["conn_errors"], r["timeouts"], r["protocol_errors"], r["missed"]
           exit 1
         } }' <<<"$1"
}

# Poll http://127.0.0.1:PORT/i until it answers 2xx. Bounded by READY_TIMEOUT.
wait_ready() { # wait_ready NAME PID PORT LOGFILE
  local name=$1 pid=$2 port=$3 logf=$4 code=000 i
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null && code=0 || code=$?
      log "$name exited (status $code) before it became ready; last lines of $logf:"
      tail -n 20 "$logf" >&2 || true
      return 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --connect-timeout 0.5 --max-time 1 \
      "http://127.0.0.1:$port$PIXEL_PATH" 2>/dev/null) || true
    [[ $code == 2?? ]] && return 0
    sleep 0.1
  done
  log "$name did not answer 2xx on http://127.0.0.1:$port$PIXEL_PATH within ${READY_TIMEOUT}s (last HTTP code: $code); last lines of $logf:"
  tail -n 20 "$logf" >&2 || true
  return 1
}

# ---------------------------------------------------------------- nginx

write_nginx_conf() { # write_nginx_conf DIR PORT
  local d=$1 port=$2 k AFFINITY_MASK=1
  for ((k = 0; k < SERVER_CPU; k++)); do AFFINITY_MASK+=0; done
  mkdir -p "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
# generated by perf/lib.sh (write_nginx_conf)
daemon off;
master_process on;
user $(id -un) $(id -gn);
worker_processes 1;
worker_cpu_affinity $AFFINITY_MASK;
pid $d/nginx.pid;
error_log $d/error.log warn;

events {
    worker_connections 4096;
    use epoll;
}

http {
    # combined + cookie + request time: \$request carries the full query string.
    log_format pixel '\$remote_addr - \$remote_user [\$time_local] "\$request" \$status '
                     '\$body_bytes_sent "\$http_referer" "\$http_user_agent" '
                     '"\$http_cookie" \$request_time';
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server_tokens off;
    client_body_temp_path $d/tmp/client;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;

    server {
        listen 127.0.0.1:$port backlog=4096;
        server_name _;
        location = /i {
            access_log $d/access.log pixel buffer=64k flush=1s;
            return 204;
        }
        location / {
            return 404;
        }
    }
}
EOF
}


start_server() { # start_server KIND DIR PORT ; sets SRV_PIDS SRV_MAIN_PID
  local kind=$1 d=$2 port=$3
  local -a cmd
  if [[ $kind == nginx ]]; then
    write_nginx_conf "$d" "$port"
    "$NGINX" -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$d/server.log" 2>&1 ||
      { cat "$d/server.log" >&2; die "generated nginx config is invalid ($d/nginx.conf)"; }
    cmd=(taskset -c "$SERVER_CPU" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log")
  elif [[ $kind == floor ]]; then
    cmd=(taskset -c "$SERVER_CPU" "$FLOOR_BIN" "127.0.0.1:$port")
  else
    mkdir -p "$d/journal"
    # shellcheck disable=SC2206 # TRACKER_ARGS is meant to be word-split
    # The admin listener on a free port too: the embedded default (127.0.0.1:9090) may be held
    # by anything else on the box (another tracker, a Prometheus), which would fail the start.
    cmd=(taskset -c "$SERVER_CPU" "$TRACKER_BIN" serve --listen "127.0.0.1:$port" --shards 1
      --admin-listen 127.0.0.1:0 --journal-dir "$d/journal" ${TRACKER_ARGS:-})
  fi
  "${cmd[@]}" >>"$d/server.log" 2>&1 &
  SRV_MAIN_PID=$!
  STARTED_PIDS+=("$SRV_MAIN_PID")
  # Record the command with placeholders so it reads the same for every run.
  local shown="${cmd[*]}"
  shown=${shown//$d/\$RUNDIR}
  shown=${shown//$port/\$PORT}
  SERVER_CMDS+=("$shown")
}

# ---------------------------------------------------------------- RESULTS.md
# Puts REPORT into the NAME section of RESULTS_MD, between `<!-- NAME:begin -->` and
# `<!-- NAME:end -->` (added at the end when missing): replacing what is there (MODE rewrite)
# or after it (MODE append).
# shellcheck disable=SC2153 # RESULTS_MD is set by the sourcing script
write_results_section() { # write_results_section NAME REPORT MODE
  local name=$1 report=$2 mode=$3 begin end
  begin="<!-- $name:begin -->"
  end="<!-- $name:end -->"
  if [[ ! -f $RESULTS_MD ]]; then
    printf '# tracker perf results\n\nWritten by the scripts in perf/ (see perf/README.md). Newest entries last.\n\n' >"$RESULTS_MD"
  fi
  if ! grep -qF "$begin" "$RESULTS_MD" || ! grep -qF "$end" "$RESULTS_MD"; then
    printf '\n## %s\n\n%s\n%s\n' "$name" "$begin" "$end" >>"$RESULTS_MD"
  fi
  awk -v b="$begin" -v e="$end" -v rep="$report" -v mode="$mode" '
    function emit(   l) { while ((getline l < rep) > 0) print l; close(rep) }
    $0 == b { print; inside = 1; next }
    $0 == e { emit(); print; inside = 0; next }
    inside && mode == "rewrite" { next }
    { print }' "$RESULTS_MD" >"$TMP/results.md.new"
  cat "$TMP/results.md.new" >"$RESULTS_MD"
  if [[ $mode == rewrite ]]; then log "rewrote the $name section of $RESULTS_MD"; else log "appended to the $name section of $RESULTS_MD"; fi
}
