# SPDX-License-Identifier: Apache-2.0
"""/v2/members, /v2/stats/*, /version, /health, /v2/machines; member and cluster IDs."""

import hashlib
import re
import struct
import time

import pytest
import requests

from conftest import REFERENCE, only_23, unique


def member_id(peer_urls, token="etcd-cluster", unix_time=None):
    b = "".join(sorted(peer_urls)) + token
    if unix_time is not None:
        b += str(unix_time)
    return struct.unpack(">Q", hashlib.sha1(b.encode()).digest()[:8])[0]


def cluster_id(ids):
    b = b"".join(struct.pack(">Q", i) for i in sorted(ids))
    return struct.unpack(">Q", hashlib.sha1(b).digest()[:8])[0]


def test_id_formula_vectors():
    assert "%x" % member_id(["http://localhost:2380", "http://localhost:7001"]) == "ce2a822cea30bfca"
    assert "%x" % cluster_id([0xce2a822cea30bfca]) == "7e27652122e8b2ae"
    ids = [member_id([f"http://10.0.1.{n}:2380"], "etcd-cluster-1") for n in (10, 11, 12)]
    assert ["%x" % i for i in ids] == ["140fedbeeb74765d", "d5dc5f8d75d04e29", "8a0a11c6194fc77"]
    assert "%x" % cluster_id(ids) == "acccc8912db0cd57"


def test_members_list(daemon):
    r = daemon.get("/v2/members")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    j = r.json()
    assert list(j) == ["members"]
    assert len(j["members"]) == 1
    m = j["members"][0]
    assert list(m) == ["id", "name", "peerURLs", "clientURLs"]
    assert m["name"] == daemon.name
    assert m["peerURLs"] == [daemon.peer_url]
    assert m["clientURLs"] == sorted(daemon.urls)
    assert m["id"] == "%x" % member_id([daemon.peer_url])
    assert r.headers["X-Etcd-Cluster-Id"] == "%x" % cluster_id([member_id([daemon.peer_url])])


def test_member_id_in_headers_everywhere(daemon):
    cid = "%x" % cluster_id([member_id([daemon.peer_url])])
    assert daemon.get("/v2/keys/").headers["X-Etcd-Cluster-Id"] == cid
    assert daemon.get("/v2/keys/" + unique()).headers["X-Etcd-Cluster-Id"] == cid


def test_members_trailing_slash(daemon):
    a = daemon.get("/v2/members").json()
    b = daemon.get("/v2/members/").json()
    assert a == b


def test_members_leader(daemon):
    r = daemon.get("/v2/members/leader")
    assert r.status_code == 200
    m = r.json()
    assert m == daemon.get("/v2/members").json()["members"][0]


def test_members_get_unknown(daemon):
    r = daemon.get("/v2/members/1234")
    assert r.status_code == 404
    assert r.json() == {"message": "Not found"}


def test_members_405(daemon):
    r = daemon.req("PATCH", "/v2/members")
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET,POST,DELETE,PUT"


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "APPLICATION/JSON",
                                   # 2.3.8 compares the header exactly; 3.x strips parameters (accepts this)
                                   pytest.param("application/json; charset=utf-8", marks=only_23)])
def test_members_add_415(daemon, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    r = daemon.post("/v2/members", data='{"peerURLs":["http://127.0.0.1:1"]}', headers=headers)
    assert r.status_code == 415
    assert r.json() == {"message": f"Bad Content-Type {ctype or ''}, accept application/json"}


def test_members_update_415(daemon):
    mid = daemon.get("/v2/members").json()["members"][0]["id"]
    r = daemon.put("/v2/members/" + mid, data="x")
    assert r.status_code == 415


@pytest.mark.parametrize("body,msg", [
    ("{bad", None),
    ("{}", "no valid URLs given"),
    ('{"peerURLs":[]}', "no valid URLs given"),
    ('{"peerURLs":["notaurl"]}', None),
    ('{"peerURLs":["http://127.0.0.1:1/path"]}', "URL must not contain a path: http://127.0.0.1:1/path"),
    ('{"peerURLs":["ftp://127.0.0.1:1"]}', None),
    ('{"peerURLs":"http://127.0.0.1:1"}', None),
    ("[]", None),
    ("", None),
])
def test_members_add_400(daemon, body, msg):
    r = daemon.post("/v2/members", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    j = r.json()
    assert list(j) == ["message"] and j["message"]
    if msg:
        assert j["message"] == msg
    # nothing was added
    assert len(daemon.get("/v2/members").json()["members"]) == 1


def test_members_add_existing_peer_409(daemon):
    r = daemon.post("/v2/members", json={"peerURLs": [daemon.peer_url]})
    assert r.status_code == 409
    # etcd 2.3.8's error lived in package etcdserver ("etcdserver: peerURL exists"); we word it as 3.x does
    assert r.json() == {"message": "membership: peerURL exists"}


@pytest.mark.parametrize("mid", ["1234", "zzz", "ffffffffffffffff"])
def test_members_delete_unknown_404(daemon, mid):
    r = daemon.delete("/v2/members/" + mid)
    assert r.status_code == 404
    assert r.json() == {"message": f"No such member: {mid}"}


def test_members_update_unknown_404(daemon):
    r = daemon.put("/v2/members/1234", json={"peerURLs": ["http://127.0.0.1:1"]})
    assert r.status_code == 404
    assert r.json() == {"message": "No such member: 1234"}


def test_members_update_self(daemon):
    mid = daemon.get("/v2/members").json()["members"][0]["id"]
    r = daemon.put("/v2/members/" + mid, json={"peerURLs": [daemon.peer_url]})
    assert r.status_code == 204
    assert r.content == b""
    assert daemon.get("/v2/members").json()["members"][0]["peerURLs"] == [daemon.peer_url]


def test_members_update_bad_json(daemon):
    mid = daemon.get("/v2/members").json()["members"][0]["id"]
    r = daemon.put("/v2/members/" + mid, data="{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_members_add_one_member_cluster(fresh):
    urls = ["http://127.0.0.2:1", "http://127.0.0.1:1"]
    t0 = int(time.time())
    r = fresh.post("/v2/members", json={"peerURLs": urls})
    t1 = int(time.time())
    assert r.status_code == 201, r.text
    j = r.json()
    assert list(j) == ["id", "name", "peerURLs", "clientURLs"]
    assert j["name"] == "" and j["clientURLs"] == []
    assert j["peerURLs"] == sorted(urls)
    candidates = {"%x" % member_id(urls, "", t) for t in range(t0 - 1, t1 + 2)}
    assert j["id"] in candidates
    ms = fresh.get("/v2/members").json()["members"]
    assert len(ms) == 2
    assert j in ms
    assert sorted(int(m["id"], 16) for m in ms) == [int(m["id"], 16) for m in ms]
    # a second add of the same URL is refused (etcd 3.4's default --strict-reconfig-check answers 500 first)
    r = fresh.post("/v2/members", json={"peerURLs": ["http://127.0.0.1:1"]})
    assert r.status_code == (500 if REFERENCE else 409)


@only_23
def test_members_remove_self_exits(fresh):
    mid = fresh.get("/v2/members").json()["members"][0]["id"]
    fresh.exit_expected = True
    r = fresh.delete("/v2/members/" + mid, timeout=15)
    assert r.status_code == 204
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and fresh.alive():
        time.sleep(0.1)
    assert not fresh.alive(), "member removed from the cluster keeps running"
    assert fresh.proc.returncode == 0


# ------------------------------------------------------------------------------------------------
# stats


def test_stats_self(daemon):
    r = daemon.get("/v2/stats/self")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    j = r.json()
    for k in ("name", "id", "state", "startTime", "leaderInfo", "recvAppendRequestCnt", "sendAppendRequestCnt"):
        assert k in j, j
    assert j["name"] == daemon.name
    assert j["id"] == "%x" % member_id([daemon.peer_url])
    assert j["state"] == "StateLeader"
    assert j["leaderInfo"]["leader"] == j["id"]
    assert re.match(r"\d{4}-\d\d-\d\dT", j["startTime"])
    assert re.match(r"\d{4}-\d\d-\d\dT", j["leaderInfo"]["startTime"])
    assert isinstance(j["leaderInfo"]["uptime"], str)


@only_23
def test_stats_self_field_order(daemon):
    keys = list(daemon.get("/v2/stats/self").json())
    assert keys[:5] == ["name", "id", "state", "startTime", "leaderInfo"]


STORE_FIELDS = ["getsSuccess", "getsFail", "setsSuccess", "setsFail", "deleteSuccess", "deleteFail",
                "updateSuccess", "updateFail", "createSuccess", "createFail", "compareAndSwapSuccess",
                "compareAndSwapFail", "compareAndDeleteSuccess", "compareAndDeleteFail", "expireCount",
                "watchers"]


def test_stats_store_fields(daemon):
    r = daemon.get("/v2/stats/store")
    assert r.status_code == 200
    assert list(r.json()) == STORE_FIELDS


@pytest.mark.parametrize("op,field,delta", [
    ("set", "setsSuccess", 1),
    ("get", "getsSuccess", 1),
    ("get", "getsFail", 1),  # the access check's read of /2/enabled (auth never enabled)
    ("getmiss", "getsFail", 2),  # the key, and the access check's read of /2/enabled
    ("create", "createSuccess", 1),
    ("createfail", "createFail", 1),
    ("update", "updateSuccess", 1),
    ("updatefail", "updateFail", 1),
    ("cas", "compareAndSwapSuccess", 1),
    ("casfail", "compareAndSwapFail", 1),
    ("cad", "compareAndDeleteSuccess", 1),
    ("cadfail", "compareAndDeleteSuccess", 1),  # etcd2's CompareAndDelete(): TestFailed counts as a success
    ("cadmiss", "compareAndDeleteFail", 1),
    ("delete", "deleteSuccess", 1),
    ("deletefail", "deleteFail", 1),
])
def test_stats_store_counts(fresh, op, field, delta):
    d = fresh
    key = unique()
    d.set(key, "v")
    before = d.get("/v2/stats/store").json()
    k = "/v2/keys/" + key
    r = {
        "set": lambda: d.put(k, data={"value": "w"}),
        "get": lambda: d.get(k),
        "getmiss": lambda: d.get(k + "nope"),
        "create": lambda: d.put(k + "new", data={"value": "w", "prevExist": "false"}),
        "createfail": lambda: d.put(k, data={"value": "w", "prevExist": "false"}),
        "update": lambda: d.put(k, data={"value": "w", "prevExist": "true"}),
        "updatefail": lambda: d.put(k + "nope", data={"value": "w", "prevExist": "true"}),
        "cas": lambda: d.put(k, data={"value": "w", "prevValue": "v"}),
        "casfail": lambda: d.put(k, data={"value": "w", "prevValue": "x"}),
        "cad": lambda: d.delete(k, params={"prevValue": "v"}),
        "cadfail": lambda: d.delete(k, params={"prevValue": "x"}),
        "cadmiss": lambda: d.delete(k + "nope", params={"prevValue": "x"}),
        "delete": lambda: d.delete(k),
        "deletefail": lambda: d.delete(k + "nope"),
    }[op]()
    assert r.status_code < 500
    after = d.get("/v2/stats/store").json()
    assert after[field] - before[field] == delta, (before, after)


def test_stats_store_expire_and_watchers(fresh):
    d = fresh
    before = d.get("/v2/stats/store").json()
    assert before["watchers"] == 0
    import threading
    key = unique()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", requests.get(
        d.k(key), params={"wait": "true"}, timeout=15)), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and d.get("/v2/stats/store").json()["watchers"] != 1:
        time.sleep(0.05)
    assert d.get("/v2/stats/store").json()["watchers"] == 1
    d.put("/v2/keys/" + key, data={"value": "x", "ttl": "1"})
    t.join(10)
    assert box["r"].status_code == 200
    assert d.get("/v2/stats/store").json()["watchers"] == 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and d.get("/v2/stats/store").json()["expireCount"] == before["expireCount"]:
        time.sleep(0.1)
    assert d.get("/v2/stats/store").json()["expireCount"] == before["expireCount"] + 1


def test_stats_leader(daemon):
    r = daemon.get("/v2/stats/leader")
    assert r.status_code == 200
    j = r.json()
    assert j == {"leader": "%x" % member_id([daemon.peer_url]), "followers": {}}


# ------------------------------------------------------------------------------------------------
# /version, /health, /v2/machines


def test_version(daemon):
    r = daemon.get("/version")
    assert r.status_code == 200
    j = r.json()
    assert list(j) == ["etcdserver", "etcdcluster"]
    if REFERENCE:
        assert j["etcdserver"].startswith("3.4.")
    else:
        assert j == {"etcdserver": "2.3.8", "etcdcluster": "2.3.0"}


def test_health(daemon):
    r = daemon.get("/health")
    assert r.status_code == 200
    assert r.json() == {"health": "true"}


@only_23
def test_health_exact_body(daemon):
    assert daemon.get("/health").text == '{"health": "true"}'


def test_machines(daemon):
    r = daemon.get("/v2/machines")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text == ", ".join(sorted(daemon.urls))
    h = daemon.req("HEAD", "/v2/machines")
    assert h.status_code == 200 and h.content == b""


def test_stats_member_id_matches_members(daemon):
    s = daemon.get("/v2/stats/self").json()
    m = daemon.get("/v2/members").json()["members"][0]
    assert s["id"] == m["id"]
    assert daemon.get("/v2/members/leader").json()["id"] == s["leaderInfo"]["leader"]
