#!/usr/bin/env bash
# Partitions of a protected VM (hostA primary, hostB backup, hostW
# witness; the client on the guest LAN):
#  1. A and B lose sight of each other, both still see W: no failover;
#     A holds its output for the grace period, then goes on alone,
#     unprotected (loudly); B is refused by W and drops its stale
#     replica; no client request fails; when the link is back, A protects
#     the VM onto B again by itself.
#  2. A is cut off from everything: its output stays held (nobody
#     acknowledges), its lease runs out and it fences the VM; B takes over
#     with W's grant; only one copy answers; every acknowledged write is
#     on B.  When A is back it learns it was deposed and stops its copy.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ha-lib.sh"
need_kvm
command -v iptables >/dev/null || skip "iptables not installed"
ha_hosts ftq$$
hftd A
hftd B
hftd W --witness

MAC=52:54:00:00:04:02 GIP=10.77.0.2
pong() { ip netns exec "$NSC" timeout 5 redis-cli -h $GIP ping 2>/dev/null | grep -q PONG; }
is() { [ "$(hjson "$1" kv "$2")" = "$3" ]; }
hctl A vm create kv --image "$GUEST_DIR/kvstore.elf" --mem 128M --disk-size 128M \
	--net "tap=kv0,mac=$MAC,ip=$GIP/24,bridge=br0" > /dev/null || fail "vm create"
hctl A vm start kv > /dev/null || fail "vm start"
wait_for 30 pong || fail "kvstore not answering"
hctl A protect kv hostB --witness hostW --grace 1500 > "$T/prot.out" 2>&1 ||
	fail "protect: $(cat "$T/prot.out")"
ok "$(tail -1 "$T/prot.out")"

ip netns exec "$NSC" python3 "$TOP/tests/e2e/ledger.py" write $GIP 6379 "$T/ledger" 4 \
	> "$T/ledger.out" 2>&1 &
LEDGER=$!
_pids+=($LEDGER)
sleep 2

# 1. A <-/-> B, both see W.
cut A B
wait_for 20 is A 'v["protection"]["state"]' unprotected ||
	fail "A did not go on alone: $(hctl A status kv; tail -20 "$T/ftdA.log")"
grep -q 'UNPROTECTED' "$T/ftdA.log" || fail "A did not say it runs unprotected"
wait_for 20 sh -c "! '$FTCTL' --socket '$T/B.sock' vm status kv >/dev/null 2>&1" ||
	fail "B kept its replica: $(hctl B status kv; tail -20 "$T/ftdB.log")"
grep -q 'witness: hostB claims kv' "$T/ftdW.log" || fail "B never asked W: $(tail "$T/ftdW.log")"
grep -q 'kv granted to hostB' "$T/ftdW.log" && fail "W granted kv to hostB while A lived"
pong || fail "kv does not answer on A"
ok "A and B cut apart: A goes on alone ($(grep -c 'no grant' "$T/ftdB.log") refused claims by B, replica dropped); $(wc -l < "$T/ledger") writes acked so far"
heal A B
wait_for 30 is A 'v["protection"]["state"]' protected ||
	fail "A did not protect kv onto B again: $(hctl A status kv; tail -20 "$T/ftdA.log")"
wait_for 20 is B 'v["protection"]["state"]' replica || fail "B: $(hctl B status kv)"
ok "link back: A protects kv onto B again (generation $(hjson A kv 'v["protection"]["generation"]'))"
sleep 2

# 2. A cut off from everything.
acked=$(wc -l < "$T/ledger")
isolate A
wait_for 20 is B 'v["protection"]["role"]' primary ||
	fail "B did not take over: $(hctl B status kv; tail -20 "$T/ftdB.log"; tail -5 "$T/ftdW.log")"
wait_for 20 is A 'v["protection"]["state"]' fenced ||
	fail "A did not fence: $(hctl A status kv; tail -20 "$T/ftdA.log")"
wait_for 20 pong || fail "kv does not answer on B"
ok "A isolated: A fenced ($(hjson A kv 'v["protection"]["reason"]')); B runs kv"
# Only one copy answers: A's VM is paused for good.
[ "$(hjson A kv 'v["ftvm"]["state"]')" = fenced ] || fail "A's copy is not fenced: $(hctl A status kv)"
sleep 2
kill -TERM "$LEDGER"; wait "$LEDGER"; lrc=$?
[ $lrc -eq 0 ] || fail "the ledger client saw errors: $(cat "$T/ledger.out")"
ip netns exec "$NSC" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check.out" 2>&1 || fail "acknowledged writes lost: $(cat "$T/check.out")"
ok "ledger: $(cat "$T/ledger.out") ($acked before the isolation); $(cat "$T/check.out")"

# A comes back: deposed, its copy stops.
ip -n "$NSA" link set eth0 up
ip -n "$NSA" link set uplink up
wait_for 20 sh -c "grep -q 'deposed' '$T/ftdA.log'" || fail "A was not told it was deposed: $(tail -20 "$T/ftdA.log")"
wait_for 20 is A 'v["state"]' stopped || fail "A's copy still runs: $(hctl A status kv)"
pong || fail "kv stopped answering on B"
ok "A back: deposed ($(hjson A kv 'v["reason"]')), its copy stopped; B runs kv"
ha_check_logs
