#!/usr/bin/env bash
# netbuf's sch_plug backend (output commit through a plug qdisc on an IFB
# device, as Xen's Remus does).  Where the kernel lacks sch_plug this test
# skips with the probe's reason; where it has it, the plug cases of
# test_netbuf run: a real guest's UDP frames on a real TAP are held until
# their epoch is released, then arrive in order, and nothing is left
# behind.  (The in-process and NFQUEUE backends are covered with real
# traffic by tests/unit/test_netbuf, in a network namespace of its own.)
. "$(dirname "$0")/lib.sh"
need_kvm
NB=$B/tests/unit/test_netbuf
[ -x "$NB" ] || fail "$NB is missing: run make"
[ "$(id -u)" = 0 ] || skip "not root: no TAP, namespaces or qdiscs"
why=$("$NB" --available plug) || skip "netbuf plug: $why"
ok "sch_plug: $why"
out=$(CMOCKA_MESSAGE_OUTPUT=STDOUT "$NB" 'test_plug*' 2>&1) ||
	fail "plug cases: $out"
grep -q 'OK \] test_plug_hold_release' <<< "$out" ||
	fail "the plug hold/release case did not run: $out"
ok "plug backend holds and releases a guest's frames"
