import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Fleet } from '../js/fleet.js';

const reading = (id, at, t, extra = {}) => ({ deviceId: id, commandId: `c-${at}`, receivedAt: new Date(at).toISOString(),
  function: 3, address: 0, request: '', response: '', values: { temperature: { value: t, unit: '°C' }, alarm: { value: false } }, ...extra });

test('the device list and live events build the fleet', () => {
  const f = new Fleet();
  f.load([{ deviceId: 'sim-10', online: true, lastSeen: '2026-01-01T00:00:00Z', firstSeen: '2026-01-01T00:00:00Z' },
    { deviceId: 'sim-9', online: false, lastSeen: '2026-01-01T00:00:00Z' }]);
  assert.deepEqual(f.list().map((d) => d.deviceId), ['sim-9', 'sim-10'], 'numeric-aware order');
  const d = f.apply({ type: 'device.online', code: 200, data: { deviceId: 'sim-9', online: true, at: '2026-01-01T00:01:00Z' } });
  assert.equal(d.online, true);
  assert.equal(d.lastSeen, Date.parse('2026-01-01T00:01:00Z'));
  f.apply({ type: 'device.offline', code: 200, data: { deviceId: 'sim-9', online: false, at: '2026-01-01T00:02:00Z' } });
  assert.equal(f.device('sim-9').online, false);
  assert.equal(f.apply({ type: 'pong' }), null);
});

test('readings keep the latest value per name, a series for the chart and no duplicates', () => {
  const f = new Fleet();
  f.addReading(reading('d', 2000, 22));
  f.addReading(reading('d', 1000, 21));  // older, from history, arrives later
  f.addReading(reading('d', 2000, 22));  // the same reading twice (history + live)
  const d = f.device('d');
  assert.equal(d.values.temperature.value, 22);
  assert.deepEqual(d.series.map((p) => p.values.temperature), [21, 22]);
  assert.equal(d.frames.length, 2);
  assert.deepEqual(f.numericNames('d'), ['temperature'], 'booleans are not charted');
  f.apply({ type: 'command.result', code: 2002, data: { deviceId: 'd' } });
  assert.equal(d.frames.length, 2, 'a failed command adds no reading');
});

test('frames and series are bounded', () => {
  const f = new Fleet();
  for (let i = 0; i < 30; i++) f.addReading(reading('d', 1000 * (i + 1), i), { maxFrames: 10, maxSeries: 20 });
  assert.equal(f.device('d').frames.length, 10);
  assert.equal(f.device('d').series.length, 20);
  assert.equal(f.device('d').series[0].values.temperature, 10);
});

test('live readings set the order values are shown in', () => {
  const f = new Fleet();
  f.addReading({ ...reading('d', 1000, 20), values: { b: { value: 1 }, a: { value: 2 } } });
  assert.deepEqual(f.orderedValues('d').map(([n]) => n), ['b', 'a'], 'the first stored reading orders them');
  f.apply({ type: 'device.data', code: 200, data: { ...reading('d', 2000, 21), values: { a: { value: 3 }, c: { value: 4 }, b: { value: 5 } } } });
  assert.deepEqual(f.orderedValues('d').map(([n]) => n), ['a', 'c', 'b']);
  f.addReading({ ...reading('d', 500, 19), values: { z: { value: 0 }, a: { value: 1 } } });
  assert.deepEqual(f.orderedValues('d').map(([n]) => n), ['a', 'c', 'b', 'z'], 'stored readings keep the live order');
  assert.equal(f.orderedValues('d')[0][1].value, 3, 'an older reading does not replace a newer value');
});

test('polling: the plan from the device list, poll results and (un)responsive events', () => {
  const f = new Fleet();
  f.load([{ deviceId: 'slave-1', online: true, lastSeen: '2026-01-01T00:00:00Z',
    polling: { plan: [{ function: 3, address: 0, count: 12, everyMs: 2000 }], lastPollAt: null, lastCode: null, failures: 0, unresponsive: false, backoffMs: 0 } },
  { deviceId: 'push-1', online: true, lastSeen: '2026-01-01T00:00:00Z', polling: null }]);
  assert.equal(f.device('push-1').polling, null, 'no plan');
  assert.equal(f.device('slave-1').polling.plan[0].count, 12);
  assert.equal(f.device('slave-1').polling.lastCode, null);
  f.apply({ type: 'device.data', code: 200, data: reading('slave-1', 5000, 20, { poll: true, solicited: true, commandId: '' }) });
  assert.equal(f.device('slave-1').polling.lastCode, 200);
  assert.equal(f.device('slave-1').polling.lastPollAt, 5000);
  assert.equal(f.device('slave-1').values.temperature.value, 20, 'a poll result is a reading');
  f.apply({ type: 'device.unresponsive', code: 2002, data: { deviceId: 'slave-1', responsive: false, failures: 3, backoffMs: 4000 } });
  assert.equal(f.device('slave-1').polling.unresponsive, true);
  assert.equal(f.device('slave-1').polling.failures, 3);
  assert.equal(f.device('slave-1').online, true, 'unresponsive is not offline');
  assert.equal(f.unresponsiveCount(), 1);
  f.apply({ type: 'device.responsive', code: 200, data: { deviceId: 'slave-1', responsive: true, failures: 0, backoffMs: 0 } });
  assert.equal(f.device('slave-1').polling.unresponsive, false);
  assert.equal(f.unresponsiveCount(), 0);
  // A device list refresh brings the server's view back.
  f.load([{ deviceId: 'slave-1', online: true, polling: { plan: [], lastPollAt: '2026-01-01T00:00:09Z', lastCode: 2002, failures: 4, unresponsive: true, backoffMs: 8000 } }]);
  assert.equal(f.device('slave-1').polling.lastPollAt, Date.parse('2026-01-01T00:00:09Z'));
  assert.equal(f.unresponsiveCount(), 1);
});
