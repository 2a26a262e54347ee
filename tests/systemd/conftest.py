# SPDX-License-Identifier: Apache-2.0
"""Fixtures for tests/systemd: one booted namespace (sdmachine.Machine) per test module, always torn down.

Environment: ETCD2_BUILD_ROOT (the meson build dir to `meson install --destdir` from; set by meson test),
ETCD2_CLOUDINIT_GENERATOR (the built generator, for test_cloudinit.py), ETCD2_SD_KEEP=1 keeps the work
dir (and PID 1's log) for debugging. A file whose tests all skip exits 77, which meson reports as SKIP.
"""

import atexit
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# tests/ holds what the integration, systemd and bench tests share (tls_certs.py)
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sdmachine  # noqa: E402

_machines = []


def _teardown_all(*_):
    while _machines:
        _machines.pop().teardown()


atexit.register(_teardown_all)


def _on_term(signum, frame):
    # meson's timeout sends SIGTERM: kill the namespace, then stop the whole session (pytest ends the run
    # on KeyboardInterrupt; a SystemExit would only fail the current test and go on).
    _teardown_all()
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _on_term)


@pytest.fixture(scope="module")
def machine(request):
    reason = sdmachine.why_not_runnable()
    if reason:
        pytest.skip(reason)
    build_root = os.environ.get("ETCD2_BUILD_ROOT")
    if not build_root or not os.path.isfile(os.path.join(build_root, "build.ninja")):
        pytest.skip("ETCD2_BUILD_ROOT does not name a meson build dir")
    m = sdmachine.Machine(build_root)
    _machines.append(m)
    try:
        m.stage()
        m.boot()
        yield m
    finally:
        if m in _machines:
            _machines.remove(m)
        m.teardown()


@pytest.fixture(scope="module")
def machines_factory(request):
    """make(n, prepare=None): n Machines sharing one network namespace of the test's own (sdmachine.NetNS),
    named etcd2-sdtest-<pid>-<i>, each staged, then prepare(i, machine) (to write units/drop-ins under
    machine.workdir/run before systemd reads them), then booted. All of them, and the network namespace,
    are torn down at the end of the module (or on SIGTERM/exit), whatever happens."""
    reason = sdmachine.why_not_runnable()
    if reason:
        pytest.skip(reason)
    build_root = os.environ.get("ETCD2_BUILD_ROOT")
    if not build_root or not os.path.isfile(os.path.join(build_root, "build.ninja")):
        pytest.skip("ETCD2_BUILD_ROOT does not name a meson build dir")
    owned = []

    def make(n, prepare=None):
        net = sdmachine.NetNS()
        owned.append(net)
        _machines.append(net)
        net.start()
        ms = []
        for i in range(n):
            m = sdmachine.Machine(build_root, name=f"etcd2-sdtest-{os.getpid()}-{i}", netns=net)
            owned.append(m)
            _machines.append(m)
            m.stage()
            if prepare:
                prepare(i, m)
            ms.append(m)
        for m in ms:
            m.boot()
        return ms

    try:
        yield make
    finally:
        for x in reversed(owned):
            if x in _machines:
                _machines.remove(x)
            x.teardown()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach PID 1's console and the tail of the journal to a failing test's report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    ms = [("", funcargs.get("machine"))]
    # A test of several machines (machines_factory) names them in a `cluster` fixture: a list of Machines.
    ms += [(f" [{i}]", x) for i, x in enumerate(funcargs.get("cluster") or [])]
    for tag, m in ms:
        if m is None or m.pid1 is None:
            continue
        try:
            rep.sections.append((f"journal (tail){tag}", m.journal("-n", "80")))
        except Exception as e:  # the namespace may be gone
            rep.sections.append((f"journal (tail){tag}", f"unavailable: {e}"))
        rep.sections.append((f"systemd PID 1 console{tag}", m.log()))


def pytest_sessionfinish(session, exitstatus):
    _teardown_all()
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if exitstatus == 5:
        session.exitstatus = 77
        return
    if tr is not None and exitstatus == 0:
        passed = len(tr.stats.get("passed", []))
        skipped = len(tr.stats.get("skipped", []))
        if passed == 0 and skipped > 0:
            session.exitstatus = 77
