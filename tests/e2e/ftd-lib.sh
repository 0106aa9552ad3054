# tests/e2e/ftd-lib.sh - helpers for the ftd/ftctl tests (sourced after
# lib.sh).  Not a test itself: tests/run runs test_*.sh only.
#
#   two_hosts PREFIX   namespaces $NSA and $NSB joined by a veth pair,
#                      10.88.0.1 (hostA) and 10.88.0.2 (hostB); a test CA
#                      and host certificates in $T/ca; config dirs
#                      $T/confA and $T/confB with peers files
#   ftd_start H [ARGS] start hostA's or hostB's ftd (H = A or B) in its
#                      namespace; waits for its control socket
#   ftd_stop H         SIGTERM it and wait (its VMs stop)
#   fa / fb ARGS       ftctl against hostA / hostB
#   vm_state CTL...    the state word of a VM ("absent" if none)
#   (expect_msg, backup, ftd_logs_clean: lib.sh)
#   ftd_check_logs     stop both ftd; fail on a sanitizer report or an
#                      ftd that did not exit 0 (call it at the end)
FTD=$B/ftd
FTCTL=$B/ftctl
CERTS=$TOP/tools/ft-certs
declare -A _ftd_pid=()

fa() { "$FTCTL" --socket "$T/a.sock" "$@"; }
fb() { "$FTCTL" --socket "$T/b.sock" "$@"; }

# conf_dir DIR CA_DIR NAME PEER_NAME PEER_ADDR: a config dir for NAME.
conf_dir() {
	mkdir -p "$1"
	cp "$2/ca.crt" "$1/ca.crt"
	cp "$2/$3.crt" "$2/$3.key" "$1/"
	echo "$4 $5" > "$1/peers"
}

two_hosts() {
	NSA=$1-a NSB=$1-b
	on_exit "ftd_stop_all" # first: the ftd (and their VMs), then the rest
	netns "$NSA"
	netns "$NSB"
	# No IPv6 chatter on the VMs' TAPs: a guest that does not read its
	# NIC (the dirtier) would see input pending at every poll.
	ip netns exec "$NSA" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
		net.ipv6.conf.default.disable_ipv6=1
	ip netns exec "$NSB" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
		net.ipv6.conf.default.disable_ipv6=1
	ip -n "$NSA" link set lo up
	ip -n "$NSB" link set lo up
	ip -n "$NSA" link add veth-a type veth peer name veth-b netns "$NSB"
	ip -n "$NSA" addr add 10.88.0.1/24 dev veth-a
	ip -n "$NSB" addr add 10.88.0.2/24 dev veth-b
	ip -n "$NSA" link set veth-a up
	ip -n "$NSB" link set veth-b up
	"$CERTS" init "$T/ca" >/dev/null || fail "ft-certs init"
	"$CERTS" host "$T/ca" hostA 10.88.0.1 >/dev/null || fail "ft-certs hostA"
	"$CERTS" host "$T/ca" hostB 10.88.0.2 >/dev/null || fail "ft-certs hostB"
	conf_dir "$T/confA" "$T/ca" hostA hostB 10.88.0.2:7480
	conf_dir "$T/confB" "$T/ca" hostB hostA 10.88.0.1:7480
}

# ftd_start A|B [extra ftd options...]
ftd_start() {
	local h=$1 ns ip lc; shift
	if [ "$h" = A ]; then ns=$NSA ip=10.88.0.1; else ns=$NSB ip=10.88.0.2; fi
	lc=$(tr AB ab <<< "$h")
	ip netns exec "$ns" "$FTD" --name "host$h" --listen "$ip:7480" \
		--config-dir "$T/conf$h" --state-dir "$T/state$h" \
		--control "$T/$lc.sock" "$@" >> "$T/ftd$h.log" 2>&1 &
	_ftd_pid[$h]=$!
	_pids+=($!)
	wait_for 10 "$FTCTL" --socket "$T/$lc.sock" host ||
		fail "ftd on host$h did not start: $(tail -n 5 "$T/ftd$h.log")"
}

ftd_stop() {
	local p=${_ftd_pid[$1]:-}
	[ -n "$p" ] || return 0
	# ftd stops its VMs first (SIGTERM, then SIGKILL after 10 s).
	stop_daemon "$p" "$T/ftd$1.log" "ftd on host$1"
	_ftd_rc=$?
	_ftd_pid[$1]=
	rm -f "$T/$(tr AB ab <<< "$1").sock"
}

ftd_stop_all() {
	ftd_stop A
	ftd_stop B
}

# vm_state CTL NAME: the VM's state word ("absent" if there is none).
vm_state() {
	local out
	out=$("$@" 2>/dev/null) || { echo absent; return; }
	python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["state"])' <<< "$out"
}

# ftd_check_logs: stop both ftd, then fail if either logged a sanitizer
# report (ASan/UBSan/LSan builds) or did not exit 0 after SIGTERM.
ftd_check_logs() {
	ftd_stop_all
	ftd_logs_clean
}
