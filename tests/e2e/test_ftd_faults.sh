#!/usr/bin/env bash
# Faults in the middle of an ftctl migrate: the destination's ftvm is
# killed while memory streams, then the link goes down while memory
# streams.  Each time ftctl says what happened and that the VM keeps
# running on the source; the VM does keep running (its pattern still
# verifies); the destination removes its half-received copy; and a later
# migration of the same VM succeeds.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ftd-lib.sh"
need_kvm
grep -q 'ftvm incoming' <("$FTVM" --help 2>&1) || skip "ftvm has no 'incoming' yet"
two_hosts ftf$$
ftd_start A
ftd_start B
CA=$T/stateA/vms/vm1
reports() { grep -c 'verified ok' "$CA/console.log" 2>/dev/null || echo 0; }
reports_above() { [ "$(reports)" -gt "$1" ]; }

fa vm create vm1 --image "$GUEST_DIR/dirtier.elf" --mem 256M \
	--cmdline "--wss 128 --rate 64 --fill random" >/dev/null || fail "create"
fa vm start vm1 >/dev/null || fail "start"
wait_for 30 reports_above 1 || fail "dirtier silent: $(cat "$CA/console.log")"

# alive_on_a: vm1 runs on hostA and keeps verifying; hostB has none.
alive_on_a() {
	local n
	[ "$(vm_state fa --json vm status vm1)" = running ] || fail "vm1 not running on hostA: $(fa vm status vm1)"
	n=$(reports)
	wait_for 10 reports_above "$n" || fail "dirtier stopped on hostA"
	grep -q 'VERIFY FAIL' "$CA/console.log" && fail "corruption on hostA"
	wait_for 30 test ! -e "$T/stateB/vms/vm1" ||
		fail "hostB kept its half-received vm1: $(ls "$T/stateB/vms/vm1")"
	[ "$(vm_state fb --json vm status vm1)" = absent ] || fail "hostB still lists vm1"
	ok "vm1 still runs and verifies on hostA; hostB has no copy"
}

# slow_migrate: a migration capped at 8 MiB/s (round 0 alone takes ~16 s)
# whose ftvm gives up after 2 s of silence, in the background; waits until
# it streams.
slow_migrate() {
	fa migrate vm1 hostB --bandwidth 8M --io-timeout 2000 > "$T/m.out" 2> "$T/m.err" &
	mpid=$!
	_pids+=($mpid)
	wait_for 20 grep -q 'round' "$T/m.err" || fail "no progress: $(cat "$T/m.out" "$T/m.err")"
}

# 1. The destination's ftvm dies mid-stream.
slow_migrate
bpid=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["pid"])' \
	<<< "$(fb --json vm status vm1)") || fail "no pid for vm1 on hostB"
kill -9 "$bpid"
wait "$mpid"; rc=$?
[ $rc -eq 1 ] || fail "migrate exited $rc: $(cat "$T/m.out" "$T/m.err")"
grep -qE 'ftctl: migration of vm1 to hostB failed: .+; vm1 keeps running on hostA' "$T/m.err" ||
	fail "no clear message: $(cat "$T/m.err")"
ok "destination ftvm killed: $(grep ftctl: "$T/m.err")"
alive_on_a
grep -q 'incoming migration from hostA failed: ftvm was killed by signal 9' "$T/ftdB.log" ||
	fail "hostB's log does not say why: $(tail -n 5 "$T/ftdB.log")"

# 2. The link goes down mid-stream (and comes back later).
slow_migrate
ip -n "$NSB" link set veth-b down
t0=$SECONDS
wait "$mpid"; rc=$?
[ $rc -eq 1 ] || fail "migrate exited $rc: $(cat "$T/m.out" "$T/m.err")"
grep -qE 'ftctl: migration of vm1 to hostB failed: .+; vm1 keeps running on hostA' "$T/m.err" ||
	fail "no clear message: $(cat "$T/m.err")"
ok "link down: after $((SECONDS - t0)) s: $(grep ftctl: "$T/m.err")"
ip -n "$NSB" link set veth-b up
alive_on_a

# 3. With nothing in the way, the same VM moves.
fa migrate vm1 hostB > "$T/m.out" 2>&1 || fail "final migrate: $(cat "$T/m.out")"
ok "$(tail -n1 "$T/m.out")"
[ "$(vm_state fb --json vm status vm1)" = running ] || fail "vm1 not running on hostB"
wait_for 30 grep -q 'verified ok' "$T/stateB/vms/vm1/console.log" || fail "dirtier silent on hostB"
grep -q 'VERIFY FAIL' "$T/stateB/vms/vm1/console.log" && fail "corruption on hostB"
ok "vm1 verifies on hostB"
ftd_check_logs
