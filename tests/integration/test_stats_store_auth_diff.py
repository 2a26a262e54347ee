# SPDX-License-Identifier: Apache-2.0
"""Differential test of /v2/stats/store with v2 auth (issue 12): etcd's v2 auth keeps its users, roles and
enabled flag in the v2 store and reads them with store gets for every request it checks (/2/enabled, the
user, each of its roles until one grants, the guest role without credentials, /2/users/ and /2/roles/ for
the lists, quorum gets before updates), and writes them with creates, updates and deletes, the first write
of a process preceded by the creation of /2, /2/users/, /2/roles/ and /2/enabled (ensureAuthDirectories()).
One mixed sequence goes to our member and to etcd 3.4 (--enable-v2): auth off, users and roles made, auth
on (requests as root, as a user with and without permission, as guest, with a bad password, the users/roles
endpoints), auth off again, and a restart. After every step each counter's delta, the status and the
store index's delta must be the same on both; on ours, /metrics' store reads and writes move with them.

The one difference kept: an update of a user or role is a compareAndSwap on ours (on the modifiedIndex it
was merged from, so that two members' concurrent updates cannot lose one), an update on etcd.
etcd's quorum gets (before an update, of root and guest on enable) are Raft requests that move the counters
of every member; ours count on the member that serves the request (the same in this one-member test)."""

import os

import pytest
import requests

from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY

pytestmark = pytest.mark.skipif(
    REFERENCE or not (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)) or not os.access(REFERENCE_BINARY, os.X_OK),
    reason="needs both ETCD2_BINARY and /usr/bin/etcd")

K = "/v2/keys/sd"
U = "/v2/auth/users/"
R = "/v2/auth/roles/"
E = "/v2/auth/enable"
ROOT = ("root", "rootpw")
BOB = ("bob", "bobpw")
CARL = ("carl", "carlpw")
ALL = {"kv": {"read": ["/*"], "write": ["/*"]}}

# (method, path, credentials, JSON body / form data / raw body, flags); flags: "upd" = an update of a user
# or role (a compareAndSwap on ours), "nostatus" = the answers differ on purpose (only counters compared)
STEPS = [
    # auth never enabled: only /2/enabled is read (and missing)
    ("GET", K + "/a", None, None, ""),
    ("PUT", K + "/a", None, {"value": "1"}, ""),
    ("GET", E, None, None, ""),
    ("GET", U, None, None, ""),
    ("GET", R, None, None, ""),
    ("GET", U + "root", None, None, ""),
    ("GET", R + "root", None, None, ""),
    ("PUT", E, None, None, ""),                                              # no root user: 409
    ("DELETE", E, None, None, ""),                                           # already disabled: 409
    # users and roles; the first write creates /2, /2/users/, /2/roles/, /2/enabled
    ("PUT", U + "root", None, {"user": "root", "password": "rootpw"}, ""),
    ("PUT", U + "bob", None, {"user": "bob", "password": "bobpw"}, ""),
    ("PUT", R + "rw", None, {"role": "rw", "permissions": {"kv": {"read": ["/sd/rw*"], "write": ["/sd/rw*"]}}}, ""),
    ("PUT", R + "ro", None, {"role": "ro", "permissions": {"kv": {"read": ["/sd/*"], "write": []}}}, ""),
    ("PUT", R + "rw", None, {"role": "rw"}, ""),                             # exists: 409
    ("PUT", U + "bob", None, {"user": "bob", "grant": ["ro", "rw"]}, "upd"),
    ("PUT", U + "bob", None, {"user": "bob", "grant": ["rw"]}, ""),           # duplicate grant: 409
    ("PUT", U + "bob", None, {"user": "bob", "revoke": ["nope"]}, ""),        # ungranted: 409
    ("PUT", U + "bob", None, {"user": "bob"}, ""),                            # not updated: 400
    ("PUT", U + "bob", None, {"user": "bob", "roles": ["ro"], "grant": ["rw"]}, ""),  # both: 400
    ("PUT", U + "zz", None, {"user": "zz", "grant": ["rw"]}, ""),             # no such user: 404
    ("PUT", U + "carl", None, {"user": "carl", "password": "carlpw", "roles": ["ghost"]}, ""),  # CreateUser
    ("PUT", U + "carl", None, {"user": "carl", "password": "carlpw", "roles": ["ghost"]}, ""),  # exists: 409
    ("PUT", U + "dan", None, {"user": "dan", "password": ""}, ""),            # empty password: 400
    ("PUT", U + "bob", None, "{", ""),                                       # bad JSON: 400
    ("PUT", U + "bob", None, {"user": "bobby", "password": "x"}, ""),         # name mismatch: 400
    ("PUT", R + "ro", None, {"role": "ro", "grant": {"kv": {"write": ["/sd/ro/w"]}}}, "upd"),
    ("PUT", R + "ro", None, {"role": "ro", "grant": {"kv": {"write": ["/sd/ro/w"]}}}, ""),  # duplicate: 409
    ("PUT", R + "ro", None, {"role": "ro", "revoke": {"kv": {"write": ["/nope"]}}}, ""),    # not updated: 400
    ("PUT", R + "ro", None, {"role": "ro", "permissions": ALL, "grant": ALL}, ""),          # both: 400
    ("PUT", R + "zz", None, {"role": "zz", "grant": {"kv": {"read": ["/a"]}}}, ""),          # no such role: 404
    ("PUT", R + "root", None, {"role": "root"}, ""),                         # 403
    ("PUT", R + "root", None, {"role": "root", "grant": ALL}, ""),           # 403
    ("GET", U + "bob", None, None, ""),
    ("GET", U + "zz", None, None, ""),
    ("GET", U + "carl", None, None, "nostatus"),                             # its role is missing: 3.4 404s
    ("GET", R + "ro", None, None, ""),
    ("GET", R + "zz", None, None, ""),
    ("GET", R + "root", None, None, ""),
    ("GET", U, None, None, ""),
    ("GET", R, None, None, ""),
    ("PUT", U + "root", None, {"user": "root", "password": "rootpw"}, "upd"),  # CreateOrUpdateUser: update
    ("PUT", E, None, None, ""),                                              # enables, makes role guest
    # auth on
    ("GET", K + "/a", None, None, ""),                                       # guest
    ("PUT", K + "/g", None, {"value": "1"}, ""),                               # guest
    ("GET", K + "/a", ROOT, None, ""),
    ("GET", K + "/a", BOB, None, ""),                                        # ro grants
    ("PUT", K + "/rw/x", BOB, {"value": "1"}, ""),                            # ro refuses, rw grants
    ("PUT", K + "/other", BOB, {"value": "1"}, ""),                           # refused: 401
    ("GET", K, BOB, {"recursive": "true"}, ""),                              # no prefix pattern: 401
    ("GET", K + "/a", ("bob", "wrong"), None, ""),
    ("GET", K + "/a", ("nobody", "x"), None, ""),
    ("GET", K + "/a", CARL, None, ""),                                       # its role does not exist
    ("GET", K + "/missing", ROOT, None, ""),
    ("GET", K + "/a", ROOT, {"quorum": "true"}, ""),
    ("DELETE", K + "/g", ROOT, None, ""),
    ("GET", E, None, None, ""),
    ("GET", U, None, None, ""),                                              # guest: 401
    ("GET", U, BOB, None, ""),                                               # not root: 401
    ("GET", U, ("root", "wrong"), None, ""),
    ("GET", U, ROOT, None, ""),
    ("GET", R, ROOT, None, ""),
    ("GET", U + "bob", ROOT, None, ""),
    ("GET", R + "guest", ROOT, None, ""),
    ("PUT", U + "eve", BOB, {"user": "eve", "password": "x"}, ""),            # 401
    ("PUT", U + "eve", ROOT, {"user": "eve", "password": "evepw"}, ""),
    ("PUT", R + "guest", ROOT, {"role": "guest", "revoke": ALL}, "upd"),
    ("GET", K + "/a", None, None, ""),                                       # guest may not: 401
    ("GET", K + "/a", ("eve", "evepw"), None, ""),                           # no roles: 401
    ("DELETE", U + "root", ROOT, None, ""),                                  # 403
    ("DELETE", U + "eve", ROOT, None, ""),
    ("GET", "/v2/members", None, None, ""),
    ("DELETE", "/v2/members/1234", None, None, ""),                          # 401
    ("GET", "/v2/stats/self", None, None, ""),
    ("PUT", E, ROOT, None, ""),                                              # already enabled: 409
    ("DELETE", E, BOB, None, ""),                                            # 401
    ("DELETE", E, ROOT, None, ""),
    # auth off again
    ("GET", K + "/a", None, None, ""),
    ("DELETE", E, None, None, ""),                                           # 409
    ("DELETE", R + "rw", None, None, ""),
    ("DELETE", R + "rw", None, None, ""),                                    # 404
    ("DELETE", R + "root", None, None, ""),                                  # 403
    ("DELETE", U + "bob", None, None, ""),
    ("DELETE", U + "bob", None, None, ""),                                   # 404
    ("DELETE", U + "root", None, None, ""),
    ("PUT", E, None, None, ""),                                              # no root user: 409
]


def stats(d):
    return requests.get(d.url + "/v2/stats/store", timeout=10).json()


def delta(a, b):
    return {k: b[k] - a[k] for k in b if isinstance(b[k], int) and b[k] != a.get(k)}


def index(d):
    # as root: answers whether auth is on or not (root exists whenever it is on)
    r = requests.get(d.url + "/v2/keys/", auth=ROOT, timeout=10)
    return int(r.headers["X-Etcd-Index"])


def scrape(d):
    """Our /metrics' store reads (all actions) and writes by action."""
    reads, writes = 0, {}
    for line in requests.get(d.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("etcd_store_reads_total{"):
            reads += int(float(line.split()[-1]))
        elif line.startswith("etcd_store_writes_total{"):
            writes[line.split('"')[1]] = int(float(line.split()[-1]))
    return reads, writes


def send(d, m, p, creds, body):
    kw = {"auth": creds, "timeout": 20}
    if p.startswith("/v2/keys"):
        kw["params" if m in ("GET", "HEAD", "DELETE") else "data"] = body
    elif isinstance(body, str):
        kw["data"] = body
    elif body is not None:
        kw["json"] = body
    return requests.request(m, d.url + p, **kw)


def run(d, step, ours):
    m, p, creds, body, flags = step
    i0 = index(d)
    before = stats(d)
    m0 = scrape(d) if ours else None
    r = send(d, m, p, creds, body)
    after = stats(d)
    m1 = scrape(d) if ours else None
    got = delta(before, after)
    if ours:
        # /metrics moves with the stats: every get is a read, every write success or failure a write
        reads = got.get("getsSuccess", 0) + got.get("getsFail", 0)
        assert m1[0] - m0[0] == reads, (step, m0, m1, got)
        for action, name in (("set", "sets"), ("create", "create"), ("update", "update"), ("delete", "delete"),
                             ("compareAndSwap", "compareAndSwap"), ("compareAndDelete", "compareAndDelete")):
            moved = m1[1].get(action, 0) - m0[1].get(action, 0)
            assert moved == got.get(name + "Success", 0) + got.get(name + "Fail", 0), (step, action, m0, m1)
        if "upd" in flags:
            got = {k.replace("compareAndSwap", "update"): v for k, v in got.items()}
    status = None if "nostatus" in flags else r.status_code
    return status, got, index(d) - i0


# ETCD2_DIFF_SELFTEST=1 (etcd 3.4 on both sides) has none of our /metrics names
SIDES = (os.environ.get("ETCD2_DIFF_SELFTEST") != "1", False)


def test_every_step_moves_the_same_counters(pair):
    diffs = []
    for step in STEPS:
        got = [run(d, step, ours) for d, ours in zip(pair, SIDES)]
        if got[0] != got[1]:
            diffs.append((step[:3], "ours", got[0], "etcd", got[1]))
    assert not diffs, "\n".join(map(str, diffs))


def test_first_write_after_a_restart(pair):
    """After a restart the first auth write tries the four creates again (they fail: 105)."""
    for d in pair:
        d.restart()
    diffs = []
    for step in [("GET", U, None, None, ""),
                 ("PUT", R + "r2", None, {"role": "r2"}, ""),
                 ("PUT", R + "r3", None, {"role": "r3"}, "")]:
        got = [run(d, step, ours) for d, ours in zip(pair, SIDES)]
        if got[0] != got[1]:
            diffs.append((step[:3], "ours", got[0], "etcd", got[1]))
    assert not diffs, "\n".join(map(str, diffs))
