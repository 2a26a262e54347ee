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
 * Clustering: libraft's server IDs are the etcd member IDs and its addresses the members' first peer
 * URLs; raft messages travel over the peer transport (peer.c). Every entry carries an envelope (origin
 * member, request ID; codec.h): a follower forwards its clients' proposals to the leader as opaque
 * PROPOSE frames (refused with NACK when the receiver does not lead: then forwarded again), and each
 * member answers its own waiting clients when IT applies the entry with their ID (etcd2's wait-by-ID).
 * Membership changes run on the leader (followers forward them): add = raft_add, standby, store
 * write, promotion to voter once the new member talks to us; remove = store writes, then raft_remove;
 * every member follows the member keys when it applies them (peer URL updates, removals, its own
 * removal: the process exits 0 a second later). A follower too far behind gets the leader's applied
 * state streamed in chunks ahead of libraft's InstallSnapshot, staged, installed in RocksDB through a
 * durable marker and loaded into a fresh Store off the loop; the Store takes over the watchers
 * (snapshot.c).
 *
 * On becoming leader we append a barrier first (so that entries of the previous run are applied
 * before we look at the store), then the internal writes etcd2 makes at start (member raftAttributes
 * on the first start, attributes on every start, /0/version on the first start), then the user
 * proposals that queued meanwhile. Proposals time out after 5 s + 2 election timeouts, in FIFO order
 * (they all share one timeout), checked by one timer. TTLs: the leader proposes a SYNC with its wall
 * clock when the store's earliest expiration has passed (one in flight at a time). Attributes
 * (name, client URLs) are published by every member through the log, retried until they succeed.
 */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <raft.h>

#include "codec.h"
#include "config-build.h"
#include "log.h"
#include "metrics.h"
#include "peer.h"
#include "persist.h"
#include "membership.h"
#include "join.h"
#include "raft-io.h"
#include "server-internal.h"
#include "snapshot.h"

#define SERVER_BASE_TIMEOUT_USEC (5 * USEC_PER_SEC)
#define SERVER_SNAPSHOT_TRAILING_MAX 5000U
#define SERVER_DEFAULT_SNAPSHOT_COUNT 10000U
#define SERVER_SYNC_RETRY_USEC (500 * USEC_PER_MSEC)
/* Nodes one SYNC entry may expire: a few ms of apply (store, RocksDB batch, events) at most. A mass
 * expiry takes one entry per this many nodes, proposed back to back. */
#define SERVER_SYNC_EXPIRE_MAX 1000
#define SERVER_FORWARD_RETRY_USEC (100 * USEC_PER_MSEC)
#define SERVER_PUBLISH_RETRY_USEC (1 * USEC_PER_SEC)
static void backup_finish(ServerBackup *b);


static const ClusterMember *config_self(const Config *c, uint64_t id);

static inline void server_freep(Server **s) {
        if (*s)
                server_free(*s);
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
        if (p->internal && !p->answered)
                p->server->n_internal--;
        if (!p->submitted && !p->forwarded && p->buf.base) {
                /* never left this member */
                p->server->n_waiting--;
        }
        p->answered = true;
        if (cb)
                cb(&p->result, p->userdata);
        proposal_maybe_free(p);
}

static void proposal_fail(ServerProposal *p, const char *cause) {
        metrics.proposals_failed++;
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

static void server_set_store_sink(Server *s) {
        store_set_sink(s->store, &(StoreSink) {
                .userdata = s,
                .node_put = sink_node_put,
                .node_delete = sink_node_delete,
                .history_add = sink_history_add,
                .history_drop = sink_history_drop,
        });
}

/* ---- FSM ---- */

/* Pending proposals are in creation order and mostly applied in that order: the match is usually
 * at the head. */

static ServerProposal *find_proposal(Server *s, uint64_t id) {
        for (ServerProposal *p = s->pending.head; p; p = p->next)
                if (p->id == id)
                        return p;
        return NULL;
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result) {
        Server *s = fsm->data;
        uint64_t index = s->raft.last_applied + 1;
        StoreResult res = {};
        StoreRequest req;
        ServerProposal *p = NULL;
        uint64_t origin = 0, id = 0;
        const void *inner = NULL;
        size_t inner_len = 0;
        int r;

        *result = NULL;
        if (index <= s->skip_until)
                return 0;   /* applied before the restart */

        r = codec_envelope_decode(buf->base, buf->len, &origin, &id, &inner, &inner_len);
        if (r >= 0)
                r = codec_request_decode(inner, inner_len, &req);
        if (r < 0) {
                log_error("Raft entry %" PRIu64 " is not a valid request (%zu bytes), skipping it.", index, buf->len);
                res = (StoreResult) {
                        .error = ETCD_ERROR_RAFT_INTERNAL,
                        .cause = strdup("etcdserver: malformed request"),
                        .index = store_index(s->store),
                };
        } else {
                r = store_apply(s->store, &req, now_realtime_usec(), &res);
                if (r >= 0 && res.error == ETCD_OK && strncmp(req.path, "/0/", 3) == 0)
                        member_key_applied(s, &req);
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

        /* Every member answers its own clients, when it applies their entries. */
        if (origin == s->member_id && id != 0)
                p = find_proposal(s, id);
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

        /* The snapshot covers everything applied so far, barriers included. The record goes into the
         * same group as the snapshot (snapshot_put follows), so restart finds them consistent. */
        note_applied(s, MAX(s->applied_index, (uint64_t) s->raft.last_applied));
        if (snapshot_marker_make(s->applied_index, bufs, n_bufs) < 0)
                return RAFT_NOMEM;
        log_debug("Snapshot marker at Raft index %" PRIu64 ".", s->applied_index);
        return 0;
}

static void server_set_store_sink(Server *s);

/* A snapshot of the leader (we were too far behind, or joined empty): its state replaces ours. The
 * records are in RocksDB already (raft-io wrote them with the snapshot record); here the in-memory
 * store is rebuilt and the watchers move into it (snapshot.c). */
static int fsm_install(Server *s, struct raft_buffer *buf) {
        Store *st = NULL;
        uint64_t applied = 0, etcd_index = 0;
        int r;

        r = snapshot_load_store(buf->base, buf->len, s->store, &st, &applied, &etcd_index);
        if (r < 0)
                /* RocksDB holds the leader's state already: memory cannot follow, so stop. */
                raft_io_die(s->rio, r, "load the snapshot of the leader");
        store_free(s->store);
        s->store = st;
        server_set_store_sink(s);
        s->applied_index = s->skip_until = applied;
        s->applied_dirty = false;
        log_info("Installed the leader's snapshot: applied Raft index %" PRIu64 ", etcd index %" PRIu64 ", %u watchers kept.",
                 applied, etcd_index, store_n_watchers(st));
        raft_free(buf->base);
        return 0;
}

/* A streamed snapshot: raft-io installed it in RocksDB and built its Store on the writer thread
 * before libraft got here; the watchers move over and the stores swap (snapshot.c). */
static int fsm_install_streamed(Server *s, struct raft_buffer *buf, uint64_t stream_id) {
        uint64_t applied = 0;
        Store *st;

        st = snapshot_take_installed(s->rio, s->store, stream_id, &applied);
        store_free(s->store);
        s->store = st;
        server_set_store_sink(s);
        s->applied_index = s->skip_until = applied;
        s->applied_dirty = false;
        raft_free(buf->base);
        return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf) {
        Server *s = fsm->data;
        SnapshotKind kind;
        uint64_t index;

        if (snapshot_classify(buf->base, buf->len, &kind, &index) < 0) {
                log_error("Snapshot data is not a snapshot of this daemon.");
                return RAFT_CORRUPT;
        }
        if (kind == SNAPSHOT_EXPORT)
                return fsm_install(s, buf);
        if (kind == SNAPSHOT_STREAMED)
                return fsm_install_streamed(s, buf, index);
        if (index > s->skip_until) {
                /* A marker only says the state is in RocksDB: it must reach that far already. */
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

                metrics.proposals_failed++;
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
        struct raft_buffer buf = p->buf;   /* a local array of one (GCC's access checks like that better) */
        int r;

        p->req.data = p;
        r = raft_apply(&s->raft, &p->req, &buf, 1, apply_cb);
        if (r != 0)
                return r;
        p->buf = (struct raft_buffer) {};   /* libraft owns it now */
        p->submitted = true;
        s->n_waiting--;
        return 0;
}

int send_opaque(Server *s, uint64_t to, const char *address, uint8_t kind, uint64_t id,
                       const void *payload, size_t size) {
        _cleanup_(freep) uint8_t *body = NULL;
        size_t n;

        body = malloc(1 + 10 + size);
        if (!body)
                return -ENOMEM;
        body[0] = kind;
        n = 1 + codec_varint_put(body + 1, id);
        if (size > 0)
                memcpy(body + n, payload, size);
        return peer_transport_send_opaque(s->peers, to, address, body, n + size, kind == MSG_PROPOSE ? id : 0);
}

/* Sends a waiting proposal to the leader; the entry carries our ID and the request ID. */
static int proposal_forward(Server *s, ServerProposal *p, uint64_t leader, const char *address) {
        int r;

        r = send_opaque(s, leader, address, MSG_PROPOSE, p->id, p->buf.base, p->buf.len);
        if (r < 0)
                return r;
        p->forwarded = true;
        s->n_waiting--;
        return 0;
}

/* Submits queued proposals: appended here once we lead and the start-up writes are in, forwarded
 * when another member leads, kept while there is no leader (until they time out). */
static void submit_waiting(Server *s) {
        raft_id leader = 0;
        const char *address = NULL;

        if (s->n_waiting == 0 || s->closing || !s->raft_started)
                return;
        if (!s->leader) {
                raft_leader(&s->raft, &leader, &address);
                if (leader == 0 || leader == s->member_id || !address || !s->peers)
                        return;
        } else if (!s->ready)
                return;

        for (ServerProposal *p = s->pending.head; p && s->n_waiting > 0; p = p->next) {
                int r;

                if (p->submitted || p->forwarded || !p->buf.base)
                        continue;
                if (s->leader) {
                        r = proposal_submit(s, p);
                        if (r != 0) {
                                log_warning("Failed to submit proposal: %s", raft_strerror(r));
                                break;
                        }
                } else {
                        r = proposal_forward(s, p, leader, address);
                        if (r < 0) {
                                log_debug_errno(r, "Failed to forward a proposal to %" PRIx64 ": %m", (uint64_t) leader);
                                break;
                        }
                }
        }
}

static void forwarded_apply_cb(struct raft_apply *req, int status, void *result) {
        ForwardedApply *fa = req->data;
        Server *s = fa->server;

        if (fa->prev)
                fa->prev->next = fa->next;
        else
                s->forwarded_applies = fa->next;
        if (fa->next)
                fa->next->prev = fa->prev;
        free(fa);
}

/* Is `path` a key the client API can name: "/1" plus a clean key as its mux leaves it ("" or "/..."
 * with no empty, "." or ".." segment; a trailing slash is fine)? */
static bool keys_path_valid(const char *path) {
        const char *p;

        if (!path || strncmp(path, STORE_KEYS_PREFIX, strlen(STORE_KEYS_PREFIX)) != 0)
                return false;
        p = path + strlen(STORE_KEYS_PREFIX);
        while (*p == '/') {
                const char *seg = p + 1;
                size_t n = strcspn(seg, "/");

                if (n == 0)
                        return *seg == 0;
                if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
                        return false;
                p = seg + n;
        }
        return *p == 0;
}

/* A v2 auth write the client API makes (client-api.c, auth.h): PUT or DELETE of /2/users/<name> or
 * /2/roles/<name> (one non-empty segment, not "." or ".."), PUT of /2/enabled, and the creates of the
 * directories /2, /2/users and /2/roles (auth-api.c's ensureAuthDirectories()). */
static bool auth_path_valid(const StoreRequest *req) {
        const char *p = req->path, *name = NULL;

        if (p && req->dir && !req->recursive)
                return req->method == STORE_METHOD_PUT && req->prev_exist == 0 && req->expiration_usec == 0 &&
                       !req->refresh && (streq(p, "/2") || streq(p, "/2/users") || streq(p, "/2/roles"));
        if (!p || req->dir || req->recursive)
                return false;
        if (streq(p, "/2/enabled"))
                return req->method == STORE_METHOD_PUT;
        if (strneq(p, "/2/users/", 9))
                name = p + 9;
        else if (strneq(p, "/2/roles/", 9))
                name = p + 9;
        if (!name || !*name || strchr(name, '/') || streq(name, ".") || streq(name, ".."))
                return false;
        return req->method == STORE_METHOD_PUT || req->method == STORE_METHOD_DELETE;
}

/* Could member `from` have proposed this for one of its clients (the keys API: set, create, delete,
 * quorum get under /1; v2 auth under /2), or is it publishing its own attributes? The rest of /0 (members' raft
 * attributes, removed members, the cluster version) and TTL syncs are the leader's own proposals:
 * in a forwarded proposal they are forged (a write to /0/removed_members/<id> makes that member
 * exit), whatever stream they came on. */
static bool forwarded_request_allowed(uint64_t from, const StoreRequest *req) {
        char own[96];

        switch (req->method) {
        case STORE_METHOD_PUT:
        case STORE_METHOD_POST:
        case STORE_METHOD_DELETE:
        case STORE_METHOD_QGET:
                break;
        default:
                return false;
        }
        if (keys_path_valid(req->path) || auth_path_valid(req))
                return true;
        (void) snprintf(own, sizeof(own), STORE_MEMBERS_PREFIX "/%" PRIx64 "/attributes", from);
        return req->method == STORE_METHOD_PUT && !req->dir && req->path && streq(req->path, own);
}

/* A follower's proposal: append it if we lead, else tell it to try again. */
static void handle_propose(Server *s, uint64_t from, uint64_t id, const uint8_t *entry, size_t size) {
        uint64_t origin = 0, eid = 0;
        const void *inner;
        size_t inner_len;
        StoreRequest req;
        struct raft_buffer buf;
        ForwardedApply *fa;
        int r;

        if (codec_envelope_decode(entry, size, &origin, &eid, &inner, &inner_len) < 0 || origin != from ||
            eid != id || codec_request_decode(inner, inner_len, &req) < 0) {
                if (s->n_forged_proposals++ % 1000 == 0)
                        log_warning("Member %" PRIx64 " forwarded a malformed proposal, dropping it "
                                    "(%" PRIu64 " refused so far).", from, s->n_forged_proposals);
                return;
        }
        if (!forwarded_request_allowed(from, &req)) {
                /* Dropped, not refused: a NACK would only make the sender try again. Logged sparingly,
                 * the sender may repeat it as fast as it likes. */
                if (s->n_forged_proposals++ % 1000 == 0)
                        log_warning("Member %" PRIx64 " forwarded a proposal no client can make (%.128s), dropping it "
                                    "(%" PRIu64 " so far).", from, req.path ? req.path : "(null)", s->n_forged_proposals);
                return;
        }
        if (!s->leader || !s->ready || s->closing)
                goto refuse;

        fa = calloc(1, sizeof(*fa));
        buf.base = raft_malloc(MAX(size, (size_t) 1));
        if (!fa || !buf.base) {
                free(fa);
                raft_free(buf.base);
                goto refuse;
        }
        memcpy(buf.base, entry, size);
        buf.len = size;
        fa->server = s;
        fa->req.data = fa;
        r = raft_apply(&s->raft, &fa->req, &buf, 1, forwarded_apply_cb);
        if (r != 0) {
                raft_free(buf.base);
                free(fa);
                goto refuse;
        }
        fa->next = s->forwarded_applies;
        if (fa->next)
                fa->next->prev = fa;
        s->forwarded_applies = fa;
        return;

refuse:
        (void) send_opaque(s, from, NULL, MSG_NACK, id, NULL, 0);
}

static int on_retry_timer(sd_event_source *source, uint64_t usec, void *userdata);

/* A fresh proposal with nothing waiting before it: append or forward it right away. */
static void proposal_try_now(Server *s, ServerProposal *p) {
        raft_id leader = 0;
        const char *address = NULL;
        int r;

        if (s->leader) {
                if (!s->ready)
                        return;
                r = proposal_submit(s, p);
                if (r != 0 && r != RAFT_NOTLEADER)
                        log_debug("raft_apply() failed: %s; the proposal waits.", raft_strerror(r));
                return;
        }
        if (!s->raft_started || !s->peers)
                return;
        raft_leader(&s->raft, &leader, &address);
        if (leader != 0 && leader != s->member_id && address)
                (void) proposal_forward(s, p, leader, address);
}

void retry_schedule(Server *s, uint64_t usec) {
        uint64_t now = now_monotonic_usec(), cur = 0;
        int enabled = SD_EVENT_OFF;

        (void) sd_event_source_get_enabled(s->retry_source, &enabled);
        (void) sd_event_source_get_time(s->retry_source, &cur);
        if (enabled != SD_EVENT_OFF && cur <= now + usec)
                return;
        (void) sd_event_source_set_time(s->retry_source, now + usec);
        (void) sd_event_source_set_enabled(s->retry_source, SD_EVENT_ONESHOT);
}

static void handle_nack(Server *s, uint64_t id) {
        ServerProposal *p = find_proposal(s, id);

        if (!p || !p->forwarded)
                return;
        /* The member we took for the leader did not append it: try again shortly. */
        p->forwarded = false;
        s->n_waiting++;
        retry_schedule(s, SERVER_FORWARD_RETRY_USEC);
}


static void handle_opaque(Server *s, PeerFrame *f) {
        const uint8_t *b = f->opaque;
        uint64_t id;
        size_t n;

        if (f->opaque_size < 2)
                goto bad;
        n = codec_varint_get(b + 1, f->opaque_size - 1, &id);
        if (n == 0)
                goto bad;
        switch (b[0]) {
        case MSG_PROPOSE:
                handle_propose(s, f->sender_id, id, b + 1 + n, f->opaque_size - 1 - n);
                return;
        case MSG_NACK:
                handle_nack(s, id);
                return;
        case MSG_MEMBER_REQ:
                handle_member_req(s, f->sender_id, id, b + 1 + n, f->opaque_size - 1 - n);
                return;
        case MSG_MEMBER_RES:
                handle_member_res(s, id, b + 1 + n, f->opaque_size - 1 - n);
                return;
        case SNAPSHOT_MSG_CHUNK:
                snapshot_streams_chunk(s->snapshots, f->sender_id, id, b + 1 + n, f->opaque_size - 1 - n);
                return;
        case SNAPSHOT_MSG_NACK:
                snapshot_streams_nack(s->snapshots, f->sender_id, id);
                return;
        default:
                break;
        }
bad:
        if (s->n_forged_proposals++ % 1000 == 0)
                log_warning("Unknown message from member %" PRIx64 ", ignoring it.", f->sender_id);
}

static int proposal_new(Server *s, const StoreRequest *req, ServerProposalCallback cb, void *userdata,
                        ServerProposal **ret) {
        ServerProposal *p;
        size_t len;

        size_t h;
        uint8_t header[CODEC_ENVELOPE_HEADER_MAX];

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->id = ++s->next_request_id;
        h = codec_envelope_write_header(s->member_id, p->id, header);
        len = h + codec_request_size(req);
        p->buf.base = raft_malloc(len);
        if (!p->buf.base) {
                free(p);
                return -ENOMEM;
        }
        memcpy(p->buf.base, header, h);
        p->buf.len = h + codec_request_write(req, (uint8_t *) p->buf.base + h);
        p->server = s;
        p->cb = cb;
        p->userdata = userdata;
        p->deadline_usec = now_monotonic_usec() + s->proposal_timeout_usec;
        *ret = p;
        return 0;
}


int server_propose(Server *s, const StoreRequest *req, ServerProposalCallback cb, void *userdata,
                   ServerProposal **ret) {
        ServerProposal *p;
        bool was_empty;
        int r;

        assert(s);
        assert(req);

        if (s->closing)
                return -ESHUTDOWN;
        if (raft_io_failed(s->rio))
                return -EIO;   /* storage failed: the process exits in a moment (on_storage_failed()) */
        if (!req->path || req->method < 0 || req->method >= _STORE_METHOD_MAX)
                return -EINVAL;

        r = proposal_new(s, req, cb, userdata, &p);
        if (r < 0)
                return r;

        was_empty = !s->pending.head;
        list_append(&s->pending, p);
        s->n_waiting++;
        if (s->n_waiting == 1)
                proposal_try_now(s, p);
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
        return s->pending.n + s->done.n - s->n_internal;
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
static void publish_cb(StoreResult *res, void *userdata);

/* Queues an internal proposal ahead of the waiting user proposals (front) or at the end. */
int propose_internal(Server *s, const StoreRequest *req, bool front, ServerProposalCallback cb) {
        ServerProposal *p;
        /* A static label: req->path may be a buffer of the caller's. */
        const char *what = req->method == STORE_METHOD_SYNC ? "TTL sync" :
                           strncmp(req->path, STORE_MEMBERS_PREFIX "/", strlen(STORE_MEMBERS_PREFIX "/")) == 0 ? "member attributes" :
                           streq(req->path, "/0/version") ? "/0/version" : "an internal key";
        int r;

        if (raft_io_failed(s->rio))
                return -EIO;   /* and no retry loop through the failure callbacks (on_storage_failed()) */
        r = proposal_new(s, req, cb ?: internal_cb, (void *) what, &p);
        if (r < 0)
                return r;
        if (cb == sync_cb || cb == publish_cb)
                p->userdata = s;
        p->internal = true;
        s->n_internal++;
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
                if (s->n_waiting == 1)
                        proposal_try_now(s, p);
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

/* etcd2 member.go: RaftAttributes{PeerURLs `json:"peerURLs"`} */
char *raft_attributes_json_new(const EtcdUrlList *l) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f;

        f = open_memstream(&buf, &len);
        if (!f)
                return NULL;
        fputs("{\"peerURLs\":", f);
        json_url_list(f, l);
        fputc('}', f);
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

/* Our own peer URLs: our --initial-cluster entry (sorted), else --initial-advertise-peer-urls. */
static const EtcdUrlList *self_peer_urls(Server *s, const Config *c) {
        const ClusterMember *m = config_self(c, s->member_id);

        if (!m)
                for (size_t i = 0; i < c->n_initial_members; i++)
                        if (streq(strempty(c->initial_members[i].name), strempty(c->name)))
                                m = &c->initial_members[i];
        if (m && m->peer_urls.n > 0)
                return &m->peer_urls;
        return &c->initial_advertise_peer_urls;
}

static int build_member_json(Server *s, const Config *c) {
        const EtcdUrlList *peers = self_peer_urls(s, c);
        char *buf = NULL;
        size_t len = 0;
        FILE *f;

        s->raft_attributes_json = raft_attributes_json_new(peers);
        if (!s->raft_attributes_json)
                return -ENOMEM;

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

bool conf_has(const struct raft_configuration *c, uint64_t id) {
        for (unsigned i = 0; i < c->n; i++)
                if (c->servers[i].id == id)
                        return true;
        return false;
}

static const char *initial_raft_attributes(Server *s, uint64_t id) {
        if (id == s->member_id)
                return s->raft_attributes_json;
        for (size_t i = 0; i < s->n_initial_members; i++)
                if (s->initial_members[i].id == id)
                        return s->initial_members[i].raft_attributes_json;
        return NULL;
}

typedef struct CollectCtx {
        Server *server;
        uint64_t **ids;
        size_t *n;
} CollectCtx;

static int collect_other_member(const StoreNode *child, void *userdata) {
        CollectCtx *c = userdata;
        const char *key = store_node_key(child), *base = strrchr(key, '/');
        uint64_t id, *a;

        if (!base)
                return 0;
        id = strtoull(base + 1, NULL, 16);
        if (id == 0 || conf_has(&c->server->raft.configuration, id))
                return 0;
        a = reallocarray(*c->ids, *c->n + 1, sizeof(uint64_t));
        if (!a)
                return -ENOMEM;
        a[(*c->n)++] = id;
        *c->ids = a;
        return 0;
}

static int propose_startup_writes(Server *s) {
        char path[128];
        int r;

        /* Entries of the previous run are applied by now (the barrier): the store is current. The
         * raftAttributes of every member of the bootstrap configuration that lacks them (etcd2 adds
         * them with the initial conf changes). */
        for (unsigned i = 0; i < s->raft.configuration.n; i++) {
                uint64_t id = s->raft.configuration.servers[i].id;
                const char *json = initial_raft_attributes(s, id);

                (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/raftAttributes", id);
                if (!json || store_lookup(s->store, path))
                        continue;

                StoreRequest req = {
                        .method = STORE_METHOD_PUT,
                        .path = path,
                        .value = json,
                        .value_len = strlen(json),
                        .prev_exist = 0,        /* etcd2 creates it */
                };

                r = propose_internal(s, &req, true, NULL);
                if (r < 0)
                        return r;
        }

        if (s->force_new_cluster) {
                const StoreNode *members = store_lookup(s->store, STORE_MEMBERS_PREFIX);
                uint64_t *gone = NULL;
                size_t n_gone = 0;

                s->force_new_cluster = false;
                if (members)
                        (void) store_node_foreach_child(members, collect_other_member, &(CollectCtx) { s, &gone, &n_gone });
                for (size_t i = 0; i < n_gone; i++) {
                        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64, gone[i]);
                        r = propose_internal(s, &(StoreRequest) { .method = STORE_METHOD_DELETE, .path = path,
                                                                  .dir = true, .recursive = true, .prev_exist = -1 },
                                             true, NULL);
                        if (r >= 0) {
                                (void) snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, gone[i]);
                                r = propose_internal(s, &(StoreRequest) { .method = STORE_METHOD_PUT, .path = path,
                                                                          .value = "", .prev_exist = -1 },
                                                     true, NULL);
                        }
                        if (r < 0)
                                break;
                }
                free(gone);
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

/* Every member publishes its own name and client URLs through the log after it started, retried
 * until it succeeds (etcd2's publish()). */
static void publish_cb(StoreResult *res, void *userdata) {
        Server *s = userdata;

        s->attributes_in_flight = false;
        if (res->error == ETCD_OK) {
                s->attributes_published = true;
                log_info("Published %s to cluster %" PRIx64 ".", s->attributes_json, s->cluster_id);
                return;
        }
        log_debug("Publishing our attributes failed (%s), retrying.", strempty(res->cause));
        if (!s->closing)
                retry_schedule(s, SERVER_PUBLISH_RETRY_USEC);
}

static void publish_attributes(Server *s) {
        char path[128];
        int r;

        if (s->attributes_published || s->attributes_in_flight || s->closing || s->removed)
                return;
        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/attributes", s->member_id);
        StoreRequest req = {
                .method = STORE_METHOD_PUT,
                .path = path,
                .value = s->attributes_json,
                .value_len = strlen(s->attributes_json),
                .prev_exist = -1,
        };
        r = propose_internal(s, &req, false, publish_cb);
        if (r < 0) {
                retry_schedule(s, SERVER_PUBLISH_RETRY_USEC);
                return;
        }
        s->attributes_in_flight = true;
}

static int on_retry_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        Server *s = userdata;

        submit_waiting(s);
        publish_attributes(s);
        member_ops_check(s);
        if (s->member_ops)
                retry_schedule(s, 200 * USEC_PER_MSEC);
        return 0;
}

/* ---- journal ---- */

/* Journal fields of this member for key events: `journalctl -u etcd2 ETCD_MEMBER_ID=<id>`. */
const char *const *log_ids(const Server *s, LogIds *ids, const char *event, const char **fields) {
        (void) snprintf(ids->member, sizeof(ids->member), "ETCD_MEMBER_ID=%" PRIx64, s->member_id);
        (void) snprintf(ids->cluster, sizeof(ids->cluster), "ETCD_CLUSTER_ID=%" PRIx64, s->cluster_id);
        (void) snprintf(ids->term, sizeof(ids->term), "ETCD_RAFT_TERM=%llu", (unsigned long long) s->raft.current_term);
        fields[0] = ids->member;
        fields[1] = ids->cluster;
        fields[2] = ids->term;
        fields[3] = event;
        fields[4] = NULL;
        return fields;
}

/* ---- transport ---- */


/* May `from` open a stream to us (the transport refused our own ID and other clusters already)?
 * 410 for a removed member (etcd2: it then stops), 404 unless it is in the Raft configuration: a
 * member being added is in it (as a spare) before the leader replicates to it. A member that joins
 * an existing cluster has no configuration until the leader's first entries or snapshot arrive, and
 * it must hear the leader: it takes streams from anyone of its cluster until then. */
static int on_peer_check(PeerTransport *t, uint64_t from, void *userdata) {
        Server *s = userdata;

        if (from == s->member_id)
                return 404;
        if (member_is_removed(s, from))
                return 410;
        if (s->raft.configuration.n > 0 && !conf_has(&s->raft.configuration, from))
                return 404;
        return 0;
}

static void on_peer_refused(PeerTransport *t, uint64_t peer, int status, void *userdata) {
        Server *s = userdata;

        if (status == 410)
                server_removed(s);
}

static FollowerStats *follower_stats(Server *s, uint64_t id) {
        FollowerStats *a;

        for (size_t i = 0; i < s->n_followers; i++)
                if (s->followers[i].id == id)
                        return &s->followers[i];
        a = reallocarray(s->followers, s->n_followers + 1, sizeof(FollowerStats));
        if (!a)
                return NULL;
        s->followers = a;
        a[s->n_followers] = (FollowerStats) { .id = id };
        return &a[s->n_followers++];
}

static void on_peer_frame(PeerTransport *t, PeerFrame *f, void *userdata) {
        Server *s = userdata;

        if (s->closing)
                return;
        if (member_is_removed(s, f->sender_id)) {
                /* Reset its stream: its reconnect is answered 410 and it shuts down. */
                peer_transport_drop(t, f->sender_id);
                return;
        }
        if (f->message.type == RAFT_IO_APPEND_ENTRIES)
                s->recv_appends++;
        else if (f->message.type == RAFT_IO_APPEND_ENTRIES_RESULT) {
                FollowerStats *fs = follower_stats(s, f->sender_id);

                if (fs) {
                        if (f->message.append_entries_result.rejected)
                                fs->n_fail++;
                        else
                                fs->n_success++;
                        if (fs->sent_usec != 0) {
                                double ms = (now_monotonic_usec() - fs->sent_usec) / 1000.0;

                                fs->sent_usec = 0;
                                fs->last_ms = ms;
                                fs->sum_ms += ms;
                                fs->sum_sq_ms += ms * ms;
                                fs->min_ms = fs->n_samples == 0 ? ms : MIN(fs->min_ms, ms);
                                fs->max_ms = MAX(fs->max_ms, ms);
                                fs->n_samples++;
                        }
                }
        }
        if (f->message.type == PEER_FRAME_TYPE_OPAQUE) {
                handle_opaque(s, f);
                return;
        }
        /* A streamed snapshot goes to libraft only once its stream is staged complete. */
        if (!snapshot_streams_ready(s->snapshots, &f->message))
                return;
        raft_io_deliver(s->rio, peer_frame_hand_over(f));
}

static int on_raft_send(RaftIo *rio, struct raft_io_send *req, const struct raft_message *m, void *userdata) {
        Server *s = userdata;
        int r;

        if (m->server_id == s->member_id)
                return -EINVAL;
        if (m->type == RAFT_IO_INSTALL_SNAPSHOT) {
                /* The state streams first; the send completes when the message itself is queued. */
                r = snapshot_streams_send(s->snapshots, req, m);
                if (r != -ENOTSUP)
                        return r < 0 ? r : 0;
        }
        r = peer_transport_send_raft(s->peers, m);
        if (r >= 0 && m->type == RAFT_IO_APPEND_ENTRIES) {
                FollowerStats *fs = follower_stats(s, m->server_id);

                s->send_appends++;
                /* Latency: from an AppendEntries to the next result (one sample in flight). */
                if (fs && fs->sent_usec == 0)
                        fs->sent_usec = now_monotonic_usec();
        }
        if (r < 0 && r != -ENOBUFS)
                return r;
        /* Serialized (or dropped for backpressure, which raft recovers from like a lost message). */
        raft_io_send_done(rio, req, r < 0 ? RAFT_NOCONNECTION : 0);
        return 0;
}

PeerTransport *server_peer_transport(Server *s) {
        return s->peers;
}

/* ---- TTL ---- */

/* A removed big directory is freed a slice at a time (store_reap()): by later store operations and,
 * so that an idle member frees it too, after every loop iteration that dispatched something (heartbeats
 * make sure there are some). A slice is well under a millisecond; with nothing to free it costs a check. */
static int on_reap(sd_event_source *source, void *userdata) {
        Server *s = userdata;

        if (s->store)
                (void) store_reap(s->store, 4096);
        return 0;
}

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
        /* Something the last SYNC should have expired is still there. If that SYNC stopped at its
         * cap, the next slice goes at once; otherwise (it failed, or clocks disagree) do not spin,
         * retry at a relaxed pace. */
        if (next <= s->last_sync_usec && !s->sync_more)
                next = s->last_sync_usec + SERVER_SYNC_RETRY_USEC;
        (void) sd_event_source_set_time(s->sync_source, next);
        (void) sd_event_source_set_enabled(s->sync_source, SD_EVENT_ONESHOT);
}

static void sync_cb(StoreResult *res, void *userdata) {
        Server *s = userdata;

        s->sync_in_flight = false;
        if (res->error != ETCD_OK)
                log_warning("TTL sync failed: %s", strempty(res->cause));
        /* a SYNC that applied leaves nothing due at its time unless it stopped at the cap */
        s->sync_more = res->error == ETCD_OK && store_next_expiration(s->store) != 0 &&
                       store_next_expiration(s->store) <= s->last_sync_usec;
        sync_rearm(s);
}

static int on_sync_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        Server *s = userdata;
        StoreRequest req = {
                .method = STORE_METHOD_SYNC,
                .path = "/",
                .prev_exist = -1,
                .prev_index = SERVER_SYNC_EXPIRE_MAX,
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

static void refuse_unsent(uint64_t tag, void *userdata) {
        handle_nack(userdata, tag);
}

/* Proposals forwarded to a former leader whose frames never left our queue certainly did not reach
 * it: send them to the new leader (the others wait for their entry or time out, as with etcd2). */
static void leader_changed(Server *s, uint64_t old) {
        metrics.leader_changes++;
        if (old != 0 && old != s->member_id && s->peers)
                peer_transport_cancel_unsent(s->peers, old, refuse_unsent, s);
}

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
                {
                        const char *f[5];
                        LogIds ids;

                        log_struct(LOG_NOTICE, log_ids(s, &ids, "ETCD_EVENT=leader-elected", f),
                                   "Member %" PRIx64 " became leader at term %llu.", s->member_id,
                                   s->raft.current_term);
                }
        } else if (!leader && s->leader) {
                s->leader = false;
                s->ready = false;
                {
                        const char *f[5];
                        LogIds ids;

                        log_struct(LOG_NOTICE, log_ids(s, &ids, "ETCD_EVENT=leader-lost", f),
                                   "Member %" PRIx64 " lost leadership at term %llu.", s->member_id,
                                   s->raft.current_term);
                }
        }
        if (!leader) {
                raft_id id = 0;
                const char *addr = NULL;

                raft_leader(&s->raft, &id, &addr);
                /* Since when the current leader leads (as far as we saw it). */
                if (id != 0 && id != s->known_leader) {
                        s->leader_start_time_usec = now_realtime_usec();
                        leader_changed(s, s->known_leader);
                }
                if (id != 0)
                        s->known_leader = id;
        } else {
                if (s->known_leader != s->member_id)
                        leader_changed(s, s->known_leader);
                s->known_leader = s->member_id;
        }

        /* An entry of our own term at once: libraft 0.15 appends none on election, and older entries
         * commit only behind one (raft-guard.c). We run from the io callback that follows the libraft
         * call which made us leader, before any other message is handled. Retried on the next event if
         * appending it failed (the member serves no writes before it is applied). */
        if (s->leader && !s->barrier_done && !s->barrier_pending) {
                s->barrier.data = s;
                r = raft_barrier(&s->raft, &s->barrier, barrier_cb);
                if (r == 0)
                        s->barrier_pending = true;
                else if (r == RAFT_NOTLEADER)   /* a leadership transfer is under way */
                        log_debug("No barrier during a leadership transfer.");
                else
                        log_warning("Failed to append a barrier: %s", raft_strerror(r));
        }

        if (s->leader && s->barrier_done && !s->ready) {
                s->ready = true;
                r = propose_startup_writes(s);
                if (r < 0)
                        log_error_errno(r, "Failed to propose the start-up writes: %m");
                submit_waiting(s);
        }

        if (conf_has(&s->raft.configuration, s->member_id))
                s->was_member = true;
        else if (s->was_member && s->raft.configuration.n > 0 && !s->removed)
                server_removed(s);
}

/* raft-io.c's storage failure (raft_io_fatal()), from the loop, outside libraft: libraft decides nothing
 * any more and the process exits in a moment. Proposals already applied (committed) get their answer;
 * every other waiting one gets an error now, never a success later. */
static void on_storage_failed(RaftIo *rio, void *userdata) {
        Server *s = userdata;

        dispatch_done(s);
        while (s->pending.head)
                proposal_fail(s->pending.head, ERR_STORAGE);
        timeout_rearm(s);
}

static void server_on_io_event(RaftIo *rio, void *userdata) {
        Server *s = userdata;

        server_check_state(s);
        submit_waiting(s);
        if (s->member_ops)
                member_ops_check(s);
        promote_spares(s);
        dispatch_done(s);
        sync_rearm(s);
}

/* ---- life cycle ---- */

static const ClusterMember *config_self(const Config *c, uint64_t id) {
        for (size_t i = 0; i < c->n_initial_members; i++)
                if (c->initial_members[i].id == id)
                        return &c->initial_members[i];
        return NULL;
}

/* Static bootstrap: every --initial-cluster member is a voter from entry 1 on. Each member writes
 * the same entry, so they agree without talking. */
static int server_bootstrap(Server *s, const Config *c) {
        struct raft_configuration conf;
        int r = 0;

        raft_configuration_init(&conf);
        for (size_t i = 0; r == 0 && i < c->n_initial_members; i++) {
                const ClusterMember *m = &c->initial_members[i];

                if (m->peer_urls.n == 0)
                        continue;
                r = raft_configuration_add(&conf, m->id, m->peer_urls.urls[0].str, RAFT_VOTER);
        }
        if (r == 0 && !conf_has(&conf, s->member_id))
                r = raft_configuration_add(&conf, s->member_id, s->address, RAFT_VOTER);
        if (r == 0)
                r = raft_bootstrap(&s->raft, &conf);
        if (r != 0) {
                raft_configuration_close(&conf);
                log_error("Failed to bootstrap Raft: %s", raft_strerror(r));
                return -EIO;
        }
        log_info("Bootstrapped new cluster %" PRIx64 " with %u member(s); this is %" PRIx64 " (%s).",
                 s->cluster_id, conf.n, s->member_id, s->address);
        raft_configuration_close(&conf);
        return 0;
}

static int initial_members_load(Server *s, const Config *c) {
        s->initial_members = calloc(MAX(c->n_initial_members, (size_t) 1), sizeof(InitialMember));
        if (!s->initial_members)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_initial_members; i++) {
                InitialMember *m = &s->initial_members[s->n_initial_members++];

                m->id = c->initial_members[i].id;
                m->raft_attributes_json = raft_attributes_json_new(&c->initial_members[i].peer_urls);
                if (!m->raft_attributes_json)
                        return -ENOMEM;
        }
        return 0;
}

/* The gauges of /metrics that mirror the member's state, just before a scrape. */
static void server_metrics_collect(Metrics *m, void *userdata) {
        Server *s = userdata;
        raft_id leader = 0;
        const char *address = NULL;

        m->server = true;
        if (s->raft_initialized)
                raft_leader(&s->raft, &leader, &address);
        m->has_leader = leader != 0;
        m->proposals_committed = s->raft_initialized ? (uint64_t) s->raft.commit_index : 0;
        m->proposals_applied = s->raft_initialized ? (uint64_t) s->raft.last_applied : 0;
        m->proposals_pending = server_n_pending(s);
        m->store_watchers = s->store ? store_n_watchers(s->store) : 0;

        /* rafthttp's byte counters, per member we exchange frames with */
        m->n_peers = 0;
        for (unsigned i = 0; s->peers && s->raft_initialized && i < s->raft.configuration.n; i++) {
                uint64_t id = s->raft.configuration.servers[i].id;
                PeerStats st;

                if (id == s->member_id || m->n_peers >= METRICS_PEERS_MAX)
                        continue;
                if (peer_transport_stats(s->peers, id, &st) < 0)
                        continue;
                m->peers[m->n_peers++] = (MetricsPeer) {
                        .id = id,
                        .sent_bytes = st.bytes_sent,
                        .received_bytes = st.bytes_received,
                };
        }
}

int server_new(sd_event *event, const Config *config, Server **ret) {
        _cleanup_(server_freep) Server *s = NULL;
        const char *address;
        PersistMeta meta;
        uint64_t term, vote, first, last, snapshot_count, election_ms, heartbeat_ms;
        bool fresh, join = false;
        int r;

        assert(event);
        assert(config);
        assert(ret);

        if (isempty(config->data_dir))
                return log_error_errno(-EINVAL, "No data directory configured.");

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        metrics.server = true;
        metrics_set_collector(server_metrics_collect, s);
        s->event = sd_event_ref(event);
        s->start_time_usec = now_realtime_usec();

        r = persist_open(config->data_dir, config->wal_dir, &s->persist);
        if (r < 0)
                return r;
        fresh = persist_is_new(s->persist);
        if (fresh) {
                uint64_t member_id = config->member_id, cluster_id = config->cluster_id;

                if (config->initial_cluster_state == CLUSTER_STATE_EXISTING) {
                        r = join_fetch_existing_cluster(config, &member_id, &cluster_id);
                        if (r < 0)
                                return r;
                        join = true;
                } else if (config->n_initial_members > 1 && !config->force_new_cluster) {
                        r = join_check_not_bootstrapped(config);
                        if (r < 0)
                                return r;
                }
                if (member_id == 0)
                        return log_error_errno(-EINVAL, "No member ID configured.");
                r = persist_meta_init(s->persist, member_id, cluster_id);
                if (r < 0)
                        return log_error_errno(r, "Failed to initialize '%s/member': %m", config->data_dir);
        }
        /* Before anything reads the state: a snapshot install cut short by a kill is finished. */
        r = snapshot_recover(s->persist);
        if (r < 0)
                return r;
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
        {
                const EtcdUrlList *l = self_peer_urls(s, config);

                s->address = strdup(l->n > 0 ? l->urls[0].str : "http://localhost:2380");
                if (!s->address)
                        return -ENOMEM;
        }
        s->next_request_id = now_realtime_usec();
        r = build_member_json(s, config);
        if (r < 0)
                return r;
        r = initial_members_load(s, config);
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
        raft_io_set_fatal_callback(s->rio, on_storage_failed, s);
        r = peer_transport_new(event, s->member_id, s->cluster_id, s->address, &s->peers);
        if (r < 0)
                return r;
        if (config_peer_tls_given(config)) {
                TlsInfo tls = config_peer_tls_info(config);

                r = peer_transport_set_tls(s->peers, &tls);
                if (r < 0)
                        return r;
        }
        peer_transport_set_handlers(s->peers, on_peer_frame, on_peer_check, on_peer_refused, s);
        raft_io_set_transport(s->rio, on_raft_send, s);
        r = snapshot_streams_new(event, s->persist, s->rio, s->peers, &s->snapshots);
        if (r < 0)
                return r;
        raft_io_set_install_loader(s->rio, snapshot_load_installed, NULL);
        server_set_store_sink(s);

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
        r = sd_event_add_time(event, &s->retry_source, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_MSEC, on_retry_timer, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(s->retry_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(s->retry_source, "server-retry");
        r = sd_event_add_post(event, &s->reap_source, on_reap, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->reap_source, "store-reap");

        /* Raft */
        s->fsm = (struct raft_fsm) {
                .version = 1,
                .data = s,
                .apply = fsm_apply,
                .snapshot = fsm_snapshot,
                .restore = fsm_restore,
        };
        address = s->address;
        r = raft_init(&s->raft, raft_io_get(s->rio), &s->fsm, s->member_id, address);
        if (r != 0)
                return log_error_errno(-ENOMEM, "Failed to initialize Raft: %s", raft_strerror(r));
        s->raft_initialized = true;
        s->raft.data = s;
        raft_io_set_raft(s->rio, &s->raft);

        heartbeat_ms = config->heartbeat_interval_ms ?: 100;
        election_ms = config->election_timeout_ms ?: 1000;
        if (election_ms <= heartbeat_ms)
                election_ms = heartbeat_ms * 5;
        /* etcd2's --heartbeat-interval as is: libraft would tell followers a new commit index only with
         * the next AppendEntries, but raft-io makes the followers due and runs a tick as soon as the
         * leader's commit index advances (raft-guard.c), as etcd's raft sends one at once. */
        raft_set_heartbeat_timeout(&s->raft, (unsigned) heartbeat_ms);
        /* libraft randomizes in [T, 2T) like etcd, but a follower that still remembers a leader
         * refuses votes until its own timer expires (leader stickiness), which costs one more round
         * after a leader dies: with T = half of etcd's timeout a new leader is there within two
         * of etcd's election timeouts, as with etcd2. */
        raft_set_election_timeout(&s->raft, (unsigned) MAX(election_ms / 2, heartbeat_ms * 2));
        snapshot_count = config->snapshot_count ?: SERVER_DEFAULT_SNAPSHOT_COUNT;
        snapshot_count = MIN(snapshot_count, (uint64_t) UINT32_MAX);
        raft_set_snapshot_threshold(&s->raft, (unsigned) snapshot_count);
        /* libraft restarts a snapshot whose follower has not answered within this time, whatever
         * the transfer is doing; our stream reports broken connections itself (the send fails, and
         * libraft retries at once), so this only needs to cover a big stream and its install. */
        raft_set_install_snapshot_timeout(&s->raft, SNAPSHOT_INSTALL_TIMEOUT_MSEC);
        raft_set_snapshot_trailing(&s->raft, (unsigned) MIN(snapshot_count, (uint64_t) SERVER_SNAPSHOT_TRAILING_MAX));
        s->proposal_timeout_usec = SERVER_BASE_TIMEOUT_USEC + 2 * election_ms * USEC_PER_MSEC;
        /* A leader's stream carries heartbeats every heartbeat interval, a follower's answers them;
         * between two followers nothing flows, so the timeout is generous (their streams are opened
         * again for the next election) and mostly frees what a dead or fake sender holds. */
        peer_transport_set_stream_idle_timeout(s->peers, MAX(60 * election_ms, (uint64_t) 30000) * USEC_PER_MSEC);
        s->strict_reconfig_check = config->strict_reconfig_check;

        r = persist_hard_state_load(s->persist, &term, &vote);
        if (r < 0)
                return r;
        r = persist_log_bounds(s->persist, &first, &last);
        if (r < 0)
                return r;
        if (config->initial_cluster_state == CLUSTER_STATE_EXISTING)
                join = true;   /* also when an earlier join stopped before the first entry arrived */
        if (term == 0 && last == 0 && join)
                log_info("Member %" PRIx64 " starts without a configuration and waits for the leader of cluster %"
                         PRIx64 ".", s->member_id, s->cluster_id);
        else if (term == 0 && last == 0) {
                r = server_bootstrap(s, config);
                if (r < 0)
                        return r;
        } else if (config->force_new_cluster) {
                struct raft_configuration conf;

                /* etcd2: the survivor restarts as the only member, keeping its data; the others are
                 * removed once it leads (propose_startup_writes()). */
                raft_configuration_init(&conf);
                r = raft_configuration_add(&conf, s->member_id, s->address, RAFT_VOTER);
                if (r == 0)
                        r = raft_recover(&s->raft, &conf);
                raft_configuration_close(&conf);
                if (r != 0)
                        return log_error_errno(-EIO, "Failed to force a new cluster: %s", raft_strerror(r));
                s->force_new_cluster = true;
                log_notice("Forcing a new cluster: member %" PRIx64 " restarts as the only member of cluster %"
                           PRIx64 ", keeping its data.", s->member_id, s->cluster_id);
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
        publish_attributes(s);

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

        metrics_set_collector(NULL, NULL);
        s->closing = true;
        if (s->raft_started) {
                /* Make every appended entry durable and apply what commits: those writes finish. */
                (void) raft_io_drain(s->rio);
                dispatch_done(s);
        }
        /* Streams being sent complete now: libraft frees their requests before it closes. */
        snapshot_streams_cancel(s->snapshots);
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

        while (s->member_ops)
                member_op_finish(s->member_ops, -ETIMEDOUT);
        if (s->backup) {
                /* the checkpoint reads the database freed below: wait for it */
                ServerBackup *b = s->backup;

                (void) pthread_join(b->thread, NULL);
                backup_finish(b);
        }
        free(s->followers);
        while (s->forwarded_applies) {
                ForwardedApply *fa = s->forwarded_applies;

                s->forwarded_applies = fa->next;
                free(fa);
        }

        sd_event_source_disable_unref(s->timeout_source);
        sd_event_source_disable_unref(s->sync_source);
        sd_event_source_disable_unref(s->reap_source);
        sd_event_source_disable_unref(s->retry_source);
        sd_event_source_disable_unref(s->exit_source);
        if (s->rio)
                (void) raft_io_drain(s->rio);   /* the last applied state */
        s->snapshots = snapshot_streams_free(s->snapshots);
        raft_io_free(s->rio);
        peer_transport_free(s->peers);
        for (size_t i = 0; i < s->n_initial_members; i++)
                free(s->initial_members[i].raft_attributes_json);
        free(s->initial_members);
        free(s->address);
        store_free(s->store);
        persist_free(s->persist);
        sd_event_unref(s->event);
        free(s->name);
        free(s->raft_attributes_json);
        free(s->attributes_json);
        free(s);
        return NULL;
}

static void backup_finish(ServerBackup *b) {
        ServerBackupDone done = b->done;
        void *userdata = b->userdata;
        int r = b->result;

        b->server->backup = NULL;
        sd_event_source_disable_unref(b->io);
        close(b->efd);
        free(b->dir);
        free(b);
        done(r, userdata);
}

static void *backup_thread(void *userdata) {
        ServerBackup *b = userdata;
        uint64_t one = 1;

        b->result = persist_checkpoint(b->server->persist, b->dir);
        /* an 8-byte eventfd write does not fail short of a bug; if one did, the loop would never
         * hear of the end and the caller would wait forever: stop loudly instead */
        if (write(b->efd, &one, sizeof one) != (ssize_t) sizeof one) {
                log_full_errno(LOG_CRIT, -errno, "Failed to signal the end of a backup: %m");
                abort();
        }
        return NULL;
}

static int on_backup_done(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        ServerBackup *b = userdata;
        int r;

        r = pthread_join(b->thread, NULL);
        if (r != 0)
                log_error_errno(-r, "Failed to join the backup thread: %m");
        backup_finish(b);
        return 0;
}

int server_backup(Server *s, const char *dir, ServerBackupDone done, void *userdata) {
        _cleanup_free_ ServerBackup *b = NULL;
        int r;

        assert(s);
        assert(dir);
        assert(done);

        if (s->backup)
                return -EBUSY;

        b = calloc(1, sizeof(ServerBackup));
        if (!b)
                return -ENOMEM;
        b->server = s;
        b->done = done;
        b->userdata = userdata;
        b->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (b->efd < 0)
                return -errno;
        b->dir = strdup(dir);
        if (!b->dir) {
                r = -ENOMEM;
                goto fail;
        }
        r = sd_event_add_io(s->event, &b->io, b->efd, EPOLLIN, on_backup_done, b);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(b->io, "backup-done");
        r = -pthread_create(&b->thread, NULL, backup_thread, b);
        if (r < 0)
                goto fail;
        s->backup = TAKE_PTR(b);
        return 0;
fail:
        sd_event_source_disable_unref(b->io);
        close(b->efd);
        free(b->dir);
        return r;
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

        if (!s->raft_started || raft_io_failed(s->rio))
                return 0;   /* (storage failed: /health says false until the process is gone) */
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

/* Without libm. */
static double sqrt_newton(double v) {
        double x = v > 1 ? v : 1;

        if (v <= 0)
                return 0;
        for (unsigned i = 0; i < 60; i++)
                x = (x + v / x) / 2;
        return x;
}

int server_follower_stats(Server *s, ServerFollowerStats **ret, size_t *ret_n) {
        ServerFollowerStats *a;
        size_t n = 0;

        if (!s->leader)
                return -EPERM;
        a = calloc(MAX(s->raft.configuration.n, 1u), sizeof(ServerFollowerStats));
        if (!a)
                return -ENOMEM;
        for (unsigned i = 0; i < s->raft.configuration.n; i++) {
                uint64_t id = s->raft.configuration.servers[i].id;
                FollowerStats *fs = NULL;

                if (id == s->member_id)
                        continue;
                for (size_t k = 0; k < s->n_followers; k++)
                        if (s->followers[k].id == id)
                                fs = &s->followers[k];
                a[n] = (ServerFollowerStats) { .id = id };
                if (fs) {
                        a[n].n_success = fs->n_success;
                        a[n].n_fail = fs->n_fail;
                        if (fs->n_samples > 0) {
                                double avg = fs->sum_ms / fs->n_samples, var = fs->sum_sq_ms / fs->n_samples - avg * avg;

                                a[n].latency_current_ms = fs->last_ms;
                                a[n].latency_average_ms = avg;
                                a[n].latency_stddev_ms = sqrt_newton(var);
                                a[n].latency_min_ms = fs->min_ms;
                                a[n].latency_max_ms = fs->max_ms;
                        }
                }
                n++;
        }
        *ret = a;
        *ret_n = n;
        return 0;
}

void server_self_stats(Server *s, ServerSelfStats *ret) {
        *ret = (ServerSelfStats) {
                .recv_append_requests = s->recv_appends,
                .send_append_requests = s->send_appends,
        };
        for (unsigned i = 0; i < s->raft.configuration.n; i++) {
                PeerStats ps;

                if (peer_transport_stats(s->peers, s->raft.configuration.servers[i].id, &ps) >= 0) {
                        ret->send_bytes += ps.bytes_sent;
                        ret->recv_bytes += ps.bytes_received;
                }
        }
}
