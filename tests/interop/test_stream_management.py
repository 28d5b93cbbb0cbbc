"""Stream management (XEP-0198) with slixmpp's own xep_0198 plugin: it
enables resumable stream management, its connection is cut without a
stream close while a contact keeps writing, and it resumes on a new
connection, getting what it missed exactly once and without binding again.
"""

from __future__ import annotations

import asyncio

from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, connect, make_client, run, start_connect
from test_im import new_users, sync


def bodies(stanzas) -> list[str]:
    return [str(s["body"]) for s in stanzas if s.name == "message" and s["body"]]


def test_slixmpp_resumes_a_dropped_session_and_misses_nothing(server):
    alice, bob = new_users(server, "smalice", "smbob")

    async def scenario():
        loop = asyncio.get_running_loop()
        a = make_client(server, alice, plugins=DEFAULT_PLUGINS + ("xep_0198",))
        enabled, resumed = loop.create_future(), loop.create_future()
        a.add_event_handler("sm_enabled", lambda s: enabled.done() or enabled.set_result(s))
        a.add_event_handler("session_resumed", lambda s: resumed.done() or resumed.set_result(s))
        sessions_started = []
        a.add_event_handler("session_start", lambda _e: sessions_started.append(1))
        try:
            start_connect(a, server, "starttls")
            await a.wait_ready()
            await asyncio.wait_for(enabled, STEP_TIMEOUT)
            sm = a.plugin["xep_0198"]
            assert sm.sm_id, "the server offered no resumption id"
            full = a.boundjid.full
            async with connect(server, bob) as b:
                for i in range(1, 6):
                    b.send_message(mto=full, mbody=f"m{i}", mtype="chat")
                await sync(b)
                for _ in range(5):
                    await a.next_message()
                assert bodies(a.received) == [f"m{i}" for i in range(1, 6)]
                # The network goes: no </stream:stream>, no goodbye.
                a.transport.abort()
                await asyncio.sleep(0)  # let slixmpp see the connection is lost
                for i in range(6, 11):
                    b.send_message(mto=full, mbody=f"m{i}", mtype="chat")
                await sync(b)
                mark = a.mark()
                start_connect(a, server, "starttls")
                await asyncio.wait_for(resumed, STEP_TIMEOUT)
                assert a.boundjid.full == full
                for _ in range(5):
                    await a.next_message()
                await a.barrier()
                got = bodies(a.received[mark:])
                assert got == [f"m{i}" for i in range(6, 11)], got
                # Resumed, not a new session: slixmpp started one session only.
                assert len(sessions_started) == 1
                # The resumed session is the same resource, and still works both ways.
                a.send_message(mto=b.boundjid.full, mbody="back", mtype="chat")
                reply = await b.next_message()
                assert str(reply["body"]) == "back"
        finally:
            await a.close()

    run(scenario())
