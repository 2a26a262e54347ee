/* SPDX-License-Identifier: Apache-2.0 */
/* server.c - the member: Raft consensus (libraft + our raft_io) around the store, proposals, TTL sync. */

/*
 * Write path: server_propose() encodes the StoreRequest (codec.c) into a raft_malloc'd buffer and
 * raft_apply()s it; raft-io.c adds it to the accumulating group-commit batch, which its writer thread
 * syncs; libraft (one voter) then commits and applies it: fsm_apply() decodes the entry, runs
 * store_apply() with our wall clock, and the store's sink adds the node/history changes to the batch
 * of the *next* log group (raft_io_batch()), sealed with the applied index (on_batch_seal()): the
 * applied state costs no write of its own and is always consistent with its applied index. The result
 * is attached to the waiting proposal (found by Raft index) and, once libraft has returned to us
 * (server_on_io_event()), the callbacks run.
 *
 * Restart: the store is loaded from RocksDB as of meta "applied"; libraft then replays the log, and
 * fsm_apply() skips every entry at or below that index, so each entry is applied exactly once even
 * though the applied state is written a group later. Snapshots are markers (the Raft index they
 * cover): the state is already in RocksDB, and the snapshot record (which drops log entries) goes
 * into the same ordered stream of batches after the state it covers.
 *
 * On becoming leader we append a barrier first (so that entries of the previous run are applied
 * before we look at the store), then the internal writes etcd2 makes at start (member raftAttributes
 * on the first start, attributes on every start, /0/version on the first start), then the user
 * proposals that queued meanwhile. Proposals time out after 5 s + 2 election timeouts, in FIFO order
 * (they all share one timeout), checked by one timer. TTLs: the leader proposes a SYNC with its wall
 * clock when the store's earliest expiration has passed (one in flight at a time).
 */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <raft.h>

#include "codec.h"
#include "config-build.h"
#include "log.h"
#include "persist.h"
#include "raft-io.h"
#include "server.h"

#define SERVER_BASE_TIMEOUT_USEC (5 * USEC_PER_SEC)
#define SERVER_SNAPSHOT_TRAILING_MAX 5000U
#define SERVER_DEFAULT_SNAPSHOT_COUNT 10000U
#define SERVER_SNAPSHOT_MAGIC "E2SNAP01"
#define SERVER_SYNC_RETRY_USEC (500 * USEC_PER_MSEC)

#define ERR_TIMEOUT "etcdserver: request timed out"
#define ERR_LEADER_FAIL "etcdserver: request timed out, possibly due to previous leader failure"
#define ERR_STOPPED "etcdserver: server stopped"

typedef struct ProposalList {
        ServerProposal *head, *tail;
        unsigned n;
} ProposalList;

struct ServerProposal {
        Server *server;
        struct raft_apply req;
        ServerProposalCallback cb;
        void *userdata;
        uint64_t deadline_usec;   /* CLOCK_MONOTONIC */
        StoreResult result;
        ServerProposal *prev, *next;
        ProposalList *list;       /* pending, or done, or NULL once answered */
        struct raft_buffer buf;   /* the encoded entry until it is handed to raft_apply() */
        bool submitted;           /* raft_apply() accepted it: libraft holds `req` until its callback */
        bool raft_done;
        bool answered;
};

struct Server {
        sd_event *event;
        Persist *persist;
        RaftIo *rio;
        Store *store;
        struct raft raft;
        struct raft_fsm fsm;
        bool raft_initialized, raft_started, raft_closed;

        uint64_t applied_index;   /* Raft index reflected in the store */
        uint64_t skip_until;      /* entries <= this were applied before the restart */
        bool applied_dirty;       /* applied_index not yet in the accumulating batch */

        uint64_t member_id, cluster_id;
        char *name;
        char *raft_attributes_json, *attributes_json;

        ProposalList pending;     /* unanswered, in creation (= submission = deadline) order */
        ProposalList done;        /* answered by fsm_apply(), callbacks not yet run */
        unsigned n_waiting;       /* pending but not yet submitted (no leader yet, or internal writes first) */
        sd_event_source *timeout_source;
        uint64_t proposal_timeout_usec;

        /* Leadership */
        bool leader;
        bool ready;               /* barrier applied and internal writes proposed: user proposals flow */
        struct raft_barrier barrier;
        bool barrier_pending, barrier_done;
        uint64_t start_time_usec, leader_start_time_usec;

        /* TTL */
        sd_event_source *sync_source;
        bool sync_in_flight;
        uint64_t last_sync_usec;  /* wall clock of the last SYNC proposed */

        bool closing;
};

static inline void server_freep(Server **s) {
        if (*s)
                server_free(*s);
}

static uint64_t now_realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static uint64_t now_monotonic_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static const char *const role_table[_SERVER_ROLE_MAX] = {
        [SERVER_ROLE_FOLLOWER] = "StateFollower",
        [SERVER_ROLE_CANDIDATE] = "StateCandidate",
        [SERVER_ROLE_LEADER] = "StateLeader",
};

const char *server_role_to_string(ServerRole r) {
        if (r < 0 || r >= _SERVER_ROLE_MAX)
                return NULL;
        return role_table[r];
}

/* ---- proposal lists ---- */

static void list_append(ProposalList *l, ServerProposal *p) {
        assert(!p->list);
        p->list = l;
        p->prev = l->tail;
        p->next = NULL;
        if (l->tail)
                l->tail->next = p;
        else
                l->head = p;
        l->tail = p;
        l->n++;
}

static void list_remove(ServerProposal *p) {
        ProposalList *l = p->list;

        if (!l)
                return;
        if (p->prev)
                p->prev->next = p->next;
        else
                l->head = p->next;
        if (p->next)
                p->next->prev = p->prev;
        else
                l->tail = p->prev;
        p->prev = p->next = NULL;
        p->list = NULL;
        l->n--;
}

static void proposal_maybe_free(ServerProposal *p) {
        if (!p->answered || (p->submitted && !p->raft_done))
                return;
        store_result_done(&p->result);
        if (p->buf.base)
                raft_free(p->buf.base);
        free(p);
}

/* Runs the callback (unless cancelled) with p->result and retires the proposal. */
static void proposal_answer(ServerProposal *p) {
        ServerProposalCallback cb = TAKE_PTR(p->cb);

        list_remove(p);
        if (!p->submitted && p->buf.base) {
                /* never reached libraft */
                p->server->n_waiting--;
        }
        p->answered = true;
        if (cb)
                cb(&p->result, p->userdata);
        proposal_maybe_free(p);
}

static void proposal_fail(ServerProposal *p, const char *cause) {
        store_result_done(&p->result);
        p->result = (StoreResult) {
                .error = ETCD_ERROR_RAFT_INTERNAL,
                .cause = strdup(cause),
                .index = store_index(p->server->store),
        };
        proposal_answer(p);
}

static void dispatch_done(Server *s) {
        while (s->done.head)
                proposal_answer(s->done.head);
}

/* ---- applied state ---- */

static void sink_node_put(void *userdata, const char *key, const void *record, size_t len) {
        Server *s = userdata;

        persist_batch_node_put(raft_io_batch(s->rio), key, record, len);
}

static void sink_node_delete(void *userdata, const char *key) {
        Server *s = userdata;

        persist_batch_node_delete(raft_io_batch(s->rio), key);
}

static void sink_history_add(void *userdata, uint64_t index, const void *record, size_t len) {
        Server *s = userdata;

        persist_batch_history_add(raft_io_batch(s->rio), index, record, len);
}

static void sink_history_drop(void *userdata, uint64_t index) {
        Server *s = userdata;

        /* One range deletion per 256 dropped events instead of a tombstone each; the loader reads
         * only the window, so the stragglers do no harm. */
        if ((index & 255) == 0)
                persist_batch_history_drop_upto(raft_io_batch(s->rio), index);
}

/* The store's changes go into the batch of the next log group, and the applied index is added when
 * that batch is sealed (on_batch_seal()): one atomic write, so the records always match the applied
 * index, which restart relies on to skip entries. */
static void note_applied(Server *s, uint64_t index) {
        s->applied_index = index;
        s->applied_dirty = true;
        raft_io_kick(s->rio);
}

static void on_batch_seal(RaftIo *rio, PersistBatch *batch, void *userdata) {
        Server *s = userdata;

        if (!s->applied_dirty)
                return;
        persist_batch_applied(batch, s->applied_index, store_index(s->store));
        s->applied_dirty = false;
}

/* ---- FSM ---- */

static ServerProposal *find_proposal(Server *s, uint64_t index) {
        for (ServerProposal *p = s->pending.head; p && p->submitted; p = p->next) {
                if (p->req.index == index)
                        return p;
                if (p->req.index > index)
                        break;
        }
        return NULL;
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result) {
        Server *s = fsm->data;
        uint64_t index = s->raft.last_applied + 1;
        StoreResult res = {};
        StoreRequest req;
        ServerProposal *p;
        int r;

        *result = NULL;
        if (index <= s->skip_until)
                return 0;   /* applied before the restart */

        r = codec_request_decode(buf->base, buf->len, &req);
        if (r < 0) {
                log_error("Raft entry %" PRIu64 " is not a valid request (%zu bytes), skipping it.", index, buf->len);
                res = (StoreResult) {
                        .error = ETCD_ERROR_RAFT_INTERNAL,
                        .cause = strdup("etcdserver: malformed request"),
                        .index = store_index(s->store),
                };
        } else {
                r = store_apply(s->store, &req, now_realtime_usec(), &res);
                if (r < 0) {
                        log_error_errno(r, "Failed to apply Raft entry %" PRIu64 ": %m", index);
                        store_result_done(&res);
                        res = (StoreResult) {
                                .error = ETCD_ERROR_RAFT_INTERNAL,
                                .cause = strdup("etcdserver: out of memory"),
                                .index = store_index(s->store),
                        };
                }
        }
        note_applied(s, index);

        p = find_proposal(s, index);
        if (p) {
                list_remove(p);
                store_result_done(&p->result);
                p->result = res;
                list_append(&s->done, p);
        } else
                store_result_done(&res);
        return 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs) {
        Server *s = fsm->data;
        struct raft_buffer *b;
        uint8_t *m;

        /* The snapshot covers everything applied so far, barriers included. The record goes into the
         * same group as the snapshot (snapshot_put follows), so restart finds them consistent. */
        note_applied(s, MAX(s->applied_index, (uint64_t) s->raft.last_applied));

        b = raft_malloc(sizeof(*b));
        m = raft_malloc(16);
        if (!b || !m) {
                raft_free(b);
                raft_free(m);
                return RAFT_NOMEM;
        }
        memcpy(m, SERVER_SNAPSHOT_MAGIC, 8);
        codec_put_be64(m + 8, s->applied_index);
        b->base = m;
        b->len = 16;
        *bufs = b;
        *n_bufs = 1;
        log_debug("Snapshot marker at Raft index %" PRIu64 ".", s->applied_index);
        return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf) {
        Server *s = fsm->data;
        uint64_t index;

        if (buf->len != 16 || memcmp(buf->base, SERVER_SNAPSHOT_MAGIC, 8) != 0) {
                log_error("Snapshot data is not a snapshot marker of this daemon.");
                return RAFT_CORRUPT;
        }
        index = codec_get_be64((uint8_t *) buf->base + 8);
        if (index > s->skip_until) {
                /* Installing a leader's snapshot (multi-member) is not implemented yet. */
                log_error("Snapshot covers Raft index %" PRIu64 " but the stored state only reaches %" PRIu64 ".",
                          index, s->skip_until);
                return RAFT_CORRUPT;
        }
        raft_free(buf->base);
        return 0;
}

/* ---- proposals ---- */

static void timeout_rearm(Server *s) {
        if (!s->pending.head) {
                (void) sd_event_source_set_enabled(s->timeout_source, SD_EVENT_OFF);
                return;
        }
        (void) sd_event_source_set_time(s->timeout_source, s->pending.head->deadline_usec);
        (void) sd_event_source_set_enabled(s->timeout_source, SD_EVENT_ONESHOT);
}

static void apply_cb(struct raft_apply *req, int status, void *result) {
        ServerProposal *p = req->data;

        p->raft_done = true;
        if (status != 0 && !p->answered && p->list == &p->server->pending) {
                /* Not committed by us: lost leadership or shutting down. Answer later, from the loop. */
                ProposalList *done = &p->server->done;

                list_remove(p);
                store_result_done(&p->result);
                p->result = (StoreResult) {
                        .error = ETCD_ERROR_RAFT_INTERNAL,
                        .cause = strdup(p->server->closing ? ERR_STOPPED : ERR_LEADER_FAIL),
                        .index = store_index(p->server->store),
                };
                list_append(done, p);
                return;
        }
        proposal_maybe_free(p);
}

static int proposal_submit(Server *s, ServerProposal *p) {
        int r;

        p->req.data = p;
        r = raft_apply(&s->raft, &p->req, &p->buf, 1, apply_cb);
        if (r != 0)
                return r;
        p->buf = (struct raft_buffer) {};   /* libraft owns it now */
        p->submitted = true;
        s->n_waiting--;
        return 0;
}

/* Submits queued proposals once we lead and the start-up writes are in. */
static void submit_waiting(Server *s) {
        if (!s->leader || !s->ready || s->n_waiting == 0)
                return;
        for (ServerProposal *p = s->pending.head; p && s->n_waiting > 0; p = p->next) {
                int r;

                if (p->submitted)
                        continue;
                r = proposal_submit(s, p);
                if (r != 0) {
                        log_warning("Failed to submit proposal: %s", raft_strerror(r));
                        break;
                }
        }
}

static int proposal_new(Server *s, const StoreRequest *req, ServerProposalCallback cb, void *userdata,
                        ServerProposal **ret) {
        ServerProposal *p;
        size_t len;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        len = codec_request_size(req);
        p->buf.base = raft_malloc(len);
        if (!p->buf.base) {
                free(p);
                return -ENOMEM;
        }
        p->buf.len = codec_request_write(req, p->buf.base);
        p->server = s;
        p->cb = cb;
        p->userdata = userdata;
        p->deadline_usec = now_monotonic_usec() + s->proposal_timeout_usec;
        *ret = p;
        return 0;
}

static int propose_internal(Server *s, const StoreRequest *req, bool front, ServerProposalCallback cb);

int server_propose(Server *s, const StoreRequest *req, ServerProposalCallback cb, void *userdata,
                   ServerProposal **ret) {
        ServerProposal *p;
        bool was_empty;
        int r;

        assert(s);
        assert(req);

        if (s->closing)
                return -ESHUTDOWN;
        if (!req->path || req->method < 0 || req->method >= _STORE_METHOD_MAX)
                return -EINVAL;

        r = proposal_new(s, req, cb, userdata, &p);
        if (r < 0)
                return r;

        was_empty = !s->pending.head;
        list_append(&s->pending, p);
        s->n_waiting++;
        if (s->leader && s->ready && s->n_waiting == 1) {
                r = proposal_submit(s, p);
                if (r != 0 && r != RAFT_NOTLEADER)
                        log_debug("raft_apply() failed: %s; the proposal waits.", raft_strerror(r));
        }
        if (was_empty)
                timeout_rearm(s);
        if (ret)
                *ret = p;
        return 0;
}

void server_proposal_cancel(ServerProposal *p) {
        if (p)
                p->cb = NULL;
}

unsigned server_n_pending(Server *s) {
        return s->pending.n + s->done.n;
}

static int on_timeout(sd_event_source *source, uint64_t usec, void *userdata) {
        Server *s = userdata;
        uint64_t now = now_monotonic_usec();

        while (s->pending.head && s->pending.head->deadline_usec <= now) {
                ServerProposal *p = s->pending.head;

                log_debug("Proposal timed out (Raft index %llu).", p->submitted ? p->req.index : 0ULL);
                proposal_fail(p, ERR_TIMEOUT);
        }
        timeout_rearm(s);
        return 0;
}

/* ---- internal writes ---- */

static void internal_cb(StoreResult *res, void *userdata) {
        const char *what = userdata;

        if (res->error != ETCD_OK)
                log_warning("Failed to write %s: %s%s%s", what, strempty(etcd_error_message(res->error)),
                            res->cause ? ": " : "", strempty(res->cause));
        else
                log_debug("Wrote %s at etcd index %" PRIu64 ".", what, res->index);
}

static void sync_cb(StoreResult *res, void *userdata);

/* Queues an internal proposal ahead of the waiting user proposals (front) or at the end. */
static int propose_internal(Server *s, const StoreRequest *req, bool front, ServerProposalCallback cb) {
        ServerProposal *p;
        const char *what = req->method == STORE_METHOD_SYNC ? "TTL sync" : req->path;
        int r;

        r = proposal_new(s, req, cb ?: internal_cb, (void *) what, &p);
        if (r < 0)
                return r;
        if (cb == sync_cb)
                p->userdata = s;
        s->n_waiting++;
        if (front) {
                /* The start-up writes go straight to libraft, before anything queued. */
                list_append(&s->pending, p);
                r = proposal_submit(s, p);
                if (r != 0) {
                        proposal_fail(p, ERR_STOPPED);
                        return -EIO;
                }
                /* Keep `pending` in submission order: move it before the first unsubmitted one. */
                list_remove(p);
                {
                        ServerProposal *q = s->pending.head;

                        while (q && q->submitted)
                                q = q->next;
                        if (!q)
                                list_append(&s->pending, p);
                        else {
                                p->list = &s->pending;
                                p->next = q;
                                p->prev = q->prev;
                                if (q->prev)
                                        q->prev->next = p;
                                else
                                        s->pending.head = p;
                                q->prev = p;
                                s->pending.n++;
                        }
                }
        } else {
                list_append(&s->pending, p);
                if (s->leader && s->ready && s->n_waiting == 1) {
                        r = proposal_submit(s, p);
                        if (r != 0)
                                log_debug("raft_apply() failed: %s; the proposal waits.", raft_strerror(r));
                }
        }
        timeout_rearm(s);
        return 0;
}

/* Go's encoding/json string escaping, as etcd2 stored these values. */
static void json_string(FILE *f, const char *str) {
        fputc('"', f);
        for (const unsigned char *c = (const unsigned char *) str; *c; c++) {
                if (*c == '"' || *c == '\\')
                        fprintf(f, "\\%c", *c);
                else if (*c == '\n')
                        fputs("\\n", f);
                else if (*c == '\r')
                        fputs("\\r", f);
                else if (*c == '\t')
                        fputs("\\t", f);
                else if (*c < 0x20 || *c == '<' || *c == '>' || *c == '&')
                        fprintf(f, "\\u%04x", *c);
                else
                        fputc(*c, f);
        }
        fputc('"', f);
}

static void json_url_list(FILE *f, const EtcdUrlList *l) {
        fputc('[', f);
        for (size_t i = 0; i < l->n; i++) {
                if (i > 0)
                        fputc(',', f);
                json_string(f, l->urls[i].str);
        }
        fputc(']', f);
}

static int build_member_json(Server *s, const Config *c) {
        const EtcdUrlList *peers = &c->initial_advertise_peer_urls;
        char *buf = NULL;
        size_t len = 0;
        FILE *f;

        for (size_t i = 0; i < c->n_initial_members; i++)
                if (c->initial_members[i].id == s->member_id)
                        peers = &c->initial_members[i].peer_urls;

        /* etcd2 member.go: RaftAttributes{PeerURLs `json:"peerURLs"`} */
        f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;
        fputs("{\"peerURLs\":", f);
        json_url_list(f, peers);
        fputc('}', f);
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        s->raft_attributes_json = buf;

        /* Attributes{Name `json:"name,omitempty"`, ClientURLs `json:"clientURLs,omitempty"`} */
        buf = NULL;
        len = 0;
        f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;
        fputc('{', f);
        if (!isempty(c->name)) {
                fputs("\"name\":", f);
                json_string(f, c->name);
        }
        if (c->advertise_client_urls.n > 0) {
                if (!isempty(c->name))
                        fputc(',', f);
                fputs("\"clientURLs\":", f);
                json_url_list(f, &c->advertise_client_urls);
        }
        fputc('}', f);
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        s->attributes_json = buf;
        return 0;
}

static int propose_startup_writes(Server *s) {
        char path[128];
        int r;

        /* Entries of the previous run are applied by now (the barrier): the store is current. */
        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/raftAttributes", s->member_id);
        if (!store_lookup(s->store, path)) {
                StoreRequest req = {
                        .method = STORE_METHOD_PUT,
                        .path = path,
                        .value = s->raft_attributes_json,
                        .value_len = strlen(s->raft_attributes_json),
                        .prev_exist = 0,        /* etcd2 creates it */
                };

                r = propose_internal(s, &req, true, NULL);
                if (r < 0)
                        return r;
        }

        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/attributes", s->member_id);
        {
                StoreRequest req = {
                        .method = STORE_METHOD_PUT,
                        .path = path,
                        .value = s->attributes_json,
                        .value_len = strlen(s->attributes_json),
                        .prev_exist = -1,
                };

                r = propose_internal(s, &req, true, NULL);
                if (r < 0)
                        return r;
        }

        if (!store_lookup(s->store, "/0/version")) {
                StoreRequest req = {
                        .method = STORE_METHOD_PUT,
                        .path = "/0/version",
                        .value = ETCD2_CLUSTER_VERSION,
                        .value_len = strlen(ETCD2_CLUSTER_VERSION),
                        .prev_exist = -1,
                };

                r = propose_internal(s, &req, true, NULL);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- TTL ---- */

static void sync_rearm(Server *s) {
        uint64_t next;

        if (!s->leader || !s->ready || s->sync_in_flight || s->closing) {
                (void) sd_event_source_set_enabled(s->sync_source, SD_EVENT_OFF);
                return;
        }
        next = store_next_expiration(s->store);
        if (next == 0) {
                (void) sd_event_source_set_enabled(s->sync_source, SD_EVENT_OFF);
                return;
        }
        /* Something the last SYNC should have expired is still there (it cannot expire, or clocks
         * disagree): do not spin, retry at a relaxed pace. */
        if (next <= s->last_sync_usec)
                next = s->last_sync_usec + SERVER_SYNC_RETRY_USEC;
        (void) sd_event_source_set_time(s->sync_source, next);
        (void) sd_event_source_set_enabled(s->sync_source, SD_EVENT_ONESHOT);
}

static void sync_cb(StoreResult *res, void *userdata) {
        Server *s = userdata;

        s->sync_in_flight = false;
        if (res->error != ETCD_OK)
                log_warning("TTL sync failed: %s", strempty(res->cause));
        sync_rearm(s);
}

static int on_sync_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        Server *s = userdata;
        StoreRequest req = {
                .method = STORE_METHOD_SYNC,
                .path = "/",
                .prev_exist = -1,
                .time_usec = now_realtime_usec(),
        };
        int r;

        if (!s->leader || s->sync_in_flight || s->closing)
                return 0;
        s->last_sync_usec = req.time_usec;
        r = propose_internal(s, &req, false, sync_cb);
        if (r < 0) {
                log_warning_errno(r, "Failed to propose TTL sync, ignoring: %m");
                return 0;
        }
        s->sync_in_flight = true;
        return 0;
}

/* ---- Raft state tracking ---- */

static void barrier_cb(struct raft_barrier *req, int status) {
        Server *s = req->data;

        s->barrier_pending = false;
        if (status == 0)
                s->barrier_done = true;
}

static void server_on_io_event(RaftIo *rio, void *userdata);

static void server_check_state(Server *s) {
        bool leader = raft_state(&s->raft) == RAFT_LEADER;
        int r;

        if (leader && !s->leader) {
                s->leader = true;
                s->ready = false;
                s->barrier_done = false;
                s->leader_start_time_usec = now_realtime_usec();
                log_info("Member %" PRIx64 " became leader at term %llu.", s->member_id, s->raft.current_term);
                if (!s->barrier_pending) {
                        s->barrier.data = s;
                        r = raft_barrier(&s->raft, &s->barrier, barrier_cb);
                        if (r != 0)
                                log_warning("Failed to append a barrier: %s", raft_strerror(r));
                        else
                                s->barrier_pending = true;
                }
        } else if (!leader && s->leader) {
                s->leader = false;
                s->ready = false;
                log_info("Member %" PRIx64 " lost leadership at term %llu.", s->member_id, s->raft.current_term);
        }
        if (!leader) {
                raft_id id = 0;
                const char *addr = NULL;

                raft_leader(&s->raft, &id, &addr);
                if (id != 0 && s->leader_start_time_usec == 0)
                        s->leader_start_time_usec = now_realtime_usec();
        }

        if (s->leader && s->barrier_done && !s->ready) {
                s->ready = true;
                r = propose_startup_writes(s);
                if (r < 0)
                        log_error_errno(r, "Failed to propose the start-up writes: %m");
                submit_waiting(s);
        }
}

static void server_on_io_event(RaftIo *rio, void *userdata) {
        Server *s = userdata;

        server_check_state(s);
        submit_waiting(s);
        dispatch_done(s);
        sync_rearm(s);
}

/* ---- life cycle ---- */

static int server_bootstrap(Server *s, const char *address) {
        struct raft_configuration conf;
        int r;

        raft_configuration_init(&conf);
        r = raft_configuration_add(&conf, s->member_id, address, RAFT_VOTER);
        if (r == 0)
                r = raft_bootstrap(&s->raft, &conf);
        raft_configuration_close(&conf);
        if (r != 0) {
                log_error("Failed to bootstrap Raft: %s", raft_strerror(r));
                return -EIO;
        }
        log_info("Bootstrapped new cluster %" PRIx64 " with member %" PRIx64 " (%s).",
                 s->cluster_id, s->member_id, address);
        return 0;
}

int server_new(sd_event *event, const Config *config, Server **ret) {
        _cleanup_(server_freep) Server *s = NULL;
        const char *address;
        PersistMeta meta;
        uint64_t term, vote, first, last, snapshot_count, election_ms, heartbeat_ms;
        bool fresh;
        int r;

        assert(event);
        assert(config);
        assert(ret);

        if (isempty(config->data_dir))
                return log_error_errno(-EINVAL, "No data directory configured.");

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->event = sd_event_ref(event);
        s->start_time_usec = now_realtime_usec();

        r = persist_open(config->data_dir, config->wal_dir, &s->persist);
        if (r < 0)
                return r;
        fresh = persist_is_new(s->persist);
        if (fresh) {
                if (config->member_id == 0)
                        return log_error_errno(-EINVAL, "No member ID configured.");
                r = persist_meta_init(s->persist, config->member_id, config->cluster_id);
                if (r < 0)
                        return log_error_errno(r, "Failed to initialize '%s/member': %m", config->data_dir);
        }
        r = persist_meta_load(s->persist, &meta);
        if (r < 0)
                return r;
        s->member_id = meta.member_id;
        s->cluster_id = meta.cluster_id;
        s->applied_index = s->skip_until = meta.applied_index;
        if (!fresh && config->member_id != 0 && config->member_id != s->member_id)
                log_notice("Data directory holds member %" PRIx64 " of cluster %" PRIx64 "; ignoring the "
                           "--initial-cluster configuration.", s->member_id, s->cluster_id);

        s->name = strdup(strempty(config->name));
        if (!s->name)
                return -ENOMEM;
        r = build_member_json(s, config);
        if (r < 0)
                return r;

        r = store_new(&s->store);
        if (r < 0)
                return r;
        r = persist_load_store(s->persist, s->store);
        if (r < 0)
                return r;
        r = raft_io_new(event, s->persist, &s->rio);
        if (r < 0)
                return r;
        raft_io_set_event_callback(s->rio, server_on_io_event, on_batch_seal, s);
        store_set_sink(s->store, &(StoreSink) {
                .userdata = s,
                .node_put = sink_node_put,
                .node_delete = sink_node_delete,
                .history_add = sink_history_add,
                .history_drop = sink_history_drop,
        });

        r = sd_event_add_time(event, &s->timeout_source, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_MSEC, on_timeout, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(s->timeout_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(s->timeout_source, "proposal-timeout");
        r = sd_event_add_time(event, &s->sync_source, CLOCK_REALTIME, UINT64_MAX, USEC_PER_MSEC, on_sync_timer, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(s->sync_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(s->sync_source, "ttl-sync");

        /* Raft */
        s->fsm = (struct raft_fsm) {
                .version = 1,
                .data = s,
                .apply = fsm_apply,
                .snapshot = fsm_snapshot,
                .restore = fsm_restore,
        };
        address = config->initial_advertise_peer_urls.n > 0 ? config->initial_advertise_peer_urls.urls[0].str
                                                             : "http://localhost:2380";
        r = raft_init(&s->raft, raft_io_get(s->rio), &s->fsm, s->member_id, address);
        if (r != 0)
                return log_error_errno(-ENOMEM, "Failed to initialize Raft: %s", raft_strerror(r));
        s->raft_initialized = true;
        s->raft.data = s;

        heartbeat_ms = config->heartbeat_interval_ms ?: 100;
        election_ms = config->election_timeout_ms ?: 1000;
        if (election_ms <= heartbeat_ms)
                election_ms = heartbeat_ms * 5;
        raft_set_heartbeat_timeout(&s->raft, (unsigned) heartbeat_ms);
        raft_set_election_timeout(&s->raft, (unsigned) election_ms);
        snapshot_count = config->snapshot_count ?: SERVER_DEFAULT_SNAPSHOT_COUNT;
        snapshot_count = MIN(snapshot_count, (uint64_t) UINT32_MAX);
        raft_set_snapshot_threshold(&s->raft, (unsigned) snapshot_count);
        raft_set_snapshot_trailing(&s->raft, (unsigned) MIN(snapshot_count, (uint64_t) SERVER_SNAPSHOT_TRAILING_MAX));
        s->proposal_timeout_usec = SERVER_BASE_TIMEOUT_USEC + 2 * election_ms * USEC_PER_MSEC;

        r = persist_hard_state_load(s->persist, &term, &vote);
        if (r < 0)
                return r;
        r = persist_log_bounds(s->persist, &first, &last);
        if (r < 0)
                return r;
        if (term == 0 && last == 0) {
                r = server_bootstrap(s, address);
                if (r < 0)
                        return r;
        } else
                log_info("Restarting member %" PRIx64 " in cluster %" PRIx64 " at term %" PRIu64
                         ", applied index %" PRIu64 ", log %" PRIu64 "..%" PRIu64 ", etcd index %" PRIu64 ".",
                         s->member_id, s->cluster_id, term, meta.applied_index, first, last, store_index(s->store));

        r = raft_start(&s->raft);
        if (r != 0) {
                log_error("Failed to start Raft on '%s/member': %s", config->data_dir, raft_errmsg(&s->raft));
                return -EUCLEAN;
        }
        s->raft_started = true;
        log_info("Member %" PRIx64 " (%s) of cluster %" PRIx64 " started; data in '%s/member'.",
                 s->member_id, s->name, s->cluster_id, config->data_dir);

        server_check_state(s);

        *ret = TAKE_PTR(s);
        return 0;
}

static void on_raft_closed(struct raft *raft) {
        Server *s = raft->data;

        s->raft_closed = true;
}

Server *server_free(Server *s) {
        if (!s)
                return NULL;

        s->closing = true;
        if (s->raft_started) {
                /* Make every appended entry durable and apply what commits: those writes finish. */
                (void) raft_io_drain(s->rio);
                dispatch_done(s);
        }
        if (s->raft_initialized) {
                s->raft.data = s;
                raft_close(&s->raft, on_raft_closed);
                for (unsigned i = 0; i < 100 && !s->raft_closed; i++)
                        (void) raft_io_drain(s->rio);
                if (!s->raft_closed)
                        log_warning("Raft did not close cleanly.");
        }
        dispatch_done(s);
        /* Whatever is left never reached the log, or lost it. */
        while (s->pending.head) {
                ServerProposal *p = s->pending.head;

                if (p->submitted && !p->raft_done)
                        p->raft_done = true;   /* libraft is closed: it will not call back */
                proposal_fail(p, ERR_STOPPED);
        }

        sd_event_source_disable_unref(s->timeout_source);
        sd_event_source_disable_unref(s->sync_source);
        if (s->rio)
                (void) raft_io_drain(s->rio);   /* the last applied state */
        raft_io_free(s->rio);
        store_free(s->store);
        persist_free(s->persist);
        sd_event_unref(s->event);
        free(s->name);
        free(s->raft_attributes_json);
        free(s->attributes_json);
        free(s);
        return NULL;
}

Store *server_store(Server *s) {
        return s->store;
}

uint64_t server_member_id(Server *s) {
        return s->member_id;
}

uint64_t server_cluster_id(Server *s) {
        return s->cluster_id;
}

uint64_t server_leader_id(Server *s) {
        raft_id id = 0;
        const char *addr = NULL;

        if (!s->raft_started)
                return 0;
        raft_leader(&s->raft, &id, &addr);
        return id;
}

ServerRole server_role(Server *s) {
        switch (raft_state(&s->raft)) {
        case RAFT_LEADER:
                return SERVER_ROLE_LEADER;
        case RAFT_CANDIDATE:
                return SERVER_ROLE_CANDIDATE;
        default:
                return SERVER_ROLE_FOLLOWER;
        }
}

uint64_t server_raft_index(Server *s) {
        return s->raft.last_applied;
}

uint64_t server_raft_term(Server *s) {
        return s->raft.current_term;
}

uint64_t server_start_time_usec(Server *s) {
        return s->start_time_usec;
}

uint64_t server_leader_start_time_usec(Server *s) {
        return s->leader_start_time_usec;
}
