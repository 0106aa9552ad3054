#!/usr/bin/env bash
# bench/bench_migrate.sh - live migration of 1 GiB guests over a veth pair:
# ftvm next to QEMU 7.2 in the same run, and next to the link's own
# throughput (iperf3, one TCP stream, the same veth).
#
#   bench/bench_migrate.sh [--runs N] [--workloads LIST] [--no-ftvm]
#       [--no-qemu] [--no-tls] [--no-slow] [--qemu-accel kvm|tcg|auto]
#       [--qemu-downtime MS] [--ftvm-downtime MS] [--keep-log] [BUILD_DIR]
#
# Workloads (LIST: comma-separated, default all): zero (1 GiB of zero
# pages), random (1 GiB of random bytes, guest idle), dirty64 / dirty256
# (random contents, the guest dirties a 1000 MiB working set at 64 / 256
# MiB/s).  Engines: ftvm (plain TCP, --insecure), ftvm-tls (TLS 1.3, one
# run), qemu (unlimited bandwidth, RAM-backed destination), qemu-mfd
# (multifd, 2 channels, unlimited, destination RAM in a tmpfs file),
# qemu-30ms (as qemu, downtime-limit 30 ms: ftvm's default target),
# qemu-128 (QEMU's defaults: 128 MiB/s; zero and random only, one run).
# QEMU rows other than qemu-30ms use --qemu-downtime (default: QEMU's
# own 300 ms); ftvm rows --ftvm-downtime (default: ftvm's own, 30 ms).
# Prints one table per workload, medians of N runs (default 3).  Needs
# root and /dev/kvm; installs qemu-system-x86 and iperf3 when missing.
# About 3-4 minutes; every namespace, process and file it made is removed
# at exit.  Prints numbers; judges none (docs/performance.md section 8).
set -u
cd "$(dirname "$0")/.." || exit 1

RUNS=3 WORKLOADS=zero,random,dirty64,dirty256 B=build
DO_FTVM=1 DO_QEMU=1 DO_TLS=1 DO_SLOW=1 ACCEL=auto QDOWN=0 FDOWN='' KEEP=0
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) RUNS=$2; shift 2 ;;
	--workloads) WORKLOADS=$2; shift 2 ;;
	--no-ftvm) DO_FTVM=0; shift ;;
	--no-qemu) DO_QEMU=0; shift ;;
	--no-tls) DO_TLS=0; shift ;;
	--no-slow) DO_SLOW=0; shift ;;
	--qemu-accel) ACCEL=$2; shift 2 ;;
	--qemu-downtime) QDOWN=$2; shift 2 ;;
	--ftvm-downtime) FDOWN=$2; shift 2 ;;
	--keep-log) KEEP=1; shift ;;
	-h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
	-*) echo "bench_migrate: unknown option $1" >&2; exit 2 ;;
	*) B=$1; shift ;;
	esac
done
case $RUNS in ''|*[!0-9]*|0) echo "bench_migrate: --runs wants N >= 1" >&2; exit 2 ;; esac
for w in ${WORKLOADS//,/ }; do
	case $w in zero|random|dirty64|dirty256) ;;
	*) echo "bench_migrate: unknown workload $w" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "bench_migrate: needs root (namespaces, veth)" >&2; exit 1; }
[ -c /dev/kvm ] || { echo "bench_migrate: needs /dev/kvm" >&2; exit 1; }

# ---- what it needs ----------------------------------------------------------
need_pkgs=()
command -v iperf3 >/dev/null || need_pkgs+=(iperf3)
[ $DO_QEMU = 1 ] && ! command -v qemu-system-x86_64 >/dev/null && need_pkgs+=(qemu-system-x86)
[ $DO_QEMU = 1 ] && ! command -v gcc >/dev/null && need_pkgs+=(gcc)
[ $DO_TLS = 1 ] && ! command -v openssl >/dev/null && need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	echo "bench_migrate: installing ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}"; } >/dev/null ||
		{ echo "bench_migrate: apt-get install ${need_pkgs[*]} failed" >&2; exit 1; }
fi
FTVM=$B/ftvm
if [ $DO_FTVM = 1 ]; then
	for f in "$FTVM" "$B/guest/dirtier.elf" "$B/guest/benchguest.elf"; do
		[ -e "$f" ] || { echo "bench_migrate: $f missing: run 'make bench' first" >&2; exit 1; }
	done
	if ! "$FTVM" --help 2>&1 | grep -q incoming; then
		echo "bench_migrate: $FTVM has no 'incoming' (live migration): ftvm rows skipped" >&2
		DO_FTVM=0
	fi
fi

# ---- temporary state, always removed ----------------------------------------
NA=ftbmA$$ NB=ftbmB$$
IPA=10.99.$(( $$ % 200 + 20 )).1 IPB=10.99.$(( $$ % 200 + 20 )).2
T=$(mktemp -d /tmp/ftbm.XXXXXX)
SHM=/dev/shm/ftbm$$
RES=$T/results.tsv
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	ip netns del "$NA" 2>/dev/null
	ip netns del "$NB" 2>/dev/null
	rm -rf "$SHM"
	if [ $KEEP = 1 ]; then echo "logs kept in $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$SHM" || exit 1
: >"$RES"

bgrun() { "$@" & pids+=($!); }
# wait_line SECONDS FILE REGEX: wait until FILE has a line matching REGEX.
wait_line() {
	local end=$((SECONDS + $1))
	until grep -qE -- "$3" "$2" 2>/dev/null; do
		[ $SECONDS -ge "$end" ] && return 1
		sleep 0.02
	done
}
# stop PID: wait up to 3 s for it to end, then kill it.
stop() {
	for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.02; done
	kill -9 "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}
txbytes() { ip netns exec "$NA" cat /sys/class/net/vA/statistics/tx_bytes; }
# record WORKLOAD ENGINE JSON TX0 TX1: one result line (JSON from the engine).
record() {
	python3 - "$@" >>"$RES" <<'PY'
import json, sys
w, e, js, tx0, tx1 = sys.argv[1:]
try:
    r = json.loads(js.strip().splitlines()[-1])
except (ValueError, IndexError):
    r = {"ok": False, "error": "no JSON reply: " + js.strip()[-200:]}
if r.get("ok"):
    # Pause to "runs on the destination": ftvm's downtime_ms is that by
    # definition; for QEMU, whose downtime ends when the source has sent
    # everything, estimate it from when query-status first said "running"
    # on the destination (polled every 2 ms).
    run = r["downtime_ms"]
    if r.get("dst_run_ms") is not None:
        run = r["dst_run_ms"] - (r["total_ms"] - r["downtime_ms"])
    print("\t".join(str(x) for x in (w, e, "ok", r["total_ms"], r["downtime_ms"],
          r["bytes"], r["rounds"], int(tx1) - int(tx0), run)))
else:
    print("\t".join((w, e, "fail", str(r.get("error", "?")).replace("\t", " "))))
PY
	tail -n1 "$RES" | sed 's/^/  /' | tr '\t' ' '
}

# ---- the link ---------------------------------------------------------------
ip netns add "$NA" && ip netns add "$NB" || exit 1
ip -n "$NA" link set lo up
ip -n "$NB" link set lo up
ip -n "$NA" link add vA type veth peer name vB netns "$NB" || exit 1
ip -n "$NA" addr add "$IPA/24" dev vA
ip -n "$NB" addr add "$IPB/24" dev vB
ip -n "$NA" link set vA up
ip -n "$NB" link set vB up

echo "== live migration, 1 GiB guests, $(date -u '+%Y-%m-%d %H:%M UTC') =="
echo "host: $(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified tree)')"

# iperf3: three 2-second single-stream runs, median of the receiver's rate.
line_bps() {
	local out rates=()
	for _ in 1 2 3; do
		ip netns exec "$NB" iperf3 -s -1 -B "$IPB" -p 5201 >/dev/null 2>&1 &
		local sp=$!
		pids+=($sp)
		sleep 0.3
		out=$(ip netns exec "$NA" iperf3 -c "$IPB" -p 5201 -t 2 -J 2>/dev/null)
		rates+=("$(python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))' <<<"$out" 2>/dev/null || echo 0)")
		stop $sp
	done
	printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p
}
LINE_BPS=$(line_bps)
echo "link: veth $IPA -> $IPB, iperf3 one stream: $(python3 -c "print('%.2f Gbit/s' % ($LINE_BPS/1e9))") (median of 3 x 2 s)"
[ "$LINE_BPS" -gt 0 ] || { echo "bench_migrate: iperf3 failed" >&2; exit 1; }

# ---- QEMU -------------------------------------------------------------------
MB=$T/mbdirty.elf
QRAND=$SHM/random.ram
QEMU_OK=0
if [ $DO_QEMU = 1 ]; then
	gcc -m32 -O2 -Wall -Wextra -ffreestanding -fno-pic -fno-pie -no-pie \
		-fno-stack-protector -fno-asynchronous-unwind-tables -nostdlib \
		-static -Wl,-T,bench/qemu/mbdirty.ld -Wl,--build-id=none \
		-Wl,--no-warn-rwx-segments -o "$MB" bench/qemu/mbdirty.c ||
		{ echo "bench_migrate: cannot build bench/qemu/mbdirty.c" >&2; exit 1; }
	QVER=$(qemu-system-x86_64 --version | head -n1)
	# Does QEMU run the guest under KVM here (PVM cannot emulate
	# everything a CPL0 guest does)?  Otherwise TCG.
	qboot_ok() {
		local log=$T/qprobe.log p
		rm -f "$log"
		qemu-system-x86_64 -accel "$1" -m 64M -nographic -nodefaults \
			-monitor none -kernel "$MB" -append "wss=4 rate=64" \
			-serial "file:$log" 2>/dev/null &
		p=$!
		pids+=($p)
		wait_line 10 "$log" 'mbdirty: t=1 ' && kill -0 $p 2>/dev/null
		local rc=$?
		kill -9 $p 2>/dev/null
		wait $p 2>/dev/null
		return $rc
	}
	if [ "$ACCEL" = auto ]; then
		if qboot_ok kvm; then ACCEL=kvm; else ACCEL=tcg; fi
	fi
	if qboot_ok "$ACCEL"; then
		QEMU_OK=1
		echo "qemu: $QVER, -accel $ACCEL, downtime-limit $([ "$QDOWN" = 0 ] && echo '300 ms (default)' || echo "$QDOWN ms")"
	else
		echo "bench_migrate: QEMU does not run bench/qemu/mbdirty with -accel $ACCEL: QEMU rows skipped" >&2
	fi
	if [ $QEMU_OK = 1 ] && [ "$WORKLOADS" != zero ]; then
		# 1 GiB of random bytes (AES-CTR of zeros: fast and incompressible).
		openssl enc -aes-128-ctr -nosalt -pass pass:ftbench </dev/zero 2>/dev/null |
			head -c 1G >"$QRAND" || { echo "bench_migrate: cannot write $QRAND" >&2; exit 1; }
	fi
fi

# qemu_run WORKLOAD VARIANT: one QEMU migration; VARIANT qemu|qemu-mfd|qemu-128.
qemu_run() {
	local w=$1 v=$2 src app dst drv=() sp dp out tx0 tx1
	local port=$((47000 + RANDOM % 1000))
	case $w in
	zero) src=$SHM/zero.ram; rm -f "$src"; fallocate -l 1G "$src"; app="wss=0" ;;
	random) src=$QRAND; app="wss=0" ;;
	dirty64) src=$QRAND; app="wss=1000 rate=64" ;;
	dirty256) src=$QRAND; app="wss=1000 rate=256" ;;
	esac
	case $v in
	qemu) dst="memory-backend-ram,id=mem,size=1G"
	      drv=(--bandwidth 107374182400) ;;
	qemu-mfd) rm -f "$SHM/dst.ram"
	      dst="memory-backend-file,id=mem,size=1G,mem-path=$SHM/dst.ram,share=on"
	      drv=(--bandwidth 107374182400 --multifd 2) ;;
	qemu-30ms) dst="memory-backend-ram,id=mem,size=1G"
	      drv=(--bandwidth 107374182400 --downtime 30) ;;
	qemu-128) dst="memory-backend-ram,id=mem,size=1G" ;;
	esac
	[ "$QDOWN" != 0 ] && [ "$v" != qemu-30ms ] && drv+=(--downtime "$QDOWN")
	rm -f "$T"/q[sd].sock "$T"/q[sd].log
	local q=(qemu-system-x86_64 -accel "$ACCEL" -m 1G -nographic -nodefaults -monitor none)
	ip netns exec "$NB" "${q[@]}" -object "$dst" -machine pc,memory-backend=mem \
		-incoming defer -qmp "unix:$T/qd.sock,server=on,wait=off" \
		-serial "file:$T/qd.log" 2>>"$T/qemu.err" &
	dp=$!; pids+=($dp)
	ip netns exec "$NA" "${q[@]}" \
		-object "memory-backend-file,id=mem,size=1G,mem-path=$src,share=on" \
		-machine pc,memory-backend=mem -kernel "$MB" -append "$app" \
		-qmp "unix:$T/qs.sock,server=on,wait=off" -serial "file:$T/qs.log" \
		2>>"$T/qemu.err" &
	sp=$!; pids+=($sp)
	if [ "$app" = wss=0 ]; then
		wait_line 30 "$T/qs.log" 'mbdirty: ready'
	else	# one second of dirtying first
		wait_line 30 "$T/qs.log" 'mbdirty: t=1 '
	fi || echo "  (qemu guest not ready: $(tr -d '\r' <"$T/qs.log" | tail -c 200))"
	tx0=$(txbytes)
	out=$(python3 bench/qemu/qmp_migrate.py --src "$T/qs.sock" --dst "$T/qd.sock" \
		--uri "tcp:$IPB:$port" --timeout 60 --quit "${drv[@]}")
	tx1=$(txbytes)
	record "$w" "$v" "$out" "$tx0" "$tx1"
	stop $sp
	stop $dp
	rm -f "$SHM/dst.ram" "$SHM/zero.ram"
}

# ---- ftvm -------------------------------------------------------------------
PKI=$T/pki
if [ $DO_FTVM = 1 ] && [ $DO_TLS = 1 ]; then
	{ tools/ft-certs init "$PKI" && tools/ft-certs host "$PKI" srca "$IPA" &&
	  tools/ft-certs host "$PKI" dstb "$IPB"; } >/dev/null ||
		{ echo "bench_migrate: tools/ft-certs failed: no TLS row" >&2; DO_TLS=0; }
fi

# ftvm_run WORKLOAD VARIANT: one ftvm migration; VARIANT ftvm|ftvm-tls.
ftvm_run() {
	local w=$1 v=$2 img args ready sp dp addr out tx0 tx1 dsec=() ssec=()
	case $w in
	zero) img=benchguest; args="fill zero 0"; ready='benchguest: ready' ;;
	random) img=benchguest; args="fill random 0"; ready='benchguest: ready' ;;
	dirty64|dirty256)
		img=dirtier; ready='dirtier: sweep .* verified ok'
		args="--wss 1000 --rate ${w#dirty} --fill random --report 1" ;;
	esac
	if [ "$v" = ftvm-tls ]; then
		dsec=(--ca "$PKI/ca.crt" --cert "$PKI/dstb.crt" --key "$PKI/dstb.key" --peer-name srca)
		ssec=(--ca "$PKI/ca.crt" --cert "$PKI/srca.crt" --key "$PKI/srca.key" --peer-name dstb)
	else
		dsec=(--insecure)
		ssec=(--insecure)
	fi
	[ -n "$FDOWN" ] && ssec+=(--downtime "$FDOWN")
	rm -f "$T"/f[sd].sock "$T"/f[sd].log "$T/fd.out"
	ip netns exec "$NA" "$FTVM" run --image "$B/guest/$img.elf" --mem 1G \
		--cmdline "$args" --control "$T/fs.sock" --console "$T/fs.log" \
		>>"$T/ftvm.err" 2>&1 &
	sp=$!; pids+=($sp)
	ip netns exec "$NB" "$FTVM" incoming --listen "$IPB:0" "${dsec[@]}" \
		--control "$T/fd.sock" --console "$T/fd.log" >"$T/fd.out" 2>>"$T/ftvm.err" &
	dp=$!; pids+=($dp)
	wait_line 30 "$T/fs.log" "$ready" ||
		echo "  (ftvm guest not ready: $(tail -c 200 "$T/fs.log" 2>/dev/null))"
	wait_line 10 "$T/fd.out" 'incoming: listening on' ||
		echo "  (ftvm incoming not listening: $(tail -n 3 "$T/ftvm.err"))"
	addr=$(sed -n 's/^incoming: listening on //p' "$T/fd.out" | head -n1)
	tx0=$(txbytes)
	out=$("$FTVM" ctl --control "$T/fs.sock" migrate "$addr" "${ssec[@]}" 2>>"$T/ftvm.err")
	tx1=$(txbytes)
	record "$w" "$v" "$out" "$tx0" "$tx1"
	# The moved dirtier must go on verifying its pattern on the destination.
	if [ "$img" = dirtier ] && grep -q '"ok": *true' <<<"$out"; then
		local n0
		n0=$(grep -c 'verified ok' "$T/fd.log" 2>/dev/null)
		wait_line 3 "$T/fd.log" 'VERIFY FAIL|sweep .* verified ok' &&
			! grep -q 'VERIFY FAIL' "$T/fd.log" ||
			echo "  (destination guest: $(tail -n 2 "$T/fd.log" 2>/dev/null)) [n0=$n0]"
	fi
	"$FTVM" ctl --control "$T/fd.sock" quit >/dev/null 2>&1
	"$FTVM" ctl --control "$T/fs.sock" quit >/dev/null 2>&1
	stop $sp
	stop $dp
}

# ---- the runs ---------------------------------------------------------------
for w in ${WORKLOADS//,/ }; do
	echo "-- $w"
	for _ in $(seq "$RUNS"); do
		[ $DO_FTVM = 1 ] && ftvm_run "$w" ftvm
		[ $QEMU_OK = 1 ] && qemu_run "$w" qemu
		[ $QEMU_OK = 1 ] && qemu_run "$w" qemu-mfd
		[ $QEMU_OK = 1 ] && qemu_run "$w" qemu-30ms
	done
	[ $DO_FTVM = 1 ] && [ $DO_TLS = 1 ] && ftvm_run "$w" ftvm-tls
	if [ $QEMU_OK = 1 ] && [ $DO_SLOW = 1 ] && { [ "$w" = zero ] || [ "$w" = random ]; }; then
		qemu_run "$w" qemu-128
	fi
done

# ---- tables -----------------------------------------------------------------
echo
python3 - "$RES" "$LINE_BPS" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
line_bps = float(sys.argv[2])
GIB = 1 << 30
line_ms = GIB * 8 / line_bps * 1000
names = {"zero": "all zero (1 GiB of zero pages, guest idle)",
         "random": "random content (1 GiB, guest idle)",
         "dirty64": "random content, dirtying 1000 MiB at 64 MiB/s",
         "dirty256": "random content, dirtying 1000 MiB at 256 MiB/s"}
def fmt_ratio(x):
    return "%.2f" % x if x >= 0.1 else "%.2g" % x
order = ["ftvm", "ftvm-tls", "qemu", "qemu-mfd", "qemu-30ms", "qemu-128"]
print("line rate: %.2f Gbit/s; 1 GiB at line rate: %.0f ms (target for random: "
      "<= 1.2x = %.0f ms)" % (line_bps / 1e9, line_ms, 1.2 * line_ms))
print("columns: medians of n runs; 'down' = the engine's own downtime figure; "
      "'to run' = pause to running on the destination (QEMU: estimated from QMP); "
      "'line frac' = 1 GiB at line rate / total; 'ftvm/this' = ftvm's median / "
      "this row's (total, to run)")
for w in ["zero", "random", "dirty64", "dirty256"]:
    ws = [r for r in rows if r[0] == w]
    if not ws:
        continue
    med = {}
    for e in order:
        ok = [r for r in ws if r[1] == e and r[2] == "ok"]
        bad = [r for r in ws if r[1] == e and r[2] != "ok"]
        if not ok and not bad:
            continue
        m = None
        if ok:
            col = lambda i: statistics.median(float(r[i]) for r in ok)
            m = dict(total=col(3), down=col(4), bytes=col(5), rounds=col(6),
                     wire=col(7), run=col(8))
        med[e] = (m, len(ok), bad)
    print()
    print("%s" % names[w])
    print("%-9s %2s %9s %9s %9s %9s %9s %6s %9s %14s" % (
        "engine", "n", "total ms", "down ms", "to run ms", "MiB sent",
        "wire MiB", "rounds", "line frac", "ftvm/this t,d"))
    base = med.get("ftvm", (None,))[0]
    for e in order:
        if e not in med:
            continue
        m, n, bad = med[e]
        if m is None:
            print("%-9s %2d failed: %s" % (e, 0, bad[0][3] if len(bad[0]) > 3 else "?"))
            continue
        ratio = "-"
        if base and e != "ftvm" and m["total"] > 0:
            ratio = "%s, %s" % (fmt_ratio(base["total"] / m["total"]),
                                fmt_ratio(base["run"] / m["run"]) if m["run"] > 0 else "-")
        print("%-9s %2d %9.1f %9.1f %9.1f %9.1f %9.1f %6.0f %9.2f %14s%s" % (
            e, n, m["total"], m["down"], m["run"], m["bytes"] / 2**20, m["wire"] / 2**20,
            m["rounds"], line_ms / m["total"] if m["total"] else 0, ratio,
            "  (%d failed: %s)" % (len(bad), bad[0][3]) if bad else ""))
PY
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
