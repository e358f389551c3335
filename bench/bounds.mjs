// The memory an attacker can make ingest and push hold (CONTRACT §10.1), measured on the real
// services: RSS of both processes before, right after, and once the bounds have had time
// to act. Run by bench/bounds.sh, which starts the services with short history_ttl and
// forget_after so the last column comes within a minute.
// Usage: node bounds.mjs PUSH_PORT INGEST_PID PUSH_PID MQTT_PORT SETTLE_SECONDS
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect } from 'node:net';

const require = createRequire(import.meta.url);
const WebSocket = require('./peer/node_modules/ws');

const [pushPort, ingestPid, pushPid, mqttPort, settleSeconds] = process.argv.slice(2).map(Number);
const base = `http://127.0.0.1:${pushPort}`;

function rssMb(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
}
function snapshot() {
  return { ingest: rssMb(ingestPid), push: rssMb(pushPid) };
}
// A minimal MQTT 3.1.1 publisher (CONNECT, then QoS 0 PUBLISHes, then DISCONNECT), so that
// 20,000 topics take a second, not 20,000 mosquitto_pub processes.
function mqttPacket(type, body) {
  const len = [];
  let n = body.length;
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 128;
    len.push(b);
  } while (n > 0);
  return Buffer.concat([Buffer.from([type, ...len]), body]);
}
const mqttString = (s) => {
  const b = Buffer.from(s);
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 255]), b]);
};
function publishAll(messages) {
  return new Promise((resolve, reject) => {
    const sock = connect(mqttPort, '127.0.0.1');
    sock.on('error', reject);
    sock.once('data', () => {  // CONNACK
      for (const [topic, payload] of messages) {
        sock.write(mqttPacket(0x30, Buffer.concat([mqttString(topic), Buffer.from(payload)])));
      }
      sock.end(mqttPacket(0xe0, Buffer.alloc(0)), resolve);
    });
    const connectBody = Buffer.concat([mqttString('MQTT'), Buffer.from([4, 2, 0, 30]), mqttString('bounds-bench')]);
    sock.write(mqttPacket(0x10, connectBody));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function open(clientId) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${pushPort}/ws?systemId=bounds&clientId=${clientId}`);
    ws.once('message', () => resolve(ws));  // the connected frame
    ws.once('error', reject);
  });
}

// Sends `frames` on `ws` and waits for as many replies (joined, or an error such as 429).
function exchange(ws, frames) {
  return new Promise((resolve) => {
    const replies = { joined: 0, refused: 0, codes: new Set(), closed: null };
    let left = frames.length;
    const onMessage = (raw) => {
      const m = JSON.parse(raw);
      if (m.type === 'joined') replies.joined++;
      else if (m.type === 'error') {
        replies.refused++;
        replies.codes.add(m.code);
      }
      else return;  // presence and the like
      if (--left === 0) {
        ws.off('message', onMessage);
        resolve(replies);
      }
    };
    ws.on('message', onMessage);
    ws.on('close', (code) => {
      replies.closed = code;
      resolve(replies);
    });
    for (const f of frames) ws.send(JSON.stringify(f));
  });
}

// Each scenario runs `rounds` times with new names, waiting for the bounds to act after each:
// memory that is held without bound grows with every round, memory that is let go is reused
// (glibc keeps freed memory in the process, so RSS does not fall, it stops rising).
const rows = [];
async function scenario(name, rounds, run) {
  const rss = [snapshot()];
  let detail = '';
  for (let round = 0; round < rounds; round++) {
    detail = await run(round);
    if (round === 0) rss.push(snapshot());
    await sleep(settleSeconds * 1000);
    rss.push(snapshot());
  }
  rows.push({ name, rss });
  console.log(`${name}: ${detail}`);
}

// 1. One client asks to join 20,000 groups: max_groups_per_client (128) and the error
//    budget stop it.
await scenario('one client, 20,000 joins', 1, async () => {
  const ws = await open('greedy');
  const frames = Array.from({ length: 20000 }, (_, i) => ({ action: 'join', group: `g${i}` }));
  const r = await exchange(ws, frames);
  ws.close();
  // Push closes it (1008, error budget) with thousands of its frames unread, so the kernel
  // resets the connection and the client sees 1006.
  return `${r.joined} joined, ${r.refused} refused (codes ${[...r.codes]}), connection closed (${r.closed})`;
});

// 2. 160 clients join 125 groups each (20,000 groups in all), then leave: every group gets a
//    stream, in push's histories and in ingest's offsets, swept once idle.
await scenario('160 clients x 125 groups, then gone', 3, async (round) => {
  let joined = 0;
  for (let c = 0; c < 160; c++) {
    const ws = await open(`many${c}`);
    const frames = Array.from({ length: 125 }, (_, i) => ({ action: 'join', group: `m${round}x${c}x${i}` }));
    joined += (await exchange(ws, frames)).joined;
    ws.close();
  }
  return `${joined} groups joined and left`;
});

// 3. 100 API sends of 1 MB to one group: push's history (history_ttl) and ingest's replay
//    buffer (replay_buffer_mb) hold them, and let them go.
await scenario('100 sends of 1 MB', 3, async (round) => {
  const data = 'x'.repeat(1 << 20);
  let ok = 0;
  for (let i = 0; i < 100; i++) {
    const res = await fetch(`${base}/api/send_to_group`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', SystemId: 'bounds' },
      body: JSON.stringify({ groupName: `big${round}x${i}`, code: 0, msg: 'm', data }),
    });
    const reply = await res.json();
    if (reply.code === 0) ok++;
    else if (i === 0) console.log('send_to_group:', res.status, JSON.stringify(reply).slice(0, 200));
  }
  return `${ok} of 100 accepted`;
});

// 4. 20,000 device ids, one heartbeat each: the device table forgets them once offline for
//    forget_after.
await scenario('20,000 device ids', 3, async (round) => {
  await publishAll(Array.from({ length: 20000 }, (_, i) => [`devices/flood${round}x${i}/heartbeat`, '{"fw":"x"}']));
  return '20000 heartbeats published (QoS 0)';
});

const f = (x) => x.toFixed(0).padStart(4);
const line = (r, who) => r.rss.map((x) => f(x[who])).join(' ');
console.log(`\nRSS in MB: before, right after the first round, then ${settleSeconds} s after each round`);
for (const r of rows) {
  console.log(`${r.name.padEnd(36)} ingest ${line(r, 'ingest')}   push ${line(r, 'push')}`);
}
process.exit(0);
