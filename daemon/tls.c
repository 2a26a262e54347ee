/* SPDX-License-Identifier: Apache-2.0 */
/* tls.c - GnuTLS credentials and sessions (etcd2's transport.TLSInfo). */

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gnutls/x509.h>

#include "log.h"
#include "macro.h"
#include "tls.h"

static int load_trust(gnutls_certificate_credentials_t cred, const char *file) {
        int r = gnutls_certificate_set_x509_trust_file(cred, file, GNUTLS_X509_FMT_PEM);
        if (r <= 0) {
                log_error("Failed to load trusted CA certificates from '%s': %s", file,
                          r < 0 ? gnutls_strerror(r) : "no certificate found");
                return -EINVAL;
        }
        return 0;
}

static int load_key_pair(gnutls_certificate_credentials_t cred, const char *cert, const char *key) {
        int r = gnutls_certificate_set_x509_key_file(cred, cert, key, GNUTLS_X509_FMT_PEM);
        if (r < 0) {
                log_error("Failed to load the TLS certificate '%s' and key '%s': %s", cert, key, gnutls_strerror(r));
                return -EINVAL;
        }
        return 0;
}

int tls_system_roots(const char **ret_file, const char **ret_dirs) {
        const char *file = getenv("SSL_CERT_FILE"), *dirs = getenv("SSL_CERT_DIR");

        *ret_file = isempty(file) ? NULL : file;
        *ret_dirs = isempty(dirs) ? NULL : dirs;
        return *ret_file || *ret_dirs;
}

static int load_system_roots(gnutls_certificate_credentials_t cred) {
        const char *file, *dirs;
        int r;

        if (!tls_system_roots(&file, &dirs)) {
                r = gnutls_certificate_set_x509_system_trust(cred);
                if (r < 0)
                        log_warning("Failed to load the system's trusted CAs, ignoring: %s", gnutls_strerror(r));
                return 0;
        }
        if (file) {
                r = gnutls_certificate_set_x509_trust_file(cred, file, GNUTLS_X509_FMT_PEM);
                if (r < 0)
                        log_warning("Failed to load trusted CAs from $SSL_CERT_FILE '%s', ignoring: %s", file,
                                    gnutls_strerror(r));
        }
        for (const char *p = dirs; p && *p;) {
                size_t n = strcspn(p, ":");
                char *d = strndup(p, n);

                if (!d)
                        return log_oom();
                if (*d) {
                        r = gnutls_certificate_set_x509_trust_dir(cred, d, GNUTLS_X509_FMT_PEM);
                        if (r < 0)
                                log_warning("Failed to load trusted CAs from $SSL_CERT_DIR '%s', ignoring: %s", d,
                                            gnutls_strerror(r));
                }
                free(d);
                p += n + (p[n] == ':');
        }
        return 0;
}

int tls_client_credentials_new(const TlsInfo *info, gnutls_certificate_credentials_t *ret) {
        gnutls_certificate_credentials_t cred = NULL;
        int r;

        assert(info);
        assert(ret);

        if (!isempty(info->cert_file) != !isempty(info->key_file)) {
                log_error("KeyFile and CertFile must both be present[key: %s, cert: %s]",
                          strempty(info->key_file), strempty(info->cert_file));
                return -EINVAL;
        }
        r = gnutls_certificate_allocate_credentials(&cred);
        if (r < 0)
                return log_oom();
        if (!isempty(info->cert_file)) {
                r = load_key_pair(cred, info->cert_file, info->key_file);
                if (r < 0)
                        goto fail;
        }
        if (!isempty(info->trusted_ca_file)) {
                r = load_trust(cred, info->trusted_ca_file);
                if (r < 0)
                        goto fail;
        } else {
                r = load_system_roots(cred);
                if (r < 0)
                        goto fail;
        }
        *ret = cred;
        return 0;

fail:
        gnutls_certificate_free_credentials(cred);
        return r;
}

int tls_client_session_new(gnutls_certificate_credentials_t cred, const char *host, int fd, gnutls_session_t *ret) {
        gnutls_session_t s = NULL;
        unsigned char ip[16];
        int r;

        assert(cred);
        assert(host);
        assert(ret);

        r = gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
        if (r < 0)
                return -ENOMEM;
        r = gnutls_set_default_priority(s);
        if (r >= 0)
                r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred);
        /* Go sends no SNI for IP literals (RFC 6066 forbids them) */
        if (r >= 0 && inet_pton(AF_INET, host, ip) != 1 && inet_pton(AF_INET6, host, ip) != 1)
                r = gnutls_server_name_set(s, GNUTLS_NAME_DNS, host, strlen(host));
        if (r < 0) {
                gnutls_deinit(s);
                return -EIO;
        }
        /* the chain and the name (IP literals against IP SANs) during the handshake */
        gnutls_session_set_verify_cert(s, host, 0);
        gnutls_transport_set_int(s, fd);
        *ret = s;
        return 0;
}

ssize_t tls_recv(gnutls_session_t s, void *buf, size_t size, const char *what, int *ret_error) {
        ssize_t n = gnutls_record_recv(s, buf, size);

        if (n >= 0)
                return n;
        if (n == GNUTLS_E_AGAIN)
                errno = EAGAIN;
        else if (n == GNUTLS_E_INTERRUPTED)
                errno = EINTR;
        else if (n == GNUTLS_E_PREMATURE_TERMINATION)
                return 0;
        else {
                /* e.g. the server's alert after a TLS 1.3 handshake: it refused our certificate */
                log_debug("TLS read from %s failed: %s", what ?: "a peer", gnutls_strerror((int) n));
                if (ret_error)
                        *ret_error = (int) n;
                errno = ECONNRESET;
        }
        return -1;
}

int tls_check_server_purpose(gnutls_session_t s) {
        const gnutls_datum_t *certs;
        unsigned n = 0;
        gnutls_x509_crt_t crt;
        bool any = false, ok = false;
        int r;

        certs = gnutls_certificate_get_peers(s, &n);
        if (!certs || n == 0)
                return -EPERM;
        if (gnutls_x509_crt_init(&crt) < 0)
                return -ENOMEM;
        r = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER);
        for (unsigned i = 0; r >= 0; i++) {
                char oid[128];
                size_t size = sizeof(oid);

                r = gnutls_x509_crt_get_key_purpose_oid(crt, i, oid, &size, NULL);
                if (r < 0)
                        break;
                any = true;
                if (streq(oid, GNUTLS_KP_TLS_WWW_SERVER) || streq(oid, GNUTLS_KP_ANY))
                        ok = true;
        }
        gnutls_x509_crt_deinit(crt);
        return !any || ok ? 0 : -EPERM;
}

int tls_server_credentials_new(const TlsInfo *info, const char *extra_ca, gnutls_certificate_credentials_t *ret,
                               bool *ret_verify_client) {
        gnutls_certificate_credentials_t cred = NULL;
        const char *cas[2] = { extra_ca, info->trusted_ca_file };
        bool have_ca = false, verify;
        int r;

        assert(info);
        assert(ret);
        assert(!isempty(info->cert_file) && !isempty(info->key_file));

        r = gnutls_certificate_allocate_credentials(&cred);
        if (r < 0)
                return log_oom();
        r = load_key_pair(cred, info->cert_file, info->key_file);
        if (r < 0)
                goto fail;
        for (size_t i = 0; i < ELEMENTSOF(cas); i++) {
                if (isempty(cas[i]))
                        continue;
                r = load_trust(cred, cas[i]);
                if (r < 0)
                        goto fail;
                have_ca = true;
        }
        verify = info->client_cert_auth || !isempty(extra_ca);
        if (verify && !have_ca) {
                /* Go verifies against the system's roots when no CA is given */
                r = gnutls_certificate_set_x509_system_trust(cred);
                if (r < 0)
                        log_warning("Failed to load the system's trusted CAs, ignoring: %s", gnutls_strerror(r));
        }
        *ret = cred;
        if (ret_verify_client)
                *ret_verify_client = verify;
        return 0;

fail:
        gnutls_certificate_free_credentials(cred);
        return r;
}

/* the session keeps the pointer: static data, not a local */
static gnutls_typed_vdata_st tls_client_purpose[] = {
        { .type = GNUTLS_DT_KEY_PURPOSE_OID, .data = (unsigned char *) GNUTLS_KP_TLS_WWW_CLIENT },
};

void tls_session_require_client_cert(gnutls_session_t s) {
        /* a certificate is required, chains to a trusted CA, and is meant for TLS clients (extended key
         * usage) */
        gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
        gnutls_session_set_verify_cert2(s, tls_client_purpose, ELEMENTSOF(tls_client_purpose), 0);
}

bool tls_url_is_https(const char *url) {
        return url && strncasecmp(url, "https://", 8) == 0;
}
