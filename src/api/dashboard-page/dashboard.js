// The live page: polls /dashboard/data (cumulative counters and histograms of the gateway's own metrics) and turns
// successive snapshots into rates and quantiles, the way Prometheus's rate() and histogram_quantile() would.
'use strict';

const POLL_MS = 2000;
/** Points kept for the charts: three minutes. */
const HISTORY = 90;
/** Rates and quantiles compare the newest snapshot with the one this many polls earlier (up to 10 s). */
const WINDOW_POLLS = 5;
const COLORS = ['#2e90fa', '#f79009', '#12b76a', '#ee46bc'];

const snapshots = [];
const points = [];

const $ = (id) => document.getElementById(id);

function setText(id, text) {
  $(id).textContent = text;
}

function formatNumber(value, digits = 1) {
  if (value === null || !Number.isFinite(value)) return '–';
  if (Math.abs(value) >= 1000) return value.toLocaleString('en', { maximumFractionDigits: 0 });
  return value.toLocaleString('en', { maximumFractionDigits: digits });
}

function formatSeconds(seconds) {
  if (seconds === null || !Number.isFinite(seconds)) return '–';
  if (seconds < 1) return `${formatNumber(seconds * 1000, seconds < 0.01 ? 2 : 1)} ms`;
  return `${formatNumber(seconds, 2)} s`;
}

function formatBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let unit = 0;
  while (bytes >= 1024 && unit < units.length - 1) {
    bytes /= 1024;
    unit += 1;
  }
  return `${formatNumber(bytes, unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** Prometheus's histogram_quantile over the buckets observed between two cumulative snapshots. */
function quantile(q, older, newer) {
  const counts = newer.counts.map((count, i) => count - older.counts[i]);
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  const bucket = counts.findIndex((count) => count >= rank);
  const upper = newer.bounds[bucket];
  const lower = bucket === 0 ? 0 : newer.bounds[bucket - 1];
  if (upper === null) return lower;
  const below = bucket === 0 ? 0 : counts[bucket - 1];
  return lower + (upper - lower) * ((rank - below) / (counts[bucket] - below));
}

function perSecond(newer, older, read) {
  const seconds = (newer.time - older.time) / 1000;
  return seconds > 0 ? Math.max(0, read(newer) - read(older)) / seconds : null;
}

function errorCount(snapshot) {
  return Object.entries(snapshot.byStatus)
    .filter(([status]) => Number(status) >= 400)
    .reduce((sum, [, count]) => sum + count, 0);
}

/** The names shown, then how many of the tier's `total` entries are left unnamed. */
function nameList(listId, names, total) {
  const item = (text) => {
    const element = document.createElement('li');
    element.textContent = text;
    return element;
  };
  const items = names.map(item);
  if (total > names.length) items.push(item(`… and ${formatNumber(total - names.length, 0)} more`));
  $(listId).replaceChildren(...items);
}

function replaceRows(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(
    ...rows.map((cells) => {
      const row = document.createElement('tr');
      for (const cell of cells) {
        const td = document.createElement('td');
        td.textContent = cell;
        row.append(td);
      }
      return row;
    }),
  );
}

function drawChart(canvasId, series, format) {
  const canvas = $(canvasId);
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const context = canvas.getContext('2d');
  context.scale(ratio, ratio);
  context.clearRect(0, 0, width, height);
  const values = series.flatMap((line) => line.values).filter((value) => value !== null && Number.isFinite(value));
  const top = Math.max(...values, 0) * 1.1 || 1;
  const left = 56;
  const plotWidth = width - left - 4;
  const plotHeight = height - 22;
  const style = getComputedStyle(document.body);
  context.font = '11px system-ui, sans-serif';
  context.fillStyle = style.color;
  context.strokeStyle = 'rgba(128, 128, 128, 0.3)';
  for (const fraction of [0, 0.5, 1]) {
    const y = 4 + plotHeight * (1 - fraction);
    context.beginPath();
    context.moveTo(left, y);
    context.lineTo(width, y);
    context.stroke();
    context.fillText(format(top * fraction), 2, y + 4);
  }
  series.forEach((line, index) => {
    context.strokeStyle = COLORS[index % COLORS.length];
    context.lineWidth = 1.5;
    context.beginPath();
    let drawing = false;
    line.values.forEach((value, i) => {
      if (value === null || !Number.isFinite(value)) {
        drawing = false;
        return;
      }
      const x = left + (plotWidth * i) / Math.max(1, HISTORY - 1);
      const y = 4 + plotHeight * (1 - value / top);
      if (drawing) context.lineTo(x, y);
      else context.moveTo(x, y);
      drawing = true;
    });
    context.stroke();
    context.fillStyle = COLORS[index % COLORS.length];
    context.fillText(line.label, left + 6 + index * 90, height - 4);
  });
}

function render() {
  const newer = snapshots[snapshots.length - 1];
  const older = snapshots[Math.max(0, snapshots.length - 1 - WINDOW_POLLS)];
  const previous = snapshots[Math.max(0, snapshots.length - 2)];
  document.body.dataset.state = 'live';
  setText('status', newer.engineUp ? 'live' : 'engine down');
  $('status').className = `status ${newer.engineUp ? 'live' : 'offline'}`;
  setText('model', newer.model);
  setText('window', older === newer ? '–' : `${Math.round((newer.time - older.time) / 1000)} s`);

  const rps = perSecond(newer, older, (s) => s.requests);
  setText('rps', formatNumber(rps, 2));
  setText('requests-total', formatNumber(newer.requests, 0));
  setText('prompt-tps', formatNumber(perSecond(newer, older, (s) => s.promptTokens)));
  setText('generation-tps', formatNumber(perSecond(newer, older, (s) => s.generationTokens)));
  setText('running', formatNumber(newer.running, 0));
  setText('waiting', formatNumber(newer.waiting, 0));
  setText('kv-cache', `${formatNumber(newer.kvCacheUsage * 100, 1)} %`);
  setText('error-rps', formatNumber(perSecond(newer, older, errorCount), 2));
  for (const [prefix, key] of [['ttft', 'ttft'], ['itl', 'interToken'], ['e2e', 'e2e']]) {
    for (const q of [50, 90, 99]) setText(`${prefix}-p${q}`, formatSeconds(quantile(q / 100, older[key], newer[key])));
  }

  replaceRows(
    'tiers',
    newer.tiers.map((tier) => {
      const lookups = tier.hits + tier.misses;
      return [tier.tier, formatNumber(tier.entries, 0), formatBytes(tier.bytes), lookups > 0 ? `${formatNumber((100 * tier.hits) / lookups)} %` : '–',
        formatNumber(tier.loads, 0), formatNumber(tier.evictions, 0), formatNumber(tier.failures, 0)];
    }),
  );
  setText('slot-count', String(newer.slotAdapters.length));
  setText('slot-capacity', String(newer.slotCapacity));
  const entries = (tier) => newer.tiers.find((entry) => entry.tier === tier)?.entries ?? 0;
  setText('host-count', formatNumber(entries('host'), 0));
  setText('stored-count', formatNumber(entries('disk'), 0));
  nameList('slot-adapters', newer.slotAdapters, newer.slotAdapters.length);
  nameList('host-adapters', newer.hostAdapters, entries('host'));
  nameList('stored-adapters', newer.storedAdapters, entries('disk'));
  replaceRows('tenants', newer.tenants.map((tenant) => [tenant.tenant, String(tenant.running), String(tenant.waiting)]));
  replaceRows(
    'statuses',
    Object.entries(newer.byStatus)
      .sort(([a], [b]) => Number(a) - Number(b))
      .map(([status, count]) => [status, formatNumber(count, 0), formatNumber(perSecond(newer, older, (s) => s.byStatus[status] ?? 0), 2)]),
  );

  points.push({
    rps: perSecond(newer, previous, (s) => s.requests),
    prompt: perSecond(newer, previous, (s) => s.promptTokens),
    generation: perSecond(newer, previous, (s) => s.generationTokens),
    ttft50: quantile(0.5, older.ttft, newer.ttft),
    ttft99: quantile(0.99, older.ttft, newer.ttft),
    running: newer.running,
    waiting: newer.waiting,
  });
  while (points.length > HISTORY) points.shift();
  const column = (key) => points.map((point) => point[key]);
  drawChart('chart-requests', [{ label: 'requests/s', values: column('rps') }], (v) => formatNumber(v, 1));
  drawChart('chart-tokens', [{ label: 'prompt', values: column('prompt') }, { label: 'generated', values: column('generation') }], (v) => formatNumber(v, 0));
  drawChart('chart-ttft', [{ label: 'p50', values: column('ttft50') }, { label: 'p99', values: column('ttft99') }], formatSeconds);
  drawChart('chart-queue', [{ label: 'running', values: column('running') }, { label: 'waiting', values: column('waiting') }], (v) => formatNumber(v, 0));
}

async function poll() {
  try {
    const response = await fetch('/dashboard/data', { cache: 'no-store', credentials: 'same-origin' });
    if (!response.ok) throw new Error(`status ${response.status}`);
    snapshots.push(await response.json());
    while (snapshots.length > WINDOW_POLLS + 1) snapshots.shift();
    render();
  } catch {
    // The gateway restarting or unreachable is a state to show, not an error to throw.
    document.body.dataset.state = 'offline';
    setText('status', 'no answer from the gateway');
    $('status').className = 'status offline';
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
