// The fleet's state as the dashboard sees it: one record per device, built from
// /api/devices and /api/readings and kept current by the event stream. No DOM here.

// Inserts `item` into `list` (oldest first) by `timeOf`, keeping the newest `max`. Live items
// are the newest and just go at the end; history loaded later is put in its place.
function insertByTime(list, item, timeOf, max) {
  let i = list.length;
  while (i > 0 && timeOf(list[i - 1]) > timeOf(item)) i--;
  list.splice(i, 0, item);
  if (list.length > max) list.splice(0, list.length - max);
}

export class Fleet {
  constructor() {
    // deviceId → {deviceId, online, lastSeen (ms), values, frames, series, polling}; `polling` is
    // null for a device without a plan, else {plan (null: not loaded yet), lastPollAt (ms),
    // lastCode, failures, unresponsive, backoffMs}.
    this.devices = new Map();
  }

  device(id) {
    let d = this.devices.get(id);
    if (!d) {
      d = { deviceId: id, online: false, lastSeen: 0, firstSeen: 0, meta: {}, values: {}, order: [], frames: [], series: [], polling: null };
      this.devices.set(id, d);
    }
    return d;
  }

  // From GET /api/devices.
  load(list) {
    for (const item of list) {
      const d = this.device(item.deviceId);
      d.online = !!item.online;
      d.lastSeen = Math.max(d.lastSeen, Date.parse(item.lastSeen) || 0);
      d.firstSeen = Date.parse(item.firstSeen) || 0;
      d.meta = item.meta || {};
      const p = item.polling;
      d.polling = p ? {
        plan: p.plan || [], lastPollAt: Date.parse(p.lastPollAt) || 0, lastCode: p.lastCode ?? null,
        failures: p.failures || 0, unresponsive: !!p.unresponsive, backoffMs: p.backoffMs || 0,
      } : null;
    }
  }

  polling(d) {
    // Known from events only: the plan comes with the next device list (plan null till then).
    if (!d.polling) d.polling = { plan: null, lastPollAt: 0, lastCode: null, failures: 0, unresponsive: false, backoffMs: 0 };
    return d.polling;
  }

  // Adds a stored or live reading (the data of device.data / command.result with code 200).
  // Live readings list values in register-map order (stored ones come back from jsonb
  // reordered), so they set the order values are shown in.
  addReading(r, { live = false, maxFrames = 50, maxSeries = 500 } = {}) {
    const d = this.device(r.deviceId);
    const names = Object.keys(r.values || {});
    if (live ? names.length > 0 : d.order.length === 0) d.order = names;
    const at = Date.parse(r.receivedAt) || Date.now();
    d.lastSeen = Math.max(d.lastSeen, at);
    for (const [name, v] of Object.entries(r.values || {})) {
      const known = d.values[name];
      if (!known || known.at <= at) d.values[name] = { value: v.value, unit: v.unit, at };
    }
    if (!d.frames.some((f) => f.commandId === r.commandId && f.receivedAt === r.receivedAt)) {
      insertByTime(d.frames, r, (f) => Date.parse(f.receivedAt), maxFrames);
      const point = { at, values: {} };
      for (const [name, v] of Object.entries(r.values || {})) {
        if (typeof v.value === 'number') point.values[name] = v.value;
      }
      insertByTime(d.series, point, (p) => p.at, maxSeries);
    }
    return d;
  }

  // Applies one server frame; returns the device it changed, or null.
  apply(frame) {
    const data = frame.data || {};
    if (!data.deviceId) return null;
    switch (frame.type) {
      case 'device.online':
      case 'device.offline': {
        const d = this.device(data.deviceId);
        d.online = frame.type === 'device.online';
        const at = Date.parse(data.at) || Date.now();
        if (d.online) d.lastSeen = Math.max(d.lastSeen, at);
        if (data.meta && typeof data.meta === 'object') d.meta = data.meta;
        return d;
      }
      case 'device.unresponsive':
      case 'device.responsive': {
        const d = this.device(data.deviceId);
        const p = this.polling(d);
        p.unresponsive = frame.type === 'device.unresponsive';
        p.failures = data.failures || 0;
        p.backoffMs = data.backoffMs || 0;
        return d;
      }
      case 'device.data':
      case 'command.result': {
        if (data.poll) {
          // A reply to a poll (good or garbled; silence sends nothing until device.unresponsive).
          const p = this.polling(this.device(data.deviceId));
          p.lastPollAt = Math.max(p.lastPollAt, Date.parse(data.receivedAt) || Date.now());
          p.lastCode = frame.code;
          if (frame.code !== 2001) p.failures = 0;
        }
        if (frame.code === 200) return this.addReading(data, { live: true });
        return this.devices.get(data.deviceId) || null;
      }
      default:
        return null;
    }
  }

  // A device's values as [name, {value, unit, at}] in display order.
  orderedValues(id) {
    const d = this.devices.get(id);
    if (!d) return [];
    const names = [...d.order.filter((n) => n in d.values), ...Object.keys(d.values).filter((n) => !d.order.includes(n)).sort()];
    return names.map((n) => [n, d.values[n]]);
  }

  unresponsiveCount() {
    let n = 0;
    for (const d of this.devices.values()) n += d.polling?.unresponsive ? 1 : 0;
    return n;
  }

  // Devices sorted by id.
  list() {
    return [...this.devices.values()].sort((a, b) => a.deviceId.localeCompare(b.deviceId, undefined, { numeric: true }));
  }

  // Names of the numeric values a device has reported, for the chart's picker.
  numericNames(id) {
    const d = this.devices.get(id);
    if (!d) return [];
    const names = new Set();
    for (const p of d.series) for (const n of Object.keys(p.values)) names.add(n);
    return [...names].sort();
  }
}
