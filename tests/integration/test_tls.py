# SPDX-License-Identifier: Apache-2.0
"""Client TLS (issue 11, item 1): https client URLs with --cert-file/--key-file, client certificates with
--client-cert-auth/--trusted-ca-file and the deprecated --ca-file. Certificates are made at test time with
openssl in a temporary directory (never committed keys): a CA, a foreign CA, a server certificate, client
certificates from each CA and one meant for servers only. Clients: requests, curl, etcdctl (ETCDCTL_API=2).
Refusals (no certificate, a foreign one, plain HTTP to the TLS port, a stalled handshake) must not disturb
the other clients. With ETCD2_REFERENCE=1 the same tests run against etcd 3.4 (the oracle)."""

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest
import requests

import tls_certs
from conftest import REFERENCE, Daemon, _require_binary, only_23, only_ours, unique

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


class Certs(tls_certs.Certs):
    """A CA, a foreign CA, a server certificate, client certificates from each CA and one meant for servers
    only."""

    def __init__(self, d):
        super().__init__(d)
        self.make_ca("ca")
        self.make_ca("foreign")
        self.make_cert("server", "serverAuth,clientAuth")
        self.make_cert("client", "clientAuth")
        self.make_cert("serveronly", "serverAuth")
        self.make_cert("intruder", "clientAuth", ca="foreign")


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="etcd2-it-tls-")
    try:
        yield Certs(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class TlsDaemon(Daemon):
    """A member whose first client URL is https (the second stays http: etcd2 warns, no TLS on it)."""

    def __init__(self, certs, tls_args, **kw):
        self.certs = certs
        self.tls_args = list(tls_args)
        self.client_pair = certs.pair("client")
        super().__init__(extra_args=self.tls_args, **kw)

    def argv(self):
        self.urls = [u.replace("http://", "https://", 1) if i == 0 else u for i, u in enumerate(self.urls)]
        self.url = self.urls[0]
        return super().argv()

    def tls_get(self, path, **kw):
        kw.setdefault("timeout", 10)
        kw.setdefault("verify", self.certs.crt("ca"))
        kw.setdefault("cert", self.client_pair)
        return requests.get(self.url + path, **kw)

    def wait_healthy(self, timeout=20.0):
        def ready():
            r = self.tls_get("/health", timeout=1)
            return r.status_code == 200 and self.tls_get("/v2/keys/", timeout=2).status_code == 200

        self.wait_ready(ready, timeout, "healthy over TLS")


@pytest.fixture(scope="module")
def tls(certs):
    _require_binary()
    d = TlsDaemon(certs, ["--cert-file", certs.crt("server"), "--key-file", f"{certs.dir}/server.key",
                          "--client-cert-auth", "--trusted-ca-file", certs.crt("ca")])
    yield d
    d.cleanup()


def _session(d, cert=True):
    s = requests.Session()
    s.trust_env = False  # else REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE would override verify
    s.verify = d.certs.crt("ca")
    if cert:
        s.cert = d.client_pair
    return s


def test_keys_over_tls(tls):
    key = unique()
    with _session(tls) as s:
        r = s.put(tls.url + "/v2/keys/" + key, data={"value": "v1"}, timeout=10)
        assert r.status_code == 201, r.text
        r = s.get(tls.url + "/v2/keys/" + key, timeout=10)
        assert r.status_code == 200 and r.json()["node"]["value"] == "v1"
        # keep-alive: many requests on one TLS connection
        for i in range(50):
            assert s.put(tls.url + "/v2/keys/" + key, data={"value": str(i)}, timeout=10).status_code == 200


def test_large_value_over_tls(tls):
    """Answers beyond one TLS record (16 KiB) and beyond the socket buffer."""
    key = unique()
    value = os.urandom(1_500_000).hex()
    with _session(tls) as s:
        r = s.put(tls.url + "/v2/keys/" + key, data={"value": value}, timeout=30)
        assert r.status_code == 201
        r = s.get(tls.url + "/v2/keys/" + key, timeout=30)
        assert r.json()["node"]["value"] == value


def test_watch_over_tls(tls):
    key = unique()
    got = {}

    def watch():
        with _session(tls) as s:
            got["r"] = s.get(tls.url + "/v2/keys/" + key, params={"wait": "true"}, timeout=20)

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.5)
    with _session(tls) as s:
        assert s.put(tls.url + "/v2/keys/" + key, data={"value": "w"}, timeout=10).status_code == 201
    t.join(20)
    assert got["r"].status_code == 200 and got["r"].json()["node"]["value"] == "w"


def test_curl_and_etcdctl(tls):
    c = tls.certs
    key = unique()
    r = subprocess.run(["curl", "-sS", "--cacert", c.crt("ca"), "--cert", c.crt("client"), "--key",
                        f"{c.dir}/client.key", "-XPUT", tls.url + "/v2/keys/" + key, "-d", "value=fromcurl"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and '"value":"fromcurl"' in r.stdout, r.stderr
    if shutil.which("etcdctl") is None:
        pytest.skip("etcdctl not installed")
    env = dict(os.environ, ETCDCTL_API="2")
    base = ["etcdctl", "--endpoints", tls.url, "--ca-file", c.crt("ca"), "--cert-file", c.crt("client"),
            "--key-file", f"{c.dir}/client.key"]
    r = subprocess.run(base + ["get", "/" + key], capture_output=True, text=True, timeout=20, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "fromcurl", r.stderr
    r = subprocess.run(base + ["set", "/" + key, "fromctl"], capture_output=True, text=True, timeout=20, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["cluster-health"], capture_output=True, text=True, timeout=20, env=env)
    assert r.returncode == 0 and "cluster is healthy" in r.stdout, r.stdout + r.stderr
    # without a client certificate etcdctl fails
    r = subprocess.run(base[:5] + ["get", "/" + key], capture_output=True, text=True, timeout=20, env=env)
    assert r.returncode != 0


@pytest.mark.parametrize("who", ["none", "foreign", "serveronly"])
def test_bad_client_certificate_refused(tls, who):
    """No certificate, one from another CA, one not meant for TLS clients: the handshake fails (TLS 1.3
    reports it on the first read) and other clients go on."""
    c = tls.certs
    cert = {"none": None, "foreign": c.pair("intruder"), "serveronly": c.pair("serveronly")}[who]
    with _session(tls) as good:
        assert good.get(tls.url + "/v2/keys/", timeout=10).status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(tls.url + "/v2/keys/", verify=c.crt("ca"), cert=cert, timeout=10)
        # the same keep-alive connection of the good client still serves
        assert good.get(tls.url + "/v2/keys/", timeout=10).status_code == 200
    assert tls.alive()


def test_plain_http_to_tls_port(tls):
    """Plain HTTP on the TLS port: the connection is closed without an answer (etcd2, and etcd 3.4 whose
    listener fails the handshake before Go's HTTP server could answer its 400)."""
    with socket.create_connection(("127.0.0.1", tls.client_ports[0]), timeout=10) as s:
        s.sendall(b"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    break
                data += b
        except ConnectionResetError:
            pass
    assert not data.startswith(b"HTTP/"), data
    assert tls.tls_get("/v2/keys/").status_code == 200


def test_stalled_handshakes_do_not_block(tls):
    """Connections that never finish their handshake (silent, or a ClientHello cut short) hold a slot
    only: a good client is served meanwhile, promptly."""
    socks = []
    try:
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", tls.client_ports[0]), timeout=10)
            if i % 2:
                s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            socks.append(s)
        t0 = time.monotonic()
        assert tls.tls_get("/v2/keys/").status_code == 200
        assert time.monotonic() - t0 < 2.0
    finally:
        for s in socks:
            s.close()
    assert tls.tls_get("/health").status_code == 200


def test_http_url_next_to_https_stays_plain(tls):
    """An http listen URL given with cert/key: etcd2 warns and serves it without TLS."""
    r = requests.get(tls.urls[1] + "/v2/keys/", timeout=10)
    assert r.status_code == 200
    if not REFERENCE:
        assert "is HTTP while client key/cert files are presented" in tls.log_tail(20000)


def test_no_client_cert_auth(certs):
    """Server TLS only: any client, with or without a certificate."""
    _require_binary()
    d = TlsDaemon(certs, ["--cert-file", certs.crt("server"), "--key-file", f"{certs.dir}/server.key"])
    try:
        r = requests.get(d.url + "/v2/keys/", verify=certs.crt("ca"), timeout=10)
        assert r.status_code == 200
        # with an untrusted server certificate from the client's view, the client refuses
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(d.url + "/v2/keys/", verify=certs.crt("foreign"), timeout=10)
    finally:
        d.cleanup()


@only_23
def test_deprecated_ca_file(certs):
    """--ca-file X is --trusted-ca-file X --client-cert-auth."""
    _require_binary()
    d = TlsDaemon(certs, ["--cert-file", certs.crt("server"), "--key-file", f"{certs.dir}/server.key",
                          "--ca-file", certs.crt("ca")])
    try:
        assert d.tls_get("/v2/keys/").status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(d.url + "/v2/keys/", verify=certs.crt("ca"), timeout=10)
    finally:
        d.cleanup()


@only_ours
def test_https_without_cert_is_an_error(certs):
    """etcd2: "cannot listen on TLS for <url>: KeyFile and CertFile are not presented", exit 1."""
    _require_binary()
    d = TlsDaemon(certs, [], wait=False)
    try:
        assert d.wait_exit(15) == 1
        assert "KeyFile and CertFile are not presented" in d.log_tail()
    finally:
        d.cleanup()


@only_ours
def test_https_peer_url_without_cert(certs):
    """An https peer URL without --peer-cert-file/--peer-key-file: etcd2's error, exit 1 (peer TLS is
    tested in test_peer_tls.py)."""
    _require_binary()
    p = Daemon(extra_args=["--listen-peer-urls", "https://127.0.0.1:1"], wait=False)
    try:
        assert p.wait_exit(15) == 1
        assert "cannot listen on TLS for https://127.0.0.1:1: KeyFile and CertFile are not presented" in p.log_tail()
    finally:
        p.cleanup()


def test_client_tls_context_sanity(certs):
    """The test's own certificates verify with Python's ssl (guards the fixture, not the daemon)."""
    ctx = ssl.create_default_context(cafile=certs.crt("ca"))
    ctx.load_cert_chain(*certs.pair("client"))


@only_ours
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing")
def test_socket_activated_tls(certs):
    """A socket-activated client socket speaks TLS when the client URLs are https."""
    _require_binary()

    class Activated(TlsDaemon):
        def argv(self):
            a = super().argv()
            return ["systemd-socket-activate", "-l", f"127.0.0.1:{self.client_ports[0]}", "--fdname=client"] + a

    d = Activated(certs, ["--cert-file", certs.crt("server"), "--key-file", f"{certs.dir}/server.key",
                          "--client-cert-auth", "--trusted-ca-file", certs.crt("ca")])
    try:
        assert d.tls_get("/v2/keys/").status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(d.url + "/v2/keys/", verify=certs.crt("ca"), timeout=10)
    finally:
        d.cleanup()
