#!/usr/bin/env bash
# How fast one Kafka collector drains a backlog: wrk fills one shard's journal with impressions
# (no collector configured), then the tracker is restarted with a Kafka collector on them and the
# script polls its admin metrics until tracker_collector_events_total reaches the journal's count.
# Prints the events, the seconds from the restart until all were acknowledged, and events/s.
#
# Needs tansu 0.6.0 on PATH (the README's test command installs it), wrk and curl. The broker is
# tansu in memory on a free loopback port, so the figure is the collector's own limit (batching,
# waiting for delivery reports), not a real cluster's.
#
# Usage: perf/kafka-catchup.sh [LOAD_S=3] [CONNS=8]   env: TRACKER_BIN (default: release build)
set -euo pipefail
LOAD_S=${1:-3}
CONNS=${2:-8}
REPO=$(cd "$(dirname "$0")/.." && pwd)
LOG_TAG=kafka-catchup
# shellcheck source=perf/lib.sh
. "$REPO/perf/lib.sh" # free_port, die
BIN=${TRACKER_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/tracker}
[ -x "$BIN" ] || die "no $BIN: run cargo build --release"
W=$(mktemp -d)
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap stop_all EXIT
wait_line() { # file pattern
  for _ in $(seq 200); do grep -q "$2" "$1" && return 0; sleep 0.05; done
  cat "$1" >&2; die "no '$2' in $1"
}

PORT=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ > "$W/tansu.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do (exec 3<> "/dev/tcp/127.0.0.1/$PORT") 2> /dev/null && break; sleep 0.05; done
tansu topic create tracker.impression --broker "tcp://127.0.0.1:$PORT" --partitions 1 > /dev/null

cp "$REPO/config/tracker.toml" "$W/t.toml"
cat >> "$W/t.toml" <<TOML

[[collector]]
name = "kafka"
kind = "kafka"
events = ["impression"]
fields = ["campaign_id", "price"]
[collector.options]
brokers = "127.0.0.1:$PORT"
TOML

"$BIN" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --journal-dir "$W/j" --shards 1 2> "$W/load.err" &
P=$!
wait_line "$W/load.err" "listening on"
ADDR=$(sed -n 's/^tracker: listening on \([^ ]*\).*/\1/p' "$W/load.err")
wrk -t1 -c"$CONNS" -d"${LOAD_S}s" "http://$ADDR/i?c=1&cr=2&p=0.25" > /dev/null
kill "$P"; wait "$P" || true
N=$("$BIN" journal cat --journal-dir "$W/j" | wc -l)

"$BIN" serve --config "$W/t.toml" --listen 127.0.0.1:0 --journal-dir "$W/j" --shards 1 \
  --admin-listen 127.0.0.1:0 2> "$W/collect.err" &
P=$!
PIDS+=("$P")
START=$(date +%s.%N)
wait_line "$W/collect.err" "admin on"
ADMIN=$(sed -n 's/^tracker: admin on \([^ ]*\).*/\1/p' "$W/collect.err")
GOT=0
for _ in $(seq 3000); do
  GOT=$(curl -s "http://$ADMIN/metrics" | awk '/^tracker_collector_events_total/ { s += $2 } END { printf "%d", s }')
  [ "$GOT" -ge "$N" ] && break
  sleep 0.05
done
END=$(date +%s.%N)
[ "$GOT" -ge "$N" ] || die "the collector delivered $GOT of $N events within 150 s"
awk -v n="$N" -v s="$START" -v e="$END" 'BEGIN { printf "%d events acknowledged by Kafka in %.2f s from the restart: %.0f events/s\n", n, e - s, n / (e - s) }'
