#!/usr/bin/env bash
# ftd live migration end to end: two host namespaces joined by a veth
# pair, each with its own ftd (TLS peering, certificates from
# tools/ft-certs).  A dirtier VM (256 MiB, 128 MiB working set rewritten
# at 64 MiB/s, incompressible) with a NIC and a disk moves hostA -> hostB
# -> hostA with ftctl migrate; after each move its memory pattern still
# verifies (in the guest, and on a RAM dump with tools/dirtier-check.py),
# it runs on the destination only, and the source's state directory no
# longer holds it (disk included).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ftd-lib.sh"
need_kvm
grep -q 'ftvm incoming' <("$FTVM" --help 2>&1) || skip "ftvm has no 'incoming' yet"
two_hosts ftm$$
ftd_start A
ftd_start B

reports() { grep -c 'verified ok' "$1" 2>/dev/null || echo 0; }
reports_above() { [ "$(reports "$1")" -gt "$2" ]; }
last_sweep() { grep 'verified ok' "$1" | tail -n1 | awk '{print $3}'; }
CA=$T/stateA/vms/vm1 CB=$T/stateB/vms/vm1

fa vm create vm1 --image "$GUEST_DIR/dirtier.elf" --mem 256M \
	--cmdline "--wss 128 --rate 64 --fill random" --disk-size 4M \
	--net tap=ftm0,mac=52:54:00:88:00:02,ip=10.89.0.2/24,host-ip=10.89.0.1/24 \
	>/dev/null || fail "create"
fa vm start vm1 >/dev/null || fail "start: $(cat "$CA/ftvm.log")"
wait_for 30 reports_above "$CA/console.log" 1 || fail "dirtier silent: $(cat "$CA/console.log")"
cp "$CA/console.log" "$T/console0.log" # the "dirtier: ready" line
ok "vm1 runs on hostA: $(tail -n1 "$CA/console.log")"

# move SRC_CTL DST_CTL SRC_DIR DST_DIR DST: one migration, checked.
move() {
	local src=$1 dst=$2 sdir=$3 ddir=$4 to=$5 before out rc
	before=$(last_sweep "$sdir/console.log")
	out=$($src migrate vm1 "$to" --downtime 300 2> "$T/progress"); rc=$?
	[ $rc -eq 0 ] || fail "migrate to $to exited $rc: $out $(cat "$T/progress")"
	grep -qE "vm1 moved from host.* to $to: total .* downtime .* ms, .* sent in [0-9]* rounds?" <<< "$out" ||
		fail "no summary: $out"
	grep -q 'migrating vm1 to .*: round [0-9]*, .* dirty' "$T/progress" ||
		fail "no progress lines: $(cat "$T/progress")"
	ok "$out"
	[ "$(vm_state $dst --json vm status vm1)" = running ] || fail "vm1 not running on $to"
	[ "$(vm_state $src --json vm status vm1)" = absent ] || fail "vm1 still defined on the source"
	[ ! -e "$sdir" ] || fail "the source kept $sdir: $(ls "$sdir")"
	[ -f "$ddir/disk.img" ] && [ "$(stat -c %s "$ddir/disk.img")" -eq $((4 << 20)) ] ||
		fail "no 4 MiB disk on $to"
	wait_for 30 reports_above "$ddir/console.log" 1 ||
		fail "dirtier silent on $to: $(cat "$ddir/console.log")"
	grep -q 'VERIFY FAIL' "$ddir/console.log" && fail "corruption on $to: $(cat "$ddir/console.log")"
	first=$(grep 'verified ok' "$ddir/console.log" | head -n1 | awk '{print $3}')
	[ "$first" -ge "$before" ] || fail "sweep went back: $before -> $first"
	"$FTVM" ctl --control "$ddir/ftvm.sock" dump "$T/ram.img" >/dev/null || fail "dump on $to"
	python3 "$TOP/tools/dirtier-check.py" "$T/ram.img" --log "$T/console0.log" --fill random ||
		fail "host checker rejects the RAM on $to"
	rm -f "$T/ram.img"
	ok "vm1 verifies on $to from sweep $first (last on the source: $before)"
}
move fa fb "$CA" "$CB" hostB
ip -n "$NSB" link show ftm0 >/dev/null 2>&1 || fail "no TAP ftm0 on hostB"
ip -n "$NSA" link show ftm0 >/dev/null 2>&1 && fail "TAP ftm0 left on hostA"
ok "the NIC moved with the VM"
move fb fa "$CB" "$CA" hostA

# A third one, capped, compressed, with an xor-delta cache; a second
# migration of the same VM while one runs is refused.
fa migrate vm1 hostB --bandwidth 100M --compress lz4 --xbzrle 64M > "$T/m3.out" 2>&1 &
m3=$!
_pids+=($m3)
wait_for 10 grep -q 'streaming' "$T/m3.out" || fail "third migration did not start: $(cat "$T/m3.out")"
expect_msg 1 'vm1 is migrating, not running' fa migrate vm1 hostB
expect_msg 1 'vm1 is in a migration \(migrating\)' fa vm stop vm1
wait "$m3" || fail "third migration: $(cat "$T/m3.out")"
ok "third migration (capped at 100 MiB/s, lz4, xbzrle): $(tail -n1 "$T/m3.out")"
[ "$(vm_state fb --json vm status vm1)" = running ] || fail "vm1 not running on hostB"
fb vm stop vm1 >/dev/null || fail "stop on hostB"
fb vm delete vm1 >/dev/null || fail "delete on hostB"
ftd_check_logs
