/* SPDX-License-Identifier: Apache-2.0 */
/* proxy.c - etcd2's proxy mode (--proxy on|readonly): forwards client requests to the cluster's members. */

/*
 * etcd 2.3.8 proxy/httpproxy, on sd-event:
 *
 * Endpoints. The peer URLs come from <data-dir>/proxy/cluster ({"PeerURLs":[...]}) if it exists, else
 * from the caller (--initial-cluster, discovery). A refresh asks GET <peerURL>/members of each peer URL in
 * turn (CurlRequest, 10 s timeout); the first answer that parses gives every member's client URLs as the
 * forwarding endpoints (shuffled) and the peer URLs, which are written back to the cluster file. A failed
 * refresh leaves zero endpoints, as etcd's does. Refreshes run every --proxy-refresh-interval, every second
 * while there is no available endpoint and the interval is >= 30 s. An endpoint that failed a transport is
 * unavailable for --proxy-failure-wait, then available again without a probe.
 *
 * Forwarding. Each client request (body read by the HTTP layer, capped by the service's body_max) is sent
 * with our HTTP client (http-client.c) to the available endpoints in turn, trying the next only after a transport error (nothing
 * received); an HTTP error status is passed through. Hop-by-hop headers are dropped both ways and
 * X-Forwarded-For appended. The response is streamed: once the upstream headers are in, they go out with
 * http_stream_begin() (chunked unless upstream gave a Content-Length) and the body follows piece by piece
 * with http_stream_write(), so long-poll and streaming watches pass through; an answer that is complete
 * by the time we look goes out in one http_reply(). When the client is slower than upstream, the transfer
 * is paused (http_client_request_pause()) above a high mark of output queued in the layer and resumed from
 * the handler's drained(). A client hang-up cancels the transfer.
 *
 * The client's callbacks only collect (headers, body pieces) and put the transfer on a "dirty" list; the
 * layer is told once the client is out of its processing (its flush hook, proxy_flush()). The layer may
 * end a request, and so call our done(), from inside any of its calls: a transfer whose request went away
 * inside proxy_flush() is only detached then (its upstream request cancelled), and released
 * (proxy_reap()) once we are out.
 *
 * Why not libcurl any more (it still does the refreshes): per proxied GET it cost a quarter of the
 * proxy's CPU (its allocations, strlen/sscanf header handling) and two poll() calls (the dead-connection
 * check on reuse, a probe after the timeout kick); GET c=64 through the proxy reached 23-32 % of direct.
 * The client sends head and body in one sendmsg(), parses with llhttp, keeps idle connections in one
 * inner epoll set without a probe, and finished transfers go back to a pool with their header storage.
 *
 * TLS. As etcd2's startProxy builds both transports from cfg.peerTLSInfo, the proxy's connections to
 * members, forwarding and refreshes alike, present --peer-cert-file/--peer-key-file and trust
 * --peer-trusted-ca-file (or --peer-ca-file), else the system's roots; https:// client URLs of members are
 * forwarded to over TLS (http-client.c), https:// peer URLs are asked with libcurl (curl_glue_set_tls()).
 * A member that refuses our certificate is a transport error like a refused connection: the next
 * endpoint, and 502 when none answers. The proxy's own client listeners keep the client TLS flags.
 */

#include <assert.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "curl-glue.h"
#include "http-client.h"
#include "http-util.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "proxy.h"
#include "tls.h"

#define PROXY_REFRESH_TIMEOUT_USEC (10 * USEC_PER_SEC)  /* etcd: GetClusterFromRemotePeers */
#define PROXY_MEMBERS_BODY_MAX ((size_t) 4 * 1024 * 1024)
#define PROXY_DEFAULT_REFRESH_MSEC 30000u
#define PROXY_MAX_CONNECTS 256u                       /* idle upstream connections kept (libcurl's cache size) */
#define PROXY_XFER_POOL_MAX 256u
#define PROXY_BUFFER_HIGH ((size_t) 256 * 1024)       /* pause upstream above this much unsent body */
#define PROXY_BUFFER_KEEP ((size_t) 64 * 1024)        /* larger buffers are not kept in the pool */

typedef struct ProxyEndpoint {
        char *url;                  /* a member's client URL, e.g. "http://127.0.0.1:2379" */
        size_t url_len;
        HttpUpstream *up;           /* its connection pool; NULL if not http:// */
        uint64_t unavailable_until; /* CLOCK_MONOTONIC; available when now >= this */
} ProxyEndpoint;

/* The endpoints of one refresh; requests in flight keep the set they started with. */
typedef struct ProxyEndpointSet {
        unsigned n_ref;
        size_t n;
        ProxyEndpoint eps[];
} ProxyEndpointSet;

typedef struct ProxyXfer ProxyXfer;
struct ProxyXfer {
        Proxy *proxy;
        HttpClientRequest *q;       /* the upstream request in flight, NULL if none */
        HttpRequest *req;           /* NULL once the request went away (or before it is attached) */
        ProxyXfer *prev, *next;     /* active list, or free list (next only) */
        ProxyXfer *dirty_next;      /* the dirty list: something for the layer (proxy_flush()) */
        ProxyXfer *orphan_next;     /* the orphan list: to release once out of proxy_flush() */
        bool dirty;
        bool orphan;

        ProxyEndpointSet *set;
        size_t ep;                  /* endpoint being tried */
        unsigned n_available;       /* endpoints available when the request came in */

        /* request */
        HttpBuf hdr_text;           /* "Name: value\r\n" lines */
        HttpBuf xff;                /* prior X-Forwarded-For values */
        HttpClientSpec spec;

        /* response */
        long status;
        bool headers_done;
        bool failed;                /* no endpoint answered: 502 */
        bool finished;
        bool paused;
        bool started;               /* the answer went to the layer (http_reply() or http_stream_begin()) */
        bool ended;                 /* ... completely */
        int result;                 /* 0, or the negative errno that cut the response short */
        int64_t content_length;     /* -1: unknown */
        int metrics_method;         /* MetricsMethod of the client request */
        uint64_t start_usec;        /* when the client request came in (metrics) */
        HttpBuf resp_hdrs;          /* "Name\0value\0" pairs of the final response */
        HttpBuf body;               /* received, not yet handed to the layer */
        size_t body_off;
};

/* The state of one client request at r->data. */
typedef struct ProxyRequest {
        ProxyXfer *xfer;
} ProxyRequest;

struct Proxy {
        sd_event *event;
        const Config *config;
        bool readonly;

        char *dir;                  /* <data-dir>/proxy */
        char *cluster_file;
        char **peer_urls;

        ProxyEndpointSet *set;
        char **endpoints_strv;      /* proxy_endpoints()'s answer */
        char ***retired;            /* earlier answers, kept valid until the next refresh */
        size_t n_retired;
        unsigned rand_state;

        /* refresh */
        CurlGlue *glue;
        CurlRequest *members_req;
        size_t refresh_idx;
        sd_event_source *refresh_timer;
        bool refreshed_once;

        /* forwarding */
        HttpClient *client;
        unsigned in_flush;
        ProxyXfer *dirty;           /* see ProxyXfer.dirty_next */
        ProxyXfer *orphans;
        ProxyXfer *active;
        ProxyXfer *pool;
        unsigned n_pool;
};

static void refresh_start(Proxy *p);

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* --- endpoint sets -------------------------------------------------------------------------- */

static ProxyEndpointSet *set_unref(ProxyEndpointSet *s) {
        if (!s || --s->n_ref > 0)
                return NULL;
        for (size_t i = 0; i < s->n; i++)
                free(s->eps[i].url);
        free(s);
        return NULL;
}

static ProxyEndpointSet *set_ref(ProxyEndpointSet *s) {
        if (s)
                s->n_ref++;
        return s;
}

static bool endpoint_available(const ProxyEndpoint *e, uint64_t now) {
        return e->unavailable_until == 0 || now >= e->unavailable_until;
}

static unsigned set_n_available(const ProxyEndpointSet *s, uint64_t now) {
        unsigned n = 0;

        for (size_t i = 0; s && i < s->n; i++)
                if (endpoint_available(&s->eps[i], now))
                        n++;
        return n;
}

static bool strv_equal(char **a, char **b);

static bool strv_isempty(char **l) {
        return !l || !l[0];
}

static void endpoints_retired_free(Proxy *p) {
        for (size_t i = 0; i < p->n_retired; i++)
                strv_free(p->retired[i]);
        free(p->retired);
        p->retired = NULL;
        p->n_retired = 0;
}

bool proxy_refreshed(Proxy *p) {
        return p && p->refreshed_once;
}

char **proxy_endpoints(Proxy *p) {
        uint64_t now = now_usec();
        size_t k = 0;
        char **l, ***t;

        if (!p)
                return NULL;

        l = calloc((p->set ? p->set->n : 0) + 1, sizeof(char *));
        if (!l)
                return p->endpoints_strv;
        for (size_t i = 0; p->set && i < p->set->n; i++) {
                if (!endpoint_available(&p->set->eps[i], now))
                        continue;
                l[k] = strdup(p->set->eps[i].url);
                if (!l[k]) {
                        strv_free(l);
                        return p->endpoints_strv;
                }
                k++;
        }
        if (p->endpoints_strv && strv_equal(l, p->endpoints_strv)) {
                strv_free(l);
                return p->endpoints_strv;
        }
        /* callers may still hold the previous answer: it stays valid until the next refresh */
        if (p->endpoints_strv) {
                t = reallocarray(p->retired, p->n_retired + 1, sizeof(char **));
                if (!t) {
                        strv_free(l);
                        return p->endpoints_strv;
                }
                p->retired = t;
                p->retired[p->n_retired++] = p->endpoints_strv;
        }
        p->endpoints_strv = l;
        return l;
}

/* --- the cluster file ----------------------------------------------------------------------- */

static int parse_url_array(json_object *a, char ***ret) {
        _cleanup_strv_free_ char **l = NULL;
        size_t n;

        if (!json_object_is_type(a, json_type_array))
                return -EINVAL;
        n = json_object_array_length(a);
        l = calloc(n + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *s = json_object_array_get_idx(a, i);

                if (!json_object_is_type(s, json_type_string))
                        return -EINVAL;
                l[i] = strdup(json_object_get_string(s));
                if (!l[i])
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

static int cluster_file_read(Proxy *p, char ***ret) {
        _cleanup_free_ char *text = NULL;
        json_object *o, *a;
        size_t size = 0;
        FILE *f;
        int r;

        f = fopen(p->cluster_file, "re");
        if (!f)
                return -errno;
        {
                char buf[4096];
                size_t n;
                FILE *m = open_memstream(&text, &size);

                if (!m) {
                        fclose(f);
                        return -ENOMEM;
                }
                while ((n = fread(buf, 1, sizeof buf, f)) > 0)
                        fwrite(buf, 1, n, m);
                r = ferror(f) ? -EIO : 0;
                fclose(f);
                if (fclose(m) != 0 && r == 0)
                        r = -ENOMEM;
                if (r < 0)
                        return r;
        }

        o = json_tokener_parse(text ?: "");
        if (!o)
                return -EINVAL;
        if (!json_object_object_get_ex(o, "PeerURLs", &a) || json_object_is_type(a, json_type_null)) {
                /* Go: a missing or null list unmarshals as an empty one */
                json_object_put(o);
                *ret = calloc(1, sizeof(char *));
                return *ret ? 0 : -ENOMEM;
        }
        r = parse_url_array(a, ret);
        json_object_put(o);
        return r;
}

static int cluster_file_write(Proxy *p, char **peer_urls) {
        _cleanup_free_ char *bak = NULL;
        _cleanup_(http_buf_done) HttpBuf b = {};
        int fd, r = 0;

        if (http_buf_puts(&b, "{\"PeerURLs\":[") < 0)
                return -ENOMEM;
        STRV_FOREACH(u, peer_urls) {
                if ((u != peer_urls && http_buf_puts(&b, ",") < 0) || http_buf_json_string(&b, *u, strlen(*u)) < 0)
                        return -ENOMEM;
        }
        if (http_buf_puts(&b, "]}") < 0)
                return -ENOMEM;

        if (asprintf(&bak, "%s.bak", p->cluster_file) < 0)
                return -ENOMEM;
        fd = open(bak, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        for (size_t off = 0; off < b.len;) {
                ssize_t n = write(fd, b.data + off, b.len - off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                off += (size_t) n;
        }
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r < 0)
                return r;
        if (rename(bak, p->cluster_file) < 0)
                return -errno;
        return 0;
}

/* --- refresh -------------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static char *strv_join(char **l) {
        _cleanup_(http_buf_done) HttpBuf b = {};

        if (http_buf_puts(&b, "[") < 0)
                return NULL;
        STRV_FOREACH(s, l)
                if ((s != l && http_buf_puts(&b, " ") < 0) || http_buf_puts(&b, *s) < 0)
                        return NULL;
        if (http_buf_puts(&b, "]") < 0)
                return NULL;
        return TAKE_PTR(b.data);
}

static bool strv_equal(char **a, char **b) {
        size_t n = strv_length(a);

        if (n != strv_length(b))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!streq(a[i], b[i]))
                        return false;
        return true;
}

/* etcdserver.GetClusterFromRemotePeers() on one answer: every member's client and peer URLs, sorted. */
static int parse_members(const char *body, char ***ret_client, char ***ret_peer) {
        _cleanup_strv_free_ char **client = NULL, **peer = NULL;
        size_t nc = 0, np = 0;
        json_object *o;
        int r = 0;

        o = json_tokener_parse(body ?: "");
        if (!o)
                return -EINVAL;
        if (!json_object_is_type(o, json_type_array)) {
                json_object_put(o);
                return -EINVAL;
        }

        for (size_t i = 0; i < json_object_array_length(o) && r >= 0; i++) {
                json_object *m = json_object_array_get_idx(o, i), *a;
                const char *keys[2] = { "clientURLs", "peerURLs" };

                if (!json_object_is_type(m, json_type_object)) {
                        r = -EINVAL;
                        break;
                }
                for (unsigned k = 0; k < 2 && r >= 0; k++) {
                        char ***l = k == 0 ? &client : &peer;
                        size_t *n = k == 0 ? &nc : &np;

                        if (!json_object_object_get_ex(m, keys[k], &a) || json_object_is_type(a, json_type_null))
                                continue;
                        if (!json_object_is_type(a, json_type_array)) {
                                r = -EINVAL;
                                break;
                        }
                        for (size_t j = 0; j < json_object_array_length(a); j++) {
                                json_object *s = json_object_array_get_idx(a, j);
                                char **t;

                                if (!json_object_is_type(s, json_type_string)) {
                                        r = -EINVAL;
                                        break;
                                }
                                t = reallocarray(*l, *n + 2, sizeof(char *));
                                if (!t) {
                                        r = -ENOMEM;
                                        break;
                                }
                                *l = t;
                                t[*n] = strdup(json_object_get_string(s));
                                t[*n + 1] = NULL;
                                if (!t[*n]) {
                                        r = -ENOMEM;
                                        break;
                                }
                                (*n)++;
                        }
                }
        }
        json_object_put(o);
        if (r < 0)
                return r;

        if (!client && !(client = calloc(1, sizeof(char *))))
                return -ENOMEM;
        if (!peer && !(peer = calloc(1, sizeof(char *))))
                return -ENOMEM;
        qsort(client, nc, sizeof(char *), cmp_str);
        qsort(peer, np, sizeof(char *), cmp_str);
        *ret_client = TAKE_PTR(client);
        *ret_peer = TAKE_PTR(peer);
        return 0;
}

/* director.refresh(): a new shuffled set from the given client URLs (NULL: none). */
static void set_endpoints(Proxy *p, char **urls) {
        size_t n = strv_length(urls), k = 0;
        ProxyEndpointSet *s;
        int r;

        s = calloc(1, sizeof(ProxyEndpointSet) + n * sizeof(ProxyEndpoint));
        if (!s) {
                log_oom();
                return;
        }
        s->n_ref = 1;
        for (size_t i = 0; i < n; i++) {
                ProxyEndpoint *e = &s->eps[k];

                /* Go's url.Parse() accepts almost anything; the client and libcurl want a scheme. */
                if (!strstr(urls[i], "://")) {
                        log_warning("proxy: upstream URL invalid: %s", urls[i]);
                        continue;
                }
                e->url = strdup(urls[i]);
                if (!e->url) {
                        log_oom();
                        break;
                }
                e->url_len = strlen(e->url);
                /* a trailing slash would double the one of the request target */
                while (e->url_len > 0 && e->url[e->url_len - 1] == '/')
                        e->url[--e->url_len] = 0;
                r = http_client_upstream(p->client, e->url, &e->up);
                if (r < 0)
                        log_warning_errno(r, "proxy: cannot forward to %s: %m", e->url);
                k++;
        }
        s->n = k;

        /* shuffle, so that proxies do not all stick to one member */
        for (size_t i = 1; i < s->n; i++) {
                size_t j = (size_t) rand_r(&p->rand_state) % (i + 1);
                ProxyEndpoint t = s->eps[i];
                s->eps[i] = s->eps[j];
                s->eps[j] = t;
        }

        set_unref(p->set);
        p->set = s;
}


static int on_refresh_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        refresh_start(userdata);
        return 0;
}

/* The director's loop: the next refresh after the refresh interval, after 1 s while nothing is available
 * (only if the interval is >= 30 s, as etcd does). */
static void refresh_schedule(Proxy *p) {
        uint64_t interval = (uint64_t) p->config->proxy_refresh_interval_ms * USEC_PER_MSEC;
        int r;

        if (interval >= (uint64_t) PROXY_DEFAULT_REFRESH_MSEC * USEC_PER_MSEC && set_n_available(p->set, now_usec()) == 0)
                interval = USEC_PER_SEC;
        interval = MAX(interval, USEC_PER_MSEC);

        if (!p->refresh_timer) {
                r = sd_event_add_time_relative(p->event, &p->refresh_timer, CLOCK_MONOTONIC, interval,
                                               10 * USEC_PER_MSEC, on_refresh_timer, p);
                if (r < 0) {
                        log_error_errno(r, "proxy: failed to arm the refresh timer: %m");
                        return;
                }
                (void) sd_event_source_set_description(p->refresh_timer, "proxy-refresh");
                return;
        }
        (void) sd_event_source_set_time_relative(p->refresh_timer, interval);
        (void) sd_event_source_set_enabled(p->refresh_timer, SD_EVENT_ONESHOT);
}

static void refresh_finish(Proxy *p, char **client_urls) {
        _cleanup_free_ char *before = NULL, *after = NULL;

        before = strv_join(p->endpoints_strv);
        endpoints_retired_free(p);
        set_endpoints(p, client_urls);
        (void) proxy_endpoints(p);
        after = strv_join(p->endpoints_strv);
        if (!p->refreshed_once || !before || !after || !streq(before, after)) {
                if (p->endpoints_strv && p->endpoints_strv[0])
                        log_info("proxy: endpoints found %s", strempty(after));
                else
                        log_warning("proxy: zero endpoints currently available");
        }
        p->refreshed_once = true;
        refresh_schedule(p);
}

static void refresh_try(Proxy *p);

static void on_members_done(CurlRequest *req, CURLcode result, void *userdata) {
        Proxy *p = userdata;
        _cleanup_strv_free_ char **client = NULL, **peer = NULL;
        const char *body;
        const char *url = p->peer_urls[p->refresh_idx];
        int r;

        if (result != CURLE_OK) {
                log_debug("proxy: could not get cluster response from %s: %s", url, curl_request_error_message(req));
                goto next;
        }
        body = curl_request_body(req, NULL);
        r = parse_members(body, &client, &peer);
        if (r < 0) {
                log_debug_errno(r, "proxy: could not unmarshal cluster response from %s: %m", url);
                goto next;
        }
        /* A member still bootstrapping lists no members yet: never let that empty the peer list (and
         * the cluster file), or the proxy would have nobody left to ask. */
        if (!peer[0]) {
                log_debug("proxy: %s lists no members yet", url);
                goto next;
        }

        /* etcd's urlsFunc: the cluster file follows the cluster */
        r = cluster_file_write(p, peer);
        if (r < 0)
                log_warning_errno(r, "proxy: error writing cluster file %s: %m", p->cluster_file);
        if (!strv_equal(peer, p->peer_urls)) {
                _cleanup_free_ char *a = strv_join(p->peer_urls), *b = strv_join(peer);

                log_notice("proxy: updated peer urls in cluster file from %s to %s", strempty(a), strempty(b));
                strv_free(p->peer_urls);
                p->peer_urls = TAKE_PTR(peer);
        }
        refresh_finish(p, client);
        return;

next:
        p->refresh_idx++;
        refresh_try(p);
}

static void refresh_try(Proxy *p) {
        _cleanup_free_ char *url = NULL;
        int r;

        for (; p->peer_urls && p->peer_urls[p->refresh_idx]; p->refresh_idx++) {
                const char *u = p->peer_urls[p->refresh_idx];
                size_t l = strlen(u);

                free(url);
                url = NULL;
                if (asprintf(&url, "%.*s/members", (int) (l > 0 && u[l - 1] == '/' ? l - 1 : l), u) < 0) {
                        log_oom();
                        break;
                }
                r = curl_request_set_url(p->members_req, url);
                if (r >= 0)
                        r = curl_request_start(p->members_req, on_members_done);
                if (r >= 0)
                        return;
                log_debug_errno(r, "proxy: failed to ask %s: %m", url);
        }

        log_warning("proxy: could not retrieve cluster information from the given urls");
        refresh_finish(p, NULL);
}

static void refresh_start(Proxy *p) {
        if (curl_request_is_running(p->members_req))
                return;
        p->refresh_idx = 0;
        refresh_try(p);
}

/* --- forwarding -------------------------------------------------------------------------- */

static void xfer_finished(ProxyXfer *x, int result);

static void proxy_flush(Proxy *p);

/* Something for the layer (headers, body, the end): proxy_flush() hands it over once out of the client. */
static void xfer_mark_dirty(ProxyXfer *x) {
        Proxy *p = x->proxy;

        if (x->dirty || !x->req)
                return;
        x->dirty = true;
        x->dirty_next = p->dirty;
        p->dirty = x;
}

static void on_client_flush(void *userdata) {
        proxy_flush(userdata);
}

/* --- transfers ------------------------------------------------------------------------------ */

static const char *const hop_headers[] = {
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
        "Te", "Trailers", "Transfer-Encoding", "Upgrade",
};

static bool strcaseeq_n(const char *s, size_t len, const char *lit) {
        return strlen(lit) == len && strncasecmp(s, lit, len) == 0;
}

static bool is_hop_header(const char *name, size_t len) {
        for (size_t i = 0; i < ELEMENTSOF(hop_headers); i++)
                if (strlen(hop_headers[i]) == len && strncasecmp(hop_headers[i], name, len) == 0)
                        return true;
        return false;
}

static void xfer_reset_response(ProxyXfer *x) {
        x->status = 0;
        x->headers_done = false;
        x->content_length = -1;
        x->resp_hdrs.len = 0;
        x->body.len = x->body_off = 0;
        x->paused = false;
}

static void buf_trim(HttpBuf *b) {
        b->len = 0;
        if (b->alloc > PROXY_BUFFER_KEEP)
                http_buf_done(b);
}

static void xfer_destroy(ProxyXfer *x) {
        if (!x)
                return;
        http_buf_done(&x->hdr_text);
        http_buf_done(&x->xff);
        http_buf_done(&x->resp_hdrs);
        http_buf_done(&x->body);
        free(x);
}

static void xfer_detach_request(ProxyXfer *x) {
        /* the upstream request goes with it: it refers to the client request's body */
        if (x->q) {
                http_client_request_cancel(x->q);
                x->q = NULL;
        }
        if (x->req) {
                ProxyRequest *pr = x->req->data;

                pr->xfer = NULL;
                x->req = NULL;
        }
}

/* Detaches the transfer from its request and the upstream; back to the pool. Never from inside
 * proxy_flush(), never while on the dirty list (see xfer_drop()). */
static void xfer_release(ProxyXfer *x) {
        Proxy *p = x->proxy;

        assert(!x->dirty);

        xfer_detach_request(x);
        x->set = set_unref(x->set);
        x->orphan = false;

        if (x->next)
                x->next->prev = x->prev;
        if (x->prev)
                x->prev->next = x->next;
        else
                p->active = x->next;
        x->prev = x->next = NULL;

        if (p->n_pool >= PROXY_XFER_POOL_MAX) {
                xfer_destroy(x);
                return;
        }
        x->finished = x->failed = x->started = x->ended = false;
        xfer_reset_response(x);
        buf_trim(&x->hdr_text);
        buf_trim(&x->xff);
        buf_trim(&x->resp_hdrs);
        buf_trim(&x->body);
        x->next = p->pool;
        p->pool = x;
        p->n_pool++;
}

/* The request is gone (hangup(), done()): its upstream request is cancelled now; the transfer is released
 * now if we may, else once out of proxy_flush() (proxy_reap()). */
static void xfer_drop(ProxyXfer *x) {
        Proxy *p = x->proxy;

        xfer_detach_request(x);
        if (p->in_flush == 0 && !x->dirty) {
                xfer_release(x);
                return;
        }
        if (x->orphan)
                return;
        x->orphan = true;
        x->orphan_next = p->orphans;
        p->orphans = x;
}

static void proxy_reap(Proxy *p) {
        if (p->in_flush > 0 || p->dirty)
                return;
        while (p->orphans) {
                ProxyXfer *x = p->orphans;

                p->orphans = x->orphan_next;
                x->orphan_next = NULL;
                xfer_release(x);
        }
}

/* The final response's head: hop-by-hop headers and Date dropped, Content-Length kept aside. */
static void on_upstream_head(HttpClientRequest *q, unsigned status, const HttpClientHeader *headers,
                             size_t n_headers, int64_t content_length, void *userdata) {
        ProxyXfer *x = userdata;

        xfer_reset_response(x);
        x->status = status;
        x->content_length = content_length;
        /* reportRequestHandled(): upstream answered, whatever its status */
        if (x->req) {
                if (status >= METRICS_STATUS_MIN && status <= METRICS_STATUS_MAX)
                        metrics.proxy_handled[x->metrics_method][status - METRICS_STATUS_MIN]++;
                metrics_observe(&metrics.proxy_duration[x->metrics_method], &metrics_http_buckets,
                                metrics_now_usec() - x->start_usec);
        }
        for (size_t i = 0; i < n_headers; i++) {
                const HttpClientHeader *h = &headers[i];

                /* the layer writes its own Date (as Go's server would not, given upstream's: a small
                 * difference) and its own Content-Length */
                if (is_hop_header(h->name, h->name_len) || strcaseeq_n(h->name, h->name_len, "Date") ||
                    strcaseeq_n(h->name, h->name_len, "Content-Length"))
                        continue;
                /* name and value are NUL-terminated */
                if (http_buf_append(&x->resp_hdrs, h->name, h->name_len + 1) < 0 ||
                    http_buf_append(&x->resp_hdrs, h->value, h->value_len + 1) < 0) {
                        log_oom();
                        x->result = -ENOMEM;
                }
        }
        x->headers_done = true;
        xfer_mark_dirty(x);
}

static void on_upstream_body(HttpClientRequest *q, const void *data, size_t n, void *userdata) {
        ProxyXfer *x = userdata;

        if (!x->req)
                return;
        if (x->body_off == x->body.len)
                x->body.len = x->body_off = 0;
        if (http_buf_append(&x->body, data, n) < 0) {
                log_oom();
                return;
        }
        if (x->body.len - x->body_off + (x->started ? http_stream_pending(x->req) : 0) >= PROXY_BUFFER_HIGH) {
                /* the client does not keep up: stop reading upstream until it does */
                if (!x->paused)
                        log_debug("proxy: the client is slower than %s, pausing the transfer",
                                  x->set->eps[x->ep].url);
                x->paused = true;
                http_client_request_pause(q);
        }
        xfer_mark_dirty(x); /* proxy_flush() or drained() resumes it */
}

static void on_upstream_done(HttpClientRequest *q, int error, void *userdata) {
        ProxyXfer *x = userdata;

        x->q = NULL; /* freed by the client right after */
        xfer_finished(x, error);
}

static const HttpClientOps upstream_ops = {
        .head = on_upstream_head,
        .body = on_upstream_body,
        .done = on_upstream_done,
};

static ProxyXfer *xfer_get(Proxy *p) {
        ProxyXfer *x;

        if (p->pool) {
                x = p->pool;
                p->pool = x->next;
                p->n_pool--;
                x->next = NULL;
        } else {
                x = calloc(1, sizeof(ProxyXfer));
                if (!x)
                        return NULL;
                x->proxy = p;
                x->content_length = -1;
        }

        x->prev = NULL;
        x->next = p->active;
        if (p->active)
                p->active->prev = x;
        p->active = x;
        return x;
}

typedef struct HeaderCollect {
        ProxyXfer *x;
        bool have_host;
        int error;
} HeaderCollect;

static void collect_header(HeaderCollect *c, const char *key, const char *value) {
        ProxyXfer *x = c->x;
        size_t kl = strlen(key);

        if (is_hop_header(key, kl) || strcaseeq_n(key, kl, "Content-Length"))
                return;
        if (strcaseeq_n(key, kl, "Expect"))
                return; /* we send the whole body at once: no 100-continue round trip (libcurl's "Expect:") */
        if (strcaseeq_n(key, kl, "X-Forwarded-For")) {
                if ((c->x->xff.len > 0 && http_buf_puts(&x->xff, ", ") < 0) || http_buf_puts(&x->xff, strempty(value)) < 0)
                        c->error = -ENOMEM;
                return;
        }
        if (strcaseeq_n(key, kl, "Host"))
                c->have_host = true; /* the client's Host goes on, as Go's (and libcurl's, given one) */

        if (http_buf_puts(&x->hdr_text, key) < 0 || http_buf_append(&x->hdr_text, ": ", 2) < 0 ||
            http_buf_puts(&x->hdr_text, strempty(value)) < 0 || http_buf_append(&x->hdr_text, "\r\n", 2) < 0)
                c->error = -ENOMEM;
}

/* Method, headers and body of the client request, for every endpoint we try: what libcurl sent. */
static int xfer_prepare(ProxyXfer *x, HttpRequest *r) {
        HeaderCollect c = { .x = x };
        const char *method = r->method;
        char ip[INET6_ADDRSTRLEN];
        size_t n_headers;
        HttpClientSpec *s = &x->spec;

        x->hdr_text.len = x->xff.len = 0;
        n_headers = http_request_n_headers(r);
        for (size_t i = 0; i < n_headers && c.error >= 0; i++) {
                const char *name, *value;

                http_request_header_at(r, i, &name, &value);
                collect_header(&c, name, value);
        }
        if (c.error < 0)
                return c.error;

        /* maybeSetForwardedFor(): prior values joined, then the client's address */
        if (http_request_peer_ip(r, ip, sizeof ip) >= 0) {
                if (http_buf_puts(&x->hdr_text, "X-Forwarded-For: ") < 0 ||
                    (x->xff.len > 0 && (http_buf_append(&x->hdr_text, x->xff.data, x->xff.len) < 0 ||
                                        http_buf_puts(&x->hdr_text, ", ") < 0)) ||
                    http_buf_puts(&x->hdr_text, ip) < 0 || http_buf_append(&x->hdr_text, "\r\n", 2) < 0)
                        return -ENOMEM;
        } else if (x->xff.len > 0) {
                if (http_buf_puts(&x->hdr_text, "X-Forwarded-For: ") < 0 ||
                    http_buf_append(&x->hdr_text, x->xff.data, x->xff.len) < 0 ||
                    http_buf_append(&x->hdr_text, "\r\n", 2) < 0)
                        return -ENOMEM;
        }

        *s = (HttpClientSpec) {
                .method = method,
                .target = r->uri,
                .target_len = r->uri_len,
                .headers = x->hdr_text.data,
                .headers_len = x->hdr_text.len,
                .has_host = c.have_host,
        };
        /* as libcurl did: GET (CURLOPT_HTTPGET) and HEAD (CURLOPT_NOBODY) without a body; a body, or
         * POST/PUT/PATCH, with its Content-Length (CURLOPT_POSTFIELDS); other methods without one */
        if (streq(method, "HEAD"))
                s->head = true;
        else if (!streq(method, "GET") &&
                 (r->body.len > 0 || streq(method, "POST") || streq(method, "PUT") || streq(method, "PATCH"))) {
                s->send_length = true;
                s->body = r->body.data ?: "";
                s->body_len = r->body.len;
        }
        return 0;
}

/* Sends the request to the next available endpoint from x->ep on; -ENOENT if none is left. */
static int xfer_start(ProxyXfer *x) {
        Proxy *p = x->proxy;
        uint64_t now = now_usec();
        int r;

        for (; x->ep < x->set->n; x->ep++) {
                ProxyEndpoint *e = &x->set->eps[x->ep];

                if (!endpoint_available(e, now))
                        continue;
                if (!e->up) {
                        log_info("proxy: failed to direct request to %s: unsupported URL", e->url);
                        continue;
                }

                x->spec.target_prefix = http_upstream_path(e->up);
                x->spec.target_prefix_len = strlen(x->spec.target_prefix);
                xfer_reset_response(x);
                x->result = 0;
                r = http_client_request_start(e->up, &x->spec, &upstream_ops, x, &x->q);
                if (r < 0) {
                        log_warning_errno(r, "proxy: failed to start a request to %s: %m", e->url);
                        return r;
                }
                (void) p;
                return 0;
        }
        return -ENOENT;
}

static void xfer_finished(ProxyXfer *x, int result) {
        HttpRequest *r = x->req;

        if (!r)
                return; /* an orphan: proxy_reap() releases it */

        if (!x->headers_done) {
                /* No response: a transport error. Mark the endpoint, try the next one. */
                ProxyEndpoint *e = &x->set->eps[x->ep];

                log_info("proxy: failed to direct request to %s: %s", e->url,
                         result < 0 ? strerror(-result) : "no response");
                metrics.proxy_dropped[x->metrics_method][METRICS_PROXY_FAILED_SENDING_REQUEST]++;
                if (x->proxy->config->proxy_failure_wait_ms > 0)
                        e->unavailable_until = now_usec() + (uint64_t) x->proxy->config->proxy_failure_wait_ms * USEC_PER_MSEC;
                x->ep++;
                if (r->hung_up || xfer_start(x) < 0) {
                        if (!r->hung_up) {
                                log_info("proxy: unable to get response from %u endpoint(s)", x->n_available);
                                metrics.proxy_dropped[x->metrics_method][METRICS_PROXY_FAILED_GETTING_RESPONSE]++;
                        }
                        x->failed = true;
                        x->finished = true;
                        xfer_mark_dirty(x);
                }
                return;
        }

        x->finished = true;
        if (x->result == 0)
                x->result = result;
        if (result < 0)
                log_debug("proxy: upstream %s ended: %s", x->set->eps[x->ep].url, strerror(-result));
        xfer_mark_dirty(x);
}

/* --- client requests ------------------------------------------------------------------------ */

/* etcd2 wraps the proxy in its CORS handler (headers on every answer, OPTIONS answered here) and, for
 * --proxy readonly, that in the readonly handler (whose 501 has no CORS headers). */
static void add_cors(Proxy *p, HttpRequest *r) {
        const char *origin = NULL;

        if (!p->config->cors)
                return;

        STRV_FOREACH(o, p->config->cors)
                if (streq(*o, "*")) {
                        origin = "*";
                        break;
                }
        if (!origin) {
                const char *h = http_request_header(r, "Origin");

                if (h)
                        STRV_FOREACH(o, p->config->cors)
                                if (streq(*o, h)) {
                                        origin = h;
                                        break;
                                }
        }
        if (!origin)
                return;

        http_response_header(r, "Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE");
        http_response_header(r, "Access-Control-Allow-Origin", origin);
        http_response_header(r, "Access-Control-Allow-Headers", "accept, content-type, authorization");
}

static void reply_full(HttpRequest *r, unsigned status, const char *content_type, const char *body,
                       const char *allow, bool cors) {
        if (allow)
                http_response_header(r, "Allow", allow);
        if (cors)
                add_cors(r->userdata, r);
        http_reply(r, status, content_type, body, strlen(body));
}

static void reply(HttpRequest *r, unsigned status, const char *content_type, const char *body, const char *allow) {
        reply_full(r, status, content_type, body, allow, true);
}

/* httptypes.HTTPError.WriteTo() */
static void reply_error(HttpRequest *r, unsigned status, const char *message) {
        _cleanup_(http_buf_done) HttpBuf b = {};

        if (http_buf_puts(&b, "{\"message\":") < 0 || http_buf_json_string(&b, message, strlen(message)) < 0 ||
            http_buf_puts(&b, "}") < 0) {
                log_oom();
                http_response_close(r);
                http_reply(r, 500, NULL, "", 0);
                return;
        }
        reply(r, status, "application/json", b.data, NULL);
}

/* GET /v2/config/local/proxy: {"endpoints":[...]} (json.Encoder: with a newline; Go sniffs text/plain). */
static void reply_config(HttpRequest *r, Proxy *p) {
        _cleanup_(http_buf_done) HttpBuf b = {};
        bool ok = true;
        char **l;

        if (!streq(r->method, "GET")) {
                reply(r, 405, "text/plain; charset=utf-8", "Method Not Allowed\n", "GET");
                return;
        }

        l = proxy_endpoints(p);
        ok = http_buf_puts(&b, "{\"endpoints\":[") >= 0;
        STRV_FOREACH(u, l)
                if (ok)
                        ok = (u == l || http_buf_puts(&b, ",") >= 0) && http_buf_json_string(&b, *u, strlen(*u)) >= 0;
        if (!ok || http_buf_puts(&b, "]}\n") < 0) {
                reply_error(r, 500, "proxy: out of memory");
                return;
        }
        reply(r, 200, "text/plain; charset=utf-8", b.data, NULL);
}

/* Ends an answer whose upstream transfer broke off: the client must not take it for complete (short of
 * its Content-Length, or chunked without the final chunk, then the connection closes). */
static void stream_abort(HttpRequest *r) {
        http_stream_abort(r);
}

/* Hands what the transfer collected to the layer. Any call into the layer may end the request (and run
 * our done()): x->req is checked after each; x itself stays valid (released by proxy_reap() only). */
static void xfer_flush(ProxyXfer *x) {
        Proxy *p = x->proxy;
        HttpRequest *r = x->req;
        size_t have;

        if (!r || x->ended)
                return;

        if (x->failed) {
                char msg[96];

                x->started = x->ended = true;
                snprintf(msg, sizeof msg, "proxy: unable to get response from %u endpoint(s)", x->n_available);
                reply_error(r, 502, msg);
                return;
        }
        if (!x->headers_done)
                return;

        have = x->body.len - x->body_off;
        if (!x->started) {
                x->started = true;
                for (size_t off = 0; off < x->resp_hdrs.len;) {
                        const char *name = x->resp_hdrs.data + off, *value;

                        off += strlen(name) + 1;
                        value = x->resp_hdrs.data + off;
                        off += strlen(value) + 1;
                        http_response_header(r, name, value);
                }
                add_cors(p, r);

                if (x->finished && x->result == 0 && !r->head &&
                    (x->content_length < 0 || (uint64_t) x->content_length == have)) {
                        /* the usual small answer, complete already: one piece */
                        x->ended = true;
                        http_reply(r, (unsigned) x->status, NULL, x->body.data ? x->body.data + x->body_off : "",
                                   have);
                        return;
                }
                if (x->finished && x->result == 0 && r->head && x->content_length >= 0) {
                        /* HEAD: upstream's Content-Length, no body (http_reply() sends none for HEAD) */
                        x->ended = true;
                        http_reply(r, (unsigned) x->status, NULL, "", (size_t) x->content_length);
                        return;
                }
                http_stream_begin(r, (unsigned) x->status, NULL, x->content_length);
                if (!x->req)
                        return;
        }

        if (have > 0) {
                bool last = x->finished && x->result == 0;

                if (last)
                        x->ended = true;
                http_stream_write(r, x->body.data + x->body_off, have, last);
                x->body.len = x->body_off = 0;
                if (last || !x->req)
                        return;
        }

        if (x->finished) {
                x->ended = true;
                if (x->result == 0)
                        http_stream_end(r);
                else
                        stream_abort(r);
                return;
        }

        if (x->paused && http_stream_pending(r) < PROXY_BUFFER_HIGH / 2) {
                /* the client delivers the rest from its own source */
                x->paused = false;
                http_client_request_resume(x->q);
        }
}

/* Tells the layer what the client delivered; called once out of the client. Re-entrant calls (a layer
 * callback starting a transfer) leave the work to the outer loop. */
static void proxy_flush(Proxy *p) {
        if (p->in_flush > 0)
                return;

        p->in_flush++;
        while (p->dirty) {
                ProxyXfer *x = p->dirty;

                p->dirty = x->dirty_next;
                x->dirty_next = NULL;
                x->dirty = false;
                xfer_flush(x);
        }
        p->in_flush--;
        proxy_reap(p);
}

static bool uri_is(const char *uri, const char *path) {
        size_t l = strlen(path);

        return strneq(uri, path, l) && (uri[l] == 0 || uri[l] == '?');
}

static HttpBodyMode proxy_begin(HttpRequest *r) {
        /* etcd's proxy reads every request body (ioutil.ReadAll) before forwarding it */
        return HTTP_BODY_READ;
}

static void forward(HttpRequest *r, Proxy *p) {
        ProxyRequest *pr = r->data;
        unsigned n_available;
        MetricsMethod method = metrics_method_from_string(r->method);
        uint64_t start_usec = metrics_now_usec();
        ProxyXfer *x;
        int k;

        metrics.proxy_requests[method]++;
        n_available = set_n_available(p->set, now_usec());
        if (n_available == 0) {
                metrics.proxy_dropped[method][METRICS_PROXY_ZERO_ENDPOINTS]++;
                log_info("proxy: zero endpoints currently available");
                reply_error(r, 503, "proxy: zero endpoints currently available");
                return;
        }

        x = xfer_get(p);
        if (!x) {
                log_oom();
                reply_error(r, 500, "proxy: failed to start forwarding");
                return;
        }
        x->req = r;
        pr->xfer = x;
        x->set = set_ref(p->set);
        x->ep = 0;
        x->n_available = n_available;
        x->metrics_method = method;
        x->start_usec = start_usec;

        k = xfer_prepare(x, r);
        if (k >= 0)
                k = xfer_start(x);
        if (k < 0) {
                log_warning_errno(k, "proxy: failed to start forwarding: %m");
                xfer_drop(x);
                reply_error(r, 500, "proxy: failed to start forwarding");
                return;
        }
        /* the request is written already if a pooled connection took it; the answer comes through the
         * client's callbacks and its flush hook, never from inside this callback of the layer */
}

/* etcd2's startProxy() serves Prometheus' handler next to the proxy, outside its CORS and readonly
 * wrappers. */
static void reply_metrics(HttpRequest *r) {
        char *text = NULL;
        size_t len = 0;

        if (metrics_scrape(&text, &len) < 0) {
                log_oom();
                http_reply(r, 500, NULL, "", 0);
                return;
        }
        http_reply_ref(r, 200, METRICS_CONTENT_TYPE, text, len, free, text);
}

static void proxy_handle(HttpRequest *r) {
        Proxy *p = r->userdata;

        if (uri_is(r->uri, "/metrics"))
                reply_metrics(r);
        /* NewReadonlyHandler() wraps everything, the config endpoint too */
        else if (p->readonly && !streq(r->method, "GET"))
                reply_full(r, 501, NULL, "", NULL, false);
        else if (streq(r->method, "OPTIONS"))
                reply(r, 200, NULL, "", NULL);
        else if (uri_is(r->uri, "/v2/config/local/proxy"))
                reply_config(r, p);
        else if (r->body_too_large)
                reply_error(r, 500, "proxy: failed to read request body: http: request body too large");
        else
                forward(r, p);
}

static bool proxy_hangup(HttpRequest *r) {
        ProxyRequest *pr = r->data;

        /* as etcd2's reverse proxy: the upstream request ends with the client's connection */
        if (pr->xfer)
                xfer_drop(pr->xfer);
        return false;
}

static void proxy_drained(HttpRequest *r) {
        ProxyRequest *pr = r->data;
        ProxyXfer *x = pr->xfer;
        Proxy *p = r->userdata;

        if (!x || !x->paused)
                return;
        x->paused = false;
        http_client_request_resume(x->q);
        proxy_flush(p);
}

static void proxy_done(HttpRequest *r) {
        (void) proxy_hangup(r);
}

const HttpHandler proxy_http_handler = {
        .data_size = sizeof(ProxyRequest),
        .begin = proxy_begin,
        .handle = proxy_handle,
        .hangup = proxy_hangup,
        .drained = proxy_drained,
        .done = proxy_done,
};

/* --- setup ---------------------------------------------------------------------------------- */

int proxy_new(sd_event *event, const Config *config, char **peer_urls, Proxy **ret) {
        _cleanup_(proxy_freep) Proxy *p = NULL;
        _cleanup_free_ char *list = NULL;
        unsigned seed = 0;
        int r;

        assert(event);
        assert(config);
        assert(ret);

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return log_error_errno(-EIO, "proxy: failed to initialize libcurl");

        p = calloc(1, sizeof(Proxy));
        if (!p)
                return log_oom();
        p->event = sd_event_ref(event);
        p->config = config;
        p->readonly = config->proxy == PROXY_READONLY;
        metrics.proxy = true;
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed)
                seed = (unsigned) now_usec() ^ (unsigned) getpid();
        p->rand_state = seed;

        if (asprintf(&p->dir, "%s/proxy", config->data_dir) < 0 ||
            asprintf(&p->cluster_file, "%s/cluster", p->dir) < 0)
                return log_oom();
        if (mkdir(config->data_dir, 0700) < 0 && errno != EEXIST)
                return log_error_errno(-errno, "proxy: failed to create data dir %s: %m", config->data_dir);
        if (mkdir(p->dir, 0700) < 0 && errno != EEXIST)
                return log_error_errno(-errno, "proxy: failed to create %s: %m", p->dir);

        r = cluster_file_read(p, &p->peer_urls);
        if (r >= 0) {
                if (!isempty(config->discovery))
                        log_warning("proxy: discovery token ignored since the proxy has already been initialized. "
                                    "Valid cluster file found at %s", p->cluster_file);
                if (!isempty(config->discovery_srv))
                        log_warning("proxy: DNS SRV discovery ignored since the proxy has already been initialized. "
                                    "Valid cluster file found at %s", p->cluster_file);
                list = strv_join(p->peer_urls);
                log_info("proxy: using peer urls %s from cluster file %s", strempty(list), p->cluster_file);
                if (!strv_isempty(peer_urls))
                        log_info("proxy: --initial-cluster (and discovery) ignored: the proxy was initialized before");
        } else if (r == -ENOENT) {
                size_t n = strv_length(peer_urls);

                p->peer_urls = calloc(n + 1, sizeof(char *));
                if (!p->peer_urls)
                        return log_oom();
                for (size_t i = 0; i < n; i++)
                        if (!(p->peer_urls[i] = strdup(peer_urls[i])))
                                return log_oom();
                list = strv_join(p->peer_urls);
                log_info("proxy: using peer urls %s", strempty(list));
        } else
                return log_error_errno(r, "proxy: failed to read cluster file %s: %m", p->cluster_file);

        /* startProxy: both transports from cfg.peerTLSInfo; Go's TLSInfo trusts CAFile and TrustedCAFile */
        const TlsInfo tls = config_peer_tls_info(config);
        bool have_tls = config_peer_tls_given(config);

        /* forwarding: --proxy-dial-timeout; --proxy-read-timeout as "no byte for that long" in whole
         * seconds, as libcurl's CURLOPT_LOW_SPEED_TIME applied it (0: none, for watches).
         * --proxy-write-timeout is not applied (it was not with libcurl either). */
        {
                HttpClientOptions o = {
                        .connect_timeout_usec = (uint64_t) config->proxy_dial_timeout_ms * USEC_PER_MSEC,
                        .read_timeout_usec = config->proxy_read_timeout_ms > 0 ?
                                (uint64_t) MAX((config->proxy_read_timeout_ms + 999) / 1000, 1u) * USEC_PER_SEC : 0,
                        .max_idle = PROXY_MAX_CONNECTS,
                };

                r = http_client_new(event, &o, &p->client);
                if (r < 0)
                        return log_error_errno(r, "proxy: failed to set up the upstream client: %m");
                http_client_set_flush(p->client, on_client_flush, p);
                if (have_tls) {
                        gnutls_certificate_credentials_t cred;

                        /* etcd2 exits when the peer TLS files do not load (NewTimeoutTransport fails) */
                        r = tls_client_credentials_new(&tls, &cred);
                        if (r < 0)
                                return log_error_errno(r, "proxy: failed to load the peer TLS files: %m");
                        http_client_set_tls(p->client, cred);
                }
        }

        /* refresh: the first one right away */
        r = curl_glue_new(event, &p->glue);
        if (r < 0)
                return log_error_errno(r, "proxy: failed to set up libcurl: %m");
        r = curl_request_new(p->glue, NULL, &p->members_req);
        if (r < 0)
                return log_error_errno(r, "proxy: failed to set up libcurl: %m");
        curl_request_set_timeout(p->members_req, PROXY_REFRESH_TIMEOUT_USEC);
        curl_request_set_body_max(p->members_req, PROXY_MEMBERS_BODY_MAX);
        curl_request_set_userdata(p->members_req, p);
        if (config->proxy_dial_timeout_ms > 0)
                (void) curl_easy_setopt(curl_request_get_easy(p->members_req), CURLOPT_CONNECTTIMEOUT_MS,
                                        (long) config->proxy_dial_timeout_ms);
        r = curl_glue_set_tls(curl_request_get_easy(p->members_req), &tls);
        if (r < 0)
                return log_error_errno(r, "proxy: failed to set up libcurl's TLS: %m");
        /* HTTP/1.1, as etcd2's Go transport (a custom TLS config: no h2) speaks it; over TLS libcurl would
         * offer h2 by ALPN, which etcd 3.4's peer port accepts */
        (void) curl_easy_setopt(curl_request_get_easy(p->members_req), CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
        refresh_start(p);

        *ret = TAKE_PTR(p);
        return 0;
}

Proxy *proxy_free(Proxy *p) {
        if (!p)
                return NULL;

        assert(p->in_flush == 0);

        /* the HTTP server is gone first: no request is left, nor anything to flush */
        while (p->dirty) {
                ProxyXfer *x = p->dirty;

                p->dirty = x->dirty_next;
                x->dirty = false;
        }
        p->orphans = NULL;      /* all on the active list too */
        while (p->active)
                xfer_release(p->active);
        while (p->pool) {
                ProxyXfer *x = p->pool;
                p->pool = x->next;
                xfer_destroy(x);
        }
        p->client = http_client_free(p->client);

        p->refresh_timer = sd_event_source_disable_unref(p->refresh_timer);
        curl_request_free(p->members_req);
        curl_glue_free(p->glue);

        set_unref(p->set);
        strv_free(p->endpoints_strv);
        endpoints_retired_free(p);
        strv_free(p->peer_urls);
        free(p->cluster_file);
        free(p->dir);
        sd_event_unref(p->event);
        free(p);
        return NULL;
}
