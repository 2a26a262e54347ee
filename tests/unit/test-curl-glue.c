/* SPDX-License-Identifier: Apache-2.0 */
/* test-curl-glue.c - libcurl on sd-event against a tiny HTTP/1.1 server inside the test. */

/*
 * The server runs in threads (one accepting, one per connection) so that the event loop under test
 * is the only thing on the main thread. It speaks just enough HTTP/1.1 keep-alive for these paths:
 *   /hello        200 "hello world"
 *   /n/<k>        200 "n=<k>"
 *   /slow         never answers (until the client goes away)
 *   /stream       chunked: five pieces 40 ms apart
 *   /endless      chunked: a piece every 10 ms until the client goes away
 *   /big          200 with a 100000-byte body
 *   /echo         200 echoing the method and the request body
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "curl-glue.h"

static int listen_fd = -1;
static uint16_t port;
static pthread_t accept_thread;
static atomic_int n_accepted;
static atomic_int n_open;

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static bool send_all(int fd, const void *p, size_t n) {
        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
                if (k <= 0)
                        return false;
                p = (const char *) p + k;
                n -= k;
        }
        return true;
}

static bool send_str(int fd, const char *s) {
        return send_all(fd, s, strlen(s));
}

static bool send_chunk(int fd, const char *s) {
        char hdr[32];

        snprintf(hdr, sizeof(hdr), "%zx\r\n", strlen(s));
        return send_str(fd, hdr) && send_str(fd, s) && send_str(fd, "\r\n");
}

/* Header and body in one send(): two small segments would meet Nagle and delayed ACKs (40 ms). */
static bool reply(int fd, const char *body, size_t len) {
        char *b;
        int n;
        bool ok;

        n = asprintf(&b, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%.*s", len, (int) len, body);
        if (n < 0)
                return false;
        ok = send_all(fd, b, n);
        free(b);
        return ok;
}

/* Blocks until the peer closes the connection (or 10 s). */
static void wait_hangup(int fd) {
        char b[256];

        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };

                if (poll(&p, 1, 10000) <= 0 || recv(fd, b, sizeof(b), 0) <= 0)
                        return;
        }
}

static void *connection_thread(void *arg) {
        int fd = (int) (intptr_t) arg;
        char buf[65536];
        size_t have = 0;
        int one = 1;

        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

        atomic_fetch_add(&n_open, 1);
        for (;;) {
                char method[16], path[256], *end;
                size_t head, content_length = 0;
                const char *cl;
                ssize_t k;

                buf[have] = 0;
                end = strstr(buf, "\r\n\r\n");
                if (!end) {
                        if (have >= sizeof(buf) - 1)
                                break;
                        k = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
                        if (k <= 0)
                                break;
                        have += k;
                        continue;
                }
                head = end - buf + 4;
                cl = strcasestr(buf, "\r\nContent-Length:");
                if (cl && cl < end)
                        content_length = strtoul(cl + 17, NULL, 10);
                while (have < head + content_length) {
                        k = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
                        if (k <= 0)
                                goto done;
                        have += k;
                }
                if (sscanf(buf, "%15s %255s", method, path) != 2)
                        break;

                if (streq(path, "/hello")) {
                        if (!reply(fd, "hello world", 11))
                                break;
                } else if (strneq(path, "/n/", 3)) {
                        char b[64];
                        int n = snprintf(b, sizeof(b), "n=%s", path + 3);

                        if (!reply(fd, b, n))
                                break;
                } else if (streq(path, "/slow")) {
                        wait_hangup(fd);
                        break;
                } else if (streq(path, "/stream") || streq(path, "/endless")) {
                        bool endless = streq(path, "/endless");

                        if (!send_str(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
                                break;
                        for (int i = 0; endless || i < 5; i++) {
                                char piece[32];

                                snprintf(piece, sizeof(piece), "piece-%d\n", i);
                                if (!send_chunk(fd, piece))
                                        goto done;
                                usleep(endless ? 10000 : 40000);
                        }
                        if (!send_str(fd, "0\r\n\r\n"))
                                break;
                } else if (streq(path, "/big")) {
                        static char big[100000];

                        memset(big, 'b', sizeof(big));
                        if (!reply(fd, big, sizeof(big)))
                                break;
                } else if (streq(path, "/echo")) {
                        char b[4096];
                        int n = snprintf(b, sizeof(b), "%s:%.*s", method, (int) content_length, buf + head);

                        if (!reply(fd, b, n))
                                break;
                } else {
                        if (!send_str(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
                                break;
                }

                memmove(buf, buf + head + content_length, have - head - content_length);
                have -= head + content_length;
        }
done:
        close(fd);
        atomic_fetch_sub(&n_open, 1);
        return NULL;
}

static void *accept_loop(void *arg) {
        for (;;) {
                pthread_t t;
                int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        return NULL;    /* shut down */
                }
                atomic_fetch_add(&n_accepted, 1);
                if (pthread_create(&t, NULL, connection_thread, (void *) (intptr_t) fd) != 0) {
                        close(fd);
                        continue;
                }
                pthread_detach(t);
        }
}

static int server_setup(void **state) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t l = sizeof(sa);

        listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 ||
            listen(listen_fd, 128) < 0 || getsockname(listen_fd, (struct sockaddr *) &sa, &l) < 0)
                return -1;
        port = ntohs(sa.sin_port);
        return pthread_create(&accept_thread, NULL, accept_loop, NULL) == 0 ? 0 : -1;
}

static int server_teardown(void **state) {
        (void) shutdown(listen_fd, SHUT_RDWR);
        pthread_join(accept_thread, NULL);
        close(listen_fd);
        curl_global_cleanup();
        return 0;
}

/* Per test: a fresh loop and glue. */
typedef struct Fixture {
        sd_event *event;
        CurlGlue *glue;
} Fixture;

static int fixture_setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        assert_non_null(f);
        assert_int_equal(sd_event_new(&f->event), 0);
        assert_int_equal(curl_glue_new(f->event, &f->glue), 0);
        *state = f;
        return 0;
}

static int fixture_teardown(void **state) {
        Fixture *f = *state;

        curl_glue_free(f->glue);
        sd_event_unref(f->event);
        free(f);
        return 0;
}

static char *url(const char *path) {
        static char b[128];

        snprintf(b, sizeof(b), "http://127.0.0.1:%u%s", port, path);
        return b;
}

/* Runs the loop until *flag or `timeout_usec` passed; returns whether the flag got set. */
static bool run_until(sd_event *e, const bool *flag, uint64_t timeout_usec) {
        uint64_t end = now_usec() + timeout_usec;

        while (!*flag && now_usec() < end)
                assert_true(sd_event_run(e, 50 * USEC_PER_MSEC) >= 0);
        return *flag;
}

typedef struct Result {
        bool done;
        CURLcode code;
        long status;
        char body[256];
        unsigned n_done;
} Result;

static void on_done(CurlRequest *req, CURLcode code, void *userdata) {
        Result *res = userdata;
        size_t n;
        const char *b = curl_request_body(req, &n);

        res->done = true;
        res->n_done++;
        res->code = code;
        res->status = curl_request_status(req);
        snprintf(res->body, sizeof(res->body), "%.*s", (int) n, b ?: "");
}

static void test_ok_with_body(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        Result res = {};

        assert_int_equal(curl_request_new(f->glue, url("/hello"), &req), 0);
        curl_request_set_userdata(req, &res);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(curl_request_is_running(req));
        assert_int_equal(curl_request_start(req, on_done), -EBUSY);

        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        assert_int_equal(res.code, CURLE_OK);
        assert_int_equal(res.status, 200);
        assert_string_equal(res.body, "hello world");
        assert_false(curl_request_is_running(req));
        assert_int_equal(curl_glue_n_running(f->glue), 0);

        /* 404 is a completed transfer too. */
        res = (Result) {};
        assert_int_equal(curl_request_set_url(req, url("/nope")), 0);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        assert_int_equal(res.code, CURLE_OK);
        assert_int_equal(res.status, 404);
        assert_string_equal(res.body, "");
}

static void test_post_body_and_headers(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        Result res = {};

        assert_int_equal(curl_request_new(f->glue, url("/echo"), &req), 0);
        curl_request_set_userdata(req, &res);
        assert_int_equal(curl_request_add_header(req, "Content-Type: application/x-www-form-urlencoded"), 0);
        assert_int_equal(curl_request_set_body(req, "PUT", "value=bar", 9), 0);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        assert_int_equal(res.code, CURLE_OK);
        assert_string_equal(res.body, "PUT:value=bar");
}

static void test_connection_refused(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t l = sizeof(sa);
        Result res = {};
        char u[64];
        int fd;

        /* A port that was just free and has no listener. */
        fd = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &l), 0);
        snprintf(u, sizeof(u), "http://127.0.0.1:%u/", ntohs(sa.sin_port));

        assert_int_equal(curl_request_new(f->glue, u, &req), 0);
        curl_request_set_userdata(req, &res);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        assert_int_equal(res.code, CURLE_COULDNT_CONNECT);
        assert_int_equal(res.status, 0);
        close(fd);
}

static void test_timeout(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        Result res = {};
        uint64_t start, elapsed;

        assert_int_equal(curl_request_new(f->glue, url("/slow"), &req), 0);
        curl_request_set_userdata(req, &res);
        curl_request_set_timeout(req, 200 * USEC_PER_MSEC);
        start = now_usec();
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        elapsed = now_usec() - start;

        assert_int_equal(res.code, CURLE_OPERATION_TIMEDOUT);
        assert_true(elapsed >= 190 * USEC_PER_MSEC);
        /* 1 ms timer accuracy: nowhere near sd-event's default 250 ms slack. */
        assert_true(elapsed < 400 * USEC_PER_MSEC);
        assert_true(strlen(curl_request_error_message(req)) > 0);
}

typedef struct Sequential {
        unsigned i, n;
        bool done;
        bool failed;
} Sequential;

static void on_sequential_done(CurlRequest *req, CURLcode code, void *userdata) {
        Sequential *s = userdata;
        char expect[32], u[32];
        const char *body;

        snprintf(expect, sizeof(expect), "n=%u", s->i);
        body = curl_request_body(req, NULL);
        if (code != CURLE_OK || !body || !streq(body, expect)) {
                fprintf(stderr, "# request %u: %s, body '%s'\n", s->i, curl_easy_strerror(code), strempty(body));
                s->failed = s->done = true;
                return;
        }
        if (++s->i == s->n) {
                s->done = true;
                return;
        }
        /* Restart from the completion callback: the same easy handle, the same connection. */
        snprintf(u, sizeof(u), "/n/%u", s->i);
        if (curl_request_set_url(req, url(u)) < 0 || curl_request_start(req, on_sequential_done) < 0)
                s->failed = s->done = true;
}

static void test_sequential_reuse(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        Sequential s = { .n = 1000 };
        int accepted = atomic_load(&n_accepted);

        assert_int_equal(curl_request_new(f->glue, url("/n/0"), &req), 0);
        curl_request_set_userdata(req, &s);
        assert_int_equal(curl_request_start(req, on_sequential_done), 0);
        assert_true(run_until(f->event, &s.done, 30 * USEC_PER_SEC));
        assert_false(s.failed);
        assert_int_equal(s.i, 1000);
        /* One TCP connection for all of them. */
        assert_int_equal(atomic_load(&n_accepted) - accepted, 1);
}

static void test_concurrent(void **state) {
        Fixture *f = *state;
        CurlRequest *req[50];
        Result res[50] = {};
        bool all = false;

        for (unsigned i = 0; i < ELEMENTSOF(req); i++) {
                char u[32];

                snprintf(u, sizeof(u), "/n/%u", i);
                assert_int_equal(curl_request_new(f->glue, url(u), &req[i]), 0);
                curl_request_set_userdata(req[i], &res[i]);
                assert_int_equal(curl_request_start(req[i], on_done), 0);
        }
        assert_int_equal(curl_glue_n_running(f->glue), 50);

        for (uint64_t end = now_usec() + 10 * USEC_PER_SEC; !all && now_usec() < end; ) {
                assert_true(sd_event_run(f->event, 50 * USEC_PER_MSEC) >= 0);
                all = true;
                for (unsigned i = 0; i < ELEMENTSOF(req); i++)
                        all = all && res[i].done;
        }
        assert_true(all);
        for (unsigned i = 0; i < ELEMENTSOF(req); i++) {
                char expect[32];

                snprintf(expect, sizeof(expect), "n=%u", i);
                assert_int_equal(res[i].code, CURLE_OK);
                assert_int_equal(res[i].n_done, 1);
                assert_string_equal(res[i].body, expect);
                curl_request_free(req[i]);
        }
        assert_int_equal(curl_glue_n_running(f->glue), 0);
}

typedef struct Stream {
        char data[512];
        size_t size;
        unsigned n_calls;
        uint64_t first_usec;
        unsigned cancel_after;  /* cancel from inside the callback after this many calls */
        int fail_with;          /* or return this */
} Stream;

/* Result first, so that one userdata pointer serves both on_done() and on_stream_data(). */
typedef struct StreamTest {
        Result res;
        Stream stream;
} StreamTest;

static int on_stream_data(CurlRequest *req, const void *p, size_t n, void *userdata) {
        StreamTest *t = userdata;
        Stream *s = &t->stream;

        if (s->n_calls++ == 0)
                s->first_usec = now_usec();
        if (s->size + n < sizeof(s->data)) {
                memcpy(s->data + s->size, p, n);
                s->size += n;
        }
        if (s->fail_with < 0 && s->n_calls == 2)
                return s->fail_with;
        if (s->cancel_after > 0 && s->n_calls == s->cancel_after)
                assert_int_equal(curl_request_cancel(req), 1);
        return 0;
}

static void test_stream_pieces(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        StreamTest t = {};
        uint64_t done_usec;

        assert_int_equal(curl_request_new(f->glue, url("/stream"), &req), 0);
        curl_request_set_userdata(req, &t.res);
        curl_request_set_stream(req, on_stream_data);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &t.res.done, 5 * USEC_PER_SEC));
        done_usec = now_usec();

        assert_int_equal(t.res.code, CURLE_OK);
        t.stream.data[t.stream.size] = 0;
        assert_string_equal(t.stream.data, "piece-0\npiece-1\npiece-2\npiece-3\npiece-4\n");
        /* Delivered as it came, not at the end: pieces are 40 ms apart. */
        assert_true(t.stream.n_calls >= 3);
        assert_true(done_usec - t.stream.first_usec >= 120 * USEC_PER_MSEC);
        /* Nothing collected in stream mode. */
        assert_null(curl_request_body(req, NULL));
}

static void test_stream_abort_from_callback(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        StreamTest t = { .stream.fail_with = -ECONNABORTED };

        assert_int_equal(curl_request_new(f->glue, url("/endless"), &req), 0);
        curl_request_set_userdata(req, &t.res);
        curl_request_set_stream(req, on_stream_data);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &t.res.done, 5 * USEC_PER_SEC));
        assert_int_equal(t.res.code, CURLE_WRITE_ERROR);
        assert_int_equal(curl_request_data_error(req), -ECONNABORTED);
        assert_int_equal(t.stream.n_calls, 2);
}

static void test_body_cap(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        Result res = {};
        size_t n;

        assert_int_equal(curl_request_new(f->glue, url("/big"), &req), 0);
        curl_request_set_userdata(req, &res);
        curl_request_set_body_max(req, 1000);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        assert_int_equal(res.code, CURLE_FILESIZE_EXCEEDED);
        (void) curl_request_body(req, &n);
        assert_true(n <= 1000);

        /* Exactly fitting is fine. */
        res = (Result) {};
        curl_request_set_body_max(req, 100000);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        assert_int_equal(res.code, CURLE_OK);
        (void) curl_request_body(req, &n);
        assert_int_equal(n, 100000);
}

typedef struct RawResult {
        unsigned n;
        CURLcode code;
        bool done;
} RawResult;

static void on_raw_finished(CurlGlue *g, CURL *easy, CURLcode code, void *userdata) {
        RawResult *r = userdata;

        r->code = code;
        /* Re-add from the completion callback, three times in all. */
        if (++r->n < 3 && code == CURLE_OK)
                assert_int_equal(curl_glue_add(g, easy, on_raw_finished, r), 0);
        else
                r->done = true;
}

static size_t count_bytes(char *p, size_t size, size_t nmemb, void *userdata) {
        *(size_t *) userdata += size * nmemb;
        return size * nmemb;
}

static void test_raw_easy_handle(void **state) {
        Fixture *f = *state;
        RawResult res = {};
        CURL *easy = NULL;
        size_t n_bytes = 0;
        int accepted = atomic_load(&n_accepted);

        assert_int_equal(curl_glue_make_easy(url("/hello"), &easy), 0);
        assert_int_equal(curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, count_bytes), CURLE_OK);
        assert_int_equal(curl_easy_setopt(easy, CURLOPT_WRITEDATA, &n_bytes), CURLE_OK);
        assert_int_equal(curl_glue_add(f->glue, easy, on_raw_finished, &res), 0);
        assert_int_equal(curl_glue_add(f->glue, easy, on_raw_finished, &res), -EBUSY);
        assert_int_equal(curl_glue_n_running(f->glue), 1);

        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        assert_int_equal(res.code, CURLE_OK);
        assert_int_equal(res.n, 3);
        assert_int_equal(curl_glue_n_running(f->glue), 0);
        assert_int_equal(curl_glue_cancel(f->glue, easy), 0);
        assert_int_equal(atomic_load(&n_accepted) - accepted, 1);
        assert_int_equal(n_bytes, 3 * 11);
        curl_easy_cleanup(easy);
}

typedef struct StartFromCallback {
        StreamTest t;
        CurlRequest *other;
        Result other_res;
        int start_result;
} StartFromCallback;

static int on_stream_start_other(CurlRequest *req, const void *p, size_t n, void *userdata) {
        StartFromCallback *x = userdata;

        /* Inside libcurl: the glue queues the add for the next loop iteration. */
        if (x->t.stream.n_calls++ == 0)
                x->start_result = curl_request_start(x->other, on_done);
        return 0;
}

static void test_start_from_stream_callback(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL;
        StartFromCallback x = { .start_result = 1 };

        assert_int_equal(curl_request_new(f->glue, url("/stream"), &req), 0);
        assert_int_equal(curl_request_new(f->glue, url("/hello"), &x.other), 0);
        curl_request_set_userdata(req, &x);
        curl_request_set_userdata(x.other, &x.other_res);
        curl_request_set_stream(req, on_stream_start_other);
        assert_int_equal(curl_request_start(req, on_done), 0);

        assert_true(run_until(f->event, &x.t.res.done, 5 * USEC_PER_SEC));
        assert_true(run_until(f->event, &x.other_res.done, 5 * USEC_PER_SEC));
        assert_int_equal(x.start_result, 0);
        assert_int_equal(x.t.res.code, CURLE_OK);
        assert_int_equal(x.other_res.code, CURLE_OK);
        assert_string_equal(x.other_res.body, "hello world");
        curl_request_free(x.other);
}

static int on_cancel_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        assert_int_equal(curl_request_cancel(userdata), 1);
        return 0;
}

static void test_cancel_mid_request(void **state) {
        Fixture *f = *state;
        _cleanup_(curl_request_freep) CurlRequest *req = NULL, *other = NULL;
        _cleanup_(sd_event_source_unrefp) sd_event_source *timer = NULL;
        StreamTest t = { .stream.cancel_after = 3 };
        Result res = {}, other_res = {};
        bool never = false;

        /* Connections of earlier tests go away when their glue is freed; wait for that. */
        for (uint64_t end = now_usec() + 2 * USEC_PER_SEC; atomic_load(&n_open) > 0 && now_usec() < end; )
                usleep(10000);
        assert_int_equal(atomic_load(&n_open), 0);

        /* 1: from the event loop, while the server keeps the request hanging. */
        assert_int_equal(curl_request_new(f->glue, url("/slow"), &req), 0);
        curl_request_set_userdata(req, &res);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_int_equal(sd_event_add_time_relative(f->event, &timer, CLOCK_MONOTONIC, 100 * USEC_PER_MSEC,
                                                    USEC_PER_MSEC, on_cancel_timer, req), 0);
        (void) run_until(f->event, &never, 400 * USEC_PER_MSEC);
        assert_false(res.done);
        assert_false(curl_request_is_running(req));
        assert_int_equal(curl_glue_n_running(f->glue), 0);
        assert_int_equal(curl_request_cancel(req), 0);

        /* The connection was closed, so the server thread went away. */
        for (uint64_t end = now_usec() + 2 * USEC_PER_SEC; atomic_load(&n_open) > 0 && now_usec() < end; )
                usleep(10000);
        assert_int_equal(atomic_load(&n_open), 0);

        /* The request can be used again afterwards. */
        assert_int_equal(curl_request_set_url(req, url("/hello")), 0);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_true(run_until(f->event, &res.done, 5 * USEC_PER_SEC));
        assert_string_equal(res.body, "hello world");

        /* 2: from inside a stream callback, with another transfer going on meanwhile. */
        curl_request_free(req);
        req = NULL;
        assert_int_equal(curl_request_new(f->glue, url("/endless"), &req), 0);
        curl_request_set_userdata(req, &t.res);
        curl_request_set_stream(req, on_stream_data);
        assert_int_equal(curl_request_start(req, on_done), 0);
        assert_int_equal(curl_request_new(f->glue, url("/stream"), &other), 0);
        curl_request_set_userdata(other, &other_res);
        assert_int_equal(curl_request_start(other, on_done), 0);

        assert_true(run_until(f->event, &other_res.done, 5 * USEC_PER_SEC));
        (void) run_until(f->event, &never, 100 * USEC_PER_MSEC);
        assert_int_equal(other_res.code, CURLE_OK);
        assert_false(t.res.done);
        assert_int_equal(t.stream.n_calls, 3);
        assert_false(curl_request_is_running(req));
        assert_int_equal(curl_glue_n_running(f->glue), 0);
}

static void test_free_with_requests_in_flight(void **state) {
        Fixture *f = *state;
        CurlRequest *req = NULL;
        Result res = {};
        bool never = false;

        assert_int_equal(curl_request_new(f->glue, url("/slow"), &req), 0);
        curl_request_set_userdata(req, &res);
        assert_int_equal(curl_request_start(req, on_done), 0);
        (void) run_until(f->event, &never, 50 * USEC_PER_MSEC);

        /* The glue goes first: the request is detached, not called back, and can still be freed. */
        f->glue = curl_glue_free(f->glue);
        assert_false(curl_request_is_running(req));
        assert_int_equal(curl_request_start(req, on_done), -ESTALE);
        curl_request_free(req);
        assert_false(res.done);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_ok_with_body, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_post_body_and_headers, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_connection_refused, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_timeout, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_sequential_reuse, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_concurrent, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_stream_pieces, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_stream_abort_from_callback, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_body_cap, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_raw_easy_handle, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_start_from_stream_callback, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_cancel_mid_request, fixture_setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_free_with_requests_in_flight, fixture_setup, fixture_teardown),
        };

        return cmocka_run_group_tests_name("curl-glue", tests, server_setup, server_teardown);
}
