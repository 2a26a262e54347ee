# SPDX-License-Identifier: Apache-2.0
"""The v2 keys API, exhaustively: verbs, parameters, errors, headers, JSON layout, watches, TTLs."""

import json
import re
import socket
import threading
import time
import urllib.parse

import pytest
import requests

from conftest import REFERENCE, only_23, unique

NODE_ORDER = ["key", "value", "dir", "expiration", "ttl", "nodes", "modifiedIndex", "createdIndex"]
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def pairs(text):
    """JSON with the key order kept: dicts become lists of (key, value)."""
    return json.loads(text, object_pairs_hook=lambda p: p)


def check_node_order(node_pairs):
    keys = [k for k, _ in node_pairs]
    known = [k for k in keys if k in NODE_ORDER]
    assert known == keys, f"unexpected node field in {keys}"
    assert known == sorted(known, key=NODE_ORDER.index), f"node field order {keys}"
    for k, v in node_pairs:
        if k == "nodes":
            for child in v:
                check_node_order(child)


def check_layout(r):
    """Field order of a success body: action, node, prevNode; node fields in etcd's order."""
    assert r.text.endswith("\n")
    p = pairs(r.text)
    keys = [k for k, _ in p]
    assert keys[0] == "action"
    assert keys == [k for k in ["action", "node", "prevNode"] if k in keys], keys
    for k, v in p:
        if k in ("node", "prevNode"):
            check_node_order(v)


def check_error(r, status, code, message=None, cause=None, index=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json"
    assert r.text.endswith("\n")
    keys = [k for k, _ in pairs(r.text)]
    assert keys == ["errorCode", "message", "cause", "index"][:len(keys)] and len(keys) >= 3, keys
    j = r.json()
    assert j["errorCode"] == code, j
    if message is not None:
        assert j["message"] == message, j
    if cause is not None:
        assert j.get("cause", "") == cause, j
    if index is not None:
        assert j["index"] == index, j
    assert int(r.headers["X-Etcd-Index"]) == j["index"]
    return j


def check_key_headers(r, raft=True):
    assert r.headers["Content-Type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{1,16}", r.headers["X-Etcd-Cluster-Id"]), r.headers
    assert int(r.headers["X-Etcd-Index"]) >= 0
    if raft:
        assert int(r.headers["X-Raft-Index"]) > 0
        assert int(r.headers["X-Raft-Term"]) >= 1


def P(d, key):
    return "/v2/keys/" + key


# ------------------------------------------------------------------------------------------------
# set / get basics


def test_set_new_key_201(daemon):
    key = unique()
    before = daemon.index()
    r = daemon.put(P(daemon, key), data={"value": "v1"})
    assert r.status_code == 201, r.text
    check_key_headers(r)
    check_layout(r)
    j = r.json()
    assert j["action"] == "set"
    assert j["node"]["key"] == "/" + key
    assert j["node"]["value"] == "v1"
    assert j["node"]["modifiedIndex"] == j["node"]["createdIndex"] == before + 1
    assert int(r.headers["X-Etcd-Index"]) == j["node"]["modifiedIndex"]
    assert "prevNode" not in j
    assert "dir" not in j["node"] and "ttl" not in j["node"] and "expiration" not in j["node"]


def test_set_existing_200_with_prevnode(daemon):
    key = unique()
    first = daemon.set(key, "a")
    r = daemon.put(P(daemon, key), data={"value": "b"})
    assert r.status_code == 200
    check_layout(r)
    j = r.json()
    assert j["action"] == "set"
    assert j["prevNode"] == first["node"]
    assert j["node"]["value"] == "b"
    assert j["node"]["createdIndex"] == j["node"]["modifiedIndex"] > first["node"]["modifiedIndex"]


def test_get_key(daemon):
    key = unique()
    s = daemon.set(key, "hello")
    r = daemon.get(P(daemon, key))
    assert r.status_code == 200
    check_key_headers(r)
    check_layout(r)
    assert r.json() == {"action": "get", "node": s["node"]}
    assert int(r.headers["X-Etcd-Index"]) >= s["node"]["modifiedIndex"]


def test_get_missing_404(daemon):
    key = unique()
    idx = daemon.index()
    r = daemon.get(P(daemon, key))
    check_error(r, 404, 100, "Key not found", "/" + key, idx)
    assert r.headers.get("X-Etcd-Cluster-Id")


def test_get_missing_nested_cause(daemon):
    key = unique()
    r = daemon.get(P(daemon, key + "/x/y"))
    check_error(r, 404, 100, "Key not found", "/" + key)  # the first missing component


def test_root_get(daemon):
    r = daemon.get("/v2/keys/")
    assert r.status_code == 200
    j = r.json()
    assert j["action"] == "get"
    assert j["node"]["dir"] is True
    assert "key" not in j["node"]
    r2 = daemon.get("/v2/keys")
    assert r2.status_code == 200 and r2.json()["node"]["dir"] is True


VALUES = [
    "", "plain", "with space", "a=b&c=d", "line1\nline2", "üñíçødé ключ 値", "%41%zz", "+plus+", "x" * 10000,
    '{"json": [1, 2]}', "\t tab",
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
@pytest.mark.parametrize("where", ["form", "query"])
def test_value_roundtrip(daemon, value, where):
    key = unique()
    if where == "form":
        r = daemon.put(P(daemon, key), data={"value": value})
    else:
        r = daemon.put(P(daemon, key) + "?" + urllib.parse.urlencode({"value": value}))
    assert r.status_code == 201, r.text
    assert r.json()["node"]["value"] == value
    g = daemon.get(P(daemon, key)).json()
    assert g["node"]["value"] == value
    assert "value" in g["node"]


def test_missing_value_is_empty(daemon):
    key = unique()
    r = daemon.put(P(daemon, key))
    assert r.status_code == 201
    assert r.json()["node"]["value"] == ""


def test_form_body_beats_query(daemon):
    key = unique()
    r = daemon.put(P(daemon, key) + "?value=fromquery", data={"value": "frombody"})
    assert r.status_code == 201
    assert r.json()["node"]["value"] == "frombody"


def test_json_body_ignored(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), json={"value": "j"})
    assert r.status_code == 201
    assert r.json()["node"]["value"] == ""


def test_repeated_param_first_wins(daemon):
    key = unique()
    r = daemon.put(P(daemon, key) + "?value=one&value=two")
    assert r.status_code == 201
    assert r.json()["node"]["value"] == "one"


KEY_ESCAPES = [
    ("a%20b", "/{p}/a b"),
    ("a+b", "/{p}/a+b"),
    ("%D0%BA%D0%BB%D1%8E%D1%87", "/{p}/ключ"),
    ("pct%25", "/{p}/pct%"),
    ("a%2Fb", "/{p}/a/b"),
    ("%5Funder", "/{p}/_under"),
    ("dot.name", "/{p}/dot.name"),
    ("a%3Fq", "/{p}/a?q"),
    ("a%23h", "/{p}/a#h"),
]


@pytest.mark.parametrize("raw,expected", KEY_ESCAPES, ids=[k for k, _ in KEY_ESCAPES])
def test_key_escapes(daemon, raw, expected):
    p = unique("esc")
    path = f"/v2/keys/{p}/{raw}"
    r = daemon.put(path, data={"value": "v"})
    assert r.status_code == 201, r.text
    assert r.json()["node"]["key"] == expected.format(p=p)
    g = daemon.get(path)
    assert g.status_code == 200
    assert g.json()["node"]["key"] == expected.format(p=p)


@pytest.mark.parametrize("path,location", [
    ("/v2/keys//{p}", "/v2/keys/{p}"),
    ("/v2/keys/{p}//b", "/v2/keys/{p}/b"),
    ("/v2/keys/{p}/../{p}", "/v2/keys/{p}"),
    ("/v2/keys/{p}/./b", "/v2/keys/{p}/b"),
])
def test_unclean_path_301(daemon, path, location):
    p = unique()
    # requests would normalise dot segments; send the path raw.
    r = raw_request(daemon, "GET", path.format(p=p))
    assert r[0] == 301, r
    assert r[1].get("location") == location.format(p=p)


def raw_request(d, method, path, body=b"", headers=None):
    """Minimal HTTP/1.1 request over a socket; returns (status, headers dict lower-case, body bytes)."""
    import socket
    host, port = "127.0.0.1", d.client_ports[0]
    s = socket.create_connection((host, port), timeout=10)
    try:
        h = {"Host": f"{host}:{port}", "Connection": "close"}
        if body:
            h["Content-Length"] = str(len(body))
        h.update(headers or {})
        req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        s.sendall(req.encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, rest


# ------------------------------------------------------------------------------------------------
# prevExist / create / update


def test_create_prevexist_false(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "c", "prevExist": "false"})
    assert r.status_code == 201
    check_layout(r)
    j = r.json()
    assert j["action"] == "create"
    assert "prevNode" not in j
    r = daemon.put(P(daemon, key), data={"value": "d", "prevExist": "false"})
    idx = daemon.index()
    check_error(r, 412, 105, "Key already exists", "/" + key, idx)


def test_update_prevexist_true(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "u", "prevExist": "true"})
    check_error(r, 404, 100, "Key not found", "/" + key)
    s = daemon.set(key, "a")
    r = daemon.put(P(daemon, key), data={"value": "b", "prevExist": "true"})
    assert r.status_code == 200
    j = r.json()
    assert j["action"] == "update"
    assert j["node"]["value"] == "b"
    assert j["node"]["createdIndex"] == s["node"]["createdIndex"]
    assert j["node"]["modifiedIndex"] > s["node"]["modifiedIndex"]
    assert j["prevNode"] == s["node"]


@pytest.mark.parametrize("spelling", ["true", "1", "t", "T", "TRUE", "True"])
def test_bool_spellings_true(daemon, spelling):
    key = unique()
    daemon.set(key, "a")
    r = daemon.put(P(daemon, key), data={"value": "b", "prevExist": spelling})
    assert r.status_code == 200 and r.json()["action"] == "update"


@pytest.mark.parametrize("spelling", ["false", "0", "f", "F", "FALSE", "False"])
def test_bool_spellings_false(daemon, spelling):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "b", "prevExist": spelling})
    assert r.status_code == 201 and r.json()["action"] == "create"


# ------------------------------------------------------------------------------------------------
# compare-and-swap / compare-and-delete


def test_cas_prevvalue_ok(daemon):
    key = unique()
    s = daemon.set(key, "one")
    r = daemon.put(P(daemon, key), data={"value": "two", "prevValue": "one"})
    assert r.status_code == 200
    check_layout(r)
    j = r.json()
    assert j["action"] == "compareAndSwap"
    assert j["node"]["value"] == "two"
    assert j["node"]["createdIndex"] == s["node"]["createdIndex"]
    assert j["prevNode"] == s["node"]


def test_cas_prevvalue_fail(daemon):
    key = unique()
    daemon.set(key, "one")
    idx = daemon.index()
    r = daemon.put(P(daemon, key), data={"value": "two", "prevValue": "nope"})
    check_error(r, 412, 101, "Compare failed", "[nope != one]", idx)


def test_cas_previndex_ok_and_fail(daemon):
    key = unique()
    s = daemon.set(key, "one")
    mi = s["node"]["modifiedIndex"]
    r = daemon.put(P(daemon, key), data={"value": "two", "prevIndex": str(mi + 1000)})
    check_error(r, 412, 101, "Compare failed", f"[{mi + 1000} != {mi}]")
    r = daemon.put(P(daemon, key), data={"value": "two", "prevIndex": str(mi)})
    assert r.status_code == 200 and r.json()["action"] == "compareAndSwap"


def test_cas_both_conditions(daemon):
    key = unique()
    s = daemon.set(key, "one")
    mi = s["node"]["modifiedIndex"]
    r = daemon.put(P(daemon, key), data={"value": "x", "prevValue": "bad", "prevIndex": str(mi + 5)})
    check_error(r, 412, 101, "Compare failed", f"[bad != one] [{mi + 5} != {mi}]")
    r = daemon.put(P(daemon, key), data={"value": "x", "prevValue": "one", "prevIndex": str(mi + 5)})
    check_error(r, 412, 101, "Compare failed", f"[{mi + 5} != {mi}]")
    r = daemon.put(P(daemon, key), data={"value": "x", "prevValue": "bad", "prevIndex": str(mi)})
    check_error(r, 412, 101, "Compare failed", "[bad != one]")
    r = daemon.put(P(daemon, key), data={"value": "x", "prevValue": "one", "prevIndex": str(mi)})
    assert r.status_code == 200


def test_cas_previndex_zero_means_set(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "z", "prevIndex": "0"})
    assert r.status_code == 201 and r.json()["action"] == "set"


def test_cas_with_prevexist_true(daemon):
    key = unique()
    daemon.set(key, "1")
    r = daemon.put(P(daemon, key), data={"value": "2", "prevExist": "true", "prevValue": "1"})
    assert r.status_code == 200 and r.json()["action"] == "compareAndSwap"


def test_cas_prevexist_false_wins(daemon):
    key = unique()
    daemon.set(key, "1")
    r = daemon.put(P(daemon, key), data={"value": "2", "prevExist": "false", "prevValue": "1"})
    check_error(r, 412, 105, "Key already exists", "/" + key)


@pytest.mark.parametrize("cond", [{"prevValue": "x"}, {"prevIndex": "3"}])
def test_cas_missing_key_404(daemon, cond):
    key = unique()
    r = daemon.put(P(daemon, key), data=dict(value="v", **cond))
    check_error(r, 404, 100, "Key not found", "/" + key)


@pytest.mark.parametrize("cond", [{"prevValue": "x"}, {"prevIndex": "1"}])
def test_cas_on_dir_102(daemon, cond):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    r = daemon.put(P(daemon, key), data=dict(value="v", **cond))
    check_error(r, 403, 102, "Not a file", "/" + key)


def test_cad_prevvalue(daemon):
    key = unique()
    s = daemon.set(key, "v")
    r = daemon.delete(P(daemon, key), params={"prevValue": "w"})
    check_error(r, 412, 101, "Compare failed", "[w != v]")
    r = daemon.delete(P(daemon, key), params={"prevValue": "v"})
    assert r.status_code == 200
    check_layout(r)
    j = r.json()
    assert j["action"] == "compareAndDelete"
    assert j["prevNode"] == s["node"]
    assert j["node"]["key"] == "/" + key
    assert "value" not in j["node"]
    assert j["node"]["createdIndex"] == s["node"]["createdIndex"]
    assert j["node"]["modifiedIndex"] > s["node"]["modifiedIndex"]


def test_cad_previndex(daemon):
    key = unique()
    s = daemon.set(key, "v")
    mi = s["node"]["modifiedIndex"]
    r = daemon.delete(P(daemon, key), params={"prevIndex": str(mi + 7)})
    check_error(r, 412, 101, "Compare failed", f"[{mi + 7} != {mi}]")
    r = daemon.delete(P(daemon, key), params={"prevIndex": str(mi)})
    assert r.status_code == 200 and r.json()["action"] == "compareAndDelete"
    assert daemon.get(P(daemon, key)).status_code == 404


def test_cad_both(daemon):
    key = unique()
    s = daemon.set(key, "v")
    mi = s["node"]["modifiedIndex"]
    r = daemon.delete(P(daemon, key), params={"prevIndex": str(mi + 1), "prevValue": "q"})
    check_error(r, 412, 101, "Compare failed", f"[q != v] [{mi + 1} != {mi}]")


@pytest.mark.parametrize("cond", [{"prevValue": "x"}, {"prevIndex": "1"}])
def test_cad_missing_404(daemon, cond):
    key = unique()
    r = daemon.delete(P(daemon, key), params=cond)
    check_error(r, 404, 100, "Key not found", "/" + key)


@pytest.mark.parametrize("cond", [{"prevValue": "x"}, {"prevIndex": "1"}])
def test_cad_dir_102(daemon, cond):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    r = daemon.delete(P(daemon, key), params=cond)
    check_error(r, 403, 102, "Not a file", "/" + key)


def test_cas_query_params(daemon):
    key = unique()
    daemon.set(key, "one")
    r = daemon.put(P(daemon, key) + "?prevValue=one&value=two")
    assert r.status_code == 200 and r.json()["action"] == "compareAndSwap"


# ------------------------------------------------------------------------------------------------
# delete


def test_delete_file(daemon):
    key = unique()
    s = daemon.set(key, "v")
    r = daemon.delete(P(daemon, key))
    assert r.status_code == 200
    check_key_headers(r)
    check_layout(r)
    j = r.json()
    assert j["action"] == "delete"
    assert j["node"] == {"key": "/" + key, "modifiedIndex": j["node"]["modifiedIndex"],
                         "createdIndex": s["node"]["createdIndex"]}
    assert j["prevNode"] == s["node"]
    assert int(r.headers["X-Etcd-Index"]) == j["node"]["modifiedIndex"]
    check_error(daemon.get(P(daemon, key)), 404, 100)


def test_delete_missing(daemon):
    key = unique()
    check_error(daemon.delete(P(daemon, key)), 404, 100, "Key not found", "/" + key)


def test_delete_dir_needs_dir_flag(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    check_error(daemon.delete(P(daemon, key)), 403, 102, "Not a file", "/" + key)
    r = daemon.delete(P(daemon, key), params={"dir": "true"})
    assert r.status_code == 200
    j = r.json()
    assert j["action"] == "delete" and j["node"]["dir"] is True and j["prevNode"]["dir"] is True


def test_delete_nonempty_dir(daemon):
    key = unique()
    daemon.set(key + "/child", "c")
    check_error(daemon.delete(P(daemon, key), params={"dir": "true"}), 403, 108, "Directory not empty",
                "/" + key)
    r = daemon.delete(P(daemon, key), params={"recursive": "true"})
    assert r.status_code == 200
    assert r.json()["node"]["dir"] is True
    check_error(daemon.get(P(daemon, key + "/child")), 404, 100)


def test_delete_recursive_on_file(daemon):
    key = unique()
    daemon.set(key, "v")
    r = daemon.delete(P(daemon, key), params={"recursive": "true"})
    assert r.status_code == 200 and r.json()["action"] == "delete"


def test_delete_root_107(daemon):
    check_error(daemon.delete("/v2/keys/"), 400, 107, "Root is read only", "/")
    check_error(daemon.delete("/v2/keys/", params={"recursive": "true"}), 400, 107, "Root is read only", "/")


def test_delete_form_body_ignored(daemon):
    # Go's form parser reads bodies of POST/PUT/PATCH only: a DELETE body is ignored.
    key = unique()
    daemon.set(key, "v")
    r = daemon.delete(P(daemon, key), data={"prevValue": "other"})
    assert r.status_code == 200 and r.json()["action"] == "delete"


# ------------------------------------------------------------------------------------------------
# directories


def test_mkdir(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"dir": "true"})
    assert r.status_code == 201
    check_layout(r)
    j = r.json()
    assert j["action"] == "set"
    assert j["node"]["dir"] is True
    assert "value" not in j["node"] and "nodes" not in j["node"]


def test_mkdir_existing_dir_102(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    check_error(daemon.put(P(daemon, key), data={"dir": "true"}), 403, 102, "Not a file", "/" + key)


def test_set_value_on_dir_102(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    check_error(daemon.put(P(daemon, key), data={"value": "x"}), 403, 102, "Not a file", "/" + key)
    check_error(daemon.put(P(daemon, key), data={"value": "x", "prevExist": "true"}), 403, 102,
                "Not a file", "/" + key)


def test_update_dir_ttl(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    r = daemon.put(P(daemon, key), data={"dir": "true", "prevExist": "true", "ttl": "100"})
    assert r.status_code == 200
    j = r.json()
    assert j["action"] == "update" and j["node"]["dir"] is True
    assert 99 <= j["node"]["ttl"] <= 100
    assert RFC3339.match(j["node"]["expiration"])


def test_dir_over_file_replaces(daemon):
    key = unique()
    s = daemon.set(key, "1")
    r = daemon.put(P(daemon, key), data={"dir": "true"})
    assert r.status_code == 200
    j = r.json()
    assert j["node"]["dir"] is True and j["prevNode"] == s["node"]


def test_intermediate_dirs_created(daemon):
    key = unique()
    r = daemon.put(P(daemon, key + "/a/b/c"), data={"value": "deep"})
    assert r.status_code == 201
    g = daemon.get(P(daemon, key + "/a")).json()
    assert g["node"]["dir"] is True
    assert g["node"]["nodes"][0]["key"] == f"/{key}/a/b"
    assert g["node"]["nodes"][0]["dir"] is True
    assert "nodes" not in g["node"]["nodes"][0]


def test_file_in_path_104(daemon):
    key = unique()
    daemon.set(key, "f")
    check_error(daemon.put(P(daemon, key + "/sub"), data={"value": "x"}), 400, 104, "Not a directory",
                "/" + key)
    check_error(daemon.post(P(daemon, key), data={"value": "x"}), 400, 104, "Not a directory", "/" + key)


def test_list_one_level(daemon):
    key = unique()
    daemon.set(key + "/f1", "1")
    daemon.set(key + "/d1/f2", "2")
    r = daemon.get(P(daemon, key))
    assert r.status_code == 200
    check_layout(r)
    nodes = {n["key"]: n for n in r.json()["node"]["nodes"]}
    assert set(nodes) == {f"/{key}/f1", f"/{key}/d1"}
    assert nodes[f"/{key}/d1"]["dir"] is True and "nodes" not in nodes[f"/{key}/d1"]
    assert nodes[f"/{key}/f1"]["value"] == "1"


def test_list_recursive(daemon):
    key = unique()
    daemon.set(key + "/f1", "1")
    daemon.set(key + "/d1/f2", "2")
    daemon.put(P(daemon, key + "/empty"), data={"dir": "true"})
    r = daemon.get(P(daemon, key), params={"recursive": "true", "sorted": "true"})
    check_layout(r)
    n = r.json()["node"]
    assert [c["key"] for c in n["nodes"]] == [f"/{key}/d1", f"/{key}/empty", f"/{key}/f1"]
    assert n["nodes"][0]["nodes"][0] == {"key": f"/{key}/d1/f2", "value": "2",
                                         "modifiedIndex": n["nodes"][0]["nodes"][0]["modifiedIndex"],
                                         "createdIndex": n["nodes"][0]["nodes"][0]["createdIndex"]}
    assert "nodes" not in n["nodes"][1]


def test_list_sorted(daemon):
    key = unique()
    names = ["m", "b", "z", "a", "k", "c"]
    for x in names:
        daemon.set(f"{key}/{x}", x)
    r = daemon.get(P(daemon, key), params={"sorted": "true"})
    assert [c["key"] for c in r.json()["node"]["nodes"]] == [f"/{key}/{x}" for x in sorted(names)]


def test_empty_dir_has_no_nodes(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    j = daemon.get(P(daemon, key)).json()
    assert j["node"]["dir"] is True and "nodes" not in j["node"]


def test_get_file_recursive_is_plain(daemon):
    key = unique()
    s = daemon.set(key, "v")
    assert daemon.get(P(daemon, key), params={"recursive": "true"}).json()["node"] == s["node"]


def test_trailing_slash_same(daemon):
    key = unique()
    daemon.set(key + "/x", "1")
    a = daemon.get(P(daemon, key)).json()
    b = daemon.get(P(daemon, key) + "/").json()
    assert a == b


def test_root_write_107(daemon):
    check_error(daemon.put("/v2/keys/", data={"value": "x"}), 400, 107, "Root is read only", "/")
    check_error(daemon.put("/v2/keys/", data={"dir": "true"}), 400, 107, "Root is read only", "/")


# ------------------------------------------------------------------------------------------------
# POST in-order keys


def test_post_in_order(daemon):
    key = unique()
    made = []
    for i in range(5):
        r = daemon.post(P(daemon, key), data={"value": f"job{i}"})
        assert r.status_code == 201
        check_layout(r)
        j = r.json()
        assert j["action"] == "create"
        name = j["node"]["key"].rsplit("/", 1)[1]
        assert re.fullmatch(r"\d{20}", name)
        assert int(name) == j["node"]["createdIndex"] == j["node"]["modifiedIndex"]
        made.append(j["node"]["key"])
    r = daemon.get(P(daemon, key), params={"sorted": "true"})
    assert [c["key"] for c in r.json()["node"]["nodes"]] == made
    assert [c["value"] for c in r.json()["node"]["nodes"]] == [f"job{i}" for i in range(5)]


def test_post_dir(daemon):
    key = unique()
    r = daemon.post(P(daemon, key), data={"dir": "true"})
    assert r.status_code == 201
    j = r.json()
    assert j["action"] == "create" and j["node"]["dir"] is True


def test_post_ttl(daemon):
    key = unique()
    r = daemon.post(P(daemon, key), data={"value": "t", "ttl": "50"})
    assert r.status_code == 201
    assert 49 <= r.json()["node"]["ttl"] <= 50


def test_post_root(daemon):
    r = daemon.post("/v2/keys/", data={"value": "rootjob"})
    assert r.status_code == 201
    j = r.json()
    assert re.fullmatch(r"/\d{20}", j["node"]["key"])
    assert daemon.delete(j["node"]["key"].replace("/", "/v2/keys/", 1)).status_code == 200


# ------------------------------------------------------------------------------------------------
# hidden keys


def test_hidden_not_listed(daemon):
    key = unique()
    daemon.set(key + "/_hidden", "h")
    daemon.set(key + "/visible", "v")
    daemon.set(key + "/_hdir/x", "h2")
    r = daemon.get(P(daemon, key), params={"recursive": "true"})
    assert [c["key"] for c in r.json()["node"]["nodes"]] == [f"/{key}/visible"]
    g = daemon.get(P(daemon, key + "/_hidden"))
    assert g.status_code == 200 and g.json()["node"]["value"] == "h"
    g = daemon.get(P(daemon, key + "/_hdir/x"))
    assert g.status_code == 200


def test_hidden_root_level(daemon):
    key = "_" + unique()
    daemon.set(key, "h")
    r = daemon.get("/v2/keys/", params={"recursive": "true"})
    assert all(n["key"] != "/" + key for n in r.json()["node"].get("nodes", []))


def test_hidden_not_reported_to_recursive_watcher(daemon):
    # live notification skips hidden keys (a history scan with waitIndex does not filter them)
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    t, box = _watch_in_thread(daemon, P(daemon, key), {"wait": "true", "recursive": "true"})
    time.sleep(0.4)
    daemon.set(key + "/_h", "hidden")
    v = daemon.set(key + "/v", "visible")
    t.join(10)
    r = box["r"]
    assert r.status_code == 200
    assert r.json()["node"]["key"] == f"/{key}/v"
    assert r.json()["node"]["modifiedIndex"] == v["node"]["modifiedIndex"]


def test_hidden_history_scan_reports_hidden(daemon):
    key = unique()
    h = daemon.set(key + "/_h", "hidden")
    daemon.set(key + "/v", "visible")
    r = daemon.get(P(daemon, key), params={"wait": "true", "recursive": "true",
                                           "waitIndex": str(h["node"]["modifiedIndex"])})
    assert r.json()["node"]["key"] == f"/{key}/_h"


def test_hidden_direct_watch(daemon):
    key = unique()
    h = daemon.set(key + "/_h", "hidden")
    r = daemon.get(P(daemon, key + "/_h"), params={"wait": "true",
                                                   "waitIndex": str(h["node"]["modifiedIndex"])})
    assert r.json()["node"]["value"] == "hidden"


# ------------------------------------------------------------------------------------------------
# TTL


def test_ttl_fields(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "t", "ttl": "100"})
    assert r.status_code == 201
    check_layout(r)
    n = r.json()["node"]
    assert RFC3339.match(n["expiration"]), n
    assert 99 <= n["ttl"] <= 100
    g = daemon.get(P(daemon, key)).json()["node"]
    assert g["expiration"] == n["expiration"]
    assert 98 <= g["ttl"] <= 100


def test_ttl_expires(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "t", "ttl": "1"})
    assert r.status_code == 201
    created = r.json()["node"]["modifiedIndex"]
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        if daemon.get(P(daemon, key)).status_code == 404:
            break
        time.sleep(0.1)
    else:
        pytest.fail("key with ttl=1 did not expire within 6 s")
    w = daemon.get(P(daemon, key), params={"wait": "true", "waitIndex": str(created + 1)})
    assert w.status_code == 200
    j = w.json()
    assert j["action"] == "expire"
    assert j["node"]["key"] == "/" + key and "value" not in j["node"]
    assert j["prevNode"]["value"] == "t"
    assert j["node"]["createdIndex"] == created


def test_ttl_dir_expires_subtree(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true", "ttl": "1"})
    daemon.set(key + "/in", "x")
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and daemon.get(P(daemon, key + "/in")).status_code != 404:
        time.sleep(0.1)
    assert daemon.get(P(daemon, key + "/in")).status_code == 404
    assert daemon.get(P(daemon, key)).status_code == 404


def test_ttl_expiry_notifies_watcher(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "t", "ttl": "1"})
    r = daemon.get(P(daemon, key), params={"wait": "true"}, timeout=8)
    assert r.status_code == 200
    assert r.json()["action"] == "expire"


def test_ttl_removed_by_update_empty(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "t", "ttl": "100"})
    r = daemon.put(P(daemon, key), data={"value": "t", "ttl": "", "prevExist": "true"})
    assert r.status_code == 200
    n = r.json()["node"]
    assert "ttl" not in n and "expiration" not in n
    assert "ttl" in r.json()["prevNode"]


def test_ttl_set_without_ttl_drops_it(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "t", "ttl": "100"})
    r = daemon.put(P(daemon, key), data={"value": "u"})
    assert "ttl" not in r.json()["node"]


def test_ttl_update_changes_ttl(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "t", "ttl": "100"})
    r = daemon.put(P(daemon, key), data={"value": "t", "ttl": "500", "prevExist": "true"})
    assert 499 <= r.json()["node"]["ttl"] <= 500


def test_refresh(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "keep", "ttl": "100"})
    r = daemon.put(P(daemon, key), data={"refresh": "true", "ttl": "300", "prevExist": "true"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["node"]["value"] == "keep"
    assert 299 <= j["node"]["ttl"] <= 300
    assert daemon.get(P(daemon, key)).json()["node"]["value"] == "keep"


def test_refresh_plain_set(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "keep", "ttl": "100"})
    r = daemon.put(P(daemon, key), data={"refresh": "true", "ttl": "200"})
    assert r.status_code == 200, r.text
    assert r.json()["action"] == "set"
    assert r.json()["node"]["value"] == "keep"


def test_refresh_does_not_notify_watchers(daemon):
    key = unique()
    s = daemon.put(P(daemon, key), data={"value": "keep", "ttl": "100"}).json()
    daemon.put(P(daemon, key), data={"refresh": "true", "ttl": "300", "prevExist": "true"})
    after = daemon.set(key, "changed")
    r = daemon.get(P(daemon, key), params={"wait": "true",
                                           "waitIndex": str(s["node"]["modifiedIndex"] + 1)})
    assert r.json()["node"]["value"] == "changed"
    assert r.json()["node"]["modifiedIndex"] == after["node"]["modifiedIndex"]


def test_refresh_errors(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "keep", "ttl": "100"})
    check_error(daemon.put(P(daemon, key), data={"refresh": "true", "value": "x", "ttl": "5"}), 400, 211,
                "Value provided on refresh", "A value was provided on a refresh", 0)
    check_error(daemon.put(P(daemon, key), data={"refresh": "true"}), 400, 212,
                "A TTL must be provided on refresh", "No TTL value set", 0)


def test_refresh_missing_key(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"refresh": "true", "ttl": "5", "prevExist": "true"})
    check_error(r, 404, 100, "Key not found", "/" + key)


# ------------------------------------------------------------------------------------------------
# parameter validation errors (code, message, cause; index 0)

MSG = {
    201: "PrevValue is Required in POST form",
    202: "The given TTL in POST form is not a number",
    203: "The given index in POST form is not a number",
    209: "Invalid field",
    210: "Invalid POST form",
}

BAD_PARAMS = [
    ("PUT", {"value": "1", "ttl": "abc"}, 202, 'invalid value for "ttl"'),
    ("PUT", {"value": "1", "ttl": "-1"}, 202, 'invalid value for "ttl"'),
    ("PUT", {"value": "1", "ttl": "1.5"}, 202, 'invalid value for "ttl"'),
    ("PUT", {"value": "1", "ttl": "99999999999999999999"}, 202, 'invalid value for "ttl"'),
    ("POST", {"value": "1", "ttl": "x"}, 202, 'invalid value for "ttl"'),
    ("PUT", {"value": "1", "prevIndex": "x"}, 203, 'invalid value for "prevIndex"'),
    ("PUT", {"value": "1", "prevIndex": "-3"}, 203, 'invalid value for "prevIndex"'),
    ("DELETE", {"prevIndex": "x"}, 203, 'invalid value for "prevIndex"'),
    ("GET", {"wait": "true", "waitIndex": "x"}, 203, 'invalid value for "waitIndex"'),
    ("GET", {"wait": "true", "waitIndex": "-1"}, 203, 'invalid value for "waitIndex"'),
    ("PUT", {"value": "1", "prevValue": ""}, 201, '"prevValue" cannot be empty'),
    ("DELETE", {"prevValue": ""}, 201, '"prevValue" cannot be empty'),
    ("PUT", {"value": "1", "dir": "yes"}, 209, 'invalid value for "dir"'),
    ("DELETE", {"dir": "x"}, 209, 'invalid value for "dir"'),
    ("POST", {"dir": "2"}, 209, 'invalid value for "dir"'),
    ("PUT", {"value": "1", "prevExist": "2"}, 209, "invalid value for prevExist"),
    ("PUT", {"value": "1", "refresh": "x"}, 209, "invalid value for refresh"),
    ("GET", {"recursive": "yes"}, 209, 'invalid value for "recursive"'),
    ("DELETE", {"recursive": "x"}, 209, 'invalid value for "recursive"'),
    ("GET", {"sorted": "x"}, 209, 'invalid value for "sorted"'),
    ("GET", {"wait": "x"}, 209, 'invalid value for "wait"'),
    ("GET", {"quorum": "x"}, 209, 'invalid value for "quorum"'),
    ("GET", {"wait": "true", "stream": "x"}, 209, 'invalid value for "stream"'),
    ("PUT", {"value": "1", "wait": "true"}, 209, '"wait" can only be used with GET requests'),
    ("DELETE", {"wait": "true"}, 209, '"wait" can only be used with GET requests'),
    ("POST", {"wait": "true"}, 209, '"wait" can only be used with GET requests'),
    ("PUT", {"refresh": "true", "value": "x", "ttl": "3"}, 211, None),
    ("PUT", {"refresh": "true"}, 212, None),
]


@pytest.mark.parametrize("method,params,code,cause", BAD_PARAMS,
                         ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for m, p, _, _ in BAD_PARAMS])
@pytest.mark.parametrize("where", ["query", "form"])
def test_bad_params(daemon, method, params, code, cause, where):
    key = unique()
    daemon.set(key, "orig")
    if where == "form" and method in ("PUT", "POST"):
        r = daemon.req(method, P(daemon, key), data=params)
    else:
        r = daemon.req(method, P(daemon, key) + "?" + urllib.parse.urlencode(params))
    j = check_error(r, 400, code, MSG.get(code), cause, 0)
    assert j["index"] == 0
    # nothing changed
    assert daemon.get(P(daemon, key)).json()["node"]["value"] == "orig"


def test_bad_form_body_210(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data="value=%zz",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    check_error(r, 400, 210, "Invalid POST form", 'invalid URL escape "%zz"', 0)


def test_bad_query_escape_210(daemon):
    key = unique()
    status, hdrs, body = raw_request(daemon, "PUT", f"/v2/keys/{key}?value=%zz")
    assert status == 400
    j = json.loads(body)
    assert j["errorCode"] == 210 and j["message"] == "Invalid POST form"


@pytest.mark.parametrize("ttl", ["0", "1", "5", "3600", ""])
def test_ttl_values_accepted(daemon, ttl):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "x", "ttl": ttl})
    assert r.status_code == 201, r.text
    n = r.json()["node"]
    if ttl in ("", ):
        assert "ttl" not in n and "expiration" not in n
    elif ttl != "0":
        assert int(ttl) - 1 <= n["ttl"] <= int(ttl)


# ------------------------------------------------------------------------------------------------
# noValueOnSuccess, quorum
# noValueOnSuccess appeared in etcd 3.1 (etcd-io/etcd#6308; etcd 3.1+'s v2 clients send it): etcd 2.3.8
# ignored it; etcd 3.4 (and we, issue 12) drop node/prevNode from set/create/update/compareAndSwap
# answers, keep the status and headers, and reject a bad boolean as any other (209, index 0).


@pytest.mark.parametrize("method,extra,action", [
    ("PUT", {"value": "n"}, "set"),
    ("POST", {"value": "n"}, "create"),
    ("PUT", {"value": "n", "prevExist": "false"}, "create"),
    ("PUT", {"value": "n", "dir": "true"}, "set"),
])
def test_no_value_on_success(daemon, method, extra, action):
    key = unique()
    r = daemon.req(method, P(daemon, key), data=dict(noValueOnSuccess="true", **extra))
    assert r.status_code == 201
    assert r.text == json.dumps({"action": action}, separators=(",", ":")) + "\n"
    assert r.headers["Content-Type"] == "application/json"
    check_key_headers(r)


@pytest.mark.parametrize("extra,action,status", [
    ({}, "set", 200),
    ({"prevExist": "true"}, "update", 200),
    ({"prevValue": "v"}, "compareAndSwap", 200),
])
def test_no_value_on_success_existing(daemon, extra, action, status):
    key = unique()
    daemon.set(key, "v")
    r = daemon.put(P(daemon, key), data=dict(value="w", noValueOnSuccess="1", **extra))
    assert r.status_code == status
    assert r.text == json.dumps({"action": action}, separators=(",", ":")) + "\n"
    assert daemon.get(P(daemon, key)).json()["node"]["value"] == "w"


@pytest.mark.parametrize("method", ["PUT", "POST", "GET", "DELETE"])
@pytest.mark.parametrize("bad", ["", "yes", "2", "TRUE "])
def test_no_value_on_success_bad_bool(daemon, method, bad):
    key = unique()
    r = daemon.req(method, P(daemon, key) + "?noValueOnSuccess=" + bad.replace(" ", "+"), data={"value": "x"})
    check_error(r, 400, 209, "Invalid field", 'invalid value for "noValueOnSuccess"', index=0)


def test_no_value_on_success_false(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "n", "noValueOnSuccess": "false"})
    assert r.status_code == 201 and r.json()["node"]["value"] == "n"


def test_no_value_on_success_delete(daemon):
    key = unique()
    daemon.set(key, "v")
    r = daemon.delete(P(daemon, key), params={"noValueOnSuccess": "true"})
    assert r.status_code == 200
    assert r.json()["action"] == "delete" and r.json()["prevNode"]["value"] == "v"


def test_no_value_on_success_get_ignored(daemon):
    key = unique()
    daemon.set(key, "v")
    r = daemon.get(P(daemon, key), params={"noValueOnSuccess": "true"})
    assert r.json()["node"]["value"] == "v"


def test_no_value_on_success_error_unchanged(daemon):
    key = unique()
    r = daemon.put(P(daemon, key), data={"value": "x", "prevExist": "true", "noValueOnSuccess": "true"})
    check_error(r, 404, 100, "Key not found", "/" + key)


def test_quorum_get(daemon):
    key = unique()
    s = daemon.set(key, "q")
    r = daemon.get(P(daemon, key), params={"quorum": "true"})
    assert r.status_code == 200
    check_key_headers(r)
    assert r.json() == {"action": "get", "node": s["node"]}
    check_error(daemon.get(P(daemon, key + "x"), params={"quorum": "true"}), 404, 100)


def test_quorum_recursive_sorted(daemon):
    key = unique()
    daemon.set(key + "/b", "2")
    daemon.set(key + "/a", "1")
    r = daemon.get(P(daemon, key), params={"quorum": "true", "recursive": "true", "sorted": "true"})
    assert [n["value"] for n in r.json()["node"]["nodes"]] == ["1", "2"]


# ------------------------------------------------------------------------------------------------
# watches


def test_watch_history(daemon):
    key = unique()
    a = daemon.set(key, "1")
    daemon.set(key, "2")
    r = daemon.get(P(daemon, key), params={"wait": "true", "waitIndex": str(a["node"]["modifiedIndex"])})
    assert r.status_code == 200
    check_key_headers(r)
    check_layout(r)
    j = r.json()
    assert j["action"] == "set" and j["node"]["value"] == "1"
    assert "prevNode" not in j


def test_watch_history_has_prevnode(daemon):
    key = unique()
    a = daemon.set(key, "1")
    b = daemon.set(key, "2")
    r = daemon.get(P(daemon, key), params={"wait": "true", "waitIndex": str(b["node"]["modifiedIndex"])})
    j = r.json()
    assert j["node"]["value"] == "2" and j["prevNode"] == a["node"]


def test_watch_waitindex_skips_other_keys(daemon):
    key = unique()
    other = unique()
    start = daemon.index() + 1
    daemon.set(other, "x")
    daemon.set(other, "y")
    mine = daemon.set(key, "mine")
    r = daemon.get(P(daemon, key), params={"wait": "true", "waitIndex": str(start)})
    assert r.json()["node"]["modifiedIndex"] == mine["node"]["modifiedIndex"]


def _watch_in_thread(d, path, params, timeout=10):
    box = {}

    def run():
        try:
            box["r"] = requests.get(d.url + path, params=params, timeout=timeout)
        except Exception as e:  # noqa: BLE001
            box["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_watch_blocks_until_change(daemon):
    key = unique()
    daemon.set(key, "0")
    t, box = _watch_in_thread(daemon, P(daemon, key), {"wait": "true"})
    time.sleep(0.5)
    assert t.is_alive(), box
    s = daemon.set(key, "1")
    t.join(10)
    assert not t.is_alive()
    r = box["r"]
    assert r.status_code == 200
    j = r.json()
    assert j["action"] == "set" and j["node"] == s["node"]
    assert j["prevNode"]["value"] == "0"
    # X-Etcd-Index is the index at watch start
    assert int(r.headers["X-Etcd-Index"]) < s["node"]["modifiedIndex"]


def test_watch_missing_key_then_create(daemon):
    key = unique()
    t, box = _watch_in_thread(daemon, P(daemon, key), {"wait": "true"})
    time.sleep(0.3)
    r = daemon.put(P(daemon, key), data={"value": "new", "prevExist": "false"})
    t.join(10)
    assert box["r"].json()["action"] == "create"
    assert box["r"].json()["node"] == r.json()["node"]


def test_watch_recursive(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    t, box = _watch_in_thread(daemon, P(daemon, key), {"wait": "true", "recursive": "true"})
    time.sleep(0.3)
    s = daemon.set(key + "/a/b", "deep")
    t.join(10)
    assert box["r"].json()["node"] == s["node"]


def test_watch_nonrecursive_ignores_children(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    start = daemon.index() + 1
    daemon.set(key + "/child", "c")
    d = daemon.delete(P(daemon, key), params={"recursive": "true"}).json()
    r = daemon.get(P(daemon, key), params={"wait": "true", "waitIndex": str(start)})
    assert r.json()["action"] == "delete"
    assert r.json()["node"]["modifiedIndex"] == d["node"]["modifiedIndex"]


def test_watch_child_sees_parent_delete(daemon):
    key = unique()
    c = daemon.set(key + "/child", "c")
    d = daemon.delete(P(daemon, key), params={"recursive": "true"}).json()
    r = daemon.get(P(daemon, key + "/child"),
                   params={"wait": "true", "waitIndex": str(c["node"]["modifiedIndex"] + 1)})
    j = r.json()
    assert j["action"] == "delete"
    assert j["node"]["key"] == "/" + key
    assert j["node"]["modifiedIndex"] == d["node"]["modifiedIndex"]


def test_watch_delete_event(daemon):
    key = unique()
    daemon.set(key, "v")
    t, box = _watch_in_thread(daemon, P(daemon, key), {"wait": "true"})
    time.sleep(0.3)
    daemon.delete(P(daemon, key))
    t.join(10)
    j = box["r"].json()
    assert j["action"] == "delete" and j["prevNode"]["value"] == "v"


def test_watch_stream(daemon):
    key = unique()
    daemon.set(key, "0")
    with requests.get(daemon.k(key), params={"wait": "true", "stream": "true"}, stream=True, timeout=10) as r:
        assert r.status_code == 200
        time.sleep(0.3)
        sets = [daemon.set(key, str(i)) for i in range(1, 4)]
        got = []
        buf = b""
        deadline = time.monotonic() + 10
        for chunk in r.iter_content(chunk_size=None):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    got.append(json.loads(line))
            if len(got) >= 3 or time.monotonic() > deadline:
                break
    assert [g["node"]["value"] for g in got[:3]] == ["1", "2", "3"]
    assert [g["node"]["modifiedIndex"] for g in got[:3]] == [s["node"]["modifiedIndex"] for s in sets]


def test_watch_waitindex_future(daemon):
    key = unique()
    future = daemon.index() + 3
    t, box = _watch_in_thread(daemon, P(daemon, key), {"wait": "true", "waitIndex": str(future)})
    a = daemon.set(key, "a")  # index future-2
    b = daemon.set(key, "b")  # future-1
    c = daemon.set(key, "c")  # future
    t.join(10)
    assert box["r"].json()["node"]["modifiedIndex"] >= future
    assert box["r"].json()["node"]["value"] == "c" or a["node"]["modifiedIndex"] >= future or \
        b["node"]["modifiedIndex"] >= future, (a, b, c)


def test_watch_on_dir_sees_dir_create(daemon):
    key = unique()
    t, box = _watch_in_thread(daemon, P(daemon, key), {"wait": "true"})
    time.sleep(0.3)
    daemon.put(P(daemon, key), data={"dir": "true"})
    t.join(10)
    j = box["r"].json()
    assert j["action"] == "set" and j["node"]["dir"] is True


def test_watch_cas_and_update_actions(daemon):
    key = unique()
    s = daemon.set(key, "1")
    daemon.put(P(daemon, key), data={"value": "2", "prevValue": "1"})
    daemon.put(P(daemon, key), data={"value": "3", "prevExist": "true"})
    daemon.delete(P(daemon, key), params={"prevValue": "3"})
    idx = s["node"]["modifiedIndex"]
    acts = []
    for i in range(1, 4):
        acts.append(daemon.get(P(daemon, key), params={"wait": "true", "waitIndex": str(idx + i)}).json()["action"])
    assert acts == ["compareAndSwap", "update", "compareAndDelete"]


def test_history_cleared_401(fresh):
    d = fresh
    key = unique()
    first = d.set(key, "first")["node"]["modifiedIndex"]
    s = requests.Session()
    for i in range(1005):
        r = s.put(d.k(unique("f")), data={"value": str(i)}, timeout=10)
        assert r.status_code == 201
    s.close()
    cur = d.index()
    r = d.get(P(d, key), params={"wait": "true", "waitIndex": str(first)})
    j = check_error(r, 400, 401, "The event in requested index is outdated and cleared")
    m = re.fullmatch(r"the requested history has been cleared \[(\d+)/(\d+)\]", j["cause"])
    assert m, j["cause"]
    assert int(m.group(2)) == first
    assert int(m.group(1)) == cur - 999
    assert j["index"] == cur
    # the oldest kept event is still served
    r = d.get("/v2/keys/", params={"wait": "true", "recursive": "true", "waitIndex": str(cur - 999)})
    assert r.status_code == 200
    assert r.json()["node"]["modifiedIndex"] == cur - 999


# ------------------------------------------------------------------------------------------------
# HTTP-level rules


@pytest.mark.parametrize("method", ["PATCH", "TRACE", "FOO", "CONNECTX"])
def test_method_not_allowed(daemon, method):
    r = daemon.req(method, "/v2/keys/" + unique())
    assert r.status_code == 405
    assert r.headers["Allow"] == "HEAD,GET,PUT,POST,DELETE"


def test_head_key(daemon):
    key = unique()
    s = daemon.set(key, "headval")
    r = daemon.req("HEAD", P(daemon, key))
    assert r.status_code == 200
    assert r.content == b""
    check_key_headers(r)
    assert int(r.headers["X-Etcd-Index"]) >= s["node"]["modifiedIndex"]
    r = daemon.req("HEAD", P(daemon, key + "nope"))
    assert r.status_code == 404
    assert r.content == b""
    assert r.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("path", ["/v2/keys/x", "/v2/keys/", "/v2/members", "/v2/stats/self", "/version",
                                  "/nothing/here"])
def test_options_200_empty(daemon, path):
    r = daemon.req("OPTIONS", path)
    assert r.status_code == 200
    assert r.content == b""


@only_23
def test_no_cors_headers_by_default(daemon):
    r = daemon.get("/v2/keys/", headers={"Origin": "http://example.com"})
    assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("path", ["/", "/v2", "/v2/nothing", "/v4/keys", "/v2/keysx", "/v2/stats/nope"])
def test_unknown_paths_404(daemon, path):
    r = daemon.get(path)
    assert r.status_code == 404
    assert r.text == "404 page not found\n"


@pytest.mark.parametrize("path,allow", [("/v2/machines", "GET,HEAD"), ("/v2/stats/self", "GET"),
                                        ("/v2/stats/store", "GET"), ("/v2/stats/leader", "GET"),
                                        ("/version", "GET")])
def test_other_405(daemon, path, allow):
    r = daemon.req("DELETE", path)
    assert r.status_code == 405
    assert r.headers["Allow"] == allow
    assert r.text == "Method Not Allowed\n"


def test_second_client_port(daemon):
    key = unique()
    daemon.set(key, "both")
    r = requests.get(daemon.urls[1] + "/v2/keys/" + key, timeout=10)
    assert r.status_code == 200 and r.json()["node"]["value"] == "both"


def test_keepalive_many_requests(daemon):
    key = unique()
    with requests.Session() as s:
        for i in range(50):
            r = s.put(daemon.k(key), data={"value": str(i)}, timeout=10)
            assert r.status_code in (200, 201)
        assert s.get(daemon.k(key), timeout=10).json()["node"]["value"] == "49"


def test_indexes_monotonic(daemon):
    key = unique()
    last = 0
    for i in range(10):
        j = daemon.set(key, str(i))
        assert j["node"]["modifiedIndex"] > last
        last = j["node"]["modifiedIndex"]


def test_raft_headers_advance(daemon):
    key = unique()
    r1 = daemon.put(P(daemon, key), data={"value": "1"})
    r2 = daemon.put(P(daemon, key), data={"value": "2"})
    assert int(r2.headers["X-Raft-Index"]) > int(r1.headers["X-Raft-Index"])
    assert r1.headers["X-Etcd-Cluster-Id"] == r2.headers["X-Etcd-Cluster-Id"]
    assert int(r2.headers["X-Etcd-Index"]) == int(r1.headers["X-Etcd-Index"]) + 1


def test_error_headers_have_no_raft(daemon):
    r = daemon.get(P(daemon, unique()))
    assert r.status_code == 404
    assert "X-Raft-Index" not in r.headers


def test_first_user_key_index_4(fresh):
    r = fresh.put(P(fresh, "first"), data={"value": "1"})
    assert r.json()["node"]["modifiedIndex"] == 4
    assert r.headers["X-Etcd-Index"] == "4"


def test_cors_flag(make_daemon):
    d = make_daemon(extra_args=["--cors", "http://allowed.example:8080"])
    r = d.get("/v2/keys/", headers={"Origin": "http://allowed.example:8080"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "http://allowed.example:8080"
    assert r.headers["Access-Control-Allow-Methods"] == "POST, GET, OPTIONS, PUT, DELETE"
    assert r.headers["Access-Control-Allow-Headers"] == "accept, content-type, authorization"
    r = d.get("/v2/keys/", headers={"Origin": "http://other.example:8080"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = d.req("OPTIONS", "/v2/keys/x", headers={"Origin": "http://allowed.example:8080"})
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == "http://allowed.example:8080"


def test_cors_star(make_daemon):
    d = make_daemon(extra_args=["--cors", "*"])
    r = d.get("/v2/keys/", headers={"Origin": "http://anything.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    r = d.get("/version")
    assert r.headers["Access-Control-Allow-Origin"] == "*"


# ------------------------------------------------------------------------------------------------
# TTL interplay, concurrency


def test_cas_without_ttl_drops_ttl(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "a", "ttl": "100"})
    r = daemon.put(P(daemon, key), data={"value": "b", "prevValue": "a"})
    assert r.status_code == 200
    assert "ttl" not in r.json()["node"] and "expiration" not in r.json()["node"]
    assert "ttl" in r.json()["prevNode"]


def test_cas_with_ttl_sets_ttl(daemon):
    key = unique()
    daemon.set(key, "a")
    r = daemon.put(P(daemon, key), data={"value": "b", "prevValue": "a", "ttl": "60"})
    assert 59 <= r.json()["node"]["ttl"] <= 60


def test_update_without_ttl_drops_ttl(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"value": "a", "ttl": "100"})
    r = daemon.put(P(daemon, key), data={"value": "b", "prevExist": "true"})
    assert "ttl" not in r.json()["node"]


def test_create_over_dir_105(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true"})
    check_error(daemon.put(P(daemon, key), data={"dir": "true", "prevExist": "false"}), 412, 105,
                "Key already exists", "/" + key)


def test_ttl_dir_expiry_notifies_child_watcher(daemon):
    key = unique()
    daemon.put(P(daemon, key), data={"dir": "true", "ttl": "1"})
    daemon.set(key + "/c", "x")
    r = daemon.get(P(daemon, key + "/c"), params={"wait": "true"}, timeout=8)
    j = r.json()
    assert j["action"] == "expire"
    assert j["node"]["key"] == "/" + key


def test_concurrent_cas_one_winner(daemon):
    key = unique()
    s = daemon.set(key, "0")
    idx = str(s["node"]["modifiedIndex"])
    results = []
    lock = threading.Lock()

    def attempt(i):
        r = requests.put(daemon.k(key), data={"value": f"w{i}", "prevIndex": idx}, timeout=10)
        with lock:
            results.append((r.status_code, r.json()))

    ts = [threading.Thread(target=attempt, args=(i,)) for i in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    codes = sorted(c for c, _ in results)
    assert codes == [200] + [412] * 9, codes
    winner = [j for c, j in results if c == 200][0]
    assert daemon.get(P(daemon, key)).json()["node"]["value"] == winner["node"]["value"]


def test_concurrent_create_one_winner(daemon):
    key = unique()
    results = []
    lock = threading.Lock()

    def attempt(i):
        r = requests.put(daemon.k(key), data={"value": f"w{i}", "prevExist": "false"}, timeout=10)
        with lock:
            results.append(r.status_code)

    ts = [threading.Thread(target=attempt, args=(i,)) for i in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    assert sorted(results) == [201] + [412] * 9


def test_many_watchers_all_notified(daemon):
    key = unique()
    n = 50
    boxes = [_watch_in_thread(daemon, P(daemon, key), {"wait": "true"}, timeout=15) for _ in range(n)]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and daemon.get("/v2/stats/store").json()["watchers"] < n:
        time.sleep(0.05)
    s = daemon.set(key, "fanout")
    for t, box in boxes:
        t.join(15)
        assert box["r"].status_code == 200, box
        assert box["r"].json()["node"] == s["node"]


def test_concurrent_posts_unique_keys(daemon):
    key = unique()
    got = []
    lock = threading.Lock()

    def post(i):
        with requests.Session() as s:
            for j in range(10):
                r = s.post(daemon.k(key), data={"value": f"{i}-{j}"}, timeout=10)
                with lock:
                    got.append(r.json()["node"]["key"])

    ts = [threading.Thread(target=post, args=(i,)) for i in range(5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(got) == 50 and len(set(got)) == 50
    listing = daemon.get(P(daemon, key), params={"sorted": "true"}).json()["node"]["nodes"]
    assert [n["key"] for n in listing] == sorted(got)


@pytest.mark.parametrize("path", ["/", "/{k}", "/{k}/sub"])
def test_recursive_watch_at_levels(daemon, path):
    key = unique()
    s = daemon.set(key + "/sub/leaf", "x")
    p = path.format(k=key)
    r = daemon.get("/v2/keys" + p, params={"wait": "true", "recursive": "true",
                                           "waitIndex": str(s["node"]["modifiedIndex"])})
    assert r.json()["node"]["key"] == f"/{key}/sub/leaf"


def test_watch_index_header_is_current(daemon):
    key = unique()
    a = daemon.set(key, "1")
    daemon.set(unique(), "other")
    cur = daemon.index()
    r = daemon.get(P(daemon, key), params={"wait": "true", "waitIndex": str(a["node"]["modifiedIndex"])})
    # the store's index then, not the event's; TTL keys of earlier tests may expire meanwhile (each
    # expiry moves the index), hence the window
    assert cur <= int(r.headers["X-Etcd-Index"]) <= daemon.index()
    assert int(r.headers["X-Etcd-Index"]) > a["node"]["modifiedIndex"]


def test_ttl_is_ceiling_and_expiration_format(daemon):
    key = unique()
    t0 = time.time()
    r = daemon.put(P(daemon, key), data={"value": "t", "ttl": "100"})
    took = time.time() - t0
    n = r.json()["node"]
    if took < 0.5:
        assert n["ttl"] == 100, n  # ceil(remaining) right after the write
    frac = re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d+))?Z", n["expiration"])
    assert frac, n["expiration"]
    if frac.group(1):
        assert len(frac.group(1)) <= 9 and not frac.group(1).endswith("0"), n["expiration"]  # RFC3339Nano
    import datetime
    exp = datetime.datetime.strptime(n["expiration"][:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    assert abs(exp - (t0 + 100)) < 3, (n["expiration"], t0)


def test_fresh_root_is_empty_and_internal_events_hidden(fresh):
    r = fresh.get("/v2/keys/", params={"recursive": "true"})
    assert r.json() == {"action": "get", "node": {"dir": True}}
    assert r.text == '{"action":"get","node":{"dir":true}}\n'
    s = fresh.set("first", "1")
    # the bootstrap events (indexes 1-3) are internal: a root watcher from index 1 sees the first user key
    r = fresh.get("/v2/keys/", params={"wait": "true", "recursive": "true", "waitIndex": "1"})
    assert r.json()["node"] == s["node"]


@only_23
def test_semicolon_query_separator(daemon):
    # Go 1.6's url.ParseQuery (etcd 2.3.8) treats ";" like "&"
    key = unique()
    daemon.set(key + "/b/deep", "2")
    daemon.set(key + "/a", "1")
    r = daemon.get(P(daemon, key) + "?recursive=true;sorted=true")
    assert r.status_code == 200, r.text
    nodes = r.json()["node"]["nodes"]
    assert [n["key"] for n in nodes] == [f"/{key}/a", f"/{key}/b"]
    assert nodes[1]["nodes"][0]["value"] == "2"


def test_ttl_not_early_not_late(daemon):
    key = unique()
    t0 = time.monotonic()
    daemon.put(P(daemon, key), data={"value": "t", "ttl": "2"})
    time.sleep(max(0, 1.2 - (time.monotonic() - t0)))
    r = daemon.get(P(daemon, key))
    assert r.status_code == 200, "ttl=2 key gone after 1.2 s"
    assert r.json()["node"]["ttl"] in (1, 2)
    while time.monotonic() - t0 < 4.5 and daemon.get(P(daemon, key)).status_code == 200:
        time.sleep(0.05)
    gone = time.monotonic() - t0
    assert daemon.get(P(daemon, key)).status_code == 404, "ttl=2 key still there after 4.5 s"
    assert gone >= 1.9, f"expired after {gone:.2f}s"


def test_refresh_extends_life(daemon):
    key = unique()
    t0 = time.monotonic()
    daemon.put(P(daemon, key), data={"value": "t", "ttl": "2"})
    time.sleep(1.0)
    r = daemon.put(P(daemon, key), data={"refresh": "true", "ttl": "4", "prevExist": "true"})
    assert r.status_code == 200
    time.sleep(max(0, 3.0 - (time.monotonic() - t0)))
    r = daemon.get(P(daemon, key))
    assert r.status_code == 200 and r.json()["node"]["value"] == "t"


def test_stream_watch_from_history_is_one_shot(daemon):
    """etcd quirk (store/watcher_hub.go): a watch whose waitIndex hits the event history gets that one
    event and is never registered with the hub, so even with stream=true nothing else arrives."""
    key = unique()
    a = daemon.set(key, "h1")
    daemon.set(key, "h2")
    got = []
    s = socket.create_connection(("127.0.0.1", daemon.client_ports[0]), timeout=10)
    try:
        s.sendall((f"GET /v2/keys/{key}?wait=true&stream=true&waitIndex={a['node']['modifiedIndex']} "
                   f"HTTP/1.1\r\nHost: x\r\n\r\n").encode())
        s.settimeout(0.5)
        data = b""
        deadline = time.monotonic() + 3
        fired = False
        while time.monotonic() < deadline:
            try:
                c = s.recv(65536)
            except socket.timeout:
                c = b""
            if c:
                data += c
            if b'"h1"' in data and not fired:
                fired = True
                daemon.set(key, "live")
        got = re.findall(rb'"value":"([^"]*)"', data)
    finally:
        s.close()
    assert got == [b"h1"], got
