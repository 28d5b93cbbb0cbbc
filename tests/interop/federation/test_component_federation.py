"""An external component of Waxwing's server federates (issue #4: components
work for the whole network, as with Prosody and ejabberd): a slixmpp
ComponentXMPP echo bot serves echo.waxwing.test, a user of Prosody and of
ejabberd messages it over s2s, and the echo comes back over s2s, sent from the
component's domain. waxwing.test's certificate names *.waxwing.test, so both
directions can be authenticated by SASL EXTERNAL."""

from __future__ import annotations

import types
import uuid

import pytest

from conftest import COMPONENT_PORT, ECHO_COMPONENT, ECHO_SECRET
from fed_helpers import expect_message, login
from interop_client import run
from test_component import echo_bot


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request):
    return request.getfixturevalue(request.param)


def test_remote_user_talks_to_a_component(waxwing_fed, peer):
    domain = ECHO_COMPONENT[0]

    async def scenario():
        config = types.SimpleNamespace(component_domain=domain, component_secret=ECHO_SECRET)
        async with echo_bot(config, waxwing_fed.host, COMPONENT_PORT):
            async with login(peer, "alice") as user:
                body = f"hello component {uuid.uuid4().hex[:8]}"
                user.send_message(mto=f"echo@{domain}", mbody=body, mtype="chat")
                reply = await expect_message(user, f"echo: {body}", f"echo@{domain}")
                assert reply["type"] == "chat", str(reply)

    run(scenario())
    # The component's answer left Waxwing on a stream sent from its own domain.
    out = waxwing_fed.wait_auth_event("s2s stream authenticated", local=domain, remote=peer.domain)
    assert out["method"] in ("external", "dialback"), out
