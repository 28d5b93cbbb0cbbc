#!/usr/bin/env bash
# PLAIN logins and in-band registrations, side by side (audit item 4):
#   bench/plain.sh [waxwing] [prosody] [ejabberd]
# For each named server: start it fresh, wait for quiet, then
#   1. (REGISTRATIONS > 0) REGISTRATIONS accounts reg0.. by XEP-0077, REG_CONCURRENCY in flight;
#      the server's peak RSS (VmHWM) during that phase;
#   2. SESSIONS PLAIN logins over STARTTLS (accounts bench0..bench{ACCOUNTS_USED-1}),
#      LOGIN_CONCURRENCY in flight, then held idle IDLE s: logins/s, server CPU per login,
#      RSS per idle session (waxwing-bench), and the peak RSS during the phase (VmHWM, reset
#      with clear_refs before it).
# Environment (defaults in brackets): SESSIONS [10000] ACCOUNTS_USED [1000] LOGIN_CONCURRENCY [64]
#   REGISTRATIONS [10000] REG_CONCURRENCY [32] IDLE [10] QUIET_WAIT [120] LABEL_SUFFIX []
#   WAXWING_PRELOAD [] (e.g. /usr/lib/x86_64-linux-gnu/libjemalloc.so.2: the allocator to try)
# Results: bench/results/plain-<server><suffix>-<UTC time>.txt
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/peers/common.sh"
: "${SESSIONS:=10000}" "${ACCOUNTS_USED:=1000}" "${LOGIN_CONCURRENCY:=64}" "${IDLE:=10}"
: "${REGISTRATIONS:=10000}" "${REG_CONCURRENCY:=32}" "${QUIET_WAIT:=120}" "${LABEL_SUFFIX:=}"
BIN=$ROOT/target/release/waxwing-bench
OUT=$ROOT/bench/results
mkdir -p "$OUT"
export ACCOUNTS_USED WAXWING_ALLOW_PLAIN=true WAXWING_REGISTRATION=true

wait_quiet() { # until other load < 0.3 core for 3 s running, at most QUIET_WAIT s
  local ok=0 t0=$SECONDS c=0
  while [ $((SECONDS - t0)) -lt "$QUIET_WAIT" ]; do
    c=$(busy_cores)
    if awk -v c="$c" 'BEGIN { exit !(c < 0.3) }'; then ok=$((ok + 1)); else ok=0; fi
    [ $ok -ge 3 ] && { echo "machine quiet: $c cores busy"; return 0; }
  done
  echo "machine NOT quiet: $c cores busy after ${QUIET_WAIT}s; running anyway"
}

kib() { awk -v k="$1" '/^'"$1"':/ { print $2 }' "/proc/$2/status"; }

run_one() {
  local name=$1 host=$2 domain=$3 script=$4
  local stamp; stamp=$(date -u +%Y%m%dT%H%M%SZ)
  local log="$OUT/plain-$name$LABEL_SUFFIX-$stamp.txt"
  "$ROOT/bench/peers/$script" stop >/dev/null || true
  "$ROOT/bench/peers/$script" start | tee "$log"
  local pid; pid=$("$ROOT/bench/peers/$script" pid)
  sleep 2
  wait_quiet | tee -a "$log"
  echo "idle RSS before: $(kib VmRSS "$pid") KiB" | tee -a "$log"
  local common=(--host "$host" --port 5222 --domain "$domain" --password "$BENCH_PASSWORD"
    --server-pid "$pid" --pairs 0 --max-time 600)
  if [ "$REGISTRATIONS" -gt 0 ]; then
    echo 5 > "/proc/$pid/clear_refs"
    local base; base=$(kib VmRSS "$pid")
    local cmd=("$BIN" "${common[@]}" --register --register-concurrency "$REG_CONCURRENCY"
      --prefix reg --accounts "$REGISTRATIONS" --sessions 1 --idle 0 --label "$name-register")
    echo "+ ${cmd[*]}" | tee -a "$log"
    ( ulimit -n "$(fd_limit)"; "${cmd[@]}" ) 2>&1 | grep -E "^register|error|fail" | tee -a "$log" || true
    echo "registration phase: RSS before $base KiB, peak $(kib VmHWM "$pid") KiB, after $(kib VmRSS "$pid") KiB; busy now $(busy_cores) cores" | tee -a "$log"
  fi
  echo 5 > "/proc/$pid/clear_refs"
  local base; base=$(kib VmRSS "$pid")
  local cmd=("$BIN" "${common[@]}" --mechanism plain --accounts "$ACCOUNTS_USED" --sessions "$SESSIONS"
    --login-concurrency "$LOGIN_CONCURRENCY" --idle "$IDLE" --label "$name-plain")
  echo "+ ${cmd[*]}" | tee -a "$log"
  ( ulimit -n "$(fd_limit)"; "${cmd[@]}" ) 2>&1 | tee -a "$log" || true
  echo "PLAIN login phase: RSS before $base KiB, peak $(kib VmHWM "$pid") KiB" | tee -a "$log"
  "$ROOT/bench/peers/$script" stop | tee -a "$log"
}

[ $# -gt 0 ] || set -- waxwing prosody ejabberd
for s in "$@"; do
  case $s in
    prosody) run_one prosody 127.0.0.2 prosody.bench prosody.sh ;;
    ejabberd) run_one ejabberd 127.0.0.3 ejabberd.bench ejabberd.sh ;;
    waxwing) run_one waxwing "${WAXWING_BENCH_IP:-127.0.0.4}" waxwing.bench waxwing.sh ;;
    *) echo "unknown server $s" >&2; exit 2 ;;
  esac
done
