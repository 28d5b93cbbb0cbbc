"""A Waxwing cluster (issue #16) federating with a real Prosody: cluster.test is
served by two nodes, n1 (where the domain resolves) and n2. Prosody's user writes
to a user on each node and both answer: n1 forwards to n2 what arrives for its
user, and n2 answers over its own server-to-server stream, which Prosody checks
by dialback against cluster.test, that is at n1 — valid because every node
derives dialback keys from the one `[s2s] dialback_secret`."""

from __future__ import annotations

import uuid

from fed_helpers import expect_message, login
from interop_client import run


def test_prosody_talks_to_users_on_every_node(waxwing_cluster, prosody):
    n1, n2 = waxwing_cluster

    async def scenario():
        async with login(n1, "alice") as a, login(n2, "bob") as b, login(prosody, "carol") as p:
            for w in (a, b):
                body = f"from prosody to {w.boundjid.full} {uuid.uuid4().hex[:8]}"
                p.send_message(mto=w.boundjid.full, mbody=body, mtype="chat")
                got = await expect_message(w, body, p.boundjid.bare)
                reply = f"from {w.boundjid.full} {uuid.uuid4().hex[:8]}"
                w.send_message(mto=got["from"], mbody=reply, mtype="chat")
                back = await expect_message(p, reply, w.boundjid.bare)
                assert back["from"].full == w.boundjid.full, back

    run(scenario(), timeout=120)
