/* SPDX-License-Identifier: Apache-2.0 */
/* test-store.c - cmocka tests for the v2 store: operations, errors, JSON, TTL, watchers, persistence. */

/*
 * Expected JSON texts were checked against etcd 3.4 --enable-v2 (same v2 store semantics as 2.3.8):
 * field order, omitted fields, causes and indexes.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "macro.h"
#include "store.h"

/* 2023-11-14T22:13:20Z */
#define NOW ((uint64_t) 1700000000ULL * USEC_PER_SEC)

typedef struct Fixture {
        Store *s;
        StoreResult r;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        assert_non_null(f);
        assert_int_equal(store_new(&f->s), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        store_result_done(&f->r);
        store_free(f->s);
        free(f);
        return 0;
}

/* Runs a request; returns the EtcdError (0 on success). The result stays in f->r. */
static int apply(Fixture *f, StoreRequest req) {
        store_result_done(&f->r);
        assert_int_equal(store_apply(f->s, &req, NOW, &f->r), 0);
        if (f->r.error == 0 && req.method != STORE_METHOD_SYNC)
                assert_non_null(f->r.event);
        return f->r.error;
}

static int put(Fixture *f, const char *path, const char *value) {
        return apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = path, .value = value,
                                         .value_len = value ? strlen(value) : 0, .prev_exist = -1 });
}

static int put_ttl(Fixture *f, const char *path, const char *value, uint64_t exp) {
        return apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = path, .value = value,
                                         .value_len = value ? strlen(value) : 0, .prev_exist = -1,
                                         .expiration_usec = exp });
}

static int mkdir_(Fixture *f, const char *path) {
        return apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = path, .dir = true, .prev_exist = -1 });
}

static int del(Fixture *f, const char *path, bool dir, bool recursive) {
        return apply(f, (StoreRequest) { .method = STORE_METHOD_DELETE, .path = path, .dir = dir,
                                         .recursive = recursive, .prev_exist = -1 });
}

static int get(Fixture *f, const char *path, bool recursive, bool sorted) {
        store_result_done(&f->r);
        assert_int_equal(store_get(f->s, path, recursive, sorted, NOW, &f->r), 0);
        return f->r.error;
}

/* The event's JSON, rendered on demand; the pin is dropped with the event. */
static const char *ej(StoreEvent *e) {
        size_t len;
        const char *j;

        assert_non_null(e);
        j = store_event_json(e, &len);
        assert_non_null(j);
        assert_int_equal(len, strlen(j));
        return j;
}

static const char *json(Fixture *f) {
        assert_non_null(f->r.event);
        return ej(f->r.event);
}

static void assert_error(Fixture *f, int code, const char *cause) {
        assert_int_equal(f->r.error, code);
        assert_null(f->r.event);
        if (cause)
                assert_string_equal(f->r.cause, cause);
        else
                assert_true(isempty(f->r.cause));
        assert_int_equal(f->r.index, store_index(f->s));
}

/* ---------------------------------------------------------------------------------------------- */

static void test_set_get(void **state) {
        Fixture *f = *state;

        assert_int_equal(store_index(f->s), 0);
        assert_int_equal(put(f, "/1/foo", "bar"), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/foo\",\"value\":\"bar\",\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_int_equal(f->r.index, 1);
        assert_int_equal(f->r.event->index, 1);
        assert_int_equal(f->r.event->action, STORE_ACTION_SET);
        assert_string_equal(f->r.event->key, "/1/foo");

        assert_int_equal(get(f, "/1/foo", false, false), 0);
        assert_string_equal(json(f), "{\"action\":\"get\",\"node\":{\"key\":\"/foo\",\"value\":\"bar\",\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_int_equal(f->r.index, 1);

        /* replace: prevNode, createdIndex is new (etcd's Set replaces the node) */
        assert_int_equal(put(f, "/1/foo", "baz"), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/foo\",\"value\":\"baz\",\"modifiedIndex\":2,\"createdIndex\":2},"
                            "\"prevNode\":{\"key\":\"/foo\",\"value\":\"bar\",\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_int_equal(store_index(f->s), 2);
}

static void test_empty_value_and_nul(void **state) {
        Fixture *f = *state;
        const StoreNode *n;
        size_t len;

        assert_int_equal(put(f, "/1/e", NULL), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/e\",\"value\":\"\",\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/n", .value = "a\0b",
                                                   .value_len = 3, .prev_exist = -1 }), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/n\",\"value\":\"a\\u0000b\",\"modifiedIndex\":2,\"createdIndex\":2}}\n");
        n = store_lookup(f->s, "/1/n");
        assert_non_null(n);
        assert_false(store_node_is_dir(n));
        assert_memory_equal(store_node_value(n, &len), "a\0b", 3);
        assert_int_equal(len, 3);
        assert_string_equal(store_node_key(n), "/1/n");
}

static void test_json_escaping(void **state) {
        Fixture *f = *state;

        assert_int_equal(put(f, "/1/k<&>", "<&>\"\\\n\r\t\x01\x7f" "\xc3\xa9" "\xff" "\xe2\x80\xa8" "\xed\xa0\x80" "\xf0\x9f\x98\x80"), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/k\\u003c\\u0026\\u003e\","
                            "\"value\":\"\\u003c\\u0026\\u003e\\\"\\\\\\n\\r\\t\\u0001\x7f" "\xc3\xa9" "\\ufffd\\u2028\\ufffd\\ufffd\\ufffd" "\xf0\x9f\x98\x80" "\","
                            "\"modifiedIndex\":1,\"createdIndex\":1}}\n");
}

static void test_get_errors(void **state) {
        Fixture *f = *state;

        assert_int_equal(get(f, "/1/nope", false, false), ETCD_ERROR_KEY_NOT_FOUND);
        assert_error(f, ETCD_ERROR_KEY_NOT_FOUND, "/nope");
        /* the cause is the path up to the first missing component */
        assert_int_equal(get(f, "/1/a/b/c", false, false), ETCD_ERROR_KEY_NOT_FOUND);
        assert_error(f, ETCD_ERROR_KEY_NOT_FOUND, "/a");
        assert_int_equal(put(f, "/1/d/e", "1"), 0);
        assert_int_equal(get(f, "/1/d/e/f", false, false), ETCD_ERROR_NOT_DIR);
        assert_error(f, ETCD_ERROR_NOT_DIR, "/d/e");
        assert_int_equal(f->r.index, 1);
        /* writing below a file */
        assert_int_equal(put(f, "/1/d/e/f", "1"), ETCD_ERROR_NOT_DIR);
        assert_error(f, ETCD_ERROR_NOT_DIR, "/d/e");
        assert_int_equal(store_index(f->s), 1);
}

static void test_get_dir(void **state) {
        Fixture *f = *state;

        assert_int_equal(put(f, "/1/d/b", "2"), 0);
        assert_int_equal(put(f, "/1/d/a", "1"), 0);
        assert_int_equal(put(f, "/1/d/_hidden", "h"), 0);
        assert_int_equal(put(f, "/1/d/c/x", "3"), 0);

        assert_int_equal(get(f, "/1/d", false, true), 0);
        assert_string_equal(json(f), "{\"action\":\"get\",\"node\":{\"key\":\"/d\",\"dir\":true,\"nodes\":["
                            "{\"key\":\"/d/a\",\"value\":\"1\",\"modifiedIndex\":2,\"createdIndex\":2},"
                            "{\"key\":\"/d/b\",\"value\":\"2\",\"modifiedIndex\":1,\"createdIndex\":1},"
                            "{\"key\":\"/d/c\",\"dir\":true,\"modifiedIndex\":4,\"createdIndex\":4}],"
                            "\"modifiedIndex\":1,\"createdIndex\":1}}\n");

        assert_int_equal(get(f, "/1/d", true, true), 0);
        assert_string_equal(json(f), "{\"action\":\"get\",\"node\":{\"key\":\"/d\",\"dir\":true,\"nodes\":["
                            "{\"key\":\"/d/a\",\"value\":\"1\",\"modifiedIndex\":2,\"createdIndex\":2},"
                            "{\"key\":\"/d/b\",\"value\":\"2\",\"modifiedIndex\":1,\"createdIndex\":1},"
                            "{\"key\":\"/d/c\",\"dir\":true,\"nodes\":[{\"key\":\"/d/c/x\",\"value\":\"3\",\"modifiedIndex\":4,\"createdIndex\":4}],"
                            "\"modifiedIndex\":4,\"createdIndex\":4}],"
                            "\"modifiedIndex\":1,\"createdIndex\":1}}\n");

        /* the user root has no key and no indexes */
        assert_int_equal(get(f, "/1", false, true), 0);
        assert_string_equal(json(f), "{\"action\":\"get\",\"node\":{\"dir\":true,\"nodes\":["
                            "{\"key\":\"/d\",\"dir\":true,\"modifiedIndex\":1,\"createdIndex\":1}]}}\n");

        /* hidden nodes can be read directly */
        assert_int_equal(get(f, "/1/d/_hidden", false, false), 0);

        /* empty dir: no "nodes" */
        assert_int_equal(mkdir_(f, "/1/empty"), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/empty\",\"dir\":true,\"modifiedIndex\":5,\"createdIndex\":5}}\n");
        assert_int_equal(get(f, "/1/empty", true, false), 0);
        assert_string_equal(json(f), "{\"action\":\"get\",\"node\":{\"key\":\"/empty\",\"dir\":true,\"modifiedIndex\":5,\"createdIndex\":5}}\n");

        /* internal keys are nodes of the same tree and keep their prefix */
        assert_int_equal(put(f, "/0/version", "2.3.0"), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/0/version\",\"value\":\"2.3.0\",\"modifiedIndex\":6,\"createdIndex\":6}}\n");
        assert_int_equal(get(f, "/1", true, true), 0);
        assert_null(strstr(json(f), "version"));
}

static void test_create(void **state) {
        Fixture *f = *state;

        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "v",
                                                   .value_len = 1, .prev_exist = 0 }), 0);
        assert_string_equal(json(f), "{\"action\":\"create\",\"node\":{\"key\":\"/c\",\"value\":\"v\",\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "w",
                                                   .value_len = 1, .prev_exist = 0 }), ETCD_ERROR_NODE_EXIST);
        assert_error(f, ETCD_ERROR_NODE_EXIST, "/c");
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/c/x", .value = "w",
                                                   .value_len = 1, .prev_exist = 0 }), ETCD_ERROR_NOT_DIR);
        assert_error(f, ETCD_ERROR_NOT_DIR, "/c");
        /* create a dir; intermediate dirs get the same index */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/p/q", .dir = true,
                                                   .prev_exist = 0 }), 0);
        assert_string_equal(json(f), "{\"action\":\"create\",\"node\":{\"key\":\"/p/q\",\"dir\":true,\"modifiedIndex\":2,\"createdIndex\":2}}\n");
        assert_int_equal(get(f, "/1/p", false, false), 0);
        assert_string_equal(json(f), "{\"action\":\"get\",\"node\":{\"key\":\"/p\",\"dir\":true,\"nodes\":["
                            "{\"key\":\"/p/q\",\"dir\":true,\"modifiedIndex\":2,\"createdIndex\":2}],\"modifiedIndex\":2,\"createdIndex\":2}}\n");
}

static void test_post_in_order(void **state) {
        Fixture *f = *state;

        assert_int_equal(put(f, "/1/x", "1"), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_POST, .path = "/1/q", .value = "a",
                                                   .value_len = 1, .prev_exist = -1 }), 0);
        assert_string_equal(json(f), "{\"action\":\"create\",\"node\":{\"key\":\"/q/00000000000000000002\",\"value\":\"a\",\"modifiedIndex\":2,\"createdIndex\":2}}\n");
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_POST, .path = "/1/q", .dir = true,
                                                   .prev_exist = -1 }), 0);
        assert_string_equal(json(f), "{\"action\":\"create\",\"node\":{\"key\":\"/q/00000000000000000003\",\"dir\":true,\"modifiedIndex\":3,\"createdIndex\":3}}\n");
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_POST, .path = "/1/x", .value = "a",
                                                   .value_len = 1, .prev_exist = -1 }), ETCD_ERROR_NOT_DIR);
        assert_error(f, ETCD_ERROR_NOT_DIR, "/x");
}

static void test_dir_rules(void **state) {
        Fixture *f = *state;

        assert_int_equal(mkdir_(f, "/1/d"), 0);
        /* set over a dir: 102 */
        assert_int_equal(put(f, "/1/d", "v"), ETCD_ERROR_NOT_FILE);
        assert_error(f, ETCD_ERROR_NOT_FILE, "/d");
        assert_int_equal(mkdir_(f, "/1/d"), ETCD_ERROR_NOT_FILE);
        /* root is read-only */
        assert_int_equal(put(f, "/1", "v"), ETCD_ERROR_ROOT_RONLY);
        assert_error(f, ETCD_ERROR_ROOT_RONLY, "/");
        assert_int_equal(del(f, "/1", true, true), ETCD_ERROR_ROOT_RONLY);
        assert_error(f, ETCD_ERROR_ROOT_RONLY, "/");
        assert_int_equal(del(f, "/", true, true), ETCD_ERROR_ROOT_RONLY);
        /* update of a dir's value */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/d", .value = "v",
                                                   .value_len = 1, .prev_exist = 1 }), ETCD_ERROR_NOT_FILE);
        assert_error(f, ETCD_ERROR_NOT_FILE, "/d");
        /* delete a dir without dir=true */
        assert_int_equal(del(f, "/1/d", false, false), ETCD_ERROR_NOT_FILE);
        assert_error(f, ETCD_ERROR_NOT_FILE, "/d");
        assert_int_equal(put(f, "/1/d/x", "1"), 0);
        assert_int_equal(del(f, "/1/d", true, false), ETCD_ERROR_DIR_NOT_EMPTY);
        assert_error(f, ETCD_ERROR_DIR_NOT_EMPTY, "/d");
        assert_int_equal(store_index(f->s), 2);
        /* recursive implies dir */
        assert_int_equal(del(f, "/1/d", false, true), 0);
        assert_string_equal(json(f), "{\"action\":\"delete\",\"node\":{\"key\":\"/d\",\"dir\":true,\"modifiedIndex\":3,\"createdIndex\":1},"
                            "\"prevNode\":{\"key\":\"/d\",\"dir\":true,\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_null(store_lookup(f->s, "/1/d/x"));
        assert_null(store_lookup(f->s, "/1/d"));
        /* CAD on the root: a dir, so 102 (no cause: "/1" stripped to nothing) */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_DELETE, .path = "/1", .prev_value = "x",
                                                   .prev_exist = -1 }), ETCD_ERROR_NOT_FILE);
        assert_error(f, ETCD_ERROR_NOT_FILE, NULL);
}

static void test_delete_file(void **state) {
        Fixture *f = *state;

        assert_int_equal(put(f, "/1/f", "v"), 0);
        assert_int_equal(del(f, "/1/f", false, false), 0);
        assert_string_equal(json(f), "{\"action\":\"delete\",\"node\":{\"key\":\"/f\",\"modifiedIndex\":2,\"createdIndex\":1},"
                            "\"prevNode\":{\"key\":\"/f\",\"value\":\"v\",\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_int_equal(del(f, "/1/f", false, false), ETCD_ERROR_KEY_NOT_FOUND);
        assert_error(f, ETCD_ERROR_KEY_NOT_FOUND, "/f");
        /* dir=true on a file is fine */
        assert_int_equal(put(f, "/1/f", "v"), 0);
        assert_int_equal(del(f, "/1/f", true, false), 0);
}

static void test_update(void **state) {
        Fixture *f = *state;

        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/u", .value = "v",
                                                   .value_len = 1, .prev_exist = 1 }), ETCD_ERROR_KEY_NOT_FOUND);
        assert_error(f, ETCD_ERROR_KEY_NOT_FOUND, "/u");
        assert_int_equal(put_ttl(f, "/1/u", "a", NOW + 10 * USEC_PER_SEC), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/u", .value = "b",
                                                   .value_len = 1, .prev_exist = 1 }), 0);
        /* no ttl in an update makes the key permanent */
        assert_string_equal(json(f), "{\"action\":\"update\",\"node\":{\"key\":\"/u\",\"value\":\"b\",\"modifiedIndex\":2,\"createdIndex\":1},"
                            "\"prevNode\":{\"key\":\"/u\",\"value\":\"a\",\"expiration\":\"2023-11-14T22:13:30Z\",\"ttl\":10,\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_int_equal(store_next_expiration(f->s), 0);

        /* ttl on a dir */
        assert_int_equal(mkdir_(f, "/1/d"), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/d", .prev_exist = 1,
                                                   .expiration_usec = NOW + 100 * USEC_PER_SEC }), 0);
        assert_string_equal(json(f), "{\"action\":\"update\",\"node\":{\"key\":\"/d\",\"dir\":true,\"expiration\":\"2023-11-14T22:15:00Z\",\"ttl\":100,\"modifiedIndex\":4,\"createdIndex\":3},"
                            "\"prevNode\":{\"key\":\"/d\",\"dir\":true,\"modifiedIndex\":3,\"createdIndex\":3}}\n");
        assert_int_equal(store_next_expiration(f->s), NOW + 100 * USEC_PER_SEC);
        assert_true(store_node_is_dir(store_lookup(f->s, "/1/d")));
        /* ... but the dir itself keeps its modifiedIndex (node.Write refuses dirs) */
        assert_int_equal(get(f, "/1/d", false, false), 0);
        assert_string_equal(json(f), "{\"action\":\"get\",\"node\":{\"key\":\"/d\",\"dir\":true,\"expiration\":\"2023-11-14T22:15:00Z\",\"ttl\":100,\"modifiedIndex\":3,\"createdIndex\":3}}\n");
}

static void test_cas(void **state) {
        Fixture *f = *state;
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "new", .value_len = 3, .prev_exist = -1 };

        req.prev_value = "old";
        assert_int_equal(apply(f, req), ETCD_ERROR_KEY_NOT_FOUND);
        assert_error(f, ETCD_ERROR_KEY_NOT_FOUND, "/c");

        assert_int_equal(put(f, "/1/x", "1"), 0);
        assert_int_equal(put(f, "/1/c", "cur"), 0);
        assert_int_equal(apply(f, req), ETCD_ERROR_TEST_FAILED);
        assert_error(f, ETCD_ERROR_TEST_FAILED, "[old != cur]");
        req.prev_value = NULL;
        req.prev_index = 1;
        assert_int_equal(apply(f, req), ETCD_ERROR_TEST_FAILED);
        assert_error(f, ETCD_ERROR_TEST_FAILED, "[1 != 2]");
        req.prev_value = "old";
        assert_int_equal(apply(f, req), ETCD_ERROR_TEST_FAILED);
        assert_error(f, ETCD_ERROR_TEST_FAILED, "[old != cur] [1 != 2]");
        /* both must hold */
        req.prev_value = "cur";
        assert_int_equal(apply(f, req), ETCD_ERROR_TEST_FAILED);
        assert_error(f, ETCD_ERROR_TEST_FAILED, "[1 != 2]");
        req.prev_index = 2;
        assert_int_equal(apply(f, req), 0);
        assert_string_equal(json(f), "{\"action\":\"compareAndSwap\",\"node\":{\"key\":\"/c\",\"value\":\"new\",\"modifiedIndex\":3,\"createdIndex\":2},"
                            "\"prevNode\":{\"key\":\"/c\",\"value\":\"cur\",\"modifiedIndex\":2,\"createdIndex\":2}}\n");
        /* prevExist=true with a prevValue is a CAS as well */
        req = (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "z", .value_len = 1,
                               .prev_exist = 1, .prev_value = "new" };
        assert_int_equal(apply(f, req), 0);
        assert_int_equal(f->r.event->action, STORE_ACTION_COMPARE_AND_SWAP);
        /* on a dir */
        assert_int_equal(mkdir_(f, "/1/d"), 0);
        req.path = "/1/d";
        assert_int_equal(apply(f, req), ETCD_ERROR_NOT_FILE);
        assert_error(f, ETCD_ERROR_NOT_FILE, "/d");
        req.path = "/1";
        assert_int_equal(apply(f, req), ETCD_ERROR_ROOT_RONLY);
        assert_error(f, ETCD_ERROR_ROOT_RONLY, "/");
}

static void test_cad(void **state) {
        Fixture *f = *state;
        StoreRequest req = { .method = STORE_METHOD_DELETE, .path = "/1/c", .prev_exist = -1, .prev_value = "a" };

        assert_int_equal(apply(f, req), ETCD_ERROR_KEY_NOT_FOUND);
        assert_error(f, ETCD_ERROR_KEY_NOT_FOUND, "/c");
        assert_int_equal(put(f, "/1/c", "b"), 0);
        assert_int_equal(apply(f, req), ETCD_ERROR_TEST_FAILED);
        assert_error(f, ETCD_ERROR_TEST_FAILED, "[a != b]");
        req.prev_value = NULL;
        req.prev_index = 7;
        assert_int_equal(apply(f, req), ETCD_ERROR_TEST_FAILED);
        assert_error(f, ETCD_ERROR_TEST_FAILED, "[7 != 1]");
        req.prev_value = "b";
        req.prev_index = 1;
        assert_int_equal(apply(f, req), 0);
        assert_string_equal(json(f), "{\"action\":\"compareAndDelete\",\"node\":{\"key\":\"/c\",\"modifiedIndex\":2,\"createdIndex\":1},"
                            "\"prevNode\":{\"key\":\"/c\",\"value\":\"b\",\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_null(store_lookup(f->s, "/1/c"));
        assert_int_equal(mkdir_(f, "/1/d"), 0);
        req = (StoreRequest) { .method = STORE_METHOD_DELETE, .path = "/1/d", .prev_exist = -1, .prev_index = 3 };
        assert_int_equal(apply(f, req), ETCD_ERROR_NOT_FILE);
        assert_error(f, ETCD_ERROR_NOT_FILE, "/d");
}

static void test_ttl_render(void **state) {
        Fixture *f = *state;

        /* 1.5 s left: ttl rounds up to 2; the fraction is printed without trailing zeros */
        assert_int_equal(put_ttl(f, "/1/t", "v", NOW + 1500000), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/t\",\"value\":\"v\",\"expiration\":\"2023-11-14T22:13:21.5Z\",\"ttl\":2,\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_int_equal(put_ttl(f, "/1/t2", "v", NOW + 1000001), 0);
        assert_non_null(strstr(json(f), "\"expiration\":\"2023-11-14T22:13:21.000001Z\",\"ttl\":2,"));
        /* exactly 5 s: 5 */
        assert_int_equal(put_ttl(f, "/1/t3", "v", NOW + 5 * USEC_PER_SEC), 0);
        assert_non_null(strstr(json(f), "\"ttl\":5,"));
        /* a ttl of 0 is omitted, negative ones are shown */
        store_result_done(&f->r);
        assert_int_equal(store_get(f->s, "/1/t3", false, false, NOW + 5 * USEC_PER_SEC, &f->r), 0);
        assert_string_equal(json(f), "{\"action\":\"get\",\"node\":{\"key\":\"/t3\",\"value\":\"v\",\"expiration\":\"2023-11-14T22:13:25Z\",\"modifiedIndex\":3,\"createdIndex\":3}}\n");
        store_result_done(&f->r);
        assert_int_equal(store_get(f->s, "/1/t3", false, false, NOW + 7 * USEC_PER_SEC + 1, &f->r), 0);
        assert_non_null(strstr(json(f), "\"ttl\":-2,"));
        /* expiry before 2000 means permanent */
        assert_int_equal(put_ttl(f, "/1/old", "v", 1000), 0);
        assert_null(strstr(json(f), "expiration"));
}

static void test_ttl_sync(void **state) {
        Fixture *f = *state;

        assert_int_equal(store_next_expiration(f->s), 0);
        assert_int_equal(put_ttl(f, "/1/b", "v", NOW + 20 * USEC_PER_SEC), 0);
        assert_int_equal(put_ttl(f, "/1/a", "v", NOW + 10 * USEC_PER_SEC), 0);
        assert_int_equal(mkdir_(f, "/1/d"), 0);
        assert_int_equal(put_ttl(f, "/1/d/x", "v", NOW + 30 * USEC_PER_SEC), 0);
        assert_int_equal(put(f, "/1/keep", "v"), 0);
        assert_int_equal(store_next_expiration(f->s), NOW + 10 * USEC_PER_SEC);

        /* nothing due */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .time_usec = NOW + 9 * USEC_PER_SEC }), 0);
        assert_int_equal(store_index(f->s), 5);
        /* a and b are due, in expiration order */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .time_usec = NOW + 20 * USEC_PER_SEC }), 0);
        assert_null(f->r.event);
        assert_int_equal(store_index(f->s), 7);
        assert_int_equal(f->r.index, 7);
        assert_null(store_lookup(f->s, "/1/a"));
        assert_null(store_lookup(f->s, "/1/b"));
        assert_non_null(store_lookup(f->s, "/1/keep"));
        assert_int_equal(store_next_expiration(f->s), NOW + 30 * USEC_PER_SEC);

        /* the expire events are in the history: watch from index 6 */
        {
                StoreWatcher *w = (StoreWatcher *) 1;
                StoreEvent *e = NULL;

                assert_int_equal(store_watch(f->s, "/1", true, false, 6, (StoreWatchCallback) 1, NULL, &w, &e, NULL), 0);
                assert_null(w);
                assert_non_null(e);
                assert_int_equal(e->action, STORE_ACTION_EXPIRE);
                assert_string_equal(ej(e), "{\"action\":\"expire\",\"node\":{\"key\":\"/a\",\"modifiedIndex\":6,\"createdIndex\":2},"
                                    "\"prevNode\":{\"key\":\"/a\",\"value\":\"v\",\"expiration\":\"2023-11-14T22:13:30Z\",\"ttl\":10,\"modifiedIndex\":2,\"createdIndex\":2}}\n");
                store_event_unref(e);
        }
        {
                char *stats = store_stats_json(f->s);
                assert_non_null(strstr(stats, "\"expireCount\":2,"));
                free(stats);
        }
}

static void test_ttl_dir(void **state) {
        Fixture *f = *state;

        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/d", .dir = true, .prev_exist = -1,
                                                   .expiration_usec = NOW + USEC_PER_SEC }), 0);
        assert_int_equal(put_ttl(f, "/1/d/x", "v", NOW + 100 * USEC_PER_SEC), 0);
        assert_int_equal(put(f, "/1/d/y/z", "v"), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .time_usec = NOW + USEC_PER_SEC }), 0);
        assert_int_equal(store_index(f->s), 4);
        assert_null(store_lookup(f->s, "/1/d"));
        /* the child's TTL went with it */
        assert_int_equal(store_next_expiration(f->s), 0);
}

static void test_ttl_update_and_cas(void **state) {
        Fixture *f = *state;

        assert_int_equal(put_ttl(f, "/1/k", "v", NOW + 10 * USEC_PER_SEC), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/k", .prev_exist = 1,
                                                   .value = "v", .value_len = 1,
                                                   .expiration_usec = NOW + 50 * USEC_PER_SEC }), 0);
        assert_int_equal(store_next_expiration(f->s), NOW + 50 * USEC_PER_SEC);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/k", .prev_value = "v",
                                                   .value = "w", .value_len = 1, .prev_exist = -1,
                                                   .expiration_usec = NOW + 5 * USEC_PER_SEC }), 0);
        assert_non_null(strstr(json(f), "\"value\":\"w\",\"expiration\":\"2023-11-14T22:13:25Z\",\"ttl\":5,"));
        assert_int_equal(store_next_expiration(f->s), NOW + 5 * USEC_PER_SEC);
        /* set without ttl: permanent */
        assert_int_equal(put(f, "/1/k", "x"), 0);
        assert_int_equal(store_next_expiration(f->s), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .time_usec = NOW + 100 * USEC_PER_SEC }), 0);
        assert_non_null(store_lookup(f->s, "/1/k"));
}

/* ---------------------------------------------------------------------------------------------- */
/* Watchers */

typedef struct Catch {
        StoreEvent *events[16];
        unsigned n;
        int ret;
        bool free_self;
} Catch;

static int catch_cb(StoreWatcher *w, StoreEvent *e, void *userdata) {
        Catch *c = userdata;

        assert_true(c->n < ELEMENTSOF(c->events));
        c->events[c->n++] = store_event_ref(e);
        if (c->free_self)
                store_watcher_free(w);
        return c->ret;
}

static void catch_done(Catch *c) {
        for (unsigned i = 0; i < c->n; i++)
                store_event_unref(c->events[i]);
        c->n = 0;
}

static StoreWatcher *watch(Fixture *f, const char *path, bool recursive, bool stream, uint64_t since, Catch *c) {
        StoreWatcher *w = NULL;
        StoreEvent *e = NULL;

        assert_int_equal(store_watch(f->s, path, recursive, stream, since, catch_cb, c, &w, &e, NULL), 0);
        assert_null(e);
        assert_non_null(w);
        return w;
}

static void test_watch_exact(void **state) {
        Fixture *f = *state;
        Catch c = {};

        watch(f, "/1/foo", false, false, 0, &c);
        assert_int_equal(store_n_watchers(f->s), 1);
        assert_int_equal(put(f, "/1/foo/bar", "x"), ETCD_OK); /* creates dir /foo, not notified */
        assert_int_equal(c.n, 0);
        assert_int_equal(del(f, "/1/foo", true, true), 0);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.events[0]->action, STORE_ACTION_DELETE);
        assert_ptr_equal(c.events[0], f->r.event); /* the very same shared event */
        assert_int_equal(store_n_watchers(f->s), 0);
        assert_int_equal(put(f, "/1/foo", "x"), 0);
        assert_int_equal(c.n, 1);
        catch_done(&c);
}

static void test_watch_recursive_hidden(void **state) {
        Fixture *f = *state;
        Catch c = {}, croot = {}, chid = {};

        watch(f, "/1/d", true, true, 0, &c);
        watch(f, "/", true, true, 0, &croot);
        watch(f, "/1/d/_h", true, true, 0, &chid);
        assert_int_equal(put(f, "/1/d/a/b", "1"), 0);
        assert_int_equal(c.n, 1);
        assert_int_equal(croot.n, 1);
        assert_int_equal(put(f, "/1/d/_h", "1"), 0);   /* hidden for /1/d and / but not for itself */
        assert_int_equal(put(f, "/1/d/_h2/x", "1"), 0);
        assert_int_equal(c.n, 1);
        assert_int_equal(croot.n, 1);
        assert_int_equal(chid.n, 1);
        assert_int_equal(put(f, "/1/dx", "1"), 0);       /* not under /1/d */
        assert_int_equal(c.n, 1);
        assert_int_equal(croot.n, 2);
        assert_int_equal(store_n_watchers(f->s), 3);
        catch_done(&c);
        catch_done(&croot);
        catch_done(&chid);
}

static void test_watch_dir_delete(void **state) {
        Fixture *f = *state;
        Catch c1 = {}, c2 = {}, c3 = {};

        assert_int_equal(put(f, "/1/d/a/b", "1"), 0);
        watch(f, "/1/d/a/b", false, false, 0, &c1);
        watch(f, "/1/d/a", false, false, 0, &c2);
        watch(f, "/1/d/nothere", false, false, 0, &c3);
        assert_int_equal(del(f, "/1/d", true, true), 0);
        assert_int_equal(c1.n, 1);
        assert_int_equal(c2.n, 1);
        assert_int_equal(c3.n, 0); /* no node there: not notified */
        assert_string_equal(c1.events[0]->key, "/1/d");
        assert_true(c1.events[0]->prev_dir);
        assert_int_equal(store_n_watchers(f->s), 1);
        catch_done(&c1);
        catch_done(&c2);
}

static void test_watch_stream_and_cb_fail(void **state) {
        Fixture *f = *state;
        Catch c = {}, cf = { .ret = -1 }, cs = { .free_self = true };
        StoreWatcher *w;

        w = watch(f, "/1/k", false, true, 0, &c);
        watch(f, "/1/k", false, true, 0, &cf);
        watch(f, "/1/k", false, true, 0, &cs);
        assert_int_equal(put(f, "/1/k", "1"), 0);
        assert_int_equal(put(f, "/1/k", "2"), 0);
        /* a delete is delivered once even though etcd reaches the watcher twice */
        assert_int_equal(del(f, "/1/k", false, false), 0);
        assert_int_equal(c.n, 3);
        assert_int_equal(cf.n, 1);
        assert_int_equal(cs.n, 1);
        assert_int_equal(store_n_watchers(f->s), 1);
        assert_null(store_watcher_free(w));
        assert_int_equal(store_n_watchers(f->s), 0);
        catch_done(&c);
        catch_done(&cf);
        catch_done(&cs);
}

static void test_watch_history(void **state) {
        Fixture *f = *state;
        StoreWatcher *w = NULL;
        StoreEvent *e = NULL;
        char *cause = NULL;
        Catch c = {};

        assert_int_equal(put(f, "/1/a", "1"), 0);
        assert_int_equal(put(f, "/1/b", "1"), 0);
        assert_int_equal(put(f, "/1/a", "2"), 0);
        assert_int_equal(store_watch(f->s, "/1/a", false, false, 2, catch_cb, &c, &w, &e, &cause), 0);
        assert_null(w);
        assert_non_null(e);
        assert_int_equal(e->index, 3);
        store_event_unref(e);
        assert_int_equal(store_watch(f->s, "/1", true, false, 1, catch_cb, &c, &w, &e, &cause), 0);
        assert_int_equal(e->index, 1);
        store_event_unref(e);
        /* future index: a watcher */
        assert_int_equal(store_watch(f->s, "/1/a", false, false, 5, catch_cb, &c, &w, &e, &cause), 0);
        assert_non_null(w);
        assert_null(e);
        assert_int_equal(put(f, "/1/a", "3"), 0); /* index 4 < 5: not delivered */
        assert_int_equal(c.n, 0);
        assert_int_equal(put(f, "/1/a", "4"), 0);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.events[0]->index, 5);
        catch_done(&c);

        /* fill the history past 1000 events */
        for (int i = 0; i < 1200; i++)
                assert_int_equal(put(f, "/1/x", "v"), 0);
        assert_int_equal(store_watch(f->s, "/1/a", false, false, 100, catch_cb, &c, &w, &e, &cause),
                         ETCD_ERROR_EVENT_INDEX_CLEARED);
        assert_string_equal(cause, "the requested history has been cleared [206/100]");
        free(cause);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_EVENT_INDEX_CLEARED), 400);
        /* the oldest kept index is fine */
        assert_int_equal(store_watch(f->s, "/1/x", false, false, 206, catch_cb, &c, &w, &e, NULL), 0);
        assert_int_equal(e->index, 206);
        store_event_unref(e);
}

static void test_watch_history_dir_delete(void **state) {
        Fixture *f = *state;
        StoreWatcher *w = NULL;
        StoreEvent *e = NULL;

        assert_int_equal(put(f, "/1/d/x", "1"), 0);
        assert_int_equal(del(f, "/1/d", true, true), 0);
        assert_int_equal(store_watch(f->s, "/1/d/x/y", false, false, 2, catch_cb, NULL, &w, &e, NULL), 0);
        assert_non_null(e);
        assert_int_equal(e->action, STORE_ACTION_DELETE);
        store_event_unref(e);
}

static void test_refresh(void **state) {
        Fixture *f = *state;
        StoreWatcher *w = NULL;
        StoreEvent *e = NULL;
        Catch c = {};

        /* refresh of a missing key */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/r", .refresh = true,
                                                   .prev_exist = -1, .expiration_usec = NOW + USEC_PER_SEC }),
                         ETCD_ERROR_KEY_NOT_FOUND);
        assert_int_equal(put_ttl(f, "/1/r", "v", NOW + 10 * USEC_PER_SEC), 0);
        watch(f, "/1/r", false, false, 0, &c);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/r", .refresh = true,
                                                   .prev_exist = -1, .expiration_usec = NOW + 50 * USEC_PER_SEC }), 0);
        assert_string_equal(json(f), "{\"action\":\"set\",\"node\":{\"key\":\"/r\",\"value\":\"v\",\"expiration\":\"2023-11-14T22:14:10Z\",\"ttl\":50,\"modifiedIndex\":2,\"createdIndex\":2},"
                            "\"prevNode\":{\"key\":\"/r\",\"value\":\"v\",\"expiration\":\"2023-11-14T22:13:30Z\",\"ttl\":10,\"modifiedIndex\":1,\"createdIndex\":1}}\n");
        assert_true(f->r.event->refresh);
        assert_int_equal(c.n, 0);
        assert_int_equal(store_next_expiration(f->s), NOW + 50 * USEC_PER_SEC);
        /* refresh through prevExist=true (update) keeps the value as well */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/r", .refresh = true,
                                                   .prev_exist = 1, .expiration_usec = NOW + 60 * USEC_PER_SEC }), 0);
        assert_int_equal(f->r.event->action, STORE_ACTION_UPDATE);
        assert_non_null(strstr(json(f), "\"node\":{\"key\":\"/r\",\"value\":\"v\","));
        assert_int_equal(c.n, 0);
        /* ... and through CAS */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/r", .refresh = true,
                                                   .prev_value = "v", .prev_exist = -1,
                                                   .expiration_usec = NOW + 70 * USEC_PER_SEC }), 0);
        assert_int_equal(f->r.event->action, STORE_ACTION_COMPARE_AND_SWAP);
        assert_int_equal(c.n, 0);
        /* history scans skip refresh events */
        assert_int_equal(store_watch(f->s, "/1/r", false, false, 2, catch_cb, &c, &w, &e, NULL), 0);
        assert_null(e);
        assert_non_null(w);
        assert_int_equal(put(f, "/1/r", "new"), 0);
        assert_int_equal(c.n, 2); /* both watchers */
        catch_done(&c);
}

typedef struct Reentrant {
        Store *s;
        StoreWatcher *victim;
        StoreWatcher *added;
        unsigned n;
} Reentrant;

static int reentrant_cb(StoreWatcher *w, StoreEvent *e, void *userdata) {
        Reentrant *x = userdata;

        (void) w;
        (void) e;
        x->n++;
        if (x->victim)
                x->victim = store_watcher_free(x->victim);
        if (!x->added)
                assert_int_equal(store_watch(x->s, "/1/k", false, true, 0, reentrant_cb, x, &x->added, NULL, NULL), 0);
        return 0;
}

static void test_watch_reentrant(void **state) {
        Fixture *f = *state;
        Reentrant x = { .s = f->s };
        StoreWatcher *w1, *w2;
        Catch c = {};

        /* the first watcher's callback frees the second one and adds a third */
        assert_int_equal(store_watch(f->s, "/1/k", false, true, 0, reentrant_cb, &x, &w1, NULL, NULL), 0);
        w2 = watch(f, "/1/k", false, true, 0, &c);
        x.victim = w2;
        assert_int_equal(put(f, "/1/k", "1"), 0);
        assert_int_equal(c.n, 0);
        assert_null(x.victim);
        assert_non_null(x.added);
        assert_int_equal(store_n_watchers(f->s), 2);
        /* the added one only sees later events */
        assert_int_equal(x.n, 1);
        assert_int_equal(put(f, "/1/k", "2"), 0);
        assert_int_equal(x.n, 3);
        store_watcher_free(w1);
        store_watcher_free(x.added);
        assert_int_equal(store_n_watchers(f->s), 0);
}

static void test_watch_ops(void **state) {
        Fixture *f = *state;
        Catch c = {}, cin = {};

        watch(f, "/1", true, true, 0, &c);
        assert_int_equal(put(f, "/1/a", "1"), 0);                                          /* 1 set */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/a", .value = "2",
                                                   .value_len = 1, .prev_exist = 1 }), 0); /* 2 update */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/a", .value = "3",
                                                   .value_len = 1, .prev_exist = -1, .prev_index = 2 }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_DELETE, .path = "/1/a",
                                                   .prev_exist = -1, .prev_index = 3 }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_POST, .path = "/1/q", .value = "3",
                                                   .value_len = 1, .prev_exist = -1 }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/d", .dir = true, .prev_exist = -1,
                                                   .expiration_usec = NOW + USEC_PER_SEC }), 0);
        assert_int_equal(put(f, "/1/d/in", "1"), 0);
        watch(f, "/1/d/in", false, false, 0, &cin);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .time_usec = NOW + USEC_PER_SEC }), 0);
        assert_int_equal(c.n, 8);
        assert_int_equal(c.events[0]->action, STORE_ACTION_SET);
        assert_int_equal(c.events[1]->action, STORE_ACTION_UPDATE);
        assert_int_equal(c.events[2]->action, STORE_ACTION_COMPARE_AND_SWAP);
        assert_int_equal(c.events[3]->action, STORE_ACTION_COMPARE_AND_DELETE);
        assert_int_equal(c.events[4]->action, STORE_ACTION_CREATE);
        assert_int_equal(c.events[7]->action, STORE_ACTION_EXPIRE);
        for (unsigned i = 0; i < c.n; i++)
                assert_int_equal(c.events[i]->index, i + 1);
        assert_int_equal(cin.n, 1);
        assert_ptr_equal(cin.events[0], c.events[7]);
        assert_string_equal(ej(cin.events[0]), "{\"action\":\"expire\",\"node\":{\"key\":\"/d\",\"dir\":true,\"modifiedIndex\":8,\"createdIndex\":6},"
                            "\"prevNode\":{\"key\":\"/d\",\"dir\":true,\"expiration\":\"2023-11-14T22:13:21Z\",\"ttl\":1,\"modifiedIndex\":6,\"createdIndex\":6}}\n");
        catch_done(&c);
        catch_done(&cin);
}

typedef struct Log {
        char text[4096];
} Log;

static void log_put(void *userdata, const char *key, const void *record, size_t len) {
        Log *l = userdata;

        (void) record;
        assert_true(len >= 26);
        snprintf(l->text + strlen(l->text), sizeof l->text - strlen(l->text), "put %s;", key);
}

static void log_delete(void *userdata, const char *key) {
        Log *l = userdata;

        snprintf(l->text + strlen(l->text), sizeof l->text - strlen(l->text), "del %s;", key);
}

static void log_hadd(void *userdata, uint64_t index, const void *record, size_t len) {
        Log *l = userdata;

        (void) record;
        (void) len;
        snprintf(l->text + strlen(l->text), sizeof l->text - strlen(l->text), "h+%" PRIu64 ";", index);
}

static void test_sink_calls(void **state) {
        Fixture *f = *state;
        Log l = {};
        StoreSink sink = { .userdata = &l, .node_put = log_put, .node_delete = log_delete, .history_add = log_hadd };

        store_set_sink(f->s, &sink);
        assert_int_equal(put(f, "/1/a/b/c", "1"), 0);
        assert_string_equal(l.text, "put /1/a;put /1/a/b;put /1/a/b/c;h+1;");
        l.text[0] = 0;
        assert_int_equal(put(f, "/1/a/b/c", "2"), 0);
        assert_int_equal(del(f, "/1/a", true, true), 0);
        assert_string_equal(l.text, "put /1/a/b/c;h+2;del /1/a;h+3;");
        l.text[0] = 0;
        /* failures change nothing durable */
        assert_int_equal(del(f, "/1/a", true, true), ETCD_ERROR_KEY_NOT_FOUND);
        assert_int_equal(put(f, "/1", "x"), ETCD_ERROR_ROOT_RONLY);
        assert_string_equal(l.text, "");
        /* gets neither */
        assert_int_equal(get(f, "/1", true, true), 0);
        assert_string_equal(l.text, "");
        store_set_sink(f->s, NULL);
}

static int collect_cb(const StoreNode *n, void *userdata) {
        Log *l = userdata;

        snprintf(l->text + strlen(l->text), sizeof l->text - strlen(l->text), "%s;", store_node_key(n));
        return streq(store_node_key(n), "/1/c") ? 1 : 0;
}

static void test_foreach_child(void **state) {
        Fixture *f = *state;
        Log l = {};

        assert_int_equal(put(f, "/1/d", "1"), 0);
        assert_int_equal(put(f, "/1/b", "1"), 0);
        assert_int_equal(put(f, "/1/_h", "1"), 0);
        assert_int_equal(put(f, "/1/c", "1"), 0);
        assert_int_equal(put(f, "/1/a", "1"), 0);
        /* hidden ones included, key order, stops on != 0 */
        assert_int_equal(store_node_foreach_child(store_lookup(f->s, "/1"), collect_cb, &l), 1);
        assert_string_equal(l.text, "/1/_h;/1/a;/1/b;/1/c;");
        l.text[0] = 0;
        assert_int_equal(store_node_foreach_child(store_lookup(f->s, "/1/a"), collect_cb, &l), 0);
        assert_string_equal(l.text, "");
        assert_null(store_node_value(store_lookup(f->s, "/1"), NULL));
        assert_null(store_lookup(f->s, "/1/a/x"));
        assert_non_null(store_lookup(f->s, "/"));
        assert_non_null(store_lookup(f->s, "/0"));
}

static int count_cb(StoreWatcher *w, StoreEvent *e, void *userdata) {
        (void) w;
        (void) e;
        (*(unsigned *) userdata)++;
        return 0;
}

static void test_many_watchers(void **state) {
        Fixture *f = *state;
        StoreWatcher *ws[2000];
        unsigned n = 0;

        for (unsigned i = 0; i < ELEMENTSOF(ws); i++)
                assert_int_equal(store_watch(f->s, i % 2 ? "/1/k" : "/1", i % 2 == 0, true, 0, count_cb, &n,
                                             &ws[i], NULL, NULL), 0);
        assert_int_equal(store_n_watchers(f->s), 2000);
        assert_int_equal(put(f, "/1/k", "v"), 0);
        assert_int_equal(n, 2000);
        assert_int_equal(put(f, "/1/other", "v"), 0);
        assert_int_equal(n, 3000);
        {
                char *stats = store_stats_json(f->s);
                assert_non_null(strstr(stats, "\"watchers\":2000}"));
                free(stats);
        }
        for (unsigned i = 0; i < ELEMENTSOF(ws); i++)
                store_watcher_free(ws[i]);
        assert_int_equal(store_n_watchers(f->s), 0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Persistence */

typedef struct Rec {
        char *key;
        void *data;
        size_t len;
        uint64_t index;
} Rec;

typedef struct Mirror {
        Rec nodes[4096];
        size_t n_nodes;
        Rec events[2048];
        size_t n_events;
        unsigned n_drops;
} Mirror;

static void mirror_node_put(void *userdata, const char *key, const void *record, size_t len) {
        Mirror *m = userdata;
        Rec *r = NULL;

        for (size_t i = 0; i < m->n_nodes; i++)
                if (streq(m->nodes[i].key, key))
                        r = &m->nodes[i];
        if (!r) {
                assert_true(m->n_nodes < ELEMENTSOF(m->nodes));
                r = &m->nodes[m->n_nodes++];
                r->key = strdup(key);
        } else
                free(r->data);
        r->data = malloc(len + 1);
        memcpy(r->data, record, len);
        r->len = len;
}

static void mirror_node_delete(void *userdata, const char *key) {
        Mirror *m = userdata;
        size_t l = strlen(key);

        for (size_t i = 0; i < m->n_nodes;) {
                if (streq(m->nodes[i].key, key) || (strneq(m->nodes[i].key, key, l) && m->nodes[i].key[l] == '/')) {
                        free(m->nodes[i].key);
                        free(m->nodes[i].data);
                        m->nodes[i] = m->nodes[--m->n_nodes];
                } else
                        i++;
        }
}

static void mirror_history_add(void *userdata, uint64_t index, const void *record, size_t len) {
        Mirror *m = userdata;
        Rec *r;

        assert_true(m->n_events < ELEMENTSOF(m->events));
        r = &m->events[m->n_events++];
        r->index = index;
        r->data = malloc(len + 1);
        memcpy(r->data, record, len);
        r->len = len;
}

static void mirror_history_drop(void *userdata, uint64_t index) {
        Mirror *m = userdata;

        assert_true(m->n_events > 0);
        assert_int_equal(m->events[0].index, index);
        free(m->events[0].data);
        memmove(m->events, m->events + 1, sizeof(Rec) * --m->n_events);
        m->n_drops++;
}

static int rec_cmp(const void *a, const void *b) {
        return strcmp(((const Rec *) a)->key, ((const Rec *) b)->key);
}

static void mirror_free(Mirror *m) {
        for (size_t i = 0; i < m->n_nodes; i++) {
                free(m->nodes[i].key);
                free(m->nodes[i].data);
        }
        for (size_t i = 0; i < m->n_events; i++)
                free(m->events[i].data);
        free(m);
}

/* Compares two subtrees node by node, hidden ones included. */
static void assert_same_tree(Store *a, Store *b, const char *path) {
        StoreResult ra = {}, rb = {};

        assert_int_equal(store_get(a, path, true, true, NOW, &ra), 0);
        assert_int_equal(store_get(b, path, true, true, NOW, &rb), 0);
        assert_int_equal(ra.error, rb.error);
        if (ra.event)
                assert_string_equal(ej(ra.event), ej(rb.event));
        store_result_done(&ra);
        store_result_done(&rb);
}

typedef struct Walk {
        Store *self;
        Store *other;
        unsigned n;
} Walk;

static int walk_cb(const StoreNode *n, void *userdata) {
        Walk *w = userdata;
        const StoreNode *o = store_lookup(w->other, store_node_key(n));

        assert_non_null(o);
        assert_int_equal(store_node_is_dir(n), store_node_is_dir(o));
        /* the rendered node carries indexes and expiration; store_get() does not change the tree */
        {
                StoreResult r1 = {}, r2 = {};

                assert_int_equal(store_get(w->self, store_node_key(n), false, true, NOW, &r1), 0);
                assert_int_equal(store_get(w->other, store_node_key(n), false, true, NOW, &r2), 0);
                assert_non_null(r1.event);
                assert_non_null(r2.event);
                assert_string_equal(ej(r1.event), ej(r2.event));
                store_result_done(&r1);
                store_result_done(&r2);
        }
        if (!store_node_is_dir(n)) {
                size_t l1, l2;
                const char *v1 = store_node_value(n, &l1), *v2 = store_node_value(o, &l2);

                assert_int_equal(l1, l2);
                assert_memory_equal(v1, v2, l1);
        } else
                assert_int_equal(store_node_foreach_child(n, walk_cb, w), 0);
        w->n++;
        return 0;
}

static void test_persist_roundtrip(void **state) {
        Fixture *f = *state;
        Mirror *m = calloc(1, sizeof(Mirror));
        StoreSink sink = { .userdata = m, .node_put = mirror_node_put, .node_delete = mirror_node_delete,
                           .history_add = mirror_history_add, .history_drop = mirror_history_drop };
        Store *t;
        StoreWatcher *w = NULL;
        StoreEvent *e = NULL;
        Walk wk;

        store_set_sink(f->s, &sink);
        assert_int_equal(put(f, "/1/a/b/c", "1"), 0);
        assert_int_equal(put_ttl(f, "/1/a/t", "ttl", NOW + 100 * USEC_PER_SEC), 0);
        assert_int_equal(put(f, "/1/a/_hidden", "h"), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/nul", .value = "x\0y",
                                                   .value_len = 3, .prev_exist = -1 }), 0);
        assert_int_equal(mkdir_(f, "/1/empty"), 0);
        assert_int_equal(put(f, "/0/members/1/attributes", "{}"), 0);
        assert_int_equal(put(f, "/1/gone/x", "1"), 0);
        assert_int_equal(del(f, "/1/gone", true, true), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/a/b/c", .prev_value = "1",
                                                   .value = "2", .value_len = 1, .prev_exist = -1 }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/d", .dir = true, .prev_exist = -1,
                                                   .expiration_usec = NOW + 5 * USEC_PER_SEC }), 0);
        assert_int_equal(put(f, "/1/d/x", "1"), 0);
        for (int i = 0; i < 1100; i++)
                assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_POST, .path = "/1/q", .value = "v",
                                                           .value_len = 1, .prev_exist = -1 }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .time_usec = NOW + 5 * USEC_PER_SEC }), 0);
        assert_null(store_lookup(f->s, "/1/d"));
        assert_int_equal(m->n_events, STORE_HISTORY_MAX);
        assert_int_equal(m->n_drops, store_index(f->s) - STORE_HISTORY_MAX);

        /* reload */
        assert_int_equal(store_new(&t), 0);
        qsort(m->nodes, m->n_nodes, sizeof(Rec), rec_cmp);
        for (size_t i = 0; i < m->n_nodes; i++)
                assert_int_equal(store_load_node(t, m->nodes[i].key, m->nodes[i].data, m->nodes[i].len), 0);
        for (size_t i = 0; i < m->n_events; i++)
                assert_int_equal(store_load_event(t, m->events[i].index, m->events[i].data, m->events[i].len), 0);
        assert_int_equal(store_load_finish(t, store_index(f->s)), 0);

        assert_int_equal(store_index(t), store_index(f->s));
        assert_int_equal(store_next_expiration(t), store_next_expiration(f->s));
        assert_int_equal(store_next_expiration(t), NOW + 100 * USEC_PER_SEC);
        assert_same_tree(f->s, t, "/1");
        assert_same_tree(f->s, t, "/0");
        assert_same_tree(f->s, t, "/1/a/_hidden");
        wk = (Walk) { .self = f->s, .other = t };
        assert_int_equal(store_node_foreach_child(store_lookup(f->s, "/"), walk_cb, &wk), 0);
        assert_true(wk.n > 1100);
        wk = (Walk) { .self = t, .other = f->s };
        assert_int_equal(store_node_foreach_child(store_lookup(t, "/"), walk_cb, &wk), 0);

        /* the history survived: a waitIndex watch finds the same event */
        assert_int_equal(store_watch(t, "/1/q", true, false, store_index(t) - 5, catch_cb, NULL, &w, &e, NULL), 0);
        assert_non_null(e);
        assert_int_equal(e->index, store_index(t) - 5);
        {
                StoreEvent *e2 = NULL;

                assert_int_equal(store_watch(f->s, "/1/q", true, false, store_index(t) - 5, catch_cb, NULL, &w, &e2, NULL), 0);
                assert_string_equal(ej(e), ej(e2));
                store_event_unref(e2);
        }
        store_event_unref(e);
        {
                char *cause = NULL;
                assert_int_equal(store_watch(t, "/1", true, false, 10, catch_cb, NULL, &w, &e, &cause),
                                 ETCD_ERROR_EVENT_INDEX_CLEARED);
                free(cause);
        }

        /* both behave identically afterwards */
        {
                StoreResult r1 = {}, r2 = {};
                StoreRequest req = { .method = STORE_METHOD_POST, .path = "/1/q", .value = "z", .value_len = 1, .prev_exist = -1 };

                assert_int_equal(store_apply(f->s, &req, NOW, &r1), 0);
                assert_int_equal(store_apply(t, &req, NOW, &r2), 0);
                assert_string_equal(ej(r1.event), ej(r2.event));
                store_result_done(&r1);
                store_result_done(&r2);
                req = (StoreRequest) { .method = STORE_METHOD_SYNC, .time_usec = NOW + 1000 * USEC_PER_SEC };
                assert_int_equal(store_apply(f->s, &req, NOW, &r1), 0);
                assert_int_equal(store_apply(t, &req, NOW, &r2), 0);
                assert_int_equal(store_index(f->s), store_index(t));
                assert_null(store_lookup(t, "/1/a/t"));
        }

        store_free(t);
        store_set_sink(f->s, NULL);
        mirror_free(m);
}

static uint32_t rnd_state;

static uint32_t rnd(uint32_t n) {
        rnd_state = rnd_state * 1103515245u + 12345u;
        return (rnd_state >> 8) % n;
}

/* Random operations on a small key space; after every batch a store rebuilt from the sink records
 * must be identical (tree, indexes, TTLs, history) and stay identical under the same operations. */
static void test_persist_random(void **state) {
        static const char *const paths[] = {
                "/1/a", "/1/b", "/1/a/x", "/1/a/y", "/1/_h", "/1/_h/z", "/1/d", "/1/d/e/f", "/1/q", "/0/m",
        };
        Fixture *f = *state;
        Mirror *m = calloc(1, sizeof(Mirror));
        StoreSink sink = { .userdata = m, .node_put = mirror_node_put, .node_delete = mirror_node_delete,
                           .history_add = mirror_history_add, .history_drop = mirror_history_drop };
        uint64_t clock = NOW;

        rnd_state = 42;
        store_set_sink(f->s, &sink);
        for (unsigned round = 0; round < 40; round++) {
                Store *t;
                Walk wk;

                for (unsigned i = 0; i < 100; i++) {
                        StoreRequest req = { .prev_exist = -1 };
                        char val[8];

                        snprintf(val, sizeof val, "v%u", rnd(4));
                        req.path = paths[rnd(ELEMENTSOF(paths))];
                        req.value = val;
                        req.value_len = strlen(val);
                        if (rnd(3) == 0)
                                req.expiration_usec = clock + (1 + rnd(20)) * USEC_PER_SEC;
                        switch (rnd(9)) {
                        case 0: case 1:
                                req.method = STORE_METHOD_PUT;
                                req.dir = rnd(4) == 0;
                                break;
                        case 2:
                                req.method = STORE_METHOD_PUT;
                                req.prev_exist = rnd(2);
                                break;
                        case 3:
                                req.method = STORE_METHOD_PUT;
                                req.prev_value = rnd(2) ? "v1" : NULL;
                                req.prev_index = rnd(2) ? store_index(f->s) - rnd(3) : 0;
                                req.refresh = rnd(4) == 0;
                                break;
                        case 4:
                                req.method = STORE_METHOD_POST;
                                break;
                        case 5:
                                req.method = STORE_METHOD_DELETE;
                                req.dir = rnd(2);
                                req.recursive = rnd(2);
                                break;
                        case 6:
                                req.method = STORE_METHOD_DELETE;
                                req.prev_value = rnd(2) ? "v2" : NULL;
                                req.prev_index = rnd(2) ? 0 : store_index(f->s) - rnd(3);
                                break;
                        case 7:
                                req.method = STORE_METHOD_PUT;
                                req.refresh = true;
                                req.value = NULL;
                                req.value_len = 0;
                                req.expiration_usec = clock + (1 + rnd(20)) * USEC_PER_SEC;
                                break;
                        default:
                                clock += rnd(5) * USEC_PER_SEC;
                                req.method = STORE_METHOD_SYNC;
                                req.time_usec = clock;
                                break;
                        }
                        store_result_done(&f->r);
                        assert_int_equal(store_apply(f->s, &req, clock, &f->r), 0);
                }

                assert_int_equal(store_new(&t), 0);
                qsort(m->nodes, m->n_nodes, sizeof(Rec), rec_cmp);
                for (size_t i = 0; i < m->n_nodes; i++)
                        assert_int_equal(store_load_node(t, m->nodes[i].key, m->nodes[i].data, m->nodes[i].len), 0);
                for (size_t i = 0; i < m->n_events; i++)
                        assert_int_equal(store_load_event(t, m->events[i].index, m->events[i].data, m->events[i].len), 0);
                assert_int_equal(store_load_finish(t, store_index(f->s)), 0);

                assert_int_equal(store_next_expiration(t), store_next_expiration(f->s));
                wk = (Walk) { .self = f->s, .other = t };
                assert_int_equal(store_node_foreach_child(store_lookup(f->s, "/"), walk_cb, &wk), 0);
                wk = (Walk) { .self = t, .other = f->s };
                assert_int_equal(store_node_foreach_child(store_lookup(t, "/"), walk_cb, &wk), 0);
                for (uint64_t i = store_index(t) > 50 ? store_index(t) - 50 : 1; i <= store_index(t); i++) {
                        StoreWatcher *w1 = NULL, *w2 = NULL;
                        StoreEvent *e1 = NULL, *e2 = NULL;

                        assert_int_equal(store_watch(f->s, "/", true, false, i, catch_cb, NULL, &w1, &e1, NULL), 0);
                        assert_int_equal(store_watch(t, "/", true, false, i, catch_cb, NULL, &w2, &e2, NULL), 0);
                        if (e1) {
                                assert_non_null(e2);
                                assert_string_equal(ej(e1), ej(e2));
                                assert_int_equal(e1->refresh, e2->refresh);
                                assert_int_equal(e1->prev_dir, e2->prev_dir);
                        } else {
                                assert_null(e2);
                                store_watcher_free(w1);
                                store_watcher_free(w2);
                        }
                        store_event_unref(e1);
                        store_event_unref(e2);
                }
                store_free(t);
        }
        if (getenv("STORE_TEST_DEBUG"))
                fprintf(stderr, "random: index %" PRIu64 ", %zu nodes, %zu events, %u drops\n",
                        store_index(f->s), m->n_nodes, m->n_events, m->n_drops);
        /* the mix must have produced real work */
        assert_true(store_index(f->s) > 1200);
        store_set_sink(f->s, NULL);
        mirror_free(m);
}

static void test_load_bad_records(void **state) {
        Fixture *f = *state;
        uint8_t junk[3] = { 9, 9, 9 };

        assert_true(store_load_node(f->s, "/1/x", junk, sizeof junk) < 0);
        assert_true(store_load_event(f->s, 1, junk, sizeof junk) < 0);
}

/* A SYNC with a cap (prev_index) expires at most that many due nodes, in expiration order; the next
 * SYNC goes on where it stopped. */
static void test_sync_capped(void **state) {
        Fixture *f = *state;
        char path[32];

        for (unsigned i = 0; i < 5; i++) {
                snprintf(path, sizeof path, "/1/k%u", i);
                assert_int_equal(put_ttl(f, path, "v", NOW + (i + 1) * USEC_PER_SEC), 0);
        }
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .prev_index = 2,
                                                   .time_usec = NOW + 10 * USEC_PER_SEC }), 0);
        assert_int_equal(store_index(f->s), 7);
        assert_null(store_lookup(f->s, "/1/k1"));
        assert_non_null(store_lookup(f->s, "/1/k2"));
        assert_int_equal(store_next_expiration(f->s), NOW + 3 * USEC_PER_SEC);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .prev_index = 2,
                                                   .time_usec = NOW + 10 * USEC_PER_SEC }), 0);
        assert_int_equal(store_index(f->s), 9);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .prev_index = 2,
                                                   .time_usec = NOW + 10 * USEC_PER_SEC }), 0);
        assert_int_equal(store_index(f->s), 10);
        assert_int_equal(store_next_expiration(f->s), 0);
}

/* A recursive delete of a big directory without TTLs below detaches it at once and frees it over the
 * next calls; watchers on nodes inside it still hear the delete, watchers on paths that name no node
 * do not. With a TTL below, the node-by-node removal keeps the heap right. */
static void test_delete_big_dir(void **state) {
        Fixture *f = *state;
        Catch inner = {}, dir = {}, missing = {}, stream = {};
        StoreWatcher *ws;
        char path[48];

        for (unsigned i = 0; i < 600; i++) {
                snprintf(path, sizeof path, i < 10 ? "/1/big/sub/k%u" : "/1/big/k%u", i);
                assert_int_equal(put(f, path, "v"), 0);
        }
        (void) watch(f, "/1/big/k17", false, false, 0, &inner);
        (void) watch(f, "/1/big/sub", false, false, 0, &dir);
        ws = watch(f, "/1/big/nothing", false, true, 0, &missing);
        (void) watch(f, "/1/big/sub/k8", true, false, 0, &stream);
        assert_int_equal(del(f, "/1/big", true, true), 0);
        assert_int_equal(f->r.error, 0);
        assert_int_equal(inner.n, 1);
        assert_int_equal(dir.n, 1);
        assert_int_equal(stream.n, 1);
        assert_int_equal(missing.n, 0);
        assert_string_equal(inner.events[0]->key, "/1/big");
        assert_null(store_lookup(f->s, "/1/big/sub/k8"));
        assert_null(store_lookup(f->s, "/1/big"));
        assert_true(store_reap(f->s, 10));
        assert_false(store_reap(f->s, SIZE_MAX));
        store_watcher_free(ws);
        catch_done(&inner);
        catch_done(&dir);
        catch_done(&stream);

        /* the same, with one TTL below: removed node by node, the heap emptied */
        for (unsigned i = 0; i < 600; i++) {
                snprintf(path, sizeof path, "/1/big/k%u", i);
                assert_int_equal(i == 300 ? put_ttl(f, path, "v", NOW + USEC_PER_SEC) : put(f, path, "v"), 0);
        }
        assert_int_equal(put_ttl(f, "/1/other", "v", NOW + 5 * USEC_PER_SEC), 0);
        assert_int_equal(store_next_expiration(f->s), NOW + USEC_PER_SEC);
        assert_int_equal(del(f, "/1/big", true, true), 0);
        assert_int_equal(store_next_expiration(f->s), NOW + 5 * USEC_PER_SEC);
        /* a big dir again (reaped slices must not touch it) */
        for (unsigned i = 0; i < 600; i++) {
                snprintf(path, sizeof path, "/1/big/k%u", i);
                assert_int_equal(put(f, path, "w"), 0);
        }
        assert_int_equal(del(f, "/1/big", true, true), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_SYNC, .time_usec = NOW + 10 * USEC_PER_SEC }), 0);
        assert_null(store_lookup(f->s, "/1/other"));
        assert_int_equal(store_next_expiration(f->s), 0);
}

static int never_called(StoreWatcher *w, StoreEvent *e, void *userdata) {
        fail();
        return 0;
}

/* History records written before events were kept raw (version 1: key and rendered JSON) still load
 * and answer watchers with their JSON as it was; a truncated version 2 record is refused. */
static void test_load_event_v1(void **state) {
        Fixture *f = *state;
        static const char js[] = "{\"action\":\"set\",\"node\":{\"key\":\"/k\",\"value\":\"\\u0001\",\"modifiedIndex\":5,"
                                 "\"createdIndex\":5},\"prevNode\":{\"key\":\"/k\",\"value\":\"a\",\"modifiedIndex\":4,"
                                 "\"createdIndex\":4}}\n";
        uint8_t rec[3 + 8 + 8 + 4 + sizeof js - 1] = { 1, STORE_ACTION_SET, 0 };
        StoreWatcher *w = NULL;
        StoreEvent *e = NULL;
        char *cause = NULL;

        rec[3] = 5;                     /* index */
        rec[11] = 4;                    /* key length */
        memcpy(rec + 19, "/1/k", 4);
        memcpy(rec + 23, js, sizeof js - 1);
        assert_int_equal(store_load_event(f->s, 5, rec, 23 + sizeof js - 1), 0);
        assert_int_equal(store_load_finish(f->s, 5), 0);
        assert_int_equal(store_watch(f->s, "/1/k", false, false, 5, never_called, NULL, &w, &e, &cause), 0);
        assert_null(w);
        assert_non_null(e);
        assert_true(e->has_prev);
        assert_string_equal(ej(e), js);
        store_event_unref(e);

        /* a v2 record must be exactly as long as its lengths say */
        {
                uint8_t v2[3 + 80 + 1] = { 2, STORE_ACTION_SET, 0 };
                v2[3] = 6;
                v2[11] = 2; /* key of 2 bytes, but only 1 follows */
                assert_int_equal(store_load_event(f->s, 6, v2, sizeof v2), -EBADMSG);
        }
}

/* ---------------------------------------------------------------------------------------------- */
/* Errors, stats, scale */

static void test_error_json(void **state) {
        size_t len = 0;
        char *j;

        (void) state;
        j = etcd_error_to_json(ETCD_ERROR_KEY_NOT_FOUND, "/foo", 7, &len);
        assert_string_equal(j, "{\"errorCode\":100,\"message\":\"Key not found\",\"cause\":\"/foo\",\"index\":7}\n");
        assert_int_equal(len, strlen(j));
        free(j);
        j = etcd_error_to_json(ETCD_ERROR_NOT_FILE, "", 6, NULL);
        assert_string_equal(j, "{\"errorCode\":102,\"message\":\"Not a file\",\"index\":6}\n");
        free(j);
        j = etcd_error_to_json(ETCD_ERROR_TEST_FAILED, "[<a> != b]", 1, NULL);
        assert_string_equal(j, "{\"errorCode\":101,\"message\":\"Compare failed\",\"cause\":\"[\\u003ca\\u003e != b]\",\"index\":1}\n");
        free(j);

        assert_string_equal(etcd_error_message(ETCD_ERROR_NODE_EXIST), "Key already exists");
        assert_string_equal(etcd_error_message(ETCD_ERROR_ROOT_RONLY), "Root is read only");
        assert_string_equal(etcd_error_message(ETCD_ERROR_DIR_NOT_EMPTY), "Directory not empty");
        assert_string_equal(etcd_error_message(ETCD_ERROR_EVENT_INDEX_CLEARED), "The event in requested index is outdated and cleared");
        assert_null(etcd_error_message(103));
        assert_null(etcd_error_message(9999));
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_KEY_NOT_FOUND), 404);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_TEST_FAILED), 412);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_NODE_EXIST), 412);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_NOT_FILE), 403);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_DIR_NOT_EMPTY), 403);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_NOT_DIR), 400);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_ROOT_RONLY), 400);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_UNAUTHORIZED), 401);
        assert_int_equal(etcd_error_http_status(ETCD_ERROR_RAFT_INTERNAL), 500);

        assert_string_equal(store_action_to_string(STORE_ACTION_COMPARE_AND_DELETE), "compareAndDelete");
        assert_string_equal(store_action_to_string(STORE_ACTION_EXPIRE), "expire");
        assert_null(store_action_to_string(_STORE_ACTION_MAX));
}

static void test_stats(void **state) {
        Fixture *f = *state;
        char *s;

        assert_int_equal(put(f, "/1/a", "1"), 0);
        assert_int_equal(put(f, "/1/a/b", "1"), ETCD_ERROR_NOT_DIR);
        assert_int_equal(get(f, "/1/a", false, false), 0);
        assert_int_equal(get(f, "/1/x", false, false), ETCD_ERROR_KEY_NOT_FOUND);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_QGET, .path = "/1/a" }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/a", .value = "2",
                                                   .value_len = 1, .prev_exist = 1 }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/z", .value = "2",
                                                   .value_len = 1, .prev_exist = 1 }), ETCD_ERROR_KEY_NOT_FOUND);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "2",
                                                   .value_len = 1, .prev_exist = 0 }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "2",
                                                   .value_len = 1, .prev_exist = 0 }), ETCD_ERROR_NODE_EXIST);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "3",
                                                   .value_len = 1, .prev_exist = -1, .prev_value = "2" }), 0);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "3",
                                                   .value_len = 1, .prev_exist = -1, .prev_value = "2" }), ETCD_ERROR_TEST_FAILED);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_DELETE, .path = "/1/c", .prev_exist = -1,
                                                   .prev_value = "2" }), ETCD_ERROR_TEST_FAILED);
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_DELETE, .path = "/1/c", .prev_exist = -1,
                                                   .prev_value = "3" }), 0);
        /* etcd2's CompareAndDelete() counts TestFailed as a success, KeyNotFound as a failure */
        assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_DELETE, .path = "/1/nope", .prev_exist = -1,
                                                   .prev_value = "3" }), ETCD_ERROR_KEY_NOT_FOUND);
        assert_int_equal(del(f, "/1/a", false, false), 0);
        assert_int_equal(del(f, "/1/a", false, false), ETCD_ERROR_KEY_NOT_FOUND);

        s = store_stats_json(f->s);
        assert_string_equal(s, "{\"getsSuccess\":2,\"getsFail\":1,\"setsSuccess\":1,\"setsFail\":1,"
                            "\"deleteSuccess\":1,\"deleteFail\":1,\"updateSuccess\":1,\"updateFail\":1,"
                            "\"createSuccess\":1,\"createFail\":1,\"compareAndSwapSuccess\":1,\"compareAndSwapFail\":1,"
                            "\"compareAndDeleteSuccess\":2,\"compareAndDeleteFail\":1,\"expireCount\":0,\"watchers\":0}");
        free(s);
}

static void test_scale(void **state) {
        Fixture *f = *state;
        char key[64];
        int n = 100000;

        /* 100k in-order keys in one directory, then random access, sorted listing and deletion */
        for (int i = 0; i < n; i++)
                assert_int_equal(apply(f, (StoreRequest) { .method = STORE_METHOD_POST, .path = "/1/q", .value = "v",
                                                           .value_len = 1, .prev_exist = -1 }), 0);
        for (int i = 1; i <= n; i += 997) {
                snprintf(key, sizeof key, "/1/q/%020d", i);
                assert_non_null(store_lookup(f->s, key));
        }
        assert_int_equal(get(f, "/1/q", false, true), 0);
        assert_non_null(strstr(json(f), "{\"key\":\"/q/00000000000000000001\",\"value\":\"v\",\"modifiedIndex\":1,\"createdIndex\":1},"
                               "{\"key\":\"/q/00000000000000000002\""));
        for (int i = 1; i <= n; i += 2) {
                snprintf(key, sizeof key, "/1/q/%020d", i);
                assert_int_equal(del(f, key, false, false), 0);
        }
        for (int i = 1; i <= n; i++) {
                snprintf(key, sizeof key, "/1/q/%020d", i);
                if (i % 2)
                        assert_null(store_lookup(f->s, key));
                else
                        assert_non_null(store_lookup(f->s, key));
        }
        /* drain to a few children so that the child table shrinks, then check every key again */
        for (int i = 2; i <= n; i += 2) {
                if (i % 1000 == 0)
                        continue;
                snprintf(key, sizeof key, "/1/q/%020d", i);
                assert_int_equal(del(f, key, false, false), 0);
        }
        for (int i = 1; i <= n; i++) {
                snprintf(key, sizeof key, "/1/q/%020d", i);
                if (i % 1000 == 0)
                        assert_non_null(store_lookup(f->s, key));
                else
                        assert_null(store_lookup(f->s, key));
        }
        assert_int_equal(put(f, "/1/q/00000000000000001000", "replaced"), 0);
        assert_int_equal(get(f, "/1/q", false, true), 0);
        assert_non_null(strstr(json(f), "\"nodes\":[{\"key\":\"/q/00000000000000001000\",\"value\":\"replaced\""));
        assert_non_null(strstr(json(f), "{\"key\":\"/q/00000000000000100000\",\"value\":\"v\",\"modifiedIndex\":100000,\"createdIndex\":100000}]"));
        assert_int_equal(del(f, "/1/q", true, true), 0);
        assert_int_equal(store_index(f->s), (uint64_t) n + n - n / 1000 + 2);
}

int main(void) {
        const struct CMUnitTest tests[] = {
#define T(x) cmocka_unit_test_setup_teardown(x, setup, teardown)
                T(test_set_get),
                T(test_empty_value_and_nul),
                T(test_json_escaping),
                T(test_get_errors),
                T(test_get_dir),
                T(test_create),
                T(test_post_in_order),
                T(test_dir_rules),
                T(test_delete_file),
                T(test_update),
                T(test_cas),
                T(test_cad),
                T(test_ttl_render),
                T(test_ttl_sync),
                T(test_ttl_dir),
                T(test_ttl_update_and_cas),
                T(test_watch_exact),
                T(test_watch_recursive_hidden),
                T(test_watch_dir_delete),
                T(test_watch_stream_and_cb_fail),
                T(test_watch_history),
                T(test_watch_history_dir_delete),
                T(test_refresh),
                T(test_many_watchers),
                T(test_watch_reentrant),
                T(test_watch_ops),
                T(test_sink_calls),
                T(test_foreach_child),
                T(test_persist_roundtrip),
                T(test_persist_random),
                T(test_load_bad_records),
                T(test_load_event_v1),
                T(test_sync_capped),
                T(test_delete_big_dir),
                T(test_error_json),
                T(test_stats),
                T(test_scale),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
