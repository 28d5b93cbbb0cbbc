"""Bidirectional s2s streams (XEP-0288) between Waxwing (waxwing.test) and a
real Prosody that loads mod_s2s_bidi (untrusted.test: its certificate is not
trusted, so the stream is authenticated by dialback, XEP-0220).

Whichever server opens the stream, the other answers on it instead of opening
one of its own:

- untrusted.test → waxwing.test first (the order of this test, when it is the
  first to talk to untrusted.test in the session): Prosody asks for bidi,
  Waxwing verifies its dialback key and logs `s2s bidi route
  local=waxwing.test remote=untrusted.test`; Waxwing's replies go out on that
  stream, so Waxwing never opens an outgoing stream to untrusted.test.
- if an earlier test had Waxwing open the stream, Waxwing's outgoing stream
  must say `bidi=true` and Prosody must never have to authenticate to
  Waxwing on a stream of its own.

Either way exactly one stream carries both directions."""

from __future__ import annotations

from fed_helpers import exchange, login
from interop_client import run


def test_one_bidi_stream_carries_both_directions(waxwing_fed, untrusted_prosody, fresh):
    wax, other = waxwing_fed.domain, untrusted_prosody.domain
    # Restarted: the stream is this test's, and the logs are read from here on.
    logs = fresh(waxwing_fed, untrusted_prosody)

    async def scenario():
        async with login(waxwing_fed, "bob") as w, login(untrusted_prosody, "bob") as u:
            await exchange(u, w)  # Prosody's stream first, when nothing is open yet
            await exchange(w, u)
            await exchange(u, w)

    run(scenario())
    events = waxwing_fed.auth_events(logs.offset)
    outgoing = [f for m, f in events if m == "s2s stream authenticated" and f.get("remote") == other]
    incoming = [f for m, f in events if m == "dialback result" and f.get("from") == other
                and f.get("answer") == "valid"]
    routes = [f for m, f in events if m == "s2s bidi route" and f.get("remote") == other]
    seen = "\n".join(f"  {m} {f}" for m, f in events)
    if incoming:
        # Prosody opened the stream (dialback, bidi asked for): Waxwing answered on it.
        assert routes and routes[0].get("local") == wax, f"no bidi route for {other}:\n{seen}"
        assert not outgoing, f"Waxwing opened its own stream to {other} despite bidi:\n{seen}"
    else:
        # Waxwing opened the stream: Prosody must have agreed to bidi.
        assert outgoing and all(f.get("bidi") == "true" for f in outgoing), seen
    # Prosody's side agrees: it used one bidirectional stream.
    untrusted_prosody.wait_log(logs.of(untrusted_prosody), "bidirectional stream")
