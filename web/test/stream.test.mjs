import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Ring, StreamPositions, streamOf } from '../js/stream.js';

test('frames are assigned to their stream', () => {
  assert.equal(streamOf({ type: 'device.data', epoch: 'e1', offset: 3 }), 'system');
  assert.equal(streamOf({ type: 'message', epoch: 'e1', offset: 1, groupName: 'ops' }), 'group:ops');
  assert.equal(streamOf({ type: 'pong' }), null);
  assert.equal(streamOf({ type: 'message', offset: 1 }), null, 'an offset without an epoch is not tracked');
});

test('duplicates within an epoch are dropped, a new epoch starts afresh', () => {
  const p = new StreamPositions();
  assert.equal(p.accept({ epoch: 'a', offset: 1 }), 'new');
  assert.equal(p.accept({ epoch: 'a', offset: 2 }), 'new');
  assert.equal(p.accept({ epoch: 'a', offset: 2 }), 'duplicate');
  assert.equal(p.accept({ epoch: 'a', offset: 1 }), 'duplicate');
  assert.equal(p.accept({ epoch: 'b', offset: 1 }), 'new');
  assert.deepEqual(p.get('system'), ['b', 1]);
  assert.equal(p.accept({ type: 'pong' }), 'untracked');
});

test('the recover parameter round-trips through storage', () => {
  const p = new StreamPositions();
  assert.equal(p.recoverParam(), '');
  p.accept({ epoch: 'e9', offset: 41 });
  p.accept({ epoch: 'e9', offset: 7, groupName: 'ops' });
  const decoded = JSON.parse(decodeURIComponent(p.recoverParam()));
  assert.deepEqual(decoded, { system: ['e9', 41], 'group:ops': ['e9', 7] });
  const restored = new StreamPositions(JSON.parse(JSON.stringify(p.toJSON())));
  assert.deepEqual(restored.get('group:ops'), ['e9', 7]);
  restored.forget('group:ops');
  assert.equal(restored.get('group:ops'), null);
});

test('stored positions that are not [epoch, offset] are ignored', () => {
  const p = new StreamPositions({ system: ['e', 1.5], 'group:x': 'bad', 'group:y': ['e', 4] });
  assert.deepEqual(p.toJSON(), { 'group:y': ['e', 4] });
});

test('the ring keeps the newest entries', () => {
  const r = new Ring(3, [1, 2, 3, 4]);
  assert.deepEqual(r.items, [2, 3, 4]);
  r.push(5);
  assert.deepEqual(r.items, [3, 4, 5]);
});
