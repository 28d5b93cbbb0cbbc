"""slixmpp clients for the interop tests.

`connect(server, "alice", ...)` opens a real slixmpp client stream to the
server under test (STARTTLS on the c2s port, or direct TLS on the XEP-0368
port), authenticates with exactly the SASL mechanism asked for, binds a
resource and returns the client once `session_start` has fired. Everything
waits with a timeout so a broken server fails a test instead of hanging it.

Channel binding: Python's `ssl` module offers only `tls-unique`, which does
not exist in TLS 1.3 (RFC 9266), and slixmpp gives up on SCRAM-*-PLUS there.
We compute `tls-exporter` ourselves from the TLS 1.3 exporter secret that
OpenSSL writes to a per-client key log file, and hand it to slixmpp's SCRAM
implementation, which then sends `p=tls-exporter` (RFC 9266, RFC 5929).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import ssl
import tempfile
import uuid
from typing import Any, AsyncIterator, Callable

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout  # noqa: F401  (re-exported for tests)

log = logging.getLogger("interop")

# Seconds any single network step (login, an IQ round trip, a message) may take.
STEP_TIMEOUT = 20.0

# Plugins every client loads: disco, ping, version, time.
DEFAULT_PLUGINS = ("xep_0030", "xep_0092", "xep_0199", "xep_0202")


class LoginFailed(Exception):
    """The server refused authentication or closed the stream before session start."""

    def __init__(self, message: str, condition: str | None = None, events: list[str] | None = None):
        self.condition = condition
        self.events = events or []
        detail = "; ".join(self.events)
        super().__init__(f"{message} (condition={condition!r}; events: {detail})")


# --- TLS 1.3 exporter (RFC 8446 §7.5) for tls-exporter channel binding (RFC 9266) ---


def _hkdf_expand(hash_fn, prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hash_fn).digest()
        out += block
        counter += 1
    return out[:length]


def _hkdf_expand_label(hash_fn, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full_label)]) + full_label + bytes([len(context)]) + context
    return _hkdf_expand(hash_fn, secret, info, length)


def tls13_exporter(hash_fn, exporter_master_secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """TLS-Exporter(label, context, length) from the exporter master secret."""
    empty_hash = hash_fn(b"").digest()
    derived = _hkdf_expand_label(hash_fn, exporter_master_secret, label, empty_hash, hash_fn().digest_size)
    return _hkdf_expand_label(hash_fn, derived, b"exporter", hash_fn(context).digest(), length)


def tls_exporter_binding(ssl_object: ssl.SSLObject, keylog_path: str) -> bytes | None:
    """The RFC 9266 `tls-exporter` channel binding of a TLS 1.3 connection, or None."""
    if ssl_object.version() != "TLSv1.3":
        return None
    with open(keylog_path, encoding="ascii") as f:
        secrets = [line.split() for line in f if line.startswith("EXPORTER_SECRET ")]
    if not secrets:
        return None
    secret = bytes.fromhex(secrets[-1][2])
    cipher = ssl_object.cipher()[0]
    hash_fn = hashlib.sha384 if cipher.endswith("SHA384") else hashlib.sha256
    return tls13_exporter(hash_fn, secret, b"EXPORTER-Channel-Binding", b"", 32)


# --- the client ---


class Client(slixmpp.ClientXMPP):
    """A slixmpp client with queues for what the tests wait on.

    Every stanza received is also recorded in `received` (an incoming
    filter, before any handler or queue sees it), so a claim that something
    was *not* delivered is checked against everything that arrived:
    `mark = await c.checkpoint()`, the test's actions, then
    `await c.expect_only(mark, ("what", predicate), …)` or
    `await c.expect_nothing(mark)`.
    """

    def __init__(
        self,
        jid: str,
        password: str,
        *,
        ca_pem: str,
        mechanism: str | None,
        plugins: tuple[str, ...] = DEFAULT_PLUGINS,
        tamper_channel_binding: bool = False,
        deny_binding_support: bool = False,
    ):
        mech_cfg: dict[str, Any] = {"unencrypted_plain": False, "unencrypted_scram": False}
        if mechanism:
            mech_cfg["use_mech"] = mechanism
        super().__init__(jid, password, plugin_config={"feature_mechanisms": mech_cfg})
        self.events: list[str] = []
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        self.stream_errors: list[str] = []
        self.received: list[Any] = []
        self._barriers = 0
        self.auth_failures: list[str] = []
        self.sasl_mechanisms_offered: list[str] = []
        self._ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._closed: asyncio.Future = asyncio.get_running_loop().create_future()
        # A login failure after a test stopped waiting is not worth a warning.
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.tamper_channel_binding = tamper_channel_binding

        # Trust exactly the server's (self-signed, development) certificate,
        # with hostname checking against the XMPP domain.
        fd, self.keylog_path = tempfile.mkstemp(prefix="waxwing-keylog-", suffix=".txt")
        os.close(fd)
        ctx = ssl.create_default_context(cadata=ca_pem)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.keylog_filename = self.keylog_path
        self.ssl_context = ctx

        for plugin in plugins:
            self.register_plugin(plugin)

        mechs = self.plugin["feature_mechanisms"]
        original_credentials = mechs.sasl_callback
        original_security = mechs.security_callback

        def credentials(required: set[str], optional: set[str]) -> dict[str, Any]:
            result = original_credentials(required, optional)
            if "channel_binding" in set(required) | set(optional) and isinstance(self.socket, ssl.SSLObject):
                if self.socket.version() == "TLSv1.3":
                    result["channel_binding"] = tls_exporter_binding(self.socket, self.keylog_path)
                binding = result.get("channel_binding")
                if binding and self.tamper_channel_binding:
                    result["channel_binding"] = bytes([binding[0] ^ 0xFF]) + binding[1:]
            return result

        def security(values: set[str]) -> dict[str, Any]:
            result = original_security(values)
            if deny_binding_support and "binding_proposed" in values:
                # Pretend the server offered no -PLUS mechanism: slixmpp then
                # sends the GS2 flag "y" (RFC 5802 §6: downgrade detection).
                result["binding_proposed"] = False
            return result

        mechs.sasl_callback = credentials
        mechs.security_callback = security

        self.add_filter("in", self._record)
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.add_event_handler("failed_all_auth", lambda _e: self._fail_login("no more mechanisms to try"))
        self.add_event_handler("no_auth", lambda _e: self._fail_login("no acceptable SASL mechanism offered"))
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("connection_failed", self._on_connection_failed)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("message_error", self.messages.put_nowait)
        self.add_event_handler("presence", self.presences.put_nowait)
        self.add_event_handler("stream_negotiated", lambda _e: self.events.append("stream negotiated"))
        self.add_event_handler("auth_success", lambda _e: self.events.append("SASL success"))
        self.add_event_handler("connected", lambda _e: self.events.append("TCP connected"))
        self.add_event_handler("tls_success", lambda _e: self.events.append("TLS established"))
        self.add_event_handler("session_bind", lambda jid: self.events.append(f"bound {jid}"))

    # event handlers

    def _record(self, stanza: Any) -> Any:
        if getattr(stanza, "name", None) in ("message", "presence", "iq"):
            self.received.append(stanza)
        return stanza

    def _on_session_start(self, _event: Any) -> None:
        self.events.append(f"session started as {self.boundjid.full}")
        if not self._ready.done():
            self._ready.set_result(True)

    def _on_failed_auth(self, failure: Any) -> None:
        condition = failure["condition"]
        text = failure["text"]
        self.auth_failures.append(condition)
        self.events.append(f"SASL failure <{condition}/> text={text!r}")
        self._fail_login("SASL authentication failed", condition)

    def _on_stream_error(self, error: Any) -> None:
        condition = error["condition"]
        self.stream_errors.append(condition)
        self.events.append(f"stream error <{condition}/> text={error['text']!r}")
        self._fail_login("stream error", condition)

    def _on_connection_failed(self, error: Any) -> None:
        self.events.append(f"connection failed: {error}")

    def _on_disconnected(self, reason: Any) -> None:
        self.events.append(f"disconnected: {reason}")
        self._fail_login("disconnected before session start")
        if not self._closed.done():
            self._closed.set_result(True)

    def _fail_login(self, message: str, condition: str | None = None) -> None:
        if not self._ready.done():
            self._ready.set_exception(LoginFailed(message, condition, list(self.events)))

    # helpers for tests

    @property
    def mechanism_used(self) -> str | None:
        mech = self.plugin["feature_mechanisms"].mech
        return mech.name if mech is not None else None

    @property
    def tls_version(self) -> str | None:
        return self.socket.version() if isinstance(self.socket, ssl.SSLObject) else None

    async def wait_ready(self, timeout: float = STEP_TIMEOUT) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            raise LoginFailed(f"no session start within {timeout} s", None, list(self.events)) from None

    async def wait_closed(self, timeout: float = STEP_TIMEOUT) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def next_message(self, timeout: float = STEP_TIMEOUT):
        try:
            return await asyncio.wait_for(self.messages.get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.boundjid.full}: no message within {timeout} s") from None

    # strict checks: "nothing but X arrived"

    def mark(self) -> int:
        """A position in `received`; what arrives after it is what `expect_only` checks."""
        return len(self.received)

    async def barrier(self, timeout: float = STEP_TIMEOUT) -> None:
        """A ping round trip to the own server: once answered, everything the server
        routed to this session before it handled the ping has been received (one
        session's stanzas are delivered in order). The ping's answer is not recorded."""
        self._barriers += 1
        iq = self.Iq()
        iq["type"] = "get"
        iq["to"] = self.boundjid.domain
        iq["id"] = f"barrier-{self._barriers}-{uuid.uuid4().hex[:6]}"
        iq.enable("ping")
        reply = await iq.send(timeout=timeout)
        assert reply["type"] == "result", f"barrier: {reply}"
        self.received = [s for s in self.received
                         if not (s.name == "iq" and s["id"] == iq["id"])]

    async def checkpoint(self) -> int:
        """A barrier, then a mark: anything that was already on its way is before it."""
        await self.barrier()
        return self.mark()

    async def expect_only(self, since: int, *allowed: tuple[str, Callable[[Any], bool]]) -> list:
        """After a barrier, every stanza received since `since` must match one entry of
        `allowed` ((description, predicate) pairs, each matching exactly one stanza, in any
        order) and every entry must be used; fails listing everything received otherwise.
        Returns the stanzas since `since`."""
        await self.barrier()
        got = self.received[since:]
        listing = "".join(f"\n  {s}" for s in got) or " (nothing)"
        used = [False] * len(allowed)
        for stanza in got:
            for i, (_what, match) in enumerate(allowed):
                if not used[i] and match(stanza):
                    used[i] = True
                    break
            else:
                raise AssertionError(f"{self.boundjid.full}: unexpected {stanza}; received since the mark:{listing}")
        for i, (what, _match) in enumerate(allowed):
            if not used[i]:
                raise AssertionError(f"{self.boundjid.full}: expected {what}; received since the mark:{listing}")
        return got

    async def expect_nothing(self, since: int) -> None:
        """Nothing at all arrived since `since` (checked after a barrier)."""
        await self.expect_only(since)

    async def close(self) -> None:
        if not self._closed.done():
            with contextlib.suppress(Exception):
                fut = self.disconnect(wait=2.0)
                if fut is not None:
                    await asyncio.wait_for(fut, 5)
            await self.wait_closed(5)
            if not self._closed.done():
                self.abort()
        with contextlib.suppress(OSError):
            os.unlink(self.keylog_path)


def make_client(server, user: str, *, password: str | None = None, mechanism: str | None = "SCRAM-SHA-256",
                resource: str | None = None, **kwargs: Any) -> Client:
    """A Client for `user@domain` (not connected yet)."""
    password = server.users[user] if password is None else password
    resource = resource or f"interop-{uuid.uuid4().hex[:8]}"
    return Client(f"{user}@{server.domain}/{resource}", password, ca_pem=server.ca_pem(),
                  mechanism=mechanism, **kwargs)


def start_connect(client: Client, server, transport: str) -> None:
    """Begin connecting `client` to the server over "starttls" or "direct_tls"."""
    if transport == "starttls":
        client.enable_direct_tls, client.enable_starttls, client.enable_plaintext = False, True, False
        client.connect(server.host, server.c2s_port)
    elif transport == "direct_tls":
        client.enable_direct_tls, client.enable_starttls, client.enable_plaintext = True, False, False
        client.connect(server.host, server.tls_port)
    else:
        raise ValueError(transport)


@contextlib.asynccontextmanager
async def connect(server, user: str, *, transport: str = "starttls", presence: bool = False,
                  **kwargs: Any) -> AsyncIterator[Client]:
    """A logged-in, bound client for `user` (see `make_client`); disconnected on exit."""
    client = make_client(server, user, **kwargs)
    try:
        start_connect(client, server, transport)
        await client.wait_ready()
        if presence:
            client.send_presence()
        yield client
    finally:
        await client.close()


def run(coro, timeout: float = 90.0):
    """Run one test coroutine on a fresh event loop, failing it after `timeout` seconds."""

    async def guarded():
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"test did not finish within {timeout} s") from None

    return asyncio.run(guarded())
