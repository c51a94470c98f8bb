/**
 * notify browser client — live "new trending video" toasts over WebSocket, or Server-Sent
 * Events where a network blocks WebSocket upgrades.
 *
 * A dependency-free ES module served by the gateway at `/client.js`. No build step.
 *
 * @example
 *   import { TrendingNotifier } from '/client.js';
 *   const notifier = new TrendingNotifier({
 *     region: 'AE',
 *     onNotification: (n) => console.log(n.title),
 *     onState: (state) => console.log(state), // connecting | open | reconnecting | closed
 *   });
 *   // later: notifier.setRegion('FI'); notifier.close();
 *   // several regions on one connection: new TrendingNotifier({ region: ['AE', 'FI'] })
 *
 * Constructor options (all optional):
 *   region         ISO 3166-1 alpha-2 code, case-insensitive. Default "US". Several regions
 *                  on one connection: an array (["AE", "FI"]) or a comma string ("AE,FI");
 *                  the gateway allows up to --max-regions-per-connection (default 8).
 *   url            WebSocket base URL, e.g. "wss://ws.example.com/". Default: the page's own
 *                  host, `wss:` when the page is https and `ws:` otherwise.
 *   host           Host (and port) to use instead of the page's, keeping the scheme rule.
 *   toasts         Show a toast per notification (default true).
 *   container      Element to hold the toasts. Default: a fixed stack created on first use.
 *   status         true (default): show a small fixed status pill; false: none; or an element
 *                  whose text and `data-state` attribute the client keeps up to date.
 *   maxToasts      Most toasts visible at once (default 4); the oldest leave early.
 *   toastMs        How long a toast stays, in ms (default 5000; paused while hovered/focused).
 *   backoffMs      First reconnect delay in ms (default 500), doubling per failed attempt...
 *   maxBackoffMs   ...up to this cap (default 30000). Each delay is jittered to 50–100 %.
 *   since          Last message id already seen; sent as `&since=` on the first connection.
 *                  With several regions, one id per region: "AE:<id>,FI:<id>" or
 *                  { AE: "<id>", FI: "<id>" }; a region without one starts live.
 *   transport      "auto" (default): WebSocket first, and after `sseAfterFailures` attempts
 *                  in a row that fail before opening (what a proxy that strips `Upgrade`
 *                  looks like) Server-Sent Events (`GET /events`) for the notifier's life;
 *                  "websocket": WebSocket only; "sse": Server-Sent Events only. The last id
 *                  is kept across the switch, so nothing is lost or shown twice.
 *   sseAfterFailures  WebSocket failures before opening that switch "auto" to SSE (default 2).
 *   backgroundNotices  Opt-in (default false): while the page is hidden and the user has
 *                  granted notification permission, show a system notification (the
 *                  Notification API) instead of a toast. The client never asks for permission
 *                  itself; call `TrendingNotifier.requestNoticePermission()` from a click.
 *   formatLabel    (region) => string, the toast heading. Default "Trending in {region}".
 *   onNotification (notification) => void, for every `new_trending` message.
 *   onState        (state, detail) => void on every state change; detail has `attempt`,
 *                  `delayMs` (when reconnecting) and `code`/`reason` of the last close.
 *   onResync       (message) => void for `{"event":"resync",...}`: messages after `since`
 *                  were not retained, so the caller should refresh whatever it shows.
 *   onToastClick   (notification) => void when a toast is clicked or activated.
 *   WebSocket      WebSocket constructor to use (default globalThis.WebSocket).
 *   EventSource    EventSource constructor to use (default globalThis.EventSource).
 *
 * Properties: `state`, `region` (the code, or the codes comma-separated), `regions` (array),
 * `lastId` (the last id of any region), `lastIds` (region → its last id), `transport`
 * ("websocket" or "sse": the one in use), `url` (the URL of the current or next connection).
 * With several regions the client resumes each after its own last id (`since=AE:<id>,FI:<id>`
 * on WebSocket and on a new EventSource; the browser's `Last-Event-ID` carries the same form
 * when an EventSource reconnects by itself).
 * Methods: `connect()` (called by the constructor unless `autoConnect: false`),
 * `TrendingNotifier.requestNoticePermission()` (static; from a user gesture),
 * `setRegion(region)`, `showToast(notification)`, `close()` (stops for good: no reconnects).
 *
 * Every server string is written with textContent or setAttribute, never parsed as HTML, and a
 * thumbnail is shown only when it is an absolute http(s) URL.
 */

/** Regions whose main language is written right to left, with that language's BCP 47 tag.
 * Mirrors RIGHT_TO_LEFT in notify-proto (crates/notify-proto/src/region.rs). */
export const RIGHT_TO_LEFT = Object.freeze({
  AE: 'ar', AF: 'fa', BH: 'ar', DZ: 'ar', EG: 'ar', EH: 'ar', IL: 'he', IQ: 'ar', IR: 'fa',
  JO: 'ar', KM: 'ar', KW: 'ar', LB: 'ar', LY: 'ar', MA: 'ar', MR: 'ar', MV: 'dv', OM: 'ar',
  PK: 'ur', PS: 'ar', QA: 'ar', SA: 'ar', SD: 'ar', SY: 'ar', TN: 'ar', YE: 'ar',
});

/** The connection states, in the order a connection normally goes through them. */
export const STATES = Object.freeze(['connecting', 'open', 'reconnecting', 'closed']);

const STATE_LABELS = {
  connecting: 'Connecting…',
  open: 'Live',
  reconnecting: 'Reconnecting…',
  closed: 'Closed',
};

/** The BCP 47 tag of a right-to-left region's language, or null. */
export function rtlLanguage(region) {
  return RIGHT_TO_LEFT[String(region || '').toUpperCase()] || null;
}

/** Normalises a region code; throws on anything but two ASCII letters. */
export function normalizeRegion(region) {
  const code = String(region ?? '').trim().toUpperCase();
  if (!/^[A-Z]{2}$/.test(code)) {
    throw new TypeError(`region ${JSON.stringify(region)} is not a two-letter ISO 3166-1 code`);
  }
  return code;
}

/** Normalises one region or several (an array, or a comma string) to distinct codes, in order;
 * throws on a malformed code or an empty list. */
export function normalizeRegions(regions) {
  const list = Array.isArray(regions) ? regions : String(regions ?? '').split(',');
  const codes = [];
  for (const region of list) {
    const code = normalizeRegion(region);
    if (!codes.includes(code)) codes.push(code);
  }
  if (codes.length === 0) throw new TypeError('region: at least one region is needed');
  return codes;
}

/** Parses a resume position for `regions`: a bare id (one region), "AE:<id>,FI:<id>", or an
 * object of region → id. Returns region → id for the regions asked; others are ignored. */
export function parsePositions(since, regions) {
  const ids = {};
  if (since && typeof since === 'object') {
    for (const [region, id] of Object.entries(since)) {
      const code = String(region).toUpperCase();
      if (regions.includes(code) && typeof id === 'string' && id !== '') ids[code] = id;
    }
    return ids;
  }
  if (typeof since !== 'string' || since === '') return ids;
  if (!since.includes(':')) {
    if (regions.length === 1) ids[regions[0]] = since;
    return ids;
  }
  for (const entry of since.split(',')) {
    const [region, id] = entry.split(':');
    const code = String(region || '').toUpperCase();
    if (regions.includes(code) && id) ids[code] = id;
  }
  return ids;
}

/** The `since` to send: the bare id for one region (as every earlier client sent it), else
 * "AE:<id>,FI:<id>" for the regions with an id; null when there is none. */
export function sinceParam(regions, lastIds) {
  if (regions.length === 1) return lastIds[regions[0]] || null;
  const entries = regions.filter((region) => lastIds[region]).map((region) => `${region}:${lastIds[region]}`);
  return entries.length > 0 ? entries.join(',') : null;
}

/** The thumbnail URL when it is an absolute http(s) URL, else null. */
export function safeImageUrl(value) {
  if (typeof value !== 'string' || value === '') return null;
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

/** Reconnect delay before attempt `attempt` (0-based): base·2^attempt capped, jittered 50–100 %. */
export function backoffDelay(attempt, baseMs = 500, capMs = 30000, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** The transports a notifier can be told to use. */
export const TRANSPORTS = Object.freeze(['auto', 'websocket', 'sse']);

/** The Server-Sent Events URL beside a WebSocket base URL: same host and path, `/events`,
 * `https:` for `wss:` and `http:` for `ws:`. */
export function eventsUrl(webSocketBase) {
  const url = new URL('events', webSocketBase);
  url.protocol = url.protocol === 'wss:' ? 'https:' : url.protocol === 'ws:' ? 'http:' : url.protocol;
  return url;
}

const STYLE_ID = 'tvs-notifier-style';
const STABLE_AFTER_MS = 5000;
const RECENT_IDS = 64;

const CSS = `
.tvs-toasts {
  position: fixed; inset-block-start: 1rem; inset-inline-end: 1rem; z-index: 2147483000;
  display: flex; flex-direction: column; gap: .625rem;
  inline-size: min(24rem, calc(100vw - 2rem)); pointer-events: none;
  margin: 0; padding: 0;
}
.tvs-toasts:empty { display: none; }
.tvs-toast {
  --tvs-bg: #ffffff; --tvs-fg: #16181d; --tvs-muted: #5b6170; --tvs-border: rgba(16, 24, 40, .12);
  --tvs-accent: #e0245e; --tvs-shadow: 0 10px 30px -12px rgba(16, 24, 40, .35), 0 2px 6px rgba(16, 24, 40, .08);
  --tvs-thumb: linear-gradient(135deg, #ffd1dc, #c7d2fe);
  color-scheme: light;
  box-sizing: border-box; pointer-events: auto; position: relative;
  display: flex; align-items: flex-start; gap: .75rem;
  padding: .75rem; padding-inline-end: 2.25rem;
  background: var(--tvs-bg); color: var(--tvs-fg);
  border: 1px solid var(--tvs-border); border-inline-start: 4px solid var(--tvs-accent);
  border-radius: .75rem; box-shadow: var(--tvs-shadow);
  font: 400 .875rem/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
  text-align: start; cursor: default;
  animation: tvs-toast-in .22s cubic-bezier(.2, .8, .2, 1);
}
.tvs-toast[data-clickable] { cursor: pointer; }
.tvs-toast:focus-visible { outline: 2px solid var(--tvs-accent); outline-offset: 2px; }
.tvs-toast__thumb-box {
  flex: none; inline-size: 6rem; aspect-ratio: 16 / 9; border-radius: .5rem; overflow: hidden;
  background: var(--tvs-thumb); position: relative;
}
.tvs-toast__thumb-box::after {
  content: ""; position: absolute; inset: 0; margin: auto; inline-size: 0; block-size: 0;
  border-block: .5rem solid transparent; border-left: .8rem solid rgba(255, 255, 255, .9);
  transform: translateX(.15rem);
}
.tvs-toast__thumb {
  position: relative; z-index: 1; display: block; inline-size: 100%; block-size: 100%; object-fit: cover;
}
.tvs-toast__body { min-inline-size: 0; flex: 1; display: flex; flex-direction: column; gap: .125rem; }
.tvs-toast__label {
  margin: 0; font-size: .6875rem; font-weight: 700; letter-spacing: .04em; text-transform: uppercase;
  color: var(--tvs-accent);
}
.tvs-toast[dir="rtl"] .tvs-toast__label { letter-spacing: normal; }
.tvs-toast__title {
  margin: 0; font-size: .9375rem; font-weight: 600; line-height: 1.35; overflow-wrap: anywhere;
  display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 3; overflow: hidden;
}
.tvs-toast__channel {
  margin: 0; color: var(--tvs-muted); white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
}
.tvs-toast bdi, .tvs-toast__text { unicode-bidi: isolate; }
.tvs-toast__close {
  position: absolute; inset-block-start: .375rem; inset-inline-end: .375rem;
  inline-size: 1.75rem; block-size: 1.75rem; padding: 0; border: 0; border-radius: 50%;
  background: transparent; color: var(--tvs-muted); font: inherit; font-size: 1.125rem; line-height: 1;
  cursor: pointer;
}
.tvs-toast__close:hover { background: var(--tvs-border); color: var(--tvs-fg); }
.tvs-toast__close:focus-visible { outline: 2px solid var(--tvs-accent); outline-offset: 1px; }
.tvs-toast--leaving { animation: tvs-toast-out .2s ease-in forwards; }
.tvs-status {
  display: inline-flex; align-items: center; gap: .4em;
  font: 500 .75rem/1.2 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
}
.tvs-status::before {
  content: ""; inline-size: .55em; block-size: .55em; border-radius: 50%; background: #9aa0a6;
}
.tvs-status[data-state="open"]::before { background: #1e9e55; }
.tvs-status[data-state="connecting"]::before,
.tvs-status[data-state="reconnecting"]::before { background: #e3a008; animation: tvs-pulse 1s ease-in-out infinite alternate; }
.tvs-status--floating {
  position: fixed; inset-block-end: .75rem; inset-inline-end: .75rem; z-index: 2147483000;
  padding: .3rem .6rem; border-radius: 999px; background: rgba(22, 24, 29, .82); color: #fff;
}
@keyframes tvs-toast-in { from { opacity: 0; transform: translateY(-.5rem) scale(.98); } }
@keyframes tvs-toast-out { to { opacity: 0; transform: translateY(-.25rem) scale(.98); } }
@keyframes tvs-pulse { to { opacity: .35; } }
@media (prefers-color-scheme: dark) {
  .tvs-toast {
    --tvs-bg: #1d2026; --tvs-fg: #eceef2; --tvs-muted: #a3a9b6; --tvs-border: rgba(255, 255, 255, .12);
    --tvs-accent: #ff5c8a; --tvs-shadow: 0 12px 32px -10px rgba(0, 0, 0, .7), 0 2px 6px rgba(0, 0, 0, .4);
    --tvs-thumb: linear-gradient(135deg, #5b2340, #27315f);
    color-scheme: dark;
  }
}
@media (prefers-reduced-motion: reduce) {
  .tvs-toast, .tvs-toast--leaving, .tvs-status::before { animation: none !important; }
}
`;

/** A paragraph holding server text as text, direction-isolated (`<bdi>`) so mixed scripts stay
 * readable. */
function isolatedLine(doc, className, value) {
  const line = doc.createElement('p');
  line.className = className;
  const isolated = doc.createElement('bdi');
  isolated.className = 'tvs-toast__text';
  isolated.textContent = value;
  line.appendChild(isolated);
  return line;
}

function injectStyles(doc) {
  if (doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement('style');
  style.id = STYLE_ID;
  style.textContent = CSS;
  (doc.head || doc.documentElement).appendChild(style);
}

function reducedMotion(win) {
  return Boolean(win.matchMedia && win.matchMedia('(prefers-reduced-motion: reduce)').matches);
}

function defaultBaseUrl(options) {
  if (options.url) return String(options.url);
  const loc = globalThis.location;
  const pageIsHttps = loc && loc.protocol === 'https:';
  const host = options.host || (loc && /^https?:$/.test(loc.protocol) ? loc.host : '');
  if (!host) {
    throw new TypeError('TrendingNotifier: pass `url` (or `host`) when the page is not served over http(s)');
  }
  return `${pageIsHttps ? 'wss' : 'ws'}://${host}/`;
}

export class TrendingNotifier {
  /** @param {object} [options] see the module header */
  constructor(options = {}) {
    this.options = { ...options };
    this.regions = normalizeRegions(options.region ?? 'US');
    this.region = this.regions.join(',');
    this.baseUrl = defaultBaseUrl(options);
    this.lastIds = parsePositions(options.since, this.regions);
    this.lastId = this.regions.map((region) => this.lastIds[region]).find(Boolean) || null;
    this.state = 'closed';
    this.maxToasts = Math.max(1, options.maxToasts ?? 4);
    this.toastMs = options.toastMs ?? 5000;
    this.backoffMs = options.backoffMs ?? 500;
    this.maxBackoffMs = options.maxBackoffMs ?? 30000;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._EventSource = options.EventSource || globalThis.EventSource;
    const transport = options.transport ?? 'auto';
    if (!TRANSPORTS.includes(transport)) {
      throw new TypeError(`transport ${JSON.stringify(transport)} is not one of ${TRANSPORTS.join(', ')}`);
    }
    this._transportOption = transport;
    this.transport = transport === 'sse' ? 'sse' : 'websocket';
    this.sseAfterFailures = Math.max(1, options.sseAfterFailures ?? 2);
    this._failuresBeforeOpen = 0;
    this._socket = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._stableTimer = null;
    this._stopped = false;
    this._recentIds = [];
    this._statusEl = null;
    this._ownsStatusEl = false;
    this._container = options.container || null;
    this._onOnline = () => {
      if (this._retryTimer !== null) {
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
        this._open();
      }
    };
    if (typeof document !== 'undefined') {
      injectStyles(document);
      this._setupStatusElement(options.status ?? true);
    }
    if (options.autoConnect !== false) this.connect();
  }

  /** The URL the current (or next) connection uses, with `region` and, once known, `since`
   * (one id per region with several). */
  get url() {
    const url = this.transport === 'sse' ? eventsUrl(this.baseUrl) : new URL(this.baseUrl);
    url.searchParams.set('region', this.region);
    const since = sinceParam(this.regions, this.lastIds);
    if (since) url.searchParams.set('since', since);
    return url.href;
  }

  /** Opens the connection (again) after `close()` or with `autoConnect: false`. */
  connect() {
    this._teardownSocket();
    this._stopped = false;
    this._attempt = 0;
    if (typeof window !== 'undefined') window.addEventListener('online', this._onOnline);
    this._open();
  }

  /** Switches region (one, or several as an array or comma string): reconnects at once and
   * forgets the previous regions' last ids. */
  setRegion(region) {
    const next = normalizeRegions(region);
    if (next.join(',') === this.region) return;
    this.regions = next;
    this.region = next.join(',');
    this.lastId = null;
    this.lastIds = {};
    this._recentIds = [];
    if (this._stopped) return;
    this._teardownSocket();
    this._attempt = 0;
    this._open();
  }

  /** Stops for good: closes the socket, cancels any pending reconnect. */
  close() {
    this._stopped = true;
    if (typeof window !== 'undefined') window.removeEventListener('online', this._onOnline);
    this._teardownSocket();
    this._setState('closed', {});
  }

  _teardownSocket() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._stableTimer);
    this._retryTimer = null;
    this._stableTimer = null;
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        // An EventSource's close() takes no arguments and ignores these.
        socket.close(1000, 'client closed');
      } catch {
        // Already closing or closed.
      }
    }
  }

  _open() {
    this._setState(this._attempt === 0 ? 'connecting' : 'reconnecting', {
      attempt: this._attempt,
      transport: this.transport,
    });
    if (this.transport === 'sse') {
      this._openEventSource();
      return;
    }
    let socket;
    try {
      socket = new this._WebSocket(this.url);
    } catch (error) {
      // A malformed URL will not get better by retrying; report it and stop.
      this._stopped = true;
      this._setState('closed', { reason: String(error && error.message ? error.message : error) });
      return;
    }
    this._socket = socket;
    let openedAt = 0;
    socket.onopen = () => {
      openedAt = Date.now();
      this._setState('open', { attempt: this._attempt });
      // Only a connection that stays up resets the backoff, so a server that accepts and then
      // drops every connection is not hammered every half second.
      this._stableTimer = setTimeout(() => {
        this._attempt = 0;
      }, STABLE_AFTER_MS);
    };
    socket.onmessage = (event) => this._handleMessage(event.data);
    socket.onerror = () => {
      // Always followed by a close event, which schedules the reconnect.
    };
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      clearTimeout(this._stableTimer);
      this._stableTimer = null;
      if (this._stopped) return;
      this._failuresBeforeOpen = openedAt ? 0 : this._failuresBeforeOpen + 1;
      if (this._transportOption === 'auto' && this._failuresBeforeOpen >= this.sseAfterFailures) {
        // Upgrades keep failing before the socket opens: a proxy or middlebox in the way.
        this.transport = 'sse';
        this._attempt = 0;
        this._open();
        return;
      }
      if (openedAt && Date.now() - openedAt >= STABLE_AFTER_MS) this._attempt = 0;
      const delayMs = backoffDelay(this._attempt, this.backoffMs, this.maxBackoffMs);
      this._attempt += 1;
      this._setState('reconnecting', {
        attempt: this._attempt,
        delayMs,
        code: event.code,
        reason: event.reason,
      });
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        this._open();
      }, delayMs);
    };
  }

  /** Opens the Server-Sent Events stream. The browser reconnects it by itself (with
   * `Last-Event-ID`) when it drops or the gateway ends it; only a refusal (an HTTP error, which
   * `EventSource` does not retry) is retried here, with backoff and `since`. */
  _openEventSource() {
    let source;
    try {
      source = new this._EventSource(this.url);
    } catch (error) {
      this._stopped = true;
      this._setState('closed', { reason: String(error && error.message ? error.message : error) });
      return;
    }
    this._socket = source;
    let openedAt = 0;
    let lastClose = {};
    source.onopen = () => {
      openedAt = Date.now();
      this._setState('open', { attempt: this._attempt, transport: 'sse' });
      clearTimeout(this._stableTimer);
      this._stableTimer = setTimeout(() => {
        this._attempt = 0;
      }, STABLE_AFTER_MS);
    };
    source.onmessage = (event) => this._handleMessage(event.data);
    source.addEventListener('resync', (event) => this._handleMessage(event.data));
    source.addEventListener('close', (event) => {
      // The gateway ends the stream (1001 shutting down, 1008 slow, 1013 retry later); the
      // browser reconnects after the `retry:` it sent.
      try {
        const message = JSON.parse(event.data);
        lastClose = { code: message.code, reason: message.reason };
      } catch {
        lastClose = {};
      }
    });
    source.onerror = () => {
      if (this._socket !== source || this._stopped) return;
      clearTimeout(this._stableTimer);
      this._stableTimer = null;
      if (openedAt && Date.now() - openedAt >= STABLE_AFTER_MS) this._attempt = 0;
      openedAt = 0;
      if (source.readyState !== 2) {
        // CONNECTING: the browser is reconnecting by itself, with Last-Event-ID.
        this._attempt += 1;
        this._setState('reconnecting', { attempt: this._attempt, transport: 'sse', ...lastClose });
        return;
      }
      // CLOSED: refused (e.g. 503 at capacity); retry with backoff from the last id.
      this._socket = null;
      source.onopen = source.onmessage = source.onerror = null;
      const delayMs = backoffDelay(this._attempt, this.backoffMs, this.maxBackoffMs);
      this._attempt += 1;
      this._setState('reconnecting', { attempt: this._attempt, delayMs, transport: 'sse', ...lastClose });
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        this._open();
      }, delayMs);
    };
  }

  _handleMessage(raw) {
    if (typeof raw !== 'string') return;
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    if (!message || typeof message !== 'object' || Array.isArray(message)) return;
    if (message.event === 'new_trending') {
      const id = typeof message.id === 'string' && message.id !== '' ? message.id : null;
      if (id) {
        // A resumed connection may replay what was already shown; show each id once. Ids are
        // per region (each region has its own history), so the region is part of the key.
        const key = `${message.region}:${id}`;
        if (this._recentIds.includes(key)) return;
        this._recentIds.push(key);
        if (this._recentIds.length > RECENT_IDS) this._recentIds.shift();
        this.lastId = id;
        if (this.regions.includes(message.region)) this.lastIds[message.region] = id;
      }
      this._call('onNotification', message);
      if (this._showNotice(message)) return;
      if (this.options.toasts !== false && typeof document !== 'undefined') this.showToast(message);
    } else if (message.event === 'resync') {
      if (typeof message.latest === 'string' && message.latest !== '') {
        this.lastId = message.latest;
        if (this.regions.includes(message.region)) this.lastIds[message.region] = message.latest;
      }
      this._call('onResync', message);
    }
    // Other events are for newer clients; ignore them.
  }

  /** Asks for permission to show system notifications; call it from a user gesture (a click).
   * Resolves to the permission: "granted", "denied" or "default". */
  static async requestNoticePermission() {
    const Notice = globalThis.Notification;
    if (typeof Notice !== 'function') return 'denied';
    if (Notice.permission !== 'default') return Notice.permission;
    return Notice.requestPermission();
  }

  /** With `backgroundNotices`, while the page is hidden and permission is granted: shows the
   * notification as a system notification and returns true. Otherwise false (show a toast). */
  _showNotice(notification) {
    if (this.options.backgroundNotices !== true) return false;
    const Notice = globalThis.Notification;
    if (typeof Notice !== 'function' || Notice.permission !== 'granted') return false;
    if (typeof document === 'undefined' || document.visibilityState !== 'hidden') return false;
    const region = String(notification.region ?? '');
    const format = this.options.formatLabel;
    const heading = typeof format === 'function' ? String(format(region)) : `Trending in ${region}`;
    const text = (value) => (value === undefined || value === null ? '' : String(value));
    const options = {
      body: `${text(notification.title)}\n${text(notification.channel)}`,
      // One system notification per message, even when a resume delivers it again.
      tag: typeof notification.id === 'string' ? `tvs-${notification.id}` : undefined,
      dir: notification.rtl === true ? 'rtl' : 'ltr',
      lang: notification.rtl === true ? (rtlLanguage(region) || 'ar') : '',
    };
    const icon = safeImageUrl(notification.thumbnail);
    if (icon) options.icon = icon;
    try {
      const notice = new Notice(heading, options);
      notice.onclick = () => {
        if (typeof window !== 'undefined' && typeof window.focus === 'function') window.focus();
        this._call('onToastClick', notification);
        notice.close();
      };
      return true;
    } catch {
      // Some browsers only allow notifications from a service worker: fall back to a toast.
      return false;
    }
  }

  _call(name, ...args) {
    const callback = this.options[name];
    if (typeof callback !== 'function') return;
    try {
      callback(...args);
    } catch (error) {
      // A throwing callback must not break delivery of the next message.
      setTimeout(() => {
        throw error;
      });
    }
  }

  _setState(state, detail) {
    const changed = state !== this.state;
    this.state = state;
    if (this._statusEl) {
      this._statusEl.dataset.state = state;
      this._statusEl.textContent = STATE_LABELS[state];
      this._statusEl.title = state === 'open' ? `Receiving ${this.region} notifications` : STATE_LABELS[state];
    }
    if (changed || state === 'reconnecting') this._call('onState', state, { region: this.region, ...detail });
  }

  _setupStatusElement(status) {
    if (status === false) return;
    if (status && typeof status === 'object' && status.nodeType === 1) {
      this._statusEl = status;
    } else {
      this._statusEl = document.createElement('span');
      this._statusEl.classList.add('tvs-status--floating');
      this._ownsStatusEl = true;
      (document.body || document.documentElement).appendChild(this._statusEl);
    }
    this._statusEl.classList.add('tvs-status');
    this._statusEl.setAttribute('role', 'status');
  }

  _toastContainer() {
    if (this._container && this._container.isConnected) return this._container;
    let container = document.querySelector('.tvs-toasts');
    if (!container) {
      container = document.createElement('section');
      container.className = 'tvs-toasts';
      container.setAttribute('aria-label', 'Trending notifications');
      (document.body || document.documentElement).appendChild(container);
    }
    container.classList.add('tvs-toasts');
    container.setAttribute('aria-live', 'polite');
    container.setAttribute('aria-atomic', 'false');
    this._container = container;
    return container;
  }

  /** Shows one notification as a toast and returns its element. */
  showToast(notification) {
    const container = this._toastContainer();
    const region = String(notification.region ?? '');
    const text = (value) => (value === undefined || value === null ? '' : String(value));

    const toast = document.createElement('article');
    toast.className = 'tvs-toast';
    toast.dataset.region = region;
    if (typeof notification.video_id === 'string') toast.dataset.videoId = notification.video_id;
    if (notification.rtl === true) {
      toast.setAttribute('dir', 'rtl');
      toast.setAttribute('lang', rtlLanguage(region) || 'ar');
    } else {
      toast.setAttribute('dir', 'ltr');
    }

    const thumbUrl = safeImageUrl(notification.thumbnail);
    const thumbBox = document.createElement('div');
    thumbBox.className = 'tvs-toast__thumb-box';
    if (thumbUrl) {
      const img = document.createElement('img');
      img.className = 'tvs-toast__thumb';
      img.alt = '';
      img.decoding = 'async';
      img.referrerPolicy = 'no-referrer';
      img.addEventListener('error', () => img.remove(), { once: true });
      img.src = thumbUrl;
      thumbBox.appendChild(img);
    }
    toast.appendChild(thumbBox);

    const body = document.createElement('div');
    body.className = 'tvs-toast__body';
    const label = document.createElement('p');
    label.className = 'tvs-toast__label';
    const format = this.options.formatLabel;
    label.textContent = typeof format === 'function' ? String(format(region)) : `Trending in ${region}`;
    // The heading and the dismiss button are in the page's language, not the video's.
    const pageLang = document.documentElement.lang;
    if (toast.hasAttribute('lang') && pageLang) label.setAttribute('lang', pageLang);
    const title = isolatedLine(document, 'tvs-toast__title', text(notification.title));
    const channel = isolatedLine(document, 'tvs-toast__channel', text(notification.channel));
    body.append(label, title, channel);
    toast.appendChild(body);

    const dismiss = document.createElement('button');
    dismiss.type = 'button';
    dismiss.className = 'tvs-toast__close';
    dismiss.setAttribute('aria-label', 'Dismiss');
    dismiss.textContent = '×';
    if (toast.hasAttribute('lang') && pageLang) dismiss.setAttribute('lang', pageLang);
    toast.appendChild(dismiss);

    let remaining = this.toastMs;
    let startedAt = Date.now();
    let timer = null;
    const leave = () => this._dismissToast(toast, () => clearTimeout(timer));
    const resume = () => {
      clearTimeout(timer);
      startedAt = Date.now();
      timer = setTimeout(leave, remaining);
    };
    const pause = () => {
      clearTimeout(timer);
      remaining = Math.max(1000, remaining - (Date.now() - startedAt));
    };
    toast.addEventListener('mouseenter', pause);
    toast.addEventListener('mouseleave', resume);
    toast.addEventListener('focusin', pause);
    toast.addEventListener('focusout', resume);
    dismiss.addEventListener('click', (event) => {
      event.stopPropagation();
      leave();
    });
    if (typeof this.options.onToastClick === 'function') {
      toast.dataset.clickable = '';
      toast.tabIndex = 0;
      const activate = () => this._call('onToastClick', notification);
      toast.addEventListener('click', activate);
      toast.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' && event.target === toast) activate();
      });
    }
    toast._tvsLeave = leave;

    container.prepend(toast);
    resume();

    const live = [...container.children].filter(
      (el) => el.classList.contains('tvs-toast') && !el.classList.contains('tvs-toast--leaving'),
    );
    for (const old of live.slice(this.maxToasts)) {
      if (typeof old._tvsLeave === 'function') old._tvsLeave();
      else old.remove();
    }
    return toast;
  }

  _dismissToast(toast, cancelTimer) {
    cancelTimer();
    if (toast.classList.contains('tvs-toast--leaving')) return;
    if (reducedMotion(window) || !toast.isConnected) {
      toast.remove();
      return;
    }
    toast.classList.add('tvs-toast--leaving');
    const done = () => toast.remove();
    toast.addEventListener('animationend', done, { once: true });
    setTimeout(done, 400);
  }
}

export default TrendingNotifier;
