# SPDX-License-Identifier: Apache-2.0
"""Three etcd2 members, each under its own real systemd, form a static cluster (see sdmachine.py).

Three "machines" (PID, mount, UTS and IPC namespaces each, with systemd as PID 1, journald, dbus-daemon and
our installed units) share one network namespace the test creates (sdmachine.NetNS), so they reach each
other on 127.0.0.1. Each gets its own ports through drop-ins for etcd2.socket and etcd2-peer.socket (the
installed ListenStream= reset with an empty line first) and its ETCD_* configuration through a drop-in for
etcd2.service, the way an administrator (or the cloud-config generator) would. All sockets listen, but
only the first member's service is started: its peers are socket-activated by its Raft traffic. The tests
run in file order on one cluster: it forms, replicates, every bus shows the same leader, and the leader's
loss leads to a new leader that the other two agree on and that journals its election. A fourth machine
runs etcd2 as a proxy (ETCD_PROXY=on in its drop-in, started with systemctl): it forwards to the members,
keeps its state in /var/lib/etcd2/proxy, says StateProxy on its bus, and still serves after the leader's loss.
"""

import json
import re
import time

import pytest

N = 3
NAMES = [f"sd-node{i}" for i in range(N)]
CLIENT_PORTS = [22379 + 100 * i for i in range(N)]
PEER_PORTS = [22380 + 100 * i for i in range(N)]
CLIENT_URLS = [f"http://127.0.0.1:{p}" for p in CLIENT_PORTS]
PEER_URLS = [f"http://127.0.0.1:{p}" for p in PEER_PORTS]
INITIAL_CLUSTER = ",".join(f"{n}={u}" for n, u in zip(NAMES, PEER_URLS))
TOKEN = "sd-cluster-token"
BUS_NAME = "io.etcd.etcd2"
BUS_PATH = "/io/etcd/etcd2"
BUS_IFACE = "io.etcd.etcd2.Cluster"
UNITS = "run/systemd/system"  # under each machine's work dir, copied into its /run before systemd starts
# A fourth machine runs etcd2 as a proxy (ETCD_PROXY=on) in front of the three members.
PROXY_NAME = "sd-proxy"
PROXY_CLIENT_PORT = 22379 + 100 * N
PROXY_PEER_PORT = 22380 + 100 * N
PROXY_URL = f"http://127.0.0.1:{PROXY_CLIENT_PORT}"
_proxy = []


def socket_dropin(port):
    return f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"


def service_dropin(i):
    env = {
        "ETCD_NAME": NAMES[i],
        "ETCD_INITIAL_CLUSTER": INITIAL_CLUSTER,
        "ETCD_INITIAL_CLUSTER_STATE": "new",
        "ETCD_INITIAL_CLUSTER_TOKEN": TOKEN,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": PEER_URLS[i],
        "ETCD_LISTEN_PEER_URLS": PEER_URLS[i],
        "ETCD_LISTEN_CLIENT_URLS": CLIENT_URLS[i],
        "ETCD_ADVERTISE_CLIENT_URLS": CLIENT_URLS[i],
    }
    return "[Service]\n" + "".join(f'Environment="{k}={v}"\n' for k, v in env.items())


def proxy_dropin():
    env = {
        "ETCD_NAME": PROXY_NAME,
        "ETCD_PROXY": "on",
        "ETCD_INITIAL_CLUSTER": INITIAL_CLUSTER,
        "ETCD_LISTEN_CLIENT_URLS": PROXY_URL,
    }
    return "[Service]\n" + "".join(f'Environment="{k}={v}"\n' for k, v in env.items())


def prepare(i, m):
    units = f"{m.workdir}/{UNITS}"
    if i == N:
        m.write(units, "etcd2.socket.d/60-cluster.conf", socket_dropin(PROXY_CLIENT_PORT))
        m.write(units, "etcd2-peer.socket.d/60-cluster.conf", socket_dropin(PROXY_PEER_PORT))
        m.write(units, "etcd2.service.d/60-cluster.conf", proxy_dropin())
        return
    m.write(units, "etcd2.socket.d/60-cluster.conf", socket_dropin(CLIENT_PORTS[i]))
    m.write(units, "etcd2-peer.socket.d/60-cluster.conf", socket_dropin(PEER_PORTS[i]))
    m.write(units, "etcd2.service.d/60-cluster.conf", service_dropin(i))


@pytest.fixture(scope="module")
def cluster(machines_factory):
    ms = machines_factory(N + 1, prepare)
    _proxy.append(ms.pop())
    for m in ms:
        m.systemctl("start", "etcd2.socket", "etcd2-peer.socket")
    # Only the first member is started by hand (without waiting: its READY=1 needs a quorum). Its Raft
    # messages to the other two land on their peer sockets, which start their etcd2.service: the cluster
    # forms through socket activation, as on machines whose sockets are enabled.
    ms[0].systemctl("start", "--no-block", "etcd2.service")
    return ms


def busctl(m, *args, check=False):
    return m.run(["busctl", "--system", "--no-pager", *args], check=check)


def bus_prop(m, name):
    """A string property of the Cluster object, or None while etcd2 is not on the bus."""
    r = busctl(m, "get-property", BUS_NAME, BUS_PATH, BUS_IFACE, name)
    if r.returncode != 0:
        return None
    sig, _, value = r.stdout.strip().partition(" ")
    assert sig == "s", r.stdout
    return json.loads(value)


def leader_of(m):
    return bus_prop(m, "LeaderID") or None


def bus_label_unescape(label):
    return re.sub(r"_([0-9a-f]{2})", lambda x: chr(int(x.group(1), 16)), label)


def member_prop(m, path, name):
    r = busctl(m, "get-property", BUS_NAME, path, "io.etcd.etcd2.Member", name, check=True)
    return r.stdout.strip().partition(" ")[2]


def term_of(m):
    r = busctl(m, "get-property", BUS_NAME, BUS_PATH, BUS_IFACE, "RaftTerm", check=True)
    sig, value = r.stdout.split()
    assert sig == "t", r.stdout
    return int(value)


def members(m, i):
    code, body = m.http("GET", CLIENT_URLS[i] + "/v2/members")
    assert code == 200, f"GET /v2/members on {NAMES[i]}: {code} {body}"
    return json.loads(body)["members"]


def active(m):
    return m.prop("etcd2.service", "ActiveState") == "active"


# ---------------------------------------------------------------------------------------------- forming
def test_three_members_active(cluster):
    t0 = time.monotonic()
    for i, m in enumerate(cluster):
        m.wait_for(f"etcd2.service active on {NAMES[i]}", lambda: active(m), timeout=30)
    print(f"all three active {time.monotonic() - t0:.2f}s after the start jobs")
    for i, m in enumerate(cluster):
        assert m.prop("etcd2.service", "SubState") == "running"
        assert int(m.prop("etcd2.service", "NRestarts")) == 0
        env = m.prop("etcd2.service", "Environment")
        assert f"ETCD_NAME={NAMES[i]}" in env and f"ETCD_INITIAL_CLUSTER={INITIAL_CLUSTER}" in env, env
        # The sockets listen where the drop-ins say, and only there.
        assert m.prop("etcd2.socket", "Listen").split() == [f"127.0.0.1:{CLIENT_PORTS[i]}", "(Stream)"]
        assert m.prop("etcd2-peer.socket", "Listen").split() == [f"127.0.0.1:{PEER_PORTS[i]}", "(Stream)"]
        # One etcd2 process per machine: each PID namespace sees only its own.
        assert len(m.run(["pgrep", "-x", "etcd2"]).stdout.split()) == 1


def test_members_listed_everywhere(cluster):
    expected = sorted(zip(NAMES, PEER_URLS, CLIENT_URLS))
    ids = None
    for i, m in enumerate(cluster):
        # Names are published through the log after start: wait until every member has one.
        def all_named():
            ms = members(m, i)
            return ms if len(ms) == N and all(x.get("name") for x in ms) else None
        ms = m.wait_for(f"three named members on {NAMES[i]}", all_named, timeout=15)
        got = sorted((x["name"], x["peerURLs"][0], x["clientURLs"][0]) for x in ms)
        assert got == expected, ms
        assert all(len(x["peerURLs"]) == 1 and len(x["clientURLs"]) == 1 for x in ms), ms
        these = sorted(x["id"] for x in ms)
        assert len(set(these)) == N
        assert ids is None or these == ids, "members disagree on the IDs"
        ids = these
        # This machine's bus names its own member among them.
        assert bus_prop(m, "MemberID") == next(x["id"] for x in ms if x["name"] == NAMES[i])


def test_key_replicated(cluster):
    code, body = cluster[0].http("PUT", CLIENT_URLS[0] + "/v2/keys/sdcluster/a", {"value": "from-node0"})
    assert code in (200, 201), body
    index = json.loads(body)["node"]["modifiedIndex"]
    for i in (1, 2):
        code, body = cluster[i].http("GET", CLIENT_URLS[i] + "/v2/keys/sdcluster/a?quorum=true")
        assert code == 200, body
        node = json.loads(body)["node"]
        assert node["value"] == "from-node0" and node["modifiedIndex"] == index, node
    # A write on a follower or the leader alike goes through the cluster.
    code, body = cluster[2].http("PUT", CLIENT_URLS[2] + "/v2/keys/sdcluster/b", {"value": "from-node2"})
    assert code in (200, 201), body
    code, body = cluster[1].http("GET", CLIENT_URLS[1] + "/v2/keys/sdcluster/b?quorum=true")
    assert code == 200 and json.loads(body)["node"]["value"] == "from-node2", body


# ---------------------------------------------------------------------------------------------- D-Bus
def test_bus_same_leader_everywhere(cluster):
    ids = {x["id"] for x in members(cluster[0], 0)}
    leaders = []
    for i, m in enumerate(cluster):
        leaders.append(m.wait_for(f"LeaderID on {NAMES[i]}'s bus", lambda: leader_of(m), timeout=10))
    assert len(set(leaders)) == 1, f"buses disagree on the leader: {leaders}"
    assert leaders[0] in ids, (leaders, ids)
    assert re.fullmatch(r"[0-9a-f]+", leaders[0])
    # Exactly one machine says its own member is the leader.
    own = [bus_prop(m, "MemberID") for m in cluster]
    assert own.count(leaders[0]) == 1, (own, leaders)


def test_bus_tree_lists_three_members(cluster):
    ids = sorted(x["id"] for x in members(cluster[0], 0))
    for i, m in enumerate(cluster):
        r = busctl(m, "tree", "--list", BUS_NAME, check=True)
        paths = [p for p in r.stdout.split() if p.startswith(BUS_PATH + "/member/")]
        assert len(paths) == N, f"{NAMES[i]}: {r.stdout}"
        # The last label is the ID, escaped as sd_bus_path_encode() does (a leading digit becomes _3N).
        assert sorted(bus_label_unescape(p.rsplit("/", 1)[1]) for p in paths) == ids, r.stdout
        # Each member object agrees with /v2/members; IsLeader is true for the bus's LeaderID only.
        leader = leader_of(m)
        for p in paths:
            mid = member_prop(m, p, "ID")
            assert mid == json.dumps(bus_label_unescape(p.rsplit("/", 1)[1])), (p, mid)
            assert member_prop(m, p, "IsLeader") == ("true" if json.loads(mid) == leader else "false"), (p, leader)


# ---------------------------------------------------------------------------------------------- proxy
@pytest.fixture(scope="module")
def proxy(cluster):
    return _proxy[0]


def test_proxy_under_systemd(cluster, proxy):
    # Type=notify: the start job returns once the proxy said READY=1.
    proxy.systemctl("start", "etcd2.service")
    assert active(proxy)
    assert int(proxy.prop("etcd2.service", "NRestarts")) == 0
    # It learns the members' client URLs from their peer URLs, and forwards to them.
    def endpoints():
        code, body = proxy.http("GET", PROXY_URL + "/v2/config/local/proxy")
        eps = json.loads(body).get("endpoints") if code == 200 else None
        return eps if eps and sorted(eps) == sorted(CLIENT_URLS) else None
    proxy.wait_for("the proxy's three endpoints", endpoints, timeout=10)
    code, body = proxy.http("PUT", PROXY_URL + "/v2/keys/sdcluster/viaproxy", {"value": "proxied"})
    assert code in (200, 201), body
    code, body = cluster[1].http("GET", CLIENT_URLS[1] + "/v2/keys/sdcluster/viaproxy?quorum=true")
    assert code == 200 and json.loads(body)["node"]["value"] == "proxied", body
    code, body = proxy.http("GET", PROXY_URL + "/v2/members")
    assert code == 200 and sorted(x["name"] for x in json.loads(body)["members"]) == sorted(NAMES), body
    # Its state is in the data dir systemd gave it; the bus says what it is.
    out = proxy.run(["cat", "/var/lib/etcd2/proxy/cluster"]).stdout
    assert sorted(json.loads(out)["PeerURLs"]) == sorted(PEER_URLS), out
    assert proxy.run(["test", "!", "-e", "/var/lib/etcd2/member"], check=False).returncode == 0
    assert bus_prop(proxy, "State") == "StateProxy"
    assert "proxy (on) serving client requests" in proxy.journal("-u", "etcd2")


# ---------------------------------------------------------------------------------------------- failover
def test_leader_stop_elects_new_leader(cluster):
    old = leader_of(cluster[0])
    assert old
    own = [bus_prop(m, "MemberID") for m in cluster]
    li = own.index(old)
    lm = cluster[li]
    others = [i for i in range(N) if i != li]
    old_term = term_of(lm)

    # Stop the leader for good: the service, and its sockets too (else the others' vote requests on its
    # peer port would socket-activate it again at once).
    t0 = time.monotonic()
    lm.systemctl("stop", "etcd2.service", "etcd2.socket", "etcd2-peer.socket")
    assert lm.prop("etcd2.service", "ActiveState") == "inactive"
    assert lm.prop("etcd2.service", "Result") == "success"

    def agreed():
        ls = [leader_of(cluster[i]) for i in others]
        return ls[0] if ls[0] and ls[0] != old and ls[0] == ls[1] else None
    new = cluster[others[0]].wait_for("the other two agreeing on a new leader over D-Bus", agreed,
                                      timeout=10, interval=0.05)
    elapsed = time.monotonic() - t0
    print(f"new leader {new} (was {old}) agreed by both buses {elapsed:.2f}s after systemctl stop")
    assert new in own and new != old
    ni = own.index(new)
    nm = cluster[ni]

    # The new leader's journal has its election as a structured event, selectable by field.
    def elected():
        out = nm.journal("-u", "etcd2", "ETCD_EVENT=leader-elected", "-o", "json")
        es = [json.loads(x) for x in out.splitlines() if x.strip()]
        return [e for e in es if e.get("ETCD_MEMBER_ID") == new] or None
    entries = nm.wait_for(f"leader-elected in {NAMES[ni]}'s journal", elected, timeout=5)
    e = entries[-1]
    assert e.get("_SYSTEMD_UNIT") == "etcd2.service" and e.get("PRIORITY") == "5", e
    assert f"Member {new} became leader at term {e['ETCD_RAFT_TERM']}" in e["MESSAGE"], e
    assert e.get("ETCD_CLUSTER_ID") == bus_prop(nm, "ClusterID"), e
    assert int(e["ETCD_RAFT_TERM"]) > old_term, (e, old_term)
    assert term_of(nm) == int(e["ETCD_RAFT_TERM"])
    # journalctl's own text output, as an administrator would read it.
    text = nm.journal("-u", "etcd2", "ETCD_EVENT=leader-elected")
    assert f"became leader at term {e['ETCD_RAFT_TERM']}" in text, text
    # The old leader's machine never journaled an election for the new leader.
    assert not [x for x in lm.journal("-u", "etcd2", "ETCD_EVENT=leader-elected", "-o", "json").splitlines()
                if f'"ETCD_MEMBER_ID":"{new}"' in x]

    # Two of three still make a quorum: writes go on, and both survivors read them.
    oi = [i for i in others if i != ni][0]
    code, body = cluster[oi].http("PUT", CLIENT_URLS[oi] + "/v2/keys/sdcluster/after", {"value": "two-of-three"})
    assert code in (200, 201), body
    code, body = nm.http("GET", CLIENT_URLS[ni] + "/v2/keys/sdcluster/after?quorum=true")
    assert code == 200 and json.loads(body)["node"]["value"] == "two-of-three", body
    # The old leader stays down (no socket activation brought it back).
    assert lm.prop("etcd2.service", "ActiveState") == "inactive"


def test_proxy_follows_the_cluster_after_leader_loss(cluster, proxy):
    # The old leader is gone: the proxy fails over to the members that are left.
    def put():
        code, body = proxy.http("PUT", PROXY_URL + "/v2/keys/sdcluster/viaproxy2", {"value": "still"})
        return body if code in (200, 201) else None
    proxy.wait_for("a write through the proxy after the leader's loss", put, timeout=15, interval=0.2)
    code, body = proxy.http("GET", PROXY_URL + "/v2/keys/sdcluster/viaproxy2?quorum=true")
    assert code == 200 and json.loads(body)["node"]["value"] == "still", body
    assert active(proxy)
