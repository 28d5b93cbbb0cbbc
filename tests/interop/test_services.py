"""Server services a client queries on the domain: XEP-0030 disco#info,
XEP-0199 ping, XEP-0092 software version, XEP-0202 entity time, and the
RFC 6120 §8.4 answer to an IQ nobody handles."""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET

import pytest

from interop_client import STEP_TIMEOUT, IqError, connect, run

REQUIRED_FEATURES = {
    "http://jabber.org/protocol/disco#info",
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
}


def test_disco_info_on_domain(server):
    async def scenario():
        async with connect(server, "alice") as alice:
            iq = await alice.plugin["xep_0030"].get_info(jid=server.domain, timeout=STEP_TIMEOUT)
            assert iq["type"] == "result", str(iq)
            assert iq["from"].full == server.domain, str(iq)
            info = iq["disco_info"]
            features = set(info["features"])
            missing = REQUIRED_FEATURES - features
            assert not missing, f"disco#info lacks {sorted(missing)}; it lists {sorted(features)}: {iq}"
            identities = {(category, kind) for category, kind, *_ in info["identities"]}
            assert ("server", "im") in identities, f"identities {identities}: {iq}"

    run(scenario())


@pytest.mark.parametrize("transport", ["starttls", "direct_tls"])
def test_ping_server(server, transport):
    # slixmpp's xep_0199.ping() counts an error reply from one's own server as
    # a pong, so send the ping IQ ourselves and look at the reply type.
    async def scenario():
        async with connect(server, "alice", transport=transport) as alice:
            reply = await alice.plugin["xep_0199"].send_ping(server.domain, timeout=STEP_TIMEOUT)
            assert reply["type"] == "result", str(reply)
            assert reply["from"].full == server.domain, str(reply)

    run(scenario())


def test_software_version(server):
    async def scenario():
        async with connect(server, "alice") as alice:
            iq = await alice.plugin["xep_0092"].get_version(server.domain, timeout=STEP_TIMEOUT)
            assert iq["type"] == "result", str(iq)
            version = iq["software_version"]
            assert version["name"] == "Waxwing", str(iq)
            assert version["version"], f"empty <version/>: {iq}"

    run(scenario())


def test_entity_time(server):
    async def scenario():
        async with connect(server, "alice") as alice:
            iq = await alice.plugin["xep_0202"].get_entity_time(server.domain, timeout=STEP_TIMEOUT)
            assert iq["type"] == "result", str(iq)
            # slixmpp's entity_time["utc"] appends a second "Z" to the (spec-conformant)
            # "…Z" value and fails to parse it, so read the XML directly.
            time_el = iq.xml.find("{urn:xmpp:time}time")
            assert time_el is not None, f"no <time xmlns='urn:xmpp:time'/>: {iq}"
            utc_text = time_el.findtext("{urn:xmpp:time}utc") or ""
            tzo_text = time_el.findtext("{urn:xmpp:time}tzo") or ""
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", utc_text), f"<utc/> {utc_text!r}: {iq}"
            assert re.fullmatch(r"Z|[+-]\d\d:\d\d", tzo_text), f"<tzo/> {tzo_text!r}: {iq}"
            utc = datetime.datetime.fromisoformat(utc_text.replace("Z", "+00:00"))
            now = datetime.datetime.now(datetime.timezone.utc)
            assert abs((utc - now).total_seconds()) < 60, f"server time {utc} vs ours {now}: {iq}"

    run(scenario())


def test_unknown_iq_gets_service_unavailable(server):
    """RFC 6120 §8.4: an IQ get in a namespace nobody handles → <service-unavailable/>, type cancel."""

    async def scenario():
        async with connect(server, "alice") as alice:
            iq = alice.Iq()
            iq["to"] = server.domain
            iq["type"] = "get"
            iq.append(ET.Element("{urn:example:waxwing:no-such-thing}query"))
            with pytest.raises(IqError) as error:
                await iq.send(timeout=STEP_TIMEOUT)
            reply = error.value.iq
            assert reply["error"]["condition"] == "service-unavailable", str(reply)
            assert reply["error"]["type"] == "cancel", str(reply)
            assert reply["id"] == iq["id"], str(reply)

    run(scenario())
