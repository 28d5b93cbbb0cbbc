"""Message Carbons (XEP-0280), Client State Indication (XEP-0352) and the
server's entity capabilities (XEP-0115) with slixmpp's own plugins.

Carbons: two slixmpp clients of one account enable carbons with xep_0280;
each sees the other's sent messages and the messages the other received
(as xep_0280's carbon_sent / carbon_received events), except those marked
private; a client that disabled carbons gets none.

CSI: xep_0352 finds the stream feature; while the client is inactive, a
contact's presence and chat state arrive only when something that matters
does (its message), or when the client is active again. The Rust tests
check "held" against the server's own state; here, from outside, the check
is when things arrive: not before the stanza that releases them was sent.

Caps: xep_0115 takes the `<c/>` stream feature, asks disco#info of the
caps node and accepts the hash only if it recomputes the same one.
"""

from __future__ import annotations

import asyncio
import time

from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, connect, run
from test_im import new_users, sync, wait_until

NS_CARBONS = "urn:xmpp:carbons:2"
CARBONS = DEFAULT_PLUGINS + ("xep_0280",)


def carbon(kind: str, body: str):
    """A predicate: a carbon copy of `kind` ('carbon_sent' / 'carbon_received') with `body`."""
    def match(s) -> bool:
        return s.name == "message" and s.xml.find(f"{{{NS_CARBONS}}}{kind.split('_')[1]}") is not None \
            and str(s[kind]["body"]) == body
    return match


def plain(body: str):
    def match(s) -> bool:
        return s.name == "message" and str(s["body"]) == body
    return match


def test_carbons_between_two_slixmpp_clients(server):
    alice, bob = new_users(server, "cbalice", "cbbob")

    async def scenario():
        async with connect(server, alice, plugins=CARBONS) as a1, \
                connect(server, alice, plugins=CARBONS) as a2, \
                connect(server, bob) as b:
            info = await a1.plugin["xep_0030"].get_info(jid=server.domain, timeout=STEP_TIMEOUT)
            assert NS_CARBONS in info["disco_info"]["features"]
            for c in (a1, a2):
                reply = await c.plugin["xep_0280"].enable(timeout=STEP_TIMEOUT)
                assert reply["type"] == "result", str(reply)
            sent, received = [], []
            a2.add_event_handler("carbon_sent", sent.append)
            a2.add_event_handler("carbon_received", received.append)

            # bob → a1: a2 gets a received copy.
            marks = [await c.checkpoint() for c in (a1, a2, b)]
            b.send_message(mto=a1.boundjid.full, mbody="to a1", mtype="chat")
            await b.barrier()
            await a1.expect_only(marks[0], ("the message", plain("to a1")))
            await a2.expect_only(marks[1], ("a received copy", carbon("carbon_received", "to a1")))
            assert len(received) == 1 and received[0]["from"] == a2.boundjid.bare
            fwd = received[0]["carbon_received"]
            assert fwd["from"] == b.boundjid and fwd["to"] == a1.boundjid, str(fwd)

            # a1 → bob: a2 gets a sent copy, a1 none.
            marks = [await c.checkpoint() for c in (a1, a2, b)]
            a1.send_message(mto=b.boundjid.full, mbody="from a1", mtype="chat")
            await a1.barrier()
            await b.expect_only(marks[2], ("the message", plain("from a1")))
            await a2.expect_only(marks[1], ("a sent copy", carbon("carbon_sent", "from a1")))
            await a1.expect_nothing(marks[0])
            assert len(sent) == 1 and sent[0]["carbon_sent"]["to"] == b.boundjid

            # Private (with the no-copy hint, as §7 suggests): no copy either way.
            marks = [await c.checkpoint() for c in (a1, a2, b)]
            msg = a1.make_message(mto=b.boundjid.full, mbody="private out", mtype="chat")
            msg.enable("carbon_private")
            msg.append(_no_copy())
            msg.send()
            msg = b.make_message(mto=a1.boundjid.full, mbody="private in", mtype="chat")
            msg.enable("carbon_private")
            msg.send()
            await a1.barrier()
            await b.barrier()
            await b.expect_only(marks[2], ("the private message", plain("private out")))
            await a1.expect_only(marks[0], ("the private message", plain("private in")))
            await a2.expect_nothing(marks[1])

            # a2 disables carbons: nothing more for it.
            reply = await a2.plugin["xep_0280"].disable(timeout=STEP_TIMEOUT)
            assert reply["type"] == "result", str(reply)
            marks = [await c.checkpoint() for c in (a1, a2, b)]
            b.send_message(mto=a1.boundjid.full, mbody="after disable", mtype="chat")
            a1.send_message(mto=b.boundjid.full, mbody="reply", mtype="chat")
            await b.barrier()
            await a1.barrier()
            await a2.expect_nothing(marks[1])
            await a1.expect_only(marks[0], ("the message", plain("after disable")))
            await b.expect_only(marks[2], ("the reply", plain("reply")))

    run(scenario())


def _no_copy():
    from xml.etree import ElementTree as ET
    return ET.Element("{urn:xmpp:hints}no-copy")


def _arrivals(client) -> list[tuple[float, object]]:
    """Records (monotonic time, stanza) for every stanza `client` receives."""
    log: list[tuple[float, object]] = []

    def record(stanza):
        if getattr(stanza, "name", None) in ("message", "presence"):
            log.append((time.monotonic(), stanza))
        return stanza

    client.add_filter("in", record)
    return log


def test_csi_holds_presence_and_chat_states_while_inactive(server):
    alice, bob = new_users(server, "csialice", "csibob")

    async def scenario():
        async with connect(server, alice, plugins=DEFAULT_PLUGINS + ("xep_0352",), presence=True) as a, \
                connect(server, bob, plugins=DEFAULT_PLUGINS + ("xep_0085",)) as b:
            csi = a.plugin["xep_0352"]
            assert csi.enabled, "the server offered no <csi/> stream feature"
            arrivals = _arrivals(a)
            await a.barrier()
            csi.send_inactive()
            await a.barrier()  # the state is set before the ping is answered
            arrivals.clear()

            # A contact's presence and chat state wait …
            b.send_presence(pto=a.boundjid.full, pshow="away", pstatus="held")
            state = b.make_message(mto=a.boundjid.full, mtype="chat")
            state["chat_state"] = "composing"
            state.send()
            await sync(b)
            await asyncio.sleep(1.0)
            # … and arrive, in order, right before the message that matters.
            sent_at = time.monotonic()
            b.send_message(mto=a.boundjid.full, mbody="wake up", mtype="chat")
            await wait_until("three stanzas arrived", lambda: len(arrivals) >= 3,
                             detail=lambda: [str(s) for _, s in arrivals])
            await a.barrier()
            got = [(t, s) for t, s in arrivals]
            kinds = [(s.name, str(s["show"]) if s.name == "presence" else str(s["body"]) or "state")
                     for _, s in got]
            assert kinds == [("presence", "away"), ("message", "state"), ("message", "wake up")], kinds
            early = [str(s) for t, s in got if t < sent_at]
            assert not early, f"delivered while inactive, before the message: {early}"

            # Active again: what was held comes at once, then nothing waits.
            arrivals.clear()
            b.send_presence(pto=a.boundjid.full, pshow="xa", pstatus="held again")
            await sync(b)
            await asyncio.sleep(1.0)
            active_at = time.monotonic()
            csi.send_active()
            await a.barrier()
            assert [str(s["show"]) for _, s in arrivals] == ["xa"], [str(s) for _, s in arrivals]
            assert arrivals[0][0] >= active_at, "the presence came before <active/>"
            arrivals.clear()
            b.send_presence(pto=a.boundjid.full, pshow="dnd")
            await sync(b)
            await a.barrier()
            assert [str(s["show"]) for _, s in arrivals] == ["dnd"]

    run(scenario())


def test_slixmpp_validates_the_server_caps(server):
    (alice,) = new_users(server, "capsalice")

    async def scenario():
        async with connect(server, alice, plugins=DEFAULT_PLUGINS + ("xep_0115",)) as a:
            assert "caps" in a.features, "no <c/> stream feature"
            disco = a.plugin["xep_0115"]
            deadline = time.monotonic() + STEP_TIMEOUT
            ver = None
            while ver is None and time.monotonic() < deadline:
                ver = await disco.get_verstring(server.domain)
                await asyncio.sleep(0.05)
            # slixmpp assigns the ver only once its own hash of the caps
            # node's disco#info matches it.
            assert ver, "slixmpp did not accept the server's caps hash"
            caps = await disco.get_caps(verstring=ver)
            assert caps is not None and "urn:xmpp:carbons:2" in caps["features"], caps

    run(scenario())
