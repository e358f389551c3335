// Node-RED's settings for bench/e2e: the flow in flows.json (mqtt in → function → websocket
// out) on E2E_NODE_RED_PORT, no editor, the decode of relay-frame.cjs for the function node.
'use strict';
const path = require('node:path');

module.exports = {
  uiHost: '127.0.0.1',
  uiPort: Number(process.env.E2E_NODE_RED_PORT),
  userDir: process.env.E2E_NODE_RED_DIR,
  flowFile: path.join(__dirname, 'flows.json'),
  httpAdminRoot: false,
  credentialSecret: false,
  logging: { console: { level: 'info' } },  // e2e.mjs waits for "Connected to broker"
  functionGlobalContext: { relayFrame: require('./relay-frame.cjs').relayFrame },
};
