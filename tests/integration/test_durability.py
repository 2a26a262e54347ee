# SPDX-License-Identifier: Apache-2.0
"""Durability: acknowledged writes survive kill -9 and restart on the same data dir; indexes continue;
the event history survives; SIGTERM exits cleanly and keeps data. Seeds are printed (set
ETCD2_DURABILITY_SEED to replay one)."""

import os
import random
import signal
import threading
import time

import pytest
import requests

from conftest import unique

ROUNDS = int(os.environ.get("ETCD2_DURABILITY_ROUNDS", "20"))
WRITERS = 3
BUDGET_S = 90.0


def _writer(url, prefix, stop, acked, lock, errors):
    s = requests.Session()
    seq = 0
    try:
        while not stop.is_set() and seq < 100000:
            key = f"{prefix}/{seq:06d}"
            val = f"v-{prefix.rsplit('/', 1)[-1]}-{seq}"
            try:
                r = s.put(f"{url}/v2/keys{key}", data={"value": val}, timeout=5)
            except requests.RequestException:
                break
            if r.status_code in (200, 201):
                j = r.json()
                with lock:
                    acked[key] = (val, j["node"]["modifiedIndex"])
            elif r.status_code >= 500:
                break
            else:
                errors.append((key, r.status_code, r.text))
                break
            seq += 1
    finally:
        s.close()


def _read_tree(d, prefix):
    r = d.get("/v2/keys" + prefix, params={"recursive": "true"})
    if r.status_code == 404:
        return {}
    assert r.status_code == 200, r.text
    out = {}

    def walk(n):
        for c in n.get("nodes", []):
            if c.get("dir"):
                walk(c)
            else:
                out[c["key"]] = (c["value"], c["modifiedIndex"])

    walk(r.json()["node"])
    return out


def test_kill9_acknowledged_writes_survive(make_daemon):
    seed = int(os.environ.get("ETCD2_DURABILITY_SEED", str(random.randrange(1 << 30))))
    print(f"durability seed: {seed} (ETCD2_DURABILITY_SEED={seed} to replay)")
    rng = random.Random(seed)
    d = make_daemon()
    t_start = time.monotonic()
    all_acked = {}
    max_index = 0
    rounds_done = 0
    for rnd in range(ROUNDS):
        if time.monotonic() - t_start > BUDGET_S - 8:
            print(f"time budget reached after {rnd} rounds")
            break
        stop = threading.Event()
        lock = threading.Lock()
        acked = {}
        errors = []
        threads = [threading.Thread(target=_writer, args=(d.url, f"/dur/r{rnd:02d}/w{w}", stop, acked, lock,
                                                         errors), daemon=True) for w in range(WRITERS)]
        for t in threads:
            t.start()
        delay = rng.uniform(0.05, 0.8)
        time.sleep(delay)
        d.kill9()
        stop.set()
        for t in threads:
            t.join(10)
            assert not t.is_alive(), "writer thread hung after kill -9"
        assert not errors, errors[:3]
        all_acked.update(acked)
        d.start()
        # every write acknowledged so far (this round and earlier ones) is there, unchanged
        have = _read_tree(d, "/dur")
        missing = [(k, v) for k, v in all_acked.items() if have.get(k) != v]
        assert not missing, (f"seed {seed} round {rnd} (kill after {delay:.3f}s): "
                             f"{len(missing)} acknowledged writes lost or changed, e.g. "
                             f"{[(k, v, have.get(k)) for k, v in missing[:5]]}")
        if all_acked:
            max_index = max(max_index, max(i for _, i in all_acked.values()))
        # indexes continue after the restart
        r = d.put("/v2/keys/dur/probe", data={"value": str(rnd)})
        assert r.status_code in (200, 201), r.text
        idx = r.json()["node"]["modifiedIndex"]
        assert idx > max_index, f"seed {seed} round {rnd}: new index {idx} <= acknowledged {max_index}"
        max_index = idx
        rounds_done += 1
    print(f"{rounds_done} rounds, {len(all_acked)} acknowledged writes verified")
    assert rounds_done >= min(ROUNDS, 5)
    assert len(all_acked) > 0


def test_history_survives_restart(make_daemon):
    d = make_daemon()
    key = unique("hist")
    first = d.set(key, "old-1")
    for i in range(2, 11):
        d.set(key, f"old-{i}")
    before = d.index()
    d.restart(kill=True)
    assert d.index() >= before
    r = d.get("/v2/keys/" + key, params={"wait": "true", "waitIndex": str(first["node"]["modifiedIndex"])},
              timeout=10)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["node"]["value"] == "old-1"
    assert j["node"]["modifiedIndex"] == first["node"]["modifiedIndex"]
    # and a recursive watcher from the middle of the window gets the event at that index
    r = d.get("/v2/keys/", params={"wait": "true", "recursive": "true",
                                   "waitIndex": str(first["node"]["modifiedIndex"] + 4)})
    assert r.json()["node"]["value"] == "old-5"


def test_sigterm_clean_exit_keeps_data(make_daemon):
    d = make_daemon()
    keys = {unique("term"): str(i) for i in range(20)}
    idx = {}
    for k, v in keys.items():
        idx[k] = d.set(k, v)["node"]["modifiedIndex"]
    t0 = time.monotonic()
    rc = d.stop(timeout=15)
    took = time.monotonic() - t0
    assert rc in (0, -signal.SIGTERM), f"exit status {rc} after SIGTERM"
    assert took < 10, f"SIGTERM took {took:.1f}s"
    d.start()
    for k, v in keys.items():
        r = d.get("/v2/keys/" + k)
        assert r.status_code == 200
        assert r.json()["node"]["value"] == v
        assert r.json()["node"]["modifiedIndex"] == idx[k]
    r = d.put("/v2/keys/" + unique(), data={"value": "after"})
    assert r.json()["node"]["modifiedIndex"] > max(idx.values())


def test_ttl_survives_restart(make_daemon):
    d = make_daemon()
    key = unique("ttl")
    d.put("/v2/keys/" + key, data={"value": "t", "ttl": "300"})
    short = unique("short")
    d.put("/v2/keys/" + short, data={"value": "t", "ttl": "2"})
    d.restart(kill=True)
    n = d.get("/v2/keys/" + key).json()["node"]
    assert 290 <= n["ttl"] <= 300
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and d.get("/v2/keys/" + short).status_code != 404:
        time.sleep(0.2)
    assert d.get("/v2/keys/" + short).status_code == 404


def test_dirs_and_inorder_survive_restart(make_daemon):
    d = make_daemon()
    base = unique("q")
    made = [d.post("/v2/keys/" + base, data={"value": f"j{i}"}).json()["node"] for i in range(5)]
    d.put("/v2/keys/" + base + "/sub", data={"dir": "true"})
    before = d.get("/v2/keys/" + base, params={"recursive": "true", "sorted": "true"}).json()
    d.restart(kill=True)
    after = d.get("/v2/keys/" + base, params={"recursive": "true", "sorted": "true"}).json()
    assert before == after
    nxt = d.post("/v2/keys/" + base, data={"value": "next"}).json()["node"]
    assert int(nxt["key"].rsplit("/", 1)[1]) > int(made[-1]["key"].rsplit("/", 1)[1])


def test_snapshot_and_replay(make_daemon):
    """With a small --snapshot-count the restart goes through snapshot load + log replay."""
    d = make_daemon(extra_args=["--snapshot-count", "100"])
    base = unique("snap")
    acked = {}
    with requests.Session() as s:
        for i in range(1200):
            r = s.put(d.k(f"{base}/k{i % 300}"), data={"value": f"v{i}"}, timeout=10)
            assert r.status_code in (200, 201)
            acked[f"/{base}/k{i % 300}"] = (f"v{i}", r.json()["node"]["modifiedIndex"])
    last = max(i for _, i in acked.values())
    d.restart(kill=True)
    have = _read_tree(d, "/" + base)
    assert have == acked
    # the event history (last 1000 events) survives snapshot + replay
    r = d.get("/v2/keys/" + base, params={"wait": "true", "recursive": "true", "waitIndex": str(last - 500)})
    assert r.status_code == 200, r.text
    assert r.json()["node"]["modifiedIndex"] == last - 500
    d.restart(kill=False)
    assert _read_tree(d, "/" + base) == acked
    assert d.put("/v2/keys/" + base + "/after", data={"value": "x"}).json()["node"]["modifiedIndex"] > last


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.03])
def test_kill9_during_recursive_delete_is_atomic(make_daemon, delay):
    d = make_daemon()
    base = unique("tree")
    with requests.Session() as s:
        for i in range(500):
            assert s.put(d.k(f"{base}/d{i % 10}/k{i}"), data={"value": "x"}, timeout=10).status_code == 201
    box = {}

    def delete():
        try:
            box["r"] = requests.delete(d.k(base), params={"recursive": "true"}, timeout=10)
        except requests.RequestException as e:
            box["e"] = e

    import threading as _t
    t = _t.Thread(target=delete)
    t.start()
    time.sleep(delay)
    d.kill9()
    t.join(15)
    d.start()
    have = _read_tree(d, "/" + base)
    if "r" in box and box["r"].status_code == 200:
        assert have == {}, "acknowledged recursive delete lost"
    assert len(have) in (0, 500), f"recursive delete half-applied: {len(have)} of 500 keys left"


def test_sigterm_with_open_watches(make_daemon):
    d = make_daemon()
    import socket
    socks = []
    try:
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", d.client_ports[0]), timeout=10)
            s.sendall(f"GET /v2/keys/w{i}?wait=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        rc = d.stop(timeout=15)
        assert rc in (0, -signal.SIGTERM), rc
        assert time.monotonic() - t0 < 10
    finally:
        for s in socks:
            s.close()


def test_restart_keeps_identity_and_raft_progress(make_daemon):
    d = make_daemon()
    members = d.get("/v2/members").json()
    r = d.put("/v2/keys/" + unique(), data={"value": "x"})
    raft_index, term = int(r.headers["X-Raft-Index"]), int(r.headers["X-Raft-Term"])
    cid = r.headers["X-Etcd-Cluster-Id"]
    d.restart(kill=True)
    assert d.get("/v2/members").json() == members
    r = d.put("/v2/keys/" + unique(), data={"value": "y"})
    assert r.headers["X-Etcd-Cluster-Id"] == cid
    assert int(r.headers["X-Raft-Index"]) > raft_index
    assert int(r.headers["X-Raft-Term"]) >= term


def test_ttl_expires_while_down(make_daemon):
    d = make_daemon()
    key = unique("down")
    s = d.put("/v2/keys/" + key, data={"value": "t", "ttl": "1"}).json()
    d.kill9()
    time.sleep(2.0)
    d.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and d.get("/v2/keys/" + key).status_code != 404:
        time.sleep(0.1)
    assert d.get("/v2/keys/" + key).status_code == 404
    r = d.get("/v2/keys/" + key, params={"wait": "true", "waitIndex": str(s["node"]["modifiedIndex"] + 1)})
    assert r.json()["action"] == "expire"
