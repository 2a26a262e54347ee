# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the integration suites: start the daemon under test (our etcd2 from $ETCD2_BINARY, or
Debian's etcd 3.4 with --enable-v2 when ETCD2_REFERENCE=1) on 127.0.0.1 with free ephemeral ports and a
fresh data dir, wait for /health, and always kill it at teardown. The daemon's log is attached to the
report of a failing test. The process plumbing (log file, environment, stop/kill, cleanup) is procs.Process,
shared with the other harness classes (cluster.Member, test_proxy.Proxy, test_discovery.Node)."""

import atexit
import os
import signal
import socket
import sys
import uuid

import pytest
import requests

import procs
from procs import Process, member_flags

# tests/ holds what the integration, systemd and bench tests share (tls_certs.py)
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REFERENCE = os.environ.get("ETCD2_REFERENCE") == "1"
REFERENCE_BINARY = "/usr/bin/etcd"
OUR_BINARY = os.environ.get("ETCD2_BINARY")

# Checks that only hold for etcd 2.3.8 (and so for our daemon), not for the etcd 3.4 oracle.
only_23 = pytest.mark.skipif(REFERENCE, reason="etcd 2.3-specific behaviour; etcd 3.4 differs")
# Checks about our binary itself (command line etc.).
only_ours = pytest.mark.skipif(REFERENCE, reason="concerns our etcd2 binary only")

START_TIMEOUT = 20.0
_live = procs.live  # processes alive right now, for attaching logs to failure reports


def binary_under_test():
    if REFERENCE:
        return REFERENCE_BINARY if os.access(REFERENCE_BINARY, os.X_OK) else None
    return OUR_BINARY if OUR_BINARY and os.access(OUR_BINARY, os.X_OK) else None


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def unique(prefix="k"):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class Daemon(Process):
    """One single-member etcd2 (or etcd 3.4 reference) process."""

    env_strip = "ETCD_"
    cwd = None

    def __init__(self, binary=None, reference=None, name="node1", extra_args=(), env=None,
                 data_dir=None, wait=True, use_env=False):
        reference = REFERENCE if reference is None else reference
        self.binary = binary or (REFERENCE_BINARY if reference else OUR_BINARY)
        self.extra_args = list(extra_args)
        self.env_extra = dict(env or {})
        self.use_env = use_env  # pass the configuration as ETCD_* variables instead of flags
        c1, c2, p = free_ports(3)
        self.client_ports = [c1, c2]
        self.peer_port = p
        self.urls = [f"http://127.0.0.1:{c1}", f"http://127.0.0.1:{c2}"]
        self.url = self.urls[0]
        self.peer_url = f"http://127.0.0.1:{p}"
        self.session = requests.Session()
        super().__init__(name, "etcd2-it-", "etcd2-it-log-", data_dir=data_dir, reference=reference)
        self.start(wait=wait)

    # -- process control ----------------------------------------------------------------------------
    def config_env(self):
        return {"ETCD_NAME": self.name,
                "ETCD_DATA_DIR": self.data_dir,
                "ETCD_LISTEN_CLIENT_URLS": ",".join(self.urls),
                "ETCD_ADVERTISE_CLIENT_URLS": ",".join(self.urls),
                "ETCD_LISTEN_PEER_URLS": self.peer_url,
                "ETCD_INITIAL_ADVERTISE_PEER_URLS": self.peer_url,
                "ETCD_INITIAL_CLUSTER": f"{self.name}={self.peer_url}"}

    def argv(self):
        a = [self.binary]
        if self.reference:
            a.append("--enable-v2")
        if self.use_env:
            return a + self.extra_args
        a += member_flags(self.name, self.data_dir, ",".join(self.urls), self.peer_url)
        a += ["--initial-cluster", f"{self.name}={self.peer_url}"]
        return a + self.extra_args

    def start(self, wait=True):
        env = self.config_env() if self.use_env else {}
        env.update(self.env_extra)
        self.spawn(self.argv(), env)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout=START_TIMEOUT):
        def ready():
            r = requests.get(self.url + "/health", timeout=1)
            # Health may turn true before the member published itself; wait for a usable store.
            return r.status_code == 200 and requests.get(self.url + "/v2/keys/", timeout=2).status_code == 200

        self.wait_ready(ready, timeout, "healthy")

    def restart(self, kill=False, wait=True):
        if kill:
            self.kill9()
        else:
            self.stop()
        self.session.close()
        self.session = requests.Session()
        self.start(wait=wait)

    def cleanup(self):
        super().cleanup()
        self.session.close()

    # -- HTTP helpers --------------------------------------------------------------------------------
    def k(self, key):
        """URL of a key (key given without leading slash or with)."""
        return self.url + "/v2/keys/" + key.lstrip("/")

    def req(self, method, path, **kw):
        kw.setdefault("timeout", 10)
        kw.setdefault("allow_redirects", False)
        return self.session.request(method, self.url + path, **kw)

    def set(self, key, value, **params):
        params["value"] = value
        r = self.put("/v2/keys/" + key.lstrip("/"), data=params)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def index(self):
        r = self.get("/v2/keys/")
        return int(r.headers["X-Etcd-Index"])

    def check_serving(self):
        """The daemon still answers /health and a key write and read."""
        assert self.alive(), "daemon died; log:\n" + self.log_tail(4000)
        with requests.Session() as s:
            r = s.get(self.url + "/health", timeout=10)
            assert r.status_code == 200, r.text
            key = unique("alive")
            r = s.put(self.url + "/v2/keys/" + key, data={"value": "ok"}, timeout=10)
            assert r.status_code == 201, r.text
            r = s.get(self.url + "/v2/keys/" + key, timeout=10)
            assert r.status_code == 200 and r.json()["node"]["value"] == "ok", r.text


def _require_binary():
    b = binary_under_test()
    if b is None:
        if REFERENCE:
            pytest.skip(f"{REFERENCE_BINARY} not installed")
        pytest.skip("ETCD2_BINARY not set or not executable")
    return b


@pytest.fixture(scope="module")
def daemon():
    """A daemon shared by the tests of one module; tests use unique key names."""
    _require_binary()
    d = Daemon()
    yield d
    d.cleanup()


@pytest.fixture(autouse=True)
def _crash_guard(request):
    """Fails the test during which the shared daemon died, and restarts it for the next tests."""
    yield
    if "daemon" not in request.fixturenames:
        return
    d = request.getfixturevalue("daemon")
    if d.died_unexpectedly():
        report = d.death_report()
        try:
            d._close_log()
            d.start()
        except Exception as e:  # noqa: BLE001
            report += f"\n(restart failed: {e})"
        pytest.fail(report, pytrace=False)


@pytest.fixture
def fresh():
    """A daemon of its own for one test."""
    _require_binary()
    d = Daemon()
    yield d
    procs.finish([d])


@pytest.fixture
def make_daemon():
    """Factory: make_daemon(extra_args=[...], env={...}, wait=True) -> Daemon; all killed at teardown."""
    _require_binary()
    yield from procs.factory(Daemon)


@pytest.fixture(scope="module")
def pair():
    """(ours, etcd 3.4) for the differential tests, fresh per module; ETCD2_DIFF_SELFTEST=1 puts etcd 3.4 on
    both sides (a check of the harness: every step must then agree)."""
    selftest = os.environ.get("ETCD2_DIFF_SELFTEST") == "1"
    ours = Daemon(reference=selftest, binary=REFERENCE_BINARY if selftest else OUR_BINARY)
    try:
        ref = Daemon(reference=True, binary=REFERENCE_BINARY)
    except Exception:
        ours.cleanup()
        raise
    yield ours, ref
    ours.cleanup()
    ref.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _live:
        for d in list(_live):
            d.keep_log = True
            rep.sections.append((f"daemon log {d.log_path} ({'reference' if d.reference else 'etcd2'})",
                                 d.log_tail(3000)))


def _kill_all_live():
    for d in list(_live):
        try:
            d.cleanup()
        except Exception:  # noqa: BLE001
            pass


def pytest_configure(config):
    # meson's timeout (and `timeout`) send SIGTERM: daemons run in their own sessions, so kill them
    # here instead of leaving them behind.
    def on_term(signum, frame):
        _kill_all_live()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    atexit.register(_kill_all_live)


def pytest_sessionfinish(session, exitstatus):
    # meson: 77 = skipped. Map "no tests ran" and "everything skipped" accordingly.
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if exitstatus == 5:
        session.exitstatus = 77
        return
    if tr is not None and exitstatus == 0:
        passed = len(tr.stats.get("passed", []))
        skipped = len(tr.stats.get("skipped", []))
        if passed == 0 and skipped > 0:
            session.exitstatus = 77
    for d in list(_live):
        d.cleanup()
