// The demo page's script (served as /demo.js; the page's Content-Security-Policy allows no
// inline script). Fills the publish form from /api/info, publishes through /api/publish and
// lists what this page receives through the browser client.
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
let watched = 'US';
try { watched = normalizeRegion(params.get('region') || 'US'); } catch { watched = 'US'; }
let publishMode = 'open';

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

function updateCommand() {
  $('command').textContent = [
    'notify-publish',
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

const notifier = new TrendingNotifier({
  region: watched,
  status: $('status'),
  onNotification: addReceived,
  onResync: (message) => setResult('error', `Missed messages could not be replayed (${message.reason}); showing live updates.`),
});
window.notifier = notifier;

function watch(region) {
  watched = region;
  $('watch-region').value = region;
  notifier.setRegion(region);
  const url = new URL(location.href);
  url.searchParams.set('region', region);
  history.replaceState(null, '', url);
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
    const count = Number(reply.subscribers) || 0;
    let text = `Published to ${reply.region || body.region}: ${count} subscriber${count === 1 ? '' : 's'}.`;
    if (body.region !== watched) text += ` This page watches ${watched}, so no toast here.`;
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

function setupForm(regions) {
  if (!regions.includes(watched)) {
    // The gateway does not serve the requested region: watch the first one it does.
    watched = regions.includes('US') ? 'US' : regions[0];
    notifier.setRegion(watched);
  }
  fillSelect($('watch-region'), regions, watched);
  fillSelect($('region'), regions, watched);
  $('sample').replaceChildren(...SAMPLES.map((sample, index) => {
    const option = document.createElement('option');
    option.value = String(index);
    option.textContent = sample.name;
    return option;
  }));
  const match = SAMPLES.findIndex((sample) => sample.region === watched);
  const index = match >= 0 ? match : SAMPLES.length - 1;
  $('sample').value = String(index);
  applySample(SAMPLES[index], watched);
}

async function loadInfo() {
  try {
    const response = await fetch('/api/info', { headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const info = await response.json();
    const regions = Array.isArray(info.regions) && info.regions.length ? info.regions : FALLBACK_REGIONS;
    publishMode = ['open', 'key', 'disabled'].includes(info.publish) ? info.publish : 'disabled';
    $('info').textContent = `Gateway ${info.version || ''} · broker: ${info.broker || 'unknown'} · publish: ${publishMode}`;
    setupForm(regions);
  } catch (error) {
    publishMode = 'disabled';
    $('info').textContent = `Gateway info unavailable (${error.message})`;
    setupForm(FALLBACK_REGIONS);
  }
  $('key-field').hidden = publishMode !== 'key';
  $('publish-open').hidden = publishMode === 'disabled';
  $('publish-disabled').hidden = publishMode !== 'disabled';
  document.body.dataset.publish = publishMode;
  document.body.dataset.ready = 'true';
}

loadInfo();
