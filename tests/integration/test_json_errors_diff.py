# SPDX-License-Identifier: Apache-2.0
"""Differential test (issue 12): malformed JSON bodies of POST/PUT /v2/members and PUT
/v2/auth/users|roles get Go encoding/json's messages, as etcd 3.4 answers them (status and body)."""

import os

import pytest
import requests

from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY, Daemon

pytestmark = pytest.mark.skipif(
    REFERENCE or not (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)) or not os.access(REFERENCE_BINARY, os.X_OK),
    reason="needs both ETCD2_BINARY and /usr/bin/etcd")

BODIES = [
    "", " ", "{", '{"peerURLs":', '{"peerURLs":[', '"ab', "x", "{'a'}", '{"a" 1}', '{"a":1 "b"}', "{1}",
    '{"a":1,}', "[1 2]", "{}x", "{} {}", "tru", "trux", "nul", "fals", "1.x", "1.", "1e", "1ex", "1e+", "-", "-x",
    "01", '{"a":"\\q"}', '{"a":"\\u12x4"}', '{"a":"\x01"}', '{"a":"\\', "\x80", "\xe9", "\x7f", "\t x",
    '{"peerURLs":1}', '{"peerURLs":"x"}', '{"peerURLs":{}}', '{"peerURLs":true}', '{"peerURLs":[1]}',
    '{"peerURLs":[true]}', '{"peerURLs":[[]]}', '{"peerURLs":[{}]}', '{"peerURLs":["x", 2.5]}',
    "[1]", '"x"', "1", "true", "{}", "null", '{"peerURLs":null}', '{"peerURLs":[]}',
]


def send(d, method, path, body):
    if "{id}" in path:
        path = path.replace("{id}", requests.get(d.url + "/v2/members", timeout=10).json()["members"][0]["id"])
    r = requests.request(method, d.url + path, data=body.encode("latin-1"), timeout=10,
                         headers={"Content-Type": "application/json"})
    return r.status_code, r.text


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("method,path", [("POST", "/v2/members"), ("PUT", "/v2/members/{id}"),
                                         ("PUT", "/v2/auth/users/u"), ("PUT", "/v2/auth/roles/r")])
def test_bad_body(pair, method, path, body):
    ours, ref = (send(d, method, path, body) for d in pair)
    assert ours == ref
