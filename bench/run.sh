#!/usr/bin/env bash
# Side-by-side c2s benchmark: restarts each named server fresh, waits for the
# machine to be quiet, runs waxwing-bench against it, keeps the output.
#   bench/run.sh [prosody] [ejabberd] [waxwing]
# Environment (defaults in brackets):
#   SESSIONS [10000] ACCOUNTS_USED [1000] PAIRS [500] RATES [sat,2000,halfsat]
#   DURATION [20] IDLE [10] WINDOW [16] MAX_TIME [900] EXTRA [] (more waxwing-bench flags)
#   QUIET_WAIT [300] seconds to wait for other load to settle before each run
#   LABEL [server name] label for the JSON line and the result file names
#   BENCH_NICE [0] scheduling priority of waxwing-bench (negative: ahead of the server's threads, so
#     that the tool's readers are not left runnable and unscheduled while they time an answer)
# Results: bench/results/<server>-<UTC time>.txt (summary) and .json (the JSON line).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/peers/common.sh"
: "${SESSIONS:=10000}" "${ACCOUNTS_USED:=1000}" "${PAIRS:=500}" "${RATES:=sat,2000,halfsat}"
: "${DURATION:=20}" "${IDLE:=10}" "${WINDOW:=16}" "${MAX_TIME:=900}" "${EXTRA:=}" "${QUIET_WAIT:=300}"
BIN=$ROOT/target/release/waxwing-bench
OUT=$ROOT/bench/results
mkdir -p "$OUT"

if [ ! -x "$BIN" ] || [ -n "$(find "$ROOT/src/bin/waxwing-bench" -newer "$BIN" -name '*.rs')" ]; then
  (cd "$ROOT" && cargo build --release --bin waxwing-bench)
fi

wait_quiet() { # until other load < 0.15 core for 3 s running, at most QUIET_WAIT s
  local ok=0 t0=$SECONDS c
  while [ $((SECONDS - t0)) -lt "$QUIET_WAIT" ]; do
    c=$(busy_cores)
    if awk -v c="$c" 'BEGIN { exit !(c < 0.15) }'; then ok=$((ok + 1)); else ok=0; fi
    [ $ok -ge 3 ] && return 0
  done
  echo "warning: machine still busy ($c cores) after ${QUIET_WAIT}s; running anyway" >&2
}

run_one() {
  local name=$1 host=$2 domain=$3 script=$4
  "$ROOT/bench/peers/$script" stop >/dev/null || true
  "$ROOT/bench/peers/$script" start
  local pid; pid=$("$ROOT/bench/peers/$script" pid)
  sleep 2
  wait_quiet
  local stamp; stamp=$(date -u +%Y%m%dT%H%M%SZ)
  local cmd=("$BIN" --host "$host" --port 5222 --domain "$domain" --accounts "$ACCOUNTS_USED"
    --password "$BENCH_PASSWORD" --sessions "$SESSIONS" --server-pid "$pid" --pairs "$PAIRS"
    --rates "$RATES" --window "$WINDOW" --duration "$DURATION" --idle "$IDLE"
    --max-time "$MAX_TIME" --label "${LABEL:-$name}" $EXTRA)
  echo "+ ${cmd[*]}" | tee "$OUT/${LABEL:-$name}-$stamp.txt"
  ( ulimit -n "$(fd_limit)"; nice -n "${BENCH_NICE:-0}" "${cmd[@]}" ) 2>&1 | tee -a "$OUT/${LABEL:-$name}-$stamp.txt" || true
  tail -1 "$OUT/${LABEL:-$name}-$stamp.txt" > "$OUT/${LABEL:-$name}-$stamp.json"
  "$ROOT/bench/peers/$script" stop
}

[ $# -gt 0 ] || set -- prosody ejabberd
for s in "$@"; do
  case $s in
    prosody) run_one prosody 127.0.0.2 prosody.bench prosody.sh ;;
    ejabberd) run_one ejabberd 127.0.0.3 ejabberd.bench ejabberd.sh ;;
    waxwing) run_one waxwing "${WAXWING_BENCH_IP:-127.0.0.4}" waxwing.bench waxwing.sh ;;
    *) echo "unknown server $s" >&2; exit 2 ;;
  esac
done
