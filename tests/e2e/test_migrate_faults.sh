#!/usr/bin/env bash
# Live-migration faults (ftvm level, two host namespaces).  One source VM
# (dirtier with a 16 MiB disk of random data) lives through all of them and
# keeps running and verifying its memory after each:
#  - the destination is killed mid-stream;
#  - the migration link goes down mid-stream (both sides time out; the
#    destination removes its half-received disk);
#  - one byte of the stream is flipped by a proxy (plain TCP: the record
#    checksum catches it and the source is told why; TLS: the record MAC);
#  - the destination's disk is full;
#  - the destination presents a certificate from another CA, an expired
#    certificate, or speaks plain TCP; the source speaks plain TCP to a TLS
#    destination.
# At the end the same VM migrates successfully.
. "$(dirname "$0")/lib.sh"
need_kvm
hosts2 ftf$$
certs "$T/pki"
TA=$(tls "$T/pki" hosta) TB=$(tls "$T/pki" hostb)
P=$T/pki
reports() { grep -c 'verified ok' "$1" 2>/dev/null || echo 0; }
reports_above() { [ "$(reports "$1")" -gt "$2" ]; }
gone() { ! kill -0 "$1" 2>/dev/null; }
SA=$T/a.sock SB=$T/b.sock
IOT="--io-timeout 3000"

head -c 16M /dev/urandom > "$T/a-disk.img"
bg ip netns exec "$ANS" "$FTVM" run --image "$GUEST_DIR/dirtier.elf" --mem 256M \
	--cmdline "--wss 192 --rate 64 --fill random" --disk "$T/a-disk.img" \
	--control "$SA" --console "$T/a.log"
SRC=$!
wait_for 30 reports_above "$T/a.log" 0 || fail "dirtier never reported: $(cat "$T/a.log")"

# The source runs, is not migrating, and its guest verifies on.
source_ok() {
	local n
	ctl "$SA" status | grep -q '"state":"running"' ||
		fail "source not running after $1: $(ctl "$SA" status)"
	n=$(reports "$T/a.log")
	wait_for 10 reports_above "$T/a.log" "$n" || fail "source guest stopped after $1"
	grep -q 'VERIFY FAIL' "$T/a.log" && fail "source memory broken after $1"
	ok "source VM still running and verifying after $1"
}
# Received bytes of the incoming side, from its status.
bytes_in() { ctl "$SB" status | python3 -c 'import json,sys; print(json.load(sys.stdin).get("bytes_in",0))'; }
received() { [ "$(bytes_in)" -gt $((20 << 20)) ]; }
# mig_bg ADDR OPTS...: migrate in the background into $T/mig.out/.err
mig_bg() {
	local a=$1; shift
	ctl "$SA" migrate "$a" "$@" > "$T/mig.out" 2> "$T/mig.err" &
	MIG=$!
}
mig_failed() { # PATTERN: the migration ended, failed, saying PATTERN
	wait "$MIG"; local rc=$?
	[ $rc -eq 1 ] || fail "migrate exited $rc: $(cat "$T/mig.out" "$T/mig.err")"
	grep -q '"state":"running"' "$T/mig.out" || fail "no failure reply: $(cat "$T/mig.out" "$T/mig.err")"
	grep -qiE -- "$1" "$T/mig.out" || fail "failure reply lacks /$1/: $(cat "$T/mig.out")"
	ok "migrate said: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["error"])' "$T/mig.out")"
}
slow_link() { ip netns exec "$ANS" tc qdisc replace dev mig root tbf rate 200mbit burst 256kb latency 100ms; }
fast_link() { ip netns exec "$ANS" tc qdisc del dev mig root 2>/dev/null || true; }

# 1. the destination dies mid-stream
slow_link
incoming "$BNS" "$B_IP" "$T/i1" $TB --control "$SB" --console /dev/null \
	--disk "$T/b-disk.img" --disk-size 16M $IOT
mig_bg "$INC_ADDR" $TA $IOT
wait_for 30 received || fail "no data reached the destination"
kill -9 "$INC_PID"
mig_failed "closed the connection|fell silent"
source_ok "the destination was killed"

# 2. the link goes down mid-stream
incoming "$BNS" "$B_IP" "$T/i2" $TB --control "$SB" --console /dev/null \
	--disk "$T/b-disk.img" --disk-size 16M $IOT
mig_bg "$INC_ADDR" $TA $IOT
wait_for 30 received || fail "no data reached the destination"
ip -n "$ANS" link set mig down
mig_failed "fell silent|link"
wait_for 15 gone "$INC_PID" || fail "destination still waiting after the link cut"
wait "$INC_PID"; rc=$?
[ $rc -eq 125 ] || fail "destination exited $rc after the link cut (want 125)"
[ ! -e "$T/b-disk.img.incoming" ] && [ ! -e "$T/b-disk.img" ] ||
	fail "destination left a disk image behind"
grep -q 'incoming migration failed' "$T/i2.err" || fail "destination did not say why: $(cat "$T/i2.err")"
ip -n "$ANS" link set mig up
ip -n "$BNS" link set mig up
source_ok "the link went down"
fast_link

# 3. one flipped byte, plain TCP: the stream checksum, reported to the source
incoming "$BNS" "$B_IP" "$T/i3" --insecure --control "$SB" --console /dev/null \
	--disk "$T/b-disk.img" --disk-size 16M $IOT
rm -f "$T/port"
ip netns exec "$BNS" python3 "$TOP/tests/e2e/flipproxy.py" "$B_IP" "$T/port" "$INC_ADDR" 5000000 &
_pids+=($!)
wait_for 10 test -s "$T/port" || fail "proxy did not start"
mig_bg "$B_IP:$(cat "$T/port")" --insecure $IOT
mig_failed "refused the VM.*checksum"
wait_for 15 gone "$INC_PID" || fail "destination still running after a corrupt stream"
source_ok "a corrupt stream (plain TCP)"

# ... and over TLS: the record MAC fails at the destination
incoming "$BNS" "$B_IP" "$T/i4" $TB --control "$SB" --console /dev/null \
	--disk "$T/b-disk.img" --disk-size 16M $IOT
rm -f "$T/port"
ip netns exec "$BNS" python3 "$TOP/tests/e2e/flipproxy.py" "$B_IP" "$T/port" "$INC_ADDR" 5000000 &
_pids+=($!)
wait_for 10 test -s "$T/port" || fail "proxy did not start"
mig_bg "$B_IP:$(cat "$T/port")" $TA $IOT
mig_failed "TLS session failed|closed the connection"
wait_for 15 gone "$INC_PID" || fail "destination still running after a corrupt TLS stream"
grep -qiE 'mac|decrypt|tls' "$T/i4.err" || fail "destination did not name the TLS failure: $(cat "$T/i4.err")"
source_ok "a corrupt stream (TLS)"

# 4. the destination's disk is full
mkdir -p "$T/small"
mount -t tmpfs -o size=4m tmpfs "$T/small" || skip "cannot mount a tmpfs"
on_exit "umount '$T/small'"
incoming "$BNS" "$B_IP" "$T/i5" $TB --control "$SB" --console /dev/null \
	--disk "$T/small/disk.img" --disk-size 16M $IOT
mig_bg "$INC_ADDR" $TA $IOT
mig_failed "no space left on device"
wait_for 15 gone "$INC_PID" || fail "destination still running with a full disk"
[ -z "$(ls -A "$T/small")" ] || fail "destination left files on its full disk: $(ls "$T/small")"
source_ok "a full destination disk"

# 5. certificates and plain peers: refused at connect, nothing moves
cert_case() { # WHAT DEST-OPTS... -- SOURCE-OPTS... ; PATTERN in $PAT
	local what=$1; shift
	local dopts=() sopts=()
	while [ "$1" != -- ]; do dopts+=("$1"); shift; done; shift
	sopts=("$@")
	incoming "$BNS" "$B_IP" "$T/ic" "${dopts[@]}" --control "$SB" --console /dev/null --timeout 20
	mig_bg "$INC_ADDR" "${sopts[@]}" $IOT
	mig_failed "$PAT"
	kill "$INC_PID" 2>/dev/null; wait "$INC_PID" 2>/dev/null
	source_ok "$what"
}
PAT="cannot connect.*(certificate|unknown CA|expired|name)"
cert_case "a destination certificate from another CA" \
	--ca "$P/ca.crt" --cert "$P/other/hostb.crt" --key "$P/other/hostb.key" -- $TA --peer-name hostb
cert_case "an expired destination certificate" \
	--ca "$P/ca.crt" --cert "$P/old/hostb.crt" --key "$P/old/hostb.key" -- $TA --peer-name hostb
cert_case "a destination certificate for another name" \
	$TB -- $TA --peer-name hostc
PAT="cannot connect.*(TLS|closed|refused)"
cert_case "a plain-TCP destination" --insecure -- $TA
PAT="closed the connection"
cert_case "a plain-TCP source" $TB -- --insecure
grep -q "not speaking TLS" "$T/ic.err" || fail "the TLS destination did not name the plain-TCP peer: $(cat "$T/ic.err")"

# Finally the same VM moves.
incoming "$BNS" "$B_IP" "$T/i9" $TB --peer-name hosta --control "$SB" --console "$T/b.log" \
	--disk "$T/b-disk.img" --disk-size 16M
ctl "$SA" migrate "$INC_ADDR" $TA --peer-name hostb > "$T/mig.out" 2> "$T/mig.err" ||
	fail "final migration: $(cat "$T/mig.out" "$T/mig.err")"
wait_for 10 gone "$SRC" || fail "source still running after the final move"
wait_for 20 reports_above "$T/b.log" 0 || fail "dirtier silent on B"
cmp "$T/a-disk.img" "$T/b-disk.img" || fail "the disk image differs after the move"
ok "after all faults the VM moved: $(cat "$T/mig.out"); disk identical"
ctl "$SB" quit >/dev/null
