// deploy/docker-compose.yml run for real (ctest label `deploy`; scripts/test-deploy prepares
// an engine and runs it). Against whatever engine DOCKER_HOST names (Docker, or podman's
// Docker API from deploy/podman-engine), in a compose project of its own on free host ports:
//   1. `up -d --build` with the sim profile: every service healthy (or running, for the
//      simulators, which have no health check);
//   2. through nginx: the 20 simulated devices and 4 polled slaves online, `device.data`
//      from each of the 20 on the fleet stream, and a command round trip from a WebSocket client;
//   3. `up -d --scale push=3`: three replicas, clients spread over all of them by nginx, and
//      one `send_to_system` reaches every client;
//   4. `restart ingest`: the clients stay connected and device data flows again;
//   5. `down` then `up -d`: the readings taken before are still there (volumes);
//   6. the TLS overlay (deploy/make-certs): `wss://` through nginx, checked against the web
//      certificate, with device data that came over `mqtts://` and gRPC over mutual TLS;
//   7. `down -v`: no container, network or volume of the project is left.
// Then the profile `cluster` in a project of its own: 3 nats-server, 2 ingest replicas sharing
// the fleet, 3 push replicas on the bus behind nginx and the simulator: every service healthy,
// the devices online through nginx with each ingest replica holding 8 of the 16 partitions,
// data on the fleet stream and a command round trip; a kill -9 of one ingest replica, after
// which data comes again from every device, without the viewer disconnected; `down -v`.
// Docker's output goes to a log file (printed at the end on failure); each step prints one line.
// DEVBRIDGE_DEPLOY_KEEP=1 leaves the project up after a failure, to look at it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import WebSocket from 'ws';

const ROOT = new URL('../..', import.meta.url).pathname;
const DEPLOY = join(ROOT, 'deploy');
const PROJECT = process.env.DEVBRIDGE_DEPLOY_PROJECT ?? 'devbridge-deploytest';
const SOCKET = (process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock').replace(/^unix:\/\//, '');
const SIM_DEVICES = 20;
const SIM_SLAVES = 4;
const TLS = ['-f', join(DEPLOY, 'docker-compose.tls.yml')];
const logFile = join(mkdtempSync(join(tmpdir(), 'devbridge-deploy-')), 'compose.log');
const logFd = openSync(logFile, 'a');
const t0 = Date.now();

function say(line) {
  console.log(`deploy [${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${line}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const ports = {
  DEVBRIDGE_HTTP_PORT: await freePort(),
  DEVBRIDGE_HTTPS_PORT: await freePort(),
  DEVBRIDGE_MQTT_PORT: await freePort(),
  DEVBRIDGE_MQTTS_PORT: await freePort(),
  DEVBRIDGE_CLUSTER_HTTP_PORT: await freePort(),
};
const env = { ...process.env, ...Object.fromEntries(Object.entries(ports).map(([k, v]) => [k, String(v)])) };
const base = `http://127.0.0.1:${ports.DEVBRIDGE_HTTP_PORT}`;
const clusterBase = `http://127.0.0.1:${ports.DEVBRIDGE_CLUSTER_HTTP_PORT}`;
const CLUSTER_PROJECT = `${PROJECT}-cluster`;

// docker-compose on this project (or `project`, with `profile`), its output appended to the
// log; returns how long it took.
function compose(args, overlay = [], { project = PROJECT, profile = 'sim' } = {}) {
  const started = Date.now();
  const r = spawnSync('docker-compose', ['-p', project, '-f', join(DEPLOY, 'docker-compose.yml'), ...overlay,
    '--profile', profile, ...args], { env, stdio: ['ignore', logFd, logFd] });
  assert.equal(r.status, 0, `docker-compose ${args.join(' ')} failed (log: ${logFile})`);
  return (Date.now() - started) / 1000;
}

// The engine's Docker API (podman serves the same one).
function engine(path) {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: SOCKET, path, method: 'GET' }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => (res.statusCode < 300 ? resolve(JSON.parse(body)) : reject(new Error(`${path}: ${res.statusCode} ${body}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

// The project's containers (running or not), volumes or networks.
const ofProject = (kind, project = PROJECT) =>
  engine(`/${kind === 'containers' ? 'containers/json?all=true&' : `${kind}?`}filters=${encodeURIComponent(
    JSON.stringify({ label: [`com.docker.compose.project=${project}`] }))}`);

// service → [state of each container]: its health where it has a check, else running/exited.
async function states(project = PROJECT) {
  const out = {};
  for (const c of await ofProject('containers', project)) {
    const info = await engine(`/containers/${c.Id}/json`);
    const service = c.Labels['com.docker.compose.service'];
    const state = info.State.Running ? (info.State.Health?.Status || 'running') : info.State.Status;
    (out[service] ??= []).push(state);
  }
  return out;
}

async function waitFor(what, fn, ms) {
  const deadline = Date.now() + ms;
  let last;
  let nextNote = Date.now() + 30_000;
  for (;;) {
    if (Date.now() > nextNote) {
      say(`still waiting for ${what} (last: ${JSON.stringify(last)})`);
      nextNote += 30_000;
    }
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000} s waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// Every service up: healthy where it has a health check, `replicas` containers of push.
function waitHealthy(replicas = 1) {
  return waitServices({ mosquitto: 1, postgres: 1, ingest: 1, push: replicas, nginx: 1, sim: 1, 'sim-slaves': 1 },
    `${replicas} push`);
}

// `expected` (service → containers) up in `project`: healthy, or running for the simulators.
function waitServices(expected, what, project = PROJECT) {
  const up = (name, state) => state === 'healthy' || (state === 'running' && name.startsWith('sim'));
  return waitFor(`every service healthy (${what})`, async () => {
    const s = await states(project);
    const ready = Object.entries(expected).every(([name, n]) => (s[name] ?? []).length === n && s[name].every((st) => up(name, st)));
    if (!ready) throw new Error(JSON.stringify(s));  // waitFor reports the last one
    return s;
  }, 240_000);
}

async function getJson(path, from = base) {
  const res = await fetch(new URL(path, from));
  assert.equal(res.status, 200, `${path}: HTTP ${res.status}`);
  return (await res.json()).data;
}

// A WebSocket client through nginx; keeps every frame, and reconnects (with `recover`)
// if the connection drops.
class Client {
  constructor(systemId, clientId, url = base.replace(/^http/, 'ws'), tls = {}) {
    Object.assign(this, { systemId, clientId, url, tls, frames: [], closes: 0, node: null, last: null, stopped: false });
  }
  connect() {
    let url = `${this.url}/ws?systemId=${this.systemId}&clientId=${this.clientId}`;
    if (this.last) url += `&recover=${encodeURIComponent(JSON.stringify({ system: this.last }))}`;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, this.tls);
      this.ws = ws;
      const timer = setTimeout(() => reject(new Error(`${this.clientId}: no connected frame`)), 15000);
      ws.on('message', (raw) => {
        const f = JSON.parse(raw.toString());
        if (f.type === 'connected') {
          clearTimeout(timer);
          this.node = f.data.node;
          resolve(this);
        }
        if (f.offset !== undefined && !f.groupName) this.last = [f.epoch, f.offset];
        this.frames.push(f);
      });
      ws.on('error', (e) => reject(e));
      ws.on('close', () => {
        if (this.stopped || this.ws !== ws) return;
        this.closes++;
        setTimeout(() => this.connect().catch(() => {}), 1000);
      });
    });
  }
  of(type) {
    return this.frames.filter((f) => f.type === type);
  }
  send(obj) {
    this.ws.send(JSON.stringify(obj));
  }
  close() {
    this.stopped = true;
    this.ws?.terminate();
  }
}

const dataDevices = (client, from = 0) =>
  new Set(client.frames.slice(from).filter((f) => f.type === 'device.data').map((f) => f.data.deviceId));

test('docker-compose: build, run, scale, restart, keep data, TLS, remove', { timeout: 3_600_000 }, async () => {
  const clients = [];
  let ok = false;
  try {
    compose(['down', '-v', '--remove-orphans']);  // what an interrupted run left
    const built = compose(['build']);
    say(`images built in ${built.toFixed(0)} s`);
    compose(['up', '-d']);
    const s = await waitHealthy();
    say(`every service healthy: ${JSON.stringify(s)}`);

    // 2. Devices online, their data on the fleet stream, a command round trip.
    const devices = await waitFor(`${SIM_DEVICES} devices and ${SIM_SLAVES} slaves online`, async () => {
      const online = (await getJson('/api/devices')).devices.filter((d) => d.online).map((d) => d.deviceId);
      const sims = online.filter((id) => id.startsWith('sim-'));
      const slaves = online.filter((id) => id.startsWith('slave-'));
      return sims.length === SIM_DEVICES && slaves.length === SIM_SLAVES && online;
    }, 90_000);
    say(`${devices.length} devices online through nginx`);
    const viewer = await new Client('fleet', 'deploy-viewer').connect();
    clients.push(viewer);
    await waitFor(`device.data from all ${SIM_DEVICES} simulated devices`, () =>
      [...dataDevices(viewer)].filter((id) => id.startsWith('sim-')).length === SIM_DEVICES, 60_000);
    viewer.send({ action: 'command', requestId: 'deploy-1', deviceId: 'sim-0001', function: 3, address: 0, count: 2 });
    const result = await waitFor('command.result for deploy-1', () =>
      viewer.of('command.result').find((f) => f.data.requestId === 'deploy-1'), 30_000);
    assert.equal(result.code, 200, JSON.stringify(result));
    assert.ok(viewer.of('command.accepted').some((f) => f.data.requestId === 'deploy-1'));
    assert.ok('temperature' in result.data.values, JSON.stringify(result.data));
    say(`command round trip: ${result.data.latencyMs} ms, values ${Object.keys(result.data.values).join(',')}`);

    // 3. Three push replicas; nginx spreads clients over them; send_to_system reaches all.
    compose(['up', '-d', '--scale', 'push=3']);
    await waitHealthy(3);
    const spread = [];
    await waitFor('clients on 3 replicas', async () => {
      const c = await new Client('scaletest', `scale-${spread.length}`).connect();
      spread.push(c);
      clients.push(c);
      return new Set(spread.map((x) => x.node)).size === 3;
    }, 90_000);
    say(`${spread.length} clients on ${new Set(spread.map((c) => c.node)).size} replicas`);
    const res = await fetch(new URL('/api/send_to_system', base), {
      method: 'POST', headers: { SystemId: 'scaletest', 'Content-Type': 'application/json' },
      body: JSON.stringify({ sendUserId: 'deploy', code: 200, msg: 'hello', data: 'to every replica' }),
    });
    const sent = await res.json();
    assert.equal(sent.code, 0, JSON.stringify(sent));
    await waitFor('the message on every client', () =>
      spread.every((c) => c.of('message').some((f) => f.messageId === sent.data.messageId)), 15_000);
    say(`send_to_system reached all ${spread.length} clients`);

    // 4. ingest restarts; clients stay connected (or come back) and data flows again.
    const before = viewer.frames.length;
    compose(['restart', 'ingest']);
    await waitHealthy(3);
    await waitFor('device.data from every simulated device after the restart', () =>
      [...dataDevices(viewer, before)].filter((id) => id.startsWith('sim-')).length === SIM_DEVICES, 90_000);
    const resets = viewer.frames.slice(before).filter((f) => f.type === 'error' && f.code === 410).length;
    assert.ok(spread.every((c) => c.closes === 0), 'push replicas keep their clients while ingest restarts');
    say(`after restart ingest: data flows again (viewer reconnects ${viewer.closes}, resets ${resets})`);

    // 5. down, up: the readings are kept.
    const kept = await waitFor('readings of sim-0001', async () => {
      const r = (await getJson('/api/readings?deviceId=sim-0001&since=0&limit=5')).readings;
      return r.length > 0 && r;
    }, 30_000);
    for (const c of clients) c.close();
    compose(['down']);
    assert.equal((await ofProject('containers')).length, 0, 'down removes the containers');
    compose(['up', '-d']);
    await waitHealthy();
    const after = await waitFor('the readings taken before down', async () => {
      const all = (await getJson('/api/readings?deviceId=sim-0001&since=0&limit=10000')).readings;
      return all.length > 0 && all;
    }, 60_000);
    const text = new Set(after.map((r) => JSON.stringify(r)));
    for (const r of kept) assert.ok(text.has(JSON.stringify(r)), `reading kept across down/up: ${JSON.stringify(r)}`);
    say(`${kept.length} readings of sim-0001 kept across down and up (${after.length} now)`);

    // 6. TLS everywhere: certificates from make-certs, wss:// through nginx.
    const certs = spawnSync(join(DEPLOY, 'make-certs'), [], { encoding: 'utf8' });
    assert.equal(certs.status, 0, certs.stderr);
    compose(['up', '-d'], TLS);
    await waitHealthy();
    const wss = await new Client('fleet', 'deploy-wss', `wss://localhost:${ports.DEVBRIDGE_HTTPS_PORT}`,
      { ca: readFileSync(join(DEPLOY, 'certs/web.pem')) }).connect();
    clients.push(wss);
    await waitFor('device.data over wss://', () => dataDevices(wss).size >= SIM_DEVICES, 90_000);
    const logs = spawnSync('docker-compose', ['-p', PROJECT, '-f', join(DEPLOY, 'docker-compose.yml'), ...TLS,
      'logs', '--no-color', 'ingest'], { env, encoding: 'utf8' }).stdout;
    assert.match(logs, /mqtts:\/\/mosquitto:8883/, 'ingest takes the broker over TLS');
    say('TLS overlay: device data over mqtts://, gRPC over mutual TLS, wss:// through nginx');
    for (const c of clients) c.close();

    // 7. down -v leaves nothing of the project.
    compose(['down', '-v'], TLS);
    assert.deepEqual(await ofProject('containers'), []);
    assert.deepEqual((await ofProject('volumes')).Volumes ?? [], []);
    assert.deepEqual((await ofProject('networks')), []);
    say('down -v: no container, volume or network left');
    ok = true;
  } finally {
    for (const c of clients) c.close();
    if (!ok) {
      console.log(`--- docker-compose output (${logFile}), last 80 lines:`);
      console.log(readFileSync(logFile, 'utf8').split('\n').slice(-80).join('\n'));
      spawnSync('docker-compose', ['-p', PROJECT, '-f', join(DEPLOY, 'docker-compose.yml'), '--profile', 'sim',
        'logs', '--no-color', '--tail=30'], { env, stdio: 'inherit' });
      if (process.env.DEVBRIDGE_DEPLOY_KEEP !== '1') compose(['down', '-v'], TLS);
    }
  }
});

test('docker-compose --profile cluster: NATS, 2 ingest, 3 push, a kill -9 of an ingest replica', { timeout: 3_600_000 }, async () => {
  const opts = { project: CLUSTER_PROJECT, profile: 'cluster' };
  const cluster = (args) => compose(args, [], opts);
  const expected = { 'nats-1': 1, 'nats-2': 1, 'nats-3': 1, 'mosquitto-cluster': 1, 'postgres-cluster': 1,
    'ingest-1': 1, 'ingest-2': 1, 'push-1': 1, 'push-2': 1, 'push-3': 1, 'nginx-cluster': 1, 'sim-cluster': 1 };
  // A replica's gauge, read inside its container (ingest's HTTP port is not published).
  const gauge = (service, name) => {
    const r = spawnSync('docker-compose', ['-p', CLUSTER_PROJECT, '-f', join(DEPLOY, 'docker-compose.yml'),
      '--profile', 'cluster', 'exec', '-T', service, 'curl', '-fsS', 'http://127.0.0.1:9090/metrics'],
    { env, encoding: 'utf8' });
    const m = r.stdout?.match(new RegExp(`^${name} (\\S+)$`, 'm'));
    return m ? Number(m[1]) : undefined;
  };
  let viewer;
  let ok = false;
  try {
    cluster(['down', '-v', '--remove-orphans']);
    say(`cluster images built in ${cluster(['build']).toFixed(0)} s`);
    cluster(['up', '-d', 'nginx-cluster', 'sim-cluster']);
    const s = await waitServices(expected, 'cluster profile', CLUSTER_PROJECT);
    say(`every service of the cluster profile healthy: ${Object.keys(s).join(', ')}`);

    const devices = await waitFor(`${SIM_DEVICES} devices online through nginx-cluster`, async () => {
      const online = (await getJson('/api/devices', clusterBase)).devices.filter((d) => d.online);
      return online.length === SIM_DEVICES && online;
    }, 90_000);
    const held = await waitFor('8 of the 16 partitions on each ingest replica', () => {
      const h = ['ingest-1', 'ingest-2'].map((r) => gauge(r, 'devbridge_ingest_partitions_held'));
      return h[0] === 8 && h[1] === 8 && h;
    }, 60_000);
    say(`${devices.length} devices online; partitions held ${held.join(' + ')}`);

    viewer = await new Client('fleet', 'cluster-viewer', clusterBase.replace(/^http/, 'ws')).connect();
    await waitFor(`device.data from all ${SIM_DEVICES} devices`, () => dataDevices(viewer).size === SIM_DEVICES, 60_000);
    viewer.send({ action: 'command', requestId: 'cluster-1', deviceId: 'sim-0001', function: 3, address: 0, count: 2 });
    const result = await waitFor('command.result for cluster-1', () =>
      viewer.of('command.result').find((f) => f.data.requestId === 'cluster-1'), 30_000);
    assert.equal(result.code, 200, JSON.stringify(result));
    say(`command round trip through the bus: ${result.data.latencyMs} ms`);

    // kill -9 of one ingest replica: the other takes its partitions and its MQTT session.
    const before = viewer.frames.length;
    const killedAt = Date.now();
    cluster(['kill', '-s', 'SIGKILL', 'ingest-1']);
    const killReturned = Date.now();
    await waitFor('ingest-2 holding all 16 partitions', () => gauge('ingest-2', 'devbridge_ingest_partitions_held') === 16,
      60_000);
    const movedAfter = ((Date.now() - killedAt) / 1000).toFixed(1);
    await waitFor('device.data from every device after the kill', () => dataDevices(viewer, before).size === SIM_DEVICES,
      90_000);
    // (Counted from before `docker-compose kill`, whose own run, given too, is part of them; each
    // look at the gauge is a `docker-compose exec`, and the simulators send every 2 s.)
    say(`after kill -9 of ingest-1 (docker-compose kill took ${((killReturned - killedAt) / 1000).toFixed(1)} s): ` +
      `ingest-2 held every partition within ${movedAfter} s, data from all ${SIM_DEVICES} devices again within ` +
      `${((Date.now() - killedAt) / 1000).toFixed(1)} s, viewer reconnects ${viewer.closes}`);
    assert.equal(viewer.closes, 0, 'the viewer stays connected while an ingest replica dies');
    assert.ok(!viewer.frames.slice(before).some((f) => f.type === 'error' && f.code === 410), 'no 410');
    cluster(['start', 'ingest-1']);
    await waitServices(expected, 'ingest-1 back', CLUSTER_PROJECT);
    viewer.close();

    cluster(['down', '-v']);
    assert.deepEqual(await ofProject('containers', CLUSTER_PROJECT), []);
    assert.deepEqual((await ofProject('volumes', CLUSTER_PROJECT)).Volumes ?? [], []);
    say('cluster profile down -v: nothing left');
    ok = true;
  } finally {
    viewer?.close();
    if (!ok) {
      console.log(`--- docker-compose output (${logFile}), last 80 lines:`);
      console.log(readFileSync(logFile, 'utf8').split('\n').slice(-80).join('\n'));
      spawnSync('docker-compose', ['-p', CLUSTER_PROJECT, '-f', join(DEPLOY, 'docker-compose.yml'), '--profile',
        'cluster', 'logs', '--no-color', '--tail=30'], { env, stdio: 'inherit' });
      if (process.env.DEVBRIDGE_DEPLOY_KEEP !== '1') cluster(['down', '-v']);
    }
  }
});
