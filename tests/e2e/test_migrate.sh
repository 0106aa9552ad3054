#!/usr/bin/env bash
# Live migration between two host namespaces over TLS (ftvm level):
#  - a dirtier (256 MiB RAM, 192 MiB working set dirtied at 64 MiB/s) moves
#    A -> B -> A; after each move it keeps verifying its memory pattern on
#    the new host, the old ftvm exits 0, and its RAM passes the host-side
#    checker at the end;
#  - auto-converge: a dirtier (random page contents, 100 MiB/s) that
#    outruns a 40 MB/s link is throttled and the migration converges;
#  - xbzrle: the same guest over the same link converges without heavy
#    throttling when re-sent pages go as xor-deltas;
#  - the guest's monotonic clock continues across a move, never backwards;
#  - a kvstore VM with its disk moves A -> B while redis-benchmark runs
#    against it from the client namespace and a ledger client writes keys:
#    no errors on the client, every acknowledged write readable on B, and
#    the disk image came along (B restarts from it with the data).
. "$(dirname "$0")/lib.sh"
need_kvm
command -v redis-benchmark >/dev/null || skip "redis-benchmark not installed (redis-tools)"
hosts2 ftm$$
certs "$T/pki"
TA=$(tls "$T/pki" hosta) TB=$(tls "$T/pki" hostb)
reports() { grep -c 'verified ok' "$1" 2>/dev/null || echo 0; }
reports_above() { [ "$(reports "$1")" -gt "$2" ]; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# migrate SRC_SOCK DST_NS DST_IP DST_SOCK DST_CONSOLE [ctl options] -> $T/mig.out
migrate_vm() {
	local src=$1 ns=$2 ip=$3 dsock=$4 dcon=$5 stls=$6 dtls=$7 peer=$8
	shift 8
	incoming "$ns" "$ip" "$T/inc.out" $dtls --peer-name "$peer" \
		--control "$dsock" --console "$dcon" "$@"
	ctl "$src" migrate "$INC_ADDR" $stls > "$T/mig.out" 2> "$T/mig.err" ||
		fail "migrate to $INC_ADDR: $(cat "$T/mig.out" "$T/mig.err" "$T/inc.out.err")"
}

# ---- dirtier A -> B -> A --------------------------------------------------
SA=$T/a.sock SB=$T/b.sock
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/dirtier.elf" --mem 256M \
	--cmdline "--wss 192 --rate 64 --fill random" --control "$SA" --console "$T/a1.log"
APID=$!
wait_for 30 reports_above "$T/a1.log" 0 || fail "dirtier never reported: $(cat "$T/a1.log")"
ok "dirtier running on A: $(tail -n1 "$T/a1.log")"

migrate_vm "$SA" "$BNS" "$B_IP" "$SB" "$T/b1.log" "$TA --peer-name hostb" "$TB" hosta
wait_for 10 gone "$APID" || fail "source ftvm still running after the move"
wait "$APID"; rc=$?
[ $rc -eq 0 ] || fail "source ftvm exited $rc after a successful migration"
grep -q '"ok":true' "$T/mig.out" || fail "no success summary: $(cat "$T/mig.out")"
grep -q 'migrate: round' "$T/mig.err" || fail "no progress lines: $(cat "$T/mig.err")"
wait_for 20 reports_above "$T/b1.log" 1 || fail "dirtier silent on B: $(cat "$T/b1.log")"
grep -q 'VERIFY FAIL' "$T/b1.log" && fail "pattern broken on B: $(cat "$T/b1.log")"
ok "A -> B: $(cat "$T/mig.out"); dirtier verifies on B: $(tail -n1 "$T/b1.log")"
BPID=$INC_PID

migrate_vm "$SB" "$ANS" "$A_IP" "$SA" "$T/a2.log" "$TB --peer-name hosta" "$TA" hostb
wait_for 10 gone "$BPID" || fail "B's ftvm still running after the move back"
wait_for 20 reports_above "$T/a2.log" 1 || fail "dirtier silent back on A: $(cat "$T/a2.log")"
grep -q 'VERIFY FAIL' "$T/a2.log" && fail "pattern broken back on A: $(cat "$T/a2.log")"
ok "B -> A: $(cat "$T/mig.out"); dirtier verifies on A: $(tail -n1 "$T/a2.log")"
ctl "$SA" dump "$T/ram.img" >/dev/null || fail "dump"
cat "$T/a1.log" "$T/b1.log" "$T/a2.log" > "$T/all.log"
python3 "$TOP/tools/dirtier-check.py" "$T/ram.img" --log "$T/all.log" --fill random ||
	fail "host checker rejects the RAM after two moves"
ctl "$SA" quit >/dev/null

# ---- auto-converge ----------------------------------------------------------
# A 40 MB/s link (tc tbf) and a guest dirtying 100 MiB/s: only throttling
# the guest lets the migration converge.
ip netns exec "$ANS" tc qdisc add dev mig root tbf rate 320mbit burst 256kb latency 100ms ||
	fail "tc tbf"
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/dirtier.elf" --mem 64M \
	--cmdline "--wss 32 --rate 100 --fill random" --control "$SA" --console "$T/ac.log"
wait_for 30 reports_above "$T/ac.log" 0 || fail "fast dirtier never reported"
incoming "$BNS" "$B_IP" "$T/inc.out" --insecure --control "$SB" --console "$T/ac2.log"
ctl "$SA" migrate "$INC_ADDR" --insecure --downtime 50 --compress none \
	> "$T/mig.out" 2> "$T/mig.err" || fail "auto-converge migration: $(cat "$T/mig.out" "$T/mig.err")"
thr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["throttle"])' "$T/mig.out")
[ "$thr" -gt 0 ] || fail "the guest was never throttled: $(cat "$T/mig.out" "$T/mig.err")"
wait_for 20 reports_above "$T/ac2.log" 0 || fail "throttled dirtier silent on B"
grep -q 'VERIFY FAIL' "$T/ac2.log" && fail "pattern broken after auto-converge"
ok "auto-converge: throttled to $thr%: $(cat "$T/mig.out")"
ctl "$SB" quit >/dev/null
wait_for 10 test ! -S "$SB" || fail "B's ftvm did not stop"

# xbzrle over the same link: the dirtier changes one word per page per
# sweep, so re-sent pages shrink to a few bytes.
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/dirtier.elf" --mem 64M \
	--cmdline "--wss 32 --rate 100 --fill random" --control "$SA" --console "$T/xb.log"
wait_for 30 reports_above "$T/xb.log" 0 || fail "fast dirtier never reported"
incoming "$BNS" "$B_IP" "$T/inc.out" --insecure --control "$SB" --console "$T/xb2.log"
ctl "$SA" migrate "$INC_ADDR" --insecure --downtime 50 --compress none --xbzrle 64M \
	> "$T/mig.out" 2> "$T/mig.err" || fail "xbzrle migration: $(cat "$T/mig.out" "$T/mig.err")"
read -r xor thr2 < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["xor_pages"], j["throttle"])' "$T/mig.out")
[ "$xor" -gt 0 ] || fail "no xor-delta pages: $(cat "$T/mig.out")"
[ "$thr2" -lt "$thr" ] || fail "xbzrle needed as much throttling ($thr2%) as without ($thr%)"
wait_for 20 reports_above "$T/xb2.log" 0 || fail "dirtier silent on B after xbzrle"
grep -q 'VERIFY FAIL' "$T/xb2.log" && fail "pattern broken after an xbzrle migration"
ok "xbzrle: $xor pages as deltas, throttle $thr2% (without: $thr%): $(cat "$T/mig.out")"
ctl "$SB" quit >/dev/null
ip netns exec "$ANS" tc qdisc del dev mig root

# ---- the guest clock across a move --------------------------------------------
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin \
	--control "$SA" --console "$T/spin1.log"
spun() { [ "$(grep -c 'spin' "$1")" -ge "$2" ]; }
wait_for 10 spun "$T/spin1.log" 2 || fail "spin guest silent"
incoming "$BNS" "$B_IP" "$T/inc.out" --insecure --control "$SB" --console "$T/spin2.log"
ctl "$SA" migrate "$INC_ADDR" --insecure > "$T/mig.out" 2> "$T/mig.err" ||
	fail "spin migration: $(cat "$T/mig.out" "$T/mig.err")"
wait_for 10 spun "$T/spin2.log" 2 || fail "spin guest silent after the move"
ctl "$SB" quit >/dev/null
prev=0
while read -r t; do
	[ "$t" -ge "$prev" ] || fail "guest clock went backwards across the move: $prev -> $t"
	prev=$t
done < <(cat "$T/spin1.log" "$T/spin2.log" | grep spin | awk '{print $5}')
ok "guest clock continues across the move: last on A $(grep spin "$T/spin1.log" | tail -n1 | awk '{print $5}'), first on B $(grep spin "$T/spin2.log" | head -n1 | awk '{print $5}')"
wait_for 10 test ! -S "$SB" || fail "B's ftvm did not stop"

# ---- kvstore with its disk, under load ------------------------------------
MAC=52:54:00:00:01:02 GIP=10.77.0.2
NETA="tap=kv0,mac=$MAC,ip=$GIP/24,bridge=br0"
truncate -s 256M "$T/a-disk.img"
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/kvstore.elf" --mem 128M \
	--net "$NETA" --disk "$T/a-disk.img" --control "$SA" --console "$T/kv-a.log"
KPID=$!
pong() { ip netns exec "$CNS" timeout 5 redis-cli -h $GIP ping | grep -q PONG; }
wait_for 30 pong || fail "kvstore not answering: $(cat "$T/kv-a.log")"
ok "kvstore answers on A"
# Load: redis-benchmark (its errors show in its output) and a ledger
# writer that records every acknowledged SET.
ip netns exec "$CNS" redis-benchmark -h $GIP -t set,get,incr -n 200000 -c 8 -P 4 \
	-r 100000 -q > "$T/bench.out" 2>&1 &
BENCH=$!
_pids+=($BENCH)
ip netns exec "$CNS" python3 "$TOP/tests/e2e/ledger.py" write $GIP 6379 "$T/ledger" 8 \
	> "$T/ledger.out" 2>&1 &
LEDGER=$!
_pids+=($LEDGER)
sleep 2
incoming "$BNS" "$B_IP" "$T/inc.out" $TB --peer-name hosta --control "$SB" \
	--console "$T/kv-b.log" --net "$NETA" --disk "$T/b-disk.img" --disk-size 256M
ctl "$SA" migrate "$INC_ADDR" $TA --peer-name hostb > "$T/mig.out" 2> "$T/mig.err" ||
	fail "kvstore migration: $(cat "$T/mig.out" "$T/mig.err" "$T/inc.out.err")"
ok "kvstore moved: $(cat "$T/mig.out")"
wait_for 10 gone "$KPID" || fail "kvstore source still running"
[ -f "$T/b-disk.img" ] && [ ! -e "$T/b-disk.img.incoming" ] ||
	fail "destination disk image not committed"
sleep 3
kill -TERM "$LEDGER"; wait "$LEDGER"
wait "$BENCH"; brc=$?
[ $brc -eq 0 ] || fail "redis-benchmark exited $brc: $(cat "$T/bench.out")"
grep -qiE 'error|refused|reset' "$T/bench.out" && fail "redis-benchmark saw errors: $(cat "$T/bench.out")"
ok "redis-benchmark clean across the move: $(tr '\r' '\n' < "$T/bench.out" | grep -E 'requests per second' | tr '\n' ' ')"
ip netns exec "$CNS" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check.out" 2>&1 || fail "acknowledged writes lost: $(cat "$T/check.out" "$T/ledger.out")"
ok "ledger: $(cat "$T/ledger.out") / $(cat "$T/check.out")"
# The disk came along: B's kvstore restarted from the image has the data.
ctl "$SB" quit >/dev/null
wait_for 10 test ! -S "$SB" || fail "B's ftvm did not stop"
bg ip netns exec "$BNS" "$FTVM" run --image "$GUEST_DIR/kvstore.elf" --mem 128M \
	--net "$NETA" --disk "$T/b-disk.img" --control "$SB" --console "$T/kv-b2.log"
wait_for 30 pong || fail "kvstore on B's disk not answering: $(cat "$T/kv-b2.log")"
ip netns exec "$CNS" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check2.out" 2>&1 || fail "writes missing from the migrated disk: $(cat "$T/check2.out")"
ok "migrated disk holds every acknowledged write: $(cat "$T/check2.out")"
ctl "$SB" quit >/dev/null
