#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""dirtier-check - verify the dirtier guest's memory pattern in a RAM dump.

usage: dirtier-check.py IMAGE (--log CONSOLE | --base ADDR --wss MIB)
                        [--fill zero|random|any] [--sample N]
       dirtier-check.py --self-test

IMAGE is a raw dump of guest RAM: file offset = guest-physical address.
The working set's base address, size and fill come from the dirtier's
"dirtier: ready ..." console line (--log reads the last one in a file) or
from --base/--wss/--fill.

The pattern (guest/dirtier/main.c is the reference; keep both in step):
page p (4 KiB, from 0) of the working set holds a counter in word 0 and
p ^ 0x5eed5eed5eed5eed in word 1 (little-endian u64).  All counters are
equal, or pages [0, k) hold c + 1 and pages [k, N) hold c.  Bytes 16..4095
are zero with --fill zero; with --fill random, words 2..511 are the
xorshift64* stream of guest/include/ft.h seeded with p.  Zero pages are
compared in full; random pages are regenerated in Python, which is slow, so
only --sample pages spread over the working set are (0: all of them).

Prints "dirtier-check: ok pages N counter C boundary K" (K = N when all
counters are equal) and exits 0; prints "dirtier-check: FAIL ..." lines
and exits 1 on a pattern violation; exits 2 on a usage or I/O error.
"""

import argparse
import mmap
import os
import re
import struct
import sys
import tempfile

PAGE = 4096
WORDS = PAGE // 8
ID = 0x5EED5EED5EED5EED
M64 = (1 << 64) - 1
MAX_REPORTS = 10
READY_RE = re.compile(
    r"dirtier: ready wss=(\d+) rate=\d+ fill=(zero|random) report=\d+ "
    r"base=0x([0-9a-f]+) pages=(\d+)")


def rng_words(seed, n):
    """n outputs of ft_rng_next() after ft_rng_seed(seed) (guest/include/ft.h)."""
    z = (seed + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    x = (z ^ (z >> 31)) or 0x9E3779B97F4A7C15
    out = []
    for _ in range(n):
        x ^= x >> 12
        x = (x ^ (x << 25)) & M64
        x ^= x >> 27
        out.append((x * 0x2545F4914F6CDD1D) & M64)
    return out


def random_page_tail(p):
    """Bytes 16..4095 of page p under --fill random."""
    return struct.pack("<%dQ" % (WORDS - 2), *rng_words(p, WORDS - 2))


class Failures:
    """Collects violations, printing the first MAX_REPORTS of them."""

    def __init__(self):
        self.count = 0

    def add(self, msg):
        self.count += 1
        if self.count <= MAX_REPORTS:
            print("dirtier-check: FAIL " + msg)


def check(buf, base, pages, fill, sample):
    """Verify the pattern of `pages` pages at `base` in `buf` (bytes-like).

    Returns (failures, counter, boundary)."""
    fails = Failures()
    ws = memoryview(buf)[base:base + pages * PAGE]
    words = ws.cast("Q")
    counters = words[0::WORDS].tolist()
    idents = words[1::WORDS].tolist()

    for p, ident in enumerate(idents):
        if ident != p ^ ID:
            fails.add("page %d identity expected 0x%x got 0x%x"
                      % (p, p ^ ID, ident))

    # Runs of equal counters: one run (all equal, k = N), or two runs
    # [0, k) == c + 1 and [k, N) == c.
    runs = []  # [start, end, value]
    for p, v in enumerate(counters):
        if runs and runs[-1][2] == v:
            runs[-1][1] = p + 1
        else:
            runs.append([p, p + 1, v])
    if len(runs) > 2 or (len(runs) == 2 and runs[0][2] != runs[1][2] + 1):
        fails.add("counters form %d runs, want c+1 then c: %s%s"
                  % (len(runs), " ".join("[%d,%d)=%d" % tuple(r)
                                         for r in runs[:MAX_REPORTS]),
                     " ..." if len(runs) > MAX_REPORTS else ""))
    c = runs[-1][2]
    k = runs[0][1] if len(runs) == 2 else pages

    if fill == "zero":
        zero = bytes(PAGE - 16)
        for p in range(pages):
            if ws[p * PAGE + 16:(p + 1) * PAGE] != zero:
                fails.add("page %d bytes 16..4095 not zero" % p)
    elif fill == "random":
        n = pages if sample == 0 else min(sample, pages)
        picks = sorted({i * (pages - 1) // max(n - 1, 1) for i in range(n)})
        for p in picks:
            if ws[p * PAGE + 16:(p + 1) * PAGE] != random_page_tail(p):
                fails.add("page %d random fill differs" % p)
    ws.release()
    words.release()
    return fails.count, c, k


def ready_line(path):
    """(wss, fill, base) from the last dirtier ready line in a console log."""
    with open(path, errors="replace") as f:
        found = READY_RE.findall(f.read())
    if not found:
        raise ValueError("no 'dirtier: ready' line in %s" % path)
    wss, fill, base, _pages = found[-1]
    return int(wss), fill, int(base, 16)


def run(args):
    if args.log:
        wss, fill, base = ready_line(args.log)
        if args.fill != "any":
            fill = args.fill
    else:
        if args.base is None or args.wss is None:
            raise ValueError("need --log, or both --base and --wss")
        wss, fill, base = args.wss, args.fill, args.base
    pages = wss * 256
    if wss <= 0 or base % PAGE:
        raise ValueError("bad working set: wss %d MiB at 0x%x" % (wss, base))
    with open(args.image, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if base + pages * PAGE > size:
            raise ValueError("image %s has %d bytes, working set ends at 0x%x"
                             % (args.image, size, base + pages * PAGE))
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            nfail, c, k = check(m, base, pages, fill, args.sample)
    if nfail:
        print("dirtier-check: FAIL %d problem(s) in %d pages" % (nfail, pages))
        return 1
    print("dirtier-check: ok pages %d counter %d boundary %d" % (pages, c, k))
    return 0


def make_image(path, base, pages, fill, counters, size=None):
    """Write a synthetic RAM image with the dirtier pattern."""
    buf = bytearray(size or base + pages * PAGE)
    for p in range(pages):
        off = base + p * PAGE
        struct.pack_into("<QQ", buf, off, counters[p], p ^ ID)
        if fill == "random":
            buf[off + 16:off + PAGE] = random_page_tail(p)
    with open(path, "wb") as f:
        f.write(buf)
    return buf


def self_test():
    """Run the checker on synthetic images; return 0 if every case passes."""
    base, pages = 0x400000, 256
    cases = []  # (name, expected exit, extra args, mutate(buf))

    def case(name, want, counters, fill="zero", mutate=None, args=()):
        cases.append((name, want, counters, fill, mutate, args))

    case("all equal", 0, [7] * pages)
    case("boundary", 0, [8] * 100 + [7] * 156)
    case("boundary at 1", 0, [1] + [0] * 255)
    case("fresh (all zero counters)", 0, [0] * pages)
    case("random fill, all sampled", 0, [3] * 10 + [2] * 246, "random",
         args=("--sample", "0"))
    case("two boundaries", 1, [8] * 50 + [7] * 50 + [8] * 156)
    case("step of two", 1, [9] * 100 + [7] * 156)
    case("counter going up", 1, [7] * 100 + [8] * 156)
    case("one stale page", 1, [8] * 100 + [7] * 156,
         mutate=lambda b: struct.pack_into("<Q", b, base + 50 * PAGE, 7))
    case("zeroed page", 1, [7] * pages,
         mutate=lambda b: b.__setitem__(
             slice(base + 9 * PAGE, base + 10 * PAGE), bytes(PAGE)))
    case("swapped pages", 1, [7] * pages,
         mutate=lambda b: b.__setitem__(
             slice(base + 3 * PAGE, base + 5 * PAGE),
             bytes(b[base + 4 * PAGE:base + 5 * PAGE]
                   + b[base + 3 * PAGE:base + 4 * PAGE])))
    case("dirty tail in zero fill", 1, [7] * pages,
         mutate=lambda b: b.__setitem__(base + 77 * PAGE + 4095, 1))
    case("flipped random byte", 1, [7] * pages, "random",
         mutate=lambda b: b.__setitem__(base + 255 * PAGE + 100,
                                        b[base + 255 * PAGE + 100] ^ 1),
         args=("--sample", "2"))
    case("image too short", 2, [7] * pages,
         mutate=lambda b: b.__delitem__(slice(len(b) - 1, None)))

    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        img = os.path.join(tmp, "ram")
        for name, want, counters, fill, mutate, extra in cases:
            buf = make_image(img, base, pages, fill, counters)
            if mutate:
                mutate(buf)
                with open(img, "wb") as f:
                    f.write(buf)
            argv = [img, "--base", hex(base), "--wss", "1", "--fill", fill,
                    *extra]
            got = main(argv)
            ok = got == want
            failed += not ok
            print("self-test: %-28s exit %d want %d %s"
                  % (name, got, want, "ok" if ok else "FAIL"))
        # The ready line as the guest prints it drives --log.
        log = os.path.join(tmp, "console")
        make_image(img, base, pages, "random", [5] * pages)
        with open(log, "w") as f:
            f.write("dirtier: ready wss=1 rate=0 fill=random report=1 "
                    "base=0x%x pages=%d\n" % (base, pages))
        got = main([img, "--log", log])
        failed += got != 0
        print("self-test: %-28s exit %d want 0 %s"
              % ("--log", got, "ok" if got == 0 else "FAIL"))
    # Known answers, from ft_rng_seed/ft_rng_next compiled as C.
    for seed, want in ((0, [0x7BBCB40D550682D0, 0xDE7FE413D00CC9FD]),
                       (12345, [0x47EDFD1CD809B6DC])):
        ok = rng_words(seed, len(want)) == want
        failed += not ok
        print("self-test: %-28s %s" % ("rng known answer %d" % seed,
                                       "ok" if ok else "FAIL"))
    print("self-test: %s" % ("FAILED %d" % failed if failed else "passed"))
    return 1 if failed else 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Verify the dirtier guest's memory pattern in a RAM dump.")
    ap.add_argument("image", nargs="?", help="raw RAM dump (offset = GPA)")
    ap.add_argument("--log", help="console log holding the 'ready' line")
    ap.add_argument("--base", type=lambda s: int(s, 0),
                    help="GPA of page 0 of the working set")
    ap.add_argument("--wss", type=int, help="working set size, MiB")
    ap.add_argument("--fill", choices=("zero", "random", "any"),
                    default="any", help="check bytes 16..4095 (default: "
                    "as the ready line says, else not at all)")
    ap.add_argument("--sample", type=int, default=64,
                    help="random pages to regenerate (0: all; default 64)")
    ap.add_argument("--self-test", action="store_true",
                    help="check the checker on synthetic images")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.image:
        ap.error("IMAGE is required")
    try:
        return run(args)
    except (OSError, ValueError) as e:
        print("dirtier-check: error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
