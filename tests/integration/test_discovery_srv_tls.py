# SPDX-License-Identifier: Apache-2.0
"""--discovery-srv with only _etcd-server-ssl._tcp records (issue 11, item 2): they give https:// peer URLs
(etcd2's srv.go), and a proxy started with them takes them as its peers: its refresh asks the member's
https peer URL (presenting --peer-cert-file, the member has --peer-client-cert-auth) and it forwards to the
member's https client URL (--client-cert-auth). The member is etcd 3.4 with peer and client TLS, bootstrapped
statically with the host-name URL of the record; the DNS fake is test_discovery_srv.py's (a private network
namespace with dnsmasq: root, ip and dnsmasq needed, skipped otherwise). Certificates are made at test time
with the record's host name and address in them. Our proxy only (the member is the reference)."""

import json
import os
import shutil
import subprocess

import pytest
import requests

import procs
import test_tls
from conftest import REFERENCE, REFERENCE_BINARY, OUR_BINARY, unique
from test_discovery_srv import DOMAIN, DnsNS, _available

pytestmark = [pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
              pytest.mark.skipif(REFERENCE, reason="our proxy against an etcd 3.4 member")]

HOST, IP, PEER_PORT, CLIENT_PORT = f"infra0.{DOMAIN}", "127.0.0.1", 2380, 2379


class Certs:
    def __init__(self, d):
        self.dir = d
        test_tls._make_ca(d, "ca")
        self._cert("member", f"DNS:{HOST},IP:{IP}", "serverAuth,clientAuth")
        # etcd 3.4 checks a peer client certificate against the address it comes from (127.0.0.1 here)
        self._cert("proxy", "IP:127.0.0.1,IP:127.0.0.9", "clientAuth")

    def _cert(self, name, san, eku):
        d = self.dir
        with open(f"{d}/{name}.ext", "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    f"extendedKeyUsage={eku}\nsubjectAltName={san}\n")
        test_tls._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}")
        test_tls._openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
                          "-CAcreateserial", "-out", f"{d}/{name}.crt", "-days", "2", "-extfile", f"{d}/{name}.ext")

    def f(self, name):
        return f"{self.dir}/{name}"


@pytest.fixture
def dns():
    why = _available()
    if why:
        pytest.skip(f"SRV discovery test needs a private network namespace with dnsmasq: {why}")
    if not os.access(REFERENCE_BINARY, os.X_OK):
        pytest.skip(f"{REFERENCE_BINARY} not installed")
    d = DnsNS()
    try:
        d.start([("_etcd-server-ssl._tcp", HOST, PEER_PORT)], [(HOST, IP)])
    except (OSError, subprocess.CalledProcessError) as e:
        d.stop()
        pytest.skip(f"cannot create/enter a network namespace or run dnsmasq: {e}")
    except RuntimeError:
        d.stop()
        raise
    yield d
    d.stop()


class InNs(procs.Process):
    stop_strict = False

    def __init__(self, dns, name, argv, url):
        super().__init__(name, f"etcd2-srvtls-{name}-", f"etcd2-srvtls-log-{name}-")
        self.url = url
        self.spawn(["ip", "netns", "exec", dns.name, *[a.replace("@DATA@", self.data_dir) for a in argv]])


def test_ssl_records_give_https_peers_to_the_proxy(dns, tmp_path):
    certs = Certs(str(tmp_path))
    client_url = f"https://{IP}:{CLIENT_PORT}"
    peer_url = f"https://{HOST}:{PEER_PORT}"
    member = InNs(dns, "infra0", [
        REFERENCE_BINARY, "--enable-v2", "--name", "infra0", "--data-dir", "@DATA@",
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", f"https://{IP}:{PEER_PORT}", "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"infra0={peer_url}", "--initial-cluster-state", "new",
        "--cert-file", certs.f("member.crt"), "--key-file", certs.f("member.key"),
        "--client-cert-auth", "--trusted-ca-file", certs.f("ca.crt"),
        "--peer-cert-file", certs.f("member.crt"), "--peer-key-file", certs.f("member.key"),
        "--peer-client-cert-auth", "--peer-trusted-ca-file", certs.f("ca.crt")], client_url)
    proxy = None
    try:
        tls = {"verify": certs.f("ca.crt"), "cert": (certs.f("proxy.crt"), certs.f("proxy.key"))}
        member.wait_ready(lambda: member.get("/v2/keys/", timeout=1, **tls).status_code == 200, 30,
                          "the member over TLS", fail=pytest.fail)
        proxy = InNs(dns, "srv-tls-proxy", [
            OUR_BINARY, "--proxy", "on", "--name", "srv-tls-proxy", "--data-dir", "@DATA@",
            "--listen-client-urls", "http://127.0.0.9:2379", "--discovery-srv", DOMAIN,
            "--peer-cert-file", certs.f("proxy.crt"), "--peer-key-file", certs.f("proxy.key"),
            "--peer-trusted-ca-file", certs.f("ca.crt")], "http://127.0.0.9:2379")

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
