#!/usr/bin/env bash
# Forwarding throughput and lag of the banker collector under pixel load.
#
# Starts the release `banker` and `tracker` (1 shard, banker collector on priced impressions),
# drives `GET /i?c=N&p=0.5` with wrk for DURATION seconds, then polls the banker until its total
# equals 0.5 × the requests answered 200. Prints: requests/s ingested, events/s forwarded
# (events ÷ time from the start of the load until the banker had them all), and the lag after
# the load stopped (how long until the banker had every event).
#
# With CATCHUP=1 the load runs with the collector left out, then the tracker is restarted with
# it, and the script prints how fast the collector drains the backlog (its own limit, not the
# ingest rate's).
#
# Usage: [CATCHUP=1] [CATCHUP_TIMEOUT=300] perf/collectors.sh [DURATION_S=10] [CONNECTIONS=32]
# Exits 1 when the banker did not get every journaled event within CATCHUP_TIMEOUT seconds, or
# its total differs from the journal.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-32}
T=${CARGO_TARGET_DIR:-target}/release
cargo build --release --bins >&2
W=$(mktemp -d)
# Stop what still runs and wait for it (a tracker writes into $W until it has exited).
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT

"$T/banker" --listen 127.0.0.1:0 --data "$W/banker" 2> "$W/banker.err" &
for _ in $(seq 100); do grep -q "listening on" "$W/banker.err" && break; sleep 0.05; done
BANKER=$(sed -n 's/^banker: listening on //p' "$W/banker.err")

sed 's/^segment_bytes = 67108864/segment_bytes = 16777216/' config/tracker.toml > "$W/t.toml"
cp "$W/t.toml" "$W/plain.toml"
cat >> "$W/t.toml" <<TOML
[[collector]]
name = "banker"
kind = "banker"
events = ["impression"]
fields = ["campaign_id", "price"]
events_max = 10000
linger_ms = 100
[collector.options]
url = "http://$BANKER"
TOML
CONF="$W/t.toml"; [ "${CATCHUP:-0}" = 1 ] && CONF="$W/plain.toml"
"$T/tracker" serve --config "$CONF" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --journal-dir "$W/j" --shards 1 2> "$W/tracker.err" &
for _ in $(seq 100); do grep -q "listening on" "$W/tracker.err" && break; sleep 0.05; done
ADDR=$(sed -n 's/^tracker: listening on \([^ ]*\).*/\1/p' "$W/tracker.err")

cat > "$W/pixel.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/i?c=" .. (n % 50) .. "&p=0.5")
end
LUA
START=$(date +%s.%N)
wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$W/pixel.lua" "http://$ADDR" > "$W/wrk.out"
END=$(date +%s.%N)
if [ "${CATCHUP:-0}" = 1 ]; then
  kill %2; wait %2 || true
  START=$(date +%s.%N); END=$START
  "$T/tracker" serve --config "$W/t.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --journal-dir "$W/j" --shards 1 2> "$W/tracker2.err" &
fi
REQS=$(awk '/requests in/ {print $1}' "$W/wrk.out")
# "Non-2xx or 3xx responses: N": the count is the last word.
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$W/wrk.out"); NON2XX=${NON2XX:-0}
EVENTS=$((REQS - NON2XX))
WANT=$((EVENTS * 500000))
# Bounded: a collector that stopped delivering must fail the run, not hang it.
DEADLINE=$(($(date +%s) + ${CATCHUP_TIMEOUT:-300}))
while :; do
  GOT=$(curl -s "http://$BANKER/balance" | sed -n 's/.*"total_micros":\([0-9]*\).*/\1/p')
  [ "${GOT:-0}" -ge "$WANT" ] && break
  if [ "$(date +%s)" -ge "$DEADLINE" ]; then
    echo "collectors: the banker has ${GOT:-0} of $WANT micros after ${CATCHUP_TIMEOUT:-300} s; giving up" >&2
    exit 1
  fi
  sleep 0.02
done
DONE=$(date +%s.%N)
# Exactness: wrk does not count requests cut off at the end of its run that the tracker did
# journal, so the reference is the journal itself, once the tracker has stopped.
# shellcheck disable=SC2046 # one word per job pid
kill -TERM $(jobs -p | tail -n +2) 2>/dev/null || true
# shellcheck disable=SC2046 # one word per job pid
wait $(jobs -p | tail -n +2) 2>/dev/null || true
JOURNALED=$("$T/tracker" journal cat --journal-dir "$W/j" | grep -c '"type":"impression"')
"$T/tracker" serve --config "$W/t.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --journal-dir "$W/j" --shards 1 2> "$W/tracker3.err" &
for _ in $(seq 600); do
  GOT=$(curl -s "http://$BANKER/balance" | sed -n 's/.*"total_micros":\([0-9]*\).*/\1/p')
  [ "${GOT:-0}" -ge $((JOURNALED * 500000)) ] && break
  sleep 0.05
done
EXACT=no
[ "$GOT" = $((JOURNALED * 500000)) ] && EXACT=yes
echo "journal    $JOURNALED impressions; banker total $GOT micros, expected $((JOURNALED * 500000)) (exact: $EXACT)"
awk -v e="$EVENTS" -v s="$START" -v x="$END" -v d="$DONE" 'BEGIN {
  printf "ingested   %d events in %.2f s = %.0f events/s\n", e, x - s, e / (x - s)
  printf "forwarded  %d events to the banker in %.2f s from the start of the load = %.0f events/s\n", e, d - s, e / (d - s)
  printf "lag        banker had every event %.3f s after the load stopped\n", d - x
}'
# A banker total that differs from the journal is a failed run, whatever the speed.
[ "$EXACT" = yes ]
