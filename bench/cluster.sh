#!/usr/bin/env bash
# Cluster figures (issue #16): chat between two Waxwing nodes of one cluster against the same
# chat on one node, same database, same minutes.
#   bench/cluster.sh
# Both set-ups store everything in one PostgreSQL database ($CLUSTER_DB, created if missing;
# accounts bench0..bench{ACCOUNTS-1} made once) and serve the domain waxwing.bench:
#   single:  one node, 127.0.0.21, no [cluster];
#   cluster: nodes n1 (127.0.0.21) and n2 (127.0.0.22) with [cluster] on the local Redis (a key
#            prefix of this run's own); waxwing-bench logs even sessions in on n1 and odd ones on
#            n2 (--peer-host), so every chat pair has one side on each node and every message
#            crosses the bus.
# Each set-up runs `waxwing-bench` once per rate of $RATES (saturation, then fixed rates for
# latency at equal load). Around each cluster run the script reads Redis's INFO (commandstats,
# network bytes) and its CPU time, and prints Redis commands, bytes and CPU per delivered
# message (logins included: they are few against the messages).
# Each rate is a run of its own (so Redis's counters cover one rate).
# Environment: SESSIONS [1000] PAIRS [500] RATES [sat,5000,20000] DURATION [10] CLUSTER_DB
#   [postgres://postgres@127.0.0.1:5432/waxwing_bench_cluster] REDIS [redis://127.0.0.1:6379]
# Results: bench/results/cluster-{single,two}-<rate>-<UTC time>.{txt,json}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/peers/common.sh"
: "${SESSIONS:=1000}" "${PAIRS:=500}" "${RATES:=sat,5000,20000}" "${DURATION:=10}"
: "${CLUSTER_DB:=postgres://postgres@127.0.0.1:5432/waxwing_bench_cluster}" "${REDIS:=redis://127.0.0.1:6379}"
export ACCOUNTS_USED=$SESSIONS WAXWING_ACCOUNTS=$SESSIONS WAXWING_DB=$CLUSTER_DB
BASE=${CLUSTER_BENCH_DIR:-/tmp/wb-cluster}
BIN=$ROOT/target/release/waxwing-bench
OUT=$ROOT/bench/results
PREFIX=wxbench-$(date +%s)
mkdir -p "$OUT" "$BASE"
chmod 755 "$BASE"
(cd "$ROOT" && cargo build --release --bin waxwing --bin waxwing-bench 2>&1 | tail -1)
db=${CLUSTER_DB##*/}
psql "${CLUSTER_DB%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
  psql "${CLUSTER_DB%/*}/postgres" -qc "CREATE DATABASE $db"

start_node() { # node NAME IP [ID]: start a node (a cluster member when ID is given)
  local name=$1 ip=$2 id=${3:-}
  local extra=""
  [ -z "$id" ] || extra="[cluster]\nnode_id = \"$id\"\nredis = \"$REDIS\"\nkey_prefix = \"$PREFIX\"\n"
  BENCH_DIR=$BASE/$name WAXWING_BENCH_IP=$ip WAXWING_EXTRA_CONFIG=$extra "$ROOT/bench/peers/waxwing.sh" start >&2
  BENCH_DIR=$BASE/$name "$ROOT/bench/peers/waxwing.sh" pid
}
stop() { BENCH_DIR=$BASE/$1 "$ROOT/bench/peers/waxwing.sh" stop >/dev/null 2>&1 || true; }
cleanup() { stop single; stop n1; stop n2; redis-cli -u "$REDIS" --scan --pattern "$PREFIX:*" | xargs -r redis-cli -u "$REDIS" del >/dev/null; }
trap cleanup EXIT INT TERM

run() { # run LABEL PID [PEER_PID]: the chat, results kept
  local label=$1 pid=$2 peer_pid=${3:-} stamp
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  local cmd=("$BIN" --host 127.0.0.21 --port 5222 --domain waxwing.bench --accounts "$SESSIONS"
    --password "$BENCH_PASSWORD" --sessions "$SESSIONS" --server-pid "$pid" --pairs "$PAIRS"
    --rates "$RATES" --window 16 --duration "$DURATION" --idle 3 --max-time 600 --label "$label")
  [ -z "$peer_pid" ] || cmd+=(--peer-host 127.0.0.22 --peer-domain waxwing.bench --peer-server-pid "$peer_pid")
  echo "+ ${cmd[*]}" | tee "$OUT/$label-$stamp.txt"
  ( ulimit -n "$(fd_limit)"; "${cmd[@]}" ) 2>&1 | tee -a "$OUT/$label-$stamp.txt" || true
  tail -1 "$OUT/$label-$stamp.txt" > "$OUT/$label-$stamp.json"
  echo "$OUT/$label-$stamp.json"
}

redis_calls() { redis-cli -u "$REDIS" info commandstats | awk -F'[:=,]' '/^cmdstat_/ { n += $3 } END { print n }'; }
redis_bytes() { redis-cli -u "$REDIS" info stats | tr -d '\r' | awk -F: '/^total_net_(input|output)_bytes/ { n += $2 } END { print n }'; }
redis_ticks() { awk '{ print $14 + $15 }' "/proc/$(pgrep -o redis-server)/stat"; }

IFS=, read -ra rates <<< "$RATES"
results=()
p=$(start_node single 127.0.0.21)
for r in "${rates[@]}"; do
  RATES=$r; results+=("single $(run "cluster-single-$r" "$p" | tail -1) 0 0 0")
done
stop single

p1=$(start_node n1 127.0.0.21 n1)
p2=$(start_node n2 127.0.0.22 n2)
for r in "${rates[@]}"; do
  c0=$(redis_calls); b0=$(redis_bytes); t0=$(redis_ticks)
  RATES=$r; json=$(run "cluster-two-$r" "$p1" "$p2" | tail -1)
  c1=$(redis_calls); b1=$(redis_bytes); t1=$(redis_ticks)
  results+=("two $json $((c1 - c0)) $((b1 - b0)) $((t1 - t0))")
done
stop n1; stop n2

summary=$(mktemp)
printf '%s\n' "${results[@]}" > "$summary"
python3 - "$summary" <<'PY'
import json, os, sys
hz = os.sysconf("SC_CLK_TCK")
for line in open(sys.argv[1]):
    name, path, calls, nbytes, ticks = line.split()
    r = json.load(open(path))
    delivered = max(sum(c["delivered"] for c in r["chat"]), 1)
    for c in r["chat"]:
        srv = c["server_cpu_us_per_msg"] + c.get("peer_cpu_us_per_msg", 0)
        extra = ""
        if name == "two":
            extra = (" | redis per message (whole run, logins included): %.3f commands, %.0f bytes, "
                     "%.2f us CPU" % (int(calls) / delivered, int(nbytes) / delivered,
                                      int(ticks) / hz * 1e6 / delivered))
        print("%-6s %-9s rate %6s recv/s %9.0f p50 %.2f p99 %.2f ms lost %s nodes us/msg %.2f "
              "machine %.2f%s" % (name, c["mode"], c["rate_target"], c["received_per_s"],
                                  c["lat_p50_ms"], c["lat_p99_ms"], c["lost"], srv,
                                  c["machine_cpu_util"], extra))
PY
rm -f "$summary"
