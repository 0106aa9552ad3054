#!/usr/bin/env bash
# ftd and ftctl on one host: option validation, the VM lifecycle (create,
# start, status, stop, delete), every validation error with its message,
# supervision (guest exit, guest crash, ftvm failure, a killed ftvm), ftd
# restarts (it knows its VMs and says what became of the running ones),
# and the control protocol's framing rules.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ftd-lib.sh"
need_kvm
S=$T/ftd.sock
ST=$T/state
f() { "$FTCTL" --socket "$S" "$@"; }
ftd_bg() {
	"$FTD" --name hostA --listen none --state-dir "$ST" --control "$S" "$@" \
		>> "$T/ftd.log" 2>&1 &
	FTD_PID=$!
	_pids+=($FTD_PID)
	wait_for 10 "$FTCTL" --socket "$S" host || fail "ftd did not start: $(tail -n 5 "$T/ftd.log")"
}
ftd_term() {
	kill "$FTD_PID"
	wait "$FTD_PID"
	local rc=$?
	[ $rc -eq 0 ] || fail "ftd exited $rc after SIGTERM"
}

# ---- options ----
run_ftd() { timeout 10 "$FTD" --state-dir "$T/opt-state" --control "$T/opt.sock" "$@"; }
expect_msg 2 "--listen 10.0.0.1: not HOST:PORT" run_ftd --listen 10.0.0.1 --name h
expect_msg 2 "--listen :0: not HOST:PORT.*port 1..65535" run_ftd --listen :0 --name h
expect_msg 2 "host name 'bad_name': use 1..32 letters, digits" run_ftd --listen none --name bad_name
expect_msg 2 "unexpected argument 'extra'" run_ftd --listen none --name h extra
expect_msg 2 "--doubt-limit 0: seconds, 1..3600" run_ftd --listen none --name h --doubt-limit 0
expect_msg 2 "unrecognized option" run_ftd --bogus
expect_msg 1 "--ftvm /nonexistent: No such file" run_ftd --listen none --name h --ftvm /nonexistent
mkdir -p "$T/conf" && : > "$T/conf/ca.crt"
expect_msg 1 "host certificate $T/conf/h.crt: No such file" \
	run_ftd --name h --config-dir "$T/conf" --listen :7481
expect_msg 1 "peering over TLS needs them \(tools/ft-certs host $T/conf h\)" \
	run_ftd --name h --config-dir "$T/conf" --listen :7481
expect_msg 1 "--config-dir $T/noconf: not a directory" run_ftd --name h --config-dir "$T/noconf"
expect_msg 1 "peers file $T/nopeers: No such file" run_ftd --insecure-peers --listen :7481 --name h --peers "$T/nopeers"
printf 'hostB 10.0.0.2:7480\nhostC\n# comment\nhostD 10.0.0.4:99999\n' > "$T/badpeers"
expect_msg 1 "$T/badpeers:2: expected \"NAME ADDR:PORT\"" run_ftd --insecure-peers --listen :7481 --name h --peers "$T/badpeers"
printf 'hostB 10.0.0.2:7480\nhostD 10.0.0.4:99999\n' > "$T/badpeers"
expect_msg 1 "$T/badpeers:2: bad address '10.0.0.4:99999' for hostD" run_ftd --insecure-peers --listen :7481 --name h --peers "$T/badpeers"
expect_msg 1 "--control .*: longer than 107 bytes" run_ftd --listen none --name h \
	--control "$T/$(printf 'x%.0s' $(seq 1 120))"
"$FTD" --help | grep -q -- '--state-dir DIR' || fail "ftd --help"
"$FTCTL" --help | grep -q 'migrate NAME HOST' || fail "ftctl --help"
"$FTCTL" vm --help | grep -q -- '--disk-size SIZE' || fail "ftctl vm --help"
"$FTCTL" migrate --help | grep -q -- '--downtime MS' || fail "ftctl migrate --help"
ok "--help of ftd, ftctl, ftctl vm, ftctl migrate"

ftd_bg
expect_msg 1 "--state-dir $ST is in use by another ftd" \
	"$FTD" --name hostA --listen none --state-dir "$ST" --control "$T/other.sock"
expect_msg 1 "control socket $S is in use by another ftd" \
	"$FTD" --name hostA --listen none --state-dir "$T/other" --control "$S"
[ "$(stat -c %a "$S")" = 600 ] || fail "control socket mode $(stat -c %a "$S")"
ok "control socket has mode 0600"

# ---- ftctl usage and validation ----
expect_msg 2 "unknown command 'bogus'" f bogus
expect_msg 2 "unknown vm command 'boot'" f vm boot vm1
expect_msg 2 "vm create needs --image FILE" f vm create vm1
expect_msg 2 "vm create needs exactly one NAME" f vm create --image /x
expect_msg 2 "--mem 12Q: not a size" f vm create vm1 --image "$GUEST_DIR/hello.elf" --mem 12Q
expect_msg 2 "--disk-size 0: not a size" f vm create vm1 --image "$GUEST_DIR/hello.elf" --disk-size 0
expect_msg 2 "vm start needs exactly one NAME" f vm start
expect_msg 2 "vm list takes no arguments" f vm list extra
expect_msg 2 "vm resolve: say 'moved'.*not 'maybe'" f vm resolve vm1 maybe
expect_msg 2 "--downtime 0: milliseconds, 1..60000" f migrate vm1 hostB --downtime 0
expect_msg 2 "migrate needs NAME and HOST" f migrate vm1
expect_msg 2 "--compress zip: none, lz4 or auto" f migrate vm1 hostB --compress zip
expect_msg 2 "--xbzrle 1K: a cache size" f migrate vm1 hostB --xbzrle 1K
expect_msg 1 "cannot connect to ftd at $T/none.sock: No such file" \
	"$FTCTL" --socket "$T/none.sock" vm list
expect_msg 1 "--image /nonexistent: No such file" f vm create vm1 --image /nonexistent
expect_msg 1 "VM name 'a b': use 1..32 letters, digits" f vm create 'a b' --image "$GUEST_DIR/hello.elf"
expect_msg 1 "VM name 'v+': use 1..32" f vm create "$(printf 'v%.0s' $(seq 1 33))" --image "$GUEST_DIR/hello.elf"
expect_msg 1 "memory size 8388608 bytes: must be 16 MiB..64 GiB in multiples of 2 MiB" f vm create vm1 --image "$GUEST_DIR/hello.elf" --mem 8M
expect_msg 1 "memory size 34603008 bytes: must be" f vm create vm1 --image "$GUEST_DIR/hello.elf" --mem 33M
expect_msg 1 "disk size 1000 bytes: must be a multiple of 512 bytes" f vm create vm1 --image "$GUEST_DIR/hello.elf" --disk-size 1000
expect_msg 1 "NIC spec 'ip=1.2.3.4': not an ftvm --net spec tap=NAME,mac=MAC" f vm create vm1 --image "$GUEST_DIR/hello.elf" --net ip=1.2.3.4
expect_msg 1 "image $T: not a regular file" f vm create vm1 --image "$T"
for v in start stop delete status; do
	expect_msg 1 "no VM named \"nope\" on hostA" f vm $v nope
done
expect_msg 1 "no VM named \"nope\" on hostA" f migrate nope hostB

# ---- lifecycle ----
f vm create vm1 --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin --disk-size 1M \
	--net tap=ftd$$,mac=52:54:00:dd:00:01,ip=10.90.0.2/24,host-ip=10.90.0.1/24 \
	> "$T/out" || fail "create: $(cat "$T/out")"
grep -q 'created vm1' "$T/out" || fail "create said: $(cat "$T/out")"
[ -f "$ST/vms/vm1/vm.json" ] || fail "no vm.json"
python3 - "$ST/vms/vm1/vm.json" <<'PY' || fail "vm.json content"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["name"] == "vm1" and d["mem"] == 32 << 20 and d["cmdline"] == "spin", d
assert d["disk_size"] == 1 << 20 and d["net"].startswith("tap=ftd"), d
assert d["image"].startswith("/") and d["image"].endswith("hello.elf"), d
PY
expect_msg 1 "a VM named \"vm1\" already exists on hostA \(stopped\)" f vm create vm1 --image "$GUEST_DIR/hello.elf"
expect_msg 1 "the TAP device in --net is already used by VM \"vm1\"" \
	f vm create vm2 --image "$GUEST_DIR/hello.elf" --net tap=ftd$$,mac=52:54:00:dd:00:02
f vm list | grep -qE '^vm1 +stopped +32.0 MiB +- +created' || fail "list: $(f vm list)"
expect_msg 1 "vm1 is not running on hostA \(stopped: created\)" f vm stop vm1
f vm start vm1 > "$T/out" || fail "start: $(cat "$T/out")"
grep -qE 'vm1 started \(pid [0-9]+\)' "$T/out" || fail "start said: $(cat "$T/out")"
wait_for 10 grep -q 'hello: spin' "$ST/vms/vm1/console.log" || fail "guest silent"
expect_msg 1 "vm1 is already running on hostA" f vm start vm1
expect_msg 1 "vm1 is running; stop it first" f vm delete vm1
f vm status vm1 > "$T/out" || fail "status"
grep -q '^state: *running' "$T/out" && grep -q '^ftvm: *running, [0-9]* exits' "$T/out" &&
	grep -q "^disk: *1.0 MiB ($ST/vms/vm1/disk.img)" "$T/out" || fail "status: $(cat "$T/out")"
ok "status of a running VM: $(tr '\n' ' ' < "$T/out")"
[ "$(stat -c %s "$ST/vms/vm1/disk.img")" -eq $((1 << 20)) ] || fail "disk image not created"
ip link show "ftd$$" >/dev/null 2>&1 || fail "no TAP ftd$$"
f vm stop vm1 > "$T/out" || fail "stop"
grep -q 'vm1 stopped: stopped on request (exit 0)' "$T/out" || fail "stop said: $(cat "$T/out")"
ip link show "ftd$$" >/dev/null 2>&1 && fail "TAP left after stop"
f vm start vm1 >/dev/null || fail "restart"
f vm stop vm1 >/dev/null || fail "stop again"
f vm delete vm1 > "$T/out" || fail "delete"
[ ! -e "$ST/vms/vm1" ] || fail "delete left $(ls "$ST/vms/vm1")"
f vm list | grep -q 'no VMs' || fail "list after delete: $(f vm list)"
ok "create, start, status, stop, start, stop, delete"

# ---- supervision: why a VM stopped ----
f vm create quick --image "$GUEST_DIR/hello.elf" --mem 32M >/dev/null
f vm start quick > "$T/out" || fail "start quick: $(cat "$T/out")"
wait_for 10 bash -c "$(declare -f vm_state); FTCTL='$FTCTL'; [ \"\$(vm_state '$FTCTL' --socket '$S' --json vm status quick)\" = stopped ]" ||
	fail "quick never stopped"
f vm status quick | grep -q 'reason: *the guest exited with status 0' || fail "quick: $(f vm status quick)"
f vm create crash --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline "fault ud" >/dev/null
f vm start crash >/dev/null
wait_for 10 bash -c "'$FTCTL' --socket '$S' vm status crash | grep -q 'last exit: *126'" ||
	fail "crash: $(f vm status crash)"
f vm status crash | grep -q 'reason: *the guest crashed (exit 126): guest crashed: #UD' ||
	fail "crash reason: $(f vm status crash)"
ok "a guest crash is reported: $(f vm status crash | grep reason)"
echo "not an ELF" > "$T/bad.elf"
f vm create bad --image "$T/bad.elf" >/dev/null
expect_msg 1 "bad failed to start on hostA: ftvm failed \(exit 125\): .*" f vm start bad
f vm create spin --image "$GUEST_DIR/hello.elf" --mem 32M --cmdline spin >/dev/null
f vm start spin >/dev/null
pid=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["pid"])' <<< "$(f --json vm status spin)")
kill -9 "$pid"
wait_for 10 bash -c "'$FTCTL' --socket '$S' vm status spin | grep -q 'state: *stopped'" || fail "kill not noticed"
f vm status spin | grep -q 'reason: *ftvm was killed by signal 9' || fail "kill reason: $(f vm status spin)"
ok "a killed ftvm is reported: $(f vm status spin | grep reason)"

# ---- ftd restarts ----
f vm start spin >/dev/null || fail "start spin"
ftd_term # SIGTERM: ftd stops its VMs, then itself
pgrep -f "$ST/vms/spin/ftvm.sock" >/dev/null && fail "ftvm outlived ftd"
ftd_bg
f vm list > "$T/out"
grep -qE '^spin +stopped .*ftd shut down: ftvm stopped on signal 15' "$T/out" || fail "after restart: $(cat "$T/out")"
grep -qE '^crash +stopped .*the guest crashed' "$T/out" || fail "after restart: $(cat "$T/out")"
f vm start spin >/dev/null || fail "start spin again"
pid=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["pid"])' <<< "$(f --json vm status spin)")
kill -9 "$FTD_PID" # ftd dies: its ftvm goes with it (PR_SET_PDEATHSIG)
wait "$FTD_PID" 2>/dev/null
# (a zombie waiting for init to reap it counts as gone)
gone() { [ ! -e "/proc/$1" ] || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
wait_for 10 gone "$pid" || fail "ftvm $pid outlived a killed ftd"
ftd_bg
f vm status spin | grep -q 'reason: *ftd stopped while the VM was running' ||
	fail "after kill -9: $(f vm status spin)"
ok "after ftd restarts: $(f vm status spin | grep reason)"

# ---- control protocol framing ----
raw() { python3 - "$S" "$@" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
lines = sys.argv[2:]
s.sendall(b"".join(l.encode() + b"\n" for l in lines))
buf = b""
while buf.count(b"\n") < len([l for l in lines if l]):
    d = s.recv(65536)
    if not d: break
    buf += d
print(buf.decode().strip())
PY
}
expect_reply() { # LINE PATTERN
	local r; r=$(raw "$1")
	grep -qE -- "$2" <<< "$r" || fail "request ${1:0:60} -> $r, expected /$2/"
	ok "${1:0:60} -> ${r:0:150}"
}
expect_reply 'not json' '"ok":false,"error":"bad JSON'
expect_reply '[1,2]' 'must be a JSON object'
expect_reply '{"cmd":7}' 'no \\"cmd\\" string'
expect_reply '{"cmd":"launch"}' 'unknown command \\"launch\\"'
expect_reply '{"cmd":"list","id":"x7"}' '"id":"x7"'
expect_reply '{"cmd":"list","cmd":"host"}' 'bad JSON.*duplicate'
expect_reply '{"cmd":"list","verbose":true}' 'unknown member \\"verbose\\" for \\"list\\"'
# Every command refuses a member it does not take, before it runs.
for c in create start stop delete status list host migrate resolve peers \
	protect unprotect failover leases; do
	expect_reply "{\"cmd\":\"$c\",\"bogus\":1}" "unknown member \\\\\"bogus\\\\\" for \\\\\"$c\\\\\""
done
# protection requests: bad members are refused before anything starts
expect_reply '{"cmd":"protect","name":"spin","peer":"hostB","bogus":1}' 'unknown member \\"bogus\\" for \\"protect\\"'
expect_reply '{"cmd":"protect","name":"spin","peer":"hostB"}' 'protect needs a witness'
expect_reply '{"cmd":"protect","name":"spin","peer":"hostB","witness":"hostW","no_arbiter":true}' 'not both'
expect_reply '{"cmd":"protect","name":"spin","peer":"hostB","no_arbiter":"yes"}' 'must be true or false'
expect_reply '{"cmd":"protect","name":"spin","peer":7,"no_arbiter":true}' '\\"peer\\" must be a string'
expect_reply '{"cmd":"protect","name":"spin","peer":"hostB","no_arbiter":true,"interval_ms":2}' 'interval_ms\\" must be 5..1000'
expect_reply '{"cmd":"protect","name":"spin","peer":"hostB","no_arbiter":true,"grace_ms":-1}' 'grace_ms\\" must be 0..600000'
expect_reply '{"cmd":"protect","name":"spin","peer":"hostB","no_arbiter":true,"delta":1}' 'delta\\" must be true or false'
expect_reply '{"cmd":"unprotect","name":"spin"}' 'spin is not protected'
expect_reply '{"cmd":"failover","name":"spin","force":1}' 'force\\" must be true or false'
expect_reply '{"cmd":"failover","name":"spin"}' 'spin is not a backup here'
expect_reply '{"cmd":"leases"}' 'is not a witness'
expect_reply '{"cmd":"create","name":"x","image":"rel/path"}' '\\"image\\" must be the absolute path'
expect_reply '{"cmd":"create","name":"x","image":"/bin/sh","mem":"64M"}' '\\"mem\\" must be a non-negative integer'
expect_reply '{"cmd":"start"}' '\\"name\\" must be a string'
expect_reply '{"cmd":"create","name":"x","image":"/bin/sh","console":"../x"}' "console '../x': give an absolute path or a file name"
expect_reply '{"cmd":"create","name":"x","image":"/bin/sh","disk_size":-5}' '\\"disk_size\\" must be a non-negative integer'
expect_reply '{"cmd":"migrate","name":"spin"}' '\\"to\\" must be a string'
expect_reply '{"cmd":"migrate","name":"spin","to":"hostB","compress":"zip"}' '\\"compress\\" must be \\"none\\", \\"lz4\\" or \\"auto\\"'
expect_reply '{"cmd":"migrate","name":"spin","to":"hostB","xbzrle_cache":100}' '\\"xbzrle_cache\\" must be 0 [(]off[)] or 8192'
expect_reply '{"cmd":"migrate","name":"spin","to":"hostB","downtime_ms":0}' '\\"downtime_ms\\" must be an integer 1..60000'
expect_reply '{"cmd":"host"}' '"ok":true,"name":"hostA","listen":"none"'
big=$(python3 -c 'print("{\"cmd\":\"list\",\"pad\":\"" + "x"*70000 + "\"}")')
expect_reply "$big" 'longer than 65535 bytes'
# Pipelined: an asynchronous request (start) and quick ones after it,
# answered in order.
r=$(raw '{"cmd":"start","name":"spin","id":1}' '{"cmd":"list","id":2}' '{"cmd":"status","name":"spin","id":3}')
python3 - "$r" <<'PY' || fail "pipelined replies: $r"
import json, sys
reps = [json.loads(l) for l in sys.argv[1].splitlines()]
assert [r["id"] for r in reps] == [1, 2, 3], reps
assert reps[0]["ok"] and reps[0]["state"] == "running", reps[0]
assert reps[2]["vm"]["state"] == "running" and "ftvm" in reps[2]["vm"], reps[2]
PY
ok "pipelined requests answered in order, an asynchronous one first"
f vm stop spin >/dev/null || fail "stop spin"
ftd_term
grep -qE 'Sanitizer|runtime error' "$T/ftd.log" && fail "sanitizer report: $(cat "$T/ftd.log")"
ok "no sanitizer reports in the ftd log"
