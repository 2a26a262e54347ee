# SPDX-License-Identifier: Apache-2.0
"""Differential test of /v2/stats/store (issue 12): one mixed sequence of key requests (successes and
failures of every action, gets of missing keys, directories, TTL expiry, watches) goes to our member and
to etcd 3.4 (--enable-v2); after every step each counter's delta must be the same on both."""

import os
import threading
import time

import pytest
import requests

from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY, Daemon

pytestmark = pytest.mark.skipif(
    REFERENCE or not (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)) or not os.access(REFERENCE_BINARY, os.X_OK),
    reason="needs both ETCD2_BINARY and /usr/bin/etcd")

K = "/v2/keys/sd"

# (method, path, form data or query params); every step is sent as is to both daemons
STEPS = [
    ("GET", K + "/missing", None),
    ("GET", K + "/missing", {"recursive": "true"}),
    ("GET", K + "/missing", {"quorum": "true"}),
    ("HEAD", K + "/missing", None),
    ("PUT", K + "/a", {"value": "1"}),                              # set (new)
    ("PUT", K + "/a", {"value": "2"}),                              # set (existing)
    ("GET", K + "/a", None),
    ("GET", K + "/a", {"quorum": "true"}),
    ("HEAD", K + "/a", None),
    ("PUT", K + "/dir", {"dir": "true"}),                           # set a directory
    ("PUT", K + "/dir", {"value": "x"}),                            # set on a directory: 102
    ("PUT", K + "/a/b", {"value": "x"}),                            # set under a file: 104
    ("PUT", "/v2/keys/", {"value": "x"}),                           # set on the root: 107
    ("GET", K + "/dir", None),
    ("GET", K, {"recursive": "true", "sorted": "true"}),
    ("PUT", K + "/c", {"value": "1", "prevExist": "false"}),         # create
    ("PUT", K + "/c", {"value": "1", "prevExist": "false"}),         # create fails: 105
    ("PUT", K + "/dir", {"dir": "true", "prevExist": "false"}),      # create dir fails
    ("POST", K + "/q", {"value": "in order"}),                      # create in order
    ("POST", K + "/a", {"value": "x"}),                             # create in order under a file
    ("PUT", K + "/c", {"value": "2", "prevExist": "true"}),          # update
    ("PUT", K + "/u", {"value": "2", "prevExist": "true"}),          # update fails: 100
    ("PUT", K + "/dir", {"value": "2", "prevExist": "true"}),        # update of a dir with a value
    ("PUT", K + "/dir", {"dir": "true", "prevExist": "true"}),       # update of a dir as a dir
    ("PUT", K + "/c", {"value": "3", "prevValue": "2"}),             # CAS
    ("PUT", K + "/c", {"value": "4", "prevValue": "nope"}),          # CAS fails: 101
    ("PUT", K + "/c", {"value": "4", "prevIndex": "1"}),             # CAS fails: 101
    ("PUT", K + "/m", {"value": "4", "prevValue": "x"}),             # CAS on a missing key: 100
    ("PUT", K + "/dir", {"value": "4", "prevValue": "x"}),           # CAS on a dir: 102
    ("PUT", K + "/c", {"value": "4", "prevValue": "3", "prevExist": "true"}),
    ("PUT", K + "/c", {"value": "5", "prevValue": "x", "prevExist": "false"}),
    ("PUT", K + "/t", {"value": "x", "ttl": "100"}),
    ("PUT", K + "/t", {"ttl": "200", "refresh": "true", "prevExist": "true"}),  # refresh as update
    ("PUT", K + "/t", {"ttl": "200", "refresh": "true"}),                      # refresh as set
    ("PUT", K + "/t", {"ttl": "200", "refresh": "true", "prevValue": "x"}),     # refresh as CAS
    ("PUT", K + "/nt", {"ttl": "200", "refresh": "true", "prevExist": "true"}),  # refresh of nothing
    ("DELETE", K + "/a", None),                                     # delete
    ("DELETE", K + "/a", None),                                     # delete fails: 100
    ("DELETE", K + "/dir", None),                                   # delete a dir without dir: 102
    ("PUT", K + "/dir/x", {"value": "x"}),
    ("DELETE", K + "/dir", {"dir": "true"}),                        # non-empty dir: 108
    ("DELETE", K + "/dir", {"recursive": "true"}),                  # recursive delete
    ("DELETE", "/v2/keys/", {"recursive": "true"}),                 # root: 107
    ("DELETE", "/v2/keys/", None),
    ("DELETE", "/v2/keys/", {"prevValue": "x"}),
    ("PUT", "/v2/keys/", {"value": "x", "prevExist": "true"}),
    ("PUT", "/v2/keys/", {"value": "x", "prevExist": "false"}),
    ("PUT", "/v2/keys/", {"value": "x", "prevValue": "y"}),
    ("PUT", "/v2/keys/", {"dir": "true"}),
    ("DELETE", K + "/c", {"prevValue": "nope"}),                    # CAD fails: 101
    ("DELETE", K + "/c", {"prevIndex": "1"}),                       # CAD fails: 101
    ("DELETE", K + "/zz", {"prevValue": "x"}),                      # CAD of a missing key: 100
    ("DELETE", K + "/c", {"prevValue": "4"}),                       # CAD
    ("PUT", K + "/e", {"dir": "true"}),
    ("DELETE", K + "/e", {"dir": "true", "prevValue": "x"}),        # CAD on a dir
    ("DELETE", K + "/e", {"dir": "true"}),                          # delete an empty dir
    ("PUT", K + "/bad", {"value": "x", "ttl": "bad"}),              # rejected while parsing
    ("PUT", K + "/bad", {"value": "x", "prevIndex": "bad"}),
    ("GET", K + "/bad", {"recursive": "bad"}),
    ("GET", K + "/t", {"wait": "true", "waitIndex": "1"}),           # a watch answered from the history
    ("GET", K + "/t", {"wait": "true", "waitIndex": "1", "recursive": "true"}),
]


def stats(d):
    return requests.get(d.url + "/v2/stats/store", timeout=10).json()


def delta(a, b):
    return {k: b[k] - a[k] for k in b if isinstance(b[k], int) and b[k] != a.get(k)}


def send(d, m, p, data):
    if m in ("GET", "HEAD", "DELETE"):
        return requests.request(m, d.url + p, params=data, timeout=10)
    return requests.request(m, d.url + p, data=data, timeout=10)


def test_every_step_moves_the_same_counters(pair):
    diffs = []
    for m, p, data in STEPS:
        got = []
        for d in pair:
            before = stats(d)
            r = send(d, m, p, data)
            got.append((r.status_code, delta(before, stats(d))))
        if got[0] != got[1]:
            diffs.append((m, p, data, "ours", got[0], "etcd", got[1]))
    assert not diffs, "\n".join(map(str, diffs))


def _watch(d, path, box, params):
    box["r"] = requests.get(d.url + path, params=params, timeout=20)


def test_watchers_and_expiry(pair):
    results = []
    for d in pair:
        base = stats(d)
        boxes, threads = [], []
        for params in ({"wait": "true"}, {"wait": "true", "recursive": "true"}, {"wait": "true", "stream": "true"}):
            box = {}
            t = threading.Thread(target=_watch, args=(d, K + "/w", box, params), daemon=True)
            t.start()
            boxes.append(box)
            threads.append(t)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and stats(d)["watchers"] != base["watchers"] + 3:
            time.sleep(0.05)
        during = delta(base, stats(d))
        send(d, "PUT", K + "/w", {"value": "x", "ttl": "1"})
        # the two one-shot watches end with the set; the stream stays until the expiry's event
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and stats(d)["expireCount"] == base["expireCount"]:
            time.sleep(0.1)
        time.sleep(0.3)
        after_expiry = delta(base, stats(d))
        results.append((during, after_expiry))
        # the stream watch is still open; it ends with the daemon (the reads time out harmlessly)
    assert results[0] == results[1], results
