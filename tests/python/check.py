#!/usr/bin/env python3
"""Checks an avbus bus prepared by the Rust test harness, using only docs/protocol.md.

Usage: python3 tests/python/check.py HOST:PORT

Expects on the bus: retained `py/greeting` = "hello", and a connected adapter's device
`lab/dev` (power, level 0..100 %, mode, name, hours = 42 read-only, go trigger echoing its
args, move, slow).  Prints one line per passing check; exits non-zero with a message on
the first failure.  The whole run is bounded by GLOBAL_LIMIT seconds.
"""

import math
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from avbus_client import Client, Closed, Telemetry, Timeout  # noqa: E402

GLOBAL_LIMIT = 20.0
STEP = 5.0  # bound for any single wait


class CheckFailed(Exception):
    pass


def ensure(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def passed(label):
    print("ok - %s" % label, flush=True)


def expect_ok(frame, what):
    ensure(frame["t"] == "ok", "%s: expected ok, got %r" % (what, frame))
    return frame.get("result")


def expect_error(frame, code, what):
    ensure(frame["t"] == "error", "%s: expected error %s, got %r" % (what, code, frame))
    ensure(frame.get("code") == code,
           "%s: expected error code %r, got %r" % (what, code, frame))
    ensure(isinstance(frame.get("message"), str),
           "%s: error has no string message: %r" % (what, frame))
    return frame


def by_topic(records):
    out = {}
    for r in records:
        ensure(r.get("t") == "update", "snapshot holds a non-update frame: %r" % (r,))
        ensure(r.get("topic") not in out, "snapshot repeats topic %r" % r.get("topic"))
        out[r.get("topic")] = r
    return out


def check_handshake(host, port):
    c = Client(host, port, name="py-check", role="tool", timeout=STEP)
    w = c.hello()
    for key in ("v", "session", "epoch", "seq", "heartbeat_ms", "resumed"):
        ensure(key in w, "a: welcome lacks %r: %r" % (key, w))
    ensure(w["v"] == 1, "a: welcome.v is %r, expected 1" % (w["v"],))
    ensure(w["resumed"] is False, "a: welcome.resumed is %r, expected false" % (w["resumed"],))
    for key in ("session", "epoch", "seq", "heartbeat_ms"):
        ensure(isinstance(w[key], int) and not isinstance(w[key], bool) and w[key] >= 0,
               "a: welcome.%s is not an unsigned integer: %r" % (key, w[key]))
    passed("a: handshake (session %d, seq %d, heartbeat_ms %d)"
           % (w["session"], w["seq"], w["heartbeat_ms"]))
    return c


def check_snapshot(c):
    snap, records, synced = c.sub(["lab/dev/#", "py/#"])
    ensure(snap.get("count") == len(records),
           "b: snapshot.count %r but %d updates arrived" % (snap.get("count"), len(records)))
    ensure(synced.get("count") == len(records),
           "b: synced.count %r but %d updates arrived" % (synced.get("count"), len(records)))
    ensure(snap.get("resync") is False and synced.get("resync") is False,
           "b: resync should be false: %r / %r" % (snap, synced))
    topics = by_topic(records)
    g = topics.get("py/greeting")
    ensure(g is not None, "b: py/greeting missing from snapshot: %s" % sorted(topics))
    ensure(g.get("value") == "hello", "b: py/greeting value %r, expected 'hello'" % (g.get("value"),))
    ensure(g.get("retain") is True, "b: py/greeting not retained: %r" % (g,))
    ensure("quality" not in g, "b: py/greeting (not a control) carries quality: %r" % (g,))
    lvl = topics.get("lab/dev/level")
    ensure(lvl is not None, "b: lab/dev/level missing from snapshot: %s" % sorted(topics))
    ensure("quality" in lvl, "b: lab/dev/level record has no quality: %r" % (lvl,))
    hours = topics.get("lab/dev/hours")
    ensure(hours is not None, "b: lab/dev/hours missing from snapshot: %s" % sorted(topics))
    ensure(hours.get("value") == 42 and type(hours.get("value")) is int,
           "b: lab/dev/hours value %r, expected int 42" % (hours.get("value"),))
    ensure(hours.get("quality") == "ok", "b: lab/dev/hours quality %r, expected ok" % (hours.get("quality"),))
    online = topics.get("lab/dev/online")
    ensure(online is not None, "b: lab/dev/online missing from snapshot: %s" % sorted(topics))
    ensure(online.get("value") is True, "b: lab/dev/online value %r, expected true" % (online.get("value"),))
    ensure(online.get("quality") == "ok", "b: lab/dev/online quality %r" % (online.get("quality"),))
    ensure("lab/dev/go" not in topics, "b: trigger lab/dev/go has a record: %r" % (topics.get("lab/dev/go"),))
    passed("b: snapshot of lab/dev/# and py/# (%d records)" % len(records))


def check_set_level(c):
    # Forget any older level updates so only those caused by this set count.
    c.backlog[:] = [f for f in c.backlog
                    if not (f["t"] == "update" and f.get("topic") == "lab/dev/level")]
    req_id = c.new_id()
    c.send({"t": "set", "id": req_id, "topic": "lab/dev/level", "value": 55})
    answer = None
    updates = []
    deadline = time.monotonic() + STEP
    while answer is None or not updates or updates[-1].get("quality") == "pending":
        left = deadline - time.monotonic()
        if left <= 0:
            raise CheckFailed("c: timed out: answer %r, level updates %r" % (answer, updates))
        try:
            f = c.next_frame(left)
        except Timeout:
            continue
        if f["t"] in ("ok", "error") and f.get("id") == req_id:
            answer = f
        elif f["t"] == "update" and f.get("topic") == "lab/dev/level":
            updates.append(f)
        # other frames (other topics) are irrelevant here and dropped
    expect_ok(answer, "c: set lab/dev/level 55")
    last = updates[-1]
    ensure(last.get("value") == 55 and type(last.get("value")) is int,
           "c: last level update value %r, expected int 55: %r" % (last.get("value"), last))
    ensure(last.get("quality") == "ok", "c: last level update quality %r: %r" % (last.get("quality"), last))
    pos = last.get("position")
    ensure(isinstance(pos, float) and math.isclose(pos, 0.55, abs_tol=1e-9),
           "c: last level update position %r, expected 0.55" % (pos,))
    ensure(last.get("display") == "55 %", "c: last level update display %r, expected '55 %%'" % (last.get("display"),))
    ensure("target" not in last and "deadline" not in last,
           "c: non-pending record carries target/deadline: %r" % (last,))
    ensure(any(u.get("quality") == "pending" and u.get("target") == 55 for u in updates),
           "c: no pending record with target 55 among %r" % (updates,))
    passed("c: set lab/dev/level 55 -> ok, %d level updates, last 55 / ok / 0.55 / '55 %%'"
           % len(updates))


def check_errors(c):
    f = expect_error(c.set("lab/dev/level", 101), "invalid_value", "d: set level 101")
    msg = f["message"]
    ensure("0" in msg and "100" in msg,
           "d: invalid_value message does not mention the range 0..100: %r" % msg)
    passed("d: set level 101 -> invalid_value (%r)" % msg)
    expect_error(c.set("lab/dev/hours", 1), "not_writable", "d: set hours")
    passed("d: set hours -> not_writable")
    expect_error(c.set("lab/dev/nope", 1), "unknown_topic", "d: set nope")
    passed("d: set lab/dev/nope -> unknown_topic")
    args = {"speed": 2}
    result = expect_ok(c.call("lab/dev/go", args), "d: call go")
    ensure(result == args, "d: call go result %r, expected %r" % (result, args))
    passed("d: call lab/dev/go {speed: 2} -> ok with the args")


def check_get(c):
    rec = expect_ok(c.get("lab/dev/level"), "e: get lab/dev/level")
    ensure(isinstance(rec, dict), "e: get result is not a map: %r" % (rec,))
    ensure(rec.get("t") == "update", "e: get result lacks t: update: %r" % (rec,))
    ensure(rec.get("topic") == "lab/dev/level", "e: get result topic: %r" % (rec,))
    ensure(rec.get("value") == 55, "e: get lab/dev/level value %r, expected 55" % (rec.get("value"),))
    passed("e: get lab/dev/level -> 55")
    expect_error(c.get("py/absent/topic"), "unknown_topic", "e: get py/absent/topic")
    passed("e: get py/absent/topic -> unknown_topic")


def check_pub(c, host, port):
    f = c.pub("py/answer", 42, retain=True)
    ensure(f["t"] == "puback", "f: pub py/answer: expected puback, got %r" % (f,))
    ensure(isinstance(f.get("seq"), int) and f["seq"] > c.welcome["seq"],
           "f: puback.seq %r not greater than welcome.seq %r" % (f.get("seq"), c.welcome["seq"]))
    passed("f: pub py/answer 42 retained -> puback seq %d > %d" % (f["seq"], c.welcome["seq"]))
    c2 = Client(host, port, name="py-check-2", role="tool", timeout=STEP)
    try:
        c2.hello()
        _, records, _ = c2.sub(["py/answer"])
        topics = by_topic(records)
        ensure(set(topics) == {"py/answer"}, "f: second snapshot topics %s" % sorted(topics))
        v = topics["py/answer"].get("value")
        ensure(v == 42 and type(v) is int, "f: second client sees py/answer = %r" % (v,))
        c2.bye()
    finally:
        c2.close()
    passed("f: a second client's snapshot has py/answer = 42")


def check_unknown_message(host, port):
    c3 = Client(host, port, name="py-check-3", role="tool", timeout=STEP)
    try:
        c3.hello()
        c3.send({"t": "no_such_message", "id": 99})
        f = c3.wait_for(lambda f: f["t"] == "error", STEP, what="error unknown_message")
        ensure(f.get("code") == "unknown_message",
               "g: expected error unknown_message, got %r" % (f,))
        ensure(f.get("id") is None, "g: protocol error carries an id: %r" % (f,))
        try:
            rest = c3.wait_closed(STEP)
        except Timeout:
            raise CheckFailed("g: the bus did not close the connection after unknown_message")
        ensure(not rest, "g: frames after the protocol error: %r" % (rest,))
    finally:
        c3.close()
    passed("g: unknown message -> error unknown_message and close")


def check_bye(c):
    c.bye()
    try:
        c.wait_closed(STEP)
    except Timeout:
        raise CheckFailed("h: the bus did not close the connection after bye")
    c.close()
    passed("h: bye -> connection closed by the bus")


def check_telemetry(host, port):
    """An adapter publishes a meter over UDP; a panel subscribes at 20 Hz and gets it."""
    adapter = Client(host, port, name="py-meter", role="adapter")
    wa = adapter.hello()
    ensure(isinstance(wa.get("udp"), int) and isinstance(wa.get("token"), int),
           "welcome has udp and token: %r" % (wa,))
    device = {"room": "py", "name": "desk", "class": "console", "driver": "py",
              "controls": [{"name": "meters", "type": "meter", "min": 0.0, "max": 1.0,
                            "channels": 4}]}
    result = expect_ok(adapter.declare(device), "declare with a meter")
    alias = result["streams"]["meters"]
    ensure(isinstance(alias, int), "declare answer gives the meter's alias: %r" % result)
    up = Telemetry(host, wa)
    up.bind()

    panel = Client(host, port, name="py-panel", role="panel")
    wp = panel.hello()
    down = Telemetry(host, wp)
    down.bind()
    r = expect_ok(panel.request({"t": "tsub", "filter": "py/+/meters", "hz": 20.0}), "tsub")
    ensure([s["topic"] for s in r["streams"]] == ["py/desk/meters"],
           "tsub lists the stream: %r" % r)
    ensure(r["streams"][0]["alias"] == alias and r["streams"][0]["channels"] == 4,
           "same alias and channels: %r" % r)
    up.publish(alias, 1, [0.5, 0.25, 0.125, 1.0])
    dseq, records = down.recv(STEP)
    ensure(dseq == 0, "the first datagram to a client has dseq 0: %r" % dseq)
    ensure(len(records) == 1 and records[0]["alias"] == alias, "one record: %r" % records)
    rec = records[0]
    ensure(rec["value"] == [0.5, 0.25, 0.125, 1.0] and rec["total"] == 4 and rec["seq"] == 1,
           "the published value, byte for byte: %r" % rec)
    got = expect_ok(panel.get("py/desk/meters"), "get of a meter")
    ensure(got["value"] == [0.5, 0.25, 0.125, 1.0] and got["quality"] == "ok",
           "get gives the newest value: %r" % got)
    passed("t: meter published over UDP reaches a 20 Hz subscriber; get agrees")
    for c in (up, down):
        c.close()
    for c in (adapter, panel):
        c.close()


def on_alarm(signum, frame):
    raise CheckFailed("global time limit of %.0f s exceeded" % GLOBAL_LIMIT)


def main(argv):
    if len(argv) != 2 or ":" not in argv[1]:
        print("usage: check.py HOST:PORT", file=sys.stderr)
        return 2
    host, port = argv[1].rsplit(":", 1)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, GLOBAL_LIMIT)
    try:
        c = check_handshake(host, int(port))
        check_snapshot(c)
        check_set_level(c)
        check_errors(c)
        check_get(c)
        check_pub(c, host, int(port))
        check_unknown_message(host, int(port))
        check_telemetry(host, int(port))
        check_bye(c)
    except CheckFailed as e:
        print("FAIL: %s" % e, file=sys.stderr)
        return 1
    except (Timeout, Closed) as e:
        print("FAIL: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - any other error is a failure too
        print("FAIL: unexpected %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
