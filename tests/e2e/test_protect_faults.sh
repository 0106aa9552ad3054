#!/usr/bin/env bash
# Checkpoint protection (Remus) under stream faults, at the ftvm level: a
# kvstore VM with a 256 MiB disk on host A is protected to an
# `ftvm backup` on host B through tests/e2e/ckptproxy.py (plain TCP, so
# that the proxy can follow the record framing), while a ledger client
# writes keys over 8 connections from the client namespace.
#  1. flip: one byte of a PAGE_BATCH inside an epoch is flipped -> the
#     backup rejects the epoch (checksum), discards it and keeps the
#     previous one, its ERR reaches the primary (backup-lost, output
#     held); `protect` again resyncs and the clients carry on;
#  2. cut: the proxy closes both connections in the middle of an epoch ->
#     the backup discards it, the primary sees the loss; `protect` again
#     resyncs;
#  3. death mid-epoch: the proxy holds epoch E whole while SETs (batch a)
#     reach the guest, then lets E through and forwards epoch E+1 only up
#     to the DISK_WRITE carrying batch a's values (staged on the backup,
#     never committed) and stalls; more SETs (batch b) go to the primary's
#     disk meanwhile; no reply of either batch reaches the client; A's
#     ftvm is SIGKILLed; B counts the partial epoch as discarded, keeps
#     epoch E, and its replica image holds neither batch; B fails over
#     from epoch E: every acknowledged write is on B, the lost batches are
#     not - in the failed-over VM, on its disk image, and in a kvstore
#     restarted from that image;
#  4. a corrupt epoch of tens of MiB (a dirtier VM, 1 s epochs, pages
#     sent whole): the backup rejects it while the primary is still
#     sending it, and the primary still learns the backup's reason.
# Plain TCP (--insecure) so that the proxy can read the records; long
# --io-timeouts so that every loss here is the injected one.
. "$(dirname "$0")/lib.sh"
need_kvm
command -v redis-cli >/dev/null || skip "redis-cli not installed (redis-tools)"
hosts2 ftf$$
SA=$T/a.sock SB=$T/b.sock
IOT="--io-timeout 60000" # faults are injected on purpose: no timeouts
gone() { ! kill -0 "$1" 2>/dev/null; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d[k]
print(d)' "$1"; }
sa() { ctl "$SA" status > "$T/sa.json" || fail "status on A"; }
sb() { ctl "$SB" status > "$T/sb.json" || fail "status on B"; }
a_() { field "$1" < "$T/sa.json"; }
b_() { field "$1" < "$T/sb.json"; }
a_state() { sa; [ "$(a_ protection.state)" = "$1" ]; }
b_state() { sb; [ "$(b_ replica)" = "$1" ]; }
acked() { wc -l < "$T/ledger"; }
more_acked() { [ "$(acked)" -ge "$1" ]; }
pxlog() { grep -q "$1" "$T/px.log" 2>/dev/null; }
px() { echo "$*" > "$T/px.cmd.tmp" && mv "$T/px.cmd.tmp" "$T/px.cmd"; }

# The ledger client, with 120 s of patience instead of 10 (a reply may be
# held for seconds on purpose here; what counts is that none is lost).
cat > "$T/ledger-slow.py" <<'EOF'
import socket, sys
sys.path.insert(0, sys.argv[1])
import ledger
def connect(host, port):
    s = socket.create_connection((host, port), timeout=120)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile('rb')
ledger.connect = connect
sys.argv = ['ledger.py'] + sys.argv[2:]
sys.exit(ledger.main())
EOF

# held.py: SETs whose replies the primary must hold (their epoch never
# commits), and checks that they are nowhere on the backup.
#   held.py send HOST DIR TOKEN N   open two connections and PING on each
#       (answered: they are in a committed epoch), touch DIR/ready; on
#       DIR/go-a send N SETs lost:a:NNN = lostval-TOKEN-a-NNN in one go on
#       the first, touch DIR/sent-a; the same for b on the second; on
#       DIR/abort count the reply bytes that arrived, reset the connections
#       (so that no retransmission reaches a failed-over copy) and print
#       "replies: N bytes"; exit 0 only for none
#   held.py check HOST TOKEN N     GET each lost key: print "present P of
#       2N" (P counts non-nil replies); exit 0 only if P is 0
#   held.py scan FILE TOKEN N      print how many of the 2N values the
#       file (a disk image) contains
cat > "$T/held.py" <<'EOF'
import mmap, os, socket, struct, sys, time

def key(b, i): return 'lost:%s:%03d' % (b, i)
def val(tok, b, i): return 'lostval-%s-%s-%03d' % (tok, b, i)
def cmd(*args):
    out = b'*%d\r\n' % len(args)
    for a in args:
        a = a.encode()
        out += b'$%d\r\n%s\r\n' % (len(a), a)
    return out
def wait_file(p):
    while not os.path.exists(p):
        time.sleep(0.02)
def touch(p): open(p, 'w').close()

def connect(host):
    s = socket.create_connection((host, 6379), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b'PING\r\n')
    got = b''
    while not got.endswith(b'\r\n'):
        got += s.recv(64)
    if got != b'+PONG\r\n':
        raise RuntimeError('PING answered %r' % got)
    return s

def send(host, d, tok, n):
    # A connection per batch: on one, batch b would wait in the client's
    # TCP behind batch a, which is never acknowledged.
    conns = {b: connect(host) for b in 'ab'}
    touch(d + '/ready')
    for b in 'ab':
        wait_file('%s/go-%s' % (d, b))
        conns[b].sendall(b''.join(cmd('SET', key(b, i), val(tok, b, i))
                                  for i in range(n)))
        touch('%s/sent-%s' % (d, b))
    wait_file(d + '/abort')
    got = 0
    for s in conns.values():
        s.setblocking(False)
        try:
            while True:
                r = s.recv(1 << 16)
                if not r:
                    break
                got += len(r)
        except BlockingIOError:
            pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack('ii', 1, 0))
        s.close()
    print('replies: %d bytes' % got)
    return 0 if got == 0 else 1

def check(host, tok, n):
    s = socket.create_connection((host, 6379), timeout=30)
    f = s.makefile('rb')
    keys = [key(b, i) for b in 'ab' for i in range(n)]
    s.sendall(b''.join(cmd('GET', k) for k in keys))
    present = 0
    for k in keys:
        line = f.readline()
        if line.startswith(b'$-1'):
            continue
        if not line.startswith(b'$'):
            print('GET %s: %r' % (k, line))
            return 2
        f.read(int(line[1:]) + 2)
        present += 1
    print('present %d of %d' % (present, len(keys)))
    return 0 if present == 0 else 1

def scan(path, tok, n):
    pre = ('lostval-%s-' % tok).encode()
    found = set()
    with open(path, 'rb') as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        at = m.find(pre)
        while at >= 0:
            found.add(m[at:at + len(pre) + 5].decode(errors='replace'))
            at = m.find(pre, at + 1)
    print(len(found & {val(tok, b, i) for b in 'ab' for i in range(n)}))
    return 0

a = sys.argv[1:]
if a[0] == 'send':
    sys.exit(send(a[1], a[2], a[3], int(a[4])))
if a[0] == 'check':
    sys.exit(check(a[1], a[2], int(a[3])))
sys.exit(scan(a[1], a[2], int(a[3])))
EOF
TOK=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ') N=20
scan() { python3 "$T/held.py" scan "$1" "$TOK" $N; }
scanned() { [ "$(scan "$1")" -ge "$2" ]; }

MAC=52:54:00:00:01:03 GIP=10.77.0.2
NET="tap=kv0,mac=$MAC,ip=$GIP/24,bridge=br0"
truncate -s 256M "$T/a-disk.img"
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/kvstore.elf" --mem 128M \
	--net "$NET" --disk "$T/a-disk.img" --control "$SA" --console "$T/kv-a.log"
KPID=$!
pong() { ip netns exec "$CNS" timeout 5 redis-cli -h $GIP ping | grep -q PONG; }
wait_for 30 pong || fail "kvstore not answering: $(cat "$T/kv-a.log")"
ok "kvstore answers on A"

backup "$BNS" "$B_IP" "$T/bk.out" --insecure $IOT --control "$SB" \
	--console "$T/kv-b.log" --net "$NET" --disk "$T/b-disk.img" --disk-size 256M
ip netns exec "$BNS" python3 "$TOP/tests/e2e/ckptproxy.py" "$B_IP" "$T/px.port" \
	"$BK_ADDR" "$T/px.cmd" "$T/px.log" > "$T/px.out" 2>&1 &
_pids+=($!)
wait_for 10 test -s "$T/px.port" || fail "proxy did not start: $(cat "$T/px.out")"
PX=$B_IP:$(cat "$T/px.port")

ip netns exec "$CNS" python3 "$T/ledger-slow.py" "$TOP/tests/e2e" write $GIP 6379 \
	"$T/ledger" 8 > "$T/ledger.out" 2>&1 &
LEDGER=$!
_pids+=($LEDGER)
wait_for 30 more_acked 100 || fail "the ledger client gets no answers: $(cat "$T/ledger.out")"

# protect OUT: protect A through the proxy; fails the test unless it
# answers "protected".
protect() {
	ctl "$SA" protect "$PX" --insecure $IOT > "$1" 2> "$1.err" ||
		fail "protect: $(cat "$1" "$1.err" "$T/bk.out.err")"
	[ "$(field state < "$1")" = protected ] || fail "not protected: $(cat "$1")"
}
protect "$T/prot.out"
ok "protected through the proxy: sync $(field sync_ms < "$T/prot.out") ms"
wait_for 30 b_state replica || fail "B: $(cat "$T/sb.json")"
sleep 1

# lost WHAT PATTERN-A PATTERN-B D: the fault of epoch $X was seen by both
# sides: A lost its backup (its error matches PATTERN-A) and holds its
# output; B keeps epoch X-1, counts D discarded epochs, and its error
# matches PATTERN-B.
lost() {
	local what=$1 pa=$2 pb=$3 d=$4 r1 r2
	wait_for 30 a_state backup-lost || fail "$what: A did not lose its backup: $(cat "$T/sa.json")"
	wait_for 30 b_state primary-lost || fail "$what: B did not lose its primary: $(cat "$T/sb.json")"
	[ "$(a_ protection.epoch)" -eq $((X - 1)) ] ||
		fail "$what: A's last acked epoch is $(a_ protection.epoch), not $((X - 1))"
	grep -qE -- "$pa" <<< "$(a_ protection.error)" ||
		fail "$what: A's error lacks /$pa/: $(cat "$T/sa.json")"
	[ "$(b_ discarded)" -eq "$d" ] || fail "$what: B discarded $(b_ discarded) epochs, not $d: $(cat "$T/sb.json")"
	[ "$(b_ epoch)" -eq $((X - 1)) ] || fail "$what: B's replica is at epoch $(b_ epoch), not $((X - 1))"
	[ "$(b_ complete)" = True ] || fail "$what: B lost its committed replica: $(cat "$T/sb.json")"
	grep -qE -- "$pb" <<< "$(b_ last_error)" ||
		fail "$what: B's error lacks /$pb/: $(cat "$T/sb.json")"
	# Output commit: nothing leaves A while no backup has its epoch.
	r1=$(a_ protection.net_released_frames)
	[ "$(a_ protection.net_held_frames)" -gt 0 ] || fail "$what: A holds no output: $(cat "$T/sa.json")"
	sleep 1
	sa
	r2=$(a_ protection.net_released_frames)
	[ "$r1" -eq "$r2" ] || fail "$what: A released $((r2 - r1)) frames without a backup"
	ok "$what: epoch $X discarded on B ($(b_ last_error)); B keeps epoch $((X - 1)); A: $(a_ protection.error); $(a_ protection.net_held_frames) frames held"
}

# resync WHAT N: protect again (the N-th resync): protected, the held
# output leaves, the clients carry on.
resync() {
	local what=$1 n=$2 c t0 ms
	c=$(acked)
	t0=$(date +%s%N)
	protect "$T/resync$n.out"
	ms=$((($(date +%s%N) - t0) / 1000000))
	sa
	[ "$(a_ protection.state)" = protected ] || fail "$what: A after the resync: $(cat "$T/sa.json")"
	[ "$(a_ protection.resyncs)" -eq "$n" ] || fail "$what: $(a_ protection.resyncs) resyncs, not $n"
	wait_for 30 b_state replica || fail "$what: B after the resync: $(cat "$T/sb.json")"
	[ "$(b_ streams)" -eq $((n + 1)) ] || fail "$what: B saw $(b_ streams) streams, not $((n + 1))"
	[ "$(b_ epoch)" -ge "$X" ] || fail "$what: B's epoch $(b_ epoch) did not move past $((X - 1))"
	wait_for 60 more_acked $((c + 200)) || fail "$what: the clients did not carry on ($c -> $(acked) acked): $(cat "$T/ledger.out")"
	ok "$what: resynced in $(field sync_ms < "$T/resync$n.out") ms (the command took $ms ms), B at epoch $(b_ epoch), acked writes $c -> $(acked)"
}

# 1. A corrupt epoch: rejected by the checksum, the pair resyncs.
px flip
wait_for 30 pxlog 'flipped epoch' || fail "the proxy flipped nothing: $(cat "$T/px.log")"
X=$(sed -n 's/.*flipped epoch \([0-9]*\) .*/\1/p' "$T/px.log")
lost "flip" "refused epoch $X.*checksum" "PAGE_BATCH.*checksum mismatch" 1
resync "flip" 1

# 2. A truncated epoch: the connection closes in the middle of it.
px cut
wait_for 30 pxlog 'cut epoch' || fail "the proxy cut nothing: $(cat "$T/px.log")"
X=$(sed -n 's/.*cut epoch \([0-9]*\) .*/\1/p' "$T/px.log")
lost "cut" "no acknowledgement of epoch $X" "stream ends inside" 2
resync "cut" 2

# 3. The primary dies in the middle of an epoch.
mkdir "$T/h"
ip netns exec "$CNS" python3 "$T/held.py" send $GIP "$T/h" "$TOK" $N > "$T/held.out" 2>&1 &
HELD=$!
_pids+=($HELD)
wait_for 30 test -e "$T/h/ready" || fail "held client: $(cat "$T/held.out")"
px stall "lostval-$TOK-a-"
wait_for 30 pxlog 'holding epoch' || fail "the proxy holds no epoch: $(cat "$T/px.log")"
E=$(sed -n 's/.*holding epoch \([0-9]*\) .*/\1/p' "$T/px.log")
# Batch a reaches the guest after epoch E's pause: it belongs to E+1.
touch "$T/h/go-a"
wait_for 30 scanned "$T/a-disk.img" $N || fail "batch a not on A's disk ($(scan "$T/a-disk.img") of $N)"
px release
wait_for 30 pxlog 'stalled epoch' || fail "the proxy did not stall: $(cat "$T/px.log")"
S=$(sed -n 's/.*stalled epoch \([0-9]*\) .*/\1/p' "$T/px.log")
[ "$S" -eq $((E + 1)) ] || fail "stalled epoch $S, not $((E + 1))"
pxlog "stalled epoch $S .*marker in record" ||
	fail "epoch $S does not carry batch a's disk write: $(cat "$T/px.log")"
touch "$T/h/go-b"
wait_for 30 scanned "$T/a-disk.img" $((2 * N)) || fail "batch b not on A's disk ($(scan "$T/a-disk.img") of $((2 * N)))"
sa
[ "$(a_ protection.state)" = protected ] && [ "$(a_ protection.epoch)" -eq "$E" ] ||
	fail "A while epoch $S is stalled: $(cat "$T/sa.json")"
sb
[ "$(b_ replica)" = replica ] && [ "$(b_ epoch)" -eq "$E" ] && [ "$(b_ discarded)" -eq 2 ] ||
	fail "B while epoch $S is stalled: $(cat "$T/sb.json")"
[ "$(scan "$T/b-disk.img.replica")" -eq 0 ] ||
	fail "B's replica image has $(scan "$T/b-disk.img.replica") values of uncommitted epochs"
touch "$T/h/abort"
wait "$HELD" || fail "a held SET was answered: $(cat "$T/held.out")"
ok "epoch $S stalled on the wire after $(sed -n 's/.*stalled epoch [0-9]* after \([0-9]* of [0-9]*\) records.*/\1/p' "$T/px.log") records (batch a's disk write staged on B); $((2 * N)) SETs on A's disk, $(cat "$T/held.out")"

before=$(acked)
kill -KILL "$KPID"
wait_for 10 gone "$KPID" || fail "A's ftvm survived SIGKILL"
wait_for 30 pxlog 'primary closed while stalled' || fail "proxy: $(cat "$T/px.log")"
wait_for 30 b_state primary-lost || fail "B did not notice: $(cat "$T/sb.json")"
[ "$(b_ discarded)" -eq 3 ] || fail "B did not discard the partial epoch $S: $(cat "$T/sb.json")"
[ "$(b_ discarded)" -ge 1 ] && [ "$(b_ epoch)" -eq "$E" ] && [ "$(b_ complete)" = True ] ||
	fail "B's replica after the primary's death: $(cat "$T/sb.json")"
grep -q "stream ends" <<< "$(b_ last_error)" || fail "B's error: $(cat "$T/sb.json")"
# The partial epoch staged batch a's disk write: it must not be applied.
[ "$(scan "$T/b-disk.img.replica")" -eq 0 ] ||
	fail "the discarded epoch's disk writes reached B's image ($(scan "$T/b-disk.img.replica") values)"
ok "A killed mid-epoch: B discarded epoch $S ($(b_ last_error)), keeps epoch $E"
ctl "$SB" failover > "$T/fo.out" || fail "failover: $(cat "$T/fo.out" "$T/bk.out.err")"
[ "$(field epoch < "$T/fo.out")" -eq "$E" ] || fail "failed over from the wrong epoch: $(cat "$T/fo.out")"
sb
[ "$(b_ failover.role)" = primary ] && [ "$(b_ failover.epoch)" -eq "$E" ] ||
	fail "B's status: $(cat "$T/sb.json")"
ok "failed over from epoch $E: $(cat "$T/fo.out")"
wait_for 30 pong || fail "kvstore on B not answering: $(cat "$T/kv-b.log")"
wait_for 120 more_acked $((before + 200)) || fail "the clients did not carry on on B ($before -> $(acked))"
kill -TERM "$LEDGER"; wait "$LEDGER"; lrc=$?
[ $lrc -eq 0 ] || fail "ledger client saw errors or broken connections: $(cat "$T/ledger.out")"
ip netns exec "$CNS" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check.out" 2>&1 || fail "acknowledged writes lost: $(cat "$T/check.out" "$T/ledger.out")"
ip netns exec "$CNS" python3 "$T/held.py" check $GIP "$TOK" $N > "$T/hc.out" 2>&1 ||
	fail "writes of the lost epochs are on B: $(cat "$T/hc.out")"
ok "B: ledger $(cat "$T/ledger.out") ($before before the crash); $(cat "$T/check.out"); lost SETs $(cat "$T/hc.out")"

# The disk: the failed-over image lacks the lost writes and holds the
# acknowledged ones.
[ -f "$T/b-disk.img" ] && [ ! -e "$T/b-disk.img.replica" ] ||
	fail "the replica's disk image was not put in place"
ctl "$SB" quit > /dev/null
wait_for 10 test ! -S "$SB" || fail "B's ftvm did not stop"
[ "$(scan "$T/b-disk.img")" -eq 0 ] || fail "$(scan "$T/b-disk.img") lost values on B's disk image"
bg ip netns exec "$BNS" "$FTVM" run --image "$GUEST_DIR/kvstore.elf" --mem 128M \
	--net "$NET" --disk "$T/b-disk.img" --control "$SB" --console "$T/kv-b2.log"
wait_for 30 pong || fail "kvstore on B's disk not answering: $(cat "$T/kv-b2.log")"
ip netns exec "$CNS" python3 "$TOP/tests/e2e/ledger.py" check $GIP 6379 "$T/ledger" \
	> "$T/check2.out" 2>&1 || fail "writes missing from the replica's disk: $(cat "$T/check2.out")"
ip netns exec "$CNS" python3 "$T/held.py" check $GIP "$TOK" $N > "$T/hc2.out" 2>&1 ||
	fail "writes of the lost epochs on B's disk: $(cat "$T/hc2.out")"
ok "the failed-over disk: $(cat "$T/check2.out"); lost SETs $(cat "$T/hc2.out"); $(grep replayed "$T/kv-b2.log")"

# 4. A corrupt epoch many times the size of a socket buffer: the backup
# rejects it at its first PAGE_BATCH while the primary is still sending
# the rest; the primary must still learn why (the backup reads on until
# the primary has read its ERR, instead of resetting the connection).
ctl "$SB" quit > /dev/null
SC=$T/c.sock SD=$T/d.sock
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/dirtier.elf" --mem 128M \
	--cmdline "--wss 32 --fill random" --control "$SC" --console "$T/d-a.log"
wait_for 30 grep -q 'dirtier: ready' "$T/d-a.log" || fail "dirtier: $(cat "$T/d-a.log")"
backup "$BNS" "$B_IP" "$T/bk2.out" --insecure $IOT --control "$SD" --console /dev/null
rm -f "$T/px.log"
ip netns exec "$BNS" python3 "$TOP/tests/e2e/ckptproxy.py" "$B_IP" "$T/px2.port" \
	"$BK_ADDR" "$T/px.cmd" "$T/px.log" > "$T/px2.out" 2>&1 &
_pids+=($!)
wait_for 10 test -s "$T/px2.port" || fail "proxy did not start: $(cat "$T/px2.out")"
ctl "$SC" protect "$B_IP:$(cat "$T/px2.port")" --insecure $IOT --interval 1000 --no-delta \
	> "$T/prot4.out" 2>&1 || fail "protect the dirtier: $(cat "$T/prot4.out" "$T/bk2.out.err")"
sc() { ctl "$SC" status > "$T/sc.json"; }
c_epochs() { sc && [ "$(field protection.epochs < "$T/sc.json")" -ge 3 ]; }
c_failed() { sc && grep -q '"error":' "$T/sc.json"; }
wait_for 60 c_epochs || fail "the dirtier's epochs do not commit: $(cat "$T/sc.json")"
big=$(python3 -c 'import json,sys; p=json.load(sys.stdin)["protection"]; print(p["bytes"] // p["epochs"])' < "$T/sc.json")
[ "$big" -gt $((8 << 20)) ] || fail "epochs of $big bytes are too small for this case"
px flip
wait_for 30 pxlog 'flipped epoch' || fail "the proxy flipped nothing: $(cat "$T/px.log")"
X=$(sed -n 's/.*flipped epoch \([0-9]*\) .*/\1/p' "$T/px.log")
# (no NIC, so no output to hold: the state goes back to unprotected)
wait_for 60 c_failed || fail "the dirtier's protection is not lost: $(cat "$T/sc.json")"
err=$(field protection.error < "$T/sc.json")
grep -qE "refused epoch $X: .*PAGE_BATCH.*checksum mismatch" <<< "$err" ||
	fail "the primary did not learn why epoch $X failed: $err"
d_lost() { ctl "$SD" status > "$T/sd.json" && grep -q primary-lost "$T/sd.json"; }
wait_for 30 d_lost || fail "B did not lose its primary: $(cat "$T/sd.json")"
[ "$(field discarded < "$T/sd.json")" -eq 1 ] && [ "$(field epoch < "$T/sd.json")" -eq $((X - 1)) ] ||
	fail "B after the big corrupt epoch: $(cat "$T/sd.json")"
ok "a corrupt epoch of ~$((big >> 20)) MiB: B keeps epoch $((X - 1)), A: $err"
