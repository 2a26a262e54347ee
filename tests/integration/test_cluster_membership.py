# SPDX-License-Identifier: Apache-2.0
"""Runtime membership of a 3-member cluster (add and remove under load, through the HTTP API and through
etcdctl with ETCDCTL_API=2) and catch-up of a follower that missed more than --snapshot-count entries."""

import os
import re
import shutil
import subprocess
import threading
import time

import pytest
import requests

from cluster import Load, check_final, read_tree, wait_converged, make_cluster  # noqa: F401 (fixture)
from conftest import unique

ETCDCTL = shutil.which("etcdctl")
SNAP_KEYS = int(os.environ.get("ETCD2_CLUSTER_SNAP_KEYS", "350"))


def _members(m):
    r = m.get("/v2/members")
    assert r.status_code == 200, r.text
    return {x["id"]: x for x in r.json()["members"]}


def _wait_exit(m, timeout):
    try:
        return m.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_add_and_remove_member_under_load(make_cluster):
    c = make_cluster(3)
    prefix = "/" + unique("mship")
    load = Load(c.members, prefix, writers=4, readers=1, seed=1)
    load.start()
    try:
        time.sleep(0.5)
        new, r = c.add_member(via=c.followers()[0])
        j = r.json()
        assert j["peerURLs"] == [new.peer_url] and j["clientURLs"] == [], r.text
        assert re.fullmatch(r"[0-9a-f]{1,16}", j["id"]), r.text
        c.wait_leader(timeout=30)
        load.members.append(new)
        time.sleep(1.0)
        # everyone lists the four members, the new one with its name and client URL once it published
        deadline = time.monotonic() + 10
        while True:
            views = [_members(m) for m in c.live()]
            ok = all(set(v) == {m.id for m in c.members} for v in views) and \
                all(v[new.id]["name"] == new.name and v[new.id]["clientURLs"] == [new.url] for v in views)
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ok, views
        # remove one of the original followers; its process exits 0 within a few seconds
        leader = c.leader()
        victim = next(m for m in c.members[:3] if m is not leader)
        r = c.remove_member(victim, via=leader)
        assert r.status_code == 204, r.text
        rc = _wait_exit(victim, 10)
        assert rc == 0, f"removed member {victim.name}: exit status {rc} (None = still running after 10 s)"
        time.sleep(1.0)
    finally:
        load.finish()
    survivors = [m for m in c.members if not m.removed]
    c.wait_leader(timeout=30, members=survivors)
    for m in survivors:
        assert set(_members(m)) == {m.id for m in survivors}, m.name
        r = m.get("/v2/members/" + victim.id)
        assert r.status_code in (404, 405), r.text  # 2.3 has no GET of one member
    assert not load.errors, load.errors[:5]
    assert not [s for s in load.stale if s[0] != victim.name], load.stale[:5]
    acked = check_final(c, load, survivors)
    print(f"{len(acked)} acknowledged writes, {load.unknown} unknown, new member {new.name} id {new.id}")
    assert len(acked) > 20
    tree = wait_converged(survivors, prefix)
    assert all(tree.get(k) == v for k, v in acked.items())
    # the added member takes writes
    r = new.put(f"/v2/keys{prefix}/last", data={"value": "x"})
    assert r.status_code == 201, r.text


def _etcdctl(c, *args, members=None, timeout=30):
    eps = ",".join(m.url for m in (members or c.live()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    env["ETCDCTL_API"] = "2"
    return subprocess.run([ETCDCTL, "--endpoints", eps, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.skipif(not ETCDCTL, reason="etcdctl (Debian package etcd-client) not installed")
def test_etcdctl_member_commands(make_cluster):
    c = make_cluster(3)
    leader = c.leader()
    p = _etcdctl(c, "member", "list")
    assert p.returncode == 0, p.stderr
    lines = sorted(p.stdout.strip().splitlines())
    want = sorted(f"{m.id}: name={m.name} peerURLs={m.peer_url} clientURLs={m.url} "
                  f"isLeader={'true' if m is leader else 'false'}" for m in c.members)
    assert lines == want, p.stdout
    p = _etcdctl(c, "cluster-health")
    assert p.returncode == 0, p.stdout + p.stderr
    for m in c.members:
        assert f"member {m.id} is healthy: got healthy result from {m.url}" in p.stdout, p.stdout
    assert p.stdout.strip().endswith("cluster is healthy"), p.stdout

    # member add: start the new member with exactly what etcdctl prints
    new = c._new_member()
    new.joined = True
    p = _etcdctl(c, "member", "add", new.name, new.peer_url, members=c.members[:3])
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"Added member named (\S+) with ID ([0-9a-f]+) to cluster", p.stdout)
    assert m and m.group(1) == new.name, p.stdout
    new.id = m.group(2)
    env = dict(re.findall(r'^(ETCD_\w+)="(.*)"$', p.stdout, re.M))
    assert env["ETCD_NAME"] == new.name and env["ETCD_INITIAL_CLUSTER_STATE"] == "existing", p.stdout
    assert sorted(env["ETCD_INITIAL_CLUSTER"].split(",")) == sorted(
        f"{x.name}={x.peer_url}" for x in c.members), p.stdout
    deadline = time.monotonic() + 5  # a follower may apply the change a moment later
    while True:
        p = _etcdctl(c, "member", "list", members=c.members[:3])
        if f"{new.id}[unstarted]: peerURLs={new.peer_url}" in p.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert f"{new.id}[unstarted]: peerURLs={new.peer_url}" in p.stdout, p.stdout
    new.start(env["ETCD_INITIAL_CLUSTER"], "existing")
    c.wait_leader(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        p = _etcdctl(c, "member", "list")
        if f"{new.id}: name={new.name} " in p.stdout:
            break
        time.sleep(0.2)
    assert f"{new.id}: name={new.name} peerURLs={new.peer_url} clientURLs={new.url}" in p.stdout, p.stdout
    r = new.put("/v2/keys/" + unique("ctl"), data={"value": "x"})
    assert r.status_code == 201, r.text

    # member remove of the new member through etcdctl
    p = _etcdctl(c, "member", "remove", new.id, members=c.members[:3])
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Removed member {new.id} from cluster" in p.stdout, p.stdout
    new.removed = True
    new.exit_expected = True
    rc = _wait_exit(new, 10)
    assert rc == 0, f"removed member: exit status {rc}"
    deadline = time.monotonic() + 5
    while True:
        p = _etcdctl(c, "member", "list", members=c.members[:3])
        if new.id not in p.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert new.id not in p.stdout and len(p.stdout.strip().splitlines()) == 3, p.stdout
    p = _etcdctl(c, "member", "remove", new.id, members=c.members[:3])
    assert p.returncode != 0, p.stdout


def test_follower_catch_up_after_snapshot(make_cluster):
    c = make_cluster(3, snapshot_count=100)
    leader = c.leader()
    lagging = c.followers(leader)[0]
    rc = lagging.stop()
    assert rc in (0, -15), rc
    prefix = "/" + unique("snap")
    written = {}
    lock = threading.Lock()
    up = [m for m in c.members if m is not lagging]

    def writer(w):
        s = requests.Session()
        for i in range(w, SNAP_KEYS, 4):
            k = f"{prefix}/k{i:05d}"
            r = s.put(up[i % 2].url + "/v2/keys" + k, data={"value": f"v{i}"}, timeout=10)
            assert r.status_code == 201, r.text
            with lock:
                written[k] = (f"v{i}", r.json()["node"]["modifiedIndex"])
        s.close()

    ts = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert len(written) == SNAP_KEYS
    lagging.start()
    c.wait_leader(timeout=30)
    wait_converged(c.members, prefix, want=written, timeout=30)
    assert read_tree(lagging, prefix) == written
    # and it keeps following
    r = up[0].put(f"/v2/keys{prefix}/after", data={"value": "x"})
    assert r.status_code == 201, r.text
    written[f"{prefix}/after"] = ("x", r.json()["node"]["modifiedIndex"])
    wait_converged(c.members, prefix, want=written, timeout=10)


def test_lost_data_dir_refused(make_cluster):
    # A member that ran before and lost its data dir must not bootstrap a second time with
    # --initial-cluster-state new: the others know it with client URLs (etcd2's isMemberBootstrapped).
    c = make_cluster(3)
    victim = c.followers(c.leader())[0]
    assert victim.stop() in (0, -15)
    shutil.rmtree(victim.data_dir)
    os.mkdir(victim.data_dir)
    victim.start(c.initial_cluster(), "new")
    rc = victim.wait_exit(30)
    assert rc is not None and rc != 0, victim.log_tail(3000)
    assert "has already been bootstrapped" in victim.log_tail(20000), victim.log_tail(3000)
