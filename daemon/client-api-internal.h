/* SPDX-License-Identifier: Apache-2.0 */
/* client-api-internal.h - what the parts of the client API share: the per-request state and the reply
 * helpers of client-api.c, and the v2 auth handlers of auth-api.c. Not for use outside them. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "auth-worker.h"
#include "client-api.h"
#include "http-server.h"
#include "server.h"
#include "store.h"

#define CONTENT_TYPE_JSON "application/json"

struct ClientApi {
        Server *server;
        const Config *config;
        bool peer;               /* the peer endpoints, not the client API */
        AuthWorker *auth_worker; /* bcrypt off the loop; started with the first job */
        bool auth_ensured;       /* etcd2's ensuredOnce: /2, /2/users, /2/roles, /2/enabled made or found */
};

/* The headers of an accepted `POST /raft/stream`, kept for the peer transport: the request is gone by
 * the time the socket is handed over. */
typedef struct PeerUpgrade {
        Server *server;
        char *from, *cluster, *version, *min_version;
} PeerUpgrade;

/* One write of a v2 auth request (auth_add_write()). */
typedef struct AuthWrite {
        char *path;
        char *value;             /* NULL: a delete */
        int prev_exist;
        uint64_t prev_index;     /* an update: the modifiedIndex of the node it was merged from */
} AuthWrite;

typedef struct ApiRequest {
        HttpRequest *http;
        ClientApi *api;

        /* membership changes (server_member_*()): answered from their callback */
        bool member_op;
        bool member_pending;     /* the callback is still to come */
        int member_error;
        uint64_t member_id;
        char **member_urls;

        /* GET /new?size=N (--enable-discovery-service): answered with token_url once the size is written */
        bool token_op;
        char *token_url;

        /* v2 auth writes: proposed one after the other, then answered (auth_propose_next()) */
        AuthWrite auth_writes[2];
        size_t n_auth_writes, auth_next;
        unsigned auth_status;
        char *auth_body, *auth_exists_msg, *auth_missing_msg;
        unsigned auth_retries;   /* updates that lost a compare-and-swap and were made again */
        unsigned auth_ensure_next; /* the next of auth-api.c's ensure writes to propose */
        bool auth_ensuring;      /* the write in flight is one of them */
        /* before routing (auth_prepare()): bcrypt work done on the worker thread */
        AuthJob *auth_job;
        bool auth_checked, auth_hashed;
        bool auth_bad;           /* the Basic credentials are wrong (or could not be checked) */
        char *auth_prehash;      /* PUT /v2/auth/users/<u>: the bcrypt of the body's password */

        /* writes and quorum reads */
        ServerProposal *proposal;
        bool no_value;           /* noValueOnSuccess=true: a set/create/update/CAS answers {"action":...} only */

        /* a keys request counted in etcd_http_received_total, to be counted as failed or successful */
        bool metrics_counted;
        int metrics_method;      /* MetricsMethod */
        uint64_t metrics_start_usec;

        /* watches */
        StoreWatcher *watcher;
        bool stream;
        bool watching;           /* the chunked answer has begun */
        bool watch_done;         /* no more events will come: end the body after the queue drains */
        StoreEvent **queue;      /* events not yet handed to the layer (each a reference and a pin) */
        size_t n_queue, queue_alloc;

        /* a peer stream being upgraded: freed by on_peer_taken(), which the layer always calls */
        PeerUpgrade *upgrade;
} ApiRequest;

/* --- client-api.c ---------------------------------------------------------------------------- */

void *mfree_ptr(void *p);
Server *req_server(ApiRequest *r);
Store *req_store(ApiRequest *r);
const char *req_header(ApiRequest *r, const char *name);
void add_cluster_id(ApiRequest *r);
bool method_allowed(const char *method, const char *allow);

/* Each reply_*() answers the request (the ApiRequest is not to be touched afterwards) and returns 0, or
 * returns -ENOMEM having answered nothing. */
int reply(ApiRequest *r, unsigned status, const char *content_type, const void *body, size_t len);
void reply_oom(HttpRequest *h);
int reply_method_not_allowed(ApiRequest *r, const char *allow);
int reply_message(ApiRequest *r, unsigned status, const char *message, bool cluster_id);
int reply_json_buf(ApiRequest *r, unsigned status, HttpBuf *b, bool cluster_id);

/* The layer's handle(): routes a request whose body is in (again, once its bcrypt work is done). */
void api_handle(HttpRequest *h);

/* --- auth-api.c ------------------------------------------------------------------------------ */

/* /v2/auth/<what>: enable, users, roles, users/<u>, roles/<r>. */
int auth_api_handle(ApiRequest *r, const char *method, const char *what);
/* hasRootAccess(), hasKeyPrefixAccess() and writeNoAuth() of etcd2's etcdhttp. */
bool auth_api_has_root_access(ApiRequest *r);
bool auth_api_has_key_access(ApiRequest *r, const char *key, bool recursive, bool write);
int auth_api_reply_no_auth(ApiRequest *r);
/* The bcrypt work the request needs, started on the worker before routing: true if it waits for it. */
bool auth_api_prepare(ApiRequest *r);
/* Frees the request's auth state (the layer's done()). */
void auth_api_request_done(ApiRequest *r);
