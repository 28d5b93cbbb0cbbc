"""Fixtures: a real `waxwing serve` process with its own config, database and ports.

The binary is $WAXWING_BIN (default target/debug/waxwing, relative to the
repository root). Each server gets a temporary directory holding its config,
SQLite database, generated development certificate and log; users are created
with `waxwing ctl user add` before it starts. At teardown it gets SIGTERM and
must exit with code 0 within 10 s.

On a failing test the server's log lines written during that test are added
to the report (section "waxwing log"), next to slixmpp's DEBUG log, which
holds every stanza sent and received (SEND:/RECV:).

Skips: with CI=true in the environment every skipped test is reported as a
failure (a run that did not test something must not be green); locally a
skip stays a skip, but the end of the run says so in a banner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from waxwing_bin import waxwing_bin

# Test modules that need this file's classes import it as `interop_conftest`:
# the name `conftest` is taken by whichever conftest pytest loaded last (the
# federation directory has its own), so `from conftest import …` is not safe.
import sys as _sys

_sys.modules.setdefault("interop_conftest", _sys.modules[__name__])

REPO_ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "localhost"
HOST = "127.0.0.1"
USERS = {
    "alice": "alice-Pa55-wörd",
    "bob": "bob secret, with = and ,",
    # carol collects the failed logins, so auth rate limits never touch alice and bob.
    "carol": "carol-password",
}
# The external component (XEP-0114) test_component.py connects as.
COMPONENT_DOMAIN = "bot.localhost"
COMPONENT_SECRET = "component-secret"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 300

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
SERVER_KEY = pytest.StashKey["WaxwingServer"]()
LOG_OFFSET_KEY = pytest.StashKey[int]()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


_next_port = [0]


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768-60999 on Linux).

    A port from bind(0) lies in that range, so a client's outgoing connection
    could take it between this check and the server's bind ("Address already
    in use" at start). 26000-30999 is clear of it, of the Rust tests' ports
    (20000-24999) and of RabbitMQ's 25672."""
    for _ in range(5000):
        port = 26000 + _next_port[0] % 5000
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 26000-30999")


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class WaxwingServer:
    """One `waxwing serve` process and everything it owns."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None):
        self.bin = waxwing_bin()
        self.dir = workdir
        self.host = HOST
        self.domain = DOMAIN
        self.users = dict(USERS if users is None else users)
        self.c2s_port = free_port()
        self.tls_port = free_port()
        self.component_port = free_port()
        # XMPP over WebSocket (test_web.py: Converse.js in Chromium).
        self.http_port = free_port()
        # The bundled web chat at /chat/ (test_web_chat.py).
        self.chat_dir = self.dir / "chat"
        self.component_domain = COMPONENT_DOMAIN
        self.component_secret = COMPONENT_SECRET
        self.config_path = self.dir / "waxwing.toml"
        self.cert_dir = self.dir / "certs"
        self.log_path = self.dir / "waxwing.log"
        self.proc: subprocess.Popen | None = None
        self._ca_pem: str | None = None

    def write_config(self) -> None:
        self.config_path.write_text(
            f"""# written by tests/interop/conftest.py
log_level = "debug"

[[host]]
domain = {toml_str(self.domain)}
# test_register.py creates its accounts in-band (XEP-0077).
allow_registration = true

[database]
url = {toml_str(f"sqlite://{self.dir / 'waxwing.db'}")}

[tls]
dev_cert_dir = {toml_str(str(self.cert_dir))}

[c2s]
listen = [{toml_str(f"{self.host}:{self.c2s_port}")}]
listen_tls = [{toml_str(f"{self.host}:{self.tls_port}")}]

[component_listener]
listen = [{toml_str(f"{self.host}:{self.component_port}")}]

[http]
listen = [{toml_str(f"{self.host}:{self.http_port}")}]
listen_tls = []
chat_dir = {toml_str(str(self.chat_dir))}

[[component]]
domain = {toml_str(self.component_domain)}
secret = {toml_str(self.component_secret)}

[admin]
# test_adhoc_admin.py: alice administers the server from her client (XEP-0133).
admins = ["alice@localhost"]

[limits]
# The failed-login tests make ~10 failures a minute from 127.0.0.1; keep the
# rate limiter (tested elsewhere) out of their way.
auth_failures_per_ip = 1000
auth_failures_per_account = 1000
""",
            encoding="utf-8",
        )

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin), "ctl", "--config", str(self.config_path), *args],
            cwd=self.dir, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def add_user(self, user: str, password: str) -> None:
        jid = f"{user}@{self.domain}"
        result = self.ctl("user", "add", jid, password)
        if result.returncode != 0:
            raise RuntimeError(
                f"`waxwing ctl --config {self.config_path} user add {jid} …` exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )

    def prepare_chat_dir(self) -> None:
        """/chat/ as an operator sets it up: the repository's Converse.js page
        (contrib/chat/index.html) with Converse's dist/ beside it (linked from
        tests/interop/web/node_modules when `npm ci` ran there)."""
        self.chat_dir.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parents[2]
        shutil.copyfile(repo / "contrib" / "chat" / "index.html", self.chat_dir / "index.html")
        dist = Path(__file__).resolve().parent / "web" / "node_modules" / "converse.js" / "dist"
        link = self.chat_dir / "dist"
        if dist.is_dir() and not link.exists():
            link.symlink_to(dist, target_is_directory=True)

    def start(self) -> None:
        if not self.bin.exists():
            raise RuntimeError(f"{self.bin} does not exist: run `cargo build --bins` (or set WAXWING_BIN)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare_chat_dir()
        self.write_config()
        for user, password in self.users.items():
            self.add_user(user, password)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.bin), "serve", "--config", str(self.config_path)],
            cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        pending = {self.c2s_port, self.tls_port, self.component_port, self.http_port}
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"waxwing serve exited with {self.proc.returncode} during start\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ports {sorted(pending)} not accepting after {START_TIMEOUT} s\n{self.log_tail()}")
            for port in list(pending):
                try:
                    socket.create_connection((self.host, port), timeout=1).close()
                    pending.discard(port)
                except OSError:
                    pass
            if pending:
                time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM, then the exit code; raises if it takes longer than STOP_TIMEOUT."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"waxwing serve did not exit within {STOP_TIMEOUT} s of SIGTERM\n{self.log_tail()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def ca_pem(self) -> str:
        """The certificate(s) the server generated in dev_cert_dir, to trust in clients."""
        if self._ca_pem is None:
            pems = []
            for path in sorted(self.cert_dir.glob("**/*")):
                if path.is_file():
                    text = path.read_text(errors="replace")
                    pems += re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
            if not pems:
                raise RuntimeError(f"no certificate found under dev_cert_dir {self.cert_dir} after start")
            self._ca_pem = "\n".join(dict.fromkeys(pems)) + "\n"
        return self._ca_pem

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
        text = ANSI_ESCAPE.sub("", self.log_text(offset)).splitlines()
        cut = f"[… {len(text) - lines} earlier lines …]\n" if len(text) > lines else ""
        return f"--- waxwing log ({self.log_path}) ---\n{cut}" + "\n".join(text[-lines:])

    def _read_features(self, sock) -> str:
        sock.sendall(
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' xml:lang='en' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>".encode()
        )
        data = b""
        while not re.search(rb"</stream:features>|<stream:features\s*/>|</stream:stream>", data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.decode("utf-8", errors="replace")

    def stream_features(self, *, timeout: float = 10) -> str:
        """The raw stream header and <stream:features/> right after direct TLS (before auth)."""
        ctx = ssl.create_default_context(cadata=self.ca_pem())
        with socket.create_connection((self.host, self.tls_port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=self.domain) as tls:
                return self._read_features(tls)

    def plain_stream_features(self, *, timeout: float = 10) -> str:
        """The raw stream header and <stream:features/> on the plain port (before STARTTLS)."""
        with socket.create_connection((self.host, self.c2s_port), timeout=timeout) as raw:
            return self._read_features(raw)

    def offered_mechanisms(self) -> list[str]:
        features = self.stream_features()
        return re.findall(r"<mechanism>\s*([^<\s]+)\s*</mechanism>", features)


@pytest.fixture(scope="session")
def waxwing():
    """The shared server for the whole interop session."""
    workdir = Path(tempfile.mkdtemp(prefix="waxwing-interop-"))
    server = WaxwingServer(workdir)
    try:
        server.start()
    except Exception as e:
        server.kill()
        pytest.fail(f"could not start waxwing: {e}", pytrace=False)
    yield server
    code = server.stop()
    assert code == 0, f"waxwing serve exited with {code} after SIGTERM\n{server.log_tail()}"
    if os.environ.get("WAXWING_INTEROP_KEEP") != "1":
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def server(waxwing, request):
    """The shared server; its log lines during this test are reported if the test fails."""
    if waxwing.proc is not None and waxwing.proc.poll() is not None:
        pytest.fail(f"waxwing serve is no longer running (exit {waxwing.proc.returncode})\n{waxwing.log_tail()}")
    request.node.stash[SERVER_KEY] = waxwing
    request.node.stash[LOG_OFFSET_KEY] = waxwing.log_size()
    return waxwing


@pytest.fixture
def fresh_server(tmp_path, request):
    """A server of this test's own (for tests that stop or restart it)."""
    srv = WaxwingServer(tmp_path / "server")
    try:
        srv.start()
    except Exception as e:
        srv.kill()
        pytest.fail(f"could not start waxwing: {e}", pytrace=False)
    request.node.stash[SERVER_KEY] = srv
    request.node.stash[LOG_OFFSET_KEY] = 0
    yield srv
    srv.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"
    if report.failed and SERVER_KEY in item.stash:
        srv = item.stash[SERVER_KEY]
        report.sections.append(("waxwing log", srv.log_tail(item.stash.get(LOG_OFFSET_KEY, 0))))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A skip is not a pass: say so loudly (under CI=true skips already failed)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    terminalreporter.write_sep("!", f"{len(skipped)} TEST(S) SKIPPED: this run did NOT test them", red=True,
                               bold=True)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"  SKIPPED {report.nodeid}: {reason}", red=True)
    terminalreporter.write_line("  (with CI=true every skip fails the run)", red=True)


def pytest_collectreport(report):
    """A whole module skipped at collection is a skip too."""
    if report.skipped and in_ci():
        report.outcome = "failed"
