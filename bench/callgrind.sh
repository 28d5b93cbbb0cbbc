#!/usr/bin/env bash
# Instructions per message, counted by callgrind: repeatable whatever else the
# machine is doing (valgrind counts instructions, not seconds), so two builds
# can be compared on a busy machine. Runs the server under callgrind with
# 200 sessions (100 pairs) chatting for D seconds; run it twice with two
# durations and take (Ir_long - Ir_short) / (delivered_long - delivered_short),
# which cancels the logins' cost:
#   bench/callgrind.sh /path/to/waxwing 3 [waxwing-bench flags]   # e.g. --sm --carbons
#   bench/callgrind.sh /path/to/waxwing 8 [...]
# RATE [sat] is the bench's --rates (a paced rate, or sat). Prints the label,
# the total instructions (Ir) and the messages delivered.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=$1; D=$2; shift 2
LABEL=cg-$(basename "$BIN")-$D
OUT=${CALLGRIND_DIR:-/tmp/waxwing-callgrind}; mkdir -p "$OUT"; chmod 777 "$OUT"
WRAP=$OUT/wrap-$(basename "$BIN")
cat > "$WRAP" <<W
#!/bin/sh
if [ "\$1" = serve ]; then exec valgrind --tool=callgrind --callgrind-out-file=$OUT/$LABEL.%p "$BIN" "\$@"; fi
exec "$BIN" "\$@"
W
chmod 755 "$WRAP"
export ACCOUNTS_USED=200
WAXWING_BIN=$WRAP bench/peers/waxwing.sh stop >/dev/null 2>&1 || true
rm -f "$OUT/$LABEL".*
WAXWING_BIN=$WRAP bench/peers/waxwing.sh start >/dev/null
pid=$(bench/peers/waxwing.sh pid)
. bench/peers/common.sh
wait_port "${WAXWING_BENCH_IP:-127.0.0.4}" 5222 60
( ulimit -n "$(fd_limit)"; target/release/waxwing-bench --host "${WAXWING_BENCH_IP:-127.0.0.4}" --port 5222 --domain waxwing.bench \
  --accounts 200 --password "$BENCH_PASSWORD" --sessions 200 --server-pid "$pid" --pairs 100 \
  --rates "${RATE:-sat}" --duration "$D" --idle 1 --label "$LABEL" "$@" ) > "$OUT/$LABEL.out" 2>&1
bench/peers/waxwing.sh stop >/dev/null
for _ in $(seq 50); do ls "$OUT/$LABEL".[0-9]* >/dev/null 2>&1 && break; sleep 0.2; done
f=$(ls "$OUT/$LABEL".[0-9]* | head -1)
ir=$(grep -m1 "^summary:\|^totals:" "$f" | awk '{print $2}')
python3 - "$ir" "$OUT/$LABEL.out" <<'PY'
import json, sys
j = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
c = j['chat'][0]
print(j['label'], 'Ir', sys.argv[1], 'delivered', c['delivered'], 'lost', c['lost'])
PY
