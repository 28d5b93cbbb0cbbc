#!/usr/bin/env bash
# One bench/archive_run.sh run, with the server's CPU per thread during the
# chat phase (issue #11): where an archived message's cost goes, per thread,
# free of the run-to-run noise of the throughput itself.
#   bench/archive_threads.sh LABEL true|false [VAR=value ...]
# Samples /proc/PID/task/*/stat 4 s into the saturated chat and 4 s later,
# and prints the run's messages received/s, then each busy thread's share of
# a core and its µs per received message. The routing threads and the
# archive writer's blocking thread are all named waxwing-worker (the writer
# is the one at ~20%); the SQLite checkpointer is waxwing-checkpoint.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LABEL=$1; shift
cd "$ROOT"
OUT=/tmp/archive-threads-$LABEL
(bench/archive_run.sh "$LABEL" "$@" > "$OUT.out" 2>&1 &)
for _ in $(seq 1 240); do
  sleep 0.25
  grep -q "^idle" "/tmp/archive-run-$LABEL.log" 2>/dev/null && break
done
sleep 4
P=$(pgrep -f "waxwing[^ ]* serve" | head -1)  # also a WAXWING_BIN named otherwise (waxwing-new)
snap() { for t in /proc/"$P"/task/*; do echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done; }
snap > "$OUT.0"; sleep 4; snap > "$OUT.1"
while pgrep -f "archive_run.sh $LABEL" > /dev/null; do sleep 0.5; done
R=$(awk '{print $3}' "$OUT.out")
join <(sort "$OUT.0") <(sort "$OUT.1") | awk -v r="$R" -v l="$LABEL" '
  { d = ($5 - $3) / 4; if (d > 1) n[$2 "." $1] += d }
  END {
    s = ""; t = 0
    for (k in n) { s = s sprintf(" %s=%.1f%%(%.2fus)", k, n[k], n[k] * 10000 / r); t += n[k] }
    printf "%s recv/s %s server=%.1f%%(%.2fus)%s\n", l, r, t, t * 10000 / r, s
  }'
