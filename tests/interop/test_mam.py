"""Message Archive Management (XEP-0313) and stanza ids (XEP-0359) with
slixmpp's own plugins: xep_0359 reads the stanza-id the server put on a
delivered message, xep_0313 pages through the archive forward and backward
(its xep_0059 iterator follows <last/> with <after/>; backward, the test
follows <first/> with <before/> itself) and asks for the query form; every archive id must
be the stanza-id the recipient was given, in the order sent.
"""

from __future__ import annotations

import datetime

from slixmpp import JID

from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, connect, run
from test_im import new_users, wait_until

NS_MAM = "urn:xmpp:mam:2"
MAM = DEFAULT_PLUGINS + ("xep_0059", "xep_0297", "xep_0313", "xep_0359")
COUNT = 25


def test_history_paged_both_ways_with_slixmpp(server):
    alice, bob = new_users(server, "mamalice", "mambob")

    async def scenario():
        async with connect(server, alice, plugins=MAM) as a, connect(server, bob, plugins=MAM, presence=True) as b:
            info = await b.plugin["xep_0030"].get_info(jid=b.boundjid.bare, timeout=STEP_TIMEOUT)
            features = info["disco_info"]["features"]
            assert NS_MAM in features and f"{NS_MAM}#extended" in features and "urn:xmpp:sid:0" in features

            received = []
            b.add_event_handler("message", lambda m: received.append(m) if m["body"] else None)
            before = datetime.datetime.now(datetime.timezone.utc)
            for i in range(COUNT):
                a.send_message(mto=b.boundjid.bare, mbody=f"history {i}", mtype="chat")
            await wait_until(f"{COUNT} messages at bob", lambda: len(received) == COUNT,
                             detail=lambda: len(received))
            bodies = [f"history {i}" for i in range(COUNT)]
            assert [str(m["body"]) for m in received] == bodies
            stanza_ids = []
            for m in received:
                assert m["stanza_id"]["by"] == JID(b.boundjid.bare), str(m)
                stanza_ids.append(m["stanza_id"]["id"])
            assert len(set(stanza_ids)) == COUNT

            def unwrap(result):
                fwd = result["mam_result"]["forwarded"]
                return result["mam_result"]["id"], str(fwd["stanza"]["body"]), fwd["delay"]["stamp"]

            # Forward, 10 per page.
            forward = [unwrap(r) async for r in b.plugin["xep_0313"].iterate(
                jid=JID(b.boundjid.bare), rsm={"max": 10})]
            assert [body for _, body, _ in forward] == bodies
            assert [i for i, _, _ in forward] == stanza_ids
            for _, _, stamp in forward:
                assert stamp >= before - datetime.timedelta(seconds=1)

            # Backward from the last page, following <first/> with <before/>.
            # (Paged by hand: xep_0059's reversed iterator stops when
            # first index + page size == count, which XEP-0059 makes true of
            # the last page, the first one a backward walk gets.)
            backward, before_id, complete = [], "", False
            while not complete:
                if not before_id:
                    # The last page: the iterator's first request is <before/>.
                    page = await b.plugin["xep_0313"].retrieve(
                        jid=JID(b.boundjid.bare), rsm={"max": 7}, iterator=True, reverse=True).next()
                else:
                    page = await b.plugin["xep_0313"].retrieve(
                        jid=JID(b.boundjid.bare), rsm={"max": 7, "before": before_id}, timeout=STEP_TIMEOUT)
                assert page["type"] == "result", str(page)
                results = [unwrap(r) for r in page["mam"]["results"]]
                backward = results + backward
                before_id = page["mam_fin"]["rsm"]["first"]
                assert int(page["mam_fin"]["rsm"]["count"]) == COUNT
                assert int(page["mam_fin"]["rsm"]["first_index"]) == COUNT - len(backward)
                complete = page["mam_fin"]["complete"]
            assert [body for _, body, _ in backward] == bodies
            assert [i for i, _, _ in backward] == stanza_ids

            # One page with a filter, with the exact count and completeness.
            page = await b.plugin["xep_0313"].retrieve(
                jid=JID(b.boundjid.bare), with_jid=JID(a.boundjid.bare), rsm={"max": 5}, timeout=STEP_TIMEOUT)
            assert page["type"] == "result", str(page)
            fin = page["mam_fin"]
            assert fin["rsm"]["count"] == str(COUNT) or int(fin["rsm"]["count"]) == COUNT
            assert fin["rsm"]["first"] == stanza_ids[0]
            assert [str(r["mam_result"]["forwarded"]["stanza"]["body"]) for r in page["mam"]["results"]] \
                == bodies[:5]

            # The sender's archive has them too.
            sent = [unwrap(r)[1] async for r in a.plugin["xep_0313"].iterate(
                jid=JID(a.boundjid.bare), rsm={"max": 25})]
            assert sent == bodies

            # The query form lists the mandatory and #extended fields.
            form = await a.plugin["xep_0313"].get_fields(jid=JID(a.boundjid.bare), timeout=STEP_TIMEOUT)
            fields = {f["var"] for f in form["fields"]}
            assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= fields, fields

    run(scenario())
