#!/usr/bin/env bash
# HTTP File Upload (XEP-0363) throughput and server memory while streaming:
#   bench/upload.sh            (builds the release binary first)
# A fresh server (SQLite and uploads in a temp dir; c2s on $IP:5222, HTTP on
# $IP:5280) and one user; a slot for a SIZE_MB [100] file (bench/upload_slot.py,
# slixmpp), then curl PUTs it and GETs it back, timed, while the server's
# VmRSS is sampled every 20 ms. Prints MB/s both ways and RSS before / peak.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${SIZE_MB:=100}" "${IP:=127.0.0.14}"
cd "$ROOT"
cargo build --release --bin waxwing 2>&1 | tail -1
D=$(mktemp -d /tmp/waxwing-upload-bench.XXXXXX)
trap '[ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
cat > "$D/w.toml" <<CFG
log_level = "warn"
[[host]]
domain = "localhost"
[database]
url = "sqlite://$D/db.sqlite"
[tls]
dev_cert_dir = "$D/certs"
[c2s]
listen = ["$IP:5222"]
listen_tls = []
[http]
listen = ["$IP:5280"]
listen_tls = []
[upload]
dir = "$D/files"
max_file_size = $((SIZE_MB * 1024 * 1024 + 1))
CFG
target/release/waxwing ctl --config "$D/w.toml" user add up@localhost benchpass >/dev/null
head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > "$D/blob"
target/release/waxwing serve --config "$D/w.toml" > "$D/log" 2>&1 &
PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/$IP/5280) 2>/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
mapfile -t URLS < <(python3 bench/upload_slot.py "$IP" 5222 up@localhost benchpass blob.bin \
  $((SIZE_MB * 1024 * 1024)) application/octet-stream)
before=$(rss)
( peak=0; while kill -0 $PID 2>/dev/null; do r=$(rss); [ "$r" -gt "$peak" ] && peak=$r && echo $peak > "$D/peak"; sleep 0.02; done ) &
SAMPLER=$!
put=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -T "$D/blob" -H 'Content-Type: application/octet-stream' "${URLS[0]}")
get=$(curl -s -o "$D/back" -w '%{http_code} %{time_total}' "${URLS[1]}")
kill $SAMPLER 2>/dev/null || true
cmp -s "$D/blob" "$D/back" && same=yes || same=NO
read -r pc pt <<< "$put"; read -r gc gt <<< "$get"
echo "upload ${SIZE_MB} MiB: PUT $pc in ${pt}s = $(awk -v s=$SIZE_MB -v t=$pt 'BEGIN{printf "%.0f", s*1.048576/t}') MB/s; GET $gc in ${gt}s = $(awk -v s=$SIZE_MB -v t=$gt 'BEGIN{printf "%.0f", s*1.048576/t}') MB/s; same bytes: $same"
echo "server VmRSS before ${before} KiB, peak while streaming $(cat "$D/peak") KiB"
