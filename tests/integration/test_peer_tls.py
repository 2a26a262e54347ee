# SPDX-License-Identifier: Apache-2.0
"""Peer TLS (issue 11, item 2, the member side): https peer URLs with --peer-cert-file/--peer-key-file,
peer client certificates with --peer-client-cert-auth/--peer-trusted-ca-file (and the deprecated
--peer-ca-file), raft streams over TLS in both directions, the member-list fetch of a joining member over
TLS. Certificates are made at test time with openssl (test_tls.py's Certs): a CA, a foreign CA, member
certificates (serverAuth and clientAuth, SANs for 127.0.0.1) from each. The members' client URLs are https
too (client TLS with client certificates). With ETCD2_REFERENCE=1 the cluster tests run against etcd 3.4
with the same flags (the oracle); tests of our log lines are ours only."""

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import pytest
import requests

import procs
from cluster import Cluster, Member, read_tree, wait_converged
from conftest import REFERENCE, Daemon, _require_binary, free_ports, only_ours, unique
from test_tls import Certs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


class PeerCerts(Certs):
    def __init__(self, d):
        super().__init__(d)
        # a would-be member whose certificate another CA signed
        self.make_cert("stranger", "serverAuth,clientAuth", ca="foreign")


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="etcd2-it-peertls-")
    try:
        yield PeerCerts(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class TlsMember(Member):
    """A member with https client and peer URLs. `cert` names its peer certificate."""

    cert = "server"

    def __init__(self, cluster, name, client_port, peer_port, host="127.0.0.1", uid=None):
        super().__init__(cluster, name, client_port, peer_port, host=host, uid=uid)
        self.url = f"https://{host}:{client_port}"
        self.peer_url = f"https://{host}:{peer_port}"

    def argv(self, initial_cluster, state):
        c = self.cluster.certs
        a = super().argv(initial_cluster, state)
        return a + ["--cert-file", c.crt("server"), "--key-file", c.key("server"),
                    "--trusted-ca-file", c.crt("ca"), "--client-cert-auth",
                    "--peer-cert-file", c.crt(self.cert), "--peer-key-file", c.key(self.cert),
                    "--peer-trusted-ca-file", c.crt("ca")] + list(self.cluster.peer_args)

    def req(self, method, path, **kw):
        kw.setdefault("verify", self.cluster.certs.crt("ca"))
        kw.setdefault("cert", self.cluster.certs.pair("client"))
        return super().req(method, path, **kw)

    def stats_self(self, timeout=1):
        r = self.get("/v2/stats/self", timeout=timeout)
        r.raise_for_status()
        return r.json()


class TlsCluster(Cluster):
    def __init__(self, certs, n=3, peer_args=("--peer-client-cert-auth",), **kw):
        self.certs = certs
        self.peer_args = list(peer_args)
        super().__init__(n=n, **kw)

    def _new_member(self):
        m = super()._new_member()
        t = TlsMember(self, m.name, m.client_port, m.peer_port, host=self.host)
        self.members[-1] = t
        m.cleanup()
        return t


@pytest.fixture
def make_tls_cluster(certs):
    made = []

    def make(n=3, wait=True, certs_of=None, **kw):
        c = TlsCluster(certs, n=n, start=False, **kw)
        made.append(c)
        for i, cert in (certs_of or {}).items():
            c.members[i].cert = cert
        c.start_all(wait=wait)
        return c

    yield make
    procs.finish([m for c in made for m in c.members])


def _write_through_each(c, prefix, n=10):
    want = {}
    for m in c.live():
        for i in range(n):
            key = f"{prefix}/{m.name}-{i}"
            r = m.put("/v2/keys" + key, data={"value": f"v{i}"}, timeout=15)
            assert r.status_code == 201, f"{m.name}: {r.status_code} {r.text}"
            want[key] = f"v{i}"
    return want


def test_tls_cluster_writes_and_reads(make_tls_cluster):
    """3 members, peer TLS with client certificates and client TLS: writes through every member, every
    member reads them all (quorum and local reads agree); the member list shows the https peer URLs."""
    c = make_tls_cluster(3)
    prefix = "/" + unique("ptls")
    want = _write_through_each(c, prefix)
    tree = wait_converged(c.live(), prefix)
    assert {k: v for k, (v, _) in tree.items()} == want
    for m in c.live():
        assert {k: v for k, (v, _) in read_tree(m, prefix).items()} == want
    r = c.members[0].get("/v2/members")
    assert r.status_code == 200, r.text
    assert sorted(x["peerURLs"][0] for x in r.json()["members"]) == sorted(m.peer_url for m in c.members)
    for x in r.json()["members"]:
        assert x["peerURLs"][0].startswith("https://")


def test_kill9_under_tls_catches_up(make_tls_cluster):
    c = make_tls_cluster(3)
    prefix = "/" + unique("ptlsk")
    leader = c.leader()
    victim = c.followers(leader)[0]
    victim.kill9()
    want = {}
    for i in range(30):
        r = leader.put(f"/v2/keys{prefix}/k{i}", data={"value": str(i)}, timeout=15)
        assert r.status_code == 201, r.text
        want[f"{prefix}/k{i}"] = str(i)
    victim.restart()
    c.wait_leader(timeout=30)
    tree = wait_converged(c.live(), prefix, timeout=30)
    assert {k: v for k, (v, _) in tree.items()} == want
    # and the restarted member takes writes again
    r = victim.put(f"/v2/keys{prefix}/after", data={"value": "x"}, timeout=15)
    assert r.status_code == 201, r.text


def test_large_values_and_snapshot_over_tls(make_tls_cluster):
    """Frames far beyond one TLS record and the socket buffer: 1 MB values through a follower, and a
    follower that missed more than --snapshot-count entries catches up from a snapshot sent over TLS."""
    c = make_tls_cluster(3, snapshot_count=100)
    prefix = "/" + unique("ptlsb")
    leader = c.leader()
    follower, victim = c.followers(leader)
    big = os.urandom(500_000).hex()
    r = follower.put(f"/v2/keys{prefix}/big", data={"value": big}, timeout=30)
    assert r.status_code == 201, r.text
    victim.kill9()
    want = {f"{prefix}/big": big}
    for i in range(250):
        r = leader.put(f"/v2/keys{prefix}/k{i}", data={"value": "x" * 2000}, timeout=15)
        assert r.status_code == 201, r.text
        want[f"{prefix}/k{i}"] = "x" * 2000
    victim.restart()
    c.wait_leader(timeout=30)
    tree = wait_converged(c.live(), prefix, timeout=60)
    assert {k: v for k, (v, _) in tree.items()} == want


def test_member_add_of_a_tls_member(make_tls_cluster):
    """member add with an https peer URL; the new member fetches the member list over TLS (with its peer
    certificate: the members require one), streams, and catches up."""
    c = make_tls_cluster(3)
    prefix = "/" + unique("ptlsa")
    want = _write_through_each(c, prefix, n=5)
    new, r = c.add_member()
    assert r.json()["peerURLs"] == [new.peer_url]
    c.wait_leader(timeout=30)
    c.wait_published(timeout=30)
    tree = wait_converged(c.live(), prefix, timeout=30)
    assert {k: v for k, (v, _) in tree.items()} == want
    r = new.put(f"/v2/keys{prefix}/new", data={"value": "n"}, timeout=15)
    assert r.status_code == 201, r.text


def _peer_tls_context(certs, cert=None):
    ctx = ssl.create_default_context(cafile=certs.crt("ca"))
    if cert:
        ctx.load_cert_chain(certs.crt(cert), certs.key(cert))
    return ctx


def _https_get(port, path, ctx, timeout=5):
    """Raw GET over TLS: the answer's bytes, or the exception that ended it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                out = b""
                while True:
                    d = s.recv(65536)
                    if not d:
                        return out
                    out += d
    except (OSError, ssl.SSLError) as e:
        return e


def test_peer_port_refuses_without_a_certificate(make_tls_cluster):
    """--peer-client-cert-auth: without a certificate of the trusted CA nothing of the peer protocol is
    served (not /members, /version nor the raft stream upgrade); plain HTTP to the TLS peer port gets no
    answer; openssl s_client and curl without a certificate get nothing; with a member certificate
    /members answers (the control)."""
    c = make_tls_cluster(3)
    m = c.members[0]
    certs = c.certs
    for path in ("/members", "/version", "/raft/stream"):
        for cert in (None, "stranger", "intruder"):
            out = _https_get(m.peer_port, path, _peer_tls_context(certs, cert))
            assert not isinstance(out, bytes) or b"HTTP/1.1" not in out, (path, cert, out)
    # a certificate from the CA: served
    out = _https_get(m.peer_port, "/members", _peer_tls_context(certs, "server"))
    assert isinstance(out, bytes) and out.startswith(b"HTTP/1.1 200") and b"peerURLs" in out, out

    # plain HTTP to the TLS port: closed without an HTTP answer
    with socket.create_connection(("127.0.0.1", m.peer_port), timeout=5) as s:
        s.sendall(b"GET /members HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    break
                got += d
        except OSError:
            pass
    assert b"peerURLs" not in got and not got.startswith(b"HTTP/1.1 200"), got

    # a raft stream upgrade in plain HTTP (a member without TLS): refused
    with socket.create_connection(("127.0.0.1", m.peer_port), timeout=5) as s:
        s.sendall(b"POST /raft/stream HTTP/1.1\r\nHost: x\r\nX-Server-From: 1\r\nX-Etcd-Cluster-ID: 1\r\n"
                  b"Connection: Upgrade\r\nUpgrade: etcd2-raft/1\r\nContent-Length: 0\r\n\r\n")
        try:
            got = s.recv(4096)
        except OSError:
            got = b""
    assert b"101" not in got, got

    if shutil.which("curl"):
        p = subprocess.run(["curl", "-sS", "--http1.1", "--max-time", "5", "--cacert", certs.crt("ca"),
                            f"https://127.0.0.1:{m.peer_port}/members"], capture_output=True, text=True)
        assert p.returncode != 0 and "peerURLs" not in p.stdout, (p.returncode, p.stdout, p.stderr)
        p = subprocess.run(["curl", "-sS", "--http1.1", "--max-time", "5", "--cacert", certs.crt("ca"), "--cert",
                            certs.crt("server"), "--key", certs.key("server"),
                            f"https://127.0.0.1:{m.peer_port}/members"], capture_output=True, text=True)
        assert p.returncode == 0 and "peerURLs" in p.stdout, (p.returncode, p.stdout, p.stderr)
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{m.peer_port}", "-CAfile", certs.crt("ca"),
                        "-quiet", "-verify_return_error"],
                       input="GET /members HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       capture_output=True, text=True, timeout=15)
    assert "peerURLs" not in p.stdout and "HTTP/1.1" not in p.stdout, p.stdout
    # the members never noticed
    prefix = "/" + unique("ptlsr")
    _write_through_each(c, prefix, n=2)


def test_member_with_a_foreign_certificate_is_shut_out(make_tls_cluster):
    """A member whose certificate another CA signed cannot stream to the others nor they to it: the other
    two keep working (a quorum of 3), it never learns a leader, and the refusals are logged."""
    # the third trusts our CA, so only its own certificate is wrong
    c = make_tls_cluster(3, wait=False, certs_of={2: "stranger"})
    stranger = c.members[2]
    good = c.members[:2]
    leader = c.wait_leader(members=good, timeout=30)
    prefix = "/" + unique("ptlsf")
    for m in good:
        r = m.put(f"/v2/keys{prefix}/{m.name}", data={"value": "ok"}, timeout=15)
        assert r.status_code == 201, r.text
    time.sleep(2)
    assert stranger.alive(), stranger.log_tail(4000)
    # it has none of the cluster's data and no leader
    try:
        r = stranger.get("/v2/stats/self", timeout=3)
        assert r.json().get("state") != "StateFollower" or not r.json().get("leaderInfo", {}).get("leader"), r.text
    except requests.RequestException:
        pass
    try:
        r = stranger.get(f"/v2/keys{prefix}?quorum=true", timeout=5)
        assert r.status_code != 200, r.text
    except requests.Timeout:
        pass   # a quorum read waits for a leader that never comes
    try:
        r = stranger.get(f"/v2/keys{prefix}", timeout=5)
        assert r.status_code == 404, r.text
    except requests.Timeout:
        assert REFERENCE   # etcd 3.4 serves nothing before it joined
    assert c.wait_leader(members=good, timeout=10) is leader
    if not REFERENCE:
        # our side: the stranger's certificate fails verification when we dial it, and it logs ours refused
        logs = "".join(m.log_tail(200000) for m in good)
        assert "TLS handshake with member" in logs, logs[-4000:]
        assert "Rejected a TLS connection to the peer port from 127.0.0.1" in logs, logs[-4000:]
        assert "TLS handshake with member" in stranger.log_tail(200000), stranger.log_tail(4000)
    stranger.exit_expected = True


# -- flag checks ----------------------------------------------------------------------------------------
def _exit_with(args, timeout=15):
    d = Daemon(extra_args=args, wait=False)
    try:
        rc = d.wait_exit(timeout)
        return rc, d.log_tail()
    finally:
        d.cleanup()


def test_https_peer_url_without_peer_cert(certs):
    """etcd2 names the URL ("https://127.0.0.1:1"), etcd 3.4 the address ("127.0.0.1:1")."""
    _require_binary()
    port = free_ports(1)[0]
    url = f"https://127.0.0.1:{port}"
    rc, log = _exit_with(["--listen-peer-urls", url, "--initial-advertise-peer-urls", url,
                          "--initial-cluster", f"node1={url}"])
    assert rc == 1, log
    where = url[len("https://"):] if REFERENCE else url
    assert f"cannot listen on TLS for {where}: KeyFile and CertFile are not presented" in log


def test_peer_cert_without_key(certs):
    _require_binary()
    port = free_ports(1)[0]
    url = f"https://127.0.0.1:{port}"
    rc, log = _exit_with(["--listen-peer-urls", url, "--initial-advertise-peer-urls", url,
                          "--initial-cluster", f"node1={url}", "--peer-cert-file", certs.crt("server")])
    assert rc == 1, log
    assert f"KeyFile and CertFile must both be present[key: , cert: {certs.crt('server')}]" in log


def test_unreadable_peer_cert(certs):
    _require_binary()
    port = free_ports(1)[0]
    url = f"https://127.0.0.1:{port}"
    rc, log = _exit_with(["--listen-peer-urls", url, "--initial-advertise-peer-urls", url,
                          "--initial-cluster", f"node1={url}",
                          "--peer-cert-file", "/nonexistent.crt", "--peer-key-file", "/nonexistent.key"])
    assert rc == 1, log
    assert "/nonexistent.crt" in log


@only_ours
def test_http_peer_url_with_peer_cert_warns(certs):
    """An http peer URL with peer key/cert files: etcd2's warning, no TLS on it, the member runs."""
    _require_binary()
    d = Daemon(extra_args=["--peer-cert-file", certs.crt("server"), "--peer-key-file", certs.key("server"),
                           "--peer-ca-file", certs.crt("ca")])
    try:
        d.check_serving()
        assert (f"The scheme of peer url {d.peer_url} is HTTP while peer key/cert files are presented. "
                "Ignored peer key/cert files.") in d.log_tail()
        r = requests.get(d.peer_url + "/members", timeout=5)
        assert r.status_code == 200
    finally:
        d.cleanup()


@only_ours
def test_deprecated_peer_ca_file(certs):
    """--peer-ca-file = --peer-trusted-ca-file + --peer-client-cert-auth (with a deprecation warning)."""
    _require_binary()
    port = free_ports(1)[0]
    d = Daemon(extra_args=["--listen-peer-urls", f"https://127.0.0.1:{port}",
                           "--peer-cert-file", certs.crt("server"), "--peer-key-file", certs.key("server"),
                           "--peer-ca-file", certs.crt("ca")], wait=False)
    try:
        d.wait_ready(lambda: "PeerTLS:" in d.log_tail() or not d.alive(), 15, "peer TLS up")
        assert d.alive(), d.log_tail()
        assert "--peer-ca-file is deprecated" in d.log_tail()
        out = _https_get(port, "/members", _peer_tls_context(certs))
        assert not isinstance(out, bytes) or b"HTTP/1.1" not in out, out
        out = _https_get(port, "/members", _peer_tls_context(certs, "server"))
        assert isinstance(out, bytes) and out.startswith(b"HTTP/1.1 200"), out
    finally:
        d.cleanup()



@only_ours
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing")
def test_socket_activated_peer_tls(certs):
    """A socket-activated peer socket (name "peer") speaks TLS when the peer URLs are https."""
    _require_binary()

    class Activated(Daemon):
        def argv(self):
            a = super().argv()
            return ["systemd-socket-activate", "-l", f"127.0.0.1:{self.peer_port}", "--fdname=peer"] + a

    port = free_ports(1)[0]
    url = f"https://127.0.0.1:{port}"
    d = Activated(extra_args=["--listen-peer-urls", url, "--initial-advertise-peer-urls", url,
                              "--initial-cluster", f"node1={url}",
                              "--peer-cert-file", certs.crt("server"), "--peer-key-file", certs.key("server"),
                              "--peer-trusted-ca-file", certs.crt("ca"), "--peer-client-cert-auth"], wait=False)
    try:
        def ready():
            if not d.alive():
                return True
            out = _https_get(d.peer_port, "/members", _peer_tls_context(certs, "server"), timeout=1)
            return isinstance(out, bytes) and out.startswith(b"HTTP/1.1 200")

        d.wait_ready(ready, 20, "peer TLS up")
        assert d.alive(), d.log_tail()
        out = _https_get(d.peer_port, "/members", _peer_tls_context(certs))
        assert not isinstance(out, bytes) or b"HTTP/1.1" not in out, out
    finally:
        d.cleanup()
