# SPDX-License-Identifier: Apache-2.0
"""Discovery over https (issue 11, item 2): --discovery https://... verified as Go's etcd2 does, against the
system's roots, which $SSL_CERT_FILE replaces (Go's crypto/x509 on Linux; libcurl does not read it, we do):
with it pointing at the test's CA a member bootstraps from a TLS discovery service (etcd 3.4 with an https
client URL, token made by hand, or ours with --enable-discovery-service); without it the service's
certificate is not trusted and the member keeps retrying without registering. --discovery-proxy tunnels
https with CONNECT. Certificates are made at test time (test_tls.Certs). Our binary only: this checks our
discovery client's TLS plumbing."""

import http.server
import os
import select
import shutil
import socket
import threading
import time
import uuid

import pytest
import requests

import procs
import test_tls
from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY, free_ports
from test_proxy_tls import TlsMember

pytestmark = [pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
              pytest.mark.skipif(REFERENCE, reason="checks our discovery client's TLS plumbing")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return test_tls.Certs(str(tmp_path_factory.mktemp("discovery-tls-certs")))


@pytest.fixture(scope="module", params=["etcd34", "etcd2"])
def service(request, certs):
    """A TLS discovery service (no client certificates asked): make(size) -> a discovery URL."""
    if request.param == "etcd34":
        if not os.access(REFERENCE_BINARY, os.X_OK):
            pytest.skip(f"{REFERENCE_BINARY} not installed")
        m = TlsMember(certs, reference=True, client_cert_auth=False)
    else:
        m = TlsMember(certs, reference=False, client_cert_auth=False, extra_args=["--enable-discovery-service"])

    def make(size):
        if request.param == "etcd2":
            r = m.direct("GET", "/new", params={"size": str(size)}, cert=None)
            assert r.status_code == 200, r.text
            return r.text
        url = f"{m.client_url}/v2/keys/discovery/{uuid.uuid4().hex}"
        r = requests.put(url + "/_config/size", data={"value": str(size)}, verify=certs.crt("ca"), timeout=10)
        assert r.status_code == 201, r.text
        return url

    def registrations(durl):
        r = requests.get(durl, verify=certs.crt("ca"), timeout=10)
        assert r.status_code == 200, r.text
        return [n for n in r.json()["node"].get("nodes", []) if not n["key"].endswith("/_config")]

    make.member = m
    make.registrations = registrations
    yield make
    m.cleanup()


class Node(procs.Process):
    stop_strict = False

    def __init__(self, name, durl, env=None, extra_args=()):
        super().__init__(name, f"etcd2-dtls-{name}-", f"etcd2-dtls-log-{name}-")
        c, p = free_ports(2)
        self.url = f"http://127.0.0.1:{c}"
        self.spawn([OUR_BINARY, *procs.member_flags(name, self.data_dir, self.url, f"http://127.0.0.1:{p}"),
                    "--discovery", durl, *extra_args], env=env)

    def members(self):
        def named():
            r = self.get("/v2/members", timeout=1)
            return r.status_code == 200 and r.json()["members"]
        return self.wait_ready(named, 30, "a member list", fail=pytest.fail)


@pytest.fixture
def make_node():
    if not (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)):
        pytest.skip("etcd2 not built")
    yield from procs.factory(Node, lambda n: (n.stop(), n.sanitizer_report())[1])


class ConnectProxy:
    """An HTTP proxy that only tunnels (CONNECT host:port), recording the targets."""

    def __init__(self):
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_CONNECT(self):
                outer.seen.append(self.path)
                host, port = self.path.rsplit(":", 1)
                try:
                    up = socket.create_connection((host, int(port)), timeout=10)
                except OSError:
                    self.send_error(502)
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                pair = {self.connection: up, up: self.connection}
                try:
                    while True:
                        ready, _, _ = select.select(list(pair), [], [], 60)
                        if not ready:
                            return
                        for s in ready:
                            data = s.recv(65536)
                            if not data:
                                return
                            pair[s].sendall(data)
                except OSError:
                    pass
                finally:
                    up.close()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_bootstrap_from_https_discovery(certs, service, make_node):
    durl = service(1)
    assert durl.startswith("https://")
    n = make_node("dtls1", durl, env={"SSL_CERT_FILE": certs.crt("ca")})
    assert [m["name"] for m in n.members()] == ["dtls1"], n.log_tail()
    assert len(service.registrations(durl)) == 1


def test_untrusted_discovery_service_is_retried(certs, service, make_node):
    """The service's CA is not among the system's roots: nothing is registered, the member retries."""
    durl = service(1)
    n = make_node("dtls2", durl, env={"SSL_CERT_FILE": certs.crt("foreign")})
    time.sleep(3.5)
    assert n.alive(), n.log_tail()
    assert "retrying in" in n.log_tail(), n.log_tail()
    with pytest.raises(requests.RequestException):
        n.get("/v2/members", timeout=0.5)
    assert service.registrations(durl) == []


def test_https_discovery_through_a_connect_proxy(certs, service, make_node):
    proxy = ConnectProxy()
    try:
        durl = service(1)
        n = make_node("dtls3", durl, env={"SSL_CERT_FILE": certs.crt("ca")},
                      extra_args=["--discovery-proxy", f"127.0.0.1:{proxy.port}"])
        assert [m["name"] for m in n.members()] == ["dtls3"], n.log_tail()
        host = durl.split("/")[2]
        assert proxy.seen and all(t == host for t in proxy.seen), proxy.seen
    finally:
        proxy.close()
