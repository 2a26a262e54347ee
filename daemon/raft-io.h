/* SPDX-License-Identifier: Apache-2.0 */
/* raft-io.h - our struct raft_io for libraft: sd-event ticks, group commit to RocksDB, transport hooks. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <raft.h>
#include <systemd/sd-event.h>

#include "persist.h"

typedef struct RaftIo RaftIo;

/* Called after the io delivered something to libraft from the event loop (a tick, a completed
 * group commit, a received message): libraft may have changed state, committed or applied entries.
 * Never called from inside a libraft call. */
typedef void (*RaftIoEventCallback)(RaftIo *io, void *userdata);

/* Called right before a group's batch is sealed for writing: the last chance to add state that must
 * be written atomically with what the batch holds (e.g. the applied index). */
typedef void (*RaftIoBatchCallback)(RaftIo *io, PersistBatch *batch, void *userdata);

int raft_io_new(sd_event *event, Persist *persist, RaftIo **ret);
RaftIo *raft_io_free(RaftIo *io);
static inline void raft_io_freep(RaftIo **io) {
        if (*io)
                raft_io_free(*io);
}

struct raft_io *raft_io_get(RaftIo *io);
void raft_io_set_event_callback(RaftIo *io, RaftIoEventCallback cb, RaftIoBatchCallback batch_cb,
                                void *userdata);

/* The write batch of the group being accumulated: state written here (the applied store) becomes
 * durable with, and atomically with, the next group of log entries, without blocking the loop. Call
 * raft_io_kick() after adding to it. The pointer changes between groups: fetch it each time. */
PersistBatch *raft_io_batch(RaftIo *io);
void raft_io_kick(RaftIo *io);

/* The raft instance this io serves (after raft_init()): lets the io guard the leader against libraft
 * 0.15's flaws (raft-guard.h) and tell followers a new commit index at once. */
struct RaftGuard;
void raft_io_set_raft(RaftIo *io, struct raft *raft);
const struct RaftGuard *raft_io_guard(RaftIo *io);

/* Transport between members. `send` must copy/serialize the message before returning (libraft's
 * buffers are valid only until the completion) and later report the outcome with
 * raft_io_send_done() (which defers libraft's callback to the loop); returning < 0 fails the send
 * with RAFT_NOCONNECTION. Without a transport every send fails that way. */
typedef int (*RaftIoSendFunc)(RaftIo *io, struct raft_io_send *req, const struct raft_message *m,
                              void *userdata);
void raft_io_set_transport(RaftIo *io, RaftIoSendFunc send, void *userdata);
void raft_io_send_done(RaftIo *io, struct raft_io_send *req, int status);
/* Hands a received message to libraft (which takes ownership of its raft_malloc'd payload). Call it
 * from the event loop, never from inside a libraft callback. */
void raft_io_deliver(RaftIo *io, struct raft_message *message);

/* Storage failure. Any failed write of Raft state (log entries, term, vote, truncation, snapshot
 * record, the applied state riding along) stops the member: LOG_CRIT, STATUS=/ERRNO= to systemd,
 * libraft frozen (it never hears of the failure, see raft-io.c), no more writes, then `cb` once from
 * the loop (fail the waiting proposals: they must be answered 5xx, never 2xx), then the process exits
 * with EXIT_FAILURE through raft_io_exit a moment later (at once outside the loop). */
typedef void (*RaftIoFatalCallback)(RaftIo *io, void *userdata);
void raft_io_set_fatal_callback(RaftIo *io, RaftIoFatalCallback cb, void *userdata);
bool raft_io_failed(RaftIo *io);
/* For failures after which not even the loop may run on (a durable snapshot that cannot be installed
 * or loaded: memory and disk would differ): the same LOG_CRIT and STATUS=/ERRNO= as a storage failure,
 * then exit status 1 at once. */
__attribute__((noreturn)) void raft_io_die(RaftIo *io, int error, const char *what);
/* _exit() after flushing stdio; unit tests replace it (it may then return). */
extern void (*raft_io_exit)(int status);

/* Completes all queued work (group commit, deferred callbacks, close) synchronously, without the
 * event loop; used at shutdown, when the loop may no longer run. Returns the number of work items. */
unsigned raft_io_drain(RaftIo *io);
/* Number of appended entries not yet durable. */
unsigned raft_io_n_pending_appends(RaftIo *io);

/* Configuration encoding for the snapshot record (libraft exports only the encoder of its own). */
int raft_io_configuration_encode(const struct raft_configuration *c, void **ret, size_t *ret_len);
int raft_io_configuration_decode(const void *buf, size_t len, struct raft_configuration *ret);

/* Snapshot data. Locally a snapshot is a marker (the state is in RocksDB already): MARKER magic and
 * the 8-byte big-endian Raft index it covers. A snapshot sent to a follower (snapshot_get) is a REF
 * instead: the state follows as a stream of chunks ahead of the InstallSnapshot (snapshot.h), so no
 * message holds the whole state. Members of an earlier version sent an EXPORT (still installed when
 * received): EXPORT magic, be64 applied Raft index, be64 etcd index, then records (u8 kind 'n' node /
 * 'h' history event, varint key length, key, varint value length, value), the whole state in one
 * buffer; installing one (snapshot_put) replaces the applied state in RocksDB atomically with the
 * snapshot record, which then holds a marker only. */
/* A reference to a streamed snapshot (snapshot.h): REF magic and the be64 stream ID. */
#define RAFT_IO_SNAPSHOT_REF_MAGIC "E2SNAP03"
#define RAFT_IO_SNAPSHOT_REF_SIZE 16
#define RAFT_IO_SNAPSHOT_MARKER_MAGIC "E2SNAP01"
#define RAFT_IO_SNAPSHOT_EXPORT_MAGIC "E2SNAP02"
#define RAFT_IO_SNAPSHOT_EXPORT_HEADER 24

typedef int (*RaftIoExportRecordFunc)(char kind, const void *key, size_t key_len, const void *value,
                                      size_t value_len, void *userdata);
/* Validates an export and calls `cb` for each record. -EBADMSG on garbage (nothing is trusted). */
/* Calls cb for every record of `buf` (kind, varint key length, key, varint value length, value); -EBADMSG if
 * the records are malformed (a key of 'h' is 8 bytes, a node key non-empty without NUL); *ret_n: count. */
int raft_io_snapshot_records_parse(const void *buf, size_t size, RaftIoExportRecordFunc cb, void *userdata,
                                   uint64_t *ret_n);
int raft_io_snapshot_export_parse(const void *buf, size_t len, uint64_t *ret_applied, uint64_t *ret_etcd_index,
                                  RaftIoExportRecordFunc cb, void *userdata);

/* Snapshot streams (snapshot.c). The follower received stream `stream_id` complete into staging:
 * a snapshot_put of its reference may install it. */
void raft_io_snapshot_staged(RaftIo *rio, uint64_t stream_id, uint64_t applied, uint64_t etcd_index);
/* The staging is being replaced by a new stream: nothing staged any more. */
void raft_io_snapshot_unstage(RaftIo *rio);
/* A staged stream is being installed (writer thread): the staging must not change. */
bool raft_io_installing(RaftIo *rio);
/* Builds the in-memory state of an installed snapshot on the writer thread (*ret); called with a
 * NULL persist to free an unused result. */
typedef int (*RaftIoInstallLoader)(Persist *persist, void **ret, void *userdata);
void raft_io_set_install_loader(RaftIo *rio, RaftIoInstallLoader loader, void *userdata);
/* What the loader built for the last install (once), or NULL, and the applied index installed. */
void *raft_io_take_installed(RaftIo *rio, uint64_t *ret_applied);
