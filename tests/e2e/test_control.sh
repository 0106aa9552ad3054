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

# migrate, migrate-cancel, resolve: every bad member answered, the VM runs.
expect_reply '{"cmd":"migrate"}' 'migrate needs \\"to\\"'
expect_reply '{"cmd":"migrate","to":7}' 'migrate needs \\"to\\"'
expect_reply '{"cmd":"migrate","to":"h:1"}' 'needs \\"ca\\", \\"cert\\" and \\"key\\".*insecure'
expect_reply '{"cmd":"migrate","to":"h:1","insecure":true,"downtime_ms":0}' 'downtime_ms.*1\.\.60000'
expect_reply '{"cmd":"migrate","to":"h:1","insecure":true,"downtime_ms":"5"}' 'downtime_ms.*1\.\.60000'
expect_reply '{"cmd":"migrate","to":"h:1","insecure":true,"bandwidth":-1}' 'bandwidth.*bytes per second'
expect_reply '{"cmd":"migrate","to":"h:1","insecure":true,"timeout_ms":5}' 'timeout_ms.*100\.\.600000'
expect_reply '{"cmd":"migrate","to":"h:1","insecure":"yes"}' 'must be true or false'
expect_reply '{"cmd":"migrate","to":"h:1","insecure":true,"compress":"zip"}' 'compress.*none.*lz4.*auto'
expect_reply '{"cmd":"migrate","to":"h:1","insecure":true,"xbzrle_cache":100}' 'xbzrle_cache.*8192'
expect_reply '{"cmd":"migrate","to":"h:1","ca":7,"cert":"c","key":"k"}' 'must be strings'
expect_reply '{"cmd":"migrate-cancel"}' 'no migration in progress'
expect_reply '{"cmd":"resolve","moved":true}' 'no migration is in doubt'
# nothing listens at the address: a clear failure, the VM keeps running
expect_reply '{"cmd":"migrate","to":"127.0.0.1:1","insecure":true}' 'cannot connect to 127\.0\.0\.1:1.*"state":"running"'
expect_reply '{"cmd":"status"}' '"state":"running"'
n=$(spins); wait_for 5 spins_above "$n" || fail "guest stopped after the refused migrations"
# The command line checks the same before it connects.
expect_fail 2 'migrate needs HOST:PORT' "$FTVM" ctl --control "$S" migrate
expect_fail 2 'downtime 0: not a whole number in 1\.\.60000' "$FTVM" ctl --control "$S" migrate h:1 --downtime 0
expect_fail 2 'bandwidth x: not a rate' "$FTVM" ctl --control "$S" migrate h:1 --bandwidth x
expect_fail 2 'compress zip: none, lz4 or auto' "$FTVM" ctl --control "$S" migrate h:1 --compress zip
expect_fail 2 "resolve needs 'moved' or 'stay'" "$FTVM" ctl --control "$S" resolve maybe
# ftvm incoming refuses what it cannot use, before it listens.
expect_fail 125 'incoming needs --listen' "$FTVM" incoming --insecure
expect_fail 125 'give --ca, --cert and --key.*or --insecure' "$FTVM" incoming --listen 127.0.0.1:0
expect_fail 125 'exclude each other' "$FTVM" incoming --listen 127.0.0.1:0 --insecure --ca x
expect_fail 125 'needs --disk-size' "$FTVM" incoming --listen 127.0.0.1:0 --insecure --disk "$T/d.img"
expect_fail 125 'timeout 0: not a whole number' "$FTVM" incoming --listen 127.0.0.1:0 --insecure --timeout 0
expect_fail 125 'bad address|invalid|resolve|port' "$FTVM" incoming --listen nohost:notaport --insecure
expect_fail 125 'no source connected within 1 s' "$FTVM" incoming --listen 127.0.0.1:0 --insecure --timeout 1

# protect, unprotect, fence, failover: every bad member answered, the VM
# runs on unprotected.
expect_reply '{"cmd":"protect"}' 'protect needs \\"to\\"'
expect_reply '{"cmd":"protect","to":"h:1"}' 'protect needs \\"ca\\", \\"cert\\" and \\"key\\".*insecure'
expect_reply '{"cmd":"protect","to":"h:1","insecure":true,"interval_ms":4}' 'interval_ms.*5\.\.1000'
expect_reply '{"cmd":"protect","to":"h:1","insecure":true,"interval_ms":1001}' 'interval_ms.*5\.\.1000'
expect_reply '{"cmd":"protect","to":"h:1","insecure":true,"timeout_ms":99}' 'timeout_ms.*100\.\.600000'
expect_reply '{"cmd":"protect","to":"h:1","insecure":true,"netbuf":"tc"}' 'netbuf.*in-process.*nfqueue.*plug'
expect_reply '{"cmd":"protect","to":"h:1","insecure":true,"netbuf_bytes":100}' 'netbuf_bytes.*65536'
expect_reply '{"cmd":"protect","to":"h:1","insecure":true,"on_loss":"panic"}' 'on_loss.*hold.*continue'
expect_reply '{"cmd":"protect","to":"h:1","insecure":true,"delta":1}' 'delta.*true or false'
expect_reply '{"cmd":"protect","to":"h:1","insecure":true,"netbuf":"nfqueue"}' 'netbuf nfqueue needs the VM.s TAP'
expect_reply '{"cmd":"unprotect"}' 'not protected'
expect_reply '{"cmd":"fence"}' 'not protected'
expect_reply '{"cmd":"failover"}' 'not a backup'
# nothing listens: a clear failure, nothing held, the VM keeps running
expect_reply '{"cmd":"protect","to":"127.0.0.1:1","insecure":true}' 'cannot connect to the backup 127\.0\.0\.1:1.*"state":"unprotected"'
expect_reply '{"cmd":"status"}' '"state":"running"'
expect_reply '{"cmd":"unprotect"}' 'not protected'
n=$(spins); wait_for 5 spins_above "$n" || fail "guest stopped after the refused protections"
expect_fail 2 'protect needs HOST:PORT' "$FTVM" ctl --control "$S" protect
expect_fail 2 'interval 2: not a whole number in 5\.\.1000' "$FTVM" ctl --control "$S" protect h:1 --interval 2
expect_fail 2 'netbuf tc: in-process, nfqueue or plug' "$FTVM" ctl --control "$S" protect h:1 --netbuf tc
expect_fail 2 'on-loss x: hold or continue' "$FTVM" ctl --control "$S" protect h:1 --on-loss x
expect_fail 2 'netbuf-bytes 1: a size, 64K\.\.1G' "$FTVM" ctl --control "$S" protect h:1 --netbuf-bytes 1
# ftvm backup refuses what it cannot use, before it listens.
expect_fail 125 'backup needs --listen' "$FTVM" backup --insecure
expect_fail 125 'give --ca, --cert and --key.*or --insecure' "$FTVM" backup --listen 127.0.0.1:0
expect_fail 125 'needs --disk-size' "$FTVM" backup --listen 127.0.0.1:0 --insecure --disk "$T/d.img"
expect_fail 125 'bad address|invalid|resolve|port' "$FTVM" backup --listen nohost:notaport --insecure

# A second ftvm refuses a live socket.
expect_fail 125 'in use by another ftvm' "$FTVM" run --image "$GUEST_DIR/hello.elf" \
	--mem 16M --cmdline spin --control "$S"
ctl "$S" quit >/dev/null || fail "quit"
wait_for 10 test ! -S "$S" || fail "socket not removed after quit"
ok "quit removes the socket"
