// The browser client through a real load balancer: HAProxy with the shipped
// deploy/haproxy/haproxy.cfg in front of three gateways sharing one Redis. A rolling restart of
// all three (SIGTERM: each fails /readyz, leaves rotation, closes with 1001, comes back on its
// port) while notifications are published: the page gets every one, once, in order, and ends
// connected.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Gateway, HaProxy, RedisServer, launchBrowser, newPage, notification } from './harness.js';

const REGION = 'FI';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

// Starts the real client in the page, logging every notification and state on `window`.
function startClient(region) {
  return import('/client.js').then(({ TrendingNotifier }) => {
    window.received = [];
    window.resyncs = [];
    window.states = [];
    window.notifier = new TrendingNotifier({
      region,
      toasts: false,
      status: false,
      onNotification: (n) => window.received.push({ title: n.title, id: n.id ?? null }),
      onResync: (message) => window.resyncs.push(message),
      // A close reports its code; the attempt that follows reports none.
      onState: (state, detail) => window.states.push({ state, closed: detail !== undefined && 'code' in detail, code: detail?.code }),
    });
  });
}

test('the browser client keeps receiving through HAProxy across a rolling restart: every message once, in order', async (t) => {
  const redis = await RedisServer.start();
  t.after(() => redis.stop());
  const args = [
    '--redis-url', redis.url,
    '--trusted-proxies', '127.0.0.1/32',
    '--drain-delay', '2s',
    '--drain-timeout', '5s',
  ];
  const gateways = [];
  for (let index = 0; index < 3; index += 1) {
    const gateway = await Gateway.start({ regions: ['AE', REGION], args });
    t.after(() => gateway.stop());
    gateways.push(gateway);
  }
  const proxy = await HaProxy.start(gateways);
  t.after(() => proxy.stop());
  const names = ['gateway1', 'gateway2', 'gateway3'];
  for (const name of names) await proxy.waitStatus(name, 'UP');

  // The page and its WebSocket both go through HAProxy.
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${proxy.origin}/healthz`);
  await page.evaluate(startClient, REGION);
  await page.waitForFunction(() => window.notifier?.state === 'open', null, { timeout: 10000 });

  // Publish continuously through whichever gateway is not being restarted.
  let restarting = -1;
  let publishing = true;
  const titles = [];
  const publisher = (async () => {
    for (let n = 0; publishing && n < 1000; n += 1) {
      const title = `rolling ${n}`;
      const via = gateways[(restarting + 1 + 3) % 3];
      await via.publishOk(notification(REGION, title), 0);
      titles.push(title);
      await sleep(100);
    }
  })();
  await page.waitForFunction(() => window.received.length >= 3, null, { timeout: 10000 });

  for (const [index, name] of names.entries()) {
    restarting = index;
    await sleep(150);
    await gateways[index].stop();
    await gateways[index].spawn();
    await proxy.waitStatus(name, 'UP');
  }
  restarting = -1;
  await sleep(1000);
  publishing = false;
  await publisher;

  await page.waitForFunction((count) => window.received.length >= count, titles.length, { timeout: 15000 })
    .catch(() => {});
  const received = await page.evaluate(() => window.received.map((n) => n.title));
  const states = await page.evaluate(() => window.states);
  console.log(`# ${titles.length} published, ${received.length} received; states ${JSON.stringify(states.map((s) => s.state))}`);
  assert.deepEqual(received, titles, 'every notification once, in order');
  assert.deepEqual(await page.evaluate(() => window.resyncs), []);
  // Every close was a draining gateway's 1001: no attempt through HAProxy failed (a refused or
  // reset connection would close with 1006).
  const closes = states.filter((s) => s.closed);
  assert.ok(closes.length >= 1, 'the page was moved at least once');
  assert.ok(closes.every((s) => s.code === 1001), `closed only with 1001: ${JSON.stringify(closes)}`);
  assert.equal(await page.evaluate(() => window.notifier.state), 'open', 'ends connected');
  assert.deepEqual(page.pageErrors, []);
});
