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
