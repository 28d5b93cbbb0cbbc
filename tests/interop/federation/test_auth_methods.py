"""Which s2s authentication method Waxwing (waxwing.test) and each peer use,
in each direction. Both peers have certificates from the test CA, which
Waxwing trusts, and trust Waxwing's: every stream between them must be
authenticated with SASL EXTERNAL (XEP-0178), never dialback:

- Waxwing → peer (Waxwing's outgoing stream): Waxwing logs
  `s2s stream authenticated local=waxwing.test remote=<peer> method="external"`;
- peer → Waxwing (Waxwing's incoming stream): Waxwing logs
  `s2s peer authenticated with SASL EXTERNAL domain=<peer>`, and no
  `dialback result from=<peer>`.

The peer's own log has to agree (ejabberd and Prosody name the mechanism and
the direction). Waxwing is restarted first, so the streams are set up by this
test and every log is read from where it stood after the restart.
"""

from __future__ import annotations

import pytest

from fed_helpers import exchange, login
from interop_client import run

# What each peer logs when a stream with waxwing.test authenticated by SASL EXTERNAL:
# (peer → Waxwing, Waxwing → peer).
PEER_SAYS_EXTERNAL = {
    "ejabberd": (
        "Accepted outbound s2s EXTERNAL authentication ejabberd.test -> {waxwing}",
        "Accepted inbound s2s EXTERNAL authentication {waxwing} -> ejabberd.test",
    ),
    "prosody": (
        "SASL EXTERNAL with {waxwing} succeeded",
        "Accepting SASL EXTERNAL identity from {waxwing}",
    ),
}


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request):
    return request.getfixturevalue(request.param)


def test_sasl_external_both_ways(waxwing_fed, peer, fresh):
    logs = fresh(waxwing_fed, peer)

    async def scenario():
        async with login(waxwing_fed, "alice") as w, login(peer, "alice") as p:
            await exchange(w, p)  # needs Waxwing → peer (and the peer's reply: peer → Waxwing)
            await exchange(p, w)

    run(scenario())
    wax, other = waxwing_fed.domain, peer.domain

    # Waxwing → peer
    out = waxwing_fed.wait_auth_event("s2s stream authenticated", logs.offset, local=wax, remote=other)
    assert out["method"] == "external", f"Waxwing's stream to {other}: {out}"
    # peer → Waxwing
    waxwing_fed.wait_auth_event("s2s peer authenticated with SASL EXTERNAL", logs.offset, domain=other)

    events = waxwing_fed.auth_events(logs.offset)
    outgoing = [f for m, f in events if m == "s2s stream authenticated" and f.get("remote") == other]
    assert all(f.get("method") == "external" for f in outgoing), f"Waxwing → {other}: {outgoing}"
    dialback = [f for m, f in events if m == "dialback result" and f.get("from") == other]
    assert not dialback, f"{other} → Waxwing used dialback: {dialback}"

    # and the peer agrees, for both directions
    peer_out, peer_in = (s.format(waxwing=wax) for s in PEER_SAYS_EXTERNAL[peer.kind])
    peer.wait_log(logs.of(peer), peer_out)
    peer.wait_log(logs.of(peer), peer_in)
