"""A peer may only send from domains its stream authenticated (RFC 6120
§4.9.3.8 `invalid-from`, §13.3), against the real Waxwing binary over a real
TLS socket.

The peer here is a raw s2s client written below (ssl + socket, the XML read
incrementally with xml.etree's XMLPullParser, every read bounded): rogue.test,
with a client certificate for rogue.test from the test CA, which Waxwing
trusts. It connects to waxwing.test's s2s port from rogue.test's loopback
address, does STARTTLS, authenticates with SASL EXTERNAL as rogue.test, and:

- a message from mallory@prosody.test — a domain this stream never
  authenticated — gets `<invalid-from/>` and the stream is closed; alice
  (logged in with slixmpp) never receives it;
- a message from mallory@rogue.test on a second such connection IS delivered
  to alice (so the check is about the domain, not a broken path);
- a message sent before any authentication (before STARTTLS, and after it but
  before SASL) gets a stream error too and is not delivered.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import PROSODY, ROGUE, S2S_PORT
from fed_helpers import login
from interop_client import run

NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
READ_TIMEOUT = 10.0


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class StreamClosed(Exception):
    pass


class RawS2S:
    """One s2s connection from rogue.test to waxwing.test, driven by hand (blocking, bounded)."""

    def __init__(self, ip: str, *, local: str, remote: str, source_ip: str, cert: Path, key: Path, ca: Path):
        self.local, self.remote = local, remote
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(cert), str(key))
        self.transcript: list[str] = []
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (ip, S2S_PORT), timeout=READ_TIMEOUT, source_address=(source_ip, 0))
        self.eof = False
        self.ended = False  # </stream:stream> received
        self._events: list[tuple[str, ET.Element | None]] = []

    # --- I/O ---

    def send(self, text: str) -> None:
        self.transcript.append(f"SEND: {text}")
        self.sock.sendall(text.encode())

    def open_stream(self) -> ET.Element:
        """Sends our stream header; returns the <stream:features/> that follows the peer's header."""
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self._events = []
        self.send("<?xml version='1.0'?>"
                  "<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
                  "xmlns:stream='http://etherx.jabber.org/streams' "
                  f"from='{self.local}' to='{self.remote}' version='1.0'>")
        kind, header = self.next_event()
        assert kind == "header", f"expected a stream header, got {kind} {self._show(header)}\n{self.log()}"
        assert header.get("from") == self.remote, f"header from={header.get('from')!r}\n{self.log()}"
        features = self.next_element()
        assert features.tag == q(NS_STREAM, "features"), f"expected features, got {self._show(features)}"
        return features

    def _recv(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except (ssl.SSLEOFError, ConnectionResetError):
            data = b""
        if not data:
            self.eof = True
            self.transcript.append("RECV: (connection closed)")
            raise StreamClosed
        text = data.decode("utf-8", errors="replace")
        self.transcript.append(f"RECV: {text}")
        self.parser.feed(data)
        for event, el in self.parser.read_events():
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self._root = el
                    self._events.append(("header", el))
            else:
                self.depth -= 1
                if self.depth == 1:
                    self._events.append(("element", el))
                    self._root.remove(el)  # the stream's children are handled one by one
                elif self.depth == 0:
                    self.ended = True
                    self._events.append(("end", None))

    def next_event(self, timeout: float = READ_TIMEOUT) -> tuple[str, ET.Element | None]:
        """The next ("header", el), ("element", el) or ("end", None); StreamClosed on EOF."""
        deadline = time.monotonic() + timeout
        while not self._events:
            try:
                self._recv(deadline)
            except TimeoutError:
                raise AssertionError(f"nothing from {self.remote} within {timeout} s\n{self.log()}") from None
        return self._events.pop(0)

    def next_element(self, timeout: float = READ_TIMEOUT) -> ET.Element:
        kind, el = self.next_event(timeout)
        if kind != "element":
            raise AssertionError(f"expected an element, got {kind}\n{self.log()}")
        return el

    def expect_closed(self, timeout: float = READ_TIMEOUT) -> list[ET.Element]:
        """Reads on until the connection closes (bounded); the stream must have ended first.
        Returns the elements received meanwhile."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            try:
                self._recv(deadline)
            except StreamClosed:
                break
            except TimeoutError:
                raise AssertionError(f"{self.remote} did not close the connection within {timeout} s\n"
                                     f"{self.log()}") from None
        assert self.ended, f"connection closed without </stream:stream>\n{self.log()}"
        rest, self._events = [el for kind, el in self._events if kind == "element"], []
        return rest

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # --- negotiation ---

    def starttls(self, features: ET.Element) -> ET.Element:
        assert features.find(q(NS_TLS, "starttls")) is not None, f"no STARTTLS offered\n{self.log()}"
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        el = self.next_element()
        assert el.tag == q(NS_TLS, "proceed"), f"STARTTLS answered with {self._show(el)}\n{self.log()}"
        self.sock.settimeout(READ_TIMEOUT)
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname=self.remote)
        self.transcript.append(f"(TLS {self.sock.version()} established, client certificate for {self.local})")
        return self.open_stream()

    def sasl_external(self, features: ET.Element) -> ET.Element:
        mechs = [m.text for m in features.iter(q(NS_SASL, "mechanism"))]
        assert "EXTERNAL" in mechs, f"SASL EXTERNAL not offered (got {mechs})\n{self.log()}"
        authzid = base64.b64encode(self.local.encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{authzid}</auth>")
        el = self.next_element()
        assert el.tag == q(NS_SASL, "success"), f"SASL EXTERNAL answered with {self._show(el)}\n{self.log()}"
        return self.open_stream()

    def authenticate(self) -> None:
        self.sasl_external(self.starttls(self.open_stream()))

    def stream_error(self, timeout: float = READ_TIMEOUT) -> str:
        """Waits for <stream:error/> (other elements are reported); returns its condition."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, el = self.next_event(max(0.0, deadline - time.monotonic()))
            except StreamClosed:
                raise AssertionError(f"connection closed without a stream error; got {seen}\n{self.log()}") from None
            if kind == "element" and el.tag == q(NS_STREAM, "error"):
                conditions = [c.tag.split("}", 1)[1] for c in el if c.tag.startswith(f"{{{NS_STREAMS_ERR}}}")
                              and not c.tag.endswith("}text")]
                assert len(conditions) == 1, f"stream error conditions {conditions}\n{self.log()}"
                return conditions[0]
            if kind == "end":
                raise AssertionError(f"stream ended without a stream error; got {seen}\n{self.log()}")
            seen.append(self._show(el))

    def log(self) -> str:
        return "raw s2s transcript:\n  " + "\n  ".join(self.transcript)

    @staticmethod
    def _show(el: ET.Element | None) -> str:
        return "(none)" if el is None else ET.tostring(el, encoding="unicode")


def message(sender: str, to: str, body: str) -> str:
    return f"<message from='{sender}' to='{to}' type='chat' id='{uuid.uuid4().hex[:8]}'><body>{body}</body></message>"


@pytest.fixture(scope="module")
def rogue_cert(federation):
    return federation.pki.issue(ROGUE[0])


@pytest.fixture
def rogue(waxwing_fed, rogue_cert, federation):
    """Opens RawS2S connections rogue.test → waxwing.test; all closed at the end."""
    conns = []
    cert, key = rogue_cert

    def connect() -> RawS2S:
        conn = RawS2S(waxwing_fed.host, local=ROGUE[0], remote=waxwing_fed.domain, source_ip=ROGUE[1],
                      cert=cert, key=key, ca=federation.pki.ca)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        conn.close()


def test_spoofed_from_domain_gets_invalid_from(waxwing_fed, rogue):
    alice = waxwing_fed.jid("alice")
    spoof_body = f"spoof {uuid.uuid4().hex[:8]}"
    honest_body = f"honest {uuid.uuid4().hex[:8]}"

    def spoof() -> None:
        conn = rogue()
        conn.authenticate()
        conn.send(message(f"mallory@{PROSODY[0]}/x", alice, spoof_body))
        condition = conn.stream_error()
        assert condition == "invalid-from", f"want <invalid-from/>, got <{condition}/>\n{conn.log()}"
        conn.expect_closed()

    def honest() -> None:
        conn = rogue()
        conn.authenticate()
        conn.send(message(f"mallory@{ROGUE[0]}/x", alice, honest_body))
        conn.send("</stream:stream>")
        rest = conn.expect_closed()  # Waxwing answers our close with its own: no error in between
        assert not rest, f"unexpected answer to a stanza from the authenticated domain\n{conn.log()}"

    async def scenario():
        async with login(waxwing_fed, "alice") as a:
            mark = await a.checkpoint()
            await asyncio.to_thread(spoof)
            await asyncio.to_thread(honest)
            # Each raw stream got its answer after Waxwing handled the stanza, so what
            # it routed to alice is queued before her barrier's answer: she got the
            # honest message and nothing else (not the spoof).
            honest_from = f"mallory@{ROGUE[0]}/x"
            await a.expect_only(mark, ("the honest message", lambda s: s.name == "message"
                                       and s["body"] == honest_body and s["from"].full == honest_from))

    run(scenario())


@pytest.mark.parametrize("stage", ["before STARTTLS", "after STARTTLS, before SASL"])
def test_stanza_before_authentication_gets_stream_error(waxwing_fed, rogue, stage):
    alice = waxwing_fed.jid("alice")
    body = f"unauthenticated {uuid.uuid4().hex[:8]}"
    # RFC 6120 §5.3.1 (TLS mandatory, not negotiated) and §4.9.3.12 (stanza before the stream is
    # authenticated); §4.9.3.8 invalid-from fits the second case too (no domain authenticated yet).
    allowed = {"policy-violation"} if stage == "before STARTTLS" else {"not-authorized", "invalid-from"}

    def unauthenticated() -> str:
        conn = rogue()
        features = conn.open_stream()
        if stage != "before STARTTLS":
            conn.starttls(features)
        conn.send(message(f"mallory@{ROGUE[0]}/x", alice, body))
        condition = conn.stream_error()
        assert condition in allowed, f"want one of {sorted(allowed)}, got <{condition}/>\n{conn.log()}"
        conn.expect_closed()
        return condition

    async def scenario():
        async with login(waxwing_fed, "alice") as a:
            mark = await a.checkpoint()
            await asyncio.to_thread(unauthenticated)
            # The stream error went out after the stanza was handled: nothing reached alice.
            await a.expect_nothing(mark)

    run(scenario())
