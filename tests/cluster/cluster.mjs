// The cluster suite (issue "Past one machine", ctest label `cluster`): 3 nats-server with
// JetStream (a 3-replica event stream), 2 ingest replicas sharing the fleet (--partitions), 3
// push replicas on the bus, real mosquitto and PostgreSQL, WebSocket viewers, and numbered
// frames at QoS 1 whose every acknowledged one is then looked for in table readings. Cases,
// in order, under load:
//   1. kill -9 one ingest: the other holds every partition and adopts the dead one's MQTT
//      session, so every viewer's data goes on while it is down (how soon is printed); no
//      viewer is disconnected or reset; the killed one comes back, takes its session back and
//      gets its share of the partitions again.
//   2. kill -9 one nats-server: no viewer is disconnected; it comes back and catches up.
//   3. kill -9 one push replica: its viewers recover on the others with no gap.
//   4. a rolling restart of every process (SIGTERM, start again), one at a time, each
//      nats-server once the one before has caught up: no 410.
// Then: nothing lost, nothing stored twice, and every viewer saw its offsets one after
// another, none missing and none twice. Figures (timings) are printed, never asserted.
//
// Run by ctest inside tests/harness/with-services: see tests/cluster/CMakeLists.txt.
// Arguments: BUILD_DIR.
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { until, freePort, get, metric, Proc, Viewer, Load, frameCounts } from '../faults/fleet.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const build = path.resolve(process.argv[2] || process.env.DEVBRIDGE_BUILD_DIR || path.join(root, 'build'));
const dir = process.env.DEVBRIDGE_TEST_DIR;
if (!dir) throw new Error('run inside tests/harness/with-services (DEVBRIDGE_TEST_DIR is not set)');
const mqttUrl = process.env.DEVBRIDGE_TEST_MQTT_URL;
const pgPort = Number(process.env.DEVBRIDGE_TEST_PG_PORT);
const logs = path.join(dir, 'cluster');
fs.mkdirSync(logs, { recursive: true });

const DEVICES = 60;
const DATA_INTERVAL_MS = 200; // 60 devices × 5/s = 300 frames/s
const VIEWERS_PER_PUSH = 10;
const PARTITIONS = 8;
// ingest's default: partitions of a dead replica move within 10 s, and a bus server's loss
// (seconds without an answer) does not make them move at all.
const LEASE_TTL = '6s';

const log = (...a) => console.log(`[cluster ${new Date().toISOString().slice(11, 23)}]`, ...a);
const psql = (sql) =>
  execFileSync('psql', [`postgresql://postgres@127.0.0.1:${pgPort}/cluster`, '-Atqc', sql], {
    encoding: 'utf8',
    maxBuffer: 256 << 20,
  });
const healthy = (port, ms = 60000) => until(async () => (await get(port, '/healthz')).status === 200, ms);

async function main() {
  execFileSync('psql', [`postgresql://postgres@127.0.0.1:${pgPort}/postgres`, '-qc', 'CREATE DATABASE cluster']);
  const port = () => freePort();

  // Three nats-server routed to each other.
  const nats = [];
  for (let i = 0; i < 3; i++) nats.push({ client: await port(), route: await port(), monitor: await port() });
  const natsProcs = nats.map((n, i) => {
    n.store = path.join(logs, `nats-${i + 1}`);
    const conf = path.join(logs, `nats-${i + 1}.conf`);
    const routes = nats.filter((_, j) => j !== i).map((m) => `nats-route://127.0.0.1:${m.route}`).join(', ');
    fs.writeFileSync(conf, [
      `server_name: n${i + 1}`,
      `listen: 127.0.0.1:${n.client}`,
      `http: 127.0.0.1:${n.monitor}`,
      `jetstream { store_dir: "${n.store}" }`,
      `cluster { name: devbridge-cluster-test, listen: 127.0.0.1:${n.route}, routes: [${routes}] }`,
    ].join('\n'));
    return new Proc(`nats-${i + 1}`, 'nats-server', ['-c', conf], logs);
  });
  const busUrls = nats.map((n) => `nats://127.0.0.1:${n.client}`).join(',');
  // The servers (0, 1, 2) the JetStream metadata leader's group lacks; all of them while no
  // server names a leader. Servers are named n1..n3, and /jsz's meta_cluster lists the
  // leader's peers only on the leader.
  const leftOut = async () => {
    const meta = async (i) => {
      const r = await get(nats[i].monitor, '/jsz');
      try {
        return r.status === 200 ? JSON.parse(r.body).meta_cluster || {} : {};
      } catch {
        return {};
      }
    };
    for (let i = 0; i < 3; i++) {
      const leader = (await meta(i)).leader || '';
      const l = Number(leader.slice(1)) - 1;
      if (!/^n[1-3]$/.test(leader)) continue;
      const group = await meta(l);
      if (group.leader !== leader) continue;
      const names = new Set([leader, ...(group.replicas || []).map((r) => r.name)]);
      return [0, 1, 2].filter((j) => !names.has(`n${j + 1}`));
    }
    return [0, 1, 2];
  };
  // A nats-server started again has caught up once its copy of every stream holds what the
  // others held when we began to wait. nats-server's /healthz says ok before that, and
  // a stream leader stopped with SIGTERM may hand the stream to such a copy, which then writes
  // its own events over sequences the others had acknowledged (seen here: 26 events of one
  // stream replaced on two servers of three, and viewers missing them). So the next server is
  // restarted only after this (README, Operations: "Restarting `nats-server`").
  // Every stream as server i sees it (`/jsz?streams=true`: its copy's state, the stream's
  // leader and replicas), or null when it does not answer.
  const streams = async (i) => {
    const r = await get(nats[i].monitor, '/jsz?streams=true');
    if (r.status !== 200) return null;
    return (JSON.parse(r.body).account_details || []).flatMap((a) => a.stream_detail || []);
  };
  const streamTails = async (i) => {
    const all = await streams(i);
    return all && Object.fromEntries(all.map((st) => [st.name, st.state.last_seq]));
  };
  // For the log: each stream's state and raft group (leader, replicas' lag) as server i sees them.
  const streamViews = async (i) => {
    const all = await streams(i);
    return all ? JSON.stringify(all.map(({ name, state, cluster }) => ({ name, state, cluster }))) : 'no answer';
  };
  const caughtUp = async (i, patience = 60000) => {
    const want = {};
    for (let j = 0; j < 3; j++) {
      if (j === i) continue;
      for (const [name, seq] of Object.entries((await streamTails(j)) || {})) want[name] = Math.max(want[name] || 0, seq);
    }
    const began = Date.now();
    let mine = null;
    const ok = await until(async () => {
      mine = await streamTails(i);
      return mine && Object.keys(want).length > 0 && Object.entries(want).every(([name, seq]) => (mine[name] || 0) >= seq);
    }, patience, 200);
    if (ok) figures.push(`nats-${i + 1} caught up ${((Date.now() - began) / 1000).toFixed(1)} s after it reported healthy`);
    else {
      log(`nats-${i + 1} did not catch up in ${patience / 1000} s: wanted ${JSON.stringify(want)}, has ${JSON.stringify(mine)}`);
      for (let j = 0; j < 3; j++) log(`nats-${j + 1}'s view of the streams: ${await streamViews(j)}`);
    }
    return ok;
  };
  // Starts nats-server i again after it stopped and waits until it has caught up. A copy that
  // never does is a failure: with nats-server 2.9.10 a copy restarted after a kill -9 could
  // stay stuck for good (its count of refused appends, `clfs`, other than the leader's;
  // nats-io/nats-server#4365, fixed in 2.9.21), which is why scripts/install-deps installs
  // 2.10. caughtUp logs every server's view of the streams when it gives up.
  //
  // A server started again may also never get current with the cluster's metadata leader
  // (its /healthz says "JetStream is not current with the meta leader" for good; nats-server
  // 2.10.27, in 2 runs of 14, after a kill -9 and after a SIGTERM), be left out of the
  // metadata group (see the start, below), or have a copy that stops short (1 run of 35: the
  // event stream 1,060 messages behind for 60 s while its other streams were ahead). What
  // README, Operations, tells an operator to do is done once: after 30 s, stop it and start
  // it again.
  const joined = async (i, ms) =>
    until(async () => (await get(nats[i].monitor, '/healthz')).status === 200 && !(await leftOut()).includes(i), ms, 250);
  // Stops server i, stuck as `what` says 30 s after its start, and starts it once more; returns
  // the seconds until it was healthy and in the metadata group again.
  const startAgain = async (i, what) => {
    const why = await get(nats[i].monitor, '/healthz');
    log(`nats-${i + 1} ${what} 30 s after its start (${(why.body || '').trim()}): stopping it and starting it again`);
    const began = Date.now();
    await natsProcs[i].term();
    natsProcs[i].start();
    assert.ok(await joined(i, 60000), `nats-${i + 1} healthy and in the metadata group after a second start`);
    return (Date.now() - began) / 1000;
  };
  const rejoin = async (i) => {
    natsProcs[i].start();
    if ((await joined(i, 30000)) && (await caughtUp(i, 30000))) return;
    const seconds = await startAgain(i, 'not healthy, left out of the metadata group or not caught up');
    figures.push(`nats-${i + 1} healthy ${seconds.toFixed(1)} s after a second start`);
    assert.ok(await caughtUp(i), `nats-${i + 1} caught up`);
  };

  const ingestPorts = [];
  for (let i = 0; i < 2; i++) ingestPorts.push({ grpc: await port(), http: await port() });
  const ingests = ingestPorts.map((p, i) =>
    new Proc(`ingest-${i + 1}`, path.join(build, 'services/ingest/devbridge-ingest'), [
      `--mqtt_url=${mqttUrl}`,
      `--mqtt_client_id=cluster-ingest-${i + 1}`,
      `--pg_dsn=postgresql://postgres@127.0.0.1:${pgPort}/cluster`,
      `--grpc_listen=127.0.0.1:${p.grpc}`,
      `--http_listen=127.0.0.1:${p.http}`,
      `--register_map=${path.join(root, 'config/registers.json')}`,
      `--spool_dir=${path.join(logs, `spool-${i + 1}`)}`,
      `--bus=${busUrls}`,
      `--partitions=${PARTITIONS}`,
      `--lease_ttl=${LEASE_TTL}`,
    ], logs));
  const ingestGauge = async (i, name) => metric((await get(ingestPorts[i].http, '/metrics')).body, name);
  const held = (i) => ingestGauge(i, 'devbridge_ingest_partitions_held');
  const adopted = (i) => ingestGauge(i, 'devbridge_ingest_sessions_adopted');
  const shared = () => until(async () => (await held(0)) === PARTITIONS / 2 && (await held(1)) === PARTITIONS / 2, 60000);

  const pushPorts = [];
  for (let i = 0; i < 3; i++) pushPorts.push({ http: await port(), grpc: await port() });
  const ingestAddr = ingestPorts.map((p) => `127.0.0.1:${p.grpc}`).join(',');
  const pushes = pushPorts.map((p, i) =>
    new Proc(`push-${i + 1}`, path.join(build, 'services/push/devbridge-push'), [
      `--ingest_addr=${ingestAddr}`,
      `--bus=${busUrls}`,
      `--listen=127.0.0.1:${p.http}`,
      `--grpc_listen=127.0.0.1:${p.grpc}`,
      `--node_id=push-${i + 1}`,
      '--node_timeout=6s',
    ], logs));

  const load = new Load('c-', { build, root, logs, mqttUrl, devices: DEVICES, intervalMs: DATA_INTERVAL_MS });
  const viewers = [];
  const figures = [];
  // What each push replica counted of what the bus did to its readers.
  const pushCounters = async () => {
    const out = [];
    for (let k = 0; k < 3; k++) {
      const body = (await get(pushPorts[k].http, '/metrics')).body || '';
      const lines = body.split('\n').filter((l) =>
        /^devbridge_push_(bus_reader_restarts|bus_append_errors|bus_repeated|bus_gaps|frames_repeated)_total /.test(l));
      out.push(`push-${k + 1}: ${lines.join(', ')}`);
    }
    return out;
  };
  try {
    // One after another (each once it answers): started all at once, nats-server 2.10.27
    // sometimes leaves one server out of the JetStream metadata group for good, and ingest
    // cannot create its 3-copy streams ("no suitable peers", 10005; 4 starts of 95 here,
    // none of 160 started one after another). Started one after another, a server can still
    // stay unhealthy ("JetStream is not current with the meta leader", for a whole minute in
    // one CI run of 2026-12-04) or left out: such a server is started once more, as rejoin()
    // does after a kill.
    for (let i = 0; i < 3; i++) {
      natsProcs[i].start();
      assert.ok(await until(async () => (await get(nats[i].monitor, '/varz')).status === 200, 10000), `nats-${i + 1} up`);
    }
    for (let i = 0; i < 3; i++) {
      if (!(await joined(i, 30000))) await startAgain(i, 'not healthy or left out of the JetStream metadata group');
    }
    const varz = await get(nats[0].monitor, '/varz');
    log(`nats-server ${varz.status === 200 ? JSON.parse(varz.body).version : '(version unknown)'}`);
    ingests.forEach((p) => p.start());
    for (let i = 0; i < 2; i++) assert.ok(await healthy(ingestPorts[i].http), `ingest-${i + 1} healthy`);
    assert.ok(await shared(), 'each ingest replica holds half of the partitions');
    pushes.forEach((p) => p.start());
    for (let i = 0; i < 3; i++) assert.ok(await healthy(pushPorts[i].http), `push-${i + 1} healthy`);

    load.start();
    for (let i = 0; i < 3 * VIEWERS_PER_PUSH; i++) {
      const v = new Viewer(`viewer-${i}`, load.device(i));
      v.home = i % 3;
      await v.connect(pushPorts[v.home].http);
      viewers.push(v);
    }
    assert.ok(await until(() => viewers.every((v) => v.data > 0), 30000), 'every viewer gets device.data');
    // A bus server's loss makes the readers that were on it start again from where they were
    // (the client notices after missed heartbeats): allow for it.
    const flowing = async (what, vs = viewers) => {
      const before = vs.map((v) => v.data);
      const on = await until(() => vs.every((v, i) => v.data > before[i]), 40000);
      const stuck = vs.filter((v, i) => v.data <= before[i]).map((v) => `${v.clientId} (${v.systemId} on push-${v.home + 1})`);
      assert.ok(on, `${what}: every viewer's data goes on; stuck: ${stuck.join(', ')}`);
    };
    const untouched = (what) => {
      for (const v of viewers) {
        assert.equal(v.closes, 0, `${what}: ${v.clientId} was disconnected`);
        assert.equal(v.gone, 0, `${what}: ${v.clientId} got 410`);
      }
    };

    // 1. kill -9 one ingest. The survivor takes its partitions, and its MQTT session (where
    // mosquitto goes on sharing messages while the session persists): every viewer's data goes
    // on with ingest-1 still down.
    await ingests[0].kill9();
    const killed = Date.now();
    const since = (t) => ((Date.now() - t) / 1000).toFixed(1);
    const before = viewers.map((v) => v.data);
    assert.ok(await until(async () => (await held(1)) === PARTITIONS, 30000), 'ingest-2 holds every partition');
    figures.push(`ingest-2 held every partition ${since(killed)} s after ingest-1's kill -9 (lease_ttl ${LEASE_TTL})`);
    assert.ok(await until(async () => (await adopted(1)) === 1, 30000),
      "ingest-2 adopts ingest-1's MQTT session");
    figures.push(`ingest-2 adopted ingest-1's MQTT session ${since(killed)} s after the kill`);
    const resumed = await until(() => viewers.every((v, i) => v.data > before[i] + 5), 40000);
    const stuck = viewers.filter((v, i) => v.data <= before[i] + 5).map((v) => v.clientId);
    assert.ok(resumed, `with ingest-1 down, every viewer's data goes on; stuck: ${stuck.join(', ')}`);
    figures.push(`every viewer had 5 frames more ${since(killed)} s after ingest-1's kill -9, ingest-1 still down`);
    untouched('ingest-1 killed');
    ingests[0].start();
    assert.ok(await healthy(ingestPorts[0].http), 'ingest-1 healthy again');
    await flowing('ingest-1 back');
    assert.ok(await shared(), 'the partitions are shared again');
    assert.ok(await until(async () => (await adopted(1)) === 0, 30000),
      'ingest-2 lets the session go once ingest-1 is back');
    untouched('ingest-1 back');
    log('case 1 done: kill -9 of an ingest replica');

    // 2. kill -9 one nats-server.
    await natsProcs[1].kill9();
    await flowing('nats-2 killed');
    untouched('nats-2 killed');
    await rejoin(1);
    await flowing('nats-2 back');
    log('case 2 done: kill -9 of a nats-server');

    // 3. kill -9 one push replica: its viewers recover on the next one.
    const recoverOn = async (k) => {
      const mine = viewers.filter((v) => v.home === k);
      for (const v of mine) {
        v.close();
        v.home = (k + 1) % 3;
        const gapsBefore = v.outOfOrder;
        await v.connect(pushPorts[v.home].http, true);
        v.gapsAtReconnect = gapsBefore;
      }
      await flowing(`push-${k + 1}'s viewers on push-${((k + 1) % 3) + 1}`, mine);
      for (const v of mine) {
        assert.equal(v.gone, 0, `${v.clientId} got 410 recovering`);
        assert.equal(v.outOfOrder, v.gapsAtReconnect, `${v.clientId} recovered with a gap`);
      }
    };
    await pushes[2].kill9();
    await recoverOn(2);
    pushes[2].start();
    assert.ok(await healthy(pushPorts[2].http), 'push-3 healthy again');
    log('case 3 done: kill -9 of a push replica');
    const atCase4 = await pushCounters();  // the rolling restart starts every counter again

    // 4. a rolling restart of every process, one at a time.
    for (let i = 0; i < 3; i++) {
      await natsProcs[i].term();
      await rejoin(i);
      await flowing(`nats-${i + 1} restarted`);
    }
    for (let i = 0; i < 2; i++) {
      await ingests[i].term();
      ingests[i].start();
      assert.ok(await healthy(ingestPorts[i].http), `ingest-${i + 1} healthy after its restart`);
      assert.ok(await shared(), `the partitions are shared again after ingest-${i + 1}'s restart`);
      await flowing(`ingest-${i + 1} restarted`);
    }
    for (let k = 0; k < 3; k++) {
      await pushes[k].term();
      await recoverOn(k);
      pushes[k].start();
      assert.ok(await healthy(pushPorts[k].http), `push-${k + 1} healthy after its restart`);
    }
    for (const v of viewers) assert.equal(v.gone, 0, `${v.clientId} got 410 during the rolling restart`);
    log('case 4 done: rolling restart');

    // Everything acknowledged is stored once.
    await load.stop();
    let counts;
    await until(() => (counts = frameCounts(psql, load)).lost === 0, 60000, 500);
    figures.push(`acknowledged ${load.ackedCount}, stored ${counts.stored}, lost ${counts.lost}, stored twice ${counts.duplicated}`);
    figures.push(`viewers: ${viewers.reduce((n, v) => n + v.data, 0)} device.data frames, ${viewers.reduce((n, v) => n + v.outOfOrder, 0)} offset gaps, ${viewers.reduce((n, v) => n + v.gone, 0)} 410s`);
    for (const f of figures) log(f);
    for (const v of viewers) if (v.anomalies.length) log(`${v.clientId} (${v.systemId}): ${v.anomalies.join('; ')}`);
    // What each ingest replica counted on the way, to tell a loss or a copy apart.
    for (let i = 0; i < 2; i++) {
      const body = (await get(ingestPorts[i].http, '/metrics')).body;
      const lines = body.split('\n').filter((l) => /^devbridge_ingest_(intake|partitions|sessions|messages_dropped|bus_dropped|bus_conflicts|db_fenced_records)\w*(_total)? /.test(l));
      log(`ingest-${i + 1}: ${lines.join(', ')}`);
    }
    for (const line of atCase4) log(`before the rolling restart, ${line}`);
    for (const line of await pushCounters()) log(`after it, ${line}`);
    if (counts.duplicated > 0) {
      // What it takes to find out why: the same taken_at twice is one forwarded message
      // processed twice; two times are two copies from the broker.
      log(psql(`SELECT device_id, string_agg(to_char(received_at, 'HH24:MI:SS.MS'), ' ' ORDER BY received_at)
        FROM readings WHERE device_id LIKE 'c-%' GROUP BY device_id, raw HAVING count(*) > 1 LIMIT 10`));
    }
    assert.equal(counts.lost, 0, 'acknowledged frames lost');
    assert.equal(counts.duplicated, 0, 'frames stored twice');
    // Each viewer saw its stream's offsets one after another: none missing, none twice.
    for (const v of viewers) assert.equal(v.outOfOrder, 0, `${v.clientId}: offsets out of order: ${v.anomalies.join('; ')}`);
  } catch (e) {
    // Where each service's threads were when the suite gave up (with gdb, if installed): a
    // stream stuck for 40 s is a thread waiting somewhere.
    for (const p of [...pushes, ...ingests]) {
      if (!p.child || p.child.exitCode !== null || !fs.existsSync('/usr/bin/gdb')) continue;
      try {
        const stacks = execFileSync('gdb', ['-p', String(p.child.pid), '-batch', '-ex', 'thread apply all bt'],
          { timeout: 60000, stdio: ['ignore', 'pipe', 'ignore'] });
        fs.writeFileSync(path.join(logs, `${p.name}.stacks`), stacks);
      } catch { /* no stacks: the failure is reported anyway */ }
    }
    // The last lines of every process's log, for a run whose directory is gone (CI).
    for (const p of [...natsProcs, ...ingests, ...pushes]) {
      const file = p.logFile;
      if (!file || !fs.existsSync(file)) continue;
      const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l && !/Route connection created|Duplicate Route/.test(l));
      log(`${p.name}.log, last lines:\n  ${lines.slice(-15).join('\n  ')}`);
    }
    throw e;
  } finally {
    for (const v of viewers) v.close();
    for (const p of [...pushes, ...ingests, ...natsProcs]) if (p.child && p.child.exitCode === null) p.child.kill('SIGKILL');
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    console.error(`logs: ${logs}`);
    process.exit(1);
  },
);
