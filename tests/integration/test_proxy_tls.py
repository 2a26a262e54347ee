# SPDX-License-Identifier: Apache-2.0
"""The proxy over TLS (issue 11, item 2): as etcd2's startProxy, the proxy's connections to members use the
peer TLS flags (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file). In front of etcd 3.4 whose client
URL is https with --client-cert-auth (plain peer URLs: the refresh asks them, the forwarding goes to the https
client URLs), reads, writes, a large value and watches pass through; a proxy with a certificate from a
foreign CA, or with none, is refused by the member and answers its client 502 at once (no hang); a proxy that
does not trust the member's CA refuses it itself. Also in front of our own etcd2 with an https client URL
(our GnuTLS server, not Go's). Certificates are made at test time (test_tls.Certs). With ETCD2_REFERENCE=1
the proxy is etcd 3.4's (`etcd --proxy on`, v2 proxy with the same flags)."""

import os
import shutil
import threading
import time

import pytest
import requests

import procs
import test_proxy
import test_tls
from conftest import REFERENCE, REFERENCE_BINARY, free_ports, unique

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return test_tls.Certs(str(tmp_path_factory.mktemp("proxy-tls-certs")))


class TlsMember(procs.Process):
    """One single-member cluster whose client URL is https with client certificates required; plain peer
    URL. etcd 3.4 (reference=True) or ours."""

    stop_strict = False

    def __init__(self, certs, reference=True, client_cert_auth=True, extra_args=()):
        super().__init__("tls-member", "etcd2-ptls-", "etcd2-ptls-log-", reference=reference)
        if reference:
            binary = REFERENCE_BINARY
        else:
            binary = test_proxy.require_binary(reference=False)
        c, p = free_ports(2)
        self.client_url = f"https://127.0.0.1:{c}"
        self.peer_url = f"http://127.0.0.1:{p}"
        self.certs = certs
        argv = [binary, *procs.member_flags("m1", self.data_dir, self.client_url, self.peer_url),
                "--initial-cluster", f"m1={self.peer_url}", "--initial-cluster-state", "new",
                "--cert-file", certs.crt("server"), "--key-file", f"{certs.dir}/server.key"]
        if client_cert_auth:
            # (etcd 3.4 asks for client certificates whenever --trusted-ca-file is given)
            argv += ["--client-cert-auth", "--trusted-ca-file", certs.crt("ca")]
        if reference:
            argv.append("--enable-v2")
        self.spawn(argv + list(extra_args))
        self.url = self.client_url

        def ready():
            return self.direct("GET", "/v2/keys/", timeout=1).status_code == 200
        self.wait_ready(ready, 30, "healthy over TLS", fail=pytest.fail)

    def direct(self, method, path, **kw):
        kw.setdefault("timeout", 10)
        kw.setdefault("verify", self.certs.crt("ca"))
        kw.setdefault("cert", self.certs.pair("client"))
        return requests.request(method, self.client_url + path, **kw)


@pytest.fixture(scope="module")
def etcd34(certs):
    if not os.access(REFERENCE_BINARY, os.X_OK):
        pytest.skip(f"{REFERENCE_BINARY} not installed")
    m = TlsMember(certs, reference=True)
    yield m
    m.cleanup()


@pytest.fixture
def make_proxy():
    yield from procs.factory(test_proxy.Proxy, test_proxy._stop_and_check)


def peer_tls(certs, cert="client", ca="ca"):
    args = ["--peer-trusted-ca-file", certs.crt(ca)]
    if cert:
        args += ["--peer-cert-file", certs.crt(cert), "--peer-key-file", f"{certs.dir}/{cert}.key"]
    return args


def check_traffic(p, member):
    """Writes, reads, errors, a large value and a watch through the proxy p in front of member."""
    k = unique("/v2/keys/ptls")
    r = p.put(k, data={"value": "v1"})
    assert r.status_code == 201, r.text
    assert r.json()["node"]["value"] == "v1"
    # the same answer through the proxy and directly
    d, v = member.direct("GET", k + "?quorum=true"), p.get(k + "?quorum=true")
    assert (d.status_code, d.text) == (v.status_code, v.text)
    # an error status passes through
    r = p.put(k, data={"value": "x", "prevValue": "nope"})
    assert r.status_code == 412 and r.json()["errorCode"] == 101, r.text
    # keep-alive connections to the member are reused: many requests in a row
    with requests.Session() as s:
        for i in range(40):
            r = s.put(p.url + k, data={"value": str(i)}, timeout=10)
            assert r.status_code == 200, r.text
    # larger than a TLS record both ways, and larger than the socket buffers
    big = "x" * 400000
    k2 = unique("/v2/keys/ptls-big")
    assert p.put(k2, data={"value": big}, timeout=30).status_code == 201
    assert p.get(k2, timeout=30).json()["node"]["value"] == big

    # a long-poll watch passes through
    kw = unique("/v2/keys/ptls-watch")
    got = {}

    def watch():
        got["r"] = p.get(kw + "?wait=true", timeout=20)
    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.5)
    assert p.put(kw, data={"value": "w"}).status_code == 201
    t.join(25)
    assert not t.is_alive()
    assert got["r"].status_code == 200 and got["r"].json()["node"]["value"] == "w", got["r"].text

    if REFERENCE:
        return  # etcd's proxy copies the body without flushing (test_proxy.test_stream_watch)
    # a streaming watch: two events on one response
    ks = unique("/v2/keys/ptls-stream")
    lines = []
    with requests.get(p.url + ks + "?wait=true&stream=true", stream=True, timeout=20) as r:
        assert r.status_code == 200
        for i in range(2):
            assert p.put(ks, data={"value": f"s{i}"}).status_code in (200, 201)
        for line in r.iter_lines():
            if line.strip():
                lines.append(line)
            if len(lines) == 2:
                break
    assert [b'"s0"' in lines[0], b'"s1"' in lines[1]] == [True, True], lines


def test_proxy_to_etcd34_with_client_cert_auth(certs, etcd34, make_proxy):
    p = make_proxy("on", f"m1={etcd34.peer_url}", peer_tls(certs))
    assert p.wait_endpoints(1) == [etcd34.client_url]
    check_traffic(p, etcd34)
    # readonly still refuses writes locally
    ro = make_proxy("readonly", f"m1={etcd34.peer_url}", peer_tls(certs))
    ro.wait_endpoints(1)
    assert ro.put(unique("/v2/keys/ro"), data={"value": "x"}).status_code == 501
    assert ro.get("/v2/keys/").status_code == 200


@pytest.mark.parametrize("cert", ["intruder", None], ids=["foreign-ca-cert", "no-cert"])
def test_refused_proxy_answers_502(certs, etcd34, make_proxy, cert):
    """The member refuses the proxy's certificate (or its lack of one): the client gets 502 quickly."""
    p = make_proxy("on", f"m1={etcd34.peer_url}", peer_tls(certs, cert=cert))
    p.wait_endpoints(1)
    for i in range(3):
        t0 = time.monotonic()
        r = p.get("/v2/keys/", timeout=10)
        # then the endpoint is unavailable for --proxy-failure-wait (5 s): 503, as etcd2
        assert r.status_code == (502 if i == 0 else 503), r.text
        assert time.monotonic() - t0 < 5
    # the member is fine and still serves good clients
    assert etcd34.direct("GET", "/v2/keys/").status_code == 200


def test_proxy_refuses_untrusted_member(certs, etcd34, make_proxy):
    """The proxy trusts another CA than the member's: it refuses the member's certificate itself."""
    p = make_proxy("on", f"m1={etcd34.peer_url}", peer_tls(certs, ca="foreign"))
    p.wait_endpoints(1)
    t0 = time.monotonic()
    r = p.get("/v2/keys/", timeout=10)
    assert r.status_code == 502, r.text
    assert time.monotonic() - t0 < 5


def test_proxy_to_our_tls_member(certs, make_proxy):
    """In front of our etcd2 (GnuTLS server side) with --client-cert-auth."""
    m = TlsMember(certs, reference=False)
    try:
        p = make_proxy("on", f"m1={m.peer_url}", peer_tls(certs))
        assert p.wait_endpoints(1) == [m.client_url]
        check_traffic(p, m)
        bad = make_proxy("on", f"m1={m.peer_url}", peer_tls(certs, cert="intruder"))
        bad.wait_endpoints(1)
        assert bad.get("/v2/keys/", timeout=10).status_code == 502
        assert m.sanitizer_report() is None, m.sanitizer_report()
    finally:
        m.cleanup()
