#!/usr/bin/env python3
"""Server CPU and latency per login: SASL2 with SCRAM-SHA-256 against
SASL2 with a FAST token (HT-SHA-256-NONE), each on a fresh connection
(TCP + STARTTLS + one SASL2 exchange, no bind), with a full TLS handshake
and with a resumed TLS 1.3 session (Python's ssl `session=`: the ticket of
the previous connection; the server's `[tls] session_tickets`), against a
waxwing server this script starts on a temporary SQLite database.

    python3 bench/sasl2_fast.py [--bin target/release/waxwing] [--logins 300]
        [--modes scram,fast,fast-resumed,scram-resumed,fast-sm,fast-sm-resumed,
         scram-sm]
        [--callgrind] [--rtt]

Modes: `scram` and `fast` do a full TLS handshake each time;
`fast-resumed` and `scram-resumed` resume the TLS session of the
connection before (the server signs nothing).

`fast-sm` and `fast-sm-resumed` (and `scram-sm` for comparison, SCRAM with
the same inline resumption) are the reconnect issue #12 times: a
phone's network drops (the socket is closed with no `</stream:stream>`),
and it comes back with FAST and the XEP-0198 `<resume/>` inline in SASL2
(with Bind 2 beside it, as Conversations sends it), and checks that the
session was resumed; each reconnect resumes the session the one before
left. "login" is TCP connect to `<success/>` with `<resumed/>`; the server's
CPU includes ending the dropped connection and resuming the session.

Server CPU is read from /proc/<pid>/stat (utime + stime) around each run,
so it covers everything the server did for those logins (TLS included).
Latency is measured from sending <authenticate/> to reading <success/>
("auth"), and from TCP connect to <success/> ("login").

--callgrind runs the server under valgrind's callgrind and prints the
instructions (Ir) the server executed per login in each mode (callgrind's
counters dumped with callgrind_control around each run): a figure that does
not depend on what else the machine does. Use fewer logins (e.g. 50).

--rtt counts the round trips from TCP connect to a resumed session (FAST +
XEP-0198 resumption inline in SASL2), over STARTTLS and over direct TLS,
full and resumed TLS: each time the client must wait for the server.

WAXWING_BENCH_IP (default 127.0.0.1) is the address the server listens on;
BENCH_DIR (default the system's temporary directory) holds its files.
"""

import argparse
import base64
import glob
import hashlib
import hmac
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HOST = os.environ.get("WAXWING_BENCH_IP", "127.0.0.1")
HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
          "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
SASL2 = "urn:xmpp:sasl:2"
UA = "<user-agent id='bench-client'><software>bench</software></user-agent>"
TOKEN_REQ = "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"


def b64(b):
    return base64.b64encode(b).decode()


class Tls:
    """One client TLS context and the last session it got (for resumption)."""

    def __init__(self, resume):
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.resume = resume
        self.session = None
        self.reused = 0

    def wrap(self, sock):
        s = self.ctx.wrap_socket(sock, server_hostname="localhost",
                                 session=self.session if self.resume else None)
        if s.session_reused:
            self.reused += 1
        return s

    def keep(self, sock):
        # TLS 1.3 tickets come after the handshake: read once data has.
        if self.resume and sock.session is not None and sock.session.has_ticket:
            self.session = sock.session


class Conn:
    def __init__(self, port, tls, direct=False):
        self.tls = tls
        # Round trips: TCP connect, each TLS handshake, each wait for the
        # server after the client has sent something.
        self.rtt = 1
        self.s = socket.create_connection((HOST, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sent = False
        if direct:
            self.handshake()

    def handshake(self):
        self.s = self.tls.wrap(self.s)
        self.rtt += 1
        self.buf = b""

    def send(self, text):
        self.s.sendall(text.encode())
        self.sent = True

    def until(self, *patterns):
        if self.sent:
            self.rtt += 1
            self.sent = False
        while True:
            for p in patterns:
                m = re.search(p.encode(), self.buf, re.S)
                if m:
                    self.buf = self.buf[m.end():]
                    return m
            data = self.s.recv(65536)
            if not data:
                raise RuntimeError("connection closed: %r" % self.buf[-300:])
            self.buf += data

    def open(self):
        self.send(HEADER)
        self.until(r"</stream:features>")
        if isinstance(self.s, ssl.SSLSocket):
            self.tls.keep(self.s)

    def starttls(self):
        self.send(HEADER)
        self.until(r"</stream:features>")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.until(r"<proceed[^>]*/>")
        self.handshake()
        self.open()

    def close(self):
        try:
            self.send("</stream:stream>")
            self.s.close()
        except OSError:
            pass


def outcome(c):
    return c.until(r"<success xmlns=.urn:xmpp:sasl:2.>(.*?)</success>", r"<failure.*?</failure>",
                   r"<challenge[^>]*>([^<]*)</challenge>")


def connect(port, tls, direct_port=None):
    if direct_port:
        c = Conn(direct_port, tls, direct=True)
        c.open()
    else:
        c = Conn(port, tls)
        c.starttls()
    return c


def scram_login(port, tls, user, pw, extra="", keep=False, times=False):
    t0 = time.perf_counter()
    c = connect(port, tls)
    nonce = b64(os.urandom(18))
    bare = "n=%s,r=%s" % (user, nonce)
    t1 = time.perf_counter()
    c.send("<authenticate xmlns='%s' mechanism='SCRAM-SHA-256'><initial-response>%s"
           "</initial-response>%s%s</authenticate>" % (SASL2, b64(("n,," + bare).encode()), UA, extra))
    m = outcome(c)
    sf = base64.b64decode(m.group(1)).decode()
    attrs = dict(p.split("=", 1) for p in sf.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", pw.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    ck = hmac.new(salted, b"Client Key", "sha256").digest()
    sk = hashlib.sha256(ck).digest()
    without = "c=biws,r=" + attrs["r"]
    am = ",".join([bare, sf, without]).encode()
    proof = bytes(a ^ b for a, b in zip(ck, hmac.new(sk, am, "sha256").digest()))
    c.send("<response xmlns='%s'>%s</response>" % (SASL2, b64((without + ",p=" + b64(proof)).encode())))
    m = outcome(c)
    t2 = time.perf_counter()
    if b"<success" not in m.group(0):
        raise RuntimeError(m.group(0))
    if keep:
        return c, ((m.group(0).decode(), t0, t1, t2) if times else m.group(0).decode())
    c.close()
    return m.group(0).decode(), t2 - t1, t2 - t0


def fast_authenticate(c, user, token, count, extra=""):
    proof = hmac.new(token.encode(), b"Initiator", "sha256").digest()
    c.send("<authenticate xmlns='%s' mechanism='HT-SHA-256-NONE'><initial-response>%s"
           "</initial-response>%s<fast xmlns='urn:xmpp:fast:0' count='%d'/>%s</authenticate>"
           % (SASL2, b64(user.encode() + b"\0" + proof), UA, count, extra))
    m = outcome(c)
    if b"<success" not in m.group(0):
        raise RuntimeError(m.group(0))
    return m.group(0).decode()


def fast_login(port, tls, user, token, count):
    t0 = time.perf_counter()
    c = connect(port, tls)
    t1 = time.perf_counter()
    fast_authenticate(c, user, token, count)
    t2 = time.perf_counter()
    c.close()
    return t2 - t1, t2 - t0


SM_BIND = ("<bind xmlns='urn:xmpp:bind:0'><tag>bench</tag>"
           "<enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>")


class Resumable:
    """A stream-managed session that drops its connection and resumes."""

    def __init__(self, port, tls, user, fast=True):
        self.port, self.tls, self.user, self.fast = port, tls, user, fast
        self.conn, success = scram_login(port, tls, user, "pw", SM_BIND + TOKEN_REQ, keep=True)
        self.token = token_of(success)
        self.sm_id = re.search(r"<enabled[^>]*id=['\"]([^'\"]+)", success).group(1)
        self.count = 0

    def reconnect(self):
        self.conn.s.close()  # the network goes: no </stream:stream>
        resume = "<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>" % self.sm_id
        if not self.fast:
            c, success = scram_login(self.port, self.tls, self.user, "pw", resume + SM_BIND,
                                     keep=True, times=True)
            success, t0, t1, t2 = success
        else:
            t0 = time.perf_counter()
            c = connect(self.port, self.tls)
            t1 = time.perf_counter()
            self.count += 1
            success = fast_authenticate(c, self.user, self.token, self.count, resume + SM_BIND)
            t2 = time.perf_counter()
        if "<resumed" not in success:
            raise RuntimeError("not resumed: " + success)
        self.sm_id = re.search(r"previd=['\"]([^'\"]+)", success).group(1)
        if isinstance(c.s, ssl.SSLSocket):
            self.tls.keep(c.s)
        self.conn = c
        return t2 - t1, t2 - t0


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc):
    deadline = time.time() + 120
    while True:
        try:
            socket.create_connection((HOST, port)).close()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                sys.exit("server did not start")
            time.sleep(0.05)


def callgrind_ir(files_before, pattern):
    """Ir of the dump callgrind_control just wrote (the newest new file)."""
    for _ in range(200):
        new = sorted(set(glob.glob(pattern)) - files_before, key=os.path.getmtime)
        if new:
            path = new[-1]
            time.sleep(0.2)
            with open(path) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
        time.sleep(0.1)
    sys.exit("no callgrind dump appeared")


def token_of(success):
    m = re.search(r"token='([^']+)'|token=\"([^\"]+)\"", success)
    return m.group(1) or m.group(2)


def round_trips(port, tls_port, user):
    """Round trips from TCP connect to a resumed session, FAST + SM resume inline."""
    bind = ("<bind xmlns='urn:xmpp:bind:0'><tag>rtt</tag>"
            "<enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>")
    for direct in (False, True):
        tls = Tls(resume=True)
        c, success = scram_login(port, tls, user, "pw", bind + TOKEN_REQ, keep=True)
        token = token_of(success)
        sm_id = re.search(r"<enabled[^>]*id=['\"]([^'\"]+)", success).group(1)
        count = 1
        for resumed_tls in (False, True):
            if not resumed_tls:
                tls.session = None
            c.s.close()  # the network goes: no </stream:stream>
            c = connect(port, tls, tls_port if direct else None)
            reused = isinstance(c.s, ssl.SSLSocket) and c.s.session_reused
            resume = "<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>" % sm_id
            success = fast_authenticate(c, user, token, count, resume + bind)
            count += 1
            if "<resumed" not in success:
                raise RuntimeError("not resumed: " + success)
            sm_id = re.search(r"previd=['\"]([^'\"]+)", success).group(1)
            print("rtt %-8s tls=%-7s round_trips=%d (TCP 1, TLS %d, XMPP %d)" % (
                "direct" if direct else "starttls", "resumed" if reused else "full",
                c.rtt, 1, c.rtt - 2))
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/waxwing")
    ap.add_argument("--logins", type=int, default=300)
    ap.add_argument("--modes", default="scram,fast,fast-resumed")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--rtt", action="store_true")
    ap.add_argument("--rsa", action="store_true",
                    help="an RSA-2048 certificate (openssl) instead of the generated ECDSA P-256 one")
    ap.add_argument("--keep-dumps", help="copy callgrind's dumps here (for callgrind_annotate)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    hz = os.sysconf("SC_CLK_TCK")
    base = os.environ.get("BENCH_DIR")
    if base:
        os.makedirs(base, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as d:
        port, tls_port = free_port(), free_port()
        cfg = os.path.join(d, "bench.toml")
        tls_keys = ""
        if args.rsa:
            cert, key = os.path.join(d, "rsa.pem"), os.path.join(d, "rsa.key")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                            "-keyout", key, "-out", cert], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            tls_keys = "cert = \"%s\"\nkey = \"%s\"\n" % (cert, key)
        with open(cfg, "w") as f:
            f.write(("log_level = \"warn\"\n[[host]]\ndomain = \"localhost\"\n[database]\n"
                     "url = \"sqlite://%s/db.sqlite\"\n[tls]\n%sdev_cert_dir = \"%s/certs\"\n[c2s]\n"
                     "listen = [\"%s:%d\"]\nlisten_tls = [\"%s:%d\"]\n[http]\nlisten = []\nlisten_tls = []\n"
                     "[admin]\nsocket = \"\"\n"
                     "[limits]\nauth_failures_per_ip = 100000\n")
                    % (d, tls_keys, d, HOST, port, HOST, tls_port))
        subprocess.run([args.bin, "ctl", "--config", cfg, "user", "add", "bench@localhost", "pw"],
                       check=True, stdout=subprocess.DEVNULL)
        cmd = [args.bin, "serve", "--config", cfg]
        dumps = os.path.join(d, "callgrind.out")
        if args.callgrind:
            cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + dumps + ".%p"] + cmd
        server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL if args.callgrind else None)
        try:
            wait_port(port, server)
            wait_port(tls_port, server)
            if args.rtt:
                round_trips(port, tls_port, "bench")
                return
            success, _, _ = scram_login(port, Tls(False), "bench", "pw", TOKEN_REQ)
            token = token_of(success)
            count = 0
            results = {}
            for mode in modes:
                tls = Tls(resume=mode.endswith("-resumed"))
                resumable = None
                # One login outside the measure: the session to resume, and
                # the server's caches warm for this mode.
                if mode.startswith(("fast-sm", "scram-sm")):
                    resumable = Resumable(port, tls, "bench", fast=mode.startswith("fast"))
                    resumable.reconnect()
                elif mode.startswith("fast"):
                    count += 1
                    fast_login(port, tls, "bench", token, count)
                else:
                    scram_login(port, tls, "bench", "pw")
                tls.reused = 0
                auth, login = [], []
                if args.callgrind:
                    before = set(glob.glob(dumps + "*"))
                    subprocess.run(["callgrind_control", "-z", str(server.pid)],
                                   check=True, stdout=subprocess.DEVNULL)
                cpu_before = cpu_ticks(server.pid)
                for _ in range(args.logins):
                    if resumable:
                        a, l = resumable.reconnect()
                    elif mode.startswith("fast"):
                        count += 1
                        a, l = fast_login(port, tls, "bench", token, count)
                    else:
                        _, a, l = scram_login(port, tls, "bench", "pw")
                    auth.append(a)
                    login.append(l)
                cpu = (cpu_ticks(server.pid) - cpu_before) / hz / args.logins
                if resumable:
                    resumable.conn.close()
                line = ("%-13s logins=%d tls_resumed=%d server_cpu_per_login_ms=%.3f "
                        "auth_p50_ms=%.2f auth_p99_ms=%.2f login_p50_ms=%.2f login_p99_ms=%.2f" % (
                            mode, args.logins, tls.reused, cpu * 1e3, pct(auth, 50) * 1e3,
                            pct(auth, 99) * 1e3, pct(login, 50) * 1e3, pct(login, 99) * 1e3))
                if args.callgrind:
                    subprocess.run(["callgrind_control", "-d", str(server.pid)],
                                   check=True, stdout=subprocess.DEVNULL)
                    ir = callgrind_ir(before, dumps + "*")
                    results[mode] = ir / args.logins
                    line += " server_Ir_per_login=%d" % (ir // args.logins)
                else:
                    results[mode] = cpu
                print(line, flush=True)
            what = "Ir" if args.callgrind else "CPU"
            for mode in modes:
                if mode != "scram" and "scram" in results:
                    print("%s/scram server %s per login: %.3f" % (mode, what, results[mode] / results["scram"]))
        finally:
            server.terminate()
            server.wait()
            if args.keep_dumps:
                os.makedirs(args.keep_dumps, exist_ok=True)
                for f in glob.glob(dumps + "*"):
                    shutil.copy(f, args.keep_dumps)


if __name__ == "__main__":
    main()
