// Resume against the real gateway, in Chromium: what a page missed while its gateway was down
// is shown once it comes back (Redis keeps the history), and when no history survived (the
// embedded broker restarted) the page is told with the gateway's own `resync` message. The page
// is a minimal one (the gateway's /healthz) that imports the gateway's /client.js and logs every
// callback on `window`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Gateway, RedisServer, runPublish, launchBrowser, newPage, notification, fakeThumbnails, toasts,
} from './harness.js';

// Starts the client in the page, logging every callback on `window`. The page must be one the
// gateway served (Chromium's local-network checks block a loopback WebSocket from a page that
// did not come from loopback).
function startClient(region) {
  return import('/client.js').then(({ TrendingNotifier }) => {
    window.received = [];
    window.resyncs = [];
    window.states = [];
    window.notifier = new TrendingNotifier({
      region,
      backoffMs: 100,
      maxBackoffMs: 500,
      maxToasts: 10,
      toastMs: 120000,
      onNotification: (n) => window.received.push({ title: n.title, id: n.id ?? null, video_id: n.video_id }),
      onResync: (message) => window.resyncs.push(message),
      onState: (state) => window.states.push(state),
    });
  });
}

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** A minimal page from `gateway` (its plain-text /healthz) running the client from its /client.js. */
async function openPage(t, gateway, region) {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await fakeThumbnails(page);
  await page.goto(`${gateway.origin}/healthz`);
  await page.evaluate(startClient, region);
  await page.waitForFunction(() => window.notifier?.state === 'open', null, { timeout: 10000 });
  await gateway.waitForConnections(region, 1);
  return page;
}

/** Titles of the visible toasts, oldest first (the client puts the newest on top). */
async function toastTitles(page) {
  const titles = await toasts(page).locator('.tvs-toast__title').allTextContents();
  return titles.reverse();
}

function duplicates(values) {
  return values.filter((value, index) => values.indexOf(value) !== index);
}

test('with Redis: notifications published while the gateway was down are shown after it restarts, once each, in order', async (t) => {
  const redis = await RedisServer.start();
  t.after(() => redis.stop());
  const gateway = await Gateway.start({ regions: ['AE', 'FI'], args: ['--redis-url', redis.url] });
  t.after(() => gateway.stop());
  const info = await (await fetch(`${gateway.origin}/api/info`)).json();
  assert.equal(info.broker, 'redis');

  const page = await openPage(t, gateway, 'AE');

  const firstTitle = 'قبل الانقطاع';
  const reply = await gateway.publishOk(notification('AE', firstTitle));
  assert.match(String(reply.id), /^\d+-\d+$/, `POST /api/publish returned a history id: ${JSON.stringify(reply)}`);
  const firstId = reply.id;
  await toasts(page, firstTitle).waitFor({ timeout: 5000 });
  assert.equal(await page.evaluate(() => window.notifier.lastId), firstId);

  const socketsBefore = page.sockets.length;
  await gateway.kill();
  await page.waitForFunction(() => window.notifier.state === 'reconnecting', null, { timeout: 5000 });

  // Published straight to Redis by the real CLI while no gateway is running.
  const missed = ['فاتك ١', 'فاتك ٢', 'فاتك ٣'];
  const missedIds = [];
  for (const [index, title] of missed.entries()) {
    const result = await runPublish([
      '--redis-url', redis.url, '--region', 'AE', '--video-id', `missed${index + 1}`,
      '--title', title, '--thumbnail', `https://thumbs.invalid/vi/missed${index + 1}/hqdefault.jpg`,
      '--channel', 'قناة الاختبار', '--output', 'json',
    ]);
    assert.equal(result.code, 0, `notify-publish failed: ${result.stderr}`);
    const line = JSON.parse(result.stdout.trim().split('\n')[0]);
    assert.equal(line.gateway_nodes_reached, 0, 'no gateway is subscribed while it is down');
    missedIds.push(line.id);
  }
  assert.equal(await redis.command('XLEN tvs:AE:stream'), ':4');
  // Nothing can arrive while the gateway is down.
  assert.deepEqual((await page.evaluate(() => window.received)).map((n) => n.title), [firstTitle]);

  await gateway.spawn();
  await page.waitForFunction((count) => window.received.length >= count, 4, { timeout: 20000 });
  await gateway.waitForConnections('AE', 1);

  const liveTitle = 'مباشر بعد العودة ✓';
  const liveReply = await gateway.publishOk(notification('AE', liveTitle));
  await page.waitForFunction((count) => window.received.length >= count, 5, { timeout: 5000 });
  await toasts(page, liveTitle).waitFor({ timeout: 5000 });

  const received = await page.evaluate(() => window.received);
  const expectedTitles = [firstTitle, ...missed, liveTitle];
  assert.deepEqual(received.map((n) => n.title), expectedTitles);
  assert.deepEqual(received.map((n) => n.id), [firstId, ...missedIds, liveReply.id]);
  assert.deepEqual(received.slice(1, 4).map((n) => n.video_id), ['missed1', 'missed2', 'missed3']);
  assert.deepEqual(duplicates(received.map((n) => n.id)), []);
  assert.deepEqual(await page.evaluate(() => window.resyncs), [], 'Redis kept the history: no resync');
  assert.deepEqual(await toastTitles(page), expectedTitles, 'one toast per notification, in order');

  // Every connection attempt after the crash resumed from the only id the page had seen;
  // the last one is the one that got through.
  const resumed = page.sockets.slice(socketsBefore);
  assert.ok(resumed.length >= 1, 'the page opened a new socket');
  for (const url of resumed) {
    const params = new URL(url).searchParams;
    assert.equal(params.get('region'), 'AE');
    assert.equal(params.get('since'), firstId, `reconnect URL ${url} resumes after the first message`);
  }
  assert.equal(await page.evaluate(() => window.notifier.lastId), liveReply.id);
  assert.deepEqual(page.pageErrors, []);
  console.log(`# redis resume: published ${expectedTitles.length}, shown ${received.length} `
    + `(toasts ${(await toastTitles(page)).length}), duplicates ${duplicates(received.map((n) => n.id)).length}, `
    + `connection attempts while down/after restart ${resumed.length}`);
  await page.evaluate(() => window.notifier.close());
});

test('embedded broker: after a gateway restart the client gets the real resync, then live notifications', async (t) => {
  const gateway = await Gateway.start({ regions: ['AE', 'FI'] });
  t.after(() => gateway.stop());
  const info = await (await fetch(`${gateway.origin}/api/info`)).json();
  assert.equal(info.broker, 'embedded');

  const page = await openPage(t, gateway, 'FI');
  const firstTitle = 'Ennen uudelleenkäynnistystä';
  const reply = await gateway.publishOk(notification('FI', firstTitle));
  assert.match(String(reply.id), /^\d+-\d+$/, `POST /api/publish returned a history id: ${JSON.stringify(reply)}`);
  const firstId = reply.id;
  await toasts(page, firstTitle).waitFor({ timeout: 5000 });

  const socketsBefore = page.sockets.length;
  await gateway.restart();
  await page.waitForFunction(() => window.resyncs.length >= 1, null, { timeout: 20000 });
  await page.waitForFunction(() => window.notifier.state === 'open', null, { timeout: 5000 });
  await gateway.waitForConnections('FI', 1);

  const resyncs = await page.evaluate(() => window.resyncs);
  assert.equal(resyncs.length, 1, `one resync: ${JSON.stringify(resyncs)}`);
  const [resync] = resyncs;
  assert.equal(resync.event, 'resync');
  assert.equal(resync.region, 'FI');
  assert.equal(resync.since, firstId);
  assert.equal(typeof resync.reason, 'string');
  assert.ok(resync.reason.length > 0, 'the resync says why');
  // The restarted embedded broker has no history yet, so there is no `latest` to continue from
  // (notify-proto leaves the field out when it is None); the client keeps its id until the
  // next live message.
  assert.ok(resync.latest === undefined || /^\d+-\d+$/.test(resync.latest), `latest: ${JSON.stringify(resync)}`);
  const connected = page.sockets.slice(socketsBefore);
  assert.ok(connected.length >= 1);
  for (const url of connected) assert.equal(new URL(url).searchParams.get('since'), firstId);

  const liveTitle = 'Uudelleenkäynnistyksen jälkeen ✓';
  const liveReply = await gateway.publishOk(notification('FI', liveTitle));
  await toasts(page, liveTitle).waitFor({ timeout: 5000 });
  const received = await page.evaluate(() => window.received);
  assert.deepEqual(received.map((n) => n.title), [firstTitle, liveTitle]);
  assert.deepEqual(received.map((n) => n.id), [firstId, liveReply.id]);
  assert.deepEqual(await toastTitles(page), [firstTitle, liveTitle]);
  assert.equal(await page.evaluate(() => window.notifier.lastId), liveReply.id);
  assert.deepEqual(page.pageErrors, []);
  console.log(`# embedded resync: since ${resync.since}, latest ${JSON.stringify(resync.latest)}, `
    + `reason ${JSON.stringify(resync.reason)}; published 2, shown ${received.length}, `
    + `duplicates ${duplicates(received.map((n) => n.id)).length}`);
  await page.evaluate(() => window.notifier.close());
});
