# SPDX-License-Identifier: Apache-2.0
"""etcd2.service's hardening and TLS keys from systemd credentials, under a real systemd (see sdmachine.py).

The exposure score `systemd-analyze security` gives the installed unit, measured by the namespace's own
systemd 252. Then client TLS whose certificate and key live in a root-only directory (0700, files 0600) and
reach the daemon (User=etcd) only as LoadCredential= credentials named in ETCD_CERT_FILE/ETCD_KEY_FILE (and the
client CA in ETCD_TRUSTED_CA_FILE, with client-cert-auth); and a flag naming a credential the unit does not
load: the start fails with the daemon's error in the journal.
Certificates are made at test time with openssl (tests/tls_certs.py).
"""

import json
import os
import re
import shutil

import pytest

import tls_certs

DROPINS = "/run/systemd/system/etcd2.service.d"
KEYS = "/run/etcd2-keys"                 # root-only, inside the namespace's private /run
CERTS_IN_NS = "/run/etcd2-test/w/certs"  # the CA certificate for curl (the work dir, bind-mounted)
MAX_EXPOSURE = 1.5

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def write_dropin(m, name, text):
    m.run(["mkdir", "-p", DROPINS])
    m.run(["sh", "-c", f"cat > {DROPINS}/{name}"], input=text)


def remove_dropin(m, name):
    m.run(["rm", "-f", f"{DROPINS}/{name}"])


def journal_messages(m, *args):
    out = m.journal("-o", "json", "-u", "etcd2.service", *args)
    return [json.loads(line).get("MESSAGE", "") for line in out.splitlines() if line.strip()]


def https(m, path, cacert=True, client=True, timeout=10):
    """(curl's exit status, HTTP status, body) of a GET over https inside the namespace's network."""
    cmd = ["curl", "-sS", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}"]
    if cacert:
        cmd += ["--cacert", f"{CERTS_IN_NS}/ca.crt"]
    if client:
        cmd += ["--cert", f"{CERTS_IN_NS}/client.crt", "--key", f"{CERTS_IN_NS}/client.key"]
    r = m.run(cmd + ["https://127.0.0.1:2379" + path], check=False, timeout=timeout + 5)
    body, _, code = r.stdout.rpartition("\n")
    return r.returncode, int(code) if code.isdigit() else None, body


@pytest.fixture(scope="module")
def certs(machine):
    """A CA, a server and a client certificate; the server's pair and the CA certificate go into KEYS (0700
    root, files 0600 root), the server key only there."""
    m = machine
    d = os.path.join(m.workdir, "certs")
    os.makedirs(d, mode=0o700)
    c = tls_certs.Certs(d)
    c.make_ca("ca")
    c.make_cert("server", "serverAuth,clientAuth")
    c.make_cert("client", "clientAuth")
    m.run(["install", "-d", "-m", "0700", "-o", "root", "-g", "root", KEYS])
    for f in ("server.crt", "server.key", "ca.crt"):
        m.run(["install", "-m", "0600", "-o", "root", "-g", "root", f"{CERTS_IN_NS}/{f}", f"{KEYS}/{f}"])
    os.unlink(os.path.join(d, "server.key"))
    os.chmod(d, 0o755)  # the CA certificate is public
    return d


def test_exposure_score(machine):
    """`systemd-analyze security` of the installed unit, as the namespace's systemd 252 loaded it."""
    m = machine
    r = m.run(["systemd-analyze", "security", "--no-pager", "etcd2.service"], check=False)
    match = re.search(r"Overall exposure level for etcd2\.service: (\d+\.\d+)", r.stdout)
    assert match, r.stdout + r.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security etcd2.service: {score}")
    assert score <= MAX_EXPOSURE, r.stdout
    # The directives the score rests on are in effect as systemd parsed them.
    for prop, want in (("PrivateUsers", "yes"), ("PrivateMounts", "yes"), ("ProcSubset", "pid"),
                       ("RemoveIPC", "yes"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict")):
        assert m.prop("etcd2.service", prop) == want, prop
    syscalls = m.prop("etcd2.service", "SystemCallFilter")
    assert syscalls and not syscalls.startswith("~"), syscalls  # an allow list
    for denied in ("setuid", "chown", "setpriority", "ioprio_set", "ptrace", "mount"):
        assert not re.search(rf"\b{denied}\b", syscalls), denied


def test_tls_keys_from_credentials(machine, certs):
    m = machine
    # The etcd user cannot read the key on disk: only systemd's copy for the service is readable to it.
    r = m.run(["cat", f"{KEYS}/server.key"], user="etcd", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    write_dropin(m, "70-tls.conf", f"""[Service]
LoadCredential=cert.pem:{KEYS}/server.crt
LoadCredential=key.pem:{KEYS}/server.key
LoadCredential=ca.pem:{KEYS}/ca.crt
Environment=ETCD_CERT_FILE=cert.pem ETCD_KEY_FILE=key.pem ETCD_TRUSTED_CA_FILE=ca.pem ETCD_CLIENT_CERT_AUTH=true
Environment=ETCD_LISTEN_CLIENT_URLS=https://127.0.0.1:2379,https://127.0.0.1:4001
Environment=ETCD_ADVERTISE_CLIENT_URLS=https://127.0.0.1:2379,https://127.0.0.1:4001
""")
    m.systemctl("daemon-reload")
    try:
        # The client sockets come from etcd2.socket (the daemon cannot bind 2379 and 4001 itself then): TLS on
        # socket-activated listeners.
        m.systemctl("start", "etcd2.socket", "etcd2-peer.socket")
        m.systemctl("start", "etcd2.service")
        assert m.prop("etcd2.service", "ActiveState") == "active"
        assert m.prop("etcd2.socket", "SubState") == "running"
        pid = m.prop("etcd2.service", "MainPID")
        assert m.run(["ps", "-o", "user=", "-p", pid]).stdout.strip() == "etcd"

        rc, code, body = https(m, "/version")
        assert rc == 0 and code == 200, (rc, code, body)
        assert json.loads(body)["etcdserver"] == "2.3.8"
        rc, code, body = https(m, "/v2/keys/creds")
        assert code == 404, body
        r = m.run(["curl", "-sS", "-m", "10", "--cacert", f"{CERTS_IN_NS}/ca.crt", "--cert",
                   f"{CERTS_IN_NS}/client.crt", "--key", f"{CERTS_IN_NS}/client.key", "-XPUT", "-d", "value=tls",
                   "https://127.0.0.1:4001/v2/keys/creds"], check=False)
        assert r.returncode == 0 and '"value":"tls"' in r.stdout, r
        # The trusted CA came from a credential too: without a client certificate the handshake fails.
        rc, code, _ = https(m, "/version", client=False)
        assert rc != 0 and code in (None, 0), (rc, code)
        # Without the CA, curl does not trust the server; plain http on the TLS port gets nothing.
        rc, _, _ = https(m, "/version", cacert=False)
        assert rc == 60, rc
        code, _ = m.http("GET", "http://127.0.0.1:2379/version", timeout=3)
        assert code in (None, 0, 400), code

        msgs = journal_messages(m)
        assert any("--cert-file: credential 'cert.pem' (/run/credentials/etcd2.service/cert.pem)" in x
                   for x in msgs), msgs[-20:]
        assert any("--key-file: credential 'key.pem' (/run/credentials/etcd2.service/key.pem)" in x
                   for x in msgs), msgs[-20:]
        assert any("--trusted-ca-file: credential 'ca.pem'" in x for x in msgs), msgs[-20:]
    finally:
        m.systemctl("stop", "etcd2.service", check=False)
        remove_dropin(m, "70-tls.conf")
        m.systemctl("daemon-reload")


def test_missing_credential_fails_with_its_name(machine, certs):
    m = machine
    # key.pem is named but not loaded.
    write_dropin(m, "70-tls.conf", f"""[Service]
LoadCredential=cert.pem:{KEYS}/server.crt
Environment=ETCD_CERT_FILE=cert.pem ETCD_KEY_FILE=key.pem
Environment=ETCD_LISTEN_CLIENT_URLS=https://127.0.0.1:2379,https://127.0.0.1:4001
Environment=ETCD_ADVERTISE_CLIENT_URLS=https://127.0.0.1:2379,https://127.0.0.1:4001
Restart=no
""")
    m.systemctl("daemon-reload")
    try:
        r = m.systemctl("start", "etcd2.service", check=False)
        assert r.returncode != 0
        assert m.prop("etcd2.service", "ActiveState") == "failed"
        assert m.prop("etcd2.service", "Result") == "exit-code"
        assert m.prop("etcd2.service", "ExecMainStatus") == "1"
        want = ("--key-file (ETCD_KEY_FILE) names the credential 'key.pem', but there is no such credential "
                "in $CREDENTIALS_DIRECTORY (/run/credentials/etcd2.service): add "
                "LoadCredential=key.pem:/path/to/file to etcd2.service")
        r = m.run(["journalctl", "--directory=/run/log/journal", "--no-pager", "-u", "etcd2", "-p", "err"])
        assert want in r.stdout, r.stdout
    finally:
        remove_dropin(m, "70-tls.conf")
        m.systemctl("daemon-reload")
        m.systemctl("reset-failed", "etcd2.service", check=False)
