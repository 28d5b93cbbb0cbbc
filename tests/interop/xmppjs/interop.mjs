// xmpp.js against waxwing: SASL2 (XEP-0388) with SCRAM, Bind 2 (XEP-0386)
// with stream management enabled inline, a FAST token (XEP-0484) asked for
// and kept, a dropped connection coming back with the token and resuming the
// session inline, a second client instance logging in with the kept token,
// messages both ways. Run by tests/interop/test_xmppjs.py, which checks the
// JSON report printed on stdout (one line) and trusts the server's
// certificate through NODE_EXTRA_CA_CERTS.
//
// Environment: XMPP_HOST, XMPP_PORT (the STARTTLS listener), XMPP_DOMAIN,
// ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD; EXPECT_ROTATION=1 when the
// server rotates the token on every FAST login.

import { client, xml } from "@xmpp/client";

const env = process.env;
const service = `xmpp://${env.XMPP_HOST}:${env.XMPP_PORT}`;
const domain = env.XMPP_DOMAIN;
const STEP_TIMEOUT = 15_000;
const CLIENT_ID = "b7f6c2a4-xmppjs-interop-phone";

const report = { steps: [], wire: {} };

function step(name, details = {}) {
  report.steps.push({ name, ...details });
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out waiting for ${what}`)),
      STEP_TIMEOUT,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function once(emitter, event, what) {
  return withTimeout(
    new Promise((resolve) => emitter.once(event, resolve)),
    what ?? event,
  );
}

/// A client that records what it writes and reads (the wire), and every
/// token xmpp.js hands its token store.
function make(name, username, password, { clientId, token } = {}) {
  const c = client({
    service,
    domain,
    username,
    password,
    userAgent: clientId
      ? xml(
          "user-agent",
          { id: clientId },
          xml("software", {}, "xmpp.js interop"),
          xml("device", {}, "node"),
        )
      : undefined,
  });
  // The stream steps wait 2 s by default; a loaded CI machine needs more.
  c.timeout = STEP_TIMEOUT;
  const wire = [];
  report.wire[name] = wire;
  c.on("send", (el) => wire.push(`OUT ${el.toString()}`));
  c.on("element", (el) => wire.push(`IN ${el.toString()}`));
  c.on("error", (e) => wire.push(`ERROR ${e?.condition ?? ""} ${e?.message ?? e}`));
  c.saved = [];
  let stored = token ?? null;
  c.fast.saveToken = async (t) => {
    stored = t;
    c.saved.push(t);
  };
  c.fast.fetchToken = async () => stored;
  c.fast.deleteToken = async () => {
    stored = null;
  };
  c.inbox = [];
  c.on("stanza", (st) => {
    if (st.is("message") && st.getChildText("body")) {
      c.inbox.push({ from: st.attrs.from, body: st.getChildText("body") });
      c.emit("body", st.getChildText("body"));
    }
  });
  return c;
}

function waitForBody(c, body) {
  if (c.inbox.some((m) => m.body === body)) return Promise.resolve();
  return withTimeout(
    new Promise((resolve) => {
      const f = (b) => {
        if (b === body) {
          c.removeListener("body", f);
          resolve();
        }
      };
      c.on("body", f);
    }),
    `message '${body}'`,
  );
}

/// The `mechanism` of every SASL2 `<authenticate/>` this client wrote.
function authenticateMechanisms(name) {
  return report.wire[name]
    .filter((l) => l.startsWith("OUT ") && l.includes("<authenticate"))
    .map((l) => /mechanism=["']([^"']+)["']/.exec(l)?.[1] ?? "");
}

function sawIn(name, needle) {
  return report.wire[name].some((l) => l.startsWith("IN ") && l.includes(needle));
}

async function main() {
  const bob = make("bob", env.BOB, env.BOB_PASSWORD, { clientId: "xmppjs-bob" });
  const bobOnline = once(bob, "online", "bob online");
  await bob.start();
  const bobJid = (await bobOnline).toString();
  await bob.send(xml("presence"));
  step("bob online", { jid: bobJid });

  // 1. Password login (SCRAM over SASL2), Bind 2 with SM enabled inline,
  //    a token asked for.
  const alice = make("alice", env.ALICE, env.ALICE_PASSWORD, { clientId: CLIENT_ID });
  const aliceOnline = once(alice, "online", "alice online");
  await alice.start();
  const aliceJid = (await aliceOnline).toString();
  await alice.send(xml("presence"));
  step("alice online", {
    jid: aliceJid,
    mechanisms: authenticateMechanisms("alice"),
    sm_enabled: alice.streamManagement.enabled,
    sm_id: alice.streamManagement.id,
    bound: sawIn("alice", "<bound"),
    tokens: alice.saved.map((t) => ({ mechanism: t.mechanism, expiry: t.expiry })),
  });
  const firstToken = alice.saved[0]?.token ?? null;

  // 2. A message each way.
  await alice.send(xml("message", { to: bobJid, type: "chat" }, xml("body", {}, "hello bob")));
  await waitForBody(bob, "hello bob");
  await bob.send(xml("message", { to: aliceJid, type: "chat" }, xml("body", {}, "hello alice")));
  await waitForBody(alice, "hello alice");
  step("messages exchanged");

  // 3. The network goes: the socket dies without a close. Bob writes
  //    meanwhile; xmpp.js reconnects by itself with its token and resumes.
  const resumed = once(alice.streamManagement, "resumed", "SM resumed inline");
  alice.socket.socket.destroy();
  await bob.send(xml("message", { to: aliceJid, type: "chat" }, xml("body", {}, "while you were away")));
  await resumed;
  await waitForBody(alice, "while you were away");
  step("alice resumed", {
    jid: alice.jid?.toString(),
    mechanisms: authenticateMechanisms("alice"),
    resumed: sawIn("alice", "<resumed"),
    tokens: alice.saved.length,
    away_messages: alice.inbox.filter((m) => m.body === "while you were away").length,
  });
  const tokenAfterResume = alice.saved.at(-1)?.token ?? null;

  // 4. Another instance of the same client (same user-agent id) starting
  //    from the kept token only: FAST without a resumption.
  const kept = alice.saved.at(-1);
  const phone = make("phone", env.ALICE, "not-the-password", { clientId: CLIENT_ID, token: kept });
  const phoneOnline = once(phone, "online", "second instance online");
  await phone.start();
  const phoneJid = (await phoneOnline).toString();
  await phone.send(xml("presence"));
  await phone.send(xml("message", { to: bobJid, type: "chat" }, xml("body", {}, "from the token")));
  await waitForBody(bob, "from the token");
  step("token login", {
    jid: phoneJid,
    mechanisms: authenticateMechanisms("phone"),
    tokens: phone.saved.length,
    rotated: phone.saved.length > 0 && phone.saved.at(-1).token !== kept.token,
  });

  // 5. With rotation: the token replaced by a used new one is dead; xmpp.js
  //    drops it, falls back to the password and asks for a new token.
  if (env.EXPECT_ROTATION === "1") {
    const old = make("stale", env.ALICE, env.ALICE_PASSWORD, {
      clientId: CLIENT_ID,
      token: { ...kept, token: firstToken },
    });
    const oldOnline = once(old, "online", "stale-token instance online");
    await old.start();
    await oldOnline;
    step("stale token", {
      mechanisms: authenticateMechanisms("stale"),
      fast_failure: sawIn("stale", "<failure"),
      tokens: old.saved.length,
      same_as_first: firstToken === tokenAfterResume,
    });
    await old.stop();
  }

  await phone.stop();
  await alice.stop();
  await bob.stop();
  report.ok = true;
}

main()
  .catch((e) => {
    report.ok = false;
    report.error = String(e?.stack ?? e);
  })
  .finally(() => {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exit(report.ok ? 0 : 1);
  });
