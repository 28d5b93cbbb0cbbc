#!/usr/bin/env bash
# Group chat (XEP-0045) side by side: for each named server, starts it fresh
# with its MUC service (bench/peers/*.sh with BENCH_MUC=1: anyone creates
# rooms, no history, no room archive, no occupant cap below the big room),
# runs `waxwing-bench muc` against it, stops it.
#   bench/muc.sh [waxwing] [prosody] [ejabberd]      (default: all three)
# Phases (see src/bin/waxwing-bench/muc.rs): join time into a JOIN_SIZE room;
# ROOMS × ROOM_SIZE saturation and half of it paced; a BIG_SIZE room (RSS per
# occupant, join time, delivery rate). Every phase is bounded (PHASE_TIME for
# filling rooms, DURATION per measured run, MAX_TIME for the whole tool run),
# so a server that cannot keep up is measured as far as it got.
# Environment (defaults in brackets):
#   JOIN_SIZE [500] JOIN_REPEAT [20] ROOMS [10] ROOM_SIZE [50] SENDERS [5]
#   WINDOW [4] DURATION [10] BIG_SIZE [5000] BIG_JOIN_REPEAT [5]
#   PHASE_TIME [90] MAX_TIME [230] QUIET_WAIT [20] EXTRA [] (more tool flags)
#   BENCH_NICE [0]: the tool's scheduling priority (negative: ahead of the server, so that its
#   readers time what they receive when it arrives; see bench/run.sh)
#   SERVER_CPUS, TOOL_CPUS [unset]: pin the server's threads and the tool to these CPUs
#   (taskset lists, e.g. SERVER_CPUS=0 TOOL_CPUS=1), so a tail can be told from the two
#   taking turns on the same cores. Unset, both share every core (the recorded runs).
#   The server's runtime sized its worker pool before the pinning: a one-CPU pin still
#   runs all of its workers, on that CPU.
#   WAXWING_BENCH_IP [127.0.0.24]: the address every server of this script
#   listens on (one at a time), apart from other benchmark runs.
#   WAXWING_BENCH_BIN [target/release/waxwing-bench]: another build of the tool
#   (to compare two tools, or two servers with one tool, on the same tree).
# Results: bench/results/muc-<server>-<commit>-<UTC time>.txt, the last line JSON.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export BENCH_MUC=1
export BENCH_DIR=${BENCH_DIR:-/tmp/waxwing-bench-muc}
export WAXWING_BENCH_IP=${WAXWING_BENCH_IP:-127.0.0.24}
export PROSODY_BENCH_IP=$WAXWING_BENCH_IP EJABBERD_BENCH_IP=$WAXWING_BENCH_IP
export EJABBERD_NODE=${EJABBERD_NODE:-ejabberd-muc@localhost}
# 1,000 accounts; the sessions beyond are more resources of them.
export ACCOUNTS=${ACCOUNTS:-1000} WAXWING_ACCOUNTS=${ACCOUNTS:-1000}
. "$ROOT/bench/peers/common.sh"
: "${JOIN_SIZE:=500}" "${JOIN_REPEAT:=20}" "${ROOMS:=10}" "${ROOM_SIZE:=50}" "${SENDERS:=5}"
: "${WINDOW:=4}" "${DURATION:=10}" "${BIG_SIZE:=5000}" "${BIG_JOIN_REPEAT:=5}"
: "${PHASE_TIME:=90}" "${MAX_TIME:=230}" "${QUIET_WAIT:=20}" "${EXTRA:=}"
BIN=${WAXWING_BENCH_BIN:-$ROOT/target/release/waxwing-bench}
OUT=$ROOT/bench/results
mkdir -p "$OUT"
cd "$ROOT"
cargo build --release --bin waxwing --bin waxwing-bench 2>&1 | tail -1
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo +)

RUNNING=""
cleanup() { [ -z "$RUNNING" ] || "$ROOT/bench/peers/$RUNNING.sh" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM

wait_quiet() { # until other load < 0.15 core for 3 s running, at most QUIET_WAIT s
  local ok=0 t0=$SECONDS c
  while [ $((SECONDS - t0)) -lt "$QUIET_WAIT" ]; do
    c=$(busy_cores)
    if awk -v c="$c" 'BEGIN { exit !(c < 0.15) }'; then ok=$((ok + 1)); else ok=0; fi
    [ $ok -ge 3 ] && return 0
  done
  echo "note: machine still busy ($c cores) after ${QUIET_WAIT}s; running anyway"
}

run_one() {
  local name=$1 domain=$2
  "$ROOT/bench/peers/$name.sh" stop >/dev/null 2>&1 || true
  RUNNING=$name
  "$ROOT/bench/peers/$name.sh" start
  local pid; pid=$("$ROOT/bench/peers/$name.sh" pid)
  [ -z "${SERVER_CPUS:-}" ] || taskset -a -p -c "$SERVER_CPUS" "$pid" >/dev/null
  wait_port "$WAXWING_BENCH_IP" 5222 60
  local stamp; stamp=$(date -u +%Y%m%dT%H%M%SZ)
  local file=$OUT/muc-$name-$COMMIT-$stamp.txt
  local quiet; quiet=$(wait_quiet)
  local cmd=("$BIN" muc --host "$WAXWING_BENCH_IP" --port 5222 --domain "$domain"
    --muc-domain "conference.$domain" --accounts "$ACCOUNTS" --password "$BENCH_PASSWORD"
    --server-pid "$pid" --join-size "$JOIN_SIZE" --join-repeat "$JOIN_REPEAT" --rooms "$ROOMS"
    --room-size "$ROOM_SIZE" --senders "$SENDERS" --window "$WINDOW" --duration "$DURATION"
    --big-size "$BIG_SIZE" --big-join-repeat "$BIG_JOIN_REPEAT" --phase-time "$PHASE_TIME"
    --max-time "$MAX_TIME" --label "$name" $EXTRA)
  {
    echo "+ ${cmd[*]}"
    echo "# $name $( [ "$name" = waxwing ] && echo "$COMMIT" || dpkg-query -W -f='${Version}' "$name"), load average $(cut -d' ' -f1-3 /proc/loadavg)${WAXWING_BIN:+; server binary $WAXWING_BIN}${quiet:+; $quiet}${SERVER_CPUS:+; server pinned to CPUs $SERVER_CPUS}${TOOL_CPUS:+; tool pinned to CPUs $TOOL_CPUS}"
  } | tee "$file"
  # The tool stops itself at MAX_TIME; `timeout` is the backstop.
  ( ulimit -n "$(fd_limit)"; ${TOOL_CPUS:+taskset -c $TOOL_CPUS} nice -n "${BENCH_NICE:-0}" timeout --kill-after=10 $((MAX_TIME + 30)) "${cmd[@]}" ) 2>&1 | tee -a "$file" || true
  "$ROOT/bench/peers/$name.sh" stop
  RUNNING=""
  echo "→ $file"
}

[ $# -gt 0 ] || set -- waxwing prosody ejabberd
for s in "$@"; do
  case $s in
    waxwing) WAXWING_BIN=${WAXWING_BIN:-$ROOT/target/release/waxwing} run_one waxwing waxwing.bench ;;
    prosody) run_one prosody prosody.bench ;;
    ejabberd) run_one ejabberd ejabberd.bench ;;
    *) echo "unknown server $s (waxwing, prosody, ejabberd)" >&2; exit 2 ;;
  esac
done
