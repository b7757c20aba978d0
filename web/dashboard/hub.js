// hub.js: the dashboard's connection to the hub that served it, over the
// CAPS protocol on /ws (docs/PROTOCOL.md): length-prefixed binary frames
// carried as a byte stream in binary WebSocket messages. It keeps itself
// connected (reconnect with backoff, resume, resubscribe) and offers the
// four things the page does: request, subscribe, publish, close.

const OP = { HELLO: 1, WELCOME: 2, PUB: 3, SUB: 4, UNSUB: 5, MSG: 6, ACK: 7, OK: 8, ERR: 9, PING: 10, PONG: 11, REQ: 12, REPLY: 13, NAK: 14, BYE: 15 };
const FLAG = { HISTORY: 1 << 2, FATAL: 1 << 4 };
const VERSION = 1;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** HubError is an ERR frame from the hub. */
export class HubError extends Error {
  constructor(code, text, fatal) {
    super(text);
    this.code = code;
    this.fatal = fatal;
  }
}

/** isAuthError tells a refused identity (a token is needed or wrong). */
export const isAuthError = (err) => err instanceof HubError && err.code === 'unauthorized';

function uvarint(n, out) {
  while (n >= 0x80) { out.push((n & 0x7f) | 0x80); n = Math.floor(n / 128); }
  out.push(n);
}

/** encode builds one frame. */
export function encode({ op, flags = 0, id = 0, seq = 0, topic = '', key = '', group = '', payload = new Uint8Array() }) {
  const head = [op, flags];
  uvarint(id, head);
  uvarint(seq, head);
  const fields = [topic, key, group].map((s) => (typeof s === 'string' ? enc.encode(s) : s));
  const parts = [];
  for (const f of fields) { const l = []; uvarint(f.length, l); parts.push(Uint8Array.from(l), f); }
  const p = typeof payload === 'string' ? enc.encode(payload) : payload;
  const len = head.length + parts.reduce((a, x) => a + x.length, 0) + p.length;
  const out = new Uint8Array(4 + len);
  new DataView(out.buffer).setUint32(0, len);
  let o = 4;
  out.set(head, o); o += head.length;
  for (const x of parts) { out.set(x, o); o += x.length; }
  out.set(p, o);
  return out;
}

/** Decoder turns a byte stream into frames, however it is cut. */
export class Decoder {
  constructor(max = (1 << 20) + 64) { this.buf = new Uint8Array(0); this.max = max; }
  push(chunk) {
    const b = new Uint8Array(this.buf.length + chunk.length);
    b.set(this.buf); b.set(chunk, this.buf.length);
    this.buf = b;
    const frames = [];
    for (;;) {
      if (this.buf.length < 4) break;
      const len = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(0);
      if (len < 7 || len > this.max) throw new Error(`bad frame length ${len}`);
      if (this.buf.length < 4 + len) break;
      frames.push(parse(this.buf.subarray(4, 4 + len)));
      this.buf = this.buf.slice(4 + len);
    }
    return frames;
  }
}

function parse(b) {
  let i = 2;
  const uv = () => {
    let n = 0, m = 1;
    for (;;) {
      if (i >= b.length) throw new Error('malformed frame');
      const x = b[i++];
      n += (x & 0x7f) * m;
      if (x < 0x80) return n;
      m *= 128;
    }
  };
  const field = () => { const l = uv(); if (i + l > b.length) throw new Error('malformed frame'); const f = b.subarray(i, i + l); i += l; return f; };
  const f = { op: b[0], flags: b[1] };
  f.id = uv(); f.seq = uv();
  f.topic = dec.decode(field()); f.key = dec.decode(field()); f.group = dec.decode(field());
  f.payload = b.slice(i);
  return f;
}

/** wsURL is the /ws of the hub that served this page. */
export function wsURL() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

export class Hub {
  /** open connects and resolves once the hub has welcomed the page; it
   * rejects when the first connection fails (a refused token included).
   * Later losses reconnect on their own. */
  static async open(opts) {
    const h = new Hub(opts);
    await h.connect();
    return h;
  }

  constructor({ url = wsURL(), role, name, token = '', onState = () => {} }) {
    Object.assign(this, { url, role, name, token, onStateCb: onState });
    this.nextId = 1;
    this.calls = new Map(); // id → {resolve, reject}
    this.subs = []; // {pattern, fn, opts, sid}
    this.reconnectCbs = [];
    this.closed = false;
    this.session = '';
    this.backoff = 250;
  }

  state(s) { this.stateNow = s; this.onStateCb(s); }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      ws.binaryType = 'arraybuffer';
      const decoder = new Decoder();
      let welcomed = false;
      this.ws = ws;
      ws.onopen = () => {
        const hello = { version: VERSION, role: this.role, name: this.name, token: this.token || undefined, resume: this.session || undefined };
        ws.send(encode({ op: OP.HELLO, payload: JSON.stringify(hello) }));
      };
      ws.onmessage = (e) => {
        let frames;
        try { frames = decoder.push(new Uint8Array(e.data)); } catch (err) { ws.close(4000, err.message); return; }
        for (const f of frames) {
          if (!welcomed) {
            if (f.op === OP.WELCOME) {
              welcomed = true;
              this.welcome = JSON.parse(dec.decode(f.payload));
              this.session = this.welcome.session;
              this.backoff = 250;
              this.heartbeat(this.welcome.heartbeat_ms);
              this.state('connected');
              resolve(this);
              continue;
            }
            if (f.op === OP.ERR) {
              const err = new HubError(f.topic, dec.decode(f.payload), true);
              this.failed = err;
              reject(err);
              ws.close();
              return;
            }
          }
          this.handle(f);
        }
      };
      ws.onclose = () => {
        clearInterval(this.pinger);
        const err = this.failed || new Error('connection closed');
        for (const c of this.calls.values()) c.reject(err);
        this.calls.clear();
        if (!welcomed) { reject(err); return; }
        if (this.closed) { this.state('closed'); return; }
        this.state('reconnecting');
        this.retry();
      };
    });
  }

  async retry() {
    for (;;) {
      await new Promise((r) => setTimeout(r, this.backoff * (0.5 + Math.random() / 2)));
      if (this.closed) return;
      this.backoff = Math.min(this.backoff * 2, 5000);
      try {
        await this.connect();
      } catch (err) {
        if (err instanceof HubError && err.fatal && err.code === 'unauthorized') { this.state('failed'); return; }
        continue;
      }
      for (const s of this.subs) {
        try { s.sid = await this.sub(s.pattern, s.opts); } catch { /* reported by the panel on its next refresh */ }
      }
      for (const cb of this.reconnectCbs) cb();
      return;
    }
  }

  /** heartbeat pings while idle, as the protocol asks, and gives up on a
   * hub silent for two intervals. */
  heartbeat(ms) {
    clearInterval(this.pinger);
    if (!ms) return;
    this.lastRecv = Date.now();
    this.pinger = setInterval(() => {
      if (Date.now() - this.lastRecv > 2 * ms) { this.ws.close(); return; }
      this.send({ op: OP.PING });
    }, ms / 2);
  }

  handle(f) {
    this.lastRecv = Date.now();
    switch (f.op) {
      case OP.MSG: {
        const m = { topic: f.topic, key: f.key, seq: f.seq, history: (f.flags & FLAG.HISTORY) !== 0, payload: f.payload };
        Object.defineProperty(m, 'text', { get: () => dec.decode(f.payload) });
        for (const s of this.subs) if (s.sid === f.id && (!m.history || s.opts.history)) s.fn(m);
        break;
      }
      case OP.OK: this.complete(f.id, null, f.seq); break;
      case OP.REPLY: this.complete(f.id, null, f.payload); break;
      case OP.ERR: {
        const err = new HubError(f.topic, dec.decode(f.payload), (f.flags & FLAG.FATAL) !== 0);
        if (!this.complete(f.id, err)) console.warn('caps:', err.code, err.message);
        if (err.fatal) this.failed = err;
        break;
      }
      case OP.PING: this.send({ op: OP.PONG, id: f.id }); break;
      case OP.BYE: this.ws.close(); break;
      default:
    }
  }

  complete(id, err, value) {
    const c = id && this.calls.get(id);
    if (!c) return false;
    this.calls.delete(id);
    if (err) c.reject(err); else c.resolve(value);
    return true;
  }

  send(frame) {
    if (this.ws?.readyState !== WebSocket.OPEN) throw new Error('not connected');
    this.ws.send(encode(frame));
  }

  call(frame, timeout = 15000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.calls.delete(id); reject(new Error(`no answer in ${timeout / 1000}s`)); }, timeout);
      this.calls.set(id, {
        resolve: (v) => { clearTimeout(t); resolve(v); },
        reject: (e) => { clearTimeout(t); reject(e); },
      });
      try { this.send({ ...frame, id }); } catch (e) { this.calls.get(id)?.reject(e); this.calls.delete(id); }
    });
  }

  /** request asks a service; body is JSON-encoded, the answer decoded. */
  async request(service, body = {}) {
    const b = await this.call({ op: OP.REQ, topic: service, payload: JSON.stringify(body) });
    return JSON.parse(dec.decode(b));
  }

  /** publish sends a JSON payload (key: the message id) and resolves once
   * the hub has accepted it (stored, for a stored topic). */
  publish(topic, body, key = '') {
    return this.call({ op: OP.PUB, topic, key, payload: JSON.stringify(body) });
  }

  sub(pattern, opts) {
    const payload = opts.history ? JSON.stringify({ history: opts.history }) : '';
    return this.call({ op: OP.SUB, topic: pattern, payload });
  }

  /** subscribe calls fn({topic, text, history, …}) for each message on
   * pattern, across reconnects. */
  async subscribe(pattern, fn, opts = {}) {
    const s = { pattern, fn, opts, sid: 0 };
    s.sid = await this.sub(pattern, opts);
    this.subs.push(s);
    return {
      unsubscribe: () => {
        this.subs = this.subs.filter((x) => x !== s);
        if (!this.subs.some((x) => x.sid === s.sid)) {
          try { this.send({ op: OP.UNSUB, id: s.sid }); } catch { /* gone anyway */ }
        }
      },
    };
  }

  /** onReconnect calls fn after every reconnect (subscriptions restored). */
  onReconnect(fn) { this.reconnectCbs.push(fn); }

  close() {
    this.closed = true;
    try { this.send({ op: OP.BYE }); } catch { /* not connected */ }
    this.ws?.close();
  }
}
