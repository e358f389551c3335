// scripts/demo end to end: starts in the background, serves the dashboard through nginx,
// and on Ctrl-C stops everything it started.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { processAlive, startDemo, waitFor } from './demo.mjs';

test('scripts/demo starts the topology, serves the dashboard and stops cleanly on Ctrl-C', async () => {
  const demo = await startDemo({ devices: 3, replicas: 2 });
  try {
    assert.match(demo.printedUrl, new RegExp(`^http://localhost:${demo.port}/`));
    const page = await fetch(demo.url);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<title>devbridge<\/title>/);
    const health = await fetch(new URL('/healthz', demo.url));
    assert.equal(health.status, 200, 'push behind nginx has its event stream');
    const devices = await waitFor('3 simulated devices online', async () => {
      const body = await (await fetch(new URL('/api/devices', demo.url))).json();
      return body.data.devices.filter((d) => d.online).length === 3 && body.data.devices;
    });
    assert.deepEqual(devices.map((d) => d.deviceId), ['sim-0001', 'sim-0002', 'sim-0003']);

    const pids = demo.env.DEMO_PIDS.split(' ').map(Number);
    assert.equal(pids.length, 5, 'ingest, two push replicas, nginx, simulator');
    assert.ok(pids.every(processAlive));
    const result = await demo.stop();
    assert.ok(result, 'the demo exits within a minute of Ctrl-C');
    assert.equal(result.code, 130, `exit status after SIGINT\n${demo.output()}`);
    assert.match(demo.output(), /demo: stopped/);
    for (const pid of pids) assert.ok(!processAlive(pid), `process ${pid} was stopped`);
    assert.ok(!existsSync(join(demo.dataDir, 'pg/data/postmaster.pid')), 'PostgreSQL was stopped');
    assert.ok(!existsSync(join(demo.dataDir, 'mqtt/pid')), 'mosquitto was stopped');
    assert.ok(existsSync(join(demo.dataDir, 'pg/data/PG_VERSION')), 'the database stays for the next run');
  } finally {
    await demo.stop();
    demo.cleanup();
  }
});
