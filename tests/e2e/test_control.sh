#!/usr/bin/env bash
# The control socket: every command, every malformed request answered with
# a clear error while the VM keeps running; a failed save leaves the VM
# running and the target file untouched.
. "$(dirname "$0")/lib.sh"
need_kvm
S=$T/vm.sock
bg "$FTVM" run --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin \
	--control "$S" --console "$T/console.log"
wait_for 10 test -S "$S" || fail "control socket never appeared"
spins() { grep -c spin "$T/console.log"; }
spins_above() { [ "$(spins)" -gt "$1" ]; }

# raw LINE: send one line, print the reply line
raw() { python3 - "$S" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while not buf.endswith(b"\n"):
    d = s.recv(65536)
    if not d: break
    buf += d
print(buf.decode().strip())
PY
}
expect_reply() { # LINE PATTERN
	local r; r=$(raw "$1")
	grep -qE -- "$2" <<< "$r" || fail "request ${1:0:80} -> $r, expected /$2/"
	ok "${1:0:80} -> $r"
}
expect_reply '{"cmd":"status"}' '"ok":true,"state":"running"'
expect_reply 'not json' '"ok":false,"error":"bad JSON'
expect_reply '[1,2]' 'must be a JSON object'
expect_reply '{"cmd":7}' 'no \\"cmd\\" string'
expect_reply '{"cmd":"launch"}' 'unknown command \\"launch\\"'
expect_reply '{"cmd":"status","id":42}' '"id":42'
expect_reply '{"cmd":"status","cmd":"quit"}' 'bad JSON.*duplicate'
expect_reply '{"cmd":"resume"}' 'not paused'
expect_reply '{"cmd":"save"}' 'save needs \\"file\\"'
expect_reply '{"cmd":"save","file":"/x","stop":"yes"}' '\\"stop\\" must be true or false'
expect_reply '{"cmd":"dump","file":5}' 'dump needs'
# A request over 64 KiB is refused and the connection closed.
big=$(python3 -c 'print("{\"cmd\":\"status\",\"pad\":\"" + "x"*70000 + "\"}")')
expect_reply "$big" 'longer than 65535 bytes'

# Pause/resume really stop and restart the guest.
ctl "$S" pause >/dev/null || fail "pause"
expect_reply '{"cmd":"pause"}' 'already paused'
n1=$(spins); sleep 2.2
n2=$(spins)
[ "$n1" -eq "$n2" ] || fail "guest printed while paused ($n1 -> $n2)"
ctl "$S" resume >/dev/null || fail "resume"
wait_for 5 spins_above "$n2" || fail "guest did not resume"
ok "pause stops the guest, resume restarts it"

# A failed save: target directory missing; an existing file stays intact.
echo precious > "$T/keep.fts"; chmod 0444 "$T/keep.fts"
r=$(ctl "$S" save "$T/missing-dir/vm.fts") && fail "save into a missing dir succeeded: $r"
grep -q 'the VM keeps running' <<< "$r" || fail "save error unclear: $r"
chattr +i "$T/keep.fts" 2>/dev/null && on_exit "chattr -i '$T/keep.fts'"
r=$(ctl "$S" save "$T/keep.fts")
if lsattr "$T/keep.fts" 2>/dev/null | grep -q -- '-i-'; then
	[ "$(cat "$T/keep.fts")" = precious ] || fail "immutable file changed"
fi
expect_reply '{"cmd":"status"}' '"state":"running"'
n3=$(spins)
wait_for 5 spins_above "$n3" || fail "guest stopped after a failed save"
ok "failed save leaves the VM running"

# 16 clients at most; the VM survives a 17th.
python3 - "$S" <<'PY' || fail "client limit"
import socket, sys
socks = []
for i in range(17):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); socks.append(s)
s = socks[-1]; s.settimeout(5)
try:  # refused = closed by the server, before or after our request
    s.sendall(b'{"cmd":"status"}\n')
    extra = s.recv(100)
except (BrokenPipeError, ConnectionResetError, socket.timeout):
    extra = b""
assert extra == b"", "17th client was served"
s = socks[0]; s.settimeout(5); s.sendall(b'{"cmd":"status"}\n')
assert b'"ok":true' in s.recv(1000)
PY
ok "17th client refused, others served"

# A second ftvm refuses a live socket.
expect_fail 125 'in use by another ftvm' "$FTVM" run --image "$GUEST_DIR/hello.elf" \
	--mem 16M --cmdline spin --control "$S"
ctl "$S" quit >/dev/null || fail "quit"
wait_for 10 test ! -S "$S" || fail "socket not removed after quit"
ok "quit removes the socket"
