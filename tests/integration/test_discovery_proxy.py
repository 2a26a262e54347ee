# SPDX-License-Identifier: Apache-2.0
"""--discovery-proxy: discovery traffic goes through the given HTTP proxy (etcd2's newProxyFunc, with
"http://" prepended when the value has no scheme). The discovery service is our own etcd2 with
--enable-discovery-service; the HTTP proxy is a small forwarding proxy in this file that records what it
forwarded. Our binary only: etcd 3.4 has the same flag, but this checks our client's plumbing."""

import http.client
import http.server
import threading
import time
import urllib.parse

import pytest
import requests

import procs
from conftest import OUR_BINARY, REFERENCE, free_ports

pytestmark = pytest.mark.skipif(REFERENCE, reason="checks our discovery client's proxy plumbing")


class ForwardProxy:
    """A plain HTTP forward proxy (absolute-form request targets), recording (method, url)."""

    def __init__(self):
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def forward(self):
                outer.seen.append((self.command, self.path))
                u = urllib.parse.urlsplit(self.path)
                if u.scheme != "http" or not u.hostname:
                    self.send_error(400, "not an absolute http URL")
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("proxy-connection", "connection", "keep-alive", "host")}
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                try:
                    c.request(self.command, u.path + ("?" + u.query if u.query else ""), body=body,
                              headers=headers)
                    r = c.getresponse()
                    data = r.read()
                except OSError:
                    self.send_error(502)
                    return
                finally:
                    c.close()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def forward_proxy():
    p = ForwardProxy()
    yield p
    p.close()


class DiscoveryNode(procs.Process):
    """One etcd2 bootstrapping from `url` with --discovery-proxy `proxy_value`; a procs.Process, so its log
    is attached to failure reports and it is killed at teardown."""

    stop_strict = False

    def __init__(self, name, url, proxy_value):
        super().__init__(name, f"etcd2-dp-{name}-", f"etcd2-dp-log-{name}-")
        c, p = free_ports(2)
        self.url = f"http://127.0.0.1:{c}"
        self.spawn([OUR_BINARY, *procs.member_flags(name, self.data_dir, self.url, f"http://127.0.0.1:{p}"),
                    "--discovery", url, "--discovery-proxy", proxy_value])


@pytest.fixture
def make_node():
    yield from procs.factory(DiscoveryNode)


def test_discovery_goes_through_the_proxy(make_daemon, make_node, forward_proxy):
    svc = make_daemon(extra_args=["--enable-discovery-service"])
    url = svc.get("/new?size=1").text
    token_path = urllib.parse.urlsplit(url).path
    # no scheme: etcd2 prepends http://
    n = make_node("dp1", url, f"127.0.0.1:{forward_proxy.port}")

    def named():
        r = n.get("/v2/members", timeout=1)
        return r.status_code == 200 and r.json()["members"]
    members = n.wait_ready(named, 20, "a member list", fail=pytest.fail)
    assert [m["name"] for m in members] == ["dp1"], n.log_tail()
    # every discovery request went through the proxy, the registration among them
    assert any(m == "PUT" and urllib.parse.urlsplit(u).path.startswith(token_path + "/")
               for m, u in forward_proxy.seen), forward_proxy.seen
    assert any(m == "GET" and urllib.parse.urlsplit(u).path.startswith(token_path + "/_config/size")
               for m, u in forward_proxy.seen), forward_proxy.seen
    reg = svc.get(token_path).json()
    assert len([x for x in reg["node"].get("nodes", []) if not x["key"].endswith("/_config")]) == 1


def test_unreachable_discovery_proxy_retries(make_daemon, make_node):
    svc = make_daemon(extra_args=["--enable-discovery-service"])
    url = svc.get("/new?size=1").text
    (dead,) = free_ports(1)
    n = make_node("dp2", url, f"http://127.0.0.1:{dead}")
    time.sleep(3.5)
    # it neither bootstrapped nor gave up: it retries, and says so
    assert n.alive(), n.log_tail()
    assert "retrying in" in n.log_tail(), n.log_tail()
    with pytest.raises(requests.RequestException):
        n.get("/v2/members", timeout=0.5)
    # nothing was registered behind the dead proxy's back
    reg = svc.get(urllib.parse.urlsplit(url).path).json()
    assert [x for x in reg["node"].get("nodes", []) if not x["key"].endswith("/_config")] == []
