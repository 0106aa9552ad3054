#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""fake-ftvm - a stand-in for ftvm that ends migrations on cue, so that
ftd's handling of every outcome can be tested (tests/e2e/test_ftd_doubt.sh).

It speaks ftvm's command line (run, incoming) and control protocol
(status, quit, migrate with progress events, resolve), runs no guest, and
behaves as the environment says:

  FAKE_MIGRATE   source side, the outcome of "migrate":
                 ok | fail | in-doubt | vanish (exit without a reply)
  FAKE_INCOMING  destination side, what "ftvm incoming" does after it
                 printed where it listens: commit (runs the VM after
                 FAKE_DELAY s) | fail (exit 125 after FAKE_DELAY s) | hang
  FAKE_DELAY     seconds (default 1)
  FAKE_GO_FILE   if set, "migrate" ends only once this file exists
"""
import json
import os
import selectors
import signal
import socket
import sys
import time

args = sys.argv[1:]
mode = args[0] if args else ""


def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default


ctl_path = opt("--control")
delay = float(os.environ.get("FAKE_DELAY", "1"))
state = "incoming" if mode == "incoming" else "running"
started = time.monotonic()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def log(msg):
    print("ftvm: " + msg, file=sys.stderr, flush=True)


if mode not in ("run", "incoming") or not ctl_path:
    log("error: fake-ftvm supports run and incoming with --control")
    sys.exit(125)

sel = selectors.DefaultSelector()
if os.path.exists(ctl_path):
    os.unlink(ctl_path)
ctl = socket.socket(socket.AF_UNIX)
ctl.bind(ctl_path)
os.chmod(ctl_path, 0o600)
ctl.listen(8)
sel.register(ctl, selectors.EVENT_READ)

if mode == "incoming":
    host, _, _ = opt("--listen", ":0").rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    lsock.bind((host, 0))
    lsock.listen(1)
    print("incoming: listening on %s:%d" % (host, lsock.getsockname()[1]),
          flush=True)


def reply(conn, obj, req):
    if "id" in req:
        obj["id"] = req["id"]
    conn.sendall(json.dumps(obj).encode() + b"\n")


def finish(code):
    os.unlink(ctl_path)
    sys.exit(code)


def handle(conn, req):
    global state
    cmd = req.get("cmd")
    if cmd == "status":
        reply(conn, {"ok": True, "state": state, "exits": 0,
                     "hypercalls": 0}, req)
    elif cmd == "quit":
        reply(conn, {"ok": True}, req)
        finish(0)
    elif cmd == "migrate" and state == "running":
        how = os.environ.get("FAKE_MIGRATE", "ok")
        for r in range(2):
            reply(conn, {"event": "progress", "round": r, "sent": r << 20,
                         "remaining": 8 << 20, "rate": 100 << 20,
                         "eta_ms": 80, "elapsed_ms": 100 * r,
                         "throttle": 0}, req)
            time.sleep(0.2)
        go = os.environ.get("FAKE_GO_FILE")
        for _ in range(1200):             # the test says when (60 s at most)
            if not go or os.path.exists(go):
                break
            time.sleep(0.05)
        if how == "vanish":
            log("error: fake-ftvm vanishes mid-migration")
            finish(125)
        if how == "ok":
            reply(conn, {"ok": True, "total_ms": 420.5,
                         "downtime_ms": 12.5, "bytes": 9 << 20,
                         "rounds": 2, "pages": 2304, "final_pages": 12,
                         "throttle": 0}, req)
            finish(0)
        if how == "fail":
            reply(conn, {"ok": False, "error": "fake failure before the "
                         "stream", "state": "running"}, req)
            return
        state = "in-doubt"
        reply(conn, {"ok": False, "error": "the destination's confirmation "
                     "never came", "state": "in-doubt"}, req)
    elif cmd == "resolve" and state == "in-doubt":
        if req.get("moved"):
            reply(conn, {"ok": True, "state": "moved"}, req)
            finish(0)
        state = "running"
        reply(conn, {"ok": True, "state": "running"}, req)
    else:
        reply(conn, {"ok": False, "error": "fake-ftvm: not now: %s" % cmd},
              req)


bufs = {}
while True:
    if mode == "incoming" and state == "incoming" and \
            time.monotonic() - started > delay:
        how = os.environ.get("FAKE_INCOMING", "commit")
        if how == "commit":
            state = "running"
            log("info: fake incoming migration committed")
        elif how == "fail":
            log("error: incoming migration failed: fake failure")
            finish(125)
    for key, _ in sel.select(timeout=0.1):
        if key.fileobj is ctl:
            conn, _ = ctl.accept()
            bufs[conn] = b""
            sel.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        data = conn.recv(65536)
        if not data:
            sel.unregister(conn)
            conn.close()
            del bufs[conn]
            continue
        bufs[conn] += data
        while b"\n" in bufs[conn]:
            line, bufs[conn] = bufs[conn].split(b"\n", 1)
            if line.strip():
                handle(conn, json.loads(line))
