"""IM core with slixmpp (issue #3): RFC 6121 roster and presence
subscriptions ending in `both`, presence show/status changes, unavailable
when a session ends (cleanly or abruptly), XEP-0191 blocking of a contact's
messages, and XEP-0160 offline messages with XEP-0203 delay stamps.

Every test uses accounts of its own (created with `waxwing ctl user add`
on the running shared server), so their rosters, blocklists and offline
queues start empty and no test sees another's state, whatever the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import struct
import time
import uuid
from typing import Any, Callable

import pytest

from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, connect, run

SHOWS = ("away", "dnd", "xa")
# Stanzas a client must NOT get are checked after a round trip that the
# server handles after it, never by waiting for a quiet period.


def new_users(server, *prefixes: str) -> list[str]:
    """Fresh accounts on the running server, one per prefix."""
    names = []
    for prefix in prefixes:
        user = f"{prefix}{uuid.uuid4().hex[:10]}"
        password = f"{user}-Pa55-wörd"
        server.add_user(user, password)
        server.users[user] = password
        names.append(user)
    return names


async def wait_until(what: str, predicate: Callable[[], Any], timeout: float = STEP_TIMEOUT,
                     detail: Callable[[], Any] = lambda: None) -> None:
    """Polls `predicate` (state slixmpp updates from its stream handlers)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}; {detail()}")
        await asyncio.sleep(0.02)


async def next_presence(client, what: str, match: Callable[[Any], bool], timeout: float = STEP_TIMEOUT):
    """The next presence at `client` that satisfies `match` (others are skipped, and reported on failure)."""
    skipped = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            pres = await asyncio.wait_for(client.presences.get(), remaining)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{client.boundjid.full}: no presence within {timeout} s: {what}; skipped: {skipped}"
            ) from None
        if match(pres):
            return pres
        skipped.append(str(pres))


async def sync(*clients) -> None:
    """A ping round trip per client, in order: whatever the server did with
    the stanzas each client sent before has been done, and whatever it
    queued for each client before has been read by slixmpp."""
    for c in clients:
        reply = await c.plugin["xep_0199"].send_ping(c.boundjid.domain, timeout=STEP_TIMEOUT)
        assert reply["type"] == "result", str(reply)


def drain(queue: asyncio.Queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def fetch_roster(client) -> dict[str, tuple[str, str]]:
    """A fresh full roster from the server (no `ver`, bypassing slixmpp's
    cached copy): bare JID → (subscription, ask)."""
    iq = client.Iq()
    iq["type"] = "get"
    iq.enable("roster")
    reply = await iq.send(timeout=STEP_TIMEOUT)
    assert reply["type"] == "result", str(reply)
    return {str(jid): (item["subscription"], item["ask"]) for jid, item in reply["roster"]["items"].items()}


async def go_online(client) -> None:
    """What a client does after login: fetch the roster (and so ask for
    pushes, RFC 6121 §2.1.6), then send initial presence."""
    await client.get_roster(timeout=STEP_TIMEOUT)
    client.send_presence()


def roster_view(client, other) -> dict[str, Any]:
    item = client.client_roster[other.boundjid.bare]
    return {"subscription": item["subscription"], "pending_out": item["pending_out"],
            "pending_in": item["pending_in"], "resources": dict(item.resources)}


async def assert_both(a, b) -> None:
    """Subscription `both` in slixmpp's roster view and in a fresh fetch, both sides."""
    for me, other in ((a, b), (b, a)):
        await wait_until(
            f"{me.boundjid.bare}'s roster shows {other.boundjid.bare} as both",
            lambda: me.client_roster[other.boundjid.bare]["subscription"] == "both"
            and not me.client_roster[other.boundjid.bare]["pending_out"],
            detail=lambda: roster_view(me, other),
        )
    for me, other in ((a, b), (b, a)):
        fetched = await fetch_roster(me)
        assert fetched.get(other.boundjid.bare) == ("both", ""), (
            f"{me.boundjid.bare} fetched roster {fetched}; expected {other.boundjid.bare} subscription=both, no ask"
        )


async def make_contacts(a, b) -> None:
    """a and b (both online) subscribe to each other through slixmpp's
    automatic handling: a asks; b (auto_authorize, auto_subscribe)
    approves and asks back; a (auto_authorize) approves."""
    a.auto_authorize, a.auto_subscribe = True, False
    b.auto_authorize, b.auto_subscribe = True, True
    a.send_presence_subscription(pto=b.boundjid.bare)
    await assert_both(a, b)
    for me, other in ((a, b), (b, a)):
        await wait_until(
            f"{me.boundjid.bare} sees {other.boundjid.full} available",
            lambda: other.boundjid.resource in me.client_roster[other.boundjid.bare].resources,
            detail=lambda: roster_view(me, other),
        )
    await sync(a, b)
    drain(a.presences), drain(b.presences)


# --- subscriptions ---------------------------------------------------------------------------


def test_mutual_subscription_ends_in_both(server):
    """RFC 6121 §3.1: a subscribes to b, b approves explicitly and subscribes
    back, a's slixmpp approves automatically; both rosters say `both`."""
    ua, ub = new_users(server, "subA", "subB")

    async def scenario():
        async with connect(server, ua) as a, connect(server, ub) as b:
            a.auto_authorize, a.auto_subscribe = True, False
            b.auto_authorize = None  # b decides by hand
            await go_online(a)
            await go_online(b)

            a.send_presence_subscription(pto=b.boundjid.bare)
            request = await next_presence(b, f"subscribe from {ua}", lambda p: p["type"] == "subscribe")
            # §3.1.3: the request carries the requester's bare JID.
            assert request["from"].full == a.boundjid.bare, str(request)
            await wait_until(f"{ua} roster: {ub} none + ask=subscribe",
                             lambda: a.client_roster[b.boundjid.bare]["pending_out"],
                             detail=lambda: roster_view(a, b))
            assert (await fetch_roster(a)).get(b.boundjid.bare) == ("none", "subscribe")

            b.send_presence(pto=a.boundjid.bare, ptype="subscribed")
            approval = await next_presence(a, f"subscribed from {ub}", lambda p: p["type"] == "subscribed")
            assert approval["from"].full == b.boundjid.bare, str(approval)
            await wait_until(f"{ua} roster: {ub} to", lambda: a.client_roster[b.boundjid.bare]["subscription"] == "to",
                             detail=lambda: roster_view(a, b))
            # §3.1.5: once approved, a gets b's current presence.
            await next_presence(a, f"available from {b.boundjid.full}",
                                lambda p: p["from"] == b.boundjid and p["type"] == "available")
            assert (await fetch_roster(b)).get(a.boundjid.bare) == ("from", "")

            b.send_presence_subscription(pto=a.boundjid.bare)  # a's slixmpp approves by itself
            await assert_both(a, b)
            await wait_until(f"{ub} sees {a.boundjid.full} available",
                             lambda: a.boundjid.resource in b.client_roster[a.boundjid.bare].resources,
                             detail=lambda: roster_view(b, a))

        # The state is stored: a new session of each gets `both` from scratch.
        async with connect(server, ua) as a, connect(server, ub) as b:
            await go_online(a)
            await go_online(b)
            await assert_both(a, b)

    run(scenario())


# --- presence ------------------------------------------------------------------------------------


def test_contacts_see_show_and_status_changes(server):
    """RFC 6121 §4.4: each contact gets the other's away/dnd/xa with status text, then plain available."""
    ua, ub = new_users(server, "showA", "showB")

    async def scenario():
        async with connect(server, ua) as a, connect(server, ub) as b:
            await go_online(a)
            await go_online(b)
            await make_contacts(a, b)
            for sender, receiver in ((a, b), (b, a)):
                for show in SHOWS + (None,):
                    status = f"{show or 'back'} — {uuid.uuid4().hex[:6]} ünïcödé & <xml>"
                    if show:
                        sender.send_presence(pshow=show, pstatus=status, ppriority=3)
                    else:
                        sender.send_presence(pstatus=status)
                    want = show or "available"
                    pres = await next_presence(
                        receiver, f"{want} {status!r} from {sender.boundjid.full}",
                        lambda p: p["from"] == sender.boundjid and p["status"] == status)
                    assert pres["type"] == want and pres["show"] == (show or ""), str(pres)
                    assert pres["to"].bare == receiver.boundjid.bare, str(pres)
                    if show:
                        assert pres["priority"] == 3, str(pres)
                    resource = sender.boundjid.resource
                    await wait_until(
                        f"{receiver.boundjid.bare}'s roster view has {sender.boundjid.full} {want}",
                        lambda: receiver.client_roster[sender.boundjid.bare].resources.get(resource, {})
                        .get("status") == status,
                        detail=lambda: roster_view(receiver, sender))
                    assert receiver.client_roster[sender.boundjid.bare].resources[resource]["show"] == (show or "")

    run(scenario())


def _abort_with_reset(client) -> None:
    """Closes the TCP connection with a RST: no </stream:stream>, no TLS close_notify."""
    sock = client.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.transport.abort()


async def leave(client, how: str) -> None:
    if how == "clean":
        await client.close()  # </stream:stream>, then waits for the server's
        return
    if how == "eof":
        client.transport.abort()  # the socket is closed (FIN), no stream close, no TLS close_notify
    elif how == "reset":
        _abort_with_reset(client)
    else:
        raise ValueError(how)
    assert await client.wait_closed(5), client.events


@pytest.mark.parametrize("how", ["clean", "eof", "reset"])
def test_contacts_see_unavailable_when_session_ends(server, how):
    """RFC 6121 §4.5.2: when a session ends — with a stream close, or with
    the socket just closed or reset — its contacts get `unavailable` from
    its full JID. Both directions."""
    ua, ub = new_users(server, "goneA", "goneB")

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(connect(server, ua))
            b = await stack.enter_async_context(connect(server, ub))
            await go_online(a)
            await go_online(b)
            await make_contacts(a, b)

            for stayer_name, leaver_name in ((ua, ub), (ub, ua)):
                stayer, leaver = (a, b) if stayer_name == ua else (b, a)
                gone = leaver.boundjid
                offline = []
                stayer.add_event_handler("got_offline", offline.append, disposable=True)
                await leave(leaver, how)
                # (The stayer may first hold the leaver's available presence,
                # e.g. the answer to its own probe after it came back.)
                pres = await next_presence(stayer, f"unavailable from {gone.full} ({how})",
                                           lambda p: p["from"] == gone and p["type"] == "unavailable")
                assert pres["to"].bare == stayer.boundjid.bare, str(pres)
                await wait_until(f"{stayer.boundjid.bare}'s slixmpp has {gone.bare} offline",
                                 lambda: bool(offline) and not stayer.client_roster[gone.bare].resources,
                                 detail=lambda: roster_view(stayer, leaver))
                # The leaver comes back; the stayer sees it available again.
                back = await stack.enter_async_context(connect(server, leaver_name))
                await go_online(back)
                await next_presence(stayer, f"available from {back.boundjid.full}",
                                    lambda p: p["from"] == back.boundjid and p["type"] == "available")
                if leaver is a:
                    a = back
                else:
                    b = back

    run(scenario())


# --- blocking ------------------------------------------------------------------------------------


def test_blocked_contact_message_is_not_delivered(server):
    """XEP-0191 with slixmpp's xep_0191 plugin: b blocks a; a's messages
    to b (bare and full JID) are not delivered and a gets
    <service-unavailable/> (§3.3); a sees b go unavailable; after unblock
    messages flow again and the blocked ones never turn up."""
    ua, ub = new_users(server, "blkA", "blkB")
    plugins = DEFAULT_PLUGINS + ("xep_0191",)

    async def scenario():
        async with connect(server, ua, plugins=plugins) as a, connect(server, ub, plugins=plugins) as b:
            await go_online(a)
            await go_online(b)
            await make_contacts(a, b)

            features = await b.plugin["xep_0030"].get_info(jid=server.domain, timeout=STEP_TIMEOUT)
            assert "urn:xmpp:blocking" in features["disco_info"]["features"], str(features)
            assert await b.plugin["xep_0191"].get_blocked_jids(timeout=STEP_TIMEOUT) == set()

            reply = await b.plugin["xep_0191"].block(a.boundjid.bare, timeout=STEP_TIMEOUT)
            assert reply["type"] == "result", str(reply)
            blocked = await b.plugin["xep_0191"].get_blocked_jids(timeout=STEP_TIMEOUT)
            assert {j.bare for j in blocked} == {a.boundjid.bare}, blocked
            # b now looks offline to a.
            gone = await next_presence(a, f"unavailable from {b.boundjid.full} after the block",
                                       lambda p: p["from"] == b.boundjid)
            assert gone["type"] == "unavailable", str(gone)

            secret = f"blocked {uuid.uuid4()}"
            b_mark = await b.checkpoint()
            sent = {}
            for to in (b.boundjid.bare, b.boundjid.full):
                msg = a.make_message(mto=to, mbody=f"{secret} to {to}", mtype="chat")
                msg["id"] = f"blk-{uuid.uuid4().hex[:8]}"
                sent[msg["id"]] = to
                msg.send()
            # slixmpp raises both `message` and `message_error` for an error
            # that echoes the body, so the same reply may come twice.
            errors: dict[str, Any] = {}
            while set(errors) != set(sent):
                err = await a.next_message()
                assert err["type"] == "error" and err["id"] in sent, f"expected an error reply: {err}"
                errors[err["id"]] = err
            for msg_id, err in errors.items():
                assert err["error"]["condition"] == "service-unavailable", str(err)
                assert err["from"].full == sent[msg_id], str(err)
            # Everything the server did with a's messages is done once a's
            # ping is answered; whatever it queued for b is in b's queue
            # once b's own ping is answered.
            await sync(a)
            await b.expect_nothing(b_mark)
            drain(b.messages)

            reply = await b.plugin["xep_0191"].unblock(a.boundjid.bare, timeout=STEP_TIMEOUT)
            assert reply["type"] == "result", str(reply)
            assert await b.plugin["xep_0191"].get_blocked_jids(timeout=STEP_TIMEOUT) == set()
            back = f"unblocked {uuid.uuid4()}"
            b_mark = await b.checkpoint()
            a.send_message(mto=b.boundjid.bare, mbody=back, mtype="chat")
            msg = await b.next_message()
            assert msg["body"] == back and msg["from"] == a.boundjid, f"expected {back!r} first: {msg}"
            await sync(a)
            await b.expect_only(b_mark, (f"{back!r} from {a.boundjid}",
                                         lambda s: s.name == "message" and s["body"] == back))

        # Nor were they kept for later (e.g. as offline messages).
        async with connect(server, ub) as b:
            await go_online(b)
            await sync(b)
            leaked = [str(m) for m in drain(b.messages)]
            assert not leaked, f"{ub} got messages at the next login: {leaked}"

    run(scenario())


# --- offline messages ----------------------------------------------------------------------------


def test_offline_messages_delivered_at_login_with_delay(server):
    """XEP-0160: messages to a user with no session are stored and handed to
    the next session at initial presence, in order, each with a XEP-0203
    <delay from='domain' stamp='…'/>; delivered once only."""
    ua, ub = new_users(server, "offA", "offB")
    plugins = DEFAULT_PLUGINS + ("xep_0203",)

    async def scenario():
        bodies = [f"offline {i} {uuid.uuid4().hex[:8]} ünïcödé & <xml>" for i in range(3)]
        async with connect(server, ua) as a:
            await go_online(a)
            sent_at = datetime.datetime.now(datetime.timezone.utc)
            for body in bodies:
                a.send_message(mto=f"{ub}@{server.domain}", mbody=body, mtype="chat")
            await sync(a)  # the server stores each message before it handles the next stanza
            errors = [str(m) for m in drain(a.messages)]
            assert not errors, f"{ua} got replies to messages for an offline user: {errors}"
            sender = a.boundjid

        async with connect(server, ub, plugins=plugins) as b:
            await sync(b)
            assert b.messages.empty(), "offline messages arrived before initial presence"
            await go_online(b)
            received = [await b.next_message() for _ in bodies]
            assert [m["body"] for m in received] == bodies, [str(m) for m in received]
            for m in received:
                assert m["type"] == "chat", str(m)
                assert m["from"] == sender, str(m)
                assert m["to"].bare == b.boundjid.bare, str(m)
                delay = m["delay"]
                stamp = delay["stamp"]
                assert stamp is not None, f"no XEP-0203 delay: {m}"
                assert delay["from"].full == server.domain, str(m)
                assert stamp.tzinfo is not None, str(m)
                now = datetime.datetime.now(datetime.timezone.utc)
                slack = datetime.timedelta(seconds=5)
                assert sent_at - slack <= stamp <= now + slack, f"stamp {stamp} not in [{sent_at}, {now}]: {m}"
            stamps = [m["delay"]["stamp"] for m in received]
            assert stamps == sorted(stamps), stamps
            await sync(b)
            extra = [str(m) for m in drain(b.messages)]
            assert not extra, f"more than the {len(bodies)} messages: {extra}"

        # Delivered once: the next session gets nothing.
        async with connect(server, ub, plugins=plugins) as b:
            await go_online(b)
            await sync(b)
            again = [str(m) for m in drain(b.messages)]
            assert not again, f"offline messages delivered twice: {again}"

    run(scenario())
