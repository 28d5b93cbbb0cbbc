"""XEP-0077 in-band registration with slixmpp's own xep_0077 plugin: an
account created before login, used, its password changed, then cancelled
(the server ends the stream with not-authorized and the account is gone)."""

from __future__ import annotations

import uuid

import pytest

from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, LoginFailed, connect, make_client, run, start_connect

PLUGINS = DEFAULT_PLUGINS + ("xep_0077",)


def test_register_change_password_and_cancel(server):
    user = f"reg{uuid.uuid4().hex[:12]}"
    first, second = "first-Pa55", "second-Pa55"

    async def scenario():
        # slixmpp sees the iq-register stream feature, asks for the form,
        # and our handler fills it in; then it logs in with the new account.
        client = make_client(server, user, password=first, plugins=PLUGINS)
        submitted = []

        async def on_register(form):
            q = form["register"]
            assert "username" in q.get_fields() and "password" in q.get_fields(), str(form)
            iq = client.Iq()
            iq["type"] = "set"
            iq["register"]["username"] = user
            iq["register"]["password"] = first
            await iq.send(timeout=STEP_TIMEOUT)
            submitted.append(True)

        client.add_event_handler("register", on_register)
        try:
            start_connect(client, server, "starttls")
            await client.wait_ready()
            assert submitted, f"slixmpp did not register: {client.events}"
            assert client.boundjid.bare == f"{user}@{server.domain}"
            reply = await client.plugin["xep_0077"].change_password(second, timeout=STEP_TIMEOUT)
            assert reply["type"] == "result", str(reply)
        finally:
            await client.close()

        # The old password no longer works: SASL <not-authorized/> (RFC 6120 §6.5.10),
        # not some other failure (a dropped connection, a stream error) that would
        # also raise LoginFailed.
        with pytest.raises(LoginFailed) as old:
            async with connect(server, user, password=first):
                pass
        assert old.value.condition == "not-authorized", old.value

        async with connect(server, user, password=second, plugins=PLUGINS) as c:
            info = await c.plugin["xep_0077"].get_registration(timeout=STEP_TIMEOUT)
            assert info["register"]["registered"], str(info)
            reply = await c.plugin["xep_0077"].cancel_registration(timeout=STEP_TIMEOUT)
            assert reply["type"] == "result", str(reply)
            assert await c.wait_closed(), "stream still open after cancel"
            assert c.stream_errors == ["not-authorized"], c.events

        with pytest.raises(LoginFailed) as failure:
            async with connect(server, user, password=second):
                pass
        assert failure.value.condition == "not-authorized", failure.value

    run(scenario())
