/* SPDX-License-Identifier: Apache-2.0 */
/* test-snapshot.c - streamed snapshots: the chunk codec, the leader's cursor, the follower's staging and
 * the staged install (also when a kill interrupted it), and the watchers moving to a new store. */

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
#include <zlib.h>

#include "codec.h"
#include "peer.h"
#include "persist.h"
#include "raft-io.h"
#include "snapshot.h"
#include "store.h"

/* ---- chunk codec ---- */

typedef struct Seen {
        char keys[16][32];
        unsigned n_nodes, n_history;
} Seen;

static int seen_cb(char kind, const void *key, size_t key_len, const void *value, size_t value_len, void *userdata) {
        Seen *s = userdata;

        if (kind == 0)
                return 0;   /* persist_export()'s header call */
        if (kind == 'n') {
                assert_true(s->n_nodes < 16 && key_len < 32);
                memcpy(s->keys[s->n_nodes], key, key_len);
                s->keys[s->n_nodes][key_len] = 0;
                s->n_nodes++;
        } else
                s->n_history++;
        return 0;
}

/* Records as the sender writes them: kind, varint key length, key, varint value length, value. */
static size_t put_record(uint8_t *p, char kind, const void *key, size_t key_len, const void *value, size_t value_len) {
        size_t n = 0;

        p[n++] = (uint8_t) kind;
        n += codec_varint_put(p + n, key_len);
        memcpy(p + n, key, key_len);
        n += key_len;
        n += codec_varint_put(p + n, value_len);
        memcpy(p + n, value, value_len);
        return n + value_len;
}

static void test_chunk_codec(void **state) {
        uint8_t recs[256], *msg = NULL;
        size_t n = 0, size = 0, off;
        uint64_t id = 0, count = 0;
        SnapshotChunk c = {}, d = {};
        Seen seen = {};

        n += put_record(recs + n, 'n', "/a", 2, "va", 2);
        n += put_record(recs + n, 'n', "/a/b", 4, "vb", 2);
        n += put_record(recs + n, 'h', "\0\0\0\0\0\0\0\5", 8, "e5", 2);
        c = (SnapshotChunk) {
                .seq = 7, .flags = SNAPSHOT_CHUNK_FIRST | SNAPSHOT_CHUNK_LAST,
                .applied = 40, .etcd_index = 5, .n_records = 3, .crc = 0xdeadbeef,
                .records = recs, .records_size = n,
        };
        assert_int_equal(snapshot_chunk_encode(0x1234567890, &c, &msg, &size), 0);
        assert_int_equal(msg[0], SNAPSHOT_MSG_CHUNK);
        off = 1 + codec_varint_get(msg + 1, size - 1, &id);
        assert_int_equal(id, 0x1234567890);
        assert_int_equal(snapshot_chunk_decode(msg + off, size - off, &d), 0);
        assert_int_equal(d.seq, 7);
        assert_int_equal(d.flags, SNAPSHOT_CHUNK_FIRST | SNAPSHOT_CHUNK_LAST);
        assert_int_equal(d.applied, 40);
        assert_int_equal(d.etcd_index, 5);
        assert_int_equal(d.n_records, 3);
        assert_int_equal(d.crc, 0xdeadbeef);
        assert_int_equal(d.records_size, n);
        assert_int_equal(raft_io_snapshot_records_parse(d.records, d.records_size, seen_cb, &seen, &count), 0);
        assert_int_equal(count, 3);
        assert_int_equal(seen.n_nodes, 2);
        assert_string_equal(seen.keys[1], "/a/b");
        assert_int_equal(seen.n_history, 1);

        /* Every truncation of the header fails; unknown flags fail. */
        for (size_t k = 0; k < 9 + 32; k++)
                assert_int_equal(snapshot_chunk_decode(msg + off, k, &d), -EBADMSG);
        msg[off + 8] |= 0x80;
        assert_int_equal(snapshot_chunk_decode(msg + off, size - off, &d), -EBADMSG);
        free(msg);

        /* Every truncation of the records fails (no record ends exactly at those points but the three). */
        for (size_t k = 1; k < n; k++) {
                int r = raft_io_snapshot_records_parse(recs, k, NULL, NULL, &count);

                if (r == 0)
                        assert_true(k == 7 || k == 16);   /* after the first, second record */
                else
                        assert_int_equal(r, -EBADMSG);
        }
        /* A history key that is not 8 bytes, a node key with a NUL, an empty key, a length past the end. */
        n = put_record(recs, 'h', "\0\0\5", 3, "e", 1);
        assert_int_equal(raft_io_snapshot_records_parse(recs, n, NULL, NULL, NULL), -EBADMSG);
        n = put_record(recs, 'n', "/a\0b", 4, "v", 1);
        assert_int_equal(raft_io_snapshot_records_parse(recs, n, NULL, NULL, NULL), -EBADMSG);
        n = put_record(recs, 'n', "", 0, "v", 1);
        assert_int_equal(raft_io_snapshot_records_parse(recs, n, NULL, NULL, NULL), -EBADMSG);
        n = put_record(recs, 'n', "/a", 2, "v", 1);
        recs[1] = 100;
        assert_int_equal(raft_io_snapshot_records_parse(recs, n, NULL, NULL, NULL), -EBADMSG);
        recs[0] = 'x';
        assert_int_equal(raft_io_snapshot_records_parse(recs, n, NULL, NULL, NULL), -EBADMSG);
}

/* ---- persist: cursor, staging, install ---- */

typedef struct Fixture {
        char dir[64];
        Persist *p;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-snapshot-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        assert_int_equal(persist_open(f->dir, NULL, &f->p), 0);
        assert_int_equal(persist_meta_init(f->p, 0xabc, 0xdef), 0);
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
}

static void test_cursor_in_pieces(void **state) {
        Fixture *f = *state;
        PersistBatch *b = NULL;
        PersistCursor *c = NULL;
        uint64_t applied = 0, etcd_index = 0;
        Seen seen = {};
        char key[16];
        unsigned calls = 0;
        int r;

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        for (unsigned i = 0; i < 12; i++) {
                snprintf(key, sizeof(key), "/k%02u", i);
                persist_batch_node_put(b, key, "0123456789", 10);
        }
        persist_batch_history_add(b, 11, "e11", 3);
        persist_batch_history_add(b, 12, "e12", 3);
        persist_batch_applied(b, 30, 12);
        assert_int_equal(persist_write(b, true), 0);

        assert_int_equal(persist_cursor_open(f->p, &c, &applied, &etcd_index), 0);
        assert_int_equal(applied, 30);
        assert_int_equal(etcd_index, 12);
        /* What the cursor sees is fixed when it opens. */
        persist_batch_node_put(b, "/later", "x", 1);
        assert_int_equal(persist_write(b, true), 0);
        /* About 3 records per piece (14 bytes each, budget 40). */
        do {
                r = persist_cursor_next(c, 40, seen_cb, &seen);
                assert_true(r >= 0);
                calls++;
        } while (r > 0);
        persist_cursor_free(c);
        assert_int_equal(seen.n_nodes, 12);
        assert_int_equal(seen.n_history, 2);
        assert_string_equal(seen.keys[0], "/k00");
        assert_string_equal(seen.keys[11], "/k11");
        assert_true(calls >= 4);
        persist_batch_free(b);
}

static void stage_and_begin(Fixture *f, PersistBatch *b) {
        PersistSnapshot s = {
                .index = 100, .term = 3, .conf_index = 1,
                .conf = (void *) "CONF", .conf_len = 4,
                .data = (void *) "MARKER", .data_len = 6,
        };

        /* Live state before: two nodes, one event. */
        persist_batch_node_put(b, "/old", "o", 1);
        persist_batch_node_put(b, "/old/x", "o", 1);
        persist_batch_history_add(b, 3, "e3", 2);
        persist_batch_applied(b, 10, 3);
        for (uint64_t i = 1; i <= 20; i++)
                persist_batch_log_append(b, i, 1, 1, "x", 1);
        assert_int_equal(persist_write(b, true), 0);

        /* Staged (unsynced), with leftovers of an earlier stream cleared first. */
        assert_int_equal(persist_batch_staging_put(b, 'n', "/stale", 6, "s", 1), 0);
        assert_int_equal(persist_write(b, false), 0);
        persist_batch_staging_clear(b);
        assert_int_equal(persist_batch_staging_put(b, 'n', "/new", 4, "n", 1), 0);
        assert_int_equal(persist_batch_staging_put(b, 'n', "/new/y", 6, "n", 1), 0);
        assert_int_equal(persist_batch_staging_put(b, 'h', "\0\0\0\0\0\0\0\x63", 8, "e99", 3), 0);
        assert_int_equal(persist_batch_staging_put(b, 'x', "/bad", 4, "n", 1), -EINVAL);
        assert_int_equal(persist_write(b, false), 0);

        /* Nothing of it is live yet. */
        {
                Seen seen = {};
                uint64_t applied, etcd_index;

                assert_int_equal(persist_export(f->p, &applied, &etcd_index, seen_cb, &seen), 0);
                assert_int_equal(applied, 10);
                assert_int_equal(seen.n_nodes, 2);
        }
        assert_int_equal(persist_batch_install_begin(b, &s, UINT64_MAX, 110, 99), 0);
        assert_int_equal(persist_write(b, true), 0);
}

static void check_installed(Fixture *f) {
        PersistSnapshot out = {};
        PersistMeta m = {};
        Seen seen = {};
        uint64_t applied = 0, etcd_index = 0, first = 1, last = 1;
        Store *st = NULL;

        assert_int_equal(persist_export(f->p, &applied, &etcd_index, seen_cb, &seen), 0);
        assert_int_equal(applied, 110);
        assert_int_equal(etcd_index, 99);
        assert_int_equal(seen.n_nodes, 2);
        assert_string_equal(seen.keys[0], "/new");
        assert_string_equal(seen.keys[1], "/new/y");
        assert_int_equal(seen.n_history, 1);
        assert_int_equal(persist_meta_load(f->p, &m), 0);
        assert_int_equal(m.applied_index, 110);
        assert_int_equal(m.etcd_index, 99);
        assert_int_equal(persist_snapshot_load(f->p, &out), 0);
        assert_int_equal(out.index, 100);
        assert_int_equal(out.term, 3);
        assert_int_equal(out.conf_len, 4);
        assert_memory_equal(out.conf, "CONF", 4);
        assert_int_equal(out.data_len, 6);
        assert_memory_equal(out.data, "MARKER", 6);
        persist_snapshot_done(&out);
        /* The install replaced the whole log (keep_from UINT64_MAX). */
        assert_int_equal(persist_log_bounds(f->p, &first, &last), 0);
        assert_int_equal(first, 0);
        /* No marker, no staging left: a second finish has nothing to do. */
        assert_int_equal(persist_install_finish(f->p, NULL, NULL), 0);
        /* The records here are not store encodings: loading them is refused (the integration test
         * loads real ones), and the loader's free path. */
        assert_true(snapshot_load_installed(f->p, (void **) &st, NULL) < 0);
        assert_null(st);
        assert_int_equal(snapshot_load_installed(NULL, (void **) &st, NULL), 0);
}

static void test_install_at_once(void **state) {
        Fixture *f = *state;
        PersistBatch *b = NULL;
        uint64_t applied = 0, etcd_index = 0;

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        stage_and_begin(f, b);
        persist_batch_free(b);
        assert_int_equal(persist_install_finish(f->p, &applied, &etcd_index), 1);
        assert_int_equal(applied, 110);
        assert_int_equal(etcd_index, 99);
        check_installed(f);
        reopen(f);
        check_installed(f);
}

/* A kill after the marker is durable (before the old state went, and again after it went): the restart
 * finishes the install from the marker and the staging. */
static void test_install_after_kill(void **state) {
        Fixture *f = *state;
        PersistBatch *b = NULL;

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        stage_and_begin(f, b);
        persist_batch_free(b);
        reopen(f);

        assert_int_equal(persist_batch_new(f->p, &b), 0);
        persist_batch_state_clear(b);            /* step 1 of the install, then "killed" */
        assert_int_equal(persist_write(b, true), 0);
        persist_batch_free(b);
        reopen(f);

        assert_int_equal(snapshot_recover(f->p), 0);
        check_installed(f);
        reopen(f);
        assert_int_equal(snapshot_recover(f->p), 0);   /* nothing left to do */
        check_installed(f);
}

/* ---- the follower's receiver: order, duplicates, damage, the reference check ---- */

typedef struct RecvFixture {
        Fixture f;
        sd_event *event;
        RaftIo *rio;
        PeerTransport *peers;
        SnapshotStreams *ss;
        uint8_t recs[3][64];
        size_t recs_size[3];
        uLong crc;
} RecvFixture;

static int recv_setup(void **state) {
        RecvFixture *rf = calloc(1, sizeof(*rf));
        Fixture *f;

        assert_non_null(rf);
        assert_int_equal(setup((void **) &f), 0);
        rf->f = *f;
        free(f);
        assert_int_equal(sd_event_new(&rf->event), 0);
        assert_int_equal(raft_io_new(rf->event, rf->f.p, &rf->rio), 0);
        assert_int_equal(peer_transport_new(rf->event, 1, 2, "http://127.0.0.1:1", &rf->peers), 0);
        assert_int_equal(snapshot_streams_new(rf->event, rf->f.p, rf->rio, rf->peers, &rf->ss), 0);
        /* three chunks of one record each */
        rf->crc = crc32(0, NULL, 0);
        rf->recs_size[0] = put_record(rf->recs[0], 'n', "/s", 2, "a", 1);
        rf->recs_size[1] = put_record(rf->recs[1], 'n', "/s/t", 4, "b", 1);
        rf->recs_size[2] = put_record(rf->recs[2], 'h', "\0\0\0\0\0\0\0\x09", 8, "e9", 2);
        for (unsigned i = 0; i < 3; i++)
                rf->crc = crc32(rf->crc, rf->recs[i], (uInt) rf->recs_size[i]);
        *state = rf;
        return 0;
}

static int recv_teardown(void **state) {
        RecvFixture *rf = *state;
        Fixture *f = malloc(sizeof(*f));

        snapshot_streams_free(rf->ss);
        peer_transport_free(rf->peers);
        raft_io_free(rf->rio);
        sd_event_unref(rf->event);
        *f = rf->f;
        free(rf);
        return teardown((void **) &f);
}

/* Feeds chunk `seq` of stream `id` (from member 7) as the opaque handler does. */
static void feed(RecvFixture *rf, uint64_t from, uint64_t id, uint64_t seq, uLong crc) {
        SnapshotChunk c = {
                .seq = seq,
                .flags = (seq == 0 ? SNAPSHOT_CHUNK_FIRST : 0) | (seq == 2 ? SNAPSHOT_CHUNK_LAST : 0),
                .applied = 50, .etcd_index = 9, .n_records = 3, .crc = crc,
                .records = rf->recs[seq], .records_size = rf->recs_size[seq],
        };
        uint8_t *msg = NULL;
        size_t size = 0, off;
        uint64_t got = 0;

        assert_int_equal(snapshot_chunk_encode(id, &c, &msg, &size), 0);
        off = 1 + codec_varint_get(msg + 1, size - 1, &got);
        snapshot_streams_chunk(rf->ss, from, got, msg + off, size - off);
        free(msg);
}

static bool ready(RecvFixture *rf, uint64_t from, uint64_t id) {
        uint8_t ref[RAFT_IO_SNAPSHOT_REF_SIZE];
        struct raft_message m = { .type = RAFT_IO_INSTALL_SNAPSHOT, .server_id = from };

        memcpy(ref, RAFT_IO_SNAPSHOT_REF_MAGIC, 8);
        codec_put_be64(ref + 8, id);
        m.install_snapshot.data = (struct raft_buffer) { .base = ref, .len = sizeof(ref) };
        return snapshot_streams_ready(rf->ss, &m);
}

static void test_receiver(void **state) {
        RecvFixture *rf = *state;
        struct raft_message other = { .type = RAFT_IO_APPEND_ENTRIES };

        /* Anything but a reference passes. */
        assert_true(snapshot_streams_ready(rf->ss, &other));
        /* Nothing received: refused. */
        assert_false(ready(rf, 7, 0x11));

        /* A gap drops the stream; the rest of it is ignored. */
        feed(rf, 7, 0x11, 0, rf->crc);
        feed(rf, 7, 0x11, 2, rf->crc);
        feed(rf, 7, 0x11, 1, rf->crc);
        assert_false(ready(rf, 7, 0x11));

        /* A damaged stream (checksum) is refused. */
        feed(rf, 7, 0x12, 0, rf->crc ^ 1);
        feed(rf, 7, 0x12, 1, rf->crc ^ 1);
        feed(rf, 7, 0x12, 2, rf->crc ^ 1);
        assert_false(ready(rf, 7, 0x12));

        /* Chunks of another stream or sender in between change nothing; a duplicate after the end
         * neither. The reference must name this stream and this sender. */
        feed(rf, 7, 0x13, 0, rf->crc);
        feed(rf, 8, 0x99, 1, rf->crc);
        feed(rf, 7, 0x14, 1, rf->crc);
        feed(rf, 7, 0x13, 1, rf->crc);
        feed(rf, 7, 0x13, 2, rf->crc);
        feed(rf, 7, 0x13, 2, rf->crc);
        assert_false(ready(rf, 7, 0x14));
        assert_false(ready(rf, 8, 0x13));
        assert_true(ready(rf, 7, 0x13));
        /* Handed over once: the staging belongs to the install now. */
        assert_false(ready(rf, 7, 0x13));

        /* The staging holds exactly the last stream's records (the earlier ones were cleared). */
        {
                PersistBatch *b = NULL;
                PersistSnapshot s = { .index = 40, .term = 2, .conf = (void *) "C", .conf_len = 1,
                                      .data = (void *) "M", .data_len = 1 };
                Seen seen = {};
                uint64_t applied = 0, etcd_index = 0;

                assert_int_equal(persist_batch_new(rf->f.p, &b), 0);
                assert_int_equal(persist_batch_install_begin(b, &s, UINT64_MAX, 50, 9), 0);
                assert_int_equal(persist_write(b, true), 0);
                persist_batch_free(b);
                assert_int_equal(persist_install_finish(rf->f.p, NULL, NULL), 1);
                assert_int_equal(persist_export(rf->f.p, &applied, &etcd_index, seen_cb, &seen), 0);
                assert_int_equal(applied, 50);
                assert_int_equal(seen.n_nodes, 2);
                assert_string_equal(seen.keys[0], "/s");
                assert_string_equal(seen.keys[1], "/s/t");
                assert_int_equal(seen.n_history, 1);
        }
}

/* ---- watchers survive the store being replaced ---- */

static int on_event(StoreWatcher *w, StoreEvent *e, void *userdata) {
        unsigned *fired = userdata;

        (*fired)++;
        return 0;
}

static void test_watchers_move(void **state) {
        Store *a = NULL, *b = NULL;
        StoreWatcher *once = NULL, *stream = NULL;
        StoreResult res = {};
        unsigned fired_once = 0, fired_stream = 0;
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/w", .value = "v", .value_len = 1, .prev_exist = -1 };

        assert_int_equal(store_new(&a), 0);
        assert_int_equal(store_new(&b), 0);
        assert_int_equal(store_watch(a, "/1/w", false, false, 0, on_event, &fired_once, &once, NULL, NULL), 0);
        assert_int_equal(store_watch(a, "/1", true, true, 0, on_event, &fired_stream, &stream, NULL, NULL), 0);
        assert_non_null(once);
        assert_non_null(stream);
        assert_int_equal(store_n_watchers(a), 2);

        assert_int_equal(store_move_watchers(a, b), 0);
        assert_int_equal(store_n_watchers(a), 0);
        assert_int_equal(store_n_watchers(b), 2);
        /* Only into a store without watchers. */
        assert_int_equal(store_move_watchers(a, b), -EBUSY);
        store_free(a);   /* the watchers do not go with it */

        assert_int_equal(store_apply(b, &req, 0, &res), 0);
        store_result_done(&res);
        assert_int_equal(fired_once, 1);
        assert_int_equal(fired_stream, 1);
        assert_int_equal(store_n_watchers(b), 1);   /* the one-shot is gone, the stream stays */
        assert_int_equal(store_apply(b, &req, 0, &res), 0);
        store_result_done(&res);
        assert_int_equal(fired_once, 1);
        assert_int_equal(fired_stream, 2);
        store_watcher_free(stream);
        assert_int_equal(store_n_watchers(b), 0);
        store_free(b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_chunk_codec),
                cmocka_unit_test_setup_teardown(test_cursor_in_pieces, setup, teardown),
                cmocka_unit_test_setup_teardown(test_install_at_once, setup, teardown),
                cmocka_unit_test_setup_teardown(test_install_after_kill, setup, teardown),
                cmocka_unit_test_setup_teardown(test_receiver, recv_setup, recv_teardown),
                cmocka_unit_test(test_watchers_move),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
