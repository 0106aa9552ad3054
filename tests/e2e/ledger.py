#!/usr/bin/env python3
"""ledger.py - a RESP client that proves no acknowledged write was lost.

  ledger.py write HOST PORT LEDGER [CONNS]   SET keys on CONNS connections
      until SIGTERM; every SET answered +OK is appended to LEDGER (key and
      value) before the next one is sent.  Prints "acked N errors E".
      Exit 0 only if no request failed (no error reply, no broken
      connection).
  ledger.py check HOST PORT LEDGER           GET every ledgered key; exit 0
      only if each holds its value.  Prints "checked N missing M wrong W".
"""
import os
import signal
import socket
import sys
import threading

stop = threading.Event()


def connect(host, port):
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile('rb')


def cmd(*args):
    out = b'*%d\r\n' % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b'$%d\r\n%s\r\n' % (len(a), a)
    return out


def reply(f):
    line = f.readline()
    if not line.endswith(b'\r\n'):
        raise ConnectionError('connection closed')
    t, rest = line[:1], line[1:-2]
    if t == b'$':
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError('connection closed in a bulk reply')
        return data[:-2]
    if t == b'-':
        raise RuntimeError(rest.decode(errors='replace'))
    return rest


def writer(host, port, conn, ledger, lock, stats):
    try:
        s, f = connect(host, port)
    except OSError as e:
        with lock:
            stats['errors'] += 1
            print('conn %d: connect: %s' % (conn, e), file=sys.stderr)
        return
    i = 0
    while not stop.is_set():
        key = 'ledger:%d:%d' % (conn, i)
        val = '%d-%d-%s' % (conn, i, os.urandom(6).hex())
        try:
            s.sendall(cmd('SET', key, val))
            r = reply(f)
        except (OSError, ConnectionError, RuntimeError) as e:
            with lock:
                stats['errors'] += 1
                print('conn %d: SET %s: %s' % (conn, key, e), file=sys.stderr)
            return
        if r != b'OK':
            with lock:
                stats['errors'] += 1
            return
        with lock:
            ledger.write('%s %s\n' % (key, val))
            ledger.flush()
            stats['acked'] += 1
        i += 1
    s.close()


def do_write(host, port, path, conns):
    lock = threading.Lock()
    stats = {'acked': 0, 'errors': 0}
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    with open(path, 'w') as ledger:
        ts = [threading.Thread(target=writer,
                               args=(host, port, c, ledger, lock, stats))
              for c in range(conns)]
        for t in ts:
            t.start()
        while any(t.is_alive() for t in ts) and not stop.is_set():
            stop.wait(0.2)
        stop.set()
        for t in ts:
            t.join()
    print('acked %d errors %d' % (stats['acked'], stats['errors']))
    return 0 if stats['errors'] == 0 and stats['acked'] > 0 else 1


def do_check(host, port, path):
    entries = [l.split() for l in open(path) if l.strip()]
    s, f = connect(host, port)
    missing = wrong = 0
    for k in range(0, len(entries), 256):
        chunk = entries[k:k + 256]
        s.sendall(b''.join(cmd('GET', key) for key, _ in chunk))
        for key, val in chunk:
            got = reply(f)
            if got is None:
                missing += 1
                if missing <= 5:
                    print('missing %s' % key, file=sys.stderr)
            elif got.decode() != val:
                wrong += 1
    print('checked %d missing %d wrong %d' % (len(entries), missing, wrong))
    return 0 if entries and not missing and not wrong else 1


def main():
    a = sys.argv[1:]
    if len(a) >= 4 and a[0] == 'write':
        return do_write(a[1], int(a[2]), a[3], int(a[4]) if len(a) > 4 else 4)
    if len(a) == 4 and a[0] == 'check':
        return do_check(a[1], int(a[2]), a[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
