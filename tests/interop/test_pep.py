"""Personal eventing (XEP-0163) on the PubSub engine (XEP-0060) with
slixmpp's xep_0060 / xep_0163 / xep_0115 plugins.

Bob's slixmpp registers an interest in the OMEMO device list (a
`+notify` feature), which its caps carry in presence; the server asks
Bob's client what the caps mean (slixmpp answers the disco#info query)
and then sends Alice's device list to Bob, and not to Carol, who has
no such interest. A stranger reads an `open` node (an OMEMO bundle) but
not a `presence` one; a conflicting publish-option is refused with
precondition-not-met; a retraction is notified.
"""

from __future__ import annotations

from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, connect, run
from test_im import go_online, make_contacts, new_users, sync, wait_until

PEP = DEFAULT_PLUGINS + ("xep_0004", "xep_0060", "xep_0115", "xep_0163")
DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
BUNDLE = "eu.siacs.conversations.axolotl.bundles:31"
TUNE = "http://jabber.org/protocol/tune"
NS_AXOLOTL = "eu.siacs.conversations.axolotl"


def options(client, **values):
    """A publish-options form."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in values.items():
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


def devicelist(*ids):
    root = ET.Element(f"{{{NS_AXOLOTL}}}list")
    for i in ids:
        ET.SubElement(root, f"{{{NS_AXOLOTL}}}device", id=str(i))
    return root


def test_omemo_device_list_reaches_interested_contact_only(server):
    alice, bob, carol = new_users(server, "pepalice", "pepbob", "pepcarol")

    async def scenario():
        async with connect(server, alice, plugins=PEP) as a, \
                connect(server, bob, plugins=PEP) as b, \
                connect(server, carol, plugins=PEP) as c:
            info = await a.plugin["xep_0030"].get_info(jid=a.boundjid.bare, timeout=STEP_TIMEOUT)
            ids = info["disco_info"]["identities"]
            assert any(i[0] == "pubsub" and i[1] == "pep" for i in ids), ids
            features = info["disco_info"]["features"]
            for f in ("publish-options", "auto-create", "persistent-items", "last-published"):
                assert f"http://jabber.org/protocol/pubsub#{f}" in features, f

            published, retracted = [], []
            b.add_event_handler("pubsub_publish", published.append)
            b.add_event_handler("pubsub_retract", retracted.append)
            carol_events = []
            c.add_event_handler("pubsub_publish", carol_events.append)
            b.plugin["xep_0163"].add_interest(DEVICELIST)
            for client in (a, b, c):
                await go_online(client)
            await make_contacts(a, b)
            await make_contacts(a, c)

            reply = await a.plugin["xep_0060"].publish(
                a.boundjid.bare, DEVICELIST, id="current", payload=devicelist(1, 2),
                options=options(a, access_model="open"), timeout=STEP_TIMEOUT)
            assert reply["type"] == "result", str(reply)
            # Live, or as the last item once the server learned Bob's caps.
            await wait_until("Bob gets the device list",
                             lambda: any(e["pubsub_event"]["items"]["node"] == DEVICELIST for e in published))
            item = published[-1]["pubsub_event"]["items"]["item"]
            assert item["id"] == "current"
            assert item.xml.find(f"{{{NS_AXOLOTL}}}list") is not None

            # The node kept access_model open.
            cfg = await a.plugin["xep_0060"].get_node_config(a.boundjid.bare, DEVICELIST, timeout=STEP_TIMEOUT)
            form = cfg["pubsub_owner"]["configure"]["form"]
            assert form.get_values()["pubsub#access_model"] == "open", str(form)

            # A conflicting option.
            try:
                await a.plugin["xep_0060"].publish(
                    a.boundjid.bare, DEVICELIST, id="current", payload=devicelist(1),
                    options=options(a, access_model="presence"), timeout=STEP_TIMEOUT)
                raise AssertionError("a conflicting publish-option was accepted")
            except IqError as e:
                assert e.condition == "conflict", str(e.iq)
                assert "precondition-not-met" in str(e.iq)

            # Bundles are open to strangers, a presence node is not.
            async with connect(server, "carol") as stranger:  # the fixture's carol: no roster entry
                reply = await a.plugin["xep_0060"].publish(
                    a.boundjid.bare, BUNDLE, id="current",
                    payload=ET.Element(f"{{{NS_AXOLOTL}}}bundle"),
                    options=options(a, access_model="open"), timeout=STEP_TIMEOUT)
                assert reply["type"] == "result"
                iq = stranger.Iq(sto=a.boundjid.bare, stype="get")
                iq.append(ET.fromstring(
                    f"<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='{BUNDLE}'/></pubsub>"))
                got = await iq.send(timeout=STEP_TIMEOUT)
                assert got["type"] == "result" and "current" in str(got), str(got)
                tune = ET.Element(f"{{{TUNE}}}tune")
                await a.plugin["xep_0060"].publish(a.boundjid.bare, TUNE, id="t", payload=tune, timeout=STEP_TIMEOUT)
                iq = stranger.Iq(sto=a.boundjid.bare, stype="get")
                iq.append(ET.fromstring(
                    f"<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='{TUNE}'/></pubsub>"))
                try:
                    await iq.send(timeout=STEP_TIMEOUT)
                    raise AssertionError("a stranger read a presence node")
                except IqError as e:
                    assert e.condition == "not-authorized", str(e.iq)

            # A retraction is notified.
            await a.plugin["xep_0060"].retract(a.boundjid.bare, DEVICELIST, "current", timeout=STEP_TIMEOUT)
            await wait_until("Bob hears of the retraction", lambda: len(retracted) > 0)
            await sync(c)
            assert not [e for e in carol_events if e["pubsub_event"]["items"]["node"] == DEVICELIST], \
                "Carol has no +notify for the device list"

    run(scenario())


AVATAR = PEP + ("xep_0054", "xep_0084")


def test_avatar_published_with_xep_0084_becomes_the_vcard_photo(server):
    (user,) = new_users(server, "pepavatar")
    image = b"\x89PNG\r\n\x1a\n interop avatar bytes"

    async def scenario():
        async with connect(server, user, plugins=AVATAR) as a:
            info = await a.plugin["xep_0030"].get_info(jid=a.boundjid.bare, timeout=STEP_TIMEOUT)
            assert "urn:xmpp:pep-vcard-conversion:0" in info["disco_info"]["features"]
            avatar = a.plugin["xep_0084"]
            avatar_id = avatar.generate_id(image)
            await avatar.publish_avatar(image, timeout=STEP_TIMEOUT)
            await avatar.publish_avatar_metadata(
                {"id": avatar_id, "type": "image/png", "bytes": len(image)}, timeout=STEP_TIMEOUT)
            reply = await a.plugin["xep_0054"].get_vcard(a.boundjid.bare, local=False, timeout=STEP_TIMEOUT)
            photo = reply["vcard_temp"]["PHOTO"]
            assert photo["BINVAL"] == image, str(reply)
            assert photo["TYPE"] == "image/png"

    run(scenario())


BOOKMARKS = PEP + ("xep_0048", "xep_0049", "xep_0223", "xep_0402")


def test_xep_0048_bookmarks_in_private_storage_become_native_bookmarks(server):
    (user,) = new_users(server, "pepbookmarks")

    async def scenario():
        async with connect(server, user, plugins=BOOKMARKS) as a:
            info = await a.plugin["xep_0030"].get_info(jid=a.boundjid.bare, timeout=STEP_TIMEOUT)
            for f in ("urn:xmpp:bookmarks:1#compat", "urn:xmpp:bookmarks:1#compat-pep"):
                assert f in info["disco_info"]["features"], f
            from slixmpp.plugins.xep_0048.stanza import Bookmarks
            bookmarks = Bookmarks()
            bookmarks.add_conference("lounge@rooms.example", "me", name="Lounge", autojoin=True)
            await a.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0049", timeout=STEP_TIMEOUT)
            got = await a.plugin["xep_0060"].get_items(a.boundjid.bare, "urn:xmpp:bookmarks:1", timeout=STEP_TIMEOUT)
            items = list(got["pubsub"]["items"])
            assert [i["id"] for i in items] == ["lounge@rooms.example"], str(got)
            conference = items[0].xml.find("{urn:xmpp:bookmarks:1}conference")
            assert conference is not None and conference.get("name") == "Lounge", str(got)
            assert conference.get("autojoin") in ("true", "1")

    run(scenario())
