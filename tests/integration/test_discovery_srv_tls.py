# SPDX-License-Identifier: Apache-2.0
"""--discovery-srv with only _etcd-server-ssl._tcp records (issue 11, item 2): they give https:// peer URLs
(etcd2's srv.go), and a proxy started with them takes them as its peers: its refresh asks the member's
https peer URL (presenting --peer-cert-file, the member has --peer-client-cert-auth) and it forwards to the
member's https client URL (--client-cert-auth). The member is etcd 3.4 with peer and client TLS, bootstrapped
statically with the host-name URL of the record; the DNS fake is test_discovery_srv.py's (a private network
namespace with dnsmasq: root, ip and dnsmasq needed, skipped otherwise). Certificates are made at test time
with the record's host name and address in them. Our proxy only (the member is the reference).

Members bootstrapped the same way: three members with --discovery-srv where DNS has only _etcd-server-ssl
records (so their initial cluster is https://), peer TLS with peer client certificates and https advertised
peer URLs, form a cluster; a member whose certificate another CA signed is shut out by the two good ones, which
form a cluster of 2 out of 3. Both run against etcd 3.4 too with ETCD2_REFERENCE=1 (the log lines checked
differ)."""

import json
import os
import shutil
import time

import pytest
import requests

import procs
import tls_certs
from conftest import REFERENCE, REFERENCE_BINARY, OUR_BINARY, unique
from test_discovery_srv import DOMAIN, HOSTS, SrvCluster, SrvMember, _members, dns_serving
from test_members_stats import cluster_id, member_id

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
our_proxy = pytest.mark.skipif(REFERENCE, reason="our proxy against an etcd 3.4 member")

HOST, IP, PEER_PORT, CLIENT_PORT = f"infra0.{DOMAIN}", "127.0.0.1", 2380, 2379


class Certs(tls_certs.Certs):
    def __init__(self, d):
        super().__init__(d)
        self.make_ca("ca")
        self.make_cert("member", "serverAuth,clientAuth", san=f"DNS:{HOST},IP:{IP}")
        # etcd 3.4 checks a peer client certificate against the address it comes from (127.0.0.1 here)
        self.make_cert("proxy", "clientAuth", san="IP:127.0.0.1,IP:127.0.0.9")


@pytest.fixture
def dns():
    if not os.access(REFERENCE_BINARY, os.X_OK):
        pytest.skip(f"{REFERENCE_BINARY} not installed")
    yield from dns_serving([("_etcd-server-ssl._tcp", HOST, PEER_PORT)], [(HOST, IP)])


class InNs(procs.Process):
    stop_strict = False

    def __init__(self, dns, name, argv, url):
        super().__init__(name, f"etcd2-srvtls-{name}-", f"etcd2-srvtls-log-{name}-")
        self.url = url
        self.spawn(["ip", "netns", "exec", dns.name, *[a.replace("@DATA@", self.data_dir) for a in argv]])


@our_proxy
def test_ssl_records_give_https_peers_to_the_proxy(dns, tmp_path):
    certs = Certs(str(tmp_path))
    client_url = f"https://{IP}:{CLIENT_PORT}"
    peer_url = f"https://{HOST}:{PEER_PORT}"
    member = InNs(dns, "infra0", [
        REFERENCE_BINARY, "--enable-v2", "--name", "infra0", "--data-dir", "@DATA@",
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", f"https://{IP}:{PEER_PORT}", "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"infra0={peer_url}", "--initial-cluster-state", "new",
        "--cert-file", certs.crt("member"), "--key-file", certs.key("member"),
        "--client-cert-auth", "--trusted-ca-file", certs.crt("ca"),
        "--peer-cert-file", certs.crt("member"), "--peer-key-file", certs.key("member"),
        "--peer-client-cert-auth", "--peer-trusted-ca-file", certs.crt("ca")], client_url)
    proxy = None
    try:
        tls = {"verify": certs.crt("ca"), "cert": (certs.crt("proxy"), certs.key("proxy"))}
        member.wait_ready(lambda: member.get("/v2/keys/", timeout=1, **tls).status_code == 200, 30,
                          "the member over TLS", fail=pytest.fail)
        proxy = InNs(dns, "srv-tls-proxy", [
            OUR_BINARY, "--proxy", "on", "--name", "srv-tls-proxy", "--data-dir", "@DATA@",
            "--listen-client-urls", "http://127.0.0.9:2379", "--discovery-srv", DOMAIN,
            "--peer-cert-file", certs.crt("proxy"), "--peer-key-file", certs.key("proxy"),
            "--peer-trusted-ca-file", certs.crt("ca")], "http://127.0.0.9:2379")

        def endpoints():
            r = proxy.get("/v2/config/local/proxy", timeout=2)
            return r.status_code == 200 and r.json()["endpoints"] == [client_url]
        proxy.wait_ready(endpoints, 20, "the member's https client URL", fail=pytest.fail)
        assert f"got bootstrap from DNS for etcd-server-ssl at {peer_url}" in proxy.log_tail(), proxy.log_tail()
        with open(os.path.join(proxy.data_dir, "proxy", "cluster")) as f:
            assert json.load(f)["PeerURLs"] == [peer_url]

        key = "/v2/keys/" + unique("srvtls")
        r = proxy.put(key, data={"value": "via-ssl-srv"})
        assert r.status_code == 201, r.text
        r = member.get(key, timeout=5, **tls)
        assert r.status_code == 200 and r.json()["node"]["value"] == "via-ssl-srv", r.text
        assert proxy.alive() and proxy.sanitizer_report() is None, proxy.log_tail()
    finally:
        if proxy is not None:
            proxy.cleanup()
        member.cleanup()


# -- members bootstrapped from _etcd-server-ssl records -------------------------------------------------
class MemberCerts(tls_certs.Certs):
    """One member certificate for all three hosts (their names and addresses; etcd 3.4 checks a peer
    client certificate against the address it comes from) and the same from a foreign CA."""

    def __init__(self, d):
        super().__init__(d)
        self.make_ca("ca")
        self.make_ca("foreign")
        san = ",".join([f"DNS:{n}.{DOMAIN}" for n, _, _, _ in HOSTS] + [f"IP:{ip}" for _, ip, _, _ in HOSTS])
        self.make_cert("member", "serverAuth,clientAuth", san=san)
        self.make_cert("stranger", "serverAuth,clientAuth", ca="foreign", san=san)


@pytest.fixture
def dns_ssl():
    """The three hosts of test_discovery_srv.py, with _etcd-server-ssl._tcp records only."""
    yield from dns_serving([("_etcd-server-ssl._tcp", f"{n}.{DOMAIN}", p) for n, _, p, _ in HOSTS],
                           [(f"{n}.{DOMAIN}", ip) for n, ip, _, _ in HOSTS])


class SslSrvMember(SrvMember):
    """An SRV-bootstrapped member with an https peer URL (host name advertised, address listened on), peer
    TLS with peer client certificates; client URL plain http. `cert` names its peer certificate."""

    cert = "member"

    def __init__(self, *a):
        super().__init__(*a)
        self.listen_peer_url = self.listen_peer_url.replace("http://", "https://")
        self.peer_url = self.peer_url.replace("http://", "https://")
        self.advertise = self.peer_url

    def argv(self, initial_cluster, state):
        c = self.cluster.certs
        return super().argv(initial_cluster, state) + [
            "--peer-cert-file", c.crt(self.cert), "--peer-key-file", c.key(self.cert),
            "--peer-trusted-ca-file", c.crt("ca"), "--peer-client-cert-auth"]


class SslSrvCluster(SrvCluster):
    def __init__(self, dns, certs, **kw):
        self.certs = certs
        super().__init__(dns, **kw)

    def _new_member(self):
        name, ip, peer_port, client_port = self._hosts.pop(0)
        m = SslSrvMember(self, name, ip, peer_port, client_port, self._domain)
        self.members.append(m)
        return m


def test_ssl_records_bootstrap_tls_members(dns_ssl, tmp_path):
    """Three members from _etcd-server-ssl records: one cluster with the IDs of the https host-name URLs,
    /v2/members shows those https peer URLs on every member, a write through one is read through the
    others."""
    c = SslSrvCluster(dns_ssl, MemberCerts(str(tmp_path)))
    try:
        c.start_all()
        want_ids = {m.name: member_id([m.peer_url], c.token) for m in c.members}
        want_cid = "%x" % cluster_id(list(want_ids.values()))
        want = {"%x" % want_ids[m.name]: (m.name, (m.peer_url,)) for m in c.members}
        for m in c.members:
            cid, ms = _members(m)
            assert cid == want_cid, (m.name, cid, want_cid)
            assert {i: (x["name"], tuple(x["peerURLs"])) for i, x in ms.items()} == want, m.name
            assert all(x["peerURLs"][0].startswith("https://infra") for x in ms.values())

        key = "/v2/keys/" + unique("srvtlsm")
        r = c.members[0].put(key, data={"value": "via-ssl-members"}, timeout=15)
        assert r.status_code == 201, r.text
        idx = r.json()["node"]["modifiedIndex"]
        for m in c.members[1:]:
            r = m.get(key, params={"quorum": "true"}, timeout=15)
            assert r.status_code == 200 and r.json()["node"]["value"] == "via-ssl-members", (m.name, r.text)
            assert r.json()["node"]["modifiedIndex"] == idx

        if not c.reference:
            log = c.members[1].log_tail(200000)
            assert f"got bootstrap from DNS for etcd-server-ssl at https://infra0.{DOMAIN}:2380" in log, log[-4000:]
        deaths = c.deaths()
        assert not deaths, "\n".join(deaths)
    finally:
        c.cleanup()


def test_ssl_records_member_with_foreign_certificate_is_refused(dns_ssl, tmp_path):
    """infra2 of the records presents a certificate another CA signed (it trusts ours): infra0 and infra1
    form a cluster (2 of 3), refuse its connections and log it; it never learns a leader nor the data, and
    says why (its handshakes with the others fail)."""
    c = SslSrvCluster(dns_ssl, MemberCerts(str(tmp_path)))
    good, stranger = c.members[:2], c.members[2]
    stranger.cert = "stranger"
    try:
        c.start_all(wait=False)
        leader = c.wait_leader(members=good, timeout=30)
        key = "/v2/keys/" + unique("srvtlsf")
        r = leader.put(key, data={"value": "good-only"}, timeout=15)
        assert r.status_code == 201, r.text
        for m in good:
            r = m.get(key, params={"quorum": "true"}, timeout=15)
            assert r.status_code == 200 and r.json()["node"]["value"] == "good-only", (m.name, r.text)
        time.sleep(2)
        assert stranger.alive(), stranger.log_tail(4000)
        # the good two list it (it is in the records) but it never published its name and client URL
        _, ms = _members(leader)
        sid = "%x" % member_id([stranger.peer_url], c.token)
        assert ms[sid]["peerURLs"] == [stranger.peer_url] and not ms[sid]["clientURLs"], ms
        try:
            r = stranger.get("/v2/stats/self", timeout=3)
            assert r.status_code != 200 or not r.json().get("leaderInfo", {}).get("leader"), r.text
        except requests.Timeout:
            assert REFERENCE   # etcd 3.4 serves nothing before it joined
        try:
            r = stranger.get(key, timeout=5)
            assert r.status_code == 404, r.text
        except requests.Timeout:
            assert REFERENCE
        assert c.wait_leader(members=good, timeout=10) is leader
        if REFERENCE:
            # etcd 3.4: 'rejected connection from "127.0.0.1:N" (error "tls: failed to verify client
            # certificate: x509: certificate signed by unknown authority", ...)'
            for m in good:
                assert "certificate signed by unknown authority" in m.log_tail(200000), m.log_tail(4000)
            assert "rejected connection from" in stranger.log_tail(200000), stranger.log_tail(4000)
            stranger.exit_expected = True
            return

        # ours: each good one refuses the stranger's connections (it presents no certificate of our CA) and
        # does not trust the stranger's certificate when it dials it; the stranger learns why
        for m in good:
            log = m.log_tail(200000)
            assert "Rejected a TLS connection to the peer port from 127.0.0.1" in log, log[-4000:]
            assert (f"TLS handshake with member {sid} ({stranger.peer_url}) failed: "
                    "The certificate is NOT trusted") in log, log[-4000:]
        # the stranger's side: the refusal of its certificate arrives as an alert after its side of the TLS 1.3
        # handshake, sometimes before its request went out (peer.c reads the alert then too); its first TLS
        # attempt with a member may come a backoff after the refused connects of the start
        wants = [f"TLS handshake with member {m.id} ({m.peer_url}) failed: the member sent the alert" for m in good]
        deadline = time.monotonic() + 30
        while not all(w in stranger.log_tail(200000) for w in wants) and time.monotonic() < deadline:
            time.sleep(0.2)
        slog = stranger.log_tail(200000)
        assert f"got bootstrap from DNS for etcd-server-ssl at https://infra0.{DOMAIN}:2380" in slog, slog[-4000:]
        for w in wants:
            assert w in slog, slog[-4000:]
        deaths = c.deaths()
        assert not deaths, "\n".join(deaths)
        stranger.exit_expected = True
    finally:
        c.cleanup()
