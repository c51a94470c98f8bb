// Compatibility: a browser client written exactly the seed's way (plain WebSocket, JSON.parse,
// data.event / data.title) keeps working against the gateway, with Unicode intact.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newPage, startGatewayAndBrowser, stopGatewayAndBrowser } from './harness.js';

let gateway;
let browser;

before(async () => {
  ({ gateway, browser } = await startGatewayAndBrowser({ regions: ['AE', 'FI'] }));
});

after(() => stopGatewayAndBrowser({ gateway, browser }));

test('a seed-style client receives the seed payload unchanged', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  // A plain page (about:blank origin) with the seed's client code, pointed at the gateway.
  await page.setContent(`<!doctype html><meta charset="utf-8"><title>seed client</title>
    <script>
      window.received = [];
      window.raw = [];
      const ws = new WebSocket(${JSON.stringify(`${gateway.wsOrigin}/?region=AE`)});
      ws.onopen = () => { window.opened = true; };
      ws.onmessage = (e) => {
        window.raw.push(e.data);
        const data = JSON.parse(e.data);
        if (data.event === 'new_trending') window.received.push({ event: data.event, title: data.title, data });
      };
    </script>`);
  await page.waitForFunction(() => window.opened === true);
  await gateway.waitForConnections('AE', 1);

  // Exactly the seed PHP publisher's payload shape, with Arabic, an emoji and Czech diacritics.
  const payload = {
    event: 'new_trending',
    region: 'AE',
    video_id: 'dQw4w9WgXcQ',
    title: 'أخبار عاجلة من دبي 🎬 — Žluťoučký kůň, Hyvää päivää',
    thumbnail: 'https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg',
    channel: 'قناة الأخبار',
    rtl: true,
    ts: 1764290000,
  };
  await gateway.publishOk(payload);
  await page.waitForFunction(() => window.received.length === 1, null, { timeout: 5000 });

  const [message] = await page.evaluate(() => window.received);
  assert.equal(message.event, 'new_trending');
  assert.equal(message.title, payload.title);
  // Every seed field arrives unchanged; the only addition allowed is the history `id`.
  const { id, ...seedFields } = message.data;
  assert.deepEqual(seedFields, payload);
  if (id !== undefined) assert.match(id, /^\d+-\d+$/);
  const [raw] = await page.evaluate(() => window.raw);
  // UTF-8 on the wire, not \\u escapes (the seed's JSON_UNESCAPED_UNICODE / ensure_ascii=False).
  assert.ok(raw.includes('أخبار عاجلة من دبي 🎬'), raw);
  assert.ok(!raw.includes('\\u'), raw);
  assert.deepEqual(page.pageErrors, []);
});
