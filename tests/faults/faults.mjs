// Fault injection under load (issue "Crash-safe ingest"): real mosquitto, PostgreSQL,
// ingest, two push replicas and 100 WebSocket viewers; devbridge-sim publishes 2,000
// numbered frames/s over 200 devices at QoS 1 and lists, at exit, every frame the broker
// acknowledged. One fault per case; after each, every acknowledged frame is looked for in
// table readings, and the case prints: offered, acknowledged, stored, lost, duplicated, time
// to healthy.
//
// Run by ctest (label `faults`) inside tests/harness/with-services with services of its own
// (it kills them): see tests/faults/CMakeLists.txt. Arguments: BUILD_DIR.
// DEVBRIDGE_FAULTS_TABLE=FILE also writes the results as a Markdown table.
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sleep, until, freePort, get, metric, killAll, Proc as FleetProc, Viewer, Load as FleetLoad } from './fleet.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const build = path.resolve(process.argv[2] || process.env.DEVBRIDGE_BUILD_DIR || path.join(root, 'build'));
const dir = process.env.DEVBRIDGE_TEST_DIR;
if (!dir) throw new Error('run inside tests/harness/with-services (DEVBRIDGE_TEST_DIR is not set)');
const mqttUrl = process.env.DEVBRIDGE_TEST_MQTT_URL;
const pgPort = Number(process.env.DEVBRIDGE_TEST_PG_PORT);
const logs = path.join(dir, 'faults');
fs.mkdirSync(logs, { recursive: true });

const DEVICES = 200;
const DATA_INTERVAL_MS = 100; // 200 devices × 10/s = 2,000 frames/s
const VIEWERS_PER_PUSH = 50;
const SPOOL_SYNC_MS = 2;
const RATE = (DEVICES * 1000) / DATA_INTERVAL_MS;
// What the broker acknowledged to ingest and a crash may take before it is written: at most
// the frames of one spool_sync window (a kill -9 leaves the kernel what was written, so in
// practice Paho's few microseconds between its PUBACK and our callback).
const LOSS_WINDOW = Math.ceil((RATE * SPOOL_SYNC_MS) / 1000) + 1;

const log = (...a) => console.log(`[faults ${new Date().toISOString().slice(11, 23)}]`, ...a);

// The shared helpers (fleet.mjs), bound to this suite's folder and load.
class Proc extends FleetProc {
  constructor(name, bin, args) {
    super(name, bin, args, logs);
  }
}
class Load extends FleetLoad {
  constructor(prefix, extra = []) {
    super(prefix, { build, root, logs, mqttUrl, devices: DEVICES, intervalMs: DATA_INTERVAL_MS }, extra);
  }
}

const svc = (action) => execFileSync(path.join(root, 'tests/harness/svc'), [action], { stdio: 'inherit' });

function psql(sql) {
  return execFileSync('psql', [`postgresql://postgres@127.0.0.1:${pgPort}/faults`, '-Atqc', sql], {
    encoding: 'utf8',
    maxBuffer: 256 << 20,
  });
}

// kill -9 of a process and, for PostgreSQL, its children: a crash of the whole server.
function killTree(pid) {
  // Children from /proc (field 4 of /proc/PID/stat is the parent; the name before it may hold spaces).
  const children = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) children.push(entry);
    } catch {
      // gone meanwhile
    }
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
  for (const c of children) {
    try {
      process.kill(Number(c), 'SIGKILL');
    } catch {
      // gone already
    }
  }
  return [pid, ...children.map(Number)];
}
const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

// A TCP proxy in front of PostgreSQL that can stop forwarding while keeping connections
// open: the database unreachable behind a silent network, not down.
class Proxy {
  constructor(target) {
    this.target = target;
    this.frozen = false;
    this.pairs = new Set();
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.target, '127.0.0.1');
      const pair = [client, upstream];
      this.pairs.add(pair);
      client.on('data', (d) => upstream.write(d));
      upstream.on('data', (d) => client.write(d));
      const end = () => {
        client.destroy();
        upstream.destroy();
        this.pairs.delete(pair);
      };
      client.on('close', end).on('error', end);
      upstream.on('close', end).on('error', end);
      if (this.frozen) pair.forEach((s) => s.pause());
    });
  }
  listen() {
    return new Promise((r) => this.server.listen(0, '127.0.0.1', () => r(this.server.address().port)));
  }
  freeze(on) {
    this.frozen = on;
    for (const pair of this.pairs) pair.forEach((s) => (on ? s.pause() : s.resume()));
  }
  close() {
    for (const pair of this.pairs) pair.forEach((s) => s.destroy());
    this.server.close();
  }
}

const results = [];
let ingestHttp = 0;
// DEVBRIDGE_FAULTS_CASES=1,3 runs some cases only; DEVBRIDGE_FAULTS_INGEST_FLAGS adds ingest
// flags (e.g. "--spool_dir=none" shows what a kill -9 costs without the spool).
const wanted = (process.env.DEVBRIDGE_FAULTS_CASES || '1,2,3,4,5,6').split(',').map(Number);
const want = (n) => wanted.includes(n);
const extraIngestFlags = (process.env.DEVBRIDGE_FAULTS_INGEST_FLAGS || '').split(' ').filter(Boolean);

// Waits for PostgreSQL to have what it will get, then accounts for every acknowledged frame.
async function account(load, name, extra) {
  const frameSql = `SELECT device_id, (get_byte(raw,3)::bigint<<24)|(get_byte(raw,4)<<16)|(get_byte(raw,5)<<8)|get_byte(raw,6)
    FROM readings WHERE device_id LIKE '${load.prefix}%' AND command_id IS NULL AND length(raw) > 20`;
  // Distinct frames: duplicates must not make it look complete early.
  const count = () => Number(psql(`SELECT count(DISTINCT (device_id, raw)) FROM readings WHERE device_id LIKE '${load.prefix}%'`));
  // Settled: everything acknowledged is there, or nothing new came for 5 s (then count losses).
  let last = -1;
  let still = Date.now();
  await until(() => {
    const n = count();
    if (n !== last) {
      last = n;
      still = Date.now();
    }
    return n >= load.ackedCount || Date.now() - still > 5000;
  }, 180000, 500);
  const seen = new Map();
  let rows = 0;
  for (const line of psql(frameSql).split('\n').filter(Boolean)) {
    const [device, seq] = line.split('|');
    const key = `${device}|${seq}`;
    seen.set(key, (seen.get(key) || 0) + 1);
    rows++;
  }
  let lost = 0;
  for (const [device, seqs] of load.acked) for (const s of seqs) if (!seen.has(`${device}|${s}`)) lost++;
  const duplicated = rows - seen.size;
  const r = { name, offered: load.sent, acknowledged: load.ackedCount, stored: seen.size, lost, duplicated, ...extra };
  if (lost > 0 || duplicated > 0) {
    // What it takes to find out why, when it happens once in many runs.
    const m = (await get(ingestHttp, '/metrics')).body;
    log(`   ingest metrics: ${m.split('\n').filter((l) => /^devbridge_ingest_(mqtt_(duplicates|dup_flagged|connects)|pushbacks|messages_total|db_(errors|retries|rejected|abandoned|records_total)|spool_(read|corrupt|append_errors|appended|full))/.test(l)).join('; ')}`);
    log(`   rejected: ${psql('SELECT count(*) FROM rejected').trim()}; rows per duplicated frame: ${psql(
      `SELECT string_agg(n::text, ',') FROM (SELECT count(*) n FROM readings WHERE device_id LIKE '${load.prefix}%' GROUP BY device_id, raw HAVING count(*) > 1 LIMIT 20) d`).trim()}`);
    const keep = path.join(process.env.TMPDIR || '/tmp', `devbridge-faults-${Date.now()}`);
    fs.cpSync(logs, keep, { recursive: true });
    log(`   logs copied to ${keep}`);
  }
  results.push(r);
  log(
    `${name}: offered ${r.offered}, acknowledged by the broker ${r.acknowledged}, stored ${r.stored}, lost ${lost}, ` +
      `duplicated ${duplicated}, healthy again after ${r.healthyMs === undefined ? '-' : (r.healthyMs / 1000).toFixed(1) + ' s'}`,
  );
  return r;
}

async function main() {
  const proxy = new Proxy(pgPort);
  const proxyPort = await proxy.listen();
  execFileSync('psql', [`postgresql://postgres@127.0.0.1:${pgPort}/postgres`, '-qc', 'CREATE DATABASE faults']);
  const [grpc, ingestPort, pushA, pushB, pushAGrpc, pushBGrpc] = await Promise.all(
    Array.from({ length: 6 }, () => freePort()),
  );
  ingestHttp = ingestPort;
  const ingest = new Proc('ingest', path.join(build, 'services/ingest/devbridge-ingest'), [
    `--mqtt_url=${mqttUrl}`,
    '--mqtt_client_id=faults-ingest',
    `--pg_dsn=postgresql://postgres@127.0.0.1:${proxyPort}/faults`,
    `--grpc_listen=127.0.0.1:${grpc}`,
    `--http_listen=127.0.0.1:${ingestHttp}`,
    `--register_map=${path.join(root, 'config/registers.json')}`,
    `--spool_dir=${path.join(dir, 'spool')}`,
    `--spool_sync=${SPOOL_SYNC_MS}ms`,
    ...extraIngestFlags,
  ]);
  const push = (name, port, grpcPort) =>
    new Proc(name, path.join(build, 'services/push/devbridge-push'), [
      `--ingest_addr=127.0.0.1:${grpc}`,
      `--listen=127.0.0.1:${port}`,
      `--grpc_listen=127.0.0.1:${grpcPort}`,
      `--node_id=${name}`,
    ]);
  const a = push('push-a', pushA, pushAGrpc);
  const b = push('push-b', pushB, pushBGrpc);
  const healthy = (port) => until(async () => (await get(port, '/healthz')).status === 200, 30000);
  const ingestMetrics = async () => (await get(ingestHttp, '/metrics')).body;

  // Viewers of the case's first 100 devices: 50 on each replica.
  const viewers = async (load) => {
    const vs = [];
    for (let i = 0; i < 2 * VIEWERS_PER_PUSH; i++) {
      const v = new Viewer(`${load.prefix}viewer-${i}`, load.device(i));
      await v.connect(i < VIEWERS_PER_PUSH ? pushA : pushB);
      vs.push(v);
    }
    assert.ok(await until(() => vs.every((v) => v.data > 0), 20000), 'every viewer gets device.data');
    return vs;
  };

  try {
    ingest.start();
    assert.ok(await healthy(ingestHttp), 'ingest healthy');
    a.start();
    b.start();
    assert.ok(await healthy(pushA), 'push-a healthy');
    assert.ok(await healthy(pushB), 'push-b healthy');

    // 1. kill -9 ingest under load, with a command in flight; restart it.
    if (want(1)) {
      const load = new Load('k1-').start();
      const vs = await viewers(load);
      await sleep(3000);
      // A device that only answers (the loaded ones stream data, which would be taken for the
      // reply): it answers after 4 s, so the command is in flight when ingest dies (1.5 s was
      // too short on a loaded machine: the reply came before the row was stored and the kill).
      const meter = new Proc('sim-k1-meter', path.join(build, 'sim/devbridge-sim'), [
        `--mqtt_url=${mqttUrl}`, '--devices=1', '--id_prefix=k1m-', '--heartbeat_interval=1s', '--reply_delay=4s',
        `--register_map=${path.join(root, 'config/registers.json')}`, '--stats_interval=0',
      ]).start();
      assert.ok(await until(() => psql("SELECT count(*) FROM devices WHERE device_id = 'k1m-0001' AND online").trim() === '1', 10000),
        'the meter is online');
      const asker = vs[0];
      asker.send({ action: 'command', requestId: 'r1', deviceId: 'k1m-0001', function: 3, address: 0, count: 2, timeoutMs: 10000 });
      const accepted = await until(() => asker.frames.find((f) => f.type === 'command.accepted'), 5000);
      assert.ok(accepted, 'command accepted');
      const commandId = accepted.data.commandId;
      // The device answers after 4 s: kill while it is in flight, once PostgreSQL has it.
      const stored = await until(
        () => ['queued', 'sent'].includes(psql(`SELECT status FROM commands WHERE command_id = '${commandId}'`).trim()),
        3000,
        20,
      );
      if (!stored) log("the command's row was not in PostgreSQL yet at the kill");
      const before = vs.map((v) => v.data);
      await ingest.kill9();
      log('ingest killed (kill -9)');
      await sleep(2000);
      const t0 = Date.now();
      ingest.start();
      assert.ok(await healthy(ingestHttp), 'ingest healthy after restart');
      const healthyMs = Date.now() - t0;
      const result = await until(() => asker.frames.find((f) => f.type === 'command.result'), 10000);
      assert.ok(result, 'the command in flight gets a result');
      assert.equal(result.code, 503, `the command in flight fails with 503: ${JSON.stringify(result)}`);
      if (stored) {
        assert.ok(
          await until(() => psql(`SELECT status || ' ' || code FROM commands WHERE command_id = '${commandId}'`).trim() === 'failed 503', 10000),
          'its row says failed 503 after the restart',
        );
      }
      assert.ok(await until(() => vs.every((v, i) => v.data > before[i] + 5 && v.gone >= 1), 20000),
        'every viewer gets a 410 and goes on');
      for (const v of vs) assert.equal(v.closes, 0, `${v.clientId} stays connected`);
      await load.stop();
      await meter.term();
      vs.forEach((v) => v.close());
      const r = await account(load, '1. kill -9 ingest', { healthyMs });
      assert.ok(r.lost <= LOSS_WINDOW, `lost ${r.lost} > the spool_sync window (${LOSS_WINDOW} frames)`);
      assert.equal(r.duplicated, 0, 'nothing stored twice');
    }

    // 2. kill -9 one push replica: its viewers recover on the other with no gap.
    if (want(2)) {
      const load = new Load('k2-').start();
      const vs = await viewers(load);
      await sleep(3000);
      const onA = vs.slice(0, VIEWERS_PER_PUSH);
      const onB = vs.slice(VIEWERS_PER_PUSH);
      await a.kill9();
      log('push-a killed (kill -9)');
      assert.ok(await until(() => onA.every((v) => v.closes === 1), 10000), "push-a's viewers see the close");
      const t0 = Date.now();
      const before = onA.map((v) => v.data);
      for (const v of onA) await v.connect(pushB, /*recover=*/ true);
      const healthyMs = Date.now() - t0;
      assert.ok(await until(() => onA.every((v, i) => v.data > before[i] + 5), 20000), 'they go on on push-b');
      await load.stop();
      for (const v of onA) {
        assert.equal(v.gone, 0, `${v.clientId}: recovered without 410`);
        assert.equal(v.outOfOrder, 0, `${v.clientId}: no gap or duplicate across the move`);
      }
      for (const v of onB) {
        assert.equal(v.closes, 0, `${v.clientId} on push-b stays connected`);
        assert.equal(v.gone + v.otherErrors.length, 0, `${v.clientId} on push-b sees no error`);
        assert.equal(v.outOfOrder, 0, `${v.clientId} on push-b: no gap`);
      }
      vs.forEach((v) => v.close());
      a.start();
      assert.ok(await healthy(pushA), 'push-a back');
      const r = await account(load, '2. kill -9 one push replica', { healthyMs });
      assert.equal(r.lost, 0);
      assert.equal(r.duplicated, 0);
    }

    // 3. kill -9 PostgreSQL, start it 30 s later: the spool takes it, not the broker.
    if (want(3)) {
      const load = new Load('k3-').start();
      await sleep(3000);
      const pushbacks = metric(await ingestMetrics(), 'devbridge_ingest_pushbacks_total');
      const pid = Number(fs.readFileSync(path.join(dir, 'pg/data/postmaster.pid'), 'utf8').split('\n')[0]);
      const pids = killTree(pid);
      log('PostgreSQL killed (kill -9)');
      assert.ok(await until(() => pids.every((p) => !alive(p)), 10000), 'PostgreSQL gone');
      const t0 = Date.now();
      let saw503 = false;
      let mqttDown = 0;
      while (Date.now() - t0 < 30000) {
        if ((await get(ingestHttp, '/healthz')).status === 503) saw503 = true;
        if (metric(await ingestMetrics(), 'devbridge_ingest_mqtt_up') !== 1) mqttDown++;
        await sleep(500);
      }
      svc('start-pg');
      const t1 = Date.now();
      assert.ok(await healthy(ingestHttp), 'ingest healthy after PostgreSQL is back');
      const healthyMs = Date.now() - t1;
      await sleep(2000);
      await load.stop();
      const m = await ingestMetrics();
      assert.ok(saw503, '/healthz is 503 while PostgreSQL is down');
      assert.equal(mqttDown, 0, 'ingest stays connected to the broker');
      assert.equal(metric(m, 'devbridge_ingest_pushbacks_total'), pushbacks, 'intake never paused: the broker kept nothing');
      const r = await account(load, '3. kill -9 PostgreSQL for 30 s', { healthyMs });
      assert.equal(r.lost, 0);
      assert.equal(r.duplicated, 0);
    }

    // 4. kill -9 mosquitto (persistence on), start it again: the broker's durability bounds it.
    if (want(4)) {
      const load = new Load('k4-').start();
      await sleep(3000);
      const pid = Number(fs.readFileSync(path.join(dir, 'mqtt/pid'), 'utf8'));
      killTree(pid);
      log('mosquitto killed (kill -9)');
      await until(() => !alive(pid), 5000);
      await sleep(2000);
      svc('start-mqtt');
      const t0 = Date.now();
      assert.ok(await until(async () => metric(await ingestMetrics(), 'devbridge_ingest_mqtt_up') === 1, 30000));
      const healthyMs = Date.now() - t0;
      await sleep(3000);
      await load.stop();
      const r = await account(load, '4. kill -9 mosquitto', { healthyMs });
      // Not asserted: what mosquitto acknowledged and had not yet saved (autosave_interval 1 s)
      // or delivered is the broker's to lose.
      log(`   mosquitto lost ${r.lost} acknowledged frame(s): its own durability (autosave_interval) bounds this`);
    }

    // 5. A full spool (spool_max_mb=1) while PostgreSQL is down: intake pauses, nothing lost.
    if (want(5)) {
      const { ms } = await ingest.term();
      log(`ingest stopped by SIGTERM in ${(ms / 1000).toFixed(1)} s`);
      results.sigtermMs = ms;
      ingest.start(['--spool_max_mb=1']);  // the last --spool_max_mb wins
      assert.ok(await healthy(ingestHttp));
      const load = new Load('k5-').start();
      await sleep(2000);
      const pushbacks = metric(await ingestMetrics(), 'devbridge_ingest_pushbacks_total');
      svc('stop-pg');
      const full = await until(async () => metric(await ingestMetrics(), 'devbridge_ingest_spool_full') === 1, 30000, 200);
      assert.ok(full, 'the spool fills');
      assert.ok(await until(() => /intake paused: the spool holds/.test(ingest.log()), 10000), 'a clear log line');
      assert.ok(metric(await ingestMetrics(), 'devbridge_ingest_pushbacks_total') > pushbacks, 'counted');
      await sleep(3000);
      svc('start-pg');
      const t0 = Date.now();
      assert.ok(await healthy(ingestHttp));
      const healthyMs = Date.now() - t0;
      await sleep(2000);
      await load.stop();
      const r = await account(load, '5. spool full (spool_max_mb=1), PostgreSQL down', { healthyMs });
      // Each pause closes the connection with messages in flight: the broker sends those it did
      // not see acknowledged again, flagged DUP, and the MQTT client drops the ones it had taken
      // (by packet id; mqtt/redelivery_filter.h). Before that filter, thousands were stored twice.
      const m = await ingestMetrics();
      log(`   intake paused ${metric(m, 'devbridge_ingest_pushbacks_total') - pushbacks} time(s); redeliveries: ` +
          `${metric(m, 'devbridge_ingest_mqtt_dup_flagged')} flagged DUP, ` +
          `${metric(m, 'devbridge_ingest_mqtt_duplicates_dropped')} dropped as taken already`);
      assert.equal(r.lost, 0);
      assert.equal(r.duplicated, 0, 'nothing stored twice');
      await ingest.term();
      ingest.start();
      assert.ok(await healthy(ingestHttp));
    }

    // 6. PostgreSQL unreachable without being down: ingest notices within its timeouts.
    if (want(6)) {
      const load = new Load('k6-').start();
      await sleep(3000);
      proxy.freeze(true);
      log('PostgreSQL behind a silent network');
      const t0 = Date.now();
      const noticed = await until(async () => (await get(ingestHttp, '/healthz')).status === 503, 30000, 250);
      const noticedMs = Date.now() - t0;
      assert.ok(noticed, '/healthz says 503');
      await sleep(Math.max(0, 20000 - (Date.now() - t0)));
      proxy.freeze(false);
      const t1 = Date.now();
      assert.ok(await healthy(ingestHttp));
      const healthyMs = Date.now() - t1;
      await sleep(2000);
      await load.stop();
      assert.match(ingest.log(), /abandoned/, 'the hanging statement was abandoned');
      const r = await account(load, '6. PostgreSQL unreachable (silent network) for 20 s', { healthyMs, noticedMs });
      log(`   noticed after ${(noticedMs / 1000).toFixed(1)} s`);
      assert.equal(r.lost, 0);
      assert.equal(r.duplicated, 0);
    }
  } finally {
    killAll();
    proxy.close();
    if (process.env.DEVBRIDGE_FAULTS_TABLE) {
      const lines = [
        '| case | offered | acknowledged by the broker | stored | lost | duplicated | healthy again after |',
        '|---|---|---|---|---|---|---|',
        ...results.map(
          (r) =>
            `| ${r.name} | ${r.offered} | ${r.acknowledged} | ${r.stored} | ${r.lost} | ${r.duplicated} | ${
              r.healthyMs === undefined ? '–' : (r.healthyMs / 1000).toFixed(1) + ' s'
            } |`,
        ),
      ];
      fs.writeFileSync(process.env.DEVBRIDGE_FAULTS_TABLE, lines.join('\n') + '\n');
    }
  }
}

main().then(
  () => {
    log('all cases passed');
    process.exit(0);
  },
  (e) => {
    console.error(e);
    log(`logs in ${logs}`);
    process.exit(1);
  },
);
