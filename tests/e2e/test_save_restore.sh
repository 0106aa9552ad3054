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
