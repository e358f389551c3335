// The dashboard's WebSocket to push: connects as one system, reconnects with backoff, and
// resumes every stream with `recover` so nothing between two connections is missed or
// shown twice. Emits "state" and "frame" events.
import { StreamPositions, streamOf } from './stream.js';

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10000;
const PING_MS = 20000;

export class Connection extends EventTarget {
  // `positions` is a StreamPositions to resume from (restored after a page reload).
  constructor({ systemId, clientId, token = '', positions = new StreamPositions() }) {
    super();
    this.systemId = systemId;
    this.clientId = clientId;
    this.token = token;
    this.positions = positions;
    this.state = 'connecting';
    this.detail = '';
    this.node = '';
    this.backoff = MIN_BACKOFF_MS;
    this.ws = null;
    this.timer = null;
    this.pinger = null;
    this.stopped = false;
    this.lastClose = null;  // close code of the last connection lost
  }

  url() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = [`systemId=${encodeURIComponent(this.systemId)}`, `clientId=${encodeURIComponent(this.clientId)}`];
    if (this.token) q.push(`token=${encodeURIComponent(this.token)}`);
    const recover = this.positions.recoverParam();
    if (recover) q.push(`recover=${recover}`);
    return `${scheme}//${location.host}/ws?${q.join('&')}`;
  }

  setState(state, detail = '') {
    this.state = state;
    this.detail = detail;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, detail, node: this.node, lastClose: this.lastClose } }));
  }

  start() {
    this.stopped = false;
    const resumeFrom = this.positions.get('system');
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = MIN_BACKOFF_MS;
      this.pinger = setInterval(() => this.send({ action: 'ping' }), PING_MS);
    };
    ws.onmessage = (e) => {
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      if (frame.type === 'connected') {
        this.node = frame.data?.node || '';
        this.setState('live', resumeFrom ? `resumed after #${resumeFrom[1]}` : '');
        return;
      }
      if (frame.type === 'error' && frame.code === 410 && frame.data?.stream) {
        this.positions.forget(frame.data.stream);
        this.setState('live', 'history gone: continuing live');
      }
      if (this.positions.accept(frame) === 'duplicate') return;
      this.dispatchEvent(new CustomEvent('frame', { detail: { frame, stream: streamOf(frame) } }));
    };
    ws.onclose = (e) => {
      clearInterval(this.pinger);
      if (this.ws !== ws) return;
      this.ws = null;
      this.lastClose = e.code;
      if (this.stopped) return;
      if (e.code === 4009) {
        this.setState('closed', 'this dashboard was opened again elsewhere with the same client id');
        return;
      }
      const wait = Math.round(this.backoff * (0.5 + Math.random() / 2));
      this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
      this.setState('reconnecting', `${e.code === 1006 ? 'connection lost' : `closed (${e.code})`}; retrying in ${(wait / 1000).toFixed(1)} s`);
      this.timer = setTimeout(() => this.start(), wait);
    };
    this.setState(this.state === 'live' ? 'reconnecting' : this.state, 'connecting…');
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'bye');
  }
}
