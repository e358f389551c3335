// WebSocket clients for bench/interest.sh: one client per system sim-0001 … sim-NNNN, spread
// round robin over the push replicas' ports. Prints "ready N" once every client is connected,
// then counts the frames they receive until it is stopped.
// Usage: node bench/interest_clients.mjs SYSTEMS PORT...
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(join(dirname(fileURLToPath(import.meta.url)), 'peer', 'package.json'));
const WebSocket = require('ws');

const [systems, ...ports] = process.argv.slice(2);
const count = Number(systems);
let open = 0;
let frames = 0;
const pending = [];
for (let i = 1; i <= count; i++) {
  const system = `sim-${String(i).padStart(4, '0')}`;
  const port = ports[(i - 1) % ports.length];
  pending.push(new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?systemId=${system}&clientId=viewer-${system}`);
    ws.on('open', () => { open++; resolve(); });
    ws.on('message', () => { frames++; });
    ws.on('error', reject);
  }));
  if (i % 100 === 0) await Promise.all(pending.splice(0));  // at most 100 handshakes at a time
}
await Promise.all(pending);
console.log(`ready ${open}`);
setInterval(() => console.log(`frames ${frames}`), 1000);
process.on('SIGTERM', () => process.exit(0));
