#!/usr/bin/env bash
# One archive saturation run on an emptied archive (issue #11):
#   bench/archive_run.sh LABEL true|false [VAR=value ...]
# empties the archive of the bench database (bench/reset_archive.py), runs
#   SESSIONS=1000 ACCOUNTS_USED=1000 RATES=sat DURATION=10 IDLE=3 WAXWING_MAM=true|false \
#   EXTRA="--sm --carbons" bench/run.sh waxwing
# with the given variables (WAXWING_BIN=…, WAXWING_MAM_CONFIG=…), and prints one line: messages
# received/s, server µs per message, CPU use, latency, losses and the MB the disk (vda) wrote.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LABEL=$1; MAM=$2; shift 2
cd "$ROOT"
export WAXWING_BENCH_IP=${WAXWING_BENCH_IP:-127.0.0.23} BENCH_DIR=${BENCH_DIR:-/tmp/wb} QUIET_WAIT=${QUIET_WAIT:-5}
DISK=${DISK:-vda}
DB=$(ls -d "$BENCH_DIR"/waxwing*/data/waxwing.db 2>/dev/null | head -1)
if [ -n "$DB" ]; then python3 bench/reset_archive.py "$DB"; chown waxwing:waxwing "$(dirname "$DB")"/*; fi
w0=$(awk -v d="$DISK" '$3==d {print $10}' /proc/diskstats)
env "$@" SESSIONS=1000 ACCOUNTS_USED=1000 RATES=sat DURATION=10 IDLE=3 WAXWING_MAM="$MAM" \
  EXTRA="${EXTRA:---sm --carbons}" LABEL="$LABEL" bench/run.sh waxwing > "/tmp/archive-run-$LABEL.log" 2>&1
w1=$(awk -v d="$DISK" '$3==d {print $10}' /proc/diskstats)
grep '^{' "/tmp/archive-run-$LABEL.log" | tail -1 | python3 -c "
import json, sys
c = json.loads(sys.stdin.read())['chat'][0]
print(sys.argv[1], 'recv/s', c['received_per_s'], 'srv_us', c['server_cpu_us_per_msg'], 'srv_util', c['server_cpu_util'],
      'machine', c['machine_cpu_util'], 'p50', c['lat_p50_ms'], 'p99', c['lat_p99_ms'], 'lost', c['lost'],
      'disk_MB', (int(sys.argv[2] or 0) - int(sys.argv[3] or 0)) * 512 // 1000000)" "$LABEL" "$w1" "$w0"
