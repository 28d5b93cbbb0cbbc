// The invitation landing page (/invite/TOKEN) in headless Chromium: the
// page loads, names the inviter, offers the xmpp: link, and its form
// creates the account. Driven by test_invite.py:
//   PAGE_URL   http://HOST:PORT/invite/TOKEN
//   USERNAME, PASSWORD, INVITER, DOMAIN
//   SCREENSHOT where to save the page (before and after: -form/-done)
// Prints one JSON line: {"ok": …, "steps": […], "error": …}.
import { chromium } from 'playwright-core';

const steps = [];
const step = (s) => { steps.push(s); };
const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };

async function main() {
  const [url, user, password, inviter, domain, shot] = [env('PAGE_URL'), env('USERNAME'),
    env('PASSWORD'), env('INVITER'), env('DOMAIN'), env('SCREENSHOT')];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  const console_lines = [];
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 1100 } });
    page.on('console', (m) => console_lines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console_lines.push(`pageerror: ${e.message}`));
    const resp = await page.goto(url);
    step(`page loaded (${resp.status()})`);
    if (resp.status() !== 200) throw new Error(`status ${resp.status()}`);
    const heading = await page.locator('h1').innerText();
    step(`heading: ${heading}`);
    if (!heading.includes(inviter)) throw new Error(`the heading does not name ${inviter}`);
    const href = await page.locator('#open').getAttribute('href');
    step(`xmpp link: ${href}`);
    if (!href.startsWith(`xmpp:${inviter}?roster;preauth=`)) throw new Error(`unexpected link ${href}`);
    await page.screenshot({ path: shot.replace(/\.png$/, '-form.png'), fullPage: true });
    await page.locator('#username').fill(user);
    await page.locator('#password').fill(password);
    await Promise.all([page.waitForNavigation(), page.locator('#register').click()]);
    step('form submitted');
    const jid = await page.locator('#jid').innerText({ timeout: 30000 });
    step(`account: ${jid}`);
    if (jid !== `${user}@${domain}`) throw new Error(`unexpected account ${jid}`);
    await page.screenshot({ path: shot.replace(/\.png$/, '-done.png'), fullPage: true });
    step('screenshots saved');
    console.log(JSON.stringify({ ok: true, steps }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e), steps, console: console_lines.slice(-40) }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.log(JSON.stringify({ ok: false, error: String(e), steps })); process.exit(1); });
