# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the integration suites: start the daemon under test (our etcd2 from $ETCD2_BINARY, or
Debian's etcd 3.4 with --enable-v2 when ETCD2_REFERENCE=1) on 127.0.0.1 with free ephemeral ports and a
fresh data dir, wait for /health, and always kill it at teardown. The daemon's log is attached to the
report of a failing test."""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

REFERENCE = os.environ.get("ETCD2_REFERENCE") == "1"
REFERENCE_BINARY = "/usr/bin/etcd"
OUR_BINARY = os.environ.get("ETCD2_BINARY")

# Checks that only hold for etcd 2.3.8 (and so for our daemon), not for the etcd 3.4 oracle.
only_23 = pytest.mark.skipif(REFERENCE, reason="etcd 2.3-specific behaviour; etcd 3.4 differs")
# Checks about our binary itself (command line etc.).
only_ours = pytest.mark.skipif(REFERENCE, reason="concerns our etcd2 binary only")

START_TIMEOUT = 20.0
_live = []  # daemons alive right now, for attaching logs to failure reports


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


class Daemon:
    """One single-member etcd2 (or etcd 3.4 reference) process."""

    def __init__(self, binary=None, reference=None, name="node1", extra_args=(), env=None,
                 data_dir=None, wait=True, use_env=False):
        self.reference = REFERENCE if reference is None else reference
        self.binary = binary or (REFERENCE_BINARY if self.reference else OUR_BINARY)
        self.name = name
        self.extra_args = list(extra_args)
        self.env_extra = dict(env or {})
        self.use_env = use_env  # pass the configuration as ETCD_* variables instead of flags
        c1, c2, p = free_ports(3)
        self.client_ports = [c1, c2]
        self.peer_port = p
        self.urls = [f"http://127.0.0.1:{c1}", f"http://127.0.0.1:{c2}"]
        self.url = self.urls[0]
        self.peer_url = f"http://127.0.0.1:{p}"
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="etcd2-it-")
        self.log_path = tempfile.mktemp(prefix="etcd2-it-log-", suffix=".txt")
        self.proc = None
        self.logf = None
        self.session = requests.Session()
        self.starts = 0
        self.exit_expected = False  # set when the daemon is stopped/killed on purpose
        self.keep_log = False       # set when a test failed while this daemon was alive
        _live.append(self)
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
        a += ["--name", self.name,
              "--data-dir", self.data_dir,
              "--listen-client-urls", ",".join(self.urls),
              "--advertise-client-urls", ",".join(self.urls),
              "--listen-peer-urls", self.peer_url,
              "--initial-advertise-peer-urls", self.peer_url,
              "--initial-cluster", f"{self.name}={self.peer_url}"]
        return a + self.extra_args

    def start(self, wait=True):
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("ETCD_"):
                del env[k]
        if self.use_env:
            env.update(self.config_env())
        env.update(self.env_extra)
        self.exit_expected = False
        self.logf = open(self.log_path, "ab")
        self.logf.write(f"==== start #{self.starts}: {' '.join(self.argv())}\n".encode())
        self.logf.flush()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.starts += 1
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode} during start; log:\n"
                                   + self.log_tail())
            try:
                r = requests.get(self.url + "/health", timeout=1)
                last = r.status_code
                if r.status_code == 200:
                    # Health may turn true before the member published itself; wait for a usable store.
                    r = requests.get(self.url + "/v2/keys/", timeout=2)
                    if r.status_code == 200:
                        return
            except requests.RequestException as e:
                last = e
            time.sleep(0.05)
        raise RuntimeError(f"daemon not healthy after {timeout}s (last: {last}); log:\n" + self.log_tail())

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def died_unexpectedly(self):
        return self.proc is not None and self.proc.poll() is not None and not self.exit_expected

    def kill9(self):
        self.exit_expected = True
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self._close_log()

    def stop(self, timeout=15):
        """SIGTERM; returns the wait status as Popen.returncode (negative = killed by signal)."""
        self.exit_expected = True
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                self._close_log()
                raise RuntimeError("daemon did not exit within %ss of SIGTERM" % timeout)
        self._close_log()
        return self.proc.returncode

    def restart(self, kill=False, wait=True):
        if kill:
            self.kill9()
        else:
            self.stop()
        self.session.close()
        self.session = requests.Session()
        self.start(wait=wait)

    def _close_log(self):
        if self.logf:
            self.logf.close()
            self.logf = None

    def cleanup(self):
        try:
            self.kill9()
        except Exception:
            pass
        self.session.close()
        if self in _live:
            _live.remove(self)
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if not self.keep_log:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    def log_tail(self, n=20000):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    # -- HTTP helpers --------------------------------------------------------------------------------
    def k(self, key):
        """URL of a key (key given without leading slash or with)."""
        return self.url + "/v2/keys/" + key.lstrip("/")

    def req(self, method, path, **kw):
        kw.setdefault("timeout", 10)
        kw.setdefault("allow_redirects", False)
        return self.session.request(method, self.url + path, **kw)

    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def put(self, path, **kw):
        return self.req("PUT", path, **kw)

    def post(self, path, **kw):
        return self.req("POST", path, **kw)

    def delete(self, path, **kw):
        return self.req("DELETE", path, **kw)

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


def _death_report(d):
    return (f"daemon died during this test (status {d.proc.returncode}); log tail:\n" + d.log_tail(3000))


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
        report = _death_report(d)
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
    died = d.died_unexpectedly()
    report = _death_report(d) if died else ""
    d.cleanup()
    if died:
        pytest.fail(report, pytrace=False)


@pytest.fixture
def make_daemon():
    """Factory: make_daemon(extra_args=[...], env={...}, wait=True) -> Daemon; all killed at teardown."""
    _require_binary()
    made = []

    def make(**kw):
        d = Daemon(**kw)
        made.append(d)
        return d

    yield make
    reports = [_death_report(d) for d in made if d.died_unexpectedly()]
    for d in made:
        d.cleanup()
    if reports:
        pytest.fail("\n".join(reports), pytrace=False)


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
