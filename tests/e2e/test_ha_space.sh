#!/usr/bin/env bash
# Protection refused for want of disk space on the backup (hostA primary,
# hostB backup, hostW witness).  hostB's state directory, where ftd
# measures the free space (statvfs) and keeps the replica's disk, is a
# 32 MiB tmpfs; vm1's disk is 64 MiB (the replica needs 64 + 16 MiB):
#  - `ftctl protect` fails with hostB's message naming the host, the VM,
#    what it needs and what the directory has;
#  - vm1 runs on hostA, unprotected; hostB keeps nothing (no VM, no
#    directory, no ftvm); the witness forgets vm1;
#  - with the tmpfs enlarged to 256 MiB (no restart), protect succeeds and
#    hostB's replica disk is on that tmpfs.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ha-lib.sh"
need_kvm
command -v mount >/dev/null || skip "mount not installed"
ha_hosts fts$$

# Mounted before hostB's ftd starts: `ip netns exec` gives ftd a copy of
# this mount namespace.  Unmounted after the ftd stopped (ha_hosts
# registered that first); lazily, so that a straggler cannot keep it.
mkdir -p "$T/stateB"
mount -t tmpfs -o size=32M,mode=0700 ftest-space "$T/stateB" ||
	skip "cannot mount a tmpfs"
on_exit "umount -l '$T/stateB'"
[ "$(stat -f -c %T "$T/stateB")" = tmpfs ] || fail "$T/stateB is not a tmpfs"
hftd A
hftd B
hftd W --witness

hctl A vm create vm1 --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin \
	--disk-size 64M > /dev/null || fail "vm create"
hctl A vm start vm1 > /dev/null || fail "vm start: $(tail -5 "$T/ftdA.log")"
[ "$(hjson A vm1 'v["state"]')" = running ] || fail "vm1 not running on hostA"

# Refused: the message names the backup, the VM, the need and the room.
expect_msg 1 "protection of vm1 by hostB failed: hostB refused: hostB lacks disk space for the replica of vm1: it needs 80\.0 MiB, $T/stateB/vms has [0-9]+\.[0-9] MiB free; vm1 runs on hostA unprotected" \
	hctl A protect vm1 hostB --witness hostW
free=$(hctl A protect vm1 hostB --witness hostW 2>&1 | sed -n 's/.* has \([0-9.]*\) MiB free.*/\1/p')
awk "BEGIN { exit !($free > 0 && $free <= 32) }" ||
	fail "hostB reported $free MiB free on a 32 MiB tmpfs"

# vm1 runs on hostA, unprotected.
[ "$(hjson A vm1 'v["state"]')" = running ] || fail "vm1 stopped on hostA: $(hctl A status vm1)"
[ "$(hjson A vm1 'v.get("protection", {}).get("role", "")')" != primary ] ||
	fail "hostA still protects vm1: $(hctl A status vm1)"
hctl A status > "$T/list.out" || fail "status on hostA"
grep -qE '^vm1 +running' "$T/list.out" || fail "hostA's list: $(cat "$T/list.out")"
grep -qE '^vm1 .*(primary|protected)' "$T/list.out" &&
	fail "hostA lists vm1 as protected: $(cat "$T/list.out")"
ok "vm1 runs on hostA unprotected: $(grep '^vm1' "$T/list.out")"

# Nothing is left on hostB, and the witness forgets vm1.
expect_msg 1 'no VM named "vm1" on hostB' hctl B vm status vm1
[ ! -e "$T/stateB/vms/vm1" ] || fail "hostB kept $(ls -la "$T/stateB/vms/vm1")"
[ -z "$(pgrep -P "${_hftd[B]}")" ] || fail "hostB's ftd has children: $(pgrep -a -P "${_hftd[B]}")"
wait_for 10 sh -c "$FTCTL --socket $T/W.sock leases | grep -q 'no leases'" ||
	fail "the witness kept vm1: $(hctl W leases)"
ok "hostB kept nothing, the witness forgot vm1"

# Room made (the tmpfs enlarged under the running ftd): protect succeeds.
mount -o remount,size=256M "$T/stateB" || fail "cannot enlarge the tmpfs"
hctl A protect vm1 hostB --witness hostW > "$T/prot.out" 2> "$T/prot.err" ||
	fail "protect with room: $(cat "$T/prot.out" "$T/prot.err"; tail -5 "$T/ftdB.log")"
grep -q 'vm1 is protected by hostB (witness hostW' "$T/prot.out" ||
	fail "protect said: $(cat "$T/prot.out")"
replica() { [ "$(hjson B vm1 'v["protection"]["state"]')" = replica ]; }
wait_for 20 replica || fail "hostB keeps no replica: $(hctl B status vm1)"
# The replica's disk (disk.img.replica; disk.img once failed over).
ls "$T/stateB/vms/vm1/" | grep -qx 'disk\.img\(\.replica\)\?' ||
	fail "no replica disk on hostB's tmpfs: $(ls -la "$T/stateB/vms/vm1/")"
[ "$(hjson A vm1 'v["protection"]["state"]')" = protected ] || fail "A: $(hctl A status vm1)"
ok "$(cat "$T/prot.out")"

hctl A unprotect vm1 > /dev/null || fail "unprotect"
wait_for 10 sh -c "! $FTCTL --socket $T/B.sock vm status vm1 > /dev/null 2>&1" ||
	fail "hostB kept vm1 after unprotect: $(hctl B status vm1)"
ha_check_logs
