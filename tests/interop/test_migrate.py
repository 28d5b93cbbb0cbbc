"""Moving from Prosody and ejabberd (XEP-0227, `waxwing ctl import`).

One set-up for the module: Debian's Prosody 0.12 and ejabberd 23.01 (the
packages scripts/test.sh installs for the federation tests) each run on
127.0.0.44 with a config of their own in a temporary directory. Users are
registered with prosodyctl / ejabberdctl; everything else is done THROUGH
THE PROTOCOL with slixmpp: a roster between alice and bob (a name, a group,
a mutual subscription), a pending subscription request from carol, a
vCard, a private XML document, a PEP item, a block, an offline message (and,
on Prosody, archived messages). Then the servers are stopped and export:
Prosody with `prosody-migrator` into its `xep0227` store (one
`user@host.xml` per account), ejabberd with `ejabberdctl export_piefxis`
(a main file including one file per host, SCRAM keys base64-encoded
twice). `waxwing ctl import` reads both into a fresh database, Waxwing
starts, and slixmpp checks that the users log in with their OLD passwords
and find everything. Importing again changes nothing.

What one exporter does not write is checked on the other side only:
Prosody 0.12 writes no offline messages and no blocklist, ejabberd 23.01
no PEP data and no archive; see README "Moving from Prosody or ejabberd".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from slixmpp.xmlstream import ET

from interop_client import LoginFailed, STEP_TIMEOUT, connect, make_client, run, start_connect
from waxwing_bin import waxwing_bin

IP = "127.0.0.44"
PROSODY_DOMAIN = "prosody.migrate.test"
EJABBERD_DOMAIN = "ejabberd.migrate.test"
PROSODY_PORT, EJABBERD_PORT, WAXWING_PORT, WAXWING_TLS_PORT = 5222, 5232, 5242, 5243
EJABBERD_NODE = "ejabberd-migrate@localhost"
USERS = {"alice": "alice-old-Pässword", "bob": "bob old secret", "carol": "carol-pw"}
START_TIMEOUT = 60.0
NS_PRIVATE_DOC = "urn:example:migrate-test"
PEP_NODE = "urn:example:migrate-test:status"
BLOCKED = "spammer@example.net"


def needs(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (scripts/test.sh installs Debian's prosody and ejabberd)")


def run_checked(cmd, *, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def wait_port(port: int, alive, what: str, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if not alive():
            raise RuntimeError(f"{what} died during start\n{log()}")
        try:
            socket.create_connection((IP, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {IP}:{port} not accepting after {START_TIMEOUT} s\n{log()}")
            time.sleep(0.1)


def self_signed(dir: Path, domain: str) -> tuple[Path, Path]:
    cert, key = dir / f"{domain}.crt", dir / f"{domain}.key"
    run_checked(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-days", "2", "-subj", f"/CN={domain}", "-addext", f"subjectAltName=DNS:{domain}",
                 "-keyout", str(key), "-out", str(cert)])
    return cert, key


def chown_tree(path: Path, user: str) -> None:
    shutil.chown(path, user, user)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            shutil.chown(os.path.join(root, name), user, user)


def tail(path: Path, lines: int = 150) -> str:
    try:
        return f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"--- {path}: missing ---"


class Prosody:
    def __init__(self, dir: Path):
        self.dir, self.domain, self.host, self.c2s_port = dir, PROSODY_DOMAIN, IP, PROSODY_PORT
        self.users = dict(USERS)
        self.dir.mkdir(parents=True)
        (dir / "data").mkdir()
        (dir / "export").mkdir()
        self.cert, self.key = self_signed(dir, self.domain)
        self.config = dir / "prosody.cfg.lua"
        self.proc = None
        j = json.dumps
        ssl = f"{{ certificate = {j(str(self.cert))}, key = {j(str(self.key))} }}"
        self.config.write_text(f"""-- written by tests/interop/test_migrate.py
pidfile = {j(str(dir / "prosody.pid"))}
data_path = {j(str(dir / "data"))}
daemonize = false
network_backend = "epoll"
log = {{ debug = {j(str(dir / "prosody.log"))} }}
interfaces = {{ "{IP}" }}
c2s_ports = {{ {PROSODY_PORT} }}
c2s_direct_tls_ports = {{}}
s2s_ports = {{}}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "vcard", "private", "pep", "blocklist",
                    "offline", "mam" }}
modules_disabled = {{ "s2s" }}
default_archive_policy = true
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
ssl = {ssl}
VirtualHost "{self.domain}"
  ssl = {ssl}
""")
        # The migrator: the internal store in, the xep0227 one out (written to
        # the data directory it was built with, /var/lib/prosody, which
        # export() mounts the export directory over).
        stores = ["accounts", "roster", "vcard", "private", "pep-pubsub", "archive-archive"]
        (dir / "migrator.cfg.lua").write_text(
            f"input {{ hosts = {{ [{j(self.domain)}] = {{ {', '.join(j(s) for s in stores)} }} }};"
            f" type = \"internal\"; path = {j(str(dir / 'data'))}; }}\n"
            "output { type = \"xep0227\"; }\n")
        chown_tree(dir, "prosody")

    def ca_pem(self) -> str:
        return self.cert.read_text()

    def log(self) -> str:
        return tail(self.dir / "prosody.log") + "\n" + tail(self.dir / "stdout.log")

    def ctl(self, *args: str) -> None:
        run_checked(["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups",
                     "prosodyctl", "--config", str(self.config), *args])

    def start(self) -> None:
        out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups", "prosody", "-F",
             "--config", str(self.config)],
            cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        wait_port(PROSODY_PORT, lambda: self.proc.poll() is None, "prosody", self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def export(self) -> Path:
        """prosody-migrator into the xep0227 store; returns the export directory."""
        out = self.dir / "export"
        run_checked(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                     'mount --bind "$0" /var/lib/prosody && exec "$@"', str(out),
                     "prosody-migrator", "--config", str(self.dir / "migrator.cfg.lua"), "input", "output"])
        return out


class Ejabberd:
    def __init__(self, dir: Path):
        self.dir, self.domain, self.host, self.c2s_port = dir, EJABBERD_DOMAIN, IP, EJABBERD_PORT
        self.users = dict(USERS)
        dir.mkdir(parents=True)
        for sub in ("logs", "spool", "export"):
            (dir / sub).mkdir()
        self.cert, key = self_signed(dir, self.domain)
        pem = dir / "ejabberd.pem"
        pem.write_text(key.read_text() + self.cert.read_text())
        os.chmod(pem, 0o600)
        (dir / "ejabberdctl.cfg").write_text(
            f"ERLANG_NODE={EJABBERD_NODE}\nINET_DIST_INTERFACE=127.0.0.1\nEJABBERD_PID_PATH={dir}/ejabberd.pid\n")
        (dir / "inetrc").write_text('{lookup, [file, native]}.\n')
        (dir / "ejabberd.yml").write_text(f"""# written by tests/interop/test_migrate.py
loglevel: info
hosts:
  - {self.domain}
certfiles:
  - "{pem}"
listen:
  -
    port: {EJABBERD_PORT}
    ip: "{IP}"
    module: ejabberd_c2s
    starttls_required: true
auth_method: internal
auth_password_format: scram
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
modules:
  mod_roster: {{}}
  mod_vcard: {{}}
  mod_private: {{}}
  mod_offline: {{}}
  mod_privacy: {{}}
  mod_blocking: {{}}
  mod_caps: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_pubsub:
    plugins: ["flat", "pep"]
""")
        chown_tree(dir, "ejabberd")

    def ca_pem(self) -> str:
        return self.cert.read_text()

    def ctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        d = self.dir
        cmd = ["setpriv", "--reuid=ejabberd", "--regid=ejabberd", "--init-groups", "env", f"HOME={d}",
               "ejabberdctl", "--config-dir", str(d), "--config", str(d / "ejabberd.yml"),
               "--ctl-config", str(d / "ejabberdctl.cfg"), "--logs", str(d / "logs"), "--spool", str(d / "spool"),
               *args]
        if check:
            return run_checked(cmd, timeout=timeout, cwd=d)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=d)

    def log(self) -> str:
        return "\n".join(tail(p) for p in sorted((self.dir / "logs").glob("*.log")))

    def running(self) -> bool:
        return self.ctl("status", check=False, timeout=30).returncode == 0

    def start(self) -> None:
        if self.running():
            raise RuntimeError(f"an ejabberd node {EJABBERD_NODE} is already running")
        self.ctl("start")
        deadline = time.monotonic() + START_TIMEOUT
        while not self.running():  # each status call is a bounded round trip
            if time.monotonic() > deadline:
                raise RuntimeError(f"ejabberd did not start\n{self.log()}")
        wait_port(EJABBERD_PORT, lambda: True, "ejabberd", self.log)

    def stop(self) -> None:
        if self.running():
            self.ctl("stop", check=False)
            deadline = time.monotonic() + 30
            while self.running() and time.monotonic() < deadline:
                pass

    def export(self) -> Path:
        out = self.dir / "export"
        self.ctl("export_piefxis", str(out))
        return out


class Waxwing:
    def __init__(self, dir: Path):
        self.dir, self.host, self.c2s_port = dir, IP, WAXWING_PORT
        dir.mkdir(parents=True)
        self.bin = waxwing_bin()
        self.config = dir / "waxwing.toml"
        self.db = dir / "waxwing.db"
        self.proc = None
        j = json.dumps
        self.config.write_text(f"""# written by tests/interop/test_migrate.py
log_level = "debug"
[[host]]
domain = {j(PROSODY_DOMAIN)}
[[host]]
domain = {j(EJABBERD_DOMAIN)}
[database]
url = {j(f"sqlite://{self.db}")}
[tls]
dev_cert_dir = {j(str(dir / "certs"))}
[c2s]
listen = [{j(f"{IP}:{WAXWING_PORT}")}]
listen_tls = [{j(f"{IP}:{WAXWING_TLS_PORT}")}]
[http]
listen = []
listen_tls = []
[admin]
socket = {j(str(dir / "waxwing.sock"))}
""")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin), "ctl", "--config", str(self.config), *args], cwd=self.dir,
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return tail(self.dir / "waxwing.log", 300)

    def start(self) -> None:
        log = open(self.dir / "waxwing.log", "ab")
        self.proc = subprocess.Popen([str(self.bin), "serve", "--config", str(self.config)], cwd=self.dir,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_port(WAXWING_PORT, lambda: self.proc.poll() is None, "waxwing", self.log)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def endpoint(self, domain: str):
        """What interop_client's make_client needs, for one of the hosts."""
        certs = "".join(p.read_text(errors="replace") for p in sorted((self.dir / "certs").glob("**/*"))
                        if p.is_file())
        pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", certs, re.S)
        return SimpleNamespace(domain=domain, host=IP, c2s_port=WAXWING_PORT, users=dict(USERS),
                               ca_pem=lambda: "\n".join(dict.fromkeys(pems)) + "\n")

    def row_counts(self) -> dict[str, int]:
        con = sqlite3.connect(self.db)
        try:
            counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in ("accounts", "scram_credentials", "roster_items", "user_data", "offline_messages",
                                "pubsub_nodes", "pubsub_items", "archive_blocks")}
            # The archive keeps stanzas in blocks: their count is the owners'.
            counts["archived stanzas"] = con.execute(
                "SELECT COALESCE(SUM(n), 0) FROM archive_owners").fetchone()[0]
            return counts
        finally:
            con.close()


# --- filling the source servers through the protocol ---------------------------------------


async def iq_set(client, xml: str):
    iq = client.make_iq_set()
    iq.append(ET.fromstring(xml))
    return await iq.send(timeout=STEP_TIMEOUT)


async def roster_item(client, jid: str) -> dict:
    iq = client.make_iq_get(queryxmlns="jabber:iq:roster")
    reply = await iq.send(timeout=STEP_TIMEOUT)
    return reply["roster"]["items"].get(jid) or {}


async def until(what: str, check, timeout: float = STEP_TIMEOUT) -> None:
    """Polls an async condition (a server round trip each time) until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout} s: {what}")


async def fill(server, *, archive: bool) -> None:
    a_jid, b_jid, c_jid = (f"{u}@{server.domain}" for u in ("alice", "bob", "carol"))
    # SCRAM-SHA-1: what both offer (ejabberd's -PLUS lacks tls-exporter).
    async with connect(server, "alice", mechanism="SCRAM-SHA-1", presence=True) as alice, \
            connect(server, "bob", mechanism="SCRAM-SHA-1", presence=True) as bob:
        # A roster between alice and bob: a name and a group on alice's side,
        # a mutual subscription (slixmpp answers subscription requests itself).
        await alice.update_roster(b_jid, name="Bobby", groups=["Friends", "Work"])
        alice.send_presence(pto=b_jid, ptype="subscribe")
        await until("alice ⇄ bob subscribed both ways",
                    lambda: _is_both(alice, b_jid))
        await iq_set(alice, "<vCard xmlns='vcard-temp'><FN>Alice Old-Server</FN><NICKNAME>al</NICKNAME></vCard>")
        await iq_set(alice, f"<query xmlns='jabber:iq:private'><prefs xmlns='{NS_PRIVATE_DOC}'>"
                            "<colour>teal</colour></prefs></query>")
        await iq_set(alice, f"<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{PEP_NODE}'>"
                            f"<item id='current'><status xmlns='{PEP_NODE}'>moving house</status></item>"
                            "</publish></pubsub>")
        await iq_set(alice, f"<block xmlns='urn:xmpp:blocking'><item jid='{BLOCKED}'/></block>")
        if archive:
            msg = alice.make_message(mto=b_jid, mbody="archived before the move", mtype="chat")
            msg.send()
            await bob.next_message()
    # carol asks alice for a subscription while alice is offline: pending in.
    async with connect(server, "carol", mechanism="SCRAM-SHA-1") as carol:
        carol.send_presence(pto=a_jid, ptype="subscribe")
        # bob is offline now: this waits for him.
        carol.make_message(mto=b_jid, mbody="while you were away", mtype="chat").send()
        await carol.barrier()


async def _is_both(client, jid: str) -> bool:
    return (await roster_item(client, jid)).get("subscription") == "both"


# --- the module's one set-up ----------------------------------------------------------------


@pytest.fixture(scope="module")
def migrated():
    needs("prosody")
    needs("prosody-migrator")
    needs("ejabberdctl")
    work = Path(tempfile.mkdtemp(prefix="waxwing-migrate-"))
    os.chmod(work, 0o755)
    prosody, ejabberd = Prosody(work / "prosody"), Ejabberd(work / "ejabberd")
    wax = Waxwing(work / "waxwing")
    timings = {}
    try:
        t = time.monotonic()
        prosody.start()
        for user, pw in USERS.items():
            prosody.ctl("register", user, PROSODY_DOMAIN, pw)
        ejabberd.start()
        for user, pw in USERS.items():
            ejabberd.ctl("register", user, EJABBERD_DOMAIN, pw)
        timings["start prosody and ejabberd"] = time.monotonic() - t
        t = time.monotonic()
        run(fill(prosody, archive=True))
        run(fill(ejabberd, archive=False))
        timings["fill through the protocol"] = time.monotonic() - t
        t = time.monotonic()
        prosody.stop()
        prosody_export = prosody.export()
        ejabberd_export = ejabberd.export()
        ejabberd.stop()
        timings["export"] = time.monotonic() - t
        # A dry run through the command line writes nothing.
        dry = wax.ctl("import", "--dry-run", str(ejabberd_export))
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "would import 3 users" in dry.stdout, dry.stdout
        assert set(wax.row_counts().values()) == {0}, wax.row_counts()
        t = time.monotonic()
        imports = []
        for export in (prosody_export, ejabberd_export):
            r = wax.ctl("import", str(export))
            assert r.returncode == 0, f"ctl import {export}: {r.returncode}\n{r.stdout}\n{r.stderr}"
            imports.append(r.stdout)
        timings["import"] = time.monotonic() - t
        # Importing again (before anyone logs in and changes anything).
        counts = wax.row_counts()
        reimports = []
        for export in (prosody_export, ejabberd_export):
            r = wax.ctl("import", str(export))
            assert r.returncode == 0, f"ctl import {export} again: {r.returncode}\n{r.stdout}\n{r.stderr}"
            reimports.append(r.stdout)
        counts_again = wax.row_counts()
        wax.start()
        print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        yield SimpleNamespace(wax=wax, prosody=prosody, imports=imports, reimports=reimports, counts=counts,
                              counts_again=counts_again, prosody_export=prosody_export,
                              ejabberd_export=ejabberd_export, timings=timings)
    except Exception as e:
        pytest.fail(f"set-up failed: {e}\n{prosody.log()}\n{ejabberd.log()}\n{wax.log()}", pytrace=False)
    finally:
        prosody.stop()
        ejabberd.stop()
        code = wax.stop()
        if os.environ.get("WAXWING_INTEROP_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
        assert code in (None, 0), f"waxwing exited {code}"


def test_the_exports_are_the_real_shapes(migrated):
    # Prosody: one file per account, SCRAM-SHA-1 keys only, no password.
    alice = (migrated.prosody_export / f"alice@{PROSODY_DOMAIN}.xml").read_text()
    assert "mechanism='SCRAM-SHA-1'" in alice or 'mechanism="SCRAM-SHA-1"' in alice, alice
    assert "password=" not in alice
    # ejabberd: a main file including a host file.
    names = sorted(p.name for p in migrated.ejabberd_export.iterdir())
    assert len(names) == 2, names
    main = min((migrated.ejabberd_export / n for n in names), key=lambda p: p.stat().st_size).read_text()
    assert "xi:include" in main, main
    for out in migrated.imports:
        assert "user not imported" not in out and "file not" not in out, out


def login(wax, domain: str, user: str, mechanism: str | None):
    """Logs in; returns the mechanism that succeeded. With no mechanism
    named, slixmpp tries the offered ones in turn, best first, as after a
    failure it goes on to the next."""
    async def go():
        c = make_client(wax.endpoint(domain), user, mechanism=mechanism)
        if mechanism is None:
            c.del_event_handler("failed_auth", c._on_failed_auth)
        try:
            start_connect(c, wax.endpoint(domain), "starttls")
            await c.wait_ready()
            return c.mechanism_used
        finally:
            await c.close()
    return run(go())


def login_failure(wax, domain: str, user: str, mechanism: str) -> str | None:
    async def go():
        c = make_client(wax.endpoint(domain), user, mechanism=mechanism)
        try:
            start_connect(c, wax.endpoint(domain), "starttls")
            await c.wait_ready()
            return None
        except LoginFailed as e:
            return e.condition
        finally:
            await c.close()
    return run(go())


@pytest.mark.parametrize("domain", [PROSODY_DOMAIN, EJABBERD_DOMAIN])
def test_old_passwords_work_and_plain_upgrades_the_keys(migrated, domain):
    wax = migrated.wax
    # bob: SHA-1 keys only. SCRAM-SHA-1 works; SCRAM-SHA-256 is not available
    # for him (invalid-mechanism, not a wrong password)...
    assert login(wax, domain, "bob", "SCRAM-SHA-1") == "SCRAM-SHA-1"
    assert login_failure(wax, domain, "bob", "SCRAM-SHA-256") == "invalid-mechanism"
    # ...and a client that tries mechanisms in turn is not locked out.
    assert login(wax, domain, "bob", None) in ("SCRAM-SHA-1", "SCRAM-SHA-1-PLUS")
    # A wrong password still fails as one.
    bad = SimpleNamespace(**vars(wax.endpoint(domain)))
    bad.users = dict(USERS, carol="not-carols-password")
    async def wrong():
        c = make_client(bad, "carol", mechanism="PLAIN")
        try:
            start_connect(c, bad, "starttls")
            await c.wait_ready()
            return None
        except LoginFailed as e:
            return e.condition
        finally:
            await c.close()
    assert run(wrong()) == "not-authorized"
    # alice: PLAIN checks her old password against the SHA-1 keys and adds
    # SHA-256/512 keys; SCRAM-SHA-256 then works.
    assert login(wax, domain, "alice", "PLAIN") == "PLAIN"
    assert login(wax, domain, "alice", "SCRAM-SHA-256") == "SCRAM-SHA-256"
    assert login(wax, domain, "alice", "SCRAM-SHA-1") == "SCRAM-SHA-1"


@pytest.mark.parametrize("domain", [PROSODY_DOMAIN, EJABBERD_DOMAIN])
def test_everything_is_found_after_the_move(migrated, domain):
    wax = migrated.wax
    b_jid, c_jid = f"bob@{domain}", f"carol@{domain}"

    async def go():
        async with connect(wax.endpoint(domain), "alice", mechanism="PLAIN") as alice:
            item = await roster_item(alice, b_jid)
            assert item.get("subscription") == "both", item
            assert item.get("name") == "Bobby", item
            assert sorted(item.get("groups", [])) == ["Friends", "Work"], item
            reply = await (alice.make_iq_get(queryxmlns="jabber:iq:roster")).send(timeout=STEP_TIMEOUT)
            assert c_jid not in reply["roster"]["items"], "a pending request is no roster item"
            # The pending request from carol comes again at login.
            mark = alice.mark()
            alice.send_presence()
            await alice.barrier()
            requests = [s for s in alice.received[mark:]
                        if s.name == "presence" and s["type"] == "subscribe" and s["from"].bare == c_jid]
            assert requests, [str(s) for s in alice.received[mark:]]
            iq = alice.make_iq_get()
            iq.append(ET.fromstring("<vCard xmlns='vcard-temp'/>"))
            r = await iq.send(timeout=STEP_TIMEOUT)
            assert "Alice Old-Server" in str(r), r
            iq = alice.make_iq_get()
            iq.append(ET.fromstring(f"<query xmlns='jabber:iq:private'><prefs xmlns='{NS_PRIVATE_DOC}'/></query>"))
            r = await iq.send(timeout=STEP_TIMEOUT)
            assert "teal" in str(r), r
            if domain == PROSODY_DOMAIN:
                # ejabberd 23.01's export_piefxis writes no PEP data.
                iq = alice.make_iq_get()
                iq.append(ET.fromstring(f"<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                                        f"<items node='{PEP_NODE}'/></pubsub>"))
                r = await iq.send(timeout=STEP_TIMEOUT)
                assert "moving house" in str(r) and "current" in str(r), r
            if domain == EJABBERD_DOMAIN:
                # Prosody 0.12's xep0227 exporter writes no blocklist.
                iq = alice.make_iq_get()
                iq.append(ET.fromstring("<blocklist xmlns='urn:xmpp:blocking'/>"))
                r = await iq.send(timeout=STEP_TIMEOUT)
                assert BLOCKED in str(r), r
            else:
                # ...but it writes the archive.
                iq = alice.make_iq_set()
                iq.append(ET.fromstring("<query xmlns='urn:xmpp:mam:2' queryid='mig'/>"))
                mark = alice.mark()
                r = await iq.send(timeout=STEP_TIMEOUT)
                assert r["type"] == "result", r
                await alice.barrier()
                got = "".join(str(s) for s in alice.received[mark:])
                assert "archived before the move" in got, got
        if domain == EJABBERD_DOMAIN:
            # Prosody 0.12's xep0227 exporter writes no offline messages.
            async with connect(wax.endpoint(domain), "bob", mechanism="PLAIN", presence=True) as bob:
                m = await bob.next_message()
                assert m["body"] == "while you were away", m
                assert m["from"].bare == c_jid

    run(go())


def test_importing_again_changes_nothing(migrated):
    assert migrated.counts["accounts"] == 6, migrated.counts
    assert migrated.counts_again == migrated.counts
    for out in migrated.reimports:
        rows = re.findall(r"^(\S.*?)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M)
        assert len(rows) == 9, out
        for kind, created, changed, _unchanged in rows:
            assert (created, changed) == ("0", "0"), f"{kind}\n{out}"


def test_prosody_reads_a_waxwing_export(migrated):
    """The way back: `ctl export` → prosody-migrator (xep0227 store in,
    internal out) → Prosody, where alice logs in with her password and
    finds her roster."""
    wax, prosody = migrated.wax, migrated.prosody
    out = prosody.dir / "from-waxwing"
    r = wax.ctl("export", "--domain", PROSODY_DOMAIN, str(out))
    assert r.returncode == 0 and "exported 3 accounts" in r.stdout, r.stdout + r.stderr
    data = prosody.dir / "data"
    shutil.rmtree(data)
    data.mkdir()
    j = json.dumps
    config = prosody.dir / "back.cfg.lua"
    config.write_text(
        f"input {{ hosts = {{ [{j(PROSODY_DOMAIN)}] = {{ \"accounts\", \"roster\", \"vcard\", \"private\" }} }};"
        " type = \"xep0227\"; }\n"
        f"output {{ type = \"internal\"; path = {j(str(data))}; }}\n")
    chown_tree(prosody.dir, "prosody")
    run_checked(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 'mount --bind "$0" /var/lib/prosody && exec "$@"', str(out),
                 "prosody-migrator", "--config", str(config), "input", "output"])
    chown_tree(data, "prosody")
    prosody.start()
    try:
        async def go():
            async with connect(prosody, "alice", mechanism="SCRAM-SHA-1") as alice:
                item = await roster_item(alice, f"bob@{PROSODY_DOMAIN}")
                assert item.get("subscription") == "both" and item.get("name") == "Bobby", item
                assert sorted(item.get("groups", [])) == ["Friends", "Work"], item
        run(go())
    finally:
        prosody.stop()
