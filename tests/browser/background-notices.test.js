// Background notices (opt-in `backgroundNotices`): while the page is hidden and notification
// permission is granted, a notification becomes a system notification instead of a toast; with
// permission denied, or with the page visible, it stays a toast. Real Chromium, real gateway;
// the page's Notification constructor is wrapped (not replaced) to record what it shows.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Gateway, launchBrowser, newPage, notification, fakeThumbnails, toasts } from './harness.js';

let browser;
let gateway;

before(async () => {
  browser = await launchBrowser();
  gateway = await Gateway.start({ regions: ['AE', 'FI'] });
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
});

function startClient(region) {
  return import('/client.js').then(({ TrendingNotifier }) => {
    window.notices = [];
    const Real = window.Notification;
    window.Notification = class RecordedNotification extends Real {
      constructor(title, options) {
        super(title, options);
        window.notices.push({ title, body: options.body, tag: options.tag, dir: options.dir, lang: options.lang });
      }
    };
    window.setHidden = (hidden) => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
      document.dispatchEvent(new Event('visibilitychange'));
    };
    window.notifier = new TrendingNotifier({ region, backgroundNotices: true, toastMs: 120000 });
  });
}

async function openPage(t, setting) {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await fakeThumbnails(page);
  // Chromium's own permission store, for this page's context: "granted" or "denied".
  const { targetInfo } = await (await page.context().newCDPSession(page)).send('Target.getTargetInfo');
  const cdp = await browser.newBrowserCDPSession();
  await cdp.send('Browser.setPermission', {
    permission: { name: 'notifications' },
    setting,
    origin: gateway.origin,
    browserContextId: targetInfo.browserContextId,
  });
  await page.goto(`${gateway.origin}/healthz`);
  await page.evaluate(startClient, 'AE');
  await page.waitForFunction(() => window.notifier.state === 'open', null, { timeout: 10000 });
  await gateway.waitForConnections('AE', 1);
  return page;
}

test('permission granted: a hidden page shows a system notification, a visible one a toast', async (t) => {
  const page = await openPage(t, 'granted');
  assert.equal(await page.evaluate(() => Notification.permission), 'granted');
  await page.evaluate(() => window.setHidden(true));
  const hiddenTitle = 'في الخلفية';
  const reply = await gateway.publishOk(notification('AE', hiddenTitle));
  await page.waitForFunction(() => window.notices.length >= 1, null, { timeout: 5000 });
  const [notice] = await page.evaluate(() => window.notices);
  assert.equal(notice.title, 'Trending in AE');
  assert.ok(notice.body.startsWith(hiddenTitle), notice.body);
  assert.equal(notice.tag, `tvs-${reply.id}`);
  assert.equal(notice.dir, 'rtl');
  assert.equal(notice.lang, 'ar');
  assert.equal(await toasts(page).count(), 0, 'no toast while hidden');

  await page.evaluate(() => window.setHidden(false));
  const visibleTitle = 'Visible again';
  await gateway.publishOk(notification('AE', visibleTitle));
  await toasts(page, visibleTitle).waitFor({ timeout: 5000 });
  assert.equal((await page.evaluate(() => window.notices)).length, 1, 'a visible page gets a toast');
  assert.deepEqual(page.pageErrors, []);
});

test('permission denied: a hidden page still gets a toast, and no notification', async (t) => {
  const page = await openPage(t, 'denied');
  assert.equal(await page.evaluate(() => Notification.permission), 'denied');
  await page.evaluate(() => window.setHidden(true));
  const title = 'Denied: toast instead';
  await gateway.publishOk(notification('AE', title));
  await toasts(page, title).waitFor({ timeout: 5000 });
  assert.deepEqual(await page.evaluate(() => window.notices), []);
  assert.deepEqual(page.pageErrors, []);
});
