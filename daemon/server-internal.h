/* SPDX-License-Identifier: Apache-2.0 */
/* server-internal.h - the member's state, shared by server.c and the parts split out of it (membership.c). */
#pragma once

/*
 * Not for the HTTP side (that uses server.h): the Server struct and the few helpers of server.c
 * that the member's other files call (STYLE.md: server.* split by concern, server.c wires them).
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <raft.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "macro.h"
#include "peer.h"
#include "persist.h"
#include "raft-io.h"
#include "server.h"
#include "snapshot.h"
#include "store.h"

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
/* The outcome is unknown to the client: the entry may be in the log of other members (or in ours, if
 * the failed sync still reached the disk) and be committed by the cluster later, or be dropped. */
#define ERR_STORAGE "etcdserver: failed to persist to disk; the member is stopping"

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

/* A Backup in progress: the RocksDB checkpoint (a memtable flush plus hard links, seconds for a big
 * store on a busy disk) runs on its own thread so that the loop keeps serving raft and clients; the
 * thread's end is signalled through an eventfd watched by the loop. RocksDB allows a checkpoint
 * concurrent with writes. */
typedef struct ServerBackup {
        Server *server;
        pthread_t thread;
        int efd;
        sd_event_source *io;
        char *dir;
        int result;              /* written by the thread before it signals efd */
        ServerBackupDone done;
        void *userdata;
} ServerBackup;

struct Server {
        sd_event *event;
        Persist *persist;
        ServerBackup *backup;    /* at most one at a time */
        RaftIo *rio;
        PeerTransport *peers;
        SnapshotStreams *snapshots;
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
        uint64_t n_forged_proposals;      /* opaque frames refused (their warnings are rate-limited) */
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
        sd_event_source *reap_source;
        bool sync_in_flight;
        uint64_t last_sync_usec;  /* wall clock of the last SYNC proposed */
        bool sync_more;           /* the last SYNC applied and stopped at SERVER_SYNC_EXPIRE_MAX */

        bool closing;
};

/* Journal fields of this member for key events: `journalctl -u etcd2 ETCD_MEMBER_ID=<id>`. */
typedef struct LogIds {
        char member[40], cluster[40], term[40];
} LogIds;

static inline uint64_t now_realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static inline uint64_t now_monotonic_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* server.c */
const char *const *log_ids(const Server *s, LogIds *ids, const char *event, const char **fields);
/* Sends an opaque member-layer frame (MSG_*) with request ID `id` and `payload` to member `to`. */
int send_opaque(Server *s, uint64_t to, const char *address, uint8_t kind, uint64_t id,
                const void *payload, size_t size);
/* Proposes one of our own writes (member keys, attributes, TTL sync); `front` puts it before the
 * waiting user proposals. The callback gets the proposal's StoreResult. */
int propose_internal(Server *s, const StoreRequest *req, bool front, ServerProposalCallback cb);
bool conf_has(const struct raft_configuration *c, uint64_t id);
char *raft_attributes_json_new(const EtcdUrlList *l);
/* Runs the retry timer (forwarding, attributes, membership ops) within `usec`. */
void retry_schedule(Server *s, uint64_t usec);
