// Shared helpers for the browser tests: start the real notify-gateway binary on a free loopback
// port (embedded broker by default, open publishing), a throwaway redis-server, HAProxy with the
// shipped deploy/haproxy/haproxy.cfg, the real notify-publish CLI; publish through the
// gateway's HTTP API, and drive the system Chromium through playwright-core. Nothing here
// downloads a browser.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, copyFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(repoRoot, process.env.CARGO_TARGET_DIR)
  : path.join(repoRoot, 'target');
export const screenshotDir = path.join(targetDir, 'screenshots');
export const docsScreenshotDir = path.join(repoRoot, 'docs', 'screenshots');

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

export function gatewayBinary() {
  const bin = process.env.NOTIFY_GATEWAY_BIN || path.join(targetDir, 'debug', 'notify-gateway');
  if (!existsSync(bin)) {
    throw new Error(`gateway binary ${bin} not found: run \`cargo build --workspace --bins\` first or set NOTIFY_GATEWAY_BIN`);
  }
  return bin;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A running notify-gateway process. */
export class Gateway {
  constructor(port, regions, args = [], host = '127.0.0.1') {
    this.port = port;
    this.regions = regions;
    this.args = args;
    this.host = host;
    this.origin = `http://127.0.0.1:${port}`;
    this.wsOrigin = `ws://127.0.0.1:${port}`;
    this.child = null;
    this.output = '';
  }

  /**
   * Starts a gateway serving `regions` on `port` (a free one when omitted); `args` are extra
   * command-line flags, e.g. `['--redis-url', redis.url]`; `host` is the listen address
   * (`0.0.0.0` for a non-loopback gateway, still reached over 127.0.0.1).
   */
  static async start({ regions = ['AE', 'FI'], port, args = [], host } = {}) {
    const gateway = new Gateway(port ?? (await freePort()), regions, args, host);
    await gateway.spawn();
    return gateway;
  }

  async spawn() {
    const env = { ...process.env };
    // Embedded broker and open (loopback, keyless) publishing, whatever the caller's shell has.
    delete env.NOTIFY_REDIS_URL;
    delete env.NOTIFY_API_KEY;
    delete env.NOTIFY_LISTEN;
    delete env.NOTIFY_REGIONS;
    const args = ['--listen', `${this.host}:${this.port}`, '--regions', this.regions.join(','), ...this.args];
    const deadline = Date.now() + 20000;
    // A restart on the same port may briefly find it still held; retry until the deadline.
    for (;;) {
      const child = spawn(gatewayBinary(), args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      running.add(child);
      const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
      child.exitedPromise = exited;
      child.stdout.on('data', (chunk) => { this.output += chunk; });
      child.stderr.on('data', (chunk) => { this.output += chunk; });
      exited.then(() => running.delete(child));
      this.child = child;
      const ready = await this.waitReady(exited, deadline);
      if (ready === true) return;
      if (Date.now() > deadline) {
        throw new Error(`gateway on port ${this.port} did not become ready: ${ready}\n--- output ---\n${this.output.slice(-4000)}`);
      }
      await sleep(200);
    }
  }

  async waitReady(exited, deadline) {
    let exitInfo = null;
    exited.then((info) => { exitInfo = info; });
    while (Date.now() < deadline) {
      if (exitInfo) return `exited early (${JSON.stringify(exitInfo)})`;
      try {
        const response = await fetch(`${this.origin}/readyz`);
        if (response.status === 200) return true;
      } catch {
        // Not listening yet.
      }
      await sleep(50);
    }
    if (exitInfo) return `exited early (${JSON.stringify(exitInfo)})`;
    this.child.kill('SIGKILL');
    return 'timed out waiting for /readyz';
  }

  /** Kills the process (SIGKILL, like a crash) and waits for it to exit. */
  async kill() {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await child.exitedPromise;
  }

  /** Kill, then start again on the same port. */
  async restart() {
    await this.kill();
    await this.spawn();
  }

  async stop() {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timedOut = await Promise.race([child.exitedPromise.then(() => false), sleep(5000, undefined, { ref: false }).then(() => true)]);
    if (timedOut) {
      child.kill('SIGKILL');
      await child.exitedPromise;
    }
  }

  /** POST /api/publish; returns { status, body }. */
  async publish(notification) {
    const response = await fetch(`${this.origin}/api/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(notification),
    });
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    return { status: response.status, body };
  }

  /**
   * Publishes and insists on HTTP 200 with at least `minReached` receivers: browsers with the
   * embedded broker (`clients_reached`), gateway nodes with Redis (`gateway_nodes_reached`).
   */
  async publishOk(notification, minReached = 1) {
    const { status, body } = await this.publish(notification);
    if (status !== 200) throw new Error(`publish failed: HTTP ${status} ${JSON.stringify(body)}`);
    const reached = body.clients_reached ?? body.gateway_nodes_reached;
    if (!(Number(reached) >= minReached)) {
      throw new Error(`publish reached ${JSON.stringify(body)}, expected >= ${minReached}`);
    }
    return body;
  }

  /** Waits until /metrics reports at least `count` WebSocket clients on `region`. */
  async waitForConnections(region, count = 1, timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    const pattern = new RegExp(`^notify_connections\\{[^}]*region="${region}"[^}]*\\}\\s+([0-9.e+]+)`, 'm');
    let last = '';
    while (Date.now() < deadline) {
      try {
        last = await (await fetch(`${this.origin}/metrics`)).text();
        const match = pattern.exec(last);
        if (match && Number(match[1]) >= count) return;
      } catch {
        // Retry.
      }
      await sleep(50);
    }
    throw new Error(`no ${count} connection(s) on ${region} within ${timeoutMs} ms; metrics:\n${last.slice(0, 2000)}`);
  }
}

function workspaceBinary(name, envVar) {
  const bin = process.env[envVar] || path.join(targetDir, 'debug', name);
  if (!existsSync(bin)) {
    throw new Error(`${name} binary ${bin} not found: run \`cargo build --workspace --bins\` first or set ${envVar}`);
  }
  return bin;
}

/** Sends one inline command to a Redis server and resolves with its first reply line, or null. */
function redisCommand(port, command, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let reply = '';
    const done = (value) => {
      socket.destroy();
      resolve(value);
    };
    socket.setTimeout(timeoutMs, () => done(null));
    socket.on('error', () => done(null));
    socket.on('connect', () => socket.write(`${command}\r\n`));
    socket.on('data', (chunk) => {
      reply += chunk;
      const end = reply.indexOf('\r\n');
      if (end >= 0) done(reply.slice(0, end));
    });
  });
}

/** A throwaway `redis-server` on a free loopback port: no persistence, killed at exit. */
export class RedisServer {
  constructor(port) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.child = null;
    this.output = '';
  }

  static async start({ port } = {}) {
    const server = new RedisServer(port ?? (await freePort()));
    await server.spawn();
    return server;
  }

  async spawn() {
    const bin = process.env.REDIS_SERVER || '/usr/bin/redis-server';
    if (!existsSync(bin)) throw new Error(`${bin} not found (apt-get install -y redis-server) or set REDIS_SERVER`);
    const child = spawn(bin, [
      '--port', String(this.port), '--bind', '127.0.0.1',
      '--save', '', '--appendonly', 'no', '--dir', os.tmpdir(),
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    child.exitedPromise = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    child.exitedPromise.then(() => running.delete(child));
    child.stdout.on('data', (chunk) => { this.output += chunk; });
    child.stderr.on('data', (chunk) => { this.output += chunk; });
    this.child = child;
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      if ((await redisCommand(this.port, 'PING')) === '+PONG') return;
      await sleep(50);
    }
    throw new Error(`redis-server on port ${this.port} did not answer PING\n--- output ---\n${this.output.slice(-4000)}`);
  }

  /** One inline command (e.g. `XLEN tvs:AE:stream`); resolves with the first reply line. */
  command(command) {
    return redisCommand(this.port, command);
  }

  async stop() {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await child.exitedPromise;
  }
}

/**
 * HAProxy with the shipped `deploy/haproxy/haproxy.cfg` in front of three gateways: the file is
 * used unchanged, its addresses come from the environment (free loopback ports here).
 */
export class HaProxy {
  constructor(port, statsPort) {
    this.port = port;
    this.statsPort = statsPort;
    this.origin = `http://127.0.0.1:${port}`;
    this.child = null;
    this.output = '';
  }

  /** Starts HAProxy in front of `gateways` (three `Gateway`s: gateway1..3) and waits for its stats page. */
  static async start(gateways) {
    const bin = process.env.HAPROXY_BIN || '/usr/sbin/haproxy';
    if (!existsSync(bin)) throw new Error(`${bin} not found (apt-get install -y haproxy) or set HAPROXY_BIN`);
    const proxy = new HaProxy(await freePort(), await freePort());
    const env = {
      ...process.env,
      NOTIFY_LB_LISTEN: `127.0.0.1:${proxy.port}`,
      NOTIFY_LB_STATS: `127.0.0.1:${proxy.statsPort}`,
    };
    gateways.forEach((gateway, index) => { env[`NOTIFY_GATEWAY_${index + 1}`] = `127.0.0.1:${gateway.port}`; });
    const config = path.join(repoRoot, 'deploy', 'haproxy', 'haproxy.cfg');
    const child = spawn(bin, ['-db', '-f', config], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    child.exitedPromise = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    child.exitedPromise.then(() => running.delete(child));
    child.stdout.on('data', (chunk) => { proxy.output += chunk; });
    child.stderr.on('data', (chunk) => { proxy.output += chunk; });
    proxy.child = child;
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      try {
        await proxy.servers();
        return proxy;
      } catch {
        await sleep(50);
      }
    }
    throw new Error(`haproxy did not start\n--- output ---\n${proxy.output.slice(-4000)}`);
  }

  /** The `gateways` backend's servers from the stats CSV: `{ name, status, sessions }`. */
  async servers() {
    const csv = await (await fetch(`http://127.0.0.1:${this.statsPort}/;csv`)).text();
    const [header, ...rows] = csv.trim().split('\n');
    const columns = header.replace(/^# /, '').split(',');
    const at = (name) => columns.indexOf(name);
    return rows
      .map((row) => row.split(','))
      .filter((fields) => fields[at('pxname')] === 'gateways' && !['FRONTEND', 'BACKEND'].includes(fields[at('svname')]))
      .map((fields) => ({ name: fields[at('svname')], status: fields[at('status')], sessions: Number(fields[at('stot')]) }));
  }

  /** Waits until server `name` (gateway1..3) has `status` (`UP` or `DOWN`). */
  async waitStatus(name, status, timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    let seen = [];
    while (Date.now() < deadline) {
      seen = await this.servers();
      if (seen.some((server) => server.name === name && server.status === status)) return;
      await sleep(50);
    }
    throw new Error(`haproxy: ${name} not ${status} within ${timeoutMs} ms: ${JSON.stringify(seen)}`);
  }

  async stop() {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await child.exitedPromise;
  }
}

/**
 * Runs the real `notify-publish` binary with `args` to completion; resolves with
 * `{ code, stdout, stderr }`. The caller's NOTIFY_* environment is not passed on.
 */
export function runPublish(args, { timeoutMs = 15000 } = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('NOTIFY_')));
  return new Promise((resolve, reject) => {
    const child = spawn(workspaceBinary('notify-publish', 'NOTIFY_PUBLISH_BIN'), args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => { stdout += chunk; });
    child.stderr.on('data', (chunk) => { stderr += chunk; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code: code ?? signal, stdout, stderr });
    });
  });
}

/** A seed-shaped notification with a fresh video id. */
let counter = 0;
export function notification(region, title, extra = {}) {
  counter += 1;
  return {
    event: 'new_trending',
    region,
    video_id: `vid${Date.now().toString(36)}${counter}`,
    title,
    thumbnail: `https://thumbs.invalid/vi/${counter}/hqdefault.jpg`,
    channel: extra.channel ?? 'Test channel',
    ts: Math.floor(Date.now() / 1000),
    ...extra,
  };
}

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found (apt-get install -y chromium)`);
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

/** A gateway (embedded broker unless `options.args` say otherwise) and a browser, for a test
 * file's `before`; `stopGatewayAndBrowser` is its `after`. */
export async function startGatewayAndBrowser(options) {
  const gateway = await Gateway.start(options);
  const browser = await launchBrowser();
  return { gateway, browser };
}

export async function stopGatewayAndBrowser({ gateway, browser }) {
  await browser?.close();
  await gateway?.stop();
}

/**
 * A new page in its own context that records console errors, uncaught page errors and every
 * WebSocket the page opens.
 */
export async function newPage(browser, contextOptions = {}) {
  const context = await browser.newContext(contextOptions);
  const page = await context.newPage();
  page.consoleErrors = [];
  page.pageErrors = [];
  page.sockets = [];
  page.on('console', (message) => {
    if (message.type() === 'error') page.consoleErrors.push({ text: message.text(), url: message.location().url });
  });
  page.on('pageerror', (error) => page.pageErrors.push(String(error)));
  page.on('websocket', (socket) => page.sockets.push(socket.url()));
  return page;
}

/** Serves a generated SVG for any thumbnail URL on the page (no network needed). */
export async function fakeThumbnails(page, pattern = /\/(vi|thumbnails)\//) {
  await page.route(pattern, (route) => {
    const hue = [...route.request().url()].reduce((sum, c) => sum + c.charCodeAt(0), 0) % 360;
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="320" height="180" viewBox="0 0 320 180">
      <defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">
        <stop offset="0" stop-color="hsl(${hue},70%,55%)"/><stop offset="1" stop-color="hsl(${(hue + 60) % 360},70%,35%)"/>
      </linearGradient></defs>
      <rect width="320" height="180" fill="url(#g)"/>
      <circle cx="160" cy="90" r="34" fill="rgba(0,0,0,.35)"/>
      <path d="M150 72 L178 90 L150 108 Z" fill="#fff"/></svg>`;
    return route.fulfill({ status: 200, contentType: 'image/svg+xml', body: svg });
  });
}

/** Locator for visible (not leaving) toasts, optionally with a given title. */
export function toasts(page, title) {
  const all = page.locator('.tvs-toast:not(.tvs-toast--leaving)');
  return title === undefined ? all : all.filter({ has: page.locator('.tvs-toast__title', { hasText: title }) });
}

/** Screenshot of a toast with some margin so its shadow shows; also copied into docs/. */
export async function screenshotToast(page, toast, name, { copyToDocs = false } = {}) {
  mkdirSync(screenshotDir, { recursive: true });
  const box = await toast.boundingBox();
  const margin = 20;
  const file = path.join(screenshotDir, `${name}.png`);
  await page.screenshot({
    path: file,
    clip: {
      x: Math.max(0, box.x - margin),
      y: Math.max(0, box.y - margin),
      width: box.width + 2 * margin,
      height: box.height + 2 * margin,
    },
  });
  // docs/ keeps committed copies: written when missing, refreshed only on request so a test
  // run does not rewrite tracked files.
  const docsFile = path.join(docsScreenshotDir, `${name}.png`);
  if (copyToDocs && (!existsSync(docsFile) || process.env.UPDATE_SCREENSHOTS === '1')) {
    mkdirSync(docsScreenshotDir, { recursive: true });
    copyFileSync(file, docsFile);
  }
  return file;
}
