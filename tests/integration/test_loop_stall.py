# SPDX-License-Identifier: Apache-2.0
"""The event loop never stalls long enough for the leader to lose its term (issue 9, point 5).

A 3-member cluster. With a directory of 100k keys loaded, four heavy requests go to the leader at once:
a 10 MB form body of 5 million empty fields (`a&a&...`: refused after the 10000-field cap, without
unescaping the rest), a recursive GET of the 100k-key directory, a recursive DELETE of it, and a D-Bus
Backup (a RocksDB checkpoint, now on its own thread; skipped if no private dbus-daemon can be started).
Meanwhile a steady writer PUTs to the leader. Afterwards the leader must be the same member with the
same Raft term, the writer must never have waited 1 s or more, and every heavy request must have done
what it should.
"""

import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest
import requests

import procs
from cluster import Cluster, require_binary
from conftest import REFERENCE

pytestmark = pytest.mark.skipif(REFERENCE, reason="our event loop (and our D-Bus Backup)")

HERE = os.path.dirname(os.path.abspath(__file__))
LOADGEN_SRC = os.path.join(HERE, "..", "bench", "loadgen.c")
N_KEYS = 100_000


def start_dbus():
    """A private session bus: (address, pid), or None if dbus-daemon is not there."""
    if not shutil.which("dbus-daemon") or not shutil.which("busctl"):
        return None
    out = subprocess.run(["dbus-daemon", "--session", "--fork", "--print-address=1", "--print-pid=1"],
                         capture_output=True, text=True, timeout=10)
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) < 2:
        return None
    return lines[0], int(lines[1])


def build_loadgen(tmp):
    cc = shutil.which("cc")
    if not cc:
        return None
    out = os.path.join(tmp, "loadgen")
    subprocess.run([cc, "-O2", "-o", out, LOADGEN_SRC, "-lgnutls"], check=True, timeout=120)
    return out


def load_keys(m, loadgen):
    """N_KEYS keys under /big, written through member m."""
    t = time.monotonic()
    if loadgen:
        port = m.url.rsplit(":", 1)[1]
        r = subprocess.run([loadgen, "--port", port, "--mode", "put", "-n", str(N_KEYS), "-c", "64",
                            "--prefix", "big", "--size", "8"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and '"ok":%d' % N_KEYS in r.stdout, r.stdout + r.stderr
    else:
        def writer(lo, hi):
            with requests.Session() as s:
                for i in range(lo, hi):
                    assert s.put(f"{m.url}/v2/keys/big/{i}", data={"value": "x"}, timeout=30).status_code == 201
        step = N_KEYS // 16
        ths = [threading.Thread(target=writer, args=(i * step, (i + 1) * step)) for i in range(16)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
    print(f"\nloaded {N_KEYS} keys in {time.monotonic() - t:.1f} s")


def steady_writer(url, stop, out):
    """PUTs one key every 20 ms until stop is set; out receives the latencies. A process of its own, so
    that the test's other threads (building and parsing megabytes under the GIL) do not count."""
    lat = []
    with requests.Session() as s:
        i = 0
        while not stop.is_set():
            t = time.monotonic()
            r = s.put(url + "/v2/keys/steady", data={"value": str(i)}, timeout=30)
            lat.append(time.monotonic() - t)
            if r.status_code not in (200, 201):
                lat.append(float("inf"))
            i += 1
            time.sleep(0.02)
    out.put(lat)


def term_and_leader(m):
    r = requests.get(m.url + "/v2/keys/", timeout=5)
    return int(r.headers["X-Raft-Term"]), m.stats_self(timeout=5)["leaderInfo"]["leader"]


def test_loop_stall():
    require_binary(False)
    tmp = tempfile.mkdtemp(prefix="etcd2-stall-")
    buses = []
    c = None
    try:
        for _ in range(3):
            b = start_dbus()
            if b:
                buses.append(b)
        c = Cluster(n=3, start=False)
        if len(buses) == 3:
            for m, (addr, _) in zip(c.members, buses):
                # each member on its own bus, so that the leader's io.etcd.etcd2 is the one called
                m.argv = (lambda orig, a: lambda ic, st: orig(ic, st) + ["--bus-address", a])(m.argv, addr)
        c.start_all()
        leader = c.wait_leader()
        bus = buses[c.members.index(leader)][0] if len(buses) == 3 else None

        load_keys(leader, build_loadgen(tmp))
        term0, lead0 = term_and_leader(leader)

        results = {}
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        out = ctx.Queue()
        flood = b"&".join([b"a"] * 5_000_000)

        def timed(name, f):
            t = time.monotonic()
            try:
                results[name] = f()
            except Exception as e:  # reported by the asserts below
                results[name] = e
            results[name + "_s"] = time.monotonic() - t

        def form():
            return requests.put(leader.url + "/v2/keys/formflood", data=flood, timeout=60,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})

        def get_big():
            return requests.get(leader.url + "/v2/keys/big", params={"recursive": "true"}, timeout=60)

        def delete_big():
            time.sleep(0.5)  # after the GET has started
            return requests.delete(leader.url + "/v2/keys/big", params={"recursive": "true"}, timeout=60)

        def backup():
            return subprocess.run(["busctl", "--address=" + bus, "call", "io.etcd.etcd2", "/io/etcd/etcd2",
                                   "io.etcd.etcd2.Cluster", "Backup", "s", os.path.join(tmp, "backup")],
                                  capture_output=True, text=True, timeout=120)

        w = ctx.Process(target=steady_writer, args=(leader.url, stop, out))
        w.start()
        time.sleep(2.0)  # the spawned interpreter is up and writing
        jobs = [("form", form), ("get", get_big), ("delete", delete_big)]
        if bus:
            jobs.append(("backup", backup))
        ths = [threading.Thread(target=timed, args=j) for j in jobs]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        time.sleep(1.0)
        stop.set()
        lat = out.get(timeout=60)
        w.join(timeout=30)

        term1, lead1 = term_and_leader(leader)
        print(f"leader {lead0} term {term0} -> leader {lead1} term {term1}; steady writer: {len(lat)} PUTs, "
              f"max {max(lat) * 1000:.0f} ms; " +
              ", ".join(f"{n} {results[n + '_s']:.2f} s" for n, _ in jobs))

        r = results["form"]
        assert not isinstance(r, Exception), r
        assert r.status_code == 400 and r.json()["errorCode"] == 210, r.text[:300]
        assert "too many form fields" in r.json()["cause"]
        r = results["get"]
        assert not isinstance(r, Exception), r
        assert r.status_code == 200 and len(r.json()["node"]["nodes"]) == N_KEYS
        r = results["delete"]
        assert not isinstance(r, Exception), r
        assert r.status_code == 200 and r.json()["action"] == "delete", r.text[:300]
        assert requests.get(leader.url + "/v2/keys/big", params={"quorum": "true"}, timeout=10).status_code == 404
        if bus:
            r = results["backup"]
            assert not isinstance(r, Exception), r
            assert r.returncode == 0, r.stderr
            assert os.path.exists(os.path.join(tmp, "backup", "member", "CURRENT"))
        else:
            print("no private dbus-daemon: Backup not exercised")

        assert (lead1, term1) == (lead0, term0), "the leader lost its term"
        assert max(lat) < 1.0, f"the steady writer waited {max(lat):.2f} s"
    finally:
        if c:
            procs.finish(c.members)
        for _, pid in buses:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
