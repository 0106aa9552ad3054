#!/usr/bin/env bash
# tools/ftstream-check, the independent stream verifier, against the C
# reader: every stream the unit test builds (FT_STREAM_DUMP_DIR) must get
# the same verdict and, when bad, the same message from both; a few more
# corruptions are made here; the example in docs/stream-format.md must be
# byte for byte what the writer produces; and the verifier's LZ4 checks
# must never accept a block liblz4 cannot decode to one page.
. "$(dirname "$0")/lib.sh"
CHECK=$TOP/tools/ftstream-check
UNIT=$B/tests/unit/test_stream
[ -x "$UNIT" ] || fail "no $UNIT (make $UNIT)"
command -v python3 >/dev/null || skip "python3 not installed"

mkdir "$T/dump"
FT_STREAM_DUMP_DIR=$T/dump "$UNIT" >"$T/unit.log" 2>&1 ||
	fail "$UNIT failed: $(tail -5 "$T/unit.log")"

n=0
for f in "$T"/dump/good-*.ftst; do
	out=$("$CHECK" "$f") || fail "$f rejected: $out"
	n=$((n + 1))
done
[ $n -ge 4 ] || fail "only $n good streams dumped"
ok "$n valid streams accepted"

n=0
for f in "$T"/dump/bad-*.ftst; do
	want=$(cat "${f%.ftst}.expect")
	out=$("$CHECK" "$f"); rc=$?
	[ $rc -eq 1 ] || fail "$f: exit $rc, expected 1: $out"
	[[ $out == *": invalid: $want ["* ]] ||
		fail "$f: verifier and C reader disagree:
  verifier: $out
  C reader: $want"
	n=$((n + 1))
done
[ $n -ge 50 ] || fail "only $n bad streams dumped"
ok "$n invalid streams rejected with the C reader's message"

# XOR pages: the verifier rebuilds the same guest RAM as the C reader.
n=0
for img in "$T"/dump/good-*.image; do
	"$CHECK" --image "$T/rebuilt" "${img%.image}.ftst" >/dev/null || fail "${img%.image}.ftst rejected"
	cmp -s "$T/rebuilt" "$img" || fail "$img: verifier and C reader rebuild different guest RAM"
	n=$((n + 1))
done
[ $n -ge 5 ] || fail "only $n images"
ok "$n XOR streams rebuilt to the C reader's guest RAM"

# mutate SRC DST PYTHON-EXPR: DST = SRC's bytes d, modified in place by
# the expression.
mutate() {
	python3 - "$1" "$2" "$3" <<'PY'
import sys
d = bytearray(open(sys.argv[1], 'rb').read())
exec(sys.argv[3])
open(sys.argv[2], 'wb').write(d)
PY
}
FULL=$T/dump/good-full-none.ftst
# Flip a byte in the first page (random, raw) of the second of the two
# 32-page batches, record #4.
B1=$("$CHECK" -v "$FULL" | sed -n 's/^  record #4 (PAGE_BATCH) at offset \([0-9]*\),.*/\1/p')
[ -n "$B1" ] || fail "no record #4 (PAGE_BATCH) in $FULL"
mutate "$FULL" "$T/flip" "d[$B1 + 8 + 8 + 32 * 16 + 100] ^= 4"
expect_fail 1 "record #4 \(PAGE_BATCH\) at offset $B1: checksum mismatch" \
	"$CHECK" "$T/flip"
expect_fail 0 "checksums: not verified" "$CHECK" --no-checksum "$T/flip"
expect_fail 0 "page batches 1 in 2 \(1 of 2\)" "$CHECK" --sample 2 "$T/flip"
mutate "$FULL" "$T/cut" "del d[len(d) // 2:]"
expect_fail 1 "stream ends inside the record \(" "$CHECK" "$T/cut"
mutate "$FULL" "$T/tail" "d += bytes(16)"
expect_fail 1 "record #10 \(END\) at offset [0-9]+: record after END" \
	"$CHECK" "$T/tail"
expect_fail 1 "not an ftengine stream" "$CHECK" "$UNIT"
expect_fail 2 "No such file" "$CHECK" "$T/nonexistent"
expect_fail 0 "records: 10 \(DOMAIN 1, PAGE_BATCH 2, VCPU_X86 2, DEVICE 2, NOTE 1, END 1; unknown optional skipped: 1\)" \
	"$CHECK" - < "$FULL"

# The worked example in the spec is what the writer writes today.
python3 - "$TOP/docs/stream-format.md" "$T/dump/good-example.ftst" <<'PY' ||
import re, sys
doc = open(sys.argv[1]).read()
block = doc.split('## EXAMPLE', 1)[1].split('```\n', 2)[1]
out, prev, repeat = bytearray(), None, False
for line in block.splitlines():
    if line == '*':
        repeat = True
        continue
    m = re.match(r'([0-9a-f]{8})((?:\s+[0-9a-f]{2}){0,16})', line)
    off = int(m.group(1), 16)
    while repeat and len(out) < off:
        out += prev
    repeat = False
    prev = bytes(int(x, 16) for x in m.group(2).split())
    out += prev
sys.exit(0 if bytes(out) == open(sys.argv[2], 'rb').read() else 1)
PY
	fail "docs/stream-format.md EXAMPLE differs from the writer's output"
ok "spec example matches the writer"

# Differential: blocks the verifier's LZ4 checks accept, liblz4 decodes
# to exactly one page.
python3 - "$CHECK" <<'PY' || fail "verifier LZ4 checks accept what liblz4 rejects"
import ctypes, ctypes.util, importlib.machinery, importlib.util, random, sys
name = ctypes.util.find_library('lz4')
if not name:
    print('liblz4 not found: differential check skipped')
    sys.exit(0)
lz = ctypes.CDLL(name)
loader = importlib.machinery.SourceFileLoader('fc', sys.argv[1])
spec = importlib.util.spec_from_loader('fc', loader)
fc = importlib.util.module_from_spec(spec)
loader.exec_module(fc)
rnd = random.Random(1)
out = ctypes.create_string_buffer(4096)
dst = ctypes.create_string_buffer(4096)
accepted = 0
for _ in range(3000):
    page = b''  # runs of one byte and of random bytes: compressible
    while len(page) < 4096:
        k = rnd.randrange(1, 64)
        page += rnd.randbytes(k) if rnd.random() < 0.3 else bytes([rnd.randrange(4)]) * k
    n = lz.LZ4_compress_default(page[:4096], dst, 4096, 4096)
    blk = bytearray(dst.raw[:n])
    for _ in range(rnd.randrange(3)):  # mutate 0..2 bytes
        blk[rnd.randrange(len(blk))] = rnd.randrange(256)
    verdict, _ = fc.lz4_check(blk, 0, len(blk))
    if verdict == fc.LZ4_OK:
        accepted += 1
        got = lz.LZ4_decompress_safe(bytes(blk), out, len(blk), 4096)
        if got != 4096:
            print('accepted block liblz4 rejects:', bytes(blk).hex())
            sys.exit(1)
print('%d blocks accepted, all decoded by liblz4' % accepted)
PY
ok "LZ4 checks agree with liblz4"
