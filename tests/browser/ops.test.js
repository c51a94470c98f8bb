// The ops page (/ops) in real Chromium against the real gateway: its numbers follow real
// WebSocket clients and publishes over the live stream, it runs under the gateway's CSP with
// no errors, a remote browser gets in with ?key= once (then a cookie), and the light and dark
// screenshots in docs/screenshots/ come from here.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, existsSync, copyFileSync } from 'node:fs';
import path from 'node:path';
import { Gateway, newPage, notification, launchBrowser, screenshotDir, docsScreenshotDir } from './harness.js';

const KEY = 'ops-browser-key-5d1c';
let gateway;
let browser;

before(async () => {
  gateway = await Gateway.start({ regions: ['AE', 'FI', 'GB', 'US'] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
});

/** Opens `count` WebSockets to `region` from a page of their own; resolves with that page. */
async function openSockets(region, count) {
  const page = await newPage(browser);
  await page.goto(`${gateway.origin}/healthz`);
  await page.evaluate(async ({ url, count }) => {
    window.sockets = [];
    await Promise.all(Array.from({ length: count }, () => new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.onopen = resolve;
      socket.onerror = reject;
      window.sockets.push(socket);
    })));
  }, { url: `${gateway.wsOrigin}/?region=${region}`, count });
  return page;
}

async function text(page, selector) {
  return (await page.locator(selector).textContent()).trim();
}

async function regionCount(page, region) {
  return page.evaluate((region) => {
    const row = [...document.querySelectorAll('#regions tbody tr')]
      .find((tr) => tr.cells[0]?.textContent === region);
    return row ? Number(row.cells[1].textContent.replace(/,/g, '')) : null;
  }, region);
}

async function saveScreenshot(page, name) {
  mkdirSync(screenshotDir, { recursive: true });
  const file = path.join(screenshotDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  const docsFile = path.join(docsScreenshotDir, `${name}.png`);
  if (!existsSync(docsFile) || process.env.UPDATE_SCREENSHOTS === '1') {
    mkdirSync(docsScreenshotDir, { recursive: true });
    copyFileSync(file, docsFile);
  }
}

test('the connection count rises when a WebSocket client connects, live', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${gateway.origin}/ops`);
  await page.waitForFunction(() => document.getElementById('readiness').dataset.state === 'ready', null, { timeout: 5000 });
  const before = Number((await text(page, '#connections')).replace(/,/g, ''));
  assert.equal(await regionCount(page, 'AE'), 0);

  const sockets = await openSockets('AE', 2);
  t.after(() => sockets.context().close());
  await page.waitForFunction((expected) => document.getElementById('connections').textContent === String(expected), before + 2, { timeout: 5000 });
  assert.equal(await regionCount(page, 'AE'), 2);

  await gateway.publishOk(notification('AE', 'Ops page check'), 2);
  await page.waitForFunction(() => /^[1-9]/.test(document.getElementById('deliveries-total').textContent), null, { timeout: 5000 });
  assert.match(await text(page, '#publishes-total'), /^1 received$/);
  assert.match(await text(page, '#feed'), /^live/);
  assert.deepEqual(page.consoleErrors, [], 'console errors (a CSP violation shows here)');
  assert.deepEqual(page.pageErrors, []);
});

test('light and dark renderings, saved as the docs screenshots', async (t) => {
  const ae = await openSockets('AE', 3);
  const fi = await openSockets('FI', 1);
  const gb = await openSockets('GB', 2);
  // Publishes flowing while the screenshots are taken, so the rates show; stopped before the
  // sockets close (a publish after that would reach nobody and fail the test).
  let publishing = true;
  let publisher = Promise.resolve();
  t.after(async () => {
    publishing = false;
    await publisher;
    await Promise.all([ae, fi, gb].map((page) => page.context().close()));
  });
  for (let n = 0; n < 3; n += 1) await gateway.publishOk(notification('AE', `Screenshot ${n}`));
  await gateway.publishOk(notification('GB', 'Screenshot GB'));
  publisher = (async () => {
    for (let n = 0; publishing; n += 1) {
      await gateway.publishOk(notification(n % 4 ? 'AE' : 'GB', `Flowing ${n}`));
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  const backgrounds = {};
  for (const colorScheme of ['light', 'dark']) {
    const page = await newPage(browser, { colorScheme, viewport: { width: 1100, height: 700 } });
    await page.goto(`${gateway.origin}/ops`);
    await page.waitForFunction(() => document.getElementById('connections').textContent === '6', null, { timeout: 5000 });
    await page.waitForFunction(() => /^[1-9]/.test(document.getElementById('deliveries-rate').textContent), null, { timeout: 5000 });
    backgrounds[colorScheme] = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    await saveScreenshot(page, `ops-${colorScheme}`);
    assert.deepEqual(page.consoleErrors, []);
    await page.context().close();
  }
  assert.notEqual(backgrounds.light, backgrounds.dark, 'dark mode changes the page');
});

test('a remote browser opens /ops?key= once, then the cookie carries it', async (t) => {
  // A gateway behind a trusted proxy on loopback: X-Forwarded-For names a remote client.
  const keyed = await Gateway.start({ regions: ['AE'], args: ['--api-key', KEY, '--trusted-proxies', '127.0.0.1'] });
  t.after(() => keyed.stop());
  const page = await newPage(browser, { extraHTTPHeaders: { 'X-Forwarded-For': '203.0.113.9' } });
  t.after(() => page.context().close());

  const refused = await page.goto(`${keyed.origin}/ops`);
  assert.equal(refused.status(), 401);
  assert.match(await page.textContent('body'), /\/ops\?key=/);

  const wrong = await page.goto(`${keyed.origin}/ops?key=wrong`);
  assert.equal(wrong.status(), 401);

  const opened = await page.goto(`${keyed.origin}/ops?key=${KEY}`);
  assert.equal(opened.status(), 200);
  assert.equal(page.url(), `${keyed.origin}/ops`, 'the key left the address bar');
  await page.waitForFunction(() => document.getElementById('readiness').dataset.state === 'ready', null, { timeout: 5000 });
  const cookies = await page.context().cookies(`${keyed.origin}/ops`);
  const cookie = cookies.find((c) => c.name === 'notify_ops_key');
  assert.ok(cookie?.httpOnly, 'HttpOnly cookie');
  assert.equal(cookie.sameSite, 'Strict');
  // Scripts cannot read it.
  assert.equal(await page.evaluate(() => document.cookie), '');
  // Reloading needs no key in the URL.
  const reloaded = await page.goto(`${keyed.origin}/ops`);
  assert.equal(reloaded.status(), 200);
  assert.deepEqual(page.pageErrors, []);
});
