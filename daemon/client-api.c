/* SPDX-License-Identifier: Apache-2.0 */
/* client-api.c - the v2 client API and the peer endpoints, answered as etcd2 v2.3.8 answers them. */

/*
 * A handler of the HTTP layer (http-server.h): one function per endpoint, each fed one request once its
 * body is in. What a client sees is etcd2's etcdhttp package behind Go's ServeMux and etcd's CORS
 * wrapper:
 *  - OPTIONS is answered 200 with no body before anything else (pkg/cors), for any path;
 *  - a path that path.Clean would change gets a 301 to the clean path (ServeMux), query kept;
 *  - each handler first checks its methods (405 with "Allow: A,B"), then sets X-Etcd-Cluster-ID;
 *  - key errors are etcd error JSON with X-Etcd-Index, everything else {"message":"..."}.
 *
 * Plain reads are answered from the local store right away. Writes and quorum reads become proposals,
 * answered from the proposal's callback. Watches start a chunked answer at once (etcd2 flushes the
 * headers immediately) and write each event as the watcher hands it over; events wait in the request's
 * queue only while the client reads slower than they come (flow control through drained()).
 *
 * The per-request state (ApiRequest) lives at the layer's r->data. The layer may finish the request
 * (done()) as soon as an answer is complete, so nothing touches the ApiRequest after replying.
 */

#include <assert.h>
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "auth-worker.h"
#include "client-api.h"
#include "client-api-internal.h"
#include "peer.h"
#include "config-build.h"
#include "log.h"
#include "macro.h"
#include "members.h"
#include "metrics.h"

#define STRLEN(s) (sizeof(s) - 1)
#define WATCH_QUEUE_MAX 100      /* etcd2: each watcher's channel holds 100 events, then it is dropped */
/* A stream's events are handed to the layer while less than this is waiting for the socket; beyond, they
 * stay in the queue (at most WATCH_QUEUE_MAX) until drained(). */
#define WATCH_PENDING_MAX ((size_t) 64 * 1024)
#define CONTENT_TYPE_TEXT "text/plain; charset=utf-8"
#define CONTENT_TYPE_FORM "application/x-www-form-urlencoded"
#define MEMBERSHIP_NOT_SUPPORTED "membership changes are not supported yet by this etcd2"


static bool strv_contains(char **l, const char *s) {
        STRV_FOREACH(i, l)
                if (streq(*i, s))
                        return true;
        return false;
}

static bool strv_isempty(char **l) {
        return !l || !l[0];
}

void *mfree_ptr(void *p) {
        free(p);
        return NULL;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

Server *req_server(ApiRequest *r) {
        return r->api->server;
}

Store *req_store(ApiRequest *r) {
        return server_store(req_server(r));
}

const char *req_header(ApiRequest *r, const char *name) {
        return http_request_header(r->http, name);
}

/* The media type of Content-Type, without parameters, lower-cased into buf ("" if absent). */
static const char *media_type(const char *ct, char *buf, size_t size) {
        size_t n = 0;

        if (ct) {
                while (*ct == ' ' || *ct == '\t')
                        ct++;
                for (; *ct && *ct != ';' && n + 1 < size; ct++)
                        buf[n++] = (char) tolower((unsigned char) *ct);
                while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t'))
                        n--;
        }
        buf[n] = 0;
        return buf;
}

static const char *req_media_type(ApiRequest *r, char *buf, size_t size) {
        return media_type(req_header(r, "Content-Type"), buf, size);
}

/* --- responses ------------------------------------------------------------------------------ */

/* Each reply_*() answers the request (the layer may end it right away: the ApiRequest is not to be
 * touched afterwards) and returns 0, or returns -ENOMEM having answered nothing; the entry point then
 * answers 500 and closes the connection. */

static void add_cors(ApiRequest *r) {
        const Config *c = r->api->config;
        const char *origin = NULL;

        if (r->api->peer || !c->cors)
                return;

        STRV_FOREACH(o, c->cors)
                if (streq(*o, "*")) {
                        origin = "*";
                        break;
                }
        if (!origin) {
                const char *h = req_header(r, "Origin");
                if (h)
                        STRV_FOREACH(o, c->cors)
                                if (streq(*o, h)) {
                                        origin = h;
                                        break;
                                }
        }
        if (!origin)
                return;

        http_response_header(r->http, "Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE");
        http_response_header(r->http, "Access-Control-Allow-Origin", origin);
        http_response_header(r->http, "Access-Control-Allow-Headers", "accept, content-type, authorization");
}

void add_cluster_id(ApiRequest *r) {
        http_response_header_u64(r->http, "X-Etcd-Cluster-Id", server_cluster_id(req_server(r)), 16);
}

static void add_uint_header(ApiRequest *r, const char *name, uint64_t v) {
        http_response_header_u64(r->http, name, v, 10);
}

static void add_raft_headers(ApiRequest *r) {
        add_uint_header(r, "X-Raft-Index", server_raft_index(req_server(r)));
        add_uint_header(r, "X-Raft-Term", server_raft_term(req_server(r)));
}

/* A complete answer (body copied), with the CORS headers last, as etcd's wrapper adds them. */
int reply(ApiRequest *r, unsigned status, const char *content_type, const void *body, size_t len) {
        add_cors(r);
        http_reply(r->http, status, content_type, body ?: "", len);
        return 0;
}

/* What an out-of-memory failure answers, with nothing answered yet. */
void reply_oom(HttpRequest *h) {
        static const char text[] = "Internal Server Error\n";

        log_oom();
        http_response_close(h);
        http_reply(h, 500, CONTENT_TYPE_TEXT, text, STRLEN(text));
}

/* Go's http.Error(): text/plain, the text and a newline; since Go 1.11 (etcd 3.4's builds) also
 * "X-Content-Type-Options: nosniff" (etcd 2.3.8's Go 1.6 did not send it; harmless to its clients). */
static int reply_go_error(ApiRequest *r, unsigned status, const char *text) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "%s\n", text);

        http_response_header(r->http, "X-Content-Type-Options", "nosniff");

        return reply(r, status, CONTENT_TYPE_TEXT, buf, (size_t) MIN(n, (int) sizeof buf - 1));
}

static int reply_not_found(ApiRequest *r) {
        return reply_go_error(r, 404, "404 page not found");
}

int reply_method_not_allowed(ApiRequest *r, const char *allow) {
        http_response_header(r->http, "Allow", allow);
        return reply_go_error(r, 405, "Method Not Allowed");
}

bool method_allowed(const char *method, const char *allow) {
        /* allow is "A,B,C" */
        size_t l = strlen(method);

        for (const char *p = allow; *p; ) {
                const char *e = strchrnul(p, ',');
                if ((size_t) (e - p) == l && strneq(p, method, l))
                        return true;
                p = *e ? e + 1 : e;
        }
        return false;
}

/* httptypes.HTTPError: {"message":"..."} without a newline. */
int reply_message(ApiRequest *r, unsigned status, const char *message, bool cluster_id) {
        HttpBuf b = {};
        int k;

        if (http_buf_puts(&b, "{\"message\":") < 0 ||
            http_buf_json_string(&b, message, strlen(message)) < 0 ||
            http_buf_puts(&b, "}") < 0) {
                http_buf_done(&b);
                return -ENOMEM;
        }
        if (cluster_id)
                add_cluster_id(r);
        k = reply(r, status, CONTENT_TYPE_JSON, b.data, b.len);
        http_buf_done(&b);
        return k;
}

static int reply_etcd_error(ApiRequest *r, EtcdError e, const char *cause, uint64_t index, unsigned status) {
        size_t len;
        char *json;

        json = etcd_error_to_json(e, cause, index, &len);
        if (!json)
                return -ENOMEM;
        add_cluster_id(r);
        add_uint_header(r, "X-Etcd-Index", index);
        add_cors(r);
        http_reply_ref(r->http, status ?: (unsigned) etcd_error_http_status(e), CONTENT_TYPE_JSON, json, len,
                       free, json);
        return 0;
}

static void event_release(void *userdata) {
        store_event_json_unpin(userdata);
        store_event_unref(userdata);
}

static int reply_event(ApiRequest *r, StoreEvent *e, uint64_t etcd_index) {
        unsigned status = 200;
        const char *json;
        size_t json_len;

        if (e->action == STORE_ACTION_CREATE || (e->action == STORE_ACTION_SET && !e->has_prev))
                status = 201;

        /* The event is rendered at answer time (the history keeps it raw) and the JSON is shared by
         * every answer that pins it meanwhile: one pin and one reference per response. */
        json = store_event_json(e, &json_len);
        if (!json)
                return -ENOMEM;
        store_event_ref(e);

        add_cluster_id(r);
        add_uint_header(r, "X-Etcd-Index", etcd_index);
        add_raft_headers(r);
        add_cors(r);
        http_reply_ref(r->http, status, CONTENT_TYPE_JSON, json, json_len, event_release, e);
        return 0;
}

/* etcd 3.4's writeKeyEvent() with noValueOnSuccess: a set, create, update or compareAndSwap drops node
 * and prevNode; the status and headers stay those of the full answer. */
static int reply_event_no_value(ApiRequest *r, StoreEvent *e, uint64_t etcd_index) {
        unsigned status = 200;
        char *json;
        int len;

        if (e->action == STORE_ACTION_CREATE || (e->action == STORE_ACTION_SET && !e->has_prev))
                status = 201;
        len = asprintf(&json, "{\"action\":\"%s\"}\n", store_action_to_string(e->action));
        if (len < 0)
                return -ENOMEM;

        add_cluster_id(r);
        add_uint_header(r, "X-Etcd-Index", etcd_index);
        add_raft_headers(r);
        add_cors(r);
        http_reply_ref(r->http, status, CONTENT_TYPE_JSON, json, (size_t) len, free, json);
        return 0;
}

static int reply_result(ApiRequest *r, StoreResult *res) {
        if (res->error != ETCD_OK)
                /* etcd2 turns server errors (timeouts, stopped, ...) into errorCode 300 with index 0 */
                return reply_etcd_error(r, res->error, res->cause,
                                        res->error == ETCD_ERROR_RAFT_INTERNAL ? 0 : res->index, 0);
        if (!res->event)
                return reply_etcd_error(r, ETCD_ERROR_RAFT_INTERNAL, "received response with no Event/Watcher!", 0, 0);
        if (r->no_value && (res->event->action == STORE_ACTION_SET || res->event->action == STORE_ACTION_CREATE ||
                            res->event->action == STORE_ACTION_UPDATE ||
                            res->event->action == STORE_ACTION_COMPARE_AND_SWAP))
                return reply_event_no_value(r, res->event, res->index);
        return reply_event(r, res->event, res->index);
}

/* etcdhttp's reportRequestFailed()/reportRequestCompleted(): a keys request that counted as received
 * ends as a failure by status code, or as a success with its duration. */
static void metrics_keys_done(ApiRequest *r, const StoreResult *res) {
        if (!r->metrics_counted)
                return;
        r->metrics_counted = false;
        if (res->error != ETCD_OK || !res->event)
                metrics_http_failed(r->metrics_method, res->error != ETCD_OK ?
                                    (unsigned) etcd_error_http_status(res->error) : 500);
        else
                metrics_observe(&metrics.http_duration[r->metrics_method], &metrics_http_buckets,
                                metrics_now_usec() - r->metrics_start_usec);
}

/* --- /v2/keys: parameters ------------------------------------------------------------------- */

typedef struct KeyParams {
        char *path;              /* internal path, "/1/..." */
        const HttpFormField *value;
        uint64_t prev_index, wait_index;
        bool recursive, sorted, wait, dir, quorum, stream;
        const char *prev_value;
        bool have_ttl;
        uint64_t ttl;
        int prev_exist;
        bool refresh;
        bool no_value_on_success;
} KeyParams;

/* getBool/getUint64 of etcdhttp: absent is false/0, present must parse. */
static int form_bool(const HttpForm *f, const char *key, bool *ret) {
        const HttpFormField *v = http_form_get(f, key);

        *ret = false;
        return v ? go_parse_bool(v->value, ret) : 0;
}

static int form_uint(const HttpForm *f, const char *key, uint64_t *ret) {
        const HttpFormField *v = http_form_get(f, key);

        *ret = 0;
        return v ? go_parse_uint64(v->value, ret) : 0;
}

/* etcdhttp parseKeyRequest(): the same checks in the same order, so the same request gets the same
 * error. Returns 0 or an EtcdError with *ret_cause (static text). */
static EtcdError parse_key_params(const HttpForm *f, const char *method, KeyParams *p, const char **ret_cause) {
        const HttpFormField *v;

#define CHECK(expr, code, cause)                  \
        do {                                      \
                if ((expr) < 0) {                 \
                        *ret_cause = cause;       \
                        return code;              \
                }                                 \
        } while (0)

        CHECK(form_uint(f, "prevIndex", &p->prev_index), ETCD_ERROR_INDEX_NAN, "invalid value for \"prevIndex\"");
        CHECK(form_uint(f, "waitIndex", &p->wait_index), ETCD_ERROR_INDEX_NAN, "invalid value for \"waitIndex\"");
        CHECK(form_bool(f, "recursive", &p->recursive), ETCD_ERROR_INVALID_FIELD, "invalid value for \"recursive\"");
        CHECK(form_bool(f, "sorted", &p->sorted), ETCD_ERROR_INVALID_FIELD, "invalid value for \"sorted\"");
        CHECK(form_bool(f, "wait", &p->wait), ETCD_ERROR_INVALID_FIELD, "invalid value for \"wait\"");
        CHECK(form_bool(f, "dir", &p->dir), ETCD_ERROR_INVALID_FIELD, "invalid value for \"dir\"");
        CHECK(form_bool(f, "quorum", &p->quorum), ETCD_ERROR_INVALID_FIELD, "invalid value for \"quorum\"");
        CHECK(form_bool(f, "stream", &p->stream), ETCD_ERROR_INVALID_FIELD, "invalid value for \"stream\"");
        CHECK(p->wait && !streq(method, "GET") ? -1 : 0, ETCD_ERROR_INVALID_FIELD,
              "\"wait\" can only be used with GET requests");

        v = http_form_get(f, "prevValue");
        CHECK(v && v->value_len == 0 ? -1 : 0, ETCD_ERROR_VALUE_REQUIRED, "\"prevValue\" cannot be empty");
        p->prev_value = v ? v->value : NULL;

        /* noValueOnSuccess came with etcd 3.1 (2.3.8 ignored it): parsed for every method, as etcd 3.4 */
        CHECK(form_bool(f, "noValueOnSuccess", &p->no_value_on_success), ETCD_ERROR_INVALID_FIELD,
              "invalid value for \"noValueOnSuccess\"");

        /* ttl: absent or empty means "no TTL" */
        v = http_form_get(f, "ttl");
        if (v && v->value_len > 0) {
                CHECK(go_parse_uint64(v->value, &p->ttl), ETCD_ERROR_TTL_NAN, "invalid value for \"ttl\"");
                p->have_ttl = true;
        }

        p->prev_exist = -1;
        if (http_form_get(f, "prevExist")) {
                bool b;
                CHECK(form_bool(f, "prevExist", &b), ETCD_ERROR_INVALID_FIELD, "invalid value for prevExist");
                p->prev_exist = b;
        }

        p->value = http_form_get(f, "value");
        if (http_form_get(f, "refresh")) {
                CHECK(form_bool(f, "refresh", &p->refresh), ETCD_ERROR_INVALID_FIELD, "invalid value for refresh");
                if (p->refresh) {
                        CHECK(p->value && p->value->value_len > 0 ? -1 : 0, ETCD_ERROR_REFRESH_VALUE,
                              "A value was provided on a refresh");
                        CHECK(!p->have_ttl ? -1 : 0, ETCD_ERROR_REFRESH_TTL_REQUIRED, "No TTL value set");
                }
        }
#undef CHECK
        return ETCD_OK;
}

/* --- /v2/keys: proposals and watches -------------------------------------------------------- */

static int reply_token(ApiRequest *r, const StoreResult *res);

static void on_proposal_done(StoreResult *res, void *userdata) {
        ApiRequest *r = userdata;
        HttpRequest *h = r->http;
        int k;

        /* res is borrowed, and good for the answer: reply_event() takes its own reference. */
        r->proposal = NULL;
        metrics_keys_done(r, res);
        k = r->token_op ? reply_token(r, res) : reply_result(r, res);
        if (k < 0)
                reply_oom(h);
}

/* Takes the reference to e; pins its JSON until it has been handed to the layer. */
static int watch_push(ApiRequest *r, StoreEvent *e) {
        size_t json_len;

        if (r->n_queue >= r->queue_alloc) {
                size_t a = MAX(r->queue_alloc * 2, (size_t) 4);
                StoreEvent **t = reallocarray(r->queue, a, sizeof(StoreEvent *));
                if (!t)
                        return -ENOMEM;
                r->queue = t;
                r->queue_alloc = a;
        }
        if (!store_event_json(e, &json_len))
                return -ENOMEM;
        r->queue[r->n_queue++] = e;
        return 0;
}

/* Hands queued events to the layer while the client keeps up (the rest waits for drained()), and ends
 * the answer once the watch is over and the queue is empty. The layer may end the request with the
 * last piece: r is not touched after it. */
static void watch_flush(ApiRequest *r) {
        HttpRequest *h = r->http;

        if (!r->watching)
                return;

        while (r->n_queue > 0 && http_stream_pending(h) < WATCH_PENDING_MAX) {
                StoreEvent *e = r->queue[0];
                bool last = r->watch_done && r->n_queue == 1;

                memmove(r->queue, r->queue + 1, (r->n_queue - 1) * sizeof(StoreEvent *));
                r->n_queue--;
                if (last)
                        r->watching = false;
                /* A non-stream watch: the event and the final chunk leave in one write. */
                http_stream_write(h, e->json, e->json_len, last); /* pinned: rendered; copied */
                event_release(e);
                if (last)
                        return;
        }
        if (r->n_queue == 0 && r->watch_done) {
                r->watching = false;
                http_stream_end(h);
        }
}

static int on_watch_event(StoreWatcher *w, StoreEvent *e, void *userdata) {
        ApiRequest *r = userdata;
        int k = 0;

        if (r->n_queue >= WATCH_QUEUE_MAX || watch_push(r, store_event_ref(e)) < 0) {
                /* Too slow a consumer (or OOM): etcd2 drops the watcher and ends the response. */
                if (r->n_queue < WATCH_QUEUE_MAX)
                        store_event_unref(e);
                k = -ENOBUFS;
        }

        if (!r->stream || k < 0) {
                /* The store frees the watcher after this returns. */
                r->watcher = NULL;
                r->watch_done = true;
        }
        watch_flush(r);
        return k;
}

static int start_watch(ApiRequest *r, const KeyParams *p) {
        _cleanup_(freep) char *cause = NULL;
        Store *st = req_store(r);
        uint64_t start_index = store_index(st);
        StoreWatcher *w = NULL;
        StoreEvent *e = NULL;
        int k;

        r->stream = p->stream;
        k = store_watch(st, p->path, p->recursive, p->stream, p->wait_index, on_watch_event, r, &w, &e, &cause);
        if (k < 0)
                return reply_etcd_error(r, ETCD_ERROR_RAFT_INTERNAL, "etcdserver: out of memory", 0, 0);
        if (k > 0)
                return reply_etcd_error(r, (EtcdError) k, cause, store_index(st), 0);
        if (w)
                r->watcher = w;
        else if (!e)
                r->watch_done = true;
        else {
                if (watch_push(r, e) < 0) {
                        store_event_unref(e);
                        return -ENOMEM;
                }
                /* etcd2 (store/watcher_hub.go): an event found in the history is all such a watcher ever
                 * gets, even with stream=true, since it is never registered with the hub. A stream then
                 * stays open and silent until the client goes away. */
                if (!p->stream)
                        r->watch_done = true;
        }

        /* etcd2 flushes the headers at once: the client knows its watch is in place. */
        add_cluster_id(r);
        add_uint_header(r, "X-Etcd-Index", start_index);
        add_raft_headers(r);
        add_cors(r);
        r->watching = true;
        http_stream_begin(r->http, 200, CONTENT_TYPE_JSON, -1);
        watch_flush(r);
        return 0;
}

/* etcd answers every form it cannot parse with errorCode 210 and the parser's text as the cause; it has
 * no field cap of its own (see HTTP_FORM_FIELDS_MAX, which this text names), so this cause is ours. */
#define TOO_MANY_FIELDS "too many form fields (more than 10000)"

static int handle_keys(ApiRequest *r, const char *method, const char *key, const char *query) {
        _cleanup_(http_form_done) HttpForm form = {};
        _cleanup_(freep) char *form_error = NULL;
        uint64_t start_usec = metrics_now_usec();
        KeyParams p = {};
        const char *cause = NULL;
        StoreRequest req = {};
        EtcdError e;
        int k;

        if (!method_allowed(method, "HEAD,GET,PUT,POST,DELETE"))
                return reply_method_not_allowed(r, "HEAD,GET,PUT,POST,DELETE");

        if (r->http->body_too_large)
                return reply_etcd_error(r, ETCD_ERROR_INVALID_FORM, "http: POST too large", 0, 0);

        /* Go's ParseForm: the form body (POST/PUT only) comes first, then the query. */
        if (r->http->body.len > 0 && (streq(method, "PUT") || streq(method, "POST"))) {
                char mt[64];
                if (streq(req_media_type(r, mt, sizeof mt), CONTENT_TYPE_FORM)) {
                        k = http_form_parse(&form, r->http->body.data, r->http->body.len, &form_error);
                        if (k == -E2BIG)
                                return reply_etcd_error(r, ETCD_ERROR_INVALID_FORM, TOO_MANY_FIELDS, 0, 0);
                        if (k < 0)
                                return -ENOMEM;
                }
        }
        if (query) {
                k = http_form_parse(&form, query, strlen(query), &form_error);
                if (k == -E2BIG)
                        return reply_etcd_error(r, ETCD_ERROR_INVALID_FORM, TOO_MANY_FIELDS, 0, 0);
                if (k < 0)
                        return -ENOMEM;
        }
        if (form_error)
                return reply_etcd_error(r, ETCD_ERROR_INVALID_FORM, form_error, 0, 0);

        e = parse_key_params(&form, method, &p, &cause);
        if (e != ETCD_OK)
                return reply_etcd_error(r, e, cause, 0, 0);
        r->no_value = p.no_value_on_success;

        /* etcd2 checks permissions once the request parsed (writeKeyNoAuth(): 110, index 0) */
        if (!auth_api_has_key_access(r, key, p.recursive, !streq(method, "GET") && !streq(method, "HEAD")))
                return reply_etcd_error(r, ETCD_ERROR_UNAUTHORIZED, "Insufficient credentials", 0, 401);

        /* path.Join("/1", key): the mux left key clean ("" or "/..." with at most a trailing slash) */
        {
                size_t kl = strlen(key);
                if (kl > 0 && key[kl - 1] == '/')
                        kl--;
                p.path = malloc(STRLEN(STORE_KEYS_PREFIX) + kl + 1);
                if (!p.path)
                        return -ENOMEM;
                memcpy(p.path, STORE_KEYS_PREFIX, STRLEN(STORE_KEYS_PREFIX));
                memcpy(p.path + STRLEN(STORE_KEYS_PREFIX), key, kl);
                p.path[STRLEN(STORE_KEYS_PREFIX) + kl] = 0;
        }

        /* etcdhttp counts a parsed and permitted request as received, watches excepted */
        if (!p.wait) {
                r->metrics_method = streq(method, "GET") && p.quorum ? METRICS_METHOD_QGET :
                                    metrics_method_from_string(method);
                r->metrics_start_usec = start_usec;
                r->metrics_counted = true;
                metrics.http_received[r->metrics_method]++;
        }

        if (streq(method, "HEAD") || (streq(method, "GET") && !p.quorum)) {
                StoreResult res = {};
                int ret;

                if (p.wait) {
                        ret = start_watch(r, &p);
                        free(p.path);
                        return ret;
                }

                k = store_get(req_store(r), p.path, p.recursive, p.sorted, now_usec(), &res);
                free(p.path);
                if (k < 0)
                        return -ENOMEM;
                metrics_keys_done(r, &res);
                ret = reply_result(r, &res);
                store_result_done(&res);
                return ret;
        }

        req.method = streq(method, "PUT") ? STORE_METHOD_PUT :
                     streq(method, "POST") ? STORE_METHOD_POST :
                     streq(method, "DELETE") ? STORE_METHOD_DELETE : STORE_METHOD_QGET;
        req.path = p.path;
        if (p.value) {
                req.value = p.value->value;
                req.value_len = p.value->value_len;
        }
        req.dir = p.dir;
        req.prev_exist = p.prev_exist;
        req.prev_value = p.prev_value;
        req.prev_index = p.prev_index;
        req.recursive = p.recursive;
        req.sorted = p.sorted;
        req.refresh = p.refresh;
        if (p.have_ttl) {
                /* The receiving member turns the TTL into an absolute expiry (etcd2 does the same). */
                uint64_t ttl = MIN(p.ttl, (uint64_t) 100 * 365 * 24 * 3600 * 1000);
                req.expiration_usec = now_usec() + ttl * USEC_PER_SEC;
        }

        /* Answered from on_proposal_done(), which never runs inside server_propose(). */
        k = server_propose(req_server(r), &req, on_proposal_done, r, &r->proposal);
        free(p.path);
        if (k < 0) {
                metrics_keys_done(r, &(StoreResult) { .error = ETCD_ERROR_RAFT_INTERNAL });
                return reply_etcd_error(r, ETCD_ERROR_RAFT_INTERNAL, strerror(-k), 0, 0);
        }
        return 0;
}

/* --- members -------------------------------------------------------------------------------- */

static int buf_strv(HttpBuf *b, char **l) {
        int k = http_buf_puts(b, "[");
        bool first = true;

        STRV_FOREACH(s, l) {
                if (k >= 0 && !first)
                        k = http_buf_puts(b, ",");
                if (k >= 0)
                        k = http_buf_json_string(b, *s, strlen(*s));
                first = false;
        }
        return k < 0 ? k : http_buf_puts(b, "]");
}

/* httptypes.Member of the client API: id as hex string, all four fields always present. */
static int buf_member(HttpBuf *b, const Member *m) {
        int k = http_buf_printf(b, "{\"id\":\"%" PRIx64 "\",\"name\":", m->id);
        if (k >= 0)
                k = http_buf_json_string(b, m->name, strlen(m->name));
        if (k >= 0)
                k = http_buf_puts(b, ",\"peerURLs\":");
        if (k >= 0)
                k = buf_strv(b, m->peer_urls);
        if (k >= 0)
                k = http_buf_puts(b, ",\"clientURLs\":");
        if (k >= 0)
                k = buf_strv(b, m->client_urls);
        return k < 0 ? k : http_buf_puts(b, "}");
}

int reply_json_buf(ApiRequest *r, unsigned status, HttpBuf *b, bool cluster_id) {
        if (cluster_id)
                add_cluster_id(r);
        add_cors(r);
        /* the buffer goes to the layer as it is */
        http_reply_ref(r->http, status, CONTENT_TYPE_JSON, b->data ?: "", b->len, free, b->data);
        *b = (HttpBuf) {};
        return 0;
}

/* Validates a member request body as etcd2's unmarshalRequest() + types.NewURLs() do. Returns an HTTP
 * status (0 on success) with *ret_message, and the peer URLs. */
/* encoding/json's name of a JSON value's kind in "cannot unmarshal <kind> into ..." */
static const char *go_json_kind(json_object *o) {
        switch (json_object_get_type(o)) {
        case json_type_boolean: return "bool";
        case json_type_double:
        case json_type_int: return "number";
        case json_type_string: return "string";
        case json_type_array: return "array";
        case json_type_object: return "object";
        default: return "null";
        }
}

/* url.Parse()'s errors as etcd 3.4 (Go >= 1.14) words them, the URL quoted: `parse "127.0.0.1:1": first
 * path segment in URL cannot contain colon`; etcd_url_parse() keeps 2.3.8's unquoted form for the flags.
 * Takes err; NULL on OOM. */
static char *member_url_error(char *err) {
        static const char *const suffixes[] = {
                ": missing protocol scheme",
                ": first path segment in URL cannot contain colon",
        };
        size_t n = strlen(err);

        if (!strneq(err, "parse ", 6))
                return err;
        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                size_t l = strlen(suffixes[i]);
                _cleanup_free_ char *url = NULL, *q = NULL;
                char *m;

                if (n < 6 + l || !streq(err + n - l, suffixes[i]))
                        continue;
                url = strndup(err + 6, n - 6 - l);
                q = url ? go_quote(url) : NULL;
                if (!q || asprintf(&m, "parse %s%s", q, suffixes[i]) < 0)
                        m = NULL;
                free(err);
                return m;
        }
        return err;
}

static unsigned parse_member_body(ApiRequest *r, char ***ret_urls, char **ret_message) {
        _cleanup_(strv_freep) char **urls = NULL;
        json_object *o = NULL, *a = NULL;
        bool oom;
        const char *ct = req_header(r, "Content-Type");
        enum json_tokener_error jerr;
        size_t n;

        if (!ct || !streq(ct, "application/json")) {
                if (asprintf(ret_message, "Bad Content-Type %s, accept application/json", strempty(ct)) < 0)
                        *ret_message = NULL;
                return 415;
        }
        if (r->http->body_too_large) {
                *ret_message = strdup("http: request body too large");
                return 413;
        }

        /* json.Unmarshal(): Go's syntax check of the whole body first, then the type errors */
        *ret_message = go_json_syntax_error(r->http->body.data ?: "", r->http->body.len, &oom);
        if (*ret_message || oom)
                return oom ? 500 : 400;
        o = json_tokener_parse_verbose(r->http->body.data ?: "", &jerr);
        if (!o || !json_object_is_type(o, json_type_object)) {
                /* etcd 3.4 unmarshals into an anonymous struct; a null is no change at all */
                if (o || jerr != json_tokener_success) {
                        if (asprintf(ret_message, "json: cannot unmarshal %s into Go value of type struct { "
                                     "PeerURLs []string \"json:\\\"peerURLs\\\"\" }", go_json_kind(o)) < 0)
                                *ret_message = NULL;
                        json_object_put(o);
                        return 400;
                }
        }

        /* encoding/json decodes every member naming the field (any case) in turn and reports the first type
         * error once the whole body is read; the last member's value stays (a null one clears it). So every
         * such member is checked before any URL is looked at. A null body changes nothing: no URLs. */
        if (!o) {
                *ret_message = strdup("no valid URLs given");
                return 400;
        }
        json_object_object_foreach(o, key, v) {
                json_object *bad = NULL;
                const char *type = "[]string";

                if (!v || !go_json_key_matches(key, "peerURLs"))
                        continue;
                if (!json_object_is_type(v, json_type_array))
                        bad = v;
                for (size_t i = 0; !bad && i < json_object_array_length(v); i++) {
                        json_object *e = json_object_array_get_idx(v, i);

                        if (e && !json_object_is_type(e, json_type_string)) {
                                bad = e;
                                type = "string";
                        }
                }
                if (bad) {
                        if (asprintf(ret_message, "json: cannot unmarshal %s into Go struct field .peerURLs "
                                     "of type %s", go_json_kind(bad), type) < 0)
                                *ret_message = NULL;
                        json_object_put(o);
                        return 400;
                }
        }
        a = go_json_field(o, "peerURLs", true);
        n = a ? json_object_array_length(a) : 0;
        if (n == 0) {
                json_object_put(o);
                *ret_message = strdup("no valid URLs given");
                return 400;
        }

        urls = calloc(n + 1, sizeof(char *));
        if (!urls) {
                json_object_put(o);
                return 500;
        }
        for (size_t i = 0; i < n; i++) {
                json_object *s = json_object_array_get_idx(a, i);
                _cleanup_(freep) char *err = NULL;
                EtcdUrl u = {};

                /* a null element stays "" in Go: the URL check refuses it */
                if (etcd_url_parse(s ? json_object_get_string(s) : "", &u, &err) < 0) {
                        json_object_put(o);
                        *ret_message = err ? member_url_error(TAKE_PTR(err)) : strdup("invalid URL");
                        return 400;
                }
                urls[i] = strdup(u.str);
                etcd_url_done(&u);
                if (!urls[i]) {
                        json_object_put(o);
                        return 500;
                }
        }
        json_object_put(o);
        *ret_urls = TAKE_PTR(urls);
        return 0;
}

static bool member_id_removed(Store *st, const char *idstr) {
        _cleanup_(freep) char *path = NULL;

        if (asprintf(&path, "/0/removed_members/%s", idstr) < 0)
                return false;
        return store_lookup(st, path) != NULL;
}

/* --- membership changes through the server (issue 3) --- */

static int reply_member(ApiRequest *r);

static void on_member_done(int error, uint64_t id, void *userdata) {
        ApiRequest *r = userdata;
        HttpRequest *h = r->http;

        r->member_pending = false;
        r->member_error = error;
        r->member_id = id;
        if (reply_member(r) < 0)
                reply_oom(h);
}

/* etcd2's writeError() for the members endpoints. */
static int reply_member(ApiRequest *r) {
        _cleanup_(freep) char *msg = NULL;
        char idstr[32];

        snprintf(idstr, sizeof idstr, "%" PRIx64, r->member_id);
        switch (r->member_error) {
        case 0:
                if (r->member_urls) {
                        Member m = { .id = r->member_id, .name = (char *) "", .peer_urls = r->member_urls };
                        HttpBuf b = {};

                        if (buf_member(&b, &m) < 0 || http_buf_puts(&b, "\n") < 0) {
                                http_buf_done(&b);
                                return -ENOMEM;
                        }
                        return reply_json_buf(r, 201, &b, true);
                }
                add_cluster_id(r);
                return reply(r, 204, NULL, "", 0);
        case -EEXIST:
                return reply_message(r, 409, "membership: ID exists", true);
        case -EADDRINUSE:
                return reply_message(r, 409, "membership: peerURL exists", true);
        case -ENOENT:
                if (asprintf(&msg, "No such member: %s", idstr) < 0)
                        return -ENOMEM;
                return reply_message(r, 404, msg, true);
        case -EIDRM:
                if (r->member_urls)   /* an add: etcd2 answers 500 here, not the documented 409/410 */
                        break;
                if (asprintf(&msg, "Member permanently removed: %s", idstr) < 0)
                        return -ENOMEM;
                return reply_message(r, 410, msg, true);
        default:
                break;
        }
        return reply_message(r, 500, "Internal Server Error", true);
}

static int member_url_cmp(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int member_change(ApiRequest *r, const char *method, uint64_t id, char **urls) {
        Server *s = req_server(r);
        int k;

        /* etcd2 answers (and stores) the peer URLs sorted. */
        if (urls)
                qsort(urls, strv_length(urls), sizeof(char *), member_url_cmp);

        r->member_op = true;
        r->member_id = id;
        r->member_pending = true;
        if (streq(method, "POST")) {
                r->member_urls = urls;
                k = server_member_add(s, urls, strv_length(urls), on_member_done, r);
        } else if (streq(method, "PUT")) {
                k = server_member_update(s, id, urls, strv_length(urls), on_member_done, r);
                strv_free(urls);
        } else {
                strv_free(urls);
                k = server_member_remove(s, id, on_member_done, r);
        }
        if (k < 0) {
                r->member_pending = false;
                r->member_error = k;
                return reply_member(r);
        }
        /* answered from on_member_done() */
        return 0;
}

static int handle_members(ApiRequest *r, const char *method, const char *rest) {
        Store *st = req_store(r);
        Member *ms = NULL;
        size_t n = 0;
        HttpBuf b = {};
        int ret;
        uint64_t id;
        char *end;

        if (!method_allowed(method, "GET,POST,DELETE,PUT"))
                return reply_method_not_allowed(r, "GET,POST,DELETE,PUT");
        /* hasWriteRootAccess(): reads are open, changes need the root role */
        if (!streq(method, "GET") && !streq(method, "HEAD") && !auth_api_has_root_access(r))
                return auth_api_reply_no_auth(r);

        /* strings.TrimPrefix(path, "/v2/members") then TrimPrefix "/" */
        if (*rest == '/')
                rest++;

        if (members_load(st, &ms, &n) < 0)
                return -ENOMEM;

        if (streq(method, "GET")) {
                int k = 0;

                if (isempty(rest)) {
                        k = http_buf_puts(&b, "{\"members\":[");
                        for (size_t i = 0; k >= 0 && i < n; i++) {
                                if (i > 0)
                                        k = http_buf_puts(&b, ",");
                                if (k >= 0)
                                        k = buf_member(&b, &ms[i]);
                        }
                        if (k >= 0)
                                k = http_buf_puts(&b, "]}\n");
                } else if (streq(rest, "leader")) {
                        uint64_t leader = server_leader_id(req_server(r));
                        const Member *m = NULL;

                        for (size_t i = 0; i < n; i++)
                                if (ms[i].id == leader)
                                        m = &ms[i];
                        if (leader == 0 || !m) {
                                members_free(ms, n);
                                return reply_message(r, 503, "During election", true);
                        }
                        k = buf_member(&b, m);
                        if (k >= 0)
                                k = http_buf_puts(&b, "\n");
                } else {
                        members_free(ms, n);
                        return reply_message(r, 404, "Not found", true);
                }
                members_free(ms, n);
                if (k < 0) {
                        http_buf_done(&b);
                        return -ENOMEM;
                }
                return reply_json_buf(r, 200, &b, true);
        }

        if (streq(method, "POST")) {
                _cleanup_(strv_freep) char **urls = NULL;
                _cleanup_(freep) char *msg = NULL;
                unsigned status = parse_member_body(r, &urls, &msg);

                if (status == 0) {
                        /* A peer URL already used by a member is a conflict (membership.ErrPeerURLexists: etcd 3.4's
                         * wording; 2.3.8 said "etcdserver: peerURL exists", clients only show it). */
                        for (size_t i = 0; i < n && status == 0; i++)
                                STRV_FOREACH(u, urls)
                                        if (strv_contains(ms[i].peer_urls, *u)) {
                                                status = 409;
                                                msg = strdup("membership: peerURL exists");
                                                break;
                                        }
                }
                members_free(ms, n);
                if (status == 0)
                        return member_change(r, method, 0, TAKE_PTR(urls));
                return reply_message(r, status, msg ?: "Internal Server Error", true);
        }

        /* DELETE and PUT take /v2/members/<hex id> */
        if (isempty(rest)) {
                members_free(ms, n);
                /* membersHandler set X-Etcd-Cluster-ID before looking at the path: this 405 has it too */
                add_cluster_id(r);
                return reply_go_error(r, 405, "Method Not Allowed");
        }

        /* types.IDFromString(): strconv.ParseUint(s, 16, 64), hex digits only (no "0x", sign or space) */
        errno = 0;
        id = strtoull(rest, &end, 16);
        if (errno != 0 || *end || !isxdigit((unsigned char) rest[0]) || rest[strspn(rest, "0123456789abcdefABCDEF")]) {
                _cleanup_(freep) char *msg = NULL;
                members_free(ms, n);
                if (asprintf(&msg, "No such member: %s", rest) < 0)
                        return -ENOMEM;
                return reply_message(r, 404, msg, true);
        }

        {
                _cleanup_(freep) char *msg = NULL, *idstr = NULL;
                _cleanup_(strv_freep) char **urls = NULL;
                bool known = false;
                unsigned status = 0;

                for (size_t i = 0; i < n; i++)
                        if (ms[i].id == id)
                                known = true;
                if (asprintf(&idstr, "%" PRIx64, id) < 0) {
                        members_free(ms, n);
                        return -ENOMEM;
                }

                if (streq(method, "PUT")) {
                        status = parse_member_body(r, &urls, &msg);
                        /* UpdateMember() of a removed ID: ErrIDRemoved, which the PUT handler (2.3.8 and
                         * 3.4 alike) has no case for: a 500, unlike DELETE's 410 */
                        if (status == 0 && member_id_removed(st, idstr)) {
                                status = 500;
                                msg = strdup("Internal Server Error");
                        }
                        if (status == 0 && !known) {
                                status = 404;
                                (void) asprintf(&msg, "No such member: %s", idstr);
                        }
                        for (size_t i = 0; status == 0 && i < n; i++) {
                                if (ms[i].id == id)
                                        continue;
                                STRV_FOREACH(u, urls)
                                        if (strv_contains(ms[i].peer_urls, *u)) {
                                                status = 409;
                                                msg = strdup("membership: peerURL exists");
                                                break;
                                        }
                        }
                } else if (member_id_removed(st, idstr)) {
                        status = 410;
                        (void) asprintf(&msg, "Member permanently removed: %s", idstr);
                } else if (!known) {
                        status = 404;
                        (void) asprintf(&msg, "No such member: %s", idstr);
                }
                members_free(ms, n);
                if (status == 0)
                        return member_change(r, method, id, TAKE_PTR(urls));
                ret = reply_message(r, status, msg ?: "Internal Server Error", true);
        }
        return ret;
}

/* --- stats, version, health, machines ------------------------------------------------------- */

static int handle_stats(ApiRequest *r, const char *method, const char *which) {
        Server *s = req_server(r);
        HttpBuf b = {};
        int k;

        if (!streq(method, "GET"))
                return reply_method_not_allowed(r, "GET");

        if (streq(which, "store")) {
                char *json = store_stats_json(req_store(r));

                if (!json)
                        return -ENOMEM;
                add_cors(r);
                http_reply_ref(r->http, 200, CONTENT_TYPE_JSON, json, strlen(json), free, json);
                return 0;
        }

        if (streq(which, "leader")) {
                if (server_role(s) != SERVER_ROLE_LEADER)
                        return reply_message(r, 403, "not current leader", false);
                {
                        ServerFollowerStats *fs = NULL;
                        size_t nf = 0;

                        if (server_follower_stats(s, &fs, &nf) < 0)
                                return reply_message(r, 403, "not current leader", false);
                        k = http_buf_printf(&b, "{\"leader\":\"%" PRIx64 "\",\"followers\":{", server_member_id(s));
                        for (size_t i = 0; k >= 0 && i < nf; i++)
                                k = http_buf_printf(&b, "%s\"%" PRIx64 "\":{\"latency\":{\"current\":%g,\"average\":%g,"
                                                    "\"standardDeviation\":%g,\"minimum\":%g,\"maximum\":%g},"
                                                    "\"counts\":{\"fail\":%" PRIu64 ",\"success\":%" PRIu64 "}}",
                                                    i > 0 ? "," : "", fs[i].id, fs[i].latency_current_ms,
                                                    fs[i].latency_average_ms, fs[i].latency_stddev_ms,
                                                    fs[i].latency_min_ms, fs[i].latency_max_ms, fs[i].n_fail,
                                                    fs[i].n_success);
                        free(fs);
                        if (k >= 0)
                                k = http_buf_puts(&b, "}}");
                        if (k < 0) {
                                http_buf_done(&b);
                                return -ENOMEM;
                        }
                }
                return reply_json_buf(r, 200, &b, false);
        }

        /* self */
        {
                const Config *c = r->api->config;
                uint64_t lstart = server_leader_start_time_usec(s), now = now_usec();

                k = http_buf_puts(&b, "{\"name\":");
                if (k >= 0)
                        k = http_buf_json_string(&b, strempty(c->name), strlen(strempty(c->name)));
                if (k >= 0)
                        k = http_buf_printf(&b, ",\"id\":\"%" PRIx64 "\",\"state\":\"%s\",\"startTime\":\"",
                                            server_member_id(s), strempty(server_role_to_string(server_role(s))));
                if (k >= 0)
                        k = http_buf_rfc3339(&b, server_start_time_usec(s));
                if (k >= 0)
                        k = http_buf_puts(&b, "\",\"leaderInfo\":{\"leader\":\"");
                if (k >= 0 && server_leader_id(s) != 0)
                        k = http_buf_printf(&b, "%" PRIx64, server_leader_id(s));
                if (k >= 0)
                        k = http_buf_puts(&b, "\",\"uptime\":\"");
                if (k >= 0)
                        k = http_buf_go_duration(&b, (now > lstart && lstart > 0 ? now - lstart : 0) * 1000);
                if (k >= 0)
                        k = http_buf_puts(&b, "\",\"startTime\":\"");
                if (k >= 0)
                        k = lstart > 0 ? http_buf_rfc3339(&b, lstart) : http_buf_puts(&b, "0001-01-01T00:00:00Z");
                if (k >= 0) {
                        ServerSelfStats st;

                        server_self_stats(s, &st);
                        k = http_buf_printf(&b, "\"},\"recvAppendRequestCnt\":%" PRIu64 ",\"sendAppendRequestCnt\":%" PRIu64 "}",
                                            st.recv_append_requests, st.send_append_requests);
                }
                if (k < 0) {
                        http_buf_done(&b);
                        return -ENOMEM;
                }
                return reply_json_buf(r, 200, &b, false);
        }
}

static int handle_version(ApiRequest *r, const char *method) {
        const StoreNode *n = req_store(r) ? store_lookup(req_store(r), "/0/version") : NULL;
        /* etcd2: "not_decided" until the first leader recorded the cluster version */
        const char *cluster = "not_decided";
        size_t cluster_len = strlen(cluster);
        HttpBuf b = {};

        if (!streq(method, "GET"))
                return reply_method_not_allowed(r, "GET");

        /* the cluster version the members agreed on, if one was recorded */
        if (n && !store_node_is_dir(n)) {
                size_t l;
                const char *v = store_node_value(n, &l);
                if (v && l > 0) {
                        cluster = v;
                        cluster_len = l;
                }
        }
        if (http_buf_puts(&b, "{\"etcdserver\":\"" ETCD2_VERSION "\",\"etcdcluster\":") < 0 ||
            http_buf_json_string(&b, cluster, cluster_len) < 0 || http_buf_puts(&b, "}") < 0) {
                http_buf_done(&b);
                return -ENOMEM;
        }
        return reply_json_buf(r, 200, &b, false);
}

static int handle_health(ApiRequest *r, const char *method) {
        static const char ok[] = "{\"health\": \"true\"}";

        if (!streq(method, "GET"))
                return reply_method_not_allowed(r, "GET");
        /* etcd2 also waits up to 750 ms for the raft index to move; a known leader is what matters for a
         * single member, and answering at once keeps health checks cheap. */
        if (server_leader_id(req_server(r)) == 0)
                return reply_go_error(r, 503, "{\"health\": \"false\"}");
        return reply(r, 200, CONTENT_TYPE_TEXT, ok, sizeof ok - 1);
}

/* Prometheus' handler, as etcd2 mounts it on the client port: any method. */
static int handle_metrics(ApiRequest *r) {
        char *text = NULL;
        size_t len = 0;
        int k;

        k = metrics_scrape(&text, &len);
        if (k < 0)
                return k;
        add_cors(r);
        http_reply_ref(r->http, 200, METRICS_CONTENT_TYPE, text, len, free, text);
        return 0;
}

static int strcmp_ptr(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int handle_machines(ApiRequest *r, const char *method) {
        Member *ms = NULL;
        size_t n = 0, nu = 0;
        _cleanup_(freep) char **urls = NULL;
        HttpBuf b = {};
        int k = 0;

        if (!method_allowed(method, "GET,HEAD"))
                return reply_method_not_allowed(r, "GET,HEAD");

        if (members_load(req_store(r), &ms, &n) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                nu += strv_length(ms[i].client_urls);
        urls = calloc(nu + 1, sizeof(char *));
        if (!urls) {
                members_free(ms, n);
                return -ENOMEM;
        }
        nu = 0;
        for (size_t i = 0; i < n; i++)
                STRV_FOREACH(u, ms[i].client_urls)
                        urls[nu++] = *u;
        qsort(urls, nu, sizeof(char *), strcmp_ptr);
        for (size_t i = 0; k >= 0 && i < nu; i++)
                k = http_buf_printf(&b, "%s%s", i > 0 ? ", " : "", urls[i]);
        if (k >= 0 && !b.data)
                k = http_buf_puts(&b, "");
        members_free(ms, n);
        if (k < 0) {
                http_buf_done(&b);
                return -ENOMEM;
        }
        k = reply(r, 200, CONTENT_TYPE_TEXT, b.data, b.len);
        http_buf_done(&b);
        return k;
}


/* PUT /config/local/log {"Level":"DEBUG"} (2.2+): capnslog's level names, mapped to syslog levels. */
static int handle_config_log(ApiRequest *r, const char *method) {
        static const struct {
                const char *names[3];
                int level;
        } levels[] = {
                { { "CRITICAL", "C", NULL }, LOG_CRIT },
                { { "ERROR", "0", "E" }, LOG_ERR },
                { { "WARNING", "1", "W" }, LOG_WARNING },
                { { "NOTICE", "2", "N" }, LOG_NOTICE },
                { { "INFO", "3", "I" }, LOG_INFO },
                { { "DEBUG", "4", "D" }, LOG_DEBUG },
                { { "TRACE", "5", "T" }, LOG_DEBUG },
        };
        _cleanup_(freep) char *upper = NULL, *msg = NULL;
        const char *level = "";
        json_object *o;

        if (!streq(method, "PUT"))
                return reply_method_not_allowed(r, "PUT");

        o = r->http->body_too_large ? NULL : json_tokener_parse(r->http->body.data ?: "");
        if (!o || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return reply_message(r, 400, "Invalid json body", false);
        }
        /* encoding/json: every member naming the field must be a string (or null, which changes nothing);
         * the last string one is the value */
        json_object_object_foreach(o, k, v)
                if (v && go_json_key_matches(k, "level") && !json_object_is_type(v, json_type_string)) {
                        json_object_put(o);
                        return reply_message(r, 400, "Invalid json body", false);
                }
        level = strempty(json_object_get_string(go_json_field(o, "level", false)));
        upper = strdup(level);
        if (!upper || asprintf(&msg, "Invalid log level %s", level) < 0) {
                json_object_put(o);
                return -ENOMEM;
        }
        json_object_put(o);
        for (char *c = upper; *c; c++)
                *c = (char) toupper((unsigned char) *c);

        for (size_t i = 0; i < ELEMENTSOF(levels); i++)
                for (size_t j = 0; j < ELEMENTSOF(levels[i].names) && levels[i].names[j]; j++)
                        if (streq(upper, levels[i].names[j])) {
                                log_notice("Global log level set to %s.", levels[i].names[0]);
                                log_set_max_level(levels[i].level);
                                return reply(r, 204, NULL, "", 0);
                        }

        return reply_message(r, 400, msg, false);
}

/* --- peer endpoints ------------------------------------------------------------------------- */

static int handle_peer_members(ApiRequest *r, const char *method) {
        Member *ms = NULL;
        size_t n = 0;
        HttpBuf b = {};
        int k;

        if (!streq(method, "GET"))
                return reply_method_not_allowed(r, "GET");
        if (members_load(req_store(r), &ms, &n) < 0)
                return -ENOMEM;
        /* etcd2 knows its members before it serves; ours learns them from the log's first entries. Until
         * then say "not yet" rather than "none": a proxy or a joining member asks another peer. */
        if (n == 0)
                return reply_message(r, 503, "member list not known yet", true);

        /* etcdserver.Member: numeric id; name and clientURLs omitted when empty. */
        k = http_buf_puts(&b, "[");
        for (size_t i = 0; k >= 0 && i < n; i++) {
                k = http_buf_printf(&b, "%s{\"id\":%" PRIu64 ",\"peerURLs\":", i > 0 ? "," : "", ms[i].id);
                if (k >= 0)
                        k = buf_strv(&b, ms[i].peer_urls);
                if (k >= 0 && !isempty(ms[i].name)) {
                        k = http_buf_puts(&b, ",\"name\":");
                        if (k >= 0)
                                k = http_buf_json_string(&b, ms[i].name, strlen(ms[i].name));
                }
                if (k >= 0 && !strv_isempty(ms[i].client_urls)) {
                        k = http_buf_puts(&b, ",\"clientURLs\":");
                        if (k >= 0)
                                k = buf_strv(&b, ms[i].client_urls);
                }
                if (k >= 0)
                        k = http_buf_puts(&b, "}");
        }
        if (k >= 0)
                k = http_buf_puts(&b, "]\n");
        members_free(ms, n);
        if (k < 0) {
                http_buf_done(&b);
                return -ENOMEM;
        }
        return reply_json_buf(r, 200, &b, true);
}

/* --- peer stream (issue 3): `POST /raft/stream` upgraded to the peer transport (peer.h) ------- */

static PeerUpgrade *peer_upgrade_free(PeerUpgrade *u) {
        if (!u)
                return NULL;
        free(u->from);
        free(u->cluster);
        free(u->version);
        free(u->min_version);
        free(u);
        return NULL;
}

static int strdup_opt(const char *s, char **ret) {
        *ret = NULL;
        if (!s)
                return 0;
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

/* The 101 is out: the socket is the peer transport's now (it close()s it when the stream ends). */
static void on_peer_taken(int fd, gnutls_session_t tls, const void *extra, size_t extra_len, void *userdata) {
        PeerUpgrade *u = userdata;
        PeerTransport *t = server_peer_transport(u->server);

        if (fd < 0) {
                /* the connection ended before the hand-over */
                peer_upgrade_free(u);
                return;
        }
        if (!t) {
                if (tls)
                        gnutls_deinit(tls);
                (void) close(fd);
        } else
                /* On refusal peer_transport_accept() closes fd (and ends tls) itself. */
                (void) peer_transport_accept(t, fd, tls, u->from, u->cluster, u->version, u->min_version,
                                             extra, extra_len, NULL, NULL);
        peer_upgrade_free(u);
}

/* 101 for a stream we take, else the status to refuse it with. */
static int peer_stream_status(ApiRequest *r, PeerTransport *t) {
        const char *upgrade = req_header(r, "Upgrade"), *length = req_header(r, "Content-Length");

        if (!upgrade || !streq(upgrade, "etcd2-raft/1"))
                return 400;
        /* Frames follow the head, there is no body: one declared is refused, never read. */
        if ((length && !streq(length, "0")) || req_header(r, "Transfer-Encoding"))
                return 400;
        return peer_transport_check(t, req_header(r, "X-Server-From"), req_header(r, "X-Etcd-Cluster-ID"),
                                    req_header(r, "X-Server-Version"), req_header(r, "X-Min-Cluster-Version"));
}

static int peer_stream_refuse(ApiRequest *r, int status) {
        if (status == 412)
                add_cluster_id(r);
        http_response_close(r->http);
        return reply(r, (unsigned) status, NULL, "", 0);
}

/* At the head: a `POST /raft/stream` that will be refused is answered now, so that the connection is
 * closed without reading whatever body it announced. Returns true if it answered. */
static bool peer_refuse_early(ApiRequest *r) {
        PeerTransport *t = server_peer_transport(req_server(r));
        int status;

        if (!t || !streq(r->http->method, "POST") || !streq(r->http->uri, "/raft/stream"))
                return false;
        status = peer_stream_status(r, t);
        if (status == 101)
                return false;
        (void) peer_stream_refuse(r, status);
        return true;
}

static int handle_peer_stream(ApiRequest *r, const char *method) {
        PeerTransport *t = server_peer_transport(req_server(r));
        PeerUpgrade *u;
        int status;

        if (!streq(method, "POST"))
                return reply_method_not_allowed(r, "POST");
        if (!t)
                return reply_not_found(r);
        status = peer_stream_status(r, t);
        if (status != 101)
                return peer_stream_refuse(r, status);

        /* The request is gone when the socket is handed over: keep what the transport needs. */
        u = calloc(1, sizeof(PeerUpgrade));
        if (!u)
                return -ENOMEM;
        u->server = req_server(r);
        if (strdup_opt(req_header(r, "X-Server-From"), &u->from) < 0 ||
            strdup_opt(req_header(r, "X-Etcd-Cluster-ID"), &u->cluster) < 0 ||
            strdup_opt(req_header(r, "X-Server-Version"), &u->version) < 0 ||
            strdup_opt(req_header(r, "X-Min-Cluster-Version"), &u->min_version) < 0) {
                peer_upgrade_free(u);
                return -ENOMEM;
        }
        r->upgrade = u;
        http_response_header(r->http, "Upgrade", "etcd2-raft/1");
        http_upgrade(r->http, 101, on_peer_taken, u);
        return 0;
}

/* --- routing -------------------------------------------------------------------------------- */

static int reply_redirect(ApiRequest *r, const char *method, const char *clean, const char *query) {
        HttpBuf loc = {}, body = {};
        int k;

        k = http_buf_escape_path(&loc, clean);
        if (k >= 0 && !isempty(query))
                k = http_buf_printf(&loc, "?%s", query);
        if (k >= 0 && !loc.data)
                k = http_buf_puts(&loc, "/");
        if (k >= 0 && streq(method, "GET")) {
                k = http_buf_puts(&body, "<a href=\"");
                for (const char *p = loc.data; k >= 0 && *p; p++)
                        switch (*p) {
                        case '&': k = http_buf_puts(&body, "&amp;"); break;
                        case '<': k = http_buf_puts(&body, "&lt;"); break;
                        case '>': k = http_buf_puts(&body, "&gt;"); break;
                        case '"': k = http_buf_puts(&body, "&#34;"); break;
                        case '\'': k = http_buf_puts(&body, "&#39;"); break;
                        default: k = http_buf_append(&body, p, 1);
                        }
                if (k >= 0)
                        k = http_buf_puts(&body, "\">Moved Permanently</a>.\n\n");
        }
        if (k < 0) {
                http_buf_done(&loc);
                http_buf_done(&body);
                return -ENOMEM;
        }

        http_response_header(r->http, "Location", loc.data);
        k = reply(r, 301, streq(method, "GET") || streq(method, "HEAD") ? "text/html; charset=utf-8" : NULL,
                  body.data, body.len);
        http_buf_done(&loc);
        http_buf_done(&body);
        return k;
}

static int reply_bad_request(ApiRequest *r) {
        /* What Go's server answers to a request line it cannot parse; it closes the connection. */
        http_response_close(r->http);
        return reply(r, 400, CONTENT_TYPE_TEXT, "400 Bad Request", 15);
}

static const char *strip_prefix(const char *s, const char *prefix) {
        size_t l = strlen(prefix);
        return strneq(s, prefix, l) ? s + l : NULL;
}

/* --- discovery tokens (--enable-discovery-service) ------------------------------------------ */

/* discovery.etcd.io's /new?size=N: a fresh token, its _config/size written through Raft, and the URL
 * that --discovery takes. The key layout is the public service's: /_etcd/registry/<token>. */
#define DISCOVERY_REGISTRY "/_etcd/registry/"

static int reply_token(ApiRequest *r, const StoreResult *res) {
        if (res->error != ETCD_OK || !r->token_url)
                return reply_go_error(r, 400, "Unable to generate token");
        return reply(r, 200, CONTENT_TYPE_TEXT, r->token_url, strlen(r->token_url));
}

static int handle_new_token(ApiRequest *r, const char *method, const char *query) {
        _cleanup_(http_form_done) HttpForm form = {};
        _cleanup_(freep) char *form_error = NULL, *path = NULL;
        const Config *c = r->api->config;
        const HttpFormField *v;
        StoreRequest req = {};
        uint8_t raw[16];
        char token[33], size_str[24];
        unsigned long long size = 3;
        char *end;
        int k;

        if (!method_allowed(method, "GET,POST,PUT"))
                return reply_method_not_allowed(r, "GET,POST,PUT");
        if (query) {
                k = http_form_parse(&form, query, strlen(query), &form_error);
                if (k < 0 && k != -E2BIG)
                        return -ENOMEM;
                if (k == -E2BIG)
                        return reply_go_error(r, 400, "Unable to parse size");
        }
        if (form_error)
                return reply_go_error(r, 400, "Unable to parse size");
        v = http_form_get(&form, "size");
        if (v && !isempty(v->value)) {
                errno = 0;
                size = strtoull(v->value, &end, 10);
                if (errno != 0 || *end != 0 || v->value[0] == '-' || size < 1 || size > 1000)
                        return reply_go_error(r, 400, "Unable to parse size");
        }
        if (getrandom(raw, sizeof raw, 0) != (ssize_t) sizeof raw)
                return reply_go_error(r, 400, "Unable to generate token");
        for (size_t i = 0; i < sizeof raw; i++)
                (void) snprintf(token + 2 * i, 3, "%02x", raw[i]);
        (void) snprintf(size_str, sizeof size_str, "%llu", size);

        if (asprintf(&path, STORE_KEYS_PREFIX DISCOVERY_REGISTRY "%s/_config/size", token) < 0) {
                path = NULL;
                return -ENOMEM;
        }
        if (asprintf(&r->token_url, "%s/v2/keys" DISCOVERY_REGISTRY "%s",
                     c->advertise_client_urls.n > 0 ? c->advertise_client_urls.urls[0].str : "http://localhost:2379",
                     token) < 0) {
                r->token_url = NULL;
                return -ENOMEM;
        }
        r->token_op = true;

        req.method = STORE_METHOD_PUT;
        req.path = path;
        req.value = size_str;
        req.value_len = strlen(size_str);
        req.prev_exist = 0;
        req.prev_index = 0;

        /* answered from on_proposal_done() */
        k = server_propose(req_server(r), &req, on_proposal_done, r, &r->proposal);
        if (k < 0)
                return reply_token(r, &(StoreResult) { .error = ETCD_ERROR_RAFT_INTERNAL });
        return 0;
}

static int route(ApiRequest *r, const char *method) {
        _cleanup_(freep) char *decoded = NULL;
        char stack_path[256];
        const char *target = r->http->uri, *q, *rest, *path;
        size_t path_len, dlen;
        bool client = !r->api->peer;
        int k;

        /* etcd's CORS wrapper answers every OPTIONS request on the client port. */
        if (client && streq(method, "OPTIONS"))
                return reply(r, 200, NULL, "", 0);

        /* absolute-form targets: keep the path */
        if (strneq(target, "http://", 7) || strneq(target, "https://", 8)) {
                target = strchr(strstr(target, "//") + 2, '/') ?: "/";
        }
        if (target[0] != '/')
                return reply_bad_request(r);

        q = strchr(target, '?');
        path_len = q ? (size_t) (q - target) : strlen(target);
        if (q)
                q++;

        if (memchr(target, '%', path_len)) {
                k = http_unescape(target, path_len, false, &decoded, &dlen, NULL);
                if (k == -ENOMEM)
                        return -ENOMEM;
                if (k < 0 || strlen(decoded) != dlen)
                        return reply_bad_request(r);
                path = decoded;
        } else if (path_len < sizeof(stack_path)) {
                /* the common case: no escapes, no allocation */
                memcpy(stack_path, target, path_len);
                stack_path[path_len] = 0;
                path = stack_path;
        } else {
                decoded = strndup(target, path_len);
                if (!decoded)
                        return -ENOMEM;
                path = decoded;
        }

        if (!http_mux_path_is_clean(path)) {
                _cleanup_(freep) char *clean = http_mux_clean_path(path);
                if (!clean)
                        return -ENOMEM;
                if (!streq(clean, path))
                        return reply_redirect(r, method, clean, q);
        }

        if (!client) {
                if (streq(path, "/raft/stream"))
                        return handle_peer_stream(r, method);
                if (streq(path, "/members"))
                        return handle_peer_members(r, method);
                if (streq(path, "/version"))
                        return handle_version(r, method);
                return reply_not_found(r);
        }

        if ((rest = strip_prefix(path, "/v2/keys")) && (*rest == 0 || *rest == '/'))
                return handle_keys(r, method, rest, q);
        if ((rest = strip_prefix(path, "/v2/members")) && (*rest == 0 || *rest == '/'))
                return handle_members(r, method, rest);
        if ((rest = strip_prefix(path, "/v2/stats/")) && (streq(rest, "store") || streq(rest, "self") || streq(rest, "leader")))
                return handle_stats(r, method, rest);
        if (streq(path, "/v2/machines"))
                return handle_machines(r, method);
        if (streq(path, "/version"))
                return handle_version(r, method);
        if (streq(path, "/health"))
                return handle_health(r, method);
        if (streq(path, "/metrics"))
                return handle_metrics(r);
        if (streq(path, "/config/local/log"))
                return handle_config_log(r, method);
        if (streq(path, "/new") && r->api->config->enable_discovery_service)
                return handle_new_token(r, method, q);
        if ((rest = strip_prefix(path, "/v2/auth/")) &&
            (streq(rest, "enable") || streq(rest, "users") || streq(rest, "roles") ||
             strneq(rest, "users/", 6) || strneq(rest, "roles/", 6)))
                return auth_api_handle(r, method, rest);

        return reply_not_found(r);
}

/* --- the handler ----------------------------------------------------------------------------- */

static HttpBodyMode api_begin(HttpRequest *h) {
        ApiRequest *r = h->data;
        char mt[64];

        r->http = h;
        r->api = h->userdata;

        if (r->api->peer && peer_refuse_early(r))
                return HTTP_BODY_DISCARD;

        if (!streq(h->method, "PUT") && !streq(h->method, "POST"))
                return HTTP_BODY_DISCARD;
        req_media_type(r, mt, sizeof mt);
        if (streq(mt, CONTENT_TYPE_FORM) || streq(mt, "application/json") || strneq(h->uri, "/config/", 8) ||
            strneq(h->uri, "/v2/auth/", 9))
                return HTTP_BODY_READ;
        return HTTP_BODY_DISCARD;
}

void api_handle(HttpRequest *h) {
        ApiRequest *r = h->data;

        if (auth_api_prepare(r))
                return;
        if (route(r, h->method) < 0)
                reply_oom(h);
}

/* The client went away before its answer was complete: cancel what waits for it. */
static bool api_hangup(HttpRequest *h) {
        ApiRequest *r = h->data;

        /* A client that only closed its sending side still gets the answer to its write (etcd2 watches
         * for a hang-up only in watches): keep proposals and membership changes going. */
        if (r->proposal || (r->member_op && r->member_pending))
                return true;
        /* Likewise a write waiting for its bcrypt (credentials, or a new user's password): it goes on to
         * its proposal as etcd2's handler would. A read waiting for one is dropped. */
        if (r->auth_job && !streq(r->http->method, "GET") && !streq(r->http->method, "HEAD"))
                return true;

        if (r->member_op && r->member_pending) {
                server_member_cancel(req_server(r), r);
                r->member_pending = false;
        }
        auth_job_cancel(r->auth_job);
        r->auth_job = NULL;
        if (r->proposal) {
                server_proposal_cancel(r->proposal);
                r->proposal = NULL;
        }
        r->watcher = store_watcher_free(r->watcher);
        r->watch_done = true;
        r->watching = false;
        /* on_peer_taken() runs in any case (fd -1 when the socket is never handed over) and frees it */
        r->upgrade = NULL;
        return false;
}

static void api_drained(HttpRequest *h) {
        watch_flush(h->data);
}

static void api_done(HttpRequest *h) {
        ApiRequest *r = h->data;

        if (!r->api)   /* begin() never ran */
                return;
        /* Nothing but a hang-up ends a request with these still pending; be safe all the same. */
        if (r->member_op && r->member_pending)
                server_member_cancel(req_server(r), r);
        if (r->proposal)
                server_proposal_cancel(r->proposal);
        r->proposal = NULL;
        r->watcher = store_watcher_free(r->watcher);
        /* r->upgrade: on_peer_taken() runs after done() and frees it, or a hang-up freed it */
        r->upgrade = NULL;
        r->member_urls = strv_free(r->member_urls);
        r->token_url = mfree_ptr(r->token_url);
        auth_api_request_done(r);
        for (size_t i = 0; i < r->n_queue; i++)
                event_release(r->queue[i]);
        r->queue = mfree_ptr(r->queue);
        r->n_queue = r->queue_alloc = 0;
}

const HttpHandler client_api_handler = {
        .data_size = sizeof(ApiRequest),
        .begin = api_begin,
        .handle = api_handle,
        .hangup = api_hangup,
        .drained = api_drained,
        .done = api_done,
};

int client_api_new(Server *server, const Config *config, bool peer, ClientApi **ret) {
        ClientApi *a;

        assert(server);
        assert(config);
        assert(ret);

        a = calloc(1, sizeof(ClientApi));
        if (!a)
                return -ENOMEM;
        *a = (ClientApi) { .server = server, .config = config, .peer = peer };
        *ret = a;
        return 0;
}

ClientApi *client_api_free(ClientApi *a) {
        if (!a)
                return NULL;
        auth_worker_free(a->auth_worker);
        free(a);
        return NULL;
}
