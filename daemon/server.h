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
