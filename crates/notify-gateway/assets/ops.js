// The ops page: follows /ops/stream (Server-Sent Events, one snapshot a second, shared by
// every viewer) and renders each snapshot. Every value is set as text, never as markup.
// EventSource reconnects by itself; the page says when the feed is stale.

const $ = (id) => document.getElementById(id);
const integer = new Intl.NumberFormat('en');
const decimal = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });

function text(id, value) {
  $(id).textContent = value;
}

function rate(value) {
  return value === null || value === undefined ? '–' : decimal.format(value);
}

function duration(seconds) {
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const parts = [];
  if (days) parts.push(`${days}d`);
  if (days || hours) parts.push(`${hours}h`);
  parts.push(`${minutes}m`, `${seconds % 60}s`);
  return parts.join(' ');
}

function latency(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  return seconds < 1 ? `≤ ${decimal.format(seconds * 1000)} ms` : `≤ ${decimal.format(seconds)} s`;
}

function fillTable(id, rows) {
  const body = $(id).querySelector('tbody');
  const fresh = document.createElement('tbody');
  for (const cells of rows) {
    const row = document.createElement('tr');
    for (const cell of cells) {
      const td = document.createElement('td');
      td.textContent = cell;
      row.append(td);
    }
    fresh.append(row);
  }
  if (rows.length === 0) {
    const row = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = 3;
    td.className = 'muted';
    td.textContent = 'none';
    row.append(td);
    fresh.append(row);
  }
  body.replaceWith(fresh);
}

function render(snapshot) {
  const readiness = $('readiness');
  readiness.dataset.state = snapshot.readiness;
  readiness.textContent = snapshot.ready ? 'ready' : `not ready: ${snapshot.readiness}`;

  const { connections } = snapshot;
  text('connections', integer.format(connections.total));
  const used = connections.capacity ? (100 * connections.total) / connections.capacity : 0;
  text('capacity', `of ${integer.format(connections.capacity)} (${decimal.format(used)} %)`);
  text('publishes-rate', rate(snapshot.rates.publishes_per_second));
  text('publishes-total', `${integer.format(snapshot.totals.publishes)} received`);
  text('deliveries-rate', rate(snapshot.rates.deliveries_per_second));
  text('deliveries-total', `${integer.format(snapshot.totals.deliveries)} written`);
  text('fanout-p99', latency(snapshot.rates.fanout_p99_seconds));
  text('slow-clients', integer.format(snapshot.totals.slow_client_disconnects));
  text('dropped', `${integer.format(snapshot.totals.dropped)} messages missed`);

  const { broker } = snapshot;
  text('broker-kind', broker.kind);
  $('broker-state').dataset.state = broker.state;
  text('broker-state', `${broker.linked ? 'linked' : `not linked (${broker.state})`} · ${integer.format(broker.reconnects)} reconnects`);

  fillTable('regions', Object.entries(connections.by_region).map(([region, count]) => [
    region,
    integer.format(count),
    connections.total ? `${decimal.format((100 * count) / connections.total)} %` : '–',
  ]));
  fillTable('bad-payloads', Object.entries(snapshot.bad_payloads).map(([reason, count]) => [reason, integer.format(count)]));
  fillTable('resumes', Object.entries(snapshot.resumes).map(([source, count]) => [source, integer.format(count)]));

  text('version', `version ${snapshot.version}`);
  text('uptime', duration(snapshot.uptime_seconds));
  text('sockets', `${integer.format(snapshot.sockets_open)} open sockets`);
  text('feed', `live · ${new Date().toLocaleTimeString()}`);
  $('feed').dataset.stale = 'false';
}

let lastSnapshotAt = 0;
const source = new EventSource('/ops/stream');
source.onmessage = (event) => {
  lastSnapshotAt = Date.now();
  render(JSON.parse(event.data));
};
source.onerror = () => {
  text('feed', 'feed lost; reconnecting…');
  $('feed').dataset.stale = 'true';
};
setInterval(() => {
  if (lastSnapshotAt && Date.now() - lastSnapshotAt > 3000) {
    text('feed', `stale: no snapshot for ${Math.round((Date.now() - lastSnapshotAt) / 1000)} s`);
    $('feed').dataset.stale = 'true';
  }
}, 1000);
