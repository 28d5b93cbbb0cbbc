"""The harness itself, without Waxwing: Prosody (prosody.test) and ejabberd
(ejabberd.test) federate over STARTTLS with certificates from the test CA, and
a slixmpp user on each exchanges a message both ways. If this fails, the
Waxwing federation tests cannot tell anything."""

from __future__ import annotations

from fed_helpers import exchange, login
from interop_client import run


def test_prosody_and_ejabberd_exchange_messages(prosody, ejabberd):
    p_log, e_log = prosody.log_size(), ejabberd.log_size()

    async def scenario():
        async with login(prosody, "alice") as p, login(ejabberd, "alice") as e:
            await exchange(p, e)
            await exchange(e, p)

    run(scenario())
    # Both directions authenticated by certificate (test CA), not by dialback.
    ejabberd.wait_log(e_log, "Accepted inbound s2s EXTERNAL authentication prosody.test -> ejabberd.test")
    ejabberd.wait_log(e_log, "Accepted outbound s2s EXTERNAL authentication ejabberd.test -> prosody.test")
    prosody.wait_log(p_log, "certificate chain validation result: valid")
    prosody.wait_log(p_log, "Incoming s2s connection ejabberd.test->prosody.test complete")
