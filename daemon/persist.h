/* SPDX-License-Identifier: Apache-2.0 */
/* persist.h - RocksDB under <data-dir>/member: Raft log, hard state, snapshot marker, applied store. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Written into the meta family at creation; a data dir with any other marker is refused. */
#define PERSIST_FORMAT "etcd2-rocksdb-1"

typedef struct Persist Persist;
/* A RocksDB write batch bound to one Persist (its column families). Reusable after persist_write(). */
typedef struct PersistBatch PersistBatch;

typedef struct PersistMeta {
        uint64_t applied_index;  /* last Raft index whose command is reflected in the store records */
        uint64_t etcd_index;     /* the store's index as of applied_index */
        uint64_t member_id;
        uint64_t cluster_id;
} PersistMeta;

typedef struct PersistSnapshot {
        uint64_t index, term;
        uint64_t conf_index;
        void *conf;              /* our encoding of the configuration (malloc'd) */
        size_t conf_len;
        void *data;              /* the FSM's snapshot data: a marker (malloc'd) */
        size_t data_len;
} PersistSnapshot;

void persist_snapshot_done(PersistSnapshot *s);

/* Opens <data_dir>/member (creating it, and data_dir, if absent or empty). wal_dir (NULL/"" = inside
 * member) is RocksDB's WAL directory. A directory holding anything else (etcd's member/wal and
 * member/snap, stray files, a RocksDB with foreign column families or an unknown format marker)
 * fails with a logged error: -EUCLEAN. */
int persist_open(const char *data_dir, const char *wal_dir, Persist **ret);
Persist *persist_free(Persist *p);
static inline void persist_freep(Persist **p) {
        if (*p)
                persist_free(*p);
}
/* True if persist_open() created a new, empty database (persist_meta_init() not yet called). */
bool persist_is_new(Persist *p);

/* Records the format marker and the IDs (synced). */
int persist_meta_init(Persist *p, uint64_t member_id, uint64_t cluster_id);
int persist_meta_load(Persist *p, PersistMeta *ret);

/* Raft hard state. set_term also clears the vote. Both are synced before returning. */
int persist_hard_state_load(Persist *p, uint64_t *ret_term, uint64_t *ret_vote);
int persist_set_term(Persist *p, uint64_t term);
int persist_set_vote(Persist *p, uint64_t vote);

/* Iterates the Raft log in index order starting at from_index; cb returns < 0 to abort. */
typedef int (*PersistLogCallback)(uint64_t index, uint64_t term, unsigned type, const void *data,
                                  size_t len, void *userdata);
int persist_log_foreach(Persist *p, uint64_t from_index, PersistLogCallback cb, void *userdata);
/* First and last index in the log (both 0 if empty). */
int persist_log_bounds(Persist *p, uint64_t *ret_first, uint64_t *ret_last);

/* Snapshot metadata: replaces the previous one and drops log entries below keep_from (synced). */
int persist_snapshot_put(Persist *p, const PersistSnapshot *s, uint64_t keep_from);
/* ret->index == 0 if there is none. */
int persist_snapshot_load(Persist *p, PersistSnapshot *ret);

/* Loads node records (key order, parents first) and history events into the store, then finishes it
 * with the persisted etcd index. */
int persist_load_store(Persist *p, Store *s);

/* Batches. */
int persist_batch_new(Persist *p, PersistBatch **ret);
PersistBatch *persist_batch_free(PersistBatch *b);
static inline void persist_batch_freep(PersistBatch **b) {
        if (*b)
                persist_batch_free(*b);
}
unsigned persist_batch_count(PersistBatch *b);
void persist_batch_log_append(PersistBatch *b, uint64_t index, uint64_t term, unsigned type,
                              const void *data, size_t len);
/* persist_set_term() as part of a batch. */
void persist_batch_term(PersistBatch *b, uint64_t term);
/* Deletes every log entry with index >= from_index. */
void persist_batch_log_truncate(PersistBatch *b, uint64_t from_index);
void persist_batch_node_put(PersistBatch *b, const char *key, const void *record, size_t len);
/* The same with a counted key (a snapshot's records): no copy to make it NUL-terminated. */
void persist_batch_node_put_raw(PersistBatch *b, const void *key, size_t key_len, const void *record, size_t len);
/* Deletes the node `key` and everything below it. */
void persist_batch_node_delete(PersistBatch *b, const char *key);
void persist_batch_history_add(PersistBatch *b, uint64_t index, const void *record, size_t len);
void persist_batch_history_drop(PersistBatch *b, uint64_t index);
/* Drops every event with an index <= index (one range deletion instead of many). */
void persist_batch_history_drop_upto(PersistBatch *b, uint64_t index);
/* The Raft index the store records reflect, and the etcd index at that point (one record). */
void persist_batch_applied(PersistBatch *b, uint64_t applied_index, uint64_t etcd_index);
/* persist_snapshot_put() as part of a batch: ordered after the state written before it. */
void persist_batch_snapshot_put(PersistBatch *b, const PersistSnapshot *s, uint64_t keep_from);
/* Writes and clears the batch. sync=true: fdatasync'ed before returning. Thread-safe with respect to
 * other batches (RocksDB serializes writers). */
int persist_write(PersistBatch *b, bool sync);
/* True once a write failed: every later write fails at once with -EIO without touching the database.
 * Write errors are -ENOSPC, -EDQUOT, -EROFS or -EIO, from RocksDB's message. */
bool persist_write_failed(Persist *p);

/* A consistent export of the applied state, read from one RocksDB snapshot: the applied Raft index
 * and etcd index, then every node record (kind 'n', key order) and the history window's events
 * (kind 'h', key = 8-byte big-endian index). For a follower's InstallSnapshot. Safe on a worker thread
 * while the loop reads and writes (it touches no shared read options). */
typedef int (*PersistExportCallback)(char kind, const void *key, size_t key_len, const void *value,
                                     size_t value_len, void *userdata);
int persist_export(Persist *p, uint64_t *ret_applied, uint64_t *ret_etcd_index, PersistExportCallback cb,
                   void *userdata);
/* Drops every node and history record (a snapshot from the leader replaces the state). */
void persist_batch_state_clear(PersistBatch *b);
/* A history record as exported (8-byte big-endian index key). */
void persist_batch_history_put_raw(PersistBatch *b, const void *key, size_t key_len, const void *record, size_t len);

/* Snapshot streams (snapshot.c). The leader reads its state through a cursor on one RocksDB snapshot,
 * a bounded piece at a time (safe on a worker thread): records as persist_export() gives them. */
typedef struct PersistCursor PersistCursor;
int persist_cursor_open(Persist *p, PersistCursor **ret, uint64_t *ret_applied, uint64_t *ret_etcd_index);
/* Calls cb for the next records until about `budget` bytes went by: 1 if more follow, 0 at the end. */
int persist_cursor_next(PersistCursor *c, size_t budget, PersistExportCallback cb, void *userdata);
PersistCursor *persist_cursor_free(PersistCursor *c);
static inline void persist_cursor_freep(PersistCursor **c) {
        if (*c)
                persist_cursor_free(*c);
}

/* The follower writes what it receives into a staging area (unsynced, bounded batches) that nothing
 * else reads. When the stream is complete, install_begin goes into the synced batch of the snapshot
 * put: a durable marker holding the snapshot record. persist_install_finish() (writer thread, or
 * start-up if a marker is found) then replaces the live state with the staged one in bounded batches
 * and ends with one synced write of the applied index and the snapshot record that drops the marker
 * and the staging. A kill at any point restarts with the old state (no marker yet) or finishes the
 * install (marker). Returns 1 if it installed, 0 if there was no marker. */
#define PERSIST_INSTALL_BATCH_BYTES ((size_t) 1024 * 1024)
void persist_batch_staging_clear(PersistBatch *b);
int persist_batch_staging_put(PersistBatch *b, char kind, const void *key, size_t key_len, const void *value,
                              size_t value_len);
int persist_batch_install_begin(PersistBatch *b, const PersistSnapshot *s, uint64_t keep_from, uint64_t applied,
                                uint64_t etcd_index);
int persist_install_finish(Persist *p, uint64_t *ret_applied, uint64_t *ret_etcd_index);

/* Consistent copy of the live database into <dir>/member (which must not exist yet). */
int persist_checkpoint(Persist *p, const char *dir);
