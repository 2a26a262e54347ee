/* SPDX-License-Identifier: Apache-2.0 */
/* client-api.c - the v2 client API and the peer endpoints, answered as etcd2 v2.3.8 answers them. */

/*
 * One function per endpoint, each fed one libmicrohttpd request by http-server.c once its body is in.
 * What a client sees is etcd2's etcdhttp package behind Go's ServeMux and etcd's CORS wrapper:
 *  - OPTIONS is answered 200 with no body before anything else (pkg/cors), for any path;
 *  - a path that path.Clean would change gets a 301 to the clean path (ServeMux), query kept;
 *  - each handler first checks its methods (405 with "Allow: A,B"), then sets X-Etcd-Cluster-ID;
 *  - key errors are etcd error JSON with X-Etcd-Index, everything else {"message":"..."}.
 *
 * Plain reads are answered from the local store right away. Writes and quorum reads become proposals:
 * the connection is suspended until the proposal's callback, then resumed, and libmicrohttpd calls the
 * handler again, which queues the answer. Watches queue a chunked response at once (etcd2 flushes the
 * headers immediately) whose reader hands out the events; with nothing to send, the reader suspends
 * the connection and the watcher callback resumes it.
 */

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <json-c/json.h>

#include <sys/socket.h>

#include "client-api.h"
#include "peer.h"
#include "config-build.h"
#include "log.h"
#include "macro.h"
#include "members.h"

#define STRLEN(s) (sizeof(s) - 1)
#define WATCH_QUEUE_MAX 100      /* etcd2: each watcher's channel holds 100 events, then it is dropped */
#define CONTENT_TYPE_JSON "application/json"
#define CONTENT_TYPE_TEXT "text/plain; charset=utf-8"
#define CONTENT_TYPE_FORM "application/x-www-form-urlencoded"
#define AUTH_NOT_SUPPORTED "v2 auth is not supported yet by this etcd2"
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

static void *mfree_ptr(void *p) {
        free(p);
        return NULL;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static Server *req_server(HttpRequest *r) {
        return http_daemon_server(r->daemon);
}

static Store *req_store(HttpRequest *r) {
        return server_store(req_server(r));
}

static const char *req_header(HttpRequest *r, const char *name) {
        return MHD_lookup_connection_value(r->connection, MHD_HEADER_KIND, name);
}

/* The media type of Content-Type, without parameters, lower-cased into buf ("" if absent). */
static const char *req_media_type(HttpRequest *r, char *buf, size_t size) {
        const char *ct = req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
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

/* --- responses ------------------------------------------------------------------------------ */

static void add_cors(HttpRequest *r, struct MHD_Response *resp) {
        const Config *c = http_daemon_config(r->daemon);
        const char *origin = NULL;

        if (http_daemon_kind(r->daemon) != HTTP_LISTENER_CLIENT || !c->cors)
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

        (void) MHD_add_response_header(resp, "Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE");
        (void) MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
        (void) MHD_add_response_header(resp, "Access-Control-Allow-Headers", "accept, content-type, authorization");
}

void client_api_add_cors(HttpRequest *r, struct MHD_Response *resp) {
        add_cors(r, resp);
}

/* u64 as decimal or lower-case hex into buf (at least 21 bytes); returns buf. snprintf() was ~2 % of a
 * GET's CPU with four such headers per response. */
static const char *format_u64(char *buf, uint64_t v, unsigned base) {
        char tmp[24];
        size_t n = 0, i = 0;

        do {
                tmp[n++] = "0123456789abcdef"[v % base];
                v /= base;
        } while (v > 0);
        while (n > 0)
                buf[i++] = tmp[--n];
        buf[i] = 0;
        return buf;
}

static void add_cluster_id(HttpRequest *r, struct MHD_Response *resp) {
        char buf[24];

        (void) MHD_add_response_header(resp, "X-Etcd-Cluster-Id", format_u64(buf, server_cluster_id(req_server(r)), 16));
}

static void add_uint_header(struct MHD_Response *resp, const char *name, uint64_t v) {
        char buf[24];

        (void) MHD_add_response_header(resp, name, format_u64(buf, v, 10));
}

static void add_raft_headers(HttpRequest *r, struct MHD_Response *resp) {
        add_uint_header(resp, "X-Raft-Index", server_raft_index(req_server(r)));
        add_uint_header(resp, "X-Raft-Term", server_raft_term(req_server(r)));
}

static enum MHD_Result queue(HttpRequest *r, unsigned status, struct MHD_Response *resp) {
        enum MHD_Result ret;

        if (!resp) {
                log_oom();
                return MHD_NO;
        }
        add_cors(r, resp);
        ret = MHD_queue_response(r->connection, status, resp);
        MHD_destroy_response(resp);
        if (r->state != HTTP_REQUEST_WATCHING)
                r->state = HTTP_REQUEST_QUEUED;
        return ret;
}

static struct MHD_Response *resp_copy(const char *body, size_t len) {
        return MHD_create_response_from_buffer(len, (void *) body, MHD_RESPMEM_MUST_COPY);
}

static struct MHD_Response *resp_typed(const char *content_type, const char *body, size_t len) {
        struct MHD_Response *resp = resp_copy(body, len);

        if (resp && content_type)
                (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
        return resp;
}

/* Go's http.Error(): text/plain, the text and a newline. */
static struct MHD_Response *resp_go_error(const char *text) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "%s\n", text);

        return resp_typed(CONTENT_TYPE_TEXT, buf, (size_t) MIN(n, (int) sizeof buf - 1));
}

static enum MHD_Result reply_not_found(HttpRequest *r) {
        return queue(r, MHD_HTTP_NOT_FOUND, resp_go_error("404 page not found"));
}

static enum MHD_Result reply_method_not_allowed(HttpRequest *r, const char *allow) {
        struct MHD_Response *resp = resp_go_error("Method Not Allowed");

        if (resp)
                (void) MHD_add_response_header(resp, "Allow", allow);
        return queue(r, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
}

static bool method_allowed(const char *method, const char *allow) {
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
static enum MHD_Result reply_message(HttpRequest *r, unsigned status, const char *message, bool cluster_id) {
        HttpBuf b = {};
        struct MHD_Response *resp = NULL;

        if (http_buf_puts(&b, "{\"message\":") >= 0 &&
            http_buf_json_string(&b, message, strlen(message)) >= 0 &&
            http_buf_puts(&b, "}") >= 0)
                resp = resp_typed(CONTENT_TYPE_JSON, b.data, b.len);
        http_buf_done(&b);
        if (resp && cluster_id)
                add_cluster_id(r, resp);
        return queue(r, status, resp);
}

static enum MHD_Result reply_etcd_error(HttpRequest *r, EtcdError e, const char *cause, uint64_t index, unsigned status) {
        struct MHD_Response *resp;
        size_t len;
        char *json;

        json = etcd_error_to_json(e, cause, index, &len);
        if (!json)
                return MHD_NO;
        resp = MHD_create_response_from_buffer(len, json, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(json);
                return MHD_NO;
        }
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
        add_cluster_id(r, resp);
        add_uint_header(resp, "X-Etcd-Index", index);
        return queue(r, status ?: (unsigned) etcd_error_http_status(e), resp);
}

static void event_unref_cb(void *cls) {
        store_event_json_unpin(cls);
        store_event_unref(cls);
}

static enum MHD_Result reply_event(HttpRequest *r, StoreEvent *e, uint64_t etcd_index) {
        struct MHD_Response *resp;
        unsigned status = MHD_HTTP_OK;

        const char *json;
        size_t json_len;

        if (e->action == STORE_ACTION_CREATE || (e->action == STORE_ACTION_SET && !e->has_prev))
                status = MHD_HTTP_CREATED;

        /* The event is rendered at answer time (the history keeps it raw) and the JSON is shared by
         * every answer that pins it meanwhile: one pin and one reference per response. */
        json = store_event_json(e, &json_len);
        if (!json)
                return MHD_NO;
        resp = MHD_create_response_from_buffer_with_free_callback_cls(json_len, (void *) json, event_unref_cb, e);
        if (!resp) {
                store_event_json_unpin(e);
                return MHD_NO;
        }
        store_event_ref(e);

        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
        add_cluster_id(r, resp);
        add_uint_header(resp, "X-Etcd-Index", etcd_index);
        add_raft_headers(r, resp);
        return queue(r, status, resp);
}

static enum MHD_Result reply_result(HttpRequest *r, StoreResult *res) {
        if (res->error != ETCD_OK)
                /* etcd2 turns server errors (timeouts, stopped, ...) into errorCode 300 with index 0 */
                return reply_etcd_error(r, res->error, res->cause,
                                        res->error == ETCD_ERROR_RAFT_INTERNAL ? 0 : res->index, 0);
        if (!res->event)
                return reply_etcd_error(r, ETCD_ERROR_RAFT_INTERNAL, "received response with no Event/Watcher!", 0, 0);
        return reply_event(r, res->event, res->index);
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

        /* noValueOnSuccess came with etcd 3.1: 2.3.8 ignores it, whatever its value. */

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

static void on_proposal_done(StoreResult *res, void *userdata) {
        HttpRequest *r = userdata;

        r->proposal = NULL;
        r->result.error = res->error;
        r->result.index = res->index;
        r->result.cause = res->cause ? strdup(res->cause) : NULL;
        r->result.event = res->event ? store_event_ref(res->event) : NULL;
        r->state = HTTP_REQUEST_ANSWERED;
        http_request_resume(r);
}

/* Takes the reference to e; pins its JSON until it has been sent. */
static int watch_push(HttpRequest *r, StoreEvent *e) {
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

static int on_watch_event(StoreWatcher *w, StoreEvent *e, void *userdata) {
        HttpRequest *r = userdata;
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
        if (r->suspended)
                http_request_resume(r);
        return k;
}

static ssize_t watch_reader(void *cls, uint64_t pos, char *buf, size_t max) {
        HttpRequest *r = cls;

        if (r->hung_up)
                return MHD_CONTENT_READER_END_WITH_ERROR;

        if (r->n_queue > 0) {
                StoreEvent *e = r->queue[0];
                size_t n = MIN(e->json_len - r->queue_offset, max); /* pinned: rendered */

                memcpy(buf, e->json + r->queue_offset, n);
                r->queue_offset += n;
                if (r->queue_offset >= e->json_len) {
                        store_event_json_unpin(e);
                        store_event_unref(e);
                        memmove(r->queue, r->queue + 1, (r->n_queue - 1) * sizeof(StoreEvent *));
                        r->n_queue--;
                        r->queue_offset = 0;
                }
                return (ssize_t) n;
        }

        if (r->watch_done)
                return MHD_CONTENT_READER_END_OF_STREAM;

        /* Nothing to send: park the connection until the watcher fires (or the client hangs up). */
        http_request_suspend(r);
        return 0;
}

static enum MHD_Result start_watch(HttpRequest *r, const KeyParams *p) {
        _cleanup_(freep) char *cause = NULL;
        Store *st = req_store(r);
        uint64_t start_index = store_index(st);
        StoreWatcher *w = NULL;
        StoreEvent *e = NULL;
        struct MHD_Response *resp;
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
                        return MHD_NO;
                }
                /* etcd2 (store/watcher_hub.go): an event found in the history is all such a watcher ever
                 * gets, even with stream=true, since it is never registered with the hub. A stream then
                 * stays open and silent until the client goes away. */
                if (!p->stream)
                        r->watch_done = true;
        }

        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, watch_reader, r, NULL);
        if (!resp)
                return MHD_NO;
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
        add_cluster_id(r, resp);
        add_uint_header(resp, "X-Etcd-Index", start_index);
        add_raft_headers(r, resp);
        r->state = HTTP_REQUEST_WATCHING;
        return queue(r, MHD_HTTP_OK, resp);
}

/* etcd answers every form it cannot parse with errorCode 210 and the parser's text as the cause; it has
 * no field cap of its own (see HTTP_FORM_FIELDS_MAX, which this text names), so this cause is ours. */
#define TOO_MANY_FIELDS "too many form fields (more than 10000)"

static enum MHD_Result handle_keys(HttpRequest *r, const char *method, const char *key, const char *query) {
        _cleanup_(http_form_done) HttpForm form = {};
        _cleanup_(freep) char *form_error = NULL;
        KeyParams p = {};
        const char *cause = NULL;
        StoreRequest req = {};
        EtcdError e;
        int k;

        if (!method_allowed(method, "HEAD,GET,PUT,POST,DELETE"))
                return reply_method_not_allowed(r, "HEAD,GET,PUT,POST,DELETE");

        if (r->body_too_large)
                return reply_etcd_error(r, ETCD_ERROR_INVALID_FORM, "http: POST too large", 0, 0);

        /* Go's ParseForm: the form body (POST/PUT only) comes first, then the query. */
        if (r->body.len > 0 && (streq(method, "PUT") || streq(method, "POST"))) {
                char mt[64];
                if (streq(req_media_type(r, mt, sizeof mt), CONTENT_TYPE_FORM)) {
                        k = http_form_parse(&form, r->body.data, r->body.len, &form_error);
                        if (k == -E2BIG)
                                return reply_etcd_error(r, ETCD_ERROR_INVALID_FORM, TOO_MANY_FIELDS, 0, 0);
                        if (k < 0)
                                return MHD_NO;
                }
        }
        if (query) {
                k = http_form_parse(&form, query, strlen(query), &form_error);
                if (k == -E2BIG)
                        return reply_etcd_error(r, ETCD_ERROR_INVALID_FORM, TOO_MANY_FIELDS, 0, 0);
                if (k < 0)
                        return MHD_NO;
        }
        if (form_error)
                return reply_etcd_error(r, ETCD_ERROR_INVALID_FORM, form_error, 0, 0);

        e = parse_key_params(&form, method, &p, &cause);
        if (e != ETCD_OK)
                return reply_etcd_error(r, e, cause, 0, 0);

        /* path.Join("/1", key): the mux left key clean ("" or "/..." with at most a trailing slash) */
        {
                size_t kl = strlen(key);
                if (kl > 0 && key[kl - 1] == '/')
                        kl--;
                p.path = malloc(STRLEN(STORE_KEYS_PREFIX) + kl + 1);
                if (!p.path)
                        return MHD_NO;
                memcpy(p.path, STORE_KEYS_PREFIX, STRLEN(STORE_KEYS_PREFIX));
                memcpy(p.path + STRLEN(STORE_KEYS_PREFIX), key, kl);
                p.path[STRLEN(STORE_KEYS_PREFIX) + kl] = 0;
        }

        if (streq(method, "HEAD") || (streq(method, "GET") && !p.quorum)) {
                StoreResult res = {};
                enum MHD_Result ret;

                if (p.wait) {
                        ret = start_watch(r, &p);
                        free(p.path);
                        return ret;
                }

                k = store_get(req_store(r), p.path, p.recursive, p.sorted, now_usec(), &res);
                free(p.path);
                if (k < 0)
                        return MHD_NO;
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

        r->state = HTTP_REQUEST_PROPOSING;
        k = server_propose(req_server(r), &req, on_proposal_done, r, &r->proposal);
        free(p.path);
        if (k < 0) {
                r->state = HTTP_REQUEST_NEW;
                return reply_etcd_error(r, ETCD_ERROR_RAFT_INTERNAL, strerror(-k), 0, 0);
        }
        if (r->state == HTTP_REQUEST_ANSWERED) {
                /* The contract says the callback never runs inside server_propose(); cope anyway. */
                enum MHD_Result ret = reply_result(r, &r->result);
                store_result_done(&r->result);
                return ret;
        }

        http_request_suspend_brief(r);
        return MHD_YES;
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

static enum MHD_Result reply_json_buf(HttpRequest *r, unsigned status, HttpBuf *b, bool cluster_id) {
        struct MHD_Response *resp = resp_typed(CONTENT_TYPE_JSON, b->data, b->len);

        http_buf_done(b);
        if (resp && cluster_id)
                add_cluster_id(r, resp);
        return queue(r, status, resp);
}

/* Validates a member request body as etcd2's unmarshalRequest() + types.NewURLs() do. Returns an HTTP
 * status (0 on success) with *ret_message, and the peer URLs. */
static unsigned parse_member_body(HttpRequest *r, char ***ret_urls, char **ret_message) {
        _cleanup_(strv_freep) char **urls = NULL;
        json_object *o = NULL, *a;
        const char *ct = req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
        enum json_tokener_error jerr;
        size_t n;

        if (!ct || !streq(ct, "application/json")) {
                if (asprintf(ret_message, "Bad Content-Type %s, accept application/json", strempty(ct)) < 0)
                        *ret_message = NULL;
                return MHD_HTTP_UNSUPPORTED_MEDIA_TYPE;
        }
        if (r->body_too_large) {
                *ret_message = strdup("http: request body too large");
                return MHD_HTTP_CONTENT_TOO_LARGE;
        }

        o = json_tokener_parse_verbose(r->body.data ?: "", &jerr);
        if (!o || !json_object_is_type(o, json_type_object)) {
                if (asprintf(ret_message, "invalid JSON: %s", o ? "not an object" : json_tokener_error_desc(jerr)) < 0)
                        *ret_message = NULL;
                json_object_put(o);
                return MHD_HTTP_BAD_REQUEST;
        }

        if (!json_object_object_get_ex(o, "peerURLs", &a) || json_object_is_type(a, json_type_null))
                n = 0;
        else if (!json_object_is_type(a, json_type_array)) {
                json_object_put(o);
                *ret_message = strdup("json: cannot unmarshal peerURLs into Go value of type []string");
                return MHD_HTTP_BAD_REQUEST;
        } else
                n = json_object_array_length(a);

        if (n == 0) {
                json_object_put(o);
                *ret_message = strdup("no valid URLs given");
                return MHD_HTTP_BAD_REQUEST;
        }

        urls = calloc(n + 1, sizeof(char *));
        if (!urls) {
                json_object_put(o);
                return MHD_HTTP_INTERNAL_SERVER_ERROR;
        }
        for (size_t i = 0; i < n; i++) {
                json_object *s = json_object_array_get_idx(a, i);
                _cleanup_(freep) char *err = NULL;
                EtcdUrl u = {};

                if (!json_object_is_type(s, json_type_string)) {
                        json_object_put(o);
                        *ret_message = strdup("json: cannot unmarshal value into Go value of type string");
                        return MHD_HTTP_BAD_REQUEST;
                }
                if (etcd_url_parse(json_object_get_string(s), &u, &err) < 0) {
                        json_object_put(o);
                        *ret_message = err ? TAKE_PTR(err) : strdup("invalid URL");
                        return MHD_HTTP_BAD_REQUEST;
                }
                urls[i] = strdup(u.str);
                etcd_url_done(&u);
                if (!urls[i]) {
                        json_object_put(o);
                        return MHD_HTTP_INTERNAL_SERVER_ERROR;
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

static void on_member_done(int error, uint64_t id, void *userdata) {
        HttpRequest *r = userdata;

        r->member_error = error;
        r->member_id = id;
        r->state = HTTP_REQUEST_ANSWERED;
        http_request_resume(r);
}

/* etcd2's writeError() for the members endpoints. */
static enum MHD_Result reply_member(HttpRequest *r) {
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
                                return MHD_NO;
                        }
                        return reply_json_buf(r, MHD_HTTP_CREATED, &b, true);
                }
                {
                        struct MHD_Response *resp = resp_copy("", 0);

                        if (resp)
                                add_cluster_id(r, resp);
                        return queue(r, MHD_HTTP_NO_CONTENT, resp);
                }
        case -EEXIST:
                return reply_message(r, MHD_HTTP_CONFLICT, "etcdserver: member ID already exist", true);
        case -EADDRINUSE:
                return reply_message(r, MHD_HTTP_CONFLICT, "etcdserver: peerURL exists", true);
        case -ENOENT:
                if (asprintf(&msg, "No such member: %s", idstr) < 0)
                        return MHD_NO;
                return reply_message(r, MHD_HTTP_NOT_FOUND, msg, true);
        case -EIDRM:
                if (r->member_urls)   /* an add: etcd2 answers 500 here, not the documented 409/410 */
                        break;
                if (asprintf(&msg, "Member permanently removed: %s", idstr) < 0)
                        return MHD_NO;
                return reply_message(r, MHD_HTTP_GONE, msg, true);
        default:
                break;
        }
        return reply_message(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "Internal Server Error", true);
}

static int member_url_cmp(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static enum MHD_Result member_change(HttpRequest *r, const char *method, uint64_t id, char **urls) {
        Server *s = req_server(r);
        int k;

        /* etcd2 answers (and stores) the peer URLs sorted. */
        if (urls)
                qsort(urls, strv_length(urls), sizeof(char *), member_url_cmp);

        r->member_op = true;
        r->member_id = id;
        r->state = HTTP_REQUEST_PROPOSING;
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
                r->member_error = k;
                r->state = HTTP_REQUEST_NEW;
                return reply_member(r);
        }
        http_request_suspend(r);
        return MHD_YES;
}

static enum MHD_Result handle_members(HttpRequest *r, const char *method, const char *rest) {
        Store *st = req_store(r);
        Member *ms = NULL;
        size_t n = 0;
        HttpBuf b = {};
        enum MHD_Result ret;
        uint64_t id;
        char *end;

        if (!method_allowed(method, "GET,POST,DELETE,PUT"))
                return reply_method_not_allowed(r, "GET,POST,DELETE,PUT");

        /* strings.TrimPrefix(path, "/v2/members") then TrimPrefix "/" */
        if (*rest == '/')
                rest++;

        if (members_load(st, &ms, &n) < 0)
                return MHD_NO;

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
                                return reply_message(r, MHD_HTTP_SERVICE_UNAVAILABLE, "During election", true);
                        }
                        k = buf_member(&b, m);
                        if (k >= 0)
                                k = http_buf_puts(&b, "\n");
                } else {
                        members_free(ms, n);
                        return reply_message(r, MHD_HTTP_NOT_FOUND, "Not found", true);
                }
                members_free(ms, n);
                if (k < 0) {
                        http_buf_done(&b);
                        return MHD_NO;
                }
                return reply_json_buf(r, MHD_HTTP_OK, &b, true);
        }

        if (streq(method, "POST")) {
                _cleanup_(strv_freep) char **urls = NULL;
                _cleanup_(freep) char *msg = NULL;
                unsigned status = parse_member_body(r, &urls, &msg);

                if (status == 0) {
                        /* A peer URL already used by a member is a conflict (etcdserver: peerURL exists). */
                        for (size_t i = 0; i < n && status == 0; i++)
                                STRV_FOREACH(u, urls)
                                        if (strv_contains(ms[i].peer_urls, *u)) {
                                                status = MHD_HTTP_CONFLICT;
                                                msg = strdup("etcdserver: peerURL exists");
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
                return queue(r, MHD_HTTP_METHOD_NOT_ALLOWED, resp_go_error("Method Not Allowed"));
        }

        errno = 0;
        id = strtoull(rest, &end, 16);
        if (errno != 0 || *end || !isxdigit((unsigned char) rest[0])) {
                _cleanup_(freep) char *msg = NULL;
                members_free(ms, n);
                if (asprintf(&msg, "No such member: %s", rest) < 0)
                        return MHD_NO;
                return reply_message(r, MHD_HTTP_NOT_FOUND, msg, true);
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
                        return MHD_NO;
                }

                if (streq(method, "PUT")) {
                        status = parse_member_body(r, &urls, &msg);
                        if (status == 0 && !known) {
                                status = MHD_HTTP_NOT_FOUND;
                                (void) asprintf(&msg, "No such member: %s", idstr);
                        }
                        for (size_t i = 0; status == 0 && i < n; i++) {
                                if (ms[i].id == id)
                                        continue;
                                STRV_FOREACH(u, urls)
                                        if (strv_contains(ms[i].peer_urls, *u)) {
                                                status = MHD_HTTP_CONFLICT;
                                                msg = strdup("etcdserver: peerURL exists");
                                                break;
                                        }
                        }
                } else if (member_id_removed(st, idstr)) {
                        status = MHD_HTTP_GONE;
                        (void) asprintf(&msg, "Member permanently removed: %s", idstr);
                } else if (!known) {
                        status = MHD_HTTP_NOT_FOUND;
                        (void) asprintf(&msg, "No such member: %s", idstr);
                }
                members_free(ms, n);
                if (status == 0)
                        return member_change(r, method, id, TAKE_PTR(urls));
                ret = reply_message(r, status, msg ?: "Internal Server Error", true);
        }
        return ret;
}

/* --- stats, version, health, machines, auth ------------------------------------------------- */

static enum MHD_Result handle_stats(HttpRequest *r, const char *method, const char *which) {
        Server *s = req_server(r);
        HttpBuf b = {};
        int k;

        if (!streq(method, "GET"))
                return reply_method_not_allowed(r, "GET");

        if (streq(which, "store")) {
                char *json = store_stats_json(req_store(r));
                struct MHD_Response *resp;

                if (!json)
                        return MHD_NO;
                resp = MHD_create_response_from_buffer(strlen(json), json, MHD_RESPMEM_MUST_FREE);
                if (!resp) {
                        free(json);
                        return MHD_NO;
                }
                (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
                return queue(r, MHD_HTTP_OK, resp);
        }

        if (streq(which, "leader")) {
                if (server_role(s) != SERVER_ROLE_LEADER)
                        return reply_message(r, MHD_HTTP_FORBIDDEN, "not current leader", false);
                {
                        ServerFollowerStats *fs = NULL;
                        size_t nf = 0;

                        if (server_follower_stats(s, &fs, &nf) < 0)
                                return reply_message(r, MHD_HTTP_FORBIDDEN, "not current leader", false);
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
                                return MHD_NO;
                        }
                }
                return reply_json_buf(r, MHD_HTTP_OK, &b, false);
        }

        /* self */
        {
                const Config *c = http_daemon_config(r->daemon);
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
                        return MHD_NO;
                }
                return reply_json_buf(r, MHD_HTTP_OK, &b, false);
        }
}

static enum MHD_Result handle_version(HttpRequest *r, const char *method) {
        const StoreNode *n = req_store(r) ? store_lookup(req_store(r), "/0/version") : NULL;
        const char *cluster = ETCD2_CLUSTER_VERSION;
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
                return MHD_NO;
        }
        return reply_json_buf(r, MHD_HTTP_OK, &b, false);
}

static enum MHD_Result handle_health(HttpRequest *r, const char *method) {
        static const char ok[] = "{\"health\": \"true\"}";

        if (!streq(method, "GET"))
                return reply_method_not_allowed(r, "GET");
        /* etcd2 also waits up to 750 ms for the raft index to move; a known leader is what matters for a
         * single member, and answering at once keeps health checks cheap. */
        if (server_leader_id(req_server(r)) == 0)
                return queue(r, MHD_HTTP_SERVICE_UNAVAILABLE, resp_go_error("{\"health\": \"false\"}"));
        return queue(r, MHD_HTTP_OK, resp_typed(CONTENT_TYPE_TEXT, ok, sizeof ok - 1));
}

static int strcmp_ptr(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static enum MHD_Result handle_machines(HttpRequest *r, const char *method) {
        Member *ms = NULL;
        size_t n = 0, nu = 0;
        _cleanup_(freep) char **urls = NULL;
        HttpBuf b = {};
        struct MHD_Response *resp;
        int k = 0;

        if (!method_allowed(method, "GET,HEAD"))
                return reply_method_not_allowed(r, "GET,HEAD");

        if (members_load(req_store(r), &ms, &n) < 0)
                return MHD_NO;
        for (size_t i = 0; i < n; i++)
                nu += strv_length(ms[i].client_urls);
        urls = calloc(nu + 1, sizeof(char *));
        if (!urls) {
                members_free(ms, n);
                return MHD_NO;
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
                return MHD_NO;
        }
        resp = resp_typed(CONTENT_TYPE_TEXT, b.data, b.len);
        http_buf_done(&b);
        return queue(r, MHD_HTTP_OK, resp);
}

static enum MHD_Result handle_auth(HttpRequest *r, const char *method, const char *what) {
        if (streq(what, "enable")) {
                if (!method_allowed(method, "GET,PUT,DELETE"))
                        return reply_method_not_allowed(r, "GET,PUT,DELETE");
                if (streq(method, "GET")) {
                        static const char body[] = "{\"enabled\":false}\n";
                        struct MHD_Response *resp = resp_typed(CONTENT_TYPE_JSON, body, sizeof body - 1);
                        if (resp)
                                add_cluster_id(r, resp);
                        return queue(r, MHD_HTTP_OK, resp);
                }
                /* Auth is never on and no root user can exist: what etcd2 answers then. */
                if (streq(method, "DELETE"))
                        return reply_message(r, MHD_HTTP_CONFLICT, "auth: already disabled", true);
                return reply_message(r, MHD_HTTP_CONFLICT, "auth: No root user available, please create one", true);
        }
        return reply_message(r, MHD_HTTP_NOT_IMPLEMENTED, AUTH_NOT_SUPPORTED, true);
}

/* PUT /config/local/log {"Level":"DEBUG"} (2.2+): capnslog's level names, mapped to syslog levels. */
static enum MHD_Result handle_config_log(HttpRequest *r, const char *method) {
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

        o = r->body_too_large ? NULL : json_tokener_parse(r->body.data ?: "");
        if (!o || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return reply_message(r, MHD_HTTP_BAD_REQUEST, "Invalid json body", false);
        }
        /* encoding/json matches field names case-insensitively */
        json_object_object_foreach(o, k, v)
                if (strcasecmp(k, "level") == 0) {
                        if (!json_object_is_type(v, json_type_string) && !json_object_is_type(v, json_type_null)) {
                                json_object_put(o);
                                return reply_message(r, MHD_HTTP_BAD_REQUEST, "Invalid json body", false);
                        }
                        level = strempty(json_object_get_string(v));
                }
        upper = strdup(level);
        if (!upper || asprintf(&msg, "Invalid log level %s", level) < 0) {
                json_object_put(o);
                return MHD_NO;
        }
        json_object_put(o);
        for (char *c = upper; *c; c++)
                *c = (char) toupper((unsigned char) *c);

        for (size_t i = 0; i < ELEMENTSOF(levels); i++)
                for (size_t j = 0; j < ELEMENTSOF(levels[i].names) && levels[i].names[j]; j++)
                        if (streq(upper, levels[i].names[j])) {
                                log_notice("Global log level set to %s.", levels[i].names[0]);
                                log_set_max_level(levels[i].level);
                                return queue(r, MHD_HTTP_NO_CONTENT, resp_copy("", 0));
                        }

        return reply_message(r, MHD_HTTP_BAD_REQUEST, msg, false);
}

/* --- peer endpoints ------------------------------------------------------------------------- */

static enum MHD_Result handle_peer_members(HttpRequest *r, const char *method) {
        Member *ms = NULL;
        size_t n = 0;
        HttpBuf b = {};
        int k;

        if (!streq(method, "GET"))
                return reply_method_not_allowed(r, "GET");
        if (members_load(req_store(r), &ms, &n) < 0)
                return MHD_NO;
        /* etcd2 knows its members before it serves; ours learns them from the log's first entries. Until
         * then say "not yet" rather than "none": a proxy or a joining member asks another peer. */
        if (n == 0)
                return reply_message(r, MHD_HTTP_SERVICE_UNAVAILABLE, "member list not known yet", true);

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
                return MHD_NO;
        }
        return reply_json_buf(r, MHD_HTTP_OK, &b, true);
}

/* --- peer stream (issue 3): `POST /raft/stream` upgraded to the peer transport (peer.h) ------- */

typedef struct PeerStreamRelease {
        struct MHD_UpgradeResponseHandle *urh;
        HttpDaemon *daemon;
        int fd;
} PeerStreamRelease;

static void peer_stream_release(void *userdata) {
        PeerStreamRelease *u = userdata;

        /* The peer sees the end now, not when libmicrohttpd gets round to closing the socket. */
        (void) shutdown(u->fd, SHUT_RDWR);
        (void) MHD_upgrade_action(u->urh, MHD_UPGRADE_ACTION_CLOSE);
        http_daemon_wake(u->daemon);
        free(u);
}

static void on_peer_upgrade(void *cls, struct MHD_Connection *connection, void *req_cls, const char *extra_in,
                            size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh) {
        HttpDaemon *d = cls;
        PeerTransport *t = server_peer_transport(http_daemon_server(d));
        PeerStreamRelease *u = malloc(sizeof(PeerStreamRelease));

        if (!t || !u) {
                free(u);
                (void) MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
                http_daemon_wake(d);
                return;
        }
        *u = (PeerStreamRelease) { .urh = urh, .daemon = d, .fd = sock };
        /* On refusal peer_transport_accept() calls peer_stream_release() itself. */
        (void) peer_transport_accept(t, sock,
                                     MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Server-From"),
                                     MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Etcd-Cluster-ID"),
                                     MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Server-Version"),
                                     MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Min-Cluster-Version"),
                                     extra_in, extra_in_size, peer_stream_release, u);
}

/* 101 for a stream we take, else the status to refuse it with. */
static int peer_stream_status(HttpRequest *r, PeerTransport *t) {
        struct MHD_Connection *c = r->connection;
        const char *upgrade = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_UPGRADE),
                   *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);

        if (!upgrade || !streq(upgrade, "etcd2-raft/1"))
                return MHD_HTTP_BAD_REQUEST;
        /* Frames follow the head, there is no body: one declared is refused, never read. */
        if ((length && !streq(length, "0")) ||
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
                return MHD_HTTP_BAD_REQUEST;
        return peer_transport_check(t, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Server-From"),
                                    MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Etcd-Cluster-ID"),
                                    MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Server-Version"),
                                    MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Min-Cluster-Version"));
}

static enum MHD_Result peer_stream_refuse(HttpRequest *r, int status) {
        struct MHD_Response *resp = resp_copy("", 0);

        if (resp && status == MHD_HTTP_PRECONDITION_FAILED)
                add_cluster_id(r, resp);
        if (resp)
                (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
        return queue(r, (unsigned) status, resp);
}

bool client_api_peer_refuse_early(HttpRequest *r, const char *method, enum MHD_Result *ret) {
        PeerTransport *t = server_peer_transport(req_server(r));
        int status;

        if (!t || !streq(method, "POST") || !streq(r->uri, "/raft/stream"))
                return false;
        status = peer_stream_status(r, t);
        if (status == MHD_HTTP_SWITCHING_PROTOCOLS)
                return false;
        *ret = peer_stream_refuse(r, status);
        return true;
}

static enum MHD_Result handle_peer_stream(HttpRequest *r, const char *method) {
        PeerTransport *t = server_peer_transport(req_server(r));
        struct MHD_Response *resp;
        int status;

        if (!streq(method, "POST"))
                return reply_method_not_allowed(r, "POST");
        if (!t)
                return reply_not_found(r);
        status = peer_stream_status(r, t);
        if (status != MHD_HTTP_SWITCHING_PROTOCOLS)
                return peer_stream_refuse(r, status);
        resp = MHD_create_response_for_upgrade(on_peer_upgrade, r->daemon);
        if (!resp)
                return MHD_NO;
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "etcd2-raft/1");
        return queue(r, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
}

/* --- routing -------------------------------------------------------------------------------- */

static enum MHD_Result reply_redirect(HttpRequest *r, const char *method, const char *clean, const char *query) {
        HttpBuf loc = {}, body = {};
        struct MHD_Response *resp;
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
                return MHD_NO;
        }

        resp = resp_copy(body.data ?: "", body.len);
        if (resp) {
                if (streq(method, "GET") || streq(method, "HEAD"))
                        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
                (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, loc.data);
        }
        http_buf_done(&loc);
        http_buf_done(&body);
        return queue(r, MHD_HTTP_MOVED_PERMANENTLY, resp);
}

static enum MHD_Result reply_bad_request(HttpRequest *r) {
        /* What Go's server answers to a request line it cannot parse; it closes the connection. */
        struct MHD_Response *resp = resp_typed(CONTENT_TYPE_TEXT, "400 Bad Request", 15);

        if (resp)
                (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
        return queue(r, MHD_HTTP_BAD_REQUEST, resp);
}

static const char *strip_prefix(const char *s, const char *prefix) {
        size_t l = strlen(prefix);
        return strneq(s, prefix, l) ? s + l : NULL;
}

/* --- discovery tokens (--enable-discovery-service) ------------------------------------------ */

/* discovery.etcd.io's /new?size=N: a fresh token, its _config/size written through Raft, and the URL
 * that --discovery takes. The key layout is the public service's: /_etcd/registry/<token>. */
#define DISCOVERY_REGISTRY "/_etcd/registry/"

static enum MHD_Result reply_token(HttpRequest *r) {
        const StoreResult *res = &r->result;

        if (res->error != ETCD_OK || !r->token_url)
                return queue(r, MHD_HTTP_BAD_REQUEST, resp_go_error("Unable to generate token"));
        return queue(r, MHD_HTTP_OK, resp_typed(CONTENT_TYPE_TEXT, r->token_url, strlen(r->token_url)));
}

static enum MHD_Result handle_new_token(HttpRequest *r, const char *method, const char *query) {
        _cleanup_(http_form_done) HttpForm form = {};
        _cleanup_(freep) char *form_error = NULL, *path = NULL;
        const Config *c = http_daemon_config(r->daemon);
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
                        return MHD_NO;
                if (k == -E2BIG)
                        return queue(r, MHD_HTTP_BAD_REQUEST, resp_go_error("Unable to parse size"));
        }
        if (form_error)
                return queue(r, MHD_HTTP_BAD_REQUEST, resp_go_error("Unable to parse size"));
        v = http_form_get(&form, "size");
        if (v && !isempty(v->value)) {
                errno = 0;
                size = strtoull(v->value, &end, 10);
                if (errno != 0 || *end != 0 || v->value[0] == '-' || size < 1 || size > 1000)
                        return queue(r, MHD_HTTP_BAD_REQUEST, resp_go_error("Unable to parse size"));
        }
        if (getrandom(raw, sizeof raw, 0) != (ssize_t) sizeof raw)
                return queue(r, MHD_HTTP_BAD_REQUEST, resp_go_error("Unable to generate token"));
        for (size_t i = 0; i < sizeof raw; i++)
                (void) snprintf(token + 2 * i, 3, "%02x", raw[i]);
        (void) snprintf(size_str, sizeof size_str, "%llu", size);

        if (asprintf(&path, STORE_KEYS_PREFIX DISCOVERY_REGISTRY "%s/_config/size", token) < 0) {
                path = NULL;
                return MHD_NO;
        }
        if (asprintf(&r->token_url, "%s/v2/keys" DISCOVERY_REGISTRY "%s",
                     c->advertise_client_urls.n > 0 ? c->advertise_client_urls.urls[0].str : "http://localhost:2379",
                     token) < 0) {
                r->token_url = NULL;
                return MHD_NO;
        }
        r->token_op = true;

        req.method = STORE_METHOD_PUT;
        req.path = path;
        req.value = size_str;
        req.value_len = strlen(size_str);
        req.prev_exist = 0;
        req.prev_index = 0;

        r->state = HTTP_REQUEST_PROPOSING;
        k = server_propose(req_server(r), &req, on_proposal_done, r, &r->proposal);
        if (k < 0) {
                r->state = HTTP_REQUEST_NEW;
                r->result.error = ETCD_ERROR_RAFT_INTERNAL;
                return reply_token(r);
        }
        if (r->state == HTTP_REQUEST_ANSWERED)
                return reply_token(r);
        http_request_suspend_brief(r);
        return MHD_YES;
}

static enum MHD_Result route(HttpRequest *r, const char *method) {
        _cleanup_(freep) char *decoded = NULL;
        char stack_path[256];
        const char *target = r->uri, *q, *rest, *path;
        size_t path_len, dlen;
        bool client = http_daemon_kind(r->daemon) == HTTP_LISTENER_CLIENT;
        int k;

        /* etcd's CORS wrapper answers every OPTIONS request on the client port. */
        if (client && streq(method, "OPTIONS"))
                return queue(r, MHD_HTTP_OK, resp_copy("", 0));

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
                        return MHD_NO;
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
                        return MHD_NO;
                path = decoded;
        }

        if (!http_mux_path_is_clean(path)) {
                _cleanup_(freep) char *clean = http_mux_clean_path(path);
                if (!clean)
                        return MHD_NO;
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
        if (streq(path, "/config/local/log"))
                return handle_config_log(r, method);
        if (streq(path, "/new") && http_daemon_config(r->daemon)->enable_discovery_service)
                return handle_new_token(r, method, q);
        if ((rest = strip_prefix(path, "/v2/auth/")) &&
            (streq(rest, "enable") || streq(rest, "users") || streq(rest, "roles") ||
             strneq(rest, "users/", 6) || strneq(rest, "roles/", 6)))
                return handle_auth(r, method, rest);

        return reply_not_found(r);
}

/* --- entry points for http-server.c --------------------------------------------------------- */

void client_api_begin(HttpRequest *r, const char *method) {
        char mt[64];

        r->head = streq(method, "HEAD");
        if (!streq(method, "PUT") && !streq(method, "POST"))
                return;
        req_media_type(r, mt, sizeof mt);
        r->want_body = streq(mt, CONTENT_TYPE_FORM) || streq(mt, "application/json") ||
                       strneq(r->uri, "/config/", 8);
}

enum MHD_Result client_api_handle(HttpRequest *r, const char *method) {
        enum MHD_Result ret;

        if (r->hung_up)
                return MHD_NO;

        switch (r->state) {
        case HTTP_REQUEST_NEW:
                return route(r, method);
        case HTTP_REQUEST_ANSWERED:
                if (r->member_op)
                        return reply_member(r);
                if (r->token_op) {
                        ret = reply_token(r);
                        store_result_done(&r->result);
                        return ret;
                }
                ret = reply_result(r, &r->result);
                store_result_done(&r->result);
                return ret;
        case HTTP_REQUEST_PROPOSING:
                /* resumed without an answer: only a hang-up does that */
                return MHD_NO;
        default:
                return MHD_YES;
        }
}

void client_api_hangup(HttpRequest *r) {
        if (r->member_op && r->state == HTTP_REQUEST_PROPOSING)
                server_member_cancel(req_server(r), r);
        if (r->proposal) {
                server_proposal_cancel(r->proposal);
                r->proposal = NULL;
        }
        r->watcher = store_watcher_free(r->watcher);
        r->watch_done = true;
}

void client_api_request_done(HttpRequest *r) {
        client_api_hangup(r);
        r->member_op = false;
        r->member_urls = strv_free(r->member_urls);
        r->token_op = false;
        r->token_url = mfree_ptr(r->token_url);
        store_result_done(&r->result);
        for (size_t i = 0; i < r->n_queue; i++) {
                store_event_json_unpin(r->queue[i]);
                store_event_unref(r->queue[i]);
        }
        r->queue = mfree_ptr(r->queue);
        r->n_queue = r->queue_alloc = r->queue_offset = 0;
}
