"""Push notifications (XEP-0357) with slixmpp on both sides: a slixmpp
client finds `urn:xmpp:push:0` on its account and enables push to an app
server, a slixmpp ComponentXMPP (XEP-0114). With the client gone, a
contact's message makes the server publish to the app server's node, with
the summary form and the client's publish options; `disable` is accepted.

slixmpp 1.17 has no XEP-0357 plugin, so the client's enable/disable are
built here as plain IQs; the app server matches the pubsub publish with a
raw handler and reads it with ElementTree.
"""

from __future__ import annotations

import asyncio
import contextlib
from xml.etree import ElementTree as ET

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from interop_client import STEP_TIMEOUT, connect, run
from test_im import new_users, sync, wait_until

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
SECRET = "interop-app-secret"
NODE = "interop-node"


class AppServer(slixmpp.ComponentXMPP):
    """Records each pubsub publish it gets and answers it with a result."""

    def __init__(self, server):
        super().__init__(server.component_domain, server.component_secret)
        loop = asyncio.get_event_loop()
        self.ready: asyncio.Future = loop.create_future()
        self.publishes: asyncio.Queue = asyncio.Queue()
        self.add_event_handler("session_start", lambda _: self.ready.done() or self.ready.set_result(True))
        self.register_handler(Callback(
            "push publish",
            MatchXPath(f"{{{self.default_ns}}}iq/{{{NS_PUBSUB}}}pubsub"),
            self.on_publish,
        ))

    def on_publish(self, iq) -> None:
        self.publishes.put_nowait(iq)
        iq.reply().send()


@contextlib.asynccontextmanager
async def app_server(server):
    app = AppServer(server)
    app.connect(server.host, server.component_port)
    try:
        await asyncio.wait_for(app.ready, STEP_TIMEOUT)
        yield app
    finally:
        fut = app.disconnect(wait=2.0)
        if fut is not None:
            try:
                await asyncio.wait_for(fut, 5)
            except Exception:
                app.abort()


def bound_sessions(server) -> str:
    """`waxwing ctl sessions list` of the running server."""
    result = server.ctl("sessions", "list")
    assert result.returncode == 0, result.stderr
    return result.stdout


def form_fields(x) -> dict[str, str]:
    return {
        f.get("var"): (f.findtext(f"{{{NS_DATA}}}value") or "")
        for f in x.findall(f"{{{NS_DATA}}}field")
    }


def test_slixmpp_enables_push_and_the_component_gets_the_notification(server):
    alice, bob = new_users(server, "pushalice", "pushbob")

    async def scenario():
        async with app_server(server) as app:
            async with connect(server, alice) as a:
                info = await a.plugin["xep_0030"].get_info(jid=a.boundjid.bare, timeout=STEP_TIMEOUT)
                assert NS_PUSH in info["disco_info"]["features"], str(info)

                iq = a.Iq(stype="set")
                enable = ET.SubElement(iq.xml, f"{{{NS_PUSH}}}enable", jid=server.component_domain, node=NODE)
                x = ET.SubElement(enable, f"{{{NS_DATA}}}x", type="submit")
                for var, value in (("FORM_TYPE", "http://jabber.org/protocol/pubsub#publish-options"),
                                   ("secret", SECRET)):
                    field = ET.SubElement(x, f"{{{NS_DATA}}}field", var=var)
                    ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
                reply = await iq.send(timeout=STEP_TIMEOUT)
                assert reply["type"] == "result", str(reply)

            # Gone for the server too, so the message is for nobody online.
            await wait_until("alice's session is gone", lambda: f"{alice}@" not in bound_sessions(server))
            async with connect(server, bob) as b:
                b.send_message(mto=f"{alice}@{server.domain}", mbody="are you there?", mtype="chat")
                await sync(b)
                publish = await asyncio.wait_for(app.publishes.get(), STEP_TIMEOUT)
                assert publish["from"].full == server.domain, str(publish)
                pubsub = publish.xml.find(f"{{{NS_PUBSUB}}}pubsub")
                node = pubsub.find(f"{{{NS_PUBSUB}}}publish")
                assert node.get("node") == NODE, str(publish)
                summary = node.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
                fields = form_fields(summary)
                assert fields["FORM_TYPE"] == "urn:xmpp:push:summary", str(publish)
                assert fields["message-count"] == "1", str(publish)
                assert fields["last-message-sender"] == b.boundjid.full, str(publish)
                assert "last-message-body" not in fields, str(publish)
                options = pubsub.find(f"{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
                assert form_fields(options)["secret"] == SECRET, str(publish)

            async with connect(server, alice) as a:
                iq = a.Iq(stype="set")
                ET.SubElement(iq.xml, f"{{{NS_PUSH}}}disable", jid=server.component_domain)
                reply = await iq.send(timeout=STEP_TIMEOUT)
                assert reply["type"] == "result", str(reply)

    run(scenario())
