/* SPDX-License-Identifier: Apache-2.0 */
/* test-persist.c - the RocksDB layer: log, hard state, snapshot record, node ranges, reopen. */

#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <rocksdb/c.h>

#include "log.h"
#include "persist.h"

typedef struct Fixture {
        char dir[64];
        Persist *p;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-persist-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        assert_int_equal(persist_open(f->dir, NULL, &f->p), 0);
        assert_true(persist_is_new(f->p));
        assert_int_equal(persist_meta_init(f->p, 0xabc, 0xdef), 0);
        assert_false(persist_is_new(f->p));
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[128];

        persist_free(f->p);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

static void reopen(Fixture *f) {
        f->p = persist_free(f->p);
        assert_int_equal(persist_open(f->dir, NULL, &f->p), 0);
        assert_false(persist_is_new(f->p));
}

typedef struct Collected {
        uint64_t index[64], term[64];
        unsigned type[64];
        char data[64][16];
        unsigned n;
} Collected;

static int collect(uint64_t index, uint64_t term, unsigned type, const void *data, size_t len, void *userdata) {
        Collected *c = userdata;

        assert_true(c->n < 64);
        assert_true(len < 16);
        c->index[c->n] = index;
        c->term[c->n] = term;
        c->type[c->n] = type;
        memcpy(c->data[c->n], data, len);
        c->data[c->n][len] = 0;
        c->n++;
        return 0;
}

static void test_meta_and_hard_state(void **state) {
        Fixture *f = *state;
        PersistMeta m;
        uint64_t term, vote;
        PersistBatch *b = NULL;

        assert_int_equal(persist_meta_load(f->p, &m), 0);
        assert_int_equal(m.member_id, 0xabc);
        assert_int_equal(m.cluster_id, 0xdef);
        assert_int_equal(m.applied_index, 0);
        assert_int_equal(m.etcd_index, 0);

        assert_int_equal(persist_hard_state_load(f->p, &term, &vote), 0);
        assert_int_equal(term, 0);
        assert_int_equal(vote, 0);
        assert_int_equal(persist_set_term(f->p, 7), 0);
        assert_int_equal(persist_set_vote(f->p, 0xabc), 0);

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        persist_batch_applied(b, 42, 17);
        assert_int_equal(persist_batch_count(b), 1);
        assert_int_equal(persist_write(b, false), 0);
        assert_int_equal(persist_batch_count(b), 0);
        persist_batch_free(b);

        reopen(f);
        assert_int_equal(persist_hard_state_load(f->p, &term, &vote), 0);
        assert_int_equal(term, 7);
        assert_int_equal(vote, 0xabc);
        assert_int_equal(persist_set_term(f->p, 8), 0);   /* a new term clears the vote */
        assert_int_equal(persist_hard_state_load(f->p, &term, &vote), 0);
        assert_int_equal(term, 8);
        assert_int_equal(vote, 0);
        assert_int_equal(persist_meta_load(f->p, &m), 0);
        assert_int_equal(m.applied_index, 42);
        assert_int_equal(m.etcd_index, 17);
}

static void test_log_append_truncate(void **state) {
        Fixture *f = *state;
        PersistBatch *b = NULL;
        Collected c = {};
        uint64_t first, last;
        char data[8];

        assert_int_equal(persist_log_bounds(f->p, &first, &last), 0);
        assert_int_equal(first, 0);
        assert_int_equal(last, 0);

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        for (uint64_t i = 1; i <= 10; i++) {
                snprintf(data, sizeof(data), "e%" PRIu64, i);
                persist_batch_log_append(b, i, i / 4 + 1, i == 1 ? 3 : 1, data, strlen(data));
        }
        persist_batch_log_append(b, 11, 3, 2, NULL, 0);   /* empty data */
        /* truncation is ordered within the batch: 9..11 go, then 9 comes back */
        persist_batch_log_truncate(b, 9);
        persist_batch_log_append(b, 9, 4, 1, "new9", 4);
        assert_int_equal(persist_write(b, true), 0);
        persist_batch_free(b);

        reopen(f);
        assert_int_equal(persist_log_bounds(f->p, &first, &last), 0);
        assert_int_equal(first, 1);
        assert_int_equal(last, 9);
        assert_int_equal(persist_log_foreach(f->p, 1, collect, &c), 0);
        assert_int_equal(c.n, 9);
        assert_int_equal(c.index[0], 1);
        assert_int_equal(c.type[0], 3);
        assert_string_equal(c.data[0], "e1");
        assert_int_equal(c.term[4], 5 / 4 + 1);
        assert_string_equal(c.data[8], "new9");
        assert_int_equal(c.term[8], 4);

        memset(&c, 0, sizeof(c));
        assert_int_equal(persist_log_foreach(f->p, 5, collect, &c), 0);
        assert_int_equal(c.n, 5);
        assert_int_equal(c.index[0], 5);
}

static void test_snapshot_record(void **state) {
        Fixture *f = *state;
        PersistBatch *b = NULL;
        PersistSnapshot s = {
                .index = 6, .term = 2, .conf_index = 1,
                .conf = (void *) "CONF", .conf_len = 4,
                .data = (void *) "MARKER", .data_len = 6,
        }, out = {};
        uint64_t first, last;

        assert_int_equal(persist_snapshot_load(f->p, &out), 0);
        assert_int_equal(out.index, 0);

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        for (uint64_t i = 1; i <= 10; i++)
                persist_batch_log_append(b, i, 1, 1, "x", 1);
        persist_batch_snapshot_put(b, &s, 4);   /* keep 4.. */
        assert_int_equal(persist_write(b, true), 0);
        persist_batch_free(b);

        reopen(f);
        assert_int_equal(persist_log_bounds(f->p, &first, &last), 0);
        assert_int_equal(first, 4);
        assert_int_equal(last, 10);
        assert_int_equal(persist_snapshot_load(f->p, &out), 0);
        assert_int_equal(out.index, 6);
        assert_int_equal(out.term, 2);
        assert_int_equal(out.conf_index, 1);
        assert_int_equal(out.conf_len, 4);
        assert_memory_equal(out.conf, "CONF", 4);
        assert_int_equal(out.data_len, 6);
        assert_memory_equal(out.data, "MARKER", 6);
        persist_snapshot_done(&out);

        /* the synchronous variant, replacing everything */
        s.index = 10;
        assert_int_equal(persist_snapshot_put(f->p, &s, UINT64_MAX), 0);
        assert_int_equal(persist_log_bounds(f->p, &first, &last), 0);
        assert_int_equal(first, 0);
        assert_int_equal(persist_snapshot_load(f->p, &out), 0);
        assert_int_equal(out.index, 10);
        persist_snapshot_done(&out);
}

/* Deleting a node deletes exactly its subtree: "/1/a" takes "/1/a/b" but not "/1/a-b" nor "/1/ab". */
static void test_node_delete_ranges(void **state) {
        Fixture *f = *state;
        static const char *const keys[] = { "/1", "/1/a", "/1/a-b", "/1/a/b", "/1/a/b/c", "/1/ab", "/1/b" };
        PersistBatch *b = NULL;
        rocksdb_options_t *o;
        rocksdb_readoptions_t *ro;
        const char *names[] = { "default", "log", "hardstate", "snapshot", "nodes", "history", "meta" };
        const rocksdb_options_t *opts[7];
        rocksdb_column_family_handle_t *h[7];
        char path[128], *err = NULL;
        rocksdb_t *db;

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                persist_batch_node_put(b, keys[i], "rec", 3);
        persist_batch_node_delete(b, "/1/a");
        assert_int_equal(persist_write(b, false), 0);
        persist_batch_free(b);
        f->p = persist_free(f->p);

        o = rocksdb_options_create();
        for (int i = 0; i < 7; i++)
                opts[i] = o;
        snprintf(path, sizeof(path), "%s/member", f->dir);
        db = rocksdb_open_column_families(o, path, 7, names, opts, h, &err);
        assert_null(err);
        ro = rocksdb_readoptions_create();
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                size_t len;
                char *v = rocksdb_get_cf(db, ro, h[4], keys[i], strlen(keys[i]), &len, &err);
                bool expect = !streq(keys[i], "/1/a") && !strneq(keys[i], "/1/a/", 5);

                assert_null(err);
                if (expect != (v != NULL))
                        fail_msg("key %s: expected %s", keys[i], expect ? "present" : "deleted");
                rocksdb_free(v);
        }
        rocksdb_readoptions_destroy(ro);
        for (int i = 0; i < 7; i++)
                rocksdb_column_family_handle_destroy(h[i]);
        rocksdb_close(db);
        rocksdb_options_destroy(o);
        assert_int_equal(persist_open(f->dir, NULL, &f->p), 0);
}

static void test_wal_dir(void **state) {
        Fixture *f = *state;
        char data[96], wal[96], cmd[256];
        Persist *p = NULL;
        PersistBatch *b = NULL;
        Collected c = {};

        snprintf(data, sizeof(data), "%s/other", f->dir);
        snprintf(wal, sizeof(wal), "%s/wal-elsewhere", f->dir);
        assert_int_equal(persist_open(data, wal, &p), 0);
        assert_int_equal(persist_meta_init(p, 1, 2), 0);
        assert_int_equal(persist_batch_new(p, &b), 0);
        persist_batch_log_append(b, 1, 1, 1, "w", 1);
        assert_int_equal(persist_write(b, true), 0);
        persist_batch_free(b);
        persist_free(p);
        /* the WAL files went to --wal-dir */
        snprintf(cmd, sizeof(cmd), "ls '%s' | grep -q '\\.log$'", wal);
        assert_int_equal(system(cmd), 0);

        assert_int_equal(persist_open(data, wal, &p), 0);
        assert_int_equal(persist_log_foreach(p, 1, collect, &c), 0);
        assert_int_equal(c.n, 1);
        p = persist_free(p);

        /* without (or with another) --wal-dir the newest writes would be missing: refused */
        assert_int_equal(persist_open(data, NULL, &p), -EUCLEAN);
        assert_null(p);
        assert_int_equal(persist_open(data, "/tmp", &p), -EUCLEAN);
}

typedef struct ExportSeen {
        unsigned n_header, n_nodes, n_history;
        char keys[8][32];
} ExportSeen;

static int export_cb(char kind, const void *key, size_t key_len, const void *value, size_t value_len, void *userdata) {
        ExportSeen *e = userdata;

        if (kind == 0)
                e->n_header++;
        else if (kind == 'n') {
                assert_true(e->n_nodes < 8 && key_len < 32);
                memcpy(e->keys[e->n_nodes], key, key_len);
                e->keys[e->n_nodes][key_len] = 0;
                e->n_nodes++;
        } else {
                assert_int_equal(kind, 'h');
                assert_int_equal(key_len, 8);
                e->n_history++;
        }
        return 0;
}

static void test_export_and_clear(void **state) {
        Fixture *f = *state;
        PersistBatch *b = NULL;
        ExportSeen e = {};
        uint64_t applied = 0, etcd_index = 0;

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        persist_batch_node_put(b, "/1", "d", 1);
        persist_batch_node_put(b, "/1/a", "x", 1);
        persist_batch_node_put(b, "/1/b", "y", 1);
        persist_batch_history_add(b, 5, "e5", 2);
        persist_batch_history_add(b, 6, "e6", 2);
        persist_batch_applied(b, 40, 6);
        assert_int_equal(persist_write(b, true), 0);

        assert_int_equal(persist_export(f->p, &applied, &etcd_index, export_cb, &e), 0);
        assert_int_equal(applied, 40);
        assert_int_equal(etcd_index, 6);
        assert_int_equal(e.n_header, 1);
        assert_int_equal(e.n_nodes, 3);
        assert_string_equal(e.keys[0], "/1");
        assert_string_equal(e.keys[2], "/1/b");
        assert_int_equal(e.n_history, 2);

        /* Clearing drops nodes and history, not the meta. */
        persist_batch_state_clear(b);
        persist_batch_node_put(b, "/2", "d", 1);
        persist_batch_history_put_raw(b, "\0\0\0\0\0\0\0\7", 8, "e7", 2);
        persist_batch_applied(b, 50, 7);
        assert_int_equal(persist_write(b, true), 0);
        e = (ExportSeen) {};
        assert_int_equal(persist_export(f->p, &applied, &etcd_index, export_cb, &e), 0);
        assert_int_equal(applied, 50);
        assert_int_equal(e.n_nodes, 1);
        assert_string_equal(e.keys[0], "/2");
        assert_int_equal(e.n_history, 1);
        persist_batch_free(b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_meta_and_hard_state, setup, teardown),
                cmocka_unit_test_setup_teardown(test_log_append_truncate, setup, teardown),
                cmocka_unit_test_setup_teardown(test_snapshot_record, setup, teardown),
                cmocka_unit_test_setup_teardown(test_node_delete_ranges, setup, teardown),
                cmocka_unit_test_setup_teardown(test_wal_dir, setup, teardown),
                cmocka_unit_test_setup_teardown(test_export_and_clear, setup, teardown),
        };

        log_set_max_level(LOG_WARNING);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
