#!/usr/bin/env bash
# A running dirtier is saved (live, then with --stop), restored, and keeps
# verifying its memory pattern; the host-side checker agrees on a RAM dump
# of the restored VM; the stream passes the independent verifier; the
# guest's monotonic clock continues across save/restore, never backwards.
. "$(dirname "$0")/lib.sh"
need_kvm
S=$T/vm.sock
C1=$T/console1.log C2=$T/console2.log
reports() { grep -c 'verified ok' "$1" 2>/dev/null || echo 0; }
reports_above() { [ "$(reports "$1")" -gt "$2" ]; }

bg "$FTVM" run --image "$GUEST_DIR/dirtier.elf" --mem 256M \
	--cmdline "--wss 128 --rate 64 --fill random" --control "$S" --console "$C1"
wait_for 20 reports_above "$C1" 0 || fail "dirtier never reported: $(cat "$C1")"
ok "dirtier running: $(tail -n1 "$C1")"

# Live save: the VM keeps running and verifying.
ctl "$S" save "$T/live.fts" > "$T/r1" || fail "live save: $(cat "$T/r1")"
n=$(reports "$C1")
wait_for 10 reports_above "$C1" "$n" || fail "dirtier stopped after a live save"
ok "live save $(cat "$T/r1"); VM still running"
python3 "$TOP/tools/ftstream-check" "$T/live.fts" || fail "ftstream-check rejects the live save"

# Save and stop; restore; the pattern continues from where it was.
ctl "$S" save "$T/vm.fts" --stop > "$T/r2" || fail "save --stop: $(cat "$T/r2")"
wait_for 10 test ! -S "$S" || fail "ftvm did not stop after save --stop"
last=$(grep 'verified ok' "$C1" | tail -n1 | awk '{print $3}')
sum=$(sha256sum < "$T/vm.fts")
bg "$FTVM" restore --from "$T/vm.fts" --control "$S" --console "$C2"
wait_for 20 reports_above "$C2" 1 || fail "restored dirtier did not report: $(cat "$C2")"
grep -q 'VERIFY FAIL' "$C2" && fail "restored dirtier found corruption: $(cat "$C2")"
first=$(grep 'verified ok' "$C2" | head -n1 | awk '{print $3}')
[ "$first" -ge "$last" ] || fail "restored sweep $first is before saved sweep $last"
ok "restored dirtier continues at sweep $first (saved at $last)"
ctl "$S" dump "$T/ram.img" >/dev/null || fail "dump"
python3 "$TOP/tools/dirtier-check.py" "$T/ram.img" --log "$C1" --fill random ||
	fail "host checker rejects the restored RAM"
ctl "$S" quit >/dev/null
[ "$(sha256sum < "$T/vm.fts")" = "$sum" ] || fail "restore modified the stream file"
ok "stream file unchanged by restore"

# Clock: hello spin prints its monotonic time every second.
S2=$T/spin.sock
bg "$FTVM" run --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin \
	--control "$S2" --console "$T/spin1.log"
spun() { [ "$(grep -c 'spin' "$1")" -ge "$2" ]; }
wait_for 10 spun "$T/spin1.log" 2 || fail "spin guest silent"
ctl "$S2" save "$T/spin.fts" --stop >/dev/null || fail "save spin"
wait_for 10 test ! -S "$S2" || fail "spin ftvm did not stop"
before=$(grep spin "$T/spin1.log" | tail -n1 | awk '{print $5}')
sleep 1
bg "$FTVM" restore --from "$T/spin.fts" --control "$S2" --console "$T/spin2.log"
wait_for 10 spun "$T/spin2.log" 2 || fail "restored spin guest silent"
ctl "$S2" quit >/dev/null
prev=$before
while read -r t; do
	[ "$t" -ge "$prev" ] || fail "guest clock went backwards: $prev -> $t"
	prev=$t
done < <(grep spin "$T/spin2.log" | awk '{print $5}')
ok "guest clock continues: last before save $before, after restore $(grep spin "$T/spin2.log" | head -n1 | awk '{print $5}')"

# Devices: NIC and disk state travel in the stream; a restore must be given
# the same disk (size) and NIC identity, or it refuses with a clear error.
ns=ftsr$$
netns "$ns"
truncate -s 4M "$T/disk.img"
NET=tap=ftsr0,mac=52:54:00:00:00:07,ip=10.7.0.2/24
S3=$T/dev.sock
bg ip netns exec "$ns" "$FTVM" run --image "$GUEST_DIR/hello.elf" --mem 32M \
	--cmdline spin --net "$NET" --disk "$T/disk.img" --control "$S3" --console /dev/null
wait_for 10 test -S "$S3" || fail "no control socket (devices)"
# Frames waiting on the TAP at save time are part of the NIC state.
ip netns exec "$ns" ip addr add 10.7.0.1/24 dev ftsr0
# (hello does not read its NIC, so these stay queued on the TAP.)
ip netns exec "$ns" ping -c 3 -i 0.2 -W 1 10.7.0.2 >/dev/null 2>&1 || true
ctl "$S3" save "$T/dev.fts" --stop >/dev/null || fail "save with devices"
wait_for 10 test ! -S "$S3" || fail "ftvm (devices) did not stop"
# DEVICE records: clock 40 bytes, disk 72, NIC 16 + 72 + pending frames.
maxdev=$(python3 "$TOP/tools/ftstream-check" -v "$T/dev.fts" |
	awk '/\(DEVICE\)/ { sub(",", "", $NF); if ($NF + 0 > m) m = $NF + 0 } END { print m + 0 }')
[ "$maxdev" -gt 88 ] || fail "no frames pending in the saved NIC state (largest DEVICE $maxdev bytes)"
ok "frames that waited on the TAP are in the saved NIC state ($maxdev bytes)"

rst() { ip netns exec "$ns" timeout -k 2 20 "$FTVM" restore --from "$T/dev.fts" --console /dev/null "$@"; }
expect_fail 125 'the saved VM has a disk; give it its image with --disk' rst --net "$NET"
expect_fail 125 'the saved VM has a NIC; give it one with --net' rst --disk "$T/disk.img"
truncate -s 8M "$T/big.img"
expect_fail 125 'saved disk has 8192 sectors of 512 bytes; --disk has 16384' \
	rst --net "$NET" --disk "$T/big.img"
expect_fail 125 'saved NIC has MAC 52:54:00:00:00:07' \
	rst --net tap=ftsr0,mac=52:54:00:00:00:08,ip=10.7.0.2/24 --disk "$T/disk.img"
bg ip netns exec "$ns" "$FTVM" restore --from "$T/dev.fts" --net "$NET" \
	--disk "$T/disk.img" --control "$S3" --console /dev/null
wait_for 10 test -S "$S3" || fail "restore with devices failed"
ctl "$S3" status | grep -q '"state":"running"' || fail "restored VM with devices not running"
ctl "$S3" quit >/dev/null
ok "device state restored; wrong disk or NIC refused"
