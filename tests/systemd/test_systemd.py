# SPDX-License-Identifier: Apache-2.0
"""etcd2 under a real systemd (PID 1 of a private namespace; see sdmachine.py), installed by meson.

The tests share one booted namespace and run in file order: socket activation first, then drop-ins, the
journal, status, restarts (clean stop, kill -9, watchdog), D-Bus, and the cloud-config generator last
(it renames the member and wipes its data). Ports are etcd2's defaults, private to the namespace's network.
"""

import json
import re
import time

import pytest

CLIENT = "http://127.0.0.1:2379"
CLIENT_LEGACY = "http://127.0.0.1:4001"
PEER = "http://127.0.0.1:2380"
PEER_LEGACY = "http://127.0.0.1:7001"
DROPINS = "/run/systemd/system/etcd2.service.d"
BUS_NAME = "io.etcd.etcd2"
BUS_PATH = "/io/etcd/etcd2"
BUS_IFACE = "io.etcd.etcd2.Cluster"
NOBODY = "65534"


def members(m, url=CLIENT):
    code, body = m.http("GET", url + "/v2/members")
    assert code == 200, f"GET /v2/members: {code} {body}"
    return json.loads(body)["members"]


def wait_member_named(m, name, timeout=20):
    """Polls /v2/members until a member called `name` is listed (the name is published after start)."""
    def named():
        code, body = m.http("GET", CLIENT + "/v2/members")
        if code != 200:
            return None
        ms = [x for x in json.loads(body)["members"] if x.get("name") == name]
        return ms[0] if ms else None
    return m.wait_for(f"member {name!r} in /v2/members", named, timeout=timeout)


def write_dropin(m, name, text):
    m.run(["mkdir", "-p", DROPINS])
    m.run(["sh", "-c", f"cat > {DROPINS}/{name}"], input=text)


def remove_dropin(m, name):
    m.run(["rm", "-f", f"{DROPINS}/{name}"])


def main_pid(m):
    return int(m.prop("etcd2.service", "MainPID"))


def n_restarts(m):
    return int(m.prop("etcd2.service", "NRestarts"))


def wait_active(m, timeout=20):
    m.wait_for("etcd2.service active with a main PID",
               lambda: m.prop("etcd2.service", "ActiveState") == "active" and main_pid(m) > 0, timeout=timeout)


def journal_entries(m, *args):
    out = m.journal("-o", "json", *args)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- install
def test_installed_layout(machine):
    m = machine
    # systemd-sysusers applied the installed sysusers.d file to our copy of the user database.
    r = m.run(["getent", "passwd", "etcd"])
    assert r.stdout.startswith("etcd:")
    # ExecStart= points at the installed binary, and that is the one meson just built.
    exec_start = m.prop("etcd2.service", "ExecStart")
    binary = re.search(r"path=(\S+)", exec_start).group(1)
    assert binary == m.prefix + "/bin/etcd2"
    assert m.run(["cmp", binary, f"/run/etcd2-test/w/dest{binary}"], check=False).returncode == 0
    # The tmpfiles.d entry applies cleanly (creates/fixes /var/lib/etcd2 for the etcd user).
    tmpfiles = [d for d in m.installed.values() if "tmpfiles.d" in d][0]
    m.run(["systemd-tmpfiles", "--create", tmpfiles])
    st = m.run(["stat", "-c", "%U %a", "/var/lib/etcd2"]).stdout.split()
    assert st == ["etcd", "700"], st
    # Our units are the installed ones.
    assert m.prop("etcd2.service", "LoadState") == "loaded"
    assert m.prop("etcd2.socket", "LoadState") == "loaded"
    assert m.prop("etcd2-peer.socket", "LoadState") == "loaded"


# ---------------------------------------------------------------------------------------------- sockets
def test_socket_activation(machine):
    m = machine
    assert m.prop("etcd2.service", "ActiveState") == "inactive"
    m.systemctl("start", "etcd2.socket", "etcd2-peer.socket")
    assert m.prop("etcd2.socket", "SubState") == "listening"
    assert m.prop("etcd2-peer.socket", "SubState") == "listening"
    assert sorted(m.prop("etcd2.socket", "Listen").split()) == \
        sorted(["127.0.0.1:2379", "(Stream)", "127.0.0.1:4001", "(Stream)"])
    # Listening sockets alone start nothing.
    time.sleep(0.5)
    assert m.prop("etcd2.service", "ActiveState") == "inactive"

    # The first connection to 2379 starts etcd2.service (Type=notify: the reply comes after READY=1).
    t0 = time.monotonic()
    code, body = m.http("GET", CLIENT + "/version")
    assert code == 200, body
    assert json.loads(body)["etcdserver"] == "2.3.8"
    print(f"first socket-activated request answered in {time.monotonic() - t0:.3f}s")
    assert m.prop("etcd2.service", "ActiveState") == "active"
    assert m.prop("etcd2.service", "SubState") == "running"
    assert int(m.prop("etcd2.service", "NRestarts")) == 0


def test_member_listed_on_first_request(machine):
    """READY=1 means serving: the very first request of a fresh member already sees it in /v2/members
    (etcd2 lists the members of --initial-cluster from the start, before the name is published)."""
    m = machine
    m.systemctl("stop", "etcd2.service")
    m.run(["sh", "-c", "rm -rf /var/lib/etcd2/*"])
    ms = members(m)  # this request starts etcd2.service
    assert m.prop("etcd2.service", "ActiveState") == "active"
    assert len(ms) == 1, f"first /v2/members after activation: {ms}"
    assert ms[0]["peerURLs"] == ["http://localhost:2380", "http://localhost:7001"]


def test_legacy_and_peer_ports_answer(machine):
    m = machine
    code, body = m.http("GET", CLIENT_LEGACY + "/version")
    assert code == 200, body
    code, body = m.http("GET", CLIENT_LEGACY + "/v2/keys/")
    assert code == 200, body
    # The fds named "peer" serve the peer API, not the client API.
    for url in (PEER, PEER_LEGACY):
        code, body = m.http("GET", url + "/members")
        assert code == 200, (url, body)
        assert isinstance(json.loads(body), list) and len(json.loads(body)) == 1
        code, _ = m.http("GET", url + "/v2/keys/")
        assert code == 404, url
    # Exactly one etcd2 process serves all four ports.
    assert len(m.run(["pgrep", "-x", "etcd2"]).stdout.split()) == 1


def test_name_from_dropin(machine):
    m = machine
    m.systemctl("stop", "etcd2.service")
    write_dropin(m, "60-name.conf", '[Service]\nEnvironment="ETCD_NAME=sd-test-member"\n')
    m.systemctl("daemon-reload")
    assert "ETCD_NAME=sd-test-member" in m.prop("etcd2.service", "Environment")
    assert m.prop("etcd2.service", "ActiveState") == "inactive"
    # The sockets stayed open across the stop: the next request starts it again with the new name.
    member = wait_member_named(m, "sd-test-member")
    assert member["clientURLs"] == ["http://localhost:2379", "http://localhost:4001"]
    assert len(members(m)) == 1


# ---------------------------------------------------------------------------------------------- journal
def test_journal_priorities(machine):
    m = machine
    entries = journal_entries(m, "-u", "etcd2.service")
    ours = [e for e in entries if e.get("_COMM") == "etcd2"]
    assert ours, "no journal entries from etcd2"
    for e in ours:
        assert e.get("SYSLOG_IDENTIFIER") == "etcd2", e
        # journald must have taken the "<N>" prefix off into PRIORITY.
        assert not re.match(r"<\d>", e["MESSAGE"]), e["MESSAGE"]
        assert e["PRIORITY"] in "01234567"
    by_text = {}
    for e in ours:
        by_text.setdefault(e["MESSAGE"], set()).add(e["PRIORITY"])

    def prio_of(pattern):
        hits = [p for text, ps in by_text.items() if re.search(pattern, text) for p in ps]
        assert hits, f"no journal line matching {pattern!r}; have: {list(by_text)[:20]}"
        return hits

    # Startup lines, info (6).
    assert set(prio_of(r"serving client requests")) == {"6"}
    assert set(prio_of(r"recognized and used environment variable ETCD_DATA_DIR=/var/lib/etcd2")) == {"6"}
    assert set(prio_of(r"recognized and used environment variable ETCD_NAME=sd-test-member")) == {"6"}
    # The stop in test_name_from_dropin: notice (5).
    assert set(prio_of(r"Received .*, shutting down")) == {"5"}


def test_journal_structured_fields(machine):
    m = machine
    ours = [e for e in journal_entries(m, "-u", "etcd2.service") if e.get("_COMM") == "etcd2"]
    native = [e for e in ours if e.get("_TRANSPORT") == "journal"]
    # Key events (leader elected, member added/removed) go to the journal natively with ETCD_* fields.
    assert native, "the daemon sent no structured (log_struct) entries in this run"
    for e in native:
        assert e.get("SYSLOG_IDENTIFIER") == "etcd2", e
        assert e.get("CODE_FILE") and e.get("CODE_LINE") and e.get("CODE_FUNC"), e
        assert e.get("PRIORITY") in "01234567"
        assert e.get("_SYSTEMD_UNIT") == "etcd2.service"
    fields = {k for e in native for k in e if k.startswith("ETCD_")}
    assert fields, "structured entries carry no ETCD_* fields"
    elected = [e for e in native if e.get("ETCD_EVENT") == "leader-elected"]
    assert elected, "no leader-elected event with its fields"
    members = {e.get("ETCD_MEMBER_ID") for e in elected}
    # journalctl can select them by field, as an administrator would.
    mid = sorted(members)[0]
    sel = journal_entries(m, "-u", "etcd2.service", f"ETCD_MEMBER_ID={mid}")
    assert any("became leader" in e.get("MESSAGE", "") for e in sel), sel


# ---------------------------------------------------------------------------------------------- status
def test_status_shows_status_line(machine):
    m = machine
    wait_active(m)
    status = m.wait_for("STATUS= in the unit", lambda: m.prop("etcd2.service", "StatusText"))
    assert re.match(r"Serving: member [0-9a-f]+ of cluster [0-9a-f]+, term \d+, index \d+, leader [0-9a-f]+",
                    status), status
    r = m.systemctl("status", "etcd2.service", check=False)
    assert r.returncode == 0, r.stdout
    assert f'Status: "{status}"' in r.stdout or "Status: \"Serving: member" in r.stdout, r.stdout
    assert "TriggeredBy:" in r.stdout and "etcd2.socket" in r.stdout and "etcd2-peer.socket" in r.stdout


# ---------------------------------------------------------------------------------------------- stop / restart
def test_clean_stop(machine):
    m = machine
    wait_active(m)
    m.systemctl("stop", "etcd2.service")
    assert m.prop("etcd2.service", "ActiveState") == "inactive"
    assert m.prop("etcd2.service", "Result") == "success"
    assert m.systemctl("is-failed", "etcd2.service", check=False).returncode != 0
    assert "STOPPING" not in m.prop("etcd2.service", "StatusText")
    assert m.prop("etcd2.socket", "SubState") == "listening"


def test_bad_config_fails_with_error_in_journal(machine):
    m = machine
    write_dropin(m, "65-bad.conf", '[Service]\nEnvironment="ETCD_ELECTION_TIMEOUT=10"\nRestart=no\n')
    m.systemctl("daemon-reload")
    try:
        r = m.systemctl("start", "etcd2.service", check=False)
        assert r.returncode != 0
        assert m.prop("etcd2.service", "ActiveState") == "failed"
        assert m.prop("etcd2.service", "Result") == "exit-code"
        assert m.prop("etcd2.service", "ExecMainStatus") == "1"
        errors = [e for e in journal_entries(m, "-u", "etcd2.service", "-p", "err")
                  if e.get("_COMM") == "etcd2" and "election-timeout" in e["MESSAGE"]]
        assert errors and all(e["PRIORITY"] == "3" for e in errors), errors
    finally:
        remove_dropin(m, "65-bad.conf")
        m.systemctl("daemon-reload")
        m.systemctl("reset-failed", "etcd2.service", check=False)
    assert m.prop("etcd2.socket", "SubState") == "listening"
    code, body = m.http("GET", CLIENT + "/version")
    assert code == 200, body


def test_kill9_restarts_and_keeps_data(machine):
    m = machine
    code, body = m.http("PUT", CLIENT + "/v2/keys/sdtest/durable", {"value": "before-kill"})
    assert code in (200, 201), body
    wait_active(m)
    pid, restarts = main_pid(m), n_restarts(m)
    m.run(["kill", "-KILL", str(pid)])
    m.wait_for("a restart after kill -9",
               lambda: n_restarts(m) == restarts + 1 and m.prop("etcd2.service", "ActiveState") == "active"
               and main_pid(m) not in (0, pid), timeout=20)
    code, body = m.http("GET", CLIENT + "/v2/keys/sdtest/durable")
    assert code == 200, body
    assert json.loads(body)["node"]["value"] == "before-kill"
    log = m.journal("-u", "etcd2.service")
    assert "Main process exited, code=killed, status=9/KILL" in log


def test_watchdog_kills_stalled_loop(machine):
    m = machine
    write_dropin(m, "70-watchdog.conf", "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n")
    m.systemctl("daemon-reload")
    m.systemctl("restart", "etcd2.service")
    wait_active(m)
    assert m.prop("etcd2.service", "WatchdogUSec") == "2s"
    pid, restarts = main_pid(m), n_restarts(m)
    # A healthy loop pings the watchdog (sd_event_set_watchdog): nothing happens for several periods.
    time.sleep(5)
    assert main_pid(m) == pid and n_restarts(m) == restarts, "watchdog fired on a healthy daemon"
    assert m.prop("etcd2.service", "WatchdogTimestampMonotonic") != "0"

    try:
        m.run(["kill", "-STOP", str(pid)])
        m.wait_for("the watchdog kill and the restart",
                   lambda: n_restarts(m) == restarts + 1 and m.prop("etcd2.service", "ActiveState") == "active"
                   and main_pid(m) not in (0, pid), timeout=30)
    finally:
        m.run(["kill", "-CONT", str(pid)], check=False)
        remove_dropin(m, "70-watchdog.conf")
        m.systemctl("daemon-reload")
    log = m.journal("-u", "etcd2.service")
    assert "Watchdog timeout" in log, log[-2000:]
    code, body = m.http("GET", CLIENT + "/v2/keys/sdtest/durable")
    assert code == 200 and json.loads(body)["node"]["value"] == "before-kill"


# ---------------------------------------------------------------------------------------------- D-Bus
def busctl(m, *args, user=None, check=False):
    return m.run(["busctl", "--system", "--no-pager", *args], user=user, check=check)


@pytest.fixture(scope="module")
def on_bus(machine):
    """etcd2 running and owning io.etcd.etcd2 on the namespace's system bus (within 5 s), else fail."""
    m = machine
    wait_active(m)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = busctl(m, "--list", "--acquired")
        if BUS_NAME in r.stdout.split():
            return m
        time.sleep(0.1)
    pytest.fail(f"{BUS_NAME} did not appear on the system bus within 5 s (busctl --list); is daemon/bus.c "
                f"wired into daemon/manager.c yet? dbus.service is {m.prop('dbus.service', 'ActiveState')}")


def test_bus_introspect_and_tree(on_bus):
    m = on_bus
    r = busctl(m, "tree", BUS_NAME, check=True)
    assert BUS_PATH in r.stdout
    assert re.search(BUS_PATH + r"/member/\S+", r.stdout), r.stdout
    r = busctl(m, "introspect", BUS_NAME, BUS_PATH, check=True)
    for item in (BUS_IFACE, ".RemoveMember", ".AddMember", ".Name", ".MemberID", ".LeaderChanged"):
        assert item in r.stdout, item


def test_bus_properties(on_bus):
    m = on_bus
    name = busctl(m, "get-property", BUS_NAME, BUS_PATH, BUS_IFACE, "Name", check=True).stdout.split()
    assert name == ["s", '"sd-test-member"'], name
    version = busctl(m, "get-property", BUS_NAME, BUS_PATH, BUS_IFACE, "Version", check=True).stdout.split()
    assert version == ["s", '"2.3.8"'], version
    mid = busctl(m, "get-property", BUS_NAME, BUS_PATH, BUS_IFACE, "MemberID", check=True).stdout.split()[1]
    ms = members(m)
    assert mid.strip('"') == ms[0]["id"]
    # Anyone may read properties.
    r = busctl(m, "get-property", BUS_NAME, BUS_PATH, BUS_IFACE, "Name", user=NOBODY)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["s", '"sd-test-member"']


def test_bus_method_policy(on_bus):
    m = on_bus
    bogus = "1234567890abcdef"
    send = ["dbus-send", "--system", "--print-reply", f"--dest={BUS_NAME}", BUS_PATH,
            f"{BUS_IFACE}.RemoveMember", f"string:{bogus}"]
    # root gets through the bus policy to the daemon, which refuses an unknown member on its own terms.
    r = m.run(send, check=False)
    assert r.returncode != 0
    assert "Error io.etcd.etcd2.Error.MemberNotFound" in r.stderr, r.stderr
    r = busctl(m, "call", BUS_NAME, BUS_PATH, BUS_IFACE, "RemoveMember", "s", bogus)
    assert r.returncode != 0 and "Access denied" not in r.stderr, r.stderr
    # nobody is stopped by dbus-daemon's policy ("Rejected send message"), before reaching the daemon
    # (whose own sd-bus check would answer differently).
    r = m.run(send, user=NOBODY, check=False)
    assert r.returncode != 0
    assert "Error org.freedesktop.DBus.Error.AccessDenied: Rejected send message" in r.stderr, r.stderr
    r = busctl(m, "call", BUS_NAME, BUS_PATH, BUS_IFACE, "RemoveMember", "s", bogus, user=NOBODY)
    assert r.returncode != 0 and "Access denied" in r.stderr, r.stderr
    # ... while reading is open to everyone.
    r = m.run(["dbus-send", "--system", "--print-reply", f"--dest={BUS_NAME}", BUS_PATH,
               "org.freedesktop.DBus.Properties.Get", f"string:{BUS_IFACE}", "string:Version"],
              user=NOBODY, check=False)
    assert r.returncode == 0 and '"2.3.8"' in r.stdout, r.stderr
    assert len(members(m)) == 1


# ---------------------------------------------------------------------------------------------- generator
CLOUD_CONFIG = """#cloud-config
hostname: ignored
coreos:
  etcd2:
    name: cloud-$private_ipv4
    advertise-client-urls: http://$private_ipv4:2379,http://$private_ipv4:4001
    initial_cluster_token: sd-cloud-token
    debug: false
  units:
    - name: etcd2.service
      command: start
"""


def test_cloudinit_generator(machine):
    m = machine
    if not m.generator:
        pytest.fail("etcd2-cloudinit-generator is not installed by meson")
    dropin = "/run/systemd/generator/etcd2.service.d/20-cloudinit.conf"
    m.systemctl("stop", "etcd2.service")
    remove_dropin(m, "60-name.conf")
    # A fresh member: the cluster token only matters at bootstrap.
    m.run(["sh", "-c", "rm -rf /var/lib/etcd2/*"])
    m.set_environment('COREOS_PUBLIC_IPV4=192.0.2.1\nCOREOS_PRIVATE_IPV4="127.0.0.1"\n')
    m.set_cloud_config(CLOUD_CONFIG)
    m.systemctl("daemon-reload")

    text = m.run(["cat", dropin]).stdout
    lines = [x for x in text.splitlines() if not x.startswith("#")]
    assert lines == ["[Service]",
                     'Environment="ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379,http://127.0.0.1:4001"',
                     'Environment="ETCD_INITIAL_CLUSTER_TOKEN=sd-cloud-token"',
                     'Environment="ETCD_NAME=cloud-127.0.0.1"'], text
    assert dropin in m.prop("etcd2.service", "DropInPaths")

    member = wait_member_named(m, "cloud-127.0.0.1")
    assert member["clientURLs"] == ["http://127.0.0.1:2379", "http://127.0.0.1:4001"]
    log = m.journal("-u", "etcd2.service")
    assert "ETCD_INITIAL_CLUSTER_TOKEN=sd-cloud-token" in log

    # A broken cloud-config: no drop-in at all after the next reload.
    m.set_cloud_config("coreos:\n  etcd2:\n    name: x\n    bogus-flag: 1\n")
    m.systemctl("daemon-reload")
    assert m.run(["test", "-e", dropin], check=False).returncode != 0
    assert "ETCD_NAME=x" not in m.prop("etcd2.service", "Environment")
    # Its stderr is /dev/null under systemd: the reason went to the kernel log (a file in the test).
    kmsg = m.kmsg()
    assert "<3>etcd2: /run/etcd2-test/w/cloud-config.yml:4: coreos.etcd2: unknown key 'bogus-flag'" in kmsg, kmsg
    m.set_cloud_config(None)
    m.systemctl("daemon-reload")
    assert m.run(["test", "-e", dropin], check=False).returncode != 0
