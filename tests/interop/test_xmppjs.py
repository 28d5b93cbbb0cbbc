"""xmpp.js, a third-party SASL2/FAST client, against waxwing.

`xmppjs/interop.mjs` (xmpp.js 0.14.0, pinned with its lock file) logs in
with SASL2 and SCRAM, binds with Bind 2 and enables stream management in the
same exchange, asks for a FAST token and keeps it; its connection then dies
without a close, and xmpp.js comes back on its own with the token, resuming
the session inline; a second instance of the same client starts from the
kept token alone. Messages go both ways. The script prints a JSON report
(including every line it wrote and read) that this file checks.

What xmpp.js 0.14.0 does not do, so is not tested here: SCRAM-SHA-256 or
any -PLUS mechanism (it has SCRAM-SHA-1 and PLAIN), HT-SHA-256-UNIQ/-ENDP/
-EXPR (only -NONE), a `count` on `<fast/>`, direct TLS with certificate
checking against the domain (it checks the certificate against the host it
dials, 127.0.0.1 here), so the tests use STARTTLS. Node trusts exactly the
server's generated certificate (NODE_EXTRA_CA_CERTS).

Needs `node` (>= 20) and `npm ci` run in tests/interop/xmppjs (scripts/test.sh
does it). Without them the tests skip, which fails the run under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from interop_conftest import WaxwingServer, in_ci

HERE = Path(__file__).resolve().parent / "xmppjs"
SCRIPT_TIMEOUT = 120


def node_ready() -> str | None:
    """Why the script cannot run, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "@xmpp" / "client").is_dir():
        return "xmpp.js is not installed: run `npm ci` in tests/interop/xmppjs"
    return None


@pytest.fixture
def xmppjs():
    reason = node_ready()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the xmpp.js interop tests must run)", pytrace=False)
        pytest.skip(reason)


def run_script(server: WaxwingServer, tmp_path: Path, **extra: str) -> dict:
    ca = tmp_path / "waxwing-ca.pem"
    ca.write_text(server.ca_pem(), encoding="utf-8")
    env = dict(os.environ)
    env.update(
        NODE_EXTRA_CA_CERTS=str(ca),
        XMPP_HOST=server.host,
        XMPP_PORT=str(server.c2s_port),
        XMPP_DOMAIN=server.domain,
        ALICE="alice",
        ALICE_PASSWORD=server.users["alice"],
        BOB="bob",
        BOB_PASSWORD=server.users["bob"],
        **extra,
    )
    proc = subprocess.run(
        ["node", str(HERE / "interop.mjs")],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report from the script (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(lines[-1])
    wire = "\n".join(f"[{name}] {line}" for name, ls in report.get("wire", {}).items() for line in ls)
    assert report.get("ok"), f"{report.get('error')}\nstderr:\n{proc.stderr}\nwire:\n{wire}"
    report["wire_text"] = wire
    return report


def steps(report: dict) -> dict:
    return {s["name"]: s for s in report["steps"]}


def check_common(report: dict, domain: str) -> dict:
    s = steps(report)
    online = s["alice online"]
    # SASL2 with the password (SCRAM-SHA-1: the best xmpp.js has).
    assert online["mechanisms"] == ["SCRAM-SHA-1"], report["wire_text"]
    # Bind 2: a full JID of the account came in <success/>, with <bound/>.
    jid = online["jid"]
    assert jid.startswith(f"alice@{domain}/") and len(jid) > len(f"alice@{domain}/"), jid
    assert online["bound"], report["wire_text"]
    assert online["sm_enabled"] and online["sm_id"], online
    # A token was asked for and kept, bound to the FAST mechanism xmpp.js has.
    assert [t["mechanism"] for t in online["tokens"]] == ["HT-SHA-256-NONE"], online
    assert "<request-token" in report["wire_text"]
    assert "messages exchanged" in s
    # The dead connection came back with the token, in one <authenticate/>,
    # the session resumed inline and the message sent meanwhile delivered once.
    back = s["alice resumed"]
    assert back["mechanisms"] == ["SCRAM-SHA-1", "HT-SHA-256-NONE"], report["wire_text"]
    assert back["resumed"], report["wire_text"]
    assert back["jid"] == jid, back
    assert back["away_messages"] == 1, back
    # A fresh instance with the kept token alone (its password is wrong).
    token = s["token login"]
    assert token["mechanisms"] == ["HT-SHA-256-NONE"], report["wire_text"]
    assert token["jid"].startswith(f"alice@{domain}/"), token
    return s


def test_xmppjs_sasl2_bind2_fast_and_inline_resumption(xmppjs, server, tmp_path):
    report = run_script(server, tmp_path)
    s = check_common(report, server.domain)
    # Far from its expiry, a token is not replaced on use.
    assert s["alice resumed"]["tokens"] == 1, s["alice resumed"]
    assert not s["token login"]["rotated"], s["token login"]


class RotatingServer(WaxwingServer):
    """Tokens live an hour and are replaced on every use."""

    def write_config(self) -> None:
        super().write_config()
        with open(self.config_path, "a", encoding="utf-8") as f:
            f.write("\n[sasl2]\ntoken_lifetime = 3600\ntoken_rotate_before_expiry = 3600\n")


@pytest.fixture
def rotating_server(tmp_path, request):
    from interop_conftest import LOG_OFFSET_KEY, SERVER_KEY

    srv = RotatingServer(tmp_path / "server")
    try:
        srv.start()
    except Exception as e:
        srv.kill()
        pytest.fail(f"could not start waxwing: {e}", pytrace=False)
    request.node.stash[SERVER_KEY] = srv
    request.node.stash[LOG_OFFSET_KEY] = 0
    yield srv
    srv.kill()


def test_xmppjs_keeps_rotated_tokens(xmppjs, rotating_server, tmp_path):
    report = run_script(rotating_server, tmp_path, EXPECT_ROTATION="1")
    s = check_common(report, rotating_server.domain)
    # Each FAST login handed xmpp.js a new token, which it kept and used.
    assert s["alice resumed"]["tokens"] == 2, s["alice resumed"]
    assert s["token login"]["rotated"], s["token login"]
    # The first token, replaced by a new one that was then used, is dead:
    # xmpp.js is refused, drops it, logs in with the password and asks anew.
    stale = s["stale token"]
    assert stale["mechanisms"] == ["HT-SHA-256-NONE", "SCRAM-SHA-1"], report["wire_text"]
    assert stale["fast_failure"], report["wire_text"]
    assert stale["tokens"] == 1, stale
