#!/usr/bin/env bash
# ftd peering: every way a destination can be wrong is refused before a
# byte of the VM moves, with an ftctl message that names the cause, and
# the VM keeps running on the source: unknown host, the host itself, no
# ftd there, a certificate from another CA, an expired certificate (theirs
# or ours), a certificate for another name, a plain-TCP peer, a source the
# destination does not know, a cut link; ours from another CA; a host
# of the cluster whose requests claim to come from another host (refused:
# the "from" must be the name in the caller's certificate).  Then both
# hosts in plain-TCP mode (--insecure-peers, migrate --insecure) move a VM
# for real; there, "from" is taken on trust.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ftd-lib.sh"
need_kvm
two_hosts ftp$$
ftd_start A
fa vm create vm1 --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin >/dev/null ||
	fail "create"
fa vm start vm1 >/dev/null || fail "start"
KEEPS='vm1 keeps running on hostA'

# still_here: vm1 runs on hostA, hostB has no vm1 (when its ftd runs).
still_here() {
	[ "$(vm_state fa --json vm status vm1)" = running ] || fail "vm1 not running on hostA"
	[ -z "${_ftd_pid[B]:-}" ] || [ "$(vm_state fb --json vm status vm1)" = absent ] ||
		fail "hostB kept a vm1: $(fb vm status vm1)"
}

expect_msg 1 "migration of vm1 to hostC failed: unknown host hostC: not in the peers file .*/confA/peers.*; $KEEPS" \
	fa migrate vm1 hostC
expect_msg 1 "vm1 already runs on hostA: nothing to move" fa migrate vm1 hostA
expect_msg 1 "cannot reach hostB at 10.88.0.2:7480: connection refused \(is ftd running there.*; $KEEPS" \
	fa migrate vm1 hostB
expect_msg 1 "^hostB +10.88.0.2:7480 +cannot reach hostB at 10.88.0.2:7480: connection refused" fa peers
still_here

# hostB with a certificate from another CA: hostA refuses it.
"$CERTS" init "$T/ca2" >/dev/null && "$CERTS" host "$T/ca2" hostB 10.88.0.2 >/dev/null ||
	fail "second CA"
cp -a "$T/confB" "$T/confB.good"
cp "$T/ca2/hostB.crt" "$T/ca2/hostB.key" "$T/confB/"
ftd_start B
expect_msg 1 "cannot reach hostB at 10.88.0.2:7480: the TLS handshake failed on a certificate: .*(unknown CA|unable to get local issuer).*; $KEEPS" \
	fa migrate vm1 hostB
expect_msg 1 "^hostB .* the TLS handshake failed on a certificate: hostB's certificate is not acceptable here: unknown CA" fa peers
still_here
ftd_stop B

# hostB with an expired certificate.
"$CERTS" expired "$T/ca" hostB 10.88.0.2 >/dev/null || fail "expired cert"
cp "$T/ca/hostB.crt" "$T/ca/hostB.key" "$T/confB/"
cp "$T/ca/ca.crt" "$T/confB/"
ftd_start B
grep -q "certificate .*hostB.crt expired on" "$T/ftdB.log" ||
	fail "hostB's ftd did not warn about its expired certificate: $(cat "$T/ftdB.log")"
expect_msg 1 "the TLS handshake failed on a certificate: .*certificate has expired.*; $KEEPS" \
	fa migrate vm1 hostB
still_here
ftd_stop B
rm -rf "$T/confB" && cp -a "$T/confB.good" "$T/confB"

# Our own certificate expired: refused before anything is sent.
cp -a "$T/confA" "$T/confA.good"
"$CERTS" expired "$T/ca" hostA 10.88.0.1 >/dev/null || fail "expired cert A"
cp "$T/ca/hostA.crt" "$T/ca/hostA.key" "$T/confA/"
ftd_start B
expect_msg 1 "migration of vm1 to hostB failed: this host's certificate .*/confA/hostA.crt expired on .*2020.*; $KEEPS" \
	fa migrate vm1 hostB
# Our certificate from another CA: hostB refuses it.
"$CERTS" host "$T/ca2" hostA 10.88.0.1 >/dev/null || fail "hostA cert from ca2"
cp "$T/ca2/hostA.crt" "$T/ca2/hostA.key" "$T/confA/"
expect_msg 1 "the TLS handshake failed on a certificate: hostB refused this host's certificate.*unknown CA.*; $KEEPS" \
	fa migrate vm1 hostB
still_here
rm -rf "$T/confA" && cp -a "$T/confA.good" "$T/confA"
ftd_stop B

# hostB presents a valid certificate for another name.
"$CERTS" host "$T/ca" hostX 10.88.0.2 >/dev/null || fail "hostX cert"
cp "$T/ca/hostX.crt" "$T/confB/hostB.crt"
cp "$T/ca/hostX.key" "$T/confB/hostB.key"
ftd_start B
expect_msg 1 "the TLS handshake failed on a certificate: .*(hostname mismatch|mismatch).*; $KEEPS" \
	fa migrate vm1 hostB
still_here
ftd_stop B
rm -rf "$T/confB" && cp -a "$T/confB.good" "$T/confB"

# A plain-TCP peer.
ftd_start B --insecure-peers
expect_msg 1 "cannot reach hostB at 10.88.0.2:7480: it does not speak TLS 1.3 \(a plain-TCP peer.*; $KEEPS" \
	fa migrate vm1 hostB
still_here
ftd_stop B

# hostB does not know hostA.
echo "hostC 10.88.0.3:7480" > "$T/confB/peers"
ftd_start B
expect_msg 1 "hostB refused: hostA is not a peer of hostB \(not in its peers file .*\); $KEEPS" \
	fa migrate vm1 hostB
expect_msg 1 "^hostB .* it refuses: hostA is not a peer of hostB" fa peers
still_here
ftd_stop B
rm -rf "$T/confB" && cp -a "$T/confB.good" "$T/confB"

# peer_raw WHO LINE...: send peer requests to hostB's ftd from hostA's
# namespace, over TLS with the certificate $T/ca/WHO.crt (or plain TCP if
# WHO is --plain), all on one connection; print the reply lines.
peer_raw() {
	ip netns exec "$NSA" python3 - "$T/ca" "$@" <<'PY'
import socket, ssl, sys
ca, who, lines = sys.argv[1], sys.argv[2], sys.argv[3:]
s = socket.create_connection(("10.88.0.2", 7480), timeout=10)
if who != "--plain":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca + "/ca.crt")
    ctx.load_cert_chain(f"{ca}/{who}.crt", f"{ca}/{who}.key")
    s = ctx.wrap_socket(s, server_hostname="hostB")
    if s.recv(1) != b"\x06":  # ftd's handshake confirmation
        sys.exit("no handshake confirmation from hostB")
s.sendall(b"".join(l.encode() + b"\n" for l in lines))
buf = b""
while buf.count(b"\n") < len(lines):
    d = s.recv(65536)
    if not d:
        break
    buf += d
print(buf.decode().strip())
PY
}

# A host of the cluster (hostC: a valid certificate for its own name, in
# hostB's peers file) claims to be hostA: refused, on a connection that
# stays usable; the same host under its own name is answered.
"$CERTS" host "$T/ca" hostC 10.88.0.1 >/dev/null || fail "hostC cert"
echo "hostC 10.88.0.1:7481" >> "$T/confB/peers"
ftd_start B
FORGED="peer request refused: the certificate presented is not for host 'hostA'"
r=$(peer_raw hostC '{"cmd":"hello","from":"hostA","id":1}' \
	'{"cmd":"vm-state","from":"hostA","name":"vm1","id":2}' \
	'{"cmd":"hello","from":"hostC","id":3}' \
	'{"cmd":"hello","from":"x\nftd: error: forged","id":4}')
[ "$(grep -c . <<< "$r")" = 4 ] || fail "expected 4 replies, got: $r"
grep -qxF "{\"ok\":false,\"error\":\"$FORGED\",\"id\":1}" <<< "$r" ||
	fail "a forged hello was not refused as such: $r"
grep -qxF "{\"ok\":false,\"error\":\"$FORGED\",\"id\":2}" <<< "$r" ||
	fail "a forged vm-state was not refused as such: $r"
grep -qxF '{"ok":true,"name":"hostB","id":3}' <<< "$r" ||
	fail "hostC's own hello was not answered: $r"
grep -qxF '{"ok":false,"error":"peer request refused: \"from\" is not a host name","id":4}' <<< "$r" ||
	fail "a \"from\" with a newline was not refused as such: $r"
grep -q '^ftd: error: forged' "$T/ftdB.log" && fail "hostB logged a forged line"
grep -qE "peer request \"hello\" from tls 10\.88\.0\.1:[0-9]+ refused: it claims to be hostA, but its certificate is not for hostA" \
	"$T/ftdB.log" || fail "hostB did not log the forgery: $(tail -n 5 "$T/ftdB.log")"
ok "forged \"from\" refused: $(head -n 1 <<< "$r"); hostB logged: $(grep -m1 'claims to be hostA' "$T/ftdB.log")"
r=$(peer_raw hostC '{"cmd":"hello","from":"hostC"}')
[ "$r" = '{"ok":true,"name":"hostB"}' ] || fail "hostC's own hello on a new connection: $r"
# A name the certificate is for but the peers file lacks: still refused
# by the peers file, as before.
r=$(peer_raw hostX '{"cmd":"hello","from":"hostX"}')
grep -qF 'hostX is not a peer of hostB' <<< "$r" || fail "hostX (not a peer): $r"
# hostA's own requests pass: ftctl peers (hello) on hostA.
expect_msg 0 "^hostB +10.88.0.2:7480 +ok$" fa peers
# hostA presenting hostC's certificate (read at each connection): hostB
# refuses its requests, and ftctl says so.
cp "$T/ca/hostC.crt" "$T/confA/hostA.crt"
cp "$T/ca/hostC.key" "$T/confA/hostA.key"
expect_msg 1 "^hostB .* it refuses: peer request refused: the certificate presented is not for host 'hostA'" fa peers
rm -rf "$T/confA" && cp -a "$T/confA.good" "$T/confA"
expect_msg 0 "^hostB +10.88.0.2:7480 +ok$" fa peers
still_here
ftd_stop B
rm -rf "$T/confB" && cp -a "$T/confB.good" "$T/confB"

# The link to hostB is down: a bounded wait, then a clear message.
ftd_start B
ip -n "$NSB" link set veth-b down
t0=$SECONDS
expect_msg 1 "cannot reach hostB at 10.88.0.2:7480: (no answer in time|No route to host).*; $KEEPS" \
	fa migrate vm1 hostB
[ $((SECONDS - t0)) -le 15 ] || fail "a cut link took $((SECONDS - t0)) s to report"
ip -n "$NSB" link set veth-b up
still_here

# And with everything right, it moves.
expect_msg 0 "^hostB +10.88.0.2:7480 +ok$" fa peers
expect_msg 0 "^hostA +10.88.0.1:7480 +ok$" fb peers
fa migrate vm1 hostB > "$T/m.out" 2> "$T/m.err" || fail "migrate: $(cat "$T/m.out" "$T/m.err")"
ok "$(cat "$T/m.out")"
[ "$(vm_state fb --json vm status vm1)" = running ] || fail "vm1 not running on hostB"
[ "$(vm_state fa --json vm status vm1)" = absent ] || fail "vm1 left on hostA"

# Plain TCP end to end, by explicit choice on both hosts.
ftd_stop A
ftd_stop B
ftd_start A --insecure-peers
ftd_start B --insecure-peers
fa vm create vm2 --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin >/dev/null &&
	fa vm start vm2 >/dev/null || fail "vm2"
fa migrate vm2 hostB --insecure > "$T/m2.out" 2>&1 || fail "insecure migrate: $(cat "$T/m2.out")"
grep -q 'vm2 moved from hostA to hostB' "$T/m2.out" || fail "no summary: $(cat "$T/m2.out")"
grep -q 'insecure' "$T/ftdA.log" || fail "hostA did not warn about plain TCP"
ok "plain TCP by choice: $(tail -n1 "$T/m2.out")"
# Plain TCP authenticates nobody: "from" is taken on trust (documented).
r=$(peer_raw --plain '{"cmd":"hello","from":"hostA"}')
[ "$r" = '{"ok":true,"name":"hostB"}' ] || fail "plain-TCP hello: $r"
wait_for 10 grep -q spin "$T/stateB/vms/vm2/console.log" || fail "vm2 silent on hostB"
ftd_check_logs
