# SPDX-License-Identifier: Apache-2.0
"""Storage failures under load (issue 9): a member whose synced write fails stops at once (non-zero exit,
a LOG_CRIT line), never acknowledges what is not durable, and starts again on the same data dir once the
disk is fine, with every acknowledged write there. A write answered 5xx or cut by the exit is
"indeterminate": present or absent, but the same on every member and across restarts.

Faults are real: fdatasync()/fsync() failing with EIO (or every file write and sync with ENOSPC) through the
fault-sync.so LD_PRELOAD shim (tests/faults/, armed mid-run by creating a trigger file), on one member, on the
leader and on a follower of three; and a full file system (a 16 MiB tmpfs in a private mount namespace, grown
afterwards with mount -o remount). Only the tmpfs test needs root and unshare/nsenter/mount."""

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

import procs
from cluster import Cluster, read_tree, wait_converged
from conftest import OUR_BINARY, Daemon, only_ours, unique
from procs import Process

pytestmark = only_ours  # LD_PRELOAD and our exit contract: etcd 3.4 (Go, raw syscalls) is not comparable


def shim_path():
    p = os.environ.get("ETCD2_FAULT_SYNC")
    if not p and OUR_BINARY:
        p = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(OUR_BINARY))), "tests", "faults",
                         "fault-sync.so")
    if not p or not os.path.exists(p):
        pytest.fail(f"fault-sync.so not found (looked at {p!r}; set ETCD2_FAULT_SYNC)")
    return p


def shim_env(trigger, err="EIO", writes=False):
    """Environment that preloads the shim, armed once `trigger` exists (writes: file writes fail too). ASan
    must not insist on coming first in the library list: the shim is preloaded before it."""
    asan = os.environ.get("ASAN_OPTIONS", "")
    return {"LD_PRELOAD": shim_path(), "FAULT_SYNC_TRIGGER": trigger, "FAULT_SYNC_ERRNO": err,
            "FAULT_SYNC_WRITES": "1" if writes else "0",
            "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}


def arm(trigger):
    with open(trigger, "w"):
        pass
    return time.monotonic()


class Writers:
    """Writer threads putting new keys under prefix through the URLs given (each thread sticks to one).
    Outcomes: acked (2xx: {key: (value, modifiedIndex)}), failed (5xx), cut (no answer: the process went
    away). A refused connection means the request never reached a member: not counted."""

    def __init__(self, urls, prefix, n=4, value_size=16, pause=0.0):
        self.urls, self.prefix, self.value_size, self.pause = list(urls), prefix, value_size, pause
        self.acked, self.failed, self.cut, self.bad = {}, {}, {}, []
        self.causes = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, w):
        s = requests.Session()
        url = self.urls[w % len(self.urls)]
        seq = 0
        while not self.stop.is_set():
            key = f"{self.prefix}/w{w}-{seq:06d}"
            val = f"{w}-{seq}-" + "x" * self.value_size
            seq += 1
            try:
                r = s.put(url + "/v2/keys" + key, data={"value": val}, timeout=15)
            except requests.ConnectionError as e:
                if "refused" in str(e).lower():
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.cut[key] = val
                s.close()
                s = requests.Session()
                continue
            except requests.RequestException:
                with self.lock:
                    self.cut[key] = val
                continue
            with self.lock:
                if r.status_code in (200, 201):
                    j = r.json()
                    self.acked[key] = (val, j["node"]["modifiedIndex"])
                elif r.status_code >= 500:
                    self.failed[key] = val
                    try:
                        self.causes.add(r.json().get("cause"))
                    except ValueError:
                        self.causes.add(r.text[:100])
                else:
                    self.bad.append((key, r.status_code, r.text[:200]))
            if self.pause:
                time.sleep(self.pause)
        s.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a writer thread hung"
        assert not self.bad, f"unexpected answers: {self.bad[:5]}"

    def summary(self):
        return f"acked {len(self.acked)}, 5xx {len(self.failed)}, cut {len(self.cut)}"


def check_storage_exit(p, rc, t_fault, what):
    t_exit = time.monotonic()
    assert rc is not None, f"{p.name} did not exit after the fault; log:\n{p.log_tail(3000)}"
    assert rc != 0, f"{p.name} exited {rc} after the fault; log:\n{p.log_tail(3000)}"
    log = p.log_tail(200000)
    crit = [ln for ln in log.splitlines() if ln.startswith("<2>") and "Stopping" in ln]
    assert crit, f"no LOG_CRIT line in {p.name}'s log:\n{log[-3000:]}"
    assert what in crit[0], crit[0]
    return t_exit - t_fault


def check_outcomes(trees, w):
    """trees: {name: {key: (value, modifiedIndex)}}, all reads of the same state. Every acknowledged write is
    there with its value and index; the others are absent or have their value; no key came from nowhere;
    all trees equal."""
    names = list(trees)
    for n in names[1:]:
        assert trees[n] == trees[names[0]], f"{n} and {names[0]} disagree"
    have = trees[names[0]]
    lost = [(k, v, have.get(k)) for k, v in w.acked.items() if have.get(k) != v]
    assert not lost, f"{len(lost)} of {len(w.acked)} acknowledged writes lost/changed, e.g. {lost[:3]}"
    undecided = {**w.failed, **w.cut}
    for k, (val, _) in have.items():
        if k in w.acked:
            continue
        assert k in undecided, f"{k} appeared without having been written"
        assert val == undecided[k], (k, val)
    return sorted(k for k in have if k in undecided)


# -- one member: EIO on fdatasync, or ENOSPC on every file write and sync ------------------------------
@pytest.mark.parametrize("err,writes,errno_", [("EIO", False, 5), ("ENOSPC", True, 28)])
def test_single_member(tmp_path, err, writes, errno_):
    trigger = str(tmp_path / "trigger")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    d = Daemon(env={**shim_env(trigger, err, writes), "NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        prefix = "/" + unique("eio")
        w = Writers([d.url], prefix, n=4)
        time.sleep(0.5)
        t0 = arm(trigger)
        rc = d.wait_exit(15)
        dt = check_storage_exit(d, rc, t0, "persist")
        w.finish()
        assert w.acked, "nothing was acknowledged before the fault"
        # the writes waiting for the failed group commit were answered 5xx, not left to a reset
        assert "etcdserver: failed to persist to disk; the member is stopping" in w.causes, w.causes
        # systemd hears why (sd_notify STATUS= and ERRNO=)
        msgs = []
        while True:
            try:
                msgs.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        last = [m for m in msgs if "STATUS=" in m][-1]
        assert "STATUS=Storage failure: failed to persist" in last and f"ERRNO={errno_}" in last.split("\n"), msgs

        d.env_extra = {}
        d.start()  # without the shim; wait_healthy fails if it does not start (e.g. "log gap")
        t1 = read_tree(d, prefix)
        present = check_outcomes({"restart1": t1}, w)
        d.restart()
        t2 = read_tree(d, prefix)
        assert t2 == t1, "the data changed across a restart"
        r = d.put("/v2/keys" + prefix + "/after", data={"value": "ok"})
        assert r.status_code == 201, r.text
        print(f"\nsingle member {err}{' (writes too)' if writes else ''}: exit {dt * 1000:.0f} ms after the fault; "
              f"{w.summary()}; {len(present)} of the 5xx/cut writes present after restart")
    finally:
        d.cleanup()
        notify.close()


# -- the leader, or a follower, of three: EIO on fdatasync ---------------------------------------------
@pytest.mark.parametrize("role", ["leader", "follower"])
def test_eio_in_cluster(tmp_path, role):
    c = Cluster(n=3, start=False)
    triggers = {m.name: str(tmp_path / f"trigger-{m.name}") for m in c.members}
    for m in c.members:
        m.spawn = functools.partial(Process.spawn, m, env=shim_env(triggers[m.name]))
    try:
        c.start_all()
        leader = c.wait_leader()
        victim = leader if role == "leader" else c.followers(leader)[0]
        survivors = [m for m in c.members if m is not victim]
        prefix = "/" + unique(role + "-eio")
        # Half through the victim (its group commit, or its forwarded proposals, is the path under test),
        # one writer per survivor.
        w = Writers([victim.url, victim.url] + [m.url for m in survivors], prefix, n=4)
        time.sleep(0.7)
        t0 = arm(triggers[victim.name])
        rc = victim.wait_exit(15)
        dt_exit = check_storage_exit(victim, rc, t0, "persist")

        deadline = time.monotonic() + 20
        dt_lead = None
        while time.monotonic() < deadline and dt_lead is None:
            view = c.leader_view(survivors)
            if any(st == "StateLeader" for st, _ in view.values()):
                dt_lead = time.monotonic() - t0
            else:
                time.sleep(0.02)
        assert dt_lead is not None, "no leader among the survivors"
        time.sleep(0.5)   # writes through the survivors go on (under a new leader if the leader failed)
        w.finish()
        new_leader = c.wait_leader(members=survivors)
        if role == "follower":
            assert new_leader is leader, "the leader changed when a follower failed"

        trees = {m.name: read_tree(m, prefix) for m in survivors}
        check_outcomes(trees, w)

        # The failed member comes back without the shim and agrees on everything.
        del victim.spawn
        victim.restart()
        c.wait_leader()
        wait_converged(c.members, prefix)
        trees = {m.name: read_tree(m, prefix, quorum=False) for m in c.members}
        present = check_outcomes(trees, w)
        # ...and on the etcd index, once the restarted member applied the last internal writes too.
        deadline = time.monotonic() + 15
        while True:
            idx = {m.name: int(m.get("/v2/keys" + prefix).headers["X-Etcd-Index"]) for m in c.members}
            if len(set(idx.values())) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(set(idx.values())) == 1, f"members disagree on the etcd index: {idx}"
        print(f"\n{role} EIO: exit {dt_exit * 1000:.0f} ms after the fault, a leader among the others "
              f"{dt_lead * 1000:.0f} ms after it; {w.summary()}; {len(present)} of the 5xx/cut writes present")
    finally:
        procs.finish(c.members)


# -- a full file system -----------------------------------------------------------------------------------
def _can_mount():
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "nsenter", "mount"))


class NsDaemon(Daemon):
    """A Daemon started inside the mount namespace of process `ns_pid` (nsenter execs it: same pid)."""

    def __init__(self, ns_pid, **kw):
        self.ns_pid = ns_pid
        super().__init__(**kw)

    def argv(self):
        return ["nsenter", "-t", str(self.ns_pid), "-m", "--"] + super().argv()


@pytest.mark.skipif(not _can_mount(), reason="needs root, unshare, nsenter and mount")
def test_full_filesystem():
    mnt = tempfile.mkdtemp(prefix="etcd2-full-")
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs -o size=16m tmpfs {mnt} && echo mounted && exec sleep 600"],
                              stdout=subprocess.PIPE, start_new_session=True)
    d = None
    try:
        line = holder.stdout.readline()
        if b"mounted" not in line:
            pytest.skip("could not mount a tmpfs in a private mount namespace")
        d = NsDaemon(holder.pid, data_dir=os.path.join(mnt, "data"))
        prefix = "/" + unique("full")
        t0 = time.monotonic()
        w = Writers([d.url], prefix, n=2, value_size=64 * 1024)
        rc = d.wait_exit(60)
        dt = time.monotonic() - t0
        check_storage_exit(d, rc, t0, "")
        w.finish()
        assert w.acked, "nothing was acknowledged before the disk was full"
        log = d.log_tail(200000)
        assert "No space left on device" in log, log[-3000:]

        subprocess.run(["nsenter", "-t", str(holder.pid), "-m", "--", "mount", "-o", "remount,size=256m", mnt],
                       check=True)
        d.start()
        t1 = read_tree(d, prefix)
        present = check_outcomes({"restart1": t1}, w)
        d.restart()
        assert read_tree(d, prefix) == t1, "the data changed across a restart"
        r = d.put("/v2/keys" + prefix + "/after", data={"value": "ok"})
        assert r.status_code == 201, r.text
        print(f"\nfull tmpfs: exit after {dt:.1f} s of filling; {w.summary()}; "
              f"{len(present)} of the 5xx/cut writes present after restart")
    finally:
        if d is not None:
            d.cleanup()
        holder.kill()
        holder.wait(10)
        shutil.rmtree(mnt, ignore_errors=True)
