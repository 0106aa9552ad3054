#!/usr/bin/env bash
# Every way a migration can end, as ftd sees it, with ftvm replaced by
# tests/e2e/fake-ftvm.py so that each outcome happens on cue:
#   in doubt, the destination runs it      -> moved, cleaned up here
#   in doubt, the destination failed       -> resumed here
#   refused by the source's ftvm           -> the destination drops its copy
#   the source's ftvm dies mid-migration   -> reported; nothing left there
#   in doubt, the destination unreachable  -> 5 s of asking, then "in
#                                             doubt" with the way out;
#                                             'ftctl vm resolve' settles it
#                                             (stayed, then moved)
# (Real ftvm migrations: test_ftd_migrate.sh and test_ftd_faults.sh.)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ftd-lib.sh"
two_hosts ftdd$$
FAKE=$T/fake-ftvm
install -m 755 "$TOP/tests/e2e/fake-ftvm.py" "$FAKE"
KEEPS='vm1 keeps running on hostA'

# pair SOURCE_OUTCOME DESTINATION_OUTCOME: (re)start both ftd with the
# fake ftvm, vm1 running on hostA.
pair() {
	ftd_stop A
	ftd_stop B
	FAKE_MIGRATE=$1 ftd_start A --ftvm "$FAKE" --doubt-limit 5
	FAKE_INCOMING=$2 ftd_start B --ftvm "$FAKE"
	fa vm status vm1 >/dev/null 2>&1 ||
		fa vm create vm1 --image "$GUEST_DIR/hello.elf" >/dev/null || fail "create"
	fa vm start vm1 >/dev/null || fail "start vm1: $(fa vm status vm1)"
}
states() { echo "A=$(vm_state fa --json vm status vm1) B=$(vm_state fb --json vm status vm1)"; }

# 1. In doubt; the destination committed: the VM moved.
pair in-doubt commit
fa migrate vm1 hostB > "$T/out" 2> "$T/err" || fail "exited $?: $(cat "$T/out" "$T/err")"
grep -q 'in doubt (the destination.s confirmation never came); asking hostB whether it runs vm1' "$T/err" ||
	fail "no in-doubt line: $(cat "$T/err")"
grep -q 'vm1 moved from hostA to hostB in .* s (the outcome was in doubt; the destination confirmed it runs the VM)' "$T/out" ||
	fail "summary: $(cat "$T/out")"
[ "$(states)" = "A=absent B=running" ] || fail "after 1: $(states)"
[ ! -e "$T/stateA/vms/vm1" ] || fail "hostA kept vm1's directory"
ok "in doubt, destination runs it: $(cat "$T/out")"
fb vm stop vm1 >/dev/null && fb vm delete vm1 >/dev/null || fail "cleanup on hostB"

# 2. In doubt; the destination's ftvm failed: the VM resumes here.
pair in-doubt fail
expect_msg 1 "migration of vm1 to hostB failed: the destination.s confirmation never came; $KEEPS" \
	fa migrate vm1 hostB
[ "$(states)" = "A=running B=absent" ] || fail "after 2: $(states)"
grep -q 'does not run vm1 (absent): resuming it here' "$T/ftdA.log" || fail "hostA's log: $(tail "$T/ftdA.log")"

# 3. The source's ftvm refuses after the destination prepared: the
#    destination drops its copy before ftctl hears of the failure.
pair fail hang
expect_msg 1 "migration of vm1 to hostB failed: fake failure before the stream; $KEEPS" \
	fa migrate vm1 hostB
[ "$(states)" = "A=running B=absent" ] || fail "after 3: $(states)"
grep -q 'hostA abandons the migration; stopping ftvm incoming' "$T/ftdB.log" ||
	fail "hostB's log: $(tail "$T/ftdB.log")"

# 4. The source's ftvm dies mid-migration (and so the destination fails).
pair vanish fail
expect_msg 1 "migration of vm1 to hostB failed: vm1.s ftvm ended the migration without an answer .*; vm1 is stopped on hostA: ftvm failed \(exit 125\): fake-ftvm vanishes mid-migration" \
	fa migrate vm1 hostB
[ "$(states)" = "A=stopped B=absent" ] || fail "after 4: $(states)"

# 5. In doubt and the destination's ftd is gone: ftd asks for 5 s
#    (--doubt-limit; 30 by default), then
#    leaves the VM paused and in doubt, and says how to settle it.
export FAKE_GO_FILE=$T/go
pair in-doubt hang
fa migrate vm1 hostB > "$T/out" 2> "$T/err" &
mpid=$!
_pids+=($mpid)
wait_for 10 grep -q 'streaming vm1 to hostB' "$T/err" || fail "no stream: $(cat "$T/err")"
ftd_stop B
touch "$FAKE_GO_FILE"
wait_for 10 bash -c "'$FTCTL' --socket '$T/a.sock' vm status vm1 | grep -q 'state: *in-doubt'" ||
	fail "not in doubt: $(fa vm status vm1)"
expect_msg 1 "vm1 is in a migration \(in-doubt\)" fa vm stop vm1
expect_msg 1 "only a migration left in doubt is resolved by hand" fa vm resolve vm1 stayed
t0=$SECONDS
wait "$mpid"; rc=$?
[ $rc -eq 1 ] || fail "migrate exited $rc: $(cat "$T/out" "$T/err")"
grep -q "migration of vm1 to hostB is in doubt: .*hostB did not answer whether it runs vm1 for 5 s [(]last: cannot reach hostB.*[)]. vm1 stays paused on hostA. .*'ftctl vm resolve vm1 moved'.*'ftctl vm resolve vm1 stayed'" "$T/err" ||
	fail "no in-doubt message: $(cat "$T/err")"
ok "$(grep ftctl: "$T/err") (after $((SECONDS - t0)) more s)"
fa vm status vm1 | grep -q 'state: *in-doubt' || fail "not in doubt after giving up"
expect_msg 0 "^vm1 keeps running on hostA" fa vm resolve vm1 stayed
[ "$(vm_state fa --json vm status vm1)" = running ] || fail "vm1 not running after resolve"

# 6. Once more, and this time the operator knows it moved.
rm -f "$FAKE_GO_FILE"
ftd_start B --ftvm "$FAKE"
# hostB kept what it had received when its ftd stopped (it cannot know
# whether it is the only copy), and says so; here it is not.
fb vm status vm1 | grep -q 'reason: *ftd shut down during an incoming migration from hostA' ||
	fail "hostB's copy: $(fb vm status vm1)"
fb vm delete vm1 >/dev/null || fail "delete hostB's copy"
fa migrate vm1 hostB > "$T/out" 2> "$T/err" &
mpid=$!
_pids+=($mpid)
wait_for 10 grep -q 'streaming vm1 to hostB' "$T/err" || fail "no stream: $(cat "$T/err")"
ftd_stop B
touch "$FAKE_GO_FILE"
wait "$mpid"
fa vm status vm1 | grep -q 'state: *in-doubt' || fail "not in doubt: $(fa vm status vm1)"
expect_msg 0 "^vm1 runs on hostB; removed from hostA" fa vm resolve vm1 moved
[ "$(vm_state fa --json vm status vm1)" = absent ] || fail "vm1 still on hostA"
[ ! -e "$T/stateA/vms/vm1" ] || fail "hostA kept vm1's directory"
ftd_check_logs
