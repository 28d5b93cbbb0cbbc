"""Waxwing (waxwing.test) federating with real Prosody (prosody.test) and
ejabberd (ejabberd.test), issue #4: messages both ways, a presence
subscription across servers ending in `both` with presence seen both ways, a
peer whose certificate Waxwing does not trust (untrusted.test) authenticated
by dialback, and a domain nobody answers for bouncing with
remote-server-not-found while the sender's session keeps working."""

from __future__ import annotations

import uuid

import pytest

from conftest import UNREACHABLE
from fed_helpers import S2S_TIMEOUT, exchange, expect_error, expect_message, login
from interop_client import STEP_TIMEOUT, run
from test_im import go_online, make_contacts, sync


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request):
    return request.getfixturevalue(request.param)


def test_messages_both_ways(waxwing_fed, peer):
    async def scenario():
        async with login(waxwing_fed, "alice") as w, login(peer, "alice") as p:
            await exchange(w, p)  # Waxwing opens the connection to the peer
            await exchange(p, w)
            await exchange(w, p)  # and again on the connections now up

    run(scenario())


def test_subscription_ends_in_both_with_presence_both_ways(waxwing_fed, peer):
    """RFC 6121 §3 across servers: Waxwing's bob subscribes to the peer's bob,
    who approves and subscribes back; both rosters say `both` (slixmpp's view
    and a fresh fetch) and each side sees the other's resource available."""

    async def scenario():
        async with login(waxwing_fed, "bob", presence=False) as w, login(peer, "bob", presence=False) as p:
            await go_online(w)
            await go_online(p)
            await make_contacts(w, p)
            # A presence change crosses both ways too.
            status = f"away-{uuid.uuid4().hex[:6]}"
            p.send_presence(pshow="away", pstatus=status)
            await wait_status(w, p, "away", status)
            status = f"dnd-{uuid.uuid4().hex[:6]}"
            w.send_presence(pshow="dnd", pstatus=status)
            await wait_status(p, w, "dnd", status)

    run(scenario(), timeout=120)


async def wait_status(me, other, show: str, status: str) -> None:
    from test_im import roster_view, wait_until

    await wait_until(
        f"{me.boundjid.bare} sees {other.boundjid.full} {show} {status!r}",
        lambda: me.client_roster[other.boundjid.bare].resources.get(other.boundjid.resource, {}).get("status")
        == status,
        timeout=S2S_TIMEOUT,
        detail=lambda: roster_view(me, other),
    )
    res = me.client_roster[other.boundjid.bare].resources[other.boundjid.resource]
    assert res["show"] == show, res


def test_untrusted_certificate_falls_back_to_dialback(waxwing_fed, untrusted_prosody, fresh):
    """untrusted.test's certificate comes from a CA Waxwing does not trust:
    its connection to Waxwing must be authenticated by dialback (XEP-0220),
    and messages still flow both ways. Waxwing is restarted first, so the
    stream is this test's and Prosody's log is read from there on."""
    logs = fresh(waxwing_fed, untrusted_prosody)

    async def scenario():
        async with login(waxwing_fed, "alice") as w, login(untrusted_prosody, "alice") as u:
            await exchange(u, w)  # untrusted.test → waxwing.test first: dialback
            await exchange(w, u)

    run(scenario())
    untrusted_prosody.wait_log(logs.of(untrusted_prosody), "sent dialback key on outgoing s2s stream")


def test_unreachable_domain_bounces_and_session_survives(waxwing_fed):
    """Nothing listens for unreachable.test: the message comes back as
    <remote-server-not-found/>, and the same session still sends, receives
    and gets IQ results."""
    domain = UNREACHABLE[0]

    async def scenario():
        async with login(waxwing_fed, "alice") as a, login(waxwing_fed, "bob") as b:
            a.send_message(mto=f"nobody@{domain}", mbody="into the void", mtype="chat")
            await expect_error(a, f"nobody@{domain}", "remote-server-not-found")
            await sync(a)
            body = f"still here {uuid.uuid4().hex[:8]}"
            a.send_message(mto=b.boundjid.full, mbody=body, mtype="chat")
            await expect_message(b, body, a.boundjid.bare, timeout=STEP_TIMEOUT)
            # and a second try bounces too (no stuck queue for the domain)
            a.send_message(mto=f"other@{domain}", mbody="again", mtype="chat")
            await expect_error(a, f"other@{domain}", "remote-server-not-found")

    run(scenario())
