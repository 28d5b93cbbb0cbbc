"""Multi-user chat (XEP-0045) with slixmpp's own xep_0045 plugin: a room
created and configured through the muc#roomconfig form, occupants and
status codes as the plugin reads them, group chat both ways, history on
join limited by maxstanzas (the plugin keeps only messages with a delay
from the room), a kick (307), and the configuration read back."""

from __future__ import annotations

import uuid

from slixmpp import JID

from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, connect, run
from test_im import new_users, wait_until

MUC = DEFAULT_PLUGINS + ("xep_0004", "xep_0045")
SERVICE = "conference.localhost"


def test_room_with_slixmpp_xep_0045(server):
    alice, bob = new_users(server, "mucalice", "mucbob")
    room = JID(f"interop-{uuid.uuid4().hex[:8]}@{SERVICE}")

    async def scenario():
        async with connect(server, alice, plugins=MUC, presence=True) as a, \
                connect(server, bob, plugins=MUC, presence=True) as b:
            items = await a.plugin["xep_0030"].get_items(jid=server.domain, timeout=STEP_TIMEOUT)
            assert SERVICE in {i[0] for i in items["disco_items"]["items"]}, str(items)
            info = await a.plugin["xep_0030"].get_info(jid=SERVICE, timeout=STEP_TIMEOUT)
            assert "http://jabber.org/protocol/muc" in info["disco_info"]["features"], str(info)

            muc_a, muc_b = a.plugin["xep_0045"], b.plugin["xep_0045"]
            pres, subject, occupants, history = await muc_a.join_muc_wait(room, "alice", timeout=STEP_TIMEOUT)
            assert {110, 201} <= pres["muc"]["status_codes"], str(pres)
            assert pres["muc"]["affiliation"] == "owner" and pres["muc"]["role"] == "moderator", str(pres)
            # The plugin counts the self-presence among the occupants.
            assert [p["from"].resource for p in occupants] == ["alice"], occupants
            assert history == [], history

            # The configuration form, filled and submitted as a client does.
            form = await muc_a.get_room_config(room, timeout=STEP_TIMEOUT)
            fields = form.get_values()
            for var in ("muc#roomconfig_roomname", "muc#roomconfig_persistentroom",
                        "muc#roomconfig_membersonly", "muc#roomconfig_whois", "muc#roomconfig_maxusers"):
                assert var in fields, f"{var} missing from {form}"
            submit = a.plugin["xep_0004"].make_form(ftype="submit")
            submit.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
            submit.add_field(var="muc#roomconfig_roomname", value="Interop room")
            submit.add_field(var="muc#roomconfig_whois", value="anyone")
            await muc_a.set_room_config(room, submit, timeout=STEP_TIMEOUT)

            echoed = []
            a.add_event_handler(f"muc::{room}::message", lambda m: echoed.append(str(m["body"])))
            for text in ("one", "two", "three"):
                a.send_message(mto=room, mbody=text, mtype="groupchat")
            await wait_until("alice's three messages echoed", lambda: len(echoed) == 3, detail=lambda: echoed)
            assert echoed == ["one", "two", "three"]

            pres_b, subject_b, occupants_b, history_b = await muc_b.join_muc_wait(
                room, "bob", maxstanzas=2, timeout=STEP_TIMEOUT)
            assert 110 in pres_b["muc"]["status_codes"], str(pres_b)
            # Non-anonymous now: 100, and everyone's real JID.
            assert 100 in pres_b["muc"]["status_codes"], str(pres_b)
            assert [str(m["body"]) for m in history_b] == ["two", "three"], history_b
            assert sorted(p["from"].resource for p in occupants_b) == ["alice", "bob"], occupants_b
            alice_seen = next(p for p in occupants_b if p["from"].resource == "alice")
            assert alice_seen["muc"]["jid"].bare == a.boundjid.bare, str(alice_seen)
            assert muc_b.get_roster(room) is not None

            got = []
            a.add_event_handler(f"muc::{room}::message", lambda m: got.append(m))
            b.send_message(mto=room, mbody="hello from bob", mtype="groupchat")
            await wait_until("bob's message at alice", lambda: any(str(m["body"]) == "hello from bob" for m in got))
            m = next(m for m in got if str(m["body"]) == "hello from bob")
            assert m["from"] == JID(f"{room}/bob") and m["type"] == "groupchat", str(m)

            # Kick: bob gets his own unavailable with 110 and 307.
            gone = []
            b.add_event_handler(f"muc::{room}::got_offline", gone.append)
            await muc_a.set_role(room, "bob", "none", reason="enough", timeout=STEP_TIMEOUT)
            await wait_until("bob's kick at bob", lambda: gone, detail=lambda: gone)
            kicked = gone[0]
            assert kicked["from"] == JID(f"{room}/bob"), str(kicked)
            assert {110, 307} <= kicked["muc"]["status_codes"], str(kicked)
            assert kicked["muc"]["item"]["reason"] == "enough", str(kicked)

            # The configuration reads back as submitted.
            form = await muc_a.get_room_config(room, timeout=STEP_TIMEOUT)
            assert form.get_values()["muc#roomconfig_roomname"] == "Interop room", str(form)

    run(scenario())
