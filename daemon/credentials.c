/* SPDX-License-Identifier: Apache-2.0 */
/* credentials.c - certificate and key flags naming systemd credentials ($CREDENTIALS_DIRECTORY). */

/*
 * Beyond etcd2: when etcd2.service loads its certificates and keys with LoadCredential=, systemd copies
 * them into a per-service directory readable only by the service user and names it in
 * $CREDENTIALS_DIRECTORY; the key files on disk can then stay root-only (0600 in a 0700 directory). An
 * administrator writes ETCD_CERT_FILE=cert.pem (the credential's name) instead of a path. A name is a
 * value without a '/': etcd2 itself never needs a bare relative file name for a certificate under systemd,
 * whose working directory is '/'. Values with a '/' are paths, as in etcd2.
 *
 * Resolution is all-or-nothing: the new paths are built first and only then swapped into the Config, so
 * a missing credential leaves the Config as config_load() made it.
 */

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "credentials.h"
#include "log.h"

typedef struct CredentialFlag {
        const char *flag;
        const char *env;
        size_t offset;  /* of the char * field in Config */
} CredentialFlag;

static const CredentialFlag credential_flags[CREDENTIALS_N_FLAGS] = {
        { "cert-file",            "ETCD_CERT_FILE",            offsetof(Config, cert_file) },
        { "key-file",             "ETCD_KEY_FILE",             offsetof(Config, key_file) },
        { "trusted-ca-file",      "ETCD_TRUSTED_CA_FILE",      offsetof(Config, trusted_ca_file) },
        { "ca-file",              "ETCD_CA_FILE",              offsetof(Config, ca_file) },
        { "peer-cert-file",       "ETCD_PEER_CERT_FILE",       offsetof(Config, peer_cert_file) },
        { "peer-key-file",        "ETCD_PEER_KEY_FILE",        offsetof(Config, peer_key_file) },
        { "peer-trusted-ca-file", "ETCD_PEER_TRUSTED_CA_FILE", offsetof(Config, peer_trusted_ca_file) },
        { "peer-ca-file",         "ETCD_PEER_CA_FILE",         offsetof(Config, peer_ca_file) },
};

static char **field(Config *c, const CredentialFlag *f) {
        return (char **) ((char *) c + f->offset);
}

int credentials_resolve(Config *c, const char *credentials_dir) {
        char *paths[CREDENTIALS_N_FLAGS] = {};
        int n = 0, r = 0;

        assert(c);

        if (isempty(credentials_dir))
                return 0;

        for (size_t i = 0; i < CREDENTIALS_N_FLAGS; i++) {
                const CredentialFlag *f = &credential_flags[i];
                const char *name = *field(c, f);
                struct stat st;

                if (isempty(name) || strchr(name, '/'))
                        continue;
                if (streq(name, ".") || streq(name, "..")) {
                        r = log_error_errno(-EINVAL,
                                            "--%s (%s) is '%s': not a credential name and not a path",
                                            f->flag, f->env, name);
                        goto fail;
                }
                if (asprintf(&paths[i], "%s/%s", credentials_dir, name) < 0) {
                        paths[i] = NULL;
                        r = log_oom();
                        goto fail;
                }
                if (stat(paths[i], &st) < 0 || !S_ISREG(st.st_mode)) {
                        r = log_error_errno(-ENOENT,
                                            "--%s (%s) names the credential '%s', but there is no such "
                                            "credential in $CREDENTIALS_DIRECTORY (%s): add "
                                            "LoadCredential=%s:/path/to/file to etcd2.service, or give a path",
                                            f->flag, f->env, name, credentials_dir, name);
                        goto fail;
                }
        }

        for (size_t i = 0; i < CREDENTIALS_N_FLAGS; i++) {
                const CredentialFlag *f = &credential_flags[i];
                char **p = field(c, f);

                if (!paths[i])
                        continue;
                log_info("--%s: credential '%s' (%s)", f->flag, *p, paths[i]);
                free(*p);
                *p = TAKE_PTR(paths[i]);
                n++;
        }
        return n;

fail:
        for (size_t i = 0; i < CREDENTIALS_N_FLAGS; i++)
                free(paths[i]);
        return r;
}
