#!/usr/bin/env bash
# PEP publish → notification latency (XEP-0163) to online contacts:
#   bench/pep.sh            (builds the release binaries first)
# A fresh server (SQLite, in a temp dir, 127.0.0.31:5222) with the owner and
# CONTACTS [100] contacts; `waxwing-bench pep` builds the mutual subscriptions in
# band, logs the contacts in with +notify caps, and times REPEAT [200] publishes.
# Result: bench/results/pep-<commit>-<UTC time>.txt (the last line is JSON).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${CONTACTS:=100}" "${REPEAT:=200}"
cd "$ROOT"
cargo build --release --bin waxwing --bin waxwing-bench 2>&1 | tail -1
D=$(mktemp -d /tmp/waxwing-pep-bench.XXXXXX)
trap '[ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
cat > "$D/pep.toml" <<CFG
log_level = "warn"
[[host]]
domain = "localhost"
[database]
url = "sqlite://$D/db.sqlite"
[tls]
dev_cert_dir = "$D/certs"
[c2s]
listen = ["127.0.0.31:5222"]
listen_tls = []
[http]
listen = []
listen_tls = []
[limits]
scram_iterations = 4096
CFG
(echo pepowner; seq 0 $((CONTACTS - 1)) | sed 's/^/pepc/') |
  xargs -P 2 -I{} target/release/waxwing ctl --config "$D/pep.toml" user add {}@localhost benchpass >/dev/null
target/release/waxwing serve --config "$D/pep.toml" >>"$D/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.31/5222) 2>/dev/null && break; sleep 0.1; done
OUT=bench/results/pep-$(git rev-parse --short HEAD)-$(date -u +%Y%m%dT%H%M%SZ).txt
mkdir -p bench/results
echo "+ waxwing-bench pep --host 127.0.0.31 --contacts $CONTACTS --repeat $REPEAT (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee "$OUT"
target/release/waxwing-bench pep --host 127.0.0.31 --domain localhost --contacts "$CONTACTS" --repeat "$REPEAT" | tee -a "$OUT"
