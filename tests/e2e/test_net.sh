#!/usr/bin/env bash
# The NIC end to end: a client namespace reaches the netecho guest through
# a veth pair, a bridge and the VM's TAP.  ARP, ICMP echo, UDP echo, TCP
# echo of 4 MiB of random data compared byte for byte, 40 concurrent
# connections, and an idle TCP connection that survives save --stop and
# restore (the guest's TCP state travels in its memory; the peer notices
# nothing but a pause).
. "$(dirname "$0")/lib.sh"
need_kvm
topo ftn$$
GIP=10.77.0.2
NET=tap=ftn0,mac=52:54:00:77:00:02,ip=$GIP/24,bridge=br0
S=$T/vm.sock
bg ip netns exec "$HNS" "$FTVM" run --image "$GUEST_DIR/netecho.elf" --mem 64M \
	--net "$NET" --control "$S" --console "$T/console.log"
wait_for 10 grep -q 'netecho: up' "$T/console.log" || fail "netecho did not come up: $(cat "$T/console.log")"
ok "$(grep 'netecho: up' "$T/console.log")"

ip netns exec "$CNS" ping -c 3 -i 0.2 -W 2 "$GIP" > "$T/ping" || fail "ping: $(cat "$T/ping")"
ok "ping: $(tail -n1 "$T/ping")"

cli() { ip netns exec "$CNS" timeout 60 python3 - "$GIP" "$@"; }
cli <<'PY' || fail "udp/tcp echo"
import os, socket, sys
ip = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
for n in (1, 100, 1472):
    d = os.urandom(n); u.sendto(d, (ip, 7))
    assert u.recvfrom(2000)[0] == d, "udp echo of %d bytes" % n
data = os.urandom(4 << 20)
s = socket.create_connection((ip, 7), timeout=10)
got = bytearray()
sent = 0
s.setblocking(False)
import select
while len(got) < len(data):
    w = [s] if sent < len(data) else []
    r, w, _ = select.select([s], w, [], 10)
    assert r or w, "tcp echo stalled at %d/%d" % (len(got), len(data))
    if w:
        try:
            sent += s.send(data[sent:sent + 65536])
        except BlockingIOError:
            pass
    if r:
        chunk = s.recv(1 << 20)
        assert chunk, "connection closed early"
        got += chunk
assert bytes(got) == data, "tcp echo corrupted data"
s.close()
print("ok: udp echo; tcp echo of 4 MiB intact")
PY
cli <<'PY' || fail "concurrent connections"
import socket, sys
ip = sys.argv[1]
conns = [socket.create_connection((ip, 7), timeout=10) for _ in range(40)]
for i, c in enumerate(conns):
    c.sendall(b"conn %d\n" % i)
for i, c in enumerate(conns):
    want = b"conn %d\n" % i
    got = b""
    while len(got) < len(want):
        got += c.recv(100)
    assert got == want, (got, want)
for c in conns:
    c.close()
print("ok: 40 concurrent connections echoed")
PY

# An idle connection across save --stop / restore.
ip netns exec "$CNS" python3 - "$GIP" "$T/restored" > "$T/idle.log" 2>&1 <<'PY' &
import os, socket, sys, time
ip, flag = sys.argv[1], sys.argv[2]
s = socket.create_connection((ip, 7), timeout=30)
s.sendall(b"before\n"); assert s.recv(100) == b"before\n"
print("connected", flush=True)
while not os.path.exists(flag):      # wait until the VM was restored
    time.sleep(0.05)
s.sendall(b"after restore\n")
got = b""
while not got.endswith(b"\n"):
    got += s.recv(100)
assert got == b"after restore\n", got
print("same connection works after restore", flush=True)
PY
idle=$!
_pids+=($idle)
wait_for 10 grep -q connected "$T/idle.log" || fail "idle client: $(cat "$T/idle.log")"
ctl "$S" save "$T/vm.fts" --stop >/dev/null || fail "save"
wait_for 10 test ! -S "$S" || fail "ftvm did not stop"
bg ip netns exec "$HNS" "$FTVM" restore --from "$T/vm.fts" --net "$NET" \
	--control "$S" --console "$T/console2.log"
wait_for 10 test -S "$S" || fail "restore failed"
touch "$T/restored"
wait "$idle" || fail "idle connection broke: $(cat "$T/idle.log")"
ok "$(tail -n1 "$T/idle.log")"
ctl "$S" quit >/dev/null
