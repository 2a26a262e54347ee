/* SPDX-License-Identifier: Apache-2.0 */
/* test-server.c - the single-member server end to end: proposals, restart, snapshots, kill -9. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <raft.h>
#include <rocksdb/c.h>

#include "log.h"
#include "persist.h"
#include "server.h"
#include "test-util.h"

#define MEMBER_ID UINT64_C(0xce2a822cea30bfca)
#define CLUSTER_ID UINT64_C(0x7e27652122e8b2ae)

static EtcdUrl peer_url = { .str = (char *) "http://127.0.0.1:2380", .scheme = (char *) "http",
                            .host = (char *) "127.0.0.1", .port = 2380 };
static EtcdUrl client_url = { .str = (char *) "http://127.0.0.1:2379", .scheme = (char *) "http",
                              .host = (char *) "127.0.0.1", .port = 2379 };

typedef struct Fixture {
        char dir[64];
        Config config;
        sd_event *event;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-server-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        f->config = (Config) {
                .name = (char *) "default",
                .data_dir = f->dir,
                .snapshot_count = 10000,
                .heartbeat_interval_ms = 100,
                .election_timeout_ms = 1000,
                .initial_advertise_peer_urls = { &peer_url, 1 },
                .advertise_client_urls = { &client_url, 1 },
                .member_id = MEMBER_ID,
                .cluster_id = CLUSTER_ID,
        };
        assert_int_equal(sd_event_new(&f->event), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[128];

        sd_event_unref(f->event);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

static uint64_t now_usec(clockid_t c) {
        struct timespec ts;

        clock_gettime(c, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

typedef struct Wait {
        bool done;
        EtcdError error;
        uint64_t index;       /* modifiedIndex of the event */
        char action[32];
        char cause[128];
} Wait;

static void wait_cb(StoreResult *res, void *userdata) {
        Wait *w = userdata;

        assert_false(w->done);
        w->done = true;
        w->error = res->error;
        w->index = res->event ? res->event->index : 0;
        snprintf(w->action, sizeof(w->action), "%s",
                 res->event ? store_action_to_string(res->event->action) : "");
        snprintf(w->cause, sizeof(w->cause), "%s", strempty(res->cause));
}

static void run_until(sd_event *e, const bool *flag, uint64_t timeout_usec) {
        uint64_t end = now_usec(CLOCK_MONOTONIC) + timeout_usec;

        while (!*flag) {
                assert_true(now_usec(CLOCK_MONOTONIC) < end);
                assert_true(sd_event_run(e, 10000) >= 0);
        }
}

static void run_for(sd_event *e, uint64_t usec) {
        uint64_t end = now_usec(CLOCK_MONOTONIC) + usec;

        while (now_usec(CLOCK_MONOTONIC) < end)
                assert_true(sd_event_run(e, 10000) >= 0);
}

static Wait put(Fixture *f, Server *s, const char *path, const char *value, uint64_t expiration_usec) {
        StoreRequest req = {
                .method = STORE_METHOD_PUT,
                .path = path,
                .value = value,
                .value_len = strlen(value),
                .prev_exist = -1,
                .expiration_usec = expiration_usec,
        };
        Wait w = {};
        ServerProposal *p = NULL;

        assert_int_equal(server_propose(s, &req, wait_cb, &w, &p), 0);
        assert_non_null(p);
        assert_false(w.done);   /* never from inside server_propose() */
        run_until(f->event, &w.done, 10 * 1000000);
        return w;
}

static const char *value_of(Server *s, const char *path) {
        const StoreNode *n = store_lookup(server_store(s), path);

        return n ? store_node_value(n, NULL) : NULL;
}

static void test_fresh_then_restart(void **state) {
        Fixture *f = *state;
        Server *s = NULL;
        Wait w;

        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        assert_int_equal(server_member_id(s), MEMBER_ID);
        assert_int_equal(server_cluster_id(s), CLUSTER_ID);

        w = put(f, s, "/1/foo", "bar", 0);
        assert_int_equal(w.error, ETCD_OK);
        assert_string_equal(w.action, "set");
        /* etcd2: raftAttributes (1), attributes (2), version (3): the first user key is 4 */
        assert_int_equal(w.index, 4);
        assert_int_equal(server_role(s), SERVER_ROLE_LEADER);
        assert_int_equal(server_leader_id(s), MEMBER_ID);
        assert_true(server_raft_term(s) >= 1);
        assert_true(server_raft_index(s) >= 6);   /* conf + barrier + 3 internal + ours */
        assert_string_equal(value_of(s, "/0/members/ce2a822cea30bfca/raftAttributes"),
                            "{\"peerURLs\":[\"http://127.0.0.1:2380\"]}");
        assert_string_equal(value_of(s, "/0/members/ce2a822cea30bfca/attributes"),
                            "{\"name\":\"default\",\"clientURLs\":[\"http://127.0.0.1:2379\"]}");
        assert_string_equal(value_of(s, "/0/version"), "2.3.0");
        assert_string_equal(value_of(s, "/1/foo"), "bar");
        assert_int_equal(server_n_pending(s), 0);
        s = server_free(s);

        /* A different --initial-cluster does not matter any more: the data dir wins. */
        f->config.member_id = 0x1234;
        f->config.cluster_id = 0x5678;
        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        assert_int_equal(server_member_id(s), MEMBER_ID);
        assert_int_equal(server_cluster_id(s), CLUSTER_ID);
        assert_string_equal(value_of(s, "/1/foo"), "bar");
        w = put(f, s, "/1/foo2", "baz", 0);
        /* attributes are published again on every start (5), so the next key gets 6 */
        assert_int_equal(w.index, 6);
        assert_int_equal(store_index(server_store(s)), 6);
        {
                const StoreNode *n = store_lookup(server_store(s), "/0/members/ce2a822cea30bfca/raftAttributes");
                assert_non_null(n);
        }
        s = server_free(s);
}

static void test_qget_and_errors(void **state) {
        Fixture *f = *state;
        StoreRequest req = { .method = STORE_METHOD_QGET, .path = "/1/foo", .prev_exist = -1 };
        Server *s = NULL;
        Wait w = {};

        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        put(f, s, "/1/foo", "bar", 0);
        assert_int_equal(server_propose(s, &req, wait_cb, &w, NULL), 0);
        run_until(f->event, &w.done, 5000000);
        assert_int_equal(w.error, ETCD_OK);
        assert_string_equal(w.action, "get");

        /* a store-level failure is an answer like any other */
        memset(&w, 0, sizeof(w));
        req = (StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/foo", .value = "x", .value_len = 1,
                               .prev_exist = 1, .prev_value = "nope" };
        assert_int_equal(server_propose(s, &req, wait_cb, &w, NULL), 0);
        run_until(f->event, &w.done, 5000000);
        assert_int_equal(w.error, ETCD_ERROR_TEST_FAILED);
        s = server_free(s);
}

static void test_cancel(void **state) {
        Fixture *f = *state;
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/c", .value = "v", .value_len = 1,
                             .prev_exist = -1 };
        ServerProposal *p = NULL;
        Server *s = NULL;
        Wait w = {}, w2;

        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        assert_int_equal(server_propose(s, &req, wait_cb, &w, &p), 0);
        server_proposal_cancel(p);
        w2 = put(f, s, "/1/d", "v", 0);
        assert_int_equal(w2.error, ETCD_OK);
        assert_false(w.done);
        assert_string_equal(value_of(s, "/1/c"), "v");
        s = server_free(s);
}

/* Proposals made before the server leads and right before server_free() are answered. */
static void test_free_answers_pending(void **state) {
        Fixture *f = *state;
        Wait w[8] = {};
        Server *s = NULL;
        char path[32];

        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        for (int i = 0; i < 8; i++) {
                StoreRequest req = { .method = STORE_METHOD_PUT, .path = path, .value = "v", .value_len = 1,
                                     .prev_exist = -1 };

                snprintf(path, sizeof(path), "/1/p%d", i);
                assert_int_equal(server_propose(s, &req, wait_cb, &w[i], NULL), 0);
        }
        assert_int_equal(server_n_pending(s), 8);
        s = server_free(s);
        for (int i = 0; i < 8; i++)
                assert_true(w[i].done);

        /* whatever was acknowledged OK is there after a restart */
        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        for (int i = 0; i < 8; i++) {
                snprintf(path, sizeof(path), "/1/p%d", i);
                if (w[i].error == ETCD_OK)
                        assert_non_null(value_of(s, path));
                else
                        assert_int_equal(w[i].error, ETCD_ERROR_RAFT_INTERNAL);
        }
        assert_int_equal(server_propose(s, &(StoreRequest) { .method = STORE_METHOD_PUT, .path = "/1/x" },
                                        NULL, NULL, NULL), 0);
        s = server_free(s);
}

static int dummy_watch_cb(StoreWatcher *w, StoreEvent *e, void *userdata) {
        return 0;
}

static void test_ttl_expires(void **state) {
        Fixture *f = *state;
        Server *s = NULL;
        StoreWatcher *watcher = NULL;
        StoreEvent *ev = NULL;
        char *cause = NULL;
        Wait w;

        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        w = put(f, s, "/1/ttl", "v", now_usec(CLOCK_REALTIME) + 300000);
        assert_int_equal(w.error, ETCD_OK);
        assert_non_null(value_of(s, "/1/ttl"));
        run_for(f->event, 800000);
        assert_null(value_of(s, "/1/ttl"));
        /* the expiry is an event in history */
        assert_int_equal(store_watch(server_store(s), "/1/ttl", false, false, w.index + 1, dummy_watch_cb, NULL,
                                     &watcher, &ev, &cause), 0);
        assert_non_null(ev);
        assert_int_equal(ev->action, STORE_ACTION_EXPIRE);
        store_event_unref(ev);

        /* two expirations: the timer re-arms for the later one */
        {
                uint64_t now = now_usec(CLOCK_REALTIME);

                assert_int_equal(put(f, s, "/1/t1", "v", now + 200000).error, ETCD_OK);
                assert_int_equal(put(f, s, "/1/t2", "v", now + 900000).error, ETCD_OK);
                run_for(f->event, 500000);
                assert_null(value_of(s, "/1/t1"));
                assert_non_null(value_of(s, "/1/t2"));
                run_for(f->event, 700000);
                assert_null(value_of(s, "/1/t2"));
        }
        s = server_free(s);
}

static int count_entries(uint64_t index, uint64_t term, unsigned type, const void *data, size_t len, void *u) {
        (*(unsigned *) u)++;
        return 0;
}

static void test_snapshot_compacts_and_restarts(void **state) {
        Fixture *f = *state;
        Persist *p = NULL;
        Server *s = NULL;
        uint64_t first, last, index = 0;
        unsigned n = 0;
        char path[32], value[32];

        f->config.snapshot_count = 16;
        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        for (int i = 0; i < 1300; i++) {
                Wait w;

                snprintf(path, sizeof(path), "/1/dir/k%03d", i);
                snprintf(value, sizeof(value), "v%d", i);
                w = put(f, s, path, value, 0);
                assert_int_equal(w.error, ETCD_OK);
                index = w.index;
        }
        s = server_free(s);

        assert_int_equal(persist_open(f->dir, NULL, &p), 0);
        assert_int_equal(persist_log_bounds(p, &first, &last), 0);
        assert_true(first > 1200);
        assert_true(last - first < 64);
        assert_int_equal(persist_log_foreach(p, 1, count_entries, &n), 0);
        assert_int_equal(n, last - first + 1);
        p = persist_free(p);

        for (int round = 0; round < 2; round++) {
                assert_int_equal(server_new(f->event, &f->config, &s), 0);
                for (int i = 0; i < 1300; i++) {
                        snprintf(path, sizeof(path), "/1/dir/k%03d", i);
                        snprintf(value, sizeof(value), "v%d", i);
                        assert_string_equal(value_of(s, path), value);
                }
                /* the 1000-event window is served after the restart, and nothing older */
                {
                        StoreWatcher *watcher = NULL;
                        StoreEvent *ev = NULL;
                        char *cause = NULL;
                        uint64_t cur = store_index(server_store(s));

                        assert_int_equal(store_watch(server_store(s), "/1/dir", true, false, cur - 999,
                                                     dummy_watch_cb, NULL, &watcher, &ev, &cause), 0);
                        assert_non_null(ev);
                        assert_int_equal(ev->index, cur - 999);
                        store_event_unref(ev);
                        ev = NULL;
                        assert_int_equal(store_watch(server_store(s), "/1/dir", true, false, cur - 1000,
                                                     dummy_watch_cb, NULL, &watcher, &ev, &cause),
                                         ETCD_ERROR_EVENT_INDEX_CLEARED);
                        free(cause);
                }
                /* history survives: the last write is still watchable by index */
                {
                        StoreWatcher *watcher = NULL;
                        StoreEvent *ev = NULL;
                        char *cause = NULL;

                        assert_int_equal(store_watch(server_store(s), "/1/dir/k1299", false, false, index,
                                                     dummy_watch_cb, NULL, &watcher, &ev, &cause), 0);
                        assert_non_null(ev);
                        assert_int_equal(ev->index, index);
                        store_event_unref(ev);
                }
                {
                        Wait w = put(f, s, "/1/after", "x", 0);
                        /* one attributes publish per start, then this key */
                        assert_int_equal(w.index, index + 2 + 2 * (uint64_t) round);
                }
                s = server_free(s);
        }
}

static void write_file(const char *path, const char *content) {
        FILE *fp = fopen(path, "we");

        assert_non_null(fp);
        fputs(content, fp);
        fclose(fp);
}

static void test_foreign_data_dirs(void **state) {
        Fixture *f = *state;
        char path[256];
        Server *s = NULL;

        /* etcd's WAL layout */
        snprintf(path, sizeof(path), "%s/member", f->dir);
        assert_int_equal(mkdir(path, 0700), 0);
        snprintf(path, sizeof(path), "%s/member/wal", f->dir);
        assert_int_equal(mkdir(path, 0700), 0);
        snprintf(path, sizeof(path), "%s/member/snap", f->dir);
        assert_int_equal(mkdir(path, 0700), 0);
        assert_true(server_new(f->event, &f->config, &s) < 0);
        assert_null(s);
        snprintf(path, sizeof(path), "rm -rf '%s/member'", f->dir);
        assert_int_equal(system(path), 0);

        /* garbage */
        snprintf(path, sizeof(path), "%s/member", f->dir);
        assert_int_equal(mkdir(path, 0700), 0);
        snprintf(path, sizeof(path), "%s/member/garbage", f->dir);
        write_file(path, "hello");
        assert_true(server_new(f->event, &f->config, &s) < 0);
        /* a CURRENT file that is garbage */
        snprintf(path, sizeof(path), "%s/member/CURRENT", f->dir);
        write_file(path, "MANIFEST-000999\n");
        assert_true(server_new(f->event, &f->config, &s) < 0);
        snprintf(path, sizeof(path), "rm -rf '%s/member'", f->dir);
        assert_int_equal(system(path), 0);

        /* a RocksDB with other column families */
        {
                rocksdb_options_t *o = rocksdb_options_create();
                const char *names[] = { "default", "foo" };
                const rocksdb_options_t *opts[] = { o, o };
                rocksdb_column_family_handle_t *h[2];
                char *err = NULL;
                rocksdb_t *db;

                rocksdb_options_set_create_if_missing(o, 1);
                rocksdb_options_set_create_missing_column_families(o, 1);
                snprintf(path, sizeof(path), "%s/member", f->dir);
                db = rocksdb_open_column_families(o, path, 2, names, opts, h, &err);
                assert_null(err);
                rocksdb_column_family_handle_destroy(h[0]);
                rocksdb_column_family_handle_destroy(h[1]);
                rocksdb_close(db);
                rocksdb_options_destroy(o);
        }
        assert_true(server_new(f->event, &f->config, &s) < 0);
        snprintf(path, sizeof(path), "rm -rf '%s/member'", f->dir);
        assert_int_equal(system(path), 0);

        /* our layout, but a format marker from the future */
        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        s = server_free(s);
        {
                rocksdb_options_t *o = rocksdb_options_create();
                const char *names[] = { "default", "log", "hardstate", "snapshot", "nodes", "history", "meta" };
                const rocksdb_options_t *opts[7] = { o, o, o, o, o, o, o };
                rocksdb_column_family_handle_t *h[7];
                rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
                char *err = NULL;
                rocksdb_t *db;

                snprintf(path, sizeof(path), "%s/member", f->dir);
                db = rocksdb_open_column_families(o, path, 7, names, opts, h, &err);
                assert_null(err);
                rocksdb_put_cf(db, wo, h[6], "format", 6, "etcd2-rocksdb-99", 16, &err);
                assert_null(err);
                for (int i = 0; i < 7; i++)
                        rocksdb_column_family_handle_destroy(h[i]);
                rocksdb_close(db);
                rocksdb_writeoptions_destroy(wo);
                rocksdb_options_destroy(o);
        }
        assert_true(server_new(f->event, &f->config, &s) < 0);
}

/* Without a quorum (a second voter that never answers) proposals time out after 5 s + 2 election
 * timeouts with etcd2's error, and the member does not claim to lead. */
static void test_no_quorum_times_out(void **state) {
        Fixture *f = *state;
        struct raft_configuration conf;
        struct raft_buffer buf;
        PersistBatch *b = NULL;
        Persist *p = NULL;
        Server *s = NULL;
        uint64_t t0, dt;
        Wait w = {};
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/q", .value = "v", .value_len = 1,
                             .prev_exist = -1 };

        /* a data dir bootstrapped with two voters, as the next issue's clusters will be */
        assert_int_equal(persist_open(f->dir, NULL, &p), 0);
        assert_int_equal(persist_meta_init(p, MEMBER_ID, CLUSTER_ID), 0);
        raft_configuration_init(&conf);
        assert_int_equal(raft_configuration_add(&conf, MEMBER_ID, "http://127.0.0.1:2380", RAFT_VOTER), 0);
        assert_int_equal(raft_configuration_add(&conf, 0x42, "http://127.0.0.1:2390", RAFT_VOTER), 0);
        assert_int_equal(raft_configuration_encode(&conf, &buf), 0);
        raft_configuration_close(&conf);
        assert_int_equal(persist_batch_new(p, &b), 0);
        persist_batch_log_append(b, 1, 1, RAFT_CHANGE, buf.base, buf.len);
        persist_batch_term(b, 1);
        assert_int_equal(persist_write(b, true), 0);
        raft_free(buf.base);
        persist_batch_free(b);
        persist_free(p);

        f->config.heartbeat_interval_ms = 10;
        f->config.election_timeout_ms = 50;
        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        t0 = now_usec(CLOCK_MONOTONIC);
        assert_int_equal(server_propose(s, &req, wait_cb, &w, NULL), 0);
        run_until(f->event, &w.done, 10 * 1000000);
        dt = now_usec(CLOCK_MONOTONIC) - t0;
        assert_int_equal(w.error, ETCD_ERROR_RAFT_INTERNAL);
        assert_string_equal(w.cause, "etcdserver: request timed out");
        assert_true(dt >= 5100000 && dt < 5600000);
        assert_int_not_equal(server_role(s), SERVER_ROLE_LEADER);
        assert_int_equal(server_leader_id(s), 0);
        assert_true(server_raft_term(s) > 1);      /* it kept trying elections */
        assert_null(value_of(s, "/1/q"));
        assert_int_equal(server_n_pending(s), 0);
        s = server_free(s);
}

/* A log with a hole (entry 1 gone, no snapshot) is refused with an error, not half-loaded. */
static void test_corrupt_log(void **state) {
        Fixture *f = *state;
        Server *s = NULL;
        char path[256];

        assert_int_equal(server_new(f->event, &f->config, &s), 0);
        put(f, s, "/1/a", "b", 0);
        s = server_free(s);
        {
                rocksdb_options_t *o = rocksdb_options_create();
                const char *names[] = { "default", "log", "hardstate", "snapshot", "nodes", "history", "meta" };
                const rocksdb_options_t *opts[7] = { o, o, o, o, o, o, o };
                rocksdb_column_family_handle_t *h[7];
                rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
                const char key[8] = { 0, 0, 0, 0, 0, 0, 0, 1 };
                char *err = NULL;
                rocksdb_t *db;

                snprintf(path, sizeof(path), "%s/member", f->dir);
                db = rocksdb_open_column_families(o, path, 7, names, opts, h, &err);
                assert_null(err);
                rocksdb_delete_cf(db, wo, h[1], key, 8, &err);
                assert_null(err);
                for (int i = 0; i < 7; i++)
                        rocksdb_column_family_handle_destroy(h[i]);
                rocksdb_close(db);
                rocksdb_writeoptions_destroy(wo);
                rocksdb_options_destroy(o);
        }
        assert_true(server_new(f->event, &f->config, &s) < 0);
        assert_null(s);
}

/* kill -9 at a random moment: every acknowledged write is there afterwards, with its index. */
#define KILL_KEYS 100000
#define KILL_WINDOW 32
#define KILL_ROUNDS 8
#define KILL_SNAPSHOT_COUNT 128   /* snapshots (and log compaction) happen all the time */

typedef struct Child {
        Server *server;
        int fd;
        unsigned next, base;
        Wait w[KILL_WINDOW];
        unsigned slot_key[KILL_WINDOW];
} Child;

static void child_propose(Child *c, unsigned slot);

typedef struct Slot {
        Child *child;
        unsigned slot;
} Slot;

static Slot slots[KILL_WINDOW];

static void slot_cb(StoreResult *res, void *userdata) {
        Slot *sl = userdata;
        Child *c = sl->child;
        char line[64];
        int n;

        if (res->error != ETCD_OK || !res->event)
                _exit(3);
        n = snprintf(line, sizeof(line), "%u %" PRIu64 "\n", c->slot_key[sl->slot], res->event->index);
        if (write(c->fd, line, n) != n)
                _exit(4);
        child_propose(c, sl->slot);
}

static void child_propose(Child *c, unsigned slot) {
        char path[32], value[32];
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = path, .value = value, .prev_exist = -1 };
        unsigned k = c->base + c->next++;

        snprintf(path, sizeof(path), "/1/kill/k%u", k);
        snprintf(value, sizeof(value), "value-%u", k);
        req.value_len = strlen(value);
        c->slot_key[slot] = k;
        if (server_propose(c->server, &req, slot_cb, &slots[slot], NULL) < 0)
                _exit(5);
}

/* The child side of test_kill9: proposes KILL_WINDOW writes at a time forever, reports each ack. */
static int kill9_child(void) {
        static Child c;
        Fixture *f;

        log_set_max_level(LOG_WARNING);
        c.fd = atoi(getenv("TEST_SERVER_KILL9_FD"));
        c.base = (unsigned) atoi(getenv("TEST_SERVER_KILL9_BASE"));
        if (setup((void **) &f) < 0)
                return 1;
        (void) rmdir(f->dir);
        f->config.data_dir = getenv("TEST_SERVER_KILL9_DIR");
        f->config.snapshot_count = KILL_SNAPSHOT_COUNT;
        if (server_new(f->event, &f->config, &c.server) < 0)
                return 2;
        for (unsigned i = 0; i < KILL_WINDOW; i++) {
                slots[i] = (Slot) { &c, i };
                child_propose(&c, i);
        }
        for (;;)
                if (sd_event_run(f->event, UINT64_MAX) < 0)
                        return 6;
}

static void test_kill9(void **state) {
        Fixture *f = *state;
        static uint64_t acked_index[KILL_ROUNDS * KILL_KEYS];
        static bool acked[KILL_ROUNDS * KILL_KEYS];
        unsigned seed = (unsigned) time(NULL) ^ (unsigned) getpid();
        uint64_t max_index = 0;
        unsigned total_acked = 0;

        f->config.snapshot_count = KILL_SNAPSHOT_COUNT;
        printf("# kill9 seed %u\n", seed);
        for (unsigned round = 0; round < KILL_ROUNDS; round++) {
                int fds[2];
                pid_t pid;
                /* some kills hit the start-up (the very first one: the creation of the data dir) */
                bool early = round == 0 || rand_r(&seed) % 3 == 0;
                unsigned kill_after = early ? rand_r(&seed) % 3 : 200 + rand_r(&seed) % 3000, got = 0;
                FILE *in;
                char line[64];
                Server *s = NULL;

                assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
                pid = fork();
                assert_true(pid >= 0);
                if (pid == 0) {
                        /* A fresh process: RocksDB's background threads do not survive fork(). */
                        char fdstr[16], basestr[16];

                        snprintf(fdstr, sizeof(fdstr), "%d", fds[1]);
                        snprintf(basestr, sizeof(basestr), "%u", round * KILL_KEYS);
                        (void) fcntl(fds[1], F_SETFD, 0);
                        setenv("TEST_SERVER_KILL9_FD", fdstr, 1);
                        setenv("TEST_SERVER_KILL9_BASE", basestr, 1);
                        setenv("TEST_SERVER_KILL9_DIR", f->dir, 1);
                        execl("/proc/self/exe", "test-server", NULL);
                        _exit(7);
                }
                close(fds[1]);
                in = fdopen(fds[0], "r");
                assert_non_null(in);
                while (got < kill_after && fgets(line, sizeof(line), in)) {
                        unsigned k;
                        uint64_t idx;

                        assert_int_equal(sscanf(line, "%u %" SCNu64, &k, &idx), 2);
                        acked[k] = true;
                        acked_index[k] = idx;
                        got++;
                }
                /* a random extra delay, then SIGKILL mid-flight */
                usleep(rand_r(&seed) % (early ? 40000 : 3000));
                assert_int_equal(kill(pid, SIGKILL), 0);
                while (fgets(line, sizeof(line), in)) {
                        unsigned k;
                        uint64_t idx;

                        assert_int_equal(sscanf(line, "%u %" SCNu64, &k, &idx), 2);
                        acked[k] = true;
                        acked_index[k] = idx;
                        got++;
                }
                fclose(in);
                {
                        int status;

                        assert_int_equal(waitpid(pid, &status, 0), pid);
                        assert_true(WIFSIGNALED(status));
                }
                assert_true(got >= kill_after || early);
                total_acked += got;

                assert_int_equal(server_new(f->event, &f->config, &s), 0);
                for (unsigned k = 0; k < KILL_ROUNDS * KILL_KEYS; k++) {
                        char path[32], value[32];
                        const StoreNode *n;

                        if (!acked[k])
                                continue;
                        snprintf(path, sizeof(path), "/1/kill/k%u", k);
                        snprintf(value, sizeof(value), "value-%u", k);
                        n = store_lookup(server_store(s), path);
                        if (!n)
                                fail_msg("acknowledged key %s (index %" PRIu64 ") lost in round %u", path,
                                         acked_index[k], round);
                        assert_string_equal(store_node_value(n, NULL), value);
                        max_index = MAX(max_index, acked_index[k]);
                }
                assert_true(store_index(server_store(s)) >= max_index);
                /* the indexes continue */
                {
                        Wait w = put(f, s, "/1/kill/after", "x", 0);

                        assert_int_equal(w.error, ETCD_OK);
                        assert_true(w.index > max_index);
                }
                s = server_free(s);
        }
        printf("# kill9: %u acknowledged writes survived %u kills\n", total_acked, KILL_ROUNDS);
}


/* Throughput with 1 and 64 proposals in flight, and RSS: run on demand only, with BENCH=1 (and
 * BENCH_N=<writes>); prints writes/s. */
typedef struct Bench {
        Server *server;
        unsigned next, done, total;
        char value[257];
} Bench;

static void bench_propose(Bench *b);

static void bench_cb(StoreResult *res, void *userdata) {
        Bench *b = userdata;

        assert_int_equal(res->error, ETCD_OK);
        b->done++;
        if (b->next < b->total)
                bench_propose(b);
}

static void bench_propose(Bench *b) {
        char path[32];
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = path, .value = b->value, .value_len = 256,
                             .prev_exist = -1 };

        snprintf(path, sizeof(path), "/1/bench/k%u", b->next++);
        assert_int_equal(server_propose(b->server, &req, bench_cb, b, NULL), 0);
}

static void print_rss(const char *what) {
        char line[256];
        FILE *fp = fopen("/proc/self/status", "re");

        while (fp && fgets(line, sizeof(line), fp))
                if (strneq(line, "VmRSS:", 6))
                        printf("# %s %s", what, line);
        if (fp)
                fclose(fp);
}

static void test_bench(void **state) {
        Fixture *f = *state;
        static const unsigned windows[] = { 1, 64 };
        Bench b = {};

        memset(b.value, 'x', 256);
        assert_int_equal(server_new(f->event, &f->config, &b.server), 0);
        put(f, b.server, "/1/warmup", "x", 0);
        print_rss("idle");
        for (size_t i = 0; i < ELEMENTSOF(windows); i++) {
                uint64_t t0, t1;
                bool fin = false;

                b.total = b.next + (windows[i] == 1 ? 5000 : (getenv("BENCH_N") ? (unsigned) atoi(getenv("BENCH_N")) : 100000));
                b.done = 0;
                t0 = now_usec(CLOCK_MONOTONIC);
                for (unsigned k = 0; k < windows[i]; k++)
                        bench_propose(&b);
                while (!fin) {
                        assert_true(sd_event_run(f->event, 10000) >= 0);
                        fin = b.next >= b.total && server_n_pending(b.server) == 0;
                }
                t1 = now_usec(CLOCK_MONOTONIC);
                printf("# %u in flight: %u writes in %.3f s = %.0f/s\n", windows[i], b.done,
                       (t1 - t0) / 1e6, b.done * 1e6 / (t1 - t0));
        }
        print_rss("after");
        b.server = server_free(b.server);
}


/* ---- an in-process cluster on 127.0.0.1 (one sd-event loop, peer transports with own listeners) ---- */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "peer.h"

#define CLUSTER_MAX 5

typedef struct Cluster {
        sd_event *event;
        unsigned n;
        char dirs[CLUSTER_MAX][64];
        char urls[CLUSTER_MAX][64];
        char names[CLUSTER_MAX][16];
        uint16_t ports[CLUSTER_MAX];
        EtcdUrl peer[CLUSTER_MAX];
        ClusterMember members[CLUSTER_MAX];
        Config config[CLUSTER_MAX];
        Server *servers[CLUSTER_MAX];
        bool removed[CLUSTER_MAX];
} Cluster;

static void on_removed(Server *s, void *userdata) {
        bool *flag = userdata;

        *flag = true;
}

static void cluster_start_member(Cluster *c, unsigned i) {
        uint16_t port = c->ports[i];
        int fd = test_listen(&port);

        assert_int_equal(server_new(c->event, &c->config[i], &c->servers[i]), 0);
        assert_int_equal(peer_transport_listen(server_peer_transport(c->servers[i]), fd), 0);
        server_set_removed_callback(c->servers[i], on_removed, &c->removed[i]);
}

static void cluster_stop_member(Cluster *c, unsigned i) {
        c->servers[i] = server_free(c->servers[i]);
}

static void cluster_init(Cluster *c, unsigned n) {
        uint64_t ids[CLUSTER_MAX];
        int fds[CLUSTER_MAX];

        memset(c, 0, sizeof(*c));
        c->n = n;
        assert_int_equal(sd_event_new(&c->event), 0);
        for (unsigned i = 0; i < n; i++) {
                char *u;

                fds[i] = test_listen(&c->ports[i]);   /* reserve distinct free ports */
                snprintf(c->urls[i], sizeof(c->urls[i]), "http://127.0.0.1:%u", c->ports[i]);
                snprintf(c->names[i], sizeof(c->names[i]), "infra%u", i);
                strcpy(c->dirs[i], "/tmp/test-cluster-XXXXXX");
                assert_non_null(mkdtemp(c->dirs[i]));
                c->peer[i] = (EtcdUrl) { .str = c->urls[i], .scheme = (char *) "http", .host = (char *) "127.0.0.1",
                                         .port = c->ports[i] };
                u = c->urls[i];
                ids[i] = etcd_member_id(&u, 1, "test-cluster", 0);
                c->members[i] = (ClusterMember) { .name = c->names[i], .peer_urls = { &c->peer[i], 1 }, .id = ids[i] };
        }
        for (unsigned i = 0; i < n; i++)
                close(fds[i]);
        for (unsigned i = 0; i < n; i++)
                c->config[i] = (Config) {
                        .name = c->names[i],
                        .data_dir = c->dirs[i],
                        .snapshot_count = 10000,
                        .heartbeat_interval_ms = 50,
                        .election_timeout_ms = 500,
                        .initial_advertise_peer_urls = { &c->peer[i], 1 },
                        .advertise_client_urls = { &client_url, 1 },
                        .initial_members = c->members,
                        .n_initial_members = n,
                        .member_id = ids[i],
                        .cluster_id = etcd_cluster_id(ids, n),
                };
        for (unsigned i = 0; i < n; i++)
                cluster_start_member(c, i);
}

static void cluster_done(Cluster *c) {
        char cmd[128];

        for (unsigned i = 0; i < c->n; i++) {
                if (c->servers[i])
                        cluster_stop_member(c, i);
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dirs[i]);
                assert_int_equal(system(cmd), 0);
        }
        sd_event_unref(c->event);
}

/* The index of the one leader all running members agree on, or -1. */
static int cluster_leader(Cluster *c) {
        int leader = -1;

        for (unsigned i = 0; i < c->n; i++)
                if (c->servers[i] && server_role(c->servers[i]) == SERVER_ROLE_LEADER) {
                        if (leader >= 0)
                                return -1;
                        leader = (int) i;
                }
        if (leader < 0)
                return -1;
        for (unsigned i = 0; i < c->n; i++)
                if (c->servers[i] && server_leader_id(c->servers[i]) != server_member_id(c->servers[leader]))
                        return -1;
        return leader;
}

static int cluster_wait_leader(Cluster *c, uint64_t timeout_usec) {
        uint64_t end = now_usec(CLOCK_MONOTONIC) + timeout_usec;
        int l;

        while ((l = cluster_leader(c)) < 0) {
                if (now_usec(CLOCK_MONOTONIC) > end)
                        return -1;
                assert_true(sd_event_run(c->event, 10000) >= 0);
        }
        return l;
}

static Wait cluster_put(Cluster *c, unsigned i, const char *path, const char *value) {
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = path, .value = value, .value_len = strlen(value),
                             .prev_exist = -1 };
        Wait w = {};

        assert_int_equal(server_propose(c->servers[i], &req, wait_cb, &w, NULL), 0);
        run_until(c->event, &w.done, 20 * 1000000);
        return w;
}

/* Runs until every running member has `path` = `value`. */
static void cluster_wait_value(Cluster *c, const char *path, const char *value, uint64_t timeout_usec) {
        uint64_t end = now_usec(CLOCK_MONOTONIC) + timeout_usec;

        for (;;) {
                bool all = true;

                for (unsigned i = 0; i < c->n; i++)
                        if (c->servers[i]) {
                                const char *v = value_of(c->servers[i], path);

                                all = all && v && streq(v, value);
                        }
                if (all)
                        return;
                if (now_usec(CLOCK_MONOTONIC) >= end)
                        for (unsigned i = 0; i < c->n; i++)
                                if (c->servers[i])
                                        print_error("member %u: %s = %s (want %s)\n", i, path,
                                                    strempty(value_of(c->servers[i], path)), value);
                assert_true(now_usec(CLOCK_MONOTONIC) < end);
                assert_true(sd_event_run(c->event, 10000) >= 0);
        }
}

static void test_cluster_replication_and_failover(void **state) {
        Cluster c;
        char path[32], value[128], attr[64];
        int leader, follower, l2;
        uint64_t t0;

        cluster_init(&c, 3);
        leader = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(leader >= 0);

        /* Every member published its attributes through the leader; raftAttributes of all. */
        for (unsigned i = 0; i < 3; i++) {
                snprintf(attr, sizeof(attr), "/0/members/%" PRIx64 "/raftAttributes", c.members[i].id);
                cluster_wait_value(&c, "/0/version", "2.3.0", 5 * 1000000);
                run_for(c.event, 10000);
                snprintf(attr, sizeof(attr), "/0/members/%" PRIx64 "/attributes", c.members[i].id);
                snprintf(value, sizeof(value), "{\"name\":\"infra%u\",", i);
                for (uint64_t end = now_usec(CLOCK_MONOTONIC) + 5000000; ; ) {
                        bool ok = true;

                        for (unsigned k = 0; k < 3; k++) {
                                const char *v = value_of(c.servers[k], attr);
                                ok = ok && v && strncmp(v, value, strlen(value)) == 0;
                        }
                        if (ok)
                                break;
                        assert_true(now_usec(CLOCK_MONOTONIC) < end);
                        assert_true(sd_event_run(c.event, 10000) >= 0);
                }
                snprintf(attr, sizeof(attr), "/0/members/%" PRIx64 "/raftAttributes", c.members[i].id);
                snprintf(value, sizeof(value), "{\"peerURLs\":[\"%s\"]}", c.urls[i]);
                cluster_wait_value(&c, attr, value, 5 * 1000000);
        }

        /* Writes through the leader and through a follower (forwarded, answered on apply). */
        follower = (leader + 1) % 3;
        for (int i = 0; i < 20; i++) {
                Wait w;

                snprintf(path, sizeof(path), "/1/k%d", i);
                snprintf(value, sizeof(value), "v%d", i);
                w = cluster_put(&c, i % 2 ? (unsigned) follower : (unsigned) leader, path, value);
                assert_int_equal(w.error, ETCD_OK);
                assert_string_equal(w.action, "set");
                /* The member that answered has applied it. */
                assert_string_equal(value_of(c.servers[i % 2 ? follower : leader], path), value);
        }
        cluster_wait_value(&c, "/1/k19", "v19", 5 * 1000000);
        /* The same etcd index everywhere. */
        for (unsigned i = 0; i < 3; i++)
                assert_int_equal(store_index(server_store(c.servers[i])), store_index(server_store(c.servers[leader])));

        /* Kill the leader: a new one within 2 election timeouts (+ slack for the loop), no acknowledged write lost. */
        cluster_stop_member(&c, (unsigned) leader);
        t0 = now_usec(CLOCK_MONOTONIC);
        l2 = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(l2 >= 0);
        assert_int_not_equal(l2, leader);
        print_message("# new leader after %.3f s\n", (now_usec(CLOCK_MONOTONIC) - t0) / 1e6);
        assert_true(now_usec(CLOCK_MONOTONIC) - t0 < 2 * 500000 + 500000);
        for (int i = 0; i < 20; i++) {
                snprintf(path, sizeof(path), "/1/k%d", i);
                snprintf(value, sizeof(value), "v%d", i);
                cluster_wait_value(&c, path, value, 1000000);
        }
        {
                unsigned other = 3 - (unsigned) leader - (unsigned) l2;
                Wait w = cluster_put(&c, other, "/1/after", "failover");

                assert_int_equal(w.error, ETCD_OK);
        }

        /* The old leader comes back and catches up. */
        cluster_start_member(&c, (unsigned) leader);
        cluster_wait_value(&c, "/1/after", "failover", 10 * 1000000);
        assert_true(cluster_wait_leader(&c, 5 * 1000000) >= 0);
        cluster_done(&c);
}

static void test_cluster_no_leader_times_out(void **state) {
        Cluster c;
        Wait w = {};
        int leader;
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/x", .value = "y", .value_len = 1, .prev_exist = -1 };
        unsigned f1, f2;

        cluster_init(&c, 3);
        leader = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(leader >= 0);
        f1 = (leader + 1) % 3;
        f2 = (leader + 2) % 3;
        cluster_stop_member(&c, (unsigned) leader);
        cluster_stop_member(&c, f2);
        /* One member of three: no quorum, the proposal times out with etcd's error (5 s + 2 x 0.5 s). */
        assert_int_equal(server_propose(c.servers[f1], &req, wait_cb, &w, NULL), 0);
        run_until(c.event, &w.done, 10 * 1000000);
        assert_int_equal(w.error, ETCD_ERROR_RAFT_INTERNAL);
        assert_true(strstr(w.cause, "timed out") != NULL);
        cluster_done(&c);
}

typedef struct MemberWait {
        bool done;
        int error;
        uint64_t id;
} MemberWait;

static void member_cb(int error, uint64_t id, void *userdata) {
        MemberWait *w = userdata;

        assert_false(w->done);
        w->done = true;
        w->error = error;
        w->id = id;
}

/* Prepares member `i` of the cluster to join: its data dir knows its ID (as fetched from the cluster
 * by a real daemon), and it starts with --initial-cluster-state existing. */
static void cluster_prepare_join(Cluster *c, unsigned i, uint64_t id) {
        Persist *p = NULL;
        uint64_t ids[CLUSTER_MAX];

        assert_int_equal(persist_open(c->dirs[i], NULL, &p), 0);
        assert_int_equal(persist_meta_init(p, id, c->config[0].cluster_id), 0);
        persist_free(p);
        c->members[i].id = id;
        for (unsigned k = 0; k <= i; k++)
                ids[k] = c->members[k].id;
        c->config[i] = c->config[0];
        c->config[i].name = c->names[i];
        c->config[i].data_dir = c->dirs[i];
        c->config[i].initial_advertise_peer_urls = (EtcdUrlList) { &c->peer[i], 1 };
        c->config[i].n_initial_members = i + 1;
        c->config[i].member_id = id;
        c->config[i].initial_cluster_state = CLUSTER_STATE_EXISTING;
        (void) ids;
}

static void run_until_member(Cluster *c, MemberWait *w) {
        run_until(c->event, &w->done, 20 * 1000000);
}

static void test_cluster_membership(void **state) {
        Cluster c;
        MemberWait w = {};
        int leader;
        unsigned follower;
        char *url, path[96], value[128];
        uint64_t now_sec, new_id;

        cluster_init(&c, 3);
        c.n = 4;   /* slot 3: the member we add */
        {
                uint16_t port = 0;
                int fd = test_listen(&port);

                close(fd);
                c.ports[3] = port;
                snprintf(c.urls[3], sizeof(c.urls[3]), "http://127.0.0.1:%u", port);
                snprintf(c.names[3], sizeof(c.names[3]), "infra3");
                strcpy(c.dirs[3], "/tmp/test-cluster-XXXXXX");
                assert_non_null(mkdtemp(c.dirs[3]));
                c.peer[3] = (EtcdUrl) { .str = c.urls[3], .scheme = (char *) "http", .host = (char *) "127.0.0.1",
                                        .port = port };
                c.members[3] = (ClusterMember) { .name = c.names[3], .peer_urls = { &c.peer[3], 1 } };
        }
        leader = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(leader >= 0);
        follower = (unsigned) (leader + 1) % 3;
        assert_true(cluster_put(&c, (unsigned) leader, "/1/before", "join").error == ETCD_OK);

        /* Errors: unknown member, a URL in use. */
        assert_int_equal(server_member_remove(c.servers[follower], 0x1234, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, -ENOENT);
        w = (MemberWait) {};
        url = c.urls[leader];
        assert_int_equal(server_member_add(c.servers[follower], &url, 1, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, -EADDRINUSE);

        /* Add through a follower (forwarded to the leader). */
        w = (MemberWait) {};
        url = c.urls[3];
        now_sec = (uint64_t) time(NULL);
        assert_int_equal(server_member_add(c.servers[follower], &url, 1, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, 0);
        new_id = w.id;
        {
                bool match = false;

                /* etcd2's ID of a member added at runtime: its peer URLs, no token, the Unix time. */
                for (uint64_t t = now_sec; t <= (uint64_t) time(NULL); t++)
                        match = match || new_id == etcd_member_id(&url, 1, "", t);
                assert_true(match);
        }
        snprintf(path, sizeof(path), "/0/members/%" PRIx64 "/raftAttributes", new_id);
        snprintf(value, sizeof(value), "{\"peerURLs\":[\"%s\"]}", c.urls[3]);
        c.n = 3;
        cluster_wait_value(&c, path, value, 5 * 1000000);

        /* The same member again: exists. */
        w = (MemberWait) {};
        assert_int_equal(server_member_add(c.servers[leader], &url, 1, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_true(w.error == -EEXIST || w.error == -EADDRINUSE);

        /* The new member starts (state existing), catches up and serves forwarded writes. */
        cluster_prepare_join(&c, 3, new_id);
        c.n = 4;
        cluster_start_member(&c, 3);
        cluster_wait_value(&c, "/1/before", "join", 10 * 1000000);
        assert_true(cluster_put(&c, 3, "/1/from-new", "x").error == ETCD_OK);
        cluster_wait_value(&c, "/1/from-new", "x", 5 * 1000000);
        snprintf(path, sizeof(path), "/0/members/%" PRIx64 "/attributes", new_id);
        for (uint64_t end = now_usec(CLOCK_MONOTONIC) + 5000000; !value_of(c.servers[leader], path); ) {
                assert_true(now_usec(CLOCK_MONOTONIC) < end);
                assert_true(sd_event_run(c.event, 10000) >= 0);
        }

        /* Remove it: it learns and stops; the cluster goes on. A second removal: gone (410). */
        w = (MemberWait) {};
        assert_int_equal(server_member_remove(c.servers[follower], new_id, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, 0);
        run_until(c.event, &c.removed[3], 10 * 1000000);
        cluster_stop_member(&c, 3);
        snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, new_id);
        for (unsigned i = 0; i < 3; i++)
                assert_non_null(store_lookup(server_store(c.servers[i]), path));
        w = (MemberWait) {};
        assert_int_equal(server_member_remove(c.servers[leader], new_id, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, -EIDRM);
        assert_true(cluster_put(&c, follower, "/1/after", "remove").error == ETCD_OK);

        /* Update a member's peer URLs (same URL set here: just the write). */
        w = (MemberWait) {};
        url = c.urls[follower];
        assert_int_equal(server_member_update(c.servers[leader], c.members[follower].id, &url, 1, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, 0);

        /* The leader removes itself: it stops, the other two elect a leader and go on. */
        c.n = 3;
        leader = cluster_wait_leader(&c, 5 * 1000000);
        assert_true(leader >= 0);
        w = (MemberWait) {};
        assert_int_equal(server_member_remove(c.servers[leader], c.members[leader].id, member_cb, &w), 0);
        run_until(c.event, &c.removed[leader], 10 * 1000000);
        cluster_stop_member(&c, (unsigned) leader);
        {
                int l2 = cluster_wait_leader(&c, 10 * 1000000);

                assert_true(l2 >= 0 && l2 != leader);
                assert_true(cluster_put(&c, (unsigned) l2, "/1/two", "left").error == ETCD_OK);
                cluster_wait_value(&c, "/1/two", "left", 5 * 1000000);
        }
        c.n = 4;
        cluster_done(&c);
}

static void test_cluster_snapshot_catch_up(void **state) {
        Cluster c;
        int leader;
        unsigned lagging;
        char path[32], value[32];

        cluster_init(&c, 3);
        leader = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(leader >= 0);
        /* Restart everyone with a tiny snapshot count (20 entries, 20 kept). */
        for (unsigned i = 0; i < 3; i++) {
                cluster_stop_member(&c, i);
                c.config[i].snapshot_count = 20;
        }
        for (unsigned i = 0; i < 3; i++)
                cluster_start_member(&c, i);
        leader = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(leader >= 0);
        assert_true(cluster_put(&c, (unsigned) leader, "/1/old", "x").error == ETCD_OK);
        assert_true(cluster_put(&c, (unsigned) leader, "/1/gone", "x").error == ETCD_OK);
        cluster_wait_value(&c, "/1/gone", "x", 5 * 1000000);

        /* A follower misses far more than the leader keeps in its log. */
        lagging = (unsigned) (leader + 1) % 3;
        cluster_stop_member(&c, lagging);
        for (int i = 0; i < 150; i++) {
                snprintf(path, sizeof(path), "/1/k%d", i);
                snprintf(value, sizeof(value), "v%d", i);
                assert_true(cluster_put(&c, (unsigned) leader, path, value).error == ETCD_OK);
        }
        {
                StoreRequest del = { .method = STORE_METHOD_DELETE, .path = "/1/gone", .prev_exist = -1 };
                Wait w = {};

                assert_int_equal(server_propose(c.servers[leader], &del, wait_cb, &w, NULL), 0);
                run_until(c.event, &w.done, 10 * 1000000);
                assert_int_equal(w.error, ETCD_OK);
        }
        /* It comes back: a snapshot of the leader's state brings it up to date. */
        cluster_start_member(&c, lagging);
        cluster_wait_value(&c, "/1/k149", "v149", 10 * 1000000);
        for (int i = 0; i < 150; i++) {
                snprintf(path, sizeof(path), "/1/k%d", i);
                snprintf(value, sizeof(value), "v%d", i);
                assert_string_equal(value_of(c.servers[lagging], path), value);
        }
        assert_string_equal(value_of(c.servers[lagging], "/1/old"), "x");
        /* The same etcd index as the leader, and it keeps up with new writes. */
        assert_true(cluster_put(&c, (unsigned) leader, "/1/new", "y").error == ETCD_OK);
        cluster_wait_value(&c, "/1/new", "y", 5 * 1000000);
        assert_null(value_of(c.servers[lagging], "/1/gone"));
        assert_int_equal(store_index(server_store(c.servers[lagging])), store_index(server_store(c.servers[leader])));

        /* The installed state is durable: a restart comes back with it. */
        cluster_stop_member(&c, lagging);
        cluster_start_member(&c, lagging);
        assert_string_equal(value_of(c.servers[lagging], "/1/k77"), "v77");
        assert_string_equal(value_of(c.servers[lagging], "/1/new"), "y");
        cluster_wait_value(&c, "/1/new", "y", 5 * 1000000);
        cluster_done(&c);
}

static void test_cluster_force_new_cluster(void **state) {
        Cluster c;
        int leader;
        char path[96];

        cluster_init(&c, 3);
        leader = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(leader >= 0);
        assert_true(cluster_put(&c, (unsigned) leader, "/1/kept", "yes").error == ETCD_OK);
        cluster_wait_value(&c, "/1/kept", "yes", 5 * 1000000);
        for (unsigned i = 0; i < 3; i++)
                cluster_stop_member(&c, i);

        /* Member 1 survives alone: it leads, keeps the data, and the others are removed. */
        c.config[1].force_new_cluster = true;
        cluster_start_member(&c, 1);
        assert_int_equal(cluster_wait_leader(&c, 5 * 1000000), 1);
        assert_string_equal(value_of(c.servers[1], "/1/kept"), "yes");
        assert_true(cluster_put(&c, 1, "/1/alone", "ok").error == ETCD_OK);
        for (unsigned i = 0; i < 3; i++) {
                snprintf(path, sizeof(path), "/0/members/%" PRIx64 "/raftAttributes", c.members[i].id);
                if (i == 1)
                        assert_non_null(store_lookup(server_store(c.servers[1]), path));
                else {
                        assert_null(store_lookup(server_store(c.servers[1]), path));
                        snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, c.members[i].id);
                        assert_non_null(store_lookup(server_store(c.servers[1]), path));
                }
        }
        /* A normal restart afterwards stays a one-member cluster. */
        cluster_stop_member(&c, 1);
        c.config[1].force_new_cluster = false;
        cluster_start_member(&c, 1);
        assert_int_equal(cluster_wait_leader(&c, 5 * 1000000), 1);
        assert_string_equal(value_of(c.servers[1], "/1/alone"), "ok");
        cluster_done(&c);
}

static void test_cluster_acked_writes_survive(void **state) {
        Cluster c;
        Wait w[300] = {};
        char paths[300][32];
        int leader;
        unsigned n_ok = 0, n_err = 0;
        uint64_t end;

        cluster_init(&c, 3);
        leader = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(leader >= 0);
        /* Writes in flight through every member while the leader dies. */
        for (unsigned i = 0; i < 300; i++) {
                unsigned m = i % 3;
                StoreRequest req = { .method = STORE_METHOD_PUT, .path = paths[i], .value = "v", .value_len = 1,
                                     .prev_exist = -1 };

                snprintf(paths[i], sizeof(paths[i]), "/1/c%u", i);
                if (i == 150) {
                        cluster_stop_member(&c, (unsigned) leader);
                }
                if (!c.servers[m]) {
                        w[i].done = true;
                        w[i].error = ETCD_ERROR_RAFT_INTERNAL;
                        continue;
                }
                assert_int_equal(server_propose(c.servers[m], &req, wait_cb, &w[i], NULL), 0);
                if (i % 10 == 0)
                        run_for(c.event, 5000);
        }
        end = now_usec(CLOCK_MONOTONIC) + 20 * 1000000;
        for (unsigned i = 0; i < 300; i++)
                while (!w[i].done) {
                        assert_true(now_usec(CLOCK_MONOTONIC) < end);
                        assert_true(sd_event_run(c.event, 10000) >= 0);
                }
        assert_true(cluster_wait_leader(&c, 10 * 1000000) >= 0);
        /* Converge: a write after everything. */
        {
                int l = cluster_leader(&c);

                assert_true(cluster_put(&c, (unsigned) l, "/1/end", "e").error == ETCD_OK);
                cluster_wait_value(&c, "/1/end", "e", 5 * 1000000);
        }
        for (unsigned i = 0; i < 300; i++) {
                if (w[i].error != ETCD_OK) {
                        n_err++;
                        continue;
                }
                n_ok++;
                for (unsigned m = 0; m < 3; m++)
                        if (c.servers[m])
                                assert_non_null(value_of(c.servers[m], paths[i]));
        }
        print_message("# %u acknowledged, %u failed\n", n_ok, n_err);
        /* Those through the dead member fail at once (50); proposals that were on their way to the
         * dead leader time out, as with etcd2; the ones still queued here go to the new leader. */
        assert_true(n_ok >= 180);
        cluster_done(&c);
}

static void test_cluster_strict_reconfig(void **state) {
        Cluster c;
        MemberWait w;
        int leader;
        char *urls[] = { (char *) "http://127.0.0.1:1", (char *) "http://127.0.0.1:2", (char *) "http://127.0.0.1:3" };
        uint64_t added[3];

        cluster_init(&c, 3);
        assert_true(cluster_wait_leader(&c, 10 * 1000000) >= 0);
        for (unsigned i = 0; i < 3; i++) {
                cluster_stop_member(&c, i);
                c.config[i].strict_reconfig_check = true;
        }
        for (unsigned i = 0; i < 3; i++)
                cluster_start_member(&c, i);
        leader = cluster_wait_leader(&c, 10 * 1000000);
        assert_true(leader >= 0);
        /* "Started" = published its attributes. */
        for (unsigned i = 0; i < 3; i++) {
                char path[96];
                uint64_t end = now_usec(CLOCK_MONOTONIC) + 5000000;

                snprintf(path, sizeof(path), "/0/members/%" PRIx64 "/attributes", c.members[i].id);
                while (!store_lookup(server_store(c.servers[leader]), path)) {
                        assert_true(now_usec(CLOCK_MONOTONIC) < end);
                        assert_true(sd_event_run(c.event, 10000) >= 0);
                }
        }
        /* Three started members: two members that never start can be added (3 of 4, 3 of 5)... */
        for (unsigned i = 0; i < 2; i++) {
                w = (MemberWait) {};
                assert_int_equal(server_member_add(c.servers[leader], &urls[i], 1, member_cb, &w), 0);
                run_until_member(&c, &w);
                assert_int_equal(w.error, 0);
                added[i] = w.id;
        }
        /* ... a third not: 3 started of 6 is no quorum. */
        w = (MemberWait) {};
        assert_int_equal(server_member_add(c.servers[leader], &urls[2], 1, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, -EPERM);
        /* Removing a started member would leave 2 started of 4: refused; an unstarted one is fine. */
        w = (MemberWait) {};
        assert_int_equal(server_member_remove(c.servers[leader], c.members[(leader + 1) % 3].id, member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, -EPERM);
        w = (MemberWait) {};
        assert_int_equal(server_member_remove(c.servers[leader], added[0], member_cb, &w), 0);
        run_until_member(&c, &w);
        assert_int_equal(w.error, 0);
        cluster_done(&c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_fresh_then_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_qget_and_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_free_answers_pending, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ttl_expires, setup, teardown),
                cmocka_unit_test_setup_teardown(test_snapshot_compacts_and_restarts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_foreign_data_dirs, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_log, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_quorum_times_out, setup, teardown),
                cmocka_unit_test_setup_teardown(test_kill9, setup, teardown),
                cmocka_unit_test(test_cluster_replication_and_failover),
                cmocka_unit_test(test_cluster_no_leader_times_out),
                cmocka_unit_test(test_cluster_membership),
                cmocka_unit_test(test_cluster_snapshot_catch_up),
                cmocka_unit_test(test_cluster_force_new_cluster),
                cmocka_unit_test(test_cluster_acked_writes_survive),
                cmocka_unit_test(test_cluster_strict_reconfig),
        };

        log_set_max_level(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_WARNING);
        /* As the daemon (manager.c): the peer transport writes to sockets that a removed member may
         * have closed, and must see EPIPE, not die of SIGPIPE. */
        (void) signal(SIGPIPE, SIG_IGN);
        if (getenv("TEST_FILTER"))
                cmocka_set_test_filter(getenv("TEST_FILTER"));
        if (getenv("TEST_SERVER_KILL9_FD"))
                return kill9_child();
        if (getenv("BENCH")) {
                const struct CMUnitTest bench[] = {
                        cmocka_unit_test_setup_teardown(test_bench, setup, teardown),
                };
                return cmocka_run_group_tests(bench, NULL, NULL);
        }
        return cmocka_run_group_tests(tests, NULL, NULL);
}
