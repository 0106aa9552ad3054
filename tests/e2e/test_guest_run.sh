#!/usr/bin/env bash
# Guests boot, see their command line, memory and clocks, and exit with
# their own status; crashes are reported with vector and registers; wild
# hypercall arguments get error codes while the VMM survives, also above
# 4 GiB of guest RAM.
. "$(dirname "$0")/lib.sh"
need_kvm
HELLO=$GUEST_DIR/hello.elf

out=$("$FTVM" run --image "$HELLO" --mem 32M --cmdline "" 2>&1); rc=$?
[ $rc -eq 0 ] || fail "hello exited $rc: $out"
grep -q '^hello from ftengine guest' <<< "$out" || fail "no greeting: $out"
grep -q 'hello: mem_size=33554432 ' <<< "$out" || fail "mem size: $out"
grep -q '^hello: ok' <<< "$out" || fail "hello checks: $out"
grep -q 'guest exited with status 0' <<< "$out" || fail "exit report: $out"
ok "hello boots, sleeps and exits 0"

# Console to a file; guest exit status passed through (usage error = 1).
expect_fail 1 'guest exited with status 1' "$FTVM" run --image "$HELLO" --mem 16M \
	--cmdline "no-such-mode" --console "$T/console.log"
grep -q 'usage: hello' "$T/console.log" || fail "console file lacks usage line"
ok "console file and exit status"

for k in pf:'#PF page fault.*address 0x7ffdeadbe000' null:'#PF page fault.*address 0x0 ' \
	 gp:'#GP general protection' ud:'#UD invalid opcode'; do
	expect_fail 126 "guest crashed: ${k#*:}.*at rip 0x2.*rax 0x" \
		"$FTVM" run --image "$HELLO" --mem 32M --cmdline "fault ${k%%:*}"
done

for mem in 32M 6G; do
	out=$("$FTVM" run --image "$HELLO" --mem $mem --cmdline badcall 2>&1); rc=$?
	[ $rc -eq 0 ] || fail "badcall at $mem exited $rc: $(grep -v ' ok$' <<< "$out")"
	grep -qE '^hello: badcall passed ([0-9]+)/\1$' <<< "$out" || fail "badcall summary: $out"
	ok "badcall at $mem: $(grep 'badcall passed' <<< "$out")"
done

# With a NIC and a disk, the device calls check their own arguments.
ns=ftg$$
netns "$ns"
truncate -s 1M "$T/disk.img"
out=$(ip netns exec "$ns" "$FTVM" run --image "$HELLO" --mem 32M --cmdline badcall \
	--disk "$T/disk.img" --net tap=ftt0,mac=52:54:00:00:00:01,ip=10.1.0.2/24 2>&1)
rc=$?
[ $rc -eq 0 ] || fail "badcall with devices exited $rc: $(grep -v ' ok$' <<< "$out")"
grep -qE '^hello: badcall passed ([0-9]+)/\1$' <<< "$out" || fail "badcall summary: $out"
ok "badcall with NIC and disk: $(grep 'badcall passed' <<< "$out")"

# Bad device options are refused before anything runs.
expect_fail 125 'disk .*: No such file' "$FTVM" run --image "$HELLO" --disk "$T/none.img"
truncate -s 1000 "$T/odd.img"
expect_fail 125 'not a positive multiple of 512' "$FTVM" run --image "$HELLO" --disk "$T/odd.img"
expect_fail 125 "bad value '01:02:03:04:05:06' for mac" "$FTVM" run --image "$HELLO" \
	--net tap=x,mac=01:02:03:04:05:06
expect_fail 125 'needs at least tap=NAME and mac=MAC' "$FTVM" run --image "$HELLO" --net tap=x
# A disk can serve one VM at a time.
bg ip netns exec "$ns" "$FTVM" run --image "$HELLO" --mem 16M --cmdline spin \
	--disk "$T/disk.img" --console /dev/null
sleep 0.5
expect_fail 125 'in use by another VM' "$FTVM" run --image "$HELLO" --disk "$T/disk.img"
# --disk-size creates a missing image at that size, never resizes another.
"$FTVM" run --image "$HELLO" --mem 16M --cmdline "" --disk "$T/new.img" --disk-size 8M \
	> /dev/null 2>&1 || fail "--disk-size did not create the image"
[ "$(stat -c %s "$T/new.img")" = 8388608 ] || fail "new image is $(stat -c %s "$T/new.img") bytes"
expect_fail 125 'is 8388608 bytes, but its configured size is 16777216' \
	"$FTVM" run --image "$HELLO" --disk "$T/new.img" --disk-size 16M
[ "$(stat -c %s "$T/new.img")" = 8388608 ] || fail "a refused --disk-size resized the image"
expect_fail 125 'disk size 1000 is not a multiple of 512' \
	"$FTVM" run --image "$HELLO" --disk "$T/new.img" --disk-size 1000
