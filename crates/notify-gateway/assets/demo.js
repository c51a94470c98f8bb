// The demo page's script (served as /demo.js; the page's Content-Security-Policy allows no
// inline script). Fills the publish form from /api/info, publishes through /api/publish and
// lists what this page receives through the browser client. A `?region=` this gateway does not
// serve is an error with the served regions to choose from, never a silent switch; the shell
// command it suggests always names this gateway (`--gateway-url`), never a default Redis.
import { TrendingNotifier, normalizeRegion } from '/client.js';

const SAMPLES = [
  { name: 'Arabic (AE, right to left)', region: 'AE', video_id: 'dQw4w9WgXcQ',
    title: 'أخبار عاجلة من دبي: افتتاح أطول جسر معلق في المنطقة', channel: 'قناة الأخبار' },
  { name: 'Czech (CZ, č ž š)', region: 'CZ', video_id: 'cz4Kx9Lm2Qa',
    title: 'Žluťoučký kůň úpěl ďábelské ódy — čeština v šesti minutách', channel: 'Česká škola' },
  { name: 'Finnish (FI, ä ö)', region: 'FI', video_id: 'fi7Tq3Wp0Zc',
    title: 'Hyvää yötä, Helsinki! Revontulet näkyivät myös etelässä', channel: 'Yöpöllöt' },
  { name: 'English (US)', region: 'US', video_id: 'us2Hn8Rv5Yb',
    title: 'Hands-on with the new trail camera: 30 days in Yosemite', channel: 'Outdoor Lab' },
];
const FALLBACK_REGIONS = ['AE', 'FI', 'CZ', 'DK', 'BE', 'GB', 'CH', 'US'];

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// The region the address bar asks for, as typed; `watched` is what the page watches once the
// gateway's regions are known (null: nothing, the request was not a served region).
const requested = params.get('region');
let watched = null;
let wellFormed = 'US';
try { wellFormed = normalizeRegion(requested || 'US'); } catch { wellFormed = null; }
let publishMode = 'open';
let broker = 'unknown';

function setResult(kind, text) {
  $('result').dataset.kind = kind;
  $('result').textContent = text;
}

function fillSelect(select, regions, selected) {
  select.replaceChildren(...regions.map((code) => {
    const option = document.createElement('option');
    option.value = code;
    option.textContent = code;
    option.selected = code === selected;
    return option;
  }));
}

function thumbnailFor(sample) {
  // Served by nothing on purpose: the toast hides a thumbnail that fails to load.
  return `${location.origin}/thumbnails/${encodeURIComponent(sample.video_id)}.jpg`;
}

function applySample(sample, region) {
  const target = region || sample.region;
  if ([...$('region').options].some((o) => o.value === target)) $('region').value = target;
  $('video-id').value = sample.video_id;
  $('title').value = sample.title;
  $('channel').value = sample.channel;
  $('thumbnail').value = thumbnailFor(sample);
  updateCommand();
}

function shellQuote(value) {
  return /^[A-Za-z0-9_./:@%+=-]+$/.test(value) ? value : `'${value.replaceAll("'", `'\\''`)}'`;
}

/** The note above the suggested command, for this gateway's publish mode. */
function commandNote() {
  if (publishMode === 'key') return 'Or from a shell, through this gateway (it needs an API key: put it in a file):';
  if (publishMode === 'disabled') {
    const redis = broker === 'redis' ? ' Or publish to its Redis: --redis-url redis://… instead of --gateway-url.' : '';
    return 'To publish through this gateway, start it with --api-key (or --api-key-file), then from a shell, with that key:' + redis;
  }
  return 'Or from a shell, through this gateway:';
}

function updateCommand() {
  // Always a target: without --gateway-url, notify-publish would publish to whatever Redis
  // runs on its own machine.
  const target = ['--gateway-url', location.origin];
  if (publishMode !== 'open') target.push('--api-key-file', '/path/to/api-key');
  $('command-note').textContent = commandNote();
  $('command').textContent = [
    'notify-publish',
    ...target,
    '--region', $('region').value,
    '--video-id', $('video-id').value,
    '--title', $('title').value,
    '--thumbnail', $('thumbnail').value,
    '--channel', $('channel').value,
  ].map((part, i) => (i === 0 || part.startsWith('--') ? part : shellQuote(part))).join(' ');
}

function addReceived(notification) {
  $('received-empty').hidden = true;
  const item = document.createElement('li');
  // The whole entry follows the title's direction, so a right-to-left title is right-aligned.
  item.dir = notification.rtl ? 'rtl' : 'auto';
  const meta = document.createElement('span');
  meta.className = 'meta';
  const time = new Date((Number(notification.ts) || 0) * 1000);
  meta.textContent = `${notification.region} · ${notification.video_id} · ${time.toLocaleTimeString()}`
    + (notification.id ? ` · id ${notification.id}` : '');
  const title = document.createElement('bdi');
  title.textContent = String(notification.title ?? '');
  title.dir = notification.rtl ? 'rtl' : 'auto';
  item.append(meta, title);
  $('received').prepend(item);
  while ($('received').children.length > 10) $('received').lastElementChild.remove();
}

// Connects once the gateway's regions are known (setupForm), so a region it does not serve is
// never asked for.
const notifier = new TrendingNotifier({
  region: wellFormed || 'US',
  autoConnect: false,
  status: $('status'),
  onNotification: addReceived,
  onResync: (message) => setResult('error', `Missed messages could not be replayed (${message.reason}); showing live updates.`),
});
window.notifier = notifier;

/** Watches `region`; the address bar follows unless this is the page's first choice. */
function watch(region, { updateUrl = true } = {}) {
  watched = region;
  $('region-error').hidden = true;
  $('watch-region').value = region;
  notifier.setRegion(region);
  if (notifier.state === 'closed') notifier.connect();
  if (!updateUrl) return;
  const url = new URL(location.href);
  url.searchParams.set('region', region);
  history.replaceState(null, '', url);
}

/** The address bar asks for a region this gateway cannot serve: say so, offer the served ones. */
function showRegionError(regions) {
  const why = wellFormed
    ? `Region ${wellFormed} is not served by this gateway.`
    : `"${requested}" is not a region code (two letters, ISO 3166-1, e.g. US).`;
  $('region-error-text').textContent = `${why} Choose one of the ${regions.length} regions it serves:`;
  $('region-choices').replaceChildren(...regions.map((code) => {
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = code;
    button.addEventListener('click', () => watch(code));
    item.append(button);
    return item;
  }));
  $('region-error').hidden = false;
  $('status').textContent = 'Not watching';
  $('status').dataset.state = 'closed';
}

$('watch-region').addEventListener('change', (event) => watch(event.target.value));
$('sample').addEventListener('change', (event) => applySample(SAMPLES[Number(event.target.value)]));
for (const id of ['region', 'video-id', 'title', 'channel', 'thumbnail']) $(id).addEventListener('input', updateCommand);
$('region').addEventListener('change', updateCommand);

$('publish-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  if (publishMode === 'disabled') return;
  const body = {
    event: 'new_trending',
    region: $('region').value,
    video_id: $('video-id').value.trim(),
    title: $('title').value,
    thumbnail: $('thumbnail').value.trim(),
    channel: $('channel').value,
    ts: Math.floor(Date.now() / 1000),
  };
  const headers = { 'Content-Type': 'application/json' };
  if (publishMode === 'key') {
    const key = $('api-key').value;
    if (!key) { setResult('error', 'Enter the API key first.'); $('api-key').focus(); return; }
    headers.Authorization = `Bearer ${key}`;
  }
  $('publish').disabled = true;
  setResult('', 'Publishing…');
  try {
    const response = await fetch('/api/publish', { method: 'POST', headers, body: JSON.stringify(body) });
    const reply = await response.json().catch(() => ({}));
    if (!response.ok) {
      setResult('error', `Not published (HTTP ${response.status}): ${reply.error || response.statusText}`);
      return;
    }
    let text = `Published to ${reply.region || body.region}: ${reachText(reply)}.`;
    if (body.region !== watched) {
      text += watched ? ` This page watches ${watched}, so no toast here.` : ' This page watches no region, so no toast here.';
    }
    setResult('ok', text);
    if (body.region !== watched) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'link';
      button.textContent = `Watch ${body.region}`;
      button.addEventListener('click', () => watch(body.region));
      $('result').append(' ', button);
    }
  } catch (error) {
    setResult('error', `Not published: ${error.message}`);
  } finally {
    $('publish').disabled = false;
  }
});

/** How far a publish reached, named for what the gateway counted (docs/PROTOCOL.md). */
function reachText(reply) {
  const plural = (count, noun) => `${count} ${noun}${count === 1 ? '' : 's'}`;
  if (Number.isInteger(reply.clients_reached)) return `reached ${plural(reply.clients_reached, 'browser')}`;
  if (Number.isInteger(reply.gateway_nodes_reached)) return `reached ${plural(reply.gateway_nodes_reached, 'gateway node')}`;
  return `${plural(Number(reply.subscribers) || 0, 'subscriber')}`;
}

function setupForm(regions) {
  if (requested === null && !regions.includes(wellFormed)) {
    // No region asked for and the gateway does not serve US: the first one it does.
    wellFormed = regions[0];
  }
  const served = regions.includes(wellFormed);
  fillSelect($('watch-region'), regions, served ? wellFormed : null);
  if (served) {
    watch(wellFormed, { updateUrl: false });
  } else {
    // A blank choice keeps the picker honest: nothing is watched until one is chosen.
    const none = document.createElement('option');
    none.value = '';
    none.textContent = '—';
    none.selected = true;
    none.disabled = true;
    $('watch-region').prepend(none);
    showRegionError(regions);
  }
  fillSelect($('region'), regions, served ? wellFormed : regions[0]);
  $('sample').replaceChildren(...SAMPLES.map((sample, index) => {
    const option = document.createElement('option');
    option.value = String(index);
    option.textContent = sample.name;
    return option;
  }));
  const match = SAMPLES.findIndex((sample) => sample.region === $('region').value);
  const index = match >= 0 ? match : SAMPLES.length - 1;
  $('sample').value = String(index);
  applySample(SAMPLES[index], $('region').value);
}

async function loadInfo() {
  try {
    const response = await fetch('/api/info', { headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const info = await response.json();
    const regions = Array.isArray(info.regions) && info.regions.length ? info.regions : FALLBACK_REGIONS;
    publishMode = ['open', 'key', 'disabled'].includes(info.publish) ? info.publish : 'disabled';
    broker = info.broker || 'unknown';
    $('info').textContent = `Gateway ${info.version || ''} · broker: ${info.broker || 'unknown'} · publish: ${publishMode}`;
    setupForm(regions);
  } catch (error) {
    publishMode = 'disabled';
    $('info').textContent = `Gateway info unavailable (${error.message})`;
    // Without the gateway's list, trust a well-formed requested region (the WebSocket's own
    // 400 would say if it is not served).
    const extra = wellFormed && !FALLBACK_REGIONS.includes(wellFormed) ? [wellFormed] : [];
    setupForm([...extra, ...FALLBACK_REGIONS]);
  }
  $('key-field').hidden = publishMode !== 'key';
  $('publish-open').hidden = publishMode === 'disabled';
  $('publish-disabled').hidden = publishMode !== 'disabled';
  document.body.dataset.publish = publishMode;
  document.body.dataset.ready = 'true';
}

loadInfo();
