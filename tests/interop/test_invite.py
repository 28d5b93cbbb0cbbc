"""Invitations (XEP-0401, XEP-0379) on a server whose open registration is
off: `waxwing ctl invite create` makes a token; slixmpp registers in-band
with it (its xep_0077 plugin, with the XEP-0445 `<preauth/>` IQ sent by
hand before the form, as slixmpp has no XEP-0401 support) and is then in
the inviter's roster both ways; and the landing page, opened in Debian's
headless Chromium, creates an account through its form, with which
slixmpp then logs in. Screenshots go to WAXWING_SCREENSHOT_DIR, else the
test's temp dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from interop_conftest import WaxwingServer
from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, connect, make_client, run, start_connect
from test_web import CHROMIUM, HERE, browser  # noqa: F401  (browser is a fixture)

PLUGINS = DEFAULT_PLUGINS + ("xep_0077",)


@pytest.fixture
def closed_server(tmp_path, request):
    """A server of this test's own whose host does not allow open registration."""
    srv = WaxwingServer(tmp_path / "server")
    write = srv.write_config

    def write_closed() -> None:
        write()
        text = srv.config_path.read_text(encoding="utf-8")
        assert "allow_registration = true" in text
        srv.config_path.write_text(text.replace("allow_registration = true", "allow_registration = false"),
                                   encoding="utf-8")

    srv.write_config = write_closed
    try:
        srv.start()
    except Exception as e:
        srv.kill()
        pytest.fail(f"could not start waxwing: {e}", pytrace=False)
    yield srv
    srv.kill()


def invite(server, inviter: str) -> tuple[str, str, str]:
    """`ctl invite create --inviter`: the token, the xmpp: URI and the page URL."""
    result = server.ctl("invite", "create", "--inviter", f"{inviter}@{server.domain}", "--expires", "1h")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    uri, url = lines["uri"], lines["url"]
    token = uri.split("preauth=", 1)[1].split(";", 1)[0]
    return token, uri, url


def test_slixmpp_registers_in_band_with_an_invitation(closed_server):
    server = closed_server
    token, uri, _ = invite(server, "alice")
    assert uri == f"xmpp:alice@{server.domain}?roster;preauth={token};ibr=y"
    features = server.stream_features()
    assert "urn:xmpp:invite" in features, features
    # In-band registration stays advertised where open registration is off
    # (as Prosody's invite-only mode does): a client holding a token needs
    # it to start registering; without a token the IQs are refused.
    assert "http://jabber.org/features/iq-register" in features, features
    user = f"inv{uuid.uuid4().hex[:10]}"
    password = "invited-Pa55"

    async def scenario():
        client = make_client(server, user, password=password, plugins=PLUGINS)
        plugin = client.plugin["xep_0077"]
        fetch_form = plugin.get_registration
        preauth_replies = []

        async def preauth_then_form(*args, **kwargs):
            iq = client.Iq()
            iq["type"] = "set"
            iq["to"] = server.domain
            iq.xml.append(ET.fromstring(f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/>"))
            # slixmpp holds back stanzas before the session other than
            # registration's and binding's; this one must go out now.
            client._always_send_everything = True
            try:
                preauth_replies.append((await iq.send(timeout=STEP_TIMEOUT))["type"])
            finally:
                client._always_send_everything = False
            return await fetch_form(*args, **kwargs)

        plugin.get_registration = preauth_then_form
        submitted = []

        async def on_register(form):
            iq = client.Iq()
            iq["type"] = "set"
            iq["register"]["username"] = user
            iq["register"]["password"] = password
            await iq.send(timeout=STEP_TIMEOUT)
            submitted.append(True)

        client.add_event_handler("register", on_register)
        try:
            start_connect(client, server, "starttls")
            await client.wait_ready()
            assert preauth_replies == ["result"], preauth_replies
            assert submitted, f"slixmpp did not register: {client.events}"
            assert client.boundjid.bare == f"{user}@{server.domain}"
            roster = await client.get_roster(timeout=STEP_TIMEOUT)
            items = roster["roster"]["items"]
            assert items[client_jid(server, "alice")]["subscription"] == "both", str(roster)
        finally:
            await client.close()

        async with connect(server, "alice") as alice:
            roster = await alice.get_roster(timeout=STEP_TIMEOUT)
            assert roster["roster"]["items"][client_jid(server, user)]["subscription"] == "both", str(roster)

    run(scenario())

    # Used: a second stream's token is refused, and nothing registers.
    result = server.ctl("invite", "list")
    assert "1/1" in result.stdout, result.stdout


def client_jid(server, user: str):
    from slixmpp import JID

    return JID(f"{user}@{server.domain}")


def test_the_landing_page_in_chromium_creates_an_account(closed_server, browser, tmp_path):
    server = closed_server
    _, _, url = invite(server, "bob")
    assert url.startswith(f"http://{server.host}:{server.http_port}/invite/"), url
    user = f"web{uuid.uuid4().hex[:10]}"
    password = "web-Pa55 word"
    shots = Path(os.environ.get("WAXWING_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(PAGE_URL=url, USERNAME=user, PASSWORD=password, INVITER=f"bob@{server.domain}",
               DOMAIN=server.domain, SCREENSHOT=str(shots / "invite-page.png"), CHROMIUM=CHROMIUM)

    async def browse() -> dict:
        proc = await asyncio.create_subprocess_exec(
            "node", str(HERE / "invite_page.mjs"), cwd=HERE, env=env,
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
        assert lines, f"no report from invite_page.mjs (exit {proc.returncode})\nstderr:\n{err.decode()}"
        return json.loads(lines[-1])

    report = asyncio.run(browse())
    assert report.get("ok"), json.dumps(report, indent=1)

    server.users[user] = password

    async def log_in():
        async with connect(server, user) as c:
            assert c.boundjid.bare == f"{user}@{server.domain}"
            roster = await c.get_roster(timeout=STEP_TIMEOUT)
            assert roster["roster"]["items"][client_jid(server, "bob")]["subscription"] == "both", str(roster)

    run(log_in())


def test_slixmpp_creates_an_invitation_with_the_adhoc_command(closed_server):
    """XEP-0401's urn:xmpp:invite#invite through slixmpp's xep_0050: the
    command completes at once with a result form carrying the xmpp: URI;
    by default a user's invitation makes contacts, not accounts (no ibr=y),
    and the account-invitation command is listed for administrators only
    (alice is one in the interop configuration, bob is not)."""
    server = closed_server

    async def scenario():
        async with connect(server, "alice", plugins=DEFAULT_PLUGINS + ("xep_0050",)) as alice:
            items = await alice.plugin["xep_0050"].get_commands(server.domain, timeout=STEP_TIMEOUT)
            assert "urn:xmpp:invite#create-account" in [i[1] for i in items["disco_items"]["items"]]
        async with connect(server, "bob", plugins=DEFAULT_PLUGINS + ("xep_0050",)) as bob:
            commands = bob.plugin["xep_0050"]
            items = await commands.get_commands(server.domain, timeout=STEP_TIMEOUT)
            nodes = [i[1] for i in items["disco_items"]["items"]]
            assert "urn:xmpp:invite#invite" in nodes, nodes
            assert "urn:xmpp:invite#create-account" not in nodes, nodes
            result = await commands.send_command(server.domain, "urn:xmpp:invite#invite", timeout=STEP_TIMEOUT)
            command = result["command"]
            assert command["status"] == "completed", str(result)
            values = command["form"].get_values()
            # (slixmpp reads a result form's hidden field as a list)
            assert values["FORM_TYPE"] in ("urn:xmpp:invite#invitation", ["urn:xmpp:invite#invitation"]), values
            uri = values["uri"]
            assert uri.startswith(f"xmpp:bob@{server.domain}?roster;preauth="), uri
            assert not uri.endswith(";ibr=y"), uri
            assert values.get("expire"), values

    run(scenario())
