# SPDX-License-Identifier: Apache-2.0
"""The peer port takes members only (issue 9, point 9): every attack is sent by hand over raw sockets.

Stream requests from this member itself, from an ID that is not a member, from another cluster or an
incompatible version, and from a removed member are refused before any body byte is read (404, 404, 412,
410); frames are bounded by their type from the header on; a forwarded proposal may write only where a
client could; slow heads are closed within the head deadline and connections are capped. After each
attack the member is still up and the cluster still works. Our implementation only (the frames are ours).
"""

import os
import socket
import struct
import time

import pytest
import requests

from cluster import wait_converged, make_cluster  # noqa: F401 (fixture)
from conftest import REFERENCE

pytestmark = pytest.mark.skipif(REFERENCE, reason="the peer protocol is our own")

FRAME_MAGIC = 0x65327266
TYPE_APPEND_ENTRIES = 1
TYPE_REQUEST_VOTE = 3
TYPE_OPAQUE = 64
MSG_PROPOSE = 1
METHOD_PUT = 0
HEAD_DEADLINE = 5.0     # http-server.c HTTP_PEER_HEAD_TIMEOUT_USEC
PER_IP_LIMIT = 32       # http-server.c HTTP_PEER_PER_IP_LIMIT


# -- the wire format of daemon/peer-codec.h and daemon/codec.h ---------------------------------------------
def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7f) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def string(b):
    return varint(len(b)) + b + b"\0"


def frame_header(ftype, body_len, sender, cluster):
    return struct.pack(">IBBHIQQ", FRAME_MAGIC, 1, ftype, 0, body_len, sender, cluster)


def store_put(path, value):
    """codec.c: a PUT of `value` at internal path `path` (FLAG_VALUE set, nothing else)."""
    return (bytes([1, METHOD_PUT, 1 << 4, 0]) + varint(0) * 3 + string(path.encode()) + string(value.encode()))


def propose_frame(sender, cluster, request_id, path, value):
    entry = bytes([2]) + varint(sender) + varint(request_id) + store_put(path, value)
    body = bytes([MSG_PROPOSE]) + varint(request_id) + entry
    return frame_header(TYPE_OPAQUE, len(body), sender, cluster) + body


def stream_head(sender, cluster, version="2.3.8", extra=""):
    h = (f"POST /raft/stream HTTP/1.1\r\nHost: x\r\nX-Etcd-Cluster-ID: {cluster:x}\r\n"
         f"X-Server-From: {sender:x}\r\n")
    if version:
        h += f"X-Server-Version: {version}\r\n"
    h += extra or "Content-Length: 0\r\n"
    return (h + "Connection: Upgrade\r\nUpgrade: etcd2-raft/1\r\n\r\n").encode()


def peer_addr(m):
    return ("127.0.0.1", m.peer_port)


def connect(m, timeout=5.0):
    s = socket.create_connection(peer_addr(m), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_until_close(s, limit=5.0):
    """Everything the server sends until it closes (returns (data, closed))."""
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            k = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data, True
        if not k:
            return data, True
        data += k
    return data, False


def status_of(data):
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    assert line.startswith("HTTP/1."), data[:200]
    return int(line.split()[1])


def attempt(m, head, then=b"", limit=5.0):
    """Sends a stream request (and `then` right after it); returns (status, closed, data)."""
    with connect(m) as s:
        s.sendall(head + then)
        t0 = time.monotonic()
        data, closed = read_until_close(s, limit)
        return status_of(data), closed, data, time.monotonic() - t0


def ids(c):
    cluster = int(c.expected_cluster_id(), 16)
    return cluster, {m: int(m.id, 16) for m in c.members}


def vmrss_kb(m):
    with open(f"/proc/{m.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def still_works(c, key):
    """Every live member is up and a write through each one commits everywhere."""
    for m in c.live():
        assert m.alive(), m.log_tail(4000)
    for i, m in enumerate(c.live()):
        r = m.put(f"/v2/keys/peerport/{key}{i}", data={"value": "v"}, timeout=10)
        assert r.status_code in (200, 201), r.text
    wait_converged(c.live(), "/1/peerport", timeout=20)


def key_absent(m, path):
    r = m.get("/v2/keys" + path, params={"quorum": "true"}, timeout=10)
    return r.status_code == 404


# -- one member -------------------------------------------------------------------------------------------
def test_single_member_refusals(make_cluster):
    c = make_cluster(1)
    m = c.members[0]
    cluster, mid = ids(c)
    me = mid[m]

    # From ourselves, with a proposal right behind the head: 404, closed, nothing committed.
    st, closed, data, _ = attempt(m, stream_head(me, cluster), propose_frame(me, cluster, 1, "/1/pwned", "x"))
    assert (st, closed) == (404, True)
    # An ID that is not a member, another cluster, an old or foreign version, no version at all.
    assert attempt(m, stream_head(0x1234, cluster))[:2] == (404, True)
    st, closed, data, _ = attempt(m, stream_head(0x1234, cluster + 1))
    assert (st, closed) == (412, True)
    assert b"x-etcd-cluster-id: %x" % cluster in data.lower()
    assert attempt(m, stream_head(me, cluster, version="2.1.0"))[:2] == (412, True)
    assert attempt(m, stream_head(me, cluster, version="3.4.0"))[:2] == (412, True)
    assert attempt(m, stream_head(me, cluster, version=None))[:2] == (412, True)
    assert key_absent(m, "/pwned")

    # A head that declares a 1 GB body is answered (400: a stream has no body) and closed at once,
    # without waiting for any of it (the body never comes).
    for sender in (me, 0x1234):
        st, closed, _, took = attempt(m, stream_head(sender, cluster, extra="Content-Length: 1000000000\r\n"))
        assert (st, closed) == (400, True)
        assert took < 3.0
    st, closed, _, took = attempt(m, stream_head(me, cluster, extra="Transfer-Encoding: chunked\r\n"))
    assert (st, closed) == (400, True) and took < 3.0

    still_works(c, "single")
    # Each refusal is logged, but once per sender per minute: the 1234 refusals above made one line.
    log = open(m.log_path, errors="replace").read()
    assert log.count("Refused a peer stream from member 1234 ") == 1, log[-4000:]


def test_slow_heads_and_connection_cap(make_cluster):
    c = make_cluster(1)
    m = c.members[0]

    # A head that trickles in a byte a second is closed at the head deadline, not after its last byte
    # (an inactivity timeout alone would keep it forever).
    head = stream_head(0x1234, int(c.expected_cluster_id(), 16))
    s = connect(m)
    t0 = time.monotonic()
    closed_after = None
    for i in range(int(HEAD_DEADLINE * 3)):
        try:
            s.sendall(head[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - t0
            break
        s.settimeout(1.0)
        try:
            if s.recv(1) == b"":
                closed_after = time.monotonic() - t0
                break
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed_after = time.monotonic() - t0
            break
    s.close()
    assert closed_after is not None and closed_after < HEAD_DEADLINE + 3, closed_after

    # Silent connections: at most PER_IP_LIMIT from one address are kept, the rest refused at once (a 503
    # and closed); all of them are gone after the deadline, and the port serves members again.
    socks = [connect(m) for _ in range(PER_IP_LIMIT + 8)]
    time.sleep(1.0)
    closed_early = 0
    for s in socks:
        s.setblocking(False)
        try:
            got = s.recv(64)
            if got == b"" or got.startswith(b"HTTP/1.1 503 "):
                closed_early += 1
        except BlockingIOError:
            pass
        except ConnectionResetError:
            closed_early += 1
    assert closed_early >= 8, closed_early
    time.sleep(HEAD_DEADLINE + 2.0)
    still_open = 0
    for s in socks:
        try:
            while s.recv(65536) != b"":  # the rest of a 503, then the end
                pass
        except BlockingIOError:
            still_open += 1
        except ConnectionResetError:
            pass
        s.close()
    assert still_open == 0
    r = requests.get(f"http://127.0.0.1:{m.peer_port}/members", timeout=5)
    assert r.status_code == 200
    still_works(c, "slow")


# -- three members ----------------------------------------------------------------------------------------
def test_cluster_attacks(make_cluster):
    c = make_cluster(3)
    cluster, mid = ids(c)
    leader = c.leader()
    followers = c.followers(leader)
    f1, f2 = followers

    # Unknown sender, other cluster, ourselves: refused by every member; nothing delivered.
    for m in c.members:
        assert attempt(m, stream_head(0xdead, cluster), propose_frame(0xdead, cluster, 1, "/1/pwned", "x"))[:2] \
            == (404, True)
        assert attempt(m, stream_head(mid[f1], cluster + 1))[:2] == (412, True)
        assert attempt(m, stream_head(mid[m], cluster), propose_frame(mid[m], cluster, 2, "/1/pwned", "x"))[:2] \
            == (404, True)
    assert key_absent(leader, "/pwned")

    # Impersonation of a member (its ID is public; without peer TLS the stream is taken), but the frames
    # stay bounded: a vote announcing 100 MB and an AppendEntries announcing 4 GiB close the stream from
    # their header alone, and the leader's memory does not grow by what they announced.
    rss0 = vmrss_kb(leader)
    for ftype, size in ((TYPE_REQUEST_VOTE, 100 << 20), (TYPE_APPEND_ENTRIES, 0xffffffff)):
        with connect(leader) as s:
            s.sendall(stream_head(mid[f1], cluster))
            s.settimeout(5)
            head = s.recv(4096)
            assert status_of(head) == 101
            s.sendall(frame_header(ftype, size, mid[f1], cluster) + b"\0" * 65536)
            _, closed = read_until_close(s, 5.0)
            assert closed
    assert vmrss_kb(leader) - rss0 < 50 * 1024, (rss0, vmrss_kb(leader))

    # Forged forwarded proposals in an impersonated stream: the internal keys are not writable that way.
    # A write of /0/removed_members/<f2> used to make f2 exit; /0/members/... would invent a member.
    forged = [("/0/removed_members/" + f2.id, ""),
              ("/0/members/%x/raftAttributes" % 0xbad, '{"peerURLs":["http://127.0.0.1:1"]}'),
              ("/0/version", "9.9.9"),
              ("/1/../0/removed_members/" + f2.id, "")]
    with connect(leader) as s:
        s.sendall(stream_head(mid[f1], cluster))
        s.settimeout(5)
        assert status_of(s.recv(4096)) == 101
        for i, (path, value) in enumerate(forged):
            s.sendall(propose_frame(mid[f1], cluster, 1000 + i, path, value))
        time.sleep(1.0)
    time.sleep(1.0)
    assert f2.alive(), f2.log_tail(4000)
    members = leader.get("/v2/members", timeout=5).json()["members"]
    assert sorted(x["id"] for x in members) == sorted(m.id for m in c.members)
    for m in c.members:
        assert m.get("/version", timeout=5).json().get("etcdcluster") != "9.9.9"
    log = open(leader.log_path, errors="replace").read()
    assert "forwarded a proposal no client can make" in log, log[-4000:]

    # The real f1 reconnects (a newer stream replaces the older one) and everything still works.
    still_works(c, "attacks")

    # A removed member is told 410 by the others.
    assert c.remove_member(f2).status_code == 204
    deadline = time.monotonic() + 20
    while f2.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    for m in c.live():
        st, closed, _, _ = attempt(m, stream_head(mid[f2], cluster))
        assert (st, closed) == (410, True)
    still_works(c, "after-remove")
