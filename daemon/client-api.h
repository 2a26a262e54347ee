/* SPDX-License-Identifier: Apache-2.0 */
/* client-api.h - the v2 client API (/v2/keys, /v2/members, /v2/stats, /version, ...) and the peer
 * endpoints, on top of one libmicrohttpd request. Internal to the HTTP side (http-server.c). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <microhttpd.h>

#include "http-server.h"
#include "http-util.h"
#include "server.h"
#include "store.h"

/* Go's form parser reads at most 10 MiB of a form body ("http: POST too large", errorCode 210); other
 * bodies we read (JSON for /v2/members, /config/local/log) are capped the same. */
#define HTTP_BODY_MAX ((size_t) 10 * 1024 * 1024)

typedef enum HttpListenerKind {
        HTTP_LISTENER_CLIENT,
        HTTP_LISTENER_PEER,
        _HTTP_LISTENER_KIND_MAX,
} HttpListenerKind;

typedef struct HttpDaemon HttpDaemon;
typedef struct HttpRequest HttpRequest;

typedef enum HttpRequestState {
        HTTP_REQUEST_NEW,        /* headers seen; a body may still arrive */
        HTTP_REQUEST_PROPOSING,  /* suspended until the proposal's callback */
        HTTP_REQUEST_ANSWERED,   /* the proposal's result is in `result`: queue it on the next call */
        HTTP_REQUEST_WATCHING,   /* a watch response is queued; events go out through the reader */
        HTTP_REQUEST_QUEUED,     /* a response is queued; nothing more to do */
} HttpRequestState;

struct HttpRequest {
        HttpDaemon *daemon;
        struct MHD_Connection *connection;
        HttpRequest *free_next;
        HttpRequest *suspended_prev, *suspended_next;

        char *uri;               /* raw request target, as received (path and query, still escaped) */
        char uri_buf[192];
        bool started;
        bool suspended;
        bool hung_up;
        bool hangup_watched;     /* the socket is in the hang-up epoll set */
        bool hangup_pending;     /* briefly suspended, to be watched if that lasts */
        bool head;

        HttpBuf body;            /* form bodies of PUT/POST, application/json bodies of /v2/members */
        bool want_body;
        bool body_too_large;

        HttpRequestState state;

        /* membership changes (server_member_*()): answered like a proposal */
        bool member_op;
        int member_error;
        uint64_t member_id;
        char **member_urls;

        /* GET /new?size=N (--enable-discovery-service): answered with token_url once the size is written */
        bool token_op;
        char *token_url;

        /* writes and quorum reads */
        ServerProposal *proposal;
        StoreResult result;

        /* watches */
        StoreWatcher *watcher;
        bool stream;
        bool watch_done;         /* no more events will come: end the body after the queue drains */
        StoreEvent **queue;
        size_t n_queue, queue_alloc;
        size_t queue_offset;     /* bytes of queue[0]->json already written */

        /* proxy mode (proxy.c): the upstream transfer of this request */
        void *proxy_xfer;
};

/* Provided by http-server.c for client-api.c. */
Server *http_daemon_server(HttpDaemon *d);
Proxy *http_daemon_proxy(HttpDaemon *d);  /* NULL unless in proxy mode */
const Config *http_daemon_config(HttpDaemon *d);
HttpListenerKind http_daemon_kind(HttpDaemon *d);
/* Suspends the connection and watches its socket for a hang-up; resume wakes the daemon. */
void http_request_suspend(HttpRequest *r);
/* The same for a wait expected to be short (a proposal): the hang-up watch starts only if it lasts. */
void http_request_suspend_brief(HttpRequest *r);
void http_request_resume(HttpRequest *r);
/* Runs the daemon on the next loop iteration (after an upgraded connection was closed). */
void http_daemon_wake(HttpDaemon *d);
/* Runs the daemon now if it was woken (e.g. a connection resumed) since it last ran: the proxy, after
 * libcurl delivered answers, saves the loop iteration that the wake would take. */
void http_daemon_run_if_woken(HttpDaemon *d);

/* Provided by client-api.c for http-server.c. */
/* First call for a request: decide whether its body is wanted (r->want_body). */
void client_api_begin(HttpRequest *r, const char *method);
/* Peer listeners, on the first call for a request (its head is complete, nothing of a body has been
 * read): a `POST /raft/stream` that will be refused is answered now, and the connection closed
 * without reading whatever body it announced. Returns true if it queued the refusal (*ret). */
bool client_api_peer_refuse_early(HttpRequest *r, const char *method, enum MHD_Result *ret);
/* The body is complete (or the connection was resumed): answer, propose or watch. */
enum MHD_Result client_api_handle(HttpRequest *r, const char *method);
/* The client hung up while suspended: cancel the proposal, drop the watcher. */
void client_api_hangup(HttpRequest *r);
/* etcd's CORS wrapper (--cors): the Access-Control-* headers for this request's Origin, if allowed. */
void client_api_add_cors(HttpRequest *r, struct MHD_Response *resp);
/* The request is over: release everything it holds (the struct itself is reused). */
void client_api_request_done(HttpRequest *r);
