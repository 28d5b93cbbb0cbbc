#!/usr/bin/env python3
"""Turn waxwing-bench JSON lines (bench/results/*.json) into a Markdown table.

    python3 bench/summarize.py bench/results/prosody-*.json bench/results/ejabberd-*.json
"""
import json
import os
import sys


def fmt(v, nd=0):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}"


def main(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            line = f.read().strip().splitlines()[-1]
        try:
            rows.append((p, json.loads(line)))
        except json.JSONDecodeError:
            print(f"skipping {p}: last line is not JSON", file=sys.stderr)
    print("| run | sessions up | logins/s | server µs/login | KiB/idle session | sat. msg/s "
          "| µs/msg at sat. | p50/p99 ms at 2000/s | µs/msg at 2000/s | half-sat. rate | p50/p99 ms at half "
          "| most other load (cores) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p, j in rows:
        chats = j.get("chat", [])
        # The headline saturation run is one stanza per write (results from before
        # issue 9 have no stanzas_per_write: they batched up to the window).
        sats = [c for c in chats if c["mode"] == "saturate"]
        sat = next((c for c in sats if c.get("stanzas_per_write") == 1), sats[0] if sats else {})
        fixed = next((c for c in chats if c["mode"] == "paced" and c["rate_target"] == 2000), {})
        half = [c for c in chats if c["mode"] == "paced" and c["rate_target"] != 2000]
        half = half[-1] if half else {}
        other = max([j.get("other_cpu_util_login") or 0.0]
                    + [c.get("other_cpu_util") or 0.0 for c in chats])
        print("| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} / {} | {} |".format(
            os.path.basename(p).removesuffix(".json"), fmt(j.get("sessions")), fmt(j.get("logins_per_s")),
            fmt(j.get("server_cpu_us_per_login")), fmt(j.get("kib_per_idle_session"), 1),
            fmt(sat.get("received_per_s", sat.get("delivered_per_s"))), fmt(sat.get("server_cpu_us_per_msg"), 1),
            fmt(fixed.get("lat_p50_ms"), 2), fmt(fixed.get("lat_p99_ms"), 2),
            fmt(fixed.get("server_cpu_us_per_msg"), 1), fmt(half.get("rate_target")),
            fmt(half.get("lat_p50_ms"), 2), fmt(half.get("lat_p99_ms"), 2), fmt(other, 2)))


if __name__ == "__main__":
    main(sys.argv[1:])
