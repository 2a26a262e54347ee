# SPDX-License-Identifier: Apache-2.0
"""Differential keys checks through a follower: a few scenarios and one random sequence of
test_differential.py, run against a follower of our 3-member cluster and a follower of an etcd 3.4
3-member cluster (answers normalized the same way). With ETCD2_REFERENCE=1 both sides are etcd 3.4, which
validates the harness."""

import os

import pytest

import test_differential as td
from cluster import Cluster
from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY

pytestmark = pytest.mark.skipif(
    not os.access(REFERENCE_BINARY, os.X_OK) or not (REFERENCE or (OUR_BINARY and os.access(OUR_BINARY, os.X_OK))),
    reason="needs both ETCD2_BINARY and /usr/bin/etcd")

SCENARIOS = ["set_get_delete", "create_update", "cas", "cad", "dirs", "inorder", "hidden", "ttl",
             "watch_history", "quorum", "bad_params", "escapes"]
SEEDS = [int(x) for x in os.environ.get("ETCD2_CLUSTER_DIFF_SEEDS", "7").split(",")]


@pytest.fixture(scope="module")
def followers():
    made = []
    try:
        ours = Cluster(3, reference=REFERENCE)  # REFERENCE: self-test, etcd on both sides
        made.append(ours)
        ref = Cluster(3, reference=True)
        made.append(ref)
        fa = ours.followers()[0]
        fb = ref.followers()[0]
        yield fa, fb, made
    finally:
        for c in made:
            c.cleanup()


@pytest.fixture(autouse=True)
def _no_deaths(followers):
    yield
    deaths = [d for c in followers[2] for d in c.deaths()]
    if deaths:
        pytest.fail("\n".join(deaths), pytrace=False)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_follower_differential(followers, scenario):
    fa, fb, _ = followers
    steps = td.SCENARIOS[scenario](scenario)
    a, b = td.Side(fa), td.Side(fb)
    diffs = []
    for i, step in enumerate(steps):
        ra, rb = td.safe_do(a, step), td.safe_do(b, step)
        if ra != rb:
            diffs.append(f"step {i} {step['m']} {step['p']} {step.get('params') or ''} {step.get('data') or ''}\n"
                         f"   etcd 3.4 follower: {rb}\n   our follower:      {ra}")
    assert not diffs, "\n".join(diffs)


@pytest.mark.parametrize("seed", SEEDS)
def test_follower_random_sequence(followers, seed):
    fa, fb, _ = followers
    a, b = td.Side(fa), td.Side(fb)
    a.tracker, b.tracker = td.Tracker(), td.Tracker()
    diffs = []
    for i, step in enumerate(td.random_steps(seed, td.RANDOM_STEPS)):
        ra, rb = td.tracked_do(a, step), td.tracked_do(b, step)
        if ra != rb:
            shown = {k: v for k, v in step.items() if k not in ("key", "track")}
            diffs.append(f"seed {seed} step {i} {shown}\n   etcd 3.4 follower: {rb}\n   our follower:      {ra}")
            if len(diffs) >= 5:
                break
    assert not diffs, "\n".join(diffs)


def test_removed_member_answers(followers):
    """Last (it shrinks both clusters): the members API on a removed member's id, as etcd 3.4 answers
    it: DELETE 410 "Member permanently removed: <id>"; PUT 500 (UpdateMember()'s ErrIDRemoved has no
    case in the handler, in 2.3.8 and 3.4 alike)."""
    fa, fb, clusters = followers
    answers = []
    for c, keep in zip(clusters, (fa, fb)):
        victim = next(m for m in c.followers() if m is not keep)
        listed = keep.get("/v2/members", timeout=15).json()["members"]
        victim.id = next(m["id"] for m in listed if victim.peer_url in m["peerURLs"])
        r = c.remove_member(victim, via=keep)
        assert r.status_code == 204, r.text
        got = []
        for method, body in (("DELETE", None), ("PUT", '{"peerURLs":["http://127.0.0.1:1"]}'),
                             ("PUT", '{"PeerURLs":[]}'), ("GET", None)):
            r = keep.req(method, f"/v2/members/{victim.id}", data=body, timeout=15,
                         headers={"Content-Type": "application/json"})
            got.append((method, r.status_code, r.text.replace(victim.id, "<id>")))
        answers.append(got)
    assert answers[0] == answers[1]
