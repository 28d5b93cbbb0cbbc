"""Converse.js, a web client, against waxwing over WebSocket (RFC 7395) and
over BOSH (XEP-0124/XEP-0206): the same scenario once per transport.

`web/converse.mjs` runs Converse.js 14.0.0 (pinned with its lock file, from
the npm registry) in Debian's headless Chromium, driven by playwright-core:
the page logs in over the server's `[http]` listener, the user opens a chat
with a slixmpp user through the UI, types a message and sends it with Enter;
the slixmpp user answers, and the page must show the answer. Then the user picks a file with Converse's
upload button: Converse asks the server's upload service for a slot
(XEP-0363), PUTs the file from the page's origin (CORS) and sends the link,
which the slixmpp side fetches and compares byte for byte. The page is
saved as a screenshot (WAXWING_SCREENSHOT_DIR, else the test's temp dir).

Needs `node` (>= 20), `npm ci` in tests/interop/web and Debian's `chromium`
(scripts/test.sh installs them). Without them the test skips, which fails
the run under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import urllib.request
import uuid
from pathlib import Path

import pytest

from interop_client import connect, run
from interop_conftest import in_ci

HERE = Path(__file__).resolve().parent / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def browser_ready() -> str | None:
    """Why the browser test cannot run, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    for package in ("converse.js", "playwright-core"):
        if not (HERE / "node_modules" / package).is_dir():
            return f"{package} is not installed: run `npm ci` in tests/interop/web"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: apt-get install chromium"
    return None


@pytest.fixture
def browser():
    reason = browser_ready()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the web interop test must run)", pytrace=False)
        pytest.skip(reason)


def fetch(url: str) -> bytes:
    """GETs an upload URL (on the server's loopback HTTP listener)."""
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers.get("Access-Control-Allow-Origin") == "*"
        return r.read()


def new_user(server, prefix: str) -> str:
    user = f"{prefix}{uuid.uuid4().hex[:10]}"
    password = f"{user}-pw"
    server.add_user(user, password)
    server.users[user] = password
    return user


def test_converse_in_chromium_chats_with_slixmpp_over_websocket(server, browser, tmp_path):
    converse_chats_with_slixmpp(
        server, tmp_path, "websocket",
        WS_URL=f"ws://{server.host}:{server.http_port}/xmpp-websocket",
    )


def test_converse_in_chromium_chats_with_slixmpp_over_bosh(server, browser, tmp_path):
    since = server.log_size()
    converse_chats_with_slixmpp(
        server, tmp_path, "bosh",
        BOSH_URL=f"http://{server.host}:{server.http_port}/http-bind",
    )
    # It was BOSH that carried it (the server logs each session it creates).
    assert "BOSH session created" in server.log_text(since), "no BOSH session in the log"


def converse_chats_with_slixmpp(server, tmp_path, transport: str, **endpoint: str) -> None:
    web_user, peer = new_user(server, "conv"), new_user(server, "slix")
    shots = Path(os.environ.get("WAXWING_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / f"converse-{transport}.png"
    upload_content = f"a file from Converse {uuid.uuid4().hex}\n" * 50
    env = {k: v for k, v in os.environ.items() if k not in ("WS_URL", "BOSH_URL")}
    env.update(endpoint)
    env.update(
        JID=f"{web_user}@{server.domain}",
        PASSWORD=server.users[web_user],
        PEER=f"{peer}@{server.domain}",
        SCREENSHOT=str(screenshot),
        CHROMIUM=CHROMIUM,
        UPLOAD_CONTENT=upload_content,
    )

    async def scenario() -> None:
        async with connect(server, peer, presence=True) as slix:
            proc = await asyncio.create_subprocess_exec(
                "node", str(HERE / "converse.mjs"), cwd=HERE, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )

            async def output() -> tuple[bytes, bytes]:
                out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
                await proc.wait()
                return out, err

            finished = asyncio.ensure_future(output())

            def release() -> None:
                # The script keeps its page open, once the link shows, until
                # told here that the peer has its copy (or gave up): the page
                # shows its own message before the BOSH request carrying it
                # may have gone, and closing the browser then lost it.
                if not proc.stdin.is_closing():
                    proc.stdin.write(b"done\n")
                    proc.stdin.close()

            async def first_chat_message():
                while True:
                    m = await slix.next_message(timeout=90)
                    if m["body"]:
                        return m

            try:
                # The first chat message from the browser user gets an
                # answer; if the script ends first, its report says why.
                wanted = asyncio.ensure_future(first_chat_message())
                await asyncio.wait({finished, wanted}, return_when=asyncio.FIRST_COMPLETED)
                msg = None
                uploaded = False
                if wanted.done():
                    msg = wanted.result()
                    assert msg["from"].bare == f"{web_user}@{server.domain}", msg
                    slix.send_message(mto=msg["from"], mbody=f"re: {msg['body']}", mtype="chat")
                    # Then the file: a message whose body is the GET URL
                    # (XEP-0066 out-of-band data), fetched here.
                    wanted = asyncio.ensure_future(first_chat_message())
                    await asyncio.wait({finished, wanted}, return_when=asyncio.FIRST_COMPLETED)
                    if not wanted.done():
                        # The script ended early (its report says why); a
                        # copy on its way still counts.
                        await asyncio.wait({wanted}, timeout=15)
                    if wanted.done():
                        link = wanted.result()
                        fetched = await asyncio.to_thread(fetch, str(link["body"]).strip())
                        assert fetched == upload_content.encode(), "the uploaded file differs"
                        uploaded = True
                    else:
                        wanted.cancel()
                else:
                    wanted.cancel()
                release()
                out, err = await asyncio.wait_for(finished, 90)
            finally:
                release()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            lines = [line for line in out.decode().splitlines() if line.startswith("{")]
            assert lines, f"no report from converse.mjs (exit {proc.returncode})\nstderr:\n{err.decode()}"
            report = json.loads(lines[-1])
            assert report.get("ok"), json.dumps(report, indent=1)
            assert msg is not None and report["sent"] == msg["body"]
            assert uploaded, "the peer got no upload link"

    run(scenario(), timeout=200)
    assert screenshot.stat().st_size > 10_000, "the screenshot is missing or empty"
