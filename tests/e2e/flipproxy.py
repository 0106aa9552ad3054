#!/usr/bin/env python3
"""flipproxy.py LISTEN_IP PORTFILE UPSTREAM_HOST:PORT OFFSET

Relay one TCP connection to UPSTREAM, flipping one bit of the byte at
OFFSET of the client-to-upstream direction.  Writes the port it listens on
to PORTFILE.  Exits when both directions are done.
"""
import socket
import sys
import threading


def pump(src, dst, flip_at):
    off = 0
    try:
        while True:
            buf = src.recv(1 << 16)
            if not buf:
                break
            if flip_at is not None and off <= flip_at < off + len(buf):
                b = bytearray(buf)
                b[flip_at - off] ^= 0x10
                buf = bytes(b)
            off += len(buf)
            dst.sendall(buf)
    except OSError:
        pass
    for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:
            s.shutdown(how)
        except OSError:
            pass


def main():
    ip, portfile, up, offset = sys.argv[1:5]
    uh, up_port = up.rsplit(':', 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, 0))
    ls.listen(1)
    with open(portfile, 'w') as f:
        f.write('%d\n' % ls.getsockname()[1])
    c, _ = ls.accept()
    u = socket.create_connection((uh, int(up_port)))
    t = threading.Thread(target=pump, args=(u, c, None))
    t.start()
    pump(c, u, int(offset))
    t.join()


if __name__ == '__main__':
    main()
