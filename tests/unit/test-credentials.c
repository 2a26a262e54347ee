/* SPDX-License-Identifier: Apache-2.0 */
/* test-credentials.c - the eight certificate/key flags naming systemd credentials (credentials.c). */

/*
 * Each case makes a fresh temporary directory standing in for $CREDENTIALS_DIRECTORY (files in it are the
 * credentials), fills a Config's file fields by hand and checks what credentials_resolve() makes of them,
 * with stderr captured so that the error a missing credential gives can be read back.
 */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "credentials.h"
#include "log.h"

typedef struct Fixture {
        char dir[64];
        Config *c;
} Fixture;

static void touch(const Fixture *f, const char *name) {
        char path[256];
        FILE *fp;

        (void) snprintf(path, sizeof(path), "%s/%s", f->dir, name);
        fp = fopen(path, "w");
        assert_non_null(fp);
        (void) fputs("-----BEGIN CERTIFICATE-----\n", fp);
        assert_int_equal(fclose(fp), 0);
}

static char *path_in(const Fixture *f, const char *name) {
        char *p;

        assert_true(asprintf(&p, "%s/%s", f->dir, name) >= 0);
        return p;
}

/* Runs credentials_resolve() with stderr going to a temporary file; returns its result, *ret_err the text. */
static int resolve_capturing(Fixture *f, const char *dir, char **ret_err) {
        FILE *tmp = tmpfile();
        int saved, r;
        long n;
        char *s;

        assert_non_null(tmp);
        (void) fflush(stderr);
        saved = dup(STDERR_FILENO);
        assert_true(saved >= 0);
        assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
        r = credentials_resolve(f->c, dir);
        (void) fflush(stderr);
        assert_true(dup2(saved, STDERR_FILENO) >= 0);
        (void) close(saved);

        n = ftell(tmp);
        if (n < 0)
                n = lseek(fileno(tmp), 0, SEEK_END);
        assert_true(n >= 0);
        s = calloc(1, (size_t) n + 1);
        assert_non_null(s);
        assert_int_equal(pread(fileno(tmp), s, (size_t) n, 0), n);
        (void) fclose(tmp);
        *ret_err = s;
        return r;
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        (void) snprintf(f->dir, sizeof(f->dir), "/tmp/test-credentials-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        f->c = calloc(1, sizeof(Config));
        assert_non_null(f->c);
        log_set_prefix(false);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[128];

        config_free(f->c);
        (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

/* Without $CREDENTIALS_DIRECTORY the flags keep etcd2's meaning: bare names are relative paths. */
static void test_no_directory(void **state) {
        Fixture *f = *state;

        f->c->cert_file = strdup("cert.pem");
        f->c->key_file = strdup("key.pem");
        touch(f, "cert.pem");
        assert_int_equal(credentials_resolve(f->c, NULL), 0);
        assert_int_equal(credentials_resolve(f->c, ""), 0);
        assert_string_equal(f->c->cert_file, "cert.pem");
        assert_string_equal(f->c->key_file, "key.pem");
}

/* Names become paths in the directory; values with a '/' (absolute or relative) and empty ones stay. */
static void test_names_and_paths(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *cert = path_in(f, "cert.pem"), *key = path_in(f, "server-key"), *err = NULL;

        touch(f, "cert.pem");
        touch(f, "server-key");
        f->c->cert_file = strdup("cert.pem");
        f->c->key_file = strdup("server-key");
        f->c->trusted_ca_file = strdup("/etc/ssl/etcd2/ca.pem");
        f->c->ca_file = strdup("certs/ca.pem");
        f->c->peer_cert_file = strdup("");

        assert_int_equal(resolve_capturing(f, f->dir, &err), 2);
        assert_string_equal(f->c->cert_file, cert);
        assert_string_equal(f->c->key_file, key);
        assert_string_equal(f->c->trusted_ca_file, "/etc/ssl/etcd2/ca.pem");
        assert_string_equal(f->c->ca_file, "certs/ca.pem");
        assert_string_equal(f->c->peer_cert_file, "");
        assert_null(f->c->peer_key_file);
        /* info lines: which flag came from which credential */
        assert_non_null(strstr(err, "--cert-file: credential 'cert.pem'"));
        assert_non_null(strstr(err, "--key-file: credential 'server-key'"));
        assert_null(strstr(err, "trusted-ca-file"));
}

/* All eight flags, the --peer-* twins included. */
static void test_all_eight(void **state) {
        static const char *const names[CREDENTIALS_N_FLAGS] = {
                "c", "k", "tca", "ca", "pc", "pk", "ptca", "pca",
        };
        Fixture *f = *state;
        _cleanup_free_ char *err = NULL;
        char **fields[CREDENTIALS_N_FLAGS] = {
                &f->c->cert_file, &f->c->key_file, &f->c->trusted_ca_file, &f->c->ca_file,
                &f->c->peer_cert_file, &f->c->peer_key_file, &f->c->peer_trusted_ca_file, &f->c->peer_ca_file,
        };

        for (size_t i = 0; i < CREDENTIALS_N_FLAGS; i++) {
                touch(f, names[i]);
                *fields[i] = strdup(names[i]);
        }
        assert_int_equal(resolve_capturing(f, f->dir, &err), CREDENTIALS_N_FLAGS);
        for (size_t i = 0; i < CREDENTIALS_N_FLAGS; i++) {
                _cleanup_free_ char *want = path_in(f, names[i]);
                assert_string_equal(*fields[i], want);
        }
        assert_non_null(strstr(err, "--peer-ca-file: credential 'pca'"));
        assert_non_null(strstr(err, "--peer-trusted-ca-file: credential 'ptca'"));
}

/* A missing credential: -ENOENT, an error naming flag, variable and credential, and nothing changed. */
static void test_missing(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *err = NULL;

        touch(f, "cert.pem");
        f->c->cert_file = strdup("cert.pem");
        f->c->key_file = strdup("key.pem");

        assert_int_equal(resolve_capturing(f, f->dir, &err), -ENOENT);
        assert_string_equal(f->c->cert_file, "cert.pem");
        assert_string_equal(f->c->key_file, "key.pem");
        assert_non_null(strstr(err, "--key-file (ETCD_KEY_FILE) names the credential 'key.pem', but there is "
                                    "no such credential in $CREDENTIALS_DIRECTORY"));
        assert_non_null(strstr(err, "LoadCredential=key.pem:"));
        /* nothing was logged as resolved */
        assert_null(strstr(err, "--cert-file: credential"));
}

/* A directory of that name is not a credential either. */
static void test_not_a_file(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *sub = path_in(f, "certs"), *err = NULL;

        assert_int_equal(mkdir(sub, 0700), 0);
        f->c->peer_trusted_ca_file = strdup("certs");
        assert_int_equal(resolve_capturing(f, f->dir, &err), -ENOENT);
        assert_string_equal(f->c->peer_trusted_ca_file, "certs");
        assert_non_null(strstr(err, "--peer-trusted-ca-file (ETCD_PEER_TRUSTED_CA_FILE)"));
}

/* "." and ".." have no '/' but cannot be credential names. */
static void test_dot_names(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *err1 = NULL, *err2 = NULL;

        f->c->key_file = strdup(".");
        assert_int_equal(resolve_capturing(f, f->dir, &err1), -EINVAL);
        assert_string_equal(f->c->key_file, ".");
        assert_non_null(strstr(err1, "--key-file (ETCD_KEY_FILE) is '.'"));

        free(f->c->key_file);
        f->c->key_file = strdup("..");
        assert_int_equal(resolve_capturing(f, f->dir, &err2), -EINVAL);
        assert_string_equal(f->c->key_file, "..");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_no_directory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_names_and_paths, setup, teardown),
                cmocka_unit_test_setup_teardown(test_all_eight, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_not_a_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dot_names, setup, teardown),
        };

        return cmocka_run_group_tests_name("credentials", tests, NULL, NULL);
}
