"""Administration from a client with slixmpp's own XEP-0050 plugin: the
admin named in `[admin] admins` (alice) lists the server's commands and
runs XEP-0133 ones (a one-stage and a two-stage command whose effect is
checked by logging in); a non-admin (bob) sees no administration command (only XEP-0401's
contact invitation, which every user may run) and is refused."""

from __future__ import annotations

import uuid

import pytest

from interop_client import DEFAULT_PLUGINS, STEP_TIMEOUT, IqError, connect, run

ADHOC = DEFAULT_PLUGINS + ("xep_0004", "xep_0050")
ADMIN = "http://jabber.org/protocol/admin#"


def test_admin_lists_and_runs_commands(server):
    new_user = f"made{uuid.uuid4().hex[:8]}"

    async def scenario():
        async with connect(server, "alice", plugins=ADHOC) as alice:
            adhoc = alice.plugin["xep_0050"]
            items = await adhoc.get_commands(server.domain, timeout=STEP_TIMEOUT)
            nodes = {node for _jid, node, _name in items["disco_items"]["items"]}
            for n in ("add-user", "delete-user", "disable-user", "announce", "get-online-users-num"):
                assert ADMIN + n in nodes, f"{n} not listed: {sorted(nodes)}"

            # One stage: the number of online users, completed at once.
            iq = await adhoc.send_command(server.domain, ADMIN + "get-online-users-num",
                                          timeout=STEP_TIMEOUT)
            assert iq["command"]["status"] == "completed", str(iq)
            values = iq["command"]["form"].get_values()
            assert int(values["onlineusersnum"]) >= 1, str(iq)

            # Two stages: the form, then its submission in the same session.
            iq = await adhoc.send_command(server.domain, ADMIN + "add-user", timeout=STEP_TIMEOUT)
            assert iq["command"]["status"] == "executing", str(iq)
            sessionid = iq["command"]["sessionid"]
            assert "accountjid" in iq["command"]["form"].get_fields(), str(iq)
            form = alice.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/admin")
            form.add_field(var="accountjid", value=f"{new_user}@{server.domain}")
            form.add_field(var="password", value="s3cret")
            form.add_field(var="password-verify", value="s3cret")
            iq = await adhoc.send_command(server.domain, ADMIN + "add-user", action="complete",
                                          sessionid=sessionid, payload=form, timeout=STEP_TIMEOUT)
            assert iq["command"]["status"] == "completed", str(iq)

            # The same session cannot be used again.
            with pytest.raises(IqError) as refused:
                await adhoc.send_command(server.domain, ADMIN + "add-user", action="complete",
                                         sessionid=sessionid, payload=form, timeout=STEP_TIMEOUT)
            assert refused.value.iq["error"]["condition"] == "bad-request", str(refused.value.iq)

        # The account alice added logs in.
        async with connect(server, new_user, password="s3cret"):
            pass

    run(scenario())


def test_non_admin_sees_nothing_and_is_refused(server):
    async def scenario():
        async with connect(server, "bob", plugins=ADHOC) as bob:
            adhoc = bob.plugin["xep_0050"]
            items = await adhoc.get_commands(server.domain, timeout=STEP_TIMEOUT)
            nodes = [node for _jid, node, _name in items["disco_items"]["items"]]
            assert nodes == ["urn:xmpp:invite#invite"], str(items)
            with pytest.raises(IqError) as refused:
                await adhoc.send_command(server.domain, ADMIN + "add-user", timeout=STEP_TIMEOUT)
            assert refused.value.iq["error"]["condition"] == "forbidden", str(refused.value.iq)

    run(scenario())
