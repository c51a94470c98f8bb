// Several regions on one connection in real Chromium: `region: ["AE", "FI"]` shows toasts from
// both regions, and after a gateway restart (history in Redis) the client resumes each region
// after its own last id — over WebSocket with `since=AE:<id>,FI:<id>`, over SSE with the
// browser's own Last-Event-ID carrying both positions — nothing lost or shown twice.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Gateway, RedisServer, runPublish, launchBrowser, newPage, notification, fakeThumbnails, toasts,
} from './harness.js';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(() => browser?.close());

// Starts the client in the page with `options`, logging every notification on `window`.
function startClient(options) {
  return import('/client.js').then(({ TrendingNotifier }) => {
    window.received = [];
    window.notifier = new TrendingNotifier({
      backoffMs: 100,
      maxBackoffMs: 500,
      maxToasts: 20,
      toastMs: 120000,
      ...options,
      onNotification: (n) => window.received.push({ region: n.region, title: n.title, id: n.id ?? null }),
    });
  });
}

/** Publishes with the CLI straight to Redis (the gateway is down); returns the id. */
async function publishToRedis(redis, region, index, title) {
  const result = await runPublish([
    '--redis-url', redis.url, '--region', region, '--video-id', `missed-${region}-${index}`,
    '--title', title, '--thumbnail', `https://thumbs.invalid/vi/missed${index}/hqdefault.jpg`,
    '--channel', 'channel', '--output', 'json',
  ]);
  assert.equal(result.code, 0, `notify-publish failed: ${result.stderr}`);
  return JSON.parse(result.stdout.trim().split('\n')[0]).id;
}

function duplicates(values) {
  return values.filter((value, index) => values.indexOf(value) !== index);
}

/** Toasts from both regions, a gateway restart with both regions published to meanwhile, the
 * resume of each, then live again; returns the page for transport-specific checks. */
async function bothRegionsThroughARestart(t, transport) {
  const redis = await RedisServer.start();
  t.after(() => redis.stop());
  const gateway = await Gateway.start({ regions: ['AE', 'FI', 'CZ'], args: ['--redis-url', redis.url] });
  t.after(() => gateway.stop());
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await fakeThumbnails(page);
  await page.goto(`${gateway.origin}/healthz`);
  await page.evaluate(startClient, { region: ['AE', 'FI'], transport });
  await page.waitForFunction(() => window.notifier.state === 'open', null, { timeout: 10000 });
  await gateway.waitForConnections('AE', 1);
  await gateway.waitForConnections('FI', 1);
  assert.equal(await page.evaluate(() => window.notifier.region), 'AE,FI');

  const ae = await gateway.publishOk(notification('AE', 'أخبار الإمارات'));
  const fi = await gateway.publishOk(notification('FI', 'Suomen uutiset'));
  await gateway.publish(notification('CZ', 'České zprávy'));
  await toasts(page, 'أخبار الإمارات').waitFor({ timeout: 5000 });
  await toasts(page, 'Suomen uutiset').waitFor({ timeout: 5000 });
  assert.deepEqual(await page.evaluate(() => window.notifier.lastIds), { AE: ae.id, FI: fi.id });

  await gateway.kill();
  const missed = [];
  for (const [index, region] of ['FI', 'AE', 'FI', 'AE'].entries()) {
    const title = `missed ${region} ${index}`;
    missed.push({ region, title, id: await publishToRedis(redis, region, index, title) });
  }
  missed.push({ region: 'CZ', title: 'missed CZ', id: await publishToRedis(redis, 'CZ', 9, 'missed CZ') });
  await gateway.spawn();
  await page.waitForFunction((count) => window.received.length >= count, 6, { timeout: 20000 });
  await gateway.waitForConnections('AE', 1);
  const live = await gateway.publishOk(notification('FI', 'live FI ✓'));
  await toasts(page, 'live FI ✓').waitFor({ timeout: 5000 });

  const received = await page.evaluate(() => window.received);
  const expected = [
    { region: 'AE', title: 'أخبار الإمارات', id: ae.id },
    { region: 'FI', title: 'Suomen uutiset', id: fi.id },
    ...missed.filter((n) => n.region !== 'CZ'),
    { region: 'FI', title: 'live FI ✓', id: live.id },
  ];
  for (const region of ['AE', 'FI']) {
    assert.deepEqual(
      received.filter((n) => n.region === region),
      expected.filter((n) => n.region === region),
      `${transport}: every ${region} notification once, in order`,
    );
  }
  assert.deepEqual(received.filter((n) => n.region === 'CZ'), [], 'nothing of a region not asked');
  assert.deepEqual(duplicates(received.map((n) => `${n.region}:${n.id}`)), []);
  const metrics = await (await fetch(`${gateway.origin}/metrics`)).text();
  const resumes = (source) => Number(
    new RegExp(`^notify_resumes_total\\{source="${source}"\\} (\\d+)`, 'm').exec(metrics)?.[1] ?? 0);
  assert.equal(resumes('stream') + resumes('memory'), 2, `one resume per region:\n${metrics.match(/^notify_resumes.*$/gm)}`);
  assert.equal(resumes('resync'), 0);
  assert.deepEqual(page.pageErrors, []);
  console.log(`# ${transport} with two regions: shown ${received.length}, duplicates 0, `
    + `resumes stream ${resumes('stream')} memory ${resumes('memory')}`);
  return { page, ae, fi };
}

test('WebSocket, two regions: toasts from both, and a restart resumes each after its own id', async (t) => {
  const { page, ae, fi } = await bothRegionsThroughARestart(t, 'websocket');
  const reconnectUrls = page.sockets.slice(1).map((url) => new URL(url).searchParams);
  assert.ok(reconnectUrls.length >= 1, 'the page opened a new socket');
  assert.equal(reconnectUrls[0].get('region'), 'AE,FI');
  assert.equal(reconnectUrls[0].get('since'), `AE:${ae.id},FI:${fi.id}`);
  await page.evaluate(() => window.notifier.close());
});

test('SSE, two regions: toasts from both, and a restart resumes both from Last-Event-ID', async (t) => {
  const { page } = await bothRegionsThroughARestart(t, 'sse');
  assert.equal(await page.evaluate(() => window.notifier.transport), 'sse');
  await page.evaluate(() => window.notifier.close());
});
