/* SPDX-License-Identifier: Apache-2.0 */
/* test-import.c - import.c: CRC-32C, WAL framing (2.x and 3.x), torn and corrupt records, Go times, and a
 * whole data dir in etcd 2.3.8's layout (unpadded records, a .snap with the store's JSON) into a Store. */

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "etcd2-v2.pb-c.h"
#include "import.h"
#include "log.h"
#include "macro.h"
#include "store.h"

/* ---- building WAL files ---- */

typedef struct Buf {
        uint8_t *p;
        size_t n;
} Buf;

static void buf_put(Buf *b, const void *d, size_t n) {
        b->p = realloc(b->p, b->n + n + 1);
        assert_non_null(b->p);
        memcpy(b->p + b->n, d, n);
        b->n += n;
}

/* Appends one record; crc is the running CRC (updated unless type is CRC). pad: 3.x 8-byte alignment. */
static void wal_put(Buf *b, int64_t type, const void *data, size_t len, uint32_t *crc, bool pad) {
        Etcd2v2__WalRecord rec = ETCD2V2__WAL_RECORD__INIT;
        uint8_t frame[8], *packed, zeros[8] = {};
        size_t n, padn = 0;
        uint64_t l;

        rec.has_type = true;
        rec.type = type;
        if (type == IMPORT_WAL_CRC) {
                rec.has_crc = true;
                rec.crc = *crc;
        } else {
                *crc = import_crc32c(*crc, data, len);
                rec.has_crc = true;
                rec.crc = *crc;
                rec.has_data = true;
                rec.data.data = (uint8_t *) data;
                rec.data.len = len;
        }
        n = etcd2v2__wal_record__get_packed_size(&rec);
        packed = malloc(n);
        assert_non_null(packed);
        etcd2v2__wal_record__pack(&rec, packed);
        l = n;
        if (pad && n % 8 != 0) {
                padn = 8 - n % 8;
                l |= (uint64_t) (0x80 | padn) << 56;
        }
        for (unsigned i = 0; i < 8; i++)
                frame[i] = (uint8_t) (l >> (8 * i));
        buf_put(b, frame, 8);
        buf_put(b, packed, n);
        buf_put(b, zeros, padn);
        free(packed);
}

static void *pack_entry(uint64_t index, int type, const void *data, size_t len, size_t *ret_len) {
        Etcd2v2__Entry e = ETCD2V2__ENTRY__INIT;
        void *p;

        e.has_term = e.has_index = e.has_type = true;
        e.term = 1;
        e.index = index;
        e.type = type;
        e.has_data = len > 0;
        e.data.data = (uint8_t *) data;
        e.data.len = len;
        *ret_len = etcd2v2__entry__get_packed_size(&e);
        p = malloc(*ret_len);
        assert_non_null(p);
        etcd2v2__entry__pack(&e, p);
        return p;
}

static void wal_put_request(Buf *b, uint64_t index, const char *method, const char *path, const char *val,
                            int prev_exist, uint32_t *crc, bool pad) {
        Etcd2v2__Request q = ETCD2V2__REQUEST__INIT;
        uint8_t *data;
        void *ent;
        size_t n, en;

        q.has_id = true;
        q.id = index;
        q.method = (char *) method;
        q.has_path = true;
        q.path.data = (uint8_t *) path;
        q.path.len = strlen(path);
        q.has_val = val != NULL;
        q.val.data = (uint8_t *) val;
        q.val.len = val ? strlen(val) : 0;
        if (prev_exist >= 0) {
                q.has_prev_exist = true;
                q.prev_exist = prev_exist;
        }
        n = etcd2v2__request__get_packed_size(&q);
        data = malloc(n);
        assert_non_null(data);
        etcd2v2__request__pack(&q, data);
        ent = pack_entry(index, 0, data, n, &en);
        wal_put(b, IMPORT_WAL_ENTRY, ent, en, crc, pad);
        free(ent);
        free(data);
}

static void wal_put_state(Buf *b, uint64_t commit, uint32_t *crc, bool pad) {
        Etcd2v2__HardState h = ETCD2V2__HARD_STATE__INIT;
        uint8_t p[64];
        size_t n;

        h.has_term = h.has_commit = true;
        h.term = 1;
        h.commit = commit;
        n = etcd2v2__hard_state__pack(&h, p);
        wal_put(b, IMPORT_WAL_STATE, p, n, crc, pad);
}

static void wal_put_snapshot(Buf *b, uint64_t index, uint64_t term, uint32_t *crc, bool pad) {
        Etcd2v2__WalSnapshot s = ETCD2V2__WAL_SNAPSHOT__INIT;
        uint8_t p[64];
        size_t n;

        s.has_index = s.has_term = true;
        s.index = index;
        s.term = term;
        n = etcd2v2__wal_snapshot__pack(&s, p);
        wal_put(b, IMPORT_WAL_SNAPSHOT, p, n, crc, pad);
}

/* ---- collecting decoded records ---- */

typedef struct Seen {
        int64_t types[64];
        size_t n;
} Seen;

static int on_record(int64_t type, uint32_t crc, const uint8_t *data, size_t len, void *userdata) {
        Seen *s = userdata;

        if (s->n < ELEMENTSOF(s->types))
                s->types[s->n++] = type;
        return 0;
}

static void test_crc32c(void **state) {
        uint32_t c;

        /* the CRC-32C check value */
        assert_int_equal(import_crc32c(0, "123456789", 9), 0xe3069283U);
        c = import_crc32c(0, "1234", 4);
        assert_int_equal(import_crc32c(c, "56789", 5), 0xe3069283U);
        assert_int_equal(import_crc32c(0, "", 0), 0);
}

static void one_file(bool pad) {
        Buf b = {};
        uint32_t crc = 0, rcrc = 0;
        char *error = NULL;
        Seen seen = {};

        wal_put(&b, IMPORT_WAL_CRC, NULL, 0, &crc, pad);
        wal_put(&b, IMPORT_WAL_METADATA, "\x08\x01\x10\x02", 4, &crc, pad);
        wal_put_snapshot(&b, 0, 0, &crc, pad);
        wal_put_request(&b, 1, "PUT", "/1/a", "x", -1, &crc, pad);
        wal_put_state(&b, 1, &crc, pad);
        buf_put(&b, "\0\0\0\0\0\0\0\0\0\0\0\0", 12);      /* preallocated tail */

        assert_int_equal(import_wal_file_decode(b.p, b.n, true, &rcrc, on_record, &seen, &error), 0);
        assert_null(error);
        assert_int_equal(seen.n, 5);
        assert_int_equal(seen.types[0], IMPORT_WAL_CRC);
        assert_int_equal(seen.types[3], IMPORT_WAL_ENTRY);
        assert_int_equal(seen.types[4], IMPORT_WAL_STATE);
        assert_int_equal(rcrc, crc);
        free(b.p);
}

static void test_wal_frames(void **state) {
        one_file(false);        /* etcd 2.3.8: no padding */
        one_file(true);         /* etcd 3.x: 8-byte aligned, padding in the length's top byte */
}

static void test_wal_torn_and_corrupt(void **state) {
        Buf b = {};
        uint32_t crc = 0, rcrc;
        char *error = NULL;
        Seen seen;
        size_t full;
        char big[2000];

        wal_put(&b, IMPORT_WAL_CRC, NULL, 0, &crc, true);
        wal_put_request(&b, 1, "PUT", "/1/a", "x", -1, &crc, true);
        full = b.n;
        memset(big, 'v', sizeof(big));
        big[sizeof(big) - 1] = 0;
        wal_put_request(&b, 2, "PUT", "/1/b", big, -1, &crc, true);

        /* cut short: torn in the last file, corrupt in any other */
        rcrc = 0;
        seen = (Seen) {};
        assert_int_equal(import_wal_file_decode(b.p, b.n - 5, true, &rcrc, on_record, &seen, &error), 1);
        assert_int_equal(seen.n, 2);
        rcrc = 0;
        assert_int_equal(import_wal_file_decode(b.p, b.n - 5, false, &rcrc, on_record, &seen, &error), -EBADMSG);
        assert_non_null(error);
        free(error);
        error = NULL;

        /* a flipped bit in a record's data: CRC mismatch, refused even in the last file */
        b.p[full + 40] ^= 0x01;
        rcrc = 0;
        assert_int_equal(import_wal_file_decode(b.p, b.n, true, &rcrc, on_record, &seen, &error), -EBADMSG);
        assert_non_null(error);
        assert_non_null(strstr(error, "CRC"));
        free(error);
        error = NULL;
        b.p[full + 40] ^= 0x01;

        /* a sector of the last record never written (zeros): torn, dropped */
        memset(b.p + full + 600, 0, 1030);   /* holds a whole 512-byte sector of the file */
        rcrc = 0;
        seen = (Seen) {};
        assert_int_equal(import_wal_file_decode(b.p, b.n, true, &rcrc, on_record, &seen, &error), 1);
        assert_int_equal(seen.n, 2);
        assert_int_equal(import_wal_file_decode(b.p, b.n, false, &rcrc, on_record, &seen, &error), -EBADMSG);
        free(error);
        free(b.p);
}

static void test_parse_time(void **state) {
        uint64_t u;

        assert_int_equal(import_parse_time("0001-01-01T00:00:00Z", &u), 0);
        assert_int_equal(u, 0);
        assert_int_equal(import_parse_time("2026-12-08T01:28:53.735825123Z", &u), 0);
        assert_int_equal(u, UINT64_C(1796693333) * USEC_PER_SEC + 735825);
        assert_int_equal(import_parse_time("2026-12-08T03:28:53.7+02:00", &u), 0);
        assert_int_equal(u, UINT64_C(1796693333) * USEC_PER_SEC + 700000);
        assert_int_equal(import_parse_time("2026-12-07T23:28:53-02:00", &u), 0);
        assert_int_equal(u, UINT64_C(1796693333) * USEC_PER_SEC);
        assert_int_equal(import_parse_time("2026-12-08 01:28:53Z", &u), -EINVAL);
        assert_int_equal(import_parse_time("2026-12-08T01:28:53", &u), -EINVAL);
        assert_int_equal(import_parse_time("2026-12-08T01:28:53.Z", &u), -EINVAL);
}

/* ---- a whole data dir, etcd 2.3.8 style ---- */

static char dir[] = "/tmp/test-import-XXXXXX";

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void write_file(const char *path, const void *p, size_t n) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, p, n), (ssize_t) n);
        close(fd);
}

static void write_snap(const char *json, uint64_t index) {
        Etcd2v2__Snapshot s = ETCD2V2__SNAPSHOT__INIT;
        Etcd2v2__SnapshotMetadata md = ETCD2V2__SNAPSHOT_METADATA__INIT;
        Etcd2v2__SnapFile f = ETCD2V2__SNAP_FILE__INIT;
        uint8_t *inner, *outer;
        size_t n, m;
        char path[256];

        md.has_index = md.has_term = true;
        md.index = index;
        md.term = 1;
        s.metadata = &md;
        s.has_data = true;
        s.data.data = (uint8_t *) json;
        s.data.len = strlen(json);
        n = etcd2v2__snapshot__get_packed_size(&s);
        inner = malloc(n);
        etcd2v2__snapshot__pack(&s, inner);
        f.has_crc = f.has_data = true;
        f.crc = import_crc32c(0, inner, n);
        f.data.data = inner;
        f.data.len = n;
        m = etcd2v2__snap_file__get_packed_size(&f);
        outer = malloc(m);
        etcd2v2__snap_file__pack(&f, outer);
        snprintf(path, sizeof(path), "%s/member/snap/%016x-%016" PRIx64 ".snap", dir, 1, index);
        write_file(path, outer, m);
        free(inner);
        free(outer);
}

static int setup(void **state) {
        char p[256];

        strcpy(dir, "/tmp/test-import-XXXXXX");
        assert_non_null(mkdtemp(dir));
        snprintf(p, sizeof(p), "%s/member", dir);
        assert_int_equal(mkdir(p, 0700), 0);
        snprintf(p, sizeof(p), "%s/member/wal", dir);
        assert_int_equal(mkdir(p, 0700), 0);
        snprintf(p, sizeof(p), "%s/member/snap", dir);
        assert_int_equal(mkdir(p, 0700), 0);
        return 0;
}

static int teardown(void **state) {
        (void) nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        return 0;
}

static int never(StoreWatcher *w, StoreEvent *e, void *userdata) {
        fail();
        return 0;
}

static char *get_json(Store *s, const char *path) {
        StoreResult r = {};
        const char *j;
        size_t n;
        char *copy;

        assert_int_equal(store_get(s, path, true, true, 0, &r), 0);
        if (r.error != ETCD_OK) {
                store_result_done(&r);
                return NULL;
        }
        j = store_event_json(r.event, &n);
        copy = strndup(j, n);
        store_event_json_unpin(r.event);
        store_result_done(&r);
        return copy;
}

static void test_data_dir_23(void **state) {
        static const char json[] =
                "{\"Root\":{\"Path\":\"/\",\"CreatedIndex\":0,\"ModifiedIndex\":0,\"ExpireTime\":\"0001-01-01T00:00:00Z\","
                "\"Value\":\"\",\"Children\":{"
                "\"0\":{\"Path\":\"/0\",\"CreatedIndex\":0,\"ModifiedIndex\":0,\"ExpireTime\":\"0001-01-01T00:00:00Z\",\"Value\":\"\",\"Children\":{"
                "\"members\":{\"Path\":\"/0/members\",\"CreatedIndex\":1,\"ModifiedIndex\":1,\"ExpireTime\":\"0001-01-01T00:00:00Z\",\"Value\":\"\",\"Children\":{"
                "\"2a\":{\"Path\":\"/0/members/2a\",\"CreatedIndex\":1,\"ModifiedIndex\":1,\"ExpireTime\":\"0001-01-01T00:00:00Z\",\"Value\":\"\",\"Children\":{}}}}}},"
                "\"1\":{\"Path\":\"/1\",\"CreatedIndex\":0,\"ModifiedIndex\":0,\"ExpireTime\":\"0001-01-01T00:00:00Z\",\"Value\":\"\",\"Children\":{"
                "\"foo\":{\"Path\":\"/1/foo\",\"CreatedIndex\":3,\"ModifiedIndex\":5,\"ExpireTime\":\"0001-01-01T00:00:00Z\",\"Value\":\"bar\",\"Children\":null},"
                "\"_h\":{\"Path\":\"/1/_h\",\"CreatedIndex\":6,\"ModifiedIndex\":6,\"ExpireTime\":\"2999-01-01T00:00:00+01:00\",\"Value\":\"hidden\",\"Children\":null},"
                "\"d\":{\"Path\":\"/1/d\",\"CreatedIndex\":4,\"ModifiedIndex\":4,\"ExpireTime\":\"0001-01-01T00:00:00Z\",\"Value\":\"\",\"Children\":{}}}}}},"
                "\"WatcherHub\":{\"EventHistory\":{\"Queue\":{\"Events\":[null,"
                "{\"action\":\"set\",\"node\":{\"key\":\"/1/foo\",\"value\":\"bar\",\"modifiedIndex\":5,\"createdIndex\":3},"
                "\"prevNode\":{\"key\":\"/1/foo\",\"value\":\"ba\",\"modifiedIndex\":3,\"createdIndex\":3}},"
                "{\"action\":\"create\",\"node\":{\"key\":\"/1/_h\",\"value\":\"hidden\",\"expiration\":\"2998-12-31T23:00:00Z\",\"ttl\":5,"
                "\"modifiedIndex\":6,\"createdIndex\":6}}],\"Size\":2,\"Front\":1,\"Back\":0,\"Capacity\":3},"
                "\"StartIndex\":5,\"LastIndex\":6}},\"CurrentIndex\":7,\"CurrentVersion\":2}";
        Buf b = {};
        uint32_t crc = 0;
        Store *s = NULL;
        ImportSummary sum;
        char path[256], *j;
        void *ent;
        size_t en;

        write_snap(json, 10);
        wal_put(&b, IMPORT_WAL_CRC, NULL, 0, &crc, false);
        wal_put(&b, IMPORT_WAL_METADATA, "\x08\x2a\x10\x01", 4, &crc, false);
        wal_put_snapshot(&b, 0, 0, &crc, false);
        for (uint64_t i = 1; i <= 10; i++)   /* before the snapshot: not replayed */
                wal_put_request(&b, i, "PUT", "/1/old", "x", -1, &crc, false);
        wal_put_snapshot(&b, 10, 1, &crc, false);
        wal_put_request(&b, 11, "PUT", "/1/foo", "baz", 1, &crc, false);       /* update: index 8 */
        wal_put_request(&b, 12, "POST", "/1/q", "job", -1, &crc, false);       /* in-order: index 9 */
        ent = pack_entry(13, 0, NULL, 0, &en);                                 /* a leader's empty entry */
        wal_put(&b, IMPORT_WAL_ENTRY, ent, en, &crc, false);
        free(ent);
        wal_put_request(&b, 14, "PUT", "/1/foo", "lost", 0, &crc, false);      /* create fails: no index */
        wal_put_request(&b, 15, "DELETE", "/1/d", NULL, -1, &crc, false);      /* not a file: fails too */
        wal_put_request(&b, 16, "PUT", "/1//x/./../e/", "v", -1, &crc, false); /* index 10, at /1/e (path.Clean) */
        wal_put_state(&b, 16, &crc, false);
        wal_put_request(&b, 17, "PUT", "/1/uncommitted", "v", -1, &crc, false);
        snprintf(path, sizeof(path), "%s/member/wal/0000000000000000-0000000000000000.wal", dir);
        write_file(path, b.p, b.n);

        assert_int_equal(import_v2_read(dir, NULL, NULL, NULL, &s, &sum), 0);
        assert_int_equal(sum.snapshot_index, 10);
        assert_int_equal(sum.commit_index, 16);
        assert_int_equal(store_index(s), 10);
        j = get_json(s, "/1/foo");
        assert_non_null(strstr(j, "\"value\":\"baz\",\"modifiedIndex\":8,\"createdIndex\":3"));
        free(j);
        j = get_json(s, "/1/q");
        assert_non_null(strstr(j, "00000000000000000009"));
        free(j);
        j = get_json(s, "/1/_h");
        assert_non_null(strstr(j, "\"expiration\":\"2998-12-31T23:00:00Z\""));
        free(j);
        j = get_json(s, "/1/e");
        assert_non_null(strstr(j, "\"modifiedIndex\":10"));
        free(j);
        assert_null(get_json(s, "/1/old"));
        assert_null(get_json(s, "/1/uncommitted"));
        assert_non_null(store_lookup(s, "/0/members/2a"));
        /* the snapshot's history came along: a wait from index 5 finds the set at 5, with its prevNode */
        {
                StoreWatcher *w = NULL;
                StoreEvent *e = NULL;
                char *cause = NULL;
                const char *ej;
                size_t n;

                assert_int_equal(store_watch(s, "/1/foo", false, false, 5, never, NULL, &w, &e, &cause), 0);
                assert_null(w);
                assert_non_null(e);
                assert_int_equal(e->index, 5);
                ej = store_event_json(e, &n);
                assert_non_null(strstr(ej, "\"prevNode\":{\"key\":\"/foo\",\"value\":\"ba\""));
                store_event_json_unpin(e);
                store_event_unref(e);
                e = NULL;
                assert_int_equal(store_watch(s, "/1/_h", false, false, 6, never, NULL, &w, &e, &cause), 0);
                assert_non_null(e);
                assert_int_equal(e->action, STORE_ACTION_CREATE);
                store_event_unref(e);
        }
        store_free(s);
        s = NULL;

        /* a bit flipped in the snapshot: no readable snapshot, refused */
        snprintf(path, sizeof(path), "%s/member/snap/%016x-%016x.snap", dir, 1, 10);
        {
                int fd = open(path, O_RDWR);
                uint8_t c;

                assert_true(fd >= 0);
                assert_int_equal(pread(fd, &c, 1, 100), 1);
                c ^= 0x20;
                assert_int_equal(pwrite(fd, &c, 1, 100), 1);
                close(fd);
        }
        assert_int_equal(import_v2_read(dir, NULL, NULL, NULL, &s, &sum), -EBADMSG);
        assert_null(s);
        free(b.p);
}

/* The WAL goes on in a second file (etcd cuts at 64 MB): it begins with the running CRC of the first. */
static void test_data_dir_two_files(void **state) {
        Buf f0 = {}, f1 = {};
        uint32_t crc = 0;
        char path[256], *j;
        Store *s = NULL;
        ImportSummary sum;

        wal_put(&f0, IMPORT_WAL_CRC, NULL, 0, &crc, true);
        wal_put(&f0, IMPORT_WAL_METADATA, "\x08\x2a\x10\x01", 4, &crc, true);
        wal_put_snapshot(&f0, 0, 0, &crc, true);
        for (uint64_t i = 1; i <= 5; i++)
                wal_put_request(&f0, i, "PUT", "/1/k", "first", -1, &crc, true);
        wal_put_state(&f0, 5, &crc, true);
        wal_put(&f1, IMPORT_WAL_CRC, NULL, 0, &crc, true);
        wal_put(&f1, IMPORT_WAL_METADATA, "\x08\x2a\x10\x01", 4, &crc, true);
        for (uint64_t i = 6; i <= 8; i++)
                wal_put_request(&f1, i, "PUT", "/1/k", "second", -1, &crc, true);
        wal_put_state(&f1, 8, &crc, true);
        snprintf(path, sizeof(path), "%s/member/wal/0000000000000000-0000000000000000.wal", dir);
        write_file(path, f0.p, f0.n);
        snprintf(path, sizeof(path), "%s/member/wal/0000000000000001-0000000000000006.wal", dir);
        write_file(path, f1.p, f1.n);

        assert_int_equal(import_v2_read(dir, NULL, NULL, NULL, &s, &sum), 0);
        assert_int_equal(sum.commit_index, 8);
        assert_int_equal(store_index(s), 8);
        j = get_json(s, "/1/k");
        /* a set replaces the node (etcd2's Set): created anew at 8 */
        assert_non_null(strstr(j, "\"value\":\"second\",\"modifiedIndex\":8,\"createdIndex\":8"));
        free(j);
        store_free(s);
        s = NULL;

        /* the second file's CRC record does not match the first file: refused */
        {
                Buf bad = {};
                uint32_t other = 12345;

                wal_put(&bad, IMPORT_WAL_CRC, NULL, 0, &other, true);
                buf_put(&bad, f1.p + 16, f1.n - 16);  /* the rest of f1 after its CRC frame (16 bytes, padded) */
                write_file(path, bad.p, bad.n);
                free(bad.p);
        }
        assert_int_equal(import_v2_read(dir, NULL, NULL, NULL, &s, &sum), -EBADMSG);

        /* a file missing from the sequence: refused */
        (void) unlink(path);
        snprintf(path, sizeof(path), "%s/member/wal/0000000000000002-0000000000000006.wal", dir);
        write_file(path, f1.p, f1.n);
        assert_int_equal(import_v2_read(dir, NULL, NULL, NULL, &s, &sum), -EBADMSG);
        free(f0.p);
        free(f1.p);
}

/* Damaged data dirs (random bytes flipped, random cuts) are imported or refused, never more: no crash, no
 * leak, no other error (under ASan and UBSan in CI). */
static void test_data_dir_mutations(void **state) {
        Buf b = {};
        uint32_t crc = 0;
        char path[256];
        unsigned seed = 1, n_ok = 0, n_bad = 0;

        wal_put(&b, IMPORT_WAL_CRC, NULL, 0, &crc, true);
        wal_put(&b, IMPORT_WAL_METADATA, "\x08\x2a\x10\x01", 4, &crc, true);
        wal_put_snapshot(&b, 0, 0, &crc, true);
        for (uint64_t i = 1; i <= 12; i++)
                wal_put_request(&b, i, i % 3 == 0 ? "POST" : i % 4 == 0 ? "DELETE" : "PUT",
                                i % 2 ? "/1/a/b" : "/1/a", "value", i % 5 == 0 ? 1 : -1, &crc, true);
        wal_put_state(&b, 12, &crc, true);
        snprintf(path, sizeof(path), "%s/member/wal/0000000000000000-0000000000000000.wal", dir);

        log_set_max_level(LOG_CRIT);    /* 400 refusals */
        for (unsigned round = 0; round < 400; round++) {
                uint8_t *m = malloc(b.n);
                size_t n = b.n;
                Store *s = NULL;
                int r;

                memcpy(m, b.p, b.n);
                if (round % 4 == 0)
                        n = (size_t) rand_r(&seed) % b.n;
                else
                        for (unsigned k = 0; k < 1 + round % 3; k++)
                                m[(size_t) rand_r(&seed) % n] ^= (uint8_t) (1 + rand_r(&seed) % 255);
                write_file(path, m, n);
                free(m);
                r = import_v2_read(dir, NULL, NULL, NULL, &s, NULL);
                if (r == 0) {
                        assert_non_null(s);
                        store_free(s);
                        n_ok++;
                } else {
                        assert_true(r == -EBADMSG);
                        assert_null(s);
                        n_bad++;
                }
        }
        log_set_max_level(LOG_INFO);
        assert_true(n_bad > 0);
        assert_true(n_ok > 0);
        free(b.p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_crc32c),
                cmocka_unit_test(test_wal_frames),
                cmocka_unit_test(test_wal_torn_and_corrupt),
                cmocka_unit_test(test_parse_time),
                cmocka_unit_test_setup_teardown(test_data_dir_23, setup, teardown),
                cmocka_unit_test_setup_teardown(test_data_dir_two_files, setup, teardown),
                cmocka_unit_test_setup_teardown(test_data_dir_mutations, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
