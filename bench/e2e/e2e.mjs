// bench/e2e: device → viewer latency and CPU per frame of devbridge and its peers, in one run
// on one machine (issue "Real time"). For every system and rate: 100 bench devices publish
// Modbus replies at QoS 1 (e2e_bench load; each frame carries its send time), 10 viewers
// receive every frame (e2e_bench view-ws / view-mqtt) and take its latency.
//   mosquitto    viewers subscribe to the broker itself (the floor: no relay at all)
//   node-relay   relay.mjs: npm mqtt + ws, CRC check and decode (relay-frame.cjs)
//   node-red     Node-RED 4: mqtt in → function (the same decode) → websocket out
//   devbridge    ingest (spool on, PostgreSQL with fsync on) and one push replica; viewers on
//                system `fleet`
// Prints one line per run and writes bench/RESULTS.md and bench/e2e-latency.png (gnuplot).
// Run it through scripts/bench e2e, which starts the broker and PostgreSQL.
//   node e2e.mjs BUILD_DIR
// Environment: E2E_SYSTEMS (mosquitto,node-relay,node-red,devbridge), E2E_RATES
// (1000,5000,10000), E2E_SECONDS (10 per run), E2E_INGEST_FLAGS and E2E_PUSH_FLAGS (extra
// flags, space-separated).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const build = path.resolve(process.argv[2] || path.join(root, 'build-release'));
const mqttUrl = process.env.DEVBRIDGE_TEST_MQTT_URL;
const pgDsn = process.env.DEVBRIDGE_TEST_PG_DSN;
if (!mqttUrl || !pgDsn) {
  console.error('e2e: run me through scripts/bench e2e (it starts mosquitto and PostgreSQL)');
  process.exit(2);
}
const ALL_SYSTEMS = 'mosquitto,node-relay,node-red,devbridge';
const ALL_RATES = '1000,5000,10000';
const SYSTEMS = (process.env.E2E_SYSTEMS || ALL_SYSTEMS).split(',');
const RATES = (process.env.E2E_RATES || ALL_RATES).split(',').map(Number);
const SECONDS = Number(process.env.E2E_SECONDS || 10);
const DEVICES = 100;
const VIEWERS = 10;
const bench = path.join(build, 'bench/e2e_bench');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'devbridge-e2e-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

async function until(what, fn, ms) {
  const deadline = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`e2e: timed out waiting for ${what}`);
    await sleep(100);
  }
}

// CPU seconds (user + system) of a process, or of every process with this command name.
function cpuOfPid(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}
function cpuOfComm(comm) {
  let total = 0;
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === comm) total += cpuOfPid(pid);
    } catch {}
  }
  return total;
}

// A child process with its output in a log file; `lines` are its stdout lines so far.
class Proc {
  constructor(name, cmd, args, env = {}) {
    this.name = name;
    this.logFile = path.join(work, `${name}.log`);
    const log = fs.openSync(this.logFile, 'a');
    this.child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', log] });
    this.out = '';
    this.child.stdout.on('data', (d) => {
      this.out += d;
      fs.appendFileSync(this.logFile, d);
    });
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }
  get pid() {
    return this.child.pid;
  }
  waitFor(re, ms = 60000) {
    return until(`${this.name}: ${re}`, () => re.test(this.out) || fs.readFileSync(this.logFile, 'utf8').match(re), ms);
  }
  async stop() {
    if (this.child.exitCode === null) this.child.kill('SIGTERM');
    await Promise.race([this.exited, sleep(15000)]);
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

async function httpOk(port, p) {
  try {
    return (await fetch(`http://127.0.0.1:${port}${p}`)).status === 200;
  } catch {
    return false;
  }
}

// { stage: [sum, count] } of Prometheus histograms at one service's /metrics.
async function histogramSums(port, names) {
  let text = '';
  try {
    text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  } catch {}
  const out = {};
  for (const [stage, metric] of Object.entries(names)) {
    const sum = text.match(new RegExp(`^${metric}_sum(?:\\{[^}]*\\})? ([\\d.e+-]+)$`, 'm'));
    const count = text.match(new RegExp(`^${metric}_count(?:\\{[^}]*\\})? ([\\d.e+-]+)$`, 'm'));
    if (sum && count) out[stage] = [Number(sum[1]), Number(count[1])];
  }
  return out;
}

// ---- the systems: start() → { procs (measured), viewer args, stop() } ----
const systems = {
  async mosquitto() {
    return { procs: [], viewer: ['view-mqtt', mqttUrl, String(VIEWERS)], stop: async () => {} };
  },

  async 'node-relay'() {
    const port = await freePort();
    const relay = new Proc('node-relay', process.execPath, [path.join(here, 'relay.mjs'), mqttUrl, String(port)]);
    await relay.waitFor(/relay: ready/);
    const urls = Array.from({ length: VIEWERS }, () => `ws://127.0.0.1:${port}/ws`);
    return { procs: [relay], viewer: ['view-ws', ...urls], stop: () => relay.stop() };
  },

  async 'node-red'() {
    const port = await freePort();
    const dir = fs.mkdtempSync(path.join(work, 'node-red-'));
    const red = new Proc('node-red', process.execPath,
      [path.join(here, 'node_modules/node-red/red.js'), '--settings', path.join(here, 'settings.cjs')], {
        E2E_NODE_RED_PORT: String(port), E2E_NODE_RED_DIR: dir, E2E_MQTT_PORT: new URL(mqttUrl.replace(/^tcp:/, 'http:')).port,
      });
    await red.waitFor(/Connected to broker/);
    const urls = Array.from({ length: VIEWERS }, () => `ws://127.0.0.1:${port}/ws`);
    return { procs: [red], viewer: ['view-ws', ...urls], stop: () => red.stop() };
  },

  async devbridge() {
    const db = `e2e_${process.pid}_${Date.now()}`;
    execFileSync('psql', [pgDsn, '-qc', `CREATE DATABASE ${db}`]);
    const [grpc, ingestHttp, push, pushGrpc] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
    const extra = (name) => (process.env[name] || '').split(' ').filter(Boolean);
    const ingest = new Proc('ingest', path.join(build, 'services/ingest/devbridge-ingest'), [
      `--mqtt_url=${mqttUrl}`, `--mqtt_client_id=e2e-ingest-${process.pid}`,
      `--pg_dsn=${pgDsn.replace(/\/[^/]*$/, `/${db}`)}`,
      `--grpc_listen=127.0.0.1:${grpc}`, `--http_listen=127.0.0.1:${ingestHttp}`,
      `--register_map=${path.join(root, 'bench/registers_bench.json')}`,
      `--spool_dir=${path.join(work, 'spool')}`, ...extra('E2E_INGEST_FLAGS'),
    ]);
    await until('ingest healthy', () => httpOk(ingestHttp, '/healthz'), 30000);
    const pushProc = new Proc('push', path.join(build, 'services/push/devbridge-push'), [
      `--ingest_addr=127.0.0.1:${grpc}`, `--listen=127.0.0.1:${push}`, `--grpc_listen=127.0.0.1:${pushGrpc}`,
      '--node_id=e2e-push', ...extra('E2E_PUSH_FLAGS'),
    ]);
    await until('push healthy', () => httpOk(push, '/healthz'), 30000);
    const urls = Array.from({ length: VIEWERS }, (_, i) => `ws://127.0.0.1:${push}/ws?systemId=fleet&clientId=e2e-view-${i}`);
    return {
      procs: [ingest, pushProc],
      viewer: ['view-ws', ...urls],
      // Where the time goes: the services' own stage histograms (mean of this run, in ms).
      stages: async () => ({
        ...(await histogramSums(ingestHttp, {
          intake: 'devbridge_ingest_intake_latency_ms',
          'stream wait': 'devbridge_ingest_stream_wait_latency_ms',
          'stream write': 'devbridge_ingest_stream_write_latency_ms',
          'db commit': 'devbridge_ingest_db_commit_latency_ms',
        })),
        ...(await histogramSums(push, { 'event → push queued': 'devbridge_push_delivery_latency_ms' })),
      }),
      stop: async () => {
        await pushProc.stop();
        await ingest.stop();
      },
    };
  },
};

function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// One run: viewers up, load for SECONDS at `rate`, every frame's latency and the CPU spent.
async function run(name, system, rate) {
  const out = path.join(work, `lat-${name}-${rate}.bin`);
  const viewer = new Proc(`view-${name}-${rate}`, bench, [system.viewer[0], out, ...system.viewer.slice(1)]);
  await viewer.waitFor(/ready \d+/);
  const ready = Number(viewer.out.match(/ready (\d+)/)[1]);
  if (ready !== VIEWERS) throw new Error(`${name}: only ${ready} of ${VIEWERS} viewers connected`);
  const measured = { ...Object.fromEntries(system.procs.map((p) => [p.name, () => cpuOfPid(p.pid)])),
    mosquitto: () => cpuOfComm('mosquitto'), postgres: () => (name === 'devbridge' ? cpuOfComm('postgres') : 0) };
  const before = Object.fromEntries(Object.entries(measured).map(([k, f]) => [k, f()]));
  const stagesBefore = system.stages ? await system.stages() : {};
  const load = new Proc(`load-${name}-${rate}`, bench, ['load', mqttUrl, String(DEVICES), String(rate), String(SECONDS)]);
  await load.exited;
  const m = load.out.match(/sent (\d+) frames in ([\d.]+) s \((\d+)\/s\), cpu ([\d.]+) s/);
  if (!m) throw new Error(`${name}: the load failed: ${fs.readFileSync(load.logFile, 'utf8')}`);
  const [sent, loadSeconds, achieved, loadCpu] = [Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])];
  await sleep(2000); // what is still on its way
  const cpu = Object.fromEntries(Object.entries(measured).map(([k, f]) => [k, f() - before[k]]));
  const stagesAfter = system.stages ? await system.stages() : {};
  await viewer.stop();
  const buf = fs.readFileSync(out);
  const lat = new Float32Array(buf.buffer.slice(buf.byteOffset + 16, buf.byteOffset + buf.length));
  const sorted = Float64Array.from(lat).sort();
  const r = {
    name, rate, sent, achieved, loadCpuUs: (loadCpu * 1e6) / sent, loadSeconds,
    received: sorted.length, expected: sent * VIEWERS,
    p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99), p999: quantile(sorted, 0.999), max: sorted[sorted.length - 1],
    cpuUs: Object.fromEntries(Object.entries(cpu).filter(([, v]) => v > 0).map(([k, v]) => [k, (v * 1e6) / sent])),
    sorted,
  };
  r.saturated = r.received < 0.99 * r.expected || achieved < 0.95 * rate;
  const cpuText = Object.entries(r.cpuUs).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ');
  console.log(`e2e ${name.padEnd(10)} ${String(rate).padStart(6)}/s: p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, ` +
    `p99.9 ${r.p999.toFixed(2)} ms, max ${r.max.toFixed(1)} ms; received ${r.received}/${r.expected}` +
    `${r.saturated ? ' SATURATED' : ''}; CPU µs/frame: ${cpuText || '-'}; load ${achieved}/s at ${r.loadCpuUs.toFixed(0)} µs/frame`);
  const stages = Object.entries(stagesAfter).map(([k, [sum, count]]) => {
    const [sum0, count0] = stagesBefore[k] || [0, 0];
    return count > count0 ? `${k} ${((sum - sum0) / (count - count0)).toFixed(3)}` : null;
  }).filter(Boolean);
  if (stages.length) console.log(`    stages, mean ms: ${stages.join(', ')}`);
  return r;
}

function ms(v) {
  return Number.isNaN(v) ? '–' : v < 10 ? v.toFixed(2) : v.toFixed(1);
}

function writeResults(results) {
  const date = new Date().toISOString().slice(0, 10);
  const cpuModel = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) || [])[1] || 'unknown CPU';
  const head = ['relay', ...RATES.flatMap((r) => [`p50 @${r / 1000}k/s`, `p99 @${r / 1000}k/s`]), 'CPU per frame (relay + its database)'];
  const lines = [
    '# bench/e2e results',
    '',
    `Written by \`scripts/bench e2e\` on ${date}: ${os.cpus().length} cores (${cpuModel}), ${Math.round(os.totalmem() / 2 ** 30)} GiB;`,
    `${DEVICES} devices publishing Modbus replies at QoS 1 to mosquitto, ${VIEWERS} WebSocket viewers (MQTT subscribers for`,
    `"mosquitto"), ${SECONDS} s per rate, everything on loopback. Latency is device → viewer, in ms; "saturated" means`,
    'the system delivered less than 99% of the frames in time or the load generator could not offer the rate.',
    'devbridge runs with PostgreSQL (fsync on) and its spool.',
    '',
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
  ];
  for (const name of SYSTEMS) {
    const row = [name];
    const cpu = [];
    for (const rate of RATES) {
      const r = results.find((x) => x.name === name && x.rate === rate);
      if (!r) row.push('–', '–');
      else if (r.saturated) row.push('saturated', 'saturated');
      else row.push(`${ms(r.p50)} ms`, `${ms(r.p99)} ms`);
      if (r) {
        const relay = Object.entries(r.cpuUs).filter(([k]) => k !== 'mosquitto').reduce((a, [, v]) => a + v, 0);
        if (relay > 0) cpu.push(`${relay.toFixed(0)} µs @${rate / 1000}k`);
      }
    }
    row.push(cpu.join(', ') || '–');
    lines.push(`| ${row.join(' | ')} |`);
  }
  lines.push('', '## Every run', '', '| system | rate | offered | p50 | p99 | p99.9 | max | received / expected | CPU µs per frame | load µs per frame |', '|---|---|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    lines.push(`| ${r.name} | ${r.rate}/s | ${r.achieved}/s | ${ms(r.p50)} | ${ms(r.p99)} | ${ms(r.p999)} | ${ms(r.max)} | ` +
      `${r.received} / ${r.expected}${r.saturated ? ' (saturated)' : ''} | ` +
      `${Object.entries(r.cpuUs).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')} | ${r.loadCpuUs.toFixed(0)} |`);
  }
  lines.push('', '![latency distributions](e2e-latency.png)', '');
  fs.writeFileSync(path.join(root, 'bench/RESULTS.md'), lines.join('\n'));
}

// The latency distributions (one panel per rate: the share of frames later than x), by gnuplot.
function plot(results) {
  const script = ['set terminal pngcairo size 1500,500 font ",10"', `set output "${path.join(root, 'bench/e2e-latency.png')}"`,
    `set multiplot layout 1,${RATES.length}`, 'set logscale xy', 'set xlabel "latency (ms)"',
    'set ylabel "share of frames later than x"', 'set yrange [0.0001:1]', 'set grid', 'set key bottom left'];
  for (const rate of RATES) {
    const runs = results.filter((r) => r.rate === rate && r.sorted.length > 0);
    const plots = runs.map((r) => {
      const file = path.join(work, `cdf-${r.name}-${rate}.dat`);
      const n = r.sorted.length;
      const rows = [];
      for (let i = 0; i < 2000; i++) {
        const q = 1 - 10 ** (-4 * (i / 2000)); // denser toward the tail
        rows.push(`${Math.max(r.sorted[Math.min(n - 1, Math.floor(q * n))], 0.01)} ${1 - q}`);
      }
      fs.writeFileSync(file, rows.join('\n'));
      return `"${file}" using 1:2 with lines lw 2 title "${r.name}${r.saturated ? ' (saturated)' : ''}"`;
    });
    script.push(`set title "${rate} frames/s"`, plots.length ? `plot ${plots.join(', ')}` : 'plot 1/0 notitle');
  }
  script.push('unset multiplot');
  try {
    execFileSync('gnuplot', { input: script.join('\n') });
  } catch (e) {
    console.log(`e2e: no plot (${e.message.split('\n')[0]})`);
  }
}

const results = [];
for (const name of SYSTEMS) {
  if (!systems[name]) throw new Error(`e2e: unknown system ${name} (${Object.keys(systems).join(', ')})`);
  const system = await systems[name]();
  try {
    // Warm-up (not measured): devices known, connections and caches warm.
    const warm = new Proc(`warm-${name}`, bench, ['load', mqttUrl, String(DEVICES), '500', '2']);
    await warm.exited;
    for (const rate of RATES) results.push(await run(name, system, rate));
  } finally {
    await system.stop();
  }
}
// Only a full run (every system, every rate) replaces the committed results.
if (SYSTEMS.join(',') === ALL_SYSTEMS && RATES.join(',') === ALL_RATES) {
  writeResults(results);
  plot(results);
  console.log(`e2e: bench/RESULTS.md and bench/e2e-latency.png written (logs in ${work})`);
} else {
  console.log(`e2e: a partial run: bench/RESULTS.md left as it is (logs in ${work})`);
}
