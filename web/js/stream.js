// Stream bookkeeping for recovery (docs/protocol.md): the last epoch and offset seen on
// each stream, duplicate detection, and the `recover` query parameter for a reconnect.
// No DOM here, so it runs under `node --test` too.

// The stream a server frame belongs to: "system", "group:NAME", or null when it carries no
// offset (replies and messages to one client are not kept by the server).
export function streamOf(frame) {
  if (frame == null || typeof frame.offset !== 'number' || typeof frame.epoch !== 'string') return null;
  return frame.groupName ? `group:${frame.groupName}` : 'system';
}

export class StreamPositions {
  constructor(saved = {}) {
    this.positions = new Map();
    for (const [stream, pos] of Object.entries(saved || {})) {
      if (Array.isArray(pos) && pos.length === 2 && typeof pos[0] === 'string' && Number.isInteger(pos[1])) {
        this.positions.set(stream, [pos[0], pos[1]]);
      }
    }
  }

  // Records `frame`; returns "new", "duplicate" (already seen: drop it) or "untracked".
  // A new epoch starts the stream afresh.
  accept(frame) {
    const stream = streamOf(frame);
    if (stream === null) return 'untracked';
    const seen = this.positions.get(stream);
    if (seen && seen[0] === frame.epoch && frame.offset <= seen[1]) return 'duplicate';
    this.positions.set(stream, [frame.epoch, frame.offset]);
    return 'new';
  }

  // Forgets a stream the server could not recover (410): it goes on live.
  forget(stream) {
    this.positions.delete(stream);
  }

  get(stream) {
    return this.positions.get(stream) || null;
  }

  toJSON() {
    return Object.fromEntries(this.positions);
  }

  // The URL-encoded `recover` value, or "" when there is nothing to recover.
  recoverParam() {
    return this.positions.size === 0 ? '' : encodeURIComponent(JSON.stringify(this.toJSON()));
  }
}

// A bounded list of entries, newest last.
export class Ring {
  constructor(capacity, items = []) {
    this.capacity = capacity;
    this.items = items.slice(-capacity);
  }

  push(item) {
    this.items.push(item);
    if (this.items.length > this.capacity) this.items.splice(0, this.items.length - this.capacity);
  }
}
