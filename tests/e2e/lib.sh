# tests/e2e/lib.sh - helpers for end-to-end tests (sourced).
#
# A test is `bash tests/e2e/test_X.sh BUILD_DIR`; exit 0 = pass,
# 77 = skip (after printing "SKIP: reason"), anything else = fail.
# Everything a test starts or creates is removed by the EXIT trap, also
# when the test fails.
set -u
B=${1:?usage: $0 BUILD_DIR}
B=$(cd "$B" && pwd)
GUEST_DIR=${GUEST_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/guest}
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FTVM=$B/ftvm
T=$(mktemp -d /tmp/ftest.XXXXXX)
_pids=()
_cleanups=()

cleanup() {
	local p c
	for c in "${_cleanups[@]}"; do eval "$c" || true; done
	for p in "${_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	for p in "${_pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$T"
}
trap cleanup EXIT

on_exit() { _cleanups+=("$1"); }
bg() { "$@" & _pids+=($!); }   # start in background, killed at exit

fail() { echo "FAIL: $*"; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
ok() { echo "ok: $*"; }

need_kvm() {
	[ -c /dev/kvm ] || skip "/dev/kvm not present"
	[ -r /dev/kvm ] && [ -w /dev/kvm ] || skip "/dev/kvm not accessible"
}

# wait_for SECONDS CMD...: poll CMD every 50 ms until it succeeds.
wait_for() {
	local t=$1; shift
	local end=$((SECONDS + t))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -ge $end ] && return 1
		sleep 0.05
	done
}

# expect_fail CODE PATTERN CMD...: CMD must exit CODE and print PATTERN.
expect_fail() {
	local code=$1 pat=$2 out rc; shift 2
	out=$("$@" 2>&1); rc=$?
	[ $rc -eq "$code" ] || fail "'$*' exited $rc, expected $code; output: $out"
	grep -qE -- "$pat" <<< "$out" || fail "'$*' output lacks /$pat/: $out"
	ok "'$*' -> $code /$pat/"
}

ctl() { "$FTVM" ctl --control "$@"; }

# netns NAME: create a network namespace that is removed at exit.
netns() {
	command -v ip >/dev/null || skip "ip (iproute2) not installed"
	ip netns add "$1" 2>/dev/null || skip "cannot create network namespaces"
	on_exit "ip netns del '$1' 2>/dev/null"
}

# topo PREFIX: a "host" namespace PREFIX-h with bridge br0 and a "client"
# namespace PREFIX-c (10.77.0.1/24) joined by a veth pair.  A VM started in
# PREFIX-h with --net ...,bridge=br0 is reachable from the client.  Both
# namespaces are removed at exit.
topo() {
	HNS=$1-h CNS=$1-c
	netns "$HNS"
	netns "$CNS"
	ip -n "$HNS" link set lo up
	ip -n "$CNS" link set lo up
	ip -n "$HNS" link add br0 type bridge
	ip -n "$HNS" link set br0 up
	ip -n "$HNS" link add veth-h type veth peer name veth-c netns "$CNS"
	ip -n "$HNS" link set veth-h master br0 up
	ip -n "$CNS" addr add 10.77.0.1/24 dev veth-c
	ip -n "$CNS" link set veth-c up
}

# hosts2 PREFIX: two "hosts" PREFIX-a and PREFIX-b and a client PREFIX-c.
#  - migration link: veth mig between the hosts, 10.78.0.1 (a) and
#    10.78.0.2 (b), in $A_IP and $B_IP; `ip -n $ANS link set mig down`
#    cuts it;
#  - guest LAN: bridge br0 on each host, each with an uplink veth into
#    the client's bridge lan (10.77.0.1/24), so a VM on either host with
#    --net ...,bridge=br0 is on the client's LAN and can move between them.
# Sets ANS BNS CNS A_IP B_IP.  Removed at exit.
# lan_uplink NS CNS PEER: bridge br0 in host namespace NS, joined by a veth
# (uplink in NS, PEER in CNS) to CNS's bridge lan.
lan_uplink() {
	ip -n "$1" link add br0 type bridge
	ip -n "$1" link set br0 up
	ip -n "$1" link add uplink type veth peer name "$3" netns "$2"
	ip -n "$1" link set uplink master br0 up
	ip -n "$2" link set "$3" master lan up
}

# stop_daemon PID LOG LABEL: SIGTERM, wait up to 15 s, reap; a non-zero
# exit status is noted in LOG.  Returns that status.
stop_daemon() {
	kill "$1" 2>/dev/null
	for _ in $(seq 1 300); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.05
	done
	wait "$1" 2>/dev/null
	local rc=$?
	[ $rc -eq 0 ] || echo "note: $3 exited $rc" >> "$2"
	return $rc
}

# client_load NS IP C P: from namespace NS, a ledger writer on 8
# connections (into $T/ledger) and redis-benchmark (-c C -P P, SET and GET
# over 100k keys) against the kvstore at IP:6379, both in the background
# until killed.  Sets LEDGER and BENCH.
client_load() {
	ip netns exec "$1" python3 "$TOP/tests/e2e/ledger.py" write "$2" 6379 \
		"$T/ledger" 8 > "$T/ledger.out" 2>&1 &
	LEDGER=$!
	_pids+=($LEDGER)
	ip netns exec "$1" redis-benchmark -h "$2" -t set,get -n 100000000 \
		-c "$3" -P "$4" -r 100000 -q > "$T/bench.out" 2>&1 &
	BENCH=$!
	_pids+=($BENCH)
}

hosts2() {
	ANS=$1-a BNS=$1-b CNS=$1-c A_IP=10.78.0.1 B_IP=10.78.0.2
	netns "$ANS"
	netns "$BNS"
	netns "$CNS"
	local n
	for n in "$ANS" "$BNS" "$CNS"; do ip -n "$n" link set lo up; done
	ip -n "$CNS" link add lan type bridge
	ip -n "$CNS" link set lan up
	ip -n "$CNS" addr add 10.77.0.1/24 dev lan
	for n in a b; do
		lan_uplink "$1-$n" "$CNS" p$n
	done
	ip -n "$ANS" link add mig type veth peer name mig netns "$BNS"
	ip -n "$ANS" addr add "$A_IP/24" dev mig
	ip -n "$BNS" addr add "$B_IP/24" dev mig
	ip -n "$ANS" link set mig up
	ip -n "$BNS" link set mig up
}

# certs DIR: a test CA and certificates for hosta (10.78.0.1), hostb
# (10.78.0.2), an expired one for hostb and one from a foreign CA.
certs() {
	command -v openssl >/dev/null || skip "openssl not installed"
	"$TOP/tools/ft-certs" init "$1" >/dev/null &&
		"$TOP/tools/ft-certs" host "$1" hosta 10.78.0.1 >/dev/null &&
		"$TOP/tools/ft-certs" host "$1" hostb 10.78.0.2 >/dev/null &&
		mkdir -p "$1/old" "$1/other" &&
		cp "$1/ca.crt" "$1/ca.key" "$1/old/" &&
		"$TOP/tools/ft-certs" expired "$1/old" hostb 10.78.0.2 >/dev/null &&
		"$TOP/tools/ft-certs" init "$1/other" >/dev/null &&
		"$TOP/tools/ft-certs" host "$1/other" hostb 10.78.0.2 >/dev/null ||
		fail "ft-certs failed"
}

# tls DIR NAME: ftvm TLS options for host NAME with certificates in DIR.
tls() { echo "--ca $1/ca.crt --cert $1/$2.crt --key $1/$2.key"; }

# backup NS IP OUT ARGS...: `ftvm backup --listen IP:0 ARGS` in namespace
# NS (stdout to OUT, stderr to OUT.err); sets $BK_PID and, once it
# listens, $BK_ADDR.
backup() {
	local ns=$1 ip=$2 out=$3; shift 3
	: > "$out"
	ip netns exec "$ns" "$FTVM" backup --listen "$ip:0" "$@" \
		> "$out" 2> "$out.err" &
	BK_PID=$!
	_pids+=($BK_PID)
	wait_for 20 grep -q 'listening on' "$out" ||
		fail "backup did not listen: $(cat "$out.err")"
	BK_ADDR=$(sed -n 's/^backup: listening on //p' "$out")
}

# expect_msg CODE PATTERN CMD...: like expect_fail, and shows the message.
expect_msg() {
	local code=$1 pat=$2 out rc; shift 2
	out=$("$@" 2>&1); rc=$?
	[ $rc -eq "$code" ] || fail "'$*' exited $rc, expected $code; output: $out"
	grep -qE -- "$pat" <<< "$out" || fail "'$*' output lacks /$pat/: $out"
	ok "'$*' -> $code: $out"
}

# ftd_logs_clean: after the ftd were stopped, fail if one of $T/ftd*.log
# has a sanitizer report or a note of a bad exit.
ftd_logs_clean() {
	local f
	for f in "$T"/ftd*.log; do
		[ -f "$f" ] || continue
		if grep -qE 'Sanitizer|runtime error|note: ftd on .* exited' "$f"; then
			cat "$f"
			fail "$(basename "$f"): sanitizer report or bad exit"
		fi
	done
	ok "no sanitizer reports in the ftd logs"
}

# incoming NS IP OUT ARGS...: start `ftvm incoming --listen IP:0 ARGS` in
# namespace NS (stdout to OUT, stderr to OUT.err); sets $INC_PID and, once
# it listens, $INC_ADDR.
incoming() {
	local ns=$1 ip=$2 out=$3; shift 3
	rm -f "$out" "$out.err"
	: > "$out"
	ip netns exec "$ns" "$FTVM" incoming --listen "$ip:0" "$@" \
		> "$out" 2> "$out.err" &
	INC_PID=$!
	_pids+=($INC_PID)
	wait_for 20 grep -q 'listening on' "$out" ||
		fail "incoming did not listen: $(cat "$out.err")"
	INC_ADDR=$(sed -n 's/^incoming: listening on //p' "$out")
}
