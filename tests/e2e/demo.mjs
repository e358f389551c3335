// Starts scripts/demo in the background for a test and stops it again: free ports, a
// throwaway data folder, no install or build (scripts/test has done both).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// Not import.meta.dirname: that needs Node.js 20.11, and Debian 12 has 18.
export const ROOT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
export const BUILD = process.env.DEVBRIDGE_BUILD_DIR || join(ROOT, 'build');

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

// Polls `condition` (sync or async) until it returns a truthy value or `ms` pass.
export async function waitFor(what, condition, ms = 30000, every = 100) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await condition();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, every));
  }
}

// Runs scripts/demo; resolves once it prints the dashboard URL.
export async function startDemo({ devices = 20, slaves = 0, replicas = 2, cluster = false, env = {} } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'devbridge-demo-'));
  const port = await freePort();
  const mqttPort = await freePort();
  const args = ['--no-install', '--no-build', '--devices', String(devices), '--slaves', String(slaves), '--replicas', String(replicas),
    '--port', String(port), '--mqtt-port', String(mqttPort), '--data-dir', dataDir, ...(cluster ? ['--cluster'] : [])];
  const proc = spawn(join(ROOT, 'scripts/demo'), args, {
    env: { ...process.env, DEVBRIDGE_BUILD_DIR: BUILD, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout.on('data', (d) => { output += d; });
  proc.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((ok) => proc.on('exit', (code, signal) => ok({ code, signal })));
  const demo = {
    proc, dataDir, port, mqttPort, exited,
    output: () => output,
    url: null,
    printedUrl: null,
    env: {},
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGINT');
      let timer;
      const result = await Promise.race([exited, new Promise((ok) => { timer = setTimeout(() => ok(null), 60000); })]);
      clearTimeout(timer);
      if (result === null) proc.kill('SIGKILL');
      return result;
    },
    cleanup() {
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  try {
    const match = await waitFor('the demo to print its dashboard URL', async () => {
      if (proc.exitCode !== null) throw new Error(`demo exited with ${proc.exitCode}:\n${output}`);
      return output.match(/Dashboard:\s+(http:\/\/\S+)/);
    }, 180000, 200);
    // The demo's nginx listens on IPv4. Node.js 18's fetch takes the first address `localhost`
    // resolves to (::1 on some hosts) and does not fall back; Node.js 20 tries both.
    demo.printedUrl = match[1];
    demo.url = match[1].replace('//localhost:', '//127.0.0.1:');
  } catch (err) {
    await demo.stop();
    demo.cleanup();
    throw new Error(`${err.message}\n--- demo output ---\n${output}`);
  }
  for (const line of readFileSync(join(dataDir, 'demo.env'), 'utf8').split('\n')) {
    const m = line.match(/^(\w+)="?([^"]*)"?$/);
    if (m) demo.env[m[1]] = m[2];
  }
  return demo;
}

export function processAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
