# tests/e2e/ha-lib.sh - three hosts and a client for the protection tests
# (sourced after lib.sh).  Not a test itself.
#
#   ha_hosts PREFIX    namespaces PREFIX-a, -b, -w (hosts hostA, hostB and
#                      the witness hostW) and PREFIX-c (the client):
#                       - host network: bridge hnet in the client's
#                         namespace, eth0 in each host: 10.88.0.1 (A),
#                         .2 (B), .3 (W);
#                       - guest LAN: bridge lan (10.77.0.1/24) in the
#                         client's namespace, uplinks from br0 in A and B,
#                         so a VM on either host with bridge=br0 is on it;
#                      certificates and a config dir per host ($T/confX,
#                      peers: the two others); sets NSA NSB NSW NSC
#   hftd X [ARGS]      start hostX's ftd (X = A, B or W) in its namespace
#   hkill X            SIGKILL hostX's ftd and every ftvm of it (a crash)
#   hstop X            SIGTERM it and wait
#   hctl X ARGS        ftctl against hostX
#   hjson X NAME EXPR  a field of `ftctl --json status NAME` on hostX
#                      (python expression on v, the VM object; "" if none)
#   cut X Y / heal X Y drop / restore host traffic between hostX and hostY
#   isolate X          cut hostX off every network (host and guest LAN)
FTD=$B/ftd
FTCTL=$B/ftctl
declare -A _hftd=()

_hns() { case $1 in A) echo "$NSA" ;; B) echo "$NSB" ;; W) echo "$NSW" ;; esac; }
_hip() { case $1 in A) echo 10.88.0.1 ;; B) echo 10.88.0.2 ;; W) echo 10.88.0.3 ;; esac; }

ha_hosts() {
	NSA=$1-a NSB=$1-b NSW=$1-w NSC=$1-c
	on_exit "hstop_all" # first: the ftd (and their VMs), then the rest
	local h ns n
	for ns in "$NSA" "$NSB" "$NSW" "$NSC"; do
		netns "$ns"
		ip -n "$ns" link set lo up
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
			net.ipv6.conf.default.disable_ipv6=1
	done
	ip -n "$NSC" link add hnet type bridge
	ip -n "$NSC" link set hnet up
	ip -n "$NSC" link add lan type bridge
	ip -n "$NSC" link set lan up
	ip -n "$NSC" addr add 10.77.0.1/24 dev lan
	for h in A B W; do
		ns=$(_hns $h) n=$(tr ABW abw <<< $h)
		ip -n "$NSC" link add h$n type veth peer name eth0 netns "$ns"
		ip -n "$NSC" link set h$n master hnet up
		ip -n "$ns" addr add "$(_hip $h)/24" dev eth0
		ip -n "$ns" link set eth0 up
	done
	for h in A B; do
		lan_uplink "$(_hns $h)" "$NSC" u$(tr AB ab <<< $h)
	done
	command -v openssl >/dev/null || skip "openssl not installed"
	"$TOP/tools/ft-certs" init "$T/ca" >/dev/null || fail "ft-certs init"
	for h in A B W; do
		"$TOP/tools/ft-certs" host "$T/ca" host$h "$(_hip $h)" >/dev/null ||
			fail "ft-certs host$h"
		mkdir -p "$T/conf$h"
		cp "$T/ca/ca.crt" "$T/conf$h/"
		cp "$T/ca/host$h.crt" "$T/ca/host$h.key" "$T/conf$h/"
		: > "$T/conf$h/peers"
		for o in A B W; do
			[ $o = $h ] || echo "host$o $(_hip $o):7480" >> "$T/conf$h/peers"
		done
	done
}

# hftd X [ARGS]: loss after 6 x 50 ms (ftd's default is 3): a loaded
# 2-core machine running the test suite can starve a daemon for 150 ms,
# and a (safe, but unasked-for) failover would upset the test's script.
HB_MISSES=${HB_MISSES:-6}
hftd() {
	local h=$1; shift
	ip netns exec "$(_hns $h)" "$FTD" --name "host$h" --listen "$(_hip $h):7480" \
		--heartbeat-misses "$HB_MISSES" \
		--config-dir "$T/conf$h" --state-dir "$T/state$h" \
		--control "$T/$h.sock" "$@" >> "$T/ftd$h.log" 2>&1 &
	_hftd[$h]=$!
	_pids+=($!)
	wait_for 10 "$FTCTL" --socket "$T/$h.sock" host ||
		fail "ftd on host$h did not start: $(tail -n 5 "$T/ftd$h.log")"
}

hctl() { local h=$1; shift; "$FTCTL" --socket "$T/$h.sock" "$@"; }

hjson() {
	local out
	out=$(hctl "$1" --json status "$2" 2>/dev/null) || { echo ""; return; }
	python3 -c 'import json,sys
v = json.loads(sys.argv[1])["vm"]
try: r = eval(sys.argv[2])
except Exception: r = ""
print("" if r is None else r)' "$out" "$3"
}

# hkill X: a host crash: its ftd and its ftvm die at once.
hkill() {
	local p=${_hftd[$1]:-} kids
	[ -n "$p" ] || return 0
	kids=$(pgrep -P "$p" 2>/dev/null)
	kill -KILL "$p" $kids 2>/dev/null
	wait "$p" 2>/dev/null
	for _ in $(seq 1 100); do
		local alive=0 k
		for k in $kids; do kill -0 "$k" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.05
	done
	_hftd[$1]=
	rm -f "$T/$1.sock"
}

hstop() {
	local p=${_hftd[$1]:-}
	[ -n "$p" ] || return 0
	stop_daemon "$p" "$T/ftd$1.log" "ftd on host$1"
	_hftd[$1]=
	rm -f "$T/$1.sock"
}

hstop_all() { hstop A; hstop B; hstop W; }

# _drop -I|-D X Y: insert / delete the rules that drop X<->Y traffic.
_drop() {
	local op=$1 x
	for x in "$2 $3" "$3 $2"; do
		set -- $x
		ip netns exec "$(_hns $1)" iptables "$op" INPUT -s "$(_hip $2)" -j DROP
		ip netns exec "$(_hns $1)" iptables "$op" OUTPUT -d "$(_hip $2)" -j DROP
	done
}
cut() { _drop -I "$1" "$2"; }
heal() { _drop -D "$1" "$2"; }

isolate() {
	ip -n "$(_hns $1)" link set eth0 down
	ip -n "$(_hns $1)" link set uplink down 2>/dev/null
	return 0
}

# ha_check_logs: stop the ftd; fail on a sanitizer report or a bad exit.
ha_check_logs() {
	hstop_all
	ftd_logs_clean
}
