/* SPDX-License-Identifier: Apache-2.0 */
/* test-auth.c - cmocka tests for the v2 auth model: patterns, merges, Basic credentials, bcrypt, counted reads. */

/*
 * Expected answers are what etcd 3.4 --enable-v2 gives (its v2 auth is etcd 2.3's etcdserver/auth);
 * the end-to-end comparison is tests/integration/test_auth.py.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <crypt.h>

#include "auth.h"
#include "macro.h"
#include "store.h"

static json_object *role(const char *json) {
        json_object *o = json_tokener_parse(json);

        assert_non_null(o);
        return o;
}

static void test_patterns(void **state) {
        _cleanup_(json_object_putp) json_object *r = role(
                "{\"role\":\"x\",\"permissions\":{\"kv\":{\"read\":[\"/a/*\",\"/exact\"],\"write\":[\"/a/b\"]}}}");
        _cleanup_(json_object_putp) json_object *root = auth_role_new_full(AUTH_ROOT);

        assert_true(auth_role_has_access(r, "/a/b", false, false));
        assert_true(auth_role_has_access(r, "/a/", false, false));
        assert_false(auth_role_has_access(r, "/a", false, false));     /* the prefix pattern ends after "/a/" */
        assert_true(auth_role_has_access(r, "/exact", false, false));
        assert_false(auth_role_has_access(r, "/exact", false, true));  /* recursive needs a prefix */
        assert_true(auth_role_has_access(r, "/a/c", false, true));
        assert_true(auth_role_has_access(r, "/a/b", true, false));
        assert_false(auth_role_has_access(r, "/a/c", true, false));
        assert_true(auth_role_has_access(root, "/anything", true, true));
}

static void test_basic(void **state) {
        char *u = NULL, *p = NULL;

        assert_true(auth_parse_basic("Basic cm9vdDpwdzpjb2xvbg==", &u, &p));  /* root:pw:colon */
        assert_string_equal(u, "root");
        assert_string_equal(p, "pw:colon");
        free(u);
        free(p);
        assert_false(auth_parse_basic("Basic !!!", &u, &p));
        assert_false(auth_parse_basic("Bearer x", &u, &p));
        assert_false(auth_parse_basic("Basic cm9vdA==", &u, &p));              /* no colon */
}

static void test_user_merge(void **state) {
        _cleanup_(json_object_putp) json_object *old = role("{\"user\":\"bob\",\"password\":\"h\",\"roles\":[\"x\"]}");
        _cleanup_(json_object_putp) json_object *in = role("{\"user\":\"bob\",\"grant\":[\"x\"]}");
        _cleanup_(json_object_putp) json_object *in2 = role("{\"user\":\"bob\",\"grant\":[\"y\"],\"revoke\":[\"x\"]}");
        json_object *out = NULL;
        char *msg = NULL;

        assert_int_equal(auth_user_merge(old, in, NULL, &out, &msg), 409);
        assert_string_equal(msg, "auth: Granting duplicate role x for user bob");
        free(msg);
        msg = NULL;
        assert_int_equal(auth_user_merge(old, in2, NULL, &out, &msg), 0);
        assert_string_equal(json_object_to_json_string_ext(out, JSON_C_TO_STRING_PLAIN),
                            "{\"user\":\"bob\",\"password\":\"h\",\"roles\":[\"y\"]}");
        json_object_put(out);
}

static void test_role_merge(void **state) {
        /* a role created without permissions keeps null lists; any grant or revoke makes them [] */
        _cleanup_(json_object_putp) json_object *old = role(
                "{\"role\":\"y\",\"permissions\":{\"kv\":{\"read\":null,\"write\":null}}}");
        _cleanup_(json_object_putp) json_object *in = role("{\"role\":\"y\",\"revoke\":{\"kv\":{\"read\":[\"/q\"]}}}");
        _cleanup_(json_object_putp) json_object *dup = role(
                "{\"role\":\"y\",\"grant\":{\"kv\":{\"read\":[\"/q\",\"/q\"]}}}");
        json_object *out = NULL;
        char *msg = NULL;

        assert_int_equal(auth_role_merge(old, in, &out, &msg), 0);
        assert_string_equal(json_object_to_json_string_ext(out, JSON_C_TO_STRING_PLAIN),
                            "{\"role\":\"y\",\"permissions\":{\"kv\":{\"read\":[],\"write\":[]}}}");
        assert_false(json_object_equal(old, out));
        json_object_put(out);
        assert_int_equal(auth_role_merge(old, dup, &out, &msg), 409);
        assert_string_equal(msg, "auth: Granting duplicate read permission /q");
        free(msg);
}

static void test_bcrypt(void **state) {
        char *h = NULL;

        assert_int_equal(auth_hash_password("secret", &h), 0);
        assert_true(strncmp(h, "$2b$10$", 7) == 0);
        assert_true(auth_check_password(h, "secret"));
        assert_false(auth_check_password(h, "Secret"));
        /* the second check of the same credentials is a cache hit; a wrong password never is */
        assert_true(auth_check_password_cached("u", h, "secret"));
        assert_true(auth_check_password_cached("u", h, "secret"));
        assert_false(auth_check_password_cached("u", h, "wrong"));
        assert_false(auth_check_password_cached("v", h, "wrong"));
        free(h);
        /* Go's golang.org/x/crypto/bcrypt writes $2a$ hashes (data of an etcd2 upgraded from Go) */
        {
                char setting[CRYPT_GENSALT_OUTPUT_SIZE];
                struct crypt_data cd = {};
                const char *a;

                assert_non_null(crypt_gensalt_rn("$2a$", 4, NULL, 0, setting, sizeof setting));
                a = crypt_r("pw", setting, &cd);
                assert_true(strncmp(a, "$2a$04$", 7) == 0);
                assert_true(auth_check_password(a, "pw"));
                assert_false(auth_check_password(a, "pW"));
        }
        assert_false(auth_check_password("", "pw"));
        assert_false(auth_check_password("plain", "plain"));
}

static uint64_t put(Store *st, const char *path, const char *value, uint64_t prev_index, EtcdError want) {
        StoreResult res = {};
        uint64_t index;

        assert_int_equal(store_apply(st, &(StoreRequest) { .method = STORE_METHOD_PUT, .path = path, .value = value,
                                                           .value_len = strlen(value), .prev_exist = prev_index ? 1 : -1,
                                                           .prev_index = prev_index },
                                     0, &res), 0);
        assert_int_equal(res.error, want);
        index = res.index;
        store_result_done(&res);
        return index;
}

/* Updates compare-and-swap on the modifiedIndex auth_modified_index() reads (auth-api.c). */
static void test_modified_index(void **state) {
        Store *st = NULL;
        uint64_t i1, i2;

        assert_int_equal(store_new(&st), 0);
        assert_int_equal(auth_modified_index(st, "users", "bob"), 0);
        i1 = put(st, AUTH_PREFIX "/users/bob", "{\"user\":\"bob\",\"password\":\"h\",\"roles\":[\"x\"]}", 0, ETCD_OK);
        assert_int_equal(auth_modified_index(st, "users", "bob"), i1);
        assert_int_equal(auth_modified_index(st, "users", ""), 0);        /* the directory */
        assert_int_equal(auth_modified_index(st, "roles", "bob"), 0);
        /* a concurrent update got in first: an update merged from i1 fails, one from i2 passes */
        i2 = put(st, AUTH_PREFIX "/users/bob", "{\"user\":\"bob\",\"password\":\"h\",\"roles\":[\"x\",\"y\"]}", i1,
                 ETCD_OK);
        assert_true(i2 > i1);
        assert_int_equal(auth_modified_index(st, "users", "bob"), i2);
        (void) put(st, AUTH_PREFIX "/users/bob", "{\"user\":\"bob\",\"password\":\"h\",\"roles\":[\"z\"]}", i1,
                   ETCD_ERROR_TEST_FAILED);
        (void) put(st, AUTH_PREFIX "/users/bob", "{\"user\":\"bob\",\"password\":\"h\",\"roles\":[\"x\",\"y\",\"z\"]}",
                   i2, ETCD_OK);
        store_free(st);
}

/* getsSuccess and getsFail of /v2/stats/store */
static void gets(Store *st, long *ret_ok, long *ret_fail) {
        _cleanup_free_ char *j = store_stats_json(st);
        json_object *o, *v;

        assert_non_null(j);
        o = json_tokener_parse(j);
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "getsSuccess", &v));
        *ret_ok = json_object_get_int64(v);
        assert_true(json_object_object_get_ex(o, "getsFail", &v));
        *ret_fail = json_object_get_int64(v);
        json_object_put(o);
}

/* The reads etcd2 makes with store Gets count as such (auth-api.c places them); the plain ones do not. */
static void test_counted_reads(void **state) {
        Store *st = NULL;
        json_object *o;
        long ok, fail;

        assert_int_equal(store_new(&st), 0);
        (void) put(st, AUTH_PREFIX "/users/bob", "{\"user\":\"bob\",\"password\":\"h\",\"roles\":null}", 0, ETCD_OK);
        (void) put(st, AUTH_PREFIX "/roles/rw", "{\"role\":\"rw\",\"permissions\":{\"kv\":{}}}", 0, ETCD_OK);
        gets(st, &ok, &fail);
        assert_int_equal(ok + fail, 0);

        o = auth_get_user(st, "bob");
        assert_non_null(o);
        json_object_put(o);
        o = auth_get_role(st, "rw");
        assert_non_null(o);
        json_object_put(o);
        assert_false(auth_enabled(st));
        gets(st, &ok, &fail);
        assert_int_equal(ok + fail, 0);

        o = auth_get_user_counted(st, "bob");
        json_object_put(o);
        o = auth_get_user_counted(st, "nobody");
        assert_null(o);
        o = auth_get_role_counted(st, "rw");
        json_object_put(o);
        o = auth_get_role_counted(st, "guest");
        assert_null(o);
        o = auth_get_role_counted(st, AUTH_ROOT);         /* built in: no read */
        assert_non_null(o);
        json_object_put(o);
        gets(st, &ok, &fail);
        assert_int_equal(ok, 2);
        assert_int_equal(fail, 2);

        auth_count_read(st, "users", NULL);              /* the directory /2/users */
        auth_count_read(st, "roles", "nope");
        assert_false(auth_enabled_counted(st));          /* /2/enabled is missing */
        gets(st, &ok, &fail);
        assert_int_equal(ok, 3);
        assert_int_equal(fail, 4);
        store_free(st);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_patterns),
                cmocka_unit_test(test_basic),
                cmocka_unit_test(test_user_merge),
                cmocka_unit_test(test_role_merge),
                cmocka_unit_test(test_bcrypt),
                cmocka_unit_test(test_modified_index),
                cmocka_unit_test(test_counted_reads),
        };

        return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
