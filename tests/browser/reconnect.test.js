// Reconnection against the real gateway: kill it, start it again on the same port, and the page
// must show that it is reconnecting, come back by itself, resume with `since`, and show the next
// notification. `close()` must stop for good.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { newPage, notification, fakeThumbnails, toasts, startGatewayAndBrowser, stopGatewayAndBrowser } from './harness.js';

let gateway;
let browser;

before(async () => {
  ({ gateway, browser } = await startGatewayAndBrowser({ regions: ['AE', 'FI'] }));
});

after(() => stopGatewayAndBrowser({ gateway, browser }));

test('the demo page reconnects after a gateway restart and shows the next notification', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await fakeThumbnails(page);
  await page.goto(`${gateway.origin}/?region=AE`);
  const status = page.locator('#status');
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'open');
  await gateway.waitForConnections('AE', 1);

  // The client remembers the history id of the last message (when the gateway assigns one)
  // and resumes from it.
  const reply = await gateway.publishOk(notification('AE', 'قبل إعادة التشغيل'));
  await toasts(page, 'قبل إعادة التشغيل').waitFor({ timeout: 5000 });
  const id = await page.evaluate(() => window.notifier.lastId);
  assert.equal(id, reply.id ?? null);

  const socketsBefore = page.sockets.length;
  await gateway.kill();
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'reconnecting', null, { timeout: 5000 });
  assert.match(await status.textContent(), /reconnecting/i);

  // Stay down long enough for a few failed attempts, then come back on the same port.
  await sleep(1500);
  const restartedAt = Date.now();
  await gateway.spawn();
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'open', null, { timeout: 20000 });
  const reconnectMs = Date.now() - restartedAt;
  console.log(`# reconnected ${reconnectMs} ms after the gateway was ready again`);
  await gateway.waitForConnections('AE', 1);

  const resumed = page.sockets.slice(socketsBefore);
  assert.ok(resumed.length >= 1, 'the page opened a new socket');
  for (const url of resumed) {
    const params = new URL(url).searchParams;
    assert.equal(params.get('region'), 'AE');
    assert.equal(params.get('since'), id, `reconnect URL ${url} resumes from the last id`);
    if (id === null) assert.equal(params.has('since'), false);
  }

  const afterTitle = 'بعد إعادة التشغيل ✓';
  await gateway.publishOk(notification('AE', afterTitle));
  const toast = toasts(page, afterTitle);
  await toast.waitFor({ timeout: 5000 });
  assert.equal(await toast.getAttribute('dir'), 'rtl');
  assert.deepEqual(page.pageErrors, []);
});

test('close() stops the client: no reconnect attempts afterwards', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${gateway.origin}/?region=FI`);
  await page.waitForFunction(() => window.notifier?.state === 'open');
  await page.evaluate(() => window.notifier.close());
  assert.equal(await page.locator('#status').getAttribute('data-state'), 'closed');
  const sockets = page.sockets.length;
  await gateway.restart();
  await sleep(2000);
  assert.equal(page.sockets.length, sockets, 'no new WebSocket after close()');
  assert.equal(await page.evaluate(() => window.notifier.state), 'closed');
});
