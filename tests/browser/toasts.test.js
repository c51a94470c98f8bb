// The client's toasts in real Chromium against the real gateway: RTL rendering, XSS safety,
// region isolation, stacking, and the screenshots kept in docs/screenshots/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { newPage, notification, fakeThumbnails, toasts, screenshotToast, startGatewayAndBrowser, stopGatewayAndBrowser } from './harness.js';

let gateway;
let browser;

before(async () => {
  ({ gateway, browser } = await startGatewayAndBrowser({ regions: ['AE', 'FI', 'CZ', 'US'] }));
});

after(() => stopGatewayAndBrowser({ gateway, browser }));

/** A page running the client from /client.js for `region`, connected before it returns. */
async function clientPage(region, contextOptions = {}, clientOptions = {}) {
  const page = await newPage(browser, contextOptions);
  await fakeThumbnails(page);
  await page.goto(`${gateway.origin}/healthz`);
  await page.setContent(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>client</title></head>
    <body></body></html>`);
  await page.evaluate(async ({ origin, region, clientOptions }) => {
    const { TrendingNotifier } = await import(`${origin}/client.js`);
    window.received = [];
    window.states = [];
    window.notifier = new TrendingNotifier({
      url: origin.replace(/^http/, 'ws') + '/',
      region,
      onNotification: (n) => window.received.push(n),
      onState: (state) => window.states.push(state),
      ...clientOptions,
    });
  }, { origin: gateway.origin, region, clientOptions });
  await page.waitForFunction(() => window.notifier.state === 'open');
  await gateway.waitForConnections(region, 1);
  return page;
}

test('an Arabic AE notification shows as a right-to-left toast with the exact title', async (t) => {
  const page = await clientPage('AE');
  t.after(() => page.context().close());
  const title = 'أخبار عاجلة من دبي: افتتاح أطول جسر معلق (2025) — بث مباشر';
  const channel = 'قناة الأخبار';
  await gateway.publishOk(notification('AE', title, { channel }));

  const toast = toasts(page).first();
  await toast.waitFor({ timeout: 5000 });
  assert.equal(await toast.getAttribute('dir'), 'rtl');
  assert.equal(await toast.getAttribute('lang'), 'ar');
  assert.equal(await toast.locator('.tvs-toast__title').textContent(), title);
  assert.equal(await toast.locator('.tvs-toast__channel').textContent(), channel);
  assert.equal(await toast.locator('.tvs-toast__label').textContent(), 'Trending in AE');
  // The heading is UI text in the page's language (en), not the video's.
  assert.equal(await toast.locator('.tvs-toast__label').getAttribute('lang'), 'en');
  // The title is isolated so mixed Arabic/Latin/digits text keeps its own direction.
  assert.equal(await toast.locator('.tvs-toast__title bdi').count(), 1);
  // The stack is a polite live region.
  assert.equal(await page.locator('.tvs-toasts').getAttribute('aria-live'), 'polite');
  // In an RTL toast the thumbnail sits on the right of the text.
  const thumb = await toast.locator('.tvs-toast__thumb-box').boundingBox();
  const body = await toast.locator('.tvs-toast__body').boundingBox();
  assert.ok(thumb.x > body.x, 'thumbnail is on the inline-start (right) side');
  assert.equal((await page.evaluate(() => window.received))[0].title, title);
  assert.deepEqual(page.pageErrors, []);
});

test('server strings are shown as text: a title with markup runs no script', async (t) => {
  const page = await clientPage('AE');
  t.after(() => page.context().close());
  const imgTitle = '<img src=x onerror="window.__xss=1">';
  const scriptTitle = '<script>window.__xss=2</script>';
  const channel = '<b onmouseover="window.__xss=3">channel</b>';
  await gateway.publishOk(notification('AE', imgTitle, { channel }));
  await gateway.publishOk(notification('AE', scriptTitle, { channel }));

  await toasts(page, scriptTitle).waitFor({ timeout: 5000 });
  await toasts(page, imgTitle).waitFor({ timeout: 5000 });
  // Give an injected <img src=x> time to fail and fire its handler.
  await sleep(500);
  await page.locator('.tvs-toast__channel').first().hover();

  const titles = await page.locator('.tvs-toast__title').allTextContents();
  assert.ok(titles.includes(imgTitle), `titles: ${JSON.stringify(titles)}`);
  assert.ok(titles.includes(scriptTitle), `titles: ${JSON.stringify(titles)}`);
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await page.locator('.tvs-toast script, .tvs-toast b, .tvs-toast img[src="x"]').count(), 0);
  assert.deepEqual(page.pageErrors, []);
});

test('a thumbnail that is not an http(s) URL is never loaded', async (t) => {
  const page = await clientPage('AE');
  t.after(() => page.context().close());
  // The gateway only forwards http(s) thumbnails, so feed the client directly.
  const result = await page.evaluate(() => {
    const base = { event: 'new_trending', region: 'AE', video_id: 'x', channel: 'c', rtl: true, ts: 1 };
    const js = window.notifier.showToast({ ...base, title: 'js', thumbnail: 'javascript:window.__xss=4' });
    const data = window.notifier.showToast({ ...base, title: 'data', thumbnail: 'data:image/svg+xml,<svg/>' });
    const ok = window.notifier.showToast({ ...base, title: 'ok', thumbnail: 'https://thumbs.invalid/vi/ok.jpg' });
    return [js, data, ok].map((toast) => toast.querySelector('img')?.getAttribute('src') ?? null);
  });
  assert.deepEqual(result, [null, null, 'https://thumbs.invalid/vi/ok.jpg']);
  assert.equal(await page.evaluate(() => window.__xss), undefined);
});

test('an FI notification never reaches an AE page; the next AE one does', async (t) => {
  const page = await clientPage('AE');
  t.after(() => page.context().close());
  const fiTitle = 'Hyvää yötä, Helsinki! Revontulet näkyivät myös etelässä';
  await gateway.publishOk(notification('FI', fiTitle), 0);
  await sleep(1500);
  assert.equal(await page.locator('.tvs-toast').count(), 0, 'no toast for another region');

  const aeTitle = 'مرحبا من أبوظبي';
  await gateway.publishOk(notification('AE', aeTitle));
  await toasts(page, aeTitle).waitFor({ timeout: 5000 });
  await sleep(300);
  const titles = await page.locator('.tvs-toast__title').allTextContents();
  assert.deepEqual(titles, [aeTitle]);
  const received = await page.evaluate(() => window.received.map((n) => n.region));
  assert.deepEqual(received, ['AE']);
});

test('toasts stack newest first, keep at most four, and leave after five seconds', async (t) => {
  const page = await clientPage('CZ');
  t.after(() => page.context().close());
  const titles = ['první č', 'druhý ž', 'třetí š', 'čtvrtý ř', 'pátý ů', 'šestý ě'];
  for (const title of titles) {
    await gateway.publishOk(notification('CZ', title));
  }
  await toasts(page, titles.at(-1)).waitFor({ timeout: 5000 });
  await sleep(600); // the two oldest finish leaving
  const shown = await page.locator('.tvs-toast__title').allTextContents();
  assert.deepEqual(shown, titles.slice(2).reverse());
  assert.equal(await toasts(page, titles.at(-1)).getAttribute('dir'), 'ltr');
  assert.equal(await toasts(page, titles.at(-1)).getAttribute('lang'), null);

  const started = Date.now();
  await page.waitForFunction(() => document.querySelectorAll('.tvs-toast').length === 0, null, { timeout: 8000 });
  const gone = Date.now() - started + 600;
  assert.ok(gone >= 4000 && gone <= 7500, `toasts left after ~${gone} ms`);
});

test('reduced motion turns the toast animation off', async (t) => {
  const page = await clientPage('US', { reducedMotion: 'reduce' });
  t.after(() => page.context().close());
  await gateway.publishOk(notification('US', 'Calm toast'));
  const toast = toasts(page, 'Calm toast');
  await toast.waitFor({ timeout: 5000 });
  assert.equal(await toast.evaluate((el) => getComputedStyle(el).animationName), 'none');
  await toast.locator('.tvs-toast__close').click();
  // With reduced motion the dismissed toast goes at once.
  assert.equal(await page.locator('.tvs-toast').count(), 0);
});

test('screenshots: LTR and RTL toasts, light and dark', async () => {
  const samples = [
    { name: 'toast-rtl', region: 'AE', title: 'أخبار عاجلة من دبي: افتتاح أطول جسر معلق في المنطقة', channel: 'قناة الأخبار' },
    { name: 'toast-ltr', region: 'CZ', title: 'Žluťoučký kůň úpěl ďábelské ódy — čeština v šesti minutách', channel: 'Česká škola' },
  ];
  for (const colorScheme of ['light', 'dark']) {
    for (const sample of samples) {
      const page = await clientPage(sample.region, {
        colorScheme,
        reducedMotion: 'reduce',
        deviceScaleFactor: 2,
        viewport: { width: 520, height: 320 },
      }, { toastMs: 60000, status: false });
      await page.evaluate((scheme) => {
        document.body.style.background = scheme === 'dark' ? '#121418' : '#f5f6f8';
        document.body.style.color = scheme === 'dark' ? '#eceef2' : '#16181d';
      }, colorScheme);
      await gateway.publishOk(notification(sample.region, sample.title, {
        channel: sample.channel,
        thumbnail: `https://thumbs.invalid/vi/${sample.region}/hqdefault.jpg`,
      }));
      const toast = toasts(page, sample.title);
      await toast.waitFor({ timeout: 5000 });
      await page.waitForFunction(() => {
        const img = document.querySelector('.tvs-toast__thumb');
        return img && img.complete && img.naturalWidth > 0;
      });
      const suffix = colorScheme === 'light' ? '' : '-dark';
      await screenshotToast(page, toast, `${sample.name}${suffix}`, { copyToDocs: true });
      await page.context().close();
        }
  }
});
