#!/usr/bin/env bash
# Cluster group chat (issue #16): rooms whose occupants are spread over three Waxwing nodes of
# one cluster, against the same rooms on one node, same database, same minutes.
#   bench/cluster_muc.sh
# Both set-ups store in one PostgreSQL database ($CLUSTER_DB) and serve waxwing.bench with the
# MUC settings of bench/muc.sh (BENCH_MUC=1: no history, no room archive):
#   single: one node on 127.0.0.21, no [cluster];
#   three:  nodes n1, n2, n3 on 127.0.0.21-23 with [cluster] on the local Redis (a key prefix of
#           this run's own); `waxwing-bench muc` logs session i in at node i mod 3
#           (--also-hosts), so each room of ROOM_SIZE has a third of its occupants on each node,
#           and every room is held by one node: two thirds of its deliveries cross the bus.
# The tool runs its join phase (JOIN_SIZE occupants, one more joins JOIN_REPEAT times) and
# ROOMS × ROOM_SIZE at saturation and at half of it (server CPU summed over the nodes). Around
# the cluster run the script reads Redis's INFO and CPU and prints commands, bytes and CPU per
# delivery.
# Environment: JOIN_SIZE [500] JOIN_REPEAT [10] ROOMS [10] ROOM_SIZE [50] SENDERS [5] WINDOW [4]
#   DURATION [10] CLUSTER_DB [postgres://postgres@127.0.0.1:5432/waxwing_bench_cluster]
#   REDIS [redis://127.0.0.1:6379]
# Results: bench/results/cluster-muc-{single,three}-<UTC time>.txt (last line JSON).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/peers/common.sh"
: "${JOIN_SIZE:=500}" "${JOIN_REPEAT:=10}" "${ROOMS:=10}" "${ROOM_SIZE:=50}" "${SENDERS:=5}"
: "${WINDOW:=4}" "${DURATION:=10}"
: "${CLUSTER_DB:=postgres://postgres@127.0.0.1:5432/waxwing_bench_cluster}" "${REDIS:=redis://127.0.0.1:6379}"
export BENCH_MUC=1 ACCOUNTS_USED=1000 WAXWING_ACCOUNTS=1000 WAXWING_DB=$CLUSTER_DB
BASE=${CLUSTER_BENCH_DIR:-/tmp/wb-cluster-muc}
BIN=$ROOT/target/release/waxwing-bench
OUT=$ROOT/bench/results
PREFIX=wxbench-muc-$(date +%s)
mkdir -p "$OUT" "$BASE"
chmod 755 "$BASE"
(cd "$ROOT" && cargo build --release --bin waxwing --bin waxwing-bench 2>&1 | tail -1)
db=${CLUSTER_DB##*/}
psql "${CLUSTER_DB%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
  psql "${CLUSTER_DB%/*}/postgres" -qc "CREATE DATABASE $db"

start_node() { # NAME IP [ID]: starts a node (a cluster member when ID is given); prints its PID
  local name=$1 ip=$2 id=${3:-} extra=""
  [ -z "$id" ] || extra="[cluster]\nnode_id = \"$id\"\nredis = \"$REDIS\"\nkey_prefix = \"$PREFIX\"\n"
  BENCH_DIR=$BASE/$name WAXWING_BENCH_IP=$ip WAXWING_EXTRA_CONFIG=$extra "$ROOT/bench/peers/waxwing.sh" start >&2
  BENCH_DIR=$BASE/$name "$ROOT/bench/peers/waxwing.sh" pid
}
stop() { BENCH_DIR=$BASE/$1 "$ROOT/bench/peers/waxwing.sh" stop >/dev/null 2>&1 || true; }
cleanup() {
  stop single; stop n1; stop n2; stop n3
  redis-cli -u "$REDIS" --scan --pattern "$PREFIX:*" | xargs -r redis-cli -u "$REDIS" del >/dev/null
}
trap cleanup EXIT INT TERM

run() { # LABEL PID [MORE PIDS, comma-separated]: the tool, results kept; prints the file
  local label=$1 pid=$2 more=${3:-} stamp file
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  file=$OUT/$label-$stamp.txt
  local cmd=("$BIN" muc --host 127.0.0.21 --port 5222 --domain waxwing.bench
    --muc-domain conference.waxwing.bench --accounts 1000 --password "$BENCH_PASSWORD"
    --server-pid "$pid" --join-size "$JOIN_SIZE" --join-repeat "$JOIN_REPEAT" --rooms "$ROOMS"
    --room-size "$ROOM_SIZE" --senders "$SENDERS" --window "$WINDOW" --duration "$DURATION"
    --big-size 0 --phase-time 90 --max-time 230 --label "$label")
  [ -z "$more" ] || cmd+=(--also-hosts 127.0.0.22,127.0.0.23 --also-pids "$more")
  echo "+ ${cmd[*]}" > "$file"
  ( ulimit -n "$(fd_limit)"; timeout --kill-after=10 260 "${cmd[@]}" ) >> "$file" 2>&1 || true
  echo "$file"
}

redis_calls() { redis-cli -u "$REDIS" info commandstats | awk -F'[:=,]' '/^cmdstat_/ { n += $3 } END { print n }'; }
redis_bytes() { redis-cli -u "$REDIS" info stats | tr -d '\r' | awk -F: '/^total_net_(input|output)_bytes/ { n += $2 } END { print n }'; }
redis_ticks() { awk '{ print $14 + $15 }' "/proc/$(pgrep -o redis-server)/stat"; }

p=$(start_node single 127.0.0.21)
single=$(run cluster-muc-single "$p")
stop single

p1=$(start_node n1 127.0.0.21 n1)
p2=$(start_node n2 127.0.0.22 n2)
p3=$(start_node n3 127.0.0.23 n3)
c0=$(redis_calls); b0=$(redis_bytes); t0=$(redis_ticks)
three=$(run cluster-muc-three "$p1" "$p2,$p3")
c1=$(redis_calls); b1=$(redis_bytes); t1=$(redis_ticks)
stop n1; stop n2; stop n3

for f in "$single" "$three"; do echo "== $f"; grep -vE '^\{' "$f" | tail -25; done
python3 - "$three" $((c1 - c0)) $((b1 - b0)) $((t1 - t0)) <<'PY'
import json, os, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
def walk(v):
    if isinstance(v, dict):
        return sum(x if k == "delivered" and isinstance(x, (int, float)) else walk(x)
                   for k, x in v.items())
    if isinstance(v, list):
        return sum(walk(x) for x in v)
    return 0
delivered = walk(r) or 1
hz = os.sysconf("SC_CLK_TCK")
print("redis over the whole cluster run (logins and joins included), per group chat delivery "
      "(%d): %.3f commands, %.0f bytes, %.2f us CPU" % (delivered, int(sys.argv[2]) / delivered,
      int(sys.argv[3]) / delivered, int(sys.argv[4]) / hz * 1e6 / delivered))
PY
