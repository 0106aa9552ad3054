#!/usr/bin/env python3
"""ckptproxy.py LISTEN_IP PORTFILE UPSTREAM_HOST:PORT CMDFILE LOGFILE

A TCP relay between a protected ftvm (the primary, `ftvm ctl protect`)
and its `ftvm backup` that follows the record framing of the checkpoint
stream (docs/stream-format.md: a 40-byte header, then records of
{u32 type, u32 length, body, zero pad to 8, u64 xxh64}) in the primary's
direction, and damages an epoch on command.  Every connection it accepts
gets its own upstream connection (a resync is a new connection); the
backup's direction (SYNC answers, acks, ERR) is relayed untouched.  Writes
the port it listens on to PORTFILE.

A command is one line in CMDFILE: the proxy takes it and removes the file
(write a temporary file and rename it).  Commands act on the epochs
(CKPT_BEGIN .. CKPT_END) that follow, never on the pre-copy:

  flip          flip one byte of the page data of the next PAGE_BATCH in
                an epoch (its checksum left stale)
  cut           forward the next epoch's CKPT_BEGIN, half of its other
                records and half of the record after them, then close both
                connections (a truncated epoch)
  stall MARKER  hold the next epoch E whole (forward none of it: the
                primary waits for the ack and its guest runs on) until the
                command `release`; then forward E, and of epoch E+1 only
                CKPT_BEGIN and the records up to the first DISK_WRITE that
                contains the bytes MARKER (or half of them if none does);
                forward nothing after that (the primary gets no ack), and
                when the primary's side closes (it died), close the
                backup's side: the backup saw a partial epoch
  release       see stall

Events are appended to LOGFILE, one line each (the tests wait for them):

  conn N: open
  conn N: flipped epoch E record #R (PAGE_BATCH) body byte B
  conn N: cut epoch E after K of M records and H of L bytes of the next
  conn N: holding epoch E (M records)
  conn N: released epoch E
  conn N: stalled epoch E after K of M records; marker in record #R
          (or: marker not found)
  conn N: primary closed while stalled; closing the backup's side
  conn N: closed
"""
import os
import socket
import struct
import sys
import threading
import time

HDR = 40
REC_END, REC_PAGE_BATCH, REC_CKPT_BEGIN, REC_CKPT_END, REC_DISK_WRITE = \
    0, 2, 5, 6, 7

log_lock = threading.Lock()
cmd_lock = threading.Lock()
cmd_path = None
log_path = None
pending = []  # commands taken from CMDFILE, oldest first


def log(msg):
    with log_lock:
        with open(log_path, 'a') as f:
            f.write(msg + '\n')


def poll_cmd():
    """Take CMDFILE's command into `pending`, if there is one."""
    with cmd_lock:
        try:
            with open(cmd_path) as f:
                line = f.read().strip()
            os.unlink(cmd_path)
        except OSError:
            return
        if line:
            pending.append(line.split(None, 1))


def peek_cmd(names):
    """The oldest pending command if its name is in `names`, else None."""
    poll_cmd()
    with cmd_lock:
        if pending and pending[0][0] in names:
            return pending[0]
    return None


def drop_cmd():
    with cmd_lock:
        pending.pop(0)


def recv_exact(s, n):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = s.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError('the stream ended after %d of %d bytes' % (got, n))
        got += k
    return bytes(buf)


def read_record(s):
    """(type, bytes of the whole record)."""
    h = recv_exact(s, 8)
    t, n = struct.unpack('<II', h)
    return t, h + recv_exact(s, n + (-n % 8) + 8)


def epoch_of(rec):
    return struct.unpack_from('<Q', rec, 8)[0]


def shut(s, how):
    try:
        s.shutdown(how)
    except OSError:
        pass


def pump(src, dst):
    """The backup's direction, verbatim."""
    try:
        while True:
            buf = src.recv(1 << 16)
            if not buf:
                break
            dst.sendall(buf)
    except OSError:
        pass
    shut(dst, socket.SHUT_WR)
    shut(src, socket.SHUT_RD)


def read_epoch(a, begin):
    """The records of the epoch that `begin` opened, CKPT_END included."""
    recs = [(REC_CKPT_BEGIN, begin)]
    while recs[-1][0] != REC_CKPT_END:
        recs.append(read_record(a))
    return recs


def relay(n, a, b):
    """The primary's direction: record by record, with the commands."""
    b.sendall(recv_exact(a, HDR))
    index = 0     # record number in the stream
    in_epoch, cur_epoch = False, None
    while True:
        t, rec = read_record(a)
        if t == REC_CKPT_BEGIN:
            in_epoch, cur_epoch = True, epoch_of(rec)
            cmd = peek_cmd(('cut', 'stall'))
            if cmd and cmd[0] == 'cut':
                drop_cmd()
                recs = read_epoch(a, rec)
                inner = len(recs) - 2
                k = max(1, inner // 2)
                nxt = recs[1 + k][1]
                h = len(nxt) // 2
                b.sendall(b''.join(r for _, r in recs[:1 + k]) + nxt[:h])
                log('conn %d: cut epoch %d after %d of %d records and %d '
                    'of %d bytes of the next' %
                    (n, epoch_of(rec), k, inner, h, len(nxt)))
                return 'cut'
            if cmd and cmd[0] == 'stall':
                drop_cmd()
                marker = cmd[1].encode() if len(cmd) > 1 else None
                recs = read_epoch(a, rec)
                log('conn %d: holding epoch %d (%d records)' %
                    (n, epoch_of(rec), len(recs)))
                while not peek_cmd(('release',)):
                    time.sleep(0.02)
                drop_cmd()
                b.sendall(b''.join(r for _, r in recs))
                log('conn %d: released epoch %d' % (n, epoch_of(rec)))
                index += len(recs)
                t, rec = read_record(a)
                if t != REC_CKPT_BEGIN:
                    raise ValueError('record type %d after an epoch' % t)
                recs = read_epoch(a, rec)
                inner = len(recs) - 2
                found = None
                for i, (rt, r) in enumerate(recs):
                    if rt == REC_DISK_WRITE and marker and marker in r:
                        found = i
                        break
                k = found if found is not None else max(1, inner // 2)
                b.sendall(b''.join(r for _, r in recs[:1 + k]))
                log('conn %d: stalled epoch %d after %d of %d records; %s' %
                    (n, epoch_of(rec), k, inner,
                     'marker in record #%d (DISK_WRITE)' % (index + found)
                     if found is not None else 'marker not found'))
                # Forward nothing more; read until the primary is gone.
                try:
                    while a.recv(1 << 16):
                        pass
                except OSError:
                    pass
                log('conn %d: primary closed while stalled; closing the '
                    "backup's side" % n)
                return 'stall'
        elif t == REC_CKPT_END:
            in_epoch = False
        elif t == REC_PAGE_BATCH and in_epoch and peek_cmd(('flip',)):
            drop_cmd()
            count = struct.unpack_from('<I', rec, 8)[0]
            length = struct.unpack_from('<I', rec, 4)[0]
            data = 8 + 16 * count   # body offset of the page data
            at = (data + length) // 2 if length > data else length // 2
            b_ = bytearray(rec)
            b_[8 + at] ^= 0x20
            rec = bytes(b_)
            log('conn %d: flipped epoch %d record #%d (PAGE_BATCH) body '
                'byte %d' % (n, cur_epoch, index, at))
        b.sendall(rec)
        index += 1
        if t == REC_END:
            break
    while True:
        buf = a.recv(1 << 16)
        if not buf:
            return 'end'
        b.sendall(buf)


def handle(n, a, up):
    log('conn %d: open' % n)
    try:
        b = socket.create_connection(up)
    except OSError as e:
        log('conn %d: cannot connect upstream: %s' % (n, e))
        a.close()
        return
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=pump, args=(b, a), daemon=True)
    back.start()
    try:
        how = relay(n, a, b)
    except (OSError, EOFError, ValueError) as e:
        how = 'error: %s' % e
    if how == 'cut':
        shut(a, socket.SHUT_RDWR)
        shut(b, socket.SHUT_RDWR)
    else:
        shut(b, socket.SHUT_WR)
        shut(a, socket.SHUT_RD)
    back.join()
    a.close()
    b.close()
    log('conn %d: closed (%s)' % (n, how))


def main():
    global cmd_path, log_path
    ip, portfile, up, cmd_path, log_path = sys.argv[1:6]
    uh, up_port = up.rsplit(':', 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, 0))
    ls.listen(4)
    with open(portfile + '.tmp', 'w') as f:
        f.write('%d\n' % ls.getsockname()[1])
    os.rename(portfile + '.tmp', portfile)
    n = 0
    while True:
        a, _ = ls.accept()
        n += 1
        threading.Thread(target=handle, args=(n, a, (uh, int(up_port))),
                         daemon=True).start()


if __name__ == '__main__':
    main()
