#!/usr/bin/env python3
"""gapprobe.py - measure how long a Redis-protocol server stops answering.

  gapprobe.py HOST PORT OUT

Sends PING on one connection every 2 ms until SIGTERM (a broken
connection is reopened at once).  Every silence longer than 50 ms is
appended to OUT as "START END" (wall-clock seconds, the last answer
before it and the first after it), so a test can find the gap that spans
a moment it knows (a host crash): END minus that moment is how long the
clients waited for an answer.
"""
import signal
import socket
import sys
import time

host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
last = time.time()
s = f = None
with open(out, 'a', buffering=1) as log:
    while not stop:
        try:
            if s is None:
                s = socket.create_connection((host, port), timeout=1)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                f = s.makefile('rb')
            s.sendall(b'*1\r\n$4\r\nPING\r\n')
            if f.readline() != b'+PONG\r\n':
                raise ConnectionError('bad answer')
        except (OSError, ConnectionError):
            if s is not None:
                s.close()
            s = f = None
            time.sleep(0.002)
            continue
        now = time.time()
        if now - last > 0.05:
            log.write('%.6f %.6f\n' % (last, now))
        last = now
        time.sleep(0.002)
