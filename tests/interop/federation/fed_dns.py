"""A tiny authoritative DNS server (UDP) for the test domains, for Prosody.

Prosody resolves s2s peers through libunbound when lua-unbound is installed
(a Recommends of the Debian package, so `apt-get install --no-install-recommends
prosody` leaves it out). Without it Prosody falls back to its pure-Lua resolver
(net.dns, "Using legacy DNS API (missing lua-unbound?)"), which reads only the
nameservers of /etc/resolv.conf — no hosts file — and this machine's nameserver
is unreachable. So each Prosody runs in a mount namespace of its own whose
/etc/resolv.conf names this server, which answers:

- A for each test domain (its loopback address),
- NOERROR with no records (NODATA) for other types of a test domain (AAAA, …),
- NXDOMAIN for everything else, notably the SRV names (`_xmpp-server._tcp.<domain>`),
  after which Prosody connects to the domain's A record on port 5269.

The same answers work with lua-unbound too (its hoststxt option still names the
fixture's hosts file). Nothing but Prosody is pointed at it.
"""

from __future__ import annotations

import socket
import struct
import threading

TYPE_A = 1
RCODE_NXDOMAIN = 3


def parse_question(packet: bytes) -> tuple[str, int, int] | None:
    """(lower-cased name, qtype, end offset of the question) of a query, or None."""
    if len(packet) < 12:
        return None
    (qdcount,) = struct.unpack("!H", packet[4:6])
    if qdcount != 1:
        return None
    labels, i = [], 12
    while True:
        if i >= len(packet):
            return None
        n = packet[i]
        i += 1
        if n == 0:
            break
        if n & 0xC0:  # no compression in a query's question
            return None
        labels.append(packet[i:i + n].decode("ascii", errors="replace"))
        i += n
    if i + 4 > len(packet):
        return None
    qtype, _qclass = struct.unpack("!HH", packet[i:i + 4])
    return ".".join(labels).lower().rstrip("."), qtype, i + 4


def answer(packet: bytes, records: dict[str, str]) -> bytes | None:
    q = parse_question(packet)
    if q is None:
        return None
    name, qtype, end = q
    (flags,) = struct.unpack("!H", packet[2:4])
    if flags & 0x8000:  # a response, not a query
        return None
    opcode, rd = flags & 0x7800, flags & 0x0100
    answers = b""
    if name in records:
        rcode = 0
        if qtype == TYPE_A:
            answers = struct.pack("!HHHIH", 0xC00C, TYPE_A, 1, 60, 4) + socket.inet_aton(records[name])
    else:
        rcode = RCODE_NXDOMAIN
    out_flags = 0x8000 | opcode | 0x0400 | rd | 0x0080 | rcode  # QR, AA, RD copied, RA
    header = packet[:2] + struct.pack("!HHHHH", out_flags, 1, 1 if answers else 0, 0, 0)
    return header + packet[12:end] + answers


class DnsServer:
    """Answers on udp://ip:53 from a daemon thread until stop()."""

    def __init__(self, ip: str, records: dict[str, str]):
        self.ip = ip
        self.records = {k.lower(): v for k, v in records.items()}
        self.queries: list[tuple[str, int]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((ip, 53))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"dns {ip}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet, addr = self._sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            q = parse_question(packet)
            if q is not None:
                self.queries.append(q[:2])
            reply = answer(packet, self.records)
            if reply is not None:
                try:
                    self._sock.sendto(reply, addr)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
