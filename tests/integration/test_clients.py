# SPDX-License-Identifier: Apache-2.0
"""Real clients against the daemon: etcdctl (ETCDCTL_API=2) and python3-etcd."""

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from conftest import unique

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"

try:
    import etcd  # python3-etcd
except ImportError:  # pragma: no cover
    etcd = None


def ctl(d, *args, timeout=20, check=None):
    env = dict(os.environ, ETCDCTL_API="2")
    for k in list(env):
        if k.startswith("ETCDCTL_") and k != "ETCDCTL_API":
            del env[k]
    p = subprocess.run([ETCDCTL, "--endpoints", d.url] + list(args), capture_output=True, text=True,
                       env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    if check is not None:
        assert p.returncode == check, (args, p.returncode, p.stdout, p.stderr)
    return p


needs_etcdctl = pytest.mark.skipif(not os.access(ETCDCTL, os.X_OK), reason="etcdctl not installed")
needs_pyetcd = pytest.mark.skipif(etcd is None, reason="python3-etcd not installed")


@needs_etcdctl
class TestEtcdctl:
    def test_set_get(self, daemon):
        k = "/" + unique()
        assert ctl(daemon, "set", k, "hello", check=0).stdout == "hello\n"
        assert ctl(daemon, "get", k, check=0).stdout == "hello\n"
        assert daemon.get("/v2/keys" + k).json()["node"]["value"] == "hello"

    def test_get_missing(self, daemon):
        k = "/" + unique()
        p = ctl(daemon, "get", k, check=4)
        assert re.fullmatch(r"Error:  100: Key not found \(%s\) \[\d+\]\n" % re.escape(k), p.stderr), p.stderr

    def test_mk(self, daemon):
        k = "/" + unique()
        assert ctl(daemon, "mk", k, "v1", check=0).stdout == "v1\n"
        p = ctl(daemon, "mk", k, "v2", check=4)
        assert "105: Key already exists (%s)" % k in p.stderr
        assert ctl(daemon, "get", k, check=0).stdout == "v1\n"

    def test_mkdir_rmdir(self, daemon):
        k = "/" + unique()
        ctl(daemon, "mkdir", k, check=0)
        assert daemon.get("/v2/keys" + k).json()["node"]["dir"] is True
        p = ctl(daemon, "mkdir", k, check=4)
        assert "105: Key already exists" in p.stderr
        ctl(daemon, "set", k + "/x", "x", check=0)
        p = ctl(daemon, "rmdir", k, check=4)
        assert "108: Directory not empty (%s)" % k in p.stderr
        ctl(daemon, "rm", k + "/x", check=0)
        ctl(daemon, "rmdir", k, check=0)
        assert daemon.get("/v2/keys" + k).status_code == 404

    def test_update(self, daemon):
        k = "/" + unique()
        p = ctl(daemon, "update", k, "v", check=4)
        assert "100: Key not found (%s)" % k in p.stderr
        ctl(daemon, "set", k, "a", check=0)
        assert ctl(daemon, "update", k, "b", check=0).stdout == "b\n"
        assert ctl(daemon, "get", k, check=0).stdout == "b\n"

    def test_rm(self, daemon):
        k = "/" + unique()
        ctl(daemon, "set", k, "gone", check=0)
        assert ctl(daemon, "rm", k, check=0).stdout == "PrevNode.Value: gone\n"
        p = ctl(daemon, "rm", k, check=4)
        assert "100: Key not found" in p.stderr

    def test_rm_recursive(self, daemon):
        k = "/" + unique()
        ctl(daemon, "set", k + "/a/b", "1", check=0)
        ctl(daemon, "rm", "--recursive", k, check=0)
        assert daemon.get("/v2/keys" + k).status_code == 404

    def test_ls_recursive(self, daemon):
        k = "/" + unique()
        for sub in ("a", "d/x", "d/y/z"):
            ctl(daemon, "set", f"{k}/{sub}", "1", check=0)
        out = ctl(daemon, "ls", "--recursive", k, check=0).stdout.split()
        assert sorted(out) == sorted([f"{k}/a", f"{k}/d", f"{k}/d/x", f"{k}/d/y", f"{k}/d/y/z"])
        out = ctl(daemon, "ls", "--recursive", "-p", k, check=0).stdout.split()
        assert f"{k}/d/" in out and f"{k}/d/y/" in out
        out = ctl(daemon, "ls", k, check=0).stdout.split()
        assert sorted(out) == [f"{k}/a", f"{k}/d"]

    def test_set_ttl_extended(self, daemon):
        k = "/" + unique()
        ctl(daemon, "set", "--ttl", "100", k, "v", check=0)
        out = ctl(daemon, "-o", "extended", "get", k, check=0).stdout
        assert f"Key: {k}\n" in out
        m = re.search(r"TTL: (\d+)", out)
        assert m and 98 <= int(m.group(1)) <= 100
        assert out.endswith("\nv\n")

    def test_json_output(self, daemon):
        k = "/" + unique()
        ctl(daemon, "set", k, "j", check=0)
        import json
        j = json.loads(ctl(daemon, "-o", "json", "get", k, check=0).stdout)
        assert j["action"] == "get" and j["node"]["key"] == k and j["node"]["value"] == "j"

    def test_swap(self, daemon):
        k = "/" + unique()
        ctl(daemon, "set", k, "v", check=0)
        ctl(daemon, "set", "--swap-with-value", "nope", k, "w", check=4)
        assert ctl(daemon, "set", "--swap-with-value", "v", k, "w", check=0).stdout == "w\n"

    def test_watch_after_index(self, daemon):
        k = "/" + unique()
        first = daemon.set(k, "one")["node"]["modifiedIndex"]
        daemon.set(k, "two")
        p = ctl(daemon, "watch", "--after-index", str(first), k, check=0)
        assert p.stdout == "two\n"
        p = ctl(daemon, "watch", "--after-index", str(first - 1), k, check=0)
        assert p.stdout == "one\n"

    def test_watch_live(self, daemon):
        k = "/" + unique()
        env = dict(os.environ, ETCDCTL_API="2")
        proc = subprocess.Popen([ETCDCTL, "--endpoints", daemon.url, "watch", k], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            time.sleep(1.0)
            daemon.set(k, "live")
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
            assert out == "live\n"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def test_exec_watch(self, daemon, tmp_path):
        k = "/" + unique()
        marker = tmp_path / "fired"
        env = dict(os.environ, ETCDCTL_API="2")
        # etcdctl 3.4's v2 exec-watch takes the key as the LAST argument when no "--" survives parsing
        proc = subprocess.Popen([ETCDCTL, "--endpoints", daemon.url, "exec-watch", "sh", "-c",
                                 f'echo "$ETCD_WATCH_VALUE $ETCD_WATCH_ACTION" >> {marker}', k],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            time.sleep(1.0)
            daemon.set(k, "ex")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (marker.exists() and marker.read_text()):
                time.sleep(0.1)
            assert marker.read_text().strip() == "ex set"
        finally:
            proc.kill()
            proc.wait()

    def test_member_list(self, daemon):
        out = ctl(daemon, "member", "list", check=0).stdout
        mid = daemon.get("/v2/members").json()["members"][0]["id"]
        assert out == (f"{mid}: name={daemon.name} peerURLs={daemon.peer_url} "
                       f"clientURLs={','.join(sorted(daemon.urls))} isLeader=true\n")

    def test_cluster_health(self, daemon):
        p = ctl(daemon, "cluster-health", check=0)
        mid = daemon.get("/v2/members").json()["members"][0]["id"]
        lines = p.stdout.splitlines()
        assert lines[0].startswith(f"member {mid} is healthy: got healthy result from http://127.0.0.1:")
        assert lines[-1] == "cluster is healthy"


@needs_pyetcd
class TestPythonEtcd:
    def client(self, d):
        return etcd.Client(host="127.0.0.1", port=d.client_ports[0], read_timeout=10)

    def test_write_read_delete(self, daemon):
        c = self.client(daemon)
        k = "/" + unique()
        r = c.write(k, "v1")
        assert r.value == "v1" and r.key == k
        assert c.read(k).value == "v1"
        assert c.get(k).value == "v1"
        c.delete(k)
        with pytest.raises(etcd.EtcdKeyNotFound):
            c.read(k)

    def test_test_and_set(self, daemon):
        c = self.client(daemon)
        k = "/" + unique()
        c.write(k, "a")
        c.test_and_set(k, "b", "a")
        assert c.read(k).value == "b"
        with pytest.raises(ValueError):
            c.test_and_set(k, "c", "zzz")
        assert c.read(k).value == "b"

    def test_prevexist(self, daemon):
        c = self.client(daemon)
        k = "/" + unique()
        c.write(k, "a", prevExist=False)
        with pytest.raises(etcd.EtcdAlreadyExist):
            c.write(k, "b", prevExist=False)

    def test_dirs(self, daemon):
        c = self.client(daemon)
        k = "/" + unique()
        c.write(k, None, dir=True)
        c.write(k + "/a", "1")
        c.write(k + "/b/c", "2")
        r = c.read(k, recursive=True)
        assert r.dir
        leaves = sorted((x.key, x.value) for x in r.leaves)
        assert leaves == [(k + "/a", "1"), (k + "/b/c", "2")]
        with pytest.raises(etcd.EtcdDirNotEmpty):
            c.delete(k, dir=True)
        c.delete(k, recursive=True)
        with pytest.raises(etcd.EtcdKeyNotFound):
            c.read(k)

    def test_in_order_append(self, daemon):
        c = self.client(daemon)
        k = "/" + unique()
        keys = [c.write(k, f"job{i}", append=True).key for i in range(3)]
        r = c.read(k, sorted=True)
        assert [x.key for x in r.children] == keys
        assert [x.value for x in r.children] == ["job0", "job1", "job2"]

    def test_ttl(self, daemon):
        c = self.client(daemon)
        k = "/" + unique()
        r = c.write(k, "t", ttl=100)
        assert 99 <= r.ttl <= 100
        c.write(k + "s", "t", ttl=1)
        deadline = time.monotonic() + 6
        gone = False
        while time.monotonic() < deadline:
            try:
                c.read(k + "s")
            except etcd.EtcdKeyNotFound:
                gone = True
                break
            time.sleep(0.2)
        assert gone

    def test_watch(self, daemon):
        c = self.client(daemon)
        k = "/" + unique()
        first = c.write(k, "w1").modifiedIndex
        c.write(k, "w2")
        assert c.watch(k, index=first).value == "w1"
        assert c.watch(k, index=first + 1).value == "w2"
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", c.watch(k, timeout=10)), daemon=True)
        t.start()
        time.sleep(0.5)
        self.client(daemon).write(k, "w3")
        t.join(10)
        assert box["r"].value == "w3"

    def test_eternal_watch(self, daemon):
        c = self.client(daemon)
        k = "/" + unique()
        start = c.write(k, "e0").modifiedIndex
        for i in range(1, 4):
            c.write(k, f"e{i}")
        got = []
        for ev in c.eternal_watch(k, index=start + 1):
            got.append(ev.value)
            if len(got) == 3:
                break
        assert got == ["e1", "e2", "e3"]

    def test_members_and_leader(self, daemon):
        c = self.client(daemon)
        mid = daemon.get("/v2/members").json()["members"][0]["id"]
        assert mid in c.members
        assert c.leader["id"] == mid
        assert c.machines == sorted(daemon.urls)
