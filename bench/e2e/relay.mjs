// The small Node.js relay bench/e2e measures devbridge against: MQTT (npm `mqtt`, QoS 1) to
// WebSocket viewers (npm `ws`), with the CRC check and the decode of relay-frame.cjs.
// No database, no history, no addressing: every frame goes to every viewer.
//   node relay.mjs BROKER_URL PORT        viewers connect to ws://127.0.0.1:PORT/ws
import { createRequire } from 'node:module';
import mqtt from 'mqtt';
import { WebSocketServer } from 'ws';

const { relayFrame } = createRequire(import.meta.url)('./relay-frame.cjs');
const [broker, port] = process.argv.slice(2);
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(port), path: '/ws' });
const client = mqtt.connect(broker.replace(/^tcp:/, 'mqtt:'), { clientId: `e2e-relay-${process.pid}`, clean: true });
client.on('connect', () =>
  client.subscribe('devices/+/data', { qos: 1 }, (err) => {
    if (err) throw err;
    console.log('relay: ready');
  }));
client.on('message', (topic, payload) => {
  const frame = relayFrame(topic, payload);
  if (frame === null) return;
  for (const ws of wss.clients) ws.send(frame);
});
process.on('SIGTERM', () => process.exit(0));
