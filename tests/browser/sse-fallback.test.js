// The browser client without WebSocket: behind a proxy that refuses `Upgrade` (as some
// corporate proxies and middleboxes do) `transport: "auto"` falls back to Server-Sent Events by
// itself and the toast still arrives; with `transport: "sse"` a gateway restart is bridged by
// the browser's own `Last-Event-ID` reconnect, nothing lost or shown twice. Real gateway, real
// Chromium, a real TCP proxy.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  Gateway, RedisServer, runPublish, launchBrowser, newPage, notification, fakeThumbnails, toasts,
} from './harness.js';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/**
 * A TCP proxy to `target` that answers every WebSocket upgrade with 403 and closes, and passes
 * every other connection through untouched. Returns `{ origin, upgradesRefused, close() }`.
 */
async function upgradeRefusingProxy(target) {
  const stats = { upgradesRefused: 0, passed: 0 };
  const sockets = new Set();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      if (!head.includes('\r\n\r\n')) return;
      client.off('data', onData);
      if (/^upgrade:\s*websocket/im.test(head.toString('latin1'))) {
        stats.upgradesRefused += 1;
        client.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        return;
      }
      stats.passed += 1;
      const upstream = net.connect(target.port, '127.0.0.1', () => {
        upstream.write(head);
        client.pipe(upstream);
        upstream.pipe(client);
      });
      sockets.add(upstream);
      upstream.on('close', () => { sockets.delete(upstream); client.destroy(); });
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
    };
    client.on('data', onData);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    stats,
    close: () => new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(resolve);
    }),
  };
}

// Starts the client in the page with `options`, logging every callback on `window`.
function startClient(options) {
  return import('/client.js').then(({ TrendingNotifier }) => {
    window.received = [];
    window.states = [];
    window.notifier = new TrendingNotifier({
      backoffMs: 100,
      maxBackoffMs: 500,
      maxToasts: 10,
      toastMs: 120000,
      ...options,
      onNotification: (n) => {
        if (window.received.length === 0) window.firstToastAt = performance.now();
        window.received.push({ title: n.title, id: n.id ?? null });
      },
      onState: (state, detail) => window.states.push({ state, transport: detail.transport ?? null }),
    });
  });
}

function duplicates(values) {
  return values.filter((value, index) => values.indexOf(value) !== index);
}

test('WebSocket refused by a proxy: "auto" falls back to SSE and the toast arrives', async (t) => {
  const gateway = await Gateway.start({ regions: ['AE', 'FI'] });
  t.after(() => gateway.stop());
  const proxy = await upgradeRefusingProxy(gateway);
  t.after(() => proxy.close());

  const page = await newPage(browser);
  t.after(() => page.context().close());
  await fakeThumbnails(page);
  await page.goto(`${proxy.origin}/healthz`);
  const loadedAt = await page.evaluate(() => performance.now());
  await page.evaluate(startClient, { region: 'AE' });
  await page.waitForFunction(() => window.notifier.state === 'open', null, { timeout: 15000 });
  const openedAt = await page.evaluate(() => performance.now());
  assert.equal(await page.evaluate(() => window.notifier.transport), 'sse');
  assert.ok(proxy.stats.upgradesRefused >= 2, `upgrades refused: ${proxy.stats.upgradesRefused}`);
  await gateway.waitForConnections('AE', 1);

  const title = 'وصل عبر SSE ✓';
  const reply = await gateway.publishOk(notification('AE', title));
  await toasts(page, title).waitFor({ timeout: 5000 });
  const firstToastAt = await page.evaluate(() => window.firstToastAt);
  assert.deepEqual(await page.evaluate(() => window.received), [{ title, id: reply.id }]);
  assert.equal(await page.evaluate(() => window.notifier.lastId), reply.id);
  const states = await page.evaluate(() => window.states);
  assert.ok(
    states.some((s) => s.transport === 'websocket') && states.at(-1).transport === 'sse',
    `tried WebSocket, then SSE: ${JSON.stringify(states)}`,
  );
  assert.deepEqual(page.pageErrors, []);
  console.log(`# fallback: ${proxy.stats.upgradesRefused} upgrades refused; page load → SSE open `
    + `${Math.round(openedAt - loadedAt)} ms, → first toast ${Math.round(firstToastAt - loadedAt)} ms `
    + '(includes the publish)');
  await page.evaluate(() => window.notifier.close());
});

test('"websocket" never falls back; "auto" through no proxy stays on WebSocket', async (t) => {
  const gateway = await Gateway.start({ regions: ['AE', 'FI'] });
  t.after(() => gateway.stop());
  const proxy = await upgradeRefusingProxy(gateway);
  t.after(() => proxy.close());

  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${proxy.origin}/healthz`);
  await page.evaluate(startClient, { region: 'AE', transport: 'websocket' });
  await page.waitForFunction(() => window.states.filter((s) => s.state === 'reconnecting').length >= 4, null, { timeout: 15000 });
  assert.equal(await page.evaluate(() => window.notifier.transport), 'websocket');
  assert.notEqual(await page.evaluate(() => window.notifier.state), 'open');
  await page.evaluate(() => window.notifier.close());

  const direct = await newPage(browser);
  t.after(() => direct.context().close());
  await direct.goto(`${gateway.origin}/healthz`);
  await direct.evaluate(startClient, { region: 'FI' });
  await direct.waitForFunction(() => window.notifier.state === 'open', null, { timeout: 10000 });
  assert.equal(await direct.evaluate(() => window.notifier.transport), 'websocket');
  assert.equal(direct.sockets.length, 1, 'one WebSocket, no fallback');
  await direct.evaluate(() => window.notifier.close());
});

test('SSE: after a gateway restart the browser resumes with Last-Event-ID, nothing lost or twice', async (t) => {
  const redis = await RedisServer.start();
  t.after(() => redis.stop());
  const gateway = await Gateway.start({ regions: ['AE', 'FI'], args: ['--redis-url', redis.url] });
  t.after(() => gateway.stop());

  const page = await newPage(browser);
  t.after(() => page.context().close());
  await fakeThumbnails(page);
  const eventRequests = [];
  page.on('request', (request) => {
    if (new URL(request.url()).pathname === '/events') {
      // allHeaders(): with the headers the network stack adds, Last-Event-ID among them.
      eventRequests.push(request.allHeaders().then((headers) => (
        { url: request.url(), lastEventId: headers['last-event-id'] ?? null })));
    }
  });
  await page.goto(`${gateway.origin}/healthz`);
  await page.evaluate(startClient, { region: 'AE', transport: 'sse' });
  await page.waitForFunction(() => window.notifier.state === 'open', null, { timeout: 10000 });
  await gateway.waitForConnections('AE', 1);

  const firstTitle = 'قبل الانقطاع';
  const first = await gateway.publishOk(notification('AE', firstTitle));
  await toasts(page, firstTitle).waitFor({ timeout: 5000 });

  await gateway.kill();
  const missed = ['فاتك ١', 'فاتك ٢', 'فاتك ٣'];
  const missedIds = [];
  for (const [index, title] of missed.entries()) {
    const result = await runPublish([
      '--redis-url', redis.url, '--region', 'AE', '--video-id', `missed${index + 1}`,
      '--title', title, '--thumbnail', `https://thumbs.invalid/vi/missed${index + 1}/hqdefault.jpg`,
      '--channel', 'قناة الاختبار', '--output', 'json',
    ]);
    assert.equal(result.code, 0, `notify-publish failed: ${result.stderr}`);
    missedIds.push(JSON.parse(result.stdout.trim().split('\n')[0]).id);
  }
  const requestsBefore = eventRequests.length;
  await gateway.spawn();
  await page.waitForFunction((count) => window.received.length >= count, 4, { timeout: 20000 });
  await gateway.waitForConnections('AE', 1);
  const liveTitle = 'مباشر بعد العودة ✓';
  const live = await gateway.publishOk(notification('AE', liveTitle));
  await toasts(page, liveTitle).waitFor({ timeout: 5000 });

  const received = await page.evaluate(() => window.received);
  assert.deepEqual(received.map((n) => n.title), [firstTitle, ...missed, liveTitle]);
  assert.deepEqual(received.map((n) => n.id), [first.id, ...missedIds, live.id]);
  assert.deepEqual(duplicates(received.map((n) => n.id)), []);
  const reconnects = await Promise.all(eventRequests.slice(requestsBefore));
  assert.ok(reconnects.length >= 1, 'the stream was reopened');
  // The restarted gateway resumed the stream from the id the browser sent (Playwright does not
  // show the Last-Event-ID header EventSource adds, so the gateway's count is the witness).
  const metrics = await (await fetch(`${gateway.origin}/metrics`)).text();
  const resumes = (source) => Number(
    new RegExp(`^notify_resumes_total\\{source="${source}"\\} (\\d+)`, 'm').exec(metrics)?.[1] ?? 0);
  assert.equal(resumes('stream') + resumes('memory'), 1, `one resume:\n${metrics.match(/^notify_resumes.*$/gm)}`);
  assert.equal(resumes('resync'), 0);
  assert.deepEqual(page.pageErrors, []);
  console.log(`# SSE restart: ${reconnects.length} reconnect request(s) seen, resumed by the gateway `
    + `(stream ${resumes('stream')}, memory ${resumes('memory')}); shown ${received.length}, duplicates 0`);
  await page.evaluate(() => window.notifier.close());
});
