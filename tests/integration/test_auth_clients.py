# SPDX-License-Identifier: Apache-2.0
"""v2 auth through real clients, unchanged: `ETCDCTL_API=2 etcdctl` (3.4) auth/user/role commands and
python3-etcd's EtcdUser, EtcdRole, Auth and a Client with username/password.

The answers mix two etcd versions so that both clients work (see auth-api.c): lists of users and roles as
etcd 3.4 (etcdctl's `user list`/`role list` read only those), one user as etcd 2.3.8 (python-etcd's
EtcdUser.read() reads only that). The python-etcd user test therefore fails against etcd 3.4 (only_23).
"""

import os
import subprocess

import pytest

from conftest import only_23
from test_clients import ETCDCTL, etcd, needs_etcdctl, needs_pyetcd

ROOT = ("root", "rootpw")


def ctl(d, *args, user=None, stdin=None, check=0):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "2"
    argv = [ETCDCTL, "--endpoints", d.url] + (["-u", "%s:%s" % user] if user else []) + list(args)
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=20, input=stdin or "")
    if check is not None:
        assert p.returncode == check, (args, p.returncode, p.stdout, p.stderr)
    return p


@needs_etcdctl
def test_etcdctl_auth_user_role(fresh):
    d = fresh
    assert "User root created" in ctl(d, "user", "add", "root:rootpw").stdout
    assert "Role rw created" in ctl(d, "role", "add", "rw").stdout
    ctl(d, "role", "grant", "rw", "--path", "/a/*", "--readwrite")
    ctl(d, "user", "add", "bob:bobpw")
    ctl(d, "user", "grant", "bob", "--roles", "rw")
    # etcdctl prints "Roles: rw" for 2.3.8's user, "Roles:  rw" for 3.4's
    assert ctl(d, "user", "get", "bob").stdout.split() == ["User:", "bob", "Roles:", "rw"]
    assert ctl(d, "user", "list").stdout.split() == ["bob", "root"]
    assert ctl(d, "role", "list").stdout.split() == ["root", "rw"]
    out = ctl(d, "role", "get", "rw").stdout
    assert "Role: rw" in out and "/a/*" in out, out
    assert "Authentication Enabled" in ctl(d, "auth", "enable").stdout
    # the guest role (full access on enable) loses everything
    ctl(d, "role", "revoke", "guest", "--path", "/*", "--readwrite", user=ROOT)
    ctl(d, "set", "/a/x", "1", user=("bob", "bobpw"))
    assert ctl(d, "get", "/a/x", user=("bob", "bobpw")).stdout.strip() == "1"
    p = ctl(d, "set", "/b", "1", user=("bob", "bobpw"), check=None)
    assert p.returncode != 0 and "110" in p.stderr, p.stderr
    p = ctl(d, "get", "/a/x", check=None)
    assert p.returncode != 0 and "Insufficient credentials" in p.stderr, p.stderr
    assert ctl(d, "user", "list", user=("bob", "bobpw"), check=None).returncode != 0
    assert ctl(d, "user", "list", user=ROOT).stdout.split() == ["bob", "root"]
    ctl(d, "user", "passwd", "bob", user=ROOT, stdin="newpw\nnewpw\n")
    assert ctl(d, "get", "/a/x", user=("bob", "bobpw"), check=None).returncode != 0
    assert ctl(d, "get", "/a/x", user=("bob", "newpw")).stdout.strip() == "1"
    ctl(d, "user", "revoke", "bob", "--roles", "rw", user=ROOT)
    assert ctl(d, "user", "get", "bob", user=ROOT).stdout.split() == ["User:", "bob", "Roles:"]
    ctl(d, "user", "remove", "bob", user=ROOT)
    ctl(d, "role", "remove", "rw", user=ROOT)
    assert ctl(d, "role", "list", user=ROOT).stdout.split() == ["guest", "root"]
    assert "Authentication Disabled" in ctl(d, "auth", "disable", user=ROOT).stdout
    assert ctl(d, "user", "list").stdout.split() == ["root"]


@needs_pyetcd
@only_23
def test_python_etcd_users_roles_keys(fresh):
    from etcd import auth

    port = int(fresh.url.rsplit(":", 1)[1])
    c = etcd.Client(host="127.0.0.1", port=port)
    u = auth.EtcdUser(c, "root")
    u.password = ROOT[1]
    u.write()
    r = auth.EtcdRole(c, "rw")
    r.grant("/a/*", "RW")
    r.write()
    b = auth.EtcdUser(c, "bob")
    b.password = "bobpw"
    b.roles = ["rw"]
    b.write()
    b = auth.EtcdUser(c, "bob")
    b.read()   # etcd 3.4's role objects: "unhashable type: 'dict'"
    assert b.roles == {"rw"}
    r = auth.EtcdRole(c, "rw")
    r.read()
    assert r.acls == {"/a/*": "RW"}
    a = auth.Auth(c)
    a.active = True
    assert a.active

    cr = etcd.Client(host="127.0.0.1", port=port, username=ROOT[0], password=ROOT[1])
    g = auth.EtcdRole(cr, "guest")
    g.read()
    g.revoke("/*", "RW")
    g.write()
    cb = etcd.Client(host="127.0.0.1", port=port, username="bob", password="bobpw")
    cb.write("/a/p", "1")
    assert cb.read("/a/p").value == "1"
    with pytest.raises(etcd.EtcdInsufficientPermissions):
        cb.write("/b", "1")
    with pytest.raises(etcd.EtcdInsufficientPermissions):
        etcd.Client(host="127.0.0.1", port=port).read("/a/p")
    with pytest.raises(etcd.EtcdInsufficientPermissions):
        etcd.Client(host="127.0.0.1", port=port, username="bob", password="wrong").read("/a/p")

    b = auth.EtcdUser(cr, "bob")
    b.read()
    b.roles = []
    b.write()   # a revoke of rw
    b = auth.EtcdUser(cr, "bob")
    b.read()
    assert b.roles == set()
    with pytest.raises(etcd.EtcdInsufficientPermissions):
        cb.read("/a/p")
    a = auth.Auth(cr)
    a.active = False
    assert not a.active
    assert etcd.Client(host="127.0.0.1", port=port).read("/a/p").value == "1"
