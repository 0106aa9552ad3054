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

# Malformed frames through the real TAP: garbage, truncated and lying IPv4
# headers, bad checksums, TCP segments with wild sequence numbers and
# flags, oversized claims.  The guest drops them; it and the VMM survive.
ip netns exec "$CNS" python3 - "$GIP" <<'PY' || fail "raw frame barrage"
import random, socket, struct, subprocess, sys
ip = sys.argv[1]
subprocess.run(["ping", "-c", "1", "-W", "2", ip], stdout=subprocess.DEVNULL)
neigh = subprocess.run(["ip", "neigh", "show", ip], capture_output=True, text=True).stdout.split()
gmac = bytes.fromhex(neigh[neigh.index("lladdr") + 1].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("veth-c", 0))
me = s.getsockname()[4]
src, dst = socket.inet_aton("10.77.0.1"), socket.inet_aton(ip)
rnd = random.Random(1234)
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def ipv4(proto, payload, ihl=5, tot=None, good=True, frag=0):
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot or 20 + len(payload),
                    rnd.randrange(65536), frag, 64, proto, 0, src, dst)
    h += bytes(4 * (ihl - 5)) if ihl > 5 else b""
    c = csum(h) if good else rnd.randrange(65536)
    return h[:10] + struct.pack("!H", c) + h[12:] + payload
def tcp(dport, seq, ack, flags, payload=b"", good=True):
    h = struct.pack("!HHIIBBHHH", rnd.randrange(1024, 65536), dport, seq, ack,
                    5 << 4, flags, rnd.randrange(65536), 0, 0) + payload
    ph = src + dst + struct.pack("!BBH", 0, 6, len(h))
    c = csum(ph + h) if good else rnd.randrange(65536)
    return h[:16] + struct.pack("!H", c) + h[18:]
sent = 0
for i in range(6000):
    k = i % 10
    if k == 0:   body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 1500)))
    elif k == 1: body = ipv4(6, tcp(7, rnd.getrandbits(32), rnd.getrandbits(32), rnd.randrange(256)))
    elif k == 2: body = ipv4(6, tcp(7, rnd.getrandbits(32), 0, 0x02, good=False))
    elif k == 3: body = ipv4(17, b"\0" * 8, good=False)
    elif k == 4: body = ipv4(6, b"\0" * 4)                 # truncated TCP header
    elif k == 5: body = ipv4(6, tcp(7, 1, 1, 0x10), tot=1400)  # length lies
    elif k == 6: body = ipv4(1, b"\x08\0" + bytes(6), ihl=15)  # IHL past the end
    elif k == 7: body = ipv4(17, b"\0" * 20, frag=0x2001)   # a fragment
    elif k == 8: body = ipv4(6, tcp(9, rnd.getrandbits(32), rnd.getrandbits(32), 0x04))  # wild RST
    else:        body = b"\x00\x01\x08\x00\x06\x04" + bytes(rnd.randrange(256) for _ in range(22))
    ethertype = b"\x08\x06" if k == 9 else b"\x08\x00"
    frame = gmac + me + ethertype + body
    try:
        s.send(frame[:1514])
        sent += 1
    except OSError:
        pass                       # the kernel refused it: fine
assert sent > 5000, sent
print("ok: %d malformed frames sent" % sent)
PY
ip netns exec "$CNS" ping -c 2 -i 0.2 -W 2 "$GIP" >/dev/null || fail "guest stopped answering ping after malformed frames"
cli <<'PY' || fail "tcp after malformed frames"
import socket, sys
s = socket.create_connection((sys.argv[1], 7), timeout=10)
s.sendall(b"still here\n")
assert s.recv(100) == b"still here\n"
print("ok: guest still answers ping and TCP after the barrage")
PY
ctl "$S" status | grep -q '"state":"running"' || fail "VM not running after malformed frames"

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
