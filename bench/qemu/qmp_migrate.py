#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qmp_migrate.py - drive one QEMU live migration over QMP and print its
numbers as one JSON line (the QEMU half of bench/bench_migrate.sh).

    qmp_migrate.py --src SOCK --dst SOCK --uri tcp:IP:PORT
                   [--multifd N] [--bandwidth BYTES/s] [--downtime MS]
                   [--timeout S] [--quit]

The destination must have been started with "-incoming defer": this
script sets the same capabilities and parameters on both sides, starts
the destination listening (migrate-incoming), then the source (migrate),
and polls query-migrate on the source every 2 ms until it completes.
--bandwidth 0 leaves QEMU's default max-bandwidth (128 MiB/s in 7.2);
--downtime 0 leaves its default downtime-limit (300 ms).  --quit ends
both QEMUs afterwards.  Python's standard library only.

Output (stdout), on success:
  {"ok": true, "total_ms": QEMU's total-time, "downtime_ms": its downtime,
   "setup_ms": setup-time, "bytes": ram.transferred, "rounds":
   ram.dirty-sync-count, "wall_ms": migrate command to "completed" seen,
   "dst_run_ms": migrate command to destination "running" seen,
   "mbps": ram.mbps}
on failure {"ok": false, "error": "..."} and exit status 1.
"""
import argparse
import json
import socket
import sys
import time


class QMP:
    """A minimal synchronous QMP client on a UNIX socket."""

    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("cannot connect to QMP socket %s" % path)
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rw")
        json.loads(self.f.readline())  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP connection closed during %s" % name)
            r = json.loads(line)
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError("%s: %s" % (name, r["error"].get("desc", r)))
            return r.get("return")


def migrate(a):
    src = QMP(a.src, a.timeout)
    dst = QMP(a.dst, a.timeout)
    params = {}
    if a.multifd:
        caps = [{"capability": "multifd", "state": True}]
        for q in (src, dst):
            q.cmd("migrate-set-capabilities", capabilities=caps)
            q.cmd("migrate-set-parameters", **{"multifd-channels": a.multifd})
    if a.bandwidth:
        params["max-bandwidth"] = a.bandwidth
    if a.downtime:
        params["downtime-limit"] = a.downtime
    if params:
        src.cmd("migrate-set-parameters", **params)
    dst.cmd("migrate-incoming", uri=a.uri)
    t0 = time.monotonic()
    src.cmd("migrate", uri=a.uri)
    wall = None
    while True:
        info = src.cmd("query-migrate")
        st = info.get("status")
        if st == "completed":
            wall = (time.monotonic() - t0) * 1000
            break
        if st in ("failed", "cancelled"):
            raise RuntimeError("migration %s: %s" %
                               (st, info.get("error-desc", "no reason given")))
        if time.monotonic() - t0 > a.timeout:
            src.cmd("migrate_cancel")
            raise RuntimeError("migration did not complete in %d s "
                               "(cancelled)" % a.timeout)
        time.sleep(0.002)
    run = None
    while time.monotonic() - t0 < a.timeout:
        if dst.cmd("query-status").get("status") == "running":
            run = (time.monotonic() - t0) * 1000
            break
        time.sleep(0.002)
    ram = info.get("ram", {})
    out = {
        "ok": True,
        "total_ms": info.get("total-time"),
        "downtime_ms": info.get("downtime"),
        "setup_ms": info.get("setup-time"),
        "bytes": ram.get("transferred"),
        "rounds": ram.get("dirty-sync-count"),
        "wall_ms": round(wall, 1),
        "dst_run_ms": round(run, 1) if run is not None else None,
        "mbps": ram.get("mbps"),
    }
    if a.quit:
        for q in (src, dst):
            try:
                q.cmd("quit")
            except (RuntimeError, OSError):
                pass
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--uri", required=True)
    p.add_argument("--multifd", type=int, default=0)
    p.add_argument("--bandwidth", type=int, default=0)
    p.add_argument("--downtime", type=int, default=0)
    p.add_argument("--timeout", type=int, default=60)
    p.add_argument("--quit", action="store_true")
    a = p.parse_args()
    try:
        out = migrate(a)
    except (RuntimeError, OSError, ValueError) as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
