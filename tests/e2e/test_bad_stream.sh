#!/usr/bin/env bash
# Damaged streams: truncated anywhere, a flipped byte in every record type,
# oversize length, frame beyond RAM, unknown mandatory record, reserved
# record, bad padding, bad device/vCPU/domain contents, wrong architecture
# or version, data after END, missing records.  Each restore fails with
# exit 125 and its own message naming the record; nothing is left running;
# the stream file is not modified; the independent verifier agrees.
. "$(dirname "$0")/lib.sh"
need_kvm
S=$T/vm.sock
bg "$FTVM" run --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin \
	--control "$S" --console /dev/null
wait_for 10 test -S "$S" || fail "no control socket"
ctl "$S" save "$T/good.fts" --stop >/dev/null || fail "save"
wait_for 10 test ! -S "$S" || fail "ftvm did not stop"
python3 "$TOP/tools/ftstream-check" "$T/good.fts" >/dev/null || fail "good stream rejected by ftstream-check"

# A restore that wrongly succeeds would run forever: cap it (exit 124).
restore() { timeout -k 2 20 "$FTVM" restore --from "$1" --console /dev/null; }
# An unknown optional record is skipped: that restore must run.
python3 "$TOP/tests/e2e/corrupt.py" "$T/good.fts" "$T/opt.fts" insert 0x80001234
bg "$FTVM" restore --from "$T/opt.fts" --control "$S" --console /dev/null
wait_for 10 test -S "$S" || fail "restore with an optional record failed"
ctl "$S" quit >/dev/null
ok "unknown optional record skipped"

# bad ACTION ARGS... -- PATTERN [backend]: "backend" marks damage only the
# VMM can see (an opaque device blob), which the format verifier accepts.
bad() {
	local args=() pat name sum
	while [ "$1" != -- ]; do args+=("$1"); shift; done
	pat=$2
	name=$T/bad-$(echo "${args[*]}" | tr ' ' _).fts
	python3 "$TOP/tests/e2e/corrupt.py" "$T/good.fts" "$name" "${args[@]}" ||
		fail "corrupt.py ${args[*]}"
	sum=$(sha256sum < "$name")
	expect_fail 125 "$pat" restore "$name"
	[ "$(sha256sum < "$name")" = "$sum" ] || fail "restore modified $name"
	if [ "${3:-}" != backend ] &&
	   python3 "$TOP/tools/ftstream-check" "$name" >/dev/null 2>&1; then
		fail "ftstream-check accepted ${args[*]}"
	fi
}
bad flip DOMAIN -- 'record #0 \(DOMAIN\) at offset 40: checksum mismatch'
bad flip PAGE_BATCH -- '\(PAGE_BATCH\) at offset [0-9]+: checksum mismatch'
bad flip VCPU_X86 -- '\(VCPU_X86\) at offset [0-9]+: checksum mismatch'
bad flip DEVICE -- '\(DEVICE\) at offset [0-9]+: checksum mismatch'
bad flip END -- '\(END\) at offset [0-9]+: checksum mismatch'
bad flip-header -- 'header.*checksum mismatch'
bad oversize -- '\(PAGE_BATCH\) at offset [0-9]+: length 4294967280 exceeds the limit'
bad pfn -- '\(PAGE_BATCH\).*page 0 pfn 0x10000000000 beyond guest'
bad insert 0x1234 -- 'type 0x00001234.*unknown mandatory record'
bad insert 5 -- '\(CKPT_BEGIN\) at offset [0-9]+: length 8 below the minimum 16'
bad padding -- '\(NOTE\).*padding byte [0-9]+ is 0x01, not zero'
bad device-version -- 'clock state version 99' backend
bad vcpu-reserved -- '\(VCPU_X86\).*reserved'
bad domain-mem -- '\(DOMAIN\).*mem_size 12345 is not a positive multiple'
bad arch -- 'stream for another architecture'
bad version -- 'version 2\.[0-9]+ not supported'
bad append -- 'after END'
bad drop VCPU_X86 -- 'vCPU 0 of 1 never sent'
bad drop DOMAIN -- 'DOMAIN missing'
size=$(stat -c %s "$T/good.fts")
for cut in 0 20 40 47 48 100 4096 $((size / 2)) $((size - 9)) $((size - 1)); do
	bad truncate $cut -- 'stream ends|not an ftengine stream'
done
# Truncation at every offset of a small prefix region is covered by the
# unit tests (tests/unit/test_stream.c); here the whole chain is exercised.
pgrep -f "ftvm restore --from $T" >/dev/null && fail "a restore is still running"
echo "every damaged stream refused"
