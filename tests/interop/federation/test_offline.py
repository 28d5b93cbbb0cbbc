"""Offline delivery across servers (issue #4: "exactly as locally"): a user of
Prosody or ejabberd writes to a Waxwing user who is offline; Waxwing stores
the message and hands it over, stamped with XEP-0203 delay, when that user
comes online."""

from __future__ import annotations

import uuid

import pytest

from fed_helpers import expect_message, login
from interop_client import run


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request):
    return request.getfixturevalue(request.param)


def test_message_to_offline_waxwing_user_is_delivered_at_login(waxwing_fed, peer):
    # carol is offline on Waxwing until the message has been stored.
    carol = waxwing_fed.jid("carol")

    async def scenario():
        async with login(peer, "alice") as p, login(waxwing_fed, "alice") as w:
            body = f"while you were out {uuid.uuid4().hex[:8]}"
            p.send_message(mto=carol, mbody=body, mtype="chat")
            # Both messages take the same s2s stream, in order: once the marker
            # is at Waxwing's alice, the first one has been stored for carol.
            marker = f"marker {uuid.uuid4().hex[:8]}"
            p.send_message(mto=w.boundjid.bare, mbody=marker, mtype="chat")
            await expect_message(w, marker, p.boundjid.bare)
            async with login(waxwing_fed, "carol") as c:
                got = await expect_message(c, body, p.boundjid.bare)
                delay = got.xml.find("{urn:xmpp:delay}delay")
                assert delay is not None, f"no XEP-0203 delay on an offline message: {got}"
                assert delay.get("stamp"), str(got)

    run(scenario())
