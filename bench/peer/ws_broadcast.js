// The peer for bench/push_bench: a Node.js `ws` server that broadcasts every message POSTed
// to /send to all connected WebSocket clients, the same work push does for send_to_system.
// Usage: node ws_broadcast.js PORT
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 8090);
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/send') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      for (const ws of wss.clients) {
        if (ws.readyState === 1) ws.send(body);
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{"code":0}');
    });
    return;
  }
  if (req.url === '/healthz') {
    res.writeHead(200);
    res.end('ok\n');
    return;
  }
  res.writeHead(404);
  res.end();
});
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });
// Ping every 25 s like push, so idle costs compare.
setInterval(() => {
  for (const ws of wss.clients) ws.ping();
}, 25000).unref();
server.listen(port, '127.0.0.1', () => console.log(`ws peer listening on ${port}`));
