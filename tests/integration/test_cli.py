# SPDX-License-Identifier: Apache-2.0
"""The etcd2 binary's command line and environment (our binary only)."""

import os
import re
import subprocess
import tempfile

import pytest

from conftest import OUR_BINARY, only_ours, free_ports, unique

pytestmark = [only_ours,
              pytest.mark.skipif(not (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)),
                                 reason="ETCD2_BINARY not set or not executable")]


def run(args, env=None, timeout=15):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    e.update(env or {})
    with tempfile.TemporaryDirectory(prefix="etcd2-cli-") as cwd:
        p = subprocess.run([OUR_BINARY] + list(args), capture_output=True, text=True, env=e, cwd=cwd,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr


def base_args(tmp):
    c, p = free_ports(2)
    return ["--name", "cli", "--data-dir", str(tmp),
            "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
            "--listen-peer-urls", f"http://127.0.0.1:{p}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{p}", "--initial-cluster", f"cli=http://127.0.0.1:{p}"]


@pytest.mark.parametrize("flag", ["-h", "--help", "-help"])
def test_help(flag):
    rc, out = run([flag])
    assert rc == 0, out
    assert "etcd --version" in out and "-h | --help" in out
    low = out.lower()
    for group in ("member flags", "clustering flags", "proxy flags", "security flags", "logging flags",
                  "unsafe flags", "experimental flags", "profiling flags"):
        assert group in low, f"help lacks group {group!r}"
    for flag_name in ("--name", "--data-dir", "--listen-client-urls", "--initial-cluster-token",
                      "--discovery", "--proxy", "--cert-file", "--debug", "--force-new-cluster"):
        assert flag_name in out


@pytest.mark.parametrize("flag", ["--version", "-version"])
def test_version(flag):
    rc, out = run([flag])
    assert rc == 0, out
    lines = out.strip().splitlines()
    assert lines[0] == "etcd Version: 2.3.8"
    assert any(line.startswith("Git SHA:") for line in lines)
    assert any(line.startswith("Go Version:") for line in lines)
    assert any(line.startswith("Go OS/Arch:") for line in lines)


def test_version_ignores_env():
    rc, out = run(["--version"], env={"ETCD_NAME": "x", "ETCD_SNAPSHOT_COUNT": "abc"})
    assert rc == 0 and "2.3.8" in out


@pytest.mark.parametrize("args", [
    ["--no-such-flag"],
    ["--snapshot-count", "abc"],
    ["--heartbeat-interval", "-1"],
    ["--debug=maybe"],
    ["-peers", "127.0.0.1:7001"],
    ["-peers-file", "/tmp/x"],
    ["--initial-cluster-state", "bogus"],
    ["--proxy", "sideways"],
    ["--name"],
])
def test_bad_flag_exit_2(args):
    rc, out = run(args)
    assert rc == 2, (rc, out)
    assert out.strip(), "no message on a flag error"


def test_unknown_flag_named_in_message():
    rc, out = run(["--no-such-flag"])
    assert rc == 2 and "no-such-flag" in out


@pytest.mark.parametrize("extra,pattern", [
    (["stray"], r"'stray' is not a valid flag"),
    (["--election-timeout", "100", "--heartbeat-interval", "100"], r"(?i)election"),
    (["--election-timeout", "60000"], r"(?i)election"),
    (["--discovery", "http://127.0.0.1:1/x"], r"(?i)(discovery|initial-cluster)"),
])
def test_invalid_config_exit_1(tmp_path, extra, pattern):
    rc, out = run(base_args(tmp_path) + extra)
    assert rc == 1, (rc, out)
    assert re.search(pattern, out), out


BAD_URLS = ["ftp://127.0.0.1:1", "http://127.0.0.1:1/path", "http://127.0.0.1", "nonsense"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls_flag_exit_2(tmp_path, url):
    # URL flags validate in their flag setter: a bad URL on the command line is a flag error (exit 2)
    args = base_args(tmp_path)
    i = args.index("--listen-client-urls")
    args[i + 1] = url
    rc, out = run(args)
    assert rc == 2, (rc, out)
    assert url in out


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls_env_exit_1(tmp_path, url):
    # ... while the same value from the environment is a configuration error (exit 1)
    args = base_args(tmp_path)
    i = args.index("--listen-client-urls")
    del args[i:i + 2]
    rc, out = run(args, env={"ETCD_LISTEN_CLIENT_URLS": url})
    assert rc == 1, (rc, out)
    assert f'invalid value "{url}" for ETCD_LISTEN_CLIENT_URLS' in out


def test_listen_without_advertise_exit_1(tmp_path):
    c, = free_ports(1)
    rc, out = run(["--data-dir", str(tmp_path), "--listen-client-urls", f"http://127.0.0.1:{c}"])
    assert rc == 1, (rc, out)
    assert "advertise-client-urls" in out


def test_bad_env_value_exit_1(tmp_path):
    rc, out = run(base_args(tmp_path), env={"ETCD_SNAPSHOT_COUNT": "abc"})
    assert rc == 1, (rc, out)
    assert 'invalid value "abc" for ETCD_SNAPSHOT_COUNT' in out


def test_name_not_in_initial_cluster(tmp_path):
    args = base_args(tmp_path)
    args[args.index("--name") + 1] = "other"
    rc, out = run(args)
    assert rc == 1, (rc, out)
    assert "other" in out


def test_env_configuration_takes_effect(make_daemon):
    d = make_daemon(name="fromenv", use_env=True)
    m = d.get("/v2/members").json()["members"]
    assert len(m) == 1
    assert m[0]["name"] == "fromenv"
    assert m[0]["peerURLs"] == [d.peer_url]
    assert m[0]["clientURLs"] == sorted(d.urls)
    assert d.get("/v2/stats/self").json()["name"] == "fromenv"
    assert os.path.isdir(os.path.join(d.data_dir, "member"))


def test_cli_beats_env(make_daemon):
    d = make_daemon(name="clinode", env={"ETCD_NAME": "envnode"})
    assert d.get("/v2/members").json()["members"][0]["name"] == "clinode"


def test_env_cors(make_daemon):
    d = make_daemon(env={"ETCD_CORS": "http://o.example:1"})
    r = d.get("/v2/keys/", headers={"Origin": "http://o.example:1"})
    assert r.headers.get("Access-Control-Allow-Origin") == "http://o.example:1"


def test_env_token_changes_ids(make_daemon):
    import hashlib
    import struct
    d = make_daemon(env={"ETCD_INITIAL_CLUSTER_TOKEN": "tok-" + unique()})
    tok = d.env_extra["ETCD_INITIAL_CLUSTER_TOKEN"]
    want = struct.unpack(">Q", hashlib.sha1((d.peer_url + tok).encode()).digest()[:8])[0]
    assert d.get("/v2/members").json()["members"][0]["id"] == "%x" % want


def test_empty_env_ignored(make_daemon):
    d = make_daemon(env={"ETCD_SNAPSHOT_COUNT": "", "ETCD_UNKNOWN_THING": "1"})
    d.check_serving()
