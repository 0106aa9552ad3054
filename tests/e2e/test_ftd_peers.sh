#!/usr/bin/env bash
# ftd peering: every way a destination can be wrong is refused before a
# byte of the VM moves, with an ftctl message that names the cause, and
# the VM keeps running on the source: unknown host, the host itself, no
# ftd there, a certificate from another CA, an expired certificate (theirs
# or ours), a certificate for another name, a plain-TCP peer, a source the
# destination does not know, a cut link; ours from another CA.  Then both hosts in plain-TCP mode
# (--insecure-peers, migrate --insecure) move a VM for real.
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
wait_for 10 grep -q spin "$T/stateB/vms/vm2/console.log" || fail "vm2 silent on hostB"
ftd_check_logs
