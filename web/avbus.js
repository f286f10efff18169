// avbus — the JavaScript client for browsers (and Node 22+, which has WebSocket).
//
// Speaks the avbus protocol (docs/protocol.md) over the bus's WebSocket: one binary
// message per frame, no length prefix. It keeps a session across network drops: it
// reconnects with exponential backoff and jitter, resumes the session from the last
// sequence number it saw, resends requests still waiting for an answer (the bus
// answers a resent command from memory, never running it twice), and resubscribes
// when the bus could not resume. Telemetry (meters, protocol §11) arrives on the same
// WebSocket as binary messages holding the §11.2 datagram bytes; `telemetry()`
// subscriptions are sent again after every reconnect. docs/web.md has an example.
//
//   import { Client } from '/avbus.js';
//   const bus = new Client({ name: 'lobby-panel' });
//   bus.on('connected', ({ session, resumed }) => console.log('connected', session));
//   bus.subscribe(['boardroom/#'], (ev) => { if (ev.type === 'update') show(ev.update); });
//   await bus.set('boardroom/projector/power', 'on');   // rejects with {code, message}
//   const meters = await bus.telemetry('hall/#', 15, (v) => draw(v.topic, v.value, v.stale));

import { encode, decode, isMapMarker } from './msgpack.js';

export { encode, decode, isMapMarker, Ext, CodecError } from './msgpack.js';

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** A typed error answer from the bus (or `closed` when the client was closed). */
export class AvbusError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'AvbusError';
    /** The stable error code: `device_offline`, `invalid_value`, `timeout`, ... */
    this.code = code;
  }
}

/** The WebSocket URL of the page's own bus: `ws(s)://<host>/ws`. */
export function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error('no page location: pass options.url');
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
}

/**
 * Whether topic `topic` matches subscription filter `filter` (MQTT wildcards: `+` one
 * level, `#` the rest; a filter starting with a wildcard skips `$` topics).
 */
export function matches(filter, topic) {
  const f = filter.split('/');
  const t = topic.split('/');
  if ((f[0] === '+' || f[0] === '#') && topic.startsWith('$')) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

// ---- telemetry datagrams (docs/protocol.md §11.2) ----------------------------------

/** Telemetry datagram constants (docs/protocol.md §11.2). */
export const TELEMETRY = Object.freeze({
  MAGIC: Object.freeze([0xa7, 0xb5]),
  VERSION: 1,
  /** Datagram types: client → bus (bind, publish), bus → client (data, bound). */
  BIND: 1,
  PUBLISH: 2,
  DATA: 3,
  BOUND: 4,
  /** Largest datagram sent or accepted. */
  MAX_DATAGRAM: 1200,
  /** Header bytes of datagrams from the bus, and to it (with the token). */
  HEADER: 8,
  HEADER_TO_BUS: 16,
  /** Bytes before a record's payload. */
  RECORD_HEADER: 24,
  /** Record formats and flags. */
  FORMAT_MSGPACK: 0,
  FORMAT_F32: 1,
  FLAG_STALE: 1,
});

function asBytes(input) {
  if (input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  return null;
}

/**
 * Decodes one telemetry datagram (docs/protocol.md §11.2) from a Uint8Array,
 * ArrayBuffer or DataView. Never throws. Returns
 * `{type, dseq, token, records, error, badValues}`:
 *
 * * `type` (1 bind, 2 publish, 3 data, 4 bound) and `dseq` (u32); `token` (a BigInt)
 *   on bind and publish, otherwise `null`. When the header is not valid, `type` and
 *   `dseq` are `null`, `records` is empty and `error` says why: `truncated`,
 *   `oversized`, `bad_magic`, `bad_version` or `bad_type`.
 * * `records`: `{alias, seq, timeUs, format, flags, stale, offset, total, value}` for
 *   each valid record, in order. Reading stops at the first malformed record (it runs
 *   past the end, has an unknown format, or an f32 payload that is not whole values or
 *   overruns `total`): `error` is then `bad_record`, otherwise `null`.
 * * `value`: for f32 records, a Number when the stream has one channel (`total` 1),
 *   otherwise an Array of this record's channels, which start at channel `offset`; for
 *   MessagePack records, the decoded value. A MessagePack payload that does not decode
 *   is left out (its framing is sound, so reading goes on) and counted in `badValues`.
 * * `timeUs` (µs since the Unix epoch) is a Number: exact until the year 2255.
 */
export function decodeTelemetry(input) {
  const out = { type: null, dseq: null, token: null, records: [], error: null, badValues: 0 };
  const b = asBytes(input);
  if (b === null) { out.error = 'truncated'; return out; }
  const T = TELEMETRY;
  if (b.length > T.MAX_DATAGRAM) { out.error = 'oversized'; return out; }
  if (b.length < T.HEADER) { out.error = 'truncated'; return out; }
  if (b[0] !== T.MAGIC[0] || b[1] !== T.MAGIC[1]) { out.error = 'bad_magic'; return out; }
  if (b[2] !== T.VERSION) { out.error = 'bad_version'; return out; }
  const type = b[3];
  if (type < T.BIND || type > T.BOUND) { out.error = 'bad_type'; return out; }
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let pos = T.HEADER;
  let token = null;
  if (type === T.BIND || type === T.PUBLISH) {
    if (b.length < T.HEADER_TO_BUS) { out.error = 'truncated'; return out; }
    token = view.getBigUint64(8);
    pos = T.HEADER_TO_BUS;
  }
  out.type = type;
  out.dseq = view.getUint32(4);
  out.token = token;
  if (type === T.BIND || type === T.BOUND) return out; // header only
  while (pos < b.length) {
    if (b.length - pos < T.RECORD_HEADER) { out.error = 'bad_record'; break; }
    const format = b[pos + 16];
    const offset = view.getUint16(pos + 18);
    const total = view.getUint16(pos + 20);
    const len = view.getUint16(pos + 22);
    const start = pos + T.RECORD_HEADER;
    if (format !== T.FORMAT_MSGPACK && format !== T.FORMAT_F32) { out.error = 'bad_record'; break; }
    if (len > b.length - start) { out.error = 'bad_record'; break; }
    if (format === T.FORMAT_F32 && (len % 4 !== 0 || offset + len / 4 > total)) {
      out.error = 'bad_record';
      break;
    }
    const flags = b[pos + 17];
    const rec = {
      alias: view.getUint32(pos),
      seq: view.getUint32(pos + 4),
      timeUs: view.getUint32(pos + 8) * 4294967296 + view.getUint32(pos + 12),
      format,
      flags,
      stale: (flags & T.FLAG_STALE) !== 0,
      offset,
      total,
      value: undefined,
    };
    pos = start + len;
    if (format === T.FORMAT_F32) {
      const n = len / 4;
      const values = new Array(n);
      for (let i = 0; i < n; i++) values[i] = view.getFloat32(start + 4 * i, true);
      rec.value = total === 1 && n === 1 ? values[0] : values;
    } else {
      try {
        rec.value = decode(b.subarray(start, start + len));
      } catch {
        out.badValues += 1;
        continue;
      }
    }
    out.records.push(rec);
  }
  return out;
}

/** Newest records kept per client (for subscriptions whose answer comes after them). */
const TELEMETRY_CACHE = 8192;

/** A fresh per-stream figure set (as the Rust client's `StreamStats`). */
function streamStats() {
  return { received: 0, skipped: 0, rateHz: 0, lastSeq: null, windowStart: null, windowCount: 0 };
}

/** Counts one value into a subscription's per-stream figures (seq gaps are skipped values). */
function countValue(stats, topic, rec, now) {
  let ss = stats.get(topic);
  if (!ss) { ss = streamStats(); stats.set(topic, ss); }
  // Parts of one chunked value share its sequence: count the value once.
  if (rec.offset === 0 || ss.lastSeq !== rec.seq) {
    if (ss.lastSeq !== null) {
      const jump = (rec.seq - ss.lastSeq) >>> 0;
      if (jump > 1 && jump < 0x80000000) ss.skipped += jump - 1;
    }
    if (!rec.stale) {
      ss.received += 1;
      ss.windowCount += 1;
    }
    ss.lastSeq = rec.seq;
  }
  if (ss.windowStart === null) ss.windowStart = now;
  const span = now - ss.windowStart;
  if (span >= 1000) {
    ss.rateHz = (ss.windowCount * 1000) / span;
    ss.windowStart = now;
    ss.windowCount = 0;
  }
}

const DEFAULTS = {
  name: 'web-panel',
  role: 'panel',
  backoffMinMs: 250,
  backoffMaxMs: 5000,
  connectTimeoutMs: 5000,
  pingMs: 2000,
};

/** How a reconnect delay grows: doubling from min to max, ±50 % jitter. */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt - 1, 16));
  return Math.round(base * (0.5 + random()));
}

/**
 * A connection to the bus that survives network drops.
 *
 * Events (`client.on(name, fn)`): `connected` {session, resumed}, `disconnected`
 * {reason}, `reconnecting` {attempt, delayMs}, `resynced` (the state may have jumped:
 * fresh snapshots follow), `connect_error` {reason}, `connect_timeout`, `rtt` {ms},
 * `presence` {room, session, name, role, joined}, `said` {room, from, name, value},
 * `error` {code, message} (connection-level errors), `state` {state},
 * `telemetry_error` {filter, code, message} (a telemetry subscription the bus refused
 * when it was sent again after a reconnect; it is tried again after the next one).
 */
export class Client {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.url = this.options.url ?? defaultUrl();
    /**
     * Every telemetry message (a binary message that is not a MessagePack map), raw,
     * after `telemetry()` subscriptions had their values: set a handler to see them.
     */
    this.onTelemetry = options.onTelemetry ?? (() => {});
    this.state = 'idle';
    this.session = null;
    this.rtt = null;
    this.heartbeatMs = 5000;
    this._WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    this._listeners = new Map();
    this._epoch = null;
    this._lastSeq = 0;
    this._nextId = 1;
    this._requests = new Map(); // id -> {msg, resolve, reject}
    this._subs = new Map(); // id -> {filters, handler, synced, ready}
    this._rooms = new Set();
    this._snap = null; // {id, resync} while a snapshot group is arriving
    this._ws = null;
    this._attempt = 0;
    this._connectedBefore = false;
    this._closed = false;
    this._timers = new Set();
    this._pings = new Map(); // n -> sent at (ms)
    this._pingN = 0;
    this._lastRx = 0;
    this._lastError = null;
    this._firstConnect = null;
    // Telemetry (docs/protocol.md §11): subscriptions live per connection, so each is
    // sent again after every welcome; aliases and the datagram sequence are per
    // connection too.
    this._conn = 0; // connections welcomed so far
    this._tsubs = new Set(); // every open telemetry subscription's state
    this._tsubPending = new Map(); // tsub request id -> state
    this._tsubBySub = new Map(); // the bus's sub id (this connection) -> state
    this._aliases = new Map(); // alias -> {topic, channels, subs: Set(state)}
    this._latest = new Map(); // alias -> Map(offset -> newest record on this connection)
    this._latestCount = 0;
    this._nextDseq = null;
    this._tcount = { datagrams: 0, datagramsLost: 0 };
  }

  /** Registers `fn` for event `name`; returns a function that unregisters it. */
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this._listeners.get(name)?.delete(fn);
  }

  _emit(name, detail) {
    for (const fn of this._listeners.get(name) ?? []) {
      try { fn(detail); } catch (e) { console.error(`avbus: a ${name} listener failed`, e); }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', { state });
  }

  /**
   * Starts connecting (and reconnecting, until close()). Resolves at the first
   * welcome; it keeps trying while the bus is unreachable.
   */
  connect() {
    if (!this._firstConnect) {
      this._firstConnect = new Promise((resolve) => {
        const off = this.on('connected', (d) => { off(); resolve(d); });
      });
      this._open();
    }
    return this._firstConnect;
  }

  /** Ends the session (`bye`) and stops reconnecting; pending requests get `closed`. */
  close() {
    this._closed = true;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState === 1) {
      try { ws.send(encode({ t: 'bye' })); } catch { /* closing anyway */ }
    }
    if (ws) ws.close(1000);
    for (const [, r] of this._requests) r.reject(new AvbusError('closed', 'the client was closed'));
    this._requests.clear();
    for (const st of this._tsubs) st.fail(new AvbusError('closed', 'the client was closed'));
    this._tsubs.clear();
    this._tsubPending.clear();
    this._tsubBySub.clear();
    this._setState('closed');
  }

  _timer(ms, fn) {
    const t = setTimeout(() => { this._timers.delete(t); fn(); }, ms);
    this._timers.add(t);
    return t;
  }

  _clearTimer(t) {
    if (t === undefined || t === null) return;
    clearTimeout(t);
    this._timers.delete(t);
  }

  _open() {
    if (this._closed) return;
    this._setState(this._connectedBefore ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (e) {
      this._emit('connect_error', { reason: String(e) });
      this._retry();
      return;
    }
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    let welcomed = false;
    const deadline = this._timer(this.options.connectTimeoutMs, () => {
      if (this._ws !== ws || welcomed) return;
      this._emit('connect_timeout', {});
      this._lastError = 'connect timeout';
      ws.close();
    });
    ws.onopen = () => {
      const resume = this.session === null ? undefined
        : { session: this.session, epoch: this._epoch, last_seq: this._lastSeq };
      ws.send(encode({
        t: 'hello', v: PROTOCOL_VERSION, name: this.options.name, role: this.options.role,
        credentials: null, resume,
      }));
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastRx = Date.now();
      if (typeof ev.data === 'string') return; // the bus sends binary messages only
      const bytes = new Uint8Array(ev.data);
      if (bytes.length === 0 || !isMapMarker(bytes[0])) {
        if (welcomed) this._telemetry(bytes);
        try { this.onTelemetry(bytes); } catch (e) { console.error('avbus: onTelemetry failed', e); }
        return;
      }
      let msg;
      try {
        msg = decode(bytes);
      } catch (e) {
        this._lastError = `bad frame from the bus: ${e.message}`;
        ws.close();
        return;
      }
      if (!welcomed) {
        if (msg.t === 'welcome') {
          welcomed = true;
          this._clearTimer(deadline);
          this._welcome(msg);
        } else if (msg.t === 'error') {
          this._lastError = `${msg.code}: ${msg.message}`;
          this._emit('connect_error', { reason: this._lastError, code: msg.code });
        }
        return;
      }
      this._frame(msg);
    };
    ws.onclose = (ev) => {
      this._clearTimer(deadline);
      if (this._ws !== ws) return;
      this._ws = null;
      this._stopHeartbeat();
      const reason = this._lastError ?? (ev.code === 1006 ? 'connection lost' : `closed (${ev.code})`);
      this._lastError = null;
      if (welcomed) {
        this._emit('disconnected', { reason });
      } else if (!this._closed) {
        this._emit('connect_error', { reason });
      }
      this._retry();
    };
  }

  _retry() {
    if (this._closed) return;
    this._attempt += 1;
    const delayMs = backoffDelay(this._attempt, this.options.backoffMinMs, this.options.backoffMaxMs);
    this._setState(this._connectedBefore ? 'reconnecting' : 'connecting');
    this._emit('reconnecting', { attempt: this._attempt, delayMs });
    this._timer(delayMs, () => this._open());
  }

  _send(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1 || this.state === 'connecting' || this.state === 'reconnecting') {
      return false;
    }
    ws.send(encode(msg));
    return true;
  }

  _welcome(w) {
    const first = !this._connectedBefore;
    this._connectedBefore = true;
    this._attempt = 0;
    this.session = w.session;
    this._epoch = w.epoch;
    this.heartbeatMs = Number(w.heartbeat_ms) || 5000;
    this._snap = null;
    if (!w.resumed) this._lastSeq = Number(w.seq);
    // A new connection has no telemetry subscriptions (even on a resumed session),
    // its own datagram sequence, and (after a bus restart) maybe other aliases.
    this._conn += 1;
    this._tsubPending.clear();
    this._tsubBySub.clear();
    this._aliases.clear();
    this._latest.clear();
    this._latestCount = 0;
    this._nextDseq = null;
    for (const st of this._tsubs) st.sub = null;
    this._setState('connected');
    this._emit('connected', { session: w.session, resumed: w.resumed });
    // A new session: everything the application set up is gone on the bus side.
    if (!w.resumed && !first) this._emit('resynced', {});
    for (const [id, s] of this._subs) {
      if (!w.resumed || !s.synced) {
        if (!w.resumed && !first && s.synced) s.deliver({ type: 'resync' });
        s.synced = false;
        this._send({ t: 'sub', id, filters: s.filters });
      }
    }
    if (!w.resumed) {
      for (const room of this._rooms) this._send({ t: 'join', id: this._nextId++, room });
    }
    // Requests still unanswered go again with their ids: a command the bus already
    // ran is answered from its memory, not run twice.
    for (const [, r] of this._requests) this._send(r.msg);
    for (const st of this._tsubs) if (st.conn !== this._conn) this._tsubSend(st);
    this._startHeartbeat();
  }

  _frame(m) {
    switch (m.t) {
      case 'update': {
        if (this._snap === null || (this._snap.id === 0 && !this._snap.resync)) {
          const seq = Number(m.seq);
          if (seq > this._lastSeq) this._lastSeq = seq;
        }
        const only = this._snap && this._snap.id !== 0 ? this._snap.id : null;
        if (only !== null) {
          this._subs.get(only)?.deliver({ type: 'update', update: m });
        } else {
          for (const [, s] of this._subs) {
            if (s.filters.some((f) => matches(f, m.topic))) s.deliver({ type: 'update', update: m });
          }
        }
        break;
      }
      case 'snapshot':
        this._snap = { id: m.id, resync: m.resync };
        if (m.resync) {
          this._emit('resynced', {});
          this._each(m.id, { type: 'resync' });
        }
        break;
      case 'synced': {
        this._snap = null;
        const seq = Number(m.seq);
        if (seq > this._lastSeq) this._lastSeq = seq;
        const targets = m.id === 0 ? [...this._subs.values()] : [this._subs.get(m.id)].filter(Boolean);
        for (const s of targets) {
          s.synced = true;
          s.resolveReady();
        }
        this._each(m.id, { type: 'synced', seq, resync: m.resync });
        break;
      }
      case 'gap':
        this._each(0, { type: 'gap', dropped: m.dropped, conflated: m.conflated, resync: m.resync });
        break;
      case 'ok':
      case 'puback':
        if (m.t === 'ok' && this._tsubPending.has(m.id)) this._tsubAnswer(m.id, m.result);
        else this._answer(m.id, null, m.t === 'ok' ? m.result : { seq: m.seq });
        break;
      case 'streams': {
        const st = this._tsubBySub.get(Number(m.sub));
        if (st) this._addStreams(st, m.streams);
        break;
      }
      case 'error':
        if (m.id !== undefined && m.id !== null && this._tsubPending.has(m.id)) {
          this._tsubRefused(m.id, new AvbusError(m.code, m.message));
        } else if (m.id === undefined || m.id === null) {
          this._lastError = `${m.code}: ${m.message}`;
          this._emit('error', { code: m.code, message: m.message });
        } else if (this._subs.has(m.id) && !this._requests.has(m.id)) {
          const s = this._subs.get(m.id);
          this._subs.delete(m.id);
          s.rejectReady(new AvbusError(m.code, m.message));
        } else {
          this._answer(m.id, new AvbusError(m.code, m.message));
        }
        break;
      case 'ping':
        this._send({ t: 'pong', n: m.n });
        break;
      case 'pong': {
        const sent = this._pings.get(m.n);
        if (sent !== undefined) {
          this._pings.delete(m.n);
          this.rtt = performance.now() - sent.at;
          sent.resolve(this.rtt);
          this._emit('rtt', { ms: this.rtt });
        }
        break;
      }
      case 'presence':
      case 'said':
        this._emit(m.t, m);
        break;
      case 'bye':
        this._lastError = `${m.reason}${m.message ? `: ${m.message}` : ''}`;
        break;
      default:
        break; // newer messages this client does not know
    }
  }

  _each(id, ev) {
    if (id !== 0) this._subs.get(id)?.deliver(ev);
    else for (const [, s] of this._subs) s.deliver(ev);
  }

  _answer(id, err, result) {
    const r = this._requests.get(id);
    if (!r) return;
    this._requests.delete(id);
    if (err) r.reject(err); else r.resolve(result);
  }

  _request(msg) {
    if (this._closed) return Promise.reject(new AvbusError('closed', 'the client was closed'));
    const id = this._nextId++;
    const full = { ...msg, id };
    return new Promise((resolve, reject) => {
      this._requests.set(id, { msg: full, resolve, reject });
      this._send(full); // if not connected, sent after the next welcome
    });
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    const every = Math.min(this.options.pingMs, this.heartbeatMs);
    const dead = 3 * Math.max(this.heartbeatMs, every);
    const tick = () => {
      this._heartbeat = this._timer(every, tick);
      if (Date.now() - this._lastRx > dead) {
        this._lastError = 'heartbeat timeout';
        this._ws?.close();
        return;
      }
      this.ping().catch(() => {});
    };
    this._lastRx = Date.now();
    this.ping().catch(() => {});
    this._heartbeat = this._timer(every, tick);
  }

  _stopHeartbeat() {
    this._clearTimer(this._heartbeat);
    this._heartbeat = null;
    for (const [, p] of this._pings) p.reject(new AvbusError('closed', 'connection lost'));
    this._pings.clear();
  }

  /** Measures the round trip to the bus now; resolves to milliseconds. */
  ping() {
    const n = ++this._pingN;
    return new Promise((resolve, reject) => {
      if (!this._send({ t: 'ping', n })) {
        reject(new AvbusError('closed', 'not connected'));
        return;
      }
      this._pings.set(n, { at: performance.now(), resolve, reject });
    });
  }

  /**
   * Subscribes to `filters`. `handler` receives, in order: {type: 'update', update}
   * for each snapshot record, {type: 'synced'}, then live updates; later also
   * {type: 'resync'} (a fresh snapshot follows: drop what it does not repeat) and
   * {type: 'gap', dropped, conflated}. Returns {ready, close()}: `ready` resolves
   * once the snapshot is complete, or rejects with the bus's error.
   */
  subscribe(filters, handler) {
    const id = this._nextId++;
    let resolveReady;
    let rejectReady;
    const ready = new Promise((res, rej) => { resolveReady = res; rejectReady = rej; });
    const sub = {
      filters: [...filters],
      synced: false,
      deliver: (ev) => {
        try { handler(ev); } catch (e) { console.error('avbus: a subscription handler failed', e); }
      },
      resolveReady: () => resolveReady(),
      rejectReady: (e) => rejectReady(e),
    };
    this._subs.set(id, sub);
    this._send({ t: 'sub', id, filters: sub.filters });
    return {
      id,
      ready,
      close: () => {
        this._subs.delete(id);
        this._send({ t: 'unsub', id: this._nextId++, filters: sub.filters });
      },
    };
  }

  /** Reads a topic's retained record ({topic, value, seq, time, quality?, ...}). */
  get(topic) {
    return this._request({ t: 'get', topic });
  }

  /** Commands a control; resolves to the adapter's result, rejects with AvbusError. */
  set(topic, value, { timeoutMs } = {}) {
    return this._request({ t: 'set', topic, value, timeout_ms: timeoutMs });
  }

  /** Fires a trigger with optional arguments; resolves to the adapter's result. */
  call(topic, args = null, { timeoutMs } = {}) {
    return this._request({ t: 'call', topic, args, timeout_ms: timeoutMs });
  }

  /** Publishes; with `ack: true` resolves to {seq} once the bus accepted it. */
  publish(topic, value, { retain = false, ack = false } = {}) {
    if (ack) return this._request({ t: 'pub', topic, value, retain });
    this._send({ t: 'pub', topic, value, retain });
    return Promise.resolve(null);
  }

  /** Joins a room (again after any new session); resolves to its member list. */
  join(room) {
    this._rooms.add(room);
    return this._request({ t: 'join', room });
  }

  /** Leaves a room. */
  leave(room) {
    this._rooms.delete(room);
    return this._request({ t: 'leave', room });
  }

  /** Sends `value` to the other members of a joined room (only while connected). */
  say(room, value) {
    return this._send({ t: 'say', room, value });
  }

  /**
   * Subscribes to the telemetry streams (meters) whose topics match `filter`, at most
   * `hz` batches a second (docs/protocol.md §11.4). `onValue` gets
   * `{topic, alias, value, offset, total, seq, timeUs, stale}` for each new value of
   * a stream: `value` is a Number for a one-channel stream, an Array otherwise (a
   * stream of more than 290 channels arrives in parts: `value[i]` is channel
   * `offset + i` of `total`); `stale` means the source went silent and this is its
   * last value. Resolves, once the bus answered, to
   * `{sub, filter, hz, streams, stats(), close()}`; rejects with the bus's error
   * (`invalid_filter`, `limit`). The subscription is sent again after every
   * reconnect, resumed or not, with the same `onValue`.
   */
  telemetry(filter, hz, onValue) {
    if (this._closed) return Promise.reject(new AvbusError('closed', 'the client was closed'));
    let resolve;
    let reject;
    const answered = new Promise((res, rej) => { resolve = res; reject = rej; });
    const st = {
      filter,
      hz,
      onValue,
      sub: null, // the bus's id for it on this connection (null until answered)
      conn: 0, // the connection it was last sent on
      streams: new Map(), // alias -> {alias, topic, channels}
      stats: new Map(), // topic -> per-stream figures
      last: new Map(), // `${alias}/${offset}` -> `${seq}/${stale}` delivered
      settled: false,
      closed: false,
      handle: null,
      fail: (e) => { if (!st.settled) { st.settled = true; reject(e); } },
      done: () => { if (!st.settled) { st.settled = true; resolve(st.handle); } },
    };
    st.handle = {
      filter,
      hz,
      /** The bus's id for this subscription on the current connection. */
      get sub() { return st.sub; },
      /** The matching streams known so far: [{alias, topic, channels}]. */
      get streams() { return [...st.streams.values()]; },
      /** Loss and rate: {datagrams, datagramsLost, streams: {topic: {received, skipped, rateHz}}}. */
      stats: () => this._tstats(st),
      /** Ends the subscription (`tunsub`); no more values are delivered. */
      close: () => this._tclose(st),
    };
    this._tsubs.add(st);
    this._tsubSend(st);
    return answered;
  }

  _tsubSend(st) {
    st.sub = null;
    st.last.clear();
    if (this.state !== 'connected') return; // sent after the next welcome
    const id = this._nextId++;
    st.conn = this._conn;
    this._tsubPending.set(id, st);
    if (!this._send({ t: 'tsub', id, filter: st.filter, hz: st.hz })) this._tsubPending.delete(id);
  }

  _tsubAnswer(id, result) {
    const st = this._tsubPending.get(id);
    this._tsubPending.delete(id);
    const sub = Number(result?.sub ?? id);
    if (st.closed) {
      this._send({ t: 'tunsub', id: this._nextId++, sub });
      return;
    }
    st.sub = sub;
    this._tsubBySub.set(sub, st);
    this._addStreams(st, result?.streams);
    st.done();
  }

  _tsubRefused(id, err) {
    const st = this._tsubPending.get(id);
    this._tsubPending.delete(id);
    if (st.closed) return;
    if (!st.settled) {
      // The first answer: the application hears it and the subscription is gone.
      this._tsubs.delete(st);
      st.closed = true;
      st.fail(err);
    } else {
      this._emit('telemetry_error', { filter: st.filter, code: err.code, message: err.message });
    }
  }

  _addStreams(st, streams) {
    for (const d of Array.isArray(streams) ? streams : []) {
      if (!d || typeof d.topic !== 'string') continue;
      const alias = Number(d.alias);
      const desc = { alias, topic: d.topic, channels: Number(d.channels ?? 1) };
      st.streams.set(alias, desc);
      let a = this._aliases.get(alias);
      if (!a || a.topic !== desc.topic) {
        a = { topic: desc.topic, channels: desc.channels, subs: new Set() };
        this._aliases.set(alias, a);
      }
      a.subs.add(st);
      // Values that arrived before this answer (or for another subscription).
      for (const rec of this._latest.get(alias)?.values() ?? []) this._tdeliver(st, a.topic, rec);
    }
  }

  _telemetry(bytes) {
    const d = decodeTelemetry(bytes);
    if (d.type !== TELEMETRY.DATA) return;
    const c = this._tcount;
    c.datagrams += 1;
    if (this._nextDseq !== null) {
      // A small forward jump is loss; a "negative" one is reordering.
      const gap = (d.dseq - this._nextDseq) >>> 0;
      if (gap > 0 && gap < 0x80000000) c.datagramsLost += gap;
    }
    this._nextDseq = (d.dseq + 1) >>> 0;
    for (const rec of d.records) {
      let parts = this._latest.get(rec.alias);
      if (!parts) {
        if (this._latestCount >= TELEMETRY_CACHE) { this._latest.clear(); this._latestCount = 0; }
        parts = new Map();
        this._latest.set(rec.alias, parts);
      }
      if (!parts.has(rec.offset)) this._latestCount += 1;
      parts.set(rec.offset, rec);
      const a = this._aliases.get(rec.alias);
      if (!a) continue;
      for (const st of a.subs) this._tdeliver(st, a.topic, rec);
    }
  }

  _tdeliver(st, topic, rec) {
    if (st.closed) return;
    // Overlapping subscriptions bring the same record more than once: deliver it once.
    const key = `${rec.alias}/${rec.offset}`;
    const mark = `${rec.seq}/${rec.stale ? 1 : 0}`;
    if (st.last.get(key) === mark) return;
    st.last.set(key, mark);
    countValue(st.stats, topic, rec, typeof performance !== 'undefined' ? performance.now() : Date.now());
    try {
      st.onValue({
        topic,
        alias: rec.alias,
        value: rec.value,
        offset: rec.offset,
        total: rec.total,
        seq: rec.seq,
        timeUs: rec.timeUs,
        stale: rec.stale,
      });
    } catch (e) {
      console.error('avbus: a telemetry handler failed', e);
    }
  }

  _tstats(st) {
    const streams = {};
    for (const [topic, s] of st.stats) {
      streams[topic] = { received: s.received, skipped: s.skipped, rateHz: s.rateHz };
    }
    return { datagrams: this._tcount.datagrams, datagramsLost: this._tcount.datagramsLost, streams };
  }

  _tclose(st) {
    if (st.closed) return;
    st.closed = true;
    this._tsubs.delete(st);
    for (const alias of st.streams.keys()) this._aliases.get(alias)?.subs.delete(st);
    if (st.sub !== null) {
      this._tsubBySub.delete(st.sub);
      this._send({ t: 'tunsub', id: this._nextId++, sub: st.sub });
    }
    st.fail(new AvbusError('closed', 'the telemetry subscription was closed'));
  }
}
