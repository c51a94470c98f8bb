// What the demo page tells a newcomer: a region the gateway does not serve is an error with the
// served regions to choose from (never a silent switch); right-to-left entries in "Received" are
// right-aligned; on a phone-sized screen the toasts leave the header visible; the shell command
// it suggests names this gateway and says when a key is needed; a publish says what it reached.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Gateway, launchBrowser, newPage, toasts, notification, fakeThumbnails, screenshotDir, docsScreenshotDir,
} from './harness.js';
import { mkdirSync, copyFileSync } from 'node:fs';
import path from 'node:path';

let gateway;
let browser;

before(async () => {
  gateway = await Gateway.start({ regions: ['AE', 'FI', 'CZ'] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
});

async function openDemo(page, origin, query) {
  const response = await page.goto(`${origin}/${query}`);
  assert.equal(response.status(), 200);
  await page.waitForSelector('body[data-ready="true"]');
}

test('a region the gateway does not serve is an error listing the served ones', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await openDemo(page, gateway.origin, '?region=ZZ');
  const alert = page.locator('#region-error');
  assert.equal(await alert.isVisible(), true);
  assert.match(await alert.textContent(), /Region ZZ is not served by this gateway/);
  assert.deepEqual((await page.locator('#region-choices button').allTextContents()).sort(), ['AE', 'CZ', 'FI']);
  // Nothing is watched, the address bar still says what was asked, and no WebSocket was opened.
  assert.ok(page.url().endsWith('?region=ZZ'), page.url());
  assert.equal(await page.locator('#watch-region').inputValue(), '');
  await sleep(300);
  assert.deepEqual(page.sockets, []);
  assert.equal(await page.locator('#status').textContent(), 'Not watching');

  // Choosing a region watches it, updates the address bar and hides the error.
  await page.locator('#region-choices button', { hasText: 'FI' }).click();
  await page.waitForFunction(() => window.notifier.region === 'FI' && window.notifier.state === 'open');
  assert.equal(await alert.isHidden(), true);
  assert.ok(page.url().includes('region=FI'), page.url());
  assert.equal(await page.locator('#watch-region').inputValue(), 'FI');
  assert.equal(page.sockets.length, 1);
  assert.match(page.sockets[0], /region=FI/);
  assert.deepEqual(page.pageErrors, []);
});

test('a malformed region is named as such', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await openDemo(page, gateway.origin, '?region=usa');
  assert.match(await page.locator('#region-error').textContent(), /"usa" is not a region code/);
  assert.deepEqual(page.sockets, []);
});

test('a served region, in any case, is watched without an error', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await openDemo(page, gateway.origin, '?region=cz');
  await page.waitForFunction(() => window.notifier.region === 'CZ' && window.notifier.state === 'open');
  assert.equal(await page.locator('#region-error').isHidden(), true);
  assert.equal(page.sockets.length, 1, 'one connection, to the asked region');
});

/** The title's box against its list entry's box: which edge it sits on. */
async function titleEdges(page, title) {
  return page.evaluate((text) => {
    const item = [...document.querySelectorAll('#received li')].find((li) => li.textContent.includes(text));
    const style = getComputedStyle(item);
    const box = item.getBoundingClientRect();
    const inner = {
      left: box.left + parseFloat(style.paddingLeft),
      right: box.right - parseFloat(style.paddingRight),
    };
    const titleBox = item.querySelector('bdi').getBoundingClientRect();
    return {
      direction: style.direction,
      fromLeft: titleBox.left - inner.left,
      fromRight: inner.right - titleBox.right,
    };
  }, title);
}

test('right-to-left entries in "Received" are right-aligned, left-to-right ones left-aligned', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await openDemo(page, gateway.origin, '?region=AE');
  await page.waitForFunction(() => window.notifier.state === 'open');
  await gateway.waitForConnections('AE', 1);
  const arabic = 'عاجل';
  const latin = 'Short';
  await gateway.publishOk(notification('AE', arabic));
  await gateway.publishOk(notification('AE', latin, { rtl: false }));
  await page.waitForFunction(() => document.querySelectorAll('#received li').length === 2);
  const rtl = await titleEdges(page, arabic);
  assert.equal(rtl.direction, 'rtl');
  assert.ok(rtl.fromRight < 2 && rtl.fromLeft > 100, `RTL title sits on the right: ${JSON.stringify(rtl)}`);
  const ltr = await titleEdges(page, latin);
  assert.equal(ltr.direction, 'ltr');
  assert.ok(ltr.fromLeft < 2 && ltr.fromRight > 100, `LTR title sits on the left: ${JSON.stringify(ltr)}`);
});

test('on a 375 px wide screen the toasts leave the header visible', async (t) => {
  const page = await newPage(browser, { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
  t.after(() => page.context().close());
  await fakeThumbnails(page);
  await openDemo(page, gateway.origin, '?region=AE');
  await page.waitForFunction(() => window.notifier.state === 'open');
  await gateway.waitForConnections('AE', 1);
  const titles = ['أخبار عاجلة من دبي', 'Second', 'Third'];
  for (const title of titles) await gateway.publishOk(notification('AE', title));
  for (const title of titles) await toasts(page, title).waitFor({ timeout: 5000 });
  // Wait out the entry animation, then compare boxes.
  await sleep(400);
  const header = await page.locator('header').boundingBox();
  const viewport = page.viewportSize();
  for (const title of titles) {
    const box = await toasts(page, title).boundingBox();
    assert.ok(box.y >= header.y + header.height, `toast "${title}" (${JSON.stringify(box)}) covers the header (${JSON.stringify(header)})`);
    assert.ok(box.y + box.height <= viewport.height, `toast "${title}" is on screen`);
    assert.ok(box.x >= 0 && box.x + box.width <= viewport.width, `toast "${title}" fits the width`);
  }
  mkdirSync(screenshotDir, { recursive: true });
  const file = path.join(screenshotDir, 'demo-mobile.png');
  await page.screenshot({ path: file });
  if (process.env.UPDATE_SCREENSHOTS === '1') {
    mkdirSync(docsScreenshotDir, { recursive: true });
    copyFileSync(file, path.join(docsScreenshotDir, 'demo-mobile.png'));
  }
});

test('the suggested command names this gateway (open publishing)', async (t) => {
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await openDemo(page, gateway.origin, '?region=AE');
  const command = await page.locator('#command').textContent();
  assert.ok(command.startsWith(`notify-publish --gateway-url ${gateway.origin} --region AE `), command);
  assert.doesNotMatch(command, /--api-key/);
});

test('with a key, the command names the gateway and says a key is needed', async (t) => {
  const keyed = await Gateway.start({ regions: ['AE'], args: ['--api-key', 'k1'] });
  t.after(() => keyed.stop());
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await openDemo(page, keyed.origin, '?region=AE');
  assert.equal(await page.locator('body').getAttribute('data-publish'), 'key');
  const command = await page.locator('#command').textContent();
  assert.ok(command.startsWith(`notify-publish --gateway-url ${keyed.origin} --api-key-file `), command);
  assert.match(await page.locator('#command-note').textContent(), /needs an API key/);
});

test('on a non-loopback gateway without a key the command still names it, never a default Redis', async (t) => {
  const open = await Gateway.start({ regions: ['AE'], host: '0.0.0.0' });
  t.after(() => open.stop());
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await openDemo(page, open.origin, '?region=AE');
  assert.equal(await page.locator('body').getAttribute('data-publish'), 'disabled');
  assert.equal(await page.locator('#publish-disabled').isVisible(), true);
  const command = await page.locator('#command').textContent();
  assert.ok(command.startsWith(`notify-publish --gateway-url ${open.origin} --api-key-file `), command);
  assert.match(await page.locator('#command-note').textContent(), /start it with --api-key/);
});
