/* SPDX-License-Identifier: Apache-2.0 */
/* server.h - the member: Raft consensus (libraft + our raft_io on sd-event and RocksDB) around the store. */
#pragma once

/*
 * The one interface between the HTTP side and consensus. Every write, and every quorum read, is a
 * proposal: encoded into a Raft entry, appended (group commit: one synced RocksDB write per loop
 * iteration), committed, applied to the Store on every member, and only then answered through the
 * proposal's callback. Plain reads and watches go to server_store() directly.
 */

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-event.h>

#include "config.h"
#include "store.h"

typedef struct Server Server;
typedef struct ServerProposal ServerProposal;

/* Called exactly once per proposal that was not cancelled, from the event loop (never from inside
 * server_propose()). `res` is borrowed: take a ref on res->event to keep it. On failure res->error is
 * ETCD_ERROR_RAFT_INTERNAL with a cause such as "etcdserver: request timed out". */
typedef void (*ServerProposalCallback)(StoreResult *res, void *userdata);

typedef enum ServerRole {
        SERVER_ROLE_FOLLOWER,
        SERVER_ROLE_CANDIDATE,
        SERVER_ROLE_LEADER,
        _SERVER_ROLE_MAX,
        _SERVER_ROLE_INVALID = -22,
} ServerRole;

const char *server_role_to_string(ServerRole r); /* "StateFollower", "StateCandidate", "StateLeader" */

/* Opens (or creates and bootstraps) <data-dir>/member, loads the store, starts Raft on `event`.
 * A corrupt or foreign data dir fails with a logged, clear error (-EUCLEAN/-EINVAL/...). */
int server_new(sd_event *event, const Config *config, Server **ret);
/* Stops Raft, lets in-flight durable writes finish, closes RocksDB cleanly. Pending proposals that
 * cannot finish are answered with ETCD_ERROR_RAFT_INTERNAL. */
Server *server_free(Server *s);

Store *server_store(Server *s);

/* `req` (and the strings it points to) are copied; they need not outlive the call. */
int server_propose(Server *s, const StoreRequest *req, ServerProposalCallback cb, void *userdata,
                   ServerProposal **ret);
/* The client went away: the callback will not be called (the write still happens if committed). */
void server_proposal_cancel(ServerProposal *p);
/* Number of proposals in flight (for graceful shutdown). */
unsigned server_n_pending(Server *s);

/* State for headers, stats and the bus. */
uint64_t server_member_id(Server *s);
uint64_t server_cluster_id(Server *s);
uint64_t server_leader_id(Server *s);     /* 0 while there is no leader */
ServerRole server_role(Server *s);
uint64_t server_raft_index(Server *s);    /* last applied Raft index: X-Raft-Index */
uint64_t server_raft_term(Server *s);     /* current term: X-Raft-Term */
uint64_t server_start_time_usec(Server *s);        /* wall clock, when this process started serving */
uint64_t server_leader_start_time_usec(Server *s); /* wall clock, since when the current leader leads */

/* ---- clustering (additive, issue 3) ---- */

/* The member learnt that it was removed from the cluster (a peer answered 410, or it applied its own
 * removal). Default (no callback): sd_event_exit(event, 0) ~1 s later, so the process exits 0. */
typedef void (*ServerRemovedCallback)(Server *s, void *userdata);
void server_set_removed_callback(Server *s, ServerRemovedCallback cb, void *userdata);
bool server_is_removed(Server *s);

/* The peer transport (peer.h), for the HTTP server's `POST /raft/stream` upgrade hook:
 * peer_transport_check() decides the status, peer_transport_accept() takes the upgraded socket. */
typedef struct PeerTransport PeerTransport;
PeerTransport *server_peer_transport(Server *s);

/* Membership changes (the /v2/members endpoints). Synchronous refusals are returned directly (and the
 * callback is not called); otherwise 0, and the callback runs exactly once, from the event loop, with
 * 0 or one of these errors (etcd2's classes and their HTTP statuses):
 *   -EEXIST     the member ID exists (409)           -EADDRINUSE a peer URL is in use (409)
 *   -ENOENT     no such member (404)                 -EIDRM      the member was removed before (410;
 *                                                                etcd2 answers an add of it with 500)
 *   -EPERM      refused by --strict-reconfig-check (500)
 *   -ETIMEDOUT  no leader / not committed in time (500), -EBUSY another change is in progress (500)
 * Followers forward the change to the leader. `id` is the member's ID (for add: the new one). */
typedef void (*ServerMemberCallback)(int error, uint64_t id, void *userdata);
/* peer_urls: validated URL strings (any order); the new ID is etcd2's hash of the sorted URLs and the
 * current Unix time, with an empty token. */
int server_member_add(Server *s, char *const *peer_urls, size_t n, ServerMemberCallback cb, void *userdata);
int server_member_remove(Server *s, uint64_t id, ServerMemberCallback cb, void *userdata);
int server_member_update(Server *s, uint64_t id, char *const *peer_urls, size_t n, ServerMemberCallback cb,
                         void *userdata);
/* The callback of a pending membership change will not be called (the client went away). */
void server_member_cancel(Server *s, void *userdata);

/* Raft-level stats: /v2/stats/self and /v2/stats/leader. */
typedef struct ServerFollowerStats {
        uint64_t id;
        uint64_t n_success, n_fail;           /* AppendEntries results (etcd2's counts) */
        double latency_current_ms, latency_average_ms, latency_stddev_ms, latency_min_ms, latency_max_ms;
} ServerFollowerStats;
/* The members the leader replicates to (excluding itself); *ret malloc'd. -EPERM if not the leader. */
int server_follower_stats(Server *s, ServerFollowerStats **ret, size_t *ret_n);
typedef struct ServerSelfStats {
        uint64_t recv_append_requests, send_append_requests;   /* counts of AppendEntries messages */
        uint64_t recv_bytes, send_bytes;
} ServerSelfStats;
void server_self_stats(Server *s, ServerSelfStats *ret);

/* A consistent backup of this member's data into <dir>/member (a RocksDB checkpoint, taken live). It
 * restores as a one-member cluster with `etcd2 --data-dir <dir> --force-new-cluster`. */
typedef void (*ServerBackupDone)(int r, void *userdata);
/* The checkpoint runs on a thread; `done` is called once from the loop with 0 or a negative errno
 * (-EEXIST: dir already holds a member's data), also when the server is freed meanwhile (after the
 * thread ended). Returns -EBUSY while another backup runs (one at a time: a second checkpoint would
 * only compete for the same disk), < 0 if it could not start (done is not called then). */
int server_backup(Server *s, const char *dir, ServerBackupDone done, void *userdata);
