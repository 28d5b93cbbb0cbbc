"""Helpers the federation tests share: cross-server messages and presence."""

from __future__ import annotations

import asyncio
import time
import uuid

from interop_client import STEP_TIMEOUT, connect

# Prosody stores SCRAM-SHA-1 keys; ejabberd 23.01 refuses slixmpp's tls-exporter
# channel binding on TLS 1.3 ("Invalid channel binding"): SCRAM-SHA-1 without -PLUS
# works on all three servers.
PEER_MECHANISM = "SCRAM-SHA-1"


def login(server, user: str, **kwargs):
    """connect() with the mechanism every federation server accepts, and initial
    presence sent (Prosody and ejabberd deliver a message to a bare JID only to
    available resources; otherwise it goes to offline storage)."""
    kwargs.setdefault("mechanism", PEER_MECHANISM)
    kwargs.setdefault("presence", True)
    return connect(server, user, **kwargs)

# A first stanza to a new domain waits for the s2s connection (DNS, TCP, STARTTLS,
# authentication, maybe dialback in both directions): give it longer than one step.
S2S_TIMEOUT = 20.0


async def expect_message(client, body: str, sender: str, timeout: float = S2S_TIMEOUT):
    """The next chat/normal message at `client` with `body`, from bare JID `sender`; others are reported."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            msg = await asyncio.wait_for(client.messages.get(), remaining)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{client.boundjid.full}: no message {body!r} from {sender} within {timeout} s; got: {seen}"
            ) from None
        if msg["type"] == "error":
            raise AssertionError(f"{client.boundjid.full}: error instead of {body!r}: {msg}")
        if msg["body"] == body:
            assert msg["from"].bare == sender, f"from={msg['from']} (want {sender}): {msg}"
            return msg
        seen.append(str(msg))


async def exchange(a, b) -> None:
    """A message a → b (to b's bare JID) and b → a (to a's full JID), each checked on arrival."""
    body = f"hello from {a.boundjid.domain} {uuid.uuid4().hex[:8]}"
    a.send_message(mto=b.boundjid.bare, mbody=body, mtype="chat")
    got = await expect_message(b, body, a.boundjid.bare)
    assert got["to"].bare == b.boundjid.bare
    reply = f"reply from {b.boundjid.domain} {uuid.uuid4().hex[:8]}"
    b.send_message(mto=got["from"], mbody=reply, mtype="chat")
    back = await expect_message(a, reply, b.boundjid.bare)
    assert back["to"].full == a.boundjid.full, f"to={back['to']} (want {a.boundjid.full})"


async def expect_error(client, to: str, condition: str, timeout: float = S2S_TIMEOUT):
    """The next message error at `client` from `to` (bare JID or domain); other messages are reported."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            msg = await asyncio.wait_for(client.messages.get(), remaining)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{client.boundjid.full}: no <{condition}/> error from {to} within {timeout} s; got: {seen}"
            ) from None
        if msg["type"] == "error" and msg["from"].bare == to:
            assert msg["error"]["condition"] == condition, f"want <{condition}/>: {msg}"
            return msg
        seen.append(str(msg))
