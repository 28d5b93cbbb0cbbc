#!/usr/bin/env python3
"""Builds the seed corpus of the fuzz targets (fuzz/corpus/<target>/).

Seeds come from the tests: every string literal in tests/*.rs,
tests/attacks/*.rs and tests/interop/**/*.py that looks like XML, and the
SASL messages found there, wrapped in the input format each target reads
(see the doc comment at the top of each fuzz_targets/*.rs), plus a few
whole negotiations written here (a PLAIN login, dialback with a real key, a
component handshake) so that the fuzzer starts past the first gate.

Deterministic: the same tests give the same files (named by content hash),
so re-running it changes nothing unless the tests changed. Run from
anywhere: python3 fuzz/make_corpus.py
"""

import base64
import hashlib
import hmac
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"
MAX_SEED = 4096
MAX_PER_TARGET = 400

NS_STREAMS = "http://etherx.jabber.org/streams"
STREAMS = f"xmlns:stream='{NS_STREAMS}'"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"


def rust_unescape(s):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            simple = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
            if n in simple:
                out.append(simple[n])
                i += 2
                continue
            if n == "x" and i + 3 < len(s):
                try:
                    out.append(chr(int(s[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                except ValueError:
                    pass
            if n == "\n":
                # Line continuation: skip the newline and leading blanks.
                i += 2
                while i < len(s) and s[i] in " \t":
                    i += 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def fill_placeholders(s):
    s = s.replace("{STREAMS}", STREAMS)
    s = re.sub(r"(?<!\{)\{[A-Za-z_][A-Za-z0-9_.]*(:[^{}]*)?\}(?!\})", "a.test", s)
    return s.replace("{{", "{").replace("}}", "}")


LOOKS_XML = re.compile(r"<[A-Za-z?/!]")


def literals():
    """String literals of the tests that look like XML, in file order."""
    files = sorted(ROOT.glob("tests/*.rs")) + sorted(ROOT.glob("tests/attacks/*.rs"))
    py = sorted(ROOT.glob("tests/interop/**/*.py"))
    found = []
    for f in files:
        text = f.read_text(errors="replace")
        for m in re.finditer(r'b?r(#+)"(.*?)"\1|b?"((?:[^"\\]|\\.)*)"', text, re.S):
            raw = m.group(2) if m.group(2) is not None else rust_unescape(m.group(3))
            found.append(fill_placeholders(raw))
    for f in py:
        text = f.read_text(errors="replace")
        for m in re.finditer(r'[fb]?"((?:[^"\\\n]|\\.)*)"|[fb]?\'((?:[^\'\\\n]|\\.)*)\'', text):
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            found.append(fill_placeholders(rust_unescape(raw)))
    seen, out = set(), []
    for s in found:
        if LOOKS_XML.search(s) and 3 < len(s) <= MAX_SEED and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def sasl_messages():
    """Base64 strings in the tests and the SASL unit tests that decode to
    PLAIN or SCRAM messages."""
    files = sorted(ROOT.glob("tests/**/*.rs")) + sorted(ROOT.glob("tests/interop/**/*.py"))
    files += [ROOT / "src/sasl/scram.rs", ROOT / "src/sasl/plain.rs"]
    plain, scram = set(), set()
    for f in files:
        text = f.read_text(errors="replace")
        for m in re.finditer(r"[A-Za-z0-9+/]{8,}={0,2}", text):
            try:
                d = base64.b64decode(m.group(0), validate=True)
            except Exception:
                continue
            if d.count(b"\0") == 2 and len(d) < 200:
                plain.add(d)
        for m in re.finditer(r'"([nyp][^"\n]*,[^"\n]*r=[^"\n]*)"', text):
            scram.add(rust_unescape(m.group(1)).encode())
        for m in re.finditer(r'"(c=[^"\n]*,r=[^"\n]*,p=[^"\n]*)"', text):
            scram.add(rust_unescape(m.group(1)).encode())
    return sorted(plain), sorted(scram)


def header(default_ns, to, extra=""):
    return f"<?xml version='1.0'?><stream:stream xmlns='{default_ns}' {STREAMS}{extra} to='{to}' version='1.0'>"


def dialback_key(secret, receiving, originating, stream_id):
    key = hashlib.sha256(secret.encode()).hexdigest().encode()
    msg = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def b64(b):
    return base64.b64encode(b).decode()


def writes(*parts):
    return b"\0".join(p.encode() if isinstance(p, str) else p for p in parts)


XML_CONTROLS = [bytes([0, 7, 13, 1]), bytes([4, 0, 0, 0]), bytes([8, 63, 31, 2]), bytes([1, 3, 50, 9]), bytes([2, 60, 10, 5])]


def xml_seeds(snips):
    c2s = header("jabber:client", "a.test")
    seeds = []
    for i, s in enumerate(snips):
        body = s if s.lstrip().startswith(("<stream", "<?xml")) else c2s + s
        seeds.append(XML_CONTROLS[i % len(XML_CONTROLS)] + body.encode())
    whole = c2s + "".join(s for s in snips if not s.lstrip().startswith(("<stream", "<?xml")))[:3000]
    seeds.append(XML_CONTROLS[0] + whole.encode() + b"</stream:stream>")
    seeds.append(XML_CONTROLS[0] + (c2s + "<message><![CDATA[x<y]]>&amp;&#x41;<a:b xmlns:a='urn:a' a:c='d'/></message></stream:stream>").encode())
    return seeds


def c2s_seeds(snips):
    h = header("jabber:client", "a.test")
    plain = b64(b"\0alice\0secret")
    auth_plain = f"<auth xmlns='{SASL}' mechanism='PLAIN'>{plain}</auth>"
    bind = f"<iq type='set' id='b1'><bind xmlns='{BIND}'><resource>fuzz</resource></bind></iq>"
    scram_first = b64(b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL")
    scram_final = b64(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    authz = b64(b"alice@a.test\0alice\0secret")
    register = "<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>"
    seeds = [
        bytes([2]) + writes(h, f"<starttls xmlns='{TLS}'/>", h, auth_plain, h, bind),
        bytes([3]) + writes(h, auth_plain, h, bind),
        bytes([3]) + writes(h, f"<auth xmlns='{SASL}' mechanism='PLAIN'/>", f"<response xmlns='{SASL}'>{plain}</response>", h, bind),
        bytes([3]) + writes(h, auth_plain, h, "<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"),
        bytes([0]) + writes(h, f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{scram_first}</auth>", f"<response xmlns='{SASL}'>{scram_final}</response>"),
        bytes([17]) + writes(h, f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256-PLUS'>{b64(b'p=tls-exporter,,n=alice,r=abc')}</auth>", f"<abort xmlns='{SASL}'/>"),
        bytes([9]) + writes(h, register, "<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>bob</username><password>pw</password></query></iq>"),
        bytes([1]) + writes(h, register),
        bytes([4]) + writes(h, f"<starttls xmlns='{TLS}'/>", h, auth_plain),
        bytes([3]) + writes(h, f"<auth xmlns='{SASL}' mechanism='PLAIN'>{authz}</auth>", h, bind),
    ]
    for i, s in enumerate(snips[:120]):
        body = s if s.lstrip().startswith(("<stream", "<?xml")) else writes(h, auth_plain, h, s)
        seeds.append(bytes([3 if i % 2 else 2]) + (body if isinstance(body, bytes) else body.encode()))
    return seeds


def s2s_seeds(snips):
    h = header("jabber:server", "a.test", " xmlns:db='jabber:server:dialback' from='remote.test'")
    key = dialback_key("remote", "a.test", "remote.test", "s2s-fuzz-id")
    vkey = dialback_key("s3cret", "remote.test", "a.test", "abc")
    result = f"<db:result from='remote.test' to='a.test'>{key}</db:result>"
    verify = f"<db:verify from='remote.test' to='a.test' id='abc'>{vkey}</db:verify>"
    msg = "<message from='juliet@remote.test/x' to='alice@a.test' type='chat'><body>hi</body></message>"
    seeds = [
        bytes([0]) + writes(h, result, msg, "<presence from='remote.test' to='b.test'/>"),
        bytes([0]) + writes(h, verify, "<db:verify from='remote.test' to='c.test' id='x'>00</db:verify>"),
        bytes([2]) + writes(h, f"<starttls xmlns='{TLS}'/>", h, result, msg),
        bytes([9]) + writes(h, f"<auth xmlns='{SASL}' mechanism='EXTERNAL'>{b64(b'remote.test')}</auth>", h, msg),
        bytes([13]) + writes(h, f"<auth xmlns='{SASL}' mechanism='EXTERNAL'>=</auth>", h, "<bidi xmlns='urn:xmpp:bidi'/>", msg),
        bytes([0]) + writes(h, "<db:result from='a.test' to='a.test'>00</db:result>", f"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"),
    ]
    for s in snips:
        if "jabber:server" in s or "db:" in s:
            body = s if s.lstrip().startswith(("<stream", "<?xml")) else writes(h, result, s)
            seeds.append(bytes([0]) + (body if isinstance(body, bytes) else body.encode()))
    for s in snips[:60]:
        if not s.lstrip().startswith(("<stream", "<?xml")):
            seeds.append(bytes([0]) + writes(h, result, s.replace("jabber:client", "jabber:server")))
    return seeds


def component_seeds(snips):
    h = header("jabber:component:accept", "bot.a.test")
    digest = hashlib.sha1(b"comp-fuzz-id" + b"hunter2").hexdigest()
    hs = f"<handshake>{digest}</handshake>"
    seeds = [
        writes(h, hs, "<message from='bot.a.test' to='alice@a.test'><body>x</body></message>"),
        writes(h, f"<handshake> {digest.upper()} </handshake>", "<iq from='u@bot.a.test/r' to='a.test' type='get' id='1'><query xmlns='jabber:iq:version'/></iq>"),
        writes(h, "<handshake>00</handshake>"),
    ]
    for s in snips:
        if "component" in s or "bot." in s or "handshake" in s:
            body = s if s.lstrip().startswith(("<stream", "<?xml")) else writes(h, hs, s)
            seeds.append(body if isinstance(body, bytes) else body.encode())
    for s in snips[:40]:
        if not s.lstrip().startswith(("<stream", "<?xml")):
            seeds.append(writes(h, hs, s.replace("jabber:client", "jabber:component:accept")))
    return seeds


def sasl_seeds():
    plain, scram = sasl_messages()
    seeds = [bytes([0]) + m for m in plain]
    seeds.append(bytes([0]) + b"\0juliet\0r0m30myr0m30")
    firsts = [m for m in scram if not m.startswith(b"c=")]
    finals = [m for m in scram if m.startswith(b"c=")] or [b"c=biws,r=x,p=AAAA"]
    for i, f in enumerate(firsts):
        h = (i % 3) << 1
        seeds.append(bytes([1 | h]) + f + b"\0" + finals[i % len(finals)])
    seeds.append(bytes([1]) + b"n,,n=juliet,r=abc\0c=biws,r=abcdef,p=AAAA")
    seeds.append(bytes([1 | 8 | 16 | 32]) + b"p=tls-exporter,,n=juliet,r=abc\0c=cD10bHMtZXhwb3J0ZXIsLA==,r=abc,p=AAAA")
    for flags in (65, 67, 69, 65 | 8 | 16 | 32, 65 | 128, 67 | 16):
        seeds.append(bytes([flags]) + b"user,name=x\0pencil\0fyko+d2lbbFgONRv9qkxdawL\0\0")
        seeds.append(bytes([flags]) + "jüliet\0Ⅸ pass\0nonce\0juliet@a.test\0".encode())
        seeds.append(bytes([flags]) + b"u\0p\0n\0\0\x05,x=y")
    return seeds


def save(target, seeds):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    kept = 0
    for s in seeds[:MAX_PER_TARGET]:
        if len(s) > MAX_SEED + 1024:
            continue
        (d / hashlib.sha1(s).hexdigest()).write_bytes(s)
        kept += 1
    print(f"{target}: {kept} seeds")


def main():
    snips = literals()
    save("xml_stream", xml_seeds(snips))
    save("c2s_negotiation", c2s_seeds(snips))
    save("s2s_negotiation", s2s_seeds(snips))
    save("component_negotiation", component_seeds(snips))
    save("sasl", sasl_seeds())


if __name__ == "__main__":
    main()
