/* SPDX-License-Identifier: Apache-2.0 */
/* snapshot.h - the FSM side of Raft snapshots: the local marker, and a leader's state as a new Store. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <raft.h>
#include <systemd/sd-event.h>

#include "peer.h"
#include "persist.h"
#include "raft-io.h"
#include "store.h"

/* The FSM's own snapshot is a marker (the state is in RocksDB already): RAFT_IO_SNAPSHOT_MARKER_MAGIC
 * and the be64 Raft index it covers, as one raft_malloc'd buffer for fsm->snapshot. */
int snapshot_marker_make(uint64_t applied_index, struct raft_buffer **ret_bufs, unsigned *ret_n_bufs);

/* What fsm->restore was given. */
typedef enum SnapshotKind {
        SNAPSHOT_MARKER,         /* our own marker: *ret_applied is the index it covers */
        SNAPSHOT_EXPORT,         /* a leader's export (raft-io.h), already written to RocksDB */
        SNAPSHOT_STREAMED,       /* a reference to a streamed snapshot: *ret_applied is the stream ID */
} SnapshotKind;

/* Classifies restore data. -EBADMSG for anything else. */
int snapshot_classify(const void *buf, size_t len, SnapshotKind *ret_kind, uint64_t *ret_applied);

/* Builds the Store of a leader's export and moves the watchers of `old` (may be NULL) into it, as
 * etcd2's store Recovery keeps its watcherHub: clients waiting on this member keep waiting and are
 * told about the next matching change. On failure `old` keeps its watchers. */
int snapshot_load_store(const void *buf, size_t len, Store *old, Store **ret_store, uint64_t *ret_applied,
                        uint64_t *ret_etcd_index);

/* ---- Streaming a snapshot to a follower in bounded chunks ----
 *
 * libraft sends a snapshot as one InstallSnapshot message. Ours carries only a reference
 * (RAFT_IO_SNAPSHOT_REF_MAGIC, be64 stream ID: raft-io's snapshot_get). When the peer layer is asked
 * to send such a message, the leader first streams the state as chunk frames (opaque peer frames of
 * kind SNAPSHOT_MSG_CHUNK), each produced by a thread reading one RocksDB snapshot when the previous
 * chunk has gone into the socket, and only then the InstallSnapshot frame itself; libraft's send
 * completes then (or fails when the connection broke meanwhile, so libraft retries). The follower
 * writes the chunks into a staging area as they come and hands the InstallSnapshot to libraft only
 * if the stream it refers to arrived complete and intact (sequence, record count, CRC-32); raft-io's
 * snapshot_put then switches to the staged state (persist.h: staged install).
 *
 * Chunk body (after the kind byte and the varint stream ID): be64 sequence number (from 0), u8
 * flags (SNAPSHOT_CHUNK_FIRST: be64 applied Raft index and be64 etcd index follow; SNAPSHOT_CHUNK_LAST:
 * be64 record count and be64 CRC-32 of every record byte of the stream follow), then records as in
 * the export (raft-io.h). */
#define SNAPSHOT_MSG_CHUNK 5   /* opaque message kinds, next to server.c's MSG_* */
#define SNAPSHOT_MSG_NACK 6    /* follower -> sender: varint stream ID; it refused that InstallSnapshot */
#define SNAPSHOT_CHUNK_FIRST 1
#define SNAPSHOT_CHUNK_LAST 2
#define SNAPSHOT_CHUNK_SIZE_DEFAULT ((size_t) 1024 * 1024)
/* How long the leader waits for a follower to answer a snapshot (libraft's default is 30 s, too
 * short to stream and install a store of gigabytes). */
#define SNAPSHOT_INSTALL_TIMEOUT_MSEC (10U * 60U * 1000U)
/* A snapshot streamed completely is not streamed again to the same follower for this long: it
 * answers only once it installed it. */
#define SNAPSHOT_RESEND_GRACE_MSEC 30000U

typedef struct SnapshotChunk {
        uint64_t seq;
        unsigned flags;
        uint64_t applied, etcd_index;   /* FIRST */
        uint64_t n_records, crc;        /* LAST */
        const uint8_t *records;
        size_t records_size;
} SnapshotChunk;

/* Encodes a whole chunk message (kind byte and stream ID included) into a malloc'd buffer. */
int snapshot_chunk_encode(uint64_t stream_id, const SnapshotChunk *c, uint8_t **ret, size_t *ret_size);
/* Decodes a chunk body (after the kind byte and stream ID); records point into `buf`. -EBADMSG. */
int snapshot_chunk_decode(const void *buf, size_t size, SnapshotChunk *ret);

typedef struct SnapshotStreams SnapshotStreams;
int snapshot_streams_new(sd_event *event, Persist *persist, RaftIo *rio, PeerTransport *peers,
                         SnapshotStreams **ret);
SnapshotStreams *snapshot_streams_free(SnapshotStreams *ss);
/* Leader: libraft's InstallSnapshot with a reference. 0: taken, the send completes later; -ENOTSUP:
 * not a reference (send it as usual); other < 0: failed. */
int snapshot_streams_send(SnapshotStreams *ss, struct raft_io_send *req, const struct raft_message *m);
/* Leader: the follower `from` refused the InstallSnapshot of `stream_id` (its stream did not arrive
 * complete, e.g. it was installing another): the next repeat streams again. */
void snapshot_streams_nack(SnapshotStreams *ss, uint64_t from, uint64_t stream_id);
/* Completes every stream being sent with RAFT_CANCELED (before libraft closes). */
void snapshot_streams_cancel(SnapshotStreams *ss);
/* Follower: a chunk message's body after the kind byte, with its stream ID. */
void snapshot_streams_chunk(SnapshotStreams *ss, uint64_t from, uint64_t stream_id, const void *body, size_t size);
/* Follower: may this InstallSnapshot go to libraft? (true for anything but a reference; for a
 * reference, only if its stream arrived complete, which raft-io is then told about). */
bool snapshot_streams_ready(SnapshotStreams *ss, const struct raft_message *m);

/* Start-up: finishes a staged install a kill interrupted (persist_install_finish). */
int snapshot_recover(Persist *persist);
/* For raft_io_set_install_loader(): builds the Store of the installed state (on the writer thread). */
int snapshot_load_installed(Persist *persist, void **ret, void *userdata);
/* fsm->restore of a streamed snapshot: the Store raft-io built, with the watchers of `old` moved
 * into it. A member that cannot have it stops (LOG_CRIT, exit status 1): memory and disk differ. */
Store *snapshot_take_installed(RaftIo *rio, Store *old, uint64_t stream_id, uint64_t *ret_applied);
