# SPDX-License-Identifier: Apache-2.0
"""--import-v2-data-dir (import.c) against real etcd data: etcd 3.4 (--enable-v2, a small --snapshot-count so
that member/snap holds a v2 snapshot) takes keys, dirs, TTL keys (one expired by a SYNC, one refreshed, one made
permanent), in-order keys, deletes, CAS/CAD, create/update, hidden keys, odd values through the v2 API, and its
answer to a recursive GET is recorded; it is stopped, `etcdctl backup` (v2) copies its data dir, and our daemon
imports the backup and the data dir itself (with and without a snapshot): the tree matches node by node, indexes
included, and stays after a restart. A data dir of an etcd killed -9 in the middle of writes is imported and
matches what etcd itself serves when restarted on it. Corrupt and truncated inputs and a non-empty --data-dir are
refused with nothing written. ETCD2_IMPORT_BIG=N also times an import of N keys (ETCD2_IMPORT_BIG_WAL=1: all
from the WAL)."""

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY, Daemon, free_ports
from procs import member_flags

pytestmark = pytest.mark.skipif(
    REFERENCE or not (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)) or not os.access(REFERENCE_BINARY, os.X_OK)
    or not shutil.which("etcdctl"),
    reason="needs ETCD2_BINARY, /usr/bin/etcd and etcdctl")

HIDDEN = ["/_hidden", "/dirs/_h2"]


def ok(r):
    assert r.status_code in (200, 201), r.text
    return r.json()


def workload(d, n=40):
    """Every kind of v2 write; ends with a TTL key expired by etcd's SYNC."""
    s = requests.Session()
    u = d.url + "/v2/keys"
    for i in range(n):
        ok(s.put(f"{u}/plain/k{i:03d}", data={"value": f"v{i}"}))
    ok(s.put(f"{u}/empty", data={"value": ""}))
    ok(s.put(f"{u}/unicode", data={"value": "żółw \u2603 \"q\" \\ \n\ttab"}))
    ok(s.put(f"{u}/dirs/a/b/c", data={"value": "deep"}))
    ok(s.put(f"{u}/emptydir", data={"dir": "true"}))
    ok(s.put(f"{u}/ttldir", data={"dir": "true", "ttl": "600"}))
    ok(s.put(f"{u}/ttl/long", data={"value": "t", "ttl": "600"}))
    ok(s.put(f"{u}/ttl/refreshed", data={"value": "r", "ttl": "100"}))
    ok(s.put(f"{u}/ttl/refreshed", data={"refresh": "true", "ttl": "500", "prevExist": "true"}))
    ok(s.put(f"{u}/ttl/cleared", data={"value": "c", "ttl": "600"}))
    ok(s.put(f"{u}/ttl/cleared", data={"value": "c2"}))
    ok(s.put(f"{u}/ttl/short", data={"value": "gone", "ttl": "1"}))
    for i in range(5):
        ok(s.post(f"{u}/queue", data={"value": f"job{i}"}))
    first = ok(s.get(f"{u}/queue", params={"sorted": "true"}))["node"]["nodes"][0]["key"]
    ok(s.delete(f"{u}{first}"))
    ok(s.delete(f"{u}/plain/k000"))
    ok(s.put(f"{u}/doomed/x/y", data={"value": "z"}))
    ok(s.delete(f"{u}/doomed", params={"recursive": "true"}))
    idx = ok(s.get(f"{u}/plain/k001"))["node"]["modifiedIndex"]
    ok(s.put(f"{u}/plain/k001", data={"value": "cas1", "prevIndex": str(idx)}))
    ok(s.put(f"{u}/plain/k002", data={"value": "cas2", "prevValue": "v2"}))
    assert s.put(f"{u}/plain/k002", data={"value": "x", "prevValue": "wrong"}).status_code == 412
    ok(s.delete(f"{u}/plain/k003", params={"prevValue": "v3"}))
    ok(s.put(f"{u}/created", data={"value": "c", "prevExist": "false"}))
    ok(s.put(f"{u}/plain/k004", data={"value": "u", "prevExist": "true"}))
    ok(s.put(f"{u}/rmme", data={"dir": "true"}))
    ok(s.delete(f"{u}/rmme", params={"dir": "true"}))
    ok(s.put(f"{u}/_hidden", data={"value": "h"}))
    ok(s.put(f"{u}/dirs/_h2", data={"value": "h2"}))
    ok(s.get(f"{u}/plain/k005", params={"quorum": "true"}))
    # v2 auth (not enabled): users and roles live under /2 in etcd2's layout, which is ours too
    ok(s.put(d.url + "/v2/auth/users/alice", json={"user": "alice", "password": "pw"}))
    ok(s.put(d.url + "/v2/auth/roles/reader", json={"role": "reader", "permissions": {"kv": {"read": ["/a/*"], "write": []}}}))
    # etcd 3.4's leader expires keys with a SYNC entry every 500 ms
    deadline = time.monotonic() + 10
    while s.get(f"{u}/ttl/short").status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    s.close()


def flatten(node, out):
    if "key" in node:
        out[node["key"]] = {k: node.get(k) for k in ("dir", "value", "createdIndex", "modifiedIndex")}
        out[node["key"]]["expiration"] = (node.get("expiration") or "")[:19]   # ns (etcd) vs us (ours)
        out[node["key"]]["ttl"] = node.get("ttl")
    for c in node.get("nodes", []):
        flatten(c, out)
    return out


def dump(d):
    """The tree as d serves it: {key: fields} of a recursive sorted GET plus the hidden keys; and its index."""
    r = requests.get(d.url + "/v2/keys/", params={"recursive": "true", "sorted": "true"}, timeout=10)
    assert r.status_code == 200, r.text
    tree = flatten(r.json()["node"], {})
    for h in HIDDEN:
        rh = requests.get(d.url + "/v2/keys" + h, timeout=10)
        if rh.status_code == 200:
            flatten(rh.json()["node"], tree)
    return tree, int(r.headers["X-Etcd-Index"])


def assert_same_tree(ours, ref):
    assert sorted(ours) == sorted(ref), (sorted(set(ours) ^ set(ref)), [(k, ours.get(k), ref.get(k)) for k in sorted(set(ours) ^ set(ref))])
    for k, want in ref.items():
        got = dict(ours[k])
        want = dict(want)
        tg, tw = got.pop("ttl"), want.pop("ttl")
        assert got == want, k
        assert (tg is None) == (tw is None), k
        if tw is not None:
            # the expirations are equal (above); the ttls differ by the time between the two reads
            assert tg > 0 and abs(tg - tw) <= 60, (k, tg, tw)


def wait_points(tree, index):
    """waitIndex queries on past events, early (in the snapshot's history) and late (in the log)."""
    first_queue = min(v["createdIndex"] for k, v in tree.items() if k.startswith("/queue/"))
    return [("/plain/k001", tree["/plain/k005"]["createdIndex"] - 4, False),
            ("/", 1, True),
            ("/queue", first_queue - 1, True),
            ("/ttl", tree["/ttl/long"]["createdIndex"], True),
            ("/dirs", tree["/dirs/_h2"]["modifiedIndex"], True)]


def past_event(d, path, wait_index, recursive):
    params = {"wait": "true", "waitIndex": str(wait_index)}
    if recursive:
        params["recursive"] = "true"
    r = requests.get(d.url + "/v2/keys" + path, params=params, timeout=5)
    j = r.json()
    for n in (j.get("node"), j.get("prevNode")):
        if n:
            n.pop("ttl", None)
            if "expiration" in n:
                n["expiration"] = n["expiration"][:19]
    j.pop("index", None)
    return r.status_code, j


def backup(data_dir):
    b = tempfile.mkdtemp(prefix="etcd2-it-backup-")
    shutil.rmtree(b)
    r = subprocess.run(["etcdctl", "backup", "--data-dir", data_dir, "--backup-dir", b],
                       env={**os.environ, "ETCDCTL_API": "2"}, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return b


def has_snap(data_dir):
    return any(n.endswith(".snap") for n in os.listdir(os.path.join(data_dir, "member", "snap")))


def run_import(src, data_dir, timeout=120):
    """Runs our daemon with --import-v2-data-dir where it is expected to refuse: (status, log)."""
    c, p = free_ports(2)
    r = subprocess.run([OUR_BINARY, "--import-v2-data-dir", src]
                       + member_flags("node1", data_dir, f"http://127.0.0.1:{c}", f"http://127.0.0.1:{p}")
                       + ["--initial-cluster", f"node1=http://127.0.0.1:{p}"],
                       capture_output=True, timeout=timeout,
                       env={k: v for k, v in os.environ.items() if not k.startswith("ETCD_")})
    return r.returncode, r.stderr.decode("utf-8", "replace")


def import_daemon(src):
    return Daemon(reference=False, binary=OUR_BINARY, extra_args=["--import-v2-data-dir", src])


def imported_index(d):
    m = re.search(r"Imported .* etcd index (\d+)", d.log_tail(200000))
    assert m, d.log_tail(4000)
    return int(m.group(1))


@pytest.fixture(scope="module")
def source():
    """etcd 3.4 with a snapshot after 20 entries, the workload, its answers; stopped; and a backup."""
    ref = Daemon(reference=True, binary=REFERENCE_BINARY, extra_args=["--snapshot-count", "20"])
    try:
        workload(ref)
        tree, index = dump(ref)
        waits = {w: past_event(ref, *w) for w in wait_points(tree, index)}
        ref.stop()
        data = ref.data_dir
        assert has_snap(data)
        b = backup(data)
        yield {"data": data, "backup": b, "tree": tree, "index": index, "waits": waits}
    finally:
        ref.cleanup()
    shutil.rmtree(b, ignore_errors=True)


@pytest.mark.parametrize("which", ["backup", "data"])
def test_import_matches(source, which):
    d = import_daemon(source[which])
    try:
        tree, _ = dump(d)
        # the backup's log starts after its snapshot, which holds every membership write: same indexes
        assert_same_tree(tree, source["tree"])
        assert imported_index(d) == source["index"]
        # the history came along: past events answer waits as they did with etcd
        for w, want in source["waits"].items():
            assert past_event(d, *w) == want, w
        # v2 auth users and roles came along
        assert ok(d.get("/v2/auth/users"))["users"] == [{"user": "alice"}]
        assert ok(d.get("/v2/auth/roles/reader"))["permissions"] == {"kv": {"read": ["/a/*"], "write": []}}
        # membership is ours: one member, this one
        ms = ok(d.get("/v2/members"))["members"]
        assert len(ms) == 1 and ms[0]["peerURLs"] == [d.peer_url]
        # prevIndex keeps working with the imported indexes; new writes come after them
        k = source["tree"]["/plain/k010"]
        r = ok(d.put("/v2/keys/plain/k010", data={"value": "n", "prevIndex": str(k["modifiedIndex"])}))
        assert r["node"]["modifiedIndex"] > source["index"]
        # the data dir is ours now: a restart without the flag serves the same tree
        d.stop()
        d2 = Daemon(reference=False, binary=OUR_BINARY, data_dir=d.data_dir)
        try:
            tree2, _ = dump(d2)
            expect = dict(source["tree"])
            expect["/plain/k010"] = tree2["/plain/k010"]
            assert_same_tree(tree2, expect)
        finally:
            d2.cleanup()
    finally:
        d.cleanup()


def etcd_on(src, force=False):
    """The tree etcd 3.4 itself serves from a copy of the data dir src (a backup wants --force-new-cluster)."""
    d = copy_of(src)
    try:
        ref = Daemon(reference=True, binary=REFERENCE_BINARY, data_dir=d,
                     extra_args=["--force-new-cluster"] if force else [])
        try:
            return dump(ref)[0]
        finally:
            ref.cleanup()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def imported_tree(src):
    d = import_daemon(src)
    try:
        got = dump(d)[0], imported_index(d)
        d.stop()
        assert d.sanitizer_report() is None, d.sanitizer_report()
        return got
    finally:
        d.cleanup()


def test_import_then_grow(source):
    """The imported member grows with `member add`: the new member gets the imported state (as a snapshot:
    no log entry holds it) and serves the same tree."""
    from cluster import Cluster
    c = Cluster(n=1, reference=False, extra_args=["--import-v2-data-dir", source["backup"]], start=False)
    try:
        c.start_all()
        c.extra_args = []           # the member added next joins with an empty data dir
        m, _ = c.add_member()
        deadline = time.monotonic() + 30
        while True:
            try:
                tree, _ = dump(m)
                if "/plain/k010" in tree:
                    break
            except (requests.RequestException, AssertionError, ValueError):
                pass
            assert time.monotonic() < deadline, m.log_tail(4000)
            time.sleep(0.2)
        assert_same_tree(tree, source["tree"])
        assert len(ok(m.get("/v2/members"))["members"]) == 2
        r = ok(m.put("/v2/keys/after-grow", data={"value": "x"}))
        assert r["node"]["modifiedIndex"] > source["index"]
    finally:
        c.cleanup()


def test_import_via_env_and_help(source):
    d = Daemon(reference=False, binary=OUR_BINARY, use_env=True, env={"ETCD_IMPORT_V2_DATA_DIR": source["backup"]})
    try:
        assert_same_tree(dump(d)[0], source["tree"])
    finally:
        d.cleanup()
    r = subprocess.run([OUR_BINARY, "-h"], capture_output=True, timeout=10)
    assert "--import-v2-data-dir" in (r.stdout + r.stderr).decode()


def test_import_without_snapshot():
    """No .snap: everything comes from the WAL. The data dir gives etcd's answers exactly. `etcdctl backup`
    drops the conf changes and member attribute writes from the log, each of which moved etcd's index, so
    the keys written after them get other indexes (and a DELETE of an in-order key another key) when the
    backup is replayed: by etcd itself as by us."""
    ref = Daemon(reference=True, binary=REFERENCE_BINARY)
    try:
        workload(ref, n=8)
        tree, index = dump(ref)
        ref.stop()
        assert not has_snap(ref.data_dir)
        got, got_index = imported_tree(ref.data_dir)
        assert_same_tree(got, tree)
        assert got_index == index
        b = backup(ref.data_dir)
        try:
            assert_same_tree(imported_tree(b)[0], etcd_on(b, force=True))
        finally:
            shutil.rmtree(b, ignore_errors=True)
    finally:
        ref.cleanup()


def test_import_after_kill9():
    """etcd killed -9 while four writers go on: the import of its data dir matches what etcd serves when it
    restarts on it and holds every write etcd acknowledged; the import of its backup matches etcd started
    on the backup."""
    ref = Daemon(reference=True, binary=REFERENCE_BINARY, extra_args=["--snapshot-count", "300"])
    acked = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w):
        s = requests.Session()
        i = 0
        while not stop.is_set():
            key = f"/w{w}/k{i:05d}"
            try:
                r = s.put(ref.url + "/v2/keys" + key, data={"value": f"x{i}"}, timeout=2)
            except requests.RequestException:
                break
            if r.status_code in (200, 201):
                with lock:
                    acked[key] = r.json()["node"]["modifiedIndex"]
            i += 1
        s.close()

    try:
        ts = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)]
        for t in ts:
            t.start()
        time.sleep(1.5)
        ref.kill9()
        stop.set()
        for t in ts:
            t.join(10)
        assert len(acked) > 100
        b = backup(ref.data_dir)
        try:
            ours, _ = imported_tree(ref.data_dir)
            for k, idx in acked.items():
                assert ours[k]["modifiedIndex"] == idx, k
            assert_same_tree(ours, etcd_on(ref.data_dir))
            assert_same_tree(imported_tree(b)[0], etcd_on(b, force=True))
        finally:
            shutil.rmtree(b, ignore_errors=True)
    finally:
        ref.cleanup()


def copy_of(src):
    dst = tempfile.mkdtemp(prefix="etcd2-it-corrupt-")
    shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def wal_file(d):
    w = os.path.join(d, "member", "wal")
    return os.path.join(w, sorted(n for n in os.listdir(w) if n.endswith(".wal"))[-1])


def used_size(path):
    """Bytes up to the end of the last record (the rest of a preallocated 64 MB file is zeros)."""
    with open(path, "rb") as f:
        data = f.read()
    return len(data.rstrip(b"\0"))


def refuse(src, what):
    target = tempfile.mkdtemp(prefix="etcd2-it-import-")
    try:
        status, log = run_import(src, os.path.join(target, "new"))   # a data dir that does not exist yet
        assert status != 0, log
        assert what in log, log
        assert "Sanitizer" not in log and "runtime error" not in log, log
        assert "nothing was written" in log or "nothing was changed" in log, log
        assert os.listdir(target) == [], os.listdir(target)
    finally:
        shutil.rmtree(target, ignore_errors=True)


@pytest.mark.parametrize("damage", ["wal-bitflip", "wal-cut-mid", "snap-truncated", "snap-bitflip", "no-wal"])
def test_corrupt_refused(source, damage):
    src = copy_of(source["backup"])
    try:
        wal = wal_file(src)
        snap_dir = os.path.join(src, "member", "snap")
        snap = os.path.join(snap_dir, sorted(n for n in os.listdir(snap_dir) if n.endswith(".snap"))[-1])
        if damage == "wal-bitflip":
            with open(wal, "r+b") as f:
                f.seek(200)
                b = f.read(1)
                f.seek(200)
                f.write(bytes([b[0] ^ 0x10]))
            refuse(src, "is corrupt")
        elif damage == "wal-cut-mid":
            # a cut in the middle of the log: the backup's snapshot record (written last) is gone
            os.truncate(wal, used_size(wal) // 3)
            refuse(src, "no record of the snapshot")
        elif damage == "snap-truncated":
            os.truncate(snap, os.path.getsize(snap) // 2)
            refuse(src, "snapshot files")
        elif damage == "snap-bitflip":
            with open(snap, "r+b") as f:
                f.seek(os.path.getsize(snap) // 2)
                b = f.read(1)
                f.seek(os.path.getsize(snap) // 2)
                f.write(bytes([b[0] ^ 0x01]))
            refuse(src, "snapshot files")
        else:
            shutil.rmtree(os.path.join(src, "member", "wal"))
            refuse(src, "not an etcd v2 data dir")
    finally:
        shutil.rmtree(src, ignore_errors=True)


def test_torn_last_record_dropped(source):
    """A last record cut short is a write that never completed: dropped as etcd drops it (wal.Repair), the
    rest imported; etcd restarted on the same damaged dir agrees."""
    src = copy_of(source["data"])
    try:
        wal = wal_file(src)
        os.truncate(wal, used_size(wal) - 3)
        d = import_daemon(src)
        try:
            ours, _ = dump(d)
            assert "torn record" in d.log_tail(200000)
        finally:
            d.cleanup()
        ref = Daemon(reference=True, binary=REFERENCE_BINARY, data_dir=src)
        try:
            theirs, _ = dump(ref)
        finally:
            ref.cleanup()
        assert_same_tree(ours, theirs)
    finally:
        shutil.rmtree(src, ignore_errors=True)


def test_nonempty_data_dir_refused(source):
    target = tempfile.mkdtemp(prefix="etcd2-it-import-")
    try:
        with open(os.path.join(target, "keep"), "w") as f:
            f.write("x")
        status, log = run_import(source["backup"], target)
        assert status != 0 and "is not empty" in log, log
        assert os.listdir(target) == ["keep"]
    finally:
        shutil.rmtree(target, ignore_errors=True)


@pytest.mark.skipif(not os.environ.get("ETCD2_IMPORT_BIG"), reason="set ETCD2_IMPORT_BIG=N to time N keys")
def test_import_big():
    n = int(os.environ["ETCD2_IMPORT_BIG"])
    # ETCD2_IMPORT_BIG_WAL=1: no snapshot, every key replayed from the WAL
    count = 10 * n if os.environ.get("ETCD2_IMPORT_BIG_WAL") == "1" else n // 3
    ref = Daemon(reference=True, binary=REFERENCE_BINARY, extra_args=["--snapshot-count", str(count)])
    try:
        def writer(w, step=8):
            s = requests.Session()
            for i in range(w, n, step):
                assert s.put(f"{ref.url}/v2/keys/big/d{i % 100:02d}/k{i:06d}",
                             data={"value": f"value-{i}"}, timeout=10).status_code == 201
            s.close()
        ts = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(600)
        tree, index = dump(ref)
        ref.stop()
        t0 = time.monotonic()
        d = import_daemon(ref.data_dir)
        try:
            print(f"import of {n} keys: {time.monotonic() - t0:.2f} s to healthy;",
                  re.search(r"Imported .*", d.log_tail(200000)).group(0))
            assert_same_tree(dump(d)[0], tree)
            assert imported_index(d) == index
        finally:
            d.cleanup()
    finally:
        ref.cleanup()
