#!/usr/bin/env bash
# bench/run-all.sh - run every foundation benchmark in sequence with its
# defaults and print the numbers (docs/performance.md explains them).
#
#   make bench && bench/run-all.sh [--quick] [BUILD_DIR]
#
# Default: about 2 minutes on a 2-core PVM machine; --quick: under one
# minute, with fewer runs and rounds (noisier) and without bench_ckpt.
# Needs /dev/kvm and about 4 GiB of free memory (two 1 GiB guests plus a
# 1 GiB snapshot on /dev/shm).  Each benchmark removes its own temporary
# files and stops its own guests.  Numbers are noisy when anything else
# runs on the machine: the load average is printed first for that reason.
# BENCH_MIGRATE=1 also runs bench/bench_migrate.sh (live migration
# against QEMU, root, about 3-4 more minutes; --quick: one run per row).
set -u
cd "$(dirname "$0")/.." || exit 1

quick=0
B=build
for a in "$@"; do
	case $a in
	--quick) quick=1 ;;
	-h|--help) sed -n '2,15p' "$0"; exit 0 ;;
	*) B=$a ;;
	esac
done

progs=(bench_vmm bench_snapshot bench_dirty bench_stream bench_ckpt)
for p in "${progs[@]}"; do
	if [ ! -x "$B/bench/$p" ]; then
		echo "run-all: $B/bench/$p missing: run 'make bench' first" >&2
		exit 1
	fi
done
if [ ! -f "$B/guest/benchguest.elf" ] && [ -z "${BENCH_GUEST:-}" ]; then
	echo "run-all: $B/guest/benchguest.elf missing: run 'make bench'" >&2
	exit 1
fi
export BENCH_GUEST=${BENCH_GUEST:-$B/guest/benchguest.elf}

if [ $quick = 1 ]; then
	vmm_args=(--calls 5000 --runs 1)
	snap_args=(--runs 1)
	dirty_args=(--rounds 5 --all-rounds 1)
	stream_args=(256)
else
	vmm_args=()
	snap_args=()
	dirty_args=()
	stream_args=()
fi

echo "== ftengine foundation benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC') =="
echo "host: $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified tree)')"
df -h /tmp /dev/shm | sed 's/^/  /'
echo

rc=0
run() {
	local t0=$SECONDS
	echo "\$ $*"
	"$@" || { echo "run-all: '$*' failed ($?)" >&2; rc=1; }
	echo "($((SECONDS - t0)) s)"
	echo
}
run "$B/bench/bench_vmm" "${vmm_args[@]}"
run "$B/bench/bench_snapshot" "${snap_args[@]}"
run "$B/bench/bench_dirty" "${dirty_args[@]}"
run "$B/bench/bench_stream" "${stream_args[@]}"
# Checkpointing at 1k dirty pages per epoch only (~30 s; the 10k level,
# --kvstore and --cow-probe: bench/README).  Not with --quick.
if [ $quick = 0 ]; then
	run "$B/bench/bench_ckpt" --quick --levels 1000
fi
if [ "${BENCH_MIGRATE:-0}" = 1 ]; then
	if [ $quick = 1 ]; then
		run bench/bench_migrate.sh --runs 1 "$B"
	else
		run bench/bench_migrate.sh "$B"
	fi
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $rc
