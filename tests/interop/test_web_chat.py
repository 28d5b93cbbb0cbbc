"""The bundled web chat: Waxwing serves Converse.js at /chat/.

The shared server's `[http] chat_dir` holds the repository's Converse.js
page (contrib/chat/index.html) and Converse's dist/ directory from the npm
registry, as an operator would set it up (conftest.py). `web/chat_page.mjs`
opens http://HOST:PORT/chat/ in Debian's headless Chromium, types the user
name and password into Converse's login form and waits for the logged-in
view; the server must then hold a session for that user, made over its
WebSocket endpoint, whose URL the server filled into the page. A screenshot
is saved (WAXWING_SCREENSHOT_DIR, else the test's temp dir).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path

from test_web import CHROMIUM, HERE, browser, new_user  # noqa: F401  (browser is a fixture)


def test_the_page_is_filled_in_for_the_server(server, browser):
    url = f"http://{server.host}:{server.http_port}/chat/"
    with urllib.request.urlopen(url, timeout=10) as r:
        page = r.read().decode()
    assert f"ws://{server.host}:{server.http_port}/xmpp-websocket" in page
    assert f"http://{server.host}:{server.http_port}/http-bind" in page
    assert "{{" not in page, "a placeholder was left unfilled"
    with urllib.request.urlopen(url + "dist/converse.min.js", timeout=10) as r:
        assert "javascript" in r.headers.get("Content-Type", "")
        assert len(r.read()) > 100_000


def test_converse_from_chat_logs_in_through_its_form(server, browser, tmp_path):
    user = new_user(server, "webchat")
    shots = Path(os.environ.get("WAXWING_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        PAGE_URL=f"http://{server.host}:{server.http_port}/chat/",
        USERNAME=user,
        PASSWORD=server.users[user],
        DOMAIN=server.domain,
        SCREENSHOT=str(shots / "converse-chat-page.png"),
        CHROMIUM=CHROMIUM,
    )

    async def scenario() -> dict:
        proc = await asyncio.create_subprocess_exec(
            "node", str(HERE / "chat_page.mjs"), cwd=HERE, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        assert lines, f"no report from chat_page.mjs (exit {proc.returncode})\nstderr:\n{err.decode()}"
        return json.loads(lines[-1])

    report = asyncio.run(scenario())
    assert report.get("ok"), json.dumps(report, indent=1)
    # The server saw the login: the session is gone once the browser
    # closed, so the log is what is left of it (a bound session of this
    # user, over WebSocket).
    log = server.log_tail(0)
    assert f"{user}@{server.domain}" in log, "no session of the web user in the server's log"
