#!/usr/bin/env bash
# tools/demo.sh - the ftengine demo (run by `make demo`): a VM survives the
# death of its host, and no acknowledged write is lost.
#
# On one machine, four network namespaces play four computers: hostA (the
# primary), hostB (the backup), hostW (the witness) and a client.  A
# key-value VM (the kvstore guest, a Redis-protocol server with a disk)
# runs on hostA, protected by hostB; a client writes keys and keeps a
# ledger of every write the VM acknowledged.  Then hostA "crashes" (its
# ftd and ftvm are killed with SIGKILL); hostB takes over, the client
# carries on over the same connections, and the ledger is checked against
# the VM now running on hostB.
#
# Needs root (network namespaces), /dev/kvm, redis-tools and openssl
# (./configure --install-deps installs them).  Removes everything it made.
set -u
cd "$(dirname "$0")/.." || exit 1
B=build
P=ftdemo
T=$(mktemp -d /tmp/ftdemo.XXXXXX)
declare -A ftd_pid=()
ip_of() { case $1 in A) echo 10.88.0.1 ;; B) echo 10.88.0.2 ;; W) echo 10.88.0.3 ;; esac; }
ns_of() { echo "$P-$(tr ABWC abwc <<< "$1")"; }

cleanup() {
	local p
	for p in "${ftd_pid[@]}" ${LEDGER:-} ${PROBE:-}; do
		kill "$p" 2>/dev/null
	done
	sleep 1
	for p in "${ftd_pid[@]}"; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	for p in A B W C; do ip netns del "$(ns_of $p)" 2>/dev/null; done
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }
ctl() { local h=$1; shift; $B/ftctl --socket "$T/$h.sock" "$@"; }
client() { ip netns exec "$(ns_of C)" "$@"; }
until_ok() { # SECONDS CMD...
	local end=$((SECONDS + $1)); shift
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -ge $end ] && return 1
		sleep 0.05
	done
}
state() { # HOST: "role state" of the VM's protection there
	ctl "$1" --json status kv 2>/dev/null | python3 -c '
import json,sys
v = json.load(sys.stdin)["vm"]; p = v.get("protection")
print(p["role"] + " " + p["state"] if p else v["state"])' 2>/dev/null
}
is() { [ "$(state "$1")" = "$2" ]; }

[ "$(id -u)" = 0 ] || die "run it as root: it makes network namespaces"
[ -c /dev/kvm ] || die "/dev/kvm is missing: this demo needs KVM"
[ -x $B/ftd ] && [ -f $B/guest/kvstore.elf ] || die "build first (make)"
command -v redis-cli >/dev/null || die "redis-cli is missing (apt-get install redis-tools)"
command -v openssl >/dev/null || die "openssl is missing"
for p in A B W C; do ip netns del "$(ns_of $p)" 2>/dev/null; done

bold "1. Four computers: hostA (primary), hostB (backup), hostW (witness), a client"
for p in A B W C; do
	ip netns add "$(ns_of $p)" || die "cannot create network namespaces"
	ip -n "$(ns_of $p)" link set lo up
	ip netns exec "$(ns_of $p)" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
done
C=$(ns_of C)
ip -n "$C" link add hnet type bridge && ip -n "$C" link set hnet up
ip -n "$C" link add lan type bridge && ip -n "$C" link set lan up
ip -n "$C" addr add 10.77.0.1/24 dev lan
tools/ft-certs init "$T/ca" >/dev/null || die "ft-certs init failed"
for h in A B W; do
	n=$(ns_of $h)
	ip -n "$C" link add "h$h" type veth peer name eth0 netns "$n"
	ip -n "$C" link set "h$h" master hnet up
	ip -n "$n" addr add "$(ip_of $h)/24" dev eth0
	ip -n "$n" link set eth0 up
	tools/ft-certs host "$T/ca" "host$h" "$(ip_of $h)" >/dev/null || die "ft-certs"
	mkdir -p "$T/conf$h"
	cp "$T/ca/ca.crt" "$T/ca/host$h.crt" "$T/ca/host$h.key" "$T/conf$h/"
	for o in A B W; do
		[ $o = $h ] || echo "host$o $(ip_of $o):7480" >> "$T/conf$h/peers"
	done
	if [ $h != W ]; then # the VM's LAN reaches both hosts
		ip -n "$n" link add br0 type bridge && ip -n "$n" link set br0 up
		ip -n "$n" link add uplink type veth peer name "u$h" netns "$C"
		ip -n "$n" link set uplink master br0 up
		ip -n "$C" link set "u$h" master lan up
	fi
done
start_ftd() { # HOST [ARGS]
	local h=$1; shift
	ip netns exec "$(ns_of $h)" $B/ftd --name "host$h" --listen "$(ip_of $h):7480" \
		--config-dir "$T/conf$h" --state-dir "$T/state$h" \
		--control "$T/$h.sock" "$@" >> "$T/ftd$h.log" 2>&1 &
	ftd_pid[$h]=$!
	until_ok 10 ctl "$h" host || die "ftd on host$h did not start: $(tail -3 "$T/ftd$h.log")"
}
start_ftd A
start_ftd B
start_ftd W --witness
say "each runs ftd (TLS between them, certificates from tools/ft-certs);"
say "hostW runs 'ftd --witness': it decides who may run a VM when in doubt"

bold "2. A key-value VM on hostA (Redis protocol, 256 MiB disk), on the client's LAN"
GIP=10.77.0.2
ctl A vm create kv --image "$PWD/$B/guest/kvstore.elf" --mem 128M --disk-size 256M \
	--net "tap=kv0,mac=52:54:00:12:34:56,ip=$GIP/24,bridge=br0" | sed 's/^/   /'
ctl A vm start kv | sed 's/^/   /'
pong() { client timeout 5 redis-cli -h $GIP ping 2>/dev/null | grep -q PONG; }
until_ok 30 pong || die "the VM does not answer"
say "client> redis-cli -h $GIP set greeting hello: $(client redis-cli -h $GIP set greeting hello)"

bold "3. Protect it: ftctl protect kv hostB --witness hostW"
ctl A protect kv hostB --witness hostW 2>&1 | sed 's/^/   /'
[ "${PIPESTATUS[0]}" = 0 ] || die "protect failed"
say "from now on, every 25 ms hostA pauses kv for a fraction of a millisecond,"
say "sends what changed to hostB, and lets kv's replies out only once hostB has it"

bold "4. The client writes keys on 8 connections and ledgers every acknowledged write"
# (ip netns exec runs the program itself: $! is the client's pid.)
ip netns exec "$C" python3 tests/e2e/ledger.py write $GIP 6379 "$T/ledger" 8 \
	> "$T/ledger.out" 2>&1 &
LEDGER=$!
ip netns exec "$C" python3 tests/e2e/gapprobe.py $GIP 6379 "$T/gaps" &
PROBE=$!
sleep 4
ctl A status kv | grep -E '^(name|state|protection|epochs)' | sed 's/^/   hostA| /'
ctl B status kv | grep -E '^(name|state|protection)' | sed 's/^/   hostB| /'
say "acknowledged so far: $(wc -l < "$T/ledger") writes"

bold "5. hostA crashes (its ftd and its ftvm are killed with SIGKILL)"
kids=$(pgrep -P "${ftd_pid[A]}")
acked=$(wc -l < "$T/ledger")
t_kill=$(date +%s.%N)
kill -9 "${ftd_pid[A]}" $kids
wait "${ftd_pid[A]}" 2>/dev/null
unset 'ftd_pid[A]'
say "killed with $acked writes acknowledged"
until_ok 30 is B "primary unprotected" || die "hostB did not take over: $(tail -5 "$T/ftdB.log")"
{ grep -h 'LOST' "$T/ftdB.log"; grep -h 'granted' "$T/ftdW.log"
  grep -h 'FAILED OVER' "$T/ftdB.log"; } | sed 's/^.*ftd: [a-z]*: /   log| /'
ctl B status kv | grep -E '^(state|protection|failover)' | sed 's/^/   hostB| /'

bold "6. The client carries on against hostB, over the same TCP connections"
sleep 3
kill -TERM "$LEDGER" "$PROBE"; wait "$LEDGER"; lrc=$?; wait "$PROBE" 2>/dev/null
LEDGER= PROBE=
say "client: $(cat "$T/ledger.out") (errors: requests that failed or connections that broke)"
client python3 tests/e2e/ledger.py check $GIP 6379 "$T/ledger" > "$T/check.out" 2>&1; crc=$?
gap=$(python3 -c '
import sys
k = float(sys.argv[1]); best = None
for l in open(sys.argv[2]):
    a, b = map(float, l.split())
    if a <= k + 0.002 and b > k and (best is None or b < best): best = b
print("%.0f" % ((best - k) * 1e3) if best else "?")' "$t_kill" "$T/gaps" 2>/dev/null)

bold "7. The ledger, checked against the VM now running on hostB"
read -r _ total _ missing _ wrong <<< "$(cat "$T/check.out")"
say "acknowledged writes:  $total"
say "lost:                 $missing"
say "wrong value:          $wrong"
say "failover time:        $gap ms from the crash to the client's next answer"
if [ "$crc" = 0 ] && [ "$lrc" = 0 ] && [ "$missing" = 0 ]; then
	printf '\n\033[1mEvery acknowledged write survived the crash of its host.\033[0m\n'
	say "More: docs/ftd.md (protection, the witness, partitions), docs/checkpoint.md,"
	say "docs/operators-guide.md; tools/demo-save-restore.sh (save/restore demo)."
	exit 0
fi
echo "demo: FAILED: $(cat "$T/check.out" "$T/ledger.out")" >&2
exit 1
