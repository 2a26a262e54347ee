# SPDX-License-Identifier: Apache-2.0
"""The process plumbing shared by every harness class (conftest.Daemon, cluster.Member, test_proxy.Proxy,
test_discovery.Node): one child process with its own log file (stdout and stderr, a "==== start #N: argv"
line before each start), started in a session of its own with a clean ETCD* environment, registered in
`live` so that conftest attaches its log to failure reports and kills it on pytest's SIGTERM and at exit,
stopped with SIGTERM (SIGKILL after a timeout) or SIGKILL, reaped, and checked for an unexpected death."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import requests

live = []  # processes that exist right now (conftest._live is this list)


def member_flags(name, data_dir, client_urls, peer_url):
    """The flags that name a member, its data dir and the URLs it listens on and advertises."""
    return ["--name", name,
            "--data-dir", data_dir,
            "--listen-client-urls", client_urls,
            "--advertise-client-urls", client_urls,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url]


def _raise_runtime(msg):
    raise RuntimeError(msg)


class Process:
    """Subclasses give argv to spawn(); the data dir, log file and process are theirs until cleanup()."""

    env_strip = "ETCD"   # variables starting with this are not passed on to the child
    cwd = "/"            # working directory of the child (None: ours)
    stop_strict = True   # stop(): raise RuntimeError if the process had to be killed after SIGTERM

    def __init__(self, name, data_prefix, log_prefix, data_dir=None, reference=False):
        self.name = name
        self.reference = reference
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix=data_prefix)
        self.log_path = tempfile.mktemp(prefix=log_prefix, suffix=".txt")
        self.proc = None
        self.logf = None
        self.starts = 0
        self.exit_expected = False  # set when the process is stopped/killed on purpose
        self.keep_log = False       # set when a test failed while this process was alive
        live.append(self)

    # -- process control ----------------------------------------------------------------------------
    def spawn(self, argv, env=None, **popen_kw):
        """Starts argv (not waiting for anything) with env added to our environment minus env_strip*."""
        e = {k: v for k, v in os.environ.items() if not k.startswith(self.env_strip)}
        e.update(env or {})
        self.exit_expected = False
        self.logf = open(self.log_path, "ab")
        self.logf.write(f"==== start #{self.starts}: {' '.join(argv)}\n".encode())
        self.logf.flush()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
                                     env=e, start_new_session=True, cwd=self.cwd, **popen_kw)
        self.starts += 1

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def died_unexpectedly(self):
        return self.proc is not None and self.proc.poll() is not None and not self.exit_expected

    def death_report(self):
        return f"{self.name} died unexpectedly (status {self.proc.returncode}); log tail:\n{self.log_tail(3000)}"

    def kill9(self):
        self.exit_expected = True
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self._close_log()

    def stop(self, timeout=15):
        """SIGTERM; returns the wait status as Popen.returncode (negative = killed by signal). After timeout
        SIGKILL, and with stop_strict a RuntimeError."""
        self.exit_expected = True
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                self._close_log()
                if self.stop_strict:
                    raise RuntimeError(f"{self.name} did not exit within {timeout}s of SIGTERM")
        self._close_log()
        return self.proc.returncode

    def wait_exit(self, timeout):
        """Reaps a process expected to exit by itself: its exit status, or None if it still runs after
        timeout (it is left running, and its death is unexpected again)."""
        self.exit_expected = True
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.exit_expected = False
            return None

    def wait_ready(self, ready, timeout, what, interval=0.05, fail=_raise_runtime):
        """Polls ready() until it returns a true value (returned); a request error, bad JSON or a missing
        key counts as not ready. fail(message with the log tail) if the process exits or timeout passes."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"{self.name} exited with {self.proc.returncode} before {what}; log:\n" + self.log_tail())
            try:
                last = ready()
                if last:
                    return last
            except (requests.RequestException, ValueError, KeyError) as e:
                last = e
            time.sleep(interval)
        fail(f"{self.name}: {what} not reached within {timeout}s (last: {last!r}); log:\n" + self.log_tail())

    def _close_log(self):
        if self.logf:
            self.logf.close()
            self.logf = None

    def cleanup(self):
        """Kills the process and removes its data dir (if made here) and its log (unless a test failed)."""
        try:
            self.kill9()
        except Exception:  # noqa: BLE001
            pass
        if self in live:
            live.remove(self)
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if not self.keep_log:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    # -- log -----------------------------------------------------------------------------------------
    def log_tail(self, n=20000):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def sanitizer_report(self):
        """The end of the log if it holds an ASan/UBSan report, else None."""
        log = self.log_tail(200000)
        if "Sanitizer" in log or "runtime error:" in log:
            return f"sanitizer report in the {self.name}'s log:\n{log[-6000:]}"
        return None

    # -- HTTP (self.url) -----------------------------------------------------------------------------
    def req(self, method, path, **kw):
        kw.setdefault("timeout", 10)
        kw.setdefault("allow_redirects", False)
        return requests.request(method, self.url + path, **kw)

    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def put(self, path, **kw):
        return self.req("PUT", path, **kw)

    def post(self, path, **kw):
        return self.req("POST", path, **kw)

    def delete(self, path, **kw):
        return self.req("DELETE", path, **kw)


def factory(make_one, check=None):
    """Body of a factory fixture (`yield from procs.factory(...)`): yields make(*a, **kw) -> make_one(*a,
    **kw), remembering what it made, and at teardown finish()es all of it."""
    made = []

    def make(*a, **kw):
        p = make_one(*a, **kw)
        made.append(p)
        return p

    yield make
    finish(made, check)


def finish(processes, check=None):
    """Teardown of a factory fixture: notes which processes died without being told to, then for each
    one calls check(p) (a report or None) and cleanup(), then fails the test with the reports."""
    reports = [p.death_report() for p in processes if p.died_unexpectedly()]
    for p in processes:
        if check is not None:
            r = check(p)
            if r:
                reports.append(r)
        p.cleanup()
    if reports:
        pytest.fail("\n".join(reports), pytrace=False)
