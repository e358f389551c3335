// Formatting and validation helpers for the dashboard. No DOM here.

export const FUNCTIONS = {
  3: 'Read holding registers (3)',
  4: 'Read input registers (4)',
  6: 'Write single register (6)',
  16: 'Write multiple registers (16)',
};

export const RESULT_CODES = {
  200: 'success',
  400: 'bad request',
  401: 'not authenticated',
  403: 'not allowed',
  404: 'unknown target',
  410: 'history gone',
  413: 'too large',
  429: 'rate limited',
  503: 'upstream unavailable',
  2001: 'frame error',
  2002: 'timeout',
  2003: 'device queue full',
  2004: 'device unknown or offline',
  2005: 'no register-map entry',
  2006: 'Modbus exception',
};

// A decoded value for display: numbers to at most 3 decimals, booleans as on/off.
export function formatValue(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Math.round(v * 1000) / 1000);
  return String(v);
}

// "500 ms", "5 s", "2 min" from milliseconds, for intervals.
export function duration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${+(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${+(ms / 60000).toFixed(1)} min`;
  return `${+(ms / 3600000).toFixed(1)} h`;
}

// "3 s ago", "5 min ago", … from a time in ms (or an ISO string) to `now` in ms.
export function ago(when, now = Date.now()) {
  const t = typeof when === 'string' ? Date.parse(when) : when;
  if (!Number.isFinite(t) || t <= 0) return 'never';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// "01030000000C45CF" → "01 03 00 00 00 0C 45 CF".
export function spacedHex(hex) {
  return (hex || '').replace(/(..)(?=.)/g, '$1 ');
}

// Parses "1, 2, 0x10" into register values 0..65535.
export function parseRegisterValues(text) {
  const parts = String(text).split(/[\s,;]+/).filter((p) => p !== '');
  if (parts.length === 0) return { error: 'enter at least one value' };
  const values = [];
  for (const p of parts) {
    const n = /^0x[0-9a-f]+$/i.test(p) ? parseInt(p, 16) : /^-?\d+$/.test(p) ? Number(p) : NaN;
    if (!Number.isInteger(n) || n < -32768 || n > 65535) return { error: `"${p}" is not a register value (0..65535)` };
    values.push(n < 0 ? n + 65536 : n);
  }
  return { values };
}

// Builds the client frame for a command from the panel's fields, or { error }.
export function buildCommand({ deviceId, fn, address, count, values, timeoutMs, requestId }) {
  const f = Number(fn);
  if (!FUNCTIONS[f]) return { error: 'choose a function' };
  const addr = Number(address);
  if (!Number.isInteger(addr) || addr < 0 || addr > 65535) return { error: 'address must be 0..65535' };
  const frame = { action: 'command', requestId, deviceId, function: f, address: addr };
  if (f === 3 || f === 4) {
    const n = Number(count);
    if (!Number.isInteger(n) || n < 1 || n > 125) return { error: 'count must be 1..125' };
    frame.count = n;
  } else {
    const parsed = parseRegisterValues(values);
    if (parsed.error) return parsed;
    if (f === 6 && parsed.values.length !== 1) return { error: 'function 6 writes exactly one value' };
    if (parsed.values.length > 123) return { error: 'at most 123 values' };
    frame.values = parsed.values;
  }
  if (timeoutMs !== undefined && timeoutMs !== '') {
    const t = Number(timeoutMs);
    if (!Number.isInteger(t) || t < 1 || t > 60000) return { error: 'timeout must be 1..60000 ms' };
    frame.timeoutMs = t;
  }
  return { frame };
}

// A one-line summary of a server frame for the event log.
export function summarize(frame) {
  const d = frame.data || {};
  switch (frame.type) {
    case 'device.online':
      return `${d.deviceId} online`;
    case 'device.offline':
      return `${d.deviceId} offline`;
    case 'device.unresponsive':
      return `${d.deviceId} unresponsive: no good reply to ${d.failures} polls in a row`;
    case 'device.responsive':
      return `${d.deviceId} responsive again`;
    case 'device.data':
    case 'command.result': {
      if (frame.code !== 200) return `${d.deviceId}: ${frame.code} ${frame.msg || RESULT_CODES[frame.code] || ''}`.trim();
      const names = Object.entries(d.values || {}).map(([k, v]) => `${k}=${formatValue(v.value)}`);
      const what = d.solicited === false ? 'unsolicited' : `${d.poll ? 'poll ' : ''}fn ${d.function} @${d.address}`;
      return `${d.deviceId} ${what}: ${names.slice(0, 4).join(' ')}${names.length > 4 ? ' …' : ''}`;
    }
    case 'command.accepted':
      return `command ${d.commandId} accepted`;
    case 'presence':
      return `${d.clientId} ${frame.code === 1001 ? 'joined' : 'left'} ${frame.groupName || ''}`.trim();
    case 'error':
      return `${frame.code} ${frame.msg || ''}`.trim();
    default:
      return frame.msg || frame.type;
  }
}
