"""Multi-user chat across servers (issue #13) with real Prosody: a Prosody
user joins a room of Waxwing's chat service (conference.waxwing.test) and
exchanges group chat with a Waxwing user there; and the other way round, a
Waxwing user joins a room of Prosody's `muc` Component
(conference.prosody.test, enabled in conftest.py) and exchanges group chat
with a Prosody user. Both sides use slixmpp's xep_0045 plugin; every wait
is on a condition (the joins' self-presences, each message's arrival)."""

from __future__ import annotations

import uuid

from slixmpp import JID

from conftest import PROSODY_MUC, WAXWING_MUC
from fed_helpers import S2S_TIMEOUT, login
from interop_client import DEFAULT_PLUGINS, run
from test_im import wait_until

MUC = DEFAULT_PLUGINS + ("xep_0004", "xep_0045")


async def join(client, room: JID, nick: str):
    """Joins and returns (self-presence, occupants' nicks) once the room answered."""
    pres, _subject, occupants, _history = await client.plugin["xep_0045"].join_muc_wait(
        room, nick, maxstanzas=0, timeout=S2S_TIMEOUT)
    assert 110 in pres["muc"]["status_codes"], str(pres)
    return pres, sorted(p["from"].resource for p in occupants)


def collect(client, room: JID) -> list:
    got = []
    client.add_event_handler(f"muc::{room}::message", got.append)
    return got


async def say_and_see(sender, nick: str, room: JID, receivers: list[tuple[object, list]]) -> None:
    """`sender` (occupant `nick`) says something; every receiver gets it from room/nick."""
    body = f"{nick} says {uuid.uuid4().hex[:8]}"
    sender.send_message(mto=room, mbody=body, mtype="groupchat")
    for client, got in receivers:
        await wait_until(f"{body!r} at {client.boundjid.full}",
                         lambda got=got: any(str(m["body"]) == body for m in got),
                         timeout=S2S_TIMEOUT, detail=lambda got=got: [str(m) for m in got])
        m = next(m for m in got if str(m["body"]) == body)
        assert m["from"] == JID(f"{room}/{nick}") and m["type"] == "groupchat", str(m)


async def group_chat_both_ways(host, host_nick: str, guest, guest_nick: str, room: JID) -> None:
    """The host created `room`; the guest (of the other server) joins; both see each
    other and each one's group chat reaches both."""
    at_host, at_guest = collect(host, room), collect(guest, room)
    _pres, nicks = await join(guest, room, guest_nick)
    assert nicks == sorted([host_nick, guest_nick]), nicks
    await wait_until(f"{guest_nick} in the room for {host_nick}",
                     lambda: guest_nick in (host.plugin["xep_0045"].get_roster(room) or []),
                     timeout=S2S_TIMEOUT)
    await say_and_see(guest, guest_nick, room, [(host, at_host), (guest, at_guest)])
    await say_and_see(host, host_nick, room, [(guest, at_guest), (host, at_host)])


def test_prosody_user_in_a_waxwing_room(waxwing_fed, prosody):
    room = JID(f"fed-{uuid.uuid4().hex[:8]}@{WAXWING_MUC[0]}")

    async def scenario():
        async with login(waxwing_fed, "alice", plugins=MUC) as w, login(prosody, "alice", plugins=MUC) as p:
            pres, _ = await join(w, room, "walice")
            assert 201 in pres["muc"]["status_codes"], str(pres)
            # The instant room (XEP-0045 §10.1.2): Waxwing's stay locked until configured.
            submit = w.plugin["xep_0004"].make_form(ftype="submit")
            await w.plugin["xep_0045"].set_room_config(room, submit, timeout=S2S_TIMEOUT)
            await group_chat_both_ways(w, "walice", p, "palice", room)

    run(scenario(), timeout=120)


def test_waxwing_user_in_a_prosody_room(waxwing_fed, prosody):
    room = JID(f"fed-{uuid.uuid4().hex[:8]}@{PROSODY_MUC[0]}")

    async def scenario():
        async with login(prosody, "bob", plugins=MUC) as p, login(waxwing_fed, "bob", plugins=MUC) as w:
            pres, _ = await join(p, room, "pbob")
            assert 201 in pres["muc"]["status_codes"], str(pres)
            await group_chat_both_ways(p, "pbob", w, "wbob", room)

    run(scenario(), timeout=120)
