# SPDX-License-Identifier: Apache-2.0
"""Partition of the leader from its peers. The test makes a private network namespace (ip netns, lo up),
enters it, and runs the 3 members there, each under a uid of its own; nftables rules inside that namespace
only (keyed on the socket owner's uid and the peer ports) cut the leader off from its peers while clients
still reach every member. Expected: the majority elects a new leader and goes on, the old leader steps down
and refuses writes and quorum reads, and after the rules go away it rejoins and converges, with nothing of
what it was asked during the partition surviving."""

import subprocess
import time

import pytest
import requests

from cluster import ELECTION_MS, Cluster, NetNS, read_tree, wait_converged
from conftest import REFERENCE, unique

UIDS = [64201, 64202, 64203]


@pytest.fixture
def netns():
    why = NetNS.available()
    if why:
        pytest.skip(f"partition test needs a private network namespace: {why}")
    ns = NetNS()
    try:
        ns.enter()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot create/enter a network namespace: {e}")
    yield ns
    ns.exit()


def _cut(ns, leader, members):
    ports = ", ".join(str(m.peer_port) for m in members)
    ns.nft(f"""
table inet etcd2cl {{
    chain out {{
        type filter hook output priority 0; policy accept;
        meta skuid {leader.uid} tcp dport {{ {ports} }} drop
        meta skuid {leader.uid} tcp sport {leader.peer_port} drop
        tcp dport {leader.peer_port} drop
    }}
}}
""")


def _heal(ns):
    ns.nft("delete table inet etcd2cl\n")


def test_leader_partitioned_from_peers(netns):
    c = Cluster(3, uids=UIDS, start=False)
    try:
        c.start_all()
        _run(netns, c)
        deaths = c.deaths()
        assert not deaths, "\n".join(deaths)
    finally:
        c.cleanup()


def _run(ns, c):
    prefix = "/" + unique("part")
    old = c.leader()
    majority = [m for m in c.members if m is not old]
    r = old.put(f"/v2/keys{prefix}/before", data={"value": "b"})
    assert r.status_code == 201, r.text
    want = {f"{prefix}/before": ("b", r.json()["node"]["modifiedIndex"])}
    wait_converged(c.members, prefix, want=want)

    t0 = time.monotonic()
    _cut(ns, old, c.members)
    new = c.wait_leader(timeout=30, members=majority)
    dt = time.monotonic() - t0
    print(f"partitioned leader {old.name}; majority elected {new.name} after {dt:.3f}s")
    assert dt <= 2 * ELECTION_MS / 1000 + 1.0, f"new leader after {dt:.3f}s"

    # the majority goes on
    for i, m in enumerate(majority):
        r = m.put(f"/v2/keys{prefix}/maj{i}", data={"value": f"m{i}"})
        assert r.status_code == 201, (m.name, r.text)
        want[f"{prefix}/maj{i}"] = (f"m{i}", r.json()["node"]["modifiedIndex"])
    for m in majority:
        assert read_tree(m, prefix) == want, m.name

    # the old leader steps down within a few election timeouts (it cannot hear from a quorum) ...
    deadline = time.monotonic() + 3 * ELECTION_MS / 1000 + 2
    state = None
    while time.monotonic() < deadline:
        r = old.get("/v2/stats/self", timeout=2)
        try:
            state = r.json()["state"]
        except ValueError:
            state = f"{r.status_code} {r.text!r}"
        if state != "StateLeader":
            break
        time.sleep(0.05)
    print(f"old leader's state: {state}")
    # etcd 3.4's v2 /stats/self sometimes keeps saying StateLeader for a while after the step-down (its
    # v2 stats are not updated on that transition), so this is checked on ours only.
    if not REFERENCE:
        assert state != "StateLeader", "the partitioned leader still claims to lead"
    # ... and refuses writes and quorum reads (error 300/timeout or a client timeout), never acknowledging
    try:
        r = old.put(f"/v2/keys{prefix}/minority", data={"value": "lost"}, timeout=15)
        print(f"write on the minority side: {r.status_code} {r.text.strip()}")
        assert r.status_code >= 500, f"minority acknowledged a write: {r.status_code} {r.text}"
        j = r.json()
        assert j.get("errorCode") == 300 or "timeout" in r.text or "timed out" in r.text, r.text
    except requests.RequestException as e:
        print(f"write on the minority side: client timeout ({type(e).__name__})")
    try:
        r = old.get(f"/v2/keys{prefix}/before", params={"quorum": "true"}, timeout=15)
        assert r.status_code >= 500, f"minority answered a quorum read: {r.status_code} {r.text}"
    except requests.RequestException:
        pass

    # heal: the old leader rejoins and converges; its unacknowledged write is gone
    _heal(ns)
    c.wait_leader(timeout=30)
    r = new.put(f"/v2/keys{prefix}/after", data={"value": "a"}, timeout=15)
    if r.status_code != 201:  # leadership may have moved once more while rejoining
        r = c.leader().put(f"/v2/keys{prefix}/after", data={"value": "a"}, timeout=15)
    assert r.status_code == 201, r.text
    want[f"{prefix}/after"] = ("a", r.json()["node"]["modifiedIndex"])
    wait_converged(c.members, prefix, want=want, timeout=30)
    for m in c.members:
        assert read_tree(m, prefix) == want, m.name
