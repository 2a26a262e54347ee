# SPDX-License-Identifier: Apache-2.0
"""Proxy mode (--proxy on|readonly) in front of a 3-member cluster: answers through the proxy equal direct
ones, long-poll and streaming watches pass through, failover when the member in use is killed, readonly
refuses writes with 501, /v2/config/local/proxy, restart from <data-dir>/proxy/cluster, 503 with zero
endpoints. With ETCD2_REFERENCE=1 the cluster and the proxy are etcd 3.4 (`etcd --proxy on`)."""

import json
import os
import threading
import time

import pytest
import requests

import procs
from cluster import make_cluster, require_binary  # noqa: F401 (fixture)
from conftest import REFERENCE, free_ports, unique
from procs import Process


class Proxy(Process):
    """One proxy process; its port and data dir survive restarts."""

    stop_strict = False

    def __init__(self, mode="on", initial_cluster=None, extra_args=()):
        self.binary = require_binary()
        self.mode = mode
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        super().__init__("proxy", "etcd2-proxy-", "etcd2-proxy-log-", reference=REFERENCE)
        self.start(initial_cluster)

    def start(self, initial_cluster=None):
        argv = [self.binary, "--name", "proxy", "--proxy", self.mode, "--data-dir", self.data_dir,
                "--listen-client-urls", self.url] + self.extra_args
        if initial_cluster is not None:
            argv += ["--initial-cluster", initial_cluster]
        self.spawn(argv)

    def endpoints(self):
        return json.loads(self.get("/v2/config/local/proxy", timeout=2).text)["endpoints"]

    def wait_endpoints(self, n, timeout=20.0):
        def ready():
            eps = self.endpoints()
            return (eps,) if len(eps) == n else None

        return self.wait_ready(ready, timeout, f"{n} endpoints", fail=pytest.fail)[0]


def _stop_and_check(p):
    p.stop()
    return p.sanitizer_report()


@pytest.fixture
def make_proxy():
    """Factory: make_proxy(mode, initial_cluster, extra_args) -> Proxy; at teardown each one is stopped
    with SIGTERM, and the test fails if one died on its own or left a sanitizer report in its log."""
    yield from procs.factory(Proxy, _stop_and_check)


@pytest.fixture
def cluster_and_proxy(make_cluster, make_proxy):
    c = make_cluster(3)
    p = make_proxy("on", ",".join(f"{m.name}={m.peer_url}" for m in c.members))
    p.wait_endpoints(3)
    return c, p


def zero_endpoints_message(text):
    # etcd 2.3.8 says "proxy: ...", etcd 3.4 "httpproxy: ..."
    return json.loads(text)["message"] in ("proxy: zero endpoints currently available",
                                           "httpproxy: zero endpoints currently available")


# ----------------------------------------------------------------------------------------------------------
def test_same_answers_as_direct(cluster_and_proxy):
    c, p = cluster_and_proxy
    m = c.members[0]
    k = unique("/v2/keys/px")

    r = p.put(k, data={"value": "v1"})
    assert r.status_code == 201, r.text
    idx = int(r.headers["X-Etcd-Index"])
    body = r.json()
    assert body["action"] == "set" and body["node"]["value"] == "v1" and body["node"]["modifiedIndex"] == idx
    assert r.headers["Content-Type"] == "application/json"

    # reads: the same answer through the proxy and directly (quorum reads: every member agrees)
    for path in (k + "?quorum=true", unique("/v2/keys/missing") + "?quorum=true"):
        d, v = m.get(path), p.get(path)
        assert (d.status_code, d.headers["X-Etcd-Index"], d.text) == (v.status_code, v.headers["X-Etcd-Index"], v.text)
        assert d.headers.get("X-Etcd-Cluster-Id") == v.headers.get("X-Etcd-Cluster-Id")

    # errors pass through with their status
    d = m.put(k, data={"value": "x", "prevValue": "nope"})
    v = p.put(k, data={"value": "x", "prevValue": "nope"})
    assert (d.status_code, d.headers["X-Etcd-Index"], d.text) == (v.status_code, v.headers["X-Etcd-Index"], v.text)
    assert v.status_code == 412

    r = p.delete(k)
    assert r.status_code == 200, r.text
    assert r.json()["action"] == "delete" and r.json()["prevNode"]["value"] == "v1"
    d, v = m.delete(k), p.delete(k)
    assert d.status_code == v.status_code == 404
    assert d.text == v.text and d.headers["X-Etcd-Index"] == v.headers["X-Etcd-Index"]

    # POST (in-order keys), HEAD, a larger value, and a query string with escapes
    r = p.req("POST", unique("/v2/keys/q"), data={"value": "a b&c"})
    assert r.status_code == 201 and r.json()["node"]["value"] == "a b&c", r.text
    big = "x" * 300000
    k2 = unique("/v2/keys/big")
    assert p.put(k2, data={"value": big}).status_code == 201
    r = p.get(k2 + "?quorum=true")
    assert r.json()["node"]["value"] == big
    h = p.req("HEAD", k2)
    assert h.status_code == 200 and h.text == ""
    r = p.get("/v2/keys/?recursive=true&sorted=true")
    assert r.status_code == 200

    # /version and /v2/members come from the members
    assert p.get("/version").json() == m.get("/version").json()
    assert {x["id"] for x in p.get("/v2/members").json()["members"]} == {x.id for x in c.members}


def test_config_endpoint(cluster_and_proxy):
    c, p = cluster_and_proxy
    r = p.get("/v2/config/local/proxy")
    assert r.status_code == 200
    assert r.text.endswith("\n")
    assert sorted(json.loads(r.text)["endpoints"]) == sorted(m.url for m in c.members)
    with open(os.path.join(p.data_dir, "proxy", "cluster")) as f:
        assert sorted(json.load(f)["PeerURLs"]) == sorted(m.peer_url for m in c.members)
    assert oct(os.stat(os.path.join(p.data_dir, "proxy")).st_mode & 0o777) == "0o700"


def test_wait_watch(cluster_and_proxy):
    c, p = cluster_and_proxy
    k = unique("/v2/keys/w")
    out = {}

    def watch():
        try:
            out["r"] = p.get(k + "?wait=true", timeout=20)
        except Exception as e:  # noqa: BLE001
            out["e"] = e

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.5)
    assert t.is_alive()
    w = c.members[1].put(k, data={"value": "hello"})
    assert w.status_code == 201
    t.join(15)
    assert "r" in out, out
    assert out["r"].status_code == 200
    ev = out["r"].json()
    assert ev["action"] == "set" and ev["node"]["value"] == "hello"
    assert ev["node"]["modifiedIndex"] == w.json()["node"]["modifiedIndex"]


def test_stream_watch(cluster_and_proxy):
    c, p = cluster_and_proxy
    if REFERENCE:
        pytest.skip("etcd's proxy copies the body without flushing (io.Copy): stream events wait in its buffer")
    k = unique("/v2/keys/s")
    r = p.get(k + "?wait=true&stream=true", stream=True, timeout=20)
    assert r.status_code == 200
    lines = r.iter_lines(chunk_size=1)
    c.members[2].put(k, data={"value": "one"})
    got = []
    for line in lines:
        if line.strip():
            got.append(json.loads(line))
            if len(got) == 1:
                c.members[0].put(k, data={"value": "two"})
            if len(got) == 2:
                break
    r.close()
    assert [e["node"]["value"] for e in got] == ["one", "two"]


def test_failover_after_kill(cluster_and_proxy):
    c, p = cluster_and_proxy
    name = p.get("/v2/stats/self").json()["name"]
    victim = next(m for m in c.members if m.name == name)
    victim.kill9()
    # reads keep working right away (the next endpoint is tried on a transport error)
    for _ in range(10):
        r = p.get("/v2/stats/self")
        assert r.status_code == 200, r.text
        assert r.json()["name"] != name
    # writes once the others have a leader
    k = unique("/v2/keys/f")
    deadline = time.monotonic() + 15
    while True:
        r = p.put(k, data={"value": "after"})
        if r.status_code == 201 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 201, r.text
    assert p.get(k + "?quorum=true").json()["node"]["value"] == "after"


def test_readonly(make_cluster, make_proxy):
    c = make_cluster(3)
    p = make_proxy("readonly", ",".join(f"{m.name}={m.peer_url}" for m in c.members))
    p.wait_endpoints(3)
    k = unique("/v2/keys/ro")
    for method in ("PUT", "POST", "DELETE", "HEAD"):
        r = p.req(method, k, data={"value": "x"} if method in ("PUT", "POST") else None)
        assert r.status_code == 501, (method, r.status_code, r.text)
        assert r.text == ""
    c.members[0].put(k, data={"value": "direct"})
    r = p.get(k + "?quorum=true")
    assert r.status_code == 200 and r.json()["node"]["value"] == "direct"


def test_restart_from_cluster_file(cluster_and_proxy):
    c, p = cluster_and_proxy
    p.stop()
    p.start(initial_cluster=None)  # no --initial-cluster: <data-dir>/proxy/cluster has the peers
    p.wait_endpoints(3)
    k = unique("/v2/keys/rs")
    r = p.put(k, data={"value": "again"})
    assert r.status_code == 201, r.text
    assert "cluster file" in p.log_tail()


def test_zero_endpoints(make_proxy):
    dead = free_ports(1)[0]
    p = make_proxy("on", f"dead=http://127.0.0.1:{dead}")
    deadline = time.monotonic() + 10
    while True:
        try:
            r = p.get("/v2/keys/")
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert r.status_code == 503, r.text
    assert zero_endpoints_message(r.text), r.text
    assert r.headers["Content-Type"] == "application/json"
    assert p.endpoints() == []


def test_large_value_slow_client(cluster_and_proxy):
    """A body larger than the proxy's buffer, read slowly: upstream is paused and resumed, nothing lost."""
    import socket
    c, p = cluster_and_proxy
    k = unique("/v2/keys/large")
    value = "".join(chr(ord("a") + i % 26) for i in range(1024 * 1024))  # etcd 3.4 takes up to 1.5 MiB
    assert c.members[0].put(k, data={"value": value}, timeout=30).status_code == 201
    s = socket.create_connection(("127.0.0.1", p.port), timeout=20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(f"GET {k}?quorum=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    time.sleep(1.0)  # let the proxy fill its buffer and pause upstream
    while True:
        chunk = s.recv(16384)
        if not chunk:
            break
        data += chunk
        time.sleep(0.001)
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while True:
            size, _, rest = body.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            if n == 0:
                break
            out += rest[:n]
            body = rest[n + 2:]
        body = out
    assert json.loads(body)["node"]["value"] == value


def test_all_members_down(cluster_and_proxy):
    c, p = cluster_and_proxy
    for m in c.members:
        m.kill9()
    r = p.get("/v2/keys/")
    assert r.status_code == 502, r.text
    assert json.loads(r.text)["message"] in ("proxy: unable to get response from 3 endpoint(s)",
                                             "httpproxy: unable to get response from 3 endpoint(s)")
    # every endpoint is now held failed for --proxy-failure-wait
    r = p.get("/v2/keys/")
    assert r.status_code == 503 and zero_endpoints_message(r.text), r.text


def test_cors(make_cluster, make_proxy):
    """--cors on the proxy: etcd's CORS wrapper answers OPTIONS itself and adds the headers to every
    forwarded answer (the members here have no --cors); readonly's 501 comes before it, without them."""
    c = make_cluster(3)
    ic = ",".join(f"{m.name}={m.peer_url}" for m in c.members)
    p = make_proxy("on", ic, ["--cors", "http://allowed.example:8080"])
    p.wait_endpoints(3)
    k = unique("/v2/keys/cors")
    r = p.req("OPTIONS", k, headers={"Origin": "http://allowed.example:8080"})
    assert r.status_code == 200 and r.content == b"", (r.status_code, r.text)
    assert r.headers.get("Access-Control-Allow-Origin") == "http://allowed.example:8080", r.headers
    assert r.headers.get("Access-Control-Allow-Methods") == "POST, GET, OPTIONS, PUT, DELETE", r.headers
    # (etcd 3.4's members allow "*" by default and add theirs after the proxy's; etcd2's allow nothing)
    r = p.put(k, data={"value": "c"}, headers={"Origin": "http://allowed.example:8080"})
    origin = r.headers.get("Access-Control-Allow-Origin", "")
    assert r.status_code == 201 and origin.split(",")[0] == "http://allowed.example:8080", r.headers
    if not REFERENCE:
        assert origin == "http://allowed.example:8080", r.headers
        r = p.get(k, headers={"Origin": "http://other.example"})
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers, r.headers

    ro = make_proxy("readonly", ic, ["--cors", "*"])
    ro.wait_endpoints(3)
    r = ro.req("OPTIONS", k)
    assert r.status_code == 501 and "Access-Control-Allow-Origin" not in r.headers, (r.status_code, r.headers)
    r = ro.get(k)
    assert r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin", "").split(",")[0] == "*", r.headers
