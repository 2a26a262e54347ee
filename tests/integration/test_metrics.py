# SPDX-License-Identifier: Apache-2.0
"""GET /metrics (Prometheus text 0.0.4, etcd 2.3's metric names): `promtool check metrics` passes on our
output; a scrape before and after known traffic (PUTs, GETs, a failed compare-and-swap, a watch, an expiry)
moves every counter by exactly what that traffic does; the proxy's metrics move when it forwards and when
its member is gone; in a 3-member cluster the peer byte counters move by what the leader replicated; the
families etcd 3.4 also serves have the same type and label names there, and the same traffic moves its
HTTP and store counters alike."""

import os
import re
import shutil
import subprocess
import threading
import time

import pytest
import requests

from cluster import make_cluster  # noqa: F401 (fixture)
from conftest import Daemon, REFERENCE, REFERENCE_BINARY, free_ports, only_ours, unique
from procs import Process

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse(text):
    """{(name, ((label, value), ...)): float} and {family: type}, {family: help}."""
    samples, types, helps = {}, {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, fam, typ = line.split(" ", 3)
            types[fam] = typ
        elif line.startswith("# HELP "):
            _, _, fam, help_ = line.split(" ", 3)
            helps[fam] = help_
        elif line and not line.startswith("#"):
            m = LINE.match(line)
            assert m, f"unparsable line {line!r}"
            labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types, helps


def scrape(url):
    r = requests.get(url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return r.text


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


# promtool's linter (exit 3) objects to two names etcd2 chose (gauges named *_total); dashboards use them,
# so they stay, as in etcd 3.4's output, which draws the same two findings. Anything else fails, and a
# format error (exit 1) always does.
ETCD_LINT = {
    'etcd_server_proposals_applied_total non-counter metrics should not have "_total" suffix',
    'etcd_server_proposals_committed_total non-counter metrics should not have "_total" suffix',
}


def promtool_check(text):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    p = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    out = p.stdout.decode() + p.stderr.decode()
    findings = {line.strip() for line in out.splitlines() if line.strip()}
    assert p.returncode == 0 or (p.returncode == 3 and findings <= ETCD_LINT), out


@pytest.fixture
def fresh():
    """A daemon of its own: no other test's watchers or timers in the way of exact deltas."""
    d = Daemon()
    yield d
    d.cleanup()


def traffic(d, n_put=5, n_get=4):
    """Known traffic; returns what it did."""
    base = "/v2/keys/" + unique("metrics")
    for i in range(n_put):
        assert d.put(f"{base}/k{i}", data={"value": str(i)}).status_code == 201
    for i in range(n_get):
        assert d.get(f"{base}/k{i % n_put}").status_code == 200
    # a failed compare-and-swap: 412
    assert d.put(f"{base}/k0", data={"value": "x", "prevValue": "nope"}).status_code == 412
    # a watch (not counted as received), ended by one more PUT
    got = {}

    def watch():
        got["r"] = requests.get(d.url + f"{base}/w?wait=true", timeout=10)

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    during, _, _ = parse(scrape(d.url))
    assert d.put(f"{base}/w", data={"value": "v"}).status_code == 201
    t.join(10)
    assert got["r"].status_code == 200
    # an expiry
    assert d.put(f"{base}/ttl", data={"value": "v", "ttl": "1"}).status_code == 201
    return during, n_put + 3, n_get


@only_ours
def test_promtool_and_families(daemon):
    traffic(daemon)
    text = scrape(daemon.url)
    promtool_check(text)
    _, types, _ = parse(text)
    for fam, typ in [("etcd_http_received_total", "counter"), ("etcd_http_failed_total", "counter"),
                     ("etcd_http_successful_duration_seconds", "histogram"),
                     ("etcd_server_has_leader", "gauge"), ("etcd_server_leader_changes_seen_total", "counter"),
                     ("etcd_server_proposals_committed_total", "gauge"),
                     ("etcd_server_proposals_applied_total", "gauge"), ("etcd_server_proposals_pending", "gauge"),
                     ("etcd_server_proposals_failed_total", "counter"),
                     ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
                     ("etcd_disk_backend_commit_duration_seconds", "histogram"),
                     ("etcd_store_reads_total", "counter"), ("etcd_store_writes_total", "counter"),
                     ("etcd_store_watchers", "gauge"), ("etcd_store_watch_requests_total", "counter"),
                     ("etcd_store_expires_total", "counter"),
                     ("process_open_fds", "gauge"), ("process_max_fds", "gauge"),
                     ("process_resident_memory_bytes", "gauge"), ("process_cpu_seconds_total", "counter"),
                     ("process_start_time_seconds", "gauge")]:
        assert types.get(fam) == typ, fam


@only_ours
def test_deltas(fresh):
    d = fresh
    before, _, _ = parse(scrape(d.url))
    during, n_put, n_get = traffic(d)
    assert value(during, "etcd_store_watchers") == value(before, "etcd_store_watchers") + 1

    def expired():
        s, _, _ = parse(scrape(d.url))
        return (s,) if delta(before, s, "etcd_store_expires_total") >= 1 else None

    after = d.wait_ready(expired, 10, "the key to expire", fail=pytest.fail)[0]

    # etcdhttp: received counts parsed requests but watches; a failure by code; a success's duration
    assert delta(before, after, "etcd_http_received_total", method="PUT") == n_put
    assert delta(before, after, "etcd_http_received_total", method="GET") == n_get
    assert delta(before, after, "etcd_http_failed_total", method="PUT", code="412") == 1
    assert delta(before, after, "etcd_http_successful_duration_seconds_count", method="PUT") == n_put - 1
    assert delta(before, after, "etcd_http_successful_duration_seconds_count", method="GET") == n_get
    assert delta(before, after, "etcd_http_successful_duration_seconds_bucket", method="GET", le="+Inf") == n_get
    assert delta(before, after, "etcd_http_successful_duration_seconds_sum", method="GET") > 0
    # the store: sets, the compare-and-swap (failed, still a write), gets, the watch and the expiry
    assert delta(before, after, "etcd_store_writes_total", action="set") == n_put - 1
    assert delta(before, after, "etcd_store_writes_total", action="compareAndSwap") == 1
    # ... and, as etcd2's AuthEnabled() reads /2/enabled for every key request's access check (the
    # watch's too), one more get per key request (etcd 3.4 counts them so)
    assert delta(before, after, "etcd_store_reads_total", action="get") == n_get + n_put + n_get + 1
    assert delta(before, after, "etcd_store_watch_requests_total") == 1
    assert delta(before, after, "etcd_store_expires_total") == 1
    assert value(after, "etcd_store_watchers") == value(before, "etcd_store_watchers")
    # the member: every write went through Raft (and the expiry's sync)
    assert value(after, "etcd_server_has_leader") == 1
    assert value(after, "etcd_server_leader_changes_seen_total") == 1
    assert delta(before, after, "etcd_server_proposals_committed_total") >= n_put + 1
    assert delta(before, after, "etcd_server_proposals_applied_total") >= n_put + 1
    assert value(after, "etcd_server_proposals_applied_total") <= value(after, "etcd_server_proposals_committed_total")
    assert delta(before, after, "etcd_server_proposals_failed_total") == 0
    assert value(after, "etcd_server_proposals_pending") == 0
    wal = delta(before, after, "etcd_disk_wal_fsync_duration_seconds_count")
    assert wal >= 1
    assert delta(before, after, "etcd_disk_backend_commit_duration_seconds_count") == wal
    assert delta(before, after, "etcd_disk_wal_fsync_duration_seconds_bucket", le="+Inf") == wal
    # the process
    assert value(after, "process_open_fds") > 5
    assert value(after, "process_max_fds") >= value(after, "process_open_fds")
    assert value(after, "process_resident_memory_bytes") > 1 << 20
    assert abs(value(after, "process_start_time_seconds") - time.time()) < 120
    assert value(after, "process_cpu_seconds_total") > 0


class Proxy(Process):
    stop_strict = False

    def __init__(self, initial_cluster, binary):
        self.binary = binary
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("proxy", "etcd2-proxy-", "etcd2-proxy-log-", reference=REFERENCE)
        self.spawn([binary, "--name", "proxy", "--proxy", "on", "--data-dir", self.data_dir,
                    "--listen-client-urls", self.url, "--initial-cluster", initial_cluster])

        def ready():
            try:
                r = requests.get(self.url + "/v2/config/local/proxy", timeout=2)
                return (True,) if r.status_code == 200 and r.json()["endpoints"] else None
            except requests.RequestException:
                return None

        self.wait_ready(ready, 20, "the proxy's endpoints", fail=pytest.fail)


@only_ours
def test_proxy(fresh):
    d = fresh
    p = Proxy(f"node1={d.peer_url}", d.binary)
    try:
        before, _, _ = parse(scrape(p.url))
        base = "/v2/keys/" + unique("proxied")
        for i in range(2):
            assert requests.put(p.url + f"{base}/k{i}", data={"value": "v"}, timeout=5).status_code == 201
        for i in range(3):
            assert requests.get(p.url + f"{base}/k0", timeout=5).status_code == 200
        assert requests.get(p.url + f"{base}/missing", timeout=5).status_code == 404
        text = scrape(p.url)
        promtool_check(text)
        after, types, _ = parse(text)
        assert types["etcd_proxy_requests_total"] == "counter"
        assert types["etcd_proxy_handled_total"] == "counter"
        assert types["etcd_proxy_handling_duration_seconds"] == "histogram"
        assert delta(before, after, "etcd_proxy_requests_total", method="PUT") == 2
        assert delta(before, after, "etcd_proxy_requests_total", method="GET") == 4
        assert delta(before, after, "etcd_proxy_handled_total", method="PUT", code="201") == 2
        assert delta(before, after, "etcd_proxy_handled_total", method="GET", code="200") == 3
        assert delta(before, after, "etcd_proxy_handled_total", method="GET", code="404") == 1
        assert delta(before, after, "etcd_proxy_handling_duration_seconds_count", method="GET") == 4
        # a proxy is no member: none of the member's families
        assert not any(k[0].startswith(("etcd_server_", "etcd_store_", "etcd_disk_")) for k in after)

        # its only member gone: a failed send per endpoint (its client URLs), then no response (502)
        n_endpoints = len(requests.get(p.url + "/v2/config/local/proxy", timeout=5).json()["endpoints"])
        d.stop()
        assert requests.get(p.url + f"{base}/k0", timeout=10).status_code == 502
        last, _, _ = parse(scrape(p.url))
        assert delta(after, last, "etcd_proxy_requests_total", method="GET") == 1
        assert delta(after, last, "etcd_proxy_dropped_total", method="GET",
                     proxying_error="failed_sending_request") == n_endpoints
        assert delta(after, last, "etcd_proxy_dropped_total", method="GET",
                     proxying_error="failed_getting_response") == 1
        # with the endpoint marked failed: zero endpoints (503)
        assert requests.get(p.url + f"{base}/k0", timeout=10).status_code == 503
        last2, _, _ = parse(scrape(p.url))
        assert delta(last, last2, "etcd_proxy_dropped_total", method="GET", proxying_error="zero_endpoints") == 1
    finally:
        p.stop()
        report = p.sanitizer_report()
        p.cleanup()
    assert not report, report


# etcd 3.4 keeps the v2 store's families under etcd_debugging_store_*
RENAMED_IN_34 = {f"etcd_store_{n}": f"etcd_debugging_store_{n}"
                 for n in ("reads_total", "writes_total", "expires_total", "watch_requests_total", "watchers")}


RENAMED_34_BACK = {v: k for k, v in RENAMED_IN_34.items()}


def families(text):
    """{family: (type, frozenset of label names but le)} of a scrape."""
    samples, types, _ = parse(text)
    out = {}
    for fam, typ in types.items():
        names = set()
        for (name, labels) in samples:
            if name == fam or (typ == "histogram" and name in (fam + "_bucket", fam + "_sum", fam + "_count")):
                names |= {k for k, _ in labels if k != "le"}
        out[fam] = (typ, frozenset(names))
    return out


@only_ours
def test_same_families_as_etcd34(fresh):
    if not os.access(REFERENCE_BINARY, os.X_OK):
        pytest.skip("etcd 3.4 is not installed")
    ref = Daemon(reference=True)
    try:
        moved = []
        for d in (fresh, ref):
            before, _, _ = parse(scrape(d.url))
            traffic(d)
            moved.append(before)
        time.sleep(2.5)   # the expiries
        texts = scrape(fresh.url), scrape(ref.url)
    finally:
        ref.cleanup()
    ours, theirs = families(texts[0]), families(texts[1])

    # the same traffic moves the HTTP and store counters as on etcd 3.4, but its store reads: 3.4 reads
    # its v2 store on its own too (a dozen gets a second or so)
    def deltas(before, text):
        after, _, _ = parse(text)
        return {(RENAMED_34_BACK.get(k[0], k[0]), k[1]): v - before.get(k, 0) for k, v in after.items()
                if k[0].startswith(("etcd_http_", "etcd_debugging_store_", "etcd_store_")) and
                not k[0].endswith(("_sum", "_bucket")) and "reads_total" not in k[0]}
    d_ours, d_theirs = deltas(moved[0], texts[0]), deltas(moved[1], texts[1])
    for k in set(d_ours) | set(d_theirs):
        assert d_ours.get(k, 0) == d_theirs.get(k, 0), f"{k}: ours moved {d_ours.get(k, 0)}, etcd 3.4 {d_theirs.get(k, 0)}"
    compared = 0
    for fam, (typ, labels) in ours.items():
        other = theirs.get(RENAMED_IN_34.get(fam, fam))
        if other is None:
            continue
        compared += 1
        assert other == (typ, labels), f"{fam}: ours {typ} {sorted(labels)}, etcd 3.4 {other[0]} {sorted(other[1])}"
    # everything of ours but the proxy's (not running here) and peers' (one member) families
    assert compared >= 20, compared


@only_ours
def test_cluster_peers(make_cluster):
    c = make_cluster(3)
    leader = c.leader()
    followers = c.followers(leader)
    before = {m.name: parse(scrape(m.url))[0] for m in c.members}
    base = "/v2/keys/" + unique("peers")
    value_ = "x" * 1000
    for i in range(20):
        assert leader.put(f"{base}/k{i}", data={"value": value_}).status_code == 201
    time.sleep(0.5)   # the followers apply
    texts = {m.name: scrape(m.url) for m in c.members}
    promtool_check(texts[leader.name])
    after = {name: parse(t)[0] for name, t in texts.items()}
    _, types, _ = parse(texts[leader.name])
    assert types["etcd_network_peer_sent_bytes_total"] == "counter"
    assert types["etcd_network_peer_received_bytes_total"] == "counter"
    for f in followers:
        # 20 entries of 1000-byte values went from the leader to each follower
        assert delta(before[leader.name], after[leader.name], "etcd_network_peer_sent_bytes_total", To=f.id) > 20000
        assert delta(before[leader.name], after[leader.name], "etcd_network_peer_received_bytes_total", From=f.id) > 0
        assert delta(before[f.name], after[f.name], "etcd_network_peer_received_bytes_total", From=leader.id) > 20000
        assert delta(before[f.name], after[f.name], "etcd_network_peer_sent_bytes_total", To=leader.id) > 0
    # the leader times its heartbeats to each follower
    _, types, _ = parse(texts[leader.name])
    assert types["etcd_network_peer_round_trip_time_seconds"] == "histogram"
    for f in followers:
        n = value(after[leader.name], "etcd_network_peer_round_trip_time_seconds_count", To=f.id)
        assert n > 0
        assert value(after[leader.name], "etcd_network_peer_round_trip_time_seconds_bucket", To=f.id, le="+Inf") == n
        assert 0 < value(after[leader.name], "etcd_network_peer_round_trip_time_seconds_sum", To=f.id) / n < 0.5
    for m in c.members:
        assert value(after[m.name], "etcd_server_has_leader") == 1
        assert value(after[m.name], "etcd_server_leader_changes_seen_total") >= 1
        assert delta(before[m.name], after[m.name], "etcd_server_proposals_applied_total") >= 20
        assert delta(before[m.name], after[m.name], "etcd_store_writes_total", action="set") == 20
        assert not any(k[0] == "etcd_network_peer_sent_bytes_total" and ("To", m.id) in k[1] for k in after[m.name])
    # the HTTP counters count where the client's request came in
    assert delta(before[leader.name], after[leader.name], "etcd_http_received_total", method="PUT") == 20
    for f in followers:
        assert delta(before[f.name], after[f.name], "etcd_http_received_total", method="PUT") == 0
