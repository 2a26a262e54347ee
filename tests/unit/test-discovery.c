/* SPDX-License-Identifier: Apache-2.0 */
/* test-discovery.c - the discovery client against a fake v2 discovery service inside the test. */

/*
 * The fake service runs on our own HTTP layer (http-server.c), on the same sd-event loop as the discovery
 * client under test, so this test exercises the layer as well: a listener on a bound 127.0.0.1 socket,
 * a handler with per-request state, answers with http_reply(), some of them later than handle() (parked
 * watches), and client hang-ups of parked requests. It keeps a flat map key -> value with etcd's
 * indexes and an event history, and answers just what discovery asks for: GET of a key or a directory
 * (X-Etcd-Index), PUT ?prevExist=false (201, or 412 errorCode 105), and long-poll watches (?wait=true,
 * recursive, waitIndex) that are answered once a matching event exists, or 401 if told the history is
 * cleared. A "garbage" switch makes it answer HTML, and it can be started late on a fixed port (endpoint
 * down, then up). Its keys are plain URL paths: discovery must not insert /v2/keys.
 *
 * The daemon's stderr is captured per test (log lines are checked for etcd2's wording) and echoed as
 * TAP comments.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "discovery.h"
#include "http-server.h"
#include "http-util.h"
#include "log.h"

#define TOKEN "/_etcd/registry/4f3a1c0e"

static sd_event *event;

/* ---- the fake discovery service ---- */

typedef struct FakeEntry {
        char *key, *value, *action;
        uint64_t created, modified;
} FakeEntry;

/* Per request, at r->data. A watch without a matching event yet waits on fake.watches. */
typedef struct FakeRequest {
        HttpRequest *r;
        struct FakeRequest *next;
        bool parked;
        char *key;
        uint64_t wait_index;
        bool recursive;
} FakeRequest;

static struct {
        HttpServer *server;
        HttpService *service;
        uint16_t port;
        FakeEntry keys[64];
        size_t n_keys;
        FakeEntry events[64];
        size_t n_events;
        FakeRequest *watches;
        uint64_t index;
        bool garbage;
        uint64_t cleared_below;         /* watches with a waitIndex below this get 401 */
        int fail_watches;               /* that many recursive watches get 503 */
        int n_puts, n_watches, n_gets, n_401, n_proxied, n_v2keys, n_hangups;
        char *last_put_key, *last_put_value;
} fake;

static void fake_reset(void) {
        for (size_t i = 0; i < fake.n_keys; i++) {
                free(fake.keys[i].key);
                free(fake.keys[i].value);
        }
        for (size_t i = 0; i < fake.n_events; i++) {
                free(fake.events[i].key);
                free(fake.events[i].value);
                free(fake.events[i].action);
        }
        free(fake.last_put_key);
        free(fake.last_put_value);
        memset(fake.keys, 0, sizeof(fake.keys));
        memset(fake.events, 0, sizeof(fake.events));
        fake.n_keys = fake.n_events = 0;
        fake.watches = NULL;
        fake.index = 10;        /* a used discovery service: indexes do not start at 1 */
        fake.garbage = false;
        fake.cleared_below = 0;
        fake.fail_watches = 0;
        fake.n_puts = fake.n_watches = fake.n_gets = fake.n_401 = fake.n_proxied = fake.n_v2keys = 0;
        fake.n_hangups = 0;
        fake.last_put_key = fake.last_put_value = NULL;
}

static FakeEntry *fake_find(const char *key) {
        for (size_t i = 0; i < fake.n_keys; i++)
                if (strcmp(fake.keys[i].key, key) == 0)
                        return &fake.keys[i];
        return NULL;
}

static char *node_json(const FakeEntry *e) {
        char *s;

        assert_true(asprintf(&s, "{\"key\":\"%s\",\"value\":\"%s\",\"modifiedIndex\":%" PRIu64
                             ",\"createdIndex\":%" PRIu64 "}", e->key, e->value, e->modified, e->created) > 0);
        return s;
}

static bool under(const char *key, const char *dir) {
        size_t n = strlen(dir);
        return strncmp(key, dir, n) == 0 && key[n] == '/';
}

static void respond(HttpRequest *r, unsigned status, const char *body) {
        http_response_header_u64(r, "X-Etcd-Index", fake.index, 10);
        http_reply(r, status, fake.garbage ? "text/html" : "application/json", body, strlen(body));
}

static void respond_error(HttpRequest *r, unsigned status, int code, const char *msg, const char *cause) {
        char body[512];

        snprintf(body, sizeof(body), "{\"errorCode\":%d,\"message\":\"%s\",\"cause\":\"%s\",\"index\":%" PRIu64 "}\n",
                 code, msg, cause, fake.index);
        respond(r, status, body);
}

static bool watch_matches(const FakeRequest *w, const FakeEntry *ev) {
        return ev->modified >= w->wait_index &&
               (strcmp(ev->key, w->key) == 0 || (w->recursive && under(ev->key, w->key)));
}

static void respond_event(HttpRequest *r, const FakeEntry *ev) {
        char *n = node_json(ev), *b;

        assert_true(asprintf(&b, "{\"action\":\"%s\",\"node\":%s}\n", ev->action, n) > 0);
        respond(r, 200, b);
        free(n);
        free(b);
}

static void watch_unpark(FakeRequest *w) {
        for (FakeRequest **i = &fake.watches; *i; i = &(*i)->next)
                if (*i == w) {
                        *i = w->next;
                        break;
                }
        w->next = NULL;
        w->parked = false;
}

/* Sets a key (create or update), records the event, answers the watches it matches; returns the index. */
static uint64_t fake_set_key(const char *key, const char *value) {
        FakeEntry *e = fake_find(key), *ev;
        const char *action = e ? "set" : "create";

        fake.index++;
        if (!e) {
                assert_true(fake.n_keys < ELEMENTSOF(fake.keys));
                e = &fake.keys[fake.n_keys++];
                e->key = strdup(key);
                e->created = fake.index;
        } else
                free(e->value);
        e->value = strdup(value);
        e->modified = fake.index;

        assert_true(fake.n_events < ELEMENTSOF(fake.events));
        ev = &fake.events[fake.n_events++];
        *ev = (FakeEntry) { strdup(key), strdup(value), strdup(action), e->created, e->modified };

        for (FakeRequest *w = fake.watches, *next; w; w = next) {
                next = w->next;
                if (!watch_matches(w, ev))
                        continue;
                watch_unpark(w);
                respond_event(w->r, ev);
        }
        return fake.index;
}

static void fake_set(const char *rel, const char *value) {
        char key[256];

        snprintf(key, sizeof(key), "%s/%s", TOKEN, rel);
        (void) fake_set_key(key, value);
}

static const char *form_value(const HttpForm *f, const char *key) {
        const HttpFormField *ff = http_form_get(f, key);
        return ff ? ff->value : NULL;
}

static void handle_get(FakeRequest *fr, const char *key, const HttpForm *q) {
        HttpRequest *r = fr->r;
        const char *wait = form_value(q, "wait");
        const char *rec = form_value(q, "recursive");
        const char *wi = form_value(q, "waitIndex");
        FakeEntry *e;

        if (wait && strcmp(wait, "true") == 0) {
                uint64_t w = wi ? strtoull(wi, NULL, 10) : fake.index + 1;
                bool recursive = rec && strcmp(rec, "true") == 0;

                fake.n_watches++;
                if (recursive && fake.fail_watches > 0) {
                        fake.fail_watches--;
                        respond(r, 503, "{\"message\":\"proxy: zero endpoints currently available\"}");
                        return;
                }
                if (recursive && w < fake.cleared_below) {
                        char cause[128];

                        fake.n_401++;
                        fake.cleared_below = 0;         /* once */
                        snprintf(cause, sizeof(cause), "the requested history has been cleared [%" PRIu64 "/%" PRIu64 "]",
                                 fake.index, w);
                        respond_error(r, 400, 401, "The event in requested index is outdated and cleared", cause);
                        return;
                }
                fr->key = strdup(key);
                assert_non_null(fr->key);
                fr->wait_index = w;
                fr->recursive = recursive;
                for (size_t i = 0; i < fake.n_events; i++)
                        if (watch_matches(fr, &fake.events[i])) {
                                respond_event(r, &fake.events[i]);
                                return;
                        }
                /* answered by fake_set_key() */
                fr->parked = true;
                fr->next = fake.watches;
                fake.watches = fr;
                return;
        }

        fake.n_gets++;
        e = fake_find(key);
        if (e) {
                char *n = node_json(e), *b;

                assert_true(asprintf(&b, "{\"action\":\"get\",\"node\":%s}\n", n) > 0);
                respond(r, 200, b);
                free(n);
                free(b);
                return;
        }

        /* A directory: direct children, subdirectories as dir nodes. */
        char *b = NULL;
        size_t sz = 0;
        FILE *f = open_memstream(&b, &sz);
        bool any = false;
        char seen[64][128];
        size_t n_seen = 0;

        fprintf(f, "{\"action\":\"get\",\"node\":{\"key\":\"%s\",\"dir\":true,\"nodes\":[", key);
        /* Newest first: etcd lists in no particular order, discovery must sort by createdIndex. */
        for (size_t i = fake.n_keys; i-- > 0;) {
                const char *rest, *slash;

                if (!under(fake.keys[i].key, key))
                        continue;
                rest = fake.keys[i].key + strlen(key) + 1;
                slash = strchr(rest, '/');
                if (slash) {
                        bool dup = false;

                        for (size_t j = 0; j < n_seen; j++)
                                if (strncmp(seen[j], rest, slash - rest) == 0 && seen[j][slash - rest] == 0)
                                        dup = true;
                        if (dup)
                                continue;
                        snprintf(seen[n_seen++], sizeof(seen[0]), "%.*s", (int) (slash - rest), rest);
                        fprintf(f, "%s{\"key\":\"%s/%.*s\",\"dir\":true,\"modifiedIndex\":%" PRIu64
                                ",\"createdIndex\":%" PRIu64 "}", any ? "," : "", key, (int) (slash - rest), rest,
                                fake.keys[i].created, fake.keys[i].created);
                } else {
                        char *n = node_json(&fake.keys[i]);
                        fprintf(f, "%s%s", any ? "," : "", n);
                        free(n);
                }
                any = true;
        }
        fprintf(f, "],\"modifiedIndex\":5,\"createdIndex\":5}}\n");
        fclose(f);
        if (!any)
                respond_error(r, 404, 100, "Key not found", key);
        else
                respond(r, 200, b);
        free(b);
}

static void handle_put(HttpRequest *r, const char *key, const HttpForm *q) {
        const char *pe = form_value(q, "prevExist");
        const char *ct = http_request_header(r, "Content-Type");
        char *value = NULL, *n, *b;
        FakeEntry *e;
        int len;

        fake.n_puts++;
        if (!ct || strcmp(ct, "application/x-www-form-urlencoded") != 0) {
                respond_error(r, 400, 209, "Invalid field", "content type");
                return;
        }
        if (r->body.data && strncmp(r->body.data, "value=", 6) == 0)
                value = curl_easy_unescape(NULL, r->body.data + 6, 0, &len);
        if (!value) {
                respond_error(r, 400, 209, "Invalid field", "value");
                return;
        }
        free(fake.last_put_key);
        free(fake.last_put_value);
        fake.last_put_key = strdup(key);
        fake.last_put_value = strdup(value);

        if (pe && strcmp(pe, "false") == 0 && fake_find(key)) {
                curl_free(value);
                respond_error(r, 412, 105, "Key already exists", key);
                return;
        }
        (void) fake_set_key(key, value);
        curl_free(value);
        e = fake_find(key);
        n = node_json(e);
        assert_true(asprintf(&b, "{\"action\":\"create\",\"node\":%s}\n", n) > 0);
        respond(r, 201, b);
        free(n);
        free(b);
}

static HttpBodyMode fake_begin(HttpRequest *r) {
        FakeRequest *fr = r->data;

        fr->r = r;
        return HTTP_BODY_READ;
}

static void fake_handle(HttpRequest *r) {
        _cleanup_(http_form_done) HttpForm q = {};
        _cleanup_(freep) char *path = NULL;
        const char *uri = r->uri, *qm;
        size_t path_len;

        /* Through an HTTP proxy (here: us), the request line carries the absolute URI. */
        if (strncmp(uri, "http://", 7) == 0) {
                fake.n_proxied++;
                uri = strchr(uri + 7, '/') ?: "/";
        }
        qm = strchr(uri, '?');
        assert_int_equal(http_unescape(uri, qm ? (size_t) (qm - uri) : strlen(uri), false, &path, &path_len, NULL), 0);
        if (qm)
                assert_int_equal(http_form_parse(&q, qm + 1, strlen(qm + 1), NULL), 0);
        if (strstr(path, "/v2/keys"))
                fake.n_v2keys++;

        if (fake.garbage)
                respond(r, 200, "<html><body>It works!</body></html>\n");
        else if (strcmp(r->method, "GET") == 0)
                handle_get(r->data, path, &q);
        else if (strcmp(r->method, "PUT") == 0)
                handle_put(r, path, &q);
        else
                respond_error(r, 405, 0, "Method not allowed", r->method);
}

static bool fake_hangup(HttpRequest *r) {
        fake.n_hangups++;
        return false;
}

static void fake_done(HttpRequest *r) {
        FakeRequest *fr = r->data;

        if (fr->parked)
                watch_unpark(fr);
        free(fr->key);
}

static const HttpHandler fake_handler = {
        .data_size = sizeof(FakeRequest),
        .begin = fake_begin,
        .handle = fake_handle,
        .hangup = fake_hangup,
        .done = fake_done,
};

static void fake_start(uint16_t port) {
        static const HttpLimits limits = {
                .head_max = 64 * 1024,
                .body_max = 1024 * 1024,
                .idle_timeout_usec = 60 * USEC_PER_SEC,
                .head_timeout_usec = 10 * USEC_PER_SEC,
        };
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
        socklen_t l = sizeof(sa);
        int fd, one = 1;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 64), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &l), 0);
        fake.port = ntohs(sa.sin_port);

        assert_int_equal(http_server_new(event, &fake.server), 0);
        assert_int_equal(http_server_add_service(fake.server, "fake-discovery", &fake_handler, NULL, &limits,
                                                 &fake.service), 0);
        assert_int_equal(http_service_add_listener(fake.service, fd), 0);
}

/* Ends every connection: parked watches get hangup() and done(). */
static void fake_stop(void) {
        if (!fake.server)
                return;
        fake.server = http_server_free(fake.server);
        fake.service = NULL;
        assert_null(fake.watches);
}

static uint16_t free_port(void) {
        struct sockaddr_in sa = { .sin_family = AF_INET };
        socklen_t l = sizeof(sa);
        int fd;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &l), 0);
        close(fd);
        return ntohs(sa.sin_port);
}

/* ---- stderr capture ---- */

static int saved_stderr = -1;
static FILE *capture;
static char *captured;

static void capture_start(void) {
        free(captured);
        captured = NULL;
        capture = tmpfile();
        assert_non_null(capture);
        fflush(stderr);
        saved_stderr = dup(STDERR_FILENO);
        assert_true(dup2(fileno(capture), STDERR_FILENO) >= 0);
}

static void capture_stop(void) {
        long n;

        if (!capture)
                return;
        fflush(stderr);
        assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
        close(saved_stderr);
        n = ftell(capture);
        captured = calloc(1, n + 1);
        rewind(capture);
        if (n > 0)
                assert_int_equal(fread(captured, 1, n, capture), (size_t) n);
        fclose(capture);
        capture = NULL;

        for (char *l = captured, *e; l && *l; l = e) {
                e = l + strcspn(l, "\n");
                printf("# %.*s\n", (int) (e - l), l);
                if (*e)
                        e++;
        }
        fflush(stdout);
}

static bool logged(const char *s) {
        return captured && strstr(captured, s);
}

/* ---- driving discovery through sd-event ---- */

typedef struct Result {
        sd_event *event;
        bool done;
        int calls;
        int error;
        bool full;
        char *cluster;
} Result;

static CurlGlue *glue;
static Result result;
static bool loop_stop;
static int loop_rc;

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static void on_done(Discovery *d, int error, bool full, const char *cluster, void *userdata) {
        Result *r = userdata;

        r->done = true;
        r->calls++;
        r->error = error;
        r->full = full;
        free(r->cluster);
        r->cluster = cluster ? strdup(cluster) : NULL;
        loop_stop = true;
}

static int on_deadline(sd_event_source *s, uint64_t usec, void *userdata) {
        loop_stop = true;
        loop_rc = -ETIMEDOUT;
        return 0;
}

static int setup(void **state) {
        fake_reset();
        memset(&result, 0, sizeof(result));
        assert_int_equal(sd_event_new(&event), 0);
        assert_int_equal(curl_glue_new(event, &glue), 0);
        result.event = event;
        capture_start();
        return 0;
}

static void etcd_stop(void);

static int teardown(void **state) {
        etcd_stop();            /* a failed assertion in test_real_etcd skips its own clean-up */
        capture_stop();
        fake_stop();
        glue = curl_glue_free(glue);
        event = sd_event_unref(event);
        free(result.cluster);
        result.cluster = NULL;
        return 0;
}

static char *token_url(uint16_t port) {
        char *u;

        assert_true(asprintf(&u, "http://127.0.0.1:%u%s", port, TOKEN) > 0);
        return u;
}

/* Runs the loop until the done callback or `timeout_usec` (then -ETIMEDOUT). Not sd_event_loop(): an
 * exited loop cannot run again, and some tests run it twice. */
static int run(uint64_t timeout_usec) {
        _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;

        assert_int_equal(sd_event_add_time_relative(event, &t, CLOCK_MONOTONIC, timeout_usec, 1000, on_deadline, NULL), 0);
        loop_stop = false;
        loop_rc = 0;
        while (!loop_stop)
                assert_true(sd_event_run(event, UINT64_MAX) >= 0);
        return loop_rc;
}

static Discovery *new_discovery(uint16_t port, const char *proxy) {
        _cleanup_(freep) char *url = token_url(port);
        Discovery *d = NULL;

        assert_int_equal(discovery_new(event, glue, url, proxy, &d), 0);
        return d;
}

/* Joins as member 0x5d1f... named "self"; returns the loop's exit code. */
#define SELF_ID UINT64_C(0x5D1FE0A12B)
#define SELF_HEX "5d1fe0a12b"
#define SELF_VALUE "self=http://127.0.0.1:7003"

static int join_and_run(Discovery *d, uint64_t timeout_usec) {
        assert_int_equal(discovery_join(d, SELF_ID, SELF_VALUE, on_done, &result), 0);
        return run(timeout_usec);
}

/* ---- tests ---- */

static void test_backoff(void **state) {
        assert_int_equal(discovery_backoff_usec(1), 2 * USEC_PER_SEC);
        assert_int_equal(discovery_backoff_usec(2), 4 * USEC_PER_SEC);
        assert_int_equal(discovery_backoff_usec(3), 8 * USEC_PER_SEC);
        assert_int_equal(discovery_backoff_usec(5), 32 * USEC_PER_SEC);
        assert_int_equal(discovery_backoff_usec(6), 64 * USEC_PER_SEC);
        assert_int_equal(discovery_backoff_usec(7), 64 * USEC_PER_SEC);
        assert_int_equal(discovery_backoff_usec(100), 64 * USEC_PER_SEC);
}

static void test_split_url(void **state) {
        static const struct {
                const char *url, *endpoint, *cluster;
        } ok[] = {
                { "https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579cbf573de",
                  "https://discovery.etcd.io", "/3e86b59982e49066c5d813af1c2e2579cbf573de" },
                { "http://10.0.0.1:2379/v2/keys/discovery/tok/", "http://10.0.0.1:2379", "/v2/keys/discovery/tok" },
                { "http://h:1//a//b", "http://h:1", "/a/b" },
                { "http://h:1", "http://h:1", "" },
                { "http://h:1/a?x=1", "http://h:1", "/a" },
                { "http://[::1]:4001/t", "http://[::1]:4001", "/t" },
        };

        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                _cleanup_(freep) char *e = NULL, *c = NULL;

                assert_int_equal(discovery_split_url(ok[i].url, &e, &c), 0);
                assert_string_equal(e, ok[i].endpoint);
                assert_string_equal(c, ok[i].cluster);
        }
        assert_int_equal(discovery_split_url("discovery.etcd.io/abc", NULL, NULL), -EINVAL);
        assert_int_equal(discovery_split_url("http:///abc", NULL, NULL), -EINVAL);
        assert_int_equal(discovery_split_url("://h/abc", NULL, NULL), -EINVAL);

        Discovery *d = NULL;
        assert_int_equal(discovery_new(event, glue, "not a url", NULL, &d), -EINVAL);
        assert_null(d);
}

static void test_validate(void **state) {
        _cleanup_(freep) char *bad = NULL;

        assert_int_equal(discovery_validate_cluster("a=http://1.1.1.1:2380,b=https://h:2380", 2, NULL), 0);
        /* One member with two peer URLs counts once. */
        assert_int_equal(discovery_validate_cluster("a=http://1.1.1.1:2380,a=http://1.1.1.2:2380,b=http://h:1", 2, NULL), 0);
        assert_int_equal(discovery_validate_cluster("a=http://1.1.1.1:2380,a=http://1.1.1.2:2380", 2, NULL), -ENOTUNIQ);
        assert_int_equal(discovery_validate_cluster("a=http://1.1.1.1:2380,b=http://1.1.1.1:2380", 2, &bad), -EADDRINUSE);
        assert_string_equal(bad, "http://1.1.1.1:2380");
        assert_int_equal(discovery_validate_cluster("a=ftp://h:1", 1, NULL), -EINVAL);
        assert_int_equal(discovery_validate_cluster("a=http://h", 1, NULL), -EINVAL);
        assert_int_equal(discovery_validate_cluster("a=http://h:1/p", 1, NULL), -EINVAL);
        assert_int_equal(discovery_validate_cluster("http://h:1", 1, NULL), -EINVAL);
        assert_int_equal(discovery_validate_cluster("", 1, NULL), -EINVAL);
}

static void test_happy_path(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;

        fake_start(0);
        fake_set("_config/size", "3");
        fake_set("a1", "infra1=http://127.0.0.1:7001");
        fake_set("b2", "infra2=http://127.0.0.1:7002");
        d = new_discovery(fake.port, NULL);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_true(result.done);
        assert_int_equal(result.calls, 1);
        assert_int_equal(result.error, 0);
        assert_false(result.full);
        assert_string_equal(result.cluster,
                            "infra1=http://127.0.0.1:7001,infra2=http://127.0.0.1:7002," SELF_VALUE);
        /* Registered under the lowercase unpadded hex ID, form-encoded value, no /v2/keys inserted. */
        assert_int_equal(fake.n_puts, 1);
        assert_string_equal(fake.last_put_key, TOKEN "/" SELF_HEX);
        assert_string_equal(fake.last_put_value, SELF_VALUE);
        assert_int_equal(fake.n_v2keys, 0);
        assert_int_equal(fake.n_watches, 1);   /* the confirmation watch on the own key only */
        assert_true(logged("found self " SELF_HEX " in the cluster"));
        assert_true(logged("found 3 needed peer(s)"));
}

static void test_cluster_full(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;

        fake_start(0);
        fake_set("_config/size", "2");
        /* Key names sort the other way round than creation: order is by createdIndex. */
        fake_set("ff", "late0=http://127.0.0.1:7101");
        fake_set("ee", "late1=http://127.0.0.1:7102");
        fake_set("aa", "late2=http://127.0.0.1:7103");
        d = new_discovery(fake.port, NULL);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_true(result.done);
        assert_int_equal(result.error, 0);
        assert_true(result.full);
        assert_string_equal(result.cluster, "late0=http://127.0.0.1:7101,late1=http://127.0.0.1:7102");
        assert_int_equal(fake.n_puts, 0);       /* fast path: not registered */
}

static void test_duplicate_id(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;

        fake_start(0);
        fake_set("_config/size", "3");
        fake_set(SELF_HEX, SELF_VALUE);
        d = new_discovery(fake.port, NULL);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_true(result.done);
        assert_int_equal(result.error, -EEXIST);
        assert_null(result.cluster);
        assert_int_equal(fake.n_puts, 1);
        assert_true(logged("member self has previously registered with discovery service token (http://127.0.0.1:"));
        assert_true(logged("could not find valid cluster configuration"));
}

static void test_size_missing(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;

        fake_start(0);
        fake_set("a1", "infra1=http://127.0.0.1:7001");
        d = new_discovery(fake.port, NULL);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_int_equal(result.error, -ENOENT);
        assert_true(logged("failed to join discovery cluster (100: Key not found (" TOKEN "/_config/size) ["));
        assert_true(logged("please generate a new discovery token and try to bootstrap again."));
        assert_int_equal(fake.n_puts, 0);
}

static void test_size_bad(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;

        fake_start(0);
        fake_set("_config/size", "abc");
        d = new_discovery(fake.port, NULL);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_int_equal(result.error, -ERANGE);
        assert_true(logged("discovery: size key is bad"));
        assert_true(logged("please generate a new discovery token and try to bootstrap again."));
        assert_int_equal(fake.n_puts, 0);
}

static void test_garbage(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;

        fake_start(0);
        fake.garbage = true;
        d = new_discovery(fake.port, NULL);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_int_equal(result.error, -EBADMSG);
        assert_true(logged("discovery: bad discovery endpoint"));
        assert_true(logged("please generate a new discovery token and try to bootstrap again."));
}

static int on_start_fake(sd_event_source *s, uint64_t usec, void *userdata) {
        fake_start(*(uint16_t *) userdata);
        return 0;
}

static void test_down_then_up(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;
        uint16_t port = free_port();
        uint64_t t0;

        /* Nobody listens: connection refused, retry in 2 s; the service comes up after 0.5 s. */
        fake_set("_config/size", "1");
        d = new_discovery(port, NULL);
        assert_int_equal(sd_event_add_time_relative(event, &t, CLOCK_MONOTONIC, 500 * USEC_PER_MSEC, 1000,
                                                    on_start_fake, &port), 0);
        t0 = now_usec();
        assert_int_equal(join_and_run(d, 6 * USEC_PER_SEC), 0);
        t0 = now_usec() - t0;
        capture_stop();
        assert_true(result.done);
        assert_int_equal(result.error, 0);
        assert_string_equal(result.cluster, SELF_VALUE);
        assert_true(t0 >= 2 * USEC_PER_SEC);
        assert_true(t0 < 4 * USEC_PER_SEC);
        assert_true(logged("cluster unreachable"));
        assert_true(logged("retrying in 2s"));
        assert_false(logged("retrying in 4s"));
}

static int on_register_late(sd_event_source *s, uint64_t usec, void *userdata);

static void test_5xx_while_waiting(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;
        int step = 1;
        uint64_t t0;

        /* The watch gets 503: retried after 2 s by listing again, which finds the late member. */
        fake_start(0);
        fake_set("_config/size", "2");
        fake_set("a1", "infra1=http://127.0.0.1:7001");
        fake.fail_watches = 1;
        d = new_discovery(fake.port, NULL);
        assert_int_equal(sd_event_add_time_relative(event, &t, CLOCK_MONOTONIC, 300 * USEC_PER_MSEC, 1000,
                                                    on_register_late, &step), 0);

        t0 = now_usec();
        assert_int_equal(discovery_get(d, on_done, &result), 0);
        assert_int_equal(run(5 * USEC_PER_SEC), 0);
        t0 = now_usec() - t0;
        capture_stop();
        assert_int_equal(result.error, 0);
        assert_string_equal(result.cluster, "infra1=http://127.0.0.1:7001,infra3=http://127.0.0.1:7004");
        assert_int_equal(fake.n_watches, 1);
        assert_true(t0 >= 2 * USEC_PER_SEC);
        assert_true(logged("has no leader"));
        assert_true(logged("waiting for other nodes: error connecting to http://127.0.0.1:"));
        assert_true(logged("retrying in 2s"));
}

static int on_register_late(sd_event_source *s, uint64_t usec, void *userdata) {
        int *step = userdata;

        switch ((*step)++) {
        case 0:
                /* Not registrations: a _config write and an update of a known member. */
                fake_set("_config/other", "x");
                fake_set("a1", "infra1=http://127.0.0.1:7001");
                break;
        case 1:
                fake_set("c3", "infra3=http://127.0.0.1:7004");
                return 0;
        }
        return sd_event_source_set_time_relative(s, 150 * USEC_PER_MSEC) < 0 ? -EIO :
               sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static void test_wait_for_late(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;
        int step = 0;

        fake_start(0);
        fake_set("_config/size", "3");
        fake_set("a1", "infra1=http://127.0.0.1:7001");
        d = new_discovery(fake.port, NULL);
        assert_int_equal(sd_event_add_time_relative(event, &t, CLOCK_MONOTONIC, 300 * USEC_PER_MSEC, 1000,
                                                    on_register_late, &step), 0);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_true(result.done);
        assert_int_equal(result.error, 0);
        assert_string_equal(result.cluster,
                            "infra1=http://127.0.0.1:7001," SELF_VALUE ",infra3=http://127.0.0.1:7004");
        assert_int_equal(step, 2);
        /* confirm + one per event: _config/other, a1 update, c3 */
        assert_int_equal(fake.n_watches, 4);
        assert_true(logged("found 2 peer(s), waiting for 1 more"));
}

static void test_watch_index_cleared(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;
        int step = 1;

        fake_start(0);
        fake_set("_config/size", "3");
        fake_set("a1", "infra1=http://127.0.0.1:7001");
        fake.cleared_below = 1000;      /* the first watch with a small waitIndex gets 401 */
        d = new_discovery(fake.port, NULL);
        assert_int_equal(sd_event_add_time_relative(event, &t, CLOCK_MONOTONIC, 300 * USEC_PER_MSEC, 1000,
                                                    on_register_late, &step), 0);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_int_equal(result.error, 0);
        assert_string_equal(result.cluster,
                            "infra1=http://127.0.0.1:7001," SELF_VALUE ",infra3=http://127.0.0.1:7004");
        assert_int_equal(fake.n_401, 1);
        assert_true(logged("listing again"));
        assert_int_equal(fake.n_puts, 1);       /* not registered twice */
}

static void test_duplicate_name(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;

        fake_start(0);
        fake_set("_config/size", "3");
        fake_set("a1", "infra1=http://127.0.0.1:7001");
        fake_set("b2", "infra1=http://127.0.0.1:7002");
        d = new_discovery(fake.port, NULL);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_int_equal(result.error, -ENOTUNIQ);
        assert_null(result.cluster);
        assert_true(logged("member with duplicated name has registered with discovery service token(http://127.0.0.1:"));
        assert_true(logged("please do not reuse the discovery token"));
}

static void test_get_full(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;

        fake_start(0);
        fake_set("_config/size", "2");
        fake_set("ff", "late0=http://127.0.0.1:7101");
        fake_set("ee", "late1=http://127.0.0.1:7102");
        fake_set("aa", "late2=http://127.0.0.1:7103");
        d = new_discovery(fake.port, NULL);

        assert_int_equal(discovery_get(d, on_done, &result), 0);
        assert_int_equal(run(5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_int_equal(result.error, 0);
        assert_true(result.full);
        assert_string_equal(result.cluster, "late0=http://127.0.0.1:7101,late1=http://127.0.0.1:7102");
        assert_int_equal(fake.n_puts, 0);
}

static void test_get_waits(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;
        int step = 1;

        fake_start(0);
        fake_set("_config/size", "2");
        fake_set("a1", "infra1=http://127.0.0.1:7001");
        d = new_discovery(fake.port, NULL);
        assert_int_equal(sd_event_add_time_relative(event, &t, CLOCK_MONOTONIC, 300 * USEC_PER_MSEC, 1000,
                                                    on_register_late, &step), 0);

        assert_int_equal(discovery_get(d, on_done, &result), 0);
        assert_int_equal(discovery_get(d, on_done, &result), -EBUSY);
        assert_int_equal(run(5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_int_equal(result.error, 0);
        assert_false(result.full);
        assert_string_equal(result.cluster, "infra1=http://127.0.0.1:7001,infra3=http://127.0.0.1:7004");
        assert_int_equal(fake.n_puts, 0);
        assert_int_equal(fake.n_watches, 1);
}

static void test_proxy(void **state) {
        _cleanup_(discovery_freep) Discovery *d = NULL;
        _cleanup_(freep) char *proxy = NULL;

        /* The discovery host does not resolve; only the proxy (the fake, answering absolute URIs) can
         * reach it. "127.0.0.1:port" without a scheme gets http:// as in etcd2. */
        fake_start(0);
        fake_set("_config/size", "1");
        assert_true(asprintf(&proxy, "127.0.0.1:%u", fake.port) > 0);
        assert_int_equal(discovery_new(event, glue, "http://discovery.invalid:4001" TOKEN, proxy, &d), 0);

        assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
        capture_stop();
        assert_int_equal(result.error, 0);
        assert_string_equal(result.cluster, SELF_VALUE);
        assert_true(fake.n_proxied >= 3);
        assert_true(logged("using proxy \"http://127.0.0.1:"));
}

static void on_done_free(Discovery *d, int error, bool full, const char *cluster, void *userdata) {
        Discovery **dp = userdata;

        /* Freeing from the callback must be safe. */
        assert_ptr_equal(*dp, d);
        *dp = discovery_free(d);
        result.calls++;
        result.error = error;
        loop_stop = true;
}

static void test_free_in_callback_and_while_waiting(void **state) {
        Discovery *d;

        fake_start(0);
        fake_set("_config/size", "1");
        d = new_discovery(fake.port, NULL);
        assert_int_equal(discovery_join(d, SELF_ID, SELF_VALUE, on_done_free, &d), 0);
        assert_int_equal(run(5 * USEC_PER_SEC), 0);
        assert_null(d);
        assert_int_equal(result.calls, 1);
        assert_int_equal(result.error, 0);

        /* Freed while a watch is pending: no callback afterwards. */
        fake_set("_config/size", "5");
        d = new_discovery(fake.port, NULL);
        assert_int_equal(discovery_get(d, on_done, &result), 0);
        assert_int_equal(run(500 * USEC_PER_MSEC), -ETIMEDOUT);
        assert_int_equal(fake.n_watches, 2);
        d = discovery_free(d);
        assert_int_equal(run(200 * USEC_PER_MSEC), -ETIMEDOUT);
        assert_int_equal(result.calls, 1);
        /* the layer saw the client of the parked watch go away */
        assert_int_equal(fake.n_hangups, 1);
        assert_null(fake.watches);
        capture_stop();
}

/* ---- against real etcd 3.4 (--enable-v2) as the discovery service, if installed ---- */

static size_t discard(char *p, size_t size, size_t n, void *userdata) {
        return size * n;
}

/* Blocking request for set-up only (the code under test never blocks). */
static long etcd_request(const char *method, const char *url, const char *body) {
        CURL *c = curl_easy_init();
        long status = 0;

        assert_non_null(c);
        (void) curl_easy_setopt(c, CURLOPT_URL, url);
        (void) curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        (void) curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 2000L);
        (void) curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
        if (method)
                (void) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (body)
                (void) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        if (curl_easy_perform(c) == CURLE_OK)
                (void) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        return status;
}

static char etcd_base[64];
static pid_t etcd_pid;

static void etcd_stop(void) {
        if (etcd_pid > 0) {
                (void) kill(etcd_pid, SIGTERM);
                (void) waitpid(etcd_pid, NULL, 0);
        }
        etcd_pid = 0;
}

static int on_register_etcd(sd_event_source *s, uint64_t usec, void *userdata) {
        char url[256];

        snprintf(url, sizeof(url), "%s/v2/keys/disc/tok/c3", etcd_base);
        assert_int_equal(etcd_request("PUT", url, "value=infra3%3Dhttp%3A%2F%2F127.0.0.1%3A7004"), 201);
        return 0;
}

static void test_real_etcd(void **state) {
        char dir[] = "/tmp/test-discovery-etcd.XXXXXX", url[256], tok[256];
        uint16_t cport = free_port(), pport = free_port();
        pid_t pid;
        bool up = false;

        if (access("/usr/bin/etcd", X_OK) < 0)
                skip();
        assert_non_null(mkdtemp(dir));
        snprintf(etcd_base, sizeof(etcd_base), "http://127.0.0.1:%u", cport);

        etcd_pid = pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                char curl_s[64], purl[64], ic[96];
                int null = open("/dev/null", O_RDWR);

                (void) dup2(null, STDOUT_FILENO);
                (void) dup2(null, STDERR_FILENO);
                /* Nothing else: an inherited pipe would keep `test | grep` waiting for etcd. */
                for (int fd = 3; fd < 1024; fd++)
                        (void) close(fd);
                snprintf(curl_s, sizeof(curl_s), "http://127.0.0.1:%u", cport);
                snprintf(purl, sizeof(purl), "http://127.0.0.1:%u", pport);
                snprintf(ic, sizeof(ic), "disc=%s", purl);
                execl("/usr/bin/etcd", "etcd", "--enable-v2", "--name", "disc", "--data-dir", dir,
                      "--listen-client-urls", curl_s, "--advertise-client-urls", curl_s,
                      "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                      "--initial-cluster", ic, (char *) NULL);
                _exit(127);
        }

        snprintf(url, sizeof(url), "%s/v2/keys/disc/tok/_config/size", etcd_base);
        for (int i = 0; i < 200 && !up; i++) {
                up = etcd_request("PUT", url, "value=3") == 201;
                if (!up)
                        usleep(50 * 1000);
        }
        if (up) {
                _cleanup_(discovery_freep) Discovery *d = NULL, *d2 = NULL, *d3 = NULL;
                _cleanup_(sd_event_source_unrefp) sd_event_source *t = NULL;

                snprintf(url, sizeof(url), "%s/v2/keys/disc/tok/a1", etcd_base);
                assert_int_equal(etcd_request("PUT", url, "value=infra1%3Dhttp%3A%2F%2F127.0.0.1%3A7001"), 201);

                /* Join; the third member registers 300 ms later, seen through the watch. */
                snprintf(tok, sizeof(tok), "%s/v2/keys/disc/tok", etcd_base);
                assert_int_equal(discovery_new(event, glue, tok, NULL, &d), 0);
                assert_int_equal(sd_event_add_time_relative(event, &t, CLOCK_MONOTONIC, 300 * USEC_PER_MSEC, 1000,
                                                            on_register_etcd, NULL), 0);
                assert_int_equal(join_and_run(d, 5 * USEC_PER_SEC), 0);
                assert_int_equal(result.error, 0);
                assert_false(result.full);
                assert_string_equal(result.cluster,
                                    "infra1=http://127.0.0.1:7001," SELF_VALUE ",infra3=http://127.0.0.1:7004");

                /* The same ID again: 105 from etcd -> duplicate ID. */
                free(result.cluster);
                result = (Result) { .event = event };
                assert_int_equal(discovery_new(event, glue, tok, NULL, &d2), 0);
                assert_int_equal(join_and_run(d2, 5 * USEC_PER_SEC), 0);
                /* 3 of 3 registered, but we are among the first 3: not full, and the PUT fails. */
                assert_int_equal(result.error, -EEXIST);

                /* A token without size key: etcd's own 100 error text. */
                free(result.cluster);
                result = (Result) { .event = event };
                snprintf(tok, sizeof(tok), "%s/v2/keys/disc/none", etcd_base);
                assert_int_equal(discovery_new(event, glue, tok, NULL, &d3), 0);
                assert_int_equal(discovery_get(d3, on_done, &result), 0);
                assert_int_equal(run(5 * USEC_PER_SEC), 0);
                assert_int_equal(result.error, -ENOENT);
        }

        etcd_stop();
        {
                char cmd[128];
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
                assert_int_equal(system(cmd), 0);
        }
        capture_stop();
        assert_true(up);
        assert_true(logged("100: Key not found (/disc/none) ["));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_backoff),
                cmocka_unit_test_setup_teardown(test_split_url, setup, teardown),
                cmocka_unit_test(test_validate),
                cmocka_unit_test_setup_teardown(test_happy_path, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cluster_full, setup, teardown),
                cmocka_unit_test_setup_teardown(test_duplicate_id, setup, teardown),
                cmocka_unit_test_setup_teardown(test_size_missing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_size_bad, setup, teardown),
                cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_down_then_up, setup, teardown),
                cmocka_unit_test_setup_teardown(test_5xx_while_waiting, setup, teardown),
                cmocka_unit_test_setup_teardown(test_wait_for_late, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch_index_cleared, setup, teardown),
                cmocka_unit_test_setup_teardown(test_duplicate_name, setup, teardown),
                cmocka_unit_test_setup_teardown(test_get_full, setup, teardown),
                cmocka_unit_test_setup_teardown(test_get_waits, setup, teardown),
                cmocka_unit_test_setup_teardown(test_proxy, setup, teardown),
                cmocka_unit_test_setup_teardown(test_free_in_callback_and_while_waiting, setup, teardown),
                cmocka_unit_test_setup_teardown(test_real_etcd, setup, teardown),
        };

        log_set_prefix(false);
        (void) curl_global_init(CURL_GLOBAL_DEFAULT);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
