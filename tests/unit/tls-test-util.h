/* SPDX-License-Identifier: Apache-2.0 */
/* tls-test-util.h - what the unit tests over TLS share: certificates made at test time with openssl in a
 * temporary directory (never committed keys), and a blocking GnuTLS client. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include <gnutls/gnutls.h>

/* Makes a directory $TMPDIR/<prefix>-XXXXXX (TMPDIR unset: /tmp) and in it, with sh, what `script` says
 * in terms of two functions, all keys ECDSA P-256, valid 2 days:
 *   ca NAME               a CA: NAME.crt, NAME.key
 *   cert NAME CA EKU      a certificate for IP:127.0.0.1 signed by CA, extendedKeyUsage EKU
 *                         (serverAuth, clientAuth or both, comma-separated)
 * e.g. "ca ca; cert server ca serverAuth". Exits 77 (skipped) without openssl. */
void tls_test_make_certs(const char *prefix, const char *script);
/* <the directory>/<name>.<ext>; the answer lasts for 8 calls. */
const char *tls_test_file(const char *name, const char *ext);
void tls_test_remove_certs(void);

typedef struct TlsClient {
        int fd;
        gnutls_session_t s;
        gnutls_certificate_credentials_t cred;
} TlsClient;

/* Connects to 127.0.0.1:port and handshakes, trusting ca.crt and presenting `cert` (NULL: none, else the
 * name of one of the certificates made); returns the handshake's result. Close it in either case. */
int tls_client_open(TlsClient *c, uint16_t port, const char *cert);
void tls_client_close(TlsClient *c);
void tls_client_send(TlsClient *c, const char *s);
/* Reads one HTTP answer with a Content-Length into buf; returns the body's length, or -1 if the
 * connection failed or closed first. */
ssize_t tls_client_answer(TlsClient *c, char *buf, size_t size);
