#!/usr/bin/env bash
# XMPP over WebSocket against XMPP over TCP, same server build, same config,
# same session count, back to back (issue #14's figures: RSS per idle session
# and chat throughput of WebSocket within 20% of TCP's).
#   bench/websocket.sh
# Both runs: a fresh Waxwing (bench/peers/waxwing.sh) with HTTPS on $IP:5443;
# TCP sessions log in over STARTTLS on 5222, WebSocket sessions over wss on
# 5443 (TLS 1.3 either way, SCRAM-SHA-256, one stanza per write/message).
# Environment as bench/run.sh (SESSIONS, PAIRS, RATES, DURATION, QUIET_WAIT…);
# ROUNDS [1] repeats the pair of runs (tcp, ws, tcp, ws…) to see the spread.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${ROUNDS:=1}"
export WAXWING_HTTPS_PORT=5443
extra=${EXTRA:-}
for _ in $(seq "$ROUNDS"); do
  LABEL=waxwing-tcp EXTRA="$extra" "$ROOT/bench/run.sh" waxwing
  LABEL=waxwing-ws EXTRA="$extra --ws-port 5443" "$ROOT/bench/run.sh" waxwing
done
# The last pair, side by side.
python3 - "$ROOT/bench/results" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
def last(label):
    files = sorted(glob.glob(os.path.join(d, f"{label}-*.json")))
    return json.load(open(files[-1])) if files else None
tcp, ws = last("waxwing-tcp"), last("waxwing-ws")
if not tcp or not ws:
    sys.exit("missing a run")
rows = [("sessions", "sessions"), ("logins/s", "logins_per_s"),
        ("server µs/login", "server_cpu_us_per_login"),
        ("KiB per idle session", "kib_per_idle_session")]
print(f"{'':24} {'tcp':>12} {'websocket':>12} {'ws/tcp':>8}")
for name, k in rows:
    a, b = tcp.get(k), ws.get(k)
    r = f"{b / a:.2f}" if a else "-"
    print(f"{name:24} {a!s:>12} {b!s:>12} {r:>8}")
for i, (c1, c2) in enumerate(zip(tcp.get("chat", []), ws.get("chat", []))):
    for name, k in (("delivered/s", "received_per_s"), ("p99 ms", "lat_p99_ms"),
                    ("server µs/msg", "server_cpu_us_per_msg")):
        a, b = c1.get(k), c2.get(k)
        r = f"{b / a:.2f}" if a else "-"
        print(f"chat {c1.get('mode')} {c1.get('rate_target')} {name:10} {a!s:>12} {b!s:>12} {r:>8}")
PY
