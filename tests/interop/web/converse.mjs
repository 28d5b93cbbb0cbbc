// Converse.js (from the npm registry) in Debian's headless Chromium,
// driven by playwright-core, against a waxwing server over WebSocket
// (RFC 7395) or BOSH (XEP-0124/XEP-0206). Driven by
// tests/interop/test_web.py, which passes one of:
//   WS_URL    the server's ws://…/xmpp-websocket
//   BOSH_URL  the server's http://…/http-bind
// and:
//   JID, PASSWORD   the browser user's account
//   PEER      the bare JID of a slixmpp user who answers "re: <text>"
//   SCREENSHOT      where to save the page at the end
// The page logs in, the user opens a chat with PEER through the UI, types a
// message and sends it with Enter, and waits until the reply shows in the
// chat. Prints one JSON line: {"ok": …, "steps": […], "error": …}.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.join(HERE, 'node_modules', 'converse.js', 'dist');
const TYPES = { '.js': 'text/javascript', '.css': 'text/css', '.html': 'text/html',
  '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml',
  '.woff2': 'font/woff2', '.woff': 'font/woff', '.ttf': 'font/ttf', '.png': 'image/png' };
const steps = [];
const step = (s) => { steps.push(s); };
const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };

// The page and Converse's files, from a static server on loopback (the
// page's origin differs from the XMPP server's, as on a real site).
function serve() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    let file = url.pathname === '/' ? path.join(HERE, 'index.html')
      : url.pathname.startsWith('/dist/') ? path.join(DIST, url.pathname.slice(6)) : null;
    if (file && !path.resolve(file).startsWith(HERE)) file = null;
    if (!file || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404); res.end(); return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function main() {
  const [jid, password, peer] = [env('JID'), env('PASSWORD'), env('PEER')];
  const transport = process.env.BOSH_URL ? { bosh: process.env.BOSH_URL } : { ws: env('WS_URL') };
  const shot = env('SCREENSHOT');
  const site = await serve();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  const console_lines = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on('console', (m) => console_lines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console_lines.push(`pageerror: ${e.message}`));
    const q = new URLSearchParams({ ...transport, jid, password });
    await page.goto(`http://127.0.0.1:${site.address().port}/?${q}`);
    step('page loaded');
    // Logged in: Converse's connection reports the bound JID.
    await page.waitForFunction(() => window.waxwing?.api?.connection?.connected?.(), null, { timeout: 30000 });
    const bound = await page.evaluate(() => window.waxwing.session.get('jid'));
    step(`logged in as ${bound}`);
    // The user starts a chat with the peer: the controlbox's "start a chat"
    // form, as a person would.
    await page.evaluate((peer) => window.waxwing.api.chats.open(peer, {}, true), peer);
    const textarea = page.locator(`converse-chat[jid="${peer}"] textarea.chat-textarea`);
    await textarea.waitFor({ timeout: 15000 });
    step('chat open');
    const text = `hello from Converse ${Date.now()}`;
    await textarea.fill(text);
    await textarea.press('Enter');
    step('message typed and sent');
    // The reply shows in the chat.
    const reply = page.locator(`converse-chat[jid="${peer}"] .chat-msg__text`, { hasText: `re: ${text}` });
    await reply.waitFor({ timeout: 20000 });
    step('reply shown');
    // A file, through Converse's upload button: it asks the server's
    // upload service for a slot (XEP-0363), PUTs the file across origins
    // and sends the GET URL to the peer, who fetches it.
    const content = process.env.UPLOAD_CONTENT || 'waxwing upload test';
    const input = page.locator(`converse-chat[jid="${peer}"] input.fileupload`);
    await input.waitFor({ state: 'attached', timeout: 15000 });
    await input.setInputFiles({ name: 'waxwing-upload.txt', mimeType: 'text/plain', buffer: Buffer.from(content) });
    step('file chosen');
    const link = page.locator(`converse-chat[jid="${peer}"] .chat-msg__text a[href*="/upload/"], converse-chat[jid="${peer}"] .chat-msg__body a[href*="/upload/"]`);
    await link.first().waitFor({ timeout: 20000 });
    const url = await link.first().getAttribute('href');
    step(`file sent: ${url}`);
    await page.screenshot({ path: shot, fullPage: true });
    step('screenshot saved');
    console.log(JSON.stringify({ ok: true, sent: text, uploaded: url, steps }));
    // The page shows its own message at once, perhaps before the BOSH
    // request that carries it has gone: the browser stays open until the
    // test has the peer's copy (a line on standard input, or its end), or
    // 20 s.
    await toldDone(20000);
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e), steps, console: console_lines.slice(-40) }));
  } finally {
    await browser.close();
    site.close();
  }
}

function toldDone(ms) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      process.stdin.destroy();
      resolve();
    };
    const timer = setTimeout(done, ms);
    process.stdin.once('data', done);
    process.stdin.once('end', done);
    process.stdin.once('error', done);
    process.stdin.resume();
  });
}

main().catch((e) => { console.log(JSON.stringify({ ok: false, error: String(e), steps })); process.exit(1); });
