#!/usr/bin/env bash
# Protection through the host daemons: `ftctl protect` with a witness,
# between host namespaces A (primary), B (backup), W (witness) and a
# client C, over TLS:
#  - bad input: no witness and no --no-arbiter, unknown hosts, the
#    witness being the backup, a VM that does not run, a host that is no
#    witness;
#  - protect a kvstore VM (disk, NIC on the client's LAN) under a ledger
#    writer and redis-benchmark; status on A, B and W (leases);
#  - host crash: A's ftd and ftvm die (SIGKILL); B takes over with the
#    witness's grant; every acknowledged write is there, the client's
#    connections continue; B's status shows the failover and its time;
#  - a VM left on the crashed host refuses to start when its ftd is back;
#  - B protects the VM back onto A by itself once A's ftd is back;
#  - unprotect: A drops its replica, W forgets the VM.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ha-lib.sh"
need_kvm
command -v redis-benchmark >/dev/null || skip "redis-benchmark not installed (redis-tools)"
command -v iptables >/dev/null || skip "iptables not installed"
ha_hosts fth$$
hftd A
hftd B
hftd W --witness

MAC=52:54:00:00:02:02 GIP=10.77.0.2
pong() { ip netns exec "$NSC" timeout 5 redis-cli -h $GIP ping 2>/dev/null | grep -q PONG; }
# The guest's count of FT_POLL_MOVED (resumed elsewhere), from FTSTATS.
moves() { ip netns exec "$NSC" timeout 5 redis-cli -h $GIP FTSTATS | awk 'p { print; exit } $0 == "net_moves" { p = 1 }'; }
hctl A vm create kv --image "$GUEST_DIR/kvstore.elf" --mem 128M --disk-size 256M \
	--net "tap=kv0,mac=$MAC,ip=$GIP/24,bridge=br0" > /dev/null || fail "vm create"
hctl A vm start kv > /dev/null || fail "vm start: $(tail -5 "$T/ftdA.log")"
wait_for 30 pong || fail "kvstore not answering on A"
ok "kvstore runs on hostA"
# ftd's threads run at real-time priority (heartbeats keep time on a busy
# host); the ftvm it starts runs at normal priority.
cls=$(ps -L -o cls= -p "${_hftd[A]}" | sort -u | tr -d ' \n')
[ "$cls" = RR ] || fail "ftd's threads run in scheduling class '$cls', not RR"
vmpid=$(pgrep -P "${_hftd[A]}" | head -1)
vcls=$(ps -L -o cls= -p "$vmpid" | sort -u | tr -d ' \n')
[ "$vcls" = TS ] || fail "ftvm's threads run in scheduling class '$vcls', not TS"
ok "ftd's $(ps -L -o cls= -p "${_hftd[A]}" | wc -l) threads run SCHED_RR, ftvm's $(ps -L -o cls= -p "$vmpid" | wc -l) normal"

# Bad input: each is refused with a message, and the VM runs on.
expect_msg 2 'needs --witness HOST' hctl A protect kv hostB
expect_msg 2 'not both' hctl A protect kv hostB --witness hostW --no-arbiter
expect_msg 2 'milliseconds, 5..1000' hctl A protect kv hostB --witness hostW --interval 2
expect_msg 1 'hostX.*(not in|unknown)' hctl A protect kv hostX --witness hostW
expect_msg 1 'witness must be a third host' hctl A protect kv hostB --witness hostB
expect_msg 1 'no VM named' hctl A protect nosuch hostB --witness hostW
expect_msg 1 'hostB is not a witness' hctl A protect kv hostW --witness hostB
pong || fail "kvstore stopped answering after refused protects"
[ "$(hjson A kv 'v.get("protection")')" = "" ] || fail "a refused protect left protection behind"
ok "refused protects leave kv running unprotected"

# Protect, under load.
client_load "$NSC" $GIP 4 8
sleep 1
hctl A protect kv hostB --witness hostW > "$T/prot.out" 2> "$T/prot.err" ||
	fail "protect: $(cat "$T/prot.out" "$T/prot.err"; tail -5 "$T/ftdA.log" "$T/ftdB.log")"
grep -q 'kv is protected by hostB (witness hostW' "$T/prot.out" || fail "protect said: $(cat "$T/prot.out")"
grep -q 'initial sync of kv to hostB' "$T/prot.err" || fail "no progress on stderr: $(cat "$T/prot.err")"
ok "$(cat "$T/prot.out")"
sleep 2
[ "$(hjson A kv 'v["protection"]["state"]')" = protected ] || fail "A: $(hctl A status kv)"
[ "$(hjson B kv 'v["state"]')" = backup ] || fail "B: $(hctl B status kv)"
replica() { [ "$(hjson B kv 'v["protection"]["state"]')" = replica ]; }
wait_for 10 replica || fail "B keeps no replica: $(hctl B status kv)"
hctl W leases > "$T/leases.out" || fail "leases on W"
grep -qE '^kv +hostA +hostB +[0-9]+ +live' "$T/leases.out" || fail "W: $(cat "$T/leases.out")"
hctl A status > "$T/list.out"
grep -qE '^kv +running +primary protected +hostB' "$T/list.out" || fail "A's list: $(cat "$T/list.out")"
ok "A: primary protected; B: backup replica; W: $(tail -1 "$T/leases.out")"

# A host crash.
[ "$(moves)" = 0 ] || fail "net_moves before any move: $(moves)"
before=$(wc -l < "$T/ledger")
t0=$(date +%s.%N)
hkill A
wait_for 20 sh -c "[ \"\$($FTCTL --socket $T/B.sock --json status kv | python3 -c 'import json,sys; v=json.load(sys.stdin)[\"vm\"]; print(v[\"state\"], v[\"protection\"][\"role\"])')\" = 'running primary' ]" ||
	fail "B did not take over: $(hctl B status kv; tail -20 "$T/ftdB.log"; tail -5 "$T/ftdW.log")"
wait_for 20 pong || fail "kvstore not answering on B"
t1=$(date +%s.%N)
fo_ms=$(hjson B kv 'v["protection"]["failover"]["since_primary_lost_ms"]')
ok "B took over: $(hctl B status kv | grep -E '^(failover|protection):' | tr '\n' ' ') (client answered $(awk "BEGIN { printf \"%d\", ($t1 - $t0) * 1000 }") ms after the kill, at most)"
[ "$(moves)" = 1 ] || fail "the guest was not told it moved: net_moves $(moves)"
sleep 3
after=$(wc -l < "$T/ledger")
[ "$after" -gt "$before" ] || fail "no writes acknowledged after the failover ($before -> $after)"
kill -TERM "$LEDGER"; wait "$LEDGER"; lrc=$?
[ $lrc -eq 0 ] || fail "ledger client saw errors or broken connections: $(cat "$T/ledger.out")"
kill -TERM "$BENCH" 2>/dev/null; wait "$BENCH" 2>/dev/null
ip netns exec "$NSC" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check.out" 2>&1 || fail "acknowledged writes lost: $(cat "$T/check.out")"
ok "ledger: $(cat "$T/ledger.out") ($before before the crash); $(cat "$T/check.out"); failover ${fo_ms} ms after the loss"
hctl W leases > "$T/leases2.out"
grep -qE '^kv +hostB ' "$T/leases2.out" || fail "W did not move the lease: $(cat "$T/leases2.out")"

# A comes back: its stale copy does not start; B protects kv back onto A.
hftd A
expect_msg 1 'was protected .* another host may run it' hctl A vm start kv
wait_for 30 sh -c "[ \"\$($FTCTL --socket $T/B.sock --json status kv | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"vm\"][\"protection\"][\"state\"])')\" = protected ]" ||
	fail "B did not protect kv back onto A: $(hctl B status kv; tail -20 "$T/ftdB.log")"
[ "$(hjson A kv 'v["state"]')" = backup ] || fail "A is not the backup: $(hctl A status kv)"
ok "B protects kv onto A again: $(hjson B kv 'v["protection"]["reason"]')"

# Unprotect: A drops its replica, W forgets kv.
hctl B unprotect kv > /dev/null || fail "unprotect"
wait_for 10 sh -c "! $FTCTL --socket $T/A.sock vm status kv > /dev/null 2>&1" ||
	fail "A kept kv: $(hctl A status kv)"
wait_for 10 sh -c "$FTCTL --socket $T/W.sock leases | grep -q 'no leases'" ||
	fail "W kept kv: $(hctl W leases)"
pong || fail "kvstore stopped answering after unprotect"
ok "unprotect: A dropped the replica, W the lease; kv runs on B"

ha_check_logs
