# SPDX-License-Identifier: Apache-2.0
"""v2 auth differential test: one scripted sequence of /v2/auth, /v2/keys, /v2/members and /v2/stats
requests goes to our etcd2 and to etcd 3.4 (--enable-v2, whose v2 auth is etcd 2.3's etcdserver/auth);
status, Content-Type and parsed JSON bodies must agree, step by step.

etcd 3.4's v2 auth answers are the target, with two differences where our daemon answers as etcd 2.3.8
(etcdserver/etcdhttp/client_auth.go) does, mapped here:
  1. GET /v2/auth/users/<u>: 2.3.8 answers the stored user without its password, {"user","roles":[names]}
     (roles null when none; a granted role that does not exist is listed); python-etcd's EtcdUser.read()
     needs that form. 3.4 answers role objects (roles left out when none) and 404 when a granted role does
     not exist. -> 3.4's 200 answer is reduced to names (to_23()); the missing-role case is a 2.3-only step.
  2. A malformed Authorization header (not Basic, or not decodable): 2.3.8's hasKeyPrefixAccess() treats it
     as no credentials (the guest role), 3.4 refuses it. -> 2.3-only steps.
Lists of users and roles are 3.4's (objects): 3.4's etcdctl (ETCDCTL_API=2) cannot read 2.3.8's names.
A 2.3-only step carries a sixth element: what our daemon must answer (the reference is not compared;
ETCD2_DIFF_SELFTEST=1 skips these steps).

Normalization: indexes (modifiedIndex, createdIndex, error "index") are dropped, in-order key names
become "#"; /v2/members and
/v2/stats bodies differ by nature (ids, ports, times) and are compared for status only.

Each step is (method, path, credentials or None, body kind, body[, ours]). Credentials are a (user,
password) pair or a raw Authorization header. Steps run in order: later ones depend on the users, roles
and the enabled flag set by earlier ones.
"""

import json
import os
import re

import pytest
import requests

from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY, Daemon

SELFTEST = os.environ.get("ETCD2_DIFF_SELFTEST") == "1"

pytestmark = pytest.mark.skipif(
    (REFERENCE and not SELFTEST) or not (SELFTEST or (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)))
    or not os.access(REFERENCE_BINARY, os.X_OK),
    reason="needs both ETCD2_BINARY and /usr/bin/etcd")

ROOT = ("root", "rootpw")
BOB = ("bob", "bobpw")
J = "json"     # body kinds
F = "form"
RAW = "raw"    # (content type, bytes)


def user(name, **kw):
    return dict(user=name, **kw)


def role(name, **kw):
    return dict(role=name, **kw)


def kv(read=None, write=None):
    d = {}
    if read is not None:
        d["read"] = read
    if write is not None:
        d["write"] = write
    return {"kv": d}


# (method, path, auth, kind, body)
STEPS_CRUD = [
    ("GET", "/v2/auth/enable", None, None, None),
    ("PUT", "/v2/auth/enable", None, None, None),             # 409: no root user
    ("DELETE", "/v2/auth/enable", None, None, None),          # 409: already disabled
    ("POST", "/v2/auth/enable", None, None, None),            # 405
    ("GET", "/v2/auth/users", None, None, None),              # {"users":null}
    ("GET", "/v2/auth/roles", None, None, None),              # only root
    ("GET", "/v2/auth/users/root", None, None, None),         # 404
    ("GET", "/v2/auth/roles/root", None, None, None),
    ("GET", "/v2/auth/roles/guest", None, None, None),        # 404 before enable
    ("PUT", "/v2/auth/users/root", None, J, user("root", password=ROOT[1])),      # 201
    ("PUT", "/v2/auth/users/root", None, J, user("root", password=ROOT[1])),      # 200: password update
    ("GET", "/v2/auth/users/root", None, None, None),
    ("PUT", "/v2/auth/roles/rw", None, J, role("rw", permissions=kv(["/a/*"], ["/a/b"]))),  # 201
    ("PUT", "/v2/auth/roles/rw", None, J, role("rw", permissions=kv(["/a/*"], ["/a/b"]))),  # 409
    ("PUT", "/v2/auth/roles/empty", None, J, role("empty")),  # 201, read/write null
    ("PUT", "/v2/auth/roles/empty", None, J, role("empty", grant=kv(["/q"]))),
    ("PUT", "/v2/auth/roles/empty", None, J, role("empty", revoke=kv(["/q"]))),
    ("PUT", "/v2/auth/roles/empty", None, J, role("empty", revoke=kv(["/nope"]))),
    ("DELETE", "/v2/auth/roles/empty", None, None, None),
    ("DELETE", "/v2/auth/roles/empty", None, None, None),     # 404
    ("PUT", "/v2/auth/roles/root", None, J, role("root", grant=kv(["/x"]))),      # 403
    ("DELETE", "/v2/auth/roles/root", None, None, None),      # 403
    ("PUT", "/v2/auth/users/bob", None, J, user("bob", password=BOB[1], roles=["rw"])),
    ("PUT", "/v2/auth/users/bob", None, J, user("bob", password=BOB[1], roles=["rw"])),     # 409
    ("PUT", "/v2/auth/users/bob", None, J, user("bob", grant=["rw"])),           # 409 duplicate grant
    ("PUT", "/v2/auth/users/bob", None, J, user("bob", revoke=["zz"])),          # 409 ungranted
    ("PUT", "/v2/auth/users/bob", None, J, user("bobby")),                       # 400 name mismatch
    ("PUT", "/v2/auth/users/bob", None, J, user("bob")),                         # 400 nothing to do
    ("PUT", "/v2/auth/users/bob", None, RAW, ("application/json", b"xx")),       # 400 invalid JSON
    ("POST", "/v2/auth/users/bob", None, None, None),         # 405
    ("DELETE", "/v2/auth/users/nosuch", None, None, None),    # 404
    ("DELETE", "/v2/auth/roles/nosuch", None, None, None),    # 404
    ("GET", "/v2/auth/users", None, None, None),
    ("GET", "/v2/auth/roles", None, None, None),
    ("GET", "/v2/auth/users/bob", None, None, None),
    # quirks of the create/update split
    ("PUT", "/v2/auth/users/carol", None, J, user("carol")),                     # 400 empty password
    ("PUT", "/v2/auth/users/carol", None, J, user("carol", password="c")),       # 201, roles null
    ("GET", "/v2/auth/users/carol", None, None, None),
    ("PUT", "/v2/auth/users/carol", None, J, user("carol")),                     # roles null -> []: 200
    ("PUT", "/v2/auth/users/carol", None, J, user("carol")),                     # now 400 not updated
    ("PUT", "/v2/auth/users/carol", None, J, user("carol", password="c2")),      # 200
    ("PUT", "/v2/auth/users/carol", None, J, user("carol", roles=["rw"], grant=["x"])),  # 400 both
    ("PUT", "/v2/auth/users/carol", None, J, user("carol", grant=["ghost", "rw"])),      # unknown role kept
    ("GET", "/v2/auth/users/carol", None, None, None,                            # 3.4: 404 role ghost
     {"status": 200, "json": {"user": "carol", "roles": ["ghost", "rw"]}}),
    ("GET", "/v2/auth/users", None, None, None),
    ("PUT", "/v2/auth/users/carol", None, J, user("carol", revoke=["ghost"])),
    ("PUT", "/v2/auth/users/dave", None, J, user("dave", grant=["rw"])),         # 404 update of nobody
    ("PUT", "/v2/auth/users/erin", None, J, user("erin", password="e", roles=["rw"])),
    ("DELETE", "/v2/auth/users/erin", None, None, None),
    ("PUT", "/v2/auth/roles/both", None, J, role("both", permissions=kv(["/x"]), grant=kv(["/y"]))),  # 400
    ("PUT", "/v2/auth/roles/nope", None, J, role("nope", grant=kv(["/y"]))),     # 404
    ("PUT", "/v2/auth/roles/rw", None, J, role("rw", grant=kv(["/a/*"]))),       # 409 duplicate read
    ("PUT", "/v2/auth/roles/rw", None, J, role("rw", grant=kv(None, ["/a/b"]))),  # 409 duplicate write
    ("PUT", "/v2/auth/roles/rw", None, J, role("rw", grant=kv(["/c"]), revoke=kv(["/c"]))),  # grant then revoke
    ("PUT", "/v2/auth/roles/rw2", None, J, role("rw")),                          # 400 name mismatch
    ("PUT", "/v2/auth/roles/rw2", None, RAW, ("application/json", b"[1]")),      # 400
    ("PUT", "/v2/auth/roles/root", None, J, role("root")),                       # 403
    ("POST", "/v2/auth/roles", None, None, None),             # 405
    ("POST", "/v2/auth/users", None, None, None),             # 405
    ("HEAD", "/v2/auth/enable", None, None, None),            # 405
    ("GET", "/v2/auth/users", None, None, None),
    # paths: handleUsers()/handleRoles() split path.Clean(subpath) on "/"
    ("GET", "/v2/auth/users/", None, None, None),             # the list
    ("PUT", "/v2/auth/users/", None, J, user("")),            # 405 Allow: GET
    ("GET", "/v2/auth/roles/", None, None, None),
    ("DELETE", "/v2/auth/roles/", None, None, None),          # 405
    ("GET", "/v2/auth/users/bob/", None, None, None),         # = bob
    ("GET", "/v2/auth/roles/rw/", None, None, None),
    ("PUT", "/v2/auth/roles/rw/", None, J, role("rw", grant=kv(["/t"]))),
    ("GET", "/v2/auth/users/bob/x", None, None, None),        # 400 Invalid path
    ("PUT", "/v2/auth/roles/rw/x", None, J, role("rw")),
    ("DELETE", "/v2/auth/users/a/b/c", None, None, None),
    ("POST", "/v2/auth/users/a/b", None, None, None),
    ("GET", "/v2/auth/enable/", None, None, None),            # 404
    ("GET", "/v2/auth/", None, None, None),
    ("GET", "/v2/auth/nope", None, None, None),
    ("GET", "/v2/auth/users//bob", None, None, None),         # 301 to the clean path
]

STEPS_ENABLED = [
    ("PUT", "/v2/auth/enable", None, None, None),             # 200, creates guest
    ("GET", "/v2/auth/enable", None, None, None),
    ("PUT", "/v2/auth/enable", ROOT, None, None),             # 409 already enabled
    ("GET", "/v2/auth/roles", None, None, None),              # 401
    ("GET", "/v2/auth/roles", ROOT, None, None),              # guest now listed
    ("GET", "/v2/auth/roles/guest", ROOT, None, None),
    ("GET", "/v2/auth/users/bob", BOB, None, None),           # 401: not root
    ("GET", "/v2/auth/users", ("root", "wrong"), None, None),  # 401
    ("PUT", "/v2/keys/open", None, F, {"value": "1"}),        # guest may write everything
    ("GET", "/v2/keys/open", None, None, None),
    ("GET", "/v2/keys/open", "Basic !!!", None, None, {"status": 200}),     # 2.3: malformed = guest (3.4: 401)
    ("GET", "/v2/keys/open", "Bearer x", None, None, {"status": 200}),
    ("GET", "/v2/keys/open", "basic cm9vdDpyb290cHc=", None, None, {"status": 200}),  # Go: "Basic " only
    ("GET", "/v2/auth/users", "Basic !!!", None, None, {"status": 401}),    # root access needs valid Basic
    ("PUT", "/v2/auth/roles/guest", ROOT, J, role("guest", revoke=kv(["/*"], ["/*"]))),
    ("GET", "/v2/keys/open", None, None, None),               # 401 errorCode 110
    ("PUT", "/v2/keys/a/b", None, F, {"value": "1"}),         # 401
    ("PUT", "/v2/keys/a/b", BOB, F, {"value": "1"}),          # write /a/b granted
    ("PUT", "/v2/keys/a/c", BOB, F, {"value": "1"}),          # 401: read only
    ("GET", "/v2/keys/a/b", BOB, None, None),
    ("GET", "/v2/keys/a/c", BOB, None, None),                 # 404: read allowed, key absent
    ("GET", "/v2/keys/a?recursive=true", BOB, None, None),    # 401: /a not covered by /a/*
    ("GET", "/v2/keys/a", BOB, None, None),
    ("GET", "/v2/keys/a/b", ("bob", "wrong"), None, None),
    ("GET", "/v2/keys/a/b", ("nobody", "x"), None, None),
    ("GET", "/v2/keys/a/b", ROOT, None, None),
    ("PUT", "/v2/keys/z", ROOT, F, {"value": "1"}),
    ("DELETE", "/v2/keys/a/b", BOB, None, None),
    ("HEAD", "/v2/keys/a/b", BOB, None, None),
    ("HEAD", "/v2/keys/a/b", None, None, None),
    ("HEAD", "/v2/keys/a/c", BOB, None, None),                # HEAD is a read (404), not a write (401)
    ("HEAD", "/v2/keys/a/c?recursive=true", BOB, None, None),  # a recursive read under the prefix /a/*
    ("HEAD", "/v2/members", BOB, None, None),                 # members: GET and HEAD open
    ("GET", "/v2/keys/a/b?quorum=true", BOB, None, None),
    ("GET", "/v2/keys/a/b?wait=true&waitIndex=1", BOB, None, None),   # a watch answered from history
    ("GET", "/v2/keys/a/b?wait=true&waitIndex=1", None, None, None),  # 401 before the watch starts
    ("POST", "/v2/keys/a/b", BOB, F, {"value": "1"}),
    ("POST", "/v2/keys/a/q", BOB, F, {"value": "1"}),         # 401: write only /a/b
    ("GET", "/v2/keys/?sorted=true", ROOT, None, None),
    ("GET", "/v2/keys", BOB, None, None),
    ("GET", "/v2/keys/a/b?recursive=notabool", ("bob", "wrong"), None, None),  # parse error before auth
    ("PUT", "/v2/keys/a/b", ("bob", "wrong"), F, {"value": "1", "ttl": "x"}),
    ("GET", "/v2/keys/a/b", None, RAW, ("text/plain", b"")),
    ("GET", "/v2/keys/a/b", ("bob", ""), None, None),
    ("PUT", "/v2/auth/users/bob", ROOT, J, user("bob", password="newpw")),
    ("GET", "/v2/keys/a/b", BOB, None, None),                 # old password: 401
    ("GET", "/v2/keys/a/b", ("bob", "newpw"), None, None),
    ("PUT", "/v2/auth/users/bob", ROOT, J, user("bob", password=BOB[1])),
    ("PUT", "/v2/auth/users/bob", ROOT, J, user("bob", revoke=["rw"])),
    ("GET", "/v2/keys/a/b", BOB, None, None),                 # no role left: 401
    ("PUT", "/v2/auth/users/bob", ROOT, J, user("bob", grant=["root"])),
    ("GET", "/v2/auth/users", BOB, None, None),               # bob has the root role now
    ("PUT", "/v2/keys/anything", BOB, F, {"value": "1"}),
    ("PUT", "/v2/auth/users/bob", BOB, J, user("bob", revoke=["root"], grant=["rw"])),
    ("GET", "/v2/auth/users", BOB, None, None),               # 401 again
    ("PUT", "/v2/auth/enable", BOB, None, None),              # 401 (root access first)
    ("GET", "/v2/members", None, None, None),                 # members GET: open
    ("GET", "/v2/members", BOB, None, None),
    ("DELETE", "/v2/members/1234", BOB, None, None),          # 401: root only
    ("GET", "/v2/stats/self", None, None, None),
    ("GET", "/v2/stats/store", None, None, None),
    ("DELETE", "/v2/auth/users/root", ROOT, None, None),      # 403 while enabled
    ("DELETE", "/v2/auth/enable", BOB, None, None),           # 401
    ("DELETE", "/v2/auth/enable", ROOT, None, None),          # 200
    ("DELETE", "/v2/auth/enable", None, None, None),          # 409
    ("GET", "/v2/auth/roles/guest", None, None, None),        # guest stays
    ("DELETE", "/v2/auth/users/root", None, None, None),      # 200 once disabled
    ("GET", "/v2/auth/users", None, None, None),
]

NO_BODY_COMPARE = ("/v2/members", "/v2/stats/")


def send(d, step):
    method, path, auth, kind, body = step[:5]
    kw = {"timeout": 10, "allow_redirects": False, "headers": {}}
    if isinstance(auth, str):
        kw["headers"]["Authorization"] = auth   # a raw header
    elif auth:
        kw["auth"] = auth
    if kind == J:
        kw["data"] = json.dumps(body)
        kw["headers"]["Content-Type"] = "application/json"
    elif kind == F:
        kw["data"] = body
    elif kind == RAW:
        kw["data"] = body[1]
        kw["headers"]["Content-Type"] = body[0]
    return requests.request(method, d.url + path, **kw)


def strip_indexes(o):
    if isinstance(o, dict):
        return {k: (re.sub(r"/\d{20}(?=/|$)", "/#", v) if k == "key" else strip_indexes(v))
                for k, v in o.items() if k not in ("modifiedIndex", "createdIndex", "index")}
    if isinstance(o, list):
        return [strip_indexes(v) for v in o]
    return o


def view(step, r):
    ct = r.headers.get("Content-Type", "")
    out = {"status": r.status_code, "content-type": ct, "allow": r.headers.get("Allow")}
    if any(step[1].startswith(p) for p in NO_BODY_COMPARE) and r.status_code == 200:
        return out
    if ct.startswith("application/json") and r.text.strip():
        out["json"] = strip_indexes(r.json())
        out["newline"] = r.text.endswith("\n")   # json.Encoder's, or none (httptypes.HTTPError)
    else:
        out["text"] = r.text
    return out


def to_23(step, v):
    """etcd 3.4's answer to GET /v2/auth/users/<u> as 2.3.8 gives it (difference 1 above)."""
    j = v.get("json")
    if (step[0] != "GET" or not step[1].startswith("/v2/auth/users/") or v.get("status") != 200
            or not isinstance(j, dict) or "user" not in j or SELFTEST):
        return v
    return dict(v, json={"user": j["user"], "roles": [r["role"] for r in j["roles"]] if "roles" in j else None})


def outcome(d, step):
    try:
        return view(step, send(d, step))
    except requests.RequestException as e:
        return {"error": type(e).__name__}


def run_steps(pair, steps):
    ours, ref = pair
    for i, step in enumerate(steps):
        if len(step) > 5:
            if SELFTEST:
                continue
            a = outcome(ours, step)
            got = {k: a.get(k) for k in step[5]}
            assert got == step[5], f"step {i}: {step[0]} {step[1]} auth={step[2]} (2.3-only)\nours: {a}\nwant: {step[5]}"
            continue
        a = outcome(ours, step)
        b = to_23(step, outcome(ref, step))
        assert a == b, f"step {i}: {step[0]} {step[1]} auth={step[2]} body={step[4]}\nours: {a}\nref:  {b}"


def test_crud(pair):
    run_steps(pair, STEPS_CRUD)


def test_enabled(pair):
    run_steps(pair, STEPS_ENABLED)


# --- beyond the differential: our daemon alone -----------------------------------------------------

@pytest.fixture
def solo():
    d = Daemon(reference=False, binary=OUR_BINARY) if not SELFTEST else Daemon(reference=True, binary=REFERENCE_BINARY)
    yield d
    d.cleanup()


def _setup_auth(d):
    h = {"Content-Type": "application/json"}
    assert d.req("PUT", "/v2/auth/users/root", data=json.dumps(user("root", password=ROOT[1])), headers=h).status_code == 201
    assert d.req("PUT", "/v2/auth/roles/rw", data=json.dumps(role("rw", permissions=kv(["/a/*"], ["/a/*"]))),
                 headers=h).status_code == 201
    assert d.req("PUT", "/v2/auth/users/bob", data=json.dumps(user("bob", password=BOB[1], roles=["rw"])),
                 headers=h).status_code == 200
    assert d.req("PUT", "/v2/auth/enable").status_code == 200
    assert d.req("PUT", "/v2/auth/roles/guest", auth=ROOT, data=json.dumps(role("guest", revoke=kv(["/*"], ["/*"]))),
                 headers=h).status_code == 200


def test_restart_keeps_auth(solo):
    """Users, roles and the flag are Raft writes under /2: a kill -9 and restart keeps them."""
    _setup_auth(solo)
    # the harness's readiness check reads /v2/keys/, which the guest may no longer do: wait here
    solo.restart(kill=True, wait=False)
    solo.wait_ready(lambda: requests.get(solo.url + "/v2/keys/", auth=ROOT, timeout=2).status_code == 200,
                    20, "serving")
    assert solo.req("GET", "/v2/auth/enable").json() == {"enabled": True}
    assert solo.req("PUT", "/v2/keys/a/x", auth=BOB, data={"value": "1"}).status_code == 201
    assert solo.req("PUT", "/v2/keys/b", auth=BOB, data={"value": "1"}).status_code == 401
    assert solo.req("GET", "/v2/keys/a/x").status_code == 401
    assert [u["user"] for u in solo.req("GET", "/v2/auth/users", auth=ROOT).json()["users"]] == ["bob", "root"]


def test_snapshot_keeps_auth():
    """/2 is part of the store, so of its snapshots: a restart from a snapshot (not a log replay) keeps
    auth as well."""
    d = Daemon(reference=SELFTEST, binary=REFERENCE_BINARY if SELFTEST else OUR_BINARY,
               extra_args=["--snapshot-count", "10"])
    try:
        _setup_auth(d)
        for i in range(30):
            assert d.req("PUT", f"/v2/keys/a/{i}", auth=BOB, data={"value": "x"}).status_code == 201
        d.restart(kill=False, wait=False)
        d.wait_ready(lambda: requests.get(d.url + "/v2/keys/", auth=ROOT, timeout=2).status_code == 200,
                     20, "serving")
        assert d.req("GET", "/v2/keys/a/29", auth=BOB).status_code == 200
        assert d.req("GET", "/v2/keys/a/29").status_code == 401
        assert d.req("GET", "/v2/auth/roles/rw", auth=ROOT).json()["permissions"]["kv"]["write"] == ["/a/*"]
    finally:
        d.cleanup()


def test_wrong_passwords_do_not_stall_the_loop(solo):
    """bcrypt runs on the worker thread: while wrong passwords are being checked (each a full bcrypt,
    never cached), other clients are answered at once."""
    import threading
    import time

    _setup_auth(solo)
    stop = threading.Event()

    def attacker():
        with requests.Session() as s:
            while not stop.is_set():
                s.get(solo.url + "/v2/keys/a/x", auth=("bob", "wrong"), timeout=30)

    threads = [threading.Thread(target=attacker) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        worst = 0.0
        with requests.Session() as s:
            for _ in range(20):
                t0 = time.monotonic()
                assert s.get(solo.url + "/version", timeout=10).status_code == 200
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.02)
        # a bcrypt at cost 10 is ~50-100 ms here: on the loop, 4 attackers would stall /version that long
        assert worst < 0.04, f"/version took {worst * 1000:.0f} ms under a wrong-password flood"
    finally:
        stop.set()
        for t in threads:
            t.join()
    # good credentials still work (a cache miss first, then hits)
    assert solo.req("GET", "/v2/keys/a/x", auth=BOB).status_code == 404
