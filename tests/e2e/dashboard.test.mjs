// The dashboard in Debian's Chromium (playwright-core) against the demo topology: devices
// come online, a read command shows decoded values, a device goes offline when its
// simulator stops, a reload through the other push replica recovers the history, a
// connection the server closes is re-opened and resumed, docs/protocol.md's client works, and a
// polled meter that stops answering shows an "unresponsive" badge the fleet view can filter on, and
// a device list that fails at first (503) is asked again.
// Screenshots go to ./output/ (under the build folder when run by ctest).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { BUILD, ROOT, startDemo, waitFor } from './demo.mjs';

const OUTPUT = resolve(process.env.E2E_OUTPUT_DIR || 'output');
// As root Chromium needs --no-sandbox; the network flags keep it from calling home (the
// machine's network is closed). Local-network checks would block the protocol example, which
// the test serves itself (page.route), from opening a WebSocket to localhost.
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-features=LocalNetworkAccessChecks'];

async function shot(page, name, fullPage = true) {
  const path = join(OUTPUT, `${name}.png`);
  await page.screenshot({ path, fullPage });
  console.log(`screenshot: ${path}`);
}

// The offsets shown in the event log, oldest first, and how many rows were restored.
async function logOffsets(page) {
  return page.$$eval('[data-testid="event-log"] tbody tr', (rows) => rows.reverse().map((r) => ({
    offset: r.dataset.offset === '' ? null : Number(r.dataset.offset),
    restored: r.classList.contains('restored'),
    type: r.querySelector('.type')?.textContent,
    text: r.textContent,
  })));
}

test('dashboard: fleet, commands, offline devices, recovery across replicas', async () => {
  mkdirSync(OUTPUT, { recursive: true });
  const demo = await startDemo({
    devices: 20,
    slaves: 2,
    replicas: 2,
    env: { DEVBRIDGE_HEARTBEAT_TIMEOUT: '3s', DEVBRIDGE_HEARTBEAT_INTERVAL: '1s', DEVBRIDGE_DATA_INTERVAL: '500ms',
      DEVBRIDGE_COMMAND_TIMEOUT: '1s' },
  });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
  let extraSim = null;
  let muteSim = null;
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    const state = page.locator('[data-testid="conn-state"]');

    // 1. Simulated devices come online.
    await page.goto(demo.url);
    await waitFor('the connection to be live', async () => (await state.textContent()).startsWith('live'));
    await waitFor('22 devices (20 and 2 polled slaves) online in the fleet view', async () =>
      (await page.locator('[data-device] [data-testid="status"]:text-is("online")').count()) === 22, 30000);
    await waitFor('latest values on the cards', async () =>
      (await page.locator('[data-device="sim-0001"] dd').count()) > 0);
    await shot(page, '1-fleet');

    // 2. A read command from the device page shows decoded values.
    await page.click('[data-device="sim-0001"]');
    await page.waitForSelector('[data-testid="device-id"]:text-is("sim-0001")');
    await page.selectOption('#cmd-function', '3');
    await page.fill('#cmd-address', '0');
    await page.fill('#cmd-count', '12');
    await page.click('#cmd-send');
    const ok = page.locator('[data-testid="command-result"] [data-state="succeeded"]');
    await ok.waitFor({ timeout: 15000 });
    const temperature = await page.textContent('[data-testid="command-result"] tr[data-name="temperature"]');
    assert.match(temperature, /temperature\s*-?\d+(\.\d+)?\s*°C/);
    assert.equal(await page.locator('[data-testid="command-result"] tr[data-name]').count(), 9, 'every register of the profile');
    await waitFor('the chart to have history', async () => (await page.locator('#chart-name option').count()) > 0);
    await shot(page, '2-device-read');

    // An address outside the profile: the device answers with exception 02 → 2006.
    await page.fill('#cmd-address', '500');
    await page.fill('#cmd-count', '2');
    await page.click('#cmd-send');
    const failed = page.locator('[data-testid="command-result"] [data-state="failed"]');
    await failed.waitFor({ timeout: 15000 });
    assert.match(await failed.textContent(), /2006/);

    // 3. A device goes offline when its simulator stops.
    extraSim = spawn(join(BUILD, 'sim/devbridge-sim'), [`--mqtt_url=tcp://127.0.0.1:${demo.mqttPort}`, '--devices=1',
      '--id_prefix=e2e-', '--heartbeat_interval=1s', `--register_map=${join(ROOT, 'config/registers.json')}`],
    { stdio: 'ignore' });
    await page.goto(`${demo.url}#/`);
    const extraStatus = page.locator('[data-device="e2e-0001"] [data-testid="status"]');
    await waitFor('e2e-0001 online', async () => (await extraStatus.count()) === 1 && (await extraStatus.textContent()) === 'online');
    extraSim.kill('SIGKILL');
    await waitFor('e2e-0001 offline after its simulator stopped', async () => (await extraStatus.textContent()) === 'offline', 20000);
    await shot(page, '3-offline');

    // 4. Reload through the other replica: the log comes back and the gap is recovered.
    await page.goto(`${demo.url}#/events`);
    await waitFor('the connection to be live', async () => (await state.textContent()).startsWith('live'));
    await waitFor('events in the log', async () => (await logOffsets(page)).filter((r) => r.offset !== null).length > 10);
    const firstNode = (await state.textContent()).replace('live · ', '');
    let secondNode = firstNode;
    let before = [];
    for (let i = 0; i < 10 && secondNode === firstNode; i++) {
      before = (await logOffsets(page)).filter((r) => r.offset !== null);
      await page.reload();
      await waitFor('the connection to be live after the reload', async () => (await state.textContent()).startsWith('live'));
      secondNode = (await state.textContent()).replace('live · ', '');
    }
    assert.notEqual(secondNode, firstNode, 'nginx round robin put the reloaded page on the other replica');
    const lastBefore = before[before.length - 1].offset;
    assert.match(await page.textContent('[data-testid="conn-detail"]'), new RegExp(`resumed after #\\d+`));
    // Events after the last one seen before the reload arrive, without a gap or a duplicate.
    const after = await waitFor('events after the reload', async () => {
      const rows = (await logOffsets(page)).filter((r) => r.offset !== null);
      return rows.some((r) => !r.restored && r.offset > lastBefore + 3) && rows;
    });
    // The log keeps its last 300 rows (LOG_SIZE in web/js/main.js): when it was full before the
    // reload, each new event pushes the oldest restored row out.
    const restored = after.filter((r) => r.restored).length;
    const fresh = after.length - restored;
    assert.ok(restored >= Math.min(before.length, 300 - fresh) - 1,
      `the log from before the reload is restored (${restored} restored, ${fresh} new, ${before.length} before)`);
    const offsets = after.map((r) => r.offset);
    for (let i = 1; i < offsets.length; i++) {
      assert.equal(offsets[i], offsets[i - 1] + 1, `offsets continue without gap or duplicate at row ${i}: ${offsets.slice(Math.max(0, i - 3), i + 3)}`);
    }
    const errorRows = (await logOffsets(page)).filter((r) => r.type === 'error');
    assert.deepEqual(errorRows, [], 'no error (such as 410: history gone) in the log');
    await shot(page, '4-recovered-events', false);

    // 5. The server closes the connection (close_client through the API): the page reconnects
    // by itself and resumes where it was.
    const clientId = await page.evaluate(() => JSON.parse(sessionStorage.getItem('devbridge.dashboard.fleet')).clientId);
    const detail = page.locator('[data-testid="conn-detail"]');
    const lastShown = Math.max(...(await logOffsets(page)).filter((r) => r.offset !== null).map((r) => r.offset));
    const closed = await fetch(new URL('/api/close_client', demo.url), {
      method: 'POST', headers: { SystemId: 'fleet', 'Content-Type': 'application/json' }, body: JSON.stringify({ clientId }),
    });
    assert.equal((await closed.json()).code, 0);
    await waitFor('the page to notice the close', async () => (await state.getAttribute('data-last-close')) === '4000', 10000);
    await waitFor('the page to reconnect and resume', async () =>
      (await state.textContent()).startsWith('live') && /resumed after #\d+/.test(await detail.textContent()), 20000);
    const resumed = await waitFor('events after the reconnect', async () => {
      const rows = (await logOffsets(page)).filter((r) => r.offset !== null);
      return rows[rows.length - 1].offset > lastShown + 3 && rows;
    });
    const tail = resumed.map((r) => r.offset).filter((o) => o >= lastShown - 5);
    for (let i = 1; i < tail.length; i++) assert.equal(tail[i], tail[i - 1] + 1, `no gap after the reconnect: ${tail.slice(0, 12)}`);

    // 6. The same page on a phone-sized screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${demo.url}#/device/sim-0002`);
    await page.waitForSelector('[data-testid="device-id"]:text-is("sim-0002")');
    await shot(page, '5-phone-device');
    assert.deepEqual(errors, [], 'no script errors on the page');

    // 7. A polled meter that stops answering: "unresponsive" on its card and page, still online,
    // and the fleet view's filter shows it alone. (slave-* are polled every 2 s by the shipped
    // register map; with command_timeout 1s, three polls without a reply take about 6 s.)
    await page.setViewportSize({ width: 1280, height: 900 });
    await waitFor('a polled slave to show its last poll', async () => {
      await page.goto(`${demo.url}#/device/slave-0001`);
      return /200 success/.test(await page.textContent('[data-testid="last-poll"]', { timeout: 2000 }));
    }, 20000, 1000);
    muteSim = spawn(join(BUILD, 'sim/devbridge-sim'), [`--mqtt_url=tcp://127.0.0.1:${demo.mqttPort}`, '--devices=1',
      '--mode=slave', '--drop_rate=1', '--id_prefix=slave-mute-', '--heartbeat_interval=1s',
      `--register_map=${join(ROOT, 'config/registers.json')}`], { stdio: 'ignore' });
    await page.goto(`${demo.url}#/`);
    const mute = page.locator('[data-device="slave-mute-0001"]');
    await waitFor('the mute slave to be marked unresponsive', async () =>
      (await mute.locator('[data-testid="unresponsive"]').count()) === 1, 30000);
    assert.equal(await mute.locator('[data-testid="status"]').textContent(), 'online', 'unresponsive is not offline');
    assert.equal(await page.locator('[data-device="slave-0001"] [data-testid="unresponsive"]').count(), 0);
    await page.check('#only-unresponsive');
    assert.deepEqual(await page.$$eval('[data-device]', (cards) => cards.map((c) => c.dataset.device)), ['slave-mute-0001']);
    await shot(page, '6-unresponsive-filter');
    await page.uncheck('#only-unresponsive');
    assert.ok((await page.locator('[data-device]').count()) > 20);
    await page.click('[data-device="slave-mute-0001"]');
    await page.waitForSelector('[data-testid="polling"] [data-testid="unresponsive"]');
    assert.ok(Number(await page.textContent('[data-testid="poll-failures"]')) >= 3);
    await shot(page, '7-unresponsive-device');
    assert.deepEqual(errors, [], 'no script errors on the page');

    // 8. The minimal client of docs/protocol.md works as printed (served from the demo's origin).
    const doc = readFileSync(join(ROOT, 'docs/protocol.md'), 'utf8');
    const example = doc.slice(doc.indexOf('## A minimal client')).match(/```html\n([\s\S]*?)```/)[1];
    await page.route(`${demo.url}example.html`, (route) => route.fulfill({ contentType: 'text/html', body: example }));
    await page.goto(`${demo.url}example.html`);
    const out = page.locator('#out');
    try {
      await waitFor('the example page to get its command result', async () =>
        /command\.result 200 .*"deviceId":"sim-0001"/.test(await out.textContent()), 20000);
    } catch (err) {
      const shown = await out.textContent();
      const commands = shown.split('\n').filter((line) => !line.startsWith('device.')).join('\n');
      throw new Error(`${err.message}; the page shows, besides device frames:\n${commands.slice(0, 1500)}`);
    }

    // 9. A device list that fails at first (503, as while a cluster's partition waits for its
    // next owner) is asked again: a banner says so, and goes once the list loads.
    const retry = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    retry.on('pageerror', (e) => errors.push(e.message));
    let refused = 0;
    await retry.route('**/api/devices?*', (route) => {
      if (refused === 2) return route.continue();
      refused++;
      return route.fulfill({ status: 503, contentType: 'application/json',
        body: JSON.stringify({ code: 503, msg: 'no ingest replica answered for partition(s) 1 within 2s; ask again' }) });
    });
    await retry.goto(demo.url);
    const retryBanner = retry.locator('#banner');
    await waitFor('the banner to say the list is asked again', async () =>
      /^Could not load devices: 503 .*trying again$/.test(await retryBanner.textContent()), 15000);
    // (The cards of a fleet seen before come back from the browser's storage at once, so the
    // banner, not the cards, tells that the list loaded.)
    await waitFor('the banner to go once the list loads', async () => retryBanner.isHidden(), 20000);
    assert.equal(refused, 2, 'asked twice in vain, then once more');
    assert.ok((await retry.locator('[data-device]').count()) > 20);
    assert.deepEqual(errors, [], 'no script errors on the page');
  } finally {
    if (extraSim) extraSim.kill('SIGKILL');
    if (muteSim) muteSim.kill('SIGKILL');
    await browser.close();
    await demo.stop();
    demo.cleanup();
  }
});
