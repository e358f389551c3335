// The devbridge dashboard: fleet view, device pages, event log. One WebSocket (as the fleet
// system) feeds everything; /api/devices and /api/readings fill in what happened before.
// The page's state survives a reload in sessionStorage: the event log and, per stream, the
// last offset seen, so the new connection resumes with `recover` (on whichever replica).
import { Connection } from './connection.js';
import { drawChart } from './chart.js';
import { Fleet } from './fleet.js';
import { FUNCTIONS, RESULT_CODES, ago, buildCommand, duration, formatValue, spacedHex, summarize } from './format.js';
import { Ring, StreamPositions } from './stream.js';

const params = new URLSearchParams(location.search);
const SYSTEM = params.get('system') || 'fleet';
const TOKEN = params.get('token') || '';
const STORE_KEY = `devbridge.dashboard.${SYSTEM}`;
const LOG_SIZE = 300;

const saved = (() => {
  try {
    return JSON.parse(sessionStorage.getItem(STORE_KEY) || '{}');
  } catch {
    return {};
  }
})();

const fleet = new Fleet();
const log = new Ring(LOG_SIZE, (saved.log || []).map((e) => ({ ...e, restored: true })));
const pending = new Map();  // requestId → {deviceId, commandId, frame, result, error}
let seq = 0;
const conn = new Connection({
  systemId: SYSTEM,
  clientId: saved.clientId || `dashboard-${Math.random().toString(36).slice(2, 10)}`,
  token: TOKEN,
  positions: new StreamPositions(saved.positions),
});

// ---- persistence ----
let saveTimer = null;
function save() {
  clearTimeout(saveTimer);
  saveTimer = null;
  sessionStorage.setItem(
    STORE_KEY,
    JSON.stringify({ clientId: conn.clientId, positions: conn.positions.toJSON(), log: log.items }),
  );
}
function saveSoon() {
  if (saveTimer === null) saveTimer = setTimeout(save, 250);
}
addEventListener('pagehide', save);

// ---- small DOM helpers ----
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
// Replaces `root`'s content, skipping the null/false of conditional parts.
const show = (root, ...parts) => root.replaceChildren(...parts.filter((p) => p !== null && p !== undefined && p !== false));

async function api(path) {
  const headers = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
  const res = await fetch(path, { headers });
  const body = await res.json().catch(() => ({ code: res.status, msg: res.statusText }));
  if (body.code !== 0) throw new Error(`${body.code} ${body.msg || ''}`.trim());
  return body.data;
}

// Every device, page by page (/api/devices is paged: `next` names the last id of a page).
async function allDevices() {
  const devices = [];
  let after = '';
  do {
    const data = await api(`/api/devices?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    devices.push(...data.devices);
    after = data.next;
  } while (after);
  return devices;
}

function statusBadge(online) {
  return h('span', { class: `badge ${online ? 'on' : 'off'}`, 'data-testid': 'status' }, online ? 'online' : 'offline');
}

// A polled device that stopped answering (online or not is separate).
function unresponsiveBadge(d) {
  if (!d.polling?.unresponsive) return null;
  return h('span', { class: 'badge warn', 'data-testid': 'unresponsive', title: `no good reply to ${d.polling.failures} polls in a row` },
    'unresponsive');
}

// The device's polling plan and how its last poll went.
function pollingPanel(d) {
  const p = d.polling;
  if (!p || (p.plan && p.plan.length === 0)) return h('p', { class: 'muted' }, 'Not polled: the register map gives this device no plan.');
  const outcome = p.lastCode === null ? 'not polled yet'
    : `${ago(p.lastPollAt)} · ${p.lastCode} ${RESULT_CODES[p.lastCode] || ''}`.trim();
  return h('div', { 'data-testid': 'polling' },
    p.plan === null ? h('p', { class: 'muted small' }, 'plan: loading…') : h('table', { class: 'values' },
      h('thead', {}, h('tr', {}, h('th', {}, 'fn'), h('th', { class: 'num' }, 'address'), h('th', { class: 'num' }, 'count'), h('th', {}, 'every'))),
      h('tbody', {}, p.plan.map((b) => h('tr', {}, h('td', {}, b.function), h('td', { class: 'num' }, b.address),
        h('td', { class: 'num' }, b.count), h('td', {}, duration(b.everyMs)))))),
    h('p', { class: 'small' }, 'Last poll: ', h('span', { 'data-testid': 'last-poll' }, outcome)),
    h('p', { class: 'small' }, 'Failures in a row: ', h('span', { 'data-testid': 'poll-failures' }, String(p.failures)),
      p.unresponsive ? [' ', unresponsiveBadge(d), h('span', { class: 'muted' }, ` probing every ${duration(p.backoffMs)}`)] : null));
}

// `values`: an object of name → {value, unit, raw}, or [name, value] pairs in order.
function valuesTable(values, { withTime = false } = {}) {
  const entries = Array.isArray(values) ? values : Object.entries(values || {});
  if (entries.length === 0) return h('p', { class: 'muted' }, 'no values');
  return h(
    'table',
    { class: 'values', 'data-testid': 'values' },
    h('thead', {}, h('tr', {}, h('th', {}, 'name'), h('th', { class: 'num' }, 'value'), h('th', {}, 'unit'),
      withTime ? h('th', {}, 'updated') : h('th', {}, 'raw'))),
    h('tbody', {}, entries.map(([name, v]) =>
      h('tr', { 'data-name': name }, h('td', {}, name), h('td', { class: 'num' }, formatValue(v.value)),
        h('td', {}, v.unit || ''), withTime ? h('td', { class: 'muted', 'data-at': v.at }, ago(v.at))
          : h('td', { class: 'mono' }, (v.raw || []).join(' '))))),
  );
}

// ---- views ----
let view = { name: '', render() {}, update() {} };

const fleetView = {
  name: 'fleet',
  render(root) {
    const list = fleet.list();
    show(root,
      h('div', { class: 'toolbar' },
        h('h1', {}, 'Fleet'),
        h('span', { class: 'muted', 'data-testid': 'fleet-count' }, this.count(list)),
        h('input', { type: 'search', id: 'filter', placeholder: 'filter devices', value: this.filter || '',
          oninput: (e) => { this.filter = e.target.value; this.render(root); $('#filter').focus(); } }),
        h('label', { class: 'check small' }, h('input', { type: 'checkbox', id: 'only-unresponsive', checked: !!this.onlyUnresponsive,
          onchange: (e) => { this.onlyUnresponsive = e.target.checked; this.render(root); } }), ' unresponsive only')),
      list.length === 0 ? h('p', { class: 'empty' }, 'No devices yet. They appear here when their first heartbeat arrives.') : null,
      h('div', { class: 'cards' }, list.filter((d) => this.shows(d)).map((d) => this.card(d))),
    );
  },
  shows(d) {
    return (!this.filter || d.deviceId.includes(this.filter)) && (!this.onlyUnresponsive || !!d.polling?.unresponsive);
  },
  card(d) {
    const values = fleet.orderedValues(d.deviceId).slice(0, 4);
    return h('a', { class: `card ${d.online ? '' : 'is-off'}`, href: `#/device/${encodeURIComponent(d.deviceId)}`,
      'data-device': d.deviceId },
      h('div', { class: 'card-head' }, h('strong', {}, d.deviceId), h('span', {}, unresponsiveBadge(d), ' ', statusBadge(d.online))),
      h('div', { class: 'muted small', 'data-at': d.lastSeen }, `last seen ${ago(d.lastSeen)}`),
      values.length ? h('dl', {}, values.map(([k, v]) => [h('dt', {}, k), h('dd', {}, `${formatValue(v.value)} ${v.unit || ''}`)]))
        : h('p', { class: 'muted small' }, 'no readings yet'));
  },
  update(device) {
    const root = $('#view');
    const old = device && root.querySelector(`[data-device="${CSS.escape(device.deviceId)}"]`);
    if (old && this.shows(device)) old.replaceWith(this.card(device));
    else if (old || !device || this.shows(device)) this.render(root);  // a card comes or goes
    const count = $('[data-testid="fleet-count"]');
    if (count) count.textContent = this.count(fleet.list());
  },
  count(list) {
    const unresponsive = fleet.unresponsiveCount();
    return `${list.filter((d) => d.online).length} of ${list.length} online${unresponsive ? ` · ${unresponsive} unresponsive` : ''}`;
  },
};

const deviceView = {
  name: 'device',
  id: '',
  chartName: '',
  render(root) {
    const d = fleet.device(this.id);
    const names = fleet.numericNames(this.id);
    if (!names.includes(this.chartName)) this.chartName = names[0] || '';
    const fnSelect = h('select', { id: 'cmd-function', name: 'function' },
      Object.entries(FUNCTIONS).map(([k, label]) => h('option', { value: k }, label)));
    root.replaceChildren(
      h('div', { class: 'toolbar' }, h('a', { href: '#/', class: 'back' }, '← Fleet'),
        h('h1', { 'data-testid': 'device-id' }, d.deviceId), statusBadge(d.online),
        h('span', { class: 'muted', id: 'device-seen', 'data-at': d.lastSeen }, `last seen ${ago(d.lastSeen)}`)),
      h('div', { class: 'grid' },
        h('section', { class: 'panel' }, h('h2', {}, 'Live values'), h('div', { id: 'live-values' }, valuesTable(fleet.orderedValues(d.deviceId), { withTime: true }))),
        h('section', { class: 'panel' },
          h('div', { class: 'panel-head' }, h('h2', {}, 'Chart'),
            h('select', { id: 'chart-name', onchange: (e) => { this.chartName = e.target.value; this.drawChart(); } },
              names.map((n) => h('option', { value: n, selected: n === this.chartName }, n)))),
          h('canvas', { id: 'chart', 'data-testid': 'chart' })),
        h('section', { class: 'panel' }, h('h2', {}, 'Polling'), h('div', { id: 'polling' }, pollingPanel(d))),
        h('section', { class: 'panel' }, h('h2', {}, 'Command'),
          h('form', { id: 'command-form', onsubmit: (e) => { e.preventDefault(); this.sendCommand(); } },
            h('label', {}, 'Function', fnSelect),
            h('div', { class: 'row' },
              h('label', {}, 'Address', h('input', { id: 'cmd-address', type: 'number', min: 0, max: 65535, value: 0, required: true })),
              h('label', { id: 'count-field' }, 'Count', h('input', { id: 'cmd-count', type: 'number', min: 1, max: 125, value: 12 })),
              h('label', { id: 'values-field', hidden: true }, 'Values', h('input', { id: 'cmd-values', placeholder: 'e.g. 215 or 1, 2, 0x10' })),
              h('label', {}, 'Timeout ms', h('input', { id: 'cmd-timeout', type: 'number', min: 1, max: 60000, placeholder: 'default' }))),
            h('button', { type: 'submit', id: 'cmd-send' }, 'Send')),
          h('div', { id: 'command-result', 'data-testid': 'command-result' })),
        h('section', { class: 'panel wide' },
          h('div', { class: 'panel-head' }, h('h2', {}, 'Raw frames'), h('span', { class: 'muted small' }, '* sent by the device unasked · p: a poll of the plan')),
          h('div', { id: 'frames' }, this.framesTable(d))),
      ),
    );
    fnSelect.addEventListener('change', () => {
      const read = fnSelect.value === '3' || fnSelect.value === '4';
      $('#count-field').hidden = !read;
      $('#values-field').hidden = read;
    });
    this.drawChart();
    this.showResult();
    if (d.polling && d.polling.plan === null) refreshDevices();  // seen in events only: fetch its plan
  },
  framesTable(d) {
    if (d.frames.length === 0) return h('p', { class: 'muted' }, 'no frames yet');
    return h('table', { class: 'frames' },
      h('thead', {}, h('tr', {}, h('th', {}, 'time'), h('th', {}, 'fn'), h('th', {}, 'request'), h('th', {}, 'response'), h('th', { class: 'num' }, 'ms'))),
      h('tbody', {}, [...d.frames].reverse().slice(0, 20).map((f) =>
        h('tr', {}, h('td', {}, new Date(f.receivedAt).toLocaleTimeString()), h('td', {}, f.solicited === false ? `${f.function}*` : f.poll ? `${f.function} p` : f.function),
          h('td', { class: 'mono' }, spacedHex(f.request) || '—'), h('td', { class: 'mono' }, spacedHex(f.response)),
          h('td', { class: 'num' }, f.solicited === false ? '' : formatValue(f.latencyMs))))));
  },
  drawChart() {
    const canvas = $('#chart');
    if (!canvas) return;
    const d = fleet.device(this.id);
    const points = d.series.filter((p) => this.chartName in p.values).map((p) => ({ at: p.at, value: p.values[this.chartName] }));
    drawChart(canvas, points, { unit: d.values[this.chartName]?.unit || '' });
  },
  sendCommand() {
    const requestId = `r${Date.now().toString(36)}${(seq++).toString(36)}`;
    const built = buildCommand({
      deviceId: this.id, requestId, fn: $('#cmd-function').value, address: $('#cmd-address').value,
      count: $('#cmd-count').value, values: $('#cmd-values').value, timeoutMs: $('#cmd-timeout').value,
    });
    if (built.error) {
      pending.set('local', { deviceId: this.id, error: built.error });
      this.lastRequest = 'local';
    } else if (!conn.send(built.frame)) {
      pending.set('local', { deviceId: this.id, error: 'not connected: try again when the connection is live' });
      this.lastRequest = 'local';
    } else {
      pending.set(requestId, { deviceId: this.id, frame: built.frame, state: 'sent' });
      this.lastRequest = requestId;
    }
    this.showResult();
  },
  showResult() {
    const box = $('#command-result');
    if (!box) return;
    const p = pending.get(this.lastRequest);
    if (!p || p.deviceId !== this.id) return box.replaceChildren();
    if (p.error) return box.replaceChildren(h('p', { class: 'error', 'data-state': 'error' }, p.error));
    if (!p.result) {
      return box.replaceChildren(h('p', { class: 'muted', 'data-state': p.state }, p.commandId ? `accepted as ${p.commandId}; waiting for the device…` : 'sending…'));
    }
    const r = p.result;
    if (r.code !== 200) {
      const ex = r.data?.exception ? ` (exception ${r.data.exception.code} ${r.data.exception.name})` : '';
      return box.replaceChildren(h('p', { class: 'error', 'data-state': 'failed' },
        h('strong', {}, `${r.code} ${RESULT_CODES[r.code] || ''}`), ` — ${r.msg || ''}${ex}`));
    }
    box.replaceChildren(
      h('p', { class: 'ok', 'data-state': 'succeeded' }, `200 success in ${formatValue(r.data.latencyMs)} ms`),
      valuesTable(r.data.values),
      h('p', { class: 'mono small' }, `→ ${spacedHex(r.data.request)}`, h('br'), `← ${spacedHex(r.data.response)}`));
  },
  // Refreshes what changed in place, so the command form keeps what is being typed.
  update(device) {
    if (!device || device.deviceId !== this.id || !$('#live-values')) return;
    $('#live-values').replaceChildren(valuesTable(fleet.orderedValues(device.deviceId), { withTime: true }));
    $('#frames').replaceChildren(this.framesTable(device));
    $('#polling').replaceChildren(pollingPanel(device));
    $('#view [data-testid="status"]').replaceWith(statusBadge(device.online));
    const seen = $('#device-seen');
    seen.dataset.at = device.lastSeen;
    seen.textContent = `last seen ${ago(device.lastSeen)}`;
    const names = fleet.numericNames(this.id);
    const select = $('#chart-name');
    if (select.options.length !== names.length) {
      if (!names.includes(this.chartName)) this.chartName = names[0] || '';
      select.replaceChildren(...names.map((n) => h('option', { value: n, selected: n === this.chartName }, n)));
    }
    this.drawChart();
  },
};

const eventsView = {
  name: 'events',
  render(root) {
    root.replaceChildren(
      h('div', { class: 'toolbar' }, h('h1', {}, 'Events'),
        h('input', { type: 'search', id: 'log-filter', placeholder: 'filter', value: this.filter || '',
          oninput: (e) => { this.filter = e.target.value; this.fill(); } })),
      h('div', { class: 'panel' }, h('table', { class: 'log', 'data-testid': 'event-log' },
        h('thead', {}, h('tr', {}, h('th', {}, 'time'), h('th', { class: 'num' }, '#'), h('th', {}, 'type'), h('th', {}, 'event'))),
        h('tbody', { id: 'log-body' }))));
    this.fill();
  },
  row(e) {
    return h('tr', { class: e.restored ? 'restored' : '', 'data-offset': e.offset ?? '' },
      h('td', {}, new Date(e.at).toLocaleTimeString()), h('td', { class: 'num' }, e.offset ?? ''),
      h('td', {}, h('span', { class: `type t-${e.type.replace('.', '-')}` }, e.type)), h('td', {}, e.summary));
  },
  fill() {
    const body = $('#log-body');
    if (!body) return;
    const f = (this.filter || '').toLowerCase();
    body.replaceChildren(...[...log.items].reverse().filter((e) => !f || `${e.type} ${e.summary}`.toLowerCase().includes(f)).map((e) => this.row(e)));
  },
  update(_device, entry) {
    const body = $('#log-body');
    if (!body || !entry) return;
    const f = (this.filter || '').toLowerCase();
    if (f && !`${entry.type} ${entry.summary}`.toLowerCase().includes(f)) return;
    body.prepend(this.row(entry));
    while (body.children.length > LOG_SIZE) body.lastChild.remove();
  },
};

function route() {
  const hash = location.hash || '#/';
  const m = hash.match(/^#\/device\/(.+)$/);
  if (m) {
    deviceView.id = decodeURIComponent(m[1]);
    view = deviceView;
    loadReadings(deviceView.id);
  } else if (hash === '#/events') {
    view = eventsView;
  } else {
    view = fleetView;
  }
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === view.name);
  view.render($('#view'));
}
addEventListener('hashchange', route);

// ---- data ----
const LOAD_FAILED = 'Could not load devices';
async function loadDevices(attempt = 0) {
  try {
    const devices = await allDevices();
    if ($('#banner').textContent.startsWith(LOAD_FAILED)) banner('');
    fleet.load(devices);
    view.render($('#view'));
    // The latest values of each device, a few at a time.
    const ids = devices.map((d) => d.deviceId);
    for (let i = 0; i < ids.length; i += 6) {
      await Promise.all(ids.slice(i, i + 6).map((id) => loadReadings(id, 5, false)));
    }
    view.render($('#view'));
  } catch (err) {
    // With several ingest replicas the list answers 503 while a partition waits for its next
    // owner (a replica just stopped or started): asked again a few times.
    const again = attempt < 10;
    banner(`${LOAD_FAILED}: ${err.message}${again ? '; trying again' : ''}`);
    if (again) setTimeout(() => loadDevices(attempt + 1), 3000);
  }
}

async function loadReadings(id, limit = 200, render = true) {
  try {
    const data = await api(`/api/readings?deviceId=${encodeURIComponent(id)}&limit=${limit}`);
    for (const r of data.readings) fleet.addReading(r);
    if (render && view === deviceView && deviceView.id === id) view.update(fleet.device(id));
  } catch (err) {
    if (render) banner(`Could not load readings of ${id}: ${err.message}`);
  }
}

function banner(text) {
  const el = $('#banner');
  el.textContent = text;
  el.hidden = !text;
}

conn.addEventListener('state', (e) => {
  const { state, detail, node, lastClose } = e.detail;
  const pill = $('#conn');
  pill.dataset.state = state;
  if (lastClose !== null) pill.dataset.lastClose = lastClose;
  pill.textContent = state === 'live' ? `live · ${node}` : state;
  pill.title = detail;
  $('#conn-detail').textContent = detail;
  if (state === 'live') {
    banner('');
    loadDevices();
  }
});

conn.addEventListener('frame', (e) => {
  const { frame } = e.detail;
  let device = null;
  if (frame.type === 'command.accepted' || frame.type === 'error' || frame.type === 'command.result') {
    const p = pending.get(frame.data?.requestId);
    if (p) {
      if (frame.type === 'command.accepted') {
        p.commandId = frame.data.commandId;
        p.state = 'accepted';
      } else if (frame.type === 'error') {
        p.error = `${frame.code} ${frame.msg || RESULT_CODES[frame.code] || ''}`;
      } else {
        p.result = frame;
      }
      if (view === deviceView) deviceView.showResult();
    }
  }
  device = fleet.apply(frame);
  let entry = null;
  if (frame.type !== 'pong' && frame.type !== 'command.accepted') {
    entry = { at: Date.now(), type: frame.type, offset: frame.offset, code: frame.code, summary: summarize(frame) };
    log.push(entry);
    saveSoon();
  } else if (frame.offset !== undefined) {
    saveSoon();
  }
  if (device || view === eventsView) view.update(device, entry);
  $('#log-count').textContent = log.items.length;
});

// Relative times tick; the device list is refreshed now and then for heartbeats' last-seen.
setInterval(() => {
  for (const el of document.querySelectorAll('[data-at]')) {
    const at = Number(el.dataset.at);
    el.textContent = el.textContent.startsWith('last seen') ? `last seen ${ago(at)}` : ago(at);
  }
}, 1000);
// The device list again (heartbeats' last-seen, plans of devices first seen in events); at
// most one request at a time.
let refreshing = null;
function refreshDevices() {
  if (refreshing || conn.state !== 'live') return;
  refreshing = allDevices().then((devices) => {
    fleet.load(devices);
    if (view === fleetView) view.render($('#view'));
    else if (view === deviceView) view.update(fleet.device(deviceView.id));
  }).catch(() => {}).finally(() => { refreshing = null; });
}
setInterval(refreshDevices, 15000);

$('#log-count').textContent = log.items.length;
route();
conn.start();
