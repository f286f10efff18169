// avbus — the JavaScript client for browsers (and Node 22+, which has WebSocket).
//
// Speaks the avbus protocol (docs/protocol.md) over the bus's WebSocket: one binary
// message per frame, no length prefix. It keeps a session across network drops: it
// reconnects with exponential backoff and jitter, resumes the session from the last
// sequence number it saw, resends requests still waiting for an answer (the bus
// answers a resent command from memory, never running it twice), and resubscribes
// when the bus could not resume. docs/web.md has an example.
//
//   import { Client } from '/avbus.js';
//   const bus = new Client({ name: 'lobby-panel' });
//   bus.on('connected', ({ session, resumed }) => console.log('connected', session));
//   bus.subscribe(['boardroom/#'], (ev) => { if (ev.type === 'update') show(ev.update); });
//   await bus.set('boardroom/projector/power', 'on');   // rejects with {code, message}

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
 * `error` {code, message} (connection-level errors), `state` {state}.
 */
export class Client {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.url = this.options.url ?? defaultUrl();
    /** Telemetry (binary messages that are not MessagePack maps): set a handler. */
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
        this._answer(m.id, null, m.t === 'ok' ? m.result : { seq: m.seq });
        break;
      case 'error':
        if (m.id === undefined || m.id === null) {
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
}
