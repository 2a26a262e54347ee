/* SPDX-License-Identifier: Apache-2.0 */
/* tls.h - GnuTLS credentials and sessions shared by our servers and our outgoing connections:
 * etcd2's transport.TLSInfo, for clients (members, the proxy, discovery) and servers alike. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include <gnutls/gnutls.h>

/* etcd2's transport.TLSInfo: PEM files, any of which may be NULL (or ""). */
typedef struct TlsInfo {
        const char *cert_file, *key_file, *trusted_ca_file;   /* any may be NULL */
        bool client_cert_auth;
} TlsInfo;

/* The system's roots as Go's crypto/x509 finds them on Linux: $SSL_CERT_FILE instead of the distribution's
 * bundle, $SSL_CERT_DIR (colon-separated) instead of its directory. Returns > 0 if either is set (each
 * *ret NULL if not), 0 if the distribution's trust store applies. */
int tls_system_roots(const char **ret_file, const char **ret_dirs);

/* Credentials for our outgoing connections: present cert/key if given; trust trusted_ca_file, or the
 * system's roots (tls_system_roots()) if NULL, as Go. Errors are logged. */
int tls_client_credentials_new(const TlsInfo *info, gnutls_certificate_credentials_t *ret);

/* A non-blocking client session on fd (not taken): SNI and verification of the chain and of `host`
 * (a DNS name or an IP literal, as Go's crypto/tls checks it) through gnutls_session_set_verify_cert().
 * GnuTLS keeps the pointer `host`: it must outlive the session. */
int tls_client_session_new(gnutls_certificate_credentials_t cred, const char *host, int fd, gnutls_session_t *ret);

/* gnutls_record_recv() as recv(): bytes, 0 at the end (a TCP end without close_notify counts, as Go and
 * libcurl take it), or -1 with errno EAGAIN, EINTR or ECONNRESET (then *ret_error, if given, holds the
 * GnuTLS error, which is logged at debug level with `what`). */
ssize_t tls_recv(gnutls_session_t s, void *buf, size_t size, const char *what, int *ret_error);

/* After a client handshake: whether the server's certificate may serve TLS servers (Go's default
 * x509.ExtKeyUsageServerAuth check: no extended key usage at all, or one listing serverAuth or any).
 * 0, or -EPERM. GnuTLS's verification in tls_client_session_new() checks the chain and the name only. */
int tls_check_server_purpose(gnutls_session_t s);

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
