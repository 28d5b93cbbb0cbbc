#!/usr/bin/env bash
# Instructions per group chat delivery, counted by callgrind (repeatable on a
# busy machine, as bench/callgrind.sh is for one-to-one chat). Runs the server
# under callgrind with ROOMS [2] rooms of ROOM_SIZE [50] occupants, saturated
# then paced for D seconds each; run it with two durations and take
# (Ir_long - Ir_short) / (deliveries_long - deliveries_short), which cancels
# the logins' and joins' cost:
#   bench/muc_callgrind.sh /path/to/waxwing 3
#   bench/muc_callgrind.sh /path/to/waxwing 8
# Prints the label, the total instructions (Ir) and the deliveries counted.
# The profile stays in $CALLGRIND_DIR [/tmp/waxwing-callgrind-muc] for
# callgrind_annotate.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=$(realpath "$1"); D=$2; shift 2
: "${ROOMS:=2}" "${ROOM_SIZE:=50}"
LABEL=cgmuc-$(basename "$BIN")-$D
OUT=${CALLGRIND_DIR:-/tmp/waxwing-callgrind-muc}; mkdir -p "$OUT"; chmod 777 "$OUT"
WRAP=$OUT/wrap-$(basename "$BIN")
cat > "$WRAP" <<W
#!/bin/sh
if [ "\$1" = serve ]; then exec valgrind --tool=callgrind --callgrind-out-file=$OUT/$LABEL.%p "$BIN" "\$@"; fi
exec "$BIN" "\$@"
W
chmod 755 "$WRAP"
export BENCH_MUC=1 BENCH_DIR=${BENCH_DIR:-/tmp/waxwing-bench-muc-cg}
export WAXWING_BENCH_IP=${WAXWING_BENCH_IP:-127.0.0.24} WAXWING_ACCOUNTS=$((ROOMS * ROOM_SIZE))
WAXWING_BIN=$WRAP bench/peers/waxwing.sh stop >/dev/null 2>&1 || true
rm -f "$OUT/$LABEL".*
WAXWING_BIN=$WRAP bench/peers/waxwing.sh start >/dev/null
pid=$(bench/peers/waxwing.sh pid)
. bench/peers/common.sh
wait_port "$WAXWING_BENCH_IP" 5222 60
( ulimit -n "$(fd_limit)"; timeout 600 target/release/waxwing-bench muc --host "$WAXWING_BENCH_IP" \
  --domain waxwing.bench --accounts "$WAXWING_ACCOUNTS" --password "$BENCH_PASSWORD" \
  --server-pid "$pid" --join-size 0 --big-size 0 --rooms "$ROOMS" --room-size "$ROOM_SIZE" \
  --duration "$D" --max-time 540 --label "$LABEL" "$@" ) > "$OUT/$LABEL.out" 2>&1
bench/peers/waxwing.sh stop >/dev/null
for _ in $(seq 50); do ls "$OUT/$LABEL".[0-9]* >/dev/null 2>&1 && break; sleep 0.2; done
f=$(ls "$OUT/$LABEL".[0-9]* | head -1)
ir=$(grep -m1 "^summary:\|^totals:" "$f" | awk '{print $2}')
python3 - "$ir" "$OUT/$LABEL.out" <<'PY'
import json, sys
j = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
runs = [j[k] for k in ('saturation', 'half_saturation') if k in j]
print(j['label'], 'Ir', sys.argv[1], 'deliveries', sum(r['delivered'] for r in runs),
      'expected', sum(r['expected'] for r in runs))
PY
