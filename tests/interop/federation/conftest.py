"""Federation fixtures (issue #4): real Prosody and ejabberd (Debian packages)
and Waxwing, each on its own loopback address with its own domain, talking
server-to-server with certificates from a test CA made here.

    waxwing.test    127.0.0.10   Waxwing           cert from the test CA
    prosody.test    127.0.0.11   Prosody           cert from the test CA, s2s_secure_auth
    ejabberd.test   127.0.0.12   ejabberd          cert from the test CA
    untrusted.test  127.0.0.13   a second Prosody  cert from an *untrusted* CA (dialback case)
    unreachable.test 127.0.0.14  nothing listens   (bounce case)
    dialback.test   127.0.0.15   a second Waxwing  cert from the test CA, [s2s] sasl_external = false
    rogue.test      127.0.0.16   nothing listens   a raw s2s client's domain (test_spoofing.py)
    cluster.test    127.0.0.17   Waxwing node n1   cert from the test CA; with node n2 on
                    127.0.0.18   127.0.0.18, one cluster (PostgreSQL, Redis) serving cluster.test
                    127.0.0.19   DNS (UDP 53) for Prosody, see fed_dns.py

Every server listens on port 5222 (c2s, STARTTLS required) and 5269 (s2s,
STARTTLS required) of its own address and trusts the test CA only.

Name resolution, without touching DNS (this machine's resolver is unreachable):
- Prosody resolves with libunbound (lua-unbound) when that is installed, else
  with its pure-Lua resolver, which asks only the nameservers in
  /etc/resolv.conf. Each Prosody runs in a mount namespace of its own
  (`unshare --mount`) with a resolv.conf naming fed_dns.DnsServer on
  127.0.0.19:53 (A records for the test domains, NXDOMAIN for SRV), which
  serves both resolvers. With libunbound the config option
  `unbound = { hoststxt = "<dir>/hosts" }` also gives it the test domains'
  A records (its default is hoststxt = false: /etc/hosts is ignored).
- ejabberd asks for SRV records with Erlang's inet_res, configured by the
  `inetrc` in its config dir (ejabberdctl sets ERL_INETRC): no resolv.conf and
  a nameserver on a closed port, so SRV fails at once (econnrefused) and it
  falls back to A/AAAA with net:getaddrinfo, i.e. libc and /etc/hosts. So the
  test domains are added to /etc/hosts (idempotently, marked
  "# waxwing-federation-test"); ejabberd tests skip when that is not writable.
- Waxwing gets `[s2s.hosts]` (domain → "ip:port") and needs no resolver.

Processes run as the `prosody` / `ejabberd` users with everything (config,
data, certs, logs) under one temporary directory; all waits are bounded.
On a failing test the log lines every federation server wrote during that
test are added to the report. WAXWING_INTEROP_KEEP=1 keeps the directory.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fed_dns import DnsServer
from waxwing_bin import waxwing_bin

REPO_ROOT = Path(__file__).resolve().parents[3]

WAXWING = ("waxwing.test", "127.0.0.10")
PROSODY = ("prosody.test", "127.0.0.11")
EJABBERD = ("ejabberd.test", "127.0.0.12")
UNTRUSTED = ("untrusted.test", "127.0.0.13")
UNREACHABLE = ("unreachable.test", "127.0.0.14")
DIALBACK = ("dialback.test", "127.0.0.15")
ROGUE = ("rogue.test", "127.0.0.16")
# An external component of waxwing.test's server (test_component_federation.py); its
# domain is covered by waxwing.test's certificate (*.waxwing.test).
ECHO_COMPONENT = ("echo.waxwing.test", WAXWING[1])
ECHO_SECRET = "echo-component-secret"
COMPONENT_PORT = 5347
# The chat services (test_muc_federation.py): Waxwing's built-in one and a `muc`
# Component of prosody.test; each domain's certificate covers its subdomains.
WAXWING_MUC = ("conference.waxwing.test", WAXWING[1])
PROSODY_MUC = ("conference.prosody.test", PROSODY[1])
# A Waxwing cluster (issue #16): the domain resolves to node n1 only; node n2 serves it too.
CLUSTER = ("cluster.test", "127.0.0.17")
CLUSTER_N2 = "127.0.0.18"
ALL_DOMAINS = (WAXWING, PROSODY, EJABBERD, UNTRUSTED, UNREACHABLE, DIALBACK, ROGUE, CLUSTER, ECHO_COMPONENT,
               WAXWING_MUC, PROSODY_MUC)
DNS_IP = "127.0.0.19"
C2S_PORT, C2S_TLS_PORT, S2S_PORT = 5222, 5223, 5269
HOSTS_MARK = "# waxwing-federation-test"

USERS = {"alice": "alice-fed-pass", "bob": "bob-fed-pass", "carol": "carol-fed-pass"}
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 200
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
LOGS_KEY = pytest.StashKey[list]()


def toml_str(value: str) -> str:
    return json.dumps(value)


def lua_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid Lua string literal for these paths


def wait_ports(proc_alive, ip: str, ports, timeout: float, what: str, log_tail) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ports)
    while pending:
        if not proc_alive():
            raise RuntimeError(f"{what} died during start\n{log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {ip} ports {sorted(pending)} not accepting after {timeout} s\n{log_tail()}")
        for port in list(pending):
            try:
                socket.create_connection((ip, port), timeout=1).close()
                pending.discard(port)
            except OSError:
                pass
        if pending:
            time.sleep(0.1)


def run_checked(cmd, *, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    rows = ANSI_ESCAPE.sub("", text).splitlines()
    cut = f"[… {len(rows) - lines} earlier lines …]\n" if len(rows) > lines else ""
    return cut + "\n".join(rows[-lines:])


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- certificates ----------------------------------------------------------------------


class Pki:
    """A test CA and server certificates (EC P-256), plus an untrusted CA."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self._make_ca("ca", "Waxwing Federation Test CA")
        self.untrusted_ca = self._make_ca("untrusted-ca", "Untrusted Test CA")

    def _openssl(self, *args: str) -> None:
        run_checked(["openssl", *args], cwd=self.dir)

    def _make_ca(self, name: str, cn: str) -> Path:
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-days", "3", "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.crt",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return self.dir / f"{name}.crt"

    def issue(self, domain: str, *, untrusted: bool = False) -> tuple[Path, Path]:
        """(cert, key) for `domain` (and *.domain), signed by the test CA or the untrusted one."""
        ca = "untrusted-ca" if untrusted else "ca"
        ext = self.dir / f"{domain}.ext"
        ext.write_text(
            f"subjectAltName=DNS:{domain},DNS:*.{domain}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-subj", f"/CN={domain}", "-keyout", f"{domain}.key", "-out", f"{domain}.csr")
        self._openssl("x509", "-req", "-in", f"{domain}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                      "-CAcreateserial", "-days", "3", "-extfile", ext.name, "-out", f"{domain}.crt")
        return self.dir / f"{domain}.crt", self.dir / f"{domain}.key"


# --- name resolution ---------------------------------------------------------------------


def ensure_etc_hosts() -> str | None:
    """Adds the test domains to /etc/hosts (once); returns why not, or None."""
    try:
        current = Path("/etc/hosts").read_text()
    except OSError as e:
        return f"cannot read /etc/hosts: {e}"
    have = {}
    for line in current.splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            have.setdefault(name, fields[0])
    missing = [f"{ip} {domain} {HOSTS_MARK}" for domain, ip in ALL_DOMAINS if domain not in have]
    wrong = [f"{domain} → {have[domain]} (want {ip})" for domain, ip in ALL_DOMAINS if have.get(domain, ip) != ip]
    if wrong:
        return "/etc/hosts maps test domains elsewhere: " + ", ".join(wrong)
    if missing:
        try:
            with open("/etc/hosts", "a") as f:
                f.write(("" if current.endswith("\n") else "\n") + "\n".join(missing) + "\n")
        except OSError as e:
            return f"cannot add the test domains to /etc/hosts ({e}); ejabberd resolves s2s peers through it"
    return None


# --- peers -------------------------------------------------------------------------------


class Peer:
    """What interop_client.connect needs (host, c2s_port, tls_port, domain, users, ca_pem)
    plus start/stop and a log."""

    kind = "peer"

    def __init__(self, fed: "Federation", domain: str, ip: str, *, ca_for_clients: Path):
        self.fed = fed
        self.domain = domain
        self.host = ip
        self.c2s_port = C2S_PORT
        self.tls_port = C2S_TLS_PORT
        self.s2s_port = S2S_PORT
        self.users = dict(USERS)
        self.dir = fed.dir / domain
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca_for_clients = ca_for_clients
        self.log_path = self.dir / "server.log"

    def ca_pem(self) -> str:
        return self._ca_for_clients.read_text()

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def log_tail(self, offset: int = 0) -> str:
        return tail(self.log_path, offset)

    def log_size(self) -> int:
        return size(self.log_path)

    def wait_log(self, offset: int, needle: str, timeout: float = 10.0) -> None:
        """Waits until `needle` shows up in the log after `offset` (loggers write asynchronously)."""
        deadline = time.monotonic() + timeout
        while needle not in self.log_text(offset):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} ({self.domain}) never logged {needle!r} within {timeout} s")
            time.sleep(0.1)

    def wait_log_re(self, offset: int, pattern: str, timeout: float = 10.0) -> re.Match:
        """Waits until regex `pattern` (MULTILINE) matches the log after `offset`; returns the match."""
        deadline = time.monotonic() + timeout
        while not (m := re.search(pattern, ANSI_ESCAPE.sub("", self.log_text(offset)), re.M)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} ({self.domain}) never logged /{pattern}/ within {timeout} s")
            time.sleep(0.1)
        return m

    def log_text(self, offset: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")


def chown_tree(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


class ProsodyPeer(Peer):
    kind = "prosody"

    def __init__(self, fed, domain, ip, *, cert: Path, key: Path, client_ca: Path, secure_auth: bool,
                 bidi: bool = False, muc: str | None = None):
        super().__init__(fed, domain, ip, ca_for_clients=client_ca)
        self.cert, self.key, self.secure_auth, self.bidi = cert, key, secure_auth, bidi
        self.muc = muc  # the domain of a `muc` Component, if any
        self.proc: subprocess.Popen | None = None
        self.config_path = self.dir / "prosody.cfg.lua"

    def write(self) -> None:
        d = self.dir
        (d / "data").mkdir(exist_ok=True)
        (d / "certs").mkdir(exist_ok=True)
        cert, key = d / "certs" / f"{self.domain}.crt", d / "certs" / f"{self.domain}.key"
        shutil.copy(self.cert, cert)
        shutil.copy(self.key, key)
        shutil.copy(self.fed.pki.ca, d / "certs" / "ca.crt")
        os.chmod(key, 0o600)
        ssl = (f'{{ certificate = {lua_str(str(cert))}, key = {lua_str(str(key))}, '
               f'cafile = {lua_str(str(d / "certs" / "ca.crt"))} }}')
        bidi = ', "s2s_bidi"' if self.bidi else ""
        self.config_path.write_text(f"""-- written by tests/interop/federation/conftest.py
pidfile = {lua_str(str(d / "prosody.pid"))}
data_path = {lua_str(str(d / "data"))}
certificates = {lua_str(str(d / "certs"))}
plugin_paths = {{}}
daemonize = false
network_backend = "epoll"
log = {{ debug = {lua_str(str(self.log_path))} }}
admins = {{}}
interfaces = {{ "{self.host}" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_direct_tls_ports = {{}}
s2s_ports = {{ {self.s2s_port} }}
http_ports = {{}}
https_ports = {{}}
-- s2s_bidi (XEP-0288) is not loaded by default in 0.12; untrusted.test loads it (test_bidi.py),
-- prosody.test does not, so each direction there has a stream of its own (test_auth_methods.py)
modules_enabled = {{ "roster", "saslauth", "tls", "dialback", "disco", "ping", "offline"{bidi} }}
c2s_require_encryption = true
s2s_require_encryption = true
-- prosody.test: only peers with a valid certificate (from the test CA);
-- untrusted.test: false (it cannot prove itself by certificate anywhere)
s2s_secure_auth = {"true" if self.secure_auth else "false"}
allow_unencrypted_plain_auth = false
authentication = "internal_hashed"
storage = "internal"
-- the test CA is the only trust anchor
ssl = {ssl}
-- libunbound: its own hosts file (default hoststxt = false ignores /etc/hosts);
-- SRV under test. is answered NXDOMAIN by unbound's built-in local zone
unbound = {{ hoststxt = {lua_str(str(self.fed.hosts_file))} }}
VirtualHost "{self.domain}"
  ssl = {ssl}
""" + ("" if self.muc is None else f"""
-- a chat service (test_muc_federation.py); rooms open at once (no locking until configured)
Component {lua_str(self.muc)} "muc"
  ssl = {ssl}
  muc_room_locking = false
"""))
        self._write_accounts()
        chown_tree(d, "prosody")

    def _write_accounts(self) -> None:
        import hashlib
        import hmac

        enc = re.sub(r"\W", lambda m: "%%%02x" % ord(m.group()), self.domain)
        accounts = self.dir / "data" / enc / "accounts"
        accounts.mkdir(parents=True, exist_ok=True)
        salt, it = "waxwing-fed-salt", 4096
        for user, password in self.users.items():
            sp = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), it)
            stored = hashlib.sha1(hmac.new(sp, b"Client Key", "sha1").digest()).hexdigest()
            server = hmac.new(sp, b"Server Key", "sha1").hexdigest()
            (accounts / f"{user}.dat").write_text(
                'return {\n\t["iteration_count"] = %d;\n\t["salt"] = "%s";\n\t["server_key"] = "%s";\n'
                '\t["stored_key"] = "%s";\n};\n' % (it, salt, server, stored))

    def start(self) -> None:
        self.write()
        cmd = ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups",
               "prosody", "-F", "--config", str(self.config_path)]
        resolv_conf = self.fed.prosody_resolv_conf()
        if resolv_conf is not None:
            # Its own /etc/resolv.conf (see fed_dns.py); unshare execs in place, so the pid stays Prosody's.
            cmd = ["unshare", "--mount", "--propagation", "private", "--",
                   "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv_conf), *cmd]
        out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        wait_ports(lambda: self.proc.poll() is None, self.host, (self.c2s_port, self.s2s_port),
                   START_TIMEOUT, f"prosody ({self.domain})", self.full_log)

    def full_log(self) -> str:
        return (f"--- {self.log_path} ---\n{self.log_tail()}\n"
                f"--- {self.dir / 'stdout.log'} ---\n{tail(self.dir / 'stdout.log')}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class EjabberdPeer(Peer):
    kind = "ejabberd"
    NODE = "ejabberd-fed@localhost"

    def __init__(self, fed, domain, ip, *, cert: Path, key: Path):
        super().__init__(fed, domain, ip, ca_for_clients=fed.pki.ca)
        self.cert, self.key = cert, key
        self.log_path = self.dir / "logs" / "ejabberd.log"

    def _ctl_cmd(self, *args: str) -> list[str]:
        d = self.dir
        return ["setpriv", "--reuid=ejabberd", "--regid=ejabberd", "--init-groups",
                "env", f"HOME={d}", "ejabberdctl", "--config-dir", str(d), "--config", str(d / "ejabberd.yml"),
                "--ctl-config", str(d / "ejabberdctl.cfg"), "--logs", str(d / "logs"), "--spool", str(d / "spool"),
                *args]

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self._ctl_cmd(*args), cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def write(self) -> None:
        d = self.dir
        for sub in ("logs", "spool", "certs"):
            (d / sub).mkdir(exist_ok=True)
        pem = d / "certs" / f"{self.domain}.pem"
        pem.write_text(self.key.read_text() + self.cert.read_text())
        os.chmod(pem, 0o600)
        shutil.copy(self.fed.pki.ca, d / "certs" / "ca.crt")
        (d / "ejabberdctl.cfg").write_text(
            f"ERLANG_NODE={self.NODE}\nINET_DIST_INTERFACE=127.0.0.1\nEJABBERD_PID_PATH={d}/ejabberd.pid\n"
            'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 +sbwt none +sbwtdcpu none +sbwtdio none"\n')
        # inet_res (SRV lookups): no resolv.conf, a nameserver on a closed port → fails at once;
        # the A lookup that follows goes through libc (/etc/hosts).
        (d / "inetrc").write_text('{resolv_conf, ""}.\n{hosts_file, ""}.\n{nameserver, {127,0,0,1}, 9}.\n'
                                  '{lookup, [file, native]}.\n{host, {127,0,0,1}, ["localhost"]}.\n')
        (d / "ejabberd.yml").write_text(f"""# written by tests/interop/federation/conftest.py
loglevel: debug
log_rotate_count: 0
hosts:
  - {self.domain}
certfiles:
  - "{pem}"
# the test CA is the only trust anchor (s2s certificate verification)
ca_file: "{d / 'certs' / 'ca.crt'}"
s2s_use_starttls: required
s2s_dns_timeout: 2
s2s_dns_retries: 1
outgoing_s2s_families:
  - ipv4
listen:
  -
    port: {self.c2s_port}
    ip: "{self.host}"
    module: ejabberd_c2s
    starttls_required: true
    access: c2s
  -
    port: {self.s2s_port}
    ip: "{self.host}"
    module: ejabberd_s2s_in
auth_method: internal
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
s2s_access: s2s
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_offline: {{}}
  mod_s2s_dialback: {{}}
""")
        chown_tree(d, "ejabberd")

    def pid(self) -> int | None:
        r = subprocess.run(["pgrep", "-u", "ejabberd", "-f", f"beam.smp.*-sname {self.NODE}"],
                           capture_output=True, text=True)
        pids = r.stdout.split()
        return int(pids[0]) if pids else None

    def start(self) -> None:
        if self.pid() is not None:
            raise RuntimeError(f"an ejabberd node {self.NODE} is already running (pid {self.pid()})")
        self.write()
        r = self.ctl("start")
        if r.returncode != 0:
            raise RuntimeError(f"ejabberdctl start exited {r.returncode}: {r.stdout}{r.stderr}\n{self.full_log()}")
        time.sleep(1)
        wait_ports(lambda: self.pid() is not None, self.host, (self.c2s_port, self.s2s_port),
                   START_TIMEOUT, f"ejabberd ({self.domain})", self.full_log)
        for user, password in self.users.items():
            r = self.ctl("register", user, self.domain, password)
            if r.returncode != 0:
                raise RuntimeError(f"ejabberdctl register {user}: {r.stdout}{r.stderr}")

    def full_log(self) -> str:
        out = [f"--- {self.log_path} ---\n{self.log_tail()}"]
        for extra in ("error.log", "crash.log", "erlang.log"):
            p = self.dir / "logs" / extra
            if p.exists():
                out.append(f"--- {p} ---\n{tail(p)}")
        return "\n".join(out)

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        self.ctl("stop", timeout=30)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


# --- Waxwing -----------------------------------------------------------------------------


def waxwing_config(dir: Path, domain: str, ip: str, *, cert: Path, key: Path, ca: Path,
                   sasl_external: bool = True, database: str | None = None, s2s_extra: str = "",
                   extra: str = "") -> str:
    hosts = "\n".join(f"{toml_str(d)} = {toml_str(f'{a}:{S2S_PORT}')}" for d, a in ALL_DOMAINS
                      if d != domain and a != ip)
    component = "" if domain != WAXWING[0] else f"""
[component_listener]
listen = [{toml_str(f"{ip}:{COMPONENT_PORT}")}]

[[component]]
domain = {toml_str(ECHO_COMPONENT[0])}
secret = {toml_str(ECHO_SECRET)}
"""
    external = "" if sasl_external else (
        "# neither offer nor use SASL EXTERNAL (XEP-0178): every stream, both ways, uses dialback (XEP-0220)\n"
        "sasl_external = false\n")
    return f"""# written by tests/interop/federation/conftest.py
log_level = "debug"

[[host]]
domain = {toml_str(domain)}
cert = {toml_str(str(cert))}
key = {toml_str(str(key))}

[database]
url = {toml_str(database or f"sqlite://{dir / 'waxwing.db'}")}

[tls]
dev_cert_dir = {toml_str(str(dir / 'dev-certs'))}

[c2s]
listen = [{toml_str(f"{ip}:{C2S_PORT}")}]
listen_tls = [{toml_str(f"{ip}:{C2S_TLS_PORT}")}]

[http]
listen = []
listen_tls = []

[s2s]
listen = [{toml_str(f"{ip}:{S2S_PORT}")}]
# the test CA only: untrusted.test's certificate fails, so it must use dialback
ca_file = {toml_str(str(ca))}
{external}{s2s_extra}
# where each peer domain lives (instead of SRV/A lookups)
[s2s.hosts]
{hosts}
{component}{extra}"""


# Waxwing's info lines (tracing-subscriber's fmt format: message, then fields; the target
# module may change) that say how an s2s stream authenticated:
#   … INFO waxwing::net::s2s_out: s2s stream authenticated local="a" remote="b" method="external"
#   … INFO waxwing::net::s2s_in: s2s peer authenticated with SASL EXTERNAL domain="b"
#   … INFO waxwing::net::s2s_receive: dialback result from="b" to="a" answer="valid"
AUTH_MESSAGES = ("s2s stream authenticated", "s2s peer authenticated with SASL EXTERNAL", "dialback result",
                 "s2s bidi route")
LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_fields(text: str) -> dict[str, str]:
    """key=value fields of a tracing fmt line (strings are Rust Debug-quoted)."""
    fields = {}
    for k, v in LOG_FIELD.findall(text):
        if v.startswith('"'):
            try:
                v = json.loads(v)
            except ValueError:
                v = v[1:-1]
        fields[k] = v
    return fields


class WaxwingPeer(Peer):
    kind = "waxwing"

    def __init__(self, fed, domain: str, ip: str, *, cert: Path, key: Path, sasl_external: bool = True,
                 dir_name: str | None = None):
        super().__init__(fed, domain, ip, ca_for_clients=fed.pki.ca)
        if dir_name is not None:
            self.dir = fed.dir / dir_name
            self.dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.dir / "server.log"
        self.cert, self.key, self.sasl_external = cert, key, sasl_external
        self.bin = waxwing_bin()
        self.config_path = self.dir / "waxwing.toml"
        self.proc: subprocess.Popen | None = None
        self.users_added = False

    def config(self) -> str:
        return waxwing_config(self.dir, self.domain, self.host, cert=self.cert, key=self.key, ca=self.fed.pki.ca,
                              sasl_external=self.sasl_external)

    def add_users(self) -> None:
        for user, password in self.users.items():
            run_checked([str(self.bin), "ctl", "--config", str(self.config_path), "user", "add",
                         self.jid(user), password], cwd=self.dir)

    def start(self) -> None:
        if not self.bin.exists():
            raise RuntimeError(f"{self.bin} does not exist: run `cargo build --bins` (or set WAXWING_BIN)")
        self.config_path.write_text(self.config())
        if not self.users_added:
            self.add_users()
            self.users_added = True
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(self.bin), "serve", "--config", str(self.config_path)], cwd=self.dir,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_ports(lambda: self.proc.poll() is None, self.host, (self.c2s_port, self.s2s_port),
                   START_TIMEOUT, f"waxwing ({self.domain})", self.full_log)

    def full_log(self) -> str:
        return f"--- {self.log_path} ---\n{self.log_tail()}"

    def auth_events(self, offset: int = 0) -> list[tuple[str, dict[str, str]]]:
        """(message, fields) of each AUTH_MESSAGES line logged after `offset`, in order."""
        events = []
        for line in ANSI_ESCAPE.sub("", self.log_text(offset)).splitlines():
            for message in AUTH_MESSAGES:
                at = line.find(f": {message}")
                if at >= 0 and " INFO " in line[:at]:
                    events.append((message, parse_fields(line[at + 2 + len(message):])))
                    break
        return events

    def wait_auth_event(self, message: str, offset: int = 0, timeout: float = 10.0, **fields: str):
        """The first AUTH_MESSAGES line `message` with these field values after `offset`; waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            for msg, got in self.auth_events(offset):
                if msg == message and all(got.get(k) == v for k, v in fields.items()):
                    return got
            if time.monotonic() > deadline:
                seen = "\n".join(f"  {m} {f}" for m, f in self.auth_events(offset)) or "  (none)"
                raise AssertionError(f"waxwing ({self.domain}) never logged {message!r} with {fields} "
                                     f"within {timeout} s; authentication lines:\n{seen}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> int:
        """Stops and starts again (same data): every s2s stream with it ends, so the next
        ones are set up — and logged — anew. Returns the log offset after the start."""
        self.stop()
        self.start()
        return self.log_size()


class WaxwingClusterNode(WaxwingPeer):
    """One node of a Waxwing cluster serving cluster.test (issue #16): every node shares
    the PostgreSQL database (WAXWING_TEST_POSTGRES), the local Redis (a key prefix of
    this session's own), the certificate and the dialback secret."""

    kind = "waxwing-cluster"

    def __init__(self, fed, ip: str, node_id: str, *, cert: Path, key: Path, prefix: str):
        super().__init__(fed, CLUSTER[0], ip, cert=cert, key=key, sasl_external=False,
                         dir_name=f"{CLUSTER[0]}-{node_id}")
        self.node_id, self.prefix = node_id, prefix
        self.database = os.environ.get("WAXWING_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")
        self.redis = os.environ.get("WAXWING_TEST_REDIS", "redis://127.0.0.1:6379")

    def config(self) -> str:
        return waxwing_config(
            self.dir, self.domain, self.host, cert=self.cert, key=self.key, ca=self.fed.pki.ca,
            sasl_external=False, database=self.database,
            s2s_extra=f"dialback_secret = {toml_str('one-secret-for-every-node')}\n",
            extra=f"""
[cluster]
node_id = {toml_str(self.node_id)}
redis = {toml_str(self.redis)}
key_prefix = {toml_str(self.prefix)}
""")

    def add_users(self) -> None:
        # One database for both nodes and for runs before this one: an account that
        # exists already (same password) is fine.
        for user, password in self.users.items():
            done = subprocess.run([str(self.bin), "ctl", "--config", str(self.config_path), "user", "add",
                                   self.jid(user), password], cwd=self.dir, capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL)
            if done.returncode != 0 and "exist" not in (done.stdout + done.stderr):
                raise RuntimeError(f"ctl user add {self.jid(user)}: {done.stdout}{done.stderr}")


# --- the federation: started lazily, one of each for the session --------------------------


class Federation:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="waxwing-federation-"))
        os.chmod(self.dir, 0o755)
        self.pki = Pki(self.dir / "pki")
        os.chmod(self.pki.dir, 0o755)
        self.hosts_file = self.dir / "hosts"
        self.hosts_file.write_text("".join(f"{ip} {domain}\n" for domain, ip in ALL_DOMAINS))
        os.chmod(self.hosts_file, 0o644)
        self.peers: dict[str, Peer] = {}
        self.failed: dict[str, str] = {}
        # Redis keys of this session's cluster (deleted at close).
        self.cluster_prefix = f"wxfed-{os.getpid()}-{int(time.time())}"
        self.dns: DnsServer | None = None
        self._resolv_conf: Path | None | bool = False  # False: not decided yet

    def prosody_resolv_conf(self) -> Path | None:
        """A resolv.conf naming the test DNS server (started here, once), for Prosody's mount
        namespace; None when this machine cannot make one (Prosody then needs lua-unbound)."""
        if self._resolv_conf is False:
            self._resolv_conf = None
            probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                                   capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
            if probe.returncode == 0:
                self.dns = DnsServer(DNS_IP, {domain: ip for domain, ip in ALL_DOMAINS})
                path = self.dir / "resolv.conf"
                path.write_text(f"nameserver {DNS_IP}\n")
                os.chmod(path, 0o644)
                self._resolv_conf = path
            else:
                print(f"unshare --mount: {probe.stderr.strip()}: Prosody resolves without the test DNS server")
        return self._resolv_conf

    def get(self, name: str) -> Peer:
        if name in self.failed:
            pytest.fail(self.failed[name], pytrace=False)
        if name not in self.peers:
            try:
                peer = self._make(name)
                self.peers[name] = peer
                peer.start()
            except Exception as e:
                self.failed[name] = f"could not start {name}: {e}"
                pytest.fail(self.failed[name], pytrace=False)
        return self.peers[name]

    def _make(self, name: str) -> Peer:
        if name == "prosody":
            cert, key = self.pki.issue(PROSODY[0])
            return ProsodyPeer(self, *PROSODY, cert=cert, key=key, client_ca=self.pki.ca, secure_auth=True,
                               muc=PROSODY_MUC[0])
        if name == "untrusted":
            cert, key = self.pki.issue(UNTRUSTED[0], untrusted=True)
            return ProsodyPeer(self, *UNTRUSTED, cert=cert, key=key, client_ca=self.pki.untrusted_ca,
                               secure_auth=False, bidi=True)
        if name == "ejabberd":
            cert, key = self.pki.issue(EJABBERD[0])
            return EjabberdPeer(self, *EJABBERD, cert=cert, key=key)
        if name == "waxwing":
            cert, key = self.pki.issue(WAXWING[0])
            return WaxwingPeer(self, *WAXWING, cert=cert, key=key)
        if name == "waxwing_dialback":
            cert, key = self.pki.issue(DIALBACK[0])
            return WaxwingPeer(self, *DIALBACK, cert=cert, key=key, sasl_external=False)
        if name in ("cluster_n1", "cluster_n2"):
            cert, key = self.pki.issue(CLUSTER[0])
            prefix = self.cluster_prefix
            if name == "cluster_n1":
                return WaxwingClusterNode(self, CLUSTER[1], "n1", cert=cert, key=key, prefix=prefix)
            return WaxwingClusterNode(self, CLUSTER_N2, "n2", cert=cert, key=key, prefix=prefix)
        raise KeyError(name)

    def close(self) -> None:
        for peer in reversed(list(self.peers.values())):
            try:
                peer.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping {peer.kind}: {e}")
        if self.dns is not None:
            self.dns.stop()
        if any(isinstance(p, WaxwingClusterNode) for p in self.peers.values()) and shutil.which("redis-cli"):
            keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"{self.cluster_prefix}:*"],
                                  capture_output=True, text=True, timeout=30).stdout.split()
            if keys:
                subprocess.run(["redis-cli", "del", *keys], capture_output=True, timeout=30)
        if os.environ.get("WAXWING_INTEROP_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"federation directory kept: {self.dir}")


@pytest.fixture(scope="session")
def federation():
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    fed = Federation()
    yield fed
    fed.close()


def _peer_fixture(name: str, binary: str, package: str):
    @pytest.fixture
    def fixture(federation, request):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} not found: apt-get install {package} (scripts/test.sh does this)")
        if os.geteuid() != 0:
            pytest.skip(f"{package} runs as its own user: the federation tests need root")
        if name == "ejabberd" and (why := ensure_etc_hosts()):
            pytest.skip(why)
        peer = federation.get(name)
        request.node.stash.setdefault(LOGS_KEY, []).append((peer, size(peer.log_path)))
        return peer

    fixture.__name__ = name
    return fixture


prosody = _peer_fixture("prosody", "prosody", "prosody")
untrusted_prosody = _peer_fixture("untrusted", "prosody", "prosody")
ejabberd = _peer_fixture("ejabberd", "ejabberdctl", "ejabberd")


def _waxwing(federation, request, name: str) -> WaxwingPeer:
    peer = federation.get(name)
    if peer.proc is not None and peer.proc.poll() is not None:
        pytest.fail(f"waxwing ({peer.domain}) exited ({peer.proc.returncode})\n{peer.full_log()}", pytrace=False)
    request.node.stash.setdefault(LOGS_KEY, []).append((peer, size(peer.log_path)))
    return peer


@pytest.fixture
def waxwing_cluster(federation, request):
    """A Waxwing cluster serving cluster.test: nodes n1 (127.0.0.17, where the domain
    resolves) and n2 (127.0.0.18). Needs PostgreSQL and Redis (scripts/test.sh starts
    both)."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli not found: the cluster needs Redis (scripts/test.sh installs it)")
    return (_waxwing(federation, request, "cluster_n1"), _waxwing(federation, request, "cluster_n2"))


@pytest.fixture
def waxwing_fed(federation, request):
    """Waxwing as waxwing.test (SASL EXTERNAL when certificates allow, dialback otherwise)."""
    return _waxwing(federation, request, "waxwing")


class Fresh:
    """A Waxwing restarted for this test, and where each log stood afterwards: what a
    test looks for in a log after these offsets was caused by the test itself, not by
    a stream an earlier test set up."""

    def __init__(self, waxwing: WaxwingPeer, peers: list[Peer]):
        self.offset = waxwing.restart()
        self.offsets = {id(p): p.log_size() for p in peers}

    def of(self, peer: Peer) -> int:
        return self.offsets[id(peer)]


@pytest.fixture
def fresh(federation):
    """fresh(waxwing, *peers): restarts `waxwing`, returns a Fresh with the log offsets."""
    return lambda waxwing, *peers: Fresh(waxwing, list(peers))


@pytest.fixture
def waxwing_dialback(federation, request):
    """A second Waxwing, dialback.test, with `[s2s] sasl_external = false`: dialback only, both ways."""
    return _waxwing(federation, request, "waxwing_dialback")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and LOGS_KEY in item.stash:
        for peer, offset in item.stash[LOGS_KEY]:
            report.sections.append((f"{peer.kind} log ({peer.domain})", f"{peer.log_path}\n{peer.log_tail(offset)}"))
