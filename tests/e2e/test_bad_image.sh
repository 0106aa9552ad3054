#!/usr/bin/env bash
# Garbage, truncated and subtly broken guest images, and bad --mem values:
# each is refused with exit 125 and its own message; nothing crashes.
. "$(dirname "$0")/lib.sh"
need_kvm
HELLO=$GUEST_DIR/hello.elf
[ -f "$HELLO" ] || fail "no $HELLO (make guests)"

head -c 4096 /dev/urandom > "$T/garbage"
: > "$T/empty"
mkdir "$T/dir"
# patch FILE OFFSET FORMAT VALUE: overwrite a little-endian field of a copy
patch() {
	cp "$HELLO" "$T/$1"
	python3 - "$T/$1" "$2" "$3" "$4" <<'PY'
import struct, sys
path, off, fmt, val = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4], 0)
data = bytearray(open(path, 'rb').read())
eh_phoff = struct.unpack_from('<Q', data, 32)[0]
# offsets: "e:N" = ELF header offset N, "p:N" = first PT_LOAD phdr offset N
kind, n = off.split(':')
n = int(n)
if kind == 'p':
    phnum = struct.unpack_from('<H', data, 56)[0]
    for i in range(phnum):
        base = eh_phoff + 56 * i
        if struct.unpack_from('<I', data, base)[0] == 1:
            n += base
            break
struct.pack_into('<' + fmt, data, n, val)
open(path, 'wb').write(data)
PY
}
patch badmach e:18 H 0x3e00          # e_machine
patch badtype e:16 H 3               # ET_DYN
patch badphoff e:32 Q 0x7fffffff0000 # e_phoff beyond the file
patch badpaddr p:24 Q 0x7ffff0000000 # p_paddr beyond RAM
patch lowpaddr p:24 Q 0x1000         # p_paddr into the system area
patch wrapfile p:8 Q 0xfffffffffffff000 # p_offset + filesz wraps
patch badentry e:24 Q 0x10           # entry outside any segment
patch badclass e:4 B 1               # ELFCLASS32
head -c 300 "$HELLO" > "$T/truncated"

run() { "$FTVM" run --mem 32M --image "$@"; }
expect_fail 125 'no ELF magic' run "$T/garbage"
expect_fail 125 'no ELF magic' run "$T/empty"
expect_fail 125 'not a regular file' run "$T/dir"
expect_fail 125 'No such file' run "$T/nonexistent"
expect_fail 125 'e_machine is not x86-64' run "$T/badmach"
expect_fail 125 'not a static executable' run "$T/badtype"
expect_fail 125 'not a static executable' run /bin/true
expect_fail 125 'program header table out of the file' run "$T/badphoff"
expect_fail 125 'outside guest RAM' run "$T/badpaddr"
expect_fail 125 'outside guest RAM' run "$T/lowpaddr"
expect_fail 125 'out of the .*-byte file' run "$T/wrapfile"
expect_fail 125 'entry point 0x10 is not in an executable segment' run "$T/badentry"
expect_fail 125 'not a 64-bit' run "$T/badclass"
expect_fail 125 'program header table out of the file|out of the' run "$T/truncated"

expect_fail 125 'not a size' "$FTVM" run --mem 12X --image "$HELLO"
expect_fail 125 'not a size' "$FTVM" run --mem -5M --image "$HELLO"
expect_fail 125 'must be 16 MiB' "$FTVM" run --mem 8M --image "$HELLO"
expect_fail 125 'must be 16 MiB' "$FTVM" run --mem 33M --image "$HELLO"
expect_fail 125 'must be 16 MiB' "$FTVM" run --mem 65G --image "$HELLO"
expect_fail 125 'run needs --image' "$FTVM" run --mem 32M
expect_fail 125 'command line is .* bytes' "$FTVM" run --image "$HELLO" --cmdline "$(head -c 5000 /dev/zero | tr '\0' a)"
expect_fail 2 'unknown command' "$FTVM" frobnicate
# The image files are untouched by all this.
cmp -s "$HELLO" "$GUEST_DIR/hello.elf" || fail "hello.elf changed"
echo "all bad images refused"
