#!/usr/bin/env bash
# Cost of the two acknowledgement modes on one shard: `received` (GET /i answers after the ring
# push) vs `logged` (GET /cv answers after the drain put the event in the mmapped segment).
# Same request bytes apart from the target, same load; server on SERVER_CPU, wrk on WRK_CPU.
# Prints server CPU µs per request, req/s, p50 and p99 for each, RUNS times, alternating.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${TRACKER_BIN:-$root/target/release/tracker}
RUNS=${RUNS:-3} DURATION=${DURATION:-5} CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0} WRK_CPU=${WRK_CPU:-1}
tck=$(getconf CLK_TCK)
tmp=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The default config with the dedup window off: wrk repeats one request, and every repeat of a
# conversion's order id would otherwise be answered as a duplicate without reaching the journal.
sed 's/^window_ms = .*/window_ms = 0/' "$root/config/tracker.toml" >"$tmp/tracker.toml"
grep -q '^window_ms = 0$' "$tmp/tracker.toml" || { echo "ack-cost: could not turn dedup off in the config" >&2; exit 1; }

one() { # $1 = label, $2 = target
  rm -rf "$tmp/j"
  taskset -c "$SERVER_CPU" "$BIN" serve --config "$tmp/tracker.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --shards 1 --journal-dir "$tmp/j" 2>"$tmp/err" &
  pid=$!
  local addr=""
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/^tracker: listening on \([^ ]*\).*/\1/p' "$tmp/err")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "tracker did not start: $(cat "$tmp/err")" >&2; exit 1; }
  PIXEL_PATH="$2" taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d2s -s "$here/pixel.lua" "http://$addr/" >/dev/null
  local t0; t0=$(cpu_ticks "$pid")
  local out; out=$(PIXEL_PATH="$2" taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$here/pixel.lua" "http://$addr/")
  local t1; t1=$(cpu_ticks "$pid")
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  local line; line=$(grep '^WRK_RESULT' <<<"$out")
  field() { local v=${line#*" $1="}; echo "${v%% *}"; }
  local req p50 p99 dur err
  req=$(field requests) dur=$(field duration_us) p50=$(field p50_us) p99=$(field p99_us) err=$(field err_status)
  awk -v l="$1" -v r="$req" -v d="$dur" -v t=$((t1 - t0)) -v k="$tck" -v a="$p50" -v b="$p99" -v e="$err" \
    'BEGIN { printf "%-9s %8.0f req/s  %6.2f us/req CPU  p50 %5d us  p99 %6d us  non2xx %d\n", l, r * 1e6 / d, t / k * 1e6 / r, a, b, e }'
}

echo "ack cost: $RUNS runs × ${DURATION}s, $CONNS connections, tracker CPU $SERVER_CPU, wrk CPU $WRK_CPU"
for _ in $(seq 1 "$RUNS"); do
  one received "/i?c=12345&cr=678&p=0.25&site=news.example.com&cb=8f3a2c91d4e7b605"
  one logged "/cv?c=12345&value=0.25&order=o-8f3a2c91d4e7b605&cb=1"
done
