/* SPDX-License-Identifier: Apache-2.0 */
/* test-http-server.c - our HTTP layer (http-server.c) on a real sd-event loop, driven by a client
 * thread over 127.0.0.1 with raw bytes: framing, keep-alive, pipelining, bodies, refusals, streams,
 * late answers, hang-ups, upgrades, limits and timeouts. */

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "http-server.h"
#include "macro.h"
#include "test-util.h"

typedef struct Req {
        sd_event_source *timer;
        int n;
} Req;

static sd_event *ev;
static HttpServer *server;
static HttpService *service;
static uint16_t port;
static unsigned n_begin, n_done, n_hangup;
static int taken_fd = -1;
static char taken_extra[64];
static size_t taken_extra_len;
static HttpRequest *parked;
#define FAN 100
static HttpRequest *fan[FAN];
static unsigned n_fan;

static int on_late(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpRequest *r = userdata;
        Req *q = r->data;

        q->timer = sd_event_source_unref(q->timer);
        http_reply(r, 200, "text/plain", "late", 4);
        return 0;
}

static HttpBodyMode h_begin(HttpRequest *r) {
        n_begin++;
        if (streq(r->uri, "/early"))
                http_reply(r, 403, NULL, "no", 2);
        return streq(r->uri, "/discard") ? HTTP_BODY_DISCARD : HTTP_BODY_READ;
}

static void on_taken(int fd, gnutls_session_t tls, const void *extra, size_t extra_len, void *userdata) {
        taken_fd = fd;
        taken_extra_len = MIN(extra_len, sizeof taken_extra);
        memcpy(taken_extra, extra, taken_extra_len);
}

static HttpBodyMode h_begin2(HttpRequest *r) {
        if (streq(r->uri, "/upgrade")) {
                n_begin++;
                http_response_header(r, "Upgrade", "test/1");
                http_upgrade(r, 101, on_taken, NULL);
                return HTTP_BODY_DISCARD;
        }
        return h_begin(r);
}

static void h_handle(HttpRequest *r) {
        Req *q = r->data;
        char buf[128];

        if (streq(r->uri, "/late")) {
                assert_int_equal(sd_event_add_time_relative(ev, &q->timer, CLOCK_MONOTONIC, 20 * USEC_PER_MSEC, 1000,
                                                            on_late, r), 0);
                return;
        }
        if (streq(r->uri, "/park")) {
                parked = r;
                return;
        }
        if (streq(r->uri, "/fan")) {
                /* the last one answers them all at once, as a watch event does: a batch for two threads */
                fan[n_fan++] = r;
                if (n_fan == FAN)
                        for (unsigned i = 0; i < FAN; i++) {
                                http_stream_begin(fan[i], 200, "application/json", -1);
                                http_stream_write(fan[i], "{\"event\":1}", 11, true);
                        }
                return;
        }
        if (streq(r->uri, "/stream")) {
                http_response_header(r, "X-A", "1");
                http_stream_begin(r, 200, "application/json", -1);
                http_stream_write(r, "abc", 3, false);
                http_stream_write(r, "0123456789abcdefg", 17, true);
                return;
        }
        if (streq(r->uri, "/body") || streq(r->uri, "/discard")) {
                int n = snprintf(buf, sizeof buf, "%s len=%zu big=%d", r->method, r->body.len, r->body_too_large);
                http_reply(r, 200, NULL, buf, (size_t) n);
                return;
        }
        if (streq(r->uri, "/hdr")) {
                const char *v = http_request_header(r, "x-Test");
                int n = snprintf(buf, sizeof buf, "[%s] n=%zu", strempty(v), http_request_n_headers(r));
                http_reply(r, 200, NULL, buf, (size_t) n);
                return;
        }
        http_response_header_u64(r, "X-Index", 255, 16);
        http_reply(r, 200, "text/plain", r->uri, r->uri_len);
}

static bool h_hangup(HttpRequest *r) {
        Req *q = r->data;

        n_hangup++;
        q->timer = sd_event_source_disable_unref(q->timer);
        if (parked == r)
                parked = NULL;
        return false;
}

static void h_done(HttpRequest *r) {
        Req *q = r->data;

        n_done++;
        q->timer = sd_event_source_disable_unref(q->timer);
}

static const HttpHandler handler = {
        .data_size = sizeof(Req),
        .begin = h_begin2,
        .handle = h_handle,
        .hangup = h_hangup,
        .done = h_done,
};

/* --- the client side (a thread) ---------------------------------------------------------------- */

static void client_send(int fd, const char *s) {
        size_t n = strlen(s);

        while (n > 0) {
                ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
                if (k < 0)
                        return;
                s += k;
                n -= (size_t) k;
        }
}

/* Reads until `quiet_ms` pass without data or the peer closes; *closed says which. */
static size_t client_read(int fd, char *buf, size_t size, int quiet_ms, bool *closed) {
        size_t len = 0;

        *closed = false;
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t k;

                if (poll(&p, 1, quiet_ms) <= 0)
                        break;
                k = recv(fd, buf + len, size - 1 - len, 0);
                if (k <= 0) {
                        *closed = true;
                        break;
                }
                len += (size_t) k;
                if (len + 1 >= size)
                        break;
        }
        buf[len] = 0;
        return len;
}

static size_t count(const char *hay, const char *needle) {
        size_t n = 0;

        for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

static void setup_server(const HttpLimits *limits) {
        assert_int_equal(sd_event_new(&ev), 0);
        assert_int_equal(http_server_new(ev, &server), 0);
        assert_int_equal(http_server_add_service(server, "test", &handler, NULL, limits, &service), 0);
        port = 0;
        assert_int_equal(http_service_add_listener(service, test_listen(&port)), 0);
        n_begin = n_done = n_hangup = 0;
}

static int setup(void **state) {
        HttpLimits l = { .head_max = 4096, .body_max = 1000 };

        setup_server(&l);
        return 0;
}

static int teardown(void **state) {
        server = http_server_free(server);
        ev = sd_event_unref(ev);
        if (taken_fd >= 0)
                (void) close(taken_fd);
        taken_fd = -1;
        return 0;
}

/* --- tests ---------------------------------------------------------------------------------------- */

static void c_keepalive(void) {
        char buf[4096];
        bool closed;
        int fd = test_connect(port);

        client_send(fd, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_false(closed);
        assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
        assert_non_null(strstr(buf, "Content-Type: text/plain\r\n"));
        assert_non_null(strstr(buf, "X-Index: ff\r\n"));
        assert_non_null(strstr(buf, "Content-Length: 2\r\n"));
        assert_non_null(strstr(buf, "\r\nDate: "));
        assert_string_equal(strstr(buf, "\r\n\r\n") + 4, "/a");
        /* the same connection again, then HEAD */
        client_send(fd, "GET /bb HTTP/1.1\r\nHost: x\r\n\r\nHEAD /ccc HTTP/1.1\r\nHost: x\r\n\r\n");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_false(closed);
        assert_int_equal(count(buf, "HTTP/1.1 200 OK"), 2);
        assert_non_null(strstr(buf, "Content-Length: 4\r\n"));
        /* HEAD: a length, no body: the text ends with the blank line */
        assert_string_equal(buf + strlen(buf) - 4, "\r\n\r\n");
        /* Connection: close is honoured and said */
        client_send(fd, "GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        client_read(fd, buf, sizeof buf, 1000, &closed);
        assert_true(closed);
        assert_non_null(strstr(buf, "Connection: close\r\n"));
        close(fd);
}

static void test_keepalive(void **state) {
        test_run_client(ev, c_keepalive);
        assert_int_equal(n_begin, 4);
        assert_int_equal(n_done, 4);
}

static void c_pipeline(void) {
        char buf[65536], req[8192] = "";
        bool closed;
        int fd = test_connect(port);

        for (int i = 0; i < 50; i++) {
                char one[64];
                snprintf(one, sizeof one, "GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
                strcat(req, one);
        }
        client_send(fd, req);
        client_read(fd, buf, sizeof buf, 300, &closed);
        assert_int_equal(count(buf, "HTTP/1.1 200 OK"), 50);
        /* in order */
        assert_true(strstr(buf, "\r\n\r\n/p0") < strstr(buf, "\r\n\r\n/p1HTTP"));
        assert_non_null(strstr(buf, "\r\n\r\n/p49"));
        close(fd);
}

static void test_pipeline(void **state) {
        test_run_client(ev, c_pipeline);
        assert_int_equal(n_done, 50);
}

static void c_bodies(void) {
        char buf[4096];
        bool closed;
        int fd = test_connect(port);

        client_send(fd, "PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_non_null(strstr(buf, "PUT len=5 big=0"));
        client_send(fd, "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_non_null(strstr(buf, "POST len=7 big=0"));
        /* over body_max (1000): the handler is told, the rest is read and dropped, the connection goes on */
        client_send(fd, "PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n");
        {
                char big[3000];
                memset(big, 'x', sizeof big);
                (void) send(fd, big, sizeof big, MSG_NOSIGNAL);
        }
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_non_null(strstr(buf, "PUT len=0 big=1"));
        assert_false(closed);
        client_send(fd, "PUT /discard HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_non_null(strstr(buf, "PUT len=0 big=0"));
        /* Expect: 100-continue */
        client_send(fd, "PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_string_equal(buf, "HTTP/1.1 100 Continue\r\n\r\n");
        client_send(fd, "ok");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_non_null(strstr(buf, "PUT len=2 big=0"));
        /* an extension method, as Go takes any token */
        client_send(fd, "FOO-1 /body HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_non_null(strstr(buf, "FOO-1 len=1 big=0"));
        /* headers: case-insensitive lookup, trailing blanks trimmed, empty values */
        client_send(fd, "GET /hdr HTTP/1.1\r\nHost: x\r\nX-TEST: v1  \r\nEmpty:\r\nX-Test: v2\r\n\r\n");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_non_null(strstr(buf, "[v1] n=4"));
        close(fd);
}

static void test_bodies(void **state) {
        test_run_client(ev, c_bodies);
}

static void expect_refusal(const char *req, const char *status) {
        char buf[4096];
        bool closed;
        int fd = test_connect(port);

        client_send(fd, req);
        client_read(fd, buf, sizeof buf, 2000, &closed);
        assert_true(closed);
        if (!strstr(buf, status))
                fail_msg("expected %s for %.40s..., got %.200s", status, req, buf);
        close(fd);
}

static void c_refusals(void) {
        char big[6000];

        expect_refusal("GARBAGE\r\n\r\n", "HTTP/1.1 400 Bad Request");
        expect_refusal("GET /a HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request: missing required Host header\r\n");
        expect_refusal("GET  /a HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400 Bad Request");
        expect_refusal("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "HTTP/1.1 400 ");
        expect_refusal("PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                       "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400 ");
        expect_refusal("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n", "HTTP/1.1 501 ");
        expect_refusal("GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", "HTTP/1.1 400 ");
        expect_refusal("PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: magic\r\n\r\nab", "HTTP/1.1 417 ");
        memset(big, 'a', sizeof big);
        big[sizeof big - 1] = 0;
        {
                char req[7000];
                snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", big);
                expect_refusal(req, "HTTP/1.1 431 ");
                snprintf(req, sizeof req, "GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", big);
                expect_refusal(req, "HTTP/1.1 431 ");
        }
        /* answered by begin() with a body announced: answer, then close */
        expect_refusal("PUT /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial", "HTTP/1.1 403 Forbidden");
}

static void test_refusals(void **state) {
        test_run_client(ev, c_refusals);
        assert_int_equal(n_begin, n_done);
}

static void c_stream_late(void) {
        char buf[4096];
        bool closed;
        int fd = test_connect(port);

        client_send(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
        client_read(fd, buf, sizeof buf, 200, &closed);
        assert_non_null(strstr(buf, "Transfer-Encoding: chunked\r\n"));
        assert_non_null(strstr(buf, "X-A: 1\r\n"));
        assert_string_equal(strstr(buf, "\r\n\r\n") + 4, "3\r\nabc\r\n11\r\n0123456789abcdefg\r\n0\r\n\r\n");
        /* HTTP/1.0 gets no chunks: the body ends with the connection */
        client_send(fd, "GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        client_read(fd, buf, sizeof buf, 1000, &closed);
        assert_true(closed);
        assert_string_equal(strstr(buf, "\r\n\r\n") + 4, "abc0123456789abcdefg");
        close(fd);

        fd = test_connect(port);
        client_send(fd, "GET /late HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n");
        client_read(fd, buf, sizeof buf, 300, &closed);
        assert_true(strstr(buf, "late") && strstr(buf, "late") < strstr(buf, "/after"));
        /* a late answer the client does not wait for: hang-up */
        client_send(fd, "GET /late HTTP/1.1\r\nHost: x\r\n\r\n");
        close(fd);
        usleep(100 * 1000);

        fd = test_connect(port);
        client_send(fd, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n");
        usleep(50 * 1000);
        close(fd);
        usleep(50 * 1000);
}

static void test_stream_late(void **state) {
        test_run_client(ev, c_stream_late);
        assert_int_equal(n_hangup, 2);
        assert_null(parked);
        assert_int_equal(n_begin, n_done);
}

static void c_upgrade(void) {
        char buf[4096];
        bool closed;
        int fd = test_connect(port);

        client_send(fd, "POST /upgrade HTTP/1.1\r\nHost: x\r\nUpgrade: test/1\r\nConnection: Upgrade\r\n\r\nFRAMES");
        client_read(fd, buf, sizeof buf, 300, &closed);
        assert_false(closed);
        assert_non_null(strstr(buf, "HTTP/1.1 101 Switching Protocols\r\n"));
        assert_non_null(strstr(buf, "Upgrade: test/1\r\n"));
        assert_non_null(strstr(buf, "Connection: Upgrade\r\n"));
        assert_null(strstr(buf, "Content-Length"));
        close(fd);
}

static void c_fan(void) {
        int fds[FAN];
        char buf[4096];
        bool closed;

        for (int i = 0; i < FAN; i++) {
                fds[i] = test_connect(port);
                client_send(fds[i], "GET /fan HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        for (int i = 0; i < FAN; i++) {
                client_read(fds[i], buf, sizeof buf, 300, &closed);
                assert_false(closed);
                assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
                assert_string_equal(strstr(buf, "\r\n\r\n") + 4, "b\r\n{\"event\":1}\r\n0\r\n\r\n");
                /* the connection goes on */
                client_send(fds[i], "GET /again HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        for (int i = 0; i < FAN; i++) {
                client_read(fds[i], buf, sizeof buf, 300, &closed);
                assert_non_null(strstr(buf, "\r\n\r\n/again"));
                close(fds[i]);
        }
}

static void test_fan_out(void **state) {
        n_fan = 0;
        test_run_client(ev, c_fan);
        assert_int_equal(n_done, 2 * FAN);
}

static void test_upgrade(void **state) {
        test_run_client(ev, c_upgrade);
        assert_true(taken_fd >= 0);
        assert_int_equal(taken_extra_len, 6);
        assert_memory_equal(taken_extra, "FRAMES", 6);
        assert_int_equal(http_service_n_connections(service), 0);
}

static int setup_limits(void **state) {
        HttpLimits l = { .head_max = 4096, .body_max = 1000, .max_connections = 3,
                         .idle_timeout_usec = 300 * USEC_PER_MSEC, .head_timeout_usec = 300 * USEC_PER_MSEC,
                         .body_timeout_usec = 300 * USEC_PER_MSEC };

        setup_server(&l);
        return 0;
}

static void c_limits(void) {
        char buf[4096];
        bool closed;
        int fds[3];
        struct timespec a, b;

        for (int i = 0; i < 3; i++) {
                fds[i] = test_connect(port);
                client_send(fds[i], "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
                client_read(fds[i], buf, sizeof buf, 100, &closed);
                assert_non_null(strstr(buf, "200 OK"));
        }
        /* the fourth: 503 and closed */
        expect_refusal("GET /x HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 503 Service Unavailable");
        for (int i = 0; i < 3; i++)
                close(fds[i]);
        usleep(100 * 1000);

        /* idle keep-alive: closed after ~300 ms, not before 150 */
        fds[0] = test_connect(port);
        client_send(fds[0], "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
        client_read(fds[0], buf, sizeof buf, 50, &closed);
        clock_gettime(CLOCK_MONOTONIC, &a);
        client_read(fds[0], buf, sizeof buf, 3000, &closed);
        clock_gettime(CLOCK_MONOTONIC, &b);
        assert_true(closed);
        {
                long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
                assert_true(ms >= 150 && ms < 1500);
        }
        close(fds[0]);

        /* a head that trickles: closed by the head timeout */
        fds[0] = test_connect(port);
        client_send(fds[0], "GET /x HTTP/1.1\r\nHost: x\r\n");
        for (int i = 0; i < 10; i++) {
                usleep(100 * 1000);
                client_send(fds[0], "X: y\r\n");
        }
        client_read(fds[0], buf, sizeof buf, 1000, &closed);
        assert_true(closed);
        assert_null(strstr(buf, "200 OK"));
        close(fds[0]);
}

static void test_limits(void **state) {
        test_run_client(ev, c_limits);
        assert_int_equal(http_service_n_connections(service), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pipeline, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bodies, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stream_late, setup, teardown),
                cmocka_unit_test_setup_teardown(test_upgrade, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fan_out, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limits, setup_limits, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
