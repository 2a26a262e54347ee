# SPDX-License-Identifier: Apache-2.0
"""Certificates made at test time with openssl in a directory of the test's (never committed keys), for the
integration, systemd and bench tests: ECDSA P-256 CAs and leaf certificates signed by one of them, with
the extended key usages and subject alternative names a test asks for, valid for 2 days. Files are
<name>.crt and <name>.key (and the leaf's <name>.csr and <name>.ext)."""

import subprocess

# What a certificate for a daemon on this machine names: the tests listen on 127.0.0.1 only.
LOCALHOST_SAN = "IP:127.0.0.1,DNS:localhost"


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Certs:
    def __init__(self, d):
        self.dir = d

    def make_ca(self, name):
        d = self.dir
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.crt", "-days", "2", "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def make_cert(self, name, eku, ca="ca", san=LOCALHOST_SAN):
        """eku: extendedKeyUsage (serverAuth, clientAuth or both); san: subjectAltName."""
        d = self.dir
        with open(f"{d}/{name}.ext", "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    f"extendedKeyUsage={eku}\nsubjectAltName={san}\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{d}/{name}.key",
                "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/{ca}.crt", "-CAkey", f"{d}/{ca}.key",
                "-CAcreateserial", "-out", f"{d}/{name}.crt", "-days", "2", "-extfile", f"{d}/{name}.ext")

    def crt(self, name):
        return f"{self.dir}/{name}.crt"

    def key(self, name):
        return f"{self.dir}/{name}.key"

    def pair(self, name):
        return (self.crt(name), self.key(name))
