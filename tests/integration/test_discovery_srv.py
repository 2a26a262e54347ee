# SPDX-License-Identifier: Apache-2.0
"""--discovery-srv (etcd2's discovery/srv.go): bootstrap from DNS SRV records. The test makes a private
network namespace (ip netns, lo up) with /etc/netns/<ns>/resolv.conf pointing at a dnsmasq that runs inside
it and serves _etcd-server._tcp.example.test SRV records and infraN.example.test A records on 127.0.0.N. The
members run inside it through `ip netns exec` (which bind-mounts that resolv.conf); the test's own thread
enters the namespace for its HTTP requests. Needs root, ip (iproute2) and /usr/sbin/dnsmasq (Debian's
dnsmasq-base); skips otherwise. Expected, as in etcd 2.3.8: the cluster forms with the members' own names,
host names in the peer URLs, and member IDs hashed from those URLs and the token only (the placeholder names
"0", "1" each member gives the others do not count); a member whose advertised URL is not among the records,
and a domain without records, exit with status 1 and etcd2's message."""

import atexit
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid

import pytest

import procs
from cluster import Cluster, Member, NetNS
from conftest import REFERENCE, REFERENCE_BINARY, only_23, unique
from test_members_stats import cluster_id, member_id

DNSMASQ = "/usr/sbin/dnsmasq"
DOMAIN = "example.test"
# member i: infra<i>.example.test = 127.0.0.<i+1>, ports differ too so that the SRV port matters
HOSTS = [(f"infra{i}", f"127.0.0.{i + 1}", 2380 + 100 * i, 2379 + 100 * i) for i in range(3)]
STRAY = ("infra3", "127.0.0.4", 2680, 2679)   # has an A record but no SRV record


def _available():
    if os.geteuid() != 0:
        return "not root: cannot create a network namespace"
    if not shutil.which("ip"):
        return "ip (iproute2) not installed"
    if not os.access(DNSMASQ, os.X_OK):
        return f"{DNSMASQ} (Debian package dnsmasq-base) not installed"
    return None


def _dns_answers(name):
    """One A query to 127.0.0.1:53 from this thread (which is in the namespace): answered with a record?"""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack(">HHHHHH", 0x2b2b, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(query, ("127.0.0.1", 53))
            reply = s.recv(512)
        except OSError:
            return False
    if len(reply) < 12:
        return False
    ident, flags, _, ancount = struct.unpack(">HHHH", reply[:8])
    return ident == 0x2b2b and flags & 0x000f == 0 and ancount > 0


class DnsNS:
    """A private network namespace with its own resolv.conf and a dnsmasq inside serving the records."""

    def __init__(self):
        self.ns = NetNS()
        self.ns.name = "etcd2-srv-" + uuid.uuid4().hex[:8]
        self.name = self.ns.name
        self.etc = f"/etc/netns/{self.name}"
        self.dnsmasq = None
        self.logf = None
        self.entered = False
        self.log_path = f"/tmp/etcd2-srv-dnsmasq-{self.name}.txt"

    def start(self, srv_records, host_records):
        atexit.register(self.stop)   # also on pytest's SIGTERM (conftest turns it into SystemExit)
        self.ns.enter()              # on failure it has deleted the namespace again
        self.entered = True
        os.makedirs(self.etc, exist_ok=True)
        with open(f"{self.etc}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        argv = ["ip", "netns", "exec", self.name, DNSMASQ, "--no-daemon", "--conf-file=/dev/null",
                "--no-resolv", "--no-hosts", "--pid-file=", "--listen-address=127.0.0.1",
                "--bind-interfaces",
                # authoritative for .test: unknown names get NXDOMAIN at once, not REFUSED
                "--local=/test/", "--log-queries"]
        argv += [f"--srv-host={svc}.{DOMAIN},{target},{port}" for svc, target, port in srv_records]
        argv += [f"--host-record={name},{ip}" for name, ip in host_records]
        self.logf = open(self.log_path, "wb")
        # same process group as pytest: meson's timeout (killpg) takes it along
        self.dnsmasq = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                        stderr=subprocess.STDOUT)
        probe = host_records[0][0]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.dnsmasq.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.dnsmasq.returncode}: {self.log()}")
            if _dns_answers(probe):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dnsmasq in {self.name} does not answer for {probe}: {self.log()}")

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def stop(self):
        """Idempotent: kills dnsmasq, removes the resolv.conf and deletes the namespace."""
        atexit.unregister(self.stop)
        if self.dnsmasq is not None and self.dnsmasq.poll() is None:
            self.dnsmasq.kill()
            self.dnsmasq.wait(timeout=10)
        if self.logf is not None:
            self.logf.close()
            self.logf = None
        shutil.rmtree(self.etc, ignore_errors=True)
        try:
            os.rmdir("/etc/netns")   # only if no other namespace has files there
        except OSError:
            pass
        try:
            os.unlink(self.log_path)
        except OSError:
            pass
        if self.entered:
            self.entered = False
            self.ns.exit()


def dns_serving(srv_records, host_records):
    """A DnsNS serving the records, for a fixture to `yield from`: skips the test where none can be made
    here; stopped at the fixture's teardown."""
    why = _available()
    if why:
        pytest.skip(f"SRV discovery test needs a private network namespace with dnsmasq: {why}")
    d = DnsNS()
    try:
        d.start(srv_records, host_records)
    except (OSError, subprocess.CalledProcessError) as e:
        d.stop()
        pytest.skip(f"cannot create/enter a network namespace or run dnsmasq: {e}")
    except RuntimeError:
        d.stop()
        raise
    yield d
    d.stop()


@pytest.fixture
def dns():
    yield from dns_serving([("_etcd-server._tcp", f"{n}.{DOMAIN}", p) for n, _, p, _ in HOSTS],
                           [(f"{n}.{DOMAIN}", ip) for n, ip, _, _ in HOSTS + [STRAY]])


class SrvMember(Member):
    """A member started with `ip netns exec` and --discovery-srv instead of --initial-cluster; its peer_url
    is the advertised one (host name), listen_peer_url the address it binds."""

    def __init__(self, cluster, name, ip, peer_port, client_port, domain):
        super().__init__(cluster, name, client_port, peer_port, host=ip)
        self.domain = domain
        self.listen_peer_url = f"http://{ip}:{peer_port}"
        self.peer_url = f"http://{name}.{DOMAIN}:{peer_port}"
        self.advertise = self.peer_url   # --initial-advertise-peer-urls

    def argv(self, initial_cluster, state):
        a = ["ip", "netns", "exec", self.cluster.dns.name, self.cluster.binary]
        if self.reference:
            a += ["--enable-v2"]
        return a + ["--name", self.name,
                    "--data-dir", self.data_dir,
                    "--listen-client-urls", self.url,
                    "--advertise-client-urls", self.url,
                    "--listen-peer-urls", self.listen_peer_url,
                    "--initial-advertise-peer-urls", self.advertise,
                    *(["--initial-cluster", initial_cluster] if self.cluster.static else
                      ["--discovery-srv", self.domain]),
                    "--initial-cluster-state", state,
                    "--initial-cluster-token", self.cluster.token,
                    "--heartbeat-interval", "100",
                    "--election-timeout", "1000"]


class SrvCluster(Cluster):
    def __init__(self, dns, hosts=HOSTS, domain=DOMAIN, reference=None, token=None, static=False):
        """static: --initial-cluster with the same host-name peer URLs instead of --discovery-srv."""
        self.dns = dns
        self.static = static
        self._hosts = list(hosts)
        self._domain = domain
        super().__init__(len(hosts), reference=reference, start=False)
        if token:
            self.token = token
            for m in self.members:
                m.id = "%x" % member_id([m.peer_url], self.token)

    def _new_member(self):
        name, ip, peer_port, client_port = self._hosts.pop(0)
        m = SrvMember(self, name, ip, peer_port, client_port, self._domain)
        self.members.append(m)
        return m


def _members(m):
    r = m.get("/v2/members", timeout=5)
    assert r.status_code == 200, r.text
    return r.headers.get("X-Etcd-Cluster-ID"), {x["id"]: x for x in r.json()["members"]}


def _bootstrap(dns, reference=None, token=None, static=False, ip_advertisers=()):
    """Starts the 3 members and checks the cluster; returns {id: (name, peerURLs)} and the cluster ID.
    Members named in ip_advertisers advertise their IP address instead of their host name."""
    c = SrvCluster(dns, reference=reference, token=token, static=static)
    for m in c.members:
        if m.name in ip_advertisers:
            m.advertise = m.listen_peer_url
    try:
        c.start_all()
        want_ids = {m.name: member_id([m.peer_url], c.token) for m in c.members}
        want_cid = "%x" % cluster_id(list(want_ids.values()))
        cids = set()
        views = []
        for m in c.members:
            cid, ms = _members(m)
            cids.add(cid)
            views.append({i: (x["name"], tuple(x["peerURLs"])) for i, x in ms.items()})
        assert cids == {want_cid}, (cids, want_cid)
        assert all(v == views[0] for v in views), views
        want = {"%x" % want_ids[m.name]: (m.name, (m.peer_url,)) for m in c.members}
        assert views[0] == want

        # a write on one member is readable on another
        key = "/" + unique("srv")
        r = c.members[0].put(f"/v2/keys{key}", data={"value": "via-dns"})
        assert r.status_code == 201, r.text
        idx = r.json()["node"]["modifiedIndex"]
        r = c.members[2].get(f"/v2/keys{key}", params={"quorum": "true"})
        assert r.status_code == 200 and r.json()["node"]["value"] == "via-dns", r.text
        assert r.json()["node"]["modifiedIndex"] == idx

        if not c.reference and not static:
            log = c.members[1].log_tail()
            assert f"got bootstrap from DNS for etcd-server at http://infra0.{DOMAIN}:2380" in log, log
        deaths = c.deaths()
        assert not deaths, "\n".join(deaths)
        return views[0], cids.pop()
    finally:
        c.cleanup()


def _expect_exit_1(dns, member_host, domain, message):
    c = SrvCluster(dns, hosts=[member_host], domain=domain)
    m = c.members[0]
    try:
        m.start()
        try:
            rc = m.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{m.name} did not exit; log:\n{m.log_tail(4000)}")
        m.exit_expected = True
        log = m.log_tail()
        assert rc == 1, (rc, log)
        assert message in log, log
        return log
    finally:
        c.cleanup()


# etcd 3.4.23's GetDNSClusterNames() keeps the _etcd-server (http) entries only when that lookup *fails*, so
# it cannot bootstrap a plain-http cluster from SRV records at all (it exits with the _etcd-server-ssl lookup
# error); without TLS in these tests, the bootstrap tests check etcd 2.3's behaviour only.
@only_23
def test_srv_bootstrap(dns):
    _bootstrap(dns)


@only_23
def test_srv_advertised_ip_matches_record(dns):
    """etcd2 matches its own entry by resolved address: a member advertising http://127.0.0.2:2480 is
    infra1.example.test:2480 in the records, gets its name, passes the bootstrap check (URLs equal once
    resolved), and its ID and peer URL are those of the host-name URL from the records, as for the others."""
    _bootstrap(dns, ip_advertisers=("infra1",))


@only_23
def test_srv_member_not_in_records(dns):
    _expect_exit_1(dns, STRAY, DOMAIN, 'cannot find local etcd member "infra3" in SRV records')


def test_srv_domain_without_records(dns):
    # etcd 2.3: both lookups fail -> "SRV discovery failed: too many errors ..."; 3.4 exits with the first
    # error
    msg = "error querying DNS SRV records" if REFERENCE else "too many errors querying DNS SRV records"
    log = _expect_exit_1(dns, HOSTS[0], "nothing.test", msg)
    if not REFERENCE:
        assert "error querying DNS SRV records for _etcd-server" in log, log
        assert "_etcd-server._tcp.nothing.test" in log, log


@pytest.mark.skipif(REFERENCE, reason="runs etcd 3.4 next to ours itself")
def test_srv_bootstrap_same_ids_as_etcd34(dns):
    """Our SRV bootstrap gives the same member IDs, cluster ID, names and peer URLs as etcd 3.4 (--enable-v2)
    bootstrapped statically with the same host-name peer URLs and token: the placeholder names each member
    gives the others during SRV discovery do not enter the IDs. (etcd 3.4 itself cannot bootstrap over http
    from SRV records, see above.)"""
    if not os.access(REFERENCE_BINARY, os.X_OK):
        pytest.skip(f"{REFERENCE_BINARY} not installed")
    token = "etcd2-srv-" + uuid.uuid4().hex[:8]
    ours, ours_cid = _bootstrap(dns, reference=False, token=token)
    theirs, theirs_cid = _bootstrap(dns, reference=True, token=token, static=True)
    assert ours_cid == theirs_cid
    assert ours == theirs


class SrvProxy(procs.Process):
    """`etcd2 --proxy on --discovery-srv DOMAIN` inside the DNS namespace: its peers are the SRV records."""

    stop_strict = False

    def __init__(self, dns, binary, ip="127.0.0.9", port=2379):
        super().__init__("srv-proxy", "etcd2-srvpx-", "etcd2-srvpx-log-")
        self.url = f"http://{ip}:{port}"
        self.spawn(["ip", "netns", "exec", dns.name, binary, "--proxy", "on", "--name", "srv-proxy",
                    "--data-dir", self.data_dir, "--listen-client-urls", self.url, "--discovery-srv", DOMAIN])


@only_23
def test_srv_proxy(dns):
    """--proxy on --discovery-srv: the proxy's peers are the SRV records; it finds the members' client URLs
    and forwards to them."""
    c = SrvCluster(dns)
    p = None
    try:
        c.start_all()
        p = SrvProxy(dns, c.binary)

        def endpoints():
            r = p.get("/v2/config/local/proxy", timeout=2)
            return r.status_code == 200 and sorted(r.json()["endpoints"]) == sorted(m.url for m in c.members)
        p.wait_ready(endpoints, 20, "the members' three client URLs", fail=pytest.fail)
        key = "/" + unique("srvpx")
        r = p.put(f"/v2/keys{key}", data={"value": "via-proxy"})
        assert r.status_code == 201, r.text
        r = c.members[1].get(f"/v2/keys{key}", params={"quorum": "true"})
        assert r.status_code == 200 and r.json()["node"]["value"] == "via-proxy", r.text
        with open(os.path.join(p.data_dir, "proxy", "cluster")) as f:
            assert sorted(json.load(f)["PeerURLs"]) == sorted(m.peer_url for m in c.members)
        assert p.alive(), p.log_tail()
    finally:
        if p is not None:
            p.cleanup()
        c.cleanup()
