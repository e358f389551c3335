import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ago, buildCommand, duration, formatValue, parseRegisterValues, spacedHex, summarize } from '../js/format.js';

test('values are shown compactly', () => {
  assert.equal(formatValue(21.456789), '21.457');
  assert.equal(formatValue(7), '7');
  assert.equal(formatValue(true), 'on');
  assert.equal(formatValue(null), '—');
  assert.equal(spacedHex('01030000000C45CF'), '01 03 00 00 00 0C 45 CF');
});

test('relative times', () => {
  assert.equal(ago(0), 'never');
  assert.equal(ago(10_000, 15_000), '5 s ago');
  assert.equal(ago(0 + 1, 1 + 7_200_000), '2 h ago');
  assert.equal(ago('2026-01-01T00:00:00Z', Date.parse('2026-01-01T00:03:00Z')), '3 min ago');
});

test('register values accept decimal, hex and negatives', () => {
  assert.deepEqual(parseRegisterValues('1, 2 0x10;-1'), { values: [1, 2, 16, 65535] });
  assert.match(parseRegisterValues('70000').error, /not a register value/);
  assert.match(parseRegisterValues('').error, /at least one/);
});

test('commands are built per function and validated', () => {
  const base = { deviceId: 'sim-0001', requestId: 'r1', address: '0' };
  assert.deepEqual(buildCommand({ ...base, fn: '3', count: '12' }).frame,
    { action: 'command', requestId: 'r1', deviceId: 'sim-0001', function: 3, address: 0, count: 12 });
  assert.deepEqual(buildCommand({ ...base, fn: '16', values: '1,2', timeoutMs: '500' }).frame.values, [1, 2]);
  assert.equal(buildCommand({ ...base, fn: '16', values: '1,2', timeoutMs: '500' }).frame.timeoutMs, 500);
  assert.match(buildCommand({ ...base, fn: '6', values: '1,2' }).error, /exactly one/);
  assert.match(buildCommand({ ...base, fn: '3', count: '0' }).error, /count/);
  assert.match(buildCommand({ ...base, fn: '3', count: '1', address: '-1' }).error, /address/);
  assert.match(buildCommand({ ...base, fn: '5' }).error, /function/);
  assert.match(buildCommand({ ...base, fn: '4', count: '1', timeoutMs: '60001' }).error, /timeout/);
});

test('event summaries name the device and what happened', () => {
  assert.equal(summarize({ type: 'device.online', data: { deviceId: 'd1' } }), 'd1 online');
  assert.equal(summarize({ type: 'command.result', code: 2002, msg: 'no reply', data: { deviceId: 'd1' } }), 'd1: 2002 no reply');
  assert.equal(summarize({ type: 'device.data', code: 200, data: { deviceId: 'd1', solicited: false,
    values: { t: { value: 21.5 } } } }), 'd1 unsolicited: t=21.5');
});

test('intervals and polling events read plainly', () => {
  assert.equal(duration(500), '500 ms');
  assert.equal(duration(2000), '2 s');
  assert.equal(duration(90000), '1.5 min');
  assert.equal(summarize({ type: 'device.unresponsive', code: 2002, data: { deviceId: 'm', failures: 3 } }),
    'm unresponsive: no good reply to 3 polls in a row');
  assert.equal(summarize({ type: 'device.responsive', code: 200, data: { deviceId: 'm' } }), 'm responsive again');
  assert.match(summarize({ type: 'device.data', code: 200, data: { deviceId: 'm', poll: true, function: 3, address: 0, values: {} } }),
    /^m poll fn 3 @0/);
});
