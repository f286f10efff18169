// Unit tests of the browser code that need no browser: the MessagePack codec, topic
// matching, the backoff schedule, the slider taper, and the client's resume logic
// against a scripted WebSocket. Run by tests/browser.rs with `node --test`.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { encode, decode, isMapMarker, Ext, CodecError, MAX_DEPTH } from '../../web/msgpack.js';
import { Client, AvbusError, matches, backoffDelay } from '../../web/avbus.js';
import { toPosition, fromPosition, formatNumber, parseArgs } from '../../web/controls.js';

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'));

test('the hello and sub frames of docs/protocol.md, byte for byte', () => {
  assert.equal(
    hex(encode({ t: 'hello', v: 1, name: 'py', role: 'panel', credentials: null })),
    '85a174a568656c6c6fa17601a46e616d65a27079a4726f6c65a570616e656cab63726564656e7469616c73c0',
  );
  assert.equal(
    hex(encode({ t: 'sub', id: 1, filters: ['boardroom/#'] })),
    '83a174a3737562a2696401a766696c7465727391ab626f617264726f6f6d2f23',
  );
});

test('values round-trip in their smallest encodings', () => {
  const cases = [
    [0, '00'], [127, '7f'], [128, 'cc80'], [65535, 'cdffff'], [65536, 'ce00010000'],
    [-1, 'ff'], [-32, 'e0'], [-33, 'd0df'], [-40000, 'd2ffff63c0'], [2 ** 40, 'cf0000010000000000'],
    [1.5, 'cb3ff8000000000000'], [null, 'c0'], [true, 'c3'], [false, 'c2'], ['é', 'a2c3a9'],
  ];
  for (const [v, h] of cases) {
    assert.equal(hex(encode(v)), h, `encode ${v}`);
    assert.deepEqual(decode(unhex(h)), v, `decode ${h}`);
  }
  const epoch = 13525166889625202638n;
  assert.equal(decode(encode(epoch)), epoch, 'a u64 beyond 2^53 stays exact as a BigInt');
  assert.equal(decode(encode(-(2n ** 62n))), -(2n ** 62n));
  assert.equal(decode(unhex('ca3fc00000')), 1.5, 'float32');
  assert.deepEqual(decode(encode(new Uint8Array([1, 2, 3]))), new Uint8Array([1, 2, 3]));
  const long = 'x'.repeat(70000);
  assert.equal(decode(encode(long)), long);
  const arr = Array.from({ length: 20 }, (_, i) => i);
  assert.deepEqual(decode(encode(arr)), arr);
});

test('maps: string keys give objects, other keys a Map; undefined fields are left out', () => {
  assert.deepEqual(decode(encode({ a: 1, b: [true, null] })), { a: 1, b: [true, null] });
  const m = decode(encode(new Map([[1, 'one'], ['x', 2]])));
  assert.ok(m instanceof Map);
  assert.equal(m.get(1), 'one');
  assert.equal(hex(encode({ t: 'get', id: undefined })), '81a174a3676574');
  const proto = decode(encode(new Map([['__proto__', 1]])));
  assert.equal(Object.getPrototypeOf(proto), Object.prototype, 'a "__proto__" key stays a key');
  assert.equal(Object.getOwnPropertyDescriptor(proto, '__proto__').value, 1);
  assert.deepEqual(Object.keys(proto), ['__proto__']);
});

test('ext values decode; bad input throws CodecError', () => {
  const e = decode(unhex('d40507'));
  assert.ok(e instanceof Ext);
  assert.equal(e.type, 5);
  assert.deepEqual(e.data, new Uint8Array([7]));
  for (const bad of ['c1', 'a3616263ff', 'dc0010', '92', '00ff']) {
    assert.throws(() => decode(unhex(bad)), CodecError, bad);
  }
  let deep = [];
  for (let i = 0; i < MAX_DEPTH + 2; i++) deep = [deep];
  assert.throws(() => decode(encode(deep)), CodecError);
  assert.throws(() => encode(() => 1), CodecError);
});

test('map markers tell control frames from telemetry', () => {
  for (const b of [0x80, 0x8f, 0xde, 0xdf]) assert.ok(isMapMarker(b));
  for (const b of [0x00, 0x7f, 0x90, 0xa0, 0xc0, 0xdc, 0xff]) assert.ok(!isMapMarker(b));
});

test('filters match topics as on the bus', () => {
  assert.ok(matches('a/+/c', 'a/b/c'));
  assert.ok(!matches('a/+/c', 'a/b/d'));
  assert.ok(!matches('a/+', 'a'));
  assert.ok(matches('a/#', 'a'));
  assert.ok(matches('a/#', 'a/b/c'));
  assert.ok(matches('#', 'x/y'));
  assert.ok(!matches('#', '$sys/x'));
  assert.ok(!matches('+/+/+', '$devices/a/b'));
  assert.ok(matches('$devices/+/+', '$devices/a/b'));
});

test('the backoff doubles up to its cap, with ±50 % jitter', () => {
  assert.equal(backoffDelay(1, 250, 5000, () => 0.5), 250);
  assert.equal(backoffDelay(3, 250, 5000, () => 0.5), 1000);
  assert.equal(backoffDelay(30, 250, 5000, () => 0.5), 5000);
  assert.equal(backoffDelay(1, 250, 5000, () => 0), 125);
  assert.equal(backoffDelay(1, 250, 5000, () => 0.999999), 375);
});

test('slider positions follow the dB taper of docs/protocol.md', () => {
  const fader = { type: 'float', min: -80, max: 10, step: 0.5, unit: 'dB', taper: 'dB' };
  const p0 = toPosition(0, fader);
  assert.ok(p0 > 0.6 && p0 < 0.75, `0 dB at ${p0}`);
  assert.ok(Math.abs(toPosition(-20, fader) - 0.2938988883034576) < 1e-9);
  assert.equal(fromPosition(p0, fader), 0);
  assert.equal(fromPosition(0, fader), -80);
  assert.equal(fromPosition(1, fader), 10);
  assert.equal(formatNumber(-12, fader), '-12.0 dB');
  const level = { type: 'int', min: 0, max: 100, step: 5, unit: '%' };
  assert.equal(fromPosition(0.52, level), 50);
  assert.equal(formatNumber(50, level), '50 %');
  assert.deepEqual(parseArgs('{"preset": 1}'), { preset: 1 });
  assert.equal(parseArgs('  '), null);
  assert.equal(parseArgs('hello'), 'hello');
});

// ---- the client against a scripted WebSocket -------------------------------------

class FakeSocket {
  static all = [];
  static waiters = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.sentWaiters = [];
    FakeSocket.all.push(this);
    const w = FakeSocket.waiters.shift();
    if (w) w(this);
  }

  static next() {
    const open = FakeSocket.all.find((s) => !s.taken);
    if (open) { open.taken = true; return Promise.resolve(open); }
    return new Promise((r) => FakeSocket.waiters.push((s) => { s.taken = true; r(s); }));
  }

  open() { this.readyState = 1; this.onopen?.(); }

  send(bytes) {
    const msg = decode(bytes);
    this.sent.push(msg);
    const w = this.sentWaiters.find((x) => x.pred(msg));
    if (w) { this.sentWaiters.splice(this.sentWaiters.indexOf(w), 1); w.resolve(msg); }
  }

  /** Resolves with the first message sent (already, or later) matching `pred`. */
  sentMatching(pred) {
    const m = this.sent.find(pred);
    if (m) return Promise.resolve(m);
    return new Promise((resolve) => this.sentWaiters.push({ pred, resolve }));
  }

  deliver(msg) { this.onmessage?.({ data: encode(msg).buffer }); }

  deliverRaw(bytes) { this.onmessage?.({ data: bytes.buffer }); }

  close(code = 1000) { this.drop(code); }

  drop(code = 1006) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code });
  }
}

function welcome(ws, fields = {}) {
  ws.deliver({
    t: 'welcome', v: 1, session: 7, epoch: 13525166889625202638n, seq: 100,
    heartbeat_ms: 5000, resumed: false, max_frame: 1048576, ...fields,
  });
}

test('the client resumes after a drop and resends what was unanswered', async () => {
  const bus = new Client({
    url: 'ws://bus/ws', WebSocket: FakeSocket, backoffMinMs: 1, backoffMaxMs: 2, pingMs: 60000,
  });
  const events = [];
  for (const name of ['connected', 'disconnected', 'reconnecting', 'resynced']) {
    bus.on(name, (d) => events.push([name, d]));
  }
  const telemetry = [];
  bus.onTelemetry = (b) => telemetry.push(b);
  const updates = [];
  const sub = bus.subscribe(['lab/#'], (ev) => updates.push(ev));
  const connected = bus.connect();

  const ws1 = await FakeSocket.next();
  ws1.open();
  const hello = ws1.sent[0];
  assert.equal(hello.t, 'hello');
  assert.equal(hello.resume, undefined);
  welcome(ws1);
  await connected;
  const subMsg = await ws1.sentMatching((m) => m.t === 'sub');
  ws1.deliver({ t: 'snapshot', id: subMsg.id, count: 1, resync: false });
  ws1.deliver({ t: 'update', seq: 90, topic: 'lab/x', value: 1, time: 1, retain: true });
  ws1.deliver({ t: 'synced', id: subMsg.id, seq: 101, count: 1, resync: false });
  await sub.ready;
  ws1.deliver({ t: 'update', seq: 105, topic: 'lab/x', value: 2, time: 2, retain: true });
  ws1.deliver({ t: 'update', seq: 106, topic: 'other/y', value: 3, time: 2, retain: true });
  ws1.deliverRaw(new Uint8Array([0x01, 0x02]));
  assert.deepEqual(telemetry.map((b) => [...b]), [[1, 2]], 'a non-map message is telemetry');
  assert.deepEqual(updates.filter((e) => e.type === 'update').map((e) => e.update.value), [1, 2]);

  // A command in flight when the link drops.
  const answer = bus.set('lab/x', 3);
  const set1 = await ws1.sentMatching((m) => m.t === 'set');
  ws1.drop();
  assert.equal(bus.state, 'reconnecting');

  const ws2 = await FakeSocket.next();
  ws2.open();
  const hello2 = ws2.sent[0];
  assert.equal(hello2.resume.session, 7);
  assert.equal(hello2.resume.epoch, 13525166889625202638n);
  assert.equal(hello2.resume.last_seq, 106, 'resume from the last sequence seen');
  welcome(ws2, { resumed: true, seq: 110 });
  const set2 = await ws2.sentMatching((m) => m.t === 'set');
  assert.equal(set2.id, set1.id, 'the command is resent with its id');
  assert.ok(!ws2.sent.some((m) => m.t === 'sub'), 'a resumed session keeps its subscriptions');
  ws2.deliver({ t: 'ok', id: set2.id, result: null });
  assert.equal(await answer, null);

  const failing = bus.set('lab/x', 99);
  const set3 = await ws2.sentMatching((m) => m.t === 'set' && m.value === 99);
  ws2.deliver({ t: 'error', id: set3.id, code: 'invalid_value', message: 'too big' });
  await assert.rejects(failing, (e) => e instanceof AvbusError && e.code === 'invalid_value' && e.message === 'too big');

  // The bus restarted: a new session, so the client subscribes again.
  ws2.drop();
  const ws3 = await FakeSocket.next();
  ws3.open();
  welcome(ws3, { session: 8, epoch: 5, resumed: false, seq: 3 });
  const resub = await ws3.sentMatching((m) => m.t === 'sub');
  assert.deepEqual(resub.filters, ['lab/#']);
  assert.ok(updates.some((e) => e.type === 'resync'), 'the subscriber is told to start over');
  const names = events.map(([n]) => n);
  assert.deepEqual(names.filter((n) => n !== 'reconnecting'),
    ['connected', 'disconnected', 'connected', 'disconnected', 'connected', 'resynced']);
  assert.ok(names.includes('reconnecting'));

  bus.close();
  assert.equal(bus.state, 'closed');
  await assert.rejects(bus.get('lab/x'), (e) => e.code === 'closed');
});
