/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-import.c - libFuzzer target for the etcd v2 data-dir import (import.c). The first byte picks:
 *   0: one WAL file's bytes through the record decoder (as the last file, then as an earlier one);
 *   1: a Go RFC 3339 time;
 *   2: a whole data dir read by import_v2_read(): the rest is split at "\n%%\n"; the first part is the
 *      store JSON of a .snap at index 10 (none if empty), each further part the data of one committed
 *      raft entry after it (a v2 Request; a part starting with 'C' is a ConfChange), framed here into
 *      a WAL with valid CRCs so that the fuzzer reaches the JSON and the requests behind them. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "etcd2-v2.pb-c.h"
#include "import.h"
#include "log.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define SNAP_INDEX 10

static char dir[64];

typedef struct Buf {
        uint8_t *p;
        size_t n;
} Buf;

static void buf_put(Buf *b, const void *d, size_t n) {
        uint8_t *p = realloc(b->p, b->n + n + 1);

        if (!p)
                abort();
        b->p = p;
        if (n > 0)
                memcpy(b->p + b->n, d, n);
        b->n += n;
}

static void wal_put(Buf *b, int64_t type, const void *data, size_t len, uint32_t *crc) {
        Etcd2v2__WalRecord rec = ETCD2V2__WAL_RECORD__INIT;
        uint8_t frame[8], *packed;
        size_t n;

        rec.has_type = rec.has_crc = true;
        rec.type = type;
        if (type != IMPORT_WAL_CRC) {
                *crc = import_crc32c(*crc, data, len);
                rec.has_data = true;
                rec.data.data = (uint8_t *) data;
                rec.data.len = len;
        }
        rec.crc = *crc;
        n = etcd2v2__wal_record__get_packed_size(&rec);
        packed = malloc(n);
        if (!packed)
                abort();
        etcd2v2__wal_record__pack(&rec, packed);
        for (unsigned i = 0; i < 8; i++)
                frame[i] = (uint8_t) ((uint64_t) n >> (8 * i));
        buf_put(b, frame, 8);
        buf_put(b, packed, n);
        free(packed);
}

static void wal_put_packed(Buf *b, int64_t type, const ProtobufCMessage *m, uint32_t *crc) {
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *p = malloc(n + 1);

        if (!p)
                abort();
        protobuf_c_message_pack(m, p);
        wal_put(b, type, p, n, crc);
        free(p);
}

static void write_file(const char *name, const void *p, size_t n) {
        char path[128];
        int fd;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, p, n) != (ssize_t) n)
                abort();
        close(fd);
}

static void write_snap(const uint8_t *json, size_t len) {
        Etcd2v2__Snapshot s = ETCD2V2__SNAPSHOT__INIT;
        Etcd2v2__SnapshotMetadata md = ETCD2V2__SNAPSHOT_METADATA__INIT;
        Etcd2v2__SnapFile f = ETCD2V2__SNAP_FILE__INIT;
        uint8_t *inner, *outer;
        size_t n, m;

        md.has_index = md.has_term = true;
        md.index = SNAP_INDEX;
        md.term = 1;
        s.metadata = &md;
        s.has_data = true;
        s.data.data = (uint8_t *) json;
        s.data.len = len;
        n = etcd2v2__snapshot__get_packed_size(&s);
        inner = malloc(n);
        if (!inner)
                abort();
        etcd2v2__snapshot__pack(&s, inner);
        f.has_crc = f.has_data = true;
        f.crc = import_crc32c(0, inner, n);
        f.data.data = inner;
        f.data.len = n;
        m = etcd2v2__snap_file__get_packed_size(&f);
        outer = malloc(m);
        if (!outer)
                abort();
        etcd2v2__snap_file__pack(&f, outer);
        write_file("member/snap/0000000000000001-000000000000000a.snap", outer, m);
        free(inner);
        free(outer);
}

static const uint8_t *find_sep(const uint8_t *p, const uint8_t *end) {
        for (; p + 4 <= end; p++)
                if (memcmp(p, "\n%%\n", 4) == 0)
                        return p;
        return end;
}

static void data_dir(const uint8_t *data, size_t size) {
        Etcd2v2__WalMetadata md = ETCD2V2__WAL_METADATA__INIT;
        Etcd2v2__WalSnapshot ws = ETCD2V2__WAL_SNAPSHOT__INIT;
        Etcd2v2__HardState hs = ETCD2V2__HARD_STATE__INIT;
        const uint8_t *end = data + size, *p = data, *q;
        uint64_t index = 0;
        uint32_t crc = 0;
        Store *st = NULL;
        ImportSummary sum;
        Buf b = {};
        char path[128];

        q = find_sep(p, end);
        snprintf(path, sizeof(path), "%s/member/snap/0000000000000001-000000000000000a.snap", dir);
        (void) unlink(path);
        if (q > p) {
                write_snap(p, (size_t) (q - p));
                index = SNAP_INDEX;
        }

        wal_put(&b, IMPORT_WAL_CRC, NULL, 0, &crc);
        md.has_node_id = md.has_cluster_id = true;
        md.node_id = 0x2a;
        md.cluster_id = 1;
        wal_put_packed(&b, IMPORT_WAL_METADATA, &md.base, &crc);
        ws.has_index = ws.has_term = true;
        ws.index = index;
        ws.term = index > 0;
        wal_put_packed(&b, IMPORT_WAL_SNAPSHOT, &ws.base, &crc);
        while (q < end) {
                Etcd2v2__Entry e = ETCD2V2__ENTRY__INIT;

                p = q + 4;
                q = find_sep(p, end);
                e.has_term = e.has_index = e.has_type = e.has_data = true;
                e.term = 1;
                e.index = ++index;
                e.type = q > p && p[0] == 'C';
                e.data.data = (uint8_t *) p + e.type;
                e.data.len = (size_t) (q - p) - e.type;
                wal_put_packed(&b, IMPORT_WAL_ENTRY, &e.base, &crc);
        }
        hs.has_term = hs.has_commit = true;
        hs.term = 1;
        hs.commit = index;
        wal_put_packed(&b, IMPORT_WAL_STATE, &hs.base, &crc);
        write_file("member/wal/0000000000000000-0000000000000000.wal", b.p, b.n);
        free(b.p);

        if (import_v2_read(dir, NULL, NULL, NULL, &st, &sum) >= 0) {
                StoreResult res = {};

                if (store_get(st, "/", true, true, 0, &res) >= 0)
                        store_result_done(&res);
                store_free(st);
        }
}

static int on_record(int64_t type, uint32_t crc, const uint8_t *data, size_t len, void *userdata) {
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint32_t crc = 0;
        char *error = NULL, *s;
        uint64_t usec;

        if (size < 1 || size > 1024 * 1024)
                return 0;
        switch (data[0] % 3) {
        case 0:
                (void) import_wal_file_decode(data + 1, size - 1, true, &crc, on_record, NULL, &error);
                free(error);
                error = NULL;
                crc = 0;
                (void) import_wal_file_decode(data + 1, size - 1, false, &crc, on_record, NULL, &error);
                free(error);
                break;
        case 1:
                s = strndup((const char *) data + 1, size - 1);
                if (s)
                        (void) import_parse_time(s, &usec);
                free(s);
                break;
        case 2:
                data_dir(data + 1, size - 1);
                break;
        }
        return 0;
}

static void cleanup(void) {
        char path[128];

        snprintf(path, sizeof(path), "%s/member/snap/0000000000000001-000000000000000a.snap", dir);
        (void) unlink(path);
        snprintf(path, sizeof(path), "%s/member/wal/0000000000000000-0000000000000000.wal", dir);
        (void) unlink(path);
        snprintf(path, sizeof(path), "%s/member/snap", dir);
        (void) rmdir(path);
        snprintf(path, sizeof(path), "%s/member/wal", dir);
        (void) rmdir(path);
        snprintf(path, sizeof(path), "%s/member", dir);
        (void) rmdir(path);
        (void) rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        char path[128];

        log_set_max_level(LOG_CRIT);
        snprintf(dir, sizeof(dir), "%s/fuzz-import-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
        if (!mkdtemp(dir))
                abort();
        snprintf(path, sizeof(path), "%s/member", dir);
        (void) mkdir(path, 0700);
        snprintf(path, sizeof(path), "%s/member/wal", dir);
        (void) mkdir(path, 0700);
        snprintf(path, sizeof(path), "%s/member/snap", dir);
        (void) mkdir(path, 0700);
        atexit(cleanup);
        return 0;
}
