#!/usr/bin/env bash
# perf/pgo-build.sh: a profile-guided release build of the tracker, trained on its own request mix.
#
# Usage: perf/pgo-build.sh [--help]
#   Environment (all optional):
#     RATE=20000       requests/s of the training load (loadgen's built-in mix: /i /v /e /win /cv)
#     DURATION=10      seconds of training load, after a 1 s warm-up
#     PGO_DIR=<repo>/target/pgo-work   the instrumented build and its raw profiles
#     OUT_DIR=<repo>/target/pgo        the optimized build's target dir: OUT_DIR/release/tracker
#   Stdout is only the optimized binary's absolute path; use it as
#     bin=$(perf/pgo-build.sh) && TRACKER_BIN=$bin perf/vs-nginx.sh --no-build
#   (with `&&`: `TRACKER_BIN=$(perf/pgo-build.sh) cmd` runs cmd even when the build failed).
#
# Steps: build an instrumented tracker (-Cprofile-generate), serve the embedded default config on
# a free loopback port with one shard, drive it with `loadgen` for DURATION seconds, stop it with
# SIGTERM (the profile is written at exit), merge the profile with the toolchain's own
# llvm-profdata (rustup component `llvm-tools`, added if missing), and build again with
# -Cprofile-use. PGO changes code layout, inlining and branch order, never behaviour; the test
# suite runs on the plain build. What it saves is in perf/RESULTS.md (the reactor's user time).
#
# The instrumented and optimized builds each compile every dependency again with their own
# RUSTFLAGS (~5 min each on 2 cores). Training needs io_uring, so it does not run inside a
# default `docker build` (its seccomp profile blocks io_uring): the Dockerfile keeps the plain
# release build.
set -euo pipefail

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
[[ $# -eq 0 ]] || { echo "perf/pgo-build.sh: unexpected argument: $1 (see --help)" >&2; exit 2; }

REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
LOG_TAG=pgo-build
READY_TIMEOUT=30
PIXEL_PATH="/i?c=1"
# shellcheck source=perf/lib.sh
source "$REPO_DIR/perf/lib.sh"

RATE=${RATE:-20000}
DURATION=${DURATION:-10}
require_uints RATE DURATION
[[ $RATE =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ ]] || die "RATE and DURATION must be positive, without leading zeros"
# Absolute before the cd below: cargo runs rustc from each dependency's own directory, where a
# relative -Cprofile-use path does not exist.
PGO_DIR=$(realpath -m -- "${PGO_DIR:-$REPO_DIR/target/pgo-work}")
OUT_DIR=$(realpath -m -- "${OUT_DIR:-$REPO_DIR/target/pgo}")
# cargo splits RUSTFLAGS on whitespace, and ignores it when CARGO_ENCODED_RUSTFLAGS is set.
[[ $PGO_DIR != *[[:space:]]* ]] || die "PGO_DIR must not contain whitespace (it goes into RUSTFLAGS): $PGO_DIR"
[[ -z ${CARGO_ENCODED_RUSTFLAGS:-} ]] || die "CARGO_ENCODED_RUSTFLAGS is set: cargo would ignore the profile flags; unset it and use RUSTFLAGS"
cd "$REPO_DIR"

# The llvm-profdata of the rustc that cargo runs: the raw profile format follows its LLVM.
RUSTC=${RUSTC:-rustc}
host=$("$RUSTC" -vV | sed -n 's/^host: //p')
profdata=$("$RUSTC" --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
  log "llvm-profdata not in the toolchain; adding the rustup component llvm-tools"
  command -v rustup >/dev/null || die "no rustup to add llvm-tools with; install the toolchain's llvm-profdata at $profdata"
  rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
  [[ -x $profdata ]] || die "llvm-tools added, but $profdata is still missing"
fi

rm -rf "$PGO_DIR/raw" "$PGO_DIR/run"
mkdir -p "$PGO_DIR/raw" "$PGO_DIR/run"

log "building loadgen (plain release)"
cargo build --release --locked --bin loadgen >&2
LOADGEN=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/loadgen

log "building the instrumented tracker in $PGO_DIR"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PGO_DIR/raw" \
  cargo build --release --locked --bin tracker --target-dir "$PGO_DIR/target" >&2
# Build scripts of the instrumented build ran instrumented too and left their own profiles.
rm -f "$PGO_DIR"/raw/*.profraw

port=$(free_port)
log "training: the instrumented tracker on 127.0.0.1:$port, loadgen at $RATE req/s for ${DURATION}s"
LLVM_PROFILE_FILE="$PGO_DIR/raw/tracker-%p-%m.profraw" "$PGO_DIR/target/release/tracker" serve \
  --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 --shards 1 \
  --journal-dir "$PGO_DIR/run/journal" >"$PGO_DIR/run/tracker.log" 2>&1 &
pid=$!
trap 'kill -KILL "$pid" 2>/dev/null || true' EXIT
wait_ready tracker "$pid" "$port" "$PGO_DIR/run/tracker.log" || die "the instrumented tracker did not start"
"$LOADGEN" --target "127.0.0.1:$port" --host t.adserver.example --rate "$RATE" --connections 32 \
  --warmup 1s --duration "${DURATION}s" >"$PGO_DIR/run/loadgen.out" 2>"$PGO_DIR/run/loadgen.err" ||
  die "loadgen failed ($PGO_DIR/run/loadgen.err)"
result=$(grep '^LOADGEN_RESULT' "$PGO_DIR/run/loadgen.out") || die "no LOADGEN_RESULT line in $PGO_DIR/run/loadgen.out"
# A profile of error paths (timeouts, refusals) would optimize the wrong code: every request
# must have been answered 2xx.
why=$(loadgen_failures "$result") || die "the training load was not all answered 2xx ($why): $result"
log "training load: $result"
kill -TERM "$pid"
# The profile is written when the tracker exits: wait for that (its stop is bounded, 10 s for
# collectors), but not forever, and never SIGKILL it, which would lose the profile.
for ((i = 0; i < 600; i++)); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$pid" 2>/dev/null && die "the instrumented tracker did not exit within 60 s of SIGTERM ($PGO_DIR/run/tracker.log)"
status=0
wait "$pid" || status=$?
trap - EXIT
((status == 0)) || die "the instrumented tracker exited with status $status ($PGO_DIR/run/tracker.log)"
compgen -G "$PGO_DIR/raw/tracker-*.profraw" >/dev/null || die "the instrumented tracker wrote no profile"

"$profdata" merge -o "$PGO_DIR/tracker.profdata" "$PGO_DIR"/raw/tracker-*.profraw >&2
log "profile merged: $PGO_DIR/tracker.profdata"

log "building the optimized tracker in $OUT_DIR"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PGO_DIR/tracker.profdata" \
  cargo build --release --locked --bin tracker --target-dir "$OUT_DIR" >&2
log "done: $OUT_DIR/release/tracker"
echo "$OUT_DIR/release/tracker"
