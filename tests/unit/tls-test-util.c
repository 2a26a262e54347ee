/* SPDX-License-Identifier: Apache-2.0 */
/* tls-test-util.c - test certificates and a GnuTLS client for the unit tests (see tls-test-util.h).
 * Failures are cmocka assertions: the calling test fails. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "macro.h"
#include "test-util.h"
#include "tls-test-util.h"

static char dir[256];

void tls_test_make_certs(const char *prefix, const char *script) {
        const char *tmp = getenv("TMPDIR");
        char cmd[4096];

        if (system("command -v openssl >/dev/null") != 0) {
                fprintf(stderr, "openssl not installed\n");
                exit(77);
        }
        snprintf(dir, sizeof dir, "%s/%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", prefix);
        assert_non_null(mkdtemp(dir));
        snprintf(cmd, sizeof cmd,
                 "exec >/dev/null 2>&1; set -e; cd %s; "
                 "ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $1.key -out $1.crt "
                 "  -days 2 -subj /CN=$1 -addext basicConstraints=critical,CA:TRUE "
                 "  -addext keyUsage=critical,keyCertSign,cRLSign; }; "
                 "cert() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $1.key -out $1.csr "
                 "  -subj /CN=$1; "
                 "  printf 'basicConstraints=CA:FALSE\\nkeyUsage=critical,digitalSignature\\nextendedKeyUsage=%%s\\n"
                 "subjectAltName=IP:127.0.0.1\\n' $3 > $1.ext; "
                 "  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -out $1.crt -days 2 "
                 "  -extfile $1.ext; }; "
                 "%s",
                 dir, script);
        assert_int_equal(system(cmd), 0);
}

const char *tls_test_file(const char *name, const char *ext) {
        static char buf[8][320];
        static unsigned i;
        char *p = buf[i++ % ELEMENTSOF(buf)];

        snprintf(p, sizeof buf[0], "%s/%s.%s", dir, name, ext);
        return p;
}

void tls_test_remove_certs(void) {
        char cmd[320];

        if (!dir[0])
                return;
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        (void) system(cmd);
        dir[0] = 0;
}

/* --- a GnuTLS client ------------------------------------------------------------------------------ */

int tls_client_open(TlsClient *c, uint16_t port, const char *cert) {
        int r;

        c->fd = test_connect(port);
        assert_int_equal(gnutls_certificate_allocate_credentials(&c->cred), 0);
        assert_true(gnutls_certificate_set_x509_trust_file(c->cred, tls_test_file("ca", "crt"),
                                                           GNUTLS_X509_FMT_PEM) > 0);
        if (cert)
                assert_int_equal(gnutls_certificate_set_x509_key_file(c->cred, tls_test_file(cert, "crt"),
                                                                      tls_test_file(cert, "key"),
                                                                      GNUTLS_X509_FMT_PEM), 0);
        assert_int_equal(gnutls_init(&c->s, GNUTLS_CLIENT), 0);
        assert_int_equal(gnutls_set_default_priority(c->s), 0);
        assert_int_equal(gnutls_credentials_set(c->s, GNUTLS_CRD_CERTIFICATE, c->cred), 0);
        gnutls_session_set_verify_cert(c->s, NULL, 0);
        gnutls_transport_set_int(c->s, c->fd);
        gnutls_handshake_set_timeout(c->s, 5000);
        do
                r = gnutls_handshake(c->s);
        while (r < 0 && !gnutls_error_is_fatal(r));
        return r;
}

void tls_client_close(TlsClient *c) {
        gnutls_deinit(c->s);
        gnutls_certificate_free_credentials(c->cred);
        (void) close(c->fd);
}

void tls_client_send(TlsClient *c, const char *s) {
        assert_int_equal(gnutls_record_send(c->s, s, strlen(s)), (ssize_t) strlen(s));
}

ssize_t tls_client_answer(TlsClient *c, char *buf, size_t size) {
        size_t len = 0;

        for (;;) {
                const char *e;
                ssize_t k;

                buf[len] = 0;
                e = strstr(buf, "\r\n\r\n");
                if (e) {
                        const char *cl = strstr(buf, "Content-Length: ");
                        size_t head = (size_t) (e + 4 - buf), n;

                        assert_non_null(cl);
                        n = strtoul(cl + 16, NULL, 10);
                        if (len >= head + n)
                                return (ssize_t) n;
                }
                if (len + 1 >= size)
                        return -1;
                k = gnutls_record_recv(c->s, buf + len, size - 1 - len);
                if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED)
                        continue;
                if (k <= 0)
                        return -1;
                len += (size_t) k;
        }
}
