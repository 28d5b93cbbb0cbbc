"""SIGTERM with clients connected: every stream is closed, the process exits 0 promptly."""

from __future__ import annotations

import asyncio
import time

from interop_client import connect, run


def test_sigterm_closes_client_streams(fresh_server):
    async def scenario():
        async with connect(fresh_server, "alice") as alice, \
                connect(fresh_server, "bob", transport="direct_tls") as bob:
            started = time.monotonic()
            code = await asyncio.to_thread(fresh_server.stop)
            elapsed = time.monotonic() - started
            assert code == 0, f"exit code {code} after SIGTERM"
            for client in (alice, bob):
                assert await client.wait_closed(5), f"{client.boundjid.full} still connected: {client.events}"
            # RFC 6120 §4.9.3.17 names the condition for this; a plain </stream:stream> is also fine.
            for client in (alice, bob):
                assert set(client.stream_errors) <= {"system-shutdown"}, client.stream_errors
            assert elapsed < 10

    run(scenario())
