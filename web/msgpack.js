// avbus — a small MessagePack encoder and decoder: exactly what the avbus protocol
// uses (nil, bool, integers up to 64 bits, float32/64, str, bin, array, map; ext is
// decoded, never encoded). No dependencies; runs in browsers and in Node.
//
// JavaScript mapping (docs/web.md):
//   nil <-> null (undefined encodes as nil; as a map value it is left out)
//   int  -> Number, or BigInt beyond ±(2^53 − 1); Number integers and BigInt -> int
//   float32/64 -> Number; Number with a fraction (or NaN, ±Infinity) -> float64
//   str <-> string; bin <-> Uint8Array; array <-> Array
//   map -> plain object when every key is a string, otherwise a Map
//   plain object / Map -> map; ext -> Ext {type, data}

/** Deepest nesting decoded, as on the bus (deeper input is refused). */
export const MAX_DEPTH = 64;

/** A MessagePack extension value (type number and raw bytes), as decoded. */
export class Ext {
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
}

/** A value that could not be decoded or encoded. */
export class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CodecError';
  }
}

/**
 * Whether a byte can start a MessagePack map (fixmap, map16, map32). Every avbus
 * control frame is a map; a binary WebSocket message starting otherwise is telemetry.
 */
export function isMapMarker(byte) {
  return (byte >= 0x80 && byte <= 0x8f) || byte === 0xde || byte === 0xdf;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  reserve(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v) { this.reserve(1); this.buf[this.pos++] = v; }
  u16(v) { this.reserve(2); this.view.setUint16(this.pos, v); this.pos += 2; }
  u32(v) { this.reserve(4); this.view.setUint32(this.pos, v); this.pos += 4; }
  bytes(b) { this.reserve(b.length); this.buf.set(b, this.pos); this.pos += b.length; }

  head(fix, fixMax, m8, m16, m32, n) {
    if (fix !== null && n <= fixMax) this.u8(fix | n);
    else if (m8 !== null && n < 0x100) { this.u8(m8); this.u8(n); }
    else if (n < 0x10000) { this.u8(m16); this.u16(n); }
    else if (n <= 0xffffffff) { this.u8(m32); this.u32(n); }
    else throw new CodecError(`length ${n} does not fit MessagePack`);
  }

  int(n) {
    if (n >= 0) {
      if (n < 0x80) this.u8(n);
      else if (n < 0x100) { this.u8(0xcc); this.u8(n); }
      else if (n < 0x10000) { this.u8(0xcd); this.u16(n); }
      else if (n < 0x100000000) { this.u8(0xce); this.u32(n); }
      else this.big(BigInt(n));
    } else if (n >= -32) this.u8(n & 0xff);
    else if (n >= -0x80) { this.u8(0xd0); this.reserve(1); this.view.setInt8(this.pos++, n); }
    else if (n >= -0x8000) { this.u8(0xd1); this.reserve(2); this.view.setInt16(this.pos, n); this.pos += 2; }
    else if (n >= -0x80000000) { this.u8(0xd2); this.reserve(4); this.view.setInt32(this.pos, n); this.pos += 4; }
    else this.big(BigInt(n));
  }

  big(n) {
    if (n >= 0n && n < 0x100000000n) return this.int(Number(n));
    if (n < 0n && n >= -0x80000000n) return this.int(Number(n));
    this.reserve(9);
    if (n >= 0n) {
      if (n > 0xffffffffffffffffn) throw new CodecError(`${n} does not fit 64 bits`);
      this.buf[this.pos] = 0xcf;
      this.view.setBigUint64(this.pos + 1, n);
    } else {
      if (n < -0x8000000000000000n) throw new CodecError(`${n} does not fit 64 bits`);
      this.buf[this.pos] = 0xd3;
      this.view.setBigInt64(this.pos + 1, n);
    }
    this.pos += 9;
  }

  float(n) {
    this.reserve(9);
    this.buf[this.pos] = 0xcb;
    this.view.setFloat64(this.pos + 1, n);
    this.pos += 9;
  }

  value(v, depth) {
    if (depth > MAX_DEPTH) throw new CodecError(`nested deeper than ${MAX_DEPTH}`);
    if (v === null || v === undefined) return this.u8(0xc0);
    switch (typeof v) {
      case 'boolean': return this.u8(v ? 0xc3 : 0xc2);
      case 'number':
        return Number.isSafeInteger(v) && !Object.is(v, -0) ? this.int(v) : this.float(v);
      case 'bigint': return this.big(v);
      case 'string': {
        const b = utf8Encoder.encode(v);
        this.head(0xa0, 31, 0xd9, 0xda, 0xdb, b.length);
        return this.bytes(b);
      }
      default: break;
    }
    if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
      const b = v instanceof Uint8Array ? v : new Uint8Array(v);
      this.head(null, 0, 0xc4, 0xc5, 0xc6, b.length);
      return this.bytes(b);
    }
    if (Array.isArray(v)) {
      this.head(0x90, 15, null, 0xdc, 0xdd, v.length);
      for (const item of v) this.value(item, depth + 1);
      return undefined;
    }
    if (v instanceof Map) {
      this.head(0x80, 15, null, 0xde, 0xdf, v.size);
      for (const [k, item] of v) { this.value(k, depth + 1); this.value(item, depth + 1); }
      return undefined;
    }
    if (typeof v === 'object') {
      const keys = Object.keys(v).filter((k) => v[k] !== undefined);
      this.head(0x80, 15, null, 0xde, 0xdf, keys.length);
      for (const k of keys) { this.value(k, depth + 1); this.value(v[k], depth + 1); }
      return undefined;
    }
    throw new CodecError(`cannot encode a ${typeof v}`);
  }
}

/** Encodes one value; returns its bytes. Throws CodecError for what has no encoding. */
export function encode(value) {
  const w = new Writer();
  w.value(value, 0);
  return w.buf.slice(0, w.pos);
}

class Reader {
  constructor(bytes) {
    this.buf = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  need(n) {
    if (this.pos + n > this.buf.length) throw new CodecError('truncated MessagePack');
  }

  u8() { this.need(1); return this.buf[this.pos++]; }
  u16() { this.need(2); const v = this.view.getUint16(this.pos); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.pos); this.pos += 4; return v; }
  take(n) { this.need(n); const b = this.buf.slice(this.pos, this.pos + n); this.pos += n; return b; }

  str(n) {
    this.need(n);
    const s = utf8Decoder.decode(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }

  big(signed) {
    this.need(8);
    const v = signed ? this.view.getBigInt64(this.pos) : this.view.getBigUint64(this.pos);
    this.pos += 8;
    const safe = v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER);
    return safe ? Number(v) : v;
  }

  array(n, depth) {
    // Each element takes at least one byte: a length beyond what is left is a lie.
    this.need(n);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }

  map(n, depth) {
    this.need(n * 2);
    const entries = [];
    let allStrings = true;
    for (let i = 0; i < n; i++) {
      const k = this.value(depth + 1);
      const v = this.value(depth + 1);
      if (typeof k !== 'string') allStrings = false;
      entries.push([k, v]);
    }
    if (!allStrings) return new Map(entries);
    const obj = {};
    for (const [k, v] of entries) {
      // defineProperty, so a key such as "__proto__" stays a plain key.
      Object.defineProperty(obj, k, { value: v, enumerable: true, writable: true, configurable: true });
    }
    return obj;
  }

  value(depth) {
    if (depth > MAX_DEPTH) throw new CodecError(`nested deeper than ${MAX_DEPTH}`);
    const b = this.u8();
    if (b < 0x80) return b;
    if (b <= 0x8f) return this.map(b & 0x0f, depth);
    if (b <= 0x9f) return this.array(b & 0x0f, depth);
    if (b <= 0xbf) return this.str(b & 0x1f);
    if (b >= 0xe0) return b - 0x100;
    let v;
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.take(this.u8());
      case 0xc5: return this.take(this.u16());
      case 0xc6: return this.take(this.u32());
      case 0xc7: { const n = this.u8(); return this.ext(n); }
      case 0xc8: { const n = this.u16(); return this.ext(n); }
      case 0xc9: { const n = this.u32(); return this.ext(n); }
      case 0xca: this.need(4); v = this.view.getFloat32(this.pos); this.pos += 4; return v;
      case 0xcb: this.need(8); v = this.view.getFloat64(this.pos); this.pos += 8; return v;
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: return this.big(false);
      case 0xd0: this.need(1); v = this.view.getInt8(this.pos); this.pos += 1; return v;
      case 0xd1: this.need(2); v = this.view.getInt16(this.pos); this.pos += 2; return v;
      case 0xd2: this.need(4); v = this.view.getInt32(this.pos); this.pos += 4; return v;
      case 0xd3: return this.big(true);
      case 0xd4: return this.ext(1);
      case 0xd5: return this.ext(2);
      case 0xd6: return this.ext(4);
      case 0xd7: return this.ext(8);
      case 0xd8: return this.ext(16);
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.u16());
      case 0xdb: return this.str(this.u32());
      case 0xdc: return this.array(this.u16(), depth);
      case 0xdd: return this.array(this.u32(), depth);
      case 0xde: return this.map(this.u16(), depth);
      case 0xdf: return this.map(this.u32(), depth);
      default: throw new CodecError(`0x${b.toString(16)} is not a MessagePack type`);
    }
  }

  ext(n) {
    this.need(1);
    const type = this.view.getInt8(this.pos);
    this.pos += 1;
    return new Ext(type, this.take(n));
  }
}

/**
 * Decodes exactly one value from `bytes` (Uint8Array or ArrayBuffer). Throws
 * CodecError on truncated, trailing or invalid input.
 */
export function decode(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const r = new Reader(b);
  const v = r.value(0);
  if (r.pos !== b.length) throw new CodecError(`${b.length - r.pos} bytes after the value`);
  return v;
}
