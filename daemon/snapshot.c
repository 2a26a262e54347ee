/* SPDX-License-Identifier: Apache-2.0 */
/* snapshot.c - the FSM side of Raft snapshots (see snapshot.h; the RocksDB side is in raft-io.c). */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "log.h"
#include "macro.h"
#include "raft-io.h"
#include "snapshot.h"

int snapshot_marker_make(uint64_t applied_index, struct raft_buffer **ret_bufs, unsigned *ret_n_bufs) {
        struct raft_buffer *b;
        uint8_t *m;

        b = raft_malloc(sizeof(*b));
        m = raft_malloc(16);
        if (!b || !m) {
                raft_free(b);
                raft_free(m);
                return -ENOMEM;
        }
        memcpy(m, RAFT_IO_SNAPSHOT_MARKER_MAGIC, 8);
        codec_put_be64(m + 8, applied_index);
        b->base = m;
        b->len = 16;
        *ret_bufs = b;
        *ret_n_bufs = 1;
        return 0;
}

int snapshot_classify(const void *buf, size_t len, SnapshotKind *ret_kind, uint64_t *ret_applied) {
        if (len >= RAFT_IO_SNAPSHOT_EXPORT_HEADER && memcmp(buf, RAFT_IO_SNAPSHOT_EXPORT_MAGIC, 8) == 0) {
                *ret_kind = SNAPSHOT_EXPORT;
                *ret_applied = codec_get_be64((const uint8_t *) buf + 8);
                return 0;
        }
        if (len == 16 && memcmp(buf, RAFT_IO_SNAPSHOT_MARKER_MAGIC, 8) == 0) {
                *ret_kind = SNAPSHOT_MARKER;
                *ret_applied = codec_get_be64((const uint8_t *) buf + 8);
                return 0;
        }
        return -EBADMSG;
}

/* Keys come from the network: they are copied to the heap (a stack buffer sized by the sender
 * overflowed with a 64 MiB key), and a key with a NUL inside is refused rather than truncated. */
static int load_record(char kind, const void *key, size_t key_len, const void *value, size_t value_len,
                       void *userdata) {
        Store *st = userdata;

        if (kind == 'n') {
                _cleanup_(freep) char *k = NULL;

                if (memchr(key, 0, key_len))
                        return -EBADMSG;
                k = strndup(key, key_len);
                if (!k)
                        return -ENOMEM;
                return store_load_node(st, k, value, value_len);
        }
        return store_load_event(st, codec_get_be64(key), value, value_len);
}

int snapshot_load_store(const void *buf, size_t len, Store *old, Store **ret_store, uint64_t *ret_applied,
                        uint64_t *ret_etcd_index) {
        Store *st = NULL;
        uint64_t applied = 0, etcd_index = 0;
        int r;

        r = store_new(&st);
        if (r < 0)
                return r;
        r = raft_io_snapshot_export_parse(buf, len, &applied, &etcd_index, load_record, st);
        if (r >= 0)
                r = store_load_finish(st, etcd_index);
        if (r >= 0 && old)
                r = store_move_watchers(old, st);
        if (r < 0) {
                store_free(st);
                return r;
        }
        *ret_store = st;
        *ret_applied = applied;
        *ret_etcd_index = etcd_index;
        return 0;
}
