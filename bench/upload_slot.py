"""Asks a waxwing server for an HTTP upload slot (XEP-0363) with slixmpp and
prints the PUT and GET URLs, one per line. Used by bench/upload.sh.
    python3 bench/upload_slot.py HOST PORT JID PASSWORD FILENAME SIZE TYPE"""
import asyncio
import ssl
import sys

import slixmpp

NS = "urn:xmpp:http:upload:0"


class Slot(slixmpp.ClientXMPP):
    def __init__(self, jid, password, name, size, ctype):
        super().__init__(jid, password)
        self.args = (name, size, ctype)
        self.urls = None
        self.ssl_context = ssl.create_default_context()
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.add_event_handler("session_start", self.start)

    async def start(self, _):
        name, size, ctype = self.args
        iq = self.Iq(stype="get", sto=f"upload.{self.boundjid.domain}")
        req = slixmpp.xmlstream.ET.Element(f"{{{NS}}}request", filename=name, size=str(size))
        req.set("content-type", ctype)
        iq.append(req)
        r = await iq.send(timeout=10)
        slot = r.xml.find(f"{{{NS}}}slot")
        self.urls = (slot.find(f"{{{NS}}}put").get("url"), slot.find(f"{{{NS}}}get").get("url"))
        self.disconnect()


async def main():
    host, port, jid, password, name, size, ctype = sys.argv[1:8]
    c = Slot(jid, password, name, int(size), ctype)
    c.connect(host=host, port=int(port))
    await asyncio.wait_for(c.disconnected, 30)
    print(c.urls[0])
    print(c.urls[1])


asyncio.run(main())
