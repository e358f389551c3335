// scripts/demo end to end: starts in the background, serves the dashboard through nginx,
// and on Ctrl-C stops everything it started.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
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

test('scripts/demo --cluster: two ingest replicas share the fleet, three push replicas, a 3-server NATS JetStream bus', async () => {
  const demo = await startDemo({ devices: 3, replicas: 3, cluster: true });
  try {
    const health = await fetch(new URL('/healthz', demo.url));
    assert.equal(health.status, 200, 'push behind nginx reads the bus');
    await waitFor('3 simulated devices online', async () => {
      const body = await (await fetch(new URL('/api/devices', demo.url))).json();
      return body.data.devices.filter((d) => d.online).length === 3;
    });
    const sent = await (await fetch(new URL('/api/send_to_system', demo.url), {
      method: 'POST', headers: { SystemId: 'fleet', 'Content-Type': 'application/json' }, body: '{"data":"hello"}',
    })).json();
    assert.equal(sent.code, 0, JSON.stringify(sent));
    for (const port of demo.env.DEMO_PUSH_PORTS.split(' ')) {
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      assert.match(metrics, /^devbridge_push_bus_up 1$/m, `replica on ${port} is on the bus`);
      const read = Number(metrics.match(/^devbridge_push_bus_read_total (\d+)$/m)?.[1]);
      assert.ok(read > 0, `replica on ${port} read events from the bus`);
    }
    // Each ingest replica holds its half of the partitions, and the device list has both halves.
    const ingests = demo.env.DEMO_INGEST_HTTPS.split(' ');
    assert.equal(ingests.length, 2);
    const held = async (port) => {
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      return Number(metrics.match(/^devbridge_ingest_partitions_held (\d+)$/m)?.[1]);
    };
    try {
      // Up to 60 s: the replica that came first may hold all 16 until a round (every
      // lease_ttl / 3) counts the other one live, then gives half back once its work stopped.
      await waitFor('each ingest replica holds 8 of 16 partitions',
        async () => (await Promise.all(ingests.map(held))).every((n) => n === 8), 60000);
    } catch (err) {
      // What each replica holds and says, to tell a slow hand-over from a stuck one.
      const counts = await Promise.all(ingests.map((port) => held(port).catch((e) => String(e))));
      const logs = [1, 2].map((i) => {
        const file = join(demo.dataDir, 'logs', `ingest-${i}.log`);
        return existsSync(file) ? `ingest-${i}.log:\n${readFileSync(file, 'utf8').split('\n').slice(-40).join('\n')}` : '';
      });
      throw new Error(`${err.message}; partitions held: ${counts.join(', ')}\n${logs.join('\n')}`);
    }
    // A partition handed over at the start is known to its new owner from its devices' next
    // heartbeat: the list is whole again within one heartbeat interval.
    await waitFor("every replica's devices listed", async () => {
      const list = await (await fetch(new URL('/api/devices', demo.url))).json();
      return list.data.devices.length === 3;
    });
    assert.equal(demo.env.DEMO_NATS_PORTS.split(' ').length, 3);
    const pids = demo.env.DEMO_PIDS.split(' ').map(Number);
    assert.equal(pids.length, 10, '3 nats-server, 2 ingest, 3 push replicas, nginx, simulator');
    const result = await demo.stop();
    assert.equal(result?.code, 130, `exit status after SIGINT\n${demo.output()}`);
    for (const pid of pids) assert.ok(!processAlive(pid), `process ${pid} was stopped`);
  } finally {
    await demo.stop();
    demo.cleanup();
  }
});
