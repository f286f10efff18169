// Unit tests of the browser code that need no browser: the MessagePack codec, topic
// matching, the backoff schedule, the slider taper, the telemetry datagram decoder,
// and the client's resume and telemetry logic against a scripted WebSocket. Run by
// tests/e2e/browser.rs with `node --test`.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { encode, decode, isMapMarker, Ext, CodecError, MAX_DEPTH } from '../../web/msgpack.js';
import {
  Client, AvbusError, matches, backoffDelay, decodeTelemetry, TELEMETRY,
} from '../../web/avbus.js';
import {
  toPosition, fromPosition, formatNumber, parseArgs, meterPosition, meterZones,
} from '../../web/controls.js';

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

test('meter bars: linear between min and max, colour zones per unit', () => {
  const dbfs = { type: 'meter', min: -60, max: 0, unit: 'dBFS', channels: 2 };
  assert.equal(meterPosition(-30, dbfs), 0.5);
  assert.equal(meterPosition(-90, dbfs), 0);
  assert.equal(meterPosition(6, dbfs), 1);
  assert.equal(meterPosition(NaN, dbfs), 0);
  assert.equal(meterPosition(1, { min: 1, max: 1 }), 0);
  assert.deepEqual(meterZones(dbfs), { warn: 0.7, hot: 0.9 }, '-18 and -6 dBFS');
  const x32 = { type: 'meter', min: -90, max: 18, unit: 'dBFS' };
  assert.ok(Math.abs(meterZones(x32).warn - 72 / 108) < 1e-12, 'zones stay at -18 dB above 0 dB');
  const low = { type: 'meter', min: -80, max: -20, unit: 'dB' };
  assert.deepEqual(meterZones(low), { warn: 0.7, hot: 0.9 }, 'below 0 dB: from the top');
  assert.deepEqual(meterZones({ type: 'meter', min: 0, max: 100, unit: '%' }), { warn: 0.7, hot: 0.9 });
  assert.equal(formatNumber(-12.3, dbfs), '-12.3 dBFS');
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

// ---- telemetry datagrams (docs/protocol.md §11.2) ---------------------------------

/** The §11.2 example: dseq 5; stream 3, value 12, one channel at 0.5. */
const EXAMPLE = 'a7b5010300000005' + '000000030000000c00060a24181e4000' + '0100000000010004' + '0000003f';
const T0 = 1_700_000_000_000_000;

/** One record, built by hand: f32 `values` (little-endian) or a raw `payload`. */
function rec({
  alias, seq, timeUs = T0, format = 1, flags = 0, offset = 0, total, values, payload, len,
}) {
  const body = payload ?? (() => {
    const b = new Uint8Array(values.length * 4);
    const v = new DataView(b.buffer);
    values.forEach((x, i) => v.setFloat32(4 * i, x, true));
    return b;
  })();
  const out = new Uint8Array(24 + body.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, alias);
  v.setUint32(4, seq);
  v.setBigUint64(8, BigInt(timeUs));
  out[16] = format;
  out[17] = flags;
  v.setUint16(18, offset);
  v.setUint16(20, total ?? (format === 1 ? offset + body.length / 4 : 0));
  v.setUint16(22, len ?? body.length);
  out.set(body, 24);
  return out;
}

/** A data datagram (type 3) with `records` back to back. */
function datagram(dseq, ...records) {
  const size = 8 + records.reduce((n, r) => n + r.length, 0);
  const out = new Uint8Array(size);
  out.set([0xa7, 0xb5, 1, 3]);
  new DataView(out.buffer).setUint32(4, dseq);
  let pos = 8;
  for (const r of records) { out.set(r, pos); pos += r.length; }
  return out;
}

test('the datagram example of docs/protocol.md §11.2, byte for byte', () => {
  const built = datagram(5, rec({ alias: 3, seq: 12, values: [0.5] }));
  assert.equal(hex(built), EXAMPLE, 'the test helpers build the documented bytes');
  const d = decodeTelemetry(unhex(EXAMPLE));
  assert.equal(d.error, null);
  assert.equal(d.type, TELEMETRY.DATA);
  assert.equal(d.dseq, 5);
  assert.equal(d.token, null);
  assert.deepEqual(d.records, [{
    alias: 3, seq: 12, timeUs: T0, format: 1, flags: 0, stale: false, offset: 0, total: 1, value: 0.5,
  }]);
  // From an ArrayBuffer, a DataView, and a view that does not start its buffer.
  assert.equal(decodeTelemetry(unhex(EXAMPLE).buffer).records[0].value, 0.5);
  const padded = new Uint8Array(3 + EXAMPLE.length / 2);
  padded.set(unhex(EXAMPLE), 3);
  assert.equal(decodeTelemetry(padded.subarray(3)).records[0].seq, 12);
  assert.equal(decodeTelemetry(new DataView(padded.buffer, 3)).records[0].alias, 3);
});

test('records: channels, chunks, the stale flag, MessagePack values, big counters', () => {
  const d = decodeTelemetry(datagram(0xfffffffe,
    rec({ alias: 1, seq: 7, values: [-12.5, -14] }),
    rec({ alias: 2, seq: 0xffffffff, offset: 290, total: 700, values: [1, 2, 3], flags: 1 }),
    rec({ alias: 0xffffffff, seq: 1, format: 0, payload: encode({ x: 'on', n: [1, 2] }) }),
    rec({ alias: 4, seq: 2, format: 0, payload: encode(-3.25), timeUs: 2 ** 52 + 1 }),
    rec({ alias: 5, seq: 3, values: [], total: 4 })));
  assert.equal(d.error, null);
  assert.equal(d.dseq, 0xfffffffe);
  const [a, b, c, e, f] = d.records;
  assert.deepEqual(a.value, [-12.5, -14], 'two channels: an array');
  assert.equal(a.total, 2);
  assert.deepEqual(b.value, [1, 2, 3], 'a part of a chunked stream: its own channels');
  assert.equal(b.offset, 290);
  assert.equal(b.total, 700);
  assert.equal(b.seq, 0xffffffff);
  assert.equal(b.stale, true);
  assert.equal(b.flags, 1);
  assert.equal(c.alias, 0xffffffff);
  assert.deepEqual(c.value, { x: 'on', n: [1, 2] });
  assert.equal(c.total, 0);
  assert.equal(e.value, -3.25);
  assert.equal(e.timeUs, 2 ** 52 + 1, 'time_us is exact as a Number');
  assert.deepEqual(f.value, [], 'an empty f32 record is valid');
  // f32 precision: the value is the f32's exact value.
  assert.equal(decodeTelemetry(datagram(0, rec({ alias: 1, seq: 1, values: [0.1] }))).records[0].value,
    Math.fround(0.1));
  // A header-only data datagram carries nothing.
  assert.deepEqual(decodeTelemetry(datagram(9)).records, []);
});

test('bind, bound and publish headers; the token is a BigInt', () => {
  const bind = unhex('a7b50101000000070123456789abcdef');
  const d = decodeTelemetry(bind);
  assert.equal(d.type, TELEMETRY.BIND);
  assert.equal(d.dseq, 7);
  assert.equal(d.token, 0x0123456789abcdefn);
  assert.equal(decodeTelemetry(unhex('a7b5010400000000')).type, TELEMETRY.BOUND);
  assert.equal(decodeTelemetry(unhex('a7b50102000000000123')).error, 'truncated', 'publish without its token');
  const publish = new Uint8Array([...unhex('a7b5010200000001ffffffffffffffff'), ...rec({ alias: 9, seq: 1, values: [1] })]);
  const p = decodeTelemetry(publish);
  assert.equal(p.token, 0xffffffffffffffffn);
  assert.equal(p.records[0].alias, 9);
});

test('bad headers are refused with their reason, never thrown', () => {
  const cases = [
    ['', 'truncated'], ['a7b50103000000', 'truncated'], ['a7b6010300000000', 'bad_magic'],
    ['85a174a3676574', 'truncated'], ['85a174a36765740000', 'bad_magic'], ['a7b5020300000000', 'bad_version'],
    ['a7b5010000000000', 'bad_type'], ['a7b5010500000000', 'bad_type'],
  ];
  for (const [h, why] of cases) {
    const d = decodeTelemetry(unhex(h));
    assert.equal(d.error, why, h);
    assert.equal(d.type, null, h);
    assert.deepEqual(d.records, [], h);
  }
  const big = new Uint8Array(1201);
  big.set(unhex(EXAMPLE));
  assert.equal(decodeTelemetry(big).error, 'oversized');
  for (const junk of [null, undefined, 'a7b5', 42, {}, [0xa7, 0xb5, 1, 3, 0, 0, 0, 0]]) {
    assert.equal(decodeTelemetry(junk).error, 'truncated', String(junk));
  }
});

test('reading stops at the first malformed record; the records before it stand', () => {
  const good = rec({ alias: 1, seq: 1, values: [0.25] });
  // [what, record, whether it can only be the datagram's last record]
  const bad = [
    ['a record header cut short', rec({ alias: 2, seq: 1, values: [1] }).subarray(0, 23), true],
    ['a payload one byte past the end',
      rec({ alias: 2, seq: 1, format: 0, payload: encode('abc'), len: 5 }), true],
    ['a payload longer than the datagram', rec({ alias: 2, seq: 1, values: [1], len: 0xffff }), false],
    ['an f32 payload of 3 bytes', rec({ alias: 2, seq: 1, format: 1, payload: new Uint8Array(3), total: 1 }), false],
    ['channels past total', rec({ alias: 2, seq: 1, values: [1, 2], total: 1 }), false],
    ['an offset past total', rec({ alias: 2, seq: 1, offset: 5, total: 5, values: [1] }), false],
    ['an unknown format', rec({ alias: 2, seq: 1, format: 2, payload: new Uint8Array(4) }), false],
  ];
  for (const [what, b, last] of bad) {
    const d = decodeTelemetry(last ? datagram(1, good, b) : datagram(1, good, b, good));
    assert.equal(d.error, 'bad_record', what);
    assert.equal(d.type, TELEMETRY.DATA, what);
    assert.deepEqual(d.records.map((r) => r.value), [0.25], `${what}: the record before it stands`);
  }
  // A MessagePack payload that does not decode is left out; its framing is sound.
  const d = decodeTelemetry(datagram(1, good, rec({ alias: 2, seq: 1, format: 0, payload: unhex('c1') }), good));
  assert.equal(d.error, null);
  assert.equal(d.badValues, 1);
  assert.equal(d.records.length, 2);
});

test('every truncation and random garbage decode without throwing', () => {
  const full = datagram(3,
    rec({ alias: 1, seq: 1, values: [0.5, 0.25] }),
    rec({ alias: 2, seq: 2, format: 0, payload: encode(['a', 1]) }),
    rec({ alias: 3, seq: 3, values: [1] }));
  for (let n = 0; n <= full.length; n++) {
    const d = decodeTelemetry(full.subarray(0, n));
    if (n < 8) { assert.equal(d.error, 'truncated'); continue; }
    const whole = [8, 8 + 32, 8 + 32 + 24 + 4, full.length];
    assert.equal(d.error, whole.includes(n) ? null : 'bad_record', `cut at ${n}`);
    assert.deepEqual(d.records.map((r) => r.alias), [1, 2, 3].slice(0, whole.filter((w) => w <= n).length - 1));
  }
  // A fixed pseudo-random sequence: garbage after a valid header, and garbage anywhere.
  let x = 0x2545f491;
  const rnd = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) / 2 ** 32; };
  for (let i = 0; i < 3000; i++) {
    const b = new Uint8Array(Math.floor(rnd() * 200));
    for (let j = 0; j < b.length; j++) b[j] = Math.floor(rnd() * 256);
    if (i % 2 === 0 && b.length >= 8) b.set([0xa7, 0xb5, 1, 3]);
    if (i % 4 === 0 && b.length >= 26) { b[24] = rnd() < 0.5 ? 0 : 1; b[30] = 0; }
    const d = decodeTelemetry(b);
    assert.ok(Array.isArray(d.records));
    for (const r of d.records) assert.ok(r.value !== undefined);
  }
});

test('telemetry subscriptions: values, aliases, loss, resubscribing after every reconnect', async () => {
  const bus = new Client({
    url: 'ws://bus/ws', WebSocket: FakeSocket, backoffMinMs: 1, backoffMaxMs: 2, pingMs: 60000,
  });
  const raw = [];
  bus.onTelemetry = (b) => raw.push(b.length);
  const got = [];
  // Asked before connecting: sent after the welcome.
  const pending = bus.telemetry('hall/#', 15, (v) => got.push(v));
  bus.connect();
  const ws1 = await FakeSocket.next();
  ws1.open();
  assert.ok(!ws1.sent.some((m) => m.t === 'tsub'), 'nothing is sent before the welcome');
  welcome(ws1);
  const tsub1 = await ws1.sentMatching((m) => m.t === 'tsub');
  assert.equal(tsub1.filter, 'hall/#');
  assert.equal(tsub1.hz, 15);

  // Data can overtake the answer: it is kept and delivered once the alias is known.
  ws1.deliverRaw(datagram(0, rec({ alias: 3, seq: 12, values: [0.5] })));
  assert.equal(got.length, 0);
  ws1.deliver({
    t: 'ok', id: tsub1.id,
    result: { sub: tsub1.id, streams: [{ alias: 3, topic: 'hall/mixer/level', channels: 1 }] },
  });
  const meters = await pending;
  assert.equal(meters.sub, tsub1.id);
  assert.deepEqual(meters.streams, [{ alias: 3, topic: 'hall/mixer/level', channels: 1 }]);
  assert.deepEqual(got, [{
    topic: 'hall/mixer/level', alias: 3, value: 0.5, offset: 0, total: 1, seq: 12, timeUs: T0, stale: false,
  }]);

  // A stream declared later; a datagram lost (dseq 1 → 3); values skipped (seq 12 → 15).
  ws1.deliver({ t: 'streams', sub: tsub1.id, streams: [{ alias: 8, topic: 'hall/console/meters', channels: 2 }] });
  assert.equal(meters.streams.length, 2);
  ws1.deliverRaw(datagram(1, rec({ alias: 8, seq: 1, values: [-10, -20] })));
  ws1.deliverRaw(datagram(3, rec({ alias: 3, seq: 15, values: [0.75] }), rec({ alias: 99, seq: 1, values: [1] })));
  // The bus's stale notice repeats the last value with the flag.
  ws1.deliverRaw(datagram(4, rec({ alias: 3, seq: 15, values: [0.75], flags: 1 })));
  assert.deepEqual(got.slice(1).map((v) => [v.topic, v.value, v.stale]), [
    ['hall/console/meters', [-10, -20], false],
    ['hall/mixer/level', 0.75, false],
    ['hall/mixer/level', 0.75, true],
  ], 'an unknown alias is ignored');
  let stats = meters.stats();
  assert.equal(stats.datagrams, 4);
  assert.equal(stats.datagramsLost, 1, 'dseq 1 → 3: one datagram lost');
  assert.equal(stats.streams['hall/mixer/level'].received, 2);
  assert.equal(stats.streams['hall/mixer/level'].skipped, 2, 'seq 12 → 15: two values skipped');
  assert.equal(stats.streams['hall/console/meters'].received, 1);
  assert.equal(raw.length, 4, 'onTelemetry still sees every telemetry message');

  // A drop and a resumed session: the subscription is sent again, same callback.
  ws1.drop();
  const ws2 = await FakeSocket.next();
  ws2.open();
  welcome(ws2, { resumed: true, seq: 110 });
  const tsub2 = await ws2.sentMatching((m) => m.t === 'tsub');
  assert.notEqual(tsub2.id, tsub1.id);
  assert.equal(tsub2.filter, 'hall/#');
  assert.equal(meters.sub, null, 'no subscription on the new connection until it is answered');
  ws2.deliver({
    t: 'ok', id: tsub2.id,
    result: { sub: tsub2.id, streams: [{ alias: 3, topic: 'hall/mixer/level', channels: 1 }] },
  });
  assert.equal(meters.sub, tsub2.id);
  // The new connection's datagrams start their own sequence: no loss counted.
  ws2.deliverRaw(datagram(0, rec({ alias: 3, seq: 16, values: [0.125] })));
  assert.equal(got.at(-1).value, 0.125);
  stats = meters.stats();
  assert.equal(stats.datagramsLost, 1);
  assert.equal(stats.streams['hall/mixer/level'].skipped, 2);

  // A second, overlapping subscription gets each value once, the first one too.
  const other = [];
  const p2 = bus.telemetry('hall/mixer/level', 5, (v) => other.push(v.value));
  const tsub3 = await ws2.sentMatching((m) => m.t === 'tsub' && m.id !== tsub2.id);
  ws2.deliver({
    t: 'ok', id: tsub3.id,
    result: { sub: tsub3.id, streams: [{ alias: 3, topic: 'hall/mixer/level', channels: 1 }] },
  });
  const narrow = await p2;
  assert.deepEqual(other, [0.125], 'the newest value is delivered right away');
  const before = got.length;
  ws2.deliverRaw(datagram(1, rec({ alias: 3, seq: 16, values: [0.125] })));
  ws2.deliverRaw(datagram(2, rec({ alias: 3, seq: 17, values: [0.5] })));
  ws2.deliverRaw(datagram(3, rec({ alias: 3, seq: 17, values: [0.5] })));
  assert.deepEqual(got.slice(before).map((v) => v.seq), [17]);
  assert.deepEqual(other, [0.125, 0.5]);

  // close() sends tunsub with the bus's id; nothing more arrives.
  narrow.close();
  const tunsub = await ws2.sentMatching((m) => m.t === 'tunsub');
  assert.equal(tunsub.sub, tsub3.id);
  ws2.deliverRaw(datagram(4, rec({ alias: 3, seq: 18, values: [0.25] })));
  assert.deepEqual(other, [0.125, 0.5]);
  assert.equal(got.at(-1).seq, 18);

  // A new session after a bus restart: sent again too; the old aliases are forgotten.
  ws2.drop();
  const ws3 = await FakeSocket.next();
  ws3.open();
  welcome(ws3, { session: 8, epoch: 5, resumed: false, seq: 3 });
  const tsub4 = await ws3.sentMatching((m) => m.t === 'tsub');
  assert.equal(tsub4.filter, 'hall/#');
  assert.equal(ws3.sent.filter((m) => m.t === 'tsub').length, 1, 'the closed one is not');
  const n = got.length;
  ws3.deliverRaw(datagram(0, rec({ alias: 3, seq: 1, values: [0.5] })));
  assert.equal(got.length, n, 'alias 3 means nothing on the new connection yet');
  ws3.deliver({
    t: 'ok', id: tsub4.id,
    result: { sub: tsub4.id, streams: [{ alias: 3, topic: 'hall/other/level', channels: 1 }] },
  });
  assert.equal(got.at(-1).topic, 'hall/other/level');

  // Refused: the promise rejects with the bus's error.
  const refused = bus.telemetry('hall/#/x', 15, () => {});
  const tsub5 = await ws3.sentMatching((m) => m.t === 'tsub' && m.filter === 'hall/#/x');
  ws3.deliver({ t: 'error', id: tsub5.id, code: 'invalid_filter', message: 'bad filter' });
  await assert.rejects(refused, (e) => e instanceof AvbusError && e.code === 'invalid_filter');

  bus.close();
  await assert.rejects(bus.telemetry('hall/#', 15, () => {}), (e) => e.code === 'closed');
});
