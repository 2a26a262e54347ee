# SPDX-License-Identifier: Apache-2.0
"""Harness for the multi-member suites (test_cluster*.py): N members of our etcd2 (from $ETCD2_BINARY) or of
Debian's etcd 3.4 with --enable-v2 (ETCD2_REFERENCE=1) bootstrapped statically with --initial-cluster on
127.0.0.1 (or on the loopback of a private network namespace made by the test), distinct free ports, a fresh
data dir per member. Members are procs.Process like the single-member daemons: their logs are attached to
failure reports and they are killed on pytest's SIGTERM/exit."""

import atexit
import ctypes
import os
import random
import shutil
import subprocess
import threading
import time
import uuid

import pytest
import requests

import procs
from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY, free_ports
from procs import Process, member_flags
from test_members_stats import cluster_id, member_id  # the SHA-1 ID formulas

# Raft timing given to both implementations (etcd's defaults).
HEARTBEAT_MS = int(os.environ.get("ETCD2_CLUSTER_HEARTBEAT_MS", "100"))
ELECTION_MS = int(os.environ.get("ETCD2_CLUSTER_ELECTION_MS", "1000"))
START_TIMEOUT = float(os.environ.get("ETCD2_CLUSTER_START_TIMEOUT", "30"))


def require_binary(reference=None):
    reference = REFERENCE if reference is None else reference
    if reference:
        if not os.access(REFERENCE_BINARY, os.X_OK):
            pytest.skip(f"{REFERENCE_BINARY} not installed")
        return REFERENCE_BINARY
    if not (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)):
        pytest.skip("ETCD2_BINARY not set or not executable")
    return OUR_BINARY


class Member(Process):
    """One member process; its ports and data dir survive restarts."""

    def __init__(self, cluster, name, client_port, peer_port, host="127.0.0.1", uid=None):
        self.cluster = cluster
        self.host = host
        self.url = f"http://{host}:{client_port}"
        self.peer_url = f"http://{host}:{peer_port}"
        self.client_port = client_port
        self.peer_port = peer_port
        self.uid = uid
        super().__init__(name, f"etcd2-cl-{name}-", f"etcd2-cl-log-{name}-", reference=cluster.reference)
        if uid is not None:
            os.chown(self.data_dir, uid, uid)
        self.id = None            # hex string once known
        self.removed = False

    def argv(self, initial_cluster, state):
        a = [self.cluster.binary]
        if self.reference:
            # etcd 3.4 refuses reconfiguration for 5 s after a start by default; 2.3 did not check
            a += ["--enable-v2", "--strict-reconfig-check=false"]
        a += member_flags(self.name, self.data_dir, self.url, self.peer_url)
        a += ["--initial-cluster", initial_cluster,
              "--initial-cluster-state", state,
              "--initial-cluster-token", self.cluster.token,
              "--heartbeat-interval", str(HEARTBEAT_MS),
              "--election-timeout", str(ELECTION_MS)]
        if self.cluster.snapshot_count:
            a += ["--snapshot-count", str(self.cluster.snapshot_count)]
        return a + list(self.cluster.extra_args)

    def start(self, initial_cluster=None, state="new"):
        if initial_cluster is None:
            initial_cluster = self.cluster.initial_cluster()
        self._start_argv = self.argv(initial_cluster, state)
        kw = {}
        if self.cluster.env:
            # only when set: a test may have bound its own env into self.spawn (functools.partial), and
            # a keyword given here would replace it
            kw["env"] = self.cluster.env
        if self.launch_prefix:
            # e.g. nsenter into a mount namespace: it runs as root and switches to the uid itself (-S/-G)
            self.spawn(list(self.launch_prefix) + self._start_argv, **kw)
            return
        if self.uid is not None:
            kw.update(user=self.uid, group=self.uid, extra_groups=[])
        self.spawn(self._start_argv, **kw)

    def restart(self, kill=False):
        if kill:
            self.kill9()
        else:
            self.stop()
        # --initial-* flags are ignored once there is a data dir; pass the same ones again.
        self.start(initial_cluster=self.cluster.initial_cluster(), state="existing" if self.joined else "new")

    launch_prefix = None  # argv put before the member's own (test_linearizability: nsenter -t HOLDER -m)
    joined = False  # True for members added at runtime (started with --initial-cluster-state existing)

    def stats_self(self, timeout=1):
        r = requests.get(self.url + "/v2/stats/self", timeout=timeout)
        r.raise_for_status()
        return r.json()

    def __repr__(self):
        return f"<{self.name} {self.url} id={self.id}>"


class Cluster:
    """N members bootstrapped together. Always call cleanup() (the fixtures do)."""

    def __init__(self, n=3, reference=None, snapshot_count=None, extra_args=(), host="127.0.0.1",
                 uids=None, ports=None, start=True, env=None):
        self.reference = REFERENCE if reference is None else reference
        self.env = dict(env or {})   # extra environment of every member (procs strips ETCD* of ours)
        self.binary = require_binary(self.reference)
        self.token = "etcd2-cl-" + uuid.uuid4().hex[:8]
        self.snapshot_count = snapshot_count
        self.extra_args = list(extra_args)
        self.host = host
        self.members = []
        self._next = 0
        self._ports = list(ports) if ports else None
        self._uids = list(uids) if uids else None
        for _ in range(n):
            self._new_member()
        for m in self.members:
            m.id = "%x" % member_id([m.peer_url], self.token)
        if start:
            self.start_all()

    def _new_member(self):
        if self._ports:
            c, p = self._ports.pop(0), self._ports.pop(0)
        else:
            c, p = free_ports(2)
        uid = self._uids.pop(0) if self._uids else None
        self._next += 1
        m = Member(self, f"m{self._next}", c, p, host=self.host, uid=uid)
        self.members.append(m)
        return m

    def initial_cluster(self, members=None):
        ms = members if members is not None else [m for m in self.members if not m.removed]
        return ",".join(f"{m.name}={m.peer_url}" for m in ms)

    def start_all(self, wait=True):
        ic = self.initial_cluster()
        for m in self.members:
            if not m.removed:
                m.start(ic, "new")
        if wait:
            self.wait_leader()
            self.wait_published()

    def wait_published(self, timeout=15.0):
        """Waits until /v2/members on every live member shows every live member with its client URL (a
        member publishes its name and client URLs through raft a moment after it started)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            ms = self.live()
            try:
                views = [{x["id"]: x for x in m.get("/v2/members", timeout=2).json()["members"]} for m in ms]
                last = views
                if all(v.get(m.id, {}).get("clientURLs") == [m.url] for v in views for m in ms):
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"members did not all publish their client URLs within {timeout}s: {last}")

    def live(self):
        return [m for m in self.members if m.alive() and not m.removed]

    def expected_cluster_id(self):
        return "%x" % cluster_id([member_id([m.peer_url], self.token) for m in self.members[:self.initial_n]])

    @property
    def initial_n(self):
        return getattr(self, "_initial_n", None) or len(self.members)

    # -- leader ----------------------------------------------------------------------------------------
    def leader_view(self, members=None):
        """{member: (state, leader id)} for every member that answered /v2/stats/self."""
        out = {}
        for m in members if members is not None else self.live():
            try:
                s = m.stats_self()
                out[m] = (s.get("state"), s.get("leaderInfo", {}).get("leader"))
            except (requests.RequestException, ValueError):
                pass
        return out

    def wait_leader(self, timeout=START_TIMEOUT, members=None, exclude=()):
        """Waits until exactly one of `members` (default: live ones) says StateLeader, every one of them
        answers and names it as leader, and a quorum read through the leader works. Returns the leader."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for m in self.members:
                if m.died_unexpectedly() and not m.removed:
                    raise RuntimeError(f"{m.name} exited with {m.proc.returncode}; log:\n{m.log_tail(4000)}")
            ms = members if members is not None else self.live()
            ms = [m for m in ms if m not in exclude]
            view = self.leader_view(ms)
            last = {m.name: v for m, v in view.items()}
            leaders = [m for m, (st, _) in view.items() if st == "StateLeader"]
            if len(view) == len(ms) and len(leaders) == 1:
                lid = view[leaders[0]][1]
                if all(v[1] == lid for v in view.values()):
                    try:
                        r = leaders[0].get("/v2/keys/", params={"quorum": "true"}, timeout=2)
                        if r.status_code == 200:
                            return leaders[0]
                    except requests.RequestException:
                        pass
            time.sleep(0.05)
        raise RuntimeError(f"no single agreed leader within {timeout}s; last view {last}")

    def leader(self):
        return self.wait_leader()

    def followers(self, leader=None):
        leader = leader or self.leader()
        return [m for m in self.live() if m is not leader]

    # -- membership ----------------------------------------------------------------------------------
    def add_member(self, via=None, start=True):
        """POST /v2/members for a new member, then start it with --initial-cluster-state existing and the
        ETCD_INITIAL_CLUSTER etcdctl would print (all current members plus the new one)."""
        if not hasattr(self, "_initial_n"):
            self._initial_n = len(self.members)
        m = self._new_member()
        via = via or self.leader()
        r = via.post("/v2/members", json={"peerURLs": [m.peer_url]}, timeout=15)
        if r.status_code != 201:
            self.members.remove(m)
            m.cleanup()
            raise RuntimeError(f"member add: {r.status_code} {r.text}")
        m.id = r.json()["id"]
        m.joined = True
        if start:
            m.start(self.initial_cluster(), "existing")
        return m, r

    def remove_member(self, m, via=None):
        via = via or next(x for x in self.live() if x is not m)
        r = via.delete(f"/v2/members/{m.id}", timeout=15)
        if r.status_code == 204:
            m.removed = True
            m.exit_expected = True
        return r

    # -- teardown ------------------------------------------------------------------------------------
    def cleanup(self):
        for m in self.members:
            m.cleanup()

    def deaths(self):
        return [m.death_report() for m in self.members if m.died_unexpectedly()]


# -- key helpers ------------------------------------------------------------------------------------------
def read_tree(m, prefix, quorum=True, timeout=15):
    """{key: (value, modifiedIndex)} of every leaf under prefix, read through member m."""
    params = {"recursive": "true"}
    if quorum:
        params["quorum"] = "true"
    r = m.get("/v2/keys" + prefix, params=params, timeout=timeout)
    if r.status_code == 404:
        return {}
    assert r.status_code == 200, f"{m.name}: {r.status_code} {r.text}"
    out = {}

    def walk(n):
        for c in n.get("nodes", []):
            if c.get("dir"):
                walk(c)
            else:
                out[c["key"]] = (c["value"], c["modifiedIndex"])

    walk(r.json()["node"])
    return out


def wait_converged(members, prefix, want=None, timeout=20.0):
    """Waits until a plain (local) read of prefix gives the same tree on all members (== want if given)."""
    deadline = time.monotonic() + timeout
    trees = {}
    while time.monotonic() < deadline:
        try:
            trees = {m.name: read_tree(m, prefix, quorum=False, timeout=5) for m in members}
        except (requests.RequestException, AssertionError):
            time.sleep(0.1)
            continue
        vals = list(trees.values())
        if all(v == vals[0] for v in vals) and (want is None or vals[0] == want):
            return vals[0]
        time.sleep(0.1)
    summary = {n: len(t) for n, t in trees.items()}
    raise AssertionError(f"members did not converge on {prefix} within {timeout}s: sizes {summary}"
                         + (f", want {len(want)}" if want is not None else ""))


# -- load with a checker ---------------------------------------------------------------------------------
class Load:
    """Writer threads spread over the members (each write a new key; on an error a writer moves on to the
    next member) and quorum readers checking that every read started after an acknowledgement sees it."""

    def __init__(self, members, prefix, writers=6, readers=2, seed=0):
        self.members = list(members)
        self.prefix = prefix
        self.acked = {}
        self.unknown = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.stale = []
        self.reads_ok = 0
        self.errors = []
        self.rng = random.Random(seed)
        self.threads = [threading.Thread(target=self._writer, args=(w,), daemon=True) for w in range(writers)]
        self.threads += [threading.Thread(target=self._reader, args=(r, seed + r), daemon=True)
                         for r in range(readers)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a client thread hung"

    def _writer(self, w):
        mi = w % len(self.members)
        seq = 0
        s = requests.Session()
        while not self.stop.is_set() and seq < 100000:
            m = self.members[mi % len(self.members)]
            key = f"{self.prefix}/w{w}/{seq:06d}"
            val = f"v{w}-{seq}-{m.name}"
            seq += 1
            try:
                r = s.put(m.url + "/v2/keys" + key, data={"value": val}, timeout=5)
            except requests.RequestException:
                with self.lock:
                    self.unknown += 1
                mi = (mi + 1) % len(self.members)
                s.close()
                s = requests.Session()
                time.sleep(0.05)
                continue
            if r.status_code in (200, 201):
                j = r.json()
                if j["node"]["value"] != val or j["node"]["key"] != key:
                    self.errors.append(("bad answer", key, r.text))
                with self.lock:
                    self.acked[key] = (val, j["node"]["modifiedIndex"])
            else:
                with self.lock:
                    self.unknown += 1
                if r.status_code < 500 and r.status_code != 408:
                    self.errors.append((m.name, key, r.status_code, r.text))
                mi = (mi + 1) % len(self.members)
                time.sleep(0.05)
        s.close()

    def _reader(self, r, seed):
        rng = random.Random(seed)
        s = requests.Session()
        while not self.stop.is_set():
            with self.lock:
                if not self.acked:
                    item = None
                else:
                    # a recent one most of the time
                    keys = list(self.acked)
                    k = keys[-1 - min(len(keys) - 1, int(rng.expovariate(0.3)))]
                    item = (k, self.acked[k])
            if item is None:
                time.sleep(0.02)
                continue
            k, (val, idx) = item
            m = rng.choice(self.members)
            try:
                resp = s.get(m.url + "/v2/keys" + k, params={"quorum": "true"}, timeout=5)
            except requests.RequestException:
                s.close()
                s = requests.Session()
                time.sleep(0.05)
                continue
            if resp.status_code == 200:
                n = resp.json()["node"]
                if (n.get("value"), n.get("modifiedIndex")) != (val, idx):
                    self.stale.append((m.name, k, (val, idx), resp.text))
                else:
                    self.reads_ok += 1
            elif resp.status_code == 404:
                self.stale.append((m.name, k, (val, idx), resp.text))
        s.close()


def check_final(c, load, survivors):
    acked = dict(load.acked)
    idxs = [i for _, i in acked.values()]
    assert len(set(idxs)) == len(idxs), "two acknowledged writes share a modifiedIndex"
    for m in survivors:
        have = read_tree(m, load.prefix, quorum=True)
        lost = [(k, v, have.get(k)) for k, v in acked.items() if have.get(k) != v]
        assert not lost, f"{m.name}: {len(lost)} of {len(acked)} acknowledged writes lost/changed, e.g. {lost[:5]}"
        extra = [k for k in have if k not in acked]
        # extra keys are writes whose answer was lost (killed member): at most the unknown outcomes
        assert len(extra) <= load.unknown, (m.name, len(extra), load.unknown)
    return acked



# -- private network namespace ---------------------------------------------------------------------------
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_namespaces = []  # names of namespaces made here and not yet deleted (deleted at exit, also on SIGTERM)


@atexit.register
def _delete_namespaces():
    for name in list(_namespaces):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        _namespaces.remove(name)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class NetNS:
    """A private network namespace (ip netns add) with lo up, entered by the calling thread: everything the
    test starts afterwards (members, HTTP clients, threads) lives in it. exit() returns to the original
    namespace and deletes it, taking every firewall rule made inside with it."""

    def __init__(self):
        self.name = "etcd2-cl-" + uuid.uuid4().hex[:8]
        self.orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self.fd = None

    @staticmethod
    def available():
        if os.geteuid() != 0:
            return "not root: cannot create a network namespace"
        if not shutil.which("ip"):
            return "ip (iproute2) not installed"
        if not shutil.which("nft"):
            return "nft (Debian package nftables) not installed"
        return None

    def enter(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        _namespaces.append(self.name)
        try:
            self.fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            _setns(self.fd)
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        except Exception:
            self.exit()
            raise
        return self

    def nft(self, script):
        r = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"nft failed: {r.stderr}\n{script}")

    def exit(self):
        try:
            _setns(self.orig)
        finally:
            os.close(self.orig)
            if self.fd is not None:
                os.close(self.fd)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            if self.name in _namespaces:
                _namespaces.remove(self.name)


# -- fixtures (import them into the test module) ---------------------------------------------------------
@pytest.fixture
def make_cluster():
    """Factory: make_cluster(n=3, ...) -> Cluster; every member killed and removed at teardown; fails the
    test if a member died without being told to."""
    made = []

    def make(*a, **kw):
        c = Cluster(*a, start=False, **kw)
        made.append(c)
        c.start_all()
        return c

    yield make
    procs.finish([m for c in made for m in c.members])
