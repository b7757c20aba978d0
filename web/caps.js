// caps.js — a CAPS client for browsers: the binary CAPS protocol
// (docs/PROTOCOL.md) over a WebSocket to the hub's /ws endpoint.
// An ES module with no dependencies; the hub serves it at /caps.js.
//
//   import { Client } from '/caps.js';
//   const caps = await Client.connect('/ws', { role: 'client', name: 'ada' });
//   await caps.subscribe('news.*', (m) => console.log(m.topic, m.text()));
//   await caps.publish('news.today', { hello: 'world' });
//   const reply = await caps.request('parcel.track', '…order id…');
//
// The client reconnects by itself with exponential backoff and jitter,
// resumes its session (presence sees a reconnect, not a leave and a join),
// and subscribes again to everything it was subscribed to. Calls made while
// it is reconnecting wait for the connection (bounded by their timeout).

/** Operation codes (docs/PROTOCOL.md, section 3). */
export const Op = Object.freeze({
  HELLO: 0x01, WELCOME: 0x02, PUB: 0x03, SUB: 0x04, UNSUB: 0x05, MSG: 0x06, ACK: 0x07, OK: 0x08,
  ERR: 0x09, PING: 0x0a, PONG: 0x0b, REQ: 0x0c, REPLY: 0x0d, NAK: 0x0e, BYE: 0x0f,
});

/** Frame flags (docs/PROTOCOL.md, section 4). */
export const Flag = Object.freeze({
  AckRequired: 0x01, Redelivered: 0x02, History: 0x04, ManualAck: 0x08,
  Fatal: 0x10, Durable: 0x20, DeliverAll: 0x40, Confirm: 0x80,
});

export const PROTOCOL_VERSION = 1;
export const DEFAULT_MAX_FRAME = 1 << 20;
const HEADER_LEN = 4;
const MIN_BODY = 7;

const utf8 = new TextEncoder();
const utf8Decode = new TextDecoder();

/** An ERR frame from the hub, or a local failure, as an Error with a code. */
export class CapsError extends Error {
  constructor(code, message, fatal = false) {
    super(`${code}: ${message}`);
    this.name = 'CapsError';
    this.code = code;
    this.text = message;
    this.fatal = fatal;
  }
}

// ---------------------------------------------------------------- frames

/** The byte length of x as a uvarint. */
function uvarintLen(x) {
  let n = 1;
  while (x >= 0x80n) {
    x >>= 7n;
    n++;
  }
  return n;
}

function putUvarint(buf, at, x) {
  while (x >= 0x80n) {
    buf[at++] = Number(x & 0x7fn) | 0x80;
    x >>= 7n;
  }
  buf[at++] = Number(x);
  return at;
}

/** Reads a uvarint at at; returns [value as BigInt, next offset]. */
function getUvarint(buf, at, end) {
  let x = 0n;
  let shift = 0n;
  for (let i = 0; i < 10; i++) {
    if (at >= end) throw new CapsError('bad_frame', 'truncated uvarint');
    const b = buf[at++];
    if (i === 9 && b > 1) throw new CapsError('bad_frame', 'uvarint overflows 64 bits');
    x |= BigInt(b & 0x7f) << shift;
    if (b < 0x80) return [x, at];
    shift += 7n;
  }
  throw new CapsError('bad_frame', 'uvarint too long');
}

function toBytes(v) {
  if (v === undefined || v === null) return new Uint8Array(0);
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (typeof v === 'string') return utf8.encode(v);
  return utf8.encode(JSON.stringify(v));
}

/**
 * Encodes a frame. Fields: op, flags, id, seq (Number or BigInt), topic, key,
 * group (strings or bytes) and payload (bytes, a string, or a value sent as JSON).
 */
export function encodeFrame(f) {
  const id = BigInt(f.id ?? 0);
  const seq = BigInt(f.seq ?? 0);
  const topic = toBytes(f.topic);
  const key = toBytes(f.key);
  const group = toBytes(f.group);
  const payload = toBytes(f.payload);
  const body = 2 + uvarintLen(id) + uvarintLen(seq) +
    uvarintLen(BigInt(topic.length)) + topic.length +
    uvarintLen(BigInt(key.length)) + key.length +
    uvarintLen(BigInt(group.length)) + group.length + payload.length;
  const buf = new Uint8Array(HEADER_LEN + body);
  new DataView(buf.buffer).setUint32(0, body);
  let at = HEADER_LEN;
  buf[at++] = f.op;
  buf[at++] = f.flags ?? 0;
  at = putUvarint(buf, at, id);
  at = putUvarint(buf, at, seq);
  for (const field of [topic, key, group]) {
    at = putUvarint(buf, at, BigInt(field.length));
    buf.set(field, at);
    at += field.length;
  }
  buf.set(payload, at);
  return buf;
}

/**
 * Decodes one frame body (the bytes after the length prefix). id and seq are
 * BigInts (durable subscription ids do not fit a Number); topic, key and group
 * are strings; payload is a Uint8Array view.
 */
export function parseFrame(body) {
  if (body.length < MIN_BODY) throw new CapsError('bad_frame', `frame body of ${body.length} bytes`);
  const op = body[0];
  if (op < Op.HELLO || op > Op.BYE) throw new CapsError('bad_frame', `unknown operation 0x${op.toString(16)}`);
  const end = body.length;
  let at = 2;
  let id;
  let seq;
  [id, at] = getUvarint(body, at, end);
  [seq, at] = getUvarint(body, at, end);
  const fields = [];
  for (let i = 0; i < 3; i++) {
    let n;
    [n, at] = getUvarint(body, at, end);
    if (n > BigInt(end - at)) throw new CapsError('bad_frame', 'field length past the end of the frame');
    fields.push(utf8Decode.decode(body.subarray(at, at + Number(n))));
    at += Number(n);
  }
  return { op, flags: body[1], id, seq, topic: fields[0], key: fields[1], group: fields[2], payload: body.subarray(at) };
}

/**
 * FrameReader turns a byte stream (WebSocket messages, each holding one or
 * more whole frames — a frame split across messages is accepted too) into frames.
 */
export class FrameReader {
  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
    this.buf = new Uint8Array(0);
  }

  /** Adds bytes and returns the frames they complete. Throws on a bad frame. */
  push(chunk) {
    const bytes = toBytes(chunk);
    let buf = bytes;
    if (this.buf.length > 0) {
      buf = new Uint8Array(this.buf.length + bytes.length);
      buf.set(this.buf);
      buf.set(bytes, this.buf.length);
    }
    const frames = [];
    let at = 0;
    while (buf.length - at >= HEADER_LEN) {
      const n = new DataView(buf.buffer, buf.byteOffset + at, HEADER_LEN).getUint32(0);
      if (n > this.maxFrame) throw new CapsError('frame_too_large', `${n} bytes, limit ${this.maxFrame}`);
      if (n < MIN_BODY) throw new CapsError('bad_frame', `frame of ${n} bytes`);
      if (buf.length - at - HEADER_LEN < n) break;
      // Copy the body: payloads handed to callers must not alias a buffer we reuse.
      frames.push(parseFrame(buf.slice(at + HEADER_LEN, at + HEADER_LEN + n)));
      at += HEADER_LEN + n;
    }
    this.buf = buf.slice(at);
    return frames;
  }
}

// ---------------------------------------------------------------- client

function num(x) {
  return x <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : x;
}

/** A delivery. */
export class Message {
  constructor(client, sub, f) {
    this._client = client;
    this._sub = sub;
    this._sid = f.id;
    this._seq = f.seq;
    this._settled = false;
    this.topic = f.topic;
    this.key = f.key;
    this.payload = f.payload;
    this.flags = f.flags;
    /** Stream sequence (durable and history deliveries), else 0. */
    this.seq = num(f.seq);
    this.redelivered = (f.flags & Flag.Redelivered) !== 0;
    this.history = (f.flags & Flag.History) !== 0;
    this.ackRequired = (f.flags & Flag.AckRequired) !== 0;
  }

  /** The payload as text. */
  text() {
    return utf8Decode.decode(this.payload);
  }

  /** The payload parsed as JSON. */
  json() {
    return JSON.parse(this.text());
  }

  /** Acknowledges a durable delivery; with confirm, waits until the hub stored the ack. */
  ack({ confirm = false } = {}) {
    return this._settle(Op.ACK, confirm);
  }

  /** Gives a durable delivery back to the hub, for another member now. */
  nak({ confirm = false } = {}) {
    return this._settle(Op.NAK, confirm);
  }

  _settle(op, confirm) {
    if (!this.ackRequired || this._settled) return Promise.resolve();
    this._settled = true;
    return this._client._settle(this._sub, this._sid, this._seq, op, confirm);
  }
}

/** A subscription; unsubscribe() ends it. */
export class Subscription {
  constructor(client, pattern, handler, opts) {
    this._client = client;
    this.pattern = pattern;
    this.handler = handler;
    this.opts = opts;
    this.sid = null; // BigInt while subscribed on the current connection
    this.closed = false;
    this._inflight = false; // a SUB for it awaits its answer
  }

  unsubscribe() {
    return this._client._unsubscribe(this);
  }
}

const STATES = ['connecting', 'connected', 'reconnecting', 'closed'];

/**
 * A connection to a CAPS hub over WebSocket that reconnects by itself.
 * Options:
 *   role, name, token       the HELLO (name defaults to "web-" + random hex)
 *   reconnect               default true
 *   minBackoff, maxBackoff  milliseconds between attempts (default 100, 5000)
 *   timeout                 default per-call timeout in ms (default 10000)
 *   onState(state)          'connecting' | 'connected' | 'reconnecting' | 'closed'
 *   onError(err)            errors that answer no call (refused re-subscriptions…)
 *   onMessage(msg)          deliveries that belong to no subscription (sid 0)
 *   WebSocket               the WebSocket class (default globalThis.WebSocket)
 */
export class Client {
  /** Connects and resolves once the hub has welcomed the client. */
  static async connect(url, opts = {}) {
    const c = new Client(url, opts);
    await c.ready();
    return c;
  }

  constructor(url, opts = {}) {
    this.url = resolveURL(url);
    this.opts = {
      role: 'client', reconnect: true, minBackoff: 100, maxBackoff: 5000, timeout: 10000, ...opts,
    };
    if (!this.opts.name) {
      this.opts.name = 'web-' + Math.floor(Math.random() * 0xffffffff).toString(16).padStart(8, '0');
    }
    this.state = 'connecting';
    this.welcome = null;
    this.lastError = null;
    this._ws = null;
    this._nextId = 1n << 20n; // far from the hub's sids, as the Go client does
    this._calls = new Map(); // correlation id (BigInt) → {resolve, reject, kind}
    this._acks = new Map(); // `${sid}/${seq}` → call waiting for a confirmed ack
    this._subs = new Set(); // every live Subscription
    this._bySid = new Map(); // sid → Set<Subscription>
    this._waiters = []; // calls waiting for a connection
    this._resume = ''; // resume token of the last WELCOME, sent back in the next HELLO
    this._attempt = 0;
    this._closing = false;
    this._timers = new Set();
    this._readyPromise = new Promise((resolve, reject) => {
      this._readyResolve = resolve;
      this._readyReject = reject;
    });
    this._readyPromise.catch(() => {}); // reported to whoever awaits ready()
    this._open();
  }

  /** Resolves with the WELCOME once connected (the first time). */
  ready() {
    return this._readyPromise;
  }

  // ---- public calls

  /**
   * Publishes payload on topic. Resolves with the stream sequence (0 for a
   * live topic) once the hub accepted it. Options: id (message id for
   * de-duplication), durable (fail unless the topic is stored), timeout.
   */
  async publish(topic, payload, { id, durable = false, timeout } = {}) {
    const ok = await this._call({ op: Op.PUB, topic, key: id, payload, flags: durable ? Flag.Durable : 0 }, timeout);
    return num(ok.seq);
  }

  /** Sends a request to a hub service; resolves with the reply's payload bytes. */
  async request(service, payload, { timeout } = {}) {
    const reply = await this._call({ op: Op.REQ, topic: service, payload }, timeout);
    return reply.payload;
  }

  /**
   * Subscribes handler(msg) to pattern. Options: queue (queue group),
   * durable (durable name), manualAck, deliverAll, maxInFlight, ackWaitMs,
   * history (last N stored messages first). Durable deliveries are
   * acknowledged after the handler returns unless manualAck is set.
   */
  async subscribe(pattern, handler, opts = {}) {
    const sub = new Subscription(this, pattern, handler, opts);
    this._subs.add(sub);
    try {
      await this._sendSub(sub, opts.timeout);
    } catch (err) {
      this._subs.delete(sub);
      throw err;
    }
    return sub;
  }

  /** Closes the connection for good. */
  close() {
    if (this.state === 'closed') return;
    this._closing = true;
    const ws = this._ws;
    if (ws && ws.readyState === 1) {
      try {
        ws.send(encodeFrame({ op: Op.BYE, payload: 'client closing' }));
      } catch { /* closing anyway */ }
    }
    this._finish(new CapsError('closed', 'the client was closed'));
    if (ws) ws.close(1000, 'bye');
  }

  // ---- connection

  _setState(s) {
    if (this.state === s || !STATES.includes(s)) return;
    this.state = s;
    try {
      this.opts.onState?.(s);
    } catch (err) {
      console.error('caps: onState', err);
    }
  }

  _error(err) {
    this.lastError = err;
    if (this.opts.onError) {
      try {
        this.opts.onError(err);
      } catch (e) {
        console.error('caps: onError', e);
      }
    }
  }

  _open() {
    const WS = this.opts.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new WS(this.url);
    } catch (err) {
      this._lost(ws, new CapsError('unavailable', String(err)));
      return;
    }
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    const reader = new FrameReader(DEFAULT_MAX_FRAME + 4096);
    let welcomed = false;
    ws.onopen = () => {
      const hello = { version: PROTOCOL_VERSION, role: this.opts.role, name: this.opts.name };
      if (this.opts.token) hello.token = this.opts.token;
      if (this._resume) hello.resume = this._resume;
      ws.send(encodeFrame({ op: Op.HELLO, payload: hello }));
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      let frames;
      try {
        frames = reader.push(ev.data);
      } catch (err) {
        this._lost(ws, err);
        return;
      }
      this._lastRecv = Date.now();
      for (const f of frames) {
        if (!welcomed) {
          if (f.op === Op.WELCOME) {
            welcomed = true;
            const welcome = JSON.parse(utf8Decode.decode(f.payload));
            if (welcome.max_frame) reader.maxFrame = Math.max(reader.maxFrame, welcome.max_frame + 4096);
            this._welcomed(ws, welcome);
            continue;
          }
          if (f.op === Op.ERR) {
            const err = new CapsError(f.topic, utf8Decode.decode(f.payload), true);
            // The hub refused who we are: retrying will not help.
            if (['unauthorized', 'handshake', 'classroom_disabled'].includes(err.code) ||
                (err.code === 'name_taken' && !this._resume)) {
              this._readyReject(err);
              this._finish(err);
              ws.close();
              return;
            }
            this._lost(ws, err);
            return;
          }
          if (f.op === Op.PING) continue;
        }
        this._handle(ws, f);
      }
    };
    ws.onclose = (ev) => {
      this._lost(ws, new CapsError('disconnected', `connection closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`));
    };
    ws.onerror = () => { /* onclose follows with the details the browser gives */ };
  }

  _welcomed(ws, welcome) {
    this.welcome = welcome;
    this._resume = welcome.resume || '';
    this._attempt = 0;
    this._lastRecv = Date.now();
    this._lastSent = Date.now();
    this._startHeartbeat(ws, welcome.heartbeat_ms || 10000);
    this._setState('connected');
    this._readyResolve(welcome);
    // Subscribe again: sids belong to the connection.
    this._bySid.clear();
    for (const sub of this._subs) {
      sub.sid = null;
      if (sub._inflight) continue; // its first SUB is waiting for this connection
      this._sendSub(sub).catch((err) => {
        this._subs.delete(sub);
        sub.closed = true;
        this._error(new CapsError(err.code ?? 'rejected', `re-subscribing to ${sub.pattern}: ${err.text ?? err.message}`));
      });
    }
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w.resolve();
  }

  _startHeartbeat(ws, hb) {
    const tick = Math.max(hb / 4, 50);
    const timer = setInterval(() => {
      if (this._ws !== ws) {
        clearInterval(timer);
        this._timers.delete(timer);
        return;
      }
      const now = Date.now();
      if (now - this._lastRecv > 2 * hb) {
        this._lost(ws, new CapsError('heartbeat_timeout', `nothing from the hub for ${2 * hb} ms`));
        ws.close();
        return;
      }
      if (now - this._lastSent > hb) this._send(ws, { op: Op.PING });
    }, tick);
    this._timers.add(timer);
  }

  /** The connection ws is gone: fail what was in flight and reconnect. */
  _lost(ws, err) {
    if (ws !== undefined && this._ws !== ws) return;
    this._ws = null;
    this.lastError = err;
    for (const call of this._calls.values()) call.reject(new CapsError('disconnected', err.message));
    this._calls.clear();
    for (const call of this._acks.values()) call.reject(new CapsError('disconnected', err.message));
    this._acks.clear();
    for (const sub of this._subs) sub.sid = null;
    this._bySid.clear();
    if (this._closing || this.state === 'closed') return;
    if (!this.opts.reconnect) {
      this._readyReject(err);
      this._finish(err);
      return;
    }
    this._setState(this.welcome ? 'reconnecting' : 'connecting');
    const d = Math.min(this.opts.minBackoff * 2 ** this._attempt, this.opts.maxBackoff);
    this._attempt++;
    const wait = d / 2 + Math.random() * (d / 2);
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      if (!this._closing) this._open();
    }, wait);
    this._timers.add(timer);
  }

  _finish(err) {
    this._setState('closed');
    for (const t of this._timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this._timers.clear();
    for (const call of this._calls.values()) call.reject(err);
    this._calls.clear();
    for (const call of this._acks.values()) call.reject(err);
    this._acks.clear();
    for (const w of this._waiters) w.reject(err);
    this._waiters = [];
    for (const sub of this._subs) sub.closed = true;
    this._subs.clear();
    this._bySid.clear();
    this._readyReject(err);
  }

  _send(ws, f) {
    ws.send(encodeFrame(f));
    this._lastSent = Date.now();
  }

  /** Waits for a live connection, at most timeout ms. */
  _connected(timeout) {
    if (this.state === 'closed') return Promise.reject(new CapsError('closed', 'the client is closed'));
    if (this._ws && this.state === 'connected') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      const timer = setTimeout(() => {
        this._waiters = this._waiters.filter((x) => x !== w);
        reject(new CapsError('timeout', `not connected within ${timeout} ms`));
      }, timeout);
      w.resolve = () => {
        clearTimeout(timer);
        resolve();
      };
      w.reject = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      this._waiters.push(w);
    });
  }

  /**
   * Sends a frame that the hub answers by correlation id (OK, REPLY or ERR).
   * onAnswer, if given, runs synchronously when the answer is read, before
   * any later frame is handled.
   */
  async _call(f, timeout = this.opts.timeout, onAnswer = undefined) {
    const deadline = Date.now() + timeout;
    await this._connected(timeout);
    const ws = this._ws;
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._calls.delete(id);
        reject(new CapsError('timeout', `no answer within ${timeout} ms`));
      }, Math.max(deadline - Date.now(), 0));
      this._calls.set(id, {
        onAnswer,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      try {
        this._send(ws, { ...f, id });
      } catch (err) {
        this._calls.get(id)?.reject(new CapsError('disconnected', String(err)));
        this._calls.delete(id);
      }
    });
  }

  async _sendSub(sub, timeout) {
    const o = sub.opts;
    let flags = 0;
    if (o.manualAck) flags |= Flag.ManualAck;
    if (o.deliverAll) flags |= Flag.DeliverAll;
    const so = {};
    if (o.maxInFlight) so.max_inflight = o.maxInFlight;
    if (o.ackWaitMs) so.ack_wait_ms = o.ackWaitMs;
    if (o.history) so.history = o.history;
    const payload = Object.keys(so).length ? so : undefined;
    // The sid is bound the moment the OK is read, before the MSG frames that
    // may follow it in the same WebSocket message (history comes right after).
    sub._inflight = true;
    try {
      await this._call({ op: Op.SUB, topic: sub.pattern, key: o.durable, group: o.queue, flags, payload }, timeout, (ok) => {
        if (sub.closed || !this._subs.has(sub)) {
          this._dropSid(sub, ok.seq); // unsubscribed meanwhile
        } else if (sub.sid === null) {
          this._bindSid(sub, ok.seq);
        }
      });
    } finally {
      sub._inflight = false;
    }
  }

  _bindSid(sub, sid) {
    sub.sid = sid;
    let set = this._bySid.get(sid);
    if (!set) {
      set = new Set();
      this._bySid.set(sid, set);
    }
    set.add(sub);
  }

  _dropSid(sub, sid) {
    const set = this._bySid.get(sid);
    if (set) set.delete(sub);
    // Live subscriptions to one pattern share their sid: UNSUB only when the
    // last local one goes.
    if ((!set || set.size === 0) && this._ws && this.state === 'connected') {
      this._bySid.delete(sid);
      this._send(this._ws, { op: Op.UNSUB, id: sid });
    }
  }

  async _unsubscribe(sub) {
    if (sub.closed) return;
    sub.closed = true;
    this._subs.delete(sub);
    if (sub.sid !== null) {
      const sid = sub.sid;
      sub.sid = null;
      this._dropSid(sub, sid);
    }
  }

  _settle(sub, sid, seq, op, confirm) {
    const ws = this._ws;
    if (!ws || sub.sid !== sid) {
      // The connection that delivered it is gone: the hub has handed it back.
      return Promise.reject(new CapsError('disconnected', 'the delivery belongs to a lost connection; the hub redelivers it'));
    }
    if (!confirm) {
      this._send(ws, { op, id: sid, seq });
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      this._acks.set(`${sid}/${seq}`, { resolve, reject });
      this._send(ws, { op, id: sid, seq, flags: Flag.Confirm });
    });
  }

  _handle(ws, f) {
    switch (f.op) {
      case Op.MSG:
        this._deliver(f);
        return;
      case Op.OK:
        if (f.flags & Flag.Confirm) {
          const k = `${f.id}/${f.seq}`;
          const call = this._acks.get(k);
          this._acks.delete(k);
          call?.resolve();
          return;
        }
        this._answer(f.id, (call) => {
          call.onAnswer?.(f);
          call.resolve(f);
        });
        return;
      case Op.REPLY:
        this._answer(f.id, (call) => call.resolve(f));
        return;
      case Op.ERR: {
        const err = new CapsError(f.topic, utf8Decode.decode(f.payload), (f.flags & Flag.Fatal) !== 0);
        if (this._calls.has(f.id)) {
          this._answer(f.id, (call) => call.reject(err));
        } else {
          // An ack's ERR carries the sid; anything else answers no call.
          let matched = false;
          for (const [k, call] of this._acks) {
            if (k.startsWith(`${f.id}/`)) {
              this._acks.delete(k);
              call.reject(err);
              matched = true;
              break;
            }
          }
          if (!matched) this._error(err);
        }
        if (err.fatal) {
          this._lost(ws, err);
          ws.close();
        }
        return;
      }
      case Op.PING:
        this._send(ws, { op: Op.PONG, id: f.id });
        return;
      case Op.PONG:
        return;
      case Op.BYE:
        this._lost(ws, new CapsError('bye', utf8Decode.decode(f.payload) || 'the hub closed the connection'));
        ws.close();
        return;
      default:
        this._error(new CapsError('bad_frame', `unexpected ${f.op} from the hub`));
    }
  }

  _answer(id, fn) {
    const call = this._calls.get(id);
    if (!call) return;
    this._calls.delete(id);
    fn(call);
  }

  _deliver(f) {
    const set = this._bySid.get(f.id);
    if (!set || set.size === 0) {
      if (f.id === 0n) {
        const m = new Message(this, null, f);
        try {
          this.opts.onMessage?.(m);
        } catch (err) {
          console.error('caps: onMessage', err);
        }
        return;
      }
      // A delivery for a SUB whose OK we have not processed: cannot happen,
      // the hub sends the OK first. A late one after UNSUB: drop it, and give
      // back what must be acknowledged.
      if (f.flags & Flag.AckRequired && this._ws) this._send(this._ws, { op: Op.NAK, id: f.id, seq: f.seq });
      return;
    }
    for (const sub of set) {
      const m = new Message(this, sub, f);
      let result;
      try {
        result = sub.handler(m);
      } catch (err) {
        console.error(`caps: handler for ${sub.pattern}`, err);
      }
      if (m.ackRequired && !sub.opts.manualAck) {
        Promise.resolve(result).then(() => m.ack(), () => m.nak()).catch(() => {});
      }
    }
  }
}

/** Resolves a relative WebSocket URL ("/ws") against the page's location. */
function resolveURL(url) {
  if (/^wss?:\/\//.test(url)) return url;
  const loc = globalThis.location;
  if (!loc) throw new CapsError('bad_request', `cannot resolve ${url} without a page location`);
  const u = new URL(url, loc.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.toString();
}
