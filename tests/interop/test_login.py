"""Logging in with slixmpp and chatting: RFC 6120 (STARTTLS, SASL, bind),
XEP-0368 (direct TLS), RFC 5802/7677 SCRAM, RFC 9266 channel binding,
RFC 6121 message delivery."""

from __future__ import annotations

import re
import uuid

import pytest

from interop_client import LoginFailed, connect, run

TRANSPORTS = ["starttls", "direct_tls"]


async def expect_chat(receiver, sender, body: str, to: str):
    """Wait for `body` at `receiver`; check type, from (sender's full JID) and to."""
    seen = []
    while True:
        msg = await receiver.next_message()
        if msg["type"] == "error":
            raise AssertionError(f"{receiver.boundjid.full} got an error message instead of {body!r}: {msg}")
        if msg["body"] != body:
            seen.append(str(msg))
            continue
        assert msg["type"] == "chat", str(msg)
        assert msg["from"].full == sender.boundjid.full, (
            f"'from' is {msg['from'].full!r}, expected the sender's full JID {sender.boundjid.full!r}: {msg}"
        )
        assert msg["to"].full == to, f"'to' is {msg['to'].full!r}, expected {to!r}: {msg}"
        return msg


async def chat_both_ways(server, transport: str, mechanism: str):
    async with connect(server, "alice", transport=transport, mechanism=mechanism) as alice, \
            connect(server, "bob", transport=transport, mechanism=mechanism) as bob:
        for client, user in ((alice, "alice"), (bob, "bob")):
            assert client.mechanism_used == mechanism
            assert client.tls_version in ("TLSv1.2", "TLSv1.3"), f"not encrypted: {client.tls_version}"
            assert client.boundjid.bare == f"{user}@{server.domain}"
            assert client.boundjid.resource, "bound JID has no resource"

        body = f"Hello Bob, it's Alice {uuid.uuid4()} — ünïcödé & <xml> \"quotes\""
        alice.send_message(mto=bob.boundjid.full, mbody=body, mtype="chat")
        await expect_chat(bob, alice, body, to=bob.boundjid.full)

        body = f"Hi Alice {uuid.uuid4()}"
        bob.send_message(mto=alice.boundjid.full, mbody=body, mtype="chat")
        await expect_chat(alice, bob, body, to=alice.boundjid.full)


def test_scram_sha_256_starttls_chat(server):
    run(chat_both_ways(server, "starttls", "SCRAM-SHA-256"))


def test_scram_sha_256_direct_tls_chat(server):
    run(chat_both_ways(server, "direct_tls", "SCRAM-SHA-256"))


def test_chat_to_bare_jid_of_available_user(server):
    """RFC 6121 §8.5.2.1.1: a chat message to a bare JID goes to the available resource."""

    async def scenario():
        async with connect(server, "alice", presence=True) as alice, \
                connect(server, "bob", transport="direct_tls", presence=True) as bob:
            body = f"to your bare JID {uuid.uuid4()}"
            alice.send_message(mto=bob.boundjid.bare, mbody=body, mtype="chat")
            await expect_chat(bob, alice, body, to=bob.boundjid.bare)

    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
def test_login_with_mechanism(server, transport, mechanism):
    async def scenario():
        async with connect(server, "alice", transport=transport, mechanism=mechanism) as alice:
            assert alice.mechanism_used == mechanism
            assert alice.tls_version in ("TLSv1.2", "TLSv1.3")
            assert alice.boundjid.bare == f"alice@{server.domain}"

    run(scenario())


def offered_plus(server, mechanism: str) -> None:
    """Over TLS the server always offers -PLUS (RFC 9266 tls-exporter): its absence is a failure."""
    offered = server.offered_mechanisms()
    assert mechanism in offered, f"server does not offer {mechanism} over TLS (offers {offered})"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
def test_login_with_channel_binding(server, transport, mechanism):
    """SCRAM-*-PLUS with tls-exporter (RFC 9266), computed by the test from the TLS 1.3 key log."""
    offered_plus(server, mechanism)

    async def scenario():
        async with connect(server, "alice", transport=transport, mechanism=mechanism) as alice:
            assert alice.mechanism_used == mechanism
            mech = alice.plugin["feature_mechanisms"].mech
            assert alice.tls_version == "TLSv1.3", "tls-exporter binding needs TLS 1.3 here"
            assert mech.gs2_header.startswith(b"p=tls-exporter,"), mech.gs2_header

    run(scenario())


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
def test_channel_binding_mismatch_is_refused(server, mechanism):
    """A SCRAM-PLUS proof over the wrong tls-exporter data must fail (RFC 5802 §5.1 'c')."""
    offered_plus(server, mechanism)

    async def scenario():
        with pytest.raises(LoginFailed) as failure:
            async with connect(server, "carol", transport="direct_tls", mechanism=mechanism,
                               tamper_channel_binding=True):
                pass
        assert failure.value.condition == "not-authorized", str(failure.value)

    run(scenario())


def test_scram_downgrade_flag_is_refused(server):
    """GS2 flag 'y' while the server offers -PLUS means a downgrade: fail (RFC 5802 §6)."""
    offered = server.offered_mechanisms()
    assert any(m.endswith("-PLUS") for m in offered), f"server offers no -PLUS mechanism over TLS ({offered})"

    async def scenario():
        with pytest.raises(LoginFailed) as failure:
            async with connect(server, "carol", transport="direct_tls", mechanism="SCRAM-SHA-256",
                               deny_binding_support=True):
                pass
        assert failure.value.condition == "not-authorized", str(failure.value)

    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
def test_wrong_password_fails_cleanly(server, transport, mechanism):
    """RFC 6120 §6.4.5: <failure><not-authorized/></failure>, then the server still works."""

    async def scenario():
        with pytest.raises(LoginFailed) as failure:
            async with connect(server, "carol", password="not-carols-password", transport=transport,
                               mechanism=mechanism):
                pass
        assert failure.value.condition == "not-authorized", str(failure.value)
        assert not any(e.startswith("stream error") for e in failure.value.events), failure.value.events

        async with connect(server, "carol", transport=transport, mechanism=mechanism) as carol:
            assert carol.boundjid.bare == f"carol@{server.domain}"

    run(scenario())


def test_unknown_user_fails_like_wrong_password(server):
    """No account enumeration: an unknown user gets <not-authorized/> as well (RFC 6120 §6.4.5)."""

    async def scenario():
        with pytest.raises(LoginFailed) as failure:
            async with connect(server, "nobody", password="whatever", mechanism="SCRAM-SHA-256"):
                pass
        assert failure.value.condition == "not-authorized", str(failure.value)

    run(scenario())


def test_starttls_required_before_auth(server):
    """The plain port offers <starttls><required/></starttls> and never PLAIN in the clear."""
    features = server.plain_stream_features()
    assert re.search(r"<starttls\b[^>]*urn:ietf:params:xml:ns:xmpp-tls", features), features
    assert re.search(r"<required\s*/>", features), f"require_encryption is on by default: {features}"
    assert "<mechanism>PLAIN</mechanism>" not in features, features


def test_concurrent_resources_of_one_account(server):
    """Two sessions of one account bind distinct full JIDs and both get messages to their full JID."""

    async def scenario():
        async with connect(server, "bob", resource="phone") as phone, \
                connect(server, "bob", transport="direct_tls", resource="laptop") as laptop, \
                connect(server, "alice") as alice:
            assert phone.boundjid.full != laptop.boundjid.full
            for target in (phone, laptop):
                body = f"to {target.boundjid.resource} {uuid.uuid4()}"
                alice.send_message(mto=target.boundjid.full, mbody=body, mtype="chat")
                await expect_chat(target, alice, body, to=target.boundjid.full)

    run(scenario())

