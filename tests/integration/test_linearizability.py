# SPDX-License-Identifier: Apache-2.0
"""Jepsen-style linearizability test. A 3-member cluster; CLIENTS threads do writes, CAS and quorum reads
on KEYS keys through every member (a client moves to the next member after an error), with short client
timeouts, while a nemesis injects in turn: kill -9 of the leader (restart on its data dir), kill -9 of a
follower, SIGSTOP/SIGCONT of a member, a partition of a member from its peers (nftables in a private
network namespace, as test_cluster_partition.py), and a full disk under one member (its data dir is a
tmpfs mounted in a private mount namespace held by an `unshare -m` process; the member runs in it through
`nsenter -t HOLDER -m`). A member that dies by itself is restarted and reported. At the end everything is
healed, the members must converge, final quorum reads of every key join the history, and the checker
(linearizability.py) must find every key linearizable, with a fair share of the operations completed.

Environment: LIN_SECONDS (workload seconds, default 60), LIN_CLIENTS (8), LIN_KEYS (4), LIN_SEED (random,
printed), LIN_VALUE_BYTES (padding of every written value, 1024), LIN_FAULTS (comma-separated subset of
kill-leader,pause,partition,kill-follower,disk-full), LIN_HISTORY_DIR (also save passing histories there;
failing ones always go to /tmp), LIN_TMPFS_MB (size of the full-disk member's tmpfs: 128, 1024 for runs
over 90 s), LIN_PLAIN_READS=1 (reads without quorum=true, which are not linearizable
in v2: the test must then FAIL; a check of the harness).
Partition and full disk need root with ip, nft, unshare and nsenter; they are skipped (with the reason
printed) otherwise. With ETCD2_REFERENCE=1 the same runs against etcd 3.4, which must pass."""

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict

import pytest
import requests
import urllib3

from cluster import Cluster, NetNS, wait_converged
from conftest import REFERENCE, unique
from linearizability import FAIL, INFO, OK, Op, check_history
from test_cluster_partition import _cut, _heal

SECONDS = float(os.environ.get("LIN_SECONDS", "60"))
CLIENTS = int(os.environ.get("LIN_CLIENTS", "8"))
KEYS = int(os.environ.get("LIN_KEYS", "4"))
TIMEOUT = (1.0, 2.0)  # connect, read: a fault gives an indeterminate op, not a hang
# Sanity check of the harness: plain GETs are served from a member's own store and are NOT linearizable
# in etcd v2 (a partitioned or lagging member answers stale values), so with this set the test must fail.
PLAIN_READS = os.environ.get("LIN_PLAIN_READS") == "1"
PAD = "-" + "x" * int(os.environ.get("LIN_VALUE_BYTES", "1024"))
UIDS = [64211, 64212, 64213]
# etcd 3.4 preallocates 64 MiB WAL files, so it needs ~96 MiB to start, and keeps up to 5 of them until a
# snapshot (every 100000 entries) lets it purge: a 10-minute run filled 128 MiB by itself after ~230 s and
# then crash-looped on a broken WAL. So long runs get 1 GiB (only what is written is memory; the fill
# writes the rest for a few seconds).
TMPFS_MB = int(os.environ.get("LIN_TMPFS_MB", "128" if SECONDS <= 90 else "1024"))
DISK_MEMBER = 2  # index of the member whose data dir is the small tmpfs


# -- the history ------------------------------------------------------------------------------------------
class History:
    def __init__(self):
        self.ops = []
        self.lock = threading.Lock()
        self.anomalies = []  # answers no etcd v2 server may give (wrong node in a reply, 3xx, odd 4xx)

    def add(self, op):
        with self.lock:
            self.ops.append(op)

    def save(self, path, faults, extra=None):
        with open(path, "w") as f:
            json.dump({"ops": [o.to_dict() for o in self.ops], "faults": faults, "extra": extra or {}}, f,
                      indent=0)


def _not_sent(e):
    """True if the request never reached a server (connection refused or connect timeout): no effect."""
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(e, requests.exceptions.ConnectionError) and e.args:
        reason = getattr(e.args[0], "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


def _error_code(r):
    try:
        return r.json().get("errorCode")
    except ValueError:
        return None


class Client(threading.Thread):
    def __init__(self, n, members, keys, hist, stop, seed):
        super().__init__(daemon=True, name=f"lin-client-{n}")
        self.n = n
        self.members = members
        self.keys = keys
        self.hist = hist
        self.stop = stop
        self.rng = random.Random(seed)
        self.mi = n % len(members)
        self.seq = 0
        self.known = {}  # key -> last value this client saw (prevValue for its CAS)

    def run(self):
        s = requests.Session()
        while not self.stop.is_set():
            m = self.members[self.mi % len(self.members)]
            key = self.rng.choice(self.keys)
            x = self.rng.random()
            self.seq += 1
            # the padding makes the members' logs grow fast enough for a full disk to bite within a fault
            val = f"c{self.n}-{self.seq}" + PAD
            url = m.url + "/v2/keys" + key
            if x < 0.4:
                op = Op(key, "read", 0, client=self.n, member=m.name)
                req = dict(method="GET", params={} if PLAIN_READS else {"quorum": "true"})
            elif x < 0.7:
                op = Op(key, "write", 0, value=val, client=self.n, member=m.name)
                req = dict(method="PUT", data={"value": val})
            else:
                prev = self.known.get(key, "init")
                op = Op(key, "cas", 0, value=val, prev=prev, result="ok", client=self.n, member=m.name)
                req = dict(method="PUT", data={"value": val, "prevValue": prev})
            op.invoke = time.monotonic()
            try:
                r = s.request(url=url, timeout=TIMEOUT, allow_redirects=False, **req)
            except requests.RequestException as e:
                op.complete = time.monotonic()
                op.status = FAIL if _not_sent(e) else INFO
                op.note = type(e).__name__
                if op.status == INFO:
                    op.complete = float("inf")
                self.hist.add(op)
                s.close()
                s = requests.Session()
                self.mi += 1
                time.sleep(0.1)
                continue
            op.complete = time.monotonic()
            self._classify(op, r, m)
            self.hist.add(op)
            if op.status != OK:
                self.mi += 1
                time.sleep(0.05)
        s.close()

    def _classify(self, op, r, m):
        code = r.status_code
        ec = _error_code(r)
        if code >= 500 or ec == 300:
            op.status, op.complete, op.note = INFO, float("inf"), f"{code} errorCode {ec}"
            return
        if op.kind == "read":
            if code == 200:
                op.result = r.json()["node"].get("value")
                self.known[op.key] = op.result
                return
            if code == 404 and ec == 100:
                op.result = None
                return
        elif op.kind == "write":
            if code in (200, 201):
                node = r.json()["node"]
                if node.get("value") != op.value or node.get("key") != op.key:
                    self.hist.anomalies.append(f"{m.name}: write {op.key}={op.value} answered {r.text.strip()}")
                self.known[op.key] = op.value
                return
        else:
            if code == 200:
                node = r.json()["node"]
                if node.get("value") != op.value:
                    self.hist.anomalies.append(f"{m.name}: cas {op.key} {op.prev}->{op.value} answered {r.text.strip()}")
                op.result = "ok"
                self.known[op.key] = op.value
                return
            if code == 412 and ec == 101:
                op.result = "mismatch"
                self.known.pop(op.key, None)
                return
            if code == 404 and ec == 100:
                op.result = "absent"
                return
        # nothing else is a legal answer here; it cannot be placed in the model, so it is an anomaly
        self.hist.anomalies.append(f"{m.name}: {op.kind} {op.key}: {code} {r.text.strip()[:200]}")
        op.status, op.complete, op.note = INFO, float("inf"), f"unexpected {code}"


# -- the full disk: a tmpfs in a private mount namespace --------------------------------------------------
class DiskHolder:
    """`unshare -m --propagation private` process with a TMPFS_MB tmpfs mounted over dir; processes started
    through prefix() see the tmpfs, everyone else the (empty) directory underneath."""

    @staticmethod
    def available():
        if os.geteuid() != 0:
            return "not root: cannot mount a tmpfs in a private mount namespace"
        for tool in ("unshare", "nsenter", "mount"):
            if not shutil.which(tool):
                return f"{tool} not installed"
        return None

    def __init__(self, directory, uid):
        self.dir = directory
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o size={TMPFS_MB}m,mode=0700 tmpfs '{directory}' && "
             + (f"chown {uid}:{uid} '{directory}' && " if uid is not None else "")
             + "echo ready && exec sleep 100000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            raise RuntimeError(f"tmpfs holder failed: {line!r} {err}")
        self.uid = uid

    def prefix(self):
        p = ["nsenter", "-t", str(self.proc.pid), "-m"]
        if self.uid is not None:
            p += ["-S", str(self.uid), "-G", str(self.uid)]
        return p + ["--"]

    def _sh(self, script):
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "sh", "-c", script],
                              capture_output=True, text=True, timeout=60)

    def fill(self):
        # dd stops at ENOSPC; what is left is less than one block
        self._sh(f"dd if=/dev/zero of='{self.dir}/lin-fill' bs=64k 2>/dev/null; sync")
        return self._sh(f"df -k '{self.dir}' | tail -1").stdout.strip()

    def free(self):
        self._sh(f"rm -f '{self.dir}/lin-fill'")

    def close(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


# -- the nemesis -----------------------------------------------------------------------------------------
class Nemesis(threading.Thread):
    def __init__(self, c, ns, disk, kinds, stop, seed, t0):
        super().__init__(daemon=True, name="lin-nemesis")
        self.c = c
        self.ns = ns
        self.disk = disk
        self.kinds = kinds
        self.stop = stop
        self.rng = random.Random(seed)
        self.t0 = t0
        self.faults = []          # (start s, end s, kind, member, detail)
        self.deaths = []          # (s, member, status, during, CRIT lines)
        self.error = None
        self.paused = None
        self.cut = False
        self.filled = False

    def now(self):
        return time.monotonic() - self.t0

    def leader(self):
        view = self.c.leader_view([m for m in self.c.members if m.alive()])
        ls = [m for m, (st, _) in view.items() if st == "StateLeader"]
        return ls[0] if len(ls) == 1 else None

    def sleep(self, s):
        """Sleeps s seconds, meanwhile restarting members that died by themselves."""
        end = time.monotonic() + s
        while time.monotonic() < end:
            self.reap()
            time.sleep(0.1)

    def reap(self, during=None):
        for m in self.c.members:
            if m.died_unexpectedly():
                log = m.log_tail(200000).splitlines()
                since = max((i for i, ln in enumerate(log) if ln.startswith("==== start")), default=0)
                # its LOG_CRIT (or worse) lines, else its last lines: an abort's message has no prefix
                crit = [ln[:300] for ln in log[since:] if ln.startswith(("<0>", "<1>", "<2>"))][-3:]
                if not crit:
                    crit = ["(no LOG_CRIT line; last lines:)"] + [ln[:300] for ln in log[since:]
                                                                 if not ln.startswith(("<6>", "<7>"))][-3:]
                during = during or self.current
                self.deaths.append((round(self.now(), 3), m.name, m.proc.returncode, during, crit))
                print(f"  {self.now():7.2f}s {m.name} DIED by itself (status {m.proc.returncode}) during "
                      f"{during}; critical lines: {crit}")
                if m is self.disk_member and self.filled:
                    self.disk.free()
                    self.filled = False
                m.exit_expected = True
                m._close_log()
                m.start()

    current = "no fault"
    disk_member = None

    def run(self):
        try:
            i = self.rng.randrange(len(self.kinds))
            self.sleep(3)
            while not self.stop.is_set():
                kind = self.kinds[i % len(self.kinds)]
                i += 1
                self.inject(kind)
                self.current = "no fault"
                self.sleep(3)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
            traceback.print_exc()

    def inject(self, kind):
        start = self.now()
        self.current = kind
        members = self.c.members
        if kind in ("kill-leader", "kill-follower"):
            ld = self.leader()
            if kind == "kill-leader":
                m = ld or self.rng.choice(members)
            else:
                m = self.rng.choice([x for x in members if x is not ld])
            who = "no single leader seen, picked at random; " if ld is None else ""
            m.kill9()
            down = self.rng.uniform(1, 3)
            self.sleep(down)
            m.start()
            self.faults.append((round(start, 2), round(self.now(), 2), kind, m.name, f"{who}down {down:.1f}s"))
            self.sleep(2)
        elif kind == "pause":
            m = self.rng.choice(members)
            pause = self.rng.uniform(1, 3)
            if not m.alive():
                return
            os.kill(m.proc.pid, signal.SIGSTOP)  # it is our child, not reaped while alive: the pid is its
            self.paused = m
            time.sleep(pause)
            os.kill(m.proc.pid, signal.SIGCONT)
            self.paused = None
            self.faults.append((round(start, 2), round(self.now(), 2), kind, m.name, f"{pause:.1f}s"))
        elif kind == "partition":
            m = self.rng.choice(members)
            _cut(self.ns, m, members)
            self.cut = True
            hold = self.rng.uniform(3, 5)
            self.sleep(hold)
            _heal(self.ns)
            self.cut = False
            self.faults.append((round(start, 2), round(self.now(), 2), kind, m.name, f"{hold:.1f}s"))
        elif kind == "disk-full":
            m = self.disk_member
            log_at = os.path.getsize(m.log_path)
            df = self.disk.fill()
            self.filled = True
            hold = self.rng.uniform(6, 8)
            end = time.monotonic() + hold
            died = None
            while time.monotonic() < end and died is None:
                if m.proc.poll() is not None:
                    died = m.proc.returncode
                time.sleep(0.1)
            if self.filled:
                self.disk.free()
                self.filled = False
            detail = (f"df: {' '.join(df.split()[1:5])}; "
                      + (f"member exited with {died}" if died is not None else "member kept running")
                      + "; its log meanwhile: " + _log_errors(m.log_path, log_at))
            self.reap(during=kind)  # restarts it if it died (after the space is free again)
            self.faults.append((round(start, 2), round(self.now(), 2), kind, m.name, detail))
            self.sleep(2)

    def heal(self):
        if self.paused is not None and self.paused.alive():
            os.kill(self.paused.proc.pid, signal.SIGCONT)
        if self.cut:
            _heal(self.ns)
        if self.filled:
            self.disk.free()
        self.reap(during="heal")


def _log_errors(path, offset):
    """Count and first lines of the error-or-worse lines ("<0>".."<3>" prefixes of ours, "error"/"space" in
    etcd 3.4's) a member logged after offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    errs = [ln for ln in lines if ln.startswith(("<0>", "<1>", "<2>", "<3>"))
            or "no space" in ln.lower() or '"level":"error"' in ln or '"level":"fatal"' in ln]
    return f"{len(errs)} error lines" + (f", first {[e[:160] for e in errs[:2]]}" if errs else "")


# -- the test ---------------------------------------------------------------------------------------------
@pytest.fixture
def env():
    """(network namespace or None, list of skipped fault kinds with reasons)."""
    skipped = []
    ns = None
    why = NetNS.available()
    if why is None:
        ns = NetNS()
        try:
            ns.enter()
        except (OSError, subprocess.CalledProcessError) as e:
            ns = None
            why = f"cannot create/enter a network namespace: {e}"
    if ns is None:
        skipped.append(("partition", why))
    yield ns, skipped
    if ns is not None:
        ns.exit()


def test_linearizable_under_faults(env):
    ns, skipped = env
    seed = int(os.environ.get("LIN_SEED", str(random.randrange(1 << 30))))
    print(f"\nseed {seed} (LIN_SEED), {SECONDS:.0f}s of workload, {CLIENTS} clients, {KEYS} keys, "
          f"{'etcd 3.4' if REFERENCE else 'etcd2'}")
    c = Cluster(3, uids=UIDS if ns else None, start=False)
    disk = None
    hist = History()
    nem = None
    try:
        why = DiskHolder.available()
        if why is None:
            m = c.members[DISK_MEMBER]
            try:
                disk = DiskHolder(m.data_dir, m.uid)
                m.launch_prefix = disk.prefix()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                why = f"cannot set up the tmpfs: {e}"
        if disk is None:
            skipped.append(("disk-full", why))
        for kind, why in skipped:
            print(f"fault kind {kind} SKIPPED: {why}")
        c.start_all()

        kinds = ["kill-leader", "pause", "kill-follower"]
        if ns is not None:
            kinds.insert(2, "partition")
        if disk is not None:
            kinds.append("disk-full")
        only = [k for k in os.environ.get("LIN_FAULTS", "").split(",") if k]
        if only:
            kinds = [k for k in kinds if k in only]
            assert kinds, f"LIN_FAULTS={only}: none of them available"
        prefix = "/" + unique("lin")
        keys = [f"{prefix}/k{i}" for i in range(KEYS)]
        leader = c.leader()
        for k in keys:
            op = Op(k, "write", time.monotonic(), value="init", client="setup", member=leader.name)
            r = leader.put("/v2/keys" + k, data={"value": "init"}, timeout=10)
            assert r.status_code == 201, r.text
            op.complete = time.monotonic()
            hist.add(op)

        stop = threading.Event()
        t0 = time.monotonic()
        clients = [Client(i, c.members, keys, hist, stop, seed + i) for i in range(CLIENTS)]
        nem = Nemesis(c, ns, disk, kinds, stop, seed, t0)
        nem.disk_member = c.members[DISK_MEMBER] if disk else None
        for t in clients:
            t.start()
        nem.start()
        time.sleep(SECONDS)
        stop.set()
        nem.join(60)
        assert not nem.is_alive(), "the nemesis hung"
        for t in clients:
            t.join(30)
            assert not t.is_alive(), "a client thread hung"
        nem.heal()
        t_end = time.monotonic() - t0
        _report(hist, nem, t_end, skipped)

        # everything healed: one leader that every member follows, and quorum reads through every member
        # (they join the history), else a member is wedged
        problems = []
        try:
            c.wait_leader(timeout=60)
        except RuntimeError as e:
            problems.append(f"cluster did not recover within 60s of healing: {e}")
        for m in c.members:
            deadline = time.monotonic() + (30 if not problems else 5)
            for k in keys:
                last = None
                while True:
                    op = Op(k, "read", time.monotonic(), client="final", member=m.name)
                    try:
                        r = m.get("/v2/keys" + k, params={"quorum": "true"}, timeout=5)
                        last = f"{r.status_code} {r.text.strip()[:200]}"
                        if r.status_code in (200, 404):
                            op.complete = time.monotonic()
                            op.result = r.json()["node"]["value"] if r.status_code == 200 else None
                            hist.add(op)
                            break
                    except requests.RequestException as e:
                        last = repr(e)
                    if time.monotonic() > deadline:
                        problems.append(f"{m.name} (alive: {m.alive()}) gives no quorum read of {k} after "
                                        f"healing (last: {last}); its log:\n{_log_digest(m)}")
                        break
                    time.sleep(0.5)
                if problems and problems[-1].startswith(m.name):
                    break

        if not problems:
            try:
                wait_converged(c.members, prefix, timeout=30)
            except AssertionError as e:
                problems.append(f"after healing: {e}")

        t = time.monotonic()
        results = check_history(hist.ops, max_seconds=max(120.0, SECONDS))
        dt = time.monotonic() - t
        print(f"checker: {dt:.2f}s")
        for k, r in results.items():
            print(f"  {k}: {r.verdict} ({len(r.ops)} ops searched, {r.explored} states, {r.seconds:.2f}s)")
        bad = [r for r in results.values() if not r.ok]
        definite = sum(1 for o in hist.ops if o.status == OK)
        if definite < 0.3 * len(hist.ops):
            problems.append(f"only {definite} of {len(hist.ops)} operations completed")
        # a member may exit by itself only on a full disk, and then loudly: a non-zero status and, for ours,
        # a LOG_CRIT line saying why (an abort() or a crash is not a designed stop)
        wrong = [d for d in nem.deaths if d[3] != "disk-full" or d[2] == 0
                 or (not REFERENCE and d[4][:1] == ["(no LOG_CRIT line; last lines:)"])]
        if wrong:
            problems.append(f"members died outside a full disk or with status 0: {wrong}")
        for m in c.members:
            rep = m.sanitizer_report()
            if rep:
                problems.append(rep)
        if nem.error is not None:
            problems.append(f"nemesis failed: {nem.error!r}")
        if hist.anomalies:
            problems.append("illegal answers:\n" + "\n".join(hist.anomalies[:20]))
        problems += [r.report for r in bad]
        keep = os.environ.get("LIN_HISTORY_DIR")
        if problems or (keep and os.path.isdir(keep)):
            fd, path = tempfile.mkstemp(prefix="lin-history-", suffix=".json",
                                        dir=keep if keep and os.path.isdir(keep) else "/tmp")
            os.close(fd)
            hist.save(path, nem.faults, {"seed": seed, "deaths": nem.deaths, "reference": REFERENCE,
                                         "t0": t0, "problems": problems,
                                         "logs": {m.name: m.log_path for m in c.members}})
            print(f"history saved to {path}")
        for p in problems:
            print(p)
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)
    except BaseException:
        for m in c.members:
            m.keep_log = True  # cleanup() below would delete them before the report hook can keep them
        print("member logs kept: " + ", ".join(m.log_path for m in c.members))
        raise
    finally:
        if nem is not None:
            nem.stop.set()
            nem.heal()
        c.cleanup()
        if disk is not None:
            disk.close()


def _log_digest(m, n=40):
    """The starts and the last n warning-or-worse lines of a member's log."""
    lines = m.log_tail(2000000).splitlines()
    keep = [ln[:300] for ln in lines if ln.startswith("====") or not ln.startswith(("<5>", "<6>", "<7>"))]
    return "\n".join(keep[-n:])


def _report(hist, nem, t_end, skipped):
    by = Counter((o.kind, o.status if o.status != OK or o.kind != "cas" else "ok/" + o.result)
                 for o in hist.ops)
    print(f"operations: {len(hist.ops)} in {t_end:.1f}s")
    for kind in ("write", "cas", "read"):
        parts = ", ".join(f"{st} {n}" for (k, st), n in sorted(by.items()) if k == kind)
        print(f"  {kind:5}: {parts}")
    notes = Counter(o.note for o in hist.ops if o.status != OK)
    print(f"  not ok by reason: {dict(notes)}")
    per = defaultdict(list)
    for f in nem.faults:
        per[f[2]].append(f)
    print(f"faults injected: {len(nem.faults)} " + ", ".join(f"{k} {len(v)}" for k, v in per.items()))
    for f in nem.faults:
        print(f"  {f[0]:7.2f}s..{f[1]:7.2f}s {f[2]:13} {f[3]}  {f[4]}")
    for kind, why in skipped:
        print(f"  (skipped {kind}: {why})")
    print(f"members that died by themselves (restarted): {len(nem.deaths)}")
    for d in nem.deaths:
        print(f"  {d}")
    if hist.anomalies:
        print(f"illegal answers: {len(hist.anomalies)}, e.g. {hist.anomalies[:5]}")


if __name__ == "__main__":
    # Re-checks saved histories: python3 test_linearizability.py /tmp/lin-history-*.json
    import sys
    for path in sys.argv[1:]:
        with open(path) as f:
            saved = json.load(f)
        for k, r in check_history([Op.from_dict(d) for d in saved["ops"]]).items():
            print(f"{path} {k}: {r.verdict} ({len(r.ops)} ops, {r.explored} states, {r.seconds:.2f}s)")
            if not r.ok:
                print(r.report)
