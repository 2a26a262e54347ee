# SPDX-License-Identifier: Apache-2.0
"""Differential test (issue 12): every /v2/members answer (GET, POST, PUT, DELETE; successes and every
error) carries the same headers as etcd 3.4's: the same names, and the same values but for Date,
Content-Length and the cluster-specific X-Etcd-Cluster-Id (present on both or neither), and the
same status and body (member ids, peer and client URLs made alike). etcd 3.4 sends CORS headers by
default (2.3.8 only with --cors): Access-Control-* are not compared (test_differential.py's difference
1). Where 2.3.8 worded an error otherwise ("etcdserver: peerURL exists", url.Parse's URL unquoted) we
answer as 3.4 does: 2.x clients only show these messages. One deliberate difference: etcd 3.4 takes
unix:// and unixs:// peer URLs and says so when refusing a scheme; we take http and https only, as
2.3.8, and keep its "URL scheme must be http or https"."""

import os
import re

import pytest
import requests

from conftest import OUR_BINARY, REFERENCE, REFERENCE_BINARY, Daemon

pytestmark = pytest.mark.skipif(
    REFERENCE or not (OUR_BINARY and os.access(OUR_BINARY, os.X_OK)) or not os.access(REFERENCE_BINARY, os.X_OK),
    reason="needs both ETCD2_BINARY and /usr/bin/etcd")

JSON = {"Content-Type": "application/json"}
IGNORED = {"date", "content-length"}
PRESENCE = {"x-etcd-cluster-id"}


def own_id(d):
    return d.get("/v2/members").json()["members"][0]["id"]


# (name, method, path, headers, body); "{id}" is the daemon's own member id
CASES = [
    ("list", "GET", "/v2/members", None, None),
    ("list_slash", "GET", "/v2/members/", None, None),
    ("head", "HEAD", "/v2/members", None, None),
    ("leader", "GET", "/v2/members/leader", None, None),
    ("get_one", "GET", "/v2/members/{id}", None, None),
    ("options", "OPTIONS", "/v2/members", None, None),
    ("patch", "PATCH", "/v2/members", None, None),
    ("post_no_type", "POST", "/v2/members", None, '{"peerURLs":["http://127.0.0.1:1"]}'),
    ("post_bad_type", "POST", "/v2/members", {"Content-Type": "text/plain"}, '{"peerURLs":["http://127.0.0.1:1"]}'),
    ("post_bad_json", "POST", "/v2/members", JSON, '{"peerURLs":'),
    ("post_bad_url", "POST", "/v2/members", JSON, '{"peerURLs":["127.0.0.1:1"]}'),
    ("post_no_scheme", "POST", "/v2/members", JSON, r'{"peerURLs":[" :x\\\"y "]}'),
    ("post_ftp", "POST", "/v2/members", JSON, '{"peerURLs":["ftp://127.0.0.1:1"]}'),
    ("post_no_port", "POST", "/v2/members", JSON, '{"peerURLs":["http://127.0.0.1"]}'),
    ("post_path", "POST", "/v2/members", JSON, '{"peerURLs":["http://127.0.0.1:1/x"]}'),
    ("post_null_url", "POST", "/v2/members", JSON, '{"peerURLs":[null]}'),
    ("post_empty", "POST", "/v2/members", JSON, '{}'),
    ("post_existing", "POST", "/v2/members", JSON, '{"peerURLs":["{peer}"]}'),
    ("put_no_id", "PUT", "/v2/members", JSON, '{"peerURLs":["http://127.0.0.1:1"]}'),
    ("put_bad_id", "PUT", "/v2/members/zz", JSON, '{"peerURLs":["http://127.0.0.1:1"]}'),
    ("put_missing", "PUT", "/v2/members/1234", JSON, '{"peerURLs":["http://127.0.0.1:1"]}'),
    ("put_bad_json", "PUT", "/v2/members/{id}", JSON, 'x'),
    ("put_same", "PUT", "/v2/members/{id}", JSON, '{"peerURLs":["{peer}"]}'),
    ("put_missing_bad_json", "PUT", "/v2/members/1234", JSON, '{"peerURLs":'),
    ("put_bad_id_bad_json", "PUT", "/v2/members/zz", JSON, '{'),
    ("put_empty", "PUT", "/v2/members/{id}", JSON, '{"peerURLs":[]}'),
    ("put_bad_url", "PUT", "/v2/members/{id}", JSON, '{"peerURLs":["127.0.0.1:1"]}'),
    ("put_no_type", "PUT", "/v2/members/{id}", None, '{"peerURLs":["{peer}"]}'),
    ("delete_no_id", "DELETE", "/v2/members", None, None),
    ("delete_bad_id", "DELETE", "/v2/members/zz", None, None),
    ("delete_missing", "DELETE", "/v2/members/1234", None, None),
    ("get_sub", "GET", "/v2/members/{id}/x", None, None),
    ("delete_leader", "DELETE", "/v2/members/leader", None, None),
    ("put_leader", "PUT", "/v2/members/leader", JSON, '{"peerURLs":["http://127.0.0.1:1"]}'),
    ("delete_overflow", "DELETE", "/v2/members/1ffffffffffffffff", None, None),
    ("delete_upper_hex", "DELETE", "/v2/members/ABC", None, None),
    ("delete_0x", "DELETE", "/v2/members/0x12", None, None),
    ("delete_sub", "DELETE", "/v2/members/{id}/x", None, None),
    ("put_text_missing", "PUT", "/v2/members/1234", {"Content-Type": "text/plain"}, 'x'),
    ("head_one", "HEAD", "/v2/members/{id}", None, None),
    ("trace", "TRACE", "/v2/members/{id}", None, None),
    # last: a second (never started) member costs the quorum
    ("post_on_id", "POST", "/v2/members/{id}", JSON, '{"peerURLs":["http://127.0.0.1:1"]}'),
]


def unix_schemes_as_23(text):
    return text.replace("URL scheme must be http, https, unix, or unixs: ", "URL scheme must be http or https: ")


def send(d, m, p, h, body):
    mid = own_id(d)
    p = p.replace("{id}", mid)
    if body:
        body = body.replace("{peer}", d.peer_url)
    r = requests.request(m, d.url + p, headers=h, data=body, timeout=10, allow_redirects=False)
    hdr = {}
    for k, v in r.headers.items():
        k = k.lower()
        if k in IGNORED or k.startswith("access-control-"):
            continue
        hdr[k] = "<present>" if k in PRESENCE else v
    text = r.text.replace(mid, "<id>").replace(d.peer_url, "<peer>")
    text = re.sub(r'"clientURLs":\[[^]]*\]', '"clientURLs":<urls>', text)
    # the id of a member added by POST is random on both
    text = re.sub(r'"id":"[0-9a-f]+"', '"id":<new>', text)
    return r.status_code, hdr, unix_schemes_as_23(text)


@pytest.mark.parametrize("name,m,p,h,body", CASES, ids=[c[0] for c in CASES])
def test_members_headers(pair, name, m, p, h, body):
    ours, ref = (send(d, m, p, h, body) for d in pair)
    assert ours == ref, (ours, ref)
