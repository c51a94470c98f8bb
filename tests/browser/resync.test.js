// The client's resume protocol (`since`, `resync`, unknown events, replayed ids) against a small
// scripted WebSocket server, because the gateway only starts sending `resync` once it keeps
// history. The server is real (HTTP upgrade + RFC 6455 frames on loopback); only its script is fixed.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { repoRoot, launchBrowser, newPage, fakeThumbnails } from './harness.js';

const clientJs = readFileSync(path.join(repoRoot, 'crates', 'notify-gateway', 'assets', 'client.js'));

function textFrame(text) {
  const payload = Buffer.from(text, 'utf8');
  const header = payload.length < 126
    ? Buffer.from([0x81, payload.length])
    : Buffer.from([0x81, 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([header, payload]);
}

let server;
let origin;
let browser;
const connections = [];
// What the server sends on the n-th connection, then it closes that connection.
const scripts = [];

before(async () => {
  server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': req.url === '/client.js' ? 'text/javascript' : 'text/html' });
    res.end(req.url === '/client.js' ? clientJs : '<!doctype html><meta charset="utf-8"><title>resync</title>');
  });
  server.on('upgrade', (req, socket) => {
    const accept = createHash('sha1')
      .update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    connections.push(req.url);
    const script = scripts[connections.length - 1] || [];
    for (const message of script) socket.write(textFrame(JSON.stringify(message)));
    if (connections.length < scripts.length) {
      socket.end(Buffer.from([0x88, 0x02, 0x03, 0xe9])); // close 1001 "going away"
    }
    socket.on('error', () => {});
    socket.on('data', () => {});
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.closeAllConnections?.();
  await new Promise((resolve) => server.close(resolve));
});

test('resume: since on reconnect, resync adopts latest, replays and unknown events are skipped', async (t) => {
  const note = (id, title) => ({
    event: 'new_trending', region: 'AE', video_id: `v${id}`, title, thumbnail: 'https://thumbs.invalid/vi/x.jpg',
    channel: 'c', rtl: true, ts: 1700000000, id,
  });
  scripts.push(
    [{ event: 'hello_from_the_future', region: 'AE' }, note('5-0', 'first'), note('5-0', 'first')],
    [note('5-0', 'first'), { event: 'resync', region: 'AE', since: '5-0', latest: '9-0', reason: 'since is older than the retained history' }],
    [note('10-0', 'after resync')],
  );
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await fakeThumbnails(page);
  await page.goto(origin);
  await page.evaluate(async () => {
    const { TrendingNotifier } = await import('/client.js');
    window.received = [];
    window.resyncs = [];
    window.notifier = new TrendingNotifier({
      region: 'ae',
      backoffMs: 50,
      onNotification: (n) => window.received.push(n.title),
      onResync: (m) => window.resyncs.push(m),
    });
  });
  await page.waitForFunction(() => window.received.length === 2, null, { timeout: 10000 });
  assert.deepEqual(await page.evaluate(() => window.received), ['first', 'after resync']);
  const resyncs = await page.evaluate(() => window.resyncs);
  assert.equal(resyncs.length, 1);
  assert.equal(resyncs[0].latest, '9-0');
  assert.equal(await page.evaluate(() => window.notifier.lastId), '10-0');
  const params = connections.map((url) => Object.fromEntries(new URL(url, origin).searchParams));
  assert.deepEqual(params, [
    { region: 'AE' },
    { region: 'AE', since: '5-0' },
    { region: 'AE', since: '9-0' },
  ]);
  assert.equal(await page.locator('.tvs-toast').count(), 2);
  assert.deepEqual(page.pageErrors, []);
  await page.evaluate(() => window.notifier.close());
});
