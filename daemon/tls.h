/* SPDX-License-Identifier: Apache-2.0 */
/* tls.h - GnuTLS credentials and sessions shared by our servers and our outgoing connections:
 * etcd2's transport.TLSInfo, for clients (members, the proxy, discovery) and servers alike. */
#pragma once

#include <stdbool.h>

#include <gnutls/gnutls.h>

/* etcd2's transport.TLSInfo: PEM files, any of which may be NULL (or ""). */
typedef struct TlsInfo {
        const char *cert_file, *key_file, *trusted_ca_file;   /* any may be NULL */
        bool client_cert_auth;
} TlsInfo;

/* Credentials for our outgoing connections: present cert/key if given; trust trusted_ca_file, or the
 * system's roots if NULL (as Go). Errors are logged. */
int tls_client_credentials_new(const TlsInfo *info, gnutls_certificate_credentials_t *ret);

/* A non-blocking client session on fd (not taken): SNI and verification of the chain and of `host`
 * (a DNS name or an IP literal, as Go's crypto/tls checks it) through gnutls_session_set_verify_cert().
 * GnuTLS keeps the pointer `host`: it must outlive the session. */
int tls_client_session_new(gnutls_certificate_credentials_t cred, const char *host, int fd, gnutls_session_t *ret);

/* Credentials of a TLS server: cert/key (both required); client certificates are verified when
 * info->client_cert_auth or extra_ca (the deprecated --ca-file / --peer-ca-file) is set, against
 * trusted_ca_file and extra_ca, or the system's roots if neither is given (as Go). *ret_verify_client
 * tells whether sessions must require a client certificate. Errors are logged. */
int tls_server_credentials_new(const TlsInfo *info, const char *extra_ca, gnutls_certificate_credentials_t *ret,
                               bool *ret_verify_client);

/* Makes a server session require and verify a client certificate for TLS client authentication
 * (Go's RequireAndVerifyClientCert). */
void tls_session_require_client_cert(gnutls_session_t s);

/* Whether a URL's scheme is https (case-insensitive). */
bool tls_url_is_https(const char *url);
