// The bundled web chat: Waxwing serves Converse.js at /chat/ from
// [http] chat_dir (contrib/chat/index.html, endpoints filled in by the
// server, Converse's dist/ beside it). Headless Chromium opens the page
// from Waxwing itself, a user logs in through Converse's login form (the
// domain is locked to the server's, so only the user name is typed) and
// the page must reach the logged-in state. Driven by test_web_chat.py:
//   PAGE_URL   http://HOST:PORT/chat/
//   USERNAME, PASSWORD, DOMAIN
//   SCREENSHOT where to save the page at the end
// Prints one JSON line: {"ok": …, "steps": […], "error": …}.
import { chromium } from 'playwright-core';

const steps = [];
const step = (s) => { steps.push(s); };
const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };

async function main() {
  const [url, user, password, domain, shot] =
    [env('PAGE_URL'), env('USERNAME'), env('PASSWORD'), env('DOMAIN'), env('SCREENSHOT')];
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
    const resp = await page.goto(url);
    step(`page loaded (${resp.status()})`);
    const title = await page.title();
    step(`title: ${title}`);
    if (!title.includes(domain)) throw new Error(`the page's title does not name ${domain}: ${title}`);
    const jid = page.locator('#converse-login-jid');
    await jid.waitFor({ timeout: 30000 });
    step('login form shown');
    await jid.fill(user);
    await page.locator('#converse-login-password').fill(password);
    await page.locator('converse-login-form button[type="submit"]').click();
    step('login submitted');
    // Logged in: the login form gives way to the user's profile, which
    // names the account.
    await page.locator('converse-user-profile').first().waitFor({ timeout: 30000 });
    step('user profile shown');
    await page.screenshot({ path: shot, fullPage: true });
    step('screenshot saved');
    console.log(JSON.stringify({ ok: true, steps }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e), steps, console: console_lines.slice(-40) }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.log(JSON.stringify({ ok: false, error: String(e), steps })); process.exit(1); });
