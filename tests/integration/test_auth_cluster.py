# SPDX-License-Identifier: Apache-2.0
"""v2 auth on a 3-member cluster: users, roles and the enabled flag are Raft writes under /2, so a change
made through any member holds on every member, and a member killed with -9 comes back with it. Runs
against etcd 3.4 too (ETCD2_REFERENCE=1)."""

import json
import threading
import time

import pytest
import requests

import procs
from cluster import Cluster, make_cluster  # noqa: F401 (fixture)
from conftest import REFERENCE

ROOT = ("root", "rootpw")
BOB = ("bob", "bobpw")
JSON = {"Content-Type": "application/json"}


def put(m, path, body, auth=None):
    return requests.put(m.url + path, data=json.dumps(body), headers=JSON, auth=auth, timeout=10)


def until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except requests.RequestException:
            v = None
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


def test_auth_replicated(make_cluster):
    c = make_cluster(3)
    a, b, d = c.members
    assert put(a, "/v2/auth/users/root", {"user": "root", "password": ROOT[1]}).status_code == 201
    assert put(b, "/v2/auth/roles/rw", {"role": "rw", "permissions": {"kv": {"read": ["/a/*"], "write": ["/a/*"]}}}).status_code == 201
    # a plain read may lag on another member: wait until d has seen the role before granting it
    assert until(lambda: requests.get(d.url + "/v2/auth/roles/rw", timeout=5).status_code == 200)
    assert put(d, "/v2/auth/users/bob", {"user": "bob", "password": BOB[1], "roles": ["rw"]}).status_code == 200
    assert until(lambda: requests.get(a.url + "/v2/auth/users/bob", timeout=5).status_code == 200)
    assert requests.put(a.url + "/v2/auth/enable", timeout=10).status_code == 200
    assert put(b, "/v2/auth/roles/guest", {"role": "guest", "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}},
               auth=ROOT).status_code == 200

    for m in c.members:
        assert until(lambda: requests.get(m.url + "/v2/keys/a/x", timeout=5).status_code == 401), m.name
        assert requests.get(m.url + "/v2/auth/enable", timeout=5).json() == {"enabled": True}
        r = requests.put(m.url + "/v2/keys/a/" + m.name, data={"value": "1"}, auth=BOB, timeout=10)
        assert r.status_code == 201, (m.name, r.text)
        assert requests.put(m.url + "/v2/keys/b", data={"value": "1"}, auth=BOB, timeout=10).status_code == 401
        users = requests.get(m.url + "/v2/auth/users", auth=ROOT, timeout=5).json()["users"]
        assert [u["user"] for u in users] == ["bob", "root"], (m.name, users)

    # kill -9 a member; it comes back with users, roles and the flag
    d.restart(kill=True)
    assert until(lambda: requests.get(d.url + "/v2/keys/a/x", auth=BOB, timeout=5).status_code in (200, 404), 20)
    assert requests.get(d.url + "/v2/keys/a/x", timeout=5).status_code == 401
    # a password changed through one member: the old one stops working everywhere
    # (a proposal may time out while the members elect a leader again: d may have been the leader)
    assert until(lambda: put(a, "/v2/auth/users/bob", {"user": "bob", "password": "new"}, auth=ROOT).status_code
                 == 200, 20)
    for m in c.members:
        assert until(lambda: requests.get(m.url + "/v2/keys/a/" + a.name, auth=("bob", "new"), timeout=5).status_code == 200), m.name
        assert requests.get(m.url + "/v2/keys/a/" + a.name, auth=BOB, timeout=5).status_code == 401, m.name


def concurrently(*calls):
    """Runs the calls at the same moment (a barrier), each in its own thread; returns their results."""
    barrier = threading.Barrier(len(calls))
    out = [None] * len(calls)

    def run(i, f):
        barrier.wait()
        out[i] = f()

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(calls)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


@pytest.mark.skipif(REFERENCE, reason="etcd 3.4 (and 2.3.8) let the last writer win: one grant may be lost")
def test_concurrent_grants_through_two_members(make_cluster):
    """Updates of a user or role compare-and-swap on the node's modifiedIndex: of two grants made at the
    same time through different members, the one that loses the swap is made again from the winner's
    result, so both stick (etcd2 merges and overwrites: one of them may be lost)."""
    c = make_cluster(3)
    a, b, d = c.members
    assert put(a, "/v2/auth/users/bob", {"user": "bob", "password": BOB[1]}).status_code == 201
    assert put(a, "/v2/auth/roles/rw", {"role": "rw", "permissions": {"kv": {"read": ["/r"]}}}).status_code == 201
    for m in (b, d):
        assert until(lambda: requests.get(m.url + "/v2/auth/roles/rw", timeout=5).status_code == 200)
        assert until(lambda: requests.get(m.url + "/v2/auth/users/bob", timeout=5).status_code == 200)

    rounds = 15
    for i in range(rounds):
        ra, rb = concurrently(
            lambda: put(b, "/v2/auth/users/bob", {"user": "bob", "grant": [f"x{i}"]}),
            lambda: put(d, "/v2/auth/users/bob", {"user": "bob", "grant": [f"y{i}"]}))
        assert (ra.status_code, rb.status_code) == (200, 200), (i, ra.text, rb.text)
        ra, rb = concurrently(
            lambda: put(b, "/v2/auth/roles/rw", {"role": "rw", "grant": {"kv": {"read": [f"/x{i}"]}}}),
            lambda: put(d, "/v2/auth/roles/rw", {"role": "rw", "grant": {"kv": {"write": [f"/y{i}"]}}}))
        assert (ra.status_code, rb.status_code) == (200, 200), (i, ra.text, rb.text)

    want_roles = sorted([f"x{i}" for i in range(rounds)] + [f"y{i}" for i in range(rounds)])
    want_read = sorted(["/r"] + [f"/x{i}" for i in range(rounds)])
    want_write = sorted(f"/y{i}" for i in range(rounds))
    for m in c.members:
        assert until(lambda: sorted(requests.get(m.url + "/v2/auth/users/bob", timeout=5).json()["roles"])
                     == want_roles), (m.name, requests.get(m.url + "/v2/auth/users/bob", timeout=5).text)
        kv = requests.get(m.url + "/v2/auth/roles/rw", timeout=5).json()["permissions"]["kv"]
        assert (sorted(kv["read"]), sorted(kv["write"])) == (want_read, want_write), (m.name, kv)
    # a duplicate grant through both members: one wins, the other is made again and finds it granted
    ra, rb = concurrently(
        lambda: put(b, "/v2/auth/users/bob", {"user": "bob", "grant": ["z"]}),
        lambda: put(d, "/v2/auth/users/bob", {"user": "bob", "grant": ["z"]}))
    assert sorted((ra.status_code, rb.status_code)) == [200, 409], (ra.text, rb.text)


@pytest.mark.skipif(REFERENCE, reason="etcd 3.4 serves no client request before the member published itself "
                    "(quorum); 2.3.8 served them and answered as tested here")
def test_auth_not_capable_until_cluster_version_decided():
    """etcd 2.3.8's capabilityHandler: until the cluster version is decided (a member of a new cluster
    alone, without quorum, has none), every /v2/auth endpoint answers 500 "Not capable of accessing auth
    feature during rolling upgrades." and /version's etcdcluster is "not_decided"; once a leader
    recorded the version, auth answers."""
    c = Cluster(3, start=False)
    try:
        a, b, _ = c.members
        a.start(c.initial_cluster(), "new")
        assert until(lambda: requests.get(a.url + "/version", timeout=2).status_code == 200)
        assert requests.get(a.url + "/version", timeout=5).json() == {"etcdserver": "2.3.8",
                                                                     "etcdcluster": "not_decided"}
        for method, path in (("GET", "/v2/auth/enable"), ("PUT", "/v2/auth/enable"), ("GET", "/v2/auth/users"),
                             ("PUT", "/v2/auth/users/root"), ("GET", "/v2/auth/roles/guest"),
                             ("POST", "/v2/auth/roles")):
            r = requests.request(method, a.url + path, timeout=5)
            assert r.status_code == 500, (method, path, r.status_code, r.text)
            assert r.json() == {"message": "Not capable of accessing auth feature during rolling upgrades."}
            assert r.headers["Content-Type"] == "application/json" and "X-Etcd-Cluster-Id" not in r.headers
        # keys are not guarded by the capability (their access check reads the enabled flag only)
        assert requests.get(a.url + "/v2/keys/", timeout=5).status_code == 200
        b.start(c.initial_cluster(), "new")
        assert until(lambda: requests.get(a.url + "/v2/auth/enable", timeout=5).status_code == 200, 20)
        assert requests.get(a.url + "/v2/auth/enable", timeout=5).json() == {"enabled": False}
        assert requests.get(a.url + "/version", timeout=5).json()["etcdcluster"] == "2.3.0"
    finally:
        procs.finish(c.members)
