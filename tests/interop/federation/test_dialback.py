"""Server Dialback (XEP-0220) with both peers, in both directions.

dialback.test is a second Waxwing with `[s2s] sasl_external = false`: it
neither offers SASL EXTERNAL on incoming streams nor uses it on outgoing ones,
though its certificate (test CA) is as good as waxwing.test's. So with Prosody
and ejabberd every stream must be authenticated by dialback:

- dialback.test → peer (Waxwing's outgoing stream): Waxwing logs
  `s2s stream authenticated local=dialback.test remote=<peer> method="dialback"`
  (the peer answered its <db:result/> with type='valid');
- peer → dialback.test (Waxwing's incoming stream): Waxwing verified the
  peer's key with the peer's authoritative server (<db:verify/>) and logs
  `dialback result from=<peer> to=dialback.test answer="valid"`.

Messages go both ways, nothing in dialback.test's log is SASL EXTERNAL, and
the peer's log agrees: it authenticated both its stream to dialback.test and
dialback.test's stream to it with dialback.
"""

from __future__ import annotations

import re

import pytest

from fed_helpers import exchange, login
from interop_client import run



def peer_says_dialback(peer, wax: str, offset: int) -> None:
    """The peer's log after `offset` shows both streams with `wax` authenticated by dialback."""
    other = re.escape(peer.domain)
    w = re.escape(wax)
    if peer.kind == "ejabberd":
        # ejabberd_s2s_out/in:handle_auth_success/… name the mechanism
        peer.wait_log_re(offset, rf"Accepted outbound s2s dialback authentication {other} -> {w}\b")
        peer.wait_log_re(offset, rf"Accepted inbound s2s dialback authentication {w} -> {other}\b")
    elif peer.kind == "prosody":
        # Prosody's lines name the session (s2sout…/s2sin…), not always the domains: the session
        # that sent a dialback key (or asked wax about one) is the one that completed.
        sessions = re.findall(r"^\S+ \S+ \S+ (s2sout\w+)\s+debug\s+sent dialback key on outgoing s2s stream$",
                              peer.log_text(offset), re.M)
        assert sessions, f"prosody never sent a dialback key\n{peer.log_tail()}"
        peer.wait_log_re(offset, rf"^\S+ \S+ \S+ (?:{'|'.join(sessions)})\s+info\s+"
                            rf"Outgoing s2s connection {other}->{w} complete$")
        asked = peer.wait_log_re(offset, rf"^\S+ \S+ \S+ (s2sin\w+)\s+debug\s+asking {w} if key \S+ belongs to them$")
        peer.wait_log_re(offset, rf"^\S+ \S+ \S+ {asked.group(1)}\s+info\s+Incoming s2s connection {w}->{other} complete$")
    else:
        raise AssertionError(peer.kind)


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request):
    return request.getfixturevalue(request.param)


def test_dialback_both_ways(waxwing_dialback, peer, fresh):
    wax, other = waxwing_dialback.domain, peer.domain
    # Restarted: the streams are this test's, and the logs are read from here on.
    logs = fresh(waxwing_dialback, peer)

    async def scenario():
        async with login(waxwing_dialback, "alice") as d, login(peer, "alice") as p:
            await exchange(d, p)  # dialback.test → peer first, then the peer's reply
            await exchange(p, d)
            await exchange(d, p)  # and again on the streams now up

    try:
        run(scenario())
    except AssertionError as e:
        lines = "\n".join(f"  {m} {f}" for m, f in waxwing_dialback.auth_events(logs.offset)) or "  (none)"
        raise AssertionError(f"{e}\n{wax}'s s2s authentication lines so far:\n{lines}") from None

    # dialback.test → peer
    out = waxwing_dialback.wait_auth_event("s2s stream authenticated", logs.offset, local=wax, remote=other)
    assert out["method"] == "dialback", f"dialback.test's stream to {other}: {out}"
    # peer → dialback.test
    result = waxwing_dialback.wait_auth_event("dialback result", logs.offset, **{"from": other, "to": wax})
    assert result["answer"] == "valid", result

    events = waxwing_dialback.auth_events(logs.offset)
    outgoing = [f for m, f in events if m == "s2s stream authenticated" and f.get("remote") == other]
    assert all(f.get("method") == "dialback" for f in outgoing), f"dialback.test → {other}: {outgoing}"
    external = [f for m, f in events if m == "s2s peer authenticated with SASL EXTERNAL"]
    assert not external, f"SASL EXTERNAL although sasl_external = false: {external}"
    invalid = [f for m, f in events if m == "dialback result" and f.get("answer") != "valid"]
    assert not invalid, f"dialback answered invalid: {invalid}"

    # and the peer agrees, for both directions
    peer_says_dialback(peer, wax, logs.of(peer))
