#!/usr/bin/env bash
# Checkpoint protection (Remus) at the ftvm level, between two host
# namespaces over TLS:
#  - a kvstore VM with a 256 MiB disk on A is protected to an
#    `ftvm backup` on B (epochs every 25 ms) while a ledger client writes
#    keys over 8 connections and redis-benchmark loads it from the client
#    namespace;
#  - A's ftvm is killed with SIGKILL (a host crash); B fails over from its
#    last committed epoch: the client's TCP connections continue, every
#    write the client saw acknowledged is readable on B, the status shows
#    the new role and the failover time;
#  - the disk: B's kvstore restarted from the failed-over image holds every
#    acknowledged write;
#  - unprotect: the backup drops its replica and exits 0, the primary runs
#    on unprotected;
#  - a backup that never synchronised refuses to fail over.
. "$(dirname "$0")/lib.sh"
need_kvm
command -v redis-benchmark >/dev/null || skip "redis-benchmark not installed (redis-tools)"
hosts2 ftp$$
certs "$T/pki"
TA=$(tls "$T/pki" hosta) TB=$(tls "$T/pki" hostb)
SA=$T/a.sock SB=$T/b.sock
gone() { ! kill -0 "$1" 2>/dev/null; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d[k]
print(d)' "$1"; }

MAC=52:54:00:00:01:02 GIP=10.77.0.2
NET="tap=kv0,mac=$MAC,ip=$GIP/24,bridge=br0"
truncate -s 256M "$T/a-disk.img"
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/kvstore.elf" --mem 128M \
	--net "$NET" --disk "$T/a-disk.img" --control "$SA" --console "$T/kv-a.log"
KPID=$!
pong() { ip netns exec "$CNS" timeout 5 redis-cli -h $GIP ping | grep -q PONG; }
wait_for 30 pong || fail "kvstore not answering: $(cat "$T/kv-a.log")"
ok "kvstore answers on A"

# A backup that has no replica yet refuses to fail over.
backup "$BNS" "$B_IP" "$T/bk.out" $TB --peer-name hosta --control "$SB" \
	--console "$T/kv-b.log" --net "$NET" --disk "$T/b-disk.img" --disk-size 256M
expect_fail 1 'no complete replica to fail over to' ctl "$SB" failover
expect_fail 1 'this is a backup: only' ctl "$SB" pause
ok "a backup without a replica refuses to fail over"

# Protect, under load.
client_load "$CNS" $GIP 4 8
sleep 1
ctl "$SA" protect "$BK_ADDR" $TA --peer-name hostb > "$T/prot.out" 2> "$T/prot.err" ||
	fail "protect: $(cat "$T/prot.out" "$T/prot.err" "$T/bk.out.err")"
[ "$(field state < "$T/prot.out")" = protected ] || fail "not protected: $(cat "$T/prot.out")"
ok "protected: $(cat "$T/prot.out")"
sleep 4
ctl "$SA" status > "$T/sa.json" || fail "status on A"
epochs=$(field protection.epochs < "$T/sa.json")
[ "$epochs" -gt 20 ] || fail "only $epochs epochs in 4 s: $(cat "$T/sa.json")"
[ "$(field protection.state < "$T/sa.json")" = protected ] || fail "A: $(cat "$T/sa.json")"
released=$(field protection.net_released_frames < "$T/sa.json")
[ "$released" -gt 100 ] || fail "output not flowing ($released frames released)"
ctl "$SB" status > "$T/sb.json" || fail "status on B"
[ "$(field replica < "$T/sb.json")" = replica ] || fail "B: $(cat "$T/sb.json")"
[ "$(field complete < "$T/sb.json")" = True ] || fail "B incomplete: $(cat "$T/sb.json")"
ok "A: $epochs epochs, pause p50 $(field protection.pause_p50_us < "$T/sa.json") us p99 $(field protection.pause_p99_us < "$T/sa.json") us, $released frames released; B: replica at epoch $(field epoch < "$T/sb.json")"

# Host crash: A's ftvm dies without a word.
before=$(wc -l < "$T/ledger")
kill -KILL "$KPID"
wait_for 10 gone "$KPID" || fail "A's ftvm survived SIGKILL"
wait_for 10 sh -c "'$FTVM' ctl --control '$SB' status | grep -q primary-lost" ||
	fail "B did not notice: $(ctl "$SB" status)"
ctl "$SB" failover > "$T/fo.out" || fail "failover: $(cat "$T/fo.out" "$T/bk.out.err")"
ok "failed over: $(cat "$T/fo.out")"
ctl "$SB" status > "$T/sb2.json"
[ "$(field failover.role < "$T/sb2.json")" = primary ] || fail "B's status: $(cat "$T/sb2.json")"
wait_for 20 pong || fail "kvstore on B not answering: $(cat "$T/kv-b.log")"
# The clients carry on against B over the same connections.
sleep 3
after=$(wc -l < "$T/ledger")
[ "$after" -gt "$before" ] || fail "no writes acknowledged after the failover ($before -> $after)"
kill -TERM "$LEDGER"; wait "$LEDGER"; lrc=$?
[ $lrc -eq 0 ] || fail "ledger client saw errors or broken connections: $(cat "$T/ledger.out")"
kill -TERM "$BENCH" 2>/dev/null; wait "$BENCH" 2>/dev/null
grep -qiE 'error|refused|reset' "$T/bench.out" && fail "redis-benchmark saw errors: $(tr '\r' '\n' < "$T/bench.out" | tail -3)"
ip netns exec "$CNS" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check.out" 2>&1 || fail "acknowledged writes lost: $(cat "$T/check.out" "$T/ledger.out")"
ok "ledger: $(cat "$T/ledger.out") ($before before the crash, $after after); $(cat "$T/check.out")"

# The disk: the failed-over image holds every acknowledged write.
[ -f "$T/b-disk.img" ] && [ ! -e "$T/b-disk.img.replica" ] ||
	fail "the replica's disk image was not put in place"
ctl "$SB" quit > /dev/null
wait_for 10 test ! -S "$SB" || fail "B's ftvm did not stop"
bg ip netns exec "$BNS" "$FTVM" run --image "$GUEST_DIR/kvstore.elf" --mem 128M \
	--net "$NET" --disk "$T/b-disk.img" --control "$SB" --console "$T/kv-b2.log"
wait_for 30 pong || fail "kvstore on B's disk not answering: $(cat "$T/kv-b2.log")"
ip netns exec "$CNS" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check2.out" 2>&1 || fail "writes missing from the replica's disk: $(cat "$T/check2.out")"
ok "the failed-over disk holds every acknowledged write: $(cat "$T/check2.out")"

# Unprotect: B (now primary) protects to a backup on A, then stops it.
backup "$ANS" "$A_IP" "$T/bk2.out" $TA --peer-name hostb --control "$SA" \
	--console "$T/kv-a2.log" --net "$NET" --disk "$T/a2-disk.img" --disk-size 256M
BK2=$BK_PID
ctl "$SB" protect "$BK_ADDR" $TB --peer-name hosta > "$T/prot2.out" 2>&1 ||
	fail "protect back: $(cat "$T/prot2.out" "$T/bk2.out.err")"
ctl "$SB" unprotect > "$T/unp.out" || fail "unprotect: $(cat "$T/unp.out")"
wait_for 10 gone "$BK2" || fail "the backup did not stop after unprotect"
wait "$BK2"; rc=$?
[ $rc -eq 0 ] || fail "the backup exited $rc after unprotect: $(cat "$T/bk2.out.err")"
[ ! -e "$T/a2-disk.img.replica" ] || fail "the dropped replica's image was left behind"
ctl "$SB" status > "$T/sb3.json"
grep -q '"protection"' "$T/sb3.json" && fail "still protected: $(cat "$T/sb3.json")"
pong || fail "kvstore on B stopped answering after unprotect"
ok "unprotect: the backup dropped its replica and exited 0; B runs on"
