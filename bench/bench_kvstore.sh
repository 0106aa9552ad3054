#!/usr/bin/env bash
# bench/bench_kvstore.sh - the kvstore guest under Debian's redis-benchmark.
#
#   bench/bench_kvstore.sh [-n REQUESTS] [-c CLIENTS] [--disk DIR]
#
# Boots build/guest/kvstore.elf (256 MiB, a 256 MiB disk image in DIR,
# default /tmp) on a TAP link inside a private network namespace and runs
# redis-benchmark from the host side of the link: SET and GET without
# pipelining and with -P 16, printing requests/s, p50 and p99 latency, and
# VM exits per request (from ftvm's exit counter).  Every SET is on the
# guest's disk (written and flushed) before its reply.  If redis-server is
# installed, a host redis-server with appendfsync always on a unix socket
# is measured in the same run, for scale.  Prints numbers; judges none.
set -u
cd "$(dirname "$0")/.." || exit 1
N=20000 C=50 DIR=/tmp
while [ $# -gt 0 ]; do
	case "$1" in
	-n) N=$2; shift 2 ;;
	-c) C=$2; shift 2 ;;
	--disk) DIR=$2; shift 2 ;;
	-h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench_kvstore: unknown option $1" >&2; exit 2 ;;
	esac
done
command -v redis-benchmark >/dev/null || { echo "needs redis-benchmark (redis-tools)" >&2; exit 1; }
[ -x build/ftvm ] && [ -f build/guest/kvstore.elf ] || { echo "build first (make)" >&2; exit 1; }

NS=ftbk$$
T=$(mktemp -d /tmp/ftbk.XXXXXX)
IMG=$(mktemp "$DIR/ftbk-disk.XXXXXX")
cleanup() {
	pkill -f "tap=ftbk0," 2>/dev/null
	sleep 0.2
	ip netns del "$NS" 2>/dev/null
	rm -rf "$T" "$IMG"
}
trap cleanup EXIT
ip netns add "$NS" || exit 1
ip -n "$NS" link set lo up
truncate -s 256M "$IMG"
GIP=10.88.0.2
ip netns exec "$NS" build/ftvm run --image build/guest/kvstore.elf --mem 256M \
	--net tap=ftbk0,mac=52:54:00:88:00:02,ip=$GIP/24,host-ip=10.88.0.1/24 \
	--disk "$IMG" --control "$T/sock" --console "$T/console.log" &
for _ in $(seq 100); do grep -q listening "$T/console.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$T/console.log" || { echo "kvstore did not start" >&2; cat "$T/console.log"; exit 1; }

exits() { build/ftvm ctl --control "$T/sock" status | python3 -c 'import json,sys; print(json.load(sys.stdin)["exits"])'; }

printf 'kvstore over a TAP link, disk in %s (%s), %d requests, %d clients\n' \
	"$DIR" "$(df --output=fstype "$DIR" | tail -n1)" "$N" "$C"
printf '%-6s %-9s %12s %9s %9s %12s\n' test pipeline 'req/s' 'p50 ms' 'p99 ms' 'exits/req'
for P in 1 16; do
	for t in set get; do
		e0=$(exits)
		line=$(ip netns exec "$NS" redis-benchmark -h $GIP -t $t -n "$N" -c "$C" \
			-P $P -r 100000 --precision 3 --csv 2>/dev/null | tail -n1)
		e1=$(exits)
		# "test","rps","avg","min","p50","p95","p99","max"
		python3 - "$t" "$P" "$line" "$e0" "$e1" "$N" <<'PY'
import csv, sys
t, p, line, e0, e1, n = sys.argv[1:]
row = next(csv.reader([line]))
print("%-6s %-9s %12.0f %9.3f %9.3f %12.3f" % (t.upper(), p, float(row[1]),
      float(row[4]), float(row[6]), (int(e1) - int(e0)) / int(n)))
PY
	done
done
if command -v redis-server >/dev/null; then
	redis-server --port 0 --unixsocket "$T/redis.sock" --save '' --appendonly yes \
		--appendfsync always --dir "$T" --daemonize no >/dev/null &
	rpid=$!
	sleep 0.5
	echo "baseline: host redis-server, appendfsync always, unix socket:"
	for P in 1 16; do
		redis-benchmark -s "$T/redis.sock" -t set,get -n "$N" -c "$C" -P $P -q 2>/dev/null |
			sed "s/^/  -P $P /"
	done
	kill $rpid
fi
