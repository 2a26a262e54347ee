/* SPDX-License-Identifier: Apache-2.0 */
/* import.h - --import-v2-data-dir: an etcd v2 data dir (WAL + .snap) into our empty data dir. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "store.h"

/* CRC-32C (Castagnoli), chained as Go's crc32.Update(crc, castagnoliTable, buf): 0 starts a new one. */
uint32_t import_crc32c(uint32_t crc, const void *buf, size_t len);

/* The WAL's own record types (wal/wal.go). */
enum {
        IMPORT_WAL_METADATA = 1,
        IMPORT_WAL_ENTRY = 2,
        IMPORT_WAL_STATE = 3,
        IMPORT_WAL_CRC = 4,
        IMPORT_WAL_SNAPSHOT = 5,
};

/* One WAL file's records, as wal/decoder.go frames them: an int64 little-endian length whose upper byte
 * carries the padding (3.x: negative length, padding in its low 3 bits), then a walpb.Record; every
 * record but a CRC record chains the CRC-32C of its data into *crc. A zero length ends the file
 * (preallocated space). cb gets each record's type and data; < 0 from it stops with that error.
 * Returns 0 at the end, 1 if the file ends in a torn record (only allowed if last_file: a partial
 * record, or one that fails to decode or to match its CRC while a 512-byte sector of it is all
 * zeros; what follows is ignored, as etcd does), -EBADMSG for anything else corrupt, with
 * *ret_error a description (malloc'd). */
typedef int (*ImportRecordCallback)(int64_t type, uint32_t crc, const uint8_t *data, size_t len, void *userdata);
int import_wal_file_decode(const uint8_t *buf, size_t size, bool last_file, uint32_t *crc,
                           ImportRecordCallback cb, void *userdata, char **ret_error);

/* RFC 3339 time as Go's time.Time marshals it ("2006-01-02T15:04:05.999999999Z07:00") into Unix
 * microseconds; the zero time ("0001-01-01T00:00:00Z") is 0 (permanent). -EINVAL if unparsable. */
int import_parse_time(const char *s, uint64_t *ret_usec);

/* Reads the etcd v2 data dir `dir` (member/snap, member/wal) into a new Store: the newest valid
 * snapshot, then the committed WAL entries after it, applied as etcd2's applyRequest() does. The
 * sink (may be NULL) sees every node and event of the result except those under /0 (membership),
 * which stays out of the store's durable records. Nothing is written. Returns < 0 with a logged error
 * for a missing, truncated or corrupt data dir. With a sink, what a first run without one warned about
 * (a torn record, a broken .snap) is logged at debug level. */
typedef struct ImportSummary {
        uint64_t snapshot_index, snapshot_term;   /* 0 if there was no snapshot */
        uint64_t commit_index;                    /* raft index of the last replayed entry */
        uint64_t n_entries;                       /* v2 requests replayed */
        uint64_t n_skipped;                       /* v3 requests (3.x) skipped */
        uint64_t n_snapshot_nodes;
        bool torn;                                /* the last WAL record was torn and dropped */
} ImportSummary;

/* Called after each snapshot node and each replayed entry: the caller may flush what its sink gathered.
 * < 0 aborts the import with that error. */
typedef int (*ImportFlushCallback)(void *userdata);
int import_v2_read(const char *dir, const StoreSink *sink, ImportFlushCallback flush, void *userdata,
                   Store **ret_store, ImportSummary *ret_summary);

/* The whole of --import-v2-data-dir, before the member starts: refuses a data dir that holds anything,
 * reads c->import_v2_data_dir and writes <data-dir>/member atomically (built beside it, renamed into
 * place), with c's member and cluster IDs and a Raft snapshot at index 1 standing for the state: server_new()
 * restarts from it as a one-member cluster. */
int import_v2_data_dir(const Config *c);
