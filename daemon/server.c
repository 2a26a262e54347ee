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
 * state as an InstallSnapshot (raft-io.h: snapshot export), installed in RocksDB atomically with the
 * snapshot record and then into a fresh Store.
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
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <json-c/json.h>
#include <raft.h>
#include <strings.h>

#include "codec.h"
#include "config-build.h"
#include "log.h"
#include "peer.h"
#include "persist.h"
#include "raft-io.h"
#include "server.h"

#define SERVER_BASE_TIMEOUT_USEC (5 * USEC_PER_SEC)
#define SERVER_SNAPSHOT_TRAILING_MAX 5000U
#define SERVER_DEFAULT_SNAPSHOT_COUNT 10000U
#define SERVER_SNAPSHOT_MAGIC "E2SNAP01"
#define SERVER_SYNC_RETRY_USEC (500 * USEC_PER_MSEC)
#define SERVER_FORWARD_RETRY_USEC (100 * USEC_PER_MSEC)
#define SERVER_PUBLISH_RETRY_USEC (1 * USEC_PER_SEC)
#define SERVER_REMOVED_EXIT_USEC (1 * USEC_PER_SEC)

/* Opaque frames between members (first byte of the body). */
enum {
        MSG_PROPOSE = 1,        /* follower -> leader: varint request ID, then the entry (envelope) */
        MSG_NACK = 2,           /* leader -> follower: varint request ID; not appended, retry elsewhere */
        MSG_MEMBER_REQ = 3,     /* follower -> leader: varint request ID, u8 op, varint member ID,
                                 * varint n, n x (varint len, URL bytes) */
        MSG_MEMBER_RES = 4,     /* leader -> follower: varint request ID, u8 result, varint member ID */
};

typedef enum MemberOpKind {
        MEMBER_OP_ADD = 1,
        MEMBER_OP_REMOVE = 2,
        MEMBER_OP_UPDATE = 3,
} MemberOpKind;

/* A membership change: executed by the leader (for a local caller or for a follower that forwarded
 * it), or waiting on a follower for the leader's answer. */
typedef struct MemberOp {
        Server *server;
        MemberOpKind kind;
        uint64_t member_id;
        char **urls;              /* sorted */
        size_t n_urls;
        uint64_t request_id;
        uint64_t origin;          /* 0: our caller (cb); else the follower to answer */
        ServerMemberCallback cb;
        void *userdata;
        uint64_t deadline_usec;
        bool forwarded;           /* follower: sent to the leader */
        bool executing;           /* leader: the conf change / store writes are under way */
        unsigned stage;           /* leader: steps done (see member_op_step()) */
        bool waiting_change;      /* leader: the next step waits for another change to finish */
        bool awaiting_local;      /* follower: the leader said done; answer once our store shows it too */
        struct raft_change change;
        struct MemberOp *next;
} MemberOp;

typedef struct FollowerStats {
        uint64_t id;
        uint64_t n_success, n_fail;
        uint64_t sent_usec;       /* an AppendEntries is out since then (0: none) */
        double last_ms, sum_ms, sum_sq_ms, min_ms, max_ms;
        uint64_t n_samples;
} FollowerStats;

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
        uint64_t id;              /* request ID, unique for this member; carried in the entry */
        struct raft_buffer buf;   /* the encoded entry until it is handed to raft_apply() (or kept
                                   * while forwarded, to forward it again after a refusal) */
        bool submitted;           /* raft_apply() accepted it: libraft holds `req` until its callback */
        bool forwarded;           /* sent to the leader; answered when we apply the entry */
        bool internal;            /* ours (start-up writes, TTL sync), not a client's */
        bool raft_done;
        bool answered;
};

/* A proposal a follower forwarded to us (the leader), while libraft holds it. */
typedef struct ForwardedApply {
        struct raft_apply req;
        Server *server;
        struct ForwardedApply *prev, *next;
} ForwardedApply;

/* An --initial-cluster member, for the raftAttributes the leader writes. */
typedef struct InitialMember {
        uint64_t id;
        char *raft_attributes_json;
} InitialMember;

struct Server {
        sd_event *event;
        Persist *persist;
        RaftIo *rio;
        PeerTransport *peers;
        char *address;            /* our Raft address: the first of our peer URLs */
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
        InitialMember *initial_members;
        size_t n_initial_members;
        uint64_t next_request_id;
        unsigned n_internal;      /* internal proposals not yet answered */
        ForwardedApply *forwarded_applies;
        sd_event_source *retry_source;    /* forwarding retry and attribute publication */
        bool attributes_published, attributes_in_flight;
        bool was_member;          /* we were in the Raft configuration at some point */
        bool removed;
        sd_event_source *exit_source;
        ServerRemovedCallback removed_cb;
        void *removed_userdata;

        /* Membership */
        bool strict_reconfig_check;
        MemberOp *member_ops;
        bool change_in_flight;    /* a raft_add/remove/assign is under way */
        struct raft_change promote_change;
        uint64_t promote_retry_usec;

        /* Stats */
        FollowerStats *followers;
        size_t n_followers;
        uint64_t recv_appends, send_appends;
        bool force_new_cluster;   /* remove the other members from the store once we lead */
        Store **zombie_stores;    /* replaced by a snapshot install while they had watchers */
        size_t n_zombie_stores;

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
        uint64_t known_leader;

        /* TTL */
        sd_event_source *sync_source;
        bool sync_in_flight;
        uint64_t last_sync_usec;  /* wall clock of the last SYNC proposed */

        bool closing;
};

static const ClusterMember *config_self(const Config *c, uint64_t id);

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
static void member_key_applied(Server *s, const StoreRequest *req);

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

static int load_record(char kind, const void *key, size_t key_len, const void *value, size_t value_len,
                       void *userdata) {
        Store *st = userdata;

        if (kind == 'n') {
                char k[key_len + 1];

                memcpy(k, key, key_len);
                k[key_len] = 0;
                return store_load_node(st, k, value, value_len);
        }
        return store_load_event(st, codec_get_be64(key), value, value_len);
}

static void server_set_store_sink(Server *s);

/* A snapshot of the leader (we were too far behind, or joined empty): its state replaces ours. The
 * records are in RocksDB already (raft-io wrote them with the snapshot record); here the in-memory
 * store is rebuilt. Watchers of the old store keep it alive until they are gone. */
static int fsm_install(Server *s, struct raft_buffer *buf) {
        Store *st = NULL;
        uint64_t applied = 0, etcd_index = 0;
        int r;

        r = store_new(&st);
        if (r < 0)
                return RAFT_NOMEM;
        r = raft_io_snapshot_export_parse(buf->base, buf->len, &applied, &etcd_index, load_record, st);
        if (r >= 0)
                r = store_load_finish(st, etcd_index);
        if (r < 0) {
                log_error_errno(r, "Failed to load the snapshot of the leader: %m");
                store_free(st);
                return RAFT_CORRUPT;
        }
        if (store_n_watchers(s->store) > 0) {
                Store **z = reallocarray(s->zombie_stores, s->n_zombie_stores + 1, sizeof(Store *));

                if (!z) {
                        store_free(st);
                        return RAFT_NOMEM;
                }
                s->zombie_stores = z;
                s->zombie_stores[s->n_zombie_stores++] = s->store;
                store_set_sink(s->store, &(StoreSink) {});
        } else
                store_free(s->store);
        s->store = st;
        server_set_store_sink(s);
        s->applied_index = s->skip_until = applied;
        s->applied_dirty = false;
        log_info("Installed the leader's snapshot: applied Raft index %" PRIu64 ", etcd index %" PRIu64 ".",
                 applied, etcd_index);
        raft_free(buf->base);
        return 0;
}

static void zombies_reap(Server *s) {
        for (size_t i = 0; i < s->n_zombie_stores; )
                if (store_n_watchers(s->zombie_stores[i]) == 0) {
                        store_free(s->zombie_stores[i]);
                        s->zombie_stores[i] = s->zombie_stores[--s->n_zombie_stores];
                } else
                        i++;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf) {
        Server *s = fsm->data;
        uint64_t index;

        if (buf->len >= RAFT_IO_SNAPSHOT_EXPORT_HEADER && memcmp(buf->base, RAFT_IO_SNAPSHOT_EXPORT_MAGIC, 8) == 0)
                return fsm_install(s, buf);

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

static int send_opaque(Server *s, uint64_t to, const char *address, uint8_t kind, uint64_t id,
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
                log_warning("Member %" PRIx64 " forwarded a malformed proposal, dropping it.", from);
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
static void member_ops_check(Server *s);

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

static void retry_schedule(Server *s, uint64_t usec) {
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

static void handle_member_req(Server *s, uint64_t from, uint64_t id, const uint8_t *p, size_t size);
static void handle_member_res(Server *s, uint64_t id, const uint8_t *p, size_t size);

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
        default:
                break;
        }
bad:
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
static int propose_internal(Server *s, const StoreRequest *req, bool front, ServerProposalCallback cb) {
        ServerProposal *p;
        /* A static label: req->path may be a buffer of the caller's. */
        const char *what = req->method == STORE_METHOD_SYNC ? "TTL sync" :
                           strncmp(req->path, STORE_MEMBERS_PREFIX "/", strlen(STORE_MEMBERS_PREFIX "/")) == 0 ? "member attributes" :
                           streq(req->path, "/0/version") ? "/0/version" : "an internal key";
        int r;

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
static char *raft_attributes_json_new(const EtcdUrlList *l) {
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

static bool conf_has(const struct raft_configuration *c, uint64_t id) {
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

/* ---- membership ---- */

static bool member_is_removed(Server *s, uint64_t id);
static void server_removed(Server *s);

static const int member_errors[] = { 0, -EEXIST, -EADDRINUSE, -ENOENT, -EIDRM, -EPERM, -ETIMEDOUT, -EBUSY, -EIO };

static uint8_t member_error_encode(int e) {
        for (size_t i = 0; i < ELEMENTSOF(member_errors); i++)
                if (member_errors[i] == e)
                        return (uint8_t) i;
        return 8;
}

static void member_op_free(MemberOp *op) {
        if (!op)
                return;
        for (size_t i = 0; i < op->n_urls; i++)
                free(op->urls[i]);
        free(op->urls);
        free(op);
}

static void member_op_unlink(Server *s, MemberOp *op) {
        for (MemberOp **i = &s->member_ops; *i; i = &(*i)->next)
                if (*i == op) {
                        *i = op->next;
                        break;
                }
        op->next = NULL;
}

/* Answers the caller (or the follower that forwarded it) and frees the op. */
/* Journal fields of this member for key events: `journalctl -u etcd2 ETCD_MEMBER_ID=<id>`. */
typedef struct LogIds {
        char member[40], cluster[40], term[40];
} LogIds;

static const char *const *log_ids(const Server *s, LogIds *ids, const char *event, const char **fields) {
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

static void member_op_finish(MemberOp *op, int error) {
        Server *s = op->server;

        member_op_unlink(s, op);
        if (error == 0 && (op->kind == MEMBER_OP_ADD || op->kind == MEMBER_OP_REMOVE)) {
                const char *f[5];
                LogIds ids;

                log_struct(LOG_NOTICE, log_ids(s, &ids, op->kind == MEMBER_OP_ADD ? "ETCD_EVENT=member-added" :
                                               "ETCD_EVENT=member-removed", f),
                           "Member %" PRIx64 " %s cluster %" PRIx64 ".", op->member_id,
                           op->kind == MEMBER_OP_ADD ? "added to" : "removed from", s->cluster_id);
        }
        if (op->origin != 0) {
                uint8_t buf[1 + 10];
                size_t n;

                buf[0] = member_error_encode(error);
                n = 1 + codec_varint_put(buf + 1, op->member_id);
                (void) send_opaque(s, op->origin, NULL, MSG_MEMBER_RES, op->request_id, buf, n);
        } else if (op->cb)
                op->cb(error, op->member_id, op->userdata);
        member_op_free(op);
}

static int str_cmp(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int member_op_new(Server *s, MemberOpKind kind, uint64_t member_id, char *const *urls, size_t n,
                         MemberOp **ret) {
        MemberOp *op = calloc(1, sizeof(MemberOp));

        if (!op)
                return -ENOMEM;
        op->server = s;
        op->kind = kind;
        op->member_id = member_id;
        op->deadline_usec = now_monotonic_usec() + s->proposal_timeout_usec;
        if (n > 0) {
                op->urls = calloc(n, sizeof(char *));
                if (!op->urls) {
                        free(op);
                        return -ENOMEM;
                }
                for (size_t i = 0; i < n; i++) {
                        op->urls[i] = strdup(urls[i]);
                        if (!op->urls[i]) {
                                op->n_urls = i;
                                member_op_free(op);
                                return -ENOMEM;
                        }
                }
                op->n_urls = n;
                qsort(op->urls, n, sizeof(char *), str_cmp);
        }
        *ret = op;
        return 0;
}

static bool member_exists(Server *s, uint64_t id) {
        char path[96];

        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64, id);
        return conf_has(&s->raft.configuration, id) || store_lookup(s->store, path);
}

static bool member_started(Server *s, uint64_t id) {
        char path[96];

        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/attributes", id);
        return store_lookup(s->store, path) != NULL;
}

typedef struct UrlCheck {
        Server *server;
        char *const *urls;
        size_t n;
        uint64_t except;
        bool in_use;
} UrlCheck;

static int url_check_member(const StoreNode *child, void *userdata) {
        UrlCheck *u = userdata;
        const char *key = store_node_key(child), *base = strrchr(key, '/');
        char path[160];
        const StoreNode *ra;
        json_object *j, *arr;

        if (!base || strtoull(base + 1, NULL, 16) == u->except)
                return 0;
        (void) snprintf(path, sizeof(path), "%s/raftAttributes", key);
        ra = store_lookup(u->server->store, path);
        if (!ra)
                return 0;
        j = json_tokener_parse(strempty(store_node_value(ra, NULL)));
        if (j && json_object_object_get_ex(j, "peerURLs", &arr) && json_object_is_type(arr, json_type_array))
                for (size_t a = 0; a < json_object_array_length(arr); a++) {
                        const char *url = json_object_get_string(json_object_array_get_idx(arr, a));

                        for (size_t k = 0; url && k < u->n; k++)
                                if (streq(url, u->urls[k]))
                                        u->in_use = true;
                }
        json_object_put(j);
        return 0;
}

/* Is any of `urls` a peer URL of a member other than `except` (its raftAttributes, or its Raft address)? */
static bool urls_in_use(Server *s, char *const *urls, size_t n, uint64_t except) {
        const StoreNode *members = store_lookup(s->store, STORE_MEMBERS_PREFIX);
        UrlCheck u = { s, urls, n, except, false };

        for (unsigned i = 0; i < s->raft.configuration.n; i++)
                if (s->raft.configuration.servers[i].id != except)
                        for (size_t k = 0; k < n; k++)
                                if (streq(s->raft.configuration.servers[i].address, urls[k]))
                                        return true;
        if (members)
                (void) store_node_foreach_child(members, url_check_member, &u);
        return u.in_use;
}

static void member_store_cb(StoreResult *res, void *userdata);

static int member_propose(MemberOp *op, const StoreRequest *req);
static void member_change_cb(struct raft_change *req, int status);

static int member_put_raft_attributes(MemberOp *op, int prev_exist) {
        _cleanup_(freep) EtcdUrl *eu = NULL;
        _cleanup_(freep) char *json = NULL;
        EtcdUrlList l;
        char path[128];

        eu = calloc(op->n_urls, sizeof(EtcdUrl));
        if (!eu)
                return -ENOMEM;
        for (size_t i = 0; i < op->n_urls; i++)
                eu[i].str = op->urls[i];
        l = (EtcdUrlList) { eu, op->n_urls };
        json = raft_attributes_json_new(&l);
        if (!json)
                return -ENOMEM;
        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/raftAttributes", op->member_id);
        return member_propose(op, &(StoreRequest) {
                .method = STORE_METHOD_PUT, .path = path, .value = json, .value_len = strlen(json),
                .prev_exist = prev_exist,
        });
}

/* The next step of a change on the leader:
 *   add:    raft_add (a spare) -> standby (gets the log, no vote; promoted to voter by
 *           promote_spares() once it talks to us) -> raftAttributes -> done
 *   remove: delete /0/members/<id> -> /0/removed_members/<id> -> raft_remove -> done (the store
 *           first, so that a removed leader still writes them and every member learns of it)
 *   update: raftAttributes -> done */
static void member_op_step(MemberOp *op) {
        Server *s = op->server;
        char path[128];
        int r = 0;

        switch (op->kind) {
        case MEMBER_OP_ADD:
                if (op->stage == 0) {
                        if (s->change_in_flight)
                                return member_op_finish(op, -EBUSY);
                        op->change.data = op;
                        r = raft_add(&s->raft, &op->change, op->member_id, op->urls[0], member_change_cb);
                        if (r != 0)
                                goto raft_fail;
                        s->change_in_flight = true;
                } else if (op->stage == 1) {
                        /* A standby gets the log but has no vote (a learner) until promoted. */
                        op->change.data = op;
                        r = raft_assign(&s->raft, &op->change, op->member_id, RAFT_STANDBY, member_change_cb);
                        if (r != 0)
                                goto raft_fail;
                        s->change_in_flight = true;
                } else if (op->stage == 2)
                        r = member_put_raft_attributes(op, 0);
                else
                        return member_op_finish(op, 0);
                break;
        case MEMBER_OP_REMOVE:
                if (op->stage == 0) {
                        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64, op->member_id);
                        r = member_propose(op, &(StoreRequest) {
                                .method = STORE_METHOD_DELETE, .path = path, .dir = true, .recursive = true,
                                .prev_exist = -1,
                        });
                } else if (op->stage == 1) {
                        (void) snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, op->member_id);
                        r = member_propose(op, &(StoreRequest) {
                                .method = STORE_METHOD_PUT, .path = path, .value = "", .value_len = 0, .prev_exist = -1,
                        });
                } else if (op->stage == 2 && conf_has(&s->raft.configuration, op->member_id)) {
                        if (s->change_in_flight) {
                                /* A promotion is finishing: member_ops_check() tries again. */
                                op->waiting_change = true;
                                return;
                        }
                        op->change.data = op;
                        r = raft_remove(&s->raft, &op->change, op->member_id, member_change_cb);
                        if (r != 0)
                                goto raft_fail;
                        s->change_in_flight = true;
                } else
                        return member_op_finish(op, 0);
                break;
        case MEMBER_OP_UPDATE:
                if (op->stage == 0)
                        r = member_put_raft_attributes(op, -1);
                else
                        return member_op_finish(op, 0);
                break;
        }
        if (r < 0)
                member_op_finish(op, -EIO);
        return;

raft_fail:
        log_warning("Membership change for %" PRIx64 " refused by raft: %s", op->member_id, raft_strerror(r));
        member_op_finish(op, r == RAFT_CANTCHANGE ? -EBUSY : -ETIMEDOUT);
}

static void member_change_cb(struct raft_change *req, int status) {
        MemberOp *op = req->data;

        op->server->change_in_flight = false;
        if (status != 0 && op->kind == MEMBER_OP_REMOVE && op->member_id == op->server->member_id) {
                /* A leader that removes itself steps down before it sees the change through (alone, it
                 * cannot); the store says removed already, and it is leaving anyway. */
                log_info("Removed ourselves (%s).", raft_strerror(status));
                member_op_finish(op, 0);
                return;
        }
        if (status != 0) {
                log_warning("Membership change for %" PRIx64 " failed: %s", op->member_id, raft_strerror(status));
                member_op_finish(op, -ETIMEDOUT);
                return;
        }
        op->stage++;
        member_op_step(op);
}

static int member_propose(MemberOp *op, const StoreRequest *req) {
        Server *s = op->server;
        ServerProposal *p;
        int r;

        r = propose_internal(s, req, false, member_store_cb);
        if (r < 0)
                return r;
        /* propose_internal() appends to the pending list: the last one is ours. */
        p = s->pending.tail;
        if (p && p->cb == member_store_cb)
                p->userdata = op;
        return 0;
}

static void member_store_cb(StoreResult *res, void *userdata) {
        MemberOp *op = userdata;

        if (res->error == ETCD_ERROR_RAFT_INTERNAL)
                return member_op_finish(op, -ETIMEDOUT);
        /* The delete of a member that has no keys (yet) is fine; other refusals are not. */
        if (res->error != ETCD_OK && !(op->kind == MEMBER_OP_REMOVE && op->stage == 0))
                return member_op_finish(op, res->error == ETCD_ERROR_NODE_EXIST ? -EEXIST : -EIO);
        op->stage++;
        member_op_step(op);
}

static unsigned n_started_members(Server *s, uint64_t except) {
        unsigned n = 0;

        for (unsigned i = 0; i < s->raft.configuration.n; i++) {
                uint64_t id = s->raft.configuration.servers[i].id;

                if (id != except && (id == s->member_id || member_started(s, id)))
                        n++;
        }
        return n;
}

/* On the leader: validate and start the change. Finishes (and frees) the op on refusal. */
static void member_op_execute(MemberOp *op) {
        Server *s = op->server;
        unsigned n = s->raft.configuration.n;

        op->executing = true;
        op->next = s->member_ops;
        s->member_ops = op;

        switch (op->kind) {
        case MEMBER_OP_ADD:
                if (member_is_removed(s, op->member_id))
                        return member_op_finish(op, -EIDRM);
                if (member_exists(s, op->member_id))
                        return member_op_finish(op, -EEXIST);
                if (urls_in_use(s, op->urls, op->n_urls, 0))
                        return member_op_finish(op, -EADDRINUSE);
                if (s->strict_reconfig_check) {
                        unsigned started = n_started_members(s, 0);

                        /* etcd2's isReadyToAddNewMember: one started member of two is fine. */
                        if (!(n == 1 && started == 1) && started < (n + 1) / 2 + 1)
                                return member_op_finish(op, -EPERM);
                }
                return member_op_step(op);
        case MEMBER_OP_REMOVE:
                if (member_is_removed(s, op->member_id))
                        return member_op_finish(op, -EIDRM);
                if (!member_exists(s, op->member_id))
                        return member_op_finish(op, -ENOENT);
                if (s->strict_reconfig_check) {
                        unsigned started = n_started_members(s, op->member_id);
                        unsigned left = conf_has(&s->raft.configuration, op->member_id) ? n - 1 : n;

                        if (started < left / 2 + 1)
                                return member_op_finish(op, -EPERM);
                }
                return member_op_step(op);
        case MEMBER_OP_UPDATE:
                if (member_is_removed(s, op->member_id))
                        return member_op_finish(op, -EIDRM);
                if (!member_exists(s, op->member_id))
                        return member_op_finish(op, -ENOENT);
                if (urls_in_use(s, op->urls, op->n_urls, op->member_id))
                        return member_op_finish(op, -EADDRINUSE);
                return member_op_step(op);
        default:
                return member_op_finish(op, -EINVAL);
        }
}

static int member_op_forward(Server *s, MemberOp *op) {
        raft_id leader = 0;
        const char *address = NULL;
        _cleanup_(freep) uint8_t *buf = NULL;
        size_t size = 1 + 10 + 10, n;

        raft_leader(&s->raft, &leader, &address);
        if (leader == 0 || leader == s->member_id || !address)
                return -EAGAIN;
        for (size_t i = 0; i < op->n_urls; i++)
                size += 10 + strlen(op->urls[i]);
        buf = malloc(size);
        if (!buf)
                return -ENOMEM;
        buf[0] = (uint8_t) op->kind;
        n = 1 + codec_varint_put(buf + 1, op->member_id);
        n += codec_varint_put(buf + n, op->n_urls);
        for (size_t i = 0; i < op->n_urls; i++) {
                size_t l = strlen(op->urls[i]);

                n += codec_varint_put(buf + n, l);
                memcpy(buf + n, op->urls[i], l);
                n += l;
        }
        return send_opaque(s, leader, address, MSG_MEMBER_REQ, op->request_id, buf, n);
}

/* Runs a change here if we lead, else sends it to the leader (or waits for one). */
static int member_op_submit(Server *s, MemberOp *op) {
        op->request_id = ++s->next_request_id;
        if (s->leader && s->ready) {
                member_op_execute(op);
                return 0;
        }
        op->next = s->member_ops;
        s->member_ops = op;
        if (member_op_forward(s, op) >= 0)
                op->forwarded = true;
        retry_schedule(s, op->deadline_usec - now_monotonic_usec());
        return 0;
}

/* Follower side: forward waiting ops, time out the old ones. */
/* Does our own store already show the change the leader reported done? etcd2 answers a membership
 * change only once the answering member applied it, so that e.g. `etcdctl member add` followed by a
 * member list on the same member sees the new member. */
static bool member_op_locally_visible(Server *s, const MemberOp *op) {
        char path[96];

        switch (op->kind) {
        case MEMBER_OP_ADD:
                (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/raftAttributes", op->member_id);
                return store_lookup(s->store, path) != NULL;
        case MEMBER_OP_REMOVE:
                (void) snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, op->member_id);
                return store_lookup(s->store, path) != NULL;
        default:
                return true;
        }
}

static void member_ops_check(Server *s) {
        uint64_t now = now_monotonic_usec();

        for (MemberOp *op = s->member_ops, *next; op; op = next) {
                next = op->next;
                if (op->awaiting_local) {
                        /* the leader committed it; a bounded wait for our own apply */
                        if (member_op_locally_visible(s, op) || op->deadline_usec <= now) {
                                member_op_finish(op, 0);
                                return;   /* the list may have changed */
                        }
                        continue;
                }
                if (op->executing) {
                        if (op->waiting_change && !s->change_in_flight && s->leader) {
                                op->waiting_change = false;
                                member_op_step(op);
                                return;   /* the list may have changed */
                        }
                        continue;
                }
                if (op->deadline_usec <= now) {
                        member_op_finish(op, -ETIMEDOUT);
                        continue;
                }
                if (!op->forwarded && s->leader && s->ready) {
                        /* We lead now: run it here. */
                        member_op_unlink(s, op);
                        member_op_execute(op);
                        return;   /* the list may have changed */
                }
                if (!op->forwarded && member_op_forward(s, op) >= 0)
                        op->forwarded = true;
        }
}

static void handle_member_req(Server *s, uint64_t from, uint64_t id, const uint8_t *p, size_t size) {
        MemberOp *op;
        uint64_t member_id, n;
        size_t k, off = 1;
        char **urls = NULL;
        int r = -EBADMSG;

        if (size < 1 || p[0] < MEMBER_OP_ADD || p[0] > MEMBER_OP_UPDATE)
                goto bad;
        k = codec_varint_get(p + off, size - off, &member_id);
        if (k == 0)
                goto bad;
        off += k;
        k = codec_varint_get(p + off, size - off, &n);
        if (k == 0 || n > 64)
                goto bad;
        off += k;
        urls = calloc(n + 1, sizeof(char *));
        if (!urls)
                return;
        for (uint64_t i = 0; i < n; i++) {
                uint64_t l;

                k = codec_varint_get(p + off, size - off, &l);
                if (k == 0 || l > size - off - k)
                        goto bad;
                off += k;
                urls[i] = strndup((const char *) p + off, l);
                if (!urls[i])
                        goto bad;
                off += l;
        }
        if (off != size)
                goto bad;
        r = member_op_new(s, (MemberOpKind) p[0], member_id, urls, n, &op);
        if (r < 0)
                goto bad;
        op->origin = from;
        op->request_id = id;
        if (!s->leader || !s->ready) {
                uint8_t buf[1 + 10];

                buf[0] = member_error_encode(-ETIMEDOUT);
                k = 1 + codec_varint_put(buf + 1, member_id);
                (void) send_opaque(s, from, NULL, MSG_MEMBER_RES, id, buf, k);
                member_op_free(op);
        } else
                member_op_execute(op);
        r = 0;
bad:
        if (r == -EBADMSG)
                log_warning("Malformed membership request from member %" PRIx64 ", ignoring it.", from);
        if (urls)
                for (size_t i = 0; urls[i]; i++)
                        free(urls[i]);
        free(urls);
}

static void handle_member_res(Server *s, uint64_t id, const uint8_t *p, size_t size) {
        uint64_t member_id;

        if (size < 2 || p[0] >= ELEMENTSOF(member_errors) || codec_varint_get(p + 1, size - 1, &member_id) == 0)
                return;
        for (MemberOp *op = s->member_ops; op; op = op->next)
                if (op->request_id == id && op->origin == 0 && !op->executing && !op->awaiting_local) {
                        op->member_id = member_id;
                        if (member_errors[p[0]] == 0 && !member_op_locally_visible(s, op)) {
                                op->awaiting_local = true;
                                op->deadline_usec = now_monotonic_usec() + 2 * USEC_PER_SEC;
                                retry_schedule(s, 10 * USEC_PER_MSEC);
                                return;
                        }
                        member_op_finish(op, member_errors[p[0]]);
                        return;
                }
}

int server_member_add(Server *s, char *const *peer_urls, size_t n, ServerMemberCallback cb, void *userdata) {
        MemberOp *op;
        uint64_t id;
        int r;

        if (s->closing)
                return -ESHUTDOWN;
        if (n == 0)
                return -EINVAL;
        r = member_op_new(s, MEMBER_OP_ADD, 0, peer_urls, n, &op);
        if (r < 0)
                return r;
        id = etcd_member_id(op->urls, op->n_urls, "", (uint64_t) (now_realtime_usec() / USEC_PER_SEC));
        op->member_id = id;
        op->cb = cb;
        op->userdata = userdata;
        return member_op_submit(s, op);
}

int server_member_remove(Server *s, uint64_t id, ServerMemberCallback cb, void *userdata) {
        MemberOp *op;
        int r;

        if (s->closing)
                return -ESHUTDOWN;
        r = member_op_new(s, MEMBER_OP_REMOVE, id, NULL, 0, &op);
        if (r < 0)
                return r;
        op->cb = cb;
        op->userdata = userdata;
        return member_op_submit(s, op);
}

int server_member_update(Server *s, uint64_t id, char *const *peer_urls, size_t n, ServerMemberCallback cb,
                         void *userdata) {
        MemberOp *op;
        int r;

        if (s->closing)
                return -ESHUTDOWN;
        if (n == 0)
                return -EINVAL;
        r = member_op_new(s, MEMBER_OP_UPDATE, id, peer_urls, n, &op);
        if (r < 0)
                return r;
        op->cb = cb;
        op->userdata = userdata;
        return member_op_submit(s, op);
}

void server_member_cancel(Server *s, void *userdata) {
        for (MemberOp *op = s->member_ops; op; op = op->next)
                if (op->origin == 0 && op->userdata == userdata)
                        op->cb = NULL;
}

/* Leader: promote members added as spares to voters once they talk to us (libraft catches them up
 * first). One change at a time. */
static void promote_cb(struct raft_change *req, int status) {
        Server *s = req->data;

        s->change_in_flight = false;
        if (status != 0) {
                log_info("Promotion to voter failed (%s), retrying.", raft_strerror(status));
                s->promote_retry_usec = now_monotonic_usec() + USEC_PER_SEC;
        }
}

static void promote_spares(Server *s) {
        if (!s->leader || !s->ready || s->change_in_flight || s->closing || now_monotonic_usec() < s->promote_retry_usec)
                return;
        for (unsigned i = 0; i < s->raft.configuration.n; i++) {
                const struct raft_server *sv = &s->raft.configuration.servers[i];
                int r;

                if (sv->role == RAFT_VOTER || !peer_transport_has_inbound(s->peers, sv->id))
                        continue;
                s->promote_change.data = s;
                r = raft_assign(&s->raft, &s->promote_change, sv->id, RAFT_VOTER, promote_cb);
                if (r == 0) {
                        s->change_in_flight = true;
                        log_info("Promoting member %" PRIx64 " to voter.", (uint64_t) sv->id);
                } else
                        s->promote_retry_usec = now_monotonic_usec() + USEC_PER_SEC;
                return;
        }
}

/* Every member, when it applies a write to the member keys: follow peer URL updates, forget removed
 * members, and notice our own removal. */
static void member_key_applied(Server *s, const StoreRequest *req) {
        const char *p = req->path, *rest;
        uint64_t id;

        if (strncmp(p, "/0/removed_members/", 19) == 0) {
                id = strtoull(p + 19, NULL, 16);
                if (id == s->member_id)
                        server_removed(s);
                else if (id != 0)
                        peer_transport_drop(s->peers, id);
                return;
        }
        if (strncmp(p, STORE_MEMBERS_PREFIX "/", strlen(STORE_MEMBERS_PREFIX "/")) != 0 || req->method != STORE_METHOD_PUT)
                return;
        rest = p + strlen(STORE_MEMBERS_PREFIX "/");
        id = strtoull(rest, NULL, 16);
        if (id == 0 || id == s->member_id || !strstr(rest, "/raftAttributes") || !req->value)
                return;
        {
                json_object *j = json_tokener_parse(req->value), *arr;
                const char *url = NULL;

                if (j && json_object_object_get_ex(j, "peerURLs", &arr) && json_object_is_type(arr, json_type_array) &&
                    json_object_array_length(arr) > 0)
                        url = json_object_get_string(json_object_array_get_idx(arr, 0));
                if (url)
                        (void) peer_transport_set_address(s->peers, id, url);
                json_object_put(j);
        }
}

/* ---- removal ---- */

static int on_removed_exit(sd_event_source *source, uint64_t usec, void *userdata) {
        Server *s = userdata;

        if (s->removed_cb)
                s->removed_cb(s, s->removed_userdata);
        else
                (void) sd_event_exit(s->event, 0);
        return 0;
}

static void server_removed(Server *s) {
        if (s->removed)
                return;
        s->removed = true;
        log_error("The member has been permanently removed from the cluster; exiting.");
        if (sd_event_add_time_relative(s->event, &s->exit_source, CLOCK_MONOTONIC, SERVER_REMOVED_EXIT_USEC,
                                       USEC_PER_MSEC, on_removed_exit, s) < 0)
                (void) on_removed_exit(NULL, 0, s);
}

bool server_is_removed(Server *s) {
        return s->removed;
}

void server_set_removed_callback(Server *s, ServerRemovedCallback cb, void *userdata) {
        s->removed_cb = cb;
        s->removed_userdata = userdata;
}

/* ---- transport ---- */

static bool member_is_removed(Server *s, uint64_t id) {
        char path[96];

        (void) snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, id);
        return store_lookup(s->store, path) != NULL;
}

static int on_peer_check(PeerTransport *t, uint64_t from, void *userdata) {
        Server *s = userdata;
        char path[96];

        if (member_is_removed(s, from))
                return 410;
        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64, from);
        if (s->raft.configuration.n > 0 && !conf_has(&s->raft.configuration, from) && !store_lookup(s->store, path))
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
        raft_io_deliver(s->rio, peer_frame_hand_over(f));
}

static int on_raft_send(RaftIo *rio, struct raft_io_send *req, const struct raft_message *m, void *userdata) {
        Server *s = userdata;
        int r;

        if (m->server_id == s->member_id)
                return -EINVAL;
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

static void refuse_unsent(uint64_t tag, void *userdata) {
        handle_nack(userdata, tag);
}

/* Proposals forwarded to a former leader whose frames never left our queue certainly did not reach
 * it: send them to the new leader (the others wait for their entry or time out, as with etcd2). */
static void leader_changed(Server *s, uint64_t old) {
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

static void server_on_io_event(RaftIo *rio, void *userdata) {
        Server *s = userdata;

        server_check_state(s);
        submit_waiting(s);
        if (s->member_ops)
                member_ops_check(s);
        promote_spares(s);
        if (s->n_zombie_stores > 0)
                zombies_reap(s);
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

static size_t curl_collect(char *ptr, size_t size, size_t n, void *userdata) {
        FILE *f = userdata;

        return fwrite(ptr, size, n, f);
}

static size_t curl_header(char *ptr, size_t size, size_t n, void *userdata) {
        uint64_t *cluster = userdata;
        size_t len = size * n;
        const char *name = "X-Etcd-Cluster-ID:";

        if (len > strlen(name) && strncasecmp(ptr, name, strlen(name)) == 0) {
                char buf[64];
                size_t l = MIN(len - strlen(name), sizeof(buf) - 1);

                memcpy(buf, ptr + strlen(name), l);
                buf[l] = 0;
                *cluster = strtoull(buf, NULL, 16);
        }
        return len;
}

static bool url_sets_equal(const EtcdUrlList *a, json_object *urls) {
        size_t n = json_object_is_type(urls, json_type_array) ? json_object_array_length(urls) : 0;

        if (n != a->n)
                return false;
        for (size_t i = 0; i < a->n; i++) {
                bool found = false;

                for (size_t j = 0; j < n && !found; j++) {
                        const char *u = json_object_get_string(json_object_array_get_idx(urls, j));

                        found = u && streq(u, a->urls[i].str);
                }
                if (!found)
                        return false;
        }
        return true;
}

/* GET <peer URL>/members: the JSON array and the X-Etcd-Cluster-ID header. 0, or < 0 (logged at debug). */
static int fetch_members(const char *peer_url, long timeout_ms, json_object **ret, uint64_t *ret_cluster) {
        _cleanup_(freep) char *body = NULL, *url = NULL;
        size_t body_len = 0;
        uint64_t cluster = 0;
        json_object *j;
        CURL *curl;
        FILE *f;
        long code = 0;
        CURLcode cr;

        if (asprintf(&url, "%s/members", peer_url) < 0)
                return -ENOMEM;
        f = open_memstream(&body, &body_len);
        if (!f)
                return -ENOMEM;
        curl = curl_easy_init();
        if (!curl) {
                fclose(f);
                return -ENOMEM;
        }
        (void) curl_easy_setopt(curl, CURLOPT_URL, url);
        (void) curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        (void) curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
        (void) curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, curl_collect);
        (void) curl_easy_setopt(curl, CURLOPT_WRITEDATA, f);
        (void) curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, curl_header);
        (void) curl_easy_setopt(curl, CURLOPT_HEADERDATA, &cluster);
        cr = curl_easy_perform(curl);
        (void) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(curl);
        fclose(f);
        if (cr != CURLE_OK || code != 200 || !body) {
                log_debug("Could not get the member list from %s: %s", url,
                          cr != CURLE_OK ? curl_easy_strerror(cr) : "bad status");
                return -EHOSTUNREACH;
        }
        j = json_tokener_parse(body);
        if (!j || !json_object_is_type(j, json_type_array)) {
                json_object_put(j);
                log_warning("Could not parse the member list from %s.", url);
                return -EBADMSG;
        }
        *ret = j;
        *ret_cluster = cluster;
        return 0;
}

/* --initial-cluster-state existing: ask the other members (GET <peer>/members) for the cluster; our
 * ID and the cluster ID come from there, not from hashing (etcd2's GetClusterFromRemotePeers). */
static int fetch_existing_cluster(const Config *c, uint64_t *ret_member_id, uint64_t *ret_cluster_id) {
        const ClusterMember *self = NULL;

        for (size_t i = 0; i < c->n_initial_members; i++)
                if (streq(strempty(c->initial_members[i].name), strempty(c->name)))
                        self = &c->initial_members[i];
        if (!self)
                return log_error_errno(-EINVAL, "Couldn't find local name \"%s\" in the initial cluster configuration.",
                                       strempty(c->name));

        for (size_t i = 0; i < c->n_initial_members; i++) {
                const ClusterMember *m = &c->initial_members[i];

                if (m == self)
                        continue;
                for (size_t u = 0; u < m->peer_urls.n; u++) {
                        json_object *j = NULL;
                        uint64_t cluster = 0;

                        if (fetch_members(m->peer_urls.urls[u].str, 10000, &j, &cluster) < 0)
                                continue;
                        if (json_object_array_length(j) != c->n_initial_members) {
                                json_object_put(j);
                                return log_error_errno(-EINVAL, "Error validating peerURLs: member count is unequal.");
                        }
                        for (size_t k = 0; k < json_object_array_length(j); k++) {
                                json_object *e = json_object_array_get_idx(j, k), *id, *urls;

                                if (!json_object_object_get_ex(e, "id", &id) ||
                                    !json_object_object_get_ex(e, "peerURLs", &urls))
                                        continue;
                                if (url_sets_equal(&self->peer_urls, urls)) {
                                        *ret_member_id = json_object_get_uint64(id);
                                        *ret_cluster_id = cluster;
                                        json_object_put(j);
                                        if (*ret_member_id == 0 || cluster == 0)
                                                return log_error_errno(-EINVAL, "Got no member or cluster ID from %s.",
                                                                       m->peer_urls.urls[u].str);
                                        log_info("Joining existing cluster %" PRIx64 " as member %" PRIx64 ".",
                                                 cluster, *ret_member_id);
                                        return 0;
                                }
                        }
                        json_object_put(j);
                        return log_error_errno(-EINVAL, "Error validating peerURLs: unmatched member while checking PeerURLs.");
                }
        }
        return log_error_errno(-EHOSTUNREACH, "Cannot fetch cluster info from peer URLs: could not retrieve cluster "
                               "information from the given URLs.");
}

/* --initial-cluster-state new on an empty data dir: if the other members already know us with client
 * URLs, this member ran before and lost its data; refuse (etcd2's isMemberBootstrapped). */
static int check_not_bootstrapped(const Config *c) {
        for (size_t i = 0; i < c->n_initial_members; i++) {
                const ClusterMember *m = &c->initial_members[i];

                if (m->id == c->member_id)
                        continue;
                for (size_t u = 0; u < m->peer_urls.n; u++) {
                        json_object *j = NULL;
                        uint64_t cluster = 0;

                        if (fetch_members(m->peer_urls.urls[u].str, 1000, &j, &cluster) < 0)
                                continue;
                        for (size_t k = 0; k < json_object_array_length(j); k++) {
                                json_object *e = json_object_array_get_idx(j, k), *id, *curls;

                                if (json_object_object_get_ex(e, "id", &id) &&
                                    json_object_get_uint64(id) == c->member_id &&
                                    json_object_object_get_ex(e, "clientURLs", &curls) &&
                                    json_object_is_type(curls, json_type_array) && json_object_array_length(curls) > 0) {
                                        json_object_put(j);
                                        return log_error_errno(-EEXIST, "member %" PRIx64 " has already been bootstrapped",
                                                               c->member_id);
                                }
                        }
                        json_object_put(j);
                        break;
                }
        }
        return 0;
}

static char *raft_attributes_json_new(const EtcdUrlList *l);

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
        s->event = sd_event_ref(event);
        s->start_time_usec = now_realtime_usec();

        r = persist_open(config->data_dir, config->wal_dir, &s->persist);
        if (r < 0)
                return r;
        fresh = persist_is_new(s->persist);
        if (fresh) {
                uint64_t member_id = config->member_id, cluster_id = config->cluster_id;

                if (config->initial_cluster_state == CLUSTER_STATE_EXISTING) {
                        r = fetch_existing_cluster(config, &member_id, &cluster_id);
                        if (r < 0)
                                return r;
                        join = true;
                } else if (config->n_initial_members > 1 && !config->force_new_cluster) {
                        r = check_not_bootstrapped(config);
                        if (r < 0)
                                return r;
                }
                if (member_id == 0)
                        return log_error_errno(-EINVAL, "No member ID configured.");
                r = persist_meta_init(s->persist, member_id, cluster_id);
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
        r = peer_transport_new(event, s->member_id, s->cluster_id, s->address, &s->peers);
        if (r < 0)
                return r;
        peer_transport_set_handlers(s->peers, on_peer_frame, on_peer_check, on_peer_refused, s);
        raft_io_set_transport(s->rio, on_raft_send, s);
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
        raft_set_snapshot_trailing(&s->raft, (unsigned) MIN(snapshot_count, (uint64_t) SERVER_SNAPSHOT_TRAILING_MAX));
        s->proposal_timeout_usec = SERVER_BASE_TIMEOUT_USEC + 2 * election_ms * USEC_PER_MSEC;
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

        while (s->member_ops)
                member_op_finish(s->member_ops, -ETIMEDOUT);
        free(s->followers);
        while (s->forwarded_applies) {
                ForwardedApply *fa = s->forwarded_applies;

                s->forwarded_applies = fa->next;
                free(fa);
        }

        sd_event_source_disable_unref(s->timeout_source);
        sd_event_source_disable_unref(s->sync_source);
        sd_event_source_disable_unref(s->retry_source);
        sd_event_source_disable_unref(s->exit_source);
        if (s->rio)
                (void) raft_io_drain(s->rio);   /* the last applied state */
        raft_io_free(s->rio);
        peer_transport_free(s->peers);
        for (size_t i = 0; i < s->n_initial_members; i++)
                free(s->initial_members[i].raft_attributes_json);
        free(s->initial_members);
        free(s->address);
        store_free(s->store);
        for (size_t i = 0; i < s->n_zombie_stores; i++)
                store_free(s->zombie_stores[i]);
        free(s->zombie_stores);
        persist_free(s->persist);
        sd_event_unref(s->event);
        free(s->name);
        free(s->raft_attributes_json);
        free(s->attributes_json);
        free(s);
        return NULL;
}

int server_backup(Server *s, const char *dir) {
        assert(s);
        return persist_checkpoint(s->persist, dir);
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
