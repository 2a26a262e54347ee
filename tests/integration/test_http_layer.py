# SPDX-License-Identifier: Apache-2.0
"""The HTTP layer under hostile and unusual clients, over raw sockets: request smuggling (conflicting
Content-Length, Content-Length with chunked, odd header syntax), header floods, pipelining, keep-alive
rules, Expect: 100-continue, a slow reader next to 1000 busy connections, the idle/head/body timeouts and
the connection cap, 10k idle connections (memory per connection), and disconnects at every stage.

Where Go's net/http gives the answer, the test also passes against etcd 3.4 (ETCD2_REFERENCE=1). The
limits are set through test knobs of our layer (environment variables, see KNOBS); those tests skip on
the reference. Every test ends with the daemon still answering."""

import heapq
import random
import resource
import select
import socket
import struct
import threading
import time

import pytest
import requests

from conftest import REFERENCE, only_ours, unique

# The test knobs of our HTTP layer (milliseconds, count), read from the environment at start-up.
KNOBS = ("ETCD2_HTTP_IDLE_TIMEOUT_MS", "ETCD2_HTTP_HEAD_TIMEOUT_MS", "ETCD2_HTTP_BODY_TIMEOUT_MS",
         "ETCD2_HTTP_MAX_CONNECTIONS")

# Tests that fail on the libmicrohttpd build (main before issue 10) and must pass with our layer:
# those that need the knobs,
NEEDS_KNOBS = ("test_idle_timeout", "test_idle_timeout_fresh_connection", "test_head_timeout_trickle",
               "test_body_timeout", "test_connection_cap")
# and those where libmicrohttpd closes without a word (or serves) where Go answers 400/501.
GO_REFUSES_MHD_DOES_NOT = ("test_smuggle_odd_transfer_encoding", "test_two_transfer_encoding_headers",
                           "test_space_before_colon", "test_nul_in_header", "test_nul_in_content_length",
                           "test_obs_fold", "test_obs_fold_first_header", "test_bare_lf",
                           "test_bare_lf_hiding_a_header")

FORM = "Content-Type: application/x-www-form-urlencoded\r\n"


# ------------------------------------------------------------------------------------------------
# raw HTTP client

class Resp:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers   # lower-case name -> value (the last one)
        self.body = body

    def __repr__(self):
        return f"Resp({self.status} {self.reason!r}, {self.headers!r}, {self.body[:200]!r})"


class Conn:
    """One client connection with a read buffer and a response parser (Content-Length, chunked, or until
    close)."""

    def __init__(self, d, port_index=0, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", d.client_ports[port_index]), timeout=timeout)
        self.buf = bytearray()
        self.eof = False

    def close(self):
        self.s.close()

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, n=65536):
        c = self.s.recv(n)
        if not c:
            self.eof = True
            raise EOFError("connection closed")
        self.buf += c

    def _take(self, n):
        while len(self.buf) < n:
            self._fill(max(65536, n - len(self.buf)))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            self._fill()

    def response(self, head=False):
        """The next response (1xx included); EOFError if the connection closes first."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            self._fill()
        raw = bytes(self.buf[:i])
        del self.buf[:i + 4]
        lines = raw.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        assert parts[0] in (b"HTTP/1.1", b"HTTP/1.0"), lines[0]
        status = int(parts[1])
        reason = parts[2].decode() if len(parts) > 2 else ""
        headers = {}
        for ln in lines[1:]:
            k, v = ln.split(b":", 1)
            headers[k.strip().lower().decode()] = v.strip().decode()
        if head or 100 <= status < 200 or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", ""):
            body = bytearray()
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers
                        pass
                    break
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            body = bytes(body)
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:
            body = self.read_all()
        return Resp(status, reason, headers, body)

    def read_all(self, timeout=10):
        """Everything until EOF (or timeout); a reset counts as EOF."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self._fill()
            except (EOFError, ConnectionResetError):
                self.eof = True
                break
            except socket.timeout:
                break
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def closed_after(self, timeout):
        """Seconds until the peer closed the connection (data before the close is dropped), None if it is
        still open after timeout."""
        t0 = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                c = self.s.recv(65536)
            except socket.timeout:
                return None
            except ConnectionResetError:
                return time.monotonic() - t0
            if not c:
                return time.monotonic() - t0

    def is_open(self, wait=0.3):
        """True if the connection neither closed nor sent anything within wait seconds."""
        r, _, _ = select.select([self.s], [], [], wait)
        if not r:
            return True
        try:
            return bool(self.s.recv(1, socket.MSG_PEEK))
        except ConnectionResetError:
            return False


def exchange(d, data, timeout=5, half_close=True):
    """Sends data on a new connection (optionally shutting down our side), returns all bytes until close or
    timeout. b"" = closed without an answer."""
    c = Conn(d, timeout=timeout)
    try:
        try:
            c.send(data)
            if half_close:
                c.s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return c.read_all(timeout)
    finally:
        c.close()


def status_of(raw):
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


class _Bytes(Conn):
    """The response parser of Conn over bytes already read."""

    def __init__(self, raw):  # noqa: no super(): no socket
        self.buf = bytearray(raw)
        self.eof = True

    def _fill(self, n=65536):
        raise EOFError("end of data")

    def read_all(self, timeout=0):
        out = bytes(self.buf)
        self.buf.clear()
        return out


def statuses(raw):
    """Statuses of the complete responses in a raw byte stream, in order (a trailing partial one, or
    garbage, ends the list with None)."""
    p = _Bytes(raw)
    out = []
    while p.buf:
        try:
            out.append(p.response().status)
        except (EOFError, AssertionError, ValueError, IndexError):
            out.append(None)
            break
    return out


def get_fresh(d, path):
    """A GET on a connection of its own (the daemon's session may hold one the idle timeout closes)."""
    return requests.get(d.url + path, timeout=10, headers={"Connection": "close"})


def key_exists(d, key):
    r = get_fresh(d, "/v2/keys/" + key)
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def hidden_put(key, value="evil"):
    """A complete request that a smuggling bug would execute."""
    return (f"PUT /v2/keys/{key}?value={value} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").encode()


# ------------------------------------------------------------------------------------------------
# 1. request smuggling

@pytest.mark.parametrize("order", ["short_first", "long_first"])
def test_smuggle_two_content_lengths(daemon, order):
    outer, smuggled = unique("outer"), unique("smuggled")
    first = b"value="
    hidden = hidden_put(smuggled)
    short, long_ = len(first), len(first) + len(hidden)
    cls = (short, long_) if order == "short_first" else (long_, short)
    req = (f"PUT /v2/keys/{outer} HTTP/1.1\r\nHost: x\r\n{FORM}"
           f"Content-Length: {cls[0]}\r\nContent-Length: {cls[1]}\r\n\r\n").encode() + first + hidden
    raw = exchange(daemon, req)
    assert status_of(raw) == 400, raw[:300]
    assert statuses(raw) == [400], raw[:600]
    assert not key_exists(daemon, smuggled), "the request hidden in the body was executed"
    assert not key_exists(daemon, outer)
    daemon.check_serving()


def test_smuggle_content_length_and_chunked(daemon):
    """CL.TE: Content-Length covers only the chunk-size line; the chunk holds a complete request. Refused
    with 400, or the chunked body wins (the request is a body): the hidden request never runs."""
    smuggled = unique("smuggled")
    hidden = hidden_put(smuggled)
    size_line = b"%x\r\n" % len(hidden)
    req = (f"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\nContent-Length: {len(size_line)}\r\n"
           f"Transfer-Encoding: chunked\r\n\r\n").encode() + size_line + hidden + b"\r\n0\r\n\r\n"
    raw = exchange(daemon, req)
    st = statuses(raw)
    assert st in ([400], [200]), raw[:600]
    assert not key_exists(daemon, smuggled), "the request hidden in the chunked body was executed"
    daemon.check_serving()


def test_smuggle_chunked_then_request_after_terminator(daemon):
    """TE.CL: Content-Length covers everything, chunked ends early; whatever follows the last chunk is a
    new request only if chunked won. Either 400 (no request runs) or exactly two answers."""
    follow = unique("follow")
    after = hidden_put(follow, "ok")
    body = b"0\r\n\r\n" + after
    req = (f"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
           f"Transfer-Encoding: chunked\r\n\r\n").encode() + body
    raw = exchange(daemon, req)
    st = statuses(raw)
    if st == [400]:
        assert not key_exists(daemon, follow)
    else:
        # chunked won: the bytes after the last chunk are the next request, and were served as such
        assert st == [200, 201], raw[:600]
        assert key_exists(daemon, follow)
    daemon.check_serving()


def test_chunked_body_with_trailer_fields(daemon):
    """Trailer fields after a chunked body are not request headers (Go keeps them in Request.Trailer, which
    etcd2 never reads): many and long ones must neither count as headers (they were once added after the
    header pointers were handed out: a heap overflow, found by fuzzing) nor move the request's buffer, and
    the request still runs. Under ASan a regression aborts the daemon."""
    key = unique("trailer")
    body = b"value=v"
    trailer = b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 2000) for i in range(64))
    req = (f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
           f"Transfer-Encoding: chunked\r\n\r\n").encode() + \
        b"%x\r\n%s\r\n0\r\n" % (len(body), body) + trailer + b"\r\n"
    raw = exchange(daemon, req)
    assert statuses(raw) == [201], raw[:600]
    assert daemon.get("/v2/keys/" + key).json()["node"]["value"] == "v"
    daemon.check_serving()


@pytest.mark.parametrize("te", ["chunked, x", "x, chunked", "chunked, chunked", "chunkedx", " chunked\x0b"])
def test_smuggle_odd_transfer_encoding(daemon, te):
    """An unsupported coding list is refused (400 or 501) and closes the connection: nothing behind it
    runs."""
    smuggled = unique("smuggled")
    hidden = hidden_put(smuggled)
    body = b"%x\r\n" % len(hidden) + hidden + b"\r\n0\r\n\r\n"
    req = (f"PUT /v2/keys/{unique()}?value=a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n").encode() + body
    raw = exchange(daemon, req)
    st = statuses(raw)
    assert st in ([400], [501]), raw[:600]
    assert not key_exists(daemon, smuggled)
    daemon.check_serving()


def test_two_transfer_encoding_headers(daemon):
    smuggled = unique("smuggled")
    hidden = hidden_put(smuggled)
    req = (f"PUT /v2/keys/{unique()}?value=a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           f"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\n0\r\n\r\n").encode() + hidden
    raw = exchange(daemon, req)
    assert statuses(raw) in ([400], [501]), raw[:600]
    assert not key_exists(daemon, smuggled)
    daemon.check_serving()


def test_space_before_colon(daemon):
    """"Content-Length : n" must be refused (RFC 7230 3.2.4): a server ignoring the header would run the
    request in the body, one honouring it would swallow it."""
    outer, smuggled = unique("outer"), unique("smuggled")
    hidden = hidden_put(smuggled)
    req = (f"PUT /v2/keys/{outer}?value=a HTTP/1.1\r\nHost: x\r\nContent-Length : {len(hidden)}\r\n\r\n"
           ).encode() + hidden
    raw = exchange(daemon, req)
    assert statuses(raw) == [400], raw[:600]
    assert not key_exists(daemon, smuggled)
    assert not key_exists(daemon, outer)
    daemon.check_serving()


def test_nul_in_header(daemon):
    outer = unique("outer")
    raw = exchange(daemon, f"PUT /v2/keys/{outer}?value=a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n"
                           f"Content-Length: 0\r\n\r\n".encode())
    assert statuses(raw) == [400], raw[:600]
    assert not key_exists(daemon, outer)
    daemon.check_serving()


def test_nul_in_content_length(daemon):
    smuggled = unique("smuggled")
    hidden = hidden_put(smuggled)
    raw = exchange(daemon, f"PUT /v2/keys/{unique()}?value=a HTTP/1.1\r\nHost: x\r\n"
                           f"Content-Length: 0\x00{len(hidden)}\r\n\r\n".encode() + hidden)
    assert statuses(raw) == [400], raw[:600]
    assert not key_exists(daemon, smuggled)
    daemon.check_serving()


def test_obs_fold(daemon):
    """A folded header line (obs-fold): refused with 400, or the fold read as a space (RFC 7230 3.2.4);
    either way exactly one answer and the key is written at most once with the value sent."""
    key = unique()
    raw = exchange(daemon, f"PUT /v2/keys/{key}?value=folded HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n"
                           f"Content-Length: 0\r\n\r\n".encode())
    st = statuses(raw)
    assert st in ([400], [201]), raw[:600]
    if st == [201]:
        assert daemon.get("/v2/keys/" + key).json()["node"]["value"] == "folded"
    else:
        assert not key_exists(daemon, key)
    daemon.check_serving()


def test_obs_fold_first_header(daemon):
    """A continuation line right after the request line has nothing to continue: 400."""
    key = unique()
    raw = exchange(daemon, f"PUT /v2/keys/{key}?value=a HTTP/1.1\r\n Host: x\r\nContent-Length: 0\r\n\r\n"
                   .encode())
    assert statuses(raw) == [400], raw[:600]
    assert not key_exists(daemon, key)
    daemon.check_serving()


def test_bare_lf(daemon):
    """Lines ending in a bare LF: served (Go accepts them) or refused with 400; nothing else."""
    key = unique()
    raw = exchange(daemon, f"PUT /v2/keys/{key}?value=lf HTTP/1.1\nHost: x\nContent-Length: 0\n\n".encode())
    st = statuses(raw)
    assert st in ([400], [201]), raw[:600]
    assert key_exists(daemon, key) == (st == [201])
    daemon.check_serving()


def test_bare_lf_hiding_a_header(daemon):
    """A bare LF inside a header line: either it ends the line (then Content-Length is a header and the
    body is swallowed as body) or the request is refused: the request in the body never runs."""
    smuggled = unique("smuggled")
    hidden = hidden_put(smuggled)
    raw = exchange(daemon, f"PUT /v2/keys/{unique()}?value=a HTTP/1.1\r\nHost: x\r\nX-A: a\n"
                           f"Content-Length: {len(hidden)}\r\n\r\n".encode() + hidden)
    st = statuses(raw)
    assert st in ([400], [201]), raw[:600]
    assert not key_exists(daemon, smuggled)
    daemon.check_serving()


# ------------------------------------------------------------------------------------------------
# 2. header floods

def assert_refused_or_closed(raw, allowed=(400, 413, 414, 431)):
    st = status_of(raw)
    assert raw == b"" or st in allowed, raw[:300]


def test_10000_small_headers(daemon):
    """Served (Go's 1 MiB head limit allows it) or refused with 431/400: quickly, either way."""
    hdrs = b"".join(b"X-H%d: v\r\n" % i for i in range(10000))
    t0 = time.monotonic()
    raw = exchange(daemon, b"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\n" + hdrs + b"Connection: close\r\n\r\n")
    took = time.monotonic() - t0
    assert raw == b"" or status_of(raw) in (200, 400, 431), raw[:300]
    assert took < 4, f"{took:.1f}s for 10000 headers"
    daemon.check_serving()


def test_2mib_header(daemon):
    raw = exchange(daemon, b"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * (2 << 20) + b"\r\n\r\n",
                   half_close=False)
    assert_refused_or_closed(raw)
    daemon.check_serving()


def test_1_5mib_uri(daemon):
    raw = exchange(daemon, b"GET /v2/keys/" + b"u" * (3 << 19) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                   half_close=False)
    assert_refused_or_closed(raw)
    daemon.check_serving()


def test_head_limit_does_not_poison_next_connection(daemon):
    """After a refused huge head, a normal request on a fresh connection is served at once."""
    c = Conn(daemon)
    try:
        try:
            c.send(b"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * (2 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
    finally:
        c.close()
    c = Conn(daemon)
    try:
        c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response().status == 200
    finally:
        c.close()


# ------------------------------------------------------------------------------------------------
# 3. pipelining

def test_pipeline_100_gets_in_order(daemon):
    prefix = unique("pipe")
    reqs = b"".join(f"GET /v2/keys/{prefix}-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(100))
    c = Conn(daemon)
    try:
        c.send(reqs)
        for i in range(100):
            r = c.response()
            assert r.status == 404, r
            assert f'"cause":"/{prefix}-{i}"'.encode() in r.body, (i, r)
        assert c.is_open(0.2)
    finally:
        c.close()


def test_pipeline_put_get_same_key(daemon):
    key = unique()
    reqs = b"".join([
        f"PUT /v2/keys/{key}?value=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(),
        f"GET /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n{FORM}Content-Length: 7\r\n\r\nvalue=b".encode(),
        f"GET /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"DELETE /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET /v2/keys/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    ])
    c = Conn(daemon)
    try:
        c.send(reqs)
        got = [c.response() for _ in range(6)]
        assert c.closed_after(3) is not None
    finally:
        c.close()
    assert [r.status for r in got] == [201, 200, 200, 200, 200, 404], got
    assert b'"value":"a"' in got[1].body and b'"value":"b"' in got[3].body, got


def test_pipeline_after_watch(daemon):
    """A request pipelined behind a watch is answered after the watch, in order."""
    key, other = unique("w"), unique("o")
    c = Conn(daemon)
    try:
        c.send(f"GET /v2/keys/{key}?wait=true HTTP/1.1\r\nHost: x\r\n\r\n"
               f"GET /v2/keys/{other} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)
        c.s.setblocking(False)
        try:
            c.buf += c.s.recv(65536)
        except BlockingIOError:
            pass
        c.s.setblocking(True)
        c.s.settimeout(10)
        assert f'"cause":"/{other}"'.encode() not in c.buf, bytes(c.buf)
        daemon.set(key, "fired")
        w = c.response()
        assert w.status == 200 and b'"value":"fired"' in w.body, w
        r = c.response()
        assert r.status == 404 and f'"cause":"/{other}"'.encode() in r.body, r
        assert c.is_open(0.2)
    finally:
        c.close()


# ------------------------------------------------------------------------------------------------
# 4. keep-alive

def test_http10_closes(daemon):
    c = Conn(daemon)
    try:
        c.send(b"GET /v2/keys/ HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.response()
        assert r.status == 200
        assert r.body.startswith(b"{"), r
        assert c.closed_after(3) is not None, "HTTP/1.0 without keep-alive must close"
    finally:
        c.close()


def test_http10_keep_alive(daemon):
    c = Conn(daemon)
    try:
        for _ in range(3):
            c.send(b"GET /v2/keys/ HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            r = c.response()
            assert r.status == 200 and "content-length" in r.headers, r
            assert r.headers.get("connection", "").lower() == "keep-alive", r
            assert c.is_open(0.2)
    finally:
        c.close()


def test_http11_connection_close(daemon):
    c = Conn(daemon)
    try:
        c.send(b"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
               b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.response()
        assert r.status == 200
        assert r.headers.get("connection", "").lower() == "close", r
        assert c.closed_after(3) is not None, "Connection: close must close after the answer"
    finally:
        c.close()


def test_http11_keep_alive_default(daemon):
    c = Conn(daemon)
    try:
        for _ in range(3):
            c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.response().status == 200
        assert c.is_open(0.3)
    finally:
        c.close()


def test_head_request(daemon):
    key = unique()
    daemon.set(key, "h" * 1000)
    c = Conn(daemon)
    try:
        c.send(f"HEAD /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        r = c.response(head=True)
        assert r.status == 200, r
        assert int(r.headers["content-length"]) > 1000, r
        assert "transfer-encoding" not in r.headers, r
        # no body follows: the next answer parses right after the head
        c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        r2 = c.response()
        assert r2.status == 200 and b"etcdserver" in r2.body, r2
        c.send(f"HEAD /v2/keys/{unique()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        r3 = c.response(head=True)
        assert r3.status == 404, r3
        c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response().status == 200
    finally:
        c.close()


# ------------------------------------------------------------------------------------------------
# 5. Expect: 100-continue

def test_expect_100_continue(daemon):
    key = unique()
    body = b"value=continued"
    c = Conn(daemon)
    try:
        c.send(f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n{FORM}Expect: 100-continue\r\n"
               f"Content-Length: {len(body)}\r\n\r\n".encode())
        c.s.settimeout(3)
        r = c.response()
        assert r.status == 100, r
        assert r.body == b"" and not c.buf, (r, bytes(c.buf))
        c.send(body)
        r = c.response()
        assert r.status == 201, r
        assert b'"value":"continued"' in r.body
        c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response().status == 200
    finally:
        c.close()
    assert daemon.get("/v2/keys/" + key).json()["node"]["value"] == "continued"


def test_expect_100_continue_body_sent_anyway(daemon):
    """A client that does not wait for the 100 (curl after 1 s, or an impatient one) still gets its one
    final answer, and the connection stays in step."""
    key = unique()
    body = b"value=eager"
    c = Conn(daemon)
    try:
        c.send(f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n{FORM}Expect: 100-continue\r\n"
               f"Content-Length: {len(body)}\r\n\r\n".encode() + body +
               b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.response()
        if r.status == 100:
            r = c.response()
        assert r.status == 201, r
        assert c.response().status == 200
    finally:
        c.close()
    assert daemon.get("/v2/keys/" + key).json()["node"]["value"] == "eager"


# ------------------------------------------------------------------------------------------------
# 6. a slow reader beside 1000 busy connections

def _busy_clients(d, n_conns, rounds, latencies, errors):
    """n_conns keep-alive connections, each doing `rounds` GETs, the first at a random moment of the first
    second, the next 50-250 ms after the previous answer (so latency, not a burst's queue, is measured),
    driven by one epoll loop; per-request latencies (s) are appended."""
    req = b"GET /v2/keys/busy HTTP/1.1\r\nHost: x\r\n\r\n"
    rnd = random.Random(10)
    conns = []
    for i in range(n_conns):
        s = socket.create_connection(("127.0.0.1", d.client_ports[i % 2]), timeout=10)
        s.setblocking(False)
        conns.append(s)
    state = {s.fileno(): [s, bytearray(), 0, 0.0] for s in conns}  # sock, buf, answers, sent_at
    now = time.monotonic()
    due = [(now + rnd.uniform(0, 1.0), s.fileno()) for s in conns]
    heapq.heapify(due)
    poller = select.epoll()
    try:
        for s in conns:
            poller.register(s.fileno(), select.EPOLLIN)
        left = n_conns
        deadline = now + 60
        while left and time.monotonic() < deadline:
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, fd = heapq.heappop(due)
                state[fd][3] = time.monotonic()
                state[fd][0].send(req)
            wait = min(0.5, max(0.0, due[0][0] - time.monotonic())) if due else 0.5
            for fd, _ in poller.poll(wait):
                st = state[fd]
                try:
                    c = st[0].recv(65536)
                except BlockingIOError:
                    continue
                if not c:
                    errors.append("closed")
                    poller.unregister(fd)
                    left -= 1
                    continue
                st[1] += c
                i = st[1].find(b"\r\n\r\n")
                if i < 0:
                    continue
                head = bytes(st[1][:i]).lower()
                cl = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(st[1]) < i + 4 + cl:
                    continue
                if not head.startswith(b"http/1.1 200"):
                    errors.append(head[:40])
                latencies.append(time.monotonic() - st[3])
                del st[1][:i + 4 + cl]
                st[2] += 1
                if st[2] == rounds:
                    poller.unregister(fd)
                    left -= 1
                else:
                    heapq.heappush(due, (time.monotonic() + rnd.uniform(0.05, 0.25), fd))
        if left:
            errors.append(f"{left} connections unfinished")
    finally:
        poller.close()
        for s in conns:
            s.close()


def test_slow_reader_does_not_hurt_others(make_daemon):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} too low for 1000 connections")
    # ours and the daemon's (inherited) limit: 1000 connections and then some
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    try:
        _slow_reader_beside_busy_clients(make_daemon())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _slow_reader_beside_busy_clients(d):
    key = unique("big")
    value = "".join(chr(97 + i % 26) for i in range(100 * 1024))
    d.set(key, value)
    d.set("busy", "x")
    n_req = 2000
    slow = Conn(d, timeout=60)
    # (no small SO_RCVBUF: a tiny window on loopback makes even the fast phase crawl on delayed ACKs)
    reqs = f"GET /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * n_req
    send_err = []

    def sender():
        try:
            slow.s.sendall(reqs)
        except OSError as e:
            send_err.append(e)

    fast = threading.Event()

    def slow_reader():
        while not fast.is_set():
            try:
                slow.buf += slow.s.recv(1024)
            except OSError:
                return
            time.sleep(0.01)

    ts = threading.Thread(target=sender, daemon=True)
    tr = threading.Thread(target=slow_reader, daemon=True)
    ts.start()
    tr.start()
    try:
        time.sleep(0.5)  # the slow client's output backs up
        latencies, errors = [], []
        _busy_clients(d, 1000, 3, latencies, errors)
        fast.set()
        tr.join(5)
        assert not errors, errors[:5]
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(f"busy clients: {len(latencies)} GETs, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        assert len(latencies) == 3000
        assert p99 < 0.2, f"p99 {p99 * 1000:.0f} ms beside a slow reader"
        # now read fast: every answer complete and correct, in order
        t0 = time.monotonic()
        want_value = f'"value":"{value}"'.encode()
        for i in range(n_req):
            r = slow.response()
            assert r.status == 200 and want_value in r.body, (i, r.status, len(r.body))
        print(f"slow client: {n_req} answers of {len(r.body)} bytes read in {time.monotonic() - t0:.1f}s")
        ts.join(5)
        assert not send_err, send_err
    finally:
        fast.set()
        slow.close()
    d.check_serving()


# ------------------------------------------------------------------------------------------------
# 7. timeouts and the connection cap (test knobs of our layer)

@pytest.fixture(scope="module")
def knob_daemon():
    if REFERENCE:
        pytest.skip("the HTTP test knobs are ours")
    from conftest import Daemon, _require_binary
    _require_binary()
    d = Daemon(env={"ETCD2_HTTP_IDLE_TIMEOUT_MS": "500", "ETCD2_HTTP_HEAD_TIMEOUT_MS": "1000",
                    "ETCD2_HTTP_BODY_TIMEOUT_MS": "500"})
    yield d
    d.cleanup()


@only_ours
def test_idle_timeout(knob_daemon):
    c = Conn(knob_daemon)
    try:
        c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response().status == 200
        t = c.closed_after(5)
        assert t is not None, "idle keep-alive connection still open after 5 s (idle timeout 500 ms)"
        assert 0.25 <= t <= 1.5, f"closed after {t:.2f}s, idle timeout 500 ms"
    finally:
        c.close()
    knob_daemon.check_serving()


@only_ours
def test_idle_timeout_fresh_connection(knob_daemon):
    """A connection that never sends a byte is idle too."""
    c = Conn(knob_daemon)
    try:
        t = c.closed_after(5)
        assert t is not None and 0.25 <= t <= 1.5, t
    finally:
        c.close()


@only_ours
def test_idle_timer_restarts_per_request(knob_daemon):
    """Requests every 300 ms keep the connection (idle 500 ms) alive past several timeouts."""
    c = Conn(knob_daemon)
    try:
        for _ in range(6):
            c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.response().status == 200
            time.sleep(0.3)
    finally:
        c.close()


@only_ours
def test_head_timeout_trickle(knob_daemon):
    """A head trickling in 1 byte per 100 ms (head timeout 1 s) is cut off: the connection is closed,
    with a 408 or without an answer, after about 1 s and not before 0.5 s."""
    c = Conn(knob_daemon)
    head = f"PUT /v2/keys/{unique()}?value=x HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-{i}: y\r\n" for i in range(40))
    t0 = time.monotonic()
    closed_at = None
    try:
        for b in head.encode():
            if time.monotonic() - t0 > 3:
                break  # well past the timeout: give up (a head of 40 headers would take 40 s)
            try:
                c.send(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - t0
                break
            r, _, _ = select.select([c.s], [], [], 0.1)
            if r:
                data = b""
                try:
                    data = c.s.recv(4096)
                except ConnectionResetError:
                    pass
                assert data == b"" or status_of(data) == 408, data[:200]
                closed_at = time.monotonic() - t0
                break
        assert closed_at is not None, "a head trickling past the head timeout was not cut off"
        assert 0.5 <= closed_at <= 2.5, f"closed after {closed_at:.2f}s (head timeout 1 s)"
    finally:
        c.close()
    knob_daemon.check_serving()


@only_ours
def test_body_timeout(knob_daemon):
    key = unique()
    c = Conn(knob_daemon)
    try:
        c.send(f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n{FORM}Content-Length: 100\r\n\r\nvalue=".encode())
        t = c.closed_after(5)
        assert t is not None, "a body stalled past the body timeout was not cut off"
        assert 0.25 <= t <= 1.5, f"closed after {t:.2f}s (body timeout 500 ms)"
    finally:
        c.close()
    assert not key_exists(knob_daemon, key)
    knob_daemon.check_serving()


@only_ours
def test_slow_but_steady_body_within_timeout(knob_daemon):
    """A body that arrives within the body timeout in small pieces is fine."""
    key = unique()
    body = b"value=steady"
    c = Conn(knob_daemon)
    try:
        c.send(f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n{FORM}Content-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 3):
            c.send(body[i:i + 3])
            time.sleep(0.02)
        assert c.response().status == 201
    finally:
        c.close()
    assert get_fresh(knob_daemon, "/v2/keys/" + key).json()["node"]["value"] == "steady"


@only_ours
def test_connection_cap(make_daemon):
    d = make_daemon(env={"ETCD2_HTTP_MAX_CONNECTIONS": "50"})
    time.sleep(0.2)  # the health checks' connections are gone
    conns = []
    try:
        for _ in range(50):
            c = Conn(d)
            c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.response().status == 200
            conns.append(c)
        extra = Conn(d)
        try:
            # the 503 may come at once, or only once there is a request to answer
            raw = extra.read_all(1)
            if not raw and not extra.eof:
                try:
                    extra.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                raw = extra.read_all(4)
            assert raw.startswith(b"HTTP/1.1 503 "), raw[:200]
            assert extra.eof, "connection over the cap not closed after the 503"
        finally:
            extra.close()
        for c in conns[:5]:
            c.close()
        del conns[:5]
        deadline = time.monotonic() + 5
        while True:
            c = Conn(d)
            try:
                c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
                r = c.response()
            except (EOFError, ConnectionResetError):
                r = None
            if r is not None and r.status == 200:
                conns.append(c)
                break
            c.close()
            assert time.monotonic() < deadline, f"not served again after 5 closed: {r}"
            time.sleep(0.1)
        # the connections under the cap still work
        for c in conns[:3]:
            c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.response().status == 200
    finally:
        for c in conns:
            c.close()


# ------------------------------------------------------------------------------------------------
# 8. 10k idle keep-alive connections

def _rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _sanitized(binary):
    try:
        with open(binary, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def _timed_get(c):
    t0 = time.monotonic()
    c.send(b"GET /v2/keys/busy HTTP/1.1\r\nHost: x\r\n\r\n")
    r = c.response()
    assert r.status == 200, r
    return time.monotonic() - t0


def test_10k_idle_connections_memory(make_daemon):
    n = 10000
    want = n + 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} too low for {n} connections")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, want + 2000)), hard))
    except (ValueError, OSError) as e:
        pytest.skip(f"cannot raise RLIMIT_NOFILE: {e}")
    socks = []
    try:
        d = make_daemon()  # inherits the raised limit
        d.set("busy", "x")
        probe = Conn(d)
        for _ in range(50):  # warm up: allocator, first connections
            _timed_get(probe)
        warm = [Conn(d) for _ in range(100)]
        for c in warm:
            c.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            c.response()
        for c in warm:
            c.close()
        time.sleep(0.3)
        before = _rss(d.proc.pid)
        for i in range(n):
            try:
                socks.append(socket.create_connection(("127.0.0.1", d.client_ports[i % 2]), timeout=10))
            except OSError as e:
                pytest.fail(f"connection {i} failed: {e}")
        # a request on a connection made after all of them: the daemon accepted every one before it
        last = Conn(d)
        last.send(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert last.response().status == 200
        last.close()
        time.sleep(0.5)
        after = _rss(d.proc.pid)
        per_conn = (after - before) / n
        times = sorted(_timed_get(probe) for _ in range(7))
        print(f"RSS {before >> 10} KiB -> {after >> 10} KiB with {n} idle connections: {per_conn:.0f} bytes per "
              f"connection ({'reference' if REFERENCE else 'etcd2'}); GET beside them: median "
              f"{times[3] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms")
        assert times[3] < 0.05, f"GET took {times[3] * 1000:.0f} ms beside {n} idle connections"
        # idle connections are still served
        for s in socks[:20]:
            s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks[:20]:
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        if not REFERENCE:
            if _sanitized(d.binary):
                print("sanitized build (ASan): the 8 KiB per connection bound is not checked")
            else:
                assert per_conn < 8192, f"{per_conn:.0f} bytes per idle connection"
        probe.close()
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    time.sleep(0.3)
    d.check_serving()


# ------------------------------------------------------------------------------------------------
# 9. disconnects

def _abort(c, rst):
    if rst:
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_disconnect_mid_head(daemon, rst):
    key = unique()
    c = Conn(daemon)
    c.send(f"PUT /v2/keys/{key}?value=x HTTP/1.1\r\nHost: x\r\nContent-Le".encode())
    time.sleep(0.1)
    _abort(c, rst)
    time.sleep(0.2)
    assert not key_exists(daemon, key)
    daemon.check_serving()


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_disconnect_mid_body(daemon, rst):
    key = unique()
    c = Conn(daemon)
    c.send(f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n{FORM}Content-Length: 100\r\n\r\nvalue=part".encode())
    time.sleep(0.1)
    _abort(c, rst)
    time.sleep(0.3)
    if not (rst and REFERENCE):  # etcd 3.4 applies a body cut by a reset (see test_bad_input)
        assert not key_exists(daemon, key)
    daemon.check_serving()


@pytest.mark.parametrize("where", ["in_size", "in_data", "before_last"])
def test_disconnect_mid_chunked_body(daemon, where):
    key = unique()
    head = f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\n{FORM}Transfer-Encoding: chunked\r\n\r\n".encode()
    tail = {"in_size": b"6\r\nvalue=\r\n1", "in_data": b"6\r\nvalue=\r\n8\r\nchu", "before_last": b"6\r\nvalue=\r\n"
            b"4\r\nnked\r\n"}[where]
    c = Conn(daemon)
    c.send(head + tail)
    time.sleep(0.1)
    c.close()
    time.sleep(0.3)
    assert not key_exists(daemon, key)
    daemon.check_serving()


def _watchers(d):
    return d.get("/v2/stats/store").json()["watchers"]


def _wait_watchers(d, n, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _watchers(d) == n:
            return True
        time.sleep(0.05)
    return _watchers(d) == n


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_disconnect_mid_watch(daemon, rst):
    base = _watchers(daemon)
    conns = []
    try:
        for i in range(3):
            c = Conn(daemon)
            stream = "&stream=true" if i == 2 else ""
            # the second one has a request pipelined behind the watch
            extra = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n" if i == 1 else b""
            c.send(f"GET /v2/keys/{unique()}?wait=true{stream} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + extra)
            conns.append(c)
        assert _wait_watchers(daemon, base + 3), _watchers(daemon)
    finally:
        for c in conns:
            _abort(c, rst)
    assert _wait_watchers(daemon, base), f"watchers did not drop back to {base}: {_watchers(daemon)}"
    daemon.check_serving()

