/* SPDX-License-Identifier: Apache-2.0 */
/* snapshot.h - the FSM side of Raft snapshots: the local marker, and a leader's state as a new Store. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <raft.h>

#include "store.h"

/* The FSM's own snapshot is a marker (the state is in RocksDB already): RAFT_IO_SNAPSHOT_MARKER_MAGIC
 * and the be64 Raft index it covers, as one raft_malloc'd buffer for fsm->snapshot. */
int snapshot_marker_make(uint64_t applied_index, struct raft_buffer **ret_bufs, unsigned *ret_n_bufs);

/* What fsm->restore was given. */
typedef enum SnapshotKind {
        SNAPSHOT_MARKER,         /* our own marker: *ret_applied is the index it covers */
        SNAPSHOT_EXPORT,         /* a leader's export (raft-io.h), already written to RocksDB */
} SnapshotKind;

/* Classifies restore data. -EBADMSG for anything else. */
int snapshot_classify(const void *buf, size_t len, SnapshotKind *ret_kind, uint64_t *ret_applied);

/* Builds the Store of a leader's export and moves the watchers of `old` (may be NULL) into it, as
 * etcd2's store Recovery keeps its watcherHub: clients waiting on this member keep waiting and are
 * told about the next matching change. On failure `old` keeps its watchers. */
int snapshot_load_store(const void *buf, size_t len, Store *old, Store **ret_store, uint64_t *ret_applied,
                        uint64_t *ret_etcd_index);
