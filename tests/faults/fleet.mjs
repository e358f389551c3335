// What the fault-injection suites share (tests/faults, tests/cluster): polling with a
// deadline, HTTP and metrics, processes that never outlive the test, WebSocket viewers that
// check their stream's offsets, and the numbered load whose every acknowledged frame is then
// looked for in table readings.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import WebSocket from 'ws';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `fn` until it returns a truthy value or `ms` pass; returns the value (or undefined).
export async function until(fn, ms, every = 100) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) return undefined;
    await sleep(every);
  }
}

// A port nobody listens on, for a server to start on. Taken below the kernel's ephemeral range:
// a port from that range (listening on port 0) can go to another process's outgoing connection
// before our server binds it (a nats-server once lost its route port to a peer's connection
// attempt). Never the same port twice in one run.
const ephemeralLow = (() => {
  try {
    return Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  } catch {
    return 32768;
  }
})();
const portsHandedOut = new Set();
const canListen = (port) =>
  new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
export async function freePort() {
  const low = 10000;
  const high = Math.max(low + 1000, ephemeralLow);
  for (;;) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (portsHandedOut.has(port)) continue;
    portsHandedOut.add(port);
    if (await canListen(port)) return port;
  }
}

export function get(port, p) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, timeout: 2000 }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', () => resolve({ status: 0, body: '' }));
    req.on('timeout', () => req.destroy());
  });
}

export function metric(body, name) {
  const m = body.match(new RegExp(`^${name} ([0-9.e+-]+)$`, 'm'));
  return m ? Number(m[1]) : undefined;
}

// Every process the test started, so none outlives it however it ends.
const started = new Set();
export const killAll = () => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
};
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAll();
    process.exit(1);
  });
}

// A long-running devbridge process with its log in the test folder.
export class Proc {
  constructor(name, bin, args, logs) {
    this.name = name;
    this.bin = bin;
    this.args = args;
    this.logFile = path.join(logs, `${name}.log`);
  }
  start(extra = []) {
    const out = fs.openSync(this.logFile, 'a');
    this.child = spawn(this.bin, [...this.args, ...extra], { stdio: ['ignore', out, out] });
    started.add(this.child);
    fs.closeSync(out);
    this.exited = new Promise((r) => this.child.on('exit', (code, sig) => r({ code, sig })));
    return this;
  }
  kill9() {
    this.child.kill('SIGKILL');
    return this.exited;
  }
  async term() {
    const t0 = Date.now();
    this.child.kill('SIGTERM');
    const r = await this.exited;
    return { ...r, ms: Date.now() - t0 };
  }
  log() {
    return fs.existsSync(this.logFile) ? fs.readFileSync(this.logFile, 'utf8') : '';
  }
}

// A WebSocket viewer of one device's system stream; checks its offsets as they come.
export class Viewer {
  constructor(clientId, systemId) {
    this.clientId = clientId;
    this.systemId = systemId;
    this.last = null; // {epoch, offset} of the system stream
    this.outOfOrder = 0;
    this.anomalies = []; // the first few offsets out of order: what it takes to explain them
    this.gone = 0; // 410s
    this.otherErrors = [];
    this.closes = 0;
    this.data = 0;
    this.frames = [];
  }
  connect(port, recover = false) {
    let url = `ws://127.0.0.1:${port}/ws?systemId=${this.systemId}&clientId=${this.clientId}`;
    if (recover && this.last) {
      url += `&recover=${encodeURIComponent(JSON.stringify({ system: [this.last.epoch, this.last.offset] }))}`;
    }
    this.port = port;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      this.ws = ws;
      const timer = setTimeout(() => reject(new Error(`${this.clientId}: no connected frame`)), 10000);
      ws.on('message', (raw) => {
        const f = JSON.parse(raw.toString());
        if (f.type === 'connected') {
          clearTimeout(timer);
          resolve();
        }
        this.onFrame(f);
      });
      ws.on('close', () => {
        if (this.ws === ws) this.closes++;
      });
      ws.on('error', () => {});
    });
  }
  onFrame(f) {
    if (f.type === 'error') {
      if (f.code === 410) this.gone++;
      else this.otherErrors.push(f);
      return;
    }
    if (f.type === 'command.accepted' || f.type === 'command.result') this.frames.push(f);
    if (f.offset !== undefined && f.systemId === this.systemId && !f.groupName) {
      if (this.last && this.last.epoch === f.epoch && f.offset !== this.last.offset + 1) {
        this.outOfOrder++;
        if (this.anomalies.length < 5) {
          this.anomalies.push(`${new Date().toISOString().slice(11, 23)} ${f.type} offset ${f.offset} after ${this.last.offset} on port ${this.port}`);
        }
      }
      this.last = { epoch: f.epoch, offset: f.offset };
    }
    if (f.type === 'device.data') this.data++;
  }
  send(obj) {
    this.ws.send(JSON.stringify(obj));
  }
  close() {
    const ws = this.ws;
    this.ws = null;
    ws?.terminate();
  }
}

// The simulator of one case: its own device ids, numbered frames, the acknowledged list.
// `env`: { build, root, logs, mqttUrl, devices, intervalMs }.
export class Load {
  constructor(prefix, env, extra = []) {
    const { build, root, logs, mqttUrl, devices, intervalMs } = env;
    this.prefix = prefix;
    this.ackLog = path.join(logs, `${prefix}acked.txt`);
    this.proc = new Proc(`sim-${prefix}`, path.join(build, 'sim/devbridge-sim'), [
      `--mqtt_url=${mqttUrl}`,
      `--devices=${devices}`,
      `--id_prefix=${prefix}`,
      `--data_interval=${intervalMs}ms`,
      '--heartbeat_interval=5s',
      '--reply_delay=1500ms',
      '--sequence',
      `--ack_log=${this.ackLog}`,
      `--register_map=${path.join(root, 'config/registers.json')}`,
      '--stats_interval=0',
      ...extra,
    ], logs);
  }
  device(i) {
    return `${this.prefix}${String(i + 1).padStart(4, '0')}`;
  }
  start() {
    this.proc.start();
    return this;
  }
  async stop() {
    await this.proc.term();
    const m = this.proc.log().match(/data frames sent (\d+), acknowledged by the broker (\d+)/);
    this.sent = m ? Number(m[1]) : NaN;
    this.acked = new Map();
    for (const line of fs.readFileSync(this.ackLog, 'utf8').split('\n').filter(Boolean)) {
      const [device, , ranges] = line.split(' ');
      const set = new Set();
      if (ranges !== '-') {
        for (const r of ranges.split(',')) {
          const [a, b] = r.split('-').map(Number);
          for (let n = a; n <= b; n++) set.add(n);
        }
      }
      this.acked.set(device, set);
    }
    this.ackedCount = [...this.acked.values()].reduce((n, s) => n + s.size, 0);
  }
}

// What became of a load's acknowledged frames in table readings (`psql` runs a query and
// returns its text): distinct frames stored, acknowledged ones missing, rows stored twice.
export function frameCounts(psql, load) {
  const rows = psql(`SELECT device_id, (get_byte(raw,3)::bigint<<24)|(get_byte(raw,4)<<16)|(get_byte(raw,5)<<8)|get_byte(raw,6)
    FROM readings WHERE device_id LIKE '${load.prefix}%' AND command_id IS NULL AND length(raw) > 20`);
  const seen = new Map();
  let total = 0;
  for (const line of rows.split('\n').filter(Boolean)) {
    seen.set(line, (seen.get(line) || 0) + 1);
    total++;
  }
  let lost = 0;
  for (const [device, frames] of load.acked) for (const f of frames) if (!seen.has(`${device}|${f}`)) lost++;
  return { stored: seen.size, lost, duplicated: total - seen.size };
}
