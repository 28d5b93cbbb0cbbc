#!/usr/bin/env python3
"""Server CPU and latency per login: SASL2 with a FAST token
(HT-SHA-256-NONE) against SASL2 with SCRAM-SHA-256, each on a fresh
connection (TCP + STARTTLS + one SASL2 exchange, no bind), against a
waxwing server this script starts on a temporary SQLite database.

    python3 bench/sasl2_fast.py [--bin target/release/waxwing] [--logins 300]

Server CPU is read from /proc/<pid>/stat (utime + stime) around each run,
so it covers everything the server did for those logins (TLS included).
Latency is measured from sending <authenticate/> to reading <success/>
("auth"), and from TCP connect to <success/> ("login").
"""

import argparse
import base64
import hashlib
import hmac
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
          "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
SASL2 = "urn:xmpp:sasl:2"
UA = "<user-agent id='bench-client'><software>bench</software></user-agent>"


def b64(b):
    return base64.b64encode(b).decode()


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, text):
        self.s.sendall(text.encode())

    def until(self, *patterns):
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

    def starttls(self):
        self.send(HEADER)
        self.until(r"</stream:features>")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.until(r"<proceed[^>]*/>")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.s = ctx.wrap_socket(self.s, server_hostname="localhost")
        self.buf = b""
        self.send(HEADER)
        self.until(r"</stream:features>")

    def close(self):
        try:
            self.send("</stream:stream>")
            self.s.close()
        except OSError:
            pass


def outcome(c):
    m = c.until(r"<success xmlns=.urn:xmpp:sasl:2.>(.*?)</success>", r"<failure.*?</failure>",
                r"<challenge[^>]*>([^<]*)</challenge>")
    return m


def scram_login(port, user, pw, extra=""):
    t0 = time.perf_counter()
    c = Conn(port)
    c.starttls()
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
    c.close()
    return m.group(0).decode(), t2 - t1, t2 - t0


def fast_login(port, user, token, count):
    t0 = time.perf_counter()
    c = Conn(port)
    c.starttls()
    proof = hmac.new(token.encode(), b"Initiator", "sha256").digest()
    t1 = time.perf_counter()
    c.send("<authenticate xmlns='%s' mechanism='HT-SHA-256-NONE'><initial-response>%s"
           "</initial-response>%s<fast xmlns='urn:xmpp:fast:0' count='%d'/></authenticate>"
           % (SASL2, b64(user.encode() + b"\0" + proof), UA, count))
    m = outcome(c)
    t2 = time.perf_counter()
    if b"<success" not in m.group(0):
        raise RuntimeError(m.group(0))
    c.close()
    return t2 - t1, t2 - t0


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/waxwing")
    ap.add_argument("--logins", type=int, default=300)
    args = ap.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory() as d:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cfg = os.path.join(d, "bench.toml")
        with open(cfg, "w") as f:
            f.write("log_level = \"warn\"\n[[host]]\ndomain = \"localhost\"\n[database]\n"
                    "url = \"sqlite://%s/db.sqlite\"\n[tls]\ndev_cert_dir = \"%s/certs\"\n[c2s]\n"
                    "listen = [\"127.0.0.1:%d\"]\nlisten_tls = []\n[admin]\nsocket = \"\"\n"
                    % (d, d, port))
        subprocess.run([args.bin, "ctl", "--config", cfg, "user", "add", "bench@localhost", "pw"],
                       check=True, stdout=subprocess.DEVNULL)
        server = subprocess.Popen([args.bin, "serve", "--config", cfg])
        try:
            deadline = time.time() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        sys.exit("server did not start")
                    time.sleep(0.05)
            success, _, _ = scram_login(port, "bench", "pw",
                                        "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>")
            token = re.search(r"token='([^']+)'|token=\"([^\"]+)\"", success)
            token = token.group(1) or token.group(2)
            results = {}
            for mode in ("fast", "scram"):
                auth, login = [], []
                before = cpu_ticks(server.pid)
                for i in range(args.logins):
                    if mode == "fast":
                        a, l = fast_login(port, "bench", token, i + 1)
                    else:
                        _, a, l = scram_login(port, "bench", "pw")
                    auth.append(a)
                    login.append(l)
                cpu = (cpu_ticks(server.pid) - before) / hz / args.logins
                results[mode] = cpu
                print("%-5s logins=%d server_cpu_per_login_ms=%.3f auth_p50_ms=%.2f auth_p99_ms=%.2f "
                      "login_p50_ms=%.2f login_p99_ms=%.2f" % (
                          mode, args.logins, cpu * 1e3, pct(auth, 50) * 1e3, pct(auth, 99) * 1e3,
                          pct(login, 50) * 1e3, pct(login, 99) * 1e3))
            print("fast/scram server CPU per login: %.2f" % (results["fast"] / results["scram"]))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
