// The demo page served at / by the gateway: loads cleanly, lists the served regions, and its
// form publishes a sample that comes back as a toast.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { newPage, toasts, startGatewayAndBrowser, stopGatewayAndBrowser } from './harness.js';

let gateway;
let browser;

before(async () => {
  ({ gateway, browser } = await startGatewayAndBrowser({ regions: ['AE', 'FI', 'CZ'] }));
});

after(() => stopGatewayAndBrowser({ gateway, browser }));

/** Console errors other than the sample thumbnail the gateway does not serve (hidden on error). */
function unexpectedErrors(page) {
  return page.consoleErrors.filter((e) => !(e.text.includes('Failed to load resource') && e.url.includes('/thumbnails/')));
}

test('the demo page loads without errors and shows the gateway regions', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  const response = await page.goto(`${gateway.origin}/?region=ae`);
  assert.equal(response.status(), 200);
  await page.waitForSelector('body[data-ready="true"]');
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'open');
  const regions = await page.locator('#watch-region option').allTextContents();
  assert.deepEqual([...regions].sort(), ['AE', 'CZ', 'FI']);
  assert.equal(await page.locator('#watch-region').inputValue(), 'AE');
  assert.equal(await page.locator('body').getAttribute('data-publish'), 'open');
  assert.equal(await page.locator('#key-field').isHidden(), true);
  assert.match(await page.locator('#info').textContent(), /broker: embedded/);
  await sleep(300);
  assert.deepEqual(page.consoleErrors, []);
  assert.deepEqual(page.pageErrors, []);
});

test('the form publishes the Arabic sample and it shows as an RTL toast', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${gateway.origin}/?region=AE`);
  await page.waitForSelector('body[data-ready="true"]');
  await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'open');
  await gateway.waitForConnections('AE', 1);
  const title = await page.locator('#title').inputValue();
  assert.match(title, /[\u0600-\u06FF]/, 'the AE sample is Arabic');
  await page.locator('#publish').click();
  const toast = toasts(page, title);
  await toast.waitFor({ timeout: 5000 });
  assert.equal(await toast.getAttribute('dir'), 'rtl');
  assert.equal(await toast.locator('.tvs-toast__title').textContent(), title);
  await page.waitForFunction(() => document.querySelector('#result').dataset.kind === 'ok');
  assert.match(await page.locator('#result').textContent(), /Published to AE: reached 1 browser\./);
  // The sample thumbnail is not served; the toast drops the broken image and keeps its placeholder.
  await page.waitForFunction(() => !document.querySelector('.tvs-toast img'), null, { timeout: 5000 });
  assert.equal(await page.locator('#received li').count(), 1);

  // The Czech sample goes to CZ: the page says so instead of showing a toast.
  await page.locator('#sample').selectOption({ label: 'Czech (CZ, č ž š)' });
  assert.equal(await page.locator('#region').inputValue(), 'CZ');
  const czech = await page.locator('#title').inputValue();
  assert.match(czech, /[čžš]/);
  await page.locator('#publish').click();
  await page.waitForFunction(() => /watches AE/.test(document.querySelector('#result').textContent));
  await sleep(500);
  assert.equal(await toasts(page, czech).count(), 0);

  // One click watches CZ; publishing again shows the Czech toast, left to right.
  await page.getByRole('button', { name: 'Watch CZ' }).click();
  await page.waitForFunction(() => window.notifier.region === 'CZ' && window.notifier.state === 'open');
  await gateway.waitForConnections('CZ', 1);
  await page.locator('#publish').click();
  const czToast = toasts(page, czech);
  await czToast.waitFor({ timeout: 5000 });
  assert.equal(await czToast.getAttribute('dir'), 'ltr');
  assert.ok(page.url().includes('region=CZ'));
  assert.deepEqual(unexpectedErrors(page), []);
  assert.deepEqual(page.pageErrors, []);
});
