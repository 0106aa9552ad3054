#!/usr/bin/env bash
# tools/demo-save-restore.sh - save, verify, restore and a refused corrupt
# stream, on one VM (the first demo; `make demo` now runs tools/demo.sh).
#
# Boots a memory-dirtying guest on the built-in KVM micro-VMM, saves it
# while it runs, checks the stream with the independent verifier, restores
# it into a fresh VM that carries on verifying its own memory, and shows a
# corrupted stream being refused with a clear error.
set -u
cd "$(dirname "$0")/.." || exit 1
FTVM=build/ftvm
T=$(mktemp -d /tmp/ftdemo.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
wait_lines() { # FILE PATTERN N
	for _ in $(seq 200); do
		[ "$(grep -c "$2" "$1" 2>/dev/null)" -ge "$3" ] && return 0
		sleep 0.1
	done
	echo "demo: timed out waiting for '$2' in $1" >&2
	exit 1
}

[ -x "$FTVM" ] && [ -f build/guest/dirtier.elf ] || {
	echo "demo: build first (make)" >&2; exit 1; }
[ -c /dev/kvm ] || { echo "demo: /dev/kvm is missing: this demo needs KVM" >&2; exit 1; }

bold "1. Boot a 256 MiB VM running the 'dirtier' guest"
say "It keeps 128 MiB of random-content pages and rewrites them at 64 MiB/s;"
say "every page carries a counter the guest checks before each rewrite."
$FTVM run --image build/guest/dirtier.elf --mem 256M \
	--cmdline "--wss 128 --rate 64 --fill random" \
	--control "$T/vm.sock" --console "$T/console1.log" &
pids+=($!)
wait_lines "$T/console1.log" 'verified ok' 2
sed 's/^/   guest| /' "$T/console1.log"

bold "2. Save it while it runs, and stop it"
$FTVM ctl --control "$T/vm.sock" save "$T/vm.fts" --stop | sed 's/^/   /'
wait
pids=()
say "stream file: $(du -h "$T/vm.fts" | cut -f1) (zero pages are not stored)"

bold "3. Check the stream with the independent verifier (Python, not the C reader)"
python3 tools/ftstream-check "$T/vm.fts" | sed 's/^/   /'

bold "4. Restore it into a new VM: the guest carries on where it was"
$FTVM restore --from "$T/vm.fts" --control "$T/vm.sock" \
	--console "$T/console2.log" 2>&1 | sed 's/^/   /' &
pids+=($!)
wait_lines "$T/console2.log" 'verified ok' 2
sed 's/^/   guest| /' "$T/console2.log"
say "(the first rate after the restore is low because it spans the time the"
say " VM spent saved: the guest's clock counts that time, and never runs back)"
$FTVM ctl --control "$T/vm.sock" dump "$T/ram.img" >/dev/null
say "host-side check of the restored VM's RAM:"
python3 tools/dirtier-check.py "$T/ram.img" --log "$T/console1.log" --fill random | sed 's/^/   /'
$FTVM ctl --control "$T/vm.sock" quit >/dev/null
wait
pids=()

bold "5. Flip one byte in the stream: restore refuses, naming the record"
cp "$T/vm.fts" "$T/bad.fts"
printf '\x5a' | dd of="$T/bad.fts" bs=1 seek=100000 conv=notrunc status=none
$FTVM restore --from "$T/bad.fts" --console /dev/null 2>&1 | sed 's/^/   /'
say "exit status: ${PIPESTATUS[0]} (125 = refused; nothing was run)"

bold "Done. See README.md and docs/ for what else ftvm can do."
