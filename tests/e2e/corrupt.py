#!/usr/bin/env python3
"""corrupt.py IN OUT ACTION - write a damaged copy of an ftengine stream.

Used by test_bad_stream.sh.  Record checksums are recomputed where the
point is to reach a check *behind* the checksum (an out-of-range frame, an
unknown record type); they are left stale where the checksum itself is
under test.  xxh64 comes from tools/ftstream-check, the independent
verifier, so the C code is never asked to agree with itself.
"""
import importlib.machinery
import importlib.util
import os
import struct
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_path = os.path.join(_here, '..', '..', 'tools', 'ftstream-check')
_loader = importlib.machinery.SourceFileLoader('ftstream_check', _path)
_spec = importlib.util.spec_from_loader('ftstream_check', _loader)
fsc = importlib.util.module_from_spec(_spec)
_loader.exec_module(fsc)

HDR = 40
TYPES = {'END': 0, 'DOMAIN': 1, 'PAGE_BATCH': 2, 'VCPU_X86': 3, 'DEVICE': 4}


def records(data):
    """[(offset, type, length)] for every record after the header."""
    out, off = [], HDR
    while off + 8 <= len(data):
        t, n = struct.unpack_from('<II', data, off)
        out.append((off, t, n))
        off += 8 + n + (-n % 8) + 8
        if t == 0:
            break
    return out


def framed(t, body):
    pad = b'\0' * (-len(body) % 8)
    rec = struct.pack('<II', t, len(body)) + body + pad
    return rec + struct.pack('<Q', fsc.xxh64(rec))


def reseal(data, off):
    """Recompute the checksum of the record at off."""
    t, n = struct.unpack_from('<II', data, off)
    end = off + 8 + n + (-n % 8)
    struct.pack_into('<Q', data, end, fsc.xxh64(bytes(data[off:end])))


def first(data, name):
    for off, t, n in records(data):
        if t == TYPES[name]:
            return off, n
    sys.exit('corrupt.py: no %s record' % name)


def main():
    src, dst, action = sys.argv[1:4]
    args = sys.argv[4:]
    data = bytearray(open(src, 'rb').read())
    if action == 'truncate':
        data = data[:int(args[0])]
    elif action == 'flip':            # a byte in a record, checksum stale
        off, n = first(data, args[0])
        data[off + 8 + n // 2] ^= 0x40  # END has no body: hits its checksum
    elif action == 'flip-header':
        data[12] ^= 0x01              # page_shift, header checksum stale
    elif action == 'oversize':        # huge length, never read or allocated
        off, _ = first(data, 'PAGE_BATCH')
        struct.pack_into('<I', data, off + 4, 0xfffffff0)
    elif action == 'pfn':             # frame beyond RAM, checksum valid
        off, _ = first(data, 'PAGE_BATCH')
        struct.pack_into('<Q', data, off + 16, 1 << 40)
        reseal(data, off)
    elif action == 'insert':          # a well-formed record after DOMAIN
        off, n = first(data, 'DOMAIN')
        at = off + 8 + n + (-n % 8) + 8
        data[at:at] = framed(int(args[0], 0), b'surprise')
    elif action == 'padding':         # NOTE with non-zero padding, valid sum
        off, n = first(data, 'DOMAIN')
        at = off + 8 + n + (-n % 8) + 8
        note = bytearray(framed(0x80000008, b'hi!'))
        note[8 + 3] = 0x01
        struct.pack_into('<Q', note, 16, fsc.xxh64(bytes(note[:16])))
        data[at:at] = note
    elif action == 'device-version':
        off, _ = first(data, 'DEVICE')
        struct.pack_into('<I', data, off + 8 + 8, 99)
        reseal(data, off)
    elif action == 'vcpu-reserved':
        off, n = first(data, 'VCPU_X86')
        struct.pack_into('<Q', data, off + 8 + 480, 7)  # reserved[0]
        reseal(data, off)
    elif action == 'domain-mem':
        off, _ = first(data, 'DOMAIN')
        struct.pack_into('<Q', data, off + 8, 12345)
        reseal(data, off)
    elif action == 'arch':            # "FTSTa64\n": another architecture
        data[4] = ord('a')
        struct.pack_into('<Q', data, 32, fsc.xxh64(bytes(data[:32])))
    elif action == 'version':
        struct.pack_into('<H', data, 8, 2)
        struct.pack_into('<Q', data, 32, fsc.xxh64(bytes(data[:32])))
    elif action == 'append':          # bytes after END
        data += framed(0, b'')
    elif action == 'drop':            # remove the first record of a type
        off, n = first(data, args[0])
        del data[off:off + 8 + n + (-n % 8) + 8]
    else:
        sys.exit('corrupt.py: unknown action ' + action)
    open(dst, 'wb').write(data)


if __name__ == '__main__':
    main()
