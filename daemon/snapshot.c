/* SPDX-License-Identifier: Apache-2.0 */
/* snapshot.c - the FSM side of Raft snapshots (see snapshot.h; the RocksDB side is in raft-io.c). */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <syslog.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zlib.h>

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
        if (len == RAFT_IO_SNAPSHOT_REF_SIZE && memcmp(buf, RAFT_IO_SNAPSHOT_REF_MAGIC, 8) == 0) {
                *ret_kind = SNAPSHOT_STREAMED;
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

/* ---- chunk codec ---- */

int snapshot_chunk_encode(uint64_t stream_id, const SnapshotChunk *c, uint8_t **ret, size_t *ret_size) {
        uint8_t *b, *p;

        b = malloc(1 + 10 + 9 + 32 + c->records_size);
        if (!b)
                return -ENOMEM;
        p = b;
        *p++ = SNAPSHOT_MSG_CHUNK;
        p += codec_varint_put(p, stream_id);
        codec_put_be64(p, c->seq);
        p += 8;
        *p++ = (uint8_t) c->flags;
        if (c->flags & SNAPSHOT_CHUNK_FIRST) {
                codec_put_be64(p, c->applied);
                codec_put_be64(p + 8, c->etcd_index);
                p += 16;
        }
        if (c->flags & SNAPSHOT_CHUNK_LAST) {
                codec_put_be64(p, c->n_records);
                codec_put_be64(p + 8, c->crc);
                p += 16;
        }
        if (c->records_size > 0)
                memcpy(p, c->records, c->records_size);
        p += c->records_size;
        *ret = b;
        *ret_size = (size_t) (p - b);
        return 0;
}

int snapshot_chunk_decode(const void *buf, size_t size, SnapshotChunk *ret) {
        const uint8_t *p = buf;
        SnapshotChunk c = {};
        size_t need = 9;

        if (size < need)
                return -EBADMSG;
        c.seq = codec_get_be64(p);
        c.flags = p[8];
        if (c.flags & ~(unsigned) (SNAPSHOT_CHUNK_FIRST | SNAPSHOT_CHUNK_LAST))
                return -EBADMSG;
        if (c.flags & SNAPSHOT_CHUNK_FIRST) {
                if (size < need + 16)
                        return -EBADMSG;
                c.applied = codec_get_be64(p + need);
                c.etcd_index = codec_get_be64(p + need + 8);
                need += 16;
        }
        if (c.flags & SNAPSHOT_CHUNK_LAST) {
                if (size < need + 16)
                        return -EBADMSG;
                c.n_records = codec_get_be64(p + need);
                c.crc = codec_get_be64(p + need + 8);
                need += 16;
        }
        c.records = p + need;
        c.records_size = size - need;
        *ret = c;
        return 0;
}

/* ---- sending (leader) ---- */

typedef struct SnapshotSender SnapshotSender;

struct SnapshotStreams {
        sd_event *event;
        Persist *persist;
        RaftIo *rio;
        PeerTransport *peers;
        size_t chunk_size;
        uint64_t test_delay_usec;       /* tests: a pause between chunks, to kill a member mid-stream */
        SnapshotSender *senders;
        /* Streams sent completely, a few of the last: libraft repeats the snapshot on every
         * heartbeat until the follower answers, which it does only after its install. */
        struct {
                uint64_t to, index;
                raft_time msec;
        } sent[8];
        unsigned n_sent;

        /* receiving: one stream at a time (a new one from anyone replaces it) */
        PersistBatch *batch;
        bool receiving, complete;
        uint64_t from, stream_id, next_seq;
        uint64_t applied, etcd_index;
        uint64_t n_records, bytes;
        uLong crc;
};

struct SnapshotSender {
        SnapshotStreams *ss;
        SnapshotSender *next;
        uint64_t to, stream_id;
        char *address;
        struct raft_io_send *req;
        /* A copy of libraft's message (which lives on its stack); what it points to (configuration,
         * data) is the snapshot's, valid until req completes. The address is our copy. */
        struct raft_message m;
        uint64_t lost_at_start;         /* PeerStats.n_lost then: a change means frames were lost */
        uint64_t n_chunks, bytes;
        bool all_queued;                /* the last chunk is queued: the message itself is next */
        raft_time started_msec;

        /* the producer thread hands over one chunk at a time */
        pthread_t thread;
        bool thread_started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        uint8_t *ready;
        size_t ready_size;
        bool ready_last, stop, failed;
        int efd;
        sd_event_source *efd_source;
        sd_event_source *delay_source;
        uint64_t not_before_usec;
};

typedef struct ChunkBuf {
        uint8_t *p;
        size_t n, alloc;
        uint64_t n_records;
        uLong crc;
} ChunkBuf;

static int chunk_record(char kind, const void *key, size_t key_len, const void *value, size_t value_len,
                        void *userdata) {
        ChunkBuf *b = userdata;
        size_t need = 1 + 20 + key_len + value_len, start;

        if (b->n + need > b->alloc) {
                size_t a = MAX(b->alloc * 2, b->n + need);
                uint8_t *q = realloc(b->p, a);

                if (!q)
                        return -ENOMEM;
                b->p = q;
                b->alloc = a;
        }
        start = b->n;
        b->p[b->n++] = (uint8_t) kind;
        b->n += codec_varint_put(b->p + b->n, key_len);
        memcpy(b->p + b->n, key, key_len);
        b->n += key_len;
        b->n += codec_varint_put(b->p + b->n, value_len);
        if (value_len > 0)
                memcpy(b->p + b->n, value, value_len);
        b->n += value_len;
        b->crc = crc32(b->crc, b->p + start, (uInt) (b->n - start));
        b->n_records++;
        return 0;
}

/* The producer: reads the state through one RocksDB snapshot, a chunk at a time, and waits for the
 * loop to take each chunk before it reads the next (so at most two chunks exist per stream). */
static void *sender_thread(void *userdata) {
        SnapshotSender *x = userdata;
        _cleanup_(persist_cursor_freep) PersistCursor *cur = NULL;
        ChunkBuf b = { .crc = crc32(0, NULL, 0) };
        uint64_t applied = 0, etcd_index = 0, seq = 0;
        int r;

        (void) pthread_setname_np(pthread_self(), "snapshot-send");
        r = persist_cursor_open(x->ss->persist, &cur, &applied, &etcd_index);
        for (bool last = false; r >= 0 && !last; seq++) {
                SnapshotChunk c = { .seq = seq };
                uint8_t *msg = NULL;
                size_t msg_size = 0;

                b.n = 0;
                r = persist_cursor_next(cur, x->ss->chunk_size, chunk_record, &b);
                if (r < 0)
                        break;
                last = r == 0;
                if (seq == 0) {
                        c.flags |= SNAPSHOT_CHUNK_FIRST;
                        c.applied = applied;
                        c.etcd_index = etcd_index;
                }
                if (last) {
                        c.flags |= SNAPSHOT_CHUNK_LAST;
                        c.n_records = b.n_records;
                        c.crc = b.crc;
                }
                c.records = b.p;
                c.records_size = b.n;
                r = snapshot_chunk_encode(x->stream_id, &c, &msg, &msg_size);
                if (r < 0)
                        break;

                pthread_mutex_lock(&x->lock);
                while (x->ready && !x->stop)
                        pthread_cond_wait(&x->cond, &x->lock);
                if (x->stop) {
                        pthread_mutex_unlock(&x->lock);
                        free(msg);
                        r = -ECANCELED;
                        break;
                }
                x->ready = msg;
                x->ready_size = msg_size;
                x->ready_last = last;
                pthread_mutex_unlock(&x->lock);
                (void) eventfd_write(x->efd, 1);
        }
        free(b.p);
        if (r < 0 && r != -ECANCELED) {
                log_error_errno(r, "Failed to read the state for a snapshot stream: %m");
                pthread_mutex_lock(&x->lock);
                x->failed = true;
                pthread_mutex_unlock(&x->lock);
                (void) eventfd_write(x->efd, 1);
        }
        return NULL;
}

static void sender_free(SnapshotSender *x) {
        if (!x)
                return;
        if (x->thread_started) {
                pthread_mutex_lock(&x->lock);
                x->stop = true;
                pthread_cond_broadcast(&x->cond);
                pthread_mutex_unlock(&x->lock);
                (void) pthread_join(x->thread, NULL);
        }
        pthread_mutex_destroy(&x->lock);
        pthread_cond_destroy(&x->cond);
        free(x->ready);
        sd_event_source_disable_unref(x->efd_source);
        sd_event_source_disable_unref(x->delay_source);
        if (x->efd >= 0)
                (void) close(x->efd);
        free(x->address);
        free(x);
}

/* Unlinks and frees x, completing libraft's send with `status`. */
static void sender_finish(SnapshotSender *x, int status) {
        SnapshotStreams *ss = x->ss;

        for (SnapshotSender **p = &ss->senders; *p; p = &(*p)->next)
                if (*p == x) {
                        *p = x->next;
                        break;
                }
        if (x->req)
                raft_io_send_done(ss->rio, x->req, status);
        sender_free(x);
}

static int on_sender_delay(sd_event_source *es, uint64_t usec, void *userdata);

/* Moves the stream on: called when a chunk is ready and when the peer's queue drained. */
static void sender_pump(SnapshotSender *x) {
        SnapshotStreams *ss = x->ss;
        PeerStats st = {};
        uint8_t *msg;
        size_t size;
        bool last, failed;
        int r;

        if (peer_transport_stats(ss->peers, x->to, &st) >= 0 && st.n_lost != x->lost_at_start) {
                log_warning("Snapshot stream %" PRIx64 " to member %" PRIx64 " broke after %" PRIu64
                            " chunks; Raft will retry.", x->stream_id, x->to, x->n_chunks);
                sender_finish(x, RAFT_NOCONNECTION);
                return;
        }
        /* Flow control: the next chunk only once the socket took everything queued. */
        if (peer_transport_queued_bytes(ss->peers, x->to) > 0)
                return;
        if (x->not_before_usec > 0) {
                uint64_t now = 0;

                (void) sd_event_now(ss->event, CLOCK_MONOTONIC, &now);
                if (now < x->not_before_usec) {
                        if (!x->delay_source)
                                (void) sd_event_add_time(ss->event, &x->delay_source, CLOCK_MONOTONIC,
                                                         x->not_before_usec, USEC_PER_MSEC, on_sender_delay, x);
                        return;
                }
        }

        if (x->all_queued) {
                /* Behind every chunk, into an empty queue (which never drops it): the InstallSnapshot. */
                r = peer_transport_send_raft(ss->peers, &x->m);
                if (r < 0)
                        log_warning_errno(r, "Failed to queue the InstallSnapshot of stream %" PRIx64 ": %m", x->stream_id);
                else {
                        struct raft_io *io = raft_io_get(ss->rio);
                        unsigned k = ss->n_sent++ % ELEMENTSOF(ss->sent);

                        ss->sent[k].to = x->to;
                        ss->sent[k].index = x->m.install_snapshot.last_index;
                        ss->sent[k].msec = io->time(io);
                        log_info("Sent a snapshot to member %" PRIx64 " as stream %" PRIx64 ": %" PRIu64 " chunks, %"
                                 PRIu64 " bytes, in %" PRIu64 " ms.", x->to, x->stream_id, x->n_chunks, x->bytes,
                                 (uint64_t) (ss->sent[k].msec - x->started_msec));
                }
                sender_finish(x, r < 0 ? RAFT_NOCONNECTION : 0);
                return;
        }

        pthread_mutex_lock(&x->lock);
        msg = TAKE_PTR(x->ready);
        size = x->ready_size;
        last = x->ready_last;
        failed = x->failed;
        pthread_cond_broadcast(&x->cond);
        pthread_mutex_unlock(&x->lock);
        if (!msg) {
                if (failed)
                        sender_finish(x, RAFT_IOERR);
                return;
        }
        r = peer_transport_send_opaque(ss->peers, x->to, x->address, msg, size, 0);
        free(msg);
        if (r < 0) {
                log_warning_errno(r, "Failed to queue a snapshot chunk for member %" PRIx64 ": %m", x->to);
                sender_finish(x, RAFT_NOCONNECTION);
                return;
        }
        x->n_chunks++;
        x->bytes += size;
        if (last)
                x->all_queued = true;   /* the next drain sends the message itself */
        else if (ss->test_delay_usec > 0) {
                uint64_t now = 0;

                (void) sd_event_now(ss->event, CLOCK_MONOTONIC, &now);
                x->not_before_usec = now + ss->test_delay_usec;
        }
}

static int on_sender_delay(sd_event_source *es, uint64_t usec, void *userdata) {
        SnapshotSender *x = userdata;

        x->delay_source = sd_event_source_disable_unref(x->delay_source);
        sender_pump(x);
        return 0;
}

static int on_sender_ready(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        SnapshotSender *x = userdata;
        eventfd_t v;

        (void) eventfd_read(x->efd, &v);
        sender_pump(x);
        return 0;
}

static void on_drained(PeerTransport *t, uint64_t id, void *userdata) {
        SnapshotStreams *ss = userdata;

        for (SnapshotSender *x = ss->senders; x; x = x->next)
                if (x->to == id) {
                        sender_pump(x);
                        return;
                }
}

int snapshot_streams_send(SnapshotStreams *ss, struct raft_io_send *req, const struct raft_message *m) {
        const struct raft_buffer *d = &m->install_snapshot.data;
        struct raft_io *io = raft_io_get(ss->rio);
        SnapshotSender *x;
        PeerStats st = {};
        int r;

        if (m->type != RAFT_IO_INSTALL_SNAPSHOT || d->len != RAFT_IO_SNAPSHOT_REF_SIZE ||
            memcmp(d->base, RAFT_IO_SNAPSHOT_REF_MAGIC, 8) != 0)
                return -ENOTSUP;

        /* libraft 0.15 sends the snapshot again on every heartbeat while the follower has not
         * answered (progressShouldReplicate() in the snapshot state). Restarting the stream each
         * time would never finish a big one: the stream under way stands for them, and the repeat
         * is "sent" (a failure would abort the snapshot progress). A stream that breaks fails its
         * own send, and then libraft starts over. */
        for (SnapshotSender *o = ss->senders; o; o = o->next)
                if (o->to == m->server_id) {
                        if (peer_transport_stats(ss->peers, o->to, &st) >= 0 && st.n_lost != o->lost_at_start) {
                                /* It broke while waiting for a socket that never drained: this one
                                 * replaces it (its send is stale, no failure needed). */
                                sender_finish(o, 0);
                                break;
                        }
                        log_debug("Snapshot stream %" PRIx64 " to member %" PRIx64 " is under way; not starting another.",
                                  o->stream_id, o->to);
                        raft_io_send_done(ss->rio, req, 0);
                        return 0;
                }

        /* The same snapshot sent a moment ago: the follower is installing it (its chunks would be
         * ignored meanwhile). Past the grace time it goes again, in case the message got lost. */
        for (unsigned i = 0; i < MIN(ss->n_sent, (unsigned) ELEMENTSOF(ss->sent)); i++)
                if (ss->sent[i].to == m->server_id && ss->sent[i].index == m->install_snapshot.last_index &&
                    ss->sent[i].msec != 0 && io->time(io) - ss->sent[i].msec < SNAPSHOT_RESEND_GRACE_MSEC) {
                        raft_io_send_done(ss->rio, req, 0);
                        return 0;
                }

        x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->ss = ss;
        x->efd = -1;
        x->to = m->server_id;
        x->stream_id = codec_get_be64((const uint8_t *) d->base + 8);
        x->req = req;
        x->m = *m;
        x->started_msec = io->time(io);
        pthread_mutex_init(&x->lock, NULL);
        pthread_cond_init(&x->cond, NULL);
        x->address = strdup(m->server_address ?: "");
        if (!x->address) {
                x->req = NULL;
                sender_free(x);
                return -ENOMEM;
        }
        x->m.server_address = x->address;
        /* A peer not known yet is made by the first chunk's send, with n_lost 0. */
        if (peer_transport_stats(ss->peers, x->to, &st) >= 0)
                x->lost_at_start = st.n_lost;
        x->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (x->efd < 0) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(ss->event, &x->efd_source, x->efd, EPOLLIN, on_sender_ready, x);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(x->efd_source, "snapshot-send");
        r = -pthread_create(&x->thread, NULL, sender_thread, x);
        if (r < 0)
                goto fail;
        x->thread_started = true;
        x->next = ss->senders;
        ss->senders = x;
        log_info("Streaming a snapshot (Raft index %llu) to member %" PRIx64 " as stream %" PRIx64
                 " in chunks of %zu bytes.", m->install_snapshot.last_index, x->to, x->stream_id, ss->chunk_size);
        return 0;
fail:
        x->req = NULL;
        sender_free(x);
        return r;
}

void snapshot_streams_nack(SnapshotStreams *ss, uint64_t from, uint64_t stream_id) {
        /* The next repeat of libraft's snapshot streams again. */
        for (unsigned i = 0; i < MIN(ss->n_sent, (unsigned) ELEMENTSOF(ss->sent)); i++)
                if (ss->sent[i].to == from)
                        ss->sent[i].msec = 0;
        log_info("Member %" PRIx64 " did not take snapshot stream %" PRIx64 "; it goes again.", from, stream_id);
}

void snapshot_streams_cancel(SnapshotStreams *ss) {
        if (!ss)
                return;
        while (ss->senders)
                sender_finish(ss->senders, RAFT_CANCELED);
}

/* ---- receiving (follower) ---- */

static void receiver_reset(SnapshotStreams *ss) {
        ss->receiving = ss->complete = false;
        ss->next_seq = 0;
}

typedef struct StageCtx {
        PersistBatch *batch;
        uLong crc;
        int error;
} StageCtx;

static int stage_record(char kind, const void *key, size_t key_len, const void *value, size_t value_len,
                        void *userdata) {
        return persist_batch_staging_put(((StageCtx *) userdata)->batch, kind, key, key_len, value, value_len);
}

void snapshot_streams_chunk(SnapshotStreams *ss, uint64_t from, uint64_t stream_id, const void *body, size_t size) {
        SnapshotChunk c;
        StageCtx ctx = { .batch = ss->batch };
        uint64_t n = 0;
        int r;

        if (snapshot_chunk_decode(body, size, &c) < 0) {
                log_warning("Malformed snapshot chunk from member %" PRIx64 ", ignoring it.", from);
                return;
        }
        if (raft_io_installing(ss->rio)) {
                /* The staging area is being installed: it must not change under the writer. */
                log_debug("Snapshot chunk while a snapshot is being installed, ignoring it.");
                return;
        }
        if (c.flags & SNAPSHOT_CHUNK_FIRST) {
                if (c.seq != 0)
                        return;
                /* A new stream (another leader, or a retry): whatever was staged goes. */
                receiver_reset(ss);
                raft_io_snapshot_unstage(ss->rio);
                persist_batch_staging_clear(ss->batch);
                ss->receiving = true;
                ss->from = from;
                ss->stream_id = stream_id;
                ss->applied = c.applied;
                ss->etcd_index = c.etcd_index;
                ss->n_records = ss->bytes = 0;
                ss->crc = crc32(0, NULL, 0);
                log_info("Receiving a snapshot from member %" PRIx64 " (stream %" PRIx64 ", state as of Raft index %"
                         PRIu64 ").", from, stream_id, c.applied);
        } else if (!ss->receiving || from != ss->from || stream_id != ss->stream_id)
                return;   /* the rest of a stream we do not follow (anymore) */
        else if (ss->complete)
                return;   /* a duplicate after the end changes nothing */
        else if (c.seq != ss->next_seq) {
                log_warning("Snapshot stream %" PRIx64 " from member %" PRIx64 ": chunk %" PRIu64 " instead of %" PRIu64
                            ", dropping the stream.", stream_id, from, c.seq, ss->next_seq);
                receiver_reset(ss);
                return;
        }

        r = raft_io_snapshot_records_parse(c.records, c.records_size, stage_record, &ctx, &n);
        if (r < 0) {
                log_warning_errno(r, "Bad records in snapshot stream %" PRIx64 " from member %" PRIx64
                                  ", dropping the stream: %m", stream_id, from);
                receiver_reset(ss);
                persist_batch_staging_clear(ss->batch);
                (void) persist_write(ss->batch, false);
                return;
        }
        /* Unsynced: the synced write of the install marker makes the staging durable before it is used. */
        r = persist_write(ss->batch, false);
        if (r < 0) {
                log_error_errno(r, "Failed to stage a snapshot chunk: %m");
                receiver_reset(ss);
                return;
        }
        ss->crc = crc32(ss->crc, c.records, (uInt) c.records_size);
        ss->n_records += n;
        ss->bytes += c.records_size;
        ss->next_seq++;
        if (c.flags & SNAPSHOT_CHUNK_LAST) {
                if (c.n_records != ss->n_records || c.crc != (uint64_t) ss->crc) {
                        log_warning("Snapshot stream %" PRIx64 " from member %" PRIx64 " is damaged (%" PRIu64 "/%"
                                    PRIu64 " records), dropping it.", stream_id, from, ss->n_records, c.n_records);
                        receiver_reset(ss);
                        return;
                }
                ss->complete = true;
                log_info("Received snapshot stream %" PRIx64 ": %" PRIu64 " chunks, %" PRIu64 " records, %" PRIu64
                         " bytes.", stream_id, ss->next_seq, ss->n_records, ss->bytes);
        }
}

bool snapshot_streams_ready(SnapshotStreams *ss, const struct raft_message *m) {
        const struct raft_buffer *d = &m->install_snapshot.data;
        uint64_t id;

        if (m->type != RAFT_IO_INSTALL_SNAPSHOT || d->len != RAFT_IO_SNAPSHOT_REF_SIZE ||
            memcmp(d->base, RAFT_IO_SNAPSHOT_REF_MAGIC, 8) != 0)
                return true;
        id = codec_get_be64((const uint8_t *) d->base + 8);
        if (!ss->complete || ss->stream_id != id || ss->from != m->server_id) {
                uint8_t nack[1 + 10];
                size_t n;

                log_warning("InstallSnapshot of member %" PRIx64 " refers to stream %" PRIx64
                            ", which did not arrive complete; ignoring it.", (uint64_t) m->server_id, id);
                /* libraft would wait for an answer that never comes (and the sender takes the
                 * repeats for "being installed"): tell the sender to stream again. */
                nack[0] = SNAPSHOT_MSG_NACK;
                n = 1 + codec_varint_put(nack + 1, id);
                (void) peer_transport_send_opaque(ss->peers, m->server_id, NULL, nack, n, 0);
                return false;
        }
        log_debug("InstallSnapshot of stream %" PRIx64 " (Raft index %llu, term %llu) goes to Raft.", id,
                  m->install_snapshot.last_index, m->install_snapshot.term);
        raft_io_snapshot_staged(ss->rio, id, ss->applied, ss->etcd_index);
        receiver_reset(ss);   /* the staging now belongs to raft-io's install */
        return true;
}

int snapshot_streams_new(sd_event *event, Persist *persist, RaftIo *rio, PeerTransport *peers,
                         SnapshotStreams **ret) {
        SnapshotStreams *ss;
        const char *e;
        int r;

        ss = calloc(1, sizeof(*ss));
        if (!ss)
                return -ENOMEM;
        ss->event = sd_event_ref(event);
        ss->persist = persist;
        ss->rio = rio;
        ss->peers = peers;
        ss->chunk_size = SNAPSHOT_CHUNK_SIZE_DEFAULT;
        /* Tests make the chunks (and the peers' frame cap) small to exercise many chunks quickly. */
        e = getenv("ETCD2_SNAPSHOT_CHUNK_BYTES");
        if (e) {
                unsigned long long v = strtoull(e, NULL, 10);

                if (v >= 1024 && v <= SIZE_MAX)
                        ss->chunk_size = (size_t) v;
        }
        e = getenv("ETCD2_SNAPSHOT_TEST_DELAY_MS");
        if (e)
                ss->test_delay_usec = strtoull(e, NULL, 10) * USEC_PER_MSEC;
        /* ... and the peers' send queue small, so that a member that is down misses appends (else a
         * restarted member gets up to 64 MiB of queued appends and needs no snapshot). */
        e = getenv("ETCD2_PEER_QUEUE_MAX");
        if (e) {
                unsigned long long v = strtoull(e, NULL, 10);

                if (v >= 4096 && v <= SIZE_MAX)
                        peer_transport_set_queue_max(peers, (size_t) v);
        }
        e = getenv("ETCD2_PEER_FRAME_MAX");
        if (e) {
                unsigned long long v = strtoull(e, NULL, 10);

                if (v >= 4096 && v <= SIZE_MAX)
                        peer_transport_set_frame_max(peers, (size_t) v);
        }
        r = persist_batch_new(persist, &ss->batch);
        if (r < 0) {
                snapshot_streams_free(ss);
                return r;
        }
        peer_transport_set_drained(peers, on_drained, ss);
        *ret = ss;
        return 0;
}

SnapshotStreams *snapshot_streams_free(SnapshotStreams *ss) {
        if (!ss)
                return NULL;
        while (ss->senders) {
                SnapshotSender *x = ss->senders;

                /* libraft is gone by now (or never started): no callback. */
                ss->senders = x->next;
                sender_free(x);
        }
        if (ss->peers)
                peer_transport_set_drained(ss->peers, NULL, NULL);
        persist_batch_free(ss->batch);
        sd_event_unref(ss->event);
        free(ss);
        return NULL;
}

/* ---- install ---- */

int snapshot_recover(Persist *persist) {
        uint64_t applied = 0, etcd_index = 0;
        int r;

        r = persist_install_finish(persist, &applied, &etcd_index);
        if (r < 0)
                return log_error_errno(r, "Failed to finish the snapshot install a restart interrupted: %m");
        if (r > 0)
                log_notice("Finished the install of a leader's snapshot that a restart interrupted: Raft index %"
                           PRIu64 ", etcd index %" PRIu64 ".", applied, etcd_index);
        return 0;
}

int snapshot_load_installed(Persist *persist, void **ret, void *userdata) {
        Store *st = NULL;
        int r;

        if (!persist) {
                *ret = store_free(*ret);
                return 0;
        }
        r = store_new(&st);
        if (r < 0)
                return r;
        r = persist_load_store(persist, st);
        if (r < 0) {
                store_free(st);
                return r;
        }
        *ret = st;
        return 0;
}

Store *snapshot_take_installed(RaftIo *rio, Store *old, uint64_t stream_id, uint64_t *ret_applied) {
        uint64_t applied = 0;
        Store *st;
        int r;

        st = raft_io_take_installed(rio, &applied);
        /* RocksDB holds the new state, memory the old one: stop now; a restart loads the durable
         * state, which is consistent (or finishes the install from its marker). */
        if (!st)
                raft_io_die(rio, -ENODATA, "load the installed snapshot's state");
        r = store_move_watchers(old, st);
        if (r < 0)
                raft_io_die(rio, r, "move the watchers to the installed snapshot's store");
        log_info("Installed the leader's streamed snapshot: applied Raft index %" PRIu64 ", etcd index %" PRIu64
                 ", %u watchers kept.", applied, store_index(st), store_n_watchers(st));
        *ret_applied = applied;
        return st;
}
