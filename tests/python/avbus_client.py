"""Minimal synchronous avbus client (protocol version 1), written from docs/protocol.md.

Standard library plus `msgpack` only.  Every socket read has a timeout: no call blocks
forever.  Frames that arrive while waiting for something else are kept, in order, in a
backlog and offered to later waits.  Bus `ping`s are answered with `pong` as they are
read and never returned to the caller.

    c = Client("127.0.0.1", 7420, name="py", role="tool")
    welcome = c.hello()
    snap, records, synced = c.sub(["room/#"])
    answer = c.set("room/dev/level", 55)     # the `ok` or `error` frame for that id
    c.bye()
    c.wait_closed()
"""

import socket
import struct
import time

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_TIMEOUT = 5.0


class AvbusError(Exception):
    """An `error` frame from the bus (raised only where a helper is asked to raise)."""

    def __init__(self, frame):
        self.frame = frame
        self.code = frame.get("code")
        self.message = frame.get("message", "")
        super().__init__("%s: %s" % (self.code, self.message))


class ProtocolError(Exception):
    """The bus sent something that is not a valid frame."""


class Closed(Exception):
    """The bus closed the connection (EOF or reset)."""


class Timeout(Exception):
    """Nothing matching arrived before the deadline."""


def encode(msg):
    """One frame: 4-byte big-endian length, then a MessagePack map with string keys."""
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ValueError("a frame is a map with a string 't'")
    body = msgpack.packb(msg, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def decode(body):
    msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError("frame body is not a map with a string 't': %r" % (msg,))
    return msg


class Client:
    def __init__(self, host, port, name="py", role="tool", timeout=DEFAULT_TIMEOUT):
        self.host = host
        self.port = int(port)
        self.name = name
        self.role = role
        self.timeout = timeout
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self._eof = False
        self.backlog = []          # frames read but not yet consumed, in arrival order
        self._cursor = None        # backlog index where the stream continues (see _stream_next)
        self._next_id = 1
        self.welcome = None
        self.last_seq = 0
        self.last_idless_error = None

    # ---- low level -------------------------------------------------------------

    def _deadline(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def send(self, msg):
        """Send one message (a dict with string keys)."""
        try:
            self.sock.sendall(encode(msg))
        except OSError as e:
            raise Closed("send failed: %s" % e) from e

    def _fill(self, n, deadline):
        """Make the receive buffer hold at least n bytes, or raise Timeout/Closed."""
        while len(self._buf) < n:
            if self._eof:
                raise Closed("connection closed by the bus")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("timed out waiting for data")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout("timed out waiting for data") from None
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as e:
                self._eof = True
                raise Closed("connection reset by the bus: %s" % e) from None
            if not chunk:
                self._eof = True
                raise Closed("connection closed by the bus")
            self._buf += chunk

    def read_raw(self, deadline):
        """Read the next frame from the socket (no backlog, no ping handling)."""
        self._fill(4, deadline)
        (length,) = struct.unpack(">I", bytes(self._buf[:4]))
        # The bus does not bound the frames it sends (slightly over max_frame is legal).
        self._fill(4 + length, deadline)
        body = bytes(self._buf[4:4 + length])
        del self._buf[:4 + length]
        return decode(body)

    def _read_frame(self, deadline):
        """Next frame from the socket; answers pings; tracks seq and id-less errors."""
        while True:
            f = self.read_raw(deadline)
            t = f["t"]
            if t == "ping":
                self.send({"t": "pong", "n": f.get("n", 0)})
                continue
            if t in ("update", "synced") and isinstance(f.get("seq"), int):
                self.last_seq = max(self.last_seq, f["seq"])
            if t == "error" and f.get("id") is None:
                self.last_idless_error = f
            return f

    def _stream_next(self, deadline):
        """The next frame in arrival order after the last one matched by wait_for."""
        if self._cursor is not None and self._cursor < len(self.backlog):
            return self.backlog.pop(self._cursor)
        self._cursor = None
        return self._read_frame(deadline)

    def next_frame(self, timeout=None):
        """The oldest unconsumed frame (backlog first, then the socket)."""
        if self.backlog:
            self._cursor = 0
            return self.backlog.pop(0)
        self._cursor = None
        return self._read_frame(self._deadline(timeout))

    def wait_for(self, pred, timeout=None, what="a frame"):
        """Return the first frame (backlog first) satisfying pred; others stay in the backlog."""
        for i, f in enumerate(self.backlog):
            if pred(f):
                del self.backlog[i]
                self._cursor = i
                return f
        self._cursor = None
        deadline = self._deadline(timeout)
        while True:
            try:
                f = self._read_frame(deadline)
            except Timeout:
                raise Timeout("timed out waiting for %s" % what) from None
            except Closed as e:
                extra = ""
                if self.last_idless_error is not None:
                    extra = " (last error without id: %r)" % (self.last_idless_error,)
                raise Closed("%s while waiting for %s%s" % (e, what, extra)) from None
            if pred(f):
                return f
            self.backlog.append(f)

    def wait_closed(self, timeout=None):
        """Read (and discard) frames until the bus closes the connection.

        Returns the discarded frames. Raises Timeout if the connection stays open."""
        deadline = self._deadline(timeout)
        seen = list(self.backlog)
        self.backlog.clear()
        while True:
            try:
                seen.append(self.read_raw(deadline))
            except Closed:
                return seen

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- handshake ---------------------------------------------------------------

    def hello(self, resume=None, credentials=None, timeout=None):
        """Send hello; return the welcome frame (raise AvbusError if refused)."""
        msg = {"t": "hello", "v": PROTOCOL_VERSION, "name": self.name, "role": self.role,
               "credentials": credentials}
        if resume is not None:
            msg["resume"] = resume
        self.send(msg)
        try:
            f = self.read_raw(self._deadline(timeout))
        except Timeout:
            raise Timeout("timed out waiting for welcome") from None
        if f["t"] == "error":
            raise AvbusError(f)
        if f["t"] != "welcome":
            raise ProtocolError("expected welcome, got %r" % (f,))
        self.welcome = f
        if isinstance(f.get("seq"), int):
            self.last_seq = f["seq"]
        return f

    # ---- requests ----------------------------------------------------------------

    def new_id(self):
        i = self._next_id
        self._next_id += 1
        return i

    def answer(self, req_id, timeout=None):
        """Wait for the ok / error / puback that answers request req_id."""
        return self.wait_for(
            lambda f: f["t"] in ("ok", "error", "puback") and f.get("id") == req_id,
            timeout, what="the answer to request %d" % req_id)

    def request(self, msg, timeout=None, check=False):
        """Send msg with a fresh id; return the answer frame.

        With check=True an `error` answer raises AvbusError."""
        msg = dict(msg)
        msg["id"] = self.new_id()
        self.send(msg)
        f = self.answer(msg["id"], timeout)
        if check and f["t"] == "error":
            raise AvbusError(f)
        return f

    def sub(self, filters, timeout=None):
        """Subscribe; return (snapshot, [update records], synced) for this id.

        Raises AvbusError if the bus refuses the subscription."""
        req_id = self.new_id()
        self.send({"t": "sub", "id": req_id, "filters": list(filters)})
        deadline = self._deadline(timeout)
        first = self.wait_for(
            lambda f: f["t"] in ("snapshot", "error") and f.get("id") == req_id,
            max(0.0, deadline - time.monotonic()), what="snapshot %d" % req_id)
        if first["t"] == "error":
            raise AvbusError(first)
        records = []
        while True:
            try:
                f = self._stream_next(deadline)
            except Timeout:
                raise Timeout("timed out waiting for synced %d" % req_id) from None
            if f["t"] == "synced" and f.get("id") == req_id:
                return first, records, f
            if f["t"] != "update":
                raise ProtocolError("unexpected frame inside snapshot %d: %r" % (req_id, f))
            records.append(f)

    def unsub(self, filters, timeout=None):
        return self.request({"t": "unsub", "filters": list(filters)}, timeout)

    def get(self, topic, timeout=None, check=False):
        """Return the answer frame; on `ok`, `result` is the stored update record."""
        return self.request({"t": "get", "topic": topic}, timeout, check)

    def set(self, topic, value, timeout_ms=None, timeout=None, check=False):
        msg = {"t": "set", "topic": topic, "value": value}
        if timeout_ms is not None:
            msg["timeout_ms"] = int(timeout_ms)
        if timeout is None and timeout_ms is not None:
            timeout = timeout_ms / 1000.0 + self.timeout
        return self.request(msg, timeout, check)

    def call(self, topic, args=None, timeout_ms=None, timeout=None, check=False):
        msg = {"t": "call", "topic": topic, "args": args}
        if timeout_ms is not None:
            msg["timeout_ms"] = int(timeout_ms)
        if timeout is None and timeout_ms is not None:
            timeout = timeout_ms / 1000.0 + self.timeout
        return self.request(msg, timeout, check)

    def pub(self, topic, value, retain=False, quality=None, ack=True, timeout=None,
            check=False):
        """Publish. With ack=True, send an id and return the puback/error frame."""
        msg = {"t": "pub", "topic": topic, "value": value, "retain": bool(retain)}
        if quality is not None:
            msg["quality"] = quality
        if not ack:
            self.send(msg)
            return None
        return self.request(msg, timeout, check)

    def declare(self, device, online=True, timeout=None, check=False):
        return self.request({"t": "declare", "device": device, "online": bool(online)},
                            timeout, check)

    def status(self, device, online, reason=None):
        msg = {"t": "status", "device": device, "online": bool(online)}
        if reason is not None:
            msg["reason"] = reason
        self.send(msg)

    def reply(self, cmd_id, result=None, error=None):
        """Answer a `cmd`: error is None or {"code": str, "message": str}."""
        msg = {"t": "reply", "id": cmd_id, "result": result}
        if error is not None:
            msg["error"] = error
        self.send(msg)

    def ping(self, n):
        self.send({"t": "ping", "n": int(n)})

    def bye(self, reason=None):
        msg = {"t": "bye"}
        if reason is not None:
            msg["reason"] = reason
        self.send(msg)


# ---- telemetry over UDP (docs/protocol.md §11) ---------------------------------------

MAGIC = b"\xa7\xb5"
T_BIND, T_PUBLISH, T_DATA, T_BOUND = 1, 2, 3, 4
RECORD = struct.Struct(">IIQBBHHH")  # alias seq time_us format flags offset total len


class Telemetry:
    """One UDP socket bound to a connection's telemetry token."""

    def __init__(self, host, welcome, timeout=DEFAULT_TIMEOUT):
        self.addr = (host, welcome["udp"])
        self.token = welcome["token"]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(self.addr)
        self.timeout = timeout
        self.dseq = 0

    def _header(self, kind):
        h = MAGIC + struct.pack(">BBIQ", 1, kind, self.dseq, self.token)
        self.dseq += 1
        return h

    def bind(self):
        """Send bind every 200 ms until the bus answers bound."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self.sock.send(self._header(T_BIND))
            self.sock.settimeout(0.2)
            try:
                d = self.sock.recv(2048)
            except socket.timeout:
                continue
            if d[:2] == MAGIC and d[3] == T_BOUND:
                return
        raise Timeout("no bound from the bus")

    def publish(self, alias, seq, values):
        """Publish one f32 value (or a list of them) for stream `alias`."""
        if not isinstance(values, list):
            values = [values]
        payload = struct.pack("<%df" % len(values), *values)
        rec = RECORD.pack(alias, seq, int(time.time() * 1e6), 1, 0, 0, len(values),
                          len(payload)) + payload
        self.sock.send(self._header(T_PUBLISH) + rec)

    def recv(self, timeout=None):
        """The next data datagram as (dseq, [records]); each record is a dict."""
        self.sock.settimeout(timeout or self.timeout)
        try:
            d = self.sock.recv(2048)
        except socket.timeout:
            raise Timeout("no telemetry datagram") from None
        if d[:2] != MAGIC or d[2] != 1 or d[3] != T_DATA:
            raise ProtocolError("not a data datagram: %r" % d[:8])
        dseq = struct.unpack(">I", d[4:8])[0]
        out, i = [], 8
        while i < len(d):
            alias, seq, t_us, fmt, flags, offset, total, n = RECORD.unpack_from(d, i)
            i += RECORD.size
            payload = d[i:i + n]
            i += n
            if fmt == 1:
                value = list(struct.unpack("<%df" % (n // 4), payload))
            else:
                value = msgpack.unpackb(payload, raw=False)
            out.append({"alias": alias, "seq": seq, "time_us": t_us, "stale": bool(flags & 1),
                        "offset": offset, "total": total, "value": value})
        return dseq, out

    def close(self):
        self.sock.close()
