"""External components (XEP-0114) with a real slixmpp ComponentXMPP: an echo
bot connects to the component listener with its shared secret, a user
messages an address at the bot's domain, and the echo comes back."""

from __future__ import annotations

import asyncio
import contextlib

import slixmpp

from interop_client import STEP_TIMEOUT, connect, run


class EchoBot(slixmpp.ComponentXMPP):
    """Answers every chat or normal message with the same body."""

    def __init__(self, server):
        super().__init__(server.component_domain, server.component_secret)
        self.ready: asyncio.Future = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.ready.done() or self.ready.set_result(True))
        self.add_event_handler("message", self.on_message)

    def on_message(self, msg) -> None:
        if msg["type"] in ("chat", "normal"):
            reply = msg.reply(f"echo: {msg['body']}")
            reply.send()


@contextlib.asynccontextmanager
async def echo_bot(config, host: str, port: int):
    """An EchoBot for `config` (component_domain, component_secret), connected and
    ready; disconnected on exit."""
    bot = EchoBot(config)
    bot.connect(host, port)
    try:
        await asyncio.wait_for(bot.ready, STEP_TIMEOUT)
        yield bot
    finally:
        fut = bot.disconnect(wait=2.0)
        if fut is not None:
            try:
                await asyncio.wait_for(fut, 5)
            except Exception:
                bot.abort()


def test_echo_bot_round_trip(server):
    async def scenario():
        async with echo_bot(server, server.host, server.component_port):
            async with connect(server, "alice") as alice:
                alice.send_message(mto=f"echo@{server.component_domain}", mbody="hello bot", mtype="chat")
                reply = await alice.next_message()
                assert reply["from"].bare == f"echo@{server.component_domain}", str(reply)
                assert reply["body"] == "echo: hello bot", str(reply)
                assert reply["type"] == "chat", str(reply)

    run(scenario())
