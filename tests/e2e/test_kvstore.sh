#!/usr/bin/env bash
# The kvstore guest serves Debian's redis-cli and redis-benchmark over a
# TAP link, keeps every acknowledged write across kill -9 of its VMM, and
# answers malformed requests with Redis's protocol errors while it keeps
# serving everyone else.
#
# Two namespaces: "host" runs ftvm, its TAP enslaved to a bridge br0;
# "client" holds the other end of a veth pair on that bridge, and every
# client runs there.
. "$(dirname "$0")/lib.sh"
need_kvm
KVSTORE=$GUEST_DIR/kvstore.elf
[ -f "$KVSTORE" ] || skip "no $KVSTORE (make guests)"
for t in redis-cli redis-benchmark python3; do
	command -v $t >/dev/null || skip "$t not installed"
done

H=ftk$$-h C=ftk$$-c
GIP=10.78.0.2 CIP=10.78.0.1
netns "$H"
netns "$C"
ip -n "$H" link set lo up
ip -n "$C" link set lo up
ip -n "$H" link add br0 type bridge || fail "bridge"
ip -n "$H" link add veth0 type veth peer name veth1 netns "$C" || fail "veth"
ip -n "$H" link set veth0 master br0
ip -n "$H" link set veth0 up
ip -n "$H" link set br0 up
ip -n "$C" addr add "$CIP/24" dev veth1
ip -n "$C" link set veth1 up

truncate -s 512M "$T/disk.img"
VMPID=
# start_vm LOG: boot kvstore on the disk; wait until it listens.
start_vm() {
	local log=$1
	bg ip netns exec "$H" "$FTVM" run --image "$KVSTORE" --mem 256M \
		--disk "$T/disk.img" --console "$log" \
		--net tap=ftkt0,mac=52:54:00:78:00:02,ip=$GIP/24,bridge=br0
	VMPID=$!
	wait_for 20 grep -q '^kvstore: listening on' "$log" ||
		fail "kvstore did not start: $(cat "$log")"
}
cli() { ip netns exec "$C" timeout 20 redis-cli -h "$GIP" "$@"; }
# expect_cli WANT ARGS...: redis-cli's output must be WANT.
expect_cli() {
	local want=$1 got; shift
	got=$(cli "$@" 2>&1) || fail "redis-cli $*: $got"
	[ "$got" = "$want" ] || fail "redis-cli $*: got '$got', want '$want'"
}

start_vm "$T/boot1.log"
grep -q '^kvstore: log: formatted 1048576 sectors' "$T/boot1.log" ||
	fail "blank disk not formatted: $(cat "$T/boot1.log")"
grep -q '^kvstore: replayed 0 entries, 0 keys' "$T/boot1.log" ||
	fail "replay line: $(cat "$T/boot1.log")"
ok "kvstore boots on a blank disk: $(grep listening "$T/boot1.log")"

# ---- Round trips with redis-cli -------------------------------------------
expect_cli PONG PING
expect_cli OK SET greeting "hello world"
expect_cli "hello world" GET greeting
expect_cli 1 INCR counter
expect_cli 2 INCR counter
expect_cli "" GET missing
expect_cli "ERR value is not an integer or out of range" INCR greeting
expect_cli 2 EXISTS greeting counter missing
expect_cli 1 DEL counter
expect_cli 1 DBSIZE
stats=$(cli FTSTATS | paste -sd' ')
[[ "$stats" == "acked_writes 4 keys 1 log_entries 4 "* ]] ||
	fail "FTSTATS: $stats"
# Interactive redis-cli asks COMMAND DOCS first; commands from stdin.
out=$(printf 'SET piped 42\nINCR piped\nGET piped\n' | cli) ||
	fail "redis-cli from stdin: $out"
[ "$out" = $'OK\n43\n43' ] || fail "redis-cli from stdin: $out"
ok "redis-cli SET/GET/INCR/DEL/EXISTS/DBSIZE/FTSTATS round trips"

# ---- redis-benchmark -------------------------------------------------------
for p in 16 1; do
	raw=$(ip netns exec "$C" timeout 300 redis-benchmark -h "$GIP" \
		-t ping,set,get,incr -n 20000 -P $p -q 2>&1) ||
		fail "redis-benchmark -P $p: $raw"
	# Any error reply or warning, anywhere in the output, fails the test.
	! grep -qiE 'err|warn' <<< "$raw" || fail "redis-benchmark -P $p: $raw"
	out=$(tr '\r' '\n' <<< "$raw" | grep 'requests per second')
	[ "$(grep -c . <<< "$out")" -eq 5 ] ||
		fail "redis-benchmark -P $p: $out"
	ok "redis-benchmark -P $p: $(sed 's/,.*//; s/requests per second/rps/' <<< "$out" | paste -sd' ')"
done
# Both runs' INCRs hit one key: none lost, none doubled.
expect_cli 40000 GET counter:__rand_int__
# 100k random keys, twice: memory in use stays what the live keys need
# (a 16-byte key and a 100-byte value take a 256-byte block) plus the
# connections' buffers, however often values are overwritten.
for run in 1 2; do
	ip netns exec "$C" timeout 300 redis-benchmark -h "$GIP" -t set \
		-n 100000 -r 100000 -d 100 -P 16 -q > /dev/null 2>&1 ||
		fail "random-key benchmark"
	read -r keys mem <<< "$(cli FTSTATS | paste - - |
		awk '$1 == "keys" { k = $2 } $1 == "mem_used" { m = $2 }
		     END { print k, m }')"
	[ "$mem" -le $((keys * 256 + 8 * 1024 * 1024)) ] ||
		fail "run $run: $keys keys use $mem bytes"
	ok "100k random-key SETs, run $run: $keys keys, mem_used $mem bytes"
done

# ---- Bad input -------------------------------------------------------------
cat > "$T/bad.py" <<'EOF'
import socket, sys

host = sys.argv[1]
fails = 0


def talk(data):
    s = socket.create_connection((host, 6379), timeout=10)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out


def check(data, want):
    global fails
    got = talk(data)
    if got != want:
        print("FAIL %r: got %r want %r" % (data[:60], got[:200], want))
        fails += 1


E = b"-ERR Protocol error: "
check(b"PING\r\n*1\r\n$-5\r\nPING\r\n", b"+PONG\r\n" + E + b"invalid bulk length\r\n")
check(b"*1\r\n$999999999999\r\n", E + b"invalid bulk length\r\n")
check(b"*1\r\n$524289\r\n", E + b"invalid bulk length\r\n")
check(b"*99999\r\n", E + b"invalid multibulk length\r\n")
check(b"*2\r\n$4\r\nECHO\r\n*1\r\n$1\r\nx\r\n", E + b"expected '$', got '*'\r\n")
check(b"*1\r\n$4\r\nPINGxx", E + b"expected CRLF\r\n")
check(b"SET \"a b\r\n", E + b"unbalanced quotes in request\r\n")
check(b"x" * 70000, E + b"too big inline request\r\n")
check(b"*3\r\n$3\r\nSET\r\n$524288\r\n" + b"k" * 524288 + b"\r\n$524288\r\n"
      + b"v" * 524288 + b"\r\nGET " + b"k" * 60000 + b"\r\nQUIT\r\n",
      b"+OK\r\n$-1\r\n+OK\r\n")
check(b"FOO bar\r\nQUIT\r\n",
      b"-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n+OK\r\n")
# A request cut short by the client's close is dropped, not executed.
check(b"PING\r\n*3\r\n$3\r\nSET\r\n$4\r\nhalf", b"+PONG\r\n")
# Many connections at once, each pipelining.
socks = [socket.create_connection((host, 6379), timeout=10) for _ in range(100)]
for s in socks:
    s.sendall(b"PING\r\n" * 100 + b"QUIT\r\n")
for s in socks:
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    if out != b"+PONG\r\n" * 100 + b"+OK\r\n":
        print("FAIL pipelined connection: %r" % out[:80])
        fails += 1
    s.close()
sys.exit(1 if fails else 0)
EOF
out=$(ip netns exec "$C" timeout 120 python3 "$T/bad.py" "$GIP" 2>&1) ||
	fail "bad input: $out"
expect_cli PONG PING
expect_cli "" GET half
ok "malformed requests get Redis's protocol errors; the guest keeps serving"

# ---- Crash recovery --------------------------------------------------------
# A loader pipelines SETs (and INCRs) on 8 connections and writes each key
# to its ledger only after the reply arrived; kill -9 the VMM mid-load.
cat > "$T/load.py" <<'EOF'
import socket, sys

host, ledger = sys.argv[1], open(sys.argv[2], "w")
conns = [socket.create_connection((host, 6379), timeout=10) for _ in range(8)]
n = 0
try:
    while True:
        for c, s in enumerate(conns):
            keys = ["crash:%d:%d" % (c, n + i) for i in range(16)]
            req = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                           % (len(k), k.encode(), len(k) + 40,
                              (k + "=" * 40).encode()) for k in keys)
            req += b"*2\r\n$4\r\nINCR\r\n$4\r\nctr0\r\n"
            s.sendall(req)
            want = 16 * 5
            buf = b""
            while len(buf) < want or not buf.endswith(b"\r\n") or \
                    buf.count(b"\r\n") < 17:
                d = s.recv(65536)
                if not d:
                    raise EOFError
                buf += d
            lines = buf.split(b"\r\n")
            assert lines[:16] == [b"+OK"] * 16, lines[:17]
            for k in keys:
                ledger.write("%s\n" % k)
            ledger.write("ctr0 %s\n" % lines[16][1:].decode())
            ledger.flush()
        n += 16
except (EOFError, OSError):
    pass
EOF
bg ip netns exec "$C" python3 "$T/load.py" "$GIP" "$T/ledger"
LOADPID=$!
wait_for 30 test -s "$T/ledger" || fail "loader made no progress"
sleep 2
kill -9 "$VMPID"
wait "$LOADPID" 2>/dev/null
acked=$(grep -c '^crash:' "$T/ledger")
maxctr=$(awk '$1 == "ctr0" { v = $2 } END { print v + 0 }' "$T/ledger")
[ "$acked" -gt 1000 ] || fail "only $acked writes acknowledged before the kill"
ok "kill -9 of the VMM after $acked acknowledged SETs (INCR ctr0 at $maxctr)"

start_vm "$T/boot2.log"
grep -qE '^kvstore: replayed [0-9]+ entries, [0-9]+ keys' "$T/boot2.log" ||
	fail "no replay line: $(cat "$T/boot2.log")"
grep '^kvstore: log: ' "$T/boot2.log" || true
# Every acknowledged key, through redis-cli (commands on stdin).
grep '^crash:' "$T/ledger" | sed 's/^/GET /' > "$T/gets"
grep '^crash:' "$T/ledger" | sed 's/$/========================================/' > "$T/want"
ip netns exec "$C" timeout 300 redis-cli -h "$GIP" < "$T/gets" > "$T/got" ||
	fail "redis-cli verification failed"
if ! cmp -s "$T/want" "$T/got"; then
	diff "$T/want" "$T/got" | head -5
	fail "acknowledged writes lost: $(diff "$T/want" "$T/got" | grep -c '^<') of $acked"
fi
ctr=$(cli GET ctr0)
[ "$ctr" -ge "$maxctr" ] || fail "INCR ctr0 acknowledged $maxctr, recovered $ctr"
ok "after restart: $(grep replayed "$T/boot2.log" | sed 's/kvstore: //'); all $acked acknowledged SETs present, ctr0 $ctr >= $maxctr"

# The state survives a clean second restart too, with no tail to cut.
kill -9 "$VMPID"
wait "$VMPID" 2>/dev/null
start_vm "$T/boot3.log"
! grep -q 'truncated' "$T/boot3.log" || fail "second restart cut the log"
expect_cli "hello world" GET greeting
expect_cli "$ctr" GET ctr0
ok "a second restart replays the same log: $(grep replayed "$T/boot3.log" | sed 's/kvstore: //')"

# ---- Save and restore ---------------------------------------------------------
# A running kvstore is saved to a file and restored: the data is intact, a
# client connection that sat idle across the save/restore carries on (its
# TCP state lives in guest memory), and the guest keeps answering.
kill -9 "$VMPID"
wait "$VMPID" 2>/dev/null
S=$T/kv.sock
NET=tap=ftkt0,mac=52:54:00:78:00:02,ip=$GIP/24,bridge=br0
bg ip netns exec "$H" "$FTVM" run --image "$KVSTORE" --mem 256M --disk "$T/disk.img" \
	--console "$T/boot4.log" --net "$NET" --control "$S"
VMPID=$!
wait_for 20 grep -q '^kvstore: listening on' "$T/boot4.log" || fail "kvstore (4) did not start"
expect_cli OK SET before-save yes
ip netns exec "$C" python3 - "$GIP" "$T/restored" > "$T/idle.log" 2>&1 <<'PY' &
import os, socket, sys, time
ip, flag = sys.argv[1], sys.argv[2]
s = socket.create_connection((ip, 6379), timeout=30)
def cmd(*args):
    s.sendall(b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    buf = b""
    while not buf.endswith(b"\r\n"):
        buf += s.recv(4096)
    return buf
assert cmd(b"SET", b"idle", b"1") == b"+OK\r\n"
print("connected", flush=True)
while not os.path.exists(flag):
    time.sleep(0.05)
assert cmd(b"INCR", b"idle") == b":2\r\n", "INCR after restore"
assert cmd(b"GET", b"before-save") == b"$3\r\nyes\r\n"
print("idle connection carried on after restore", flush=True)
PY
idle=$!
_pids+=($idle)
wait_for 10 grep -q connected "$T/idle.log" || fail "idle client: $(cat "$T/idle.log")"
ctl "$S" save "$T/kv.fts" --stop >/dev/null || fail "save kvstore"
wait_for 10 test ! -S "$S" || fail "kvstore ftvm did not stop after save"
bg ip netns exec "$H" "$FTVM" restore --from "$T/kv.fts" --disk "$T/disk.img" \
	--net "$NET" --control "$S" --console "$T/restore.log"
VMPID=$!
wait_for 10 test -S "$S" || fail "kvstore restore failed: $(cat "$T/restore.log")"
touch "$T/restored"
wait "$idle" || fail "idle connection: $(cat "$T/idle.log")"
ok "$(tail -n1 "$T/idle.log")"
expect_cli yes GET before-save
expect_cli "hello world" GET greeting
expect_cli "$ctr" GET ctr0
out=$(ip netns exec "$C" timeout 60 redis-benchmark -h "$GIP" -t set,get -n 2000 -q 2>&1) ||
	fail "redis-benchmark after restore: $out"
ok "after restore: data intact, serving ($(tr '\r' '\n' <<< "$out" | grep -c 'requests per second') benchmarks ran)"
