#!/usr/bin/env bash
# bench/bench_protect.sh - what checkpoint protection (Remus) costs a real
# service, and how long a failover takes, seen by a real client.
#
#   bench/bench_protect.sh [--runs N] [--duration S] [--clients LIST]
#       [--quick] [--no-tls] [--no-failover] [--no-throughput]
#       [--rto-min MS] [--disk-dir DIR] [--keep-log] [BUILD_DIR]
#
# Three network namespaces: host A and host B, each with a bridge whose
# uplink joins a client namespace's LAN, and a veth between A and B (the
# replication link).  The kvstore guest (256 MiB RAM, 256 MiB disk) runs
# on A; redis-benchmark (redis-tools) drives it from the client namespace.
#
# Throughput: SET and GET, 100k random keys (3-byte values), for each
# client setting of LIST (CxP: C connections, pipeline P; default
# "50x1,8x16,64x64": unpipelined, -P 16 -c 8, and a deep pipeline), in
# these modes: unprotected; protected to an `ftvm backup` on B at 25 ms
# and at 100 ms (plain TCP); 25 ms with --no-delta; 25 ms over TLS 1.3;
# unprotected again.  Each protected row is its own `protect`, so the
# primary's status (epochs/s, pause p50/p99, bytes and pages per epoch,
# page compression) describes that row alone.  Ratios are against the
# mean of the two unprotected rows.  Each row runs about S seconds
# (default 3; a short calibration run first sizes -n).
#
# Failover: the VM protected at 25 ms, light redis-benchmark load, and a
# probe client doing SET after SET on one connection; the probe SIGKILLs
# the primary's ftvm and times the replies around it.  N runs (default 5)
# with `ftvm backup --auto-failover` and N with `ftvm ctl failover` sent
# as soon as the backup's status says primary-lost (polled every 2 ms),
# alternating; the VM then protects back the other way.  Prints, p50 and
# max: the engine's failover_ms, how soon the backup saw the primary
# gone, the client-observed gap, and its parts (the client's TCP
# retransmission of the request the dead primary had, captured on the
# client's bridge, and the VM's answer to it).
#
# That retransmission waits for the client kernel's RTO (at least 200 ms
# on Linux); --rto-min MS sets the client namespace's route rto_min for
# the failover runs, to show the engine's part alone.  Disk images go in
# DIR (default /tmp; /dev/shm takes the host disk's flushes out of the
# picture).  --quick: 1 s rows, two client settings, no TLS row, 2
# failover runs of each kind.
# Needs root, /dev/kvm, redis-benchmark (skips with a message otherwise)
# and openssl for the TLS row.  About 3.5 minutes (--quick: about 1).
# Removes its namespaces, processes and files at exit.  Prints numbers;
# judges none (docs/performance.md).
set -u
cd "$(dirname "$0")/.." || exit 1
T_START=$(date +%s.%N)

RUNS=5 DUR=3 CLIENTS=50x1,8x16,64x64 B=build RTO_MIN='' DISK_DIR=/tmp
DO_TLS=1 DO_FO=1 DO_TP=1 KEEP=0 QUICK=0 RUNS_SET=0 DUR_SET=0 CL_SET=0
while [ $# -gt 0 ]; do
	case "$1" in
	--runs) RUNS=$2; RUNS_SET=1; shift 2 ;;
	--duration) DUR=$2; DUR_SET=1; shift 2 ;;
	--clients) CLIENTS=$2; CL_SET=1; shift 2 ;;
	--quick) QUICK=1; shift ;;
	--no-tls) DO_TLS=0; shift ;;
	--no-failover) DO_FO=0; shift ;;
	--no-throughput) DO_TP=0; shift ;;
	--rto-min) RTO_MIN=$2; shift 2 ;;
	--disk-dir) DISK_DIR=$2; shift 2 ;;
	--keep-log) KEEP=1; shift ;;
	-h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
	-*) echo "bench_protect: unknown option $1" >&2; exit 2 ;;
	*) B=$1; shift ;;
	esac
done
if [ $QUICK = 1 ]; then
	[ $RUNS_SET = 1 ] || RUNS=2
	[ $DUR_SET = 1 ] || DUR=1
	[ $CL_SET = 1 ] || CLIENTS=50x1,8x16
	DO_TLS=0
fi
case $RUNS in ''|*[!0-9]*) echo "bench_protect: --runs wants N >= 0" >&2; exit 2 ;; esac
case $DUR in ''|*[!0-9.]*) echo "bench_protect: --duration wants seconds" >&2; exit 2 ;; esac
case $RTO_MIN in ''|[1-9]*) ;; *) echo "bench_protect: --rto-min wants MS" >&2; exit 2 ;; esac
case $RTO_MIN in *[!0-9]*) echo "bench_protect: --rto-min wants MS" >&2; exit 2 ;; esac
for cc in ${CLIENTS//,/ }; do
	case $cc in [1-9]*x[1-9]*) ;; *) echo "bench_protect: --clients wants CxP,... (e.g. 8x16)" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "bench_protect: needs root (namespaces, veth)" >&2; exit 1; }
[ -c /dev/kvm ] || { echo "bench_protect: needs /dev/kvm" >&2; exit 1; }
if ! command -v redis-benchmark >/dev/null || ! command -v redis-cli >/dev/null; then
	echo "bench_protect: SKIP: redis-benchmark / redis-cli not installed (apt-get install redis-tools)"
	exit 0
fi
command -v python3 >/dev/null || { echo "bench_protect: needs python3" >&2; exit 1; }
if [ $DO_TLS = 1 ] && ! command -v openssl >/dev/null; then
	echo "bench_protect: no openssl: the TLS row is skipped" >&2
	DO_TLS=0
fi
FTVM=$B/ftvm KV=$B/guest/kvstore.elf
for f in "$FTVM" "$KV"; do
	[ -e "$f" ] || { echo "bench_protect: $f missing: run 'make' first" >&2; exit 1; }
done

# ---- temporary state, always removed ----------------------------------------
P=ftbp$$
NA=$P-a NB=$P-b NC=$P-c
IPA=10.67.0.1 IPB=10.67.0.2 GIP=10.66.0.2
MAC=52:54:00:66:00:02
NET="tap=kv0,mac=$MAC,ip=$GIP/24,bridge=br0"
T=$(mktemp -d /tmp/ftbp.XXXXXX)
D=$(mktemp -d "$DISK_DIR/ftbp-disks.XXXXXX") || { rm -rf "$T"; exit 1; }
RES=$T/results.jsonl FOR=$T/failover.jsonl
pids=()
REPORTED=0
report() {
	[ $REPORTED = 1 ] && return
	REPORTED=1
	[ -s "$RES" ] || [ -s "$FOR" ] || return
	echo
	python3 "$T/bp.py" report "$RES" "$FOR"
}
cleanup() {
	local p
	report
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do { wait "$p"; } 2>/dev/null; done
	ip netns del "$NA" 2>/dev/null
	ip netns del "$NB" 2>/dev/null
	ip netns del "$NC" 2>/dev/null
	rm -rf "$D"
	if [ $KEEP = 1 ]; then echo "logs kept in $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
: >"$RES"
: >"$FOR"
# Our own copies: others may rebuild the tree while the bench runs.
cp "$FTVM" "$T/ftvm" && cp "$KV" "$T/kvstore.elf" || { echo "bench_protect: cannot copy $FTVM, $KV" >&2; exit 1; }
FTVM=$T/ftvm KV=$T/kvstore.elf
"$FTVM" --help 2>&1 | grep -q 'backup --listen' ||
	{ echo "bench_protect: $B/ftvm has no 'backup' (checkpoint protection)" >&2; exit 1; }

# ---- the helper: redis-benchmark rows, the failover probe, the report -------
cat >"$T/bp.py" <<'PY'
import json, os, signal, socket, struct, subprocess, sys, threading, time

def ctl(sock, req, timeout=30):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    return json.loads(buf)

class Ctl:
    """One control connection, many requests (JSON lines)."""
    def __init__(self, sock):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(sock)
        self.buf = b""
    def __call__(self, req):
        self.s.sendall((json.dumps(req) + "\n").encode())
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise OSError("control socket closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

def bench(ns, gip, test, c, p, n, timeout):
    cmd = ["ip", "netns", "exec", ns, "timeout", str(int(timeout)),
           "redis-benchmark", "-h", gip, "-t", test, "-n", str(n), "-c", str(c),
           "-P", str(p), "-r", "100000", "--precision", "3", "--csv"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    t1 = time.monotonic()
    for line in r.stdout.splitlines():
        f = [x.strip('"') for x in line.split(",")]
        if f and f[0] == test.upper():
            return {"rps": float(f[1]), "avg": float(f[2]), "p50": float(f[4]),
                    "p95": float(f[5]), "p99": float(f[6]), "max": float(f[7]),
                    "n": n, "secs": t1 - t0}
    raise RuntimeError("redis-benchmark %s -c %d -P %d -n %d: no result (rc %d): %s"
                       % (test, c, p, n, r.returncode, (r.stderr or r.stdout)[-300:]))

def cmd_row(a):
    # row RES MODE INTERVAL TEST C P DUR NS GIP SOCK
    res, mode, interval, test, c, p, dur, ns, gip, sock = a
    c, p, dur, interval = int(c), int(p), float(dur), int(interval)
    inflight = c * p
    # Calibrate: a short run sizes -n for about DUR seconds.
    if interval:
        n0 = max(inflight * 6, 200)
    else:
        n0 = 20000 if p == 1 else 100000
    cal = bench(ns, gip, test, c, p, n0, 120)
    n = max(int(cal["rps"] * dur), inflight * 10, 1000)
    n = (n + inflight - 1) // inflight * inflight
    s0 = ctl(sock, {"cmd": "status"}) if interval else None
    t0 = time.monotonic()
    r = bench(ns, gip, test, c, p, n, max(60, dur * 20))
    t1 = time.monotonic()
    s1 = ctl(sock, {"cmd": "status"}) if interval else None
    row = {"mode": mode, "interval": interval, "test": test.upper(), "c": c, "p": p,
           "load": os.getloadavg()[0], **r}
    if interval:
        a0, a1 = s0["protection"], s1["protection"]
        d = lambda k: a1.get(k, 0) - a0.get(k, 0)
        ep = d("epochs")
        row.update({
            "epochs": ep, "eps": ep / (t1 - t0),
            "pause_p50_us": a1["pause_p50_us"], "pause_p99_us": a1["pause_p99_us"],
            "pause_max_us": a1["pause_max_us"],
            "ack_p50_ms": a1["ack_p50_ms"], "ack_p99_ms": a1["ack_p99_ms"],
            "pages": d("pages"), "bytes": d("bytes"), "page_bytes": d("page_bytes"),
            "xor_pages": d("xor_pages"), "lz4_pages": d("lz4_pages"),
            "stretched": d("stretched"), "early": d("early"),
            "net_stalls": d("net_stalls"), "disk_writes": d("disk_writes"),
            "disk_stalls": d("disk_stalls"), "state": a1["state"],
            "error": a1.get("error", ""),
        })
    with open(res, "a") as f:
        f.write(json.dumps(row) + "\n")
    line = "  %-12s %-3s %4dx%-3d %9.0f req/s  p50 %7.3f  p99 %7.3f ms" % (
        mode, row["test"], c, p, r["rps"], r["p50"], r["p99"])
    if interval:
        ep = max(row["epochs"], 1)
        line += "  %5.1f ep/s  pause %.0f/%.0f us  %.1f KiB/ep" % (
            row["eps"], row["pause_p50_us"], row["pause_p99_us"],
            row["bytes"] / ep / 1024)
        if row["state"] != "protected":
            line += "  STATE %s %s" % (row["state"], row["error"])
    print(line, flush=True)

def send_all(s, b):
    s.sendall(b)

def cmd_probe(a):
    # probe OUT GIP KILL_PID BACKUP_SOCK MODE WARM: runs in the client
    # namespace.  SET after SET on one connection; after WARM seconds,
    # SIGKILL the primary; failover (auto: the backup does it; manual:
    # "failover" once the status says primary-lost); time the replies.
    out, gip, kpid, bsock, mode, warm = a
    kpid, warm = int(kpid), float(warm)
    replies, errs, state = [], [], {"stop": False, "reconnects": 0}
    def prober():
        i, s, buf = 0, None, b""
        while not state["stop"]:
            try:
                if s is None:
                    s = socket.create_connection((gip, 6379), timeout=20)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buf = b""
                    state["sock"] = s
                    state["port"] = s.getsockname()[1]
                i += 1
                v = str(i).encode()
                s.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\nprobe\r\n$%d\r\n%s\r\n" % (len(v), v))
                while b"\r\n" not in buf:
                    d = s.recv(4096)
                    if not d:
                        raise OSError("connection closed")
                    buf += d
                line, buf = buf.split(b"\r\n", 1)
                replies.append(time.monotonic())
                if line != b"+OK":
                    errs.append(line.decode(errors="replace"))
            except OSError as e:
                errs.append("%s" % e)
                state["reconnects"] += 1
                try:
                    s.close()
                except Exception:
                    pass
                s = None
                time.sleep(0.01)
    pkts = []
    def sniffer():
        # The probe connection's segments as the client's bridge sees
        # them: when the client retransmitted, when the VM answered.
        try:
            ps = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            ps.bind(("lan", 0))
            ps.settimeout(0.2)
        except OSError:
            return
        while not state["stop"]:
            try:
                f = ps.recv(65535)
            except socket.timeout:
                continue
            t = time.monotonic()
            port = state.get("port")
            if port is None or len(f) < 54 or f[12:14] != b"\x08\x00" or f[23] != 6:
                continue
            ihl = (f[14] & 15) * 4
            sp, dp, seq = struct.unpack_from("!HHI", f, 14 + ihl)
            if port not in (sp, dp):
                continue
            tot = struct.unpack_from("!H", f, 16)[0]
            plen = tot - ihl - (f[14 + ihl + 12] >> 4) * 4
            pkts.append((t, sp == port, plen, seq))
    th = threading.Thread(target=prober, daemon=True)
    sn = threading.Thread(target=sniffer, daemon=True)
    sn.start()
    t_start = time.monotonic()
    th.start()
    while time.monotonic() < t_start + warm or len(replies) < 10:
        time.sleep(0.01)
        if time.monotonic() > t_start + 30:
            raise SystemExit("probe: no replies from the VM")
    b = Ctl(bsock)
    # The probe connection's retransmission timeout and RTT (struct
    # tcp_info: tcpi_rto at byte 8, tcpi_rtt at 68, microseconds).
    try:
        ti = state["sock"].getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        rto_ms = struct.unpack_from("I", ti, 8)[0] / 1e3
        rtt_ms = struct.unpack_from("I", ti, 68)[0] / 1e3
    except (OSError, KeyError, struct.error):
        rto_ms = rtt_ms = None
    dirty_kb = meminfo("Dirty")
    t_kill = time.monotonic()
    os.kill(kpid, signal.SIGKILL)
    res = {"mode": mode, "t_lost_ms": None, "t_fo_ms": None, "t_exit_ms": None,
           "rto_ms": rto_ms, "rtt_ms": rtt_ms, "t_kill_mono": t_kill,
           "dirty_kb": dirty_kb}
    deadline = t_kill + 20
    while time.monotonic() < deadline:
        if res["t_exit_ms"] is None and not alive(kpid):
            res["t_exit_ms"] = (time.monotonic() - t_kill) * 1e3
        try:
            st = b({"cmd": "status"})
        except OSError:
            time.sleep(0.002)
            continue
        now = time.monotonic()
        if "failover" in st:
            res["failover"] = st["failover"]
            res["t_fo_ms"] = (now - t_kill) * 1e3
            break
        if st.get("replica") == "primary-lost" and mode == "manual":
            res["t_lost_ms"] = (now - t_kill) * 1e3
            fo = b({"cmd": "failover"})
            res["t_fo_ms"] = (time.monotonic() - t_kill) * 1e3
            if not fo.get("ok"):
                res["error"] = fo.get("error")
            res["failover"] = fo
            break
        time.sleep(0.002)
    # Wait for the first reply from the new primary, then a little more.
    while time.monotonic() < deadline and not any(r > t_kill + 0.001 for r in replies):
        if res["t_exit_ms"] is None and not alive(kpid):
            res["t_exit_ms"] = (time.monotonic() - t_kill) * 1e3
        time.sleep(0.002)
    while res["t_exit_ms"] is None and time.monotonic() < deadline:
        if not alive(kpid):
            res["t_exit_ms"] = (time.monotonic() - t_kill) * 1e3
        time.sleep(0.002)
    time.sleep(0.3)
    state["stop"] = True
    rs = list(replies)
    before = [r for r in rs if r <= t_kill + 0.001]
    after = [r for r in rs if r > t_kill + 0.001]
    pre = [y - x for x, y in zip(before, before[1:]) if x > t_start + 0.2]
    res.update({
        "replies_before": len(before), "replies_after": len(after),
        "errors": errs[:5], "reconnects": state["reconnects"],
        "steady_gap_max_ms": max(pre) * 1e3 if pre else None,
        "slow_gaps": [[round((y - t_kill) * 1e3, 1), round((y - x) * 1e3, 1)]
                      for x, y in zip(before, before[1:]) if y - x > 0.06],
        "steady_gap_p50_ms": sorted(pre)[len(pre) // 2] * 1e3 if pre else None,
    })
    # The client's first retransmission after the kill (a data segment
    # whose sequence number it had sent before: the request the dead
    # primary took), and the VM's first segment with data after it.
    sent, rx = set(), None
    for t, cl, n, seq in pkts:
        if not cl or n == 0:
            continue
        if t > t_kill and seq in sent:
            rx = t
            break
        sent.add(seq)
    if rx is not None:
        res["kill_to_rexmit_ms"] = (rx - t_kill) * 1e3
        tx = [t for t, cl, n, seq in pkts if not cl and n > 0 and t > rx]
        if tx:
            res["rexmit_to_reply_ms"] = (tx[0] - rx) * 1e3
    if before and after:
        res["gap_ms"] = (after[0] - before[-1]) * 1e3
        res["kill_to_reply_ms"] = (after[0] - t_kill) * 1e3
        res["last_before_kill_ms"] = (t_kill - before[-1]) * 1e3
    with open(out, "a") as f:
        f.write(json.dumps(res) + "\n")
    fo = res.get("failover") or {}
    print("  %-6s engine failover %s ms (lost->running %s ms), killed ftvm gone after %s ms%s; "
          "client (rto %s ms): kill->reply %s ms (its retransmission at %s, the VM's answer "
          "%s ms later), gap %s ms; host page cache dirty at the kill %s MiB%s" % (
        mode, fmt(fo.get("failover_ms")), fmt(fo.get("since_primary_lost_ms")),
        fmt(res["t_exit_ms"]),
        "" if res["t_lost_ms"] is None else ", kill->primary-lost %s ms" % fmt(res["t_lost_ms"]),
        fmt(res["rto_ms"], 0),
        fmt(res.get("kill_to_reply_ms")), fmt(res.get("kill_to_rexmit_ms")),
        fmt(res.get("rexmit_to_reply_ms")), fmt(res.get("gap_ms")),
        fmt(dirty_kb / 1024 if dirty_kb is not None else None),
        ("; probe errors: %s" % "; ".join(res["errors"])) if res["errors"] else ""),
        flush=True)

def meminfo(key):
    """A /proc/meminfo figure in kB (Dirty: page cache not yet written)."""
    try:
        for l in open("/proc/meminfo"):
            if l.startswith(key + ":"):
                return int(l.split()[1])
    except OSError:
        pass
    return None

def alive(pid):
    """The killed ftvm still exists (not yet a zombie or gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def fmt(x, d=1):
    return "-" if x is None else "%.*f" % (d, x)

def pct(xs, q):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    if q == 50 and len(xs) % 2 == 0:
        return (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
    return xs[int(round(q / 100 * (len(xs) - 1)))]

def cmd_report(a):
    res, fo_file = a
    rows = [json.loads(l) for l in open(res) if l.strip()]
    if rows:
        report_tp(rows)
    fos = [json.loads(l) for l in open(fo_file) if l.strip()]
    if fos:
        report_fo(fos)

def report_tp(rows):
    keys = []
    for r in rows:
        k = (r["test"], r["c"], r["p"])
        if k not in keys:
            keys.append(k)
    modes = []
    for r in rows:
        if r["mode"] not in modes:
            modes.append(r["mode"])
    by = {(r["mode"], r["test"], r["c"], r["p"]): r for r in rows}
    print()
    print("Throughput and latency (redis-benchmark from the client namespace; ratio = req/s over")
    print("the mean of the two unprotected rows; +p50/+p99 = latency added, ms; bound = C*P/interval)")
    print()
    print("| test | clients | mode | req/s | ratio | p50 ms | p99 ms | +p50 | +p99 | bound req/s |")
    print("|------|---------|------|------:|------:|-------:|-------:|-----:|-----:|------------:|")
    for k in keys:
        base = [by[(m,) + k] for m in ("unprot", "unprot2") if (m,) + k in by]
        if not base:
            continue
        brps = sum(b["rps"] for b in base) / len(base)
        bp50 = sum(b["p50"] for b in base) / len(base)
        bp99 = sum(b["p99"] for b in base) / len(base)
        for m in modes:
            r = by.get((m,) + k)
            if not r:
                continue
            prot = r["interval"] > 0
            print("| %s | %dx%d | %s | %.0f | %s | %.3f | %.3f | %s | %s | %s |" % (
                k[0], k[1], k[2], m, r["rps"],
                "%.3f" % (r["rps"] / brps) if prot else "-",
                r["p50"], r["p99"],
                "%+.2f" % (r["p50"] - bp50) if prot else "-",
                "%+.2f" % (r["p99"] - bp99) if prot else "-",
                "%.0f" % (k[1] * k[2] / (r["interval"] / 1e3)) if prot else "-"))
    prows = [r for r in rows if r["interval"] > 0]
    if not prows:
        return
    print()
    print("Primary's protection status over each protected row (counters: differences over the")
    print("row; pause and ack: percentiles over the row's epochs, each row a protect of its own;")
    print("KiB/ep: stream bytes per epoch; pg/ep: dirty pages sent per epoch; comp: page data")
    print("4 KiB x pages / encoded page bytes; xor%/lz4%: pages sent as xor delta / LZ4;")
    print("str%/early%: epochs stretched waiting for an ack / started early (a buffer half")
    print("full); stalls: guest sends / disk writes refused for a full buffer, net/disk)")
    print()
    print("| test | clients | mode | ep/s | pause p50 us | pause p99 us | ack p50/p99 ms | pg/ep | KiB/ep | comp | xor% | lz4% | str% | early% | stalls |")
    print("|------|---------|------|-----:|-------------:|-------------:|---------------:|------:|-------:|-----:|-----:|-----:|-----:|-------:|-------:|")
    for k in keys:
        for m in modes:
            r = by.get((m,) + k)
            if not r or r["interval"] == 0:
                continue
            ep = max(r["epochs"], 1)
            pg = max(r["pages"], 1)
            print("| %s | %dx%d | %s | %.1f | %.0f | %.0f | %.2f / %.2f | %.1f | %.1f | %s | %.0f | %.0f | %.0f | %.0f | %d/%d |" % (
                k[0], k[1], k[2], m, r["eps"], r["pause_p50_us"], r["pause_p99_us"],
                r["ack_p50_ms"], r["ack_p99_ms"], r["pages"] / ep, r["bytes"] / ep / 1024,
                "%.2f" % (r["pages"] * 4096 / r["page_bytes"]) if r["page_bytes"] else "-",
                100 * r["xor_pages"] / pg, 100 * r["lz4_pages"] / pg,
                100 * r["stretched"] / ep, 100 * r["early"] / ep,
                r["net_stalls"], r["disk_stalls"]))
    nd = [r for r in prows if r["mode"] == "p25-nodelta"]
    if nd:
        print()
        print("Bytes per epoch, delta (p25) vs --no-delta (p25-nodelta):")
        for r in nd:
            d = by.get(("p25", r["test"], r["c"], r["p"]))
            if not d:
                continue
            bd = d["bytes"] / max(d["epochs"], 1)
            bn = r["bytes"] / max(r["epochs"], 1)
            pd = d["pages"] / max(d["epochs"], 1)
            pn = r["pages"] / max(r["epochs"], 1)
            print("  %s %dx%d: %.1f vs %.1f KiB/epoch (no-delta/delta %.2fx); per page sent "
                  "%.0f vs %.0f bytes (%.2fx)" % (
                r["test"], r["c"], r["p"], bd / 1024, bn / 1024, bn / bd if bd else 0,
                d["bytes"] / max(d["pages"], 1), r["bytes"] / max(r["pages"], 1),
                (r["bytes"] / max(r["pages"], 1)) / (d["bytes"] / max(d["pages"], 1))
                if d["bytes"] else 0))

def report_fo(fos):
    print()
    print("Failover (SIGKILL of the primary's ftvm, protected at 25 ms; probe = SET after SET on one")
    print("connection; engine = the backup's failover_ms (failover start to the VM running);")
    print("lost->run = since_primary_lost_ms; kill->lost = when the backup's status first said")
    print("primary-lost (manual only, polled every 2 ms); kill->reply = primary's death to the")
    print("probe's first reply from the backup; gap = last reply before the kill to that reply;")
    print("exit = kill to the killed ftvm being gone; rto = the probe connection's TCP")
    print("retransmission timeout at the kill; kill->rexmit = the client's first retransmission")
    print("after the kill (of the request the dead primary took); rexmit->reply = from it to the")
    print("VM's next data segment (both captured on the client's bridge; '-' when the probe got")
    print("its reply without retransmitting); steady = reply gaps before the kill)")
    print()
    print("| mode | n | engine ms p50 / max | lost->run ms p50 / max | kill->exit ms p50 / max | kill->lost ms p50 / max | kill->reply ms p50 / max | gap ms p50 / max | rto ms p50 / max | kill->rexmit ms p50 / max | rexmit->reply ms p50 / max | steady gap ms p50 / max |")
    print("|------|---|--------------------:|-----------------------:|------------------------:|------------------------:|-------------------------:|-----------------:|-----------------:|--------------------------:|---------------------------:|------------------------:|")
    for mode in ("auto", "manual", "all"):
        fs = [f for f in fos if mode == "all" or f["mode"] == mode]
        if not fs:
            continue
        g = lambda key: [f.get(key) for f in fs]
        eng = [(f.get("failover") or {}).get("failover_ms") for f in fs]
        lr = [(f.get("failover") or {}).get("since_primary_lost_ms") for f in fs]
        def pm(xs):
            return "%s / %s" % (fmt(pct(xs, 50), 2), fmt(pct(xs, 100), 2))
        print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            mode, len(fs), pm(eng), pm(lr), pm(g("t_exit_ms")), pm(g("t_lost_ms")),
            pm(g("kill_to_reply_ms")), pm(g("gap_ms")), pm(g("rto_ms")),
            pm(g("kill_to_rexmit_ms")), pm(g("rexmit_to_reply_ms")),
            "%s / %s" % (fmt(pct(g("steady_gap_p50_ms"), 50)), fmt(pct(g("steady_gap_max_ms"), 100)))))
    bad = [f for f in fos if f.get("kill_to_reply_ms") is None or f.get("error")]
    for f in bad:
        print("  failed run (%s): %s" % (f["mode"], f.get("error") or "no reply after the kill"))
    errs = sum(len(f.get("errors") or []) for f in fos)
    print("  probe errors or reconnects: %d (all runs)" % errs)

if __name__ == "__main__":
    {"row": cmd_row, "probe": cmd_probe, "report": cmd_report}[sys.argv[1]](sys.argv[2:])
PY

# spawn CMD...: run CMD in the background through a subshell that waits
# for it (so that bash reports no "Killed" when the bench kills it); sets
# SPAWN_PID to CMD's pid.
spawn() {
	local pf=$T/spawn.pid
	rm -f "$pf"
	( "$@" & echo $! >"$pf"; wait $! ) &
	pids+=($!)
	until [ -s "$pf" ]; do sleep 0.01; done
	SPAWN_PID=$(cat "$pf")
	pids+=("$SPAWN_PID")
}
# wait_line SECONDS FILE REGEX: wait until FILE has a line matching REGEX.
wait_line() {
	local end=$((SECONDS + $1))
	until grep -qE -- "$3" "$2" 2>/dev/null; do
		[ $SECONDS -ge "$end" ] && return 1
		sleep 0.02
	done
}
# stop PID [SECONDS]: wait for it to end (default 5 s), then kill it.
stop() {
	local n=$(( ${2:-5} * 50 ))
	for _ in $(seq $n); do kill -0 "$1" 2>/dev/null || break; sleep 0.02; done
	kill -9 "$1" 2>/dev/null
	{ wait "$1"; } 2>/dev/null
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# The checked-out commit, read from .git without running git.
head_commit() {
	local h r
	h=$(cat .git/HEAD 2>/dev/null) || { echo '?'; return; }
	case $h in
	"ref: "*)
		r=${h#ref: }
		{ cat ".git/$r" 2>/dev/null ||
			awk -v r="$r" '$2 == r { print $1 }' .git/packed-refs 2>/dev/null; } |
			cut -c1-7 ;;
	*) echo "$h" | cut -c1-7 ;;
	esac
}
die() { echo "bench_protect: $*" >&2; exit 1; }
ns_of() { [ "$1" = a ] && echo "$NA" || echo "$NB"; }
ip_of() { [ "$1" = a ] && echo "$IPA" || echo "$IPB"; }
other() { [ "$1" = a ] && echo b || echo a; }

# ---- the hosts ---------------------------------------------------------------
for n in "$NA" "$NB" "$NC"; do
	ip netns add "$n" || die "cannot create network namespace $n"
	ip -n "$n" link set lo up
done
ip -n "$NC" link add lan type bridge
ip -n "$NC" link set lan up
ip -n "$NC" addr add 10.66.0.1/24 dev lan
for h in a b; do
	n=$(ns_of $h)
	ip -n "$n" link add br0 type bridge
	ip -n "$n" link set br0 up
	ip -n "$n" link add uplink type veth peer name p$h netns "$NC"
	ip -n "$n" link set uplink master br0 up
	ip -n "$NC" link set p$h master lan up
done
ip -n "$NA" link add rep type veth peer name rep netns "$NB" || die "veth"
ip -n "$NA" addr add "$IPA/24" dev rep
ip -n "$NB" addr add "$IPB/24" dev rep
ip -n "$NA" link set rep up
ip -n "$NB" link set rep up

TLSA='' TLSB=''
if [ $DO_TLS = 1 ]; then
	{ tools/ft-certs init "$T/pki" && tools/ft-certs host "$T/pki" hosta "$IPA" &&
		tools/ft-certs host "$T/pki" hostb "$IPB"; } >/dev/null ||
		die "tools/ft-certs failed"
	TLSA="--ca $T/pki/ca.crt --cert $T/pki/hosta.crt --key $T/pki/hosta.key --peer-name hostb"
	TLSB="--ca $T/pki/ca.crt --cert $T/pki/hostb.crt --key $T/pki/hostb.key --peer-name hosta"
fi

echo "== checkpoint protection: kvstore under redis-benchmark, failover, $(date -u '+%Y-%m-%d %H:%M UTC') =="
echo "host: $(uname -r), $(nproc) CPUs, load average $(loadavg) before"
echo "tree: commit $(head_commit) (uncommitted changes not shown)"
echo "redis-benchmark: $(redis-benchmark --version 2>/dev/null | head -n1); disk images in $DISK_DIR ($(df --output=fstype "$DISK_DIR" | tail -n1))"

# The VM: kvstore on A.  PRIM = host of the running VM, PSOCK its control
# socket, PPID_ its ftvm.
PRIM=a PSOCK=$T/vm0.sock
PDISK=$D/disk0.img
truncate -s 256M "$PDISK"
spawn ip netns exec "$NA" "$FTVM" run --image "$KV" --mem 256M --net "$NET" \
	--disk "$PDISK" --control "$PSOCK" --console "$T/vm0.log" \
	>"$T/vm0.out" 2>&1
PPID_=$SPAWN_PID
wait_line 30 "$T/vm0.log" 'kvstore: listening' || die "kvstore did not start: $(cat "$T/vm0.log" "$T/vm0.out")"
for _ in $(seq 100); do
	ip netns exec "$NC" timeout 2 redis-cli -h $GIP ping 2>/dev/null | grep -q PONG && break
	sleep 0.1
done
# Every key exists before the GETs.
ip netns exec "$NC" redis-benchmark -h $GIP -t set -n 200000 -c 8 -P 16 -r 100000 -q >/dev/null 2>&1

# backup HOST OUT EXTRA...: `ftvm backup` on HOST (the other host of the
# VM), its replica disk $D/bdiskK.img; sets BK_PID BK_ADDR BK_SOCK BK_DISK.
K=0
backup() {
	local h=$1 out=$2; shift 2
	K=$((K + 1))
	BK_SOCK=$T/bk$K.sock BK_DISK=$D/bdisk$K.img
	: >"$out"
	spawn ip netns exec "$(ns_of $h)" "$FTVM" backup --listen "$(ip_of $h):0" "$@" \
		--control "$BK_SOCK" --console "$T/bk$K.log" --net "$NET" \
		--disk "$BK_DISK" --disk-size 256M >"$out" 2>"$out.err"
	BK_PID=$SPAWN_PID
	wait_line 20 "$out" 'listening on' || die "backup did not listen: $(cat "$out.err")"
	BK_ADDR=$(sed -n 's/^backup: listening on //p' "$out")
}

# protect_to OUT ARGS...: protect the VM to the backup just started.
protect_to() {
	local out=$1; shift
	timeout 120 "$FTVM" ctl --control "$PSOCK" protect "$BK_ADDR" "$@" >"$out" 2>"$out.err" &&
		grep -q '"state":"protected"' "$out" ||
		die "protect failed: $(cat "$out" "$out.err"; tail -3 "$T/bk.out.err" 2>/dev/null)"
}

# ---- throughput: unprotected vs protected ------------------------------------
if [ $DO_TP = 1 ]; then
	MODES="unprot p25 p100 p25-nodelta"
	[ $DO_TLS = 1 ] && MODES="$MODES p25-tls"
	MODES="$MODES unprot2"
	echo
	echo "-- throughput: modes $MODES; clients (CxP) $CLIENTS; ~${DUR} s per row"
	for m in $MODES; do
		echo "  [$m: load average $(loadavg)]"
		for t in set get; do
			for cc in ${CLIENTS//,/ }; do
				c=${cc%x*} p=${cc#*x}
				iv=0 args=(--insecure)
				case $m in
				p25) iv=25 ;;
				p100) iv=100 ;;
				p25-nodelta) iv=25 args+=(--no-delta) ;;
				p25-tls) iv=25; read -ra args <<<"$TLSA" ;;
				esac
				if [ $iv != 0 ]; then
					if [ $m = p25-tls ]; then
						backup b "$T/bk.out" $TLSB
					else
						backup b "$T/bk.out" --insecure
					fi
					protect_to "$T/prot.out" --interval $iv "${args[@]}"
					sleep 0.3
				fi
				python3 "$T/bp.py" row "$RES" "$m" "$iv" "$t" "$c" "$p" "$DUR" "$NC" "$GIP" "$PSOCK" ||
					die "row $m $t $cc failed"
				if [ $iv != 0 ]; then
					timeout 60 "$FTVM" ctl --control "$PSOCK" unprotect >"$T/unp.out" 2>&1 ||
						die "unprotect failed: $(cat "$T/unp.out")"
					stop $BK_PID 10
				fi
			done
		done
	done
fi

# ---- failover ------------------------------------------------------------------
if [ $DO_FO = 1 ] && [ "$RUNS" -gt 0 ]; then
	echo
	echo "-- failover: $RUNS runs each with --auto-failover and with ctl failover, 25 ms epochs, plain TCP"
	if [ -n "$RTO_MIN" ]; then
		ip -n "$NC" route replace 10.66.0.0/24 dev lan proto kernel scope link \
			src 10.66.0.1 rto_min "${RTO_MIN}ms" || die "cannot set rto_min"
		echo "   client route: rto_min ${RTO_MIN} ms (Linux default: 200 ms)"
	fi
	echo "  [load average $(loadavg)]"
	for i in $(seq "$RUNS"); do
		for mode in auto manual; do
			o=$(other $PRIM)
			if [ $mode = auto ]; then
				backup "$o" "$T/bk.out" --insecure --auto-failover
			else
				backup "$o" "$T/bk.out" --insecure
			fi
			protect_to "$T/prot.out" --interval 25 --insecure
			ip netns exec "$NC" redis-benchmark -h $GIP -t set,get -n 100000000 -c 4 -P 8 \
				-r 100000 -q >"$T/load.out" 2>&1 &
			LOAD=$!
			pids+=("$LOAD")
			sleep 0.5
			ip netns exec "$NC" python3 "$T/bp.py" probe "$FOR" "$GIP" "$PPID_" "$BK_SOCK" "$mode" 1.5 ||
				die "probe failed (run $i, $mode)"
			kill "$LOAD" 2>/dev/null
			{ wait "$LOAD"; } 2>/dev/null
			stop "$PPID_" 5
			# The backup is the VM now.
			rm -f "$PDISK"	# the dead primary's image
			PRIM=$o PSOCK=$BK_SOCK PPID_=$BK_PID PDISK=$BK_DISK
			"$FTVM" ctl --control "$PSOCK" status | grep -q '"role":"primary"' ||
				die "after the failover: $("$FTVM" ctl --control "$PSOCK" status)"
		done
	done
fi

report
echo
T_END=$(date +%s.%N)
echo "load average $(loadavg) after; $(python3 -c "print('%.0f' % ($T_END - $T_START))") s in all"
