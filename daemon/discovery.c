/* SPDX-License-Identifier: Apache-2.0 */
/* discovery.c - etcd2's discovery client (discovery/discovery.go of etcd 2.3.8) on libcurl + sd-event. */

/*
 * One Discovery runs one JoinCluster or GetCluster as a chain of single HTTP requests, each a fresh
 * CurlRequest in collect mode (the long-poll watch too: etcd answers a watch with exactly one event):
 *
 *   join:  SIZE -> LIST (checkCluster, fast fail if full) -> CREATE -> CONFIRM -> SIZE -> LIST -> WATCH*
 *   get:   SIZE -> LIST -> WATCH*
 *
 * `registered` tells the LIST step where to go next, so a retry (or a re-list after a watch answered
 * 401 "index cleared") simply restarts at SIZE, as waitNodesRetry() calls checkCluster() again.
 *
 * The discovery URL is split into an endpoint and a cluster key, and requests go to endpoint + key
 * with no /v2/keys inserted (the Go client is created with key prefix ""). Only "cluster unreachable"
 * answers are retried during checkCluster and the wait loop, after 2 s, 4 s, 8 s, ...; everything else
 * (key not found, bad JSON, a failed PUT) ends the discovery with etcd2's message.
 *
 * Invariant: whenever the done callback runs, nothing of `d` is touched afterwards (the callback may
 * free it); every path that finishes returns right after finish().
 */

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "discovery.h"
#include "log.h"

/* client.DefaultRequestTimeout of the Go client: SIZE, LIST and CREATE; watches have none. */
#define DISCOVERY_REQUEST_TIMEOUT_USEC (5 * USEC_PER_SEC)
/* The Go transport: 30 s dial timeout, 30 s TCP keep-alive. */
#define DISCOVERY_CONNECT_TIMEOUT_SEC 30L
#define DISCOVERY_KEEPALIVE_SEC 30L
/* Our deviation: etcd2 doubles the sleep without bound (2^n s for retry n, effectively forever after a
 * long outage: 2^20 s is 12 days); we stop doubling at 64 s so that a discovery service that comes back
 * is noticed within a minute. */
#define DISCOVERY_BACKOFF_MAX_USEC (64 * USEC_PER_SEC)

#define STRERROR(r) strerror(-(r))

/* client.ErrInvalidJSON */
#define INVALID_JSON "client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint."

typedef enum DiscoveryStep {
        STEP_NONE,
        STEP_SIZE,      /* GET <key>/_config/size */
        STEP_LIST,      /* GET <key> */
        STEP_CREATE,    /* PUT <key>/<id>?prevExist=false */
        STEP_CONFIRM,   /* GET <key>/<id>?wait=true&waitIndex=<createdIndex>: the write is visible */
        STEP_WATCH,     /* GET <key>?wait=true&recursive=true&waitIndex=N */
} DiscoveryStep;

typedef struct DiscoveryNode {
        char *name;             /* last path component of the key: the member ID in hex */
        char *value;
        uint64_t created_index;
} DiscoveryNode;

struct Discovery {
        sd_event *event;
        CurlGlue *glue;

        char *url;              /* --discovery as given: the token in messages */
        char *endpoint;         /* scheme://host[:port] */
        char *cluster;          /* the cluster key: the URL path, "/" + components, no trailing "/" */
        char *proxy;            /* NULL: none */

        bool running, join, registered;
        char *self_name;        /* self ID in hex (types.ID.String()); "0" for GetCluster */
        char *self_value;
        char *member_name;      /* the name in self_value, for the duplicate-ID message */
        discovery_done_t cb;
        void *userdata;

        DiscoveryStep step;
        CurlRequest *req;
        uint64_t etcd_index;    /* X-Etcd-Index of the last answer */
        bool have_etcd_index;

        sd_event_source *retry_timer;
        unsigned retries;       /* never reset, like discovery.retries */

        int size;
        DiscoveryNode *nodes;
        size_t n_nodes;
        uint64_t wait_index;
};

uint64_t discovery_backoff_usec(unsigned retries) {
        /* retryTime := time.Second * (0x1 << d.retries), with retries counted from 1. */
        if (retries == 0)
                return 0;
        if (retries >= 6)
                return DISCOVERY_BACKOFF_MAX_USEC;
        return MIN(((uint64_t) 1 << retries) * USEC_PER_SEC, DISCOVERY_BACKOFF_MAX_USEC);
}

int discovery_split_url(const char *url, char **ret_endpoint, char **ret_cluster) {
        _cleanup_(freep) char *endpoint = NULL, *cluster = NULL;
        const char *p, *host, *path, *end;
        size_t n = 0;

        assert(url);

        /* url.Parse(): token = u.Path, endpoint = the URL without path (and we drop ?query/#fragment,
         * which a discovery URL never has). */
        p = strstr(url, "://");
        if (!p || p == url)
                return -EINVAL;
        for (const char *s = url; s < p; s++)
                if (!isalnum((unsigned char) *s) && !strchr("+-.", *s))
                        return -EINVAL;
        host = p + 3;
        path = host + strcspn(host, "/?#");
        if (path == host)
                return -EINVAL;
        end = path + strcspn(path, "?#");

        endpoint = strndup(url, path - url);
        cluster = malloc(end - path + 2);
        if (!endpoint || !cluster)
                return -ENOMEM;

        /* path.Join("/", token): one leading slash, no empty components, no trailing slash. */
        for (const char *s = path; s < end; s++) {
                if (*s == '/' && (n == 0 || cluster[n - 1] == '/'))
                        continue;
                if (n == 0)
                        cluster[n++] = '/';
                cluster[n++] = *s;
        }
        if (n > 0 && cluster[n - 1] == '/')
                n--;
        cluster[n] = 0;

        if (ret_endpoint)
                *ret_endpoint = TAKE_PTR(endpoint);
        if (ret_cluster)
                *ret_cluster = TAKE_PTR(cluster);
        return 0;
}

/* types.NewURLs() for one peer URL: http or https, host:port, nothing else. */
static bool peer_url_valid(const char *u, size_t len) {
        const char *host, *colon, *end = u + len;

        if (len > 7 && strneq(u, "http://", 7))
                host = u + 7;
        else if (len > 8 && strneq(u, "https://", 8))
                host = u + 8;
        else
                return false;

        /* "URL must not contain a path", not even "/". */
        for (const char *s = host; s < end; s++)
                if (strchr("/?#", *s))
                        return false;

        colon = NULL;
        for (const char *s = host; s < end; s++)
                if (*s == ':')
                        colon = s;
        if (!colon || colon == host || colon + 1 == end)
                return false;
        if (*host == '[' && colon[-1] != ']')
                return false;
        for (const char *s = colon + 1; s < end; s++)
                if (!isdigit((unsigned char) *s))
                        return false;
        return true;
}

int discovery_validate_cluster(const char *cluster, int size, char **ret_bad) {
        _cleanup_(freep) char *copy = NULL;
        char **names = NULL, **urls = NULL;
        size_t n_names = 0, n_urls = 0, n_pairs = 1;
        int r = 0;

        assert(cluster);

        /* nodesToCluster(): types.NewURLsMap() must parse the joined string (ErrInvalidURL), the number
         * of distinct names must be the size (ErrDuplicateName); then the cluster built from it must not
         * repeat a peer URL (etcdserver's cluster validation). */
        for (const char *s = cluster; *s; s++)
                if (*s == ',')
                        n_pairs++;
        copy = strdup(cluster);
        names = calloc(n_pairs, sizeof(char *));
        urls = calloc(n_pairs, sizeof(char *));
        if (!copy || !names || !urls) {
                r = -ENOMEM;
                goto finish;
        }

        for (char *pair = copy, *next; pair; pair = next) {
                char *eq;
                bool seen = false;

                next = strchr(pair, ',');
                if (next)
                        *next++ = 0;
                eq = strchr(pair, '=');
                if (!eq || eq == pair || !peer_url_valid(eq + 1, strlen(eq + 1))) {
                        r = -EINVAL;
                        if (ret_bad)
                                *ret_bad = strdup(pair);
                        goto finish;
                }
                *eq = 0;
                for (size_t i = 0; i < n_names; i++)
                        if (streq(names[i], pair))
                                seen = true;
                if (!seen)
                        names[n_names++] = pair;
                for (size_t i = 0; i < n_urls; i++)
                        if (streq(urls[i], eq + 1)) {
                                r = -EADDRINUSE;
                                if (ret_bad)
                                        *ret_bad = strdup(eq + 1);
                                goto finish;
                        }
                urls[n_urls++] = eq + 1;
        }

        if (size < 0 || n_names != (size_t) size)
                r = -ENOTUNIQ;

finish:
        free(names);
        free(urls);
        return r;
}

static void nodes_clear(Discovery *d) {
        for (size_t i = 0; i < d->n_nodes; i++) {
                free(d->nodes[i].name);
                free(d->nodes[i].value);
        }
        free(d->nodes);
        d->nodes = NULL;
        d->n_nodes = 0;
}

int discovery_new(sd_event *event, CurlGlue *glue, const char *url, const char *http_proxy, Discovery **ret) {
        _cleanup_(discovery_freep) Discovery *d = NULL;
        int r;

        assert(event);
        assert(glue);
        assert(url);
        assert(ret);

        d = calloc(1, sizeof(Discovery));
        if (!d)
                return -ENOMEM;
        d->event = sd_event_ref(event);
        d->glue = glue;
        d->url = strdup(url);
        if (!d->url)
                return -ENOMEM;

        r = discovery_split_url(url, &d->endpoint, &d->cluster);
        if (r == -EINVAL)
                return log_error_errno(r, "discovery: invalid URL '%s'", url);
        if (r < 0)
                return r;

        if (!isempty(http_proxy)) {
                /* newProxyFunc(): a proxy without an http(s) scheme gets "http://" prepended. */
                if (strneq(http_proxy, "http", 4) && strstr(http_proxy, "://"))
                        d->proxy = strdup(http_proxy);
                else if (asprintf(&d->proxy, "http://%s", http_proxy) < 0)
                        d->proxy = NULL;
                if (!d->proxy)
                        return -ENOMEM;
                log_info("discovery: using proxy \"%s\"", d->proxy);
        }

        *ret = TAKE_PTR(d);
        return 0;
}

Discovery *discovery_free(Discovery *d) {
        if (!d)
                return NULL;

        d->req = curl_request_free(d->req);
        d->retry_timer = sd_event_source_disable_unref(d->retry_timer);
        nodes_clear(d);
        sd_event_unref(d->event);
        free(d->url);
        free(d->endpoint);
        free(d->cluster);
        free(d->proxy);
        free(d->self_name);
        free(d->self_value);
        free(d->member_name);
        free(d);
        return NULL;
}

/* The done callback, last thing on every path: it may free `d`. */
static void finish(Discovery *d, int error, bool full, const char *cluster) {
        discovery_done_t cb = d->cb;
        void *userdata = d->userdata;

        d->running = false;
        d->step = STEP_NONE;
        d->req = curl_request_free(d->req);
        if (cb)
                cb(d, error, full, cluster, userdata);
}

/* A fatal discovery error with etcd2's wording: JoinCluster's errors come back to etcdmain wrapped in
 * etcdserver.DiscoveryError ("failed to join discovery cluster (...)") followed by the two "discovery
 * token ... was used" lines; GetCluster's are printed as they are by plog.Fatalf(). */
static void fail(Discovery *d, int error, const char *format, ...) _printf_(3, 4);
static void fail(Discovery *d, int error, const char *format, ...) {
        _cleanup_(freep) char *msg = NULL;
        va_list ap;

        assert(error < 0);

        va_start(ap, format);
        if (vasprintf(&msg, format, ap) < 0)
                msg = NULL;
        va_end(ap);

        if (d->join) {
                log_error("failed to join discovery cluster (%s)", strempty(msg));
                log_info("discovery token %s was used, but failed to bootstrap the cluster.", d->url);
                log_info("please generate a new discovery token and try to bootstrap again.");
        } else
                log_error("%s", strempty(msg));

        finish(d, error, false, NULL);
}

static char *nodes_join(const DiscoveryNode *nodes, size_t n) {
        size_t len = 1;
        char *s, *p;

        for (size_t i = 0; i < n; i++)
                len += strlen(nodes[i].value) + 1;
        s = p = malloc(len);
        if (!s)
                return NULL;
        *p = 0;
        for (size_t i = 0; i < n; i++)
                p = stpcpy(stpcpy(p, i > 0 ? "," : ""), nodes[i].value);
        return s;
}

static void finish_cluster(Discovery *d, const DiscoveryNode *nodes, size_t n, bool full) {
        _cleanup_(freep) char *s = NULL, *bad = NULL;
        int r;

        s = nodes_join(nodes, n);
        if (!s)
                return fail(d, log_oom(), "out of memory");

        /* JoinCluster found the cluster full before registering: the caller falls back to a proxy (or
         * exits) and gets the first `size` registrations for it, unchecked as etcd2 does not look at
         * them on that path. */
        if (full && d->join)
                return finish(d, 0, true, s);

        r = discovery_validate_cluster(s, d->size, &bad);
        if (r == -ENOTUNIQ) {
                if (d->join) {
                        log_error("member with duplicated name has registered with discovery service "
                                  "token(%s).", d->url);
                        log_error("please check (cURL) the discovery token for more information.");
                        log_error("please do not reuse the discovery token and generate a new one to "
                                  "bootstrap the cluster.");
                } else
                        log_error("discovery: found duplicate name");
                return finish(d, r, false, NULL);
        }
        if (r == -EINVAL)
                return fail(d, r, "discovery: invalid URL");
        if (r == -EADDRINUSE)
                return fail(d, -EINVAL, "duplicate url %s in cluster config", strempty(bad));
        if (r < 0)
                return fail(d, r, "out of memory");

        finish(d, 0, full, s);
}

/* ---- requests ---- */

static void on_request_done(CurlRequest *req, CURLcode result, void *userdata);

static size_t on_header(char *buffer, size_t size, size_t nitems, void *userdata) {
        Discovery *d = userdata;
        size_t n = size * nitems;
        static const char name[] = "x-etcd-index:";

        if (n > sizeof(name) - 1 && strncasecmp(buffer, name, sizeof(name) - 1) == 0) {
                char tmp[32];
                size_t k = MIN(n - (sizeof(name) - 1), sizeof(tmp) - 1);
                char *e;
                unsigned long long v;

                memcpy(tmp, buffer + sizeof(name) - 1, k);
                tmp[k] = 0;
                errno = 0;
                v = strtoull(tmp, &e, 10);
                if (errno == 0 && e != tmp) {
                        d->etcd_index = v;
                        d->have_etcd_index = true;
                }
        }
        return n;
}

static int start_request(Discovery *d, DiscoveryStep step, const char *url, const char *put_body,
                         uint64_t timeout_usec) {
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        CURL *easy;
        int r;

        d->req = curl_request_free(d->req);

        r = curl_request_new(d->glue, url, &req);
        if (r < 0)
                return r;
        curl_request_set_timeout(req, timeout_usec);
        curl_request_set_userdata(req, d);
        /* A directory listing of a big token is still small; 16 MiB is plenty. */
        curl_request_set_body_max(req, CURL_REQUEST_BODY_MAX_DEFAULT);

        easy = curl_request_get_easy(req);
        if (curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_HEADERDATA, d) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT, DISCOVERY_CONNECT_TIMEOUT_SEC) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_TCP_KEEPIDLE, DISCOVERY_KEEPALIVE_SEC) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_TCP_KEEPINTVL, DISCOVERY_KEEPALIVE_SEC) != CURLE_OK ||
            /* The Go client follows redirects (10 hops at most), for PUT too (307 keeps method and body). */
            curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 1L) != CURLE_OK ||
            curl_easy_setopt(easy, CURLOPT_MAXREDIRS, 10L) != CURLE_OK ||
            /* HTTP/1.1 as Go's client of etcd2's time: over TLS libcurl would offer h2 by ALPN */
            curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1) != CURLE_OK)
                return -EIO;
        if (d->proxy && curl_easy_setopt(easy, CURLOPT_PROXY, d->proxy) != CURLE_OK)
                return -EIO;
        r = curl_glue_set_system_roots(easy); /* Go trusts the system's roots for discovery */
        if (r < 0)
                return r;

        if (put_body) {
                r = curl_request_add_header(req, "Content-Type: application/x-www-form-urlencoded");
                if (r < 0)
                        return r;
                r = curl_request_set_body(req, "PUT", put_body, strlen(put_body));
                if (r < 0)
                        return r;
        }

        d->etcd_index = 0;
        d->have_etcd_index = false;
        r = curl_request_start(req, on_request_done);
        if (r < 0)
                return r;

        d->step = step;
        d->req = TAKE_PTR(req);
        return 0;
}

static int start_size(Discovery *d) {
        _cleanup_(freep) char *url = NULL;

        log_debug("discovery: checking cluster %s%s", d->endpoint, d->cluster);
        if (asprintf(&url, "%s%s/_config/size", d->endpoint, d->cluster) < 0)
                return -ENOMEM;
        return start_request(d, STEP_SIZE, url, NULL, DISCOVERY_REQUEST_TIMEOUT_USEC);
}

static int start_list(Discovery *d) {
        _cleanup_(freep) char *url = NULL;

        if (asprintf(&url, "%s%s?quorum=false&recursive=false&sorted=false", d->endpoint,
                     isempty(d->cluster) ? "/" : d->cluster) < 0)
                return -ENOMEM;
        return start_request(d, STEP_LIST, url, NULL, DISCOVERY_REQUEST_TIMEOUT_USEC);
}

static int start_create(Discovery *d) {
        _cleanup_(freep) char *url = NULL, *body = NULL;
        char *esc;

        if (asprintf(&url, "%s%s/%s?prevExist=false", d->endpoint, d->cluster, d->self_name) < 0)
                return -ENOMEM;
        esc = curl_easy_escape(NULL, d->self_value, 0);
        if (!esc)
                return -ENOMEM;
        if (asprintf(&body, "value=%s", esc) < 0) {
                curl_free(esc);
                return -ENOMEM;
        }
        curl_free(esc);
        return start_request(d, STEP_CREATE, url, body, DISCOVERY_REQUEST_TIMEOUT_USEC);
}

static int start_confirm(Discovery *d, uint64_t created_index) {
        _cleanup_(freep) char *url = NULL;

        /* createSelf(): a watcher on the own key with AfterIndex createdIndex-1 answers at once if the
         * server we talk to has applied the write. */
        if (asprintf(&url, "%s%s/%s?wait=true&waitIndex=%" PRIu64, d->endpoint, d->cluster, d->self_name,
                     created_index) < 0)
                return -ENOMEM;
        return start_request(d, STEP_CONFIRM, url, NULL, 0);
}

static int start_watch(Discovery *d) {
        _cleanup_(freep) char *url = NULL;

        if (asprintf(&url, "%s%s?wait=true&recursive=true&waitIndex=%" PRIu64, d->endpoint,
                     isempty(d->cluster) ? "/" : d->cluster, d->wait_index) < 0)
                return -ENOMEM;
        return start_request(d, STEP_WATCH, url, NULL, 0);
}

/* In a step's handler: go on with the next request, or end the discovery if it cannot even start. */
static void next(Discovery *d, int r) {
        if (r < 0)
                fail(d, r, "discovery: failed to start request: %s", STRERROR(r));
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Discovery *d = userdata;

        next(d, start_size(d));
        return 0;
}

/* logAndBackoffForRetry() */
static void retry_later(Discovery *d, const char *what, const char *detail) {
        uint64_t delay;
        int r;

        /* ClusterError.Detail(), then etcd2's retry line. */
        log_error("error #0: %s", detail);
        d->retries++;
        delay = discovery_backoff_usec(d->retries);
        log_warning("discovery: cluster unreachable, %s: error connecting to %s, retrying in %" PRIu64 "s",
                    what, d->endpoint, delay / USEC_PER_SEC);

        d->req = curl_request_free(d->req);
        d->step = STEP_NONE;
        if (d->retry_timer) {
                r = sd_event_source_set_time_relative(d->retry_timer, delay);
                if (r >= 0)
                        r = sd_event_source_set_enabled(d->retry_timer, SD_EVENT_ONESHOT);
        } else {
                r = sd_event_add_time_relative(d->event, &d->retry_timer, CLOCK_MONOTONIC, delay,
                                               USEC_PER_MSEC, on_retry, d);
                if (r >= 0)
                        (void) sd_event_source_set_description(d->retry_timer, "discovery-retry");
        }
        if (r < 0)
                return fail(d, r, "discovery: failed to arm retry timer: %s", strerror(-r));
}

/* ---- answers ---- */

typedef enum Answer {
        ANSWER_OK,              /* 2xx with a JSON object */
        ANSWER_UNREACHABLE,     /* transport error or 5xx: client.ClusterError, retried where etcd2 does */
        ANSWER_ETCD_ERROR,      /* an etcd error object (errorCode) */
        ANSWER_BAD_JSON,        /* client.ErrInvalidJSON */
} Answer;

typedef struct Reply {
        Answer answer;
        json_object *json;
        int error_code;
        char *detail;           /* unreachable: ClusterError detail; etcd error: client.Error.Error() */
} Reply;

static void reply_done(Reply *r) {
        json_object_put(r->json);
        free(r->detail);
}

static void classify(Discovery *d, CurlRequest *req, CURLcode result, Reply *ret) {
        json_object *code = NULL, *m = NULL, *c = NULL, *i = NULL;
        const char *body;
        long status;

        *ret = (Reply) {};

        status = curl_request_status(req);
        if (result != CURLE_OK) {
                /* Connection refused, reset, DNS, timeouts: etcd2 counts all but its own context deadline
                 * as "cluster unreachable"; we count the 5 s timeouts in too (a hung discovery server is
                 * as unreachable as a dead one). */
                const char *e = curl_request_error_message(req);

                ret->answer = ANSWER_UNREACHABLE;
                if (asprintf(&ret->detail, "%s", !isempty(e) ? e : curl_easy_strerror(result)) < 0)
                        ret->detail = NULL;
                return;
        }
        if (status / 100 == 5) {
                ret->answer = ANSWER_UNREACHABLE;
                if (status == 500 || status == 503) {
                        if (asprintf(&ret->detail, "client: etcd member %s has no leader", d->endpoint) < 0)
                                ret->detail = NULL;
                } else if (asprintf(&ret->detail, "client: etcd member %s returns server error [%ld]",
                                    d->endpoint, status) < 0)
                        ret->detail = NULL;
                return;
        }

        body = curl_request_body(req, NULL);
        ret->json = body ? json_tokener_parse(body) : NULL;
        if (!ret->json || !json_object_is_type(ret->json, json_type_object)) {
                ret->answer = ANSWER_BAD_JSON;
                return;
        }
        if (status / 100 == 2) {
                ret->answer = ANSWER_OK;
                return;
        }
        if (!json_object_object_get_ex(ret->json, "errorCode", &code)) {
                ret->answer = ANSWER_BAD_JSON;
                return;
        }

        /* client.Error.Error(): "%v: %v (%v) [%v]", as 2.3 prints it for a missing size key. */
        (void) json_object_object_get_ex(ret->json, "message", &m);
        (void) json_object_object_get_ex(ret->json, "cause", &c);
        (void) json_object_object_get_ex(ret->json, "index", &i);
        ret->answer = ANSWER_ETCD_ERROR;
        ret->error_code = json_object_get_int(code);
        if (asprintf(&ret->detail, "%d: %s (%s) [%" PRIu64 "]", ret->error_code,
                     m ? json_object_get_string(m) : "", c ? json_object_get_string(c) : "",
                     i ? json_object_get_uint64(i) : 0) < 0)
                ret->detail = NULL;
}

static int etcd_error_to_errno(int code) {
        switch (code) {
        case 100: /* KeyNotFound */
                return -ENOENT;
        case 105: /* NodeExist */
                return -EEXIST;
        default:
                return -EPROTO;
        }
}

static const char *node_base(const char *key) {
        const char *s = strrchr(key, '/');
        return s ? s + 1 : key;
}

static json_object *get_node(json_object *j) {
        json_object *n = NULL;

        if (!json_object_object_get_ex(j, "node", &n) || !json_object_is_type(n, json_type_object))
                return NULL;
        return n;
}

static const char *node_string(json_object *n, const char *field) {
        json_object *v = NULL;

        if (!n || !json_object_object_get_ex(n, field, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

static uint64_t node_u64(json_object *n, const char *field) {
        json_object *v = NULL;

        if (!n || !json_object_object_get_ex(n, field, &v))
                return 0;
        return json_object_get_uint64(v);
}

static int node_cmp(const void *a, const void *b) {
        const DiscoveryNode *x = a, *y = b;

        return x->created_index < y->created_index ? -1 : x->created_index > y->created_index;
}

static int nodes_append(Discovery *d, const char *name, const char *value, uint64_t created_index) {
        DiscoveryNode *n;

        n = realloc(d->nodes, (d->n_nodes + 1) * sizeof(DiscoveryNode));
        if (!n)
                return -ENOMEM;
        d->nodes = n;
        n = &d->nodes[d->n_nodes];
        *n = (DiscoveryNode) {
                .name = strdup(name),
                .value = strdup(value ?: ""),
                .created_index = created_index,
        };
        if (!n->name || !n->value) {
                free(n->name);
                free(n->value);
                return -ENOMEM;
        }
        d->n_nodes++;
        return 0;
}

static void wait_nodes(Discovery *d);

/* The answers most steps take alike: unreachable (where not retried), a body that is not JSON, an etcd
 * error (its "code: message (cause)" text goes up as etcd2's client error does). */
static void fail_reply(Discovery *d, const Reply *rp) {
        switch (rp->answer) {
        case ANSWER_UNREACHABLE:
                return fail(d, -EIO, "client: etcd cluster is unavailable or misconfigured; error #0: %s",
                            strempty(rp->detail));
        case ANSWER_BAD_JSON:
                return fail(d, -EBADMSG, "%s", INVALID_JSON);
        default:
                return fail(d, etcd_error_to_errno(rp->error_code), "%s", strempty(rp->detail));
        }
}

static void handle_size(Discovery *d, Reply *rp) {
        const char *v;
        char *e;
        long size;

        switch (rp->answer) {
        case ANSWER_UNREACHABLE:
                return retry_later(d, "cluster status check", strempty(rp->detail));
        case ANSWER_BAD_JSON:
                return fail(d, -EBADMSG, "discovery: bad discovery endpoint");
        case ANSWER_ETCD_ERROR:
                /* 2.3 means to answer ErrSizeNotFound here, but compares a *client.Error with the
                 * client.Error it gets, so the raw "100: Key not found (...)" goes up instead. */
                return fail(d, etcd_error_to_errno(rp->error_code), "%s", strempty(rp->detail));
        case ANSWER_OK:
                break;
        }

        /* strconv.Atoi(resp.Node.Value) */
        v = node_string(get_node(rp->json), "value");
        errno = 0;
        size = v ? strtol(v, &e, 10) : 0;
        if (!v || !*v || isspace((unsigned char) *v) || *e || errno != 0 ||
            size > INT32_MAX || size < INT32_MIN)
                return fail(d, -ERANGE, "discovery: size key is bad");
        d->size = (int) size;

        return next(d, start_list(d));
}

static void handle_list(Discovery *d, Reply *rp) {
        json_object *node, *children = NULL;
        bool full = false;
        size_t n;
        int r;

        switch (rp->answer) {
        case ANSWER_UNREACHABLE:
                return retry_later(d, "cluster status check", strempty(rp->detail));
        case ANSWER_BAD_JSON:
        case ANSWER_ETCD_ERROR:
                return fail_reply(d, rp);
        case ANSWER_OK:
                break;
        }

        nodes_clear(d);
        node = get_node(rp->json);
        if (node && json_object_object_get_ex(node, "nodes", &children) &&
            json_object_is_type(children, json_type_array)) {
                size_t len = json_object_array_length(children);

                for (size_t i = 0; i < len; i++) {
                        json_object *c = json_object_array_get_idx(children, i);
                        const char *key = node_string(c, "key");

                        if (!key || streq(node_base(key), "_config"))
                                continue;
                        r = nodes_append(d, node_base(key), node_string(c, "value"),
                                         node_u64(c, "createdIndex"));
                        if (r < 0)
                                return fail(d, log_oom(), "out of memory");
                }
        }
        if (d->n_nodes > 1)
                qsort(d->nodes, d->n_nodes, sizeof(DiscoveryNode), node_cmp);

        /* Find self: reaching position size-1 without meeting it means the cluster is full. */
        n = d->n_nodes;
        for (size_t i = 0; i < d->n_nodes; i++) {
                if (streq(d->nodes[i].name, d->self_name))
                        break;
                if ((long) i >= (long) d->size - 1) {
                        full = true;
                        n = d->size > 0 ? (size_t) d->size : 0;
                        break;
                }
        }

        /* The Go client takes resp.Index from X-Etcd-Index; the watch starts right after it. */
        d->wait_index = (d->have_etcd_index ? d->etcd_index : 0) + 1;

        if (full) {
                log_debug("discovery: cluster %s%s is full (%d members)", d->endpoint, d->cluster, d->size);
                return finish_cluster(d, d->nodes, n, true);
        }

        if (d->join && !d->registered) {
                return next(d, start_create(d));
                return;
        }

        wait_nodes(d);
}

static void handle_create(Discovery *d, Reply *rp) {
        switch (rp->answer) {
        case ANSWER_UNREACHABLE: /* not retried: "Fails, even on a timeout, if createSelf times out." */
        case ANSWER_BAD_JSON:
                return fail_reply(d, rp);
        case ANSWER_ETCD_ERROR:
                if (rp->error_code == 105) {
                        log_error("member %s has previously registered with discovery service token "
                                  "(%s).", strempty(d->member_name), d->url);
                        log_error("But etcd could not find valid cluster configuration in the given data dir.");
                        log_info("Please check the given data dir path if the previous bootstrap succeeded");
                        log_info("or use a new discovery token if the previous bootstrap failed.");
                        return finish(d, -EEXIST, false, NULL);
                }
                return fail_reply(d, rp);
        case ANSWER_OK:
                break;
        }

        d->registered = true;
        return next(d, start_confirm(d, node_u64(get_node(rp->json), "createdIndex")));
}

static void handle_confirm(Discovery *d, Reply *rp) {
        if (rp->answer != ANSWER_OK)
                return fail_reply(d, rp);
        return next(d, start_size(d));
}

/* waitNodes(): keep the first `size`, then watch until `size` are known. */
static void wait_nodes(Discovery *d) {

        if (d->size >= 0 && d->n_nodes > (size_t) d->size) {
                for (size_t i = d->size; i < d->n_nodes; i++) {
                        free(d->nodes[i].name);
                        free(d->nodes[i].value);
                }
                d->n_nodes = d->size;
        }

        for (size_t i = 0; i < d->n_nodes; i++)
                if (streq(d->nodes[i].name, d->self_name))
                        log_notice("found self %s in the cluster", d->self_name);
                else
                        log_notice("found peer %s in the cluster", d->nodes[i].name);

        if (d->size < 0 || d->n_nodes >= (size_t) d->size) {
                log_notice("found %zu needed peer(s)", d->n_nodes);
                return finish_cluster(d, d->nodes, d->n_nodes, false);
        }

        log_notice("found %zu peer(s), waiting for %zu more", d->n_nodes, (size_t) d->size - d->n_nodes);
        return next(d, start_watch(d));
}

static void handle_watch(Discovery *d, Reply *rp) {
        json_object *node;
        const char *key, *action, *rel;
        size_t cl;
        bool skip = false;
        int r;

        switch (rp->answer) {
        case ANSWER_UNREACHABLE:
                return retry_later(d, "waiting for other nodes", strempty(rp->detail));
        case ANSWER_BAD_JSON:
                return fail_reply(d, rp);
        case ANSWER_ETCD_ERROR:
                if (rp->error_code == 401) {
                        /* EventIndexCleared: more than 1000 writes to the discovery service since our
                         * listing. etcd2 gives up here; listing again and watching from its index loses
                         * nothing, so we do that. */
                        log_warning("discovery: watch index %" PRIu64 " cleared (%s), listing again",
                                    d->wait_index, strempty(rp->detail));
                        return next(d, start_size(d));
                        return;
                }
                return fail_reply(d, rp);
        case ANSWER_OK:
                break;
        }

        node = get_node(rp->json);
        key = node_string(node, "key");
        action = node_string(rp->json, "action");
        if (!key)
                return fail(d, -EBADMSG, "%s", INVALID_JSON);

        /* The Go watcher continues after the event's modifiedIndex. */
        d->wait_index = MAX(node_u64(node, "modifiedIndex") + 1, d->wait_index);

        /* etcd2 appends every event. We skip what cannot be a registration: anything under _config
         * (a size key written after we listed), a member already known (an update of its key), and
         * deletions/expiries, which would add an empty value. */
        cl = strlen(d->cluster);
        rel = strneq(key, d->cluster, cl) && key[cl] == '/' ? key + cl + 1 : node_base(key);
        if (strneq(rel, "_config", 7) && (rel[7] == 0 || rel[7] == '/'))
                skip = true;
        else if (strchr(rel, '/'))
                skip = true;
        else if (action && (streq(action, "delete") || streq(action, "expire") ||
                            streq(action, "compareAndDelete")))
                skip = true;
        else
                for (size_t i = 0; i < d->n_nodes; i++)
                        if (streq(d->nodes[i].name, rel))
                                skip = true;

        if (!skip) {
                log_notice("found peer %s in the cluster", rel);
                r = nodes_append(d, rel, node_string(node, "value"), node_u64(node, "createdIndex"));
                if (r < 0)
                        return fail(d, log_oom(), "out of memory");
        }

        if (d->n_nodes >= (size_t) d->size) {
                log_notice("found %zu needed peer(s)", d->n_nodes);
                return finish_cluster(d, d->nodes, d->n_nodes, false);
        }
        if (!skip)
                log_notice("found %zu peer(s), waiting for %zu more", d->n_nodes,
                           (size_t) d->size - d->n_nodes);

        return next(d, start_watch(d));
}

static void on_request_done(CurlRequest *req, CURLcode result, void *userdata) {
        Discovery *d = userdata;
        /* Detached from d: freed when this returns, even if the done callback freed d meanwhile. */
        _unused_ _cleanup_(curl_request_freep) CurlRequest *r = req;
        _cleanup_(reply_done) Reply rp = {};
        DiscoveryStep step = d->step;

        assert(d->req == req);
        d->req = NULL;

        classify(d, req, result, &rp);
        log_debug("discovery: step %d answered: curl %d, HTTP %ld", (int) step, (int) result,
                  curl_request_status(req));

        switch (step) {
        case STEP_SIZE:
                return handle_size(d, &rp);
        case STEP_LIST:
                return handle_list(d, &rp);
        case STEP_CREATE:
                return handle_create(d, &rp);
        case STEP_CONFIRM:
                return handle_confirm(d, &rp);
        case STEP_WATCH:
                return handle_watch(d, &rp);
        case STEP_NONE:
                break;
        }
        assert(!"unexpected discovery step");
}

static int start(Discovery *d, discovery_done_t cb, void *userdata) {
        int r;

        d->cb = cb;
        d->userdata = userdata;
        d->registered = false;
        d->running = true;
        nodes_clear(d);

        r = start_size(d);
        if (r < 0) {
                d->running = false;
                return r;
        }
        return 0;
}

int discovery_join(Discovery *d, uint64_t self_id, const char *self_value, discovery_done_t cb,
                   void *userdata) {
        const char *eq;

        assert(d);
        assert(self_value);

        if (d->running)
                return -EBUSY;

        free(d->self_name);
        free(d->self_value);
        free(d->member_name);
        d->self_value = strdup(self_value);
        eq = strchr(self_value, '=');
        d->member_name = eq ? strndup(self_value, eq - self_value) : strdup(self_value);
        /* types.ID.String(): lowercase hex, no padding. */
        if (asprintf(&d->self_name, "%" PRIx64, self_id) < 0)
                d->self_name = NULL;
        if (!d->self_value || !d->member_name || !d->self_name)
                return -ENOMEM;

        d->join = true;
        return start(d, cb, userdata);
}

int discovery_get(Discovery *d, discovery_done_t cb, void *userdata) {
        assert(d);

        if (d->running)
                return -EBUSY;

        /* newDiscovery(durl, dproxyurl, 0): the "self" key is "0". */
        free(d->self_name);
        d->self_name = strdup("0");
        if (!d->self_name)
                return -ENOMEM;
        d->join = false;
        return start(d, cb, userdata);
}
