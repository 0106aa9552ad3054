#!/usr/bin/env bash
# The chaos run: a kvstore VM protected between hostA and hostB (witness
# hostW), a ledger writer (8 connections), redis-benchmark and a probe
# against it from the client namespace; then, CHAOS_TRIALS times (default
# 20): crash the primary host (SIGKILL of its ftd and its ftvm), wait for
# the backup to take over, restart the crashed host's ftd, wait until the
# new primary has protected the VM onto it again.  Afterwards every write
# the client saw acknowledged must be readable, and no client request may
# have failed (connections continue across every failover).  Prints a
# summary: trials, acked writes, lost (must be 0), failover time p50/p99
# (from the crash to the first answer on the probe's connection, and
# from the loss of the primary to the replica running, as ftd reports).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ha-lib.sh"
need_kvm
command -v redis-benchmark >/dev/null || skip "redis-benchmark not installed (redis-tools)"
TRIALS=${CHAOS_TRIALS:-20}
ha_hosts ftx$$
hftd A
hftd B
hftd W --witness

MAC=52:54:00:00:03:02 GIP=10.77.0.2
pong() { ip netns exec "$NSC" timeout 5 redis-cli -h $GIP ping 2>/dev/null | grep -q PONG; }
hctl A vm create kv --image "$GUEST_DIR/kvstore.elf" --mem 128M --disk-size 512M \
	--net "tap=kv0,mac=$MAC,ip=$GIP/24,bridge=br0" > /dev/null || fail "vm create"
hctl A vm start kv > /dev/null || fail "vm start"
wait_for 30 pong || fail "kvstore not answering"
hctl A protect kv hostB --witness hostW > "$T/prot.out" 2>&1 ||
	fail "protect: $(cat "$T/prot.out")"
ok "$(tail -1 "$T/prot.out")"

client_load "$NSC" $GIP 2 4
ip netns exec "$NSC" python3 "$TOP/tests/e2e/gapprobe.py" $GIP 6379 "$T/gaps" &
PROBE=$!
_pids+=($PROBE)
sleep 2

role() { hjson "$1" kv 'v["protection"]["role"] + " " + v["protection"]["state"] if v.get("protection") else v["state"]'; }
is() { [ "$(role "$1")" = "$2" ]; }
prim=A back=B
: > "$T/kills" ; : > "$T/fo_ms"
for i in $(seq 1 "$TRIALS"); do
	wait_for 60 is $prim 'primary protected' ||
		fail "trial $i: $prim not protected: $(hctl $prim status kv; tail -20 "$T/ftd$prim.log")"
	sleep 1
	acked=$(wc -l < "$T/ledger")
	date +%s.%N >> "$T/kills"
	hkill $prim
	wait_for 30 is $back 'primary unprotected' ||
		fail "trial $i: $back did not take over: $(hctl $back status kv; tail -20 "$T/ftd$back.log")"
	fo() { [ -n "$(hjson $back kv 'v["protection"]["failover"]["since_primary_lost_ms"]')" ]; }
	wait_for 10 fo || fail "trial $i: no failover in host$back's status: $(hctl $back status kv)"
	ms=$(hjson $back kv 'v["protection"]["failover"]["since_primary_lost_ms"]')
	echo "$ms" >> "$T/fo_ms"
	wait_for 30 pong || fail "trial $i: kvstore not answering on host$back"
	echo "trial $i: host$prim crashed with $acked writes acked; host$back took over ${ms%.*} ms after losing it"
	hftd $prim
	t=$prim prim=$back back=$t
done
wait_for 60 is $prim 'primary protected' ||
	fail "not protected after the last trial: $(hctl $prim status kv)"
sleep 1
kill -TERM "$PROBE" "$LEDGER"; wait "$LEDGER"; lrc=$?
kill -TERM "$BENCH" 2>/dev/null; wait "$BENCH" 2>/dev/null
[ $lrc -eq 0 ] || fail "the ledger client saw errors or broken connections: $(cat "$T/ledger.out")"
grep -qiE 'error|refused|reset' "$T/bench.out" &&
	fail "redis-benchmark saw errors: $(tr '\r' '\n' < "$T/bench.out" | tail -3)"
ip netns exec "$NSC" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check.out" 2>&1 || fail "acknowledged writes lost: $(cat "$T/check.out")"

python3 - "$T/kills" "$T/gaps" "$T/fo_ms" "$TRIALS" "$(cat "$T/ledger.out")" "$(cat "$T/check.out")" <<'EOF' || fail "summary"
import sys
kills = [float(x) for x in open(sys.argv[1])]
gaps = [tuple(map(float, l.split())) for l in open(sys.argv[2]) if l.strip()]
fo = sorted(float(x) for x in open(sys.argv[3]) if x.strip())
client = []
for k in kills:
    g = [b for a, b in gaps if a <= k + 0.002 and b > k]
    client.append((min(g) - k) * 1e3 if g else 0.0)
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
acked = sys.argv[5].split()[1]
missing = sys.argv[6].split()[3]
print("SUMMARY: trials %s, acked writes %s, lost %s; failover (crash -> the "
      "probe's next answer) p50 %.0f ms p99 %.0f ms max %.0f ms; ftd "
      "(primary lost -> replica running) p50 %.0f ms p99 %.0f ms"
      % (sys.argv[4], acked, missing, pct(client, 50), pct(client, 99),
         max(client), pct(fo, 50), pct(fo, 99)))
EOF
ok "chaos: $TRIALS crashes, $(cat "$T/ledger.out"), $(cat "$T/check.out")"
ha_check_logs
